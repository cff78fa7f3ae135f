//! C2SP signed-note (<https://c2sp.org/signed-note>) with Ed25519 keys: key names and IDs,
//! verifier and signer key strings, strict note parsing, signing and verification.
//!
//! Trust rule (as in the spec and Go's `note.Open`): signatures from unknown keys are ignored;
//! a signature from a known key that does not verify rejects the whole note.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use ed25519_dalek::{Signer as _, SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};

/// Signature type byte of Ed25519 keys in signed notes.
pub const ALG_ED25519: u8 = 0x01;

/// Largest note we parse (Go's note package uses the same bound).
pub const MAX_NOTE_BYTES: usize = 1_000_000;

/// Most signature lines we accept on one note.
pub const MAX_SIGNATURES: usize = 100;

/// Why a note, key or signature was refused. Messages name the offending value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NoteError {
    #[error("note is {0} bytes, more than the {MAX_NOTE_BYTES}-byte limit")]
    TooLarge(usize),
    #[error("note is not valid UTF-8")]
    NotUtf8,
    #[error("note contains control character {0:#04x}; only newline is allowed")]
    ControlCharacter(u32),
    #[error("note has no blank line separating text from signatures")]
    NoSignatureBlock,
    #[error("note text is empty")]
    EmptyText,
    #[error("note does not end with a newline")]
    MissingFinalNewline,
    #[error("note has more than {MAX_SIGNATURES} signatures")]
    TooManySignatures,
    #[error("signature line {line}: {reason}")]
    MalformedSignature { line: usize, reason: String },
    #[error("invalid key name {0:?}: must be non-empty UTF-8 without spaces or '+'")]
    InvalidKeyName(String),
    #[error("malformed verifier key {key:?}: {reason}")]
    MalformedVerifierKey { key: String, reason: String },
    #[error("malformed signer key: {0}")]
    MalformedSignerKey(String),
    #[error("signature by {name}+{key_id:08x} does not verify")]
    BadSignature { name: String, key_id: u32 },
    #[error("note is not signed by any trusted key (signed by: {signed_by})")]
    NoTrustedSignature { signed_by: String },
}

/// Whether `name` is a valid key name: non-empty, no Unicode whitespace, no '+'.
pub fn is_valid_key_name(name: &str) -> bool {
    !name.is_empty() && !name.chars().any(|c| c.is_whitespace() || c == '+')
}

/// Key ID: first 4 bytes (big-endian) of SHA-256(name || 0x0A || alg || public key).
pub fn key_id(name: &str, alg: u8, public_key: &[u8]) -> u32 {
    let mut hasher = Sha256::new();
    hasher.update(name.as_bytes());
    hasher.update([0x0A, alg]);
    hasher.update(public_key);
    let digest = hasher.finalize();
    u32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]])
}

/// A public key that verifies note signatures, parsed from `name+hexid+base64(0x01||pubkey)`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifierKey {
    name: String,
    key_id: u32,
    key: VerifyingKey,
}

impl VerifierKey {
    pub fn new(name: &str, key: VerifyingKey) -> Result<Self, NoteError> {
        if !is_valid_key_name(name) {
            return Err(NoteError::InvalidKeyName(name.to_owned()));
        }
        Ok(VerifierKey {
            name: name.to_owned(),
            key_id: key_id(name, ALG_ED25519, key.as_bytes()),
            key,
        })
    }

    /// Parses the standard `name+hexid+base64(0x01||pubkey)` form, checking the ID.
    pub fn parse(text: &str) -> Result<Self, NoteError> {
        let bad = |reason: &str| NoteError::MalformedVerifierKey {
            key: text.to_owned(),
            reason: reason.to_owned(),
        };
        let (name, key, alg) = parse_key_string(text, |alg| {
            (alg == ALG_ED25519).then_some(()).ok_or_else(|| {
                format!("unsupported algorithm byte {alg:#04x} (want 0x01, Ed25519)")
            })
        })
        .map_err(|reason| bad(&reason))?;
        let computed = key_id(name, alg, key.as_bytes());
        Ok(VerifierKey {
            name: name.to_owned(),
            key_id: computed,
            key,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn key_id(&self) -> u32 {
        self.key_id
    }

    pub fn public_key(&self) -> &VerifyingKey {
        &self.key
    }

    /// Checks an Ed25519 signature over `msg` (strict verification: no malleable forms).
    pub fn verify(&self, msg: &[u8], signature: &[u8]) -> bool {
        let Ok(sig) = ed25519_dalek::Signature::from_slice(signature) else {
            return false;
        };
        self.key.verify_strict(msg, &sig).is_ok()
    }
}

impl std::fmt::Display for VerifierKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut raw = Vec::with_capacity(33);
        raw.push(ALG_ED25519);
        raw.extend_from_slice(self.key.as_bytes());
        write!(
            f,
            "{}+{:08x}+{}",
            self.name,
            self.key_id,
            BASE64.encode(raw)
        )
    }
}

/// A private Ed25519 note-signing key. Its `Debug` never prints the secret.
#[derive(Clone)]
pub struct SignerKey {
    name: String,
    key_id: u32,
    key: SigningKey,
}

impl std::fmt::Debug for SignerKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SignerKey({}+{:08x})", self.name, self.key_id)
    }
}

const SIGNER_PREFIX: &str = "PRIVATE+KEY+";

impl SignerKey {
    /// A signer from a 32-byte Ed25519 seed.
    pub fn from_seed(name: &str, seed: &[u8; 32]) -> Result<Self, NoteError> {
        if !is_valid_key_name(name) {
            return Err(NoteError::InvalidKeyName(name.to_owned()));
        }
        let key = SigningKey::from_bytes(seed);
        Ok(SignerKey {
            name: name.to_owned(),
            key_id: key_id(name, ALG_ED25519, key.verifying_key().as_bytes()),
            key,
        })
    }

    /// A fresh random key from the operating system's CSPRNG.
    pub fn generate(name: &str) -> Result<Self, NoteError> {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed)
            .map_err(|e| NoteError::MalformedSignerKey(format!("no OS randomness: {e}")))?;
        Self::from_seed(name, &seed)
    }

    /// Parses `PRIVATE+KEY+name+hexid+base64(0x01||seed)` (the Go `note` signer format).
    pub fn parse(text: &str) -> Result<Self, NoteError> {
        let bad = |reason: &str| NoteError::MalformedSignerKey(reason.to_owned());
        let rest = text
            .trim()
            .strip_prefix(SIGNER_PREFIX)
            .ok_or_else(|| bad("expected PRIVATE+KEY+name+hexid+base64"))?;
        let mut parts = rest.splitn(3, '+');
        let (Some(name), Some(hexid), Some(b64)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(bad("expected PRIVATE+KEY+name+hexid+base64"));
        };
        let claimed = u32::from_str_radix(hexid, 16).map_err(|_| bad("bad key id"))?;
        let raw = BASE64.decode(b64).map_err(|_| bad("bad base64"))?;
        let Some((&alg, seed)) = raw.split_first() else {
            return Err(bad("empty key"));
        };
        if alg != ALG_ED25519 {
            return Err(bad("unsupported algorithm (want Ed25519)"));
        }
        let seed: [u8; 32] = seed
            .try_into()
            .map_err(|_| bad("Ed25519 seed must be 32 bytes"))?;
        let signer = Self::from_seed(name, &seed)?;
        if signer.key_id != claimed {
            return Err(bad(&format!(
                "key id {claimed:08x} does not match the key (expected {:08x})",
                signer.key_id
            )));
        }
        Ok(signer)
    }

    /// The `PRIVATE+KEY+…` encoding. Secret: write only to files with restricted permissions.
    pub fn to_private_string(&self) -> String {
        let mut raw = Vec::with_capacity(33);
        raw.push(ALG_ED25519);
        raw.extend_from_slice(self.key.as_bytes());
        format!(
            "{SIGNER_PREFIX}{}+{:08x}+{}",
            self.name,
            self.key_id,
            BASE64.encode(raw)
        )
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn key_id(&self) -> u32 {
        self.key_id
    }

    pub fn verifier(&self) -> VerifierKey {
        VerifierKey {
            name: self.name.clone(),
            key_id: self.key_id,
            key: self.key.verifying_key(),
        }
    }

    /// A signature line (`— name base64(id||sig)\n`) over `text`.
    pub fn sign_line(&self, text: &[u8]) -> String {
        let signature = self.key.sign(text);
        let mut raw = Vec::with_capacity(4 + 64);
        raw.extend_from_slice(&self.key_id.to_be_bytes());
        raw.extend_from_slice(&signature.to_bytes());
        format!("— {} {}\n", self.name, BASE64.encode(raw))
    }
}

/// One signature line of a note.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NoteSignature {
    pub name: String,
    pub key_id: u32,
    /// Signature bytes after the 4-byte key ID.
    pub signature: Vec<u8>,
}

impl NoteSignature {
    /// The line as it appears in a note, with final newline.
    pub fn to_line(&self) -> String {
        let mut raw = Vec::with_capacity(4 + self.signature.len());
        raw.extend_from_slice(&self.key_id.to_be_bytes());
        raw.extend_from_slice(&self.signature);
        format!("— {} {}\n", self.name, BASE64.encode(raw))
    }
}

/// Parses a `name+hexid+base64(alg||public key)` verifier-key string (signed-note keys and
/// witness keys share the syntax): the name, the Ed25519 key and its algorithm byte, after
/// checking that the claimed key ID is the key's. `allow_alg` accepts or names a bad byte.
pub(crate) fn parse_key_string(
    text: &str,
    allow_alg: impl Fn(u8) -> Result<(), String>,
) -> Result<(&str, VerifyingKey, u8), String> {
    let mut parts = text.trim().splitn(3, '+');
    let (Some(name), Some(hexid), Some(b64)) = (parts.next(), parts.next(), parts.next()) else {
        return Err("expected name+hexid+base64".into());
    };
    if !is_valid_key_name(name) {
        return Err("invalid key name".into());
    }
    if hexid.len() != 8 || !hexid.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err("key id must be 8 hex digits".into());
    }
    let claimed = u32::from_str_radix(hexid, 16).map_err(|_| "bad key id".to_owned())?;
    let raw = BASE64.decode(b64).map_err(|e| format!("bad base64: {e}"))?;
    let Some((&alg, public)) = raw.split_first() else {
        return Err("empty key".into());
    };
    allow_alg(alg)?;
    let public: [u8; 32] = public
        .try_into()
        .map_err(|_| "Ed25519 public key must be 32 bytes".to_owned())?;
    let key = VerifyingKey::from_bytes(&public).map_err(|_| "not an Ed25519 point".to_owned())?;
    let computed = key_id(name, alg, &public);
    if computed != claimed {
        return Err(format!(
            "key id {claimed:08x} does not match the key (expected {computed:08x})"
        ));
    }
    Ok((name, key, alg))
}

/// A syntactically valid note; signatures not yet checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Note {
    text: String,
    signatures: Vec<NoteSignature>,
}

fn check_text_chars(s: &str) -> Result<(), NoteError> {
    if let Some(c) = s.chars().find(|&c| c < ' ' && c != '\n') {
        return Err(NoteError::ControlCharacter(c as u32));
    }
    Ok(())
}

impl Note {
    /// Parses a signed note strictly.
    pub fn parse(msg: &[u8]) -> Result<Note, NoteError> {
        if msg.len() > MAX_NOTE_BYTES {
            return Err(NoteError::TooLarge(msg.len()));
        }
        let msg = std::str::from_utf8(msg).map_err(|_| NoteError::NotUtf8)?;
        check_text_chars(msg)?;
        let split = msg.rfind("\n\n").ok_or(NoteError::NoSignatureBlock)?;
        let text = &msg[..split + 1];
        if text.is_empty() || text == "\n" {
            return Err(NoteError::EmptyText);
        }
        let block = &msg[split + 2..];
        let block = block
            .strip_suffix('\n')
            .ok_or(NoteError::MissingFinalNewline)?;
        let mut signatures = Vec::new();
        for (i, line) in block.split('\n').enumerate() {
            if signatures.len() == MAX_SIGNATURES {
                return Err(NoteError::TooManySignatures);
            }
            signatures.push(parse_signature_line(line, i + 1)?);
        }
        Ok(Note {
            text: text.to_owned(),
            signatures,
        })
    }

    /// The signed text (ends with a newline).
    pub fn text(&self) -> &str {
        &self.text
    }

    pub fn signatures(&self) -> &[NoteSignature] {
        &self.signatures
    }

    /// Checks every signature from a known key; returns the keys that signed.
    pub fn verify(&self, known: &[VerifierKey]) -> Result<Vec<VerifierKey>, NoteError> {
        let mut verified: Vec<VerifierKey> = Vec::new();
        for sig in &self.signatures {
            let Some(key) = known
                .iter()
                .find(|k| k.name == sig.name && k.key_id == sig.key_id)
            else {
                continue;
            };
            if !key.verify(self.text.as_bytes(), &sig.signature) {
                return Err(NoteError::BadSignature {
                    name: sig.name.clone(),
                    key_id: sig.key_id,
                });
            }
            if !verified.contains(key) {
                verified.push(key.clone());
            }
        }
        if verified.is_empty() {
            let signed_by = self
                .signatures
                .iter()
                .map(|s| format!("{}+{:08x}", s.name, s.key_id))
                .collect::<Vec<_>>()
                .join(", ");
            return Err(NoteError::NoTrustedSignature { signed_by });
        }
        Ok(verified)
    }

    /// The full note: text, blank line, signature lines.
    pub fn to_note_string(&self) -> String {
        let mut out = String::with_capacity(self.text.len() + 1 + 100 * self.signatures.len());
        out.push_str(&self.text);
        out.push('\n');
        for sig in &self.signatures {
            out.push_str(&sig.to_line());
        }
        out
    }

    /// Adds a signature line unless one with the same key name and ID is already there.
    pub fn add_signature(&mut self, sig: NoteSignature) {
        if !self
            .signatures
            .iter()
            .any(|s| s.name == sig.name && s.key_id == sig.key_id)
        {
            self.signatures.push(sig);
        }
    }
}

fn parse_signature_line(line: &str, number: usize) -> Result<NoteSignature, NoteError> {
    let bad = |reason: &str| NoteError::MalformedSignature {
        line: number,
        reason: reason.to_owned(),
    };
    let rest = line
        .strip_prefix("— ")
        .ok_or_else(|| bad("must start with an em dash and a space"))?;
    let (name, b64) = rest
        .split_once(' ')
        .ok_or_else(|| bad("expected key name and base64 signature"))?;
    if !is_valid_key_name(name) {
        return Err(bad(&format!("invalid key name {name:?}")));
    }
    let raw = BASE64
        .decode(b64)
        .map_err(|e| bad(&format!("bad base64: {e}")))?;
    if raw.len() < 5 {
        return Err(bad("signature shorter than key ID plus one byte"));
    }
    Ok(NoteSignature {
        name: name.to_owned(),
        key_id: u32::from_be_bytes([raw[0], raw[1], raw[2], raw[3]]),
        signature: raw[4..].to_vec(),
    })
}

/// Signs `text` (must end with a newline, no blank lines) with every signer.
pub fn sign(text: &str, signers: &[SignerKey]) -> Result<String, NoteError> {
    if text.is_empty() {
        return Err(NoteError::EmptyText);
    }
    if !text.ends_with('\n') {
        return Err(NoteError::MissingFinalNewline);
    }
    check_text_chars(text)?;
    if text.contains("\n\n") {
        return Err(NoteError::NoSignatureBlock);
    }
    let mut out = String::with_capacity(text.len() + 1 + 100 * signers.len());
    out.push_str(text);
    out.push('\n');
    for signer in signers {
        out.push_str(&signer.sign_line(text.as_bytes()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signer() -> SignerKey {
        SignerKey::from_seed("example.com/log", &[7u8; 32]).unwrap()
    }

    #[test]
    fn sign_then_verify_round_trips() {
        let s = signer();
        let note = sign("hello\nworld\n", std::slice::from_ref(&s)).unwrap();
        let parsed = Note::parse(note.as_bytes()).unwrap();
        assert_eq!(parsed.text(), "hello\nworld\n");
        assert_eq!(parsed.verify(&[s.verifier()]).unwrap(), vec![s.verifier()]);
        assert_eq!(parsed.to_note_string(), note);
    }

    #[test]
    fn verifier_key_string_round_trips_and_checks_id() {
        let v = signer().verifier();
        let text = v.to_string();
        assert_eq!(VerifierKey::parse(&text).unwrap(), v);
        let wrong_id = text.replacen(&format!("{:08x}", v.key_id()), "00000000", 1);
        assert!(matches!(
            VerifierKey::parse(&wrong_id),
            Err(NoteError::MalformedVerifierKey { .. })
        ));
        assert!(VerifierKey::parse("no-plus-signs").is_err());
    }

    #[test]
    fn signer_string_round_trips() {
        let s = signer();
        let parsed = SignerKey::parse(&s.to_private_string()).unwrap();
        assert_eq!(parsed.verifier(), s.verifier());
        assert!(!format!("{s:?}").contains("PRIVATE"));
    }

    #[test]
    fn unknown_keys_are_ignored_but_bad_known_signatures_reject() {
        let s = signer();
        let other = SignerKey::from_seed("other", &[9u8; 32]).unwrap();
        let note = sign("text\n", &[other.clone(), s.clone()]).unwrap();
        let parsed = Note::parse(note.as_bytes()).unwrap();
        assert_eq!(parsed.verify(&[s.verifier()]).unwrap().len(), 1);
        // Same name and ID as `s`, wrong signature bytes.
        let mut forged = parsed.clone();
        forged.signatures[1].signature[0] ^= 1;
        assert!(matches!(
            forged.verify(&[s.verifier()]),
            Err(NoteError::BadSignature { .. })
        ));
        assert!(matches!(
            parsed.verify(&[]),
            Err(NoteError::NoTrustedSignature { .. })
        ));
    }

    #[test]
    fn malformed_notes_name_the_problem() {
        let cases: &[(&[u8], &str)] = &[
            (b"text\n", "no blank line"),
            (b"text\n\n", "does not end"),
            (b"\n\n\xe2\x80\x94 a AAAAAAA=\n", "empty"),
            (
                b"te\x01xt\n\n\xe2\x80\x94 a AAAAAAA=\n",
                "control character",
            ),
            (b"text\n\n- a AAAAAAA=\n", "em dash"),
            (b"text\n\n\xe2\x80\x94 a+b AAAAAAA=\n", "invalid key name"),
            (b"text\n\n\xe2\x80\x94 a !!!!\n", "bad base64"),
            (b"text\n\n\xe2\x80\x94 a AAAA\n", "shorter"),
            (b"text\n\n\xff\n", "UTF-8"),
        ];
        for (input, needle) in cases {
            let err = Note::parse(input).unwrap_err().to_string();
            assert!(err.contains(needle), "{input:?}: {err}");
        }
    }
}
