//! Segment anchors end to end: the archiver writes one beside every segment, copies it to the
//! cold tier, keeps it through expiry and backfills missing ones; the offline verifier
//! (`auditledger_verifier::archive`) accepts the archive and names the segment and the reason
//! for every kind of tampering.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use auditledger_archiver::{Archiver, ArchiverConfig, SegmentAnchor, TierStores, allow_deletions};
use auditledger_ledger::segments::Tier;
use auditledger_ledger::store::memory::MemoryStore;
use auditledger_ledger::{Clock, Ledger, SystemClock};
use auditledger_verifier::archive::{ArchiveOptions, ArchiveReport, verify_archives};

use common::tiers::{append, check_archive, file_stores, open_ledger, verifiers};

/// fsck wants segments of at least one tile (2^8 leaves).
const BITS: u8 = 8;
const SEGMENT: u64 = 1 << BITS;

fn now() -> u64 {
    SystemClock.now_nanos()
}

fn new_archiver(ledger: &Arc<Ledger>, stores: &TierStores) -> Archiver {
    Archiver::new(
        ledger.clone(),
        stores.clone(),
        ArchiverConfig::default(),
        allow_deletions(),
    )
}

/// Runs the offline verifier on a directory (off the async runtime: it has its own).
async fn verify(dir: &Path, allow_unanchored: bool) -> ArchiveReport {
    run_verifier(&[dir], allow_unanchored).await
}

/// Runs the offline verifier on several tiers as one archive.
async fn verify_tiers(dirs: &[&Path]) -> ArchiveReport {
    run_verifier(dirs, false).await
}

async fn run_verifier(dirs: &[&Path], allow_unanchored: bool) -> ArchiveReport {
    let urls: Vec<String> = dirs
        .iter()
        .map(|d| format!("file://{}", d.display()))
        .collect();
    let options = ArchiveOptions {
        keys: verifiers(),
        allow_unanchored,
        threads: Some(2),
        ..ArchiveOptions::default()
    };
    tokio::task::spawn_blocking(move || verify_archives(&urls, &options))
        .await
        .unwrap()
        .unwrap()
}

/// Asserts the report has a failure for `path` (a suffix) whose text contains `needle`.
fn assert_failure(report: &ArchiveReport, path: &str, needle: &str) {
    assert!(
        report
            .failures
            .iter()
            .any(|f| f.path.ends_with(path) && f.to_string().contains(needle)),
        "expected a failure on {path} containing {needle:?}, got {:#?}",
        report.failures
    );
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// A copy of `tier` to tamper with.
fn scratch(tier: &Path, name: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join(name);
    copy_dir(tier, &copy);
    (dir, copy)
}

fn segment_file(tier: &Path, tenant: &str, start: u64, ext: &str) -> PathBuf {
    tier.join(format!(
        "{tenant}/prod/segments/{start}-{}.{ext}",
        start + SEGMENT
    ))
}

/// `acme/prod/segments/<start>-<end>.<ext>` of segment number `k`.
fn name(k: u64, ext: &str) -> String {
    format!(
        "acme/prod/segments/{}-{}.{ext}",
        k * SEGMENT,
        (k + 1) * SEGMENT
    )
}

fn flip_byte(path: &Path, at: usize) {
    let mut bytes = std::fs::read(path).unwrap();
    bytes[at] ^= 0x01;
    std::fs::write(path, bytes).unwrap();
}

/// Replaces the first occurrence of `from` (which must exist) in a text file.
fn edit(path: &Path, from: &str, to: &str) {
    let text = std::fs::read_to_string(path).unwrap();
    assert!(text.contains(from), "{from:?} not in {}", path.display());
    std::fs::write(path, text.replacen(from, to, 1)).unwrap();
}

/// Changes one hex digit of line `line` (1-based) of an anchor to another hex digit.
fn flip_hex_line(path: &Path, line: usize) {
    let text = std::fs::read_to_string(path).unwrap();
    let mut lines: Vec<String> = text.split('\n').map(str::to_owned).collect();
    let first = lines[line - 1].remove(0);
    lines[line - 1].insert(0, if first == '0' { '1' } else { '0' });
    std::fs::write(path, lines.join("\n")).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn archive_verifies_and_every_tampering_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let stores = file_stores(dir.path());
    let warm = dir.path().join("warm");
    let ledger = open_ledger(Arc::new(MemoryStore::new()), BITS);
    append(&ledger, "acme", 0, 3 * SEGMENT).await;
    append(&ledger, "globex", 0, 3 * SEGMENT).await;
    let archiver = new_archiver(&ledger, &stores);
    let report = archiver.move_down(Tier::Warm, Duration::ZERO, now()).await;
    assert!(report.failures.is_empty(), "{report:?}");
    assert_eq!(report.moved.len(), 6);
    // Two more later: their anchors carry a newer checkpoint and a consistency proof.
    append(&ledger, "acme", 3 * SEGMENT, 2 * SEGMENT + 9).await;
    let report = archiver.move_down(Tier::Warm, Duration::ZERO, now()).await;
    assert!(report.failures.is_empty(), "{report:?}");
    assert_eq!(report.moved.len(), 2);
    check_archive(&ledger, &stores, archiver.reader()).await;

    let report = verify(&warm, false).await;
    assert!(report.is_ok(), "{:#?}", report.failures);
    let acme = report
        .logs
        .iter()
        .find(|l| l.folder == "acme/prod")
        .unwrap();
    assert_eq!(acme.origin, "auditledger.local/acme/prod");
    assert_eq!(
        (acme.segments, acme.first_leaf, acme.end_leaf, acme.leaves),
        (5, 0, 5 * SEGMENT, 5 * SEGMENT)
    );
    let (size, _) = acme.highest_checkpoint.clone().unwrap();
    assert!(size >= 5 * SEGMENT, "{size}");
    assert_eq!(report.logs.len(), 2);

    // A byte of a Parquet object.
    let (_t, tier) = scratch(&warm, "parquet");
    let object = segment_file(&tier, "acme", 2 * SEGMENT, "parquet");
    let len = std::fs::metadata(&object).unwrap().len() as usize;
    flip_byte(&object, len / 2);
    let report = verify(&tier, false).await;
    assert_failure(&report, &name(2, "parquet"), "BLAKE3");
    assert_eq!(report.failures.len(), 1, "{:#?}", report.failures);
    let range = format!("[{}, {})", 2 * SEGMENT, 3 * SEGMENT);
    assert!(report.failures[0].to_string().contains(&range));

    // A byte of a manifest's signed text.
    let (_t, tier) = scratch(&warm, "manifest");
    let manifest = segment_file(&tier, "acme", SEGMENT, "manifest");
    edit(&manifest, "expired_leaves 0", "expired_leaves 1");
    let report = verify(&tier, false).await;
    assert_failure(&report, &name(1, "manifest"), "does not verify");

    // A byte of the checkpoint inside an anchor: a character of its base64 root line.
    let (_t, tier) = scratch(&warm, "checkpoint");
    let anchor = segment_file(&tier, "acme", 4 * SEGMENT, "anchor");
    let text = std::fs::read_to_string(&anchor).unwrap();
    let parsed = SegmentAnchor::parse(text.as_bytes()).unwrap();
    let note_at = text.find("\ncheckpoint\n").unwrap() + "\ncheckpoint\n".len();
    let note_lines: Vec<&str> = parsed.checkpoint_note.split('\n').collect();
    let at = note_at + note_lines[0].len() + 1 + note_lines[1].len() + 1 + 3;
    let mut bytes = text.into_bytes();
    bytes[at] = if bytes[at] == b'A' { b'B' } else { b'A' };
    std::fs::write(&anchor, bytes).unwrap();
    let report = verify(&tier, false).await;
    assert_failure(&report, &name(4, "anchor"), "checkpoint");

    // A hash of an anchor's inclusion proof (line 9 is its first hash).
    let (_t, tier) = scratch(&warm, "inclusion");
    let anchor = segment_file(&tier, "acme", 0, "anchor");
    flip_hex_line(&anchor, 9);
    let report = verify(&tier, false).await;
    assert_failure(&report, &name(0, "anchor"), "not in the checkpoint's tree");

    // A hash of an anchor's consistency proof: the chain breaks there. Segment 3 moved in
    // the second pass, so its proof leads from the first pass's checkpoint to a newer one.
    let (_t, tier) = scratch(&warm, "consistency");
    let anchor_path = segment_file(&tier, "acme", 3 * SEGMENT, "anchor");
    let anchor = SegmentAnchor::parse(&std::fs::read(&anchor_path).unwrap()).unwrap();
    assert!(!anchor.consistency.is_empty(), "{anchor:?}");
    // Header, six fields, the inclusion count and hashes, the consistency count.
    flip_hex_line(&anchor_path, 10 + anchor.inclusion.len());
    let report = verify(&tier, false).await;
    assert_failure(
        &report,
        &name(3, "anchor"),
        "does not chain to the previous segment's anchor: segment anchor: consistency proof",
    );

    // A whole segment deleted from the middle: a gap, named.
    let (_t, tier) = scratch(&warm, "gap");
    for ext in ["parquet", "manifest", "anchor"] {
        std::fs::remove_file(segment_file(&tier, "acme", 2 * SEGMENT, ext)).unwrap();
    }
    let report = verify(&tier, false).await;
    let gap = format!(
        "gap: no segment holds leaves [{}, {})",
        2 * SEGMENT,
        3 * SEGMENT
    );
    assert_failure(&report, "acme/prod/segments/", &gap);

    // Only the object deleted: its manifest names what is missing.
    let (_t, tier) = scratch(&warm, "object");
    std::fs::remove_file(segment_file(&tier, "acme", 2 * SEGMENT, "parquet")).unwrap();
    let report = verify(&tier, false).await;
    assert_failure(&report, &name(2, "parquet"), "not found");

    // Another tenant's segment copied into this log's folder under this log's names.
    let (_t, tier) = scratch(&warm, "mixed");
    for ext in ["parquet", "manifest", "anchor"] {
        std::fs::copy(
            segment_file(&tier, "globex", SEGMENT, ext),
            segment_file(&tier, "acme", SEGMENT, ext),
        )
        .unwrap();
    }
    let report = verify(&tier, false).await;
    assert_failure(&report, &name(1, "manifest"), "globex");

    // A segment of another ledger with the same origin and key (a fork of the log) swapped
    // in: each file is genuine, the anchor chain is not.
    let other_dir = tempfile::tempdir().unwrap();
    let other_stores = file_stores(other_dir.path());
    let other = open_ledger(Arc::new(MemoryStore::new()), BITS);
    append(&other, "acme", 0, 4 * SEGMENT).await;
    let report = new_archiver(&other, &other_stores)
        .move_down(Tier::Warm, Duration::ZERO, now())
        .await;
    assert!(report.failures.is_empty(), "{report:?}");
    let (_t, tier) = scratch(&warm, "fork");
    for ext in ["parquet", "manifest", "anchor"] {
        std::fs::copy(
            segment_file(&other_dir.path().join("warm"), "acme", 2 * SEGMENT, ext),
            segment_file(&tier, "acme", 2 * SEGMENT, ext),
        )
        .unwrap();
    }
    let report = verify(&tier, false).await;
    assert_failure(&report, &name(2, "anchor"), "chain");
    other.close().unwrap();

    // The untouched archive still verifies.
    assert!(verify(&warm, false).await.is_ok());
    ledger.close().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anchors_follow_segments_to_cold_through_expiry_and_are_backfilled() {
    let dir = tempfile::tempdir().unwrap();
    let stores = file_stores(dir.path());
    let (warm, cold) = (dir.path().join("warm"), dir.path().join("cold"));
    let ledger = open_ledger(Arc::new(MemoryStore::new()), BITS);
    append(&ledger, "acme", 0, 3 * SEGMENT).await;
    let archiver = new_archiver(&ledger, &stores);
    let start = now();
    assert!(
        archiver
            .move_down(Tier::Warm, Duration::ZERO, start)
            .await
            .failures
            .is_empty()
    );
    assert!(
        archiver
            .move_down(Tier::Cold, Duration::ZERO, start)
            .await
            .failures
            .is_empty()
    );
    // Two more segments reach warm later: the warm tier's chain starts in the cold tier.
    append(&ledger, "acme", 3 * SEGMENT, 2 * SEGMENT + 5).await;
    assert!(
        archiver
            .move_down(Tier::Warm, Duration::ZERO, now())
            .await
            .failures
            .is_empty()
    );
    check_archive(&ledger, &stores, archiver.reader()).await;

    let report = verify(&cold, false).await;
    assert!(report.is_ok(), "{:#?}", report.failures);
    assert_eq!(
        (report.logs[0].segments, report.logs[0].chained_from),
        (3, 0)
    );
    let cold_size = report.logs[0].highest_checkpoint.clone().unwrap().0;
    let report = verify(&warm, false).await;
    assert!(report.is_ok(), "{:#?}", report.failures);
    assert_eq!(report.logs[0].first_leaf, 3 * SEGMENT);
    assert_eq!(report.logs[0].chained_from, cold_size);

    // Both tiers as one archive: one log from leaf 0, the link between the tiers checked.
    let both = verify_tiers(&[&cold, &warm]).await;
    assert!(both.is_ok(), "{:#?}", both.failures);
    assert_eq!(both.logs.len(), 1);
    let log = &both.logs[0];
    assert_eq!(
        (log.segments, log.first_leaf, log.end_leaf, log.chained_from),
        (5, 0, 5 * SEGMENT, 0)
    );
    // A segment caught in a move (copied to cold, not yet deleted from warm) is verified in
    // both tiers and counted once.
    let (_t, caught) = scratch(&cold, "caught");
    for ext in ["parquet", "manifest", "anchor"] {
        std::fs::copy(
            segment_file(&warm, "acme", 3 * SEGMENT, ext),
            segment_file(&caught, "acme", 3 * SEGMENT, ext),
        )
        .unwrap();
    }
    let both = verify_tiers(&[&caught, &warm]).await;
    assert!(both.is_ok(), "{:#?}", both.failures);
    assert_eq!(
        (both.logs[0].segments, both.logs[0].leaves),
        (5, 5 * SEGMENT)
    );

    // The cold tier of a fork (another ledger, same origin and key) beside this warm tier:
    // each tier verifies on its own, but the link between them does not.
    let fork_dir = tempfile::tempdir().unwrap();
    let fork_stores = file_stores(fork_dir.path());
    let fork = open_ledger(Arc::new(MemoryStore::new()), BITS);
    append(&fork, "acme", 0, 3 * SEGMENT).await;
    let fork_archiver = new_archiver(&fork, &fork_stores);
    for tier in [Tier::Warm, Tier::Cold] {
        let r = fork_archiver.move_down(tier, Duration::ZERO, now()).await;
        assert!(r.failures.is_empty(), "{r:?}");
    }
    let fork_cold = fork_dir.path().join("cold");
    assert!(verify(&fork_cold, false).await.is_ok());
    let mixed = verify_tiers(&[&fork_cold, &warm]).await;
    assert_failure(
        &mixed,
        &name(3, "anchor"),
        "does not chain to the previous segment's anchor",
    );
    assert!(
        mixed
            .failures
            .iter()
            .all(|f| f.path.contains(&*warm.to_string_lossy())),
        "only the link fails: {:#?}",
        mixed.failures
    );
    fork.close().unwrap();

    // Ten years on, the warm segments go cold and every object is rewritten without
    // content; the anchors follow and still verify.
    let later = now() + Duration::from_secs(10 * 365 * 24 * 3600).as_nanos() as u64;
    let report = archiver.pass(later).await;
    assert!(report.failures.is_empty(), "{report:?}");
    assert_eq!(report.expired.len(), 5);
    check_archive(&ledger, &stores, archiver.reader()).await;
    let report = verify(&cold, false).await;
    assert!(report.is_ok(), "{:#?}", report.failures);
    assert_eq!(
        (report.logs[0].segments, report.logs[0].expired_leaves),
        (5, 5 * SEGMENT)
    );
    let report = verify(&warm, false).await;
    assert_failure(&report, "warm", "no segment found");

    // Anchors lost (or never written, by an older version): the verifier refuses the
    // segments unless told to accept them, and the next archiver run writes them again,
    // chained, from the tree hashes kept in the hot store.
    for start in [0, SEGMENT] {
        std::fs::remove_file(segment_file(&cold, "acme", start, "anchor")).unwrap();
    }
    std::fs::remove_file(segment_file(&cold, "acme", 4 * SEGMENT, "anchor")).unwrap();
    let report = verify(&cold, false).await;
    assert_failure(&report, &name(0, "anchor"), "no anchor");
    assert_failure(&report, &name(1, "anchor"), "no anchor");
    let report = verify(&cold, true).await;
    assert!(report.is_ok(), "{:#?}", report.failures);
    assert_eq!(report.logs[0].unanchored, 3);
    let fresh = Archiver::new(
        ledger.clone(),
        stores.clone(),
        ArchiverConfig::default(),
        allow_deletions(),
    );
    let report = fresh.pass(later).await;
    assert!(report.failures.is_empty(), "{report:?}");
    check_archive(&ledger, &stores, fresh.reader()).await;
    let report = verify(&cold, false).await;
    assert!(report.is_ok(), "{:#?}", report.failures);
    assert_eq!(report.logs[0].unanchored, 0);
    ledger.close().unwrap();
}
