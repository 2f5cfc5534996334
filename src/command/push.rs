//! `nixbucket push`: sign and upload store paths and their closure to a binary cache.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, bail};
use regex::Regex;

use crate::cache::{Cache, CacheUrl, OpenOptions};
use crate::command::signing_key;
use crate::nix::Compression;
use crate::nix::{STORE_DIR, SecretKey, StorePath};
use crate::push::select::{self, Filters, Skipped};
use crate::push::usage::UsageError;
use crate::push::{self, Plan, ProgressMode, PushOptions, PushReport, count, human_bytes};
use crate::state::{self, State};
use crate::store::{self, NixEnv, PathInfo};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The binary cache, in Nix's URL syntax: `s3://BUCKET?region=…&endpoint=…&profile=…`
    /// or `file:///some/dir`.
    #[arg(long, env = "NIXBUCKET_CACHE", value_name = "URL")]
    pub cache: String,
    /// Store paths to push with everything they reference; a `./result` link works too. With
    /// none, what the store gained since `nixbucket setup`.
    #[arg(value_name = "PATHS")]
    pub paths: Vec<PathBuf>,
    /// File holding the secret key to sign with (as written by `nixbucket keygen` or
    /// `nix-store --generate-binary-cache-key`). Without it, the key's text is read from
    /// $NIXBUCKET_SIGNING_KEY.
    #[arg(long, env = "NIXBUCKET_SIGNING_KEY_FILE", value_name = "FILE")]
    pub signing_key_file: Option<PathBuf>,
    /// Push without signing. Nix refuses unsigned paths unless its users turn signature
    /// checks off, so this is only for caches you sign later with `nixbucket sign`.
    #[arg(long)]
    pub unsigned: bool,
    /// How NARs are compressed in the cache [default: the URL's `compression` parameter, else zstd].
    #[arg(long, env = "NIXBUCKET_COMPRESSION", value_enum)]
    pub compression: Option<CompressionArg>,
    /// Compression level (zstd 1–19, default 3; xz 0–9, default 6).
    #[arg(long, value_name = "N")]
    pub compression_level: Option<i32>,
    /// How many paths are read, compressed and uploaded at once.
    #[arg(
        long,
        short = 'j',
        env = "NIXBUCKET_JOBS",
        default_value_t = 8,
        value_name = "N"
    )]
    pub jobs: usize,
    /// Say what would be pushed, and push nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// How to show progress.
    #[arg(long, value_enum, default_value_t = ProgressMode::Auto)]
    pub progress: ProgressMode,
    /// The state `setup` recorded, used when no paths are given [default: as for setup].
    #[arg(long, env = "NIXBUCKET_STATE_FILE", value_name = "FILE")]
    pub state_file: Option<PathBuf>,
    /// Name of a key whose signature means another cache already serves the path, so it is not
    /// pushed (repeatable) [default: every key in Nix's trusted-public-keys except ours].
    #[arg(long = "upstream-key", value_name = "NAME")]
    pub upstream_keys: Vec<String>,
    /// Push paths signed by upstream keys too.
    #[arg(long)]
    pub include_upstream: bool,
    /// Also push the job's new `.drv` files.
    #[arg(long)]
    pub include_derivations: bool,
    /// Push only new paths whose name (after the hash) matches this regular expression.
    #[arg(long, env = "NIXBUCKET_INCLUDE", value_name = "REGEX")]
    pub include: Option<Regex>,
    /// Do not push new paths whose name (after the hash) matches this regular expression.
    #[arg(long, env = "NIXBUCKET_EXCLUDE", value_name = "REGEX")]
    pub exclude: Option<Regex>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum CompressionArg {
    Zstd,
    Xz,
    None,
}

impl From<CompressionArg> for Compression {
    fn from(c: CompressionArg) -> Self {
        match c {
            CompressionArg::Zstd => Compression::Zstd,
            CompressionArg::Xz => Compression::Xz,
            CompressionArg::None => Compression::None,
        }
    }
}

pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let url = super::parse_cache_url(&args.cache)?;
    let compression = resolve_compression(args.compression, &url)?;
    let signing_key = if args.unsigned {
        None
    } else {
        let key = signing_key::load(args.signing_key_file.as_deref())?;
        if key.is_none() && !args.dry_run {
            bail!(
                "no signing key: pass --signing-key-file FILE or set ${}, or --unsigned to push paths \
                 that Nix will refuse until they are signed (create a key with `nixbucket keygen NAME`)",
                signing_key::ENV
            );
        }
        key
    };

    if args.dry_run {
        let (_, plan, skipped, _) =
            prepare(&args, &url, signing_key.as_deref(), OpenOptions::default()).await?;
        for info in &plan.missing {
            println!("would push {} ({})", info.path, human_bytes(info.nar_size));
        }
        for (path, reason) in &skipped {
            println!("skip {path}: {reason}");
        }
        eprintln!(
            "{} ({} NAR) would be pushed; {} already in the cache{}",
            count(plan.missing.len(), "path"),
            human_bytes(plan.missing_nar_bytes()),
            plan.present.len(),
            if signing_key.is_none() {
                "; no signing key given"
            } else {
                ""
            },
        );
        return Ok(ExitCode::SUCCESS);
    }

    let (report, _) = push_job(
        &args,
        &url,
        compression,
        signing_key,
        OpenOptions::default(),
    )
    .await?;
    if report.cancelled() > 0 {
        bail!(
            "interrupted: {} landed whole, {} did not start or were abandoned; run the push again to finish",
            count(report.pushed.len(), "path"),
            report.failed.len()
        );
    }
    if !report.failed.is_empty() {
        bail!(
            "{} of {} could not be pushed (see the errors above); what was pushed is complete and usable",
            report.failed.len(),
            count(report.failed.len() + report.pushed.len(), "path")
        );
    }
    if let Some(err) = &report.usage_unrecorded {
        bail!(
            "every path is in the cache, but this job's usage record could not be written \
             ({err}): `nixbucket gc --older-than` may count these paths as unused; run the push \
             again to record them"
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// The push `run` does once the arguments are resolved, for callers that resolve them
/// differently (the GitHub Action reads its key from an input and may bring OIDC credentials).
/// Paths that fail are in the report, not in the error: the caller decides what they mean.
pub async fn push_job(
    args: &Args,
    url: &CacheUrl,
    compression: Compression,
    signing_key: Option<Arc<SecretKey>>,
    open: OpenOptions,
) -> anyhow::Result<(PushReport, Skipped)> {
    let (cache, plan, skipped, usage_unrecorded) =
        prepare(args, url, signing_key.as_deref(), open).await?;
    let opts = PushOptions {
        compression: compression.clone(),
        level: args.compression_level,
        jobs: args.jobs,
        signing_key,
        progress: args.progress,
        cancel: Arc::new(AtomicBool::new(false)),
    };
    let signals = stop_on_signal(opts.cancel.clone())?;
    let mut report = push::execute(&cache, plan, &opts).await?;
    report.usage_unrecorded = usage_unrecorded;
    signals.abort();
    eprintln!("{}", report.summary(&compression));
    Ok((report, skipped))
}

/// Selects the closure, opens the cache, records the job's usage for gc (the error, if that
/// failed, is handed back rather than stopping the push) and asks the cache what it lacks.
async fn prepare(
    args: &Args,
    url: &CacheUrl,
    signing_key: Option<&SecretKey>,
    open: OpenOptions,
) -> anyhow::Result<(Cache, Plan, Skipped, Option<UsageError>)> {
    let filters = filters(args, signing_key.map(|k| k.name().to_owned()))?;
    // After `setup --serve`: the server's uploads finish first, so the store diff below finds
    // them in the cache; then its counters are read and it is stopped (kept for a dry run).
    if args.paths.is_empty() {
        let (state_file, keep) = (args.state_file.clone(), args.dry_run);
        let served =
            tokio::task::spawn_blocking(move || super::serve::finish(state_file.as_deref(), keep))
                .await
                .ok()
                .flatten();
        if let Some(stats) = served {
            eprintln!("{}", stats.summary());
        }
        let (state_file, keep) = (args.state_file.clone(), args.dry_run);
        let mirror = tokio::task::spawn_blocking(move || finish_mirror(state_file, keep)).await;
        if let Ok(Some(line)) = mirror {
            eprintln!("{line}");
        }
    }
    let (closure, skipped) = {
        let (paths, state_file) = (args.paths.clone(), args.state_file.clone());
        tokio::task::spawn_blocking(move || select_closure(&paths, state_file, &filters))
            .await
            .context("the store query stopped unexpectedly")??
    };
    let cache = super::open_cache(url, open).await?;
    // gc's usage record: before the existence checks, so a concurrent gc keeps these.
    let mut usage_unrecorded = None;
    if !args.dry_run {
        let branch = crate::ci::Branches::detect().current;
        let used = push::usage::record(
            &cache,
            std::time::SystemTime::now(),
            closure.iter().map(|i| &i.path),
            branch.as_deref(),
        );
        if let Err(e) = used.await {
            eprintln!("error: could not record this job's paths for `nixbucket gc`: {e}");
            usage_unrecorded = Some(e);
        }
    }
    let plan = push::plan(&cache, closure).await?;
    for (path, why) in &plan.unusable {
        eprintln!("warning: {why}; pushing {path} again");
    }
    Ok((cache, plan, skipped, usage_unrecorded))
}

/// After a `setup` that restored into a mirror: how much of it the build used, and the mirror
/// removed (kept for a dry run).
pub(crate) fn finish_mirror(state_file: Option<PathBuf>, keep: bool) -> Option<String> {
    let state = State::load(&state_file.unwrap_or_else(state::default_path)).ok()?;
    let dir = state.mirror?;
    let mirrored = crate::restore::mirrored(&dir);
    let used = store::read_store_dir(std::path::Path::new(STORE_DIR)).map(|now| {
        store::added_since(&state.store_paths, &now)
            .iter()
            .filter(|p| mirrored.contains(&p.hash_part()))
            .count()
    });
    let mut line = match used {
        Ok(used) => format!(
            "restore: the build took {used} of the {} paths restored into {}",
            mirrored.len(),
            dir.display()
        ),
        Err(err) => format!(
            "restore: {} paths were restored into {} (how many the build took is unknown: {err})",
            mirrored.len(),
            dir.display()
        ),
    };
    if !keep {
        match crate::restore::remove_mirror(&dir) {
            Ok(true) => line.push_str(" (removed)"),
            Ok(false) => {}
            Err(e) => line.push_str(&format!(" (could not remove it: {e})")),
        }
    }
    Some(line)
}

/// A cancelled CI job gets SIGINT or SIGTERM: stop cleanly, so what landed is whole and a
/// re-run finishes the job.
fn stop_on_signal(cancel: Arc<AtomicBool>) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut int = signal(SignalKind::interrupt()).context("could not watch for SIGINT")?;
    let mut term = signal(SignalKind::terminate()).context("could not watch for SIGTERM")?;
    Ok(tokio::spawn(async move {
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
        eprintln!("interrupted: starting no new paths and abandoning uploads in flight");
        cancel.store(true, Ordering::Relaxed);
    }))
}

/// Upstream keys: as given, else every key Nix trusts except the one we sign with.
fn filters(args: &Args, our_key: Option<String>) -> anyhow::Result<Filters> {
    let upstream_keys = if args.include_upstream {
        Vec::new()
    } else if !args.upstream_keys.is_empty() {
        args.upstream_keys.clone()
    } else {
        let env = NixEnv::detect().context("could not read Nix's trusted-public-keys")?;
        env.trusted_public_keys
            .iter()
            .filter_map(|k| k.split_once(':').map(|(name, _)| name.to_owned()))
            .filter(|name| Some(name) != our_key.as_ref())
            .collect()
    };
    Ok(Filters {
        upstream_keys,
        include_derivations: args.include_derivations,
        include: args.include.clone(),
        exclude: args.exclude.clone(),
    })
}

/// The closure to push and what was left out and why. Named paths: their closure. No paths:
/// what the store gained since `setup`, filtered, and then its closure.
fn select_closure(
    paths: &[PathBuf],
    state_file: Option<PathBuf>,
    filters: &Filters,
) -> anyhow::Result<(Vec<PathInfo>, Skipped)> {
    let mut skipped = Vec::new();
    let roots: Vec<StorePath> = if paths.is_empty() {
        let state_path = state_file.unwrap_or_else(state::default_path);
        let state = State::load(&state_path)?;
        let now = store::read_store_dir(std::path::Path::new(STORE_DIR))?;
        let added = store::added_since(&state.store_paths, &now);
        let (roots, skip) = select::split_roots(store::query_valid_path_info(&added)?, filters);
        skipped.extend(skip);
        roots.into_iter().map(|i| i.path).collect()
    } else {
        paths
            .iter()
            .map(|p| store::resolve_store_path(p))
            .collect::<Result<_, _>>()?
    };
    if roots.is_empty() {
        return Ok((Vec::new(), skipped));
    }
    let (closure, skip) = select::drop_upstream(store::query_path_info(&roots, true)?, filters);
    skipped.extend(skip);
    skipped.sort_by(|a, b| a.0.cmp(&b.0));
    skipped.dedup_by(|a, b| a.0 == b.0);
    Ok((closure, skipped))
}

pub fn resolve_compression(
    flag: Option<CompressionArg>,
    url: &CacheUrl,
) -> anyhow::Result<Compression> {
    if let Some(c) = flag {
        return Ok(c.into());
    }
    match url.param("compression") {
        None | Some("zstd") => Ok(Compression::Zstd),
        Some("xz") => Ok(Compression::Xz),
        Some("none") => Ok(Compression::None),
        Some(other) => {
            bail!("the cache URL asks for compression={other}; nixbucket writes zstd, xz or none")
        }
    }
}
