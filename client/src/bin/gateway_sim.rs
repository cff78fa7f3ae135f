//! `auditledger-gateway-sim`: records synthetic MCP tool-call events through the client, the
//! way a gateway would, then flushes. With `--spool DIR` every event is fsynced to the spool
//! before it is reported; `--count 0` only replays what an earlier run left in the spool.
//!
//! Prints `recorded <event_id> <gateway_seq>` per event once `record` returned, `flushed` when
//! every event has a receipt, and a final `metrics …` line.

use std::io::Write as _;
use std::time::Duration;

use anyhow::Context as _;
use auditledger_client::{
    AuditEvent, Backpressure, Client, Decision, Durability, EventKind, Options, SpoolOptions,
};
use clap::Parser;

#[derive(Parser)]
#[command(
    version,
    about = "Records synthetic gateway events through auditledger-client"
)]
struct Args {
    /// Ledger endpoint.
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    target: String,
    /// Gateway token (or --token-file).
    #[arg(
        long,
        env = "AUDITLEDGER_TOKEN",
        required_unless_present = "token_file"
    )]
    token: Option<String>,
    #[arg(long)]
    token_file: Option<std::path::PathBuf>,
    #[arg(long, default_value = "demo")]
    tenant: String,
    #[arg(long, default_value = "dev")]
    env: String,
    /// Spool directory (spool mode); without it events wait in memory.
    #[arg(long)]
    spool: Option<std::path::PathBuf>,
    /// Events to record (0: only replay the spool).
    #[arg(long, default_value_t = 100)]
    count: u64,
    #[arg(long, default_value = "sim-gateway")]
    gateway_id: String,
    /// How long to wait for every receipt at the end.
    #[arg(long, default_value = "60s", value_parser = humantime_duration)]
    flush_timeout: Duration,
}

fn humantime_duration(s: &str) -> Result<Duration, String> {
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?}: expected e.g. 30s"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" | "" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        _ => Err(format!("{s:?}: unit must be ms, s or m")),
    }
}

fn now_nanos() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();
    let args = Args::parse();
    let token = match (&args.token, &args.token_file) {
        (Some(t), _) => t.clone(),
        (None, Some(f)) => std::fs::read_to_string(f)
            .with_context(|| format!("reading {}", f.display()))?
            .trim()
            .to_owned(),
        (None, None) => anyhow::bail!("--token or --token-file is required"),
    };
    let options = Options {
        durability: match &args.spool {
            Some(dir) => Durability::Spool(SpoolOptions::new(dir)),
            None => Durability::Memory,
        },
        backpressure: Backpressure::Wait(None),
        gateway_id: Some(args.gateway_id.clone()),
        ..Options::default()
    };
    let client = Client::connect(&args.target, &token, options)
        .await
        .context("starting the client")?;
    let mut stdout = std::io::stdout().lock();
    let mut handles = Vec::new();
    for i in 0..args.count {
        let event = AuditEvent {
            event_kind: EventKind::ToolCall as i32,
            schema_version: auditledger_proto::SCHEMA_VERSION,
            tenant_id: args.tenant.clone(),
            environment: args.env.clone(),
            occurred_at: now_nanos(),
            session_id: "sim-session".into(),
            user_id: "alice@example.com".into(),
            agent_id: "sim-agent".into(),
            tool_server: "github".into(),
            tool_name: "list_issues".into(),
            mcp_method: "tools/call".into(),
            decision: Decision::Allow as i32,
            attributes: [("sim.index".to_owned(), i.to_string())].into(),
            ..Default::default()
        };
        let handle = client
            .record(event)
            .await
            .with_context(|| format!("recording event {i}"))?;
        writeln!(
            stdout,
            "recorded {} {}",
            handle.event_id, handle.gateway_seq
        )?;
        stdout.flush()?;
        handles.push(handle);
    }
    let flushed = client.flush(args.flush_timeout).await;
    let mut duplicates = 0;
    for h in handles {
        if let Ok(r) = h.receipt().await {
            duplicates += u64::from(r.duplicate);
        }
    }
    let m = client.metrics();
    if flushed.is_ok() {
        writeln!(stdout, "flushed")?;
    }
    writeln!(
        stdout,
        "metrics recorded={} spooled={} replayed={} sent={} acknowledged={} duplicates={} retried={} rejected={} torn={} own_duplicates={duplicates}",
        m.recorded,
        m.spooled,
        m.replayed_from_spool,
        m.sent,
        m.acknowledged,
        m.duplicates,
        m.retried,
        m.rejected,
        m.torn_records_dropped
    )?;
    stdout.flush()?;
    drop(stdout);
    let report = client.close(Duration::from_secs(5)).await;
    flushed.map_err(|e| {
        anyhow::anyhow!(
            "{e}; {} left {}",
            report.unacknowledged,
            if args.spool.is_some() {
                "in the spool"
            } else {
                "undelivered"
            }
        )
    })?;
    Ok(())
}
