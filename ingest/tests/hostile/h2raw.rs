//! A deliberately minimal HTTP/2 client that writes raw frames, for hostile-client tests and
//! the `hostile_load` benchmark: it sends what a well-behaved client library never would (lying
//! gRPC length prefixes, bodies that never finish, oversized header blocks, malformed frames).
//! Header blocks use HPACK literals without indexing or Huffman coding, which every decoder
//! must accept. A reader thread per connection acknowledges SETTINGS and PING and records
//! which streams the server ended (END_STREAM or RST_STREAM), GOAWAY and end of file.
//! Blocking std sockets with timeouts: every wait is bounded.

#![allow(dead_code)]

use std::collections::HashSet;
use std::io::{self, Read as _, Write as _};
use std::net::{Shutdown, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
pub const DATA: u8 = 0;
pub const HEADERS: u8 = 1;
pub const RST_STREAM: u8 = 3;
pub const SETTINGS: u8 = 4;
pub const PING: u8 = 6;
pub const GOAWAY: u8 = 7;
pub const WINDOW_UPDATE: u8 = 8;
pub const CONTINUATION: u8 = 9;
pub const END_STREAM: u8 = 0x1;
pub const ACK: u8 = 0x1;
pub const END_HEADERS: u8 = 0x4;
/// Largest frame payload before SETTINGS_MAX_FRAME_SIZE is raised (RFC 9113 §4.2).
pub const MAX_FRAME: usize = 16_384;

/// One frame: 9-byte header and payload.
pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut out = Vec::with_capacity(9 + payload.len());
    out.extend_from_slice(&len.to_be_bytes()[1..]);
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// HPACK integer with a 7-bit prefix (RFC 7541 §5.1), H bit clear.
fn int7(out: &mut Vec<u8>, mut n: usize) {
    if n < 127 {
        out.push(n as u8);
        return;
    }
    out.push(127);
    n -= 127;
    while n >= 128 {
        out.push((n % 128) as u8 | 0x80);
        n /= 128;
    }
    out.push(n as u8);
}

/// HPACK "literal header field without indexing, new name".
pub fn literal(out: &mut Vec<u8>, name: &str, value: &[u8]) {
    out.push(0x00);
    int7(out, name.len());
    out.extend_from_slice(name.as_bytes());
    int7(out, value.len());
    out.extend_from_slice(value);
}

/// The header block of a gRPC call to `path`, with a bearer token if given and extra
/// (name, value) pairs.
pub fn grpc_headers(path: &str, token: Option<&str>, extra: &[(&str, &[u8])]) -> Vec<u8> {
    let mut block = Vec::new();
    literal(&mut block, ":method", b"POST");
    literal(&mut block, ":scheme", b"http");
    literal(&mut block, ":path", path.as_bytes());
    literal(&mut block, ":authority", b"127.0.0.1");
    literal(&mut block, "content-type", b"application/grpc");
    literal(&mut block, "te", b"trailers");
    if let Some(t) = token {
        literal(
            &mut block,
            "authorization",
            format!("Bearer {t}").as_bytes(),
        );
    }
    for (name, value) in extra {
        literal(&mut block, name, value);
    }
    block
}

/// A gRPC message prefix: uncompressed, declaring `len` bytes.
pub fn grpc_prefix(len: u32) -> [u8; 5] {
    let l = len.to_be_bytes();
    [0, l[0], l[1], l[2], l[3]]
}

/// HEADERS (+ CONTINUATION frames when the block exceeds one frame) opening `stream`.
pub fn headers_frames(stream: u32, block: &[u8], end_stream: bool) -> Vec<u8> {
    let mut out = Vec::new();
    let chunks: Vec<&[u8]> = if block.is_empty() {
        vec![block]
    } else {
        block.chunks(MAX_FRAME).collect()
    };
    for (i, chunk) in chunks.iter().enumerate() {
        let last = i + 1 == chunks.len();
        let mut flags = if last { END_HEADERS } else { 0 };
        let kind = if i == 0 {
            if end_stream {
                flags |= END_STREAM;
            }
            HEADERS
        } else {
            CONTINUATION
        };
        out.extend(frame(kind, flags, stream, chunk));
    }
    out
}

#[derive(Default)]
struct Seen {
    /// Streams the server ended (END_STREAM on HEADERS/DATA, or RST_STREAM).
    ended: HashSet<u32>,
    /// Of those, streams reset with RST_STREAM, and with REFUSED_STREAM in particular.
    reset: HashSet<u32>,
    refused: HashSet<u32>,
    goaway: bool,
    eof: bool,
    /// The server raised the connection window (WINDOW_UPDATE on stream 0).
    window_opened: bool,
}

/// A raw HTTP/2 connection.
pub struct Conn {
    writer: Arc<Mutex<TcpStream>>,
    seen: Arc<Mutex<Seen>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Conn {
    /// Connects, sends the preface and an empty SETTINGS frame, and starts the reader.
    pub fn open(addr: &str) -> io::Result<Conn> {
        let tcp = TcpStream::connect(addr)?;
        tcp.set_write_timeout(Some(Duration::from_secs(20)))?;
        tcp.set_nodelay(true)?;
        let mut read_side = tcp.try_clone()?;
        // Bounds the reader thread's life even if the server neither answers nor closes.
        read_side.set_read_timeout(Some(Duration::from_secs(120)))?;
        let writer = Arc::new(Mutex::new(tcp));
        let seen = Arc::new(Mutex::new(Seen::default()));
        {
            let mut w = writer.lock().unwrap();
            w.write_all(PREFACE)?;
            w.write_all(&frame(SETTINGS, 0, 0, &[]))?;
        }
        let (w, s) = (writer.clone(), seen.clone());
        let reader = std::thread::spawn(move || {
            let mut head = [0u8; 9];
            let mut payload = Vec::new();
            loop {
                if read_side.read_exact(&mut head).is_err() {
                    break;
                }
                let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
                let (kind, flags) = (head[3], head[4]);
                let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
                payload.resize(len, 0);
                if read_side.read_exact(&mut payload).is_err() {
                    break;
                }
                let reply = match kind {
                    SETTINGS if flags & ACK == 0 => Some(frame(SETTINGS, ACK, 0, &[])),
                    PING if flags & ACK == 0 => Some(frame(PING, ACK, 0, &payload)),
                    _ => None,
                };
                if let Some(reply) = reply {
                    // A failed write shows up as EOF on the next read.
                    let _ = w.lock().unwrap().write_all(&reply);
                }
                let mut seen = s.lock().unwrap();
                match kind {
                    HEADERS | DATA if flags & END_STREAM != 0 => {
                        seen.ended.insert(stream);
                    }
                    RST_STREAM => {
                        seen.ended.insert(stream);
                        seen.reset.insert(stream);
                        // Error code 0x7: REFUSED_STREAM (over max_concurrent_streams).
                        if payload.get(..4) == Some(&[0, 0, 0, 7]) {
                            seen.refused.insert(stream);
                        }
                    }
                    GOAWAY => seen.goaway = true,
                    WINDOW_UPDATE if stream == 0 => seen.window_opened = true,
                    _ => {}
                }
            }
            s.lock().unwrap().eof = true;
        });
        let conn = Conn {
            writer,
            seen,
            reader: Some(reader),
        };
        // Until the server's WINDOW_UPDATE arrives, the connection window is the initial
        // 65,535 bytes: sending more at once is a flow-control error that closes the
        // connection, which would test the wrong thing. Bounded wait.
        conn.wait(Duration::from_secs(10), |s| s.window_opened || s.eof);
        Ok(conn)
    }

    pub fn send(&self, bytes: &[u8]) -> io::Result<()> {
        self.writer.lock().unwrap().write_all(bytes)
    }

    /// Whether the server ended `stream` (or the whole connection) within `timeout`.
    pub fn wait_ended(&self, stream: u32, timeout: Duration) -> bool {
        self.wait(timeout, |s| s.ended.contains(&stream) || s.eof || s.goaway)
    }

    /// Whether the server closed the connection (GOAWAY or EOF) within `timeout`.
    pub fn wait_closed(&self, timeout: Duration) -> bool {
        self.wait(timeout, |s| s.eof || s.goaway)
    }

    /// Whether the server ended every stream of `streams` within `timeout`.
    pub fn wait_all_ended(&self, streams: &[u32], timeout: Duration) -> bool {
        self.wait(timeout, |s| {
            s.eof || s.goaway || streams.iter().all(|id| s.ended.contains(id))
        })
    }

    pub fn ended(&self, stream: u32) -> bool {
        self.seen.lock().unwrap().ended.contains(&stream)
    }

    /// Streams the server reset (RST_STREAM), e.g. refused beyond max_concurrent_streams.
    pub fn reset_count(&self) -> usize {
        self.seen.lock().unwrap().reset.len()
    }

    /// Streams refused (RST_STREAM REFUSED_STREAM), i.e. never admitted.
    pub fn refused_count(&self) -> usize {
        self.seen.lock().unwrap().refused.len()
    }

    fn wait(&self, timeout: Duration, done: impl Fn(&Seen) -> bool) -> bool {
        let start = Instant::now();
        loop {
            if done(&self.seen.lock().unwrap()) {
                return true;
            }
            if start.elapsed() >= timeout {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        let _ = self.writer.lock().unwrap().shutdown(Shutdown::Both);
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
    }
}

/// Server memory and descriptors from /proc (Linux).
pub struct ProcStats {
    pub rss_kib: u64,
    pub hwm_kib: u64,
    pub threads: u64,
    pub fds: u64,
    /// Of `fds`, sockets (the rest are mostly RocksDB files, which grow with the data).
    pub sockets: u64,
}

pub fn proc_stats(pid: u32) -> Option<ProcStats> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| -> Option<u64> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    };
    let (mut fds, mut sockets) = (0, 0);
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.flatten() {
        fds += 1;
        if std::fs::read_link(entry.path())
            .is_ok_and(|t| t.to_string_lossy().starts_with("socket:"))
        {
            sockets += 1;
        }
    }
    Some(ProcStats {
        rss_kib: field("VmRSS:")?,
        hwm_kib: field("VmHWM:")?,
        threads: field("Threads:")?,
        fds,
        sockets,
    })
}
