//! Witness keys and `cosignature/v1` lines (ledger/src/cosignature.rs) on arbitrary bytes.
//!
//! Asserts: nothing panics; a witness key that parses prints (0x04 form) a key that parses to
//! the same witness; every signature line that parses as a cosignature converts back to the
//! identical note signature with a timestamp ≤ 2^63−1; cosigning any parseable note with our
//! witness yields a note on which that witness checks `Cosigned` at that timestamp (when the
//! input had no line of ours), and the same cosignature over changed text checks `Invalid`.

#![no_main]

#[path = "common.rs"]
mod common;

use auditledger_ledger::checkpoint::Checkpoint;
use auditledger_ledger::cosignature::{
    Cosignature, MAX_TIMESTAMP, WitnessKey, WitnessOutcome, check_witnesses,
};
use auditledger_ledger::note::Note;
use libfuzzer_sys::fuzz_target;

fn seeds() -> Vec<Vec<u8>> {
    let cp = Checkpoint {
        origin: common::ORIGIN.into(),
        tree_size: 5,
        root_hash: [1u8; 32],
        time: Some(1_795_000_000),
        prev: None,
        other_extensions: vec![],
    };
    let note = cp.sign(&[common::signer()]).expect("signing");
    let w = common::witness();
    let cosigned = w.cosign_note(&note, 1_795_000_050).expect("cosigning");
    vec![
        cosigned.into_bytes(),
        w.witness_key().to_string().into_bytes(),
        common::verifier().to_string().into_bytes(),
    ]
}

fuzz_target!(
    init: { common::write_seeds_if_asked(seeds); },
    |data: &[u8]| {
        if let Ok(text) = std::str::from_utf8(data)
            && let Ok(key) = WitnessKey::parse(text)
        {
            let printed = key.to_string();
            assert_eq!(WitnessKey::parse(&printed).as_ref(), Ok(&key));
        }
        let Ok(note) = Note::parse(data) else {
            return;
        };
        for sig in note.signatures() {
            if let Ok(c) = Cosignature::from_note_signature(sig) {
                assert!(c.timestamp <= MAX_TIMESTAMP);
                assert_eq!(&c.to_note_signature(), sig);
                assert_eq!(c.to_line(), sig.to_line());
            }
        }
        let w = common::witness();
        let wkey = w.witness_key();
        let before = check_witnesses(&note, std::slice::from_ref(&wkey));
        assert_eq!(before.len(), 1);
        let ours_absent = before[0].outcome == WitnessOutcome::Absent;
        let timestamp = u64::from(data.len() as u32) + 1_795_000_000;
        let Ok(cosigned) = w.cosign_note(&note.to_note_string(), timestamp) else {
            return;
        };
        let cosigned = Note::parse(cosigned.as_bytes()).expect("a cosigned note parses");
        assert_eq!(cosigned.text(), note.text());
        let after = check_witnesses(&cosigned, std::slice::from_ref(&wkey));
        if ours_absent {
            assert_eq!(after[0].outcome, WitnessOutcome::Cosigned { timestamp });
            // Moving the cosignature to different text must be refused.
            let other = format!("{}x\n\n{}", note.text(), cosigned.signatures().last().map(|s| s.to_line()).unwrap_or_default());
            if let Ok(moved) = Note::parse(other.as_bytes()) {
                let check = check_witnesses(&moved, std::slice::from_ref(&wkey));
                assert!(matches!(check[0].outcome, WitnessOutcome::Invalid { .. }), "{:?}", check[0].outcome);
            }
        }
    }
);
