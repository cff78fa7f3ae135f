//! Object store faults (docs/reliability.md "Storage faults"): a wrapper around a real
//! `object_store` that fails, times out, answers slowly or stores truncated uploads on purpose.
//! The archiver retries what is transient within a pass, never deletes a hot leaf (or a warm
//! object) before its copy in the next tier was read back and verified, and once the faults
//! stop a pass completes with every leaf readable with a valid proof, the archive verifying
//! and nothing lost or duplicated.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use auditledger_archiver::{
    Archiver, ArchiverConfig, LeafContent, RetryPolicy, SegmentStore, TierStores, allow_deletions,
};
use auditledger_ledger::segments::Tier;
use auditledger_ledger::store::memory::MemoryStore;
use auditledger_ledger::{Clock, Ledger, Log, SystemClock};
use faulty::{FaultyObjectStore, ObjectFaults};

use common::tiers::{Census, append, check_archive, open_ledger, verifiers};

/// An `ObjectStore` that injects faults into the operations of another.
mod faulty {
    use std::ops::Range;
    use std::sync::atomic::{AtomicU64, Ordering};

    use super::*;
    use bytes::Bytes;
    use futures_util::StreamExt as _;
    use futures_util::future::BoxFuture;
    use futures_util::stream::BoxStream;
    use object_store::path::Path;
    use object_store::{
        CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
        PutMultipartOptions, PutOptions, PutPayload, PutResult,
    };

    /// What the store does wrong; the default is nothing.
    #[derive(Clone, Debug, Default)]
    pub struct ObjectFaults {
        /// Fail this many upcoming puts with a transient error, then behave.
        pub fail_next_puts: u32,
        /// Fail this many upcoming reads (get, ranged get, head) with a transient error.
        pub fail_next_gets: u32,
        /// Every operation fails (the service is down).
        pub outage: bool,
        /// Every put waits, then fails as timed out, without storing anything.
        pub put_timeouts: bool,
        /// Every put stores only the first half of the object under its final name, then
        /// reports success (a proxy or gateway that acknowledges a cut-off upload).
        pub truncate_puts: bool,
        /// Every operation first waits this long (a slow service).
        pub delay: Duration,
    }

    #[derive(Debug)]
    pub struct FaultyObjectStore {
        inner: Arc<dyn ObjectStore>,
        faults: Mutex<ObjectFaults>,
        injected: AtomicU64,
    }

    impl std::fmt::Display for FaultyObjectStore {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "FaultyObjectStore({})", self.inner)
        }
    }

    fn injected(kind: std::io::ErrorKind, what: String) -> object_store::Error {
        object_store::Error::Generic {
            store: "faulty",
            source: Box::new(std::io::Error::new(kind, what)),
        }
    }

    enum Put {
        Fail(object_store::Error),
        Truncate,
        Store,
    }

    impl FaultyObjectStore {
        pub fn new(inner: Arc<dyn ObjectStore>) -> Arc<FaultyObjectStore> {
            Arc::new(FaultyObjectStore {
                inner,
                faults: Mutex::new(ObjectFaults::default()),
                injected: AtomicU64::new(0),
            })
        }

        pub fn set(&self, faults: ObjectFaults) {
            *self.faults.lock().unwrap() = faults;
        }

        /// Faults injected so far.
        pub fn injected(&self) -> u64 {
            self.injected.load(Ordering::SeqCst)
        }

        fn faults(&self) -> ObjectFaults {
            self.faults.lock().unwrap().clone()
        }

        fn count(&self, err: object_store::Error) -> object_store::Error {
            self.injected.fetch_add(1, Ordering::SeqCst);
            err
        }

        /// The fault of a read of `location`, if any (consumes one `fail_next_gets`).
        fn read_fault(&self, location: &Path) -> Option<object_store::Error> {
            let mut f = self.faults.lock().unwrap();
            if f.outage {
                return Some(self.count(injected(
                    std::io::ErrorKind::ConnectionRefused,
                    format!("injected outage reading {location}"),
                )));
            }
            if f.fail_next_gets > 0 {
                f.fail_next_gets -= 1;
                return Some(self.count(injected(
                    std::io::ErrorKind::ConnectionReset,
                    format!("injected transient error reading {location}"),
                )));
            }
            None
        }

        fn put_fault(&self, location: &Path) -> Put {
            let mut f = self.faults.lock().unwrap();
            if f.outage {
                return Put::Fail(self.count(injected(
                    std::io::ErrorKind::ConnectionRefused,
                    format!("injected outage writing {location}"),
                )));
            }
            if f.put_timeouts {
                return Put::Fail(self.count(injected(
                    std::io::ErrorKind::TimedOut,
                    format!("injected timeout writing {location}"),
                )));
            }
            if f.fail_next_puts > 0 {
                f.fail_next_puts -= 1;
                return Put::Fail(self.count(injected(
                    std::io::ErrorKind::ConnectionReset,
                    format!("injected transient error writing {location}"),
                )));
            }
            if f.truncate_puts {
                self.injected.fetch_add(1, Ordering::SeqCst);
                return Put::Truncate;
            }
            Put::Store
        }
    }

    // `ObjectStore` is an `async_trait`: its methods written out as that macro expands them
    // (as in tests/search.rs; no extra dependency for a test wrapper).
    type Fut<'a, T> = BoxFuture<'a, object_store::Result<T>>;

    impl ObjectStore for FaultyObjectStore {
        fn put_opts<'life0, 'life1, 'async_trait>(
            &'life0 self,
            location: &'life1 Path,
            payload: PutPayload,
            opts: PutOptions,
        ) -> Fut<'async_trait, PutResult>
        where
            'life0: 'async_trait,
            'life1: 'async_trait,
            Self: 'async_trait,
        {
            Box::pin(async move {
                let faults = self.faults();
                if !faults.delay.is_zero() {
                    tokio::time::sleep(faults.delay).await;
                }
                match self.put_fault(location) {
                    Put::Fail(err) => {
                        if faults.put_timeouts {
                            // A timeout costs the caller its wait.
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                        Err(err)
                    }
                    Put::Truncate => {
                        let bytes: Vec<u8> =
                            payload.iter().flat_map(|b| b.iter().copied()).collect();
                        let half = Bytes::from(bytes[..bytes.len() / 2].to_vec());
                        self.inner
                            .put_opts(location, PutPayload::from_bytes(half), opts)
                            .await
                    }
                    Put::Store => self.inner.put_opts(location, payload, opts).await,
                }
            })
        }

        fn put_multipart_opts<'life0, 'life1, 'async_trait>(
            &'life0 self,
            location: &'life1 Path,
            opts: PutMultipartOptions,
        ) -> Fut<'async_trait, Box<dyn MultipartUpload>>
        where
            'life0: 'async_trait,
            'life1: 'async_trait,
            Self: 'async_trait,
        {
            Box::pin(async move {
                if let Put::Fail(err) = self.put_fault(location) {
                    return Err(err);
                }
                self.inner.put_multipart_opts(location, opts).await
            })
        }

        fn get_opts<'life0, 'life1, 'async_trait>(
            &'life0 self,
            location: &'life1 Path,
            options: GetOptions,
        ) -> Fut<'async_trait, GetResult>
        where
            'life0: 'async_trait,
            'life1: 'async_trait,
            Self: 'async_trait,
        {
            Box::pin(async move {
                let delay = self.faults().delay;
                if !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
                if let Some(err) = self.read_fault(location) {
                    return Err(err);
                }
                self.inner.get_opts(location, options).await
            })
        }

        fn get_ranges<'life0, 'life1, 'life2, 'async_trait>(
            &'life0 self,
            location: &'life1 Path,
            ranges: &'life2 [Range<u64>],
        ) -> Fut<'async_trait, Vec<Bytes>>
        where
            'life0: 'async_trait,
            'life1: 'async_trait,
            'life2: 'async_trait,
            Self: 'async_trait,
        {
            Box::pin(async move {
                let delay = self.faults().delay;
                if !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
                if let Some(err) = self.read_fault(location) {
                    return Err(err);
                }
                self.inner.get_ranges(location, ranges).await
            })
        }

        fn delete_stream(
            &self,
            locations: BoxStream<'static, object_store::Result<Path>>,
        ) -> BoxStream<'static, object_store::Result<Path>> {
            if self.faults().outage {
                self.injected.fetch_add(1, Ordering::SeqCst);
                return locations
                    .map(|l| {
                        l.and_then(|p| {
                            Err(injected(
                                std::io::ErrorKind::ConnectionRefused,
                                format!("injected outage deleting {p}"),
                            ))
                        })
                    })
                    .boxed();
            }
            self.inner.delete_stream(locations)
        }

        fn list(
            &self,
            prefix: Option<&Path>,
        ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
            if self.faults().outage {
                self.injected.fetch_add(1, Ordering::SeqCst);
                return futures_util::stream::once(async {
                    Err(injected(
                        std::io::ErrorKind::ConnectionRefused,
                        "injected outage listing".into(),
                    ))
                })
                .boxed();
            }
            self.inner.list(prefix)
        }

        fn list_with_delimiter<'life0, 'life1, 'async_trait>(
            &'life0 self,
            prefix: Option<&'life1 Path>,
        ) -> Fut<'async_trait, ListResult>
        where
            'life0: 'async_trait,
            'life1: 'async_trait,
            Self: 'async_trait,
        {
            self.inner.list_with_delimiter(prefix)
        }

        fn copy_opts<'life0, 'life1, 'life2, 'async_trait>(
            &'life0 self,
            from: &'life1 Path,
            to: &'life2 Path,
            options: CopyOptions,
        ) -> Fut<'async_trait, ()>
        where
            'life0: 'async_trait,
            'life1: 'async_trait,
            'life2: 'async_trait,
            Self: 'async_trait,
        {
            Box::pin(async move {
                if let Put::Fail(err) = self.put_fault(to) {
                    return Err(err);
                }
                self.inner.copy_opts(from, to, options).await
            })
        }
    }
}

fn now() -> u64 {
    SystemClock.now_nanos()
}

/// Short backoffs: the faults are injected, nothing needs time to heal.
fn retry() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 4,
        initial_backoff: Duration::from_millis(1),
        max_backoff: Duration::from_millis(4),
    }
}

/// Warm and cold tiers on the local filesystem, each behind a [`FaultyObjectStore`].
struct Tiers {
    warm: Arc<FaultyObjectStore>,
    cold: Arc<FaultyObjectStore>,
    stores: TierStores,
    /// The same directories without the faults, for checking what really is there.
    plain: TierStores,
}

fn tiers(dir: &std::path::Path) -> Tiers {
    let plain = common::tiers::file_stores(dir);
    let warm = FaultyObjectStore::new(plain.warm.object_store().clone());
    let cold = FaultyObjectStore::new(plain.cold.object_store().clone());
    let stores = TierStores {
        warm: SegmentStore::new("faulty+warm", warm.clone(), retry()),
        cold: SegmentStore::new("faulty+cold", cold.clone(), retry()),
    };
    Tiers {
        warm,
        cold,
        stores,
        plain,
    }
}

fn archiver(ledger: &Arc<Ledger>, stores: &TierStores) -> Archiver {
    Archiver::new(
        ledger.clone(),
        stores.clone(),
        ArchiverConfig::default(),
        allow_deletions(),
    )
}

/// Every leaf of `log` reads back (from whichever tier holds it) with the content the tree
/// commits to, and its inclusion proof verifies against the latest signed checkpoint with the
/// offline verifier.
async fn every_leaf_proves(archiver: &Archiver, log: &Log) {
    let checkpoint = log.wait_for_checkpoint(log.tree_size()).await.unwrap();
    let tree_size = checkpoint.checkpoint.tree_size;
    assert_eq!(tree_size, log.tree_size(), "checkpoint covers every leaf");
    for leaf_index in 0..tree_size {
        let proof: Vec<Vec<u8>> = log
            .inclusion_proof(leaf_index, tree_size)
            .unwrap()
            .iter()
            .map(|h| h.to_vec())
            .collect();
        match archiver.reader().leaf(log, leaf_index).await.unwrap() {
            LeafContent::Present { bytes, .. } => {
                auditledger_verifier::verify_inclusion(
                    &bytes,
                    leaf_index,
                    &proof,
                    checkpoint.note.as_bytes(),
                    &verifiers(),
                )
                .unwrap_or_else(|e| panic!("leaf {leaf_index}: {e}"));
            }
            LeafContent::Expired { .. } => panic!("leaf {leaf_index} expired: nothing was due"),
        }
    }
}

/// Leaves of `[start, end)` whose bytes are still in the hot store.
fn hot_leaves(log: &Log, start: u64, end: u64) -> u64 {
    let mut n = 0;
    log.scan_leaves(start, end, &mut |_, _| {
        n += 1;
        true
    })
    .unwrap();
    n
}

/// Transient errors and slow answers are retried inside one pass: both segments move down
/// both tiers as if nothing happened, and the retries are what made it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_errors_and_slow_responses_are_retried_within_a_pass() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = open_ledger(Arc::new(MemoryStore::new()), 8);
    append(&ledger, "acme", 0, 2 * 256 + 5).await;
    let log = ledger.log("acme", "prod").unwrap();
    let t = tiers(dir.path());
    let flaky = ObjectFaults {
        // Fewer than the retry policy's 4 tries per operation, spread over operations.
        fail_next_puts: 3,
        fail_next_gets: 3,
        delay: Duration::from_millis(2),
        ..Default::default()
    };
    t.warm.set(flaky.clone());
    t.cold.set(flaky);
    let a = archiver(&ledger, &t.stores);
    let report = a.move_down(Tier::Warm, Duration::ZERO, now()).await;
    assert_eq!(
        (report.moved.len(), report.failures.len()),
        (2, 0),
        "{report:?}"
    );
    let report = a.move_down(Tier::Cold, Duration::ZERO, now()).await;
    assert_eq!(
        (report.moved.len(), report.failures.len()),
        (2, 0),
        "{report:?}"
    );
    assert_eq!(t.warm.injected(), 6, "every warm fault was hit and retried");
    assert_eq!(t.cold.injected(), 6, "every cold fault was hit and retried");
    let census = check_archive(&ledger, &t.plain, a.reader()).await;
    assert_eq!(
        census,
        Census {
            warm: 0,
            cold: 2,
            expired: 0
        }
    );
    every_leaf_proves(&a, &log).await;
    ledger.close().unwrap();
}

/// Outages, timeouts and truncated uploads that the store acknowledges: no pass releases a hot
/// leaf or deletes a warm object whose copy was not read back and verified; each failure names
/// its segment; once the faults stop, one pass completes and nothing is lost or duplicated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_never_release_unverified_data_and_a_pass_after_them_completes() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = open_ledger(Arc::new(MemoryStore::new()), 8);
    append(&ledger, "acme", 0, 2 * 256 + 5).await;
    let log = ledger.log("acme", "prod").unwrap();
    let size = log.tree_size();
    let t = tiers(dir.path());
    let a = archiver(&ledger, &t.stores);

    // Hot → warm under each persistent fault in turn.
    for (name, faults) in [
        (
            "outage",
            ObjectFaults {
                outage: true,
                ..Default::default()
            },
        ),
        (
            "timeouts",
            ObjectFaults {
                put_timeouts: true,
                ..Default::default()
            },
        ),
        (
            "truncated uploads",
            ObjectFaults {
                truncate_puts: true,
                ..Default::default()
            },
        ),
        (
            "slow and truncated",
            ObjectFaults {
                truncate_puts: true,
                delay: Duration::from_millis(3),
                ..Default::default()
            },
        ),
    ] {
        let before = t.warm.injected();
        t.warm.set(faults);
        let report = a.move_down(Tier::Warm, Duration::ZERO, now()).await;
        assert!(report.moved.is_empty(), "{name}: {report:?}");
        assert_eq!(report.failures.len(), 2, "{name}: {report:?}");
        assert!(
            report.failures[0].contains("[0,256)"),
            "{name}: {}",
            report.failures[0]
        );
        assert!(
            report.failures[1].contains("[256,512)"),
            "{name}: {}",
            report.failures[1]
        );
        assert!(t.warm.injected() > before, "{name}: the fault was hit");
        assert_eq!(
            hot_leaves(&log, 0, size),
            size,
            "{name}: a hot leaf was deleted"
        );
        assert!(
            log.segments().unwrap().iter().all(|r| !r.hot_released),
            "{name}: a segment was released"
        );
    }
    assert!(a.metrics().snapshot().failures >= 8);

    // Faults stop: one pass moves both segments (replacing the truncated objects).
    t.warm.set(ObjectFaults::default());
    let report = a.move_down(Tier::Warm, Duration::ZERO, now()).await;
    assert_eq!(
        (report.moved.len(), report.failures.len()),
        (2, 0),
        "{report:?}"
    );
    let census = check_archive(&ledger, &t.plain, a.reader()).await;
    assert_eq!(
        census,
        Census {
            warm: 2,
            cold: 0,
            expired: 0
        }
    );

    // Warm → cold: a cold tier that truncates or is down never costs a warm object.
    for (name, faults) in [
        (
            "cold outage",
            ObjectFaults {
                outage: true,
                ..Default::default()
            },
        ),
        (
            "cold truncated uploads",
            ObjectFaults {
                truncate_puts: true,
                ..Default::default()
            },
        ),
    ] {
        t.cold.set(faults);
        let report = a.move_down(Tier::Cold, Duration::ZERO, now()).await;
        assert!(report.moved.is_empty(), "{name}: {report:?}");
        assert_eq!(report.failures.len(), 2, "{name}: {report:?}");
        let records = log.segments().unwrap();
        assert!(
            records.iter().all(|r| r.tier == Tier::Warm),
            "{name}: {records:?}"
        );
        // Every leaf still reads from warm with a valid proof.
        every_leaf_proves(&a, &log).await;
    }
    // A warm tier whose reads fail: the cold copy cannot be made, nothing is deleted.
    t.cold.set(ObjectFaults::default());
    t.warm.set(ObjectFaults {
        outage: true,
        ..Default::default()
    });
    let report = a.move_down(Tier::Cold, Duration::ZERO, now()).await;
    assert!(report.moved.is_empty(), "{report:?}");
    assert!(log.segments().unwrap().iter().all(|r| r.tier == Tier::Warm));

    t.warm.set(ObjectFaults::default());
    let report = a.move_down(Tier::Cold, Duration::ZERO, now()).await;
    assert_eq!(
        (report.moved.len(), report.failures.len()),
        (2, 0),
        "{report:?}"
    );
    // A further pass finds nothing to do: nothing duplicated, nothing lost.
    let report = a.move_down(Tier::Cold, Duration::ZERO, now()).await;
    assert_eq!(
        (report.moved.len(), report.failures.len()),
        (0, 0),
        "{report:?}"
    );
    let census = check_archive(&ledger, &t.plain, a.reader()).await;
    assert_eq!(
        census,
        Census {
            warm: 0,
            cold: 2,
            expired: 0
        }
    );
    every_leaf_proves(&a, &log).await;
    // The 5 leaves after the last full segment stay hot.
    assert_eq!(hot_leaves(&log, 512, size), 5);
    ledger.close().unwrap();
}
