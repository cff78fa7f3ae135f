//! Tiering of the ledger: full segments of the hot RocksDB tier move to Parquet on object
//! storage (warm, then cold) by retention policy, without breaking any proof (DESIGN §6).
//!
//! The building blocks, bottom up:
//! - [`segment`]: the Parquet segment file — writer, streaming reader, verification against a
//!   root, single-leaf and leaf-hash reads for proofs, and the expiry rewrite that drops
//!   content but keeps every hash;
//! - [`manifest`]: the signed segment manifest that pins a segment object (range, root,
//!   object name, BLAKE3, size);
//! - [`store`]: object stores from URLs (local filesystem by default, `s3://`), retries, and
//!   the object naming scheme.
//!
//! The segment geometry — 2^`segment_bits` leaves, a complete subtree — is recorded per log by
//! the ledger (`Log::segment_bits`).

pub mod manifest;
pub mod segment;
pub mod store;

pub use manifest::{ManifestError, SegmentManifest, VerifiedManifest};
pub use segment::{
    SegmentError, SegmentId, SegmentInfo, SegmentReader, SegmentRow, SegmentSummary, SegmentTree,
    SegmentWriter, WriteOptions, write_segment,
};
pub use store::{RetryPolicy, SegmentStore, StoreError, StoreOptions};
