//! Counters and latency histograms of the write path, lock-free, for `/metrics` and benchmarks.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds (microseconds) of histogram buckets; the last bucket is +Inf.
pub const LATENCY_BUCKETS_US: [u64; 21] = [
    50, 100, 250, 500, 1_000, 2_000, 3_000, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000,
    500_000, 1_000_000, 1_250_000, 1_500_000, 2_000_000, 3_000_000, 5_000_000, 10_000_000,
];

/// A fixed-bucket histogram of durations.
#[derive(Debug, Default)]
pub struct Histogram {
    buckets: [AtomicU64; LATENCY_BUCKETS_US.len() + 1],
    count: AtomicU64,
    sum_us: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, d: Duration) {
        let us = d.as_micros().min(u64::MAX as u128) as u64;
        let slot = LATENCY_BUCKETS_US
            .iter()
            .position(|&b| us <= b)
            .unwrap_or(LATENCY_BUCKETS_US.len());
        self.buckets[slot].fetch_add(1, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(us, Ordering::Relaxed);
    }

    /// (non-cumulative bucket counts, total count, sum in microseconds).
    pub fn snapshot(&self) -> (Vec<u64>, u64, u64) {
        (
            self.buckets
                .iter()
                .map(|b| b.load(Ordering::Relaxed))
                .collect(),
            self.count.load(Ordering::Relaxed),
            self.sum_us.load(Ordering::Relaxed),
        )
    }
}

/// Write-path metrics of one ledger.
#[derive(Debug, Default)]
pub struct LedgerMetrics {
    /// Successful group commits.
    pub commits: AtomicU64,
    /// Failed group commits (nothing acknowledged).
    pub commit_failures: AtomicU64,
    /// Append requests committed.
    pub requests: AtomicU64,
    /// Events in committed requests (new and duplicate).
    pub events: AtomicU64,
    /// Key + value bytes written by commits.
    pub bytes_written: AtomicU64,
    /// Duration of the synced batch write (WAL write + fsync).
    pub write_latency: Histogram,
    /// Checkpoints signed and stored.
    pub checkpoints: AtomicU64,
    /// Checkpoint passes that failed (no key, storage error).
    pub checkpoint_failures: AtomicU64,
    /// Time from a size becoming durable to a checkpoint covering it.
    pub checkpoint_lag: Histogram,
    /// Leaf-hash and search-index batches the indexer wrote through the memtables (low
    /// rates) ...
    pub index_writes: AtomicU64,
    /// ... and gathered runs it ingested as table files (high rates) ...
    pub index_ingests: AtomicU64,
    /// ... of whose ingests (two per run: leaf hashes, search index) these went through the
    /// memtables instead, because those still held entries.
    pub index_ingests_written: AtomicU64,
    /// Group commits that took longer than 250 ms from built to durable (each also logged as
    /// a warning with the time of each stage).
    pub slow_commits: AtomicU64,
}

impl LedgerMetrics {
    pub(crate) fn record_write(&self, bytes: usize, took: Duration) {
        self.bytes_written
            .fetch_add(bytes as u64, Ordering::Relaxed);
        self.write_latency.observe(took);
    }

    pub(crate) fn record_commit(&self, requests: usize, events: usize) {
        self.commits.fetch_add(1, Ordering::Relaxed);
        self.requests.fetch_add(requests as u64, Ordering::Relaxed);
        self.events.fetch_add(events as u64, Ordering::Relaxed);
    }

    pub(crate) fn record_commit_failure(&self) {
        self.commit_failures.fetch_add(1, Ordering::Relaxed);
    }
}
