//! The push pipeline: closure → what the cache lacks → NAR stream → hash, compress, upload →
//! signed narinfo.
//!
//! Two invariants make a cache safe to read at any moment, also with many pushers at once:
//! a NAR object is keyed by its NarHash and only becomes visible whole (the backend's commit),
//! and a narinfo is written only after its NAR and after the narinfos of all its references.

pub mod encode;
pub mod job;
pub mod logs;
pub mod progress;
pub mod realisations;
pub mod select;
pub mod usage;

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::Value;
use tokio::sync::{Semaphore, watch};

use crate::cache::{Cache, CacheError, ObjectWriter};
use crate::nix::hash::Sha256Writer;
use crate::nix::layout::{self, HashPart};
use crate::nix::{Compression, NarInfo, SecretKey, Sha256, StorePath};
use crate::store::PathInfo;
use encode::Encoder;
pub use progress::{ProgressMode, count, human_bytes};

/// How many narinfo reads the plan keeps in flight. A no-op push is nothing but these, so
/// they set its time at a distant bucket: 600 paths at 40 ms are three round trips.
const PLAN_CONCURRENCY: usize = 256;

/// Requests in flight for small paths (their NAR PUTs and every narinfo PUT), whatever
/// `--jobs` is: at a distant bucket a small path costs round trips, not CPU.
const REQUESTS_IN_FLIGHT: usize = 64;

/// A NAR up to this size is compressed into memory and sent in one request outside the
/// `--jobs` bound (which is for reading, compressing and streaming large paths).
const ONE_REQUEST_NAR_MAX: u64 = 1 << 20;

/// NAR bytes of small paths in flight at once (read, compressed or being sent), in KiB: bounds
/// their memory whatever their count.
const SMALL_BYTES_IN_FLIGHT_KIB: u32 = 32 << 10;

#[derive(Clone, Debug)]
pub struct PushOptions {
    pub compression: Compression,
    pub tuning: encode::Tuning,
    /// Write `<hash>.ls` beside each NAR pushed, as Nix's `write-nar-listing` does.
    pub nar_listing: bool,
    pub jobs: usize,
    pub signing_key: Option<Arc<SecretKey>>,
    pub progress: ProgressMode,
    /// Set (by a signal handler, say) to stop: no new path starts, NAR streams in flight are
    /// aborted, and no further narinfo is written.
    pub cancel: Arc<AtomicBool>,
}

#[derive(Debug, thiserror::Error)]
pub enum PushError {
    #[error(transparent)]
    Cache(#[from] CacheError),
    #[error(transparent)]
    Corrupt(Box<Corruption>),
    #[error("could not read {path}: {source}")]
    Nar {
        path: StorePath,
        source: crate::nix::nar::NarError,
    },
    #[error("could not compress the NAR of {path}: {source}")]
    Compress {
        path: StorePath,
        source: std::io::Error,
    },
    #[error("not pushed because its reference {reference} could not be pushed")]
    ReferenceFailed { reference: StorePath },
    #[error("an upload worker stopped unexpectedly: {0}")]
    Worker(String),
    #[error("interrupted before it was pushed")]
    Cancelled,
}

/// A store path whose contents no longer hash to what Nix recorded.
#[derive(Debug, thiserror::Error)]
#[error(
    "{path} does not match what the Nix store recorded (expected {expected_hash}, {expected_size} bytes; read {actual_hash}, {actual_size} bytes): the store path is corrupt; nothing of it was uploaded (repair it with `nix-store --repair-path {path}`)"
)]
pub struct Corruption {
    pub path: StorePath,
    pub expected_hash: Sha256,
    pub expected_size: u64,
    pub actual_hash: Sha256,
    pub actual_size: u64,
}

/// Which paths of a closure the cache still lacks.
#[derive(Debug, Default)]
pub struct Plan {
    pub missing: Vec<PathInfo>,
    pub present: Vec<PathInfo>,
    /// Paths whose narinfo exists but is unusable (does not parse, or describes another
    /// path), with why. They are in `missing`: pushing them overwrites the bad narinfo.
    pub unusable: Vec<(StorePath, String)>,
}

impl Plan {
    pub fn missing_nar_bytes(&self) -> u64 {
        self.missing.iter().map(|p| p.nar_size).sum()
    }
}

/// One path that landed in the cache.
#[derive(Clone, Debug)]
pub struct Pushed {
    pub path: StorePath,
    pub nar_size: u64,
    pub file_size: u64,
    /// The NAR object was already there (an interrupted or concurrent push) and was reused.
    pub reused_nar: bool,
    pub elapsed: Duration,
    /// Why the NAR listing asked for did not go up. The path is in the cache all the same:
    /// Nix reads no listing, so this fails neither the path nor those that need it.
    pub listing_failed: Option<String>,
}

#[derive(Debug, Default)]
pub struct PushReport {
    pub pushed: Vec<Pushed>,
    pub already_present: usize,
    pub failed: Vec<(StorePath, PushError)>,
    pub elapsed: Duration,
    /// Why this job's usage record could not be written, if it could not: gc may then count
    /// the job's paths as unused.
    pub usage_unrecorded: Option<usage::UsageError>,
    /// The build logs, when they were pushed.
    pub logs: Option<logs::LogReport>,
    /// Realisations of content-addressed outputs uploaded.
    pub realisations: usize,
}

impl PushReport {
    pub fn nar_bytes(&self) -> u64 {
        self.pushed.iter().map(|p| p.nar_size).sum()
    }
    pub fn file_bytes(&self) -> u64 {
        self.pushed.iter().map(|p| p.file_size).sum()
    }
    /// One line for the end of a CI log.
    pub fn summary(&self, compression: &Compression) -> String {
        let mut line = format!(
            "pushed {} ({} NAR, {} as {}) in {:.1}s; {} already in the cache",
            count(self.pushed.len(), "path"),
            human_bytes(self.nar_bytes()),
            human_bytes(self.file_bytes()),
            compression.as_str(),
            self.elapsed.as_secs_f64(),
            self.already_present,
        );
        let cancelled = self.cancelled();
        if cancelled > 0 {
            line.push_str(&format!("; interrupted, {cancelled} not pushed"));
        }
        if self.failed.len() > cancelled {
            line.push_str(&format!("; {} FAILED", self.failed.len() - cancelled));
        }
        if self.usage_unrecorded.is_some() {
            line.push_str("; usage record NOT written");
        }
        if let Some(logs) = &self.logs {
            line.push_str("; ");
            line.push_str(&logs.summary());
        }
        if self.realisations > 0 {
            line.push_str(&format!("; {} realisations", self.realisations));
        }
        line
    }

    /// Paths left out because the push was interrupted.
    pub fn cancelled(&self) -> usize {
        self.failed
            .iter()
            .filter(|(_, e)| matches!(e, PushError::Cancelled))
            .count()
    }
}

/// Asks the cache which narinfos exist, many requests at once. A narinfo is read, not just
/// checked for existence: one that Nix could not use (garbage, or another path's) must not
/// keep its path from being pushed, or the cache would stay broken for that path forever.
/// A GET of a small object costs the same request as a HEAD.
pub async fn plan(cache: &Cache, closure: Vec<PathInfo>) -> Result<Plan, PushError> {
    let checks = futures::stream::iter(closure.into_iter().map(|info| {
        let cache = cache.clone();
        async move {
            let key = layout::narinfo_key(&info.path);
            let state = match cache.get(&key).await? {
                None => Ok(false),
                Some(bytes) => match layout::read_narinfo(&bytes, Some(HashPart::of(&info.path))) {
                    Ok(found) if found.path == info.path => Ok(true),
                    Ok(found) => Err(format!("{key} describes {}", found.path)),
                    Err(layout::ReadError::OtherPath(p)) => Err(format!("{key} describes {p}")),
                    Err(e) => Err(format!("{key} is not a valid narinfo: {e}")),
                },
            };
            Ok::<_, CacheError>((info, state))
        }
    }))
    .buffer_unordered(PLAN_CONCURRENCY);
    let results: Vec<_> = checks.collect().await;
    let mut plan = Plan::default();
    for result in results {
        match result? {
            (info, Ok(true)) => plan.present.push(info),
            (info, Ok(false)) => plan.missing.push(info),
            (info, Err(why)) => {
                plan.unusable.push((info.path.clone(), why));
                plan.missing.push(info);
            }
        }
    }
    plan.missing.sort_by(|a, b| {
        b.nar_size
            .cmp(&a.nar_size)
            .then_with(|| a.path.cmp(&b.path))
    });
    plan.present.sort_by(|a, b| a.path.cmp(&b.path));
    plan.unusable.sort();
    Ok(plan)
}

/// Writes `nix-cache-info` unless the cache already has one.
pub async fn ensure_cache_info(cache: &Cache) -> Result<(), PushError> {
    if cache.head(layout::CACHE_INFO_KEY).await?.is_none() {
        cache
            .put_if_absent(
                layout::CACHE_INFO_KEY,
                layout::CACHE_INFO.into(),
                layout::CACHE_INFO_TYPE,
            )
            .await?;
    }
    Ok(())
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Landed {
    Pending,
    Yes,
    No,
}

/// Uploads every missing path of `plan`: NARs largest first, `jobs` at a time; each narinfo as
/// soon as its NAR and its references' narinfos are in. A failed path fails only the paths that
/// reference it; everything else still lands.
pub async fn execute(
    cache: &Cache,
    plan: Plan,
    opts: &PushOptions,
) -> Result<PushReport, PushError> {
    let started = Instant::now();
    let already_present = plan.present.len();
    let total_bytes = plan.missing_nar_bytes();
    let progress = progress::Progress::start(opts.progress, plan.missing.len() as u64, total_bytes);
    let counters = progress.counters();
    if !plan.missing.is_empty() {
        ensure_cache_info(cache).await?;
    }

    let mut senders = HashMap::new();
    let mut receivers = HashMap::new();
    for info in &plan.missing {
        let (tx, rx) = watch::channel(Landed::Pending);
        senders.insert(info.path.clone(), tx);
        receivers.insert(info.path.clone(), rx);
    }
    let limits = Arc::new(Limits::new(opts.jobs));
    let mut tasks = tokio::task::JoinSet::new();
    let unusable: HashSet<StorePath> = plan.unusable.into_iter().map(|(p, _)| p).collect();
    for info in plan.missing {
        let overwrite = unusable.contains(&info.path);
        let landed = senders.remove(&info.path).expect("one sender per path");
        let waits: Vec<_> = info
            .references
            .iter()
            .filter(|r| **r != info.path)
            .filter_map(|r| receivers.get(r).map(|rx| (r.clone(), rx.clone())))
            .collect();
        let (cache, opts, limits, counters) = (
            cache.clone(),
            opts.clone(),
            limits.clone(),
            counters.clone(),
        );
        tasks.spawn(async move {
            let path = info.path.clone();
            let result = through_outages(&path, &opts.cancel, || {
                push_one(
                    &cache,
                    info.clone(),
                    waits.clone(),
                    overwrite,
                    &opts,
                    &limits,
                    &counters,
                )
            })
            .await;
            landed.send_replace(if result.is_ok() {
                Landed::Yes
            } else {
                Landed::No
            });
            counters.paths_done.fetch_add(1, Ordering::Relaxed);
            (path, result)
        });
    }
    drop(receivers);

    let mut report = PushReport {
        already_present,
        ..Default::default()
    };
    while let Some(joined) = tasks.join_next().await {
        let (path, result) = joined.map_err(|e| PushError::Worker(e.to_string()))?;
        match result {
            Ok(pushed) => report.pushed.push(pushed),
            Err(err) => {
                // A reference's failure is reported once, at the reference.
                if !matches!(
                    err,
                    PushError::ReferenceFailed { .. } | PushError::Cancelled
                ) {
                    progress.println(&format!("error: {path}: {err}"));
                }
                report.failed.push((path, err));
            }
        }
    }
    progress.finish();
    report.pushed.sort_by(|a, b| a.path.cmp(&b.path));
    report.failed.sort_by(|a, b| a.0.cmp(&b.0));
    report.elapsed = started.elapsed();
    Ok(report)
}

/// `overwrite`: the narinfo there is unusable and is replaced; otherwise one that another
/// pusher wrote since the plan is kept (a conditional write, where the store has them).
/// Pauses before a path is tried again after the store did not answer, each longer. Every
/// attempt carries the store client's own retries (about a minute of backoff), so with these a
/// push rides out more than a minute of a store that is down, at no cost when it is up.
const OUTAGE_PAUSES: [Duration; 3] = [
    Duration::from_secs(5),
    Duration::from_secs(10),
    Duration::from_secs(20),
];

/// `attempt` (a [`push_one`] of `path`), again after a pause when it failed because the store
/// was unreachable or briefly unable to answer. Trying a path again is safe: nothing of a
/// failed attempt is visible (NARs and narinfos are written only whole, and only if absent).
async fn through_outages<F, Fut>(
    path: &StorePath,
    cancel: &AtomicBool,
    mut attempt: F,
) -> Result<Pushed, PushError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Pushed, PushError>>,
{
    let mut pauses = OUTAGE_PAUSES.iter();
    loop {
        match attempt().await {
            Err(PushError::Cache(err)) if err.is_outage() => {
                let Some(pause) = pauses.next() else {
                    return Err(PushError::Cache(err));
                };
                eprintln!(
                    "{path}: the cache did not answer ({err}); trying the path again in {}s",
                    pause.as_secs()
                );
                let until = Instant::now() + *pause;
                while Instant::now() < until {
                    if cancel.load(Ordering::Relaxed) {
                        return Err(PushError::Cancelled);
                    }
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
            }
            result => return result,
        }
    }
}

/// What bounds a push's work in flight: paths read and compressed as streams (`--jobs`),
/// requests for small paths and narinfos, and the bytes of small NARs held in memory.
struct Limits {
    streams: Semaphore,
    /// Small NARs being compressed: CPU work, and each compressor holds tables of up to a few
    /// MiB, so one per core.
    small_encoders: Semaphore,
    requests: Semaphore,
    small_bytes: Semaphore,
}

impl Limits {
    fn new(jobs: usize) -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Limits {
            streams: Semaphore::new(jobs.max(1)),
            small_encoders: Semaphore::new(cores),
            requests: Semaphore::new(REQUESTS_IN_FLIGHT),
            small_bytes: Semaphore::new(SMALL_BYTES_IN_FLIGHT_KIB as usize),
        }
    }
}

fn closed(e: tokio::sync::AcquireError) -> PushError {
    PushError::Worker(e.to_string())
}

async fn push_one(
    cache: &Cache,
    info: PathInfo,
    waits: Vec<(StorePath, watch::Receiver<Landed>)>,
    overwrite: bool,
    opts: &PushOptions,
    limits: &Limits,
    counters: &Arc<progress::Counters>,
) -> Result<Pushed, PushError> {
    let started = Instant::now();
    let key = layout::nar_key(&info.nar_hash, &opts.compression);
    let cancelled = || opts.cancel.load(Ordering::Relaxed);
    let (file_hash, file_size, reused_nar, listing) = if info.nar_size <= ONE_REQUEST_NAR_MAX {
        put_small_nar(cache, &key, &info, opts, limits, counters).await?
    } else {
        let _slot = limits.streams.acquire().await.map_err(closed)?;
        if cancelled() {
            return Err(PushError::Cancelled);
        }
        match reuse_nar(cache, &key).await? {
            Some(size) => {
                counters
                    .nar_bytes
                    .fetch_add(info.nar_size, Ordering::Relaxed);
                (None, size, true, None)
            }
            None => {
                let (hash, size, listing) = upload_nar(cache, &key, &info, opts, counters).await?;
                (hash, size, false, listing)
            }
        }
    };
    // Where "only if absent" costs a HEAD before the PUT, the HEAD goes now, while the
    // references land, so that each layer of the closure waits for one round trip, not two.
    let theirs_there = if !overwrite && !cache.writes_if_absent() {
        let _request = limits.requests.acquire().await.map_err(closed)?;
        Some(
            cache
                .head(&layout::narinfo_key(&info.path))
                .await?
                .is_some(),
        )
    } else {
        None
    };
    for (reference, mut rx) in waits {
        let state = *rx
            .wait_for(|s| *s != Landed::Pending)
            .await
            .map_err(|e| PushError::Worker(e.to_string()))?;
        if state == Landed::No {
            return Err(PushError::ReferenceFailed { reference });
        }
    }
    if cancelled() {
        return Err(PushError::Cancelled);
    }

    let mut narinfo = NarInfo {
        info: info.clone(),
        url: key,
        compression: opts.compression.clone(),
        file_hash,
        file_size: Some(file_size),
    };
    let mut ours_there = false;
    if theirs_there != Some(true) {
        let _request = limits.requests.acquire().await.map_err(closed)?;
        ours_there = put_narinfo(
            cache,
            &mut narinfo,
            overwrite || theirs_there.is_some(),
            opts,
        )
        .await?;
    }
    // A gc that listed before the touch may still have deleted the reused NAR; then it goes
    // up again, and the narinfo is rewritten with its hash and size (another compression
    // level gives other bytes under the same name). Whoever's narinfo is there, it names this
    // NAR; and a narinfo that reads as another's may be ours, its first answer lost.
    let mut file_size = file_size;
    if reused_nar && cache.head(&narinfo.url).await?.is_none() {
        let _slot = limits.streams.acquire().await.map_err(closed)?;
        let (hash, size, _) = upload_nar(cache, &narinfo.url, &info, opts, counters).await?;
        (narinfo.file_hash, narinfo.file_size, file_size) = (hash, Some(size), size);
        ours_there = put_narinfo(cache, &mut narinfo, true, opts).await?;
    }
    // The listing describes this push's NAR, so it goes up only under this push's narinfo:
    // a path built twice, not reproducibly, has two NARs, and the narinfo that stays names
    // the first.
    let mut listing_failed = None;
    if opts.nar_listing && ours_there {
        if let Err(err) = put_listing(cache, &info.path, listing).await {
            listing_failed = Some(err.to_string());
        }
    }
    Ok(Pushed {
        path: info.path,
        nar_size: info.nar_size,
        file_size,
        reused_nar,
        elapsed: started.elapsed(),
        listing_failed,
    })
}

/// A small path's NAR: compressed into memory, then one request that writes it only if no
/// object is under `key` yet, without asking first. Where one is (an earlier push that was
/// interrupted, or another pusher), it is kept and touched as a large NAR would be. Returns
/// the file hash (`None` when another's object stayed), the object's size and whether it was
/// reused.
async fn put_small_nar(
    cache: &Cache,
    key: &str,
    info: &PathInfo,
    opts: &PushOptions,
    limits: &Limits,
    counters: &Arc<progress::Counters>,
) -> Result<(Option<Sha256>, u64, bool, Option<Value>), PushError> {
    let kib = info.nar_size.div_ceil(1024).max(1) as u32;
    let _bytes = limits.small_bytes.acquire_many(kib).await.map_err(closed)?;
    if opts.cancel.load(Ordering::Relaxed) {
        return Err(PushError::Cancelled);
    }
    let (owned, opts_owned, counters_owned) = (info.clone(), opts.clone(), counters.clone());
    let encoder = limits.small_encoders.acquire().await.map_err(closed)?;
    let (body, hash, listing) = tokio::task::spawn_blocking(move || {
        encode_small(&owned, &opts_owned, &counters_owned.nar_bytes)
    })
    .await
    .map_err(|e| PushError::Worker(e.to_string()))??;
    drop(encoder);
    let body = bytes::Bytes::from(body);
    let size = body.len() as u64;
    let _request = limits.requests.acquire().await.map_err(closed)?;
    // Twice at most: a NAR found there may be deleted by gc before it is touched.
    for _ in 0..2 {
        if cache
            .put_if_absent(key, body.clone(), layout::NAR_TYPE)
            .await?
        {
            return Ok((Some(hash), size, false, listing));
        }
        if let Some(size) = reuse_nar(cache, key).await? {
            return Ok((None, size, true, listing));
        }
    }
    Err(CacheError::UploadInterrupted {
        key: key.to_owned(),
        detail: "another push's NAR was there when this one was written, and is gone now".into(),
    }
    .into())
}

/// The size of the NAR object already under `key`, if there is one and it could be touched.
/// Content-keyed: an object under this name holds this NAR, whole. It may be an orphan that
/// gc is about to delete; touching it puts it inside gc's grace period.
async fn reuse_nar(cache: &Cache, key: &str) -> Result<Option<u64>, CacheError> {
    match cache.head(key).await? {
        Some(existing) if cache.touch(key, layout::NAR_TYPE, existing.size).await? => {
            Ok(Some(existing.size))
        }
        _ => Ok(None),
    }
}

/// Writes `<hash>.ls`, once this push's narinfo is the one in the cache. A NAR that was
/// already in the cache was not read: then the path is read again for its listing alone.
async fn put_listing(
    cache: &Cache,
    path: &StorePath,
    listing: Option<Value>,
) -> Result<(), PushError> {
    let listing = match listing {
        Some(listing) => listing,
        None => {
            let absolute = PathBuf::from(path.to_absolute());
            let (_, listing) = tokio::task::spawn_blocking(move || {
                crate::nix::nar::dump_path_listed(&absolute, &mut std::io::sink())
            })
            .await
            .map_err(|e| PushError::Worker(e.to_string()))?
            .map_err(|source| PushError::Nar {
                path: path.clone(),
                source,
            })?;
            listing
        }
    };
    cache
        .put(
            &layout::listing_key(path),
            listing.to_string().into(),
            layout::LISTING_TYPE,
        )
        .await?;
    Ok(())
}

/// Signs and writes the narinfo. Unless told to `overwrite`, a narinfo found there (another
/// pusher's) stays. `true`: this one is in the cache now.
async fn put_narinfo(
    cache: &Cache,
    narinfo: &mut NarInfo,
    overwrite: bool,
    opts: &PushOptions,
) -> Result<bool, PushError> {
    if let Some(key) = &opts.signing_key {
        narinfo.sign(key);
    }
    let (key, body) = (
        layout::narinfo_key(&narinfo.path),
        narinfo.to_string().into(),
    );
    let content_type = layout::NARINFO_TYPE;
    if overwrite {
        cache.put(&key, body, content_type).await?;
        Ok(true)
    } else {
        Ok(cache.put_if_absent(&key, body, content_type).await?)
    }
}

/// Streams the path's NAR into the cache under `key`, committed only if no object is there by
/// then: the same NAR from another pusher may be other bytes (another compression level, or
/// multithreaded against single-threaded zstd), and the narinfo that wins must describe the
/// bytes that stay. Returns the file hash (`None` when another's object stayed) and the size
/// of the object under `key`.
async fn upload_nar(
    cache: &Cache,
    key: &str,
    info: &PathInfo,
    opts: &PushOptions,
    counters: &Arc<progress::Counters>,
) -> Result<(Option<Sha256>, u64, Option<Value>), PushError> {
    let writer = cache.writer(key, layout::NAR_TYPE);
    let (info, opts, counters) = (info.clone(), opts.clone(), counters.clone());
    let (hash, landed, listing) =
        tokio::task::spawn_blocking(move || stream_nar(&info, writer, &opts, &counters.nar_bytes))
            .await
            .map_err(|e| PushError::Worker(e.to_string()))??;
    if let Some(size) = landed {
        return Ok((Some(hash), size, listing));
    }
    match cache.head(key).await? {
        Some(theirs) => Ok((None, theirs.size, listing)),
        None => Err(CacheError::UploadInterrupted {
            key: key.to_owned(),
            detail: "another push's NAR was there when this one completed, and is gone now".into(),
        }
        .into()),
    }
}

/// Counts NAR bytes for the progress display as they stream past, and stops the stream when
/// the push is cancelled.
struct Counting<'a, W> {
    inner: W,
    counter: &'a AtomicU64,
    cancel: &'a AtomicBool,
}

impl<W: Write> Write for Counting<'_, W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.cancel.load(Ordering::Relaxed) {
            // Not ErrorKind::Interrupted: `write_all` retries that kind forever, so a
            // cancelled push spun on its largest NAR instead of stopping.
            return Err(std::io::Error::other("the push was interrupted"));
        }
        let n = self.inner.write(buf)?;
        self.counter.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Runs on a blocking thread: store path → NAR → SHA-256 → compress → SHA-256 → upload.
/// The object is committed only if the NAR matches what the store recorded; otherwise the
/// upload is aborted, and waited for: an interrupted push exits right after, and a merely
/// dropped writer would leave the abort (and, on S3, an open multipart upload) to a runtime
/// that is shutting down.
fn stream_nar(
    info: &PathInfo,
    writer: ObjectWriter,
    opts: &PushOptions,
    counter: &AtomicU64,
) -> Result<(Sha256, Option<u64>, Option<Value>), PushError> {
    let path = &info.path;
    let compress_err = |source| PushError::Compress {
        path: path.clone(),
        source,
    };
    let file_hasher = Sha256Writer::new(writer);
    let encoder = Encoder::new(&opts.compression, opts.tuning, info.nar_size, file_hasher)
        .map_err(compress_err)?;
    let mut nar = Sha256Writer::new(Counting {
        inner: encoder,
        counter,
        cancel: &opts.cancel,
    });
    let (dumped, listing) = dump(path, &mut nar, opts.nar_listing);
    if let Some(err) = dump_failed(path, dumped, &opts.cancel) {
        let (counting, _, _) = nar.finish();
        if let Ok(file_hasher) = counting.inner.finish() {
            file_hasher.finish().0.abort();
        }
        return Err(err);
    }
    let (counting, nar_hash, nar_size) = nar.finish();
    let file_hasher = counting.inner.finish().map_err(compress_err)?;
    let (writer, file_hash, _) = file_hasher.finish();
    if let Err(err) = check_recorded(info, nar_hash, nar_size) {
        writer.abort();
        return Err(err);
    }
    let size = writer.commit_if_absent()?;
    Ok((file_hash, size, listing))
}

/// The path's NAR into `out`, and its listing when `listed`.
fn dump<W: Write>(
    path: &StorePath,
    out: &mut W,
    listed: bool,
) -> (Result<u64, crate::nix::nar::NarError>, Option<Value>) {
    let path = PathBuf::from(path.to_absolute());
    if !listed {
        return (crate::nix::nar::dump_path(&path, out), None);
    }
    match crate::nix::nar::dump_path_listed(&path, out) {
        Ok((len, listing)) => (Ok(len), Some(listing)),
        Err(e) => (Err(e), None),
    }
}

/// Runs on a blocking thread: a small path's NAR into memory, checked against what the store
/// recorded, then compressed in one call. Returns the compressed bytes and their hash.
fn encode_small(
    info: &PathInfo,
    opts: &PushOptions,
    counter: &AtomicU64,
) -> Result<(Vec<u8>, Sha256, Option<Value>), PushError> {
    let path = &info.path;
    let mut nar = Sha256Writer::new(Counting {
        inner: Vec::with_capacity(info.nar_size as usize),
        counter,
        cancel: &opts.cancel,
    });
    let (dumped, listing) = dump(path, &mut nar, opts.nar_listing);
    if let Some(err) = dump_failed(path, dumped, &opts.cancel) {
        return Err(err);
    }
    let (counting, nar_hash, nar_size) = nar.finish();
    check_recorded(info, nar_hash, nar_size)?;
    let body = encode::compress_whole(&opts.compression, opts.tuning, &counting.inner).map_err(
        |source| PushError::Compress {
            path: path.clone(),
            source,
        },
    )?;
    let file_hash = Sha256::digest(&body);
    Ok((body, file_hash, listing))
}

/// Why reading a path's NAR stopped early, if it did: an interruption or a read error.
fn dump_failed(
    path: &StorePath,
    dumped: Result<u64, crate::nix::nar::NarError>,
    cancel: &AtomicBool,
) -> Option<PushError> {
    if cancel.load(Ordering::Relaxed) {
        return Some(PushError::Cancelled);
    }
    dumped.err().map(|source| PushError::Nar {
        path: path.clone(),
        source,
    })
}

/// The NAR read must be the one the store recorded, or the store path is corrupt.
fn check_recorded(info: &PathInfo, nar_hash: Sha256, nar_size: u64) -> Result<(), PushError> {
    if nar_hash == info.nar_hash && nar_size == info.nar_size {
        return Ok(());
    }
    Err(PushError::Corrupt(Box::new(Corruption {
        path: info.path.clone(),
        expected_hash: info.nar_hash,
        expected_size: info.nar_size,
        actual_hash: nar_hash,
        actual_size: nar_size,
    })))
}
