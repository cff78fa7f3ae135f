//! Shared helpers for AuditLedger's end-to-end tests: deterministic keys, event generators, a
//! small PRNG (seeds are printed so failures reproduce).

use auditledger_ledger::event::{AuditEvent, EventKind};
use auditledger_ledger::note::SignerKey;

/// The signing key crash-test children and their parents agree on.
pub fn test_signer() -> SignerKey {
    SignerKey::from_seed("auditledger.local", &[0x5a; 32]).expect("valid key name")
}

/// A UUIDv7 string unique for (`stream`, `n`), with a fixed timestamp part.
pub fn event_id(stream: u32, n: u64) -> String {
    format!(
        "01936f0e-7a2b-7{:03x}-8{:03x}-{:012x}",
        stream & 0xfff,
        (n >> 48) & 0xfff,
        n & 0xffff_ffff_ffff
    )
}

/// A realistic ~500-byte tool-call event.
pub fn tool_call(stream: u32, n: u64, tenant: &str, environment: &str) -> AuditEvent {
    AuditEvent {
        event_id: event_id(stream, n),
        event_kind: EventKind::ToolCall as i32,
        schema_version: 1,
        tenant_id: tenant.into(),
        environment: environment.into(),
        occurred_at: 1_763_700_000_000_000_000 + n,
        trace_id: format!("{:032x}", (u128::from(stream) << 64) | u128::from(n) | 1),
        span_id: format!("{:016x}", n | 1),
        correlation_id: format!("corr-{}", n / 10),
        session_id: format!("session-{stream}-{}", n / 50),
        user_id: format!("user-{}@example.com", n % 97),
        agent_id: format!("agent-{}", n % 11),
        agent_name: "Support Agent".into(),
        model: "model-x".into(),
        gateway_id: format!("gateway-{stream}"),
        gateway_seq: n,
        tool_server: ["github", "jira", "slack", "postgres"][(n % 4) as usize].into(),
        tool_name: ["create_issue", "search", "post_message", "query"][(n % 4) as usize].into(),
        mcp_method: "tools/call".into(),
        arguments_hash: format!("blake3:{}", blake3::hash(&n.to_le_bytes()).to_hex()),
        response_hash: format!("blake3:{}", blake3::hash(&(!n).to_le_bytes()).to_hex()),
        content_ref: format!("s3://content/{stream}/{n}"),
        decision: 1,
        policy_id: "default".into(),
        policy_version: "7".into(),
        decision_reason: format!(
            "allowed: tool on the allow-list of role support-agent (rule {})",
            n % 17
        ),
        data_classification: "internal".into(),
        latency_ms: (n % 900) as u32,
        ..Default::default()
    }
}

/// xorshift64*: small, fast, reproducible from its seed.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.max(1))
    }

    pub fn from_time() -> (Self, u64) {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64);
        (Rng::new(seed), seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in `[lo, hi)`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next_u64() % (hi - lo).max(1)
    }
}
