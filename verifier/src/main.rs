//! `auditledger-verify`: checks AuditLedger evidence offline. Exit 0 only if it verifies.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use auditledger_ledger::note::VerifierKey;
use auditledger_verifier::proof_json::{ConsistencyProofFile, InclusionProofFile};
use clap::{Parser, Subcommand};
use live_args::{MonitorArgs, ServerArgs};

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
        /// File holding the signed note. Optional with --server: then the server's latest
        /// checkpoint is verified, and if FILE is given too, that the server's log extends it.
        #[arg(required_unless_present = "server")]
        file: Option<PathBuf>,
        /// Trusted verifier key `name+hexid+base64`; repeat for several (any one suffices).
        #[arg(long = "key", required_unless_present = "keyring")]
        keys: Vec<String>,
        /// Required origin line.
        #[arg(long)]
        origin: Option<String>,
        /// The checkpoint this one must directly follow (its `prev` line).
        #[arg(long)]
        previous: Option<PathBuf>,
        #[command(flatten)]
        live: ServerArgs,
        #[command(flatten)]
        trust: trust_cli::TrustArgs,
    },
    /// Verify an inclusion proof saved as JSON (the protobuf JSON of `InclusionProof`, e.g.
    /// grpcurl's output of `Log/GetInclusionProof`): the signed checkpoint it carries, then
    /// the path from the leaf (or, for expired contents, its leaf hash) to the root. A
    /// `Log/GetInclusionProofs` response is checked proof by proof against its one checkpoint.
    Inclusion {
        file: PathBuf,
        #[arg(long = "key", required_unless_present = "keyring")]
        keys: Vec<String>,
        /// With --server: also check that the server's latest checkpoint extends the proof's.
        #[command(flatten)]
        live: ServerArgs,
        #[command(flatten)]
        trust: trust_cli::TrustArgs,
    },
    /// Verify that NEW's log is an append-only extension of OLD's: both signed checkpoints
    /// and a consistency proof (protobuf JSON of `ConsistencyProof`).
    Consistency {
        old: PathBuf,
        new: PathBuf,
        /// The proof file; with --server the proof is fetched instead.
        #[arg(long, required_unless_present = "server")]
        proof: Option<PathBuf>,
        #[arg(long = "key", required_unless_present = "keyring")]
        keys: Vec<String>,
        #[command(flatten)]
        live: ServerArgs,
        #[command(flatten)]
        trust: trust_cli::TrustArgs,
    },
    /// Follow a log's checkpoints on a server: verify each, prove it extends the pinned one
    /// (kept in --state), alert on a fork or rollback (exit 2; other errors exit 1).
    Monitor(MonitorArgs),
    /// Verify a retention export tar completely (DESIGN §7); exit 0 only if it verifies.
    Export(export_cli::ExportArgs),
    /// Verify every segment of a warm or cold tier (directory, file:// or s3:// URL): its
    /// signed manifest, object, rows and root, and its anchor into the checkpoint chain.
    Archive(auditledger_verifier::archive::ArchiveArgs),
}

mod export_cli;
mod trust_cli;

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
            live,
            trust,
        } => {
            let trust = trust.load()?;
            let given = parse_keys(&keys)?;
            let keys = trust.verifier_keys(&given);
            let note = match &file {
                Some(file) => read(file)?,
                None => live.fetch_latest(&keys)?,
            };
            let prev = previous
                .map(|p| std::fs::read(&p).with_context(|| format!("reading {}", p.display())))
                .transpose()?;
            let v = auditledger_verifier::verify_checkpoint(
                &note,
                &keys,
                origin.as_deref(),
                prev.as_deref(),
            )?;
            trust.check("checkpoint", &note, &given)?;
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
            if file.is_some() {
                live.check_server_extends(&note, &keys)?;
            }
        }
        Command::Inclusion {
            file,
            keys,
            live,
            trust,
        } => {
            let trust = trust.load()?;
            let given = parse_keys(&keys)?;
            let keys = trust.verifier_keys(&given);
            let proofs = InclusionProofFile::parse_all(&read_text(&file)?)
                .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
            let batch = proofs.len() > 1;
            // A batch's proofs share one checkpoint: its signature is checked once.
            let mut verified: Option<(&str, auditledger_ledger::checkpoint::VerifiedCheckpoint)> =
                None;
            let mut all_contents = true;
            for (i, p) in proofs.iter().enumerate() {
                let in_batch = |e: anyhow::Error| {
                    if batch {
                        e.context(format!("proofs[{i}] (leaf {})", p.leaf_index))
                    } else {
                        e
                    }
                };
                let note = p.checkpoint_note.as_str();
                if verified.as_ref().is_none_or(|(n, _)| *n != note) {
                    let v = auditledger_ledger::checkpoint::open(note.as_bytes(), &keys)
                        .map_err(|e| in_batch(auditledger_verifier::VerifyError::from(e).into()))?;
                    verified = Some((note, v));
                }
                let (_, v) = verified.as_ref().expect("opened above");
                all_contents &= verify_inclusion_file(p, v).map_err(in_batch)?;
            }
            let (_, v) = verified.context("the file holds no proof")?;
            let what = if all_contents {
                "leaf contents"
            } else {
                "leaf hash (no contents in the proof)"
            };
            let checkpoint_note = proofs[0].checkpoint_note.clone();
            trust.check("proof checkpoint", checkpoint_note.as_bytes(), &given)?;
            let leaves = if batch {
                let mut listed: Vec<String> = proofs
                    .iter()
                    .take(10)
                    .map(|p| p.leaf_index.to_string())
                    .collect();
                if proofs.len() > 10 {
                    listed.push("…".into());
                }
                format!("{} leaves ({}) are", proofs.len(), listed.join(", "))
            } else {
                format!("leaf {} is", proofs[0].leaf_index)
            };
            println!(
                "OK: {leaves} in {} at tree size {} (checked: {what}; checkpoint signed by {})",
                v.checkpoint.origin,
                v.checkpoint.tree_size,
                v.signed_by
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            live.check_server_extends(checkpoint_note.as_bytes(), &keys)?;
        }
        Command::Consistency {
            old,
            new,
            proof,
            keys,
            live,
            trust,
        } => {
            let trust = trust.load()?;
            let given = parse_keys(&keys)?;
            let keys = trust.verifier_keys(&given);
            let (old_note, new_note) = (read(&old)?, read(&new)?);
            let a = auditledger_verifier::verify_checkpoint(&old_note, &keys, None, None)?;
            let b = auditledger_verifier::verify_checkpoint(&new_note, &keys, None, None)?;
            trust.check("OLD", &old_note, &given)?;
            trust.check("NEW", &new_note, &given)?;
            let p = match proof {
                Some(proof) => ConsistencyProofFile::parse(&read_text(&proof)?)
                    .map_err(|e| anyhow::anyhow!("{}: {e}", proof.display()))?,
                None => live.fetch_consistency_proof(&a, &b)?,
            };
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
        Command::Monitor(args) => args.run()?,
        Command::Export(args) => args.run()?,
        Command::Archive(args) => args.run()?,
    }
    Ok(())
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => match live_args::alert_exit_code(&e) {
            // A fork or rollback: one line saying what and where, its own exit code.
            Some(code) => {
                eprintln!("ALERT: {e:#}");
                ExitCode::from(code)
            }
            None => {
                eprintln!("FAILED: {e:#}");
                ExitCode::from(1)
            }
        },
    }
}

/// Flags of the live checks (`--server …`) and of `monitor`; the work itself is in the
/// library's `live` and `monitor` modules.
mod live_args {
    use std::path::PathBuf;
    use std::time::Duration;

    use anyhow::Context as _;
    use auditledger_ledger::checkpoint::VerifiedCheckpoint;
    use auditledger_ledger::note::VerifierKey;
    use auditledger_verifier::grpc::ClientOptions;
    use auditledger_verifier::live::{LiveError, LogTarget};
    use auditledger_verifier::monitor::{self, MonitorError, MonitorOptions};
    use auditledger_verifier::proof_json::ConsistencyProofFile;

    /// Where and as whom to check live.
    #[derive(clap::Args, Clone, Debug)]
    pub struct ServerArgs {
        /// gRPC server for live checks: http://HOST:PORT (HTTP/2 without TLS, loopback) or
        /// https://HOST:PORT (TLS).
        #[arg(long, requires_all = ["tenant", "environment"])]
        pub server: Option<String>,
        /// Bearer token (role auditor is enough: checkpoints and consistency proofs).
        #[arg(long, env = "AUDITLEDGER_TOKEN", hide_env_values = true)]
        pub token: Option<String>,
        /// Tenant of the log to check.
        #[arg(long)]
        pub tenant: Option<String>,
        /// Environment of the log to check.
        #[arg(long = "env")]
        pub environment: Option<String>,
        /// Limit for each call to the server, connecting included.
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
        pub timeout: Duration,
        /// PEM CA bundle trusted for https:// (default: the system's roots).
        #[arg(long)]
        pub ca_cert: Option<PathBuf>,
        /// PEM client certificate chain for mutual TLS (with --client-key).
        #[arg(long, requires = "client_key")]
        pub client_cert: Option<PathBuf>,
        /// PEM private key of --client-cert.
        #[arg(long, requires = "client_cert")]
        pub client_key: Option<PathBuf>,
    }

    fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("starting the async runtime")
    }

    impl ServerArgs {
        fn options(&self, server: &str) -> ClientOptions {
            ClientOptions {
                url: server.to_owned(),
                token: self.token.clone(),
                timeout: self.timeout,
                ca_cert: self.ca_cert.clone(),
                client_cert: self.client_cert.clone(),
                client_key: self.client_key.clone(),
            }
        }

        /// The target log, `None` without --server.
        fn target(&self) -> anyhow::Result<Option<LogTarget>> {
            let Some(server) = &self.server else {
                return Ok(None);
            };
            let (Some(tenant), Some(environment)) = (&self.tenant, &self.environment) else {
                anyhow::bail!("--server needs --tenant and --env");
            };
            Ok(Some(LogTarget::new(
                &self.options(server),
                tenant,
                environment,
            )?))
        }

        fn require_target(&self) -> anyhow::Result<LogTarget> {
            self.target()?
                .context("give a FILE or --server URL --tenant T --env E")
        }

        /// The note of the server's latest checkpoint (verified with `keys`).
        pub fn fetch_latest(&self, keys: &[VerifierKey]) -> anyhow::Result<Vec<u8>> {
            let mut target = self.require_target()?;
            let (note, _) = runtime()?.block_on(target.latest_checkpoint(keys))?;
            println!("fetched the latest checkpoint from {}", target.url());
            Ok(note.into_bytes())
        }

        /// With --server: that the server's latest checkpoint extends `trusted_note`.
        pub fn check_server_extends(
            &self,
            trusted_note: &[u8],
            keys: &[VerifierKey],
        ) -> anyhow::Result<()> {
            let Some(mut target) = self.target()? else {
                return Ok(());
            };
            let check = runtime()?.block_on(target.check_latest_extends(trusted_note, keys))?;
            println!("OK: {} on {}", check.describe(), target.url());
            Ok(())
        }

        /// `GetConsistencyProof` between two verified checkpoints.
        pub fn fetch_consistency_proof(
            &self,
            old: &VerifiedCheckpoint,
            new: &VerifiedCheckpoint,
        ) -> anyhow::Result<ConsistencyProofFile> {
            let mut target = self.require_target()?;
            let (first, second) = (old.checkpoint.tree_size, new.checkpoint.tree_size);
            if first > second {
                anyhow::bail!(
                    "OLD has tree size {first}, larger than NEW's {second}: NEW cannot extend it"
                );
            }
            let hashes = if first == 0 {
                Vec::new() // the empty tree is a prefix of every tree; nothing to fetch
            } else {
                runtime()?.block_on(target.consistency_proof(first, second))?
            };
            println!(
                "fetched the consistency proof {first} → {second} from {}",
                target.url()
            );
            Ok(ConsistencyProofFile {
                first,
                second,
                hashes,
            })
        }
    }

    #[derive(clap::Args, Debug)]
    pub struct MonitorArgs {
        /// Trusted verifier key `name+hexid+base64`; repeat for several (any one suffices).
        #[arg(long = "key", required = true)]
        keys: Vec<String>,
        /// State file pinning the last trusted checkpoint (created on the first run).
        #[arg(long)]
        state: PathBuf,
        /// Time between polls.
        #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
        interval: Duration,
        /// Stop after this many polls (default: run until SIGINT/SIGTERM).
        #[arg(long)]
        iterations: Option<u64>,
        /// Checkpoint file to trust on the first run instead of the server's first answer;
        /// it must verify. Ignored once the state file exists.
        #[arg(long)]
        pin: Option<PathBuf>,
        /// Consecutive failed polls (server unreachable, timeouts, no checkpoint yet)
        /// tolerated before exiting 1; each is retried at the next interval.
        #[arg(long, default_value_t = 3)]
        max_failures: u32,
        #[command(flatten)]
        live: ServerArgs,
    }

    impl MonitorArgs {
        pub fn run(self) -> anyhow::Result<()> {
            let keys = super::parse_keys(&self.keys)?;
            let (Some(server), Some(tenant), Some(environment)) =
                (&self.live.server, &self.live.tenant, &self.live.environment)
            else {
                anyhow::bail!("monitor needs --server URL --tenant T --env E");
            };
            let options = MonitorOptions {
                client: self.live.options(server),
                tenant: tenant.clone(),
                environment: environment.clone(),
                keys,
                state: self.state,
                pin: self.pin,
                interval: self.interval,
                iterations: self.iterations,
                max_failures: self.max_failures,
            };
            runtime()?.block_on(monitor::run(&options))?;
            Ok(())
        }
    }

    /// The exit code of a fork or rollback, `None` for every other error.
    pub fn alert_exit_code(e: &anyhow::Error) -> Option<u8> {
        if let Some(m) = e.downcast_ref::<MonitorError>() {
            return matches!(m, MonitorError::Alert(_)).then_some(monitor::EXIT_ALERT);
        }
        e.downcast_ref::<LiveError>()
            .filter(|l| l.is_alert())
            .map(|_| monitor::EXIT_ALERT)
    }
}

/// Checks one inclusion proof against its checkpoint, opened (signature verified) by the
/// caller: from the leaf bytes when it has them, else from its leaf hash. Returns whether the
/// leaf bytes were checked (not just their hash).
fn verify_inclusion_file(
    p: &InclusionProofFile,
    v: &auditledger_ledger::checkpoint::VerifiedCheckpoint,
) -> anyhow::Result<bool> {
    let (hash, contents) = if p.leaf.is_empty() {
        let hash: [u8; 32] = p
            .leaf_hash
            .as_deref()
            .and_then(|h| h.try_into().ok())
            .context("the proof has no leaf and no 32-byte leafHash to verify")?;
        (hash, false)
    } else {
        let hash = auditledger_ledger::merkle::leaf_hash(&p.leaf);
        if let Some(h) = &p.leaf_hash
            && h.as_slice() != hash
        {
            anyhow::bail!(
                "leafHash {} is not the hash of the leaf bytes in the proof",
                hex::encode(h)
            );
        }
        (hash, true)
    };
    auditledger_verifier::verify_inclusion_in(v, &hash, p.leaf_index, &p.hashes)?;
    if p.tree_size != 0 && p.tree_size != v.checkpoint.tree_size {
        anyhow::bail!(
            "the proof says tree size {} but its checkpoint is of size {}",
            p.tree_size,
            v.checkpoint.tree_size
        );
    }
    Ok(contents)
}
