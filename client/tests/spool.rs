//! The disk spool against the real `auditledger serve`: a ledger down at start, a gateway
//! process SIGKILLed (before and during delivery) and restarted, a torn spool tail, corruption
//! in an older segment.

mod common;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use auditledger_client::{
    Backpressure, Client, ClientError, Durability, Options, SpoolError, SpoolOptions,
};
use common::*;

fn spool_options(dir: &Path) -> Options {
    Options {
        durability: Durability::Spool(SpoolOptions::new(dir)),
        backpressure: Backpressure::FailFast,
        initial_backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(300),
        ..Options::default()
    }
}

/// Segment files of a spool directory, oldest first.
fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("spool dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "spool"))
        .collect();
    out.sort();
    out
}

#[test]
fn ledger_down_at_start_events_spooled_then_delivered_exactly_once() {
    const N: usize = 200;
    let ledger = Ledger::init(&[]);
    let gateway = ledger.token("gateway");
    let investigator = ledger.token("investigator");
    let port = free_port();
    let spool = tempfile::tempdir().expect("tempdir");
    let url = format!("http://127.0.0.1:{port}");
    let rt = rt();
    rt.block_on(async {
        let client = Client::connect(&url, &gateway, spool_options(spool.path()))
            .await
            .expect("connect with the ledger down");
        let mut handles = Vec::new();
        for i in 0..N {
            let h = client.record(tool_call(i)).await.expect("record spools");
            assert!(h.spooled);
            handles.push(h);
        }
        let m = client.metrics();
        assert_eq!((m.spooled, m.acknowledged), (N as u64, 0));
        assert!(m.spool_bytes > 0);
        let server = Server::start(&ledger, port);
        client.flush(Duration::from_secs(120)).await.expect("flush");
        let mut ids = HashSet::new();
        for h in handles {
            let r = h.receipt().await.expect("receipt");
            assert!(!r.duplicate);
            ids.insert(r.event_id);
        }
        let log = leaves(&server.url(), &investigator).await;
        assert_eq!(log.len(), N);
        assert_eq!(counts(&log).into_keys().collect::<HashSet<_>>(), ids);
        assert!(client.metrics().stream_failures >= 1);
        client.close(Duration::from_secs(5)).await;
        // Everything had its receipt, so nothing is left to replay.
        let again = Client::connect(&url, &gateway, spool_options(spool.path()))
            .await
            .expect("reopen");
        assert_eq!(again.metrics().replayed_from_spool, 0);
        again.close(Duration::from_secs(5)).await;
    });
}

/// Runs the gateway simulator; returns the child.
fn sim(url: &str, token: &str, spool: &Path, count: usize) -> std::process::Child {
    Command::new(sim_bin())
        .args([
            "--target",
            url,
            "--token",
            token,
            "--spool",
            spool.to_str().expect("utf-8"),
            "--count",
            &count.to_string(),
            "--flush-timeout",
            "120s",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn auditledger-gateway-sim")
}

/// Reads `recorded <id> <seq>` lines until `n` were seen (bounded by the child's output).
fn recorded(lines: &std::sync::mpsc::Receiver<String>, n: usize) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    while out.len() < n {
        let line = lines
            .recv_timeout(Duration::from_secs(120))
            .expect("the simulator stopped printing");
        if let Some(rest) = line.strip_prefix("recorded ") {
            let (id, seq) = rest.split_once(' ').expect("id and seq");
            out.push((id.to_owned(), seq.parse().expect("seq")));
        }
    }
    out
}

#[test]
fn gateway_killed_restart_replays_the_spool() {
    let ledger = Ledger::init(&[]);
    let gateway = ledger.token("gateway");
    let investigator = ledger.token("investigator");
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let spool = tempfile::tempdir().expect("tempdir");

    // 1. Ledger down: 300 events reach the spool, then the gateway is SIGKILLed.
    let mut child = sim(&url, &gateway, spool.path(), 100_000);
    let lines = lines_of(&mut child);
    let first = recorded(&lines, 300);
    child.kill().expect("SIGKILL");
    child.wait().expect("wait");

    // 2. Ledger up: a new gateway process replays them, records more, and is SIGKILLed in the
    //    middle of sending.
    let server = Server::start(&ledger, port);
    let mut child = sim(&url, &gateway, spool.path(), 100_000);
    let lines = lines_of(&mut child);
    let second = recorded(&lines, 1500);
    child.kill().expect("SIGKILL");
    child.wait().expect("wait");

    // 3. A third run only replays what is left, and waits for every receipt.
    let out = sim(&url, &gateway, spool.path(), 0)
        .wait_with_output()
        .expect("replay run");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "replay run failed: {text}");
    assert!(text.contains("flushed"), "{text}");

    // Every event whose `record` returned is in the log exactly once.
    let rt = rt();
    let log = rt.block_on(leaves(&server.url(), &investigator));
    let stored = counts(&log);
    for (id, n) in &stored {
        assert_eq!(*n, 1, "{id} stored {n} times");
    }
    for (id, _) in first.iter().chain(&second) {
        assert!(stored.contains_key(id), "spooled event {id} was lost");
    }
    // gateway_seq continued across the crash (persisted in the spool), so the ledger sees
    // no regression. (The first run may have spooled a few events after the last line it
    // printed, so the second run starts above, not necessarily right after, it.)
    for run in [&first, &second] {
        assert!(
            run.windows(2).all(|w| w[1].1 == w[0].1 + 1),
            "gateway_seq not consecutive within a run"
        );
    }
    assert_eq!(first[0].1, 1);
    assert!(
        second[0].1 > first[first.len() - 1].1,
        "gateway_seq went back after the restart: {} after {}",
        second[0].1,
        first[first.len() - 1].1
    );
    let by_id: HashMap<_, _> = log
        .iter()
        .map(|e| (e.event_id.clone(), e.gateway_seq))
        .collect();
    for (id, seq) in first.iter().chain(&second) {
        assert_eq!(by_id[id], *seq, "{id}");
    }
    drop(server);
}

#[test]
fn torn_spool_tail_is_dropped_with_a_warning_and_the_rest_delivered() {
    let ledger = Ledger::init(&[]);
    let gateway = ledger.token("gateway");
    let investigator = ledger.token("investigator");
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let spool = tempfile::tempdir().expect("tempdir");
    let rt = rt();
    let ids: HashSet<String> = rt.block_on(async {
        let client = Client::connect(&url, &gateway, spool_options(spool.path()))
            .await
            .expect("connect");
        let mut ids = HashSet::new();
        for i in 0..10 {
            ids.insert(client.record(tool_call(i)).await.expect("record").event_id);
        }
        assert_eq!(client.close(Duration::ZERO).await.unacknowledged, 10);
        ids
    });
    // A crash in the middle of the next write: a frame header promising 500 bytes, and only
    // part of them.
    let with_data = segments(spool.path())
        .into_iter()
        .max_by_key(|p| std::fs::metadata(p).map_or(0, |m| m.len()))
        .expect("a segment");
    let mut torn = Vec::new();
    torn.extend_from_slice(&500u32.to_le_bytes());
    torn.extend_from_slice(&11u64.to_le_bytes());
    torn.extend_from_slice(&[0xAB; 8]);
    torn.extend_from_slice(&[0x0A; 37]);
    let mut bytes = std::fs::read(&with_data).expect("read segment");
    let good_len = bytes.len();
    bytes.extend_from_slice(&torn);
    std::fs::write(&with_data, &bytes).expect("write torn tail");

    let server = Server::start(&ledger, port);
    rt.block_on(async {
        let client = Client::connect(&url, &gateway, spool_options(spool.path()))
            .await
            .expect("reopen a torn spool");
        let m = client.metrics();
        assert_eq!(m.torn_records_dropped, 1);
        assert_eq!(m.replayed_from_spool, 10);
        assert_eq!(
            std::fs::metadata(&with_data).map(|m| m.len()).ok(),
            Some(good_len as u64),
            "torn bytes cut off"
        );
        client.flush(Duration::from_secs(60)).await.expect("flush");
        let log = leaves(&server.url(), &investigator).await;
        assert_eq!(counts(&log).into_keys().collect::<HashSet<_>>(), ids);
        assert_eq!(log.len(), 10);
        client.close(Duration::from_secs(5)).await;
    });
}

#[test]
fn corruption_before_the_last_segment_is_refused() {
    let spool = tempfile::tempdir().expect("tempdir");
    let url = format!("http://127.0.0.1:{}", free_port());
    let rt = rt();
    rt.block_on(async {
        // Two runs with the ledger down: two segments with events.
        for run in 0..2 {
            let client = Client::connect(&url, "token", spool_options(spool.path()))
                .await
                .expect("connect");
            for i in 0..5 {
                client.record(tool_call(run * 5 + i)).await.expect("record");
            }
            client.close(Duration::ZERO).await;
        }
    });
    let segs: Vec<PathBuf> = segments(spool.path())
        .into_iter()
        .filter(|p| std::fs::metadata(p).map_or(0, |m| m.len()) > 8)
        .collect();
    assert_eq!(segs.len(), 2, "{segs:?}");
    let mut bytes = std::fs::read(&segs[0]).expect("read");
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x55;
    std::fs::write(&segs[0], &bytes).expect("write");
    rt.block_on(async {
        match Client::connect(&url, "token", spool_options(spool.path())).await {
            Err(ClientError::Spool(SpoolError::Corrupt { path, offset, .. })) => {
                assert_eq!(path, segs[0]);
                assert!(offset <= middle as u64);
            }
            Err(e) => panic!("expected Corrupt, got {e}"),
            Ok(_) => panic!("a corrupt spool was opened"),
        }
    });
}

#[test]
fn a_spool_directory_is_used_by_one_process_at_a_time() {
    let spool = tempfile::tempdir().expect("tempdir");
    let url = format!("http://127.0.0.1:{}", free_port());
    let rt = rt();
    rt.block_on(async {
        let first = Client::connect(&url, "token", spool_options(spool.path()))
            .await
            .expect("connect");
        match Client::connect(&url, "token", spool_options(spool.path())).await {
            Err(ClientError::Spool(SpoolError::Locked { .. })) => {}
            Err(e) => panic!("expected Locked, got {e}"),
            Ok(_) => panic!("two clients on one spool"),
        }
        first.close(Duration::ZERO).await;
    });
}

/// A `flock` belongs to the open file description, so a child process forked while a client
/// held the spool keeps the lock until it execs (or, here, exits), even after the client closed
/// its descriptor. Reopening in that window waits for it instead of failing with `Locked`.
#[test]
fn a_lock_left_with_a_forked_child_is_waited_for() {
    use std::os::fd::AsRawFd as _;
    let spool = tempfile::tempdir().expect("tempdir");
    let url = format!("http://127.0.0.1:{}", free_port());
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(spool.path().join("lock"))
        .expect("open lock");
    // SAFETY: flock and dup on a descriptor we own; no memory is passed.
    let inherited = unsafe {
        assert_eq!(libc::flock(lock.as_raw_fd(), libc::LOCK_EX), 0);
        // A duplicate without close-on-exec, so the child keeps the description (and lock).
        libc::dup(lock.as_raw_fd())
    };
    assert!(inherited >= 0);
    let mut child = std::process::Command::new("sleep")
        .arg("0.2")
        .spawn()
        .expect("spawn sleep");
    // SAFETY: closing the duplicate we made; the child has its own copy.
    unsafe { libc::close(inherited) };
    drop(lock);
    let rt = rt();
    rt.block_on(async {
        let client = Client::connect(&url, "token", spool_options(spool.path()))
            .await
            .expect("the lock held only by the exiting child is waited for");
        client.close(Duration::ZERO).await;
    });
    child.wait().expect("sleep exits");
}
