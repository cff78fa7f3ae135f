//! The one place where domain errors become gRPC statuses.

use auditledger_ledger::LedgerError;
use auditledger_ledger::store::StoreError;
use tonic::{Code, Status};

use crate::auth::AuthError;

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

/// RESOURCE_EXHAUSTED with a retry hint in `retry-after-ms` metadata.
pub fn exhausted(message: String, retry_after_ms: u64) -> Status {
    let mut status =
        Status::resource_exhausted(format!("{message}; retry after {retry_after_ms} ms"));
    if let Ok(v) = retry_after_ms.to_string().parse() {
        status.metadata_mut().insert("retry-after-ms", v);
    }
    status
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
        assert_eq!(
            exhausted("quota".into(), 250)
                .metadata()
                .get("retry-after-ms")
                .unwrap(),
            "250"
        );
    }
}
