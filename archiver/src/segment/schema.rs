//! Column names, the Arrow schema and the file metadata keys of segment files (format in the
//! parent module's docs), and the decoding of a leaf into its typed columns.

use std::borrow::Cow;
use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use auditledger_ledger::event::{Decision, EventKind, LeafRecord};
use auditledger_ledger::merkle::HASH_LEN;

/// Version of the segment file format, recorded in every file.
pub const FORMAT_VERSION: u32 = 1;

/// Value of the `auditledger.format` metadata key.
pub(crate) const FORMAT_NAME: &str = "auditledger-segment";

/// Column names.
pub mod column {
    pub const LEAF_INDEX: &str = "leaf_index";
    pub const LEAF_HASH: &str = "leaf_hash";
    pub const LEAF: &str = "leaf";
    pub const LOGGED_AT: &str = "logged_at";
    pub const OCCURRED_AT: &str = "occurred_at";
    pub const EVENT_KIND: &str = "event_kind";
    pub const EVENT_ID: &str = "event_id";
    pub const USER_ID: &str = "user_id";
    pub const AGENT_ID: &str = "agent_id";
    pub const TOOL_SERVER: &str = "tool_server";
    pub const TOOL_NAME: &str = "tool_name";
    pub const SESSION_ID: &str = "session_id";
    pub const CORRELATION_ID: &str = "correlation_id";
    pub const TRACE_ID: &str = "trace_id";
    pub const DECISION: &str = "decision";
    pub const DATA_CLASSIFICATION: &str = "data_classification";

    /// The string columns decoded from the event, in schema order.
    pub const STRINGS: [&str; 11] = [
        EVENT_KIND,
        EVENT_ID,
        USER_ID,
        AGENT_ID,
        TOOL_SERVER,
        TOOL_NAME,
        SESSION_ID,
        CORRELATION_ID,
        TRACE_ID,
        DECISION,
        DATA_CLASSIFICATION,
    ];

    /// Columns with a bloom filter.
    pub const BLOOM: [&str; 4] = [EVENT_ID, SESSION_ID, CORRELATION_ID, USER_ID];

    /// High-entropy string columns: dictionary encoding would only add a dictionary page.
    pub const UNIQUE_STRINGS: [&str; 2] = [EVENT_ID, TRACE_ID];
}

/// File key/value metadata keys.
pub mod metadata_key {
    pub const FORMAT: &str = "auditledger.format";
    pub const FORMAT_VERSION: &str = "auditledger.format_version";
    pub const ORIGIN: &str = "auditledger.origin";
    pub const START: &str = "auditledger.start";
    pub const COUNT: &str = "auditledger.count";
    pub const SEGMENT_ROOT: &str = "auditledger.segment_root";
    pub const EXPIRED_LEAVES: &str = "auditledger.expired_leaves";
}

/// The Arrow schema segment files are written with.
pub fn segment_schema() -> SchemaRef {
    let mut fields = vec![
        Field::new(column::LEAF_INDEX, DataType::UInt64, false),
        Field::new(
            column::LEAF_HASH,
            DataType::FixedSizeBinary(HASH_LEN as i32),
            false,
        ),
        Field::new(column::LEAF, DataType::Binary, true),
        Field::new(column::LOGGED_AT, DataType::UInt64, true),
        Field::new(column::OCCURRED_AT, DataType::UInt64, true),
    ];
    fields.extend(
        column::STRINGS
            .iter()
            .map(|name| Field::new(*name, DataType::Utf8, true)),
    );
    Arc::new(Schema::new(fields))
}

/// The typed columns of one leaf, borrowed from its decoded record.
pub(crate) struct TypedColumns<'a> {
    pub logged_at: u64,
    pub occurred_at: u64,
    /// In [`column::STRINGS`] order; `None` for an empty field.
    pub strings: [Option<Cow<'a, str>>; column::STRINGS.len()],
}

fn non_empty(s: &str) -> Option<Cow<'_, str>> {
    (!s.is_empty()).then_some(Cow::Borrowed(s))
}

/// An enum value as its proto name without the type prefix (`EVENT_KIND_TOOL_CALL` →
/// `TOOL_CALL`); unknown values as their number.
fn enum_name(name: Option<&'static str>, prefix: &str, value: i32) -> Cow<'static, str> {
    match name {
        Some(name) => Cow::Borrowed(name.strip_prefix(prefix).unwrap_or(name)),
        None => Cow::Owned(value.to_string()),
    }
}

impl<'a> TypedColumns<'a> {
    /// Typed columns of a decoded leaf (`decode_leaf` guarantees the event is present; an
    /// absent one gives empty columns rather than a panic).
    pub fn of(record: &'a LeafRecord) -> TypedColumns<'a> {
        let Some(event) = record.event.as_ref() else {
            return TypedColumns {
                logged_at: record.logged_at,
                occurred_at: 0,
                strings: Default::default(),
            };
        };
        let kind = enum_name(
            EventKind::try_from(event.event_kind)
                .ok()
                .map(|k| k.as_str_name()),
            "EVENT_KIND_",
            event.event_kind,
        );
        let decision = match Decision::try_from(event.decision) {
            Ok(Decision::Unspecified) => None,
            known => Some(enum_name(
                known.ok().map(|d| d.as_str_name()),
                "DECISION_",
                event.decision,
            )),
        };
        TypedColumns {
            logged_at: record.logged_at,
            occurred_at: event.occurred_at,
            strings: [
                Some(kind),
                non_empty(&event.event_id),
                non_empty(&event.user_id),
                non_empty(&event.agent_id),
                non_empty(&event.tool_server),
                non_empty(&event.tool_name),
                non_empty(&event.session_id),
                non_empty(&event.correlation_id),
                non_empty(&event.trace_id),
                decision,
                non_empty(&event.data_classification),
            ],
        }
    }
}
