//! Verifying a retention export (DESIGN §7) without trusting the ledger that produced it.
//!
//! One sequential pass over the tar (any size, bounded memory): members must come in the order
//! the ledger writes them — `checkpoint`, `range-proof`, `entries-000000.parquet`, …, `manifest`
//! — and each is hashed as it is read. Entry files are checked on worker threads while the next
//! ones are read: every row's `leaf_index` follows the previous one, every present leaf hashes to
//! its `leaf_hash`, and the leaf hashes fold into a compact range. At the end the ranges must
//! join into exactly `[start, end)`, the range proof must rebuild the checkpoint's root from them,
//! both signatures must verify, and the manifest must list every member with its BLAKE3.

use std::collections::BTreeMap;
use std::io::Read;
use std::sync::Mutex;
use std::sync::mpsc::sync_channel;

use arrow::array::{Array, BinaryArray, FixedSizeBinaryArray, UInt64Array};
use auditledger_ledger::checkpoint::{self, VerifiedCheckpoint};
use auditledger_ledger::export::{
    self as format, CHECKPOINT_MEMBER, ExportManifest, MANIFEST_MEMBER, RANGE_PROOF_MEMBER,
    VerifiedExportManifest,
};
use auditledger_ledger::leaf_hashes::leaf_hashes;
use auditledger_ledger::merkle::{self, CompactRange, HASH_LEN, Hash};
use auditledger_ledger::note::VerifierKey;
use bytes::Bytes;
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

/// Largest member accepted: an entries file of 32 768 leaves stays far below this even with
/// large events; a bigger member is a malformed or hostile export.
pub const MAX_MEMBER_BYTES: u64 = 1 << 30;

/// Why an export failed verification. Every message names the member and, for rows, the leaf.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ExportError {
    #[error("reading the tar: {0}")]
    Tar(#[source] std::io::Error),
    #[error("member {index} ({name:?}): {reason}")]
    Member {
        index: usize,
        name: String,
        reason: String,
    },
    #[error("{member}: {reason}")]
    Entries { member: String, reason: String },
    #[error("{member}: leaf {leaf_index}: {reason}")]
    Leaf {
        member: String,
        leaf_index: u64,
        reason: String,
    },
    #[error("checkpoint: {0}")]
    Checkpoint(#[from] checkpoint::CheckpointError),
    #[error("manifest: {0}")]
    Manifest(String),
    #[error("range: {0}")]
    Range(String),
    #[error("root: {0}")]
    Root(String),
}

/// What a verified export holds.
#[derive(Clone, Debug)]
pub struct ExportReport {
    pub manifest: ExportManifest,
    pub checkpoint: VerifiedCheckpoint,
    pub manifest_signed_by: Vec<VerifierKey>,
    /// Leaves checked, and of those without content (hash only).
    pub leaves: u64,
    pub expired_leaves: u64,
    pub entries_files: u64,
}

/// Options of [`verify_export`].
#[derive(Clone, Debug, Default)]
pub struct ExportOptions {
    /// Worker threads for entry files; 0 = one per core.
    pub threads: usize,
}

/// Most bytes reserved up front for a member: its size comes from an unauthenticated tar
/// header, so a 512-byte hostile header must not allocate a gigabyte; the buffer grows as
/// the member's bytes actually arrive.
const MAX_PREALLOCATION: u64 = 1 << 20;

fn initial_capacity(header_size: u64) -> usize {
    header_size.min(MAX_PREALLOCATION) as usize
}

/// What one entries file proved.
struct EntriesResult {
    range: CompactRange,
    expired: u64,
}

/// The expected next member, by position.
enum Expect {
    Checkpoint,
    RangeProof,
    EntriesOrManifest,
    Nothing,
}

/// Verifies the export read from `tar` with the trusted `keys` (any one suffices for each
/// signature). `progress` is called with the number of bytes of each member once it is read.
pub fn verify_export<R: Read>(
    tar: R,
    keys: &[VerifierKey],
    options: &ExportOptions,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<ExportReport, ExportError> {
    let threads = if options.threads == 0 {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    } else {
        options.threads
    };
    let results: Mutex<BTreeMap<u64, Result<EntriesResult, ExportError>>> =
        Mutex::new(BTreeMap::new());
    // Files waiting for a worker; bounds memory to ~2 files per thread.
    let (work_tx, work_rx) = sync_channel::<(u64, String, Bytes)>(threads);
    let work_rx = Mutex::new(work_rx);

    let read = std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| {
                loop {
                    let next = work_rx.lock().unwrap_or_else(|e| e.into_inner()).recv();
                    let Ok((number, name, data)) = next else {
                        return;
                    };
                    // A decoder bug on hostile bytes must fail this export, not the process.
                    let result = std::panic::catch_unwind(|| verify_entries_file(&name, data))
                        .unwrap_or_else(|_| {
                            Err(ExportError::Entries {
                                member: name.clone(),
                                reason: "the Parquet decoder crashed on this file".into(),
                            })
                        });
                    results
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(number, result);
                }
            });
        }
        let read = read_members(tar, keys, progress, |number, name, data| {
            work_tx
                .send((number, name, data))
                .map_err(|_| ExportError::Entries {
                    member: format::entries_member(number),
                    reason: "verifier workers stopped".into(),
                })
        });
        drop(work_tx);
        read
    })?;

    let results = results.into_inner().unwrap_or_else(|e| e.into_inner());
    finish(read, results)
}

/// What the sequential pass over the tar collected.
struct Members {
    checkpoint: VerifiedCheckpoint,
    range_proof: Vec<Hash>,
    manifest: VerifiedExportManifest,
    /// `(name, BLAKE3)` of every member but the manifest, in tar order.
    hashes: Vec<(String, Hash)>,
    entries_files: u64,
}

fn read_members<R: Read>(
    tar: R,
    keys: &[VerifierKey],
    progress: &(dyn Fn(u64) + Sync),
    mut entries: impl FnMut(u64, String, Bytes) -> Result<(), ExportError>,
) -> Result<Members, ExportError> {
    let mut archive = tar::Archive::new(tar);
    let mut expect = Expect::Checkpoint;
    let mut checkpoint = None;
    let mut range_proof = None;
    let mut manifest = None;
    let mut hashes = Vec::new();
    let mut entries_files = 0u64;
    for (index, member) in archive.entries().map_err(ExportError::Tar)?.enumerate() {
        let mut member = member.map_err(ExportError::Tar)?;
        let name = String::from_utf8_lossy(&member.path_bytes()).into_owned();
        let fail = |reason: String| ExportError::Member {
            index,
            name: name.clone(),
            reason,
        };
        if member.header().entry_type() != tar::EntryType::Regular {
            return Err(fail(format!(
                "is a {:?}, not a regular file",
                member.header().entry_type()
            )));
        }
        let size = member.size();
        if size > MAX_MEMBER_BYTES {
            return Err(fail(format!(
                "{size} bytes, more than the {MAX_MEMBER_BYTES}-byte limit"
            )));
        }
        let mut data = Vec::with_capacity(initial_capacity(size));
        member
            .read_to_end(&mut data)
            .map_err(|e| fail(format!("reading: {e}")))?;
        progress(size + 512);
        let hash = *blake3::hash(&data).as_bytes();
        match expect {
            Expect::Checkpoint if name == CHECKPOINT_MEMBER => {
                checkpoint = Some(checkpoint::open(&data, keys)?);
                expect = Expect::RangeProof;
            }
            Expect::RangeProof if name == RANGE_PROOF_MEMBER => {
                if data.len() % HASH_LEN != 0 {
                    return Err(fail(format!(
                        "{} bytes is not a whole number of {HASH_LEN}-byte hashes",
                        data.len()
                    )));
                }
                range_proof = Some(
                    data.chunks_exact(HASH_LEN)
                        .map(|c| c.try_into().expect("chunks of HASH_LEN"))
                        .collect::<Vec<Hash>>(),
                );
                expect = Expect::EntriesOrManifest;
            }
            Expect::EntriesOrManifest if name == MANIFEST_MEMBER => {
                let opened = format::open_manifest(&data, keys)
                    .map_err(|e| ExportError::Manifest(e.to_string()))?;
                manifest = Some(opened);
                expect = Expect::Nothing;
                continue;
            }
            Expect::EntriesOrManifest => match format::parse_entries_member(&name) {
                Some(number) if number == entries_files => {
                    entries(number, name.clone(), Bytes::from(data))?;
                    entries_files += 1;
                }
                Some(number) => {
                    return Err(fail(format!(
                        "entries file number {number} where number {entries_files} belongs: \
                         entries files are missing, duplicated or out of order"
                    )));
                }
                None => {
                    return Err(fail(format!(
                        "expected {} or {MANIFEST_MEMBER}",
                        format::entries_member(entries_files)
                    )));
                }
            },
            Expect::Checkpoint => return Err(fail(format!("expected {CHECKPOINT_MEMBER} first"))),
            Expect::RangeProof => {
                return Err(fail(format!(
                    "expected {RANGE_PROOF_MEMBER} after {CHECKPOINT_MEMBER}"
                )));
            }
            Expect::Nothing => return Err(fail(format!("nothing may follow {MANIFEST_MEMBER}"))),
        }
        hashes.push((name, hash));
    }
    let missing = |what: &str| ExportError::Member {
        index: hashes.len(),
        name: what.to_owned(),
        reason: "missing: the export ends before it".into(),
    };
    Ok(Members {
        checkpoint: checkpoint.ok_or_else(|| missing(CHECKPOINT_MEMBER))?,
        range_proof: range_proof.ok_or_else(|| missing(RANGE_PROOF_MEMBER))?,
        manifest: manifest.ok_or_else(|| missing(MANIFEST_MEMBER))?,
        hashes,
        entries_files,
    })
}

/// Checks one entries file on its own: schema, contiguous `leaf_index`, every leaf hash.
fn verify_entries_file(name: &str, data: Bytes) -> Result<EntriesResult, ExportError> {
    let fail = |reason: String| ExportError::Entries {
        member: name.to_owned(),
        reason,
    };
    let builder = ParquetRecordBatchReaderBuilder::try_new(data)
        .map_err(|e| fail(format!("not a readable Parquet file: {e}")))?;
    let schema = builder.parquet_schema();
    let mut columns = Vec::new();
    for wanted in ["leaf_index", "leaf_hash", "leaf"] {
        let position = schema
            .columns()
            .iter()
            .position(|c| c.path().string() == wanted)
            .ok_or_else(|| fail(format!("no `{wanted}` column")))?;
        columns.push(position);
    }
    let mask = ProjectionMask::leaves(schema, columns);
    let reader = builder
        .with_projection(mask)
        .with_batch_size(4096)
        .build()
        .map_err(|e| fail(format!("opening the Parquet reader: {e}")))?;
    let mut range: Option<CompactRange> = None;
    let mut expired = 0u64;
    for batch in reader {
        let batch = batch.map_err(|e| fail(format!("decoding rows: {e}")))?;
        let column = |wanted: &str| {
            batch
                .column_by_name(wanted)
                .ok_or_else(|| fail(format!("no `{wanted}` column in a row batch")))
        };
        let indexes = column("leaf_index")?
            .as_any()
            .downcast_ref::<UInt64Array>()
            .ok_or_else(|| fail("`leaf_index` is not uint64".into()))?;
        let hashes = column("leaf_hash")?
            .as_any()
            .downcast_ref::<FixedSizeBinaryArray>()
            .filter(|a| a.value_length() == HASH_LEN as i32)
            .ok_or_else(|| fail("`leaf_hash` is not 32-byte fixed-size binary".into()))?;
        let leaves = column("leaf")?
            .as_any()
            .downcast_ref::<BinaryArray>()
            .ok_or_else(|| fail("`leaf` is not binary".into()))?;
        // Every present leaf of the batch hashed at once, several per SIMD lane group.
        let present: Vec<&[u8]> = (0..batch.num_rows())
            .filter(|&row| !leaves.is_null(row))
            .map(|row| leaves.value(row))
            .collect();
        let mut computed_hashes = leaf_hashes(&present).into_iter();
        for row in 0..batch.num_rows() {
            if indexes.is_null(row) {
                return Err(fail(format!("row {row} of a batch has a null leaf_index")));
            }
            let leaf_index = indexes.value(row);
            let leaf_fail = |reason: String| ExportError::Leaf {
                member: name.to_owned(),
                leaf_index,
                reason,
            };
            let range = range.get_or_insert_with(|| CompactRange::new(leaf_index));
            if leaf_index != range.end() {
                return Err(leaf_fail(format!(
                    "out of order: leaf {} should come next (a row is missing, duplicated or moved)",
                    range.end()
                )));
            }
            if hashes.is_null(row) {
                return Err(leaf_fail("leaf_hash is null".into()));
            }
            let stored: Hash = hashes
                .value(row)
                .try_into()
                .map_err(|_| leaf_fail("leaf_hash is not 32 bytes".into()))?;
            if leaves.is_null(row) {
                // Content deleted by retention: the hash alone stands, the root checks it.
                expired += 1;
            } else {
                let computed = computed_hashes
                    .next()
                    .expect("one computed hash per present leaf");
                if computed != stored {
                    return Err(leaf_fail(format!(
                        "leaf bytes hash to {} but leaf_hash says {}",
                        hex::encode(computed),
                        hex::encode(stored)
                    )));
                }
            }
            range.append(stored);
        }
    }
    let range = range.ok_or_else(|| fail("holds no rows".into()))?;
    Ok(EntriesResult { range, expired })
}

/// Joins the per-file results and checks them against the manifest and the checkpoint.
fn finish(
    members: Members,
    results: BTreeMap<u64, Result<EntriesResult, ExportError>>,
) -> Result<ExportReport, ExportError> {
    let Members {
        checkpoint,
        range_proof,
        manifest,
        hashes,
        entries_files,
    } = members;
    let m = &manifest.manifest;
    let cp = &checkpoint.checkpoint;
    // Row-level findings first: they name the leaf, which a member hash cannot.
    let files = results
        .into_iter()
        .map(|(number, result)| result.map(|file| (number, file)))
        .collect::<Result<Vec<_>, _>>()?;

    // The manifest must describe this very checkpoint and list exactly these members.
    if m.origin != cp.origin {
        return Err(ExportError::Manifest(format!(
            "origin {:?} differs from the checkpoint's {:?}",
            m.origin, cp.origin
        )));
    }
    if m.tree_size != cp.tree_size {
        return Err(ExportError::Manifest(format!(
            "tree_size {} differs from the checkpoint's {}",
            m.tree_size, cp.tree_size
        )));
    }
    for (name, hash) in &hashes {
        match m.member_hash(name) {
            None => {
                return Err(ExportError::Manifest(format!(
                    "does not list member {name:?}"
                )));
            }
            Some(listed) if listed != hash => {
                return Err(ExportError::Manifest(format!(
                    "member {name:?} has BLAKE3 {} but the manifest lists {}",
                    hex::encode(hash),
                    hex::encode(listed)
                )));
            }
            Some(_) => {}
        }
    }
    if let Some((name, _)) = m
        .members
        .iter()
        .find(|(name, _)| !hashes.iter().any(|(n, _)| n == name))
    {
        return Err(ExportError::Manifest(format!(
            "lists member {name:?}, which is not in the export"
        )));
    }
    // The leaves: contiguous from start to end.
    let mut whole = CompactRange::new(m.start);
    let mut expired = 0u64;
    for (number, file) in files {
        if file.range.begin() != whole.end() {
            return Err(ExportError::Range(format!(
                "{} starts at leaf {} but leaf {} comes next: leaves are missing or overlap",
                format::entries_member(number),
                file.range.begin(),
                whole.end()
            )));
        }
        whole
            .extend(&file.range)
            .map_err(|e| ExportError::Range(e.to_string()))?;
        expired += file.expired;
    }
    if whole.end() != m.end {
        return Err(ExportError::Range(format!(
            "the entries end at leaf {} but the manifest says the export ends at {}",
            whole.end(),
            m.end
        )));
    }
    if expired != m.expired_leaves {
        return Err(ExportError::Manifest(format!(
            "expired_leaves {} but {expired} rows have no content",
            m.expired_leaves
        )));
    }

    // The root: leaves + range proof = the signed checkpoint's root.
    let root = merkle::root_from_range_proof(&whole, cp.tree_size, &range_proof)
        .map_err(|e| ExportError::Root(format!("range proof: {e}")))?;
    if root != cp.root_hash {
        return Err(ExportError::Root(format!(
            "leaves [{}, {}) with the range proof give root {}, the checkpoint of size {} says {}",
            m.start,
            m.end,
            hex::encode(root),
            cp.tree_size,
            hex::encode(cp.root_hash)
        )));
    }
    Ok(ExportReport {
        leaves: m.end - m.start,
        expired_leaves: expired,
        entries_files,
        manifest_signed_by: manifest.signed_by.clone(),
        manifest: manifest.manifest,
        checkpoint,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_size_from_the_header_bounds_no_allocation() {
        // Found by fuzz/fuzz_targets/export_tar.rs (corpus: huge-member-header): a header
        // claiming 1 GB made the verifier reserve 1 GB before reading a byte.
        assert_eq!(initial_capacity(10), 10);
        assert_eq!(initial_capacity(MAX_MEMBER_BYTES) as u64, MAX_PREALLOCATION);
        let mut header = tar::Header::new_ustar();
        header.set_path(CHECKPOINT_MEMBER).unwrap();
        header.set_size(1_000_000_000);
        header.set_cksum();
        let mut tar = header.as_bytes().to_vec();
        tar.extend_from_slice(&[0; 1024]);
        let err = verify_export(tar.as_slice(), &[], &ExportOptions::default(), &|_| {})
            .unwrap_err()
            .to_string();
        // The truncated member reads as its 1024 zero bytes: refused as a checkpoint.
        assert!(err.starts_with("checkpoint: "), "{err}");
    }
}
