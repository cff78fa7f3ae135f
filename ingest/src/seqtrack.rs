//! Gateway sequence tracking: each gateway numbers its events (`gateway_seq`, +1 per event),
//! so a number that never arrives is an event lost between gateway and ledger. Numbers may
//! arrive out of order across streams; a gap is reported only if it is still open after a
//! grace period. A number at or below one already seen (and not filling a gap) is a regression:
//! a replayed, reset or forged sequence.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// One gateway of one log.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GatewayKey {
    pub tenant_id: String,
    pub environment: String,
    pub gateway_id: String,
}

/// A confirmed problem.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SeqAnomaly {
    /// `[first, last]` never arrived within the grace period.
    Gap {
        gateway: GatewayKey,
        first: u64,
        last: u64,
    },
    /// `got` arrived after `highest` and fills no open gap.
    Regression {
        gateway: GatewayKey,
        highest: u64,
        got: u64,
    },
}

struct GatewayState {
    highest: u64,
    /// When the first number of this gateway was seen: lower numbers arriving within the grace
    /// period after it are reordering across streams, not regressions.
    baseline_at: Instant,
    /// Open gaps: start → (end inclusive, when first seen).
    gaps: BTreeMap<u64, (u64, Instant)>,
}

/// Most open gaps kept per gateway; beyond that the oldest are reported at once.
const MAX_OPEN_GAPS: usize = 1024;

pub struct SeqTracker {
    grace: Duration,
    gateways: Mutex<HashMap<GatewayKey, GatewayState>>,
}

impl SeqTracker {
    pub fn new(grace: Duration) -> Self {
        SeqTracker {
            grace,
            gateways: Mutex::new(HashMap::new()),
        }
    }

    /// Records that `seq` arrived; returns regressions (and gaps evicted for space) at once.
    pub fn observe(&self, gateway: &GatewayKey, seq: u64, now: Instant) -> Vec<SeqAnomaly> {
        let mut out = Vec::new();
        if seq == 0 {
            return out;
        }
        let mut map = self.gateways.lock().unwrap_or_else(|p| p.into_inner());
        let Some(state) = map.get_mut(gateway) else {
            // First number seen from this gateway since start-up: nothing to compare with.
            map.insert(
                gateway.clone(),
                GatewayState {
                    highest: seq,
                    baseline_at: now,
                    gaps: BTreeMap::new(),
                },
            );
            return out;
        };
        if seq == state.highest + 1 {
            state.highest = seq;
        } else if seq > state.highest + 1 {
            state.gaps.insert(state.highest + 1, (seq - 1, now));
            state.highest = seq;
            while state.gaps.len() > MAX_OPEN_GAPS {
                if let Some((first, (last, _))) = state.gaps.pop_first() {
                    out.push(SeqAnomaly::Gap {
                        gateway: gateway.clone(),
                        first,
                        last,
                    });
                }
            }
        } else {
            // At or below the highest: fills a gap, or is a regression.
            let covering = state
                .gaps
                .range(..=seq)
                .next_back()
                .map(|(&s, &(e, t))| (s, e, t));
            match covering {
                Some((start, end, seen)) if seq <= end => {
                    state.gaps.remove(&start);
                    if start < seq {
                        state.gaps.insert(start, (seq - 1, seen));
                    }
                    if seq < end {
                        state.gaps.insert(seq + 1, (end, seen));
                    }
                }
                _ if now.saturating_duration_since(state.baseline_at) < self.grace => {}
                _ => out.push(SeqAnomaly::Regression {
                    gateway: gateway.clone(),
                    highest: state.highest,
                    got: seq,
                }),
            }
        }
        out
    }

    /// Gaps still open after the grace period (removed once reported).
    pub fn expired_gaps(&self, now: Instant) -> Vec<SeqAnomaly> {
        let mut out = Vec::new();
        let mut map = self.gateways.lock().unwrap_or_else(|p| p.into_inner());
        for (gateway, state) in map.iter_mut() {
            let expired: Vec<u64> = state
                .gaps
                .iter()
                .filter(|(_, (_, seen))| now.saturating_duration_since(*seen) >= self.grace)
                .map(|(&s, _)| s)
                .collect();
            for start in expired {
                if let Some((last, _)) = state.gaps.remove(&start) {
                    out.push(SeqAnomaly::Gap {
                        gateway: gateway.clone(),
                        first: start,
                        last,
                    });
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gw() -> GatewayKey {
        GatewayKey {
            tenant_id: "acme".into(),
            environment: "prod".into(),
            gateway_id: "gw-1".into(),
        }
    }

    #[test]
    fn in_order_is_quiet_gaps_confirm_after_grace() {
        let t = SeqTracker::new(Duration::from_secs(5));
        let t0 = Instant::now();
        for s in 1..=10 {
            assert!(t.observe(&gw(), s, t0).is_empty());
        }
        assert!(
            t.observe(&gw(), 15, t0).is_empty(),
            "gap not reported before grace"
        );
        assert!(t.expired_gaps(t0 + Duration::from_secs(1)).is_empty());
        assert_eq!(
            t.expired_gaps(t0 + Duration::from_secs(6)),
            vec![SeqAnomaly::Gap {
                gateway: gw(),
                first: 11,
                last: 14
            }]
        );
        assert!(
            t.expired_gaps(t0 + Duration::from_secs(7)).is_empty(),
            "reported once"
        );
    }

    #[test]
    fn late_arrivals_fill_gaps_and_replays_are_regressions() {
        let t = SeqTracker::new(Duration::from_secs(5));
        let t0 = Instant::now();
        t.observe(&gw(), 1, t0);
        t.observe(&gw(), 5, t0);
        assert!(t.observe(&gw(), 3, t0).is_empty());
        assert!(t.observe(&gw(), 2, t0).is_empty());
        assert_eq!(
            t.expired_gaps(t0 + Duration::from_secs(9)),
            vec![SeqAnomaly::Gap {
                gateway: gw(),
                first: 4,
                last: 4
            }]
        );
        let later = t0 + Duration::from_secs(6);
        assert_eq!(
            t.observe(&gw(), 2, later),
            vec![SeqAnomaly::Regression {
                gateway: gw(),
                highest: 5,
                got: 2
            }]
        );
    }

    #[test]
    fn reordering_right_after_start_is_not_a_regression() {
        let t = SeqTracker::new(Duration::from_secs(5));
        let t0 = Instant::now();
        // Another stream's later numbers were committed first.
        t.observe(&gw(), 11, t0);
        assert!(t.observe(&gw(), 3, t0 + Duration::from_secs(1)).is_empty());
        assert_eq!(t.observe(&gw(), 3, t0 + Duration::from_secs(9)).len(), 1);
    }
}
