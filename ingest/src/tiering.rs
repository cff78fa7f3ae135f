//! The archiver inside the service: tier stores from `[tiers]`, content deletions recorded in
//! the system log before they happen, moves recorded after, a periodic pass inside `serve`, and
//! `auditledger archive --once` / `auditledger tiers`.

use auditledger_ledger::{Clock as _, SystemClock};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use auditledger_archiver::{
    Archiver, ArchiverConfig, Deletion, DeletionHook, MoveHook, PassReport, SegmentMove,
    TierStores,
    store::{S3Options, SegmentStore, StoreOptions},
};
use auditledger_ledger::Ledger;
use auditledger_ledger::event::{Decision, EventKind};
use auditledger_ledger::segments::Tier;
use tokio::sync::watch;

use crate::config::Config;
use crate::syslog::{SystemLog, SystemRecord};

/// Principal named in the system log for the archiver's own actions.
pub const ARCHIVER_PRINCIPAL: &str = "auditledger-archiver";

/// Opens the warm and cold object stores named by `[tiers]`.
pub fn stores(config: &Config) -> anyhow::Result<TierStores> {
    let t = &config.tiers;
    let options = StoreOptions {
        s3: S3Options {
            endpoint: (!t.s3_endpoint.is_empty()).then(|| t.s3_endpoint.clone()),
            region: Some(t.s3_region.clone()),
            allow_http: Some(t.s3_allow_http),
            ..Default::default()
        },
        ..Default::default()
    };
    let open = |name: &str, location: &str| -> anyhow::Result<SegmentStore> {
        let url = config.tier_url(location);
        SegmentStore::open(&url, &options).with_context(|| format!("opening tiers.{name} {url}"))
    };
    Ok(TierStores {
        warm: open("warm_url", &t.warm_url)?,
        cold: open("cold_url", &t.cold_url)?,
    })
}

pub fn archiver_config(config: &Config) -> ArchiverConfig {
    ArchiverConfig {
        hot_window: config.tiers.hot_window,
        warm_window: config.tiers.warm_window,
        retention: config.tiers.retention,
        retention_by_class: config.tiers.retention_by_class.clone(),
        ..Default::default()
    }
}

fn deletion_record(d: &Deletion) -> SystemRecord {
    let mut attributes = BTreeMap::new();
    attributes.insert("start".into(), d.start.to_string());
    attributes.insert("end".into(), d.end.to_string());
    attributes.insert("tier".into(), d.tier.to_string());
    attributes.insert("leaves_expired".into(), d.leaves_expired.to_string());
    attributes.insert("leaves_held".into(), d.leaves_held.to_string());
    if !d.holds.is_empty() {
        attributes.insert("holds".into(), d.holds.join(","));
    }
    SystemRecord {
        kind: EventKind::Retention,
        environment: d.environment.clone(),
        principal: ARCHIVER_PRINCIPAL.into(),
        method: "archiver.expire".into(),
        decision: Decision::Allow,
        reason: format!(
            "retention ended: content of {} leaves of {} [{}, {}) deleted from the {} tier (hashes and proofs kept)",
            d.leaves_expired, d.origin, d.start, d.end, d.tier
        ),
        target: format!("{}/{}", d.tenant_id, d.environment),
        justification: String::new(),
        attributes,
    }
}

/// A hook that records each deletion durably in the system log before it happens; if the
/// record cannot be written, the deletion does not happen.
pub fn syslog_hook(syslog: Arc<SystemLog>) -> DeletionHook {
    Arc::new(move |d: Deletion| {
        let syslog = syslog.clone();
        Box::pin(async move {
            syslog
                .record(&deletion_record(&d))
                .await
                .map_err(|e| format!("cannot record the deletion in the system log: {e}"))
        })
    })
}

/// Builds the archiver of `ledger` as `config` describes it.
/// The service's archiver: every deletion and every move recorded durably in the system log
/// before it happens.
pub fn archiver(
    config: &Config,
    ledger: Arc<Ledger>,
    syslog: &Arc<SystemLog>,
) -> anyhow::Result<Archiver> {
    Ok(Archiver::new(
        ledger,
        stores(config)?,
        archiver_config(config),
        syslog_hook(syslog.clone()),
    )
    .with_move_hook(syslog_move_hook(syslog.clone())))
}

fn move_record(m: &SegmentMove) -> SystemRecord {
    let (tenant, environment) = split_origin(&m.origin);
    let mut attributes = BTreeMap::new();
    attributes.insert("start".into(), m.start.to_string());
    attributes.insert("end".into(), m.end.to_string());
    attributes.insert("from".into(), m.from.to_string());
    attributes.insert("to".into(), m.to.to_string());
    attributes.insert("bytes".into(), m.bytes.to_string());
    SystemRecord {
        kind: EventKind::Retention,
        environment: environment.to_owned(),
        principal: ARCHIVER_PRINCIPAL.into(),
        method: "archiver.move".into(),
        decision: Decision::Allow,
        reason: format!(
            "segment {} [{}, {}) moves {} -> {} (its copy is written and verified; the move commits after this record)",
            m.origin, m.start, m.end, m.from, m.to
        ),
        target: format!("{tenant}/{environment}"),
        justification: String::new(),
        attributes,
    }
}

/// A hook that records each move durably in the system log before it commits; if the record
/// cannot be written, the move does not happen (retried on the next pass). A move repeated
/// after a crash between the record and the commit is recorded twice, never zero times.
pub fn syslog_move_hook(syslog: Arc<SystemLog>) -> MoveHook {
    Arc::new(move |m: SegmentMove| {
        let syslog = syslog.clone();
        Box::pin(async move {
            syslog
                .record(&move_record(&m))
                .await
                .map_err(|e| format!("cannot record the move in the system log: {e}"))
        })
    })
}

/// Logs a pass's moves and failures in the service log (the system log got each move from
/// [`syslog_move_hook`] before it committed).
pub fn report_pass(report: &PassReport) {
    for m in &report.moved {
        tracing::info!(origin = %m.origin, start = m.start, end = m.end, from = %m.from, to = %m.to, bytes = m.bytes, "segment moved");
    }
    for f in &report.failures {
        tracing::warn!(failure = %f, "archiver step failed; retried on the next pass");
    }
}

/// `<prefix>/<tenant>/<environment>` → (tenant, environment).
fn split_origin(origin: &str) -> (&str, &str) {
    let mut parts = origin.rsplitn(3, '/');
    let environment = parts.next().unwrap_or("");
    let tenant = parts.next().unwrap_or("");
    (tenant, environment)
}

/// Runs a pass every `interval` until `shutdown` flips to true.
pub async fn run_loop(
    archiver: Arc<Archiver>,
    interval: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
        let report = archiver.pass(SystemClock.now_nanos()).await;
        report_pass(&report);
    }
}

/// `auditledger archive --once`: one step down to `to` for every segment older than
/// `older_than`; returns printable lines and whether every step succeeded.
pub async fn archive_once(
    config: &Config,
    to: Tier,
    older_than: Duration,
) -> anyhow::Result<(Vec<String>, bool)> {
    if to == Tier::Hot {
        anyhow::bail!("--tier names where segments go: warm or cold");
    }
    let (ledger, _store) = crate::open::open_ledger(config)?;
    let ledger = Arc::new(ledger);
    let syslog = SystemLog::start(ledger.clone(), config.auth.default_environment.clone());
    let archiver = archiver(config, ledger.clone(), &syslog)?;
    let report = archiver
        .move_down(to, older_than, SystemClock.now_nanos())
        .await;
    report_pass(&report);
    let mut lines = Vec::new();
    for m in &report.moved {
        lines.push(format!(
            "moved {} [{}, {}) {} -> {} ({} bytes)",
            m.origin, m.start, m.end, m.from, m.to, m.bytes
        ));
    }
    for f in &report.failures {
        lines.push(format!("failed: {f}"));
    }
    lines.push(format!(
        "archive: {} segment(s) moved to {to}, {} failure(s)",
        report.moved.len(),
        report.failures.len()
    ));
    syslog.close().await;
    drop(archiver);
    ledger.close()?;
    Ok((lines, report.failures.is_empty()))
}
