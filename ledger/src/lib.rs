//! AuditLedger core: the event model and canonical leaf encoding, the RFC 9162 Merkle tree with
//! BLAKE3, C2SP signed notes and checkpoints, the keyring, the storage layout and stores, the
//! group-commit sequencer and checkpointer, and `fsck`.
//!
//! Data path: [`Ledger::append`] validates and encodes → [`sequencer`] groups every pending
//! request into one durable `WriteBatch` (leaves, indexes, tiles) → the checkpointer signs each
//! grown log every `checkpoint_interval` → [`Log`] answers proofs from the tiles.

pub mod checkpoint;
pub mod cosignature;
pub mod error;
pub mod event;
pub mod export;
pub mod fsck;
pub mod holds;
mod indexer;
pub mod keys;
pub mod layout;
pub mod leaf_hashes;
mod ledger;
pub mod merkle;
pub mod metrics;
pub mod note;
pub mod query;
pub mod segments;
mod sequencer;
pub mod store;
pub mod tiles;

pub use error::LedgerError;
pub use ledger::{
    Clock, Ledger, LedgerOptions, Log, LogKey, PendingAppend, Receipt, SignedCheckpoint,
    SystemClock,
};
