//! Delivery through the real `auditledger serve`: receipts and verified proofs, duplicates,
//! a server SIGKILLed mid-stream, and events the ledger refuses.

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use auditledger_client::{
    Approval, ApprovalOutcome, AuditEvent, Backpressure, Client, Decision, DeliveryError,
    EventKind, Options, RecordError,
};
use common::*;

/// The README's scenario: a tool call held for approval, the approval, a denied secret read.
fn scenario() -> Vec<AuditEvent> {
    let base = AuditEvent {
        tenant_id: "demo".into(),
        environment: "dev".into(),
        occurred_at: now_nanos(),
        session_id: "session-1".into(),
        user_id: "alice@example.com".into(),
        agent_id: "support-agent".into(),
        ..Default::default()
    };
    vec![
        AuditEvent {
            event_kind: EventKind::ToolCall as i32,
            tool_server: "github".into(),
            tool_name: "merge_pull_request".into(),
            mcp_method: "tools/call".into(),
            decision: Decision::RequireApproval as i32,
            ..base.clone()
        },
        AuditEvent {
            event_kind: EventKind::Approval as i32,
            tool_server: "github".into(),
            tool_name: "merge_pull_request".into(),
            decision: Decision::Allow as i32,
            approval: Some(Approval {
                approver: "bob@example.com".into(),
                ticket: "CHG-1234".into(),
                outcome: ApprovalOutcome::Approved as i32,
                decided_at: now_nanos(),
                reason: "reviewed".into(),
            }),
            ..base.clone()
        },
        AuditEvent {
            event_kind: EventKind::Access as i32,
            tool_server: "vault".into(),
            tool_name: "read_secret".into(),
            resource: "secret/prod/db-password".into(),
            decision: Decision::Deny as i32,
            ..base
        },
    ]
}

#[test]
fn events_flow_with_verified_receipts_and_duplicates() {
    let ledger = Ledger::init(&[]);
    let gateway = ledger.token("gateway");
    let investigator = ledger.token("investigator");
    let server = Server::start(&ledger, free_port());
    let rt = rt();
    rt.block_on(async {
        let options = Options {
            wait_for_checkpoint: true,
            verifier_keys: ledger.keys(),
            gateway_id: Some("gw-test".into()),
            ..Options::default()
        };
        let client = Client::connect(&server.url(), &gateway, options)
            .await
            .expect("connect");
        let mut events = scenario();
        events.extend((0..20).map(tool_call));
        let mut handles = Vec::new();
        for e in events {
            handles.push(client.record(e).await.expect("record"));
        }
        let mut receipts = Vec::new();
        for (i, h) in handles.into_iter().enumerate() {
            assert_eq!(h.gateway_seq, i as u64 + 1, "gateway_seq assigned in order");
            assert!(!h.spooled);
            let id = h.event_id.clone();
            let r = h.receipt().await.expect("receipt");
            assert_eq!(r.event_id, id);
            assert!(!r.duplicate);
            let inclusion = r
                .inclusion
                .as_ref()
                .expect("proof with wait_for_checkpoint");
            assert!(
                !inclusion.verified_by.is_empty(),
                "proof of leaf {} verified",
                r.leaf_index
            );
            receipts.push(r);
        }
        let log = leaves(&server.url(), &investigator).await;
        assert_eq!(log.len(), 23);
        for r in &receipts {
            let e = &log[r.leaf_index as usize];
            assert_eq!(e.event_id, r.event_id);
            assert_eq!(e.gateway_id, "gw-test");
            let leaf = pb_leaf(&server.url(), &investigator, r.leaf_index).await;
            assert_eq!(auditledger_ledger::merkle::leaf_hash(&leaf), r.leaf_hash);
        }
        // The same event again (same id): the original receipt, flagged, nothing appended.
        let again = AuditEvent {
            event_id: receipts[0].event_id.clone(),
            gateway_seq: 1,
            ..scenario().remove(0)
        };
        let dup = client
            .record(again)
            .await
            .expect("record")
            .receipt()
            .await
            .expect("receipt");
        assert!(dup.duplicate);
        assert_eq!(dup.leaf_index, receipts[0].leaf_index);
        assert_eq!(leaves(&server.url(), &investigator).await.len(), 23);
        let m = client.metrics();
        assert_eq!(
            (m.recorded, m.acknowledged, m.duplicates, m.rejected),
            (24, 24, 1, 0)
        );
        assert_eq!(m.verified, 24);
        assert_eq!(client.close(Duration::from_secs(5)).await.unacknowledged, 0);

        // A key that did not sign the ledger's checkpoints: the event is durable, but its
        // receipt does not verify, and the handle says so.
        let stranger = Ledger::init(&[]);
        let wrong = Client::connect(
            &server.url(),
            &gateway,
            Options {
                wait_for_checkpoint: true,
                verifier_keys: stranger.keys(),
                ..Options::default()
            },
        )
        .await
        .expect("connect");
        match wrong
            .record(tool_call(99))
            .await
            .expect("record")
            .receipt()
            .await
        {
            Err(DeliveryError::Verification { receipt, reason }) => {
                assert!(reason.contains("checkpoint"), "{reason}");
                assert_eq!(receipt.leaf_index, 23);
            }
            other => panic!("expected a verification failure, got {other:?}"),
        }
        assert_eq!(wrong.metrics().verify_failures, 1);
        wrong.close(Duration::from_secs(5)).await;
    });
}

/// The verbatim leaf bytes at `leaf_index`.
async fn pb_leaf(url: &str, token: &str, leaf_index: u64) -> Vec<u8> {
    use auditledger_proto::v1 as pb;
    let mut log = pb::log_client::LogClient::connect(url.to_owned())
        .await
        .expect("connect");
    let mut req = tonic::Request::new(pb::GetEntriesRequest {
        tenant_id: "demo".into(),
        environment: "dev".into(),
        start: leaf_index,
        end: leaf_index + 1,
        justification: "client test: leaf hash".into(),
    });
    auth(&mut req, token);
    let mut stream = log.get_entries(req).await.expect("entries").into_inner();
    stream
        .message()
        .await
        .expect("stream")
        .expect("one entry")
        .leaf
}

#[test]
fn server_killed_mid_stream_nothing_lost_or_doubled() {
    const N: usize = 2000;
    let ledger = Ledger::init(&[]);
    let gateway = ledger.token("gateway");
    let investigator = ledger.token("investigator");
    let port = free_port();
    let server = Server::start(&ledger, port);
    let url = server.url();
    let rt = rt();
    rt.block_on(async {
        let options = Options {
            max_batch_events: 20,
            max_in_flight_batches: 4,
            backpressure: Backpressure::Wait(None),
            max_buffered_events: 500,
            initial_backoff: Duration::from_millis(20),
            max_backoff: Duration::from_millis(500),
            ..Options::default()
        };
        let client = Arc::new(
            Client::connect(&url, &gateway, options)
                .await
                .expect("connect"),
        );
        let producer = {
            let client = client.clone();
            tokio::spawn(async move {
                let mut handles = Vec::new();
                for i in 0..N {
                    handles.push(client.record(tool_call(i)).await.expect("record"));
                }
                handles
            })
        };
        // Kill the ledger once part of the events are acknowledged (bounded wait).
        for _ in 0..6000 {
            if client.metrics().acknowledged >= 300 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(
            client.metrics().acknowledged >= 300,
            "no progress before the kill"
        );
        server.kill();
        let server = Server::start(&ledger, port);
        let handles = producer.await.expect("producer");
        client.flush(Duration::from_secs(120)).await.expect("flush");
        let mut receipts = Vec::new();
        for h in handles {
            receipts.push(h.receipt().await.expect("every event has a receipt"));
        }
        let log = leaves(&server.url(), &investigator).await;
        let ids: HashSet<_> = receipts.iter().map(|r| r.event_id.clone()).collect();
        assert_eq!(ids.len(), N);
        assert_eq!(log.len(), N, "no event lost, none doubled");
        for (id, n) in counts(&log) {
            assert_eq!(n, 1, "{id} stored {n} times");
            assert!(ids.contains(&id));
        }
        for r in &receipts {
            assert_eq!(log[r.leaf_index as usize].event_id, r.event_id);
        }
        let m = client.metrics();
        assert!(m.stream_failures >= 1, "{m:?}");
        let dups = receipts.iter().filter(|r| r.duplicate).count() as u64;
        assert_eq!(m.duplicates, dups);
        assert_eq!(m.acknowledged, N as u64);
        eprintln!("after the kill: {m:?}");
        client.close(Duration::from_secs(5)).await;
    });
}

#[test]
fn refused_events_are_reported_and_not_retried() {
    let ledger = Ledger::init(&[("limits", "max_event_bytes", "2048")]);
    let gateway = ledger.token("gateway");
    let investigator = ledger.token("investigator");
    let server = Server::start(&ledger, free_port());
    let rt = rt();
    rt.block_on(async {
        // One batch of exactly three events (the linger never expires first).
        let options = Options {
            max_batch_events: 3,
            linger: Duration::from_secs(3600),
            ..Options::default()
        };
        let client = Client::connect(&server.url(), &gateway, options)
            .await
            .expect("connect");
        // Invalid locally: refused by `record`, never sent.
        let mut no_kind = tool_call(0);
        no_kind.event_kind = 0;
        match client.record(no_kind).await {
            Err(RecordError::InvalidEvent { field, .. }) => assert_eq!(field, "event_kind"),
            other => panic!("expected InvalidEvent, got {other:?}"),
        }
        // Valid here (64 KiB limit) but over this ledger's 2 KiB limit.
        let mut big = tool_call(1);
        big.attributes.insert("blob".into(), "x".repeat(4096));
        let good1 = client.record(tool_call(2)).await.expect("record");
        let big = client.record(big).await.expect("record");
        let good2 = client.record(tool_call(3)).await.expect("record");
        let big_id = big.event_id.clone();
        match big.receipt().await {
            Err(DeliveryError::Rejected {
                event_id,
                code,
                message,
                field,
            }) => {
                assert_eq!(event_id, big_id);
                assert_eq!(code, tonic::Code::InvalidArgument);
                assert_eq!(field, "event", "{message}");
                assert!(message.contains("2048"), "{message}");
            }
            other => panic!("expected Rejected, got {other:?}"),
        }
        let r1 = good1.receipt().await.expect("good event 1");
        let r2 = good2.receipt().await.expect("good event 2");
        // Another tenant: PERMISSION_DENIED, also final.
        let mut other = tool_call(4);
        other.tenant_id = "other".into();
        let other = client.record(other).await.expect("record");
        client.flush(Duration::from_secs(60)).await.expect("flush");
        match other.receipt().await {
            Err(DeliveryError::Rejected { code, .. }) => {
                assert_eq!(code, tonic::Code::PermissionDenied)
            }
            other => panic!("expected PERMISSION_DENIED, got {other:?}"),
        }
        let m = client.metrics();
        // Batch 1: 3 events, refused for `big`; batch 2: the two good ones again; batch 3:
        // the other tenant's event. Nothing was sent a third time.
        assert_eq!(m.rejected, 2, "{m:?}");
        assert_eq!(m.sent, 3 + 2 + 1, "{m:?}");
        assert_eq!(m.retried, 2, "{m:?}");
        assert_eq!(m.stream_failures, 0, "{m:?}");
        let log = leaves(&server.url(), &investigator).await;
        let ids: Vec<_> = log.iter().map(|e| e.event_id.clone()).collect();
        assert_eq!(ids, vec![r1.event_id, r2.event_id]);
        client.close(Duration::from_secs(5)).await;
    });
}

#[test]
fn over_quota_batches_wait_for_the_hint_and_are_split_when_too_big() {
    const N: usize = 150;
    // 50 events/s per tenant: batches of 80 exceed a whole second's quota (split), and the
    // stream runs into RESOURCE_EXHAUSTED with a retry hint (waited out).
    let ledger = Ledger::init(&[("quotas", "events_per_second", "50")]);
    let gateway = ledger.token("gateway");
    let investigator = ledger.token("investigator");
    let server = Server::start(&ledger, free_port());
    let rt = rt();
    rt.block_on(async {
        let options = Options {
            max_batch_events: 80,
            max_in_flight_batches: 2,
            initial_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(100),
            ..Options::default()
        };
        let client = Client::connect(&server.url(), &gateway, options)
            .await
            .expect("connect");
        let mut handles = Vec::new();
        for i in 0..N {
            handles.push(client.record(tool_call(i)).await.expect("record"));
        }
        client.flush(Duration::from_secs(120)).await.expect("flush");
        for h in handles {
            let r = h
                .receipt()
                .await
                .expect("receipt after waiting for the quota");
            assert!(!r.duplicate);
        }
        let m = client.metrics();
        eprintln!("over quota: {m:?}");
        assert_eq!(m.rejected, 0, "{m:?}");
        assert!(m.retried > 0 && m.stream_failures > 0, "{m:?}");
        let log = leaves(&server.url(), &investigator).await;
        assert_eq!(log.len(), N);
        assert!(counts(&log).values().all(|&n| n == 1));
        client.close(Duration::from_secs(5)).await;
    });
}

#[test]
fn a_hung_ledger_is_detected_by_request_timeout_and_nothing_is_lost() {
    const N: usize = 300;
    let ledger = Ledger::init(&[]);
    let gateway = ledger.token("gateway");
    let investigator = ledger.token("investigator");
    let server = Server::start(&ledger, free_port());
    let pid = server.child.id() as i32;
    let rt = rt();
    rt.block_on(async {
        let options = Options {
            max_batch_events: 10,
            request_timeout: Duration::from_millis(500),
            connect_timeout: Duration::from_millis(500),
            initial_backoff: Duration::from_millis(20),
            max_backoff: Duration::from_millis(200),
            ..Options::default()
        };
        let client = Client::connect(&server.url(), &gateway, options)
            .await
            .expect("connect");
        let mut handles = Vec::new();
        for i in 0..N / 2 {
            handles.push(client.record(tool_call(i)).await.expect("record"));
        }
        client.flush(Duration::from_secs(60)).await.expect("flush");
        // The ledger stops answering without closing anything (SIGSTOP): the connection stays
        // up, responses never come.
        // SAFETY: signalling our own child by pid.
        unsafe { libc::kill(pid, libc::SIGSTOP) };
        for i in N / 2..N {
            handles.push(client.record(tool_call(i)).await.expect("record"));
        }
        // Bounded wait until the client gave up on the hung stream at least once.
        for _ in 0..1000 {
            if client.metrics().stream_failures > 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let failures = client.metrics().stream_failures;
        // SAFETY: as above.
        unsafe { libc::kill(pid, libc::SIGCONT) };
        assert!(failures > 0, "the hung stream was never abandoned");
        client.flush(Duration::from_secs(120)).await.expect("flush");
        let mut ids = HashSet::new();
        for h in handles {
            ids.insert(h.receipt().await.expect("receipt").event_id);
        }
        let log = leaves(&server.url(), &investigator).await;
        assert_eq!(log.len(), N, "nothing lost or doubled");
        assert_eq!(counts(&log).into_keys().collect::<HashSet<_>>(), ids);
        client.close(Duration::from_secs(5)).await;
    });
}

/// A token the ledger refuses (wrong, expired, revoked) is no passing outage: it is counted,
/// the events wait — none dropped, none reported delivered — and `set_token` delivers them.
#[test]
fn a_refused_token_keeps_events_until_set_token() {
    const N: usize = 20;
    let ledger = Ledger::init(&[]);
    let gateway = ledger.token("gateway");
    let investigator = ledger.token("investigator");
    let server = Server::start(&ledger, free_port());
    let rt = rt();
    rt.block_on(async {
        let options = Options {
            max_backoff: Duration::from_millis(200),
            ..Options::default()
        };
        let client = Client::connect(&server.url(), "al_not_a_token_of_this_ledger", options)
            .await
            .expect("connect");
        let mut handles = Vec::new();
        for i in 0..N {
            handles.push(client.record(tool_call(i)).await.expect("record"));
        }
        let mut refused = 0;
        for _ in 0..300 {
            refused = client.metrics().auth_failures;
            if refused >= 3 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let m = client.metrics();
        assert!(refused >= 3, "refusals are retried and counted: {m:?}");
        assert_eq!(m.acknowledged, 0, "{m:?}");
        assert_eq!(m.outstanding, N as u64, "every event still waits: {m:?}");

        client.set_token(&gateway).expect("set_token");
        let mut ids = Vec::new();
        for h in handles {
            let r = tokio::time::timeout(Duration::from_secs(30), h.receipt())
                .await
                .expect("receipt within 30 s of the new token")
                .expect("delivered with the new token");
            ids.push(r.event_id);
        }
        let log = leaves(&server.url(), &investigator).await;
        let stored: Vec<_> = log.iter().map(|e| e.event_id.clone()).collect();
        assert_eq!(stored, ids, "each event stored once, in order");
        let m = client.metrics();
        assert_eq!(m.outstanding, 0, "{m:?}");
        client.close(Duration::from_secs(5)).await;
    });
}
