//! Errors of the archiver engine and of tier reads. Every message names the log, the segment or
//! leaf, and the step that failed.

use auditledger_ledger::LedgerError;

use crate::manifest::ManifestError;
use crate::segment::SegmentError;
use crate::store::StoreError;

/// Why a tier move, an expiry or a leaf read failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ArchiveError {
    /// The hot store refused or failed an operation.
    #[error("{segment}: {step}: {source}")]
    Ledger {
        segment: String,
        step: &'static str,
        #[source]
        source: LedgerError,
    },
    /// An object store operation failed (after its retries).
    #[error("{segment}: {step}: {source}")]
    Store {
        segment: String,
        step: &'static str,
        #[source]
        source: StoreError,
    },
    /// A segment file could not be written, read or verified.
    #[error("{step}: {source}")]
    Segment {
        step: &'static str,
        #[source]
        source: SegmentError,
    },
    /// A manifest could not be signed, read or did not match.
    #[error("{segment}: {step}: {source}")]
    Manifest {
        segment: String,
        step: &'static str,
        #[source]
        source: ManifestError,
    },
    /// An object does not match what its segment record pins.
    #[error("{segment}: object {path} in the {tier} tier: {reason}")]
    ObjectMismatch {
        segment: String,
        tier: &'static str,
        path: String,
        reason: String,
    },
    /// A segment anchor could not be made, was missing, or did not verify.
    #[error("{segment}: {step}: {reason}")]
    Anchor {
        segment: String,
        step: &'static str,
        reason: String,
    },
    /// The hot store does not hold every leaf of a segment it has not released.
    #[error("{segment}: hot leaves: {reason}")]
    HotLeaves { segment: String, reason: String },
    /// No active key can sign the segment manifest.
    #[error("{segment}: no active signing key to sign the segment manifest; add or rotate a key")]
    NoSigner { segment: String },
    /// A leaf index at or beyond the tree size.
    #[error("{origin}: leaf {leaf_index} is beyond the tree size {tree_size}")]
    LeafOutOfRange {
        origin: String,
        leaf_index: u64,
        tree_size: u64,
    },
    /// An archived leaf whose hash is not the one in the tree.
    #[error(
        "{origin}: leaf {leaf_index} read from the {tier} tier has hash {found}, the tree has {expected}"
    )]
    LeafHashMismatch {
        origin: String,
        leaf_index: u64,
        tier: &'static str,
        found: String,
        expected: String,
    },
    /// A background task (encoding, verification) panicked or was cancelled.
    #[error("{segment}: {step}: background task failed: {reason}")]
    Task {
        segment: String,
        step: &'static str,
        reason: String,
    },
    /// The deletion hook vetoed a content deletion (it is retried on the next pass).
    #[error(
        "{segment}: deletion of the content of {leaves} leaves skipped: the deletion hook refused: {reason}"
    )]
    DeletionRefused {
        segment: String,
        leaves: u64,
        reason: String,
    },
    #[error("{segment}: move {from} -> {to} skipped: the move hook refused: {reason}")]
    MoveRefused {
        segment: String,
        from: auditledger_ledger::segments::Tier,
        to: auditledger_ledger::segments::Tier,
        reason: String,
    },
    /// The request itself is invalid (e.g. moving to the hot tier).
    #[error("invalid archiver request: {0}")]
    InvalidRequest(String),
}
