//! Proofs saved as the protobuf JSON form of `auditledger.v1.InclusionProof` and
//! `ConsistencyProof` — what `grpcurl … auditledger.v1.Log/GetInclusionProof` prints: field
//! names in lowerCamelCase (the proto names are accepted too), 64-bit integers as strings or
//! numbers, bytes in base64.

use base64::Engine as _;
use serde_json::Value;

/// An inclusion proof read from JSON.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InclusionProofFile {
    pub leaf_index: u64,
    pub tree_size: u64,
    pub hashes: Vec<Vec<u8>>,
    /// Empty when the content expired or the caller (an auditor) got no contents.
    pub leaf: Vec<u8>,
    pub leaf_hash: Option<Vec<u8>>,
    pub checkpoint_note: String,
}

/// A consistency proof read from JSON.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConsistencyProofFile {
    pub first: u64,
    pub second: u64,
    pub hashes: Vec<Vec<u8>>,
}

fn field<'a>(v: &'a Value, camel: &str, snake: &str) -> Option<&'a Value> {
    v.get(camel).or_else(|| v.get(snake))
}

fn uint(v: &Value, camel: &str, snake: &str) -> Result<u64, String> {
    match field(v, camel, snake) {
        None | Some(Value::Null) => Ok(0), // proto3 JSON omits zero values
        Some(Value::String(s)) => s
            .parse()
            .map_err(|_| format!("{camel}: {s:?} is not an unsigned integer")),
        Some(Value::Number(n)) => n
            .as_u64()
            .ok_or_else(|| format!("{camel}: {n} is not an unsigned integer")),
        Some(other) => Err(format!("{camel}: expected an integer, got {other}")),
    }
}

fn bytes_of(name: &str, v: &Value) -> Result<Vec<u8>, String> {
    let s = v
        .as_str()
        .ok_or_else(|| format!("{name}: expected base64 text, got {v}"))?;
    base64::engine::general_purpose::STANDARD
        .decode(s)
        .or_else(|_| base64::engine::general_purpose::URL_SAFE.decode(s))
        .map_err(|e| format!("{name}: not base64 ({e})"))
}

fn bytes(v: &Value, camel: &str, snake: &str) -> Result<Option<Vec<u8>>, String> {
    match field(v, camel, snake) {
        None | Some(Value::Null) => Ok(None),
        Some(b) => bytes_of(camel, b).map(Some),
    }
}

fn hash_list(v: &Value) -> Result<Vec<Vec<u8>>, String> {
    match v.get("hashes") {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(i, h)| bytes_of(&format!("hashes[{i}]"), h))
            .collect(),
        Some(other) => Err(format!("hashes: expected a list, got {other}")),
    }
}

fn parse(text: &str) -> Result<Value, String> {
    let v: Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
    if !v.is_object() {
        return Err("expected a JSON object".into());
    }
    Ok(v)
}

fn checkpoint_note(v: &Value) -> Option<String> {
    v.get("checkpoint")
        .and_then(|c| c.get("note"))
        .and_then(Value::as_str)
        .map(str::to_owned)
}

impl InclusionProofFile {
    pub fn parse(text: &str) -> Result<Self, String> {
        let v = parse(text)?;
        let note = checkpoint_note(&v)
            .ok_or("checkpoint.note: missing (the proof must carry its signed checkpoint)")?;
        Self::from_value(&v, note)
    }

    /// One proof (`InclusionProof`) or several (`GetInclusionProofsResponse`: `proofs`, each
    /// against the response's one `checkpoint`).
    pub fn parse_all(text: &str) -> Result<Vec<Self>, String> {
        let v = parse(text)?;
        let Some(proofs) = v.get("proofs") else {
            return Self::parse(text).map(|p| vec![p]);
        };
        let note = checkpoint_note(&v).ok_or(
            "checkpoint.note: missing (the response must carry the checkpoint its proofs verify against)",
        )?;
        let Value::Array(items) = proofs else {
            return Err(format!("proofs: expected a list, got {proofs}"));
        };
        if items.is_empty() {
            return Err("proofs: the list is empty".into());
        }
        items
            .iter()
            .enumerate()
            .map(|(i, p)| {
                if !p.is_object() {
                    return Err(format!("proofs[{i}]: expected a JSON object, got {p}"));
                }
                Self::from_value(p, note.clone()).map_err(|e| format!("proofs[{i}].{e}"))
            })
            .collect()
    }

    fn from_value(v: &Value, checkpoint_note: String) -> Result<Self, String> {
        Ok(InclusionProofFile {
            leaf_index: uint(v, "leafIndex", "leaf_index")?,
            tree_size: uint(v, "treeSize", "tree_size")?,
            hashes: hash_list(v)?,
            leaf: bytes(v, "leaf", "leaf")?.unwrap_or_default(),
            leaf_hash: bytes(v, "leafHash", "leaf_hash")?,
            checkpoint_note,
        })
    }
}

impl ConsistencyProofFile {
    pub fn parse(text: &str) -> Result<Self, String> {
        let v = parse(text)?;
        Ok(ConsistencyProofFile {
            first: uint(&v, "first", "first")?,
            second: uint(&v, "second", "second")?,
            hashes: hash_list(&v)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_grpcurl_output_and_proto_names() {
        let p = InclusionProofFile::parse(
            r#"{"leafIndex":"42","treeSize":"100","hashes":["AAEC"],"leaf":"aGk=","checkpoint":{"note":"x\n"},"leafHash":"AQ=="}"#,
        )
        .unwrap();
        assert_eq!((p.leaf_index, p.tree_size), (42, 100));
        assert_eq!(p.hashes, vec![vec![0, 1, 2]]);
        assert_eq!(p.leaf, b"hi");
        assert_eq!(p.leaf_hash, Some(vec![1]));
        let q = InclusionProofFile::parse(
            r#"{"leaf_index":7,"tree_size":8,"checkpoint":{"note":"n"}}"#,
        )
        .unwrap();
        assert_eq!((q.leaf_index, q.tree_size, q.leaf.len()), (7, 8, 0));
        let c = ConsistencyProofFile::parse(r#"{"first":"1","second":"3","hashes":[]}"#).unwrap();
        assert_eq!((c.first, c.second), (1, 3));
    }

    #[test]
    fn reads_a_batch_against_its_one_checkpoint() {
        let all = InclusionProofFile::parse_all(
            r#"{"checkpoint":{"note":"cp\n"},"proofs":[{"leafIndex":"3","hashes":["AAEC"],"leafHash":"AQ=="},{"leafIndex":"9"}]}"#,
        )
        .unwrap();
        assert_eq!(all.len(), 2);
        assert_eq!((all[0].leaf_index, all[1].leaf_index), (3, 9));
        assert!(all.iter().all(|p| p.checkpoint_note == "cp\n"));
        assert_eq!(all[0].hashes, vec![vec![0, 1, 2]]);
        // A single proof is a batch of one.
        let one = InclusionProofFile::parse_all(r#"{"leafIndex":"5","checkpoint":{"note":"n"}}"#)
            .unwrap();
        assert_eq!((one.len(), one[0].leaf_index), (1, 5));
        for (text, needle) in [
            (r#"{"proofs":[{"leafIndex":"1"}]}"#, "checkpoint.note"),
            (
                r#"{"checkpoint":{"note":"n"},"proofs":{}}"#,
                "proofs: expected a list",
            ),
            (
                r#"{"checkpoint":{"note":"n"},"proofs":[]}"#,
                "proofs: the list is empty",
            ),
            (
                r#"{"checkpoint":{"note":"n"},"proofs":[{"leafIndex":"1"},{"leafIndex":"x"}]}"#,
                "proofs[1].leafIndex",
            ),
            (
                r#"{"checkpoint":{"note":"n"},"proofs":[7]}"#,
                "proofs[0]: expected a JSON object, got 7",
            ),
        ] {
            let err = InclusionProofFile::parse_all(text).unwrap_err();
            assert!(err.contains(needle), "{text}: {err}");
        }
    }

    #[test]
    fn errors_name_the_field() {
        for (text, needle) in [
            ("[]", "JSON object"),
            ("{", "not JSON"),
            (
                r#"{"leafIndex":"x","checkpoint":{"note":"n"}}"#,
                "leafIndex",
            ),
            (
                r#"{"hashes":["***"],"checkpoint":{"note":"n"}}"#,
                "hashes[0]",
            ),
            (r#"{"leafIndex":"1"}"#, "checkpoint.note"),
        ] {
            let err = InclusionProofFile::parse(text).unwrap_err();
            assert!(err.contains(needle), "{text}: {err}");
        }
    }
}
