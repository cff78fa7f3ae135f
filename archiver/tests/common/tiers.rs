//! Helpers for the archiver engine tests: ledgers with small segments, tier stores, and
//! `check_archive`, which checks everything the archive promises.

use std::collections::BTreeSet;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use auditledger_archiver::manifest;
use auditledger_archiver::segment::{SegmentId, SegmentReader};
use auditledger_archiver::store::{anchor_object_path, manifest_path_for};
use auditledger_archiver::{LeafContent, SegmentStore, StoreOptions, TierReader, TierStores};
use auditledger_archiver::{SegmentAnchor, VerifiedAnchor};
use auditledger_ledger::keys::Keyring;
use auditledger_ledger::merkle::leaf_hash;
use auditledger_ledger::note::{SignerKey, VerifierKey};
use auditledger_ledger::segments::Tier;
use auditledger_ledger::store::Store;
use auditledger_ledger::{Ledger, LedgerOptions, fsck};
use auditledger_tests::tool_call;
use object_store::path::Path;

/// The key the crash child signs with too (`src/bin/archive_crash_child.rs`).
pub fn signer() -> SignerKey {
    SignerKey::from_seed("auditledger.local", &[0x5a; 32]).unwrap()
}

pub fn verifiers() -> Vec<VerifierKey> {
    vec![signer().verifier()]
}

pub fn keyring() -> Arc<RwLock<Keyring>> {
    let mut ring = Keyring::default();
    ring.add_existing(signer(), None, 0);
    Arc::new(RwLock::new(ring))
}

/// Ledger options whose new logs have segments of 2^`bits` leaves.
pub fn options(bits: u8) -> LedgerOptions {
    LedgerOptions {
        segment_bits: bits,
        checkpoint_interval: Duration::from_millis(20),
        ..LedgerOptions::default()
    }
}

pub fn open_ledger(store: Arc<dyn Store>, bits: u8) -> Arc<Ledger> {
    Arc::new(Ledger::open(store, keyring(), options(bits)).unwrap())
}

/// Appends events `[first, first + count)` of `tenant`/prod in batches of 64 (so that with
/// segments of 2^6 leaves or more, and `first` aligned, no batch — one `logged_at` — spans two
/// segments) a millisecond apart; waits for the index.
pub async fn append(ledger: &Ledger, tenant: &str, first: u64, count: u64) {
    let mut n = first;
    while n < first + count {
        let batch: Vec<_> = (n..(n + 64).min(first + count))
            .map(|i| tool_call((i % 4) as u32, i, tenant, "prod"))
            .collect();
        n += batch.len() as u64;
        ledger.append("gateway-1", &batch).await.unwrap();
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let log = ledger.log(tenant, "prod").unwrap();
    log.wait_for_index(log.tree_size()).await.unwrap();
}

/// Warm and cold stores in two directories (`file://` URLs).
pub fn file_stores(dir: &std::path::Path) -> TierStores {
    let url = |name: &str| format!("file://{}", dir.join(name).display());
    TierStores {
        warm: SegmentStore::open(&url("warm"), &StoreOptions::default()).unwrap(),
        cold: SegmentStore::open(&url("cold"), &StoreOptions::default()).unwrap(),
    }
}

pub async fn list(store: &SegmentStore) -> BTreeSet<String> {
    store.list_paths().await.unwrap().into_iter().collect()
}

/// What one log's archive looks like, for assertions.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Census {
    pub warm: u64,
    pub cold: u64,
    pub expired: u64,
}

/// Checks every promise of the archive for every log of the ledger: each segment record names
/// exactly one object (and its manifest and anchor) in its tier, which matches its BLAKE3,
/// verifies against the segment root and its signed manifest; every anchor verifies and
/// chains to the previous segment's; no other object exists in either store;
/// every leaf reads back through the `TierReader` with the tree's hash (or as expired where the
/// record says so); hot leaves of released segments are gone; `fsck` is clean.
pub async fn check_archive(ledger: &Ledger, stores: &TierStores, reader: &TierReader) -> Census {
    let mut census = Census::default();
    let mut expected: [BTreeSet<String>; 2] = Default::default();
    for log in ledger.logs() {
        let records = log.segments().unwrap();
        let mut previous: Option<VerifiedAnchor> = None;
        for record in &records {
            let (store, slot) = match record.tier {
                Tier::Warm => (&stores.warm, 0),
                Tier::Cold => (&stores.cold, 1),
                Tier::Hot => panic!("record names the hot tier"),
            };
            assert!(
                record.hot_released,
                "{}: {record:?} not released",
                log.origin()
            );
            match record.tier {
                Tier::Warm => census.warm += 1,
                _ => census.cold += 1,
            }
            if record.content_expired {
                census.expired += 1;
            }
            let object = Path::parse(&record.object).unwrap();
            let manifest_path = manifest_path_for(&object).unwrap();
            let bytes = store.get(&object).await.unwrap();
            assert_eq!(bytes.len() as u64, record.object_bytes, "{}", record.object);
            assert_eq!(
                blake3::hash(&bytes).as_bytes(),
                &record.object_blake3,
                "{}",
                record.object
            );
            let id = SegmentId::new(log.origin(), record.start, record.bits).unwrap();
            let note = store.get(&manifest_path).await.unwrap();
            let opened = manifest::open_for(&note, &verifiers(), &id).unwrap();
            opened.manifest.check_object(&bytes).unwrap();
            assert_eq!(opened.manifest.object_path, record.object);
            assert_eq!(opened.manifest.segment_root, record.root);
            assert_eq!(opened.manifest.content_expired(), record.content_expired);
            let segment = SegmentReader::from_bytes(bytes, &id).await.unwrap();
            let verified = segment.verify(&record.root).await.unwrap();
            assert_eq!(verified.expired_leaves, opened.manifest.expired_leaves);
            assert!(expected[slot].insert(record.object.clone()));
            assert!(expected[slot].insert(manifest_path.to_string()));
            let key = log.key();
            let anchor_path =
                anchor_object_path(&key.tenant_id, &key.environment, record.start, record.end())
                    .unwrap();
            let anchor = store
                .get(&anchor_path)
                .await
                .unwrap_or_else(|e| panic!("anchor of {}: {e}", record.object));
            let anchor = SegmentAnchor::parse(&anchor)
                .and_then(|a| a.verify(&verifiers()))
                .unwrap_or_else(|e| panic!("{anchor_path}: {e}"));
            assert_eq!(anchor.anchor.segment_root, record.root, "{anchor_path}");
            match &previous {
                Some(p) if p.anchor.end == record.start => anchor
                    .verify_chain(p)
                    .unwrap_or_else(|e| panic!("{anchor_path}: {e}")),
                _ => assert_eq!(anchor.anchor.previous_size, 0, "{anchor_path}"),
            }
            previous = Some(anchor);
            assert!(expected[slot].insert(anchor_path.to_string()));
            let mut hot_leaves = 0;
            log.scan_leaves(record.start, record.end(), &mut |_, _| {
                hot_leaves += 1;
                true
            })
            .unwrap();
            assert_eq!(
                hot_leaves, 0,
                "released leaves still hot in {}",
                record.object
            );
        }
        for leaf_index in 0..log.tree_size() {
            let content = reader.leaf(&log, leaf_index).await.unwrap();
            let record = log
                .segment_of(leaf_index)
                .unwrap()
                .filter(|r| r.hot_released);
            match &content {
                LeafContent::Present { bytes, tier } => {
                    assert_eq!(leaf_hash(bytes), log.leaf_hash(leaf_index).unwrap());
                    assert_eq!(*tier, record.map_or(Tier::Hot, |r| r.tier));
                }
                LeafContent::Expired { tier } => {
                    let record = record.unwrap();
                    assert!(record.content_expired, "leaf {leaf_index} expired");
                    assert_eq!(*tier, record.tier);
                }
            }
        }
    }
    assert_eq!(
        list(&stores.warm).await,
        expected[0],
        "warm store holds strays"
    );
    assert_eq!(
        list(&stores.cold).await,
        expected[1],
        "cold store holds strays"
    );
    let report = fsck::check(ledger.store().as_ref(), &verifiers()).unwrap();
    assert!(report.is_clean(), "fsck: {:?}", report.problems());
    census
}
