//! `auditledger-verify`: checks AuditLedger evidence offline. Exit 0 only if it verifies.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use auditledger_ledger::note::VerifierKey;
use auditledger_verifier::proof_json::{ConsistencyProofFile, InclusionProofFile};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "auditledger-verify",
    version,
    about = "Verify AuditLedger checkpoints and proofs offline"
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
    /// Verify an inclusion proof saved as JSON (the protobuf JSON of `InclusionProof`, e.g.
    /// grpcurl's output of `Log/GetInclusionProof`): the signed checkpoint it carries, then
    /// the path from the leaf (or, for expired contents, its leaf hash) to the root.
    Inclusion {
        file: PathBuf,
        #[arg(long = "key", required = true)]
        keys: Vec<String>,
    },
    /// Verify that NEW's log is an append-only extension of OLD's: both signed checkpoints
    /// and a consistency proof (protobuf JSON of `ConsistencyProof`).
    Consistency {
        old: PathBuf,
        new: PathBuf,
        #[arg(long)]
        proof: PathBuf,
        #[arg(long = "key", required = true)]
        keys: Vec<String>,
    },
}

fn parse_keys(keys: &[String]) -> anyhow::Result<Vec<VerifierKey>> {
    keys.iter()
        .map(|k| VerifierKey::parse(k))
        .collect::<Result<Vec<_>, _>>()
        .context("parsing --key")
}

fn read(path: &std::path::Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("reading {}", path.display()))
}

fn read_text(path: &std::path::Path) -> anyhow::Result<String> {
    String::from_utf8(read(path)?).with_context(|| format!("{} is not UTF-8", path.display()))
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Checkpoint {
            file,
            keys,
            origin,
            previous,
        } => {
            let keys = parse_keys(&keys)?;
            let note = read(&file)?;
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
        Command::Inclusion { file, keys } => {
            let keys = parse_keys(&keys)?;
            let p = InclusionProofFile::parse(&read_text(&file)?)
                .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
            let (v, what) = if p.leaf.is_empty() {
                let hash: [u8; 32] = p
                    .leaf_hash
                    .as_deref()
                    .and_then(|h| h.try_into().ok())
                    .context("the proof has no leaf and no 32-byte leafHash to verify")?;
                let v = auditledger_verifier::verify_inclusion_of_hash(
                    &hash,
                    p.leaf_index,
                    &p.hashes,
                    p.checkpoint_note.as_bytes(),
                    &keys,
                )?;
                (v, "leaf hash (no contents in the proof)")
            } else {
                if let Some(h) = &p.leaf_hash
                    && h.as_slice() != auditledger_ledger::merkle::leaf_hash(&p.leaf)
                {
                    anyhow::bail!(
                        "leafHash {} is not the hash of the leaf bytes in the proof",
                        hex::encode(h)
                    );
                }
                let v = auditledger_verifier::verify_inclusion(
                    &p.leaf,
                    p.leaf_index,
                    &p.hashes,
                    p.checkpoint_note.as_bytes(),
                    &keys,
                )?;
                (v, "leaf contents")
            };
            if p.tree_size != 0 && p.tree_size != v.checkpoint.tree_size {
                anyhow::bail!(
                    "the proof says tree size {} but its checkpoint is of size {}",
                    p.tree_size,
                    v.checkpoint.tree_size
                );
            }
            println!(
                "OK: leaf {} is in {} at tree size {} (checked: {what}; checkpoint signed by {})",
                p.leaf_index,
                v.checkpoint.origin,
                v.checkpoint.tree_size,
                v.signed_by
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        Command::Consistency {
            old,
            new,
            proof,
            keys,
        } => {
            let keys = parse_keys(&keys)?;
            let (old_note, new_note) = (read(&old)?, read(&new)?);
            let p = ConsistencyProofFile::parse(&read_text(&proof)?)
                .map_err(|e| anyhow::anyhow!("{}: {e}", proof.display()))?;
            let a = auditledger_verifier::verify_checkpoint(&old_note, &keys, None, None)?;
            let b = auditledger_verifier::verify_checkpoint(&new_note, &keys, None, None)?;
            if (p.first, p.second) != (a.checkpoint.tree_size, b.checkpoint.tree_size) {
                anyhow::bail!(
                    "the proof is from size {} to {}, the checkpoints are of sizes {} and {}",
                    p.first,
                    p.second,
                    a.checkpoint.tree_size,
                    b.checkpoint.tree_size
                );
            }
            auditledger_verifier::verify_consistency(&old_note, &new_note, &p.hashes, &keys)?;
            println!(
                "OK: {} at tree size {} extends tree size {} (append-only)",
                b.checkpoint.origin, b.checkpoint.tree_size, a.checkpoint.tree_size
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
