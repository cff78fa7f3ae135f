//! Event searches over archived segments (`TierReader::find_in_segment`, issue 7): for a table
//! of filters × orders × resume points × limits the result is exactly what a brute-force
//! `EventFilter::matches` over the decoded leaves gives; a value absent from a segment reads no
//! byte of the `leaf` column (seen by a store that records every range read); a damaged object
//! is refused.

mod common;

use std::ops::Range;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use auditledger_archiver::segment::WriteOptions;
use auditledger_archiver::{
    Archiver, ArchiverConfig, LeafContent, RetryPolicy, SegmentStore, TierReader, TierStores,
    allow_deletions,
};
use auditledger_ledger::event::{Decision, EventKind, LeafRecord, decode_leaf};
use auditledger_ledger::query::{EventFilter, Order};
use auditledger_ledger::segments::{SegmentRecord, Tier};
use auditledger_ledger::store::memory::MemoryStore;
use auditledger_ledger::{Clock, Ledger, Log, SystemClock};
use counting::CountingStore;
use parquet::file::reader::{FileReader, SerializedFileReader};

use common::tiers::{file_stores, open_ledger};

const YEAR: Duration = Duration::from_secs(365 * 24 * 3600);
/// 2^9 leaves per segment; two segments.
const BITS: u8 = 9;
const EVENTS: u64 = 2 << BITS;

/// An object store that records every byte range read through it.
mod counting {
    use super::*;
    use futures_util::future::BoxFuture;
    use futures_util::stream::BoxStream;
    use object_store::path::Path;
    use object_store::{
        CopyOptions, GetOptions, GetRange, GetResult, ListResult, MultipartUpload, ObjectMeta,
        ObjectStore, PutMultipartOptions, PutOptions, PutPayload, PutResult,
    };

    #[derive(Debug)]
    pub struct CountingStore {
        pub inner: Arc<dyn ObjectStore>,
        /// Ranges read (`None` = a whole-object or open-ended read).
        pub reads: Mutex<Vec<Option<Range<u64>>>>,
    }

    impl std::fmt::Display for CountingStore {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "CountingStore({})", self.inner)
        }
    }

    // `ObjectStore` is an `async_trait`: its methods written out as that macro expands them
    // (no extra dependency for one test wrapper).
    type Fut<'a, T> = BoxFuture<'a, object_store::Result<T>>;

    impl ObjectStore for CountingStore {
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
            self.inner.put_opts(location, payload, opts)
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
            self.inner.put_multipart_opts(location, opts)
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
            if !options.head {
                let range = match &options.range {
                    Some(GetRange::Bounded(r)) => Some(r.clone()),
                    _ => None,
                };
                self.reads.lock().unwrap().push(range);
            }
            self.inner.get_opts(location, options)
        }

        fn get_ranges<'life0, 'life1, 'life2, 'async_trait>(
            &'life0 self,
            location: &'life1 Path,
            ranges: &'life2 [Range<u64>],
        ) -> Fut<'async_trait, Vec<bytes::Bytes>>
        where
            'life0: 'async_trait,
            'life1: 'async_trait,
            'life2: 'async_trait,
            Self: 'async_trait,
        {
            self.reads
                .lock()
                .unwrap()
                .extend(ranges.iter().cloned().map(Some));
            self.inner.get_ranges(location, ranges)
        }

        fn delete_stream(
            &self,
            locations: BoxStream<'static, object_store::Result<Path>>,
        ) -> BoxStream<'static, object_store::Result<Path>> {
            self.inner.delete_stream(locations)
        }

        fn list(
            &self,
            prefix: Option<&Path>,
        ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
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
            self.inner.copy_opts(from, to, options)
        }
    }
}

/// A known mix: 4 kinds, 5 decisions (one unspecified), 7 users (every 13th event without one), sessions of 37
/// events, every 6th event "internal" (expired by the archiver pass), the rest "restricted".
fn events() -> Vec<auditledger_ledger::event::AuditEvent> {
    let kinds = [
        EventKind::ToolCall,
        EventKind::Approval,
        EventKind::Access,
        EventKind::DataExport,
    ];
    let decisions = [
        Decision::Allow,
        Decision::Deny,
        Decision::Unspecified,
        Decision::RequireApproval,
        Decision::Modify,
    ];
    (0..EVENTS)
        .map(|n| {
            let mut e = auditledger_tests::tool_call((n % 4) as u32, n, "acme", "prod");
            e.event_kind = kinds[((n / 2) % 4) as usize] as i32;
            e.decision = decisions[((n / 3) % 5) as usize] as i32;
            e.user_id = if n % 13 == 0 {
                String::new()
            } else {
                format!("user-{}", n % 7)
            };
            e.session_id = format!("s-{}", n / 37);
            e.data_classification = if n % 6 == 0 { "internal" } else { "restricted" }.into();
            e
        })
        .collect()
}

struct Fixture {
    dir: tempfile::TempDir,
    ledger: Arc<Ledger>,
    log: Log,
    stores: TierStores,
    records: Vec<SegmentRecord>,
    /// Every leaf as the brute force judges it (expired ones with `event: None`).
    leaves: Vec<LeafRecord>,
    /// Verbatim leaf bytes, `None` where expired.
    bytes: Vec<Option<Vec<u8>>>,
    archiver: Archiver,
}

fn now() -> u64 {
    SystemClock.now_nanos()
}

/// Two archived segments of small row groups (64 rows) and pages, with some content expired.
async fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let ledger = open_ledger(Arc::new(MemoryStore::new()), BITS);
    // Batches of 32: each batch shares one `logged_at`, batches a few ms apart.
    for batch in events().chunks(32) {
        ledger.append("gateway-1", batch).await.unwrap();
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let log = ledger.log("acme", "prod").unwrap();
    log.wait_for_index(log.tree_size()).await.unwrap();
    let hot: Vec<Vec<u8>> = (0..EVENTS).map(|i| log.leaf(i).unwrap().unwrap()).collect();
    let stores = file_stores(dir.path());
    let config = ArchiverConfig {
        retention: 2 * YEAR,
        retention_by_class: [("restricted".to_owned(), 10 * YEAR)].into(),
        write: WriteOptions {
            row_group_rows: 64,
            data_page_bytes: 8 * 1024,
            ..WriteOptions::default()
        },
        ..ArchiverConfig::default()
    };
    let archiver = Archiver::new(ledger.clone(), stores.clone(), config, allow_deletions());
    let report = archiver.pass(now() + 3 * YEAR.as_nanos() as u64).await;
    assert!(report.failures.is_empty(), "{report:?}");
    let records = log.segments().unwrap();
    assert_eq!(records.len(), 2);
    assert!(
        records.iter().all(|r| r.hot_released && r.content_expired),
        "{records:?}"
    );
    let mut leaves = Vec::new();
    let mut bytes = Vec::new();
    for record in &records {
        for (i, _, content) in archiver
            .reader()
            .archived_range(&log, record.start, record.end())
            .await
            .unwrap()
        {
            let original = decode_leaf(&hot[i as usize]).unwrap();
            match content {
                LeafContent::Present { bytes: b, .. } => {
                    assert_eq!(b, hot[i as usize]);
                    leaves.push(original);
                    bytes.push(Some(b));
                }
                LeafContent::Expired { .. } => {
                    leaves.push(LeafRecord {
                        event: None,
                        logged_at: original.logged_at,
                        principal: String::new(),
                    });
                    bytes.push(None);
                }
            }
        }
    }
    let expired = bytes.iter().filter(|b| b.is_none()).count() as u64;
    assert_eq!(expired, EVENTS.div_ceil(6), "every 6th leaf expired");
    Fixture {
        dir,
        ledger,
        log,
        stores,
        records,
        leaves,
        bytes,
        archiver,
    }
}

impl Fixture {
    fn event(&self, i: usize) -> &auditledger_ledger::event::AuditEvent {
        self.leaves[i].event.as_ref().unwrap()
    }

    fn logged_at(&self, i: usize) -> u64 {
        self.leaves[i].logged_at
    }

    /// The filters of the table, from values known to be present, absent, expired or empty.
    fn filters(&self) -> Vec<EventFilter> {
        let f = EventFilter::default;
        vec![
            f(),
            EventFilter {
                from_time: self.logged_at(100),
                to_time: self.logged_at(300),
                ..f()
            },
            EventFilter {
                from_time: self.logged_at(400),
                to_time: self.logged_at(700),
                ..f()
            },
            EventFilter {
                from_time: self.logged_at(900),
                ..f()
            },
            EventFilter {
                to_time: self.logged_at(0),
                ..f()
            },
            EventFilter {
                event_kind: Some(EventKind::Approval),
                ..f()
            },
            EventFilter {
                event_kind: Some(EventKind::DataExport),
                to_time: self.logged_at(450),
                ..f()
            },
            EventFilter {
                decision: Some(Decision::Deny),
                ..f()
            },
            EventFilter {
                decision: Some(Decision::Unspecified),
                from_time: self.logged_at(200),
                ..f()
            },
            EventFilter {
                user_id: Some("user-3".into()),
                ..f()
            },
            EventFilter {
                user_id: Some(String::new()),
                ..f()
            },
            EventFilter {
                user_id: Some("nobody@example.com".into()),
                ..f()
            },
            EventFilter {
                session_id: Some("s-5".into()),
                ..f()
            },
            EventFilter {
                correlation_id: Some(self.event(123).correlation_id.clone()),
                ..f()
            },
            EventFilter {
                event_id: Some(self.event(77).event_id.clone()),
                ..f()
            },
            EventFilter {
                // Leaf 78 is "internal": expired, so its id is no longer searchable.
                event_id: Some(auditledger_tests::event_id(2, 78)),
                ..f()
            },
            EventFilter {
                trace_id: Some(self.event(601).trace_id.clone()),
                ..f()
            },
            EventFilter {
                agent_id: Some("agent-3".into()),
                tool_server: Some("jira".into()),
                ..f()
            },
            EventFilter {
                tool_name: Some("search".into()),
                from_time: self.logged_at(50),
                to_time: self.logged_at(800),
                ..f()
            },
            EventFilter {
                data_classification: Some("internal".into()),
                ..f()
            },
            EventFilter {
                data_classification: Some("restricted".into()),
                user_id: Some("user-2".into()),
                event_kind: Some(EventKind::ToolCall),
                ..f()
            },
        ]
    }

    /// Brute force: every leaf of the segment judged by `EventFilter::matches`.
    fn expected(
        &self,
        record: &SegmentRecord,
        filter: &EventFilter,
        order: Order,
        resume_after: Option<u64>,
        limit: usize,
    ) -> Vec<u64> {
        let mut indexes: Vec<u64> = (record.start..record.end()).collect();
        if order == Order::NewestFirst {
            indexes.reverse();
        }
        indexes
            .into_iter()
            .filter(|&i| match (order, resume_after) {
                (_, None) => true,
                (Order::OldestFirst, Some(r)) => i > r,
                (Order::NewestFirst, Some(r)) => i < r,
            })
            .filter(|&i| filter.matches(&self.leaves[i as usize]))
            .take(limit)
            .collect()
    }
}

fn counting_reader(stores: &TierStores) -> (TierReader, Arc<CountingStore>, Arc<CountingStore>) {
    let wrap = |store: &SegmentStore| {
        Arc::new(CountingStore {
            inner: store.object_store().clone(),
            reads: Mutex::new(Vec::new()),
        })
    };
    let (warm, cold) = (wrap(&stores.warm), wrap(&stores.cold));
    let reader = TierReader::new(
        TierStores {
            warm: SegmentStore::new("counting-warm", warm.clone(), RetryPolicy::default()),
            cold: SegmentStore::new("counting-cold", cold.clone(), RetryPolicy::default()),
        },
        8,
    );
    (reader, warm, cold)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_equal_brute_force_matches_for_every_filter_order_resume_and_limit() {
    let fx = fixture().await;
    let reader = fx.archiver.reader();
    let filters = fx.filters();
    let mut nonempty = 0;
    let mut calls = 0;
    for filter in &filters {
        let mut total = 0;
        for record in &fx.records {
            for order in [Order::OldestFirst, Order::NewestFirst] {
                let resumes = [
                    None,
                    Some(record.start.saturating_sub(1)),
                    Some(record.start),
                    Some(record.start + 130),
                    Some(record.end() - 1),
                    Some(record.end() + 5),
                ];
                for resume_after in resumes {
                    for limit in [0, 1, 5, 70, 10_000] {
                        let want = fx.expected(record, filter, order, resume_after, limit);
                        let got = reader
                            .find_in_segment(&fx.log, record, filter, order, resume_after, limit)
                            .await
                            .unwrap_or_else(|e| panic!("{filter:?} {order:?}: {e}"));
                        calls += 1;
                        let got_indexes: Vec<u64> = got.iter().map(|(i, _, _)| *i).collect();
                        assert_eq!(
                            got_indexes,
                            want,
                            "{filter:?} {order:?} after {resume_after:?} limit {limit} in [{}, {})",
                            record.start,
                            record.end()
                        );
                        for (i, hash, content) in &got {
                            assert_eq!(*hash, fx.log.leaf_hash(*i).unwrap());
                            assert_eq!(content.tier(), record.tier);
                            assert_eq!(content.bytes(), fx.bytes[*i as usize].as_deref());
                        }
                        if resume_after.is_none() && limit == 10_000 {
                            total += got.len();
                        }
                    }
                }
            }
        }
        if total > 0 {
            nonempty += 1;
        }
    }
    // The table is meaningful: most filters find something, some nothing.
    assert!(
        nonempty >= filters.len() - 5,
        "{nonempty} of {}",
        filters.len()
    );
    assert!(nonempty < filters.len());
    assert!(calls > 1000, "{calls}");
    fx.ledger.close().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pruning_skips_segments_row_groups_and_leaf_pages() {
    let fx = fixture().await;
    let (reader, warm, cold) = counting_reader(&fx.stores);
    let record = &fx.records[0];
    let store = match record.tier {
        Tier::Warm => &fx.stores.warm,
        _ => &fx.stores.cold,
    };
    let counter = match record.tier {
        Tier::Warm => &warm,
        _ => &cold,
    };
    // Byte ranges of the `leaf` column chunks, from the object's footer.
    let object = store
        .get(&object_store::path::Path::parse(&record.object).unwrap())
        .await
        .unwrap();
    let file = SerializedFileReader::new(object).unwrap();
    let leaf_column = file
        .metadata()
        .file_metadata()
        .schema_descr()
        .columns()
        .iter()
        .position(|c| c.name() == "leaf")
        .unwrap();
    let leaf_chunks: Vec<Range<u64>> = file
        .metadata()
        .row_groups()
        .iter()
        .map(|g| {
            let (start, len) = g.column(leaf_column).byte_range();
            start..start + len
        })
        .collect();
    assert_eq!(leaf_chunks.len(), 8, "2^9 rows in row groups of 64");
    let leaf_bytes_read = |reads: &[Option<Range<u64>>]| {
        reads.iter().any(|r| match r {
            None => true,
            Some(r) => leaf_chunks
                .iter()
                .any(|c| r.start < c.end && c.start < r.end),
        })
    };

    // Absent values of each bloom-filtered column (within the statistics' bounds), and one
    // beyond every string's max.
    let absent = [
        // Inside every row group's user_id min/max: only the bloom filters can prune.
        EventFilter {
            user_id: Some("user-35".into()),
            ..Default::default()
        },
        EventFilter {
            event_id: Some(format!("{}x", fx.event(77).event_id)),
            ..Default::default()
        },
        EventFilter {
            session_id: Some("s-0x".into()),
            ..Default::default()
        },
        EventFilter {
            correlation_id: Some("corr-3x".into()),
            ..Default::default()
        },
        EventFilter {
            tool_name: Some("zzz".into()),
            ..Default::default()
        },
    ];
    let mut bloom_pruned = 0;
    for filter in &absent {
        counter.reads.lock().unwrap().clear();
        let (rows, stats) = reader
            .find_in_segment_with_stats(&fx.log, record, filter, Order::NewestFirst, None, 100)
            .await
            .unwrap();
        assert!(rows.is_empty(), "{filter:?}");
        assert_eq!(stats.leaves_read, 0, "{filter:?}: {stats:?}");
        assert_eq!(stats.leaf_reads, 0, "{filter:?}: {stats:?}");
        let reads = counter.reads.lock().unwrap().clone();
        assert!(
            !leaf_bytes_read(&reads),
            "{filter:?} read leaf bytes: {reads:?}"
        );
        bloom_pruned += stats.pruned_by_bloom;
    }
    assert!(bloom_pruned >= 8, "bloom filters pruned {bloom_pruned}");

    // A present session: statistics prune the row groups it is not in, and the leaf bytes
    // read are those of its rows only (the counter does see leaf reads).
    counter.reads.lock().unwrap().clear();
    let filter = EventFilter {
        session_id: Some("s-5".into()),
        ..Default::default()
    };
    let (rows, stats) = reader
        .find_in_segment_with_stats(&fx.log, record, &filter, Order::OldestFirst, None, 100)
        .await
        .unwrap();
    let want = fx.expected(record, &filter, Order::OldestFirst, None, 100);
    assert_eq!(rows.len(), want.len());
    assert!(!want.is_empty());
    assert!(stats.pruned_by_statistics >= 5, "{stats:?}");
    assert_eq!(stats.leaves_read, want.len() as u64, "{stats:?}");
    assert!(leaf_bytes_read(&counter.reads.lock().unwrap()));

    // A time window outside the segment: nothing is read at all.
    counter.reads.lock().unwrap().clear();
    reader.clear_cache();
    let filter = EventFilter {
        from_time: record.newest + 1,
        ..Default::default()
    };
    let (rows, stats) = reader
        .find_in_segment_with_stats(&fx.log, record, &filter, Order::OldestFirst, None, 100)
        .await
        .unwrap();
    assert!(rows.is_empty() && stats.segment_skipped, "{stats:?}");
    assert!(counter.reads.lock().unwrap().is_empty());
    fx.ledger.close().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_object_is_refused() {
    let fx = fixture().await;
    let record = fx.records[1].clone();
    let tier_dir = match record.tier {
        Tier::Warm => "warm",
        _ => "cold",
    };
    let path = fx.dir.path().join(tier_dir).join(&record.object);
    let original = std::fs::read(&path).unwrap();
    let everything = EventFilter {
        from_time: record.oldest,
        ..Default::default()
    };

    // One flipped bit in the middle of the first row group's `leaf` column chunk: the
    // object keeps its size and footer, so only reading the leaves can notice.
    let file = SerializedFileReader::new(bytes::Bytes::from(original.clone())).unwrap();
    let leaf_column = file
        .metadata()
        .file_metadata()
        .schema_descr()
        .columns()
        .iter()
        .position(|c| c.name() == "leaf")
        .unwrap();
    let (start, len) = file
        .metadata()
        .row_group(0)
        .column(leaf_column)
        .byte_range();
    let mut damaged = original.clone();
    damaged[(start + len / 2) as usize] ^= 0x10;
    std::fs::write(&path, &damaged).unwrap();
    let reader = TierReader::new(fx.stores.clone(), 4);
    let error = reader
        .find_in_segment(
            &fx.log,
            &record,
            &everything,
            Order::OldestFirst,
            None,
            10_000,
        )
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains(fx.log.origin()), "{error}");

    // Another object of a different size in its place: refused when opened.
    let mut longer = original.clone();
    longer.extend_from_slice(b"trailing");
    std::fs::write(&path, &longer).unwrap();
    let reader = TierReader::new(fx.stores.clone(), 4);
    let error = reader
        .find_in_segment(&fx.log, &record, &everything, Order::NewestFirst, None, 1)
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains(fx.log.origin()), "{error}");

    // Restored, it serves again.
    std::fs::write(&path, &original).unwrap();
    let reader = TierReader::new(fx.stores.clone(), 4);
    let rows = reader
        .find_in_segment(&fx.log, &record, &everything, Order::NewestFirst, None, 3)
        .await
        .unwrap();
    assert_eq!(
        rows.iter().map(|r| r.0).collect::<Vec<_>>(),
        vec![record.end() - 1, record.end() - 2, record.end() - 3]
    );
    fx.ledger.close().unwrap();
}
