//! The archiver engine: moves full segments hot → warm → cold by age and expires their content
//! by retention, honouring legal holds (DESIGN §6, §10).
//!
//! # Protocols
//!
//! The segment record in the hot store is the single source of truth; object stores only
//! hold copies. Every step is idempotent and every object is verified before the record that
//! makes it authoritative is written, so killing the process after any step and running the
//! archiver again finishes (or redoes) the move with nothing lost and nothing duplicated.
//!
//! Hot → warm (`warm.*` steps):
//! 1. `write_object`: encode the segment's hot leaves to Parquet, put it in the warm store
//!    (if an object is already there from an interrupted run, it is verified and reused);
//! 2. `verify_object`: read it back, recompute the segment root from its rows and compare it
//!    with the tree's node ([`Log::segment_root`]);
//! 3. `write_anchor`: put the segment's anchor ([`crate::anchor`]) beside it — the latest
//!    signed checkpoint (one is signed now if none covers the segment), the subtree
//!    inclusion proof of the segment root into it, and the consistency proof from the
//!    previous segment's anchor. Written before the manifest so that a segment with a
//!    manifest normally has its anchor too;
//! 4. `write_manifest`: sign the segment manifest and put it beside the object;
//! 5. `record`: [`Log::record_segment`] (tier warm, leaves not yet released);
//! 6. `release`: [`Log::release_hot_leaves`] deletes the hot leaf bytes atomically with
//!    marking the record released. A record that is not released is finished on the next
//!    run: its object is checked against the recorded BLAKE3 (and rewritten from the still-hot
//!    leaves if it does not match), then released.
//!
//! Warm → cold (`cold.*` steps): `copy_object`, `copy_manifest`, `copy_anchor` (to the same
//! names in the cold store), `verify` (read all back: BLAKE3 and size of the object, its rows
//! against the segment root, the manifest's signature and fields, the anchor's checkpoint
//! signature and inclusion proof), `record` (tier cold), then `delete_warm_object`,
//! `delete_warm_manifest` and `delete_warm_anchor` — the warm copy is deleted only after the
//! cold one was verified and recorded. A cold record whose warm copy survived a crash is
//! tidied on the next run.
//!
//! Anchors: every recorded segment must have an anchor in its tier that chains to the anchor
//! of the segment before it (its `previous_size` is that anchor's tree size). Each pass walks
//! a log's segments in order and writes an anchor that is missing (segments archived by an
//! older version: the tree hashes stay in RocksDB, so the proofs can still be made), does
//! not parse, or does not chain (rewritten, with the latest checkpoint, which then makes the
//! next segment's anchor rewritten too). So a crash anywhere, a lost anchor object or a
//! segment archived out of order is repaired by the next pass. Expiry rewrites leave the
//! anchor alone: it is named by the segment, not the object version, and the root does not
//! change. Anchors already checked are remembered per process (no read per pass).
//!
//! Retention expiry (`expire.*` steps): segments whose newest leaf is older than the retention
//! are rewritten without the leaf bytes ([`rewrite_expired`]) except the rows an active legal
//! hold covers (a hold without user/session/correlation filter overlapping the segment keeps
//! the whole segment, without reading it). The [`DeletionHook`] is called first and can veto.
//! Then `write_object` (a new object name per version, see
//! [`crate::store::expired_segment_object_path`]; read back and checked), `write_manifest`,
//! `record` (content expired, new BLAKE3 and size: the root is unchanged), `delete_old`.
//!
//! # Crash test hook
//!
//! When the environment variable [`CRASH_ENV`] names a step (e.g. `warm.record`), the
//! process aborts right after that step. Only the crash tests set it; it is read once, in
//! [`Archiver::new`].

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use auditledger_ledger::holds::{self, HeldFields, LegalHold};
use auditledger_ledger::merkle::Hash;
use auditledger_ledger::segments::{SegmentRecord, Tier};
use auditledger_ledger::{Ledger, LedgerError, Log};
use bytes::Bytes;
use futures_util::StreamExt;
use object_store::path::Path;

use crate::anchor::SegmentAnchor;
use crate::error::ArchiveError;
use crate::manifest::{self, SegmentManifest};
use crate::metrics::ArchiverMetrics;
use crate::segment::{
    SegmentId, SegmentReader, SegmentSummary, SegmentWriter, WriteOptions, hash_hex,
    rewrite_expired,
};
use crate::store::{
    SegmentStore, StoreError, anchor_object_path, expired_segment_object_path,
    expired_versions_folder, manifest_object_path, manifest_path_for, segment_object_path,
};
use crate::tier_reader::{DEFAULT_CACHE_SEGMENTS, TierReader};

/// Environment variable naming the step after which the archiver aborts (crash tests only).
pub const CRASH_ENV: &str = "AUDITLEDGER_ARCHIVER_CRASH_AFTER";

/// Steps of a hot → warm move, in order.
pub const HOT_TO_WARM_STEPS: &[&str] = &[
    "warm.write_object",
    "warm.verify_object",
    "warm.write_anchor",
    "warm.write_manifest",
    "warm.record",
    "warm.release",
];

/// Steps of a warm → cold move, in order.
pub const WARM_TO_COLD_STEPS: &[&str] = &[
    "cold.copy_object",
    "cold.copy_manifest",
    "cold.copy_anchor",
    "cold.verify",
    "cold.record",
    "cold.delete_warm_object",
    "cold.delete_warm_manifest",
    "cold.delete_warm_anchor",
];

/// Steps of a retention expiry, in order.
pub const EXPIRY_STEPS: &[&str] = &[
    "expire.write_object",
    "expire.write_manifest",
    "expire.record",
    "expire.delete_old",
];

const DAY: Duration = Duration::from_secs(24 * 3600);

/// The object stores of the warm and cold tiers.
#[derive(Clone, Debug)]
pub struct TierStores {
    pub warm: SegmentStore,
    pub cold: SegmentStore,
}

impl TierStores {
    fn get(&self, tier: Tier) -> Option<&SegmentStore> {
        match tier {
            Tier::Hot => None,
            Tier::Warm => Some(&self.warm),
            Tier::Cold => Some(&self.cold),
        }
    }
}

/// Ages are measured from a segment's newest leaf (`logged_at` of its last leaf).
#[derive(Clone, Debug, PartialEq)]
pub struct ArchiverConfig {
    /// A full segment leaves the hot tier once its newest leaf is older than this.
    pub hot_window: Duration,
    /// A warm segment moves to the cold tier once its newest leaf is older than this.
    pub warm_window: Duration,
    /// Content of a segment whose newest leaf is older than this expires (legal holds permitting).
    pub retention: Duration,
    /// Retention by `data_classification` (e.g. `restricted` → 10 years), overriding
    /// `retention` for events of that class: each leaf's content expires once its own
    /// `logged_at` is older than its class's retention.
    pub retention_by_class: BTreeMap<String, Duration>,
    /// Parquet settings of written segments.
    pub write: WriteOptions,
    /// Segments kept open by the [`TierReader`].
    pub cache_segments: usize,
}

impl Default for ArchiverConfig {
    /// DESIGN §6 defaults: hot 90 days, warm until 1 year, cold until 7 years.
    fn default() -> Self {
        ArchiverConfig {
            hot_window: 90 * DAY,
            warm_window: 365 * DAY,
            retention: 7 * 365 * DAY,
            retention_by_class: BTreeMap::new(),
            write: WriteOptions::default(),
            cache_segments: DEFAULT_CACHE_SEGMENTS,
        }
    }
}

/// Evidence about to be deleted: the content of `leaves_expired` leaves of a segment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Deletion {
    pub origin: String,
    pub tenant_id: String,
    pub environment: String,
    /// The segment `[start, end)`.
    pub start: u64,
    pub end: u64,
    /// The tier holding the segment.
    pub tier: Tier,
    /// Leaves whose content this deletion drops (already expired ones not counted).
    pub leaves_expired: u64,
    /// Leaves past retention kept because a legal hold covers them.
    pub leaves_held: u64,
    /// Ids of the holds that kept leaves.
    pub holds: Vec<String>,
}

/// Called before any deletion of evidence; an `Err` skips the deletion (reported as a
/// failure and retried on the next pass). The service records each deletion in the system
/// log here. A crash after the hook and before the deletion completes calls it again on the
/// next run (at least once).
pub type DeletionHook =
    Arc<dyn Fn(Deletion) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send>> + Send + Sync>;

/// Called before a move between tiers commits (before the ledger's segment record changes);
/// an `Err` skips the move (reported as a failure and retried on the next pass). The service
/// records each move in the system log here, durably, so that no move escapes the log even if
/// the process dies right after it. A crash after the hook and before the commit calls it
/// again on the next run (at least once).
pub type MoveHook = Arc<
    dyn Fn(SegmentMove) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send>> + Send + Sync,
>;

/// A hook that allows every deletion and records nothing (tests, tools).
pub fn allow_deletions() -> DeletionHook {
    Arc::new(|_| Box::pin(async { Ok(()) }))
}

/// One segment moved between tiers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SegmentMove {
    pub origin: String,
    pub start: u64,
    pub end: u64,
    pub from: Tier,
    pub to: Tier,
    /// Size of the segment object.
    pub bytes: u64,
}

/// What one pass did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PassReport {
    pub moved: Vec<SegmentMove>,
    /// Content deletions done (each was allowed by the [`DeletionHook`]).
    pub expired: Vec<Deletion>,
    /// Segments past retention left (wholly or partly) untouched by legal holds and with
    /// nothing else to delete; `leaves_expired` is 0.
    pub held: Vec<Deletion>,
    /// One line per failed step, naming the segment; retried on the next pass.
    pub failures: Vec<String>,
}

/// Cut-offs (unix nanos): a segment whose newest leaf is older (`<`) is due.
#[derive(Clone, Copy, Debug, Default)]
struct Due {
    to_warm: Option<u64>,
    to_cold: Option<u64>,
    expire: Option<u64>,
}

fn nanos(duration: Duration) -> u64 {
    duration.as_nanos().min(u64::MAX as u128) as u64
}

/// The archiver of one ledger. Passes are serialised; reads through [`Archiver::reader`] run
/// concurrently with them.
pub struct Archiver {
    ledger: Arc<Ledger>,
    stores: TierStores,
    config: ArchiverConfig,
    on_delete: DeletionHook,
    on_move: Option<MoveHook>,
    reader: TierReader,
    metrics: ArchiverMetrics,
    crash_after: Option<String>,
    running: tokio::sync::Mutex<()>,
    /// Segment versions whose leftover copies this process already cleaned up.
    tidied: Mutex<HashSet<TidyKey>>,
    /// Expiry evaluations that found nothing to drop: (object BLAKE3, ids of the overlapping
    /// holds). Redone only when either changes.
    expiry_noop: Mutex<HashMap<(String, u64), NoopExpiry>>,
    /// Segment versions (origin, start, object BLAKE3) without any leaf content left.
    all_expired: Mutex<HashSet<(String, u64, Hash)>>,
    /// Anchors known to be in place, by (origin, segment start): (tree size, previous size).
    anchors: Mutex<HashMap<(String, u64), (u64, u64)>>,
}

/// The object BLAKE3 and sorted ids of the overlapping holds of an expiry that found nothing.
type NoopExpiry = (Hash, Vec<String>, Vec<u64>);

/// Expiry cut-offs (unix nanos): a leaf logged before its class's cut-off expires.
#[derive(Clone, Debug)]
struct Cutoffs {
    default: u64,
    by_class: BTreeMap<String, u64>,
}

impl Cutoffs {
    fn of(&self, class: &str) -> u64 {
        self.by_class.get(class).copied().unwrap_or(self.default)
    }

    /// Every cut-off clamped to a segment's `logged_at` span: constant once each is past the
    /// segment (fully due) or before it (not due), so a no-op expiry is remembered only then.
    fn clamped(&self, oldest: u64, newest: u64) -> Vec<u64> {
        std::iter::once(self.default)
            .chain(self.by_class.values().copied())
            .map(|c| c.clamp(oldest, newest.saturating_add(1)))
            .collect()
    }
}

/// (origin, segment start, tier, object path) of a recorded segment version.
type TidyKey = (String, u64, Tier, String);

impl std::fmt::Debug for Archiver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Archiver")
            .field("stores", &self.stores)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// One segment of one log being worked on.
struct Seg {
    log: Log,
    id: SegmentId,
}

impl Seg {
    fn name(&self) -> String {
        self.id.to_string()
    }

    fn tenant(&self) -> &str {
        &self.log.key().tenant_id
    }

    fn environment(&self) -> &str {
        &self.log.key().environment
    }

    fn ledger(&self, step: &'static str, source: LedgerError) -> ArchiveError {
        ArchiveError::Ledger {
            segment: self.name(),
            step,
            source,
        }
    }

    fn store(&self, step: &'static str, source: StoreError) -> ArchiveError {
        ArchiveError::Store {
            segment: self.name(),
            step,
            source,
        }
    }

    fn segment(step: &'static str) -> impl FnOnce(crate::segment::SegmentError) -> ArchiveError {
        move |source| ArchiveError::Segment { step, source }
    }

    fn mismatch(&self, tier: Tier, path: &Path, reason: String) -> ArchiveError {
        ArchiveError::ObjectMismatch {
            segment: self.name(),
            tier: tier.as_str(),
            path: path.to_string(),
            reason,
        }
    }

    fn task(&self, step: &'static str, e: tokio::task::JoinError) -> ArchiveError {
        ArchiveError::Task {
            segment: self.name(),
            step,
            reason: e.to_string(),
        }
    }

    fn warm_paths(&self) -> Result<(Path, Path), ArchiveError> {
        let (t, e, s, end) = (
            self.tenant(),
            self.environment(),
            self.id.start(),
            self.id.end(),
        );
        let object = segment_object_path(t, e, s, end).map_err(|e| self.store("naming", e))?;
        let manifest = manifest_object_path(t, e, s, end).map_err(|e| self.store("naming", e))?;
        Ok((object, manifest))
    }

    /// The segment's anchor, in whichever tier holds the segment.
    fn anchor_path(&self) -> Result<Path, ArchiveError> {
        anchor_object_path(
            self.tenant(),
            self.environment(),
            self.id.start(),
            self.id.end(),
        )
        .map_err(|e| self.store("naming", e))
    }

    fn anchor(&self, step: &'static str, reason: impl Into<String>) -> ArchiveError {
        ArchiveError::Anchor {
            segment: self.name(),
            step,
            reason: reason.into(),
        }
    }

    fn record_paths(&self, record: &SegmentRecord) -> Result<(Path, Path), ArchiveError> {
        let object = Path::parse(&record.object).map_err(|e| ArchiveError::ObjectMismatch {
            segment: self.name(),
            tier: record.tier.as_str(),
            path: record.object.clone(),
            reason: format!("the segment record names an invalid object path: {e}"),
        })?;
        let manifest = manifest_path_for(&object).map_err(|e| self.store("naming", e))?;
        Ok((object, manifest))
    }
}

/// Whether `bytes` are exactly the object a record pins; the reason if not.
fn pinned_problem(bytes: &[u8], blake3: &Hash, size: u64) -> Option<String> {
    if bytes.len() as u64 != size {
        return Some(format!("{} bytes, expected {size}", bytes.len()));
    }
    let found = blake3::hash(bytes);
    (found.as_bytes() != blake3)
        .then(|| format!("BLAKE3 {}, expected {}", found.to_hex(), hash_hex(blake3)))
}

fn get_optional(result: Result<Bytes, StoreError>) -> Result<Option<Bytes>, StoreError> {
    match result {
        Ok(bytes) => Ok(Some(bytes)),
        Err(StoreError::NotFound { .. }) => Ok(None),
        Err(e) => Err(e),
    }
}

impl Archiver {
    pub fn new(
        ledger: Arc<Ledger>,
        stores: TierStores,
        config: ArchiverConfig,
        on_delete: DeletionHook,
    ) -> Archiver {
        let reader = TierReader::new(stores.clone(), config.cache_segments);
        Archiver {
            ledger,
            stores,
            config,
            on_delete,
            on_move: None,
            reader,
            metrics: ArchiverMetrics::default(),
            crash_after: std::env::var(CRASH_ENV).ok().filter(|s| !s.is_empty()),
            running: tokio::sync::Mutex::new(()),
            tidied: Mutex::new(HashSet::new()),
            expiry_noop: Mutex::new(HashMap::new()),
            all_expired: Mutex::new(HashSet::new()),
            anchors: Mutex::new(HashMap::new()),
        }
    }

    /// Calls `hook` before every move commits (see [`MoveHook`]).
    pub fn with_move_hook(mut self, hook: MoveHook) -> Archiver {
        self.on_move = Some(hook);
        self
    }

    /// Runs the move hook, if any; a refusal stops the move before it commits.
    async fn before_move(&self, seg: &Seg, planned: SegmentMove) -> Result<(), ArchiveError> {
        match &self.on_move {
            None => Ok(()),
            Some(hook) => hook(planned.clone())
                .await
                .map_err(|reason| ArchiveError::MoveRefused {
                    segment: seg.name(),
                    from: planned.from,
                    to: planned.to,
                    reason,
                }),
        }
    }

    pub fn config(&self) -> &ArchiverConfig {
        &self.config
    }

    pub fn stores(&self) -> &TierStores {
        &self.stores
    }

    /// Reads of leaf contents across tiers (shares nothing with passes but the stores).
    pub fn reader(&self) -> &TierReader {
        &self.reader
    }

    pub fn metrics(&self) -> &ArchiverMetrics {
        &self.metrics
    }

    /// The shortest retention of any class: segments older than it may hold expired content.
    fn shortest_retention(&self) -> Duration {
        self.config
            .retention_by_class
            .values()
            .copied()
            .fold(self.config.retention, Duration::min)
    }

    /// Expiry cut-offs at `now_nanos` (unix nanos): leaves logged before them expire.
    fn cutoffs(&self, now_nanos: u64) -> Cutoffs {
        Cutoffs {
            default: now_nanos.saturating_sub(nanos(self.config.retention)),
            by_class: self
                .config
                .retention_by_class
                .iter()
                .map(|(class, d)| (class.clone(), now_nanos.saturating_sub(nanos(*d))))
                .collect(),
        }
    }

    /// Everything due at `now_nanos` (unix nanos), for every log: hot → warm (newest leaf older
    /// than `hot_window`), warm → cold (older than `warm_window`), expiry (older than
    /// `retention`); and the completion of anything an earlier run left half done.
    pub async fn pass(&self, now_nanos: u64) -> PassReport {
        let due = Due {
            to_warm: Some(now_nanos.saturating_sub(nanos(self.config.hot_window))),
            to_cold: Some(now_nanos.saturating_sub(nanos(self.config.warm_window))),
            expire: Some(now_nanos.saturating_sub(nanos(self.shortest_retention()))),
        };
        self.run(due, now_nanos).await
    }

    /// One tier step (the CLI's `archive --once --tier`): to [`Tier::Warm`] moves hot → warm
    /// every full segment whose newest leaf is older than `older_than`; to [`Tier::Cold`]
    /// moves warm → cold likewise. Nothing expires.
    pub async fn move_down(&self, to: Tier, older_than: Duration, now_nanos: u64) -> PassReport {
        let cutoff = Some(now_nanos.saturating_sub(nanos(older_than)));
        let due = match to {
            Tier::Warm => Due {
                to_warm: cutoff,
                ..Due::default()
            },
            Tier::Cold => Due {
                to_cold: cutoff,
                ..Due::default()
            },
            Tier::Hot => {
                return PassReport {
                    failures: vec![
                        ArchiveError::InvalidRequest(
                            "segments move down to the warm or cold tier, not hot".into(),
                        )
                        .to_string(),
                    ],
                    ..PassReport::default()
                };
            }
        };
        self.run(due, now_nanos).await
    }

    async fn run(&self, due: Due, now_nanos: u64) -> PassReport {
        let _one_pass_at_a_time = self.running.lock().await;
        let started = Instant::now();
        let mut report = PassReport::default();
        let mut state = PassState::default();
        for log in self.ledger.logs() {
            if let Err(e) = self
                .run_log(&log, due, now_nanos, &mut report, &mut state)
                .await
            {
                report.failures.push(e.to_string());
            }
        }
        let m = &self.metrics;
        ArchiverMetrics::add(&m.failures, report.failures.len() as u64);
        ArchiverMetrics::add(&m.passes, 1);
        ArchiverMetrics::set(&m.last_pass_micros, started.elapsed().as_micros() as u64);
        ArchiverMetrics::set(&m.pending_segments, state.pending);
        ArchiverMetrics::set(&m.lag_nanos, state.lag_nanos);
        ArchiverMetrics::set(
            &m.leaves_held,
            report
                .expired
                .iter()
                .chain(&report.held)
                .map(|d| d.leaves_held)
                .sum(),
        );
        report
    }

    async fn run_log(
        &self,
        log: &Log,
        due: Due,
        now_nanos: u64,
        report: &mut PassReport,
        state: &mut PassState,
    ) -> Result<(), ArchiveError> {
        let origin_error = |step, source| ArchiveError::Ledger {
            segment: log.origin().to_owned(),
            step,
            source,
        };
        let bits = log.segment_bits();
        let size = 1u64 << bits;
        let records: BTreeMap<u64, SegmentRecord> = log
            .segments()
            .map_err(|e| origin_error("listing segment records", e))?
            .into_iter()
            .map(|r| (r.start, r))
            .collect();
        let full_end = log.tree_size() / size * size;
        let mut holds: Option<Vec<LegalHold>> = None;
        let mut start = 0;
        while start < full_end {
            let seg = Seg {
                log: log.clone(),
                id: SegmentId::new(log.origin(), start, bits).map_err(Seg::segment("naming"))?,
            };
            start += size;
            let record = records.get(&seg.id.start()).cloned();
            match self
                .run_segment(&seg, record, due, now_nanos, &mut holds, report, state)
                .await
            {
                Ok(()) => {}
                Err(e) => {
                    state.pending += 1;
                    report.failures.push(e.to_string());
                }
            }
            // `logged_at` never decreases along the log: once a hot segment is too young to
            // move, so are all later ones; stop unless later segments were archived (under a
            // shorter hot window) and may be due for cold or expiry.
            if std::mem::take(&mut state.hot_not_due) && records.range(start..).next().is_none() {
                break;
            }
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    async fn run_segment(
        &self,
        seg: &Seg,
        mut record: Option<SegmentRecord>,
        due: Due,
        now_nanos: u64,
        holds: &mut Option<Vec<LegalHold>>,
        report: &mut PassReport,
        state: &mut PassState,
    ) -> Result<(), ArchiveError> {
        // Hot → warm, or finishing one an earlier run left unreleased.
        let hot = record.as_ref().is_none_or(|r| !r.hot_released);
        if hot {
            let Some(cutoff) = due.to_warm else {
                return Ok(());
            };
            let finishing = record.is_some();
            if !finishing {
                let bounds = seg
                    .log
                    .segment_time_bounds(seg.id.start())
                    .map_err(|e| seg.ledger("reading the segment's time bounds", e))?;
                let Some((_, newest)) = bounds else {
                    return Err(ArchiveError::HotLeaves {
                        segment: seg.name(),
                        reason:
                            "first or last leaf missing from the hot store, and no segment record"
                                .into(),
                    });
                };
                if newest >= cutoff {
                    state.hot_not_due = true;
                    return Ok(());
                }
                state.lag_nanos = state.lag_nanos.max(cutoff - newest);
            }
            let (moved, segment_move) = self.hot_to_warm(seg, record.as_ref(), now_nanos).await?;
            report.moved.push(segment_move);
            record = Some(moved);
        }
        let Some(mut record) = record else {
            return Ok(());
        };
        self.tidy(seg, &record).await?;
        self.ensure_anchor(seg, &record).await?;
        if record.tier == Tier::Warm
            && let Some(cutoff) = due.to_cold
            && record.newest < cutoff
        {
            let (moved, segment_move) = self.warm_to_cold(seg, &record, now_nanos).await?;
            report.moved.push(segment_move);
            record = moved;
        }
        if let Some(cutoff) = due.expire
            && record.newest < cutoff
        {
            if holds.is_none() {
                *holds = Some(
                    self.ledger
                        .holds()
                        .active(seg.tenant(), seg.environment())
                        .map_err(|e| seg.ledger("listing legal holds", e))?,
                );
            }
            let active = holds.as_deref().unwrap_or_default();
            self.expire(seg, &record, active, now_nanos, report).await?;
        }
        Ok(())
    }

    fn crash_point(&self, step: &'static str) {
        if self.crash_after.as_deref() == Some(step) {
            eprintln!("{CRASH_ENV}={step}: aborting after this step (crash test)");
            std::process::abort();
        }
    }

    fn signers(
        &self,
        seg: &Seg,
        now_nanos: u64,
    ) -> Result<Vec<auditledger_ledger::note::SignerKey>, ArchiveError> {
        let signers = self
            .ledger
            .keyring()
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .active_signers(now_nanos / 1_000_000_000);
        if signers.is_empty() {
            return Err(ArchiveError::NoSigner {
                segment: seg.name(),
            });
        }
        Ok(signers)
    }

    fn sign(
        &self,
        seg: &Seg,
        manifest: &SegmentManifest,
        now_nanos: u64,
    ) -> Result<Bytes, ArchiveError> {
        let signers = self.signers(seg, now_nanos)?;
        manifest
            .sign(&signers)
            .map(Bytes::from)
            .map_err(|source| ArchiveError::Manifest {
                segment: seg.name(),
                step: "signing the segment manifest",
                source,
            })
    }

    /// Encodes the segment's hot leaves (on a blocking thread).
    async fn encode(&self, seg: &Seg) -> Result<(Vec<u8>, SegmentSummary), ArchiveError> {
        let log = seg.log.clone();
        let id = seg.id.clone();
        let options = self.config.write.clone();
        let name = seg.name();
        tokio::task::spawn_blocking(move || {
            let capacity = usize::try_from(id.count() * 220).unwrap_or(0);
            let mut writer = SegmentWriter::new(Vec::with_capacity(capacity), id.clone(), &options)
                .map_err(Seg::segment("encoding the segment"))?;
            let mut failure = None;
            let mut expected = id.start();
            log.scan_leaves(id.start(), id.end(), &mut |leaf_index, leaf| {
                if leaf_index != expected {
                    failure = Some(ArchiveError::HotLeaves {
                        segment: name.clone(),
                        reason: format!(
                            "leaf {expected} is missing from the hot store (next is {leaf_index})"
                        ),
                    });
                    return false;
                }
                if let Err(e) = writer.push_leaf(leaf) {
                    failure = Some(Seg::segment("encoding the segment")(e));
                    return false;
                }
                expected += 1;
                true
            })
            .map_err(|source| ArchiveError::Ledger {
                segment: name.clone(),
                step: "reading the hot leaves",
                source,
            })?;
            if let Some(failure) = failure {
                return Err(failure);
            }
            writer
                .finish()
                .map_err(Seg::segment("encoding the segment"))
        })
        .await
        .map_err(|e| seg.task("encoding the segment", e))?
    }

    /// Checks an object's rows against `root` (on a blocking thread); returns the number of
    /// rows without content.
    async fn verify_rows(&self, seg: &Seg, bytes: Bytes, root: Hash) -> Result<u64, ArchiveError> {
        let id = seg.id.clone();
        let handle = tokio::runtime::Handle::current();
        tokio::task::spawn_blocking(move || {
            handle.block_on(async {
                let reader = SegmentReader::from_bytes(bytes, &id)
                    .await
                    .map_err(Seg::segment("reading the object back"))?;
                let verified = reader
                    .verify(&root)
                    .await
                    .map_err(Seg::segment("verifying the object read back"))?;
                Ok(verified.expired_leaves)
            })
        })
        .await
        .map_err(|e| seg.task("verifying the object", e))?
    }

    async fn hot_to_warm(
        &self,
        seg: &Seg,
        existing: Option<&SegmentRecord>,
        now_nanos: u64,
    ) -> Result<(SegmentRecord, SegmentMove), ArchiveError> {
        let warm = &self.stores.warm;
        let (object, manifest_path) = seg.warm_paths()?;
        let start = seg.id.start();
        // Recorded but not released: finish if the object is the recorded one.
        if let Some(record) = existing
            && record.tier == Tier::Warm
            && record.object == object.to_string()
        {
            let bytes = get_optional(warm.get(&object).await)
                .map_err(|e| seg.store("reading the recorded warm object", e))?;
            if let Some(bytes) = bytes
                && pinned_problem(&bytes, &record.object_blake3, record.object_bytes).is_none()
            {
                let has_manifest = warm
                    .head(&manifest_path)
                    .await
                    .map_err(|e| seg.store("checking the warm manifest", e))?
                    .is_some();
                if !has_manifest {
                    let manifest = SegmentManifest {
                        origin: seg.id.origin().to_owned(),
                        start,
                        end: seg.id.end(),
                        segment_root: record.root,
                        object_path: record.object.clone(),
                        object_blake3: record.object_blake3,
                        object_size: record.object_bytes,
                        expired_leaves: 0,
                        created_at: now_nanos / 1_000_000_000,
                    };
                    let note = self.sign(seg, &manifest, now_nanos)?;
                    warm.put(&manifest_path, note)
                        .await
                        .map_err(|e| seg.store("writing the warm manifest", e))?;
                }
                let released = self.release(seg).await?;
                return Ok(self.count_warm_move(seg, released));
            }
            // The recorded object is gone or damaged while the leaves are still hot:
            // write it again below and record the new version.
        }
        let root = seg
            .log
            .segment_root(start)
            .map_err(|e| seg.ledger("reading the segment root from the tree", e))?;
        let (oldest, newest) = seg
            .log
            .segment_time_bounds(start)
            .map_err(|e| seg.ledger("reading the segment's time bounds", e))?
            .ok_or_else(|| ArchiveError::HotLeaves {
                segment: seg.name(),
                reason: "first or last leaf missing from the hot store".into(),
            })?;
        // An object left by an interrupted run is reused if it verifies.
        let mut verified = None;
        if let Some(bytes) = get_optional(warm.get(&object).await)
            .map_err(|e| seg.store("reading a warm object left by an earlier run", e))?
            && let Ok(0) = self.verify_rows(seg, bytes.clone(), root).await
        {
            verified = Some(bytes);
        }
        let bytes = match verified {
            Some(bytes) => bytes,
            None => {
                let (encoded, summary) = self.encode(seg).await?;
                if summary.root != root {
                    return Err(ArchiveError::HotLeaves {
                        segment: seg.name(),
                        reason: format!(
                            "the hot leaves give root {}, the tree has {}",
                            hash_hex(&summary.root),
                            hash_hex(&root)
                        ),
                    });
                }
                warm.put(&object, Bytes::from(encoded))
                    .await
                    .map_err(|e| seg.store("writing the warm object", e))?;
                self.crash_point("warm.write_object");
                let back = warm
                    .get(&object)
                    .await
                    .map_err(|e| seg.store("reading the warm object back", e))?;
                let expired = self.verify_rows(seg, back.clone(), root).await?;
                if expired != 0 {
                    return Err(seg.mismatch(
                        Tier::Warm,
                        &object,
                        format!("read back with {expired} rows without content"),
                    ));
                }
                self.crash_point("warm.verify_object");
                back
            }
        };
        // Before the manifest, so a segment with a manifest has its anchor. A crash between
        // the two is redone from the start by the next run; a record without an anchor (a
        // lost object, an older version) is repaired by `ensure_anchor` on every pass.
        self.write_anchor(seg, warm, root).await?;
        self.crash_point("warm.write_anchor");
        let summary = SegmentSummary {
            id: seg.id.clone(),
            root,
            expired_leaves: 0,
            oldest_logged_at: Some(oldest),
            newest_logged_at: Some(newest),
        };
        let manifest = SegmentManifest::for_object(
            &summary,
            object.to_string(),
            &bytes,
            now_nanos / 1_000_000_000,
        );
        let note = self.sign(seg, &manifest, now_nanos)?;
        warm.put(&manifest_path, note)
            .await
            .map_err(|e| seg.store("writing the warm manifest", e))?;
        self.crash_point("warm.write_manifest");
        let record = SegmentRecord {
            start,
            bits: seg.id.bits(),
            tier: Tier::Warm,
            root,
            object: object.to_string(),
            object_blake3: manifest.object_blake3,
            object_bytes: manifest.object_size,
            content_expired: false,
            hot_released: false,
            recorded_at: now_nanos,
            oldest,
            newest,
        };
        self.before_move(
            seg,
            SegmentMove {
                origin: seg.id.origin().to_owned(),
                start,
                end: seg.id.end(),
                from: Tier::Hot,
                to: Tier::Warm,
                bytes: record.object_bytes,
            },
        )
        .await?;
        seg.log
            .record_segment(&record)
            .map_err(|e| seg.ledger("recording the warm segment", e))?;
        self.crash_point("warm.record");
        let released = self.release(seg).await?;
        Ok(self.count_warm_move(seg, released))
    }

    /// Releases the hot leaves of a recorded segment; returns the record as stored after.
    async fn release(&self, seg: &Seg) -> Result<SegmentRecord, ArchiveError> {
        let start = seg.id.start();
        seg.log
            .wait_for_index(seg.id.end())
            .await
            .map_err(|e| seg.ledger("waiting for the leaf-hash index", e))?;
        seg.log
            .release_hot_leaves(start)
            .map_err(|e| seg.ledger("releasing the hot leaves", e))?;
        self.crash_point("warm.release");
        seg.log
            .segment_of(start)
            .map_err(|e| seg.ledger("reading the segment record", e))?
            .filter(|r| r.hot_released)
            .ok_or_else(|| ArchiveError::HotLeaves {
                segment: seg.name(),
                reason: "released, but the record does not say so".into(),
            })
    }

    fn count_warm_move(&self, seg: &Seg, record: SegmentRecord) -> (SegmentRecord, SegmentMove) {
        let m = &self.metrics;
        ArchiverMetrics::add(&m.segments_to_warm, 1);
        ArchiverMetrics::add(&m.bytes_to_warm, record.object_bytes);
        ArchiverMetrics::add(&m.leaves_to_warm, seg.id.count());
        let segment_move = SegmentMove {
            origin: seg.id.origin().to_owned(),
            start: seg.id.start(),
            end: seg.id.end(),
            from: Tier::Hot,
            to: Tier::Warm,
            bytes: record.object_bytes,
        };
        (record, segment_move)
    }

    fn anchor_memo(&self) -> std::sync::MutexGuard<'_, HashMap<(String, u64), (u64, u64)>> {
        self.anchors.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn forget_anchor(&self, seg: &Seg) {
        self.anchor_memo()
            .remove(&(seg.id.origin().to_owned(), seg.id.start()));
    }

    /// Tree size of the previous segment's anchor, which this segment's anchor must chain
    /// to; 0 for the first segment and when the previous segment is not archived (still hot).
    /// Segments are walked in order, so it is normally remembered from this pass.
    async fn previous_anchor(&self, seg: &Seg) -> Result<u64, ArchiveError> {
        let step = "reading the previous segment's anchor";
        let Some(previous_start) = seg.id.start().checked_sub(seg.id.count()) else {
            return Ok(0);
        };
        let key = (seg.id.origin().to_owned(), previous_start);
        if let Some((tree_size, _)) = self.anchor_memo().get(&key) {
            return Ok(*tree_size);
        }
        let Some(record) = seg
            .log
            .segment_of(previous_start)
            .map_err(|e| seg.ledger(step, e))?
        else {
            return Ok(0);
        };
        let previous = Seg {
            log: seg.log.clone(),
            id: SegmentId::new(seg.id.origin(), previous_start, seg.id.bits())
                .map_err(Seg::segment("naming"))?,
        };
        let store = self
            .stores
            .get(record.tier)
            .ok_or_else(|| seg.anchor(step, "the previous segment's record names the hot tier"))?;
        let path = previous.anchor_path()?;
        let bytes = get_optional(store.get(&path).await).map_err(|e| seg.store(step, e))?;
        // Not there yet or unreadable: the previous segment's own pass writes it first; until
        // then this segment cannot be chained, and is retried.
        let bytes = bytes.ok_or_else(|| {
            seg.anchor(
                step,
                format!(
                    "{}: {path} is missing; retried on the next pass",
                    previous.name()
                ),
            )
        })?;
        let anchor = SegmentAnchor::parse(&bytes)
            .map_err(|e| seg.anchor(step, format!("{}: {path}: {e}", previous.name())))?;
        Ok(anchor.tree_size)
    }

    /// Makes sure a recorded segment has an anchor in its tier that chains to the previous
    /// segment's; writes (or rewrites) it if not. See the module docs.
    async fn ensure_anchor(&self, seg: &Seg, record: &SegmentRecord) -> Result<(), ArchiveError> {
        let previous_size = self.previous_anchor(seg).await?;
        let key = (seg.id.origin().to_owned(), seg.id.start());
        if self
            .anchor_memo()
            .get(&key)
            .is_some_and(|(_, p)| *p == previous_size)
        {
            return Ok(());
        }
        let store = self
            .stores
            .get(record.tier)
            .ok_or_else(|| seg.anchor("checking the anchor", "the record names the hot tier"))?;
        let path = seg.anchor_path()?;
        if let Some(bytes) = get_optional(store.get(&path).await)
            .map_err(|e| seg.store("reading the segment's anchor", e))?
            && let Ok(anchor) = SegmentAnchor::parse(&bytes)
            && anchor.origin == seg.id.origin()
            && (anchor.start, anchor.end) == (seg.id.start(), seg.id.end())
            && anchor.segment_root == record.root
            && anchor.previous_size == previous_size
        {
            self.anchor_memo()
                .insert(key, (anchor.tree_size, anchor.previous_size));
            return Ok(());
        }
        self.write_anchor(seg, store, record.root).await
    }

    /// Writes the segment's anchor to `store`: the latest checkpoint (signing one now if
    /// none covers the segment), the segment root's inclusion proof into it, and the
    /// consistency proof from the previous segment's anchor. Checked before it is written.
    async fn write_anchor(
        &self,
        seg: &Seg,
        store: &SegmentStore,
        root: Hash,
    ) -> Result<(), ArchiveError> {
        let step = "making the segment anchor";
        let previous_size = self.previous_anchor(seg).await?;
        let log = &seg.log;
        let needed = seg.id.end().max(previous_size);
        let covering = |c: Option<Arc<auditledger_ledger::SignedCheckpoint>>| {
            c.filter(|c| c.checkpoint.tree_size >= needed)
        };
        let checkpoint = match covering(log.latest_checkpoint()) {
            Some(c) => c,
            None => {
                self.ledger
                    .checkpoint_now()
                    .map_err(|e| seg.ledger("signing a checkpoint for the segment anchor", e))?;
                let latest = log.latest_checkpoint();
                let latest_size = latest
                    .as_ref()
                    .map_or("none".into(), |c| c.checkpoint.tree_size.to_string());
                covering(latest).ok_or_else(|| {
                    seg.anchor(
                        step,
                        format!(
                            "no signed checkpoint of tree size {needed} or more (latest: {latest_size})"
                        ),
                    )
                })?
            }
        };
        let tree_size = checkpoint.checkpoint.tree_size;
        let inclusion = auditledger_ledger::merkle::subtree_inclusion_proof(
            &log.hash_reader(),
            seg.id.node(),
            tree_size,
        )
        .map_err(|e| seg.anchor(step, format!("inclusion proof at {tree_size}: {e}")))?;
        let consistency = if previous_size == 0 || previous_size == tree_size {
            Vec::new()
        } else {
            log.consistency_proof(previous_size, tree_size)
                .map_err(|e| seg.ledger("the anchor's consistency proof", e))?
        };
        let anchor = SegmentAnchor {
            origin: seg.id.origin().to_owned(),
            start: seg.id.start(),
            end: seg.id.end(),
            segment_root: root,
            tree_size,
            previous_size,
            inclusion,
            consistency,
            checkpoint_note: checkpoint.note.clone(),
        };
        let text = anchor.to_text();
        // What a verifier will check of it on its own (the chain needs the previous anchor).
        SegmentAnchor::parse(text.as_bytes())
            .and_then(|a| a.verify(&self.verifiers()))
            .map_err(|e| seg.anchor(step, e.to_string()))?;
        let path = seg.anchor_path()?;
        store
            .put(&path, Bytes::from(text))
            .await
            .map_err(|e| seg.store("writing the segment anchor", e))?;
        self.anchor_memo().insert(
            (seg.id.origin().to_owned(), seg.id.start()),
            (tree_size, previous_size),
        );
        Ok(())
    }

    fn verifiers(&self) -> Vec<auditledger_ledger::note::VerifierKey> {
        self.ledger
            .keyring()
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .all_verifiers()
    }

    /// Checks an anchor read back: it parses, is for this segment and its recorded root, its
    /// checkpoint is signed by a key of the keyring, and its inclusion proof holds.
    fn check_anchor(
        &self,
        seg: &Seg,
        bytes: &[u8],
        record: &SegmentRecord,
    ) -> Result<(), ArchiveError> {
        let step = "checking the anchor read back";
        let anchor = SegmentAnchor::parse(bytes).map_err(|e| seg.anchor(step, e.to_string()))?;
        if anchor.origin != seg.id.origin()
            || (anchor.start, anchor.end) != (seg.id.start(), seg.id.end())
            || anchor.segment_root != record.root
        {
            return Err(seg.anchor(
                step,
                format!(
                    "it is for {} [{}, {}) with root {}, not this segment and its recorded root",
                    anchor.origin,
                    anchor.start,
                    anchor.end,
                    hash_hex(&anchor.segment_root)
                ),
            ));
        }
        anchor
            .verify(&self.verifiers())
            .map_err(|e| seg.anchor(step, e.to_string()))?;
        Ok(())
    }

    /// Reads a manifest note and checks it against the record.
    fn check_manifest(
        &self,
        seg: &Seg,
        note: &[u8],
        record: &SegmentRecord,
    ) -> Result<SegmentManifest, ArchiveError> {
        let keys = self
            .ledger
            .keyring()
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .all_verifiers();
        let verified =
            manifest::open_for(note, &keys, &seg.id).map_err(|source| ArchiveError::Manifest {
                segment: seg.name(),
                step: "checking the manifest read back",
                source,
            })?;
        let m = verified.manifest;
        if m.object_path != record.object
            || m.object_blake3 != record.object_blake3
            || m.object_size != record.object_bytes
            || m.segment_root != record.root
        {
            return Err(ArchiveError::ObjectMismatch {
                segment: seg.name(),
                tier: record.tier.as_str(),
                path: m.object_path.clone(),
                reason: "the manifest pins another object than the segment record".into(),
            });
        }
        Ok(m)
    }

    async fn warm_to_cold(
        &self,
        seg: &Seg,
        record: &SegmentRecord,
        now_nanos: u64,
    ) -> Result<(SegmentRecord, SegmentMove), ArchiveError> {
        let (warm, cold) = (&self.stores.warm, &self.stores.cold);
        let (object, manifest_path) = seg.record_paths(record)?;
        let bytes = warm
            .get(&object)
            .await
            .map_err(|e| seg.store("reading the warm object", e))?;
        if let Some(problem) = pinned_problem(&bytes, &record.object_blake3, record.object_bytes) {
            return Err(seg.mismatch(Tier::Warm, &object, problem));
        }
        cold.put(&object, bytes)
            .await
            .map_err(|e| seg.store("copying the object to the cold tier", e))?;
        self.crash_point("cold.copy_object");
        let note = match get_optional(warm.get(&manifest_path).await)
            .map_err(|e| seg.store("reading the warm manifest", e))?
        {
            Some(note) => note,
            // Lost: sign it again from the record (the rows' expired count is checked below).
            None => {
                let manifest = SegmentManifest {
                    origin: seg.id.origin().to_owned(),
                    start: seg.id.start(),
                    end: seg.id.end(),
                    segment_root: record.root,
                    object_path: record.object.clone(),
                    object_blake3: record.object_blake3,
                    object_size: record.object_bytes,
                    expired_leaves: self
                        .verify_rows(
                            seg,
                            warm.get(&object)
                                .await
                                .map_err(|e| seg.store("reading the warm object", e))?,
                            record.root,
                        )
                        .await?,
                    created_at: now_nanos / 1_000_000_000,
                };
                self.sign(seg, &manifest, now_nanos)?
            }
        };
        cold.put(&manifest_path, note)
            .await
            .map_err(|e| seg.store("copying the manifest to the cold tier", e))?;
        self.crash_point("cold.copy_manifest");
        let anchor_path = seg.anchor_path()?;
        let Some(anchor) = get_optional(warm.get(&anchor_path).await)
            .map_err(|e| seg.store("reading the warm anchor", e))?
        else {
            self.forget_anchor(seg);
            return Err(seg.anchor(
                "copying the anchor to the cold tier",
                format!(
                    "{anchor_path} is missing from the warm tier; the next pass writes it again"
                ),
            ));
        };
        cold.put(&anchor_path, anchor)
            .await
            .map_err(|e| seg.store("copying the anchor to the cold tier", e))?;
        self.crash_point("cold.copy_anchor");
        let back = cold
            .get(&object)
            .await
            .map_err(|e| seg.store("reading the cold object back", e))?;
        if let Some(problem) = pinned_problem(&back, &record.object_blake3, record.object_bytes) {
            return Err(seg.mismatch(Tier::Cold, &object, format!("read back: {problem}")));
        }
        let expired = self.verify_rows(seg, back, record.root).await?;
        let note_back = cold
            .get(&manifest_path)
            .await
            .map_err(|e| seg.store("reading the cold manifest back", e))?;
        let manifest = self.check_manifest(seg, &note_back, record)?;
        let anchor_back = cold
            .get(&anchor_path)
            .await
            .map_err(|e| seg.store("reading the cold anchor back", e))?;
        self.check_anchor(seg, &anchor_back, record)?;
        if manifest.expired_leaves != expired || (expired > 0) != record.content_expired {
            return Err(seg.mismatch(
                Tier::Cold,
                &object,
                format!(
                    "{expired} rows without content; the manifest says {}, the record {}",
                    manifest.expired_leaves,
                    if record.content_expired {
                        "expired"
                    } else {
                        "not expired"
                    }
                ),
            ));
        }
        self.crash_point("cold.verify");
        let cold_record = SegmentRecord {
            tier: Tier::Cold,
            recorded_at: now_nanos,
            ..record.clone()
        };
        self.before_move(
            seg,
            SegmentMove {
                origin: seg.id.origin().to_owned(),
                start: seg.id.start(),
                end: seg.id.end(),
                from: Tier::Warm,
                to: Tier::Cold,
                bytes: cold_record.object_bytes,
            },
        )
        .await?;
        seg.log
            .record_segment(&cold_record)
            .map_err(|e| seg.ledger("recording the cold segment", e))?;
        self.crash_point("cold.record");
        warm.delete(&object)
            .await
            .map_err(|e| seg.store("deleting the warm object", e))?;
        self.crash_point("cold.delete_warm_object");
        warm.delete(&manifest_path)
            .await
            .map_err(|e| seg.store("deleting the warm manifest", e))?;
        self.crash_point("cold.delete_warm_manifest");
        warm.delete(&anchor_path)
            .await
            .map_err(|e| seg.store("deleting the warm anchor", e))?;
        self.crash_point("cold.delete_warm_anchor");
        self.mark_tidied(seg, &cold_record);
        let m = &self.metrics;
        ArchiverMetrics::add(&m.segments_to_cold, 1);
        ArchiverMetrics::add(&m.bytes_to_cold, record.object_bytes);
        ArchiverMetrics::add(&m.leaves_to_cold, seg.id.count());
        let segment_move = SegmentMove {
            origin: seg.id.origin().to_owned(),
            start: seg.id.start(),
            end: seg.id.end(),
            from: Tier::Warm,
            to: Tier::Cold,
            bytes: record.object_bytes,
        };
        Ok((cold_record, segment_move))
    }

    fn tidy_key(seg: &Seg, record: &SegmentRecord) -> TidyKey {
        (
            seg.id.origin().to_owned(),
            seg.id.start(),
            record.tier,
            record.object.clone(),
        )
    }

    fn mark_tidied(&self, seg: &Seg, record: &SegmentRecord) {
        self.tidied
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(Self::tidy_key(seg, record));
    }

    /// Once per process and segment version: deletes copies an interrupted run may have left
    /// — the warm copy of a cold segment, and object versions other than the recorded one
    /// (the original after an expiry rewrite, unrecorded rewrites).
    async fn tidy(&self, seg: &Seg, record: &SegmentRecord) -> Result<(), ArchiveError> {
        let key = Self::tidy_key(seg, record);
        if self
            .tidied
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&key)
        {
            return Ok(());
        }
        let (object, manifest_path) = seg.record_paths(record)?;
        let (original, original_manifest) = seg.warm_paths()?;
        let keep: BTreeSet<String> = [object.to_string(), manifest_path.to_string()].into();
        let folder = expired_versions_folder(
            seg.tenant(),
            seg.environment(),
            seg.id.start(),
            seg.id.end(),
        )
        .map_err(|e| seg.store("naming", e))?;
        let mut tiers = vec![Tier::Warm, Tier::Cold];
        if record.tier == Tier::Warm {
            // A cold copy of a warm segment is an interrupted warm → cold move: the next move
            // replaces it, and it is not authoritative; leave it.
            tiers.retain(|t| *t == Tier::Warm);
        }
        for tier in tiers {
            let Some(store) = self.stores.get(tier) else {
                continue;
            };
            let mut doomed: Vec<Path> = Vec::new();
            if tier != record.tier {
                // The anchor is authoritative in the record's tier only.
                doomed.push(seg.anchor_path()?);
            }
            for path in [&original, &original_manifest, &object, &manifest_path] {
                let authoritative = tier == record.tier && keep.contains(&path.to_string());
                if !authoritative && !doomed.contains(path) {
                    doomed.push(path.clone());
                }
            }
            let mut listing = store.object_store().list(Some(&folder));
            while let Some(meta) = listing.next().await {
                let meta = meta.map_err(|e| {
                    seg.store(
                        "listing old segment versions",
                        StoreError::Operation {
                            store: store.url().to_owned(),
                            op: "list",
                            path: folder.to_string(),
                            attempts: 1,
                            source: Box::new(e),
                        },
                    )
                })?;
                let authoritative =
                    tier == record.tier && keep.contains(&meta.location.to_string());
                if !authoritative && !doomed.contains(&meta.location) {
                    doomed.push(meta.location);
                }
            }
            for path in doomed {
                store
                    .delete(&path)
                    .await
                    .map_err(|e| seg.store("deleting a leftover copy", e))?;
            }
        }
        self.mark_tidied(seg, record);
        Ok(())
    }

    async fn expire(
        &self,
        seg: &Seg,
        record: &SegmentRecord,
        holds: &[LegalHold],
        now_nanos: u64,
        report: &mut PassReport,
    ) -> Result<(), ArchiveError> {
        let deletion = |leaves_expired, leaves_held, holds: Vec<String>| Deletion {
            origin: seg.id.origin().to_owned(),
            tenant_id: seg.tenant().to_owned(),
            environment: seg.environment().to_owned(),
            start: seg.id.start(),
            end: seg.id.end(),
            tier: record.tier,
            leaves_expired,
            leaves_held,
            holds,
        };
        if self.fully_expired(seg, record).await? {
            return Ok(());
        }
        let overlapping: Vec<&LegalHold> = holds
            .iter()
            .filter(|h| holds::overlaps(h, record.oldest, record.newest))
            .collect();
        // A hold on a whole window blocks the whole segment, without reading it.
        let window_holds: Vec<String> = overlapping
            .iter()
            .filter(|h| holds::is_window_only(h))
            .map(|h| h.hold_id.clone())
            .collect();
        if !window_holds.is_empty() {
            report.held.push(deletion(0, seg.id.count(), window_holds));
            return Ok(());
        }
        let mut hold_ids: Vec<String> = overlapping.iter().map(|h| h.hold_id.clone()).collect();
        hold_ids.sort();
        let memo_key = (seg.id.origin().to_owned(), seg.id.start());
        let cutoffs = self.cutoffs(now_nanos);
        let memo = (
            record.object_blake3,
            hold_ids,
            cutoffs.clamped(record.oldest, record.newest),
        );
        if self
            .expiry_noop
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&memo_key)
            == Some(&memo)
        {
            return Ok(());
        }
        let store = self.stores.get(record.tier).ok_or_else(|| {
            ArchiveError::InvalidRequest(format!("{}: expiring a hot segment", seg.name()))
        })?;
        let (object, manifest_path) = seg.record_paths(record)?;
        let bytes = store
            .get(&object)
            .await
            .map_err(|e| seg.store("reading the segment for expiry", e))?;
        if let Some(problem) = pinned_problem(&bytes, &record.object_blake3, record.object_bytes) {
            return Err(seg.mismatch(record.tier, &object, problem));
        }
        let filtered: Vec<LegalHold> = overlapping.into_iter().cloned().collect();
        let (rewritten, summary, previous_expired, leaves_held, kept_by) = self
            .rewrite(seg, bytes, record.root, filtered, cutoffs)
            .await?;
        if summary.expired_leaves == previous_expired {
            self.expiry_noop
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(memo_key, memo);
            if leaves_held > 0 {
                report.held.push(deletion(0, leaves_held, kept_by));
            }
            return Ok(());
        }
        let planned = deletion(
            summary.expired_leaves - previous_expired,
            leaves_held,
            kept_by,
        );
        if let Err(reason) = (self.on_delete)(planned.clone()).await {
            return Err(ArchiveError::DeletionRefused {
                segment: seg.name(),
                leaves: planned.leaves_expired,
                reason,
            });
        }
        let new_object = expired_segment_object_path(
            seg.tenant(),
            seg.environment(),
            seg.id.start(),
            seg.id.end(),
            summary.expired_leaves,
        )
        .map_err(|e| seg.store("naming", e))?;
        let new_manifest_path =
            manifest_path_for(&new_object).map_err(|e| seg.store("naming", e))?;
        let manifest = SegmentManifest::for_object(
            &summary,
            new_object.to_string(),
            &rewritten,
            now_nanos / 1_000_000_000,
        );
        store
            .put(&new_object, Bytes::from(rewritten))
            .await
            .map_err(|e| seg.store("writing the expired segment", e))?;
        let back = store
            .get(&new_object)
            .await
            .map_err(|e| seg.store("reading the expired segment back", e))?;
        if let Some(problem) = pinned_problem(&back, &manifest.object_blake3, manifest.object_size)
        {
            return Err(seg.mismatch(record.tier, &new_object, format!("read back: {problem}")));
        }
        self.crash_point("expire.write_object");
        let note = self.sign(seg, &manifest, now_nanos)?;
        store
            .put(&new_manifest_path, note)
            .await
            .map_err(|e| seg.store("writing the expired segment's manifest", e))?;
        self.crash_point("expire.write_manifest");
        let expired_record = SegmentRecord {
            object: new_object.to_string(),
            object_blake3: manifest.object_blake3,
            object_bytes: manifest.object_size,
            content_expired: true,
            recorded_at: now_nanos,
            ..record.clone()
        };
        seg.log
            .record_segment(&expired_record)
            .map_err(|e| seg.ledger("recording the expired segment", e))?;
        self.crash_point("expire.record");
        if new_object != object {
            store
                .delete(&object)
                .await
                .map_err(|e| seg.store("deleting the segment's previous version", e))?;
            store
                .delete(&manifest_path)
                .await
                .map_err(|e| seg.store("deleting the previous version's manifest", e))?;
        }
        self.crash_point("expire.delete_old");
        // Versions left by interrupted rewrites go too; a failure here is reported, the
        // expiry itself is done.
        let tidied = self.tidy(seg, &expired_record).await;
        let m = &self.metrics;
        ArchiverMetrics::add(&m.segments_expired, 1);
        ArchiverMetrics::add(&m.leaves_expired, planned.leaves_expired);
        report.expired.push(planned);
        tidied
    }

    /// Whether every leaf of an expired segment has lost its content already (nothing left to
    /// expire, whatever the holds): read from the object's footer once per process.
    async fn fully_expired(&self, seg: &Seg, record: &SegmentRecord) -> Result<bool, ArchiveError> {
        if !record.content_expired {
            return Ok(false);
        }
        let key = (
            seg.id.origin().to_owned(),
            seg.id.start(),
            record.object_blake3,
        );
        let lock = || self.all_expired.lock().unwrap_or_else(|p| p.into_inner());
        if lock().contains(&key) {
            return Ok(true);
        }
        let Some(store) = self.stores.get(record.tier) else {
            return Ok(false);
        };
        let (object, _) = seg.record_paths(record)?;
        let reader = store
            .open_segment(&object, &seg.id)
            .await
            .map_err(Seg::segment("opening the expired segment"))?;
        let all = reader.info().expired_leaves == seg.id.count();
        if all {
            lock().insert(key);
        }
        Ok(all)
    }

    /// Rewrites a segment without the content of every leaf no hold covers (on a blocking
    /// thread). Returns the new object, its summary, the rows already expired before, the
    /// rows kept by holds and the ids of the holds that kept them.
    async fn rewrite(
        &self,
        seg: &Seg,
        bytes: Bytes,
        root: Hash,
        holds: Vec<LegalHold>,
        cutoffs: Cutoffs,
    ) -> Result<(Vec<u8>, SegmentSummary, u64, u64, Vec<String>), ArchiveError> {
        let id = seg.id.clone();
        let options = self.config.write.clone();
        let handle = tokio::runtime::Handle::current();
        let name = seg.name();
        tokio::task::spawn_blocking(move || {
            handle.block_on(async move {
                let reader = SegmentReader::from_bytes(bytes, &id)
                    .await
                    .map_err(Seg::segment("opening the segment for expiry"))?;
                if reader.info().root != root {
                    return Err(ArchiveError::ObjectMismatch {
                        segment: name,
                        tier: "archive",
                        path: String::new(),
                        reason: format!(
                            "object root {} differs from the recorded {}",
                            hash_hex(&reader.info().root),
                            hash_hex(&root)
                        ),
                    });
                }
                let previous = reader.info().expired_leaves;
                let mut held = 0u64;
                let mut kept_by: BTreeSet<String> = BTreeSet::new();
                let (out, summary) = rewrite_expired(&reader, Vec::new(), &options, |candidate| {
                    let event = candidate.record.event.as_ref();
                    let class = event.map_or("", |e| e.data_classification.as_str());
                    if candidate.record.logged_at >= cutoffs.of(class) {
                        // Its class keeps it longer: not due, not held.
                        return false;
                    }
                    let fields = HeldFields {
                        logged_at: candidate.record.logged_at,
                        user_id: event.map_or("", |e| e.user_id.as_str()),
                        session_id: event.map_or("", |e| e.session_id.as_str()),
                        correlation_id: event.map_or("", |e| e.correlation_id.as_str()),
                    };
                    let mut covered = false;
                    for hold in holds.iter().filter(|h| holds::covers(h, &fields)) {
                        covered = true;
                        if !kept_by.contains(&hold.hold_id) {
                            kept_by.insert(hold.hold_id.clone());
                        }
                    }
                    if covered {
                        held += 1;
                    }
                    !covered
                })
                .await
                .map_err(Seg::segment(
                    "rewriting the segment without expired content",
                ))?;
                Ok((out, summary, previous, held, kept_by.into_iter().collect()))
            })
        })
        .await
        .map_err(|e| seg.task("rewriting the segment", e))?
    }
}

#[derive(Default)]
struct PassState {
    pending: u64,
    lag_nanos: u64,
    /// Set by the last segment: hot and not yet due.
    hot_not_due: bool,
}
