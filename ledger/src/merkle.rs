//! RFC 9162 §2.1 Merkle tree with BLAKE3-256 (DESIGN §3): hashing, roots, inclusion and
//! consistency proofs, their verification, and compact ranges (for export range proofs).
//!
//! Pure: no I/O, no clocks, no randomness. Stored hashes are reached through [`HashReader`],
//! which only ever has to answer for *perfect* subtrees ([`NodeId`]); every other hash a proof
//! needs is derived from those. The RocksDB store, the archiver's segments and the offline
//! verifier all plug in here.

use std::fmt;

/// A 32-byte BLAKE3 hash.
pub type Hash = [u8; 32];

/// Size of a [`Hash`] in bytes.
pub const HASH_LEN: usize = 32;

/// `BLAKE3(0x00 || leaf)`.
pub fn leaf_hash(leaf: &[u8]) -> Hash {
    let mut hasher = blake3::Hasher::new();
    hasher.update(&[0x00]);
    hasher.update(leaf);
    *hasher.finalize().as_bytes()
}

/// `BLAKE3(0x01 || left || right)`.
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut buf = [0u8; 1 + 2 * HASH_LEN];
    buf[0] = 0x01;
    buf[1..33].copy_from_slice(left);
    buf[33..].copy_from_slice(right);
    *blake3::hash(&buf).as_bytes()
}

/// Root of the empty tree: `BLAKE3("")`.
pub fn empty_root() -> Hash {
    *blake3::hash(b"").as_bytes()
}

/// A perfect subtree: `level` L and `index` k cover leaves `[k·2^L, (k+1)·2^L)`.
/// Level 0 nodes are leaf hashes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeId {
    pub level: u8,
    pub index: u64,
}

impl NodeId {
    pub const fn new(level: u8, index: u64) -> Self {
        NodeId { level, index }
    }

    /// First leaf covered.
    pub const fn begin(self) -> u64 {
        self.index << self.level
    }

    /// One past the last leaf covered.
    pub const fn end(self) -> u64 {
        (self.index + 1) << self.level
    }

    /// Number of leaves covered.
    pub const fn width(self) -> u64 {
        1 << self.level
    }
}

/// Errors of proof construction and verification.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MerkleError {
    #[error("leaf index {leaf_index} is not below tree size {tree_size}")]
    LeafOutOfRange { leaf_index: u64, tree_size: u64 },
    #[error("consistency proof needs 0 < first ≤ second, got first={first} second={second}")]
    BadConsistencyRange { first: u64, second: u64 },
    #[error("range [{start}, {end}) is not within tree size {tree_size}")]
    BadRange {
        start: u64,
        end: u64,
        tree_size: u64,
    },
    #[error("proof has {got} hashes, expected {expected}")]
    WrongProofLength { got: usize, expected: usize },
    #[error("proof does not lead to the expected root (computed {computed}, expected {expected})")]
    RootMismatch { computed: String, expected: String },
    #[error("hash reader returned {got} hashes for {asked} nodes")]
    ReaderCount { asked: usize, got: usize },
    #[error("reading stored hashes: {0}")]
    Reader(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// Reads stored hashes of perfect subtrees. Implementations return exactly one hash per
/// requested node, in order.
pub trait HashReader {
    fn read_hashes(&self, nodes: &[NodeId]) -> Result<Vec<Hash>, MerkleError>;
}

impl<T: HashReader + ?Sized> HashReader for &T {
    fn read_hashes(&self, nodes: &[NodeId]) -> Result<Vec<Hash>, MerkleError> {
        (**self).read_hashes(nodes)
    }
}

/// Largest power of two strictly below `n` (n ≥ 2).
fn split_point(n: u64) -> u64 {
    debug_assert!(n >= 2);
    1 << (63 - (n - 1).leading_zeros())
}

/// The perfect subtrees covering `[begin, end)`, left to right, each as large as alignment
/// allows (the "compact range" of the interval).
pub fn range_nodes(begin: u64, end: u64) -> Vec<NodeId> {
    let mut nodes = Vec::new();
    let mut at = begin;
    while at < end {
        let align = if at == 0 { 63 } else { at.trailing_zeros() };
        let fit = 63 - (end - at).leading_zeros();
        let level = align.min(fit) as u8;
        nodes.push(NodeId::new(level, at >> level));
        at += 1 << level;
    }
    nodes
}

/// Folds the canonical decomposition of an aligned range (largest subtree first) into the
/// range's root, right to left as RFC 9162's MTH does.
fn fold_right(hashes: &[Hash]) -> Hash {
    let mut iter = hashes.iter().rev();
    let Some(last) = iter.next() else {
        return empty_root();
    };
    iter.fold(*last, |acc, left| node_hash(left, &acc))
}

/// Root hash of the tree of size `tree_size`.
pub fn root<R: HashReader>(reader: &R, tree_size: u64) -> Result<Hash, MerkleError> {
    if tree_size == 0 {
        return Ok(empty_root());
    }
    let nodes = range_nodes(0, tree_size);
    let hashes = read_checked(reader, &nodes)?;
    Ok(fold_right(&hashes))
}

fn read_checked<R: HashReader>(reader: &R, nodes: &[NodeId]) -> Result<Vec<Hash>, MerkleError> {
    if nodes.is_empty() {
        return Ok(Vec::new());
    }
    let hashes = reader.read_hashes(nodes)?;
    if hashes.len() != nodes.len() {
        return Err(MerkleError::ReaderCount {
            asked: nodes.len(),
            got: hashes.len(),
        });
    }
    Ok(hashes)
}

/// A proof as a list of range roots: each element is the root of `[begin, end)`, an aligned
/// range. Reading all their nodes at once keeps stores to one batched read per proof.
struct ProofPlan {
    ranges: Vec<(u64, u64)>,
}

impl ProofPlan {
    fn resolve<R: HashReader>(&self, reader: &R) -> Result<Vec<Hash>, MerkleError> {
        let mut nodes = Vec::new();
        let counts = self.push_nodes(&mut nodes);
        let hashes = read_checked(reader, &nodes)?;
        Ok(Self::fold(&counts, &hashes))
    }

    /// Appends the nodes of every range to `nodes`; returns how many each range has.
    fn push_nodes(&self, nodes: &mut Vec<NodeId>) -> Vec<usize> {
        self.ranges
            .iter()
            .map(|&(begin, end)| {
                let before = nodes.len();
                nodes.extend(range_nodes(begin, end));
                nodes.len() - before
            })
            .collect()
    }

    /// The range roots from the hashes of [`Self::push_nodes`]' nodes (`counts` per range).
    fn fold(counts: &[usize], hashes: &[Hash]) -> Vec<Hash> {
        let mut at = 0;
        counts
            .iter()
            .map(|&n| {
                let root = fold_right(&hashes[at..at + n]);
                at += n;
                root
            })
            .collect()
    }
}

/// Ranges whose roots form the inclusion proof of `leaf_index` in a tree of `tree_size`,
/// ordered leaf to root (RFC 9162 §2.1.3.1 PATH).
fn inclusion_plan(leaf_index: u64, tree_size: u64) -> ProofPlan {
    let mut ranges = Vec::new();
    let (mut begin, mut end) = (0u64, tree_size);
    // Walk root → leaf, then reverse: PATH lists siblings from the leaf up.
    while end - begin > 1 {
        let k = split_point(end - begin);
        if leaf_index < begin + k {
            ranges.push((begin + k, end));
            end = begin + k;
        } else {
            ranges.push((begin, begin + k));
            begin += k;
        }
    }
    ranges.reverse();
    ProofPlan { ranges }
}

/// RFC 9162 §2.1.3.1 inclusion proof of `leaf_index` in the tree of size `tree_size`.
pub fn inclusion_proof<R: HashReader>(
    reader: &R,
    leaf_index: u64,
    tree_size: u64,
) -> Result<Vec<Hash>, MerkleError> {
    if leaf_index >= tree_size {
        return Err(MerkleError::LeafOutOfRange {
            leaf_index,
            tree_size,
        });
    }
    inclusion_plan(leaf_index, tree_size).resolve(reader)
}

/// Inclusion proofs of several leaves at `tree_size`, each with the leaf's hash, from one
/// batched read: a tile-backed reader fetches each tile once however many proofs share it.
pub fn inclusion_proofs<R: HashReader>(
    reader: &R,
    leaves: &[u64],
    tree_size: u64,
) -> Result<Vec<(Hash, Vec<Hash>)>, MerkleError> {
    let mut nodes = Vec::new();
    let mut counts = Vec::with_capacity(leaves.len());
    for &leaf_index in leaves {
        if leaf_index >= tree_size {
            return Err(MerkleError::LeafOutOfRange {
                leaf_index,
                tree_size,
            });
        }
        nodes.push(NodeId::new(0, leaf_index));
        counts.push(inclusion_plan(leaf_index, tree_size).push_nodes(&mut nodes));
    }
    let hashes = read_checked(reader, &nodes)?;
    let mut at = 0;
    Ok(counts
        .iter()
        .map(|per_range| {
            let leaf = hashes[at];
            let used: usize = per_range.iter().sum();
            let proof = ProofPlan::fold(per_range, &hashes[at + 1..at + 1 + used]);
            at += 1 + used;
            (leaf, proof)
        })
        .collect())
}

/// Ranges of the RFC 9162 §2.1.4.1 consistency proof from `first` to `second`.
fn consistency_plan(first: u64, second: u64) -> ProofPlan {
    // SUBPROOF(m, D[begin:end], b), unrolled. Collected root → leaves, then reversed.
    let mut ranges = Vec::new();
    let (mut begin, mut end, mut m, mut whole) = (0u64, second, first, true);
    loop {
        let n = end - begin;
        if m == n {
            if !whole {
                ranges.push((begin, end));
            }
            break;
        }
        let k = split_point(n);
        if m <= k {
            ranges.push((begin + k, end));
            end = begin + k;
        } else {
            ranges.push((begin, begin + k));
            begin += k;
            m -= k;
            whole = false;
        }
    }
    ranges.reverse();
    ProofPlan { ranges }
}

/// RFC 9162 §2.1.4.1 consistency proof between tree sizes `first` and `second`.
pub fn consistency_proof<R: HashReader>(
    reader: &R,
    first: u64,
    second: u64,
) -> Result<Vec<Hash>, MerkleError> {
    if first == 0 || first > second {
        return Err(MerkleError::BadConsistencyRange { first, second });
    }
    if first == second {
        return Ok(Vec::new());
    }
    consistency_plan(first, second).resolve(reader)
}

fn hex_of(hash: &Hash) -> String {
    hex::encode(hash)
}

/// Root implied by an inclusion proof (RFC 9162 §2.1.3.2), or an error if the proof's length
/// does not fit the position.
pub fn root_from_inclusion_proof(
    leaf_index: u64,
    tree_size: u64,
    leaf_hash: &Hash,
    proof: &[Hash],
) -> Result<Hash, MerkleError> {
    if leaf_index >= tree_size {
        return Err(MerkleError::LeafOutOfRange {
            leaf_index,
            tree_size,
        });
    }
    let expected = inclusion_plan(leaf_index, tree_size).ranges.len();
    if proof.len() != expected {
        return Err(MerkleError::WrongProofLength {
            got: proof.len(),
            expected,
        });
    }
    Ok(fold_audit_path(leaf_hash, leaf_index, tree_size - 1, proof))
}

/// RFC 9162 §2.1.3.2 fold of an audit path: starts from `hash` at position `index` of a level
/// whose last position is `last`, and climbs with each proof hash.
fn fold_audit_path(hash: &Hash, index: u64, last: u64, proof: &[Hash]) -> Hash {
    let (mut fn_, mut sn) = (index, last);
    let mut r = *hash;
    for p in proof {
        if fn_ & 1 == 1 || fn_ == sn {
            r = node_hash(p, &r);
            while fn_ & 1 == 0 && fn_ != 0 {
                fn_ >>= 1;
                sn >>= 1;
            }
        } else {
            r = node_hash(&r, p);
        }
        fn_ >>= 1;
        sn >>= 1;
    }
    r
}

/// Verifies an inclusion proof against `root`.
pub fn verify_inclusion(
    leaf_index: u64,
    tree_size: u64,
    leaf_hash: &Hash,
    proof: &[Hash],
    root: &Hash,
) -> Result<(), MerkleError> {
    let computed = root_from_inclusion_proof(leaf_index, tree_size, leaf_hash, proof)?;
    if &computed != root {
        return Err(MerkleError::RootMismatch {
            computed: hex_of(&computed),
            expected: hex_of(root),
        });
    }
    Ok(())
}

/// The inclusion proof of a perfect subtree `node` (e.g. an archived segment, whose root is a
/// node of the tree) in the tree of size `tree_size`: the audit path *above* the node, i.e.
/// the inclusion proof of any leaf under it without its first `node.level` hashes.
pub fn subtree_inclusion_proof<R: HashReader>(
    reader: &R,
    node: NodeId,
    tree_size: u64,
) -> Result<Vec<Hash>, MerkleError> {
    check_subtree(node, tree_size)?;
    let mut plan = inclusion_plan(node.begin(), tree_size);
    // The plan lists ranges from the leaf up; the first `level` lie inside the node.
    plan.ranges
        .drain(..usize::from(node.level).min(plan.ranges.len()));
    plan.resolve(reader)
}

fn check_subtree(node: NodeId, tree_size: u64) -> Result<(), MerkleError> {
    // Computed without overflow: a node from a file may have any level and index.
    let width = (node.level < 64).then(|| 1u64 << node.level);
    let begin = width.and_then(|w| node.index.checked_mul(w));
    let end = width.and_then(|w| node.index.checked_add(1)?.checked_mul(w));
    match end {
        Some(end) if end <= tree_size => Ok(()),
        _ => Err(MerkleError::BadRange {
            start: begin.unwrap_or(u64::MAX),
            end: end.unwrap_or(u64::MAX),
            tree_size,
        }),
    }
}

/// Root implied by a subtree inclusion proof ([`subtree_inclusion_proof`]): RFC 9162
/// §2.1.3.2 started at the node's level with the node's hash.
pub fn root_from_subtree_inclusion_proof(
    node: NodeId,
    tree_size: u64,
    subtree_root: &Hash,
    proof: &[Hash],
) -> Result<Hash, MerkleError> {
    check_subtree(node, tree_size)?;
    let expected = inclusion_plan(node.begin(), tree_size)
        .ranges
        .len()
        .saturating_sub(usize::from(node.level));
    if proof.len() != expected {
        return Err(MerkleError::WrongProofLength {
            got: proof.len(),
            expected,
        });
    }
    // Inside a perfect subtree every step of the leaf's path is "left child, not last": after
    // `level` steps the indexes are exactly these.
    Ok(fold_audit_path(
        subtree_root,
        node.index,
        (tree_size - 1) >> node.level,
        proof,
    ))
}

/// Verifies that the perfect subtree `node` with root `subtree_root` is part of the tree of
/// size `tree_size` with root `root`.
pub fn verify_subtree_inclusion(
    node: NodeId,
    tree_size: u64,
    subtree_root: &Hash,
    proof: &[Hash],
    root: &Hash,
) -> Result<(), MerkleError> {
    let computed = root_from_subtree_inclusion_proof(node, tree_size, subtree_root, proof)?;
    if &computed != root {
        return Err(MerkleError::RootMismatch {
            computed: hex_of(&computed),
            expected: hex_of(root),
        });
    }
    Ok(())
}

/// Verifies an RFC 9162 §2.1.4.2 consistency proof between `(first, first_root)` and
/// `(second, second_root)`.
pub fn verify_consistency(
    first: u64,
    second: u64,
    proof: &[Hash],
    first_root: &Hash,
    second_root: &Hash,
) -> Result<(), MerkleError> {
    if first == 0 || first > second {
        return Err(MerkleError::BadConsistencyRange { first, second });
    }
    if first == second {
        if !proof.is_empty() {
            return Err(MerkleError::WrongProofLength {
                got: proof.len(),
                expected: 0,
            });
        }
        if first_root != second_root {
            return Err(MerkleError::RootMismatch {
                computed: hex_of(first_root),
                expected: hex_of(second_root),
            });
        }
        return Ok(());
    }
    let expected = consistency_plan(first, second).ranges.len();
    if proof.len() != expected {
        return Err(MerkleError::WrongProofLength {
            got: proof.len(),
            expected,
        });
    }
    // If first is a power of two, the first subtree root is first_root itself.
    let mut path: Vec<Hash> = Vec::with_capacity(proof.len() + 1);
    if first.is_power_of_two() {
        path.push(*first_root);
    }
    path.extend_from_slice(proof);
    let (mut fn_, mut sn) = (first - 1, second - 1);
    while fn_ & 1 == 1 {
        fn_ >>= 1;
        sn >>= 1;
    }
    let (mut fr, mut sr) = (path[0], path[0]);
    for c in &path[1..] {
        if sn == 0 {
            return Err(MerkleError::WrongProofLength {
                got: proof.len(),
                expected,
            });
        }
        if fn_ & 1 == 1 || fn_ == sn {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            while fn_ & 1 == 0 && fn_ != 0 {
                fn_ >>= 1;
                sn >>= 1;
            }
        } else {
            sr = node_hash(&sr, c);
        }
        fn_ >>= 1;
        sn >>= 1;
    }
    if sn != 0 {
        return Err(MerkleError::WrongProofLength {
            got: proof.len(),
            expected,
        });
    }
    if &fr != first_root {
        return Err(MerkleError::RootMismatch {
            computed: hex_of(&fr),
            expected: hex_of(first_root),
        });
    }
    if &sr != second_root {
        return Err(MerkleError::RootMismatch {
            computed: hex_of(&sr),
            expected: hex_of(second_root),
        });
    }
    Ok(())
}

/// The hashes of the DESIGN §7 range proof for leaves `[start, end)` of a tree of `tree_size`:
/// the compact range of `[0, start)` followed by that of `[end, tree_size)`.
pub fn range_proof<R: HashReader>(
    reader: &R,
    start: u64,
    end: u64,
    tree_size: u64,
) -> Result<Vec<Hash>, MerkleError> {
    if start > end || end > tree_size {
        return Err(MerkleError::BadRange {
            start,
            end,
            tree_size,
        });
    }
    let mut nodes = range_nodes(0, start);
    nodes.extend(range_nodes(end, tree_size));
    read_checked(reader, &nodes)
}

/// Number of hashes in the range proof for `[start, end)` of a tree of `tree_size`.
pub fn range_proof_len(start: u64, end: u64, tree_size: u64) -> usize {
    range_nodes(0, start).len() + range_nodes(end, tree_size).len()
}

/// A compact Merkle range: the roots of the canonical perfect subtrees covering
/// `[begin, end)`. Leaves are appended one at a time with amortised O(1) hashing, so a
/// verifier can stream millions of leaves through it in constant memory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CompactRange {
    begin: u64,
    end: u64,
    /// Nodes left to right, matching `range_nodes(begin, end)`.
    nodes: Vec<(NodeId, Hash)>,
}

impl CompactRange {
    /// An empty range starting at `begin`.
    pub fn new(begin: u64) -> Self {
        CompactRange {
            begin,
            end: begin,
            nodes: Vec::new(),
        }
    }

    /// The range `[begin, end)` from the hashes of `range_nodes(begin, end)`, in order.
    pub fn from_hashes(begin: u64, end: u64, hashes: &[Hash]) -> Result<Self, MerkleError> {
        let ids = range_nodes(begin, end);
        if ids.len() != hashes.len() {
            return Err(MerkleError::WrongProofLength {
                got: hashes.len(),
                expected: ids.len(),
            });
        }
        Ok(CompactRange {
            begin,
            end,
            nodes: ids.into_iter().zip(hashes.iter().copied()).collect(),
        })
    }

    pub fn begin(&self) -> u64 {
        self.begin
    }

    pub fn end(&self) -> u64 {
        self.end
    }

    /// The covering nodes and their hashes, left to right.
    pub fn nodes(&self) -> &[(NodeId, Hash)] {
        &self.nodes
    }

    /// Appends one leaf hash at index `end`.
    pub fn append(&mut self, leaf_hash: Hash) {
        self.push_node(NodeId::new(0, self.end), leaf_hash);
    }

    /// Appends a perfect subtree that starts at `end` and keeps the range canonical.
    fn push_node(&mut self, id: NodeId, hash: Hash) {
        debug_assert_eq!(id.begin(), self.end);
        self.end = id.end();
        let (mut id, mut hash) = (id, hash);
        while let Some(&(left_id, left_hash)) = self.nodes.last() {
            let siblings = left_id.level == id.level
                && left_id.index % 2 == 0
                && left_id.index + 1 == id.index
                && left_id.begin() >= self.begin;
            if !siblings {
                break;
            }
            self.nodes.pop();
            hash = node_hash(&left_hash, &hash);
            id = NodeId::new(id.level + 1, left_id.index / 2);
        }
        self.nodes.push((id, hash));
    }

    /// Appends a whole range that starts where this one ends.
    pub fn extend(&mut self, other: &CompactRange) -> Result<(), MerkleError> {
        if other.begin != self.end {
            return Err(MerkleError::BadRange {
                start: other.begin,
                end: other.end,
                tree_size: self.end,
            });
        }
        for &(id, hash) in &other.nodes {
            self.push_node(id, hash);
        }
        Ok(())
    }

    /// Root of `[0, end)` when the range starts at 0.
    pub fn root(&self) -> Result<Hash, MerkleError> {
        if self.begin != 0 {
            return Err(MerkleError::BadRange {
                start: self.begin,
                end: self.end,
                tree_size: self.end,
            });
        }
        let hashes: Vec<Hash> = self.nodes.iter().map(|(_, h)| *h).collect();
        Ok(fold_right(&hashes))
    }
}

/// Rebuilds the root of a tree of `tree_size` from a DESIGN §7 range proof and the leaf
/// hashes of `[start, end)` (as a compact range built by the caller, so leaves can stream).
pub fn root_from_range_proof(
    leaves: &CompactRange,
    tree_size: u64,
    proof: &[Hash],
) -> Result<Hash, MerkleError> {
    let (start, end) = (leaves.begin(), leaves.end());
    if end > tree_size {
        return Err(MerkleError::BadRange {
            start,
            end,
            tree_size,
        });
    }
    let left_len = range_nodes(0, start).len();
    let expected = left_len + range_nodes(end, tree_size).len();
    if proof.len() != expected {
        return Err(MerkleError::WrongProofLength {
            got: proof.len(),
            expected,
        });
    }
    let mut whole = CompactRange::from_hashes(0, start, &proof[..left_len])?;
    whole.extend(leaves)?;
    whole.extend(&CompactRange::from_hashes(
        end,
        tree_size,
        &proof[left_len..],
    )?)?;
    whole.root()
}

/// An in-memory tree of every node: the reference [`HashReader`] for tests, fuzzing and small
/// offline checks.
#[derive(Clone, Default)]
pub struct MemoryTree {
    /// `levels[l][k]` = hash of `NodeId(l, k)`, for every complete node.
    levels: Vec<Vec<Hash>>,
}

impl fmt::Debug for MemoryTree {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryTree")
            .field("size", &self.size())
            .finish()
    }
}

impl MemoryTree {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn size(&self) -> u64 {
        self.levels.first().map_or(0, |l| l.len() as u64)
    }

    /// Appends a leaf hash, completing every node it closes.
    pub fn append(&mut self, leaf_hash: Hash) {
        let mut level = 0;
        let mut hash = leaf_hash;
        loop {
            if self.levels.len() == level {
                self.levels.push(Vec::new());
            }
            self.levels[level].push(hash);
            let len = self.levels[level].len();
            if len % 2 == 1 {
                break;
            }
            hash = node_hash(&self.levels[level][len - 2], &self.levels[level][len - 1]);
            level += 1;
        }
    }

    pub fn node(&self, id: NodeId) -> Option<Hash> {
        self.levels
            .get(id.level as usize)?
            .get(usize::try_from(id.index).ok()?)
            .copied()
    }
}

/// A node that a [`HashReader`] was asked for but does not hold.
#[derive(Debug, thiserror::Error)]
#[error("node (level {}, index {}) is not stored", .0.level, .0.index)]
pub struct MissingNode(pub NodeId);

impl HashReader for MemoryTree {
    fn read_hashes(&self, nodes: &[NodeId]) -> Result<Vec<Hash>, MerkleError> {
        nodes
            .iter()
            .map(|&id| {
                self.node(id)
                    .ok_or_else(|| MerkleError::Reader(Box::new(MissingNode(id))))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Independent, slow reference implementation straight from RFC 9162's recursive text.
    mod naive {
        use super::super::{Hash, empty_root, node_hash, split_point};

        pub fn mth(leaves: &[Hash]) -> Hash {
            match leaves.len() {
                0 => empty_root(),
                1 => leaves[0],
                n => {
                    let k = split_point(n as u64) as usize;
                    node_hash(&mth(&leaves[..k]), &mth(&leaves[k..]))
                }
            }
        }

        pub fn path(m: usize, leaves: &[Hash]) -> Vec<Hash> {
            let n = leaves.len();
            if n <= 1 {
                return vec![];
            }
            let k = split_point(n as u64) as usize;
            if m < k {
                let mut p = path(m, &leaves[..k]);
                p.push(mth(&leaves[k..]));
                p
            } else {
                let mut p = path(m - k, &leaves[k..]);
                p.push(mth(&leaves[..k]));
                p
            }
        }

        fn subproof(m: usize, leaves: &[Hash], whole: bool) -> Vec<Hash> {
            let n = leaves.len();
            if m == n {
                return if whole { vec![] } else { vec![mth(leaves)] };
            }
            let k = split_point(n as u64) as usize;
            if m <= k {
                let mut p = subproof(m, &leaves[..k], whole);
                p.push(mth(&leaves[k..]));
                p
            } else {
                let mut p = subproof(m - k, &leaves[k..], false);
                p.push(mth(&leaves[..k]));
                p
            }
        }

        pub fn proof(m: usize, leaves: &[Hash]) -> Vec<Hash> {
            subproof(m, leaves, true)
        }
    }

    fn leaves(n: usize) -> Vec<Hash> {
        (0..n)
            .map(|i| leaf_hash(format!("leaf {i}").as_bytes()))
            .collect()
    }

    fn tree_of(hashes: &[Hash]) -> MemoryTree {
        let mut tree = MemoryTree::new();
        for h in hashes {
            tree.append(*h);
        }
        tree
    }

    #[test]
    fn range_nodes_are_aligned_and_cover() {
        for begin in 0..70u64 {
            for end in begin..70u64 {
                let nodes = range_nodes(begin, end);
                let mut at = begin;
                for n in &nodes {
                    assert_eq!(n.begin(), at, "gap in [{begin},{end})");
                    assert_eq!(n.begin() % n.width(), 0, "unaligned node");
                    at = n.end();
                }
                assert_eq!(at, end);
            }
        }
        assert_eq!(
            range_nodes(0, 5),
            vec![NodeId::new(2, 0), NodeId::new(0, 4)]
        );
    }

    #[test]
    fn empty_tree_root_is_blake3_of_nothing() {
        let tree = MemoryTree::new();
        assert_eq!(root(&tree, 0).unwrap(), *blake3::hash(b"").as_bytes());
    }

    #[test]
    fn subtree_outside_the_tree_is_refused() {
        let hashes = leaves(13);
        let tree = tree_of(&hashes);
        let r = root(&tree, 13).unwrap();
        // [8, 16) is not complete at size 13; [12, 13) is.
        assert!(matches!(
            subtree_inclusion_proof(&tree, NodeId::new(3, 1), 13),
            Err(MerkleError::BadRange { .. })
        ));
        let proof = subtree_inclusion_proof(&tree, NodeId::new(0, 12), 13).unwrap();
        verify_subtree_inclusion(NodeId::new(0, 12), 13, &hashes[12], &proof, &r).unwrap();
        assert!(matches!(
            verify_subtree_inclusion(NodeId::new(3, 1), 13, &hashes[12], &proof, &r),
            Err(MerkleError::BadRange { .. })
        ));
        assert!(verify_subtree_inclusion(NodeId::new(63, 7), 13, &r, &[], &r).is_err());
        // The whole tree as a subtree: an empty proof.
        let t16 = tree_of(&leaves(16));
        let r16 = root(&t16, 16).unwrap();
        assert!(
            subtree_inclusion_proof(&t16, NodeId::new(4, 0), 16)
                .unwrap()
                .is_empty()
        );
        verify_subtree_inclusion(NodeId::new(4, 0), 16, &r16, &[], &r16).unwrap();
    }

    #[test]
    fn tampered_proofs_are_rejected() {
        let hashes = leaves(13);
        let tree = tree_of(&hashes);
        let r = root(&tree, 13).unwrap();
        let mut proof = inclusion_proof(&tree, 5, 13).unwrap();
        verify_inclusion(5, 13, &hashes[5], &proof, &r).unwrap();
        assert!(verify_inclusion(6, 13, &hashes[5], &proof, &r).is_err());
        // A size whose proof has another length is refused before hashing. (A size with the
        // same path shape can give the same root: RFC 9162 proofs do not authenticate the
        // size, the signed checkpoint does.)
        assert!(matches!(
            verify_inclusion(5, 40, &hashes[5], &proof, &r),
            Err(MerkleError::WrongProofLength { .. })
        ));
        proof[1][0] ^= 1;
        assert!(matches!(
            verify_inclusion(5, 13, &hashes[5], &proof, &r),
            Err(MerkleError::RootMismatch { .. })
        ));
        proof.pop();
        assert!(matches!(
            verify_inclusion(5, 13, &hashes[5], &proof, &r),
            Err(MerkleError::WrongProofLength { .. })
        ));
        let r7 = root(&tree, 7).unwrap();
        let mut cproof = consistency_proof(&tree, 7, 13).unwrap();
        verify_consistency(7, 13, &cproof, &r7, &r).unwrap();
        assert!(verify_consistency(7, 13, &cproof, &r, &r7).is_err());
        cproof[0][31] ^= 0x80;
        assert!(verify_consistency(7, 13, &cproof, &r7, &r).is_err());
    }

    #[test]
    fn reader_that_lies_about_count_is_an_error() {
        struct Short;
        impl HashReader for Short {
            fn read_hashes(&self, _: &[NodeId]) -> Result<Vec<Hash>, MerkleError> {
                Ok(vec![])
            }
        }
        assert!(matches!(
            root(&Short, 3),
            Err(MerkleError::ReaderCount { .. })
        ));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn roots_match_naive(n in 0usize..3000) {
            let hashes = leaves(n);
            let tree = tree_of(&hashes);
            prop_assert_eq!(root(&tree, n as u64).unwrap(), naive::mth(&hashes));
        }

        #[test]
        fn inclusion_matches_naive_and_verifies(n in 1usize..3000, seed in any::<u64>()) {
            let hashes = leaves(n);
            let tree = tree_of(&hashes);
            let size = (seed % n as u64) + 1;
            let m = (seed >> 20) % size;
            let proof = inclusion_proof(&tree, m, size).unwrap();
            let expected = naive::path(m as usize, &hashes[..size as usize]);
            prop_assert_eq!(&proof, &expected);
            let r = naive::mth(&hashes[..size as usize]);
            prop_assert!(verify_inclusion(m, size, &hashes[m as usize], &proof, &r).is_ok());
            // The same proof must not verify another leaf.
            let other = (m + 1) % size;
            if other != m {
                prop_assert!(verify_inclusion(m, size, &hashes[other as usize], &proof, &r).is_err());
            }
        }

        #[test]
        fn batched_proofs_equal_single_proofs(n in 1usize..2000, seed in any::<u64>(), k in 0usize..40) {
            let hashes = leaves(n);
            let tree = tree_of(&hashes);
            let size = (seed % n as u64) + 1;
            let mut wanted: Vec<u64> = (0..k as u64)
                .map(|i| seed.rotate_left(i as u32 * 7).wrapping_mul(i + 1) % size)
                .collect();
            // A repeat: the same leaf twice must give the same proof twice.
            if let Some(&first) = wanted.first() {
                wanted.push(first);
            }
            let batch = inclusion_proofs(&tree, &wanted, size).unwrap();
            prop_assert_eq!(batch.len(), wanted.len());
            for (&m, (leaf, proof)) in wanted.iter().zip(&batch) {
                prop_assert_eq!(leaf, &hashes[m as usize]);
                prop_assert_eq!(proof, &naive::path(m as usize, &hashes[..size as usize]));
            }
            let mut beyond = wanted.clone();
            beyond.push(size);
            let refused = matches!(
                inclusion_proofs(&tree, &beyond, size),
                Err(MerkleError::LeafOutOfRange { leaf_index, .. }) if leaf_index == size
            );
            prop_assert!(refused);
        }

        #[test]
        fn subtree_inclusion_is_the_upper_path_and_verifies(n in 1usize..600, seed in any::<u64>()) {
            let hashes = leaves(n);
            let tree = tree_of(&hashes);
            let size = (seed % n as u64) + 1;
            // A perfect subtree inside [0, size): level ≤ log2(size), aligned index.
            let max_level = 63 - size.leading_zeros();
            let level = ((seed >> 16) % u64::from(max_level + 1)) as u8;
            let count = size >> level;
            let index = (seed >> 24) % count;
            let node = NodeId::new(level, index);
            let node_root = naive::mth(&hashes[node.begin() as usize..node.end() as usize]);
            let proof = subtree_inclusion_proof(&tree, node, size).unwrap();
            let full = naive::path(node.begin() as usize, &hashes[..size as usize]);
            prop_assert_eq!(&proof[..], &full[usize::from(level)..]);
            let r = naive::mth(&hashes[..size as usize]);
            prop_assert!(verify_subtree_inclusion(node, size, &node_root, &proof, &r).is_ok());
            if !proof.is_empty() {
                let mut bad = proof.clone();
                bad[0][0] ^= 1;
                prop_assert!(verify_subtree_inclusion(node, size, &node_root, &bad, &r).is_err());
            }
            let mut wrong_root = node_root;
            wrong_root[31] ^= 1;
            prop_assert!(verify_subtree_inclusion(node, size, &wrong_root, &proof, &r).is_err());
            if count > 1 {
                let other = NodeId::new(level, (index + 1) % count);
                prop_assert!(verify_subtree_inclusion(other, size, &node_root, &proof, &r).is_err());
            }
        }

        #[test]
        fn consistency_matches_naive_and_verifies(n in 1usize..3000, a in any::<u64>(), b in any::<u64>()) {
            let hashes = leaves(n);
            let tree = tree_of(&hashes);
            let second = (b % n as u64) + 1;
            let first = (a % second) + 1;
            let proof = consistency_proof(&tree, first, second).unwrap();
            prop_assert_eq!(&proof, &naive::proof(first as usize, &hashes[..second as usize]));
            let r1 = naive::mth(&hashes[..first as usize]);
            let r2 = naive::mth(&hashes[..second as usize]);
            prop_assert!(verify_consistency(first, second, &proof, &r1, &r2).is_ok());
            if first < second {
                let wrong = naive::mth(&hashes[..(first - 1) as usize]);
                prop_assert!(verify_consistency(first, second, &proof, &wrong, &r2).is_err());
            }
        }

        #[test]
        fn range_proof_rebuilds_root(n in 1usize..2000, a in any::<u64>(), b in any::<u64>()) {
            let hashes = leaves(n);
            let tree = tree_of(&hashes);
            let size = n as u64;
            let end = (b % size) + 1;
            let start = a % (end + 1);
            let proof = range_proof(&tree, start, end, size).unwrap();
            prop_assert_eq!(proof.len(), range_proof_len(start, end, size));
            let mut range = CompactRange::new(start);
            for h in &hashes[start as usize..end as usize] {
                range.append(*h);
            }
            prop_assert_eq!(root_from_range_proof(&range, size, &proof).unwrap(), naive::mth(&hashes));
            // Dropping a leaf must break it.
            if end - start >= 2 {
                let mut short = CompactRange::new(start);
                for h in &hashes[start as usize..(end - 1) as usize] {
                    short.append(*h);
                }
                let rebuilt = root_from_range_proof(&short, size, &proof);
                prop_assert!(rebuilt.map_or(true, |r| r != naive::mth(&hashes)));
            }
        }

        #[test]
        fn compact_range_matches_range_nodes(begin in 0u64..5000, len in 0u64..3000) {
            let mut range = CompactRange::new(begin);
            for i in begin..begin + len {
                range.append(leaf_hash(&i.to_be_bytes()));
            }
            let ids: Vec<NodeId> = range.nodes().iter().map(|(id, _)| *id).collect();
            prop_assert_eq!(ids, range_nodes(begin, begin + len));
        }
    }
}
