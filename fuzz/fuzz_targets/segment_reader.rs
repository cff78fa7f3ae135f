//! The Parquet segment reader (archiver/src/segment/reader.rs: `SegmentReader`) on arbitrary
//! bytes and on a real segment with fuzzed byte edits.
//!
//! Input: first byte even → the rest is the segment file; odd → the rest is a list of
//! `(offset: u16 LE, xor: u8)` edits applied to a real 8-leaf segment written by
//! `write_segment`.
//!
//! Asserts: opening, `verify`, `leaf` and `leaf_hashes` return (never panic, no allocation
//! above the limit); a segment that verifies against the real root serves, for every leaf,
//! the real leaf hash, and leaf bytes (when present) that hash to it.
//!
//! The reader deliberately catches panics of the Parquet decoder (`GuardedBatches`: a damaged
//! object must fail the read, not the process). libFuzzer's panic hook would abort on those
//! before they are caught, so this target replaces the hook with the default one: panics
//! caught inside the reader are tolerated, any panic that escapes it still aborts
//! (libfuzzer-sys wraps the closure in `catch_unwind` and aborts on an escaped panic).

#![no_main]

#[path = "common.rs"]
mod common;

use std::sync::OnceLock;

use auditledger_archiver::segment::{SegmentId, SegmentReader, WriteOptions, write_segment};
use auditledger_ledger::event::{AuditEvent, EventKind, encode_event, encode_leaf};
use auditledger_ledger::merkle::{self, Hash};
use bytes::Bytes;
use libfuzzer_sys::fuzz_target;

const BITS: u8 = 3;

struct Real {
    file: Vec<u8>,
    id: SegmentId,
    hashes: Vec<Hash>,
    root: Hash,
}

fn leaf(i: u64) -> Vec<u8> {
    let event = AuditEvent {
        event_id: format!("0190a8a0-0000-7000-8000-{i:012x}"),
        event_kind: EventKind::ToolCall as i32,
        tenant_id: "acme".into(),
        environment: "prod".into(),
        tool_name: format!("tool-{}", i % 3),
        ..Default::default()
    };
    encode_leaf(
        &encode_event(&event),
        1_795_000_000_000_000_000 + i,
        "gateway:fuzz",
    )
}

fn real() -> &'static Real {
    static REAL: OnceLock<Real> = OnceLock::new();
    REAL.get_or_init(|| {
        let id = SegmentId::new(common::ORIGIN, 8, BITS).expect("segment id");
        let leaves: Vec<Vec<u8>> = (8..16).map(leaf).collect();
        let (file, summary) =
            write_segment(id.clone(), &leaves, &WriteOptions::default()).expect("write");
        Real {
            file,
            id,
            hashes: leaves.iter().map(|l| merkle::leaf_hash(l)).collect(),
            root: summary.root,
        }
    })
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("tokio runtime")
    })
}

fuzz_target!(
    init: {
        common::write_seeds_if_asked(|| {
            let mut raw = vec![0u8];
            raw.extend_from_slice(&real().file);
            vec![raw, vec![1u8, 0, 0, 0]]
        });
        std::panic::set_hook(Box::new(|info| eprintln!("{info}")));
    },
    |data: &[u8]| {
        let Some((&mode, rest)) = data.split_first() else {
            return;
        };
        let real = real();
        let file = if mode % 2 == 0 {
            rest.to_vec()
        } else {
            let mut file = real.file.clone();
            for edit in rest.chunks_exact(3).take(64) {
                let offset = usize::from(u16::from_le_bytes([edit[0], edit[1]])) % file.len();
                file[offset] ^= edit[2];
            }
            file
        };
        runtime().block_on(async {
            let Ok(reader) = SegmentReader::from_bytes(Bytes::from(file), &real.id).await else {
                return;
            };
            let verified = reader.verify(&real.root).await.is_ok();
            let _ = reader.leaf_hashes().await;
            for (i, hash) in real.hashes.iter().enumerate() {
                let index = real.id.start() + i as u64;
                match reader.leaf(index).await {
                    Ok(row) if verified => {
                        assert_eq!(row.leaf_index, index);
                        assert_eq!(&row.leaf_hash, hash, "verified segment serves a wrong hash");
                        if let Some(bytes) = &row.leaf {
                            assert_eq!(&merkle::leaf_hash(bytes), hash);
                        }
                    }
                    Ok(_) => {}
                    // Point reads of a verified segment may still fail on bytes `verify` does
                    // not read (e.g. a damaged bloom filter); they must fail, not lie.
                    Err(_) => {}
                }
            }
        });
    }
);
