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
//! or dedup (the event-id index stays in the group commit), so they are written after the
//! leaves are durable: [`gather`] collects the sequencer's jobs into runs and [`write_runs`]
//! writes them in order, either as batches sorted by key with a per-log watermark in the same
//! batch, or, at high rates, as sorted table files ingested into RocksDB followed by the
//! watermark. On open the ledger re-indexes any leaves past the watermark (the unsynced or
//! gathered tail after a crash), so the indexes never miss a leaf; lookups wait for the
//! watermark to reach the size they ask about.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::error::LedgerError;
use crate::layout::{self, LogId, Space};
use crate::ledger::{LogInfo, Shared};
use crate::merkle::{Hash, leaf_hash};
use crate::store::{Direction, Ingested, Store, WriteBatch};

/// New leaves of one log, committed and durable, to index.
pub(crate) struct IndexJob {
    pub info: Arc<LogInfo>,
    pub first: u64,
    pub hashes: Vec<Hash>,
    /// Search-index keys of these leaves ([`crate::query::hot_index_keys`]).
    pub fields: Vec<[u8; layout::FIELD_KEY_LEN]>,
}

/// Most leaves written in one batch through the memtable.
const MAX_BATCH: usize = 16 * 1024;
/// Leaves per second from which the indexer gathers sorted runs to ingest as table files
/// instead of inserting each batch into the memtables.
const INGEST_RATE: f64 = 20_000.0;
/// Leaves from which a gathered run is ingested; smaller ones are written.
const INGEST_MIN: usize = 8 * 1024;
/// Leaves at which gathering stops (about the size of one memtable flush of the leaf-hash
/// index).
const GATHER_MAX: usize = 256 * 1024;
/// How often a lingering indexer looks for a waiting lookup.
const POKE_POLL: Duration = Duration::from_millis(5);

/// Jobs received and not yet written.
#[derive(Default)]
struct Gathered {
    jobs: Vec<IndexJob>,
    leaves: usize,
    /// The logs of `jobs`, once each.
    logs: Vec<Arc<LogInfo>>,
}

impl Gathered {
    fn add(&mut self, job: IndexJob) {
        self.leaves += job.hashes.len();
        if !self.logs.iter().any(|l| l.log_id == job.info.log_id) {
            self.logs.push(job.info.clone());
        }
        self.jobs.push(job);
    }

    /// Whether a lookup waits for leaves that are not indexed yet (some of them may be
    /// here).
    fn wanted(&self) -> bool {
        self.logs
            .iter()
            .any(|l| l.index_wanted.load(Ordering::Relaxed) > *l.indexed.borrow())
    }
}

/// Gathers the sequencer's jobs into runs for [`write_runs`] until the sequencer drops its
/// sender, then returns after handing over everything queued.
///
/// At low rates each batch of queued jobs becomes a run at once, written through the
/// memtables (the watermark in the same atomic batch). From [`INGEST_RATE`] leaves per second
/// it lingers (up to `LedgerOptions::index_linger`, or [`GATHER_MAX`] leaves, or until a
/// lookup waits for them) and the run is ingested as sorted table files, one per index, then
/// the watermark written: inserting random keys into a memtable's skiplist was the largest
/// CPU cost of ingest (a quarter of it with 8 appenders on 2 cores, docs/benchmarks.md
/// "Ingested index runs"). A crash between the ingest and the watermark leaves entries above
/// the watermark; they are exactly the entries the re-index at open writes again (puts of
/// the same value, posting-list unions), and fsck accepts them.
///
/// Writing is a separate thread so that sorting, building and ingesting a large run (about
/// half a second for 256k leaves on 2 busy cores) does not stop this one from draining the
/// sequencer's bounded queue: a full queue holds up the next group commit.
pub(crate) fn gather(
    shared: Arc<Shared>,
    rx: mpsc::Receiver<IndexJob>,
    runs: mpsc::SyncSender<Run>,
) {
    // Leaves received since `since`: the rate that decides between writing and lingering
    // covers the lingered leaves of the previous run too.
    let mut since = Instant::now();
    let mut received = 0usize;
    let mut open = true;
    while open {
        let Ok(first) = rx.recv() else { break };
        let mut gathered = Gathered::default();
        gathered.add(first);
        loop {
            match rx.try_recv() {
                Ok(job) => gathered.add(job),
                Err(mpsc::TryRecvError::Empty) => break,
                Err(mpsc::TryRecvError::Disconnected) => {
                    open = false;
                    break;
                }
            }
        }
        let now = Instant::now();
        received += gathered.leaves;
        let rate = received as f64 / now.duration_since(since).as_secs_f64().max(1e-3);
        since = now;
        received = 0;
        if open && rate >= INGEST_RATE {
            // A lookup waiting for these leaves cuts the linger short (`LogInfo::index_wanted`).
            let deadline = now + shared.options.index_linger;
            while gathered.leaves < GATHER_MAX && !gathered.wanted() {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                match rx.recv_timeout(left.min(POKE_POLL)) {
                    Ok(job) => {
                        received += job.hashes.len();
                        gathered.add(job);
                    }
                    Err(mpsc::RecvTimeoutError::Timeout) => {}
                    Err(mpsc::RecvTimeoutError::Disconnected) => {
                        open = false;
                        break;
                    }
                }
            }
        }
        let run = Run {
            ingest: gathered.leaves >= INGEST_MIN,
            jobs: gathered.jobs,
        };
        if runs.send(run).is_err() {
            // The writer died (a panic, reported by its join); nothing more can be indexed.
            return;
        }
    }
}

/// Leaves gathered by [`gather`], in order, and how to write them.
pub(crate) struct Run {
    jobs: Vec<IndexJob>,
    /// Large enough to ingest as table files.
    ingest: bool,
}

/// Writes the runs of [`gather`] in order and publishes each log's new watermark after each;
/// returns once `gather` has returned and every run is written.
pub(crate) fn write_runs(shared: Arc<Shared>, runs: mpsc::Receiver<Run>) {
    for run in runs {
        if run.ingest
            && let Some(ends) = ingest(&shared, &run.jobs)
        {
            shared.metrics.index_ingests.fetch_add(1, Ordering::Relaxed);
            publish(ends);
            continue;
        }
        // In chunks, so that a backlog does not make one huge memtable write.
        let mut jobs = run.jobs.into_iter().peekable();
        while jobs.peek().is_some() {
            let mut chunk = Vec::new();
            let mut leaves = 0;
            while leaves < MAX_BATCH
                && let Some(job) = jobs.next()
            {
                leaves += job.hashes.len();
                chunk.push(job);
            }
            let ends = write(shared.store.as_ref(), &chunk);
            shared.metrics.index_writes.fetch_add(1, Ordering::Relaxed);
            publish(ends);
        }
    }
}

/// Each log's new watermark after some jobs, with its info.
type Watermarks = HashMap<LogId, (Arc<LogInfo>, u64)>;

/// The [`Watermarks`] after `jobs`.
fn watermarks(jobs: &[IndexJob]) -> Watermarks {
    let mut ends = Watermarks::new();
    for job in jobs {
        let end = job.first + job.hashes.len() as u64;
        let slot = ends
            .entry(job.info.log_id)
            .or_insert_with(|| (job.info.clone(), end));
        slot.1 = slot.1.max(end);
    }
    ends
}

/// The leaf-hash index keys of `jobs` (as big-endian integers, which sort like the bytes
/// without a memcmp per comparison), sorted, one per key (a later leaf wins, as a later put
/// would).
fn sorted_leaf_hash_keys(jobs: &[IndexJob]) -> Vec<(u128, u64)> {
    let mut keyed: Vec<(u128, u64)> = Vec::with_capacity(jobs.iter().map(|j| j.hashes.len()).sum());
    for job in jobs {
        for (i, h) in job.hashes.iter().enumerate() {
            let key = layout::leaf_hash_key(job.info.log_id, h);
            keyed.push((u128::from_be_bytes(key), job.first + i as u64));
        }
    }
    keyed.sort_unstable();
    let mut out: Vec<(u128, u64)> = Vec::with_capacity(keyed.len());
    for entry in keyed {
        match out.last_mut() {
            Some(last) if last.0 == entry.0 => *last = entry,
            _ => out.push(entry),
        }
    }
    out
}

fn leaf_hash_puts(batch: &mut WriteBatch, keyed: Vec<(u128, u64)>) {
    for (key, index) in keyed {
        batch.put(Space::LeafHashes, key.to_be_bytes(), index.to_be_bytes());
    }
}

/// The search-index entries of `jobs` as posting-list merges ([`put_postings`]).
fn job_postings(batch: &mut WriteBatch, jobs: &[IndexJob]) {
    put_postings(batch, jobs.iter().flat_map(|j| &j.fields));
}

fn watermark_puts(batch: &mut WriteBatch, ends: &Watermarks) {
    for (log_id, (_, end)) in ends {
        batch.put(
            Space::Meta,
            layout::meta_indexed_key(*log_id),
            end.to_be_bytes(),
        );
    }
}

/// Writes the entries of `jobs` and their watermarks in one batch through the memtables,
/// retrying until it succeeds; returns the watermarks.
fn write(store: &dyn Store, jobs: &[IndexJob]) -> Watermarks {
    let entries: usize = jobs.iter().map(|j| j.hashes.len() + j.fields.len()).sum();
    let mut batch = WriteBatch::with_capacity(entries + jobs.len());
    // Sorted, so that the memtable's skiplist inserts reuse their search position: random
    // keys in arrival order cost several times more to insert.
    leaf_hash_puts(&mut batch, sorted_leaf_hash_keys(jobs));
    job_postings(&mut batch, jobs);
    let ends = watermarks(jobs);
    watermark_puts(&mut batch, &ends);
    // Derived data: WAL-logged but not synced. A crash may lose the tail; the watermark,
    // in the same batch, is lost with it and the open re-indexes from there.
    write_retrying(store, batch, "the leaf-hash and search indexes");
    ends
}

/// Writes `batch` unsynced, retrying with backoff until it succeeds (the indexes can only
/// wait for the store; the group commit does not depend on them).
fn write_retrying(store: &dyn Store, batch: WriteBatch, what: &str) {
    let mut backoff = Duration::from_millis(10);
    while let Err(e) = store.write(batch.clone(), false) {
        tracing::error!(error = %e, retry_in = ?backoff, "writing {what} failed");
        std::thread::sleep(backoff);
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// Ingests the entries of `jobs` as two sorted runs, then writes their watermarks and
/// returns them; `None` (nothing published, the caller writes them instead) if an ingest
/// failed.
fn ingest(shared: &Shared, jobs: &[IndexJob]) -> Option<Watermarks> {
    let store = shared.store.as_ref();
    let mut hashes = WriteBatch::new();
    leaf_hash_puts(&mut hashes, sorted_leaf_hash_keys(jobs));
    let mut postings = WriteBatch::new();
    job_postings(&mut postings, jobs);
    for (space, batch) in [(Space::LeafHashes, hashes), (Space::Fields, postings)] {
        match store.ingest(space, batch) {
            Ok(Ingested::AsTable) => {}
            Ok(Ingested::Written) => {
                shared
                    .metrics
                    .index_ingests_written
                    .fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                tracing::warn!(error = %e, "ingesting the leaf-hash and search indexes failed; writing them instead");
                return None;
            }
        }
    }
    let ends = watermarks(jobs);
    let mut marks = WriteBatch::new();
    watermark_puts(&mut marks, &ends);
    write_retrying(store, marks, "the index watermarks");
    Some(ends)
}

/// Tells lookups that the leaves below `ends` are indexed.
fn publish(ends: Watermarks) {
    for (info, end) in ends.into_values() {
        info.indexed.send_if_modified(|v| {
            let grew = end > *v;
            *v = (*v).max(end);
            grew
        });
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
            layout::meta_indexed_key(log_id),
            end.to_be_bytes(),
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
                layout::leaf_hash_key(log_id, &leaf_hash(v)),
                next.to_be_bytes(),
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
    put_postings(&mut batch, &fields);
    Ok(batch)
}

/// Adds search-index entries (one [`layout::field_index_key`] per field and leaf) to `batch`
/// as posting-list merges, one per (field, value, bucket).
pub(crate) fn put_postings<'a>(
    batch: &mut WriteBatch,
    entries: impl IntoIterator<Item = &'a [u8; layout::FIELD_KEY_LEN]>,
) {
    for (key, base, leaves) in layout::field_postings(entries) {
        batch.merge(Space::Fields, key, layout::encode_postings(base, &leaves));
    }
}
