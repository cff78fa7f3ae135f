//! C2SP tlog-checkpoint bodies (<https://c2sp.org/tlog-checkpoint>) and the ledger's extension
//! lines (DESIGN §4): `time <unix seconds>` and `prev <base64 BLAKE3 of the previous body>`,
//! which chains every checkpoint of a log to the one before it.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;

use crate::merkle::Hash;
use crate::note::{self, Note, NoteError, SignerKey, VerifierKey};

/// Why a checkpoint was refused. Messages name the line and value at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CheckpointError {
    #[error(transparent)]
    Note(#[from] NoteError),
    #[error("checkpoint body has {0} lines; need origin, tree size and root hash")]
    TooFewLines(usize),
    #[error("checkpoint origin line is empty")]
    EmptyOrigin,
    #[error("checkpoint tree size {0:?} is not a decimal number without leading zeros")]
    BadTreeSize(String),
    #[error("checkpoint root hash {0:?} is not base64 of 32 bytes")]
    BadRootHash(String),
    #[error("checkpoint extension line {line} is empty")]
    EmptyExtension { line: usize },
    #[error("checkpoint `{name}` line {value:?} is malformed: {reason}")]
    BadExtension {
        name: &'static str,
        value: String,
        reason: &'static str,
    },
    #[error("checkpoint has more than one `{0}` line")]
    DuplicateExtension(&'static str),
    #[error("checkpoint origin is {found:?}, expected {expected:?}")]
    WrongOrigin { found: String, expected: String },
}

/// The body of a checkpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checkpoint {
    pub origin: String,
    pub tree_size: u64,
    pub root_hash: Hash,
    /// `time` extension: unix seconds when it was signed.
    pub time: Option<u64>,
    /// `prev` extension: BLAKE3 of the previous checkpoint's body.
    pub prev: Option<Hash>,
    /// Any other extension lines, verbatim, in order.
    pub other_extensions: Vec<String>,
}

impl Checkpoint {
    /// The body text: origin, size, root, then `time`, `prev`, other extensions.
    pub fn body(&self) -> String {
        let mut out = format!(
            "{}\n{}\n{}\n",
            self.origin,
            self.tree_size,
            BASE64.encode(self.root_hash)
        );
        if let Some(time) = self.time {
            out.push_str(&format!("time {time}\n"));
        }
        if let Some(prev) = &self.prev {
            out.push_str(&format!("prev {}\n", BASE64.encode(prev)));
        }
        for ext in &self.other_extensions {
            out.push_str(ext);
            out.push('\n');
        }
        out
    }

    /// BLAKE3 of this checkpoint's body: what the next checkpoint's `prev` line carries.
    pub fn body_hash(&self) -> Hash {
        body_hash(&self.body())
    }

    /// Parses a body strictly (a note's text).
    pub fn parse_body(text: &str) -> Result<Checkpoint, CheckpointError> {
        let text = text
            .strip_suffix('\n')
            .ok_or(CheckpointError::Note(NoteError::MissingFinalNewline))?;
        let lines: Vec<&str> = text.split('\n').collect();
        if lines.len() < 3 {
            return Err(CheckpointError::TooFewLines(lines.len()));
        }
        let origin = lines[0];
        if origin.is_empty() {
            return Err(CheckpointError::EmptyOrigin);
        }
        let size_text = lines[1];
        let canonical = size_text == "0"
            || (!size_text.is_empty()
                && !size_text.starts_with('0')
                && size_text.bytes().all(|b| b.is_ascii_digit()));
        let tree_size: u64 = match (canonical, size_text.parse()) {
            (true, Ok(n)) => n,
            _ => return Err(CheckpointError::BadTreeSize(size_text.to_owned())),
        };
        let root_hash = decode_hash(lines[2])
            .ok_or_else(|| CheckpointError::BadRootHash(lines[2].to_owned()))?;
        let mut checkpoint = Checkpoint {
            origin: origin.to_owned(),
            tree_size,
            root_hash,
            time: None,
            prev: None,
            other_extensions: Vec::new(),
        };
        for (i, line) in lines[3..].iter().enumerate() {
            if line.is_empty() {
                return Err(CheckpointError::EmptyExtension { line: i + 4 });
            }
            if let Some(value) = line.strip_prefix("time ") {
                if checkpoint.time.is_some() {
                    return Err(CheckpointError::DuplicateExtension("time"));
                }
                // One text per checkpoint: `body()` writes `time`, `prev`, then the others,
                // and `body_hash` (the next checkpoint's `prev`) hashes that text.
                if checkpoint.prev.is_some() || !checkpoint.other_extensions.is_empty() {
                    return Err(CheckpointError::BadExtension {
                        name: "time",
                        value: value.to_owned(),
                        reason: "must come before `prev` and any other extension line",
                    });
                }
                let canonical = value == "0"
                    || (!value.starts_with('0') && value.bytes().all(|b| b.is_ascii_digit()));
                checkpoint.time =
                    Some(value.parse().ok().filter(|_| canonical).ok_or_else(|| {
                        CheckpointError::BadExtension {
                            name: "time",
                            value: value.to_owned(),
                            reason: "expected unix seconds",
                        }
                    })?);
            } else if let Some(value) = line.strip_prefix("prev ") {
                if checkpoint.prev.is_some() {
                    return Err(CheckpointError::DuplicateExtension("prev"));
                }
                if !checkpoint.other_extensions.is_empty() {
                    return Err(CheckpointError::BadExtension {
                        name: "prev",
                        value: value.to_owned(),
                        reason: "must come before any other extension line",
                    });
                }
                checkpoint.prev =
                    Some(
                        decode_hash(value).ok_or_else(|| CheckpointError::BadExtension {
                            name: "prev",
                            value: value.to_owned(),
                            reason: "expected base64 of a 32-byte BLAKE3 hash",
                        })?,
                    );
            } else {
                checkpoint.other_extensions.push((*line).to_owned());
            }
        }
        Ok(checkpoint)
    }

    /// Signs this checkpoint with every signer; returns the whole note.
    pub fn sign(&self, signers: &[SignerKey]) -> Result<String, CheckpointError> {
        Ok(note::sign(&self.body(), signers)?)
    }
}

/// BLAKE3 of a checkpoint body text (including its final newline).
pub fn body_hash(body: &str) -> Hash {
    *blake3::hash(body.as_bytes()).as_bytes()
}

fn decode_hash(text: &str) -> Option<Hash> {
    let raw = BASE64.decode(text).ok()?;
    let hash: Hash = raw.try_into().ok()?;
    // Reject non-canonical base64 (the same hash must have exactly one text form).
    (BASE64.encode(hash) == text).then_some(hash)
}

/// A checkpoint whose signature verified.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifiedCheckpoint {
    pub checkpoint: Checkpoint,
    pub note: Note,
    /// Trusted keys whose signatures verified.
    pub signed_by: Vec<VerifierKey>,
}

/// Parses a signed checkpoint note and verifies it with the trusted keys (any one suffices).
pub fn open(
    note_bytes: &[u8],
    keys: &[VerifierKey],
) -> Result<VerifiedCheckpoint, CheckpointError> {
    let note = Note::parse(note_bytes)?;
    let signed_by = note.verify(keys)?;
    let checkpoint = Checkpoint::parse_body(note.text())?;
    Ok(VerifiedCheckpoint {
        checkpoint,
        note,
        signed_by,
    })
}

/// Like [`open`], and also checks the origin line.
pub fn open_for_origin(
    note_bytes: &[u8],
    keys: &[VerifierKey],
    origin: &str,
) -> Result<VerifiedCheckpoint, CheckpointError> {
    let verified = open(note_bytes, keys)?;
    if verified.checkpoint.origin != origin {
        return Err(CheckpointError::WrongOrigin {
            found: verified.checkpoint.origin,
            expected: origin.to_owned(),
        });
    }
    Ok(verified)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Checkpoint {
        Checkpoint {
            origin: "auditledger.local/acme/prod".into(),
            tree_size: 12,
            root_hash: [3u8; 32],
            time: Some(1_763_700_000),
            prev: Some([4u8; 32]),
            other_extensions: vec!["note from the operator".into()],
        }
    }

    #[test]
    fn body_round_trips() {
        let c = sample();
        assert_eq!(Checkpoint::parse_body(&c.body()).unwrap(), c);
    }

    #[test]
    fn strict_body_parsing() {
        let root = BASE64.encode([3u8; 32]);
        let cases = [
            (format!("o\n012\n{root}\n"), "tree size"),
            (format!("o\n+12\n{root}\n"), "tree size"),
            (format!("o\n18446744073709551616\n{root}\n"), "tree size"),
            ("o\n12\nAAAA\n".to_string(), "root hash"),
            (format!("\n12\n{root}\n"), "origin"),
            (format!("o\n12\n{root}\ntime x\n"), "time"),
            (format!("o\n12\n{root}\ntime 1\ntime 2\n"), "more than one"),
            (format!("o\n12\n{root}\nprev AAAA\n"), "prev"),
            (format!("o\n12\n{root}"), "newline"),
            ("o\n12\n".to_string(), "lines"),
        ];
        for (body, needle) in cases {
            let err = Checkpoint::parse_body(&body).unwrap_err().to_string();
            assert!(err.contains(needle), "{body:?}: {err}");
        }
    }

    #[test]
    fn extensions_only_in_canonical_order() {
        // Found by fuzz/fuzz_targets/signed_note.rs: out-of-order `time`/`prev` lines parsed,
        // but `body()` reorders them, so `body_hash` was not the hash of the signed text.
        let root = BASE64.encode([3u8; 32]);
        let prev = BASE64.encode([4u8; 32]);
        for body in [
            format!("o\n12\n{root}\nprev {prev}\ntime 5\n"),
            format!("o\n12\n{root}\nopez/time 1\ntime 5\n"),
            format!("o\n12\n{root}\nx\nprev {prev}\n"),
        ] {
            let err = Checkpoint::parse_body(&body).unwrap_err().to_string();
            assert!(err.contains("must come before"), "{body:?}: {err}");
        }
        let canonical = format!("o\n12\n{root}\ntime 5\nprev {prev}\nx\n");
        let parsed = Checkpoint::parse_body(&canonical).unwrap();
        assert_eq!(parsed.body(), canonical);
        assert_eq!(parsed.body_hash(), body_hash(&canonical));
    }

    #[test]
    fn signed_checkpoint_opens_only_with_right_key_and_origin() {
        let signer = SignerKey::from_seed("auditledger.local", &[1u8; 32]).unwrap();
        let note = sample().sign(std::slice::from_ref(&signer)).unwrap();
        let opened = open(note.as_bytes(), &[signer.verifier()]).unwrap();
        assert_eq!(opened.checkpoint, sample());
        assert!(open_for_origin(note.as_bytes(), &[signer.verifier()], "other").is_err());
        let stranger = SignerKey::from_seed("auditledger.local", &[2u8; 32]).unwrap();
        assert!(open(note.as_bytes(), &[stranger.verifier()]).is_err());
    }
}
