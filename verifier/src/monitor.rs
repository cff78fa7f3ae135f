//! `auditledger-verify monitor`: follows one log's checkpoints on a server and raises an
//! alert when the log stops being an append-only extension of what was seen before.
//!
//! The last trusted checkpoint is pinned in a state file; the first run trusts the first
//! checkpoint it sees, or a `--pin` file (which must verify). Each poll verifies the server's
//! latest checkpoint and compares it with the pin ([`crate::live::LogTarget::check_extends`]):
//! smaller → ROLLBACK, same size and another root or a consistency proof that fails → FORK,
//! larger and proven → pinned.
//!
//! State file (JSON, replaced atomically: temporary file in the same directory, fsync,
//! rename, fsync of the directory):
//! ```json
//! {
//!   "format": "auditledger-monitor-state/1",
//!   "origin": "auditledger.local/acme/prod",
//!   "tree_size": 42,
//!   "root": "<hex of the root hash>",
//!   "pinned_at": 1763900000,
//!   "server": "http://127.0.0.1:50051",
//!   "checkpoint": "<the signed checkpoint note, verbatim>"
//! }
//! ```
//! `checkpoint` is the authority: it is re-verified with the keys on every start, and
//! `origin`, `tree_size`, `root` (for people reading the file) must agree with it.
//! `pinned_at` (unix seconds) and `server` are informational.
//!
//! Failures: a poll that fails for a transient reason (server unreachable or too slow,
//! UNAVAILABLE, no log or no checkpoint yet) is logged to stderr and retried at the next
//! interval; after `max_failures` consecutive failed polls, or when the last allowed
//! iteration failed, the monitor gives up with exit code 1. Any other error (refused token,
//! checkpoint that does not verify, unusable state file) stops it at once with exit code 1.
//! A fork or rollback stops it with exit code 2 and leaves the pin unchanged.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use auditledger_ledger::checkpoint::VerifiedCheckpoint;
use auditledger_ledger::note::VerifierKey;
use serde_json::{Value, json};

use crate::grpc::ClientOptions;
use crate::live::{self, Extension, LiveError, LogTarget};

/// `format` value of the state file.
pub const STATE_FORMAT: &str = "auditledger-monitor-state/1";

/// Exit code for a fork or rollback.
pub const EXIT_ALERT: u8 = 2;
/// Exit code for every other failure.
pub const EXIT_ERROR: u8 = 1;

/// What to monitor and how.
#[derive(Clone, Debug)]
pub struct MonitorOptions {
    pub client: ClientOptions,
    pub tenant: String,
    pub environment: String,
    pub keys: Vec<VerifierKey>,
    pub state: PathBuf,
    /// Checkpoint to trust when the state file does not exist yet.
    pub pin: Option<PathBuf>,
    pub interval: Duration,
    /// Stop after this many polls; `None` = until SIGINT/SIGTERM.
    pub iterations: Option<u64>,
    /// Consecutive failed polls tolerated before giving up (at least 1).
    pub max_failures: u32,
}

/// Why the monitor stopped other than by finishing its iterations or a signal.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MonitorError {
    /// A fork or rollback ([`LiveError::is_alert`]).
    #[error("{0}")]
    Alert(LiveError),
    #[error("state file {path}: {reason}")]
    State { path: String, reason: String },
    #[error("--pin {path}: {reason}")]
    Pin { path: String, reason: String },
    #[error("{0}")]
    Live(LiveError),
    #[error("giving up after {failures} failed poll(s) in a row; last error: {last}")]
    GaveUp { failures: u32, last: LiveError },
    #[error("cannot wait for signals: {0}")]
    Signals(std::io::Error),
}

impl MonitorError {
    /// The process exit code: [`EXIT_ALERT`] for a fork or rollback, else [`EXIT_ERROR`].
    pub fn exit_code(&self) -> u8 {
        match self {
            MonitorError::Alert(_) => EXIT_ALERT,
            _ => EXIT_ERROR,
        }
    }
}

/// The pinned checkpoint.
struct Pinned {
    note: String,
    verified: VerifiedCheckpoint,
}

fn state_error(path: &Path, reason: impl Into<String>) -> MonitorError {
    MonitorError::State {
        path: path.display().to_string(),
        reason: reason.into(),
    }
}

/// Reads and checks a state file; `Ok(None)` if it does not exist.
fn load_state(path: &Path, keys: &[VerifierKey]) -> Result<Option<Pinned>, MonitorError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(state_error(path, format!("cannot read it: {e}"))),
    };
    let v: Value =
        serde_json::from_str(&text).map_err(|e| state_error(path, format!("not JSON: {e}")))?;
    let format = v.get("format").and_then(Value::as_str);
    if format != Some(STATE_FORMAT) {
        return Err(state_error(
            path,
            format!("format is {format:?}, expected {STATE_FORMAT:?}"),
        ));
    }
    let note = v
        .get("checkpoint")
        .and_then(Value::as_str)
        .ok_or_else(|| state_error(path, "no \"checkpoint\" text"))?
        .to_owned();
    let verified = crate::verify_checkpoint(note.as_bytes(), keys, None, None).map_err(|e| {
        state_error(
            path,
            format!("the pinned checkpoint does not verify with the given keys: {e}"),
        )
    })?;
    let cp = &verified.checkpoint;
    let agrees = v.get("origin").and_then(Value::as_str) == Some(cp.origin.as_str())
        && v.get("tree_size").and_then(Value::as_u64) == Some(cp.tree_size)
        && v.get("root").and_then(Value::as_str) == Some(hex::encode(cp.root_hash).as_str());
    if !agrees {
        return Err(state_error(
            path,
            "origin/tree_size/root do not match the pinned checkpoint (was the file edited?)",
        ));
    }
    Ok(Some(Pinned { note, verified }))
}

/// Replaces the state file atomically (temporary file + fsync + rename + directory fsync), so
/// a crash leaves either the old pin or the new one.
fn save_state(path: &Path, pinned: &Pinned, server: &str) -> Result<(), MonitorError> {
    let cp = &pinned.verified.checkpoint;
    let pinned_at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let doc = json!({
        "format": STATE_FORMAT,
        "origin": cp.origin,
        "tree_size": cp.tree_size,
        "root": hex::encode(cp.root_hash),
        "pinned_at": pinned_at,
        "server": server,
        "checkpoint": pinned.note,
    });
    let mut text = serde_json::to_string_pretty(&doc)
        .map_err(|e| state_error(path, format!("encoding: {e}")))?;
    text.push('\n');
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| state_error(path, "not a file path"))?
        .to_string_lossy();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)?;
        // Make the rename itself durable.
        std::fs::File::open(&dir)?.sync_all()
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        state_error(path, format!("cannot write it: {e}"))
    })
}

fn summary(cp: &VerifiedCheckpoint) -> String {
    format!(
        "{} tree size {} root {}",
        cp.checkpoint.origin,
        cp.checkpoint.tree_size,
        hex::encode(cp.checkpoint.root_hash)
    )
}

/// One poll: fetch, verify, compare with the pin, pin if it grew. Returns the line to print.
async fn poll(
    target: &mut LogTarget,
    options: &MonitorOptions,
    pinned: &mut Option<Pinned>,
) -> Result<String, LiveError> {
    let (note, latest) = target.latest_checkpoint(&options.keys).await?;
    let Some(current) = pinned.as_ref() else {
        // Trust on first use; the caller writes the state file whenever the pin changes.
        let line = format!("PINNED (first use): {}", summary(&latest));
        *pinned = Some(Pinned {
            note,
            verified: latest,
        });
        return Ok(line);
    };
    match target.check_extends(&current.verified, &latest).await? {
        Extension::Same => Ok(format!("OK: unchanged, {}", summary(&latest))),
        extension @ Extension::Grew { .. } => {
            let line = format!(
                "OK: {}; pinned",
                live::describe(&current.verified, &latest, extension)
            );
            *pinned = Some(Pinned {
                note,
                verified: latest,
            });
            Ok(line)
        }
    }
}

/// Waits for SIGINT or SIGTERM.
struct Signals {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> Result<Self, MonitorError> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Signals {
            interrupt: signal(SignalKind::interrupt()).map_err(MonitorError::Signals)?,
            terminate: signal(SignalKind::terminate()).map_err(MonitorError::Signals)?,
        })
    }

    async fn recv(&mut self) {
        tokio::select! {
            _ = self.interrupt.recv() => {}
            _ = self.terminate.recv() => {}
        }
    }
}

/// Runs the monitor until its iterations are done or a signal arrives (`Ok`), or an alert or
/// error stops it. Status lines go to stdout, warnings and the final error to stderr (by the
/// caller).
pub async fn run(options: &MonitorOptions) -> Result<(), MonitorError> {
    let mut target = LogTarget::new(&options.client, &options.tenant, &options.environment)
        .map_err(MonitorError::Live)?;
    let server = target.url();
    let mut pinned = load_state(&options.state, &options.keys)?;
    if pinned.is_none()
        && let Some(pin) = &options.pin
    {
        let pin_error = |reason: String| MonitorError::Pin {
            path: pin.display().to_string(),
            reason,
        };
        let note =
            std::fs::read_to_string(pin).map_err(|e| pin_error(format!("cannot read it: {e}")))?;
        let verified = crate::verify_checkpoint(note.as_bytes(), &options.keys, None, None)
            .map_err(|e| pin_error(format!("does not verify: {e}")))?;
        if !target.is_origin_of_target(&verified.checkpoint.origin) {
            return Err(pin_error(format!(
                "is a checkpoint of {}, not of tenant {:?} environment {:?}",
                verified.checkpoint.origin, options.tenant, options.environment
            )));
        }
        println!("PINNED (from {}): {}", pin.display(), summary(&verified));
        let p = Pinned { note, verified };
        save_state(&options.state, &p, &server)?;
        pinned = Some(p);
    }
    if let Some(p) = &pinned
        && !target.is_origin_of_target(&p.verified.checkpoint.origin)
    {
        return Err(state_error(
            &options.state,
            format!(
                "pins a checkpoint of {}, not of tenant {:?} environment {:?}",
                p.verified.checkpoint.origin, options.tenant, options.environment
            ),
        ));
    }
    let mut signals = Signals::new()?;
    let max_failures = options.max_failures.max(1);
    let mut failures = 0u32;
    let mut iteration = 0u64;
    loop {
        iteration += 1;
        let before = pinned.as_ref().map(|p| p.note.clone());
        match poll(&mut target, options, &mut pinned).await {
            Ok(line) => {
                failures = 0;
                if let Some(p) = &pinned
                    && before.as_deref() != Some(p.note.as_str())
                {
                    save_state(&options.state, p, &server)?;
                }
                println!("{line}");
            }
            Err(e) if e.is_alert() => return Err(MonitorError::Alert(e)),
            Err(e) if e.is_transient() => {
                failures += 1;
                let last_iteration = options.iterations == Some(iteration);
                if failures >= max_failures || last_iteration {
                    return Err(MonitorError::GaveUp { failures, last: e });
                }
                eprintln!(
                    "WARNING: poll {iteration} failed ({failures} of {max_failures} allowed in a row), retrying in {:?}: {e}",
                    options.interval
                );
            }
            Err(e) => return Err(MonitorError::Live(e)),
        }
        if options.iterations.is_some_and(|n| iteration >= n) {
            return Ok(());
        }
        tokio::select! {
            _ = tokio::time::sleep(options.interval) => {}
            _ = signals.recv() => {
                println!("stopping on signal; pinned state is in {}", options.state.display());
                return Ok(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use auditledger_ledger::checkpoint::Checkpoint;
    use auditledger_ledger::note::SignerKey;

    fn signed(size: u64, key: &SignerKey) -> String {
        Checkpoint {
            origin: "auditledger.local/acme/prod".into(),
            tree_size: size,
            root_hash: [size as u8; 32],
            time: Some(1000),
            prev: None,
            other_extensions: vec![],
        }
        .sign(std::slice::from_ref(key))
        .unwrap()
    }

    #[test]
    fn state_round_trips_and_rejects_tampering() {
        let key = SignerKey::from_seed("auditledger.local", &[3; 32]).unwrap();
        let keys = [key.verifier()];
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        assert!(load_state(&path, &keys).unwrap().is_none());

        let note = signed(7, &key);
        let verified = crate::verify_checkpoint(note.as_bytes(), &keys, None, None).unwrap();
        save_state(&path, &Pinned { note, verified }, "http://127.0.0.1:1").unwrap();
        let back = load_state(&path, &keys).unwrap().unwrap();
        assert_eq!(back.verified.checkpoint.tree_size, 7);
        // No temporary file is left behind.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);

        let text = std::fs::read_to_string(&path).unwrap();
        // The human-readable size disagrees with the signed checkpoint.
        std::fs::write(&path, text.replace("\"tree_size\": 7", "\"tree_size\": 8")).unwrap();
        let err = load_state(&path, &keys).err().unwrap();
        assert!(err.to_string().contains("do not match"), "{err}");
        // Another key signed it.
        let other = SignerKey::from_seed("auditledger.local", &[4; 32]).unwrap();
        std::fs::write(&path, &text).unwrap();
        let err = load_state(&path, &[other.verifier()]).err().unwrap();
        assert!(err.to_string().contains("does not verify"), "{err}");
        std::fs::write(&path, "{}").unwrap();
        let err = load_state(&path, &keys).err().unwrap();
        assert!(err.to_string().contains("format"), "{err}");
        assert_eq!(err.exit_code(), EXIT_ERROR);
    }
}
