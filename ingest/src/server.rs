//! The gRPC services: `Ingest` (durable append, unary and streaming) and `Log` (checkpoints,
//! proofs, entries), with authentication, tenancy, quotas, limits, self-audit and metrics.

use std::collections::{BTreeMap, HashMap};
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use auditledger_ledger::event::{AuditEvent, Decision, EventId, EventKind};
use auditledger_ledger::{Ledger, LedgerError, Log, Receipt, SignedCheckpoint};
use auditledger_proto::v1 as pb;
use futures_util::Stream;
use prost::Message as _;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::auth::{Authenticator, Principal, Role};
use crate::config::Config;
use crate::metrics::ServerMetrics;
use crate::quotas::Quotas;
use crate::seqtrack::{GatewayKey, SeqAnomaly, SeqTracker};
use crate::status;
use crate::syslog::{SystemLog, SystemRecord};

/// Everything the services share.
pub struct AppState {
    pub config: Config,
    pub ledger: Arc<Ledger>,
    pub auth: Authenticator,
    pub quotas: Quotas,
    pub syslog: Arc<SystemLog>,
    pub seq: SeqTracker,
    pub metrics: Arc<ServerMetrics>,
    /// Flips to true when the server starts shutting down.
    pub shutdown: watch::Receiver<bool>,
    /// Tiering: reads of archived leaves go through its reader.
    pub archiver: Arc<auditledger_archiver::Archiver>,
    /// Folds repeated identical denials into per-window counts (`server.denial_window`).
    pub denials: crate::hardening::DenialLimiter,
}

fn proto_tier(t: auditledger_ledger::segments::Tier) -> pb::Tier {
    use auditledger_ledger::segments::Tier;
    match t {
        Tier::Hot => pb::Tier::Hot,
        Tier::Warm => pb::Tier::Warm,
        Tier::Cold => pb::Tier::Cold,
    }
}

type ResponseStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// Common name of the first peer certificate, if the connection presented one.
fn peer_common_name<T>(req: &Request<T>) -> Option<String> {
    let certs = req.peer_certs()?;
    let der = certs.first()?;
    crate::tls::common_name(der.as_ref())
}

impl AppState {
    /// Authenticates the caller; a failure is recorded in the system log.
    pub(crate) fn authenticate<T>(
        &self,
        req: &Request<T>,
        method: &str,
        environment: &str,
    ) -> Result<Principal, Status> {
        let header = req
            .metadata()
            .get("authorization")
            .map(|v| v.to_str().unwrap_or(""));
        let cn = peer_common_name(req);
        self.auth.authenticate(header, cn.as_deref()).map_err(|e| {
            self.metrics.reject("", "unauthenticated");
            let peer = req.remote_addr().map(|a| a.ip());
            self.deny_from(peer, "anonymous", method, environment, "", &e.to_string());
            status::from_auth(&e)
        })
    }

    pub(crate) fn deny(
        &self,
        principal: &str,
        method: &str,
        environment: &str,
        target: &str,
        reason: &str,
    ) {
        self.deny_from(None, principal, method, environment, target, reason);
    }

    /// Records a denial in the system log, unless the same denial (principal, peer, method,
    /// target, reason) was already recorded in this `server.denial_window`: then it is only
    /// counted, and the count is recorded when the window ends ([`Self::flush_denials`]).
    pub(crate) fn deny_from(
        &self,
        peer: Option<std::net::IpAddr>,
        principal: &str,
        method: &str,
        environment: &str,
        target: &str,
        reason: &str,
    ) {
        let key = crate::hardening::DenialKey {
            principal: principal.to_owned(),
            peer,
            method: method.to_owned(),
            environment: environment.to_owned(),
            target: target.to_owned(),
            reason: reason.to_owned(),
        };
        let (record, flushed) = self.denials.admit(key, Instant::now());
        self.record_repeats(flushed);
        if !record {
            return;
        }
        tracing::warn!(principal, method, target, reason, ?peer, "request denied");
        let mut attributes = BTreeMap::new();
        if let Some(peer) = peer {
            attributes.insert("peer".to_owned(), peer.to_string());
        }
        self.syslog.record_later(&SystemRecord {
            kind: EventKind::Auth,
            environment: environment.to_owned(),
            principal: principal.to_owned(),
            method: method.to_owned(),
            decision: Decision::Deny,
            reason: reason.to_owned(),
            target: target.to_owned(),
            justification: String::new(),
            attributes,
        });
    }

    /// Records the repeat counts of a denial window that has ended (called every second).
    pub(crate) fn flush_denials(&self) {
        let flushed = self.denials.flush(Instant::now());
        self.record_repeats(flushed);
        let anomalies = self.denials.flush_anomalies(Instant::now());
        self.record_anomaly_repeats(anomalies);
    }

    /// Records the summaries of gateway sequence anomalies folded in a window that has ended.
    fn record_anomaly_repeats(
        &self,
        flushed: crate::hardening::Flushed<crate::hardening::AnomalyKey>,
    ) {
        for r in flushed.repeats {
            let (gw, kind) = r.key;
            let window = humantime::format_duration(Duration::from_millis(
                r.window.as_millis().try_into().unwrap_or(u64::MAX),
            ));
            let reason = if kind == "gap" {
                format!(
                    "gateway {:?}: {} more sequence numbers never arrived within {window}: events may have been lost before the ledger",
                    gw.gateway_id, r.count
                )
            } else {
                format!(
                    "gateway {:?} sent {} more regressed sequence numbers within {window}: replay, reset or forgery",
                    gw.gateway_id, r.count
                )
            };
            tracing::warn!(tenant = %gw.tenant_id, gateway = %gw.gateway_id, kind, repeated = r.count, "repeated gateway sequence anomalies");
            self.record_anomaly(
                Some(&gw),
                reason,
                BTreeMap::from([
                    ("gateway_id".to_owned(), gw.gateway_id.clone()),
                    ("anomaly".to_owned(), kind.to_owned()),
                    ("repeated".to_owned(), r.count.to_string()),
                    ("window_ms".to_owned(), r.window.as_millis().to_string()),
                ]),
            );
        }
        if flushed.untracked > 0 {
            tracing::warn!(
                events = flushed.untracked,
                "sequence anomalies from too many distinct gateways to track"
            );
            self.record_anomaly(
                None,
                format!(
                    "{} more anomalous sequence numbers from more gateways than one window tracks",
                    flushed.untracked
                ),
                BTreeMap::from([("repeated".to_owned(), flushed.untracked.to_string())]),
            );
        }
    }

    /// An `INTEGRITY` record of the server about a gateway's sequence numbers (`None`: several
    /// gateways).
    fn record_anomaly(
        &self,
        gateway: Option<&GatewayKey>,
        reason: String,
        attributes: BTreeMap<String, String>,
    ) {
        self.syslog.record_later(&SystemRecord {
            kind: EventKind::Integrity,
            environment: gateway.map(|g| g.environment.clone()).unwrap_or_default(),
            principal: "auditledger".into(),
            method: "Ingest.Append".into(),
            decision: Decision::Unspecified,
            reason,
            target: gateway
                .map(|g| format!("{}/{}", g.tenant_id, g.environment))
                .unwrap_or_default(),
            justification: String::new(),
            attributes,
        });
    }

    fn record_repeats(&self, flushed: crate::hardening::Flushed) {
        for r in flushed.repeats {
            let mut attributes = BTreeMap::from([
                ("repeated".to_owned(), r.count.to_string()),
                ("window_ms".to_owned(), r.window.as_millis().to_string()),
            ]);
            if let Some(peer) = r.key.peer {
                attributes.insert("peer".to_owned(), peer.to_string());
            }
            tracing::warn!(principal = %r.key.principal, method = %r.key.method, repeated = r.count, "repeated denials");
            self.syslog.record_later(&SystemRecord {
                kind: EventKind::Auth,
                environment: r.key.environment,
                principal: r.key.principal,
                method: r.key.method,
                decision: Decision::Deny,
                reason: format!("{} more times: {}", r.count, r.key.reason),
                target: r.key.target,
                justification: String::new(),
                attributes,
            });
        }
        if flushed.untracked > 0 {
            tracing::warn!(
                denials = flushed.untracked,
                "denials from too many distinct callers to track"
            );
            self.syslog.record_later(&SystemRecord {
                kind: EventKind::Auth,
                environment: String::new(),
                principal: "various".into(),
                method: "various".into(),
                decision: Decision::Deny,
                reason: format!(
                    "{} further denials from more distinct principals and peers than one window tracks",
                    flushed.untracked
                ),
                target: String::new(),
                justification: String::new(),
                attributes: BTreeMap::from([(
                    "repeated".to_owned(),
                    flushed.untracked.to_string(),
                )]),
            });
        }
    }

    /// Records a denial that concerns the log of `tenant`/`environment`.
    pub(crate) fn deny_on_log(
        &self,
        principal: &str,
        method: &str,
        tenant: &str,
        environment: &str,
        reason: &str,
    ) {
        self.deny(
            principal,
            method,
            environment,
            &format!("{tenant}/{environment}"),
            reason,
        );
    }

    /// Checks the role and the tenant/environment coverage; a failure is recorded.
    pub(crate) fn authorize(
        &self,
        p: &Principal,
        method: &str,
        roles: &[Role],
        tenant: &str,
        environment: &str,
    ) -> Result<(), Status> {
        let target = format!("{tenant}/{environment}");
        if !roles.contains(&p.role) {
            let reason = format!("role {} may not call {method}", p.role.as_str());
            self.metrics.reject(tenant, "role");
            self.deny(&p.name, method, environment, &target, &reason);
            return Err(Status::permission_denied(reason));
        }
        if !p.covers(tenant, environment) {
            let reason = format!(
                "principal {:?} has no access to tenant {tenant:?} environment {environment:?}",
                p.name
            );
            self.metrics.reject(tenant, "tenancy");
            self.deny(&p.name, method, environment, &target, &reason);
            return Err(Status::permission_denied(reason));
        }
        Ok(())
    }

    /// Justification rule: required for investigators and compliance; recorded for everyone.
    pub(crate) fn require_justification(
        &self,
        p: &Principal,
        method: &str,
        tenant: &str,
        environment: &str,
        justification: &str,
    ) -> Result<(), Status> {
        if justification.trim().is_empty()
            && matches!(p.role, Role::Investigator | Role::Compliance)
        {
            let reason = format!(
                "{method} reads event contents: a justification is required for role {}",
                p.role.as_str()
            );
            self.metrics.reject(tenant, "justification");
            self.deny_on_log(&p.name, method, tenant, environment, &reason);
            return Err(Status::invalid_argument(reason));
        }
        Ok(())
    }

    /// Records a read of event contents durably; no record, no data.
    pub(crate) async fn record_read(
        &self,
        p: &Principal,
        method: &str,
        tenant: &str,
        environment: &str,
        justification: &str,
        attributes: BTreeMap<String, String>,
    ) -> Result<(), Status> {
        let mut attributes = attributes;
        attributes.insert("role".into(), p.role.as_str().into());
        self.syslog
            .record(&SystemRecord {
                kind: EventKind::Access,
                environment: environment.to_owned(),
                principal: p.name.clone(),
                method: method.to_owned(),
                decision: Decision::Allow,
                reason: "read of event contents".into(),
                target: format!("{tenant}/{environment}"),
                justification: justification.to_owned(),
                attributes,
            })
            .await
            .map_err(|e| {
                Status::unavailable(format!("cannot record this read in the system log ({e}); refusing to return event contents"))
            })
    }

    /// The checkpoint a proof is given with: with its witness cosignatures when witnesses are
    /// configured (one short scan; skipped otherwise to keep proofs at full speed).
    fn proof_checkpoint(
        &self,
        log: &Log,
        cp: &SignedCheckpoint,
    ) -> Result<pb::SignedCheckpoint, Status> {
        if self.config.witnesses.keys.is_empty() {
            Ok(checkpoint_to_pb(cp))
        } else {
            Ok(pb::SignedCheckpoint {
                note: log.cosigned_note(cp).map_err(status::from_ledger)?,
            })
        }
    }

    /// A leaf's contents from whichever tier holds them: (bytes, content expired, tier).
    async fn leaf_contents(
        &self,
        log: &Log,
        leaf_index: u64,
    ) -> Result<(Vec<u8>, bool, pb::Tier), Status> {
        use auditledger_archiver::LeafContent;
        match self.archiver.reader().leaf(log, leaf_index).await {
            Ok(LeafContent::Present { bytes, tier }) => Ok((bytes, false, proto_tier(tier))),
            Ok(LeafContent::Expired { tier }) => Ok((Vec::new(), true, proto_tier(tier))),
            Err(e) => Err(Status::unavailable(format!(
                "reading the contents of leaf {leaf_index}: {e}"
            ))),
        }
    }

    /// Leaves `[from, to)` clipped to the end of `from`'s archived segment, as entries.
    async fn archived_entries(
        &self,
        log: &Log,
        from: u64,
        to: u64,
    ) -> Result<Vec<pb::Entry>, Status> {
        use auditledger_archiver::LeafContent;
        let leaves = self
            .archiver
            .reader()
            .archived_range(log, from, to)
            .await
            .map_err(|e| Status::unavailable(format!("reading leaves from {from}: {e}")))?;
        Ok(leaves
            .into_iter()
            .map(|(index, leaf_hash, content)| {
                let leaf_hash = leaf_hash.to_vec();
                let tier = proto_tier(content.tier()) as i32;
                match content {
                    LeafContent::Present { bytes, .. } => pb::Entry {
                        leaf_index: index,
                        leaf: bytes,
                        leaf_hash,
                        content_expired: false,
                        tier,
                    },
                    LeafContent::Expired { .. } => pb::Entry {
                        leaf_index: index,
                        leaf: Vec::new(),
                        leaf_hash,
                        content_expired: true,
                        tier,
                    },
                }
            })
            .collect())
    }

    /// Calls `each` with every leaf of `[start, end)` in order, from whichever tier holds it,
    /// until it returns `Ok(false)`. Blocking (RocksDB reads; archived segments through
    /// `handle`); memory is one chunk of hot leaves or one archived segment.
    pub(crate) fn for_each_leaf_blocking(
        &self,
        log: &Log,
        start: u64,
        end: u64,
        handle: &tokio::runtime::Handle,
        mut each: impl FnMut(pb::Entry) -> Result<bool, Status>,
    ) -> Result<(), Status> {
        const CHUNK: u64 = 1024;
        let mut at = start;
        while at < end {
            let chunk_end = (at + CHUNK).min(end);
            let mut hot: Vec<(u64, Vec<u8>)> = Vec::with_capacity((chunk_end - at) as usize);
            log.scan_leaves(at, chunk_end, &mut |index, leaf| {
                hot.push((index, leaf.to_vec()));
                true
            })
            .map_err(status::from_ledger)?;
            // Hot leaves from `at` on, as long as they are contiguous.
            let mut entries: Vec<pb::Entry> = hot
                .into_iter()
                .enumerate()
                .take_while(|(k, (i, _))| *i == at + *k as u64)
                .map(|(_, (index, leaf))| pb::Entry {
                    leaf_index: index,
                    leaf_hash: auditledger_ledger::merkle::leaf_hash(&leaf).to_vec(),
                    leaf,
                    content_expired: false,
                    tier: pb::Tier::Hot as i32,
                })
                .collect();
            if entries.is_empty() {
                // `at` was released from the hot tier: the rest of its segment at once.
                entries = handle.block_on(self.archived_entries(log, at, end))?;
                if entries.is_empty() {
                    return Err(Status::data_loss(format!(
                        "{}: leaf {at} is in no tier",
                        log.origin()
                    )));
                }
            }
            at += entries.len() as u64;
            for entry in entries {
                if !each(entry)? {
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    pub(crate) fn log(&self, tenant: &str, environment: &str) -> Result<Log, Status> {
        self.ledger.log(tenant, environment).ok_or_else(|| {
            Status::not_found(format!("no log for tenant {tenant:?} environment {environment:?}: nothing was appended to it"))
        })
    }

    /// Reports the sequence anomalies of one request: a metric per anomaly, and one warning and
    /// one system-log record per gap and per gateway's regressions. A gateway that resets its
    /// counter (or replays a batch) regresses on every event until it passes its old highest
    /// number; one record per event would double the ledger's writes and flood the logs (seen:
    /// 300 MB of warnings in 40 s), so a request's regressions of one gateway become one record
    /// naming how many, the lowest and highest number, and the highest seen before.
    pub(crate) fn seq_anomalies(&self, anomalies: Vec<SeqAnomaly>) {
        // (gateway, highest before) → (count, lowest, highest regressed number), first-seen order.
        let mut regressions: Vec<(GatewayKey, u64, u64, u64, u64)> = Vec::new();
        // (gateway, kind, reason, events it covers).
        let mut reports: Vec<(GatewayKey, &'static str, String, u64)> = Vec::new();
        for a in anomalies {
            match a {
                SeqAnomaly::Gap {
                    gateway,
                    first,
                    last,
                } => {
                    let reason = format!(
                        "gateway {:?} sequence numbers {first}..={last} never arrived: events may have been lost before the ledger",
                        gateway.gateway_id
                    );
                    self.metrics
                        .seq_anomaly(&gateway.tenant_id, &gateway.gateway_id, "gap");
                    let missing = last.saturating_sub(first).saturating_add(1);
                    reports.push((gateway, "gap", reason, missing));
                }
                SeqAnomaly::Regression {
                    gateway,
                    highest,
                    got,
                } => {
                    self.metrics
                        .seq_anomaly(&gateway.tenant_id, &gateway.gateway_id, "regression");
                    match regressions
                        .iter_mut()
                        .find(|r| r.0 == gateway && r.1 == highest)
                    {
                        Some(r) => {
                            r.2 += 1;
                            r.3 = r.3.min(got);
                            r.4 = r.4.max(got);
                        }
                        None => regressions.push((gateway, highest, 1, got, got)),
                    }
                }
            }
        }
        for (gateway, highest, count, low, high) in regressions {
            let reason = if count == 1 {
                format!(
                    "gateway {:?} sent sequence number {low} after {highest}: replay, reset or forgery",
                    gateway.gateway_id
                )
            } else {
                format!(
                    "gateway {:?} sent {count} sequence numbers from {low} to {high} after {highest}: replay, reset or forgery",
                    gateway.gateway_id
                )
            };
            reports.push((gateway, "regression", reason, count));
        }
        for (gw, kind, reason, events) in reports {
            // Repeats within `server.denial_window` become one summary per gateway and kind.
            let (record, flushed) =
                self.denials
                    .admit_anomaly((gw.clone(), kind), events, Instant::now());
            self.record_anomaly_repeats(flushed);
            if !record {
                continue;
            }
            tracing::warn!(tenant = %gw.tenant_id, gateway = %gw.gateway_id, kind, %reason, "gateway sequence anomaly");
            let attributes = BTreeMap::from([
                ("gateway_id".to_owned(), gw.gateway_id.clone()),
                ("anomaly".to_owned(), kind.to_owned()),
            ]);
            self.record_anomaly(Some(&gw), reason, attributes);
        }
    }

    /// One append request, end to end. Returns the response or the status to fail with.
    pub async fn process_append(
        self: &Arc<Self>,
        principal: &Principal,
        method: &str,
        req: pb::AppendRequest,
    ) -> Result<pb::AppendResponse, Status> {
        let queued = self.begin_append(principal, method, req).await?;
        self.finish_append(queued).await
    }

    /// Checks and queues an append request; returns once it is queued for the sequencer, so
    /// requests begun in order are logged in order.
    pub async fn begin_append(
        self: &Arc<Self>,
        principal: &Principal,
        method: &str,
        req: pb::AppendRequest,
    ) -> Result<QueuedAppend, Status> {
        let started = Instant::now();
        let limits = &self.config.limits;
        if let Some(exp) = principal.expires_at
            && auditledger_ledger::keys::unix_now() >= exp
        {
            return Err(Status::unauthenticated(format!(
                "token {:?} expired",
                principal.name
            )));
        }
        if req.events.len() > limits.max_batch_events {
            let tenant = req.events[0].tenant_id.clone();
            self.metrics.reject(&tenant, "batch_events");
            return Err(Status::invalid_argument(format!(
                "request has {} events; the limit is {} (limits.max_batch_events)",
                req.events.len(),
                limits.max_batch_events
            )));
        }
        // Tenancy before anything else: PERMISSION_DENIED, not INVALID_ARGUMENT (DESIGN §10).
        for (i, e) in req.events.iter().enumerate() {
            if !principal.covers(&e.tenant_id, &e.environment) {
                let reason = format!(
                    "event {i}: principal {:?} may not write tenant {:?} environment {:?}",
                    principal.name, e.tenant_id, e.environment
                );
                self.metrics.reject(&e.tenant_id, "tenancy");
                self.deny(
                    &principal.name,
                    method,
                    &e.environment,
                    &format!("{}/{}", e.tenant_id, e.environment),
                    &reason,
                );
                return Err(status::event_denied(i, reason));
            }
        }
        let mut per_tenant: HashMap<&str, (u64, u64)> = HashMap::new();
        for e in &req.events {
            let entry = per_tenant.entry(e.tenant_id.as_str()).or_default();
            entry.0 += 1;
            entry.1 += e.encoded_len() as u64;
        }
        for (tenant, (events, bytes)) in &per_tenant {
            if let Err(q) = self.quotas.charge(tenant, *events, *bytes) {
                self.metrics.reject(tenant, "quota");
                return Err(status::exhausted(q));
            }
        }
        let pending = match self.ledger.submit(&principal.name, &req.events).await {
            Ok(p) => p,
            Err(e) => return Err(self.append_failed(&req, principal, e)),
        };
        Ok(QueuedAppend {
            started,
            principal: principal.clone(),
            per_tenant: per_tenant
                .into_iter()
                .map(|(t, (n, _))| (t.to_owned(), n))
                .collect(),
            req,
            pending,
        })
    }

    fn append_failed(
        &self,
        req: &pb::AppendRequest,
        principal: &Principal,
        e: LedgerError,
    ) -> Status {
        let reason = match &e {
            LedgerError::InvalidEvent {
                event_index, field, ..
            } => {
                let ev = &req.events[*event_index];
                tracing::warn!(principal = %principal.name, event_index, field, trace_id = %ev.trace_id,
                    correlation_id = %ev.correlation_id, error = %e, "append rejected");
                "invalid"
            }
            _ => {
                tracing::error!(error = %e, "append failed");
                "unavailable"
            }
        };
        self.metrics.reject(&req.events[0].tenant_id, reason);
        status::from_ledger(e)
    }

    /// Waits for a queued append to be durable and builds its response.
    pub async fn finish_append(&self, queued: QueuedAppend) -> Result<pb::AppendResponse, Status> {
        let QueuedAppend {
            started,
            principal,
            per_tenant,
            req,
            pending,
        } = queued;
        if req.events.is_empty() {
            return Ok(pb::AppendResponse::default());
        }
        let receipts = match pending.wait().await {
            Ok(r) => r,
            Err(e) => return Err(self.append_failed(&req, &principal, e)),
        };
        for (tenant, events) in &per_tenant {
            self.metrics.appended(tenant, *events);
        }
        let now = Instant::now();
        let mut anomalies = Vec::new();
        for (event, receipt) in req.events.iter().zip(&receipts) {
            tracing::debug!(event_id = %event.event_id, trace_id = %event.trace_id, correlation_id = %event.correlation_id,
                leaf_index = receipt.leaf_index, duplicate = receipt.duplicate, "appended");
            if receipt.duplicate {
                if receipt.content_differs == Some(true) {
                    tracing::warn!(event_id = %event.event_id, origin = %receipt.origin, "re-sent event differs from the stored one; kept the original");
                }
                continue;
            }
            if !event.gateway_id.is_empty() {
                let key = GatewayKey {
                    tenant_id: event.tenant_id.clone(),
                    environment: event.environment.clone(),
                    gateway_id: event.gateway_id.clone(),
                };
                anomalies.extend(self.seq.observe(&key, event.gateway_seq, now));
            }
        }
        self.seq_anomalies(anomalies);
        let response = if req.wait_for_checkpoint {
            self.with_proofs(&req.events, receipts).await?
        } else {
            pb::AppendResponse {
                receipts: receipts.iter().map(|r| receipt_to_pb(r, None)).collect(),
                checkpoint: None,
                error: None,
            }
        };
        self.metrics.ack_latency.observe(started.elapsed());
        Ok(response)
    }

    /// Waits for checkpoints covering every receipt and attaches inclusion proofs.
    async fn with_proofs(
        &self,
        events: &[AuditEvent],
        receipts: Vec<Receipt>,
    ) -> Result<pb::AppendResponse, Status> {
        let wait_limit = self.config.ledger.checkpoint_interval * 10 + Duration::from_secs(5);
        let mut needed: Vec<((String, String), u64)> = Vec::new();
        for (e, r) in events.iter().zip(&receipts) {
            let key = (e.tenant_id.clone(), e.environment.clone());
            match needed.iter_mut().find(|(k, _)| *k == key) {
                Some((_, size)) => *size = (*size).max(r.leaf_index + 1),
                None => needed.push((key, r.leaf_index + 1)),
            }
        }
        let mut checkpoints: HashMap<(String, String), (Log, Arc<SignedCheckpoint>)> =
            HashMap::new();
        for ((tenant, env), size) in needed {
            let log = self.log(&tenant, &env)?;
            let cp = tokio::time::timeout(wait_limit, log.wait_for_checkpoint(size))
                .await
                .map_err(|_| {
                    Status::deadline_exceeded(format!(
                        "no checkpoint covering {size} leaves of {} within {wait_limit:?}",
                        log.origin()
                    ))
                })?
                .map_err(status::from_ledger)?;
            checkpoints.insert((tenant, env), (log, cp));
        }
        let first_key = (events[0].tenant_id.clone(), events[0].environment.clone());
        let mut out = Vec::with_capacity(receipts.len());
        for (e, r) in events.iter().zip(&receipts) {
            let key = (e.tenant_id.clone(), e.environment.clone());
            let (log, cp) = &checkpoints[&key];
            let size = cp.checkpoint.tree_size;
            let hashes = log
                .inclusion_proof(r.leaf_index, size)
                .map_err(status::from_ledger)?;
            let proof = pb::InclusionProof {
                leaf_index: r.leaf_index,
                tree_size: size,
                hashes: hashes.iter().map(|h| h.to_vec()).collect(),
                leaf: Vec::new(),
                checkpoint: (key != first_key).then(|| checkpoint_to_pb(cp)),
                leaf_hash: r.leaf_hash.to_vec(),
                content_expired: false,
                tier: pb::Tier::Hot as i32,
            };
            out.push(receipt_to_pb(r, Some(proof)));
        }
        Ok(pb::AppendResponse {
            receipts: out,
            checkpoint: Some(checkpoint_to_pb(&checkpoints[&first_key].1)),
            error: None,
        })
    }
}

fn receipt_to_pb(r: &Receipt, proof: Option<pb::InclusionProof>) -> pb::Receipt {
    pb::Receipt {
        event_id: r.event_id.to_string(),
        origin: r.origin.to_string(),
        leaf_index: r.leaf_index,
        leaf_hash: r.leaf_hash.to_vec(),
        duplicate: r.duplicate,
        proof,
    }
}

fn checkpoint_to_pb(cp: &SignedCheckpoint) -> pb::SignedCheckpoint {
    pb::SignedCheckpoint {
        note: cp.note.clone(),
    }
}

fn error_response(status: &Status) -> pb::AppendResponse {
    pb::AppendResponse {
        receipts: Vec::new(),
        checkpoint: None,
        error: Some(append_error(status)),
    }
}

/// The request's error as an in-stream `AppendError`.
fn append_error(status: &Status) -> pb::AppendError {
    let (event_index, field) = status::event_blame(status);
    let (retry_after_ms, request_exceeds_quota) = status::retry_hint(status);
    pb::AppendError {
        code: status.code() as i32,
        message: status.message().to_owned(),
        event_index,
        field,
        retry_after_ms,
        request_exceeds_quota,
    }
}

/// An append request queued for the sequencer.
pub struct QueuedAppend {
    started: Instant,
    principal: Principal,
    per_tenant: Vec<(String, u64)>,
    req: pb::AppendRequest,
    pending: auditledger_ledger::PendingAppend,
}

/// `auditledger.v1.Ingest`.
#[derive(Clone)]
pub struct IngestService(pub Arc<AppState>);

#[tonic::async_trait]
impl pb::ingest_server::Ingest for IngestService {
    async fn append(
        &self,
        request: Request<pb::AppendRequest>,
    ) -> Result<Response<pb::AppendResponse>, Status> {
        const METHOD: &str = "Ingest.Append";
        let env_hint = request
            .get_ref()
            .events
            .first()
            .map(|e| e.environment.clone())
            .unwrap_or_default();
        let principal = self.0.authenticate(&request, METHOD, &env_hint)?;
        if principal.role != Role::Gateway {
            let reason = format!(
                "role {} may not append (gateway tokens only)",
                principal.role.as_str()
            );
            self.0.deny(&principal.name, METHOD, &env_hint, "", &reason);
            return Err(Status::permission_denied(reason));
        }
        let response = self
            .0
            .process_append(&principal, METHOD, request.into_inner())
            .await?;
        Ok(Response::new(response))
    }

    type AppendStreamStream = ResponseStream<pb::AppendResponse>;

    async fn append_stream(
        &self,
        request: Request<Streaming<pb::AppendRequest>>,
    ) -> Result<Response<Self::AppendStreamStream>, Status> {
        const METHOD: &str = "Ingest.AppendStream";
        let state = self.0.clone();
        let principal = state.authenticate(&request, METHOD, "")?;
        if principal.role != Role::Gateway {
            let reason = format!(
                "role {} may not append (gateway tokens only)",
                principal.role.as_str()
            );
            state.deny(&principal.name, METHOD, "", "", &reason);
            return Err(Status::permission_denied(reason));
        }
        if let Err(q) = state.quotas.open_stream(&principal.tenants) {
            for t in &principal.tenants {
                state.metrics.reject(t, "streams");
            }
            return Err(status::exhausted(q));
        }
        let mut inbound = request.into_inner();
        let inflight = state.config.server.max_inflight_per_stream;
        let (out_tx, out_rx) = mpsc::channel::<Result<pb::AppendResponse, Status>>(inflight);
        enum Slot {
            Pending(tokio::task::JoinHandle<pb::AppendResponse>),
            Ready(pb::AppendResponse),
            Fail(Status),
        }
        // In-order slots: requests are processed concurrently, answered in arrival order.
        let (slot_tx, mut slot_rx) = mpsc::channel::<Slot>(inflight);
        let reader_state = state.clone();
        let reader_principal = principal.clone();
        tokio::spawn(async move {
            let mut shutdown = reader_state.shutdown.clone();
            let idle = reader_state.config.server.stream_idle_timeout;
            loop {
                let next = tokio::select! {
                    msg = tokio::time::timeout(idle, inbound.message()) => msg,
                    _ = shutdown.wait_for(|s| *s) => break,
                };
                // No complete request for stream_idle_timeout (an idle or trickling client):
                // close the stream so it pins neither memory nor a quota slot.
                let Ok(next) = next else {
                    reader_state
                        .metrics
                        .hardening
                        .idle_streams_closed
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let _ = slot_tx
                        .send(Slot::Fail(Status::deadline_exceeded(format!(
                            "no append request on this stream for {} (server.stream_idle_timeout); open a new stream",
                            humantime::format_duration(idle)
                        ))))
                        .await;
                    break;
                };
                match next {
                    Ok(Some(req)) => {
                        // Queue in arrival order (so the log keeps the stream's order), then
                        // wait for durability concurrently with the next requests.
                        let slot = match reader_state
                            .begin_append(&reader_principal, METHOD, req)
                            .await
                        {
                            Ok(queued) => {
                                let s = reader_state.clone();
                                Slot::Pending(tokio::spawn(async move {
                                    s.finish_append(queued)
                                        .await
                                        .unwrap_or_else(|status| error_response(&status))
                                }))
                            }
                            Err(status) => Slot::Ready(error_response(&status)),
                        };
                        if slot_tx.send(slot).await.is_err() {
                            break;
                        }
                    }
                    Ok(None) => break,
                    Err(status) => {
                        tracing::warn!(principal = %reader_principal.name, error = %status, "append stream broken by the client");
                        let _ = slot_tx.send(Slot::Fail(status)).await;
                        break;
                    }
                }
            }
        });
        let writer_state = state.clone();
        tokio::spawn(async move {
            while let Some(slot) = slot_rx.recv().await {
                let item = match slot {
                    Slot::Pending(handle) => match handle.await {
                        Ok(resp) => Ok(resp),
                        Err(e) => Err(Status::internal(format!("append task failed: {e}"))),
                    },
                    Slot::Ready(resp) => Ok(resp),
                    Slot::Fail(status) => Err(status),
                };
                let last = item.is_err();
                if out_tx.send(item).await.is_err() || last {
                    break;
                }
            }
            writer_state.quotas.close_stream(&principal.tenants);
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(out_rx))))
    }
}

/// `auditledger.v1.Log`.
#[derive(Clone)]
pub struct LogService(pub Arc<AppState>);

const READ_ROLES: &[Role] = &[
    Role::Investigator,
    Role::Compliance,
    Role::Auditor,
    Role::Admin,
];
const CONTENT_ROLES: &[Role] = &[Role::Investigator, Role::Auditor, Role::Admin];
const ENTRIES_ROLES: &[Role] = &[Role::Investigator, Role::Admin];

/// Why a [`pb::LeafKey`] names no provable leaf.
enum KeyError {
    Invalid(String),
    NotFound(String),
    OutOfRange(String),
    Ledger(LedgerError),
}

impl KeyError {
    /// The status, its message prefixed (e.g. with the key's position in a batch).
    fn status(self, prefix: &str) -> Status {
        match self {
            KeyError::Invalid(m) => Status::invalid_argument(format!("{prefix}{m}")),
            KeyError::NotFound(m) => Status::not_found(format!("{prefix}{m}")),
            KeyError::OutOfRange(m) => Status::out_of_range(format!("{prefix}{m}")),
            KeyError::Ledger(e) => {
                let status = status::from_ledger(e);
                Status::new(status.code(), format!("{prefix}{}", status.message()))
            }
        }
    }
}

/// The leaf index a key names, if the checkpoint of `size` covers it.
async fn resolve_leaf(
    log: &Log,
    key: Option<&pb::leaf_key::Key>,
    size: u64,
) -> Result<u64, KeyError> {
    let leaf_index = match key {
        Some(pb::leaf_key::Key::LeafIndex(i)) => *i,
        Some(pb::leaf_key::Key::LeafHash(h)) => {
            let hash: [u8; 32] = h.as_slice().try_into().map_err(|_| {
                KeyError::Invalid(format!("leaf_hash must be 32 bytes, got {}", h.len()))
            })?;
            log.find_leaf_hash(&hash)
                .await
                .map_err(KeyError::Ledger)?
                .ok_or_else(|| {
                    KeyError::NotFound(format!(
                        "no leaf with hash {} in {}",
                        hex::encode(hash),
                        log.origin()
                    ))
                })?
        }
        Some(pb::leaf_key::Key::EventId(id)) => {
            let parsed =
                EventId::parse(id).map_err(|e| KeyError::Invalid(format!("event_id: {e}")))?;
            log.find_event(&parsed)
                .map_err(KeyError::Ledger)?
                .ok_or_else(|| KeyError::NotFound(format!("no event {id} in {}", log.origin())))?
        }
        None => {
            return Err(KeyError::Invalid(
                "set one of leaf_index, leaf_hash or event_id".into(),
            ));
        }
    };
    if leaf_index >= size {
        return Err(KeyError::OutOfRange(format!(
            "leaf {leaf_index} is not covered by the checkpoint of size {size} (it may be newer: retry after checkpoint_interval)"
        )));
    }
    Ok(leaf_index)
}

/// The tier a leaf's contents are read from.
fn tier_of(log: &Log, leaf_index: u64) -> Result<pb::Tier, Status> {
    Ok(
        match log.segment_of(leaf_index).map_err(status::from_ledger)? {
            Some(r) if r.hot_released => proto_tier(r.tier),
            _ => pb::Tier::Hot,
        },
    )
}

fn hashes_to_pb(hashes: &[[u8; 32]]) -> Vec<Vec<u8>> {
    hashes.iter().map(|h| h.to_vec()).collect()
}

impl LogService {
    /// The checkpoint to prove against: the latest, or the one at `tree_size`.
    fn checkpoint_for(log: &Log, tree_size: u64) -> Result<Arc<SignedCheckpoint>, Status> {
        if tree_size == 0 {
            log.latest_checkpoint().ok_or_else(|| {
                Status::failed_precondition(format!(
                    "{} has no signed checkpoint yet; retry after checkpoint_interval",
                    log.origin()
                ))
            })
        } else {
            log.checkpoint_at(tree_size).map_err(|e| match e {
                LedgerError::NotFound(m) => Status::not_found(format!(
                    "{m}; use the size of a signed checkpoint or 0 for the latest"
                )),
                other => status::from_ledger(other),
            })
        }
    }
}

#[tonic::async_trait]
impl pb::log_server::Log for LogService {
    async fn get_checkpoint(
        &self,
        request: Request<pb::GetCheckpointRequest>,
    ) -> Result<Response<pb::SignedCheckpoint>, Status> {
        const METHOD: &str = "Log.GetCheckpoint";
        let s = &self.0;
        let req = request.get_ref();
        let p = s.authenticate(&request, METHOD, &req.environment)?;
        s.authorize(&p, METHOD, READ_ROLES, &req.tenant_id, &req.environment)?;
        let log = s.log(&req.tenant_id, &req.environment)?;
        let cp = Self::checkpoint_for(&log, req.tree_size)?;
        // With every witness cosignature stored for it (Admin.AddCosignature).
        let note = log.cosigned_note(&cp).map_err(status::from_ledger)?;
        Ok(Response::new(pb::SignedCheckpoint { note }))
    }

    async fn get_inclusion_proof(
        &self,
        request: Request<pb::GetInclusionProofRequest>,
    ) -> Result<Response<pb::InclusionProof>, Status> {
        const METHOD: &str = "Log.GetInclusionProof";
        let s = &self.0;
        let req = request.get_ref();
        let p = s.authenticate(&request, METHOD, &req.environment)?;
        s.authorize(&p, METHOD, CONTENT_ROLES, &req.tenant_id, &req.environment)?;
        let with_contents = p.role != Role::Auditor;
        if with_contents {
            s.require_justification(
                &p,
                METHOD,
                &req.tenant_id,
                &req.environment,
                &req.justification,
            )?;
        }
        let log = s.log(&req.tenant_id, &req.environment)?;
        let cp = Self::checkpoint_for(&log, req.tree_size)?;
        let size = cp.checkpoint.tree_size;
        let key = req.key.clone().map(|k| match k {
            pb::get_inclusion_proof_request::Key::LeafIndex(i) => pb::leaf_key::Key::LeafIndex(i),
            pb::get_inclusion_proof_request::Key::LeafHash(h) => pb::leaf_key::Key::LeafHash(h),
            pb::get_inclusion_proof_request::Key::EventId(id) => pb::leaf_key::Key::EventId(id),
        });
        let leaf_index = match resolve_leaf(&log, key.as_ref(), size).await {
            Ok(i) => i,
            Err(e) => return Err(e.status("")),
        };
        let hashes = log
            .inclusion_proof(leaf_index, size)
            .map_err(status::from_ledger)?;
        let leaf_hash = log.leaf_hash(leaf_index).map_err(status::from_ledger)?;
        let leaf = if with_contents {
            let mut attributes = BTreeMap::new();
            attributes.insert("leaf_index".into(), leaf_index.to_string());
            s.record_read(
                &p,
                METHOD,
                &req.tenant_id,
                &req.environment,
                &req.justification,
                attributes,
            )
            .await?;
            s.leaf_contents(&log, leaf_index).await?
        } else {
            // Auditors get proofs without contents; say where the leaf lives all the same.
            (Vec::new(), false, tier_of(&log, leaf_index)?)
        };
        let (leaf, content_expired, tier) = leaf;
        Ok(Response::new(pb::InclusionProof {
            leaf_index,
            tree_size: size,
            hashes: hashes_to_pb(&hashes),
            leaf,
            checkpoint: Some(s.proof_checkpoint(&log, &cp)?),
            leaf_hash: leaf_hash.to_vec(),
            content_expired,
            tier: tier as i32,
        }))
    }

    async fn get_inclusion_proofs(
        &self,
        request: Request<pb::GetInclusionProofsRequest>,
    ) -> Result<Response<pb::GetInclusionProofsResponse>, Status> {
        const METHOD: &str = "Log.GetInclusionProofs";
        let s = &self.0;
        let req = request.get_ref();
        let p = s.authenticate(&request, METHOD, &req.environment)?;
        s.authorize(&p, METHOD, CONTENT_ROLES, &req.tenant_id, &req.environment)?;
        let most = s.config.limits.max_proof_keys;
        if req.keys.is_empty() || req.keys.len() > most {
            return Err(Status::invalid_argument(format!(
                "keys: {} given; ask for 1 to {most} leaves per request (limits.max_proof_keys)",
                req.keys.len()
            )));
        }
        let log = s.log(&req.tenant_id, &req.environment)?;
        let cp = Self::checkpoint_for(&log, req.tree_size)?;
        let size = cp.checkpoint.tree_size;
        let mut leaves = Vec::with_capacity(req.keys.len());
        // Every unknown key is counted so the answer says how many there are, not just the first.
        let mut missing: Option<(usize, String)> = None;
        let mut missing_count = 0;
        for (i, key) in req.keys.iter().enumerate() {
            match resolve_leaf(&log, key.key.as_ref(), size).await {
                Ok(leaf) => leaves.push(leaf),
                Err(KeyError::NotFound(m)) => {
                    missing_count += 1;
                    missing.get_or_insert((i, m));
                }
                Err(other) => return Err(other.status(&format!("keys[{i}]: "))),
            }
        }
        if let Some((i, first)) = missing {
            return Err(Status::not_found(format!(
                "keys[{i}]: {first} ({missing_count} of {} keys not found)",
                req.keys.len()
            )));
        }
        let proofs = log
            .inclusion_proofs(&leaves, size)
            .map_err(status::from_ledger)?;
        let mut out = Vec::with_capacity(leaves.len());
        for (&leaf_index, (leaf_hash, hashes)) in leaves.iter().zip(&proofs) {
            out.push(pb::InclusionProof {
                leaf_index,
                tree_size: size,
                hashes: hashes_to_pb(hashes),
                leaf: Vec::new(),
                checkpoint: None,
                leaf_hash: leaf_hash.to_vec(),
                content_expired: false,
                tier: tier_of(&log, leaf_index)? as i32,
            });
        }
        Ok(Response::new(pb::GetInclusionProofsResponse {
            checkpoint: Some(s.proof_checkpoint(&log, &cp)?),
            proofs: out,
        }))
    }

    async fn get_consistency_proof(
        &self,
        request: Request<pb::GetConsistencyProofRequest>,
    ) -> Result<Response<pb::ConsistencyProof>, Status> {
        const METHOD: &str = "Log.GetConsistencyProof";
        let s = &self.0;
        let req = request.get_ref();
        let p = s.authenticate(&request, METHOD, &req.environment)?;
        s.authorize(&p, METHOD, READ_ROLES, &req.tenant_id, &req.environment)?;
        let log = s.log(&req.tenant_id, &req.environment)?;
        let latest = Self::checkpoint_for(&log, 0)?;
        if req.second > latest.checkpoint.tree_size {
            return Err(Status::out_of_range(format!(
                "second = {} is beyond the latest checkpoint's tree size {}",
                req.second, latest.checkpoint.tree_size
            )));
        }
        let hashes = log
            .consistency_proof(req.first, req.second)
            .map_err(status::from_ledger)?;
        Ok(Response::new(pb::ConsistencyProof {
            first: req.first,
            second: req.second,
            hashes: hashes_to_pb(&hashes),
        }))
    }

    type GetEntriesStream = ResponseStream<pb::Entry>;

    async fn get_entries(
        &self,
        request: Request<pb::GetEntriesRequest>,
    ) -> Result<Response<Self::GetEntriesStream>, Status> {
        const METHOD: &str = "Log.GetEntries";
        let s = self.0.clone();
        let req = request.get_ref().clone();
        let p = s.authenticate(&request, METHOD, &req.environment)?;
        s.authorize(&p, METHOD, ENTRIES_ROLES, &req.tenant_id, &req.environment)?;
        s.require_justification(
            &p,
            METHOD,
            &req.tenant_id,
            &req.environment,
            &req.justification,
        )?;
        let log = s.log(&req.tenant_id, &req.environment)?;
        let size = log.tree_size();
        if req.start > req.end {
            return Err(Status::invalid_argument(format!(
                "start {} is after end {}",
                req.start, req.end
            )));
        }
        if req.end > size {
            return Err(Status::out_of_range(format!(
                "end {} is beyond the tree size {size}",
                req.end
            )));
        }
        let mut attributes = BTreeMap::new();
        attributes.insert("start".into(), req.start.to_string());
        attributes.insert("end".into(), req.end.to_string());
        s.record_read(
            &p,
            METHOD,
            &req.tenant_id,
            &req.environment,
            &req.justification,
            attributes,
        )
        .await?;
        let (tx, rx) = mpsc::channel::<Result<pb::Entry, Status>>(256);
        // Read on a blocking thread; the channel bounds memory for any range.
        let handle = tokio::runtime::Handle::current();
        tokio::task::spawn_blocking(move || {
            let sent = s.for_each_leaf_blocking(&log, req.start, req.end, &handle, |entry| {
                Ok(tx.blocking_send(Ok(entry)).is_ok())
            });
            if let Err(e) = sent {
                let _ = tx.blocking_send(Err(e));
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}
