//! Export verification (`auditledger_verifier::export::verify_export`) on arbitrary bytes and
//! on a real export with fuzzed byte edits.
//!
//! Input: first byte even → the rest is the tar; odd → the rest is a list of
//! `(offset: u16 LE, xor: u8)` edits applied to a real, signed export of 6 leaves of an
//! 11-leaf log (two entries files, one expired leaf) built in-process with the archiver's
//! `ExportWriter`.
//!
//! Asserts: `verify_export` returns (never panics, never allocates unboundedly: run with
//! `-malloc_limit_mb`), and when it accepts, what it reports is consistent — the leaf count
//! is `end − start` of the manifest, which is signed by our key and proven against a
//! checkpoint of our origin. An edited export that still verifies must report exactly what the
//! original reports (edits can only touch bytes no member hash covers: tar padding and
//! header fields such as mtime). A raw input verifies only if it is a genuine export.
//!
//! `verify_export` deliberately catches panics of the Parquet decoder (a hostile file must
//! fail the export, not the process). libFuzzer's panic hook would abort on those before
//! they are caught, so this target replaces the hook with the default one: panics caught
//! inside the verifier are tolerated, any panic that escapes it still aborts (libfuzzer-sys
//! aborts on an unwinding fuzz target).

#![no_main]

#[path = "common.rs"]
mod common;

use std::sync::OnceLock;

use auditledger_archiver::export::{ExportDescription, ExportWriter};
use auditledger_ledger::checkpoint::Checkpoint;
use auditledger_ledger::event::{AuditEvent, EventKind, encode_event, encode_leaf};
use auditledger_ledger::merkle::{self, MemoryTree};
use auditledger_verifier::export::{ExportOptions, ExportReport, verify_export};
use libfuzzer_sys::fuzz_target;

const SIZE: u64 = 11;
const START: u64 = 3;
const END: u64 = 9;
const EXPIRED: u64 = 5;

fn leaf(i: u64) -> Vec<u8> {
    let event = AuditEvent {
        event_id: format!("0190a8a0-0000-7000-8000-{i:012x}"),
        event_kind: EventKind::ToolCall as i32,
        schema_version: 1,
        tenant_id: "acme".into(),
        environment: "prod".into(),
        tool_name: format!("tool-{}", i % 3),
        ..Default::default()
    };
    encode_leaf(
        &encode_event(&event),
        1_795_000_000_000_000_000 + i,
        "gateway:fuzz",
    )
}

/// A real export, per the verifier's own tests (verifier/tests/export.rs).
fn real_export() -> Vec<u8> {
    let leaves: Vec<Vec<u8>> = (0..SIZE).map(leaf).collect();
    let mut tree = MemoryTree::new();
    for l in &leaves {
        tree.append(merkle::leaf_hash(l));
    }
    let signer = common::signer();
    let checkpoint = Checkpoint {
        origin: common::ORIGIN.into(),
        tree_size: SIZE,
        root_hash: merkle::root(&tree, SIZE).expect("root"),
        time: Some(1_795_000_000),
        prev: None,
        other_extensions: Vec::new(),
    };
    let note = checkpoint
        .sign(std::slice::from_ref(&signer))
        .expect("signing");
    let proof = merkle::range_proof(&tree, START, END, SIZE).expect("range proof");
    let description = ExportDescription {
        origin: common::ORIGIN.into(),
        tree_size: SIZE,
        from_time: 0,
        to_time: 0,
        requester: "token:fuzz".into(),
        justification: "fuzzing\nthe verifier".into(),
        exported_at: 1_795_000_100,
    };
    let mut writer =
        ExportWriter::with_entries_per_file(Vec::new(), description, &note, &proof, START, END, 4)
            .expect("export writer");
    for i in START..END {
        if i == EXPIRED {
            writer
                .push_expired(merkle::leaf_hash(&leaves[i as usize]))
                .expect("push");
        } else {
            writer.push_leaf(&leaves[i as usize]).expect("push");
        }
    }
    writer
        .finish(std::slice::from_ref(&signer))
        .expect("finish")
}

fn verify(tar: &[u8]) -> Result<ExportReport, String> {
    let options = ExportOptions { threads: 1 };
    verify_export(tar, &[common::verifier()], &options, &|_| {}).map_err(|e| e.to_string())
}

fn summary(r: &ExportReport) -> (u64, u64, u64, u64, u64, String) {
    (
        r.leaves,
        r.expired_leaves,
        r.entries_files,
        r.manifest.start,
        r.manifest.end,
        r.manifest.body(),
    )
}

struct Real {
    tar: Vec<u8>,
    report: (u64, u64, u64, u64, u64, String),
}

fn real() -> &'static Real {
    static REAL: OnceLock<Real> = OnceLock::new();
    REAL.get_or_init(|| {
        let tar = real_export();
        let report = verify(&tar).expect("the real export verifies");
        assert_eq!(report.leaves, END - START);
        assert_eq!(report.expired_leaves, 1);
        let report = summary(&report);
        Real { tar, report }
    })
}

fn check_consistent(r: &ExportReport) {
    assert_eq!(r.leaves, r.manifest.end - r.manifest.start);
    assert!(r.expired_leaves <= r.leaves);
    assert_eq!(r.manifest.origin, r.checkpoint.checkpoint.origin);
    assert_eq!(r.manifest.tree_size, r.checkpoint.checkpoint.tree_size);
    assert_eq!(r.manifest_signed_by, vec![common::verifier()]);
}

fuzz_target!(
    init: {
        common::write_seeds_if_asked(|| {
            let mut even = vec![0u8];
            even.extend(real_export());
            vec![even, vec![1u8, 0, 0, 0]]
        });
        std::panic::set_hook(Box::new(|info| eprintln!("{info}")));
        let _ = real();
    },
    |data: &[u8]| {
        let Some((&mode, rest)) = data.split_first() else {
            return;
        };
        if mode % 2 == 0 {
            if let Ok(report) = verify(rest) {
                check_consistent(&report);
            }
            return;
        }
        let real = real();
        let mut tar = real.tar.clone();
        for edit in rest.chunks_exact(3).take(64) {
            let offset = usize::from(u16::from_le_bytes([edit[0], edit[1]])) % tar.len();
            tar[offset] ^= edit[2];
        }
        if let Ok(report) = verify(&tar) {
            check_consistent(&report);
            assert_eq!(summary(&report), real.report, "an edited export verified with other content");
        }
    }
);
