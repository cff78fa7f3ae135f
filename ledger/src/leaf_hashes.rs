//! Leaf hashes of many leaves at once, several leaves per SIMD lane group.
//!
//! Verifying an export or a segment hashes every leaf: `BLAKE3(0x00 || leaf)` of a ~550-byte
//! leaf is nine sequential compressions of one chunk, and `blake3::hash` runs them on one
//! SIMD lane — half of the verifier's time (docs/benchmarks.md). BLAKE3's own kernels also
//! hash many equal-length inputs side by side (`hash_many`, up to 16 lanes with AVX-512); the
//! crate uses them for the chunks of a long input and exposes them in its `platform` module,
//! which it marks unstable. This module feeds leaves through that kernel:
//!
//! * leaves are grouped by the number of full 64-byte blocks before their last block
//!   (`0x00 || leaf` is one chunk when at most 1024 bytes);
//! * each group's full blocks go through `hash_many` with `CHUNK_START` on the first block,
//!   giving each leaf's chaining value;
//! * the last (possibly partial) block is compressed per leaf with `CHUNK_END | ROOT`, which
//!   for a 32-byte output is exactly the BLAKE3 hash.
//!
//! Everything else (empty or single-block leaves, leaves longer than a chunk) goes through
//! [`crate::merkle::leaf_hash`]. The result is checked against `leaf_hash` for every length up
//! to two chunks in the tests below: an upgrade of `blake3` that changed the unstable API's
//! meaning fails them, and one that removed it fails the build; the lock file pins the version.

use blake3::platform::Platform;

use crate::merkle::{Hash, leaf_hash};

/// BLAKE3 block and chunk sizes and flags (BLAKE3 specification §2.1, §2.2).
const BLOCK_LEN: usize = 64;
const CHUNK_LEN: usize = 1024;
const CHUNK_START: u8 = 1 << 0;
const CHUNK_END: u8 = 1 << 1;
const ROOT: u8 = 1 << 3;
/// The BLAKE3 IV (the SHA-256 IV), the key of the unkeyed hash.
const IV: [u32; 8] = [
    0x6A09E667, 0xBB67AE85, 0x3C6EF372, 0xA54FF53A, 0x510E527F, 0x9B05688C, 0x1F83D9AB, 0x5BE0CD19,
];

/// Leaves hashed per call of the kernel: enough to fill every lane many times, small enough
/// that the copied prefixes stay in cache.
const GROUP: usize = 256;

/// `leaf_hash` of every leaf, in order.
pub fn leaf_hashes(leaves: &[&[u8]]) -> Vec<Hash> {
    let mut out = vec![[0u8; 32]; leaves.len()];
    let platform = Platform::detect();
    // Bucket by full blocks before the last block of `0x00 || leaf`: (len + 1 - 1) / 64.
    let mut buckets: [Vec<usize>; CHUNK_LEN / BLOCK_LEN] = Default::default();
    for (i, leaf) in leaves.iter().enumerate() {
        let full_blocks = leaf.len() / BLOCK_LEN;
        if (BLOCK_LEN..CHUNK_LEN).contains(&leaf.len()) && platform.simd_degree() > 1 {
            buckets[full_blocks].push(i);
        } else {
            out[i] = leaf_hash(leaf);
        }
    }
    for (full_blocks, bucket) in buckets.iter().enumerate() {
        for group in bucket.chunks(GROUP) {
            match full_blocks {
                1 => hash_group::<64>(platform, group, leaves, &mut out),
                2 => hash_group::<128>(platform, group, leaves, &mut out),
                3 => hash_group::<192>(platform, group, leaves, &mut out),
                4 => hash_group::<256>(platform, group, leaves, &mut out),
                5 => hash_group::<320>(platform, group, leaves, &mut out),
                6 => hash_group::<384>(platform, group, leaves, &mut out),
                7 => hash_group::<448>(platform, group, leaves, &mut out),
                8 => hash_group::<512>(platform, group, leaves, &mut out),
                9 => hash_group::<576>(platform, group, leaves, &mut out),
                10 => hash_group::<640>(platform, group, leaves, &mut out),
                11 => hash_group::<704>(platform, group, leaves, &mut out),
                12 => hash_group::<768>(platform, group, leaves, &mut out),
                13 => hash_group::<832>(platform, group, leaves, &mut out),
                14 => hash_group::<896>(platform, group, leaves, &mut out),
                15 => hash_group::<960>(platform, group, leaves, &mut out),
                _ => debug_assert!(group.is_empty(), "bucketed only 1..=15 full blocks"),
            }
        }
    }
    out
}

/// Hashes the leaves at `group` (indexes into `leaves`), each of which has exactly `N / 64`
/// full blocks before its last block.
fn hash_group<const N: usize>(
    platform: Platform,
    group: &[usize],
    leaves: &[&[u8]],
    out: &mut [Hash],
) {
    // The kernel wants whole `N`-byte inputs: `0x00 || leaf[..N - 1]` of each leaf.
    let mut prefixes: Vec<[u8; N]> = Vec::with_capacity(group.len());
    for &i in group {
        let mut prefix = [0u8; N];
        prefix[1..].copy_from_slice(&leaves[i][..N - 1]);
        prefixes.push(prefix);
    }
    let inputs: Vec<&[u8; N]> = prefixes.iter().collect();
    let mut cvs = vec![0u8; 32 * group.len()];
    platform.hash_many(
        &inputs,
        &IV,
        0,
        blake3::IncrementCounter::No,
        0,
        CHUNK_START,
        0,
        &mut cvs,
    );
    for (k, &i) in group.iter().enumerate() {
        let rest = &leaves[i][N - 1..];
        debug_assert!((1..=BLOCK_LEN).contains(&rest.len()));
        let mut block = [0u8; BLOCK_LEN];
        block[..rest.len()].copy_from_slice(rest);
        let mut cv = [0u32; 8];
        for (word, bytes) in cv.iter_mut().zip(cvs[32 * k..32 * (k + 1)].chunks_exact(4)) {
            *word = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
        }
        platform.compress_in_place(&mut cv, &block, rest.len() as u8, 0, CHUNK_END | ROOT);
        for (bytes, word) in out[i].chunks_exact_mut(4).zip(cv) {
            bytes.copy_from_slice(&word.to_le_bytes());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic pseudo-random bytes (xorshift), so failures reproduce.
    fn bytes(seed: u64, len: usize) -> Vec<u8> {
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    #[test]
    fn equals_leaf_hash_for_every_length_up_to_two_chunks() {
        let leaves: Vec<Vec<u8>> = (0..=2 * CHUNK_LEN + 1)
            .map(|len| bytes(len as u64, len))
            .collect();
        let refs: Vec<&[u8]> = leaves.iter().map(Vec::as_slice).collect();
        let hashes = leaf_hashes(&refs);
        for (leaf, hash) in leaves.iter().zip(&hashes) {
            assert_eq!(*hash, leaf_hash(leaf), "leaf of {} bytes", leaf.len());
        }
    }

    #[test]
    fn equals_leaf_hash_for_many_leaves_of_mixed_lengths_in_any_order() {
        // More than a group per bucket, lengths interleaved, every byte position mattering:
        // a leaf that differs from another in one byte hashes differently.
        let mut leaves: Vec<Vec<u8>> = (0..3000u64)
            .map(|i| bytes(i, 480 + (i as usize * 7) % 200))
            .collect();
        let mut twin = leaves[17].clone();
        let last = twin.len() - 1;
        twin[last] ^= 1;
        leaves.push(twin);
        let refs: Vec<&[u8]> = leaves.iter().map(Vec::as_slice).collect();
        let hashes = leaf_hashes(&refs);
        for (leaf, hash) in leaves.iter().zip(&hashes) {
            assert_eq!(*hash, leaf_hash(leaf));
        }
        assert_ne!(hashes[17], hashes[3000]);
        assert!(leaf_hashes(&[]).is_empty());
    }
}
