//! Every role × every implemented RPC × own and other tenant, against the real server; then the
//! system log must hold a denial record for each refusal, naming principal, method and reason.

mod common;

use std::collections::BTreeMap;

use auditledger_proto::v1 as pb;
use common::{Ledger, Server, authed, event};
use tonic::Code;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Rpc {
    Append,
    GetCheckpoint,
    GetInclusionProof,
    GetInclusionProofs,
    GetConsistencyProof,
    GetEntries,
    PlaceLegalHold,
    ListLegalHolds,
    GetTierStatus,
    Export,
    FindEvents,
}

const RPCS: [Rpc; 11] = [
    Rpc::Append,
    Rpc::GetCheckpoint,
    Rpc::GetInclusionProof,
    Rpc::GetInclusionProofs,
    Rpc::GetConsistencyProof,
    Rpc::GetEntries,
    Rpc::PlaceLegalHold,
    Rpc::ListLegalHolds,
    Rpc::GetTierStatus,
    Rpc::Export,
    Rpc::FindEvents,
];

/// Whether `role` may call `rpc` on its own tenant.
fn allowed(role: &str, rpc: Rpc) -> bool {
    match rpc {
        Rpc::Append => role == "gateway",
        Rpc::GetCheckpoint | Rpc::GetConsistencyProof => role != "gateway",
        Rpc::GetInclusionProof | Rpc::GetInclusionProofs => {
            matches!(role, "investigator" | "auditor" | "admin")
        }
        Rpc::GetEntries => matches!(role, "investigator" | "admin"),
        Rpc::PlaceLegalHold => role == "admin",
        Rpc::ListLegalHolds | Rpc::GetTierStatus => {
            matches!(role, "admin" | "compliance" | "auditor")
        }
        Rpc::Export => matches!(role, "compliance" | "admin"),
        Rpc::FindEvents => matches!(role, "investigator" | "admin"),
    }
}

async fn call(
    server: &Server,
    token: &str,
    rpc: Rpc,
    tenant: &str,
) -> Result<Option<pb::InclusionProof>, tonic::Status> {
    let justification = "matrix test".to_string();
    match rpc {
        Rpc::Append => {
            let mut ingest = server.ingest().await;
            ingest
                .append(authed(
                    pb::AppendRequest {
                        events: vec![event(tenant, "prod", 1000)],
                        wait_for_checkpoint: false,
                    },
                    token,
                ))
                .await
                .map(|_| None)
        }
        Rpc::GetCheckpoint => {
            let mut log = server.log().await;
            log.get_checkpoint(authed(
                pb::GetCheckpointRequest {
                    tenant_id: tenant.into(),
                    environment: "prod".into(),
                    tree_size: 0,
                },
                token,
            ))
            .await
            .map(|_| None)
        }
        Rpc::GetInclusionProof => {
            let mut log = server.log().await;
            log.get_inclusion_proof(authed(
                pb::GetInclusionProofRequest {
                    tenant_id: tenant.into(),
                    environment: "prod".into(),
                    key: Some(pb::get_inclusion_proof_request::Key::LeafIndex(1)),
                    tree_size: 0,
                    justification,
                },
                token,
            ))
            .await
            .map(|r| Some(r.into_inner()))
        }
        Rpc::GetInclusionProofs => {
            let mut log = server.log().await;
            log.get_inclusion_proofs(authed(
                pb::GetInclusionProofsRequest {
                    tenant_id: tenant.into(),
                    environment: "prod".into(),
                    keys: vec![pb::LeafKey {
                        key: Some(pb::leaf_key::Key::LeafIndex(1)),
                    }],
                    tree_size: 0,
                },
                token,
            ))
            .await
            .map(|r| {
                let r = r.into_inner();
                assert_eq!(r.proofs.len(), 1);
                // Hashes only, whatever the role: this method never returns contents.
                assert!(r.proofs[0].leaf.is_empty() && r.proofs[0].leaf_hash.len() == 32);
                None
            })
        }
        Rpc::GetConsistencyProof => {
            let mut log = server.log().await;
            log.get_consistency_proof(authed(
                pb::GetConsistencyProofRequest {
                    tenant_id: tenant.into(),
                    environment: "prod".into(),
                    first: 1,
                    second: 3,
                },
                token,
            ))
            .await
            .map(|_| None)
        }
        Rpc::GetEntries => {
            let mut log = server.log().await;
            let mut s = log
                .get_entries(authed(
                    pb::GetEntriesRequest {
                        tenant_id: tenant.into(),
                        environment: "prod".into(),
                        start: 0,
                        end: 3,
                        justification,
                    },
                    token,
                ))
                .await?
                .into_inner();
            while s.message().await?.is_some() {}
            Ok(None)
        }
        Rpc::PlaceLegalHold => {
            let mut admin = pb::admin_client::AdminClient::new(server.channel().await);
            admin
                .place_legal_hold(authed(
                    pb::PlaceLegalHoldRequest {
                        tenant_id: tenant.into(),
                        environment: "prod".into(),
                        case_id: "MATRIX-1".into(),
                        reason: "matrix test".into(),
                        ..Default::default()
                    },
                    token,
                ))
                .await
                .map(|_| None)
        }
        Rpc::ListLegalHolds => {
            let mut admin = pb::admin_client::AdminClient::new(server.channel().await);
            admin
                .list_legal_holds(authed(
                    pb::ListLegalHoldsRequest {
                        tenant_id: tenant.into(),
                        environment: "prod".into(),
                    },
                    token,
                ))
                .await
                .map(|_| None)
        }
        Rpc::GetTierStatus => {
            let mut admin = pb::admin_client::AdminClient::new(server.channel().await);
            admin
                .get_tier_status(authed(
                    pb::GetTierStatusRequest {
                        tenant_id: tenant.into(),
                        environment: "prod".into(),
                    },
                    token,
                ))
                .await
                .map(|_| None)
        }
        Rpc::Export => {
            let mut compliance =
                pb::compliance_client::ComplianceClient::new(server.channel().await);
            let mut s = compliance
                .export(authed(
                    pb::ExportRequest {
                        tenant_id: tenant.into(),
                        environment: "prod".into(),
                        start: 0,
                        end: 3,
                        justification,
                        ..Default::default()
                    },
                    token,
                ))
                .await?
                .into_inner();
            let mut bytes = 0;
            while let Some(chunk) = s.message().await? {
                bytes += chunk.data.len();
            }
            assert!(bytes > 1024, "an export of 3 leaves is a tar of a few KiB");
            Ok(None)
        }
        Rpc::FindEvents => {
            let mut investigate =
                pb::investigate_client::InvestigateClient::new(server.channel().await);
            let found = investigate
                .find_events(authed(
                    pb::FindEventsRequest {
                        tenant_id: tenant.into(),
                        environment: "prod".into(),
                        user_id: "alice".into(),
                        limit: 2,
                        justification,
                        ..Default::default()
                    },
                    token,
                ))
                .await?
                .into_inner();
            assert_eq!(found.events.len(), 2, "the matrix log has events of alice");
            Ok(None)
        }
    }
}

#[test]
fn every_role_every_rpc_own_and_other_tenant() {
    let ledger = Ledger::init("ledger.checkpoint_interval = \"50ms\"");
    let roles = ["gateway", "investigator", "compliance", "auditor", "admin"];
    let tokens: BTreeMap<&str, String> = roles
        .iter()
        .map(|r| (*r, ledger.token(r, &["acme"], &["prod"], None)))
        .collect();
    let feeder = ledger.token("gateway", &["acme", "globex"], &["prod"], None);
    let sys_admin = ledger.token("admin", &["_system"], &["prod"], None);
    let server = Server::start(&ledger);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut denials = 0;
    rt.block_on(async {
        // Both tenants have a few checkpointed leaves.
        let mut ingest = server.ingest().await;
        for tenant in ["acme", "globex"] {
            let events: Vec<_> = (1..=3).map(|i| event(tenant, "prod", i)).collect();
            ingest
                .append(authed(
                    pb::AppendRequest {
                        events,
                        wait_for_checkpoint: true,
                    },
                    &feeder,
                ))
                .await
                .unwrap();
        }
        for role in roles {
            for rpc in RPCS {
                for (tenant, own) in [("acme", true), ("globex", false)] {
                    let result = call(&server, &tokens[role], rpc, tenant).await;
                    let expect_ok = own && allowed(role, rpc);
                    match (&result, expect_ok) {
                        (Ok(proof), true) => {
                            if let Some(p) = proof {
                                // Auditors get proofs, never event contents.
                                assert_eq!(p.leaf.is_empty(), role == "auditor", "{role} {rpc:?}");
                                assert_eq!(p.leaf_hash.len(), 32);
                            }
                        }
                        (Err(status), false) => {
                            assert_eq!(
                                status.code(),
                                Code::PermissionDenied,
                                "{role} {rpc:?} {tenant}: {status}"
                            );
                            denials += 1;
                        }
                        _ => panic!(
                            "{role} {rpc:?} on {tenant}: expected {}, got {result:?}",
                            if expect_ok { "OK" } else { "PERMISSION_DENIED" }
                        ),
                    }
                }
            }
        }
        // Unauthenticated calls are refused too.
        for rpc in RPCS {
            let status = call(&server, "alt_not_a_token", rpc, "acme")
                .await
                .unwrap_err();
            assert_eq!(status.code(), Code::Unauthenticated, "{rpc:?}");
            denials += 1;
        }
    });
    assert!(denials >= 30, "{denials} denials");

    // Each denial is a leaf of the system log naming principal, method and reason.
    rt.block_on(async {
        let denied = |events: &[pb::AuditEvent]| -> Vec<pb::AuditEvent> {
            events
                .iter()
                .filter(|ev| ev.decision == pb::Decision::Deny as i32)
                .cloned()
                .collect()
        };
        let justified_reads = |events: &[pb::AuditEvent]| {
            events
                .iter()
                .filter(|ev| {
                    ev.event_kind == pb::EventKind::Access as i32
                        && ev
                            .attributes
                            .get("justification")
                            .is_some_and(|j| j == "matrix test")
                })
                .count()
        };
        let events = common::system_events(&server, &sys_admin, |e| {
            denied(e).len() >= denials && justified_reads(e) >= 6
        })
        .await;
        assert!(events.iter().all(|ev| ev.tenant_id == "_system"));
        let deny_records = denied(&events);
        assert!(
            deny_records.len() >= denials,
            "{} denial records for {denials} denials",
            deny_records.len()
        );
        for ev in &deny_records {
            assert!(!ev.user_id.is_empty(), "principal named");
            assert!(ev.tool_name.contains('.'), "method named: {}", ev.tool_name);
            assert!(!ev.decision_reason.is_empty(), "reason given");
        }
        assert!(
            deny_records
                .iter()
                .any(|e| e.user_id.starts_with("gateway-acme") && e.tool_name == "Log.GetEntries")
        );
        assert!(
            deny_records
                .iter()
                .any(|e| e.user_id == "anonymous" && e.decision_reason.contains("unknown"))
        );
        // Reads of contents are recorded too, with their justification.
        let reads = justified_reads(&events);
        // investigator + admin: GetInclusionProof, GetEntries and FindEvents each.
        assert_eq!(reads, 6, "content reads recorded with justification");
    });
}
