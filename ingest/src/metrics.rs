//! Prometheus metrics: the ledger's write-path counters plus the server's own (ack latency,
//! rejects per tenant and reason, gateway sequence anomalies), served as text at `/metrics` by
//! a minimal HTTP/1.1 responder (one GET endpoint does not justify a web framework).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use auditledger_archiver::Archiver;
use auditledger_ledger::Ledger;
use auditledger_ledger::metrics::{Histogram, LATENCY_BUCKETS_US};
use auditledger_ledger::store::rocks::RocksStore;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpListener;

/// Server-side metrics.
#[derive(Default)]
pub struct ServerMetrics {
    /// Time from receiving an append request to sending its response.
    pub ack_latency: Histogram,
    /// Requests refused, by (tenant, reason).
    rejects: Mutex<BTreeMap<(String, &'static str), u64>>,
    /// Gateway sequence anomalies, by (tenant, gateway, kind).
    seq_anomalies: Mutex<BTreeMap<(String, String, &'static str), u64>>,
    /// Events in append requests, by tenant.
    appended: Mutex<BTreeMap<String, u64>>,
    /// Connection limits, idle streams and aggregated denials (`crate::hardening`).
    pub hardening: Arc<crate::hardening::HardeningCounters>,
}

impl ServerMetrics {
    pub fn reject(&self, tenant: &str, reason: &'static str) {
        *self
            .rejects
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry((tenant.to_owned(), reason))
            .or_default() += 1;
    }

    pub fn seq_anomaly(&self, tenant: &str, gateway: &str, kind: &'static str) {
        *self
            .seq_anomalies
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry((tenant.to_owned(), gateway.to_owned(), kind))
            .or_default() += 1;
    }

    pub fn appended(&self, tenant: &str, events: u64) {
        *self
            .appended
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(tenant.to_owned())
            .or_default() += events;
    }

    pub fn rejects_of(&self, tenant: &str, reason: &str) -> u64 {
        self.rejects
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|((t, r), _)| t == tenant && *r == reason)
            .map(|(_, n)| *n)
            .sum()
    }
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn histogram(out: &mut String, name: &str, help: &str, h: &Histogram) {
    let (buckets, count, sum_us) = h.snapshot();
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
    let mut cumulative = 0;
    for (i, bound) in LATENCY_BUCKETS_US.iter().enumerate() {
        cumulative += buckets[i];
        let _ = writeln!(
            out,
            "{name}_bucket{{le=\"{}\"}} {cumulative}",
            *bound as f64 / 1e6
        );
    }
    let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
    let _ = writeln!(out, "{name}_sum {}", sum_us as f64 / 1e6);
    let _ = writeln!(out, "{name}_count {count}");
}

fn counter(out: &mut String, name: &str, help: &str, value: u64) {
    let _ = writeln!(
        out,
        "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}"
    );
}

/// The Prometheus text exposition of everything.
pub fn render(ledger: &Ledger, server: &ServerMetrics) -> String {
    let m = ledger.metrics();
    let mut out = String::new();
    counter(
        &mut out,
        "auditledger_commits_total",
        "Group commits (one synced write each).",
        m.commits.load(Ordering::Relaxed),
    );
    counter(
        &mut out,
        "auditledger_commit_failures_total",
        "Group commits that failed; nothing in them was acknowledged.",
        m.commit_failures.load(Ordering::Relaxed),
    );
    counter(
        &mut out,
        "auditledger_append_requests_total",
        "Append requests committed.",
        m.requests.load(Ordering::Relaxed),
    );
    counter(
        &mut out,
        "auditledger_append_events_total",
        "Events in committed append requests.",
        m.events.load(Ordering::Relaxed),
    );
    counter(
        &mut out,
        "auditledger_bytes_written_total",
        "Key and value bytes written by group commits.",
        m.bytes_written.load(Ordering::Relaxed),
    );
    counter(
        &mut out,
        "auditledger_checkpoints_total",
        "Checkpoints signed and stored.",
        m.checkpoints.load(Ordering::Relaxed),
    );
    counter(
        &mut out,
        "auditledger_checkpoint_failures_total",
        "Checkpoint passes that failed.",
        m.checkpoint_failures.load(Ordering::Relaxed),
    );
    counter(
        &mut out,
        "auditledger_index_batches_written_total",
        "Leaf-hash and search-index batches written through the memtables (low ingest rates).",
        m.index_writes.load(Ordering::Relaxed),
    );
    counter(
        &mut out,
        "auditledger_index_runs_ingested_total",
        "Leaf-hash and search-index runs gathered at high ingest rates and ingested as table files (through the memtables while those still hold entries).",
        m.index_ingests.load(Ordering::Relaxed),
    );
    counter(
        &mut out,
        "auditledger_index_ingests_written_total",
        "Ingests of those runs (two per run: leaf hashes, search index) written through the memtables because these still held entries; the rest became table files.",
        m.index_ingests_written.load(Ordering::Relaxed),
    );
    counter(
        &mut out,
        "auditledger_slow_commits_total",
        "Group commits that took over 250 ms from built to durable; each is logged as a warning with the time of each stage (waiting for the writer, write, waiting for the sync, sync).",
        m.slow_commits.load(Ordering::Relaxed),
    );
    histogram(
        &mut out,
        "auditledger_fsync_seconds",
        "Duration of each group-commit WAL sync.",
        &m.write_latency,
    );
    histogram(
        &mut out,
        "auditledger_ack_latency_seconds",
        "Append request received to response sent.",
        &server.ack_latency,
    );
    histogram(
        &mut out,
        "auditledger_checkpoint_lag_seconds",
        "Log growth to the checkpoint covering it.",
        &m.checkpoint_lag,
    );
    let commits = m.commits.load(Ordering::Relaxed).max(1);
    let _ = writeln!(
        out,
        "# HELP auditledger_batch_events_mean Mean events per group commit.\n# TYPE auditledger_batch_events_mean gauge\nauditledger_batch_events_mean {}",
        m.events.load(Ordering::Relaxed) as f64 / commits as f64
    );
    let _ = writeln!(
        out,
        "# HELP auditledger_tenant_events_total Events received per tenant.\n# TYPE auditledger_tenant_events_total counter"
    );
    for (tenant, n) in server
        .appended
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
    {
        let _ = writeln!(
            out,
            "auditledger_tenant_events_total{{tenant=\"{}\"}} {n}",
            escape(tenant)
        );
    }
    let _ = writeln!(
        out,
        "# HELP auditledger_rejects_total Requests refused, by tenant and reason.\n# TYPE auditledger_rejects_total counter"
    );
    for ((tenant, reason), n) in server
        .rejects
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
    {
        let _ = writeln!(
            out,
            "auditledger_rejects_total{{tenant=\"{}\",reason=\"{reason}\"}} {n}",
            escape(tenant)
        );
    }
    let _ = writeln!(
        out,
        "# HELP auditledger_gateway_seq_anomalies_total Gaps and regressions in gateway_seq.\n# TYPE auditledger_gateway_seq_anomalies_total counter"
    );
    for ((tenant, gateway, kind), n) in server
        .seq_anomalies
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
    {
        let _ = writeln!(
            out,
            "auditledger_gateway_seq_anomalies_total{{tenant=\"{}\",gateway=\"{}\",kind=\"{kind}\"}} {n}",
            escape(tenant),
            escape(gateway)
        );
    }
    render_hardening(&mut out, &server.hardening);
    let _ = writeln!(
        out,
        "# HELP auditledger_log_tree_size Leaves per log.\n# TYPE auditledger_log_tree_size gauge"
    );
    for log in ledger.logs() {
        let _ = writeln!(
            out,
            "auditledger_log_tree_size{{origin=\"{}\"}} {}",
            escape(log.origin()),
            log.tree_size()
        );
    }
    out
}

fn render_hardening(out: &mut String, h: &crate::hardening::HardeningCounters) {
    let get = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
    gauge(
        out,
        "auditledger_connections_open",
        "Client connections open now.",
        get(&h.open),
    );
    for (name, help, value) in [
        (
            "auditledger_connections_refused_total",
            "Connections closed at accept: server.max_connections were open.",
            get(&h.refused),
        ),
        (
            "auditledger_connections_silent_closed_total",
            "Connections closed after sending nothing within server.handshake_timeout.",
            get(&h.silent_closed),
        ),
        (
            "auditledger_streams_idle_closed_total",
            "AppendStreams closed after server.stream_idle_timeout without a request.",
            get(&h.idle_streams_closed),
        ),
        (
            "auditledger_denials_recorded_total",
            "Denials recorded in the system log one by one.",
            get(&h.denials_recorded),
        ),
        (
            "auditledger_denials_aggregated_total",
            "Repeated identical denials recorded as counts in per-window summaries.",
            get(&h.denials_aggregated),
        ),
    ] {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}"
        );
    }
}

fn gauge(out: &mut String, name: &str, help: &str, value: u64) {
    let _ = writeln!(
        out,
        "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
    );
}

/// The archiver's counters: work done per tier, failures, lag.
pub fn render_archiver(out: &mut String, archiver: &Archiver) {
    let m = archiver.metrics().snapshot();
    let _ = writeln!(
        out,
        "# HELP auditledger_archiver_segments_moved_total Segments moved, by destination tier.\n# TYPE auditledger_archiver_segments_moved_total counter"
    );
    let _ = writeln!(
        out,
        "auditledger_archiver_segments_moved_total{{tier=\"warm\"}} {}\nauditledger_archiver_segments_moved_total{{tier=\"cold\"}} {}",
        m.segments_to_warm, m.segments_to_cold
    );
    let _ = writeln!(
        out,
        "# HELP auditledger_archiver_bytes_moved_total Segment object bytes written, by destination tier.\n# TYPE auditledger_archiver_bytes_moved_total counter"
    );
    let _ = writeln!(
        out,
        "auditledger_archiver_bytes_moved_total{{tier=\"warm\"}} {}\nauditledger_archiver_bytes_moved_total{{tier=\"cold\"}} {}",
        m.bytes_to_warm, m.bytes_to_cold
    );
    counter(
        out,
        "auditledger_archiver_leaves_expired_total",
        "Leaves whose content retention dropped (hashes kept).",
        m.leaves_expired,
    );
    counter(
        out,
        "auditledger_archiver_leaves_held_total",
        "Leaves past retention kept by a legal hold (per pass that found them).",
        m.leaves_held,
    );
    counter(
        out,
        "auditledger_archiver_failures_total",
        "Archiver steps that failed (retried on the next pass).",
        m.failures,
    );
    counter(
        out,
        "auditledger_archiver_passes_total",
        "Archiver passes run.",
        m.passes,
    );
    gauge(
        out,
        "auditledger_archiver_last_pass_microseconds",
        "Duration of the last archiver pass.",
        m.last_pass_micros,
    );
    gauge(
        out,
        "auditledger_archiver_pending_segments",
        "Segments due to move or expire that the last pass left (lag).",
        m.pending_segments,
    );
    gauge(
        out,
        "auditledger_archiver_lag_seconds",
        "Age of the oldest leaf due to leave the hot tier but still there after the last pass.",
        m.lag_nanos / 1_000_000_000,
    );
}

/// Memory: the process's resident set and what RocksDB accounts for inside it. Their
/// difference is everything else (network buffers, in-flight requests, allocator overhead);
/// the soak watches that it stays flat (docs/reliability.md, "Soak").
pub fn render_memory(out: &mut String, store: Option<&RocksStore>) {
    if let Some(rss) = resident_bytes() {
        gauge(
            out,
            "process_resident_memory_bytes",
            "Resident memory of the server process.",
            rss,
        );
    }
    if let Some((in_use, free)) = heap() {
        gauge(
            out,
            "auditledger_heap_in_use_bytes",
            "Bytes the allocator has handed out (Rust and RocksDB alike; glibc mallinfo2).",
            in_use,
        );
        gauge(
            out,
            "auditledger_heap_free_retained_bytes",
            "Freed bytes the allocator keeps for reuse instead of returning them to the OS.",
            free,
        );
    }
    let Some(store) = store else { return };
    let m = store.memory();
    gauge(
        out,
        "auditledger_rocksdb_memtable_bytes",
        "RocksDB memtables, all column families (charged to the block cache).",
        m.memtables,
    );
    gauge(
        out,
        "auditledger_rocksdb_block_cache_bytes",
        "RocksDB block cache usage, including the memtables' reservations (bounded by ledger.block_cache_bytes).",
        m.block_cache,
    );
    gauge(
        out,
        "auditledger_rocksdb_block_cache_pinned_bytes",
        "Part of the block cache pinned by readers or pinned index/filter blocks.",
        m.block_cache_pinned,
    );
    gauge(
        out,
        "auditledger_rocksdb_table_readers_bytes",
        "RocksDB table-reader memory outside the block cache (open SST files).",
        m.table_readers,
    );
}

/// (in use, free but retained) bytes of the glibc heap: whether resident memory that grows is
/// allocated (a leak, or a cache) or only held by the allocator after being freed.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn heap() -> Option<(u64, u64)> {
    // SAFETY: mallinfo2 only reads the allocator's statistics; it has no preconditions.
    let info = unsafe { libc::mallinfo2() };
    Some(((info.uordblks + info.hblkhd) as u64, info.fordblks as u64))
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn heap() -> Option<(u64, u64)> {
    None
}

/// Resident set size from `/proc/self/status` (Linux; `None` elsewhere).
fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .strip_suffix("kB")?
        .trim()
        .parse()
        .ok()?;
    Some(kib << 10)
}

/// Serves `GET /metrics` until the task is dropped.
pub async fn serve(
    listener: TcpListener,
    ledger: Arc<Ledger>,
    server: Arc<ServerMetrics>,
    archiver: Option<Arc<Archiver>>,
    store: Option<Arc<RocksStore>>,
) {
    loop {
        let Ok((mut socket, _)) = listener.accept().await else {
            continue;
        };
        let (ledger, server, archiver, store) = (
            ledger.clone(),
            server.clone(),
            archiver.clone(),
            store.clone(),
        );
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            let mut len = 0;
            // Read the request head (bounded, with a timeout against slow clients).
            let read = tokio::time::timeout(std::time::Duration::from_secs(5), async {
                while len < buf.len() {
                    match socket.read(&mut buf[len..]).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => len += n,
                    }
                    if buf[..len].windows(4).any(|w| w == b"\r\n\r\n") {
                        break;
                    }
                }
            })
            .await;
            if read.is_err() {
                return;
            }
            let head = String::from_utf8_lossy(&buf[..len]);
            let response = if head.starts_with("GET /metrics ") || head.starts_with("GET /metrics?")
            {
                let mut body = render(&ledger, &server);
                if let Some(a) = &archiver {
                    render_archiver(&mut body, a);
                }
                render_memory(&mut body, store.as_deref());
                format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: text/plain; version=0.0.4\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                )
            } else {
                "HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                    .to_string()
            };
            let _ = socket.write_all(response.as_bytes()).await;
            let _ = socket.shutdown().await;
        });
    }
}
