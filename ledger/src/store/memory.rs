//! In-memory store: ordered maps behind a lock. Nothing survives the process; for tests and for
//! embedding the ledger where durability comes from elsewhere.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::RwLock;

use super::{Direction, Store, StoreError, WriteBatch, WriteOp};
use crate::layout::Space;

type Map = BTreeMap<Vec<u8>, Vec<u8>>;

#[derive(Debug, Default)]
pub struct MemoryStore {
    spaces: RwLock<BTreeMap<Space, Map>>,
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<Space, Map>> {
        // A panic while holding the lock cannot leave a half-applied batch: batches are
        // applied to a copy-free map only after validation, so poisoning is recoverable.
        self.spaces.read().unwrap_or_else(|p| p.into_inner())
    }
}

impl Store for MemoryStore {
    fn write(&self, batch: WriteBatch, _durable: bool) -> Result<(), StoreError> {
        let mut spaces = self.spaces.write().unwrap_or_else(|p| p.into_inner());
        // Only a batch with merges needs a resolved copy; any other applies as it is.
        let resolved;
        let batch = if batch.ops().any(|op| matches!(op, WriteOp::Merge { .. })) {
            resolved = resolve_merges(&spaces, &batch)?;
            &resolved
        } else {
            &batch
        };
        // Nothing below can fail: the batch applies whole (as RocksDB applies it).
        for op in batch.ops() {
            match op {
                WriteOp::Put { space, key, value } => {
                    spaces
                        .entry(space)
                        .or_default()
                        .insert(key.to_vec(), value.to_vec());
                }
                WriteOp::Merge { .. } => unreachable!("resolved into puts above"),
                WriteOp::Delete { space, key } => {
                    if let Some(map) = spaces.get_mut(&space) {
                        map.remove(key);
                    }
                }
                WriteOp::DeleteRange { space, start, end } => {
                    if let Some(map) = spaces.get_mut(&space) {
                        let doomed: Vec<Vec<u8>> = map
                            .range::<[u8], _>((Bound::Included(start), Bound::Excluded(end)))
                            .map(|(k, _)| k.clone())
                            .collect();
                        for k in doomed {
                            map.remove(&k);
                        }
                    }
                }
            }
        }
        Ok(())
    }

    fn get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.read().get(&space).and_then(|m| m.get(key)).cloned())
    }

    fn multi_get(
        &self,
        space: Space,
        keys: &[&[u8]],
        visit: &mut dyn FnMut(usize, Option<&[u8]>),
    ) -> Result<(), StoreError> {
        let spaces = self.read();
        let map = spaces.get(&space);
        for (i, key) in keys.iter().enumerate() {
            visit(i, map.and_then(|m| m.get(*key)).map(Vec::as_slice));
        }
        Ok(())
    }

    fn scan(
        &self,
        space: Space,
        start: &[u8],
        end: Option<&[u8]>,
        direction: Direction,
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), StoreError> {
        let spaces = self.read();
        let Some(map) = spaces.get(&space) else {
            return Ok(());
        };
        let upper = end.map_or(Bound::Unbounded, Bound::Excluded);
        let range = map.range::<[u8], _>((Bound::Included(start), upper));
        match direction {
            Direction::Forward => {
                for (k, v) in range {
                    if !visit(k, v) {
                        break;
                    }
                }
            }
            Direction::Reverse => {
                for (k, v) in range.rev() {
                    if !visit(k, v) {
                        break;
                    }
                }
            }
        }
        Ok(())
    }
}

/// The batch with every merge replaced by a put of its result, each merge computed once over
/// the stored value as changed by the batch's earlier operations (puts, deletes, ranges and
/// merges before it, as RocksDB orders them). A merge that cannot apply (no operator, malformed
/// value) fails the whole batch before anything is written.
fn resolve_merges(
    spaces: &BTreeMap<Space, Map>,
    batch: &WriteBatch,
) -> Result<WriteBatch, StoreError> {
    // What the batch has done so far to each key it touched (None: deleted), and the ranges
    // it deleted, for keys it did not touch individually.
    let mut overlay: BTreeMap<(Space, &[u8]), Option<Vec<u8>>> = BTreeMap::new();
    let mut ranges: Vec<(Space, &[u8], &[u8])> = Vec::new();
    let mut resolved = WriteBatch::with_capacity(batch.len());
    for op in batch.ops() {
        match op {
            WriteOp::Put { space, key, value } => {
                overlay.insert((space, key), Some(value.to_vec()));
                resolved.put(space, key, value);
            }
            WriteOp::Delete { space, key } => {
                overlay.insert((space, key), None);
                resolved.delete(space, key);
            }
            WriteOp::DeleteRange { space, start, end } => {
                for ((s, k), v) in overlay.iter_mut() {
                    if *s == space && *k >= start && *k < end {
                        *v = None;
                    }
                }
                ranges.push((space, start, end));
                resolved.delete_range(space, start, end);
            }
            WriteOp::Merge { space, key, value } => {
                let merge = super::merge_operator(space).ok_or_else(|| {
                    StoreError::Unusable(format!("space {} has no merge operator", space.name()))
                })?;
                let current = match overlay.get(&(space, key)) {
                    Some(v) => v.clone(),
                    None if ranges
                        .iter()
                        .any(|&(s, a, b)| s == space && key >= a && key < b) =>
                    {
                        None
                    }
                    None => spaces.get(&space).and_then(|m| m.get(key)).cloned(),
                };
                let merged = merge(key, current.as_deref(), &[value]).ok_or_else(|| {
                    StoreError::Corruption(format!(
                        "merging into {} key {}: no merge operator or a malformed value",
                        space.name(),
                        hex::encode(key)
                    ))
                })?;
                resolved.put(space, key, &merged);
                overlay.insert((space, key), Some(merged));
            }
        }
    }
    Ok(resolved)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::{decode_postings, encode_postings, field_index_key};

    fn postings(store: &MemoryStore, key: &[u8]) -> Vec<u64> {
        let value = store.get(Space::Fields, key).unwrap().expect("present");
        let mut out = Vec::new();
        decode_postings(4096, &value, &mut out).expect("well-formed");
        out
    }

    /// A merge is computed over what the batch did before it, and one that cannot apply —
    /// here because an earlier put of the same batch left a malformed list — fails the whole
    /// batch: nothing of it is written (RocksDB applies a batch whole or not at all).
    #[test]
    fn merges_see_their_batch_and_a_failing_one_writes_nothing() {
        let store = MemoryStore::new();
        let key = field_index_key(1, 9, &[7; 8], 4096);
        let mut b = WriteBatch::new();
        b.put(Space::Meta, b"before", b"x");
        b.put(Space::Fields, key, vec![0x80]);
        b.merge(Space::Fields, key, encode_postings(4096, &[4097]));
        let err = store.write(b, true).unwrap_err();
        assert!(err.to_string().contains("malformed"), "{err}");
        assert_eq!(store.get(Space::Meta, b"before").unwrap(), None);
        assert_eq!(store.get(Space::Fields, &key).unwrap(), None);

        let mut b = WriteBatch::new();
        b.merge(Space::Fields, key, encode_postings(4096, &[4100]));
        b.merge(Space::Fields, key, encode_postings(4096, &[4097]));
        store.write(b, true).unwrap();
        assert_eq!(postings(&store, &key), [4097, 4100]);

        // A range deleted earlier in the batch is empty for the merges after it.
        let mut b = WriteBatch::new();
        let mut end = key.to_vec();
        *end.last_mut().unwrap() += 1;
        b.delete_range(Space::Fields, key, end);
        b.merge(Space::Fields, key, encode_postings(4096, &[5000]));
        store.write(b, true).unwrap();
        assert_eq!(postings(&store, &key), [5000]);
    }
}
