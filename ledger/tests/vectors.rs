//! Reproduces the shared test vectors (`../shared/testvectors`, copied into `tests/vectors`)
//! byte for byte.

use std::path::PathBuf;

use auditledger_ledger::checkpoint::{self, Checkpoint, body_hash};
use auditledger_ledger::merkle::{self, CompactRange, Hash, MemoryTree, leaf_hash};
use auditledger_ledger::note::{SignerKey, VerifierKey};
use serde_json::Value;

/// The crate directory at run time: the CI clone and a developer checkout share one target
/// directory, so a compile-time `env!` path could name the other checkout.
fn crate_dir() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
}

fn load(name: &str) -> Value {
    let path = crate_dir().join("tests/vectors").join(name);
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

fn hash(v: &Value) -> Hash {
    hex::decode(v.as_str().unwrap())
        .unwrap()
        .try_into()
        .unwrap()
}

fn hashes(v: &Value) -> Vec<Hash> {
    v.as_array().unwrap().iter().map(hash).collect()
}

fn u(v: &Value) -> u64 {
    v.as_u64().unwrap()
}

fn tree() -> (MemoryTree, Vec<Hash>) {
    let m = load("merkle.json");
    let mut tree = MemoryTree::new();
    let mut leaf_hashes = Vec::new();
    for (leaf, expected) in m["leaves"]
        .as_array()
        .unwrap()
        .iter()
        .zip(m["leaf_hashes"].as_array().unwrap())
    {
        let h = leaf_hash(&hex::decode(leaf.as_str().unwrap()).unwrap());
        assert_eq!(h, hash(expected), "leaf hash of {leaf}");
        tree.append(h);
        leaf_hashes.push(h);
    }
    (tree, leaf_hashes)
}

#[test]
fn copies_match_the_shared_vectors() {
    let shared = crate_dir().join("../../shared/testvectors");
    if !shared.exists() {
        // CI clones only this repository; the copy under tests/vectors is then authoritative.
        return;
    }
    for name in ["merkle.json", "checkpoint.json"] {
        let ours = std::fs::read(crate_dir().join("tests/vectors").join(name)).unwrap();
        let theirs = std::fs::read(shared.join(name)).unwrap();
        assert_eq!(ours, theirs, "{name} drifted from ../shared/testvectors");
    }
}

#[test]
fn merkle_roots() {
    let m = load("merkle.json");
    let (tree, _) = tree();
    let roots = m["roots"].as_array().unwrap();
    assert_eq!(roots.len(), 34);
    for r in roots {
        assert_eq!(
            merkle::root(&tree, u(&r["tree_size"])).unwrap(),
            hash(&r["root"]),
            "root at {}",
            r["tree_size"]
        );
    }
}

#[test]
fn merkle_inclusion_proofs() {
    let m = load("merkle.json");
    let (tree, leaf_hashes) = tree();
    for case in m["inclusion"].as_array().unwrap() {
        let (index, size) = (u(&case["leaf_index"]), u(&case["tree_size"]));
        let expected = hashes(&case["path"]);
        assert_eq!(
            merkle::inclusion_proof(&tree, index, size).unwrap(),
            expected,
            "path {index}@{size}"
        );
        let root = merkle::root(&tree, size).unwrap();
        merkle::verify_inclusion(index, size, &leaf_hashes[index as usize], &expected, &root)
            .unwrap();
    }
}

#[test]
fn merkle_consistency_proofs() {
    let m = load("merkle.json");
    let (tree, _) = tree();
    for case in m["consistency"].as_array().unwrap() {
        let (first, second) = (u(&case["first"]), u(&case["second"]));
        let expected = hashes(&case["proof"]);
        assert_eq!(
            merkle::consistency_proof(&tree, first, second).unwrap(),
            expected,
            "{first}->{second}"
        );
        let (r1, r2) = (
            merkle::root(&tree, first).unwrap(),
            merkle::root(&tree, second).unwrap(),
        );
        merkle::verify_consistency(first, second, &expected, &r1, &r2).unwrap();
    }
}

#[test]
fn merkle_range_proofs() {
    let m = load("merkle.json");
    let (tree, leaf_hashes) = tree();
    for case in m["range_proofs"].as_array().unwrap() {
        let (start, end, size) = (u(&case["start"]), u(&case["end"]), u(&case["tree_size"]));
        let expected = hashes(&case["proof"]);
        assert_eq!(
            merkle::range_proof(&tree, start, end, size).unwrap(),
            expected,
            "[{start},{end})@{size}"
        );
        let mut range = CompactRange::new(start);
        for h in &leaf_hashes[start as usize..end as usize] {
            range.append(*h);
        }
        assert_eq!(
            merkle::root_from_range_proof(&range, size, &expected).unwrap(),
            merkle::root(&tree, size).unwrap()
        );
    }
}

#[test]
fn checkpoint_note_is_reproduced_byte_for_byte() {
    let c = load("checkpoint.json");
    let seed: [u8; 32] = hex::decode(c["private_key_seed_hex"].as_str().unwrap())
        .unwrap()
        .try_into()
        .unwrap();
    let signer = SignerKey::from_seed(c["key_name"].as_str().unwrap(), &seed).unwrap();
    let verifier = signer.verifier();
    assert_eq!(
        hex::encode(verifier.public_key().as_bytes()),
        c["public_key_hex"].as_str().unwrap()
    );
    assert_eq!(
        format!("{:08x}", verifier.key_id()),
        c["key_id_hex"].as_str().unwrap()
    );
    assert_eq!(verifier.to_string(), c["verifier_key"].as_str().unwrap());
    assert_eq!(
        VerifierKey::parse(c["verifier_key"].as_str().unwrap()).unwrap(),
        verifier
    );

    // The vector's root is the root of the 33 merkle.json leaves.
    let (tree, _) = tree();
    let root = hash(&c["root_hex"]);
    assert_eq!(merkle::root(&tree, 33).unwrap(), root);

    let previous = Checkpoint::parse_body(c["previous_body"].as_str().unwrap()).unwrap();
    assert_eq!(previous.body(), c["previous_body"].as_str().unwrap());
    let cp = Checkpoint {
        origin: c["origin"].as_str().unwrap().into(),
        tree_size: u(&c["tree_size"]),
        root_hash: root,
        time: Some(1_763_700_001),
        prev: Some(body_hash(c["previous_body"].as_str().unwrap())),
        other_extensions: vec![],
    };
    let note = cp.sign(std::slice::from_ref(&signer)).unwrap();
    assert_eq!(note, c["note"].as_str().unwrap());

    let opened = checkpoint::open(note.as_bytes(), std::slice::from_ref(&verifier)).unwrap();
    assert_eq!(opened.checkpoint, cp);
    assert_eq!(opened.checkpoint.prev, Some(previous.body_hash()));
}

#[test]
fn tampered_checkpoint_notes_fail() {
    let c = load("checkpoint.json");
    let verifier = VerifierKey::parse(c["verifier_key"].as_str().unwrap()).unwrap();
    let tampered = c["tampered_notes_must_fail"].as_array().unwrap();
    assert!(!tampered.is_empty());
    for note in tampered {
        let result = checkpoint::open(
            note.as_str().unwrap().as_bytes(),
            std::slice::from_ref(&verifier),
        );
        assert!(result.is_err(), "tampered note verified: {note}");
    }
}
