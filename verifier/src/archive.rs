//! `auditledger-verify archive URL`: verifies a warm or cold tier offline, segment by segment,
//! against its signed manifests and the log's signed checkpoints (through the segment
//! anchors, `auditledger_archiver::anchor`).
//!
//! For every segment found under `<tenant>/<environment>/segments/`:
//! - every manifest version (the original and expiry rewrites) is signed by a trusted key,
//!   names the range of its file name and the object beside it, and the object has the size
//!   and BLAKE3 it pins;
//! - the object is a segment file: every leaf of the range present once, in order, every
//!   present leaf hashing to its `leaf_hash` (expired rows: the hash only), the root rebuilt
//!   from the hashes equal to the manifest's root;
//! - its anchor's checkpoint is signed by a trusted key, is of the same origin, and the
//!   segment root is included in it; consecutive anchors are consistent (RFC 9162), so the
//!   whole tier is part of one append-only log;
//! - the segments of each log are contiguous from the first one found (a missing segment is
//!   a gap, named), all of one origin.
//!
//! Segments are verified in parallel (rayon, all cores by default); object reads go through a
//! small tokio runtime. Failures are collected, not stopped at: each names the origin, the
//! leaf range and the object path.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::io::IsTerminal as _;
use std::sync::Arc;
use std::time::Instant;

use auditledger_archiver::anchor::{SegmentAnchor, VerifiedAnchor};
use auditledger_archiver::manifest;
use auditledger_archiver::segment::{SegmentId, SegmentReader};
use auditledger_archiver::store::{SegmentStore, StoreError, StoreOptions, manifest_path_for};
use auditledger_ledger::note::VerifierKey;
use bytes::Bytes;
use object_store::path::Path;
use rayon::prelude::*;

/// What to verify and how.
#[derive(Clone, Debug, Default)]
pub struct ArchiveOptions {
    /// Trusted keys; a signature from any one is enough.
    pub keys: Vec<VerifierKey>,
    /// Verify only this log (its `<tenant>/<environment>` folder), and require every segment
    /// there to be of exactly this origin.
    pub origin: Option<String>,
    /// Worker threads (default: all cores).
    pub threads: Option<usize>,
    /// Accept segments without an anchor (archived by a version before anchors).
    pub allow_unanchored: bool,
    /// Draw a progress bar on stderr (only if it is a terminal).
    pub progress: bool,
    /// How to reach the store; the default takes `s3://` settings from the `AWS_*`
    /// environment variables.
    pub store: StoreOptions,
}

/// One thing wrong with the archive.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    /// The log's origin (or its folder when no manifest said).
    pub origin: String,
    /// The segment's leaf range, when the failure is about one segment.
    pub range: Option<(u64, u64)>,
    /// The object at fault (or where a missing one belongs).
    pub path: String,
    pub reason: String,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.range {
            Some((start, end)) => write!(
                f,
                "{} segment [{start}, {end}) {}: {}",
                self.origin, self.path, self.reason
            ),
            None => write!(f, "{} {}: {}", self.origin, self.path, self.reason),
        }
    }
}

/// What was verified of one log.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LogReport {
    pub origin: String,
    /// `<tenant>/<environment>`, relative to the URL.
    pub folder: String,
    pub segments: u64,
    /// First leaf of the first segment and end of the last.
    pub first_leaf: u64,
    pub end_leaf: u64,
    pub leaves: u64,
    /// Leaves whose content has expired (hash only).
    pub expired_leaves: u64,
    /// Tree size and hex root of the largest checkpoint an anchor carries.
    pub highest_checkpoint: Option<(u64, String)>,
    /// Segments without an anchor (only with `allow_unanchored`).
    pub unanchored: u64,
    /// Tree size the first anchor chains from in another tier (0 = the log's start).
    pub chained_from: u64,
}

/// The outcome of a verification run.
#[derive(Clone, Debug, Default)]
pub struct ArchiveReport {
    pub url: String,
    pub logs: Vec<LogReport>,
    pub failures: Vec<Failure>,
    /// Things that are not failures but worth knowing (leftovers of interrupted runs, ...).
    pub notes: Vec<String>,
    pub seconds: f64,
}

impl ArchiveReport {
    pub fn is_ok(&self) -> bool {
        self.failures.is_empty()
    }
}

/// Why the archive could not be read at all (failures of its content are in the report).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ArchiveError {
    #[error("archive {url}: {reason}")]
    Open { url: String, reason: String },
    #[error("archive {url}: listing objects: {reason}")]
    List { url: String, reason: String },
    #[error("archive {url}: {reason}")]
    Runtime { url: String, reason: String },
}

/// The files of one segment range found in the store.
#[derive(Debug, Default)]
struct Files {
    /// Manifest paths: the original and expiry rewrites.
    manifests: BTreeSet<String>,
    /// Object paths likewise.
    objects: BTreeSet<String>,
    anchor: Option<String>,
}

/// Per log folder: the files of each (leaf range, tier index) found.
type FoundFiles = BTreeMap<String, BTreeMap<((u64, u64), usize), Files>>;

/// What one segment's verification found.
#[derive(Debug)]
struct Checked {
    /// Index of the URL (tier) it was found in.
    tier: usize,
    folder: String,
    start: u64,
    end: u64,
    origin: Option<String>,
    expired_leaves: u64,
    anchor: Option<VerifiedAnchor>,
    failures: Vec<Failure>,
    notes: Vec<String>,
}

/// A decimal number without leading zeros.
fn decimal(text: &str) -> Option<u64> {
    let canonical = text == "0"
        || (!text.is_empty() && !text.starts_with('0') && text.bytes().all(|b| b.is_ascii_digit()));
    canonical.then(|| text.parse().ok()).flatten()
}

/// `<start>-<end>` with canonical decimals and `start < end`.
fn parse_range(stem: &str) -> Option<(u64, u64)> {
    let (a, b) = stem.split_once('-')?;
    let (start, end) = (decimal(a)?, decimal(b)?);
    (start < end).then_some((start, end))
}

/// Sorts an object path into (folder, range, kind) or `None` if it is not a segment file.
fn classify(path: &str) -> Option<(String, (u64, u64), &'static str)> {
    let parts: Vec<&str> = path.split('/').collect();
    let (folder, rest) = match parts.as_slice() {
        [tenant, env, "segments", rest @ ..] => (format!("{tenant}/{env}"), rest),
        _ => return None,
    };
    match rest {
        [name] => {
            for kind in ["parquet", "manifest", "anchor"] {
                if let Some(stem) = name.strip_suffix(&format!(".{kind}")) {
                    return Some((folder, parse_range(stem)?, kind));
                }
            }
            None
        }
        [dir, name] => {
            let range = parse_range(dir.strip_suffix(".expired")?)?;
            let (version, kind) = name.rsplit_once('.')?;
            let kind = match kind {
                "parquet" => "parquet",
                "manifest" => "manifest",
                _ => return None,
            };
            decimal(version)?;
            Some((folder, range, kind))
        }
        _ => None,
    }
}

/// Opens the store a URL names, refusing a local directory that does not exist (opening
/// would create it).
fn open_store(url: &str, options: &StoreOptions) -> Result<SegmentStore, ArchiveError> {
    let local = if let Some(path) = url.strip_prefix("file://") {
        Some(std::path::PathBuf::from(path))
    } else if !url.contains("://") {
        Some(std::path::PathBuf::from(url))
    } else {
        None
    };
    if let Some(dir) = local
        && !dir.is_dir()
    {
        return Err(ArchiveError::Open {
            url: url.to_owned(),
            reason: format!("{} is not a directory", dir.display()),
        });
    }
    SegmentStore::open(url, options).map_err(|e| ArchiveError::Open {
        url: url.to_owned(),
        reason: e.to_string(),
    })
}

/// The origin's last two parts as a folder, `<tenant>/<environment>`.
fn folder_of(origin: &str) -> Option<String> {
    let mut parts = origin.rsplitn(3, '/');
    let env = parts.next()?;
    let tenant = parts.next()?;
    parts.next()?;
    Some(format!("{tenant}/{env}"))
}

/// Verifies every segment of the tier at `url`.
pub fn verify_archive(url: &str, options: &ArchiveOptions) -> Result<ArchiveReport, ArchiveError> {
    verify_archives(&[url.to_owned()], options)
}

/// Verifies several tiers (e.g. cold and warm) as one archive: every log's segments from all
/// of them must be contiguous and form one anchor chain, so the link where one tier ends and
/// the next begins is checked too. A range present in two tiers (a segment caught between
/// the copy and the deletion of a move) is verified in both and counted once.
pub fn verify_archives(
    urls: &[String],
    options: &ArchiveOptions,
) -> Result<ArchiveReport, ArchiveError> {
    let started = Instant::now();
    let joined = urls.join(" + ");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| ArchiveError::Runtime {
            url: joined.clone(),
            reason: format!("starting the I/O runtime: {e}"),
        })?;
    let mut report = ArchiveReport {
        url: joined.clone(),
        ..ArchiveReport::default()
    };
    let wanted_folder = options.origin.as_deref().map(folder_of);
    if let Some(None) = wanted_folder {
        return Err(ArchiveError::Open {
            url: joined,
            reason: format!(
                "--origin {:?} is not `<prefix>/<tenant>/<environment>`",
                options.origin.as_deref().unwrap_or_default()
            ),
        });
    }
    let wanted_folder = wanted_folder.flatten();
    let mut stores = Vec::with_capacity(urls.len());
    let mut empty = Vec::new();
    let mut logs: FoundFiles = BTreeMap::new();
    for (tier, url) in urls.iter().enumerate() {
        let store = open_store(url, &options.store)?;
        let listed = runtime
            .block_on(store.list_paths())
            .map_err(|e| ArchiveError::List {
                url: url.to_owned(),
                reason: e.to_string(),
            })?;
        let mut found = false;
        for path in listed {
            let Some((folder, range, kind)) = classify(&path) else {
                report.notes.push(format!(
                    "{}: not a segment file; ignored",
                    tier_path(urls, tier, &path)
                ));
                continue;
            };
            if wanted_folder.as_ref().is_some_and(|f| *f != folder) {
                continue;
            }
            found = true;
            let files = logs
                .entry(folder)
                .or_default()
                .entry((range, tier))
                .or_default();
            match kind {
                "parquet" => {
                    files.objects.insert(path);
                }
                "manifest" => {
                    files.manifests.insert(path);
                }
                _ => files.anchor = Some(path),
            }
        }
        if !found {
            empty.push(url);
        }
        stores.push(store);
    }
    let nothing = match &wanted_folder {
        Some(f) => format!("no segment found under {f}/segments/"),
        None => "no segment found (expected <tenant>/<environment>/segments/…)".into(),
    };
    if logs.is_empty() {
        for url in empty {
            report.failures.push(Failure {
                origin: options.origin.clone().unwrap_or_default(),
                range: None,
                path: url.to_owned(),
                reason: nothing.clone(),
            });
        }
        report.seconds = started.elapsed().as_secs_f64();
        return Ok(report);
    }
    // A tier may be empty while the others hold the log (everything moved on, or not yet).
    for url in empty {
        report.notes.push(format!("{url}: {nothing}"));
    }

    let work: Vec<(String, (u64, u64), usize, Files)> = logs
        .into_iter()
        .flat_map(|(folder, ranges)| {
            ranges
                .into_iter()
                .map(move |((range, tier), files)| (folder.clone(), range, tier, files))
        })
        .collect();
    let bar = if options.progress && std::io::stderr().is_terminal() {
        let bar = indicatif::ProgressBar::new(work.len() as u64);
        if let Ok(style) = indicatif::ProgressStyle::with_template(
            "{spinner} {pos}/{len} segments [{bar:40}] {per_sec} {eta} {msg}",
        ) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar
    } else {
        indicatif::ProgressBar::hidden()
    };
    let threads = options
        .threads
        .filter(|&n| n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .map_err(|e| ArchiveError::Runtime {
            url: joined.clone(),
            reason: format!("starting {threads} worker threads: {e}"),
        })?;
    let handle = runtime.handle().clone();
    let stores = Arc::new(stores);
    let checked: Vec<Checked> = pool.install(|| {
        work.into_par_iter()
            .map(|(folder, (start, end), tier, files)| {
                let mut result = handle.block_on(check_segment(
                    &stores[tier],
                    &options.keys,
                    options.origin.as_deref(),
                    &folder,
                    start,
                    end,
                    &files,
                ));
                result.tier = tier;
                if urls.len() > 1 {
                    for f in &mut result.failures {
                        f.path = tier_path(urls, tier, &f.path);
                    }
                }
                bar.inc(1);
                result
            })
            .collect()
    });
    bar.finish_and_clear();

    let mut by_folder: BTreeMap<String, Vec<Checked>> = BTreeMap::new();
    for c in checked {
        by_folder.entry(c.folder.clone()).or_default().push(c);
    }
    for (folder, segments) in by_folder {
        let log = check_log(&folder, segments, urls, options, &mut report);
        report.logs.push(log);
    }
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

/// A path as named in failures: prefixed with its tier's URL when several are verified.
fn tier_path(urls: &[String], tier: usize, path: &str) -> String {
    if urls.len() > 1 {
        format!("{}: {path}", urls[tier])
    } else {
        path.to_owned()
    }
}

/// Joins the per-segment results of one log: one origin, contiguous ranges, the anchor chain.
fn check_log(
    folder: &str,
    mut segments: Vec<Checked>,
    urls: &[String],
    options: &ArchiveOptions,
    report: &mut ArchiveReport,
) -> LogReport {
    segments.sort_by_key(|c| (c.start, c.end, c.tier));
    // The log's origin: the one required, else the most common among the manifests.
    let origin = options.origin.clone().unwrap_or_else(|| {
        let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
        for c in &segments {
            if let Some(o) = &c.origin {
                *counts.entry(o.as_str()).or_default() += 1;
            }
        }
        counts
            .into_iter()
            .max_by_key(|(_, n)| *n)
            .map_or_else(|| folder.to_owned(), |(o, _)| o.to_owned())
    });
    let mut log = LogReport {
        origin: origin.clone(),
        folder: folder.to_owned(),
        first_leaf: segments.first().map_or(0, |c| c.start),
        ..LogReport::default()
    };
    let path_of = |c: &Checked, ext: &str| {
        tier_path(
            urls,
            c.tier,
            &format!("{folder}/segments/{}-{}.{ext}", c.start, c.end),
        )
    };
    let mut previous: Option<&Checked> = None;
    // The segment before `previous`: a copy of `previous`'s range in another tier chains to it.
    let mut before_previous: Option<&Checked> = None;
    for c in &segments {
        let fail = |reason: String| Failure {
            origin: origin.clone(),
            range: Some((c.start, c.end)),
            path: path_of(c, "parquet"),
            reason,
        };
        report.failures.extend(c.failures.iter().cloned());
        report.notes.extend(c.notes.iter().cloned());
        if let Some(p) = previous
            && (p.start, p.end) == (c.start, c.end)
            && p.tier != c.tier
        {
            // The same range in another tier: its origin and chain must hold as well.
            if let Some(o) = &c.origin
                && *o != origin
            {
                report.failures.push(fail(format!(
                    "the segment belongs to origin {o:?}, the other segments of {folder} to {origin:?} (mixed in from another log?)"
                )));
            }
            if let (Some(anchor), Some(prev)) = (
                &c.anchor,
                before_previous.and_then(|b| b.anchor.as_ref().filter(|_| b.end == c.start)),
            ) && let Err(e) = anchor.verify_chain(prev)
            {
                report.failures.push(Failure {
                    path: path_of(c, "anchor"),
                    ..fail(format!(
                        "does not chain to the previous segment's anchor: {e}"
                    ))
                });
            }
            if c.anchor.is_none() && c.failures.is_empty() && !options.allow_unanchored {
                report.failures.push(Failure {
                    path: path_of(c, "anchor"),
                    ..fail(
                        "no anchor: nothing links this copy of the segment to a signed checkpoint"
                            .into(),
                    )
                });
            }
            continue;
        }
        if let Some(o) = &c.origin
            && *o != origin
        {
            report.failures.push(fail(format!(
                "the segment belongs to origin {o:?}, the other segments of {folder} to {origin:?} (mixed in from another log?)"
            )));
        }
        if let Some(p) = previous {
            if c.start > p.end {
                report.failures.push(Failure {
                    origin: origin.clone(),
                    range: Some((p.end, c.start)),
                    path: format!("{folder}/segments/"),
                    reason: format!(
                        "gap: no segment holds leaves [{}, {}) between [{}, {}) and [{}, {})",
                        p.end, c.start, p.start, p.end, c.start, c.end
                    ),
                });
            } else if c.start < p.end {
                report.failures.push(fail(format!(
                    "overlaps the segment [{}, {})",
                    p.start, p.end
                )));
            }
        }
        match (&c.anchor, previous.and_then(|p| p.anchor.as_ref())) {
            (Some(anchor), Some(prev)) if previous.is_some_and(|p| p.end == c.start) => {
                if let Err(e) = anchor.verify_chain(prev) {
                    report.failures.push(Failure {
                        path: path_of(c, "anchor"),
                        ..fail(format!(
                            "does not chain to the previous segment's anchor: {e}"
                        ))
                    });
                }
            }
            (Some(anchor), _) if previous.is_none() => {
                log.chained_from = anchor.anchor.previous_size;
            }
            _ => {}
        }
        if c.anchor.is_none() && c.failures.is_empty() {
            if options.allow_unanchored {
                log.unanchored += 1;
            } else {
                report.failures.push(Failure {
                    path: path_of(c, "anchor"),
                    ..fail(
                        "no anchor: nothing links this segment to a signed checkpoint \
                         (archived before anchors? run the archiver to write them, or pass \
                         --allow-unanchored)"
                            .into(),
                    )
                });
            }
        }
        if let Some(anchor) = &c.anchor {
            let size = anchor.checkpoint.tree_size;
            if log
                .highest_checkpoint
                .as_ref()
                .is_none_or(|(s, _)| size > *s)
            {
                log.highest_checkpoint = Some((size, hex::encode(anchor.checkpoint.root_hash)));
            }
        }
        log.segments += 1;
        log.leaves += c.end - c.start;
        log.expired_leaves += c.expired_leaves;
        log.end_leaf = log.end_leaf.max(c.end);
        before_previous = previous;
        previous = Some(c);
    }
    log
}

/// Verifies one segment range: manifests, objects, anchor.
async fn check_segment(
    store: &SegmentStore,
    keys: &[VerifierKey],
    required_origin: Option<&str>,
    folder: &str,
    start: u64,
    end: u64,
    files: &Files,
) -> Checked {
    let mut out = Checked {
        tier: 0,
        folder: folder.to_owned(),
        start,
        end,
        origin: None,
        expired_leaves: 0,
        anchor: None,
        failures: Vec::new(),
        notes: Vec::new(),
    };
    let label = |origin: &Option<String>| origin.clone().unwrap_or_else(|| folder.to_owned());
    let fail = |out: &mut Checked, path: &str, reason: String| {
        out.failures.push(Failure {
            origin: label(&out.origin),
            range: Some((start, end)),
            path: path.to_owned(),
            reason,
        });
    };
    if files.manifests.is_empty() {
        let path = files
            .objects
            .iter()
            .next()
            .cloned()
            .unwrap_or_else(|| format!("{folder}/segments/{start}-{end}.manifest"));
        fail(
            &mut out,
            &path,
            "no manifest: nothing pins this segment's content".into(),
        );
        return out;
    }
    let mut root = None;
    let mut pinned_objects = BTreeSet::new();
    for manifest_path in &files.manifests {
        let note = match get(store, manifest_path).await {
            Ok(n) => n,
            Err(e) => {
                fail(&mut out, manifest_path, e.to_string());
                continue;
            }
        };
        let verified = match manifest::open(&note, keys) {
            Ok(v) => v,
            Err(e) => {
                fail(&mut out, manifest_path, e.to_string());
                continue;
            }
        };
        let m = verified.manifest;
        if out.origin.is_none() {
            out.origin = Some(m.origin.clone());
        }
        if let Some(required) = required_origin
            && m.origin != required
        {
            fail(
                &mut out,
                manifest_path,
                format!(
                    "the manifest is for origin {:?}, expected {required:?}",
                    m.origin
                ),
            );
            continue;
        }
        if folder_of(&m.origin).as_deref() != Some(folder) {
            fail(
                &mut out,
                manifest_path,
                format!(
                    "the manifest is for origin {:?}, which does not live in {folder}/ (copied from another log?)",
                    m.origin
                ),
            );
            continue;
        }
        if (m.start, m.end) != (start, end) {
            fail(
                &mut out,
                manifest_path,
                format!(
                    "the manifest is for leaves [{}, {}), its file name says [{start}, {end})",
                    m.start, m.end
                ),
            );
            continue;
        }
        let expected_manifest = Path::parse(&m.object_path)
            .ok()
            .and_then(|p| manifest_path_for(&p).ok());
        if expected_manifest.as_ref().map(Path::as_ref) != Some(manifest_path.as_str()) {
            fail(
                &mut out,
                manifest_path,
                format!(
                    "the manifest pins object {}, which does not go with this manifest",
                    m.object_path
                ),
            );
            continue;
        }
        if root.is_some_and(|r| r != m.segment_root) {
            fail(
                &mut out,
                manifest_path,
                "another version of this segment's manifest has a different root".into(),
            );
            continue;
        }
        root = Some(m.segment_root);
        pinned_objects.insert(m.object_path.clone());
        let object = match get(store, &m.object_path).await {
            Ok(o) => o,
            Err(e) => {
                fail(&mut out, &m.object_path, e.to_string());
                continue;
            }
        };
        if let Err(e) = m.check_object(&object) {
            fail(&mut out, &m.object_path, e.to_string());
            continue;
        }
        let id = match SegmentId::from_range(m.origin.as_str(), start, end) {
            Ok(id) => id,
            Err(e) => {
                fail(&mut out, manifest_path, e.to_string());
                continue;
            }
        };
        let verified = match SegmentReader::from_bytes(object, &id).await {
            Ok(reader) => reader.verify(&m.segment_root).await,
            Err(e) => Err(e),
        };
        match verified {
            Ok(v) if v.expired_leaves != m.expired_leaves => fail(
                &mut out,
                &m.object_path,
                format!(
                    "{} rows without content, the manifest says {}",
                    v.expired_leaves, m.expired_leaves
                ),
            ),
            Ok(v) => out.expired_leaves = out.expired_leaves.max(v.expired_leaves),
            Err(e) => fail(&mut out, &m.object_path, e.to_string()),
        }
    }
    for object in files.objects.difference(&pinned_objects) {
        out.notes.push(format!(
            "{object}: no manifest pins this object (left by an interrupted archiver run?); ignored"
        ));
    }
    let (Some(anchor_path), Some(root)) = (&files.anchor, root) else {
        return out;
    };
    let anchor = match get(store, anchor_path).await {
        Ok(a) => a,
        Err(e) => {
            fail(&mut out, anchor_path, e.to_string());
            return out;
        }
    };
    let verified = SegmentAnchor::parse(&anchor).and_then(|a| {
        let mismatch = (a.start, a.end) != (start, end)
            || Some(&a.origin) != out.origin.as_ref()
            || a.segment_root != root;
        if mismatch {
            return Err(auditledger_archiver::anchor::AnchorError::Mismatch(format!(
                "it is for {} [{}, {}) with root {}, the manifest for {} [{start}, {end}) with root {}",
                a.origin,
                a.start,
                a.end,
                hex::encode(a.segment_root),
                out.origin.as_deref().unwrap_or(""),
                hex::encode(root)
            )));
        }
        a.verify(keys)
    });
    match verified {
        Ok(v) => out.anchor = Some(v),
        Err(e) => fail(&mut out, anchor_path, e.to_string()),
    }
    out
}

async fn get(store: &SegmentStore, path: &str) -> Result<Bytes, StoreError> {
    let path = Path::parse(path).map_err(|e| StoreError::BadName {
        part: path.to_owned(),
        reason: e.to_string(),
    })?;
    store.get(&path).await
}

/// Flags of `auditledger-verify archive`.
#[derive(Debug, clap::Args)]
pub struct ArchiveArgs {
    /// The tier: a directory, `file:///abs/path`, or `s3://bucket/prefix` (endpoint and
    /// credentials from AWS_ENDPOINT, AWS_REGION, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
    /// AWS_ALLOW_HTTP). Give several (e.g. the cold and the warm tier) to verify them as one
    /// archive, including the anchor link where one tier ends and the next begins.
    #[arg(required = true, num_args = 1..)]
    pub urls: Vec<String>,
    /// Trusted verifier key `name+hexid+base64`; repeat for several (any one suffices).
    #[arg(long = "key", required = true)]
    pub keys: Vec<String>,
    /// Verify only this log, e.g. `auditledger.local/acme/prod`.
    #[arg(long)]
    pub origin: Option<String>,
    /// Worker threads (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Accept segments that have no anchor (archived by a version before anchors).
    #[arg(long)]
    pub allow_unanchored: bool,
}

impl ArchiveArgs {
    /// Runs the verification and prints the verdict: one `OK:` line per log on stdout, or
    /// one `FAILED:` line per problem on stderr and an error naming the first.
    pub fn run(self) -> anyhow::Result<()> {
        let keys = self
            .keys
            .iter()
            .map(|k| VerifierKey::parse(k))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| anyhow::anyhow!("parsing --key: {e}"))?;
        let options = ArchiveOptions {
            keys,
            origin: self.origin,
            threads: self.threads,
            allow_unanchored: self.allow_unanchored,
            progress: true,
            store: StoreOptions::default(),
        };
        let report = verify_archives(&self.urls, &options)?;
        for note in &report.notes {
            eprintln!("note: {note}");
        }
        if let Some(first) = report.failures.first() {
            for failure in &report.failures {
                eprintln!("FAILED: {failure}");
            }
            anyhow::bail!(
                "archive {}: {} problem(s); the first: {first}",
                report.url,
                report.failures.len()
            );
        }
        let mut leaves = 0;
        for log in &report.logs {
            leaves += log.leaves;
            let anchored = match &log.highest_checkpoint {
                Some((size, root)) => format!(
                    "anchored up to checkpoint tree size {size} (root {root}){}",
                    if log.chained_from > 0 {
                        format!(
                            ", chained from tree size {} in another tier",
                            log.chained_from
                        )
                    } else {
                        String::new()
                    }
                ),
                None => "no anchors".into(),
            };
            let unanchored = if log.unanchored > 0 {
                format!(", {} segment(s) without an anchor", log.unanchored)
            } else {
                String::new()
            };
            println!(
                "OK: {} ({}): {} segment(s), leaves [{}, {}), {} leaves ({} expired){unanchored}; {anchored}",
                log.origin,
                log.folder,
                log.segments,
                log.first_leaf,
                log.end_leaf,
                log.leaves,
                log.expired_leaves
            );
        }
        println!(
            "verified {} log(s), {leaves} leaves in {:.2} s ({:.0} leaves/s)",
            report.logs.len(),
            report.seconds,
            leaves as f64 / report.seconds.max(1e-9)
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_names() {
        assert_eq!(
            classify("acme/prod/segments/0-256.parquet"),
            Some(("acme/prod".into(), (0, 256), "parquet"))
        );
        assert_eq!(
            classify("acme/prod/segments/256-512.anchor"),
            Some(("acme/prod".into(), (256, 512), "anchor"))
        );
        assert_eq!(
            classify("_system/prod/segments/256-512.expired/17.manifest"),
            Some(("_system/prod".into(), (256, 512), "manifest"))
        );
        assert_eq!(
            classify("acme/prod/segments/256-512.expired/017.manifest"),
            None
        );
        assert_eq!(classify("acme/prod/segments/0256-512.parquet"), None);
        assert_eq!(classify("acme/prod/other/0-256.parquet"), None);
        assert_eq!(classify("acme/prod/segments/0-256.tmp"), None);
        assert_eq!(
            folder_of("auditledger.local/acme/prod").as_deref(),
            Some("acme/prod")
        );
        assert_eq!(folder_of("acme/prod"), None);
    }
}
