//! `auditledger`: the AuditLedger service and its administration commands (DESIGN §9).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use auditledger_ingest::config::Config;
use auditledger_ingest::{commands, logging, serve, tiering};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "auditledger",
    version,
    about = "Verifiable audit ledger for AI agents' tool calls"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create DIR/config.toml (documented defaults, data under DIR) and a signing key; print
    /// the verifier key.
    Init {
        dir: PathBuf,
        /// Segment size 2^N leaves for logs created under this config.
        #[arg(long, value_name = "N")]
        segment_bits: Option<u8>,
        /// Origin prefix of every log (default auditledger.local).
        #[arg(long)]
        origin_prefix: Option<String>,
        /// Name of the signing key (default: the origin prefix).
        #[arg(long)]
        key_name: Option<String>,
    },
    /// Signing keys.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Recheck every log: leaves, tiles, indexes, checkpoint signatures, roots and chain.
    /// Exit 0 only if everything verifies. Run it while the server is stopped.
    Fsck {
        #[arg(long, env = "AUDITLEDGER_CONFIG")]
        config: PathBuf,
    },
    /// One archiver pass now: move every full segment whose newest event is older than
    /// DURATION one tier down (hot → warm, or warm → cold), verifying each copy before the
    /// source is removed. Run it while the server is stopped (it opens the ledger).
    Archive {
        /// Required: one pass, then exit (the server runs passes every tiers.archive_interval).
        #[arg(long, required = true)]
        once: bool,
        #[arg(long, env = "AUDITLEDGER_CONFIG")]
        config: PathBuf,
        /// Destination tier: warm or cold.
        #[arg(long)]
        tier: auditledger_ledger::segments::Tier,
        /// Minimum age of a segment's newest event, e.g. 0s, 90days.
        #[arg(long, value_parser = humantime::parse_duration)]
        older_than: std::time::Duration,
    },
    /// Per log: leaves, segments, bytes and time span in each tier, and segments due to move.
    Tiers {
        #[arg(long, env = "AUDITLEDGER_CONFIG")]
        config: PathBuf,
    },
    /// Append a demo batch (tool call, approval, denied access), sign a checkpoint, verify a proof.
    Demo {
        #[arg(long, env = "AUDITLEDGER_CONFIG")]
        config: PathBuf,
    },
    /// Serve gRPC (Ingest, Log, Admin, health, reflection), metrics and the archiver until
    /// SIGTERM/SIGINT.
    Serve {
        #[arg(long, env = "AUDITLEDGER_CONFIG")]
        config: PathBuf,
        /// Listen address (overrides server.listen), e.g. 127.0.0.1:50051; port 0 picks one.
        #[arg(long)]
        listen: Option<String>,
    },
    /// Send the demo batch to a running server over gRPC and print the receipts, proofs and
    /// checkpoint (a first event, the way a gateway sends it).
    Append {
        /// Server URL.
        #[arg(long, default_value = "http://127.0.0.1:50051")]
        target: String,
        /// Gateway bearer token.
        #[arg(long, env = "AUDITLEDGER_TOKEN")]
        token: String,
        #[arg(long, default_value = "demo")]
        tenant: String,
        #[arg(long, default_value = "dev")]
        env: String,
    },
    /// Pull a signed retention export (DESIGN §7) from a running server into a tar file; check
    /// it with `auditledger-verify export FILE --key …`. Role compliance (or admin).
    Export {
        /// Server URL.
        #[arg(long, default_value = "http://127.0.0.1:50051")]
        target: String,
        /// Compliance bearer token.
        #[arg(long, env = "AUDITLEDGER_TOKEN")]
        token: String,
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        env: String,
        /// First leaf index (with --end; exclusive end).
        #[arg(long, requires = "end", conflicts_with_all = ["from", "to"])]
        start: Option<u64>,
        #[arg(long, requires = "start")]
        end: Option<u64>,
        /// Start of the logged_at window: RFC 3339 (2026-11-23T10:00:00Z) or unix nanoseconds.
        #[arg(long)]
        from: Option<String>,
        /// End of the logged_at window (exclusive); default: everything up to the latest checkpoint.
        #[arg(long)]
        to: Option<String>,
        /// Why the export is made; written into the signed manifest and the system log.
        #[arg(long)]
        justification: String,
        /// Output file: the signed tar, or with `--format ocsf-jsonl` the OCSF lines.
        #[arg(long)]
        out: PathBuf,
        /// `tar`: the signed export (evidence). `ocsf-jsonl`: one OCSF API Activity object per
        /// event for a SIEM, converted from the signed tar (a convenience, not evidence).
        #[arg(long, value_enum, default_value = "tar")]
        format: ExportFormat,
    },
    /// Bearer tokens.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Event search on a running server (Investigate.FindEvents; role investigator or admin).
    Events {
        #[command(subcommand)]
        command: EventsCommand,
    },
}

#[derive(Subcommand)]
enum EventsCommand {
    /// Find events matching every given filter, over all tiers; each search is recorded in the
    /// system log with the justification.
    Find(Box<FindArgs>),
}

#[derive(clap::Args)]
struct FindArgs {
    /// Server URL.
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    target: String,
    /// Investigator (or admin) bearer token.
    #[arg(long, env = "AUDITLEDGER_TOKEN")]
    token: String,
    #[arg(long)]
    tenant: String,
    #[arg(long)]
    env: String,
    /// logged_at from (inclusive): RFC 3339 or unix nanoseconds.
    #[arg(long)]
    from: Option<String>,
    /// logged_at to (exclusive): RFC 3339 or unix nanoseconds.
    #[arg(long)]
    to: Option<String>,
    /// Event kind: tool_call, tool_result, approval, … or EVENT_KIND_* (see event.proto).
    #[arg(long)]
    kind: Option<String>,
    #[arg(long)]
    user: Option<String>,
    #[arg(long)]
    agent: Option<String>,
    #[arg(long)]
    tool_server: Option<String>,
    #[arg(long)]
    tool: Option<String>,
    #[arg(long)]
    session: Option<String>,
    #[arg(long)]
    correlation: Option<String>,
    #[arg(long)]
    trace: Option<String>,
    /// Decision: allow, deny, … or DECISION_* (see event.proto).
    #[arg(long)]
    decision: Option<String>,
    #[arg(long)]
    classification: Option<String>,
    #[arg(long)]
    event_id: Option<String>,
    /// Newest first (default: oldest first).
    #[arg(long)]
    newest_first: bool,
    /// Events per page (0 = the server's default; capped by its config).
    #[arg(long, default_value_t = 0)]
    limit: u32,
    /// Continue a search (the token printed by the previous page).
    #[arg(long, default_value = "")]
    page_token: String,
    /// Fetch every page.
    #[arg(long)]
    all_pages: bool,
    /// Ask for an inclusion proof per event (printed with --format jsonl).
    #[arg(long)]
    with_proofs: bool,
    /// Why the search is made (required; recorded in the system log).
    #[arg(long)]
    justification: String,
    #[arg(long, value_enum, default_value = "table")]
    format: auditledger_ingest::investigate::OutputFormat,
}

/// What `auditledger export` writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum ExportFormat {
    /// The signed retention export (DESIGN §7): the evidence.
    Tar,
    /// One OCSF API Activity (6003) JSON object per event, for SIEMs; not evidence.
    OcsfJsonl,
}

/// An enum value by its proto name, with or without the prefix, any case.
fn proto_enum(
    flag: &str,
    value: &str,
    prefix: &str,
    names: &dyn Fn(&str) -> Option<i32>,
) -> anyhow::Result<i32> {
    let upper = value.to_ascii_uppercase();
    names(&upper)
        .or_else(|| names(&format!("{prefix}{upper}")))
        .ok_or_else(|| anyhow::anyhow!("--{flag} {value:?} is not a known value"))
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Create a token; store its hash; print the token alone on the last line of stdout.
    Create {
        #[arg(long, env = "AUDITLEDGER_CONFIG")]
        config: PathBuf,
        /// Tenant the token covers; repeat for several (`*` = all tenants but _system).
        #[arg(long = "tenant", required = true)]
        tenants: Vec<String>,
        /// Environment the token covers; repeat for several (`*` = all).
        #[arg(long = "env", required = true)]
        environments: Vec<String>,
        /// gateway, investigator, compliance, auditor or admin.
        #[arg(long)]
        role: String,
        /// Lifetime, e.g. 30d, 12h (default: no expiry).
        #[arg(long)]
        ttl: Option<String>,
        /// Principal name recorded with every action (default: derived from role and scope).
        #[arg(long)]
        name: Option<String>,
    },
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Print the verifier key (name+hexid+base64) of every active key, one per line.
    List {
        #[arg(long, env = "AUDITLEDGER_CONFIG")]
        config: PathBuf,
    },
    /// Write the public keyring (every key's verifier key and validity window, no secrets) for
    /// `auditledger-verify --keyring`: to --out, or to stdout.
    Export {
        #[arg(long, env = "AUDITLEDGER_CONFIG")]
        config: PathBuf,
        /// File to write (atomically); default stdout.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Add a new signing key, active from now alongside the existing ones; print its verifier key.
    Generate {
        #[arg(long, env = "AUDITLEDGER_CONFIG")]
        config: PathBuf,
        /// Key name (default: the origin prefix).
        #[arg(long)]
        name: Option<String>,
    },
    /// Rotate the signing key of a running server (Admin.RotateSigningKey; an admin token of
    /// tenant `_system`): a new key signs from now on, the previous ones keep signing for
    /// --overlap; recorded in the system log. Prints the new key.
    Rotate {
        #[command(flatten)]
        server: AdminTarget,
        /// Name of the new key (default: the current key name).
        #[arg(long)]
        name: Option<String>,
        /// How long the previous keys keep signing next to the new one (e.g. 7d; 0s = until
        /// revoked).
        #[arg(long, default_value = "7d")]
        overlap: String,
        /// Why; recorded in the system log.
        #[arg(long)]
        justification: String,
    },
    /// Revoke a key on a running server (Admin.RevokeKey): it stops signing at once; recorded in
    /// the system log.
    Revoke {
        #[command(flatten)]
        server: AdminTarget,
        /// Key ID, 8 hex digits (see `keys status`).
        #[arg(long)]
        key_id: String,
        /// Why; recorded in the system log and the keyring.
        #[arg(long)]
        reason: String,
    },
    /// Every key of a running server's keyring with its validity and whether it signs now
    /// (Admin.ListKeys).
    Status {
        #[command(flatten)]
        server: AdminTarget,
    },
}

/// Where a key command reaches the server.
#[derive(clap::Args)]
struct AdminTarget {
    /// Server URL.
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    target: String,
    /// Admin bearer token (of tenant `_system` for rotation and revocation).
    #[arg(long, env = "AUDITLEDGER_TOKEN")]
    token: String,
}

/// Runs a client command's future on a small runtime.
fn block_on<T>(future: impl std::future::Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(future)
}

fn load(config: &std::path::Path) -> anyhow::Result<Config> {
    Config::load(config).with_context(|| format!("loading {}", config.display()))
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Init {
            dir,
            segment_bits,
            origin_prefix,
            key_name,
        } => {
            let vkey = commands::init(
                &dir,
                segment_bits,
                origin_prefix.as_deref(),
                key_name.as_deref(),
            )?;
            eprintln!("created {}", commands::config_path_in(&dir).display());
            println!("{vkey}");
        }
        Command::Keys { command } => match command {
            KeysCommand::List { config } => {
                for k in commands::keys_list(&load(&config)?)? {
                    println!("{k}");
                }
            }
            KeysCommand::Export { config, out } => {
                let text = commands::keys_export(&load(&config)?, out.as_deref())?;
                match &out {
                    Some(out) => eprintln!("wrote the public keyring to {}", out.display()),
                    None => print!("{text}"),
                }
            }
            KeysCommand::Generate { config, name } => {
                println!(
                    "{}",
                    commands::keys_generate(&load(&config)?, name.as_deref())?
                );
            }
            KeysCommand::Rotate {
                server,
                name,
                overlap,
                justification,
            } => {
                let overlap = humantime::parse_duration(&overlap)
                    .with_context(|| format!("--overlap {overlap:?}"))?;
                let request = auditledger_proto::v1::RotateSigningKeyRequest {
                    key_name: name.unwrap_or_default(),
                    overlap_seconds: overlap.as_secs(),
                    justification,
                };
                let key = block_on(commands::keys_rotate(
                    &server.target,
                    &server.token,
                    request,
                ))?;
                println!("{}", commands::key_info_line(&key));
            }
            KeysCommand::Revoke {
                server,
                key_id,
                reason,
            } => {
                let request = auditledger_proto::v1::RevokeKeyRequest { key_id, reason };
                let key = block_on(commands::keys_revoke(
                    &server.target,
                    &server.token,
                    request,
                ))?;
                println!("{}", commands::key_info_line(&key));
            }
            KeysCommand::Status { server } => {
                for key in block_on(commands::keys_status(&server.target, &server.token))? {
                    println!("{}", commands::key_info_line(&key));
                }
            }
        },
        Command::Fsck { config } => {
            let (lines, clean) = commands::fsck(&load(&config)?)?;
            for l in lines {
                println!("{l}");
            }
            if !clean {
                return Ok(ExitCode::from(1));
            }
        }
        Command::Archive {
            once: _,
            config,
            tier,
            older_than,
        } => {
            let config = load(&config)?;
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("starting the tokio runtime")?;
            let (lines, ok) = runtime.block_on(tiering::archive_once(&config, tier, older_than))?;
            for l in lines {
                println!("{l}");
            }
            if !ok {
                return Ok(ExitCode::from(1));
            }
        }
        Command::Tiers { config } => {
            for l in commands::tiers(&load(&config)?)? {
                println!("{l}");
            }
        }
        Command::Demo { config } => {
            for l in commands::demo(&load(&config)?)? {
                println!("{l}");
            }
        }
        Command::Serve { config, listen } => {
            let config = load(&config)?;
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .thread_name("auditledger-rt")
                .build()
                .context("starting the tokio runtime")?;
            runtime.block_on(serve::serve(config, listen))?;
        }
        Command::Append {
            target,
            token,
            tenant,
            env,
        } => {
            for line in block_on(commands::append_demo(&target, &token, &tenant, &env))? {
                println!("{line}");
            }
        }
        Command::Export {
            target,
            token,
            tenant,
            env,
            start,
            end,
            from,
            to,
            justification,
            out,
            format,
        } => {
            let time = |flag: &str, value: Option<&str>| -> anyhow::Result<u64> {
                value.map_or(Ok(0), |v| {
                    commands::parse_time_nanos(v).with_context(|| format!("--{flag} {v:?}"))
                })
            };
            let (from_time, to_time) = (time("from", from.as_deref())?, time("to", to.as_deref())?);
            if start.is_none() && from_time == 0 && to_time == 0 {
                anyhow::bail!("give a leaf range (--start, --end) or a time window (--from, --to)");
            }
            // OCSF: the signed tar goes to a temporary file beside --out and is converted.
            let tar_dir = match out.parent() {
                Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
                _ => PathBuf::from("."),
            };
            let tar_tmp = match format {
                ExportFormat::Tar => None,
                ExportFormat::OcsfJsonl => Some(
                    tempfile::Builder::new()
                        .prefix(".export-")
                        .suffix(".tar")
                        .tempfile_in(&tar_dir)
                        .with_context(|| {
                            format!("creating a temporary file in {}", tar_dir.display())
                        })?
                        .into_temp_path(),
                ),
            };
            let tar_path = tar_tmp.as_deref().unwrap_or(&out).to_owned();
            let bytes = block_on(commands::export(&commands::ExportCommand {
                target: &target,
                token: &token,
                tenant: &tenant,
                environment: &env,
                start: start.unwrap_or(0),
                end: end.unwrap_or(0),
                from_time,
                to_time,
                justification: &justification,
                out: &tar_path,
            }))?;
            match format {
                ExportFormat::Tar => println!("wrote {} ({bytes} bytes)", out.display()),
                ExportFormat::OcsfJsonl => {
                    let summary = commands::export_to_ocsf(&tar_path, &out)?;
                    println!(
                        "wrote {} ({} OCSF events from {}, {} expired leaves without content)",
                        out.display(),
                        summary.events,
                        summary.origin,
                        summary.expired
                    );
                }
            }
        }
        Command::Events {
            command: EventsCommand::Find(a),
        } => {
            use auditledger_proto::v1 as pb;
            let time = |flag: &str, value: Option<&str>| -> anyhow::Result<u64> {
                value.map_or(Ok(0), |v| {
                    commands::parse_time_nanos(v).with_context(|| format!("--{flag} {v:?}"))
                })
            };
            let kind = a
                .kind
                .as_deref()
                .map(|k| {
                    proto_enum("kind", k, "EVENT_KIND_", &|n| {
                        pb::EventKind::from_str_name(n).map(|v| v as i32)
                    })
                })
                .transpose()?
                .unwrap_or(0);
            let decision = a
                .decision
                .as_deref()
                .map(|d| {
                    proto_enum("decision", d, "DECISION_", &|n| {
                        pb::Decision::from_str_name(n).map(|v| v as i32)
                    })
                })
                .transpose()?
                .unwrap_or(0);
            let s = |v: &Option<String>| v.clone().unwrap_or_default();
            let request = pb::FindEventsRequest {
                tenant_id: a.tenant.clone(),
                environment: a.env.clone(),
                from_time: time("from", a.from.as_deref())?,
                to_time: time("to", a.to.as_deref())?,
                event_kind: kind,
                user_id: s(&a.user),
                agent_id: s(&a.agent),
                tool_server: s(&a.tool_server),
                tool_name: s(&a.tool),
                session_id: s(&a.session),
                correlation_id: s(&a.correlation),
                trace_id: s(&a.trace),
                decision,
                data_classification: s(&a.classification),
                event_id: s(&a.event_id),
                limit: a.limit,
                page_token: a.page_token.clone(),
                newest_first: a.newest_first,
                justification: a.justification.clone(),
                with_proofs: a.with_proofs,
            };
            let cmd = auditledger_ingest::investigate::FindCommand {
                target: a.target.clone(),
                token: a.token.clone(),
                request,
                all_pages: a.all_pages,
                format: a.format,
            };
            let mut stdout = std::io::stdout().lock();
            let n = block_on(auditledger_ingest::investigate::find_events_cli(
                &cmd,
                &mut stdout,
            ))?;
            eprintln!("{n} events");
        }
        Command::Token { command } => match command {
            TokenCommand::Create {
                config,
                tenants,
                environments,
                role,
                ttl,
                name,
            } => {
                let config = load(&config)?;
                let (name, token) = commands::token_create(
                    &config,
                    &tenants,
                    &environments,
                    &role,
                    ttl.as_deref(),
                    name.as_deref(),
                )?;
                eprintln!(
                    "created token {name:?} (only its hash is stored in {})",
                    config.tokens_path().display()
                );
                println!("{token}");
            }
        },
    }
    Ok(ExitCode::SUCCESS)
}

fn main() -> ExitCode {
    logging::init();
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}
