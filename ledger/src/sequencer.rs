//! Group commit: one thread turns every pending append request (from all streams and
//! connections) into a single `WriteBatch` — leaves, event-id index entries, completed tiles
//! and log state — written with a synced WAL. Receipts go out only after that write
//! returns, so an acknowledged event is durable; a failed write acknowledges nothing.
//!
//! Sequencing and integration happen in the same batch: tile hashing costs about one BLAKE3
//! compression per leaf, far less than the fsync, and keeping them together means every tree
//! size the store reports is fully hashed (no integration lag, nothing to replay on restart).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::sync::{OwnedSemaphorePermit, mpsc, oneshot};

use crate::error::LedgerError;
use crate::event::EventId;
use crate::indexer::IndexJob;
use crate::layout::{self, LogId, LogRecord, LogState, Space};
use crate::ledger::{LogInfo, LogKey, Receipt, Shared};
use crate::merkle::{Hash, HashReader, NodeId, leaf_hash};
use crate::store::WriteBatch;
use crate::tiles::{LogHashReader, TileEdge};

/// One validated, encoded event waiting to be sequenced.
#[derive(Debug)]
pub(crate) struct PreparedEvent {
    pub log: LogKey,
    pub event_id: EventId,
    /// Canonical encoding of the AuditEvent.
    pub event_bytes: Vec<u8>,
    /// (field tag, BLAKE3(value)[..8]) of every non-empty hot-indexed field
    /// ([`crate::query::IndexedField::HOT_INDEXED`]), hashed on the caller's thread.
    pub fields: Vec<(u8, [u8; layout::FIELD_HASH_PREFIX])>,
}

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

/// The sequencer's private view of a log.
#[derive(Clone)]
struct SeqLog {
    info: Arc<LogInfo>,
    state: LogState,
    edge: TileEdge,
}

pub(crate) struct Sequencer {
    shared: Arc<Shared>,
    logs: HashMap<LogKey, SeqLog>,
    next_log_id: LogId,
    /// New leaf hashes go to the indexer after each successful commit.
    index_tx: std::sync::mpsc::SyncSender<IndexJob>,
}

/// What a successful group commit produced.
struct Committed {
    outcomes: Vec<Vec<Outcome>>,
    created: Vec<Arc<LogInfo>>,
    index_jobs: Vec<IndexJob>,
}

/// What happened to one event of a group.
enum Outcome {
    New {
        leaf_index: u64,
        leaf_hash: Hash,
    },
    Duplicate {
        leaf_index: u64,
        leaf_hash: Hash,
        content_differs: Option<bool>,
    },
}

impl Sequencer {
    pub(crate) fn new(
        shared: Arc<Shared>,
        next_log_id: LogId,
        index_tx: std::sync::mpsc::SyncSender<IndexJob>,
    ) -> Result<Self, LedgerError> {
        let mut logs = HashMap::new();
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
        Ok(Sequencer {
            shared,
            logs,
            next_log_id,
            index_tx,
        })
    }

    /// Runs until every sender is gone, committing groups of pending submissions.
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
            self.commit_group(group);
        }
    }

    fn commit_group(&mut self, group: Vec<Submission>) {
        if let Some(reason) = self.shared.failure() {
            for s in group {
                let _ = s.reply.send(Err(LedgerError::Unavailable(reason.clone())));
            }
            return;
        }
        let touched = touched_logs(&group);
        let before: HashMap<LogKey, SeqLog> = touched
            .iter()
            .filter_map(|k| self.logs.get(k).map(|l| (k.clone(), l.clone())))
            .collect();
        let next_log_id_before = self.next_log_id;
        match self.build_and_write(&group, &touched) {
            Ok(Committed {
                outcomes,
                created,
                index_jobs,
            }) => {
                for log in created {
                    self.shared.register_log(log);
                }
                let now = self.shared.clock.now_nanos();
                for key in &touched {
                    if let Some(log) = self.logs.get(key) {
                        // The edge first: a reader that sees the new size must find its nodes.
                        log.info.publish_edge(log.edge.snapshot());
                        let previous = log
                            .info
                            .durable_size
                            .swap(log.state.tree_size, Ordering::AcqRel);
                        if previous != log.state.tree_size {
                            let _ = log.info.pending_since.compare_exchange(
                                0,
                                now,
                                Ordering::AcqRel,
                                Ordering::Relaxed,
                            );
                        }
                    }
                }
                self.shared.metrics.record_commit(&group);
                for (submission, outcomes) in group.into_iter().zip(outcomes) {
                    let receipts = submission
                        .events
                        .iter()
                        .zip(outcomes)
                        .map(|(event, outcome)| {
                            let origin = self.logs[&event.log].info.origin.clone();
                            match outcome {
                                Outcome::New {
                                    leaf_index,
                                    leaf_hash,
                                } => Receipt {
                                    origin,
                                    event_id: event.event_id,
                                    leaf_index,
                                    leaf_hash,
                                    duplicate: false,
                                    content_differs: None,
                                },
                                Outcome::Duplicate {
                                    leaf_index,
                                    leaf_hash,
                                    content_differs,
                                } => Receipt {
                                    origin,
                                    event_id: event.event_id,
                                    leaf_index,
                                    leaf_hash,
                                    duplicate: true,
                                    content_differs,
                                },
                            }
                        })
                        .collect();
                    let _ = submission.reply.send(Ok(receipts));
                }
                // After the receipts: a full queue (the indexer behind) delays the next group,
                // never the acknowledgement of this one.
                for job in index_jobs {
                    // The indexer only stops after the sequencer; a send cannot fail before.
                    let _ = self.index_tx.send(job);
                }
            }
            Err(err) => {
                // Nothing of the group is acknowledged. Restore the in-memory view to what the
                // store holds; if the store cannot tell us, stop accepting writes.
                self.next_log_id = next_log_id_before;
                self.logs
                    .retain(|k, _| before.contains_key(k) || !touched.contains(k));
                for (k, log) in before {
                    self.logs.insert(k, log);
                }
                if let Err(reload) = self.reload_touched(&touched) {
                    self.shared.set_failure(format!(
                        "write failed ({err}) and reloading log state failed ({reload}); restart the ledger"
                    ));
                }
                tracing::error!(error = %err, "group commit failed; nothing in it was acknowledged");
                self.shared.metrics.record_commit_failure();
                let message = err.to_string();
                for s in group {
                    let e = match &err {
                        LedgerError::Store(se) => LedgerError::Store(se.clone()),
                        _ => LedgerError::Unavailable(message.clone()),
                    };
                    let _ = s.reply.send(Err(e));
                }
            }
        }
    }

    /// After a failed write the store is the authority: re-read each touched log's state.
    fn reload_touched(&mut self, touched: &[LogKey]) -> Result<(), LedgerError> {
        for key in touched {
            if let Some(log) = self.logs.get_mut(key) {
                let state = self.shared.load_state(log.info.log_id)?;
                if state != log.state {
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
            }
        }
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
            log_id.to_be_bytes().to_vec(),
        );
        batch.put(
            Space::Meta,
            layout::meta_log_key(log_id).to_vec(),
            record.encode(),
        );
        batch.put(
            Space::Meta,
            layout::META_NEXT_LOG_ID.to_vec(),
            self.next_log_id.to_be_bytes().to_vec(),
        );
        // A new log is searchable by index from its first leaf.
        batch.put(
            Space::Meta,
            layout::meta_fields_from_key(log_id).to_vec(),
            0u64.to_be_bytes().to_vec(),
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

    #[allow(clippy::type_complexity)]
    fn build_and_write(
        &mut self,
        group: &[Submission],
        touched: &[LogKey],
    ) -> Result<Committed, LedgerError> {
        let mut batch =
            WriteBatch::with_capacity(group.iter().map(|s| s.events.len() * 2).sum::<usize>() + 8);
        let mut created = Vec::new();
        let mut index_jobs: HashMap<LogId, IndexJob> = HashMap::new();
        let mut field_keys: Vec<[u8; layout::FIELD_KEY_LEN]> = Vec::new();

        // Dedup against the store, for logs that existed before this group.
        let mut lookups: Vec<(LogId, [u8; 20])> = Vec::new();
        for event in group.iter().flat_map(|s| &s.events) {
            if let Some(log) = self.logs.get(&event.log) {
                lookups.push((
                    log.info.log_id,
                    layout::event_id_key(log.info.log_id, &event.event_id.0),
                ));
            }
        }
        let mut stored: HashMap<(LogId, [u8; 16]), u64> = HashMap::new();
        if !lookups.is_empty() {
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

        let mut in_group: HashMap<(LogId, [u8; 16]), (u64, Hash, usize, usize)> = HashMap::new();
        let mut outcomes: Vec<Vec<Outcome>> = Vec::with_capacity(group.len());
        let mut completed = Vec::new();
        for (s_index, submission) in group.iter().enumerate() {
            let mut these = Vec::with_capacity(submission.events.len());
            for (e_index, event) in submission.events.iter().enumerate() {
                self.ensure_log(&event.log, &mut batch, &mut created);
                let log = self.logs.get_mut(&event.log).expect("ensured above");
                let log_id = log.info.log_id;
                let dedup_key = (log_id, event.event_id.0);
                if let Some(&(leaf_index, leaf_hash, s0, e0)) = in_group.get(&dedup_key) {
                    let first = &group[s0].events[e0];
                    these.push(Outcome::Duplicate {
                        leaf_index,
                        leaf_hash,
                        content_differs: Some(first.event_bytes != event.event_bytes),
                    });
                    continue;
                }
                if let Some(&leaf_index) = stored.get(&dedup_key) {
                    let (leaf_hash, content_differs) =
                        self.describe_stored(&event.log, leaf_index, &event.event_bytes)?;
                    these.push(Outcome::Duplicate {
                        leaf_index,
                        leaf_hash,
                        content_differs,
                    });
                    continue;
                }
                let leaf_index = log.state.tree_size;
                let logged_at = self.shared.clock.now_nanos().max(log.state.last_logged_at);
                let leaf =
                    crate::event::encode_leaf(&event.event_bytes, logged_at, &submission.principal);
                let hash = leaf_hash(&leaf);
                batch.put(
                    Space::Leaves,
                    layout::leaf_key(log_id, leaf_index).to_vec(),
                    leaf,
                );
                batch.put(
                    Space::EventIds,
                    layout::event_id_key(log_id, &event.event_id.0).to_vec(),
                    leaf_index.to_be_bytes().to_vec(),
                );
                for (tag, value_hash) in &event.fields {
                    field_keys.push(layout::field_index_key(
                        log_id, *tag, value_hash, leaf_index,
                    ));
                }
                index_jobs
                    .entry(log_id)
                    .or_insert_with(|| IndexJob {
                        info: log.info.clone(),
                        first: leaf_index,
                        hashes: Vec::new(),
                    })
                    .hashes
                    .push(hash);
                log.edge.append(hash, &mut completed);
                for (tile, value) in completed.drain(..) {
                    batch.put(Space::Tiles, layout::tile_key(log_id, tile).to_vec(), value);
                }
                log.state.tree_size += 1;
                log.state.last_logged_at = logged_at;
                in_group.insert(dedup_key, (leaf_index, hash, s_index, e_index));
                these.push(Outcome::New {
                    leaf_index,
                    leaf_hash: hash,
                });
            }
            outcomes.push(these);
        }

        // Sorted, for the same reason as the leaf-hash indexer's batches: the memtable insert of
        // each key then starts next to the previous one.
        field_keys.sort_unstable();
        for key in field_keys {
            batch.put(Space::Fields, key.to_vec(), Vec::new());
        }

        for key in touched {
            let log = &self.logs[key];
            batch.put(
                Space::Meta,
                layout::meta_state_key(log.info.log_id).to_vec(),
                log.state.encode().to_vec(),
            );
        }

        let started = std::time::Instant::now();
        let bytes = batch.bytes();
        self.shared.store.write(batch, true)?;
        self.shared.metrics.record_write(bytes, started.elapsed());
        Ok(Committed {
            outcomes,
            created,
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
        let log = &self.logs[key];
        let log_id = log.info.log_id;
        let reader = LogHashReader::new(
            self.shared.store.as_ref(),
            log_id,
            Arc::new(log.edge.snapshot()),
        );
        let hash = reader.read_hashes(&[NodeId::new(0, leaf_index)])?[0];
        let leaf = self
            .shared
            .store
            .get(Space::Leaves, &layout::leaf_key(log_id, leaf_index))?;
        // A leaf starts with the event as field 1, exactly what encode_leaf writes for an
        // empty logged_at and principal.
        let prefix = crate::event::encode_leaf(event_bytes, 0, "");
        let differs = leaf.map(|leaf| !leaf.starts_with(&prefix));
        Ok((hash, differs))
    }
}

/// The distinct logs a group appends to, sorted: computed once per commit and used to snapshot,
/// write, publish and (after a failure) restore exactly those logs.
fn touched_logs(group: &[Submission]) -> Vec<LogKey> {
    let mut touched: Vec<&LogKey> = group
        .iter()
        .flat_map(|s| s.events.iter().map(|e| &e.log))
        .collect();
    touched.sort_unstable();
    touched.dedup();
    touched.into_iter().cloned().collect()
}
