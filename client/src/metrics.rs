//! Counters a gateway exports (Prometheus, logs): what was recorded, spooled, sent, retried,
//! acknowledged and rejected. Lock-free; read a consistent-enough copy with
//! [`Metrics::snapshot`].

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Live counters of one client.
#[derive(Debug, Default)]
pub struct Metrics {
    pub(crate) recorded: AtomicU64,
    pub(crate) spooled: AtomicU64,
    pub(crate) replayed_from_spool: AtomicU64,
    pub(crate) sent: AtomicU64,
    pub(crate) batches_sent: AtomicU64,
    pub(crate) retried: AtomicU64,
    pub(crate) acknowledged: AtomicU64,
    pub(crate) duplicates: AtomicU64,
    pub(crate) rejected: AtomicU64,
    pub(crate) verified: AtomicU64,
    pub(crate) verify_failures: AtomicU64,
    pub(crate) backpressure: AtomicU64,
    pub(crate) stream_failures: AtomicU64,
    pub(crate) auth_failures: AtomicU64,
    pub(crate) torn_records_dropped: AtomicU64,
    pub(crate) spool_bytes: AtomicU64,
    pub(crate) buffered: AtomicU64,
}

/// A copy of the counters (all totals since the client started, except the two gauges).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MetricsSnapshot {
    /// Events accepted by `record`.
    pub recorded: u64,
    /// Events written to the spool (spool mode: all of them).
    pub spooled: u64,
    /// Events found in the spool at start (left by an earlier process) and replayed.
    pub replayed_from_spool: u64,
    /// Events sent to the ledger, counting every attempt.
    pub sent: u64,
    /// Requests sent.
    pub batches_sent: u64,
    /// Events sent again after a failed attempt.
    pub retried: u64,
    /// Events with a receipt (new or duplicate).
    pub acknowledged: u64,
    /// Receipts with `duplicate = true` (the ledger already had the event).
    pub duplicates: u64,
    /// Events the ledger refused (INVALID_ARGUMENT, PERMISSION_DENIED); never retried.
    pub rejected: u64,
    /// Receipts whose inclusion proof verified against a signed checkpoint.
    pub verified: u64,
    /// Receipts whose inclusion proof did not verify.
    pub verify_failures: u64,
    /// `record` calls refused or delayed by backpressure.
    pub backpressure: u64,
    /// Broken or refused streams, failed requests (each retried).
    pub stream_failures: u64,
    /// Streams refused because of the token (UNAUTHENTICATED, PERMISSION_DENIED): wrong,
    /// expired or revoked. Events wait until [`crate::Client::set_token`] (alert on this).
    pub auth_failures: u64,
    /// Torn records dropped from the end of the spool at start (crash mid-write).
    pub torn_records_dropped: u64,
    /// Gauge: bytes of spool segment files on disk.
    pub spool_bytes: u64,
    /// Gauge: events recorded and not yet acknowledged or rejected.
    pub outstanding: u64,
}

impl Metrics {
    pub fn snapshot(&self) -> MetricsSnapshot {
        MetricsSnapshot {
            recorded: self.recorded.load(Relaxed),
            spooled: self.spooled.load(Relaxed),
            replayed_from_spool: self.replayed_from_spool.load(Relaxed),
            sent: self.sent.load(Relaxed),
            batches_sent: self.batches_sent.load(Relaxed),
            retried: self.retried.load(Relaxed),
            acknowledged: self.acknowledged.load(Relaxed),
            duplicates: self.duplicates.load(Relaxed),
            rejected: self.rejected.load(Relaxed),
            verified: self.verified.load(Relaxed),
            verify_failures: self.verify_failures.load(Relaxed),
            backpressure: self.backpressure.load(Relaxed),
            stream_failures: self.stream_failures.load(Relaxed),
            auth_failures: self.auth_failures.load(Relaxed),
            torn_records_dropped: self.torn_records_dropped.load(Relaxed),
            spool_bytes: self.spool_bytes.load(Relaxed),
            outstanding: self.buffered.load(Relaxed),
        }
    }

    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Relaxed);
    }
}
