//! The event model (DESIGN §3, §3a): validation of incoming `AuditEvent`s and the canonical
//! leaf encoding of `LeafRecord`.
//!
//! The prost-generated `AuditEvent` *is* the domain event: mirroring its 38 fields in a second
//! struct would only add a place to drop one. Everything else in the ledger's API is a domain
//! type.
//!
//! Encoding is deterministic (DESIGN §10): prost writes fields in field-number order, the
//! attributes map is a `BTreeMap` (sorted keys), and default values are omitted. The leaf is
//! `LeafRecord { event, logged_at, principal }`; [`encode_leaf`] builds it from the already
//! encoded event without re-encoding, and a test pins it to prost's own output.

pub use auditledger_proto::v1::{
    Approval, ApprovalOutcome, AuditEvent, Decision, EventKind, LeafRecord,
};
use prost::Message as _;

/// Tenant id of the ledger's own system log.
pub const SYSTEM_TENANT: &str = "_system";

/// Longest tenant id or environment name.
pub const MAX_NAME_LEN: usize = 64;

/// A parsed `event_id`: the 16 bytes of a UUIDv7.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EventId(pub [u8; 16]);

impl EventId {
    /// Parses the canonical lowercase hyphenated form of a UUIDv7
    /// (`xxxxxxxx-xxxx-7xxx-[89ab]xxx-xxxxxxxxxxxx`).
    pub fn parse(text: &str) -> Result<EventId, String> {
        let bytes = text.as_bytes();
        if bytes.len() != 36 {
            return Err(format!(
                "{text:?} is not a UUID: expected 36 characters, got {}",
                bytes.len()
            ));
        }
        let mut out = [0u8; 16];
        let mut nibbles = 0usize;
        for (i, &b) in bytes.iter().enumerate() {
            if matches!(i, 8 | 13 | 18 | 23) {
                if b != b'-' {
                    return Err(format!(
                        "{text:?} is not a UUID: expected '-' at position {i}"
                    ));
                }
                continue;
            }
            let v = match b {
                b'0'..=b'9' => b - b'0',
                b'a'..=b'f' => b - b'a' + 10,
                b'A'..=b'F' => {
                    return Err(format!("{text:?} must be lowercase"));
                }
                _ => {
                    return Err(format!(
                        "{text:?} is not a UUID: bad character at position {i}"
                    ));
                }
            };
            out[nibbles / 2] |= if nibbles.is_multiple_of(2) { v << 4 } else { v };
            nibbles += 1;
        }
        let version = out[6] >> 4;
        if version != 7 {
            return Err(format!(
                "{text:?} is a version {version} UUID; event ids must be UUIDv7"
            ));
        }
        if out[8] >> 6 != 0b10 {
            return Err(format!("{text:?} does not have the RFC 9562 variant bits"));
        }
        Ok(EventId(out))
    }

    /// Milliseconds since the epoch embedded in the UUIDv7.
    pub fn unix_millis(&self) -> u64 {
        let mut ms = [0u8; 8];
        ms[2..].copy_from_slice(&self.0[..6]);
        u64::from_be_bytes(ms)
    }
}

impl std::fmt::Display for EventId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let h = hex::encode(self.0);
        write!(
            f,
            "{}-{}-{}-{}-{}",
            &h[0..8],
            &h[8..12],
            &h[12..16],
            &h[16..20],
            &h[20..32]
        )
    }
}

/// A validation failure of one field.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("field `{field}`: {reason}")]
pub struct FieldError {
    pub field: &'static str,
    pub reason: String,
}

fn field_err(field: &'static str, reason: impl Into<String>) -> FieldError {
    FieldError {
        field,
        reason: reason.into(),
    }
}

/// Checks a tenant id or environment name: 1–64 of `[A-Za-z0-9._-]`, starting alphanumeric.
pub fn check_name(field: &'static str, value: &str) -> Result<(), FieldError> {
    if value.is_empty() {
        return Err(field_err(field, "required"));
    }
    if value.len() > MAX_NAME_LEN {
        return Err(field_err(
            field,
            format!("{} characters, more than {MAX_NAME_LEN}", value.len()),
        ));
    }
    let first_ok = value.as_bytes()[0].is_ascii_alphanumeric();
    if !first_ok
        || !value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Err(field_err(
            field,
            format!(
                "{value:?} must be letters, digits, '.', '_' or '-', starting with a letter or digit"
            ),
        ));
    }
    Ok(())
}

fn check_hex(field: &'static str, value: &str, len: usize) -> Result<(), FieldError> {
    if value.is_empty() {
        return Ok(());
    }
    if value.len() != len
        || !value
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    {
        return Err(field_err(
            field,
            format!("{value:?} must be {len} lowercase hex digits (W3C trace context)"),
        ));
    }
    if value.bytes().all(|b| b == b'0') {
        return Err(field_err(
            field,
            "all-zero ids are invalid (W3C trace context)",
        ));
    }
    Ok(())
}

/// Validates an event (DESIGN §3a): required fields, enum values, id formats and the encoded
/// size. Tenancy (is the sender allowed to write this tenant?) is the caller's concern.
pub fn validate(event: &AuditEvent, max_event_bytes: usize) -> Result<EventId, FieldError> {
    if event.event_id.is_empty() {
        return Err(field_err("event_id", "required"));
    }
    let id = EventId::parse(&event.event_id).map_err(|r| field_err("event_id", r))?;
    match EventKind::try_from(event.event_kind) {
        Ok(EventKind::Unspecified) => {
            return Err(field_err(
                "event_kind",
                "required (EVENT_KIND_UNSPECIFIED given)",
            ));
        }
        Err(_) => {
            return Err(field_err(
                "event_kind",
                format!("unknown value {}", event.event_kind),
            ));
        }
        Ok(_) => {}
    }
    check_name("tenant_id", &event.tenant_id)?;
    check_name("environment", &event.environment)?;
    if event.occurred_at == 0 {
        return Err(field_err("occurred_at", "required (unix nanoseconds)"));
    }
    check_hex("trace_id", &event.trace_id, 32)?;
    check_hex("span_id", &event.span_id, 16)?;
    if Decision::try_from(event.decision).is_err() {
        return Err(field_err(
            "decision",
            format!("unknown value {}", event.decision),
        ));
    }
    if let Some(approval) = &event.approval
        && ApprovalOutcome::try_from(approval.outcome).is_err()
    {
        return Err(field_err(
            "approval.outcome",
            format!("unknown value {}", approval.outcome),
        ));
    }
    if !event.parent_event_id.is_empty() {
        EventId::parse(&event.parent_event_id).map_err(|r| field_err("parent_event_id", r))?;
    }
    if event.attributes.keys().any(String::is_empty) {
        return Err(field_err("attributes", "empty attribute key"));
    }
    let size = event.encoded_len();
    if size > max_event_bytes {
        return Err(field_err(
            "event",
            format!("encoded size {size} bytes exceeds the limit of {max_event_bytes} bytes"),
        ));
    }
    Ok(id)
}

/// Canonical encoding of an event.
pub fn encode_event(event: &AuditEvent) -> Vec<u8> {
    event.encode_to_vec()
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Leaf bytes: the deterministic encoding of `LeafRecord { event, logged_at, principal }`,
/// built from the canonical event encoding.
pub fn encode_leaf(event_bytes: &[u8], logged_at: u64, principal: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(event_bytes.len() + principal.len() + 24);
    encode_leaf_into(&mut out, event_bytes, logged_at, principal);
    out
}

/// [`encode_leaf`], appended to `out`.
pub fn encode_leaf_into(out: &mut Vec<u8>, event_bytes: &[u8], logged_at: u64, principal: &str) {
    // Field 1 (event), wire type 2. An empty event is a present-but-default message: prost
    // writes it as tag + zero length, and so do we.
    out.push(0x0A);
    put_varint(out, event_bytes.len() as u64);
    out.extend_from_slice(event_bytes);
    if logged_at != 0 {
        out.push(0x10);
        put_varint(out, logged_at);
    }
    if !principal.is_empty() {
        out.push(0x1A);
        put_varint(out, principal.len() as u64);
        out.extend_from_slice(principal.as_bytes());
    }
}

/// Errors decoding stored leaves.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LeafError {
    #[error("leaf is not a valid LeafRecord: {0}")]
    Decode(#[from] prost::DecodeError),
    #[error("leaf has no event")]
    MissingEvent,
    #[error(
        "leaf is not canonically encoded (re-encoding gives {reencoded} bytes, stored {stored})"
    )]
    NotCanonical { stored: usize, reencoded: usize },
}

/// Decodes leaf bytes.
pub fn decode_leaf(leaf: &[u8]) -> Result<LeafRecord, LeafError> {
    let record = LeafRecord::decode(leaf)?;
    if record.event.is_none() {
        return Err(LeafError::MissingEvent);
    }
    Ok(record)
}

/// Decodes leaf bytes and checks that they are exactly the canonical encoding (fsck, verifier).
pub fn decode_leaf_strict(leaf: &[u8]) -> Result<LeafRecord, LeafError> {
    let record = decode_leaf(leaf)?;
    let reencoded = record.encode_to_vec();
    if reencoded != leaf {
        return Err(LeafError::NotCanonical {
            stored: leaf.len(),
            reencoded: reencoded.len(),
        });
    }
    Ok(record)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    pub(crate) fn sample_event() -> AuditEvent {
        AuditEvent {
            event_id: "01936f0e-7a2b-7c3d-8e4f-0123456789ab".into(),
            event_kind: EventKind::ToolCall as i32,
            tenant_id: "acme".into(),
            environment: "prod".into(),
            occurred_at: 1_763_700_000_000_000_000,
            ..Default::default()
        }
    }

    #[test]
    fn event_id_parsing() {
        let id = EventId::parse("01936f0e-7a2b-7c3d-8e4f-0123456789ab").unwrap();
        assert_eq!(id.to_string(), "01936f0e-7a2b-7c3d-8e4f-0123456789ab");
        assert_eq!(id.unix_millis(), 0x01936f0e7a2b);
        for (bad, needle) in [
            ("01936f0e-7a2b-4c3d-8e4f-0123456789ab", "version 4"),
            ("01936F0E-7a2b-7c3d-8e4f-0123456789ab", "lowercase"),
            ("01936f0e7a2b-7c3d-8e4f-0123456789ab0", "'-'"),
            ("01936f0e-7a2b-7c3d-ce4f-0123456789ab", "variant"),
            ("short", "36 characters"),
            ("01936f0e-7a2b-7c3d-8e4f-0123456789ag", "bad character"),
        ] {
            let err = EventId::parse(bad).unwrap_err();
            assert!(err.contains(needle), "{bad}: {err}");
        }
    }

    #[test]
    fn validation_names_the_field() {
        assert!(validate(&sample_event(), 65536).is_ok());
        type Mutation = fn(&mut AuditEvent);
        let cases: Vec<(Mutation, &str)> = vec![
            (|e| e.event_id.clear(), "event_id"),
            (|e| e.event_kind = 0, "event_kind"),
            (|e| e.event_kind = 99, "event_kind"),
            (|e| e.tenant_id.clear(), "tenant_id"),
            (|e| e.tenant_id = "_system".into(), "tenant_id"),
            (|e| e.environment = "prod env".into(), "environment"),
            (|e| e.occurred_at = 0, "occurred_at"),
            (|e| e.trace_id = "abc".into(), "trace_id"),
            (|e| e.span_id = "0000000000000000".into(), "span_id"),
            (|e| e.decision = 17, "decision"),
            (|e| e.parent_event_id = "nope".into(), "parent_event_id"),
            (
                |e| {
                    e.attributes.insert(String::new(), "v".into());
                },
                "attributes",
            ),
            (|e| e.content_ref = "x".repeat(70_000), "event"),
        ];
        for (mutate, field) in cases {
            let mut e = sample_event();
            mutate(&mut e);
            let err = validate(&e, 65536).unwrap_err();
            assert_eq!(err.field, field, "{err}");
        }
    }

    fn arb_event() -> impl Strategy<Value = AuditEvent> {
        (
            any::<u64>(),
            ".{0,20}",
            proptest::collection::btree_map(".{1,8}", ".{0,8}", 0..5),
            any::<u32>(),
            any::<bool>(),
        )
            .prop_map(|(t, s, attributes, latency, err)| AuditEvent {
                occurred_at: t,
                tool_name: s.clone(),
                user_id: s,
                attributes,
                latency_ms: latency,
                is_error: err,
                ..sample_event()
            })
    }

    proptest! {
        #[test]
        fn leaf_encoding_matches_prost(event in arb_event(), logged_at in any::<u64>(), principal in ".{0,12}") {
            let fast = encode_leaf(&encode_event(&event), logged_at, &principal);
            let record = LeafRecord { event: Some(event), logged_at, principal };
            prop_assert_eq!(&fast, &record.encode_to_vec());
            prop_assert_eq!(decode_leaf_strict(&fast).unwrap(), record);
        }
    }

    #[test]
    fn non_canonical_leaf_is_detected() {
        let mut leaf = encode_leaf(&encode_event(&sample_event()), 5, "gw");
        // Repeat `logged_at` at the end: valid protobuf (last value wins), same message,
        // different bytes.
        leaf.extend_from_slice(&[0x10, 0x05]);
        assert!(decode_leaf(&leaf).is_ok());
        assert!(matches!(
            decode_leaf_strict(&leaf),
            Err(LeafError::NotCanonical { .. })
        ));
    }
}
