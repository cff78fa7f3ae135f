//! The server keyring and the public keyring (ledger/src/keys.rs) on arbitrary text.
//!
//! Asserts: parsing never panics; a public keyring that parses, written out with `to_toml`,
//! parses to the same entries, and writing that again gives the same text (a fixed point);
//! the same for the server keyring (parsed without a path, so no private key file is read),
//! and its public part round-trips through the public format.

#![no_main]

#[path = "common.rs"]
mod common;

use std::path::Path;

use auditledger_ledger::keys::{KeyEntry, Keyring, PublicKeyring};
use libfuzzer_sys::fuzz_target;

fn seeds() -> Vec<Vec<u8>> {
    let v = common::verifier();
    vec![
        format!(
            "version = 1\n\n[[key]]\nname = \"{}\"\nverifier_key = \"{v}\"\nvalid_from = \"2026-01-01T00:00:00Z\"\nvalid_until = \"2027-01-01T00:00:00Z\"\nrevoked_at = \"2026-06-01T00:00:00Z\"\nrevocation_reason = \"laptop lost\"\n",
            v.name()
        )
        .into_bytes(),
        format!(
            "version = 1\n\n[[key]]\nverifier_key = \"{v}\"\nprivate_key_file = \"k.key\"\nvalid_from = \"2026-01-01T00:00:00Z\"\n"
        )
        .into_bytes(),
    ]
}

/// Everything of an entry that the files carry, comparable.
type Entry = (
    String,
    u32,
    u64,
    Option<u64>,
    Option<u64>,
    Option<String>,
    Option<String>,
);

fn entries(list: &[KeyEntry]) -> Vec<Entry> {
    list.iter()
        .map(|e| {
            (
                e.verifier.to_string(),
                e.verifier.key_id(),
                e.valid_from,
                e.valid_until,
                e.revoked_at,
                e.revocation_reason.clone(),
                e.private_key_file.clone(),
            )
        })
        .collect()
}

fuzz_target!(
    init: { common::write_seeds_if_asked(seeds); },
    |data: &[u8]| {
        let Ok(text) = std::str::from_utf8(data) else {
            return;
        };
        let path = Path::new("fuzz.toml");
        if let Ok(ring) = PublicKeyring::parse(text, path) {
            let written = ring.to_toml();
            let back = PublicKeyring::parse(&written, path)
                .unwrap_or_else(|e| panic!("written public keyring does not parse: {e}\n{written}"));
            assert_eq!(entries(back.entries()), entries(ring.entries()));
            assert_eq!(back.to_toml(), written);
        }
        if let Ok(ring) = Keyring::parse(text, None) {
            assert!(ring.entries().iter().all(|e| e.signer.is_none()));
            let written = ring.to_toml();
            let back = Keyring::parse(&written, None)
                .unwrap_or_else(|e| panic!("written keyring does not parse: {e}\n{written}"));
            assert_eq!(entries(back.entries()), entries(ring.entries()));
            assert_eq!(back.to_toml(), written);
            let public = PublicKeyring::from_keyring(&ring);
            let exported = public.to_toml();
            let p = PublicKeyring::parse(&exported, path)
                .unwrap_or_else(|e| panic!("exported public keyring does not parse: {e}\n{exported}"));
            assert_eq!(entries(p.entries()), entries(public.entries()));
        }
    }
);
