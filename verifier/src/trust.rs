//! Who vouches for a checkpoint, beyond "some trusted key signed it":
//! - witness policy: `N` of the given witnesses cosigned it (C2SP tlog-cosignature,
//!   `cosignature/v1`), see [`verify_cosignatures`];
//! - key validity: every signature line judged against the ledger's public keyring (which key,
//!   and whether it was valid at the checkpoint's `time`), see [`check_keyring`].
//!
//! Both take the note bytes as served or saved (log signatures and cosignature lines together)
//! and neither replaces [`crate::verify_checkpoint`]: callers verify the log signature and the
//! body first, then apply these policies.

use std::time::{Duration, UNIX_EPOCH};

use auditledger_ledger::checkpoint::Checkpoint;
use auditledger_ledger::cosignature::{WitnessCheck, WitnessKey, WitnessOutcome, check_witnesses};
use auditledger_ledger::keys::{KeyEntry, KeyStatus, PublicKeyring};
use auditledger_ledger::note::{Note, VerifierKey};

/// Why a witness or keyring policy failed. Messages say what was found and why each
/// candidate was rejected.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TrustError {
    #[error("checkpoint note: {0}")]
    Note(String),
    #[error("witness policy: {0}")]
    Policy(String),
    #[error("witnesses: {}", .0.failure())]
    Witnesses(CosignatureReport),
    #[error("keyring: {}", .0.failure())]
    Keyring(KeyringReport),
}

/// RFC 3339 form of unix seconds, for reports.
pub fn format_time(unix_seconds: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(unix_seconds)).to_string()
}

/// The outcome of a witness policy: one entry per given witness.
#[derive(Clone, Debug)]
pub struct CosignatureReport {
    pub checks: Vec<WitnessCheck>,
    /// Valid cosignatures required.
    pub required: usize,
    /// Signature lines that are from none of the given witnesses (`name+hexid`; the log's own
    /// signatures are among them).
    pub other_lines: Vec<String>,
}

impl CosignatureReport {
    /// Witnesses whose cosignature verified.
    pub fn valid(&self) -> usize {
        self.checks.iter().filter(|c| c.is_valid()).count()
    }

    pub fn is_ok(&self) -> bool {
        self.valid() >= self.required
            && !self
                .checks
                .iter()
                .any(|c| matches!(c.outcome, WitnessOutcome::Invalid { .. }))
    }

    /// One line per given witness: who, and when it cosigned or why it does not count.
    pub fn lines(&self) -> Vec<String> {
        self.checks
            .iter()
            .map(|c| {
                let who = c.witness.short();
                match &c.outcome {
                    WitnessOutcome::Cosigned { timestamp } => format!(
                        "witness {who} cosigned at {} ({timestamp})",
                        format_time(*timestamp)
                    ),
                    WitnessOutcome::Invalid { reason } => {
                        format!("witness {who} REJECTED: {reason}")
                    }
                    WitnessOutcome::Absent => {
                        format!("witness {who}: no cosignature on this checkpoint")
                    }
                }
            })
            .collect()
    }

    /// Why the policy failed (or the summary, if it did not).
    pub fn failure(&self) -> String {
        let mut out = format!(
            "{} valid witness cosignature(s) found, {} required",
            self.valid(),
            self.required
        );
        if self
            .checks
            .iter()
            .any(|c| matches!(c.outcome, WitnessOutcome::Invalid { .. }))
        {
            out.push_str("; a cosignature of a trusted witness does not verify");
        }
        out.push_str(": ");
        out.push_str(&self.lines().join("; "));
        if !self.other_lines.is_empty() {
            out.push_str(&format!(
                "; lines from keys not given as --witness (ignored): {}",
                self.other_lines.join(", ")
            ));
        }
        out
    }
}

/// Checks that at least `min` of `witnesses` cosigned the checkpoint note (C2SP
/// tlog-cosignature, Ed25519 `cosignature/v1` over the note's whole body). Fails, naming every
/// witness and why it does not count, if fewer than `min` cosignatures verify or if a line
/// with a given witness's name and key ID does not verify (a trusted key's bad signature is
/// never ignored). Lines of other keys are ignored. Does not check the log's own signature.
pub fn verify_cosignatures(
    note: &[u8],
    witnesses: &[WitnessKey],
    min: usize,
) -> Result<CosignatureReport, TrustError> {
    if min > witnesses.len() {
        return Err(TrustError::Policy(format!(
            "{min} witness cosignature(s) required but only {} witness key(s) given",
            witnesses.len()
        )));
    }
    let parsed = Note::parse(note).map_err(|e| TrustError::Note(e.to_string()))?;
    let checks = check_witnesses(&parsed, witnesses);
    let other_lines = parsed
        .signatures()
        .iter()
        .filter(|s| !witnesses.iter().any(|w| w.matches(s)))
        .map(|s| format!("{}+{:08x}", s.name, s.key_id))
        .collect();
    let report = CosignatureReport {
        checks,
        required: min,
        other_lines,
    };
    if report.is_ok() {
        Ok(report)
    } else {
        Err(TrustError::Witnesses(report))
    }
}

/// How one signature line of a checkpoint fares against the keyring.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyVerdict {
    /// A keyring key, valid at the checkpoint's time, and its signature verifies.
    Valid,
    /// A keyring key whose signature verifies, but which was not valid at the checkpoint's
    /// time (not yet valid, expired, or revoked at or before it).
    NotValidAtTime { status: KeyStatus, why: String },
    /// A keyring (or `--key`) key whose signature does not verify.
    BadSignature,
    /// Not in the keyring, but one of the extra trusted keys, and it verifies.
    TrustedKey,
    /// Neither in the keyring nor trusted otherwise (e.g. a witness cosignature).
    Unknown,
}

/// One signature line and its verdict.
#[derive(Clone, Debug)]
pub struct KeySignature {
    pub name: String,
    pub key_id: u32,
    pub verdict: KeyVerdict,
}

impl KeySignature {
    pub fn line(&self) -> String {
        let who = format!("{}+{:08x}", self.name, self.key_id);
        match &self.verdict {
            KeyVerdict::Valid => format!("key {who}: signed, valid at the checkpoint's time"),
            KeyVerdict::NotValidAtTime { why, .. } => {
                format!("key {who}: signed, but NOT valid at the checkpoint's time: {why}")
            }
            KeyVerdict::BadSignature => format!("key {who}: signature does NOT verify"),
            KeyVerdict::TrustedKey => {
                format!("key {who}: signed (a --key key that is not in the keyring)")
            }
            KeyVerdict::Unknown => format!("key {who}: not in the keyring (ignored)"),
        }
    }

    fn counts(&self) -> bool {
        matches!(self.verdict, KeyVerdict::Valid | KeyVerdict::TrustedKey)
    }
}

/// Which key signed a checkpoint, and whether it could sign then.
#[derive(Clone, Debug)]
pub struct KeyringReport {
    pub origin: String,
    pub tree_size: u64,
    /// The checkpoint's `time` line (unix seconds).
    pub time: u64,
    pub signatures: Vec<KeySignature>,
}

impl KeyringReport {
    pub fn is_ok(&self) -> bool {
        self.signatures.iter().any(KeySignature::counts)
            && !self
                .signatures
                .iter()
                .any(|s| s.verdict == KeyVerdict::BadSignature)
    }

    pub fn lines(&self) -> Vec<String> {
        self.signatures.iter().map(KeySignature::line).collect()
    }

    pub fn failure(&self) -> String {
        let why = if self
            .signatures
            .iter()
            .any(|s| s.verdict == KeyVerdict::BadSignature)
        {
            "a signature of a keyring key does not verify"
        } else {
            "no signature from a key valid at its time"
        };
        format!(
            "checkpoint of {} at tree size {} (time {}): {why}: {}",
            self.origin,
            self.tree_size,
            format_time(self.time),
            self.lines().join("; ")
        )
    }
}

fn validity_reason(entry: &KeyEntry, time: u64) -> Option<(KeyStatus, String)> {
    let status = entry.status_at(time);
    let why = match status {
        KeyStatus::Active => return None,
        KeyStatus::Revoked => format!(
            "revoked at {}{}, at or before the checkpoint's time {}",
            format_time(entry.revoked_at.unwrap_or_default()),
            entry
                .revocation_reason
                .as_deref()
                .map(|r| format!(" ({r})"))
                .unwrap_or_default(),
            format_time(time)
        ),
        KeyStatus::NotYetValid => format!(
            "valid only from {}, after the checkpoint's time {}",
            format_time(entry.valid_from),
            format_time(time)
        ),
        KeyStatus::Expired => format!(
            "valid until {}, before the checkpoint's time {}",
            format_time(entry.valid_until.unwrap_or_default()),
            format_time(time)
        ),
    };
    Some((status, why))
}

/// Judges every signature line of a checkpoint note against the public keyring: which key
/// signed (name, ID), whether the signature verifies, and whether the key was valid at the
/// checkpoint's `time` line (`valid_from` ≤ time, time before `valid_until`, not revoked at or
/// before time). `extra_keys` (`--key`) not in the keyring are trusted without a window.
/// Fails if no line is from a key valid at that time (naming each key and why), if a keyring
/// or extra key's signature does not verify, or if the checkpoint has no `time` line.
pub fn check_keyring(
    note: &[u8],
    keyring: &PublicKeyring,
    extra_keys: &[VerifierKey],
) -> Result<KeyringReport, TrustError> {
    let parsed = Note::parse(note).map_err(|e| TrustError::Note(e.to_string()))?;
    let body =
        Checkpoint::parse_body(parsed.text()).map_err(|e| TrustError::Note(e.to_string()))?;
    let time = body.time.ok_or_else(|| {
        TrustError::Note(format!(
            "checkpoint of {} at tree size {} has no `time` line: key validity cannot be judged",
            body.origin, body.tree_size
        ))
    })?;
    let text = parsed.text().as_bytes();
    let signatures = parsed
        .signatures()
        .iter()
        .map(|sig| {
            let verdict = if let Some(entry) = keyring.find(&sig.name, sig.key_id) {
                if !entry.verifier.verify(text, &sig.signature) {
                    KeyVerdict::BadSignature
                } else if let Some((status, why)) = validity_reason(entry, time) {
                    KeyVerdict::NotValidAtTime { status, why }
                } else {
                    KeyVerdict::Valid
                }
            } else if let Some(key) = extra_keys
                .iter()
                .find(|k| k.name() == sig.name && k.key_id() == sig.key_id)
            {
                if key.verify(text, &sig.signature) {
                    KeyVerdict::TrustedKey
                } else {
                    KeyVerdict::BadSignature
                }
            } else {
                KeyVerdict::Unknown
            };
            KeySignature {
                name: sig.name.clone(),
                key_id: sig.key_id,
                verdict,
            }
        })
        .collect();
    let report = KeyringReport {
        origin: body.origin,
        tree_size: body.tree_size,
        time,
        signatures,
    };
    if report.is_ok() {
        Ok(report)
    } else {
        Err(TrustError::Keyring(report))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use auditledger_ledger::cosignature::WitnessSigner;
    use auditledger_ledger::keys::Keyring;
    use auditledger_ledger::note::SignerKey;

    fn body(time: u64) -> Checkpoint {
        Checkpoint {
            origin: "auditledger.local/acme/prod".into(),
            tree_size: 3,
            root_hash: [7; 32],
            time: Some(time),
            prev: None,
            other_extensions: vec![],
        }
    }

    #[test]
    fn witness_policy_counts_and_names_each_witness() {
        let log = SignerKey::from_seed("auditledger.local", &[1; 32]).unwrap();
        let w1 = WitnessSigner::from_seed("w1.example", &[2; 32]).unwrap();
        let w2 = WitnessSigner::from_seed("w2.example", &[3; 32]).unwrap();
        let note = body(1000).sign(std::slice::from_ref(&log)).unwrap();
        let cosigned = w1.cosign_note(&note, 1005).unwrap();
        let keys = [w1.witness_key(), w2.witness_key()];
        let report = verify_cosignatures(cosigned.as_bytes(), &keys, 1).unwrap();
        assert_eq!(report.valid(), 1);
        assert!(report.lines()[0].contains("w1.example") && report.lines()[0].contains("1005"));
        let err = verify_cosignatures(cosigned.as_bytes(), &keys, 2)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("1 valid witness cosignature(s) found, 2 required"),
            "{err}"
        );
        assert!(
            err.contains("w2.example") && err.contains("no cosignature"),
            "{err}"
        );
        // A tampered cosignature of a trusted witness fails even if enough others verify.
        let tampered = cosigned.replacen("\n3\n", "\n4\n", 1);
        let err = verify_cosignatures(tampered.as_bytes(), &keys, 0)
            .unwrap_err()
            .to_string();
        assert!(err.contains("does not verify"), "{err}");
        assert!(verify_cosignatures(cosigned.as_bytes(), &keys, 3).is_err());
    }

    #[test]
    fn keyring_judges_each_signature_at_the_checkpoint_time() {
        let dir = tempfile::tempdir().unwrap();
        let mut ring = Keyring::new_at(&dir.path().join("keyring.toml"));
        let old = ring.generate("auditledger.local", 100).unwrap().clone();
        let new = ring.rotate("auditledger.local", 200, None).unwrap();
        ring.revoke(&old.key_id_hex(), 300, "compromised").unwrap();
        let public = PublicKeyring::from_keyring(&ring);
        let old_signer = old.signer.clone().unwrap();
        let new_signer = new.signer.clone().unwrap();

        // Signed by both while both were valid: both reported valid.
        let both = body(250).sign(&[old_signer.clone(), new_signer]).unwrap();
        let report = check_keyring(both.as_bytes(), &public, &[]).unwrap();
        assert!(
            report
                .signatures
                .iter()
                .all(|s| s.verdict == KeyVerdict::Valid)
        );

        // Only the old key, at a time after its revocation: fails naming key and why.
        let late = body(400).sign(std::slice::from_ref(&old_signer)).unwrap();
        let err = check_keyring(late.as_bytes(), &public, &[])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(&format!("{:08x}", old.verifier.key_id())),
            "{err}"
        );
        assert!(
            err.contains("revoked at") && err.contains("compromised"),
            "{err}"
        );
        // Even if the old key is also given as --key: the keyring's window wins.
        assert!(
            check_keyring(
                late.as_bytes(),
                &public,
                std::slice::from_ref(&old.verifier)
            )
            .is_err()
        );

        // Before the old key's valid_from.
        let early = body(50).sign(std::slice::from_ref(&old_signer)).unwrap();
        let err = check_keyring(early.as_bytes(), &public, &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("valid only from"), "{err}");

        // A key outside the keyring counts only when given as --key.
        let stranger = SignerKey::from_seed("other", &[9; 32]).unwrap();
        let foreign = body(250).sign(std::slice::from_ref(&stranger)).unwrap();
        assert!(check_keyring(foreign.as_bytes(), &public, &[]).is_err());
        let report = check_keyring(foreign.as_bytes(), &public, &[stranger.verifier()]).unwrap();
        assert_eq!(report.signatures[0].verdict, KeyVerdict::TrustedKey);

        // A forged line under a keyring key's name and ID fails.
        let forged = both.replacen("\n3\n", "\n5\n", 1);
        let err = check_keyring(forged.as_bytes(), &public, &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("does NOT verify"), "{err}");
    }
}
