//! Errors of the ledger's public API. Each variant says what was wrong and with which value;
//! the gRPC layer maps them to status codes in one place.

use crate::checkpoint::CheckpointError;
use crate::keys::KeyError;
use crate::merkle::MerkleError;
use crate::store::StoreError;
use crate::tiles::TileError;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LedgerError {
    /// One event of a batch is invalid; nothing of the batch was appended.
    #[error("event {event_index}: field `{field}`: {reason}")]
    InvalidEvent {
        event_index: usize,
        field: &'static str,
        reason: String,
    },
    /// A request argument is invalid (not an event field).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// No log exists for this tenant and environment (nothing was ever appended to it).
    #[error("no log for tenant {tenant_id:?} environment {environment:?}")]
    UnknownLog {
        tenant_id: String,
        environment: String,
    },
    /// A leaf index or tree size beyond what the log holds.
    #[error("{what} {requested} is beyond {limit_name} {limit}")]
    OutOfRange {
        what: &'static str,
        requested: u64,
        limit_name: &'static str,
        limit: u64,
    },
    /// A lookup found nothing (event id, leaf hash, checkpoint of a size).
    #[error("not found: {0}")]
    NotFound(String),
    /// The ledger cannot accept writes now (storage failed, shutting down); retry later.
    #[error("unavailable: {0}")]
    Unavailable(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Stored data contradicts itself.
    #[error("corrupt ledger data: {0}")]
    Corrupt(String),
    #[error(transparent)]
    Merkle(#[from] MerkleError),
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error(transparent)]
    Keys(#[from] KeyError),
}

impl From<TileError> for LedgerError {
    fn from(e: TileError) -> Self {
        match e {
            TileError::Store(s) => LedgerError::Store(s),
            other => LedgerError::Corrupt(other.to_string()),
        }
    }
}
