//! Proof files (verifier/src/proof_json.rs: the protobuf JSON of inclusion and consistency
//! proofs) on arbitrary text.
//!
//! Asserts: parsing never panics (deep nesting, huge numbers, bad base64); what parses,
//! written back as proto3 JSON (numbers as strings, bytes as base64), parses to the same value.

#![no_main]

#[path = "common.rs"]
mod common;

use auditledger_verifier::proof_json::{ConsistencyProofFile, InclusionProofFile};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use libfuzzer_sys::fuzz_target;
use serde_json::json;

fn seeds() -> Vec<Vec<u8>> {
    vec![
        br#"{"leafIndex":"42","treeSize":"100","hashes":["AAEC","AQ=="],"leaf":"aGk=","checkpoint":{"note":"x\n"},"leafHash":"AQ=="}"#.to_vec(),
        br#"{"leaf_index":7,"tree_size":8,"checkpoint":{"note":"n"}}"#.to_vec(),
        br#"{"first":"1","second":"3","hashes":["AAEC"]}"#.to_vec(),
    ]
}

fn b64_list(hashes: &[Vec<u8>]) -> Vec<String> {
    hashes.iter().map(|h| STANDARD.encode(h)).collect()
}

fuzz_target!(
    init: { common::write_seeds_if_asked(seeds); },
    |data: &[u8]| {
        let Ok(text) = std::str::from_utf8(data) else {
            return;
        };
        if let Ok(p) = InclusionProofFile::parse(text) {
            let mut v = json!({
                "leafIndex": p.leaf_index.to_string(),
                "treeSize": p.tree_size.to_string(),
                "hashes": b64_list(&p.hashes),
                "leaf": STANDARD.encode(&p.leaf),
                "checkpoint": {"note": p.checkpoint_note},
            });
            if let Some(h) = &p.leaf_hash {
                v["leafHash"] = json!(STANDARD.encode(h));
            }
            let back = InclusionProofFile::parse(&v.to_string()).expect("written proof parses");
            assert_eq!(back, p);
        }
        if let Ok(c) = ConsistencyProofFile::parse(text) {
            let v = json!({
                "first": c.first,
                "second": c.second,
                "hashes": b64_list(&c.hashes),
            });
            let back = ConsistencyProofFile::parse(&v.to_string()).expect("written proof parses");
            assert_eq!(back, c);
        }
    }
);
