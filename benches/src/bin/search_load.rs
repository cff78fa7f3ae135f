//! `search_load`: `Investigate.FindEvents` over ≥ 1M events spread over all three tiers, measured
//! against the real `auditledger serve` over gRPC (issue 7; results in `docs/benchmarks.md`,
//! "Investigations: FindEvents over 1M events").
//!
//! 1. Dataset (skipped when `--data DIR` already holds one, see [`META`]): `auditledger init`,
//!    then realistic ~550-byte events (varied tools, users, agents, interleaved sessions,
//!    correlation groups, decisions) appended through the ledger library in ordered, pipelined
//!    batches into ONE log (`acme/prod`). The ledger runs on a stepping clock so `logged_at`
//!    spreads evenly over `--days` days ending before now; the data directory is otherwise
//!    exactly what the service writes. Then the real `auditledger archive --once` moves the
//!    oldest segments to warm and the oldest of those on to cold (`--cold-share`,
//!    `--warm-share`); the rest stays hot.
//! 2. Measurement: an investigator token, `auditledger serve` on 127.0.0.1, a tonic client.
//!    - indexed lookups by `event_id`, `session_id`, `correlation_id`, separately for targets
//!      whose leaves are hot, warm and cold: the first query of each case right after the
//!      server started (segments not yet opened, caches empty — the OS page cache is not
//!      dropped), then `--queries` more each (p50/p95/p99/max);
//!    - time-range scans (one hour, one day; alone, with `tool_name`, with `decision = DENY`)
//!      in pages of the server's maximum limit, following page tokens: rows returned and rows
//!      in the window ("scanned") per second, per tier.
//!
//!    Every answer is checked against the known dataset (the generator is a pure function of
//!    seed and leaf index): lookups return exactly the expected leaves from the expected tier,
//!    unfiltered windows are contiguous leaf ranges, filtered windows return exactly the rows
//!    of the unfiltered one that match. A wrong answer stops the run.
//!
//! Run by hand, late, on a quiet machine:
//! `search_load --data /work/search-1m [--events 1100000] [--queries 200] [--json]`
//! (the binary sits next to `auditledger` in the target directory, which it runs).

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write as _;
use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, bail, ensure};
use auditledger_benches::{Percentiles, machine, ms};
use auditledger_ingest::config::Config;
use auditledger_ingest::open;
use auditledger_ledger::event::{AuditEvent, Decision, EventKind, decode_leaf};
use auditledger_ledger::query::EventFilter;
use auditledger_ledger::store::Store;
use auditledger_ledger::{Clock, Ledger};
use auditledger_proto::v1 as pb;
use auditledger_tests::Rng;
use clap::Parser;
use pb::investigate_client::InvestigateClient;
use prost::Message as _;
use tonic::transport::Channel;

const TENANT: &str = "acme";
const ENVIRONMENT: &str = "prod";
/// Dataset description written after a successful build; its presence marks a reusable dir.
const META: &str = "search-load.meta";
const META_VERSION: &str = "1";
/// Sessions live in aligned blocks of this many leaves (so one session never spans segments
/// of 2^10 leaves or more), interleaved with the other sessions of the block.
const SESSION_BLOCK: u64 = 1024;
/// Concurrent sessions per block: ~64 events per session.
const SESSION_SLOTS: u64 = 16;
/// A correlation group is one session's events inside an aligned run of this many leaves
/// (~8 events: a tool call with its approvals, retries and follow-ups).
const CORRELATION_SPAN: u64 = 128;
const NANOS_PER_SEC: u64 = 1_000_000_000;
const HOUR: u64 = 3600 * NANOS_PER_SEC;
const DAY: u64 = 24 * HOUR;

#[derive(Parser, Clone)]
#[command(name = "search_load")]
struct Args {
    /// Data directory: reused when it holds a finished dataset (`search-load.meta`), otherwise
    /// built there (it must not exist or be empty). Default: a temporary directory, deleted
    /// at the end.
    #[arg(long)]
    data: Option<PathBuf>,
    /// Events to build (≥ 1,048,576 for the recorded benchmark).
    #[arg(long, default_value_t = 1_100_000)]
    events: u64,
    /// `logged_at` spreads evenly over this many days, ending shortly before now (must stay
    /// below the default hot window of 90 days, or the server's own archiver would move data
    /// during the run).
    #[arg(long, default_value_t = 30)]
    days: u64,
    /// Share of the events moved to the cold tier (oldest first), rounded to whole segments.
    #[arg(long, default_value_t = 0.375)]
    cold_share: f64,
    /// Share of the events moved to the warm tier (after the cold ones), rounded to segments.
    #[arg(long, default_value_t = 0.25)]
    warm_share: f64,
    /// Segment size 2^N leaves (`auditledger init --segment-bits`).
    #[arg(long, default_value_t = 16)]
    segment_bits: u8,
    /// Events per append while building.
    #[arg(long, default_value_t = 1000)]
    batch: usize,
    /// Indexed lookups per (field, tier), after the first one.
    #[arg(long, default_value_t = 200)]
    queries: usize,
    /// Random windows per (tier, window length).
    #[arg(long, default_value_t = 3)]
    windows: usize,
    /// Seed of the dataset and of the target choice.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Ask for inclusion proofs with every lookup result.
    #[arg(long)]
    with_proofs: bool,
    /// Stop measuring after this many seconds (cases not reached are reported as such).
    #[arg(long, default_value_t = 1200)]
    max_seconds: u64,
    /// Also print the results as one JSON document.
    #[arg(long)]
    json: bool,
    /// The `auditledger` binary (default: next to this one).
    #[arg(long)]
    auditledger: Option<PathBuf>,
    /// Build (or check) the dataset and stop.
    #[arg(long)]
    build_only: bool,
    /// Only these tiers (for profiling one case), comma-separated: hot, warm, cold.
    #[arg(long, value_delimiter = ',', default_value = "hot,warm,cold")]
    tiers: Vec<String>,
    /// Only these lookup fields, comma-separated: event_id, session_id, correlation_id.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "event_id,session_id,correlation_id"
    )]
    fields: Vec<String>,
    /// Skip the time-range scans.
    #[arg(long)]
    no_scans: bool,
}

impl Args {
    fn tiers(&self) -> Vec<pb::Tier> {
        TIERS
            .into_iter()
            .filter(|t| self.tiers.iter().any(|n| n == tier_name(*t)))
            .collect()
    }

    fn fields(&self) -> Vec<Field> {
        FIELDS
            .into_iter()
            .filter(|f| self.fields.iter().any(|n| n == f.name()))
            .collect()
    }
}

// ---- The dataset ------------------------------------------------------------------------------

/// splitmix64 of `a` mixed with `b`: independent-looking values from (seed, index) pairs.
fn mix(a: u64, b: u64) -> u64 {
    let mut z = a ^ b.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// (server, tool) pairs; earlier ones are called more often.
const TOOLS: [(&str, &str); 20] = [
    ("github", "search_code"),
    ("postgres", "query"),
    ("slack", "post_message"),
    ("jira", "search"),
    ("github", "create_issue"),
    ("filesystem", "read_file"),
    ("http", "fetch"),
    ("confluence", "get_page"),
    ("salesforce", "get_account"),
    ("snowflake", "query"),
    ("gmail", "search"),
    ("slack", "read_channel"),
    ("jira", "create_ticket"),
    ("s3", "get_object"),
    ("github", "create_pull_request"),
    ("filesystem", "write_file"),
    ("postgres", "execute"),
    ("salesforce", "update_opportunity"),
    ("gmail", "send_email"),
    ("s3", "put_object"),
];
const MODELS: [&str; 4] = [
    "claude-sonnet-4",
    "gpt-4.1",
    "gemini-2.5-pro",
    "llama-3.3-70b",
];
const AGENTS: [&str; 5] = [
    "Support Agent",
    "Sales Assistant",
    "Code Reviewer",
    "Data Analyst",
    "Ops Runbook",
];
const CLASSES: [&str; 5] = [
    "internal",
    "internal",
    "public",
    "confidential",
    "restricted",
];
const REGIONS: [&str; 4] = ["eu-west-1", "us-east-1", "us-west-2", "ap-southeast-2"];

/// What the dataset is and where its tiers are (the contents of [`META`]).
#[derive(Clone, Debug, PartialEq, Eq)]
struct Dataset {
    seed: u64,
    events: u64,
    segment_bits: u8,
    /// Leaves `[0, warm_start)` are cold, `[warm_start, hot_start)` warm, the rest hot.
    warm_start: u64,
    hot_start: u64,
    /// The stepping clock's start and step (the generator's idea of each event's time, for
    /// `occurred_at` and the UUIDv7 timestamps; `logged_at` is the ledger's).
    base_nanos: u64,
    step_nanos: u64,
    /// `logged_at` of leaf 0, of the first warm leaf, of the first hot leaf and of the last leaf.
    first_logged_at: u64,
    warm_logged_at: u64,
    hot_logged_at: u64,
    last_logged_at: u64,
}

/// Session of leaf `n`: (block, slot).
fn session_slot(seed: u64, n: u64) -> (u64, u64) {
    (n / SESSION_BLOCK, mix(seed ^ 0x5e55, n) % SESSION_SLOTS)
}

impl Dataset {
    fn hex(rng: &mut Rng, bytes: usize) -> String {
        let mut out = String::with_capacity(2 * bytes + 16);
        while out.len() < 2 * bytes {
            let _ = write!(out, "{:016x}", rng.next_u64());
        }
        out.truncate(2 * bytes);
        out
    }

    fn session_key(&self, n: u64) -> u64 {
        let (block, slot) = session_slot(self.seed, n);
        mix(self.seed ^ 0x5e55_1011, block * SESSION_SLOTS + slot)
    }

    fn session_id(&self, n: u64) -> String {
        format!("sess-{:016x}", self.session_key(n))
    }

    fn correlation_id(&self, n: u64) -> String {
        let run = (n % SESSION_BLOCK) / CORRELATION_SPAN;
        format!("corr-{:016x}", mix(self.session_key(n), run + 1))
    }

    /// Leaves of the session of leaf `n` (all inside its block), ascending.
    fn session_members(&self, n: u64) -> Vec<u64> {
        let (block, slot) = session_slot(self.seed, n);
        let end = ((block + 1) * SESSION_BLOCK).min(self.events);
        (block * SESSION_BLOCK..end)
            .filter(|&m| session_slot(self.seed, m).1 == slot)
            .collect()
    }

    /// Leaves of the correlation group of leaf `n`, ascending.
    fn correlation_members(&self, n: u64) -> Vec<u64> {
        let run = n / CORRELATION_SPAN;
        let slot = session_slot(self.seed, n).1;
        let end = ((run + 1) * CORRELATION_SPAN).min(self.events);
        (run * CORRELATION_SPAN..end)
            .filter(|&m| session_slot(self.seed, m).1 == slot)
            .collect()
    }

    /// The event appended as leaf `n`: a pure function of (seed, n).
    fn event(&self, n: u64) -> AuditEvent {
        let mut rng = Rng::new(mix(self.seed, n));
        let session = self.session_key(n);
        let at = self.base_nanos + n * self.step_nanos;
        let millis = at / 1_000_000;
        // UUIDv7: 48-bit millisecond time, version 7, 12 random bits, variant 10, then 14
        // random bits and the leaf number (unique by construction).
        let rand_a = rng.next_u64() & 0xfff;
        let rand_b = rng.next_u64() & 0x3fff;
        let event_id = format!(
            "{:08x}-{:04x}-7{rand_a:03x}-{:04x}-{:012x}",
            millis >> 16,
            millis & 0xffff,
            0x8000 | rand_b,
            n & 0xffff_ffff_ffff
        );
        // Skewed towards the first tools: the smaller of two uniform picks.
        let tool = (rng.range(0, 20).min(rng.range(0, 20))) as usize;
        let kind = match rng.range(0, 100) {
            0..85 => EventKind::ToolCall,
            85..90 => EventKind::Approval,
            90..95 => EventKind::Access,
            95..98 => EventKind::Auth,
            _ => EventKind::DataExport,
        };
        let decision = match rng.range(0, 100) {
            0..90 => Decision::Allow,
            90..96 => Decision::Deny,
            96..99 => Decision::RequireApproval,
            _ => Decision::Modify,
        };
        let agent = mix(session, 2) % 40;
        let is_error = rng.range(0, 100) < 3;
        let gateway = n % 8;
        let mut attributes = BTreeMap::new();
        attributes.insert(
            "client_ip".to_owned(),
            format!(
                "10.{}.{}.{}",
                mix(session, 3) % 256,
                rng.range(0, 256),
                rng.range(1, 255)
            ),
        );
        attributes.insert(
            "region".to_owned(),
            REGIONS[(mix(session, 4) % 4) as usize].to_owned(),
        );
        AuditEvent {
            event_id,
            event_kind: kind as i32,
            schema_version: 1,
            tenant_id: TENANT.into(),
            environment: ENVIRONMENT.into(),
            occurred_at: at.saturating_sub(rng.range(1_000_000, 400_000_000)),
            trace_id: Self::hex(&mut rng, 16),
            span_id: Self::hex(&mut rng, 8),
            correlation_id: self.correlation_id(n),
            session_id: format!("sess-{session:016x}"),
            user_id: format!("user-{:04}@example.com", mix(session, 1) % 5000),
            agent_id: format!("agent-{agent:02}"),
            agent_name: AGENTS[(agent % 5) as usize].into(),
            model: MODELS[(mix(session, 5) % 4) as usize].into(),
            gateway_id: format!("gateway-{gateway}"),
            gateway_seq: n / 8,
            tool_server: TOOLS[tool].0.into(),
            tool_name: TOOLS[tool].1.into(),
            mcp_method: "tools/call".into(),
            arguments_hash: format!("blake3:{}", Self::hex(&mut rng, 32)),
            response_hash: format!("blake3:{}", Self::hex(&mut rng, 32)),
            content_ref: format!("s3://audit-content/{TENANT}/{n:x}"),
            is_error,
            error_code: if is_error {
                "UPSTREAM_TIMEOUT".into()
            } else {
                String::new()
            },
            decision: decision as i32,
            policy_id: format!("pol-{}", mix(session, 6) % 12),
            policy_version: "14".into(),
            rule_id: format!("rule-{}", rng.range(0, 60)),
            decision_reason: format!(
                "{} by policy pol-{} for role {}",
                decision
                    .as_str_name()
                    .trim_start_matches("DECISION_")
                    .to_ascii_lowercase(),
                mix(session, 6) % 12,
                AGENTS[(agent % 5) as usize]
            ),
            data_classification: CLASSES[rng.range(0, 5) as usize].into(),
            latency_ms: rng.range(3, 2_500) as u32,
            attributes,
            ..Default::default()
        }
    }

    fn segment_size(&self) -> u64 {
        1 << self.segment_bits
    }

    /// Leaf range and `logged_at` range (inclusive) of a tier; None when the tier is empty.
    fn tier(&self, tier: pb::Tier) -> Option<TierSpan> {
        let (leaves, first, last) = match tier {
            pb::Tier::Cold => (
                0..self.warm_start,
                self.first_logged_at,
                self.warm_logged_at,
            ),
            pb::Tier::Warm => (
                self.warm_start..self.hot_start,
                self.warm_logged_at,
                self.hot_logged_at,
            ),
            _ => (
                self.hot_start..self.events,
                self.hot_logged_at,
                self.last_logged_at + 1,
            ),
        };
        // The next tier's first time bounds this one's last leaf from above.
        (!leaves.is_empty()).then_some(TierSpan {
            leaves,
            first_time: first,
            end_time: last,
        })
    }

    fn to_meta(&self) -> String {
        let mut out = String::new();
        for (key, value) in [
            ("version", META_VERSION.to_owned()),
            ("seed", self.seed.to_string()),
            ("events", self.events.to_string()),
            ("segment_bits", self.segment_bits.to_string()),
            ("warm_start", self.warm_start.to_string()),
            ("hot_start", self.hot_start.to_string()),
            ("base_nanos", self.base_nanos.to_string()),
            ("step_nanos", self.step_nanos.to_string()),
            ("first_logged_at", self.first_logged_at.to_string()),
            ("warm_logged_at", self.warm_logged_at.to_string()),
            ("hot_logged_at", self.hot_logged_at.to_string()),
            ("last_logged_at", self.last_logged_at.to_string()),
        ] {
            let _ = writeln!(out, "{key} {value}");
        }
        out
    }

    fn from_meta(path: &Path) -> anyhow::Result<Dataset> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the dataset description {}", path.display()))?;
        let mut values = BTreeMap::new();
        for (number, line) in text.lines().enumerate() {
            let (key, value) = line.split_once(' ').with_context(|| {
                format!(
                    "{} line {}: expected `key value`",
                    path.display(),
                    number + 1
                )
            })?;
            values.insert(key.to_owned(), value.to_owned());
        }
        let get = |key: &str| -> anyhow::Result<u64> {
            let v = values
                .get(key)
                .with_context(|| format!("{}: no `{key}` line", path.display()))?;
            v.parse()
                .with_context(|| format!("{}: `{key} {v}` is not a number", path.display()))
        };
        ensure!(
            values.get("version").map(String::as_str) == Some(META_VERSION),
            "{}: version {:?}, this tool writes {META_VERSION}: rebuild the dataset in a new directory",
            path.display(),
            values.get("version")
        );
        let ds = Dataset {
            seed: get("seed")?,
            events: get("events")?,
            segment_bits: u8::try_from(get("segment_bits")?)
                .context("segment_bits out of range")?,
            warm_start: get("warm_start")?,
            hot_start: get("hot_start")?,
            base_nanos: get("base_nanos")?,
            step_nanos: get("step_nanos")?,
            first_logged_at: get("first_logged_at")?,
            warm_logged_at: get("warm_logged_at")?,
            hot_logged_at: get("hot_logged_at")?,
            last_logged_at: get("last_logged_at")?,
        };
        ensure!(
            ds.warm_start <= ds.hot_start && ds.hot_start <= ds.events,
            "{}: tier boundaries {} ≤ {} ≤ {} do not hold",
            path.display(),
            ds.warm_start,
            ds.hot_start,
            ds.events
        );
        Ok(ds)
    }
}

/// One tier's part of the log.
#[derive(Clone, Debug)]
struct TierSpan {
    leaves: std::ops::Range<u64>,
    /// `logged_at` of its first leaf; an upper bound (exclusive) of its last leaf's.
    first_time: u64,
    end_time: u64,
}

fn tier_name(tier: pb::Tier) -> &'static str {
    match tier {
        pb::Tier::Hot => "hot",
        pb::Tier::Warm => "warm",
        pb::Tier::Cold => "cold",
        _ => "?",
    }
}

const TIERS: [pb::Tier; 3] = [pb::Tier::Hot, pb::Tier::Warm, pb::Tier::Cold];

// ---- Building ----------------------------------------------------------------------------------

/// Server time for the build: every reading advances by `step`, so consecutive leaves are
/// `step` apart (the sequencer reads the clock once per leaf, plus once per commit).
struct SteppingClock {
    next: AtomicU64,
    step: u64,
}

impl Clock for SteppingClock {
    fn now_nanos(&self) -> u64 {
        self.next.fetch_add(self.step, Ordering::Relaxed)
    }
}

fn unix_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// Runs `auditledger ARGS`; its stdout, or an error with both streams.
fn run_cli(bin: &Path, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(bin)
        .args(args)
        .env_remove("AUDITLEDGER_CONFIG")
        .output()
        .with_context(|| format!("running {}", bin.display()))?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        bail!(
            "`auditledger {}` failed ({}):\n{stdout}{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(stdout)
}

/// `auditledger archive --once --tier TIER`, moving every full segment whose newest leaf is
/// older than `cutoff`; checks that exactly `expected` segments moved.
fn archive(bin: &Path, config: &str, tier: &str, cutoff: u64, expected: u64) -> anyhow::Result<()> {
    // Whole seconds, rounded down: the cutoff lands at most a second (plus start-up time)
    // later, far inside the next segment's span.
    let older_than = unix_nanos().saturating_sub(cutoff) / NANOS_PER_SEC;
    let started = Instant::now();
    let out = run_cli(
        bin,
        &[
            "archive",
            "--once",
            "--config",
            config,
            "--tier",
            tier,
            "--older-than",
            &format!("{older_than}s"),
        ],
    )?;
    let summary = out.lines().last().unwrap_or_default();
    let moved: u64 = summary
        .strip_prefix("archive: ")
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("unexpected `archive --once` summary line {summary:?}"))?;
    ensure!(
        moved == expected,
        "archive --tier {tier} moved {moved} segments, expected {expected}:\n{out}"
    );
    eprintln!(
        "  {moved} segment(s) to {tier} in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Moves the `valid_from` of the key `init` made back to `valid_from` (unix nanos): the build
/// stamps checkpoints with its own clock, up to `--days` in the past, as a service that has run
/// for that long with this key would have.
fn backdate_key(keyring: &Path, valid_from: u64) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(keyring)
        .with_context(|| format!("reading {}", keyring.display()))?;
    let time = humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_nanos(valid_from));
    let mut replaced = 0;
    let lines: Vec<String> = text
        .lines()
        .map(|line| {
            if line.starts_with("valid_from = ") {
                replaced += 1;
                format!("valid_from = \"{time}\"")
            } else {
                line.to_owned()
            }
        })
        .collect();
    ensure!(
        replaced == 1,
        "{}: expected the one key `init` creates, found {replaced} valid_from lines",
        keyring.display()
    );
    std::fs::write(keyring, lines.join("\n") + "\n")
        .with_context(|| format!("writing {}", keyring.display()))
}

async fn build(args: &Args, dir: &Path, bin: &Path) -> anyhow::Result<Dataset> {
    ensure!(
        args.events >= 1,
        "--events must be at least 1 (≥ 1,048,576 for the recorded benchmark)"
    );
    ensure!(
        (1..=89).contains(&args.days),
        "--days {} must lie in 1..=89 (below the default hot window of 90 days)",
        args.days
    );
    ensure!(
        (0.0..=1.0).contains(&args.cold_share)
            && (0.0..=1.0).contains(&args.warm_share)
            && args.cold_share + args.warm_share <= 1.0,
        "--cold-share and --warm-share must be in [0, 1] and sum to at most 1"
    );
    let config_path = dir.join("config.toml");
    let config_arg = config_path
        .to_str()
        .context("data directory is not UTF-8")?;
    run_cli(
        bin,
        &[
            "init",
            dir.to_str().context("data directory is not UTF-8")?,
            "--segment-bits",
            &args.segment_bits.to_string(),
        ],
    )?;
    let config =
        Config::load(&config_path).with_context(|| format!("loading {}", config_path.display()))?;

    let segment = 1u64 << args.segment_bits;
    let full = args.events / segment;
    let segments = |share: f64| (share * args.events as f64 / segment as f64).round() as u64;
    let cold = segments(args.cold_share).min(full);
    let warm = segments(args.warm_share).min(full - cold);
    let (warm_start, hot_start) = (cold * segment, (cold + warm) * segment);

    // The build's clock: `days` days ending two hours before now (the extra readings per
    // commit push the end a little later; it must stay in the past).
    let span = args.days * DAY;
    let step = span / args.events;
    let base = unix_nanos().saturating_sub(span + 2 * HOUR);
    let clock = Arc::new(SteppingClock {
        next: AtomicU64::new(base),
        step,
    });
    let mut ds = Dataset {
        seed: args.seed,
        events: args.events,
        segment_bits: args.segment_bits,
        warm_start,
        hot_start,
        base_nanos: base,
        step_nanos: step,
        first_logged_at: 0,
        warm_logged_at: 0,
        hot_logged_at: 0,
        last_logged_at: 0,
    };

    backdate_key(&config.keyring_path(), base.saturating_sub(DAY))?;
    let store = open::open_store(&config)?;
    let keyring = open::load_keyring(&config)?;
    let dyn_store: Arc<dyn Store> = store.clone();
    let ledger = Ledger::open_with_clock(
        dyn_store,
        Arc::new(RwLock::new(keyring)),
        config.ledger_options(),
        clock,
    )
    .context("opening the new data directory's ledger")?;
    let started = Instant::now();
    let mut bytes = 0u64;
    let mut pending = VecDeque::new();
    let mut next = 0u64;
    let mut reported = 0u64;
    // Ordered pipelining: batches submitted one after another get increasing leaf indexes.
    while next < args.events || !pending.is_empty() {
        if next < args.events && pending.len() < 8 {
            let end = (next + args.batch as u64).min(args.events);
            let batch: Vec<AuditEvent> = (next..end).map(|n| ds.event(n)).collect();
            bytes += batch.iter().map(|e| e.encoded_len() as u64).sum::<u64>();
            pending.push_back((next, ledger.submit("gateway-bench", &batch).await?));
            next = end;
            continue;
        }
        let Some((first, append)) = pending.pop_front() else {
            break;
        };
        let receipts = append.wait().await?;
        for (offset, r) in receipts.iter().enumerate() {
            ensure!(
                r.leaf_index == first + offset as u64 && !r.duplicate,
                "event {} became leaf {} (duplicate: {}): the dataset needs leaf = event number",
                first + offset as u64,
                r.leaf_index,
                r.duplicate
            );
        }
        let done = first + receipts.len() as u64;
        if done * 10 / args.events > reported * 10 / args.events {
            eprintln!(
                "  {done} events appended ({:.0}/s)",
                done as f64 / started.elapsed().as_secs_f64()
            );
            reported = done;
        }
    }
    let appended = started.elapsed();
    let log = ledger
        .log(TENANT, ENVIRONMENT)
        .context("the benchmark log was not created")?;
    ensure!(
        log.tree_size() == args.events,
        "log has {} leaves after appending {}",
        log.tree_size(),
        args.events
    );
    log.wait_for_index(args.events).await?;
    ledger.checkpoint_now()?;
    let logged_at = |leaf_index: u64| -> anyhow::Result<u64> {
        let bytes = log
            .leaf(leaf_index)?
            .with_context(|| format!("leaf {leaf_index} missing right after the build"))?;
        Ok(decode_leaf(&bytes)
            .with_context(|| format!("decoding leaf {leaf_index}"))?
            .logged_at)
    };
    ds.first_logged_at = logged_at(0)?;
    ds.last_logged_at = logged_at(args.events - 1)?;
    ds.warm_logged_at = if warm_start < args.events {
        logged_at(warm_start)?
    } else {
        ds.last_logged_at + 1
    };
    ds.hot_logged_at = if hot_start < args.events {
        logged_at(hot_start)?
    } else {
        ds.last_logged_at + 1
    };
    ensure!(
        ds.last_logged_at < unix_nanos(),
        "the build clock ran past now: lower --events or raise --days"
    );
    drop(log);
    ledger.close()?;
    drop(ledger);
    drop(store);
    eprintln!(
        "  appended {} events ({:.0} B each on average) in {:.1} s ({:.0}/s)",
        args.events,
        bytes as f64 / args.events as f64,
        appended.as_secs_f64(),
        args.events as f64 / appended.as_secs_f64()
    );

    // Warm first (it takes the future cold segments too), then the oldest on to cold; the
    // cutoffs lie a minute after each boundary's last leaf, a whole segment's span before the
    // next segment's newest leaf.
    if hot_start > 0 {
        let last_warm = if hot_start < args.events {
            ds.hot_logged_at
        } else {
            ds.last_logged_at
        };
        archive(
            bin,
            config_arg,
            "warm",
            last_warm.min(ds.last_logged_at) + 60 * NANOS_PER_SEC,
            cold + warm,
        )?;
    }
    if warm_start > 0 {
        archive(
            bin,
            config_arg,
            "cold",
            ds.warm_logged_at + 60 * NANOS_PER_SEC,
            cold,
        )?;
    }
    std::fs::write(dir.join(META), ds.to_meta())
        .with_context(|| format!("writing {}", dir.join(META).display()))?;
    Ok(ds)
}

// ---- The server ---------------------------------------------------------------------------------

/// A running `auditledger serve`; SIGTERM (then SIGKILL after 30 s) on drop.
struct Server {
    child: Child,
    url: String,
}

impl Server {
    fn start(bin: &Path, config: &str, log_file: &Path) -> anyhow::Result<Server> {
        let stderr = std::fs::File::create(log_file)
            .with_context(|| format!("creating {}", log_file.display()))?;
        let mut child = Command::new(bin)
            .args(["serve", "--config", config, "--listen", "127.0.0.1:0"])
            .env_remove("AUDITLEDGER_CONFIG")
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .with_context(|| format!("starting {} serve", bin.display()))?;
        let stdout = child.stdout.take().context("no stdout pipe")?;
        let (tx, rx) = std::sync::mpsc::channel();
        // Reads (and keeps draining) the server's stdout.
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(url) = line.strip_prefix("auditledger listening on ") {
                    let _ = tx.send(url.trim().to_owned());
                }
            }
        });
        let mut server = Server {
            child,
            url: String::new(),
        };
        match rx.recv_timeout(Duration::from_secs(120)) {
            Ok(url) => server.url = url,
            Err(_) => bail!(
                "the server did not report its address within 120 s; see {}",
                log_file.display()
            ),
        }
        Ok(server)
    }

    fn stop(&mut self) -> bool {
        if let Ok(Some(status)) = self.child.try_wait() {
            return status.success();
        }
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        for _ in 0..300 {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.success();
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        false
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

// ---- Measuring ------------------------------------------------------------------------------------

/// The indexed field a lookup asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Field {
    Event,
    Session,
    Correlation,
}

const FIELDS: [Field; 3] = [Field::Event, Field::Session, Field::Correlation];

impl Field {
    fn name(self) -> &'static str {
        match self {
            Field::Event => "event_id",
            Field::Session => "session_id",
            Field::Correlation => "correlation_id",
        }
    }
}

struct Client {
    grpc: InvestigateClient<Channel>,
    token: String,
    max_limit: u32,
    with_proofs: bool,
}

const JUSTIFICATION: &str = "search_load benchmark (synthetic dataset)";

impl Client {
    fn request(&self) -> pb::FindEventsRequest {
        pb::FindEventsRequest {
            tenant_id: TENANT.into(),
            environment: ENVIRONMENT.into(),
            limit: self.max_limit,
            justification: JUSTIFICATION.into(),
            with_proofs: self.with_proofs,
            ..Default::default()
        }
    }

    /// One FindEvents call, timed end to end.
    async fn find(
        &mut self,
        request: pb::FindEventsRequest,
    ) -> anyhow::Result<(Duration, pb::FindEventsResponse)> {
        let mut r = tonic::Request::new(request);
        r.metadata_mut().insert(
            "authorization",
            format!("Bearer {}", self.token)
                .parse()
                .context("token is not a valid header value")?,
        );
        let started = Instant::now();
        let response = self
            .grpc
            .find_events(r)
            .await
            .map_err(|s| anyhow::anyhow!("FindEvents refused: {:?}: {}", s.code(), s.message()))?
            .into_inner();
        Ok((started.elapsed(), response))
    }
}

/// The lookup request for leaf `n`'s value of `field`, and the leaves it must return.
fn lookup(
    ds: &Dataset,
    client: &Client,
    field: Field,
    n: u64,
) -> (pb::FindEventsRequest, Vec<u64>) {
    let mut request = client.request();
    request.newest_first = true;
    let expected = match field {
        Field::Event => {
            request.event_id = ds.event(n).event_id;
            vec![n]
        }
        Field::Session => {
            request.session_id = ds.session_id(n);
            ds.session_members(n)
        }
        Field::Correlation => {
            request.correlation_id = ds.correlation_id(n);
            ds.correlation_members(n)
        }
    };
    (request, expected)
}

/// Checks a lookup's answer: exactly the expected leaves, newest first, from `tier`, one page.
fn check_lookup(
    field: Field,
    n: u64,
    tier: pb::Tier,
    expected: &[u64],
    response: &pb::FindEventsResponse,
) -> anyhow::Result<()> {
    let found: Vec<u64> = response
        .events
        .iter()
        .filter_map(|f| f.entry.as_ref().map(|e| e.leaf_index))
        .collect();
    let want: Vec<u64> = expected.iter().rev().copied().collect();
    ensure!(
        found == want,
        "{} lookup of leaf {n}: got leaves {found:?}, expected {want:?}",
        field.name()
    );
    ensure!(
        response.next_page_token.is_empty(),
        "{} lookup of leaf {n}: unexpected next page",
        field.name()
    );
    for f in &response.events {
        let entry = f.entry.as_ref().context("result without entry")?;
        ensure!(
            entry.tier == tier as i32,
            "{} lookup of leaf {n}: leaf {} served from tier {}, expected {}",
            field.name(),
            entry.leaf_index,
            entry.tier,
            tier_name(tier)
        );
    }
    Ok(())
}

#[derive(Clone, Debug)]
struct LookupResult {
    tier: pb::Tier,
    field: Field,
    first: Duration,
    first_results: usize,
    latencies: Vec<Duration>,
    results: usize,
    /// Fewer queries than asked: the deadline passed.
    truncated: bool,
}

/// A random leaf of `span`; `segment` restricts it to that segment of the span (first queries
/// take one segment per field, so each opens a segment no earlier query touched).
fn target(ds: &Dataset, span: &TierSpan, rng: &mut Rng, segment: Option<u64>) -> u64 {
    match segment {
        Some(s) => {
            let size = ds.segment_size();
            let start = (span.leaves.start + s * size).min(span.leaves.end - 1);
            let end = (start + size).min(span.leaves.end);
            rng.range(start, end)
        }
        None => rng.range(span.leaves.start, span.leaves.end),
    }
}

async fn lookups(
    args: &Args,
    ds: &Dataset,
    client: &mut Client,
    deadline: Instant,
) -> anyhow::Result<Vec<LookupResult>> {
    let mut out = Vec::new();
    // First queries: each (tier, field) case once, right after the server started, each in a
    // segment no earlier query touched where the tier has enough segments.
    for tier in args.tiers() {
        let Some(span) = ds.tier(tier) else { continue };
        let segments = (span.leaves.end - span.leaves.start).div_ceil(ds.segment_size());
        for (i, field) in args.fields().into_iter().enumerate() {
            let mut rng = Rng::new(mix(args.seed, 0xf1257 + i as u64 + 16 * tier as u64));
            let n = target(ds, &span, &mut rng, Some(i as u64 % segments));
            let (request, expected) = lookup(ds, client, field, n);
            let (elapsed, response) = client.find(request).await?;
            check_lookup(field, n, tier, &expected, &response)?;
            out.push(LookupResult {
                tier,
                field,
                first: elapsed,
                first_results: response.events.len(),
                latencies: Vec::new(),
                results: 0,
                truncated: false,
            });
        }
    }
    // Steady state.
    for result in &mut out {
        let Some(span) = ds.tier(result.tier) else {
            continue;
        };
        let mut rng = Rng::new(mix(
            args.seed,
            0x5eed + result.field as u64 + 16 * result.tier as u64,
        ));
        for _ in 0..args.queries {
            if Instant::now() >= deadline {
                result.truncated = true;
                break;
            }
            let n = target(ds, &span, &mut rng, None);
            let (request, expected) = lookup(ds, client, result.field, n);
            let (elapsed, response) = client.find(request).await?;
            check_lookup(result.field, n, result.tier, &expected, &response)?;
            result.latencies.push(elapsed);
            result.results += response.events.len();
        }
    }
    Ok(out)
}

/// A time-range scan's extra condition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Extra {
    None,
    ToolName,
    Deny,
}

const EXTRAS: [Extra; 3] = [Extra::None, Extra::ToolName, Extra::Deny];
/// The tool-name condition of [`Extra::ToolName`] (two servers' tool, ~14% of events).
const SCAN_TOOL: &str = "query";

impl Extra {
    fn name(self) -> &'static str {
        match self {
            Extra::None => "-",
            Extra::ToolName => "tool_name=query",
            Extra::Deny => "decision=DENY",
        }
    }

    fn apply(self, request: &mut pb::FindEventsRequest) {
        match self {
            Extra::None => {}
            Extra::ToolName => request.tool_name = SCAN_TOOL.into(),
            Extra::Deny => request.decision = pb::Decision::Deny as i32,
        }
    }

    fn filter(self) -> EventFilter {
        match self {
            Extra::None => EventFilter::default(),
            Extra::ToolName => EventFilter {
                tool_name: Some(SCAN_TOOL.into()),
                ..EventFilter::default()
            },
            Extra::Deny => EventFilter {
                decision: Some(Decision::Deny),
                ..EventFilter::default()
            },
        }
    }
}

#[derive(Clone, Debug)]
struct ScanResult {
    tier: pb::Tier,
    window: u64,
    extra: Extra,
    windows: usize,
    pages: usize,
    rows: u64,
    /// Rows inside the windows (what the server had to judge).
    scanned: u64,
    elapsed: Duration,
    page_latencies: Vec<Duration>,
    truncated: bool,
}

/// All pages of one window scan: (leaves in order, page latencies, total time).
async fn scan(
    client: &mut Client,
    from: u64,
    to: u64,
    extra: Extra,
    deadline: Instant,
) -> anyhow::Result<Option<(Vec<pb::Entry>, Vec<Duration>, Duration)>> {
    let mut request = client.request();
    request.from_time = from;
    request.to_time = to;
    extra.apply(&mut request);
    let mut entries = Vec::new();
    let mut latencies = Vec::new();
    let mut total = Duration::ZERO;
    // Bounded: every page advances through a finite log, and the deadline cuts it short.
    loop {
        if Instant::now() >= deadline {
            return Ok(None);
        }
        let (elapsed, response) = client.find(request.clone()).await?;
        total += elapsed;
        latencies.push(elapsed);
        entries.extend(response.events.into_iter().filter_map(|f| f.entry));
        if response.next_page_token.is_empty() {
            break;
        }
        request.page_token = response.next_page_token;
    }
    Ok(Some((entries, latencies, total)))
}

async fn scans(
    args: &Args,
    ds: &Dataset,
    client: &mut Client,
    deadline: Instant,
) -> anyhow::Result<Vec<ScanResult>> {
    let mut out = Vec::new();
    if args.no_scans {
        return Ok(out);
    }
    for tier in args.tiers() {
        let Some(span) = ds.tier(tier) else { continue };
        for window in [HOUR, DAY] {
            if span.end_time.saturating_sub(span.first_time) <= window {
                continue;
            }
            let mut results: Vec<ScanResult> = EXTRAS
                .iter()
                .map(|&extra| ScanResult {
                    tier,
                    window,
                    extra,
                    windows: 0,
                    pages: 0,
                    rows: 0,
                    scanned: 0,
                    elapsed: Duration::ZERO,
                    page_latencies: Vec::new(),
                    truncated: false,
                })
                .collect();
            let mut rng = Rng::new(mix(args.seed, 0x5ca9 + window + tier as u64));
            'windows: for _ in 0..args.windows {
                let from = rng.range(span.first_time, span.end_time - window);
                let to = from + window;
                let mut expected = [0u64; 3];
                let mut in_window = 0;
                for (slot, &extra) in EXTRAS.iter().enumerate() {
                    let Some((entries, latencies, elapsed)) =
                        scan(client, from, to, extra, deadline).await?
                    else {
                        results[slot].truncated = true;
                        break 'windows;
                    };
                    let indexes: Vec<u64> = entries.iter().map(|e| e.leaf_index).collect();
                    if extra == Extra::None {
                        // The whole window: a contiguous leaf range, all from this tier;
                        // count what each filtered scan must return.
                        ensure!(
                            indexes.windows(2).all(|w| w[1] == w[0] + 1),
                            "{} window [{from}, {to}): leaves not contiguous",
                            tier_name(tier)
                        );
                        for e in &entries {
                            ensure!(
                                e.tier == tier as i32,
                                "{} window [{from}, {to}): leaf {} from tier {}",
                                tier_name(tier),
                                e.leaf_index,
                                e.tier
                            );
                            let record = decode_leaf(&e.leaf)
                                .with_context(|| format!("decoding leaf {}", e.leaf_index))?;
                            ensure!(
                                (from..to).contains(&record.logged_at),
                                "leaf {} logged at {} outside the window [{from}, {to})",
                                e.leaf_index,
                                record.logged_at
                            );
                            for (k, x) in EXTRAS.iter().enumerate() {
                                expected[k] += u64::from(x.filter().matches(&record));
                            }
                        }
                        in_window = entries.len() as u64;
                    } else {
                        ensure!(
                            entries.len() as u64 == expected[slot],
                            "{} window [{from}, {to}) with {}: {} rows, expected {}",
                            tier_name(tier),
                            extra.name(),
                            entries.len(),
                            expected[slot]
                        );
                    }
                    let r = &mut results[slot];
                    r.windows += 1;
                    r.pages += latencies.len();
                    r.rows += entries.len() as u64;
                    r.scanned += in_window;
                    r.elapsed += elapsed;
                    r.page_latencies.extend(latencies);
                }
            }
            out.extend(results);
        }
    }
    Ok(out)
}

// ---- Reporting -------------------------------------------------------------------------------------

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

fn window_name(window: u64) -> &'static str {
    if window == HOUR { "1 hour" } else { "1 day" }
}

fn percentiles_json(p: Option<Percentiles>) -> serde_json::Value {
    match p {
        Some(p) => serde_json::json!({
            "p50_ms": p.p50.as_secs_f64() * 1e3,
            "p95_ms": p.p95.as_secs_f64() * 1e3,
            "p99_ms": p.p99.as_secs_f64() * 1e3,
            "max_ms": p.max.as_secs_f64() * 1e3,
        }),
        None => serde_json::Value::Null,
    }
}

fn report(
    args: &Args,
    ds: &Dataset,
    lookups: &[LookupResult],
    scans: &[ScanResult],
    load: (&str, &str),
) {
    println!();
    println!(
        "indexed lookups: limit {}, newest first, proofs {}; first = first query of the case after the server started (process caches cold, OS page cache not dropped); then {} queries each",
        ds_limit_note(lookups),
        if args.with_proofs { "on" } else { "off" },
        args.queries
    );
    println!();
    println!(
        "| field | tier | first ms | queries | p50 ms | p95 ms | p99 ms | max ms | results/query | target p99 |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|---:|---:|---|");
    for r in lookups {
        let mut lat = r.latencies.clone();
        let p = Percentiles::of(&mut lat);
        let target = match r.tier {
            pb::Tier::Hot => Some(Duration::from_millis(20)),
            pb::Tier::Cold => Some(Duration::from_millis(200)),
            _ => None,
        };
        let verdict = match (target, p) {
            (Some(t), Some(p)) if p.p99 <= t => format!("≤ {} ms: met", t.as_millis()),
            (Some(t), Some(_)) => format!("≤ {} ms: MISSED", t.as_millis()),
            _ => "–".into(),
        };
        let cell = |f: fn(&Percentiles) -> Duration| p.as_ref().map_or("–".into(), |p| ms(f(p)));
        println!(
            "| {} | {} | {} | {}{} | {} | {} | {} | {} | {:.1} | {verdict} |",
            r.field.name(),
            tier_name(r.tier),
            ms(r.first),
            r.latencies.len(),
            if r.truncated { " (deadline)" } else { "" },
            cell(|p| p.p50),
            cell(|p| p.p95),
            cell(|p| p.p99),
            cell(|p| p.max),
            r.results as f64 / r.latencies.len().max(1) as f64,
        );
    }
    println!();
    println!(
        "time-range scans: {} random windows per (tier, length), oldest first, pages of the maximum limit following page tokens; rows in window = rows the server judged",
        args.windows
    );
    println!();
    println!(
        "| tier | window | extra filter | windows | rows in window | rows returned | pages | seconds | rows in window/s | rows returned/s | page p50 ms | page p99 ms |"
    );
    println!("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in scans {
        let secs = r.elapsed.as_secs_f64();
        let mut lat = r.page_latencies.clone();
        let p = Percentiles::of(&mut lat);
        println!(
            "| {} | {} | {} | {}{} | {} | {} | {} | {:.3} | {:.0} | {:.0} | {} | {} |",
            tier_name(r.tier),
            window_name(r.window),
            r.extra.name(),
            r.windows,
            if r.truncated { " (deadline)" } else { "" },
            r.scanned,
            r.rows,
            r.pages,
            secs,
            r.scanned as f64 / secs.max(1e-9),
            r.rows as f64 / secs.max(1e-9),
            p.map_or("–".into(), |p| ms(p.p50)),
            p.map_or("–".into(), |p| ms(p.p99)),
        );
    }
    println!();
    println!(
        "load average (1/5/15 min): before {} / after {}",
        load.0, load.1
    );

    if args.json {
        let json = serde_json::json!({
            "machine": machine(),
            "events": ds.events,
            "segment_bits": ds.segment_bits,
            "tiers": {
                "cold": [0, ds.warm_start],
                "warm": [ds.warm_start, ds.hot_start],
                "hot": [ds.hot_start, ds.events],
            },
            "load_average_before": load.0,
            "load_average_after": load.1,
            "with_proofs": args.with_proofs,
            "lookups": lookups.iter().map(|r| {
                let mut lat = r.latencies.clone();
                serde_json::json!({
                    "field": r.field.name(),
                    "tier": tier_name(r.tier),
                    "first_ms": r.first.as_secs_f64() * 1e3,
                    "first_results": r.first_results,
                    "queries": r.latencies.len(),
                    "truncated": r.truncated,
                    "results": r.results,
                    "latency": percentiles_json(Percentiles::of(&mut lat)),
                })
            }).collect::<Vec<_>>(),
            "scans": scans.iter().map(|r| {
                let mut lat = r.page_latencies.clone();
                serde_json::json!({
                    "tier": tier_name(r.tier),
                    "window_seconds": r.window / NANOS_PER_SEC,
                    "extra_filter": r.extra.name(),
                    "windows": r.windows,
                    "truncated": r.truncated,
                    "rows_in_window": r.scanned,
                    "rows_returned": r.rows,
                    "pages": r.pages,
                    "seconds": r.elapsed.as_secs_f64(),
                    "page_latency": percentiles_json(Percentiles::of(&mut lat)),
                })
            }).collect::<Vec<_>>(),
        });
        println!("{json}");
    }
}

/// The page size the lookups used (all cases share it).
fn ds_limit_note(lookups: &[LookupResult]) -> String {
    let most = lookups
        .iter()
        .map(|r| r.first_results)
        .max()
        .unwrap_or_default();
    format!("server maximum (largest answer {most} events)")
}

// ---- Main ------------------------------------------------------------------------------------------

async fn run(args: Args) -> anyhow::Result<()> {
    for t in &args.tiers {
        ensure!(
            TIERS.iter().any(|x| tier_name(*x) == t),
            "--tiers: unknown tier {t:?} (hot, warm, cold)"
        );
    }
    for f in &args.fields {
        ensure!(
            FIELDS.iter().any(|x| x.name() == f),
            "--fields: unknown field {f:?} (event_id, session_id, correlation_id)"
        );
    }
    let bin = match &args.auditledger {
        Some(b) => b.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("this binary has no directory")?
            .join("auditledger"),
    };
    ensure!(
        bin.is_file(),
        "{} not found: build the workspace first or pass --auditledger",
        bin.display()
    );
    let temp;
    let dir = match &args.data {
        Some(d) => d.clone(),
        None => {
            temp = tempfile::tempdir()?;
            temp.path().join("ledger")
        }
    };
    println!("machine: {}", machine());
    println!(
        "command: {}",
        std::env::args().collect::<Vec<_>>().join(" ")
    );
    let meta = dir.join(META);
    let ds = if meta.is_file() {
        let ds = Dataset::from_meta(&meta)?;
        eprintln!("reusing the dataset in {}", dir.display());
        ds
    } else {
        if dir.exists() {
            ensure!(
                std::fs::read_dir(&dir)?.next().is_none(),
                "{} exists without {META} (an unfinished or foreign directory): remove it or pick another",
                dir.display()
            );
            std::fs::remove_dir(&dir)?;
        }
        eprintln!("building {} events in {}", args.events, dir.display());
        let started = Instant::now();
        let ds = build(&args, &dir, &bin).await?;
        eprintln!("dataset built in {:.1} s", started.elapsed().as_secs_f64());
        ds
    };
    let size = |range: std::ops::Range<u64>| range.end.saturating_sub(range.start);
    let sample = ds.event(ds.events / 2);
    println!(
        "dataset: {} events in {TENANT}/{ENVIRONMENT} (~{} B per event encoded), segments of 2^{} leaves; cold {} / warm {} / hot {} events; logged_at over {:.1} days",
        ds.events,
        sample.encoded_len(),
        ds.segment_bits,
        size(0..ds.warm_start),
        size(ds.warm_start..ds.hot_start),
        size(ds.hot_start..ds.events),
        (ds.last_logged_at - ds.first_logged_at) as f64 / DAY as f64
    );
    if args.build_only {
        return Ok(());
    }

    let config_path = dir.join("config.toml");
    let config = config_path
        .to_str()
        .context("data directory is not UTF-8")?;
    let max_limit = Config::load(&config_path)
        .with_context(|| format!("loading {}", config_path.display()))?
        .limits
        .search_max_limit;
    let token_out = run_cli(
        &bin,
        &[
            "token",
            "create",
            "--config",
            config,
            "--tenant",
            TENANT,
            "--env",
            ENVIRONMENT,
            "--role",
            "investigator",
            "--ttl",
            "1d",
        ],
    )?;
    let token = token_out
        .lines()
        .last()
        .context("`token create` printed nothing")?
        .trim()
        .to_owned();
    let load_before = load_average();
    let started = Instant::now();
    let mut server = Server::start(&bin, config, &dir.join("search-load-serve.log"))?;
    eprintln!(
        "server (pid {}) up at {} after {:.1} s",
        server.child.id(),
        server.url,
        started.elapsed().as_secs_f64()
    );
    let channel = Channel::from_shared(server.url.clone())?
        .tcp_nodelay(true)
        .connect()
        .await
        .with_context(|| format!("connecting to {}", server.url))?;
    let mut client = Client {
        grpc: InvestigateClient::new(channel).max_decoding_message_size(256 << 20),
        token,
        max_limit,
        with_proofs: args.with_proofs,
    };
    // Connection and system-log path warm: an event id that cannot exist touches no data.
    let mut probe = client.request();
    probe.event_id = "not-a-uuid".into();
    let (_, response) = client.find(probe).await?;
    ensure!(
        response.events.is_empty(),
        "malformed event id found events"
    );

    let deadline = Instant::now() + Duration::from_secs(args.max_seconds);
    let lookup_results = lookups(&args, &ds, &mut client, deadline).await?;
    let scan_results = scans(&args, &ds, &mut client, deadline).await?;
    let load_after = load_average();
    let clean = server.stop();
    report(
        &args,
        &ds,
        &lookup_results,
        &scan_results,
        (&load_before, &load_after),
    );
    println!(
        "measured in {:.1} s; server stopped {}",
        started.elapsed().as_secs_f64(),
        if clean {
            "cleanly"
        } else {
            "with an error (see search-load-serve.log)"
        }
    );
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(run(args))
}
