//! Per-tenant ingest quotas: token buckets for events/s and bytes/s, and a concurrent-stream
//! count. A tenant over its quota gets RESOURCE_EXHAUSTED with a retry hint; others are not
//! slowed by it (the buckets are independent and checked before the sequencer).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use crate::config::QuotasSection;

struct Bucket {
    /// Units available now (0 ..= one second's worth).
    tokens: f64,
    updated: Instant,
}

impl Bucket {
    fn refill(&mut self, rate: f64, now: Instant) {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        // Burst capacity: one second's worth.
        self.tokens = (self.tokens + elapsed * rate).min(rate);
        self.updated = now;
    }
}

#[derive(Default)]
struct TenantState {
    events: Option<Bucket>,
    bytes: Option<Bucket>,
    streams: usize,
}

/// Quota enforcement for all tenants.
pub struct Quotas {
    config: QuotasSection,
    tenants: Mutex<HashMap<String, TenantState>>,
}

/// Why a request was refused, and when to retry.
#[derive(Debug, Clone, PartialEq)]
pub struct QuotaExceeded {
    pub message: String,
    pub retry_after_ms: u64,
    /// The request alone is larger than a whole second's quota: only splitting it helps.
    pub request_too_large: bool,
}

impl Quotas {
    pub fn new(config: QuotasSection) -> Self {
        Quotas {
            config,
            tenants: Mutex::new(HashMap::new()),
        }
    }

    /// Charges `events` and `bytes` to `tenant`, all or nothing.
    pub fn charge(&self, tenant: &str, events: u64, bytes: u64) -> Result<(), QuotaExceeded> {
        self.charge_at(tenant, events, bytes, Instant::now())
    }

    fn charge_at(
        &self,
        tenant: &str,
        events: u64,
        bytes: u64,
        now: Instant,
    ) -> Result<(), QuotaExceeded> {
        let (eps, bps) = (
            self.config.events_per_second as f64,
            self.config.bytes_per_second as f64,
        );
        if eps == 0.0 && bps == 0.0 {
            return Ok(());
        }
        let mut tenants = self.tenants.lock().unwrap_or_else(|p| p.into_inner());
        let state = tenants.entry(tenant.to_owned()).or_default();
        let wants = [(eps, events as f64, "events"), (bps, bytes as f64, "bytes")];
        // Check both buckets first so that a refused request takes nothing.
        for (i, &(rate, want, unit)) in wants.iter().enumerate() {
            if rate == 0.0 {
                continue;
            }
            let slot = if i == 0 {
                &mut state.events
            } else {
                &mut state.bytes
            };
            let bucket = slot.get_or_insert(Bucket {
                tokens: rate,
                updated: now,
            });
            bucket.refill(rate, now);
            if want > rate {
                return Err(QuotaExceeded {
                    message: format!(
                        "tenant {tenant:?}: one request of {want} {unit} exceeds the quota of {rate} {unit}/s; send smaller requests"
                    ),
                    retry_after_ms: 1000,
                    request_too_large: true,
                });
            }
            if bucket.tokens < want {
                let wait = ((want - bucket.tokens) / rate * 1000.0).ceil() as u64;
                return Err(QuotaExceeded {
                    message: format!("tenant {tenant:?} is over its quota of {rate} {unit}/s"),
                    retry_after_ms: wait.max(1),
                    request_too_large: false,
                });
            }
        }
        for (slot, &(rate, want, _)) in [&mut state.events, &mut state.bytes]
            .into_iter()
            .zip(&wants)
        {
            if let (Some(bucket), true) = (slot.as_mut(), rate > 0.0) {
                bucket.tokens -= want;
            }
        }
        Ok(())
    }

    /// Registers a stream for each tenant; fails if any is at its limit. Release with
    /// [`Quotas::close_stream`].
    pub fn open_stream(&self, tenants: &[String]) -> Result<(), QuotaExceeded> {
        let limit = self.config.max_streams_per_tenant;
        if limit == 0 {
            return Ok(());
        }
        let mut map = self.tenants.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(t) = tenants
            .iter()
            .find(|t| map.get(*t).is_some_and(|s| s.streams >= limit))
        {
            return Err(QuotaExceeded {
                message: format!("tenant {t:?} already has {limit} open AppendStreams"),
                retry_after_ms: 1000,
                request_too_large: false,
            });
        }
        for t in tenants {
            map.entry(t.clone()).or_default().streams += 1;
        }
        Ok(())
    }

    pub fn close_stream(&self, tenants: &[String]) {
        if self.config.max_streams_per_tenant == 0 {
            return;
        }
        let mut map = self.tenants.lock().unwrap_or_else(|p| p.into_inner());
        for t in tenants {
            if let Some(s) = map.get_mut(t) {
                s.streams = s.streams.saturating_sub(1);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn quotas(eps: u64, bps: u64, streams: usize) -> Quotas {
        Quotas::new(QuotasSection {
            events_per_second: eps,
            bytes_per_second: bps,
            max_streams_per_tenant: streams,
        })
    }

    #[test]
    fn buckets_refill_and_isolate_tenants() {
        let q = quotas(100, 0, 0);
        let t0 = Instant::now();
        q.charge_at("noisy", 100, 0, t0).unwrap();
        let err = q.charge_at("noisy", 10, 0, t0).unwrap_err();
        assert!(err.retry_after_ms >= 100, "{err:?}");
        assert!(!err.request_too_large, "waiting helps: {err:?}");
        // Another tenant is unaffected.
        q.charge_at("quiet", 50, 0, t0).unwrap();
        // Half a second later, 50 events are available again.
        q.charge_at("noisy", 50, 0, t0 + Duration::from_millis(500))
            .unwrap();
        assert!(
            q.charge_at("noisy", 1, 0, t0 + Duration::from_millis(500))
                .is_err()
        );
        let too_large = q
            .charge_at("noisy", 101, 0, t0 + Duration::from_secs(10))
            .unwrap_err();
        assert!(too_large.message.contains("smaller"), "{too_large:?}");
        assert!(too_large.request_too_large, "{too_large:?}");
    }

    #[test]
    fn a_failed_charge_takes_nothing() {
        let q = quotas(100, 1000, 0);
        let t0 = Instant::now();
        // Events fit, bytes do not: neither is charged.
        q.charge_at("t", 10, 1000, t0).unwrap();
        assert!(q.charge_at("t", 10, 10, t0).is_err());
        q.charge_at("t", 90, 0, t0).unwrap();
    }

    #[test]
    fn stream_limit() {
        let q = quotas(0, 0, 2);
        let t = vec!["acme".to_string()];
        q.open_stream(&t).unwrap();
        q.open_stream(&t).unwrap();
        assert!(q.open_stream(&t).is_err());
        q.close_stream(&t);
        q.open_stream(&t).unwrap();
    }
}
