//! Interop with a stock signed-note implementation (the `signed_note` crate, a port of Go's
//! `golang.org/x/mod/sumdb/note`): each side verifies what the other signs.

use auditledger_ledger::checkpoint::{self, Checkpoint};
use auditledger_ledger::note::SignerKey;
use signed_note::{Note, StandardSigner, StandardVerifier, VerifierList};

fn sample() -> Checkpoint {
    Checkpoint {
        origin: "auditledger.local/acme/prod".into(),
        tree_size: 1234,
        root_hash: [0xab; 32],
        time: Some(1_763_700_000),
        prev: Some([0x11; 32]),
        other_extensions: vec![],
    }
}

#[test]
fn our_checkpoint_verifies_with_signed_note() {
    let signer = SignerKey::from_seed("auditledger.local", &[42u8; 32]).unwrap();
    let note = sample().sign(std::slice::from_ref(&signer)).unwrap();
    let verifier = StandardVerifier::new(&signer.verifier().to_string()).unwrap();
    let parsed = Note::from_bytes(note.as_bytes()).unwrap();
    let (verified, unverified) = parsed
        .verify(&VerifierList::new(vec![Box::new(verifier)]))
        .unwrap();
    assert_eq!(verified.len(), 1);
    assert!(unverified.is_empty());
    assert_eq!(parsed.text(), sample().body().as_bytes());
}

#[test]
fn signed_note_checkpoint_verifies_with_ours() {
    let ours = SignerKey::from_seed("witness.example", &[7u8; 32]).unwrap();
    // Same key in the Go note signer format, signed by the other implementation.
    let theirs = StandardSigner::new(&ours.to_private_string()).unwrap();
    let mut note = Note::new(sample().body().as_bytes(), &[]).unwrap();
    note.add_sigs(&[&theirs]).unwrap();
    let bytes = note.to_bytes();
    let opened = checkpoint::open(&bytes, &[ours.verifier()]).unwrap();
    assert_eq!(opened.checkpoint, sample());
    // And a tampered copy is refused by ours.
    let mut tampered = bytes.clone();
    let pos = tampered.iter().position(|&b| b == b'\n').unwrap() + 1;
    tampered[pos] = b'9';
    assert!(checkpoint::open(&tampered, &[ours.verifier()]).is_err());
}
