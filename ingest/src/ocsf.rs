//! OCSF output for SIEMs: `auditledger export --format ocsf-jsonl` turns a signed retention
//! export (DESIGN §7 tar) into one OCSF *API Activity* (class 6003) JSON object per event.
//!
//! This module owns the AuditEvent → OCSF mapping ([`to_ocsf`], field by field) and the
//! conversion of an export tar into JSON lines. The output is a
//! convenience for search and alerting, **not evidence**: it is not signed and drops the
//! canonical leaf bytes. Each object carries the ledger's proof anchors (`origin`,
//! `leaf_index`, `leaf_hash`) under `unmapped.auditledger`, so any record a SIEM flags can be
//! proven with `Log.GetInclusionProof` or checked against the signed tar it came from.
//!
//! The conversion still refuses input that is visibly wrong — a leaf whose `leaf_hash` is not
//! the hash of its bytes, leaf indexes out of order, an entries file before the checkpoint —
//! so a damaged tar never turns into plausible-looking SIEM records.

use std::io::{Read, Write};

use arrow::array::{Array, BinaryArray, FixedSizeBinaryArray, UInt64Array};
use auditledger_ledger::event::decode_leaf;
use auditledger_proto::v1::{ApprovalOutcome, AuditEvent, Decision, EventKind, LeafRecord};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use serde_json::{Map, Value, json};

/// OCSF schema version the objects follow.
pub const OCSF_VERSION: &str = "1.3.0";
/// OCSF class `API Activity`.
pub const CLASS_UID: u64 = 6003;
/// OCSF category `Application Activity`.
pub const CATEGORY_UID: u64 = 6;
/// Largest tar member read into memory (an entries file of 32 768 leaves of 64 KiB at most).
const MAX_MEMBER_BYTES: u64 = 4 << 30;

#[derive(Debug, thiserror::Error)]
pub enum OcsfError {
    #[error("reading the export tar: {0}")]
    Tar(#[source] std::io::Error),
    #[error("export member {member}: {reason}")]
    Member { member: String, reason: String },
    #[error("{member}: leaf {leaf_index}: {reason}")]
    Leaf {
        member: String,
        leaf_index: u64,
        reason: String,
    },
    #[error("writing OCSF output: {0}")]
    Write(#[source] std::io::Error),
    #[error("the export has no `checkpoint` member before its entries")]
    NoCheckpoint,
}

/// What a conversion wrote.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OcsfSummary {
    /// The log the export came from.
    pub origin: String,
    /// OCSF objects written (one per event with content).
    pub events: u64,
    /// Leaves whose content has expired (only the hash is left): no object is written.
    pub expired: u64,
}

/// OCSF `activity_id` of API Activity: 1 Create, 2 Read, 3 Update, 4 Delete, 99 Other.
fn activity(kind: EventKind, mcp_method: &str) -> (u64, &'static str) {
    match kind {
        EventKind::Access | EventKind::DataExport => (2, "Read"),
        EventKind::PolicyChange | EventKind::KeyRotation | EventKind::LegalHold => (3, "Update"),
        EventKind::Retention => (4, "Delete"),
        EventKind::ToolCall if mcp_method.starts_with("resources/read") => (2, "Read"),
        _ => (99, "Other"),
    }
}

/// `action_id` (Security Control profile): 1 Allowed, 2 Denied, 4 Modified, 99 Other, 0 Unknown.
fn action(decision: Decision) -> Option<(u64, &'static str)> {
    match decision {
        Decision::Allow => Some((1, "Allowed")),
        Decision::Deny => Some((2, "Denied")),
        Decision::Modify => Some((4, "Modified")),
        Decision::RequireApproval => Some((99, "Other")),
        Decision::Unspecified => None,
    }
}

fn nanos_to_millis(nanos: u64) -> u64 {
    nanos / 1_000_000
}

fn put(map: &mut Map<String, Value>, key: &str, value: &str) {
    if !value.is_empty() {
        map.insert(key.into(), value.into());
    }
}

fn enum_name(name: &str, prefix: &str) -> String {
    name.trim_start_matches(prefix).to_ascii_lowercase()
}

/// One event as an OCSF API Activity object. `origin`, `leaf_index` and `leaf_hash` are the
/// ledger's proof anchors for it.
pub fn to_ocsf(record: &LeafRecord, origin: &str, leaf_index: u64, leaf_hash: &[u8]) -> Value {
    let default_event = AuditEvent::default();
    let e = record.event.as_ref().unwrap_or(&default_event);
    let kind = EventKind::try_from(e.event_kind).unwrap_or(EventKind::Unspecified);
    let decision = Decision::try_from(e.decision).unwrap_or(Decision::Unspecified);
    let kind_name = enum_name(kind.as_str_name(), "EVENT_KIND_");
    let (activity_id, activity_name) = activity(kind, &e.mcp_method);
    let failed = e.is_error || decision == Decision::Deny;
    let severity_id: u64 = match (kind, decision) {
        (EventKind::Integrity, _) => 4, // High: lost or replayed events
        (_, Decision::Deny) => 3,       // Medium: a blocked call
        _ => 1,                         // Informational
    };
    let severity = match severity_id {
        4 => "High",
        3 => "Medium",
        _ => "Informational",
    };

    let mut obj = Map::new();
    obj.insert("class_uid".into(), CLASS_UID.into());
    obj.insert("class_name".into(), "API Activity".into());
    obj.insert("category_uid".into(), CATEGORY_UID.into());
    obj.insert("category_name".into(), "Application Activity".into());
    obj.insert("activity_id".into(), activity_id.into());
    obj.insert("activity_name".into(), activity_name.into());
    obj.insert("type_uid".into(), (CLASS_UID * 100 + activity_id).into());
    obj.insert(
        "type_name".into(),
        format!("API Activity: {activity_name}").into(),
    );
    obj.insert("time".into(), nanos_to_millis(e.occurred_at).into());
    obj.insert("severity_id".into(), severity_id.into());
    obj.insert("severity".into(), severity.into());
    obj.insert("status_id".into(), if failed { 2 } else { 1 }.into());
    obj.insert(
        "status".into(),
        if failed { "Failure" } else { "Success" }.into(),
    );
    put(&mut obj, "status_code", &e.error_code);
    put(&mut obj, "message", &e.decision_reason);
    if e.latency_ms > 0 {
        obj.insert("duration".into(), u64::from(e.latency_ms).into());
    }
    if let Some((id, name)) = action(decision) {
        obj.insert("action_id".into(), id.into());
        obj.insert("action".into(), name.into());
        // disposition_id: 1 Allowed, 2 Blocked.
        match decision {
            Decision::Allow | Decision::Modify => {
                obj.insert("disposition_id".into(), 1.into());
                obj.insert("disposition".into(), "Allowed".into());
            }
            Decision::Deny => {
                obj.insert("disposition_id".into(), 2.into());
                obj.insert("disposition".into(), "Blocked".into());
            }
            _ => {}
        }
    }

    let mut metadata = Map::new();
    metadata.insert("version".into(), OCSF_VERSION.into());
    metadata.insert(
        "product".into(),
        json!({"name": "AuditLedger", "vendor_name": "AuditLedger",
               "version": env!("CARGO_PKG_VERSION")}),
    );
    metadata.insert("profiles".into(), json!(["security_control"]));
    put(&mut metadata, "uid", &e.event_id);
    put(&mut metadata, "correlation_uid", &e.correlation_id);
    put(&mut metadata, "tenant_uid", &e.tenant_id);
    put(&mut metadata, "log_name", origin);
    metadata.insert("log_provider".into(), "auditledger".into());
    metadata.insert("event_code".into(), kind_name.clone().into());
    metadata.insert(
        "logged_time".into(),
        nanos_to_millis(record.logged_at).into(),
    );
    obj.insert("metadata".into(), metadata.into());

    let mut actor = Map::new();
    if !e.user_id.is_empty() {
        actor.insert("user".into(), json!({ "uid": e.user_id }));
    }
    if !e.session_id.is_empty() {
        actor.insert("session".into(), json!({ "uid": e.session_id }));
    }
    put(&mut actor, "app_name", &e.agent_name);
    put(&mut actor, "app_uid", &e.agent_id);
    obj.insert("actor".into(), actor.into());

    let mut api = Map::new();
    let operation = if e.mcp_method.is_empty() {
        kind_name.as_str()
    } else {
        e.mcp_method.as_str()
    };
    api.insert("operation".into(), operation.into());
    if !e.tool_server.is_empty() {
        api.insert("service".into(), json!({ "name": e.tool_server }));
    }
    api.insert("request".into(), json!({ "uid": e.event_id }));
    if !e.error_code.is_empty() {
        api.insert("response".into(), json!({ "error": e.error_code }));
    }
    obj.insert("api".into(), api.into());

    let mut src = Map::new();
    put(&mut src, "ip", &e.source_ip);
    obj.insert("src_endpoint".into(), src.into());
    // The ledger does not know where the gateway runs; OCSF requires the object.
    obj.insert("cloud".into(), json!({ "provider": "unknown" }));
    if !e.resource.is_empty() {
        obj.insert("resources".into(), json!([{ "name": e.resource }]));
    }
    if !e.policy_id.is_empty() || !e.policy_version.is_empty() {
        let mut policy = Map::new();
        put(&mut policy, "uid", &e.policy_id);
        put(&mut policy, "version", &e.policy_version);
        obj.insert("policy".into(), policy.into());
    }

    // Everything OCSF has no attribute for, under the AuditEvent field names.
    let mut ledger = Map::new();
    ledger.insert("origin".into(), origin.into());
    ledger.insert("leaf_index".into(), leaf_index.into());
    ledger.insert("leaf_hash".into(), hex::encode(leaf_hash).into());
    ledger.insert("logged_at".into(), record.logged_at.into());
    put(&mut ledger, "principal", &record.principal);
    ledger.insert("occurred_at".into(), e.occurred_at.into());
    ledger.insert("event_kind".into(), kind_name.into());
    put(&mut ledger, "environment", &e.environment);
    if e.decision != 0 {
        ledger.insert(
            "decision".into(),
            enum_name(decision.as_str_name(), "DECISION_").into(),
        );
    }
    for (key, value) in [
        ("trace_id", &e.trace_id),
        ("span_id", &e.span_id),
        ("model", &e.model),
        ("gateway_id", &e.gateway_id),
        ("tool_name", &e.tool_name),
        ("arguments_hash", &e.arguments_hash),
        ("response_hash", &e.response_hash),
        ("content_ref", &e.content_ref),
        ("rule_id", &e.rule_id),
        ("dlp_result", &e.dlp_result),
        ("data_classification", &e.data_classification),
        ("risk_tier", &e.risk_tier),
        ("parent_event_id", &e.parent_event_id),
    ] {
        put(&mut ledger, key, value);
    }
    if e.gateway_seq > 0 {
        ledger.insert("gateway_seq".into(), e.gateway_seq.into());
    }
    if e.is_error {
        ledger.insert("is_error".into(), true.into());
    }
    if let Some(a) = &e.approval {
        let mut approval = Map::new();
        put(&mut approval, "approver", &a.approver);
        put(&mut approval, "ticket", &a.ticket);
        put(&mut approval, "reason", &a.reason);
        let outcome = ApprovalOutcome::try_from(a.outcome).unwrap_or_default();
        approval.insert(
            "outcome".into(),
            enum_name(outcome.as_str_name(), "APPROVAL_OUTCOME_").into(),
        );
        if a.decided_at > 0 {
            approval.insert("decided_at".into(), a.decided_at.into());
        }
        ledger.insert("approval".into(), approval.into());
    }
    if !e.attributes.is_empty() {
        let attributes: Map<String, Value> = e
            .attributes
            .iter()
            .map(|(k, v)| (k.clone(), Value::from(v.as_str())))
            .collect();
        ledger.insert("attributes".into(), attributes.into());
    }
    obj.insert("unmapped".into(), json!({ "auditledger": ledger }));
    Value::Object(obj)
}

fn member_error(member: &str, reason: impl std::fmt::Display) -> OcsfError {
    OcsfError::Member {
        member: member.to_owned(),
        reason: reason.to_string(),
    }
}

/// Converts one entries file; `next` is the leaf index the next row must have (None: the
/// first file, whose first row sets it).
fn convert_entries(
    member: &str,
    data: bytes::Bytes,
    origin: &str,
    next: &mut Option<u64>,
    out: &mut dyn Write,
    summary: &mut OcsfSummary,
) -> Result<(), OcsfError> {
    let reader = ParquetRecordBatchReaderBuilder::try_new(data)
        .map_err(|e| member_error(member, format_args!("not a readable Parquet file: {e}")))?
        .build()
        .map_err(|e| member_error(member, format_args!("reading rows: {e}")))?;
    for batch in reader {
        let batch = batch.map_err(|e| member_error(member, format_args!("reading rows: {e}")))?;
        let column = |name: &str| {
            batch
                .column_by_name(name)
                .ok_or_else(|| member_error(member, format_args!("no `{name}` column")))
        };
        let wrong =
            |name: &str| member_error(member, format_args!("column `{name}` has the wrong type"));
        let indexes = column("leaf_index")?
            .as_any()
            .downcast_ref::<UInt64Array>()
            .ok_or_else(|| wrong("leaf_index"))?;
        let hashes = column("leaf_hash")?
            .as_any()
            .downcast_ref::<FixedSizeBinaryArray>()
            .ok_or_else(|| wrong("leaf_hash"))?;
        let leaves = column("leaf")?
            .as_any()
            .downcast_ref::<BinaryArray>()
            .ok_or_else(|| wrong("leaf"))?;
        for row in 0..batch.num_rows() {
            let leaf_index = indexes.value(row);
            let leaf_err = |reason: String| OcsfError::Leaf {
                member: member.to_owned(),
                leaf_index,
                reason,
            };
            if let Some(expected) = *next
                && leaf_index != expected
            {
                return Err(leaf_err(format!(
                    "expected leaf {expected} here: leaves are missing or out of order"
                )));
            }
            *next = Some(leaf_index + 1);
            let stored_hash = hashes.value(row);
            if leaves.is_null(row) {
                summary.expired += 1;
                continue;
            }
            let leaf = leaves.value(row);
            let computed = auditledger_ledger::merkle::leaf_hash(leaf);
            if computed.as_slice() != stored_hash {
                return Err(leaf_err(format!(
                    "leaf_hash {} is not the hash of the leaf bytes ({})",
                    hex::encode(stored_hash),
                    hex::encode(computed)
                )));
            }
            let record = decode_leaf(leaf).map_err(|e| leaf_err(e.to_string()))?;
            let object = to_ocsf(&record, origin, leaf_index, stored_hash);
            serde_json::to_writer(&mut *out, &object)
                .map_err(|e| OcsfError::Write(std::io::Error::other(e)))?;
            out.write_all(b"\n").map_err(OcsfError::Write)?;
            summary.events += 1;
        }
    }
    Ok(())
}

/// Reads an export tar and writes one OCSF JSON object per event with content, in leaf order.
pub fn convert_export(tar: impl Read, out: &mut dyn Write) -> Result<OcsfSummary, OcsfError> {
    let mut archive = tar::Archive::new(tar);
    let mut summary = OcsfSummary::default();
    let mut origin: Option<String> = None;
    let mut next: Option<u64> = None;
    for member in archive.entries().map_err(OcsfError::Tar)? {
        let member = member.map_err(OcsfError::Tar)?;
        let name = member
            .path()
            .map_err(OcsfError::Tar)?
            .to_string_lossy()
            .into_owned();
        let size = member.header().size().map_err(OcsfError::Tar)?;
        if size > MAX_MEMBER_BYTES {
            return Err(member_error(
                &name,
                format_args!("{size} bytes is too large"),
            ));
        }
        let mut data = Vec::with_capacity(usize::try_from(size).unwrap_or(0).min(64 << 20));
        member
            .take(size)
            .read_to_end(&mut data)
            .map_err(OcsfError::Tar)?;
        if name == "checkpoint" {
            let text =
                String::from_utf8(data).map_err(|_| member_error(&name, "not UTF-8 text"))?;
            let first = text.lines().next().unwrap_or_default().trim();
            if first.is_empty() {
                return Err(member_error(&name, "has no origin line"));
            }
            origin = Some(first.to_owned());
        } else if auditledger_ledger::export::parse_entries_member(&name).is_some() {
            let origin = origin.as_deref().ok_or(OcsfError::NoCheckpoint)?;
            convert_entries(&name, data.into(), origin, &mut next, out, &mut summary)?;
        }
    }
    summary.origin = origin.ok_or(OcsfError::NoCheckpoint)?;
    out.flush().map_err(OcsfError::Write)?;
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;
    use auditledger_proto::v1::Approval;

    fn event(kind: EventKind, decision: Decision) -> AuditEvent {
        AuditEvent {
            event_id: "0190c1f2-0000-7000-8000-000000000001".into(),
            event_kind: kind as i32,
            tenant_id: "acme".into(),
            environment: "prod".into(),
            occurred_at: 1_700_000_000_123_456_789,
            user_id: "alice".into(),
            session_id: "s-1".into(),
            agent_id: "agent-7".into(),
            agent_name: "helper".into(),
            tool_server: "github-mcp".into(),
            tool_name: "create_issue".into(),
            mcp_method: "tools/call".into(),
            decision: decision as i32,
            policy_id: "p1".into(),
            source_ip: "127.0.0.1".into(),
            ..Default::default()
        }
    }

    fn record(e: AuditEvent) -> LeafRecord {
        LeafRecord {
            event: Some(e),
            logged_at: 1_700_000_001_000_000_000,
            principal: "gw-1".into(),
        }
    }

    const REQUIRED: &[&str] = &[
        "activity_id",
        "category_uid",
        "class_uid",
        "severity_id",
        "time",
        "type_uid",
        "metadata",
        "actor",
        "api",
        "src_endpoint",
        "cloud",
    ];

    #[test]
    fn every_kind_maps_with_the_required_fields() {
        // Bounded: the enum has a fixed, small number of values.
        for value in 1..=10 {
            let kind = EventKind::try_from(value).expect("kinds 1..=10 exist");
            let v = to_ocsf(
                &record(event(kind, Decision::Allow)),
                "o/acme/prod",
                5,
                &[7; 32],
            );
            let text = v.to_string();
            let parsed: Value = serde_json::from_str(&text).expect("output parses as JSON");
            for key in REQUIRED {
                assert!(
                    parsed.get(key).is_some(),
                    "{kind:?}: {key} missing in {text}"
                );
            }
            let activity = parsed["activity_id"].as_u64().unwrap();
            assert!([1, 2, 3, 4, 99].contains(&activity), "{kind:?}: {activity}");
            assert_eq!(parsed["type_uid"].as_u64().unwrap(), 600_300 + activity);
            assert_eq!(parsed["class_uid"], 6003);
            assert_eq!(parsed["time"], 1_700_000_000_123u64);
            assert_eq!(parsed["metadata"]["logged_time"], 1_700_000_001_000u64);
            assert!(parsed["metadata"]["version"].is_string());
            assert!(parsed["metadata"]["product"]["name"].is_string());
            assert!(parsed["api"]["operation"].is_string());
            let anchors = &parsed["unmapped"]["auditledger"];
            assert_eq!(anchors["origin"], "o/acme/prod");
            assert_eq!(anchors["leaf_index"], 5);
            assert_eq!(anchors["leaf_hash"], "07".repeat(32));
            assert_eq!(
                anchors["event_kind"],
                kind.as_str_name()["EVENT_KIND_".len()..].to_ascii_lowercase()
            );
        }
    }

    #[test]
    fn decisions_map_to_action_status_and_severity() {
        let deny = to_ocsf(
            &record(event(EventKind::ToolCall, Decision::Deny)),
            "o",
            0,
            &[0; 32],
        );
        assert_eq!(deny["action_id"], 2);
        assert_eq!(deny["disposition_id"], 2);
        assert_eq!(deny["status_id"], 2);
        assert_eq!(deny["severity_id"], 3);
        let allow = to_ocsf(
            &record(event(EventKind::ToolCall, Decision::Allow)),
            "o",
            0,
            &[0; 32],
        );
        assert_eq!(allow["action_id"], 1);
        assert_eq!(allow["status_id"], 1);
        assert_eq!(allow["severity_id"], 1);
        assert_eq!(allow["api"]["operation"], "tools/call");
        assert_eq!(allow["api"]["service"]["name"], "github-mcp");
        assert_eq!(allow["actor"]["user"]["uid"], "alice");
        assert_eq!(allow["actor"]["session"]["uid"], "s-1");
        assert_eq!(allow["src_endpoint"]["ip"], "127.0.0.1");
        assert_eq!(allow["policy"]["uid"], "p1");
        assert_eq!(
            allow["unmapped"]["auditledger"]["tool_name"],
            "create_issue"
        );
        let mut held = event(EventKind::Approval, Decision::RequireApproval);
        held.approval = Some(Approval {
            approver: "bob".into(),
            outcome: ApprovalOutcome::Approved as i32,
            ..Default::default()
        });
        let held = to_ocsf(&record(held), "o", 0, &[0; 32]);
        assert_eq!(held["action_id"], 99);
        assert!(held.get("disposition_id").is_none());
        assert_eq!(
            held["unmapped"]["auditledger"]["approval"]["outcome"],
            "approved"
        );
        let integrity = to_ocsf(
            &record(event(EventKind::Integrity, Decision::Unspecified)),
            "o",
            0,
            &[0; 32],
        );
        assert_eq!(integrity["severity_id"], 4);
        assert!(integrity.get("action_id").is_none());
        assert_eq!(integrity["api"]["operation"], "tools/call");
    }

    #[test]
    fn a_tar_without_checkpoint_is_refused() {
        let mut builder = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_gnu();
        header.set_size(3);
        header.set_mode(0o644);
        header.set_cksum();
        builder
            .append_data(&mut header, "entries-000000.parquet", &b"abc"[..])
            .unwrap();
        let tar = builder.into_inner().unwrap();
        let err = convert_export(&tar[..], &mut Vec::new()).unwrap_err();
        assert!(matches!(err, OcsfError::NoCheckpoint), "{err}");
    }
}
