//! Segment files: readable by other Parquet readers, verified against their root, every kind
//! of damage caught with an error naming the segment and the leaf, expiry keeping every hash.

mod common;

use auditledger_archiver::segment::{
    LeafProblem, SegmentError, SegmentId, SegmentReader, SegmentTree, SegmentWriter, WriteOptions,
    column, metadata_key, rewrite_expired,
};
use auditledger_ledger::event::decode_leaf;
use auditledger_ledger::merkle::{self, MemoryTree, NodeId, leaf_hash};
use bytes::Bytes;
use futures_util::TryStreamExt;
use parquet::basic::Compression;
use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::record::{Field, RowAccessor};

use common::{ORIGIN, RawRow, segment, segment_with, tamper_rows, with_metadata};

#[test]
fn generic_parquet_reader_sees_every_column() {
    let (id, leaves, file, summary) = segment(256, 8);
    let reader = SerializedFileReader::new(file.clone()).unwrap();
    let metadata = reader.metadata();

    let kv: std::collections::BTreeMap<String, String> = metadata
        .file_metadata()
        .key_value_metadata()
        .unwrap()
        .iter()
        .map(|kv| (kv.key.clone(), kv.value.clone().unwrap()))
        .collect();
    assert_eq!(kv[metadata_key::FORMAT], "auditledger-segment");
    assert_eq!(kv[metadata_key::FORMAT_VERSION], "1");
    assert_eq!(kv[metadata_key::ORIGIN], ORIGIN);
    assert_eq!(kv[metadata_key::START], "256");
    assert_eq!(kv[metadata_key::COUNT], "256");
    assert_eq!(kv[metadata_key::SEGMENT_ROOT], hex::encode(summary.root));
    assert_eq!(kv[metadata_key::EXPIRED_LEAVES], "0");

    let group = metadata.row_group(0);
    assert_eq!(
        group.sorting_columns().unwrap()[0].column_idx,
        0,
        "sorted by leaf_index"
    );
    for chunk in group.columns() {
        assert!(
            matches!(chunk.compression(), Compression::ZSTD(_)),
            "{}",
            chunk.column_path()
        );
        let name = chunk.column_path().string();
        assert_eq!(
            chunk.bloom_filter_offset().is_some(),
            column::BLOOM.contains(&name.as_str()),
            "bloom filter on {name}"
        );
    }

    let names: Vec<String> = metadata
        .file_metadata()
        .schema_descr()
        .columns()
        .iter()
        .map(|c| c.name().to_owned())
        .collect();
    let mut expected = vec![
        column::LEAF_INDEX,
        column::LEAF_HASH,
        column::LEAF,
        column::LOGGED_AT,
        column::OCCURRED_AT,
    ];
    expected.extend(column::STRINGS);
    assert_eq!(names, expected);

    let mut count = 0;
    for (i, row) in reader.get_row_iter(None).unwrap().enumerate() {
        let row = row.unwrap();
        let leaf = &leaves[i];
        let record = decode_leaf(leaf).unwrap();
        let event = record.event.as_ref().unwrap();
        assert_eq!(row.get_ulong(0).unwrap(), id.start() + i as u64);
        assert_eq!(row.get_bytes(1).unwrap().data(), leaf_hash(leaf));
        assert_eq!(row.get_bytes(2).unwrap().data(), leaf.as_slice());
        assert_eq!(row.get_ulong(3).unwrap(), record.logged_at);
        assert_eq!(row.get_ulong(4).unwrap(), event.occurred_at);
        let strings: Vec<(&String, &Field)> = row.get_column_iter().skip(5).collect();
        let text = |name: &str| -> String {
            match strings.iter().find(|(n, _)| n.as_str() == name).unwrap().1 {
                Field::Str(s) => s.clone(),
                other => panic!("{name}: {other:?}"),
            }
        };
        assert_eq!(text(column::EVENT_KIND), "TOOL_CALL");
        assert_eq!(text(column::EVENT_ID), event.event_id);
        assert_eq!(text(column::USER_ID), event.user_id);
        assert_eq!(text(column::AGENT_ID), event.agent_id);
        assert_eq!(text(column::TOOL_SERVER), event.tool_server);
        assert_eq!(text(column::TOOL_NAME), event.tool_name);
        assert_eq!(text(column::SESSION_ID), event.session_id);
        assert_eq!(text(column::CORRELATION_ID), event.correlation_id);
        assert_eq!(text(column::TRACE_ID), event.trace_id);
        assert_eq!(text(column::DECISION), "ALLOW");
        assert_eq!(text(column::DATA_CLASSIFICATION), "internal");
        count += 1;
    }
    assert_eq!(count, 256);
}

#[tokio::test]
async fn written_segment_verifies_and_reads_back() {
    let (id, leaves, file, summary) = segment(0, 8);
    let mut tree = MemoryTree::new();
    for leaf in &leaves {
        tree.append(leaf_hash(leaf));
    }
    assert_eq!(Some(summary.root), tree.node(id.node()));
    assert_eq!(summary.expired_leaves, 0);
    let logged_at = |leaf: &Vec<u8>| decode_leaf(leaf).unwrap().logged_at;
    assert_eq!(summary.oldest_logged_at, Some(logged_at(&leaves[0])));
    assert_eq!(summary.newest_logged_at, Some(logged_at(&leaves[255])));

    let reader = SegmentReader::from_bytes(file.clone(), &id).await.unwrap();
    assert_eq!(reader.info().root, summary.root);
    assert_eq!(reader.info().file_size, file.len() as u64);
    let verified = reader.verify(&summary.root).await.unwrap();
    assert_eq!(verified.root, summary.root);
    assert_eq!(verified.expired_leaves, 0);

    let rows: Vec<_> = reader.rows().unwrap().try_collect().await.unwrap();
    assert_eq!(rows.len(), leaves.len());
    for (i, row) in rows.iter().enumerate() {
        assert_eq!(row.leaf_index, i as u64);
        assert_eq!(row.leaf.as_deref(), Some(leaves[i].as_slice()));
        assert_eq!(row.leaf_hash, leaf_hash(&leaves[i]));
    }
    for leaf_index in [0, 1, 77, 255] {
        let row = reader.leaf(leaf_index).await.unwrap();
        assert_eq!(row, rows[leaf_index as usize]);
    }
    assert!(matches!(
        reader.leaf(256).await,
        Err(SegmentError::OutOfRange {
            leaf_index: 256,
            ..
        })
    ));
}

#[tokio::test]
async fn several_row_groups_and_pages() {
    let options = WriteOptions {
        row_group_rows: 1000,
        data_page_bytes: 64 * 1024,
        ..WriteOptions::default()
    };
    let (id, leaves, file, summary) = segment_with(4096, 12, &options);
    let parquet = SerializedFileReader::new(file.clone()).unwrap();
    assert_eq!(parquet.metadata().num_row_groups(), 5);

    let reader = SegmentReader::from_bytes(file, &id).await.unwrap();
    reader.verify(&summary.root).await.unwrap();
    for leaf_index in [4096, 4999, 5000, 5001, 6543, 8191] {
        let row = reader.leaf(leaf_index).await.unwrap();
        assert_eq!(row.leaf_index, leaf_index);
        assert_eq!(
            row.leaf.as_deref(),
            Some(leaves[(leaf_index - 4096) as usize].as_slice())
        );
    }

    // The segment's subtree answers for exactly the log's nodes inside the segment.
    let mut log = MemoryTree::new();
    for leaf in common::events::realistic_leaves(7, 0, 4096)
        .iter()
        .chain(&leaves)
    {
        log.append(leaf_hash(leaf));
    }
    let hashes = reader.leaf_hashes().await.unwrap();
    assert_eq!(hashes.len(), 4096);
    let tree = reader.tree().await.unwrap();
    assert_eq!(tree.root(), summary.root);
    assert_eq!(Some(tree.root()), log.node(NodeId::new(12, 1)));
    for node in [
        NodeId::new(0, 4096),
        NodeId::new(0, 8191),
        NodeId::new(3, 700),
        NodeId::new(11, 3),
        NodeId::new(12, 1),
    ] {
        assert_eq!(tree.node(node), log.node(node), "{node:?}");
    }
    assert_eq!(tree.node(NodeId::new(0, 4095)), None);
    assert_eq!(tree.node(NodeId::new(13, 0)), None);
    // Proofs inside the segment: an inclusion proof of a leaf in the segment-sized tree
    // [4096, 8192) starts with the same hashes as the log's.
    let proof = merkle::inclusion_proof(&log, 5000, 8192).unwrap();
    let local = SegmentTree::new(SegmentId::new(ORIGIN, 0, 12).unwrap(), &hashes).unwrap();
    let local_proof = merkle::inclusion_proof(&local, 5000 - 4096, 4096).unwrap();
    assert_eq!(proof[..12], local_proof[..]);
}

/// Opens a tampered file and verifies it against the original root; returns the error.
async fn verify_error(id: &SegmentId, file: Bytes, root: &merkle::Hash) -> SegmentError {
    match SegmentReader::from_bytes(file, id).await {
        Err(e) => e,
        Ok(reader) => reader.verify(root).await.unwrap_err(),
    }
}

#[tokio::test]
async fn flipped_byte_in_a_leaf() {
    let (id, _, file, summary) = segment(65536, 8);
    let tampered = tamper_rows(&file, |rows| {
        let leaf = rows[65].leaf.as_mut().unwrap();
        leaf[100] ^= 0x01;
    });
    let err = verify_error(&id, tampered, &summary.root).await;
    assert!(
        matches!(
            &err,
            SegmentError::Leaf {
                leaf_index: 65601,
                problem: LeafProblem::HashMismatch { .. },
                ..
            }
        ),
        "{err}"
    );
    let message = err.to_string();
    assert!(
        message.starts_with(
            "segment auditledger.local/acme/prod [65536,65792): leaf 65601: leaf_hash does not match leaf bytes"
        ),
        "{message}"
    );
}

#[tokio::test]
async fn wrong_leaf_hash() {
    let (id, _, file, summary) = segment(0, 8);
    let tampered = tamper_rows(&file, |rows| rows[3].leaf_hash[0] ^= 0x80);
    let err = verify_error(&id, tampered, &summary.root).await;
    assert!(
        matches!(
            &err,
            SegmentError::Leaf {
                leaf_index: 3,
                problem: LeafProblem::HashMismatch { .. },
                ..
            }
        ),
        "{err}"
    );
}

#[tokio::test]
async fn missing_row() {
    let (id, _, file, summary) = segment(0, 8);
    let tampered = tamper_rows(&file, |rows| {
        rows.remove(10);
    });
    let err = verify_error(&id, tampered, &summary.root).await;
    assert!(
        matches!(
            &err,
            SegmentError::Leaf {
                leaf_index: 10,
                problem: LeafProblem::Missing { next_found: 11 },
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("leaf 10: no row"), "{err}");

    let tampered = tamper_rows(&file, |rows| {
        rows.pop();
    });
    let err = verify_error(&id, tampered, &summary.root).await;
    assert!(
        matches!(
            &err,
            SegmentError::Incomplete {
                rows: 255,
                first_missing: 255,
                ..
            }
        ),
        "{err}"
    );
}

#[tokio::test]
async fn reordered_or_duplicated_rows() {
    let (id, _, file, summary) = segment(0, 8);
    let tampered = tamper_rows(&file, |rows| rows.swap(20, 21));
    let err = verify_error(&id, tampered, &summary.root).await;
    assert!(
        matches!(
            &err,
            SegmentError::Leaf {
                leaf_index: 20,
                problem: LeafProblem::Missing { next_found: 21 },
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("out of order"), "{err}");

    // Rows in order but renumbered so they look contiguous: the hashes now sit under the
    // wrong indexes, and the root gives it away.
    let tampered = tamper_rows(&file, |rows| {
        rows.swap(20, 21);
        rows[20].leaf_index = 20;
        rows[21].leaf_index = 21;
    });
    let err = verify_error(&id, tampered, &summary.root).await;
    assert!(matches!(err, SegmentError::RootMismatch { .. }), "{err}");

    let tampered = tamper_rows(&file, |rows| {
        let copy: RawRow = rows[30].clone();
        rows.insert(31, copy);
        rows.pop();
    });
    let err = verify_error(&id, tampered, &summary.root).await;
    assert!(
        matches!(
            &err,
            SegmentError::Leaf {
                leaf_index: 31,
                problem: LeafProblem::OutOfOrder { found: 30 },
                ..
            }
        ),
        "{err}"
    );
}

#[tokio::test]
async fn wrong_expected_root_and_metadata() {
    let (id, _, file, summary) = segment(0, 8);
    let reader = SegmentReader::from_bytes(file.clone(), &id).await.unwrap();
    let mut wrong = summary.root;
    wrong[31] ^= 1;
    let err = reader.verify(&wrong).await.unwrap_err();
    assert!(matches!(err, SegmentError::RootMismatch { .. }), "{err}");
    assert!(
        err.to_string().contains(&hex::encode(wrong)) && err.to_string().contains("[0,256)"),
        "{err}"
    );

    // The rows are right but the file claims another root.
    let lying = with_metadata(&file, metadata_key::SEGMENT_ROOT, &hex::encode(wrong));
    let err = verify_error(&id, lying, &summary.root).await;
    assert!(
        matches!(
            err,
            SegmentError::Metadata {
                key: metadata_key::SEGMENT_ROOT,
                ..
            }
        ),
        "{err}"
    );

    // A file of another segment or log is refused on open.
    let other = SegmentId::new(ORIGIN, 256, 8).unwrap();
    let err = SegmentReader::from_bytes(file.clone(), &other)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            SegmentError::Metadata {
                key: metadata_key::START,
                ..
            }
        ),
        "{err}"
    );
    let other = SegmentId::new("auditledger.local/acme/dev", 0, 8).unwrap();
    let err = SegmentReader::from_bytes(file.clone(), &other)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("auditledger.origin"), "{err}");
    let bigger = SegmentId::new(ORIGIN, 0, 9).unwrap();
    let err = SegmentReader::from_bytes(file.clone(), &bigger)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("auditledger.count"), "{err}");
    let future = with_metadata(&file, metadata_key::FORMAT_VERSION, "2");
    let err = SegmentReader::from_bytes(future, &id).await.unwrap_err();
    assert!(
        err.to_string().contains("version 2 is not supported"),
        "{err}"
    );
}

#[tokio::test]
async fn truncated_or_damaged_file() {
    let (id, _, file, summary) = segment(0, 8);
    for cut in [file.len() - 1, file.len() / 2, 8, 0] {
        let err = verify_error(&id, file.slice(..cut), &summary.root).await;
        assert!(
            matches!(err, SegmentError::Parquet { .. }),
            "cut at {cut}: {err}"
        );
        assert!(
            err.to_string().starts_with(
                "segment auditledger.local/acme/prod [0,256): not a readable Parquet file"
            ),
            "{err}"
        );
    }

    // A flipped bit inside the compressed `leaf` column: zstd or the leaf hash catches it.
    let parquet = SerializedFileReader::new(file.clone()).unwrap();
    let chunk = parquet
        .metadata()
        .row_group(0)
        .columns()
        .iter()
        .find(|c| c.column_path().string() == column::LEAF)
        .unwrap()
        .clone();
    let (offset, length) = chunk.byte_range();
    for at in [
        offset + length / 3,
        offset + length / 2,
        offset + length - 40,
    ] {
        let mut damaged = file.to_vec();
        damaged[at as usize] ^= 0x10;
        let err = verify_error(&id, Bytes::from(damaged), &summary.root).await;
        assert!(
            err.to_string()
                .starts_with("segment auditledger.local/acme/prod [0,256)"),
            "{err}"
        );
    }
}

#[tokio::test]
async fn expiry_keeps_every_hash_and_the_root() {
    let (id, leaves, file, summary) = segment(512, 8);
    let reader = SegmentReader::from_bytes(file.clone(), &id).await.unwrap();
    let (expired, partial) =
        rewrite_expired(&reader, Vec::new(), &WriteOptions::default(), |candidate| {
            assert_eq!(
                candidate.record.logged_at,
                decode_leaf(&leaves[(candidate.leaf_index - 512) as usize])
                    .unwrap()
                    .logged_at
            );
            candidate.leaf_index % 3 == 0
        })
        .await
        .unwrap();
    assert_eq!(partial.root, summary.root);
    let expected_expired = (512..768).filter(|i| i % 3 == 0).count() as u64;
    assert_eq!(partial.expired_leaves, expected_expired);

    let expired = Bytes::from(expired);
    let reader = SegmentReader::from_bytes(expired.clone(), &id)
        .await
        .unwrap();
    let verified = reader.verify(&summary.root).await.unwrap();
    assert_eq!(verified.expired_leaves, expected_expired);
    assert_eq!(
        reader.leaf_hashes().await.unwrap(),
        leaves.iter().map(|l| leaf_hash(l)).collect::<Vec<_>>()
    );
    let gone = reader.leaf(513).await.unwrap();
    assert_eq!(gone.leaf, None);
    assert_eq!(gone.leaf_hash, leaf_hash(&leaves[1]));
    let kept = reader.leaf(514).await.unwrap();
    assert_eq!(kept.leaf.as_deref(), Some(leaves[2].as_slice()));

    // Expired rows keep index, hash and logged_at; every content column is null.
    let parquet = SerializedFileReader::new(expired.clone()).unwrap();
    let row = parquet.get_row_iter(None).unwrap().nth(1).unwrap().unwrap();
    assert_eq!(row.get_ulong(0).unwrap(), 513);
    assert_eq!(
        row.get_ulong(3).unwrap(),
        decode_leaf(&leaves[1]).unwrap().logged_at
    );
    for i in [2, 4, 5, 6, 7, 8, 15] {
        assert!(row.is_null(i).unwrap(), "column {i} of an expired row");
    }

    // Expiring the rest: still the same root; already expired rows stay expired.
    let (all, summary_all) =
        rewrite_expired(&reader, Vec::new(), &WriteOptions::default(), |_| true)
            .await
            .unwrap();
    assert_eq!(summary_all.root, summary.root);
    assert_eq!(summary_all.expired_leaves, 256);
    assert_eq!(summary_all.oldest_logged_at, summary.oldest_logged_at);
    assert_eq!(summary_all.newest_logged_at, summary.newest_logged_at);
    let reader = SegmentReader::from_bytes(Bytes::from(all), &id)
        .await
        .unwrap();
    assert_eq!(
        reader.verify(&summary.root).await.unwrap().expired_leaves,
        256
    );
    assert!(
        reader
            .rows()
            .unwrap()
            .try_collect::<Vec<_>>()
            .await
            .unwrap()
            .iter()
            .all(|r| r.leaf.is_none())
    );

    // The expired count in the metadata is checked too.
    let lying = with_metadata(&expired, metadata_key::EXPIRED_LEAVES, "0");
    let err = verify_error(&id, lying, &summary.root).await;
    assert!(
        matches!(err, SegmentError::ExpiredCountMismatch { .. }),
        "{err}"
    );
}

#[tokio::test]
async fn rewrite_refuses_a_damaged_source() {
    let (id, _, file, _) = segment(0, 8);
    let tampered = tamper_rows(&file, |rows| rows[9].leaf.as_mut().unwrap()[0] ^= 4);
    let reader = SegmentReader::from_bytes(tampered, &id).await.unwrap();
    let err = rewrite_expired(&reader, Vec::new(), &WriteOptions::default(), |_| false)
        .await
        .unwrap_err();
    assert!(
        matches!(err, SegmentError::Leaf { leaf_index: 9, .. }),
        "{err}"
    );
}

#[test]
fn writer_refuses_bad_input() {
    let id = SegmentId::new(ORIGIN, 0, 2).unwrap();
    let leaves = common::events::realistic_leaves(1, 0, 5);

    let mut writer = SegmentWriter::new(Vec::new(), id.clone(), &WriteOptions::default()).unwrap();
    for leaf in &leaves[..4] {
        writer.push_leaf(leaf).unwrap();
    }
    let err = writer.push_leaf(&leaves[4]).unwrap_err();
    assert!(matches!(err, SegmentError::Full { count: 4, .. }), "{err}");

    let mut writer = SegmentWriter::new(Vec::new(), id.clone(), &WriteOptions::default()).unwrap();
    writer.push_leaf(&leaves[0]).unwrap();
    let err = writer.push_leaf(b"\xff\xff not a leaf").unwrap_err();
    assert!(
        matches!(
            err,
            SegmentError::Leaf {
                leaf_index: 1,
                problem: LeafProblem::Decode(_),
                ..
            }
        ),
        "{err}"
    );
    let err = writer.finish().unwrap_err();
    assert!(
        matches!(
            err,
            SegmentError::Incomplete {
                rows: 1,
                first_missing: 1,
                ..
            }
        ),
        "{err}"
    );

    for (start, bits, needle) in [
        (3, 2, "not a multiple"),
        (0, 33, "larger than"),
        (u64::MAX - 255, 8, "overflows"),
    ] {
        let err = SegmentId::new(ORIGIN, start, bits).unwrap_err();
        assert!(err.to_string().contains(needle), "{err}");
    }
    assert!(SegmentId::new("has space", 0, 8).is_err());
    assert!(SegmentId::from_range(ORIGIN, 0, 3).is_err());
    assert_eq!(
        SegmentId::from_range(ORIGIN, 256, 512).unwrap(),
        SegmentId::new(ORIGIN, 256, 8).unwrap()
    );
    let bad_level = WriteOptions {
        leaf_zstd_level: Some(99),
        ..WriteOptions::default()
    };
    assert!(SegmentWriter::new(Vec::new(), id, &bad_level).is_err());
}

/// DESIGN §8: Parquet ≤ 1.25× the zstd-19 floor of the leaves plus their hashes, from 2^8
/// leaves up (`benches/src/bin/segment_size.rs` measures up to 2^16).
#[test]
fn size_within_the_design_target() {
    for bits in [8, 10, 12] {
        let (_, leaves, file, _) = segment(0, bits);
        let mut concatenated = Vec::new();
        for leaf in &leaves {
            concatenated.extend_from_slice(leaf);
            concatenated.extend_from_slice(&leaf_hash(leaf));
        }
        let floor = zstd::bulk::compress(&concatenated, 19).unwrap().len();
        let ratio = file.len() as f64 / floor as f64;
        assert!(ratio <= 1.25, "2^{bits} leaves: {ratio:.3} × the floor");
    }
}
