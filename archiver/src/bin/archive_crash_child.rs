//! Crash-test child: opens a RocksDB ledger and runs one archiver step: `move_down` to the given
//! tier with `--older-than 0s`, or with `expire` a full pass ten years from now (every
//! retention expired). The parent test (`tests/crash.rs`) sets `AUDITLEDGER_ARCHIVER_CRASH_AFTER` to a
//! step name, so the process aborts right after that step; it then reruns the archiver and
//! checks that nothing was lost or duplicated. Prints `DONE` if no step aborted.
//!
//! Usage: archive_crash_child DB_DIR WARM_URL COLD_URL warm|cold|expire

use std::sync::{Arc, RwLock};
use std::time::Duration;

use auditledger_archiver::{
    Archiver, ArchiverConfig, SegmentStore, StoreOptions, TierStores, allow_deletions,
};
use auditledger_ledger::keys::Keyring;
use auditledger_ledger::note::SignerKey;
use auditledger_ledger::segments::Tier;
use auditledger_ledger::store::rocks::{RocksOptions, RocksStore};
use auditledger_ledger::{Clock, Ledger, LedgerOptions, SystemClock};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 5 {
        eprintln!("usage: archive_crash_child DB_DIR WARM_URL COLD_URL warm|cold|expire");
        std::process::exit(2);
    }
    let tier: Option<Tier> = match args[4].as_str() {
        "expire" => None,
        mode => match mode.parse() {
            Ok(tier) => Some(tier),
            Err(e) => {
                eprintln!("{e}");
                std::process::exit(2);
            }
        },
    };
    let store = Arc::new(
        RocksStore::open(
            std::path::Path::new(&args[1]),
            &RocksOptions::small_for_tests(),
        )
        .expect("open store"),
    );
    // The key the archiver crash test signs with.
    let signer = SignerKey::from_seed("auditledger.local", &[0x5a; 32]).expect("valid key name");
    let mut ring = Keyring::default();
    ring.add_existing(signer, None, 0);
    let ledger = Arc::new(
        Ledger::open(store, Arc::new(RwLock::new(ring)), LedgerOptions::default())
            .expect("open ledger"),
    );
    let options = StoreOptions::default();
    let stores = TierStores {
        warm: SegmentStore::open(&args[2], &options).expect("open warm store"),
        cold: SegmentStore::open(&args[3], &options).expect("open cold store"),
    };
    let archiver = Archiver::new(
        ledger.clone(),
        stores,
        ArchiverConfig::default(),
        allow_deletions(),
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let now = SystemClock.now_nanos();
    let report = runtime.block_on(async {
        match tier {
            Some(tier) => archiver.move_down(tier, Duration::ZERO, now).await,
            None => {
                let ten_years = Duration::from_secs(10 * 365 * 24 * 3600).as_nanos() as u64;
                archiver.pass(now + ten_years).await
            }
        }
    });
    for failure in &report.failures {
        eprintln!("failure: {failure}");
    }
    ledger.close().expect("close ledger");
    println!(
        "DONE moved={} failures={}",
        report.moved.len(),
        report.failures.len()
    );
}
