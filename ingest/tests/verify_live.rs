//! `auditledger-verify` live checks (`--server`) and `monitor` against the real server over
//! loopback: checkpoint, inclusion and consistency checks, refused tokens, TLS with a client
//! certificate, and the monitor following a growing log, catching a rollback (data directory
//! restored from an old copy) and a fork (a second ledger signing with the same key).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use auditledger_proto::v1 as pb;
use base64::Engine as _;
use common::{Ledger, Server, authed, event, rt};

const TENANT: &str = "acme";
const ENV: &str = "prod";

fn verifier() -> PathBuf {
    Path::new(common::bin()).with_file_name("auditledger-verify")
}

/// Runs `auditledger-verify` with `args`; the token comes from `--token` only.
fn verify(args: &[&str]) -> Output {
    Command::new(verifier())
        .args(args)
        .env_remove("AUDITLEDGER_TOKEN")
        .output()
        .expect("run auditledger-verify")
}

fn text(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `--key` arguments for every verifier key of the ledger.
fn key_args(ledger: &Ledger) -> Vec<String> {
    ledger
        .keys()
        .iter()
        .flat_map(|k| ["--key".to_owned(), k.to_string()])
        .collect()
}

/// `--server … --token … --tenant acme --env prod`.
fn server_args(server: &Server, token: &str) -> Vec<String> {
    [
        "--server",
        &server.url(),
        "--token",
        token,
        "--tenant",
        TENANT,
        "--env",
        ENV,
    ]
    .map(str::to_owned)
    .to_vec()
}

fn args<'a>(parts: &'a [&'a [String]]) -> Vec<&'a str> {
    parts
        .iter()
        .flat_map(|p| p.iter().map(String::as_str))
        .collect()
}

/// Appends events with gateway sequence numbers `seqs` and waits for their checkpoint;
/// returns the response (receipts with proofs, checkpoint).
fn append(
    rt: &tokio::runtime::Runtime,
    server: &Server,
    gateway: &str,
    seqs: std::ops::Range<u64>,
) -> pb::AppendResponse {
    rt.block_on(async {
        server
            .ingest()
            .await
            .append(authed(
                pb::AppendRequest {
                    events: seqs.map(|i| event(TENANT, ENV, i)).collect(),
                    wait_for_checkpoint: true,
                },
                gateway,
            ))
            .await
            .unwrap()
            .into_inner()
    })
}

fn size_of(note: &str) -> u64 {
    let body = note.split("\n\n").next().unwrap().to_owned() + "\n";
    auditledger_ledger::checkpoint::Checkpoint::parse_body(&body)
        .unwrap()
        .tree_size
}

/// The protobuf JSON (grpcurl form) of a receipt's inclusion proof with its checkpoint.
fn proof_json(receipt: &pb::Receipt, checkpoint: &str) -> String {
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    let proof = receipt
        .proof
        .as_ref()
        .expect("proof with wait_for_checkpoint");
    serde_json::json!({
        "leafIndex": receipt.leaf_index.to_string(),
        "treeSize": proof.tree_size.to_string(),
        "hashes": proof.hashes.iter().map(|h| b64(h)).collect::<Vec<_>>(),
        "leafHash": b64(&receipt.leaf_hash),
        "checkpoint": { "note": checkpoint },
    })
    .to_string()
}

fn state_size(path: &Path) -> u64 {
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    assert_eq!(v["format"], "auditledger-monitor-state/1");
    let size = v["tree_size"].as_u64().unwrap();
    assert_eq!(size, size_of(v["checkpoint"].as_str().unwrap()));
    size
}

/// A running `auditledger-verify monitor`; killed on drop if still running.
struct Running(Option<std::process::Child>);

impl Running {
    /// SIGTERM, then wait (bounded) for it to exit; returns its output.
    fn terminate(&mut self) -> Output {
        let mut child = self.0.take().unwrap();
        // SAFETY: plain kill(2) on our own child's pid.
        unsafe {
            libc::kill(child.id() as i32, libc::SIGTERM);
        }
        for _ in 0..200 {
            if child.try_wait().unwrap().is_some() {
                return child.wait_with_output().unwrap();
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let _ = child.kill();
        let out = child.wait_with_output().unwrap();
        panic!("the monitor ignored SIGTERM: {}", text(&out));
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

#[test]
fn checkpoint_inclusion_and_consistency_against_the_server() {
    let ledger = Ledger::init("ledger.checkpoint_interval = \"50ms\"");
    let gateway = ledger.token("gateway", &[TENANT], &[ENV], None);
    let auditor = ledger.token("auditor", &[TENANT], &[ENV], None);
    let other_tenant = ledger.token("auditor", &["globex"], &[ENV], None);
    let keys = key_args(&ledger);
    let server = Server::start(&ledger);
    let rt = rt();
    let dir = ledger.tmp.path();

    let first = append(&rt, &server, &gateway, 1..4);
    let first_note = first.checkpoint.as_ref().unwrap().note.clone();
    let old_path = dir.join("old.checkpoint");
    std::fs::write(&old_path, &first_note).unwrap();
    let inclusion_path = dir.join("inclusion.json");
    std::fs::write(&inclusion_path, proof_json(&first.receipts[1], &first_note)).unwrap();

    // Latest checkpoint only (no FILE).
    let live = server_args(&server, &auditor);
    let out = verify(&args(&[&["checkpoint".into()], &keys, &live]));
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("OK: checkpoint of auditledger.local/acme/prod at tree size 3"),
        "{stdout}"
    );

    // Same size: the saved checkpoint is the server's.
    let old = old_path.to_str().unwrap().to_owned();
    let out = verify(&args(&[&["checkpoint".into(), old.clone()], &keys, &live]));
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("is the same"),
        "{}",
        text(&out)
    );

    // The log grows: the server proves it extends the saved checkpoint and the receipt's.
    let second = append(&rt, &server, &gateway, 4..9);
    let new_note = second.checkpoint.as_ref().unwrap().note.clone();
    assert!(size_of(&new_note) >= 8);
    let out = verify(&args(&[&["checkpoint".into(), old.clone()], &keys, &live]));
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("extends tree size 3 (consistency proof"),
        "{}",
        text(&out)
    );
    let inclusion = inclusion_path.to_str().unwrap().to_owned();
    let out = verify(&args(&[
        &["inclusion".into(), inclusion.clone()],
        &keys,
        &live,
    ]));
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("OK: leaf 1 is in auditledger.local/acme/prod at tree size 3"),
        "{stdout}"
    );
    assert!(stdout.contains("extends tree size 3"), "{stdout}");

    // consistency OLD NEW with the proof fetched from the server instead of --proof.
    let new_path = dir.join("new.checkpoint");
    std::fs::write(&new_path, &new_note).unwrap();
    let new = new_path.to_str().unwrap().to_owned();
    let out = verify(&args(&[
        &["consistency".into(), old.clone(), new.clone()],
        &keys,
        &live,
    ]));
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&format!(
            "at tree size {} extends tree size 3 (append-only)",
            size_of(&new_note)
        )),
        "{}",
        text(&out)
    );
    // Swapped, NEW cannot extend OLD.
    let out = verify(&args(&[
        &["consistency".into(), new.clone(), old.clone()],
        &keys,
        &live,
    ]));
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(stderr(&out).contains("larger than NEW"), "{}", text(&out));
    // Without --server and without --proof there is nothing to check against.
    let out = verify(&args(&[
        &["consistency".into(), old.clone(), new.clone()],
        &keys,
    ]));
    assert!(!out.status.success(), "{}", text(&out));
    assert!(stderr(&out).contains("--proof"), "{}", text(&out));

    // The token is also read from AUDITLEDGER_TOKEN.
    let out = Command::new(verifier())
        .args([
            "checkpoint",
            "--server",
            &server.url(),
            "--tenant",
            TENANT,
            "--env",
            ENV,
        ])
        .args(&keys)
        .env("AUDITLEDGER_TOKEN", &auditor)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));

    // Refusals name the call and the status.
    for (token, needle) in [
        (
            "not-a-token",
            "server refused GetCheckpoint: UNAUTHENTICATED",
        ),
        (
            other_tenant.as_str(),
            "server refused GetCheckpoint: PERMISSION_DENIED",
        ),
        (
            gateway.as_str(),
            "server refused GetCheckpoint: PERMISSION_DENIED",
        ),
    ] {
        let out = verify(&args(&[
            &["checkpoint".into(), old.clone()],
            &keys,
            &server_args(&server, token),
        ]));
        assert_eq!(out.status.code(), Some(1), "{}", text(&out));
        assert!(stderr(&out).contains(needle), "{needle}: {}", text(&out));
    }
    // A checkpoint of another log is not compared with this one.
    let out = verify(&args(&[
        &["checkpoint".into(), old.clone()],
        &keys,
        &[
            "--server",
            &server.url(),
            "--token",
            &auditor,
            "--tenant",
            "acme",
            "--env",
            "dev",
        ]
        .map(str::to_owned),
    ]));
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        stderr(&out).contains("check --tenant and --env"),
        "{}",
        text(&out)
    );
    // A key that did not sign the server's checkpoint.
    let stranger = auditledger_ledger::note::SignerKey::from_seed("auditledger.local", &[9; 32])
        .unwrap()
        .verifier()
        .to_string();
    let out = verify(&args(&[
        &["checkpoint".into(), "--key".into(), stranger],
        &live,
    ]));
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(stderr(&out).contains("does not verify"), "{}", text(&out));

    // Nobody listening: a clear connection error, bounded by the timeout.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let out = verify(&args(&[
        &["checkpoint".into()],
        &keys,
        &[
            "--server",
            &format!("http://127.0.0.1:{port}"),
            "--tenant",
            TENANT,
            "--env",
            ENV,
            "--timeout",
            "5s",
        ]
        .map(str::to_owned),
    ]));
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        stderr(&out).contains("cannot connect to 127.0.0.1"),
        "{}",
        text(&out)
    );
    assert!(server.stop());
}

#[test]
fn monitor_follows_a_growing_log_and_catches_a_rollback() {
    let ledger = Ledger::init("ledger.checkpoint_interval = \"50ms\"");
    let gateway = ledger.token("gateway", &[TENANT], &[ENV], None);
    let auditor = ledger.token("auditor", &[TENANT], &[ENV], None);
    let keys = key_args(&ledger);
    let dir = ledger.tmp.path().to_owned();
    let state = dir.join("monitor.state");
    let state_arg = state.to_str().unwrap().to_owned();
    let rt = rt();

    let server = Server::start(&ledger);
    let monitor = |server: &Server, iterations: &str| {
        verify(&args(&[
            &["monitor".into(), "--state".into(), state_arg.clone()],
            &keys,
            &server_args(server, &auditor),
            &[
                "--iterations".into(),
                iterations.into(),
                "--interval".into(),
                "10ms".into(),
            ],
        ]))
    };
    // Growing log: the state advances with each poll.
    let mut seq = 1;
    let mut sizes = Vec::new();
    for round in 0..3 {
        append(&rt, &server, &gateway, seq..seq + 2 + round);
        seq += 2 + round;
        let out = monitor(&server, "1");
        assert!(out.status.success(), "round {round}: {}", text(&out));
        let stdout = String::from_utf8_lossy(&out.stdout);
        if round == 0 {
            assert!(stdout.contains("PINNED (first use)"), "{stdout}");
        } else {
            assert!(stdout.contains("consistency proof of"), "{stdout}");
        }
        sizes.push(state_size(&state));
    }
    assert!(
        sizes.windows(2).all(|w| w[0] < w[1]),
        "state did not advance: {sizes:?}"
    );
    assert_eq!(*sizes.last().unwrap(), seq - 1);
    // Several polls in one run over an unchanged log.
    let out = monitor(&server, "3");
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout)
            .matches("OK: unchanged")
            .count(),
        3,
        "{}",
        text(&out)
    );

    // Without --iterations the monitor keeps following the log until SIGTERM.
    let child = Command::new(verifier())
        .args(args(&[
            &["monitor".into(), "--state".into(), state_arg.clone()],
            &keys,
            &server_args(&server, &auditor),
            &["--interval".into(), "20ms".into()],
        ]))
        .env_remove("AUDITLEDGER_TOKEN")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut running = Running(Some(child));
    append(&rt, &server, &gateway, seq..seq + 3);
    seq += 3;
    common::wait_until("the running monitor pins the grown log", || {
        state_size(&state) == seq - 1
    });
    let out = running.terminate();
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("stopping on signal"),
        "{}",
        text(&out)
    );
    assert!(server.stop());

    // Keep a copy of the data directory at this size, then grow the log further.
    let hot = ledger.dir.join("hot");
    let saved = dir.join("hot-copy");
    copy_dir(&hot, &saved);
    let pinned_before = state_size(&state);
    assert_eq!(pinned_before, seq - 1);
    let server = Server::start(&ledger);
    append(&rt, &server, &gateway, seq..seq + 4);
    let out = monitor(&server, "1");
    assert!(out.status.success(), "{}", text(&out));
    let grown = state_size(&state);
    assert!(grown >= pinned_before + 4, "{grown}");
    assert!(server.stop());

    // Restore the old copy: the server now serves a smaller log than it signed before.
    std::fs::remove_dir_all(&hot).unwrap();
    copy_dir(&saved, &hot);
    let server = Server::start(&ledger);
    let out = monitor(&server, "1");
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let err = stderr(&out);
    let alert = err
        .lines()
        .find(|l| l.starts_with("ALERT: ROLLBACK of auditledger.local/acme/prod"))
        .unwrap_or_else(|| panic!("no rollback alert: {}", text(&out)));
    assert!(
        alert.contains(&format!("tree size {grown} root"))
            && alert.contains(&format!("tree size {pinned_before} root")),
        "{alert}"
    );
    // The pin is kept: the next run alerts again.
    assert_eq!(state_size(&state), grown);
    let out = monitor(&server, "1");
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));

    // The one-shot check sees the rollback too (the saved checkpoint is from the state file).
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&state).unwrap()).unwrap();
    let pinned = dir.join("pinned.checkpoint");
    std::fs::write(&pinned, v["checkpoint"].as_str().unwrap()).unwrap();
    let out = verify(&args(&[
        &["checkpoint".into(), pinned.to_str().unwrap().to_owned()],
        &keys,
        &server_args(&server, &auditor),
    ]));
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(stderr(&out).contains("ALERT: ROLLBACK"), "{}", text(&out));
    assert!(server.stop());

    // A stopped server: the monitor retries, then gives up with exit 1.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let out = verify(&args(&[
        &["monitor".into(), "--state".into(), state_arg.clone()],
        &keys,
        &[
            "--server",
            &format!("http://127.0.0.1:{port}"),
            "--tenant",
            TENANT,
            "--env",
            ENV,
        ]
        .map(str::to_owned),
        &[
            "--iterations",
            "5",
            "--interval",
            "10ms",
            "--max-failures",
            "2",
        ]
        .map(str::to_owned),
    ]));
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let err = stderr(&out);
    assert_eq!(err.matches("WARNING: poll").count(), 1, "{err}");
    assert!(err.contains("giving up after 2 failed poll(s)"), "{err}");
}

#[test]
fn monitor_detects_a_fork() {
    // Two ledgers with the same signing key and origin but different events.
    let a = Ledger::init("ledger.checkpoint_interval = \"50ms\"");
    let b = Ledger::init("ledger.checkpoint_interval = \"50ms\"");
    std::fs::remove_dir_all(b.dir.join("keys")).unwrap();
    copy_dir(&a.dir.join("keys"), &b.dir.join("keys"));
    let keys = key_args(&a);
    assert_eq!(keys, key_args(&b));
    let (gw_a, aud_a) = (
        a.token("gateway", &[TENANT], &[ENV], None),
        a.token("auditor", &[TENANT], &[ENV], None),
    );
    let (gw_b, aud_b) = (
        b.token("gateway", &[TENANT], &[ENV], None),
        b.token("auditor", &[TENANT], &[ENV], None),
    );
    let rt = rt();
    let dir = a.tmp.path();
    let state = dir.join("monitor.state");
    let state_arg = state.to_str().unwrap().to_owned();

    let server_a = Server::start(&a);
    let on_a = append(&rt, &server_a, &gw_a, 1..4);
    let a_note = on_a.checkpoint.as_ref().unwrap().note.clone();
    let out = verify(&args(&[
        &[
            "monitor".into(),
            "--state".into(),
            state_arg.clone(),
            "--iterations".into(),
            "1".into(),
        ],
        &keys,
        &server_args(&server_a, &aud_a),
    ]));
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(state_size(&state), 3);
    assert!(server_a.stop());

    let server_b = Server::start(&b);
    // Same size, other events: the roots differ.
    let on_b = append(&rt, &server_b, &gw_b, 100..103);
    let b_note = on_b.checkpoint.as_ref().unwrap().note.clone();
    assert_eq!(size_of(&b_note), 3);
    let a_path = dir.join("a.checkpoint");
    std::fs::write(&a_path, &a_note).unwrap();
    let out = verify(&args(&[
        &["checkpoint".into(), a_path.to_str().unwrap().to_owned()],
        &keys,
        &server_args(&server_b, &aud_b),
    ]));
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        stderr(&out).contains("ALERT: FORK of auditledger.local/acme/prod")
            && stderr(&out).contains("same tree size, different roots"),
        "{}",
        text(&out)
    );

    // B grows past A: its consistency proof cannot match A's root.
    append(&rt, &server_b, &gw_b, 103..108);
    let monitor_b = |extra: &[&str]| {
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        verify(&args(&[
            &["monitor".into(), "--iterations".into(), "1".into()],
            &extra,
            &keys,
            &server_args(&server_b, &aud_b),
        ]))
    };
    let out = monitor_b(&["--state", &state_arg]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let err = stderr(&out);
    let alert = err
        .lines()
        .find(|l| l.starts_with("ALERT: FORK of auditledger.local/acme/prod"))
        .unwrap_or_else(|| panic!("no fork alert: {}", text(&out)));
    assert!(
        alert.contains("tree size 3 root")
            && alert.contains("tree size 8 root")
            && alert.contains("consistency proof does not verify"),
        "{alert}"
    );
    assert_eq!(state_size(&state), 3, "the pin must not move on a fork");

    // --pin seeds a fresh state file with A's checkpoint: the fork is caught on the first poll.
    let fresh = dir.join("fresh.state");
    let a_path_str = a_path.to_str().unwrap().to_owned();
    let out = monitor_b(&["--state", fresh.to_str().unwrap(), "--pin", &a_path_str]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("PINNED (from"),
        "{}",
        text(&out)
    );
    assert!(stderr(&out).contains("ALERT: FORK"), "{}", text(&out));
    // A pin that does not verify is refused before anything is trusted.
    let forged = dir.join("forged.checkpoint");
    std::fs::write(&forged, a_note.replace("acme/prod\n3\n", "acme/prod\n2\n")).unwrap();
    let out = monitor_b(&[
        "--state",
        dir.join("other.state").to_str().unwrap(),
        "--pin",
        forged.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(stderr(&out).contains("does not verify"), "{}", text(&out));
    assert!(!dir.join("other.state").exists());

    // The inclusion proof of A's receipt, checked against B: a fork.
    let inclusion = dir.join("inclusion.json");
    std::fs::write(&inclusion, proof_json(&on_a.receipts[0], &a_note)).unwrap();
    let out = verify(&args(&[
        &["inclusion".into(), inclusion.to_str().unwrap().to_owned()],
        &keys,
        &server_args(&server_b, &aud_b),
    ]));
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(stderr(&out).contains("ALERT: FORK"), "{}", text(&out));
    assert!(server_b.stop());
}

/// A CA and certificates it issues (rcgen), as PEM.
mod pki {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose,
    };

    pub struct Pki {
        pub ca_pem: String,
        issuer: Issuer<'static, KeyPair>,
    }

    impl Pki {
        pub fn new(name: &str) -> Pki {
            let key = KeyPair::generate().unwrap();
            let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.distinguished_name.push(DnType::CommonName, name);
            params.key_usages = vec![
                KeyUsagePurpose::KeyCertSign,
                KeyUsagePurpose::DigitalSignature,
            ];
            let cert = params.self_signed(&key).unwrap();
            Pki {
                ca_pem: cert.pem(),
                issuer: Issuer::new(params, key),
            }
        }

        /// (certificate PEM, key PEM)
        pub fn issue(&self, cn: &str, sans: &[&str], server: bool) -> (String, String) {
            let key = KeyPair::generate().unwrap();
            let mut params =
                CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                    .unwrap();
            params.distinguished_name.push(DnType::CommonName, cn);
            params.extended_key_usages = vec![if server {
                ExtendedKeyUsagePurpose::ServerAuth
            } else {
                ExtendedKeyUsagePurpose::ClientAuth
            }];
            let cert = params.signed_by(&key, &self.issuer).unwrap();
            (cert.pem(), key.serialize_pem())
        }
    }
}

#[test]
fn live_checks_over_tls_with_a_client_certificate() {
    let ca = pki::Pki::new("AuditLedger test CA");
    let (server_cert, server_key) = ca.issue("localhost", &["localhost", "127.0.0.1"], true);
    let (client_cert, client_key) = ca.issue("monitor.example.com", &[], false);
    let stranger = pki::Pki::new("another CA");

    let ledger = Ledger::init("ledger.checkpoint_interval = \"50ms\"");
    let dir = ledger.tmp.path().to_owned();
    let file = |name: &str, pem: &str| {
        let p = dir.join(name);
        std::fs::write(&p, pem).unwrap();
        p.to_str().unwrap().to_owned()
    };
    std::fs::write(ledger.dir.join("server.pem"), &server_cert).unwrap();
    std::fs::write(ledger.dir.join("server.key"), &server_key).unwrap();
    std::fs::write(ledger.dir.join("ca.pem"), &ca.ca_pem).unwrap();
    let config = std::fs::read_to_string(ledger.config())
        .unwrap()
        .replace("tls_cert = \"\"", "tls_cert = \"server.pem\"")
        .replace("tls_key = \"\"", "tls_key = \"server.key\"")
        .replace("tls_client_ca = \"\"", "tls_client_ca = \"ca.pem\"")
        + "\n[[auth.client_cert]]\ncommon_name = \"monitor.example.com\"\nrole = \"auditor\"\ntenants = [\"acme\"]\nenvironments = [\"prod\"]\n";
    std::fs::write(ledger.config(), config).unwrap();
    let gateway = ledger.token("gateway", &[TENANT], &[ENV], None);
    let keys = key_args(&ledger);
    let server = Server::start_with(
        &ledger,
        &["--listen", "127.0.0.1:0"],
        &[("AUDITLEDGER_SERVER_METRICS_LISTEN", "")],
    );
    assert_eq!(server.scheme, "https");

    // Append over TLS with tonic (gateway token).
    let rt = rt();
    let ca_pem = ca.ca_pem.clone();
    let url = server.url();
    let note = rt.block_on(async {
        let tls = tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(&ca_pem))
            .domain_name("localhost");
        let channel = tonic::transport::Channel::from_shared(url)
            .unwrap()
            .tls_config(tls)
            .unwrap()
            .connect()
            .await
            .unwrap();
        pb::ingest_client::IngestClient::new(channel)
            .append(authed(
                pb::AppendRequest {
                    events: (1..4).map(|i| event(TENANT, ENV, i)).collect(),
                    wait_for_checkpoint: true,
                },
                &gateway,
            ))
            .await
            .unwrap()
            .into_inner()
            .checkpoint
            .unwrap()
            .note
    });
    let saved = file("saved.checkpoint", &note);
    let ca_path = file("ca.pem", &ca.ca_pem);
    let cert_path = file("client.pem", &client_cert);
    let key_path = file("client.key", &client_key);
    let https = ["--server", &server.url(), "--tenant", TENANT, "--env", ENV].map(str::to_owned);

    // The client certificate authenticates the auditor: no token.
    let tls_args = [
        "--ca-cert",
        &ca_path,
        "--client-cert",
        &cert_path,
        "--client-key",
        &key_path,
    ]
    .map(str::to_owned);
    let out = verify(&args(&[
        &["checkpoint".into(), saved.clone()],
        &keys,
        &https,
        &tls_args,
    ]));
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("is the same"),
        "{}",
        text(&out)
    );
    let state = dir.join("tls.state");
    let out = verify(&args(&[
        &[
            "monitor".into(),
            "--iterations".into(),
            "1".into(),
            "--state".into(),
            state.to_str().unwrap().to_owned(),
        ],
        &keys,
        &https,
        &tls_args,
    ]));
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(state_size(&state), 3);

    // TLS but no certificate and no token: the server refuses the call.
    let out = verify(&args(&[
        &["checkpoint".into()],
        &keys,
        &https,
        &["--ca-cert".into(), ca_path.clone()],
    ]));
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        stderr(&out).contains("server refused GetCheckpoint: UNAUTHENTICATED"),
        "{}",
        text(&out)
    );
    // A CA that did not issue the server's certificate: the handshake fails, clearly.
    let other_ca = file("other-ca.pem", &stranger.ca_pem);
    let out = verify(&args(&[
        &["checkpoint".into()],
        &keys,
        &https,
        &["--ca-cert".into(), other_ca],
    ]));
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(stderr(&out).contains("TLS handshake"), "{}", text(&out));
    // Plain HTTP/2 to a TLS port does not hang: it fails within the timeout.
    let plain = server.url().replace("https://", "http://");
    let out = verify(&args(&[
        &["checkpoint".into()],
        &keys,
        &[
            "--server",
            &plain,
            "--tenant",
            TENANT,
            "--env",
            ENV,
            "--timeout",
            "5s",
        ]
        .map(str::to_owned),
    ]));
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(server.stop());
}
