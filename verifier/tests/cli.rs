//! The `auditledger-verify` binary on real evidence: a ledger (in memory) signs checkpoints and
//! proofs; `inclusion` and `consistency` accept them as protobuf JSON and refuse every
//! tampered variant with a non-zero exit naming what failed.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use auditledger_ledger::event::{AuditEvent, EventKind};
use auditledger_ledger::keys::Keyring;
use auditledger_ledger::note::SignerKey;
use auditledger_ledger::store::memory::MemoryStore;
use auditledger_ledger::{Ledger, LedgerOptions};
use base64::Engine as _;
use serde_json::json;

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

struct Dir(PathBuf);

impl Dir {
    fn new() -> Dir {
        let d = std::env::temp_dir().join(format!(
            "auditledger-verify-cli-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::create_dir_all(&d).unwrap();
        Dir(d)
    }
    fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn verify(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_auditledger-verify"))
        .args(args)
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

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn inclusion_and_consistency_from_json_files() {
    let signer = SignerKey::from_seed("verify.example", &[4u8; 32]).unwrap();
    let other = SignerKey::from_seed("verify.example", &[5u8; 32]).unwrap();
    let mut ring = Keyring::default();
    ring.add_existing(signer.clone(), None, 0);
    let ledger = Ledger::open(
        Arc::new(MemoryStore::new()),
        Arc::new(RwLock::new(ring)),
        LedgerOptions {
            checkpoint_interval: Duration::from_secs(3600),
            ..Default::default()
        },
    )
    .unwrap();
    let event = |n: u64| AuditEvent {
        event_id: format!("01936f0e-7a2b-7c3d-8e4f-{n:012x}"),
        event_kind: EventKind::ToolCall as i32,
        tenant_id: "acme".into(),
        environment: "prod".into(),
        occurred_at: 1_763_700_000_000_000_000 + n,
        tool_name: "search".into(),
        ..Default::default()
    };
    ledger
        .append_blocking("gw", &(0..5).map(event).collect::<Vec<_>>())
        .unwrap();
    ledger.checkpoint_now().unwrap();
    let log = ledger.log("acme", "prod").unwrap();
    let old = log.latest_checkpoint().unwrap();
    ledger
        .append_blocking("gw", &(5..13).map(event).collect::<Vec<_>>())
        .unwrap();
    ledger.checkpoint_now().unwrap();
    let new = log.latest_checkpoint().unwrap();
    let (old_size, new_size) = (old.checkpoint.tree_size, new.checkpoint.tree_size);
    assert_eq!((old_size, new_size), (5, 13));

    let dir = Dir::new();
    let key = signer.verifier().to_string();
    let wrong_key = other.verifier().to_string();
    let leaf = log.leaf(3).unwrap().unwrap();
    let hashes: Vec<String> = log
        .inclusion_proof(3, new_size)
        .unwrap()
        .iter()
        .map(|h| b64(h))
        .collect();
    let proof = |leaf: &[u8], leaf_index: u64, hashes: &[String]| {
        json!({
            "leafIndex": leaf_index.to_string(),
            "treeSize": new_size.to_string(),
            "hashes": hashes,
            "leaf": b64(leaf),
            "leafHash": b64(&auditledger_ledger::merkle::leaf_hash(&log.leaf(3).unwrap().unwrap())),
            "checkpoint": {"note": new.note},
        })
        .to_string()
    };
    let good = dir.write("proof.json", &proof(&leaf, 3, &hashes));
    let (ok, out) = verify(&["inclusion", path(&good), "--key", &key]);
    assert!(ok, "{out}");
    assert!(
        out.contains("OK: leaf 3 is in auditledger.local/acme/prod at tree size 13"),
        "{out}"
    );

    // Expired contents: no leaf, the leaf hash alone still proves inclusion.
    let mut no_leaf: serde_json::Value = serde_json::from_str(&proof(&leaf, 3, &hashes)).unwrap();
    no_leaf.as_object_mut().unwrap().remove("leaf");
    let expired = dir.write("expired.json", &no_leaf.to_string());
    let (ok, out) = verify(&["inclusion", path(&expired), "--key", &key]);
    assert!(ok && out.contains("leaf hash"), "{out}");

    // Tampering: a leaf byte, a proof hash, the index, the key, the checkpoint.
    let mut flipped = leaf.clone();
    flipped[10] ^= 1;
    let mut bad_hashes = hashes.clone();
    bad_hashes[0] = b64(&[9u8; 32]);
    let cases = [
        ("leaf.json", proof(&flipped, 3, &hashes), "leafHash"),
        ("hash.json", proof(&leaf, 3, &bad_hashes), "leaf 3"),
        ("index.json", proof(&leaf, 4, &hashes), "leaf 4"),
        (
            "note.json",
            proof(&leaf, 3, &hashes).replace("\\n13\\n", "\\n14\\n"),
            "signature",
        ),
    ];
    for (name, text, needle) in cases {
        let f = dir.write(name, &text);
        let (ok, out) = verify(&["inclusion", path(&f), "--key", &key]);
        assert!(!ok, "{name} verified: {out}");
        assert!(
            out.contains("FAILED") && out.contains(needle),
            "{name}: {out}"
        );
    }
    let (ok, out) = verify(&["inclusion", path(&good), "--key", &wrong_key]);
    assert!(!ok, "{out}");

    // A GetInclusionProofs response: hash-only proofs against its one checkpoint.
    let wanted = [12u64, 0, 7, 7];
    let batch = log.inclusion_proofs(&wanted, new_size).unwrap();
    let response = |tamper: Option<usize>| {
        let proofs: Vec<serde_json::Value> = wanted
            .iter()
            .zip(&batch)
            .enumerate()
            .map(|(i, (&leaf_index, (leaf_hash, hashes)))| {
                let mut leaf_hash = *leaf_hash;
                if tamper == Some(i) {
                    leaf_hash[0] ^= 1;
                }
                json!({
                    "leafIndex": leaf_index.to_string(),
                    "treeSize": new_size.to_string(),
                    "hashes": hashes.iter().map(|h| b64(h)).collect::<Vec<_>>(),
                    "leafHash": b64(&leaf_hash),
                })
            })
            .collect();
        json!({"checkpoint": {"note": new.note}, "proofs": proofs}).to_string()
    };
    let f = dir.write("batch.json", &response(None));
    let (ok, out) = verify(&["inclusion", path(&f), "--key", &key]);
    assert!(ok, "{out}");
    assert!(
        out.contains(
            "OK: 4 leaves (12, 0, 7, 7) are in auditledger.local/acme/prod at tree size 13"
        ),
        "{out}"
    );
    let f = dir.write("batch-bad.json", &response(Some(2)));
    let (ok, out) = verify(&["inclusion", path(&f), "--key", &key]);
    assert!(!ok, "{out}");
    assert!(
        out.contains("FAILED") && out.contains("proofs[2] (leaf 7)"),
        "{out}"
    );
    let (ok, out) = verify(&[
        "inclusion",
        path(&dir.write("batch-ok.json", &response(None))),
        "--key",
        &wrong_key,
    ]);
    assert!(!ok, "{out}");
    // The shared checkpoint is opened once, with the first proof; its failure names it.
    assert!(
        out.contains("proofs[0] (leaf 12)") && out.contains("checkpoint: "),
        "{out}"
    );

    // Consistency between the two checkpoints.
    let old_file = dir.write("old.note", &old.note);
    let new_file = dir.write("new.note", &new.note);
    let cproof = |hashes: Vec<String>| {
        json!({"first": old_size.to_string(), "second": new_size.to_string(), "hashes": hashes})
            .to_string()
    };
    let consistency: Vec<String> = log
        .consistency_proof(old_size, new_size)
        .unwrap()
        .iter()
        .map(|h| b64(h))
        .collect();
    let cfile = dir.write("consistency.json", &cproof(consistency.clone()));
    let args = |p: &PathBuf| {
        vec![
            "consistency".to_owned(),
            path(&old_file).to_owned(),
            path(&new_file).to_owned(),
            "--proof".to_owned(),
            path(p).to_owned(),
            "--key".to_owned(),
            key.clone(),
        ]
    };
    let run = |p: &PathBuf| {
        let a = args(p);
        verify(&a.iter().map(String::as_str).collect::<Vec<_>>())
    };
    let (ok, out) = run(&cfile);
    assert!(ok && out.contains("extends tree size 5"), "{out}");
    let mut forged = consistency;
    forged[0] = b64(&[1u8; 32]);
    let (ok, out) = run(&dir.write("forged.json", &cproof(forged)));
    assert!(!ok && out.contains("FAILED"), "{out}");
    ledger.close().unwrap();
}
