//! Object store access for the warm and cold tiers: building an `object_store` from a URL,
//! put/get/head/delete with bounded retries, and the object naming scheme.
//!
//! # URLs
//!
//! - a plain path (`/var/lib/auditledger/warm`, or relative to the working directory) or
//!   `file:///abs/path`: the local filesystem, the default. The directory is created if
//!   missing; writes go to a temporary file renamed into place, so a crash never leaves a
//!   partial object under its final name.
//! - `s3://bucket/prefix`: any S3-compatible server. Settings come from [`S3Options`], then the
//!   standard `AWS_*` environment variables (`AWS_ENDPOINT`, `AWS_REGION`,
//!   `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, `AWS_ALLOW_HTTP`).
//!   Requests are path-style, which MinIO, moto and s3s-fs expect.
//! - `memory://`: an in-memory store, for tests.
//!
//! # Object names
//!
//! Relative to the URL's directory or prefix, one folder per log:
//!
//! ```text
//! <tenant>/<environment>/segments/<start>-<end>.parquet    the segment file
//! <tenant>/<environment>/segments/<start>-<end>.manifest   its signed manifest
//! <tenant>/<environment>/segments/<start>-<end>.anchor     its anchor (crate::anchor)
//! <tenant>/<environment>/segments/<start>-<end>.expired/<n>.parquet   after retention expiry
//! <tenant>/<environment>/segments/<start>-<end>.expired/<n>.manifest  (n rows without content)
//! ```
//!
//! `start` and `end` are decimal leaf indexes without padding, `end` exclusive (leaves
//! `[start, end)`); tenant and environment are the validated names of DESIGN §3, which are
//! safe path segments. The system log's tenant is `_system`.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use auditledger_ledger::event::{SYSTEM_TENANT, check_name};
use bytes::Bytes;
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::prefix::PrefixStore;
use object_store::{
    BackoffConfig, ObjectMeta, ObjectStore, ObjectStoreExt, PutPayload, RetryConfig,
};

use crate::segment::{SegmentError, SegmentId, SegmentReader};

/// Why an object store could not be opened or an operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    #[error("object store URL {url:?}: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("object store {url}: {source}")]
    Build {
        url: String,
        #[source]
        source: Box<object_store::Error>,
    },
    #[error("object store {url}: creating directory {dir}: {source}")]
    CreateDir {
        url: String,
        dir: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{store}: object {path} not found")]
    NotFound { store: String, path: String },
    #[error("{store}: {op} {path} failed after {attempts} attempt(s): {source}")]
    Operation {
        store: String,
        op: &'static str,
        path: String,
        attempts: u32,
        #[source]
        source: Box<object_store::Error>,
    },
    #[error("invalid object name part {part:?}: {reason}")]
    BadName { part: String, reason: String },
}

/// Bounded exponential backoff for transient object store errors.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Tries per operation, including the first (at least 1).
    pub max_attempts: u32,
    /// Wait after the first failure; doubles after each further one.
    pub initial_backoff: Duration,
    /// Longest wait between two tries.
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 5,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
        }
    }
}

impl RetryPolicy {
    /// The wait after failed try number `attempt` (1-based).
    pub fn backoff(&self, attempt: u32) -> Duration {
        let factor = 1u32 << attempt.saturating_sub(1).min(20);
        self.initial_backoff
            .saturating_mul(factor)
            .min(self.max_backoff)
    }
}

/// Whether an error may go away by trying again: everything except answers about the object
/// or the request itself (not found, exists, precondition, permissions, bad path or config).
pub fn is_transient(error: &object_store::Error) -> bool {
    use object_store::Error as E;
    !matches!(
        error,
        E::NotFound { .. }
            | E::AlreadyExists { .. }
            | E::Precondition { .. }
            | E::NotModified { .. }
            | E::InvalidPath { .. }
            | E::NotSupported { .. }
            | E::NotImplemented { .. }
            | E::PermissionDenied { .. }
            | E::Unauthenticated { .. }
            | E::UnknownConfigurationKey { .. }
    )
}

/// Runs `op` until it succeeds, fails with a permanent error, or `policy.max_attempts` tries
/// have failed; sleeps [`RetryPolicy::backoff`] between tries. Returns the last error and
/// the number of tries.
pub async fn with_retries<T, F, Fut>(
    policy: &RetryPolicy,
    mut op: F,
) -> Result<T, (object_store::Error, u32)>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = object_store::Result<T>>,
{
    let max_attempts = policy.max_attempts.max(1);
    let mut attempt = 1;
    loop {
        match op().await {
            Ok(value) => return Ok(value),
            Err(e) if attempt < max_attempts && is_transient(&e) => {
                tokio::time::sleep(policy.backoff(attempt)).await;
                attempt += 1;
            }
            Err(e) => return Err((e, attempt)),
        }
    }
}

/// Settings of `s3://` stores; unset ones fall back to the `AWS_*` environment variables.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct S3Options {
    /// Endpoint URL of an S3-compatible server, e.g. `http://127.0.0.1:9000`.
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    pub session_token: Option<String>,
    /// Allow plain `http://` endpoints.
    pub allow_http: Option<bool>,
}

/// How to open a store.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StoreOptions {
    pub s3: S3Options,
    pub retry: RetryPolicy,
}

/// One tier's object store, addressed by object names relative to its URL.
#[derive(Clone, Debug)]
pub struct SegmentStore {
    url: String,
    store: Arc<dyn ObjectStore>,
    retry: RetryPolicy,
}

impl SegmentStore {
    /// Opens the store a URL names (see the module docs).
    pub fn open(url: &str, options: &StoreOptions) -> Result<Self, StoreError> {
        let bad = |reason: &str| StoreError::BadUrl {
            url: url.to_owned(),
            reason: reason.to_owned(),
        };
        let store: Arc<dyn ObjectStore> = if let Some(rest) = url.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(bad("no bucket name after s3://"));
            }
            let s3 = &options.s3;
            let mut builder = AmazonS3Builder::from_env()
                .with_bucket_name(bucket)
                // Retries are ours (bounded, per operation); keep the client's own few.
                .with_retry(RetryConfig {
                    backoff: BackoffConfig {
                        init_backoff: options.retry.initial_backoff,
                        max_backoff: options.retry.max_backoff,
                        base: 2.0,
                    },
                    max_retries: 2,
                    retry_timeout: Duration::from_secs(60),
                });
            if let Some(endpoint) = &s3.endpoint {
                builder = builder.with_endpoint(endpoint);
            }
            if let Some(region) = &s3.region {
                builder = builder.with_region(region);
            }
            if let Some(key) = &s3.access_key_id {
                builder = builder.with_access_key_id(key);
            }
            if let Some(secret) = &s3.secret_access_key {
                builder = builder.with_secret_access_key(secret);
            }
            if let Some(token) = &s3.session_token {
                builder = builder.with_token(token);
            }
            if let Some(allow_http) = s3.allow_http {
                builder = builder.with_allow_http(allow_http);
            }
            let s3 = builder.build().map_err(|source| StoreError::Build {
                url: url.to_owned(),
                source: Box::new(source),
            })?;
            let prefix = prefix.trim_matches('/');
            if prefix.is_empty() {
                Arc::new(s3)
            } else {
                let prefix = Path::parse(prefix).map_err(|e| bad(&e.to_string()))?;
                Arc::new(PrefixStore::new(s3, prefix))
            }
        } else if url == "memory://" || url == "memory:///" {
            Arc::new(InMemory::new())
        } else {
            let dir = match url.strip_prefix("file://") {
                Some(path) if path.starts_with('/') => std::path::PathBuf::from(path),
                Some(_) => return Err(bad("file:// URLs need an absolute path (file:///…)")),
                None if url.contains("://") => {
                    return Err(bad(
                        "unsupported scheme; use a path, file:///abs/path, s3://bucket/prefix or memory://",
                    ));
                }
                None if url.is_empty() => return Err(bad("empty")),
                None => std::path::absolute(url).map_err(|e| bad(&e.to_string()))?,
            };
            std::fs::create_dir_all(&dir).map_err(|source| StoreError::CreateDir {
                url: url.to_owned(),
                dir: dir.display().to_string(),
                source,
            })?;
            let local =
                LocalFileSystem::new_with_prefix(&dir).map_err(|source| StoreError::Build {
                    url: url.to_owned(),
                    source: Box::new(source),
                })?;
            Arc::new(local)
        };
        Ok(SegmentStore {
            url: url.to_owned(),
            store,
            retry: options.retry.clone(),
        })
    }

    /// Wraps an existing store (tests wrap stores that fail on purpose); `url` labels errors.
    pub fn new(url: impl Into<String>, store: Arc<dyn ObjectStore>, retry: RetryPolicy) -> Self {
        SegmentStore {
            url: url.into(),
            store,
            retry,
        }
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn object_store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    /// The path of every object in the store (one listing, not retried).
    pub async fn list_paths(&self) -> Result<Vec<String>, object_store::Error> {
        use futures_util::TryStreamExt as _;
        self.store
            .list(None)
            .map_ok(|meta| meta.location.to_string())
            .try_collect()
            .await
    }

    fn failed(
        &self,
        op: &'static str,
        path: &Path,
        (source, attempts): (object_store::Error, u32),
    ) -> StoreError {
        if let object_store::Error::NotFound { .. } = source {
            return StoreError::NotFound {
                store: self.url.clone(),
                path: path.to_string(),
            };
        }
        StoreError::Operation {
            store: self.url.clone(),
            op,
            path: path.to_string(),
            attempts,
            source: Box::new(source),
        }
    }

    /// Writes (or replaces) an object. Local filesystem writes are atomic.
    pub async fn put(&self, path: &Path, bytes: Bytes) -> Result<(), StoreError> {
        with_retries(&self.retry, || {
            self.store.put(path, PutPayload::from_bytes(bytes.clone()))
        })
        .await
        .map(|_| ())
        .map_err(|e| self.failed("put", path, e))
    }

    /// Reads a whole object ([`StoreError::NotFound`] if absent).
    pub async fn get(&self, path: &Path) -> Result<Bytes, StoreError> {
        with_retries(&self.retry, || async {
            self.store.get(path).await?.bytes().await
        })
        .await
        .map_err(|e| self.failed("get", path, e))
    }

    /// The object's metadata, or `None` if it does not exist.
    pub async fn head(&self, path: &Path) -> Result<Option<ObjectMeta>, StoreError> {
        match with_retries(&self.retry, || self.store.head(path)).await {
            Ok(meta) => Ok(Some(meta)),
            Err((object_store::Error::NotFound { .. }, _)) => Ok(None),
            Err(e) => Err(self.failed("head", path, e)),
        }
    }

    /// Deletes an object; deleting an absent object succeeds (moves are redone after crashes).
    pub async fn delete(&self, path: &Path) -> Result<(), StoreError> {
        match with_retries(&self.retry, || self.store.delete(path)).await {
            Ok(()) | Err((object_store::Error::NotFound { .. }, _)) => Ok(()),
            Err(e) => Err(self.failed("delete", path, e)),
        }
    }

    /// Opens a segment object for reading (footer now, column chunks on demand).
    pub async fn open_segment(
        &self,
        path: &Path,
        expected: &SegmentId,
    ) -> Result<SegmentReader, SegmentError> {
        SegmentReader::from_object(Arc::clone(&self.store), path, expected).await
    }
}

fn check_part(field: &'static str, value: &str) -> Result<(), StoreError> {
    if field == "tenant_id" && value == SYSTEM_TENANT {
        return Ok(());
    }
    check_name(field, value).map_err(|e| StoreError::BadName {
        part: value.to_owned(),
        reason: e.to_string(),
    })
}

fn segment_object(
    tenant_id: &str,
    environment: &str,
    start: u64,
    end: u64,
    extension: &str,
) -> Result<Path, StoreError> {
    check_part("tenant_id", tenant_id)?;
    check_part("environment", environment)?;
    let name = format!("{start}-{end}.{extension}");
    Ok(Path::from_iter([
        tenant_id,
        environment,
        "segments",
        name.as_str(),
    ]))
}

/// `<tenant>/<environment>/segments/<start>-<end>.parquet`.
pub fn segment_object_path(
    tenant_id: &str,
    environment: &str,
    start: u64,
    end: u64,
) -> Result<Path, StoreError> {
    segment_object(tenant_id, environment, start, end, "parquet")
}

/// `<tenant>/<environment>/segments/<start>-<end>.manifest`.
pub fn manifest_object_path(
    tenant_id: &str,
    environment: &str,
    start: u64,
    end: u64,
) -> Result<Path, StoreError> {
    segment_object(tenant_id, environment, start, end, "manifest")
}

/// `<tenant>/<environment>/segments/<start>-<end>.anchor`: the segment's anchor
/// ([`crate::anchor`]). One per segment whatever the object version, so expiry rewrites keep
/// it.
pub fn anchor_object_path(
    tenant_id: &str,
    environment: &str,
    start: u64,
    end: u64,
) -> Result<Path, StoreError> {
    segment_object(tenant_id, environment, start, end, "anchor")
}

/// Where the expiry rewrite of a segment that has `expired_leaves` rows without content is
/// stored: `<tenant>/<environment>/segments/<start>-<end>.expired/<expired_leaves>.parquet`.
///
/// Every rewrite expires more rows than the one before (expired rows stay expired), so each
/// version has a name of its own and a rewrite never replaces the object its segment record
/// names; a crash between writing the new version and recording it leaves the recorded
/// version intact. The folder holds one segment's versions only, so the archiver can list
/// and clean it.
pub fn expired_segment_object_path(
    tenant_id: &str,
    environment: &str,
    start: u64,
    end: u64,
    expired_leaves: u64,
) -> Result<Path, StoreError> {
    check_part("tenant_id", tenant_id)?;
    check_part("environment", environment)?;
    let folder = format!("{start}-{end}.expired");
    let name = format!("{expired_leaves}.parquet");
    Ok(Path::from_iter([
        tenant_id,
        environment,
        "segments",
        folder.as_str(),
        name.as_str(),
    ]))
}

/// The folder of a segment's expiry rewrites (see [`expired_segment_object_path`]).
pub fn expired_versions_folder(
    tenant_id: &str,
    environment: &str,
    start: u64,
    end: u64,
) -> Result<Path, StoreError> {
    check_part("tenant_id", tenant_id)?;
    check_part("environment", environment)?;
    let folder = format!("{start}-{end}.expired");
    Ok(Path::from_iter([
        tenant_id,
        environment,
        "segments",
        folder.as_str(),
    ]))
}

/// The manifest path that goes with a segment object path: `.parquet` replaced by
/// `.manifest`.
pub fn manifest_path_for(object: &Path) -> Result<Path, StoreError> {
    let name = object.as_ref();
    let stem = name
        .strip_suffix(".parquet")
        .ok_or_else(|| StoreError::BadName {
            part: name.to_owned(),
            reason: "a segment object name ends in .parquet".into(),
        })?;
    Path::parse(format!("{stem}.manifest")).map_err(|e| StoreError::BadName {
        part: name.to_owned(),
        reason: e.to_string(),
    })
}

/// The leaf range of a segment object or manifest file name (`<start>-<end>.parquet` or
/// `.manifest`), for listings; `None` for any other name.
pub fn parse_segment_object_name(name: &str) -> Option<(u64, u64)> {
    let stem = name
        .strip_suffix(".parquet")
        .or_else(|| name.strip_suffix(".manifest"))?;
    let (start, end) = stem.split_once('-')?;
    let start = crate::segment::parse_decimal(start)?;
    let end = crate::segment::parse_decimal(end)?;
    (start < end).then_some((start, end))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    fn fast() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 4,
            initial_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(3),
        }
    }

    fn generic(message: &str) -> object_store::Error {
        object_store::Error::Generic {
            store: "test",
            source: message.to_owned().into(),
        }
    }

    #[test]
    fn backoff_doubles_and_is_capped() {
        let policy = RetryPolicy::default();
        assert_eq!(policy.backoff(1), Duration::from_millis(100));
        assert_eq!(policy.backoff(2), Duration::from_millis(200));
        assert_eq!(policy.backoff(3), Duration::from_millis(400));
        assert_eq!(policy.backoff(10), Duration::from_secs(5));
        assert_eq!(policy.backoff(u32::MAX), Duration::from_secs(5));
    }

    #[tokio::test]
    async fn transient_errors_are_retried_until_success() {
        let calls = AtomicU32::new(0);
        let result = with_retries(&fast(), || async {
            if calls.fetch_add(1, Ordering::SeqCst) < 2 {
                Err(generic("connection reset"))
            } else {
                Ok(42)
            }
        })
        .await;
        assert_eq!(result.unwrap(), 42);
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn retries_are_bounded() {
        let calls = AtomicU32::new(0);
        let result: Result<(), _> = with_retries(&fast(), || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Err(generic("503 slow down"))
        })
        .await;
        let (error, attempts) = result.unwrap_err();
        assert_eq!(attempts, 4);
        assert_eq!(calls.load(Ordering::SeqCst), 4);
        assert!(error.to_string().contains("slow down"));
    }

    #[tokio::test]
    async fn permanent_errors_are_not_retried() {
        let calls = AtomicU32::new(0);
        let result: Result<(), _> = with_retries(&fast(), || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Err(object_store::Error::NotFound {
                path: "x".into(),
                source: "gone".into(),
            })
        })
        .await;
        assert_eq!(result.unwrap_err().1, 1);
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn object_names() {
        let path = segment_object_path("acme", "prod", 65536, 131072).unwrap();
        assert_eq!(path.as_ref(), "acme/prod/segments/65536-131072.parquet");
        let path = manifest_object_path("_system", "prod", 0, 256).unwrap();
        assert_eq!(path.as_ref(), "_system/prod/segments/0-256.manifest");
        let path = anchor_object_path("acme", "prod", 0, 256).unwrap();
        assert_eq!(path.as_ref(), "acme/prod/segments/0-256.anchor");
        assert!(segment_object_path("../etc", "prod", 0, 1).is_err());
        assert!(segment_object_path("acme", "a/b", 0, 1).is_err());
        assert_eq!(
            parse_segment_object_name("65536-131072.parquet"),
            Some((65536, 131072))
        );
        assert_eq!(parse_segment_object_name("0-256.manifest"), Some((0, 256)));
        assert_eq!(parse_segment_object_name("01-2.parquet"), None);
        assert_eq!(parse_segment_object_name("2-1.parquet"), None);
        assert_eq!(parse_segment_object_name("0-256.tmp"), None);
        let path = expired_segment_object_path("acme", "prod", 256, 512, 17).unwrap();
        assert_eq!(
            path.as_ref(),
            "acme/prod/segments/256-512.expired/17.parquet"
        );
        assert_eq!(
            manifest_path_for(&path).unwrap().as_ref(),
            "acme/prod/segments/256-512.expired/17.manifest"
        );
        let path = segment_object_path("acme", "prod", 256, 512).unwrap();
        assert_eq!(
            manifest_path_for(&path).unwrap(),
            manifest_object_path("acme", "prod", 256, 512).unwrap()
        );
        assert!(manifest_path_for(&Path::from("a/b.txt")).is_err());
    }

    #[test]
    fn urls() {
        let options = StoreOptions::default();
        for url in ["ftp://x/y", "file://relative", "s3:///prefix", ""] {
            let err = SegmentStore::open(url, &options).unwrap_err();
            assert!(matches!(err, StoreError::BadUrl { .. }), "{url}: {err}");
        }
        let options = StoreOptions {
            s3: S3Options {
                endpoint: Some("http://127.0.0.1:9".into()),
                region: Some("us-east-1".into()),
                access_key_id: Some("test".into()),
                secret_access_key: Some("test".into()),
                allow_http: Some(true),
                ..S3Options::default()
            },
            ..StoreOptions::default()
        };
        let store = SegmentStore::open("s3://bucket/warm/tier", &options).unwrap();
        assert_eq!(store.url(), "s3://bucket/warm/tier");
        assert!(SegmentStore::open("memory://", &options).is_ok());
    }
}
