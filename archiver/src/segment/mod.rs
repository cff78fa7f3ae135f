//! Segment files: one Parquet file per full segment of a log (DESIGN §6).
//!
//! A segment is the leaf range `[start, start + 2^bits)` of one log with `start` a multiple of
//! `2^bits`: a complete subtree, so its root is the tree node `(level bits, index start >> bits)`
//! and proofs can be built from the segment's leaf hashes alone.
//!
//! # File format, version 1
//!
//! One row per leaf, sorted by `leaf_index`, every leaf of the range present exactly once.
//!
//! | column | Parquet type | notes |
//! |---|---|---|
//! | `leaf_index` | `INT64 (UINT_64)` | required, contiguous from `start`; delta encoded |
//! | `leaf_hash` | `FIXED_LEN_BYTE_ARRAY(32)` | required, `BLAKE3(0x00 ‖ leaf)` |
//! | `leaf` | `BYTE_ARRAY` | the verbatim leaf bytes (canonical `LeafRecord`); null = content expired |
//! | `logged_at` | `INT64 (UINT_64)` | server time, unix nanoseconds; kept on expiry |
//! | `occurred_at` | `INT64 (UINT_64)` | sender time, unix nanoseconds |
//! | `event_kind` | `BYTE_ARRAY (STRING)` | `TOOL_CALL`, `APPROVAL`, … (enum name without prefix) |
//! | `event_id` | `BYTE_ARRAY (STRING)` | UUIDv7; bloom filter |
//! | `user_id`, `agent_id` | `BYTE_ARRAY (STRING)` | `user_id` has a bloom filter |
//! | `tool_server`, `tool_name` | `BYTE_ARRAY (STRING)` | |
//! | `session_id`, `correlation_id` | `BYTE_ARRAY (STRING)` | bloom filters |
//! | `trace_id` | `BYTE_ARRAY (STRING)` | W3C trace id, 32 hex digits |
//! | `decision` | `BYTE_ARRAY (STRING)` | `ALLOW`, `DENY`, `REQUIRE_APPROVAL`, `MODIFY`; null = none |
//! | `data_classification` | `BYTE_ARRAY (STRING)` | |
//!
//! The typed columns (from `logged_at` on) are decoded from the leaf for search and for
//! other tools (DuckDB, Spark); they are derived data, never part of a proof. An empty string
//! field of the event is stored as null. An expired row keeps `leaf_index`, `leaf_hash` and
//! `logged_at` and has every other column null.
//!
//! Column chunks are zstd-compressed; low-cardinality columns are dictionary encoded,
//! high-entropy ones (ids, hashes, leaves) are not. Bloom filters cover `event_id`,
//! `session_id`, `correlation_id` and `user_id`. File key/value metadata (all values text):
//!
//! | key | value |
//! |---|---|
//! | `auditledger.format` | `auditledger-segment` |
//! | `auditledger.format_version` | `1` ([`FORMAT_VERSION`]) |
//! | `auditledger.origin` | the log's origin line |
//! | `auditledger.start` | first leaf index, decimal |
//! | `auditledger.count` | number of leaves, decimal, a power of two |
//! | `auditledger.segment_root` | root of the segment's subtree, 64 lowercase hex digits |
//! | `auditledger.expired_leaves` | number of rows whose `leaf` is null, decimal |
//!
//! Readers find columns by name and ignore columns they do not know, so later versions may
//! add typed columns without a format version change.

mod reader;
mod schema;
mod writer;

use std::fmt;

use auditledger_ledger::event::LeafError;
use auditledger_ledger::merkle::{Hash, NodeId};
use parquet::errors::ParquetError;

pub use reader::{ExpiryCandidate, SegmentReader, SegmentTree, VerifiedSegment, rewrite_expired};
pub(crate) use reader::{parse_decimal, parse_hash_hex};
#[cfg(feature = "engine")]
pub(crate) use schema::TypedColumns;
pub use schema::{FORMAT_VERSION, column, metadata_key, segment_schema};
pub use writer::{
    RangeSummary, RangeWriter, SegmentSummary, SegmentWriter, WriteOptions, write_segment,
};

/// Largest supported segment: 2^32 leaves.
pub const MAX_SEGMENT_BITS: u8 = 32;

/// Which leaves a segment holds: `[start, start + 2^bits)` of the log named by `origin`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SegmentId {
    origin: String,
    start: u64,
    bits: u8,
}

impl SegmentId {
    /// A segment of `2^bits` leaves starting at `start`, which must be a multiple of `2^bits`.
    pub fn new(origin: impl Into<String>, start: u64, bits: u8) -> Result<Self, SegmentError> {
        let origin = origin.into();
        if origin.is_empty() || origin.contains(char::is_whitespace) {
            return Err(SegmentError::Geometry(format!(
                "origin {origin:?} must be non-empty and contain no whitespace"
            )));
        }
        if bits > MAX_SEGMENT_BITS {
            return Err(SegmentError::Geometry(format!(
                "segment of 2^{bits} leaves is larger than the 2^{MAX_SEGMENT_BITS} supported"
            )));
        }
        let count = 1u64 << bits;
        if !start.is_multiple_of(count) {
            return Err(SegmentError::Geometry(format!(
                "start {start} is not a multiple of the segment size 2^{bits} = {count}"
            )));
        }
        if start.checked_add(count).is_none() {
            return Err(SegmentError::Geometry(format!(
                "segment [{start}, {start} + 2^{bits}) overflows the leaf index"
            )));
        }
        Ok(SegmentId {
            origin,
            start,
            bits,
        })
    }

    /// The segment covering `[start, end)`, which must be an aligned power-of-two range.
    pub fn from_range(
        origin: impl Into<String>,
        start: u64,
        end: u64,
    ) -> Result<Self, SegmentError> {
        let count = end.checked_sub(start).filter(|c| c.is_power_of_two());
        let Some(count) = count else {
            return Err(SegmentError::Geometry(format!(
                "[{start}, {end}) is not a power-of-two leaf range"
            )));
        };
        Self::new(origin, start, count.trailing_zeros() as u8)
    }

    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// First leaf index.
    pub fn start(&self) -> u64 {
        self.start
    }

    /// One past the last leaf index.
    pub fn end(&self) -> u64 {
        self.start + self.count()
    }

    /// log2 of the number of leaves.
    pub fn bits(&self) -> u8 {
        self.bits
    }

    /// Number of leaves.
    pub fn count(&self) -> u64 {
        1 << self.bits
    }

    /// The tree node whose hash is the segment root.
    pub fn node(&self) -> NodeId {
        NodeId::new(self.bits, self.start >> self.bits)
    }

    /// Whether `leaf_index` lies in this segment.
    pub fn contains(&self, leaf_index: u64) -> bool {
        (self.start..self.end()).contains(&leaf_index)
    }
}

impl fmt::Display for SegmentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "segment {} [{},{})", self.origin, self.start, self.end())
    }
}

/// What the file says about itself (its key/value metadata), checked against the expected
/// [`SegmentId`] when it was opened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SegmentInfo {
    pub id: SegmentId,
    /// Segment root recorded by the writer (not yet verified against the rows).
    pub root: Hash,
    /// Rows whose `leaf` is null, as recorded by the writer.
    pub expired_leaves: u64,
    pub format_version: u32,
    /// Size of the file in bytes.
    pub file_size: u64,
}

/// One row of a segment: what proofs and `GetEntries` need.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SegmentRow {
    pub leaf_index: u64,
    pub leaf_hash: Hash,
    /// The verbatim leaf bytes; `None` when the content has expired.
    pub leaf: Option<Vec<u8>>,
}

/// What is wrong with one row of a segment.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LeafProblem {
    #[error("leaf_hash does not match leaf bytes (stored {stored}, computed {computed})")]
    HashMismatch { stored: String, computed: String },
    #[error(
        "no row for this leaf (the next row has leaf_index {next_found}): rows are missing or out of order"
    )]
    Missing { next_found: u64 },
    #[error(
        "a row with leaf_index {found} is where this leaf belongs: rows are duplicated or out of order"
    )]
    OutOfOrder { found: u64 },
    #[error("leaf_index {found} is beyond the end of the segment")]
    BeyondEnd { found: u64 },
    #[error("`{column}` is null")]
    Null { column: &'static str },
    #[error("leaf bytes are not a valid LeafRecord: {0}")]
    Decode(#[source] LeafError),
    #[error(
        "typed column `{column}` holds {column_value:?} but the leaf decodes to {leaf_value:?}: the derived columns disagree with the leaf"
    )]
    ColumnDisagrees {
        column: &'static str,
        column_value: Option<String>,
        leaf_value: Option<String>,
    },
}

/// Why a segment could not be written, read or verified. Every message names the segment and,
/// for row-level problems, the leaf index.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SegmentError {
    #[error("invalid segment: {0}")]
    Geometry(String),
    #[error("{segment}: {context}: {source}")]
    Parquet {
        segment: String,
        context: &'static str,
        #[source]
        source: ParquetError,
    },
    #[error("{segment}: {context}: {source}")]
    Arrow {
        segment: String,
        context: &'static str,
        #[source]
        source: arrow::error::ArrowError,
    },
    #[error("{segment}: file metadata `{key}`: {reason}")]
    Metadata {
        segment: String,
        key: &'static str,
        reason: String,
    },
    #[error("{segment}: column `{column}`: {reason}")]
    Schema {
        segment: String,
        column: &'static str,
        reason: String,
    },
    #[error("{segment}: leaf {leaf_index}: {problem}")]
    Leaf {
        segment: String,
        leaf_index: u64,
        problem: LeafProblem,
    },
    #[error(
        "{segment}: only {rows} of {expected} rows; leaves from {first_missing} on are missing"
    )]
    Incomplete {
        segment: String,
        rows: u64,
        expected: u64,
        first_missing: u64,
    },
    #[error("{segment}: segment root {computed} does not match the expected root {expected}")]
    RootMismatch {
        segment: String,
        computed: String,
        expected: String,
    },
    #[error("{segment}: rows have {counted} expired leaves but the file metadata says {recorded}")]
    ExpiredCountMismatch {
        segment: String,
        counted: u64,
        recorded: u64,
    },
    #[error("{segment}: already holds all {count} leaves")]
    Full { segment: String, count: u64 },
    #[error("{segment}: leaf {leaf_index} is not in this segment")]
    OutOfRange { segment: String, leaf_index: u64 },
}

impl SegmentError {
    pub(crate) fn leaf(id: &SegmentId, leaf_index: u64, problem: LeafProblem) -> Self {
        SegmentError::Leaf {
            segment: id.to_string(),
            leaf_index,
            problem,
        }
    }

    pub(crate) fn parquet(id: &SegmentId, context: &'static str, source: ParquetError) -> Self {
        SegmentError::Parquet {
            segment: id.to_string(),
            context,
            source,
        }
    }
}

/// Lowercase hex of a hash, for messages and metadata.
pub(crate) fn hash_hex(hash: &Hash) -> String {
    hex::encode(hash)
}
