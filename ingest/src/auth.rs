//! Authentication and authorization (DESIGN §5): bearer tokens stored as SHA-256 hashes in a
//! tokens file (reloaded when it changes), optional mTLS client certificates, roles, and the
//! tenant/environment coverage of a principal.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::RwLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::config::ClientCertEntry;

/// What a principal may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    /// Append events only.
    Gateway,
    /// Read, search, proofs; justification required for event contents.
    Investigator,
    /// Exports; justification required.
    Compliance,
    /// Checkpoints and proofs, never event contents.
    Auditor,
    /// Everything on the tenants it covers, and key and hold management.
    Admin,
}

impl Role {
    pub fn parse(text: &str) -> Result<Role, String> {
        match text {
            "gateway" => Ok(Role::Gateway),
            "investigator" => Ok(Role::Investigator),
            "compliance" => Ok(Role::Compliance),
            "auditor" => Ok(Role::Auditor),
            "admin" => Ok(Role::Admin),
            other => Err(format!(
                "unknown role {other:?} (gateway, investigator, compliance, auditor, admin)"
            )),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Gateway => "gateway",
            Role::Investigator => "investigator",
            Role::Compliance => "compliance",
            Role::Auditor => "auditor",
            Role::Admin => "admin",
        }
    }
}

/// An authenticated caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    /// Token name or certificate common name; recorded in every leaf it appends.
    pub name: String,
    pub role: Role,
    /// Tenants covered; `*` covers all except `_system`.
    pub tenants: Vec<String>,
    /// Environments covered; `*` covers all.
    pub environments: Vec<String>,
    /// Unix seconds.
    pub expires_at: Option<u64>,
}

impl Principal {
    /// Whether this principal may act on `tenant`'s `environment` log.
    pub fn covers(&self, tenant: &str, environment: &str) -> bool {
        let tenant_ok = self.tenants.iter().any(|t| {
            t == tenant || (t == "*" && tenant != auditledger_ledger::event::SYSTEM_TENANT)
        });
        let env_ok = self
            .environments
            .iter()
            .any(|e| e == environment || e == "*");
        tenant_ok && env_ok
    }
}

/// Why authentication failed (always UNAUTHENTICATED).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("missing credentials: send `authorization: Bearer <token>` or a client certificate")]
    Missing,
    #[error("malformed authorization header: expected `Bearer <token>`")]
    Malformed,
    #[error("unknown or revoked token")]
    UnknownToken,
    #[error("token {name:?} expired at {expired}")]
    Expired { name: String, expired: String },
    #[error("client certificate {0:?} is not an accepted principal")]
    UnknownCertificate(String),
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenEntry {
    name: String,
    /// Hex SHA-256 of the token.
    sha256: String,
    role: String,
    tenants: Vec<String>,
    environments: Vec<String>,
    created_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    expires_at: Option<String>,
}

#[derive(Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokensFile {
    #[serde(default, rename = "token")]
    tokens: Vec<TokenEntry>,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn rfc3339(secs: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(secs)).to_string()
}

fn parse_time(text: &str) -> Result<u64, String> {
    humantime::parse_rfc3339_weak(text)
        .map_err(|e| format!("{text:?}: {e}"))?
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .map_err(|_| format!("{text:?} is before 1970"))
}

fn token_hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

fn load_tokens(path: &Path) -> Result<HashMap<[u8; 32], Principal>, String> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(HashMap::new()),
        Err(e) => return Err(format!("reading {}: {e}", path.display())),
    };
    let file: TokensFile = toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut out = HashMap::new();
    for t in file.tokens {
        let bad = |m: String| format!("{}: token {:?}: {m}", path.display(), t.name);
        let hash: [u8; 32] = hex::decode(&t.sha256)
            .ok()
            .and_then(|h| h.try_into().ok())
            .ok_or_else(|| bad("sha256 must be 64 hex digits".into()))?;
        let role = Role::parse(&t.role).map_err(bad)?;
        let expires_at = t
            .expires_at
            .as_deref()
            .map(parse_time)
            .transpose()
            .map_err(bad)?;
        out.insert(
            hash,
            Principal {
                name: t.name.clone(),
                role,
                tenants: t.tenants.clone(),
                environments: t.environments.clone(),
                expires_at,
            },
        );
    }
    Ok(out)
}

struct Loaded {
    tokens: HashMap<[u8; 32], Principal>,
    modified: Option<SystemTime>,
    checked: SystemTime,
}

/// Authenticates requests. Re-reads the tokens file at most once a second when it changed, so
/// `auditledger token create` takes effect without a restart.
pub struct Authenticator {
    tokens_path: PathBuf,
    loaded: RwLock<Loaded>,
    certs: HashMap<String, Principal>,
}

impl Authenticator {
    pub fn new(tokens_path: PathBuf, client_certs: &[ClientCertEntry]) -> Result<Self, String> {
        let tokens = load_tokens(&tokens_path)?;
        let modified = std::fs::metadata(&tokens_path)
            .and_then(|m| m.modified())
            .ok();
        let mut certs = HashMap::new();
        for c in client_certs {
            certs.insert(
                c.common_name.clone(),
                Principal {
                    name: c.common_name.clone(),
                    role: Role::parse(&c.role)?,
                    tenants: c.tenants.clone(),
                    environments: c.environments.clone(),
                    expires_at: None,
                },
            );
        }
        Ok(Authenticator {
            tokens_path,
            loaded: RwLock::new(Loaded {
                tokens,
                modified,
                checked: SystemTime::now(),
            }),
            certs,
        })
    }

    fn maybe_reload(&self) {
        let now = SystemTime::now();
        {
            let loaded = self.loaded.read().unwrap_or_else(|p| p.into_inner());
            if now.duration_since(loaded.checked).unwrap_or_default() < Duration::from_secs(1) {
                return;
            }
        }
        let mut loaded = self.loaded.write().unwrap_or_else(|p| p.into_inner());
        loaded.checked = now;
        let modified = std::fs::metadata(&self.tokens_path)
            .and_then(|m| m.modified())
            .ok();
        if modified == loaded.modified {
            return;
        }
        match load_tokens(&self.tokens_path) {
            Ok(tokens) => {
                tracing::info!(path = %self.tokens_path.display(), tokens = tokens.len(), "reloaded tokens");
                loaded.tokens = tokens;
                loaded.modified = modified;
            }
            // Keep serving with the previous tokens rather than locking everyone out.
            Err(e) => {
                tracing::error!(error = %e, "tokens file invalid; keeping the previous tokens")
            }
        }
    }

    /// Authenticates a bearer token (`authorization` header value) or, failing that, a client
    /// certificate common name.
    pub fn authenticate(
        &self,
        authorization: Option<&str>,
        cert_common_name: Option<&str>,
    ) -> Result<Principal, AuthError> {
        if let Some(header) = authorization {
            let token = header
                .strip_prefix("Bearer ")
                .or_else(|| header.strip_prefix("bearer "))
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .ok_or(AuthError::Malformed)?;
            self.maybe_reload();
            let loaded = self.loaded.read().unwrap_or_else(|p| p.into_inner());
            let principal = loaded
                .tokens
                .get(&token_hash(token))
                .ok_or(AuthError::UnknownToken)?;
            if let Some(exp) = principal.expires_at
                && unix_now() >= exp
            {
                return Err(AuthError::Expired {
                    name: principal.name.clone(),
                    expired: rfc3339(exp),
                });
            }
            return Ok(principal.clone());
        }
        if let Some(cn) = cert_common_name {
            return self
                .certs
                .get(cn)
                .cloned()
                .ok_or_else(|| AuthError::UnknownCertificate(cn.to_owned()));
        }
        Err(AuthError::Missing)
    }
}

/// A new token: `alt_` + 32 random bytes, URL-safe base64.
pub fn generate_token() -> Result<String, String> {
    let mut raw = [0u8; 32];
    getrandom::fill(&mut raw).map_err(|e| format!("no OS randomness: {e}"))?;
    Ok(format!("alt_{}", URL_SAFE_NO_PAD.encode(raw)))
}

/// What `token create` records.
pub struct NewToken<'a> {
    pub name: Option<&'a str>,
    pub role: Role,
    pub tenants: &'a [String],
    pub environments: &'a [String],
    pub ttl: Option<Duration>,
}

/// Creates a token, appends its hash to the tokens file (atomically), returns (name, token).
pub fn create_token(tokens_path: &Path, new: &NewToken<'_>) -> Result<(String, String), String> {
    let mut file: TokensFile = match std::fs::read_to_string(tokens_path) {
        Ok(text) => toml::from_str(&text).map_err(|e| format!("{}: {e}", tokens_path.display()))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => TokensFile::default(),
        Err(e) => return Err(format!("reading {}: {e}", tokens_path.display())),
    };
    let token = generate_token()?;
    let hash = token_hash(&token);
    let name = new.name.map(str::to_owned).unwrap_or_else(|| {
        format!(
            "{}-{}-{}-{}",
            new.role.as_str(),
            new.tenants.join("+"),
            new.environments.join("+"),
            &hex::encode(hash)[..8]
        )
    });
    if file.tokens.iter().any(|t| t.name == name) {
        return Err(format!("a token named {name:?} already exists"));
    }
    let now = unix_now();
    file.tokens.push(TokenEntry {
        name: name.clone(),
        sha256: hex::encode(hash),
        role: new.role.as_str().into(),
        tenants: new.tenants.to_vec(),
        environments: new.environments.to_vec(),
        created_at: rfc3339(now),
        expires_at: new.ttl.map(|ttl| rfc3339(now + ttl.as_secs())),
    });
    let text = format!(
        "# AuditLedger bearer tokens: SHA-256 hashes only. Managed by `auditledger token create`.\n\n{}",
        toml::to_string_pretty(&file).map_err(|e| e.to_string())?
    );
    auditledger_ledger::keys::write_atomic(tokens_path, text.as_bytes(), true)
        .map_err(|e| format!("writing {}: {e}", tokens_path.display()))?;
    Ok((name, token))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn create(path: &Path, role: Role, ttl: Option<Duration>) -> String {
        create_token(
            path,
            &NewToken {
                name: None,
                role,
                tenants: &["acme".into()],
                environments: &["prod".into()],
                ttl,
            },
        )
        .unwrap()
        .1
    }

    #[test]
    fn tokens_authenticate_and_expire() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens.toml");
        let good = create(&path, Role::Gateway, Some(Duration::from_secs(3600)));
        let auth = Authenticator::new(path.clone(), &[]).unwrap();
        let p = auth
            .authenticate(Some(&format!("Bearer {good}")), None)
            .unwrap();
        assert_eq!(p.role, Role::Gateway);
        assert!(p.covers("acme", "prod"));
        assert!(!p.covers("acme", "dev"));
        assert!(!p.covers("globex", "prod"));
        assert_eq!(
            auth.authenticate(Some("Bearer alt_nope"), None),
            Err(AuthError::UnknownToken)
        );
        assert_eq!(
            auth.authenticate(Some("Basic abc"), None),
            Err(AuthError::Malformed)
        );
        assert_eq!(auth.authenticate(None, None), Err(AuthError::Missing));
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(!text.contains(&good), "the token itself must not be stored");

        // An already-expired token (edit the file as an operator would).
        let expired = create(&path, Role::Auditor, None);
        let text = std::fs::read_to_string(&path).unwrap();
        let text = text.replacen(
            "role = \"auditor\"",
            "role = \"auditor\"\nexpires_at = \"2020-01-01T00:00:00Z\"",
            1,
        );
        std::fs::write(&path, text).unwrap();
        let auth = Authenticator::new(path, &[]).unwrap();
        let err = auth
            .authenticate(Some(&format!("Bearer {expired}")), None)
            .unwrap_err();
        assert!(matches!(err, AuthError::Expired { .. }), "{err}");
        assert!(err.to_string().contains("2020-01-01"), "{err}");
    }

    #[test]
    fn wildcard_tenants_never_cover_the_system_log() {
        let p = Principal {
            name: "root".into(),
            role: Role::Admin,
            tenants: vec!["*".into()],
            environments: vec!["*".into()],
            expires_at: None,
        };
        assert!(p.covers("acme", "prod"));
        assert!(!p.covers("_system", "prod"));
    }
}
