//! Limits against hostile or broken clients (issue 8, docs/reliability.md "Hostile clients")
//! that tonic and hyper do not provide themselves: a cap on open connections with a deadline
//! for a new connection's first byte ([`limit_connections`]), and the aggregation of repeated
//! identical denials so that a flood of invalid tokens costs the system log one record per
//! (principal, peer, method, target, reason) and window instead of one per request
//! ([`DenialLimiter`]). The HTTP/2 limits themselves (streams per connection, header list
//! size, keepalive, request timeout) are set on the tonic server in `serve`.

use std::collections::HashMap;
use std::future::Future as _;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures_util::{Stream, StreamExt as _};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Sleep;
use tonic::transport::server::Connected;

/// Counters of these limits, exported at `/metrics`.
#[derive(Default)]
pub struct HardeningCounters {
    /// Connections open now.
    pub open: AtomicU64,
    /// Connections closed at accept because `server.max_connections` were open.
    pub refused: AtomicU64,
    /// Connections closed because they sent nothing within `server.handshake_timeout`.
    pub silent_closed: AtomicU64,
    /// `AppendStream`s closed after `server.stream_idle_timeout` without a request.
    pub idle_streams_closed: AtomicU64,
    /// Denials recorded individually, and folded into per-window summaries.
    pub denials_recorded: AtomicU64,
    pub denials_aggregated: AtomicU64,
}

/// A client connection holding one of the `server.max_connections` permits; it is released
/// when the connection is dropped. Until the first byte arrives, reads fail once
/// `handshake_timeout` has passed, which makes hyper close the connection.
pub struct Limited<IO> {
    io: IO,
    first_byte: Option<Pin<Box<Sleep>>>,
    counters: Arc<HardeningCounters>,
    _permit: OwnedSemaphorePermit,
}

impl<IO> Drop for Limited<IO> {
    fn drop(&mut self) {
        self.counters.open.fetch_sub(1, Ordering::Relaxed);
    }
}

impl<IO: Connected> Connected for Limited<IO> {
    type ConnectInfo = IO::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Limited<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Ready(result) => {
                if buf.filled().len() > before {
                    this.first_byte = None;
                }
                Poll::Ready(result)
            }
            Poll::Pending => {
                if let Some(deadline) = this.first_byte.as_mut()
                    && deadline.as_mut().poll(cx).is_ready()
                {
                    this.first_byte = None;
                    this.counters.silent_closed.fetch_add(1, Ordering::Relaxed);
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "client sent nothing within server.handshake_timeout",
                    )));
                }
                Poll::Pending
            }
        }
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Limited<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

/// Wraps a stream of accepted connections: each gets a permit of `max_connections`; one that
/// finds none is closed at once (the client sees a reset and may retry, instead of waiting in
/// the kernel's backlog). Accept errors pass through unchanged.
pub fn limit_connections<S, IO, E>(
    incoming: S,
    max_connections: usize,
    handshake_timeout: Duration,
    counters: Arc<HardeningCounters>,
) -> impl Stream<Item = Result<Limited<IO>, E>>
where
    S: Stream<Item = Result<IO, E>>,
{
    let permits = Arc::new(Semaphore::new(max_connections));
    let last_warning = Arc::new(Mutex::new(None::<Instant>));
    incoming.filter_map(move |accepted| {
        let item = match accepted {
            Err(e) => Some(Err(e)),
            Ok(io) => match permits.clone().try_acquire_owned() {
                Ok(permit) => {
                    counters.open.fetch_add(1, Ordering::Relaxed);
                    Some(Ok(Limited {
                        io,
                        first_byte: Some(Box::pin(tokio::time::sleep(handshake_timeout))),
                        counters: counters.clone(),
                        _permit: permit,
                    }))
                }
                Err(_) => {
                    // Dropping `io` closes the socket.
                    let refused = counters.refused.fetch_add(1, Ordering::Relaxed) + 1;
                    let mut last = last_warning.lock().unwrap_or_else(|p| p.into_inner());
                    // One warning per 10 s, not one per refused connection.
                    if last.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
                        *last = Some(Instant::now());
                        tracing::warn!(
                            max_connections,
                            refused_total = refused,
                            "connection limit reached (server.max_connections); closing new connections"
                        );
                    }
                    None
                }
            },
        };
        std::future::ready(item)
    })
}

/// What identifies "the same denial".
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct DenialKey {
    pub principal: String,
    pub peer: Option<IpAddr>,
    pub method: String,
    pub environment: String,
    pub target: String,
    pub reason: String,
}

/// Repeats of one key that were not recorded individually.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Repeats<K = DenialKey> {
    pub key: K,
    /// Occurrences (denials, or anomalous events for sequence anomalies) after the first.
    pub count: u64,
    /// Length of the window they fell in.
    pub window: Duration,
}

/// What to do with the pending summaries.
#[derive(Debug, PartialEq, Eq)]
pub struct Flushed<K = DenialKey> {
    pub repeats: Vec<Repeats<K>>,
    /// Occurrences not tracked because the window already tracked `max_keys` distinct keys.
    pub untracked: u64,
}

impl<K> Default for Flushed<K> {
    fn default() -> Self {
        Flushed {
            repeats: Vec::new(),
            untracked: 0,
        }
    }
}

struct Window<K> {
    started: Instant,
    /// Repeats counted per key after its first occurrence in the window.
    seen: HashMap<K, u64>,
    untracked: u64,
}

/// Aggregates identical occurrences per window: the first of a window is recorded as usual;
/// the rest are counted, and the counts are recorded as one summary per key when the window
/// ends. Memory is bounded by `max_keys` distinct keys per window; occurrences beyond that are
/// only counted in total.
struct WindowLimiter<K> {
    window: Duration,
    max_keys: usize,
    state: Mutex<Window<K>>,
}

impl<K: std::hash::Hash + Eq> WindowLimiter<K> {
    fn new(window: Duration, max_keys: usize) -> Self {
        WindowLimiter {
            window,
            max_keys,
            state: Mutex::new(Window {
                started: Instant::now(),
                seen: HashMap::new(),
                untracked: 0,
            }),
        }
    }

    /// Whether this occurrence is to be recorded on its own (`true`) or was counted, with
    /// `weight` (`false`). Also returns the previous window's summaries once it has ended.
    fn admit(&self, key: K, weight: u64, now: Instant) -> (bool, Flushed<K>) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let flushed = self.take_if_ended(&mut state, now);
        let record = if let Some(n) = state.seen.get_mut(&key) {
            *n += weight;
            false
        } else if state.seen.len() < self.max_keys {
            state.seen.insert(key, 0);
            true
        } else {
            state.untracked += weight;
            false
        };
        (record, flushed)
    }

    fn flush(&self, now: Instant) -> Flushed<K> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        self.take_if_ended(&mut state, now)
    }

    fn take_if_ended(&self, state: &mut Window<K>, now: Instant) -> Flushed<K> {
        if now.saturating_duration_since(state.started) < self.window {
            return Flushed::default();
        }
        let window = now.saturating_duration_since(state.started);
        state.started = now;
        let untracked = std::mem::take(&mut state.untracked);
        let repeats = state
            .seen
            .drain()
            .filter(|(_, count)| *count > 0)
            .map(|(key, count)| Repeats { key, count, window })
            .collect();
        Flushed { repeats, untracked }
    }
}

/// What identifies "the same" gateway sequence anomaly: the gateway and `gap`/`regression`.
pub type AnomalyKey = (crate::seqtrack::GatewayKey, &'static str);

/// Folds repeated identical denials, and repeated sequence anomalies of one gateway, into
/// per-window counts (`server.denial_window`): the first of a window is recorded in the system
/// log as usual, the rest as one summary per key when the window ends. A flood of bad tokens,
/// or a gateway replaying old sequence numbers one event per request, then costs the system
/// log a few records per second instead of one per request.
pub struct DenialLimiter {
    denials: WindowLimiter<DenialKey>,
    anomalies: WindowLimiter<AnomalyKey>,
    counters: Arc<HardeningCounters>,
}

impl DenialLimiter {
    pub fn new(
        window: Duration,
        max_keys: usize,
        counters: Arc<HardeningCounters>,
    ) -> DenialLimiter {
        DenialLimiter {
            denials: WindowLimiter::new(window, max_keys),
            anomalies: WindowLimiter::new(window, max_keys),
            counters,
        }
    }

    /// Whether this denial is to be recorded on its own (`true`) or was counted (`false`).
    /// Also returns the previous window's summaries once it has ended.
    pub fn admit(&self, key: DenialKey, now: Instant) -> (bool, Flushed) {
        let (record, flushed) = self.denials.admit(key, 1, now);
        let counter = if record {
            &self.counters.denials_recorded
        } else {
            &self.counters.denials_aggregated
        };
        counter.fetch_add(1, Ordering::Relaxed);
        (record, flushed)
    }

    /// The same for a gateway's sequence anomaly covering `events` events (a summary counts
    /// events, not requests).
    pub fn admit_anomaly(
        &self,
        key: AnomalyKey,
        events: u64,
        now: Instant,
    ) -> (bool, Flushed<AnomalyKey>) {
        self.anomalies.admit(key, events, now)
    }

    /// The summaries of a window that has ended (called every second by the server, so that
    /// the last window of a flood is recorded without waiting for the next denial).
    pub fn flush(&self, now: Instant) -> Flushed {
        self.denials.flush(now)
    }

    /// The same for sequence anomalies.
    pub fn flush_anomalies(&self, now: Instant) -> Flushed<AnomalyKey> {
        self.anomalies.flush(now)
    }
}

/// Descriptors the server needs beyond RocksDB's table files and its connections: WAL,
/// manifest, RocksDB's own log and lock, the listeners, configuration and key files, the
/// archiver's segment files, stdio.
pub const FD_RESERVE: u64 = 128;

/// What [`ensure_fd_limit`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FdLimit {
    /// The soft limit already covered the need.
    Enough { soft: u64 },
    /// The soft limit was raised (up to the hard limit) to cover it.
    Raised { from: u64, to: u64 },
}

/// The soft `RLIMIT_NOFILE` to ask for, given the need and the current limits: `Ok(None)` when
/// the soft limit suffices, `Ok(Some(n))` to raise it to `n`, `Err` when even the hard limit is
/// below the need.
pub fn plan_fd_limit(needed: u64, soft: u64, hard: u64) -> Result<Option<u64>, String> {
    if soft >= needed {
        Ok(None)
    } else if hard >= needed {
        Ok(Some(needed))
    } else {
        Err(format!(
            "the open-file limit is {soft} (hard limit {hard}) but the server needs {needed} \
             descriptors: ledger.max_open_files + server.max_connections + {FD_RESERVE} reserved; \
             raise `ulimit -n` (LimitNOFILE= under systemd) or lower those settings"
        ))
    }
}

/// Makes sure the process may open `needed` descriptors, raising the soft limit toward the
/// hard one when it is lower. Running out later is far worse than refusing now: RocksDB
/// treats a failed open during a flush as a background error and refuses every write after.
pub fn ensure_fd_limit(needed: u64) -> Result<FdLimit, String> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass and nothing else.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(format!(
            "reading the open-file limit: {}",
            io::Error::last_os_error()
        ));
    }
    let (soft, hard): (u64, u64) = (lim.rlim_cur, lim.rlim_max);
    match plan_fd_limit(needed, soft, hard)? {
        None => Ok(FdLimit::Enough { soft }),
        Some(to) => {
            lim.rlim_cur = to;
            // SAFETY: setrlimit only reads the struct; raising the soft limit up to the hard
            // limit needs no privilege.
            if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
                return Err(format!(
                    "raising the open-file limit from {soft} to {to}: {}",
                    io::Error::last_os_error()
                ));
            }
            Ok(FdLimit::Raised { from: soft, to })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(principal: &str, reason: &str) -> DenialKey {
        DenialKey {
            principal: principal.into(),
            peer: Some(IpAddr::from([127, 0, 0, 1])),
            method: "Ingest.Append".into(),
            environment: "prod".into(),
            target: String::new(),
            reason: reason.into(),
        }
    }

    #[test]
    fn repeats_are_counted_and_flushed_once_per_window() {
        let counters = Arc::new(HardeningCounters::default());
        let limiter = DenialLimiter::new(Duration::from_secs(1), 100, counters.clone());
        let t0 = Instant::now();
        let (first, flushed) = limiter.admit(key("anonymous", "unknown token"), t0);
        assert!(first);
        assert_eq!(flushed, Flushed::default());
        for _ in 0..999 {
            let (record, _) = limiter.admit(key("anonymous", "unknown token"), t0);
            assert!(!record);
        }
        // A different reason is a different denial.
        assert!(limiter.admit(key("anonymous", "malformed"), t0).0);
        // Nothing is flushed before the window ends.
        assert_eq!(
            limiter.flush(t0 + Duration::from_millis(500)),
            Flushed::default()
        );
        let flushed = limiter.flush(t0 + Duration::from_secs(1));
        assert_eq!(flushed.repeats.len(), 1, "{flushed:?}");
        assert_eq!(flushed.repeats[0].count, 999);
        assert_eq!(flushed.repeats[0].key.reason, "unknown token");
        assert_eq!(counters.denials_recorded.load(Ordering::Relaxed), 2);
        assert_eq!(counters.denials_aggregated.load(Ordering::Relaxed), 999);
        // The next window starts afresh: the first denial is recorded again.
        let (record, flushed) = limiter.admit(
            key("anonymous", "unknown token"),
            t0 + Duration::from_secs(1),
        );
        assert!(record);
        assert_eq!(flushed, Flushed::default());
    }

    /// Sequence anomalies are folded per gateway and kind, counting events, in their own
    /// window: they neither count as denials nor share the denials' key budget.
    #[test]
    fn anomalies_are_weighted_by_events_and_kept_apart_from_denials() {
        let counters = Arc::new(HardeningCounters::default());
        let limiter = DenialLimiter::new(Duration::from_secs(1), 2, counters.clone());
        let gw = |id: &str| crate::seqtrack::GatewayKey {
            tenant_id: "acme".into(),
            environment: "prod".into(),
            gateway_id: id.into(),
        };
        let t0 = Instant::now();
        assert!(limiter.admit_anomaly((gw("a"), "regression"), 40, t0).0);
        assert!(!limiter.admit_anomaly((gw("a"), "regression"), 3, t0).0);
        assert!(!limiter.admit_anomaly((gw("a"), "regression"), 1, t0).0);
        assert!(limiter.admit_anomaly((gw("a"), "gap"), 7, t0).0);
        // Two keys tracked: a third gateway is only counted.
        assert!(!limiter.admit_anomaly((gw("b"), "gap"), 5, t0).0);
        // Denials have their own keys and counters.
        assert!(limiter.admit(key("anonymous", "x"), t0).0);
        assert_eq!(counters.denials_recorded.load(Ordering::Relaxed), 1);
        assert_eq!(counters.denials_aggregated.load(Ordering::Relaxed), 0);
        assert_eq!(
            limiter.flush_anomalies(t0 + Duration::from_millis(999)),
            Flushed::default()
        );
        let flushed = limiter.flush_anomalies(t0 + Duration::from_secs(1));
        assert_eq!(flushed.untracked, 5);
        assert_eq!(flushed.repeats.len(), 1, "{flushed:?}");
        assert_eq!(flushed.repeats[0].key, (gw("a"), "regression"));
        assert_eq!(flushed.repeats[0].count, 4);
        assert!(
            limiter
                .flush(t0 + Duration::from_secs(1))
                .repeats
                .is_empty()
        );
    }

    #[test]
    fn distinct_keys_are_bounded() {
        let limiter = DenialLimiter::new(Duration::from_secs(1), 3, Arc::default());
        let t0 = Instant::now();
        let recorded = (0..10)
            .filter(|i| limiter.admit(key(&format!("p{i}"), "x"), t0).0)
            .count();
        assert_eq!(recorded, 3);
        let flushed = limiter.flush(t0 + Duration::from_secs(2));
        assert_eq!(flushed.untracked, 7);
        assert!(flushed.repeats.is_empty());
    }

    #[test]
    fn the_descriptor_limit_is_raised_or_refused_with_the_reason() {
        assert_eq!(plan_fd_limit(1664, 4096, 4096), Ok(None));
        assert_eq!(plan_fd_limit(1664, 1024, 524_288), Ok(Some(1664)));
        assert_eq!(plan_fd_limit(1664, 1664, 1664), Ok(None));
        let err = plan_fd_limit(1664, 1024, 1024).unwrap_err();
        assert!(err.contains("limit is 1024 (hard limit 1024)"), "{err}");
        assert!(err.contains("needs 1664"), "{err}");
        assert!(err.contains("ulimit -n"), "{err}");
        assert!(!err.contains("  "), "one line, single spaces: {err}");
    }
}
