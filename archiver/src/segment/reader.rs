//! Reading and verifying segment files, from memory or from an object store, in bounded
//! memory: rows stream in batches, one row group's projected column chunks at a time.

use std::io::Write;
use std::ops::Range;
use std::sync::Arc;

use arrow::array::{Array, BinaryArray, FixedSizeBinaryArray, RecordBatch, UInt64Array};
use arrow::datatypes::DataType;
use auditledger_ledger::event::{LeafRecord, decode_leaf};
use auditledger_ledger::leaf_hashes::leaf_hashes;
use auditledger_ledger::merkle::{
    CompactRange, HASH_LEN, Hash, HashReader, MemoryTree, MerkleError, MissingNode, NodeId,
    leaf_hash,
};
use bytes::Bytes;
use futures_util::future::{BoxFuture, FutureExt, ready};
use futures_util::stream::{self, Stream, StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::{
    ArrowReaderMetadata, ArrowReaderOptions, RowSelection, RowSelector,
};
use parquet::arrow::async_reader::{
    AsyncFileReader, ParquetRecordBatchStream, ParquetRecordBatchStreamBuilder,
};
use parquet::errors::ParquetError;
use parquet::file::metadata::{PageIndexPolicy, ParquetMetaData, ParquetMetaDataReader};

use super::schema::{FORMAT_NAME, FORMAT_VERSION, column, metadata_key};
use super::writer::{SegmentSummary, SegmentWriter, WriteOptions};
use super::{LeafProblem, SegmentError, SegmentId, SegmentInfo, SegmentRow, hash_hex};

/// Rows per decoded batch while streaming.
const READ_BATCH_ROWS: usize = 1024;

/// Where the file's bytes come from.
#[derive(Clone, Debug)]
enum Source {
    Bytes(Bytes),
    Object {
        store: Arc<dyn ObjectStore>,
        path: Path,
        size: u64,
    },
}

fn store_error(e: object_store::Error) -> ParquetError {
    ParquetError::External(Box::new(e))
}

impl Source {
    fn size(&self) -> u64 {
        match self {
            Source::Bytes(bytes) => bytes.len() as u64,
            Source::Object { size, .. } => *size,
        }
    }

    fn slice(bytes: &Bytes, range: Range<u64>) -> Result<Bytes, ParquetError> {
        let len = bytes.len() as u64;
        if range.start > range.end || range.end > len {
            return Err(ParquetError::EOF(format!(
                "byte range {range:?} is outside the {len}-byte file"
            )));
        }
        Ok(bytes.slice(range.start as usize..range.end as usize))
    }
}

impl AsyncFileReader for Source {
    fn get_bytes(&mut self, range: Range<u64>) -> BoxFuture<'_, parquet::errors::Result<Bytes>> {
        match self {
            Source::Bytes(bytes) => ready(Source::slice(bytes, range)).boxed(),
            Source::Object { store, path, .. } => {
                async move { store.get_range(path, range).await.map_err(store_error) }.boxed()
            }
        }
    }

    fn get_byte_ranges(
        &mut self,
        ranges: Vec<Range<u64>>,
    ) -> BoxFuture<'_, parquet::errors::Result<Vec<Bytes>>> {
        match self {
            Source::Bytes(bytes) => ready(
                ranges
                    .into_iter()
                    .map(|range| Source::slice(bytes, range))
                    .collect(),
            )
            .boxed(),
            Source::Object { store, path, .. } => {
                async move { store.get_ranges(path, &ranges).await.map_err(store_error) }.boxed()
            }
        }
    }

    fn get_metadata<'a>(
        &'a mut self,
        options: Option<&'a ArrowReaderOptions>,
    ) -> BoxFuture<'a, parquet::errors::Result<Arc<ParquetMetaData>>> {
        async move {
            let size = self.size();
            let metadata = ParquetMetaDataReader::new()
                .with_arrow_reader_options(options)
                .load_and_finish(self, size)
                .await?;
            Ok(Arc::new(metadata))
        }
        .boxed()
    }
}

/// An open segment file whose metadata matched the expected segment. Nothing is trusted
/// until [`SegmentReader::verify`] has checked the rows against an expected root.
#[derive(Clone, Debug)]
pub struct SegmentReader {
    info: SegmentInfo,
    source: Source,
    metadata: ArrowReaderMetadata,
}

/// Result of a successful [`SegmentReader::verify`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifiedSegment {
    pub id: SegmentId,
    pub root: Hash,
    pub expired_leaves: u64,
}

/// What an expiry rewrite's selector sees of one leaf.
#[derive(Clone, Copy, Debug)]
pub struct ExpiryCandidate<'a> {
    pub leaf_index: u64,
    /// The decoded leaf.
    pub record: &'a LeafRecord,
}

impl SegmentReader {
    /// Opens a segment file held in memory.
    pub async fn from_bytes(bytes: Bytes, expected: &SegmentId) -> Result<Self, SegmentError> {
        Self::open(Source::Bytes(bytes), expected).await
    }

    /// Opens a segment object; reads only the footer now, and column chunks as needed later.
    pub async fn from_object(
        store: Arc<dyn ObjectStore>,
        path: &Path,
        expected: &SegmentId,
    ) -> Result<Self, SegmentError> {
        let meta = store.head(path).await.map_err(|e| {
            SegmentError::parquet(expected, "reading the object's size", store_error(e))
        })?;
        Self::open(
            Source::Object {
                store,
                path: path.clone(),
                size: meta.size,
            },
            expected,
        )
        .await
    }

    async fn open(mut source: Source, expected: &SegmentId) -> Result<Self, SegmentError> {
        let options = ArrowReaderOptions::new()
            .with_page_index_policy(PageIndexPolicy::Optional)
            .with_skip_arrow_metadata(true);
        let metadata = ArrowReaderMetadata::load_async(&mut source, options)
            .await
            .map_err(|e| SegmentError::parquet(expected, "not a readable Parquet file", e))?;
        let info = read_info(&metadata, expected, source.size())?;
        check_chunks(&metadata, expected, source.size())?;
        check_column(&metadata, expected, column::LEAF_INDEX, &DataType::UInt64)?;
        check_column(
            &metadata,
            expected,
            column::LEAF_HASH,
            &DataType::FixedSizeBinary(HASH_LEN as i32),
        )?;
        check_column(&metadata, expected, column::LEAF, &DataType::Binary)?;
        Ok(SegmentReader {
            info,
            source,
            metadata,
        })
    }

    /// The file's own metadata (already checked against the expected segment).
    pub fn info(&self) -> &SegmentInfo {
        &self.info
    }

    pub fn id(&self) -> &SegmentId {
        &self.info.id
    }

    /// A stream of record batches of the named columns, optionally of one row group and a
    /// selection of its rows.
    fn batches(
        &self,
        columns: &[&str],
        row_group: Option<(usize, RowSelection)>,
    ) -> Result<GuardedBatches, SegmentError> {
        let schema = self.metadata.schema();
        let roots: Vec<usize> = columns
            .iter()
            .filter_map(|name| schema.index_of(name).ok())
            .collect();
        let mask = ProjectionMask::roots(
            self.metadata.metadata().file_metadata().schema_descr(),
            roots,
        );
        let mut builder = ParquetRecordBatchStreamBuilder::new_with_metadata(
            self.source.clone(),
            self.metadata.clone(),
        )
        .with_projection(mask)
        .with_batch_size(READ_BATCH_ROWS);
        if let Some((index, selection)) = row_group {
            builder = builder
                .with_row_groups(vec![index])
                .with_row_selection(selection);
        }
        builder
            .build()
            .map(GuardedBatches::new)
            .map_err(|e| SegmentError::parquet(self.id(), "reading rows", e))
    }

    /// Every row in order, streamed in batches (bounded memory). Rows are as stored: use
    /// [`SegmentReader::verify`] first to know they are complete and hash correctly.
    pub fn rows(
        &self,
    ) -> Result<impl Stream<Item = Result<SegmentRow, SegmentError>> + Send + 'static, SegmentError>
    {
        let id = self.id().clone();
        let batches = self.batches(&[column::LEAF_INDEX, column::LEAF_HASH, column::LEAF], None)?;
        Ok(batches
            .map_err({
                let id = id.clone();
                move |e| SegmentError::parquet(&id, "reading rows", e)
            })
            .and_then(move |batch| ready(batch_rows(&id, &batch)))
            .map_ok(|rows| stream::iter(rows.into_iter().map(Ok)))
            .try_flatten())
    }

    /// Checks the whole file: every leaf of the segment present once and in order, every
    /// `leaf_hash` equal to the hash of its `leaf` bytes (when present), the segment root
    /// rebuilt from the hashes equal to `expected_root` and to the root in the file metadata.
    pub async fn verify(&self, expected_root: &Hash) -> Result<VerifiedSegment, SegmentError> {
        let id = self.id();
        let mut checker = RowChecker::new(id);
        let mut batches =
            self.batches(&[column::LEAF_INDEX, column::LEAF_HASH, column::LEAF], None)?;
        while let Some(batch) = batches.next().await {
            let batch = batch.map_err(|e| SegmentError::parquet(id, "reading rows", e))?;
            let columns = BatchColumns::of(id, &batch)?;
            for (row, leaf) in leaf_checks(&columns, batch.num_rows())
                .into_iter()
                .enumerate()
            {
                checker.row(&columns, row, leaf)?;
            }
        }
        let (root, expired_leaves) = checker.finish()?;
        if root != *expected_root {
            return Err(SegmentError::RootMismatch {
                segment: id.to_string(),
                computed: hash_hex(&root),
                expected: hash_hex(expected_root),
            });
        }
        if root != self.info.root {
            return Err(SegmentError::Metadata {
                segment: id.to_string(),
                key: metadata_key::SEGMENT_ROOT,
                reason: format!(
                    "records {} but the rows give {}",
                    hash_hex(&self.info.root),
                    hash_hex(&root)
                ),
            });
        }
        if expired_leaves != self.info.expired_leaves {
            return Err(SegmentError::ExpiredCountMismatch {
                segment: id.to_string(),
                counted: expired_leaves,
                recorded: self.info.expired_leaves,
            });
        }
        Ok(VerifiedSegment {
            id: id.clone(),
            root,
            expired_leaves,
        })
    }

    /// Reads one leaf (decoding one page of each needed column). Checks that the row holds
    /// that leaf and that its bytes match its hash.
    pub async fn leaf(&self, leaf_index: u64) -> Result<SegmentRow, SegmentError> {
        let id = self.id();
        if !id.contains(leaf_index) {
            return Err(SegmentError::OutOfRange {
                segment: id.to_string(),
                leaf_index,
            });
        }
        let mut position = leaf_index - id.start();
        let mut row_group = None;
        for (index, group) in self.metadata.metadata().row_groups().iter().enumerate() {
            let rows = u64::try_from(group.num_rows()).unwrap_or(0);
            if position < rows {
                row_group = Some(index);
                break;
            }
            position -= rows;
        }
        let Some(row_group) = row_group else {
            return Err(SegmentError::Incomplete {
                segment: id.to_string(),
                rows: u64::try_from(self.metadata.metadata().file_metadata().num_rows())
                    .unwrap_or(0),
                expected: id.count(),
                first_missing: leaf_index,
            });
        };
        let selection = RowSelection::from(vec![
            RowSelector::skip(position as usize),
            RowSelector::select(1),
        ]);
        let mut batches = self.batches(
            &[column::LEAF_INDEX, column::LEAF_HASH, column::LEAF],
            Some((row_group, selection)),
        )?;
        while let Some(batch) = batches.next().await {
            let batch = batch.map_err(|e| SegmentError::parquet(id, "reading a leaf", e))?;
            if let Some(row) = batch_rows(id, &batch)?.into_iter().next() {
                if row.leaf_index != leaf_index {
                    let problem = if row.leaf_index > leaf_index {
                        LeafProblem::Missing {
                            next_found: row.leaf_index,
                        }
                    } else {
                        LeafProblem::OutOfOrder {
                            found: row.leaf_index,
                        }
                    };
                    return Err(SegmentError::leaf(id, leaf_index, problem));
                }
                if let Some(leaf) = &row.leaf {
                    check_leaf_hash(id, leaf_index, &row.leaf_hash, leaf)?;
                }
                return Ok(row);
            }
        }
        Err(SegmentError::Incomplete {
            segment: id.to_string(),
            rows: position,
            expected: id.count(),
            first_missing: leaf_index,
        })
    }

    /// Every leaf hash, in order, checked for completeness and against the root in the file
    /// metadata (compare [`SegmentInfo::root`] with a signed manifest before trusting it).
    pub async fn leaf_hashes(&self) -> Result<Vec<Hash>, SegmentError> {
        let id = self.id();
        let mut checker = RowChecker::new(id);
        let capacity = usize::try_from(id.count()).unwrap_or(0);
        let mut hashes = Vec::with_capacity(capacity);
        let mut batches = self.batches(&[column::LEAF_INDEX, column::LEAF_HASH], None)?;
        while let Some(batch) = batches.next().await {
            let batch = batch.map_err(|e| SegmentError::parquet(id, "reading leaf hashes", e))?;
            let columns = BatchColumns::of(id, &batch)?;
            for row in 0..batch.num_rows() {
                hashes.push(checker.row(&columns, row, LeafCheck::NotChecked)?);
            }
        }
        let (root, _) = checker.finish()?;
        if root != self.info.root {
            return Err(SegmentError::RootMismatch {
                segment: id.to_string(),
                computed: hash_hex(&root),
                expected: hash_hex(&self.info.root),
            });
        }
        Ok(hashes)
    }

    /// The segment's subtree, for proofs: [`SegmentReader::leaf_hashes`] folded into every node.
    pub async fn tree(&self) -> Result<SegmentTree, SegmentError> {
        let hashes = self.leaf_hashes().await?;
        SegmentTree::new(self.id().clone(), &hashes)
    }
}

/// Reads for searches (`crate::search`): footer statistics, bloom filters, the filter
/// columns of one row group, and the leaves of selected rows only.
#[cfg(feature = "engine")]
impl SegmentReader {
    /// The Parquet footer (row groups, column chunk statistics, bloom filter offsets).
    pub(crate) fn parquet_metadata(&self) -> &ParquetMetaData {
        self.metadata.metadata()
    }

    /// Record batches of the named columns of one row group, only its `selection` of rows if
    /// given. Pages holding no selected row are not fetched (the offset index is loaded).
    pub(crate) fn row_group_batches(
        &self,
        columns: &[&str],
        row_group: usize,
        selection: Option<RowSelection>,
    ) -> Result<
        futures_util::stream::BoxStream<'static, Result<RecordBatch, SegmentError>>,
        SegmentError,
    > {
        let rows = self
            .metadata
            .metadata()
            .row_groups()
            .get(row_group)
            .map(|g| usize::try_from(g.num_rows()).unwrap_or(0))
            .ok_or_else(|| {
                SegmentError::Geometry(format!("{}: no row group {row_group}", self.info.id))
            })?;
        let selection =
            selection.unwrap_or_else(|| RowSelection::from(vec![RowSelector::select(rows)]));
        let id = self.id().clone();
        Ok(self
            .batches(columns, Some((row_group, selection)))?
            .map_err(move |e| SegmentError::parquet(&id, "reading a row group", e))
            .boxed())
    }

    /// `leaf_index`, `leaf_hash` and `leaf` of the selected rows of one row group, each
    /// present leaf checked against its stored hash.
    pub(crate) async fn selected_rows(
        &self,
        row_group: usize,
        selection: RowSelection,
    ) -> Result<Vec<SegmentRow>, SegmentError> {
        let id = self.id();
        let mut batches = self.row_group_batches(
            &[column::LEAF_INDEX, column::LEAF_HASH, column::LEAF],
            row_group,
            Some(selection),
        )?;
        let mut out = Vec::new();
        while let Some(batch) = batches.next().await {
            for row in batch_rows(id, &batch?)? {
                if let Some(leaf) = &row.leaf {
                    check_leaf_hash(id, row.leaf_index, &row.leaf_hash, leaf)?;
                }
                out.push(row);
            }
        }
        Ok(out)
    }

    /// The bloom filter of a column chunk, if the file has one.
    pub(crate) async fn bloom_filter(
        &self,
        row_group: usize,
        column_index: usize,
    ) -> Result<Option<parquet::bloom_filter::Sbbf>, SegmentError> {
        let mut builder = ParquetRecordBatchStreamBuilder::new_with_metadata(
            self.source.clone(),
            self.metadata.clone(),
        );
        builder
            .get_row_group_column_bloom_filter(row_group, column_index)
            .await
            .map_err(|e| SegmentError::parquet(self.id(), "reading a bloom filter", e))
    }
}

/// Record batches from the Parquet decoder, with a decoder panic turned into an error.
///
/// The open-time checks ([`check_chunks`]) reject damaged chunk and page geometry, but the
/// decoder still asserts on some damaged page contents (fuzzing found definition levels that
/// panic inside row decoding). A segment object is untrusted input: a damaged one must fail
/// with an error naming the segment, never take down the archiver or `auditledger-verify`.
/// After a panic the decoder's state is unknown, so the stream ends.
pub(crate) struct GuardedBatches {
    inner: Option<ParquetRecordBatchStream<Source>>,
}

impl GuardedBatches {
    fn new(inner: ParquetRecordBatchStream<Source>) -> Self {
        GuardedBatches { inner: Some(inner) }
    }
}

impl Stream for GuardedBatches {
    type Item = Result<RecordBatch, ParquetError>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        let Some(inner) = self.inner.as_mut() else {
            return std::task::Poll::Ready(None);
        };
        // The stream is dropped right after a panic, so no broken invariant is observed.
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| inner.poll_next_unpin(cx))) {
            Ok(poll) => poll,
            Err(panic) => {
                self.inner = None;
                let message = panic
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "unknown panic".to_owned());
                std::task::Poll::Ready(Some(Err(ParquetError::General(format!(
                    "the Parquet decoder failed on damaged data: {message}"
                )))))
            }
        }
    }
}

/// Checks that every column chunk lies inside the file. The Parquet reader asserts this and
/// panics on a negative offset or length (`ColumnChunkMetaData::byte_range`); a segment
/// object is untrusted input and must fail with an error instead.
fn check_chunks(
    metadata: &ArrowReaderMetadata,
    expected: &SegmentId,
    file_size: u64,
) -> Result<(), SegmentError> {
    for (g, group) in metadata.metadata().row_groups().iter().enumerate() {
        let page_index = metadata.metadata().page_index_for_row_group(g);
        for (c, chunk) in group.columns().iter().enumerate() {
            let start = chunk
                .dictionary_page_offset()
                .unwrap_or_else(|| chunk.data_page_offset());
            let len = chunk.compressed_size();
            let end = u64::try_from(start)
                .ok()
                .zip(u64::try_from(len).ok())
                .and_then(|(s, l)| s.checked_add(l));
            let Some(end) = end.filter(|end| *end <= file_size) else {
                return Err(SegmentError::parquet(
                    expected,
                    "column chunk outside the file",
                    ParquetError::General(format!(
                        "row group {g}, column {}: offset {start}, length {len}, file {file_size} bytes",
                        chunk.column_path()
                    )),
                ));
            };
            // The reader subtracts the chunk start from page offsets and builds row ranges
            // from consecutive first-row indexes (and panics on underflow): every page of the
            // offset index must lie inside its chunk, after the previous page, and start at a
            // row after the previous page's, the first at row 0, all inside the row group.
            let rows = group.num_rows();
            let mut previous: Option<(i64, i64)> = None;
            for page in page_index.page_locations(c).into_iter().flatten() {
                let ordered = match previous {
                    None => page.first_row_index == 0,
                    Some((offset, first_row)) => {
                        page.offset > offset && page.first_row_index > first_row
                    }
                };
                if !ordered || page.first_row_index >= rows.max(1) {
                    return Err(SegmentError::parquet(
                        expected,
                        "page index entries out of order",
                        ParquetError::General(format!(
                            "row group {g} ({rows} rows), column {}: page at offset {} starts at row {} (previous: {previous:?})",
                            chunk.column_path(),
                            page.offset,
                            page.first_row_index
                        )),
                    ));
                }
                previous = Some((page.offset, page.first_row_index));
                let page_end = u64::try_from(page.offset)
                    .ok()
                    .filter(|offset| *offset >= start as u64)
                    .zip(u64::try_from(page.compressed_page_size).ok())
                    .and_then(|(o, l)| o.checked_add(l));
                if page_end.is_none_or(|page_end| page_end > end) {
                    return Err(SegmentError::parquet(
                        expected,
                        "page index entry outside its column chunk",
                        ParquetError::General(format!(
                            "row group {g}, column {}: page at offset {}, {} bytes; chunk [{start}, {end})",
                            chunk.column_path(),
                            page.offset,
                            page.compressed_page_size
                        )),
                    ));
                }
            }
        }
    }
    Ok(())
}

/// Decodes the file metadata and checks it names the expected segment.
fn read_info(
    metadata: &ArrowReaderMetadata,
    expected: &SegmentId,
    file_size: u64,
) -> Result<SegmentInfo, SegmentError> {
    let file = metadata.metadata().file_metadata();
    let pairs = file.key_value_metadata();
    let get = |key: &'static str| -> Result<&str, SegmentError> {
        pairs
            .and_then(|kv| kv.iter().find(|pair| pair.key == key))
            .and_then(|pair| pair.value.as_deref())
            .ok_or_else(|| SegmentError::Metadata {
                segment: expected.to_string(),
                key,
                reason: "missing".into(),
            })
    };
    let bad = |key: &'static str, reason: String| SegmentError::Metadata {
        segment: expected.to_string(),
        key,
        reason,
    };
    let number = |key: &'static str| -> Result<u64, SegmentError> {
        let text = get(key)?;
        parse_decimal(text).ok_or_else(|| bad(key, format!("{text:?} is not a decimal number")))
    };
    let format = get(metadata_key::FORMAT)?;
    if format != FORMAT_NAME {
        return Err(bad(
            metadata_key::FORMAT,
            format!("{format:?} is not {FORMAT_NAME:?}: not a segment file"),
        ));
    }
    let version = number(metadata_key::FORMAT_VERSION)?;
    if version != u64::from(FORMAT_VERSION) {
        return Err(bad(
            metadata_key::FORMAT_VERSION,
            format!("version {version} is not supported (this build reads {FORMAT_VERSION})"),
        ));
    }
    let origin = get(metadata_key::ORIGIN)?;
    if origin != expected.origin() {
        return Err(bad(
            metadata_key::ORIGIN,
            format!("{origin:?}, expected {:?}", expected.origin()),
        ));
    }
    for (key, expected_value) in [
        (metadata_key::START, expected.start()),
        (metadata_key::COUNT, expected.count()),
    ] {
        let found = number(key)?;
        if found != expected_value {
            return Err(bad(key, format!("{found}, expected {expected_value}")));
        }
    }
    let root_text = get(metadata_key::SEGMENT_ROOT)?;
    let root = parse_hash_hex(root_text).ok_or_else(|| {
        bad(
            metadata_key::SEGMENT_ROOT,
            format!("{root_text:?} is not 64 lowercase hex digits"),
        )
    })?;
    Ok(SegmentInfo {
        id: expected.clone(),
        root,
        expired_leaves: number(metadata_key::EXPIRED_LEAVES)?,
        format_version: FORMAT_VERSION,
        file_size,
    })
}

fn check_column(
    metadata: &ArrowReaderMetadata,
    id: &SegmentId,
    name: &'static str,
    data_type: &DataType,
) -> Result<(), SegmentError> {
    let schema = metadata.schema();
    let field = schema
        .field_with_name(name)
        .map_err(|_| SegmentError::Schema {
            segment: id.to_string(),
            column: name,
            reason: "missing".into(),
        })?;
    if field.data_type() != data_type {
        return Err(SegmentError::Schema {
            segment: id.to_string(),
            column: name,
            reason: format!("type {}, expected {data_type}", field.data_type()),
        });
    }
    Ok(())
}

/// Canonical decimal: digits only, no leading zero except "0".
pub(crate) fn parse_decimal(text: &str) -> Option<u64> {
    let canonical = text == "0"
        || (!text.is_empty() && !text.starts_with('0') && text.bytes().all(|b| b.is_ascii_digit()));
    canonical.then(|| text.parse().ok()).flatten()
}

/// 64 lowercase hex digits.
pub(crate) fn parse_hash_hex(text: &str) -> Option<Hash> {
    if text.len() != 2 * HASH_LEN || !text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    let mut hash = [0u8; HASH_LEN];
    hex::decode_to_slice(text, &mut hash).ok()?;
    Some(hash)
}

/// The verification columns of one batch.
struct BatchColumns<'a> {
    leaf_index: &'a UInt64Array,
    leaf_hash: &'a FixedSizeBinaryArray,
    leaf: Option<&'a BinaryArray>,
    logged_at: Option<&'a UInt64Array>,
}

impl<'a> BatchColumns<'a> {
    fn of(id: &SegmentId, batch: &'a RecordBatch) -> Result<Self, SegmentError> {
        fn get<'b, T: 'static>(
            id: &SegmentId,
            batch: &'b RecordBatch,
            name: &'static str,
        ) -> Result<Option<&'b T>, SegmentError> {
            let Some(array) = batch.column_by_name(name) else {
                return Ok(None);
            };
            array
                .as_any()
                .downcast_ref::<T>()
                .map(Some)
                .ok_or_else(|| SegmentError::Schema {
                    segment: id.to_string(),
                    column: name,
                    reason: format!("unexpected type {}", array.data_type()),
                })
        }
        let required = |name: &'static str| SegmentError::Schema {
            segment: id.to_string(),
            column: name,
            reason: "missing".into(),
        };
        Ok(BatchColumns {
            leaf_index: get(id, batch, column::LEAF_INDEX)?
                .ok_or_else(|| required(column::LEAF_INDEX))?,
            leaf_hash: get(id, batch, column::LEAF_HASH)?
                .ok_or_else(|| required(column::LEAF_HASH))?,
            leaf: get(id, batch, column::LEAF)?,
            logged_at: get(id, batch, column::LOGGED_AT)?,
        })
    }

    fn leaf_index(&self, row: usize) -> Option<u64> {
        self.leaf_index
            .is_valid(row)
            .then(|| self.leaf_index.value(row))
    }

    fn leaf_hash(&self, row: usize) -> Option<Hash> {
        if !self.leaf_hash.is_valid(row) {
            return None;
        }
        self.leaf_hash.value(row).try_into().ok()
    }

    fn leaf(&self, row: usize) -> Option<&'a [u8]> {
        let leaf = self.leaf?;
        leaf.is_valid(row).then(|| leaf.value(row))
    }

    fn logged_at(&self, row: usize) -> Option<u64> {
        let logged_at = self.logged_at?;
        logged_at.is_valid(row).then(|| logged_at.value(row))
    }
}

fn check_leaf_hash(
    id: &SegmentId,
    leaf_index: u64,
    stored: &Hash,
    leaf: &[u8],
) -> Result<(), SegmentError> {
    let computed = leaf_hash(leaf);
    if computed != *stored {
        return Err(SegmentError::leaf(
            id,
            leaf_index,
            LeafProblem::HashMismatch {
                stored: hash_hex(stored),
                computed: hash_hex(&computed),
            },
        ));
    }
    Ok(())
}

/// Rows of one batch, as stored (null checks only).
fn batch_rows(id: &SegmentId, batch: &RecordBatch) -> Result<Vec<SegmentRow>, SegmentError> {
    let columns = BatchColumns::of(id, batch)?;
    (0..batch.num_rows())
        .map(|row| {
            let leaf_index = columns
                .leaf_index(row)
                .ok_or_else(|| SegmentError::Schema {
                    segment: id.to_string(),
                    column: column::LEAF_INDEX,
                    reason: "null value".into(),
                })?;
            let leaf_hash = columns.leaf_hash(row).ok_or_else(|| {
                SegmentError::leaf(
                    id,
                    leaf_index,
                    LeafProblem::Null {
                        column: column::LEAF_HASH,
                    },
                )
            })?;
            Ok(SegmentRow {
                leaf_index,
                leaf_hash,
                leaf: columns.leaf(row).map(<[u8]>::to_vec),
            })
        })
        .collect()
}

/// Checks rows one by one in file order: contiguity, completeness, leaf hashes; folds the
/// hashes into the segment root.
/// What [`RowChecker::row`] knows about a row's leaf bytes.
#[derive(Clone, Copy)]
enum LeafCheck {
    /// The leaf bytes were not read.
    NotChecked,
    /// The row has no leaf bytes (expired).
    Absent,
    /// The hash of the row's leaf bytes.
    Hashed(Hash),
}

/// [`LeafCheck`] of every row of a batch; the present leaves are hashed together (several
/// per SIMD lane group, [`leaf_hashes`]), which is most of the time of a full verification.
fn leaf_checks(columns: &BatchColumns<'_>, rows: usize) -> Vec<LeafCheck> {
    let present: Vec<&[u8]> = (0..rows).filter_map(|row| columns.leaf(row)).collect();
    let mut hashes = leaf_hashes(&present).into_iter();
    (0..rows)
        .map(|row| match columns.leaf(row) {
            Some(_) => LeafCheck::Hashed(hashes.next().expect("one hash per present leaf")),
            None => LeafCheck::Absent,
        })
        .collect()
}

struct RowChecker<'a> {
    id: &'a SegmentId,
    range: CompactRange,
    expired_leaves: u64,
}

impl<'a> RowChecker<'a> {
    fn new(id: &'a SegmentId) -> Self {
        RowChecker {
            id,
            range: CompactRange::new(id.start()),
            expired_leaves: 0,
        }
    }

    /// Checks row `row` of `columns` and, as `leaf` says, its leaf bytes. Returns its hash.
    fn row(
        &mut self,
        columns: &BatchColumns<'_>,
        row: usize,
        leaf: LeafCheck,
    ) -> Result<Hash, SegmentError> {
        let expected = self.range.end();
        let found = columns.leaf_index(row).ok_or_else(|| {
            SegmentError::leaf(
                self.id,
                expected,
                LeafProblem::Null {
                    column: column::LEAF_INDEX,
                },
            )
        })?;
        if found != expected {
            let problem = if found >= self.id.end() {
                LeafProblem::BeyondEnd { found }
            } else if found > expected {
                LeafProblem::Missing { next_found: found }
            } else {
                LeafProblem::OutOfOrder { found }
            };
            return Err(SegmentError::leaf(self.id, expected, problem));
        }
        let hash = columns.leaf_hash(row).ok_or_else(|| {
            SegmentError::leaf(
                self.id,
                expected,
                LeafProblem::Null {
                    column: column::LEAF_HASH,
                },
            )
        })?;
        match leaf {
            LeafCheck::NotChecked => {}
            LeafCheck::Absent => self.expired_leaves += 1,
            LeafCheck::Hashed(computed) if computed != hash => {
                return Err(SegmentError::leaf(
                    self.id,
                    expected,
                    LeafProblem::HashMismatch {
                        stored: hash_hex(&hash),
                        computed: hash_hex(&computed),
                    },
                ));
            }
            LeafCheck::Hashed(_) => {}
        }
        self.range.append(hash);
        Ok(hash)
    }

    /// The segment root and the number of expired rows, once every row was seen.
    fn finish(self) -> Result<(Hash, u64), SegmentError> {
        if self.range.end() != self.id.end() {
            return Err(SegmentError::Incomplete {
                segment: self.id.to_string(),
                rows: self.range.end() - self.id.start(),
                expected: self.id.count(),
                first_missing: self.range.end(),
            });
        }
        match self.range.nodes() {
            [(node, hash)] if *node == self.id.node() => Ok((*hash, self.expired_leaves)),
            nodes => unreachable!("segment range folded into {} nodes", nodes.len()),
        }
    }
}

/// The perfect subtree of one segment, every node in memory (2 × 32 bytes per leaf): answers
/// the segment's share of inclusion and consistency proofs. Node ids are the log's.
#[derive(Clone, Debug)]
pub struct SegmentTree {
    id: SegmentId,
    tree: MemoryTree,
}

impl SegmentTree {
    /// Builds the tree from the segment's leaf hashes, in order.
    pub fn new(id: SegmentId, leaf_hashes: &[Hash]) -> Result<Self, SegmentError> {
        if leaf_hashes.len() as u64 != id.count() {
            return Err(SegmentError::Incomplete {
                segment: id.to_string(),
                rows: leaf_hashes.len() as u64,
                expected: id.count(),
                first_missing: id.start() + leaf_hashes.len() as u64,
            });
        }
        let mut tree = MemoryTree::new();
        for hash in leaf_hashes {
            tree.append(*hash);
        }
        Ok(SegmentTree { id, tree })
    }

    pub fn id(&self) -> &SegmentId {
        &self.id
    }

    /// Root of the segment: the hash of node [`SegmentId::node`].
    pub fn root(&self) -> Hash {
        // A full power-of-two tree has its root at level `bits`, index 0.
        self.tree
            .node(NodeId::new(self.id.bits(), 0))
            .unwrap_or_else(|| unreachable!("a full segment tree has a root"))
    }

    /// Hash of a node of the log's tree that lies inside this segment.
    pub fn node(&self, node: NodeId) -> Option<Hash> {
        if node.level > self.id.bits()
            || node.begin() < self.id.start()
            || node.end() > self.id.end()
        {
            return None;
        }
        self.tree.node(NodeId::new(
            node.level,
            node.index - (self.id.start() >> node.level),
        ))
    }
}

impl HashReader for SegmentTree {
    fn read_hashes(&self, nodes: &[NodeId]) -> Result<Vec<Hash>, MerkleError> {
        nodes
            .iter()
            .map(|&node| {
                self.node(node)
                    .ok_or_else(|| MerkleError::Reader(Box::new(MissingNode(node))))
            })
            .collect()
    }
}

/// Rewrites a segment with the content of the leaves `expire` selects dropped (their `leaf`
/// and typed columns null), keeping every leaf hash and so the segment root. Leaves already
/// expired stay expired (`expire` is not asked about them). Checks every present leaf against its hash while copying, and the
/// new file's root against the old one's.
pub async fn rewrite_expired<W, F>(
    reader: &SegmentReader,
    sink: W,
    options: &WriteOptions,
    mut expire: F,
) -> Result<(W, SegmentSummary), SegmentError>
where
    W: Write + Send,
    F: FnMut(&ExpiryCandidate<'_>) -> bool,
{
    let id = reader.id();
    let mut writer = SegmentWriter::new(sink, id.clone(), options)?;
    let mut checker = RowChecker::new(id);
    let mut batches = reader.batches(
        &[
            column::LEAF_INDEX,
            column::LEAF_HASH,
            column::LEAF,
            column::LOGGED_AT,
        ],
        None,
    )?;
    while let Some(batch) = batches.next().await {
        let batch = batch.map_err(|e| SegmentError::parquet(id, "reading rows", e))?;
        let columns = BatchColumns::of(id, &batch)?;
        let checks = leaf_checks(&columns, batch.num_rows());
        for (row, leaf) in checks.into_iter().enumerate() {
            let leaf_index = writer.next_leaf_index();
            let hash = checker.row(&columns, row, leaf)?;
            match columns.leaf(row) {
                Some(leaf) => {
                    let record = decode_leaf(leaf)
                        .map_err(|e| SegmentError::leaf(id, leaf_index, LeafProblem::Decode(e)))?;
                    let candidate = ExpiryCandidate {
                        leaf_index,
                        record: &record,
                    };
                    if expire(&candidate) {
                        writer.push_expired(hash, Some(record.logged_at))?;
                    } else {
                        writer.push_decoded(leaf, &record)?;
                    }
                }
                None => writer.push_expired(hash, columns.logged_at(row))?,
            }
        }
    }
    let (root, _) = checker.finish()?;
    if root != reader.info().root {
        return Err(SegmentError::RootMismatch {
            segment: id.to_string(),
            computed: hash_hex(&root),
            expected: hash_hex(&reader.info().root),
        });
    }
    let (sink, summary) = writer.finish()?;
    debug_assert_eq!(summary.root, root);
    Ok((sink, summary))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn page_index_entry_outside_its_chunk_is_an_error() {
        // Found by fuzz/fuzz_targets/segment_reader.rs: two byte edits of a real segment (the
        // target's odd mode) left an offset-index page before its column chunk, and the
        // Parquet reader panicked subtracting the chunk start from it.
        let err = open_edited_segment(include_bytes!(
            "../../../fuzz/corpus/segment_reader/regress-page-location-before-chunk"
        ))
        .await;
        assert!(
            err.contains("page index entry outside its column chunk"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn page_index_rows_out_of_order_is_an_error() {
        // Found by the same target (in CI): an edit made a page's first row index go
        // backwards, and the Parquet reader panicked building row ranges from it.
        let err = open_edited_segment(include_bytes!(
            "../../../fuzz/corpus/segment_reader/regress-page-rows-out-of-order"
        ))
        .await;
        assert!(err.contains("page index entries out of order"), "{err}");
    }

    #[tokio::test]
    async fn decoder_panic_on_damaged_pages_is_an_error() {
        // Found by the same target (in CI): an edit damaged a page's definition levels, which
        // passes every open-time check, and the Parquet decoder panicked inside row decoding.
        // `GuardedBatches` turns that into an error naming the segment.
        let (file, id) = edited_segment(include_bytes!(
            "../../../fuzz/corpus/segment_reader/regress-definition-levels"
        ));
        let reader = SegmentReader::from_bytes(file, &id)
            .await
            .expect("this damage is only visible when decoding");
        let mut errors = vec![reader.verify(&[0; 32]).await.map(|_| ()).unwrap_err()];
        for leaf_index in id.start()..id.end() {
            if let Err(e) = reader.leaf(leaf_index).await {
                errors.push(e);
            }
        }
        let decoder_errors: Vec<String> = errors
            .iter()
            .map(ToString::to_string)
            .filter(|e| e.contains("the Parquet decoder failed on damaged data"))
            .collect();
        assert!(!decoder_errors.is_empty(), "{errors:?}");
        assert!(
            decoder_errors[0].contains(&id.to_string()),
            "{decoder_errors:?}"
        );
    }

    /// Rebuilds the fuzz target's real segment and applies an edit-mode input's byte edits.
    fn edited_segment(input: &[u8]) -> (Bytes, SegmentId) {
        use auditledger_ledger::event::{AuditEvent, EventKind, encode_event, encode_leaf};
        let id = SegmentId::new("auditledger.fuzz/acme/prod", 8, 3).unwrap();
        let leaves: Vec<Vec<u8>> = (8..16u64)
            .map(|i| {
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
            })
            .collect();
        let (mut file, _) =
            crate::segment::write_segment(id.clone(), &leaves, &WriteOptions::default()).unwrap();
        assert_eq!(input[0] % 2, 1, "an edit-mode input");
        for edit in input[1..].chunks_exact(3).take(64) {
            let offset = usize::from(u16::from_le_bytes([edit[0], edit[1]])) % file.len();
            file[offset] ^= edit[2];
        }
        (Bytes::from(file), id)
    }

    /// Opens an edited segment ([`edited_segment`]) and returns why opening failed (panics
    /// if it opened).
    async fn open_edited_segment(input: &[u8]) -> String {
        let (file, id) = edited_segment(input);
        // Before the fixes, opening succeeded and the first read panicked.
        match SegmentReader::from_bytes(file, &id).await {
            Err(err) => err.to_string(),
            Ok(_) => panic!("the damaged segment opened"),
        }
    }

    #[tokio::test]
    async fn column_chunk_outside_the_file_is_an_error() {
        // Found by fuzz/fuzz_targets/segment_reader.rs: a segment whose footer gives a column
        // chunk a negative offset made the Parquet reader panic on the first read.
        let input =
            include_bytes!("../../../fuzz/corpus/segment_reader/regress-negative-chunk-offset");
        let id = SegmentId::new("auditledger.fuzz/acme/prod", 8, 3).unwrap();
        let err = match SegmentReader::from_bytes(Bytes::from_static(&input[1..]), &id).await {
            Ok(reader) => reader.verify(&[0; 32]).await.map(|_| ()).unwrap_err(),
            Err(e) => e,
        };
        assert!(
            err.to_string().contains("column chunk outside the file"),
            "{err}"
        );
    }
}
