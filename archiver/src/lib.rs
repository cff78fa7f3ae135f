//! Tiering of the ledger: full segments of the hot RocksDB tier move to Parquet on object
//! storage (warm, then cold) by retention policy, without breaking any proof (DESIGN §6).
//!
//! The building blocks, bottom up:
//! - [`segment`]: the Parquet segment file — writer, streaming reader, verification against a
//!   root, single-leaf and leaf-hash reads for proofs, and the expiry rewrite that drops
//!   content but keeps every hash;
//! - [`manifest`]: the signed segment manifest that pins a segment object (range, root,
//!   object name, BLAKE3, size);
//! - [`anchor`]: the segment anchor that ties a segment to the log's signed checkpoints
//!   (inclusion of its root, consistency with the previous segment's anchor);
//! - [`store`]: object stores from URLs (local filesystem by default, `s3://`), retries, and
//!   the object naming scheme;
//! - [`engine`]: the [`Archiver`] — crash-safe moves hot → warm → cold, retention expiry under
//!   legal holds, metrics;
//! - [`tier_reader`]: [`TierReader`], leaf contents from whichever tier holds them, and event
//!   searches over one archived segment ([`search`]: Parquet pruning by statistics and bloom
//!   filters, leaves read for candidate rows only).
//!
//! `engine`, `tier_reader`, `search` and `metrics` need a RocksDB ledger and sit behind the
//! default `engine` feature; without it (the offline verifier) the crate reads and checks
//! archives only.
//!
//! The segment geometry — 2^`segment_bits` leaves, a complete subtree — is recorded per log by
//! the ledger (`Log::segment_bits`).

pub mod anchor;
#[cfg(feature = "engine")]
pub mod engine;
pub mod error;
pub mod export;
pub mod manifest;
#[cfg(feature = "engine")]
pub mod metrics;
#[cfg(feature = "engine")]
pub mod search;
pub mod segment;
pub mod store;
#[cfg(feature = "engine")]
pub mod tier_reader;

pub use anchor::{AnchorError, SegmentAnchor, VerifiedAnchor};
#[cfg(feature = "engine")]
pub use engine::{
    Archiver, ArchiverConfig, CRASH_ENV, Deletion, DeletionHook, EXPIRY_STEPS, HOT_TO_WARM_STEPS,
    MoveHook, PassReport, SegmentMove, TierStores, WARM_TO_COLD_STEPS, allow_deletions,
};
pub use error::ArchiveError;
pub use manifest::{ManifestError, SegmentManifest, VerifiedManifest};
#[cfg(feature = "engine")]
pub use metrics::{ArchiverMetrics, MetricsSnapshot};
#[cfg(feature = "engine")]
pub use search::SearchStats;
pub use segment::{
    SegmentError, SegmentId, SegmentInfo, SegmentReader, SegmentRow, SegmentSummary, SegmentTree,
    SegmentWriter, WriteOptions, write_segment,
};
pub use store::{RetryPolicy, SegmentStore, StoreError, StoreOptions};
#[cfg(feature = "engine")]
pub use tier_reader::{LeafContent, TierReader};
