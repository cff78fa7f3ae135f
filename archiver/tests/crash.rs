//! Crash safety of the move protocols: a child process runs the archiver on a RocksDB ledger
//! and aborts right after one step (`AUDITLEDGER_ARCHIVER_CRASH_AFTER`); the archiver is then
//! rerun to completion and everything is checked — every leaf readable with the tree's hash,
//! exactly one object (and manifest) per segment in the right tier, no strays, every object
//! verifying against its signed manifest, `fsck` clean. For every step of hot → warm,
//! warm → cold and retention expiry.

mod common;

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use auditledger_archiver::{
    Archiver, ArchiverConfig, CRASH_ENV, EXPIRY_STEPS, HOT_TO_WARM_STEPS, TierStores,
    WARM_TO_COLD_STEPS, allow_deletions,
};
use auditledger_ledger::segments::Tier;
use auditledger_ledger::store::rocks::{RocksOptions, RocksStore};
use auditledger_ledger::{Clock, Ledger, SystemClock};

use common::tiers::{Census, append, check_archive, file_stores, open_ledger};

const SEGMENTS: u64 = 3;
const BITS: u8 = 8;
/// What the child's `expire` mode adds to the clock: past every default retention.
const TEN_YEARS: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

fn open(db: &Path) -> Arc<Ledger> {
    let store = Arc::new(RocksStore::open(db, &RocksOptions::small_for_tests()).unwrap());
    open_ledger(store, BITS)
}

fn archiver(ledger: &Arc<Ledger>, stores: &TierStores) -> Archiver {
    Archiver::new(
        ledger.clone(),
        stores.clone(),
        ArchiverConfig::default(),
        allow_deletions(),
    )
}

fn url(dir: &Path, name: &str) -> String {
    format!("file://{}", dir.join(name).display())
}

/// Runs the child on `dir`, which must abort right after `step`.
fn crash_child(dir: &Path, mode: &str, step: &str) {
    let output = Command::new(env!("CARGO_BIN_EXE_archive_crash_child"))
        .args([
            dir.join("db").to_str().unwrap(),
            &url(dir, "warm"),
            &url(dir, "cold"),
            mode,
        ])
        .env(CRASH_ENV, step)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success() && stderr.contains(&format!("{CRASH_ENV}={step}: aborting")),
        "{step}: the child did not abort after the step: {:?}\nstdout: {}\nstderr: {stderr}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
    );
}

/// A fresh ledger of `SEGMENTS` full segments and a partial one, closed.
async fn setup(dir: &Path) {
    let ledger = open(&dir.join("db"));
    append(&ledger, "acme", 0, SEGMENTS * 256 + 20).await;
    ledger.checkpoint_now().unwrap();
    ledger.close().unwrap();
}

fn now() -> u64 {
    SystemClock.now_nanos()
}

async fn crash_and_finish(mode: &str, step: &str) {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    setup(dir).await;
    let stores = file_stores(dir);
    // The state the crashing step starts from.
    if mode != "warm" {
        let ledger = open(&dir.join("db"));
        let report = archiver(&ledger, &stores)
            .move_down(Tier::Warm, Duration::ZERO, now())
            .await;
        assert!(report.failures.is_empty(), "{report:?}");
        ledger.close().unwrap();
    }
    crash_child(dir, mode, step);

    let ledger = open(&dir.join("db"));
    let log = ledger.log("acme", "prod").unwrap();
    log.wait_for_index(log.tree_size()).await.unwrap();
    let archiver = archiver(&ledger, &stores);
    let (report, expected) = match mode {
        "warm" => (
            archiver.move_down(Tier::Warm, Duration::ZERO, now()).await,
            Census {
                warm: SEGMENTS,
                cold: 0,
                expired: 0,
            },
        ),
        "cold" => (
            archiver.move_down(Tier::Cold, Duration::ZERO, now()).await,
            Census {
                warm: 0,
                cold: SEGMENTS,
                expired: 0,
            },
        ),
        _ => (
            archiver.pass(now() + TEN_YEARS.as_nanos() as u64).await,
            Census {
                warm: 0,
                cold: SEGMENTS,
                expired: SEGMENTS,
            },
        ),
    };
    assert!(report.failures.is_empty(), "{step}: {report:?}");
    let census = check_archive(&ledger, &stores, archiver.reader()).await;
    assert_eq!(census, expected, "{step}");
    // And once finished, a rerun has nothing left to do.
    let again = match mode {
        "warm" => archiver.move_down(Tier::Warm, Duration::ZERO, now()).await,
        "cold" => archiver.move_down(Tier::Cold, Duration::ZERO, now()).await,
        _ => archiver.pass(now() + TEN_YEARS.as_nanos() as u64).await,
    };
    assert!(
        again.moved.is_empty() && again.expired.is_empty() && again.failures.is_empty(),
        "{step}: {again:?}"
    );
    ledger.close().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_after_every_step_the_rerun_finishes_with_nothing_lost_or_duplicated() {
    for (mode, steps) in [
        ("warm", HOT_TO_WARM_STEPS),
        ("cold", WARM_TO_COLD_STEPS),
        ("expire", EXPIRY_STEPS),
    ] {
        for step in steps {
            crash_and_finish(mode, step).await;
        }
    }
}

/// SIGKILL at random moments of a full pass (hot → warm → cold → expiry of many segments),
/// including in the middle of a step; the rerun finishes. The seed is printed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_at_random_moments_the_rerun_finishes() {
    const MANY: u64 = 12;
    let (mut rng, seed) = auditledger_tests::Rng::from_time();
    println!("seed {seed}");
    for round in 0..6 {
        let dir = tempfile::tempdir().unwrap();
        let dir = dir.path();
        let ledger = open(&dir.join("db"));
        append(&ledger, "acme", 0, MANY * 256 + 3).await;
        ledger.close().unwrap();
        drop(ledger);
        let mut child = Command::new(env!("CARGO_BIN_EXE_archive_crash_child"))
            .args([
                dir.join("db").to_str().unwrap(),
                &url(dir, "warm"),
                &url(dir, "cold"),
                "expire",
            ])
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let delay = Duration::from_millis(rng.range(20, 1100));
        tokio::time::sleep(delay).await;
        let _ = child.kill();
        let status = child.wait().unwrap();
        println!("round {round}: SIGKILL sent after {delay:?}; the child ended with {status}");

        let ledger = open(&dir.join("db"));
        let log = ledger.log("acme", "prod").unwrap();
        log.wait_for_index(log.tree_size()).await.unwrap();
        let stores = file_stores(dir);
        let archiver = archiver(&ledger, &stores);
        let report = archiver.pass(now() + TEN_YEARS.as_nanos() as u64).await;
        assert!(
            report.failures.is_empty(),
            "seed {seed} round {round}: {report:?}"
        );
        let census = check_archive(&ledger, &stores, archiver.reader()).await;
        assert_eq!(
            census,
            Census {
                warm: 0,
                cold: MANY,
                expired: MANY
            },
            "seed {seed} round {round}"
        );
        ledger.close().unwrap();
    }
}
