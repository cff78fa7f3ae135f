//! The archiver engine: hot → warm → cold moves keep every leaf readable and every proof
//! verifiable (checked with the `verifier` crate), retention expiry honours legal holds and the
//! deletion hook, and reruns are idempotent.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use auditledger_archiver::{
    Archiver, ArchiverConfig, Deletion, DeletionHook, LeafContent, TierStores, allow_deletions,
};
use auditledger_ledger::holds::LegalHold;
use auditledger_ledger::segments::Tier;
use auditledger_ledger::store::memory::MemoryStore;
use auditledger_ledger::{Clock, Ledger, Log, SystemClock};
use parquet::file::reader::{FileReader, SerializedFileReader};

use common::tiers::{Census, append, check_archive, file_stores, open_ledger, verifiers};

const YEAR: Duration = Duration::from_secs(365 * 24 * 3600);

fn now() -> u64 {
    SystemClock.now_nanos()
}

fn archiver(ledger: &Arc<Ledger>, stores: &TierStores, hook: DeletionHook) -> Archiver {
    Archiver::new(
        ledger.clone(),
        stores.clone(),
        ArchiverConfig::default(),
        hook,
    )
}

/// Verifies leaf `leaf_index`, read through the tier reader, against the latest checkpoint
/// with the offline verifier; returns the tier it came from.
async fn prove(archiver: &Archiver, log: &Log, leaf_index: u64) -> LeafContent {
    let checkpoint = log.latest_checkpoint().unwrap();
    let tree_size = checkpoint.checkpoint.tree_size;
    let proof: Vec<Vec<u8>> = log
        .inclusion_proof(leaf_index, tree_size)
        .unwrap()
        .iter()
        .map(|h| h.to_vec())
        .collect();
    let content = archiver.reader().leaf(log, leaf_index).await.unwrap();
    match &content {
        LeafContent::Present { bytes, .. } => {
            auditledger_verifier::verify_inclusion(
                bytes,
                leaf_index,
                &proof,
                checkpoint.note.as_bytes(),
                &verifiers(),
            )
            .unwrap();
        }
        LeafContent::Expired { .. } => {
            auditledger_verifier::verify_inclusion_of_hash(
                &log.leaf_hash(leaf_index).unwrap(),
                leaf_index,
                &proof,
                checkpoint.note.as_bytes(),
                &verifiers(),
            )
            .unwrap();
        }
    }
    content
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proofs_verify_across_hot_warm_and_cold() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = open_ledger(Arc::new(MemoryStore::new()), 8);
    append(&ledger, "acme", 0, 4 * 256).await;
    ledger.checkpoint_now().unwrap();
    let log = ledger.log("acme", "prod").unwrap();
    let first = log.latest_checkpoint().unwrap();
    append(&ledger, "acme", 4 * 256, 100).await;
    let stores = file_stores(dir.path());
    let archiver = archiver(&ledger, &stores, allow_deletions());

    // Nothing is old enough yet; then everything full moves to warm, then two to cold.
    let report = archiver.move_down(Tier::Warm, YEAR, now()).await;
    assert!(
        report.moved.is_empty() && report.failures.is_empty(),
        "{report:?}"
    );
    let report = archiver.move_down(Tier::Warm, Duration::ZERO, now()).await;
    assert!(report.failures.is_empty(), "{report:?}");
    assert_eq!(report.moved.len(), 4);
    assert!(
        report
            .moved
            .iter()
            .all(|m| m.from == Tier::Hot && m.to == Tier::Warm)
    );
    // Idempotent: a rerun has nothing to do.
    let again = archiver.move_down(Tier::Warm, Duration::ZERO, now()).await;
    assert!(
        again.moved.is_empty() && again.failures.is_empty(),
        "{again:?}"
    );
    // Only the first two segments are older than segment 2's first leaf: they move to cold.
    let records = log.segments().unwrap();
    let at = now();
    let older_than = Duration::from_nanos(at - records[2].oldest);
    let report = archiver.move_down(Tier::Cold, older_than, at).await;
    assert!(report.failures.is_empty(), "{report:?}");
    assert!(!report.moved.is_empty());
    assert!(
        report
            .moved
            .iter()
            .all(|m| m.from == Tier::Warm && m.to == Tier::Cold)
    );
    let census = check_archive(&ledger, &stores, archiver.reader()).await;
    assert_eq!(
        census,
        Census {
            warm: 2,
            cold: 2,
            expired: 0
        }
    );

    ledger.checkpoint_now().unwrap();
    let latest = log.latest_checkpoint().unwrap();
    assert_eq!(latest.checkpoint.tree_size, 4 * 256 + 100);
    let mut tiers = Vec::new();
    for leaf_index in [0, 255, 300, 700, 1023, 1024, 1123] {
        let content = prove(&archiver, &log, leaf_index).await;
        tiers.push(content.tier());
    }
    assert!(
        tiers.contains(&Tier::Hot) && tiers.contains(&Tier::Warm) && tiers.contains(&Tier::Cold)
    );
    // Consistency between a checkpoint from before archiving and the latest one.
    let proof: Vec<Vec<u8>> = log
        .consistency_proof(first.checkpoint.tree_size, latest.checkpoint.tree_size)
        .unwrap()
        .iter()
        .map(|h| h.to_vec())
        .collect();
    auditledger_verifier::verify_consistency(
        first.note.as_bytes(),
        latest.note.as_bytes(),
        &proof,
        &verifiers(),
    )
    .unwrap();

    // Warm objects are plain Parquet to any reader.
    let warm_record = log
        .segments()
        .unwrap()
        .into_iter()
        .find(|r| r.tier == Tier::Warm)
        .unwrap();
    let bytes = std::fs::read(dir.path().join("warm").join(&warm_record.object)).unwrap();
    let parquet = SerializedFileReader::new(bytes::Bytes::from(bytes)).unwrap();
    assert_eq!(parquet.metadata().file_metadata().num_rows(), 256);

    // Cached readers serve repeated reads; a cleared cache reopens.
    assert!(archiver.reader().cached_segments() >= 2);
    archiver.reader().clear_cache();
    assert!(prove(&archiver, &log, 10).await.bytes().is_some());
    let m = archiver.metrics().snapshot();
    assert_eq!(m.segments_to_warm, 4);
    assert_eq!(m.leaves_to_warm, 4 * 256);
    assert_eq!(m.segments_to_cold, census.cold);
    assert!(m.bytes_to_warm > 0 && m.failures == 0);
    ledger.close().unwrap();
}

/// Records every deletion the archiver announces; refuses them while `refuse` is set.
#[derive(Clone, Default)]
struct Recorder {
    seen: Arc<Mutex<Vec<Deletion>>>,
    refuse: Arc<Mutex<bool>>,
}

impl Recorder {
    fn hook(&self) -> DeletionHook {
        let this = self.clone();
        Arc::new(move |deletion| {
            let this = this.clone();
            Box::pin(async move {
                if *this.refuse.lock().unwrap() {
                    return Err("system log unavailable".to_owned());
                }
                this.seen.lock().unwrap().push(deletion);
                Ok(())
            })
        })
    }
}

fn hold(id: &str, from_time: u64, to_time: u64, user_id: &str) -> LegalHold {
    LegalHold {
        hold_id: id.into(),
        tenant_id: "acme".into(),
        environment: "prod".into(),
        from_time,
        to_time,
        user_id: user_id.into(),
        case_id: "CASE-1".into(),
        placed_by: "admin".into(),
        placed_at: 1,
        ..LegalHold::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_expiry_honours_legal_holds_and_the_deletion_hook() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = open_ledger(Arc::new(MemoryStore::new()), 8);
    append(&ledger, "acme", 0, 3 * 256 + 10).await;
    let log = ledger.log("acme", "prod").unwrap();
    let stores = file_stores(dir.path());
    let recorder = Recorder::default();
    let archiver = archiver(&ledger, &stores, recorder.hook());
    let report = archiver.move_down(Tier::Warm, Duration::ZERO, now()).await;
    assert_eq!(
        (report.moved.len(), report.failures.len()),
        (3, 0),
        "{report:?}"
    );
    let records = log.segments().unwrap();
    // Segment 0: held whole by a window hold; segment 1: a hold on one user keeps only that
    // user's events; segment 2 expires entirely.
    let holds = ledger.holds();
    holds
        .place(&hold("window", records[0].oldest, records[0].newest, ""))
        .unwrap();
    holds
        .place(&hold(
            "alice",
            records[1].oldest,
            records[1].newest + 1,
            "user-5@example.com",
        ))
        .unwrap();
    let alice_leaves = (256..512u64).filter(|n| n % 97 == 5).count() as u64;

    // The hook refuses: nothing is deleted, the failure is reported.
    *recorder.refuse.lock().unwrap() = true;
    let later = now() + 8 * YEAR.as_nanos() as u64;
    let report = archiver.pass(later).await;
    assert!(report.expired.is_empty(), "{report:?}");
    assert!(
        report
            .failures
            .iter()
            .any(|f| f.contains("deletion hook refused")),
        "{report:?}"
    );
    assert!(log.segments().unwrap().iter().all(|r| !r.content_expired));

    *recorder.refuse.lock().unwrap() = false;
    let report = archiver.pass(later).await;
    assert!(report.failures.is_empty(), "{report:?}");
    // Everything moved to cold first (warm window), then expired.
    assert!(log.segments().unwrap().iter().all(|r| r.tier == Tier::Cold));
    assert_eq!(report.expired.len(), 2, "{report:?}");
    let by_start = |start| report.expired.iter().find(|d| d.start == start).unwrap();
    assert_eq!(by_start(256).leaves_expired, 256 - alice_leaves);
    assert_eq!(by_start(256).leaves_held, alice_leaves);
    assert_eq!(by_start(256).holds, vec!["alice".to_owned()]);
    assert_eq!(
        (by_start(512).leaves_expired, by_start(512).leaves_held),
        (256, 0)
    );
    assert_eq!(report.held.len(), 1, "{report:?}");
    assert_eq!(report.held[0].start, 0);
    assert_eq!(report.held[0].holds, vec!["window".to_owned()]);
    assert_eq!(*recorder.seen.lock().unwrap(), report.expired);

    for leaf_index in [0, 100, 255] {
        assert!(prove_hot_or_archived(&archiver, &log, leaf_index).await);
    }
    for leaf_index in 256..512u64 {
        let present = archiver.reader().leaf(&log, leaf_index).await.unwrap();
        assert_eq!(
            present.bytes().is_some(),
            leaf_index % 97 == 5,
            "leaf {leaf_index}"
        );
    }
    assert!(
        archiver
            .reader()
            .leaf(&log, 600)
            .await
            .unwrap()
            .bytes()
            .is_none()
    );
    let census = check_archive(&ledger, &stores, archiver.reader()).await;
    assert_eq!(
        census,
        Census {
            warm: 0,
            cold: 3,
            expired: 2
        }
    );

    // Nothing new to do while the holds stand.
    let report = archiver.pass(later).await;
    assert!(
        report.expired.is_empty() && report.failures.is_empty(),
        "{report:?}"
    );

    // Released holds let the rest expire; proofs still verify for expired leaves.
    holds.release("window", "admin", 2).unwrap();
    holds.release("alice", "admin", 2).unwrap();
    let report = archiver.pass(later).await;
    assert!(report.failures.is_empty(), "{report:?}");
    assert_eq!(report.expired.len(), 2, "{report:?}");
    assert_eq!(
        by_start_of(&report.expired, 256).leaves_expired,
        alice_leaves
    );
    assert_eq!(by_start_of(&report.expired, 0).leaves_expired, 256);
    ledger.checkpoint_now().unwrap();
    for leaf_index in [0, 300, 700] {
        let content = prove(&archiver, &log, leaf_index).await;
        assert_eq!(content, LeafContent::Expired { tier: Tier::Cold });
    }
    let census = check_archive(&ledger, &stores, archiver.reader()).await;
    assert_eq!(
        census,
        Census {
            warm: 0,
            cold: 3,
            expired: 3
        }
    );
    assert_eq!(archiver.metrics().snapshot().leaves_expired, 3 * 256);
    // Fully expired segments are left alone (a footer read once, then nothing).
    let report = archiver.pass(later).await;
    assert_eq!(report, Default::default());
    ledger.close().unwrap();
}

fn by_start_of(deletions: &[Deletion], start: u64) -> &Deletion {
    deletions.iter().find(|d| d.start == start).unwrap()
}

async fn prove_hot_or_archived(archiver: &Archiver, log: &Log, leaf_index: u64) -> bool {
    archiver
        .reader()
        .leaf(log, leaf_index)
        .await
        .unwrap()
        .bytes()
        .is_some()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_steps_leave_the_archive_consistent_and_a_rerun_recovers() {
    use auditledger_archiver::store::S3Options;
    use auditledger_archiver::{RetryPolicy, SegmentStore, StoreOptions};

    let dir = tempfile::tempdir().unwrap();
    let ledger = open_ledger(Arc::new(MemoryStore::new()), 8);
    append(&ledger, "acme", 0, 2 * 256 + 5).await;
    let log = ledger.log("acme", "prod").unwrap();
    let stores = file_stores(dir.path());
    // A cold tier nobody listens on: every operation fails after its (short) retries.
    let unreachable = StoreOptions {
        s3: S3Options {
            endpoint: Some("http://127.0.0.1:1".into()),
            region: Some("us-east-1".into()),
            access_key_id: Some("test".into()),
            secret_access_key: Some("test".into()),
            allow_http: Some(true),
            ..S3Options::default()
        },
        retry: RetryPolicy {
            max_attempts: 2,
            initial_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(2),
        },
    };
    let broken = TierStores {
        warm: stores.warm.clone(),
        cold: SegmentStore::open("s3://nowhere/cold", &unreachable).unwrap(),
    };
    let failing = archiver(&ledger, &broken, allow_deletions());
    let report = failing.move_down(Tier::Warm, Duration::ZERO, now()).await;
    assert_eq!(
        (report.moved.len(), report.failures.len()),
        (2, 0),
        "{report:?}"
    );
    let report = failing.move_down(Tier::Cold, Duration::ZERO, now()).await;
    assert!(report.moved.is_empty(), "{report:?}");
    assert_eq!(report.failures.len(), 2, "{report:?}");
    assert!(
        report.failures[0].contains("[0,256)"),
        "{}",
        report.failures[0]
    );
    assert!(
        report.failures[1].contains("[256,512)"),
        "{}",
        report.failures[1]
    );
    assert_eq!(failing.metrics().snapshot().pending_segments, 2);
    assert!(failing.metrics().snapshot().failures >= 2);
    // Nothing changed: both segments warm and readable.
    let census = check_archive(&ledger, &stores, failing.reader()).await;
    assert_eq!(
        census,
        Census {
            warm: 2,
            cold: 0,
            expired: 0
        }
    );

    // A damaged warm object is refused by reads and by the move, which names the problem; the
    // other segment moves.
    let healthy = archiver(&ledger, &stores, allow_deletions());
    let record = log.segment_of(0).unwrap().unwrap();
    let path = dir.path().join("warm").join(&record.object);
    let original = std::fs::read(&path).unwrap();
    let mut damaged = original.clone();
    let middle = damaged.len() / 2;
    damaged[middle] ^= 0x55;
    std::fs::write(&path, &damaged).unwrap();
    // A point read touches only the footer and one page per column: it fails if the damage
    // is there, and otherwise still returns exactly the leaf the tree commits to (every read
    // is checked against the tree's leaf hash) — never damaged content.
    match healthy.reader().leaf(&log, 3).await {
        Err(_) => {}
        Ok(content) => assert_eq!(
            auditledger_ledger::merkle::leaf_hash(content.bytes().expect("not expired")),
            log.leaf_hash(3).unwrap(),
            "a read of a damaged object returned content that is not the leaf"
        ),
    }
    let report = healthy.move_down(Tier::Cold, Duration::ZERO, now()).await;
    assert_eq!(report.moved.len(), 1, "{report:?}");
    assert_eq!(report.moved[0].start, 256);
    assert_eq!(report.failures.len(), 1, "{report:?}");
    assert!(
        report.failures[0].contains("[0,256)") && report.failures[0].contains("BLAKE3"),
        "{}",
        report.failures[0]
    );
    // Repaired (e.g. restored from a backup), it moves on the next pass.
    std::fs::write(&path, &original).unwrap();
    let report = healthy.move_down(Tier::Cold, Duration::ZERO, now()).await;
    assert_eq!(
        (report.moved.len(), report.failures.len()),
        (1, 0),
        "{report:?}"
    );
    let census = check_archive(&ledger, &stores, healthy.reader()).await;
    assert_eq!(
        census,
        Census {
            warm: 0,
            cold: 2,
            expired: 0
        }
    );
    ledger.close().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_by_data_class_keeps_longer_classes_until_their_own_end() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = open_ledger(Arc::new(MemoryStore::new()), 8);
    // 256 events: every third "restricted" (10 years), the others "internal" (default 2 years).
    let events: Vec<_> = (0..256u64)
        .map(|i| {
            let mut e = auditledger_tests::tool_call((i % 4) as u32, i, "acme", "prod");
            if i % 3 == 0 {
                e.data_classification = "restricted".into();
            }
            e
        })
        .collect();
    ledger.append("gateway-1", &events).await.unwrap();
    let log = ledger.log("acme", "prod").unwrap();
    log.wait_for_index(log.tree_size()).await.unwrap();
    let restricted = events
        .iter()
        .filter(|e| e.data_classification == "restricted")
        .count() as u64;
    let stores = file_stores(dir.path());
    let config = ArchiverConfig {
        retention: 2 * YEAR,
        retention_by_class: [("restricted".to_owned(), 10 * YEAR)].into(),
        ..ArchiverConfig::default()
    };
    let archiver = Archiver::new(ledger.clone(), stores.clone(), config, allow_deletions());

    // Three years on: internal contents expire, restricted ones are kept (not "held").
    let report = archiver.pass(now() + 3 * YEAR.as_nanos() as u64).await;
    assert!(report.failures.is_empty(), "{report:?}");
    assert_eq!(report.expired.len(), 1, "{report:?}");
    assert_eq!(
        (
            report.expired[0].leaves_expired,
            report.expired[0].leaves_held
        ),
        (256 - restricted, 0)
    );
    for (i, e) in events.iter().enumerate() {
        let content = prove(&archiver, &log, i as u64).await;
        let kept = e.data_classification == "restricted";
        assert_eq!(
            content.bytes().is_some(),
            kept,
            "leaf {i} ({})",
            e.data_classification
        );
    }
    // Nothing more is due until the restricted class's own retention ends.
    let report = archiver.pass(now() + 9 * YEAR.as_nanos() as u64).await;
    assert!(
        report.expired.is_empty() && report.failures.is_empty(),
        "{report:?}"
    );
    let report = archiver.pass(now() + 11 * YEAR.as_nanos() as u64).await;
    assert!(report.failures.is_empty(), "{report:?}");
    assert_eq!(report.expired.len(), 1, "{report:?}");
    assert_eq!(report.expired[0].leaves_expired, restricted);
    for i in 0..256 {
        assert!(
            prove(&archiver, &log, i).await.bytes().is_none(),
            "leaf {i}"
        );
    }
    check_archive(&ledger, &stores, archiver.reader()).await;
}

/// The move hook runs before each move commits, sees the segment still at its source tier, and
/// a refusal leaves the segment where it was (retried once the hook accepts).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_move_hook_runs_before_each_move_commits_and_can_refuse_it() {
    use auditledger_archiver::{MoveHook, SegmentMove};
    let dir = tempfile::tempdir().unwrap();
    let ledger = open_ledger(Arc::new(MemoryStore::new()), 8);
    append(&ledger, "acme", 0, 2 * 256).await;
    ledger.checkpoint_now().unwrap();
    let log = ledger.log("acme", "prod").unwrap();
    let stores = file_stores(dir.path());
    // (move, tier of the segment's record when the hook ran)
    type Seen = Vec<(SegmentMove, Option<Tier>)>;
    let seen: Arc<Mutex<Seen>> = Arc::default();
    let refuse = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let hook: MoveHook = {
        let (seen, refuse, log) = (seen.clone(), refuse.clone(), log.clone());
        Arc::new(move |m: SegmentMove| {
            let tier = log.segment_of(m.start).unwrap().map(|r| r.tier);
            seen.lock().unwrap().push((m, tier));
            let refused = refuse.load(std::sync::atomic::Ordering::SeqCst);
            Box::pin(async move {
                if refused {
                    Err("system log unavailable".to_owned())
                } else {
                    Ok(())
                }
            })
        })
    };
    let archiver = archiver(&ledger, &stores, allow_deletions()).with_move_hook(hook);

    let report = archiver.move_down(Tier::Warm, Duration::ZERO, now()).await;
    assert!(report.moved.is_empty(), "{report:?}");
    assert_eq!(report.failures.len(), 2, "{report:?}");
    assert!(
        report.failures[0].contains("move hot -> warm skipped")
            && report.failures[0].contains("system log unavailable"),
        "{report:?}"
    );
    assert!(
        log.segments().unwrap().is_empty(),
        "a refused move committed"
    );
    let mut hot = 0;
    log.scan_leaves(0, 512, &mut |_, _| {
        hot += 1;
        true
    })
    .unwrap();
    assert_eq!(hot, 512, "hot leaves released by a refused move");

    refuse.store(false, std::sync::atomic::Ordering::SeqCst);
    let report = archiver.move_down(Tier::Warm, Duration::ZERO, now()).await;
    assert_eq!(report.moved.len(), 2, "{report:?}");
    let report = archiver.move_down(Tier::Cold, Duration::ZERO, now()).await;
    assert_eq!(report.moved.len(), 2, "{report:?}");
    let seen = seen.lock().unwrap().clone();
    // Two refused, two hot -> warm, two warm -> cold; each hook call saw the source tier.
    assert_eq!(seen.len(), 6, "{seen:?}");
    for (m, tier_then) in seen.iter() {
        let expected = if m.from == Tier::Hot {
            None
        } else {
            Some(Tier::Warm)
        };
        assert_eq!(*tier_then, expected, "{m:?}");
        assert!(m.bytes > 0 && m.end - m.start == 256, "{m:?}");
    }
    check_archive(&ledger, &stores, archiver.reader()).await;
}
