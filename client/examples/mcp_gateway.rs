//! An MCP gateway's view of the ledger: three decisions flow through `auditledger-client` —
//! a `tools/call` held for approval, the human approval, and a denied secret read — each
//! recorded before the gateway acts on it, with a receipt whose inclusion proof is verified
//! against a signed checkpoint.
//!
//! ```sh
//! target/debug/examples/mcp_gateway --target http://127.0.0.1:50051 \
//!     --token-file data/dev-gateway.token --key "$(auditledger keys list --config data/config.toml)"
//! ```

use std::time::Duration;

use anyhow::{Context as _, bail};
use auditledger_client::{
    Approval, ApprovalOutcome, AuditEvent, Client, Decision, EventKind, Options, Receipt,
    VerifierKey,
};

struct Args {
    target: String,
    token: String,
    keys: Vec<VerifierKey>,
    tenant: String,
    env: String,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut args = Args {
        target: "http://127.0.0.1:50051".into(),
        token: String::new(),
        keys: Vec::new(),
        tenant: "demo".into(),
        env: "dev".into(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--target" => args.target = value()?,
            "--token" => args.token = value()?,
            "--token-file" => {
                let path = value()?;
                args.token = std::fs::read_to_string(&path)
                    .with_context(|| format!("reading {path}"))?
                    .trim()
                    .to_owned();
            }
            "--key" => {
                for line in value()?.lines().filter(|l| !l.trim().is_empty()) {
                    args.keys.push(
                        VerifierKey::parse(line.trim())
                            .with_context(|| format!("--key {line:?}"))?,
                    );
                }
            }
            "--tenant" => args.tenant = value()?,
            "--env" => args.env = value()?,
            other => bail!(
                "unknown argument {other:?}; usage: mcp_gateway --target URL (--token T | --token-file F) --key VKEY [--tenant T --env E]"
            ),
        }
    }
    if args.token.is_empty() {
        bail!("--token or --token-file is required");
    }
    if args.keys.is_empty() {
        bail!("--key is required (the output of `auditledger keys list`)");
    }
    Ok(args)
}

fn now_nanos() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// `blake3:<hex>` of some content the gateway saw (arguments, responses); the ledger stores
/// the hash, the content stays wherever the gateway keeps it.
fn content_hash(content: &str) -> String {
    format!("blake3:{}", blake3_hex(content.as_bytes()))
}

fn blake3_hex(bytes: &[u8]) -> String {
    hex::encode(blake3::hash(bytes).as_bytes())
}

fn print_receipt(what: &str, r: &Receipt) {
    println!(
        "{what}: event {} -> {} leaf {} (leaf hash {}){}",
        r.event_id,
        r.origin,
        r.leaf_index,
        hex::encode(r.leaf_hash),
        if r.duplicate { " [duplicate]" } else { "" }
    );
    if let Some(inc) = &r.inclusion {
        println!(
            "  inclusion proof: {} hashes to tree size {}, verified against the checkpoint signed by {}",
            inc.hashes.len(),
            inc.tree_size,
            inc.verified_by.join(", ")
        );
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    let options = Options {
        // One gateway_id per run: the client numbers events from 1 in memory mode, and the
        // ledger flags a gateway whose numbers go backwards.
        gateway_id: Some(format!(
            "example-mcp-gateway-{}",
            &uuid::Uuid::now_v7().simple().to_string()[20..]
        )),
        // Each receipt comes with a signed checkpoint and an inclusion proof, checked here.
        wait_for_checkpoint: true,
        verifier_keys: args.keys.clone(),
        ..Options::default()
    };
    let client = Client::connect(&args.target, &args.token, options).await?;
    let base = AuditEvent {
        schema_version: auditledger_proto::SCHEMA_VERSION,
        tenant_id: args.tenant.clone(),
        environment: args.env.clone(),
        session_id: "mcp-session-7".into(),
        correlation_id: "incident-42".into(),
        user_id: "alice@example.com".into(),
        agent_id: "support-agent".into(),
        agent_name: "Support Agent".into(),
        model: "example-model".into(),
        ..Default::default()
    };

    // 1. The agent sends an MCP `tools/call`; policy says production writes need approval.
    let call_args = r#"{"repo":"acme/api","pr":17}"#;
    let call = client
        .record(AuditEvent {
            event_kind: EventKind::ToolCall as i32,
            occurred_at: now_nanos(),
            tool_server: "github".into(),
            tool_name: "merge_pull_request".into(),
            mcp_method: "tools/call".into(),
            arguments_hash: content_hash(call_args),
            decision: Decision::RequireApproval as i32,
            policy_id: "prod-write-needs-approval".into(),
            policy_version: "3".into(),
            risk_tier: "high".into(),
            data_classification: "internal".into(),
            ..base.clone()
        })
        .await
        .context("recording the tool call")?;
    let call_id = call.event_id.clone();
    let call_receipt = call.receipt().await?;
    print_receipt("tools/call held for approval", &call_receipt);

    // 2. A human approves; the gateway records the approval, linked to the call, then forwards it.
    let approval = client
        .record(AuditEvent {
            event_kind: EventKind::Approval as i32,
            occurred_at: now_nanos(),
            tool_server: "github".into(),
            tool_name: "merge_pull_request".into(),
            decision: Decision::Allow as i32,
            parent_event_id: call_id,
            approval: Some(Approval {
                approver: "bob@example.com".into(),
                ticket: "CHG-1234".into(),
                outcome: ApprovalOutcome::Approved as i32,
                decided_at: now_nanos(),
                reason: "reviewed the diff".into(),
            }),
            ..base.clone()
        })
        .await
        .context("recording the approval")?;
    print_receipt("approval", &approval.receipt().await?);

    // 3. The agent tries to read a production secret: denied, and the denial is recorded.
    let denied = client
        .record(AuditEvent {
            event_kind: EventKind::Access as i32,
            occurred_at: now_nanos(),
            tool_server: "vault".into(),
            tool_name: "read_secret".into(),
            mcp_method: "tools/call".into(),
            resource: "secret/prod/db-password".into(),
            decision: Decision::Deny as i32,
            decision_reason: "agents may not read production secrets".into(),
            rule_id: "no-prod-secrets".into(),
            data_classification: "restricted".into(),
            ..base
        })
        .await
        .context("recording the denied access")?;
    print_receipt("denied secret read", &denied.receipt().await?);

    let m = client.metrics();
    println!(
        "client metrics: recorded {}, sent {}, acknowledged {}, verified {}, retried {}, rejected {}",
        m.recorded, m.sent, m.acknowledged, m.verified, m.retried, m.rejected
    );
    if m.verified != 3 {
        bail!("only {} of 3 receipts verified", m.verified);
    }
    client.close(Duration::from_secs(5)).await;
    Ok(())
}
