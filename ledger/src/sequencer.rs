//! Group commit: every pending append request (from all streams and connections) is turned
//! into a single `WriteBatch` — leaves, event-id entries, completed tiles and log state —
//! written to the WAL and then synced. Receipts go out only after the sync returns, so an
//! acknowledged event is durable; a failed write or sync acknowledges nothing.
//!
//! Three threads form a pipeline. The sequencer (this module's [`Sequencer`]) assigns leaf
//! indexes, hashes leaves and tiles and builds the batch of each group as its requests arrive.
//! The writer writes built groups to the store, unsynced (WAL write and memtable inserts: CPU).
//! The syncer syncs the WAL (the disk) and then publishes the groups written before that sync
//! and answers their requests. Each stage takes a large share of a commit, and overlapping them
//! is what keeps ingest from waiting on any one: while the disk syncs one commit, the writer
//! inserts the next and the sequencer builds the one after. Groups built while a write is in
//! progress queue up (bounded by `max_commit_bytes`) and are written as one batch, and one sync
//! covers every batch written before it, so a busy disk means larger commits, not more of them.
//! Batches are written strictly in the order they were built, so the store (and the WAL, which
//! a crash cuts at some point) never holds a group without every group before it.
//!
//! Written but not yet synced groups are readable in the store before they are published.
//! Nothing reads them: readers stay within the published tree size, and the sequencer's
//! duplicate check looks at its in-flight event ids first.
//!
//! A group is built on top of groups that are not yet durable. When a write fails, the writer
//! refuses that group and every group built after it (they assumed it), without writing them;
//! when a sync fails, the syncer refuses every group written before it, and the writer refuses
//! the rest of their epoch. The sequencer then rolls its in-memory view back to what it was
//! before the failed group, confirms it against the store (which may hold groups whose sync
//! failed: refused, yet present — the same ambiguity as a crash between write and answer), and
//! continues in a new epoch. Event ids of groups in flight are kept in memory so that a
//! duplicate arriving before its first copy is durable is still recognised.
//!
//! Sequencing and integration happen in the same batch: tile hashing costs about one BLAKE3
//! compression per leaf, far less than the fsync, and keeping them together means every tree
//! size the store reports is fully hashed (no integration lag, nothing to replay on restart).

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Condvar, Mutex};

use tokio::sync::{OwnedSemaphorePermit, mpsc, oneshot};

use crate::error::LedgerError;
use crate::event::EventId;
use crate::indexer::IndexJob;
use crate::layout::{self, LogId, LogRecord, LogState, Space};
use crate::ledger::{LogInfo, LogKey, Receipt, Shared};
use crate::merkle::{Hash, HashReader, NodeId, leaf_hash};
use crate::store::WriteBatch;
use crate::tiles::{EdgeSnapshot, LogHashReader, TileEdge};

/// The sequencer's maps are looked up several times per event (its log by tenant and
/// environment, event ids in flight and in the group): foldhash instead of SipHash. It is
/// seeded at random (per process and per map) but only "minimally DoS-resistant" by its own
/// account; the ids come from authenticated gateways, whose rates the quotas bound.
type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

/// One validated, encoded event waiting to be sequenced.
#[derive(Debug)]
pub(crate) struct PreparedEvent {
    /// Shared by the events of a request that go to the same log (one allocation, not two
    /// strings per event).
    pub log: Arc<LogKey>,
    pub event_id: EventId,
    /// Canonical encoding of the AuditEvent.
    pub event_bytes: Vec<u8>,
    /// (field tag, BLAKE3(value)[..8]) of every non-empty hot-indexed field
    /// ([`crate::query::IndexedField::HOT_INDEXED`]), hashed on the caller's thread.
    pub fields: HotFields,
}

/// An event's hot-indexed field hashes, inline (no allocation per event).
pub(crate) type HotFields = arrayvec::ArrayVec<
    (u8, [u8; layout::FIELD_HASH_PREFIX]),
    { crate::query::IndexedField::HOT_INDEXED.len() },
>;

/// One append request: all of it commits in one batch or none of it does.
pub(crate) struct Submission {
    pub principal: Arc<str>,
    pub events: Vec<PreparedEvent>,
    pub reply: oneshot::Sender<Result<Vec<Receipt>, LedgerError>>,
    /// Backpressure: released when the submission is answered.
    pub _permit: Option<OwnedSemaphorePermit>,
}

impl Submission {
    fn bytes(&self) -> usize {
        self.events.iter().map(|e| e.event_bytes.len()).sum()
    }
}

/// Where a submission's answer goes, with its backpressure permit (released on answer).
struct Reply {
    tx: oneshot::Sender<Result<Vec<Receipt>, LedgerError>>,
    _permit: Option<OwnedSemaphorePermit>,
}

/// The events of one group, shared by the sequencer (duplicate checks against groups in
/// flight) and the syncer (receipts).
type GroupEvents = Arc<Vec<Vec<PreparedEvent>>>;

/// The sequencer's private view of a log.
#[derive(Clone)]
struct SeqLog {
    info: Arc<LogInfo>,
    state: LogState,
    edge: TileEdge,
}

/// A leaf of a group in flight (built, not yet reported durable), by event id.
struct PendingLeaf {
    leaf_index: u64,
    leaf_hash: Hash,
    events: GroupEvents,
    /// (submission, event) position of the first copy in `events`.
    at: (usize, usize),
}

/// A new leaf of the group being built, between sequencing and hashing.
struct NewLeaf {
    leaf_index: u64,
    /// Its encoded leaf in the group's leaf buffer.
    leaf: std::ops::Range<usize>,
    /// (submission, event) position in the group.
    at: (usize, usize),
    /// Position of its receipt in the submission's receipts.
    receipt: usize,
}

/// What the sequencer remembers of a group it handed to the writer, to forget its event
/// ids once durable or to roll back over it if the write fails.
struct InFlight {
    seq: u64,
    /// The touched logs as they were before this group (absent: created by it).
    before: HashMap<LogKey, SeqLog>,
    next_log_id_before: LogId,
    touched: Vec<LogKey>,
    ids: Vec<(LogId, [u8; 16])>,
}

/// A group commit taking longer than this from built to durable is logged with where its
/// time went, and counted (`LedgerMetrics::slow_commits`): without it, a stall of the commit
/// pipeline shows only as a long tail in the acknowledgement histogram.
pub(crate) const SLOW_COMMIT: std::time::Duration = std::time::Duration::from_millis(250);

/// When a group reached each stage of the pipeline.
#[derive(Clone, Copy)]
struct Stages {
    built: std::time::Instant,
    /// Set by the writer: when it started and finished writing the batch holding the group.
    write_started: Option<std::time::Instant>,
    written: Option<std::time::Instant>,
}

/// A built group, ready to be written.
struct Built {
    seq: u64,
    epoch: u64,
    stages: Stages,
    batch: WriteBatch,
    replies: Vec<Reply>,
    receipts: Vec<Vec<Receipt>>,
    events: usize,
    created: Vec<Arc<LogInfo>>,
    /// Each touched log after this group: its right edge and size, published once durable.
    published: Vec<(Arc<LogInfo>, EdgeSnapshot, u64)>,
    index_jobs: Vec<IndexJob>,
}

/// The syncer's report on one group.
struct Done {
    seq: u64,
    written: bool,
}

pub(crate) struct Sequencer {
    shared: Arc<Shared>,
    logs: HashMap<LogKey, SeqLog>,
    next_log_id: LogId,
    /// Built groups on their way to the writer.
    handoff: Arc<HandOff>,
    done: std_mpsc::Receiver<Done>,
    /// The writer and syncer threads.
    threads: Vec<std::thread::JoinHandle<()>>,
    /// Groups handed to the writer and not yet reported, oldest first.
    outstanding: VecDeque<InFlight>,
    /// Event ids of the outstanding groups: not yet in the store, so duplicate checks look here.
    pending: HashMap<(LogId, [u8; 16]), PendingLeaf>,
    next_seq: u64,
    /// Bumped after each failed write; groups of an older epoch are never written.
    epoch: u64,
    /// Reports of groups up to this sequence number were already accounted for by a rollback.
    discard_through: u64,
}

impl Sequencer {
    pub(crate) fn new(
        shared: Arc<Shared>,
        next_log_id: LogId,
        index_tx: std_mpsc::SyncSender<IndexJob>,
    ) -> Result<Self, LedgerError> {
        let mut logs = HashMap::default();
        for info in shared.all_logs() {
            let state = shared.load_state(info.log_id)?;
            let edge = TileEdge::from_snapshot(&info.edge_snapshot());
            if edge.size() != state.tree_size {
                return Err(LedgerError::Corrupt(format!(
                    "{}: right edge has size {} but the state says {}",
                    info.origin,
                    edge.size(),
                    state.tree_size
                )));
            }
            logs.insert(info.key.clone(), SeqLog { info, state, edge });
        }
        let handoff = Arc::new(HandOff::new(shared.options.max_commit_bytes));
        let (done_tx, done_rx) = std_mpsc::channel();
        let written = Arc::new(Written::new());
        let syncer = Syncer {
            shared: shared.clone(),
            index_tx,
            done: done_tx,
            written: written.clone(),
        };
        let writer = Writer {
            shared: shared.clone(),
            written: written.clone(),
        };
        let spawn_failed = |e: std::io::Error| {
            LedgerError::Unavailable(format!("starting the group commit threads: {e}"))
        };
        let syncer = std::thread::Builder::new()
            .name("auditledger-sync".into())
            .spawn(move || syncer.run())
            .map_err(spawn_failed)?;
        let writer = std::thread::Builder::new()
            .name("auditledger-write".into())
            .spawn({
                let handoff = handoff.clone();
                move || writer.run(&handoff)
            })
            .map_err(|e| {
                // Without a writer the syncer would wait forever.
                written.close();
                spawn_failed(e)
            })?;
        Ok(Sequencer {
            shared,
            logs,
            next_log_id,
            handoff,
            done: done_rx,
            threads: vec![writer, syncer],
            outstanding: VecDeque::new(),
            pending: HashMap::default(),
            next_seq: 1,
            epoch: 0,
            discard_through: 0,
        })
    }

    /// Runs until every sender is gone, building groups of pending submissions; returns after
    /// every group handed over was written and synced (or failed) and answered.
    pub(crate) fn run(mut self, mut rx: mpsc::Receiver<Submission>) {
        let max_bytes = self.shared.options.max_commit_bytes;
        while let Some(first) = rx.blocking_recv() {
            let mut bytes = first.bytes();
            let mut group = vec![first];
            while bytes < max_bytes {
                match rx.try_recv() {
                    Ok(next) => {
                        bytes += next.bytes();
                        group.push(next);
                    }
                    Err(_) => break,
                }
            }
            self.absorb_reports();
            self.commit_group(group);
        }
        // The writer stops after the last group, then the syncer (and with it the indexer
        // queue) after answering it.
        self.handoff.close();
        for handle in self.threads.drain(..) {
            let _ = handle.join();
        }
    }

    /// Takes in the syncer's reports so far: forgets the event ids of durable groups, and
    /// rolls back after a failed one.
    fn absorb_reports(&mut self) {
        while let Ok(Done { seq, written }) = self.done.try_recv() {
            if seq <= self.discard_through {
                continue;
            }
            let Some(front) = self.outstanding.front() else {
                self.shared.set_failure(format!(
                    "internal: the syncer reported group {seq}, which is not in flight; restart the ledger"
                ));
                return;
            };
            if front.seq != seq {
                self.shared.set_failure(format!(
                    "internal: the syncer reported group {seq} before group {}; restart the ledger",
                    front.seq
                ));
                return;
            }
            if written {
                let group = self.outstanding.pop_front().expect("front exists");
                for id in group.ids {
                    self.pending.remove(&id);
                }
            } else {
                self.roll_back_outstanding();
            }
        }
    }

    /// The oldest outstanding group was not written, so neither is any group built after it:
    /// restore the view from before it and confirm it against the store.
    fn roll_back_outstanding(&mut self) {
        let groups = std::mem::take(&mut self.outstanding);
        self.discard_through = groups.back().map_or(self.discard_through, |g| g.seq);
        self.pending.clear();
        let mut touched = Vec::new();
        for group in groups.into_iter().rev() {
            self.restore(group.before, &group.touched, group.next_log_id_before);
            touched.extend(group.touched);
        }
        touched.sort_unstable();
        touched.dedup();
        self.epoch += 1;
        if let Err(reload) = self.reload_touched(&touched) {
            self.shared.set_failure(format!(
                "a group commit failed and reloading log state failed ({reload}); restart the ledger"
            ));
        }
    }

    /// Puts the touched logs back as they were (`before`), dropping logs created since.
    fn restore(&mut self, before: HashMap<LogKey, SeqLog>, touched: &[LogKey], next_log_id: LogId) {
        self.next_log_id = next_log_id;
        self.logs
            .retain(|k, _| before.contains_key(k) || !touched.contains(k));
        for (k, log) in before {
            self.logs.insert(k, log);
        }
    }

    fn commit_group(&mut self, group: Vec<Submission>) {
        let mut replies = Vec::with_capacity(group.len());
        let mut events = Vec::with_capacity(group.len());
        let mut principals = Vec::with_capacity(group.len());
        for s in group {
            replies.push(Reply {
                tx: s.reply,
                _permit: s._permit,
            });
            events.push(s.events);
            principals.push(s.principal);
        }
        if let Some(reason) = self.shared.failure() {
            for r in replies {
                let _ = r.tx.send(Err(LedgerError::Unavailable(reason.clone())));
            }
            return;
        }
        let events: GroupEvents = Arc::new(events);
        let touched = touched_logs(&events);
        let before: HashMap<LogKey, SeqLog> = touched
            .iter()
            .filter_map(|k| self.logs.get(k).map(|l| (k.clone(), l.clone())))
            .collect();
        let next_log_id_before = self.next_log_id;
        let seq = self.next_seq;
        self.next_seq += 1;
        let mut ids = Vec::new();
        match self.build(seq, &events, &principals, &touched, &mut ids) {
            Ok(mut built) => {
                built.replies = replies;
                self.outstanding.push_back(InFlight {
                    seq,
                    before,
                    next_log_id_before,
                    touched,
                    ids,
                });
                if let Err(built) = self.handoff.push(built) {
                    self.shared
                        .set_failure("the group commit threads stopped; restart the ledger".into());
                    for r in built.replies {
                        let _ = r.tx.send(Err(LedgerError::Unavailable(
                            "the group commit threads stopped".into(),
                        )));
                    }
                }
            }
            Err(err) => {
                // Nothing of this group was handed over: undo what building it changed.
                for id in &ids {
                    self.pending.remove(id);
                }
                self.restore(before, &touched, next_log_id_before);
                tracing::error!(error = %err, "building a group commit failed; nothing in it was acknowledged");
                self.shared.metrics.record_commit_failure();
                for r in replies {
                    let _ = r.tx.send(Err(answer_for(&err)));
                }
            }
        }
    }

    /// After a failed write the store is the authority: re-read each touched log's state, and
    /// adopt the logs a failed group created if the store has them.
    fn reload_touched(&mut self, touched: &[LogKey]) -> Result<(), LedgerError> {
        for key in touched {
            if let Some(log) = self.logs.get_mut(key) {
                let state = self.shared.load_state(log.info.log_id)?;
                if state != log.state {
                    if state.tree_size > log.state.tree_size {
                        // The failed write was applied after all (its acknowledgement was
                        // lost): its leaves never reached the indexer, whose watermark moves
                        // past them with the next group. Index them here.
                        index_leaves(
                            self.shared.store.as_ref(),
                            log.info.log_id,
                            log.state.tree_size,
                            state.tree_size,
                        )?;
                    }
                    log.edge = TileEdge::load(
                        self.shared.store.as_ref(),
                        log.info.log_id,
                        state.tree_size,
                    )?;
                    log.state = state;
                    log.info.publish_edge(log.edge.snapshot());
                    log.info
                        .durable_size
                        .store(state.tree_size, Ordering::Release);
                }
            } else if let Some((info, state)) = crate::ledger::load_log_by_origin(
                self.shared.store.as_ref(),
                &self.shared.origin_for(key),
            )? {
                // The failed group that created this log was applied after all: adopt the log
                // as stored, or the next group would create it again over its leaves.
                let edge = TileEdge::from_snapshot(&info.edge_snapshot());
                self.shared.register_log(info.clone());
                self.logs.insert(key.clone(), SeqLog { info, state, edge });
            }
        }
        // Likewise the log ids such a group took.
        self.next_log_id = self.next_log_id.max(crate::ledger::stored_next_log_id(
            self.shared.store.as_ref(),
        )?);
        Ok(())
    }

    fn ensure_log(
        &mut self,
        key: &LogKey,
        batch: &mut WriteBatch,
        created: &mut Vec<Arc<LogInfo>>,
    ) {
        if self.logs.contains_key(key) {
            return;
        }
        let log_id = self.next_log_id;
        self.next_log_id += 1;
        let record = LogRecord {
            segment_bits: self.shared.options.segment_bits,
            created_at: self.shared.clock.now_nanos(),
            tenant_id: key.tenant_id.clone(),
            environment: key.environment.clone(),
            origin: self.shared.origin_for(key),
        };
        batch.put(
            Space::Meta,
            layout::meta_origin_key(&record.origin),
            log_id.to_be_bytes(),
        );
        batch.put(Space::Meta, layout::meta_log_key(log_id), record.encode());
        batch.put(
            Space::Meta,
            layout::META_NEXT_LOG_ID,
            self.next_log_id.to_be_bytes(),
        );
        // A new log is searchable by index from its first leaf.
        batch.put(
            Space::Meta,
            layout::meta_fields_from_key(log_id),
            0u64.to_be_bytes(),
        );
        let info = Arc::new(LogInfo::new(
            log_id,
            key.clone(),
            record,
            None,
            Default::default(),
        ));
        created.push(info.clone());
        self.logs.insert(
            key.clone(),
            SeqLog {
                info,
                state: LogState::default(),
                edge: TileEdge::new(),
            },
        );
    }

    /// Sequences one group on top of everything built before it and returns its batch.
    /// Records each new event id in `ids` (and in `self.pending`) as it goes, so that a failure
    /// half-way can undo exactly what was added.
    fn build(
        &mut self,
        seq: u64,
        events: &GroupEvents,
        principals: &[Arc<str>],
        touched: &[LogKey],
        ids: &mut Vec<(LogId, [u8; 16])>,
    ) -> Result<Built, LedgerError> {
        let event_count: usize = events.iter().map(Vec::len).sum();
        let event_bytes: usize = events.iter().flatten().map(|e| e.event_bytes.len()).sum();
        let mut batch = WriteBatch::with_capacity(event_count * 2 + 8);
        let mut created = Vec::new();
        let mut index_jobs: HashMap<LogId, IndexJob> = HashMap::default();

        // Dedup against the store, for logs that existed before this group.
        let mut lookups: Vec<(LogId, [u8; 20])> = Vec::new();
        for event in events.iter().flatten() {
            if let Some(log) = self.logs.get(&*event.log) {
                lookups.push((
                    log.info.log_id,
                    layout::event_id_key(log.info.log_id, &event.event_id.0),
                ));
            }
        }
        let mut stored: HashMap<(LogId, [u8; 16]), u64> = HashMap::default();
        if !lookups.is_empty() {
            // Sorted, RocksDB's MultiGet takes them as they are instead of sorting them itself
            // (through its comparator: several per cent of this thread).
            lookups.sort_unstable_by_key(|&(_, key)| key);
            let keys: Vec<&[u8]> = lookups.iter().map(|(_, k)| &k[..]).collect();
            let mut corrupt = None;
            self.shared
                .store
                .multi_get(Space::EventIds, &keys, &mut |i, value| {
                    if let Some(value) = value {
                        match layout::decode_u64(value) {
                            Some(index) => {
                                let (log_id, key) = &lookups[i];
                                let mut uuid = [0u8; 16];
                                uuid.copy_from_slice(&key[4..]);
                                stored.insert((*log_id, uuid), index);
                            }
                            None => {
                                corrupt =
                                    Some(format!("event id index value has {} bytes", value.len()))
                            }
                        }
                    }
                })?;
            if let Some(c) = corrupt {
                return Err(LedgerError::Corrupt(c));
            }
        }

        // Pass 1: sequence. Each new event gets its index, timestamp and leaf bytes; the
        // receipts of new leaves (and of copies of them later in this group) wait for pass 2's
        // hashes, computed together through BLAKE3's multi-lane kernel.
        let mut receipts: Vec<Vec<Receipt>> = Vec::with_capacity(events.len());
        let mut new_leaves: Vec<NewLeaf> = Vec::with_capacity(event_count);
        let mut leaf_bytes: Vec<u8> = Vec::with_capacity(event_bytes + event_count * 64);
        let mut in_group: HashMap<(LogId, [u8; 16]), usize> =
            HashMap::with_capacity_and_hasher(event_count, Default::default());
        // (submission, receipt) positions of in-group copies and the new leaf they copy.
        let mut copies: Vec<(usize, usize, usize)> = Vec::new();
        for (s_index, submission) in events.iter().enumerate() {
            let mut these = Vec::with_capacity(submission.len());
            for (e_index, event) in submission.iter().enumerate() {
                self.ensure_log(&event.log, &mut batch, &mut created);
                let log = self.logs.get_mut(&*event.log).expect("ensured above");
                let log_id = log.info.log_id;
                let origin = log.info.origin.clone();
                let dedup_key = (log_id, event.event_id.0);
                let duplicate = |leaf_index, leaf_hash, content_differs| Receipt {
                    origin: origin.clone(),
                    event_id: event.event_id,
                    leaf_index,
                    leaf_hash,
                    duplicate: true,
                    content_differs,
                };
                if let Some(&slot) = in_group.get(&dedup_key) {
                    let first = &new_leaves[slot];
                    let (s0, e0) = first.at;
                    copies.push((s_index, these.len(), slot));
                    these.push(duplicate(
                        first.leaf_index,
                        [0; 32],
                        Some(events[s0][e0].event_bytes != event.event_bytes),
                    ));
                    continue;
                }
                // In flight (a group not yet durable) next: the store may not have it.
                if let Some(first) = self.pending.get(&dedup_key) {
                    let (s0, e0) = first.at;
                    these.push(duplicate(
                        first.leaf_index,
                        first.leaf_hash,
                        Some(first.events[s0][e0].event_bytes != event.event_bytes),
                    ));
                    continue;
                }
                if let Some(&leaf_index) = stored.get(&dedup_key) {
                    let (leaf_hash, content_differs) =
                        self.describe_stored(&event.log, leaf_index, &event.event_bytes)?;
                    these.push(duplicate(leaf_index, leaf_hash, content_differs));
                    continue;
                }
                let leaf_index = log.state.tree_size;
                let logged_at = self.shared.clock.now_nanos().max(log.state.last_logged_at);
                log.state.tree_size += 1;
                log.state.last_logged_at = logged_at;
                in_group.insert(dedup_key, new_leaves.len());
                let start = leaf_bytes.len();
                crate::event::encode_leaf_into(
                    &mut leaf_bytes,
                    &event.event_bytes,
                    logged_at,
                    &principals[s_index],
                );
                new_leaves.push(NewLeaf {
                    leaf_index,
                    leaf: start..leaf_bytes.len(),
                    at: (s_index, e_index),
                    receipt: these.len(),
                });
                these.push(Receipt {
                    origin,
                    event_id: event.event_id,
                    leaf_index,
                    leaf_hash: [0; 32],
                    duplicate: false,
                    content_differs: None,
                });
            }
            receipts.push(these);
        }

        // Pass 2: hash, write, extend the trees. The batch's bytes, sized once: per new leaf
        // its encoding, its key and event-id key (12 + 20 bytes) and index value (8), and about
        // 32 bytes of completed tiles (a 256-hash tile per 256 leaves, with its key and the
        // tiles above); log states and a margin on top.
        batch.reserve_bytes(leaf_bytes.len() + new_leaves.len() * (12 + 20 + 8 + 48) + 4096);
        let hashes = {
            let leaves: Vec<&[u8]> = new_leaves
                .iter()
                .map(|n| &leaf_bytes[n.leaf.clone()])
                .collect();
            crate::leaf_hashes::leaf_hashes(&leaves)
        };
        let mut completed = Vec::new();
        for (new, &hash) in new_leaves.into_iter().zip(&hashes) {
            let (s_index, e_index) = new.at;
            let event = &events[s_index][e_index];
            let log = self.logs.get_mut(&*event.log).expect("sequenced above");
            let log_id = log.info.log_id;
            let leaf_index = new.leaf_index;
            receipts[s_index][new.receipt].leaf_hash = hash;
            batch.put(
                Space::Leaves,
                layout::leaf_key(log_id, leaf_index),
                &leaf_bytes[new.leaf],
            );
            batch.put(
                Space::EventIds,
                layout::event_id_key(log_id, &event.event_id.0),
                leaf_index.to_be_bytes(),
            );
            let job = index_jobs.entry(log_id).or_insert_with(|| IndexJob {
                info: log.info.clone(),
                first: leaf_index,
                hashes: Vec::new(),
                fields: Vec::new(),
            });
            job.hashes.push(hash);
            for (tag, value_hash) in &event.fields {
                job.fields.push(layout::field_index_key(
                    log_id, *tag, value_hash, leaf_index,
                ));
            }
            log.edge.append(hash, &mut completed);
            for (tile, value) in completed.drain(..) {
                batch.put(Space::Tiles, layout::tile_key(log_id, tile), value);
            }
            let dedup_key = (log_id, event.event_id.0);
            self.pending.insert(
                dedup_key,
                PendingLeaf {
                    leaf_index,
                    leaf_hash: hash,
                    events: events.clone(),
                    at: new.at,
                },
            );
            ids.push(dedup_key);
        }
        for (s_index, pos, slot) in copies {
            receipts[s_index][pos].leaf_hash = hashes[slot];
        }

        let mut published = Vec::with_capacity(touched.len());
        for key in touched {
            let log = &self.logs[key];
            batch.put(
                Space::Meta,
                layout::meta_state_key(log.info.log_id),
                log.state.encode(),
            );
            published.push((log.info.clone(), log.edge.snapshot(), log.state.tree_size));
        }

        Ok(Built {
            seq,
            epoch: self.epoch,
            stages: Stages {
                built: std::time::Instant::now(),
                write_started: None,
                written: None,
            },
            batch,
            replies: Vec::new(),
            receipts,
            events: event_count,
            created,
            published,
            index_jobs: index_jobs.into_values().collect(),
        })
    }

    /// Leaf hash of an already stored leaf, and whether a re-sent event's content differs from
    /// it (`None` when the leaf's content is no longer in the hot store).
    fn describe_stored(
        &self,
        key: &LogKey,
        leaf_index: u64,
        event_bytes: &[u8],
    ) -> Result<(Hash, Option<bool>), LedgerError> {
        let log_id = self.logs[key].info.log_id;
        let leaf = self
            .shared
            .store
            .get(Space::Leaves, &layout::leaf_key(log_id, leaf_index))?;
        if let Some(leaf) = leaf {
            // A leaf starts with the event as field 1, exactly what encode_leaf writes for an
            // empty logged_at and principal.
            let prefix = crate::event::encode_leaf(event_bytes, 0, "");
            return Ok((leaf_hash(&leaf), Some(!leaf.starts_with(&prefix))));
        }
        // Archived: the tree has its hash. The published (durable) edge, not the sequencer's,
        // which may already cover tiles that are still in flight.
        let info = &self.logs[key].info;
        let reader = LogHashReader::new(self.shared.store.as_ref(), log_id, info.edge_snapshot());
        let hash = reader.read_hashes(&[NodeId::new(0, leaf_index)])?[0];
        Ok((hash, None))
    }
}

/// Writes the leaf-hash and search-index entries of leaves `[from, to)` from the stored
/// leaves, without the watermark (the indexer owns it; re-indexing at open is idempotent).
fn index_leaves(
    store: &dyn crate::store::Store,
    log_id: LogId,
    from: u64,
    to: u64,
) -> Result<(), LedgerError> {
    store.write(
        crate::indexer::index_entries(store, log_id, from, to)?,
        false,
    )?;
    Ok(())
}

/// The error a submission gets when its group failed.
fn answer_for(err: &LedgerError) -> LedgerError {
    match err {
        LedgerError::Store(se) => LedgerError::Store(se.clone()),
        LedgerError::Unavailable(reason) => LedgerError::Unavailable(reason.clone()),
        other => LedgerError::Unavailable(other.to_string()),
    }
}

/// Built groups waiting for the writer, oldest first. Bounded by bytes: a sequencer that
/// runs ahead of the disk waits here, and the requests behind it wait in the submission queue
/// (whose permits are the ledger's backpressure).
struct HandOff {
    state: Mutex<HandOffState>,
    /// Signalled when a group arrives or the hand-off closes.
    ready: Condvar,
    /// Signalled when the writer takes the queue or stops.
    room: Condvar,
    max_bytes: usize,
}

#[derive(Default)]
struct HandOffState {
    groups: VecDeque<Built>,
    bytes: usize,
    /// No more groups will come (the sequencer is done).
    closed: bool,
    /// The writer is gone; nothing queued now will be written.
    dead: bool,
}

impl HandOff {
    fn new(max_bytes: usize) -> Self {
        HandOff {
            state: Mutex::new(HandOffState::default()),
            ready: Condvar::new(),
            room: Condvar::new(),
            max_bytes: max_bytes.max(1),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HandOffState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues a built group, waiting while the queue holds `max_bytes` or more; gives it back
    /// (boxed: it is large and this is the rare path) if the writer is gone.
    fn push(&self, built: Built) -> Result<(), Box<Built>> {
        let mut state = self.lock();
        while state.bytes >= self.max_bytes && !state.dead {
            state = self.room.wait(state).unwrap_or_else(|p| p.into_inner());
        }
        if state.dead {
            return Err(Box::new(built));
        }
        state.bytes += built.batch.bytes();
        state.groups.push_back(built);
        self.ready.notify_one();
        Ok(())
    }

    /// Everything queued, waiting for at least one group; `None` once closed and drained.
    fn take_all(&self) -> Option<Vec<Built>> {
        let mut state = self.lock();
        while state.groups.is_empty() && !state.closed {
            state = self.ready.wait(state).unwrap_or_else(|p| p.into_inner());
        }
        if state.groups.is_empty() {
            return None;
        }
        state.bytes = 0;
        let groups = state.groups.drain(..).collect();
        self.room.notify_all();
        Some(groups)
    }

    fn close(&self) {
        self.lock().closed = true;
        self.ready.notify_all();
    }
}

/// Marks the hand-off dead when the writer thread ends; groups still queued are answered
/// with an error when dropped with their reply channels (their callers see the sequencer gone).
/// Also closes the queue to the syncer, which then syncs and answers what was written and stops.
struct WriterExit<'a>(&'a HandOff, &'a Written);

impl Drop for WriterExit<'_> {
    fn drop(&mut self) {
        let mut state = self.0.lock();
        state.dead = true;
        state.groups.clear();
        self.0.room.notify_all();
        drop(state);
        self.1.close();
    }
}

/// A group the writer is done with, in build order: written (durable at the syncer's next
/// sync) or refused.
enum Outcome {
    Written(Built),
    Failed(Built, LedgerError),
}

/// The groups the writer has written (or refused), waiting for the syncer, oldest first.
struct Written {
    state: Mutex<WrittenState>,
    /// Signalled on every change.
    changed: Condvar,
}

#[derive(Default)]
struct WrittenState {
    outcomes: VecDeque<Outcome>,
    /// Event bytes written since the syncer last took the queue (for the write metrics).
    bytes: usize,
    /// A write is in progress.
    writing: bool,
    /// The last write failed (the store's write error stays reported until one succeeds and
    /// is synced).
    write_failed: bool,
    /// (epoch, reason) of the last failed write or sync: later groups of that epoch were built
    /// on top of it and are refused unwritten.
    failed: Option<(u64, String)>,
    /// The writer is done; the syncer stops once the queue is empty.
    closed: bool,
    /// The syncer is gone; nothing queued now will be answered by it.
    dead: bool,
}

impl Written {
    fn new() -> Self {
        Written {
            state: Mutex::new(WrittenState::default()),
            changed: Condvar::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, WrittenState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn wait<'a>(
        &self,
        state: std::sync::MutexGuard<'a, WrittenState>,
    ) -> std::sync::MutexGuard<'a, WrittenState> {
        self.changed.wait(state).unwrap_or_else(|p| p.into_inner())
    }

    /// The writer is done: no write is in progress (a panic in the middle of one included, so
    /// the syncer never waits for its end) and no more will come.
    fn close(&self) {
        let mut state = self.lock();
        state.writing = false;
        state.closed = true;
        self.changed.notify_all();
    }
}

/// Marks the queue to the writer dead when the syncer thread ends (a panic included), so the
/// writer stops taking groups instead of queueing answers nobody sends.
struct SyncerExit<'a>(&'a Written);

impl Drop for SyncerExit<'_> {
    fn drop(&mut self) {
        let mut state = self.0.lock();
        state.dead = true;
        state.outcomes.clear();
        self.0.changed.notify_all();
    }
}

/// Writes built groups in order, without syncing, and queues them for the syncer.
struct Writer {
    shared: Arc<Shared>,
    written: Arc<Written>,
}

impl Writer {
    fn run(self, handoff: &HandOff) {
        // Marks the hand-off dead if this thread ends for any reason (a panic included), so
        // the sequencer fails requests instead of waiting for room forever.
        let _guard = WriterExit(handoff, &self.written);
        while let Some(groups) = handoff.take_all() {
            let mut write = Vec::with_capacity(groups.len());
            {
                let mut state = self.written.lock();
                if state.dead {
                    return;
                }
                for built in groups {
                    match &state.failed {
                        Some((epoch, reason)) if *epoch == built.epoch => {
                            let err = LedgerError::Unavailable(format!(
                                "not written: an earlier group commit it depends on failed ({reason})"
                            ));
                            state.outcomes.push_back(Outcome::Failed(built, err));
                        }
                        _ => write.push(built),
                    }
                }
                state.writing = !write.is_empty();
                self.written.changed.notify_all();
            }
            if write.is_empty() {
                continue;
            }
            let write_started = std::time::Instant::now();
            let result = self.write(&mut write);
            let written = std::time::Instant::now();
            for built in &mut write {
                built.stages.write_started = Some(write_started);
                built.stages.written = Some(written);
            }
            let mut state = self.written.lock();
            state.writing = false;
            if state.dead {
                // Nobody will answer them: dropped, their callers see the ledger gone.
                return;
            }
            state.write_failed = result.is_err();
            match result {
                Ok(bytes) => {
                    state.bytes += bytes;
                    state
                        .outcomes
                        .extend(write.into_iter().map(Outcome::Written));
                }
                Err(err) => {
                    tracing::error!(error = %err, "group commit failed; nothing in it was acknowledged");
                    self.shared.set_write_error(Some(err.to_string()));
                    let epoch = write.iter().map(|g| g.epoch).max().unwrap_or_default();
                    state.failed = Some((epoch, err.to_string()));
                    state.outcomes.extend(
                        write
                            .into_iter()
                            .map(|built| Outcome::Failed(built, answer_for(&err))),
                    );
                }
            }
            self.written.changed.notify_all();
        }
    }

    /// Writes `groups` (in build order) as one batch, unsynced: it is durable once the syncer's
    /// next sync returns. Returns the batch's bytes.
    fn write(&self, groups: &mut [Built]) -> Result<usize, LedgerError> {
        let mut batch = std::mem::take(&mut groups[0].batch);
        for built in &mut groups[1..] {
            batch.append(std::mem::take(&mut built.batch));
        }
        let bytes = batch.bytes();
        self.shared.store.write_deferred(batch)?;
        Ok(bytes)
    }
}

/// Syncs what the writer wrote, then publishes those groups and answers their submissions, in
/// build order. One sync covers every group written before it started, so while it runs the
/// writer already inserts the next groups: the disk syncs one group commit while the CPU
/// writes the next.
struct Syncer {
    shared: Arc<Shared>,
    /// New leaf hashes go to the indexer after each successful commit.
    index_tx: std_mpsc::SyncSender<IndexJob>,
    done: std_mpsc::Sender<Done>,
    written: Arc<Written>,
}

impl Syncer {
    fn run(self) {
        let _guard = SyncerExit(&self.written);
        loop {
            let (outcomes, bytes) = {
                let mut state = self.written.lock();
                while state.outcomes.is_empty() && !state.closed {
                    state = self.written.wait(state);
                }
                if state.outcomes.is_empty() {
                    return;
                }
                let bytes = std::mem::take(&mut state.bytes);
                (state.outcomes.drain(..).collect::<Vec<_>>(), bytes)
            };
            let sync_started = std::time::Instant::now();
            let synced = if outcomes.iter().any(|o| matches!(o, Outcome::Written(_))) {
                let synced = self.shared.store.sync();
                if synced.is_ok() {
                    self.shared
                        .metrics
                        .record_write(bytes, sync_started.elapsed());
                    // Under the lock: a write failing meanwhile reports itself after this.
                    let state = self.written.lock();
                    if !state.write_failed {
                        self.shared.set_write_error(None);
                    }
                }
                synced
            } else {
                Ok(())
            };
            match synced {
                Ok(()) => {
                    report_slow_commits(&self.shared, &outcomes, sync_started);
                    self.answer(outcomes)
                }
                Err(err) => self.sync_failed(outcomes, LedgerError::from(err)),
            }
        }
    }

    /// Completes the written groups (now durable) and fails the refused ones, in order.
    fn answer(&self, outcomes: Vec<Outcome>) {
        let mut requests = 0;
        let mut events = 0;
        for outcome in &outcomes {
            if let Outcome::Written(built) = outcome {
                requests += built.replies.len();
                events += built.events;
            }
        }
        if requests > 0 {
            self.shared.metrics.record_commit(requests, events);
        }
        for outcome in outcomes {
            match outcome {
                Outcome::Written(built) => self.complete(built),
                Outcome::Failed(built, err) => self.fail(built, &err),
            }
        }
    }

    /// The sync failed: the written groups are in the store but perhaps not on disk, so none of
    /// them is acknowledged, and neither is anything built on them. The writer is stopped from
    /// writing more of their epoch, and its write in progress awaited, before the sequencer
    /// hears of the failure: it then re-reads the store, which no longer moves under it.
    fn sync_failed(&self, mut outcomes: Vec<Outcome>, err: LedgerError) {
        tracing::error!(error = %err, "syncing a group commit failed; nothing in it was acknowledged");
        self.shared.set_write_error(Some(err.to_string()));
        let epoch = outcomes
            .iter()
            .map(|o| match o {
                Outcome::Written(b) | Outcome::Failed(b, _) => b.epoch,
            })
            .max()
            .unwrap_or_default();
        {
            let mut state = self.written.lock();
            state.failed = Some((epoch, err.to_string()));
            while state.writing {
                state = self.written.wait(state);
            }
            state.bytes = 0;
            outcomes.extend(state.outcomes.drain(..));
        }
        for outcome in outcomes {
            match outcome {
                Outcome::Written(built) => self.fail(built, &err),
                Outcome::Failed(built, e) => self.fail(built, &e),
            }
        }
    }

    /// Publishes a durable group and answers its requests.
    fn complete(&self, built: Built) {
        for log in built.created {
            self.shared.register_log(log);
        }
        let now = self.shared.clock.now_nanos();
        for (info, edge, size) in built.published {
            // The edge first: a reader that sees the new size must find its nodes.
            info.publish_edge(edge);
            let previous = info.durable_size.swap(size, Ordering::AcqRel);
            if previous != size {
                let _ = info.pending_since.compare_exchange(
                    0,
                    now,
                    Ordering::AcqRel,
                    Ordering::Relaxed,
                );
            }
        }
        // The report before the answers (in `fail` too): a caller that reacts to its answer by
        // appending again must find the sequencer already aware of this outcome.
        let _ = self.done.send(Done {
            seq: built.seq,
            written: true,
        });
        for (reply, receipts) in built.replies.into_iter().zip(built.receipts) {
            let _ = reply.tx.send(Ok(receipts));
        }
        // After the receipts: a full queue (the indexer behind) delays the next group, never
        // the acknowledgement of this one.
        for job in built.index_jobs {
            // The indexer only stops after the syncer; a send cannot fail before.
            let _ = self.index_tx.send(job);
        }
    }

    fn fail(&self, built: Built, err: &LedgerError) {
        self.shared.metrics.record_commit_failure();
        let _ = self.done.send(Done {
            seq: built.seq,
            written: false,
        });
        for reply in built.replies {
            let _ = reply.tx.send(Err(answer_for(err)));
        }
    }
}

/// Logs (and counts) each durable group of `outcomes` that took longer than [`SLOW_COMMIT`]
/// from built to durable, with the time of each stage: waiting for the writer, its write (WAL
/// and memtables), waiting for the syncer, and the sync that started at `sync_started`.
fn report_slow_commits(shared: &Shared, outcomes: &[Outcome], sync_started: std::time::Instant) {
    let synced = std::time::Instant::now();
    for outcome in outcomes {
        let Outcome::Written(built) = outcome else {
            continue;
        };
        let stages = built.stages;
        let took = synced.saturating_duration_since(stages.built);
        if took <= SLOW_COMMIT {
            continue;
        }
        shared.metrics.slow_commits.fetch_add(1, Ordering::Relaxed);
        let ms = |from: Option<std::time::Instant>, to: Option<std::time::Instant>| match (from, to)
        {
            (Some(from), Some(to)) => to.saturating_duration_since(from).as_secs_f64() * 1e3,
            _ => f64::NAN,
        };
        tracing::warn!(
            took_ms = took.as_secs_f64() * 1e3,
            waiting_for_writer_ms = ms(Some(stages.built), stages.write_started),
            write_ms = ms(stages.write_started, stages.written),
            waiting_for_sync_ms = ms(stages.written, Some(sync_started)),
            sync_ms = ms(Some(sync_started), Some(synced)),
            requests = built.replies.len(),
            events = built.events,
            "slow group commit: acknowledgements waited"
        );
    }
}

/// The distinct logs a group appends to, sorted: computed once per commit and used to snapshot,
/// write, publish and (after a failure) restore exactly those logs.
fn touched_logs(events: &[Vec<PreparedEvent>]) -> Vec<LogKey> {
    let mut touched: Vec<&Arc<LogKey>> = Vec::new();
    for event in events.iter().flatten() {
        // Events of a request share their log's key: skip the repeats before sorting.
        if !touched
            .last()
            .is_some_and(|&last| Arc::ptr_eq(last, &event.log))
        {
            touched.push(&event.log);
        }
    }
    touched.sort_unstable();
    touched.dedup();
    touched.into_iter().map(|k| LogKey::clone(k)).collect()
}
