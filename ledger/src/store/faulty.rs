//! A store wrapper that fails, delays or half-fails on purpose, to prove that the ledger never
//! acknowledges what it did not persist and recovers when storage comes back.
//!
//! "Half-fails": a [`Store`] write is atomic (RocksDB applies a `WriteBatch` whole or not at
//! all, and a batch torn by a crash is dropped from the WAL tail on reopen), so the only partial
//! outcome a caller can see is an *ambiguous* one: the batch was applied but the write reported
//! an error (e.g. the data reached the WAL and the sync failed). [`WriteFaults::apply_then_fail`]
//! injects exactly that. A batch applied in part would break the store's contract (the
//! conformance suite checks that a failed write applies nothing), so it is not offered.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::{Direction, Ingested, Store, StoreError, WriteBatch};
use crate::event::AuditEvent;
use crate::layout::Space;
use crate::{Ledger, LedgerError, Receipt};

/// What a [`FaultyStore`] does to writes.
#[derive(Clone, Debug, Default)]
pub struct WriteFaults {
    /// Fail this many upcoming writes (0 = none), then behave.
    pub fail_next: u64,
    /// Fail every write while set (e.g. "disk full" until space returns).
    pub fail_all: Option<StoreError>,
    /// Sleep this long before each write (slow disk).
    pub delay: Duration,
    /// Apply the faults above only to durable (synced) writes, leaving background writes
    /// (such as the leaf-hash indexer's) alone.
    pub durable_only: bool,
    /// An injected failure (`fail_next`, `fail_all`) still applies the batch first: the write
    /// happened, its acknowledgement was lost.
    pub apply_then_fail: bool,
    /// Fail this many upcoming [`Store::sync`] calls (0 = none): what was written stays
    /// applied, its durability unconfirmed.
    pub fail_next_syncs: u64,
}

#[derive(Debug)]
pub struct FaultyStore<S> {
    inner: S,
    faults: Mutex<WriteFaults>,
    fail_reads: AtomicBool,
    /// Sleep this long (milliseconds) before each read (a slow disk).
    read_delay_ms: AtomicU64,
    writes_ok: AtomicU64,
    writes_failed: AtomicU64,
}

impl<S: Store> FaultyStore<S> {
    pub fn new(inner: S) -> Self {
        FaultyStore {
            inner,
            faults: Mutex::new(WriteFaults::default()),
            fail_reads: AtomicBool::new(false),
            read_delay_ms: AtomicU64::new(0),
            writes_ok: AtomicU64::new(0),
            writes_failed: AtomicU64::new(0),
        }
    }

    pub fn inner(&self) -> &S {
        &self.inner
    }

    pub fn set_write_faults(&self, faults: WriteFaults) {
        *self.faults.lock().unwrap_or_else(|p| p.into_inner()) = faults;
    }

    pub fn set_fail_reads(&self, fail: bool) {
        self.fail_reads.store(fail, Ordering::SeqCst);
    }

    pub fn set_read_delay(&self, delay: Duration) {
        self.read_delay_ms
            .store(delay.as_millis() as u64, Ordering::SeqCst);
    }

    /// (successful writes, failed writes) so far.
    pub fn write_counts(&self) -> (u64, u64) {
        (
            self.writes_ok.load(Ordering::SeqCst),
            self.writes_failed.load(Ordering::SeqCst),
        )
    }

    fn read_fault(&self) -> Result<(), StoreError> {
        let delay = self.read_delay_ms.load(Ordering::SeqCst);
        if delay > 0 {
            std::thread::sleep(Duration::from_millis(delay));
        }
        if self.fail_reads.load(Ordering::SeqCst) {
            return Err(StoreError::Injected("read failure".into()));
        }
        Ok(())
    }
}

impl<S: Store> FaultyStore<S> {
    /// A write with the configured faults; `durable` selects which faults apply, `write` does
    /// the inner store's write.
    fn faulted_write(
        &self,
        batch: WriteBatch,
        durable: bool,
        write: impl FnOnce(&S, WriteBatch) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let (delay, fault, apply) = {
            let mut faults = self.faults.lock().unwrap_or_else(|p| p.into_inner());
            let applies = durable || !faults.durable_only;
            let fault = if !applies {
                None
            } else if let Some(err) = &faults.fail_all {
                Some(err.clone())
            } else if faults.fail_next > 0 {
                faults.fail_next -= 1;
                Some(StoreError::Injected("write failure".into()))
            } else {
                None
            };
            (faults.delay, fault, faults.apply_then_fail)
        };
        if !delay.is_zero() {
            std::thread::sleep(delay);
        }
        if let Some(err) = fault {
            if apply {
                write(&self.inner, batch)?;
            }
            self.writes_failed.fetch_add(1, Ordering::SeqCst);
            return Err(err);
        }
        write(&self.inner, batch)?;
        self.writes_ok.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

impl<S: Store> Store for FaultyStore<S> {
    fn write(&self, batch: WriteBatch, durable: bool) -> Result<(), StoreError> {
        self.faulted_write(batch, durable, |inner, batch| inner.write(batch, durable))
    }

    /// Faulted as a durable write: it is the first half of one.
    fn write_deferred(&self, batch: WriteBatch) -> Result<(), StoreError> {
        self.faulted_write(batch, true, |inner, batch| inner.write_deferred(batch))
    }

    /// Faulted as an unsynced write.
    fn ingest(&self, space: Space, batch: WriteBatch) -> Result<Ingested, StoreError> {
        let mut how = Ingested::Written;
        self.faulted_write(batch, false, |inner, batch| {
            how = inner.ingest(space, batch)?;
            Ok(())
        })?;
        Ok(how)
    }

    fn get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.read_fault()?;
        self.inner.get(space, key)
    }

    fn multi_get(
        &self,
        space: Space,
        keys: &[&[u8]],
        visit: &mut dyn FnMut(usize, Option<&[u8]>),
    ) -> Result<(), StoreError> {
        self.read_fault()?;
        self.inner.multi_get(space, keys, visit)
    }

    fn scan(
        &self,
        space: Space,
        start: &[u8],
        end: Option<&[u8]>,
        direction: Direction,
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), StoreError> {
        self.read_fault()?;
        self.inner.scan(space, start, end, direction, visit)
    }

    fn sync(&self) -> Result<(), StoreError> {
        {
            let mut faults = self.faults.lock().unwrap_or_else(|p| p.into_inner());
            if faults.fail_next_syncs > 0 {
                faults.fail_next_syncs -= 1;
                return Err(StoreError::Injected("sync failure".into()));
            }
        }
        self.inner.sync()
    }
}

/// One append of [`append_in_rounds`]: the event sent and what the ledger answered.
pub type Attempt = (AuditEvent, Result<Vec<Receipt>, LedgerError>);

/// Load for the commit pipeline's fault tests: in each of `rounds` rounds, sets `faults` on
/// `store`, then six threads append four single-event requests each, concurrently (`event(n)`,
/// with `n` distinct across threads and rounds). Clears the faults at the end and returns
/// every attempt.
pub fn append_in_rounds<S: Store>(
    store: &FaultyStore<S>,
    ledger: &Arc<Ledger>,
    rounds: u64,
    faults: &WriteFaults,
    event: fn(u64) -> AuditEvent,
) -> Vec<Attempt> {
    let mut attempts = Vec::new();
    for round in 0..rounds {
        store.set_write_faults(faults.clone());
        let threads: Vec<_> = (0..6u64)
            .map(|t| {
                let ledger = ledger.clone();
                std::thread::spawn(move || {
                    (0..4u64)
                        .map(|i| {
                            let e = event(round * 100_000 + t * 1000 + i);
                            let result = ledger.append_blocking("gw", std::slice::from_ref(&e));
                            (e, result)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        attempts.extend(
            threads
                .into_iter()
                .flat_map(|t| t.join().expect("appender thread")),
        );
    }
    store.set_write_faults(WriteFaults::default());
    attempts
}
