//! Witness cosignatures on checkpoints: C2SP tlog-cosignature (<https://c2sp.org/tlog-cosignature>),
//! the Ed25519 `cosignature/v1` type. Pure: no I/O, no clock (times are arguments).
//!
//! A cosignature is an ordinary signed-note signature line, `— <witness name> base64(payload)`,
//! whose payload is `key ID (4) ‖ timestamp (u64 big-endian, 8) ‖ Ed25519 signature (64)`:
//! - key ID = SHA-256(name ‖ 0x0A ‖ 0x04 ‖ 32-byte public key)[:4] (signature type 0x04);
//! - the signature covers `cosignature/v1\ntime <timestamp>\n` followed by the whole checkpoint
//!   body (every line, extension lines included, with its final newline).
//!
//! Witness verifier keys are `name+hexid+base64(0x04 ‖ public key)`. This module owns that key
//! form ([`WitnessKey`]), a signer for tests and tools ([`WitnessSigner`]), the signed message
//! ([`signed_message`]), parsing one line's payload ([`Cosignature`]) and checking the lines of
//! a note against a set of witnesses ([`check_witnesses`]).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use ed25519_dalek::{Signer as _, SigningKey, VerifyingKey};

use crate::note::{self, Note, NoteSignature};

/// Signature type byte of Ed25519 `cosignature/v1` keys (C2SP signed-note registry).
pub const ALG_COSIGNATURE_V1: u8 = 0x04;

/// Bytes of a `cosignature/v1` line's payload after the key ID: timestamp and signature.
pub const COSIGNATURE_V1_LEN: usize = 8 + 64;

/// The spec caps timestamps at 2^63 − 1.
pub const MAX_TIMESTAMP: u64 = i64::MAX as u64;

/// Why a witness key or a cosignature was refused. Messages name the key or line at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CosignatureError {
    #[error("malformed witness key {key:?}: {reason}")]
    MalformedWitnessKey { key: String, reason: String },
    #[error("invalid witness name {0:?}: must be non-empty UTF-8 without spaces or '+'")]
    InvalidName(String),
    #[error(
        "signature line by {name}+{key_id:08x} is not a cosignature/v1: payload is {len} bytes after the key ID, want {COSIGNATURE_V1_LEN} (timestamp + Ed25519 signature)"
    )]
    WrongLength {
        name: String,
        key_id: u32,
        len: usize,
    },
    #[error("cosignature by {name}+{key_id:08x}: timestamp {timestamp} exceeds 2^63-1")]
    TimestampTooLarge {
        name: String,
        key_id: u32,
        timestamp: u64,
    },
    #[error(
        "cosignature by {name}+{key_id:08x} (time {timestamp}) does not verify over this checkpoint body"
    )]
    BadSignature {
        name: String,
        key_id: u32,
        timestamp: u64,
    },
    #[error("cannot cosign: {0}")]
    BadBody(String),
}

/// A witness's public key, parsed from `name+hexid+base64(0x04 ‖ pubkey)`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WitnessKey {
    name: String,
    key_id: u32,
    key: VerifyingKey,
}

impl WitnessKey {
    pub fn new(name: &str, key: VerifyingKey) -> Result<Self, CosignatureError> {
        if !note::is_valid_key_name(name) {
            return Err(CosignatureError::InvalidName(name.to_owned()));
        }
        Ok(WitnessKey {
            name: name.to_owned(),
            key_id: note::key_id(name, ALG_COSIGNATURE_V1, key.as_bytes()),
            key,
        })
    }

    /// Parses `name+hexid+base64(0x04 ‖ pubkey)`, checking the key ID.
    ///
    /// For convenience a plain Ed25519 note key (`0x01`, e.g. from Go's `note.GenerateKey`) is
    /// accepted too when its own ID matches; it then stands for the same public key used as a
    /// cosignature/v1 witness (its key ID is recomputed with 0x04, as Go's
    /// `NewVerifierForCosignatureV1` does). [`WitnessKey`]'s `Display` always prints the 0x04
    /// form.
    pub fn parse(text: &str) -> Result<Self, CosignatureError> {
        let bad = |reason: &str| CosignatureError::MalformedWitnessKey {
            key: text.to_owned(),
            reason: reason.to_owned(),
        };
        let (name, key, _alg) = note::parse_key_string(text, |alg| {
            (alg == ALG_COSIGNATURE_V1 || alg == note::ALG_ED25519)
                .then_some(())
                .ok_or_else(|| {
                    format!(
                        "unsupported signature type {alg:#04x} (want 0x04, Ed25519 cosignature/v1)"
                    )
                })
        })
        .map_err(|reason| bad(&reason))?;
        Self::new(name, key)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The cosignature/v1 key ID (computed with type byte 0x04).
    pub fn key_id(&self) -> u32 {
        self.key_id
    }

    pub fn public_key(&self) -> &VerifyingKey {
        &self.key
    }

    /// `name+hexid` — how reports name this witness.
    pub fn short(&self) -> String {
        format!("{}+{:08x}", self.name, self.key_id)
    }

    /// Whether a note signature line claims to be from this witness (same name and key ID).
    pub fn matches(&self, sig: &NoteSignature) -> bool {
        sig.name == self.name && sig.key_id == self.key_id
    }

    /// Verifies one signature line of this witness over `body` (the checkpoint note's text).
    pub fn verify(&self, body: &str, sig: &NoteSignature) -> Result<Cosignature, CosignatureError> {
        let cosig = Cosignature::from_note_signature(sig)?;
        let msg = signed_message(body, cosig.timestamp);
        let signature = ed25519_dalek::Signature::from_bytes(&cosig.signature);
        if !self.matches(sig) || self.key.verify_strict(&msg, &signature).is_err() {
            return Err(CosignatureError::BadSignature {
                name: sig.name.clone(),
                key_id: sig.key_id,
                timestamp: cosig.timestamp,
            });
        }
        Ok(cosig)
    }
}

impl std::fmt::Display for WitnessKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut raw = Vec::with_capacity(33);
        raw.push(ALG_COSIGNATURE_V1);
        raw.extend_from_slice(self.key.as_bytes());
        write!(
            f,
            "{}+{:08x}+{}",
            self.name,
            self.key_id,
            BASE64.encode(raw)
        )
    }
}

/// The message a `cosignature/v1` signs: `cosignature/v1\ntime <timestamp>\n` ‖ body.
pub fn signed_message(body: &str, timestamp: u64) -> Vec<u8> {
    let header = format!("cosignature/v1\ntime {timestamp}\n");
    let mut msg = Vec::with_capacity(header.len() + body.len());
    msg.extend_from_slice(header.as_bytes());
    msg.extend_from_slice(body.as_bytes());
    msg
}

/// One `cosignature/v1` line, parsed (not yet verified).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cosignature {
    pub name: String,
    pub key_id: u32,
    /// Unix seconds when the witness cosigned.
    pub timestamp: u64,
    pub signature: [u8; 64],
}

impl Cosignature {
    /// Splits a note signature's payload into timestamp and signature.
    pub fn from_note_signature(sig: &NoteSignature) -> Result<Self, CosignatureError> {
        let payload = &sig.signature;
        if payload.len() != COSIGNATURE_V1_LEN {
            return Err(CosignatureError::WrongLength {
                name: sig.name.clone(),
                key_id: sig.key_id,
                len: payload.len(),
            });
        }
        let mut ts = [0u8; 8];
        ts.copy_from_slice(&payload[..8]);
        let timestamp = u64::from_be_bytes(ts);
        if timestamp > MAX_TIMESTAMP {
            return Err(CosignatureError::TimestampTooLarge {
                name: sig.name.clone(),
                key_id: sig.key_id,
                timestamp,
            });
        }
        let mut signature = [0u8; 64];
        signature.copy_from_slice(&payload[8..]);
        Ok(Cosignature {
            name: sig.name.clone(),
            key_id: sig.key_id,
            timestamp,
            signature,
        })
    }

    pub fn to_note_signature(&self) -> NoteSignature {
        let mut payload = Vec::with_capacity(COSIGNATURE_V1_LEN);
        payload.extend_from_slice(&self.timestamp.to_be_bytes());
        payload.extend_from_slice(&self.signature);
        NoteSignature {
            name: self.name.clone(),
            key_id: self.key_id,
            signature: payload,
        }
    }

    /// The signature line, with final newline.
    pub fn to_line(&self) -> String {
        self.to_note_signature().to_line()
    }
}

/// A witness's private key (tests and tools; real witnesses keep their own). `Debug` never
/// prints the secret.
#[derive(Clone)]
pub struct WitnessSigner {
    name: String,
    key_id: u32,
    key: SigningKey,
}

impl std::fmt::Debug for WitnessSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "WitnessSigner({}+{:08x})", self.name, self.key_id)
    }
}

impl WitnessSigner {
    pub fn from_seed(name: &str, seed: &[u8; 32]) -> Result<Self, CosignatureError> {
        let key = SigningKey::from_bytes(seed);
        let public = WitnessKey::new(name, key.verifying_key())?;
        Ok(WitnessSigner {
            name: name.to_owned(),
            key_id: public.key_id,
            key,
        })
    }

    /// A fresh key from the operating system's CSPRNG.
    pub fn generate(name: &str) -> Result<Self, CosignatureError> {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed)
            .map_err(|e| CosignatureError::BadBody(format!("no OS randomness: {e}")))?;
        Self::from_seed(name, &seed)
    }

    pub fn witness_key(&self) -> WitnessKey {
        WitnessKey {
            name: self.name.clone(),
            key_id: self.key_id,
            key: self.key.verifying_key(),
        }
    }

    /// Cosigns a checkpoint body (a note's text: at least origin, size and root lines, ending
    /// with a newline) as of `timestamp` (unix seconds).
    pub fn cosign(&self, body: &str, timestamp: u64) -> Result<Cosignature, CosignatureError> {
        if !body.ends_with('\n') || body.split_terminator('\n').count() < 3 {
            return Err(CosignatureError::BadBody(
                "a checkpoint body has at least three newline-terminated lines".into(),
            ));
        }
        if timestamp > MAX_TIMESTAMP {
            return Err(CosignatureError::TimestampTooLarge {
                name: self.name.clone(),
                key_id: self.key_id,
                timestamp,
            });
        }
        let signature = self.key.sign(&signed_message(body, timestamp));
        Ok(Cosignature {
            name: self.name.clone(),
            key_id: self.key_id,
            timestamp,
            signature: signature.to_bytes(),
        })
    }

    /// Cosigns a whole signed note: returns it with this witness's line added.
    pub fn cosign_note(&self, note_text: &str, timestamp: u64) -> Result<String, CosignatureError> {
        let mut note = Note::parse(note_text.as_bytes())
            .map_err(|e| CosignatureError::BadBody(e.to_string()))?;
        let cosig = self.cosign(note.text(), timestamp)?;
        note.add_signature(cosig.to_note_signature());
        Ok(note.to_note_string())
    }
}

/// What one configured witness contributed to a note.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WitnessOutcome {
    /// A valid cosignature made at `timestamp` (unix seconds).
    Cosigned { timestamp: u64 },
    /// The note has a line with this witness's name and key ID that is not a valid
    /// cosignature (wrong length, bad signature, timestamp out of range).
    Invalid { reason: String },
    /// No line from this witness.
    Absent,
}

/// The result for one configured witness.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WitnessCheck {
    pub witness: WitnessKey,
    pub outcome: WitnessOutcome,
}

impl WitnessCheck {
    pub fn is_valid(&self) -> bool {
        matches!(self.outcome, WitnessOutcome::Cosigned { .. })
    }
}

/// Checks a note's signature lines against each witness, in the order given. A witness with
/// several lines is `Invalid` if any of them is (a known key's bad signature is never
/// ignored, as in the signed-note trust rule), else `Cosigned` with its latest timestamp.
pub fn check_witnesses(note: &Note, witnesses: &[WitnessKey]) -> Vec<WitnessCheck> {
    witnesses
        .iter()
        .map(|witness| {
            let mut outcome = WitnessOutcome::Absent;
            for sig in note.signatures().iter().filter(|s| witness.matches(s)) {
                match witness.verify(note.text(), sig) {
                    Ok(c) => {
                        if let WitnessOutcome::Cosigned { timestamp } = &mut outcome {
                            *timestamp = (*timestamp).max(c.timestamp);
                        } else if outcome == WitnessOutcome::Absent {
                            outcome = WitnessOutcome::Cosigned {
                                timestamp: c.timestamp,
                            };
                        }
                    }
                    Err(e) => {
                        outcome = WitnessOutcome::Invalid {
                            reason: e.to_string(),
                        };
                        break;
                    }
                }
            }
            WitnessCheck {
                witness: witness.clone(),
                outcome,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::Checkpoint;
    use crate::note::SignerKey;
    use sha2::{Digest as _, Sha256};

    const BODY: &str = "auditledger.local/acme/prod\n12\nAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwM=\ntime 1763700000\n";

    fn witness() -> WitnessSigner {
        WitnessSigner::from_seed("witness.example.com/w1", &[11u8; 32]).unwrap()
    }

    fn log_note() -> String {
        let log = SignerKey::from_seed("auditledger.local", &[1u8; 32]).unwrap();
        let body = Checkpoint::parse_body(BODY).unwrap();
        body.sign(std::slice::from_ref(&log)).unwrap()
    }

    /// Built from the spec's text with sha2 and ed25519-dalek directly, not through this
    /// module: key ID, message, payload layout and base64.
    fn hand_built_line(seed: &[u8; 32], name: &str, body: &str, timestamp: u64) -> String {
        let key = SigningKey::from_bytes(seed);
        let mut h = Sha256::new();
        h.update(name.as_bytes());
        h.update(b"\n");
        h.update([0x04]);
        h.update(key.verifying_key().as_bytes());
        let id = &h.finalize()[..4];
        let msg = format!("cosignature/v1\ntime {timestamp}\n{body}");
        let sig = key.sign(msg.as_bytes());
        let mut raw = id.to_vec();
        raw.extend_from_slice(&timestamp.to_be_bytes());
        raw.extend_from_slice(&sig.to_bytes());
        format!("\u{2014} {name} {}\n", BASE64.encode(raw))
    }

    #[test]
    fn witness_key_string_round_trips_and_checks_id() {
        let key = witness().witness_key();
        let text = key.to_string();
        assert!(text.starts_with("witness.example.com/w1+"), "{text}");
        assert_eq!(WitnessKey::parse(&text).unwrap(), key);
        let wrong = text.replacen(&format!("{:08x}", key.key_id()), "00000000", 1);
        let err = WitnessKey::parse(&wrong).unwrap_err().to_string();
        assert!(err.contains("does not match the key"), "{err}");
        for (bad, needle) in [
            ("nope", "expected name+hexid"),
            ("w+zz+AQ==", "8 hex digits"),
            ("w+00000000+!!", "base64"),
            ("w+00000000+Ag==", "unsupported signature type 0x02"),
        ] {
            let err = WitnessKey::parse(bad).unwrap_err().to_string();
            assert!(err.contains(needle), "{bad}: {err}");
        }
    }

    #[test]
    fn plain_ed25519_note_key_is_accepted_as_the_same_witness() {
        let signer = SignerKey::from_seed("witness.example.com/w1", &[11u8; 32]).unwrap();
        let from_note_key = WitnessKey::parse(&signer.verifier().to_string()).unwrap();
        assert_eq!(from_note_key, witness().witness_key());
        assert_ne!(
            from_note_key.key_id(),
            signer.key_id(),
            "0x04 key id differs"
        );
    }

    #[test]
    fn spec_example_line_decodes_to_its_time() {
        // The example cosignature of c2sp.org/tlog-cosignature: its payload must decode to
        // key ID 8d66cf3f and the big-endian timestamp 1679315147 of the example message.
        let line = "\u{2014} witness.example.com/w1 jWbPPwAAAABkGFDLEZMHwSRaJNiIDoe9DYn/zXcrtPHeolMI5OWXEhZCB9dlrDJsX3b2oyin1nPZqhf5nNo0xUe+mbIUBkBIfZ+qnA==\n";
        let note = Note::parse(format!("o\n1\nAA==\n\n{line}").as_bytes()).unwrap();
        let cosig = Cosignature::from_note_signature(&note.signatures()[0]).unwrap();
        assert_eq!(cosig.key_id, 0x8d66_cf3f);
        assert_eq!(cosig.timestamp, 1_679_315_147);
        assert_eq!(cosig.to_line(), line);
    }

    #[test]
    fn independently_built_cosignature_verifies() {
        let line = hand_built_line(&[11u8; 32], "witness.example.com/w1", BODY, 1_763_700_100);
        let note = Note::parse(format!("{}{line}", log_note()).as_bytes()).unwrap();
        let checks = check_witnesses(&note, &[witness().witness_key()]);
        assert_eq!(
            checks[0].outcome,
            WitnessOutcome::Cosigned {
                timestamp: 1_763_700_100
            }
        );
        // And our signer produces exactly those bytes (Ed25519 is deterministic).
        let ours = witness().cosign(BODY, 1_763_700_100).unwrap().to_line();
        assert_eq!(ours, line);
    }

    #[test]
    fn stock_signed_note_parser_accepts_a_cosigned_note() {
        // The cosigned note is a valid signed note for an independent implementation, and a
        // verifier written against the spec (not this module) accepts the witness line.
        struct SpecVerifier(VerifyingKey, u32);
        impl signed_note::Verifier for SpecVerifier {
            fn name(&self) -> &str {
                "witness.example.com/w1"
            }
            fn key_id(&self) -> u32 {
                self.1
            }
            fn verify(&self, msg: &[u8], sig: &[u8]) -> bool {
                let Ok(ts) = <[u8; 8]>::try_from(&sig[..8.min(sig.len())]) else {
                    return false;
                };
                let Ok(s) = ed25519_dalek::Signature::from_slice(&sig[8..]) else {
                    return false;
                };
                let mut m =
                    format!("cosignature/v1\ntime {}\n", u64::from_be_bytes(ts)).into_bytes();
                m.extend_from_slice(msg);
                self.0.verify_strict(&m, &s).is_ok()
            }
        }
        let w = witness();
        let cosigned = w.cosign_note(&log_note(), 1_763_700_200).unwrap();
        let parsed = signed_note::Note::from_bytes(cosigned.as_bytes()).unwrap();
        let verifier = SpecVerifier(*w.witness_key().public_key(), w.witness_key().key_id());
        let list = signed_note::VerifierList::new(vec![Box::new(verifier)]);
        let (verified, _) = parsed.verify(&list).unwrap();
        assert_eq!(verified.len(), 1);
    }

    #[test]
    fn tampering_is_detected_and_named() {
        let w = witness();
        let key = w.witness_key();
        let good = w.cosign(BODY, 1_763_700_300).unwrap();
        let body_note = |sig: &NoteSignature, body: &str| {
            Note::parse(format!("{body}\n{}", sig.to_line()).as_bytes()).unwrap()
        };
        let check = |note: &Note| check_witnesses(note, std::slice::from_ref(&key)).remove(0);

        // A changed body (one digit of the tree size).
        let other_body = BODY.replacen("\n12\n", "\n13\n", 1);
        let outcome = check(&body_note(&good.to_note_signature(), &other_body)).outcome;
        assert!(
            matches!(&outcome, WitnessOutcome::Invalid { reason } if reason.contains("does not verify")),
            "{outcome:?}"
        );
        // A flipped signature byte.
        let mut flipped = good.clone();
        flipped.signature[10] ^= 0x20;
        assert!(matches!(
            check(&body_note(&flipped.to_note_signature(), BODY)).outcome,
            WitnessOutcome::Invalid { .. }
        ));
        // A changed timestamp: the signature covers it.
        let mut later = good.clone();
        later.timestamp += 1;
        let outcome = check(&body_note(&later.to_note_signature(), BODY)).outcome;
        assert!(
            matches!(&outcome, WitnessOutcome::Invalid { reason } if reason.contains("time 1763700301")),
            "{outcome:?}"
        );
        // A wrong key ID: the line is not this witness's, so it is absent (ignored).
        let mut wrong_id = good.to_note_signature();
        wrong_id.key_id ^= 1;
        assert_eq!(
            check(&body_note(&wrong_id, BODY)).outcome,
            WitnessOutcome::Absent
        );
        // A truncated payload from this witness.
        let mut short = good.to_note_signature();
        short.signature.truncate(64);
        let outcome = check(&body_note(&short, BODY)).outcome;
        assert!(
            matches!(&outcome, WitnessOutcome::Invalid { reason } if reason.contains("64 bytes")),
            "{outcome:?}"
        );
        // A timestamp above 2^63 - 1.
        let mut huge = good.to_note_signature();
        huge.signature[0] = 0x80;
        let outcome = check(&body_note(&huge, BODY)).outcome;
        assert!(
            matches!(&outcome, WitnessOutcome::Invalid { reason } if reason.contains("2^63")),
            "{outcome:?}"
        );
        // The untouched line still verifies.
        assert!(check(&body_note(&good.to_note_signature(), BODY)).is_valid());
    }

    #[test]
    fn log_signature_is_not_a_cosignature_and_bodies_are_checked() {
        // The log's own Ed25519 line has a 64-byte payload: never mistaken for a witness's.
        let note = Note::parse(log_note().as_bytes()).unwrap();
        let err = Cosignature::from_note_signature(&note.signatures()[0]).unwrap_err();
        assert!(err.to_string().contains("not a cosignature/v1"), "{err}");
        assert!(witness().cosign("only\ntwo\n", 1).is_err());
        assert!(witness().cosign("a\nb\nc", 1).is_err());
    }
}
