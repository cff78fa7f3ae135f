//! Segment manifests (archiver/src/manifest.rs) on arbitrary bytes.
//!
//! Asserts: nothing panics; a body that parses formats back to exactly itself and parses
//! again to the same value; its range is a power-of-two aligned segment with no more expired
//! leaves than leaves; signed with our key it opens (`open`, `open_for` its own segment) to
//! the same manifest; `check_object` accepts exactly the pinned bytes.

#![no_main]

#[path = "common.rs"]
mod common;

use auditledger_archiver::manifest::{self, ManifestError, SegmentManifest};
use auditledger_ledger::note::NoteError;
use libfuzzer_sys::fuzz_target;

fn sample() -> SegmentManifest {
    let object = b"segment bytes".to_vec();
    SegmentManifest {
        origin: common::ORIGIN.into(),
        start: 65_536,
        end: 131_072,
        segment_root: [5u8; 32],
        object_path: "acme/prod/segments/65536-131072.parquet".into(),
        object_blake3: *blake3::hash(&object).as_bytes(),
        object_size: object.len() as u64,
        expired_leaves: 2,
        created_at: 1_795_000_000,
    }
}

fuzz_target!(
    init: {
        common::write_seeds_if_asked(|| {
            let m = sample();
            vec![
                m.body().into_bytes(),
                m.sign(&[common::signer()]).expect("signing").into_bytes(),
            ]
        });
    },
    |data: &[u8]| {
        let keys = [common::verifier()];
        if let Ok(opened) = manifest::open(data, &keys) {
            assert_eq!(opened.manifest.body(), opened.note.text());
        }
        let Ok(text) = std::str::from_utf8(data) else {
            return;
        };
        let Ok(m) = SegmentManifest::parse_body(text) else {
            return;
        };
        assert_eq!(m.body(), text, "manifest body does not format back to itself");
        assert_eq!(SegmentManifest::parse_body(&m.body()).as_ref(), Ok(&m));
        let id = m.segment_id().expect("a parsed manifest names a valid segment");
        assert!(m.expired_leaves <= id.count());
        let note = match m.sign(&[common::signer()]) {
            Ok(note) => note,
            // Control characters a note cannot carry (open() checks the note first).
            Err(ManifestError::Note(NoteError::ControlCharacter(_))) => return,
            Err(e) => panic!("a parsed manifest cannot be signed: {e}"),
        };
        let opened = manifest::open_for(note.as_bytes(), &keys, &id).expect("own signature opens");
        assert_eq!(opened.manifest, m);
        // check_object: the pinned bytes only (here: the manifest text itself, when it pins it).
        let ok = m.check_object(data).is_ok();
        let pinned = m.object_size == data.len() as u64
            && m.object_blake3 == *blake3::hash(data).as_bytes();
        assert_eq!(ok, pinned);
    }
);
