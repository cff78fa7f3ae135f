//! AuditLedger client for gateways: the library a policy-enforcing gateway (MCP proxy, API
//! gateway) embeds to record one audit event per decision without slowing the decision down,
//! and without losing events when the ledger is unreachable.
//!
//! - [`Client::record`] assigns `event_id` (UUIDv7) and `gateway_seq` if missing, validates
//!   the event, and returns at once with a [`RecordHandle`] (memory mode), or once the event is
//!   fsynced to the local spool ([`Durability::Spool`]).
//! - A background sender batches events (size, bytes, linger), keeps several requests in
//!   flight on one `Ingest.AppendStream`, retries UNAVAILABLE / RESOURCE_EXHAUSTED and broken
//!   streams with exponential backoff and jitter (honouring the ledger's retry hint), and
//!   reports INVALID_ARGUMENT / PERMISSION_DENIED per event without retrying. Retries re-send
//!   the same event ids; the ledger answers them as duplicates and appends nothing.
//! - Memory is bounded (`max_buffered_events`, or the spool's `max_bytes`); when full,
//!   `record` waits or fails fast ([`Backpressure`]).
//! - Receipts carry leaf index, leaf hash and `duplicate`; with `wait_for_checkpoint` and
//!   verifier keys each inclusion proof is checked against a signed checkpoint.
//!
//! `docs/gateway.md` documents delivery guarantees, the spool format and failure modes.

mod client;
mod error;
mod metrics;
mod options;
pub mod receipt;
mod sender;
mod spool;

pub use auditledger_ledger::note::VerifierKey;
pub use auditledger_proto::v1::{Approval, ApprovalOutcome, AuditEvent, Decision, EventKind};
pub use client::{Client, CloseReport, RecordHandle};
pub use error::{ClientError, DeliveryError, FlushTimeout, RecordError, SpoolError};
pub use metrics::MetricsSnapshot;
pub use options::{Backpressure, Durability, Options, SpoolOptions};
pub use receipt::{Inclusion, Receipt};
