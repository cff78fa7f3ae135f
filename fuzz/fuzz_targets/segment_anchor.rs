//! Segment anchors (archiver/src/anchor.rs) on arbitrary bytes.
//!
//! Asserts: nothing panics (parse, `segment_id`, `verify` with our key, `verify_chain`); an
//! anchor that parses writes back (`to_text`) to exactly its input and parses again to the
//! same value; its segment is a power-of-two aligned range inside `tree_size`; an anchor that
//! verifies with our key has a checkpoint of its origin and size.

#![no_main]

#[path = "common.rs"]
mod common;

use auditledger_archiver::anchor::SegmentAnchor;
use auditledger_ledger::checkpoint::Checkpoint;
use auditledger_ledger::merkle::{self, MemoryTree, NodeId};
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

/// A real anchor chain: segments [0,4) and [4,8) of a 16-leaf log.
fn real_anchors() -> Vec<SegmentAnchor> {
    let mut tree = MemoryTree::new();
    for i in 0u64..16 {
        tree.append(merkle::leaf_hash(&i.to_le_bytes()));
    }
    let signer = common::signer();
    let note_at = |size: u64| {
        Checkpoint {
            origin: common::ORIGIN.into(),
            tree_size: size,
            root_hash: merkle::root(&tree, size).expect("root"),
            time: Some(1_795_000_000 + size),
            prev: None,
            other_extensions: vec![],
        }
        .sign(std::slice::from_ref(&signer))
        .expect("signing")
    };
    let anchor = |start: u64, size: u64, previous: u64| {
        let node = NodeId::new(2, start >> 2);
        SegmentAnchor {
            origin: common::ORIGIN.into(),
            start,
            end: start + 4,
            segment_root: tree.node(node).expect("segment node"),
            tree_size: size,
            previous_size: previous,
            inclusion: merkle::subtree_inclusion_proof(&tree, node, size).expect("inclusion"),
            consistency: if previous == 0 || previous == size {
                vec![]
            } else {
                merkle::consistency_proof(&tree, previous, size).expect("consistency")
            },
            checkpoint_note: note_at(size),
        }
    };
    vec![anchor(0, 5, 0), anchor(4, 16, 5)]
}

fn real() -> &'static [SegmentAnchor] {
    static REAL: OnceLock<Vec<SegmentAnchor>> = OnceLock::new();
    REAL.get_or_init(real_anchors)
}

fuzz_target!(
    init: {
        common::write_seeds_if_asked(|| real_anchors().iter().map(|a| a.to_text().into_bytes()).collect());
        // The seeds must be good anchors, or the target tests nothing deep.
        let keys = [common::verifier()];
        let first = real()[0].clone().verify(&keys).expect("seed anchor 0 verifies");
        let second = real()[1].clone().verify(&keys).expect("seed anchor 1 verifies");
        second.verify_chain(&first).expect("seed anchors chain");
    },
    |data: &[u8]| {
        let Ok(anchor) = SegmentAnchor::parse(data) else {
            return;
        };
        let text = anchor.to_text();
        assert_eq!(text.as_bytes(), data, "anchor does not write back to its input");
        assert_eq!(SegmentAnchor::parse(text.as_bytes()).as_ref(), Ok(&anchor));
        let id = anchor.segment_id().expect("a parsed anchor names a valid segment");
        assert!(id.count().is_power_of_two() && anchor.start % id.count() == 0);
        assert!(anchor.end <= anchor.tree_size && anchor.previous_size <= anchor.tree_size);
        let keys = [common::verifier()];
        if let Ok(verified) = anchor.clone().verify(&keys) {
            assert_eq!(verified.checkpoint.origin, anchor.origin);
            assert_eq!(verified.checkpoint.tree_size, anchor.tree_size);
            for other in real() {
                if let Ok(o) = other.clone().verify(&keys) {
                    let _ = verified.verify_chain(&o);
                    let _ = o.verify_chain(&verified);
                }
            }
        }
    }
);
