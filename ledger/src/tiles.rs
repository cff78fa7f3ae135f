//! Tree hashes as tiles (layout in `layout.rs`): the in-memory right edge that the sequencer
//! extends as leaves arrive, and the [`HashReader`] that serves proofs from stored tiles.

use crate::layout::{self, LogId, Space, TILE_HEIGHT, TILE_WIDTH, TileId, TileView};
use crate::merkle::{Hash, HashReader, MerkleError, NodeId, node_hash};
use crate::store::{Store, StoreError};

/// The partial (rightmost) tile at every tile level of one log's tree.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TileEdge {
    size: u64,
    /// `levels[t]`: base hashes of the partial tile at tile level t (fewer than 256).
    levels: Vec<Vec<Hash>>,
    /// Tile levels whose partial tile changed since the last [`TileEdge::take_dirty`].
    dirty: Vec<bool>,
}

/// A tile to write: key and encoded value.
pub type TileWrite = (TileId, Vec<u8>);

/// Errors loading the edge from storage.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TileError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("tile (level {}, index {}) is missing for tree size {size}", .tile.level, .tile.index)]
    Missing { tile: TileId, size: u64 },
    #[error("tile (level {}, index {}) is malformed or has width {found}, expected at least {expected}", .tile.level, .tile.index)]
    BadWidth {
        tile: TileId,
        found: u64,
        expected: u64,
    },
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
                self.levels.push(Vec::with_capacity(TILE_WIDTH as usize));
                self.dirty.push(false);
            }
            self.levels[level].push(hash);
            self.dirty[level] = true;
            if self.levels[level].len() as u64 != TILE_WIDTH {
                break;
            }
            let value = layout::encode_tile(&self.levels[level]);
            let view = TileView::parse(&value).expect("encode_tile output parses");
            let (left, right) = (
                view.node(TILE_HEIGHT - 1, 0)
                    .expect("full tile has level 7"),
                view.node(TILE_HEIGHT - 1, 1)
                    .expect("full tile has level 7"),
            );
            let shift = TILE_HEIGHT as u32 * (level as u32 + 1);
            let tile = TileId {
                level: level as u8,
                index: (self.size >> shift) - 1,
            };
            completed.push((tile, value));
            self.levels[level].clear();
            // The completed tile was written whole; no partial to rewrite at this level
            // unless more hashes arrive.
            self.dirty[level] = false;
            hash = node_hash(&left, &right);
            level += 1;
        }
    }

    /// The partial tiles changed since the last call, encoded.
    pub fn take_dirty(&mut self) -> Vec<TileWrite> {
        let mut out = Vec::new();
        for (level, base) in self.levels.iter().enumerate() {
            if self.dirty[level] && !base.is_empty() {
                let shift = TILE_HEIGHT as u32 * (level as u32 + 1);
                out.push((
                    TileId {
                        level: level as u8,
                        index: self.size >> shift,
                    },
                    layout::encode_tile(base),
                ));
            }
        }
        self.dirty.iter_mut().for_each(|d| *d = false);
        out
    }

    /// Rebuilds the edge of a tree of `size` from its stored partial tiles.
    pub fn load(store: &dyn Store, log_id: LogId, size: u64) -> Result<TileEdge, TileError> {
        let mut edge = TileEdge {
            size,
            levels: Vec::new(),
            dirty: Vec::new(),
        };
        let mut level = 0u32;
        while level < 8 && (size >> (TILE_HEIGHT as u32 * level)) > 0 {
            let nodes = size >> (TILE_HEIGHT as u32 * level);
            let width = nodes % TILE_WIDTH;
            let tile = TileId {
                level: level as u8,
                index: nodes / TILE_WIDTH,
            };
            let mut base = Vec::with_capacity(TILE_WIDTH as usize);
            if width > 0 {
                let value = store
                    .get(Space::Tiles, &layout::tile_key(log_id, tile))?
                    .ok_or(TileError::Missing { tile, size })?;
                let view = TileView::parse(&value).ok_or(TileError::BadWidth {
                    tile,
                    found: 0,
                    expected: width,
                })?;
                if view.width() != width {
                    return Err(TileError::BadWidth {
                        tile,
                        found: view.width(),
                        expected: width,
                    });
                }
                base.extend(view.base());
            }
            edge.levels.push(base);
            edge.dirty.push(false);
            level += 1;
        }
        Ok(edge)
    }
}

/// Reads node hashes of one log from its stored tiles.
pub struct StoreHashReader<'a> {
    store: &'a dyn Store,
    log_id: LogId,
}

impl<'a> StoreHashReader<'a> {
    pub fn new(store: &'a dyn Store, log_id: LogId) -> Self {
        StoreHashReader { store, log_id }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("tile (level {}, index {}) of log {log_id} does not hold node (level {}, index {})", .tile.level, .tile.index, .node.level, .node.index)]
struct NodeNotInTile {
    log_id: LogId,
    tile: TileId,
    node: NodeId,
}

impl HashReader for StoreHashReader<'_> {
    fn read_hashes(&self, nodes: &[NodeId]) -> Result<Vec<Hash>, MerkleError> {
        let locations: Vec<(TileId, u8, u64)> =
            nodes.iter().map(|&n| layout::node_location(n)).collect();
        let mut tiles: Vec<TileId> = locations.iter().map(|l| l.0).collect();
        tiles.sort_unstable();
        tiles.dedup();
        let keys: Vec<[u8; 13]> = tiles
            .iter()
            .map(|&t| layout::tile_key(self.log_id, t))
            .collect();
        let key_refs: Vec<&[u8]> = keys.iter().map(|k| &k[..]).collect();
        let mut out: Vec<Option<Hash>> = vec![None; nodes.len()];
        self.store
            .multi_get(Space::Tiles, &key_refs, &mut |i, value| {
                let Some(view) = value.and_then(TileView::parse) else {
                    return;
                };
                for (slot, &(tile, rel, pos)) in out.iter_mut().zip(&locations) {
                    if tile == tiles[i] {
                        *slot = view.node(rel, pos);
                    }
                }
            })
            .map_err(|e| MerkleError::Reader(Box::new(e)))?;
        out.into_iter()
            .zip(nodes.iter().zip(&locations))
            .map(|(hash, (&node, &(tile, _, _)))| {
                hash.ok_or_else(|| {
                    MerkleError::Reader(Box::new(NodeNotInTile {
                        log_id: self.log_id,
                        tile,
                        node,
                    }))
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::merkle::{self, MemoryTree, leaf_hash};
    use crate::store::WriteBatch;
    use crate::store::memory::MemoryStore;

    fn persist(store: &MemoryStore, log_id: LogId, writes: Vec<TileWrite>) {
        let mut b = WriteBatch::new();
        for (tile, value) in writes {
            b.put(Space::Tiles, layout::tile_key(log_id, tile).to_vec(), value);
        }
        store.write(b, true).unwrap();
    }

    #[test]
    fn stored_tiles_answer_like_a_memory_tree() {
        let store = MemoryStore::new();
        let mut edge = TileEdge::new();
        let mut tree = MemoryTree::new();
        // Cross two tile levels, committing in uneven batches.
        let total = 70_000u64;
        let mut i = 0u64;
        let mut batch = 1u64;
        while i < total {
            let mut completed = Vec::new();
            for _ in 0..batch.min(total - i) {
                let h = leaf_hash(&i.to_be_bytes());
                edge.append(h, &mut completed);
                tree.append(h);
                i += 1;
            }
            completed.extend(edge.take_dirty());
            persist(&store, 3, completed);
            batch = (batch * 7) % 1013 + 1;
        }
        let reader = StoreHashReader::new(&store, 3);
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
        // Reloading the edge from storage gives the same state.
        let mut loaded = TileEdge::load(&store, 3, total).unwrap();
        edge.take_dirty();
        loaded.take_dirty();
        assert_eq!(loaded, edge);
        // A node beyond the tree is an error, not a wrong hash.
        assert!(reader.read_hashes(&[NodeId::new(0, total)]).is_err());
    }
}
