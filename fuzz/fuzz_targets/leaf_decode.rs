//! Leaf and event decoding (DESIGN §3, §10) on arbitrary bytes.
//!
//! Asserts: decoding never panics; a leaf that `decode_leaf_strict` accepts is exactly the
//! canonical encoding — prost's re-encoding and the ledger's own `encode_leaf` fast path both
//! give back the input bytes; any leaf `decode_leaf` accepts re-encodes to bytes that strict
//! decoding accepts as the same record; an `AuditEvent` that decodes re-encodes to a
//! fixed point; an `EventId` that parses prints back to its input.

#![no_main]

#[path = "common.rs"]
mod common;

use auditledger_ledger::event::{
    self, AuditEvent, EventId, LeafRecord, decode_leaf, decode_leaf_strict, encode_event,
    encode_leaf,
};
use libfuzzer_sys::fuzz_target;
use prost::Message as _;

fn seeds() -> Vec<Vec<u8>> {
    let event = AuditEvent {
        event_id: "0190a8a0-0000-7000-8000-000000000001".into(),
        event_kind: event::EventKind::ToolCall as i32,
        schema_version: 1,
        tenant_id: "acme".into(),
        environment: "prod".into(),
        tool_server: "github".into(),
        tool_name: "create_issue".into(),
        user_id: "alice".into(),
        occurred_at: 1_795_000_000_000_000_000,
        trace_id: "4bf92f3577b34da6a3ce929d0e0e4736".into(),
        span_id: "00f067aa0ba902b7".into(),
        attributes: [("k".to_string(), "v".to_string())].into_iter().collect(),
        approval: Some(event::Approval {
            outcome: event::ApprovalOutcome::Approved as i32,
            ..Default::default()
        }),
        ..Default::default()
    };
    let bytes = encode_event(&event);
    vec![
        encode_leaf(&bytes, 1_795_000_000_000_000_001, "gateway:test"),
        encode_leaf(&[], 0, ""),
        bytes,
        b"0190a8a0-0000-7000-8000-000000000001".to_vec(),
    ]
}

fuzz_target!(
    init: { common::write_seeds_if_asked(seeds); },
    |data: &[u8]| {
        let lenient = decode_leaf(data);
        if let Ok(record) = decode_leaf_strict(data) {
            assert_eq!(record.encode_to_vec(), data, "strict decode accepted non-canonical bytes");
            let event = record.event.as_ref().expect("strict decode returns an event");
            let fast = encode_leaf(&encode_event(event), record.logged_at, &record.principal);
            assert_eq!(fast, data, "encode_leaf disagrees with the canonical encoding");
            match &lenient {
                Ok(l) => assert_eq!(l, &record, "lenient and strict decoding disagree"),
                Err(e) => panic!("strict decoding accepted what lenient refused: {e}"),
            }
        }
        if let Ok(record) = &lenient {
            let canonical = record.encode_to_vec();
            let again = decode_leaf_strict(&canonical)
                .expect("the canonical re-encoding of a decoded leaf must decode strictly");
            assert_eq!(&again, record);
        }
        if let Ok(ev) = AuditEvent::decode(data) {
            // Validation is total: it answers, never panics.
            let _ = event::validate(&ev, 65_536);
            let bytes = encode_event(&ev);
            let back = AuditEvent::decode(bytes.as_slice()).expect("re-encoded event decodes");
            assert_eq!(back, ev);
            assert_eq!(encode_event(&back), bytes, "event encoding is not a fixed point");
            let record = LeafRecord {
                event: Some(ev),
                logged_at: 42,
                principal: "p".into(),
            };
            assert_eq!(encode_leaf(&bytes, 42, "p"), record.encode_to_vec());
        }
        if let Ok(text) = std::str::from_utf8(data)
            && let Ok(id) = EventId::parse(text)
        {
            assert_eq!(id.to_string(), text);
        }
    }
);
