//! Archived search benchmark (by hand; results in `docs/benchmarks.md`, "Archived search"):
//! one 2^BITS-leaf segment of realistic events archived to the cold tier on the local
//! filesystem, then `TierReader::find_in_segment` latencies for indexed-field lookups (present
//! and absent values; warm and cold reader cache) and time-range scan throughput.
//!
//! Usage: search_throughput [DIR] [BITS] [LOOKUPS]
//! (defaults: a temporary directory under /work, 16, 300)

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use auditledger_archiver::{
    Archiver, ArchiverConfig, SegmentStore, StoreOptions, TierReader, TierStores, allow_deletions,
};
use auditledger_ledger::event::{AuditEvent, decode_leaf};
use auditledger_ledger::keys::Keyring;
use auditledger_ledger::note::SignerKey;
use auditledger_ledger::query::{EventFilter, Order};
use auditledger_ledger::segments::{SegmentRecord, Tier};
use auditledger_ledger::store::rocks::{RocksOptions, RocksStore};
use auditledger_ledger::{Clock, Ledger, LedgerOptions, Log, SystemClock};
use auditledger_tests::{Rng, tool_call};

fn random_hex(rng: &mut Rng, bytes: usize) -> String {
    let mut out = String::with_capacity(2 * bytes + 16);
    while out.len() < 2 * bytes {
        out.push_str(&format!("{:016x}", rng.next_u64()));
    }
    out.truncate(2 * bytes);
    out
}

fn uuid_v7(rng: &mut Rng) -> String {
    let r = random_hex(rng, 10);
    let millis = SystemClock.now_nanos() / 1_000_000;
    format!(
        "{:08x}-{:04x}-7{}-8{}-{}",
        millis >> 16,
        millis & 0xffff,
        &r[0..3],
        &r[3..6],
        &r[6..18]
    )
}

/// `tool_call` with every id and content hash random (as in `archiver_throughput`).
fn realistic(rng: &mut Rng, n: u64) -> AuditEvent {
    let mut event = tool_call((n % 8) as u32, n, "acme", "prod");
    event.event_id = uuid_v7(rng);
    event.trace_id = random_hex(rng, 16);
    event.span_id = random_hex(rng, 8);
    event.arguments_hash = format!("blake3:{}", random_hex(rng, 32));
    event.response_hash = format!("blake3:{}", random_hex(rng, 32));
    event.latency_ms = rng.range(3, 2_000) as u32;
    event
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index].as_secs_f64() * 1e3
}

/// Runs `make(i)`'s filter `count` times; prints p50/p99/max and the last query's stats.
async fn lookups(
    name: &str,
    reader: &TierReader,
    log: &Log,
    record: &SegmentRecord,
    count: usize,
    cold_cache: bool,
    make: impl Fn(usize) -> (EventFilter, bool),
) {
    let mut latencies = Vec::with_capacity(count);
    let mut last = None;
    for i in 0..count {
        let (filter, present) = make(i);
        if cold_cache {
            reader.clear_cache();
        }
        let started = Instant::now();
        let (rows, stats) = reader
            .find_in_segment_with_stats(log, record, &filter, Order::NewestFirst, None, 100)
            .await
            .expect("search");
        latencies.push(started.elapsed());
        assert_eq!(!rows.is_empty(), present, "{filter:?}");
        last = Some(stats);
    }
    latencies.sort();
    let stats = last.expect("at least one lookup");
    println!(
        "{name:<40} p50 {:7.2} ms  p99 {:7.2} ms  max {:7.2} ms  | row groups {} pruned stats {} bloom {} scanned {}, leaves read {}",
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        percentile(&latencies, 1.0),
        stats.row_groups,
        stats.pruned_by_statistics,
        stats.pruned_by_bloom,
        stats.row_groups_scanned,
        stats.leaves_read,
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let temp = tempfile::tempdir_in(args.get(1).map_or("/work", String::as_str)).expect("tempdir");
    let dir = temp.path();
    let bits: u8 = args.get(2).map_or(16, |a| a.parse().expect("BITS"));
    let count: usize = args.get(3).map_or(300, |a| a.parse().expect("LOOKUPS"));
    let leaves = 1u64 << bits;

    let store = Arc::new(RocksStore::open(&dir.join("db"), &RocksOptions::default()).expect("db"));
    let signer = SignerKey::from_seed("auditledger.local", &[0x5a; 32]).expect("key");
    let mut ring = Keyring::default();
    ring.add_existing(signer, None, 0);
    let options = LedgerOptions {
        segment_bits: bits,
        ..LedgerOptions::default()
    };
    let ledger =
        Arc::new(Ledger::open(store, Arc::new(RwLock::new(ring)), options).expect("ledger"));
    let mut rng = Rng::new(42);
    let mut n = 0;
    while n < leaves {
        let batch: Vec<AuditEvent> = (n..(n + 1000).min(leaves))
            .map(|i| realistic(&mut rng, i))
            .collect();
        n += batch.len() as u64;
        ledger.append("gateway-1", &batch).await.expect("append");
        // Batches share a `logged_at`: space them so time windows have something to cut.
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let log = ledger.log("acme", "prod").expect("log");
    log.wait_for_index(log.tree_size()).await.expect("index");
    let mut events = Vec::with_capacity(leaves as usize);
    log.scan_leaves(0, leaves, &mut |_, leaf| {
        events.push(decode_leaf(leaf).expect("leaf"));
        true
    })
    .expect("scan");

    let url = |name: &str| format!("file://{}", dir.join(name).display());
    let stores = TierStores {
        warm: SegmentStore::open(&url("warm"), &StoreOptions::default()).expect("warm"),
        cold: SegmentStore::open(&url("cold"), &StoreOptions::default()).expect("cold"),
    };
    let archiver = Archiver::new(
        ledger.clone(),
        stores,
        ArchiverConfig::default(),
        allow_deletions(),
    );
    let now = SystemClock.now_nanos();
    for tier in [Tier::Warm, Tier::Cold] {
        let report = archiver.move_down(tier, Duration::ZERO, now).await;
        assert!(report.failures.is_empty(), "{:?}", report.failures);
    }
    let record = log
        .segment_of(0)
        .expect("record")
        .expect("archived segment");
    assert_eq!(record.tier, Tier::Cold);
    println!(
        "segment of 2^{bits} leaves in the cold tier: {} bytes",
        record.object_bytes
    );
    let reader = archiver.reader();
    let event = |i: usize| {
        let mut r = Rng::new(i as u64 ^ 0x5eed);
        events[r.range(0, leaves) as usize]
            .event
            .as_ref()
            .expect("event")
    };
    let absent = |i: usize| uuid_v7(&mut Rng::new(i as u64 ^ 0xab5e));

    for cold_cache in [false, true] {
        let n = if cold_cache { count / 4 } else { count };
        let cache = if cold_cache {
            "cold cache"
        } else {
            "warm cache"
        };
        println!("-- reader {cache}, {n} lookups each, limit 100, newest first");
        type Make<'a> = Box<dyn Fn(usize) -> EventFilter + 'a>;
        /// A filter with one field, set by `set` to `value(i)`.
        fn with<'a>(
            set: fn(&mut EventFilter, String),
            value: impl Fn(usize) -> String + 'a,
        ) -> Make<'a> {
            Box::new(move |i| {
                let mut filter = EventFilter::default();
                set(&mut filter, value(i));
                filter
            })
        }
        let cases: Vec<(&str, bool, Make<'_>)> = vec![
            (
                "event_id present",
                true,
                with(|f, v| f.event_id = Some(v), |i| event(i).event_id.clone()),
            ),
            (
                "event_id absent",
                false,
                with(|f, v| f.event_id = Some(v), absent),
            ),
            (
                "session_id present",
                true,
                with(
                    |f, v| f.session_id = Some(v),
                    |i| event(i).session_id.clone(),
                ),
            ),
            (
                "session_id absent",
                false,
                with(|f, v| f.session_id = Some(v), |i| format!("session-0-{i}x")),
            ),
            (
                "correlation_id present",
                true,
                with(
                    |f, v| f.correlation_id = Some(v),
                    |i| event(i).correlation_id.clone(),
                ),
            ),
            (
                "correlation_id absent",
                false,
                with(|f, v| f.correlation_id = Some(v), |i| format!("corr-{i}x")),
            ),
            (
                "user_id present",
                true,
                with(|f, v| f.user_id = Some(v), |i| event(i).user_id.clone()),
            ),
            (
                "user_id absent",
                false,
                with(
                    |f, v| f.user_id = Some(v),
                    |i| format!("user-{}x@example.com", i % 97),
                ),
            ),
        ];
        for (name, present, make) in &cases {
            lookups(name, reader, &log, &record, n, cold_cache, |i| {
                (make(i), *present)
            })
            .await;
        }
    }

    println!("-- time-range scans (warm cache), no limit, oldest first");
    for (name, from, to) in [
        ("whole segment", 0, 0),
        (
            "10 % window",
            events[(leaves / 2) as usize].logged_at,
            events[(leaves / 2 + leaves / 10) as usize].logged_at,
        ),
    ] {
        let filter = EventFilter {
            from_time: from,
            to_time: to,
            ..EventFilter::default()
        };
        let mut best = f64::MAX;
        let mut rows = 0;
        for _ in 0..3 {
            let started = Instant::now();
            let found = reader
                .find_in_segment(&log, &record, &filter, Order::OldestFirst, None, usize::MAX)
                .await
                .expect("scan");
            best = best.min(started.elapsed().as_secs_f64());
            rows = found.len();
        }
        println!(
            "{name:<40} {rows} rows in {:.3} s = {:.0} rows/s (best of 3)",
            best,
            rows as f64 / best
        );
    }
    ledger.close().expect("close");
}
