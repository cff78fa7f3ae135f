//! End to end over loopback against the real `auditledger serve`: durable append with receipts
//! and proofs verified by the verifier crate, streaming order, restart, duplicates, gateway
//! sequence gaps, every bad-input class, quotas, health and reflection, graceful shutdown.

mod common;

use std::time::Duration;

use auditledger_ledger::event::decode_leaf_strict;
use auditledger_proto::v1 as pb;
use common::{Ledger, Server, authed, event, metrics_text, rt, wait_until};
use tonic::Code;

#[test]
fn append_prove_read_restart() {
    let ledger = Ledger::init("ledger.checkpoint_interval = \"100ms\"");
    let gw = ledger.token("gateway", &["acme"], &["prod"], None);
    let inv = ledger.token("investigator", &["acme"], &["prod"], Some("1h"));
    let keys = ledger.keys();
    let server = Server::start(&ledger);
    let rt = rt();
    let sent: Vec<pb::AuditEvent> = (1..=100).map(|i| event("acme", "prod", i)).collect();
    let (receipts, first_cp) = rt.block_on(async {
        let mut ingest = server.ingest().await;
        let resp = common::append_proven(&mut ingest, sent.clone(), &gw).await;
        (resp.receipts, resp.checkpoint.unwrap().note)
    });
    assert_eq!(receipts.len(), 100);
    for (i, r) in receipts.iter().enumerate() {
        assert_eq!(r.leaf_index, i as u64);
        assert_eq!(r.event_id, sent[i].event_id);
        assert_eq!(r.origin, "auditledger.local/acme/prod");
        let proof = r.proof.as_ref().expect("proof with wait_for_checkpoint");
        let leaf_hash: [u8; 32] = r.leaf_hash.as_slice().try_into().unwrap();
        auditledger_verifier::verify_inclusion_of_hash(
            &leaf_hash,
            r.leaf_index,
            &proof.hashes,
            first_cp.as_bytes(),
            &keys,
        )
        .unwrap();
    }

    rt.block_on(async {
        let mut log = server.log().await;
        // By index, by hash, by event id: same leaf, verified with its contents.
        for key in [
            pb::get_inclusion_proof_request::Key::LeafIndex(42),
            pb::get_inclusion_proof_request::Key::LeafHash(receipts[42].leaf_hash.clone()),
            pb::get_inclusion_proof_request::Key::EventId(sent[42].event_id.clone()),
        ] {
            let p = log
                .get_inclusion_proof(authed(
                    pb::GetInclusionProofRequest {
                        tenant_id: "acme".into(),
                        environment: "prod".into(),
                        key: Some(key),
                        tree_size: 0,
                        justification: "incident 7".into(),
                    },
                    &inv,
                ))
                .await
                .unwrap()
                .into_inner();
            assert_eq!(p.leaf_index, 42);
            let note = p.checkpoint.unwrap().note;
            auditledger_verifier::verify_inclusion(&p.leaf, 42, &p.hashes, note.as_bytes(), &keys)
                .unwrap();
            let record = decode_leaf_strict(&p.leaf).unwrap();
            assert_eq!(
                record.event.unwrap(),
                sent[42],
                "the leaf carries the event exactly as sent"
            );
            assert!(
                record.principal.starts_with("gateway-acme-prod"),
                "{}",
                record.principal
            );
        }
        // Entries stream in order and match what was sent.
        let mut stream = log
            .get_entries(authed(
                pb::GetEntriesRequest {
                    tenant_id: "acme".into(),
                    environment: "prod".into(),
                    start: 10,
                    end: 60,
                    justification: "incident 7".into(),
                },
                &inv,
            ))
            .await
            .unwrap()
            .into_inner();
        let mut next = 10;
        while let Some(entry) = stream.message().await.unwrap() {
            assert_eq!(entry.leaf_index, next);
            assert_eq!(
                decode_leaf_strict(&entry.leaf).unwrap().event.unwrap(),
                sent[next as usize]
            );
            next += 1;
        }
        assert_eq!(next, 60);
        let err = log
            .get_entries(authed(
                pb::GetEntriesRequest {
                    tenant_id: "acme".into(),
                    environment: "prod".into(),
                    start: 0,
                    end: 101,
                    justification: "x".into(),
                },
                &inv,
            ))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::OutOfRange, "{err}");
    });
    assert!(server.stop(), "clean shutdown");

    // Restart: everything is still there; new appends chain the checkpoint across the restart.
    let server = Server::start(&ledger);
    rt.block_on(async {
        let mut log = server.log().await;
        let cp = log
            .get_checkpoint(authed(
                pb::GetCheckpointRequest {
                    tenant_id: "acme".into(),
                    environment: "prod".into(),
                    tree_size: 0,
                },
                &inv,
            ))
            .await
            .unwrap()
            .into_inner()
            .note;
        let opened = auditledger_ledger::checkpoint::open(cp.as_bytes(), &keys).unwrap();
        assert_eq!(opened.checkpoint.tree_size, 100);
        let mut ingest = server.ingest().await;
        let more: Vec<_> = (101..=110).map(|i| event("acme", "prod", i)).collect();
        let resp = common::append_proven(&mut ingest, more, &gw).await;
        assert_eq!(resp.receipts[0].leaf_index, 100);
        let new_cp = resp.checkpoint.unwrap().note;
        auditledger_verifier::verify_checkpoint(
            new_cp.as_bytes(),
            &keys,
            Some("auditledger.local/acme/prod"),
            Some(cp.as_bytes()),
        )
        .unwrap();
        let proof = log
            .get_consistency_proof(authed(
                pb::GetConsistencyProofRequest {
                    tenant_id: "acme".into(),
                    environment: "prod".into(),
                    first: 100,
                    second: 110,
                },
                &inv,
            ))
            .await
            .unwrap()
            .into_inner();
        auditledger_verifier::verify_consistency(
            first_cp.as_bytes(),
            new_cp.as_bytes(),
            &proof.hashes,
            &keys,
        )
        .unwrap();
    });
    assert!(server.stop());
    let fsck = common::run(&["fsck", "--config", &ledger.config()], &[]);
    assert!(
        fsck.status.success(),
        "{}",
        String::from_utf8_lossy(&fsck.stdout)
    );
}

#[test]
fn batched_inclusion_proofs() {
    let ledger = Ledger::init("ledger.checkpoint_interval = \"100ms\"\nlimits.max_proof_keys = 8");
    let gw = ledger.token("gateway", &["acme"], &["prod"], None);
    let aud = ledger.token("auditor", &["acme"], &["prod"], None);
    let keys = ledger.keys();
    let server = Server::start(&ledger);
    let rt = rt();
    rt.block_on(async {
        let sent: Vec<pb::AuditEvent> = (1..=40).map(|i| event("acme", "prod", i)).collect();
        let mut ingest = server.ingest().await;
        let receipts = common::append_proven(&mut ingest, sent.clone(), &gw)
            .await
            .receipts;
        let mut log = server.log().await;
        let key = |k: pb::leaf_key::Key| pb::LeafKey { key: Some(k) };
        let request = |keys: Vec<pb::LeafKey>, tree_size: u64| {
            authed(
                pb::GetInclusionProofsRequest {
                    tenant_id: "acme".into(),
                    environment: "prod".into(),
                    keys,
                    tree_size,
                },
                &aud,
            )
        };
        // Mixed keys, out of order, one leaf twice.
        let wanted = [
            key(pb::leaf_key::Key::LeafIndex(39)),
            key(pb::leaf_key::Key::LeafHash(receipts[7].leaf_hash.clone())),
            key(pb::leaf_key::Key::EventId(sent[21].event_id.clone())),
            key(pb::leaf_key::Key::LeafIndex(0)),
            key(pb::leaf_key::Key::LeafIndex(21)),
        ];
        let resp = log
            .get_inclusion_proofs(request(wanted.to_vec(), 0))
            .await
            .unwrap()
            .into_inner();
        let note = resp.checkpoint.expect("the checkpoint, once").note;
        let indexes: Vec<u64> = resp.proofs.iter().map(|p| p.leaf_index).collect();
        assert_eq!(
            indexes,
            [39, 7, 21, 0, 21],
            "one proof per key, in request order"
        );
        for p in &resp.proofs {
            assert_eq!(p.tree_size, 40);
            assert!(p.leaf.is_empty() && p.checkpoint.is_none(), "hashes only");
            assert_eq!(p.tier, pb::Tier::Hot as i32);
            assert_eq!(p.leaf_hash, receipts[p.leaf_index as usize].leaf_hash);
            let leaf_hash: [u8; 32] = p.leaf_hash.as_slice().try_into().unwrap();
            auditledger_verifier::verify_inclusion_of_hash(
                &leaf_hash,
                p.leaf_index,
                &p.hashes,
                note.as_bytes(),
                &keys,
            )
            .unwrap();
        }
        // A proof against an older checkpoint: the one of the first append is size 40 too, so
        // append more and ask for size 40 explicitly.
        let more: Vec<_> = (41..=45).map(|i| event("acme", "prod", i)).collect();
        common::append_proven(&mut ingest, more, &gw).await;
        let old = log
            .get_inclusion_proofs(request(vec![key(pb::leaf_key::Key::LeafIndex(3))], 40))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(old.proofs[0].tree_size, 40);
        assert_eq!(old.checkpoint.unwrap().note, note);

        // All or nothing, each error naming the key.
        let unknown = || key(pb::leaf_key::Key::EventId(uuid::Uuid::now_v7().to_string()));
        let cases: Vec<(Vec<pb::LeafKey>, u64, Code, &str)> = vec![
            (vec![], 0, Code::InvalidArgument, "0 given; ask for 1 to 8"),
            (
                vec![key(pb::leaf_key::Key::LeafIndex(1)); 9],
                0,
                Code::InvalidArgument,
                "9 given; ask for 1 to 8",
            ),
            (
                vec![
                    key(pb::leaf_key::Key::LeafIndex(1)),
                    key(pb::leaf_key::Key::LeafHash(vec![1, 2, 3])),
                ],
                0,
                Code::InvalidArgument,
                "keys[1]: leaf_hash must be 32 bytes, got 3",
            ),
            (
                vec![key(pb::leaf_key::Key::EventId("not-a-uuid".into()))],
                0,
                Code::InvalidArgument,
                "keys[0]: event_id",
            ),
            (
                vec![pb::LeafKey { key: None }],
                0,
                Code::InvalidArgument,
                "keys[0]: set one of",
            ),
            (
                vec![
                    key(pb::leaf_key::Key::LeafIndex(2)),
                    unknown(),
                    key(pb::leaf_key::Key::LeafIndex(3)),
                    unknown(),
                ],
                0,
                Code::NotFound,
                "(2 of 4 keys not found)",
            ),
            (
                vec![key(pb::leaf_key::Key::LeafIndex(44))],
                40,
                Code::OutOfRange,
                "keys[0]: leaf 44 is not covered by the checkpoint of size 40",
            ),
            (
                vec![key(pb::leaf_key::Key::LeafIndex(1))],
                41,
                Code::NotFound,
                "use the size of a signed checkpoint",
            ),
        ];
        for (keys, tree_size, code, text) in cases {
            let n = keys.len();
            let err = log
                .get_inclusion_proofs(request(keys, tree_size))
                .await
                .unwrap_err();
            assert_eq!(err.code(), code, "{n} keys: {err}");
            assert!(err.message().contains(text), "{n} keys: {}", err.message());
        }
        let err = log
            .get_inclusion_proofs(request(vec![unknown()], 0))
            .await
            .unwrap_err();
        assert!(
            err.message().starts_with("keys[0]: no event "),
            "{}",
            err.message()
        );
    });
    assert!(server.stop());
}

#[test]
fn stream_answers_in_order_and_survives_a_bad_request() {
    let ledger = Ledger::init("");
    let gw = ledger.token("gateway", &["acme"], &["prod"], None);
    let server = Server::start(&ledger);
    rt().block_on(async {
        let mut ingest = server.ingest().await;
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let mut requests = Vec::new();
        for r in 0..40u64 {
            let mut events: Vec<_> = (0..10)
                .map(|i| event("acme", "prod", r * 10 + i + 1))
                .collect();
            if r == 17 {
                events[4].occurred_at = 0;
            }
            requests.push(events.clone());
            tx.send(pb::AppendRequest {
                events,
                wait_for_checkpoint: false,
            })
            .await
            .unwrap();
        }
        drop(tx);
        let mut responses = ingest
            .append_stream(authed(tokio_stream::wrappers::ReceiverStream::new(rx), &gw))
            .await
            .unwrap()
            .into_inner();
        let mut got = Vec::new();
        while let Some(resp) = responses.message().await.unwrap() {
            got.push(resp);
        }
        assert_eq!(got.len(), 40, "one response per request");
        let mut indexes = Vec::new();
        for (r, (resp, events)) in got.iter().zip(&requests).enumerate() {
            if r == 17 {
                let err = resp.error.as_ref().expect("request 17 is rejected");
                assert_eq!(err.code, Code::InvalidArgument as i32);
                assert_eq!(err.event_index, Some(4));
                assert_eq!(err.field, "occurred_at");
                assert!(resp.receipts.is_empty());
                continue;
            }
            assert!(resp.error.is_none(), "request {r}: {:?}", resp.error);
            let ids: Vec<_> = resp.receipts.iter().map(|x| x.event_id.clone()).collect();
            let want: Vec<_> = events.iter().map(|e| e.event_id.clone()).collect();
            assert_eq!(ids, want, "response {r} answers request {r}");
            indexes.extend(resp.receipts.iter().map(|x| x.leaf_index));
        }
        // Logged in the order sent (not just answered in order), and nothing of the bad request.
        assert_eq!(indexes, (0..390).collect::<Vec<u64>>());
    });
}

#[test]
fn duplicates_and_gateway_gaps() {
    let ledger = Ledger::init("server.seq_gap_grace = \"300ms\"");
    let gw = ledger.token("gateway", &["acme"], &["prod"], None);
    let admin = ledger.token("admin", &["_system"], &["prod"], None);
    let server = Server::start(&ledger);
    let metrics = server.metrics.clone().expect("metrics enabled");
    rt().block_on(async {
        let mut ingest = server.ingest().await;
        let first: Vec<_> = (1..=3).map(|i| event("acme", "prod", i)).collect();
        let a = ingest
            .append(authed(
                pb::AppendRequest {
                    events: first.clone(),
                    wait_for_checkpoint: false,
                },
                &gw,
            ))
            .await
            .unwrap()
            .into_inner();
        let again = ingest
            .append(authed(
                pb::AppendRequest {
                    events: first.clone(),
                    wait_for_checkpoint: false,
                },
                &gw,
            ))
            .await
            .unwrap()
            .into_inner();
        for (x, y) in a.receipts.iter().zip(&again.receipts) {
            assert!(!x.duplicate && y.duplicate);
            assert_eq!((x.leaf_index, &x.leaf_hash), (y.leaf_index, &y.leaf_hash));
        }
        // 4, 5, 6 never arrive.
        ingest
            .append(authed(
                pb::AppendRequest {
                    events: vec![event("acme", "prod", 7)],
                    wait_for_checkpoint: false,
                },
                &gw,
            ))
            .await
            .unwrap();
        // 2 again with a new event id, after the start-up grace period: a regression.
        tokio::time::sleep(Duration::from_millis(500)).await;
        ingest
            .append(authed(
                pb::AppendRequest {
                    events: vec![event("acme", "prod", 2)],
                    wait_for_checkpoint: false,
                },
                &gw,
            ))
            .await
            .unwrap();
        // Another gateway resets its counter: 1..=40, then after the grace period 1..=40
        // again (new event ids).
        let reset_batch = || pb::AppendRequest {
            events: (1..=40)
                .map(|n| pb::AuditEvent {
                    gateway_id: "gw-reset".into(),
                    ..event("acme", "prod", n)
                })
                .collect(),
            wait_for_checkpoint: false,
        };
        ingest.append(authed(reset_batch(), &gw)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(500)).await;
        ingest.append(authed(reset_batch(), &gw)).await.unwrap();
        // A third replays an old number one event per request, twenty times.
        let flood = |numbers: std::ops::RangeInclusive<u64>| pb::AppendRequest {
            events: numbers
                .map(|n| pb::AuditEvent {
                    gateway_id: "gw-flood".into(),
                    ..event("acme", "prod", n)
                })
                .collect(),
            wait_for_checkpoint: false,
        };
        ingest.append(authed(flood(1..=5), &gw)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(500)).await;
        for _ in 0..20 {
            ingest.append(authed(flood(2..=2), &gw)).await.unwrap();
        }
    });
    wait_until("the gap to be reported", || {
        let text = metrics_text(&metrics);
        text.contains("kind=\"gap\"} 1")
            && text.contains("kind=\"regression\"} 1")
            && text.contains("kind=\"regression\"} 40")
    });
    // Every regressed event is counted, but the reset is one record, not 40.
    let names_reset = |events: &[pb::AuditEvent]| {
        events.iter().any(|ev| {
            ev.event_kind == pb::EventKind::Integrity as i32
                && ev
                    .decision_reason
                    .contains("sent 40 sequence numbers from 1 to 40 after 40")
        })
    };
    let events = rt().block_on(common::system_events(&server, &admin, names_reset));
    let regressions = events
        .iter()
        .filter(|ev| {
            ev.event_kind == pb::EventKind::Integrity as i32
                && ev.decision_reason.contains("replay, reset or forgery")
                && !ev.decision_reason.contains("gw-flood")
        })
        .count();
    assert_eq!(regressions, 2, "one record per request: {events:#?}");
    // The flood: each event counted in the metric; in the system log, the first regression of
    // each `server.denial_window` (1 s) on its own and the rest as summaries with their count,
    // together covering all twenty, instead of twenty records.
    wait_until("the flood to be counted", || {
        metrics_text(&metrics).contains("gateway=\"gw-flood\",kind=\"regression\"} 20")
    });
    let flood_records = |events: &[pb::AuditEvent]| -> (u64, u64) {
        let mut single = 0;
        let mut summarized = 0;
        for ev in events.iter().filter(|ev| {
            ev.event_kind == pb::EventKind::Integrity as i32
                && ev.decision_reason.contains("gw-flood")
        }) {
            match ev.attributes.get("repeated") {
                Some(n) => summarized += n.parse::<u64>().unwrap(),
                None => {
                    assert!(
                        ev.decision_reason
                            .contains("sent sequence number 2 after 5"),
                        "{ev:#?}"
                    );
                    single += 1
                }
            }
        }
        (single, summarized)
    };
    let events = rt().block_on(common::system_events(&server, &admin, |events| {
        let (single, summarized) = flood_records(events);
        single + summarized == 20
    }));
    let (single, summarized) = flood_records(&events);
    assert_eq!(single + summarized, 20, "{events:#?}");
    assert!(
        (1..=3).contains(&single),
        "{single} regression records one by one for twenty requests: {events:#?}"
    );
    // The system log names the gap.
    let names_gap = |events: &[pb::AuditEvent]| {
        events.iter().any(|ev| {
            ev.event_kind == pb::EventKind::Integrity as i32
                && ev.decision_reason.contains("4..=6 never arrived")
        })
    };
    let events = rt().block_on(common::system_events(&server, &admin, names_gap));
    assert!(names_gap(&events), "gap recorded in the system log");
}

/// Sends raw bytes as an `Ingest/Append` request body: malformed protobuf.
async fn raw_append(
    channel: tonic::transport::Channel,
    token: &str,
    body: Vec<u8>,
) -> Result<(), tonic::Status> {
    #[derive(Clone, Default)]
    struct RawCodec;
    struct RawEncoder;
    struct RawDecoder;
    impl tonic::codec::Encoder for RawEncoder {
        type Item = Vec<u8>;
        type Error = tonic::Status;
        fn encode(
            &mut self,
            item: Vec<u8>,
            dst: &mut tonic::codec::EncodeBuf<'_>,
        ) -> Result<(), tonic::Status> {
            use bytes::BufMut as _;
            dst.put_slice(&item);
            Ok(())
        }
    }
    impl tonic::codec::Decoder for RawDecoder {
        type Item = Vec<u8>;
        type Error = tonic::Status;
        fn decode(
            &mut self,
            src: &mut tonic::codec::DecodeBuf<'_>,
        ) -> Result<Option<Vec<u8>>, tonic::Status> {
            use bytes::Buf as _;
            let mut v = vec![0; src.remaining()];
            src.copy_to_slice(&mut v);
            Ok(Some(v))
        }
    }
    impl tonic::codec::Codec for RawCodec {
        type Encode = Vec<u8>;
        type Decode = Vec<u8>;
        type Encoder = RawEncoder;
        type Decoder = RawDecoder;
        fn encoder(&mut self) -> RawEncoder {
            RawEncoder
        }
        fn decoder(&mut self) -> RawDecoder {
            RawDecoder
        }
    }
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready()
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let path = "/auditledger.v1.Ingest/Append".parse().unwrap();
    grpc.unary(authed(body, token), path, RawCodec)
        .await
        .map(|_| ())
}

#[test]
fn bad_inputs_get_clear_errors_and_nothing_is_appended() {
    let ledger = Ledger::init("limits.max_batch_events = 50\nlimits.max_batch_bytes = 200000");
    let gw = ledger.token("gateway", &["acme"], &["prod"], None);
    let inv = ledger.token("investigator", &["acme"], &["prod"], None);
    let server = Server::start(&ledger);
    rt().block_on(async {
        let mut ingest = server.ingest().await;
        ingest
            .append(authed(
                pb::AppendRequest {
                    events: vec![event("acme", "prod", 1)],
                    wait_for_checkpoint: true,
                },
                &gw,
            ))
            .await
            .unwrap();
        type Mutate = fn(&mut pb::AuditEvent);
        let cases: Vec<(&str, Mutate, Code, &str)> = vec![
            (
                "missing event_id",
                |e| e.event_id.clear(),
                Code::InvalidArgument,
                "field `event_id`",
            ),
            (
                "v4 event_id",
                |e| e.event_id = uuid::Uuid::new_v4().to_string(),
                Code::InvalidArgument,
                "UUIDv7",
            ),
            (
                "unspecified kind",
                |e| e.event_kind = 0,
                Code::InvalidArgument,
                "field `event_kind`",
            ),
            (
                "unknown kind",
                |e| e.event_kind = 99,
                Code::InvalidArgument,
                "unknown value 99",
            ),
            (
                "missing tenant",
                |e| e.tenant_id.clear(),
                Code::PermissionDenied,
                "may not write tenant",
            ),
            (
                "missing occurred_at",
                |e| e.occurred_at = 0,
                Code::InvalidArgument,
                "field `occurred_at`",
            ),
            (
                "bad trace id",
                |e| e.trace_id = "xyz".into(),
                Code::InvalidArgument,
                "field `trace_id`",
            ),
            (
                "oversized event",
                |e| e.content_ref = "x".repeat(70_000),
                Code::InvalidArgument,
                "exceeds the limit of 65536",
            ),
            (
                "other tenant",
                |e| e.tenant_id = "globex".into(),
                Code::PermissionDenied,
                "tenant \"globex\"",
            ),
            (
                "other environment",
                |e| e.environment = "dev".into(),
                Code::PermissionDenied,
                "environment \"dev\"",
            ),
        ];
        for (name, mutate, code, needle) in cases {
            let mut bad = event("acme", "prod", 2);
            mutate(&mut bad);
            let events = vec![event("acme", "prod", 3), bad];
            let err = ingest
                .append(authed(
                    pb::AppendRequest {
                        events,
                        wait_for_checkpoint: false,
                    },
                    &gw,
                ))
                .await
                .unwrap_err();
            assert_eq!(err.code(), code, "{name}: {err}");
            assert!(err.message().contains(needle), "{name}: {}", err.message());
            if code == Code::InvalidArgument && needle.starts_with("field") {
                assert!(
                    err.message().starts_with("event 1:"),
                    "{name} names the event: {}",
                    err.message()
                );
                // And says so as data: `field `F`` in the message is `event-field: F`.
                let field = needle.trim_start_matches("field `").trim_end_matches('`');
                assert_eq!(err.metadata().get("event-index").unwrap(), "1", "{name}");
                assert_eq!(err.metadata().get("event-field").unwrap(), field, "{name}");
            }
            if code == Code::PermissionDenied {
                assert_eq!(err.metadata().get("event-index").unwrap(), "1", "{name}");
            }
        }
        let too_many: Vec<_> = (0..51).map(|i| event("acme", "prod", 100 + i)).collect();
        let err = ingest
            .append(authed(
                pb::AppendRequest {
                    events: too_many,
                    wait_for_checkpoint: false,
                },
                &gw,
            ))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        assert!(err.message().contains("limit is 50"), "{}", err.message());
        // A message over the size limit is refused by the transport layer.
        let mut big: Vec<_> = (0..5).map(|i| event("acme", "prod", 200 + i)).collect();
        for e in &mut big {
            e.content_ref = "y".repeat(60_000);
        }
        let err = ingest
            .append(authed(
                pb::AppendRequest {
                    events: big,
                    wait_for_checkpoint: false,
                },
                &gw,
            ))
            .await
            .unwrap_err();
        assert!(
            matches!(
                err.code(),
                Code::OutOfRange | Code::ResourceExhausted | Code::InvalidArgument
            ),
            "{err}"
        );
        // Malformed protobuf, then the server still serves.
        let err = raw_append(
            server.channel().await,
            &gw,
            vec![0x0a, 0xff, 0xff, 0xff, 0x01, 0x02],
        )
        .await
        .unwrap_err();
        assert!(
            matches!(err.code(), Code::Internal | Code::InvalidArgument),
            "{err}"
        );
        assert!(
            err.message().to_lowercase().contains("decode"),
            "{}",
            err.message()
        );
        let ok = ingest
            .append(authed(
                pb::AppendRequest {
                    events: vec![event("acme", "prod", 300)],
                    wait_for_checkpoint: false,
                },
                &gw,
            ))
            .await
            .unwrap();
        assert_eq!(
            ok.into_inner().receipts[0].leaf_index,
            1,
            "nothing of any rejected request was appended"
        );
        // Bad auth.
        for (token, needle) in [("alt_wrong", "unknown"), ("", "missing")] {
            let req = if token.is_empty() {
                tonic::Request::new(pb::AppendRequest {
                    events: vec![event("acme", "prod", 400)],
                    wait_for_checkpoint: false,
                })
            } else {
                authed(
                    pb::AppendRequest {
                        events: vec![event("acme", "prod", 400)],
                        wait_for_checkpoint: false,
                    },
                    token,
                )
            };
            let err = ingest.append(req).await.unwrap_err();
            assert_eq!(err.code(), Code::Unauthenticated);
            assert!(err.message().contains(needle), "{}", err.message());
        }
        // Reads: justification, unknown log, malformed keys.
        let mut log = server.log().await;
        let err = log
            .get_entries(authed(
                pb::GetEntriesRequest {
                    tenant_id: "acme".into(),
                    environment: "prod".into(),
                    start: 0,
                    end: 1,
                    justification: String::new(),
                },
                &inv,
            ))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        assert!(err.message().contains("justification"), "{}", err.message());
        let req = |key| pb::GetInclusionProofRequest {
            tenant_id: "acme".into(),
            environment: "prod".into(),
            key: Some(key),
            tree_size: 0,
            justification: "j".into(),
        };
        let err = log
            .get_inclusion_proof(authed(
                req(pb::get_inclusion_proof_request::Key::LeafHash(vec![
                    1, 2, 3,
                ])),
                &inv,
            ))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        let err = log
            .get_inclusion_proof(authed(
                req(pb::get_inclusion_proof_request::Key::EventId(
                    uuid::Uuid::now_v7().to_string(),
                )),
                &inv,
            ))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::NotFound);
        let err = log
            .get_checkpoint(authed(
                pb::GetCheckpointRequest {
                    tenant_id: "acme".into(),
                    environment: "staging".into(),
                    tree_size: 0,
                },
                &inv,
            ))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied);
    });
}

#[test]
fn expired_token_and_quotas() {
    let ledger = Ledger::init("quotas.events_per_second = 100");
    let gw = ledger.token("gateway", &["acme"], &["prod"], None);
    let other = ledger.token("gateway", &["globex"], &["prod"], None);
    let expiring = ledger.token("gateway", &["acme"], &["prod"], Some("1s"));
    std::thread::sleep(Duration::from_millis(1500));
    let server = Server::start(&ledger);
    rt().block_on(async {
        let mut ingest = server.ingest().await;
        let err = ingest
            .append(authed(
                pb::AppendRequest {
                    events: vec![event("acme", "prod", 1)],
                    wait_for_checkpoint: false,
                },
                &expiring,
            ))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated);
        assert!(err.message().contains("expired"), "{}", err.message());
        // 100 events/s with a one-second burst: the second batch of 60 is refused…
        let batch = |seq: u64| {
            (0..60)
                .map(|i| event("acme", "prod", seq + i))
                .collect::<Vec<_>>()
        };
        ingest
            .append(authed(
                pb::AppendRequest {
                    events: batch(1),
                    wait_for_checkpoint: false,
                },
                &gw,
            ))
            .await
            .unwrap();
        let err = ingest
            .append(authed(
                pb::AppendRequest {
                    events: batch(100),
                    wait_for_checkpoint: false,
                },
                &gw,
            ))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::ResourceExhausted, "{err}");
        let retry: u64 = err
            .metadata()
            .get("retry-after-ms")
            .unwrap()
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!(retry > 0 && retry <= 1000, "retry hint {retry}");
        // …another tenant is not affected…
        let globex: Vec<_> = (0..60).map(|i| event("globex", "prod", i + 1)).collect();
        ingest
            .append(authed(
                pb::AppendRequest {
                    events: globex,
                    wait_for_checkpoint: false,
                },
                &other,
            ))
            .await
            .unwrap();
        // …and after the hinted wait the tenant may send again.
        tokio::time::sleep(Duration::from_millis(retry + 50)).await;
        ingest
            .append(authed(
                pb::AppendRequest {
                    events: batch(200),
                    wait_for_checkpoint: false,
                },
                &gw,
            ))
            .await
            .unwrap();
    });
}

#[test]
fn stream_and_byte_quotas() {
    let ledger = Ledger::init("quotas.max_streams_per_tenant = 1\nquotas.bytes_per_second = 20000");
    let gw = ledger.token("gateway", &["acme"], &["prod"], None);
    let other = ledger.token("gateway", &["globex"], &["prod"], None);
    let server = Server::start(&ledger);
    rt().block_on(async {
        let mut ingest = server.ingest().await;
        // Opens a stream for `tenant` and has one request answered on it.
        async fn open(
            ingest: &mut pb::ingest_client::IngestClient<tonic::transport::Channel>,
            tenant: &str,
            token: &str,
            seq: u64,
        ) -> Result<
            (
                tokio::sync::mpsc::Sender<pb::AppendRequest>,
                tonic::Streaming<pb::AppendResponse>,
            ),
            tonic::Status,
        > {
            let (tx, rx) = tokio::sync::mpsc::channel(4);
            tx.send(pb::AppendRequest {
                events: vec![event(tenant, "prod", seq)],
                wait_for_checkpoint: false,
            })
            .await
            .unwrap();
            let mut responses = ingest
                .append_stream(authed(
                    tokio_stream::wrappers::ReceiverStream::new(rx),
                    token,
                ))
                .await?
                .into_inner();
            let first = responses.message().await?.expect("one response");
            assert!(first.error.is_none(), "{:?}", first.error);
            Ok((tx, responses))
        }
        let held = open(&mut ingest, "acme", &gw, 1).await.unwrap();
        let err = open(&mut ingest, "acme", &gw, 2).await.unwrap_err();
        assert_eq!(err.code(), Code::ResourceExhausted, "{err}");
        assert!(
            err.message().contains("open AppendStreams"),
            "{}",
            err.message()
        );
        assert!(err.metadata().get("retry-after-ms").is_some());
        // Another tenant still gets its stream.
        let globex = open(&mut ingest, "globex", &other, 1).await.unwrap();
        // Closing the first stream frees the slot (released when the server sees the end).
        drop(held);
        let mut reopened = None;
        for _ in 0..50 {
            match open(&mut ingest, "acme", &gw, 3).await {
                Ok(s) => {
                    reopened = Some(s);
                    break;
                }
                Err(e) => {
                    assert_eq!(e.code(), Code::ResourceExhausted, "{e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
        assert!(reopened.is_some(), "the stream slot was never released");
        drop((reopened, globex));

        // 20 000 bytes/s with a one-second burst: a batch of 60 % of that passes, the next one
        // is refused naming bytes, and nothing of the refused batch is appended.
        let size = prost::Message::encoded_len(&event("acme", "prod", 10)) as u64;
        let n = 12_000 / size;
        let batch = |seq: u64| {
            (0..n)
                .map(|i| event("acme", "prod", seq + i))
                .collect::<Vec<_>>()
        };
        let first = ingest
            .append(authed(
                pb::AppendRequest {
                    events: batch(10),
                    wait_for_checkpoint: false,
                },
                &gw,
            ))
            .await
            .unwrap()
            .into_inner();
        let refused = batch(10 + n);
        let err = ingest
            .append(authed(
                pb::AppendRequest {
                    events: refused.clone(),
                    wait_for_checkpoint: false,
                },
                &gw,
            ))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::ResourceExhausted, "{err}");
        assert!(err.message().contains("bytes"), "{}", err.message());
        assert!(
            err.metadata().get("request-exceeds-quota").is_none(),
            "a rate refusal, not a size one"
        );
        let retry: u64 = err
            .metadata()
            .get("retry-after-ms")
            .unwrap()
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        tokio::time::sleep(Duration::from_millis(retry + 50)).await;
        let again = ingest
            .append(authed(
                pb::AppendRequest {
                    events: refused,
                    wait_for_checkpoint: false,
                },
                &gw,
            ))
            .await
            .unwrap()
            .into_inner();
        // The retried batch follows the first directly: the refusal appended nothing.
        let last_first = first.receipts.last().unwrap().leaf_index;
        assert_eq!(again.receipts[0].leaf_index, last_first + 1);
        assert!(again.receipts.iter().all(|r| !r.duplicate));

        // A request larger than a whole second's quota can never pass: the refusal says so in
        // structured fields (clients split on them, not on the wording), unary and in-stream.
        let mut huge = batch(1_000);
        huge.extend(batch(2_000));
        let err = ingest
            .append(authed(
                pb::AppendRequest {
                    events: huge.clone(),
                    wait_for_checkpoint: false,
                },
                &gw,
            ))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::ResourceExhausted, "{err}");
        assert_eq!(err.metadata().get("request-exceeds-quota").unwrap(), "true");
        let mut refusal = None;
        for _ in 0..50 {
            let (tx, rx) = tokio::sync::mpsc::channel(1);
            tx.send(pb::AppendRequest {
                events: huge.clone(),
                wait_for_checkpoint: false,
            })
            .await
            .unwrap();
            match ingest
                .append_stream(authed(tokio_stream::wrappers::ReceiverStream::new(rx), &gw))
                .await
            {
                Ok(responses) => {
                    let mut responses = responses.into_inner();
                    refusal = responses.message().await.unwrap().unwrap().error;
                    break;
                }
                // The earlier streams' slot is released asynchronously.
                Err(e) if e.code() == Code::ResourceExhausted => {
                    tokio::time::sleep(Duration::from_millis(100)).await
                }
                Err(e) => panic!("{e}"),
            }
        }
        let refusal = refusal.expect("the stream refused the request in an AppendError");
        assert_eq!(refusal.code, Code::ResourceExhausted as i32, "{refusal:?}");
        assert!(
            refusal.request_exceeds_quota && refusal.retry_after_ms > 0,
            "{refusal:?}"
        );
    });
}

#[test]
fn health_reflection_and_metrics() {
    let ledger = Ledger::init("");
    let server = Server::start(&ledger);
    let metrics = server.metrics.clone().unwrap();
    rt().block_on(async {
        let channel = server.channel().await;
        let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
        let resp = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: "auditledger.v1.Ingest".into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            resp.status,
            tonic_health::pb::health_check_response::ServingStatus::Serving as i32
        );
        // Older tools (grpcurl < 1.9) speak only v1alpha reflection: it lists the services too.
        {
            use tonic_reflection::pb::v1alpha as alpha;
            let mut client =
                alpha::server_reflection_client::ServerReflectionClient::new(channel.clone());
            let req = alpha::ServerReflectionRequest {
                host: String::new(),
                message_request: Some(
                    alpha::server_reflection_request::MessageRequest::ListServices(String::new()),
                ),
            };
            let mut stream = client
                .server_reflection_info(tokio_stream::iter(vec![req]))
                .await
                .unwrap()
                .into_inner();
            let resp = stream.message().await.unwrap().unwrap();
            let Some(alpha::server_reflection_response::MessageResponse::ListServicesResponse(
                list,
            )) = resp.message_response
            else {
                panic!("unexpected v1alpha reflection response");
            };
            assert!(
                list.service
                    .iter()
                    .any(|s| s.name == "auditledger.v1.Ingest"),
                "{:?}",
                list.service
            );
        }
        use tonic_reflection::pb::v1 as refl;
        let mut client = refl::server_reflection_client::ServerReflectionClient::new(channel);
        let req = refl::ServerReflectionRequest {
            host: String::new(),
            message_request: Some(
                refl::server_reflection_request::MessageRequest::ListServices(String::new()),
            ),
        };
        let mut stream = client
            .server_reflection_info(tokio_stream::iter(vec![req]))
            .await
            .unwrap()
            .into_inner();
        let resp = stream.message().await.unwrap().unwrap();
        let Some(refl::server_reflection_response::MessageResponse::ListServicesResponse(list)) =
            resp.message_response
        else {
            panic!("unexpected reflection response");
        };
        let names: Vec<_> = list.service.iter().map(|s| s.name.clone()).collect();
        for want in [
            "auditledger.v1.Ingest",
            "auditledger.v1.Log",
            "auditledger.v1.Admin",
            "grpc.health.v1.Health",
        ] {
            assert!(
                names.iter().any(|n| n == want),
                "{want} missing from {names:?}"
            );
        }
    });
    let text = metrics_text(&metrics);
    for name in [
        "auditledger_append_events_total",
        "auditledger_fsync_seconds_bucket",
        "auditledger_ack_latency_seconds_count",
        "auditledger_checkpoint_lag_seconds_count",
        "auditledger_batch_events_mean",
        "auditledger_archiver_segments_moved_total",
        "auditledger_archiver_passes_total",
        "auditledger_archiver_lag_seconds",
        "auditledger_rocksdb_block_cache_pinned_bytes",
        "auditledger_rocksdb_table_readers_bytes",
    ] {
        assert!(text.contains(name), "{name} missing from /metrics");
    }
    // Memory: appends went through, so memtables hold something, are charged to the block
    // cache, and all of it is inside the process's resident set.
    let value = |name: &str| -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
            .unwrap_or_else(|| panic!("{name} missing from /metrics"))
    };
    let memtables = value("auditledger_rocksdb_memtable_bytes");
    let cache = value("auditledger_rocksdb_block_cache_bytes");
    let rss = value("process_resident_memory_bytes");
    assert!(memtables > 0, "memtables empty after appends");
    assert!(
        cache >= memtables / 2,
        "memtables {memtables} not in the cache {cache}"
    );
    assert!(
        rss > memtables,
        "resident {rss} below memtables {memtables}"
    );
}

#[test]
fn sigterm_drains_in_flight_appends_and_signs_a_final_checkpoint() {
    let ledger = Ledger::init("ledger.checkpoint_interval = \"1h\"");
    let gw = ledger.token("gateway", &["acme"], &["prod"], None);
    let inv = ledger.token("investigator", &["acme"], &["prod"], None);
    let server = Server::start(&ledger);
    let pid = server.child.id() as i32;
    let acked = rt().block_on(async {
        let mut ingest = server.ingest().await;
        let (tx, rx) = tokio::sync::mpsc::channel(8);
        let mut responses = ingest
            .append_stream(authed(tokio_stream::wrappers::ReceiverStream::new(rx), &gw))
            .await
            .unwrap()
            .into_inner();
        let sender = tokio::spawn(async move {
            for r in 0..10_000u64 {
                let events: Vec<_> = (0..20)
                    .map(|i| event("acme", "prod", r * 20 + i + 1))
                    .collect();
                if tx
                    .send(pb::AppendRequest {
                        events,
                        wait_for_checkpoint: false,
                    })
                    .await
                    .is_err()
                {
                    break;
                }
            }
        });
        let mut acked = 0u64;
        while let Ok(Some(resp)) = responses.message().await {
            acked += resp.receipts.len() as u64;
            if acked == 2000 {
                // SAFETY: kill(2) on the server child's pid.
                unsafe {
                    libc::kill(pid, libc::SIGTERM);
                }
            }
        }
        sender.abort();
        acked
    });
    assert!(acked >= 2000, "acknowledged {acked}");
    assert!(server.stop(), "exit status after SIGTERM");
    // Every acknowledged event is there and the final checkpoint covers the whole log, even
    // though the interval (1 h) never elapsed.
    let server = Server::start(&ledger);
    rt().block_on(async {
        let mut log = server.log().await;
        let note = log
            .get_checkpoint(authed(
                pb::GetCheckpointRequest {
                    tenant_id: "acme".into(),
                    environment: "prod".into(),
                    tree_size: 0,
                },
                &inv,
            ))
            .await
            .unwrap()
            .into_inner()
            .note;
        let cp = auditledger_ledger::checkpoint::open(note.as_bytes(), &ledger.keys())
            .unwrap()
            .checkpoint;
        assert!(
            cp.tree_size >= acked,
            "checkpoint {} < acknowledged {acked}",
            cp.tree_size
        );
    });
}

#[test]
fn plaintext_refused_off_loopback() {
    let ledger = Ledger::init("");
    let out = common::run(
        &[
            "serve",
            "--config",
            &ledger.config(),
            "--listen",
            "0.0.0.0:0",
        ],
        &[("AUDITLEDGER_SERVER_METRICS_LISTEN", "")],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("refusing to serve plaintext"), "{err}");
}
