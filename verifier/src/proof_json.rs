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

impl InclusionProofFile {
    pub fn parse(text: &str) -> Result<Self, String> {
        let v = parse(text)?;
        let checkpoint_note = v
            .get("checkpoint")
            .and_then(|c| c.get("note"))
            .and_then(Value::as_str)
            .ok_or("checkpoint.note: missing (the proof must carry its signed checkpoint)")?
            .to_owned();
        Ok(InclusionProofFile {
            leaf_index: uint(&v, "leafIndex", "leaf_index")?,
            tree_size: uint(&v, "treeSize", "tree_size")?,
            hashes: hash_list(&v)?,
            leaf: bytes(&v, "leaf", "leaf")?.unwrap_or_default(),
            leaf_hash: bytes(&v, "leafHash", "leaf_hash")?,
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
