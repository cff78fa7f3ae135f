//! Store faults under the ledger (docs/reliability.md "Storage faults"), on RocksDB wrapped in
//! [`FaultyStore`]: failed synced writes, writes whose acknowledgement is lost after they were
//! applied, failed syncs of written group commits, slow writes and reads, failing reads. In every case an append either gets receipts
//! for events that are stored at those indexes, or an error and nothing; the tree stays
//! gap-free and `fsck` clean. (Unit tests in `src/ledger.rs` cover the same on the memory
//! store, including failures inside the commit pipeline.)

use std::sync::{Arc, Barrier, RwLock};
use std::time::Duration;

use auditledger_ledger::event::{AuditEvent, EventId, EventKind};
use auditledger_ledger::keys::Keyring;
use auditledger_ledger::note::{SignerKey, VerifierKey};
use auditledger_ledger::store::faulty::{FaultyStore, WriteFaults, append_in_rounds};
use auditledger_ledger::store::rocks::{RocksOptions, RocksStore};
use auditledger_ledger::store::{Store, StoreError};
use auditledger_ledger::{Ledger, LedgerError, LedgerOptions, fsck};

fn signer() -> SignerKey {
    SignerKey::from_seed("auditledger.local", &[7u8; 32]).unwrap()
}

fn verifiers() -> Vec<VerifierKey> {
    vec![signer().verifier()]
}

fn event(i: u64, tenant: &str) -> AuditEvent {
    AuditEvent {
        event_id: format!("01936f0e-7a2b-7c3d-8e4f-{i:012x}"),
        event_kind: EventKind::ToolCall as i32,
        tenant_id: tenant.into(),
        environment: "prod".into(),
        occurred_at: 1 + i,
        tool_name: format!("tool-{i}"),
        ..Default::default()
    }
}

type Faulty = Arc<FaultyStore<RocksStore>>;

fn open(dir: &std::path::Path) -> (Faulty, Ledger) {
    let store = Arc::new(FaultyStore::new(
        RocksStore::open(dir, &RocksOptions::small_for_tests()).unwrap(),
    ));
    let mut ring = Keyring::default();
    ring.add_existing(signer(), None, 0);
    let ledger = Ledger::open(
        store.clone(),
        Arc::new(RwLock::new(ring)),
        LedgerOptions {
            checkpoint_interval: Duration::from_secs(3600),
            ..Default::default()
        },
    )
    .unwrap();
    (store, ledger)
}

fn fsck_clean(store: &dyn Store) {
    let report = fsck::check(store, &verifiers()).expect("fsck reads the store");
    assert!(report.is_clean(), "fsck: {:?}", report.problems());
}

/// Signs a last checkpoint, closes the ledger, checks the store with fsck and opens the
/// directory again (the ledger and store are consumed: nothing of them may stay open).
fn close_check_and_reopen(
    dir: &std::path::Path,
    store: Faulty,
    ledger: impl std::borrow::Borrow<Ledger>,
) -> (Faulty, Ledger) {
    ledger.borrow().checkpoint_now().unwrap();
    ledger.borrow().close().unwrap();
    fsck_clean(store.inner());
    drop(ledger);
    drop(store);
    open(dir)
}

/// Many appenders blocked in the same failing group commit: every one gets the store's error
/// and no receipt; none of their events is readable; the next append gets the next index.
#[test]
fn every_appender_of_a_failed_group_gets_the_error_and_nothing_is_stored() {
    let dir = tempfile::tempdir().unwrap();
    let (store, ledger) = open(dir.path());
    let ledger = Arc::new(ledger);
    ledger
        .append_blocking("gw", &(0..5).map(|i| event(i, "acme")).collect::<Vec<_>>())
        .unwrap();
    // A slow, failing disk: appenders that arrive during the first (slow) write queue up and
    // are committed together in the next group, which fails too.
    store.set_write_faults(WriteFaults {
        fail_all: Some(StoreError::NoSpace(
            "No space left on device (injected)".into(),
        )),
        delay: Duration::from_millis(30),
        durable_only: true,
        ..Default::default()
    });
    let start = Arc::new(Barrier::new(8));
    let threads: Vec<_> = (0..8u64)
        .map(|t| {
            let (ledger, start) = (ledger.clone(), start.clone());
            std::thread::spawn(move || {
                let events: Vec<_> = (0..3).map(|i| event(1000 + t * 10 + i, "acme")).collect();
                start.wait();
                (events.clone(), ledger.append_blocking("gw", &events))
            })
        })
        .collect();
    let log = ledger.log("acme", "prod").unwrap();
    let mut refused = Vec::new();
    for t in threads {
        let (events, result) = t.join().unwrap();
        match result {
            Err(LedgerError::Store(StoreError::NoSpace(m))) => {
                assert!(m.contains("No space left on device"), "{m}")
            }
            Err(LedgerError::Unavailable(m)) => {
                // A group built on top of the failing one: refused without being written.
                assert!(
                    m.contains("No space left on device"),
                    "names the cause: {m}"
                )
            }
            other => panic!("an appender of a failed group got {other:?}"),
        }
        for e in &events {
            let id = EventId::parse(&e.event_id).unwrap();
            assert_eq!(log.find_event(&id).unwrap(), None, "refused but readable");
        }
        refused.extend(events);
    }
    let (_, failed) = store.write_counts();
    assert!(failed >= 1);
    assert!(
        failed < 8,
        "concurrent appenders share group commits ({failed} writes failed for 8 appenders)"
    );
    assert_eq!(log.tree_size(), 5);

    store.set_write_faults(WriteFaults::default());
    let receipts = ledger.append_blocking("gw", &refused).unwrap();
    for (i, r) in receipts.iter().enumerate() {
        assert!(!r.duplicate);
        assert_eq!(r.leaf_index, 5 + i as u64, "no hole, no duplicate");
    }
    ledger.checkpoint_now().unwrap();
    ledger.close().unwrap();
    fsck_clean(store.inner());
}

/// The write was applied but reported failed (the acknowledgement is lost): the appender gets
/// the error and no receipt. The ledger re-reads the log from the store, so what is stored is
/// consistent; a retry of the same events finds them (duplicate receipts at their stored
/// indexes) rather than storing them twice, and the next new event follows them.
#[test]
fn a_write_applied_but_reported_failed_is_never_acknowledged_nor_stored_twice() {
    let dir = tempfile::tempdir().unwrap();
    let (store, ledger) = open(dir.path());
    ledger
        .append_blocking("gw", &(0..4).map(|i| event(i, "acme")).collect::<Vec<_>>())
        .unwrap();
    store.set_write_faults(WriteFaults {
        fail_next: 1,
        apply_then_fail: true,
        durable_only: true,
        ..Default::default()
    });
    let ambiguous: Vec<_> = (10..13).map(|i| event(i, "acme")).collect();
    let err = ledger.append_blocking("gw", &ambiguous).unwrap_err();
    assert!(
        matches!(err, LedgerError::Store(StoreError::Injected(_))),
        "{err}"
    );
    let log = ledger.log("acme", "prod").unwrap();
    // The sequencer re-reads the log from the store before its next group, so the retry is
    // judged against what the store holds.
    let receipts = ledger.append_blocking("gw", &ambiguous).unwrap();
    for (i, r) in receipts.iter().enumerate() {
        assert!(r.duplicate, "the retry finds the stored copy");
        assert_eq!(r.leaf_index, 4 + i as u64);
    }
    assert_eq!(
        log.tree_size(),
        7,
        "the store has the group, so the log has it"
    );
    let receipts = ledger.append_blocking("gw", &[event(20, "acme")]).unwrap();
    assert_eq!((receipts[0].leaf_index, receipts[0].duplicate), (7, false));

    // After a restart the same holds (the ledger loads everything from the store).
    drop(log);
    let (store, ledger) = close_check_and_reopen(dir.path(), store, ledger);
    let log = ledger.log("acme", "prod").unwrap();
    assert_eq!(log.tree_size(), 8);
    let receipts = ledger.append_blocking("gw", &ambiguous).unwrap();
    assert!(receipts.iter().all(|r| r.duplicate));
    ledger.close().unwrap();
    fsck_clean(store.inner());
}

/// Failing reads: appends need reads (duplicate checks) and fail with the store's error
/// instead of guessing; reads fail instead of answering wrongly; both work again afterwards.
/// Slow reads and writes only slow things down.
#[test]
fn failing_and_slow_reads_and_slow_writes() {
    let dir = tempfile::tempdir().unwrap();
    let (store, ledger) = open(dir.path());
    ledger
        .append_blocking("gw", &(0..4).map(|i| event(i, "acme")).collect::<Vec<_>>())
        .unwrap();
    let log = ledger.log("acme", "prod").unwrap();
    // Evicted from the write path's memory: only the store knows event 0 now.
    store.set_fail_reads(true);
    let id0 = EventId::parse(&event(0, "acme").event_id).unwrap();
    let err = log.find_event(&id0).unwrap_err();
    assert!(
        err.to_string().contains("injected fault: read failure"),
        "{err}"
    );
    assert!(
        log.leaf(0).is_err(),
        "a failed read is an error, not a missing leaf"
    );
    match ledger.append_blocking("gw", &[event(0, "acme"), event(50, "acme")]) {
        // The duplicate check could not read the event-id index: nothing acknowledged.
        Err(err) => {
            assert!(err.to_string().contains("read failure"), "{err}");
            assert_eq!(log.tree_size(), 4);
        }
        // Or the ledger knew event 0 without reading (a cache); then it must be a duplicate.
        Ok(receipts) => {
            assert!(receipts[0].duplicate);
            assert_eq!(receipts[0].leaf_index, 0);
            assert_eq!(receipts[1].leaf_index, 4);
        }
    }
    store.set_fail_reads(false);
    assert_eq!(log.find_event(&id0).unwrap(), Some(0));

    store.set_read_delay(Duration::from_millis(2));
    store.set_write_faults(WriteFaults {
        delay: Duration::from_millis(20),
        ..Default::default()
    });
    let size = log.tree_size();
    let receipts = ledger
        .append_blocking("gw", &[event(60, "acme"), event(61, "acme")])
        .unwrap();
    assert_eq!(receipts[0].leaf_index, size);
    assert_eq!(receipts[1].leaf_index, size + 1);
    assert_eq!(log.find_event(&id0).unwrap(), Some(0));
    store.set_read_delay(Duration::ZERO);
    store.set_write_faults(WriteFaults::default());
    ledger.checkpoint_now().unwrap();
    ledger.close().unwrap();
    fsck_clean(store.inner());
}

/// Syncs failing under concurrent appends while writes are slow, so that groups are written
/// and waiting for their sync when it fails (and more are built on them): no event whose sync
/// failed is acknowledged; every acknowledged event is stored at its index; a refused event is
/// either absent or stored once (its write reached the store, its sync did not confirm it —
/// the same ambiguity as a crash before the answer). Every leaf holds exactly one sent event;
/// re-sent, the refused events are found where they are stored or appended after the rest;
/// fsck is clean and a restart keeps everything.
#[test]
fn failed_syncs_in_the_pipeline_acknowledge_nothing_they_did_not_confirm() {
    let dir = tempfile::tempdir().unwrap();
    let (store, ledger) = open(dir.path());
    let ledger = Arc::new(ledger);
    let faults = WriteFaults {
        fail_next_syncs: 1,
        delay: Duration::from_millis(5),
        durable_only: true,
        ..Default::default()
    };
    let results = append_in_rounds(&store, &ledger, 3, &faults, |n| event(n, "acme"));
    let log = ledger.log("acme", "prod").unwrap();
    let mut holders = Vec::new();
    let mut refused = Vec::new();
    for (event, result) in &results {
        let id = EventId::parse(&event.event_id).unwrap();
        let found = log.find_event(&id).unwrap();
        match result {
            Ok(receipts) => {
                let r = &receipts[0];
                assert!(!r.duplicate, "each event was sent once");
                assert_eq!(found, Some(r.leaf_index));
                let leaf = log.leaf(r.leaf_index).unwrap().expect("acknowledged leaf");
                assert_eq!(auditledger_ledger::merkle::leaf_hash(&leaf), r.leaf_hash);
            }
            Err(err) => {
                let text = err.to_string();
                assert!(
                    text.contains("sync failure") || text.contains("depends on failed"),
                    "{text}"
                );
                refused.push(event.clone());
            }
        }
        holders.extend(found);
    }
    assert!(
        refused.len() >= 3,
        "each failed sync refused at least its own group ({} refused)",
        refused.len()
    );
    holders.sort_unstable();
    assert_eq!(
        holders,
        (0..log.tree_size()).collect::<Vec<_>>(),
        "every leaf holds exactly one of the events sent"
    );
    let size = log.tree_size();
    let receipts = ledger.append_blocking("gw", &refused).unwrap();
    let mut next = size;
    for (event, r) in refused.iter().zip(&receipts) {
        let id = EventId::parse(&event.event_id).unwrap();
        if r.duplicate {
            assert!(r.leaf_index < size, "a stored copy is in the tree already");
        } else {
            assert_eq!(r.leaf_index, next, "a new event follows the others");
            next += 1;
        }
        assert_eq!(log.find_event(&id).unwrap(), Some(r.leaf_index));
    }
    assert_eq!(log.tree_size(), next);
    drop(log);
    let (store, ledger) = close_check_and_reopen(dir.path(), store, ledger);
    assert_eq!(ledger.log("acme", "prod").unwrap().tree_size(), next);
    ledger.close().unwrap();
    fsck_clean(store.inner());
}
