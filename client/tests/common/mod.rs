//! Test harness for the client against the REAL `auditledger serve` (built by the workspace
//! build next to this test binary): a ledger directory, tokens, a server on a chosen loopback
//! port that can be stopped, SIGKILLed and restarted, and a reader of the log's leaves.

#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use auditledger_client::{AuditEvent, Decision, EventKind};
use auditledger_ledger::event::decode_leaf;
use auditledger_ledger::note::VerifierKey;
use auditledger_proto::v1 as pb;

/// `auditledger` from the same target directory (AUDITLEDGER_BIN overrides).
pub fn server_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("AUDITLEDGER_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("test executable path");
    // target/debug/deps/<test> → target/debug/auditledger
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .map(|d| d.join("auditledger"))
        .expect("target dir");
    assert!(
        bin.exists(),
        "{} is missing: run `cargo build --workspace --all-targets` first (or set AUDITLEDGER_BIN)",
        bin.display()
    );
    bin
}

pub fn sim_bin() -> &'static str {
    env!("CARGO_BIN_EXE_auditledger-gateway-sim")
}

fn cli(args: &[&str]) -> String {
    let out = Command::new(server_bin())
        .args(args)
        .env_remove("AUDITLEDGER_CONFIG")
        .output()
        .expect("run auditledger");
    assert!(
        out.status.success(),
        "auditledger {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 output")
}

/// A ledger directory with `init` done.
pub struct Ledger {
    pub tmp: tempfile::TempDir,
    pub dir: PathBuf,
}

impl Ledger {
    /// `overrides`: `section.key = value` lines replacing keys of the generated config.
    pub fn init(overrides: &[(&str, &str, &str)]) -> Ledger {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("ledger");
        cli(&["init", dir.to_str().expect("utf-8 path")]);
        let ledger = Ledger { tmp, dir };
        if !overrides.is_empty() {
            let path = ledger.dir.join("config.toml");
            let mut text = std::fs::read_to_string(&path).expect("config");
            for (section, key, value) in overrides {
                let header = format!("[{section}]\n");
                let at = text
                    .find(&header)
                    .unwrap_or_else(|| panic!("config has no [{section}]"))
                    + header.len();
                let body_end = text[at..].find("\n[").map_or(text.len(), |i| at + i + 1);
                let body: Vec<String> = text[at..body_end]
                    .lines()
                    .filter(|l| !l.starts_with(&format!("{key} =")))
                    .map(str::to_owned)
                    .collect();
                let new_body = format!("{key} = {value}\n{}\n", body.join("\n"));
                text.replace_range(at..body_end, &new_body);
            }
            std::fs::write(&path, text).expect("write config");
        }
        ledger
    }

    pub fn config(&self) -> String {
        self.dir
            .join("config.toml")
            .to_str()
            .expect("utf-8")
            .to_owned()
    }

    pub fn token(&self, role: &str) -> String {
        let config = self.config();
        let out = cli(&[
            "token", "create", "--config", &config, "--tenant", "demo", "--env", "dev", "--role",
            role,
        ]);
        out.lines().last().expect("token line").to_owned()
    }

    pub fn keys(&self) -> Vec<VerifierKey> {
        cli(&["keys", "list", "--config", &self.config()])
            .lines()
            .map(|l| VerifierKey::parse(l).expect("verifier key"))
            .collect()
    }
}

/// A free loopback port (bound, then released for the server to take).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

/// A running `auditledger serve`; SIGTERM and wait on drop.
pub struct Server {
    pub child: Child,
    pub port: u16,
}

impl Server {
    pub fn start(ledger: &Ledger, port: u16) -> Server {
        let listen = format!("127.0.0.1:{port}");
        let mut child = Command::new(server_bin())
            .args(["serve", "--config", &ledger.config(), "--listen", &listen])
            .env_remove("AUDITLEDGER_CONFIG")
            .env("AUDITLEDGER_SERVER_METRICS_LISTEN", "127.0.0.1:0")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn auditledger serve");
        let stdout = child.stdout.take().expect("stdout");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line.starts_with("auditledger listening on ") {
                    let _ = tx.send(());
                }
            }
        });
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("[server] {line}");
            }
        });
        if rx.recv_timeout(Duration::from_secs(60)).is_err() {
            let _ = child.kill();
            let _ = child.wait();
            panic!("server did not start on {listen} within 60 s");
        }
        Server { child, port }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// SIGKILL: no clean shutdown.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        std::mem::forget(self);
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // SAFETY: signalling our own child by pid.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let _ = self.child.wait();
    }
}

pub fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// Every leaf of the demo/dev log, in order (the tree size comes from GetEntries' OUT_OF_RANGE
/// message, which names it).
pub async fn leaves(url: &str, investigator: &str) -> Vec<pb::AuditEvent> {
    let mut log = pb::log_client::LogClient::connect(url.to_owned())
        .await
        .expect("connect Log");
    let entries = |end: u64| {
        let mut req = tonic::Request::new(pb::GetEntriesRequest {
            tenant_id: "demo".into(),
            environment: "dev".into(),
            start: 0,
            end,
            justification: "client test: delivery check".into(),
        });
        auth(&mut req, investigator);
        req
    };
    let size = match log.get_entries(entries(u64::MAX)).await {
        Ok(_) => panic!("GetEntries to u64::MAX succeeded"),
        Err(s) if s.code() == tonic::Code::NotFound => return Vec::new(),
        Err(s) => {
            assert_eq!(s.code(), tonic::Code::OutOfRange, "{s}");
            let size = s
                .message()
                .rsplit(' ')
                .next()
                .and_then(|n| n.parse::<u64>().ok());
            size.unwrap_or_else(|| panic!("no tree size in {:?}", s.message()))
        }
    };
    let mut out = Vec::new();
    if size == 0 {
        return out;
    }
    let mut stream = log
        .get_entries(entries(size))
        .await
        .expect("GetEntries")
        .into_inner();
    while let Some(entry) = stream.message().await.expect("entries stream") {
        let leaf = decode_leaf(&entry.leaf).expect("leaf decodes");
        out.push(leaf.event.expect("leaf has an event"));
    }
    assert_eq!(out.len() as u64, size);
    out
}

/// event_id → number of leaves carrying it.
pub fn counts(events: &[pb::AuditEvent]) -> HashMap<String, usize> {
    let mut m = HashMap::new();
    for e in events {
        *m.entry(e.event_id.clone()).or_insert(0) += 1;
    }
    m
}

pub fn auth<T>(req: &mut tonic::Request<T>, token: &str) {
    req.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("header"),
    );
}

pub fn now_nanos() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// A tool call event of the demo tenant, numbered by an attribute.
pub fn tool_call(i: usize) -> AuditEvent {
    AuditEvent {
        event_kind: EventKind::ToolCall as i32,
        tenant_id: "demo".into(),
        environment: "dev".into(),
        occurred_at: now_nanos(),
        tool_server: "github".into(),
        tool_name: "list_issues".into(),
        mcp_method: "tools/call".into(),
        decision: Decision::Allow as i32,
        attributes: [("test.index".to_owned(), i.to_string())].into(),
        ..Default::default()
    }
}

/// Lines a child process prints, collected by a thread.
pub fn lines_of(child: &mut Child) -> mpsc::Receiver<String> {
    let stdout = child.stdout.take().expect("child stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}
