//! The ledger: opens a store, runs the sequencer (group commit) and the checkpointer, and
//! answers reads — checkpoints, proofs, leaves — for every (tenant, environment) log.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::{Semaphore, mpsc, oneshot, watch};

use crate::checkpoint::Checkpoint;
use crate::cosignature::{COSIGNATURE_V1_LEN, Cosignature};
use crate::error::LedgerError;
use crate::event::{self, AuditEvent, EventId, SYSTEM_TENANT};
use crate::keys::Keyring;
use crate::layout::{self, FORMAT_VERSION, LogId, LogRecord, LogState, Space};
use crate::merkle::{self, Hash, HashReader, NodeId};
use crate::metrics::LedgerMetrics;
use crate::query::{IndexedField, Order};
use crate::segments::{SegmentRecord, Tier};
use crate::sequencer::{PreparedEvent, Sequencer, Submission};
use crate::store::{Direction, Store, WriteBatch};
use crate::tiles::{EdgeSnapshot, LogHashReader, TileEdge};

/// Ledger settings (the service maps its config file onto these).
#[derive(Clone, Debug)]
pub struct LedgerOptions {
    /// First part of every origin line: `<origin_prefix>/<tenant>/<environment>`.
    pub origin_prefix: String,
    /// Environments events may name.
    pub environments: Vec<String>,
    /// A log that grew gets a new checkpoint within this interval.
    pub checkpoint_interval: Duration,
    /// Segment size 2^bits for logs created from now on (used by the archiver).
    pub segment_bits: u8,
    /// Largest encoded event.
    pub max_event_bytes: usize,
    /// Soft cap on the event bytes of one group commit.
    pub max_commit_bytes: usize,
    /// Event bytes accepted but not yet acknowledged; appends wait beyond this (backpressure).
    pub max_inflight_bytes: usize,
    /// At high ingest rates, how long the indexer gathers leaves before ingesting their
    /// leaf-hash and search-index entries as table files (a lookup waiting for them cuts it
    /// short; a crash re-indexes what it held).
    pub index_linger: Duration,
}

impl Default for LedgerOptions {
    fn default() -> Self {
        LedgerOptions {
            origin_prefix: "auditledger.local".into(),
            environments: vec!["dev".into(), "staging".into(), "prod".into()],
            checkpoint_interval: Duration::from_secs(1),
            segment_bits: 16,
            max_event_bytes: 64 << 10,
            max_commit_bytes: 8 << 20,
            max_inflight_bytes: 256 << 20,
            index_linger: Duration::from_secs(1),
        }
    }
}

/// Source of server time (an argument so tests can control it).
pub trait Clock: Send + Sync + 'static {
    /// Unix time in nanoseconds.
    fn now_nanos(&self) -> u64;
}

/// The system clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_nanos(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos().min(u64::MAX as u128) as u64)
    }
}

/// Which log: a tenant and an environment.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LogKey {
    pub tenant_id: String,
    pub environment: String,
}

impl LogKey {
    pub fn new(tenant_id: impl Into<String>, environment: impl Into<String>) -> Self {
        LogKey {
            tenant_id: tenant_id.into(),
            environment: environment.into(),
        }
    }
}

/// Proof of durable append of one event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Receipt {
    pub origin: Arc<str>,
    pub event_id: EventId,
    pub leaf_index: u64,
    pub leaf_hash: Hash,
    /// The event id was already in the log; this is the original receipt.
    pub duplicate: bool,
    /// For duplicates: whether the re-sent event differs from the stored one (`None` when the
    /// stored content is no longer hot and was not compared).
    pub content_differs: Option<bool>,
}

/// A signed checkpoint and its parsed body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedCheckpoint {
    pub checkpoint: Checkpoint,
    /// The whole signed note.
    pub note: String,
}

impl SignedCheckpoint {
    /// Parses a stored note (our own data: signatures are checked by fsck, not here).
    pub fn from_note(note: String) -> Result<Self, LedgerError> {
        let parsed = crate::note::Note::parse(note.as_bytes())
            .map_err(crate::checkpoint::CheckpointError::from)?;
        let checkpoint = Checkpoint::parse_body(parsed.text())?;
        Ok(SignedCheckpoint { checkpoint, note })
    }
}

/// A batch queued for the sequencer; [`PendingAppend::wait`] yields its receipts once durable.
#[derive(Debug)]
pub struct PendingAppend(Option<oneshot::Receiver<Result<Vec<Receipt>, LedgerError>>>);

impl PendingAppend {
    pub async fn wait(self) -> Result<Vec<Receipt>, LedgerError> {
        match self.0 {
            None => Ok(Vec::new()),
            Some(rx) => rx.await.map_err(|_| {
                LedgerError::Unavailable("sequencer stopped before answering".into())
            })?,
        }
    }
}

/// Shared, read-mostly facts about one log.
pub(crate) struct LogInfo {
    pub log_id: LogId,
    pub key: LogKey,
    pub record: LogRecord,
    pub origin: Arc<str>,
    /// Every leaf below this index is durable and hashed into the tiles.
    pub durable_size: AtomicU64,
    /// Unix nanos when the log first grew past its latest checkpoint (0 = it has not).
    pub pending_since: AtomicU64,
    pub checkpoint: watch::Sender<Option<Arc<SignedCheckpoint>>>,
    /// Leaves below this have their `leaf_hashes` and `fields` entries (the indexer's
    /// watermark).
    pub indexed: watch::Sender<u64>,
    /// The largest size a lookup has waited for the indexes to cover: while it is above
    /// `indexed`, a lingering indexer writes what it has gathered at once.
    pub index_wanted: AtomicU64,
    /// The tree's right edge at (at least) `durable_size`, published by the sequencer.
    edge: RwLock<Arc<EdgeSnapshot>>,
}

impl LogInfo {
    pub(crate) fn new(
        log_id: LogId,
        key: LogKey,
        record: LogRecord,
        latest: Option<SignedCheckpoint>,
        edge: EdgeSnapshot,
    ) -> Self {
        LogInfo {
            edge: RwLock::new(Arc::new(edge)),
            log_id,
            origin: Arc::from(record.origin.as_str()),
            key,
            record,
            durable_size: AtomicU64::new(0),
            pending_since: AtomicU64::new(0),
            checkpoint: watch::Sender::new(latest.map(Arc::new)),
            indexed: watch::Sender::new(0),
            index_wanted: AtomicU64::new(0),
        }
    }

    pub(crate) fn edge_snapshot(&self) -> Arc<EdgeSnapshot> {
        self.edge.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub(crate) fn publish_edge(&self, edge: EdgeSnapshot) {
        *self.edge.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(edge);
    }
}

/// Wakes the checkpointer early (on demand, at shutdown).
#[derive(Default)]
pub(crate) struct Wake {
    flag: Mutex<(bool, bool)>, // (wake requested, stop)
    cond: Condvar,
}

pub(crate) struct Shared {
    pub store: Arc<dyn Store>,
    pub options: LedgerOptions,
    pub keyring: Arc<RwLock<Keyring>>,
    pub clock: Arc<dyn Clock>,
    pub metrics: LedgerMetrics,
    logs: RwLock<HashMap<LogKey, Arc<LogInfo>>>,
    failure: Mutex<Option<String>>,
    /// Why the last group commit's write failed; `None` once a write succeeds again.
    write_error: Mutex<Option<String>>,
    /// Serialises checkpoint signing so each log's `prev` chain has one writer.
    sign_lock: Mutex<()>,
    /// Serialises changes to segment records and hot-leaf releases.
    segment_lock: Mutex<()>,
    /// Serialises storing witness cosignatures: each store reads what is there to keep the
    /// newest per witness, then writes, and two concurrent `AddCosignature` calls for one
    /// witness could otherwise leave the older one stored.
    cosign_lock: Mutex<()>,
    wake: Wake,
}

impl Shared {
    pub(crate) fn all_logs(&self) -> Vec<Arc<LogInfo>> {
        let mut logs: Vec<_> = self.read_logs().values().cloned().collect();
        logs.sort_by_key(|l| l.log_id);
        logs
    }

    fn read_logs(&self) -> std::sync::RwLockReadGuard<'_, HashMap<LogKey, Arc<LogInfo>>> {
        self.logs.read().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn register_log(&self, info: Arc<LogInfo>) {
        self.logs
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(info.key.clone(), info);
    }

    pub(crate) fn origin_for(&self, key: &LogKey) -> String {
        format!(
            "{}/{}/{}",
            self.options.origin_prefix, key.tenant_id, key.environment
        )
    }

    pub(crate) fn failure(&self) -> Option<String> {
        self.failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Records the outcome of a group commit's write (`None`: it succeeded).
    pub(crate) fn set_write_error(&self, error: Option<String>) {
        let mut current = self.write_error.lock().unwrap_or_else(|p| p.into_inner());
        if current.is_some() != error.is_some() {
            match &error {
                Some(e) => tracing::error!(error = %e, "the hot store refuses writes"),
                None => tracing::info!("the hot store accepts writes again"),
            }
        }
        *current = error;
    }

    pub(crate) fn set_failure(&self, reason: String) {
        tracing::error!(%reason, "ledger stops accepting appends");
        *self.failure.lock().unwrap_or_else(|p| p.into_inner()) = Some(reason);
    }

    pub(crate) fn load_state(&self, log_id: LogId) -> Result<LogState, LedgerError> {
        load_state(self.store.as_ref(), log_id)
    }

    /// Signs a checkpoint for every log that grew since its last one. Returns how many.
    pub(crate) fn checkpoint_pass(&self) -> Result<usize, LedgerError> {
        let _guard = self.sign_lock.lock().unwrap_or_else(|p| p.into_inner());
        let now_nanos = self.clock.now_nanos();
        let now_secs = now_nanos / 1_000_000_000;
        let mut batch = WriteBatch::new();
        let mut signed: Vec<(Arc<LogInfo>, SignedCheckpoint)> = Vec::new();
        let signers = self
            .keyring
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .active_signers(now_secs);
        for info in self.all_logs() {
            let size = info.durable_size.load(Ordering::Acquire);
            let latest = info.checkpoint.borrow().clone();
            if latest
                .as_ref()
                .map_or(size == 0, |c| c.checkpoint.tree_size >= size)
            {
                continue;
            }
            if signers.is_empty() {
                self.metrics
                    .checkpoint_failures
                    .fetch_add(1, Ordering::Relaxed);
                return Err(LedgerError::Unavailable(
                    "no active signing key in the keyring: cannot sign checkpoints (add or rotate a key)".into(),
                ));
            }
            let reader = LogHashReader::new(self.store.as_ref(), info.log_id, info.edge_snapshot());
            let root = merkle::root(&reader, size)?;
            let checkpoint = Checkpoint {
                origin: info.origin.to_string(),
                tree_size: size,
                root_hash: root,
                time: Some(
                    latest
                        .as_ref()
                        .and_then(|c| c.checkpoint.time)
                        .map_or(now_secs, |t| t.max(now_secs)),
                ),
                prev: latest.as_ref().map(|c| c.checkpoint.body_hash()),
                other_extensions: Vec::new(),
            };
            let note = checkpoint.sign(&signers)?;
            batch.put(
                Space::Checkpoints,
                layout::checkpoint_key(info.log_id, size),
                note.clone().into_bytes(),
            );
            signed.push((info, SignedCheckpoint { checkpoint, note }));
        }
        if signed.is_empty() {
            return Ok(0);
        }
        if let Err(e) = self.store.write(batch, true) {
            self.metrics
                .checkpoint_failures
                .fetch_add(1, Ordering::Relaxed);
            return Err(e.into());
        }
        let count = signed.len();
        for (info, cp) in signed {
            let size = cp.checkpoint.tree_size;
            let since = if info.durable_size.load(Ordering::Acquire) == size {
                info.pending_since.swap(0, Ordering::AcqRel)
            } else {
                info.pending_since.swap(now_nanos, Ordering::AcqRel)
            };
            if since != 0 {
                let lag = self.clock.now_nanos().saturating_sub(since);
                self.metrics
                    .checkpoint_lag
                    .observe(Duration::from_nanos(lag));
            }
            info.checkpoint.send_replace(Some(Arc::new(cp)));
        }
        self.metrics
            .checkpoints
            .fetch_add(count as u64, Ordering::Relaxed);
        Ok(count)
    }
}

/// The ledger. Dropping it shuts down cleanly (drains appends, signs a final checkpoint).
pub struct Ledger {
    shared: Arc<Shared>,
    submit: RwLock<Option<mpsc::Sender<Submission>>>,
    inflight: Arc<Semaphore>,
    inflight_permits: u32,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl std::fmt::Debug for Ledger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ledger")
            .field("logs", &self.shared.read_logs().len())
            .finish()
    }
}

const PERMIT_BYTES: usize = 1024;

/// Group commits whose index entries may wait for the indexer before the sequencer waits too
/// (about a second of commits under full load; a job holds 32 bytes per leaf and 21 per
/// search key).
const INDEX_QUEUE_JOBS: usize = 256;

/// How long a lookup waits for the indexer to cover the leaves it asks about (normally
/// milliseconds behind the durable tree).
const INDEX_WAIT: Duration = Duration::from_secs(5);

impl Ledger {
    /// Opens the ledger on `store` with the system clock.
    pub fn open(
        store: Arc<dyn Store>,
        keyring: Arc<RwLock<Keyring>>,
        options: LedgerOptions,
    ) -> Result<Ledger, LedgerError> {
        Self::open_with_clock(store, keyring, options, Arc::new(SystemClock))
    }

    pub fn open_with_clock(
        store: Arc<dyn Store>,
        keyring: Arc<RwLock<Keyring>>,
        options: LedgerOptions,
        clock: Arc<dyn Clock>,
    ) -> Result<Ledger, LedgerError> {
        check_format_version(store.as_ref())?;
        let (logs, next_log_id) = load_logs(store.as_ref())?;
        let inflight_permits =
            (options.max_inflight_bytes / PERMIT_BYTES).clamp(1, u32::MAX as usize >> 4) as u32;
        let shared = Arc::new(Shared {
            store,
            options,
            keyring,
            clock,
            metrics: LedgerMetrics::default(),
            logs: RwLock::new(logs.into_iter().map(|l| (l.key.clone(), l)).collect()),
            failure: Mutex::new(None),
            write_error: Mutex::new(None),
            sign_lock: Mutex::new(()),
            segment_lock: Mutex::new(()),
            cosign_lock: Mutex::new(()),
            wake: Wake::default(),
        });
        // Bounded: if the indexer falls behind for long, commits wait for it instead of
        // queueing leaf hashes without limit.
        let (index_tx, index_rx) = std::sync::mpsc::sync_channel(INDEX_QUEUE_JOBS);
        let sequencer = Sequencer::new(shared.clone(), next_log_id, index_tx)?;
        let (tx, rx) = mpsc::channel(4096);
        // Order matters for close(): sequencer, then indexer (gathering, then writing), then
        // checkpointer.
        let mut threads = Vec::new();
        threads.push(
            std::thread::Builder::new()
                .name("auditledger-sequencer".into())
                .spawn(move || sequencer.run(rx))
                .map_err(|e| LedgerError::Unavailable(format!("starting sequencer thread: {e}")))?,
        );
        // One run written while the next is gathered.
        let (runs_tx, runs_rx) = std::sync::mpsc::sync_channel(1);
        let index_shared = shared.clone();
        threads.push(
            std::thread::Builder::new()
                .name("auditledger-indexer".into())
                .spawn(move || crate::indexer::gather(index_shared, index_rx, runs_tx))
                .map_err(|e| LedgerError::Unavailable(format!("starting indexer thread: {e}")))?,
        );
        let index_shared = shared.clone();
        threads.push(
            std::thread::Builder::new()
                .name("auditledger-index-writer".into())
                .spawn(move || crate::indexer::write_runs(index_shared, runs_rx))
                .map_err(|e| {
                    LedgerError::Unavailable(format!("starting index writer thread: {e}"))
                })?,
        );
        let cp_shared = shared.clone();
        threads.push(
            std::thread::Builder::new()
                .name("auditledger-checkpointer".into())
                .spawn(move || run_checkpointer(cp_shared))
                .map_err(|e| {
                    LedgerError::Unavailable(format!("starting checkpointer thread: {e}"))
                })?,
        );
        Ok(Ledger {
            shared,
            submit: RwLock::new(Some(tx)),
            inflight: Arc::new(Semaphore::new(inflight_permits as usize)),
            inflight_permits,
            threads: Mutex::new(threads),
        })
    }

    pub fn options(&self) -> &LedgerOptions {
        &self.shared.options
    }

    pub fn metrics(&self) -> &LedgerMetrics {
        &self.shared.metrics
    }

    pub fn keyring(&self) -> &Arc<RwLock<Keyring>> {
        &self.shared.keyring
    }

    /// The legal-hold registry.
    pub fn holds(&self) -> crate::holds::Holds<'_> {
        crate::holds::Holds::new(self.shared.store.as_ref(), &self.shared.segment_lock)
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.shared.store
    }

    /// Origin line of a log (whether or not it exists yet).
    pub fn origin_for(&self, key: &LogKey) -> String {
        self.shared.origin_for(key)
    }

    /// Validates and encodes a batch; any invalid event rejects the whole batch.
    fn prepare(
        &self,
        events: &[AuditEvent],
        system: bool,
    ) -> Result<Vec<PreparedEvent>, LedgerError> {
        let opts = &self.shared.options;
        let mut prepared = Vec::with_capacity(events.len());
        for (event_index, ev) in events.iter().enumerate() {
            let invalid = |field: &'static str, reason: String| LedgerError::InvalidEvent {
                event_index,
                field,
                reason,
            };
            let checked = if system && ev.tenant_id == SYSTEM_TENANT {
                let mut copy = ev.clone();
                copy.tenant_id = "system".into();
                event::validate(&copy, opts.max_event_bytes)
            } else if !system {
                event::validate(ev, opts.max_event_bytes)
            } else {
                return Err(invalid(
                    "tenant_id",
                    format!("system events must use tenant {SYSTEM_TENANT:?}"),
                ));
            };
            let event_id = checked.map_err(|e| invalid(e.field, e.reason))?;
            if !opts.environments.iter().any(|e| e == &ev.environment) {
                return Err(invalid(
                    "environment",
                    format!(
                        "{:?} is not a configured environment ({})",
                        ev.environment,
                        opts.environments.join(", ")
                    ),
                ));
            }
            let log = match prepared.last() {
                Some(PreparedEvent { log, .. })
                    if log.tenant_id == ev.tenant_id && log.environment == ev.environment =>
                {
                    log.clone()
                }
                _ => Arc::new(LogKey::new(ev.tenant_id.clone(), ev.environment.clone())),
            };
            prepared.push(PreparedEvent {
                log,
                event_id,
                event_bytes: event::encode_event(ev),
                fields: crate::query::IndexedField::HOT_INDEXED
                    .into_iter()
                    .filter_map(|f| {
                        let v = f.value_in(ev);
                        (!v.is_empty()).then(|| (f.tag(), layout::field_value_hash(v)))
                    })
                    .collect(),
            });
        }
        Ok(prepared)
    }

    /// Appends a batch of events as `principal`. Returns one receipt per event, in order, once
    /// every new event is durable. All-or-nothing.
    pub async fn append(
        &self,
        principal: &str,
        events: &[AuditEvent],
    ) -> Result<Vec<Receipt>, LedgerError> {
        self.submit(principal, events).await?.wait().await
    }

    /// Validates a batch and queues it for the sequencer; returns once it is queued. Batches
    /// submitted one after another by the same caller get increasing leaf indexes, so a stream
    /// can keep many batches in flight and still have them logged in the order it sent them.
    pub async fn submit(
        &self,
        principal: &str,
        events: &[AuditEvent],
    ) -> Result<PendingAppend, LedgerError> {
        let prepared = self.prepare(events, false)?;
        self.enqueue(principal, prepared).await
    }

    /// Appends ledger-generated events to the system log of their environment.
    pub async fn append_system(&self, events: &[AuditEvent]) -> Result<Vec<Receipt>, LedgerError> {
        let prepared = self.prepare(events, true)?;
        self.enqueue("auditledger", prepared).await?.wait().await
    }

    /// [`Ledger::append`] for threads outside an async runtime (parks the calling thread).
    pub fn append_blocking(
        &self,
        principal: &str,
        events: &[AuditEvent],
    ) -> Result<Vec<Receipt>, LedgerError> {
        block_on(self.append(principal, events))
    }

    async fn enqueue(
        &self,
        principal: &str,
        events: Vec<PreparedEvent>,
    ) -> Result<PendingAppend, LedgerError> {
        if events.is_empty() {
            return Ok(PendingAppend(None));
        }
        if let Some(reason) = self.shared.failure() {
            return Err(LedgerError::Unavailable(reason));
        }
        let bytes: usize = events.iter().map(|e| e.event_bytes.len()).sum();
        let permits = (bytes / PERMIT_BYTES).clamp(1, self.inflight_permits as usize) as u32;
        let permit = self
            .inflight
            .clone()
            .acquire_many_owned(permits)
            .await
            .map_err(|_| LedgerError::Unavailable("ledger is shutting down".into()))?;
        let sender = self
            .submit
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or_else(|| LedgerError::Unavailable("ledger is shutting down".into()))?;
        let (reply, rx) = oneshot::channel();
        sender
            .send(Submission {
                principal: Arc::from(principal),
                events,
                reply,
                _permit: Some(permit),
            })
            .await
            .map_err(|_| LedgerError::Unavailable("ledger is shutting down".into()))?;
        Ok(PendingAppend(Some(rx)))
    }

    /// The log of a tenant and environment, if anything was ever appended to it.
    pub fn log(&self, tenant_id: &str, environment: &str) -> Option<Log> {
        let key = LogKey::new(tenant_id, environment);
        self.shared.read_logs().get(&key).map(|info| Log {
            shared: self.shared.clone(),
            info: info.clone(),
        })
    }

    /// Every log, ordered by creation.
    pub fn logs(&self) -> Vec<Log> {
        self.shared
            .all_logs()
            .into_iter()
            .map(|info| Log {
                shared: self.shared.clone(),
                info,
            })
            .collect()
    }

    /// Signs checkpoints now for every log that grew (instead of waiting for the interval).
    pub fn checkpoint_now(&self) -> Result<usize, LedgerError> {
        self.shared.checkpoint_pass()
    }

    /// Why appends are refused, if they are.
    pub fn failure(&self) -> Option<String> {
        self.shared.failure()
    }

    /// Why appends cannot be made durable right now, if they cannot: the last group commit's
    /// write failed (disk full, I/O error) and none has succeeded since, or the ledger stopped
    /// accepting appends ([`Ledger::failure`]). Health checks report the ingest service as not
    /// serving while this is `Some`.
    pub fn write_error(&self) -> Option<String> {
        self.shared.failure().or_else(|| {
            self.shared
                .write_error
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone()
        })
    }

    /// Stops accepting appends, commits what was accepted, signs final checkpoints and stops
    /// the background threads. Idempotent.
    pub fn close(&self) -> Result<(), LedgerError> {
        let sender = self
            .submit
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        drop(sender);
        let threads: Vec<JoinHandle<()>> =
            std::mem::take(&mut *self.threads.lock().unwrap_or_else(|p| p.into_inner()));
        if threads.is_empty() {
            return Ok(());
        }
        let mut threads = threads.into_iter();
        // The sequencer drains accepted appends; when it exits it drops the indexer's queue,
        // the indexer hands its last run to the index writer and exits, and the writer exits
        // once everything is indexed.
        for _ in 0..3 {
            if let Some(t) = threads.next() {
                let _ = t.join();
            }
        }
        {
            let mut flag = self
                .shared
                .wake
                .flag
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            flag.1 = true;
            self.shared.wake.cond.notify_all();
        }
        for t in threads {
            let _ = t.join();
        }
        let result = self.shared.checkpoint_pass().map(|_| ());
        self.shared.store.sync()?;
        result
    }
}

impl Drop for Ledger {
    fn drop(&mut self) {
        if let Err(e) = self.close() {
            tracing::warn!(error = %e, "final checkpoint at shutdown failed");
        }
    }
}

/// Runs a future to completion on the current thread. The append path only waits on tokio
/// channels and semaphores, which need no runtime, so parking the thread is enough.
fn block_on<F: std::future::Future>(future: F) -> F::Output {
    struct ThreadWaker(std::thread::Thread);
    impl std::task::Wake for ThreadWaker {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = std::task::Waker::from(Arc::new(ThreadWaker(std::thread::current())));
    let mut cx = std::task::Context::from_waker(&waker);
    let mut future = std::pin::pin!(future);
    loop {
        if let std::task::Poll::Ready(out) = future.as_mut().poll(&mut cx) {
            return out;
        }
        std::thread::park();
    }
}

fn run_checkpointer(shared: Arc<Shared>) {
    loop {
        {
            let interval = shared.options.checkpoint_interval;
            let guard = shared.wake.flag.lock().unwrap_or_else(|p| p.into_inner());
            let (mut guard, _) = shared
                .wake
                .cond
                .wait_timeout_while(guard, interval, |f| !f.0 && !f.1)
                .unwrap_or_else(|p| p.into_inner());
            if guard.1 {
                return;
            }
            guard.0 = false;
        }
        let started = std::time::Instant::now();
        let result = shared.checkpoint_pass();
        if started.elapsed() > Duration::from_millis(200) {
            tracing::warn!(took = ?started.elapsed(), "slow checkpoint pass");
        }
        if let Err(e) = result {
            tracing::error!(error = %e, "checkpoint pass failed");
            // Back off a little so a persistent failure does not spin.
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn check_format_version(store: &dyn Store) -> Result<(), LedgerError> {
    match store.get(Space::Meta, layout::META_FORMAT_VERSION)? {
        Some(v) => match layout::decode_u32(&v) {
            Some(FORMAT_VERSION) => Ok(()),
            Some(other) => Err(LedgerError::Store(crate::store::StoreError::Unusable(
                format!(
                    "data is format version {other}; this build reads version {FORMAT_VERSION}"
                ),
            ))),
            None => Err(LedgerError::Corrupt(
                "format_version record is not 4 bytes".into(),
            )),
        },
        None => {
            let mut any = false;
            for space in Space::ALL {
                store.scan(space, &[], None, Direction::Forward, &mut |_, _| {
                    any = true;
                    false
                })?;
            }
            if any {
                return Err(LedgerError::Corrupt(
                    "store holds data but no format_version record; refusing to guess its format"
                        .into(),
                ));
            }
            let mut b = WriteBatch::new();
            b.put(
                Space::Meta,
                layout::META_FORMAT_VERSION,
                FORMAT_VERSION.to_be_bytes(),
            );
            store.write(b, true)?;
            Ok(())
        }
    }
}

fn load_logs(store: &dyn Store) -> Result<(Vec<Arc<LogInfo>>, LogId), LedgerError> {
    let mut records: Vec<(LogId, LogRecord)> = Vec::new();
    let mut bad = None;
    let (start, end) = layout::meta_log_range();
    store.scan(
        Space::Meta,
        &start,
        Some(&end),
        Direction::Forward,
        &mut |k, v| {
            match (layout::parse_meta_log_key(k), LogRecord::decode(v)) {
                (Some(id), Some(rec)) => records.push((id, rec)),
                _ => bad = Some(format!("malformed log record under key {}", hex::encode(k))),
            }
            bad.is_none()
        },
    )?;
    if let Some(b) = bad {
        return Err(LedgerError::Corrupt(b));
    }
    let next_log_id = stored_next_log_id(store)?;
    let mut logs = Vec::new();
    for (log_id, record) in records {
        if log_id >= next_log_id {
            return Err(LedgerError::Corrupt(format!(
                "log {log_id} is not below next_log_id {next_log_id}"
            )));
        }
        logs.push(load_log(store, log_id, record)?.0);
    }
    Ok((logs, next_log_id))
}

/// A log's stored state (empty before its first commit).
fn load_state(store: &dyn Store, log_id: LogId) -> Result<LogState, LedgerError> {
    match store.get(Space::Meta, &layout::meta_state_key(log_id))? {
        None => Ok(LogState::default()),
        Some(v) => LogState::decode(&v).ok_or_else(|| {
            LedgerError::Corrupt(format!(
                "log {log_id}: state record has {} bytes, want 16",
                v.len()
            ))
        }),
    }
}

/// The id the next new log gets, as stored.
pub(crate) fn stored_next_log_id(store: &dyn Store) -> Result<LogId, LedgerError> {
    match store.get(Space::Meta, layout::META_NEXT_LOG_ID)? {
        Some(v) => layout::decode_u32(&v)
            .ok_or_else(|| LedgerError::Corrupt("next_log_id is not 4 bytes".into())),
        None => Ok(0),
    }
}

/// The log registered under `origin`, loaded as [`load_log`] does, if the store has one.
pub(crate) fn load_log_by_origin(
    store: &dyn Store,
    origin: &str,
) -> Result<Option<(Arc<LogInfo>, LogState)>, LedgerError> {
    let Some(value) = store.get(Space::Meta, &layout::meta_origin_key(origin))? else {
        return Ok(None);
    };
    let log_id = layout::decode_u32(&value)
        .ok_or_else(|| LedgerError::Corrupt(format!("{origin}: log id is not 4 bytes")))?;
    let record = store
        .get(Space::Meta, &layout::meta_log_key(log_id))?
        .and_then(|v| LogRecord::decode(&v))
        .ok_or_else(|| {
            LedgerError::Corrupt(format!("{origin}: log {log_id} has no valid log record"))
        })?;
    load_log(store, log_id, record).map(Some)
}

/// Loads one registered log: its state, right edge and latest checkpoint, checked against
/// each other, with the leaf-hash and search indexes caught up to its size.
fn load_log(
    store: &dyn Store,
    log_id: LogId,
    record: LogRecord,
) -> Result<(Arc<LogInfo>, LogState), LedgerError> {
    let state = load_state(store, log_id)?;
    if store
        .get(Space::Leaves, &layout::leaf_key(log_id, state.tree_size))?
        .is_some()
    {
        return Err(LedgerError::Corrupt(format!(
            "log {}: a leaf exists at index {} beyond the recorded tree size",
            record.origin, state.tree_size
        )));
    }
    let latest = latest_stored_checkpoint(store, log_id)?;
    if let Some(cp) = &latest
        && cp.checkpoint.tree_size > state.tree_size
    {
        return Err(LedgerError::Corrupt(format!(
            "log {}: checkpoint of size {} is beyond the tree size {}",
            record.origin, cp.checkpoint.tree_size, state.tree_size
        )));
    }
    let key = LogKey::new(record.tenant_id.clone(), record.environment.clone());
    let edge = TileEdge::load(store, log_id, state.tree_size)?.snapshot();
    let watermark = crate::indexer::load_watermark(store, log_id)?;
    if watermark > state.tree_size {
        return Err(LedgerError::Corrupt(format!(
            "log {}: leaf-hash index watermark {watermark} is beyond the tree size {}",
            record.origin, state.tree_size
        )));
    }
    // After a crash the unsynced tail of the index may be gone: rebuild it now.
    let indexed = crate::indexer::catch_up(store, log_id, watermark, state.tree_size)?;
    index_fields_of_old_log(store, log_id, &record.origin, state.tree_size)?;
    let info = LogInfo::new(log_id, key, record, latest, edge);
    info.indexed.send_replace(indexed);
    info.durable_size.store(state.tree_size, Ordering::Release);
    Ok((Arc::new(info), state))
}

/// Gives a log of a data directory from before the search indexes its [`Space::Fields`]
/// entries: every hot leaf above its last released segment is indexed (chunked batches; the
/// `'F'` record goes in the last, so an interrupted open redoes the work) and `'F'` records where
/// the index starts. Released leaves below are found by scanning their segments. No-op for logs
/// that have the record (every log created since).
fn index_fields_of_old_log(
    store: &dyn Store,
    log_id: LogId,
    origin: &str,
    tree_size: u64,
) -> Result<(), LedgerError> {
    const CHUNK: u64 = 16 * 1024;
    if store
        .get(Space::Meta, &layout::meta_fields_from_key(log_id))?
        .is_some()
    {
        return Ok(());
    }
    let (seg_from, seg_to) = layout::meta_segment_range(log_id);
    let mut from = 0u64;
    let mut bad = None;
    store.scan(
        Space::Meta,
        &seg_from,
        Some(&seg_to),
        Direction::Forward,
        &mut |k, v| match k
            .get(5..)
            .and_then(layout::decode_u64)
            .and_then(|start| SegmentRecord::decode(start, v))
        {
            Some(r) => {
                if r.hot_released {
                    from = from.max(r.end());
                }
                true
            }
            None => {
                bad = Some(hex::encode(k));
                false
            }
        },
    )?;
    if let Some(k) = bad {
        return Err(LedgerError::Corrupt(format!(
            "{origin}: malformed segment record under key {k}"
        )));
    }
    let from = from.min(tree_size);
    let mut at = from;
    loop {
        let end = (at + CHUNK).min(tree_size);
        let mut keys = Vec::new();
        let mut failure = None;
        store.scan(
            Space::Leaves,
            &layout::leaf_key(log_id, at),
            Some(&layout::leaf_key(log_id, end)),
            Direction::Forward,
            &mut |k, v| {
                let Some((_, index)) = layout::parse_leaf_key(k) else {
                    failure = Some(format!("malformed leaf key {}", hex::encode(k)));
                    return false;
                };
                match event::decode_leaf(v) {
                    Ok(record) => {
                        if let Some(e) = &record.event {
                            crate::query::hot_index_keys(log_id, index, e, &mut keys);
                        }
                        true
                    }
                    Err(e) => {
                        failure = Some(format!("leaf {index}: {e}"));
                        false
                    }
                }
            },
        )?;
        if let Some(f) = failure {
            return Err(LedgerError::Corrupt(format!(
                "{origin}: building the search index: {f}"
            )));
        }
        let mut batch = WriteBatch::with_capacity(keys.len() / 4 + 1);
        crate::indexer::put_postings(&mut batch, &keys);
        if end == tree_size {
            batch.put(
                Space::Meta,
                layout::meta_fields_from_key(log_id),
                from.to_be_bytes(),
            );
            store.write(batch, true)?;
            return Ok(());
        }
        store.write(batch, false)?;
        at = end;
    }
}

fn latest_stored_checkpoint(
    store: &dyn Store,
    log_id: LogId,
) -> Result<Option<SignedCheckpoint>, LedgerError> {
    let (start, end) = layout::log_range(log_id);
    let mut note = None;
    store.scan(
        Space::Checkpoints,
        &start,
        end.as_ref().map(|e| &e[..]),
        Direction::Reverse,
        &mut |_, v| {
            note = Some(v.to_vec());
            false
        },
    )?;
    note.map(|n| {
        let text = String::from_utf8(n)
            .map_err(|_| LedgerError::Corrupt(format!("log {log_id}: checkpoint is not UTF-8")))?;
        SignedCheckpoint::from_note(text)
    })
    .transpose()
}

/// A handle on one log for reads.
#[derive(Clone)]
pub struct Log {
    shared: Arc<Shared>,
    info: Arc<LogInfo>,
}

impl std::fmt::Debug for Log {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Log")
            .field("origin", &self.info.origin)
            .field("tree_size", &self.tree_size())
            .finish()
    }
}

impl Log {
    pub fn origin(&self) -> &str {
        &self.info.origin
    }

    pub fn key(&self) -> &LogKey {
        &self.info.key
    }

    pub fn log_id(&self) -> LogId {
        self.info.log_id
    }

    /// Segment size exponent recorded when the log was created.
    pub fn segment_bits(&self) -> u8 {
        self.info.record.segment_bits
    }

    /// Unix nanos when the log was created.
    pub fn created_at(&self) -> u64 {
        self.info.record.created_at
    }

    /// Number of durable leaves.
    pub fn tree_size(&self) -> u64 {
        self.info.durable_size.load(Ordering::Acquire)
    }

    /// A [`HashReader`] over this log's tree at (at least) its current size.
    pub fn hash_reader(&self) -> LogHashReader<'_> {
        LogHashReader::new(
            self.shared.store.as_ref(),
            self.info.log_id,
            self.info.edge_snapshot(),
        )
    }

    /// The latest signed checkpoint.
    pub fn latest_checkpoint(&self) -> Option<Arc<SignedCheckpoint>> {
        self.info.checkpoint.borrow().clone()
    }

    /// The checkpoint signed at exactly `tree_size`.
    pub fn checkpoint_at(&self, tree_size: u64) -> Result<Arc<SignedCheckpoint>, LedgerError> {
        if let Some(latest) = self.latest_checkpoint()
            && latest.checkpoint.tree_size == tree_size
        {
            return Ok(latest);
        }
        let note = self
            .shared
            .store
            .get(
                Space::Checkpoints,
                &layout::checkpoint_key(self.info.log_id, tree_size),
            )?
            .ok_or_else(|| {
                LedgerError::NotFound(format!(
                    "{}: no checkpoint at tree size {tree_size}",
                    self.info.origin
                ))
            })?;
        let text = String::from_utf8(note)
            .map_err(|_| LedgerError::Corrupt("checkpoint is not UTF-8".into()))?;
        Ok(Arc::new(SignedCheckpoint::from_note(text)?))
    }

    /// Every stored checkpoint, oldest first.
    pub fn checkpoints(
        &self,
        visit: &mut dyn FnMut(u64, &[u8]) -> bool,
    ) -> Result<(), LedgerError> {
        let (start, end) = layout::log_range(self.info.log_id);
        self.shared.store.scan(
            Space::Checkpoints,
            &start,
            end.as_ref().map(|e| &e[..]),
            Direction::Forward,
            &mut |k, v| layout::decode_u64(&k[4..]).is_none_or(|size| visit(size, v)),
        )?;
        Ok(())
    }

    /// Waits until a checkpoint of at least `tree_size` exists.
    pub async fn wait_for_checkpoint(
        &self,
        tree_size: u64,
    ) -> Result<Arc<SignedCheckpoint>, LedgerError> {
        let mut rx = self.info.checkpoint.subscribe();
        let found = rx
            .wait_for(|c| {
                c.as_ref()
                    .is_some_and(|c| c.checkpoint.tree_size >= tree_size)
            })
            .await
            .map_err(|_| LedgerError::Unavailable("ledger closed".into()))?;
        Ok(found.clone().expect("predicate checked Some"))
    }

    fn check_size(&self, what: &'static str, size: u64) -> Result<(), LedgerError> {
        let limit = self.tree_size();
        if size > limit {
            return Err(LedgerError::OutOfRange {
                what,
                requested: size,
                limit_name: "the tree size",
                limit,
            });
        }
        Ok(())
    }

    /// Root hash at `tree_size`.
    pub fn root(&self, tree_size: u64) -> Result<Hash, LedgerError> {
        self.check_size("tree size", tree_size)?;
        Ok(merkle::root(&self.hash_reader(), tree_size)?)
    }

    /// RFC 9162 inclusion proof of `leaf_index` at `tree_size`.
    pub fn inclusion_proof(
        &self,
        leaf_index: u64,
        tree_size: u64,
    ) -> Result<Vec<Hash>, LedgerError> {
        self.check_size("tree size", tree_size)?;
        if leaf_index >= tree_size {
            return Err(LedgerError::OutOfRange {
                what: "leaf index",
                requested: leaf_index,
                limit_name: "the proof's tree size",
                limit: tree_size,
            });
        }
        Ok(merkle::inclusion_proof(
            &self.hash_reader(),
            leaf_index,
            tree_size,
        )?)
    }

    /// RFC 9162 inclusion proofs of several leaves at `tree_size`, each with the leaf's hash,
    /// from one batched read of the tiles they need.
    pub fn inclusion_proofs(
        &self,
        leaves: &[u64],
        tree_size: u64,
    ) -> Result<Vec<(Hash, Vec<Hash>)>, LedgerError> {
        self.check_size("tree size", tree_size)?;
        if let Some(&leaf_index) = leaves.iter().find(|&&i| i >= tree_size) {
            return Err(LedgerError::OutOfRange {
                what: "leaf index",
                requested: leaf_index,
                limit_name: "the proof's tree size",
                limit: tree_size,
            });
        }
        Ok(merkle::inclusion_proofs(
            &self.hash_reader(),
            leaves,
            tree_size,
        )?)
    }

    /// RFC 9162 consistency proof from `first` to `second`.
    pub fn consistency_proof(&self, first: u64, second: u64) -> Result<Vec<Hash>, LedgerError> {
        self.check_size("tree size", second)?;
        if first == 0 || first > second {
            return Err(LedgerError::InvalidArgument(format!(
                "consistency proof needs 0 < first ≤ second, got first={first} second={second}"
            )));
        }
        Ok(merkle::consistency_proof(
            &self.hash_reader(),
            first,
            second,
        )?)
    }

    /// DESIGN §7 range proof for `[start, end)` at `tree_size`.
    pub fn range_proof(
        &self,
        start: u64,
        end: u64,
        tree_size: u64,
    ) -> Result<Vec<Hash>, LedgerError> {
        self.check_size("tree size", tree_size)?;
        Ok(merkle::range_proof(
            &self.hash_reader(),
            start,
            end,
            tree_size,
        )?)
    }

    /// Leaf hash at `leaf_index`.
    pub fn leaf_hash(&self, leaf_index: u64) -> Result<Hash, LedgerError> {
        self.check_size("leaf index", leaf_index + 1)?;
        Ok(self
            .hash_reader()
            .read_hashes(&[NodeId::new(0, leaf_index)])?[0])
    }

    /// Leaf bytes at `leaf_index`, if held in the hot store.
    pub fn leaf(&self, leaf_index: u64) -> Result<Option<Vec<u8>>, LedgerError> {
        self.check_size("leaf index", leaf_index + 1)?;
        Ok(self.shared.store.get(
            Space::Leaves,
            &layout::leaf_key(self.info.log_id, leaf_index),
        )?)
    }

    /// Visits the hot leaves in `[start, end)` in order until `visit` returns false.
    pub fn scan_leaves(
        &self,
        start: u64,
        end: u64,
        visit: &mut dyn FnMut(u64, &[u8]) -> bool,
    ) -> Result<(), LedgerError> {
        self.check_size("end", end)?;
        let from = layout::leaf_key(self.info.log_id, start);
        let to = layout::leaf_key(self.info.log_id, end);
        let mut bad = None;
        self.shared.store.scan(
            Space::Leaves,
            &from,
            Some(&to),
            Direction::Forward,
            &mut |k, v| match layout::parse_leaf_key(k) {
                Some((_, index)) => visit(index, v),
                None => {
                    bad = Some(hex::encode(k));
                    false
                }
            },
        )?;
        match bad {
            Some(k) => Err(LedgerError::Corrupt(format!("malformed leaf key {k}"))),
            None => Ok(()),
        }
    }

    /// Leaves from this index on have their search-index entries ([`Space::Fields`]); leaves
    /// below it (released segments of a data directory older than the index) must be scanned.
    pub fn fields_indexed_from(&self) -> Result<u64, LedgerError> {
        match self
            .shared
            .store
            .get(Space::Meta, &layout::meta_fields_from_key(self.info.log_id))?
        {
            None => Ok(0),
            Some(v) => layout::decode_u64(&v).ok_or_else(|| {
                LedgerError::Corrupt(format!(
                    "{}: search index start is not 8 bytes",
                    self.info.origin
                ))
            }),
        }
    }

    /// Candidate leaves in `[lo, hi)` whose `field` may equal `value`, in `order`, at most
    /// `max`: from the event-id index for [`IndexedField::EventId`], else from the search index
    /// (which covers leaves from [`Log::fields_indexed_from`] on). Candidates only: an index key
    /// holds 64 bits of the value's hash, so judge each leaf with
    /// [`crate::query::EventFilter::matches`]. Hot, warm and cold leaves alike (index entries
    /// outlive the hot copy of a leaf).
    pub fn index_candidates(
        &self,
        field: IndexedField,
        value: &str,
        lo: u64,
        hi: u64,
        order: Order,
        max: usize,
    ) -> Result<Vec<u64>, LedgerError> {
        let hi = hi.min(self.tree_size());
        if lo >= hi || max == 0 {
            return Ok(Vec::new());
        }
        if field != IndexedField::EventId {
            self.wait_for_index_blocking(hi)?;
        }
        if field == IndexedField::EventId {
            // Not a valid event id: no event has it (appends validate ids).
            let Ok(id) = EventId::parse(value) else {
                return Ok(Vec::new());
            };
            return Ok(self
                .find_event(&id)?
                .filter(|i| (lo..hi).contains(i))
                .into_iter()
                .collect());
        }
        let h = layout::field_value_hash(value);
        // Posting lists are keyed by their bucket's first leaf; entries from before posting
        // lists by their own leaf, inside some bucket. Keys come in base order, so the leaves
        // of one bucket are gathered (from its list and any older entries), sorted, and
        // emitted when the scan leaves the bucket.
        let start =
            layout::field_index_key(self.info.log_id, field.tag(), &h, layout::field_bucket(lo));
        let end = layout::field_index_key(self.info.log_id, field.tag(), &h, hi);
        let direction = match order {
            Order::OldestFirst => Direction::Forward,
            Order::NewestFirst => Direction::Reverse,
        };
        let mut out = Vec::new();
        let mut bucket: Option<u64> = None;
        let mut gathered = Vec::new();
        let emit = |gathered: &mut Vec<u64>, out: &mut Vec<u64>| {
            gathered.sort_unstable();
            gathered.dedup();
            let in_range = gathered.iter().copied().filter(|l| (lo..hi).contains(l));
            match order {
                Order::OldestFirst => out.extend(in_range),
                Order::NewestFirst => out.extend(in_range.rev()),
            }
            gathered.clear();
        };
        let mut bad = None;
        self.shared
            .store
            .scan(Space::Fields, &start, Some(&end), direction, &mut |k, v| {
                let Some((_, _, _, base)) = layout::parse_field_index_key(k) else {
                    bad = Some(format!("malformed search index key {}", hex::encode(k)));
                    return false;
                };
                if bucket != Some(layout::field_bucket(base)) {
                    emit(&mut gathered, &mut out);
                    if out.len() >= max {
                        return false;
                    }
                    bucket = Some(layout::field_bucket(base));
                }
                if layout::decode_postings(base, v, &mut gathered).is_none() {
                    bad = Some(format!(
                        "malformed search index posting list under key {}",
                        hex::encode(k)
                    ));
                    return false;
                }
                true
            })?;
        if let Some(b) = bad {
            return Err(LedgerError::Corrupt(format!("{}: {b}", self.info.origin)));
        }
        emit(&mut gathered, &mut out);
        out.truncate(max);
        Ok(out)
    }

    /// Leaf index of an event id, within the published tree (an event written but not yet
    /// durable is not found).
    pub fn find_event(&self, event_id: &EventId) -> Result<Option<u64>, LedgerError> {
        let index = self.index_lookup(
            Space::EventIds,
            &layout::event_id_key(self.info.log_id, &event_id.0),
        )?;
        Ok(index.filter(|&i| i < self.tree_size()))
    }

    /// Leaf index of a leaf hash. Waits (up to 5 s) for the asynchronous leaf-hash index to
    /// cover the current tree size, and verifies the full hash against the tree.
    pub async fn find_leaf_hash(&self, leaf_hash: &Hash) -> Result<Option<u64>, LedgerError> {
        self.wait_for_index(self.tree_size()).await?;
        let Some(index) = self.index_lookup(
            Space::LeafHashes,
            &layout::leaf_hash_key(self.info.log_id, leaf_hash),
        )?
        else {
            return Ok(None);
        };
        // The key holds 96 bits of the hash; confirm the rest.
        if index < self.tree_size() && self.leaf_hash(index)? == *leaf_hash {
            Ok(Some(index))
        } else {
            Ok(None)
        }
    }

    /// Leaves below this have their leaf-hash index entry.
    pub fn indexed_size(&self) -> u64 {
        *self.info.indexed.borrow()
    }

    /// Waits (up to 5 s) until the asynchronous leaf-hash and search indexes cover `size`
    /// leaves.
    pub async fn wait_for_index(&self, size: u64) -> Result<(), LedgerError> {
        self.want_index(size);
        let mut rx = self.info.indexed.subscribe();
        tokio::time::timeout(INDEX_WAIT, rx.wait_for(|v| *v >= size))
            .await
            .map_err(|_| self.index_behind(size))?
            .map_err(|_| LedgerError::Unavailable("ledger closed".into()))?;
        Ok(())
    }

    /// [`Log::wait_for_index`] for synchronous callers: polls, so async code should await
    /// that first (then this returns at once).
    pub fn wait_for_index_blocking(&self, size: u64) -> Result<(), LedgerError> {
        self.want_index(size);
        let deadline = std::time::Instant::now() + INDEX_WAIT;
        let mut pause = Duration::from_micros(100);
        while *self.info.indexed.borrow() < size {
            if std::time::Instant::now() >= deadline {
                return Err(self.index_behind(size));
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(10));
        }
        Ok(())
    }

    /// Asks a lingering indexer to write now if the indexes do not cover `size` leaves yet.
    fn want_index(&self, size: u64) {
        self.info.index_wanted.fetch_max(size, Ordering::Relaxed);
    }

    fn index_behind(&self, size: u64) -> LedgerError {
        LedgerError::Unavailable(format!(
            "{}: the leaf-hash and search indexes cover {} of {size} leaves after {INDEX_WAIT:?}; retry",
            self.info.origin,
            *self.info.indexed.borrow()
        ))
    }

    /// Archived segments of this log (from the hot store's records), by start.
    pub fn segments(&self) -> Result<Vec<SegmentRecord>, LedgerError> {
        let (from, to) = layout::meta_segment_range(self.info.log_id);
        let mut out = Vec::new();
        let mut bad = None;
        self.shared.store.scan(
            Space::Meta,
            &from,
            Some(&to),
            Direction::Forward,
            &mut |k, v| {
                let start = k.get(5..).and_then(layout::decode_u64);
                match start.and_then(|start| SegmentRecord::decode(start, v)) {
                    Some(r) => {
                        out.push(r);
                        true
                    }
                    None => {
                        bad = Some(hex::encode(k));
                        false
                    }
                }
            },
        )?;
        match bad {
            Some(k) => Err(LedgerError::Corrupt(format!(
                "{}: malformed segment record under key {k}",
                self.info.origin
            ))),
            None => Ok(out),
        }
    }

    /// The archive record of the segment holding `leaf_index`, if that segment was archived.
    pub fn segment_of(&self, leaf_index: u64) -> Result<Option<SegmentRecord>, LedgerError> {
        let bits = self.segment_bits();
        let start = leaf_index >> bits << bits;
        let key = layout::meta_segment_key(self.info.log_id, start);
        match self.shared.store.get(Space::Meta, &key)? {
            None => Ok(None),
            Some(v) => SegmentRecord::decode(start, &v).map(Some).ok_or_else(|| {
                LedgerError::Corrupt(format!(
                    "{}: malformed segment record for [{start}, {})",
                    self.info.origin,
                    start + (1u64 << bits)
                ))
            }),
        }
    }

    /// Root of the segment `[start, start + 2^segment_bits)`: the tree node above it, read from
    /// the tiles. The segment must be complete.
    pub fn segment_root(&self, start: u64) -> Result<Hash, LedgerError> {
        let bits = self.segment_bits();
        if !start.is_multiple_of(1u64 << bits) {
            return Err(LedgerError::InvalidArgument(format!(
                "segment start {start} is not a multiple of 2^{bits}"
            )));
        }
        self.check_size("segment end", start + (1u64 << bits))?;
        Ok(self
            .hash_reader()
            .read_hashes(&[NodeId::new(bits, start >> bits)])?[0])
    }

    /// Records (durably) that a segment is archived, as written and verified by the archiver.
    /// Refuses a record whose root is not the tree's node for that range, whose size is not
    /// the log's segment size, that names the hot tier, or that would bring released leaves
    /// back into the hot tier.
    pub fn record_segment(&self, record: &SegmentRecord) -> Result<(), LedgerError> {
        let bits = self.segment_bits();
        let range = format!("{} [{}, {})", self.info.origin, record.start, record.end());
        if record.bits != bits {
            return Err(LedgerError::InvalidArgument(format!(
                "{range}: segment of 2^{} leaves, but this log's segments have 2^{bits}",
                record.bits
            )));
        }
        if record.tier == Tier::Hot {
            return Err(LedgerError::InvalidArgument(format!(
                "{range}: a segment record names the warm or cold tier holding it"
            )));
        }
        let root = self.segment_root(record.start)?;
        let bounds = self.segment_time_bounds(record.start)?;
        let existing = self.segment_of(record.start)?;
        let expected_bounds = bounds.or(existing.as_ref().map(|e| (e.oldest, e.newest)));
        if let Some((oldest, newest)) = expected_bounds
            && (record.oldest, record.newest) != (oldest, newest)
        {
            return Err(LedgerError::InvalidArgument(format!(
                "{range}: logged_at bounds [{}, {}] differ from the leaves' [{oldest}, {newest}]",
                record.oldest, record.newest
            )));
        }
        if root != record.root {
            return Err(LedgerError::InvalidArgument(format!(
                "{range}: segment root {} does not match the tree's {}",
                hex::encode(record.root),
                hex::encode(root)
            )));
        }
        let _guard = self
            .shared
            .segment_lock
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(existing) = self.segment_of(record.start)?
            && existing.hot_released
            && !record.hot_released
        {
            return Err(LedgerError::InvalidArgument(format!(
                "{range}: the hot leaves were already released; the record must say so"
            )));
        }
        let mut batch = WriteBatch::with_capacity(1);
        batch.put(
            Space::Meta,
            layout::meta_segment_key(self.info.log_id, record.start),
            record.encode(),
        );
        self.shared.store.write(batch, true)?;
        Ok(())
    }

    /// `logged_at` of the first and last leaf of the segment at `start`, if they are hot.
    pub fn segment_time_bounds(&self, start: u64) -> Result<Option<(u64, u64)>, LedgerError> {
        let end = start + (1u64 << self.segment_bits());
        self.check_size("segment end", end)?;
        let logged_at = |index: u64| -> Result<Option<u64>, LedgerError> {
            match self.leaf(index)? {
                None => Ok(None),
                Some(leaf) => event::decode_leaf(&leaf)
                    .map(|r| Some(r.logged_at))
                    .map_err(|e| {
                        LedgerError::Corrupt(format!("{} leaf {index}: {e}", self.info.origin))
                    }),
            }
        };
        Ok(match (logged_at(start)?, logged_at(end - 1)?) {
            (Some(a), Some(b)) => Some((a, b)),
            _ => None,
        })
    }

    /// Deletes the hot copy of an archived segment's leaf bytes, atomically with marking its
    /// record released. Returns false if they were already released. Tiles, indexes and
    /// checkpoints stay; reads of these leaves must then go to the segment's tier.
    pub fn release_hot_leaves(&self, start: u64) -> Result<bool, LedgerError> {
        let _guard = self
            .shared
            .segment_lock
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let Some(mut record) = self.segment_of(start)?.filter(|r| r.start == start) else {
            return Err(LedgerError::NotFound(format!(
                "{}: no archived segment starts at {start}; record it before releasing",
                self.info.origin
            )));
        };
        if record.hot_released {
            return Ok(false);
        }
        // The indexer's catch-up after a crash re-reads leaves from its watermark: release
        // only what it has covered.
        if self.indexed_size() < record.end() {
            return Err(LedgerError::Unavailable(format!(
                "{}: the leaf-hash index covers {} leaves, not yet all of [{start}, {}); retry",
                self.info.origin,
                self.indexed_size(),
                record.end()
            )));
        }
        record.hot_released = true;
        record.recorded_at = self.shared.clock.now_nanos();
        let mut batch = WriteBatch::with_capacity(2);
        batch.delete_range(
            Space::Leaves,
            layout::leaf_key(self.info.log_id, start),
            layout::leaf_key(self.info.log_id, record.end()),
        );
        batch.put(
            Space::Meta,
            layout::meta_segment_key(self.info.log_id, start),
            record.encode(),
        );
        self.shared.store.write(batch, true)?;
        Ok(true)
    }

    /// Stores witness cosignatures of this log's checkpoint at `tree_size`, durably. The
    /// caller has verified each against that checkpoint's body and a configured witness
    /// ([`crate::cosignature`]); this checks that the checkpoint exists (`NotFound` naming the
    /// size otherwise). One record per witness: an older cosignature never replaces a newer one.
    pub fn store_cosignatures(
        &self,
        tree_size: u64,
        cosignatures: &[Cosignature],
    ) -> Result<(), LedgerError> {
        self.checkpoint_at(tree_size)?;
        let _serial = self
            .shared
            .cosign_lock
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let existing = self.cosignatures(tree_size)?;
        let mut batch = WriteBatch::with_capacity(cosignatures.len());
        for c in cosignatures {
            let newer_stored = existing
                .iter()
                .any(|e| e.key_id == c.key_id && e.name == c.name && e.timestamp > c.timestamp);
            if newer_stored {
                continue;
            }
            let mut value = Vec::with_capacity(COSIGNATURE_V1_LEN);
            value.extend_from_slice(&c.timestamp.to_be_bytes());
            value.extend_from_slice(&c.signature);
            batch.put(
                Space::Meta,
                layout::meta_cosignature_key(self.info.log_id, tree_size, c.key_id, &c.name),
                value,
            );
        }
        self.shared.store.write(batch, true)?;
        Ok(())
    }

    /// Witness cosignatures stored for the checkpoint at `tree_size`, by key ID then name.
    pub fn cosignatures(&self, tree_size: u64) -> Result<Vec<Cosignature>, LedgerError> {
        let prefix = layout::meta_cosignature_prefix(self.info.log_id, tree_size);
        let mut out = Vec::new();
        let mut bad = None;
        self.shared.store.scan(
            Space::Meta,
            &prefix,
            None,
            Direction::Forward,
            &mut |k, v| {
                if !k.starts_with(&prefix) {
                    return false;
                }
                let parsed = layout::parse_meta_cosignature_key(k);
                match (parsed, <&[u8; COSIGNATURE_V1_LEN]>::try_from(v)) {
                    (Some((_, _, key_id, name)), Ok(value)) => {
                        let mut signature = [0u8; 64];
                        signature.copy_from_slice(&value[8..]);
                        out.push(Cosignature {
                            name,
                            key_id,
                            timestamp: u64::from_be_bytes(value[..8].try_into().expect("8 bytes")),
                            signature,
                        });
                        true
                    }
                    _ => {
                        bad = Some(hex::encode(k));
                        false
                    }
                }
            },
        )?;
        match bad {
            Some(k) => Err(LedgerError::Corrupt(format!(
                "{}: malformed cosignature record under key {k}",
                self.info.origin
            ))),
            None => Ok(out),
        }
    }

    /// The checkpoint's note with every stored witness cosignature appended after the log's
    /// own signature lines.
    pub fn cosigned_note(&self, checkpoint: &SignedCheckpoint) -> Result<String, LedgerError> {
        let cosignatures = self.cosignatures(checkpoint.checkpoint.tree_size)?;
        if cosignatures.is_empty() {
            return Ok(checkpoint.note.clone());
        }
        let mut note = crate::note::Note::parse(checkpoint.note.as_bytes())
            .map_err(crate::checkpoint::CheckpointError::from)?;
        for c in &cosignatures {
            note.add_signature(c.to_note_signature());
        }
        Ok(note.to_note_string())
    }

    fn index_lookup(&self, space: Space, key: &[u8]) -> Result<Option<u64>, LedgerError> {
        match self.shared.store.get(space, key)? {
            None => Ok(None),
            Some(v) => layout::decode_u64(&v).map(Some).ok_or_else(|| {
                LedgerError::Corrupt(format!(
                    "{} index value has {} bytes",
                    space.name(),
                    v.len()
                ))
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::EventKind;
    use crate::note::SignerKey;
    use crate::store::faulty::{FaultyStore, WriteFaults};
    use crate::store::memory::MemoryStore;

    fn event(i: u64, tenant: &str) -> AuditEvent {
        AuditEvent {
            event_id: format!("01936f0e-7a2b-7c3d-8e4f-{i:012x}"),
            event_kind: EventKind::ToolCall as i32,
            tenant_id: tenant.into(),
            environment: "prod".into(),
            occurred_at: 1 + i,
            tool_name: format!("tool-{i}"),
            ..Default::default()
        }
    }

    fn keyring() -> Arc<RwLock<Keyring>> {
        let mut ring = Keyring::default();
        ring.add_existing(
            SignerKey::from_seed("auditledger.local", &[5u8; 32]).unwrap(),
            None,
            0,
        );
        Arc::new(RwLock::new(ring))
    }

    fn options() -> LedgerOptions {
        LedgerOptions {
            checkpoint_interval: Duration::from_secs(3600),
            ..Default::default()
        }
    }

    #[test]
    fn slow_group_commits_are_counted() {
        let store = Arc::new(FaultyStore::new(MemoryStore::new()));
        let ledger = Ledger::open(store.clone(), keyring(), options()).unwrap();
        let slow = || ledger.shared.metrics.slow_commits.load(Ordering::Relaxed);
        ledger.append_blocking("gw", &[event(1, "acme")]).unwrap();
        assert_eq!(slow(), 0, "a commit without delay is not slow");
        store.set_write_faults(WriteFaults {
            delay: crate::sequencer::SLOW_COMMIT + Duration::from_millis(50),
            durable_only: true,
            ..Default::default()
        });
        ledger.append_blocking("gw", &[event(2, "acme")]).unwrap();
        assert_eq!(slow(), 1, "the write took longer than SLOW_COMMIT");
        store.set_write_faults(WriteFaults::default());
        ledger.append_blocking("gw", &[event(3, "acme")]).unwrap();
        assert_eq!(slow(), 1);
        ledger.close().unwrap();
    }

    #[test]
    fn failed_write_acknowledges_nothing_and_recovers() {
        let store = Arc::new(FaultyStore::new(MemoryStore::new()));
        let ledger = Ledger::open(store.clone(), keyring(), options()).unwrap();
        ledger.append_blocking("gw", &[event(1, "acme")]).unwrap();
        store.set_write_faults(WriteFaults {
            fail_next: 1,
            durable_only: true,
            ..Default::default()
        });
        let err = ledger
            .append_blocking("gw", &[event(2, "acme"), event(3, "beta")])
            .unwrap_err();
        assert!(matches!(err, LedgerError::Store(_)), "{err}");
        let write_error = ledger.write_error().expect("the failed write is reported");
        assert!(write_error.contains("write failure"), "{write_error}");
        let log = ledger.log("acme", "prod").unwrap();
        assert_eq!(log.tree_size(), 1, "failed batch must not be visible");
        assert!(
            ledger.log("beta", "prod").is_none(),
            "log created by a failed batch must vanish"
        );
        // The same events succeed afterwards, at the indexes the failed write would have used.
        let receipts = ledger
            .append_blocking("gw", &[event(2, "acme"), event(3, "beta")])
            .unwrap();
        assert_eq!(receipts[0].leaf_index, 1);
        assert_eq!(receipts[1].leaf_index, 0);
        assert!(!receipts[0].duplicate);
        assert_eq!(ledger.write_error(), None, "a successful write clears it");
    }

    #[test]
    fn failed_writes_in_the_pipeline_fail_what_was_built_on_them_and_nothing_else() {
        // Slow writes keep a group in the committer while the sequencer builds the next one on
        // top of it; in each of three rounds the first write fails. Every event is then either
        // acknowledged at an index that holds it, or refused and absent: no hole, no
        // duplicate, no lost receipt.
        let store = Arc::new(FaultyStore::new(MemoryStore::new()));
        let ledger = Arc::new(Ledger::open(store.clone(), keyring(), options()).unwrap());
        let faults = WriteFaults {
            fail_next: 1,
            delay: Duration::from_millis(15),
            durable_only: true,
            ..Default::default()
        };
        let results = crate::store::faulty::append_in_rounds(&store, &ledger, 3, &faults, |n| {
            event(n, "acme")
        });
        let log = ledger.log("acme", "prod").unwrap();
        let mut indexes = Vec::new();
        let mut refused = Vec::new();
        for (event, result) in results {
            match result {
                Ok(receipts) => {
                    let r = &receipts[0];
                    assert!(!r.duplicate, "each event was sent once");
                    let id = EventId::parse(&event.event_id).unwrap();
                    assert_eq!(log.find_event(&id).unwrap(), Some(r.leaf_index));
                    let leaf = log.leaf(r.leaf_index).unwrap().expect("acknowledged leaf");
                    assert_eq!(crate::merkle::leaf_hash(&leaf), r.leaf_hash);
                    indexes.push(r.leaf_index);
                }
                Err(err) => {
                    let id = EventId::parse(&event.event_id).unwrap();
                    assert_eq!(
                        log.find_event(&id).unwrap(),
                        None,
                        "refused but stored: {err}"
                    );
                    refused.push(event);
                }
            }
        }
        assert_eq!(
            store.write_counts().1,
            3,
            "the three injected failures happened"
        );
        assert!(
            refused.len() >= 3,
            "each failed write refused its own group"
        );
        indexes.sort_unstable();
        assert_eq!(
            indexes,
            (0..log.tree_size()).collect::<Vec<_>>(),
            "no holes"
        );
        // What was refused was not written: re-sent, it is new, right after the others.
        let size = log.tree_size();
        let receipts = ledger.append_blocking("gw", &refused).unwrap();
        for (i, r) in receipts.iter().enumerate() {
            assert!(!r.duplicate);
            assert_eq!(r.leaf_index, size + i as u64);
        }
        ledger.checkpoint_now().unwrap();
        let cp = log.latest_checkpoint().unwrap();
        assert_eq!(cp.checkpoint.tree_size, size + refused.len() as u64);
        // The signed root is the root of exactly the stored leaves, in order.
        let mut tree = crate::merkle::MemoryTree::new();
        for i in 0..cp.checkpoint.tree_size {
            tree.append(crate::merkle::leaf_hash(&log.leaf(i).unwrap().unwrap()));
        }
        let root = crate::merkle::root(&tree, tree.size()).unwrap();
        assert_eq!(cp.checkpoint.root_hash, root);
    }

    #[test]
    fn no_signing_key_means_no_checkpoint_and_a_clear_error() {
        let ledger = Ledger::open(
            Arc::new(MemoryStore::new()),
            Arc::new(RwLock::new(Keyring::default())),
            options(),
        )
        .unwrap();
        ledger.append_blocking("gw", &[event(1, "acme")]).unwrap();
        let err = ledger.checkpoint_now().unwrap_err().to_string();
        assert!(err.contains("no active signing key"), "{err}");
        assert!(
            ledger
                .log("acme", "prod")
                .unwrap()
                .latest_checkpoint()
                .is_none()
        );
    }

    #[test]
    fn cosignatures_are_stored_per_checkpoint_and_served_with_its_note() {
        use crate::cosignature::{WitnessOutcome, WitnessSigner, check_witnesses};
        let ledger = Ledger::open(Arc::new(MemoryStore::new()), keyring(), options()).unwrap();
        ledger.append_blocking("gw", &[event(1, "acme")]).unwrap();
        ledger.checkpoint_now().unwrap();
        let log = ledger.log("acme", "prod").unwrap();
        let cp = log.latest_checkpoint().unwrap();
        let body = crate::note::Note::parse(cp.note.as_bytes()).unwrap();
        let w1 = WitnessSigner::from_seed("w1.example", &[21; 32]).unwrap();
        let w2 = WitnessSigner::from_seed("w2.example", &[22; 32]).unwrap();
        let newer = w1.cosign(body.text(), 2000).unwrap();
        log.store_cosignatures(1, &[newer, w2.cosign(body.text(), 1500).unwrap()])
            .unwrap();
        // An older cosignature by the same witness does not replace the newer one.
        log.store_cosignatures(1, &[w1.cosign(body.text(), 1000).unwrap()])
            .unwrap();
        assert_eq!(log.cosignatures(1).unwrap().len(), 2);
        let note = log.cosigned_note(&cp).unwrap();
        let parsed = crate::note::Note::parse(note.as_bytes()).unwrap();
        assert_eq!(
            parsed.text(),
            body.text(),
            "cosignatures do not touch the body"
        );
        let checks = check_witnesses(&parsed, &[w1.witness_key(), w2.witness_key()]);
        assert_eq!(
            checks[0].outcome,
            WitnessOutcome::Cosigned { timestamp: 2000 }
        );
        assert_eq!(
            checks[1].outcome,
            WitnessOutcome::Cosigned { timestamp: 1500 }
        );
        // The log's own signature still verifies; other sizes have no checkpoint.
        crate::checkpoint::open(note.as_bytes(), &keyring().read().unwrap().all_verifiers())
            .unwrap();
        let err = log
            .store_cosignatures(7, &[w1.cosign(body.text(), 1).unwrap()])
            .unwrap_err();
        assert!(
            err.to_string().contains("no checkpoint at tree size 7"),
            "{err}"
        );
        assert!(log.cosignatures(7).unwrap().is_empty());
    }

    /// Concurrent stores of one witness's cosignatures for one checkpoint keep the newest,
    /// whatever the interleaving (each store reads what is there, then writes: a slow disk,
    /// 2 ms per synced write, widens the window between the two).
    #[test]
    fn concurrent_cosignatures_keep_the_newest_per_witness() {
        use crate::cosignature::WitnessSigner;
        use crate::store::faulty::{FaultyStore, WriteFaults};
        let store = Arc::new(FaultyStore::new(MemoryStore::new()));
        let ledger = Ledger::open(store.clone(), keyring(), options()).unwrap();
        ledger.append_blocking("gw", &[event(1, "acme")]).unwrap();
        ledger.checkpoint_now().unwrap();
        store.set_write_faults(WriteFaults {
            delay: Duration::from_millis(2),
            durable_only: true,
            ..Default::default()
        });
        let log = ledger.log("acme", "prod").unwrap();
        let cp = log.latest_checkpoint().unwrap();
        let body = crate::note::Note::parse(cp.note.as_bytes()).unwrap();
        let w1 = WitnessSigner::from_seed("w1.example", &[21; 32]).unwrap();
        const THREADS: u64 = 8;
        const EACH: u64 = 6;
        const ROUNDS: u64 = 5;
        for round in 0..ROUNDS {
            // Each thread stores newer and newer cosignatures; the newest of all is the last
            // one of some thread, so a lost race leaves an older one stored.
            let base = round * 1000;
            let batches: Vec<Vec<_>> = (0..THREADS)
                .map(|t| {
                    (0..EACH)
                        .map(|i| w1.cosign(body.text(), base + 1 + i * THREADS + t).unwrap())
                        .collect()
                })
                .collect();
            std::thread::scope(|s| {
                for batch in &batches {
                    let log = &log;
                    s.spawn(move || {
                        for c in batch {
                            log.store_cosignatures(1, std::slice::from_ref(c)).unwrap();
                        }
                    });
                }
            });
            let stored = log.cosignatures(1).unwrap();
            assert_eq!(stored.len(), 1);
            assert_eq!(
                stored[0].timestamp,
                base + EACH * THREADS,
                "round {round}: an older cosignature replaced the newest"
            );
        }
    }

    #[test]
    fn invalid_event_rejects_whole_batch() {
        let ledger = Ledger::open(Arc::new(MemoryStore::new()), keyring(), options()).unwrap();
        let mut bad = event(2, "acme");
        bad.environment = "qa".into();
        let err = ledger
            .append_blocking("gw", &[event(1, "acme"), bad])
            .unwrap_err();
        match err {
            LedgerError::InvalidEvent {
                event_index,
                field,
                reason,
            } => {
                assert_eq!((event_index, field), (1, "environment"));
                assert!(reason.contains("\"qa\""), "{reason}");
            }
            other => panic!("unexpected {other}"),
        }
        assert!(
            ledger.log("acme", "prod").is_none(),
            "nothing may be appended"
        );
    }
}
