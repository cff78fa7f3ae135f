//! The one place where domain errors become gRPC statuses.

use auditledger_ledger::LedgerError;
use auditledger_ledger::store::StoreError;
use tonic::metadata::MetadataValue;
use tonic::{Code, Status};

use crate::auth::AuthError;
use crate::quotas::QuotaExceeded;

/// Metadata key: index of the event at fault in the request.
pub const EVENT_INDEX: &str = "event-index";
/// Metadata key: the field of that event at fault.
pub const EVENT_FIELD: &str = "event-field";

/// Maps a ledger error to the status a client can act on; an invalid event's index and field
/// also go in metadata (and from there into an in-stream `AppendError`).
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
    let mut status = Status::new(code, err.to_string());
    if let LedgerError::InvalidEvent {
        event_index, field, ..
    } = &err
    {
        let metadata = status.metadata_mut();
        metadata.insert(EVENT_INDEX, (*event_index as u64).into());
        if let Ok(field) = MetadataValue::try_from(*field) {
            metadata.insert(EVENT_FIELD, field);
        }
    }
    status
}

/// PERMISSION_DENIED for one event of a request (its index in metadata, as [`from_ledger`]).
pub fn event_denied(event_index: usize, message: String) -> Status {
    let mut status = Status::permission_denied(message);
    status
        .metadata_mut()
        .insert(EVENT_INDEX, (event_index as u64).into());
    status
}

/// The event a status blames, from its metadata: (index, field; empty when not known).
pub fn event_blame(status: &Status) -> (Option<u32>, String) {
    let metadata = status.metadata();
    let index = metadata
        .get(EVENT_INDEX)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    let field = metadata
        .get(EVENT_FIELD)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    (index, field)
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
        assert_eq!(event_blame(&s), (Some(3), "event_id".to_string()));
        let denied = event_denied(7, "event 7: not your tenant".into());
        assert_eq!(denied.code(), Code::PermissionDenied);
        assert_eq!(event_blame(&denied), (Some(7), String::new()));
        // Wording alone blames nothing.
        assert_eq!(
            event_blame(&Status::invalid_argument("event 2: field `x`: bad")),
            (None, String::new())
        );
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
