//! Offline verification of AuditLedger evidence, without trusting the server: signed
//! checkpoints (signatures, origin, `prev` chain) and, as the formats land (issue #6),
//! inclusion/consistency proofs, exports and archives. Builds without RocksDB or tonic
//! (DESIGN §2): it reuses the ledger's pure core only.

pub mod archive;
pub mod export;
pub mod grpc;
pub mod live;
pub mod monitor;
pub mod proof_json;
pub mod trust;

pub use trust::{check_keyring, verify_cosignatures};

use auditledger_ledger::checkpoint::{self, CheckpointError, VerifiedCheckpoint};
use auditledger_ledger::merkle::{self, Hash};
use auditledger_ledger::note::VerifierKey;

/// Why verification failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VerifyError {
    #[error("checkpoint: {0}")]
    Checkpoint(#[from] CheckpointError),
    #[error("checkpoint chain: {0}")]
    Chain(String),
    #[error("proof: {0}")]
    Proof(String),
}

/// Verifies a checkpoint note with any of `keys`; optionally its origin and that it directly
/// follows `previous` (its `prev` line is the BLAKE3 of `previous`'s body and its size and
/// time do not go backwards).
pub fn verify_checkpoint(
    note: &[u8],
    keys: &[VerifierKey],
    origin: Option<&str>,
    previous: Option<&[u8]>,
) -> Result<VerifiedCheckpoint, VerifyError> {
    let verified = match origin {
        Some(o) => checkpoint::open_for_origin(note, keys, o)?,
        None => checkpoint::open(note, keys)?,
    };
    if let Some(prev_note) = previous {
        let prev = checkpoint::open(prev_note, keys)?;
        let cp = &verified.checkpoint;
        if prev.checkpoint.origin != cp.origin {
            return Err(VerifyError::Chain(format!(
                "previous checkpoint is for origin {:?}, this one for {:?}",
                prev.checkpoint.origin, cp.origin
            )));
        }
        match cp.prev {
            None => return Err(VerifyError::Chain("checkpoint has no prev line".into())),
            Some(h) if h != prev.checkpoint.body_hash() => {
                return Err(VerifyError::Chain(
                    "prev line does not match the previous checkpoint's body".into(),
                ));
            }
            Some(_) => {}
        }
        if cp.tree_size < prev.checkpoint.tree_size {
            return Err(VerifyError::Chain(format!(
                "tree size went backwards: {} after {}",
                cp.tree_size, prev.checkpoint.tree_size
            )));
        }
        if cp.time < prev.checkpoint.time {
            return Err(VerifyError::Chain("time went backwards".into()));
        }
    }
    Ok(verified)
}

fn to_hashes(hashes: &[Vec<u8>]) -> Result<Vec<Hash>, VerifyError> {
    hashes
        .iter()
        .enumerate()
        .map(|(i, h)| {
            h.as_slice().try_into().map_err(|_| {
                VerifyError::Proof(format!("proof hash {i} is {} bytes, not 32", h.len()))
            })
        })
        .collect()
}

/// Verifies that `leaf` is at `leaf_index` in the log whose signed checkpoint is `checkpoint`:
/// the checkpoint's signature, then the RFC 9162 path from BLAKE3(0x00 ‖ leaf) to its root.
pub fn verify_inclusion(
    leaf: &[u8],
    leaf_index: u64,
    proof: &[Vec<u8>],
    checkpoint: &[u8],
    keys: &[VerifierKey],
) -> Result<VerifiedCheckpoint, VerifyError> {
    verify_inclusion_of_hash(
        &merkle::leaf_hash(leaf),
        leaf_index,
        proof,
        checkpoint,
        keys,
    )
}

/// [`verify_inclusion`] from a leaf hash (a receipt) instead of the leaf bytes.
pub fn verify_inclusion_of_hash(
    leaf_hash: &Hash,
    leaf_index: u64,
    proof: &[Vec<u8>],
    checkpoint: &[u8],
    keys: &[VerifierKey],
) -> Result<VerifiedCheckpoint, VerifyError> {
    let verified = checkpoint::open(checkpoint, keys)?;
    verify_inclusion_in(&verified, leaf_hash, leaf_index, proof)?;
    Ok(verified)
}

/// [`verify_inclusion_of_hash`] against a checkpoint whose signature was already verified
/// ([`checkpoint::open`]): many proofs against one checkpoint check its signature once.
pub fn verify_inclusion_in(
    verified: &VerifiedCheckpoint,
    leaf_hash: &Hash,
    leaf_index: u64,
    proof: &[Vec<u8>],
) -> Result<(), VerifyError> {
    let cp = &verified.checkpoint;
    merkle::verify_inclusion(
        leaf_index,
        cp.tree_size,
        leaf_hash,
        &to_hashes(proof)?,
        &cp.root_hash,
    )
    .map_err(|e| {
        VerifyError::Proof(format!(
            "leaf {leaf_index} in {} at size {}: {e}",
            cp.origin, cp.tree_size
        ))
    })
}

/// Verifies that the log of `new` is an append-only extension of the log of `old`: both
/// signatures, same origin, and the RFC 9162 consistency proof between their roots.
pub fn verify_consistency(
    old: &[u8],
    new: &[u8],
    proof: &[Vec<u8>],
    keys: &[VerifierKey],
) -> Result<(), VerifyError> {
    let a = checkpoint::open(old, keys)?.checkpoint;
    let b = checkpoint::open(new, keys)?.checkpoint;
    if a.origin != b.origin {
        return Err(VerifyError::Chain(format!(
            "origins differ: {:?} and {:?}",
            a.origin, b.origin
        )));
    }
    if a.tree_size == 0 {
        return Ok(());
    }
    merkle::verify_consistency(
        a.tree_size,
        b.tree_size,
        &to_hashes(proof)?,
        &a.root_hash,
        &b.root_hash,
    )
    .map_err(|e| {
        VerifyError::Proof(format!(
            "{} from size {} to {}: {e}",
            a.origin, a.tree_size, b.tree_size
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use auditledger_ledger::checkpoint::Checkpoint;
    use auditledger_ledger::note::SignerKey;

    fn cp(size: u64, prev: Option<&Checkpoint>) -> Checkpoint {
        Checkpoint {
            origin: "auditledger.local/acme/prod".into(),
            tree_size: size,
            root_hash: [size as u8; 32],
            time: Some(1000 + size),
            prev: prev.map(Checkpoint::body_hash),
            other_extensions: vec![],
        }
    }

    #[test]
    fn chain_is_checked() {
        let key = SignerKey::from_seed("auditledger.local", &[1; 32]).unwrap();
        let keys = [key.verifier()];
        let first = cp(5, None);
        let second = cp(9, Some(&first));
        let n1 = first.sign(std::slice::from_ref(&key)).unwrap();
        let n2 = second.sign(std::slice::from_ref(&key)).unwrap();
        verify_checkpoint(
            n2.as_bytes(),
            &keys,
            Some("auditledger.local/acme/prod"),
            Some(n1.as_bytes()),
        )
        .unwrap();
        let unrelated = cp(7, None).sign(std::slice::from_ref(&key)).unwrap();
        let err =
            verify_checkpoint(n2.as_bytes(), &keys, None, Some(unrelated.as_bytes())).unwrap_err();
        assert!(
            err.to_string().contains("prev line does not match"),
            "{err}"
        );
        assert!(verify_checkpoint(n2.as_bytes(), &keys, Some("other/origin"), None).is_err());
    }
}
