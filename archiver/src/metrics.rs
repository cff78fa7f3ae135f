//! Counters of the archiver, for `/metrics` and the admin tier status: plain atomics, read
//! with [`ArchiverMetrics::snapshot`].

use std::sync::atomic::{AtomicU64, Ordering};

/// Cumulative counters (since the archiver started) and gauges of the last pass.
#[derive(Debug, Default)]
pub struct ArchiverMetrics {
    /// Segments moved hot → warm.
    pub segments_to_warm: AtomicU64,
    /// Object bytes written to the warm tier by hot → warm moves.
    pub bytes_to_warm: AtomicU64,
    /// Leaves moved hot → warm.
    pub leaves_to_warm: AtomicU64,
    /// Segments moved warm → cold.
    pub segments_to_cold: AtomicU64,
    /// Object bytes copied to the cold tier.
    pub bytes_to_cold: AtomicU64,
    /// Leaves moved warm → cold.
    pub leaves_to_cold: AtomicU64,
    /// Segments rewritten by retention expiry.
    pub segments_expired: AtomicU64,
    /// Leaves whose content was dropped by retention expiry.
    pub leaves_expired: AtomicU64,
    /// Leaves kept past retention by legal holds (last pass).
    pub leaves_held: AtomicU64,
    /// Failed steps (each is retried on the next pass).
    pub failures: AtomicU64,
    /// Completed passes.
    pub passes: AtomicU64,
    /// Wall time of the last pass, microseconds.
    pub last_pass_micros: AtomicU64,
    /// Segments due for a move or expiry that the last pass left undone (failures).
    pub pending_segments: AtomicU64,
    /// Age of the oldest leaf due to leave the hot tier but still there at the end of the last
    /// pass, nanoseconds (0 = none): the archiver's lag.
    pub lag_nanos: AtomicU64,
}

/// A copy of the counters at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MetricsSnapshot {
    pub segments_to_warm: u64,
    pub bytes_to_warm: u64,
    pub leaves_to_warm: u64,
    pub segments_to_cold: u64,
    pub bytes_to_cold: u64,
    pub leaves_to_cold: u64,
    pub segments_expired: u64,
    pub leaves_expired: u64,
    pub leaves_held: u64,
    pub failures: u64,
    pub passes: u64,
    pub last_pass_micros: u64,
    pub pending_segments: u64,
    pub lag_nanos: u64,
}

impl ArchiverMetrics {
    pub fn snapshot(&self) -> MetricsSnapshot {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        MetricsSnapshot {
            segments_to_warm: get(&self.segments_to_warm),
            bytes_to_warm: get(&self.bytes_to_warm),
            leaves_to_warm: get(&self.leaves_to_warm),
            segments_to_cold: get(&self.segments_to_cold),
            bytes_to_cold: get(&self.bytes_to_cold),
            leaves_to_cold: get(&self.leaves_to_cold),
            segments_expired: get(&self.segments_expired),
            leaves_expired: get(&self.leaves_expired),
            leaves_held: get(&self.leaves_held),
            failures: get(&self.failures),
            passes: get(&self.passes),
            last_pass_micros: get(&self.last_pass_micros),
            pending_segments: get(&self.pending_segments),
            lag_nanos: get(&self.lag_nanos),
        }
    }

    pub(crate) fn add(counter: &AtomicU64, value: u64) {
        counter.fetch_add(value, Ordering::Relaxed);
    }

    pub(crate) fn set(gauge: &AtomicU64, value: u64) {
        gauge.store(value, Ordering::Relaxed);
    }
}
