//! `auditledger-verify export FILE`: the command-line face of [`auditledger_verifier::export`].

use std::io::IsTerminal as _;
use std::path::PathBuf;

use anyhow::Context as _;
use auditledger_verifier::export::{ExportOptions, verify_export};

/// Verify a retention export (the tar from `Compliance.Export` / `auditledger export`): every
/// leaf hash, that the leaves are complete and contiguous, the root rebuilt from them and the
/// range proof, both signatures and every member's BLAKE3.
#[derive(clap::Args)]
pub struct ExportArgs {
    /// The export tar.
    file: PathBuf,
    /// Trusted verifier key `name+hexid+base64`; repeat for several (any one suffices).
    #[arg(long = "key", required_unless_present = "keyring")]
    keys: Vec<String>,
    /// Witness and keyring requirements on the export's checkpoint.
    #[command(flatten)]
    trust: crate::trust_cli::TrustArgs,
    /// Worker threads (0 = one per core).
    #[arg(long, default_value_t = 0)]
    threads: usize,
}

impl ExportArgs {
    pub fn run(self) -> anyhow::Result<()> {
        let given = crate::parse_keys(&self.keys)?;
        let trust = self.trust.load()?;
        let keys = trust.verifier_keys(&given);
        let file = std::fs::File::open(&self.file)
            .with_context(|| format!("opening {}", self.file.display()))?;
        let size = file.metadata().map(|m| m.len()).unwrap_or(0);
        // A progress bar only for people watching; scripts and CI get the verdict alone.
        let bar = if std::io::stderr().is_terminal() {
            let bar = indicatif::ProgressBar::new(size);
            if let Ok(style) = indicatif::ProgressStyle::with_template(
                "{spinner} verifying {bytes}/{total_bytes} [{bar:30}] {bytes_per_sec} eta {eta}",
            ) {
                bar.set_style(style);
            }
            bar
        } else {
            indicatif::ProgressBar::hidden()
        };
        let started = std::time::Instant::now();
        let report = verify_export(
            std::io::BufReader::with_capacity(1 << 20, file),
            &keys,
            &ExportOptions {
                threads: self.threads,
            },
            &|bytes| bar.inc(bytes),
        )
        .with_context(|| format!("{} does not verify", self.file.display()))?;
        bar.finish_and_clear();
        trust.check(
            "export checkpoint",
            report.checkpoint.note.to_note_string().as_bytes(),
            &given,
        )?;
        let m = &report.manifest;
        let names = |keys: &[auditledger_ledger::note::VerifierKey]| {
            keys.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        };
        println!(
            "OK: export of {} leaves [{}, {}) — {} leaves ({} without content, expired by retention) in {} entries files",
            m.origin, m.start, m.end, report.leaves, report.expired_leaves, report.entries_files
        );
        println!(
            "  root rebuilt from the leaves and the range proof = root of the checkpoint at tree size {} (signed by {})",
            m.tree_size,
            names(&report.checkpoint.signed_by)
        );
        println!(
            "  manifest signed by {}; every member's BLAKE3 matches",
            names(&report.manifest_signed_by)
        );
        if m.from_time != 0 || m.to_time != 0 {
            println!(
                "  requested logged_at window [{}, {}) (unix ns)",
                m.from_time, m.to_time
            );
        }
        println!(
            "  exported at {} (unix s) for {:?}; justification: {:?}",
            m.exported_at, m.requester, m.justification
        );
        let seconds = started.elapsed().as_secs_f64();
        eprintln!(
            "verified {} leaves in {seconds:.2} s ({:.0} leaves/s)",
            report.leaves,
            report.leaves as f64 / seconds.max(1e-9)
        );
        Ok(())
    }
}
