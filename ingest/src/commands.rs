//! Subcommands that do not serve: `init`, `keys`, `fsck`, `demo`.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use auditledger_ledger::event::{Approval, ApprovalOutcome, AuditEvent, Decision, EventKind};
use auditledger_ledger::keys::{Keyring, unix_now, write_atomic};
use auditledger_ledger::{checkpoint, fsck, merkle};

use crate::config::{Config, TEMPLATE};
use crate::open;

/// `auditledger init DIR`: config with documented defaults, data under DIR, a signing key.
/// Returns the verifier key.
pub fn init(
    dir: &Path,
    segment_bits: Option<u8>,
    origin_prefix: Option<&str>,
    key_name: Option<&str>,
) -> anyhow::Result<String> {
    let config_path = dir.join("config.toml");
    if config_path.exists() {
        bail!(
            "{} already exists; refusing to overwrite it (choose another directory or remove it)",
            config_path.display()
        );
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut text = TEMPLATE.to_string();
    if let Some(bits) = segment_bits {
        if !(8..=30).contains(&bits) {
            bail!("--segment-bits {bits} is outside 8..=30");
        }
        text = text.replace("segment_bits = 16", &format!("segment_bits = {bits}"));
    }
    if let Some(prefix) = origin_prefix {
        if !auditledger_ledger::note::is_valid_key_name(prefix) {
            bail!("--origin-prefix {prefix:?} must be non-empty without spaces or '+'");
        }
        text = text.replace(
            "origin_prefix = \"auditledger.local\"",
            &format!("origin_prefix = {}", toml::Value::from(prefix)),
        );
    }
    // Validate what we are about to write before creating any key.
    let config = Config::parse(&text, &config_path, std::iter::empty())?;
    let keyring_path = config.keyring_path();
    std::fs::create_dir_all(keyring_path.parent().unwrap_or(dir))?;
    // A previous init that failed after creating the keyring left a usable one: keep it.
    let keyring = if keyring_path.exists() {
        Keyring::load(&keyring_path)?
    } else {
        let mut ring = Keyring::new_at(&keyring_path);
        ring.generate(key_name.unwrap_or(&config.ledger.origin_prefix), unix_now())?;
        ring.save()?;
        ring
    };
    write_atomic(&config_path, text.as_bytes(), false)
        .with_context(|| format!("writing {}", config_path.display()))?;
    let verifier = keyring
        .active_verifiers(unix_now())
        .first()
        .map(ToString::to_string)
        .context("the keyring has no active key")?;
    Ok(verifier)
}

/// `auditledger keys list`: one verifier key per active key.
pub fn keys_list(config: &Config) -> anyhow::Result<Vec<String>> {
    let ring = open::load_keyring(config)?;
    let keys: Vec<String> = ring
        .active_verifiers(unix_now())
        .iter()
        .map(ToString::to_string)
        .collect();
    if keys.is_empty() {
        bail!("no active key in {}", config.keyring_path().display());
    }
    Ok(keys)
}

/// `auditledger keys generate`: adds a key that signs from now on, alongside the others.
pub fn keys_generate(config: &Config, name: Option<&str>) -> anyhow::Result<String> {
    let mut ring = open::load_keyring(config)?;
    let name = name.unwrap_or(&config.ledger.origin_prefix);
    let entry = ring.generate(name, unix_now())?.clone();
    ring.save()?;
    Ok(entry.verifier.to_string())
}

/// `auditledger keys export`: the public keyring (every key with its validity window, no
/// private key references) that verifiers take with `auditledger-verify --keyring`. Written
/// atomically to `out`, or returned for stdout.
pub fn keys_export(config: &Config, out: Option<&Path>) -> anyhow::Result<String> {
    let ring = open::load_keyring(config)?;
    let text = auditledger_ledger::keys::PublicKeyring::from_keyring(&ring).to_toml();
    if let Some(out) = out {
        write_atomic(out, text.as_bytes(), false)
            .with_context(|| format!("writing {}", out.display()))?;
    }
    Ok(text)
}

/// `auditledger fsck`: returns the report lines and whether everything verified.
pub fn fsck(config: &Config) -> anyhow::Result<(Vec<String>, bool)> {
    let ring = open::load_keyring(config)?;
    let store = open::open_store(config)?;
    let witnesses = config
        .witnesses
        .parsed()
        .map_err(|e| anyhow::anyhow!("witnesses.keys: {e}"))?;
    let report = fsck::check_with_witnesses(store.as_ref(), &ring.all_verifiers(), &witnesses)?;
    let mut lines = Vec::new();
    for log in &report.logs {
        let mut cosignatures = String::new();
        if log.cosignatures_checked > 0 {
            cosignatures += &format!(", {} witness cosignatures", log.cosignatures_checked);
        }
        if log.cosignatures_unverified > 0 {
            cosignatures += &format!(
                " ({} more by witnesses not in [witnesses] keys, not verified)",
                log.cosignatures_unverified
            );
        }
        lines.push(format!(
            "{}: {} leaves, {} tiles, {} checkpoints{cosignatures} checked: {}",
            log.origin,
            log.leaves_checked,
            log.tiles_checked,
            log.checkpoints_checked,
            log.problem.as_deref().unwrap_or("ok")
        ));
    }
    for p in &report.store_problems {
        lines.push(format!("store: {p}"));
    }
    let clean = report.is_clean();
    lines.push(if clean {
        format!("fsck: {} logs verified, no problems", report.logs.len())
    } else {
        format!("fsck: {} problem(s) found", report.problems().len())
    });
    Ok((lines, clean))
}

/// `auditledger tiers`: a table of every log's tier usage.
pub fn tiers(config: &Config) -> anyhow::Result<Vec<String>> {
    let (ledger, _store) = open::open_ledger(config)?;
    let now = auditledger_ledger::Clock::now_nanos(&auditledger_ledger::SystemClock);
    let cutoff = now.saturating_sub(config.tiers.hot_window.as_nanos() as u64);
    let mut lines = vec![format!(
        "{:<48} {:>5} {:>12} {:>9} {:>14} {:<30} {:<30}",
        "log", "tier", "leaves", "segments", "bytes", "oldest", "newest"
    )];
    let time = |nanos: u64| {
        if nanos == 0 || nanos == u64::MAX {
            "-".to_owned()
        } else {
            humantime::format_rfc3339_nanos(
                std::time::UNIX_EPOCH + std::time::Duration::from_nanos(nanos),
            )
            .to_string()
        }
    };
    for log in ledger.logs() {
        let status = crate::admin::log_tier_status(&log, cutoff)?;
        for t in &status.tiers {
            let tier = auditledger_proto::v1::Tier::try_from(t.tier)
                .map_or("?", |t| t.as_str_name().trim_start_matches("TIER_"))
                .to_lowercase();
            lines.push(format!(
                "{:<48} {:>5} {:>12} {:>9} {:>14} {:<30} {:<30}",
                status.origin,
                tier,
                t.leaves,
                t.segments,
                if t.tier == auditledger_proto::v1::Tier::Hot as i32 {
                    "-".to_owned()
                } else {
                    t.bytes.to_string()
                },
                time(t.oldest),
                time(t.newest)
            ));
        }
        lines.push(format!(
            "{:<48} tree size {}, {} full segment(s) due to leave the hot tier",
            status.origin, status.tree_size, status.pending_moves
        ));
    }
    ledger.close()?;
    Ok(lines)
}

fn new_event_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// Three events of one agent session: a tool call held for approval, the approval, and a denied
/// access.
pub fn demo_events(tenant: &str, environment: &str) -> Vec<AuditEvent> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let base = AuditEvent {
        schema_version: auditledger_proto::SCHEMA_VERSION,
        tenant_id: tenant.into(),
        environment: environment.into(),
        occurred_at: now,
        session_id: "demo-session-1".into(),
        correlation_id: "demo-incident-42".into(),
        user_id: "alice@example.com".into(),
        agent_id: "support-agent".into(),
        agent_name: "Support Agent".into(),
        model: "demo-model".into(),
        gateway_id: "demo-gateway".into(),
        tool_server: "github".into(),
        ..Default::default()
    };
    let call_id = new_event_id();
    vec![
        AuditEvent {
            event_id: call_id.clone(),
            event_kind: EventKind::ToolCall as i32,
            gateway_seq: 1,
            tool_name: "merge_pull_request".into(),
            mcp_method: "tools/call".into(),
            arguments_hash: format!("blake3:{}", blake3_hex(b"{\"pr\":17}")),
            decision: Decision::RequireApproval as i32,
            policy_id: "prod-write-needs-approval".into(),
            policy_version: "3".into(),
            risk_tier: "high".into(),
            data_classification: "internal".into(),
            ..base.clone()
        },
        AuditEvent {
            event_id: new_event_id(),
            event_kind: EventKind::Approval as i32,
            gateway_seq: 2,
            tool_name: "merge_pull_request".into(),
            decision: Decision::Allow as i32,
            parent_event_id: call_id,
            approval: Some(Approval {
                approver: "bob@example.com".into(),
                ticket: "CHG-1234".into(),
                outcome: ApprovalOutcome::Approved as i32,
                decided_at: now,
                reason: "reviewed".into(),
            }),
            ..base.clone()
        },
        AuditEvent {
            event_id: new_event_id(),
            event_kind: EventKind::Access as i32,
            gateway_seq: 3,
            tool_server: "vault".into(),
            tool_name: "read_secret".into(),
            resource: "secret/prod/db-password".into(),
            decision: Decision::Deny as i32,
            decision_reason: "agents may not read production secrets".into(),
            rule_id: "no-prod-secrets".into(),
            data_classification: "restricted".into(),
            ..base
        },
    ]
}

fn blake3_hex(data: &[u8]) -> String {
    blake3::hash(data).to_hex().to_string()
}

/// `auditledger demo`: appends the demo batch, signs a checkpoint, proves the first event.
pub fn demo(config: &Config) -> anyhow::Result<Vec<String>> {
    let (ledger, _store) = open::open_ledger(config)?;
    let env = config
        .ledger
        .environments
        .first()
        .cloned()
        .unwrap_or_else(|| "dev".into());
    let receipts = ledger.append_blocking("demo", &demo_events("demo", &env))?;
    ledger.checkpoint_now()?;
    let log = ledger
        .log("demo", &env)
        .context("demo log missing after append")?;
    let cp = log
        .latest_checkpoint()
        .context("no checkpoint after checkpoint_now")?;
    let verifiers = ledger
        .keyring()
        .read()
        .map_err(|_| anyhow::anyhow!("keyring lock poisoned"))?
        .all_verifiers();
    let opened = checkpoint::open(cp.note.as_bytes(), &verifiers)?;
    let mut out = Vec::new();
    for r in &receipts {
        out.push(format!(
            "appended {} to {} at leaf {} (hash {})",
            r.event_id,
            r.origin,
            r.leaf_index,
            hex::encode(r.leaf_hash)
        ));
    }
    let first = &receipts[0];
    let proof = log.inclusion_proof(first.leaf_index, opened.checkpoint.tree_size)?;
    merkle::verify_inclusion(
        first.leaf_index,
        opened.checkpoint.tree_size,
        &first.leaf_hash,
        &proof,
        &opened.checkpoint.root_hash,
    )?;
    out.push(String::new());
    out.push("latest signed checkpoint:".into());
    out.push(cp.note.trim_end().to_string());
    out.push(String::new());
    out.push(format!(
        "inclusion proof of leaf {} ({} hashes) verified against the checkpoint with {}",
        first.leaf_index,
        proof.len(),
        opened
            .signed_by
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    ));
    ledger.close()?;
    Ok(out)
}

/// `auditledger token create`: returns (name, token).
pub fn token_create(
    config: &Config,
    tenants: &[String],
    environments: &[String],
    role: &str,
    ttl: Option<&str>,
    name: Option<&str>,
) -> anyhow::Result<(String, String)> {
    let role = crate::auth::Role::parse(role).map_err(anyhow::Error::msg)?;
    for t in tenants {
        if t != "*" && t != auditledger_ledger::event::SYSTEM_TENANT {
            auditledger_ledger::event::check_name("--tenant", t)?;
        }
    }
    for e in environments {
        if e != "*" && !config.ledger.environments.contains(e) {
            bail!(
                "--env {e:?} is not a configured environment ({})",
                config.ledger.environments.join(", ")
            );
        }
    }
    let ttl = ttl
        .map(|t| humantime::parse_duration(t).with_context(|| format!("--ttl {t:?}")))
        .transpose()?;
    let (name, token) = crate::auth::create_token(
        &config.tokens_path(),
        &crate::auth::NewToken {
            name,
            role,
            tenants,
            environments,
            ttl,
        },
    )
    .map_err(anyhow::Error::msg)?;
    Ok((name, token))
}

/// `auditledger append`: sends the demo batch to a server, waits for its checkpoint.
pub async fn append_demo(
    target: &str,
    token: &str,
    tenant: &str,
    environment: &str,
) -> anyhow::Result<Vec<String>> {
    use auditledger_proto::v1 as pb;
    let mut client = pb::ingest_client::IngestClient::connect(target.to_owned())
        .await
        .with_context(|| format!("connecting to {target}"))?;
    let mut request = tonic::Request::new(pb::AppendRequest {
        events: demo_events(tenant, environment),
        wait_for_checkpoint: true,
    });
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}")
            .parse()
            .context("token is not a valid header value")?,
    );
    let response = client
        .append(request)
        .await
        .map_err(|s| anyhow::anyhow!("{:?}: {}", s.code(), s.message()))?
        .into_inner();
    let mut out = Vec::new();
    for r in &response.receipts {
        out.push(format!(
            "durable: {} -> {} leaf {} (hash {}, {} proof hashes)",
            r.event_id,
            r.origin,
            r.leaf_index,
            hex::encode(&r.leaf_hash),
            r.proof.as_ref().map_or(0, |p| p.hashes.len())
        ));
    }
    if let Some(cp) = response.checkpoint {
        out.push(String::new());
        out.push("signed checkpoint covering them:".into());
        out.push(cp.note.trim_end().to_owned());
    }
    Ok(out)
}

/// Where `init` puts the config of DIR.
pub fn config_path_in(dir: &Path) -> PathBuf {
    dir.join("config.toml")
}

/// What `auditledger export` asks for.
pub struct ExportCommand<'a> {
    pub target: &'a str,
    pub token: &'a str,
    pub tenant: &'a str,
    pub environment: &'a str,
    /// Leaf range `[start, end)`; both 0 = by time.
    pub start: u64,
    pub end: u64,
    /// `logged_at` window, unix nanoseconds.
    pub from_time: u64,
    pub to_time: u64,
    pub justification: &'a str,
    pub out: &'a Path,
}

/// Streams a `Compliance.Export` into `out` (written under a temporary name and renamed when
/// complete, so a failed export never leaves a file that looks whole). Returns the bytes
/// written.
pub async fn export(cmd: &ExportCommand<'_>) -> anyhow::Result<u64> {
    use auditledger_proto::v1 as pb;
    use std::io::Write as _;
    let mut client = pb::compliance_client::ComplianceClient::connect(cmd.target.to_owned())
        .await
        .with_context(|| format!("connecting to {}", cmd.target))?
        .max_decoding_message_size(4 << 20);
    let mut request = tonic::Request::new(pb::ExportRequest {
        tenant_id: cmd.tenant.to_owned(),
        environment: cmd.environment.to_owned(),
        start: cmd.start,
        end: cmd.end,
        from_time: cmd.from_time,
        to_time: cmd.to_time,
        justification: cmd.justification.to_owned(),
    });
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {}", cmd.token)
            .parse()
            .context("token is not a valid header value")?,
    );
    let status =
        |s: tonic::Status| anyhow::anyhow!("export refused: {:?}: {}", s.code(), s.message());
    let mut stream = client.export(request).await.map_err(status)?.into_inner();
    let dir = match cmd.out.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => PathBuf::from("."),
    };
    let mut tmp = tempfile::NamedTempFile::new_in(&dir)
        .with_context(|| format!("creating a temporary file in {}", dir.display()))?;
    let mut written = 0u64;
    while let Some(chunk) = stream.message().await.map_err(status)? {
        tmp.write_all(&chunk.data)
            .with_context(|| format!("writing {}", tmp.path().display()))?;
        written += chunk.data.len() as u64;
    }
    tmp.as_file()
        .sync_all()
        .context("syncing the export file")?;
    tmp.persist(cmd.out)
        .with_context(|| format!("renaming the export to {}", cmd.out.display()))?;
    Ok(written)
}

/// Converts a signed export tar into OCSF JSON lines at `out` (written under a temporary name
/// and renamed when complete). The tar is read once; see [`crate::ocsf`].
pub fn export_to_ocsf(tar: &Path, out: &Path) -> anyhow::Result<crate::ocsf::OcsfSummary> {
    let file = std::fs::File::open(tar).with_context(|| format!("opening {}", tar.display()))?;
    let dir = match out.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => PathBuf::from("."),
    };
    let tmp = tempfile::NamedTempFile::new_in(&dir)
        .with_context(|| format!("creating a temporary file in {}", dir.display()))?;
    let mut writer = std::io::BufWriter::new(tmp);
    let summary = crate::ocsf::convert_export(std::io::BufReader::new(file), &mut writer)
        .with_context(|| format!("converting {} to OCSF", tar.display()))?;
    let tmp = writer
        .into_inner()
        .map_err(|e| anyhow::anyhow!("writing OCSF output: {}", e.error()))?;
    tmp.as_file().sync_all().context("syncing the OCSF file")?;
    tmp.persist(out)
        .with_context(|| format!("renaming the OCSF output to {}", out.display()))?;
    Ok(summary)
}

/// A point in time as unix nanoseconds: RFC 3339 (`2026-11-23T10:00:00Z`) or a plain number.
pub fn parse_time_nanos(text: &str) -> anyhow::Result<u64> {
    if let Ok(nanos) = text.parse::<u64>() {
        return Ok(nanos);
    }
    let time = humantime::parse_rfc3339_weak(text)
        .map_err(|e| anyhow::anyhow!("not RFC 3339 or unix nanoseconds: {e}"))?;
    let nanos = time
        .duration_since(std::time::UNIX_EPOCH)
        .context("before 1970")?
        .as_nanos();
    u64::try_from(nanos).context("beyond the year 2554")
}

/// An Admin client with the bearer token on every call.
async fn admin_client(
    target: &str,
    token: &str,
) -> anyhow::Result<(
    auditledger_proto::v1::admin_client::AdminClient<tonic::transport::Channel>,
    tonic::metadata::MetadataValue<tonic::metadata::Ascii>,
)> {
    let client = auditledger_proto::v1::admin_client::AdminClient::connect(target.to_owned())
        .await
        .with_context(|| format!("connecting to {target}"))?;
    let bearer = format!("Bearer {token}")
        .parse()
        .context("token is not a valid header value")?;
    Ok((client, bearer))
}

fn with_token<T>(
    message: T,
    bearer: &tonic::metadata::MetadataValue<tonic::metadata::Ascii>,
) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", bearer.clone());
    request
}

fn refused(method: &str) -> impl Fn(tonic::Status) -> anyhow::Error + '_ {
    move |s| anyhow::anyhow!("{method} refused: {:?}: {}", s.code(), s.message())
}

/// `Admin.RotateSigningKey` on a running server; the new key.
pub async fn keys_rotate(
    target: &str,
    token: &str,
    request: auditledger_proto::v1::RotateSigningKeyRequest,
) -> anyhow::Result<auditledger_proto::v1::KeyInfo> {
    let (mut client, bearer) = admin_client(target, token).await?;
    Ok(client
        .rotate_signing_key(with_token(request, &bearer))
        .await
        .map_err(refused("RotateSigningKey"))?
        .into_inner())
}

/// `Admin.RevokeKey` on a running server; the revoked key.
pub async fn keys_revoke(
    target: &str,
    token: &str,
    request: auditledger_proto::v1::RevokeKeyRequest,
) -> anyhow::Result<auditledger_proto::v1::KeyInfo> {
    let (mut client, bearer) = admin_client(target, token).await?;
    Ok(client
        .revoke_key(with_token(request, &bearer))
        .await
        .map_err(refused("RevokeKey"))?
        .into_inner())
}

/// `Admin.ListKeys` on a running server.
pub async fn keys_status(
    target: &str,
    token: &str,
) -> anyhow::Result<Vec<auditledger_proto::v1::KeyInfo>> {
    let (mut client, bearer) = admin_client(target, token).await?;
    Ok(client
        .list_keys(with_token(
            auditledger_proto::v1::ListKeysRequest {},
            &bearer,
        ))
        .await
        .map_err(refused("ListKeys"))?
        .into_inner()
        .keys)
}

/// One line per key: `<verifier key> <signing|not signing> valid_from=… [valid_until=…]
/// [revoked_at=…]` (unix seconds).
pub fn key_info_line(key: &auditledger_proto::v1::KeyInfo) -> String {
    let mut line = format!(
        "{} {} valid_from={}",
        key.verifier_key,
        if key.active { "signing" } else { "not-signing" },
        key.valid_from
    );
    if key.valid_until != 0 {
        line.push_str(&format!(" valid_until={}", key.valid_until));
    }
    if key.revoked_at != 0 {
        line.push_str(&format!(" revoked_at={}", key.revoked_at));
    }
    line
}
