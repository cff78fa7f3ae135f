//! [`Client`]: what a gateway calls on its enforcement path. `record` fills in the event's id
//! and sequence number, validates it, applies backpressure, makes it durable locally (spool
//! mode) and hands it to the background sender; the returned [`RecordHandle`] resolves to the
//! ledger's receipt.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use auditledger_proto::v1::AuditEvent;
use auditledger_proto::v1::ingest_client::IngestClient;
use tokio::sync::{Notify, Semaphore, mpsc, oneshot, watch};
use tonic::transport::Endpoint;

use crate::error::{ClientError, DeliveryError, FlushTimeout, RecordError};
use crate::metrics::{Metrics, MetricsSnapshot};
use crate::options::{Backpressure, Durability, Options};
use crate::receipt::Receipt;
use crate::sender::{Entry, Handles, Sender, Shared, Source};
use crate::spool::{self, AppendJob, WriterMsg};

/// A connection to the ledger with its buffer or spool and its background sender. Cheap to
/// share behind an `Arc`; every method takes `&self`.
pub struct Client {
    options: Options,
    shared: Arc<Shared>,
    mode: Mode,
    closing: watch::Sender<Option<std::time::Instant>>,
    sender: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

enum Mode {
    Memory {
        tx: mpsc::UnboundedSender<Entry>,
        permits: Arc<Semaphore>,
        /// (next local sequence number, next gateway_seq); one lock so that numbering and
        /// queueing happen in the same order.
        numbers: Mutex<(u64, u64)>,
    },
    Spool {
        writer: Mutex<Option<mpsc::UnboundedSender<WriterMsg>>>,
        space: watch::Receiver<u64>,
        thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    },
}

/// What `record` returns: the ids the event was recorded with, and its receipt to come.
#[derive(Debug)]
pub struct RecordHandle {
    pub event_id: String,
    pub gateway_seq: u64,
    /// The event was fsynced to the spool before `record` returned.
    pub spooled: bool,
    tracked: bool,
    rx: oneshot::Receiver<Result<Receipt, DeliveryError>>,
}

impl RecordHandle {
    /// Waits for the ledger's receipt (or the reason there is none).
    pub async fn receipt(self) -> Result<Receipt, DeliveryError> {
        if !self.tracked {
            return Err(DeliveryError::NotTracked {
                event_id: self.event_id,
            });
        }
        match self.rx.await {
            Ok(outcome) => outcome,
            Err(_) => Err(DeliveryError::Closed {
                event_id: self.event_id,
                spooled: self.spooled,
            }),
        }
    }
}

/// What `close` left behind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CloseReport {
    /// Events without an outcome when the client stopped (memory mode: lost; spool mode: still
    /// in the spool).
    pub unacknowledged: u64,
}

fn check_options(options: &Options) -> Result<(), ClientError> {
    let positive = [
        ("max_batch_events", options.max_batch_events),
        ("max_batch_bytes", options.max_batch_bytes),
        ("max_in_flight_batches", options.max_in_flight_batches),
        ("max_buffered_events", options.max_buffered_events),
    ];
    for (option, value) in positive {
        if value == 0 {
            return Err(ClientError::Options {
                option,
                reason: "must be at least 1".into(),
            });
        }
    }
    if let Durability::Spool(s) = &options.durability
        && s.max_bytes < s.segment_bytes.min(1 << 20)
    {
        return Err(ClientError::Options {
            option: "spool.max_bytes",
            reason: format!("{} bytes is too small for a spool", s.max_bytes),
        });
    }
    Ok(())
}

impl Client {
    /// Connects lazily (the ledger may be down: events then wait in the buffer or spool) and
    /// starts the background sender. `endpoint` is `http://host:port` (or `https://` with
    /// `options.tls`); `token` a gateway token. In spool mode, opens and recovers the spool
    /// (events left by an earlier process are replayed first).
    pub async fn connect(
        endpoint: &str,
        token: &str,
        options: Options,
    ) -> Result<Client, ClientError> {
        check_options(&options)?;
        let auth = format!("Bearer {token}")
            .parse()
            .map_err(|_| ClientError::Token)?;
        let bad = |reason: String| ClientError::Endpoint {
            endpoint: endpoint.to_owned(),
            reason,
        };
        let mut ep = Endpoint::from_shared(endpoint.to_owned())
            .map_err(|e| bad(e.to_string()))?
            .connect_timeout(options.connect_timeout)
            .tcp_nodelay(true)
            // Detects a ledger that stopped answering (not just closed connections).
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(5))
            .keep_alive_while_idle(true);
        if let Some(tls) = &options.tls {
            ep = ep.tls_config(tls.clone()).map_err(|e| bad(e.to_string()))?;
        }
        let channel = ep.connect_lazy();
        // Responses with proofs for large batches exceed tonic's 4 MiB default.
        let grpc = IngestClient::new(channel).max_decoding_message_size(256 << 20);
        let metrics = Arc::new(Metrics::default());
        let handles: Handles = Arc::default();
        let (closing_tx, closing_rx) = watch::channel(None);
        let assigned = Arc::new(AtomicU64::new(0));
        let (mode, source, assigned) = match &options.durability {
            Durability::Memory => {
                let (tx, rx) = mpsc::unbounded_channel();
                let permits = Arc::new(Semaphore::new(options.max_buffered_events));
                let mode = Mode::Memory {
                    tx,
                    permits: permits.clone(),
                    numbers: Mutex::new((1, options.first_gateway_seq.max(1))),
                };
                let source = Source::Memory {
                    rx,
                    buffered: Default::default(),
                    permits,
                };
                (mode, source, assigned)
            }
            Durability::Spool(spool_options) => {
                let opened = spool::open(
                    &spool_options.dir,
                    spool_options.max_bytes,
                    spool_options.segment_bytes,
                    metrics.clone(),
                )?;
                if opened.replay > 0 {
                    tracing::info!(dir = %spool_options.dir.display(), events = opened.replay,
                        "spool: replaying events left by an earlier run");
                }
                metrics.buffered.store(opened.replay, Ordering::Relaxed);
                let writer = opened.writer;
                let space = writer.space.subscribe();
                let assigned = writer.assigned.clone();
                let dir = writer.dir().to_owned();
                let (wtx, wrx) = mpsc::unbounded_channel();
                let thread_handles = handles.clone();
                let max_tracked = options.max_tracked_receipts;
                let thread = std::thread::Builder::new()
                    .name("auditledger-spool".into())
                    .spawn(move || writer.run(wrx, thread_handles, max_tracked))
                    .map_err(|e| {
                        crate::error::SpoolError::io(&dir, "starting the writer thread", e)
                    })?;
                let acked = opened.reader.pos;
                let source = Source::Spool {
                    reader: opened.reader,
                    writer: wtx.clone(),
                    dir,
                    acked,
                };
                let mode = Mode::Spool {
                    writer: Mutex::new(Some(wtx)),
                    space,
                    thread: Mutex::new(Some(thread)),
                };
                (mode, source, assigned)
            }
        };
        let (done_tx, _) = watch::channel(0);
        let shared = Arc::new(Shared {
            handles,
            metrics,
            assigned,
            done_below: done_tx,
            flush_to: AtomicU64::new(0),
            wake: Notify::new(),
            auth: std::sync::RwLock::new(auth),
            token_generation: AtomicU64::new(0),
        });
        let sender = Sender::new(grpc, options.clone(), shared.clone(), source, closing_rx, 0);
        let task = tokio::spawn(sender.run());
        Ok(Client {
            options,
            shared,
            mode,
            closing: closing_tx,
            sender: Mutex::new(Some(task)),
        })
    }

    /// Replaces the gateway token (rotation, or a token the ledger refused: see
    /// [`MetricsSnapshot::auth_failures`](crate::MetricsSnapshot)). The sender reconnects with
    /// it at once; events waiting in the buffer or spool go out with it, none is dropped.
    pub fn set_token(&self, token: &str) -> Result<(), ClientError> {
        let auth = format!("Bearer {token}")
            .parse()
            .map_err(|_| ClientError::Token)?;
        match self.shared.auth.write() {
            Ok(mut a) => *a = auth,
            Err(poisoned) => *poisoned.into_inner() = auth,
        }
        self.shared.token_generation.fetch_add(1, Ordering::AcqRel);
        self.shared.wake.notify_one();
        Ok(())
    }

    /// Records one event. Fills `event_id` (UUIDv7), `gateway_id` (from the options) and
    /// `gateway_seq` when empty/zero, validates the event as the ledger will, and queues it
    /// (memory mode) or writes and fsyncs it to the spool (spool mode) before returning. The
    /// handle resolves to the receipt; retries of the event keep its id, so the ledger stores
    /// it once.
    pub async fn record(&self, mut event: AuditEvent) -> Result<RecordHandle, RecordError> {
        if self.closing.borrow().is_some() {
            return Err(RecordError::Closed);
        }
        if event.event_id.is_empty() {
            event.event_id = uuid::Uuid::now_v7().to_string();
        }
        if event.gateway_id.is_empty()
            && let Some(g) = &self.options.gateway_id
        {
            event.gateway_id = g.clone();
        }
        let assign_seq = event.gateway_seq == 0;
        auditledger_ledger::event::validate(&event, self.options.max_event_bytes).map_err(|e| {
            RecordError::InvalidEvent {
                event_id: event.event_id.clone(),
                field: e.field,
                reason: e.reason,
            }
        })?;
        let metrics = &self.shared.metrics;
        // Counted before the sender can see the event (it decrements when the outcome comes);
        // given back if `record` fails.
        let outstanding = OutstandingGuard::new(&metrics.buffered);
        let handle = match &self.mode {
            Mode::Memory {
                tx,
                permits,
                numbers,
            } => {
                let limit = self.options.max_buffered_events;
                let refused = || {
                    Metrics::add(&metrics.backpressure, 1);
                    RecordError::Backpressure {
                        buffered: limit - permits.available_permits().min(limit),
                        limit,
                    }
                };
                let permit = match self.options.backpressure {
                    Backpressure::FailFast => permits.try_acquire().map_err(|_| refused())?,
                    Backpressure::Wait(limit_wait) => {
                        let acquire = permits.acquire();
                        match limit_wait {
                            None => acquire.await.map_err(|_| RecordError::Closed)?,
                            Some(t) => match tokio::time::timeout(t, acquire).await {
                                Ok(p) => p.map_err(|_| RecordError::Closed)?,
                                Err(_) => return Err(refused()),
                            },
                        }
                    }
                };
                // Given back by the sender when the event has its outcome.
                permit.forget();
                let (rtx, rrx) = oneshot::channel();
                let mut n = numbers.lock().unwrap_or_else(|p| p.into_inner());
                let seq = n.0;
                n.0 += 1;
                if assign_seq {
                    event.gateway_seq = n.1;
                    n.1 += 1;
                }
                let event_id = event.event_id.clone();
                let gateway_seq = event.gateway_seq;
                self.shared
                    .handles
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(seq, rtx);
                let entry = Entry {
                    seq,
                    size: prost::Message::encoded_len(&event),
                    event,
                    spool_start: None,
                    since: tokio::time::Instant::now(),
                };
                if tx.send(entry).is_err() {
                    return Err(RecordError::Closed);
                }
                self.shared.assigned.store(seq, Ordering::Release);
                drop(n);
                RecordHandle {
                    event_id,
                    gateway_seq,
                    spooled: false,
                    tracked: true,
                    rx: rrx,
                }
            }
            Mode::Spool { writer, space, .. } => {
                let deadline = match self.options.backpressure {
                    Backpressure::Wait(Some(t)) => Some(tokio::time::Instant::now() + t),
                    _ => None,
                };
                let mut space = space.clone();
                loop {
                    space.borrow_and_update();
                    let (rtx, rrx) = oneshot::channel();
                    let (reply_tx, reply_rx) = oneshot::channel();
                    let job = Box::new(AppendJob {
                        event: event.clone(),
                        assign_gateway_seq: assign_seq,
                        receipt_tx: rtx,
                        reply: reply_tx,
                    });
                    let sent = writer
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .as_ref()
                        .is_some_and(|w| w.send(WriterMsg::Append(job)).is_ok());
                    if !sent {
                        return Err(RecordError::Closed);
                    }
                    match reply_rx.await {
                        Ok(Ok(assigned)) => {
                            break RecordHandle {
                                event_id: event.event_id.clone(),
                                gateway_seq: assigned.gateway_seq,
                                spooled: true,
                                tracked: assigned.tracked,
                                rx: rrx,
                            };
                        }
                        Ok(Err(RecordError::SpoolFull { .. }))
                            if matches!(self.options.backpressure, Backpressure::Wait(_)) =>
                        {
                            // Wait until acknowledgements free space, then try again.
                            let freed = space.changed();
                            match deadline {
                                None => freed.await.map_err(|_| RecordError::Closed)?,
                                Some(d) => match tokio::time::timeout_at(d, freed).await {
                                    Ok(r) => r.map_err(|_| RecordError::Closed)?,
                                    Err(_) => {
                                        return Err(RecordError::SpoolFull {
                                            path: spool_dir(&self.options),
                                            used_bytes: metrics.spool_bytes.load(Ordering::Relaxed),
                                            event_bytes: prost::Message::encoded_len(&event) as u64,
                                            limit_bytes: spool_limit(&self.options),
                                        });
                                    }
                                },
                            }
                        }
                        Ok(Err(e)) => return Err(e),
                        Err(_) => return Err(RecordError::Closed),
                    }
                }
            }
        };
        Metrics::add(&metrics.recorded, 1);
        outstanding.keep();
        self.shared.wake.notify_one();
        Ok(handle)
    }

    /// Waits until every event recorded before this call has an outcome (receipt or
    /// rejection), sending partial batches at once. Fails after `timeout`.
    pub async fn flush(&self, timeout: Duration) -> Result<(), FlushTimeout> {
        let target = self.shared.assigned.load(Ordering::Acquire);
        self.shared.flush_to.fetch_max(target, Ordering::AcqRel);
        self.shared.wake.notify_one();
        let mut done = self.shared.done_below.subscribe();
        let wait = done.wait_for(|&below| below > target);
        match tokio::time::timeout(timeout, wait).await {
            Ok(Ok(_)) => Ok(()),
            _ => Err(FlushTimeout {
                outstanding: self.shared.metrics.buffered.load(Ordering::Relaxed),
            }),
        }
    }

    /// Flushes for at most `timeout`, then stops the sender (and the spool writer). Handles of
    /// events still without an outcome resolve to `DeliveryError::Closed`.
    pub async fn close(&self, timeout: Duration) -> CloseReport {
        let deadline = std::time::Instant::now() + timeout;
        self.closing.send_replace(Some(deadline));
        self.shared.wake.notify_one();
        let task = self.sender.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(task) = task
            && let Err(e) = task.await
        {
            tracing::error!(error = %e, "client sender task failed");
        }
        // Outcomes that will never come: wake their handles with `Closed`.
        self.shared
            .handles
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        if let Mode::Spool { writer, thread, .. } = &self.mode {
            writer.lock().unwrap_or_else(|p| p.into_inner()).take();
            let thread = thread.lock().unwrap_or_else(|p| p.into_inner()).take();
            if let Some(thread) = thread {
                // The writer ends once the sender's and our channel ends are gone.
                let _ = tokio::task::spawn_blocking(move || thread.join()).await;
            }
        }
        CloseReport {
            unacknowledged: self.shared.metrics.buffered.load(Ordering::Relaxed),
        }
    }

    /// The counters (recorded, spooled, sent, retried, rejected, …).
    pub fn metrics(&self) -> MetricsSnapshot {
        self.shared.metrics.snapshot()
    }
}

/// +1 on the outstanding gauge, undone on drop unless kept.
struct OutstandingGuard<'a> {
    gauge: &'a AtomicU64,
    kept: bool,
}

impl<'a> OutstandingGuard<'a> {
    fn new(gauge: &'a AtomicU64) -> Self {
        gauge.fetch_add(1, Ordering::Relaxed);
        OutstandingGuard { gauge, kept: false }
    }

    fn keep(mut self) {
        self.kept = true;
    }
}

impl Drop for OutstandingGuard<'_> {
    fn drop(&mut self) {
        if !self.kept {
            self.gauge.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

fn spool_dir(options: &Options) -> std::path::PathBuf {
    match &options.durability {
        Durability::Spool(s) => s.dir.clone(),
        Durability::Memory => Default::default(),
    }
}

fn spool_limit(options: &Options) -> u64 {
    match &options.durability {
        Durability::Spool(s) => s.max_bytes,
        Durability::Memory => 0,
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        // Stops the sender promptly; a spool keeps what was not acknowledged.
        self.closing.send_replace(Some(std::time::Instant::now()));
    }
}
