//! Storage faults seen through the gRPC server (docs/reliability.md "Storage faults").
//!
//! Two setups:
//! - the real `Ingest`/`Log` services, in process, over a ledger whose RocksDB store is wrapped
//!   in [`FaultyStore`] (the test builds the [`AppState`] itself: there is no runtime switch a
//!   production server could turn on by mistake), with a real tonic client over loopback;
//! - the real `auditledger serve` process with its hot store on a small tmpfs that really
//!   fills up (ENOSPC from the kernel, not an injected error).
//!
//! Both prove: while the store fails, `Append` and `AppendStream` answer UNAVAILABLE naming the
//! cause and acknowledge nothing; what was refused is not readable; when the store recovers,
//! ingest resumes without a restart at the next index (no hole, no duplicate); fsck is clean.

mod common;

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use tonic_health::pb as pb_health;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use auditledger_ingest::config::Config;
use auditledger_ingest::metrics::ServerMetrics;
use auditledger_ingest::quotas::Quotas;
use auditledger_ingest::seqtrack::SeqTracker;
use auditledger_ingest::server::{AppState, IngestService, LogService};
use auditledger_ingest::syslog::SystemLog;
use auditledger_ingest::{auth, hardening, open, tiering};
use auditledger_ledger::Ledger as HotLedger;
use auditledger_ledger::store::StoreError;
use auditledger_ledger::store::faulty::{FaultyStore, WriteFaults};
use auditledger_ledger::store::rocks::RocksStore;
use auditledger_proto::v1 as pb;
use common::{Ledger, Server, authed, event, rt};
use pb::ingest_client::IngestClient;
use pb::log_client::LogClient;
use tokio::sync::watch;
use tonic::Code;
use tonic::transport::Channel;

/// The Ingest and Log services in this process, over a ledger on a [`FaultyStore`].
struct InProcess {
    addr: std::net::SocketAddr,
    store: Arc<FaultyStore<RocksStore>>,
    ledger: Arc<HotLedger>,
    state: Arc<AppState>,
    shutdown: watch::Sender<bool>,
    server: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
}

impl InProcess {
    /// Opens the ledger of `dir` the way `serve` does, but over a [`FaultyStore`], and serves
    /// `Ingest` and `Log` on 127.0.0.1. Call inside a runtime.
    async fn start(dir: &Ledger) -> InProcess {
        let config = Config::load(Path::new(&dir.config())).expect("config");
        let keyring = Arc::new(RwLock::new(open::load_keyring(&config).expect("keyring")));
        let rocks =
            RocksStore::open(&config.data_dir(), &open::rocks_options(&config)).expect("hot store");
        let store = Arc::new(FaultyStore::new(rocks));
        let ledger = Arc::new(
            HotLedger::open(store.clone(), keyring, config.ledger_options()).expect("ledger"),
        );
        let syslog = SystemLog::start(ledger.clone(), config.auth.default_environment.clone());
        let archiver = Arc::new(
            tiering::archiver(&config, ledger.clone(), &syslog).expect("archiver over the tiers"),
        );
        let (shutdown, shutdown_rx) = watch::channel(false);
        let metrics = Arc::new(ServerMetrics::default());
        let state = Arc::new(AppState {
            quotas: Quotas::new(config.quotas.clone()),
            seq: SeqTracker::new(config.server.seq_gap_grace),
            auth: auth::Authenticator::new(config.tokens_path(), &config.auth.client_cert)
                .expect("tokens"),
            ledger: ledger.clone(),
            syslog,
            metrics: metrics.clone(),
            shutdown: shutdown_rx.clone(),
            archiver,
            denials: hardening::DenialLimiter::new(
                config.server.denial_window,
                4096,
                metrics.hardening.clone(),
            ),
            config,
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let router = tonic::transport::Server::builder()
            .add_service(pb::ingest_server::IngestServer::new(IngestService(
                state.clone(),
            )))
            .add_service(pb::log_server::LogServer::new(LogService(state.clone())));
        let mut stop = shutdown_rx;
        let server = tokio::spawn(router.serve_with_incoming_shutdown(
            tonic::transport::server::TcpIncoming::from(listener),
            async move {
                let _ = stop.wait_for(|s| *s).await;
            },
        ));
        InProcess {
            addr,
            store,
            ledger,
            state,
            shutdown,
            server,
        }
    }

    async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.addr))
            .unwrap()
            .connect()
            .await
            .unwrap()
    }

    /// Stops serving, commits the queued system records and closes the ledger.
    async fn stop(self) -> Arc<FaultyStore<RocksStore>> {
        let _ = self.shutdown.send(true);
        self.server.await.unwrap().unwrap();
        self.state.syslog.close().await;
        let ledger = self.ledger.clone();
        tokio::task::spawn_blocking(move || ledger.close())
            .await
            .unwrap()
            .unwrap();
        self.store
    }
}

fn batch(from: u64, n: u64) -> Vec<pb::AuditEvent> {
    (from..from + n).map(|i| event("acme", "prod", i)).collect()
}

async fn append(
    ingest: &mut IngestClient<Channel>,
    events: &[pb::AuditEvent],
    token: &str,
) -> Result<Vec<pb::Receipt>, tonic::Status> {
    ingest
        .append(authed(
            pb::AppendRequest {
                events: events.to_vec(),
                wait_for_checkpoint: false,
            },
            token,
        ))
        .await
        .map(|r| r.into_inner().receipts)
}

/// Sends `requests` on one AppendStream; one response per request, in order.
async fn append_stream(
    ingest: &mut IngestClient<Channel>,
    requests: Vec<Vec<pb::AuditEvent>>,
    token: &str,
) -> Vec<pb::AppendResponse> {
    let n = requests.len();
    let stream = tokio_stream::iter(requests.into_iter().map(|events| pb::AppendRequest {
        events,
        wait_for_checkpoint: false,
    }));
    let mut responses = ingest
        .append_stream(authed(stream, token))
        .await
        .expect("stream opens")
        .into_inner();
    let mut out = Vec::with_capacity(n);
    while let Some(resp) = responses.message().await.expect("stream answers") {
        out.push(resp);
    }
    assert_eq!(out.len(), n, "one response per request");
    out
}

/// The leaf index of `event_id` as the Log service reports it (NotFound: not stored).
async fn lookup(
    log: &mut LogClient<Channel>,
    event_id: &str,
    token: &str,
) -> Result<u64, tonic::Status> {
    log.get_inclusion_proof(authed(
        pb::GetInclusionProofRequest {
            tenant_id: "acme".into(),
            environment: "prod".into(),
            key: Some(pb::get_inclusion_proof_request::Key::EventId(
                event_id.into(),
            )),
            tree_size: 0,
            justification: "storage fault test".into(),
        },
        token,
    ))
    .await
    .map(|p| p.into_inner().leaf_index)
}

fn assert_unavailable_naming(status: &tonic::Status, cause: &str) {
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(
        status.message().contains(cause),
        "message must name the cause ({cause:?}): {}",
        status.message()
    );
}

#[test]
fn injected_store_faults_refuse_with_unavailable_acknowledge_nothing_and_recover_without_restart() {
    let dir = Ledger::init("");
    let gw = dir.token("gateway", &["acme"], &["prod"], None);
    let inv = dir.token("investigator", &["acme"], &["prod"], Some("1h"));
    let keys = dir.keys();
    let rt = rt();
    let store = rt.block_on(async {
        let server = InProcess::start(&dir).await;
        let mut ingest = IngestClient::new(server.channel().await);
        let mut log = LogClient::new(server.channel().await);

        let first = batch(1, 10);
        let receipts = append(&mut ingest, &first, &gw).await.unwrap();
        assert_eq!(
            receipts.iter().map(|r| r.leaf_index).collect::<Vec<_>>(),
            (0..10).collect::<Vec<_>>()
        );
        server
            .ledger
            .checkpoint_now()
            .expect("checkpoint of the first 10");

        // Disk full: every synced write fails until space returns.
        server.store.set_write_faults(WriteFaults {
            fail_all: Some(StoreError::NoSpace(
                "No space left on device (injected)".into(),
            )),
            durable_only: true,
            ..Default::default()
        });
        let refused = batch(11, 10);
        let err = append(&mut ingest, &refused, &gw).await.unwrap_err();
        assert_unavailable_naming(&err, "storage full: No space left on device");

        // Concurrent appenders (each its own connection, so they can share one group commit):
        // every one of them is refused.
        let concurrent: Vec<Vec<pb::AuditEvent>> = (0..6).map(|c| batch(100 + c * 10, 3)).collect();
        let mut tasks = Vec::new();
        for events in concurrent.clone() {
            let channel = server.channel().await;
            let gw = gw.clone();
            tasks.push(tokio::spawn(async move {
                append(&mut IngestClient::new(channel), &events, &gw).await
            }));
        }
        for task in tasks {
            let err = task
                .await
                .unwrap()
                .expect_err("no receipt while the disk is full");
            assert_unavailable_naming(&err, "No space left on device");
        }

        // AppendStream: each request answered in-stream with UNAVAILABLE, no receipts.
        let streamed = vec![batch(200, 4), batch(204, 4)];
        for resp in append_stream(&mut ingest, streamed.clone(), &gw).await {
            assert!(resp.receipts.is_empty(), "no receipt may be sent: {resp:?}");
            let e = resp.error.expect("an in-stream error");
            assert_eq!(e.code, Code::Unavailable as i32, "{e:?}");
            assert!(e.message.contains("No space left on device"), "{e:?}");
        }

        // An I/O error (not disk full) is reported as such.
        server.store.set_write_faults(WriteFaults {
            fail_all: Some(StoreError::Io("Input/output error (injected)".into())),
            durable_only: true,
            ..Default::default()
        });
        let err = append(&mut ingest, &batch(300, 2), &gw).await.unwrap_err();
        assert_unavailable_naming(&err, "storage I/O error: Input/output error");

        // Nothing refused is readable, and the log did not grow.
        let all_refused: Vec<&pb::AuditEvent> = refused
            .iter()
            .chain(concurrent.iter().flatten())
            .chain(streamed.iter().flatten())
            .collect();
        for e in &all_refused {
            let status = lookup(&mut log, &e.event_id, &inv).await.unwrap_err();
            assert_eq!(
                status.code(),
                Code::NotFound,
                "refused event {}: {status:?}",
                e.event_id
            );
        }
        let hot = server.ledger.log("acme", "prod").expect("log");
        assert_eq!(hot.tree_size(), 10, "refused appends must not grow the log");

        // Space returns: ingest resumes on the same server, at the next index.
        server.store.set_write_faults(WriteFaults::default());
        let receipts = append(&mut ingest, &refused, &gw).await.expect("recovered");
        for (i, r) in receipts.iter().enumerate() {
            assert!(!r.duplicate, "a refused event was not stored, so it is new");
            assert_eq!(r.leaf_index, 10 + i as u64, "no hole, no duplicate");
        }
        let resps = append_stream(&mut ingest, streamed.clone(), &gw).await;
        let streamed_indexes: Vec<u64> = resps
            .iter()
            .flat_map(|r| {
                assert!(r.error.is_none(), "{:?}", r.error);
                r.receipts.iter().map(|x| x.leaf_index)
            })
            .collect();
        assert_eq!(streamed_indexes, (20..28).collect::<Vec<_>>());
        server
            .ledger
            .checkpoint_now()
            .expect("checkpoint after recovery");
        for (i, e) in first.iter().chain(&refused).enumerate() {
            assert_eq!(lookup(&mut log, &e.event_id, &inv).await.unwrap(), i as u64);
        }
        let (ok, failed) = server.store.write_counts();
        assert!(failed >= 4, "the faults were hit ({failed} failed writes)");
        assert!(ok > 0);
        server.stop().await
    });
    let report = auditledger_ledger::fsck::check(store.inner(), &keys).expect("fsck reads");
    assert!(report.is_clean(), "fsck: {:?}", report.problems());
}

/// A tmpfs mounted for one test, unmounted (lazily) when dropped.
struct Tmpfs {
    dir: PathBuf,
}

impl Tmpfs {
    fn mount(dir: PathBuf, size: &str) -> Tmpfs {
        std::fs::create_dir_all(&dir).unwrap();
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&dir)
            .output()
            .expect("run mount(8)");
        assert!(
            out.status.success(),
            "this test needs to mount a {size} tmpfs at {} to fill a real filesystem \
             (root with CAP_SYS_ADMIN, as on the CI runner): mount said {}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Tmpfs { dir }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.dir)
            .status();
    }
}

/// Fills the filesystem of `path` with one file of zeros until ENOSPC; returns its size.
fn fill(path: &Path) -> u64 {
    use std::io::Write as _;
    let mut f = std::fs::File::create(path).unwrap();
    let chunk = vec![0u8; 64 << 10];
    let mut written = 0u64;
    // Bounded: the filesystem is a few MiB.
    for _ in 0..(1 << 16) {
        match f.write(&chunk) {
            Ok(0) => break,
            Ok(n) => written += n as u64,
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
            Err(e) => panic!("filling {}: {e}", path.display()),
        }
    }
    let _ = f.sync_all();
    written
}

#[test]
fn real_disk_full_refuses_with_unavailable_and_recovers_when_space_returns() {
    let dir = Ledger::init("ledger.checkpoint_interval = \"100ms\"");
    let gw = dir.token("gateway", &["acme"], &["prod"], None);
    let inv = dir.token("investigator", &["acme"], &["prod"], Some("1h"));
    let fs = Tmpfs::mount(dir.tmp.path().join("small-disk"), "24m");
    let hot = fs.dir.join("hot");
    let filler = fs.dir.join("filler");
    // Small memtables: flushes (and the WAL preallocation) stay well inside the tmpfs.
    let envs = [
        ("AUDITLEDGER_SERVER_METRICS_LISTEN", "127.0.0.1:0"),
        ("AUDITLEDGER_LEDGER_DATA_DIR", hot.to_str().unwrap()),
        ("AUDITLEDGER_LEDGER_WRITE_BUFFER_BYTES", "1048576"),
        ("AUDITLEDGER_LEDGER_BLOCK_CACHE_BYTES", "4194304"),
    ];
    let server = Server::start_with(&dir, &["--listen", "127.0.0.1:0"], &envs);
    let rt = rt();
    let (acked, refused) = rt.block_on(async {
        let mut ingest = server.ingest().await;
        let mut log = server.log().await;
        let mut acked: Vec<(pb::AuditEvent, u64)> = Vec::new();
        let warm = batch(1, 50);
        // With a signed checkpoint, so that lookups of refused events can answer NotFound.
        let receipts = common::append_proven(&mut ingest, warm.clone(), &gw)
            .await
            .receipts;
        for (e, r) in warm.iter().zip(receipts) {
            acked.push((e.clone(), r.leaf_index));
        }
        let filled = fill(&filler);
        assert!(filled > 0, "the filler took the free space");

        // Append until the store hits ENOSPC (the WAL may have preallocated room for a few
        // batches first). Every batch is either acknowledged or refused with UNAVAILABLE.
        let mut refused: Option<(Vec<pb::AuditEvent>, tonic::Status)> = None;
        for round in 0..2000u64 {
            let events = batch(1000 + round * 200, 200);
            match append(&mut ingest, &events, &gw).await {
                Ok(receipts) => {
                    for (e, r) in events.iter().zip(receipts) {
                        acked.push((e.clone(), r.leaf_index));
                    }
                }
                Err(status) => {
                    refused = Some((events, status));
                    break;
                }
            }
        }
        let (refused, status) = refused.expect("a full disk must refuse appends");
        assert_unavailable_naming(&status, "No space left on device");
        assert!(
            status.message().starts_with("storage full"),
            "ENOSPC is reported as storage full: {}",
            status.message()
        );
        // Refused while full, on the stream too.
        for resp in append_stream(&mut ingest, vec![batch(900_000, 5)], &gw).await {
            assert!(resp.receipts.is_empty(), "{resp:?}");
            let e = resp.error.expect("in-stream error");
            assert_eq!(e.code, Code::Unavailable as i32, "{e:?}");
        }
        for e in refused.iter().take(3) {
            let status = lookup(&mut log, &e.event_id, &inv).await.unwrap_err();
            assert_eq!(status.code(), Code::NotFound, "{status:?}");
        }

        // Space returns. RocksDB's error after a failed WAL write is sticky (its background
        // error puts the DB in read-only mode, and rust-rocksdb 0.25 / the C API have no
        // `Resume`): this process keeps refusing, with a message that says what to do.
        std::fs::remove_file(&filler).unwrap();
        let status = append(&mut ingest, &refused, &gw).await.unwrap_err();
        assert_unavailable_naming(&status, "then restart the server");
        // Health says so too: the ingest service is not serving (the server checks every
        // second; bounded wait), the read-only services still are.
        let mut health = HealthClient::new(server.channel().await);
        let status_of = |service: &str| pb_health::HealthCheckRequest {
            service: service.into(),
        };
        let mut ingest_status = ServingStatus::Serving as i32;
        for _ in 0..50 {
            ingest_status = health
                .check(status_of("auditledger.v1.Ingest"))
                .await
                .unwrap()
                .into_inner()
                .status;
            if ingest_status == ServingStatus::NotServing as i32 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        assert_eq!(ingest_status, ServingStatus::NotServing as i32);
        let log_status = health
            .check(status_of("auditledger.v1.Log"))
            .await
            .unwrap()
            .into_inner()
            .status;
        assert_eq!(log_status, ServingStatus::Serving as i32);
        (acked, refused)
    });
    // What operators see besides the status: failed commits and rejects by reason.
    let text = common::metrics_text(server.metrics.as_deref().expect("metrics listener"));
    let failures = text
        .lines()
        .find_map(|l| l.strip_prefix("auditledger_commit_failures_total "))
        .and_then(|n| n.trim().parse::<u64>().ok())
        .expect("auditledger_commit_failures_total");
    assert!(failures >= 2, "{failures} failed commits");
    assert!(
        text.contains("auditledger_rejects_total{tenant=\"acme\",reason=\"unavailable\"}"),
        "{text}"
    );
    // The shutdown cannot sign final checkpoints on a store that refuses writes: it stops
    // anyway, and says so (non-zero exit).
    let _ = server.stop();

    // Restarted with space back, ingest resumes right after the last acknowledged index.
    let server = Server::start_with(&dir, &["--listen", "127.0.0.1:0"], &envs);
    let acked = rt.block_on(async {
        let mut ingest = server.ingest().await;
        let mut acked = acked;
        let next = acked.len() as u64;
        let receipts = append(&mut ingest, &refused, &gw)
            .await
            .expect("ingest resumes after the restart");
        for (i, (e, r)) in refused.iter().zip(&receipts).enumerate() {
            // A refused group is normally absent; should RocksDB ever have kept it (a whole
            // WAL record whose sync failed), it is at exactly these indexes and the receipts
            // say duplicate. Either way: no hole, no second copy.
            assert_eq!(r.leaf_index, next + i as u64, "no hole, no duplicate");
            acked.push((e.clone(), r.leaf_index));
        }
        let more = batch(2_000_000, 20);
        let receipts = append(&mut ingest, &more, &gw).await.unwrap();
        for (i, (e, r)) in more.iter().zip(&receipts).enumerate() {
            assert!(!r.duplicate);
            assert_eq!(r.leaf_index, next + 200 + i as u64);
            acked.push((e.clone(), r.leaf_index));
        }
        acked
    });
    let mut indexes: Vec<u64> = acked.iter().map(|(_, i)| *i).collect();
    indexes.sort_unstable();
    assert_eq!(
        indexes,
        (0..acked.len() as u64).collect::<Vec<_>>(),
        "acknowledged indexes are exactly 0..n"
    );
    assert!(server.stop(), "clean shutdown after recovery");

    // Every acknowledged event is where its receipt said, after another restart; fsck is
    // clean.
    let server = Server::start_with(&dir, &["--listen", "127.0.0.1:0"], &envs);
    rt.block_on(async {
        let mut log = server.log().await;
        let mut checked = 0;
        for (e, index) in acked.iter().step_by(11).chain(acked.last()) {
            assert_eq!(lookup(&mut log, &e.event_id, &inv).await.unwrap(), *index);
            checked += 1;
        }
        assert!(checked > 10);
    });
    assert!(server.stop());
    let config = dir.config();
    let (ok, text) = common::output(common::run(
        &["fsck", "--config", &config],
        &[("AUDITLEDGER_LEDGER_DATA_DIR", hot.to_str().unwrap())],
    ));
    assert!(ok, "fsck after disk full: {text}");
    drop(fs);
}
