//! Writing segment files: leaves in, one Parquet file and its segment root out.

use std::io::Write;
use std::sync::Arc;

use arrow::array::{ArrayRef, BinaryBuilder, FixedSizeBinaryBuilder, StringBuilder, UInt64Builder};
use arrow::record_batch::RecordBatch;
use auditledger_ledger::event::{LeafRecord, decode_leaf};
use auditledger_ledger::merkle::{CompactRange, HASH_LEN, Hash, leaf_hash};
use parquet::arrow::{ArrowWriter, arrow_writer::ArrowWriterOptions};
use parquet::basic::{Compression, Encoding, ZstdLevel};
use parquet::file::metadata::{KeyValue, SortingColumn};
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::schema::types::ColumnPath;

use super::schema::{
    FORMAT_NAME, FORMAT_VERSION, TypedColumns, column, metadata_key, segment_schema,
};
use super::{LeafProblem, SegmentError, SegmentId, hash_hex};

/// Tuning of segment files. The defaults meet the DESIGN §8 size target (Parquet ≤ 1.25× the
/// zstd-19 floor) for segments of 2^8 leaves and up; `docs/benchmarks.md` has the figures.
#[derive(Clone, Debug, PartialEq)]
pub struct WriteOptions {
    /// zstd level of the `leaf` column, the bulk of the file; `None` picks by segment size
    /// (see [`WriteOptions::levels_for`]).
    pub leaf_zstd_level: Option<i32>,
    /// zstd level of every other column; `None` picks by segment size.
    pub column_zstd_level: Option<i32>,
    /// Rows per row group. Bloom filters and dictionaries are per row group.
    pub row_group_rows: usize,
    /// Target size of an uncompressed data page. A point read decodes one page of `leaf`.
    pub data_page_bytes: usize,
    /// False-positive rate of the bloom filters.
    pub bloom_fpp: f64,
}

impl Default for WriteOptions {
    fn default() -> Self {
        WriteOptions {
            leaf_zstd_level: None,
            column_zstd_level: None,
            row_group_rows: 16_384,
            data_page_bytes: 1 << 20,
            bloom_fpp: 0.05,
        }
    }
}

/// Segments below this many leaves get the slow, strong zstd level.
pub const SMALL_SEGMENT_LEAVES: u64 = 1 << 10;

impl WriteOptions {
    /// The (leaf, other columns) zstd levels for a segment of `count` leaves.
    ///
    /// Measured on realistic leaves (`docs/benchmarks.md`): once pages hold thousands of
    /// leaves, zstd level 1 compresses them within ~5 % of level 19 (and better than levels
    /// 3–15) at ~100× the speed, which keeps the archiver ahead of ingest. A small segment
    /// pays a fixed per-file cost (footer, indexes, bloom filters) over few leaves; level 19
    /// wins back what the size target needs and costs milliseconds at that size.
    pub fn levels_for(&self, count: u64) -> (i32, i32) {
        let automatic = if count < SMALL_SEGMENT_LEAVES { 19 } else { 1 };
        (
            self.leaf_zstd_level.unwrap_or(automatic),
            self.column_zstd_level.unwrap_or(automatic),
        )
    }
}

/// Rows encoded per Arrow batch handed to the Parquet writer.
const BATCH_ROWS: usize = 1024;

/// What a finished segment file holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SegmentSummary {
    pub id: SegmentId,
    /// Root of the segment's subtree.
    pub root: Hash,
    /// Rows written without `leaf` bytes.
    pub expired_leaves: u64,
    /// Smallest and largest `logged_at` of the rows (unix nanoseconds); `None` when no row
    /// has one (only possible when every leaf was written expired without it).
    pub oldest_logged_at: Option<u64>,
    pub newest_logged_at: Option<u64>,
}

/// Column builders for one batch of rows.
struct Batch {
    leaf_index: UInt64Builder,
    leaf_hash: FixedSizeBinaryBuilder,
    leaf: BinaryBuilder,
    logged_at: UInt64Builder,
    occurred_at: UInt64Builder,
    strings: Vec<StringBuilder>,
    rows: usize,
}

impl Batch {
    fn new() -> Self {
        Batch {
            leaf_index: UInt64Builder::with_capacity(BATCH_ROWS),
            leaf_hash: FixedSizeBinaryBuilder::with_capacity(BATCH_ROWS, HASH_LEN as i32),
            leaf: BinaryBuilder::with_capacity(BATCH_ROWS, BATCH_ROWS * 600),
            logged_at: UInt64Builder::with_capacity(BATCH_ROWS),
            occurred_at: UInt64Builder::with_capacity(BATCH_ROWS),
            strings: column::STRINGS
                .iter()
                .map(|_| StringBuilder::with_capacity(BATCH_ROWS, BATCH_ROWS * 24))
                .collect(),
            rows: 0,
        }
    }

    fn finish(&mut self) -> Vec<ArrayRef> {
        let mut arrays: Vec<ArrayRef> = vec![
            Arc::new(self.leaf_index.finish()),
            Arc::new(self.leaf_hash.finish()),
            Arc::new(self.leaf.finish()),
            Arc::new(self.logged_at.finish()),
            Arc::new(self.occurred_at.finish()),
        ];
        arrays.extend(
            self.strings
                .iter_mut()
                .map(|b| Arc::new(b.finish()) as ArrayRef),
        );
        self.rows = 0;
        arrays
    }
}

/// Writer properties for segment files.
fn writer_properties(options: &WriteOptions, count: u64) -> Result<WriterProperties, String> {
    let (leaf_level, column_level) = options.levels_for(count);
    let zstd = |level: i32| {
        ZstdLevel::try_new(level)
            .map(Compression::ZSTD)
            .map_err(|e| format!("zstd level {level}: {e}"))
    };
    let path = |name: &str| ColumnPath::from(name);
    let mut builder = WriterProperties::builder()
        .set_created_by(format!(
            "auditledger-archiver {} (segment format {FORMAT_VERSION})",
            env!("CARGO_PKG_VERSION")
        ))
        .set_compression(zstd(column_level)?)
        .set_column_compression(path(column::LEAF), zstd(leaf_level)?)
        .set_max_row_group_row_count(Some(options.row_group_rows.max(1)))
        .set_data_page_size_limit(options.data_page_bytes.max(1))
        .set_sorting_columns(Some(vec![SortingColumn {
            column_idx: 0,
            descending: false,
            nulls_first: false,
        }]))
        // Dictionaries pay off for the low-cardinality columns (kinds, users, tools, …);
        // they are disabled below for the high-entropy ones.
        .set_dictionary_enabled(true)
        // Row-group min/max for every column; page-level (the column index) only for the
        // numbers below, where pages can be pruned by time. A string column's chunk rarely
        // spans more than one page.
        .set_statistics_enabled(EnabledStatistics::Chunk);
    // Leaves and hashes: random-looking bytes, never filtered on by range.
    for name in [column::LEAF_HASH, column::LEAF] {
        builder = builder
            .set_column_dictionary_enabled(path(name), false)
            .set_column_statistics_enabled(path(name), EnabledStatistics::None);
    }
    builder = builder.set_column_encoding(path(column::LEAF), Encoding::DELTA_LENGTH_BYTE_ARRAY);
    for name in [column::LEAF_INDEX, column::LOGGED_AT, column::OCCURRED_AT] {
        builder = builder
            .set_column_dictionary_enabled(path(name), false)
            .set_column_encoding(path(name), Encoding::DELTA_BINARY_PACKED)
            .set_column_statistics_enabled(path(name), EnabledStatistics::Page);
    }
    for name in column::UNIQUE_STRINGS {
        builder = builder.set_column_dictionary_enabled(path(name), false);
    }
    // UUIDv7s in time order share their leading (time) digits with the previous id.
    builder = builder.set_column_encoding(path(column::EVENT_ID), Encoding::DELTA_BYTE_ARRAY);
    for name in column::BLOOM {
        builder = builder
            .set_column_bloom_filter_enabled(path(name), true)
            .set_column_bloom_filter_fpp(path(name), options.bloom_fpp)
            .set_column_bloom_filter_max_ndv(path(name), options.row_group_rows.max(1) as u64);
    }
    Ok(builder.build())
}

/// Streams the leaves of any contiguous range `[start, end)` into a Parquet file with the
/// segment schema: the common core of segment files and export entry files. Memory: one row
/// group of encoded pages plus one batch of rows.
pub struct RangeWriter<W: Write + Send> {
    /// Names the file in errors (a segment id, an export member name).
    label: String,
    start: u64,
    end: u64,
    writer: ArrowWriter<W>,
    batch: Batch,
    range: CompactRange,
    expired_leaves: u64,
    logged_at_bounds: Option<(u64, u64)>,
}

/// What a finished [`RangeWriter`] wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RangeSummary {
    /// Compact range of the leaf hashes written (root of the range if it is one subtree).
    pub range: CompactRange,
    pub expired_leaves: u64,
    /// Smallest and largest `logged_at` of the rows (unix nanoseconds).
    pub logged_at_bounds: Option<(u64, u64)>,
}

fn parquet_error(
    label: &str,
    context: &'static str,
    source: parquet::errors::ParquetError,
) -> SegmentError {
    SegmentError::Parquet {
        segment: label.to_owned(),
        context,
        source,
    }
}

fn arrow_error(
    label: &str,
    context: &'static str,
    source: arrow::error::ArrowError,
) -> SegmentError {
    SegmentError::Arrow {
        segment: label.to_owned(),
        context,
        source,
    }
}

impl<W: Write + Send> RangeWriter<W> {
    /// A writer for leaves `[start, end)`; `label` names the file in errors.
    pub fn new(
        sink: W,
        label: impl Into<String>,
        start: u64,
        end: u64,
        options: &WriteOptions,
    ) -> Result<Self, SegmentError> {
        let label = label.into();
        if start > end {
            return Err(SegmentError::Geometry(format!(
                "{label}: range [{start}, {end}) is reversed"
            )));
        }
        let properties = writer_properties(options, end - start).map_err(SegmentError::Geometry)?;
        let writer = ArrowWriter::try_new_with_options(
            sink,
            segment_schema(),
            ArrowWriterOptions::new()
                .with_properties(properties)
                // The Parquet schema maps back to the same Arrow types; an embedded Arrow
                // schema would only add ~1 KiB to every file.
                .with_skip_arrow_metadata(true),
        )
        .map_err(|e| parquet_error(&label, "creating the Parquet writer", e))?;
        Ok(RangeWriter {
            range: CompactRange::new(start),
            label,
            start,
            end,
            writer,
            batch: Batch::new(),
            expired_leaves: 0,
            logged_at_bounds: None,
        })
    }

    /// Index the next row will get.
    pub fn next_leaf_index(&self) -> u64 {
        self.range.end()
    }

    fn check_room(&self) -> Result<u64, SegmentError> {
        let leaf_index = self.range.end();
        if leaf_index == self.end {
            return Err(SegmentError::Full {
                segment: self.label.clone(),
                count: self.end - self.start,
            });
        }
        Ok(leaf_index)
    }

    fn leaf_error(&self, leaf_index: u64, problem: LeafProblem) -> SegmentError {
        SegmentError::Leaf {
            segment: self.label.clone(),
            leaf_index,
            problem,
        }
    }

    /// Appends the next leaf (verbatim bytes, a canonical `LeafRecord`).
    pub fn push_leaf(&mut self, leaf: &[u8]) -> Result<(), SegmentError> {
        let leaf_index = self.check_room()?;
        let record =
            decode_leaf(leaf).map_err(|e| self.leaf_error(leaf_index, LeafProblem::Decode(e)))?;
        self.push_decoded(leaf, &record)
    }

    /// Appends the next leaf, already decoded by the caller.
    pub fn push_decoded(&mut self, leaf: &[u8], record: &LeafRecord) -> Result<(), SegmentError> {
        let leaf_index = self.check_room()?;
        let hash = leaf_hash(leaf);
        let typed = TypedColumns::of(record);
        let b = &mut self.batch;
        b.leaf_index.append_value(leaf_index);
        b.leaf_hash
            .append_value(hash)
            .map_err(|e| arrow_error(&self.label, "appending a leaf hash", e))?;
        b.leaf.append_value(leaf);
        b.logged_at.append_value(typed.logged_at);
        b.occurred_at
            .append_option((typed.occurred_at != 0).then_some(typed.occurred_at));
        for (builder, value) in b.strings.iter_mut().zip(typed.strings.iter()) {
            builder.append_option(value.as_deref());
        }
        self.range.append(hash);
        self.saw_logged_at(typed.logged_at);
        self.end_row()
    }

    fn saw_logged_at(&mut self, logged_at: u64) {
        self.logged_at_bounds = Some(match self.logged_at_bounds {
            None => (logged_at, logged_at),
            Some((oldest, newest)) => (oldest.min(logged_at), newest.max(logged_at)),
        });
    }

    /// Appends the next leaf as expired: its hash (and, if known, its `logged_at`) without
    /// content.
    pub fn push_expired(
        &mut self,
        leaf_hash: Hash,
        logged_at: Option<u64>,
    ) -> Result<(), SegmentError> {
        let leaf_index = self.check_room()?;
        let b = &mut self.batch;
        b.leaf_index.append_value(leaf_index);
        b.leaf_hash
            .append_value(leaf_hash)
            .map_err(|e| arrow_error(&self.label, "appending a leaf hash", e))?;
        b.leaf.append_null();
        b.logged_at.append_option(logged_at);
        b.occurred_at.append_null();
        for builder in &mut b.strings {
            builder.append_null();
        }
        self.range.append(leaf_hash);
        self.expired_leaves += 1;
        if let Some(logged_at) = logged_at {
            self.saw_logged_at(logged_at);
        }
        self.end_row()
    }

    fn end_row(&mut self) -> Result<(), SegmentError> {
        self.batch.rows += 1;
        if self.batch.rows == BATCH_ROWS {
            self.flush_batch()?;
        }
        Ok(())
    }

    fn flush_batch(&mut self) -> Result<(), SegmentError> {
        if self.batch.rows == 0 {
            return Ok(());
        }
        let batch = RecordBatch::try_new(segment_schema(), self.batch.finish())
            .map_err(|e| arrow_error(&self.label, "building a record batch", e))?;
        self.writer
            .write(&batch)
            .map_err(|e| parquet_error(&self.label, "writing rows", e))
    }

    /// Writes the footer (with `metadata` as key/value pairs) once every leaf of the range is
    /// in; returns the sink and what was written.
    pub fn finish(
        mut self,
        metadata: &[(&str, String)],
    ) -> Result<(W, RangeSummary), SegmentError> {
        if self.range.end() != self.end {
            return Err(SegmentError::Incomplete {
                segment: self.label,
                rows: self.range.end() - self.start,
                expected: self.end - self.start,
                first_missing: self.range.end(),
            });
        }
        self.flush_batch()?;
        for (key, value) in metadata {
            self.writer
                .append_key_value_metadata(KeyValue::new((*key).to_owned(), value.clone()));
        }
        let sink = self
            .writer
            .into_inner()
            .map_err(|e| parquet_error(&self.label, "writing the footer", e))?;
        Ok((
            sink,
            RangeSummary {
                range: self.range,
                expired_leaves: self.expired_leaves,
                logged_at_bounds: self.logged_at_bounds,
            },
        ))
    }
}

/// Streams the leaves of one segment into a Parquet file.
pub struct SegmentWriter<W: Write + Send> {
    id: SegmentId,
    rows: RangeWriter<W>,
}

impl<W: Write + Send> SegmentWriter<W> {
    pub fn new(sink: W, id: SegmentId, options: &WriteOptions) -> Result<Self, SegmentError> {
        let rows = RangeWriter::new(sink, id.to_string(), id.start(), id.end(), options)?;
        Ok(SegmentWriter { id, rows })
    }

    pub fn id(&self) -> &SegmentId {
        &self.id
    }

    /// Index the next row will get.
    pub fn next_leaf_index(&self) -> u64 {
        self.rows.next_leaf_index()
    }

    /// Appends the next leaf (verbatim bytes, a canonical `LeafRecord`).
    pub fn push_leaf(&mut self, leaf: &[u8]) -> Result<(), SegmentError> {
        self.rows.push_leaf(leaf)
    }

    /// Appends the next leaf, already decoded by the caller.
    pub(crate) fn push_decoded(
        &mut self,
        leaf: &[u8],
        record: &LeafRecord,
    ) -> Result<(), SegmentError> {
        self.rows.push_decoded(leaf, record)
    }

    /// Appends the next leaf as expired: its hash (and, if known, its `logged_at`) without
    /// content.
    pub fn push_expired(
        &mut self,
        leaf_hash: Hash,
        logged_at: Option<u64>,
    ) -> Result<(), SegmentError> {
        self.rows.push_expired(leaf_hash, logged_at)
    }

    /// Writes the footer once every leaf of the segment is in; returns the sink and the
    /// segment root.
    pub fn finish(self) -> Result<(W, SegmentSummary), SegmentError> {
        let id = self.id;
        // The root is known once the last leaf is in; the footer records it.
        let root = match self.rows.range.nodes() {
            [(node, hash)] if *node == id.node() => Some(*hash),
            _ => None,
        };
        let metadata = [
            (metadata_key::FORMAT, FORMAT_NAME.to_owned()),
            (metadata_key::FORMAT_VERSION, FORMAT_VERSION.to_string()),
            (metadata_key::ORIGIN, id.origin().to_owned()),
            (metadata_key::START, id.start().to_string()),
            (metadata_key::COUNT, id.count().to_string()),
            (
                metadata_key::SEGMENT_ROOT,
                root.map(|r| hash_hex(&r)).unwrap_or_default(),
            ),
            (
                metadata_key::EXPIRED_LEAVES,
                self.rows.expired_leaves.to_string(),
            ),
        ];
        let (sink, summary) = self.rows.finish(&metadata)?;
        let root = match (root, summary.range.nodes()) {
            (Some(root), _) => root,
            // `finish` refused an incomplete range; a full aligned power-of-two range always
            // folds into its one node.
            (None, nodes) => unreachable!("segment range folded into {} nodes", nodes.len()),
        };
        Ok((
            sink,
            SegmentSummary {
                id,
                root,
                expired_leaves: summary.expired_leaves,
                oldest_logged_at: summary.logged_at_bounds.map(|(oldest, _)| oldest),
                newest_logged_at: summary.logged_at_bounds.map(|(_, newest)| newest),
            },
        ))
    }
}

/// Writes a whole segment from its leaves, in order, into memory.
pub fn write_segment<I>(
    id: SegmentId,
    leaves: I,
    options: &WriteOptions,
) -> Result<(Vec<u8>, SegmentSummary), SegmentError>
where
    I: IntoIterator,
    I::Item: AsRef<[u8]>,
{
    let mut writer = SegmentWriter::new(Vec::new(), id, options)?;
    for leaf in leaves {
        writer.push_leaf(leaf.as_ref())?;
    }
    writer.finish()
}
