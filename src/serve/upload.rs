//! Uploads during the build: the post-build hook hands store paths over, and one background
//! worker pushes their closures with the ordinary push pipeline while Nix goes on building.
//!
//! The queue is bounded: when it is full a hand-over is refused rather than buffered, and the
//! job-end `push`, which diffs the store, uploads those paths instead. Nothing is lost, and the
//! server's memory does not grow with the build.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::cache::Cache;
use crate::nix::StorePath;
use crate::push::select::{self, Filters};
use crate::push::{self, PushOptions};
use crate::store::{self, PathInfo};

use super::stats::UploadSnapshot;

/// Hand-overs (one per built derivation) that may wait before new ones are refused.
const QUEUE_CAPACITY: usize = 4096;

/// How to push what the hook hands over.
#[derive(Clone, Debug)]
pub struct UploadConfig {
    pub options: PushOptions,
    /// Which paths are not ours to push (upstream-signed ones, derivations).
    pub filters: Filters,
}

#[derive(Debug, Default)]
struct Counters {
    received: AtomicU64,
    pending: AtomicU64,
    pushed: AtomicU64,
    pushed_nar_bytes: AtomicU64,
    failed: AtomicU64,
    refused: AtomicU64,
}

/// Why a hand-over was not queued.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EnqueueError {
    #[error("the upload queue is full; `nixbucket push` will upload these paths at the end")]
    Full,
    #[error("the server is shutting down")]
    Closed,
}

/// The background uploader. [`Uploader::shutdown`] stops it.
pub struct Uploader {
    tx: mpsc::Sender<Vec<StorePath>>,
    counters: Arc<Counters>,
    cancel: Arc<std::sync::atomic::AtomicBool>,
    stop: watch::Sender<bool>,
    worker: std::sync::Mutex<Option<JoinHandle<()>>>,
}

impl Uploader {
    /// Starts the worker on the current tokio runtime.
    pub fn start(cache: Cache, config: UploadConfig) -> Uploader {
        let (tx, rx) = mpsc::channel(QUEUE_CAPACITY);
        let counters = Arc::new(Counters::default());
        let cancel = config.options.cancel.clone();
        let (stop, stopped) = watch::channel(false);
        let worker = tokio::spawn(work(cache, config, rx, stopped, counters.clone()));
        Uploader {
            tx,
            counters,
            cancel,
            stop,
            worker: std::sync::Mutex::new(Some(worker)),
        }
    }

    /// Queues `paths` (outputs of one build) without waiting.
    pub fn enqueue(&self, paths: Vec<StorePath>) -> Result<(), EnqueueError> {
        let n = paths.len() as u64;
        // Counted before sending, so `pending` never reads 0 while a hand-over is in flight.
        self.counters.pending.fetch_add(1, Ordering::SeqCst);
        match self.tx.try_send(paths) {
            Ok(()) => {
                self.counters.received.fetch_add(n, Ordering::Relaxed);
                Ok(())
            }
            Err(err) => {
                self.counters.pending.fetch_sub(1, Ordering::SeqCst);
                self.counters.refused.fetch_add(1, Ordering::Relaxed);
                Err(match err {
                    mpsc::error::TrySendError::Full(_) => EnqueueError::Full,
                    mpsc::error::TrySendError::Closed(_) => EnqueueError::Closed,
                })
            }
        }
    }

    pub fn snapshot(&self) -> UploadSnapshot {
        let get = |c: &AtomicU64| c.load(Ordering::SeqCst);
        let c = &self.counters;
        UploadSnapshot {
            enabled: true,
            received: get(&c.received),
            pending: get(&c.pending),
            pushed: get(&c.pushed),
            pushed_nar_bytes: get(&c.pushed_nar_bytes),
            failed: get(&c.failed),
            refused: get(&c.refused),
        }
    }

    /// Stops taking paths and cancels uploads in flight (nothing half-written stays behind),
    /// waiting at most `grace` for the worker to wind down.
    pub async fn shutdown(&self, grace: Duration) {
        self.cancel.store(true, Ordering::Relaxed);
        self.stop.send_replace(true);
        let worker = self.worker.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(worker) = worker {
            let _ = tokio::time::timeout(grace, worker).await;
        }
    }
}

async fn work(
    cache: Cache,
    config: UploadConfig,
    mut rx: mpsc::Receiver<Vec<StorePath>>,
    mut stopped: watch::Receiver<bool>,
    counters: Arc<Counters>,
) {
    loop {
        let first = tokio::select! {
            next = rx.recv() => match next {
                Some(paths) => paths,
                None => return,
            },
            _ = stopped.wait_for(|stop| *stop) => return,
        };
        // Builds finishing close together go up as one push: one store query, one plan.
        let mut roots = first;
        let mut batches = 1;
        while roots.len() < 10_000 {
            match rx.try_recv() {
                Ok(more) => {
                    roots.extend(more);
                    batches += 1;
                }
                Err(_) => break,
            }
        }
        roots.sort();
        roots.dedup();
        let count = roots.len() as u64;
        match push_roots(&cache, &config, roots).await {
            Ok(report) => {
                counters
                    .pushed
                    .fetch_add(report.pushed.len() as u64, Ordering::Relaxed);
                counters
                    .pushed_nar_bytes
                    .fetch_add(report.nar_bytes(), Ordering::Relaxed);
                counters
                    .failed
                    .fetch_add(report.failed.len() as u64, Ordering::Relaxed);
                if !report.pushed.is_empty() || !report.failed.is_empty() {
                    eprintln!(
                        "nixbucket serve: {}",
                        report.summary(&config.options.compression)
                    );
                }
            }
            Err(err) => {
                eprintln!("nixbucket serve: could not upload {count} built paths: {err:#}");
                counters.failed.fetch_add(count, Ordering::Relaxed);
            }
        }
        counters.pending.fetch_sub(batches, Ordering::SeqCst);
    }
}

#[derive(Debug, thiserror::Error)]
enum UploadError {
    #[error(transparent)]
    Store(#[from] store::StoreError),
    #[error(transparent)]
    Push(#[from] push::PushError),
    #[error("the store query stopped unexpectedly: {0}")]
    Worker(String),
}

async fn push_roots(
    cache: &Cache,
    config: &UploadConfig,
    roots: Vec<StorePath>,
) -> Result<push::PushReport, UploadError> {
    let filters = config.filters.clone();
    let closure = tokio::task::spawn_blocking(move || closure_of(&roots, &filters))
        .await
        .map_err(|e| UploadError::Worker(e.to_string()))??;
    let plan = push::plan(cache, closure).await?;
    Ok(push::execute(cache, plan, &config.options).await?)
}

/// The closure of the valid, pushable ones among `roots` (a derivation stands for its
/// outputs); a path the hook named that is not valid (yet, or any more) is left to the job-end
/// push.
fn closure_of(roots: &[StorePath], filters: &Filters) -> Result<Vec<PathInfo>, store::StoreError> {
    let (drvs, mut roots): (Vec<StorePath>, Vec<StorePath>) =
        roots.iter().cloned().partition(StorePath::is_derivation);
    roots.extend(outputs_of(&drvs)?);
    let (keep, _) = select::split_roots(store::query_valid_path_info(&roots)?, filters);
    if keep.is_empty() {
        return Ok(Vec::new());
    }
    let roots: Vec<StorePath> = keep.into_iter().map(|i| i.path).collect();
    let (closure, _) = select::drop_upstream(store::query_path_info(&roots, true)?, filters);
    Ok(closure)
}

/// The output paths of derivations. Nix 2.8 runs the post-build hook with an empty $OUT_PATHS
/// (only $DRV_PATH is set), so the hook may hand over the derivation instead of its outputs.
fn outputs_of(drvs: &[StorePath]) -> Result<Vec<StorePath>, store::StoreError> {
    let mut outputs = Vec::new();
    // One at a time: a derivation that is gone (garbage-collected) fails only itself.
    for drv in drvs {
        let out = store::child_command("nix-store")
            .args(["--query", "--outputs"])
            .arg(drv.to_absolute())
            .output()
            .map_err(store::StoreError::Spawn)?;
        if !out.status.success() {
            continue;
        }
        outputs.extend(
            String::from_utf8_lossy(&out.stdout)
                .split_whitespace()
                .filter_map(|p| StorePath::from_absolute(p).ok()),
        );
    }
    Ok(outputs)
}
