//! Writing retention export tars (DESIGN §7; member formats in `auditledger_ledger::export`):
//! leaves in, in order, one tar out — streamed, with one entries file in memory at a time.
//!
//! The ledger's `Compliance.Export` drives this with leaves from every tier; benchmarks and
//! tests drive it with generated leaves.

use std::io::Write;

use auditledger_ledger::export::{
    CHECKPOINT_MEMBER, ENTRIES_PER_FILE, ExportManifest, MANIFEST_MEMBER, RANGE_PROOF_MEMBER,
    entries_member,
};
use auditledger_ledger::merkle::Hash;
use auditledger_ledger::note::SignerKey;

use crate::segment::{RangeWriter, SegmentError, WriteOptions};

/// Why an export could not be written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ExportWriteError {
    #[error("writing the export: {0}")]
    Io(#[from] std::io::Error),
    #[error("export entries: {0}")]
    Entries(#[from] SegmentError),
    #[error("export range [{start}, {end}): {reason}")]
    Range {
        start: u64,
        end: u64,
        reason: String,
    },
    #[error("signing the export manifest: {0}")]
    Manifest(String),
}

/// The manifest fields the writer does not know by itself.
#[derive(Clone, Debug)]
pub struct ExportDescription {
    pub origin: String,
    pub tree_size: u64,
    pub from_time: u64,
    pub to_time: u64,
    pub requester: String,
    pub justification: String,
    /// Unix seconds; also the members' tar mtime.
    pub exported_at: u64,
}

/// Streams one export: `checkpoint` and `range-proof` at once, then the leaves of
/// `[start, end)` in order, then the signed manifest on [`finish`](Self::finish).
pub struct ExportWriter<W: Write> {
    tar: tar::Builder<W>,
    description: ExportDescription,
    start: u64,
    end: u64,
    entries_per_file: u64,
    options: WriteOptions,
    current: Option<RangeWriter<Vec<u8>>>,
    next_file: u64,
    expired_leaves: u64,
    members: Vec<(String, Hash)>,
}

impl<W: Write> ExportWriter<W> {
    /// Starts an export of leaves `[start, end)` proven against `checkpoint_note` (whose tree
    /// size is `description.tree_size`) by `range_proof`, with the default
    /// [`ENTRIES_PER_FILE`].
    pub fn new(
        sink: W,
        description: ExportDescription,
        checkpoint_note: &str,
        range_proof: &[Hash],
        start: u64,
        end: u64,
    ) -> Result<Self, ExportWriteError> {
        Self::with_entries_per_file(
            sink,
            description,
            checkpoint_note,
            range_proof,
            start,
            end,
            ENTRIES_PER_FILE,
        )
    }

    /// Like [`new`](Self::new) with another number of leaves per entries file (tests and
    /// benchmarks; verifiers accept any split as long as the files are contiguous).
    pub fn with_entries_per_file(
        sink: W,
        description: ExportDescription,
        checkpoint_note: &str,
        range_proof: &[Hash],
        start: u64,
        end: u64,
        entries_per_file: u64,
    ) -> Result<Self, ExportWriteError> {
        if start > end || end > description.tree_size || entries_per_file == 0 {
            return Err(ExportWriteError::Range {
                start,
                end,
                reason: format!(
                    "not within tree size {} (or 0 leaves per file)",
                    description.tree_size
                ),
            });
        }
        let mut writer = ExportWriter {
            tar: tar::Builder::new(sink),
            description,
            start,
            end,
            entries_per_file,
            options: WriteOptions {
                // Exports are read more than written; level 3 on pages of thousands of
                // leaves is within a few percent of level 19 at a fraction of the time.
                leaf_zstd_level: Some(3),
                column_zstd_level: Some(3),
                ..WriteOptions::default()
            },
            current: None,
            next_file: 0,
            expired_leaves: 0,
            members: Vec::new(),
        };
        writer.append(CHECKPOINT_MEMBER, checkpoint_note.as_bytes())?;
        writer.append(RANGE_PROOF_MEMBER, &range_proof.concat())?;
        Ok(writer)
    }

    fn append(&mut self, name: &str, data: &[u8]) -> Result<(), ExportWriteError> {
        let mut header = tar::Header::new_ustar();
        header.set_path(name)?;
        header.set_size(data.len() as u64);
        header.set_mode(0o444);
        header.set_mtime(self.description.exported_at);
        header.set_entry_type(tar::EntryType::Regular);
        header.set_cksum();
        self.tar.append(&header, data)?;
        self.members
            .push((name.to_owned(), *blake3::hash(data).as_bytes()));
        Ok(())
    }

    /// Index the next leaf must have.
    pub fn next_leaf_index(&self) -> u64 {
        self.current.as_ref().map_or(
            self.start + self.next_file * self.entries_per_file,
            RangeWriter::next_leaf_index,
        )
    }

    /// The entries file the next leaf goes into, opened if needed.
    fn file(&mut self) -> Result<&mut RangeWriter<Vec<u8>>, ExportWriteError> {
        if self.current.is_none() {
            let first = self.next_leaf_index();
            if first >= self.end {
                return Err(ExportWriteError::Range {
                    start: self.start,
                    end: self.end,
                    reason: "more leaves than the range holds".into(),
                });
            }
            let last = (first + self.entries_per_file).min(self.end);
            let name = entries_member(self.next_file);
            self.current = Some(RangeWriter::new(
                Vec::new(),
                name,
                first,
                last,
                &self.options,
            )?);
        }
        Ok(self.current.as_mut().expect("opened above"))
    }

    /// Closes the current entries file once it is full.
    fn after_push(&mut self) -> Result<(), ExportWriteError> {
        let full = self.current.as_ref().is_some_and(|w| {
            let first = self.start + self.next_file * self.entries_per_file;
            w.next_leaf_index() == (first + self.entries_per_file).min(self.end)
        });
        if full {
            let writer = self.current.take().expect("checked above");
            let first = self.start + self.next_file * self.entries_per_file;
            let count = writer.next_leaf_index() - first;
            let metadata = [
                (
                    "auditledger.format",
                    "auditledger-export-entries".to_owned(),
                ),
                ("auditledger.origin", self.description.origin.clone()),
                ("auditledger.start", first.to_string()),
                ("auditledger.count", count.to_string()),
            ];
            let (bytes, _) = writer.finish(&metadata)?;
            let name = entries_member(self.next_file);
            self.append(&name, &bytes)?;
            self.next_file += 1;
        }
        Ok(())
    }

    /// Appends the next leaf (verbatim bytes).
    pub fn push_leaf(&mut self, leaf: &[u8]) -> Result<(), ExportWriteError> {
        self.file()?.push_leaf(leaf)?;
        self.after_push()
    }

    /// Appends the next leaf as expired: its hash without content.
    pub fn push_expired(&mut self, leaf_hash: Hash) -> Result<(), ExportWriteError> {
        self.file()?.push_expired(leaf_hash, None)?;
        self.expired_leaves += 1;
        self.after_push()
    }

    /// Writes the signed manifest and the end of the tar; returns the sink.
    pub fn finish(mut self, signers: &[SignerKey]) -> Result<W, ExportWriteError> {
        if self.current.is_some() || self.next_leaf_index() < self.end {
            return Err(ExportWriteError::Range {
                start: self.start,
                end: self.end,
                reason: format!("only leaves up to {} were written", self.next_leaf_index()),
            });
        }
        if signers.is_empty() {
            return Err(ExportWriteError::Manifest("no signing key".into()));
        }
        let d = &self.description;
        let manifest = ExportManifest {
            origin: d.origin.clone(),
            start: self.start,
            end: self.end,
            tree_size: d.tree_size,
            from_time: d.from_time,
            to_time: d.to_time,
            requester: d.requester.clone(),
            justification: d.justification.clone(),
            exported_at: d.exported_at,
            expired_leaves: self.expired_leaves,
            members: std::mem::take(&mut self.members),
        };
        let note = manifest
            .sign(signers)
            .map_err(|e| ExportWriteError::Manifest(e.to_string()))?;
        self.append(MANIFEST_MEMBER, note.as_bytes())?;
        let mut sink = self.tar.into_inner()?;
        sink.flush()?;
        Ok(sink)
    }
}
