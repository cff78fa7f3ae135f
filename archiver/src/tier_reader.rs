//! Reads of leaf contents wherever they live: the hot store, or the warm or cold segment object
//! named by the segment record, or nowhere (content expired).
//!
//! Trust: an archived leaf is checked against the leaf hash in the tree (the tiles stay hot
//! forever), and an opened segment's recorded root against the segment record, so a damaged
//! or swapped object cannot serve wrong content — without reading the whole object on a
//! point read. Opened segments (their footers) are kept in a small LRU cache.

use std::sync::{Arc, Mutex};

use auditledger_ledger::Log;
use auditledger_ledger::merkle::Hash;
use auditledger_ledger::query::{EventFilter, Order};
use auditledger_ledger::segments::{SegmentRecord, Tier};
use object_store::path::Path;

use crate::engine::TierStores;
use crate::error::ArchiveError;
use crate::search::{self, SearchStats};
use crate::segment::{SegmentError, SegmentId, SegmentReader, hash_hex};
use crate::store::SegmentStore;

/// Default number of open segments kept.
pub const DEFAULT_CACHE_SEGMENTS: usize = 64;

/// A leaf's contents, or the fact that they expired.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LeafContent {
    /// The verbatim leaf bytes, and the tier they were read from.
    Present { bytes: Vec<u8>, tier: Tier },
    /// Retention expiry dropped the content; the leaf hash (and so every proof) remains.
    Expired { tier: Tier },
}

impl LeafContent {
    pub fn tier(&self) -> Tier {
        match self {
            LeafContent::Present { tier, .. } | LeafContent::Expired { tier } => *tier,
        }
    }

    /// The bytes, if present.
    pub fn bytes(&self) -> Option<&[u8]> {
        match self {
            LeafContent::Present { bytes, .. } => Some(bytes),
            LeafContent::Expired { .. } => None,
        }
    }
}

/// Which object version an open reader belongs to.
#[derive(Clone, Debug, PartialEq, Eq)]
struct CacheKey {
    origin: String,
    start: u64,
    tier: Tier,
    object: String,
    object_blake3: [u8; 32],
}

/// Reads leaves across tiers, caching open segment readers (bounded LRU).
pub struct TierReader {
    stores: TierStores,
    capacity: usize,
    /// Most recently used last.
    cache: Mutex<Vec<(CacheKey, Arc<SegmentReader>)>>,
}

impl std::fmt::Debug for TierReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TierReader")
            .field("warm", &self.stores.warm.url())
            .field("cold", &self.stores.cold.url())
            .field("capacity", &self.capacity)
            .finish()
    }
}

impl TierReader {
    /// A reader over these stores keeping up to `capacity` segments open (at least 1).
    pub fn new(stores: TierStores, capacity: usize) -> Self {
        TierReader {
            stores,
            capacity: capacity.max(1),
            cache: Mutex::new(Vec::new()),
        }
    }

    /// Number of segments currently open.
    pub fn cached_segments(&self) -> usize {
        self.lock().len()
    }

    /// Drops every open segment (tests measure cold-cache reads with this).
    pub fn clear_cache(&self) {
        self.lock().clear();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(CacheKey, Arc<SegmentReader>)>> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn store(&self, tier: Tier) -> Option<&SegmentStore> {
        match tier {
            Tier::Hot => None,
            Tier::Warm => Some(&self.stores.warm),
            Tier::Cold => Some(&self.stores.cold),
        }
    }

    /// Leaf contents wherever they live: hot (ledger), warm or cold (Parquet via the segment
    /// record), or expired.
    pub async fn leaf(&self, log: &Log, leaf_index: u64) -> Result<LeafContent, ArchiveError> {
        let tree_size = log.tree_size();
        if leaf_index >= tree_size {
            return Err(ArchiveError::LeafOutOfRange {
                origin: log.origin().to_owned(),
                leaf_index,
                tree_size,
            });
        }
        let segment = || format!("{} leaf {leaf_index}", log.origin());
        let ledger = |step, source| ArchiveError::Ledger {
            segment: segment(),
            step,
            source,
        };
        // Leaf first, record second: releasing deletes the leaves atomically with marking the
        // record released, so a leaf missing here has a released record below.
        if let Some(bytes) = log
            .leaf(leaf_index)
            .map_err(|e| ledger("reading the hot leaf", e))?
        {
            return Ok(LeafContent::Present {
                bytes,
                tier: Tier::Hot,
            });
        }
        let expected_hash = log
            .leaf_hash(leaf_index)
            .map_err(|e| ledger("reading the leaf hash from the tree", e))?;
        // A warm → cold move may delete the warm object between reading the record and the
        // object: read the record again and retry once.
        let mut retried = false;
        loop {
            let record = log
                .segment_of(leaf_index)
                .map_err(|e| ledger("reading the segment record", e))?
                .filter(|r| r.hot_released)
                .ok_or_else(|| ArchiveError::HotLeaves {
                    segment: segment(),
                    reason: "not in the hot store and its segment is not archived".into(),
                })?;
            let row = match self.read_archived(log, &record, leaf_index).await {
                Ok(row) => row,
                Err(e) => {
                    self.evict(log.origin(), record.start);
                    if retried {
                        return Err(e);
                    }
                    retried = true;
                    continue;
                }
            };
            let tier = record.tier;
            if row.leaf_hash != expected_hash {
                return Err(ArchiveError::LeafHashMismatch {
                    origin: log.origin().to_owned(),
                    leaf_index,
                    tier: tier.as_str(),
                    found: hash_hex(&row.leaf_hash),
                    expected: hash_hex(&expected_hash),
                });
            }
            return Ok(match row.leaf {
                Some(bytes) => LeafContent::Present { bytes, tier },
                None => LeafContent::Expired { tier },
            });
        }
    }

    /// The contents of leaves `[from, to)` of one released segment, in order, each checked
    /// against the tree's leaf hash: one pass over the segment's rows instead of a page read
    /// per leaf (for `GetEntries` and exports). `to` is clipped to the segment's end; returns
    /// `(leaf index, leaf hash, contents)` of the leaves read (`to − from` after clipping).
    pub async fn archived_range(
        &self,
        log: &Log,
        from: u64,
        to: u64,
    ) -> Result<Vec<(u64, auditledger_ledger::merkle::Hash, LeafContent)>, ArchiveError> {
        use futures_util::TryStreamExt as _;
        let segment = || format!("{} leaf {from}", log.origin());
        let ledger = |step, source| ArchiveError::Ledger {
            segment: segment(),
            step,
            source,
        };
        let record = log
            .segment_of(from)
            .map_err(|e| ledger("reading the segment record", e))?
            .filter(|r| r.hot_released)
            .ok_or_else(|| ArchiveError::HotLeaves {
                segment: segment(),
                reason: "its segment is not archived".into(),
            })?;
        let to = to.min(record.end());
        if from >= to {
            return Ok(Vec::new());
        }
        let nodes: Vec<auditledger_ledger::merkle::NodeId> = (from..to)
            .map(|i| auditledger_ledger::merkle::NodeId::new(0, i))
            .collect();
        let expected =
            auditledger_ledger::merkle::HashReader::read_hashes(&log.hash_reader(), &nodes)
                .map_err(|e| ledger("reading leaf hashes from the tree", e.into()))?;
        let reader = self.open(log, &record).await?;
        let segment_error = |source| ArchiveError::Segment {
            step: "reading archived rows",
            source,
        };
        let mut rows = std::pin::pin!(reader.rows().map_err(segment_error)?);
        let mut out = Vec::with_capacity((to - from) as usize);
        while let Some(row) = rows.try_next().await.map_err(segment_error)? {
            if row.leaf_index < from {
                continue;
            }
            if row.leaf_index >= to {
                break;
            }
            let want = from + out.len() as u64;
            let expected_hash = expected[(want - from) as usize];
            if row.leaf_index != want || row.leaf_hash != expected_hash {
                self.evict(log.origin(), record.start);
                return Err(ArchiveError::LeafHashMismatch {
                    origin: log.origin().to_owned(),
                    leaf_index: want,
                    tier: record.tier.as_str(),
                    found: format!(
                        "leaf {} with hash {}",
                        row.leaf_index,
                        hash_hex(&row.leaf_hash)
                    ),
                    expected: hash_hex(&expected_hash),
                });
            }
            out.push((
                row.leaf_index,
                expected_hash,
                match row.leaf {
                    Some(bytes) => LeafContent::Present {
                        bytes,
                        tier: record.tier,
                    },
                    None => LeafContent::Expired { tier: record.tier },
                },
            ));
        }
        if out.len() as u64 != to - from {
            self.evict(log.origin(), record.start);
            return Err(ArchiveError::HotLeaves {
                segment: segment(),
                reason: format!(
                    "the {} tier's segment object ends after {} of the {} leaves asked for",
                    record.tier,
                    out.len(),
                    to - from
                ),
            });
        }
        Ok(out)
    }

    /// Event search over one archived (hot-released) segment (`Investigate.FindEvents`, DESIGN
    /// §5): in `order`, at most `limit` of its leaves strictly after `resume_after` in that
    /// order that match `filter` exactly as [`EventFilter::matches`] judges the decoded leaf (a
    /// content-expired leaf as `LeafRecord { event: None, logged_at }`: it matches pure time
    /// windows only). Returns `(leaf index, leaf hash, contents)`, every hash checked against
    /// the tree. Prunes by the record's time range, row-group statistics and bloom filters,
    /// and fetches `leaf` only for candidate rows (`crate::search`).
    pub async fn find_in_segment(
        &self,
        log: &Log,
        record: &SegmentRecord,
        filter: &EventFilter,
        order: Order,
        resume_after: Option<u64>,
        limit: usize,
    ) -> Result<Vec<(u64, Hash, LeafContent)>, ArchiveError> {
        self.find_in_segment_with_stats(log, record, filter, order, resume_after, limit)
            .await
            .map(|(rows, _)| rows)
    }

    /// [`TierReader::find_in_segment`], and what the search read and pruned.
    pub async fn find_in_segment_with_stats(
        &self,
        log: &Log,
        record: &SegmentRecord,
        filter: &EventFilter,
        order: Order,
        resume_after: Option<u64>,
        limit: usize,
    ) -> Result<(Vec<(u64, Hash, LeafContent)>, SearchStats), ArchiveError> {
        let mut stats = SearchStats::default();
        let segment = || format!("{} [{}, {})", log.origin(), record.start, record.end());
        if !record.hot_released {
            return Err(ArchiveError::HotLeaves {
                segment: segment(),
                reason:
                    "searched as archived but its segment is not released (search the hot tier)"
                        .into(),
            });
        }
        let before_resume = match (order, resume_after) {
            (_, None) => false,
            (Order::OldestFirst, Some(r)) => r >= record.end().saturating_sub(1),
            (Order::NewestFirst, Some(r)) => r <= record.start,
        };
        if limit == 0 || before_resume || !search::segment_may_match(record, filter) {
            stats.segment_skipped = true;
            return Ok((Vec::new(), stats));
        }
        // A warm → cold move may delete the object between the caller reading the record and
        // this read: if the record changed since, search the object it names now, once.
        let mut record = record.clone();
        let mut retried = false;
        let rows = loop {
            let attempt = async {
                let reader = self.open(log, &record).await?;
                stats = SearchStats::default();
                search::search(&reader, filter, order, resume_after, limit, &mut stats).await
            };
            match attempt.await {
                Ok(rows) => break rows,
                Err(e) => {
                    self.evict(log.origin(), record.start);
                    if retried {
                        return Err(e);
                    }
                    let now = log
                        .segment_of(record.start)
                        .map_err(|source| ArchiveError::Ledger {
                            segment: segment(),
                            step: "searching: re-reading the segment record",
                            source,
                        })?
                        .filter(|r| r.hot_released && r.start == record.start);
                    match now {
                        Some(now)
                            if (now.tier, &now.object, now.object_blake3)
                                != (record.tier, &record.object, record.object_blake3) =>
                        {
                            record = now;
                            retried = true;
                        }
                        _ => return Err(e),
                    }
                }
            }
        };
        // The tree is the authority: every returned row's hash must be its leaf hash there.
        let nodes: Vec<auditledger_ledger::merkle::NodeId> = rows
            .iter()
            .map(|row| auditledger_ledger::merkle::NodeId::new(0, row.leaf_index))
            .collect();
        let expected =
            auditledger_ledger::merkle::HashReader::read_hashes(&log.hash_reader(), &nodes)
                .map_err(|e| ArchiveError::Ledger {
                    segment: segment(),
                    step: "searching: reading leaf hashes from the tree",
                    source: e.into(),
                })?;
        let mut out = Vec::with_capacity(rows.len());
        for (row, expected_hash) in rows.into_iter().zip(expected) {
            if row.leaf_hash != expected_hash {
                self.evict(log.origin(), record.start);
                return Err(ArchiveError::LeafHashMismatch {
                    origin: log.origin().to_owned(),
                    leaf_index: row.leaf_index,
                    tier: record.tier.as_str(),
                    found: hash_hex(&row.leaf_hash),
                    expected: hash_hex(&expected_hash),
                });
            }
            let content = match row.leaf {
                Some(bytes) => LeafContent::Present {
                    bytes,
                    tier: record.tier,
                },
                None => LeafContent::Expired { tier: record.tier },
            };
            out.push((row.leaf_index, expected_hash, content));
        }
        Ok((out, stats))
    }

    async fn read_archived(
        &self,
        log: &Log,
        record: &SegmentRecord,
        leaf_index: u64,
    ) -> Result<crate::segment::SegmentRow, ArchiveError> {
        let reader = self.open(log, record).await?;
        reader
            .leaf(leaf_index)
            .await
            .map_err(|source| ArchiveError::Segment {
                step: "reading an archived leaf",
                source,
            })
    }

    /// The open reader of a record's object, from the cache or opened now.
    async fn open(
        &self,
        log: &Log,
        record: &SegmentRecord,
    ) -> Result<Arc<SegmentReader>, ArchiveError> {
        let key = CacheKey {
            origin: log.origin().to_owned(),
            start: record.start,
            tier: record.tier,
            object: record.object.clone(),
            object_blake3: record.object_blake3,
        };
        {
            let mut cache = self.lock();
            if let Some(position) = cache.iter().position(|(k, _)| *k == key) {
                let entry = cache.remove(position);
                let reader = entry.1.clone();
                cache.push(entry);
                return Ok(reader);
            }
        }
        let segment_name = format!("{} [{}, {})", log.origin(), record.start, record.end());
        let id = SegmentId::new(log.origin(), record.start, record.bits).map_err(|source| {
            ArchiveError::Segment {
                step: "naming the archived segment",
                source,
            }
        })?;
        let store = self
            .store(record.tier)
            .ok_or_else(|| ArchiveError::ObjectMismatch {
                segment: segment_name.clone(),
                tier: record.tier.as_str(),
                path: record.object.clone(),
                reason: "a released segment's record names the hot tier".into(),
            })?;
        let path = Path::parse(&record.object).map_err(|e| ArchiveError::ObjectMismatch {
            segment: segment_name.clone(),
            tier: record.tier.as_str(),
            path: record.object.clone(),
            reason: format!("not a valid object path: {e}"),
        })?;
        let reader =
            store
                .open_segment(&path, &id)
                .await
                .map_err(|source| ArchiveError::Segment {
                    step: "opening the archived segment",
                    source,
                })?;
        let info = reader.info();
        if info.root != record.root || info.file_size != record.object_bytes {
            return Err(ArchiveError::Segment {
                step: "opening the archived segment",
                source: SegmentError::Metadata {
                    segment: id.to_string(),
                    key: crate::segment::metadata_key::SEGMENT_ROOT,
                    reason: format!(
                        "object has root {} and {} bytes, the segment record says {} and {} bytes",
                        hash_hex(&info.root),
                        info.file_size,
                        hash_hex(&record.root),
                        record.object_bytes
                    ),
                },
            });
        }
        let reader = Arc::new(reader);
        let mut cache = self.lock();
        cache.retain(|(k, _)| *k != key);
        if cache.len() >= self.capacity {
            cache.remove(0);
        }
        cache.push((key, reader.clone()));
        Ok(reader)
    }

    fn evict(&self, origin: &str, start: u64) {
        self.lock()
            .retain(|(k, _)| !(k.origin == origin && k.start == start));
    }
}
