//! Criterion benchmarks of the hot functions: hashing, leaf encoding, validation, proofs,
//! checkpoint signing and verification.

use std::hint::black_box;

use auditledger_ledger::checkpoint::{self, Checkpoint};
use auditledger_ledger::event::{encode_event, encode_leaf, validate};
use auditledger_ledger::merkle::{self, CompactRange, MemoryTree, leaf_hash};
use auditledger_ledger::note::SignerKey;
use auditledger_tests::tool_call;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

fn hashing(c: &mut Criterion) {
    let event = tool_call(1, 42, "acme", "prod");
    let leaf = encode_leaf(
        &encode_event(&event),
        1_763_700_000_000_000_000,
        "gateway-1",
    );
    let mut g = c.benchmark_group("leaf");
    g.throughput(Throughput::Elements(1));
    g.bench_function(format!("leaf_hash {} B", leaf.len()), |b| {
        b.iter(|| leaf_hash(black_box(&leaf)))
    });
    g.bench_function("validate + encode_event + encode_leaf", |b| {
        b.iter(|| {
            validate(black_box(&event), 65536).unwrap();
            encode_leaf(&encode_event(black_box(&event)), 1, "gateway-1")
        })
    });
    g.finish();
}

fn proofs(c: &mut Criterion) {
    let mut tree = MemoryTree::new();
    for i in 0..1_000_000u64 {
        tree.append(leaf_hash(&i.to_le_bytes()));
    }
    let root = merkle::root(&tree, 1_000_000).unwrap();
    let mut g = c.benchmark_group("proof (1M leaves, memory)");
    g.throughput(Throughput::Elements(1));
    let mut i = 0u64;
    g.bench_function("inclusion_proof", |b| {
        b.iter(|| {
            i = (i + 7919) % 1_000_000;
            merkle::inclusion_proof(&tree, i, 1_000_000).unwrap()
        })
    });
    let proof = merkle::inclusion_proof(&tree, 123_456, 1_000_000).unwrap();
    let lh = leaf_hash(&123_456u64.to_le_bytes());
    g.bench_function("verify_inclusion", |b| {
        b.iter(|| {
            merkle::verify_inclusion(123_456, 1_000_000, black_box(&lh), &proof, &root).unwrap()
        })
    });
    g.bench_function("consistency_proof", |b| {
        b.iter(|| merkle::consistency_proof(&tree, 333_333, 1_000_000).unwrap())
    });
    g.finish();

    let hashes: Vec<_> = (0..65_536u64)
        .map(|i| leaf_hash(&i.to_le_bytes()))
        .collect();
    let mut g = c.benchmark_group("compact range");
    g.throughput(Throughput::Elements(hashes.len() as u64));
    g.bench_function("append 65536 leaf hashes", |b| {
        b.iter(|| {
            let mut r = CompactRange::new(0);
            for h in &hashes {
                r.append(*h);
            }
            r.root().unwrap()
        })
    });
    g.finish();
}

fn checkpoints(c: &mut Criterion) {
    let signer = SignerKey::from_seed("auditledger.local", &[3u8; 32]).unwrap();
    let cp = Checkpoint {
        origin: "auditledger.local/acme/prod".into(),
        tree_size: 123_456_789,
        root_hash: [7u8; 32],
        time: Some(1_763_700_000),
        prev: Some([9u8; 32]),
        other_extensions: vec![],
    };
    let note = cp.sign(std::slice::from_ref(&signer)).unwrap();
    let verifier = signer.verifier();
    let mut g = c.benchmark_group("checkpoint");
    g.bench_function("sign", |b| {
        b.iter(|| cp.sign(std::slice::from_ref(&signer)).unwrap())
    });
    g.bench_function("open + verify", |b| {
        b.iter(|| {
            checkpoint::open(black_box(note.as_bytes()), std::slice::from_ref(&verifier)).unwrap()
        })
    });
    g.finish();
}

criterion_group!(benches, hashing, proofs, checkpoints);
criterion_main!(benches);
