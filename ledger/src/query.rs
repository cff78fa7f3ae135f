//! Event search filters (`Investigate.FindEvents`, DESIGN §5): what a search asks for, how one
//! leaf is judged against it, and which indexed field narrows it best. Pure: the hot-tier index
//! (ledger) and the Parquet pruning (archiver) both evaluate the same [`EventFilter`], so a
//! query returns the same events whichever tier holds them.

use crate::event::{AuditEvent, Decision, EventKind, LeafRecord};
use crate::layout;

/// Fields with an exact-match index in the hot tier and a bloom filter or statistics in
/// archived segments, in the order a search prefers them (most selective first).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum IndexedField {
    EventId,
    CorrelationId,
    SessionId,
    TraceId,
    UserId,
    AgentId,
}

/// The hot search-index keys ([`crate::layout::Space::Fields`]) of leaf `index` of log
/// `log_id` holding `event`: one per non-empty [`IndexedField::HOT_INDEXED`] field, appended to
/// `out`. The indexer, the open-time catch-up and fsck all derive the entries here.
pub fn hot_index_keys(
    log_id: layout::LogId,
    index: u64,
    event: &AuditEvent,
    out: &mut Vec<[u8; layout::FIELD_KEY_LEN]>,
) {
    for f in IndexedField::HOT_INDEXED {
        let value = f.value_in(event);
        if !value.is_empty() {
            out.push(layout::field_index_key(
                log_id,
                f.tag(),
                &layout::field_value_hash(value),
                index,
            ));
        }
    }
}

impl IndexedField {
    /// The fields with entries in the hot tier's search index ([`crate::layout::Space::Fields`]):
    /// every one but the event id, which the dedup index (`event_ids`) already maps.
    pub const HOT_INDEXED: [IndexedField; 5] = [
        IndexedField::CorrelationId,
        IndexedField::SessionId,
        IndexedField::TraceId,
        IndexedField::UserId,
        IndexedField::AgentId,
    ];

    /// The field of a storage tag.
    pub fn from_tag(tag: u8) -> Option<IndexedField> {
        IndexedField::ALL.into_iter().find(|f| f.tag() == tag)
    }

    /// Every indexed field, most selective first.
    pub const ALL: [IndexedField; 6] = [
        IndexedField::EventId,
        IndexedField::CorrelationId,
        IndexedField::SessionId,
        IndexedField::TraceId,
        IndexedField::UserId,
        IndexedField::AgentId,
    ];

    /// Stable one-byte tag (used in storage keys; never reuse a value).
    pub const fn tag(self) -> u8 {
        match self {
            IndexedField::EventId => b'e',
            IndexedField::CorrelationId => b'c',
            IndexedField::SessionId => b's',
            IndexedField::TraceId => b't',
            IndexedField::UserId => b'u',
            IndexedField::AgentId => b'a',
        }
    }

    /// Name of the Parquet column / protobuf field.
    pub const fn column(self) -> &'static str {
        match self {
            IndexedField::EventId => "event_id",
            IndexedField::CorrelationId => "correlation_id",
            IndexedField::SessionId => "session_id",
            IndexedField::TraceId => "trace_id",
            IndexedField::UserId => "user_id",
            IndexedField::AgentId => "agent_id",
        }
    }

    /// The field's value in `record` ("" when absent).
    pub fn value_of(self, record: &LeafRecord) -> &str {
        match record.event.as_ref() {
            Some(e) => self.value_in(e),
            None => "",
        }
    }

    /// The field's value in an event ("" when absent).
    pub fn value_in(self, e: &AuditEvent) -> &str {
        match self {
            IndexedField::EventId => &e.event_id,
            IndexedField::CorrelationId => &e.correlation_id,
            IndexedField::SessionId => &e.session_id,
            IndexedField::TraceId => &e.trace_id,
            IndexedField::UserId => &e.user_id,
            IndexedField::AgentId => &e.agent_id,
        }
    }
}

/// A search: every given condition must hold (AND). `None` / 0 = any.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EventFilter {
    /// `logged_at` window, unix nanoseconds: `from_time` inclusive, `to_time` exclusive; 0 = open.
    pub from_time: u64,
    pub to_time: u64,
    pub event_kind: Option<EventKind>,
    pub user_id: Option<String>,
    pub agent_id: Option<String>,
    pub tool_server: Option<String>,
    pub tool_name: Option<String>,
    pub session_id: Option<String>,
    pub correlation_id: Option<String>,
    pub trace_id: Option<String>,
    pub decision: Option<Decision>,
    pub data_classification: Option<String>,
    pub event_id: Option<String>,
}

/// Result order.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Order {
    /// Ascending leaf index (= ascending `logged_at`).
    #[default]
    OldestFirst,
    /// Descending leaf index.
    NewestFirst,
}

impl EventFilter {
    /// The exact value asked for an indexed field, if any.
    pub fn indexed_value(&self, field: IndexedField) -> Option<&str> {
        match field {
            IndexedField::EventId => self.event_id.as_deref(),
            IndexedField::CorrelationId => self.correlation_id.as_deref(),
            IndexedField::SessionId => self.session_id.as_deref(),
            IndexedField::TraceId => self.trace_id.as_deref(),
            IndexedField::UserId => self.user_id.as_deref(),
            IndexedField::AgentId => self.agent_id.as_deref(),
        }
    }

    /// The most selective indexed condition of the filter, if it has one.
    pub fn best_index(&self) -> Option<(IndexedField, &str)> {
        IndexedField::ALL
            .into_iter()
            .find_map(|f| self.indexed_value(f).map(|v| (f, v)))
    }

    /// Whether `logged_at` lies in the window.
    pub fn time_matches(&self, logged_at: u64) -> bool {
        logged_at >= self.from_time && (self.to_time == 0 || logged_at < self.to_time)
    }

    /// Whether the leaf matches every condition. A leaf without an event (content expired)
    /// matches nothing but a pure time window.
    pub fn matches(&self, record: &LeafRecord) -> bool {
        if !self.time_matches(record.logged_at) {
            return false;
        }
        let Some(e) = record.event.as_ref() else {
            return *self
                == EventFilter {
                    from_time: self.from_time,
                    to_time: self.to_time,
                    ..EventFilter::default()
                };
        };
        let eq = |want: &Option<String>, have: &str| want.as_deref().is_none_or(|w| w == have);
        self.event_kind.is_none_or(|k| k as i32 == e.event_kind)
            && self.decision.is_none_or(|d| d as i32 == e.decision)
            && eq(&self.user_id, &e.user_id)
            && eq(&self.agent_id, &e.agent_id)
            && eq(&self.tool_server, &e.tool_server)
            && eq(&self.tool_name, &e.tool_name)
            && eq(&self.session_id, &e.session_id)
            && eq(&self.correlation_id, &e.correlation_id)
            && eq(&self.trace_id, &e.trace_id)
            && eq(&self.data_classification, &e.data_classification)
            && eq(&self.event_id, &e.event_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(user: &str, kind: EventKind, logged_at: u64) -> LeafRecord {
        LeafRecord {
            event: Some(AuditEvent {
                event_id: "e-1".into(),
                event_kind: kind as i32,
                user_id: user.into(),
                session_id: "s-1".into(),
                decision: Decision::Deny as i32,
                ..Default::default()
            }),
            logged_at,
            principal: "gw".into(),
        }
    }

    #[test]
    fn every_condition_must_hold() {
        let r = record("alice", EventKind::ToolCall, 100);
        assert!(EventFilter::default().matches(&r));
        let f = EventFilter {
            user_id: Some("alice".into()),
            event_kind: Some(EventKind::ToolCall),
            decision: Some(Decision::Deny),
            from_time: 100,
            to_time: 101,
            ..Default::default()
        };
        assert!(f.matches(&r));
        for g in [
            EventFilter {
                user_id: Some("bob".into()),
                ..f.clone()
            },
            EventFilter {
                event_kind: Some(EventKind::Approval),
                ..f.clone()
            },
            EventFilter {
                decision: Some(Decision::Allow),
                ..f.clone()
            },
            EventFilter {
                from_time: 101,
                to_time: 0,
                ..f.clone()
            },
            EventFilter {
                to_time: 100,
                ..f.clone()
            },
            EventFilter {
                tool_name: Some("x".into()),
                ..f.clone()
            },
        ] {
            assert!(!g.matches(&r), "{g:?}");
        }
    }

    #[test]
    fn expired_leaves_match_only_time_windows() {
        let r = LeafRecord {
            event: None,
            logged_at: 5,
            principal: String::new(),
        };
        assert!(
            EventFilter {
                from_time: 1,
                to_time: 9,
                ..Default::default()
            }
            .matches(&r)
        );
        assert!(
            !EventFilter {
                user_id: Some(String::new()),
                ..Default::default()
            }
            .matches(&r)
        );
    }

    #[test]
    fn best_index_prefers_the_most_selective_field() {
        let f = EventFilter {
            user_id: Some("alice".into()),
            session_id: Some("s".into()),
            ..Default::default()
        };
        assert_eq!(f.best_index(), Some((IndexedField::SessionId, "s")));
        assert_eq!(EventFilter::default().best_index(), None);
        let tags: std::collections::HashSet<u8> =
            IndexedField::ALL.iter().map(|f| f.tag()).collect();
        assert_eq!(tags.len(), IndexedField::ALL.len());
    }
}
