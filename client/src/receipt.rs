//! Receipts as the caller sees them, and their verification: the inclusion proof is checked
//! against a checkpoint signed by a trusted key with the ledger's pure Merkle and checkpoint
//! code (no RocksDB), so a gateway need not trust the ledger's word that an event is in.

use auditledger_ledger::checkpoint;
use auditledger_ledger::merkle::{self, Hash};
use auditledger_ledger::note::VerifierKey;
use auditledger_proto::v1 as pb;

/// Proof that the ledger holds an event durably.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Receipt {
    pub event_id: String,
    /// Origin line of the log (`<origin_prefix>/<tenant>/<environment>`).
    pub origin: String,
    pub leaf_index: u64,
    /// BLAKE3(0x00 || leaf).
    pub leaf_hash: Hash,
    /// The ledger already had this event_id (a retry or a replay): this is the original
    /// receipt and nothing was appended.
    pub duplicate: bool,
    /// With `wait_for_checkpoint`: the inclusion proof and its signed checkpoint.
    pub inclusion: Option<Inclusion>,
}

/// An inclusion proof and the checkpoint it leads to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Inclusion {
    pub tree_size: u64,
    pub hashes: Vec<Hash>,
    /// The signed checkpoint note (C2SP signed-note text).
    pub checkpoint_note: String,
    /// Names of the configured keys whose signature verified, when verification is on
    /// (empty: not verified by the client).
    pub verified_by: Vec<String>,
}

fn hash32(bytes: &[u8], what: &str) -> Result<Hash, String> {
    bytes
        .try_into()
        .map_err(|_| format!("{what} has {} bytes, expected 32", bytes.len()))
}

/// Converts a wire receipt; `batch_checkpoint` is the response's checkpoint (for receipts of the
/// first event's log). Verifies the proof when `keys` is not empty. The second value says why
/// the receipt is malformed or does not verify.
pub(crate) fn from_pb(
    r: &pb::Receipt,
    batch_checkpoint: Option<&pb::SignedCheckpoint>,
    keys: &[VerifierKey],
) -> (Receipt, Option<String>) {
    let mut receipt = Receipt {
        event_id: r.event_id.clone(),
        origin: r.origin.clone(),
        leaf_index: r.leaf_index,
        leaf_hash: [0; 32],
        duplicate: r.duplicate,
        inclusion: None,
    };
    match hash32(&r.leaf_hash, "leaf_hash") {
        Ok(h) => receipt.leaf_hash = h,
        Err(e) => return (receipt, Some(e)),
    }
    let Some(proof) = &r.proof else {
        return (receipt, None);
    };
    let note = proof
        .checkpoint
        .as_ref()
        .or(batch_checkpoint)
        .map(|c| c.note.clone());
    let Some(note) = note else {
        return (receipt, Some("proof without a checkpoint".into()));
    };
    let mut hashes = Vec::with_capacity(proof.hashes.len());
    for (i, h) in proof.hashes.iter().enumerate() {
        match hash32(h, &format!("proof hash {i}")) {
            Ok(h) => hashes.push(h),
            Err(e) => return (receipt, Some(e)),
        }
    }
    let mut inclusion = Inclusion {
        tree_size: proof.tree_size,
        hashes,
        checkpoint_note: note,
        verified_by: Vec::new(),
    };
    if !keys.is_empty() {
        match verify(&receipt, &inclusion, keys) {
            Ok(names) => inclusion.verified_by = names,
            Err(reason) => {
                receipt.inclusion = Some(inclusion);
                return (receipt, Some(reason));
            }
        }
    }
    receipt.inclusion = Some(inclusion);
    (receipt, None)
}

/// Checks the signature of the checkpoint (any one key), its origin, its size and the
/// inclusion proof of the receipt's leaf hash. Returns the names of the keys that signed.
pub fn verify(
    receipt: &Receipt,
    inclusion: &Inclusion,
    keys: &[VerifierKey],
) -> Result<Vec<String>, String> {
    let opened =
        checkpoint::open_for_origin(inclusion.checkpoint_note.as_bytes(), keys, &receipt.origin)
            .map_err(|e| format!("checkpoint: {e}"))?;
    if opened.checkpoint.tree_size != inclusion.tree_size {
        return Err(format!(
            "proof is for tree size {}, the checkpoint has {}",
            inclusion.tree_size, opened.checkpoint.tree_size
        ));
    }
    merkle::verify_inclusion(
        receipt.leaf_index,
        inclusion.tree_size,
        &receipt.leaf_hash,
        &inclusion.hashes,
        &opened.checkpoint.root_hash,
    )
    .map_err(|e| format!("leaf {}: {e}", receipt.leaf_index))?;
    Ok(opened
        .signed_by
        .iter()
        .map(|k| k.name().to_owned())
        .collect())
}
