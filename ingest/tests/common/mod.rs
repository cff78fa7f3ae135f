//! Test harness: a real `auditledger serve` process on 127.0.0.1 with a fresh data directory,
//! tokens per role, and tonic clients.

#![allow(dead_code)]

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use auditledger_ledger::note::VerifierKey;
use auditledger_proto::v1 as pb;
use pb::ingest_client::IngestClient;
use pb::log_client::LogClient;
use tonic::transport::Channel;

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_auditledger")
}

pub fn run(args: &[&str], envs: &[(&str, &str)]) -> std::process::Output {
    let mut cmd = Command::new(bin());
    cmd.args(args).env_remove("AUDITLEDGER_CONFIG");
    for (k, v) in envs {
        cmd.env(k, v);
    }
    cmd.output().expect("run auditledger")
}

/// (exit 0, stdout + stderr) of a finished process.
pub fn output(out: std::process::Output) -> (bool, String) {
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// Runs `auditledger ARGS`; (exit 0, stdout + stderr).
pub fn cli(args: &[&str]) -> (bool, String) {
    output(run(args, &[]))
}

/// `auditledger archive --once --config CONFIG --tier TIER --older-than 0s`; (exit 0, output).
pub fn archive_once(config: &str, tier: &str) -> (bool, String) {
    cli(&[
        "archive",
        "--once",
        "--config",
        config,
        "--tier",
        tier,
        "--older-than",
        "0s",
    ])
}

/// A small multi-threaded runtime for a test's gRPC clients.
pub fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// A ledger directory with `init` done.
pub struct Ledger {
    pub tmp: tempfile::TempDir,
    pub dir: PathBuf,
}

impl Ledger {
    pub fn init(extra_config: &str) -> Ledger {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("ledger");
        let out = run(&["init", dir.to_str().unwrap()], &[]);
        assert!(
            out.status.success(),
            "init: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        if !extra_config.is_empty() {
            let path = dir.join("config.toml");
            let text = std::fs::read_to_string(&path).unwrap();
            std::fs::write(&path, apply_overrides(&text, extra_config)).unwrap();
        }
        Ledger { tmp, dir }
    }

    /// One archiver pass moving every full segment one tier down to `tier` (server stopped);
    /// asserts it succeeded and returns its output.
    pub fn archive(&self, tier: &str) -> String {
        let (ok, text) = archive_once(&self.config(), tier);
        assert!(ok, "archive --tier {tier}: {text}");
        text
    }

    pub fn config(&self) -> String {
        self.dir.join("config.toml").to_str().unwrap().to_owned()
    }

    /// Creates a token and returns it.
    pub fn token(&self, role: &str, tenants: &[&str], envs: &[&str], ttl: Option<&str>) -> String {
        let config = self.config();
        let mut args = vec!["token", "create", "--config", &config, "--role", role];
        for t in tenants {
            args.extend(["--tenant", t]);
        }
        for e in envs {
            args.extend(["--env", e]);
        }
        if let Some(ttl) = ttl {
            args.extend(["--ttl", ttl]);
        }
        let out = run(&args, &[]);
        assert!(
            out.status.success(),
            "token create: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .last()
            .unwrap()
            .to_owned()
    }

    pub fn keys(&self) -> Vec<VerifierKey> {
        let out = run(&["keys", "list", "--config", &self.config()], &[]);
        assert!(out.status.success());
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(|l| VerifierKey::parse(l).unwrap())
            .collect()
    }
}

/// Replaces `key = value` lines of the config text by `section.key = value` overrides.
fn apply_overrides(text: &str, overrides: &str) -> String {
    let mut out = text.to_owned();
    for line in overrides.lines().filter(|l| !l.trim().is_empty()) {
        let (path, value) = line.split_once('=').unwrap();
        let (section, key) = path.trim().split_once('.').unwrap();
        let header = format!("[{section}]\n");
        let start = out
            .find(&header)
            .unwrap_or_else(|| panic!("no section {section}"));
        let body_start = start + header.len();
        let body_end = out[body_start..]
            .find("\n[")
            .map_or(out.len(), |i| body_start + i + 1);
        let body = &out[body_start..body_end];
        let new_body = match body
            .lines()
            .position(|l| l.starts_with(&format!("{key} =")))
        {
            Some(_) => {
                body.lines()
                    .map(|l| {
                        if l.starts_with(&format!("{key} =")) {
                            format!("{key} = {}", value.trim())
                        } else {
                            l.to_owned()
                        }
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
                    + "\n"
            }
            None => format!("{key} = {}\n{body}", value.trim()),
        };
        out.replace_range(body_start..body_end, &new_body);
    }
    out
}

/// A running server; SIGTERM on drop.
pub struct Server {
    pub child: Child,
    pub addr: String,
    pub scheme: &'static str,
    /// host:port of /metrics, when enabled.
    pub metrics: Option<String>,
}

/// Reads a starting server's stdout on a thread: the gRPC URL it announces ("auditledger
/// listening on …") and its metrics address ("auditledger metrics on http://…/metrics").
pub fn announced_addresses(
    stdout: std::process::ChildStdout,
) -> (mpsc::Receiver<String>, mpsc::Receiver<String>) {
    let (tx, rx) = mpsc::channel();
    let (mtx, mrx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(addr) = line.strip_prefix("auditledger listening on ") {
                let _ = tx.send(addr.to_owned());
            } else if let Some(m) = line.strip_prefix("auditledger metrics on http://") {
                let _ = mtx.send(m.trim_end_matches("/metrics").to_owned());
            }
        }
    });
    (rx, mrx)
}

impl Server {
    pub fn start(ledger: &Ledger) -> Server {
        Self::start_with(
            ledger,
            &["--listen", "127.0.0.1:0"],
            &[("AUDITLEDGER_SERVER_METRICS_LISTEN", "127.0.0.1:0")],
        )
    }

    pub fn start_with(ledger: &Ledger, args: &[&str], envs: &[(&str, &str)]) -> Server {
        let config = ledger.config();
        let mut cmd = Command::new(bin());
        cmd.args(["serve", "--config", &config])
            .args(args)
            .env_remove("AUDITLEDGER_CONFIG")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn serve");
        let stdout = child.stdout.take().unwrap();
        let stderr = child.stderr.take().unwrap();
        let (rx, mrx) = announced_addresses(stdout);
        // Keep the server's logs visible in test output on failure.
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("[server] {line}");
            }
        });
        let url = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(url) => url,
            Err(_) => {
                let _ = child.kill();
                panic!("server did not start within 60 s");
            }
        };
        let (scheme, addr) = url.split_once("://").unwrap();
        Server {
            child,
            addr: addr.to_owned(),
            scheme: if scheme == "https" { "https" } else { "http" },
            metrics: mrx.try_recv().ok(),
        }
    }

    pub fn url(&self) -> String {
        format!("{}://{}", self.scheme, self.addr)
    }

    pub async fn channel(&self) -> Channel {
        Channel::from_shared(self.url())
            .unwrap()
            .connect()
            .await
            .unwrap()
    }

    pub async fn ingest(&self) -> IngestClient<Channel> {
        IngestClient::new(self.channel().await).max_decoding_message_size(64 << 20)
    }

    pub async fn log(&self) -> LogClient<Channel> {
        LogClient::new(self.channel().await).max_decoding_message_size(64 << 20)
    }

    /// SIGTERM and wait; returns whether it exited successfully.
    pub fn stop(mut self) -> bool {
        self.terminate()
    }

    fn terminate(&mut self) -> bool {
        // SAFETY: plain kill(2) on our own child's pid.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        for _ in 0..600 {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.success();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        false
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.terminate();
        }
    }
}

pub fn authed<T>(msg: T, token: &str) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    req.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    req
}

/// A valid event with a fresh UUIDv7.
/// Appends `events` with `wait_for_checkpoint` (receipts with proofs and the checkpoint).
pub async fn append_proven(
    ingest: &mut IngestClient<Channel>,
    events: Vec<pb::AuditEvent>,
    token: &str,
) -> pb::AppendResponse {
    ingest
        .append(authed(
            pb::AppendRequest {
                events,
                wait_for_checkpoint: true,
            },
            token,
        ))
        .await
        .unwrap()
        .into_inner()
}

pub fn event(tenant: &str, env: &str, gateway_seq: u64) -> pb::AuditEvent {
    pb::AuditEvent {
        event_id: uuid::Uuid::now_v7().to_string(),
        event_kind: pb::EventKind::ToolCall as i32,
        schema_version: 1,
        tenant_id: tenant.into(),
        environment: env.into(),
        occurred_at: 1_763_700_000_000_000_000 + gateway_seq,
        gateway_id: "gw-test".into(),
        gateway_seq,
        tool_server: "github".into(),
        tool_name: "create_issue".into(),
        user_id: "alice".into(),
        session_id: "s-1".into(),
        correlation_id: "c-1".into(),
        trace_id: format!("{:032x}", gateway_seq + 1),
        decision: pb::Decision::Allow as i32,
        ..Default::default()
    }
}

pub fn metrics_text(addr: &str) -> String {
    use std::io::{Read as _, Write as _};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\n\r\n")
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

pub fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    for _ in 0..200 {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("timed out waiting for {what}");
}

pub fn path_str(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Every event of the `_system` log of environment `prod`, read as its admin (`GetEntries` up
/// to the latest checkpoint), polled every 100 ms for up to 10 s until `done` accepts them.
/// Returns the last read either way; callers assert on it.
#[allow(dead_code)] // not every test binary reads the system log
pub async fn system_events(
    server: &Server,
    admin: &str,
    done: impl Fn(&[pb::AuditEvent]) -> bool,
) -> Vec<pb::AuditEvent> {
    let mut log = server.log().await;
    let mut events = Vec::new();
    for _ in 0..100 {
        events.clear();
        let size = match log
            .get_checkpoint(authed(
                pb::GetCheckpointRequest {
                    tenant_id: "_system".into(),
                    environment: "prod".into(),
                    tree_size: 0,
                },
                admin,
            ))
            .await
        {
            Ok(c) => {
                let note = c.into_inner().note;
                let body = note.split("\n\n").next().unwrap_or_default().to_owned() + "\n";
                auditledger_ledger::checkpoint::Checkpoint::parse_body(&body)
                    .map_or(0, |c| c.tree_size)
            }
            Err(_) => 0,
        };
        if size > 0 {
            let mut entries = log
                .get_entries(authed(
                    pb::GetEntriesRequest {
                        tenant_id: "_system".into(),
                        environment: "prod".into(),
                        start: 0,
                        end: size,
                        justification: "test review of the system log".into(),
                    },
                    admin,
                ))
                .await
                .unwrap()
                .into_inner();
            while let Some(e) = entries.message().await.unwrap() {
                let record = auditledger_ledger::event::decode_leaf_strict(&e.leaf).unwrap();
                events.push(record.event.unwrap());
            }
        }
        if done(&events) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    events
}
