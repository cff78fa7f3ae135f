//! `hostile_load`: the legitimate tenant's view of the real `auditledger serve` under hostile
//! clients, and a soak (issue 8, items 5 and 6; figures in docs/reliability.md).
//!
//! Both modes start the server themselves (`auditledger init` in a temporary directory, two
//! gateway tokens, `serve` on 127.0.0.1 port 0) and stop it at the end. The legitimate load is
//! paced unary `Append` calls of realistic events by a few concurrent clients; the ack latency
//! of every call is recorded.
//!
//! - `compare`: legitimate load alone for `--seconds`, then the same load while attackers run
//!   (a flood of invalid tokens, slowloris bodies on many streams, idle connections, garbage
//!   connections); prints p50/p99 of both phases and what the attackers achieved.
//! - `soak`: legitimate load for `--duration` (default 10 min), sampling every `--interval`
//!   the server's RSS, open descriptors and threads (/proc/PID) and the interval's ack latency;
//!   prints a table and a verdict on the least-squares slope of RSS and descriptors over the
//!   second half ("flat" below `--rss-slope-mib` MiB/min and `--fd-slope` fds/min).

#[path = "../../../ingest/tests/hostile/h2raw.rs"]
mod h2raw;

use std::io::{BufRead as _, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use auditledger_benches::{Percentiles, machine, ms};
use auditledger_proto::v1 as pb;
use clap::{Parser, Subcommand};
use tonic::transport::Channel;

#[derive(Parser)]
#[command(name = "hostile_load")]
struct Args {
    /// The `auditledger` binary (default: next to this one).
    #[arg(long, global = true)]
    bin: Option<PathBuf>,
    /// Legitimate clients (concurrent unary Append loops).
    #[arg(long, global = true, default_value_t = 4)]
    clients: usize,
    /// Events per Append.
    #[arg(long, global = true, default_value_t = 50)]
    batch: usize,
    /// Legitimate events/s across all clients.
    #[arg(long, global = true, default_value_t = 2000)]
    rate: u64,
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Subcommand)]
enum Mode {
    /// Ack latency of the legitimate tenant without, then with, attacks running.
    Compare {
        /// Seconds per phase.
        #[arg(long, default_value_t = 20)]
        seconds: u64,
        /// Concurrent invalid-token callers (each as fast as the server answers).
        #[arg(long, default_value_t = 8)]
        token_flooders: usize,
        /// Connections of the slowloris attacker, each keeping 100 unfinished calls open.
        #[arg(long, default_value_t = 10)]
        slowloris_conns: usize,
        /// Idle connections held open during the attack.
        #[arg(long, default_value_t = 500)]
        idle_conns: usize,
    },
    /// Sustained load, sampling RSS, descriptors, threads and latency.
    Soak {
        /// Total duration, e.g. 10m, 60s.
        #[arg(long, default_value = "10m", value_parser = humantime_duration)]
        duration: Duration,
        /// Sampling interval.
        #[arg(long, default_value = "30s", value_parser = humantime_duration)]
        interval: Duration,
        /// RSS slope (MiB/min) over the second half below which RSS counts as flat.
        #[arg(long, default_value_t = 1.0)]
        rss_slope_mib: f64,
        /// Socket-descriptor slope (per min) over the second half below which it counts as flat
        /// (all descriptors are reported too; RocksDB's files grow with the data).
        #[arg(long, default_value_t = 0.5)]
        fd_slope: f64,
    },
}

const MIB: f64 = (1u64 << 20) as f64;

/// One soak sample: (seconds since start, RSS MiB, descriptors, sockets, RSS minus what
/// RocksDB accounts for, heap in use minus what RocksDB accounts for; MiB).
type Row = (f64, f64, f64, f64, f64, f64);

fn humantime_duration(text: &str) -> Result<Duration, String> {
    let (num, unit) = text.split_at(
        text.find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len()),
    );
    let n: u64 = num.parse().map_err(|e| format!("{text:?}: {e}"))?;
    match unit {
        "s" | "" => Ok(Duration::from_secs(n)),
        "m" | "min" => Ok(Duration::from_secs(n * 60)),
        "ms" => Ok(Duration::from_millis(n)),
        other => Err(format!("{text:?}: unknown unit {other:?} (ms, s, m)")),
    }
}

/// A running `auditledger serve`; SIGTERM (then SIGKILL) on drop.
struct ServerProc {
    child: Child,
    addr: String,
    metrics: String,
    _dir: tempfile::TempDir,
}

impl ServerProc {
    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for ServerProc {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        for _ in 0..300 {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn run(bin: &Path, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(bin)
        .args(args)
        .env_remove("AUDITLEDGER_CONFIG")
        .output()
        .with_context(|| format!("running {}", bin.display()))?;
    if !out.status.success() {
        bail!(
            "{} {}: {}",
            bin.display(),
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// init + two gateway tokens (victim, evil) + serve. Returns the server and the tokens.
fn start_server(bin: &Path) -> anyhow::Result<(ServerProc, String, String)> {
    let dir = tempfile::tempdir()?;
    let ledger = dir.path().join("ledger");
    let ledger_str = ledger.to_str().context("temporary path is not UTF-8")?;
    run(bin, &["init", ledger_str])?;
    let config = ledger.join("config.toml");
    let config = config.to_str().context("temporary path is not UTF-8")?;
    let token = |tenant: &str| -> anyhow::Result<String> {
        let out = run(
            bin,
            &[
                "token", "create", "--config", config, "--role", "gateway", "--tenant", tenant,
                "--env", "prod",
            ],
        )?;
        out.lines()
            .last()
            .map(str::to_owned)
            .context("token create printed nothing")
    };
    let (victim, evil) = (token("victim")?, token("evil")?);
    let mut child = Command::new(bin)
        .args(["serve", "--config", config, "--listen", "127.0.0.1:0"])
        .env_remove("AUDITLEDGER_CONFIG")
        .env("AUDITLEDGER_SERVER_METRICS_LISTEN", "127.0.0.1:0")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("spawning auditledger serve")?;
    let stdout = child.stdout.take().context("server stdout")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let (mut addr, mut metrics) = (None, None);
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(a) = line.strip_prefix("auditledger listening on http://") {
                addr = Some(a.to_owned());
            } else if let Some(m) = line.strip_prefix("auditledger metrics on http://") {
                metrics = Some(m.trim_end_matches("/metrics").to_owned());
            }
            if let (Some(a), Some(m)) = (&addr, &metrics) {
                let _ = tx.send((a.clone(), m.clone()));
                addr = None;
            }
        }
    });
    let mut server = ServerProc {
        child,
        addr: String::new(),
        metrics: String::new(),
        _dir: dir,
    };
    let (addr, metrics) = rx
        .recv_timeout(Duration::from_secs(60))
        .context("server did not print its addresses within 60 s")?;
    server.addr = addr;
    server.metrics = metrics;
    Ok((server, victim, evil))
}

/// Ack latencies of the legitimate load, and failures.
#[derive(Default)]
struct Samples {
    latencies: std::sync::Mutex<Vec<Duration>>,
    errors: AtomicU64,
    events: AtomicU64,
}

impl Samples {
    fn take(&self) -> (Vec<Duration>, u64) {
        let lat = std::mem::take(&mut *self.latencies.lock().unwrap_or_else(|p| p.into_inner()));
        (lat, self.errors.swap(0, Ordering::Relaxed))
    }
}

/// Paced unary Append loops until `stop`.
async fn legit_load(
    channel: Channel,
    token: String,
    clients: usize,
    batch: usize,
    rate: u64,
    samples: Arc<Samples>,
    stop: Arc<AtomicBool>,
) {
    let per_client = Duration::from_secs_f64(batch as f64 * clients as f64 / rate.max(1) as f64);
    let mut tasks = Vec::new();
    for c in 0..clients {
        let (channel, token, samples, stop) = (
            channel.clone(),
            token.clone(),
            samples.clone(),
            stop.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut client = pb::ingest_client::IngestClient::new(channel);
            let mut tick = tokio::time::interval(per_client);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                let events: Vec<_> = (0..batch)
                    .map(|_| {
                        let mut e = auditledger_tests::tool_call(c as u32, n, "victim", "prod");
                        e.event_id = uuid::Uuid::now_v7().to_string();
                        e.gateway_id = format!("gw-{c}");
                        e.gateway_seq = n;
                        n += 1;
                        e
                    })
                    .collect();
                let mut req = tonic::Request::new(pb::AppendRequest {
                    events,
                    wait_for_checkpoint: false,
                });
                let Ok(value) = format!("Bearer {token}").parse() else {
                    return;
                };
                req.metadata_mut().insert("authorization", value);
                let start = Instant::now();
                match client.append(req).await {
                    Ok(resp) if resp.get_ref().receipts.len() == batch => {
                        samples
                            .latencies
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .push(start.elapsed());
                        samples.events.fetch_add(batch as u64, Ordering::Relaxed);
                    }
                    _ => {
                        samples.errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

fn metric(addr: &str, name: &str) -> Option<u64> {
    use std::io::Read as _;
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\n\r\n")
        .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

fn pct(lat: &mut [Duration]) -> (String, String) {
    Percentiles::of(lat).map_or(("-".into(), "-".into()), |p| (ms(p.p50), ms(p.p99)))
}

/// Attack threads; they stop when `stop` is set.
fn start_attacks(
    rt: &tokio::runtime::Runtime,
    server: &ServerProc,
    evil: &str,
    token_flooders: usize,
    slowloris_conns: usize,
    idle_conns: usize,
    stop: Arc<AtomicBool>,
) -> (Vec<std::thread::JoinHandle<u64>>, Arc<AtomicU64>) {
    let mut threads = Vec::new();
    let refused = Arc::new(AtomicU64::new(0));
    // Invalid tokens as fast as the server refuses them.
    for w in 0..token_flooders {
        let (url, stop, refused) = (
            format!("http://{}", server.addr),
            stop.clone(),
            refused.clone(),
        );
        let handle = rt.handle().clone();
        threads.push(std::thread::spawn(move || {
            handle.block_on(async move {
                let Ok(channel) = Channel::from_shared(url) else {
                    return 0;
                };
                let Ok(channel) = channel.connect().await else {
                    return 0;
                };
                let mut log = pb::log_client::LogClient::new(channel);
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let mut req = tonic::Request::new(pb::GetCheckpointRequest {
                        tenant_id: "victim".into(),
                        environment: "prod".into(),
                        tree_size: 0,
                    });
                    if let Ok(v) = format!("Bearer alt_bogus_{w}_{i}").parse() {
                        req.metadata_mut().insert("authorization", v);
                    }
                    if let Err(s) = log.get_checkpoint(req).await
                        && s.code() == tonic::Code::Unauthenticated
                    {
                        refused.fetch_add(1, Ordering::Relaxed);
                    }
                    i += 1;
                }
                i
            })
        }));
    }
    // Slowloris: connections keeping 100 calls each with unfinished bodies; reopened when the
    // server cuts them off (request_timeout).
    for _ in 0..slowloris_conns {
        let (addr, stop, evil) = (server.addr.clone(), stop.clone(), evil.to_owned());
        threads.push(std::thread::spawn(move || {
            let mut opened = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let Ok(conn) = h2raw::Conn::open(&addr) else {
                    std::thread::sleep(Duration::from_millis(100));
                    continue;
                };
                let mut ids = Vec::new();
                for s in 0..100u32 {
                    let id = 1 + 2 * s;
                    let mut bytes = h2raw::headers_frames(
                        id,
                        &h2raw::grpc_headers("/auditledger.v1.Ingest/Append", Some(&evil), &[]),
                        false,
                    );
                    let mut body = h2raw::grpc_prefix(1 << 20).to_vec();
                    body.extend(std::iter::repeat_n(0x5a, 8 << 10));
                    bytes.extend(h2raw::frame(h2raw::DATA, 0, id, &body));
                    if conn.send(&bytes).is_err() {
                        break;
                    }
                    ids.push(id);
                    opened += 1;
                }
                // Hold until the server ends them (or the attack stops), checking every 100 ms.
                for _ in 0..1200 {
                    if stop.load(Ordering::Relaxed)
                        || conn.wait_all_ended(&ids, Duration::from_millis(100))
                    {
                        break;
                    }
                }
            }
            opened
        }));
    }
    // Idle connections (preface, then nothing) and garbage connections.
    {
        let (addr, stop) = (server.addr.clone(), stop.clone());
        threads.push(std::thread::spawn(move || {
            let mut held = Vec::new();
            for _ in 0..idle_conns {
                if let Ok(mut tcp) = std::net::TcpStream::connect(&addr) {
                    let _ = tcp.write_all(h2raw::PREFACE);
                    held.push(tcp);
                }
            }
            let mut garbage = 0u64;
            while !stop.load(Ordering::Relaxed) {
                if let Ok(mut tcp) = std::net::TcpStream::connect(&addr) {
                    let _ = tcp.write_all(&[0x16, 0x03, 0x01, 0xff, 0xff, 0, 0, 0, 0, 1, 2, 3]);
                    garbage += 1;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            drop(held);
            garbage
        }));
    }
    (threads, refused)
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let bin = match &args.bin {
        Some(b) => b.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("no directory of this binary")?
            .join("auditledger"),
    };
    if !bin.exists() {
        bail!(
            "{} not found; build the workspace or pass --bin",
            bin.display()
        );
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let (server, victim, evil) = start_server(&bin)?;
    println!("# {}", machine());
    println!(
        "# server pid {}, legitimate load: {} clients, {} events/Append, {} events/s",
        server.pid(),
        args.clients,
        args.batch,
        args.rate
    );
    let channel = rt.block_on(async {
        Channel::from_shared(format!("http://{}", server.addr))?
            .connect()
            .await
            .context("connecting to the server")
    })?;
    let samples = Arc::new(Samples::default());
    let stop = Arc::new(AtomicBool::new(false));
    let load = rt.spawn(legit_load(
        channel,
        victim,
        args.clients,
        args.batch,
        args.rate,
        samples.clone(),
        stop.clone(),
    ));

    match args.mode {
        Mode::Compare {
            seconds,
            token_flooders,
            slowloris_conns,
            idle_conns,
        } => {
            std::thread::sleep(Duration::from_secs(2));
            samples.take();
            println!("# load average before: {}", load_average());
            std::thread::sleep(Duration::from_secs(seconds));
            let (mut quiet, quiet_errors) = samples.take();
            let rss_quiet = h2raw::proc_stats(server.pid()).map_or(0, |s| s.rss_kib);

            let attack_stop = Arc::new(AtomicBool::new(false));
            let (threads, refused) = start_attacks(
                &rt,
                &server,
                &evil,
                token_flooders,
                slowloris_conns,
                idle_conns,
                attack_stop.clone(),
            );
            std::thread::sleep(Duration::from_secs(2));
            samples.take();
            let refused_start = refused.load(Ordering::Relaxed);
            std::thread::sleep(Duration::from_secs(seconds));
            let (mut attacked, attacked_errors) = samples.take();
            let refused_n = refused.load(Ordering::Relaxed) - refused_start;
            let stats = h2raw::proc_stats(server.pid());
            let load_after = load_average();
            let denial_records = metric(&server.metrics, "auditledger_denials_recorded_total");
            let denial_aggregated = metric(&server.metrics, "auditledger_denials_aggregated_total");
            attack_stop.store(true, Ordering::Relaxed);
            let results: Vec<u64> = threads.into_iter().map(|t| t.join().unwrap_or(0)).collect();
            let (q50, q99) = pct(&mut quiet);
            let (a50, a99) = pct(&mut attacked);
            println!("| Phase | Appends | Failed | ack p50 ms | ack p99 ms |");
            println!("|---|---|---|---|---|");
            println!(
                "| legitimate load alone | {} | {quiet_errors} | {q50} | {q99} |",
                quiet.len()
            );
            println!(
                "| same load + attacks | {} | {attacked_errors} | {a50} | {a99} |",
                attacked.len()
            );
            println!(
                "# attacks over {seconds} s: {:.0} invalid tokens/s refused; {} slowloris calls opened; {} garbage connections; {idle_conns} idle connections held",
                refused_n as f64 / seconds as f64,
                results[token_flooders..token_flooders + slowloris_conns]
                    .iter()
                    .sum::<u64>(),
                results.last().copied().unwrap_or(0)
            );
            println!(
                "# denials recorded one by one: {denial_records:?}, folded into summaries: {denial_aggregated:?}"
            );
            if let Some(s) = stats {
                println!(
                    "# server RSS {} MiB before the attacks, {} MiB at their end (peak {} MiB), {} fds, {} threads",
                    rss_quiet >> 10,
                    s.rss_kib >> 10,
                    s.hwm_kib >> 10,
                    s.fds,
                    s.threads
                );
            }
            println!("# load average at the end of the attack phase: {load_after}");
        }
        Mode::Soak {
            duration,
            interval,
            rss_slope_mib,
            fd_slope,
        } => {
            println!("# load average at start: {}", load_average());
            println!(
                "| t (s) | RSS MiB | RocksDB MiB | of which memtables | other MiB | heap in use MiB | heap free, retained MiB | fds | of which sockets | threads | appends | failed | ack p50 ms | ack p99 ms |"
            );
            println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
            let start = Instant::now();
            samples.take();
            let mut rows: Vec<Row> = Vec::new();
            let mut all = Vec::new();
            let mut failed_total = 0;
            let intervals = (duration.as_secs_f64() / interval.as_secs_f64()).ceil() as u64;
            for i in 1..=intervals {
                let target = start + interval * i as u32;
                std::thread::sleep(target.saturating_duration_since(Instant::now()));
                let (mut lat, failed) = samples.take();
                failed_total += failed;
                let s = h2raw::proc_stats(server.pid()).context("server /proc gone")?;
                let t = start.elapsed().as_secs_f64();
                let (p50, p99) = pct(&mut lat);
                // What RocksDB accounts for: the block cache (memtables are charged to it) and
                // table readers outside it. The rest of the resident set is everything else.
                let mib = |name: &str| metric(&server.metrics, name).unwrap_or(0) as f64 / MIB;
                let rocks = mib("auditledger_rocksdb_block_cache_bytes")
                    + mib("auditledger_rocksdb_table_readers_bytes");
                let memtables = mib("auditledger_rocksdb_memtable_bytes");
                let rss = s.rss_kib as f64 / 1024.0;
                let heap = mib("auditledger_heap_in_use_bytes");
                let retained = mib("auditledger_heap_free_retained_bytes");
                println!(
                    "| {t:.0} | {rss:.1} | {rocks:.1} | {memtables:.1} | {:.1} | {heap:.1} | {retained:.1} | {} | {} | {} | {} | {failed} | {p50} | {p99} |",
                    rss - rocks,
                    s.fds,
                    s.sockets,
                    s.threads,
                    lat.len()
                );
                let _ = std::io::stdout().flush();
                rows.push((
                    t,
                    rss,
                    s.fds as f64,
                    s.sockets as f64,
                    rss - rocks,
                    heap - rocks,
                ));
                all.extend(lat);
            }
            let half: Vec<_> = rows[rows.len() / 2..].to_vec();
            let slope = |ys: &dyn Fn(&Row) -> f64| -> f64 {
                let n = half.len() as f64;
                if n < 2.0 {
                    return 0.0;
                }
                let mx = half.iter().map(|r| r.0).sum::<f64>() / n;
                let my = half.iter().map(ys).sum::<f64>() / n;
                let num: f64 = half.iter().map(|r| (r.0 - mx) * (ys(r) - my)).sum();
                let den: f64 = half.iter().map(|r| (r.0 - mx).powi(2)).sum();
                if den == 0.0 { 0.0 } else { num / den * 60.0 }
            };
            let rss = slope(&|r| r.1);
            let fds = slope(&|r| r.2);
            let sockets = slope(&|r| r.3);
            let other = slope(&|r| r.4);
            let heap_other = slope(&|r| r.5);
            let (p50, p99) = pct(&mut all);
            println!(
                "# whole run: {} appends ({} events), {failed_total} failed, ack p50 {p50} ms, p99 {p99} ms",
                all.len(),
                samples.events.load(Ordering::Relaxed)
            );
            println!(
                "# second half: RSS slope {rss:+.2} MiB/min (flat below {rss_slope_mib}), of which outside RocksDB's accounting {other:+.2} MiB/min; heap in use outside RocksDB's accounting {heap_other:+.2} MiB/min; socket slope {sockets:+.2}/min (flat below {fd_slope}); all descriptors {fds:+.2}/min"
            );
            let flat = rss.abs() < rss_slope_mib && sockets.abs() < fd_slope;
            println!(
                "# verdict: {}",
                if flat {
                    "FLAT"
                } else {
                    "GROWING — investigate"
                }
            );
            println!("# load average at the end: {}", load_average());
        }
    }
    stop.store(true, Ordering::Relaxed);
    let _ = rt.block_on(load);
    drop(server);
    Ok(())
}
