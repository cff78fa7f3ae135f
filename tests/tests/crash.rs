//! Crash safety: a child appends under concurrent load and is killed with SIGKILL at random
//! moments, round after round on the same data directory. After each kill every acknowledged
//! event must be present at its acknowledged index with its acknowledged hash, and fsck must
//! be clean (tiles, indexes, checkpoint signatures and chain). Every fifth kill lands during
//! start-up, while the child is still recovering the store.
//!
//! Rounds: `AUDITLEDGER_CRASH_ROUNDS` (default 25). Seed: `AUDITLEDGER_CRASH_SEED`.

use std::collections::HashMap;
use std::io::{BufRead as _, BufReader};
use std::process::{Command, Stdio};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use auditledger_ledger::event::{EventId, decode_leaf_strict};
use auditledger_ledger::keys::Keyring;
use auditledger_ledger::merkle::leaf_hash;
use auditledger_ledger::store::Store;
use auditledger_ledger::store::rocks::{RocksOptions, RocksStore};
use auditledger_ledger::{Ledger, LedgerOptions, fsck};
use auditledger_tests::{Rng, test_signer};

struct Ack {
    origin: String,
    leaf_index: u64,
    leaf_hash: String,
}

fn parse_ack(line: &str) -> Option<(String, Ack)> {
    let mut parts = line.split(' ');
    if parts.next()? != "ACK" {
        return None;
    }
    let id = parts.next()?.to_string();
    let ack = Ack {
        origin: parts.next()?.to_string(),
        leaf_index: parts.next()?.parse().ok()?,
        leaf_hash: parts.next()?.to_string(),
    };
    (ack.leaf_hash.len() == 64 && parts.next().is_none()).then_some((id, ack))
}

#[test]
fn sigkill_under_load_loses_no_acknowledged_event() {
    let rounds: u32 = std::env::var("AUDITLEDGER_CRASH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(25);
    let (mut rng, seed) = match std::env::var("AUDITLEDGER_CRASH_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        Some(seed) => (Rng::new(seed), seed),
        None => Rng::from_time(),
    };
    eprintln!("crash test: {rounds} rounds, seed {seed}");
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("hot");
    let mut acked: HashMap<String, Ack> = HashMap::new();
    let mut next_seq = 0u64;
    let mut total_killed_mid_write = 0;
    for round in 0..rounds {
        let mut child = Command::new(env!("CARGO_BIN_EXE_crash_appender"))
            .arg(&db)
            .arg(next_seq.to_string())
            .arg("8")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        next_seq += 1 << 32;
        let stdout = child.stdout.take().unwrap();
        let (line_tx, line_rx) = std::sync::mpsc::channel::<String>();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line_tx.send(line).is_err() {
                    break;
                }
            }
        });
        // Every fifth round kills the child 0–50 ms after spawning it, usually while it is
        // still opening the store (WAL replay, right-edge rebuild, leaf-hash catch-up): a crash
        // during recovery must be as harmless as one during appends. Other rounds wait for
        // READY (the store is open) and then let it append for 50–600 ms.
        let during_startup = round % 5 == 4;
        let mut lines = Vec::new();
        if during_startup {
            std::thread::sleep(Duration::from_millis(rng.range(0, 50)));
        } else {
            let ready = line_rx
                .recv_timeout(Duration::from_secs(60))
                .unwrap_or_else(|e| panic!("round {round}: child did not start within 60 s ({e})"));
            assert_eq!(ready, "READY", "round {round}: unexpected first line");
            lines.push(ready);
            let deadline = Instant::now() + Duration::from_millis(rng.range(50, 600));
            while Instant::now() < deadline {
                if let Ok(Some(status)) = child.try_wait() {
                    panic!("round {round}: child exited early with {status}");
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        child.kill().unwrap(); // SIGKILL on Unix
        child.wait().unwrap();
        reader.join().unwrap();
        lines.extend(line_rx.try_iter());
        if !during_startup || !lines.is_empty() {
            assert_eq!(
                lines.first().map(String::as_str),
                Some("READY"),
                "round {round}: unexpected first line"
            );
        }
        let before = acked.len();
        for line in lines.iter().skip(1) {
            // Only the very last line can be cut off by the kill.
            match parse_ack(line) {
                Some((id, ack)) => {
                    acked.insert(id, ack);
                }
                None => total_killed_mid_write += 1,
            }
        }
        assert!(
            acked.len() > before || round > 0,
            "round {round}: no event acknowledged"
        );

        // Reopen in-process and check every acknowledged event.
        let store = Arc::new(RocksStore::open(&db, &RocksOptions::small_for_tests()).unwrap());
        let dyn_store: Arc<dyn Store> = store.clone();
        let mut ring = Keyring::default();
        ring.add_existing(test_signer(), None, 0);
        let ledger = Ledger::open(
            dyn_store,
            Arc::new(RwLock::new(ring)),
            LedgerOptions::default(),
        )
        .unwrap();
        // Walk each log once (sequential reads) and match every acknowledged event.
        let mut by_origin: HashMap<&str, HashMap<u64, (&str, &str)>> = HashMap::new();
        for (id, ack) in &acked {
            let previous = by_origin
                .entry(ack.origin.as_str())
                .or_default()
                .insert(ack.leaf_index, (id.as_str(), ack.leaf_hash.as_str()));
            assert!(
                previous.is_none(),
                "round {round}: two acknowledged events at {} {}",
                ack.origin,
                ack.leaf_index
            );
        }
        for (origin, expected) in &by_origin {
            let mut parts = origin.rsplitn(3, '/');
            let env = parts.next().unwrap();
            let tenant = parts.next().unwrap();
            let log = ledger
                .log(tenant, env)
                .unwrap_or_else(|| panic!("round {round}: log {origin} missing"));
            let mut matched = 0usize;
            log.scan_leaves(0, log.tree_size(), &mut |index, leaf| {
                if let Some((id, hash)) = expected.get(&index) {
                    let record = decode_leaf_strict(leaf).unwrap();
                    assert_eq!(
                        record.event.unwrap().event_id,
                        *id,
                        "round {round}: {origin} leaf {index} holds another event"
                    );
                    assert_eq!(
                        hex::encode(leaf_hash(leaf)),
                        *hash,
                        "round {round}: {origin} leaf {index} changed"
                    );
                    matched += 1;
                }
                true
            })
            .unwrap();
            assert_eq!(
                matched,
                expected.len(),
                "round {round}: {origin}: acknowledged events lost (tree size {})",
                log.tree_size()
            );
            // The dedup index agrees for a sample.
            for (index, (id, _)) in expected.iter().take(200) {
                assert_eq!(
                    log.find_event(&EventId::parse(id).unwrap()).unwrap(),
                    Some(*index)
                );
            }
        }
        ledger.close().unwrap();
        drop(ledger);
        let report = fsck::check(store.as_ref(), &[test_signer().verifier()]).unwrap();
        assert!(
            report.is_clean(),
            "round {round} (seed {seed}): fsck found {:?}",
            report.problems()
        );
        drop(store);
        eprintln!(
            "round {round}: {} acknowledged events verified",
            acked.len()
        );
    }
    assert!(
        acked.len() > 1000,
        "too few events acknowledged ({}) to mean anything",
        acked.len()
    );
    eprintln!(
        "crash test: {} events verified over {rounds} kills ({total_killed_mid_write} half-written ack lines)",
        acked.len()
    );
}
