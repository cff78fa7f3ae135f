//! What the hot store knows about archived segments (DESIGN §6).
//!
//! A segment is the leaf range `[k·2^bits, (k+1)·2^bits)` of a log: a complete subtree whose
//! root is the tree node (level `bits`, index `k`). When the archiver has written a segment to a
//! warm or cold tier and read it back, it records a [`SegmentRecord`] here (after checking its
//! root against the tree); only then may the segment's leaf bytes leave RocksDB
//! ([`crate::Log::release_hot_leaves`]).
//!
//! What stays hot forever: the tiles (every tree hash, so proofs never touch object storage),
//! the event-id and leaf-hash indexes (lookups find archived leaves) and the checkpoints —
//! roughly 100 bytes per leaf against ~500 for its content.

use crate::layout::Reader;
use crate::merkle::Hash;

/// Where a segment's leaf bytes live.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Tier {
    Hot,
    Warm,
    Cold,
}

impl Tier {
    pub const fn as_str(self) -> &'static str {
        match self {
            Tier::Hot => "hot",
            Tier::Warm => "warm",
            Tier::Cold => "cold",
        }
    }

    const fn code(self) -> u8 {
        match self {
            Tier::Hot => 0,
            Tier::Warm => 1,
            Tier::Cold => 2,
        }
    }

    const fn from_code(code: u8) -> Option<Tier> {
        match code {
            0 => Some(Tier::Hot),
            1 => Some(Tier::Warm),
            2 => Some(Tier::Cold),
            _ => None,
        }
    }
}

impl std::fmt::Display for Tier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Tier {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "hot" => Ok(Tier::Hot),
            "warm" => Ok(Tier::Warm),
            "cold" => Ok(Tier::Cold),
            other => Err(format!("unknown tier {other:?} (hot, warm or cold)")),
        }
    }
}

/// An archived segment, as recorded in the hot store.
///
/// Value under `meta` `'G' ‖ log_id ‖ start`: `version u8 (=1) ‖ tier u8 ‖ bits u8 ‖ flags u8
/// (bit 0: content expired, bit 1: hot leaves released) ‖ root [32] ‖ object BLAKE3 [32] ‖
/// object bytes u64 ‖ recorded_at u64 (unix ns) ‖ oldest u64 ‖ newest u64 (`logged_at` of the
/// first and last leaf) ‖ len u16 ‖ object path (UTF-8)`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SegmentRecord {
    /// First leaf index (a multiple of 2^bits).
    pub start: u64,
    /// Segment size exponent: the segment holds 2^bits leaves.
    pub bits: u8,
    /// The tier holding the segment's object.
    pub tier: Tier,
    /// Root of the segment's subtree (checked against the tree when recorded).
    pub root: Hash,
    /// Path of the Parquet object inside the tier's object store.
    pub object: String,
    /// BLAKE3 of the object's bytes.
    pub object_blake3: Hash,
    /// Size of the object in bytes.
    pub object_bytes: u64,
    /// The object no longer holds leaf contents (retention expiry); hashes remain.
    pub content_expired: bool,
    /// The leaf bytes of this range were deleted from the hot store.
    pub hot_released: bool,
    /// Unix nanos when this record was (last) written.
    pub recorded_at: u64,
    /// `logged_at` of the segment's first leaf (the oldest: `logged_at` never decreases).
    pub oldest: u64,
    /// `logged_at` of the segment's last leaf.
    pub newest: u64,
}

const VERSION: u8 = 1;
const FLAG_EXPIRED: u8 = 1;
const FLAG_RELEASED: u8 = 2;

impl SegmentRecord {
    /// One past the last leaf index.
    pub fn end(&self) -> u64 {
        self.start + (1u64 << self.bits)
    }

    /// Whether `leaf_index` lies in this segment.
    pub fn contains(&self, leaf_index: u64) -> bool {
        (self.start..self.end()).contains(&leaf_index)
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(96 + self.object.len());
        v.push(VERSION);
        v.push(self.tier.code());
        v.push(self.bits);
        let mut flags = 0;
        if self.content_expired {
            flags |= FLAG_EXPIRED;
        }
        if self.hot_released {
            flags |= FLAG_RELEASED;
        }
        v.push(flags);
        v.extend_from_slice(&self.root);
        v.extend_from_slice(&self.object_blake3);
        v.extend_from_slice(&self.object_bytes.to_be_bytes());
        v.extend_from_slice(&self.recorded_at.to_be_bytes());
        v.extend_from_slice(&self.oldest.to_be_bytes());
        v.extend_from_slice(&self.newest.to_be_bytes());
        let object = self.object.as_bytes();
        let len = object.len().min(u16::MAX as usize);
        v.extend_from_slice(&(len as u16).to_be_bytes());
        v.extend_from_slice(&object[..len]);
        v
    }

    /// Decodes the value stored for the segment starting at `start`.
    pub fn decode(start: u64, bytes: &[u8]) -> Option<SegmentRecord> {
        let mut r = Reader(bytes);
        if r.u8()? != VERSION {
            return None;
        }
        let tier = Tier::from_code(r.u8()?)?;
        let bits = r.u8()?;
        let flags = r.u8()?;
        if bits >= 64 || flags & !(FLAG_EXPIRED | FLAG_RELEASED) != 0 {
            return None;
        }
        let root: Hash = r.take(32)?.try_into().ok()?;
        let object_blake3: Hash = r.take(32)?.try_into().ok()?;
        let object_bytes = r.u64()?;
        let recorded_at = r.u64()?;
        let oldest = r.u64()?;
        let newest = r.u64()?;
        let object = r.string()?;
        if !r.0.is_empty() || !start.is_multiple_of(1u64 << bits) {
            return None;
        }
        Some(SegmentRecord {
            start,
            bits,
            tier,
            root,
            object,
            object_blake3,
            object_bytes,
            content_expired: flags & FLAG_EXPIRED != 0,
            hot_released: flags & FLAG_RELEASED != 0,
            recorded_at,
            oldest,
            newest,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> SegmentRecord {
        SegmentRecord {
            start: 3 << 16,
            bits: 16,
            tier: Tier::Warm,
            root: [7; 32],
            object: "acme/prod/segments/196608-262144.parquet".into(),
            object_blake3: [9; 32],
            object_bytes: 12_345_678,
            content_expired: false,
            hot_released: true,
            recorded_at: 1_763_700_000_000_000_000,
            oldest: 1_763_600_000_000_000_000,
            newest: 1_763_650_000_000_000_000,
        }
    }

    #[test]
    fn round_trips_and_rejects_damage() {
        let r = record();
        let bytes = r.encode();
        assert_eq!(SegmentRecord::decode(r.start, &bytes), Some(r.clone()));
        assert_eq!(r.end(), 4 << 16);
        assert!(r.contains(r.start) && r.contains(r.end() - 1) && !r.contains(r.end()));
        // Truncated, trailing garbage, unknown tier, flags or version, misaligned start.
        assert_eq!(
            SegmentRecord::decode(r.start, &bytes[..bytes.len() - 1]),
            None
        );
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(SegmentRecord::decode(r.start, &longer), None);
        for (offset, value) in [(0, 2u8), (1, 3), (3, 4)] {
            let mut bad = bytes.clone();
            bad[offset] = value;
            assert_eq!(SegmentRecord::decode(r.start, &bad), None, "byte {offset}");
        }
        assert_eq!(SegmentRecord::decode(r.start + 1, &bytes), None);
    }

    #[test]
    fn tiers_parse_and_order() {
        for t in [Tier::Hot, Tier::Warm, Tier::Cold] {
            assert_eq!(t.as_str().parse::<Tier>(), Ok(t));
        }
        assert!(Tier::Hot < Tier::Warm && Tier::Warm < Tier::Cold);
        assert!("lukewarm".parse::<Tier>().unwrap_err().contains("lukewarm"));
    }
}
