//! Live checks against a running server: fetch a log's latest signed checkpoint and prove
//! that it extends a checkpoint the caller already trusts (a saved file, the checkpoint of an
//! inclusion proof, or the monitor's pinned one).
//!
//! The server is not trusted: every checkpoint it sends is verified with the caller's keys,
//! and "extends" is decided here from RFC 9162 consistency proofs. The verdicts are:
//! - the server's log is smaller than the trusted one → [`LiveError::Rollback`];
//! - same size but another root, or a consistency proof that does not verify →
//!   [`LiveError::Fork`] (the server shows different histories to different people);
//! - otherwise [`Extension`]: same checkpoint, or a verified append-only extension.

use std::time::Duration;

use auditledger_ledger::checkpoint::VerifiedCheckpoint;
use auditledger_ledger::merkle::{self, Hash};
use auditledger_ledger::note::VerifierKey;
use auditledger_proto::v1 as pb;

use crate::VerifyError;
use crate::grpc::{ClientOptions, Code, GrpcClient, GrpcError};

const LOG_SERVICE: &str = "auditledger.v1.Log";

/// Default limit for each call to the server.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a live check failed. [`LiveError::is_alert`] tells the evidence of misbehaviour
/// (fork, rollback) from errors that prove nothing (unreachable server, refused token…).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LiveError {
    #[error(transparent)]
    Grpc(#[from] GrpcError),
    /// A checkpoint from the server does not verify with the trusted keys.
    #[error("the server's checkpoint does not verify: {0}")]
    BadCheckpoint(VerifyError),
    /// The server answered about another log than the one asked for.
    #[error("{0}")]
    WrongLog(String),
    #[error(
        "ROLLBACK of {origin}: trusted checkpoint has tree size {old_size} root {old_root}, \
         the server's latest has tree size {new_size} root {new_root} (a log never shrinks)"
    )]
    Rollback {
        origin: String,
        old_size: u64,
        old_root: String,
        new_size: u64,
        new_root: String,
    },
    #[error(
        "FORK of {origin}: trusted checkpoint has tree size {old_size} root {old_root}, \
         the server's latest has tree size {new_size} root {new_root}: {reason}"
    )]
    Fork {
        origin: String,
        old_size: u64,
        old_root: String,
        new_size: u64,
        new_root: String,
        reason: String,
    },
}

impl LiveError {
    /// A fork or rollback: proof that the server's log is not an append-only extension of a
    /// checkpoint it signed earlier.
    pub fn is_alert(&self) -> bool {
        matches!(self, LiveError::Rollback { .. } | LiveError::Fork { .. })
    }

    /// Whether a later retry may succeed: the server was unreachable, slow or busy, or the
    /// log has no checkpoint yet (NOT_FOUND before the first append, FAILED_PRECONDITION
    /// before the first checkpoint).
    pub fn is_transient(&self) -> bool {
        match self {
            LiveError::Grpc(e) => {
                e.is_transient()
                    || matches!(e.code(), Some(Code::NOT_FOUND | Code::FAILED_PRECONDITION))
            }
            _ => false,
        }
    }
}

/// How a newer checkpoint relates to a trusted one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Extension {
    /// Same tree size and root.
    Same,
    /// Larger, and a consistency proof of `proof_hashes` hashes verified.
    Grew { proof_hashes: usize },
}

/// One log (tenant, environment) on one server.
pub struct LogTarget {
    client: GrpcClient,
    tenant: String,
    environment: String,
}

fn hex_root(root: &Hash) -> String {
    hex::encode(root)
}

impl LogTarget {
    /// Checks the URL and TLS files; connects on the first call.
    pub fn new(
        options: &ClientOptions,
        tenant: &str,
        environment: &str,
    ) -> Result<Self, LiveError> {
        Ok(LogTarget {
            client: GrpcClient::new(options)?,
            tenant: tenant.to_owned(),
            environment: environment.to_owned(),
        })
    }

    /// The server URL.
    pub fn url(&self) -> String {
        self.client.url()
    }

    /// Whether `origin` names this target's log (`<prefix>/<tenant>/<environment>`; the
    /// prefix is the server's configuration, unknown here).
    pub fn is_origin_of_target(&self, origin: &str) -> bool {
        origin.ends_with(&format!("/{}/{}", self.tenant, self.environment))
    }

    /// `Log.GetCheckpoint`, verified with `keys`, for this tenant and environment.
    pub async fn latest_checkpoint(
        &mut self,
        keys: &[VerifierKey],
    ) -> Result<(String, VerifiedCheckpoint), LiveError> {
        let response: pb::SignedCheckpoint = self
            .client
            .unary(
                LOG_SERVICE,
                "GetCheckpoint",
                &pb::GetCheckpointRequest {
                    tenant_id: self.tenant.clone(),
                    environment: self.environment.clone(),
                    ..Default::default()
                },
            )
            .await?;
        let verified = crate::verify_checkpoint(response.note.as_bytes(), keys, None, None)
            .map_err(LiveError::BadCheckpoint)?;
        if !self.is_origin_of_target(&verified.checkpoint.origin) {
            return Err(LiveError::WrongLog(format!(
                "asked for tenant {:?} environment {:?}, the server sent a checkpoint of {}",
                self.tenant, self.environment, verified.checkpoint.origin
            )));
        }
        Ok((response.note, verified))
    }

    /// `Log.GetConsistencyProof(first, second)`: the proof's hashes (unverified).
    pub async fn consistency_proof(
        &mut self,
        first: u64,
        second: u64,
    ) -> Result<Vec<Vec<u8>>, LiveError> {
        let proof: pb::ConsistencyProof = self
            .client
            .unary(
                LOG_SERVICE,
                "GetConsistencyProof",
                &pb::GetConsistencyProofRequest {
                    tenant_id: self.tenant.clone(),
                    environment: self.environment.clone(),
                    first,
                    second,
                },
            )
            .await?;
        if (proof.first, proof.second) != (first, second) {
            return Err(LiveError::Grpc(GrpcError::Protocol {
                method: "GetConsistencyProof".into(),
                reason: format!(
                    "asked for sizes {first} → {second}, got a proof for {} → {}",
                    proof.first, proof.second
                ),
            }));
        }
        Ok(proof.hashes)
    }

    /// Proves that `newer` (from the server) extends `trusted`, fetching a consistency proof
    /// when it is larger. Both must be verified checkpoints of the same origin.
    pub async fn check_extends(
        &mut self,
        trusted: &VerifiedCheckpoint,
        newer: &VerifiedCheckpoint,
    ) -> Result<Extension, LiveError> {
        let (old, new) = (&trusted.checkpoint, &newer.checkpoint);
        if old.origin != new.origin {
            return Err(LiveError::WrongLog(format!(
                "the trusted checkpoint is of {}, the server's of {}",
                old.origin, new.origin
            )));
        }
        let fork = |reason: String| LiveError::Fork {
            origin: old.origin.clone(),
            old_size: old.tree_size,
            old_root: hex_root(&old.root_hash),
            new_size: new.tree_size,
            new_root: hex_root(&new.root_hash),
            reason,
        };
        if new.tree_size < old.tree_size {
            return Err(LiveError::Rollback {
                origin: old.origin.clone(),
                old_size: old.tree_size,
                old_root: hex_root(&old.root_hash),
                new_size: new.tree_size,
                new_root: hex_root(&new.root_hash),
            });
        }
        if new.tree_size == old.tree_size {
            return if new.root_hash == old.root_hash {
                Ok(Extension::Same)
            } else {
                Err(fork("same tree size, different roots".into()))
            };
        }
        if old.tree_size == 0 {
            // The empty tree is a prefix of every tree.
            return Ok(Extension::Grew { proof_hashes: 0 });
        }
        let raw = self.consistency_proof(old.tree_size, new.tree_size).await?;
        // Whatever is wrong with the proof, the server failed to show that its log extends
        // the one it signed before: that is the fork alarm.
        let hashes = raw
            .iter()
            .enumerate()
            .map(|(i, h)| {
                Hash::try_from(h.as_slice()).map_err(|_| {
                    fork(format!(
                        "consistency proof hash {i} is {} bytes, not 32",
                        h.len()
                    ))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        merkle::verify_consistency(
            old.tree_size,
            new.tree_size,
            &hashes,
            &old.root_hash,
            &new.root_hash,
        )
        .map_err(|e| {
            fork(format!(
                "the server's consistency proof does not verify: {e}"
            ))
        })?;
        Ok(Extension::Grew {
            proof_hashes: hashes.len(),
        })
    }

    /// Fetches the latest checkpoint and proves it extends `trusted_note` (verified with
    /// `keys` first).
    pub async fn check_latest_extends(
        &mut self,
        trusted_note: &[u8],
        keys: &[VerifierKey],
    ) -> Result<LiveCheck, LiveError> {
        let trusted = crate::verify_checkpoint(trusted_note, keys, None, None)
            .map_err(LiveError::BadCheckpoint)?;
        if !self.is_origin_of_target(&trusted.checkpoint.origin) {
            return Err(LiveError::WrongLog(format!(
                "the checkpoint to check is of {}, not of tenant {:?} environment {:?} \
                 (check --tenant and --env)",
                trusted.checkpoint.origin, self.tenant, self.environment
            )));
        }
        let (_, latest) = self.latest_checkpoint(keys).await?;
        let extension = self.check_extends(&trusted, &latest).await?;
        Ok(LiveCheck {
            trusted,
            latest,
            extension,
        })
    }
}

/// A successful [`LogTarget::check_latest_extends`].
pub struct LiveCheck {
    pub trusted: VerifiedCheckpoint,
    pub latest: VerifiedCheckpoint,
    pub extension: Extension,
}

impl LiveCheck {
    /// One line for people.
    pub fn describe(&self) -> String {
        describe(&self.trusted, &self.latest, self.extension)
    }
}

/// Describes the outcome of [`LogTarget::check_extends`] for people.
pub fn describe(
    trusted: &VerifiedCheckpoint,
    latest: &VerifiedCheckpoint,
    extension: Extension,
) -> String {
    match extension {
        Extension::Same => format!(
            "the server's latest checkpoint of {} is the same (tree size {}, root {})",
            latest.checkpoint.origin,
            latest.checkpoint.tree_size,
            hex_root(&latest.checkpoint.root_hash)
        ),
        Extension::Grew { proof_hashes } => format!(
            "the server's latest checkpoint of {} (tree size {}, root {}) extends tree size {} \
             (consistency proof of {proof_hashes} hashes verified)",
            latest.checkpoint.origin,
            latest.checkpoint.tree_size,
            hex_root(&latest.checkpoint.root_hash),
            trusted.checkpoint.tree_size
        ),
    }
}
