//! Segment file size against raw leaf bytes and against the DESIGN §8 compression floor
//! (zstd level 19 over the concatenated leaves plus their 32-byte leaf hashes), for realistic
//! ~550-byte events with random ids and content hashes. Also times writing and verifying.
//!
//! `segment_size [--bits 8,12,16] [--leaf-zstd-level N] [--column-zstd-level N] [--columns]
//! [--reads N]`

use std::time::Instant;

use anyhow::{Context as _, Result};
use auditledger_archiver::segment::{SegmentId, SegmentReader, WriteOptions, write_segment};
use auditledger_ledger::merkle::leaf_hash;
use bytes::Bytes;
use clap::Parser;
use parquet::file::reader::{FileReader as _, SerializedFileReader};

// The archiver's tests and this benchmark measure the same events.
#[path = "../../../archiver/tests/common/events.rs"]
mod events;

#[derive(Parser, Debug)]
#[command(about = "Parquet segment size vs raw leaf bytes and the zstd-19 floor")]
struct Args {
    /// Segment sizes, as log2 of the leaf count.
    #[arg(long, value_delimiter = ',', default_value = "8,12,16")]
    bits: Vec<u8>,
    /// zstd level of the `leaf` column (default: the archiver's default).
    #[arg(long)]
    leaf_zstd_level: Option<i32>,
    /// zstd level of the other columns.
    #[arg(long)]
    column_zstd_level: Option<i32>,
    /// Rows per row group.
    #[arg(long)]
    row_group_rows: Option<usize>,
    /// Uncompressed data page size, KiB.
    #[arg(long)]
    page_kib: Option<usize>,
    /// False-positive rate of the bloom filters.
    #[arg(long)]
    bloom_fpp: Option<f64>,
    /// Print compressed bytes per leaf of every column.
    #[arg(long)]
    columns: bool,
    /// Random single-leaf reads to time per segment (from memory).
    #[arg(long, default_value_t = 0)]
    reads: usize,
    /// Seed of the event generator.
    #[arg(long, default_value_t = 7)]
    seed: u64,
}

const ORIGIN: &str = "auditledger.local/acme/prod";

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let args = Args::parse();
    let defaults = WriteOptions::default();
    let options = WriteOptions {
        leaf_zstd_level: args.leaf_zstd_level,
        column_zstd_level: args.column_zstd_level,
        row_group_rows: args.row_group_rows.unwrap_or(defaults.row_group_rows),
        data_page_bytes: args
            .page_kib
            .map_or(defaults.data_page_bytes, |kib| kib * 1024),
        bloom_fpp: args.bloom_fpp.unwrap_or(defaults.bloom_fpp),
    };
    println!("options: {options:?}");
    println!();
    println!(
        "| leaves | zstd levels (leaf, other) | avg leaf B | raw leaf bytes | floor (zstd-19) | floor / raw | Parquet | Parquet / raw | Parquet / floor | write leaves/s | verify leaves/s |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let mut breakdowns = Vec::new();
    let mut reads = Vec::new();
    for &bits in &args.bits {
        let count = 1u64 << bits;
        let leaves = events::realistic_leaves(args.seed, 0, count);
        let raw: usize = leaves.iter().map(Vec::len).sum();

        let mut concatenated = Vec::with_capacity(raw + 32 * leaves.len());
        for leaf in &leaves {
            concatenated.extend_from_slice(leaf);
            concatenated.extend_from_slice(&leaf_hash(leaf));
        }
        let (leaf_level, column_level) = options.levels_for(count);
        let floor = zstd::bulk::compress(&concatenated, 19)
            .context("zstd")?
            .len();

        let id = SegmentId::new(ORIGIN, 0, bits)?;
        let started = Instant::now();
        let (file, summary) = write_segment(id.clone(), &leaves, &options)?;
        let write_secs = started.elapsed().as_secs_f64();
        let size = file.len();
        let file = Bytes::from(file);

        let started = Instant::now();
        let reader = SegmentReader::from_bytes(file.clone(), &id).await?;
        reader.verify(&summary.root).await?;
        let verify_secs = started.elapsed().as_secs_f64();

        println!(
            "| 2^{bits} | {leaf_level}, {column_level} | {:.0} | {raw} | {floor} | {:.1} % | {size} | {:.1} % | {:.3} | {:.0} | {:.0} |",
            raw as f64 / count as f64,
            100.0 * floor as f64 / raw as f64,
            100.0 * size as f64 / raw as f64,
            size as f64 / floor as f64,
            count as f64 / write_secs,
            count as f64 / verify_secs,
        );

        if args.reads > 0 {
            let mut rng = auditledger_tests::Rng::new(args.seed);
            let mut latencies = Vec::with_capacity(args.reads);
            for _ in 0..args.reads {
                let leaf_index = rng.range(0, count);
                let started = Instant::now();
                reader.leaf(leaf_index).await?;
                latencies.push(started.elapsed().as_secs_f64() * 1e3);
            }
            latencies.sort_by(f64::total_cmp);
            let started = Instant::now();
            reader.tree().await?;
            reads.push((
                bits,
                latencies[latencies.len() / 2],
                latencies[latencies.len() * 99 / 100],
                started.elapsed().as_secs_f64() * 1e3,
            ));
        }

        if args.columns {
            let parquet = SerializedFileReader::new(file)?;
            let metadata = parquet.metadata();
            let mut per_column: Vec<(String, i64)> = Vec::new();
            for group in metadata.row_groups() {
                for (i, chunk) in group.columns().iter().enumerate() {
                    if per_column.len() <= i {
                        per_column.push((chunk.column_path().string(), 0));
                    }
                    per_column[i].1 += chunk.compressed_size();
                }
            }
            let data: i64 = per_column.iter().map(|(_, bytes)| bytes).sum();
            let (mut blooms, mut column_index, mut offset_index) = (0i64, 0i64, 0i64);
            for group in metadata.row_groups() {
                for chunk in group.columns() {
                    blooms += i64::from(chunk.bloom_filter_length().unwrap_or(0));
                    column_index += i64::from(chunk.column_index_length().unwrap_or(0));
                    offset_index += i64::from(chunk.offset_index_length().unwrap_or(0));
                }
            }
            let footer = size as i64 - data - blooms - column_index - offset_index;
            per_column.push(("(bloom filters)".into(), blooms));
            per_column.push(("(column indexes)".into(), column_index));
            per_column.push(("(offset indexes)".into(), offset_index));
            per_column.push(("(footer)".into(), footer));
            breakdowns.push((bits, count, per_column));
        }
    }
    if !reads.is_empty() {
        println!();
        println!(
            "| leaves | leaf read p50 ms | leaf read p99 ms | whole subtree (leaf hashes + nodes) ms |"
        );
        println!("|---:|---:|---:|---:|");
        for (bits, p50, p99, tree) in reads {
            println!("| 2^{bits} | {p50:.2} | {p99:.2} | {tree:.1} |");
        }
    }
    for (bits, count, per_column) in breakdowns {
        println!();
        println!("2^{bits} leaves, compressed bytes per leaf:");
        for (name, bytes) in per_column {
            println!("  {name:<28} {:>8.2}", bytes as f64 / count as f64);
        }
    }
    Ok(())
}
