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
//!   reports INVALID_ARGUMENT / PERMISSION_DENIED per event without retrying. A token the
//!   ledger refuses is counted (`auth_failures`) and its events wait for
//!   [`Client::set_token`] (token rotation without a restart). Retries re-send
//!   the same event ids; the ledger answers them as duplicates and appends nothing.
//! - Memory is bounded (`max_buffered_events`, or the spool's `max_bytes`); when full,
//!   `record` waits or fails fast ([`Backpressure`]).
//! - Receipts carry leaf index, leaf hash and `duplicate`; with `wait_for_checkpoint` and
//!   verifier keys each inclusion proof is checked against a signed checkpoint.
//!
//! `docs/gateway.md` documents delivery guarantees, the spool format and failure modes.
//!
//! ```no_run
//! use std::time::Duration;
//! use auditledger_client::{
//!     AuditEvent, Backpressure, Client, Decision, Durability, EventKind, Options, RecordError,
//!     SpoolOptions,
//! };
//!
//! # async fn gateway(token: &str) -> Result<(), Box<dyn std::error::Error>> {
//! let client = Client::connect(
//!     "http://127.0.0.1:50051",
//!     token,
//!     Options {
//!         durability: Durability::Spool(SpoolOptions::new("/var/lib/my-gateway/audit-spool")),
//!         backpressure: Backpressure::FailFast,
//!         gateway_id: Some("gw-eu-1".into()),
//!         ..Options::default()
//!     },
//! )
//! .await?;
//!
//! // On the enforcement path: record the decision before acting on it.
//! let event = AuditEvent {
//!     event_kind: EventKind::ToolCall as i32,
//!     tenant_id: "demo".into(),
//!     environment: "dev".into(),
//!     occurred_at: 1_763_700_000_000_000_000,
//!     tool_server: "github".into(),
//!     tool_name: "merge_pull_request".into(),
//!     mcp_method: "tools/call".into(),
//!     decision: Decision::Allow as i32,
//!     ..Default::default()
//! };
//! match client.record(event).await {
//!     // Durable in the local spool: go ahead; the receipt comes later.
//!     Ok(handle) => {
//!         tokio::spawn(async move {
//!             if let Err(e) = handle.receipt().await {
//!                 eprintln!("audit event not recorded: {e}");
//!             }
//!         });
//!     }
//!     // Cannot record it: deny the tool call instead of acting unaudited.
//!     Err(RecordError::SpoolFull { .. } | RecordError::Backpressure { .. }) => { /* deny */ }
//!     Err(e) => return Err(e.into()),
//! }
//! client.close(Duration::from_secs(10)).await;
//! # Ok(())
//! # }
//! ```

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
