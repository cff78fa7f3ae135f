//! Client options: durability (memory or disk spool), backpressure policy, batching, retry and
//! verification settings, with the defaults documented in `docs/gateway.md`.

use std::path::PathBuf;
use std::time::Duration;

use auditledger_ledger::note::VerifierKey;

/// Where an event lives between `record` and its receipt.
#[derive(Clone, Debug, Default)]
pub enum Durability {
    /// In memory only: `record` returns once the event is queued. Events not yet acknowledged
    /// are lost if the gateway process dies.
    #[default]
    Memory,
    /// Write-ahead disk spool: `record` returns once the event is written and fsynced to the
    /// spool. Survives a gateway crash (the next client on the same directory replays it) and
    /// any ledger outage up to the spool size.
    Spool(SpoolOptions),
}

/// Spool directory and sizing.
#[derive(Clone, Debug)]
pub struct SpoolOptions {
    /// Directory owned by this gateway process (locked while the client runs).
    pub dir: PathBuf,
    /// Bound on the spool's segment files (default 1 GiB). `record` fails with
    /// `RecordError::SpoolFull` (or waits, see [`Backpressure`]) beyond it.
    pub max_bytes: u64,
    /// A new segment file is started beyond this size (default 16 MiB); a segment is deleted
    /// once every event in it has a receipt.
    pub segment_bytes: u64,
}

impl SpoolOptions {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        SpoolOptions {
            dir: dir.into(),
            max_bytes: 1 << 30,
            segment_bytes: 16 << 20,
        }
    }
}

/// What `record` does when the buffer (memory mode) or the spool (spool mode) is full.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backpressure {
    /// Wait for room, at most this long (None: as long as it takes), then fail.
    Wait(Option<Duration>),
    /// Fail at once (`RecordError::Backpressure` / `SpoolFull`): a gateway can then deny the
    /// tool call it could not record.
    FailFast,
}

/// Client settings. `Options::default()` suits a gateway on the same network as the ledger.
#[derive(Clone, Debug)]
pub struct Options {
    pub durability: Durability,
    pub backpressure: Backpressure,
    /// Events recorded and not yet acknowledged, in memory mode (default 10,000).
    pub max_buffered_events: usize,
    /// A batch is sent when it has this many events (default 500) …
    pub max_batch_events: usize,
    /// … or this many encoded bytes (default 1 MiB; the ledger's limit is 4 MiB) …
    pub max_batch_bytes: usize,
    /// … or when its first event has waited this long (default 5 ms).
    pub linger: Duration,
    /// Requests in flight on the AppendStream (default 4). 1 keeps the log order equal to the
    /// recording order even across retries.
    pub max_in_flight_batches: usize,
    /// First retry delay (default 50 ms); doubles per consecutive failure, with jitter.
    pub initial_backoff: Duration,
    /// Longest retry delay (default 5 s). A longer `retry-after` hint from the ledger wins.
    pub max_backoff: Duration,
    /// A request without a response after this long is treated as failed (default 30 s).
    pub request_timeout: Duration,
    /// TCP connect timeout (default 5 s).
    pub connect_timeout: Duration,
    /// Ask for a signed checkpoint and an inclusion proof per event (adds up to the ledger's
    /// `checkpoint_interval` to each receipt).
    pub wait_for_checkpoint: bool,
    /// With `wait_for_checkpoint`: verify every receipt's inclusion proof against a checkpoint
    /// signed by one of these keys (`auditledger keys list`).
    pub verifier_keys: Vec<VerifierKey>,
    /// Filled into events whose `gateway_id` is empty.
    pub gateway_id: Option<String>,
    /// First `gateway_seq` assigned in memory mode (default 1). Spool mode continues from the
    /// highest number the spool has seen.
    pub first_gateway_seq: u64,
    /// Events larger than this are refused by `record` (default 64 KiB, the ledger's default).
    pub max_event_bytes: usize,
    /// Receipts reported to handles at most for this many outstanding events (default 100,000);
    /// beyond, handles of spooled events report `DeliveryError::NotTracked`.
    pub max_tracked_receipts: usize,
    /// TLS for `https://` endpoints.
    pub tls: Option<tonic::transport::ClientTlsConfig>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            durability: Durability::Memory,
            backpressure: Backpressure::Wait(None),
            max_buffered_events: 10_000,
            max_batch_events: 500,
            max_batch_bytes: 1 << 20,
            linger: Duration::from_millis(5),
            max_in_flight_batches: 4,
            initial_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(5),
            request_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(5),
            wait_for_checkpoint: false,
            verifier_keys: Vec::new(),
            gateway_id: None,
            first_gateway_seq: 1,
            max_event_bytes: 64 << 10,
            max_tracked_receipts: 100_000,
            tls: None,
        }
    }
}
