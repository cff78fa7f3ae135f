//! C2SP signed notes, verifier keys and checkpoint bodies on arbitrary bytes.
//!
//! Asserts: nothing panics; a note that parses re-serialises to exactly its input; a verifier
//! key that parses prints a key that parses to the same key (and equals the input up to the
//! key ID's hex case and surrounding whitespace); a checkpoint body that parses formats back
//! to exactly itself, so `body_hash` of the parsed body is the hash of the signed text; a
//! parsed body signed with our key opens to the same checkpoint, and a note forged under our
//! key name never opens.

#![no_main]

#[path = "common.rs"]
mod common;

use auditledger_ledger::checkpoint::{self, Checkpoint, CheckpointError};
use auditledger_ledger::note::{Note, NoteError, VerifierKey};
use libfuzzer_sys::fuzz_target;

fn seeds() -> Vec<Vec<u8>> {
    let cp = Checkpoint {
        origin: common::ORIGIN.into(),
        tree_size: 12,
        root_hash: [3u8; 32],
        time: Some(1_795_000_000),
        prev: Some([4u8; 32]),
        other_extensions: vec!["operator note".into()],
    };
    let note = cp.sign(&[common::signer()]).expect("signing");
    let cosigned = common::witness()
        .cosign_note(&note, 1_795_000_050)
        .expect("cosigning");
    vec![
        note.into_bytes(),
        cosigned.into_bytes(),
        cp.body().into_bytes(),
        common::verifier().to_string().into_bytes(),
    ]
}

fuzz_target!(
    init: { common::write_seeds_if_asked(seeds); },
    |data: &[u8]| {
        let keys = [common::verifier()];
        if let Ok(note) = Note::parse(data) {
            assert_eq!(note.to_note_string().as_bytes(), data, "note does not round-trip");
            assert!(note.text().ends_with('\n'));
            assert_eq!(Note::parse(note.to_note_string().as_bytes()).as_ref(), Ok(&note));
            if let Ok(verified) = checkpoint::open(data, &keys) {
                // Only notes the fixed key really signed open: the corpus seeds.
                assert_eq!(verified.signed_by, keys.to_vec());
                assert_eq!(verified.checkpoint.body(), note.text());
            }
        }
        let Ok(text) = std::str::from_utf8(data) else {
            return;
        };
        if let Ok(key) = VerifierKey::parse(text) {
            let printed = key.to_string();
            assert_eq!(VerifierKey::parse(&printed).as_ref(), Ok(&key));
            assert_eq!(printed.to_ascii_lowercase(), text.trim().to_ascii_lowercase());
        }
        if let Ok(cp) = Checkpoint::parse_body(text) {
            assert_eq!(cp.body(), text, "checkpoint body does not format back to itself");
            assert_eq!(cp.body_hash(), checkpoint::body_hash(text));
            // A body parsed on its own may hold control characters a note cannot carry
            // (open() checks the note first); anything else must be signable.
            let signed = match cp.sign(&[common::signer()]) {
                Ok(signed) => signed,
                Err(CheckpointError::Note(NoteError::ControlCharacter(_))) => return,
                Err(e) => panic!("a parsed body cannot be signed: {e}"),
            };
            let opened = checkpoint::open(signed.as_bytes(), &keys).expect("own signature opens");
            assert_eq!(opened.checkpoint, cp);
            // A signature line under our key name and ID over other bytes must not verify.
            let forged = format!(
                "{text}\n— {} {}\n",
                common::LOG_KEY_NAME,
                forged_signature(keys[0].key_id(), data)
            );
            assert!(checkpoint::open(forged.as_bytes(), &keys).is_err());
        }
    }
);

/// Base64 of our key ID followed by 64 bytes derived from the input (not a valid signature).
fn forged_signature(key_id: u32, data: &[u8]) -> String {
    use base64::Engine as _;
    let mut raw = key_id.to_be_bytes().to_vec();
    raw.extend((0..64).map(|i| data.get(i).copied().unwrap_or(i as u8)));
    base64::engine::general_purpose::STANDARD.encode(raw)
}
