//! The derived indexes maintained off the commit path: the leaf-hash index (`leaf_hashes`:
//! leaf hash → leaf index) and the search index (`fields`: correlation, session, trace, user
//! and agent id → leaf index).
//!
//! Their keys land anywhere in the key space: leaf hashes are uniformly random, and each event
//! adds up to five search entries, one per field, each next to other events with the same
//! value. The search entries of one batch are grouped into posting lists (one merge per field
//! value and 4096-leaf bucket, `layout::field_postings`), which cut the keys the search index
//! inserts, flushes and compacts about fourfold for realistic events.
//! Inserting them in the synced group commit cost ~45% (leaf hashes) and then ~25% of the CPU
//! (search keys) of the ingest path on a 2-core machine. Nothing depends on them for durability
//! or dedup (the event-id index stays in the group commit), so a dedicated thread writes them
//! after the leaves are durable, in batches sorted by key, with a per-log watermark in the same
//! batch. On open the ledger re-indexes any leaves past the watermark (the unsynced tail after
//! a crash), so the indexes never miss a leaf; lookups wait for the watermark to reach the size
//! they ask about.

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
    /// Search-index keys of these leaves ([`crate::query::hot_index_keys`]).
    pub fields: Vec<[u8; layout::FIELD_KEY_LEN]>,
}

/// Most entries written in one indexer batch.
const MAX_BATCH: usize = 16 * 1024;

/// Runs until the sequencer drops its sender, then returns after indexing everything queued.
pub(crate) fn run(shared: Arc<Shared>, rx: mpsc::Receiver<IndexJob>) {
    while let Ok(first) = rx.recv() {
        let mut jobs = vec![first];
        let mut entries = jobs[0].hashes.len() + jobs[0].fields.len();
        while entries < MAX_BATCH {
            match rx.try_recv() {
                Ok(job) => {
                    entries += job.hashes.len() + job.fields.len();
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
        let mut fields: Vec<[u8; layout::FIELD_KEY_LEN]> =
            jobs.iter().flat_map(|j| j.fields.iter().copied()).collect();
        put_postings(&mut batch, &mut fields);
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
                    tracing::error!(error = %e, retry_in = ?backoff, "writing the leaf-hash and search indexes failed");
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
        let mut batch = index_entries(store, log_id, at, end)?;
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

/// The leaf-hash and search-index entries of the stored leaves `[from, to)`, without the
/// watermark (idempotent: the same leaves always give the same entries).
pub(crate) fn index_entries(
    store: &dyn Store,
    log_id: LogId,
    from: u64,
    to: u64,
) -> Result<WriteBatch, LedgerError> {
    let mut batch = WriteBatch::new();
    let mut fields = Vec::new();
    let mut next = from;
    let mut undecodable = None;
    store.scan(
        Space::Leaves,
        &layout::leaf_key(log_id, from),
        Some(&layout::leaf_key(log_id, to)),
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
            match crate::event::decode_leaf(v) {
                Ok(record) => {
                    if let Some(event) = &record.event {
                        crate::query::hot_index_keys(log_id, next, event, &mut fields);
                    }
                }
                Err(e) => {
                    undecodable = Some(format!("leaf {next}: {e}"));
                    return false;
                }
            }
            next += 1;
            true
        },
    )?;
    if let Some(problem) = undecodable {
        return Err(LedgerError::Corrupt(format!(
            "log {log_id}: {problem} (while rebuilding the search index)"
        )));
    }
    if next != to {
        return Err(LedgerError::Corrupt(format!(
            "log {log_id}: leaf {next} is missing while rebuilding the leaf-hash index \
             (the state records {to} leaves)"
        )));
    }
    put_postings(&mut batch, &mut fields);
    Ok(batch)
}

/// Adds search-index entries (one [`layout::field_index_key`] per field and leaf) to `batch`
/// as posting-list merges, one per (field, value, bucket).
pub(crate) fn put_postings(batch: &mut WriteBatch, entries: &mut [[u8; layout::FIELD_KEY_LEN]]) {
    for (key, base, leaves) in layout::field_postings(entries) {
        batch.merge(
            Space::Fields,
            key.to_vec(),
            layout::encode_postings(base, &leaves),
        );
    }
}
