//! Export verification on real export tars (written by the archiver's `ExportWriter`, the code
//! the ledger's `Compliance.Export` uses), through the library and the real
//! `auditledger-verify export` binary: good exports of every shape verify; every byte flip in
//! every member, every dropped, duplicated or reordered member or row, and a forged leaf is
//! refused with a non-zero exit and a message naming what failed.

use std::io::Read as _;
use std::path::PathBuf;
use std::process::Command;

use auditledger_archiver::export::{ExportDescription, ExportWriter};
use auditledger_ledger::checkpoint::Checkpoint;
use auditledger_ledger::cosignature::WitnessSigner;
use auditledger_ledger::event::{AuditEvent, EventKind, encode_event, encode_leaf};
use auditledger_ledger::merkle::{self, Hash, MemoryTree};
use auditledger_ledger::note::{SignerKey, VerifierKey};
use auditledger_verifier::export::{ExportOptions, verify_export};

const ORIGIN: &str = "auditledger.test/acme/prod";

fn leaf(i: u64) -> Vec<u8> {
    let event = AuditEvent {
        event_id: format!("0190a8a0-0000-7000-8000-{i:012x}"),
        event_kind: EventKind::ToolCall as i32,
        schema_version: 1,
        tenant_id: "acme".into(),
        environment: "prod".into(),
        tool_server: "github".into(),
        tool_name: format!("tool-{}", i % 7),
        user_id: format!("user-{}", i % 13),
        ..Default::default()
    };
    encode_leaf(
        &encode_event(&event),
        1_795_000_000_000_000_000 + i,
        "gateway:test",
    )
}

/// A signed export of `[start, end)` of a `size`-leaf log, `per_file` leaves per entries file,
/// with the leaves in `expired` written without content.
struct Export {
    tar: Vec<u8>,
    key: VerifierKey,
}

fn export(size: u64, start: u64, end: u64, per_file: u64, expired: &[u64]) -> Export {
    export_cosigned(size, start, end, per_file, expired, None)
}

/// Like [`export`], with the checkpoint cosigned by `witness`.
fn export_cosigned(
    size: u64,
    start: u64,
    end: u64,
    per_file: u64,
    expired: &[u64],
    witness: Option<&WitnessSigner>,
) -> Export {
    let leaves: Vec<Vec<u8>> = (0..size).map(leaf).collect();
    let mut tree = MemoryTree::new();
    for l in &leaves {
        tree.append(merkle::leaf_hash(l));
    }
    let signer = SignerKey::generate("auditledger.test").unwrap();
    let checkpoint = Checkpoint {
        origin: ORIGIN.into(),
        tree_size: size,
        root_hash: merkle::root(&tree, size).unwrap(),
        time: Some(1_795_000_000),
        prev: None,
        other_extensions: Vec::new(),
    };
    let mut note = checkpoint.sign(std::slice::from_ref(&signer)).unwrap();
    if let Some(w) = witness {
        note = w.cosign_note(&note, 1_795_000_050).unwrap();
    }
    let proof = merkle::range_proof(&tree, start, end, size).unwrap();
    let description = ExportDescription {
        origin: ORIGIN.into(),
        tree_size: size,
        from_time: 0,
        to_time: 0,
        requester: "token:compliance-1".into(),
        justification: "SOC 2 CC7.2 evidence\nQ4".into(),
        exported_at: 1_795_000_100,
    };
    let mut writer = ExportWriter::with_entries_per_file(
        Vec::new(),
        description,
        &note,
        &proof,
        start,
        end,
        per_file,
    )
    .unwrap();
    for i in start..end {
        if expired.contains(&i) {
            writer
                .push_expired(merkle::leaf_hash(&leaves[i as usize]))
                .unwrap();
        } else {
            writer.push_leaf(&leaves[i as usize]).unwrap();
        }
    }
    Export {
        tar: writer.finish(std::slice::from_ref(&signer)).unwrap(),
        key: signer.verifier(),
    }
}

fn members(tar: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut archive = tar::Archive::new(tar);
    archive
        .entries()
        .unwrap()
        .map(|e| {
            let mut e = e.unwrap();
            let name = e.path().unwrap().to_str().unwrap().to_owned();
            let mut data = Vec::new();
            e.read_to_end(&mut data).unwrap();
            (name, data)
        })
        .collect()
}

fn tar_of(members: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for (name, data) in members {
        let mut header = tar::Header::new_ustar();
        header.set_path(name).unwrap();
        header.set_size(data.len() as u64);
        header.set_mode(0o444);
        header.set_cksum();
        builder.append(&header, data.as_slice()).unwrap();
    }
    builder.into_inner().unwrap()
}

struct TempFile(PathBuf);

impl TempFile {
    fn new(tag: &str, bytes: &[u8]) -> TempFile {
        let path = std::env::temp_dir().join(format!(
            "auditledger-export-test-{}-{tag}-{:?}.tar",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::write(&path, bytes).unwrap();
        TempFile(path)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Runs `auditledger-verify export` on `tar`; (exit 0, stdout + stderr).
fn cli(tar: &[u8], key: &VerifierKey) -> (bool, String) {
    cli_with(tar, key, &[])
}

fn cli_with(tar: &[u8], key: &VerifierKey, extra: &[&str]) -> (bool, String) {
    let file = TempFile::new("cli", tar);
    let out = Command::new(env!("CARGO_BIN_EXE_auditledger-verify"))
        .args([
            "export",
            file.0.to_str().unwrap(),
            "--key",
            &key.to_string(),
        ])
        .args(extra)
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn library(tar: &[u8], key: &VerifierKey, threads: usize) -> Result<(u64, u64, u64), String> {
    verify_export(
        tar,
        std::slice::from_ref(key),
        &ExportOptions { threads },
        &|_| {},
    )
    .map(|r| (r.leaves, r.expired_leaves, r.entries_files))
    .map_err(|e| e.to_string())
}

#[test]
fn exports_of_every_shape_verify() {
    // (tree size, start, end, leaves per file, expired leaves) -> (leaves, expired, files)
    let cases: [(u64, u64, u64, u64, &[u64]); 7] = [
        (1000, 0, 1000, 300, &[]),
        (1000, 37, 901, 100, &[40, 41, 500]),
        (1000, 999, 1000, 100, &[]),
        (1000, 5, 5, 100, &[]),
        (1, 0, 1, 100, &[]),
        (4096, 1024, 2048, 1024, &[]),
        (777, 1, 776, 1, &[2]),
    ];
    for (size, start, end, per_file, expired) in cases {
        let e = export(size, start, end, per_file, expired);
        let expected = (
            end - start,
            expired.len() as u64,
            (end - start).div_ceil(per_file),
        );
        for threads in [1, 3] {
            assert_eq!(
                library(&e.tar, &e.key, threads),
                Ok(expected),
                "size {size} [{start}, {end}) per file {per_file}, {threads} threads"
            );
        }
    }
    let e = export(1000, 37, 901, 100, &[40, 41, 500]);
    let (ok, text) = cli(&e.tar, &e.key);
    assert!(ok, "{text}");
    assert!(
        text.contains("OK: export of auditledger.test/acme/prod leaves [37, 901)")
            && text.contains("864 leaves (3 without content")
            && text.contains("9 entries files")
            && text.contains("tree size 1000")
            && text.contains("SOC 2 CC7.2 evidence\\nQ4"),
        "{text}"
    );
}

#[test]
fn every_flipped_byte_of_every_member_is_detected() {
    let e = export(1000, 37, 901, 300, &[40]);
    let original = members(&e.tar);
    assert_eq!(
        original.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
        [
            "checkpoint",
            "range-proof",
            "entries-000000.parquet",
            "entries-000001.parquet",
            "entries-000002.parquet",
            "manifest"
        ]
    );
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut checked = 0;
    for (m, (name, data)) in original.iter().enumerate() {
        // The first, the last and 20 random bytes of the member (a Parquet file's random
        // bytes land in pages, statistics, the footer…), each flipped on its own.
        let mut positions = vec![0, data.len() - 1];
        for _ in 0..20 {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            positions.push((seed >> 33) as usize % data.len());
        }
        for position in positions {
            let mut tampered = original.clone();
            tampered[m].1[position] ^= 0x01;
            let result = library(&tar_of(&tampered), &e.key, 2);
            let err = result.expect_err(&format!("{name} byte {position} flipped: verified"));
            assert!(
                err.contains(name.as_str()),
                "{name} byte {position}: the error does not name the member: {err}"
            );
            checked += 1;
        }
    }
    assert_eq!(checked, 6 * 22);
    // And through the binary, once per member.
    for (m, (name, data)) in original.iter().enumerate() {
        let mut tampered = original.clone();
        tampered[m].1[data.len() / 2] ^= 0x80;
        let (ok, text) = cli(&tar_of(&tampered), &e.key);
        assert!(
            !ok && text.contains("FAILED") && text.contains(name.as_str()),
            "{name}: {text}"
        );
    }
}

#[test]
fn dropped_duplicated_reordered_or_extra_members_are_detected() {
    let e = export(1000, 37, 901, 300, &[]);
    let original = members(&e.tar);
    let check = |what: &str, tampered: Vec<(String, Vec<u8>)>, needle: &str| {
        let err = library(&tar_of(&tampered), &e.key, 2).expect_err(what);
        assert!(err.contains(needle), "{what}: {needle:?} not in {err}");
        let (ok, text) = cli(&tar_of(&tampered), &e.key);
        assert!(!ok && text.contains(needle), "{what} (cli): {text}");
    };
    let mut t = original.clone();
    t.remove(3);
    check(
        "entries file dropped",
        t,
        "entries file number 2 where number 1 belongs",
    );
    let mut t = original.clone();
    t.swap(2, 3);
    check(
        "entries files swapped",
        t,
        "entries file number 1 where number 0 belongs",
    );
    let mut t = original.clone();
    t.insert(3, original[2].clone());
    check(
        "entries file duplicated",
        t,
        "entries file number 0 where number 1 belongs",
    );
    let mut t = original.clone();
    t.pop();
    check("manifest dropped", t, "manifest");
    let mut t = original.clone();
    t.swap(0, 1);
    check("checkpoint not first", t, "expected checkpoint first");
    let mut t = original.clone();
    t.push(("notes.txt".into(), b"added later".to_vec()));
    check(
        "member after the manifest",
        t,
        "nothing may follow manifest",
    );
    let mut t = original.clone();
    t.insert(2, ("entries-00000.parquet".into(), original[2].1.clone()));
    check(
        "badly named member",
        t,
        "expected entries-000000.parquet or manifest",
    );
    // The last entries file dropped and renumbering impossible: the manifest still lists it.
    let mut t = original.clone();
    t.remove(4);
    check(
        "last entries file dropped",
        t,
        "lists member \"entries-000002.parquet\", which is not in the export",
    );
    // Truncated in the middle of a member.
    let cut = e.tar.len() / 2;
    let err = library(&e.tar[..cut], &e.key, 2).expect_err("truncated");
    assert!(err.contains("tar") || err.contains("missing"), "{err}");
}

/// One row of an entries file: leaf index, leaf hash, leaf bytes (`None` = expired).
type Row = (u64, Hash, Option<Vec<u8>>);

/// Rewrites one entries file's rows with `edit` (all columns kept), as a forger would.
fn rewrite_rows(parquet: &[u8], edit: impl Fn(&mut Vec<Row>)) -> Vec<u8> {
    use arrow::array::{BinaryArray, FixedSizeBinaryArray, UInt64Array};
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    let reader = ParquetRecordBatchReaderBuilder::try_new(bytes::Bytes::copy_from_slice(parquet))
        .unwrap()
        .build()
        .unwrap();
    let mut rows = Vec::new();
    for batch in reader {
        let batch = batch.unwrap();
        let idx = batch.column_by_name("leaf_index").unwrap();
        let idx = idx.as_any().downcast_ref::<UInt64Array>().unwrap();
        let hash = batch.column_by_name("leaf_hash").unwrap();
        let hash = hash
            .as_any()
            .downcast_ref::<FixedSizeBinaryArray>()
            .unwrap();
        let leaf = batch.column_by_name("leaf").unwrap();
        let leaf = leaf.as_any().downcast_ref::<BinaryArray>().unwrap();
        for r in 0..batch.num_rows() {
            rows.push((
                idx.value(r),
                hash.value(r).try_into().unwrap(),
                (!arrow::array::Array::is_null(leaf, r)).then(|| leaf.value(r).to_vec()),
            ));
        }
    }
    edit(&mut rows);
    let schema = std::sync::Arc::new(arrow::datatypes::Schema::new(vec![
        arrow::datatypes::Field::new("leaf_index", arrow::datatypes::DataType::UInt64, false),
        arrow::datatypes::Field::new(
            "leaf_hash",
            arrow::datatypes::DataType::FixedSizeBinary(32),
            false,
        ),
        arrow::datatypes::Field::new("leaf", arrow::datatypes::DataType::Binary, true),
    ]));
    let batch = arrow::record_batch::RecordBatch::try_new(
        schema.clone(),
        vec![
            std::sync::Arc::new(UInt64Array::from_iter_values(rows.iter().map(|r| r.0))),
            std::sync::Arc::new(
                FixedSizeBinaryArray::try_from_iter(rows.iter().map(|r| r.1)).unwrap(),
            ),
            std::sync::Arc::new(BinaryArray::from_iter(rows.iter().map(|r| r.2.as_deref()))),
        ],
    )
    .unwrap();
    let mut out = Vec::new();
    let mut writer = parquet::arrow::ArrowWriter::try_new(&mut out, schema, None).unwrap();
    writer.write(&batch).unwrap();
    writer.close().unwrap();
    out
}

#[test]
fn forged_rows_are_named_by_leaf() {
    let e = export(1000, 37, 901, 300, &[]);
    let original = members(&e.tar);
    let check = |what: &str, edit: &dyn Fn(&mut Vec<Row>), needle: &str| {
        let mut t = original.clone();
        t[3].1 = rewrite_rows(&t[3].1, edit);
        let (ok, text) = cli(&tar_of(&t), &e.key);
        assert!(
            !ok && text.contains(needle),
            "{what}: {needle:?} not in {text}"
        );
    };
    // The rewrite itself is faithful: an unedited rewrite fails only on the member hash.
    check("no edit", &|_| {}, "entries-000001.parquet\" has BLAKE3");
    check(
        "leaf bytes changed, hash kept",
        &|rows| rows[10].2.as_mut().unwrap()[20] ^= 1,
        "entries-000001.parquet: leaf 347: leaf bytes hash to",
    );
    check(
        "leaf and hash replaced together",
        &|rows| {
            let forged = leaf(5000);
            rows[10].1 = merkle::leaf_hash(&forged);
            rows[10].2 = Some(forged);
        },
        "entries-000001.parquet\" has BLAKE3",
    );
    check(
        "row dropped",
        &|rows| {
            rows.remove(10);
        },
        "entries-000001.parquet: leaf 348: out of order: leaf 347 should come next",
    );
    check(
        "rows swapped",
        &|rows| rows.swap(10, 11),
        "entries-000001.parquet: leaf 348: out of order",
    );
    check(
        "content dropped (claims expiry)",
        &|rows| rows[10].2 = None,
        "entries-000001.parquet\" has BLAKE3",
    );
}

#[test]
fn untrusted_keys_are_refused() {
    let e = export(100, 0, 100, 50, &[]);
    let other = SignerKey::generate("auditledger.test").unwrap().verifier();
    let (ok, text) = cli(&e.tar, &other);
    assert!(
        !ok && text.contains("checkpoint") && text.contains("trusted"),
        "{text}"
    );
}

#[test]
fn witnesses_are_required_on_the_export_checkpoint() {
    let w1 = WitnessSigner::generate("witness-one.example").unwrap();
    let w2 = WitnessSigner::generate("witness-two.example").unwrap();
    let (k1, k2) = (w1.witness_key().to_string(), w2.witness_key().to_string());
    let cosigned = export_cosigned(500, 10, 490, 200, &[], Some(&w1));
    let (ok, text) = cli_with(&cosigned.tar, &cosigned.key, &["--witness", &k1]);
    assert!(ok && text.contains("1 of 1 witness(es) cosigned"), "{text}");
    let (ok, text) = cli_with(
        &cosigned.tar,
        &cosigned.key,
        &["--witness", &k1, "--witness", &k2, "--min-witnesses", "2"],
    );
    assert!(!ok && text.contains("witness"), "{text}");
    // Without cosignatures, a required witness fails the export.
    let plain = export(500, 10, 490, 200, &[]);
    let (ok, text) = cli_with(&plain.tar, &plain.key, &["--witness", &k1]);
    assert!(!ok && text.contains("witness"), "{text}");
}
