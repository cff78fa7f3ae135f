//! Witness cosignatures and keyring reporting end to end, against the real server and the real
//! `auditledger-verify` binary: a witness cosigns a checkpoint that is no longer the latest,
//! `Admin.AddCosignature` checks and stores it (and records it in the system log),
//! `GetCheckpoint(tree_size)` serves it, the verifier requires N of M witnesses; then a key
//! rotation and revocation, reported by `auditledger-verify --keyring` from `keys export`.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use auditledger_ledger::checkpoint::Checkpoint;
use auditledger_ledger::cosignature::WitnessSigner;
use auditledger_ledger::keys::unix_now;
use auditledger_ledger::note::{Note, SignerKey};
use auditledger_proto::v1 as pb;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use common::{Ledger, Server, authed, event, rt};
use tonic::Code;

fn verify_bin() -> PathBuf {
    Path::new(common::bin()).with_file_name("auditledger-verify")
}

/// Runs `auditledger-verify`; returns success and stdout + stderr.
fn verify(args: &[&str]) -> (bool, String) {
    let out = Command::new(verify_bin())
        .args(args)
        .env_remove("AUDITLEDGER_TOKEN")
        .output()
        .expect("run auditledger-verify");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

async fn append_and_checkpoint(server: &Server, gateway: &str, seq: u64) -> String {
    server
        .ingest()
        .await
        .append(authed(
            pb::AppendRequest {
                events: vec![event("acme", "prod", seq)],
                wait_for_checkpoint: true,
            },
            gateway,
        ))
        .await
        .unwrap()
        .into_inner()
        .checkpoint
        .unwrap()
        .note
}

async fn get_checkpoint(
    server: &Server,
    token: &str,
    tree_size: u64,
) -> Result<String, tonic::Status> {
    server
        .log()
        .await
        .get_checkpoint(authed(
            pb::GetCheckpointRequest {
                tenant_id: "acme".into(),
                environment: "prod".into(),
                tree_size,
            },
            token,
        ))
        .await
        .map(|r| r.into_inner().note)
}

fn body_of(note: &str) -> Checkpoint {
    Checkpoint::parse_body(Note::parse(note.as_bytes()).unwrap().text()).unwrap()
}

fn add(note: String, token: &str) -> tonic::Request<pb::AddCosignatureRequest> {
    authed(
        pb::AddCosignatureRequest {
            tenant_id: "acme".into(),
            environment: "prod".into(),
            cosigned_note: note,
        },
        token,
    )
}

#[test]
fn witness_cosignatures_end_to_end() {
    let w1 = WitnessSigner::from_seed("witness-one.example", &[31; 32]).unwrap();
    let w2 = WitnessSigner::from_seed("witness-two.example", &[32; 32]).unwrap();
    let stranger = WitnessSigner::from_seed("stranger.example", &[33; 32]).unwrap();
    let (k1, k2) = (w1.witness_key().to_string(), w2.witness_key().to_string());
    let ledger = Ledger::init(&format!(
        "ledger.checkpoint_interval = \"50ms\"\nwitnesses.keys = [\"{k1}\", \"{k2}\"]"
    ));
    let gateway = ledger.token("gateway", &["acme"], &["prod"], None);
    let admin = ledger.token("admin", &["acme"], &["prod"], None);
    let other_admin = ledger.token("admin", &["globex"], &["prod"], None);
    let auditor = ledger.token("auditor", &["acme"], &["prod"], None);
    let sys_admin = ledger.token("admin", &["_system"], &["prod"], None);
    let log_key = ledger.keys().remove(0).to_string();
    let server = Server::start(&ledger);
    let dir = tempfile::tempdir().unwrap();
    let file = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p.to_str().unwrap().to_owned()
    };

    let (second, cosigned, consistency) = rt().block_on(async {
        let first = append_and_checkpoint(&server, &gateway, 1).await;
        assert_eq!(body_of(&first).tree_size, 1);
        let second = append_and_checkpoint(&server, &gateway, 2).await;
        assert_eq!(
            body_of(&second).tree_size,
            2,
            "the cosigned one is not the latest"
        );
        // The older checkpoint by size, exactly as signed.
        assert_eq!(get_checkpoint(&server, &auditor, 1).await.unwrap(), first);
        let err = get_checkpoint(&server, &auditor, 7).await.unwrap_err();
        assert_eq!(err.code(), Code::NotFound, "{err}");
        assert!(err.message().contains("tree size 7"), "{}", err.message());

        let mut admin_client = pb::admin_client::AdminClient::new(server.channel().await);
        let now = unix_now();
        let by_w1 = w1.cosign_note(&first, now).unwrap();

        // Only admins of the tenant.
        for token in [&auditor, &other_admin] {
            let err = admin_client
                .add_cosignature(add(by_w1.clone(), token))
                .await
                .unwrap_err();
            assert_eq!(err.code(), Code::PermissionDenied, "{err}");
        }
        // An unconfigured witness is refused, named.
        let err = admin_client
            .add_cosignature(add(stranger.cosign_note(&first, now).unwrap(), &admin))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied, "{err}");
        assert!(
            err.message().contains("stranger.example"),
            "{}",
            err.message()
        );
        // A configured witness whose line does not verify (timestamp changed after signing).
        let mut bad = w2
            .cosign(Note::parse(first.as_bytes()).unwrap().text(), now)
            .unwrap();
        bad.timestamp += 60;
        let mut forged = Note::parse(first.as_bytes()).unwrap();
        forged.add_signature(bad.to_note_signature());
        let err = admin_client
            .add_cosignature(add(forged.to_note_string(), &admin))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{err}");
        assert!(
            err.message().contains("witness-two.example")
                && err.message().contains("does not verify"),
            "{}",
            err.message()
        );
        // A body that is not the one the ledger signed at that size (the witness saw a fork).
        let mut other_body = body_of(&first);
        other_body.root_hash[0] ^= 1;
        let fork = format!(
            "{}\n{}",
            other_body.body(),
            w1.cosign(&other_body.body(), now).unwrap().to_line()
        );
        let err = admin_client
            .add_cosignature(add(fork, &admin))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::FailedPrecondition, "{err}");
        assert!(err.message().contains("tree size 1"), "{}", err.message());
        // A size the ledger never signed.
        let mut unsigned = body_of(&first);
        unsigned.tree_size = 99;
        let never = format!(
            "{}\n{}",
            unsigned.body(),
            w1.cosign(&unsigned.body(), now).unwrap().to_line()
        );
        let err = admin_client
            .add_cosignature(add(never, &admin))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::NotFound, "{err}");
        assert!(err.message().contains("tree size 99"), "{}", err.message());
        // Only the ledger's own signature: nothing to add.
        let err = admin_client
            .add_cosignature(add(first.clone(), &admin))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{err}");

        // The good one: stored and returned with the checkpoint.
        let stored = admin_client
            .add_cosignature(add(by_w1.clone(), &admin))
            .await
            .unwrap()
            .into_inner()
            .note;
        assert_eq!(stored, by_w1);
        let served = get_checkpoint(&server, &auditor, 1).await.unwrap();
        assert_eq!(served, by_w1, "GetCheckpoint(1) carries the cosignature");
        let report =
            auditledger_verifier::verify_cosignatures(served.as_bytes(), &[w1.witness_key()], 1)
                .unwrap();
        assert_eq!(report.valid(), 1);
        // The latest checkpoint has none.
        assert_eq!(get_checkpoint(&server, &auditor, 0).await.unwrap(), second);
        // Inclusion proofs against that checkpoint carry it too (witnesses are configured).
        let proof = server
            .log()
            .await
            .get_inclusion_proof(authed(
                pb::GetInclusionProofRequest {
                    tenant_id: "acme".into(),
                    environment: "prod".into(),
                    key: Some(pb::get_inclusion_proof_request::Key::LeafIndex(0)),
                    tree_size: 1,
                    justification: String::new(),
                },
                &auditor,
            ))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(proof.checkpoint.unwrap().note, by_w1);

        // Recorded in the system log: who, which checkpoint, which witness.
        let is_record = |e: &pb::AuditEvent| {
            e.tool_name == "Admin.AddCosignature"
                && e.attributes
                    .get("witnesses")
                    .is_some_and(|w| w.contains("witness-one.example"))
        };
        let events =
            common::system_events(&server, &sys_admin, |evs| evs.iter().any(is_record)).await;
        let record = events
            .iter()
            .find(|e| is_record(e))
            .expect("cosignature record");
        assert_eq!(record.event_kind, pb::EventKind::Integrity as i32);
        assert_eq!(
            record.attributes.get("tree_size").map(String::as_str),
            Some("1")
        );
        assert_eq!(record.resource, "acme/prod");
        let consistency = server
            .log()
            .await
            .get_consistency_proof(authed(
                pb::GetConsistencyProofRequest {
                    tenant_id: "acme".into(),
                    environment: "prod".into(),
                    first: 1,
                    second: 2,
                },
                &auditor,
            ))
            .await
            .unwrap()
            .into_inner()
            .hashes;
        (second, served, consistency)
    });

    // The real verifier: one witness required and present.
    let cosigned_file = file("cosigned.note", &cosigned);
    let (ok, out) = verify(&[
        "checkpoint",
        &cosigned_file,
        "--key",
        &log_key,
        "--witness",
        &k1,
    ]);
    assert!(ok, "{out}");
    assert!(
        out.contains("witness witness-one.example+") && out.contains("cosigned at"),
        "{out}"
    );
    // Two required, one present: fails, saying how many and why the other does not count.
    let (ok, out) = verify(&[
        "checkpoint",
        &cosigned_file,
        "--key",
        &log_key,
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
    assert!(
        out.contains("witness-two.example") && out.contains("no cosignature"),
        "{out}"
    );
    // A tampered cosignature line fails even when fewer are required.
    let tampered = cosigned.replacen(&cosigned.lines().last().unwrap()[10..20], "AAAAAAAAAA", 1);
    let (ok, out) = verify(&[
        "checkpoint",
        &file("tampered.note", &tampered),
        "--key",
        &log_key,
        "--witness",
        &k1,
    ]);
    assert!(!ok, "{out}");
    assert!(out.contains("witness-one.example"), "{out}");
    // Consistency: both checkpoints must satisfy the policy; the newer one has no cosignature.
    let proof = file(
        "consistency.json",
        &serde_json::json!({
            "first": "1",
            "second": "2",
            "hashes": consistency.iter().map(|h| STANDARD.encode(h)).collect::<Vec<_>>(),
        })
        .to_string(),
    );
    let (ok, out) = verify(&[
        "consistency",
        &cosigned_file,
        &file("second.note", &second),
        "--proof",
        &proof,
        "--key",
        &log_key,
    ]);
    assert!(ok, "without a witness policy: {out}");
    let (ok, out) = verify(&[
        "consistency",
        &cosigned_file,
        &file("second.note", &second),
        "--proof",
        &proof,
        "--key",
        &log_key,
        "--witness",
        &k1,
    ]);
    assert!(!ok, "{out}");
    assert!(
        out.contains("NEW") && out.contains("0 valid witness cosignature(s) found, 1 required"),
        "{out}"
    );
    assert!(server.stop());
}

#[test]
fn keyring_reports_which_key_signed_and_when_it_was_valid() {
    let ledger = Ledger::init("ledger.checkpoint_interval = \"50ms\"");
    let gateway = ledger.token("gateway", &["acme"], &["prod"], None);
    let sys_admin = ledger.token("admin", &["_system"], &["prod"], None);
    let old_key = ledger.keys().remove(0);
    let old_id = format!("{:08x}", old_key.key_id());
    let server = Server::start(&ledger);
    let (only_old, both, only_new) = rt().block_on(async {
        let only_old = append_and_checkpoint(&server, &gateway, 1).await;
        let mut client = pb::admin_client::AdminClient::new(server.channel().await);
        client
            .rotate_signing_key(authed(
                pb::RotateSigningKeyRequest {
                    key_name: String::new(),
                    overlap_seconds: 0,
                    justification: "annual rotation".into(),
                },
                &sys_admin,
            ))
            .await
            .unwrap();
        let both = append_and_checkpoint(&server, &gateway, 2).await;
        assert_eq!(Note::parse(both.as_bytes()).unwrap().signatures().len(), 2);
        // Times are whole seconds: revoke only once the clock has left `both`'s second, so
        // the old key was still valid at that checkpoint's time.
        let both_time = body_of(&both).time.unwrap();
        common::wait_until("the clock to pass the checkpoint's second", || {
            unix_now() > both_time
        });
        client
            .revoke_key(authed(
                pb::RevokeKeyRequest {
                    key_id: old_id.clone(),
                    reason: "retired".into(),
                },
                &sys_admin,
            ))
            .await
            .unwrap();
        let only_new = append_and_checkpoint(&server, &gateway, 3).await;
        (only_old, both, only_new)
    });
    assert!(server.stop());
    let new_key = ledger.keys().remove(0);
    let new_id = format!("{:08x}", new_key.key_id());

    let dir = tempfile::tempdir().unwrap();
    let file = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p.to_str().unwrap().to_owned()
    };
    let public = dir.path().join("public-keyring.toml");
    let out = common::run(
        &[
            "keys",
            "export",
            "--config",
            &ledger.config(),
            "--out",
            public.to_str().unwrap(),
        ],
        &[],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&public).unwrap();
    assert!(
        !text.contains("private_key_file") && !text.contains("PRIVATE"),
        "{text}"
    );
    assert!(
        text.contains(&old_id) && text.contains(&new_id) && text.contains("revoked_at"),
        "{text}"
    );
    let keyring = public.to_str().unwrap();

    // Each real checkpoint: which key signed, valid at its time. No --key needed.
    let (ok, out) = verify(&[
        "checkpoint",
        &file("a.note", &only_old),
        "--keyring",
        keyring,
    ]);
    assert!(ok, "{out}");
    assert!(
        out.contains(&format!(
            "+{old_id}: signed, valid at the checkpoint's time"
        )),
        "{out}"
    );
    let (ok, out) = verify(&["checkpoint", &file("b.note", &both), "--keyring", keyring]);
    assert!(ok, "{out}");
    for id in [&old_id, &new_id] {
        assert!(
            out.contains(&format!("+{id}: signed, valid at the checkpoint's time")),
            "{out}"
        );
    }
    let (ok, out) = verify(&[
        "checkpoint",
        &file("c.note", &only_new),
        "--keyring",
        keyring,
    ]);
    assert!(ok, "{out}");
    assert!(out.contains(&format!("+{new_id}: signed, valid")), "{out}");

    // A checkpoint signed only by the old key after it was revoked (what a thief holding the
    // retired key could make): the signature itself is genuine, so --key alone accepts it …
    let key_file = std::fs::read_dir(ledger.dir.join("keys"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.to_string_lossy().ends_with(&format!("{old_id}.key")))
        .expect("the old key's private key file");
    let old_signer = SignerKey::parse(&std::fs::read_to_string(key_file).unwrap()).unwrap();
    let late = body_of(&only_new)
        .sign(std::slice::from_ref(&old_signer))
        .unwrap();
    let late_file = file("late.note", &late);
    let (ok, out) = verify(&["checkpoint", &late_file, "--key", &old_key.to_string()]);
    assert!(ok, "{out}");
    // … but the keyring knows the key was revoked at or before the checkpoint's time.
    let old_vkey = old_key.to_string();
    for extra in [vec![], vec!["--key", old_vkey.as_str()]] {
        let mut args = vec!["checkpoint", late_file.as_str(), "--keyring", keyring];
        args.extend(extra);
        let (ok, out) = verify(&args);
        assert!(!ok, "{out}");
        assert!(out.contains(&old_id) && out.contains("revoked at"), "{out}");
        assert!(out.contains("retired"), "{out}");
        assert!(
            out.contains("no signature from a key valid at its time"),
            "{out}"
        );
    }
}
