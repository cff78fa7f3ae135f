//! Legal holds (DESIGN §6): while a hold is active, nothing it covers may be deleted from any
//! tier — neither leaf contents by retention expiry nor whole segments.
//!
//! A hold names a tenant and environment, a `logged_at` window and optionally a user, session
//! or correlation id. Holds live in the hot store (`meta` `'J' ‖ hold_id` → protobuf
//! `LegalHold`), are never deleted (a release sets `released_at`/`released_by`), and the gRPC
//! layer records every placement and release in the system log.

use std::sync::Mutex;

use prost::Message as _;

pub use auditledger_proto::v1::LegalHold;

use crate::error::LedgerError;
use crate::layout::{self, Space};
use crate::store::{Direction, Store, WriteBatch};

/// The event fields a hold can be narrowed by.
#[derive(Clone, Copy, Debug, Default)]
pub struct HeldFields<'a> {
    pub logged_at: u64,
    pub user_id: &'a str,
    pub session_id: &'a str,
    pub correlation_id: &'a str,
}

/// Whether the hold is active and covers an event with these fields.
pub fn covers(hold: &LegalHold, event: &HeldFields<'_>) -> bool {
    hold.released_at == 0
        && event.logged_at >= hold.from_time
        && (hold.to_time == 0 || event.logged_at < hold.to_time)
        && (hold.user_id.is_empty() || hold.user_id == event.user_id)
        && (hold.session_id.is_empty() || hold.session_id == event.session_id)
        && (hold.correlation_id.is_empty() || hold.correlation_id == event.correlation_id)
}

/// Whether the hold is active and its window overlaps `[from, to]` (inclusive `logged_at`
/// bounds of a segment): a cheap test before looking at individual events.
pub fn overlaps(hold: &LegalHold, from: u64, to: u64) -> bool {
    hold.released_at == 0 && to >= hold.from_time && (hold.to_time == 0 || from < hold.to_time)
}

/// Whether the hold applies to every event of its window (no user/session/correlation filter).
pub fn is_window_only(hold: &LegalHold) -> bool {
    hold.user_id.is_empty() && hold.session_id.is_empty() && hold.correlation_id.is_empty()
}

/// The hold registry of one store.
pub struct Holds<'a> {
    store: &'a dyn Store,
    lock: &'a Mutex<()>,
}

impl<'a> Holds<'a> {
    pub(crate) fn new(store: &'a dyn Store, lock: &'a Mutex<()>) -> Self {
        Holds { store, lock }
    }

    /// Stores a new hold (durably). `hold_id`, `placed_at` and `placed_by` must be set;
    /// the id must be new.
    pub fn place(&self, hold: &LegalHold) -> Result<(), LedgerError> {
        if hold.hold_id.is_empty() || hold.hold_id.len() > 64 {
            return Err(LedgerError::InvalidArgument(
                "a legal hold needs an id of 1 to 64 bytes".into(),
            ));
        }
        if hold.tenant_id.is_empty() || hold.environment.is_empty() {
            return Err(LedgerError::InvalidArgument(
                "a legal hold names a tenant_id and an environment".into(),
            ));
        }
        if hold.to_time != 0 && hold.to_time <= hold.from_time {
            return Err(LedgerError::InvalidArgument(format!(
                "legal hold window is empty: to_time {} ≤ from_time {}",
                hold.to_time, hold.from_time
            )));
        }
        if hold.released_at != 0 {
            return Err(LedgerError::InvalidArgument(
                "a new legal hold cannot be released already".into(),
            ));
        }
        let _guard = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        if self.get(&hold.hold_id)?.is_some() {
            return Err(LedgerError::InvalidArgument(format!(
                "legal hold {} already exists",
                hold.hold_id
            )));
        }
        self.write(hold)
    }

    /// Releases an active hold; returns it as stored.
    pub fn release(&self, hold_id: &str, by: &str, at: u64) -> Result<LegalHold, LedgerError> {
        let _guard = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let mut hold = self
            .get(hold_id)?
            .ok_or_else(|| LedgerError::NotFound(format!("no legal hold {hold_id:?}")))?;
        if hold.released_at != 0 {
            return Err(LedgerError::InvalidArgument(format!(
                "legal hold {hold_id} was already released by {} at {}",
                hold.released_by, hold.released_at
            )));
        }
        hold.released_at = at.max(1);
        hold.released_by = by.to_owned();
        self.write(&hold)?;
        Ok(hold)
    }

    /// One hold by id.
    pub fn get(&self, hold_id: &str) -> Result<Option<LegalHold>, LedgerError> {
        match self
            .store
            .get(Space::Meta, &layout::meta_hold_key(hold_id))?
        {
            None => Ok(None),
            Some(v) => LegalHold::decode(v.as_slice()).map(Some).map_err(|e| {
                LedgerError::Corrupt(format!("legal hold {hold_id:?} does not decode: {e}"))
            }),
        }
    }

    /// Every hold (active and released), optionally of one tenant and environment.
    pub fn list(&self, scope: Option<(&str, &str)>) -> Result<Vec<LegalHold>, LedgerError> {
        let (from, to) = layout::meta_hold_range();
        let mut out = Vec::new();
        let mut bad = None;
        self.store.scan(
            Space::Meta,
            &from,
            Some(&to),
            Direction::Forward,
            &mut |k, v| match LegalHold::decode(v) {
                Ok(h) => {
                    if scope.is_none_or(|(t, e)| h.tenant_id == t && h.environment == e) {
                        out.push(h);
                    }
                    true
                }
                Err(e) => {
                    bad = Some(format!("{}: {e}", hex::encode(k)));
                    false
                }
            },
        )?;
        match bad {
            Some(b) => Err(LedgerError::Corrupt(format!(
                "legal hold record does not decode: {b}"
            ))),
            None => Ok(out),
        }
    }

    /// Active holds of one tenant and environment.
    pub fn active(&self, tenant: &str, environment: &str) -> Result<Vec<LegalHold>, LedgerError> {
        let mut holds = self.list(Some((tenant, environment)))?;
        holds.retain(|h| h.released_at == 0);
        Ok(holds)
    }

    fn write(&self, hold: &LegalHold) -> Result<(), LedgerError> {
        let mut batch = WriteBatch::with_capacity(1);
        batch.put(
            Space::Meta,
            layout::meta_hold_key(&hold.hold_id),
            hold.encode_to_vec(),
        );
        self.store.write(batch, true)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::memory::MemoryStore;

    fn hold(id: &str) -> LegalHold {
        LegalHold {
            hold_id: id.into(),
            tenant_id: "acme".into(),
            environment: "prod".into(),
            from_time: 100,
            to_time: 200,
            case_id: "CASE-7".into(),
            placed_by: "admin-1".into(),
            placed_at: 50,
            ..Default::default()
        }
    }

    #[test]
    fn place_list_release() {
        let store = MemoryStore::new();
        let lock = Mutex::new(());
        let holds = Holds::new(&store, &lock);
        holds.place(&hold("h1")).unwrap();
        holds
            .place(&LegalHold {
                tenant_id: "globex".into(),
                ..hold("h2")
            })
            .unwrap();
        let err = holds.place(&hold("h1")).unwrap_err();
        assert!(err.to_string().contains("already exists"), "{err}");
        let err = holds
            .place(&LegalHold {
                to_time: 100,
                ..hold("h3")
            })
            .unwrap_err();
        assert!(err.to_string().contains("window is empty"), "{err}");
        assert_eq!(holds.list(None).unwrap().len(), 2);
        assert_eq!(holds.active("acme", "prod").unwrap(), vec![hold("h1")]);
        let released = holds.release("h1", "admin-2", 300).unwrap();
        assert_eq!(
            (released.released_at, released.released_by.as_str()),
            (300, "admin-2")
        );
        assert!(holds.active("acme", "prod").unwrap().is_empty());
        // Released holds are kept, and cannot be released twice.
        assert_eq!(holds.get("h1").unwrap(), Some(released));
        assert!(holds.release("h1", "x", 400).is_err());
        assert!(matches!(
            holds.release("nope", "x", 400),
            Err(LedgerError::NotFound(_))
        ));
    }

    #[test]
    fn coverage() {
        let h = LegalHold {
            user_id: "alice".into(),
            ..hold("h")
        };
        let at = |logged_at, user_id| HeldFields {
            logged_at,
            user_id,
            ..Default::default()
        };
        assert!(covers(&h, &at(100, "alice")));
        assert!(covers(&h, &at(199, "alice")));
        assert!(!covers(&h, &at(200, "alice")), "to_time is exclusive");
        assert!(!covers(&h, &at(99, "alice")));
        assert!(!covers(&h, &at(150, "bob")));
        assert!(overlaps(&h, 0, 100) && overlaps(&h, 199, 500));
        assert!(!overlaps(&h, 0, 99) && !overlaps(&h, 200, 500));
        let open = LegalHold {
            to_time: 0,
            ..hold("o")
        };
        assert!(covers(&open, &at(u64::MAX, "")) && is_window_only(&open));
        let released = LegalHold {
            released_at: 1,
            ..open
        };
        assert!(!covers(&released, &at(150, "")) && !overlaps(&released, 0, u64::MAX));
    }
}
