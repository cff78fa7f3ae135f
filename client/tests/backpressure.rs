//! Backpressure: a full buffer (memory) or spool refuses at once (FailFast) or waits for room
//! (Wait), with the ledger down.

mod common;

use std::sync::Arc;
use std::time::Duration;

use auditledger_client::{Backpressure, Client, Durability, Options, RecordError, SpoolOptions};
use common::*;

#[test]
fn full_buffer_fails_fast_or_waits_for_the_ledger() {
    let ledger = Ledger::init(&[]);
    let gateway = ledger.token("gateway");
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let rt = rt();
    rt.block_on(async {
        let fail_fast = Client::connect(
            &url,
            &gateway,
            Options {
                max_buffered_events: 4,
                backpressure: Backpressure::FailFast,
                ..Options::default()
            },
        )
        .await
        .expect("connect");
        for i in 0..4 {
            fail_fast.record(tool_call(i)).await.expect("room for 4");
        }
        match fail_fast.record(tool_call(4)).await {
            Err(RecordError::Backpressure { buffered, limit }) => {
                assert_eq!((buffered, limit), (4, 4))
            }
            other => panic!("expected Backpressure, got {other:?}"),
        }
        assert_eq!(fail_fast.metrics().backpressure, 1);

        let bounded_wait = Client::connect(
            &url,
            &gateway,
            Options {
                max_buffered_events: 1,
                backpressure: Backpressure::Wait(Some(Duration::from_millis(100))),
                ..Options::default()
            },
        )
        .await
        .expect("connect");
        bounded_wait.record(tool_call(0)).await.expect("room for 1");
        assert!(matches!(
            bounded_wait.record(tool_call(1)).await,
            Err(RecordError::Backpressure { .. })
        ));

        let wait = Arc::new(
            Client::connect(
                &url,
                &gateway,
                Options {
                    max_buffered_events: 2,
                    backpressure: Backpressure::Wait(None),
                    initial_backoff: Duration::from_millis(20),
                    max_backoff: Duration::from_millis(200),
                    ..Options::default()
                },
            )
            .await
            .expect("connect"),
        );
        wait.record(tool_call(0)).await.expect("room");
        wait.record(tool_call(1)).await.expect("room");
        let blocked = {
            let wait = wait.clone();
            tokio::spawn(async move { wait.record(tool_call(2)).await })
        };
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(
            !blocked.is_finished(),
            "record returned with the buffer full"
        );
        // The ledger comes up: the buffer drains and the waiting record goes through.
        let _server = Server::start(&ledger, port);
        let handle = blocked.await.expect("task").expect("record after waiting");
        handle.receipt().await.expect("receipt");
        wait.flush(Duration::from_secs(60)).await.expect("flush");
        assert_eq!(wait.metrics().acknowledged, 3);
        for c in [&fail_fast, &bounded_wait, &*wait] {
            c.close(Duration::from_secs(5)).await;
        }
    });
}

#[test]
fn full_spool_is_a_clear_error() {
    let spool = tempfile::tempdir().expect("tempdir");
    let url = format!("http://127.0.0.1:{}", free_port());
    let rt = rt();
    rt.block_on(async {
        let client = Client::connect(
            &url,
            "token",
            Options {
                durability: Durability::Spool(SpoolOptions {
                    max_bytes: 64 << 10,
                    segment_bytes: 64 << 10,
                    ..SpoolOptions::new(spool.path())
                }),
                backpressure: Backpressure::FailFast,
                ..Options::default()
            },
        )
        .await
        .expect("connect");
        let mut accepted = 0;
        let mut refusal = None;
        for i in 0..100 {
            let mut e = tool_call(i);
            e.attributes.insert("payload".into(), "p".repeat(8 << 10));
            match client.record(e).await {
                Ok(_) => accepted += 1,
                Err(err) => {
                    refusal = Some(err);
                    break;
                }
            }
        }
        match refusal {
            Some(RecordError::SpoolFull {
                path,
                used_bytes,
                limit_bytes,
                event_bytes,
            }) => {
                assert_eq!(path, spool.path());
                assert_eq!(limit_bytes, 64 << 10);
                assert!(used_bytes + event_bytes > limit_bytes);
                assert!(
                    (6..=8).contains(&accepted),
                    "{accepted} events of 8 KiB fit"
                );
            }
            other => panic!("expected SpoolFull, got {other:?}"),
        }
        assert_eq!(client.metrics().backpressure, 1);
        client.close(Duration::ZERO).await;
    });
}
