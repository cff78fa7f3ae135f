//! Export manifests (ledger/src/export.rs) on arbitrary bytes.
//!
//! Asserts: nothing panics; a manifest body that parses formats back to exactly itself (one
//! text per manifest: escapes and numbers are canonical) and parses again to the same value;
//! its range is ordered (`start ≤ end ≤ tree_size`) and no member is listed twice; signed with
//! our key it opens to the same manifest, and `open_manifest` on arbitrary bytes only succeeds
//! for notes our key really signed.

#![no_main]

#[path = "common.rs"]
mod common;

use auditledger_ledger::export::{
    CHECKPOINT_MEMBER, ExportManifest, ExportManifestError, RANGE_PROOF_MEMBER, entries_member,
    open_manifest, parse_entries_member,
};
use auditledger_ledger::note::NoteError;
use libfuzzer_sys::fuzz_target;

fn sample() -> ExportManifest {
    ExportManifest {
        origin: common::ORIGIN.into(),
        start: 10,
        end: 70_000,
        tree_size: 80_000,
        from_time: 0,
        to_time: 0,
        requester: "token:ab12 (compliance)".into(),
        justification: "SOC 2 audit\nline two\twith a tab \\ and a bell \u{7}".into(),
        exported_at: 1_795_450_000,
        expired_leaves: 3,
        members: vec![
            (CHECKPOINT_MEMBER.into(), [1; 32]),
            (RANGE_PROOF_MEMBER.into(), [2; 32]),
            (entries_member(0), [3; 32]),
            (entries_member(1), [4; 32]),
        ],
    }
}

fn seeds() -> Vec<Vec<u8>> {
    let m = sample();
    vec![
        m.body().into_bytes(),
        m.sign(&[common::signer()]).expect("signing").into_bytes(),
        b"entries-000123.parquet".to_vec(),
    ]
}

fuzz_target!(
    init: { common::write_seeds_if_asked(seeds); },
    |data: &[u8]| {
        let keys = [common::verifier()];
        if let Ok(opened) = open_manifest(data, &keys) {
            assert_eq!(opened.signed_by, keys.to_vec());
            assert_eq!(opened.manifest.body(), opened.note.text());
        }
        let Ok(text) = std::str::from_utf8(data) else {
            return;
        };
        if let Some(n) = parse_entries_member(text) {
            assert_eq!(entries_member(n), text, "entries member names are canonical");
        }
        if let Ok(m) = ExportManifest::parse_body(text) {
            assert_eq!(m.body(), text, "manifest body does not format back to itself");
            assert_eq!(ExportManifest::parse_body(&m.body()).as_ref(), Ok(&m));
            assert!(m.start <= m.end && m.end <= m.tree_size);
            for (i, (name, _)) in m.members.iter().enumerate() {
                assert!(!m.members[..i].iter().any(|(n, _)| n == name));
            }
            let note = match m.sign(&[common::signer()]) {
                Ok(note) => note,
                // Control characters a note cannot carry (open_manifest checks the note first).
                Err(ExportManifestError::Note(NoteError::ControlCharacter(_))) => return,
                Err(e) => panic!("a parsed manifest cannot be signed: {e}"),
            };
            let opened = open_manifest(note.as_bytes(), &keys).expect("own signature opens");
            assert_eq!(opened.manifest, m);
        }
    }
);
