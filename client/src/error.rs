//! The client's error types: what `connect`, `record` and a receipt can fail with. Messages name
//! the event, file or value at fault and what to do.

use std::path::PathBuf;

use crate::receipt::Receipt;

/// `Client::connect` failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    #[error("endpoint {endpoint:?}: {reason}")]
    Endpoint { endpoint: String, reason: String },
    #[error("the token is not a valid HTTP header value (it must be printable ASCII)")]
    Token,
    #[error("option {option}: {reason}")]
    Options {
        option: &'static str,
        reason: String,
    },
    #[error(transparent)]
    Spool(#[from] SpoolError),
}

/// The spool directory could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SpoolError {
    #[error("spool {path}: {op}: {source}")]
    Io {
        path: PathBuf,
        op: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "spool {path} is in use by another process (lock held); each gateway process needs its own spool directory"
    )]
    Locked { path: PathBuf },
    #[error(
        "spool {path} is corrupt at byte {offset}: {reason} (not a torn tail: valid data follows in later segments; move the file aside to continue)"
    )]
    Corrupt {
        path: PathBuf,
        offset: u64,
        reason: String,
    },
}

impl SpoolError {
    pub(crate) fn io(path: impl Into<PathBuf>, op: &'static str, source: std::io::Error) -> Self {
        SpoolError::Io {
            path: path.into(),
            op,
            source,
        }
    }
}

/// `Client::record` refused an event; nothing of it was queued or spooled.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RecordError {
    #[error("event {event_id:?} is invalid: field `{field}`: {reason}")]
    InvalidEvent {
        event_id: String,
        field: &'static str,
        reason: String,
    },
    #[error(
        "backpressure: {buffered} events are waiting for the ledger (max_buffered_events = {limit})"
    )]
    Backpressure { buffered: usize, limit: usize },
    #[error(
        "spool {path} is full: {used_bytes} bytes used, {event_bytes} more needed, limit {limit_bytes} (spool max_bytes); the ledger has been unreachable for a while"
    )]
    SpoolFull {
        path: PathBuf,
        used_bytes: u64,
        event_bytes: u64,
        limit_bytes: u64,
    },
    #[error(transparent)]
    Spool(#[from] SpoolError),
    #[error("the client is closed")]
    Closed,
}

/// Why an event recorded with `Client::record` has no receipt.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DeliveryError {
    /// The ledger refused the event (INVALID_ARGUMENT or PERMISSION_DENIED): sending it again
    /// cannot succeed, so it is not retried. In spool mode it is also written to
    /// `rejected.log` in the spool directory.
    #[error("ledger rejected event {event_id:?} ({code:?}): {message}")]
    Rejected {
        event_id: String,
        code: tonic::Code,
        message: String,
        /// Field at fault, when the ledger named one.
        field: String,
    },
    /// The event is durable in the ledger, but its inclusion proof did not verify against a
    /// checkpoint signed by one of the configured verifier keys.
    #[error("event {event_id:?}: receipt does not verify: {reason}", event_id = receipt.event_id)]
    Verification {
        receipt: Box<Receipt>,
        reason: String,
    },
    /// The client was closed first. In spool mode the event stays in the spool and is sent by
    /// the next client opened on the same directory.
    #[error("client closed before event {event_id:?} was acknowledged (spooled: {spooled})")]
    Closed { event_id: String, spooled: bool },
    /// More receipts were outstanding than `max_tracked_receipts`; the event is delivered (from
    /// the spool) but its receipt is not reported to this handle.
    #[error(
        "receipt of event {event_id:?} is not tracked (more than max_tracked_receipts outstanding)"
    )]
    NotTracked { event_id: String },
}

/// `Client::flush` gave up waiting.
#[derive(Debug, thiserror::Error)]
#[error("flush timed out with {outstanding} events still unacknowledged")]
pub struct FlushTimeout {
    pub outstanding: u64,
}
