//! Tiering end to end with the real binaries: events appended over gRPC, segments moved by
//! `auditledger archive --once` hot → warm → cold, `auditledger tiers` and `fsck` on the
//! result, then the restarted server answers GetEntries and GetInclusionProof identically for
//! hot, warm and cold leaves — contents and proofs checked with the verifier crate.

mod common;

use std::collections::BTreeMap;

use auditledger_ledger::event::decode_leaf_strict;
use auditledger_proto::v1 as pb;
use common::{Ledger, Server, authed, cli, event, rt};

/// Appends `n` events with gateway_seq from `first_seq`, returns them.
fn append(server: &Server, token: &str, first_seq: u64, n: u64) -> Vec<pb::AuditEvent> {
    let events: Vec<_> = (first_seq..first_seq + n)
        .map(|i| event("acme", "prod", i))
        .collect();
    rt().block_on(async {
        let mut ingest = server.ingest().await;
        for chunk in events.chunks(200) {
            ingest
                .append(authed(
                    pb::AppendRequest {
                        events: chunk.to_vec(),
                        wait_for_checkpoint: false,
                    },
                    token,
                ))
                .await
                .unwrap();
        }
    });
    events
}

#[test]
fn segments_move_hot_warm_cold_and_read_the_same() {
    let ledger = Ledger::init("ledger.segment_bits = 8\nledger.checkpoint_interval = \"50ms\"");
    let config = ledger.config();
    let gateway = ledger.token("gateway", &["acme"], &["prod"], None);
    let investigator = ledger.token("investigator", &["acme"], &["prod"], None);
    let admin = ledger.token("admin", &["acme"], &["prod"], None);
    let system_admin = ledger.token("admin", &["_system"], &["prod"], None);
    let keys = ledger.keys();

    // Two segments, moved to warm and then to cold.
    let server = Server::start(&ledger);
    let mut sent = append(&server, &gateway, 1, 512);
    assert!(server.stop());
    let text = ledger.archive("warm");
    assert!(text.contains("2 segment(s) moved to warm"), "{text}");
    assert!(text.contains("[0, 256) hot -> warm"), "{text}");
    let text = ledger.archive("cold");
    assert!(text.contains("2 segment(s) moved to cold"), "{text}");
    // A third to warm; the partial tail stays hot.
    let server = Server::start(&ledger);
    sent.extend(append(&server, &gateway, 513, 261));
    assert!(server.stop());
    let text = ledger.archive("warm");
    assert!(text.contains("1 segment(s) moved to warm"), "{text}");
    // Nothing left to do: a second pass moves nothing.
    let text = ledger.archive("warm");
    assert!(text.contains("0 segment(s) moved to warm"), "{text}");

    let warm_dir = ledger.dir.join("warm/acme/prod/segments");
    let cold_dir = ledger.dir.join("cold/acme/prod/segments");
    let names = |dir: &std::path::Path| {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .map(|d| {
                d.map(|e| e.unwrap().file_name().into_string().unwrap())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    };
    assert_eq!(
        names(&cold_dir),
        [
            "0-256.anchor",
            "0-256.manifest",
            "0-256.parquet",
            "256-512.anchor",
            "256-512.manifest",
            "256-512.parquet"
        ]
    );
    assert_eq!(
        names(&warm_dir),
        ["512-768.anchor", "512-768.manifest", "512-768.parquet"]
    );

    let (ok, text) = cli(&["fsck", "--config", &config]);
    assert!(ok, "fsck after archiving: {text}");
    let (ok, text) = cli(&["tiers", "--config", &config]);
    assert!(ok, "{text}");
    let row = |tier: &str| {
        text.lines()
            .find(|l| l.contains("acme/prod") && l.split_whitespace().nth(1) == Some(tier))
            .unwrap_or_else(|| panic!("no {tier} row in {text}"))
            .split_whitespace()
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    assert_eq!(row("hot")[2], "5");
    assert_eq!(row("warm")[2..4], ["256", "1"]);
    assert_eq!(row("cold")[2..4], ["512", "2"]);

    // Reads across tiers from the restarted server.
    let server = Server::start(&ledger);
    // Every move is in the system log, recorded before it committed.
    let moves = |events: &[pb::AuditEvent]| -> Vec<String> {
        events
            .iter()
            .filter(|e| e.tool_name == "archiver.move")
            .map(|e| {
                let a = &e.attributes;
                format!(
                    "{}-{} {}->{}",
                    a.get("start").cloned().unwrap_or_default(),
                    a.get("end").cloned().unwrap_or_default(),
                    a.get("from").cloned().unwrap_or_default(),
                    a.get("to").cloned().unwrap_or_default()
                )
            })
            .collect()
    };
    let events = rt().block_on(common::system_events(&server, &system_admin, |events| {
        moves(events).len() >= 5
    }));
    let mut logged = moves(&events);
    logged.sort();
    assert_eq!(
        logged,
        [
            "0-256 hot->warm",
            "0-256 warm->cold",
            "256-512 hot->warm",
            "256-512 warm->cold",
            "512-768 hot->warm"
        ],
        "{events:#?}"
    );
    rt().block_on(async {
        let mut log = server.log().await;
        // Wait for a checkpoint covering everything.
        let total = sent.len() as u64;
        let mut note = String::new();
        for _ in 0..100 {
            note = log
                .get_checkpoint(authed(
                    pb::GetCheckpointRequest {
                        tenant_id: "acme".into(),
                        environment: "prod".into(),
                        tree_size: 0,
                    },
                    &investigator,
                ))
                .await
                .unwrap()
                .into_inner()
                .note;
            if note.lines().nth(1) == Some(&total.to_string()) {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        assert_eq!(note.lines().nth(1), Some(total.to_string().as_str()));

        let mut entries = log
            .get_entries(authed(
                pb::GetEntriesRequest {
                    tenant_id: "acme".into(),
                    environment: "prod".into(),
                    start: 0,
                    end: total,
                    justification: "tier test".into(),
                },
                &investigator,
            ))
            .await
            .unwrap()
            .into_inner();
        let mut tiers = BTreeMap::new();
        let mut n = 0u64;
        while let Some(e) = entries.message().await.unwrap() {
            assert_eq!(e.leaf_index, n);
            let expected_tier = match n {
                0..512 => pb::Tier::Cold,
                512..768 => pb::Tier::Warm,
                _ => pb::Tier::Hot,
            };
            assert_eq!(e.tier, expected_tier as i32, "leaf {n}");
            assert!(!e.content_expired);
            assert_eq!(
                decode_leaf_strict(&e.leaf).unwrap().event.unwrap(),
                sent[n as usize],
                "leaf {n} holds the event as sent"
            );
            assert_eq!(
                e.leaf_hash,
                auditledger_ledger::merkle::leaf_hash(&e.leaf).to_vec()
            );
            *tiers.entry(e.tier).or_insert(0) += 1;
            n += 1;
        }
        assert_eq!(n, total);
        assert_eq!(tiers.len(), 3);

        // One proof per tier, by index, by event id and by leaf hash; each verifies offline.
        for (index, tier) in [
            (7u64, pb::Tier::Cold),
            (600, pb::Tier::Warm),
            (770, pb::Tier::Hot),
        ] {
            let by_index = pb::get_inclusion_proof_request::Key::LeafIndex(index);
            let by_id = pb::get_inclusion_proof_request::Key::EventId(
                sent[index as usize].event_id.clone(),
            );
            let mut proofs = Vec::new();
            for key in [by_index, by_id] {
                proofs.push(
                    log.get_inclusion_proof(authed(
                        pb::GetInclusionProofRequest {
                            tenant_id: "acme".into(),
                            environment: "prod".into(),
                            key: Some(key),
                            tree_size: 0,
                            justification: "tier test".into(),
                        },
                        &investigator,
                    ))
                    .await
                    .unwrap()
                    .into_inner(),
                );
            }
            let hash = proofs[0].leaf_hash.clone();
            proofs.push(
                log.get_inclusion_proof(authed(
                    pb::GetInclusionProofRequest {
                        tenant_id: "acme".into(),
                        environment: "prod".into(),
                        key: Some(pb::get_inclusion_proof_request::Key::LeafHash(hash)),
                        tree_size: 0,
                        justification: "tier test".into(),
                    },
                    &investigator,
                ))
                .await
                .unwrap()
                .into_inner(),
            );
            for p in proofs {
                assert_eq!((p.leaf_index, p.tier), (index, tier as i32));
                let note = p.checkpoint.unwrap().note;
                auditledger_verifier::verify_inclusion(
                    &p.leaf,
                    index,
                    &p.hashes,
                    note.as_bytes(),
                    &keys,
                )
                .unwrap_or_else(|e| panic!("leaf {index} ({tier:?}): {e}"));
            }
        }

        // Tier status over gRPC agrees.
        let mut admin_client = pb::admin_client::AdminClient::new(server.channel().await);
        let status = admin_client
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
        let usage: BTreeMap<i32, (u64, u64)> = status.logs[0]
            .tiers
            .iter()
            .map(|t| (t.tier, (t.leaves, t.segments)))
            .collect();
        assert_eq!(
            usage,
            BTreeMap::from([
                (pb::Tier::Hot as i32, (5, 1)),
                (pb::Tier::Warm as i32, (256, 1)),
                (pb::Tier::Cold as i32, (512, 2)),
            ])
        );
        let warm = status.logs[0]
            .tiers
            .iter()
            .find(|t| t.tier == pb::Tier::Warm as i32)
            .unwrap();
        assert!(warm.bytes > 0 && warm.oldest > 0 && warm.oldest <= warm.newest);
    });
    assert!(server.stop());
}

#[test]
fn retention_in_the_service_expires_contents_a_hold_does_not_cover() {
    let ledger = Ledger::init(
        "ledger.segment_bits = 8\nledger.checkpoint_interval = \"50ms\"\ntiers.hot_window = \"0s\"\ntiers.warm_window = \"0s\"\ntiers.retention = \"2s\"\ntiers.archive_interval = \"500ms\"",
    );
    let gateway = ledger.token("gateway", &["acme"], &["prod"], None);
    let investigator = ledger.token("investigator", &["acme"], &["prod"], None);
    let admin = ledger.token("admin", &["acme"], &["prod"], None);
    let sys_admin = ledger.token("admin", &["_system"], &["prod"], None);
    let keys = ledger.keys();
    let server = Server::start(&ledger);
    rt().block_on(async {
        // alice's events are under a legal hold; bob's are not.
        let mut admin_client = pb::admin_client::AdminClient::new(server.channel().await);
        let hold = admin_client
            .place_legal_hold(authed(
                pb::PlaceLegalHoldRequest {
                    tenant_id: "acme".into(),
                    environment: "prod".into(),
                    user_id: "alice".into(),
                    case_id: "CASE-9".into(),
                    reason: "pending litigation".into(),
                    ..Default::default()
                },
                &admin,
            ))
            .await
            .unwrap()
            .into_inner();
        let events: Vec<_> = (1..=256)
            .map(|i| {
                let mut e = event("acme", "prod", i);
                if i % 2 == 0 {
                    e.user_id = "bob".into();
                }
                e
            })
            .collect();
        let mut ingest = server.ingest().await;
        ingest
            .append(authed(
                pb::AppendRequest {
                    events: events.clone(),
                    wait_for_checkpoint: true,
                },
                &gateway,
            ))
            .await
            .unwrap();

        // The archiver inside the server moves the segment to cold and, once retention has
        // passed, drops bob's contents.
        let mut log = server.log().await;
        let mut entries = Vec::new();
        for _ in 0..150 {
            entries.clear();
            let mut stream = log
                .get_entries(authed(
                    pb::GetEntriesRequest {
                        tenant_id: "acme".into(),
                        environment: "prod".into(),
                        start: 0,
                        end: 256,
                        justification: "retention test".into(),
                    },
                    &investigator,
                ))
                .await
                .unwrap()
                .into_inner();
            while let Some(e) = stream.message().await.unwrap() {
                entries.push(e);
            }
            if entries.iter().any(|e| e.content_expired) {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
        assert_eq!(entries.len(), 256);
        for (i, e) in entries.iter().enumerate() {
            assert_eq!(e.tier, pb::Tier::Cold as i32, "leaf {i}");
            let bob = events[i].user_id == "bob";
            assert_eq!(
                e.content_expired, bob,
                "leaf {i}: only bob's contents expire"
            );
            if bob {
                assert!(e.leaf.is_empty());
            } else {
                assert_eq!(
                    decode_leaf_strict(&e.leaf).unwrap().event.unwrap(),
                    events[i]
                );
            }
        }
        // An expired leaf still proves: its hash is in the tree under a signed checkpoint.
        let p = log
            .get_inclusion_proof(authed(
                pb::GetInclusionProofRequest {
                    tenant_id: "acme".into(),
                    environment: "prod".into(),
                    key: Some(pb::get_inclusion_proof_request::Key::LeafIndex(1)),
                    tree_size: 0,
                    justification: "retention test".into(),
                },
                &investigator,
            ))
            .await
            .unwrap()
            .into_inner();
        assert!(p.content_expired && p.leaf.is_empty());
        let hash: [u8; 32] = p.leaf_hash.as_slice().try_into().unwrap();
        auditledger_verifier::verify_inclusion_of_hash(
            &hash,
            1,
            &p.hashes,
            p.checkpoint.unwrap().note.as_bytes(),
            &keys,
        )
        .unwrap();

        // The deletion was recorded in the system log, with what the hold kept.
        let expiry = |events: &[pb::AuditEvent]| {
            events
                .iter()
                .find(|ev| ev.tool_name == "archiver.expire")
                .cloned()
        };
        let recorded = common::system_events(&server, &sys_admin, |e| expiry(e).is_some()).await;
        let ev = expiry(&recorded).expect("expiry recorded in the system log");
        assert_eq!(ev.event_kind, pb::EventKind::Retention as i32);
        assert_eq!(
            ev.attributes.get("leaves_expired").map(String::as_str),
            Some("128")
        );
        assert_eq!(
            ev.attributes.get("leaves_held").map(String::as_str),
            Some("128")
        );
        assert_eq!(ev.attributes.get("holds"), Some(&hold.hold_id));
    });
    assert!(server.stop());
}
