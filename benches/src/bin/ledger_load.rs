//! Ledger-level load test (no gRPC): durable append throughput and latency with N concurrent
//! appenders, against raw RocksDB synced `WriteBatch`es of the same event bytes in the same
//! run (the ceiling), plus the inclusion-proof generation rate.
//!
//! `cargo run --release -p auditledger-benches --bin ledger_load -- --appenders 1,8,64`

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Barrier, RwLock};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use auditledger_benches::{Percentiles, machine, ms};
use auditledger_ledger::keys::Keyring;
use auditledger_ledger::store::rocks::{RocksOptions, RocksStore};
use auditledger_ledger::{Ledger, LedgerOptions};
use auditledger_tests::{Rng, test_signer, tool_call};
use clap::Parser;
use prost::Message as _;

#[derive(Parser)]
struct Args {
    /// Concurrent appenders to test, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,8,64")]
    appenders: Vec<usize>,
    /// Events per append request.
    #[arg(long, default_value_t = 100)]
    batch: usize,
    /// Seconds per measurement.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Seconds of the proof-generation measurement.
    #[arg(long, default_value_t = 5)]
    proof_seconds: u64,
    /// Threads generating proofs.
    #[arg(long, default_value_t = 2)]
    proof_threads: usize,
    /// Skip the raw RocksDB ceiling (for profiling the ledger alone).
    #[arg(long)]
    skip_raw: bool,
    /// Only the raw RocksDB ceiling (e.g. beside a gRPC run, for its ratio), no ledger runs.
    #[arg(long, conflicts_with = "skip_raw")]
    raw_only: bool,
    /// Where to put the databases (default: a temp dir on the same disk as /tmp).
    #[arg(long)]
    dir: Option<std::path::PathBuf>,
    /// Event ids as before 2026-12-07: one fixed timestamp, so ids sort by appender, then by
    /// request. Every new id then falls inside every recent table file's key range and the
    /// duplicate check probes each one's filter. By default ids are UUIDv7 as DESIGN §3a has
    /// gateways send them: the request's time first (then appender and a counter in the
    /// random bits), so new ids sort after the stored ones.
    #[arg(long)]
    fixed_time_ids: bool,
}

struct Run {
    events: u64,
    elapsed: Duration,
    latencies: Vec<Duration>,
}

impl Run {
    fn rate(&self) -> f64 {
        self.events as f64 / self.elapsed.as_secs_f64()
    }
}

/// Runs `appenders` threads calling `op(thread, request_no)` until `seconds` pass; each call
/// appends `batch` events. Returns events/s and per-request latencies.
fn drive(
    appenders: usize,
    batch: usize,
    seconds: u64,
    op: Arc<dyn Fn(usize, u64) + Send + Sync>,
) -> Run {
    let barrier = Arc::new(Barrier::new(appenders + 1));
    let stop_at = Arc::new(RwLock::new(None::<Instant>));
    let done = Arc::new(AtomicU64::new(0));
    let threads: Vec<_> = (0..appenders)
        .map(|t| {
            let (barrier, stop_at, done, op) =
                (barrier.clone(), stop_at.clone(), done.clone(), op.clone());
            std::thread::spawn(move || {
                barrier.wait();
                let deadline = stop_at.read().unwrap().expect("set before the barrier");
                let mut lat = Vec::new();
                let mut n = 0u64;
                while Instant::now() < deadline {
                    let started = Instant::now();
                    op(t, n);
                    lat.push(started.elapsed());
                    n += 1;
                }
                done.fetch_add(n * batch as u64, Ordering::Relaxed);
                lat
            })
        })
        .collect();
    let started = Instant::now();
    *stop_at.write().unwrap() = Some(started + Duration::from_secs(seconds));
    barrier.wait();
    let mut latencies = Vec::new();
    for t in threads {
        latencies.extend(t.join().expect("appender thread"));
    }
    Run {
        events: done.load(Ordering::Relaxed),
        elapsed: started.elapsed(),
        latencies,
    }
}

/// Pre-encoded events per appender, reused round-robin (encoding cost stays in the ledger run:
/// the ledger re-validates and re-encodes every event it receives).
fn events_for(thread: usize, count: usize) -> Vec<auditledger_ledger::event::AuditEvent> {
    (0..count as u64)
        .map(|n| tool_call(thread as u32, n, "bench", "prod"))
        .collect()
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let base = match &args.dir {
        Some(d) => tempfile::tempdir_in(d)?,
        None => tempfile::tempdir()?,
    };
    let sample = tool_call(0, 12345, "bench", "prod");
    let event_bytes = sample.encoded_len();
    println!("machine: {}", machine());
    println!(
        "event size: {event_bytes} bytes encoded; {} events per request; {} s per run",
        args.batch, args.seconds
    );
    println!();
    println!(
        "| appenders | raw RocksDB events/s | ledger events/s | ratio | ledger p50 ms | p95 ms | p99 ms | max ms |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|");
    let mut last_ledger = None;
    for &appenders in &args.appenders {
        // Ceiling: the same encoded event bytes as values under sequential keys, one synced
        // WriteBatch per request, from the same number of threads (RocksDB groups them).
        let raw_dir = base.path().join(format!("raw-{appenders}"));
        let db = Arc::new(rocksdb::DB::open_default(&raw_dir).context("raw rocksdb")?);
        let payloads: Arc<Vec<Vec<Vec<u8>>>> = Arc::new(
            (0..appenders)
                .map(|t| {
                    events_for(t, args.batch)
                        .iter()
                        .map(|e| e.encode_to_vec())
                        .collect()
                })
                .collect(),
        );
        let raw_db = db.clone();
        let raw = if args.skip_raw {
            Run {
                events: 0,
                elapsed: Duration::from_secs(1),
                latencies: Vec::new(),
            }
        } else {
            drive(
                appenders,
                args.batch,
                args.seconds,
                Arc::new(move |t, n| {
                    let mut wb = rocksdb::WriteBatch::default();
                    for (i, p) in payloads[t].iter().enumerate() {
                        let key = (((t as u64) << 48) | (n * 1_000_000 + i as u64)).to_be_bytes();
                        wb.put(key, p);
                    }
                    let mut wo = rocksdb::WriteOptions::default();
                    wo.set_sync(true);
                    raw_db.write_opt(wb, &wo).expect("raw write");
                }),
            )
        };
        drop(db);
        if args.raw_only {
            println!(
                "| {appenders} | {:.0} | – | – | – | – | – | – |",
                raw.rate()
            );
            continue;
        }

        let dir = base.path().join(format!("ledger-{appenders}"));
        let store = Arc::new(RocksStore::open(&dir, &RocksOptions::default())?);
        let mut ring = Keyring::default();
        ring.add_existing(test_signer(), None, 0);
        let ledger = Arc::new(Ledger::open(
            store,
            Arc::new(RwLock::new(ring)),
            LedgerOptions::default(),
        )?);
        let templates: Arc<Vec<std::sync::Mutex<Vec<_>>>> = Arc::new(
            (0..appenders)
                .map(|t| std::sync::Mutex::new(events_for(t, args.batch)))
                .collect(),
        );
        let l = ledger.clone();
        let fixed_time_ids = args.fixed_time_ids;
        let mut run = drive(
            appenders,
            args.batch,
            args.seconds,
            Arc::new(move |t, n| {
                // Fresh event ids per request so nothing is deduplicated, rewritten in place:
                // the harness must not add allocation work the raw run does not have.
                let mut batch = templates[t].lock().expect("per-thread batch");
                // UUIDv7's 48-bit Unix time in milliseconds (RFC 9562 §5.7).
                let millis: u64 = if fixed_time_ids {
                    0x0193_6f0e_7a2b
                } else {
                    std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.as_millis() as u64)
                };
                for (i, e) in batch.iter_mut().enumerate() {
                    let seq = n * 1_000_000 + i as u64;
                    e.event_id.clear();
                    let _ = write!(
                        e.event_id,
                        "{:08x}-{:04x}-7{:03x}-8{:03x}-{:012x}",
                        millis >> 16,
                        millis & 0xffff,
                        t & 0xfff,
                        (seq >> 48) & 0xfff,
                        seq & 0xffff_ffff_ffff
                    );
                }
                l.append_blocking("bench", &batch).expect("append");
            }),
        );
        let p = Percentiles::of(&mut run.latencies).context("no samples")?;
        println!(
            "| {appenders} | {:.0} | {:.0} | {:.2} | {} | {} | {} | {} |",
            raw.rate(),
            run.rate(),
            run.rate() / raw.rate(),
            ms(p.p50),
            ms(p.p95),
            ms(p.p99),
            ms(p.max)
        );
        let m = ledger.metrics();
        let (_, writes, write_us) = m.write_latency.snapshot();
        eprintln!(
            "  ledger: {} commits (WAL syncs), {:.1} requests/commit, mean WAL sync {:.2} ms",
            m.commits.load(Ordering::Relaxed),
            m.requests.load(Ordering::Relaxed) as f64
                / m.commits.load(Ordering::Relaxed).max(1) as f64,
            write_us as f64 / writes.max(1) as f64 / 1000.0
        );
        if let Some(prev) = last_ledger.replace(ledger) {
            drop(prev);
        }
    }

    if args.raw_only {
        return Ok(());
    }
    // Proof generation against the last (largest) ledger.
    let ledger = last_ledger.context("no ledger run")?;
    ledger.checkpoint_now()?;
    let log = ledger.log("bench", "prod").context("bench log")?;
    let size = log.tree_size();
    let proofs = AtomicU64::new(0);
    let deadline = Instant::now() + Duration::from_secs(args.proof_seconds);
    std::thread::scope(|s| {
        for t in 0..args.proof_threads {
            let (log, proofs) = (&log, &proofs);
            s.spawn(move || {
                let mut rng = Rng::new(t as u64 + 7);
                let mut n = 0;
                while Instant::now() < deadline {
                    for _ in 0..100 {
                        let leaf = rng.range(0, size);
                        log.inclusion_proof(leaf, size).expect("proof");
                    }
                    n += 100;
                }
                proofs.fetch_add(n, Ordering::Relaxed);
            });
        }
    });
    println!();
    println!(
        "inclusion proofs: {:.0}/s with {} threads (random leaves of a {size}-leaf log, RocksDB tiles)",
        proofs.load(Ordering::Relaxed) as f64 / args.proof_seconds as f64,
        args.proof_threads
    );
    Ok(())
}
