//! Retention exports (DESIGN §7): the member names of the export tar and its signed manifest.
//!
//! An export is a POSIX tar whose members are, in this order:
//!
//! 1. `checkpoint` — the signed checkpoint of tree size N ≥ `end` the export is proven against;
//! 2. `range-proof` — the DESIGN §7 range proof for `[start, end)` at N (32-byte hashes);
//! 3. `entries-000000.parquet`, `entries-000001.parquet`, … — the leaves of `[start, end)` in
//!    order, split into contiguous files (the ledger writes [`ENTRIES_PER_FILE`] per file;
//!    verifiers accept any split, since the files' leaf ranges must join into `[start, end)`);
//! 4. `manifest` — a signed note (same keys as checkpoints) naming what was exported, by whom
//!    and why, and the BLAKE3 of every other member. Last, so the writer can stream the
//!    members and hash them as they go.
//!
//! # Manifest text, version 1
//!
//! ```text
//! auditledger.export-manifest/v1
//! origin auditledger.local/acme/prod
//! start 1000
//! end 2000
//! tree_size 4711
//! from_time 0
//! to_time 0
//! requester token:3f2a…
//! justification case 2026-114: exfiltration review\nsecond line
//! exported_at 1795450000
//! expired_leaves 0
//! checkpoint <BLAKE3 hex>
//! range-proof <BLAKE3 hex>
//! entries-000000.parquet <BLAKE3 hex>
//! ```
//!
//! Every line is `key value` with one space; numbers are canonical decimal; `from_time` and
//! `to_time` are the requested `logged_at` window in unix nanoseconds (both 0 for an export by
//! leaf range). `justification` and `requester` are escaped so they stay on one line (`\\`,
//! `\n`, `\r`, `\t`, other control characters as `\u{XX}`). Member lines follow in tar order.

use crate::merkle::{HASH_LEN, Hash};
use crate::note::{self, Note, NoteError, SignerKey, VerifierKey};

/// First line of every version 1 export manifest.
pub const MANIFEST_HEADER: &str = "auditledger.export-manifest/v1";
/// Tar member holding the signed checkpoint.
pub const CHECKPOINT_MEMBER: &str = "checkpoint";
/// Tar member holding the range proof.
pub const RANGE_PROOF_MEMBER: &str = "range-proof";
/// Tar member holding the signed manifest.
pub const MANIFEST_MEMBER: &str = "manifest";
/// Leaves per entries file: bounds the memory of the writer and of each verifier thread
/// (~16 MiB of 500-byte leaves) while keeping files large enough to compress well.
pub const ENTRIES_PER_FILE: u64 = 32_768;

/// Name of the `number`-th entries file.
pub fn entries_member(number: u64) -> String {
    format!("entries-{number:06}.parquet")
}

/// The number of an entries file name, if `name` is one (`entries-NNNNNN.parquet`, at least
/// six digits, canonical).
pub fn parse_entries_member(name: &str) -> Option<u64> {
    let digits = name.strip_prefix("entries-")?.strip_suffix(".parquet")?;
    if digits.len() < 6 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let number: u64 = digits.parse().ok()?;
    (entries_member(number) == name).then_some(number)
}

/// Number of entries files an export of `leaves` leaves has.
pub fn entries_files(leaves: u64) -> u64 {
    leaves.div_ceil(ENTRIES_PER_FILE)
}

/// Why a manifest was refused. Messages name the line or value at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ExportManifestError {
    #[error("manifest: {0}")]
    Note(#[from] NoteError),
    #[error("manifest line {line}: expected {expected:?}, found {found:?}")]
    UnexpectedLine {
        line: usize,
        expected: String,
        found: String,
    },
    #[error("manifest line {line} ({key}): bad value {value:?}: {reason}")]
    BadValue {
        line: usize,
        key: String,
        value: String,
        reason: String,
    },
    #[error("manifest range [{start}, {end}) is not within tree size {tree_size}")]
    BadRange {
        start: u64,
        end: u64,
        tree_size: u64,
    },
}

/// The content of an export manifest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExportManifest {
    pub origin: String,
    /// Leaf range `[start, end)`.
    pub start: u64,
    pub end: u64,
    /// Size of the checkpoint the export is proven against.
    pub tree_size: u64,
    /// Requested `logged_at` window, unix nanoseconds; both 0 for an export by leaf range.
    pub from_time: u64,
    pub to_time: u64,
    /// Principal that requested the export.
    pub requester: String,
    pub justification: String,
    /// Unix seconds.
    pub exported_at: u64,
    /// Rows whose content retention had already deleted (hash only).
    pub expired_leaves: u64,
    /// `(member name, BLAKE3 of its bytes)` for every other member, in tar order.
    pub members: Vec<(String, Hash)>,
}

const KEYS: [&str; 10] = [
    "origin",
    "start",
    "end",
    "tree_size",
    "from_time",
    "to_time",
    "requester",
    "justification",
    "exported_at",
    "expired_leaves",
];

/// Escapes `s` onto one line (see the module docs).
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

fn unescape(s: &str) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c.is_control() {
            return Err(format!("unescaped control character {:#x}", c as u32));
        }
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('\\') => out.push('\\'),
            Some('n') => out.push('\n'),
            Some('r') => out.push('\r'),
            Some('t') => out.push('\t'),
            Some('u') => {
                let rest: String = chars.by_ref().take_while(|&c| c != '}').collect();
                let hex = rest
                    .strip_prefix('{')
                    .ok_or_else(|| "\\u must be followed by {hex}".to_owned())?;
                let c = u32::from_str_radix(hex, 16)
                    .ok()
                    .and_then(char::from_u32)
                    .filter(|c| c.is_control())
                    .ok_or_else(|| format!("bad escape \\u{{{hex}}}"))?;
                out.push(c);
            }
            other => return Err(format!("bad escape \\{}", other.unwrap_or(' '))),
        }
    }
    Ok(out)
}

impl ExportManifest {
    /// The note text (ends with a newline).
    pub fn body(&self) -> String {
        let values = [
            self.origin.clone(),
            self.start.to_string(),
            self.end.to_string(),
            self.tree_size.to_string(),
            self.from_time.to_string(),
            self.to_time.to_string(),
            escape(&self.requester),
            escape(&self.justification),
            self.exported_at.to_string(),
            self.expired_leaves.to_string(),
        ];
        let mut out = format!("{MANIFEST_HEADER}\n");
        for (key, value) in KEYS.iter().zip(values) {
            out.push_str(&format!("{key} {value}\n"));
        }
        for (name, hash) in &self.members {
            out.push_str(&format!("{name} {}\n", hex::encode(hash)));
        }
        out
    }

    /// Signs the manifest with every signer.
    pub fn sign(&self, signers: &[SignerKey]) -> Result<String, ExportManifestError> {
        Ok(note::sign(&self.body(), signers)?)
    }

    /// Parses a manifest text strictly: the header, every key once in order, canonical
    /// values, then one `<member> <hex>` line per member.
    pub fn parse_body(text: &str) -> Result<ExportManifest, ExportManifestError> {
        let text = text
            .strip_suffix('\n')
            .ok_or(ExportManifestError::Note(NoteError::MissingFinalNewline))?;
        let mut lines = text.split('\n').enumerate().map(|(i, l)| (i + 1, l));
        match lines.next() {
            Some((_, MANIFEST_HEADER)) => {}
            other => {
                return Err(ExportManifestError::UnexpectedLine {
                    line: 1,
                    expected: MANIFEST_HEADER.into(),
                    found: other.map(|(_, l)| l.to_owned()).unwrap_or_default(),
                });
            }
        }
        let mut values: Vec<(usize, &str)> = Vec::with_capacity(KEYS.len());
        for key in KEYS {
            let (line, text) = lines
                .next()
                .ok_or_else(|| ExportManifestError::UnexpectedLine {
                    line: values.len() + 2,
                    expected: format!("{key} <value>"),
                    found: String::new(),
                })?;
            let value = text
                .strip_prefix(key)
                .and_then(|rest| rest.strip_prefix(' '))
                .ok_or_else(|| ExportManifestError::UnexpectedLine {
                    line,
                    expected: format!("{key} <value>"),
                    found: text.to_owned(),
                })?;
            values.push((line, value));
        }
        let bad = |i: usize, reason: String| ExportManifestError::BadValue {
            line: values[i].0,
            key: KEYS[i].into(),
            value: values[i].1.into(),
            reason,
        };
        let number = |i: usize| -> Result<u64, ExportManifestError> {
            let v = values[i].1;
            match v.parse::<u64>() {
                Ok(n) if n.to_string() == v => Ok(n),
                _ => Err(bad(i, "not a canonical decimal number".into())),
            }
        };
        let text_value = |i: usize| {
            let value = unescape(values[i].1).map_err(|reason| bad(i, reason))?;
            // One text per manifest: `\t`, `\u{9}` and `\u{09}` unescape alike; only the form
            // `escape` writes is accepted.
            let canonical = escape(&value);
            if canonical != values[i].1 {
                return Err(bad(
                    i,
                    format!("not canonically escaped (write {canonical:?})"),
                ));
            }
            Ok(value)
        };
        let origin = values[0].1.to_owned();
        if origin.is_empty() || origin.contains(char::is_whitespace) {
            return Err(bad(0, "empty or contains whitespace".into()));
        }
        let manifest_without_members = ExportManifest {
            origin,
            start: number(1)?,
            end: number(2)?,
            tree_size: number(3)?,
            from_time: number(4)?,
            to_time: number(5)?,
            requester: text_value(6)?,
            justification: text_value(7)?,
            exported_at: number(8)?,
            expired_leaves: number(9)?,
            members: Vec::new(),
        };
        let m = manifest_without_members;
        if m.start > m.end || m.end > m.tree_size {
            return Err(ExportManifestError::BadRange {
                start: m.start,
                end: m.end,
                tree_size: m.tree_size,
            });
        }
        let mut members = Vec::new();
        for (line, text) in lines {
            let malformed = |reason: &str| ExportManifestError::BadValue {
                line,
                key: "member".into(),
                value: text.into(),
                reason: reason.into(),
            };
            let (name, hash_hex) = text
                .split_once(' ')
                .ok_or_else(|| malformed("expected `<member name> <BLAKE3 hex>`"))?;
            let hash = (hash_hex.len() == 2 * HASH_LEN
                && hash_hex
                    .bytes()
                    .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
            .then(|| hex::decode(hash_hex).ok())
            .flatten()
            .and_then(|h| <Hash>::try_from(h.as_slice()).ok())
            .ok_or_else(|| malformed("not 64 lowercase hex digits"))?;
            if name.is_empty() || name == MANIFEST_MEMBER {
                return Err(malformed("not a member the manifest can list"));
            }
            if members.iter().any(|(n, _)| n == name) {
                return Err(malformed("member listed twice"));
            }
            members.push((name.to_owned(), hash));
        }
        Ok(ExportManifest { members, ..m })
    }

    /// The hash the manifest lists for `member`.
    pub fn member_hash(&self, member: &str) -> Option<&Hash> {
        self.members
            .iter()
            .find_map(|(name, hash)| (name == member).then_some(hash))
    }
}

/// A manifest whose signature verified.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifiedExportManifest {
    pub manifest: ExportManifest,
    pub note: Note,
    pub signed_by: Vec<VerifierKey>,
}

/// Parses a signed manifest note and verifies it with the trusted keys (any one suffices).
pub fn open_manifest(
    note_bytes: &[u8],
    keys: &[VerifierKey],
) -> Result<VerifiedExportManifest, ExportManifestError> {
    let note = Note::parse(note_bytes)?;
    let signed_by = note.verify(keys)?;
    let manifest = ExportManifest::parse_body(note.text())?;
    Ok(VerifiedExportManifest {
        manifest,
        note,
        signed_by,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> ExportManifest {
        ExportManifest {
            origin: "auditledger.local/acme/prod".into(),
            start: 10,
            end: 70_000,
            tree_size: 80_000,
            from_time: 0,
            to_time: 0,
            requester: "token:ab12 (compliance)".into(),
            justification: "SOC 2 audit\nline two\twith a tab \\ and a bell \u{7}".into(),
            exported_at: 1_795_450_000,
            expired_leaves: 3,
            members: vec![
                (CHECKPOINT_MEMBER.into(), [1; 32]),
                (RANGE_PROOF_MEMBER.into(), [2; 32]),
                (entries_member(0), [3; 32]),
                (entries_member(1), [4; 32]),
            ],
        }
    }

    #[test]
    fn body_round_trips_and_signs() {
        let m = sample();
        let body = m.body();
        assert_eq!(body.lines().count(), 1 + KEYS.len() + 4);
        assert!(body.contains(
            "justification SOC 2 audit\\nline two\\twith a tab \\\\ and a bell \\u{7}\n"
        ));
        assert_eq!(ExportManifest::parse_body(&body).unwrap(), m);
        let signer = SignerKey::generate("auditledger.local").unwrap();
        let note = m.sign(std::slice::from_ref(&signer)).unwrap();
        let opened = open_manifest(note.as_bytes(), &[signer.verifier()]).unwrap();
        assert_eq!(opened.manifest, m);
        let other = SignerKey::generate("auditledger.local").unwrap();
        assert!(open_manifest(note.as_bytes(), &[other.verifier()]).is_err());
    }

    #[test]
    fn only_canonical_escapes() {
        // Found by fuzz/fuzz_targets/export_manifest.rs: `\u{9}` parsed as a tab, so one
        // manifest had several texts and `body()` did not give back the signed one.
        let body = sample().body();
        for (from, to) in [
            ("with a tab", "with a\\u{9}tab"),
            ("a bell \\u{7}", "a bell \\u{07}"),
            ("a bell \\u{7}", "a bell \\u{7"),
            ("line two", "line\\u{a}two"),
        ] {
            let changed = body.replacen(from, to, 1);
            assert_ne!(changed, body, "{to}");
            let err = ExportManifest::parse_body(&changed)
                .unwrap_err()
                .to_string();
            assert!(err.contains("(justification)"), "{to}: {err}");
        }
        assert_eq!(ExportManifest::parse_body(&body).unwrap(), sample());
    }

    #[test]
    fn strict_parsing_names_the_line() {
        let body = sample().body();
        let cases = [
            (body.replacen("start 10", "start 010", 1), "line 3 (start)"),
            (
                body.replacen("tree_size 80000", "tree_size 60000", 1),
                "range",
            ),
            (body.replacen("origin ", "origin  ", 1), "line 2"),
            (body.replacen("exported_at", "exported", 1), "line 10"),
            (
                body.replacen("\\u{7}", "\\u{41}", 1),
                "line 9 (justification)",
            ),
            (
                body.replacen("range-proof 0202", "range-proof 02G2", 1),
                "hex",
            ),
            (
                body.replacen(&entries_member(1), CHECKPOINT_MEMBER, 1),
                "twice",
            ),
            (
                body.replacen("auditledger.export-manifest/v1", "v2", 1),
                "line 1",
            ),
            (body.trim_end().to_owned(), "newline"),
        ];
        for (text, needle) in cases {
            let err = ExportManifest::parse_body(&text).unwrap_err().to_string();
            assert!(err.contains(needle), "{needle:?} not in {err:?}");
        }
    }

    #[test]
    fn entries_member_names() {
        assert_eq!(entries_member(0), "entries-000000.parquet");
        assert_eq!(entries_member(1_234_567), "entries-1234567.parquet");
        assert_eq!(parse_entries_member("entries-000042.parquet"), Some(42));
        assert_eq!(
            parse_entries_member("entries-1234567.parquet"),
            Some(1_234_567)
        );
        for bad in [
            "entries-42.parquet",
            "entries-0000042.parquet",
            "entries-00004a.parquet",
            "entries-000042.parquet.x",
            "manifest",
        ] {
            assert_eq!(parse_entries_member(bad), None, "{bad}");
        }
        assert_eq!(entries_files(0), 0);
        assert_eq!(entries_files(ENTRIES_PER_FILE), 1);
        assert_eq!(entries_files(ENTRIES_PER_FILE + 1), 2);
    }
}
