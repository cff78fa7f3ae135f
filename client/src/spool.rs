//! The disk spool: a write-ahead, append-only log of events not yet acknowledged by the ledger,
//! in a directory owned by one gateway process.
//!
//! Directory layout:
//! - `lock` — `flock`ed while a client uses the directory (a second process gets `Locked`).
//! - `segment-<id, 16 digits>.spool` — segment files, ids consecutive. Each starts with the
//!   8-byte magic `ALSPOOL1`, then frames:
//!
//!   | bytes | field |
//!   |---|---|
//!   | 4 | payload length, u32 little-endian (≤ 16 MiB) |
//!   | 8 | spool sequence number, u64 little-endian (+1 per event, across restarts) |
//!   | 8 | first 8 bytes of BLAKE3(length ‖ sequence ‖ payload) |
//!   | length | the `AuditEvent`, protobuf-encoded, with `event_id` and `gateway_seq` filled |
//!
//! - `cursor` — text: `segment N`, `offset O`, `spool_seq S`, `gateway_seq G`: everything
//!   before (N, O) has a receipt; S and G are the highest numbers ever assigned, so they
//!   continue after the segments are deleted. Replaced atomically (write, fsync, rename).
//! - `rejected.log` — events the ledger refused, one line each (time, event id, code, reason,
//!   the event as hex protobuf), kept for an operator.
//!
//! Writes are grouped (every `record` waiting at the time) and fsynced once per group before
//! any of them returns. Only the last group can be torn by a crash; on open, the first frame
//! of the last segment that is short or fails its checksum ends the spool: the file is
//! truncated there with a warning. A bad frame in an earlier segment is corruption, not a torn
//! write, and `open` refuses with `SpoolError::Corrupt`. Acknowledged prefixes are dropped by
//! deleting whole segments: a segment goes once every event in it has a receipt, and when
//! everything is acknowledged the current segment is replaced by an empty one.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{Read as _, Seek as _, SeekFrom, Write as _};
use std::os::fd::AsRawFd as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use auditledger_proto::v1::AuditEvent;
use prost::Message as _;
use tokio::sync::{mpsc, oneshot, watch};

use crate::error::{RecordError, SpoolError};
use crate::metrics::Metrics;
use crate::sender::{Handles, ReceiptTx};

pub(crate) const MAGIC: &[u8; 8] = b"ALSPOOL1";
pub(crate) const HEADER_LEN: u64 = MAGIC.len() as u64;
pub(crate) const FRAME_HEADER_LEN: usize = 20;
const MAX_PAYLOAD: u32 = 16 << 20;
/// A fully acknowledged current segment is replaced by an empty one once it is this big (so a
/// steady trickle does not create a file per batch).
const RESET_BYTES: u64 = 1 << 20;

/// A byte position in the spool: segment id, offset in that segment. Ordered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Default)]
pub(crate) struct SpoolPos {
    pub segment: u64,
    pub offset: u64,
}

fn segment_name(id: u64) -> String {
    format!("segment-{id:016}.spool")
}

fn parse_segment_name(name: &str) -> Option<u64> {
    let digits = name.strip_prefix("segment-")?.strip_suffix(".spool")?;
    if digits.len() != 16 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

fn checksum(len: u32, seq: u64, payload: &[u8]) -> [u8; 8] {
    let mut hasher = blake3::Hasher::new();
    hasher.update(&len.to_le_bytes());
    hasher.update(&seq.to_le_bytes());
    hasher.update(payload);
    let mut out = [0u8; 8];
    out.copy_from_slice(&hasher.finalize().as_bytes()[..8]);
    out
}

/// One frame's bytes.
pub(crate) fn encode_frame(seq: u64, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut out = Vec::with_capacity(FRAME_HEADER_LEN + payload.len());
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(&checksum(len, seq, payload));
    out.extend_from_slice(payload);
    out
}

/// Parses the frame header at the start of `header`; returns (payload length, seq, checksum).
fn parse_header(header: &[u8; FRAME_HEADER_LEN]) -> Result<(u32, u64, [u8; 8]), String> {
    let mut len = [0u8; 4];
    len.copy_from_slice(&header[..4]);
    let len = u32::from_le_bytes(len);
    if len > MAX_PAYLOAD {
        return Err(format!(
            "frame length {len} exceeds the maximum {MAX_PAYLOAD}"
        ));
    }
    let mut seq = [0u8; 8];
    seq.copy_from_slice(&header[4..12]);
    let mut sum = [0u8; 8];
    sum.copy_from_slice(&header[12..20]);
    Ok((len, u64::from_le_bytes(seq), sum))
}

/// A frame parsed from a buffer: (seq, payload range end) or why it is bad.
fn parse_frame(buf: &[u8]) -> Result<(u64, &[u8]), String> {
    let Some(header) = buf.get(..FRAME_HEADER_LEN) else {
        return Err(format!(
            "frame header cut short ({} of {FRAME_HEADER_LEN} bytes)",
            buf.len()
        ));
    };
    let header: &[u8; FRAME_HEADER_LEN] =
        header.try_into().map_err(|_| "frame header".to_string())?;
    let (len, seq, sum) = parse_header(header)?;
    let end = FRAME_HEADER_LEN + len as usize;
    let Some(payload) = buf.get(FRAME_HEADER_LEN..end) else {
        return Err(format!(
            "payload cut short ({} of {len} bytes)",
            buf.len() - FRAME_HEADER_LEN
        ));
    };
    if checksum(len, seq, payload) != sum {
        return Err("checksum mismatch".into());
    }
    Ok((seq, payload))
}

fn sync_dir(dir: &Path) -> Result<(), SpoolError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| SpoolError::io(dir, "syncing the directory", e))
}

/// The `cursor` file.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Cursor {
    pos: SpoolPos,
    spool_seq: u64,
    gateway_seq: u64,
}

impl Cursor {
    fn parse(text: &str) -> Option<Cursor> {
        let mut c = Cursor::default();
        let mut seen = 0;
        for line in text.lines() {
            let (key, value) = line.split_once(' ')?;
            let value: u64 = value.parse().ok()?;
            match key {
                "segment" => c.pos.segment = value,
                "offset" => c.pos.offset = value,
                "spool_seq" => c.spool_seq = value,
                "gateway_seq" => c.gateway_seq = value,
                _ => return None,
            }
            seen += 1;
        }
        (seen == 4).then_some(c)
    }

    fn text(&self) -> String {
        format!(
            "segment {}\noffset {}\nspool_seq {}\ngateway_seq {}\n",
            self.pos.segment, self.pos.offset, self.spool_seq, self.gateway_seq
        )
    }
}

/// What `open` found.
pub(crate) struct Opened {
    pub writer: SpoolWriter,
    pub reader: SpoolReader,
    /// Events in the spool without a receipt (to be replayed).
    pub replay: u64,
}

/// How long [`lock_dir`] waits for a lock that is held, in steps of [`LOCK_RETRY`].
const LOCK_WAIT: Duration = Duration::from_millis(500);
const LOCK_RETRY: Duration = Duration::from_millis(10);

/// Takes the directory's exclusive `flock`, waiting up to [`LOCK_WAIT`] if it is held.
/// The wait is for a lock whose holder is already gone: a `flock` belongs to the open file
/// description, so a child forked by any thread of this process (e.g. a gateway starting a
/// tool subprocess) keeps the previous client's lock until it `exec`s, even after that client
/// closed its descriptor. A client reopened in that window would otherwise be refused.
/// Another live client keeps the lock and still gets `Locked`.
fn lock_dir(lock: &File, dir: &Path, lock_path: &Path) -> Result<(), SpoolError> {
    let give_up = std::time::Instant::now() + LOCK_WAIT;
    loop {
        // SAFETY: flock on a file descriptor we own; no memory is passed.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            return Ok(());
        }
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EWOULDBLOCK) {
            return Err(SpoolError::io(lock_path, "locking", err));
        }
        if std::time::Instant::now() >= give_up {
            return Err(SpoolError::Locked {
                path: dir.to_owned(),
            });
        }
        std::thread::sleep(LOCK_RETRY);
    }
}

/// Opens (creating if needed) and recovers a spool directory.
pub(crate) fn open(
    dir: &Path,
    max_bytes: u64,
    segment_bytes: u64,
    metrics: Arc<Metrics>,
) -> Result<Opened, SpoolError> {
    fs::create_dir_all(dir).map_err(|e| SpoolError::io(dir, "creating the directory", e))?;
    let lock_path = dir.join("lock");
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| SpoolError::io(&lock_path, "opening", e))?;
    lock_dir(&lock, dir, &lock_path)?;
    let cursor_path = dir.join("cursor");
    let mut cursor = match fs::read_to_string(&cursor_path) {
        Ok(text) => match Cursor::parse(&text) {
            Some(c) => Some(c),
            None => {
                tracing::warn!(path = %cursor_path.display(), "spool cursor unreadable; replaying every segment (the ledger answers duplicates as such)");
                None
            }
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(SpoolError::io(&cursor_path, "reading", e)),
    };
    let mut ids = Vec::new();
    for entry in fs::read_dir(dir).map_err(|e| SpoolError::io(dir, "listing", e))? {
        let entry = entry.map_err(|e| SpoolError::io(dir, "listing", e))?;
        if let Some(id) = entry.file_name().to_str().and_then(parse_segment_name) {
            ids.push(id);
        }
    }
    ids.sort_unstable();
    // Segments wholly before the cursor were acknowledged; a crash stopped their deletion.
    if let Some(c) = cursor {
        for &id in ids.iter().filter(|&&id| id < c.pos.segment) {
            let path = dir.join(segment_name(id));
            fs::remove_file(&path).map_err(|e| SpoolError::io(&path, "deleting", e))?;
        }
        ids.retain(|&id| id >= c.pos.segment);
    }
    let mut sizes = BTreeMap::new();
    let mut max_seq = cursor.map_or(0, |c| c.spool_seq);
    let mut max_gateway_seq = cursor.map_or(0, |c| c.gateway_seq);
    let mut replay = 0u64;
    let mut cursor_ok = false;
    for (i, &id) in ids.iter().enumerate() {
        let last = i + 1 == ids.len();
        let path = dir.join(segment_name(id));
        let bytes = fs::read(&path).map_err(|e| SpoolError::io(&path, "reading", e))?;
        let mut good = 0usize;
        let mut bad = None;
        if bytes.len() < MAGIC.len() || &bytes[..MAGIC.len()] != MAGIC {
            bad = Some(format!(
                "missing the {:?} header",
                String::from_utf8_lossy(MAGIC)
            ));
        } else {
            good = MAGIC.len();
            while good < bytes.len() {
                if cursor.is_some_and(|c| {
                    c.pos
                        == SpoolPos {
                            segment: id,
                            offset: good as u64,
                        }
                }) {
                    cursor_ok = true;
                }
                match parse_frame(&bytes[good..]) {
                    Ok((seq, payload)) => {
                        let after_cursor = cursor.is_none_or(|c| {
                            SpoolPos {
                                segment: id,
                                offset: good as u64,
                            } >= c.pos
                        });
                        match AuditEvent::decode(payload) {
                            Ok(event) => {
                                max_gateway_seq = max_gateway_seq.max(event.gateway_seq);
                            }
                            Err(e) => {
                                bad = Some(format!("frame {seq} does not decode: {e}"));
                                break;
                            }
                        }
                        max_seq = max_seq.max(seq);
                        if after_cursor {
                            replay += 1;
                        }
                        good += FRAME_HEADER_LEN + payload.len();
                    }
                    Err(reason) => {
                        bad = Some(reason);
                        break;
                    }
                }
            }
            if cursor.is_some_and(|c| {
                c.pos
                    == SpoolPos {
                        segment: id,
                        offset: good as u64,
                    }
            }) {
                cursor_ok = true;
            }
        }
        if let Some(reason) = bad {
            if !last {
                return Err(SpoolError::Corrupt {
                    path,
                    offset: good as u64,
                    reason,
                });
            }
            let dropped = bytes.len() - good;
            tracing::warn!(path = %path.display(), offset = good, dropped_bytes = dropped, %reason,
                "spool: torn record at the end of the last segment (crash mid-write); dropped — it was never acknowledged to the caller");
            Metrics::add(&metrics.torn_records_dropped, 1);
            let file = OpenOptions::new()
                .write(true)
                .open(&path)
                .map_err(|e| SpoolError::io(&path, "opening", e))?;
            if good < MAGIC.len() {
                file.set_len(0)
                    .and_then(|()| std::os::unix::fs::FileExt::write_all_at(&file, MAGIC, 0))
                    .map_err(|e| SpoolError::io(&path, "rewriting the header", e))?;
                good = MAGIC.len();
            } else {
                file.set_len(good as u64)
                    .map_err(|e| SpoolError::io(&path, "truncating the torn tail", e))?;
            }
            file.sync_all()
                .map_err(|e| SpoolError::io(&path, "syncing", e))?;
        }
        sizes.insert(id, good as u64);
    }
    if cursor.is_some() && !cursor_ok && !ids.is_empty() {
        tracing::warn!(path = %cursor_path.display(), "spool cursor is not at a record boundary; replaying every segment (the ledger answers duplicates as such)");
        cursor = None;
        replay = 0;
        for &id in &ids {
            replay += count_frames(&dir.join(segment_name(id)))?;
        }
    }
    let start = match (cursor, ids.first()) {
        (Some(c), Some(_)) => c.pos,
        (None, Some(&first)) => SpoolPos {
            segment: first,
            offset: HEADER_LEN,
        },
        (_, None) => SpoolPos::default(),
    };
    // Always write to a fresh segment: never append after a truncated tail.
    let new_id = ids
        .last()
        .map_or(cursor.map_or(0, |c| c.pos.segment), |&l| l + 1);
    let (file, path) = create_segment(dir, new_id)?;
    sizes.insert(new_id, HEADER_LEN);
    let start = if ids.is_empty() {
        SpoolPos {
            segment: new_id,
            offset: HEADER_LEN,
        }
    } else {
        start
    };
    let committed_pos = SpoolPos {
        segment: new_id,
        offset: HEADER_LEN,
    };
    let (committed_tx, committed_rx) = watch::channel(committed_pos);
    let (space_tx, _) = watch::channel(0u64);
    let used: u64 = sizes.values().sum();
    metrics.spool_bytes.store(used, Ordering::Relaxed);
    Metrics::add(&metrics.replayed_from_spool, replay);
    let writer = SpoolWriter {
        dir: dir.to_owned(),
        _lock: lock,
        file,
        path,
        segment: new_id,
        len: HEADER_LEN,
        sizes,
        max_bytes,
        segment_bytes,
        next_seq: max_seq + 1,
        gateway_seq: max_gateway_seq,
        committed: committed_tx,
        space: Arc::new(space_tx),
        assigned: Arc::new(AtomicU64::new(max_seq)),
        metrics,
        acked: start,
    };
    let reader = SpoolReader {
        dir: dir.to_owned(),
        pos: start,
        file: None,
        committed: committed_rx,
    };
    Ok(Opened {
        writer,
        reader,
        replay,
    })
}

fn count_frames(path: &Path) -> Result<u64, SpoolError> {
    let bytes = fs::read(path).map_err(|e| SpoolError::io(path, "reading", e))?;
    let mut at = MAGIC.len().min(bytes.len());
    let mut n = 0;
    while let Ok((_, payload)) = parse_frame(&bytes[at..]) {
        at += FRAME_HEADER_LEN + payload.len();
        n += 1;
    }
    Ok(n)
}

fn create_segment(dir: &Path, id: u64) -> Result<(File, PathBuf), SpoolError> {
    let path = dir.join(segment_name(id));
    let mut file = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(&path)
        .map_err(|e| SpoolError::io(&path, "creating", e))?;
    file.write_all(MAGIC)
        .and_then(|()| file.sync_all())
        .map_err(|e| SpoolError::io(&path, "writing the header", e))?;
    sync_dir(dir)?;
    Ok((file, path))
}

/// Ids assigned to a spooled event.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Assigned {
    pub gateway_seq: u64,
    pub tracked: bool,
}

/// A `record` call for the writer thread.
pub(crate) struct AppendJob {
    pub event: AuditEvent,
    pub assign_gateway_seq: bool,
    pub receipt_tx: ReceiptTx,
    pub reply: oneshot::Sender<Result<Assigned, RecordError>>,
}

pub(crate) enum WriterMsg {
    Append(Box<AppendJob>),
    /// Everything before this position has a receipt.
    Ack(SpoolPos),
}

/// The writing side, owned by one thread (blocking file I/O, group commit).
pub(crate) struct SpoolWriter {
    dir: PathBuf,
    _lock: File,
    file: File,
    path: PathBuf,
    segment: u64,
    len: u64,
    /// Size of every segment file on disk.
    sizes: BTreeMap<u64, u64>,
    max_bytes: u64,
    segment_bytes: u64,
    next_seq: u64,
    gateway_seq: u64,
    committed: watch::Sender<SpoolPos>,
    /// Bumped whenever space is freed (waiting `record` calls retry).
    pub space: Arc<watch::Sender<u64>>,
    /// Highest spool sequence number committed.
    pub assigned: Arc<AtomicU64>,
    metrics: Arc<Metrics>,
    acked: SpoolPos,
}

impl SpoolWriter {
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn used(&self) -> u64 {
        self.sizes.values().sum()
    }

    /// Runs the writer until every sender is gone.
    pub fn run(
        mut self,
        mut rx: mpsc::UnboundedReceiver<WriterMsg>,
        handles: Handles,
        max_tracked: usize,
    ) {
        const MAX_GROUP: usize = 1024;
        while let Some(first) = rx.blocking_recv() {
            let mut jobs = Vec::new();
            let mut ack = None;
            let mut next = Some(first);
            while let Some(msg) = next.take() {
                match msg {
                    WriterMsg::Append(job) => jobs.push(*job),
                    WriterMsg::Ack(pos) => ack = Some(ack.map_or(pos, |a: SpoolPos| a.max(pos))),
                }
                if jobs.len() < MAX_GROUP {
                    next = rx.try_recv().ok();
                }
            }
            if !jobs.is_empty() {
                self.append_group(jobs, &handles, max_tracked);
            }
            if let Some(pos) = ack
                && let Err(e) = self.ack(pos)
            {
                tracing::error!(error = %e, "spool: could not drop acknowledged events (they will be sent again after a restart, as duplicates)");
            }
        }
        // Clean stop: remember the sequence numbers and the acknowledged position.
        if let Err(e) = self.write_cursor() {
            tracing::warn!(error = %e, "spool: could not write the cursor on close");
        }
    }

    fn append_group(&mut self, jobs: Vec<AppendJob>, handles: &Handles, max_tracked: usize) {
        if self.len >= self.segment_bytes
            && let Err(e) = self.rotate()
        {
            let msg = e.to_string();
            for job in jobs {
                let _ = job.reply.send(Err(RecordError::Spool(SpoolError::Io {
                    path: self.path.clone(),
                    op: "starting a new segment",
                    source: std::io::Error::other(msg.clone()),
                })));
            }
            return;
        }
        let (seq0, gseq0) = (self.next_seq, self.gateway_seq);
        let mut used = self.used();
        let mut buf = Vec::new();
        let mut accepted = Vec::new();
        for mut job in jobs {
            let gateway_seq = if job.assign_gateway_seq {
                self.gateway_seq + 1
            } else {
                job.event.gateway_seq
            };
            job.event.gateway_seq = gateway_seq;
            let payload = job.event.encode_to_vec();
            let frame_len = (FRAME_HEADER_LEN + payload.len()) as u64;
            if used + frame_len > self.max_bytes {
                Metrics::add(&self.metrics.backpressure, 1);
                let _ = job.reply.send(Err(RecordError::SpoolFull {
                    path: self.dir.clone(),
                    used_bytes: used,
                    event_bytes: frame_len,
                    limit_bytes: self.max_bytes,
                }));
                continue;
            }
            self.gateway_seq = self.gateway_seq.max(gateway_seq);
            let seq = self.next_seq;
            self.next_seq += 1;
            used += frame_len;
            buf.extend_from_slice(&encode_frame(seq, &payload));
            accepted.push((job, seq, gateway_seq));
        }
        if accepted.is_empty() {
            return;
        }
        // Register receipt handles before the bytes become visible to the sender.
        let mut tracked = Vec::with_capacity(accepted.len());
        {
            let mut map = handles.lock().unwrap_or_else(|p| p.into_inner());
            for (job, seq, _) in &mut accepted {
                let t = map.len() < max_tracked;
                if t {
                    let (dummy, _) = oneshot::channel();
                    map.insert(*seq, std::mem::replace(&mut job.receipt_tx, dummy));
                }
                tracked.push(t);
            }
        }
        let result = self
            .file
            .write_all(&buf)
            .and_then(|()| self.file.sync_data());
        if let Err(e) = result {
            // Nothing of the group counts: cut the partial write off and give the numbers back.
            let _ = self.file.set_len(self.len);
            let _ = self.file.seek(SeekFrom::Start(self.len));
            self.next_seq = seq0;
            self.gateway_seq = gseq0;
            let mut map = handles.lock().unwrap_or_else(|p| p.into_inner());
            let msg = e.to_string();
            for (job, seq, _) in accepted {
                map.remove(&seq);
                let _ = job.reply.send(Err(RecordError::Spool(SpoolError::Io {
                    path: self.path.clone(),
                    op: "appending",
                    source: std::io::Error::new(e.kind(), msg.clone()),
                })));
            }
            return;
        }
        self.len += buf.len() as u64;
        self.sizes.insert(self.segment, self.len);
        self.metrics
            .spool_bytes
            .store(self.used(), Ordering::Relaxed);
        Metrics::add(&self.metrics.spooled, accepted.len() as u64);
        self.committed.send_replace(SpoolPos {
            segment: self.segment,
            offset: self.len,
        });
        self.assigned.store(self.next_seq - 1, Ordering::Release);
        for ((job, _, gateway_seq), tracked) in accepted.into_iter().zip(tracked) {
            let _ = job.reply.send(Ok(Assigned {
                gateway_seq,
                tracked,
            }));
        }
    }

    fn rotate(&mut self) -> Result<(), SpoolError> {
        let id = self.segment + 1;
        let (file, path) = create_segment(&self.dir, id)?;
        self.file = file;
        self.path = path;
        self.segment = id;
        self.len = HEADER_LEN;
        self.sizes.insert(id, HEADER_LEN);
        self.committed.send_replace(SpoolPos {
            segment: id,
            offset: HEADER_LEN,
        });
        Ok(())
    }

    fn write_cursor(&self) -> Result<(), SpoolError> {
        let cursor = Cursor {
            pos: self.acked,
            spool_seq: self.next_seq - 1,
            gateway_seq: self.gateway_seq,
        };
        let tmp = self.dir.join("cursor.tmp");
        let path = self.dir.join("cursor");
        let mut f = File::create(&tmp).map_err(|e| SpoolError::io(&tmp, "creating", e))?;
        f.write_all(cursor.text().as_bytes())
            .and_then(|()| f.sync_all())
            .map_err(|e| SpoolError::io(&tmp, "writing", e))?;
        // A stale cursor after a crash only means duplicates on replay: no directory fsync.
        fs::rename(&tmp, &path).map_err(|e| SpoolError::io(&path, "replacing", e))
    }

    fn ack(&mut self, pos: SpoolPos) -> Result<(), SpoolError> {
        if pos <= self.acked {
            return Ok(());
        }
        self.acked = pos;
        let current_end = SpoolPos {
            segment: self.segment,
            offset: self.len,
        };
        if pos == current_end && self.len >= RESET_BYTES.min(self.segment_bytes) {
            self.rotate()?;
            self.acked = SpoolPos {
                segment: self.segment,
                offset: HEADER_LEN,
            };
        }
        self.write_cursor()?;
        let acked = self.acked;
        let doomed: Vec<u64> = self
            .sizes
            .iter()
            .filter(|&(&id, &size)| {
                id < acked.segment
                    || (id == acked.segment && id < self.segment && acked.offset >= size)
            })
            .map(|(&id, _)| id)
            .collect();
        for id in doomed {
            let path = self.dir.join(segment_name(id));
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(SpoolError::io(&path, "deleting", e)),
            }
            self.sizes.remove(&id);
        }
        self.metrics
            .spool_bytes
            .store(self.used(), Ordering::Relaxed);
        self.space.send_modify(|g| *g += 1);
        Ok(())
    }
}

/// One event read back from the spool.
pub(crate) struct SpoolEntry {
    pub seq: u64,
    pub event: AuditEvent,
    pub start: SpoolPos,
    pub encoded_len: usize,
}

/// The reading side, owned by the sender: reads committed frames in order.
pub(crate) struct SpoolReader {
    dir: PathBuf,
    pub pos: SpoolPos,
    file: Option<(u64, File)>,
    pub committed: watch::Receiver<SpoolPos>,
}

impl SpoolReader {
    fn segment_len(&self, id: u64) -> u64 {
        fs::metadata(self.dir.join(segment_name(id))).map_or(0, |m| m.len())
    }

    /// Next committed event, or None when caught up. A corrupt frame (disk failure after the
    /// fsync) is an error; the caller may [`SpoolReader::skip_segment`].
    pub fn next(&mut self) -> Result<Option<SpoolEntry>, SpoolError> {
        let committed = *self.committed.borrow();
        let hops = committed.segment.saturating_sub(self.pos.segment) + 1;
        for _ in 0..=hops {
            if self.pos >= committed {
                return Ok(None);
            }
            let limit = if self.pos.segment == committed.segment {
                committed.offset
            } else {
                self.segment_len(self.pos.segment)
            };
            if self.pos.offset >= limit {
                // A sealed segment read to its end: on to the next one.
                self.skip_segment();
                continue;
            }
            return self.read_frame(limit).map(Some);
        }
        Ok(None)
    }

    pub fn skip_segment(&mut self) {
        self.pos = SpoolPos {
            segment: self.pos.segment + 1,
            offset: HEADER_LEN,
        };
        self.file = None;
    }

    fn read_frame(&mut self, limit: u64) -> Result<SpoolEntry, SpoolError> {
        let path = self.dir.join(segment_name(self.pos.segment));
        if self
            .file
            .as_ref()
            .is_none_or(|(id, _)| *id != self.pos.segment)
        {
            let f = File::open(&path).map_err(|e| SpoolError::io(&path, "opening", e))?;
            self.file = Some((self.pos.segment, f));
        }
        let corrupt = |reason: String, offset: u64| SpoolError::Corrupt {
            path: path.clone(),
            offset,
            reason,
        };
        let start = self.pos;
        let Some((_, file)) = self.file.as_mut() else {
            return Err(corrupt("segment not open".into(), start.offset));
        };
        let mut header = [0u8; FRAME_HEADER_LEN];
        file.seek(SeekFrom::Start(start.offset))
            .and_then(|_| file.read_exact(&mut header))
            .map_err(|e| SpoolError::io(&path, "reading", e))?;
        let (len, seq, sum) = parse_header(&header).map_err(|r| corrupt(r, start.offset))?;
        let end = start.offset + FRAME_HEADER_LEN as u64 + u64::from(len);
        if end > limit {
            return Err(corrupt(
                format!("frame of {len} bytes runs past the committed end {limit}"),
                start.offset,
            ));
        }
        let mut payload = vec![0u8; len as usize];
        file.read_exact(&mut payload)
            .map_err(|e| SpoolError::io(&path, "reading", e))?;
        if checksum(len, seq, &payload) != sum {
            return Err(corrupt("checksum mismatch".into(), start.offset));
        }
        let event = AuditEvent::decode(payload.as_slice())
            .map_err(|e| corrupt(format!("event does not decode: {e}"), start.offset))?;
        self.pos.offset = end;
        Ok(SpoolEntry {
            seq,
            event,
            start,
            encoded_len: len as usize,
        })
    }
}

/// Appends a refused event to `rejected.log` (best effort: also logged).
pub(crate) fn log_rejected(dir: &Path, event: &AuditEvent, code: tonic::Code, message: &str) {
    let path = dir.join("rejected.log");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let line = format!(
        "{now}\t{}\t{code:?}\t{}\t{}\n",
        event.event_id,
        message.replace(['\t', '\n'], " "),
        hex::encode(event.encode_to_vec())
    );
    let result = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .and_then(|mut f| {
            f.write_all(line.as_bytes())?;
            f.sync_data()
        });
    if let Err(e) = result {
        tracing::error!(path = %path.display(), error = %e, event_id = %event.event_id, "could not write rejected.log");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(i: u64) -> AuditEvent {
        AuditEvent {
            event_id: format!("id-{i}"),
            gateway_seq: i,
            ..Default::default()
        }
    }

    #[test]
    fn frames_round_trip_and_detect_damage() {
        let payload = event(7).encode_to_vec();
        let frame = encode_frame(42, &payload);
        let (seq, p) = parse_frame(&frame).unwrap();
        assert_eq!((seq, p), (42, payload.as_slice()));
        for cut in [0, 5, FRAME_HEADER_LEN, frame.len() - 1] {
            assert!(parse_frame(&frame[..cut]).is_err(), "cut at {cut}");
        }
        for flip in [0, 4, 12, frame.len() - 1] {
            let mut bad = frame.clone();
            bad[flip] ^= 0x40;
            assert!(parse_frame(&bad).is_err(), "flip at {flip}");
        }
    }

    #[test]
    fn cursor_round_trips() {
        let c = Cursor {
            pos: SpoolPos {
                segment: 3,
                offset: 99,
            },
            spool_seq: 12,
            gateway_seq: 40,
        };
        assert_eq!(Cursor::parse(&c.text()), Some(c));
        assert_eq!(Cursor::parse("segment 1\noffset x\n"), None);
    }

    #[test]
    fn segment_names() {
        assert_eq!(parse_segment_name(&segment_name(12)), Some(12));
        assert_eq!(parse_segment_name("segment-12.spool"), None);
        assert_eq!(parse_segment_name("cursor"), None);
    }
}
