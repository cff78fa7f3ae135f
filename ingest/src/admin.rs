//! `auditledger.v1.Admin`: legal holds, tier status, signing keys (list, rotate, revoke). Holds
//! are placed and released by admins of the tenant, keys are changed by admins of `_system`;
//! every change goes to the system log before it takes effect. Witness cosignatures
//! (`AddCosignature`) are accepted from the witnesses of `[witnesses] keys` by admins of the
//! log's tenant, on checkpoints this ledger signed (`docs/witnesses.md`).

use auditledger_ledger::{Clock as _, SystemClock};
use std::collections::BTreeMap;
use std::sync::Arc;

use auditledger_ledger::checkpoint::Checkpoint;
use auditledger_ledger::event::SYSTEM_TENANT;
use auditledger_ledger::event::{Decision, EventKind};
use auditledger_ledger::holds::LegalHold;
use auditledger_ledger::keys::{KeyEntry, KeyError, KeyStatus, Keyring, unix_now};
use auditledger_ledger::note::Note;
use auditledger_ledger::segments::{SegmentRecord, Tier};
use auditledger_ledger::{LedgerError, Log};
use auditledger_proto::v1 as pb;
use tonic::{Request, Response, Status};

use crate::auth::{Principal, Role};
use crate::server::AppState;
use crate::status;
use crate::syslog::SystemRecord;

/// `auditledger.v1.Admin`.
#[derive(Clone)]
pub struct AdminService(pub Arc<AppState>);

const HOLD_WRITERS: &[Role] = &[Role::Admin];
const HOLD_READERS: &[Role] = &[Role::Admin, Role::Compliance, Role::Auditor];
const STATUS_READERS: &[Role] = &[Role::Admin, Role::Compliance, Role::Auditor];

fn key_info(k: &KeyEntry, now: u64) -> pb::KeyInfo {
    pb::KeyInfo {
        name: k.verifier.name().to_owned(),
        key_id: format!("{:08x}", k.verifier.key_id()),
        verifier_key: k.verifier.to_string(),
        valid_from: k.valid_from,
        valid_until: k.valid_until.unwrap_or(0),
        revoked_at: k.revoked_at.unwrap_or(0),
        active: k.status_at(now) == KeyStatus::Active && k.signer.is_some(),
    }
}

impl AdminService {
    /// Keys sign every log, so changing them takes an admin of the `_system` tenant.
    fn key_admin<T>(&self, request: &Request<T>, method: &str) -> Result<Principal, Status> {
        let s = &self.0;
        let p = s.authenticate(request, method, "")?;
        if p.role != Role::Admin || !p.tenants.iter().any(|t| t == SYSTEM_TENANT) {
            let reason = format!(
                "{method} changes the keys of every log: it needs an admin token of tenant {SYSTEM_TENANT}"
            );
            s.deny(&p.name, method, "", "", &reason);
            return Err(Status::permission_denied(reason));
        }
        Ok(p)
    }

    /// Records a key change in the system log of every environment; refused if that fails.
    async fn record_key_change<const N: usize>(
        &self,
        p: &Principal,
        method: &str,
        reason: &str,
        justification: &str,
        attributes: [(&str, String); N],
    ) -> Result<(), Status> {
        for environment in &self.0.config.ledger.environments {
            self.0
                .syslog
                .record(&SystemRecord {
                    kind: EventKind::KeyRotation,
                    environment: environment.clone(),
                    principal: p.name.clone(),
                    method: method.to_owned(),
                    decision: Decision::Allow,
                    reason: reason.to_owned(),
                    target: String::new(),
                    justification: justification.to_owned(),
                    attributes: attributes
                        .iter()
                        .map(|(k, v)| ((*k).to_owned(), v.clone()))
                        .collect(),
                })
                .await
                .map_err(|e| {
                    Status::unavailable(format!(
                        "cannot record the key change in the system log ({e}); nothing was changed"
                    ))
                })?;
        }
        Ok(())
    }

    /// Applies `change` to a copy of the keyring, saves it, then makes it the live keyring
    /// (the checkpointer reads it at every signing).
    fn change_keyring(
        &self,
        change: impl FnOnce(&mut Keyring) -> Result<KeyEntry, KeyError>,
    ) -> Result<KeyEntry, Status> {
        let mut live = self
            .0
            .ledger
            .keyring()
            .write()
            .unwrap_or_else(|e| e.into_inner());
        let mut next = live.clone();
        let entry = change(&mut next).map_err(|e| Status::invalid_argument(e.to_string()))?;
        next.save()
            .map_err(|e| Status::internal(format!("saving the keyring: {e}")))?;
        *live = next;
        Ok(entry)
    }

    /// Records a hold change in the system log; the change is refused if that fails.
    async fn record_hold(
        &self,
        p: &Principal,
        method: &str,
        hold: &LegalHold,
        reason: &str,
    ) -> Result<(), Status> {
        let mut attributes = BTreeMap::new();
        attributes.insert("hold_id".into(), hold.hold_id.clone());
        attributes.insert("case_id".into(), hold.case_id.clone());
        attributes.insert("from_time".into(), hold.from_time.to_string());
        attributes.insert("to_time".into(), hold.to_time.to_string());
        for (k, v) in [
            ("user_id", &hold.user_id),
            ("session_id", &hold.session_id),
            ("correlation_id", &hold.correlation_id),
        ] {
            if !v.is_empty() {
                attributes.insert(k.into(), v.clone());
            }
        }
        self.0
            .syslog
            .record(&SystemRecord {
                kind: EventKind::LegalHold,
                environment: hold.environment.clone(),
                principal: p.name.clone(),
                method: method.to_owned(),
                decision: Decision::Allow,
                reason: reason.to_owned(),
                target: format!("{}/{}", hold.tenant_id, hold.environment),
                justification: String::new(),
                attributes,
            })
            .await
            .map_err(|e| {
                Status::unavailable(format!(
                    "cannot record the change in the system log ({e}); nothing was changed"
                ))
            })
    }
}

#[tonic::async_trait]
impl pb::admin_server::Admin for AdminService {
    async fn rotate_signing_key(
        &self,
        request: Request<pb::RotateSigningKeyRequest>,
    ) -> Result<Response<pb::KeyInfo>, Status> {
        const METHOD: &str = "Admin.RotateSigningKey";
        let p = self.key_admin(&request, METHOD)?;
        let req = request.get_ref();
        if req.justification.trim().is_empty() {
            return Err(Status::invalid_argument(
                "rotating the signing key needs a justification",
            ));
        }
        let name = if req.key_name.is_empty() {
            self.0.config.ledger.origin_prefix.clone()
        } else {
            req.key_name.clone()
        };
        let overlap = (req.overlap_seconds > 0).then_some(req.overlap_seconds);
        self.record_key_change(
            &p,
            METHOD,
            &format!("signing key rotation: new key {name}"),
            &req.justification,
            [
                ("key_name", name.clone()),
                ("overlap_seconds", req.overlap_seconds.to_string()),
            ],
        )
        .await?;
        let entry = self.change_keyring(|ring| ring.rotate(&name, unix_now(), overlap))?;
        tracing::info!(principal = %p.name, key = %entry.verifier, "signing key rotated");
        Ok(Response::new(key_info(&entry, unix_now())))
    }

    async fn revoke_key(
        &self,
        request: Request<pb::RevokeKeyRequest>,
    ) -> Result<Response<pb::KeyInfo>, Status> {
        const METHOD: &str = "Admin.RevokeKey";
        let p = self.key_admin(&request, METHOD)?;
        let req = request.get_ref();
        if req.reason.trim().is_empty() {
            return Err(Status::invalid_argument("revoking a key needs a reason"));
        }
        {
            let ring = self
                .0
                .ledger
                .keyring()
                .read()
                .unwrap_or_else(|e| e.into_inner());
            match ring.find(&req.key_id) {
                None => {
                    return Err(Status::not_found(format!(
                        "no key with id {:?}",
                        req.key_id
                    )));
                }
                Some(k) if k.revoked_at.is_some() => {
                    return Err(Status::failed_precondition(format!(
                        "key {} was already revoked",
                        req.key_id
                    )));
                }
                Some(_) => {}
            }
        }
        self.record_key_change(
            &p,
            METHOD,
            &format!("signing key {} revoked: {}", req.key_id, req.reason),
            &req.reason,
            [("key_id", req.key_id.clone())],
        )
        .await?;
        let entry =
            self.change_keyring(|ring| ring.revoke(&req.key_id, unix_now(), &req.reason))?;
        tracing::warn!(principal = %p.name, key = %entry.verifier, "signing key revoked");
        Ok(Response::new(key_info(&entry, unix_now())))
    }

    async fn list_keys(
        &self,
        request: Request<pb::ListKeysRequest>,
    ) -> Result<Response<pb::ListKeysResponse>, Status> {
        const METHOD: &str = "Admin.ListKeys";
        let s = &self.0;
        let p = s.authenticate(&request, METHOD, "")?;
        if !matches!(p.role, Role::Admin | Role::Auditor | Role::Compliance) {
            let reason = format!("role {} may not call {METHOD}", p.role.as_str());
            s.deny(&p.name, METHOD, "", "", &reason);
            return Err(Status::permission_denied(reason));
        }
        let now = unix_now();
        let ring = s.ledger.keyring().read().unwrap_or_else(|e| e.into_inner());
        let keys = ring.entries().iter().map(|k| key_info(k, now)).collect();
        Ok(Response::new(pb::ListKeysResponse { keys }))
    }

    /// Stores witness cosignatures (C2SP tlog-cosignature) on one of this log's checkpoints:
    /// the note's body must be byte-identical to the checkpoint we signed at its tree size,
    /// and every line that is not one of our own signatures must be a valid `cosignature/v1`
    /// by a witness of `[witnesses] keys`. Recorded in the system log before it is stored.
    async fn add_cosignature(
        &self,
        request: Request<pb::AddCosignatureRequest>,
    ) -> Result<Response<pb::SignedCheckpoint>, Status> {
        const METHOD: &str = "Admin.AddCosignature";
        let s = &self.0;
        let req = request.get_ref();
        let p = s.authenticate(&request, METHOD, &req.environment)?;
        s.authorize(&p, METHOD, HOLD_WRITERS, &req.tenant_id, &req.environment)?;
        let note = Note::parse(req.cosigned_note.as_bytes())
            .map_err(|e| Status::invalid_argument(format!("cosigned_note: {e}")))?;
        let body = Checkpoint::parse_body(note.text())
            .map_err(|e| Status::invalid_argument(format!("cosigned_note body: {e}")))?;
        let log = s.log(&req.tenant_id, &req.environment)?;
        if body.origin != log.origin() {
            return Err(Status::invalid_argument(format!(
                "cosigned_note is a checkpoint of {:?}, not of this log {:?}",
                body.origin,
                log.origin()
            )));
        }
        let size = body.tree_size;
        let stored = log.checkpoint_at(size).map_err(|e| match e {
            LedgerError::NotFound(_) => Status::not_found(format!(
                "{}: this ledger signed no checkpoint at tree size {size}",
                log.origin()
            )),
            other => status::from_ledger(other),
        })?;
        let stored_note = Note::parse(stored.note.as_bytes()).map_err(|e| {
            Status::data_loss(format!("stored checkpoint at tree size {size}: {e}"))
        })?;
        if stored_note.text() != note.text() {
            return Err(Status::failed_precondition(format!(
                "{}: the cosigned body differs from the checkpoint this ledger signed at tree size {size} (witnesses must cosign the note exactly as served)",
                log.origin()
            )));
        }
        let witnesses = s
            .config
            .witnesses
            .parsed()
            .map_err(|e| Status::internal(format!("witnesses.keys: {e}")))?;
        let own_keys = s
            .ledger
            .keyring()
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .all_verifiers();
        let mut cosignatures = Vec::new();
        for sig in note.signatures() {
            // Our own signature lines are already stored with the checkpoint.
            if stored_note.signatures().contains(sig)
                || own_keys
                    .iter()
                    .any(|k| k.name() == sig.name && k.key_id() == sig.key_id)
            {
                continue;
            }
            let Some(witness) = witnesses.iter().find(|w| w.matches(sig)) else {
                let reason = format!(
                    "signature line by {}+{:08x} is not from a configured witness ([witnesses] keys)",
                    sig.name, sig.key_id
                );
                s.deny_on_log(&p.name, METHOD, &req.tenant_id, &req.environment, &reason);
                return Err(Status::permission_denied(reason));
            };
            let cosignature = witness
                .verify(note.text(), sig)
                .map_err(|e| Status::invalid_argument(e.to_string()))?;
            cosignatures.push(cosignature);
        }
        if cosignatures.is_empty() {
            return Err(Status::invalid_argument(
                "cosigned_note carries no witness cosignature (only this ledger's own signatures)",
            ));
        }
        let named: Vec<String> = cosignatures
            .iter()
            .map(|c| format!("{}+{:08x}@{}", c.name, c.key_id, c.timestamp))
            .collect();
        let mut attributes = BTreeMap::new();
        attributes.insert("tree_size".into(), size.to_string());
        attributes.insert("witnesses".into(), named.join(","));
        attributes.insert(
            "checkpoint_body_blake3".into(),
            hex::encode(body.body_hash()),
        );
        s.syslog
            .record(&SystemRecord {
                kind: EventKind::Integrity,
                environment: req.environment.clone(),
                principal: p.name.clone(),
                method: METHOD.to_owned(),
                decision: Decision::Allow,
                reason: format!(
                    "witness cosignature added to checkpoint {size}: {}",
                    named.join(", ")
                ),
                target: format!("{}/{}", req.tenant_id, req.environment),
                justification: String::new(),
                attributes,
            })
            .await
            .map_err(|e| {
                Status::unavailable(format!(
                    "cannot record the cosignature in the system log ({e}); nothing was stored"
                ))
            })?;
        log.store_cosignatures(size, &cosignatures)
            .map_err(status::from_ledger)?;
        tracing::info!(principal = %p.name, origin = %log.origin(), tree_size = size, witnesses = %named.join(","), "witness cosignature stored");
        let note = log.cosigned_note(&stored).map_err(status::from_ledger)?;
        Ok(Response::new(pb::SignedCheckpoint { note }))
    }

    async fn place_legal_hold(
        &self,
        request: Request<pb::PlaceLegalHoldRequest>,
    ) -> Result<Response<pb::LegalHold>, Status> {
        const METHOD: &str = "Admin.PlaceLegalHold";
        let s = &self.0;
        let req = request.get_ref();
        let p = s.authenticate(&request, METHOD, &req.environment)?;
        s.authorize(&p, METHOD, HOLD_WRITERS, &req.tenant_id, &req.environment)?;
        if req.case_id.trim().is_empty() || req.reason.trim().is_empty() {
            return Err(Status::invalid_argument(
                "a legal hold needs a case_id and a reason",
            ));
        }
        let hold = LegalHold {
            hold_id: uuid::Uuid::now_v7().to_string(),
            tenant_id: req.tenant_id.clone(),
            environment: req.environment.clone(),
            from_time: req.from_time,
            to_time: req.to_time,
            user_id: req.user_id.clone(),
            session_id: req.session_id.clone(),
            correlation_id: req.correlation_id.clone(),
            case_id: req.case_id.clone(),
            reason: req.reason.clone(),
            placed_by: p.name.clone(),
            placed_at: SystemClock.now_nanos(),
            released_at: 0,
            released_by: String::new(),
        };
        // Validate before recording, so the system log only shows holds that exist.
        if hold.to_time != 0 && hold.to_time <= hold.from_time {
            return Err(Status::invalid_argument(format!(
                "legal hold window is empty: to_time {} ≤ from_time {}",
                hold.to_time, hold.from_time
            )));
        }
        self.record_hold(
            &p,
            METHOD,
            &hold,
            &format!("legal hold placed: {}", hold.reason),
        )
        .await?;
        s.ledger.holds().place(&hold).map_err(status::from_ledger)?;
        tracing::info!(hold_id = %hold.hold_id, principal = %p.name, target = %format!("{}/{}", hold.tenant_id, hold.environment), "legal hold placed");
        Ok(Response::new(hold))
    }

    async fn release_legal_hold(
        &self,
        request: Request<pb::ReleaseLegalHoldRequest>,
    ) -> Result<Response<pb::LegalHold>, Status> {
        const METHOD: &str = "Admin.ReleaseLegalHold";
        let s = &self.0;
        let req = request.get_ref();
        let p = s.authenticate(&request, METHOD, "")?;
        if req.reason.trim().is_empty() {
            return Err(Status::invalid_argument(
                "releasing a legal hold needs a reason",
            ));
        }
        let holds = s.ledger.holds();
        let Some(hold) = holds.get(&req.hold_id).map_err(status::from_ledger)? else {
            return Err(Status::not_found(format!(
                "no legal hold {:?}",
                req.hold_id
            )));
        };
        s.authorize(&p, METHOD, HOLD_WRITERS, &hold.tenant_id, &hold.environment)?;
        if hold.released_at != 0 {
            return Err(Status::failed_precondition(format!(
                "legal hold {} was already released by {}",
                hold.hold_id, hold.released_by
            )));
        }
        self.record_hold(
            &p,
            METHOD,
            &hold,
            &format!("legal hold released: {}", req.reason),
        )
        .await?;
        let released = holds
            .release(&req.hold_id, &p.name, SystemClock.now_nanos())
            .map_err(status::from_ledger)?;
        Ok(Response::new(released))
    }

    async fn list_legal_holds(
        &self,
        request: Request<pb::ListLegalHoldsRequest>,
    ) -> Result<Response<pb::ListLegalHoldsResponse>, Status> {
        const METHOD: &str = "Admin.ListLegalHolds";
        let s = &self.0;
        let req = request.get_ref();
        let p = s.authenticate(&request, METHOD, &req.environment)?;
        s.authorize(&p, METHOD, HOLD_READERS, &req.tenant_id, &req.environment)?;
        let holds = s
            .ledger
            .holds()
            .list(Some((&req.tenant_id, &req.environment)))
            .map_err(status::from_ledger)?;
        Ok(Response::new(pb::ListLegalHoldsResponse { holds }))
    }

    async fn get_tier_status(
        &self,
        request: Request<pb::GetTierStatusRequest>,
    ) -> Result<Response<pb::TierStatus>, Status> {
        const METHOD: &str = "Admin.GetTierStatus";
        let s = &self.0;
        let req = request.get_ref();
        let p = s.authenticate(&request, METHOD, &req.environment)?;
        let logs: Vec<Log> = if req.tenant_id.is_empty() && req.environment.is_empty() {
            if !STATUS_READERS.contains(&p.role) {
                let reason = format!("role {} may not call {METHOD}", p.role.as_str());
                s.deny(&p.name, METHOD, "", "", &reason);
                return Err(Status::permission_denied(reason));
            }
            s.ledger
                .logs()
                .into_iter()
                .filter(|l| p.covers(&l.key().tenant_id, &l.key().environment))
                .collect()
        } else {
            s.authorize(&p, METHOD, STATUS_READERS, &req.tenant_id, &req.environment)?;
            s.ledger
                .log(&req.tenant_id, &req.environment)
                .into_iter()
                .collect()
        };
        let hot_window_nanos = s.config.tiers.hot_window.as_nanos() as u64;
        let cutoff = SystemClock.now_nanos().saturating_sub(hot_window_nanos);
        let mut out = Vec::with_capacity(logs.len());
        for log in logs {
            out.push(log_tier_status(&log, cutoff).map_err(status::from_ledger)?);
        }
        Ok(Response::new(pb::TierStatus { logs: out }))
    }
}

fn proto_tier(t: Tier) -> pb::Tier {
    match t {
        Tier::Hot => pb::Tier::Hot,
        Tier::Warm => pb::Tier::Warm,
        Tier::Cold => pb::Tier::Cold,
    }
}

/// Usage per tier of one log. Hot = every leaf not in a released segment; pending moves = full
/// segments still hot whose newest leaf was logged before `cutoff`.
pub fn log_tier_status(log: &Log, cutoff: u64) -> Result<pb::LogTierStatus, LedgerError> {
    let size = log.tree_size();
    let bits = log.segment_bits();
    let records: Vec<SegmentRecord> = log.segments()?;
    let mut usage: BTreeMap<Tier, pb::TierUsage> = BTreeMap::new();
    let mut released_leaves = 0u64;
    for r in &records {
        if !r.hot_released {
            continue;
        }
        released_leaves += r.end() - r.start;
        let u = usage.entry(r.tier).or_insert_with(|| pb::TierUsage {
            tier: proto_tier(r.tier) as i32,
            oldest: u64::MAX,
            ..Default::default()
        });
        u.segments += 1;
        u.leaves += r.end() - r.start;
        u.bytes += r.object_bytes;
        u.oldest = u.oldest.min(r.oldest);
        u.newest = u.newest.max(r.newest);
    }
    let released: std::collections::HashSet<u64> = records
        .iter()
        .filter(|r| r.hot_released)
        .map(|r| r.start)
        .collect();
    let hot_leaves = size - released_leaves;
    let mut tiers = Vec::new();
    if hot_leaves > 0 {
        // Bounds of the hot tier: its first hot leaf and the log's last leaf.
        let first_hot = (0..size)
            .step_by(1 << bits)
            .find(|start| !released.contains(start))
            .unwrap_or(0);
        let logged_at = |i: u64| -> Result<u64, LedgerError> {
            Ok(log
                .leaf(i)?
                .and_then(|l| auditledger_ledger::event::decode_leaf(&l).ok())
                .map_or(0, |r| r.logged_at))
        };
        tiers.push(pb::TierUsage {
            tier: pb::Tier::Hot as i32,
            segments: hot_leaves.div_ceil(1 << bits),
            leaves: hot_leaves,
            bytes: 0,
            oldest: logged_at(first_hot)?,
            newest: logged_at(size - 1)?,
        });
    }
    tiers.extend(usage.into_values());
    let mut pending_moves = 0;
    let full = size >> bits;
    for k in 0..full {
        let start = k << bits;
        if released.contains(&start) {
            continue;
        }
        match log.segment_time_bounds(start)? {
            Some((_, newest)) if newest < cutoff => pending_moves += 1,
            _ => {}
        }
    }
    Ok(pb::LogTierStatus {
        origin: log.origin().to_owned(),
        tree_size: size,
        tiers,
        pending_moves,
    })
}
