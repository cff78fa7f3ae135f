//! Crash-test child: appends under concurrent load to a RocksDB ledger and prints a line per
//! acknowledged event (`ACK <event_id> <origin> <leaf_index> <leaf_hash>`) only after the
//! append returned. The parent kills it with SIGKILL at random moments.
//!
//! Usage: crash_appender DIR START_SEQ THREADS

use std::io::Write as _;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use auditledger_ledger::keys::Keyring;
use auditledger_ledger::store::rocks::{RocksOptions, RocksStore};
use auditledger_ledger::{Ledger, LedgerOptions};
use auditledger_tests::{Rng, test_signer, tool_call};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 4 {
        eprintln!("usage: crash_appender DIR START_SEQ THREADS");
        std::process::exit(2);
    }
    let dir = std::path::PathBuf::from(&args[1]);
    let start: u64 = args[2].parse().expect("START_SEQ is a number");
    let threads: u32 = args[3].parse().expect("THREADS is a number");
    let store =
        Arc::new(RocksStore::open(&dir, &RocksOptions::small_for_tests()).expect("open store"));
    let mut ring = Keyring::default();
    ring.add_existing(test_signer(), None, 0);
    let options = LedgerOptions {
        checkpoint_interval: Duration::from_millis(20),
        ..Default::default()
    };
    let ledger =
        Arc::new(Ledger::open(store, Arc::new(RwLock::new(ring)), options).expect("open ledger"));
    let out = Arc::new(Mutex::new(std::io::stdout()));
    println!("READY");
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let ledger = ledger.clone();
            let out = out.clone();
            std::thread::spawn(move || {
                let mut rng =
                    Rng::new(start ^ (u64::from(t) + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
                let mut n = start;
                loop {
                    let size = rng.range(1, 40);
                    let tenants = ["acme", "globex"];
                    let batch: Vec<_> = (0..size)
                        .map(|i| tool_call(t, n + i, tenants[((n + i) % 2) as usize], "prod"))
                        .collect();
                    n += size;
                    let receipts = ledger
                        .append_blocking(&format!("gateway-{t}"), &batch)
                        .expect("append");
                    let mut text = String::new();
                    for r in receipts {
                        text.push_str(&format!(
                            "ACK {} {} {} {}\n",
                            r.event_id,
                            r.origin,
                            r.leaf_index,
                            hex::encode(r.leaf_hash)
                        ));
                    }
                    let mut out = out.lock().unwrap();
                    out.write_all(text.as_bytes()).expect("stdout");
                    out.flush().expect("stdout");
                }
            })
        })
        .collect();
    for h in handles {
        let _ = h.join();
    }
}
