//! Ledger behaviour that must hold on every store (memory, RocksDB): appends, receipts, proofs
//! against signed checkpoints, dedup, concurrency, restart, fsck (clean and after tampering).

use std::sync::{Arc, RwLock};
use std::time::Duration;

use auditledger_ledger::checkpoint;
use auditledger_ledger::event::{AuditEvent, EventKind, decode_leaf_strict};
use auditledger_ledger::keys::Keyring;
use auditledger_ledger::layout::{self, Space};
use auditledger_ledger::merkle::{self, leaf_hash};
use auditledger_ledger::note::SignerKey;
use auditledger_ledger::query::{IndexedField, Order};
use auditledger_ledger::segments::{SegmentRecord, Tier};
use auditledger_ledger::store::memory::MemoryStore;
use auditledger_ledger::store::rocks::{RocksOptions, RocksStore};
use auditledger_ledger::store::{Direction, Store, WriteBatch};
use auditledger_ledger::{Ledger, LedgerOptions, fsck};

fn event(n: u64, tenant: &str, env: &str) -> AuditEvent {
    AuditEvent {
        event_id: format!("01936f0e-7a2b-7c3d-8e4f-{n:012x}"),
        event_kind: EventKind::ToolCall as i32,
        tenant_id: tenant.into(),
        environment: env.into(),
        occurred_at: 1_763_700_000_000_000_000 + n,
        tool_server: "github".into(),
        tool_name: format!("tool-{}", n % 7),
        user_id: format!("user-{}", n % 13),
        ..Default::default()
    }
}

fn signer() -> SignerKey {
    SignerKey::from_seed("auditledger.local", &[9u8; 32]).unwrap()
}

fn keyring() -> Arc<RwLock<Keyring>> {
    let mut ring = Keyring::default();
    ring.add_existing(signer(), None, 0);
    Arc::new(RwLock::new(ring))
}

fn options() -> LedgerOptions {
    LedgerOptions {
        checkpoint_interval: Duration::from_millis(50),
        ..Default::default()
    }
}

fn open(store: &Arc<dyn Store>) -> Ledger {
    Ledger::open(store.clone(), keyring(), options()).unwrap()
}

fn suite(make: &dyn Fn() -> Arc<dyn Store>) {
    appends_prove_and_dedup(make());
    concurrent_appenders_get_unique_contiguous_indexes(make());
    concurrent_resends_are_logged_once(make());
    restart_keeps_everything_and_chains_checkpoints(make());
    leaf_hash_index_tail_is_rebuilt_on_open(make());
    fast_appends_ingest_their_indexes_and_lookups_do_not_wait_the_linger(make());
    archived_segments_release_hot_leaves_and_keep_proofs(make());
    fsck_detects_tampering(make);
}

fn appends_prove_and_dedup(store: Arc<dyn Store>) {
    let ledger = open(&store);
    let batch: Vec<AuditEvent> = (0..300).map(|n| event(n, "acme", "prod")).collect();
    let receipts = ledger.append_blocking("gw-1", &batch).unwrap();
    assert_eq!(receipts.len(), 300);
    for (i, r) in receipts.iter().enumerate() {
        assert_eq!(r.leaf_index, i as u64);
        assert!(!r.duplicate);
        assert_eq!(&*r.origin, "auditledger.local/acme/prod");
    }
    // Another tenant gets its own log starting at 0.
    let other = ledger
        .append_blocking("gw-2", &[event(1000, "beta", "dev")])
        .unwrap();
    assert_eq!(other[0].leaf_index, 0);
    assert_eq!(&*other[0].origin, "auditledger.local/beta/dev");

    // Re-sent events: original receipts, nothing appended; a changed body is flagged.
    let mut changed = event(5, "acme", "prod");
    changed.tool_name = "something-else".into();
    let again = ledger
        .append_blocking("gw-1", &[event(7, "acme", "prod"), changed])
        .unwrap();
    assert!(again[0].duplicate && again[1].duplicate);
    assert_eq!(
        (again[0].leaf_index, again[0].leaf_hash),
        (7, receipts[7].leaf_hash)
    );
    assert_eq!(again[0].content_differs, Some(false));
    assert_eq!(again[1].content_differs, Some(true));
    // The same id twice within one batch: one leaf.
    let twice = ledger
        .append_blocking(
            "gw-1",
            &[event(400, "acme", "prod"), event(400, "acme", "prod")],
        )
        .unwrap();
    assert!(!twice[0].duplicate && twice[1].duplicate);
    assert_eq!(twice[0].leaf_index, twice[1].leaf_index);

    let log = ledger.log("acme", "prod").unwrap();
    assert_eq!(log.tree_size(), 301);
    ledger.checkpoint_now().unwrap();
    let cp = log.latest_checkpoint().unwrap();
    let opened = checkpoint::open(cp.note.as_bytes(), &[signer().verifier()]).unwrap();
    assert_eq!(opened.checkpoint.tree_size, 301);
    for r in receipts.iter().step_by(37) {
        let leaf = log.leaf(r.leaf_index).unwrap().unwrap();
        assert_eq!(leaf_hash(&leaf), r.leaf_hash);
        let record = decode_leaf_strict(&leaf).unwrap();
        assert_eq!(record.principal, "gw-1");
        assert_eq!(
            record.event.unwrap(),
            batch[r.leaf_index as usize],
            "leaf must carry the event as sent"
        );
        let proof = log.inclusion_proof(r.leaf_index, 301).unwrap();
        merkle::verify_inclusion(
            r.leaf_index,
            301,
            &r.leaf_hash,
            &proof,
            &opened.checkpoint.root_hash,
        )
        .unwrap();
        assert_eq!(
            tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .build()
                .unwrap()
                .block_on(log.find_leaf_hash(&r.leaf_hash))
                .unwrap(),
            Some(r.leaf_index)
        );
        assert_eq!(log.find_event(&r.event_id).unwrap(), Some(r.leaf_index));
    }
    // logged_at never decreases.
    let mut last = 0;
    log.scan_leaves(0, 301, &mut |_, leaf| {
        let t = decode_leaf_strict(leaf).unwrap().logged_at;
        assert!(t >= last);
        last = t;
        true
    })
    .unwrap();
    let old_root = log.root(100).unwrap();
    let proof = log.consistency_proof(100, 301).unwrap();
    merkle::verify_consistency(100, 301, &proof, &old_root, &opened.checkpoint.root_hash).unwrap();
    assert!(log.inclusion_proof(5, 302).is_err(), "beyond tree size");
    // Batched proofs: every leaf (and one twice) at two sizes, equal to the single proofs.
    for size in [301, 137] {
        let mut wanted: Vec<u64> = (0..size).rev().collect();
        wanted.push(3);
        let batch = log.inclusion_proofs(&wanted, size).unwrap();
        assert_eq!(batch.len(), wanted.len());
        for (&i, (hash, proof)) in wanted.iter().zip(&batch) {
            assert_eq!(*hash, log.leaf_hash(i).unwrap(), "leaf {i} at {size}");
            assert_eq!(
                *proof,
                log.inclusion_proof(i, size).unwrap(),
                "leaf {i} at {size}"
            );
        }
    }
    assert!(
        log.inclusion_proofs(&[0, 301], 301).is_err(),
        "a leaf beyond the size"
    );
    assert!(
        log.inclusion_proofs(&[0], 302).is_err(),
        "a size beyond the tree"
    );
    assert!(log.inclusion_proofs(&[], 301).unwrap().is_empty());
    ledger.close().unwrap();
}

fn concurrent_appenders_get_unique_contiguous_indexes(store: Arc<dyn Store>) {
    let ledger = Arc::new(open(&store));
    let threads: Vec<_> = (0..8u64)
        .map(|t| {
            let ledger = ledger.clone();
            std::thread::spawn(move || {
                let mut got = Vec::new();
                for b in 0..25u64 {
                    let batch: Vec<AuditEvent> = (0..20)
                        .map(|i| event(t * 1_000_000 + b * 100 + i, "acme", "prod"))
                        .collect();
                    let receipts = ledger.append_blocking(&format!("gw-{t}"), &batch).unwrap();
                    // Within one request, indexes are consecutive and in order.
                    for w in receipts.windows(2) {
                        assert_eq!(w[1].leaf_index, w[0].leaf_index + 1);
                    }
                    got.extend(receipts.into_iter().map(|r| r.leaf_index));
                }
                got
            })
        })
        .collect();
    let mut all: Vec<u64> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    all.sort_unstable();
    assert_eq!(all, (0..4000).collect::<Vec<u64>>());
    ledger.close().unwrap();
    assert!(
        fsck::check(store.as_ref(), &[signer().verifier()])
            .unwrap()
            .is_clean()
    );
}

/// Gateways that re-send the same events at the same moment (a retry racing the original):
/// every event is logged once, whichever copy wins, and every copy gets its index. Copies
/// arrive in the same group, while the first copy's group is in flight, and after it is
/// durable (the last thread re-sends the first batches long after the first one did).
fn concurrent_resends_are_logged_once(store: Arc<dyn Store>) {
    let ledger = Arc::new(open(&store));
    let (batches, per_batch) = (240u64, 50u64);
    let threads: Vec<_> = (0..6u64)
        .map(|t| {
            let ledger = ledger.clone();
            std::thread::spawn(move || {
                let mut got = Vec::new();
                for b in 0..batches {
                    // Each thread sends every batch, a few batches apart from the others.
                    let b = (b + t * 3) % batches;
                    let batch: Vec<AuditEvent> = (0..per_batch)
                        .map(|i| event(b * per_batch + i, "acme", "prod"))
                        .collect();
                    let receipts = ledger.append_blocking(&format!("gw-{t}"), &batch).unwrap();
                    for (e, r) in batch.iter().zip(receipts) {
                        assert_eq!(r.content_differs, r.duplicate.then_some(false), "{r:?}");
                        got.push((e.event_id.clone(), r.leaf_index, r.duplicate));
                    }
                }
                got
            })
        })
        .collect();
    let mut by_id: std::collections::HashMap<String, Vec<(u64, bool)>> = Default::default();
    for t in threads {
        for (id, index, duplicate) in t.join().unwrap() {
            by_id.entry(id).or_default().push((index, duplicate));
        }
    }
    let distinct = (batches * per_batch) as usize;
    assert_eq!(by_id.len(), distinct);
    let mut indexes: Vec<u64> = by_id
        .values()
        .map(|copies| {
            assert_eq!(copies.len(), 6);
            assert_eq!(
                copies.iter().filter(|(_, d)| !d).count(),
                1,
                "exactly one copy is new: {copies:?}"
            );
            assert!(copies.iter().all(|(i, _)| *i == copies[0].0), "{copies:?}");
            copies[0].0
        })
        .collect();
    indexes.sort_unstable();
    assert_eq!(indexes, (0..distinct as u64).collect::<Vec<_>>());
    ledger.close().unwrap();
    assert!(
        fsck::check(store.as_ref(), &[signer().verifier()])
            .unwrap()
            .is_clean()
    );
}

fn restart_keeps_everything_and_chains_checkpoints(store: Arc<dyn Store>) {
    let first = {
        let ledger = open(&store);
        let r = ledger
            .append_blocking(
                "gw",
                &(0..10)
                    .map(|n| event(n, "acme", "prod"))
                    .collect::<Vec<_>>(),
            )
            .unwrap();
        ledger.close().unwrap();
        r
    };
    let ledger = open(&store);
    let log = ledger.log("acme", "prod").unwrap();
    assert_eq!(log.tree_size(), 10);
    let cp1 = log.latest_checkpoint().expect("final checkpoint at close");
    assert_eq!(cp1.checkpoint.tree_size, 10);
    assert!(
        cp1.checkpoint.prev.is_none(),
        "first checkpoint has no prev"
    );
    // Re-sending after restart still dedups.
    let again = ledger
        .append_blocking("gw", &[event(3, "acme", "prod")])
        .unwrap();
    assert_eq!(
        (again[0].duplicate, again[0].leaf_index, again[0].leaf_hash),
        (true, 3, first[3].leaf_hash)
    );
    ledger
        .append_blocking("gw", &[event(10, "acme", "prod")])
        .unwrap();
    // The checkpointer signs within the interval without being asked.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let cp2 = rt
        .block_on(async {
            tokio::time::timeout(Duration::from_secs(5), log.wait_for_checkpoint(11)).await
        })
        .expect("checkpoint within 5 s")
        .unwrap();
    assert_eq!(
        cp2.checkpoint.prev,
        Some(cp1.checkpoint.body_hash()),
        "chain crosses the restart"
    );
    ledger.close().unwrap();
    let report = fsck::check(store.as_ref(), &[signer().verifier()]).unwrap();
    assert!(report.is_clean(), "{:?}", report.problems());
}

/// The leaf-hash and search indexes are written without sync; a crash can lose their tail
/// (entries and watermark together). Opening must rebuild both.
fn leaf_hash_index_tail_is_rebuilt_on_open(store: Arc<dyn Store>) {
    let receipts = {
        let ledger = open(&store);
        let r = ledger
            .append_blocking(
                "gw",
                &(0..300)
                    .map(|n| event(n, "acme", "prod"))
                    .collect::<Vec<_>>(),
            )
            .unwrap();
        ledger.close().unwrap();
        r
    };
    // Simulate the lost tail: watermark back to 100, entries from 100 on gone.
    let mut b = WriteBatch::new();
    b.put(
        Space::Meta,
        layout::meta_indexed_key(0),
        100u64.to_be_bytes(),
    );
    for r in &receipts[100..] {
        b.delete(Space::LeafHashes, layout::leaf_hash_key(0, &r.leaf_hash));
    }
    // Every posting list of bucket 0 keeps only its leaves below 100.
    let mut lists = Vec::new();
    store
        .scan(Space::Fields, &[], None, Direction::Forward, &mut |k, v| {
            lists.push((k.to_vec(), v.to_vec()));
            true
        })
        .unwrap();
    assert!(!lists.is_empty());
    for (k, v) in lists {
        let mut leaves = Vec::new();
        layout::decode_postings(0, &v, &mut leaves).expect("a posting list");
        leaves.retain(|&l| l < 100);
        if leaves.is_empty() {
            b.delete(Space::Fields, k);
        } else {
            b.put(Space::Fields, k, layout::encode_postings(0, &leaves));
        }
    }
    store.write(b, true).unwrap();
    let report = fsck::check(store.as_ref(), &[signer().verifier()]).unwrap();
    assert!(
        report.is_clean(),
        "a lagging index is consistent: {:?}",
        report.problems()
    );
    let ledger = open(&store);
    let log = ledger.log("acme", "prod").unwrap();
    assert_eq!(log.indexed_size(), 300);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    assert_eq!(
        rt.block_on(log.find_leaf_hash(&receipts[250].leaf_hash))
            .unwrap(),
        Some(250)
    );
    assert_eq!(rt.block_on(log.find_leaf_hash(&[0u8; 32])).unwrap(), None);
    let want: Vec<u64> = (0..300).filter(|n| n % 13 == 5).collect();
    assert_eq!(
        log.index_candidates(
            IndexedField::UserId,
            "user-5",
            0,
            300,
            Order::OldestFirst,
            1000
        )
        .unwrap(),
        want,
        "search entries of the lost tail rebuilt"
    );
    ledger.close().unwrap();
    let report = fsck::check(store.as_ref(), &[signer().verifier()]).unwrap();
    assert!(report.is_clean(), "{:?}", report.problems());
}

/// At high rates the indexer gathers leaves and ingests their entries as sorted runs. The
/// linger here (60 s) is longer than a lookup waits for the index (5 s, then an error), so
/// lookups that answer were not left waiting for it: they cut it short. The ingested entries
/// serve lookups and searches like written ones, survive a restart, and fsck is clean.
fn fast_appends_ingest_their_indexes_and_lookups_do_not_wait_the_linger(store: Arc<dyn Store>) {
    let opts = LedgerOptions {
        index_linger: Duration::from_secs(60),
        ..options()
    };
    let ledger = Ledger::open(store.clone(), keyring(), opts.clone()).unwrap();
    let mut receipts = Vec::new();
    for batch in 0..15u64 {
        let events: Vec<AuditEvent> = (batch * 2000..(batch + 1) * 2000)
            .map(|n| event(n, "acme", "prod"))
            .collect();
        receipts.extend(ledger.append_blocking("gw", &events).unwrap());
    }
    let log = ledger.log("acme", "prod").unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    for i in [0, 17_000, 29_999] {
        assert_eq!(
            rt.block_on(log.find_leaf_hash(&receipts[i].leaf_hash))
                .unwrap(),
            Some(i as u64),
            "leaf {i} by its hash"
        );
    }
    let ingests = ledger
        .metrics()
        .index_ingests
        .load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        ingests >= 1,
        "30 000 leaves appended at once were ingested ({ingests} runs)"
    );
    let written = ledger
        .metrics()
        .index_ingests_written
        .load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        written <= 2 * ingests,
        "{written} of the {ingests} runs' ingests (two each) went through the memtables"
    );
    let want: Vec<u64> = (0..30_000).filter(|n| n % 13 == 5).collect();
    let search = |log: &auditledger_ledger::Log| {
        log.index_candidates(
            IndexedField::UserId,
            "user-5",
            0,
            30_000,
            Order::OldestFirst,
            5000,
        )
        .unwrap()
    };
    assert_eq!(search(&log), want);
    ledger.close().unwrap();
    let report = fsck::check(store.as_ref(), &[signer().verifier()]).unwrap();
    assert!(report.is_clean(), "{:?}", report.problems());
    let ledger = Ledger::open(store.clone(), keyring(), opts).unwrap();
    let log = ledger.log("acme", "prod").unwrap();
    assert_eq!(log.indexed_size(), 30_000);
    assert_eq!(
        rt.block_on(log.find_leaf_hash(&receipts[12_345].leaf_hash))
            .unwrap(),
        Some(12_345)
    );
    assert_eq!(search(&log), want);
    ledger.close().unwrap();
}

fn fsck_problems(store: &Arc<dyn Store>) -> Vec<String> {
    fsck::check(store.as_ref(), &[signer().verifier()])
        .unwrap()
        .problems()
}

fn archived_segments_release_hot_leaves_and_keep_proofs(store: Arc<dyn Store>) {
    let opts = LedgerOptions {
        segment_bits: 8,
        ..options()
    };
    let ledger = Ledger::open(store.clone(), keyring(), opts.clone()).unwrap();
    let events: Vec<AuditEvent> = (0..3 * 256 + 10)
        .map(|n| event(n, "acme", "prod"))
        .collect();
    let receipts = ledger.append_blocking("gw", &events).unwrap();
    let log = ledger.log("acme", "prod").unwrap();
    assert_eq!(log.segment_bits(), 8);
    // fsck below reads the store under a live ledger: let the asynchronous index settle.
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap()
        .block_on(log.wait_for_index(log.tree_size()))
        .unwrap();
    let root = log.segment_root(256).unwrap();
    let (oldest, newest) = log.segment_time_bounds(256).unwrap().unwrap();
    assert!(oldest <= newest && oldest > 0);
    let record = SegmentRecord {
        start: 256,
        bits: 8,
        tier: Tier::Warm,
        root,
        object: "acme/prod/segments/256-512.parquet".into(),
        object_blake3: [1; 32],
        object_bytes: 1000,
        content_expired: false,
        hot_released: false,
        recorded_at: 1,
        oldest,
        newest,
    };
    // Refused: wrong root, wrong size, the hot tier, an incomplete segment, releasing first.
    let err = log
        .record_segment(&SegmentRecord {
            root: [0; 32],
            ..record.clone()
        })
        .unwrap_err();
    assert!(err.to_string().contains("does not match the tree"), "{err}");
    let err = log
        .record_segment(&SegmentRecord {
            bits: 9,
            start: 0,
            ..record.clone()
        })
        .unwrap_err();
    assert!(err.to_string().contains("2^9"), "{err}");
    let err = log
        .record_segment(&SegmentRecord {
            tier: Tier::Hot,
            ..record.clone()
        })
        .unwrap_err();
    assert!(err.to_string().contains("warm or cold"), "{err}");
    let err = log
        .record_segment(&SegmentRecord {
            newest: newest + 1,
            ..record.clone()
        })
        .unwrap_err();
    assert!(err.to_string().contains("logged_at bounds"), "{err}");
    assert!(
        log.segment_root(3 * 256).is_err(),
        "segment 3 is incomplete"
    );
    let err = log.release_hot_leaves(256).unwrap_err();
    assert!(err.to_string().contains("record it before"), "{err}");
    assert!(log.segments().unwrap().is_empty());

    log.record_segment(&record).unwrap();
    assert_eq!(log.segments().unwrap(), vec![record.clone()]);
    assert_eq!(log.segment_of(300).unwrap(), Some(record.clone()));
    assert_eq!(log.segment_of(100).unwrap(), None);
    assert!(
        log.leaf(300).unwrap().is_some(),
        "recording alone keeps the hot copy"
    );
    let problems = fsck_problems(&store);
    assert!(problems.is_empty(), "{problems:?}");

    assert!(log.release_hot_leaves(256).unwrap());
    assert!(
        !log.release_hot_leaves(256).unwrap(),
        "second release is a no-op"
    );
    assert_eq!(log.leaf(300).unwrap(), None);
    assert!(log.leaf(255).unwrap().is_some() && log.leaf(512).unwrap().is_some());
    let released = log.segment_of(300).unwrap().unwrap();
    assert!(released.hot_released);
    let err = log.record_segment(&record).unwrap_err();
    assert!(err.to_string().contains("already released"), "{err}");
    log.record_segment(&SegmentRecord {
        tier: Tier::Cold,
        hot_released: true,
        ..record.clone()
    })
    .unwrap();

    // Proofs and lookups of released leaves still work from the tiles and indexes.
    let size = log.tree_size();
    let tree_root = log.root(size).unwrap();
    let proof = log.inclusion_proof(300, size).unwrap();
    merkle::verify_inclusion(300, size, &receipts[300].leaf_hash, &proof, &tree_root).unwrap();
    assert_eq!(log.leaf_hash(300).unwrap(), receipts[300].leaf_hash);
    let id = auditledger_ledger::event::EventId::parse(&events[300].event_id).unwrap();
    assert_eq!(log.find_event(&id).unwrap(), Some(300));
    // A re-sent archived event is still a duplicate at its original index.
    let again = ledger.append_blocking("gw", &events[300..301]).unwrap();
    assert!(again[0].duplicate && again[0].leaf_index == 300);
    let report = fsck::check(store.as_ref(), &[signer().verifier()]).unwrap();
    assert!(report.is_clean(), "{:?}", report.problems());
    assert_eq!(report.logs[0].leaves_archived, 256);
    assert_eq!(report.logs[0].leaves_checked, size - 256);
    ledger.close().unwrap();
    drop(ledger);

    // Reopen: the right edge does not need released leaves; appends continue.
    let ledger = Ledger::open(store.clone(), keyring(), opts).unwrap();
    let log = ledger.log("acme", "prod").unwrap();
    assert_eq!(log.tree_size(), size);
    let more = ledger
        .append_blocking("gw", &[event(10_000, "acme", "prod")])
        .unwrap();
    assert_eq!(more[0].leaf_index, size);
    ledger.close().unwrap();
    drop(ledger);
    let problems = fsck_problems(&store);
    assert!(problems.is_empty(), "{problems:?}");

    // fsck: a released leaf's event-id entry pointing to another leaf, or beyond the tree. Its
    // event id is not hot, so only the shape of the index (one entry per leaf) can tell.
    let id = auditledger_ledger::event::EventId::parse(&events[300].event_id).unwrap();
    let key = layout::event_id_key(0, &id.0);
    let original = store.get(Space::EventIds, &key).unwrap().unwrap();
    for (target, needle) in [
        (
            301u64,
            "leaf 300: no event id index entry points to it; leaf 301 has a second one",
        ),
        (
            size + 5,
            "leaf 300: no event id index entry points to it; the entry of event id",
        ),
    ] {
        put(
            store.as_ref(),
            Space::EventIds,
            &key,
            target.to_be_bytes().to_vec(),
        );
        let problems = fsck_problems(&store);
        assert!(problems.iter().any(|p| p.contains(needle)), "{problems:?}");
    }
    put(store.as_ref(), Space::EventIds, &key, original);
    let problems = fsck_problems(&store);
    assert!(problems.is_empty(), "{problems:?}");

    // fsck: a leaf left behind in a released range, and a record whose root is wrong.
    let key = layout::leaf_key(0, 300);
    put(store.as_ref(), Space::Leaves, &key, b"stray".to_vec());
    let problems = fsck_problems(&store);
    assert!(
        problems
            .iter()
            .any(|p| p.contains("leaf 300 is still there")),
        "{problems:?}"
    );
    let mut b = WriteBatch::new();
    b.delete(Space::Leaves, key);
    store.write(b, true).unwrap();
    let forged = SegmentRecord {
        root: [7; 32],
        tier: Tier::Cold,
        hot_released: true,
        ..record
    };
    put(
        store.as_ref(),
        Space::Meta,
        &layout::meta_segment_key(0, 256),
        forged.encode(),
    );
    let problems = fsck_problems(&store);
    assert!(
        problems
            .iter()
            .any(|p| p.contains("segment [256, 512) (cold tier): recorded root")),
        "{problems:?}"
    );
}

/// Applies `damage` to a fresh ledger's store and checks fsck names the problem.
fn fsck_detects_tampering(make: &dyn Fn() -> Arc<dyn Store>) {
    type Damage = fn(&dyn Store);
    let cases: Vec<(&str, Damage, &str)> = vec![
        (
            "flipped leaf byte",
            |s| {
                let key = layout::leaf_key(0, 5);
                let mut leaf = s.get(Space::Leaves, &key).unwrap().unwrap();
                let last = leaf.len() - 1;
                leaf[last] ^= 0x01;
                put(s, Space::Leaves, &key, leaf);
            },
            "leaf 5",
        ),
        (
            "deleted leaf",
            |s| {
                let mut b = WriteBatch::new();
                b.delete(Space::Leaves, layout::leaf_key(0, 7));
                s.write(b, true).unwrap();
            },
            "leaves [7, 8) are missing",
        ),
        (
            "tile hash replaced",
            |s| {
                let key = layout::tile_key(0, layout::TileId { level: 0, index: 0 });
                let mut tile = s.get(Space::Tiles, &key).unwrap().unwrap();
                tile[2 + 32 * 3] ^= 0xff;
                put(s, Space::Tiles, &key, tile);
            },
            "leaf 3: stored leaf hash differs",
        ),
        (
            "event id index removed",
            |s| {
                let mut first = None;
                s.scan(
                    Space::EventIds,
                    &[0, 0, 0, 0],
                    Some(&[0, 0, 0, 1]),
                    auditledger_ledger::store::Direction::Forward,
                    &mut |k, _| {
                        first = Some(k.to_vec());
                        false
                    },
                )
                .unwrap();
                let mut b = WriteBatch::new();
                b.delete(Space::EventIds, first.unwrap());
                s.write(b, true).unwrap();
            },
            "event id index entry missing",
        ),
        (
            "checkpoint re-signed by a stranger",
            |s| {
                let stranger = SignerKey::from_seed("auditledger.local", &[1u8; 32]).unwrap();
                let key = layout::checkpoint_key(0, 300);
                let note =
                    String::from_utf8(s.get(Space::Checkpoints, &key).unwrap().unwrap()).unwrap();
                let body = note.split("\n\n").next().unwrap().to_string() + "\n";
                let forged = auditledger_ledger::note::sign(&body, &[stranger]).unwrap();
                put(s, Space::Checkpoints, &key, forged.into_bytes());
            },
            "not signed by any trusted key",
        ),
        (
            "checkpoint chain broken",
            |s| {
                let key = layout::checkpoint_key(0, 300);
                let note =
                    String::from_utf8(s.get(Space::Checkpoints, &key).unwrap().unwrap()).unwrap();
                let body = note.split("\n\n").next().unwrap().to_string() + "\n";
                let mut cp = checkpoint::Checkpoint::parse_body(&body).unwrap();
                cp.prev = Some([7u8; 32]);
                put(
                    s,
                    Space::Checkpoints,
                    &key,
                    cp.sign(&[signer()]).unwrap().into_bytes(),
                );
            },
            "chain broken",
        ),
    ];
    for (name, damage, needle) in cases {
        let store = make();
        {
            let ledger = open(&store);
            ledger
                .append_blocking(
                    "gw",
                    &(0..10)
                        .map(|n| event(n, "acme", "prod"))
                        .collect::<Vec<_>>(),
                )
                .unwrap();
            ledger.checkpoint_now().unwrap();
            ledger
                .append_blocking(
                    "gw",
                    &(10..300)
                        .map(|n| event(n, "acme", "prod"))
                        .collect::<Vec<_>>(),
                )
                .unwrap();
            ledger.close().unwrap();
        }
        let clean = fsck::check(store.as_ref(), &[signer().verifier()]).unwrap();
        assert!(
            clean.is_clean(),
            "{name}: clean store reported {:?}",
            clean.problems()
        );
        damage(store.as_ref());
        let report = fsck::check(store.as_ref(), &[signer().verifier()]).unwrap();
        let problems = report.problems().join("\n");
        assert!(
            problems.contains(needle),
            "{name}: expected {needle:?} in {problems:?}"
        );
    }
}

fn put(s: &dyn Store, space: Space, key: &[u8], value: Vec<u8>) {
    let mut b = WriteBatch::new();
    b.put(space, key, value);
    s.write(b, true).unwrap();
}

#[test]
fn memory_store() {
    suite(&|| Arc::new(MemoryStore::new()));
}

#[test]
fn rocks_store() {
    let dir = tempfile::tempdir().unwrap();
    let counter = std::sync::atomic::AtomicU32::new(0);
    suite(&|| {
        let n = counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Arc::new(
            RocksStore::open(
                &dir.path().join(format!("db{n}")),
                &RocksOptions::small_for_tests(),
            )
            .unwrap(),
        )
    });
}
