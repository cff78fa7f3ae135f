//! Tree hashes as tiles (layout in `layout.rs`).
//!
//! Only *full* tiles are stored. The rightmost, partial tile of each tile level — the "right
//! edge", fewer than 256 base hashes per level — lives in memory: [`TileEdge`] is extended by the
//! sequencer as leaves arrive, and readers get an immutable [`EdgeSnapshot`] of it. Persisting
//! partial tiles would rewrite up to 16 KiB per level on every commit; the edge is instead
//! rebuilt on open from the last (≤ 255) leaves and the full tiles below it.
//!
//! [`LogHashReader`] answers any node: from a full tile in the store, or computed from the
//! snapshot when the node lies in a partial tile.

use std::sync::Arc;

use crate::layout::{self, LogId, Space, TILE_HEIGHT, TILE_WIDTH, TileId, TileView};
use crate::merkle::{Hash, HashReader, MerkleError, NodeId, leaf_hash, node_hash};
use crate::store::{Store, StoreError};

/// A tile completed by an append: key and encoded value, to be stored.
pub type TileWrite = (TileId, Vec<u8>);

/// Errors rebuilding the edge from storage.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TileError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("tile (level {}, index {}) is missing or malformed for tree size {size}", .tile.level, .tile.index)]
    Missing { tile: TileId, size: u64 },
    #[error(
        "leaf {leaf_index} is missing from the hot store; it is needed to rebuild the tree's right edge"
    )]
    MissingLeaf { leaf_index: u64 },
}

/// The complete nodes of one partial tile, by level inside the tile: `rel[0]` is the base
/// (fewer than 256 hashes), `rel[r]` the ⌊len/2^r⌋ complete nodes r levels up. Kept up to date
/// as hashes arrive (one node hash per base hash, amortised), so that neither proofs nor the
/// tile's encoding ever recompute them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PartialTile {
    rel: [Vec<Hash>; TILE_HEIGHT as usize],
}

impl PartialTile {
    fn push(&mut self, hash: Hash) {
        let mut hash = hash;
        for r in 0..TILE_HEIGHT as usize {
            self.rel[r].push(hash);
            let len = self.rel[r].len();
            if len % 2 == 1 || r + 1 == TILE_HEIGHT as usize {
                break;
            }
            hash = node_hash(&self.rel[r][len - 2], &self.rel[r][len - 1]);
        }
    }

    fn width(&self) -> u64 {
        self.rel[0].len() as u64
    }

    fn clear(&mut self) {
        self.rel.iter_mut().for_each(Vec::clear);
    }

    /// The stored encoding (`layout.rs`): width, then every level's complete nodes.
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(2 + layout::tile_hash_count(self.width()) as usize * 32);
        out.extend_from_slice(&(self.width() as u16).to_be_bytes());
        for level in &self.rel {
            for h in level {
                out.extend_from_slice(h);
            }
        }
        out
    }

    fn node(&self, rel: u8, pos: u64) -> Option<Hash> {
        self.rel
            .get(rel as usize)?
            .get(usize::try_from(pos).ok()?)
            .copied()
    }
}

/// The right edge of one log's tree: the partial tile at each tile level.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TileEdge {
    size: u64,
    /// `levels[t]`: the partial tile at tile level t. Shared with snapshots; copied on write
    /// only while a reader still holds one.
    levels: Vec<Arc<PartialTile>>,
}

/// An immutable view of a [`TileEdge`] at one tree size.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EdgeSnapshot {
    size: u64,
    levels: Vec<Arc<PartialTile>>,
}

impl TileEdge {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// Appends one leaf hash. Tiles completed by it are pushed to `completed`.
    pub fn append(&mut self, leaf_hash: Hash, completed: &mut Vec<TileWrite>) {
        self.size += 1;
        let mut hash = leaf_hash;
        let mut level = 0usize;
        loop {
            if self.levels.len() == level {
                self.levels.push(Arc::default());
            }
            let tile = Arc::make_mut(&mut self.levels[level]);
            tile.push(hash);
            if tile.width() != TILE_WIDTH {
                break;
            }
            let value = tile.encode();
            let top = &tile.rel[TILE_HEIGHT as usize - 1];
            hash = node_hash(&top[0], &top[1]);
            let shift = TILE_HEIGHT as u32 * (level as u32 + 1);
            completed.push((
                TileId {
                    level: level as u8,
                    index: (self.size >> shift) - 1,
                },
                value,
            ));
            tile.clear();
            level += 1;
        }
    }

    /// An immutable view for readers (cheap: shares the base vectors).
    pub fn snapshot(&self) -> EdgeSnapshot {
        EdgeSnapshot {
            size: self.size,
            levels: self.levels.clone(),
        }
    }

    /// Continues from a snapshot.
    pub fn from_snapshot(snapshot: &EdgeSnapshot) -> Self {
        TileEdge {
            size: snapshot.size,
            levels: snapshot.levels.clone(),
        }
    }

    /// Rebuilds the edge of a tree of `size`: the last `size mod 256` leaves give the level-0
    /// base; the roots of the last full tiles of level t−1 give the level-t base.
    pub fn load(store: &dyn Store, log_id: LogId, size: u64) -> Result<TileEdge, TileError> {
        let mut levels = Vec::new();
        let mut level = 0u32;
        while level < 8 && (size >> (TILE_HEIGHT as u32 * level)) > 0 {
            let nodes = size >> (TILE_HEIGHT as u32 * level);
            let width = nodes % TILE_WIDTH;
            let first = nodes - width;
            let mut base: Vec<Hash> = Vec::with_capacity(TILE_WIDTH as usize);
            if width > 0 {
                if level == 0 {
                    let mut expected = first;
                    let mut missing = None;
                    store.scan(
                        Space::Leaves,
                        &layout::leaf_key(log_id, first),
                        Some(&layout::leaf_key(log_id, nodes)),
                        crate::store::Direction::Forward,
                        &mut |k, v| {
                            if layout::parse_leaf_key(k).map(|(_, i)| i) != Some(expected) {
                                missing = Some(expected);
                                return false;
                            }
                            base.push(leaf_hash(v));
                            expected += 1;
                            true
                        },
                    )?;
                    if let Some(leaf_index) = missing.or((expected != nodes).then_some(expected)) {
                        return Err(TileError::MissingLeaf { leaf_index });
                    }
                } else {
                    let keys: Vec<[u8; 13]> = (first..nodes)
                        .map(|index| {
                            layout::tile_key(
                                log_id,
                                TileId {
                                    level: level as u8 - 1,
                                    index,
                                },
                            )
                        })
                        .collect();
                    let refs: Vec<&[u8]> = keys.iter().map(|k| &k[..]).collect();
                    let mut bad = None;
                    store.multi_get(Space::Tiles, &refs, &mut |i, value| match value
                        .and_then(TileView::parse)
                        .filter(|v| v.width() == TILE_WIDTH)
                    {
                        Some(view) => base.push(view_root(&view)),
                        None if bad.is_none() => bad = Some(first + i as u64),
                        None => {}
                    })?;
                    if let Some(index) = bad {
                        return Err(TileError::Missing {
                            tile: TileId {
                                level: level as u8 - 1,
                                index,
                            },
                            size,
                        });
                    }
                }
            }
            let mut tile = PartialTile::default();
            base.into_iter().for_each(|h| tile.push(h));
            levels.push(Arc::new(tile));
            level += 1;
        }
        Ok(TileEdge { size, levels })
    }
}

fn view_root(view: &TileView<'_>) -> Hash {
    let left = view
        .node(TILE_HEIGHT - 1, 0)
        .expect("full tile has level 7");
    let right = view
        .node(TILE_HEIGHT - 1, 1)
        .expect("full tile has level 7");
    node_hash(&left, &right)
}

impl EdgeSnapshot {
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The partial tile's index at `tile_level`.
    fn partial_index(&self, tile_level: u8) -> u64 {
        self.size >> (TILE_HEIGHT as u32 * (tile_level as u32 + 1))
    }

    /// Whether `node` lies in a tile that is partial at this size (so not in the store).
    pub fn holds(&self, node: NodeId) -> bool {
        let (tile, _, _) = layout::node_location(node);
        tile.index == self.partial_index(tile.level)
    }

    /// The node's hash if it lies in a partial tile and is complete at this size.
    pub fn node(&self, node: NodeId) -> Option<Hash> {
        let (tile, rel, pos) = layout::node_location(node);
        if tile.index != self.partial_index(tile.level) {
            return None;
        }
        self.levels.get(tile.level as usize)?.node(rel, pos)
    }
}

/// Reads node hashes of one log: full tiles from the store, the right edge from a snapshot.
pub struct LogHashReader<'a> {
    store: &'a dyn Store,
    log_id: LogId,
    edge: Arc<EdgeSnapshot>,
}

impl<'a> LogHashReader<'a> {
    pub fn new(store: &'a dyn Store, log_id: LogId, edge: Arc<EdgeSnapshot>) -> Self {
        LogHashReader {
            store,
            log_id,
            edge,
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("node (level {}, index {}) of log {log_id} is not available (tile level {}, index {}; tree size {size})", .node.level, .node.index, .tile.level, .tile.index)]
struct NodeUnavailable {
    log_id: LogId,
    tile: TileId,
    node: NodeId,
    size: u64,
}

impl HashReader for LogHashReader<'_> {
    fn read_hashes(&self, nodes: &[NodeId]) -> Result<Vec<Hash>, MerkleError> {
        let mut out: Vec<Option<Hash>> = vec![None; nodes.len()];
        let mut stored: Vec<(usize, TileId, u8, u64)> = Vec::new();
        for (i, &node) in nodes.iter().enumerate() {
            if self.edge.holds(node) {
                out[i] = self.edge.node(node);
            } else {
                let (tile, rel, pos) = layout::node_location(node);
                stored.push((i, tile, rel, pos));
            }
        }
        if !stored.is_empty() {
            let mut tiles: Vec<TileId> = stored.iter().map(|s| s.1).collect();
            tiles.sort_unstable();
            tiles.dedup();
            let keys: Vec<[u8; 13]> = tiles
                .iter()
                .map(|&t| layout::tile_key(self.log_id, t))
                .collect();
            let refs: Vec<&[u8]> = keys.iter().map(|k| &k[..]).collect();
            self.store
                .multi_get(Space::Tiles, &refs, &mut |t, value| {
                    let Some(view) = value.and_then(TileView::parse) else {
                        return;
                    };
                    for &(i, tile, rel, pos) in &stored {
                        if tile == tiles[t] {
                            out[i] = view.node(rel, pos);
                        }
                    }
                })
                .map_err(|e| MerkleError::Reader(Box::new(e)))?;
        }
        out.into_iter()
            .zip(nodes)
            .map(|(hash, &node)| {
                hash.ok_or_else(|| {
                    MerkleError::Reader(Box::new(NodeUnavailable {
                        log_id: self.log_id,
                        tile: layout::node_location(node).0,
                        node,
                        size: self.edge.size,
                    }))
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::merkle::{self, MemoryTree};
    use crate::store::WriteBatch;
    use crate::store::memory::MemoryStore;

    #[test]
    fn stored_tiles_and_edge_answer_like_a_memory_tree() {
        let store = MemoryStore::new();
        let mut edge = TileEdge::new();
        let mut tree = MemoryTree::new();
        // Cross two tile levels, committing in uneven batches; leaves are stored too so the
        // edge can be rebuilt.
        let total = 70_000u64;
        let mut i = 0u64;
        let mut batch = 1u64;
        let mut snapshots = Vec::new();
        while i < total {
            let mut b = WriteBatch::new();
            let mut completed = Vec::new();
            for _ in 0..batch.min(total - i) {
                let leaf = i.to_be_bytes();
                let h = leaf_hash(&leaf);
                b.put(Space::Leaves, layout::leaf_key(3, i), leaf);
                edge.append(h, &mut completed);
                tree.append(h);
                i += 1;
            }
            for (tile, value) in completed {
                b.put(Space::Tiles, layout::tile_key(3, tile), value);
            }
            store.write(b, true).unwrap();
            snapshots.push(Arc::new(edge.snapshot()));
            batch = (batch * 7) % 1013 + 1;
        }
        let latest = snapshots.last().unwrap().clone();
        let reader = LogHashReader::new(&store, 3, latest.clone());
        for size in [1u64, 255, 256, 257, 65535, 65536, 65537, 70_000] {
            assert_eq!(
                merkle::root(&reader, size).unwrap(),
                merkle::root(&tree, size).unwrap(),
                "root at {size}"
            );
        }
        for (leaf, size) in [
            (0u64, 70_000u64),
            (65_535, 65_537),
            (69_999, 70_000),
            (300, 301),
        ] {
            assert_eq!(
                merkle::inclusion_proof(&reader, leaf, size).unwrap(),
                merkle::inclusion_proof(&tree, leaf, size).unwrap()
            );
        }
        assert_eq!(
            merkle::consistency_proof(&reader, 1000, 70_000).unwrap(),
            merkle::consistency_proof(&tree, 1000, 70_000).unwrap()
        );
        // An older snapshot still answers for its own size even though the store moved on.
        let old = snapshots[snapshots.len() / 2].clone();
        let old_reader = LogHashReader::new(&store, 3, old.clone());
        assert_eq!(
            merkle::root(&old_reader, old.size()).unwrap(),
            merkle::root(&tree, old.size()).unwrap()
        );
        // Rebuilding the edge from storage gives the same state.
        assert_eq!(TileEdge::load(&store, 3, total).unwrap(), edge);
        // A node beyond the tree is an error, not a wrong hash.
        assert!(reader.read_hashes(&[NodeId::new(0, total)]).is_err());
        // Nothing partial was stored.
        let mut partial = 0;
        store
            .scan(
                Space::Tiles,
                &[],
                None,
                crate::store::Direction::Forward,
                &mut |_, v| {
                    if TileView::parse(v).is_some_and(|t| t.width() < TILE_WIDTH) {
                        partial += 1;
                    }
                    true
                },
            )
            .unwrap();
        assert_eq!(partial, 0);
    }

    #[test]
    fn rebuilding_the_edge_reports_a_missing_leaf() {
        let store = MemoryStore::new();
        let mut b = WriteBatch::new();
        b.put(Space::Leaves, layout::leaf_key(0, 0), b"a");
        store.write(b, true).unwrap();
        let err = TileEdge::load(&store, 0, 2).unwrap_err();
        assert!(
            matches!(err, TileError::MissingLeaf { leaf_index: 1 }),
            "{err}"
        );
    }
}
