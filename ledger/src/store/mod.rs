//! Storage seam: a narrow, ordered key-value interface with atomic durable batches, in the
//! spirit of `object_store`'s core trait. The ledger's layout (`layout.rs`) sits on top.
//!
//! Implementations: [`rocks::RocksStore`] (production), [`memory::MemoryStore`] (tests,
//! embedding) and [`faulty::FaultyStore`] (wraps another store and fails on purpose). All pass
//! [`conformance`].

pub mod conformance;
pub mod faulty;
pub mod memory;
#[cfg(feature = "rocksdb")]
pub mod rocks;

use crate::layout::Space;

/// Storage failures. Messages carry the underlying engine's text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The device has no space left; retry once space is freed.
    #[error("storage full: {0}")]
    NoSpace(String),
    /// An I/O error (disk, filesystem).
    #[error("storage I/O error: {0}")]
    Io(String),
    /// Stored data failed a checksum or structural check.
    #[error("storage corruption: {0}")]
    Corruption(String),
    /// The store was written by an incompatible version or is otherwise unusable.
    #[error("storage unusable: {0}")]
    Unusable(String),
    /// A request the store cannot carry out as given (a programming error: e.g. an
    /// [`Store::ingest`] batch that is not sorted).
    #[error("invalid storage request: {0}")]
    Invalid(String),
    /// Injected by [`faulty::FaultyStore`].
    #[error("injected fault: {0}")]
    Injected(String),
}

/// One operation of a [`WriteBatch`], borrowing its bytes from the batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteOp<'a> {
    Put {
        space: Space,
        key: &'a [u8],
        value: &'a [u8],
    },
    Delete {
        space: Space,
        key: &'a [u8],
    },
    /// Deletes every key in `[start, end)`.
    DeleteRange {
        space: Space,
        start: &'a [u8],
        end: &'a [u8],
    },
    /// Combines `value` with the stored value by the space's [`merge_operator`].
    Merge {
        space: Space,
        key: &'a [u8],
        value: &'a [u8],
    },
}

/// A space's merge operator: the stored value (if any) and the operands, oldest first, to the
/// new value; `None` when one of them is malformed (the read reports corruption).
pub type MergeOperator = fn(&[u8], Option<&[u8]>, &[&[u8]]) -> Option<Vec<u8>>;

/// The merge operator of `space`, for the spaces that take [`WriteOp::Merge`].
pub fn merge_operator(space: Space) -> Option<MergeOperator> {
    match space {
        Space::Fields => Some(|key, existing, operands| {
            crate::layout::merge_postings(key, existing, operands.iter().copied())
        }),
        _ => None,
    }
}

/// Operations applied atomically, in order. Keys and values are copied into one buffer: a
/// group commit adds several per event, and an allocation (and a free on the writer's
/// thread) for each cost more than the copy.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct WriteBatch {
    ops: Vec<Op>,
    data: Vec<u8>,
}

/// Where one operation's two byte strings (key and value, or start and end) lie in the
/// batch's buffer: `first` bytes from `at`, then `second` bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Op {
    kind: OpKind,
    space: Space,
    at: usize,
    first: usize,
    second: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum OpKind {
    Put,
    Delete,
    DeleteRange,
    Merge,
}

impl std::fmt::Debug for WriteBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.ops()).finish()
    }
}

impl WriteBatch {
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty batch with room for `ops` operations.
    pub fn with_capacity(ops: usize) -> Self {
        WriteBatch {
            ops: Vec::with_capacity(ops),
            data: Vec::new(),
        }
    }

    /// Makes room for `bytes` more key and value bytes.
    pub fn reserve_bytes(&mut self, bytes: usize) {
        self.data.reserve(bytes);
    }

    fn push(&mut self, kind: OpKind, space: Space, first: &[u8], second: &[u8]) {
        let at = self.data.len();
        self.data.extend_from_slice(first);
        self.data.extend_from_slice(second);
        self.ops.push(Op {
            kind,
            space,
            at,
            first: first.len(),
            second: second.len(),
        });
    }

    pub fn put(&mut self, space: Space, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) {
        self.push(OpKind::Put, space, key.as_ref(), value.as_ref());
    }

    /// Merges `value` into `key` with the space's [`merge_operator`].
    ///
    /// # Panics
    /// If `space` has no merge operator (a programming error, caught by every test).
    pub fn merge(&mut self, space: Space, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) {
        assert!(
            merge_operator(space).is_some(),
            "space {} has no merge operator",
            space.name()
        );
        self.push(OpKind::Merge, space, key.as_ref(), value.as_ref());
    }

    pub fn delete(&mut self, space: Space, key: impl AsRef<[u8]>) {
        self.push(OpKind::Delete, space, key.as_ref(), &[]);
    }

    pub fn delete_range(&mut self, space: Space, start: impl AsRef<[u8]>, end: impl AsRef<[u8]>) {
        self.push(OpKind::DeleteRange, space, start.as_ref(), end.as_ref());
    }

    /// The operations, in order.
    pub fn ops(&self) -> impl ExactSizeIterator<Item = WriteOp<'_>> + '_ {
        self.ops.iter().map(|op| {
            let first = &self.data[op.at..op.at + op.first];
            let second = &self.data[op.at + op.first..op.at + op.first + op.second];
            let space = op.space;
            match op.kind {
                OpKind::Put => WriteOp::Put {
                    space,
                    key: first,
                    value: second,
                },
                OpKind::Delete => WriteOp::Delete { space, key: first },
                OpKind::DeleteRange => WriteOp::DeleteRange {
                    space,
                    start: first,
                    end: second,
                },
                OpKind::Merge => WriteOp::Merge {
                    space,
                    key: first,
                    value: second,
                },
            }
        })
    }

    pub fn len(&self) -> usize {
        self.ops.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// Key and value bytes in the batch.
    pub fn bytes(&self) -> usize {
        self.data.len()
    }

    /// Appends `other`'s operations after this batch's (one atomic write of both).
    pub fn append(&mut self, other: WriteBatch) {
        let shift = self.data.len();
        self.data.extend_from_slice(&other.data);
        self.ops.extend(other.ops.into_iter().map(|op| Op {
            at: op.at + shift,
            ..op
        }));
    }
}

/// How [`Store::ingest`] added a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ingested {
    /// As a table file of its own: no write-ahead log record, no memtable insert.
    AsTable,
    /// Through the ordinary unsynced write path (an engine without table ingestion, or
    /// RocksDB while the space's memtables held entries).
    Written,
}

/// Checks that `batch` can be given to [`Store::ingest`] for `space`: puts and merges of that
/// space only, keys strictly ascending.
pub fn check_ingestible(space: Space, batch: &WriteBatch) -> Result<(), StoreError> {
    let mut previous: Option<&[u8]> = None;
    for (i, op) in batch.ops().enumerate() {
        let (op_space, key) = match op {
            WriteOp::Put { space, key, .. } | WriteOp::Merge { space, key, .. } => (space, key),
            WriteOp::Delete { .. } | WriteOp::DeleteRange { .. } => {
                return Err(StoreError::Invalid(format!(
                    "ingest into {}: operation {i} is a delete (only puts and merges are ingested)",
                    space.name()
                )));
            }
        };
        if op_space != space {
            return Err(StoreError::Invalid(format!(
                "ingest into {}: operation {i} writes to {}",
                space.name(),
                op_space.name()
            )));
        }
        if previous.is_some_and(|p| p >= key) {
            return Err(StoreError::Invalid(format!(
                "ingest into {}: key {i} ({}) is not above the key before it (keys must be \
                 strictly ascending)",
                space.name(),
                hex::encode(key)
            )));
        }
        previous = Some(key);
    }
    Ok(())
}

/// Scan direction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    Forward,
    Reverse,
}

/// An ordered key-value store with atomic batches.
pub trait Store: Send + Sync + 'static {
    /// Applies the batch atomically: after a crash either every operation is there or none.
    /// With `durable`, returns only once the batch is on stable storage (synced WAL).
    fn write(&self, batch: WriteBatch, durable: bool) -> Result<(), StoreError>;

    /// Reads one value.
    fn get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;

    /// Reads many values, calling `visit(i, value)` for `keys[i]` with a borrowed value (no copy
    /// where the engine allows it). Visits every key exactly once, in order.
    fn multi_get(
        &self,
        space: Space,
        keys: &[&[u8]],
        visit: &mut dyn FnMut(usize, Option<&[u8]>),
    ) -> Result<(), StoreError>;

    /// Visits the keys in `[start, end)` (`end = None`: to the end of the space) in key order,
    /// or reverse key order, until `visit` returns false.
    fn scan(
        &self,
        space: Space,
        start: &[u8],
        end: Option<&[u8]>,
        direction: Direction,
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), StoreError>;

    /// Applies the batch atomically like [`Store::write`] without waiting for stable storage:
    /// it is durable once a [`Store::sync`] called after this returned has returned. Before
    /// that a process crash loses nothing (the OS holds the data) but a power loss may lose it
    /// (each batch whole or absent; RocksDB drops a torn WAL tail and refuses to open over
    /// damage before the tail). The group commit's write, a separate call so that fault
    /// injection can tell it from other unsynced writes.
    fn write_deferred(&self, batch: WriteBatch) -> Result<(), StoreError> {
        self.write(batch, false)
    }

    /// Adds a large sorted run of derived entries: `batch` holds only puts and merges of
    /// `space`, keys strictly ascending ([`check_ingestible`]). Atomic like [`Store::write`];
    /// where the engine allows, it bypasses the write-ahead log and memtables (RocksDB writes
    /// a table file and ingests it, durable on return, unless the space's memtables hold
    /// entries), which for random keys costs far less CPU than inserting each into a
    /// memtable. Otherwise it is `write(batch, false)`. Says which of the two it did.
    fn ingest(&self, space: Space, batch: WriteBatch) -> Result<Ingested, StoreError> {
        check_ingestible(space, &batch)?;
        self.write(batch, false)?;
        Ok(Ingested::Written)
    }

    /// Makes every write that returned before this call durable (no-op for stores whose writes
    /// are durable).
    fn sync(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every operation reads back with its own bytes, in order, also after `append` moved
    /// another batch's operations (and bytes) behind this one's; empty keys and values stay
    /// empty.
    #[test]
    fn batches_keep_each_operations_bytes_in_order_across_append() {
        let mut a = WriteBatch::with_capacity(2);
        a.put(Space::Leaves, b"k1", b"value one");
        a.delete(Space::EventIds, b"");
        let mut b = WriteBatch::new();
        b.delete_range(Space::Tiles, b"start", b"end");
        b.merge(Space::Fields, [7u8; 21], b"");
        b.put(Space::Meta, vec![9u8; 3], vec![1u8; 1000]);
        let mut expected: Vec<WriteOp<'_>> = a.ops().collect();
        expected.extend(b.ops());
        let expected: Vec<String> = expected.iter().map(|op| format!("{op:?}")).collect();
        let bytes = a.bytes() + b.bytes();
        let mut joined = a.clone();
        joined.append(b);
        let got: Vec<String> = joined.ops().map(|op| format!("{op:?}")).collect();
        assert_eq!(got, expected);
        assert_eq!((joined.len(), joined.bytes()), (5, bytes));
        assert_eq!(bytes, 2 + 9 + 5 + 3 + 21 + 3 + 1000);
        assert_eq!(
            joined.ops().nth(4),
            Some(WriteOp::Put {
                space: Space::Meta,
                key: &[9, 9, 9],
                value: &[1; 1000],
            })
        );
        assert_ne!(joined, a, "appending changed the batch");
    }
}
