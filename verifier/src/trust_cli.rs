//! Flags for who must vouch for a checkpoint, shared by `checkpoint`, `inclusion` and
//! `consistency`: `--witness VKEY…` / `--min-witnesses N` (C2SP cosignatures) and
//! `--keyring FILE` (which ledger key signed, valid at the checkpoint's time). The checks
//! themselves are the library's [`auditledger_verifier::trust`].

use std::path::PathBuf;

use anyhow::Context as _;
use auditledger_ledger::cosignature::WitnessKey;
use auditledger_ledger::keys::PublicKeyring;
use auditledger_ledger::note::VerifierKey;

#[derive(clap::Args, Clone, Debug)]
pub struct TrustArgs {
    /// Witness verifier key `name+hexid+base64(0x04||pubkey)` whose cosignature counts;
    /// repeat for several.
    #[arg(long = "witness", value_name = "VKEY")]
    pub witnesses: Vec<String>,
    /// Valid witness cosignatures required on each checkpoint (default 1 when --witness is
    /// given).
    #[arg(long, value_name = "N", requires = "witnesses")]
    pub min_witnesses: Option<usize>,
    /// Public keyring (`auditledger keys export`): report which key made each signature and
    /// whether it was valid at the checkpoint's time; fail if no valid key signed. Its keys
    /// are trusted like --key keys, which may then be omitted.
    #[arg(long, value_name = "FILE")]
    pub keyring: Option<PathBuf>,
}

/// The parsed policy.
pub struct Trust {
    witnesses: Vec<WitnessKey>,
    min_witnesses: usize,
    keyring: Option<PublicKeyring>,
}

impl TrustArgs {
    pub fn load(&self) -> anyhow::Result<Trust> {
        let witnesses = self
            .witnesses
            .iter()
            .map(|w| WitnessKey::parse(w))
            .collect::<Result<Vec<_>, _>>()
            .context("parsing --witness")?;
        let keyring = self
            .keyring
            .as_deref()
            .map(PublicKeyring::load)
            .transpose()
            .context("loading --keyring")?;
        Ok(Trust {
            min_witnesses: self
                .min_witnesses
                .unwrap_or(usize::from(!witnesses.is_empty())),
            witnesses,
            keyring,
        })
    }
}

impl Trust {
    /// Keys a log signature may be from: the `--key` keys and every keyring key (whose
    /// validity at the checkpoint's time [`Trust::check`] then judges).
    pub fn verifier_keys(&self, given: &[VerifierKey]) -> Vec<VerifierKey> {
        let mut keys = given.to_vec();
        if let Some(ring) = &self.keyring {
            for k in ring.verifiers() {
                if !keys.contains(&k) {
                    keys.push(k);
                }
            }
        }
        keys
    }

    /// Applies the keyring and witness policies to one checkpoint note (`what` names it in
    /// the output) and prints what they found. `given` are the `--key` keys.
    pub fn check(&self, what: &str, note: &[u8], given: &[VerifierKey]) -> anyhow::Result<()> {
        if let Some(ring) = &self.keyring {
            let report = auditledger_verifier::check_keyring(note, ring, given)
                .with_context(|| format!("{what}: keyring check failed"))?;
            for line in report.lines() {
                println!("{what}: {line}");
            }
        }
        if !self.witnesses.is_empty() || self.min_witnesses > 0 {
            let report = auditledger_verifier::verify_cosignatures(
                note,
                &self.witnesses,
                self.min_witnesses,
            )
            .with_context(|| format!("{what}: witness check failed"))?;
            for line in report.lines() {
                println!("{what}: {line}");
            }
            println!(
                "{what}: OK: {} of {} witness(es) cosigned ({} required)",
                report.valid(),
                self.witnesses.len(),
                self.min_witnesses
            );
        }
        Ok(())
    }
}
