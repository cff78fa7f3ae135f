//! The ledger's own audit trail (DESIGN §3, §10): every read of event contents, every denial,
//! gateway sequence gaps, and later exports, key rotations, holds and deletions become events
//! in the system log `<origin_prefix>/_system/<environment>`.
//!
//! Reads are recorded synchronously (no record, no data); denials go through a bounded queue
//! committed in batches, so a flood of bad requests cannot stall the server — records that do
//! not fit are counted and the count itself is recorded.

use auditledger_ledger::{Clock as _, SystemClock};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use auditledger_ledger::event::{AuditEvent, Decision, EventKind, SYSTEM_TENANT};
use auditledger_ledger::{Ledger, LedgerError};
use tokio::sync::mpsc;

/// What happened, in the ledger's words.
#[derive(Clone, Debug)]
pub struct SystemRecord {
    pub kind: EventKind,
    /// Environment whose system log gets the record.
    pub environment: String,
    /// Who (principal name, or "anonymous").
    pub principal: String,
    /// gRPC method, e.g. `Log.GetEntries`.
    pub method: String,
    pub decision: Decision,
    /// Why (denial reason, or a description).
    pub reason: String,
    /// Log the request was about (`tenant/environment`), if any.
    pub target: String,
    pub justification: String,
    /// Further details (range, counts, filters, role…).
    pub attributes: BTreeMap<String, String>,
}

/// Writes system records.
pub struct SystemLog {
    ledger: Arc<Ledger>,
    environments: Vec<String>,
    default_environment: String,
    queue: std::sync::Mutex<Option<mpsc::Sender<AuditEvent>>>,
    writer: tokio::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
    dropped: Arc<AtomicU64>,
}

impl SystemLog {
    /// Starts the background writer for queued records on the current tokio runtime.
    pub fn start(ledger: Arc<Ledger>, default_environment: String) -> Arc<SystemLog> {
        let (tx, mut rx) = mpsc::channel::<AuditEvent>(8192);
        let environments = ledger.options().environments.clone();
        let dropped = Arc::new(AtomicU64::new(0));
        let log = Arc::new(SystemLog {
            ledger: ledger.clone(),
            environments,
            default_environment,
            queue: std::sync::Mutex::new(Some(tx)),
            writer: tokio::sync::Mutex::new(None),
            dropped: dropped.clone(),
        });
        let writer = log.clone();
        let handle = tokio::spawn(async move {
            while let Some(first) = rx.recv().await {
                let mut batch = vec![first];
                while batch.len() < 1000 {
                    match rx.try_recv() {
                        Ok(e) => batch.push(e),
                        Err(_) => break,
                    }
                }
                let lost = writer.dropped.swap(0, Ordering::AcqRel);
                if lost > 0 {
                    batch.push(writer.event(&SystemRecord {
                        kind: EventKind::Integrity,
                        environment: writer.default_environment.clone(),
                        principal: "auditledger".into(),
                        method: "SystemLog".into(),
                        decision: Decision::Unspecified,
                        reason: format!("{lost} system records were not queued (overload); their requests were refused or answered"),
                        target: String::new(),
                        justification: String::new(),
                        attributes: BTreeMap::new(),
                    }));
                }
                if let Err(e) = writer.ledger.append_system(&batch).await {
                    tracing::error!(error = %e, records = batch.len(), "writing system log records failed");
                }
            }
        });
        if let Ok(mut slot) = log.writer.try_lock() {
            *slot = Some(handle);
        }
        log
    }

    /// Stops queueing and waits until every queued record is committed.
    pub async fn close(&self) {
        self.queue.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(handle) = self.writer.lock().await.take() {
            let _ = handle.await;
        }
    }

    fn environment_for(&self, requested: &str) -> String {
        if self.environments.iter().any(|e| e == requested) {
            requested.to_owned()
        } else {
            self.default_environment.clone()
        }
    }

    /// The event for a record.
    pub fn event(&self, rec: &SystemRecord) -> AuditEvent {
        let mut attributes = rec.attributes.clone();
        if !rec.justification.is_empty() {
            attributes.insert("justification".into(), rec.justification.clone());
        }
        AuditEvent {
            event_id: uuid::Uuid::now_v7().to_string(),
            event_kind: rec.kind as i32,
            schema_version: auditledger_proto::SCHEMA_VERSION,
            tenant_id: SYSTEM_TENANT.into(),
            environment: self.environment_for(&rec.environment),
            occurred_at: SystemClock.now_nanos(),
            user_id: rec.principal.clone(),
            gateway_id: "auditledger".into(),
            tool_server: "auditledger".into(),
            tool_name: rec.method.clone(),
            decision: rec.decision as i32,
            decision_reason: rec.reason.clone(),
            resource: rec.target.clone(),
            attributes,
            ..Default::default()
        }
    }

    /// Records durably before returning (used before handing out event contents).
    pub async fn record(&self, rec: &SystemRecord) -> Result<(), LedgerError> {
        self.ledger
            .append_system(&[self.event(rec)])
            .await
            .map(|_| ())
    }

    /// Queues a record; never blocks. Overflow is counted and recorded later.
    pub fn record_later(&self, rec: &SystemRecord) {
        let queue = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        let sent = queue
            .as_ref()
            .is_some_and(|q| q.try_send(self.event(rec)).is_ok());
        if !sent {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}
