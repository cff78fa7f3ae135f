//! `auditledger-verify`: checks AuditLedger evidence offline. Exit 0 only if it verifies.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use auditledger_ledger::note::VerifierKey;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "auditledger-verify",
    version,
    about = "Verify AuditLedger checkpoints offline"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Verify a signed checkpoint note (and optionally that it follows a previous one).
    Checkpoint {
        /// File holding the signed note.
        file: PathBuf,
        /// Trusted verifier key `name+hexid+base64`; repeat for several (any one suffices).
        #[arg(long = "key", required = true)]
        keys: Vec<String>,
        /// Required origin line.
        #[arg(long)]
        origin: Option<String>,
        /// The checkpoint this one must directly follow (its `prev` line).
        #[arg(long)]
        previous: Option<PathBuf>,
    },
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Checkpoint {
            file,
            keys,
            origin,
            previous,
        } => {
            let keys = keys
                .iter()
                .map(|k| VerifierKey::parse(k))
                .collect::<Result<Vec<_>, _>>()
                .context("parsing --key")?;
            let note =
                std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
            let prev = previous
                .map(|p| std::fs::read(&p).with_context(|| format!("reading {}", p.display())))
                .transpose()?;
            let v = auditledger_verifier::verify_checkpoint(
                &note,
                &keys,
                origin.as_deref(),
                prev.as_deref(),
            )?;
            println!(
                "OK: checkpoint of {} at tree size {} root {} signed by {}",
                v.checkpoint.origin,
                v.checkpoint.tree_size,
                hex::encode(v.checkpoint.root_hash),
                v.signed_by
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("FAILED: {e:#}");
            ExitCode::from(1)
        }
    }
}
