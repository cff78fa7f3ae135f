//! `Investigate.FindEvents` end to end with the real server over loopback: a fixed dataset
//! (known users, sessions, kinds, decisions, tools) searched by each filter and combinations,
//! in both orders and in pages; the same searches return the same events while their segments
//! are hot, warm (after `auditledger archive --once --tier warm`) and cold; proofs verify with
//! the verifier crate; tenancy, roles and justification are enforced and every search is in
//! the system log; pages stay a continuation at one tree size while ingest goes on; the CLI.

mod common;

use auditledger_ledger::event::decode_leaf_strict;
use auditledger_proto::v1 as pb;
use common::{Ledger, Server, authed, cli, event, rt};

const USERS: [&str; 3] = ["alice", "bob", "carol"];
const TOTAL: u64 = 600;

/// Event `i` of the fixed dataset (leaf `i` of the log).
fn dataset_event(i: u64) -> pb::AuditEvent {
    let mut e = event("acme", "prod", i + 1);
    e.user_id = USERS[(i % 3) as usize].into();
    e.session_id = format!("s-{}", i / 50);
    e.correlation_id = format!("c-{}", i % 10);
    e.agent_id = format!("agent-{}", i % 5);
    e.tool_name = ["create_issue", "read_file"][(i % 2) as usize].into();
    e.event_kind = if i % 4 == 3 {
        pb::EventKind::Access
    } else {
        pb::EventKind::ToolCall
    } as i32;
    e.decision = if i.is_multiple_of(7) {
        pb::Decision::Deny
    } else {
        pb::Decision::Allow
    } as i32;
    e.data_classification = if i.is_multiple_of(11) {
        "pii".into()
    } else {
        String::new()
    };
    e
}

fn append(server: &Server, token: &str, events: &[pb::AuditEvent]) {
    rt().block_on(append_async(server, token, events));
}

async fn append_async(server: &Server, token: &str, events: &[pb::AuditEvent]) {
    let mut ingest = server.ingest().await;
    for chunk in events.chunks(100) {
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
}

/// Waits (bounded) for a checkpoint of `size` leaves.
async fn wait_for_size(server: &Server, token: &str, size: u64) {
    let mut log = server.log().await;
    for _ in 0..200 {
        let note = log
            .get_checkpoint(authed(
                pb::GetCheckpointRequest {
                    tenant_id: "acme".into(),
                    environment: "prod".into(),
                    tree_size: 0,
                },
                token,
            ))
            .await
            .map(|c| c.into_inner().note)
            .unwrap_or_default();
        if note.lines().nth(1) == Some(size.to_string().as_str()) {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("no checkpoint of size {size}");
}

fn base(justification: &str) -> pb::FindEventsRequest {
    pb::FindEventsRequest {
        tenant_id: "acme".into(),
        environment: "prod".into(),
        justification: justification.into(),
        ..Default::default()
    }
}

type Query = (
    &'static str,
    pb::FindEventsRequest,
    Box<dyn Fn(u64, &pb::AuditEvent) -> bool>,
);

/// The searches and, for each, which leaves of the dataset must match (judged here from the
/// events as sent, independently of the server's filter code). `logged_at[i]` of leaf i.
fn queries(logged_at: &[u64]) -> Vec<Query> {
    let q = |f: &dyn Fn(&mut pb::FindEventsRequest)| {
        let mut r = base("incident 42");
        f(&mut r);
        r
    };
    let (t1, t2) = (logged_at[100], logged_at[450]);
    vec![
        (
            "user",
            q(&|r| r.user_id = "bob".into()),
            Box::new(|_, e| e.user_id == "bob"),
        ),
        (
            "session",
            q(&|r| r.session_id = "s-11".into()),
            Box::new(|_, e| e.session_id == "s-11"),
        ),
        (
            "correlation",
            q(&|r| r.correlation_id = "c-3".into()),
            Box::new(|_, e| e.correlation_id == "c-3"),
        ),
        (
            "agent and decision",
            q(&|r| {
                r.agent_id = "agent-2".into();
                r.decision = pb::Decision::Deny as i32;
            }),
            Box::new(|_, e| e.agent_id == "agent-2" && e.decision == pb::Decision::Deny as i32),
        ),
        (
            "kind, tool and user",
            q(&|r| {
                r.event_kind = pb::EventKind::Access as i32;
                r.tool_name = "read_file".into();
                r.user_id = "carol".into();
            }),
            Box::new(|_, e| {
                e.event_kind == pb::EventKind::Access as i32
                    && e.tool_name == "read_file"
                    && e.user_id == "carol"
            }),
        ),
        (
            "classification (scan)",
            q(&|r| r.data_classification = "pii".into()),
            Box::new(|_, e| e.data_classification == "pii"),
        ),
        (
            "time window and user",
            q(&|r| {
                r.from_time = t1;
                r.to_time = t2;
                r.user_id = "alice".into();
            }),
            Box::new(move |i, e| {
                let t = logged_at_of(i);
                t >= t1 && t < t2 && e.user_id == "alice"
            }),
        ),
        (
            "time window only",
            q(&|r| {
                r.from_time = t1;
                r.to_time = t2;
            }),
            Box::new(move |i, _| {
                let t = logged_at_of(i);
                t >= t1 && t < t2
            }),
        ),
        (
            "trace id (one event)",
            q(&|r| r.trace_id = format!("{:032x}", 300 + 2)),
            Box::new(|_, e| e.gateway_seq == 301),
        ),
        (
            "event id and user (no match)",
            q(&|r| {
                r.event_id = dataset_id(5);
                r.user_id = "alice".into();
            }),
            Box::new(|i, e| i == 5 && e.user_id == "alice"),
        ),
        (
            "no such user",
            q(&|r| r.user_id = "mallory".into()),
            Box::new(|_, _| false),
        ),
    ]
}

thread_local! {
    static LOGGED_AT: std::cell::RefCell<Vec<u64>> = const { std::cell::RefCell::new(Vec::new()) };
    static IDS: std::cell::RefCell<Vec<String>> = const { std::cell::RefCell::new(Vec::new()) };
}

fn logged_at_of(i: u64) -> u64 {
    LOGGED_AT.with(|l| l.borrow()[i as usize])
}

fn dataset_id(i: u64) -> String {
    IDS.with(|l| l.borrow()[i as usize].clone())
}

/// Every page of a search with `limit` per page: (leaf indexes in order, tiers seen, tree size
/// of every page's checkpoint).
async fn all_pages(
    server: &Server,
    token: &str,
    mut req: pb::FindEventsRequest,
    limit: u32,
) -> (Vec<u64>, Vec<i32>, Vec<String>) {
    let mut client = pb::investigate_client::InvestigateClient::new(server.channel().await);
    req.limit = limit;
    let (mut indexes, mut tiers, mut notes) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..1000 {
        let page = client
            .find_events(authed(req.clone(), token))
            .await
            .unwrap_or_else(|s| panic!("{req:?}: {s}"))
            .into_inner();
        assert!(page.events.len() <= limit as usize);
        for f in &page.events {
            let e = f.entry.as_ref().unwrap();
            indexes.push(e.leaf_index);
            tiers.push(e.tier);
            assert_eq!(
                e.leaf_hash,
                auditledger_ledger::merkle::leaf_hash(&e.leaf).to_vec()
            );
        }
        notes.push(page.checkpoint.unwrap().note);
        if page.next_page_token.is_empty() {
            return (indexes, tiers, notes);
        }
        req.page_token = page.next_page_token;
    }
    panic!("more than 1000 pages");
}

/// Runs every query in both orders, paged, and checks the results against the dataset.
/// Returns the tiers the results came from.
fn check_queries(server: &Server, token: &str, sent: &[pb::AuditEvent], phase: &str) -> Vec<i32> {
    let logged_at: Vec<u64> = LOGGED_AT.with(|l| l.borrow().clone());
    let mut tiers = Vec::new();
    rt().block_on(async {
        for (name, req, pred) in queries(&logged_at) {
            let expected: Vec<u64> = (0..TOTAL).filter(|&i| pred(i, &sent[i as usize])).collect();
            for newest_first in [false, true] {
                let mut r = req.clone();
                r.newest_first = newest_first;
                let (got, t, notes) = all_pages(server, token, r.clone(), 7).await;
                let mut want = expected.clone();
                if newest_first {
                    want.reverse();
                }
                assert_eq!(got, want, "{phase}: {name}, newest_first={newest_first}");
                assert!(notes.windows(2).all(|w| w[0] == w[1]), "{phase}: {name}");
                tiers.extend(t);
                // One page as large as the server allows gives the same.
                let (one, _, _) = all_pages(server, token, r, 1000).await;
                assert_eq!(one, want, "{phase}: {name} in one page");
            }
        }
    });
    tiers
}

#[test]
fn find_events_across_tiers_with_isolation_audit_and_stable_pages() {
    let ledger = Ledger::init("ledger.segment_bits = 8\nledger.checkpoint_interval = \"50ms\"");
    let config = ledger.config();
    let gateway = ledger.token("gateway", &["acme", "other"], &["prod"], None);
    let investigator = ledger.token("investigator", &["acme"], &["prod"], None);
    let other = ledger.token("investigator", &["other"], &["prod"], None);
    let auditor = ledger.token("auditor", &["acme"], &["prod"], None);
    let system_admin = ledger.token("admin", &["_system"], &["prod"], None);
    let keys = ledger.keys();

    let sent: Vec<pb::AuditEvent> = (0..TOTAL).map(dataset_event).collect();
    IDS.with(|l| *l.borrow_mut() = sent.iter().map(|e| e.event_id.clone()).collect());
    let server = Server::start(&ledger);
    append(&server, &gateway, &sent);
    // Another tenant's events with the same users: never in acme's results.
    let others: Vec<_> = (0..20)
        .map(|i| {
            let mut e = dataset_event(i);
            e.tenant_id = "other".into();
            e.event_id = uuid::Uuid::now_v7().to_string();
            e
        })
        .collect();
    append(&server, &gateway, &others);
    rt().block_on(async {
        wait_for_size(&server, &investigator, TOTAL).await;
        // logged_at of every leaf, for the time-window expectations.
        let mut log = server.log().await;
        let mut entries = log
            .get_entries(authed(
                pb::GetEntriesRequest {
                    tenant_id: "acme".into(),
                    environment: "prod".into(),
                    start: 0,
                    end: TOTAL,
                    justification: "test setup".into(),
                },
                &investigator,
            ))
            .await
            .unwrap()
            .into_inner();
        let mut logged_at = Vec::new();
        while let Some(e) = entries.message().await.unwrap() {
            let r = decode_leaf_strict(&e.leaf).unwrap();
            assert_eq!(r.event.as_ref(), Some(&sent[e.leaf_index as usize]));
            logged_at.push(r.logged_at);
        }
        assert_eq!(logged_at.len() as u64, TOTAL);
        LOGGED_AT.with(|l| *l.borrow_mut() = logged_at);
    });

    // Hot.
    let tiers = check_queries(&server, &investigator, &sent, "hot");
    assert!(tiers.iter().all(|t| *t == pb::Tier::Hot as i32));

    // Proofs against the response's checkpoint verify offline.
    rt().block_on(async {
        let mut client = pb::investigate_client::InvestigateClient::new(server.channel().await);
        let mut req = base("proof check");
        req.session_id = "s-3".into();
        req.with_proofs = true;
        let page = client
            .find_events(authed(req, &investigator))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(page.events.len(), 50);
        let note = page.checkpoint.unwrap().note;
        for f in &page.events {
            let p = f.proof.as_ref().expect("with_proofs sets a proof");
            let e = f.entry.as_ref().unwrap();
            assert_eq!(p.leaf_index, e.leaf_index);
            auditledger_verifier::verify_inclusion(
                &e.leaf,
                e.leaf_index,
                &p.hashes,
                note.as_bytes(),
                &keys,
            )
            .unwrap_or_else(|err| panic!("leaf {}: {err}", e.leaf_index));
        }
        // A proof with another leaf's bytes must not verify (the check can fail).
        let (a, b) = (&page.events[0], &page.events[1]);
        assert!(
            auditledger_verifier::verify_inclusion(
                &b.entry.as_ref().unwrap().leaf,
                a.entry.as_ref().unwrap().leaf_index,
                &a.proof.as_ref().unwrap().hashes,
                note.as_bytes(),
                &keys,
            )
            .is_err()
        );
    });

    // Isolation, roles, justification, tokens.
    rt().block_on(async {
        let mut client = pb::investigate_client::InvestigateClient::new(server.channel().await);
        let mut req = base("incident 42");
        req.user_id = "alice".into();
        for (who, token) in [
            ("other tenant", &other),
            ("auditor", &auditor),
            ("gateway", &gateway),
        ] {
            let err = client
                .find_events(authed(req.clone(), token))
                .await
                .unwrap_err();
            assert_eq!(err.code(), tonic::Code::PermissionDenied, "{who}");
        }
        let err = client
            .find_events(authed(base("  "), &investigator))
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert!(err.message().contains("justification"), "{}", err.message());
        // A token of one search replayed with other filters.
        req.limit = 3;
        let page = client
            .find_events(authed(req.clone(), &investigator))
            .await
            .unwrap()
            .into_inner();
        assert!(!page.next_page_token.is_empty());
        let mut replay = req.clone();
        replay.user_id = "bob".into();
        replay.page_token = page.next_page_token.clone();
        let err = client
            .find_events(authed(replay, &investigator))
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        let mut tampered = req.clone();
        tampered.page_token = format!("{}A", page.next_page_token);
        let err = client
            .find_events(authed(tampered, &investigator))
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);

        // The searches and the denials are in the system log. Wait for all four denials: the
        // system log records them asynchronously, and a checkpoint may cover only some.
        let events = common::system_events(&server, &system_admin, |evs| {
            evs.iter().any(|e| {
                e.tool_name == "Investigate.FindEvents"
                    && e.attributes.get("justification").map(String::as_str) == Some("proof check")
            }) && evs
                .iter()
                .filter(|e| {
                    e.tool_name == "Investigate.FindEvents"
                        && e.decision == pb::Decision::Deny as i32
                })
                .count()
                >= 4
        })
        .await;
        let proof_search = events
            .iter()
            .find(|e| {
                e.tool_name == "Investigate.FindEvents"
                    && e.attributes.get("justification").map(String::as_str) == Some("proof check")
            })
            .expect("the search is recorded");
        assert_eq!(proof_search.attributes["count"], "50");
        assert!(proof_search.attributes["filters"].contains("session_id=\"s-3\""));
        assert_eq!(proof_search.attributes["tree_size"], TOTAL.to_string());
        let denials: Vec<_> = events
            .iter()
            .filter(|e| {
                e.tool_name == "Investigate.FindEvents" && e.decision == pb::Decision::Deny as i32
            })
            .collect();
        assert!(denials.len() >= 4, "{denials:?}");
    });

    // Pages stay a continuation at one tree size while ingest goes on.
    rt().block_on(async {
        let mut client = pb::investigate_client::InvestigateClient::new(server.channel().await);
        for newest_first in [false, true] {
            // tool_server is not indexed: a scan, which would see new leaves if it could.
            let mut req = base("paging");
            req.tool_server = "github".into();
            req.limit = 250;
            req.newest_first = newest_first;
            let first = client
                .find_events(authed(req.clone(), &investigator))
                .await
                .unwrap()
                .into_inner();
            let more: Vec<_> = (0..30)
                .map(|i| {
                    // Matches none of the dataset queries, only this one.
                    let mut e = event("acme", "prod", 10_000 + i + 100 * u64::from(newest_first));
                    e.user_id = "dave".into();
                    e.session_id = "s-extra".into();
                    e.correlation_id = "c-extra".into();
                    e.agent_id = "agent-x".into();
                    e.tool_name = "other".into();
                    e
                })
                .collect();
            append_async(&server, &gateway, &more).await;
            let grown = TOTAL + 30 * (1 + u64::from(newest_first));
            wait_for_size(&server, &investigator, grown).await;
            req.page_token = first.next_page_token.clone();
            req.limit = 1000;
            let second = client
                .find_events(authed(req.clone(), &investigator))
                .await
                .unwrap()
                .into_inner();
            assert_eq!(first.checkpoint, second.checkpoint, "same tree size");
            let got: Vec<u64> = first
                .events
                .iter()
                .chain(&second.events)
                .map(|f| f.entry.as_ref().unwrap().leaf_index)
                .collect();
            // Exactly the leaves of the first page's tree size (the first round's new events
            // are part of the second round's).
            let mut want: Vec<u64> = (0..TOTAL + 30 * u64::from(newest_first)).collect();
            if newest_first {
                want.reverse();
            }
            assert_eq!(got, want, "newest_first={newest_first}");
            assert!(second.next_page_token.is_empty());
            // A new search sees the new events.
            req.page_token.clear();
            let fresh = client
                .find_events(authed(req, &investigator))
                .await
                .unwrap()
                .into_inner();
            assert_eq!(fresh.events.len() as u64, grown);
        }
    });

    // The CLI, CSV over every page.
    let (ok, text) = cli(&[
        "events",
        "find",
        "--target",
        &server.url(),
        "--token",
        &investigator,
        "--tenant",
        "acme",
        "--env",
        "prod",
        "--session",
        "s-2",
        "--kind",
        "access",
        "--limit",
        "4",
        "--all-pages",
        "--format",
        "csv",
        "--justification",
        "cli test",
    ]);
    assert!(ok, "{text}");
    let rows: Vec<&str> = text.lines().filter(|l| l.contains("read_file")).collect();
    let want: Vec<u64> = (100..150).filter(|i| i % 4 == 3).collect();
    assert_eq!(rows.len(), want.len(), "{text}");
    for (row, i) in rows.iter().zip(&want) {
        assert!(row.starts_with(&format!("{i},")), "{row}");
        assert!(row.contains(&sent[*i as usize].event_id), "{row}");
    }
    assert!(server.stop());

    // Warm: segments [0, 256) and [256, 512) leave the hot tier.
    let text = ledger.archive("warm");
    for range in ["[0, 256)", "[256, 512)"] {
        let line = format!("acme/prod {range} hot -> warm");
        assert!(text.contains(&line), "{line}: {text}");
    }
    let server = Server::start(&ledger);
    let tiers = check_queries(&server, &investigator, &sent, "warm");
    assert!(tiers.contains(&(pb::Tier::Warm as i32)));
    assert!(server.stop());

    // Cold.
    let text = ledger.archive("cold");
    for range in ["[0, 256)", "[256, 512)"] {
        let line = format!("acme/prod {range} warm -> cold");
        assert!(text.contains(&line), "{line}: {text}");
    }
    let server = Server::start(&ledger);
    let tiers = check_queries(&server, &investigator, &sent, "cold");
    assert!(tiers.contains(&(pb::Tier::Cold as i32)));
    assert!(!tiers.contains(&(pb::Tier::Warm as i32)));
    assert!(server.stop());

    let (ok, text) = cli(&["fsck", "--config", &config]);
    assert!(ok, "fsck: {text}");
}
