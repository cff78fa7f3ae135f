//! Shared by the fuzz targets: the fixed keys that signed the seed corpus, and seed writing.
//!
//! Seeds are real artefacts (signed notes, anchors, exports) built with the library's own
//! writers. A target writes them when started with `AUDITLEDGER_FUZZ_SEEDS=<dir>` set (see
//! scripts/fuzz.sh `--seed`), so the corpus can always be regenerated from the code.

#![allow(dead_code)]

use auditledger_ledger::cosignature::WitnessSigner;
use auditledger_ledger::note::{SignerKey, VerifierKey};

/// Key name of the log key that signs every seed.
pub const LOG_KEY_NAME: &str = "auditledger.fuzz";
/// Origin of every seed.
pub const ORIGIN: &str = "auditledger.fuzz/acme/prod";

/// The log's signing key (fixed seed: the committed corpus verifies with it).
pub fn signer() -> SignerKey {
    SignerKey::from_seed(LOG_KEY_NAME, &[7u8; 32]).expect("valid fixed key name")
}

pub fn verifier() -> VerifierKey {
    signer().verifier()
}

/// A witness (fixed seed).
pub fn witness() -> WitnessSigner {
    WitnessSigner::from_seed("witness.fuzz/w1", &[9u8; 32]).expect("valid fixed witness name")
}

/// Writes `seeds` as files `seed-<n>` into `$AUDITLEDGER_FUZZ_SEEDS`, if set, and exits.
pub fn write_seeds_if_asked(make: impl FnOnce() -> Vec<Vec<u8>>) {
    let Some(dir) = std::env::var_os("AUDITLEDGER_FUZZ_SEEDS") else {
        return;
    };
    let dir = std::path::PathBuf::from(dir);
    std::fs::create_dir_all(&dir).expect("creating the seed directory");
    for (i, seed) in make().into_iter().enumerate() {
        let path = dir.join(format!("seed-{i}"));
        std::fs::write(&path, seed).expect("writing a seed");
    }
    eprintln!("seeds written to {}", dir.display());
    std::process::exit(0);
}
