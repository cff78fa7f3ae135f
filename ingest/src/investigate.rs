//! `Investigate.FindEvents` (DESIGN §5): event search over every tier with justification,
//! self-audit, stable pagination and optional inclusion proofs.
//!
//! A search is pinned to one signed checkpoint: the first page takes the latest, and the page
//! token carries its tree size, so later pages see exactly the same leaves while ingest goes on.
//! Candidates come from the most selective indexed condition (hot-tier search index, which
//! outlives the hot copy of a leaf) or, without one, from the `logged_at` window (binary search:
//! `logged_at` never decreases along a log); every candidate is decoded and judged with
//! [`EventFilter::matches`] whichever tier holds it, so the answer does not depend on the tier.
//! Each page is recorded in the system log before it is returned: no record, no results.

use std::collections::BTreeMap;
use std::sync::Arc;

use auditledger_archiver::LeafContent;
use auditledger_ledger::event::{Decision, EventKind, decode_leaf};
use auditledger_ledger::query::{EventFilter, Order};
use auditledger_ledger::{Log, SignedCheckpoint};
use auditledger_proto::v1 as pb;
use base64::Engine as _;
use prost::Message as _;
use tonic::{Request, Response, Status};

use crate::auth::Role;
use crate::server::AppState;
use crate::status;

const SEARCH_ROLES: &[Role] = &[Role::Investigator, Role::Admin];
const METHOD: &str = "Investigate.FindEvents";
/// Leaves judged per hot chunk or index batch.
const CHUNK: u64 = 1024;
/// Leaf indexes listed in one system-log record (the count is always exact).
const RECORDED_INDEXES: usize = 200;

/// The `Investigate` service.
pub struct InvestigateService(pub Arc<AppState>);

// ---- Page tokens ----------------------------------------------------------------------------

/// Where a search continues. Encoded (URL-safe base64, no padding) as `version u8 (=1) ‖
/// tree_size u64 ‖ position u64 ‖ newest_first u8 ‖ filter digest [16] ‖ check [8]`, where
/// `check` is BLAKE3 of the preceding 34 bytes. The digest binds the token to the tenant,
/// environment and every filter; the check rejects damaged or edited tokens. Tokens are not
/// secret: authorization is checked again on every page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PageToken {
    /// Tree size of the checkpoint the search is pinned to.
    pub tree_size: u64,
    /// Oldest first: the next leaf index to judge. Newest first: one past it.
    pub position: u64,
    pub newest_first: bool,
    pub filter_digest: [u8; 16],
}

const TOKEN_VERSION: u8 = 1;
const TOKEN_BODY: usize = 1 + 8 + 8 + 1 + 16;
const TOKEN_LEN: usize = TOKEN_BODY + 8;

impl PageToken {
    pub fn encode(&self) -> String {
        let mut v = Vec::with_capacity(TOKEN_LEN);
        v.push(TOKEN_VERSION);
        v.extend_from_slice(&self.tree_size.to_be_bytes());
        v.extend_from_slice(&self.position.to_be_bytes());
        v.push(u8::from(self.newest_first));
        v.extend_from_slice(&self.filter_digest);
        let check = blake3::hash(&v);
        v.extend_from_slice(&check.as_bytes()[..8]);
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v)
    }

    /// Parses a token and checks it belongs to a search with `filter_digest` and this order.
    pub fn decode(
        text: &str,
        filter_digest: &[u8; 16],
        newest_first: bool,
    ) -> Result<PageToken, Status> {
        let bad = |why: &str| Status::invalid_argument(format!("page_token: {why}"));
        let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(text.trim())
            .map_err(|_| bad("not a token from FindEvents (not base64)"))?;
        if raw.len() != TOKEN_LEN || raw[0] != TOKEN_VERSION {
            return Err(bad("not a token from FindEvents (wrong length or version)"));
        }
        if blake3::hash(&raw[..TOKEN_BODY]).as_bytes()[..8] != raw[TOKEN_BODY..] {
            return Err(bad("damaged or edited (check bytes do not match)"));
        }
        let u64_at = |at: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&raw[at..at + 8]);
            u64::from_be_bytes(b)
        };
        let mut digest = [0u8; 16];
        digest.copy_from_slice(&raw[18..34]);
        let token = PageToken {
            tree_size: u64_at(1),
            position: u64_at(9),
            newest_first: raw[17] == 1,
            filter_digest: digest,
        };
        if raw[17] > 1 {
            return Err(bad("damaged (order byte)"));
        }
        if token.filter_digest != *filter_digest {
            return Err(bad(
                "it belongs to a search with other tenant, environment or filters; \
                 repeat the same filters or start without a token",
            ));
        }
        if token.newest_first != newest_first {
            return Err(bad("it belongs to a search in the other order"));
        }
        Ok(token)
    }
}

/// BLAKE3 (first 16 bytes) of the request's tenant, environment and filters: the search's
/// identity for page tokens (prost encodes deterministically).
pub fn filter_digest(req: &pb::FindEventsRequest) -> [u8; 16] {
    let only_filters = pb::FindEventsRequest {
        limit: 0,
        page_token: String::new(),
        newest_first: false,
        justification: String::new(),
        with_proofs: false,
        ..req.clone()
    };
    let h = blake3::hash(&only_filters.encode_to_vec());
    let mut out = [0u8; 16];
    out.copy_from_slice(&h.as_bytes()[..16]);
    out
}

/// The request's filters, checked.
pub fn filter_of(req: &pb::FindEventsRequest) -> Result<EventFilter, Status> {
    let opt = |s: &str| (!s.is_empty()).then(|| s.to_owned());
    let event_kind = match req.event_kind {
        0 => None,
        k => Some(EventKind::try_from(k).map_err(|_| {
            Status::invalid_argument(format!("event_kind: {k} is not a known EventKind"))
        })?),
    };
    let decision = match req.decision {
        0 => None,
        d => Some(Decision::try_from(d).map_err(|_| {
            Status::invalid_argument(format!("decision: {d} is not a known Decision"))
        })?),
    };
    if req.to_time != 0 && req.from_time >= req.to_time {
        return Err(Status::invalid_argument(format!(
            "from_time {} is not before to_time {}",
            req.from_time, req.to_time
        )));
    }
    Ok(EventFilter {
        from_time: req.from_time,
        to_time: req.to_time,
        event_kind,
        user_id: opt(&req.user_id),
        agent_id: opt(&req.agent_id),
        tool_server: opt(&req.tool_server),
        tool_name: opt(&req.tool_name),
        session_id: opt(&req.session_id),
        correlation_id: opt(&req.correlation_id),
        trace_id: opt(&req.trace_id),
        decision,
        data_classification: opt(&req.data_classification),
        event_id: opt(&req.event_id),
    })
}

/// The filters as `name=value` pairs, for the system-log record.
fn describe(req: &pb::FindEventsRequest) -> String {
    let mut parts = Vec::new();
    let mut add = |name: &str, value: String| {
        if !value.is_empty() && value != "0" {
            parts.push(format!("{name}={value}"));
        }
    };
    add("from_time", req.from_time.to_string());
    add("to_time", req.to_time.to_string());
    if let Ok(k) = EventKind::try_from(req.event_kind)
        && req.event_kind != 0
    {
        parts.push(format!("event_kind={}", k.as_str_name()));
    }
    for (name, value) in [
        ("user_id", &req.user_id),
        ("agent_id", &req.agent_id),
        ("tool_server", &req.tool_server),
        ("tool_name", &req.tool_name),
        ("session_id", &req.session_id),
        ("correlation_id", &req.correlation_id),
        ("trace_id", &req.trace_id),
        ("data_classification", &req.data_classification),
        ("event_id", &req.event_id),
    ] {
        if !value.is_empty() {
            parts.push(format!("{name}={value:?}"));
        }
    }
    if req.decision != 0 {
        parts.push(format!(
            "decision={}",
            Decision::try_from(req.decision)
                .map(|d| d.as_str_name())
                .unwrap_or("?")
        ));
    }
    parts.join(" ")
}

// ---- The time window -------------------------------------------------------------------------

/// The first leaf below `size` whose `logged_at` is ≥ `time` (`size` if none). `logged_at` never
/// decreases along a log (the sequencer stamps `max(now, previous)`), so this is a binary
/// search; archived segments answer from their recorded time bounds when they can, and the
/// segment holding the boundary answers at once from its `logged_at` column. Shared by
/// searches and `Compliance.Export`.
pub(crate) async fn first_logged_at_or_after(
    s: &AppState,
    log: &Log,
    time: u64,
    size: u64,
) -> Result<u64, Status> {
    let (mut lo, mut hi) = (0u64, size);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        match probe_time(s, log, mid, time).await? {
            Probe::AtOrAfter => hi = mid,
            Probe::Before => lo = mid + 1,
            // Every leaf before that segment was logged before `time`; a boundary at or past
            // the pinned size means every leaf below it was too.
            Probe::Boundary(index) => return Ok(index.min(size)),
        }
    }
    Ok(lo)
}

/// What one leaf tells the binary search for a time.
enum Probe {
    /// The leaf was logged before the time.
    Before,
    /// The leaf was logged at or after the time.
    AtOrAfter,
    /// The leaf lies in an archived segment holding the boundary: the segment's first leaf
    /// logged at or after the time, which is the answer.
    Boundary(u64),
}

/// Where leaf `leaf_index` lies relative to `time`.
async fn probe_time(s: &AppState, log: &Log, leaf_index: u64, time: u64) -> Result<Probe, Status> {
    let logged_at = |bytes: &[u8]| -> Result<u64, Status> {
        decode_leaf(bytes)
            .map(|r| r.logged_at)
            .map_err(|e| Status::data_loss(format!("{} leaf {leaf_index}: {e}", log.origin())))
    };
    let judge = |at: u64| {
        if at >= time {
            Probe::AtOrAfter
        } else {
            Probe::Before
        }
    };
    if let Some(bytes) = log.leaf(leaf_index).map_err(status::from_ledger)? {
        return Ok(judge(logged_at(&bytes)?));
    }
    let record = log.segment_of(leaf_index).map_err(status::from_ledger)?;
    if let Some(r) = &record {
        if r.oldest >= time {
            return Ok(Probe::AtOrAfter);
        }
        if r.newest < time {
            return Ok(Probe::Before);
        }
        if r.hot_released {
            // The boundary is inside this segment: one search of its `logged_at` column (row
            // groups pruned by their statistics) instead of a leaf page read and decompressed
            // per bisection step. A pure time window matches content-expired rows too.
            let window = EventFilter {
                from_time: time,
                ..EventFilter::default()
            };
            let rows = s
                .archiver
                .reader()
                .find_in_segment(log, r, &window, Order::OldestFirst, None, 1)
                .await
                .map_err(|e| {
                    Status::unavailable(format!(
                        "{}: locating the time window in archived leaves [{}, {}): {e}",
                        log.origin(),
                        r.start,
                        r.end()
                    ))
                })?;
            if let Some((index, _, _)) = rows.first() {
                return Ok(Probe::Boundary(*index));
            }
        }
    }
    match s.archiver.reader().leaf(log, leaf_index).await {
        Ok(LeafContent::Present { bytes, .. }) => Ok(judge(logged_at(&bytes)?)),
        Ok(LeafContent::Expired { .. }) => Err(Status::failed_precondition(format!(
            "{} leaf {leaf_index}: the time window's boundary falls among leaves whose content \
             retention has deleted; use a leaf range or a wider window instead",
            log.origin()
        ))),
        Err(e) => Err(Status::unavailable(format!(
            "reading leaf {leaf_index} to locate the time window: {e}"
        ))),
    }
}

// ---- The search ------------------------------------------------------------------------------

/// One page of a search: the matches in order and where the next page starts.
struct Page {
    entries: Vec<pb::Entry>,
    next_position: Option<u64>,
}

/// Judges leaves in order and keeps the matches, up to `want`.
struct Judge<'a> {
    log: &'a Log,
    filter: &'a EventFilter,
    /// The filter has only time conditions: leaves whose content expired still match.
    time_only: bool,
    want: usize,
    found: Vec<pb::Entry>,
}

impl Judge<'_> {
    fn full(&self) -> bool {
        self.found.len() >= self.want
    }

    /// One leaf; `content` None = expired. The candidate lies inside the time window by
    /// construction (the window was turned into a leaf range), which is all an expired leaf
    /// can be judged on.
    fn judge(
        &mut self,
        index: u64,
        leaf_hash: Vec<u8>,
        content: Option<Vec<u8>>,
        tier: pb::Tier,
    ) -> Result<(), Status> {
        let matched = match &content {
            None => self.time_only,
            Some(bytes) => {
                let record = decode_leaf(bytes).map_err(|e| {
                    Status::data_loss(format!("{} leaf {index}: {e}", self.log.origin()))
                })?;
                self.filter.matches(&record)
            }
        };
        if matched {
            self.found.push(pb::Entry {
                leaf_index: index,
                content_expired: content.is_none(),
                leaf: content.unwrap_or_default(),
                leaf_hash,
                tier: tier as i32,
            });
        }
        Ok(())
    }
}

fn proto_tier(t: auditledger_ledger::segments::Tier) -> pb::Tier {
    use auditledger_ledger::segments::Tier;
    match t {
        Tier::Hot => pb::Tier::Hot,
        Tier::Warm => pb::Tier::Warm,
        Tier::Cold => pb::Tier::Cold,
    }
}

/// Judges the leaves of `[lo, hi)` inside the released segment `r`, in `order`, through the
/// archiver's pruned segment search (time range, row-group statistics, bloom filters); each
/// returned leaf is re-judged here like every other candidate, so the tiers cannot disagree.
/// Returns the part of `[lo, hi)` left to judge.
async fn judge_archived_segment(
    s: &AppState,
    judge: &mut Judge<'_>,
    r: &auditledger_ledger::segments::SegmentRecord,
    lo: u64,
    hi: u64,
    order: Order,
) -> Result<(u64, u64), Status> {
    let log = judge.log;
    let (x, y) = (lo.max(r.start), hi.min(r.end()));
    let resume_after = match order {
        Order::OldestFirst => (x > r.start).then(|| x - 1),
        Order::NewestFirst => (y < r.end()).then_some(y),
    };
    let rows = s
        .archiver
        .reader()
        .find_in_segment(
            log,
            r,
            judge.filter,
            order,
            resume_after,
            judge.want - judge.found.len(),
        )
        .await
        .map_err(|e| {
            Status::unavailable(format!(
                "{}: searching archived leaves [{x}, {y}): {e}",
                log.origin()
            ))
        })?;
    let tier = proto_tier(r.tier);
    for (index, hash, content) in rows {
        if !(x..y).contains(&index) || judge.full() {
            break;
        }
        let bytes = content.bytes().map(<[u8]>::to_vec);
        judge.judge(index, hash.to_vec(), bytes, tier)?;
    }
    Ok(match order {
        Order::OldestFirst => (y, hi),
        Order::NewestFirst => (lo, x),
    })
}

/// Judges leaves `[a, b)` in `order`: hot leaves in chunks, archived segments through the
/// archiver's pruned segment search.
async fn scan_range(
    s: &AppState,
    judge: &mut Judge<'_>,
    a: u64,
    b: u64,
    order: Order,
) -> Result<(), Status> {
    let log = judge.log;
    let seg = 1u64 << log.segment_bits();
    let (mut lo, mut hi) = (a, b);
    while lo < hi && !judge.full() {
        let frontier = match order {
            Order::OldestFirst => lo,
            Order::NewestFirst => hi - 1,
        };
        let record = log
            .segment_of(frontier)
            .map_err(status::from_ledger)?
            .filter(|r| r.hot_released);
        if let Some(r) = record {
            (lo, hi) = judge_archived_segment(s, judge, &r, lo, hi, order).await?;
            continue;
        }
        // A chunk of hot leaves, inside one segment.
        let (x, y) = match order {
            Order::OldestFirst => {
                let seg_end = (lo / seg + 1) * seg;
                (lo, hi.min(lo + CHUNK).min(seg_end))
            }
            Order::NewestFirst => {
                let seg_start = (hi - 1) / seg * seg;
                (lo.max(hi.saturating_sub(CHUNK)).max(seg_start), hi)
            }
        };
        // (leaf index, leaf hash, leaf bytes)
        let mut leaves: Vec<(u64, Vec<u8>, Vec<u8>)> = Vec::new();
        log.scan_leaves(x, y, &mut |index, leaf| {
            leaves.push((
                index,
                auditledger_ledger::merkle::leaf_hash(leaf).to_vec(),
                leaf.to_vec(),
            ));
            true
        })
        .map_err(status::from_ledger)?;
        if leaves.len() as u64 != y - x {
            // Released between the record check and the scan: read again, archived.
            if log
                .segment_of(x)
                .map_err(status::from_ledger)?
                .is_some_and(|r| r.hot_released)
            {
                continue;
            }
            return Err(Status::data_loss(format!(
                "{}: hot leaves [{x}, {y}) are incomplete and not archived",
                log.origin()
            )));
        }
        if order == Order::NewestFirst {
            leaves.reverse();
        }
        for (index, hash, leaf) in leaves {
            if judge.full() {
                break;
            }
            judge.judge(index, hash, Some(leaf), pb::Tier::Hot)?;
        }
        match order {
            Order::OldestFirst => lo = y,
            Order::NewestFirst => hi = x,
        }
    }
    Ok(())
}

/// Judges the index candidates of `[a, b)` in `order`. Hot candidates are read one by one;
/// where several candidates lie in one archived segment, that segment is searched once
/// (pruned by statistics and bloom filters, each needed page read and decompressed once)
/// instead of reading a Parquet page per candidate — the per-leaf reads made a 64-event
/// session lookup in the cold tier cost ~90 ms (docs/benchmarks.md, "Investigations").
async fn indexed_range(
    s: &AppState,
    judge: &mut Judge<'_>,
    field: auditledger_ledger::query::IndexedField,
    value: &str,
    a: u64,
    b: u64,
    order: Order,
) -> Result<(), Status> {
    let log = judge.log;
    if field != auditledger_ledger::query::IndexedField::EventId {
        // The search index trails the durable tree by milliseconds (ledger/src/indexer.rs):
        // wait here, so that `index_candidates` below never blocks a runtime thread.
        log.wait_for_index(b.min(log.tree_size()))
            .await
            .map_err(status::from_ledger)?;
    }
    let (mut lo, mut hi) = (a, b);
    'batches: while lo < hi && !judge.full() {
        let batch = log
            .index_candidates(field, value, lo, hi, order, CHUNK as usize)
            .map_err(status::from_ledger)?;
        if batch.is_empty() {
            break;
        }
        for (at, &index) in batch.iter().enumerate() {
            if judge.full() {
                break 'batches;
            }
            let (content, tier) = match log.leaf(index).map_err(status::from_ledger)? {
                Some(bytes) => (Some(bytes), pb::Tier::Hot),
                None => {
                    let record = log
                        .segment_of(index)
                        .map_err(status::from_ledger)?
                        .filter(|r| r.hot_released);
                    if let Some(r) = record {
                        let in_segment = batch[at..]
                            .iter()
                            .take_while(|&&c| r.start <= c && c < r.end())
                            .count();
                        if in_segment > 1 {
                            // `[lo, hi)` excludes every candidate judged so far, and no
                            // leaf between that bound and `index` is a candidate (they come
                            // in search order): the segment search finds the same matches.
                            (lo, hi) = judge_archived_segment(s, judge, &r, lo, hi, order).await?;
                            continue 'batches;
                        }
                    }
                    match s.archiver.reader().leaf(log, index).await {
                        Ok(LeafContent::Present { bytes, tier }) => (Some(bytes), proto_tier(tier)),
                        Ok(LeafContent::Expired { tier }) => (None, proto_tier(tier)),
                        Err(e) => {
                            return Err(Status::unavailable(format!(
                                "{}: reading leaf {index}: {e}",
                                log.origin()
                            )));
                        }
                    }
                }
            };
            let hash = log.leaf_hash(index).map_err(status::from_ledger)?.to_vec();
            judge.judge(index, hash, content, tier)?;
            match order {
                Order::OldestFirst => lo = index + 1,
                Order::NewestFirst => hi = index,
            }
        }
    }
    Ok(())
}

/// Up to `limit` matches of `filter` among leaves `[0, size)` from `position` on, in `order`.
async fn search(
    s: &AppState,
    log: &Log,
    filter: &EventFilter,
    order: Order,
    size: u64,
    position: u64,
    limit: usize,
) -> Result<Page, Status> {
    let lo = if filter.from_time > 0 {
        first_logged_at_or_after(s, log, filter.from_time, size).await?
    } else {
        0
    };
    let hi = if filter.to_time > 0 {
        first_logged_at_or_after(s, log, filter.to_time, size).await?
    } else {
        size
    };
    let (a, b) = match order {
        Order::OldestFirst => (lo.max(position), hi),
        Order::NewestFirst => (lo, hi.min(position)),
    };
    let mut judge = Judge {
        log,
        filter,
        time_only: *filter
            == EventFilter {
                from_time: filter.from_time,
                to_time: filter.to_time,
                ..EventFilter::default()
            },
        // One more than the page: tells whether there is a next page.
        want: limit + 1,
        found: Vec::new(),
    };
    if a < b {
        match filter.best_index() {
            None => scan_range(s, &mut judge, a, b, order).await?,
            Some((field, value)) => {
                let from = if field == auditledger_ledger::query::IndexedField::EventId {
                    0
                } else {
                    log.fields_indexed_from().map_err(status::from_ledger)?
                };
                // Leaves below `from` (released before the index existed) are scanned.
                let split = from.clamp(a, b);
                let parts = [(a, split, false), (split, b, true)];
                let ordered: Vec<_> = match order {
                    Order::OldestFirst => parts.to_vec(),
                    Order::NewestFirst => parts.iter().rev().copied().collect(),
                };
                for (x, y, indexed) in ordered {
                    if x >= y || judge.full() {
                        continue;
                    }
                    if indexed {
                        indexed_range(s, &mut judge, field, value, x, y, order).await?;
                    } else {
                        scan_range(s, &mut judge, x, y, order).await?;
                    }
                }
            }
        }
    }
    let mut entries = judge.found;
    let next_position = if entries.len() > limit {
        entries.truncate(limit);
        entries.last().map(|e| match order {
            Order::OldestFirst => e.leaf_index + 1,
            Order::NewestFirst => e.leaf_index,
        })
    } else {
        None
    };
    Ok(Page {
        entries,
        next_position,
    })
}

fn checkpoint_pb(
    s: &AppState,
    log: &Log,
    cp: &SignedCheckpoint,
) -> Result<pb::SignedCheckpoint, Status> {
    Ok(if s.config.witnesses.keys.is_empty() {
        pb::SignedCheckpoint {
            note: cp.note.clone(),
        }
    } else {
        pb::SignedCheckpoint {
            note: log.cosigned_note(cp).map_err(status::from_ledger)?,
        }
    })
}

#[tonic::async_trait]
impl pb::investigate_server::Investigate for InvestigateService {
    async fn find_events(
        &self,
        request: Request<pb::FindEventsRequest>,
    ) -> Result<Response<pb::FindEventsResponse>, Status> {
        let s = &self.0;
        let req = request.get_ref();
        let p = s.authenticate(&request, METHOD, &req.environment)?;
        s.authorize(&p, METHOD, SEARCH_ROLES, &req.tenant_id, &req.environment)?;
        if req.justification.trim().is_empty() {
            let reason =
                format!("{METHOD}: a justification is required (it is recorded in the system log)");
            s.metrics.reject(&req.tenant_id, "justification");
            s.deny_on_log(&p.name, METHOD, &req.tenant_id, &req.environment, &reason);
            return Err(Status::invalid_argument(reason));
        }
        let filter = filter_of(req)?;
        let digest = filter_digest(req);
        let order = if req.newest_first {
            Order::NewestFirst
        } else {
            Order::OldestFirst
        };
        let token = if req.page_token.is_empty() {
            None
        } else {
            Some(PageToken::decode(
                &req.page_token,
                &digest,
                req.newest_first,
            )?)
        };
        let limits = &s.config.limits;
        let limit = match req.limit {
            0 => limits.search_default_limit,
            n => n.min(limits.search_max_limit),
        } as usize;
        let log = s.log(&req.tenant_id, &req.environment)?;
        let checkpoint = match &token {
            None => log.latest_checkpoint().ok_or_else(|| {
                Status::failed_precondition(format!(
                    "{} has no signed checkpoint yet; retry after checkpoint_interval",
                    log.origin()
                ))
            })?,
            Some(t) => log.checkpoint_at(t.tree_size).map_err(|e| {
                Status::invalid_argument(format!(
                    "page_token: no checkpoint of size {} ({e})",
                    t.tree_size
                ))
            })?,
        };
        let size = checkpoint.checkpoint.tree_size;
        let position = match (&token, order) {
            (Some(t), _) => t.position.min(size),
            (None, Order::OldestFirst) => 0,
            (None, Order::NewestFirst) => size,
        };
        let page = search(s, &log, &filter, order, size, position, limit).await?;

        let mut attributes = BTreeMap::new();
        attributes.insert("filters".into(), describe(req));
        attributes.insert("count".into(), page.entries.len().to_string());
        attributes.insert("tree_size".into(), size.to_string());
        attributes.insert(
            "order".into(),
            if req.newest_first {
                "newest_first"
            } else {
                "oldest_first"
            }
            .into(),
        );
        attributes.insert(
            "page".into(),
            if token.is_some() {
                "continued"
            } else {
                "first"
            }
            .into(),
        );
        let listed: Vec<String> = page
            .entries
            .iter()
            .take(RECORDED_INDEXES)
            .map(|e| e.leaf_index.to_string())
            .collect();
        attributes.insert("leaf_indexes".into(), listed.join(","));
        s.record_read(
            &p,
            METHOD,
            &req.tenant_id,
            &req.environment,
            &req.justification,
            attributes,
        )
        .await?;

        let mut events = Vec::with_capacity(page.entries.len());
        for entry in page.entries {
            let proof = if req.with_proofs {
                let hashes = log
                    .inclusion_proof(entry.leaf_index, size)
                    .map_err(status::from_ledger)?;
                Some(pb::InclusionProof {
                    leaf_index: entry.leaf_index,
                    tree_size: size,
                    hashes: hashes.iter().map(|h| h.to_vec()).collect(),
                    leaf: entry.leaf.clone(),
                    // The response's checkpoint: one copy instead of one per result.
                    checkpoint: None,
                    leaf_hash: entry.leaf_hash.clone(),
                    content_expired: entry.content_expired,
                    tier: entry.tier,
                })
            } else {
                None
            };
            events.push(pb::FoundEvent {
                entry: Some(entry),
                proof,
            });
        }
        let next_page_token = page
            .next_position
            .map(|position| {
                PageToken {
                    tree_size: size,
                    position,
                    newest_first: req.newest_first,
                    filter_digest: digest,
                }
                .encode()
            })
            .unwrap_or_default();
        Ok(Response::new(pb::FindEventsResponse {
            events,
            next_page_token,
            checkpoint: Some(checkpoint_pb(s, &log, &checkpoint)?),
        }))
    }
}

// ---- Command line (`auditledger events find`) ------------------------------------------------

/// Output format of `auditledger events find`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    /// Aligned columns for a terminal.
    Table,
    /// One JSON object per event (with the leaf, and the proof when asked).
    Jsonl,
    /// RFC 4180 CSV with a header row.
    Csv,
}

/// What `auditledger events find` asks for.
pub struct FindCommand {
    pub target: String,
    pub token: String,
    pub request: pb::FindEventsRequest,
    /// Follow `next_page_token` until the end.
    pub all_pages: bool,
    pub format: OutputFormat,
}

const COLUMNS: [&str; 14] = [
    "leaf_index",
    "logged_at",
    "event_id",
    "event_kind",
    "user_id",
    "agent_id",
    "tool_server",
    "tool_name",
    "session_id",
    "correlation_id",
    "trace_id",
    "decision",
    "data_classification",
    "tier",
];

/// One result as the CLI's columns.
fn row(found: &pb::FoundEvent) -> anyhow::Result<Vec<String>> {
    let entry = found
        .entry
        .as_ref()
        .ok_or_else(|| anyhow::anyhow!("the server sent a result without an entry"))?;
    let tier = pb::Tier::try_from(entry.tier)
        .map(|t| {
            t.as_str_name()
                .trim_start_matches("TIER_")
                .to_ascii_lowercase()
        })
        .unwrap_or_default();
    if entry.content_expired {
        let mut r = vec![
            entry.leaf_index.to_string(),
            String::new(),
            "(content expired)".into(),
        ];
        r.resize(COLUMNS.len() - 1, String::new());
        r.push(tier);
        return Ok(r);
    }
    let record =
        decode_leaf(&entry.leaf).map_err(|e| anyhow::anyhow!("leaf {}: {e}", entry.leaf_index))?;
    let e = record.event.unwrap_or_default();
    let logged_at = humantime::format_rfc3339_nanos(
        std::time::UNIX_EPOCH + std::time::Duration::from_nanos(record.logged_at),
    )
    .to_string();
    let kind = EventKind::try_from(e.event_kind)
        .map(|k| {
            k.as_str_name()
                .trim_start_matches("EVENT_KIND_")
                .to_ascii_lowercase()
        })
        .unwrap_or_else(|_| e.event_kind.to_string());
    let decision = Decision::try_from(e.decision)
        .map(|d| {
            d.as_str_name()
                .trim_start_matches("DECISION_")
                .to_ascii_lowercase()
        })
        .unwrap_or_else(|_| e.decision.to_string());
    Ok(vec![
        entry.leaf_index.to_string(),
        logged_at,
        e.event_id,
        kind,
        e.user_id,
        e.agent_id,
        e.tool_server,
        e.tool_name,
        e.session_id,
        e.correlation_id,
        e.trace_id,
        decision,
        e.data_classification,
        tier,
    ])
}

fn csv_field(v: &str) -> String {
    if v.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", v.replace('"', "\"\""))
    } else {
        v.to_owned()
    }
}

/// One result as a JSON object: the columns, the leaf (hex) and, with proofs, the proof.
fn json_line(found: &pb::FoundEvent, checkpoint: &str) -> anyhow::Result<String> {
    let cols = row(found)?;
    let mut obj = serde_json::Map::new();
    for (name, value) in COLUMNS.iter().zip(&cols) {
        obj.insert((*name).into(), serde_json::Value::String(value.clone()));
    }
    if let Some(entry) = &found.entry {
        obj.insert("leaf_index".into(), entry.leaf_index.into());
        obj.insert("leaf_hash".into(), hex::encode(&entry.leaf_hash).into());
        obj.insert("leaf".into(), hex::encode(&entry.leaf).into());
    }
    if let Some(p) = &found.proof {
        obj.insert("tree_size".into(), p.tree_size.into());
        obj.insert(
            "proof".into(),
            p.hashes.iter().map(hex::encode).collect::<Vec<_>>().into(),
        );
        obj.insert("checkpoint".into(), checkpoint.into());
    }
    Ok(serde_json::Value::Object(obj).to_string())
}

/// Runs the search (every page with `all_pages`) and writes the results to `out`; returns the
/// number of events written.
pub async fn find_events_cli(
    cmd: &FindCommand,
    out: &mut dyn std::io::Write,
) -> anyhow::Result<usize> {
    use anyhow::Context as _;
    let mut client = pb::investigate_client::InvestigateClient::connect(cmd.target.clone())
        .await
        .with_context(|| format!("connecting to {}", cmd.target))?
        .max_decoding_message_size(128 << 20);
    let bearer: tonic::metadata::MetadataValue<_> = format!("Bearer {}", cmd.token)
        .parse()
        .context("token is not a valid header value")?;
    let mut request = cmd.request.clone();
    let mut rows: Vec<Vec<String>> = Vec::new();
    let mut count = 0usize;
    if cmd.format == OutputFormat::Csv {
        writeln!(out, "{}", COLUMNS.join(","))?;
    }
    // Bounded: every page advances the position, and a log has finitely many leaves.
    loop {
        let mut r = Request::new(request.clone());
        r.metadata_mut().insert("authorization", bearer.clone());
        let page = client
            .find_events(r)
            .await
            .map_err(|s| anyhow::anyhow!("search refused: {:?}: {}", s.code(), s.message()))?
            .into_inner();
        let checkpoint = page.checkpoint.map(|c| c.note).unwrap_or_default();
        for found in &page.events {
            match cmd.format {
                OutputFormat::Table => rows.push(row(found)?),
                OutputFormat::Csv => writeln!(
                    out,
                    "{}",
                    row(found)?
                        .iter()
                        .map(|v| csv_field(v))
                        .collect::<Vec<_>>()
                        .join(",")
                )?,
                OutputFormat::Jsonl => writeln!(out, "{}", json_line(found, &checkpoint)?)?,
            }
            count += 1;
        }
        if page.next_page_token.is_empty() || !cmd.all_pages {
            if !page.next_page_token.is_empty() {
                eprintln!(
                    "more results: repeat with --page-token {} (or --all-pages)",
                    page.next_page_token
                );
            }
            break;
        }
        request.page_token = page.next_page_token;
    }
    if cmd.format == OutputFormat::Table {
        let shown = [0usize, 1, 2, 3, 4, 7, 8, 11, 13];
        let mut widths: Vec<usize> = shown.iter().map(|&c| COLUMNS[c].len()).collect();
        for r in &rows {
            for (w, &c) in widths.iter_mut().zip(&shown) {
                *w = (*w).max(r[c].chars().count());
            }
        }
        let line = |cells: Vec<&str>| {
            cells
                .iter()
                .zip(&widths)
                .map(|(c, w)| format!("{c:<w$}"))
                .collect::<Vec<_>>()
                .join("  ")
                .trim_end()
                .to_owned()
        };
        writeln!(out, "{}", line(shown.iter().map(|&c| COLUMNS[c]).collect()))?;
        for r in &rows {
            writeln!(
                out,
                "{}",
                line(shown.iter().map(|&c| r[c].as_str()).collect())
            )?;
        }
    }
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> pb::FindEventsRequest {
        pb::FindEventsRequest {
            tenant_id: "acme".into(),
            environment: "prod".into(),
            user_id: "alice".into(),
            limit: 10,
            justification: "case 1".into(),
            ..Default::default()
        }
    }

    #[test]
    fn tokens_round_trip_and_bind_the_filters() {
        let req = request();
        let digest = filter_digest(&req);
        let t = PageToken {
            tree_size: 1000,
            position: 17,
            newest_first: true,
            filter_digest: digest,
        };
        let text = t.encode();
        assert_eq!(PageToken::decode(&text, &digest, true).unwrap(), t);
        // Limit, justification and proofs are not part of the search's identity.
        let same = pb::FindEventsRequest {
            limit: 3,
            justification: "other".into(),
            with_proofs: true,
            ..req.clone()
        };
        assert_eq!(filter_digest(&same), digest);
        // Other filters, tenant or order: refused.
        for other in [
            pb::FindEventsRequest {
                user_id: "bob".into(),
                ..req.clone()
            },
            pb::FindEventsRequest {
                tenant_id: "evil".into(),
                ..req.clone()
            },
            pb::FindEventsRequest {
                from_time: 1,
                ..req.clone()
            },
        ] {
            let err = PageToken::decode(&text, &filter_digest(&other), true).unwrap_err();
            assert_eq!(err.code(), tonic::Code::InvalidArgument);
            assert!(err.message().contains("other tenant"), "{}", err.message());
        }
        let err = PageToken::decode(&text, &digest, false).unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
    }

    #[test]
    fn tampered_tokens_are_refused() {
        let digest = filter_digest(&request());
        let text = PageToken {
            tree_size: 1000,
            position: 17,
            newest_first: false,
            filter_digest: digest,
        }
        .encode();
        let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(&text)
            .unwrap();
        for byte in 0..raw.len() {
            let mut edited = raw.clone();
            edited[byte] ^= 0x01;
            let edited = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(edited);
            let err = PageToken::decode(&edited, &digest, false).unwrap_err();
            assert_eq!(err.code(), tonic::Code::InvalidArgument, "byte {byte}");
        }
        for junk in ["", "!!!", "AAAA", &text[..text.len() - 2]] {
            assert_eq!(
                PageToken::decode(junk, &digest, false).unwrap_err().code(),
                tonic::Code::InvalidArgument,
                "{junk:?}"
            );
        }
    }

    #[test]
    fn filters_are_checked() {
        let mut req = request();
        req.event_kind = 999;
        assert_eq!(
            filter_of(&req).unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
        let mut req = request();
        req.from_time = 10;
        req.to_time = 10;
        assert_eq!(
            filter_of(&req).unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
        let f = filter_of(&request()).unwrap();
        assert_eq!(f.user_id.as_deref(), Some("alice"));
        assert_eq!(f.session_id, None);
        assert!(describe(&request()).contains("user_id=\"alice\""));
    }
}
