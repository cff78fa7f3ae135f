//! Tiering of the ledger: full segments of the hot RocksDB tier move to Parquet on object
//! storage (warm, then cold) by retention policy, without breaking any proof (DESIGN §6).
//!
//! Not implemented yet (issue #5): this crate holds no code until then. The segment geometry it
//! will use — 2^`segment_bits` leaves, a complete subtree — is already recorded per log by the
//! ledger (`Log::segment_bits`).
