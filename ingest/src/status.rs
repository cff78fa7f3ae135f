//! The one place where domain errors become gRPC statuses.

use auditledger_ledger::LedgerError;
use auditledger_ledger::store::StoreError;
use tonic::metadata::MetadataValue;
use tonic::{Code, Status};

use crate::auth::AuthError;
use crate::quotas::QuotaExceeded;

/// Maps a ledger error to the status a client can act on.
pub fn from_ledger(err: LedgerError) -> Status {
    let code = match &err {
        LedgerError::InvalidEvent { .. } | LedgerError::InvalidArgument(_) => Code::InvalidArgument,
        LedgerError::UnknownLog { .. } | LedgerError::NotFound(_) => Code::NotFound,
        LedgerError::OutOfRange { .. } => Code::OutOfRange,
        LedgerError::Unavailable(_) => Code::Unavailable,
        LedgerError::Store(
            StoreError::NoSpace(_) | StoreError::Io(_) | StoreError::Injected(_),
        ) => Code::Unavailable,
        LedgerError::Store(StoreError::Corruption(_)) | LedgerError::Corrupt(_) => Code::DataLoss,
        _ => Code::Internal,
    };
    Status::new(code, err.to_string())
}

pub fn from_auth(err: &AuthError) -> Status {
    Status::unauthenticated(err.to_string())
}

/// Metadata key of a RESOURCE_EXHAUSTED status: milliseconds to wait before retrying.
pub const RETRY_AFTER_MS: &str = "retry-after-ms";
/// Metadata key of a RESOURCE_EXHAUSTED status: `true` when the request alone exceeds a
/// per-second quota (it must be split).
pub const REQUEST_EXCEEDS_QUOTA: &str = "request-exceeds-quota";

/// RESOURCE_EXHAUSTED carrying the quota's retry hint (and whether only splitting the request
/// helps) as metadata; the message says the same for people.
pub fn exhausted(q: QuotaExceeded) -> Status {
    let mut status = Status::resource_exhausted(format!(
        "{}; retry after {} ms",
        q.message, q.retry_after_ms
    ));
    let metadata = status.metadata_mut();
    metadata.insert(RETRY_AFTER_MS, q.retry_after_ms.into());
    if q.request_too_large {
        metadata.insert(REQUEST_EXCEEDS_QUOTA, MetadataValue::from_static("true"));
    }
    status
}

/// The retry hint of a status made by [`exhausted`]: (milliseconds, request exceeds quota).
pub fn retry_hint(status: &Status) -> (u64, bool) {
    let metadata = status.metadata();
    let after = metadata
        .get(RETRY_AFTER_MS)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let too_large = metadata
        .get(REQUEST_EXCEEDS_QUOTA)
        .is_some_and(|v| v.as_bytes() == b"true");
    (after, too_large)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes() {
        let invalid = LedgerError::InvalidEvent {
            event_index: 3,
            field: "event_id",
            reason: "required".into(),
        };
        let s = from_ledger(invalid);
        assert_eq!(s.code(), Code::InvalidArgument);
        assert!(s.message().contains("event 3") && s.message().contains("event_id"));
        assert_eq!(
            from_ledger(LedgerError::Store(StoreError::NoSpace("disk".into()))).code(),
            Code::Unavailable
        );
        assert_eq!(
            from_ledger(LedgerError::Corrupt("x".into())).code(),
            Code::DataLoss
        );
        let quota = |retry_after_ms, request_too_large| {
            exhausted(QuotaExceeded {
                message: "quota".into(),
                retry_after_ms,
                request_too_large,
            })
        };
        let s = quota(250, false);
        assert_eq!(s.code(), Code::ResourceExhausted);
        assert_eq!(s.metadata().get("retry-after-ms").unwrap(), "250");
        assert_eq!(s.message(), "quota; retry after 250 ms");
        assert_eq!(retry_hint(&s), (250, false));
        assert_eq!(retry_hint(&quota(1000, true)), (1000, true));
        assert_eq!(retry_hint(&Status::unavailable("no hint")), (0, false));
    }
}
