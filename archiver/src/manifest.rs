//! Signed segment manifests: a C2SP signed note, signed by the ledger's checkpoint keys,
//! that pins one segment object — which leaves it holds, their root, and the exact bytes.
//!
//! With the segment root from a manifest, an archived leaf's proof needs nothing but the
//! segment file: the root is a node of the log's tree, and the BLAKE3 of the object detects a
//! swapped or damaged file before it is even parsed.
//!
//! # Text, version 1
//!
//! Ten lines, in this order, each `key value` with a single space (decimal numbers canonical,
//! hashes 64 lowercase hex digits), then the note's blank line and signature lines:
//!
//! ```text
//! auditledger.segment-manifest/v1
//! origin auditledger.local/acme/prod
//! start 65536
//! end 131072
//! root <segment root, hex>
//! object acme/prod/segments/65536-131072.parquet
//! blake3 <BLAKE3 of the object's bytes, hex>
//! size <object size in bytes>
//! expired_leaves <rows without leaf bytes; 0 = all content present>
//! created <unix seconds>
//! ```
//!
//! The first line makes a manifest impossible to mistake for a checkpoint (whose second line
//! is a tree size), though both are signed by the same keys.

use auditledger_ledger::merkle::Hash;
use auditledger_ledger::note::{self, Note, NoteError, SignerKey, VerifierKey};

use crate::segment::{SegmentId, SegmentSummary};

/// First line of every version 1 manifest.
pub const MANIFEST_HEADER: &str = "auditledger.segment-manifest/v1";

/// Keys of the lines after the header, in order.
const KEYS: [&str; 9] = [
    "origin",
    "start",
    "end",
    "root",
    "object",
    "blake3",
    "size",
    "expired_leaves",
    "created",
];

/// Why a manifest was refused. Messages name the line or value at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ManifestError {
    #[error("segment manifest: {0}")]
    Note(#[from] NoteError),
    #[error("segment manifest: first line is {0:?}, expected {MANIFEST_HEADER:?}")]
    BadHeader(String),
    #[error("segment manifest: line {line}: expected `{key} <value>`, found {found:?}")]
    BadLine {
        line: usize,
        key: &'static str,
        found: String,
    },
    #[error("segment manifest: has {0} lines, expected {n}", n = KEYS.len() + 1)]
    LineCount(usize),
    #[error("segment manifest: `{key}` value {value:?}: {reason}")]
    BadValue {
        key: &'static str,
        value: String,
        reason: String,
    },
    #[error("segment manifest names {found}, expected {expected}")]
    WrongSegment { found: String, expected: String },
    #[error("segment object {path}: {found} bytes, the manifest says {expected}")]
    ObjectSize {
        path: String,
        found: u64,
        expected: u64,
    },
    #[error("segment object {path}: BLAKE3 {found}, the manifest says {expected}")]
    ObjectHash {
        path: String,
        found: String,
        expected: String,
    },
}

/// The body of a segment manifest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SegmentManifest {
    pub origin: String,
    /// First leaf index.
    pub start: u64,
    /// One past the last leaf index.
    pub end: u64,
    /// Root of the segment's subtree (a node of the log's tree).
    pub segment_root: Hash,
    /// Object name within its store (see [`crate::store`] for the naming scheme).
    pub object_path: String,
    /// BLAKE3 of the object's bytes.
    pub object_blake3: Hash,
    pub object_size: u64,
    /// Rows without leaf bytes (content expired); 0 when every leaf is present.
    pub expired_leaves: u64,
    /// When the manifest was made, unix seconds.
    pub created_at: u64,
}

impl SegmentManifest {
    /// The manifest of a freshly written segment object.
    pub fn for_object(
        summary: &SegmentSummary,
        object_path: impl Into<String>,
        object: &[u8],
        created_at: u64,
    ) -> Self {
        SegmentManifest {
            origin: summary.id.origin().to_owned(),
            start: summary.id.start(),
            end: summary.id.end(),
            segment_root: summary.root,
            object_path: object_path.into(),
            object_blake3: *blake3::hash(object).as_bytes(),
            object_size: object.len() as u64,
            expired_leaves: summary.expired_leaves,
            created_at,
        }
    }

    /// Whether any leaf's content has expired.
    pub fn content_expired(&self) -> bool {
        self.expired_leaves > 0
    }

    /// The segment this manifest describes.
    pub fn segment_id(&self) -> Result<SegmentId, ManifestError> {
        SegmentId::from_range(self.origin.as_str(), self.start, self.end).map_err(|e| {
            ManifestError::BadValue {
                key: "end",
                value: self.end.to_string(),
                reason: e.to_string(),
            }
        })
    }

    /// The note text (ends with a newline).
    pub fn body(&self) -> String {
        let values = [
            self.origin.clone(),
            self.start.to_string(),
            self.end.to_string(),
            hex::encode(self.segment_root),
            self.object_path.clone(),
            hex::encode(self.object_blake3),
            self.object_size.to_string(),
            self.expired_leaves.to_string(),
            self.created_at.to_string(),
        ];
        let mut out = format!("{MANIFEST_HEADER}\n");
        for (key, value) in KEYS.iter().zip(values) {
            out.push_str(key);
            out.push(' ');
            out.push_str(&value);
            out.push('\n');
        }
        out
    }

    /// Parses a body strictly: exact header, every line present once in order, canonical
    /// values, and a power-of-two aligned leaf range.
    pub fn parse_body(text: &str) -> Result<SegmentManifest, ManifestError> {
        let text = text
            .strip_suffix('\n')
            .ok_or(ManifestError::Note(NoteError::MissingFinalNewline))?;
        let lines: Vec<&str> = text.split('\n').collect();
        if lines[0] != MANIFEST_HEADER {
            return Err(ManifestError::BadHeader(lines[0].to_owned()));
        }
        if lines.len() != KEYS.len() + 1 {
            return Err(ManifestError::LineCount(lines.len()));
        }
        let mut values = [""; KEYS.len()];
        for (i, (key, line)) in KEYS.iter().zip(&lines[1..]).enumerate() {
            let value = line
                .strip_prefix(key)
                .and_then(|rest| rest.strip_prefix(' '))
                .filter(|v| !v.is_empty() && !v.contains(char::is_whitespace))
                .ok_or_else(|| ManifestError::BadLine {
                    line: i + 2,
                    key,
                    found: (*line).to_owned(),
                })?;
            values[i] = value;
        }
        let [
            origin,
            start,
            end,
            root,
            object,
            blake3,
            size,
            expired_leaves,
            created,
        ] = values;
        let manifest = SegmentManifest {
            origin: origin.to_owned(),
            start: decimal("start", start)?,
            end: decimal("end", end)?,
            segment_root: hash("root", root)?,
            object_path: object.to_owned(),
            object_blake3: hash("blake3", blake3)?,
            object_size: decimal("size", size)?,
            expired_leaves: decimal("expired_leaves", expired_leaves)?,
            created_at: decimal("created", created)?,
        };
        let id = manifest.segment_id()?;
        if manifest.expired_leaves > id.count() {
            return Err(ManifestError::BadValue {
                key: "expired_leaves",
                value: expired_leaves.to_owned(),
                reason: format!("more than the segment's {} leaves", id.count()),
            });
        }
        Ok(manifest)
    }

    /// Signs the manifest with every signer (the log's active checkpoint keys); returns the
    /// whole note.
    pub fn sign(&self, signers: &[SignerKey]) -> Result<String, ManifestError> {
        Ok(note::sign(&self.body(), signers)?)
    }

    /// Checks that `object` is exactly the object this manifest pins (size, then BLAKE3).
    pub fn check_object(&self, object: &[u8]) -> Result<(), ManifestError> {
        let size = object.len() as u64;
        if size != self.object_size {
            return Err(ManifestError::ObjectSize {
                path: self.object_path.clone(),
                found: size,
                expected: self.object_size,
            });
        }
        let found = blake3::hash(object);
        if found.as_bytes() != &self.object_blake3 {
            return Err(ManifestError::ObjectHash {
                path: self.object_path.clone(),
                found: found.to_hex().to_string(),
                expected: hex::encode(self.object_blake3),
            });
        }
        Ok(())
    }
}

fn decimal(key: &'static str, value: &str) -> Result<u64, ManifestError> {
    crate::segment::parse_decimal(value).ok_or_else(|| ManifestError::BadValue {
        key,
        value: value.to_owned(),
        reason: "expected a decimal number without leading zeros".into(),
    })
}

fn hash(key: &'static str, value: &str) -> Result<Hash, ManifestError> {
    crate::segment::parse_hash_hex(value).ok_or_else(|| ManifestError::BadValue {
        key,
        value: value.to_owned(),
        reason: "expected 64 lowercase hex digits".into(),
    })
}

/// A manifest whose signature verified.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifiedManifest {
    pub manifest: SegmentManifest,
    pub note: Note,
    /// Trusted keys whose signatures verified.
    pub signed_by: Vec<VerifierKey>,
}

/// Parses a signed manifest note and verifies it with the trusted keys (any one suffices; a
/// known key whose signature fails rejects it).
pub fn open(note_bytes: &[u8], keys: &[VerifierKey]) -> Result<VerifiedManifest, ManifestError> {
    let note = Note::parse(note_bytes)?;
    let signed_by = note.verify(keys)?;
    let manifest = SegmentManifest::parse_body(note.text())?;
    Ok(VerifiedManifest {
        manifest,
        note,
        signed_by,
    })
}

/// Like [`open`], and checks that the manifest describes `expected`.
pub fn open_for(
    note_bytes: &[u8],
    keys: &[VerifierKey],
    expected: &SegmentId,
) -> Result<VerifiedManifest, ManifestError> {
    let verified = open(note_bytes, keys)?;
    let found = verified.manifest.segment_id()?;
    if found != *expected {
        return Err(ManifestError::WrongSegment {
            found: found.to_string(),
            expected: expected.to_string(),
        });
    }
    Ok(verified)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signer(seed: u8) -> SignerKey {
        SignerKey::from_seed("auditledger.local", &[seed; 32]).unwrap()
    }

    fn sample() -> SegmentManifest {
        SegmentManifest {
            origin: "auditledger.local/acme/prod".into(),
            start: 65536,
            end: 131072,
            segment_root: [7; 32],
            object_path: "acme/prod/segments/65536-131072.parquet".into(),
            object_blake3: *blake3::hash(b"object").as_bytes(),
            object_size: 6,
            expired_leaves: 0,
            created_at: 1_763_700_000,
        }
    }

    #[test]
    fn round_trip() {
        let manifest = sample();
        let note = manifest.sign(&[signer(1)]).unwrap();
        let verified = open(note.as_bytes(), &[signer(1).verifier()]).unwrap();
        assert_eq!(verified.manifest, manifest);
        assert_eq!(verified.signed_by, vec![signer(1).verifier()]);
        let id = SegmentId::new("auditledger.local/acme/prod", 65536, 16).unwrap();
        assert!(open_for(note.as_bytes(), &[signer(1).verifier()], &id).is_ok());
        manifest.check_object(b"object").unwrap();
        assert!(!manifest.content_expired());
    }

    #[test]
    fn body_is_pinned() {
        let body = sample().body();
        let lines: Vec<&str> = body.lines().collect();
        assert_eq!(lines[0], MANIFEST_HEADER);
        assert_eq!(lines[1], "origin auditledger.local/acme/prod");
        assert_eq!(lines[2], "start 65536");
        assert_eq!(lines[3], "end 131072");
        assert_eq!(lines[4], format!("root {}", "07".repeat(32)));
        assert_eq!(lines[5], "object acme/prod/segments/65536-131072.parquet");
        assert_eq!(lines[7], "size 6");
        assert_eq!(lines[8], "expired_leaves 0");
        assert_eq!(lines[9], "created 1763700000");
    }

    #[test]
    fn strict_parse_names_the_problem() {
        let body = sample().body();
        let cases: Vec<(String, &str)> = vec![
            (
                body.replacen("auditledger.segment-manifest/v1", "v2", 1),
                "first line",
            ),
            (body.replacen("start 65536", "start 065536", 1), "`start`"),
            (
                body.replacen("start 65536", "start 65537", 1),
                "power-of-two",
            ),
            (
                body.replacen("start 65536\nend 131072", "start 32768\nend 98304", 1),
                "not a multiple",
            ),
            (body.replacen("end 131072", "end 131071", 1), "power-of-two"),
            (body.replacen("root 07", "root 7", 1), "`root`"),
            (body.replacen("root 07", "root 0A", 1), "`root`"),
            (body.replacen("size 6", "size  6", 1), "line 8"),
            (body.replacen("origin ", "origin\t", 1), "line 2"),
            (
                body.replacen("expired_leaves 0", "expired_leaves 65537", 1),
                "more than",
            ),
            (body.replacen("created 1763700000\n", "", 1), "lines"),
            (format!("{body}extra 1\n"), "lines"),
            (body.replacen("blake3 ", "blake2 ", 1), "line 7"),
            (body.trim_end().to_owned(), "newline"),
        ];
        for (text, needle) in cases {
            let err = match SegmentManifest::parse_body(&text) {
                Err(e) => e,
                Ok(m) => panic!("accepted {m:?} from {text:?}"),
            };
            assert!(err.to_string().contains(needle), "{needle}: {err}");
        }
    }

    #[test]
    fn tampering_is_detected() {
        let note = sample().sign(&[signer(1)]).unwrap();
        let keys = [signer(1).verifier()];
        // Any change to the signed text breaks the signature.
        let tampered = note.replacen("size 6", "size 7", 1);
        assert!(matches!(
            open(tampered.as_bytes(), &keys),
            Err(ManifestError::Note(NoteError::BadSignature { .. }))
        ));
        // A different key is not trusted.
        assert!(matches!(
            open(note.as_bytes(), &[signer(2).verifier()]),
            Err(ManifestError::Note(NoteError::NoTrustedSignature { .. }))
        ));
        // Another segment's manifest is refused where this one is expected.
        let other = SegmentId::new("auditledger.local/acme/prod", 0, 16).unwrap();
        let err = open_for(note.as_bytes(), &keys, &other).unwrap_err();
        assert!(err.to_string().contains("[0,65536)"), "{err}");
        // A different object of the same size, or a different size.
        let m = sample();
        let err = m.check_object(b"object!").unwrap_err();
        assert!(
            matches!(err, ManifestError::ObjectSize { found: 7, .. }),
            "{err}"
        );
        let err = m.check_object(b"objecT").unwrap_err();
        assert!(err.to_string().contains("BLAKE3"), "{err}");
    }

    #[test]
    fn checkpoint_parser_refuses_a_manifest() {
        let body = sample().body();
        assert!(auditledger_ledger::checkpoint::Checkpoint::parse_body(&body).is_err());
    }
}
