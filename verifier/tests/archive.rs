//! `auditledger-verify archive` through the real binary, on a tier built here from the pure
//! pieces (segment writer, signed manifests, anchors over an in-memory tree) — no RocksDB:
//! a good tier verifies with a per-log summary; tampering, a missing anchor, an untrusted key
//! or the wrong origin exit non-zero with a message naming the segment and the reason. (The
//! archiver's own tests, `archiver/tests/anchors.rs`, cover tiers the engine wrote.)

use std::path::{Path, PathBuf};
use std::process::Command;

use auditledger_archiver::anchor::SegmentAnchor;
use auditledger_archiver::manifest::SegmentManifest;
use auditledger_archiver::segment::{SegmentId, WriteOptions, write_segment};
use auditledger_ledger::checkpoint::Checkpoint;
use auditledger_ledger::event::{AuditEvent, EventKind, encode_event, encode_leaf};
use auditledger_ledger::merkle::{self, MemoryTree};
use auditledger_ledger::note::SignerKey;

const ORIGIN: &str = "auditledger.test/acme/prod";
const BITS: u8 = 8;
const SEGMENT: u64 = 1 << BITS;
const SEGMENTS: u64 = 4;

fn leaf(i: u64) -> Vec<u8> {
    let event = AuditEvent {
        event_id: format!("0190a8a0-0000-7000-8000-{i:012x}"),
        event_kind: EventKind::ToolCall as i32,
        schema_version: 1,
        tenant_id: "acme".into(),
        environment: "prod".into(),
        tool_server: "github".into(),
        tool_name: format!("tool-{}", i % 7),
        user_id: format!("user-{}", i % 13),
        ..Default::default()
    };
    encode_leaf(
        &encode_event(&event),
        1_795_000_000_000_000_000 + i,
        "gateway:test",
    )
}

fn signer() -> SignerKey {
    SignerKey::from_seed("auditledger.test", &[9; 32]).unwrap()
}

fn key() -> String {
    signer().verifier().to_string()
}

/// A warm tier of `SEGMENTS` segments of a log of `SEGMENTS * SEGMENT + 50` leaves, as the
/// archiver lays it out: segments 0 and 1 anchored to a checkpoint at size 2·SEGMENT + 10,
/// segments 2 and 3 to the final one (segment 2's anchor proves consistency between them).
fn tier(dir: &Path) -> PathBuf {
    let size = SEGMENTS * SEGMENT + 50;
    let leaves: Vec<Vec<u8>> = (0..size).map(leaf).collect();
    let mut tree = MemoryTree::new();
    for l in &leaves {
        tree.append(merkle::leaf_hash(l));
    }
    let checkpoint = |tree_size: u64| {
        Checkpoint {
            origin: ORIGIN.into(),
            tree_size,
            root_hash: merkle::root(&tree, tree_size).unwrap(),
            time: Some(1_795_000_000 + tree_size),
            prev: None,
            other_extensions: vec![],
        }
        .sign(&[signer()])
        .unwrap()
    };
    let early = 2 * SEGMENT + 10;
    let root = dir.join("warm");
    let folder = root.join("acme/prod/segments");
    std::fs::create_dir_all(&folder).unwrap();
    let mut previous_size = 0;
    for k in 0..SEGMENTS {
        let id = SegmentId::new(ORIGIN, k * SEGMENT, BITS).unwrap();
        let (start, end) = (id.start(), id.end());
        let (bytes, summary) = write_segment(
            id.clone(),
            &leaves[start as usize..end as usize],
            &WriteOptions::default(),
        )
        .unwrap();
        let object = format!("acme/prod/segments/{start}-{end}.parquet");
        let manifest = SegmentManifest::for_object(&summary, object, &bytes, 1_795_000_000)
            .sign(&[signer()])
            .unwrap();
        let tree_size = if k < 2 { early } else { size };
        let anchor = SegmentAnchor {
            origin: ORIGIN.into(),
            start,
            end,
            segment_root: summary.root,
            tree_size,
            previous_size,
            inclusion: merkle::subtree_inclusion_proof(&tree, id.node(), tree_size).unwrap(),
            consistency: if previous_size == 0 || previous_size == tree_size {
                vec![]
            } else {
                merkle::consistency_proof(&tree, previous_size, tree_size).unwrap()
            },
            checkpoint_note: checkpoint(tree_size),
        };
        previous_size = tree_size;
        std::fs::write(folder.join(format!("{start}-{end}.parquet")), &bytes).unwrap();
        std::fs::write(folder.join(format!("{start}-{end}.manifest")), manifest).unwrap();
        std::fs::write(
            folder.join(format!("{start}-{end}.anchor")),
            anchor.to_text(),
        )
        .unwrap();
    }
    root
}

fn segment_file(tier: &Path, k: u64, ext: &str) -> PathBuf {
    tier.join(format!(
        "acme/prod/segments/{}-{}.{ext}",
        k * SEGMENT,
        (k + 1) * SEGMENT
    ))
}

/// Runs `auditledger-verify archive URL --key … EXTRA…`: (success, stdout, stderr).
fn verify(url: &str, extra: &[&str]) -> (bool, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_auditledger-verify"))
        .args(["archive", url, "--key", &key(), "--threads", "2"])
        .args(extra)
        .output()
        .unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn a_good_tier_verifies_with_a_summary() {
    let dir = tempfile::tempdir().unwrap();
    let tier = tier(dir.path());
    let whole = format!(
        "OK: {ORIGIN} (acme/prod): 4 segment(s), leaves [0, {}), {} leaves (0 expired)",
        4 * SEGMENT,
        4 * SEGMENT
    );
    let (ok, stdout, stderr) = verify(tier.to_str().unwrap(), &[]);
    assert!(ok, "{stdout}\n{stderr}");
    assert!(stdout.contains(&whole), "{stdout}");
    assert!(
        stdout.contains(&format!(
            "anchored up to checkpoint tree size {}",
            4 * SEGMENT + 50
        )),
        "{stdout}"
    );
    // file:// URLs and --origin too.
    let url = format!("file://{}", tier.display());
    let (ok, stdout, stderr) = verify(&url, &["--origin", ORIGIN]);
    assert!(ok, "{stdout}\n{stderr}");

    // The same log split over two tiers: the later one alone names its unchecked link, both
    // together verify as the whole log.
    let later = dir.path().join("later");
    std::fs::create_dir_all(later.join("acme/prod/segments")).unwrap();
    for k in 2..4 {
        for ext in ["parquet", "manifest", "anchor"] {
            std::fs::rename(segment_file(&tier, k, ext), segment_file(&later, k, ext)).unwrap();
        }
    }
    let (ok, stdout, stderr) = verify(later.to_str().unwrap(), &[]);
    assert!(
        ok && stdout.contains("in another tier"),
        "{stdout}\n{stderr}"
    );
    let (ok, stdout, stderr) = verify(tier.to_str().unwrap(), &[later.to_str().unwrap()]);
    assert!(ok, "{stdout}\n{stderr}");
    assert!(
        stdout.contains(&whole) && !stdout.contains("in another tier"),
        "{stdout}"
    );
}

#[test]
fn failures_exit_non_zero_naming_segment_and_reason() {
    let dir = tempfile::tempdir().unwrap();
    let tier = tier(dir.path());
    let url = tier.to_str().unwrap().to_owned();

    // Not a tier at all.
    let missing = dir.path().join("nowhere");
    let (ok, _, stderr) = verify(missing.to_str().unwrap(), &[]);
    assert!(!ok);
    assert!(stderr.contains("is not a directory"), "{stderr}");
    assert!(
        !missing.exists(),
        "the verifier must not create the directory"
    );

    // An untrusted key.
    let stranger = SignerKey::from_seed("auditledger.test", &[8; 32]).unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_auditledger-verify"))
        .args(["archive", &url, "--key", &stranger.verifier().to_string()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("not signed by any trusted key"), "{stderr}");

    // Another origin required.
    let (ok, _, stderr) = verify(&url, &["--origin", "auditledger.other/acme/prod"]);
    assert!(!ok);
    assert!(
        stderr.contains("expected \"auditledger.other/acme/prod\""),
        "{stderr}"
    );

    // A leaf's bytes changed inside the Parquet object: the object hash names it.
    let object = segment_file(&tier, 1, "parquet");
    let original = std::fs::read(&object).unwrap();
    let mut bytes = original.clone();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x40;
    std::fs::write(&object, &bytes).unwrap();
    let (ok, _, stderr) = verify(&url, &[]);
    assert!(!ok);
    let expected = format!(
        "FAILED: {ORIGIN} segment [{}, {}) acme/prod/segments/{}-{}.parquet: segment object",
        SEGMENT,
        2 * SEGMENT,
        SEGMENT,
        2 * SEGMENT
    );
    assert!(stderr.contains(&expected), "{stderr}");
    assert!(stderr.contains("BLAKE3"), "{stderr}");
    std::fs::write(&object, &original).unwrap();

    // An anchor's consistency proof altered: the chain breaks at segment 2.
    let anchor_path = segment_file(&tier, 2, "anchor");
    let original = std::fs::read_to_string(&anchor_path).unwrap();
    let anchor = SegmentAnchor::parse(original.as_bytes()).unwrap();
    assert!(!anchor.consistency.is_empty());
    let mut forged = anchor.clone();
    forged.consistency[0][0] ^= 1;
    std::fs::write(&anchor_path, forged.to_text()).unwrap();
    let (ok, _, stderr) = verify(&url, &[]);
    assert!(!ok);
    assert!(
        stderr.contains("does not chain to the previous segment's anchor"),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("{}.anchor", 3 * SEGMENT)),
        "{stderr}"
    );

    // No anchor: refused unless allowed.
    std::fs::remove_file(&anchor_path).unwrap();
    let (ok, _, stderr) = verify(&url, &[]);
    assert!(!ok);
    assert!(stderr.contains("no anchor"), "{stderr}");
    let (ok, stdout, stderr) = verify(&url, &["--allow-unanchored"]);
    assert!(ok, "{stdout}\n{stderr}");
    assert!(
        stdout.contains("1 segment(s) without an anchor"),
        "{stdout}"
    );
    std::fs::write(&anchor_path, &original).unwrap();

    // Back to the original: it verifies again (the test's edits were the only problems).
    let (ok, stdout, stderr) = verify(&url, &[]);
    assert!(ok, "{stdout}\n{stderr}");
}
