//! `auditledger-verify --witness/--min-witnesses` and `--keyring` on evidence made in process
//! by the ledger crate (in-memory store, a fixed clock): an inclusion proof whose checkpoint
//! carries stored cosignatures, and keyrings under which the signing key was not valid at the
//! checkpoint's time (revoked before it, not yet valid), which the server itself never signs.

use std::path::PathBuf;
use std::process::Command;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use auditledger_ledger::cosignature::WitnessSigner;
use auditledger_ledger::event::{AuditEvent, EventKind};
use auditledger_ledger::keys::{Keyring, PublicKeyring};
use auditledger_ledger::note::{Note, SignerKey};
use auditledger_ledger::store::memory::MemoryStore;
use auditledger_ledger::{Clock, Ledger, LedgerOptions, Log};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

/// Checkpoint time of every checkpoint in these tests (unix seconds).
const T: u64 = 1_800_000_000;

struct FixedClock;

impl Clock for FixedClock {
    fn now_nanos(&self) -> u64 {
        T * 1_000_000_000
    }
}

fn verify(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_auditledger-verify"))
        .args(args)
        .env_remove("AUDITLEDGER_TOKEN")
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// A ledger signing with `signer` at time [`T`], with three events checkpointed.
fn ledger_with(signer: &SignerKey) -> (Ledger, Log) {
    let mut ring = Keyring::default();
    ring.add_existing(signer.clone(), None, 0);
    let ledger = Ledger::open_with_clock(
        Arc::new(MemoryStore::new()),
        Arc::new(RwLock::new(ring)),
        LedgerOptions {
            checkpoint_interval: Duration::from_secs(3600),
            ..Default::default()
        },
        Arc::new(FixedClock),
    )
    .unwrap();
    let events: Vec<AuditEvent> = (0..3)
        .map(|n| AuditEvent {
            event_id: format!("01936f0e-7a2b-7c3d-8e4f-{n:012x}"),
            event_kind: EventKind::ToolCall as i32,
            tenant_id: "acme".into(),
            environment: "prod".into(),
            occurred_at: 1 + n,
            tool_name: "search".into(),
            ..Default::default()
        })
        .collect();
    ledger.append_blocking("gw", &events).unwrap();
    ledger.checkpoint_now().unwrap();
    let log = ledger.log("acme", "prod").unwrap();
    (ledger, log)
}

fn write(dir: &tempfile::TempDir, name: &str, text: &str) -> String {
    let p: PathBuf = dir.path().join(name);
    std::fs::write(&p, text).unwrap();
    p.to_str().unwrap().to_owned()
}

#[test]
fn inclusion_proof_checkpoint_with_witness_cosignatures() {
    let signer = SignerKey::from_seed("verify.example", &[4; 32]).unwrap();
    let (_ledger, log) = ledger_with(&signer);
    let w1 = WitnessSigner::from_seed("w1.example", &[41; 32]).unwrap();
    let w2 = WitnessSigner::from_seed("w2.example", &[42; 32]).unwrap();
    let cp = log.latest_checkpoint().unwrap();
    let body = Note::parse(cp.note.as_bytes()).unwrap().text().to_owned();
    log.store_cosignatures(3, &[w1.cosign(&body, T + 5).unwrap()])
        .unwrap();
    let note = log.cosigned_note(&cp).unwrap();
    let proof = serde_json::json!({
        "leafIndex": "1",
        "treeSize": "3",
        "hashes": log.inclusion_proof(1, 3).unwrap().iter().map(|h| STANDARD.encode(h)).collect::<Vec<_>>(),
        "leaf": STANDARD.encode(log.leaf(1).unwrap().unwrap()),
        "checkpoint": {"note": note},
    })
    .to_string();
    let dir = tempfile::tempdir().unwrap();
    let proof_file = write(&dir, "proof.json", &proof);
    let key = signer.verifier().to_string();
    let (k1, k2) = (w1.witness_key().to_string(), w2.witness_key().to_string());

    let (ok, out) = verify(&["inclusion", &proof_file, "--key", &key, "--witness", &k1]);
    assert!(ok, "{out}");
    assert!(out.contains("OK: leaf 1 is in"), "{out}");
    assert!(
        out.contains("witness w1.example+") && out.contains(&format!("({})", T + 5)),
        "{out}"
    );
    let (ok, out) = verify(&[
        "inclusion",
        &proof_file,
        "--key",
        &key,
        "--witness",
        &k1,
        "--witness",
        &k2,
        "--min-witnesses",
        "2",
    ]);
    assert!(!ok, "{out}");
    assert!(
        out.contains("1 valid witness cosignature(s) found, 2 required"),
        "{out}"
    );
    // The second witness cosigns too: now two of two.
    log.store_cosignatures(3, &[w2.cosign(&body, T + 9).unwrap()])
        .unwrap();
    let both = proof.replace(
        &serde_json::to_string(&note).unwrap(),
        &serde_json::to_string(&log.cosigned_note(&cp).unwrap()).unwrap(),
    );
    let both_file = write(&dir, "both.json", &both);
    let (ok, out) = verify(&[
        "inclusion",
        &both_file,
        "--key",
        &key,
        "--witness",
        &k1,
        "--witness",
        &k2,
        "--min-witnesses",
        "2",
    ]);
    assert!(ok, "{out}");
    assert!(
        out.contains("2 of 2 witness(es) cosigned (2 required)"),
        "{out}"
    );
    // More required than witnesses given is a usage error, said as such.
    let (ok, out) = verify(&[
        "inclusion",
        &both_file,
        "--key",
        &key,
        "--witness",
        &k1,
        "--min-witnesses",
        "2",
    ]);
    assert!(!ok, "{out}");
    assert!(out.contains("only 1 witness key(s) given"), "{out}");
    // A malformed witness key is named.
    let (ok, out) = verify(&[
        "inclusion",
        &both_file,
        "--key",
        &key,
        "--witness",
        "w+00+AA==",
    ]);
    assert!(!ok, "{out}");
    assert!(
        out.contains("--witness") && out.contains("w+00+AA=="),
        "{out}"
    );
}

#[test]
fn keyring_rejects_keys_not_valid_at_the_checkpoint_time() {
    let dir = tempfile::tempdir().unwrap();
    let mut ring = Keyring::new_at(&dir.path().join("keyring.toml"));
    let entry = ring.generate("verify.example", T - 1000).unwrap().clone();
    let signer = entry.signer.clone().unwrap();
    let id = entry.key_id_hex();
    let (_ledger, log) = ledger_with(&signer);
    let note = log.latest_checkpoint().unwrap().note.clone();
    let note_file = write(&dir, "checkpoint.note", &note);

    // Valid at T: reported, no --key needed.
    let valid = write(
        &dir,
        "valid.toml",
        &PublicKeyring::from_keyring(&ring).to_toml(),
    );
    let (ok, out) = verify(&["checkpoint", &note_file, "--keyring", &valid]);
    assert!(ok, "{out}");
    assert!(
        out.contains(&format!(
            "verify.example+{id}: signed, valid at the checkpoint's time"
        )),
        "{out}"
    );

    // The operator later declares the key compromised since before T: the same genuine
    // checkpoint now fails, naming the key and why.
    let mut compromised = ring.clone();
    compromised.revoke(&id, T - 10, "key compromised").unwrap();
    let revoked = write(
        &dir,
        "revoked.toml",
        &PublicKeyring::from_keyring(&compromised).to_toml(),
    );
    let (ok, out) = verify(&["checkpoint", &note_file, "--keyring", &revoked]);
    assert!(!ok, "{out}");
    assert!(
        out.contains(&id) && out.contains("revoked at") && out.contains("key compromised"),
        "{out}"
    );
    // Revoked only after T: still valid then.
    let mut later = ring.clone();
    later.revoke(&id, T + 10, "retired").unwrap();
    let later_file = write(
        &dir,
        "later.toml",
        &PublicKeyring::from_keyring(&later).to_toml(),
    );
    let (ok, out) = verify(&["checkpoint", &note_file, "--keyring", &later_file]);
    assert!(ok, "{out}");

    // A key that only becomes valid after T.
    let mut future = Keyring::new_at(&dir.path().join("future.toml"));
    future.add_existing(signer.clone(), None, T + 3600);
    let future_file = write(
        &dir,
        "future-public.toml",
        &PublicKeyring::from_keyring(&future).to_toml(),
    );
    let (ok, out) = verify(&["checkpoint", &note_file, "--keyring", &future_file]);
    assert!(!ok, "{out}");
    assert!(out.contains("valid only from"), "{out}");

    // The server's own keyring file is not what verifiers take: said so.
    ring.save().unwrap();
    let (ok, out) = verify(&[
        "checkpoint",
        &note_file,
        "--keyring",
        dir.path().join("keyring.toml").to_str().unwrap(),
    ]);
    assert!(!ok, "{out}");
    assert!(out.contains("auditledger keys export"), "{out}");

    // Consistency checks the keyring on both checkpoints.
    let (ok, out) = verify(&[
        "consistency",
        &note_file,
        &note_file,
        "--proof",
        &write(
            &dir,
            "proof.json",
            r#"{"first": "3", "second": "3", "hashes": []}"#,
        ),
        "--keyring",
        &revoked,
    ]);
    assert!(!ok, "{out}");
    assert!(out.contains("OLD: keyring check failed"), "{out}");
}
