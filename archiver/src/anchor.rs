//! Segment anchors: the object that ties an archived segment to the log's signed checkpoints,
//! so a warm or cold tier can be verified on its own — no RocksDB, no server.
//!
//! A segment's root is a node of the log's Merkle tree (DESIGN §6). The anchor carries a
//! signed checkpoint of the log at some tree size N ≥ the segment's end, the audit path of
//! the segment's subtree into that checkpoint's root ([`merkle::subtree_inclusion_proof`]),
//! and an RFC 9162 consistency proof from the checkpoint of the *previous* segment's anchor
//! to N. Consecutive anchors therefore form a chain: every segment is proven part of one
//! append-only log, and a segment from another log (or a forked one) breaks the chain.
//!
//! The anchor needs no signature of its own: the checkpoint is signed by the log's keys, the
//! proofs are checked against it, and the segment root is pinned by the signed manifest.
//!
//! # Text, version 1
//!
//! Stored beside the segment as `<tenant>/<environment>/segments/<start>-<end>.anchor`
//! (one per segment, whatever the object version: expiry rewrites keep it). Lines, in this
//! order, each `key value` with a single space (decimal numbers canonical, hashes 64
//! lowercase hex digits):
//!
//! ```text
//! auditledger.segment-anchor/v1
//! origin auditledger.local/acme/prod
//! start 65536
//! end 131072
//! root <segment root, hex>
//! tree_size <N: the checkpoint's tree size, ≥ end>
//! previous_size <tree size of the previous segment's anchor; 0 = none>
//! inclusion <k>
//! <hex>                       k lines: the audit path above the segment's node, bottom up
//! consistency <c>
//! <hex>                       c lines: RFC 9162 consistency proof previous_size → N
//! checkpoint
//! <the signed checkpoint note, verbatim, to the end of the file>
//! ```
//!
//! `previous_size` is 0 for the first segment of a log (and for a segment archived while the
//! one before it was not); then, and when it equals `tree_size`, `consistency` is 0.

use auditledger_ledger::checkpoint::{self, Checkpoint, CheckpointError};
use auditledger_ledger::merkle::{self, Hash, MerkleError};
use auditledger_ledger::note::VerifierKey;

use crate::segment::{SegmentId, parse_decimal, parse_hash_hex};

/// First line of every version 1 anchor.
pub const ANCHOR_HEADER: &str = "auditledger.segment-anchor/v1";

/// Largest anchor accepted: a checkpoint note (≤ 1 MB by the note limit) is far larger than
/// any real one; proofs are at most 64 + 128 lines.
pub const MAX_ANCHOR_BYTES: usize = 1 << 20;

/// Most hashes a proof line count may announce (a proof in a 2^64 tree has fewer).
const MAX_PROOF_HASHES: u64 = 128;

/// Why an anchor was refused. Messages name the line or the check at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AnchorError {
    #[error("segment anchor is {0} bytes, more than the {MAX_ANCHOR_BYTES}-byte limit")]
    TooLarge(usize),
    #[error("segment anchor is not UTF-8")]
    NotUtf8,
    #[error("segment anchor: line 1 is {0:?}, expected {ANCHOR_HEADER:?}")]
    BadHeader(String),
    #[error("segment anchor: line {line}: expected {expected}, found {found:?}")]
    BadLine {
        line: usize,
        expected: String,
        found: String,
    },
    #[error("segment anchor: ends at line {line}, expected {expected}")]
    Truncated { line: usize, expected: String },
    #[error("segment anchor: line {line}: `{key}` value {value:?}: {reason}")]
    BadValue {
        line: usize,
        key: &'static str,
        value: String,
        reason: String,
    },
    #[error("segment anchor: checkpoint (from line {line}): {source}")]
    Checkpoint {
        line: usize,
        #[source]
        source: CheckpointError,
    },
    #[error("segment anchor: {0}")]
    Mismatch(String),
    #[error("segment anchor: the segment root is not in the checkpoint's tree: {0}")]
    Inclusion(String),
    #[error("segment anchor: consistency proof from tree size {from} to {to}: {reason}")]
    Consistency { from: u64, to: u64, reason: String },
}

/// The content of an anchor (see the module docs).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SegmentAnchor {
    pub origin: String,
    /// First leaf of the segment.
    pub start: u64,
    /// One past its last leaf.
    pub end: u64,
    /// Root of the segment's subtree.
    pub segment_root: Hash,
    /// Tree size of the checkpoint.
    pub tree_size: u64,
    /// Tree size of the previous segment's anchor; 0 when there is none.
    pub previous_size: u64,
    /// Audit path of the segment's node into the checkpoint's root.
    pub inclusion: Vec<Hash>,
    /// Consistency proof from `previous_size` to `tree_size`.
    pub consistency: Vec<Hash>,
    /// The signed checkpoint note at `tree_size`.
    pub checkpoint_note: String,
}

/// Splits off one line (without its `\n`); `None` at the end of the text.
fn next_line<'a>(rest: &mut &'a str) -> Option<&'a str> {
    if rest.is_empty() {
        return None;
    }
    match rest.split_once('\n') {
        Some((line, after)) => {
            *rest = after;
            Some(line)
        }
        None => {
            let line = *rest;
            *rest = "";
            Some(line)
        }
    }
}

/// A cursor over the anchor's lines that knows the current line number (1-based).
struct Lines<'a> {
    rest: &'a str,
    line: usize,
}

impl<'a> Lines<'a> {
    fn take(&mut self, expected: &str) -> Result<&'a str, AnchorError> {
        self.line += 1;
        // Every line before the note ends with a newline.
        if !self.rest.contains('\n') {
            return Err(AnchorError::Truncated {
                line: self.line,
                expected: expected.to_owned(),
            });
        }
        next_line(&mut self.rest).ok_or_else(|| AnchorError::Truncated {
            line: self.line,
            expected: expected.to_owned(),
        })
    }

    /// `key <value>`: returns the value.
    fn field(&mut self, key: &'static str) -> Result<&'a str, AnchorError> {
        let line = self.take(&format!("`{key} <value>`"))?;
        line.strip_prefix(key)
            .and_then(|rest| rest.strip_prefix(' '))
            .filter(|v| !v.is_empty() && !v.contains(char::is_whitespace))
            .ok_or_else(|| AnchorError::BadLine {
                line: self.line,
                expected: format!("`{key} <value>`"),
                found: line.to_owned(),
            })
    }

    fn decimal(&mut self, key: &'static str) -> Result<u64, AnchorError> {
        let value = self.field(key)?;
        parse_decimal(value).ok_or_else(|| AnchorError::BadValue {
            line: self.line,
            key,
            value: value.to_owned(),
            reason: "expected a decimal number without leading zeros".into(),
        })
    }

    fn hash(&mut self, key: &'static str) -> Result<Hash, AnchorError> {
        let value = self.field(key)?;
        self.hex(key, value)
    }

    fn hex(&self, key: &'static str, value: &str) -> Result<Hash, AnchorError> {
        parse_hash_hex(value).ok_or_else(|| AnchorError::BadValue {
            line: self.line,
            key,
            value: value.to_owned(),
            reason: "expected 64 lowercase hex digits".into(),
        })
    }

    /// `key <count>` then that many hash lines.
    fn proof(&mut self, key: &'static str) -> Result<Vec<Hash>, AnchorError> {
        let count = self.decimal(key)?;
        if count > MAX_PROOF_HASHES {
            return Err(AnchorError::BadValue {
                line: self.line,
                key,
                value: count.to_string(),
                reason: format!("more than {MAX_PROOF_HASHES} hashes"),
            });
        }
        let mut hashes = Vec::with_capacity(count as usize);
        for i in 0..count {
            let what = format!("{key} hash {} of {count}", i + 1);
            let line = self.take(&what)?;
            hashes.push(self.hex(key, line)?);
        }
        Ok(hashes)
    }
}

impl SegmentAnchor {
    /// The anchor's text (see the module docs).
    pub fn to_text(&self) -> String {
        let mut out = String::with_capacity(1024 + self.checkpoint_note.len());
        out.push_str(ANCHOR_HEADER);
        out.push('\n');
        let fields = [
            ("origin", self.origin.clone()),
            ("start", self.start.to_string()),
            ("end", self.end.to_string()),
            ("root", hex::encode(self.segment_root)),
            ("tree_size", self.tree_size.to_string()),
            ("previous_size", self.previous_size.to_string()),
        ];
        for (key, value) in fields {
            out.push_str(&format!("{key} {value}\n"));
        }
        for (key, proof) in [
            ("inclusion", &self.inclusion),
            ("consistency", &self.consistency),
        ] {
            out.push_str(&format!("{key} {}\n", proof.len()));
            for hash in proof {
                out.push_str(&hex::encode(hash));
                out.push('\n');
            }
        }
        out.push_str("checkpoint\n");
        out.push_str(&self.checkpoint_note);
        out
    }

    /// Parses an anchor strictly: exact header, every line present once in order, canonical
    /// values, an aligned power-of-two segment, proof lengths that fit the sizes, and a
    /// well-formed checkpoint note (signatures are checked by [`SegmentAnchor::verify`]).
    pub fn parse(bytes: &[u8]) -> Result<SegmentAnchor, AnchorError> {
        if bytes.len() > MAX_ANCHOR_BYTES {
            return Err(AnchorError::TooLarge(bytes.len()));
        }
        let text = std::str::from_utf8(bytes).map_err(|_| AnchorError::NotUtf8)?;
        let mut lines = Lines {
            rest: text,
            line: 0,
        };
        let header = lines.take(&format!("{ANCHOR_HEADER:?}"))?;
        if header != ANCHOR_HEADER {
            return Err(AnchorError::BadHeader(header.to_owned()));
        }
        let origin = lines.field("origin")?.to_owned();
        let start = lines.decimal("start")?;
        let end_line = lines.line + 1;
        let end = lines.decimal("end")?;
        if let Err(e) = SegmentId::from_range(origin.as_str(), start, end) {
            return Err(AnchorError::BadValue {
                line: end_line,
                key: "end",
                value: end.to_string(),
                reason: e.to_string(),
            });
        }
        let segment_root = lines.hash("root")?;
        let tree_size = lines.decimal("tree_size")?;
        if tree_size < end {
            return Err(AnchorError::BadValue {
                line: lines.line,
                key: "tree_size",
                value: tree_size.to_string(),
                reason: format!("below the segment end {end}"),
            });
        }
        let previous_size = lines.decimal("previous_size")?;
        if previous_size > tree_size {
            return Err(AnchorError::BadValue {
                line: lines.line,
                key: "previous_size",
                value: previous_size.to_string(),
                reason: format!("above tree_size {tree_size}"),
            });
        }
        let inclusion = lines.proof("inclusion")?;
        let consistency = lines.proof("consistency")?;
        if (previous_size == 0 || previous_size == tree_size) && !consistency.is_empty() {
            return Err(AnchorError::BadValue {
                line: lines.line - consistency.len(),
                key: "consistency",
                value: consistency.len().to_string(),
                reason: format!(
                    "a consistency proof from previous_size {previous_size} to tree_size {tree_size} is empty"
                ),
            });
        }
        let marker = lines.take("`checkpoint`")?;
        if marker != "checkpoint" {
            return Err(AnchorError::BadLine {
                line: lines.line,
                expected: "`checkpoint`".into(),
                found: marker.to_owned(),
            });
        }
        let note_line = lines.line + 1;
        let checkpoint_note = lines.rest.to_owned();
        if checkpoint_note.is_empty() {
            return Err(AnchorError::Truncated {
                line: note_line,
                expected: "the signed checkpoint note".into(),
            });
        }
        let anchor = SegmentAnchor {
            origin,
            start,
            end,
            segment_root,
            tree_size,
            previous_size,
            inclusion,
            consistency,
            checkpoint_note,
        };
        anchor.checkpoint_unverified(note_line)?;
        Ok(anchor)
    }

    /// The segment this anchor is for.
    pub fn segment_id(&self) -> Result<SegmentId, AnchorError> {
        SegmentId::from_range(self.origin.as_str(), self.start, self.end)
            .map_err(|e| AnchorError::Mismatch(e.to_string()))
    }

    /// Line of the checkpoint note's first line.
    fn note_line(&self) -> usize {
        // Header, six fields, two count lines, the `checkpoint` marker: ten lines.
        11 + self.inclusion.len() + self.consistency.len()
    }

    fn checkpoint_unverified(&self, line: usize) -> Result<Checkpoint, AnchorError> {
        let note = auditledger_ledger::note::Note::parse(self.checkpoint_note.as_bytes()).map_err(
            |e| AnchorError::Checkpoint {
                line,
                source: e.into(),
            },
        )?;
        Checkpoint::parse_body(note.text())
            .map_err(|source| AnchorError::Checkpoint { line, source })
    }

    /// Checks everything the anchor says on its own: the checkpoint's signature (any one of
    /// `keys`), that it is for this origin and tree size, and that the segment's root is the
    /// tree node the inclusion proof leads from into the checkpoint's root. The consistency
    /// proof needs the previous anchor: [`VerifiedAnchor::verify_chain`].
    pub fn verify(self, keys: &[VerifierKey]) -> Result<VerifiedAnchor, AnchorError> {
        let line = self.note_line();
        let verified = checkpoint::open(self.checkpoint_note.as_bytes(), keys)
            .map_err(|source| AnchorError::Checkpoint { line, source })?;
        let cp = verified.checkpoint;
        if cp.origin != self.origin {
            return Err(AnchorError::Mismatch(format!(
                "the checkpoint is for origin {:?}, the anchor for {:?}",
                cp.origin, self.origin
            )));
        }
        if cp.tree_size != self.tree_size {
            return Err(AnchorError::Mismatch(format!(
                "the checkpoint is at tree size {}, the anchor says tree_size {}",
                cp.tree_size, self.tree_size
            )));
        }
        let id = self.segment_id()?;
        merkle::verify_subtree_inclusion(
            id.node(),
            cp.tree_size,
            &self.segment_root,
            &self.inclusion,
            &cp.root_hash,
        )
        .map_err(|e| AnchorError::Inclusion(e.to_string()))?;
        Ok(VerifiedAnchor {
            anchor: self,
            checkpoint: cp,
            signed_by: verified.signed_by,
        })
    }
}

/// An anchor whose checkpoint signature and inclusion proof verified.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifiedAnchor {
    pub anchor: SegmentAnchor,
    pub checkpoint: Checkpoint,
    /// Trusted keys whose signatures on the checkpoint verified.
    pub signed_by: Vec<VerifierKey>,
}

impl VerifiedAnchor {
    /// Checks that this anchor continues `previous`, the anchor of the segment just before
    /// it in the same log: `previous_size` names the previous checkpoint's size and the
    /// consistency proof leads from its root to this checkpoint's root.
    pub fn verify_chain(&self, previous: &VerifiedAnchor) -> Result<(), AnchorError> {
        let (a, b) = (&previous.checkpoint, &self.checkpoint);
        if a.origin != b.origin {
            return Err(AnchorError::Mismatch(format!(
                "the previous segment's anchor is for origin {:?}, this one for {:?}",
                a.origin, b.origin
            )));
        }
        if previous.anchor.end != self.anchor.start {
            return Err(AnchorError::Mismatch(format!(
                "the previous anchor is for [{}, {}), not the segment before [{}, {})",
                previous.anchor.start, previous.anchor.end, self.anchor.start, self.anchor.end
            )));
        }
        if self.anchor.previous_size != a.tree_size {
            return Err(AnchorError::Mismatch(format!(
                "previous_size is {}, but the previous segment's anchor is at tree size {}",
                self.anchor.previous_size, a.tree_size
            )));
        }
        merkle::verify_consistency(
            a.tree_size,
            b.tree_size,
            &self.anchor.consistency,
            &a.root_hash,
            &b.root_hash,
        )
        .map_err(|e| AnchorError::Consistency {
            from: a.tree_size,
            to: b.tree_size,
            reason: match e {
                MerkleError::RootMismatch { .. } if a.tree_size == b.tree_size => {
                    "both checkpoints have the same size but different roots (a fork)".into()
                }
                e => e.to_string(),
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use auditledger_ledger::merkle::{MemoryTree, leaf_hash, subtree_inclusion_proof};
    use auditledger_ledger::note::SignerKey;

    const ORIGIN: &str = "auditledger.local/acme/prod";

    fn signer() -> SignerKey {
        SignerKey::from_seed("auditledger.local", &[3; 32]).unwrap()
    }

    fn tree(n: u64) -> MemoryTree {
        let mut tree = MemoryTree::new();
        for i in 0..n {
            tree.append(leaf_hash(format!("leaf {i}").as_bytes()));
        }
        tree
    }

    /// The anchor of segment `[start, start + 2^bits)` at `size`, chained from `previous`.
    fn anchor(tree: &MemoryTree, start: u64, bits: u8, size: u64, previous: u64) -> SegmentAnchor {
        let id = SegmentId::new(ORIGIN, start, bits).unwrap();
        let root = merkle::root(tree, size).unwrap();
        let checkpoint = Checkpoint {
            origin: ORIGIN.into(),
            tree_size: size,
            root_hash: root,
            time: Some(1_700_000_000 + size),
            prev: None,
            other_extensions: vec![],
        };
        SegmentAnchor {
            origin: ORIGIN.into(),
            start,
            end: id.end(),
            segment_root: tree.node(id.node()).unwrap(),
            tree_size: size,
            previous_size: previous,
            inclusion: subtree_inclusion_proof(tree, id.node(), size).unwrap(),
            consistency: if previous == 0 {
                vec![]
            } else {
                merkle::consistency_proof(tree, previous, size).unwrap()
            },
            checkpoint_note: checkpoint.sign(&[signer()]).unwrap(),
        }
    }

    #[test]
    fn round_trip_and_chain() {
        let t = tree(100);
        let keys = [signer().verifier()];
        let first = anchor(&t, 0, 4, 37, 0);
        let second = anchor(&t, 16, 4, 37, 37);
        let third = anchor(&t, 32, 4, 50, 37);
        for a in [&first, &second, &third] {
            assert_eq!(&SegmentAnchor::parse(a.to_text().as_bytes()).unwrap(), a);
        }
        assert!(second.consistency.is_empty());
        let v1 = first.verify(&keys).unwrap();
        let v2 = second.verify(&keys).unwrap();
        let v3 = third.clone().verify(&keys).unwrap();
        v2.verify_chain(&v1).unwrap();
        v3.verify_chain(&v2).unwrap();
        // Not the segment before.
        assert!(v3.verify_chain(&v1).is_err());
        // A wrong previous size, a wrong consistency proof.
        let mut skewed = third.clone();
        skewed.previous_size = 20;
        skewed.consistency = merkle::consistency_proof(&t, 20, 50).unwrap();
        let err = skewed.verify(&keys).unwrap().verify_chain(&v2).unwrap_err();
        assert!(err.to_string().contains("previous_size is 20"), "{err}");
        let mut bad = third;
        bad.consistency[0][0] ^= 1;
        let err = bad.verify(&keys).unwrap().verify_chain(&v2).unwrap_err();
        assert!(
            matches!(
                err,
                AnchorError::Consistency {
                    from: 37,
                    to: 50,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn forks_and_tampering_are_detected() {
        let t = tree(64);
        let keys = [signer().verifier()];
        let good = anchor(&t, 16, 4, 40, 0);
        // Another log's tree: same sizes, different leaves.
        let mut other = MemoryTree::new();
        for i in 0..64 {
            other.append(leaf_hash(format!("other {i}").as_bytes()));
        }
        let mut swapped = anchor(&other, 16, 4, 40, 0);
        swapped.segment_root = good.segment_root;
        let err = swapped.verify(&keys).unwrap_err();
        assert!(matches!(err, AnchorError::Inclusion(_)), "{err}");
        let mut flipped = good.clone();
        flipped.inclusion[1][5] ^= 0x10;
        assert!(matches!(
            flipped.verify(&keys),
            Err(AnchorError::Inclusion(_))
        ));
        // Untrusted key, and a byte changed inside the signed checkpoint.
        let stranger = SignerKey::from_seed("auditledger.local", &[4; 32]).unwrap();
        assert!(matches!(
            good.clone().verify(&[stranger.verifier()]),
            Err(AnchorError::Checkpoint { .. })
        ));
        let text = good.to_text();
        let tampered = text.replacen("\n40\n", "\n41\n", 1);
        let err = SegmentAnchor::parse(tampered.as_bytes())
            .unwrap()
            .verify(&keys)
            .unwrap_err();
        assert!(matches!(err, AnchorError::Checkpoint { .. }), "{err}");
        // Same size, different roots: a fork.
        let a = anchor(&t, 0, 4, 40, 0).verify(&keys).unwrap();
        let b = anchor(&other, 16, 4, 40, 40).verify(&keys).unwrap();
        let err = b.verify_chain(&a).unwrap_err();
        assert!(err.to_string().contains("fork"), "{err}");
    }

    #[test]
    fn strict_parse_names_the_line() {
        let t = tree(64);
        let text = anchor(&t, 16, 4, 40, 20).to_text();
        let cases: Vec<(String, &str)> = vec![
            (
                text.replacen(ANCHOR_HEADER, "auditledger.segment-anchor/v2", 1),
                "line 1",
            ),
            (text.replacen("origin ", "origin  ", 1), "line 2"),
            (text.replacen("start 16", "start 016", 1), "line 3"),
            (text.replacen("end 32", "end 31", 1), "line 4"),
            (text.replacen("root ", "root A", 1), "line 5"),
            (
                text.replacen("tree_size 40", "tree_size 30", 1),
                "below the segment end",
            ),
            (
                text.replacen("previous_size 20", "previous_size 41", 1),
                "line 7",
            ),
            (text.replacen("inclusion 2", "inclusion 3", 1), "line"),
            (text.replacen("consistency ", "consistency 999", 1), "line"),
            (
                text.replacen("\ncheckpoint\n", "\ncheckpoints\n", 1),
                "`checkpoint`",
            ),
            (
                text.split("checkpoint\n").next().unwrap().to_owned() + "checkpoint\n",
                "line",
            ),
            (text.replacen("tree_size", "size", 1), "line 6"),
            (
                text.replacen("previous_size 20", "previous_size 0", 1),
                "is empty",
            ),
            ("".into(), "line 1"),
        ];
        for (bad, needle) in cases {
            let err = match SegmentAnchor::parse(bad.as_bytes()) {
                Err(e) => e,
                Ok(a) => panic!("accepted {a:?} from {bad:?}"),
            };
            assert!(err.to_string().contains(needle), "{needle}: {err}");
        }
        // A hash line with an uppercase digit names its line.
        let lines: Vec<&str> = text.split('\n').collect();
        let mut broken = lines.clone();
        let upper = lines[8].to_uppercase();
        broken[8] = &upper;
        let err = SegmentAnchor::parse(broken.join("\n").as_bytes()).unwrap_err();
        assert!(err.to_string().contains("line 9"), "{err}");
        assert!(matches!(
            SegmentAnchor::parse(&vec![b'a'; MAX_ANCHOR_BYTES + 1]),
            Err(AnchorError::TooLarge(_))
        ));
    }
}
