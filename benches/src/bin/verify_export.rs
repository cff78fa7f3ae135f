//! Offline export verification rate (issue #6 target: ≥ 1M leaves/s per core): writes a signed
//! export of realistic ~550-byte leaves with the ledger's own export writer, then times
//! `auditledger_verifier::export::verify_export` on it from disk with 1, 2, … worker threads.
//!
//! `verify_export [--leaves 1048576] [--threads 1,2] [--dir DIR]`

use std::io::{BufReader, BufWriter};
use std::time::Instant;

use anyhow::Context as _;
use auditledger_archiver::export::{ExportDescription, ExportWriter};
use auditledger_benches::machine;
use auditledger_ledger::checkpoint::Checkpoint;
use auditledger_ledger::merkle::{self, MemoryTree};
use auditledger_ledger::note::SignerKey;
use auditledger_verifier::export::{ExportOptions, verify_export};
use clap::Parser;

// The same realistic leaves as the segment tests and the size benchmark.
#[path = "../../../archiver/tests/common/events.rs"]
mod events;

#[derive(Parser)]
#[command(about = "Export verification rate")]
struct Args {
    /// Leaves in the export.
    #[arg(long, default_value_t = 1 << 20)]
    leaves: u64,
    /// Worker thread counts to time.
    #[arg(long, value_delimiter = ',', default_value = "1,2")]
    threads: Vec<usize>,
    /// Directory for the export file (default: the system temp dir).
    #[arg(long)]
    dir: Option<std::path::PathBuf>,
    /// Repetitions per thread count (the best is reported, all are printed).
    #[arg(long, default_value_t = 3)]
    runs: usize,
}

const SEED: u64 = 7;
const CHUNK: u64 = 1 << 16;

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // The export covers [start, start + leaves) of a slightly larger log, so the range proof
    // has hashes on both sides.
    let start = 1000;
    let end = start + args.leaves;
    let size = end + 777;
    println!("machine: {}", machine());

    let started = Instant::now();
    let mut tree = MemoryTree::new();
    let mut at = 0;
    while at < size {
        let count = CHUNK.min(size - at);
        for leaf in events::realistic_leaves(SEED, at, count) {
            tree.append(merkle::leaf_hash(&leaf));
        }
        at += count;
    }
    let signer = SignerKey::generate("bench.local")?;
    let note = Checkpoint {
        origin: "bench.local/acme/prod".into(),
        tree_size: size,
        root_hash: merkle::root(&tree, size)?,
        time: Some(1_795_000_000),
        prev: None,
        other_extensions: Vec::new(),
    }
    .sign(std::slice::from_ref(&signer))?;
    let proof = merkle::range_proof(&tree, start, end, size)?;
    drop(tree);

    let dir = match &args.dir {
        Some(d) => tempfile::tempdir_in(d)?,
        None => tempfile::tempdir()?,
    };
    let path = dir.path().join("export.tar");
    let file = std::fs::File::create(&path).context("creating the export file")?;
    let mut writer = ExportWriter::new(
        BufWriter::with_capacity(1 << 20, file),
        ExportDescription {
            origin: "bench.local/acme/prod".into(),
            tree_size: size,
            from_time: 0,
            to_time: 0,
            requester: "bench".into(),
            justification: "benchmark".into(),
            exported_at: 1_795_000_100,
        },
        &note,
        &proof,
        start,
        end,
    )?;
    // Leaves are generated per chunk from the chunk's first index: same chunks as above.
    let mut raw = 0u64;
    let mut at = 0;
    while at < end {
        let count = CHUNK.min(size - at);
        for (k, leaf) in events::realistic_leaves(SEED, at, count).iter().enumerate() {
            let leaf_index = at + k as u64;
            if (start..end).contains(&leaf_index) {
                raw += leaf.len() as u64;
                writer.push_leaf(leaf)?;
            }
        }
        at += count;
    }
    writer.finish(std::slice::from_ref(&signer))?;
    let bytes = std::fs::metadata(&path)?.len();
    println!(
        "export: {} leaves ({:.0} B avg, {:.1} MiB raw) -> {:.1} MiB tar, written in {:.1} s",
        args.leaves,
        raw as f64 / args.leaves as f64,
        raw as f64 / (1 << 20) as f64,
        bytes as f64 / (1 << 20) as f64,
        started.elapsed().as_secs_f64()
    );
    println!();
    println!(
        "| worker threads | best leaves/s (wall) | leaves per CPU-second (all threads) | MiB/s of tar | runs: wall s / CPU s |"
    );
    println!("|---:|---:|---:|---:|---|");
    let keys = [signer.verifier()];
    for &threads in &args.threads {
        let mut times = Vec::new();
        let mut cpu_times = Vec::new();
        for _ in 0..args.runs.max(1) {
            let file = std::fs::File::open(&path)?;
            let cpu_before = cpu_seconds();
            let started = Instant::now();
            let report = verify_export(
                BufReader::with_capacity(1 << 20, file),
                &keys,
                &ExportOptions { threads },
                &|_| {},
            )?;
            times.push(started.elapsed().as_secs_f64());
            cpu_times.push(cpu_seconds() - cpu_before);
            anyhow::ensure!(
                report.leaves == args.leaves,
                "verified {} leaves",
                report.leaves
            );
        }
        let best = times.iter().copied().fold(f64::INFINITY, f64::min);
        let best_cpu = cpu_times.iter().copied().fold(f64::INFINITY, f64::min);
        let rate = args.leaves as f64 / best;
        println!(
            "| {threads} | {rate:.0} | {:.0} | {:.0} | {} |",
            args.leaves as f64 / best_cpu,
            bytes as f64 / (1 << 20) as f64 / best,
            times
                .iter()
                .zip(&cpu_times)
                .map(|(t, c)| format!("{t:.2} / {c:.2}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    Ok(())
}

/// CPU time (user + system) of this process so far: the per-core figure divides by this, so
/// the reading thread's work counts along with the workers'.
fn cpu_seconds() -> f64 {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage writes a `rusage` into the pointer it is given.
    let usage = unsafe {
        libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr());
        usage.assume_init()
    };
    let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    seconds(usage.ru_utime) + seconds(usage.ru_stime)
}
