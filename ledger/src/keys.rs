//! Keyring: the ledger's Ed25519 checkpoint-signing keys and their validity windows (DESIGN §4).
//!
//! A keyring is a TOML file listing keys by verifier key string, each with `valid_from`,
//! optional `valid_until` and `revoked_at` (RFC 3339). Private keys live in separate files
//! (mode 0600, Go `note` signer format) referenced by relative path, so the keyring itself can
//! be handed to verifiers. Several keys may be active at once: during a rotation every active
//! key signs each checkpoint.

use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::note::{NoteError, SignerKey, VerifierKey};

/// Version of the keyring file format.
pub const KEYRING_VERSION: u32 = 1;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    #[error("keyring {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("keyring {path}: {message}")]
    Format { path: PathBuf, message: String },
    #[error("keyring {path}, key {key}: {message}")]
    Entry {
        path: PathBuf,
        key: String,
        message: String,
    },
    #[error(transparent)]
    Note(#[from] NoteError),
    #[error("no key with id {0} in the keyring")]
    UnknownKey(String),
    #[error("key {0} is already revoked")]
    AlreadyRevoked(String),
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyringFile {
    version: u32,
    #[serde(default, rename = "key")]
    keys: Vec<KeyFileEntry>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyFileEntry {
    verifier_key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    private_key_file: Option<String>,
    valid_from: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    valid_until: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    revoked_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    revocation_reason: Option<String>,
}

/// One key of the keyring. Times are unix seconds.
#[derive(Clone, Debug)]
pub struct KeyEntry {
    pub verifier: VerifierKey,
    /// Present when the private key file is available (never for verifier-only keyrings).
    pub signer: Option<SignerKey>,
    pub private_key_file: Option<String>,
    pub valid_from: u64,
    pub valid_until: Option<u64>,
    pub revoked_at: Option<u64>,
    pub revocation_reason: Option<String>,
}

/// Whether a key could sign at a given moment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyStatus {
    NotYetValid,
    Active,
    Expired,
    Revoked,
}

impl KeyEntry {
    pub fn status_at(&self, unix_seconds: u64) -> KeyStatus {
        if self.revoked_at.is_some_and(|r| unix_seconds >= r) {
            KeyStatus::Revoked
        } else if unix_seconds < self.valid_from {
            KeyStatus::NotYetValid
        } else if self.valid_until.is_some_and(|u| unix_seconds >= u) {
            KeyStatus::Expired
        } else {
            KeyStatus::Active
        }
    }

    /// Key ID as 8 hex digits.
    pub fn key_id_hex(&self) -> String {
        format!("{:08x}", self.verifier.key_id())
    }
}

/// The set of signing keys.
#[derive(Clone, Debug, Default)]
pub struct Keyring {
    path: Option<PathBuf>,
    entries: Vec<KeyEntry>,
}

/// Current unix time in seconds.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs()
}

fn format_time(unix_seconds: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(unix_seconds)).to_string()
}

fn parse_time(text: &str) -> Result<u64, String> {
    let t = humantime::parse_rfc3339_weak(text)
        .map_err(|e| format!("{text:?} is not an RFC 3339 time: {e}"))?;
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .map_err(|_| format!("{text:?} is before 1970"))
}

impl Keyring {
    /// Loads a keyring and every private key file it references.
    pub fn load(path: &Path) -> Result<Keyring, KeyError> {
        let text = fs::read_to_string(path).map_err(|source| KeyError::Io {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, Some(path))
    }

    /// Parses keyring text. With `path`, private key files are resolved next to it and loaded.
    pub fn parse(text: &str, path: Option<&Path>) -> Result<Keyring, KeyError> {
        let shown = path.map_or_else(|| PathBuf::from("<keyring>"), Path::to_owned);
        let file: KeyringFile = toml::from_str(text).map_err(|e| KeyError::Format {
            path: shown.clone(),
            message: e.to_string(),
        })?;
        if file.version != KEYRING_VERSION {
            return Err(KeyError::Format {
                path: shown,
                message: format!(
                    "unsupported keyring version {} (this build reads {KEYRING_VERSION})",
                    file.version
                ),
            });
        }
        let dir = path.and_then(Path::parent).map(Path::to_owned);
        let mut entries: Vec<KeyEntry> = Vec::new();
        for raw in file.keys {
            let entry_err = |message: String| KeyError::Entry {
                path: shown.clone(),
                key: raw.verifier_key.clone(),
                message,
            };
            let verifier =
                VerifierKey::parse(&raw.verifier_key).map_err(|e| entry_err(e.to_string()))?;
            if entries.iter().any(|e| {
                e.verifier.key_id() == verifier.key_id() && e.verifier.name() == verifier.name()
            }) {
                return Err(entry_err("listed twice".into()));
            }
            let signer = match (&raw.private_key_file, &dir) {
                (Some(file), Some(dir)) => {
                    let key_path = dir.join(file);
                    let secret = fs::read_to_string(&key_path).map_err(|e| {
                        entry_err(format!("reading private key {}: {e}", key_path.display()))
                    })?;
                    let signer = SignerKey::parse(&secret).map_err(|e| {
                        entry_err(format!("private key {}: {e}", key_path.display()))
                    })?;
                    if signer.verifier() != verifier {
                        return Err(entry_err(format!(
                            "private key {} does not belong to this verifier key",
                            key_path.display()
                        )));
                    }
                    Some(signer)
                }
                _ => None,
            };
            let valid_from =
                parse_time(&raw.valid_from).map_err(|m| entry_err(format!("valid_from: {m}")))?;
            let valid_until = raw
                .valid_until
                .as_deref()
                .map(parse_time)
                .transpose()
                .map_err(|m| entry_err(format!("valid_until: {m}")))?;
            let revoked_at = raw
                .revoked_at
                .as_deref()
                .map(parse_time)
                .transpose()
                .map_err(|m| entry_err(format!("revoked_at: {m}")))?;
            if valid_until.is_some_and(|u| u < valid_from) {
                return Err(entry_err("valid_until is before valid_from".into()));
            }
            entries.push(KeyEntry {
                verifier,
                signer,
                private_key_file: raw.private_key_file,
                valid_from,
                valid_until,
                revoked_at,
                revocation_reason: raw.revocation_reason,
            });
        }
        Ok(Keyring {
            path: path.map(Path::to_owned),
            entries,
        })
    }

    /// An empty keyring that will be saved at `path`.
    pub fn new_at(path: &Path) -> Keyring {
        Keyring {
            path: Some(path.to_owned()),
            entries: Vec::new(),
        }
    }

    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    pub fn entries(&self) -> &[KeyEntry] {
        &self.entries
    }

    /// Keys that sign at `unix_seconds` and whose private key is loaded.
    pub fn active_signers(&self, unix_seconds: u64) -> Vec<SignerKey> {
        self.entries
            .iter()
            .filter(|e| e.status_at(unix_seconds) == KeyStatus::Active)
            .filter_map(|e| e.signer.clone())
            .collect()
    }

    /// Verifier keys of keys active at `unix_seconds`.
    pub fn active_verifiers(&self, unix_seconds: u64) -> Vec<VerifierKey> {
        self.entries
            .iter()
            .filter(|e| e.status_at(unix_seconds) == KeyStatus::Active)
            .map(|e| e.verifier.clone())
            .collect()
    }

    /// Every verifier key, whatever its status (to check old checkpoints).
    pub fn all_verifiers(&self) -> Vec<VerifierKey> {
        self.entries.iter().map(|e| e.verifier.clone()).collect()
    }

    pub fn find(&self, key_id_hex: &str) -> Option<&KeyEntry> {
        self.entries
            .iter()
            .find(|e| e.key_id_hex().eq_ignore_ascii_case(key_id_hex))
    }

    /// Generates a new key named `name`, valid from `valid_from`, writes its private key file
    /// (mode 0600) next to the keyring, and adds it. Call [`Keyring::save`] afterwards.
    pub fn generate(&mut self, name: &str, valid_from: u64) -> Result<&KeyEntry, KeyError> {
        let dir = self.dir()?;
        let signer = SignerKey::generate(name)?;
        let file_name = format!(
            "{}-{:08x}.key",
            name.replace(['/', '\\', ':'], "_"),
            signer.key_id()
        );
        write_private_key(&dir.join(&file_name), &signer)?;
        self.entries.push(KeyEntry {
            verifier: signer.verifier(),
            signer: Some(signer),
            private_key_file: Some(file_name),
            valid_from,
            valid_until: None,
            revoked_at: None,
            revocation_reason: None,
        });
        Ok(self.entries.last().expect("just pushed"))
    }

    /// Adds a signer whose private key file already exists (tests, imports).
    pub fn add_existing(
        &mut self,
        signer: SignerKey,
        private_key_file: Option<String>,
        valid_from: u64,
    ) {
        self.entries.push(KeyEntry {
            verifier: signer.verifier(),
            signer: Some(signer),
            private_key_file,
            valid_from,
            valid_until: None,
            revoked_at: None,
            revocation_reason: None,
        });
    }

    /// Rotation: a new key valid from `now`; every currently active key keeps signing until
    /// `now + overlap` (or until revoked, when `overlap` is `None`).
    pub fn rotate(
        &mut self,
        name: &str,
        now: u64,
        overlap: Option<u64>,
    ) -> Result<KeyEntry, KeyError> {
        if let Some(overlap) = overlap {
            for entry in &mut self.entries {
                if entry.status_at(now) == KeyStatus::Active {
                    let until = now.saturating_add(overlap);
                    entry.valid_until = Some(entry.valid_until.map_or(until, |u| u.min(until)));
                }
            }
        }
        Ok(self.generate(name, now)?.clone())
    }

    /// Revokes a key from `now` on: it stops signing at once.
    pub fn revoke(
        &mut self,
        key_id_hex: &str,
        now: u64,
        reason: &str,
    ) -> Result<KeyEntry, KeyError> {
        let entry = self
            .entries
            .iter_mut()
            .find(|e| e.key_id_hex().eq_ignore_ascii_case(key_id_hex))
            .ok_or_else(|| KeyError::UnknownKey(key_id_hex.to_owned()))?;
        if entry.revoked_at.is_some() {
            return Err(KeyError::AlreadyRevoked(key_id_hex.to_owned()));
        }
        entry.revoked_at = Some(now);
        entry.revocation_reason = Some(reason.to_owned());
        Ok(entry.clone())
    }

    fn dir(&self) -> Result<PathBuf, KeyError> {
        let path = self.path.as_ref().ok_or_else(|| KeyError::Format {
            path: PathBuf::from("<keyring>"),
            message: "keyring has no file path".into(),
        })?;
        Ok(path
            .parent()
            .map_or_else(|| PathBuf::from("."), Path::to_owned))
    }

    /// The keyring file text (no private keys, only their file names).
    pub fn to_toml(&self) -> String {
        let file = KeyringFile {
            version: KEYRING_VERSION,
            keys: self
                .entries
                .iter()
                .map(|e| KeyFileEntry {
                    verifier_key: e.verifier.to_string(),
                    private_key_file: e.private_key_file.clone(),
                    valid_from: format_time(e.valid_from),
                    valid_until: e.valid_until.map(format_time),
                    revoked_at: e.revoked_at.map(format_time),
                    revocation_reason: e.revocation_reason.clone(),
                })
                .collect(),
        };
        let body = toml::to_string_pretty(&file).unwrap_or_default();
        format!(
            "# AuditLedger keyring (format {KEYRING_VERSION}). Every active key signs each checkpoint.\n\
             # Private keys are in the files named below (mode 0600); this file holds none.\n\n{body}"
        )
    }

    /// Writes the keyring atomically (temp file, fsync, rename, fsync directory).
    pub fn save(&self) -> Result<(), KeyError> {
        let path = self.path.clone().ok_or_else(|| KeyError::Format {
            path: PathBuf::from("<keyring>"),
            message: "keyring has no file path".into(),
        })?;
        write_atomic(&path, self.to_toml().as_bytes(), false).map_err(|source| KeyError::Io {
            path: path.clone(),
            source,
        })
    }
}

/// Version of the public keyring format.
pub const PUBLIC_KEYRING_VERSION: u32 = 1;

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct PublicKeyringFile {
    version: u32,
    #[serde(default, rename = "key")]
    keys: Vec<PublicKeyFileEntry>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct PublicKeyFileEntry {
    name: String,
    verifier_key: String,
    valid_from: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    valid_until: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    revoked_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    revocation_reason: Option<String>,
}

/// The keyring as handed to verifiers: every key's verifier key and validity window, nothing
/// that refers to private key files (written by `auditledger keys export`, read by
/// `auditledger-verify --keyring`).
///
/// ```toml
/// version = 1
/// [[key]]
/// name = "auditledger.local"
/// verifier_key = "auditledger.local+1a2b3c4d+AQ…"
/// valid_from = "2026-01-01T00:00:00Z"
/// valid_until = "2027-01-01T00:00:00Z"   # optional: stops signing at this time
/// revoked_at = "2026-06-01T00:00:00Z"    # optional: not trusted from this time on
/// revocation_reason = "laptop lost"      # optional
/// ```
///
/// Parsing is strict: unknown fields, a `name` that differs from the verifier key's, a key
/// listed twice, malformed times or `valid_until` before `valid_from` are errors naming the key.
#[derive(Clone, Debug, Default)]
pub struct PublicKeyring {
    entries: Vec<KeyEntry>,
}

impl PublicKeyring {
    /// The public part of a keyring.
    pub fn from_keyring(ring: &Keyring) -> PublicKeyring {
        PublicKeyring {
            entries: ring
                .entries()
                .iter()
                .map(|e| KeyEntry {
                    signer: None,
                    private_key_file: None,
                    ..e.clone()
                })
                .collect(),
        }
    }

    pub fn load(path: &Path) -> Result<PublicKeyring, KeyError> {
        let text = fs::read_to_string(path).map_err(|source| KeyError::Io {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parses public keyring text; `path` only names the file in errors.
    pub fn parse(text: &str, path: &Path) -> Result<PublicKeyring, KeyError> {
        let file: PublicKeyringFile = toml::from_str(text).map_err(|e| {
            let mut message = e.to_string();
            if text.contains("private_key_file") {
                message.push_str(
                    " (this looks like the server's keyring; give verifiers the public keyring from `auditledger keys export`)",
                );
            }
            KeyError::Format {
                path: path.to_owned(),
                message,
            }
        })?;
        if file.version != PUBLIC_KEYRING_VERSION {
            return Err(KeyError::Format {
                path: path.to_owned(),
                message: format!(
                    "unsupported public keyring version {} (this build reads {PUBLIC_KEYRING_VERSION})",
                    file.version
                ),
            });
        }
        let mut entries: Vec<KeyEntry> = Vec::with_capacity(file.keys.len());
        for raw in file.keys {
            let entry_err = |message: String| KeyError::Entry {
                path: path.to_owned(),
                key: raw.verifier_key.clone(),
                message,
            };
            let verifier =
                VerifierKey::parse(&raw.verifier_key).map_err(|e| entry_err(e.to_string()))?;
            if raw.name != verifier.name() {
                return Err(entry_err(format!(
                    "name {:?} differs from the verifier key's name {:?}",
                    raw.name,
                    verifier.name()
                )));
            }
            if entries.iter().any(|e| e.verifier == verifier) {
                return Err(entry_err("listed twice".into()));
            }
            let time = |field: &str, text: Option<&str>| {
                text.map(parse_time)
                    .transpose()
                    .map_err(|m| entry_err(format!("{field}: {m}")))
            };
            let valid_from =
                parse_time(&raw.valid_from).map_err(|m| entry_err(format!("valid_from: {m}")))?;
            let valid_until = time("valid_until", raw.valid_until.as_deref())?;
            let revoked_at = time("revoked_at", raw.revoked_at.as_deref())?;
            if valid_until.is_some_and(|u| u < valid_from) {
                return Err(entry_err("valid_until is before valid_from".into()));
            }
            entries.push(KeyEntry {
                verifier,
                signer: None,
                private_key_file: None,
                valid_from,
                valid_until,
                revoked_at,
                revocation_reason: raw.revocation_reason,
            });
        }
        Ok(PublicKeyring { entries })
    }

    pub fn entries(&self) -> &[KeyEntry] {
        &self.entries
    }

    /// The key with this name and key ID, if listed.
    pub fn find(&self, name: &str, key_id: u32) -> Option<&KeyEntry> {
        self.entries
            .iter()
            .find(|e| e.verifier.name() == name && e.verifier.key_id() == key_id)
    }

    /// Every verifier key, whatever its status.
    pub fn verifiers(&self) -> Vec<VerifierKey> {
        self.entries.iter().map(|e| e.verifier.clone()).collect()
    }

    /// The file text.
    pub fn to_toml(&self) -> String {
        let file = PublicKeyringFile {
            version: PUBLIC_KEYRING_VERSION,
            keys: self
                .entries
                .iter()
                .map(|e| PublicKeyFileEntry {
                    name: e.verifier.name().to_owned(),
                    verifier_key: e.verifier.to_string(),
                    valid_from: format_time(e.valid_from),
                    valid_until: e.valid_until.map(format_time),
                    revoked_at: e.revoked_at.map(format_time),
                    revocation_reason: e.revocation_reason.clone(),
                })
                .collect(),
        };
        let body = toml::to_string_pretty(&file).unwrap_or_default();
        format!(
            "# AuditLedger public keyring (format {PUBLIC_KEYRING_VERSION}): the checkpoint signing keys and\n\
             # when each was valid. For verifiers (`auditledger-verify --keyring`); holds no secrets.\n\n{body}"
        )
    }
}

fn write_private_key(path: &Path, signer: &SignerKey) -> Result<(), KeyError> {
    let io = |source| KeyError::Io {
        path: path.to_owned(),
        source,
    };
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    let mut file = options.open(path).map_err(io)?;
    file.write_all(signer.to_private_string().as_bytes())
        .and_then(|()| file.write_all(b"\n"))
        .and_then(|()| file.sync_all())
        .map_err(io)?;
    if let Some(dir) = path.parent() {
        sync_dir(dir).map_err(io)?;
    }
    Ok(())
}

/// Writes `bytes` to `path` atomically: a crash leaves either the old or the new content.
pub fn write_atomic(path: &Path, bytes: &[u8], private: bool) -> std::io::Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .map_or_else(|| PathBuf::from("."), Path::to_owned);
    let tmp = dir.join(format!(
        ".{}.tmp",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("file")
    ));
    {
        let mut options = fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        if private {
            use std::os::unix::fs::OpenOptionsExt as _;
            options.mode(0o600);
        }
        #[cfg(not(unix))]
        let _ = private;
        let mut file = options.open(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
    }
    fs::rename(&tmp, path)?;
    sync_dir(&dir)
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        fs::File::open(dir)?.sync_all()
    }
    #[cfg(not(unix))]
    {
        let _ = dir;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generate_save_load_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keyring.toml");
        let mut ring = Keyring::new_at(&path);
        let first = ring.generate("auditledger.local", 1000).unwrap().clone();
        ring.save().unwrap();
        let loaded = Keyring::load(&path).unwrap();
        assert_eq!(loaded.entries().len(), 1);
        assert_eq!(loaded.entries()[0].verifier, first.verifier);
        assert!(loaded.entries()[0].signer.is_some());
        assert_eq!(loaded.active_signers(1000).len(), 1);
        assert!(loaded.active_signers(999).is_empty());
        let text = fs::read_to_string(&path).unwrap();
        assert!(!text.contains("PRIVATE"), "keyring must not hold secrets");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let key_file = dir.path().join(first.private_key_file.unwrap());
            let mode = fs::metadata(key_file).unwrap().permissions().mode();
            assert_eq!(mode & 0o077, 0, "private key readable by others: {mode:o}");
        }
    }

    #[test]
    fn rotation_overlap_and_revocation() {
        let dir = tempfile::tempdir().unwrap();
        let mut ring = Keyring::new_at(&dir.path().join("keyring.toml"));
        let old = ring.generate("auditledger.local", 100).unwrap().clone();
        let new = ring.rotate("auditledger.local", 200, Some(50)).unwrap();
        assert_eq!(
            ring.active_signers(220).len(),
            2,
            "both sign during overlap"
        );
        let after: Vec<_> = ring
            .active_signers(250)
            .iter()
            .map(|s| s.key_id())
            .collect();
        assert_eq!(after, vec![new.verifier.key_id()]);
        ring.revoke(&new.key_id_hex(), 260, "compromised").unwrap();
        assert!(ring.active_signers(260).is_empty());
        assert_eq!(ring.entries()[0].status_at(150), KeyStatus::Active);
        assert_eq!(
            ring.find(&old.key_id_hex()).unwrap().status_at(260),
            KeyStatus::Expired
        );
        assert!(matches!(
            ring.revoke(&new.key_id_hex(), 270, "again"),
            Err(KeyError::AlreadyRevoked(_))
        ));
        ring.save().unwrap();
        let loaded = Keyring::load(ring.path().unwrap()).unwrap();
        assert_eq!(
            loaded.find(&new.key_id_hex()).unwrap().revoked_at,
            Some(260)
        );
    }

    #[test]
    fn public_keyring_round_trips_and_is_strict() {
        let dir = tempfile::tempdir().unwrap();
        let mut ring = Keyring::new_at(&dir.path().join("keyring.toml"));
        let old = ring.generate("auditledger.local", 100).unwrap().clone();
        let new = ring.rotate("auditledger.local", 200, Some(50)).unwrap();
        ring.revoke(&old.key_id_hex(), 240, "retired").unwrap();
        let public = PublicKeyring::from_keyring(&ring);
        let text = public.to_toml();
        assert!(
            !text.contains("private_key_file") && !text.contains("PRIVATE"),
            "{text}"
        );
        let path = Path::new("public.toml");
        let parsed = PublicKeyring::parse(&text, path).unwrap();
        assert_eq!(parsed.entries().len(), 2);
        let o = parsed
            .find("auditledger.local", old.verifier.key_id())
            .unwrap();
        assert_eq!(
            (o.valid_from, o.valid_until, o.revoked_at),
            (100, Some(250), Some(240))
        );
        assert_eq!(o.revocation_reason.as_deref(), Some("retired"));
        assert_eq!(o.status_at(239), KeyStatus::Active);
        assert_eq!(o.status_at(240), KeyStatus::Revoked);
        let n = parsed
            .find("auditledger.local", new.verifier.key_id())
            .unwrap();
        assert!(n.signer.is_none() && n.valid_until.is_none());
        assert_eq!(parsed.to_toml(), text);

        let vkey = new.verifier.to_string();
        let entry = |extra: &str| {
            format!(
                "version = 1\n[[key]]\nname = \"auditledger.local\"\nverifier_key = \"{vkey}\"\nvalid_from = \"2026-01-01T00:00:00Z\"\n{extra}"
            )
        };
        for (text, needle) in [
            (entry("bogus = 1\n"), "bogus"),
            (entry("private_key_file = \"k.key\"\n"), "keys export"),
            (
                entry("").replace("name = \"auditledger.local\"", "name = \"other\""),
                "differs from the verifier key's name",
            ),
            (entry("revoked_at = \"soon\"\n"), "revoked_at"),
            (
                entry("valid_until = \"2025-01-01T00:00:00Z\"\n"),
                "valid_until is before valid_from",
            ),
            (
                format!("{}{}", entry(""), entry("").replace("version = 1\n", "")),
                "listed twice",
            ),
            (entry("").replace("version = 1", "version = 9"), "version 9"),
        ] {
            let err = PublicKeyring::parse(&text, path).unwrap_err().to_string();
            assert!(err.contains(needle), "{needle}: {err}");
            assert!(err.contains("public.toml"), "{err}");
        }
    }

    #[test]
    fn bad_keyrings_name_the_problem() {
        let err = Keyring::parse("version = 2\n", None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("unsupported keyring version 2"), "{err}");
        let err = Keyring::parse(
            "version = 1\n[[key]]\nverifier_key = \"x+00000000+AQ==\"\nvalid_from = \"2026-01-01T00:00:00Z\"\n",
            None,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("x+00000000"), "{err}");
        let signer = SignerKey::from_seed("a", &[1; 32]).unwrap();
        let err = Keyring::parse(
            &format!(
                "version = 1\n[[key]]\nverifier_key = \"{}\"\nvalid_from = \"yesterday\"\n",
                signer.verifier()
            ),
            None,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("valid_from"), "{err}");
    }
}
