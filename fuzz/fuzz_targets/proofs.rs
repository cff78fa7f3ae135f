//! Merkle proof verification (ledger/src/merkle.rs) with arbitrary sizes, indexes and hash
//! lists, and with real proofs of a `MemoryTree`.
//!
//! Asserts: the verifiers never panic on any input (sizes up to 2^64−1, proofs of any length,
//! subtree nodes of any level); for a tree of the fuzzed leaves, every generated inclusion,
//! subtree-inclusion, consistency and range proof verifies against the tree's roots, and the
//! same proof with one bit flipped (in a hash, the leaf or a root) never does.

#![no_main]

#[path = "common.rs"]
mod common;

use arbitrary::Arbitrary;
use auditledger_ledger::merkle::{
    self, CompactRange, Hash, MemoryTree, NodeId, consistency_proof, inclusion_proof, range_proof,
    root, root_from_range_proof, subtree_inclusion_proof, verify_consistency, verify_inclusion,
    verify_subtree_inclusion,
};
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
struct Input {
    /// Raw calls with attacker-chosen numbers.
    a: u64,
    b: u64,
    c: u64,
    level: u8,
    proof: Vec<[u8; 32]>,
    root1: [u8; 32],
    root2: [u8; 32],
    /// The real tree: leaves, and which proof hash / bit to flip.
    leaves: u16,
    flip: u16,
    bit: u8,
}

fn flipped(proof: &[Hash], flip: u16, bit: u8) -> Option<Vec<Hash>> {
    if proof.is_empty() {
        return None;
    }
    let mut p = proof.to_vec();
    let i = usize::from(flip) % p.len();
    p[i][usize::from(bit / 8) % 32] ^= 1 << (bit % 8);
    Some(p)
}

fn flip_hash(h: &Hash, bit: u8) -> Hash {
    let mut h = *h;
    h[usize::from(bit / 8) % 32] ^= 1 << (bit % 8);
    h
}

fuzz_target!(|input: Input| {
    let Input {
        a,
        b,
        c,
        level,
        proof,
        root1,
        root2,
        leaves,
        flip,
        bit,
    } = input;

    // 1. Arbitrary numbers and hashes: answers, never panics.
    let _ = verify_inclusion(a, b, &root1, &proof, &root2);
    let _ = verify_consistency(a, b, &proof, &root1, &root2);
    let _ = verify_subtree_inclusion(NodeId::new(level, a), b, &root1, &proof, &root2);
    let _ = merkle::range_proof_len(a.min(b), a.max(b), b.max(c));
    if let Ok(range) = CompactRange::from_hashes(a.min(b), a.max(b), &proof) {
        let _ = root_from_range_proof(&range, c, &proof);
        let _ = range.root();
    }
    let mut range = CompactRange::new(a);
    for h in proof.iter().take(64) {
        if range.end() == u64::MAX {
            break;
        }
        range.append(*h);
    }
    let _ = root_from_range_proof(&range, b, &proof);

    // 2. A real tree of 1..=512 leaves.
    let n = u64::from(leaves % 512) + 1;
    let mut tree = MemoryTree::new();
    let hashes: Vec<Hash> = (0..n)
        .map(|i| merkle::leaf_hash(&i.to_le_bytes()))
        .collect();
    for h in &hashes {
        tree.append(*h);
    }
    let size = 1 + b % n;
    let tree_root = root(&tree, size).expect("root of a stored size");

    let index = a % size;
    let p = inclusion_proof(&tree, index, size).expect("inclusion proof");
    verify_inclusion(index, size, &hashes[index as usize], &p, &tree_root)
        .expect("a generated inclusion proof verifies");
    if let Some(bad) = flipped(&p, flip, bit) {
        assert!(verify_inclusion(index, size, &hashes[index as usize], &bad, &tree_root).is_err());
    }
    let bad_leaf = flip_hash(&hashes[index as usize], bit);
    assert!(verify_inclusion(index, size, &bad_leaf, &p, &tree_root).is_err());
    assert!(
        verify_inclusion(
            index,
            size,
            &hashes[index as usize],
            &p,
            &flip_hash(&tree_root, bit)
        )
        .is_err()
    );

    // Subtree inclusion of the node of `level` containing `index`, when it fits.
    let l = level % 10;
    let node = NodeId::new(l, index >> l);
    if node.end() <= size {
        let sub_root = root_of(&hashes[node.begin() as usize..node.end() as usize]);
        let sp = subtree_inclusion_proof(&tree, node, size).expect("subtree proof");
        verify_subtree_inclusion(node, size, &sub_root, &sp, &tree_root)
            .expect("a generated subtree proof verifies");
        if let Some(bad) = flipped(&sp, flip, bit) {
            assert!(verify_subtree_inclusion(node, size, &sub_root, &bad, &tree_root).is_err());
        }
        assert!(
            verify_subtree_inclusion(node, size, &flip_hash(&sub_root, bit), &sp, &tree_root)
                .is_err()
        );
    }

    let first = 1 + c % size;
    let first_root = root(&tree, first).expect("root of a smaller size");
    let cp = consistency_proof(&tree, first, size).expect("consistency proof");
    verify_consistency(first, size, &cp, &first_root, &tree_root)
        .expect("a generated consistency proof verifies");
    if let Some(bad) = flipped(&cp, flip, bit) {
        assert!(verify_consistency(first, size, &bad, &first_root, &tree_root).is_err());
    }
    assert!(
        verify_consistency(first, size, &cp, &flip_hash(&first_root, bit), &tree_root).is_err()
    );
    assert!(
        verify_consistency(first, size, &cp, &first_root, &flip_hash(&tree_root, bit)).is_err()
    );

    let (start, end) = ((a >> 16) % (size + 1), (c >> 16) % (size + 1));
    let (start, end) = (start.min(end), start.max(end));
    let rp = range_proof(&tree, start, end, size).expect("range proof");
    let mut leaves_range = CompactRange::new(start);
    for h in &hashes[start as usize..end as usize] {
        leaves_range.append(*h);
    }
    assert_eq!(
        root_from_range_proof(&leaves_range, size, &rp).expect("range proof folds"),
        tree_root
    );
    if let Some(bad) = flipped(&rp, flip, bit) {
        assert_ne!(
            root_from_range_proof(&leaves_range, size, &bad).ok(),
            Some(tree_root)
        );
    }
});

/// RFC 9162 MTH of a list of leaf hashes (a reference independent of `MemoryTree`).
fn root_of(hashes: &[Hash]) -> Hash {
    match hashes.len() {
        0 => merkle::empty_root(),
        1 => hashes[0],
        n => {
            let k = 1 << (usize::BITS - 1 - (n - 1).leading_zeros());
            merkle::node_hash(&root_of(&hashes[..k]), &root_of(&hashes[k..]))
        }
    }
}
