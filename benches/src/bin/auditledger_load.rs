//! `auditledger-load`: gRPC load generator for the ingest path.
//!
//! N connections, each one `AppendStream` with up to M requests in flight, realistic ~500-byte
//! events; reports durable events/s and p50/p95/p99 acknowledgement latency. `--rate` paces the
//! load (for latency at a fixed rate). `--sink` runs the same client against an in-process
//! no-op server that acknowledges without storing: the transport ceiling of the same run.
//! `--sink --durable DIR` makes that sink store each request's events as one synced RocksDB
//! `WriteBatch` in DIR before it answers (RocksDB's own group commit across requests): raw
//! RocksDB behind the same gRPC transport, the ceiling for durable acknowledgement latency.
//! `--proofs` measures `GetInclusionProof` throughput instead (with `--sink`: against a no-op
//! `Log` service returning proofs of the same size); `--proof-batch N` asks for N proofs per
//! `GetInclusionProofs` call instead.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use auditledger_benches::{Percentiles, machine, ms};
use auditledger_proto::v1 as pb;
use auditledger_tests::{Rng, tool_call};
use clap::Parser;
use prost::Message as _;
use tokio::sync::{Mutex, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Server};
use tonic::{Request, Response, Status, Streaming};

#[derive(Parser, Clone)]
#[command(name = "auditledger-load")]
struct Args {
    /// Server URL, e.g. http://127.0.0.1:50051 (ignored with --sink).
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    target: String,
    /// Bearer token (gateway role for appends; auditor for --proofs).
    #[arg(long, env = "AUDITLEDGER_TOKEN", default_value = "")]
    token: String,
    #[arg(long, default_value = "bench")]
    tenant: String,
    #[arg(long, default_value = "prod")]
    env: String,
    /// Connections (one AppendStream each).
    #[arg(long, default_value_t = 8)]
    connections: usize,
    /// Requests in flight per stream.
    #[arg(long, default_value_t = 4)]
    inflight: usize,
    /// Events per request.
    #[arg(long, default_value_t = 100)]
    batch: usize,
    /// Seconds to run (after a 2 s warm-up).
    #[arg(long, default_value_t = 20)]
    seconds: u64,
    /// Target events/s across all connections (0 = as fast as possible).
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Run against an in-process no-op sink instead of --target.
    #[arg(long)]
    sink: bool,
    /// With --sink: the sink stores every request in a RocksDB database in this (new or empty)
    /// directory with a synced write before answering.
    #[arg(long, requires = "sink")]
    durable: Option<std::path::PathBuf>,
    /// With --sink: serve the sink on this loopback address in this process until killed and
    /// drive no load (run the client as a second process with --target, as against the ledger).
    #[arg(long, requires = "sink")]
    serve_sink: Option<std::net::SocketAddr>,
    /// Measure GetInclusionProof requests/s on leaves [0, tree size) instead of appends.
    #[arg(long)]
    proofs: bool,
    /// With --proofs: leaves per `GetInclusionProofs` request (0 = one `GetInclusionProof` call
    /// per proof).
    #[arg(long, default_value_t = 0)]
    proof_batch: usize,
    /// Name of the target in the report (default: "ledger", or the sink's kind with --sink).
    #[arg(long)]
    label: Option<String>,
    /// Scrape this /metrics URL at the end for checkpoint lag and fsync figures.
    #[arg(long)]
    metrics: Option<String>,
}

/// A stream that acknowledges every request at once, storing nothing, or — with a database —
/// once the request's events are in one synced `WriteBatch`.
struct Sink {
    durable: Option<Arc<DurableSink>>,
}

/// Raw RocksDB under the sink: each request's encoded events under sequential keys, written
/// with `sync = true` from the blocking pool, so concurrent requests share RocksDB's group
/// commit the way `ledger_load`'s raw ceiling does.
struct DurableSink {
    db: rocksdb::DB,
    next_key: AtomicU64,
}

impl DurableSink {
    fn open(dir: &std::path::Path) -> anyhow::Result<DurableSink> {
        if dir.exists() && std::fs::read_dir(dir)?.next().is_some() {
            bail!("--durable {}: the directory is not empty", dir.display());
        }
        let db = rocksdb::DB::open_default(dir)
            .with_context(|| format!("opening RocksDB in {}", dir.display()))?;
        Ok(DurableSink {
            db,
            next_key: AtomicU64::new(0),
        })
    }

    fn store(&self, req: &pb::AppendRequest) -> Result<(), Status> {
        let first = self
            .next_key
            .fetch_add(req.events.len() as u64, Ordering::Relaxed);
        let mut wb = rocksdb::WriteBatch::default();
        for (key, event) in (first..).zip(&req.events) {
            wb.put(key.to_be_bytes(), event.encode_to_vec());
        }
        let mut wo = rocksdb::WriteOptions::default();
        wo.set_sync(true);
        self.db
            .write_opt(wb, &wo)
            .map_err(|e| Status::internal(format!("durable sink write: {e}")))
    }

    /// Stores `req` off the async runtime and answers once it is durable.
    async fn ack(self: Arc<Self>, req: pb::AppendRequest) -> Result<pb::AppendResponse, Status> {
        tokio::task::spawn_blocking(move || {
            self.store(&req)?;
            Ok(ack(req))
        })
        .await
        .map_err(|e| Status::internal(format!("durable sink task: {e}")))?
    }
}

#[tonic::async_trait]
impl pb::ingest_server::Ingest for Sink {
    async fn append(
        &self,
        request: Request<pb::AppendRequest>,
    ) -> Result<Response<pb::AppendResponse>, Status> {
        let req = request.into_inner();
        match &self.durable {
            None => Ok(Response::new(ack(req))),
            Some(db) => db.clone().ack(req).await.map(Response::new),
        }
    }

    type AppendStreamStream = ReceiverStream<Result<pb::AppendResponse, Status>>;

    async fn append_stream(
        &self,
        request: Request<Streaming<pb::AppendRequest>>,
    ) -> Result<Response<Self::AppendStreamStream>, Status> {
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(64);
        let Some(db) = self.durable.clone() else {
            tokio::spawn(async move {
                while let Ok(Some(req)) = inbound.message().await {
                    if tx.send(Ok(ack(req))).await.is_err() {
                        break;
                    }
                }
            });
            return Ok(Response::new(ReceiverStream::new(rx)));
        };
        // Every request of the stream is written as soon as it arrives (so the stream's
        // requests in flight share group commits); answers go out in request order.
        let (pending_tx, mut pending) = mpsc::channel::<tokio::task::JoinHandle<_>>(64);
        tokio::spawn(async move {
            while let Ok(Some(req)) = inbound.message().await {
                if pending_tx
                    .send(tokio::spawn(db.clone().ack(req)))
                    .await
                    .is_err()
                {
                    break;
                }
            }
        });
        tokio::spawn(async move {
            while let Some(write) = pending.recv().await {
                let answer = write
                    .await
                    .unwrap_or_else(|e| Err(Status::internal(format!("durable sink task: {e}"))));
                if tx.send(answer).await.is_err() {
                    break;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

fn ack(req: pb::AppendRequest) -> pb::AppendResponse {
    pb::AppendResponse {
        receipts: req
            .events
            .iter()
            .enumerate()
            .map(|(i, e)| pb::Receipt {
                event_id: e.event_id.clone(),
                origin: String::new(),
                leaf_index: i as u64,
                leaf_hash: vec![0; 32],
                duplicate: false,
                proof: None,
            })
            .collect(),
        checkpoint: None,
        error: None,
    }
}

fn authed<T>(msg: T, token: &str) -> anyhow::Result<Request<T>> {
    let mut req = Request::new(msg);
    if !token.is_empty() {
        req.metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse()?);
    }
    Ok(req)
}

struct Totals {
    events: AtomicU64,
    errors: AtomicU64,
    latencies: Mutex<Vec<Duration>>,
}

/// Paces request starts across all connections when `--rate` is set.
struct Pacer {
    interval: Option<Duration>,
    next: Mutex<Instant>,
}

impl Pacer {
    async fn wait(&self) {
        let Some(interval) = self.interval else {
            return;
        };
        let at = {
            let mut next = self.next.lock().await;
            let now = Instant::now();
            if *next < now {
                // Do not bank credit after a stall: keep the rate, not catch up in a burst.
                *next = now;
            }
            let at = *next;
            *next += interval;
            at
        };
        tokio::time::sleep_until(at.into()).await;
    }
}

async fn run_stream(
    args: Args,
    channel: Channel,
    conn: usize,
    totals: Arc<Totals>,
    pacer: Arc<Pacer>,
    measure_from: Instant,
    stop_at: Instant,
) -> anyhow::Result<()> {
    let mut client =
        pb::ingest_client::IngestClient::new(channel).max_decoding_message_size(64 << 20);
    // One gateway per connection and run: every run numbers its events from 1, and a second
    // run under the same gateway id would be (correctly) reported as a counter reset.
    let run = std::process::id();
    let templates: Vec<pb::AuditEvent> = (0..args.batch as u64 * 16)
        .map(|n| pb::AuditEvent {
            gateway_id: format!("load-{run}-{conn}"),
            ..tool_call(conn as u32, n, &args.tenant, &args.env)
        })
        .collect();
    let (tx, rx) = mpsc::channel::<pb::AppendRequest>(args.inflight);
    let sent_at: Arc<std::sync::Mutex<VecDeque<Instant>>> = Arc::default();
    let slots = Arc::new(tokio::sync::Semaphore::new(args.inflight));
    let mut responses = client
        .append_stream(authed(ReceiverStream::new(rx), &args.token)?)
        .await?
        .into_inner();
    let (sent, slots_tx) = (sent_at.clone(), slots.clone());
    let batch = args.batch;
    let producer = tokio::spawn(async move {
        let mut n = 0u64;
        let mut rng = Rng::new(conn as u64 + 1);
        while Instant::now() < stop_at {
            let Ok(permit) = slots_tx.clone().acquire_owned().await else {
                break;
            };
            permit.forget();
            pacer.wait().await;
            let offset = rng.range(0, 15) as usize * batch;
            let events: Vec<_> = templates[offset..offset + batch]
                .iter()
                .map(|t| {
                    let mut e = t.clone();
                    e.event_id = uuid::Uuid::now_v7().to_string();
                    e.gateway_seq = n;
                    n += 1;
                    e
                })
                .collect();
            sent.lock().expect("lock").push_back(Instant::now());
            if tx
                .send(pb::AppendRequest {
                    events,
                    wait_for_checkpoint: false,
                })
                .await
                .is_err()
            {
                break;
            }
        }
    });
    while let Some(resp) = responses.message().await? {
        let started = sent_at
            .lock()
            .expect("lock")
            .pop_front()
            .context("response without request")?;
        let now = Instant::now();
        slots.add_permits(1);
        if let Some(err) = resp.error {
            totals.errors.fetch_add(1, Ordering::Relaxed);
            if totals.errors.load(Ordering::Relaxed) < 5 {
                eprintln!("request failed: {} {}", err.code, err.message);
            }
            continue;
        }
        if started >= measure_from && now <= stop_at {
            totals
                .events
                .fetch_add(resp.receipts.len() as u64, Ordering::Relaxed);
            totals.latencies.lock().await.push(now - started);
        }
    }
    producer.await?;
    Ok(())
}

async fn appends(args: Args, target: String) -> anyhow::Result<()> {
    let totals = Arc::new(Totals {
        events: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        latencies: Mutex::new(Vec::new()),
    });
    let pacer = Arc::new(Pacer {
        interval: (args.rate > 0)
            .then(|| Duration::from_secs_f64(args.batch as f64 / args.rate as f64)),
        next: Mutex::new(Instant::now()),
    });
    let start = Instant::now();
    let measure_from = start + Duration::from_secs(2);
    let stop_at = measure_from + Duration::from_secs(args.seconds);
    let mut tasks = Vec::new();
    for conn in 0..args.connections {
        let channel = Channel::from_shared(target.clone())?
            .initial_stream_window_size(Some(8 << 20))
            .initial_connection_window_size(Some(32 << 20))
            .tcp_nodelay(true)
            .connect()
            .await
            .with_context(|| format!("connecting to {target}"))?;
        tasks.push(tokio::spawn(run_stream(
            args.clone(),
            channel,
            conn,
            totals.clone(),
            pacer.clone(),
            measure_from,
            stop_at,
        )));
    }
    for t in tasks {
        t.await??;
    }
    let mut lat = totals.latencies.lock().await;
    let p = Percentiles::of(&mut lat).context("no request completed in the measurement window")?;
    let rate = totals.events.load(Ordering::Relaxed) as f64 / args.seconds as f64;
    let size = tool_call(0, 1, &args.tenant, &args.env).encoded_len();
    println!("machine: {}", machine());
    println!(
        "{}: {} connections x {} in flight, {} events/request (~{size} B each), rate {}: {rate:.0} events/s acknowledged; \
         ack latency p50 {} ms, p95 {} ms, p99 {} ms, max {} ms; {} failed requests",
        args.label
            .as_deref()
            .unwrap_or(match (args.sink, &args.durable) {
                (false, _) => "ledger",
                (true, None) => "no-op sink",
                (true, Some(_)) => "durable sink (raw RocksDB, synced)",
            }),
        args.connections,
        args.inflight,
        args.batch,
        if args.rate == 0 {
            "unlimited".to_string()
        } else {
            format!("{}/s", args.rate)
        },
        ms(p.p50),
        ms(p.p95),
        ms(p.p99),
        ms(p.max),
        totals.errors.load(Ordering::Relaxed)
    );
    Ok(())
}

/// A `Log` service answering every `GetInclusionProof` with a canned proof of realistic size
/// (22 hashes and a checkpoint note, as for a ~2.5 M-leaf log): the unary transport ceiling.
struct ProofSink {
    note: String,
}

/// Tree size the proof sink claims.
const SINK_TREE_SIZE: u64 = 2_500_000;

impl ProofSink {
    fn new() -> ProofSink {
        // Base64 of 32 bytes 0x07 (the root) and of 68 bytes 0x09 (a key id and a signature).
        let root = "BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc=";
        let sig = "CQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQk=";
        ProofSink {
            note: format!(
                "auditledger.example/bench/prod\n{SINK_TREE_SIZE}\n{root}\ntime 1763700000000000000\n\n\u{2014} auditledger.example {sig}\n"
            ),
        }
    }

    fn checkpoint(&self) -> pb::SignedCheckpoint {
        pb::SignedCheckpoint {
            note: self.note.clone(),
        }
    }
}

/// A proof of realistic size for `leaf_index` (no checkpoint, no contents).
fn canned_proof(leaf_index: u64) -> pb::InclusionProof {
    pb::InclusionProof {
        leaf_index,
        tree_size: SINK_TREE_SIZE,
        hashes: vec![vec![3u8; 32]; 22],
        leaf_hash: vec![5u8; 32],
        ..Default::default()
    }
}

#[tonic::async_trait]
impl pb::log_server::Log for ProofSink {
    async fn get_checkpoint(
        &self,
        _: Request<pb::GetCheckpointRequest>,
    ) -> Result<Response<pb::SignedCheckpoint>, Status> {
        Ok(Response::new(self.checkpoint()))
    }

    async fn get_inclusion_proof(
        &self,
        request: Request<pb::GetInclusionProofRequest>,
    ) -> Result<Response<pb::InclusionProof>, Status> {
        let leaf_index = match request.into_inner().key {
            Some(pb::get_inclusion_proof_request::Key::LeafIndex(i)) => i,
            _ => {
                return Err(Status::invalid_argument(
                    "the sink answers by leaf_index only",
                ));
            }
        };
        Ok(Response::new(pb::InclusionProof {
            checkpoint: Some(self.checkpoint()),
            ..canned_proof(leaf_index)
        }))
    }

    async fn get_inclusion_proofs(
        &self,
        request: Request<pb::GetInclusionProofsRequest>,
    ) -> Result<Response<pb::GetInclusionProofsResponse>, Status> {
        let mut proofs = Vec::new();
        for key in request.into_inner().keys {
            let Some(pb::leaf_key::Key::LeafIndex(leaf_index)) = key.key else {
                return Err(Status::invalid_argument(
                    "the sink answers by leaf_index only",
                ));
            };
            proofs.push(canned_proof(leaf_index));
        }
        Ok(Response::new(pb::GetInclusionProofsResponse {
            checkpoint: Some(self.checkpoint()),
            proofs,
        }))
    }

    async fn get_consistency_proof(
        &self,
        _: Request<pb::GetConsistencyProofRequest>,
    ) -> Result<Response<pb::ConsistencyProof>, Status> {
        Err(Status::unimplemented(
            "the proof sink serves inclusion proofs only",
        ))
    }

    type GetEntriesStream = ReceiverStream<Result<pb::Entry, Status>>;

    async fn get_entries(
        &self,
        _: Request<pb::GetEntriesRequest>,
    ) -> Result<Response<Self::GetEntriesStream>, Status> {
        Err(Status::unimplemented(
            "the proof sink serves inclusion proofs only",
        ))
    }
}

async fn proofs(args: Args, target: String) -> anyhow::Result<()> {
    // One HTTP/2 connection per `--connections`: a connection is driven by one task on each
    // side, so a single one would cap the run at about one core.
    let mut channels = Vec::new();
    for _ in 0..args.connections.max(1) {
        channels.push(Channel::from_shared(target.clone())?.connect().await?);
    }
    let mut log = pb::log_client::LogClient::new(channels[0].clone());
    let cp = log
        .get_checkpoint(authed(
            pb::GetCheckpointRequest {
                tenant_id: args.tenant.clone(),
                environment: args.env.clone(),
                tree_size: 0,
            },
            &args.token,
        )?)
        .await?
        .into_inner()
        .note;
    let body = cp
        .split("\n\n")
        .next()
        .context("malformed checkpoint")?
        .to_owned()
        + "\n";
    let size = auditledger_ledger::checkpoint::Checkpoint::parse_body(&body)?.tree_size;
    if size == 0 {
        bail!("the log is empty");
    }
    let done = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let stop_at = start + Duration::from_secs(args.seconds);
    let mut tasks = Vec::new();
    for t in 0..channels.len() * args.inflight {
        let mut log = pb::log_client::LogClient::new(channels[t % channels.len()].clone());
        let (args, done) = (args.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            let mut rng = Rng::new(t as u64 + 3);
            while Instant::now() < stop_at {
                if args.proof_batch > 0 {
                    let req = pb::GetInclusionProofsRequest {
                        tenant_id: args.tenant.clone(),
                        environment: args.env.clone(),
                        keys: (0..args.proof_batch)
                            .map(|_| pb::LeafKey {
                                key: Some(pb::leaf_key::Key::LeafIndex(rng.range(0, size))),
                            })
                            .collect(),
                        tree_size: size,
                    };
                    let got = log.get_inclusion_proofs(authed(req, &args.token)?).await?;
                    let got = got.get_ref();
                    if got.proofs.len() != args.proof_batch
                        || (size > 1 && got.proofs.iter().any(|p| p.hashes.is_empty()))
                    {
                        bail!(
                            "asked for {} proofs, got {} (or an empty one) for a tree of {size} leaves",
                            args.proof_batch,
                            got.proofs.len()
                        );
                    }
                    done.fetch_add(args.proof_batch as u64, Ordering::Relaxed);
                    continue;
                }
                let req = pb::GetInclusionProofRequest {
                    tenant_id: args.tenant.clone(),
                    environment: args.env.clone(),
                    key: Some(pb::get_inclusion_proof_request::Key::LeafIndex(
                        rng.range(0, size),
                    )),
                    tree_size: size,
                    justification: String::new(),
                };
                let proof = log.get_inclusion_proof(authed(req, &args.token)?).await?;
                if proof.get_ref().hashes.is_empty() && size > 1 {
                    bail!("empty proof for a tree of {size} leaves");
                }
                done.fetch_add(1, Ordering::Relaxed);
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let elapsed = start.elapsed().as_secs_f64();
    println!("machine: {}", machine());
    let method = if args.proof_batch > 0 {
        format!("GetInclusionProofs ({} per request)", args.proof_batch)
    } else {
        "GetInclusionProof".to_string()
    };
    println!(
        "{} {method}: {:.0} proofs/s ({} connections x {} in flight, random leaves of a {size}-leaf log)",
        if args.sink { "proof sink" } else { "ledger" },
        done.load(Ordering::Relaxed) as f64 / elapsed,
        channels.len(),
        args.inflight
    );
    Ok(())
}

/// Prints checkpoint-lag and fsync figures from the server's histograms.
async fn scrape(url: &str) -> anyhow::Result<()> {
    let rest = url
        .strip_prefix("http://")
        .context("--metrics must be http://host:port/metrics")?;
    let (host, path) = rest
        .split_once('/')
        .map_or((rest, "metrics".to_string()), |(h, p)| (h, p.to_string()));
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut s = tokio::net::TcpStream::connect(host).await?;
    s.write_all(format!("GET /{path} HTTP/1.1\r\nhost: {host}\r\n\r\n").as_bytes())
        .await?;
    let mut text = String::new();
    s.read_to_string(&mut text).await?;
    for name in [
        "auditledger_checkpoint_lag_seconds",
        "auditledger_fsync_seconds",
        "auditledger_ack_latency_seconds",
    ] {
        let buckets: Vec<(f64, f64)> = text
            .lines()
            .filter_map(|l| l.strip_prefix(&format!("{name}_bucket{{le=\"")))
            .filter_map(|l| {
                let (le, count) = l.split_once("\"} ")?;
                Some((
                    if le == "+Inf" {
                        f64::INFINITY
                    } else {
                        le.parse().ok()?
                    },
                    count.parse().ok()?,
                ))
            })
            .collect();
        let Some(&(_, total)) = buckets.last() else {
            continue;
        };
        let quantile = |q: f64| {
            buckets
                .iter()
                .find(|(_, c)| *c >= q * total)
                .map_or(f64::INFINITY, |(le, _)| *le)
        };
        println!(
            "{name}: {total} samples, p50 ≤ {} s, p99 ≤ {} s (bucket bounds)",
            quantile(0.5),
            quantile(0.99)
        );
    }
    if let Some(line) = text
        .lines()
        .find(|l| l.starts_with("auditledger_batch_events_mean "))
    {
        println!("{line}");
    }
    Ok(())
}

/// Serves an in-process sink on a loopback port (`at`, or a free one) with TCP_NODELAY (as the
/// real server does); returns its URL.
async fn serve_on_loopback(
    router: tonic::transport::server::Router,
    at: Option<std::net::SocketAddr>,
) -> anyhow::Result<String> {
    let at = at.unwrap_or_else(|| ([127, 0, 0, 1], 0).into());
    if !at.ip().is_loopback() {
        bail!("the sink serves on loopback addresses only, not {at}");
    }
    let listener = tokio::net::TcpListener::bind(at).await?;
    let addr = listener.local_addr()?;
    tokio::spawn(router.serve_with_incoming(
        tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
    ));
    Ok(format!("http://{addr}"))
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        if args.proofs {
            let target = if args.sink {
                serve_on_loopback(
                    Server::builder().add_service(pb::log_server::LogServer::new(ProofSink::new())),
                    None,
                )
                .await?
            } else {
                args.target.clone()
            };
            return proofs(args, target).await;
        }
        let target = if args.sink {
            serve_on_loopback(
                Server::builder()
                    .initial_stream_window_size(Some(8 << 20))
                    .initial_connection_window_size(Some(32 << 20))
                    .add_service(
                        pb::ingest_server::IngestServer::new(Sink {
                            durable: match &args.durable {
                                Some(dir) => Some(Arc::new(DurableSink::open(dir)?)),
                                None => None,
                            },
                        })
                        .max_decoding_message_size(64 << 20),
                    ),
                args.serve_sink,
            )
            .await?
        } else {
            args.target.clone()
        };
        if args.serve_sink.is_some() {
            println!("sink serving on {target}");
            return std::future::pending().await;
        }
        let metrics = args.metrics.clone();
        appends(args, target).await?;
        if let Some(url) = metrics {
            scrape(&url).await?;
        }
        Ok(())
    })
}
