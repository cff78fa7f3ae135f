//! The key-value contract every [`Store`] must meet. Each implementation's tests call
//! [`run_all`]; persistent stores also call [`check_reopen`]. Failures panic with a message
//! naming the broken property.

use super::{Direction, Store, WriteBatch};
use crate::layout::Space;

fn get(store: &dyn Store, space: Space, key: &[u8]) -> Option<Vec<u8>> {
    store.get(space, key).expect("get")
}

fn scan(
    store: &dyn Store,
    space: Space,
    start: &[u8],
    end: Option<&[u8]>,
    dir: Direction,
) -> Vec<Vec<u8>> {
    let mut keys = Vec::new();
    store
        .scan(space, start, end, dir, &mut |k, _| {
            keys.push(k.to_vec());
            true
        })
        .expect("scan");
    keys
}

/// Runs every property on an empty store.
pub fn run_all(store: &dyn Store) {
    put_get_and_missing(store);
    batch_applies_in_order(store);
    spaces_are_isolated(store);
    delete_range_is_half_open(store);
    multi_get_visits_in_order(store);
    scans_respect_bounds_and_direction(store);
    merges_take_the_union_and_malformed_ones_are_errors(store);
    ingest_adds_sorted_runs_and_refuses_anything_else(store);
}

/// [`Store::ingest`]: a sorted run of puts and merges reads back exactly like the same batch
/// written (puts replace, merges combine with what was there, also over entries still in a
/// memtable), twice in a row included; an unsorted, repeated-key, wrong-space or delete
/// batch is refused naming the problem, and writes nothing.
fn ingest_adds_sorted_runs_and_refuses_anything_else(store: &dyn Store) {
    use crate::layout::{decode_postings, encode_postings, field_index_key};
    use crate::store::StoreError;
    let hash_key = |i: u8| [0xEE, i, 0, 0, 1];
    // Written the usual way first: ingest must take the place of the put and add to the list.
    let posting = field_index_key(u32::MAX - 1, 9, &[7; 8], 0);
    let mut b = WriteBatch::new();
    b.put(Space::LeafHashes, hash_key(3), b"old");
    b.merge(Space::Fields, posting, encode_postings(0, &[5]));
    store.write(b, false).expect("write");

    let mut b = WriteBatch::new();
    for i in [1u8, 3, 7] {
        b.put(Space::LeafHashes, hash_key(i), vec![i]);
    }
    store.ingest(Space::LeafHashes, b).expect("ingest puts");
    let mut b = WriteBatch::new();
    b.merge(Space::Fields, posting, encode_postings(0, &[2, 9]));
    store.ingest(Space::Fields, b).expect("ingest merges");
    let mut b = WriteBatch::new();
    b.merge(Space::Fields, posting, encode_postings(0, &[9, 11]));
    store
        .ingest(Space::Fields, b)
        .expect("ingest over an ingested run");

    let ingested = |store: &dyn Store| -> Vec<(Vec<u8>, Vec<u8>)> {
        scan(
            store,
            Space::LeafHashes,
            &[0xEE],
            Some(&[0xEF]),
            Direction::Forward,
        )
        .into_iter()
        .map(|k| {
            let v = get(store, Space::LeafHashes, &k).expect("scanned key");
            (k, v)
        })
        .collect()
    };
    let expected: Vec<(Vec<u8>, Vec<u8>)> = [1u8, 3, 7]
        .iter()
        .map(|&i| (hash_key(i).to_vec(), vec![i]))
        .collect();
    assert_eq!(ingested(store), expected, "ingested puts replace and add");
    let list = get(store, Space::Fields, &posting).expect("posting list");
    let mut leaves = Vec::new();
    decode_postings(0, &list, &mut leaves).expect("well-formed");
    assert_eq!(
        leaves,
        [2, 5, 9, 11],
        "ingested merges combine with the stored list"
    );

    let refused = |b: WriteBatch, space: Space, what: &str| match store.ingest(space, b) {
        Err(StoreError::Invalid(m)) => assert!(m.contains(what), "{what}: {m}"),
        other => panic!("{what}: expected a refusal, got {other:?}"),
    };
    let mut b = WriteBatch::new();
    b.put(Space::LeafHashes, hash_key(9), vec![9]);
    b.put(Space::LeafHashes, hash_key(8), vec![8]);
    refused(b, Space::LeafHashes, "key 1 (ee08000001) is not above");
    let mut b = WriteBatch::new();
    b.put(Space::LeafHashes, hash_key(9), vec![9]);
    b.put(Space::LeafHashes, hash_key(9), vec![10]);
    refused(b, Space::LeafHashes, "strictly ascending");
    let mut b = WriteBatch::new();
    b.put(Space::LeafHashes, hash_key(9), vec![9]);
    b.put(Space::Leaves, hash_key(10), vec![9]);
    refused(b, Space::LeafHashes, "operation 1 writes to leaves");
    let mut b = WriteBatch::new();
    b.delete(Space::LeafHashes, hash_key(1));
    refused(b, Space::LeafHashes, "operation 0 is a delete");
    assert_eq!(ingested(store), expected, "refused ingests write nothing");
    assert_eq!(get(store, Space::Leaves, &hash_key(10)), None);

    let mut b = WriteBatch::new();
    b.delete_range(Space::LeafHashes, vec![0xEE], vec![0xEF]);
    b.delete(Space::Fields, posting);
    store.write(b, false).expect("clean up");
}

/// [`Space::Fields`] merges posting lists: operands of one batch and of later batches add up,
/// repeating one changes nothing, an entry from before posting lists (empty value) counts as
/// its leaf, and a malformed list is an error when read (RocksDB merges lazily) or written
/// (the memory store merges at once) — never a silently different list.
fn merges_take_the_union_and_malformed_ones_are_errors(store: &dyn Store) {
    use crate::layout::{decode_postings, encode_postings, field_index_key};
    let key = field_index_key(u32::MAX, 9, &[7; 8], 4096);
    let leaves = |store: &dyn Store| {
        let v = store
            .get(Space::Fields, &key)
            .expect("read merged")
            .expect("present");
        let mut out = Vec::new();
        decode_postings(4096, &v, &mut out).expect("well-formed");
        out
    };
    let mut b = WriteBatch::new();
    b.put(Space::Fields, key, Vec::new());
    b.merge(Space::Fields, key, encode_postings(4096, &[4100, 4200]));
    b.merge(Space::Fields, key, encode_postings(4096, &[4097]));
    store.write(b, true).expect("write merges");
    assert_eq!(leaves(store), [4096, 4097, 4100, 4200]);
    let mut b = WriteBatch::new();
    b.merge(Space::Fields, key, encode_postings(4096, &[4100, 5000]));
    store.write(b, false).expect("write merge");
    assert_eq!(leaves(store), [4096, 4097, 4100, 4200, 5000], "union");
    let mut seen = Vec::new();
    store
        .scan(
            Space::Fields,
            &key,
            None,
            Direction::Forward,
            &mut |k, v| {
                seen.push((k.to_vec(), v.to_vec()));
                false
            },
        )
        .expect("scan");
    let mut out = Vec::new();
    decode_postings(4096, &seen[0].1, &mut out).expect("scan sees the merged list");
    assert_eq!((seen[0].0.as_slice(), out.len()), (&key[..], 5));

    let other = field_index_key(u32::MAX, 9, &[8; 8], 0);
    let mut b = WriteBatch::new();
    b.merge(Space::Fields, other, vec![0x80]);
    let written = store.write(b, true);
    let read = store.get(Space::Fields, &other);
    assert!(
        written.is_err() || read.is_err(),
        "a malformed posting list is refused or fails to read: {written:?} {read:?}"
    );
    if written.is_ok() {
        // Leave the store readable for the properties that scan everything.
        let mut b = WriteBatch::new();
        b.delete(Space::Fields, other);
        store.write(b, true).expect("delete");
    }
    let mut b = WriteBatch::new();
    b.delete(Space::Fields, key);
    store.write(b, true).expect("delete");
}

fn put_get_and_missing(store: &dyn Store) {
    let mut b = WriteBatch::new();
    b.put(Space::Leaves, b"pg/a", b"1");
    b.put(Space::Leaves, b"pg/b", Vec::new());
    store.write(b, true).expect("write");
    assert_eq!(
        get(store, Space::Leaves, b"pg/a"),
        Some(b"1".to_vec()),
        "put then get"
    );
    assert_eq!(
        get(store, Space::Leaves, b"pg/b"),
        Some(Vec::new()),
        "empty values are values"
    );
    assert_eq!(get(store, Space::Leaves, b"pg/c"), None, "missing key");
    let mut b = WriteBatch::new();
    b.put(Space::Leaves, b"pg/a", b"2");
    store.write(b, false).expect("write");
    assert_eq!(
        get(store, Space::Leaves, b"pg/a"),
        Some(b"2".to_vec()),
        "overwrite"
    );
}

fn batch_applies_in_order(store: &dyn Store) {
    let mut b = WriteBatch::new();
    b.put(Space::Tiles, b"ord/x", b"1");
    b.delete(Space::Tiles, b"ord/x");
    b.delete(Space::Tiles, b"ord/y");
    b.put(Space::Tiles, b"ord/y", b"2");
    store.write(b, true).expect("write");
    assert_eq!(
        get(store, Space::Tiles, b"ord/x"),
        None,
        "put then delete in one batch"
    );
    assert_eq!(
        get(store, Space::Tiles, b"ord/y"),
        Some(b"2".to_vec()),
        "delete then put in one batch"
    );
}

fn spaces_are_isolated(store: &dyn Store) {
    let mut b = WriteBatch::new();
    b.put(Space::EventIds, b"iso", b"e");
    b.put(Space::Checkpoints, b"iso", b"c");
    store.write(b, true).expect("write");
    assert_eq!(get(store, Space::EventIds, b"iso"), Some(b"e".to_vec()));
    assert_eq!(get(store, Space::Checkpoints, b"iso"), Some(b"c".to_vec()));
    assert_eq!(
        get(store, Space::Meta, b"iso"),
        None,
        "a key leaked across spaces"
    );
}

fn delete_range_is_half_open(store: &dyn Store) {
    let mut b = WriteBatch::new();
    for i in 0u8..10 {
        b.put(Space::LeafHashes, vec![b'r', i], vec![i]);
    }
    store.write(b, true).expect("write");
    let mut b = WriteBatch::new();
    b.delete_range(Space::LeafHashes, vec![b'r', 2], vec![b'r', 5]);
    store.write(b, true).expect("write");
    let left: Vec<u8> = scan(
        store,
        Space::LeafHashes,
        b"r",
        Some(b"s"),
        Direction::Forward,
    )
    .into_iter()
    .map(|k| k[1])
    .collect();
    assert_eq!(
        left,
        vec![0, 1, 5, 6, 7, 8, 9],
        "delete_range must remove exactly [start, end)"
    );
}

fn multi_get_visits_in_order(store: &dyn Store) {
    let mut b = WriteBatch::new();
    b.put(Space::Meta, b"mg/1", b"one");
    b.put(Space::Meta, b"mg/3", b"three");
    store.write(b, true).expect("write");
    let visit = |keys: &[&[u8]]| {
        let mut seen = Vec::new();
        store
            .multi_get(Space::Meta, keys, &mut |i, v| {
                seen.push((i, v.map(<[u8]>::to_vec)))
            })
            .expect("multi_get");
        seen
    };
    let (one, three) = (Some(b"one".to_vec()), Some(b"three".to_vec()));
    assert_eq!(
        visit(&[b"mg/3", b"mg/2", b"mg/1", b"mg/3"]),
        vec![
            (0, three.clone()),
            (1, None),
            (2, one.clone()),
            (3, three.clone())
        ],
        "multi_get must visit every key once, in order, with its value"
    );
    // Keys in ascending order (RocksDB is then told not to sort them), repeats included.
    assert_eq!(
        visit(&[b"mg/0", b"mg/1", b"mg/1", b"mg/2", b"mg/3"]),
        vec![(0, None), (1, one.clone()), (2, one), (3, None), (4, three)],
        "multi_get of sorted keys must visit every key once, in order, with its value"
    );
}

fn scans_respect_bounds_and_direction(store: &dyn Store) {
    let mut b = WriteBatch::new();
    for k in [&b"sc/a"[..], b"sc/b", b"sc/c", b"sc/d", b"sd"] {
        b.put(Space::Checkpoints, k, k);
    }
    store.write(b, true).expect("write");
    let fwd = scan(
        store,
        Space::Checkpoints,
        b"sc/b",
        Some(b"sc/d"),
        Direction::Forward,
    );
    assert_eq!(
        fwd,
        vec![b"sc/b".to_vec(), b"sc/c".to_vec()],
        "forward [start, end)"
    );
    let rev = scan(
        store,
        Space::Checkpoints,
        b"sc/b",
        Some(b"sc/d"),
        Direction::Reverse,
    );
    assert_eq!(
        rev,
        vec![b"sc/c".to_vec(), b"sc/b".to_vec()],
        "reverse [start, end)"
    );
    let open = scan(store, Space::Checkpoints, b"sc/c", None, Direction::Forward);
    assert_eq!(
        open,
        vec![b"sc/c".to_vec(), b"sc/d".to_vec(), b"sd".to_vec()],
        "open end"
    );
    let last = scan(store, Space::Checkpoints, b"sc/", None, Direction::Reverse);
    assert_eq!(
        last.first(),
        Some(&b"sd".to_vec()),
        "reverse open end starts at the last key"
    );
    let mut first_only = Vec::new();
    store
        .scan(
            Space::Checkpoints,
            b"sc/",
            None,
            Direction::Forward,
            &mut |k, _| {
                first_only.push(k.to_vec());
                false
            },
        )
        .expect("scan");
    assert_eq!(
        first_only,
        vec![b"sc/a".to_vec()],
        "scan must stop when the visitor says so"
    );
    assert!(scan(store, Space::Checkpoints, b"zz", None, Direction::Forward).is_empty());
}

/// Writes durably through `first`, drops it, reopens with `reopen`, and checks the data.
pub fn check_reopen<S: Store>(first: S, reopen: impl FnOnce() -> S) {
    let mut b = WriteBatch::new();
    b.put(Space::Leaves, b"durable", b"yes");
    first.write(b, true).expect("write");
    drop(first);
    let again = reopen();
    assert_eq!(
        again.get(Space::Leaves, b"durable").expect("get"),
        Some(b"yes".to_vec()),
        "a durable write must survive reopening"
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::StoreError;
    use crate::store::faulty::{FaultyStore, WriteFaults};
    use crate::store::memory::MemoryStore;

    #[test]
    fn memory_store_conforms() {
        run_all(&MemoryStore::new());
    }

    #[test]
    fn faulty_store_conforms_when_healthy_and_fails_when_told() {
        let store = FaultyStore::new(MemoryStore::new());
        run_all(&store);
        store.set_write_faults(WriteFaults {
            fail_next: 1,
            ..Default::default()
        });
        let mut b = WriteBatch::new();
        b.put(Space::Leaves, b"k", b"v");
        assert!(matches!(
            store.write(b.clone(), true),
            Err(StoreError::Injected(_))
        ));
        assert_eq!(
            store.get(Space::Leaves, b"k").unwrap(),
            None,
            "failed write must not apply"
        );
        store.write(b, true).unwrap();
        assert_eq!(store.get(Space::Leaves, b"k").unwrap(), Some(b"v".to_vec()));
        store.set_fail_reads(true);
        assert!(store.get(Space::Leaves, b"k").is_err());
    }

    #[cfg(feature = "rocksdb")]
    #[test]
    fn rocks_store_conforms_and_persists() {
        use crate::store::rocks::{RocksOptions, RocksStore};
        let dir = tempfile::tempdir().unwrap();
        let opts = RocksOptions::small_for_tests();
        run_all(&RocksStore::open(&dir.path().join("a"), &opts).unwrap());
        let path = dir.path().join("b");
        check_reopen(RocksStore::open(&path, &opts).unwrap(), || {
            RocksStore::open(&path, &opts).unwrap()
        });
    }
}
