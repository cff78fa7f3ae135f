//! Archiver benchmark (by hand; results in `docs/benchmarks.md`): appends realistic ~550-byte
//! events to a RocksDB ledger, then measures hot → warm and warm → cold throughput on the local
//! filesystem, archived leaf reads through the `TierReader` (cold and warm reader cache), and
//! the retention expiry rewrite; then archives hot → warm while 4 appenders ingest into
//! another log at full speed on the same cores.
//!
//! Usage: archiver_throughput [DIR] [SEGMENT_BITS] [SEGMENTS] [READS]
//! (defaults: a temporary directory under /work, 16, 4, 2000)

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use auditledger_archiver::{
    Archiver, ArchiverConfig, SegmentStore, StoreOptions, TierStores, allow_deletions,
};
use auditledger_ledger::event::AuditEvent;
use auditledger_ledger::keys::Keyring;
use auditledger_ledger::note::SignerKey;
use auditledger_ledger::segments::Tier;
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

/// `tool_call` with every id and content hash random, as gateways send them (as in the
/// segment size benchmark).
fn realistic(rng: &mut Rng, n: u64, tenant: &str) -> AuditEvent {
    let mut event = tool_call((n % 8) as u32, n, tenant, "prod");
    let r = random_hex(rng, 10);
    let millis = SystemClock.now_nanos() / 1_000_000;
    event.event_id = format!(
        "{:08x}-{:04x}-7{}-8{}-{}",
        millis >> 16,
        millis & 0xffff,
        &r[0..3],
        &r[3..6],
        &r[6..18]
    );
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

async fn read_bench(
    archiver: &Archiver,
    log: &Log,
    end: u64,
    reads: u64,
    cold_cache: bool,
) -> String {
    let mut rng = Rng::new(7);
    let mut latencies = Vec::with_capacity(reads as usize);
    for _ in 0..reads {
        let leaf_index = rng.range(0, end);
        if cold_cache {
            archiver.reader().clear_cache();
        }
        let started = Instant::now();
        let content = archiver.reader().leaf(log, leaf_index).await.expect("read");
        latencies.push(started.elapsed());
        assert!(content.bytes().is_some());
    }
    latencies.sort();
    format!(
        "p50 {:.2} ms, p95 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.95),
        percentile(&latencies, 0.99),
        percentile(&latencies, 1.0)
    )
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let temp = tempfile::tempdir_in(args.get(1).map_or("/work", String::as_str)).expect("tempdir");
    let dir = temp.path();
    let bits: u8 = args.get(2).map_or(16, |a| a.parse().expect("SEGMENT_BITS"));
    let segments: u64 = args.get(3).map_or(4, |a| a.parse().expect("SEGMENTS"));
    let reads: u64 = args.get(4).map_or(2000, |a| a.parse().expect("READS"));
    let leaves = segments << bits;

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
    let started = Instant::now();
    let mut leaf_bytes = 0u64;
    let mut n = 0;
    while n < leaves {
        let batch: Vec<AuditEvent> = (n..(n + 1000).min(leaves))
            .map(|i| realistic(&mut rng, i, "acme"))
            .collect();
        n += batch.len() as u64;
        ledger.append("gateway-1", &batch).await.expect("append");
    }
    let log = ledger.log("acme", "prod").expect("log");
    log.wait_for_index(log.tree_size()).await.expect("index");
    log.scan_leaves(0, leaves, &mut |_, leaf| {
        leaf_bytes += leaf.len() as u64;
        true
    })
    .expect("scan");
    println!(
        "appended {leaves} leaves ({:.0} B/leaf) in {:.1} s",
        leaf_bytes as f64 / leaves as f64,
        started.elapsed().as_secs_f64()
    );

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

    let started = Instant::now();
    let report = archiver.move_down(Tier::Warm, Duration::ZERO, now).await;
    let elapsed = started.elapsed().as_secs_f64();
    assert!(report.failures.is_empty(), "{:?}", report.failures);
    let bytes: u64 = report.moved.iter().map(|m| m.bytes).sum();
    println!(
        "hot -> warm: {} segments of 2^{bits}, {leaves} leaves in {elapsed:.2} s = {:.0} leaves/s ({:.1} MB/s of leaf bytes); objects {:.1}% of leaf bytes",
        report.moved.len(),
        leaves as f64 / elapsed,
        leaf_bytes as f64 / elapsed / 1e6,
        100.0 * bytes as f64 / leaf_bytes as f64
    );
    println!(
        "warm reads, cold reader cache:  {}",
        read_bench(&archiver, &log, leaves, reads / 4, true).await
    );
    println!(
        "warm reads, warm reader cache:  {}",
        read_bench(&archiver, &log, leaves, reads, false).await
    );

    let started = Instant::now();
    let report = archiver.move_down(Tier::Cold, Duration::ZERO, now).await;
    let elapsed = started.elapsed().as_secs_f64();
    assert!(report.failures.is_empty(), "{:?}", report.failures);
    println!(
        "warm -> cold: {} segments in {elapsed:.2} s = {:.0} leaves/s",
        report.moved.len(),
        leaves as f64 / elapsed
    );
    println!(
        "cold reads, cold reader cache:  {}",
        read_bench(&archiver, &log, leaves, reads / 4, true).await
    );
    println!(
        "cold reads, warm reader cache:  {}",
        read_bench(&archiver, &log, leaves, reads, false).await
    );

    let started = Instant::now();
    let report = archiver
        .pass(now + Duration::from_secs(10 * 365 * 24 * 3600).as_nanos() as u64)
        .await;
    let elapsed = started.elapsed().as_secs_f64();
    assert!(report.failures.is_empty(), "{:?}", report.failures);
    println!(
        "expiry rewrite: {} segments in {elapsed:.2} s = {:.0} leaves/s",
        report.expired.len(),
        leaves as f64 / elapsed
    );

    // Archiving while ingest runs flat out on the same two cores, into another log; first the
    // same ingest alone, for comparison.
    let appenders = 4;
    let per_appender = leaves / appenders;
    let spawn_ingest = |tenant: &'static str| -> Vec<tokio::task::JoinHandle<()>> {
        (0..appenders)
            .map(|a| {
                let ledger = ledger.clone();
                tokio::spawn(async move {
                    let mut rng = Rng::new(1000 + a);
                    let mut n = a * per_appender;
                    let end = n + per_appender;
                    while n < end {
                        let batch: Vec<AuditEvent> = (n..(n + 500).min(end))
                            .map(|i| realistic(&mut rng, i, tenant))
                            .collect();
                        n += batch.len() as u64;
                        ledger.append("gateway-2", &batch).await.expect("append");
                    }
                })
            })
            .collect()
    };
    let started = Instant::now();
    for task in spawn_ingest("initech") {
        task.await.expect("appender");
    }
    let alone = started.elapsed().as_secs_f64();
    println!(
        "ingest alone: {} events in {alone:.2} s = {:.0} events/s ({appenders} appenders, batches of 500)",
        appenders * per_appender,
        (appenders * per_appender) as f64 / alone
    );
    // Archive the comparison log first, so that the archiver below works on the new log only.
    let report = archiver
        .move_down(Tier::Warm, Duration::ZERO, SystemClock.now_nanos())
        .await;
    assert!(report.failures.is_empty(), "{:?}", report.failures);
    let started = Instant::now();
    let ingest = spawn_ingest("globex");
    let mut archived_during_ingest = 0u64;
    let mut ingest_seconds = None;
    let mut total = 0u64;
    let target = ((appenders * per_appender) >> bits) << bits;
    while total < target {
        let report = archiver
            .move_down(Tier::Warm, Duration::ZERO, SystemClock.now_nanos())
            .await;
        assert!(report.failures.is_empty(), "{:?}", report.failures);
        let moved = (report.moved.len() as u64) << bits;
        total += moved;
        if ingest_seconds.is_none() {
            archived_during_ingest += moved;
            if ingest.iter().all(|t| t.is_finished()) {
                ingest_seconds = Some(started.elapsed().as_secs_f64());
            }
        }
        if moved == 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    for task in ingest {
        task.await.expect("appender");
    }
    let ingest_seconds = ingest_seconds.unwrap_or_else(|| started.elapsed().as_secs_f64());
    let total_seconds = started.elapsed().as_secs_f64();
    println!(
        "concurrent: ingest {} events in {ingest_seconds:.2} s = {:.0} events/s with the archiver running; \
         archived {archived_during_ingest} leaves meanwhile; all {target} full-segment leaves warm after {total_seconds:.2} s \
         ({:.2} s after ingest ended)",
        appenders * per_appender,
        (appenders * per_appender) as f64 / ingest_seconds,
        total_seconds - ingest_seconds
    );
    ledger.close().expect("close");
}
