//! The Admin service against the real server: legal holds (validation, tenancy, lifecycle,
//! system-log records), tier status and the key listing.

mod common;

use auditledger_proto::v1 as pb;
use common::{Ledger, Server, authed, event};
use tonic::Code;

#[test]
fn legal_holds_tier_status_and_keys() {
    let ledger = Ledger::init("ledger.checkpoint_interval = \"50ms\"");
    let admin = ledger.token("admin", &["acme"], &["prod"], None);
    let other_admin = ledger.token("admin", &["globex"], &["prod"], None);
    let gateway = ledger.token("gateway", &["acme"], &["prod"], None);
    let sys_admin = ledger.token("admin", &["_system"], &["prod"], None);
    let server = Server::start(&ledger);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut client = pb::admin_client::AdminClient::new(server.channel().await);
        let request = pb::PlaceLegalHoldRequest {
            tenant_id: "acme".into(),
            environment: "prod".into(),
            from_time: 1_000,
            to_time: 2_000,
            user_id: "alice".into(),
            case_id: "CASE-42".into(),
            reason: "litigation".into(),
            ..Default::default()
        };
        // Validation names what is missing or wrong.
        for (bad, needle) in [
            (
                pb::PlaceLegalHoldRequest {
                    case_id: String::new(),
                    ..request.clone()
                },
                "case_id",
            ),
            (
                pb::PlaceLegalHoldRequest {
                    to_time: 500,
                    ..request.clone()
                },
                "window is empty",
            ),
        ] {
            let err = client
                .place_legal_hold(authed(bad, &admin))
                .await
                .unwrap_err();
            assert_eq!(err.code(), Code::InvalidArgument, "{err}");
            assert!(err.message().contains(needle), "{}", err.message());
        }
        let hold = client
            .place_legal_hold(authed(request.clone(), &admin))
            .await
            .unwrap()
            .into_inner();
        assert!(!hold.hold_id.is_empty());
        assert_eq!(
            (hold.case_id.as_str(), hold.user_id.as_str()),
            ("CASE-42", "alice")
        );
        assert!(hold.placed_by.starts_with("admin-acme") && hold.placed_at > 0);
        assert_eq!(hold.released_at, 0);

        let lister = client.clone();
        let list = |token: String| {
            let mut client = lister.clone();
            async move {
                client
                    .list_legal_holds(authed(
                        pb::ListLegalHoldsRequest {
                            tenant_id: "acme".into(),
                            environment: "prod".into(),
                        },
                        &token,
                    ))
                    .await
            }
        };
        assert_eq!(
            list(admin.clone()).await.unwrap().into_inner().holds,
            vec![hold.clone()]
        );
        // Another tenant's admin neither sees nor releases it; a gateway cannot place one.
        assert_eq!(
            list(other_admin.clone()).await.unwrap_err().code(),
            Code::PermissionDenied
        );
        let release = |token: &str, reason: &str| {
            authed(
                pb::ReleaseLegalHoldRequest {
                    hold_id: hold.hold_id.clone(),
                    reason: reason.into(),
                },
                token,
            )
        };
        let err = client
            .release_legal_hold(release(&other_admin, "not mine"))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied, "{err}");
        let err = client
            .place_legal_hold(authed(request.clone(), &gateway))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied, "{err}");
        let err = client
            .release_legal_hold(release(&admin, " "))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{err}");
        let released = client
            .release_legal_hold(release(&admin, "case closed"))
            .await
            .unwrap()
            .into_inner();
        assert!(released.released_at > 0 && released.released_by.starts_with("admin-acme"));
        let err = client
            .release_legal_hold(release(&admin, "again"))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::FailedPrecondition, "{err}");
        assert_eq!(
            list(admin.clone()).await.unwrap().into_inner().holds,
            vec![released.clone()]
        );

        // Tier status: everything is hot, nothing is due to move.
        let mut ingest = server.ingest().await;
        let events: Vec<_> = (1..=10).map(|i| event("acme", "prod", i)).collect();
        ingest
            .append(authed(
                pb::AppendRequest {
                    events,
                    wait_for_checkpoint: false,
                },
                &gateway,
            ))
            .await
            .unwrap();
        let status = client
            .get_tier_status(authed(
                pb::GetTierStatusRequest {
                    tenant_id: "acme".into(),
                    environment: "prod".into(),
                },
                &admin,
            ))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(status.logs.len(), 1);
        let log = &status.logs[0];
        assert!(log.origin.ends_with("/acme/prod"));
        assert_eq!((log.tree_size, log.pending_moves), (10, 0));
        assert_eq!(log.tiers.len(), 1);
        let hot = &log.tiers[0];
        assert_eq!(
            (hot.tier, hot.leaves, hot.segments),
            (pb::Tier::Hot as i32, 10, 1)
        );
        assert!(hot.oldest > 0 && hot.oldest <= hot.newest);

        // The keyring: one active key, the one `init` made.
        let keys = client
            .list_keys(authed(pb::ListKeysRequest {}, &admin))
            .await
            .unwrap()
            .into_inner()
            .keys;
        assert_eq!(keys.len(), 1);
        assert!(keys[0].active);
        assert_eq!(keys[0].verifier_key, ledger.keys()[0].to_string());
        let err = client
            .list_keys(authed(pb::ListKeysRequest {}, &gateway))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied);

        // Placement and release are both in the system log, with the hold's details.
        let holds_only = |events: &[pb::AuditEvent]| -> Vec<pb::AuditEvent> {
            events
                .iter()
                .filter(|ev| ev.event_kind == pb::EventKind::LegalHold as i32)
                .cloned()
                .collect()
        };
        let events = common::system_events(&server, &sys_admin, |e| holds_only(e).len() >= 2).await;
        let found = holds_only(&events);
        assert_eq!(found.len(), 2, "placement and release recorded: {found:?}");
        assert_eq!(found[0].tool_name, "Admin.PlaceLegalHold");
        assert_eq!(found[1].tool_name, "Admin.ReleaseLegalHold");
        for ev in &found {
            let text = format!("{ev:?}");
            assert!(
                text.contains(&hold.hold_id) && text.contains("CASE-42"),
                "{text}"
            );
        }
    });
    assert!(server.stop());
}

/// Appends one event with `wait_for_checkpoint` and returns the checkpoint note.
async fn checkpoint_after_append(server: &Server, gateway: &str, seq: u64) -> String {
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

fn signature_lines(note: &str) -> usize {
    note.lines().filter(|l| l.starts_with('\u{2014}')).count()
}

#[test]
fn signing_key_rotation_and_revocation() {
    let ledger = Ledger::init("ledger.checkpoint_interval = \"50ms\"");
    let gateway = ledger.token("gateway", &["acme"], &["prod"], None);
    let tenant_admin = ledger.token("admin", &["acme"], &["prod"], None);
    let sys_admin = ledger.token("admin", &["_system"], &["prod"], None);
    let old_key = ledger.keys().remove(0);
    let server = Server::start(&ledger);
    rt_block_on(async {
        let mut client = pb::admin_client::AdminClient::new(server.channel().await);
        let rotate = |token: &str, justification: &str| {
            authed(
                pb::RotateSigningKeyRequest {
                    key_name: String::new(),
                    overlap_seconds: 0,
                    justification: justification.into(),
                },
                token,
            )
        };
        // Keys sign every tenant's log: a tenant's admin may not change them.
        let err = client
            .rotate_signing_key(rotate(&tenant_admin, "mine"))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied, "{err}");
        let err = client
            .rotate_signing_key(rotate(&sys_admin, ""))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{err}");

        let before = checkpoint_after_append(&server, &gateway, 1).await;
        assert_eq!(signature_lines(&before), 1);
        let new = client
            .rotate_signing_key(rotate(&sys_admin, "annual rotation"))
            .await
            .unwrap()
            .into_inner();
        assert!(new.active);
        assert_ne!(new.verifier_key, old_key.to_string());
        let new_key = auditledger_ledger::note::VerifierKey::parse(&new.verifier_key).unwrap();
        // During the overlap both keys sign; either alone verifies.
        let both = checkpoint_after_append(&server, &gateway, 2).await;
        assert_eq!(signature_lines(&both), 2, "{both}");
        for key in [&old_key, &new_key] {
            auditledger_verifier::verify_checkpoint(
                both.as_bytes(),
                std::slice::from_ref(key),
                None,
                None,
            )
            .unwrap();
        }
        // The rotation is saved: `keys list` prints both.
        assert_eq!(ledger.keys().len(), 2);

        // Revoking the old key stops it signing at once.
        let revoked = client
            .revoke_key(authed(
                pb::RevokeKeyRequest {
                    key_id: format!("{:08x}", old_key.key_id()),
                    reason: "retired".into(),
                },
                &sys_admin,
            ))
            .await
            .unwrap()
            .into_inner();
        assert!(!revoked.active && revoked.revoked_at > 0);
        let after = checkpoint_after_append(&server, &gateway, 3).await;
        assert_eq!(signature_lines(&after), 1, "{after}");
        auditledger_verifier::verify_checkpoint(
            after.as_bytes(),
            std::slice::from_ref(&new_key),
            None,
            None,
        )
        .unwrap();
        assert!(
            auditledger_verifier::verify_checkpoint(
                after.as_bytes(),
                std::slice::from_ref(&old_key),
                None,
                None
            )
            .is_err(),
            "a revoked key no longer signs"
        );
        let err = client
            .revoke_key(authed(
                pb::RevokeKeyRequest {
                    key_id: format!("{:08x}", old_key.key_id()),
                    reason: "again".into(),
                },
                &sys_admin,
            ))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::FailedPrecondition, "{err}");
        let err = client
            .revoke_key(authed(
                pb::RevokeKeyRequest {
                    key_id: "00000000".into(),
                    reason: "x".into(),
                },
                &sys_admin,
            ))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::NotFound, "{err}");

        // Both changes are in the system log.
        let rotations = |events: &[pb::AuditEvent]| {
            events
                .iter()
                .filter(|e| e.event_kind == pb::EventKind::KeyRotation as i32)
                .count()
        };
        let events = common::system_events(&server, &sys_admin, |e| rotations(e) >= 2).await;
        assert_eq!(rotations(&events), 2);
    });
    assert!(server.stop());
}

fn rt_block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

/// `auditledger keys status|rotate|revoke` drive the Admin key RPCs of a running server.
#[test]
fn keys_cli_rotates_and_revokes_on_a_running_server() {
    let ledger = Ledger::init("");
    let sys_admin = ledger.token("admin", &["_system"], &["prod"], None);
    let tenant_admin = ledger.token("admin", &["acme"], &["prod"], None);
    let server = Server::start(&ledger);
    let url = server.url();
    let keys = |token: &str, args: &[&str]| {
        let mut all = vec!["keys"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["--target", &url]);
        let out = common::run(&all, &[("AUDITLEDGER_TOKEN", token)]);
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, status, err) = keys(&sys_admin, &["status"]);
    assert!(ok, "{err}");
    let old = ledger.keys()[0].to_string();
    assert_eq!(status.lines().count(), 1, "{status}");
    assert!(
        status.starts_with(&format!("{old} signing valid_from=")),
        "{status}"
    );

    let (ok, _, err) = keys(&tenant_admin, &["rotate", "--justification", "mine"]);
    assert!(!ok && err.contains("PermissionDenied"), "{err}");
    let (ok, new, err) = keys(
        &sys_admin,
        &[
            "rotate",
            "--overlap",
            "1d",
            "--justification",
            "annual rotation",
        ],
    );
    assert!(ok, "{err}");
    assert!(
        new.contains(" signing valid_from=") && !new.starts_with(&old),
        "{new}"
    );
    let (_, status, _) = keys(&sys_admin, &["status"]);
    assert_eq!(status.matches(" signing ").count(), 2, "{status}");
    assert!(
        status.contains("valid_until="),
        "the old key's overlap ends: {status}"
    );

    let old_id = format!("{:08x}", ledger.keys()[0].key_id());
    let (ok, revoked, err) = keys(
        &sys_admin,
        &["revoke", "--key-id", &old_id, "--reason", "retired"],
    );
    assert!(ok, "{err}");
    assert!(
        revoked.starts_with(&old)
            && revoked.contains("not-signing")
            && revoked.contains("revoked_at="),
        "{revoked}"
    );
    let (_, status, _) = keys(&sys_admin, &["status"]);
    assert_eq!(status.matches(" signing ").count(), 1, "{status}");
    assert!(server.stop());
}
