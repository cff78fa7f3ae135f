//! The background sender: takes recorded events in order (from memory or from the spool),
//! cuts batches (size, bytes, linger), keeps several in flight on one `AppendStream`, matches
//! responses to batches, retries with exponential backoff and jitter (honouring the ledger's
//! retry hint: `retry_after_ms` in the stream, `retry-after-ms` metadata otherwise), never
//! retries an event the ledger refused, and reports each outcome to the event's handle, the
//! metrics, and (spool mode) the spool's acknowledged position.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use auditledger_ledger::note::VerifierKey;
use auditledger_proto::v1 as pb;
use pb::AuditEvent;
use pb::ingest_client::IngestClient;
use tokio::sync::{Notify, Semaphore, mpsc, oneshot, watch};
use tokio::time::Instant;
use tonic::transport::Channel;

use crate::error::DeliveryError;
use crate::metrics::Metrics;
use crate::options::Options;
use crate::receipt::{self, Receipt};
use crate::spool::{SpoolPos, SpoolReader, WriterMsg};

/// Where an event's outcome goes.
pub(crate) type ReceiptTx = oneshot::Sender<Result<Receipt, DeliveryError>>;
/// Outcome channels by local sequence number.
pub(crate) type Handles = Arc<Mutex<HashMap<u64, ReceiptTx>>>;

/// State shared by the client handle and the sender task.
pub(crate) struct Shared {
    pub handles: Handles,
    pub metrics: Arc<Metrics>,
    /// Highest local sequence number handed to the sender's source.
    pub assigned: Arc<AtomicU64>,
    /// Every event with a sequence number below this has an outcome.
    pub done_below: watch::Sender<u64>,
    /// Send partial batches at once while `done_below <= flush_to` (flush, close).
    pub flush_to: AtomicU64,
    pub wake: Notify,
    /// `authorization` header value; [`crate::Client::set_token`] replaces it.
    pub auth: std::sync::RwLock<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>,
    /// Bumped by every `set_token`: the sender then reconnects at once.
    pub token_generation: AtomicU64,
}

/// One recorded event on its way.
pub(crate) struct Entry {
    pub seq: u64,
    pub event: AuditEvent,
    pub size: usize,
    pub spool_start: Option<SpoolPos>,
    pub since: Instant,
}

/// Where the sender takes events from.
pub(crate) enum Source {
    Memory {
        rx: mpsc::UnboundedReceiver<Entry>,
        buffered: VecDeque<Entry>,
        permits: Arc<Semaphore>,
    },
    Spool {
        reader: SpoolReader,
        writer: mpsc::UnboundedSender<WriterMsg>,
        dir: PathBuf,
        acked: SpoolPos,
    },
}

impl Source {
    /// Resolves when new events may be available.
    async fn changed(&mut self) {
        match self {
            Source::Memory { rx, buffered, .. } => match rx.recv().await {
                Some(e) => buffered.push_back(e),
                // The client is gone; nothing more will come.
                None => std::future::pending().await,
            },
            Source::Spool { reader, .. } => {
                if reader.committed.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
        }
    }
}

struct Batch {
    entries: Vec<Entry>,
    attempts: u32,
    not_before: Instant,
    sent_at: Instant,
}

impl Batch {
    fn first_seq(&self) -> u64 {
        self.entries.first().map_or(u64::MAX, |e| e.seq)
    }
}

struct Stream {
    tx: mpsc::Sender<pb::AppendRequest>,
    rx: tonic::Streaming<pb::AppendResponse>,
}

/// The sender task's state.
pub(crate) struct Sender {
    pub client: IngestClient<Channel>,
    pub options: Options,
    pub shared: Arc<Shared>,
    pub source: Source,
    pub closing: watch::Receiver<Option<std::time::Instant>>,
    /// First sequence number not yet taken from the source.
    pub unread_from: u64,
    outstanding: BTreeMap<u64, Option<SpoolPos>>,
    pending: VecDeque<Entry>,
    pending_bytes: usize,
    inflight: VecDeque<Batch>,
    retry: VecDeque<Batch>,
    stream: Option<Stream>,
    failures: u32,
    backoff_until: Option<Instant>,
    rng: u64,
    /// The `token_generation` the current stream was opened with.
    token_seen: u64,
}

enum Wake {
    Response(Result<Option<pb::AppendResponse>, tonic::Status>),
    Closed,
    Other,
}

/// The ledger's retry hint of a refused stream or call (`retry-after-ms` metadata).
fn hint_from_status(status: &tonic::Status) -> Option<Duration> {
    status
        .metadata()
        .get("retry-after-ms")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .map(Duration::from_millis)
}

/// The ledger's retry hint of a request refused inside the stream.
fn hint_from_error(err: &pb::AppendError) -> Option<Duration> {
    (err.retry_after_ms > 0).then(|| Duration::from_millis(err.retry_after_ms))
}

impl Sender {
    pub fn new(
        client: IngestClient<Channel>,
        options: Options,
        shared: Arc<Shared>,
        source: Source,
        closing: watch::Receiver<Option<std::time::Instant>>,
        unread_from: u64,
    ) -> Self {
        let mut seed = [0u8; 8];
        // Jitter only; a clock-derived seed is fine if the OS has no entropy to give.
        if getrandom::fill(&mut seed).is_err() {
            seed = (std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64))
            .to_le_bytes();
        }
        Sender {
            client,
            options,
            shared,
            source,
            closing,
            unread_from,
            outstanding: BTreeMap::new(),
            pending: VecDeque::new(),
            pending_bytes: 0,
            inflight: VecDeque::new(),
            retry: VecDeque::new(),
            stream: None,
            failures: 0,
            backoff_until: None,
            rng: u64::from_le_bytes(seed) | 1,
            token_seen: 0,
        }
    }

    /// A refused token (UNAUTHENTICATED, or PERMISSION_DENIED for the whole stream) is not a
    /// passing outage: say so loudly and count it. The events stay (buffer or spool) and are
    /// retried with backoff, so a token fixed by [`crate::Client::set_token`] — or, in spool
    /// mode, by the next process — delivers them; none is dropped.
    fn note_refused_token(&self, status: &tonic::Status) -> bool {
        if !matches!(
            status.code(),
            tonic::Code::Unauthenticated | tonic::Code::PermissionDenied
        ) {
            return false;
        }
        Metrics::add(&self.shared.metrics.auth_failures, 1);
        tracing::error!(code = ?status.code(), error = %status.message(), outstanding = self.outstanding.len(),
            "the ledger refused this client's token; events are kept and retried until Client::set_token gives a valid one");
        true
    }

    /// After `set_token`: forget the backoff and reconnect with the new token now.
    fn take_new_token(&mut self) {
        let generation = self.shared.token_generation.load(Ordering::Acquire);
        if generation == self.token_seen {
            return;
        }
        self.token_seen = generation;
        self.failures = 0;
        self.backoff_until = None;
        let now = Instant::now();
        for b in &mut self.retry {
            b.not_before = now;
        }
        tracing::info!("new token; reconnecting");
    }

    fn random_unit(&mut self) -> f64 {
        // xorshift64*: jitter needs no cryptographic quality.
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        (self.rng.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Next retry delay: initial × 2^(failures−1), capped, with "equal jitter" (half fixed,
    /// half random), and never shorter than the ledger's hint.
    fn backoff(&mut self, hint: Option<Duration>) -> Duration {
        let exp = self.failures.saturating_sub(1).min(20);
        let base = self
            .options
            .initial_backoff
            .saturating_mul(1u32 << exp)
            .min(self.options.max_backoff);
        let jittered = base / 2 + base.mul_f64(0.5 * self.random_unit());
        jittered.max(hint.unwrap_or_default())
    }

    fn flushing(&self) -> bool {
        *self.shared.done_below.borrow() <= self.shared.flush_to.load(Ordering::Acquire)
            || self.closing.borrow().is_some()
    }

    /// Moves events from the source into the next batch, up to its limits.
    fn refill(&mut self) {
        let max_events = self.options.max_batch_events;
        let max_bytes = self.options.max_batch_bytes;
        let snapshot = self.shared.assigned.load(Ordering::Acquire);
        let mut exhausted = false;
        while self.pending.len() < max_events
            && (self.pending.is_empty() || self.pending_bytes < max_bytes)
        {
            let next = match &mut self.source {
                Source::Memory { rx, buffered, .. } => {
                    while let Ok(e) = rx.try_recv() {
                        buffered.push_back(e);
                    }
                    buffered.pop_front()
                }
                Source::Spool { reader, .. } => loop {
                    match reader.next() {
                        Ok(Some(s)) => {
                            break Some(Entry {
                                seq: s.seq,
                                size: s.encoded_len,
                                event: s.event,
                                spool_start: Some(s.start),
                                since: Instant::now(),
                            });
                        }
                        Ok(None) => break None,
                        Err(e) => {
                            tracing::error!(error = %e, "spool: unreadable record after it was synced (disk fault?); skipping the rest of that segment");
                            reader.skip_segment();
                        }
                    }
                },
            };
            let Some(entry) = next else {
                exhausted = true;
                break;
            };
            self.unread_from = self.unread_from.max(entry.seq + 1);
            self.outstanding.insert(entry.seq, entry.spool_start);
            self.pending_bytes += entry.size;
            self.pending.push_back(entry);
        }
        if exhausted {
            self.unread_from = self.unread_from.max(snapshot + 1);
        }
    }

    fn publish(&self) {
        let below = self
            .outstanding
            .keys()
            .next()
            .copied()
            .unwrap_or(u64::MAX)
            .min(self.unread_from);
        self.shared.done_below.send_if_modified(|v| {
            let changed = *v != below;
            *v = below;
            changed
        });
    }

    fn has_work(&self) -> bool {
        !self.pending.is_empty() || !self.retry.is_empty() || !self.inflight.is_empty()
    }

    async fn connect(&mut self) {
        let (tx, rx) = mpsc::channel(self.options.max_in_flight_batches + 1);
        let mut request = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
        let auth = match self.shared.auth.read() {
            Ok(a) => a.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        };
        request.metadata_mut().insert("authorization", auth);
        let call = self.client.append_stream(request);
        let result = match tokio::time::timeout(self.options.request_timeout, call).await {
            Ok(r) => r,
            Err(_) => Err(tonic::Status::deadline_exceeded(
                "opening the AppendStream timed out",
            )),
        };
        match result {
            Ok(response) => {
                if self.failures > 0 {
                    tracing::info!(
                        after_failures = self.failures,
                        "ledger reachable again; sending"
                    );
                }
                self.stream = Some(Stream {
                    tx,
                    rx: response.into_inner(),
                });
            }
            Err(status) => {
                self.failures += 1;
                Metrics::add(&self.shared.metrics.stream_failures, 1);
                self.note_refused_token(&status);
                let delay = self.backoff(hint_from_status(&status));
                tracing::warn!(code = ?status.code(), error = %status.message(), retry_in_ms = delay.as_millis() as u64,
                    outstanding = self.outstanding.len(), "ledger unreachable");
                self.backoff_until = Some(Instant::now() + delay);
            }
        }
    }

    fn send(&mut self, mut batch: Batch) {
        let Some(stream) = &self.stream else {
            self.push_retry(batch);
            return;
        };
        let request = pb::AppendRequest {
            events: batch.entries.iter().map(|e| e.event.clone()).collect(),
            wait_for_checkpoint: self.options.wait_for_checkpoint,
        };
        let n = batch.entries.len() as u64;
        if stream.tx.try_send(request).is_err() {
            // The stream's request side is gone: it is broken.
            self.push_retry(batch);
            self.stream_failed("the stream closed", None);
            return;
        }
        let metrics = &self.shared.metrics;
        Metrics::add(&metrics.sent, n);
        Metrics::add(&metrics.batches_sent, 1);
        if batch.attempts > 0 {
            Metrics::add(&metrics.retried, n);
        }
        batch.attempts += 1;
        batch.sent_at = Instant::now();
        self.inflight.push_back(batch);
    }

    /// Sends whatever is due while there is room in flight.
    fn fill(&mut self) {
        while self.stream.is_some() && self.inflight.len() < self.options.max_in_flight_batches {
            let now = Instant::now();
            if let Some(b) = self.retry.front() {
                // Older events first: nothing new goes out while a retry waits.
                if b.not_before > now {
                    break;
                }
                if let Some(b) = self.retry.pop_front() {
                    self.send(b);
                }
                continue;
            }
            self.refill();
            let Some(first) = self.pending.front() else {
                break;
            };
            let due = self.pending.len() >= self.options.max_batch_events
                || self.pending_bytes >= self.options.max_batch_bytes
                || first.since + self.options.linger <= now
                || self.flushing();
            if !due {
                break;
            }
            let entries: Vec<Entry> = self.pending.drain(..).collect();
            self.pending_bytes = 0;
            self.send(Batch {
                entries,
                attempts: 0,
                not_before: now,
                sent_at: now,
            });
        }
    }

    fn push_retry(&mut self, batch: Batch) {
        let at = self
            .retry
            .partition_point(|b| b.first_seq() < batch.first_seq());
        self.retry.insert(at, batch);
    }

    fn stream_failed(&mut self, reason: &str, hint: Option<Duration>) {
        self.stream = None;
        self.failures += 1;
        Metrics::add(&self.shared.metrics.stream_failures, 1);
        let delay = self.backoff(hint);
        let until = Instant::now() + delay;
        let mut lost = 0;
        while let Some(b) = self.inflight.pop_front() {
            lost += b.entries.len();
            self.push_retry(b);
        }
        for b in &mut self.retry {
            b.not_before = b.not_before.max(until);
        }
        self.backoff_until = Some(until);
        tracing::warn!(
            reason,
            in_flight_events = lost,
            retry_in_ms = delay.as_millis() as u64,
            "append stream failed; resending unacknowledged events (the ledger answers duplicates as such)"
        );
    }

    fn next_deadline(&self, now: Instant) -> Instant {
        let mut deadline = now + Duration::from_secs(1);
        let can_send =
            self.stream.is_some() && self.inflight.len() < self.options.max_in_flight_batches;
        if can_send {
            if let Some(b) = self.retry.front() {
                deadline = deadline.min(b.not_before);
            } else if let Some(e) = self.pending.front() {
                deadline = deadline.min(e.since + self.options.linger);
            }
        }
        if self.stream.is_none()
            && self.has_work()
            && let Some(t) = self.backoff_until
        {
            deadline = deadline.min(t);
        }
        if let Some(b) = self.inflight.front() {
            deadline = deadline.min(b.sent_at + self.options.request_timeout);
        }
        if let Some(close) = *self.closing.borrow() {
            deadline = deadline.min(Instant::from_std(close));
        }
        deadline.max(now)
    }

    pub async fn run(mut self) {
        loop {
            self.take_new_token();
            self.refill();
            self.publish();
            let now = Instant::now();
            let close = *self.closing.borrow();
            if let Some(close) = close {
                let drained = !self.has_work()
                    && *self.shared.done_below.borrow()
                        > self.shared.assigned.load(Ordering::Acquire);
                if drained || std::time::Instant::now() >= close {
                    break;
                }
            }
            if self.stream.is_none()
                && self.has_work()
                && self.backoff_until.is_none_or(|t| now >= t)
            {
                self.connect().await;
            }
            self.fill();
            let deadline = self.next_deadline(Instant::now());
            let want_data = self.pending.len() < self.options.max_batch_events;
            let has_stream = self.stream.is_some();
            let stream = &mut self.stream;
            let wake = tokio::select! {
                r = async {
                    match stream.as_mut() {
                        Some(s) => s.rx.message().await,
                        None => std::future::pending().await,
                    }
                }, if has_stream => Wake::Response(r),
                _ = self.source.changed(), if want_data => Wake::Other,
                _ = self.shared.wake.notified() => Wake::Other,
                r = self.closing.changed() => if r.is_err() { Wake::Closed } else { Wake::Other },
                _ = tokio::time::sleep_until(deadline) => Wake::Other,
            };
            match wake {
                Wake::Response(Ok(Some(resp))) => self.on_response(resp),
                // An idle stream closed by the ledger (or a proxy) is no failure: a new one is
                // opened when there is something to send.
                Wake::Response(_) if self.inflight.is_empty() => {
                    tracing::debug!("idle append stream closed");
                    self.stream = None;
                }
                Wake::Response(Ok(None)) => self.stream_failed("the ledger ended the stream", None),
                Wake::Response(Err(status)) => {
                    self.note_refused_token(&status);
                    let reason = format!("{:?}: {}", status.code(), status.message());
                    self.stream_failed(&reason, hint_from_status(&status));
                }
                Wake::Closed => break,
                Wake::Other => {}
            }
            if let Some(b) = self.inflight.front()
                && b.sent_at + self.options.request_timeout <= Instant::now()
            {
                self.stream_failed("no response within request_timeout", None);
            }
        }
        // Whatever is left gets `Closed` through its dropped handle; in spool mode it stays
        // in the spool for the next client.
        self.publish();
    }

    fn on_response(&mut self, resp: pb::AppendResponse) {
        let Some(mut batch) = self.inflight.pop_front() else {
            self.stream_failed("a response arrived for no request", None);
            return;
        };
        if let Some(err) = resp.error {
            let code = tonic::Code::from(err.code);
            match code {
                tonic::Code::InvalidArgument | tonic::Code::PermissionDenied => {
                    let index = err.event_index.map(|i| i as usize);
                    match index {
                        Some(i) if i < batch.entries.len() => {
                            let entry = batch.entries.remove(i);
                            self.reject(entry, code, &err.message, &err.field);
                        }
                        _ if batch.entries.len() > 1 => {
                            // The ledger did not say which event: halve until it does.
                            let tail = batch.entries.split_off(batch.entries.len() / 2);
                            self.push_retry(Batch {
                                entries: tail,
                                attempts: batch.attempts,
                                not_before: Instant::now(),
                                sent_at: batch.sent_at,
                            });
                        }
                        _ => {
                            if let Some(entry) = batch.entries.pop() {
                                self.reject(entry, code, &err.message, &err.field);
                            }
                        }
                    }
                    // The rest of an all-or-nothing batch was not appended: send it again now.
                    if !batch.entries.is_empty() {
                        batch.not_before = Instant::now();
                        self.push_retry(batch);
                    }
                }
                _ => {
                    self.failures += 1;
                    Metrics::add(&self.shared.metrics.stream_failures, 1);
                    let delay = self.backoff(hint_from_error(&err));
                    // A request larger than the tenant's whole per-second quota can never
                    // pass (the ledger sets `request_exceeds_quota`): halve it.
                    if code == tonic::Code::ResourceExhausted
                        && batch.entries.len() > 1
                        && err.request_exceeds_quota
                    {
                        let tail = batch.entries.split_off(batch.entries.len() / 2);
                        self.push_retry(Batch {
                            entries: tail,
                            attempts: batch.attempts,
                            not_before: Instant::now() + delay,
                            sent_at: batch.sent_at,
                        });
                    }
                    tracing::warn!(?code, error = %err.message, events = batch.entries.len(), retry_in_ms = delay.as_millis() as u64,
                        "ledger refused a batch for now; will retry");
                    batch.not_before = Instant::now() + delay;
                    self.push_retry(batch);
                }
            }
            self.after_outcomes();
            return;
        }
        if resp.receipts.len() != batch.entries.len() {
            let reason = format!(
                "{} receipts for a request of {} events",
                resp.receipts.len(),
                batch.entries.len()
            );
            self.push_retry(batch);
            self.stream_failed(&reason, None);
            return;
        }
        self.failures = 0;
        let keys: &[VerifierKey] = if self.options.wait_for_checkpoint {
            &self.options.verifier_keys
        } else {
            &[]
        };
        let outcomes: Vec<_> = batch
            .entries
            .into_iter()
            .zip(&resp.receipts)
            .map(|(entry, r)| {
                let result = receipt::from_pb(r, resp.checkpoint.as_ref(), keys);
                (entry, result)
            })
            .collect();
        for (entry, result) in outcomes {
            let metrics = &self.shared.metrics;
            Metrics::add(&metrics.acknowledged, 1);
            let outcome = match result {
                (receipt, None) => {
                    if receipt.duplicate {
                        Metrics::add(&metrics.duplicates, 1);
                    }
                    if receipt
                        .inclusion
                        .as_ref()
                        .is_some_and(|i| !i.verified_by.is_empty())
                    {
                        Metrics::add(&metrics.verified, 1);
                    }
                    Ok(receipt)
                }
                (receipt, Some(reason)) => {
                    Metrics::add(&metrics.verify_failures, 1);
                    tracing::error!(event_id = %receipt.event_id, leaf_index = receipt.leaf_index, %reason,
                        "receipt does not verify against a trusted checkpoint");
                    Err(DeliveryError::Verification {
                        receipt: Box::new(receipt),
                        reason,
                    })
                }
            };
            self.finish(entry.seq, outcome);
        }
        self.after_outcomes();
    }

    fn reject(&mut self, entry: Entry, code: tonic::Code, message: &str, field: &str) {
        Metrics::add(&self.shared.metrics.rejected, 1);
        tracing::error!(event_id = %entry.event.event_id, ?code, field, error = %message,
            "ledger rejected the event; not retrying");
        if let Source::Spool { dir, .. } = &self.source {
            crate::spool::log_rejected(dir, &entry.event, code, message);
        }
        let event_id = entry.event.event_id.clone();
        self.finish(
            entry.seq,
            Err(DeliveryError::Rejected {
                event_id,
                code,
                message: message.to_owned(),
                field: field.to_owned(),
            }),
        );
    }

    fn finish(&mut self, seq: u64, outcome: Result<Receipt, DeliveryError>) {
        self.outstanding.remove(&seq);
        self.shared.metrics.buffered.fetch_sub(1, Ordering::Relaxed);
        let tx = self
            .shared
            .handles
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&seq);
        if let Some(tx) = tx {
            let _ = tx.send(outcome);
        }
        if let Source::Memory { permits, .. } = &self.source {
            permits.add_permits(1);
        }
    }

    /// Spool mode: tells the writer how far everything is acknowledged.
    fn after_outcomes(&mut self) {
        let first_open = self.outstanding.values().next().copied();
        if let Source::Spool {
            reader,
            writer,
            acked,
            ..
        } = &mut self.source
        {
            let pos = match first_open {
                Some(Some(pos)) => pos,
                _ => reader.pos,
            };
            if pos > *acked {
                *acked = pos;
                let _ = writer.send(WriterMsg::Ack(pos));
            }
        }
        self.publish();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_hints() {
        let mut status = tonic::Status::resource_exhausted("over quota; retry after 250 ms");
        // The wording is for people; only the metadata counts.
        assert_eq!(hint_from_status(&status), None);
        status
            .metadata_mut()
            .insert("retry-after-ms", "1200".parse().unwrap());
        assert_eq!(hint_from_status(&status), Some(Duration::from_millis(1200)));
        let mut err = pb::AppendError {
            code: tonic::Code::ResourceExhausted as i32,
            message: "over quota; retry after 250 ms".into(),
            ..Default::default()
        };
        assert_eq!(hint_from_error(&err), None);
        err.retry_after_ms = 250;
        assert_eq!(hint_from_error(&err), Some(Duration::from_millis(250)));
    }
}
