//! The leaf-hash index (`leaf_hashes`: leaf hash → leaf index), maintained off the commit path.
//!
//! Leaf hashes are uniformly random, so their index entries land anywhere in the key space:
//! inserting them in the synced group commit measured ~45% of the ingest throughput on a
//! 2-core machine. Nothing depends on them for durability or dedup — they only serve
//! `GetInclusionProof` by leaf hash — so a dedicated thread writes them after the leaves are
//! durable, in batches, with a per-log watermark in the same batch. On open the ledger
//! re-indexes any leaves past the watermark (the unsynced tail after a crash), so the index
//! never misses a leaf; lookups wait for the watermark to reach the size they ask about.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::mpsc;
use std::time::Duration;

use crate::error::LedgerError;
use crate::layout::{self, LogId, Space};
use crate::ledger::{LogInfo, Shared};
use crate::merkle::{Hash, leaf_hash};
use crate::store::{Direction, Store, WriteBatch};

/// New leaves of one log, committed and durable, to index.
pub(crate) struct IndexJob {
    pub info: Arc<LogInfo>,
    pub first: u64,
    pub hashes: Vec<Hash>,
}

/// Most entries written in one indexer batch.
const MAX_BATCH: usize = 16 * 1024;

/// Runs until the sequencer drops its sender, then returns after indexing everything queued.
pub(crate) fn run(shared: Arc<Shared>, rx: mpsc::Receiver<IndexJob>) {
    while let Ok(first) = rx.recv() {
        let mut jobs = vec![first];
        let mut entries = jobs[0].hashes.len();
        while entries < MAX_BATCH {
            match rx.try_recv() {
                Ok(job) => {
                    entries += job.hashes.len();
                    jobs.push(job);
                }
                Err(_) => break,
            }
        }
        let mut batch = WriteBatch::with_capacity(entries + jobs.len());
        let mut ends: HashMap<LogId, (Arc<LogInfo>, u64)> = HashMap::new();
        // Sorted, so that the memtable's skiplist inserts reuse their search position: random
        // keys in arrival order cost several times more to insert.
        let mut keyed: Vec<([u8; 16], u64)> = Vec::with_capacity(entries);
        for job in &jobs {
            let log_id = job.info.log_id;
            for (i, h) in job.hashes.iter().enumerate() {
                keyed.push((layout::leaf_hash_key(log_id, h), job.first + i as u64));
            }
            let end = job.first + job.hashes.len() as u64;
            let slot = ends
                .entry(log_id)
                .or_insert_with(|| (job.info.clone(), end));
            slot.1 = slot.1.max(end);
        }
        keyed.sort_unstable_by_key(|k| k.0);
        for (key, index) in keyed {
            batch.put(
                Space::LeafHashes,
                key.to_vec(),
                index.to_be_bytes().to_vec(),
            );
        }
        for (log_id, (_, end)) in &ends {
            batch.put(
                Space::Meta,
                layout::meta_indexed_key(*log_id).to_vec(),
                end.to_be_bytes().to_vec(),
            );
        }
        // Derived data: WAL-logged but not synced. A crash may lose the tail; the watermark,
        // in the same batch, is lost with it and the open re-indexes from there.
        let mut backoff = Duration::from_millis(10);
        loop {
            match shared.store.write(batch.clone(), false) {
                Ok(()) => break,
                Err(e) => {
                    tracing::error!(error = %e, retry_in = ?backoff, "writing the leaf-hash index failed");
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
        for (info, end) in ends.into_values() {
            info.indexed.send_if_modified(|v| {
                let grew = end > *v;
                *v = (*v).max(end);
                grew
            });
        }
    }
}

/// The watermark of a log: leaves below it have their index entry.
pub(crate) fn load_watermark(store: &dyn Store, log_id: LogId) -> Result<u64, LedgerError> {
    match store.get(Space::Meta, &layout::meta_indexed_key(log_id))? {
        None => Ok(0),
        Some(v) => layout::decode_u64(&v).ok_or_else(|| {
            LedgerError::Corrupt(format!("log {log_id}: index watermark is not 8 bytes"))
        }),
    }
}

/// Indexes leaves `[from, to)` synchronously (catch-up at open); returns the new watermark.
pub(crate) fn catch_up(
    store: &dyn Store,
    log_id: LogId,
    from: u64,
    to: u64,
) -> Result<u64, LedgerError> {
    const CHUNK: u64 = 16 * 1024;
    let mut at = from;
    while at < to {
        let end = (at + CHUNK).min(to);
        let mut batch = WriteBatch::new();
        let mut next = at;
        store.scan(
            Space::Leaves,
            &layout::leaf_key(log_id, at),
            Some(&layout::leaf_key(log_id, end)),
            Direction::Forward,
            &mut |k, v| {
                if layout::parse_leaf_key(k).map(|(_, i)| i) != Some(next) {
                    return false;
                }
                batch.put(
                    Space::LeafHashes,
                    layout::leaf_hash_key(log_id, &leaf_hash(v)).to_vec(),
                    next.to_be_bytes().to_vec(),
                );
                next += 1;
                true
            },
        )?;
        if next != end {
            return Err(LedgerError::Corrupt(format!(
                "log {log_id}: leaf {next} is missing while rebuilding the leaf-hash index"
            )));
        }
        batch.put(
            Space::Meta,
            layout::meta_indexed_key(log_id).to_vec(),
            end.to_be_bytes().to_vec(),
        );
        store.write(batch, false)?;
        at = end;
    }
    Ok(to)
}
