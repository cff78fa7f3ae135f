//! Every key and value the ledger stores, byte by byte (mirrored in `docs/storage-format.md`).
//!
//! All integers are big-endian so that byte order is numeric order and range scans walk a log
//! in leaf order. A `log_id` is a 4-byte number assigned when a log is first written; the
//! origin ↔ log_id mapping lives in [`Space::Meta`].
//!
//! Bump [`FORMAT_VERSION`] on any incompatible change; the store refuses to open data of
//! another version.

use crate::merkle::{HASH_LEN, Hash, NodeId};

/// On-disk format version, stored under [`META_FORMAT_VERSION`].
pub const FORMAT_VERSION: u32 = 1;

/// Tile height: a tile holds 2^8 = 256 nodes of its base level and every node above them
/// inside the tile (levels +1 … +7), so a proof touches at most one tile per 8 tree levels.
pub const TILE_HEIGHT: u8 = 8;
/// Nodes across the base of a full tile.
pub const TILE_WIDTH: u64 = 1 << TILE_HEIGHT;

/// Key spaces (RocksDB column families).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Space {
    /// Format version, log registry, per-log state.
    Meta,
    /// `log_id ‖ leaf_index` → leaf bytes.
    Leaves,
    /// `log_id ‖ tile_level ‖ tile_index` → tile value.
    Tiles,
    /// `log_id ‖ uuid(16)` → leaf_index.
    EventIds,
    /// `log_id ‖ leaf_hash[..12]` → leaf_index (maintained asynchronously by the indexer).
    LeafHashes,
    /// `log_id ‖ tree_size` → signed checkpoint note.
    Checkpoints,
    /// `log_id ‖ field tag ‖ BLAKE3(value)[..8] ‖ leaf_index` → empty: the search indexes
    /// ([`field_index_key`]), written by the indexer thread with the leaf-hash entries.
    Fields,
}

impl Space {
    pub const ALL: [Space; 7] = [
        Space::Meta,
        Space::Leaves,
        Space::Tiles,
        Space::EventIds,
        Space::LeafHashes,
        Space::Checkpoints,
        Space::Fields,
    ];

    /// Column family name.
    pub const fn name(self) -> &'static str {
        match self {
            Space::Meta => "meta",
            Space::Leaves => "leaves",
            Space::Tiles => "tiles",
            Space::EventIds => "event_ids",
            Space::LeafHashes => "leaf_hashes",
            Space::Checkpoints => "checkpoints",
            Space::Fields => "field_index",
        }
    }
}

/// Numeric id of a log inside one store.
pub type LogId = u32;

// ---- Meta ----------------------------------------------------------------------------------

/// `"format_version"` → u32 [`FORMAT_VERSION`].
pub const META_FORMAT_VERSION: &[u8] = b"format_version";
/// `"next_log_id"` → u32, the id the next new log gets.
pub const META_NEXT_LOG_ID: &[u8] = b"next_log_id";

const META_ORIGIN_PREFIX: u8 = b'O';
const META_LOG_PREFIX: u8 = b'L';
const META_STATE_PREFIX: u8 = b'S';
const META_INDEXED_PREFIX: u8 = b'H';
const META_SEGMENT_PREFIX: u8 = b'G';
const META_HOLD_PREFIX: u8 = b'J';
const META_COSIGNATURE_PREFIX: u8 = b'W';
const META_FIELDS_FROM_PREFIX: u8 = b'F';

/// `'O' ‖ origin bytes` → u32 log_id.
pub fn meta_origin_key(origin: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + origin.len());
    k.push(META_ORIGIN_PREFIX);
    k.extend_from_slice(origin.as_bytes());
    k
}

/// `'L' ‖ log_id` → [`LogRecord`].
pub fn meta_log_key(log_id: LogId) -> [u8; 5] {
    prefixed(META_LOG_PREFIX, log_id)
}

/// First and one-past-last keys of every `'L'` record.
pub fn meta_log_range() -> ([u8; 1], [u8; 1]) {
    ([META_LOG_PREFIX], [META_LOG_PREFIX + 1])
}

/// `'S' ‖ log_id` → [`LogState`], rewritten by every commit that appends to the log.
pub fn meta_state_key(log_id: LogId) -> [u8; 5] {
    prefixed(META_STATE_PREFIX, log_id)
}

/// `'H' ‖ log_id` → u64: leaves `[0, value)` have their `leaf_hashes` and `fields` entries
/// (the indexer's watermark; written in the same batch as the entries).
pub fn meta_indexed_key(log_id: LogId) -> [u8; 5] {
    prefixed(META_INDEXED_PREFIX, log_id)
}

/// `'F' ‖ log_id` → u64: every leaf from this index on has its [`Space::Fields`] entries.
/// 0 for a log created with the search indexes (written with the log's first leaves); for a
/// log of an older data directory, the first leaf after its last released segment (the open
/// indexed its hot leaves; released leaves below it are searched by scanning).
pub fn meta_fields_from_key(log_id: LogId) -> [u8; 5] {
    prefixed(META_FIELDS_FROM_PREFIX, log_id)
}

/// `'G' ‖ log_id ‖ start u64` (13 bytes) → [`crate::segments::SegmentRecord`]: a segment of
/// the log that was archived to a warm or cold tier.
pub fn meta_segment_key(log_id: LogId, start: u64) -> [u8; 13] {
    let mut k = [0u8; 13];
    k[..5].copy_from_slice(&prefixed(META_SEGMENT_PREFIX, log_id));
    k[5..].copy_from_slice(&start.to_be_bytes());
    k
}

/// First and one-past-last keys of one log's `'G'` records.
pub fn meta_segment_range(log_id: LogId) -> ([u8; 5], [u8; 5]) {
    let start = prefixed(META_SEGMENT_PREFIX, log_id);
    let end = match log_id.checked_add(1) {
        Some(next) => prefixed(META_SEGMENT_PREFIX, next),
        None => [META_SEGMENT_PREFIX + 1, 0, 0, 0, 0],
    };
    (start, end)
}

/// `'J' ‖ hold_id (UTF-8)` → protobuf `LegalHold` ([`crate::holds`]).
pub fn meta_hold_key(hold_id: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + hold_id.len());
    k.push(META_HOLD_PREFIX);
    k.extend_from_slice(hold_id.as_bytes());
    k
}

/// First and one-past-last keys of every `'J'` record.
pub fn meta_hold_range() -> ([u8; 1], [u8; 1]) {
    ([META_HOLD_PREFIX], [META_HOLD_PREFIX + 1])
}

/// `'W' ‖ log_id u32 ‖ tree_size u64 ‖ key_id u32 ‖ witness name (UTF-8)` → `timestamp u64 ‖
/// Ed25519 signature [64]` (72 bytes): a witness's `cosignature/v1` on the checkpoint of that
/// size (C2SP tlog-cosignature, see [`crate::cosignature`]); the value is the signature line's
/// payload after its key ID. One record per witness and checkpoint.
pub fn meta_cosignature_key(log_id: LogId, tree_size: u64, key_id: u32, name: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(17 + name.len());
    k.extend_from_slice(&meta_cosignature_prefix(log_id, tree_size));
    k.extend_from_slice(&key_id.to_be_bytes());
    k.extend_from_slice(name.as_bytes());
    k
}

/// The 13-byte prefix shared by every cosignature record of one checkpoint.
pub fn meta_cosignature_prefix(log_id: LogId, tree_size: u64) -> [u8; 13] {
    let mut k = [0u8; 13];
    k[..5].copy_from_slice(&prefixed(META_COSIGNATURE_PREFIX, log_id));
    k[5..].copy_from_slice(&tree_size.to_be_bytes());
    k
}

fn prefixed(prefix: u8, log_id: LogId) -> [u8; 5] {
    let mut k = [0u8; 5];
    k[0] = prefix;
    k[1..].copy_from_slice(&log_id.to_be_bytes());
    k
}

/// Splits a cosignature key into (log_id, tree_size, key_id, witness name).
pub fn parse_meta_cosignature_key(key: &[u8]) -> Option<(LogId, u64, u32, String)> {
    if key.len() < 18 || key[0] != META_COSIGNATURE_PREFIX {
        return None;
    }
    let name = String::from_utf8(key[17..].to_vec()).ok()?;
    Some((
        decode_u32(&key[1..5])?,
        decode_u64(&key[5..13])?,
        decode_u32(&key[13..17])?,
        name,
    ))
}

/// Parses the log_id out of a `'L'` key.
pub fn parse_meta_log_key(key: &[u8]) -> Option<LogId> {
    match key {
        [META_LOG_PREFIX, a, b, c, d] => Some(u32::from_be_bytes([*a, *b, *c, *d])),
        _ => None,
    }
}

/// Identity of a log, written once when the log is created.
///
/// Value: `version u8 (=1) ‖ segment_bits u8 ‖ created_at u64 (unix nanos) ‖
/// tenant_len u16 ‖ tenant ‖ env_len u16 ‖ environment ‖ origin_len u16 ‖ origin`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogRecord {
    pub segment_bits: u8,
    pub created_at: u64,
    pub tenant_id: String,
    pub environment: String,
    pub origin: String,
}

impl LogRecord {
    pub fn encode(&self) -> Vec<u8> {
        let mut v = vec![1u8, self.segment_bits];
        v.extend_from_slice(&self.created_at.to_be_bytes());
        for s in [&self.tenant_id, &self.environment, &self.origin] {
            v.extend_from_slice(&(s.len() as u16).to_be_bytes());
            v.extend_from_slice(s.as_bytes());
        }
        v
    }

    pub fn decode(bytes: &[u8]) -> Option<LogRecord> {
        let mut r = Reader(bytes);
        if r.u8()? != 1 {
            return None;
        }
        let segment_bits = r.u8()?;
        let created_at = r.u64()?;
        let tenant_id = r.string()?;
        let environment = r.string()?;
        let origin = r.string()?;
        r.0.is_empty().then_some(LogRecord {
            segment_bits,
            created_at,
            tenant_id,
            environment,
            origin,
        })
    }
}

/// Mutable per-log state, written in the same batch as the leaves it describes.
///
/// Value: `tree_size u64 ‖ last_logged_at u64` (16 bytes).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LogState {
    pub tree_size: u64,
    pub last_logged_at: u64,
}

impl LogState {
    pub fn encode(&self) -> [u8; 16] {
        let mut v = [0u8; 16];
        v[..8].copy_from_slice(&self.tree_size.to_be_bytes());
        v[8..].copy_from_slice(&self.last_logged_at.to_be_bytes());
        v
    }

    pub fn decode(bytes: &[u8]) -> Option<LogState> {
        let mut r = Reader(bytes);
        let state = LogState {
            tree_size: r.u64()?,
            last_logged_at: r.u64()?,
        };
        r.0.is_empty().then_some(state)
    }
}

pub(crate) struct Reader<'a>(pub(crate) &'a [u8]);

impl Reader<'_> {
    pub(crate) fn take(&mut self, n: usize) -> Option<&[u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Some(head)
    }
    pub(crate) fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }
    pub(crate) fn u16(&mut self) -> Option<u16> {
        Some(u16::from_be_bytes(self.take(2)?.try_into().ok()?))
    }
    pub(crate) fn u64(&mut self) -> Option<u64> {
        Some(u64::from_be_bytes(self.take(8)?.try_into().ok()?))
    }
    pub(crate) fn string(&mut self) -> Option<String> {
        let len = self.u16()? as usize;
        String::from_utf8(self.take(len)?.to_vec()).ok()
    }
}

/// Decodes a big-endian u32 value.
pub fn decode_u32(bytes: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(bytes.try_into().ok()?))
}

/// Decodes a big-endian u64 value.
pub fn decode_u64(bytes: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(bytes.try_into().ok()?))
}

// ---- Leaves, event ids, leaf hashes, checkpoints -------------------------------------------

/// `log_id u32 ‖ leaf_index u64` (12 bytes) → leaf bytes.
pub fn leaf_key(log_id: LogId, leaf_index: u64) -> [u8; 12] {
    let mut k = [0u8; 12];
    k[..4].copy_from_slice(&log_id.to_be_bytes());
    k[4..].copy_from_slice(&leaf_index.to_be_bytes());
    k
}

/// Parses a leaf key.
pub fn parse_leaf_key(key: &[u8]) -> Option<(LogId, u64)> {
    if key.len() != 12 {
        return None;
    }
    Some((decode_u32(&key[..4])?, decode_u64(&key[4..])?))
}

/// `log_id u32 ‖ uuid [16]` (20 bytes) → leaf_index u64.
pub fn event_id_key(log_id: LogId, uuid: &[u8; 16]) -> [u8; 20] {
    let mut k = [0u8; 20];
    k[..4].copy_from_slice(&log_id.to_be_bytes());
    k[4..].copy_from_slice(uuid);
    k
}

/// Bytes of the leaf hash kept in [`leaf_hash_key`]: 96 bits make a collision within one log
/// negligible (≈ 10⁻¹¹ at 10⁹ leaves), and lookups verify the full hash against the tree.
pub const LEAF_HASH_KEY_PREFIX: usize = 12;

/// `log_id u32 ‖ leaf_hash[..12]` (16 bytes) → leaf_index u64. Written by the indexer thread
/// after the leaves are durable, up to the watermark under [`meta_indexed_key`].
pub fn leaf_hash_key(log_id: LogId, leaf_hash: &Hash) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..4].copy_from_slice(&log_id.to_be_bytes());
    k[4..].copy_from_slice(&leaf_hash[..LEAF_HASH_KEY_PREFIX]);
    k
}

/// `log_id u32 ‖ tree_size u64` (12 bytes) → signed checkpoint note (UTF-8).
pub fn checkpoint_key(log_id: LogId, tree_size: u64) -> [u8; 12] {
    leaf_key(log_id, tree_size)
}

/// Every key of a log in spaces keyed by `log_id ‖ …`: `[log_id, log_id + 1)` as prefixes.
pub fn log_range(log_id: LogId) -> ([u8; 4], Option<[u8; 4]>) {
    (
        log_id.to_be_bytes(),
        log_id.checked_add(1).map(u32::to_be_bytes),
    )
}

// ---- Search indexes ------------------------------------------------------------------------

/// Bytes of BLAKE3(value) kept in [`field_index_key`]: a collision only adds a candidate, which
/// the search re-checks against the decoded leaf.
pub const FIELD_HASH_PREFIX: usize = 8;

/// Length of a [`Space::Fields`] key.
pub const FIELD_KEY_LEN: usize = 4 + 1 + FIELD_HASH_PREFIX + 8;

/// The first 8 bytes of BLAKE3 over a field value's UTF-8 bytes.
pub fn field_value_hash(value: &str) -> [u8; FIELD_HASH_PREFIX] {
    let h = blake3::hash(value.as_bytes());
    let mut out = [0u8; FIELD_HASH_PREFIX];
    out.copy_from_slice(&h.as_bytes()[..FIELD_HASH_PREFIX]);
    out
}

/// Leaves per posting list: the search index keeps one key per (log, field, value hash) and
/// 4096-leaf range of the log, whose value lists the leaves of that range with the value.
pub const FIELD_BUCKET: u64 = 4096;

/// First leaf of the posting-list bucket holding `leaf`.
pub const fn field_bucket(leaf: u64) -> u64 {
    leaf & !(FIELD_BUCKET - 1)
}

/// `log_id u32 ‖ tag u8 ‖ BLAKE3(value)[..8] ‖ base u64` (21 bytes) → posting list
/// ([`encode_postings`]). `tag` is [`crate::query::IndexedField::tag`]; `base` is the bucket's
/// first leaf ([`field_bucket`]), or for an entry with an empty value (written before posting
/// lists) the one leaf it stands for. Built with RocksDB merges ([`merge_postings`]): every
/// indexer batch adds its leaves to each bucket it touches, and the union is idempotent, so
/// re-indexing leaves after a crash cannot duplicate them. The sequencer and the indexer also
/// use this key with a leaf's own index as `base`, as the sort key of one (field, leaf) entry
/// before grouping ([`field_postings`]).
pub fn field_index_key(
    log_id: LogId,
    tag: u8,
    value_hash: &[u8; FIELD_HASH_PREFIX],
    leaf_index: u64,
) -> [u8; FIELD_KEY_LEN] {
    let mut k = [0u8; FIELD_KEY_LEN];
    k[..4].copy_from_slice(&log_id.to_be_bytes());
    k[4] = tag;
    k[5..13].copy_from_slice(value_hash);
    k[13..].copy_from_slice(&leaf_index.to_be_bytes());
    k
}

/// Encodes strictly increasing `leaves` of the bucket at `base` as a posting list: each leaf
/// as the LEB128 varint of its distance from the previous one, the first from `base`.
pub fn encode_postings(base: u64, leaves: &[u64]) -> Vec<u8> {
    let mut out = Vec::with_capacity(leaves.len() * 2);
    let mut prev = base;
    for &leaf in leaves {
        let mut d = leaf - prev;
        prev = leaf;
        loop {
            let byte = (d & 0x7f) as u8;
            d >>= 7;
            if d == 0 {
                out.push(byte);
                break;
            }
            out.push(byte | 0x80);
        }
    }
    out
}

/// Decodes a posting list stored under `base` and appends its leaves to `out`, ascending.
/// `None` if it is malformed: a truncated or overlong varint, a repeated leaf, or a leaf
/// outside the bucket. An empty value is the single leaf `base` (entries from before posting
/// lists).
pub fn decode_postings(base: u64, value: &[u8], out: &mut Vec<u64>) -> Option<()> {
    if value.is_empty() {
        out.push(base);
        return Some(());
    }
    if field_bucket(base) != base {
        return None;
    }
    let mut prev = base;
    let mut first = true;
    let mut rest = value;
    while !rest.is_empty() {
        let mut d = 0u64;
        let mut shift = 0u32;
        loop {
            let (&byte, tail) = rest.split_first()?;
            rest = tail;
            if shift > 56 {
                return None;
            }
            d |= u64::from(byte & 0x7f) << shift;
            shift += 7;
            if byte & 0x80 == 0 {
                break;
            }
        }
        if d == 0 && !first {
            return None;
        }
        first = false;
        prev = prev.checked_add(d)?;
        if prev - base >= FIELD_BUCKET {
            return None;
        }
        out.push(prev);
    }
    Some(())
}

/// The merge operator of [`Space::Fields`]: the union of the stored posting list (if any) and
/// every operand, or `None` (a corruption error at read) if one of them is malformed.
/// Associative, commutative and idempotent.
pub fn merge_postings<'a>(
    key: &[u8],
    existing: Option<&[u8]>,
    operands: impl IntoIterator<Item = &'a [u8]>,
) -> Option<Vec<u8>> {
    let (_, _, _, base) = parse_field_index_key(key)?;
    if field_bucket(base) != base {
        // Only bucket keys receive merges (a pre-posting-list entry's own key never does).
        return None;
    }
    let mut leaves = Vec::new();
    if let Some(v) = existing {
        decode_postings(base, v, &mut leaves)?;
    }
    for op in operands {
        decode_postings(base, op, &mut leaves)?;
    }
    leaves.sort_unstable();
    leaves.dedup();
    Some(encode_postings(base, &leaves))
}

/// Groups search-index entries (one [`field_index_key`] per field and leaf, with the leaf as
/// `base`) into posting lists: returns each bucket's key, base and ascending leaves, sorted by
/// key (encode with [`encode_postings`] to merge them into [`Space::Fields`]).
pub fn field_postings<'a>(
    entries: impl IntoIterator<Item = &'a [u8; FIELD_KEY_LEN]>,
) -> Vec<([u8; FIELD_KEY_LEN], u64, Vec<u64>)> {
    // (log id, tag, value hash) as one integer, then the leaf: sorting these pairs, which
    // order like the keys' bytes, takes a fifth of the time of sorting the 21-byte keys by
    // a sort key computed per comparison (the indexer sorts over a million per run).
    const HEAD: usize = FIELD_KEY_LEN - 8;
    let mut pairs: Vec<(u128, u64)> = entries
        .into_iter()
        .map(|e| {
            let mut head = [0u8; 16];
            head[16 - HEAD..].copy_from_slice(&e[..HEAD]);
            let leaf = u64::from_be_bytes(e[HEAD..].try_into().expect("8 bytes"));
            (u128::from_be_bytes(head), leaf)
        })
        .collect();
    pairs.sort_unstable();
    let mut out = Vec::new();
    let mut i = 0;
    while i < pairs.len() {
        let (head, first) = pairs[i];
        let base = field_bucket(first);
        let mut leaves = Vec::new();
        while let Some(&(h, leaf)) = pairs.get(i) {
            if h != head || field_bucket(leaf) != base {
                break;
            }
            if leaves.last() != Some(&leaf) {
                leaves.push(leaf);
            }
            i += 1;
        }
        let mut key = [0u8; FIELD_KEY_LEN];
        key[..HEAD].copy_from_slice(&head.to_be_bytes()[16 - HEAD..]);
        key[HEAD..].copy_from_slice(&base.to_be_bytes());
        out.push((key, base, leaves));
    }
    out
}

/// Splits a [`Space::Fields`] key into (log_id, tag, value hash, base).
pub fn parse_field_index_key(key: &[u8]) -> Option<(LogId, u8, [u8; FIELD_HASH_PREFIX], u64)> {
    if key.len() != FIELD_KEY_LEN {
        return None;
    }
    Some((
        decode_u32(&key[..4])?,
        key[4],
        key[5..13].try_into().ok()?,
        decode_u64(&key[13..])?,
    ))
}

// ---- Tiles ---------------------------------------------------------------------------------

/// Identifies a tile: `level` counts tile levels (tree level = 8 × level), `index` counts
/// tiles of that level from the left.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TileId {
    pub level: u8,
    pub index: u64,
}

/// `log_id u32 ‖ tile_level u8 ‖ tile_index u64` (13 bytes) → tile value.
pub fn tile_key(log_id: LogId, tile: TileId) -> [u8; 13] {
    let mut k = [0u8; 13];
    k[..4].copy_from_slice(&log_id.to_be_bytes());
    k[4] = tile.level;
    k[5..].copy_from_slice(&tile.index.to_be_bytes());
    k
}

pub fn parse_tile_key(key: &[u8]) -> Option<(LogId, TileId)> {
    if key.len() != 13 {
        return None;
    }
    Some((
        decode_u32(&key[..4])?,
        TileId {
            level: key[4],
            index: decode_u64(&key[5..])?,
        },
    ))
}

/// Where a tree node lives: its tile, and (relative level, position) inside the tile.
pub fn node_location(node: NodeId) -> (TileId, u8, u64) {
    let tile_level = node.level / TILE_HEIGHT;
    let rel_level = node.level % TILE_HEIGHT;
    // Nodes of `rel_level` per tile: 2^(8 - rel_level).
    let per_tile_shift = TILE_HEIGHT - rel_level;
    let tile = TileId {
        level: tile_level,
        index: node.index >> per_tile_shift,
    };
    (tile, rel_level, node.index & ((1 << per_tile_shift) - 1))
}

/// Number of complete nodes at relative level `rel_level` in a tile of `width` base nodes.
pub const fn nodes_at(width: u64, rel_level: u8) -> u64 {
    width >> rel_level
}

/// Offset (in hashes) of relative level `rel_level`'s first node in a tile value of `width`.
pub fn level_offset(width: u64, rel_level: u8) -> u64 {
    (0..rel_level).map(|r| nodes_at(width, r)).sum()
}

/// Total hashes stored for a tile of `width` base nodes.
pub fn tile_hash_count(width: u64) -> u64 {
    level_offset(width, TILE_HEIGHT)
}

/// A tile value: `width u16 ‖ level 0 hashes ‖ level 1 hashes ‖ … ‖ level 7 hashes`, where
/// relative level r holds the ⌊width / 2^r⌋ complete nodes of that level, left to right.
/// Stored tiles are full (`width` = 256); the format allows 1..=256 so that a tile's encoding
/// does not depend on where it is kept.
#[derive(Clone, Copy, Debug)]
pub struct TileView<'a> {
    width: u64,
    hashes: &'a [u8],
}

impl<'a> TileView<'a> {
    /// Checks the header and length.
    pub fn parse(value: &'a [u8]) -> Option<TileView<'a>> {
        if value.len() < 2 {
            return None;
        }
        let width = u16::from_be_bytes([value[0], value[1]]) as u64;
        if width == 0 || width > TILE_WIDTH {
            return None;
        }
        let hashes = &value[2..];
        (hashes.len() as u64 == tile_hash_count(width) * HASH_LEN as u64)
            .then_some(TileView { width, hashes })
    }

    pub fn width(&self) -> u64 {
        self.width
    }

    /// Node at relative level `rel_level`, position `pos`, if complete in this tile.
    pub fn node(&self, rel_level: u8, pos: u64) -> Option<Hash> {
        if rel_level >= TILE_HEIGHT || pos >= nodes_at(self.width, rel_level) {
            return None;
        }
        let at = ((level_offset(self.width, rel_level) + pos) as usize) * HASH_LEN;
        self.hashes.get(at..at + HASH_LEN)?.try_into().ok()
    }

    /// Base-level hashes.
    pub fn base(&self) -> impl Iterator<Item = Hash> + '_ {
        (0..self.width).filter_map(|p| self.node(0, p))
    }
}

/// Builds a tile value from its base-level hashes, computing the inner levels.
pub fn encode_tile(base: &[Hash]) -> Vec<u8> {
    let width = base.len() as u64;
    assert!(
        width > 0 && width <= TILE_WIDTH,
        "tile width {width} out of range"
    );
    let mut out = Vec::with_capacity(2 + tile_hash_count(width) as usize * HASH_LEN);
    out.extend_from_slice(&(width as u16).to_be_bytes());
    let mut level: Vec<Hash> = base.to_vec();
    for _ in 0..TILE_HEIGHT {
        for h in &level {
            out.extend_from_slice(h);
        }
        level = level
            .chunks_exact(2)
            .map(|pair| crate::merkle::node_hash(&pair[0], &pair[1]))
            .collect();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::merkle::{MemoryTree, leaf_hash};

    #[test]
    fn node_locations() {
        assert_eq!(
            node_location(NodeId::new(0, 300)),
            (TileId { level: 0, index: 1 }, 0, 44)
        );
        assert_eq!(
            node_location(NodeId::new(3, 33)),
            (TileId { level: 0, index: 1 }, 3, 1)
        );
        assert_eq!(
            node_location(NodeId::new(8, 5)),
            (TileId { level: 1, index: 0 }, 0, 5)
        );
        assert_eq!(
            node_location(NodeId::new(17, 3)),
            (TileId { level: 2, index: 0 }, 1, 3)
        );
    }

    #[test]
    fn tiles_hold_every_inner_node() {
        let mut tree = MemoryTree::new();
        let base: Vec<Hash> = (0..200u32).map(|i| leaf_hash(&i.to_be_bytes())).collect();
        for h in &base {
            tree.append(*h);
        }
        let value = encode_tile(&base);
        let view = TileView::parse(&value).unwrap();
        for rel in 0..TILE_HEIGHT {
            for pos in 0..(200u64 >> rel) {
                assert_eq!(view.node(rel, pos), tree.node(NodeId::new(rel, pos)));
            }
            assert_eq!(
                view.node(rel, 200 >> rel),
                None,
                "incomplete node must be absent"
            );
        }
        assert!(TileView::parse(&value[..value.len() - 1]).is_none());
    }

    #[test]
    fn posting_lists_round_trip_merge_and_reject_damage() {
        // The example of docs/storage-format.md.
        assert_eq!(
            encode_postings(8192, &[8192, 8195, 8300]),
            [0x00, 0x03, 0x69]
        );
        let base = 3 * FIELD_BUCKET;
        let leaves = [base, base + 1, base + 200, base + 4095];
        let v = encode_postings(base, &leaves);
        let mut out = Vec::new();
        decode_postings(base, &v, &mut out).unwrap();
        assert_eq!(out, leaves);
        // An empty value is the key's own leaf (entries from before posting lists).
        out.clear();
        decode_postings(12345, &[], &mut out).unwrap();
        assert_eq!(out, [12345]);
        // Damage: truncated varint, repeated leaf, outside the bucket, unaligned base.
        for (b, bad) in [
            (base, vec![0x80]),
            (base, vec![1, 0]),
            (base, encode_postings(base, &[base + FIELD_BUCKET])),
            (base + 1, vec![1]),
            (base, vec![0xff; 11]),
        ] {
            assert!(
                decode_postings(b, &bad, &mut Vec::new()).is_none(),
                "{bad:?}"
            );
        }

        let key = field_index_key(7, 3, &[9; FIELD_HASH_PREFIX], base);
        let a = encode_postings(base, &[base + 5, base + 9]);
        let b = encode_postings(base, &[base + 1, base + 9, base + 30]);
        let merged = merge_postings(&key, Some(&a), [&b[..], &a[..]]).unwrap();
        out.clear();
        decode_postings(base, &merged, &mut out).unwrap();
        assert_eq!(out, [base + 1, base + 5, base + 9, base + 30]);
        // A pre-posting-list entry at an aligned base is its leaf.
        let merged = merge_postings(&key, Some(&[]), [&b[..]]).unwrap();
        out.clear();
        decode_postings(base, &merged, &mut out).unwrap();
        assert_eq!(out, [base, base + 1, base + 9, base + 30]);
        assert!(merge_postings(&key, None, [&[0x80u8][..]]).is_none());
    }

    #[test]
    fn entries_group_into_one_posting_list_per_value_and_bucket() {
        let (u, v) = ([1; FIELD_HASH_PREFIX], [2; FIELD_HASH_PREFIX]);
        let entries = vec![
            field_index_key(0, 4, &u, 4097),
            field_index_key(0, 4, &v, 5),
            field_index_key(0, 4, &u, 3),
            field_index_key(0, 4, &u, 1),
            field_index_key(0, 4, &u, 1),
            field_index_key(0, 5, &u, 2),
        ];
        let lists: Vec<_> = field_postings(&entries)
            .into_iter()
            .map(|(k, base, leaves)| {
                let (_, tag, hash, key_base) = parse_field_index_key(&k).unwrap();
                assert_eq!(key_base, base);
                (tag, hash, base, leaves)
            })
            .collect();
        assert_eq!(
            lists,
            [
                (4, u, 0, vec![1, 3]),
                (4, u, 4096, vec![4097]),
                (4, v, 0, vec![5]),
                (5, u, 0, vec![2]),
            ]
        );
    }

    #[test]
    fn records_round_trip() {
        let rec = LogRecord {
            segment_bits: 16,
            created_at: 42,
            tenant_id: "acme".into(),
            environment: "prod".into(),
            origin: "auditledger.local/acme/prod".into(),
        };
        assert_eq!(LogRecord::decode(&rec.encode()), Some(rec.clone()));
        let mut trailing = rec.encode();
        trailing.push(0);
        assert_eq!(LogRecord::decode(&trailing), None);
        let state = LogState {
            tree_size: 7,
            last_logged_at: 9,
        };
        assert_eq!(LogState::decode(&state.encode()), Some(state));
    }
}
