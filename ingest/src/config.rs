//! The service configuration: one TOML file with documented defaults ([`TEMPLATE`] is what
//! `auditledger init` writes), every key overridable by `AUDITLEDGER_<SECTION>_<KEY>`
//! environment variables (e.g. `AUDITLEDGER_SERVER_LISTEN=127.0.0.1:6000`), many by flags.
//! Relative paths are resolved against the config file's directory.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize};

/// Prefix of environment overrides.
pub const ENV_PREFIX: &str = "AUDITLEDGER_";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading config {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config {path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(d)?;
    humantime::parse_duration(&text).map_err(|e| serde::de::Error::custom(format!("{text:?}: {e}")))
}

fn ser_duration<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&humantime::format_duration(*d).to_string())
}

fn duration_map<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<std::collections::BTreeMap<String, Duration>, D::Error> {
    let raw = std::collections::BTreeMap::<String, String>::deserialize(d)?;
    raw.into_iter()
        .map(|(k, text)| {
            humantime::parse_duration(&text)
                .map(|v| (k.clone(), v))
                .map_err(|e| serde::de::Error::custom(format!("{k} = {text:?}: {e}")))
        })
        .collect()
}

fn ser_duration_map<S: serde::Serializer>(
    m: &std::collections::BTreeMap<String, Duration>,
    s: S,
) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeMap as _;
    let mut map = s.serialize_map(Some(m.len()))?;
    for (k, v) in m {
        map.serialize_entry(k, &humantime::format_duration(*v).to_string())?;
    }
    map.end()
}

/// `[ledger]`
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct LedgerSection {
    /// RocksDB directory (hot tier).
    pub data_dir: PathBuf,
    /// First part of every origin line; also the default signing key name.
    pub origin_prefix: String,
    /// Environments events may name.
    pub environments: Vec<String>,
    /// A log that grew gets a new checkpoint within this interval.
    #[serde(deserialize_with = "duration", serialize_with = "ser_duration")]
    pub checkpoint_interval: Duration,
    /// Segment size 2^segment_bits leaves for logs created under this config.
    pub segment_bits: u8,
    /// RocksDB memory budget, bytes: the block cache, to which the memtables are charged
    /// (together at most half of it before the largest is flushed).
    pub block_cache_bytes: usize,
    /// RocksDB memtable per column family, bytes (a flush threshold within the budget).
    pub write_buffer_bytes: usize,
    /// RocksDB table files kept open (LRU beyond that). Bounds descriptors and the per-file
    /// memory, which otherwise grow with the data (sequential keys leave one file per flush).
    pub max_open_files: u32,
    /// Run RocksDB compactions at the lowest CPU and I/O priority, so that they use idle
    /// cycles instead of competing with acknowledgements.
    pub low_priority_compaction: bool,
    /// RocksDB flushes and compactions bypass the page cache (O_DIRECT) where the filesystem
    /// supports it, so their bursts do not queue ahead of the synced WAL writes.
    pub direct_io: bool,
    /// Event bytes accepted but not yet durable before appends wait (backpressure).
    pub max_inflight_bytes: usize,
}

impl Default for LedgerSection {
    fn default() -> Self {
        LedgerSection {
            data_dir: PathBuf::from("hot"),
            origin_prefix: "auditledger.local".into(),
            environments: vec!["dev".into(), "staging".into(), "prod".into()],
            checkpoint_interval: Duration::from_secs(1),
            segment_bits: 16,
            block_cache_bytes: 256 << 20,
            write_buffer_bytes: 64 << 20,
            max_open_files: 512,
            low_priority_compaction: true,
            direct_io: true,
            max_inflight_bytes: 256 << 20,
        }
    }
}

/// `[keys]`
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct KeysSection {
    /// Keyring file (DESIGN §4).
    pub keyring: PathBuf,
}

impl Default for KeysSection {
    fn default() -> Self {
        KeysSection {
            keyring: PathBuf::from("keys/keyring.toml"),
        }
    }
}

/// `[limits]`
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsSection {
    /// Largest encoded event.
    pub max_event_bytes: usize,
    /// Largest append request.
    pub max_batch_bytes: usize,
    /// Most events in one append request.
    pub max_batch_events: usize,
    /// `Investigate.FindEvents`: events per page when the request gives no limit.
    pub search_default_limit: u32,
    /// `Investigate.FindEvents`: most events per page (larger limits are capped to this).
    pub search_max_limit: u32,
    /// `Log.GetInclusionProofs`: most leaves in one request.
    pub max_proof_keys: usize,
}

impl Default for LimitsSection {
    fn default() -> Self {
        LimitsSection {
            max_event_bytes: 64 << 10,
            max_batch_bytes: 4 << 20,
            max_batch_events: 10_000,
            search_default_limit: 100,
            search_max_limit: 1000,
            max_proof_keys: 1000,
        }
    }
}

/// `[server]`
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct ServerSection {
    /// gRPC listen address. Plaintext only on loopback; anything else needs `tls_cert`/`tls_key`.
    pub listen: String,
    /// Prometheus `/metrics` over HTTP; empty = off.
    pub metrics_listen: String,
    /// How long SIGTERM/SIGINT waits for in-flight requests before closing the ledger.
    #[serde(deserialize_with = "duration", serialize_with = "ser_duration")]
    pub shutdown_grace: Duration,
    /// Requests in flight per `AppendStream` (more wait for earlier ones to be acknowledged).
    pub max_inflight_per_stream: usize,
    /// PEM certificate chain and private key; set both to serve TLS 1.3.
    pub tls_cert: PathBuf,
    pub tls_key: PathBuf,
    /// PEM CA bundle; when set, clients must present a certificate it signed (mTLS).
    pub tls_client_ca: PathBuf,
    /// How long a gap in a gateway's `gateway_seq` may stay open (events reordered across
    /// streams) before it is reported as lost events.
    #[serde(deserialize_with = "duration", serialize_with = "ser_duration")]
    pub seq_gap_grace: Duration,
    // Hardening against hostile clients (docs/reliability.md, "Hostile clients").
    /// Open client connections (plaintext and TLS); connections beyond it are closed at once.
    pub max_connections: usize,
    /// A connection that sends no byte (HTTP/2 preface) within this long is closed.
    #[serde(deserialize_with = "duration", serialize_with = "ser_duration")]
    pub handshake_timeout: Duration,
    /// HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS per connection (tonic's default is unlimited).
    pub max_concurrent_streams: u32,
    /// HTTP/2 SETTINGS_MAX_HEADER_LIST_SIZE, bytes: larger metadata is refused.
    pub max_header_list_size: u32,
    /// HTTP/2 PING interval on idle connections, and how long an unanswered PING may wait
    /// before the connection is closed.
    #[serde(deserialize_with = "duration", serialize_with = "ser_duration")]
    pub http2_keepalive_interval: Duration,
    #[serde(deserialize_with = "duration", serialize_with = "ser_duration")]
    pub http2_keepalive_timeout: Duration,
    /// A call must produce its response (for unary calls: after its whole request arrived)
    /// within this long; bounds request bodies that never complete.
    #[serde(deserialize_with = "duration", serialize_with = "ser_duration")]
    pub request_timeout: Duration,
    /// An `AppendStream` that delivers no complete request for this long is closed.
    #[serde(deserialize_with = "duration", serialize_with = "ser_duration")]
    pub stream_idle_timeout: Duration,
    /// Identical denials (same principal, peer address, method, target and reason) within
    /// this window are recorded once, plus one system-log record counting the repeats; so are
    /// one gateway's repeated sequence gaps or regressions (counted in events).
    #[serde(deserialize_with = "duration", serialize_with = "ser_duration")]
    pub denial_window: Duration,
}

impl Default for ServerSection {
    fn default() -> Self {
        ServerSection {
            listen: "127.0.0.1:50051".into(),
            metrics_listen: "127.0.0.1:9464".into(),
            shutdown_grace: Duration::from_secs(10),
            max_inflight_per_stream: 64,
            tls_cert: PathBuf::new(),
            tls_key: PathBuf::new(),
            tls_client_ca: PathBuf::new(),
            seq_gap_grace: Duration::from_secs(10),
            max_connections: 1024,
            handshake_timeout: Duration::from_secs(10),
            max_concurrent_streams: 128,
            max_header_list_size: 16 << 10,
            http2_keepalive_interval: Duration::from_secs(30),
            http2_keepalive_timeout: Duration::from_secs(20),
            request_timeout: Duration::from_secs(60),
            stream_idle_timeout: Duration::from_secs(300),
            denial_window: Duration::from_secs(1),
        }
    }
}

/// A client certificate identity accepted under mTLS (`[[auth.client_cert]]`).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ClientCertEntry {
    /// Subject common name of the certificate.
    pub common_name: String,
    pub role: String,
    pub tenants: Vec<String>,
    pub environments: Vec<String>,
}

/// `[auth]`
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct AuthSection {
    /// Bearer token hashes, written by `auditledger token create`; reloaded when it changes.
    pub tokens_file: PathBuf,
    /// Environment whose system log records denials that name no valid environment.
    pub default_environment: String,
    /// Principals authenticated by client certificate (requires `server.tls_client_ca`).
    pub client_cert: Vec<ClientCertEntry>,
}

impl Default for AuthSection {
    fn default() -> Self {
        AuthSection {
            tokens_file: PathBuf::from("tokens.toml"),
            default_environment: "prod".into(),
            client_cert: Vec::new(),
        }
    }
}

/// `[quotas]` — per tenant, enforced on ingest.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct QuotasSection {
    /// Sustained events per second per tenant (0 = unlimited); bursts up to one second's worth.
    pub events_per_second: u64,
    /// Sustained event bytes per second per tenant (0 = unlimited).
    pub bytes_per_second: u64,
    /// Concurrent `AppendStream`s per tenant (0 = unlimited).
    pub max_streams_per_tenant: usize,
}

impl Default for QuotasSection {
    fn default() -> Self {
        QuotasSection {
            events_per_second: 200_000,
            bytes_per_second: 128 << 20,
            max_streams_per_tenant: 256,
        }
    }
}

/// `[tiers]` — where archived segments go and when (DESIGN §6).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct TiersSection {
    /// Warm tier: a directory (relative to the config file) or an `object_store` URL
    /// (`file:///…`, `s3://bucket/prefix`).
    pub warm_url: String,
    /// Cold tier, same forms.
    pub cold_url: String,
    /// A full segment moves hot → warm once its newest event is older than this.
    #[serde(deserialize_with = "duration", serialize_with = "ser_duration")]
    pub hot_window: Duration,
    /// … and warm → cold once older than this.
    #[serde(deserialize_with = "duration", serialize_with = "ser_duration")]
    pub warm_window: Duration,
    /// Event contents expire (dropped from the segment, hashes kept) once older than this.
    #[serde(deserialize_with = "duration", serialize_with = "ser_duration")]
    pub retention: Duration,
    /// Retention by the events' `data_classification`, overriding `retention` for that class.
    #[serde(deserialize_with = "duration_map", serialize_with = "ser_duration_map")]
    pub retention_by_class: std::collections::BTreeMap<String, Duration>,
    /// How often the archiver inside `serve` looks for work; "0s" turns it off.
    #[serde(deserialize_with = "duration", serialize_with = "ser_duration")]
    pub archive_interval: Duration,
    /// S3-compatible endpoint for `s3://` URLs (e.g. `http://127.0.0.1:9000`); empty = AWS.
    pub s3_endpoint: String,
    /// S3 region.
    pub s3_region: String,
    /// Plain HTTP to the S3 endpoint (local test servers only).
    pub s3_allow_http: bool,
}

const DAY: u64 = 24 * 3600;

impl Default for TiersSection {
    fn default() -> Self {
        TiersSection {
            warm_url: "warm".into(),
            cold_url: "cold".into(),
            hot_window: Duration::from_secs(90 * DAY),
            warm_window: Duration::from_secs(365 * DAY),
            retention: Duration::from_secs(7 * 365 * DAY),
            retention_by_class: std::collections::BTreeMap::new(),
            archive_interval: Duration::from_secs(60),
            s3_endpoint: String::new(),
            s3_region: "us-east-1".into(),
            s3_allow_http: false,
        }
    }
}

/// `[witnesses]` — external witnesses whose cosignatures `Admin.AddCosignature` accepts.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct WitnessesSection {
    /// Witness verifier keys `name+hexid+base64(0x04||pubkey)` (C2SP tlog-cosignature).
    pub keys: Vec<String>,
}

impl WitnessesSection {
    /// The parsed keys (checked at load, so this only fails on a config built by hand).
    pub fn parsed(
        &self,
    ) -> Result<
        Vec<auditledger_ledger::cosignature::WitnessKey>,
        auditledger_ledger::cosignature::CosignatureError,
    > {
        self.keys
            .iter()
            .map(|k| auditledger_ledger::cosignature::WitnessKey::parse(k))
            .collect()
    }
}

/// The whole file.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub ledger: LedgerSection,
    pub keys: KeysSection,
    pub limits: LimitsSection,
    pub server: ServerSection,
    pub auth: AuthSection,
    pub quotas: QuotasSection,
    pub tiers: TiersSection,
    pub witnesses: WitnessesSection,
    /// Directory of the config file; relative paths resolve against it.
    #[serde(skip)]
    pub base_dir: PathBuf,
}

/// What `auditledger init` writes: every key with its default and what it means.
pub const TEMPLATE: &str = r#"# AuditLedger configuration.
# Every key can be overridden by an environment variable AUDITLEDGER_<SECTION>_<KEY>,
# e.g. AUDITLEDGER_LEDGER_CHECKPOINT_INTERVAL=2s. Relative paths are relative to this file.

[ledger]
# RocksDB directory: the hot tier.
data_dir = "hot"
# First part of every log's origin line: <origin_prefix>/<tenant_id>/<environment>.
# Also the name of the signing key created by `auditledger init`.
origin_prefix = "auditledger.local"
# Environments that events may name.
environments = ["dev", "staging", "prod"]
# A log that grew gets a new signed checkpoint within this interval.
checkpoint_interval = "1s"
# Segment size 2^segment_bits leaves (the unit moved to warm/cold storage) for new logs.
segment_bits = 16
# RocksDB memory budget, bytes: block cache, memtables charged to it (at most half of it).
block_cache_bytes = 268435456
# Memtable size per column family, bytes (flush threshold within the budget).
write_buffer_bytes = 67108864
# RocksDB table files kept open (bounds descriptors and per-file memory as data grows).
max_open_files = 512
# Run RocksDB compactions at the lowest CPU and I/O priority (they use idle cycles instead of
# competing with acknowledgements; flushes keep normal priority).
low_priority_compaction = true
# RocksDB flushes and compactions bypass the page cache (O_DIRECT) where the filesystem supports
# it (probed at start; otherwise buffered, with a warning), so their bursts do not queue ahead of
# the synced WAL writes that acknowledgements wait for.
direct_io = true
# Event bytes accepted but not yet durable before appends wait (backpressure).
max_inflight_bytes = 268435456

[keys]
# Keyring: the checkpoint signing keys and their validity (private keys in separate files).
keyring = "keys/keyring.toml"

[limits]
# Largest encoded event, largest append request, most events per request.
max_event_bytes = 65536
max_batch_bytes = 4194304
max_batch_events = 10000
# Investigate.FindEvents: events per page by default, and the most a request may ask for.
search_default_limit = 100
search_max_limit = 1000
# Log.GetInclusionProofs: most leaves in one request.
max_proof_keys = 1000

[server]
# gRPC address. Plaintext is served only on loopback; any other address needs tls_cert and
# tls_key (TLS 1.3), or the server refuses to start.
listen = "127.0.0.1:50051"
# Prometheus metrics at http://<metrics_listen>/metrics; "" turns them off.
metrics_listen = "127.0.0.1:9464"
# On SIGTERM/SIGINT: stop accepting, let in-flight requests finish for up to this long, then
# commit, sign final checkpoints and exit.
shutdown_grace = "10s"
# Append requests in flight per AppendStream.
max_inflight_per_stream = 64
# PEM certificate chain and key for TLS; a client CA bundle turns on mutual TLS.
tls_cert = ""
tls_key = ""
tls_client_ca = ""
# A gap in a gateway's gateway_seq still open after this long is reported (metric and system
# log) as events lost between gateway and ledger.
seq_gap_grace = "10s"
# Limits against hostile or broken clients (docs/reliability.md, "Hostile clients").
# Open connections; more are closed as soon as they are accepted.
max_connections = 1024
# A connection that sends nothing (no HTTP/2 preface) for this long is closed.
handshake_timeout = "10s"
# HTTP/2 streams (calls) at once per connection, and the largest request metadata in bytes.
max_concurrent_streams = 128
max_header_list_size = 16384
# HTTP/2 PING on idle connections; one unanswered for keepalive_timeout closes the connection.
http2_keepalive_interval = "30s"
http2_keepalive_timeout = "20s"
# A call must start answering within this long (a unary request body that never completes is
# cut off); streaming responses may then run longer.
request_timeout = "1m"
# An AppendStream that delivers no complete request for this long is closed.
stream_idle_timeout = "5m"
# Repeated identical denials (same principal, peer, method, target, reason) in this window are
# recorded once, then summed in one system-log record: a flood of bad tokens cannot turn the
# system log into an amplifier. The same holds for one gateway's repeated sequence gaps or
# regressions (summed in events).
denial_window = "1s"

[auth]
# Hashes of bearer tokens (never the tokens), written by `auditledger token create`.
tokens_file = "tokens.toml"
# System log environment for denials whose request names no configured environment.
default_environment = "prod"
# Client certificates accepted under mutual TLS, by subject common name:
# [[auth.client_cert]]
# common_name = "gateway-1.example.com"
# role = "gateway"
# tenants = ["acme"]
# environments = ["prod"]

[quotas]
# Per tenant: sustained events/s and bytes/s (bursts up to one second's worth; 0 = no limit),
# and concurrent AppendStreams.
events_per_second = 200000
bytes_per_second = 134217728
max_streams_per_tenant = 256

[tiers]
# Where full segments go as Parquet: a directory (relative to this file) or an object_store
# URL (file:///..., s3://bucket/prefix). S3 credentials come from the usual AWS_* variables.
warm_url = "warm"
cold_url = "cold"
# A segment moves hot -> warm once its newest event is older than hot_window, warm -> cold
# once older than warm_window; event contents expire after retention (leaf hashes and proofs
# stay). Legal holds block expiry.
hot_window = "90days"
warm_window = "365days"
retention = "2555days"
# How often the archiver inside `serve` looks for work; "0s" turns it off.
archive_interval = "1m"
# Retention by data_classification, overriding `retention` for events of that class, e.g.
# retention_by_class = { restricted = "3650days", public = "365days" }
retention_by_class = {}
# For S3-compatible servers: endpoint (empty = AWS), region, plain HTTP (local tests only).
s3_endpoint = ""
s3_region = "us-east-1"
s3_allow_http = false

[witnesses]
# Witnesses whose cosignatures (C2SP tlog-cosignature, Ed25519 cosignature/v1) Admin.AddCosignature
# accepts, as verifier keys name+hexid+base64(0x04||pubkey). Empty: no cosignatures are accepted.
keys = []
"#;

fn set_override(table: &mut toml::Table, section: &str, key: &str, raw: &str) {
    let value = toml::from_str::<toml::Table>(&format!("v = {raw}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_owned()));
    let entry = table
        .entry(section.to_owned())
        .or_insert_with(|| toml::Value::Table(toml::Table::new()));
    if let toml::Value::Table(t) = entry {
        t.insert(key.to_owned(), value);
    }
}

/// Sections that `AUDITLEDGER_<SECTION>_<KEY>` may override (every section of [`Config`];
/// ingest/tests/config_doc.rs overrides a key of each).
const SECTIONS: &[&str] = &[
    "ledger",
    "keys",
    "limits",
    "server",
    "auth",
    "quotas",
    "tiers",
    "witnesses",
];

impl Config {
    /// Parses config text and applies `AUDITLEDGER_<SECTION>_<KEY>` overrides from `env`.
    pub fn parse(
        text: &str,
        path: &Path,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let invalid = |message: String| ConfigError::Invalid {
            path: path.to_owned(),
            message,
        };
        let mut table: toml::Table = toml::from_str(text).map_err(|e| invalid(e.to_string()))?;
        for (name, raw) in env {
            let Some(rest) = name.strip_prefix(ENV_PREFIX) else {
                continue;
            };
            let rest = rest.to_ascii_lowercase();
            let Some((section, key)) = rest.split_once('_') else {
                continue;
            };
            if SECTIONS.contains(&section) {
                set_override(&mut table, section, key, &raw);
            }
        }
        let mut config: Config = toml::Value::Table(table)
            .try_into()
            .map_err(|e: toml::de::Error| invalid(e.to_string()))?;
        let base = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .map_or_else(|| PathBuf::from("."), Path::to_owned);
        // Absolute, so that relative tier directories become valid `file:///…` URLs (and paths
        // do not change meaning if the process changes directory): `serve --config
        // data/config.toml` once failed with "file:// URLs need an absolute path".
        config.base_dir = std::path::absolute(&base).unwrap_or(base);
        config.validate().map_err(invalid)?;
        Ok(config)
    }

    /// Loads a config file with overrides from the process environment.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, path, std::env::vars())
    }

    fn validate(&self) -> Result<(), String> {
        let t = &self.tiers;
        if !(t.hot_window <= t.warm_window && t.warm_window <= t.retention) {
            return Err(format!(
                "tiers: hot_window ({}) ≤ warm_window ({}) ≤ retention ({}) must hold",
                humantime::format_duration(t.hot_window),
                humantime::format_duration(t.warm_window),
                humantime::format_duration(t.retention)
            ));
        }
        if t.warm_url.is_empty() || t.cold_url.is_empty() || t.warm_url == t.cold_url {
            return Err("tiers.warm_url and tiers.cold_url must be set and differ".into());
        }
        if !(8..=30).contains(&self.ledger.segment_bits) {
            return Err(format!(
                "ledger.segment_bits = {} is outside 8..=30",
                self.ledger.segment_bits
            ));
        }
        if self.ledger.environments.is_empty() {
            return Err("ledger.environments is empty".into());
        }
        for env in &self.ledger.environments {
            auditledger_ledger::event::check_name("ledger.environments", env)
                .map_err(|e| e.to_string())?;
        }
        if !auditledger_ledger::note::is_valid_key_name(&self.ledger.origin_prefix) {
            return Err(format!(
                "ledger.origin_prefix {:?} must be non-empty without spaces or '+'",
                self.ledger.origin_prefix
            ));
        }
        if self.ledger.checkpoint_interval.is_zero() {
            return Err("ledger.checkpoint_interval must be positive".into());
        }
        if self.limits.max_event_bytes == 0
            || self.limits.max_event_bytes > self.limits.max_batch_bytes
        {
            return Err(
                "limits.max_event_bytes must be positive and at most limits.max_batch_bytes".into(),
            );
        }
        if self.limits.max_batch_events == 0 {
            return Err("limits.max_batch_events must be positive".into());
        }
        if self.limits.search_default_limit == 0
            || self.limits.search_default_limit > self.limits.search_max_limit
        {
            return Err(
                "limits.search_default_limit must be positive and at most limits.search_max_limit"
                    .into(),
            );
        }
        if self.limits.max_proof_keys == 0 {
            return Err("limits.max_proof_keys must be positive".into());
        }
        if self.server.max_inflight_per_stream == 0 {
            return Err("server.max_inflight_per_stream must be positive".into());
        }
        let s = &self.server;
        for (name, zero) in [
            ("server.max_connections", s.max_connections == 0),
            (
                "server.max_concurrent_streams",
                s.max_concurrent_streams == 0,
            ),
            ("server.max_header_list_size", s.max_header_list_size == 0),
            ("server.handshake_timeout", s.handshake_timeout.is_zero()),
            (
                "server.http2_keepalive_interval",
                s.http2_keepalive_interval.is_zero(),
            ),
            (
                "server.http2_keepalive_timeout",
                s.http2_keepalive_timeout.is_zero(),
            ),
            ("server.request_timeout", s.request_timeout.is_zero()),
            (
                "server.stream_idle_timeout",
                s.stream_idle_timeout.is_zero(),
            ),
            ("server.denial_window", s.denial_window.is_zero()),
        ] {
            if zero {
                return Err(format!("{name} must be positive"));
            }
        }
        for (i, key) in self.witnesses.keys.iter().enumerate() {
            let parsed = auditledger_ledger::cosignature::WitnessKey::parse(key)
                .map_err(|e| format!("witnesses.keys[{i}]: {e}"))?;
            if self.witnesses.keys[..i]
                .iter()
                .filter_map(|k| auditledger_ledger::cosignature::WitnessKey::parse(k).ok())
                .any(|k| k.name() == parsed.name() && k.key_id() == parsed.key_id())
            {
                return Err(format!(
                    "witnesses.keys[{i}]: witness {} is listed twice",
                    parsed.short()
                ));
            }
        }
        for c in &self.auth.client_cert {
            crate::auth::Role::parse(&c.role)
                .map_err(|e| format!("auth.client_cert {:?}: {e}", c.common_name))?;
        }
        Ok(())
    }

    /// Resolves a configured path against the config directory.
    pub fn resolve(&self, path: &Path) -> PathBuf {
        if path.is_absolute() {
            path.to_owned()
        } else {
            self.base_dir.join(path)
        }
    }

    /// A tier location as an `object_store` URL: URLs stay, paths resolve against the config
    /// file's directory.
    pub fn tier_url(&self, location: &str) -> String {
        if location.contains("://") {
            location.to_owned()
        } else {
            format!("file://{}", self.resolve(Path::new(location)).display())
        }
    }

    pub fn data_dir(&self) -> PathBuf {
        self.resolve(&self.ledger.data_dir)
    }

    pub fn keyring_path(&self) -> PathBuf {
        self.resolve(&self.keys.keyring)
    }

    pub fn tokens_path(&self) -> PathBuf {
        self.resolve(&self.auth.tokens_file)
    }

    /// A configured, non-empty path resolved against the config directory.
    pub fn optional_path(&self, path: &Path) -> Option<PathBuf> {
        (!path.as_os_str().is_empty()).then(|| self.resolve(path))
    }

    /// The ledger options this config describes.
    pub fn ledger_options(&self) -> auditledger_ledger::LedgerOptions {
        auditledger_ledger::LedgerOptions {
            origin_prefix: self.ledger.origin_prefix.clone(),
            environments: self.ledger.environments.clone(),
            checkpoint_interval: self.ledger.checkpoint_interval,
            segment_bits: self.ledger.segment_bits,
            max_event_bytes: self.limits.max_event_bytes,
            max_inflight_bytes: self.ledger.max_inflight_bytes,
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_is_the_defaults() {
        let parsed = Config::parse(TEMPLATE, Path::new("/etc/al/config.toml"), []).unwrap();
        let expected = Config {
            base_dir: PathBuf::from("/etc/al"),
            ..Default::default()
        };
        assert_eq!(parsed, expected);
    }

    #[test]
    fn env_overrides_win() {
        let env = vec![
            (
                "AUDITLEDGER_LEDGER_CHECKPOINT_INTERVAL".to_string(),
                "250ms".to_string(),
            ),
            (
                "AUDITLEDGER_LIMITS_MAX_BATCH_EVENTS".to_string(),
                "5".to_string(),
            ),
            (
                "AUDITLEDGER_LEDGER_ENVIRONMENTS".to_string(),
                "[\"qa\"]".to_string(),
            ),
            ("AUDITLEDGER_CONFIG".to_string(), "ignored".to_string()),
        ];
        let c = Config::parse(TEMPLATE, Path::new("c.toml"), env).unwrap();
        assert_eq!(c.ledger.checkpoint_interval, Duration::from_millis(250));
        assert_eq!(c.limits.max_batch_events, 5);
        assert_eq!(c.ledger.environments, vec!["qa".to_string()]);
        assert_eq!(c.base_dir, std::env::current_dir().unwrap());
    }

    /// A config named by a relative path still gives absolute locations: tier directories are
    /// `file:///…` URLs object_store accepts (the quick start's `--config data/config.toml`).
    #[test]
    fn relative_config_paths_resolve_to_absolute_locations() {
        let c = Config::parse(TEMPLATE, Path::new("data/config.toml"), []).unwrap();
        let cwd = std::env::current_dir().unwrap();
        assert_eq!(c.data_dir(), cwd.join("data/hot"));
        assert_eq!(
            c.tier_url(&c.tiers.warm_url),
            format!("file://{}", cwd.join("data/warm").display())
        );
        assert!(c.tier_url(&c.tiers.cold_url).starts_with("file:///"));
    }

    #[test]
    fn errors_name_the_key() {
        let err = Config::parse("[ledger]\nsegment_bits = 3\n", Path::new("c.toml"), [])
            .unwrap_err()
            .to_string();
        assert!(err.contains("segment_bits = 3"), "{err}");
        let err = Config::parse("[ledger]\nbogus = 1\n", Path::new("c.toml"), [])
            .unwrap_err()
            .to_string();
        assert!(err.contains("bogus"), "{err}");
        let err = Config::parse(
            "[ledger]\ncheckpoint_interval = \"soon\"\n",
            Path::new("c.toml"),
            [],
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("soon"), "{err}");
    }

    #[test]
    fn witnesses_keys_are_checked_and_overridable() {
        let w = auditledger_ledger::cosignature::WitnessSigner::from_seed("w.example", &[3; 32])
            .unwrap()
            .witness_key()
            .to_string();
        let env = vec![(
            "AUDITLEDGER_WITNESSES_KEYS".to_string(),
            format!("[\"{w}\"]"),
        )];
        let c = Config::parse(TEMPLATE, Path::new("c.toml"), env).unwrap();
        assert_eq!(c.witnesses.keys, vec![w.clone()]);
        assert_eq!(c.witnesses.parsed().unwrap()[0].to_string(), w);
        let err = Config::parse(
            "[witnesses]\nkeys = [\"w.example+00000000+BA==\"]\n",
            Path::new("c.toml"),
            [],
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("witnesses.keys[0]"), "{err}");
        let err = Config::parse(
            &format!("[witnesses]\nkeys = [\"{w}\", \"{w}\"]\n"),
            Path::new("c.toml"),
            [],
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("listed twice"), "{err}");
    }

    #[test]
    fn tiers_retention_by_class_and_order() {
        let c = Config::parse(
            "[tiers]\nretention_by_class = { restricted = \"3650days\" }\n",
            Path::new("c.toml"),
            [],
        )
        .unwrap();
        assert_eq!(
            c.tiers.retention_by_class.get("restricted"),
            Some(&Duration::from_secs(3650 * DAY))
        );
        let err = Config::parse(
            "[tiers]\nretention_by_class = { public = \"forever\" }\n",
            Path::new("c.toml"),
            [],
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("public") && err.contains("forever"), "{err}");
        let err = Config::parse(
            "[tiers]\nhot_window = \"400days\"\n",
            Path::new("c.toml"),
            [],
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("hot_window"), "{err}");
    }
}
