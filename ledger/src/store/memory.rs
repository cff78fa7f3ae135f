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
        // Merges are checked before anything is applied, so that a malformed one leaves the
        // store as it was (RocksDB applies a batch atomically too).
        for op in &batch.ops {
            if let WriteOp::Merge { space, key, value } = op {
                let stored = spaces.get(space).and_then(|m| m.get(key));
                let fits = super::merge_operator(*space)
                    .and_then(|merge| merge(key, stored.map(Vec::as_slice), &[value]));
                if fits.is_none() {
                    return Err(StoreError::Corruption(format!(
                        "merging into {} key {}: no merge operator or a malformed value",
                        space.name(),
                        hex::encode(key)
                    )));
                }
            }
        }
        for op in batch.ops {
            match op {
                WriteOp::Put { space, key, value } => {
                    spaces.entry(space).or_default().insert(key, value);
                }
                WriteOp::Merge { space, key, value } => {
                    let merge = super::merge_operator(space).ok_or_else(|| {
                        StoreError::Unusable(format!(
                            "space {} has no merge operator",
                            space.name()
                        ))
                    })?;
                    let map = spaces.entry(space).or_default();
                    let merged = merge(&key, map.get(&key).map(Vec::as_slice), &[&value])
                        .ok_or_else(|| {
                            StoreError::Corruption(format!(
                                "merging into {} key {}: malformed value",
                                space.name(),
                                hex::encode(&key)
                            ))
                        })?;
                    map.insert(key, merged);
                }
                WriteOp::Delete { space, key } => {
                    if let Some(map) = spaces.get_mut(&space) {
                        map.remove(&key);
                    }
                }
                WriteOp::DeleteRange { space, start, end } => {
                    if let Some(map) = spaces.get_mut(&space) {
                        let doomed: Vec<Vec<u8>> = map
                            .range::<[u8], _>((
                                Bound::Included(&start[..]),
                                Bound::Excluded(&end[..]),
                            ))
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
