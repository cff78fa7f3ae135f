//! `fsck`: walks every log of a store and rechecks it from the leaves up — leaf encoding, leaf
//! hashes, every stored tile, both indexes, every checkpoint's signature, root and `prev` chain
//! — reporting the first inconsistency of each log precisely.

use std::collections::BTreeSet;

use crate::checkpoint::{self, Checkpoint};
use crate::cosignature::{COSIGNATURE_V1_LEN, WitnessKey};
use crate::event::{self, EventId};
use crate::layout::{self, FORMAT_VERSION, LogId, LogRecord, LogState, Space, TileView};
use crate::merkle::{self, Hash, leaf_hash};
use crate::note::{Note, NoteSignature, VerifierKey};
use crate::query::IndexedField;
use crate::segments::SegmentRecord;
use crate::store::{Direction, Store, StoreError};
use std::sync::Arc;

use crate::tiles::{EdgeSnapshot, LogHashReader, TileEdge};

/// What fsck found in one log.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LogReport {
    pub origin: String,
    pub tree_size: u64,
    pub leaves_checked: u64,
    /// Leaves whose bytes were released to a warm/cold tier: their hashes were checked from
    /// the tiles and against the segment records; their contents are the archive's to verify.
    pub leaves_archived: u64,
    pub tiles_checked: u64,
    pub checkpoints_checked: u64,
    /// Witness cosignatures verified against the witness keys given to fsck.
    pub cosignatures_checked: u64,
    /// Stored cosignatures by witnesses whose keys fsck was not given: well-formed and tied to
    /// a stored checkpoint, but their signatures could not be checked.
    pub cosignatures_unverified: u64,
    /// The first inconsistency, if any.
    pub problem: Option<String>,
}

/// Result of a whole-store check.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FsckReport {
    pub logs: Vec<LogReport>,
    /// Problems not tied to one log (format version, registry, orphaned data).
    pub store_problems: Vec<String>,
}

impl FsckReport {
    pub fn is_clean(&self) -> bool {
        self.store_problems.is_empty() && self.logs.iter().all(|l| l.problem.is_none())
    }

    /// Every problem as one line each.
    pub fn problems(&self) -> Vec<String> {
        let mut out = self.store_problems.clone();
        out.extend(
            self.logs
                .iter()
                .filter_map(|l| l.problem.as_ref().map(|p| format!("{}: {p}", l.origin))),
        );
        out
    }
}

/// Checks everything in `store`. Checkpoint signatures must verify with one of `verifiers`;
/// stored witness cosignatures are checked for form only (see [`check_with_witnesses`]).
pub fn check(store: &dyn Store, verifiers: &[VerifierKey]) -> Result<FsckReport, StoreError> {
    check_with_witnesses(store, verifiers, &[])
}

/// [`check`], and every stored witness cosignature by one of `witnesses` must verify over the
/// checkpoint it is stored with (cosignatures by other witnesses are counted as unverified).
pub fn check_with_witnesses(
    store: &dyn Store,
    verifiers: &[VerifierKey],
    witnesses: &[WitnessKey],
) -> Result<FsckReport, StoreError> {
    let mut report = FsckReport::default();
    match store.get(Space::Meta, layout::META_FORMAT_VERSION)? {
        Some(v) if layout::decode_u32(&v) == Some(FORMAT_VERSION) => {}
        Some(v) => {
            report.store_problems.push(format!(
                "format_version is {:?}, this build reads {FORMAT_VERSION}",
                layout::decode_u32(&v)
            ));
            return Ok(report);
        }
        None => {
            report
                .store_problems
                .push("no format_version record: not an AuditLedger store".into());
            return Ok(report);
        }
    }
    let next_log_id = store
        .get(Space::Meta, layout::META_NEXT_LOG_ID)?
        .and_then(|v| layout::decode_u32(&v))
        .unwrap_or(0);
    let mut records: Vec<(LogId, Option<LogRecord>)> = Vec::new();
    let (start, end) = layout::meta_log_range();
    store.scan(
        Space::Meta,
        &start,
        Some(&end),
        Direction::Forward,
        &mut |k, v| {
            if let Some(id) = layout::parse_meta_log_key(k) {
                records.push((id, LogRecord::decode(v)));
            }
            true
        },
    )?;
    for (log_id, record) in records {
        let Some(record) = record else {
            report
                .store_problems
                .push(format!("log id {log_id}: malformed log record"));
            continue;
        };
        if log_id >= next_log_id {
            report.store_problems.push(format!(
                "log id {log_id} ({}) is not below next_log_id {next_log_id}",
                record.origin
            ));
        }
        report
            .logs
            .push(check_log(store, log_id, &record, verifiers, witnesses)?);
    }
    // Data under a log id nobody owns.
    for space in [
        Space::Leaves,
        Space::Tiles,
        Space::EventIds,
        Space::LeafHashes,
        Space::Checkpoints,
        Space::Fields,
    ] {
        let mut orphan = None;
        store.scan(
            space,
            &next_log_id.to_be_bytes(),
            None,
            Direction::Forward,
            &mut |k, _| {
                orphan = Some(hex::encode(k));
                false
            },
        )?;
        if let Some(k) = orphan {
            report.store_problems.push(format!(
                "{} holds key {k} of an unregistered log id",
                space.name()
            ));
        }
    }
    Ok(report)
}

fn count_keys(store: &dyn Store, space: Space, log_id: LogId) -> Result<u64, StoreError> {
    let (start, end) = layout::log_range(log_id);
    let mut n = 0u64;
    store.scan(
        space,
        &start,
        end.as_ref().map(|e| &e[..]),
        Direction::Forward,
        &mut |_, _| {
            n += 1;
            true
        },
    )?;
    Ok(n)
}

fn check_log(
    store: &dyn Store,
    log_id: LogId,
    record: &LogRecord,
    verifiers: &[VerifierKey],
    witnesses: &[WitnessKey],
) -> Result<LogReport, StoreError> {
    let mut report = LogReport {
        origin: record.origin.clone(),
        ..Default::default()
    };
    let state = match store.get(Space::Meta, &layout::meta_state_key(log_id))? {
        None => LogState::default(),
        Some(v) => match LogState::decode(&v) {
            Some(s) => s,
            None => {
                report.problem = Some("log state record is malformed".into());
                return Ok(report);
            }
        },
    };
    report.tree_size = state.tree_size;
    let indexed = match store.get(Space::Meta, &layout::meta_indexed_key(log_id))? {
        None => 0,
        Some(v) => match layout::decode_u64(&v) {
            Some(w) if w <= state.tree_size => w,
            _ => {
                report.problem =
                    Some("leaf-hash index watermark is malformed or beyond the tree size".into());
                return Ok(report);
            }
        },
    };
    let segments = match load_segments(store, log_id, record, &state)? {
        Ok(segments) => segments,
        Err(problem) => {
            report.problem = Some(problem);
            return Ok(report);
        }
    };
    let fields_from = match fields_from(store, log_id)? {
        Ok(f) => f,
        Err(problem) => {
            report.problem = Some(problem);
            return Ok(report);
        }
    };
    let mut field_entries = 0u64;
    let mut hashes_ahead = 0u64;
    let edge = match check_leaves_and_tiles(
        store,
        log_id,
        record,
        &state,
        indexed,
        &segments,
        &mut report,
        fields_from,
        &mut field_entries,
        &mut hashes_ahead,
    )? {
        Ok(edge) => Arc::new(edge),
        Err(problem) => {
            report.problem = Some(problem);
            return Ok(report);
        }
    };
    // Every segment record names the tree's own node for its range.
    let reader = LogHashReader::new(store, log_id, edge.clone());
    for seg in &segments {
        let node = merkle::NodeId::new(seg.bits, seg.start >> seg.bits);
        let root = match merkle::HashReader::read_hashes(&reader, &[node]) {
            Ok(h) => h[0],
            Err(e) => {
                report.problem = Some(format!("segment [{}, {}): {e}", seg.start, seg.end()));
                return Ok(report);
            }
        };
        if root != seg.root {
            report.problem = Some(format!(
                "segment [{}, {}) ({} tier): recorded root {} differs from the tree's {}",
                seg.start,
                seg.end(),
                seg.tier,
                hex::encode(seg.root),
                hex::encode(root)
            ));
            return Ok(report);
        }
    }
    drop(reader);
    // The leaf-hash index is asynchronous: it covers the leaves below its watermark, and
    // may hold correct entries of some above it.
    for (space, what, expected) in [
        (Space::EventIds, "event id", state.tree_size),
        (Space::LeafHashes, "leaf hash", indexed + hashes_ahead),
    ] {
        let n = count_keys(store, space, log_id)?;
        if n != expected {
            report.problem = Some(format!(
                "{what} index has {n} entries for {expected} indexed leaves (stray or missing entries)"
            ));
            return Ok(report);
        }
    }
    if let Err(problem) = check_event_id_targets(store, log_id, state.tree_size)? {
        report.problem = Some(problem);
        return Ok(report);
    }
    if let Some(from) = fields_from
        && let Err(problem) = check_field_index(
            store,
            log_id,
            state.tree_size,
            from..indexed,
            &segments,
            field_entries,
        )?
    {
        report.problem = Some(problem);
        return Ok(report);
    }
    if let Err(problem) =
        check_checkpoints(store, log_id, record, &state, edge, verifiers, &mut report)?
    {
        report.problem = Some(problem);
        return Ok(report);
    }
    if let Err(problem) = check_cosignatures(store, log_id, witnesses, &mut report)? {
        report.problem = Some(problem);
    }
    Ok(report)
}

/// Every stored witness cosignature of the log: a well-formed record, for a checkpoint that is
/// stored (and already checked by [`check_checkpoints`]), and, when its witness is among
/// `witnesses`, a valid signature over that checkpoint's note text.
fn check_cosignatures(
    store: &dyn Store,
    log_id: LogId,
    witnesses: &[WitnessKey],
    report: &mut LogReport,
) -> Check {
    let start = layout::meta_cosignature_prefix(log_id, 0);
    let mut records: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    store.scan(
        Space::Meta,
        &start,
        None,
        Direction::Forward,
        &mut |k, v| {
            if !k.starts_with(&start[..5]) {
                return false;
            }
            records.push((k.to_vec(), v.to_vec()));
            true
        },
    )?;
    for (key, value) in records {
        let Some((_, size, key_id, name)) = layout::parse_meta_cosignature_key(&key) else {
            return Ok(Err(format!(
                "malformed cosignature key {}",
                hex::encode(&key)
            )));
        };
        let who = format!("cosignature by {name}+{key_id:08x} for the checkpoint at size {size}");
        if value.len() != COSIGNATURE_V1_LEN {
            return Ok(Err(format!(
                "{who}: record has {} bytes, want {COSIGNATURE_V1_LEN}",
                value.len()
            )));
        }
        let Some(note) = store.get(Space::Checkpoints, &layout::checkpoint_key(log_id, size))?
        else {
            return Ok(Err(format!("{who}: no checkpoint is stored at that size")));
        };
        let Some(witness) = witnesses
            .iter()
            .find(|w| w.name() == name && w.key_id() == key_id)
        else {
            report.cosignatures_unverified += 1;
            continue;
        };
        let note = match Note::parse(&note) {
            Ok(note) => note,
            Err(e) => return Ok(Err(format!("{who}: its checkpoint: {e}"))),
        };
        // The record is the signature line's payload (timestamp ‖ signature), as served.
        let line = NoteSignature {
            name,
            key_id,
            signature: value,
        };
        if let Err(e) = witness.verify(note.text(), &line) {
            return Ok(Err(format!("{who}: {e}")));
        }
        report.cosignatures_checked += 1;
    }
    Ok(Ok(()))
}

type Check = Result<Result<(), String>, StoreError>;

/// Every event-id index entry points to a distinct leaf below the tree size; with as many
/// entries as leaves (checked before) every leaf then has exactly one. Hot leaves are looked up
/// by their event ids, but a leaf released to a warm or cold tier has no hot event id to look
/// up: without this, a damaged entry of an archived leaf would go unnoticed and a re-sent
/// event's duplicate receipt would name another leaf. (An entry's key — the event id itself —
/// of an archived leaf can only be checked against the archive.) One bit per leaf of memory.
fn check_event_id_targets(store: &dyn Store, log_id: LogId, tree_size: u64) -> Check {
    let mut seen = vec![0u64; tree_size.div_ceil(64) as usize];
    let mut bad: Option<String> = None;
    let (start, end) = layout::log_range(log_id);
    store.scan(
        Space::EventIds,
        &start,
        end.as_ref().map(|e| &e[..]),
        Direction::Forward,
        &mut |k, v| {
            let entry = hex::encode(k.get(4..).unwrap_or_default());
            match layout::decode_u64(v) {
                Some(leaf) if leaf < tree_size => {
                    let (word, bit) = ((leaf / 64) as usize, leaf % 64);
                    if seen[word] & (1 << bit) != 0 {
                        bad.get_or_insert_with(|| {
                            format!("leaf {leaf} has a second one (event id {entry})")
                        });
                    }
                    seen[word] |= 1 << bit;
                }
                Some(leaf) => {
                    bad.get_or_insert_with(|| {
                        format!(
                            "the entry of event id {entry} points to leaf {leaf}, beyond the tree size {tree_size}"
                        )
                    });
                }
                None => {
                    bad.get_or_insert_with(|| {
                        format!("the entry of event id {entry} is malformed ({} bytes)", v.len())
                    });
                }
            }
            true
        },
    )?;
    let Some(bad) = bad else {
        return Ok(Ok(()));
    };
    // The entries number the leaves: one that is wrong leaves some leaf without one.
    let orphan = (0..tree_size).find(|&leaf| seen[(leaf / 64) as usize] & (1 << (leaf % 64)) == 0);
    Ok(Err(match orphan {
        Some(leaf) => format!("leaf {leaf}: no event id index entry points to it; {bad}"),
        None => format!("event id index: {bad}"),
    }))
}

/// Leaves checked per batch of index lookups.
const CHUNK: u64 = 4096;

/// The log's segment records, checked for shape: size, alignment, within the tree.
fn load_segments(
    store: &dyn Store,
    log_id: LogId,
    record: &LogRecord,
    state: &LogState,
) -> Result<Result<Vec<SegmentRecord>, String>, StoreError> {
    let (from, to) = layout::meta_segment_range(log_id);
    let mut raw = Vec::new();
    store.scan(
        Space::Meta,
        &from,
        Some(&to),
        Direction::Forward,
        &mut |k, v| {
            raw.push((k.to_vec(), v.to_vec()));
            true
        },
    )?;
    let mut out = Vec::with_capacity(raw.len());
    for (k, v) in raw {
        let start = k.get(5..).and_then(layout::decode_u64);
        let Some(seg) = start.and_then(|start| SegmentRecord::decode(start, &v)) else {
            return Ok(Err(format!(
                "malformed segment record under key {}",
                hex::encode(&k)
            )));
        };
        if seg.bits != record.segment_bits || seg.bits < layout::TILE_HEIGHT {
            return Ok(Err(format!(
                "segment [{}, {}) has 2^{} leaves; this log's segments have 2^{}",
                seg.start,
                seg.end(),
                seg.bits,
                record.segment_bits
            )));
        }
        if seg.end() > state.tree_size {
            return Ok(Err(format!(
                "segment [{}, {}) reaches beyond the tree size {}",
                seg.start,
                seg.end(),
                state.tree_size
            )));
        }
        out.push(seg);
    }
    Ok(Ok(out))
}

#[allow(clippy::too_many_arguments)]
fn check_leaves_and_tiles(
    store: &dyn Store,
    log_id: LogId,
    record: &LogRecord,
    state: &LogState,
    indexed: u64,
    segments: &[SegmentRecord],
    report: &mut LogReport,
    fields_from: Option<u64>,
    field_entries: &mut u64,
    ahead: &mut u64,
) -> Result<Result<EdgeSnapshot, String>, StoreError> {
    let mut edge = TileEdge::new();
    let mut last_logged_at = 0u64;
    let mut next = 0u64;
    let mut released = segments.iter().filter(|s| s.hot_released).peekable();
    while next < state.tree_size {
        if let Some(seg) = released.next_if(|s| s.start == next) {
            let hashes = match archived_leaf_hashes(store, log_id, seg)? {
                Ok(h) => h,
                Err(p) => return Ok(Err(p)),
            };
            if let Err(p) = check_leaf_hash_index(store, log_id, next, &hashes, indexed, ahead)? {
                return Ok(Err(p));
            }
            if let Err(p) = hash_into_tiles(store, log_id, &mut edge, hashes, report)? {
                return Ok(Err(p));
            }
            report.leaves_archived += seg.end() - seg.start;
            next = seg.end();
            continue;
        }
        let mut chunk_end = (next + CHUNK).min(state.tree_size);
        if let Some(seg) = released.peek() {
            chunk_end = chunk_end.min(seg.start);
        }
        let mut leaves: Vec<(u64, Vec<u8>)> = Vec::with_capacity((chunk_end - next) as usize);
        let mut malformed = None;
        store.scan(
            Space::Leaves,
            &layout::leaf_key(log_id, next),
            Some(&layout::leaf_key(log_id, chunk_end)),
            Direction::Forward,
            &mut |k, v| match layout::parse_leaf_key(k) {
                Some((_, index)) => {
                    leaves.push((index, v.to_vec()));
                    true
                }
                None => {
                    malformed = Some(hex::encode(k));
                    false
                }
            },
        )?;
        if let Some(k) = malformed {
            return Ok(Err(format!("malformed leaf key {k}")));
        }
        for (offset, (index, _)) in leaves.iter().enumerate() {
            let expected = next + offset as u64;
            if *index != expected {
                return Ok(Err(format!("leaves [{expected}, {index}) are missing")));
            }
        }
        if (leaves.len() as u64) < chunk_end - next {
            let from = next + leaves.len() as u64;
            let to = scan_first_index(store, log_id, from)?
                .map_or(state.tree_size, |i| i.min(state.tree_size));
            return Ok(Err(format!("leaves [{from}, {to}) are missing")));
        }
        let mut ids = Vec::with_capacity(leaves.len());
        let mut hashes = Vec::with_capacity(leaves.len());
        let mut field_keys = Vec::new();
        for (index, leaf) in &leaves {
            // The search index is written with the leaf-hash index, under its watermark.
            let want_fields = fields_from
                .filter(|from| index >= from && *index < indexed)
                .map(|_| (log_id, &mut field_keys));
            match check_leaf(record, *index, leaf, &mut last_logged_at, want_fields) {
                Ok(id) => ids.push(id),
                Err(p) => return Ok(Err(p)),
            }
            hashes.push(leaf_hash(leaf));
        }
        if let Err(p) = check_field_entries(store, &field_keys)? {
            return Ok(Err(p));
        }
        *field_entries += field_keys.len() as u64;
        let id_keys: Vec<[u8; 20]> = ids
            .iter()
            .map(|id| layout::event_id_key(log_id, &id.0))
            .collect();
        if let Err(p) = check_index(store, Space::EventIds, "event id", next, &id_keys)? {
            return Ok(Err(p));
        }
        if let Err(p) = check_leaf_hash_index(store, log_id, next, &hashes, indexed, ahead)? {
            return Ok(Err(p));
        }
        if let Err(p) = hash_into_tiles(store, log_id, &mut edge, hashes, report)? {
            return Ok(Err(p));
        }
        report.leaves_checked += leaves.len() as u64;
        next = chunk_end;
    }
    if let Some(extra) = scan_first_index(store, log_id, state.tree_size)? {
        return Ok(Err(format!(
            "leaf {extra} exists beyond the recorded tree size {}",
            state.tree_size
        )));
    }
    // Only full tiles are stored (the right edge is rebuilt from leaves): anything beyond the
    // ones just compared is stray.
    let stored = count_keys(store, Space::Tiles, log_id)?;
    if stored != report.tiles_checked {
        return Ok(Err(format!(
            "{stored} tiles stored but the leaves make {} full tiles (stray or partial tiles)",
            report.tiles_checked
        )));
    }
    Ok(Ok(edge.snapshot()))
}

/// Extends the recomputed tree by `hashes` and compares every tile they complete with the
/// stored one.
fn hash_into_tiles(
    store: &dyn Store,
    log_id: LogId,
    edge: &mut TileEdge,
    hashes: Vec<Hash>,
    report: &mut LogReport,
) -> Check {
    let mut completed = Vec::new();
    for hash in hashes {
        edge.append(hash, &mut completed);
        for (tile, value) in completed.drain(..) {
            match compare_tile(store, log_id, tile, &value) {
                Ok(()) => report.tiles_checked += 1,
                Err(LeafProblem::Store(e)) => return Err(e),
                Err(LeafProblem::Bad(p)) => return Ok(Err(p)),
            }
        }
    }
    Ok(Ok(()))
}

/// Checks that `keys[i]` maps to leaf `first + i` in `space`.
fn check_index<K: AsRef<[u8]>>(
    store: &dyn Store,
    space: Space,
    what: &str,
    first: u64,
    keys: &[K],
) -> Check {
    let keys: Vec<&[u8]> = keys.iter().map(AsRef::as_ref).collect();
    let mut problem = None;
    store.multi_get(space, &keys, &mut |i, value| {
        if problem.is_some() {
            return;
        }
        let index = first + i as u64;
        match value.and_then(layout::decode_u64) {
            Some(found) if found == index => {}
            Some(found) => {
                problem = Some(format!("leaf {index}: {what} index points to leaf {found}"))
            }
            None => problem = Some(format!("leaf {index}: {what} index entry missing")),
        }
    })?;
    Ok(problem.map_or(Ok(()), Err))
}

/// Checks the leaf-hash index entries of leaves `first..`: below the watermark each must be
/// there, pointing to its leaf; above it (entries ingested before a crash lost the watermark
/// written after them, which the next open writes again) each may be missing but not wrong,
/// and those present are added to `ahead`.
fn check_leaf_hash_index(
    store: &dyn Store,
    log_id: LogId,
    first: u64,
    hashes: &[Hash],
    indexed: u64,
    ahead: &mut u64,
) -> Check {
    let below = (indexed.saturating_sub(first) as usize).min(hashes.len());
    let keys: Vec<[u8; 16]> = hashes
        .iter()
        .map(|h| layout::leaf_hash_key(log_id, h))
        .collect();
    if let Err(p) = check_index(store, Space::LeafHashes, "leaf hash", first, &keys[..below])? {
        return Ok(Err(p));
    }
    let above: Vec<&[u8]> = keys[below..].iter().map(|k| &k[..]).collect();
    let from = first + below as u64;
    let mut problem = None;
    store.multi_get(Space::LeafHashes, &above, &mut |i, value| {
        let index = from + i as u64;
        match value.map(layout::decode_u64) {
            None => {}
            Some(Some(found)) if found == index => *ahead += 1,
            Some(found) => {
                problem.get_or_insert_with(|| {
                    format!(
                        "leaf {index}: leaf hash index (above its watermark {indexed}) points to {}",
                        found.map_or("a malformed value".to_owned(), |f| format!("leaf {f}"))
                    )
                });
            }
        }
    })?;
    Ok(problem.map_or(Ok(()), Err))
}

/// The leaf hashes of a released segment, read from its level-0 tiles; no leaf of it may
/// remain in the hot store.
fn archived_leaf_hashes(
    store: &dyn Store,
    log_id: LogId,
    seg: &SegmentRecord,
) -> Result<Result<Vec<Hash>, String>, StoreError> {
    let range = format!("segment [{}, {}) ({} tier)", seg.start, seg.end(), seg.tier);
    if let Some(i) = scan_first_index(store, log_id, seg.start)?
        && i < seg.end()
    {
        return Ok(Err(format!(
            "{range} is recorded as released from the hot tier, but leaf {i} is still there"
        )));
    }
    let mut hashes = Vec::with_capacity((seg.end() - seg.start) as usize);
    for index in seg.start / layout::TILE_WIDTH..seg.end() / layout::TILE_WIDTH {
        let tile = layout::TileId { level: 0, index };
        let name = format!("{range}: tile (level 0, index {index})");
        let Some(bytes) = store.get(Space::Tiles, &layout::tile_key(log_id, tile))? else {
            return Ok(Err(format!("{name} is missing")));
        };
        let Some(view) = TileView::parse(&bytes).filter(|v| v.width() == layout::TILE_WIDTH) else {
            return Ok(Err(format!("{name} is malformed ({} bytes)", bytes.len())));
        };
        for pos in 0..layout::TILE_WIDTH {
            match view.node(0, pos) {
                Some(h) => hashes.push(h),
                None => return Ok(Err(format!("{name} lacks leaf hash {pos}"))),
            }
        }
    }
    Ok(Ok(hashes))
}

/// Index of the first stored leaf at or after `from`.
fn scan_first_index(
    store: &dyn Store,
    log_id: LogId,
    from: u64,
) -> Result<Option<u64>, StoreError> {
    let (_, end) = layout::log_range(log_id);
    let mut found = None;
    store.scan(
        Space::Leaves,
        &layout::leaf_key(log_id, from),
        end.as_ref().map(|e| &e[..]),
        Direction::Forward,
        &mut |k, _| {
            found = layout::parse_leaf_key(k).map(|(_, i)| i);
            false
        },
    )?;
    Ok(found)
}

enum LeafProblem {
    Store(StoreError),
    Bad(String),
}

impl From<StoreError> for LeafProblem {
    fn from(e: StoreError) -> Self {
        LeafProblem::Store(e)
    }
}

fn check_leaf(
    record: &LogRecord,
    index: u64,
    leaf: &[u8],
    last_logged_at: &mut u64,
    field_keys: Option<(LogId, &mut Vec<[u8; layout::FIELD_KEY_LEN]>)>,
) -> Result<EventId, String> {
    let bad = |m: String| format!("leaf {index}: {m}");
    let decoded = event::decode_leaf_strict(leaf).map_err(|e| bad(e.to_string()))?;
    let ev = decoded
        .event
        .as_ref()
        .ok_or_else(|| bad("no event".into()))?;
    if ev.tenant_id != record.tenant_id || ev.environment != record.environment {
        return Err(bad(format!(
            "event belongs to tenant {:?} environment {:?}, not this log",
            ev.tenant_id, ev.environment
        )));
    }
    if decoded.logged_at < *last_logged_at {
        return Err(bad(format!(
            "logged_at {} is before the previous leaf's {}",
            decoded.logged_at, last_logged_at
        )));
    }
    *last_logged_at = decoded.logged_at;
    if let Some((log_id, keys)) = field_keys {
        crate::query::hot_index_keys(log_id, index, ev, keys);
    }
    EventId::parse(&ev.event_id).map_err(|e| bad(format!("event_id: {e}")))
}

/// Where the search index starts for this log (`None`: a data directory from before the
/// index, not yet opened by a build that has it — nothing to check).
fn fields_from(
    store: &dyn Store,
    log_id: LogId,
) -> Result<Result<Option<u64>, String>, StoreError> {
    Ok(
        match store.get(Space::Meta, &layout::meta_fields_from_key(log_id))? {
            None => Ok(None),
            Some(v) => layout::decode_u64(&v)
                .map(Some)
                .ok_or_else(|| "search index start record is not 8 bytes".to_owned()),
        },
    )
}

/// The search-index entries the hot leaves of a chunk must have are there: each leaf is in
/// the posting list of its field value's bucket (or, written before posting lists, under a key
/// of its own with an empty value).
fn check_field_entries(store: &dyn Store, keys: &[[u8; layout::FIELD_KEY_LEN]]) -> Check {
    let lists = layout::field_postings(keys);
    let refs: Vec<&[u8]> = lists.iter().map(|(k, _, _)| &k[..]).collect();
    let mut problem = None;
    // Expected entries not in their bucket's list, to look up as entries of their own.
    let mut own: Vec<[u8; layout::FIELD_KEY_LEN]> = Vec::new();
    store.multi_get(Space::Fields, &refs, &mut |i, value| {
        if problem.is_some() {
            return;
        }
        let (key, base, expected) = &lists[i];
        let mut stored = Vec::new();
        if let Some(v) = value
            && layout::decode_postings(*base, v, &mut stored).is_none()
        {
            problem = Some(format!(
                "search index posting list {} is malformed",
                hex::encode(key)
            ));
            return;
        }
        for &leaf in expected {
            if stored.binary_search(&leaf).is_err() {
                let mut k = *key;
                k[13..].copy_from_slice(&leaf.to_be_bytes());
                own.push(k);
            }
        }
    })?;
    if let Some(p) = problem {
        return Ok(Err(p));
    }
    let refs: Vec<&[u8]> = own.iter().map(|k| &k[..]).collect();
    store.multi_get(Space::Fields, &refs, &mut |i, value| {
        if problem.is_none() && value != Some(&[][..]) {
            let (_, tag, _, leaf) = layout::parse_field_index_key(&own[i]).unwrap_or_default();
            let field = IndexedField::from_tag(tag).map_or("?", IndexedField::column);
            problem = Some(format!(
                "leaf {leaf}: search index entry for {field} missing"
            ));
        }
    })?;
    Ok(problem.map_or(Ok(()), Err))
}

/// Every search-index entry of the log names a hot-indexed field and a leaf below the tree
/// size; the entries of the hot leaves in `checked` (from where the index starts to the
/// indexer's watermark) number exactly `expected_hot` — the entries their contents call for,
/// each found present during the leaf walk — so none is stray or points to a leaf whose field
/// hashes differently. Entries of archived leaves can only be checked for shape here (their
/// contents are the archive's), and so can those past the watermark (the unsynced tail the
/// next open re-indexes). One sequential scan.
fn check_field_index(
    store: &dyn Store,
    log_id: LogId,
    tree_size: u64,
    checked: std::ops::Range<u64>,
    segments: &[SegmentRecord],
    expected_hot: u64,
) -> Check {
    let released: Vec<(u64, u64)> = segments
        .iter()
        .filter(|s| s.hot_released)
        .map(|s| (s.start, s.end()))
        .collect();
    let (start, end) = layout::log_range(log_id);
    let mut hot = 0u64;
    let mut bad = None;
    let mut leaves = Vec::new();
    store.scan(
        Space::Fields,
        &start,
        end.as_ref().map(|e| &e[..]),
        Direction::Forward,
        &mut |k, v| {
            let Some((_, tag, _, base)) = layout::parse_field_index_key(k) else {
                bad = Some(format!("search index key {} is malformed", hex::encode(k)));
                return false;
            };
            if !IndexedField::HOT_INDEXED.iter().any(|f| f.tag() == tag) {
                bad = Some(format!(
                    "search index entry {} has an unknown field tag",
                    hex::encode(k)
                ));
                return false;
            }
            leaves.clear();
            if layout::decode_postings(base, v, &mut leaves).is_none() {
                bad = Some(format!(
                    "search index posting list {} is malformed",
                    hex::encode(k)
                ));
                return false;
            }
            for &leaf in &leaves {
                if leaf >= tree_size {
                    bad = Some(format!(
                        "search index entry {} points to leaf {leaf}, beyond the tree size {tree_size}",
                        hex::encode(k)
                    ));
                    return false;
                }
                if checked.contains(&leaf)
                    && !released.iter().any(|(a, b)| (*a..*b).contains(&leaf))
                {
                    hot += 1;
                }
            }
            true
        },
    )?;
    if let Some(b) = bad {
        return Ok(Err(b));
    }
    if hot != expected_hot {
        return Ok(Err(format!(
            "search index has {hot} entries for hot leaves whose fields call for {expected_hot} \
             (stray entries, or entries whose field value does not hash to the key)"
        )));
    }
    Ok(Ok(()))
}

fn compare_tile(
    store: &dyn Store,
    log_id: LogId,
    tile: layout::TileId,
    expected: &[u8],
) -> Result<(), LeafProblem> {
    let name = format!("tile (level {}, index {})", tile.level, tile.index);
    let stored = store.get(Space::Tiles, &layout::tile_key(log_id, tile))?;
    let Some(stored) = stored else {
        return Err(LeafProblem::Bad(format!("{name} is missing")));
    };
    if stored == expected {
        return Ok(());
    }
    let Some(view) = TileView::parse(&stored) else {
        return Err(LeafProblem::Bad(format!(
            "{name} is malformed ({} bytes)",
            stored.len()
        )));
    };
    let want = TileView::parse(expected).expect("recomputed tile parses");
    if view.width() != want.width() {
        return Err(LeafProblem::Bad(format!(
            "{name} has width {}, expected {}",
            view.width(),
            want.width()
        )));
    }
    // Name the first wrong node; at level 0 that is a leaf.
    for rel in 0..layout::TILE_HEIGHT {
        for pos in 0..layout::nodes_at(want.width(), rel) {
            if view.node(rel, pos) != want.node(rel, pos) {
                let node_index = (tile.index << (layout::TILE_HEIGHT - rel)) + pos;
                let level = tile.level * layout::TILE_HEIGHT + rel;
                let what = if level == 0 {
                    format!(
                        "leaf {node_index}: stored leaf hash differs from BLAKE3 of the leaf bytes"
                    )
                } else {
                    format!(
                        "tree node (level {level}, index {node_index}) differs from its recomputed hash"
                    )
                };
                let stored_hash = view.node(rel, pos).map(hex::encode).unwrap_or_default();
                return Err(LeafProblem::Bad(format!(
                    "{what} (in {name}: stored {stored_hash})"
                )));
            }
        }
    }
    Err(LeafProblem::Bad(format!(
        "{name} differs from its recomputed value"
    )))
}

fn check_checkpoints(
    store: &dyn Store,
    log_id: LogId,
    record: &LogRecord,
    state: &LogState,
    edge: Arc<EdgeSnapshot>,
    verifiers: &[VerifierKey],
    report: &mut LogReport,
) -> Check {
    let mut notes: Vec<(u64, Vec<u8>)> = Vec::new();
    let (start, end) = layout::log_range(log_id);
    store.scan(
        Space::Checkpoints,
        &start,
        end.as_ref().map(|e| &e[..]),
        Direction::Forward,
        &mut |k, v| {
            notes.push((layout::decode_u64(&k[4..]).unwrap_or(u64::MAX), v.to_vec()));
            true
        },
    )?;
    let reader = LogHashReader::new(store, log_id, edge);
    let mut previous: Option<Checkpoint> = None;
    let mut seen_sizes = BTreeSet::new();
    for (size, note) in notes {
        let name = format!("checkpoint at size {size}");
        let opened = match checkpoint::open(&note, verifiers) {
            Ok(o) => o,
            Err(e) => return Ok(Err(format!("{name}: {e}"))),
        };
        let cp = opened.checkpoint;
        if cp.origin != record.origin {
            return Ok(Err(format!(
                "{name}: origin {:?} is not the log's",
                cp.origin
            )));
        }
        if cp.tree_size != size || !seen_sizes.insert(size) {
            return Ok(Err(format!("{name}: note says tree size {}", cp.tree_size)));
        }
        if size > state.tree_size {
            return Ok(Err(format!(
                "{name}: beyond the tree size {}",
                state.tree_size
            )));
        }
        let root: Hash = match merkle::root(&reader, size) {
            Ok(r) => r,
            Err(e) => return Ok(Err(format!("{name}: computing root: {e}"))),
        };
        if root != cp.root_hash {
            return Ok(Err(format!(
                "{name}: signed root {} differs from the root of the stored tree {}",
                hex::encode(cp.root_hash),
                hex::encode(root)
            )));
        }
        match (&previous, cp.prev) {
            (None, None) => {}
            (None, Some(_)) => return Ok(Err(format!("{name}: first checkpoint has a prev line"))),
            (Some(_), None) => return Ok(Err(format!("{name}: missing prev line"))),
            (Some(p), Some(prev)) => {
                if p.body_hash() != prev {
                    return Ok(Err(format!(
                        "{name}: prev does not match the checkpoint at size {} (chain broken)",
                        p.tree_size
                    )));
                }
                if cp.time < p.time {
                    return Ok(Err(format!("{name}: time goes backwards")));
                }
            }
        }
        report.checkpoints_checked += 1;
        previous = Some(cp);
    }
    Ok(Ok(()))
}

#[cfg(test)]
mod search_index_tests {
    use std::sync::{Arc, RwLock};

    use super::*;
    use crate::event::{AuditEvent, EventKind};
    use crate::keys::Keyring;
    use crate::note::SignerKey;
    use crate::query::Order;
    use crate::store::WriteBatch;
    use crate::store::memory::MemoryStore;
    use crate::{Ledger, LedgerOptions};

    fn signer() -> SignerKey {
        SignerKey::from_seed("auditledger.local", &[9u8; 32]).unwrap()
    }

    fn open(store: &Arc<dyn Store>) -> Ledger {
        let mut ring = Keyring::default();
        ring.add_existing(signer(), None, 0);
        Ledger::open(
            store.clone(),
            Arc::new(RwLock::new(ring)),
            LedgerOptions::default(),
        )
        .unwrap()
    }

    fn event(n: u64) -> AuditEvent {
        AuditEvent {
            event_id: format!("01936f0e-7a2b-7c3d-8e4f-{n:012x}"),
            event_kind: EventKind::ToolCall as i32,
            tenant_id: "acme".into(),
            environment: "prod".into(),
            occurred_at: 1_763_700_000_000_000_000 + n,
            tool_name: "t".into(),
            user_id: format!("user-{}", n % 13),
            session_id: if n.is_multiple_of(2) {
                format!("s-{}", n % 5)
            } else {
                String::new()
            },
            ..Default::default()
        }
    }

    /// fsck verifies stored witness cosignatures whose witness keys it is given, counts the
    /// others, and names a forged one, one for a size without a checkpoint, and a truncated one.
    #[test]
    fn witness_cosignatures_are_verified_or_counted() {
        use crate::cosignature::WitnessSigner;
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let ledger = open(&store);
        ledger.append_blocking("gw", &[event(1), event(2)]).unwrap();
        ledger.checkpoint_now().unwrap();
        let log = ledger.log("acme", "prod").unwrap();
        let cp = log.latest_checkpoint().unwrap();
        let size = cp.checkpoint.tree_size;
        let text = crate::note::Note::parse(cp.note.as_bytes())
            .unwrap()
            .text()
            .to_owned();
        let w1 = WitnessSigner::from_seed("w1.example", &[21; 32]).unwrap();
        let w2 = WitnessSigner::from_seed("w2.example", &[22; 32]).unwrap();
        log.store_cosignatures(
            size,
            &[
                w1.cosign(&text, 1000).unwrap(),
                w2.cosign(&text, 1001).unwrap(),
            ],
        )
        .unwrap();
        let run = |witnesses: &[WitnessKey]| {
            let report =
                check_with_witnesses(store.as_ref(), &[signer().verifier()], witnesses).unwrap();
            let l = report
                .logs
                .iter()
                .find(|l| l.origin == log.origin())
                .unwrap();
            (
                l.cosignatures_checked,
                l.cosignatures_unverified,
                report.problems().join("\n"),
            )
        };
        let both = [w1.witness_key(), w2.witness_key()];
        assert_eq!(run(&both), (2, 0, String::new()));
        assert_eq!(run(&both[..1]), (1, 1, String::new()));
        assert_eq!(run(&[]), (0, 2, String::new()));

        let log_id = layout::decode_u32(
            &store
                .get(Space::Meta, &layout::meta_origin_key(log.origin()))
                .unwrap()
                .unwrap(),
        )
        .unwrap();
        let w2_key = layout::meta_cosignature_key(log_id, size, both[1].key_id(), "w2.example");
        let genuine = store.get(Space::Meta, &w2_key).unwrap().unwrap();
        let put = |key: Vec<u8>, value: Vec<u8>| {
            let mut b = WriteBatch::new();
            b.put(Space::Meta, key, value);
            store.write(b, true).unwrap();
        };
        // One bit of w2's signature flipped: caught with w2's key; without it, only counted
        // as not verified.
        let mut forged = genuine.clone();
        forged[20] ^= 1;
        put(w2_key.clone(), forged);
        let (_, _, problems) = run(&both);
        assert!(
            problems.contains(&format!(
                "cosignature by w2.example+{:08x} for the checkpoint at size {size}",
                both[1].key_id()
            )) && problems.contains("does not verify"),
            "{problems}"
        );
        assert_eq!(run(&both[..1]), (1, 1, String::new()));
        put(w2_key.clone(), genuine.clone());
        assert_eq!(run(&both), (2, 0, String::new()));
        // A cosignature stored for a size that has no checkpoint.
        let stray = layout::meta_cosignature_key(log_id, size + 5, both[0].key_id(), "w1.example");
        put(stray.clone(), genuine.clone());
        let (_, _, problems) = run(&both);
        assert!(
            problems.contains(&format!("size {}: no checkpoint is stored", size + 5)),
            "{problems}"
        );
        let mut b = WriteBatch::new();
        b.delete(Space::Meta, stray);
        store.write(b, true).unwrap();
        // A truncated record.
        put(w2_key, genuine[..71].to_vec());
        let (_, _, problems) = run(&[]);
        assert!(
            problems.contains("record has 71 bytes, want 72"),
            "{problems}"
        );
    }

    fn problems(store: &Arc<dyn Store>) -> String {
        check(store.as_ref(), &[signer().verifier()])
            .unwrap()
            .problems()
            .join("\n")
    }

    fn candidates(ledger: &Ledger, field: IndexedField, value: &str, order: Order) -> Vec<u64> {
        ledger
            .log("acme", "prod")
            .unwrap()
            .index_candidates(field, value, 0, u64::MAX, order, 1000)
            .unwrap()
    }

    fn put(store: &Arc<dyn Store>, space: Space, key: &[u8]) {
        let mut b = WriteBatch::new();
        b.put(space, key, Vec::new());
        store.write(b, true).unwrap();
    }

    fn delete(store: &Arc<dyn Store>, space: Space, key: &[u8]) {
        let mut b = WriteBatch::new();
        b.delete(space, key);
        store.write(b, true).unwrap();
    }

    /// An ingest of the indexes made durable before a crash lost the watermark written after
    /// it: entries above the watermark are accepted when they point to their own leaf, and
    /// named when they do not; a missing entry below it is still a problem.
    #[test]
    fn leaf_hash_entries_above_the_watermark_must_point_to_their_leaf() {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let ledger = open(&store);
        ledger
            .append_blocking("gw", &(0..40).map(event).collect::<Vec<_>>())
            .unwrap();
        let log = ledger.log("acme", "prod").unwrap();
        let hash = |i| log.leaf_hash(i).unwrap();
        ledger.close().unwrap();
        assert_eq!(problems(&store), "");
        let set = |space: Space, key: &[u8], value: u64| {
            let mut b = WriteBatch::new();
            b.put(space, key, value.to_be_bytes());
            store.write(b, true).unwrap();
        };
        set(Space::Meta, &layout::meta_indexed_key(0), 25);
        assert_eq!(
            problems(&store),
            "",
            "correct entries of leaves 25..40 above the watermark"
        );
        delete(
            &store,
            Space::LeafHashes,
            &layout::leaf_hash_key(0, &hash(30)),
        );
        assert_eq!(
            problems(&store),
            "",
            "an entry above the watermark may be missing"
        );
        set(Space::LeafHashes, &layout::leaf_hash_key(0, &hash(31)), 7);
        let found = problems(&store);
        assert!(
            found.contains("leaf 31: leaf hash index (above its watermark 25) points to leaf 7"),
            "{found}"
        );
        set(Space::LeafHashes, &layout::leaf_hash_key(0, &hash(31)), 31);
        delete(
            &store,
            Space::LeafHashes,
            &layout::leaf_hash_key(0, &hash(24)),
        );
        let found = problems(&store);
        assert!(
            found.contains("leaf 24: leaf hash index entry missing"),
            "{found}"
        );
        set(Space::LeafHashes, &layout::leaf_hash_key(0, &hash(24)), 24);
        // Reopening re-indexes from the watermark (leaf 30's entry too).
        let ledger = open(&store);
        ledger.close().unwrap();
        assert_eq!(problems(&store), "");
        assert!(
            store
                .get(Space::LeafHashes, &layout::leaf_hash_key(0, &hash(30)))
                .unwrap()
                .is_some()
        );
    }

    #[test]
    fn appends_index_fields_and_fsck_checks_the_entries() {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let ledger = open(&store);
        ledger
            .append_blocking("gw", &(0..300).map(event).collect::<Vec<_>>())
            .unwrap();
        let want: Vec<u64> = (0..300).filter(|n| n % 13 == 3).collect();
        assert_eq!(
            candidates(&ledger, IndexedField::UserId, "user-3", Order::OldestFirst),
            want
        );
        let mut rev = want.clone();
        rev.reverse();
        assert_eq!(
            candidates(&ledger, IndexedField::UserId, "user-3", Order::NewestFirst),
            rev
        );
        // Empty values are not indexed; bounds and max are honoured.
        assert!(candidates(&ledger, IndexedField::SessionId, "", Order::OldestFirst).is_empty());
        let log = ledger.log("acme", "prod").unwrap();
        assert_eq!(
            log.index_candidates(
                IndexedField::SessionId,
                "s-2",
                10,
                40,
                Order::OldestFirst,
                2
            )
            .unwrap(),
            [12, 22]
        );
        assert_eq!(
            log.index_candidates(
                IndexedField::EventId,
                &event(7).event_id,
                0,
                300,
                Order::NewestFirst,
                5
            )
            .unwrap(),
            [7]
        );
        ledger.close().unwrap();
        assert_eq!(problems(&store), "");

        // user-3's posting list (bucket 0) rewritten: without leaf 3 (missing), with leaf 5
        // (not user-3's: stray), with leaf 300 (beyond the tree), malformed.
        let user3 = layout::field_value_hash("user-3");
        let key = |leaf| layout::field_index_key(0, IndexedField::UserId.tag(), &user3, leaf);
        let set_list = |leaves: &[u64]| {
            let mut b = WriteBatch::new();
            b.put(Space::Fields, key(0), layout::encode_postings(0, leaves));
            store.write(b, true).unwrap();
        };
        let with = |extra: u64| {
            let mut l = want.clone();
            l.push(extra);
            l.sort_unstable();
            l
        };
        set_list(&want[1..]);
        assert!(
            problems(&store).contains("leaf 3: search index entry for user_id missing"),
            "{}",
            problems(&store)
        );
        set_list(&with(5));
        assert!(
            problems(&store).contains("stray entries"),
            "{}",
            problems(&store)
        );
        set_list(&with(300));
        assert!(
            problems(&store).contains("beyond the tree size 300"),
            "{}",
            problems(&store)
        );
        let mut b = WriteBatch::new();
        b.put(Space::Fields, key(0), vec![0x80]);
        store.write(b, true).unwrap();
        assert!(
            problems(&store).contains("is malformed"),
            "{}",
            problems(&store)
        );
        // An entry from before posting lists (its own key, empty value) stands for its leaf:
        // leaf 16 moved out of the list into one is consistent and still found, in order.
        set_list(
            &want
                .iter()
                .copied()
                .filter(|&l| l != 16)
                .collect::<Vec<_>>(),
        );
        put(&store, Space::Fields, &key(16));
        assert_eq!(problems(&store), "");
        let ledger = open(&store);
        assert_eq!(
            candidates(&ledger, IndexedField::UserId, "user-3", Order::OldestFirst),
            want
        );
        assert_eq!(
            candidates(&ledger, IndexedField::UserId, "user-3", Order::NewestFirst),
            rev
        );
        ledger.close().unwrap();
        set_list(&want);
        delete(&store, Space::Fields, &key(16));
        assert_eq!(problems(&store), "");
    }

    #[test]
    fn a_data_dir_from_before_the_index_is_indexed_at_open() {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let ledger = open(&store);
        ledger
            .append_blocking("gw", &(0..200).map(event).collect::<Vec<_>>())
            .unwrap();
        let before = candidates(&ledger, IndexedField::UserId, "user-4", Order::OldestFirst);
        assert!(!before.is_empty());
        ledger.close().unwrap();
        // Remove every trace of the index, as in a data directory written before it.
        let mut keys = Vec::new();
        store
            .scan(Space::Fields, &[], None, Direction::Forward, &mut |k, _| {
                keys.push(k.to_vec());
                true
            })
            .unwrap();
        assert!(!keys.is_empty());
        for k in &keys {
            delete(&store, Space::Fields, k);
        }
        delete(&store, Space::Meta, &layout::meta_fields_from_key(0));
        assert_eq!(problems(&store), "", "no index yet is not a problem");
        let ledger = open(&store);
        assert_eq!(
            ledger
                .log("acme", "prod")
                .unwrap()
                .fields_indexed_from()
                .unwrap(),
            0
        );
        assert_eq!(
            candidates(&ledger, IndexedField::UserId, "user-4", Order::OldestFirst),
            before
        );
        ledger.close().unwrap();
        assert_eq!(problems(&store), "");
    }
}
