//! A whole push as `nixbucket push` and the GitHub Action's post step run it, once their
//! arguments are resolved into a [`Job`]: finish what `setup` started (the background server,
//! the restore mirror), pick the closure, record the job's usage for gc, ask the cache what it
//! lacks and push that.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context;
use regex::Regex;

use super::select::{self, Filters, Skipped};
use super::usage::UsageError;
use super::{Plan, ProgressMode, PushOptions, PushReport};
use super::{logs, realisations};
use crate::cache::{Cache, CacheUrl, OpenOptions};
use crate::nix::{Compression, STORE_DIR, SecretKey, StorePath};
use crate::state::{self, State};
use crate::store::{self, PathInfo};

/// Whose signature means another cache already serves a path, so that it is not pushed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Upstream {
    /// Every key in Nix's trusted-public-keys except the one we sign with.
    TrustedByNix,
    /// These key names.
    Keys(Vec<String>),
    /// None: upstream paths are pushed too.
    Nobody,
}

/// The one place that turns [`Upstream`] into key names, for `push` and for `serve`.
pub fn upstream_keys(
    upstream: &Upstream,
    our_key: Option<&str>,
) -> Result<Vec<String>, store::StoreError> {
    Ok(match upstream {
        Upstream::Nobody => Vec::new(),
        Upstream::Keys(names) => names.clone(),
        Upstream::TrustedByNix => store::trusted_public_keys()?
            .iter()
            .filter_map(|k| k.split_once(':').map(|(name, _)| name.to_owned()))
            .filter(|name| Some(name.as_str()) != our_key)
            .collect(),
    })
}

/// A push with every choice made.
#[derive(Clone, Debug)]
pub struct Job {
    pub url: CacheUrl,
    /// How to open the cache (the Action's assumed-role credentials, for one).
    pub open: OpenOptions,
    /// Push these and their closure; none: what the store gained since `setup`.
    pub paths: Vec<PathBuf>,
    /// The state `setup` recorded [default: as for setup].
    pub state_file: Option<PathBuf>,
    pub signing_key: Option<Arc<SecretKey>>,
    pub compression: Compression,
    pub tuning: super::encode::Tuning,
    /// Write each NAR's listing beside it (`<hash>.ls`).
    pub nar_listing: bool,
    pub jobs: usize,
    pub progress: ProgressMode,
    /// Find out what would be pushed; change nothing, and leave setup's server and mirror.
    pub dry_run: bool,
    pub upstream: Upstream,
    pub include_derivations: bool,
    pub include: Option<Regex>,
    pub exclude: Option<Regex>,
    /// Upload the build logs of what this job built, each cut to this many bytes; none: no logs.
    pub build_logs: Option<u64>,
}

/// What a push found before it uploads anything.
pub struct Prepared {
    pub cache: Cache,
    pub plan: Plan,
    pub skipped: Skipped,
    /// Why this job's usage record could not be written, if it could not (the push goes on).
    pub usage_unrecorded: Option<UsageError>,
    /// The build logs to upload (of the derivations new since setup, and of the closure's
    /// derivers), and the builds that failed; none when logs are off.
    pub logs: Option<logs::Found>,
    /// Realisations of the content-addressed outputs built, uploaded once their paths land.
    pub realisations: Vec<realisations::Realisation>,
}

impl Job {
    /// The state file this job reads.
    fn state_path(&self) -> PathBuf {
        self.state_file.clone().unwrap_or_else(state::default_path)
    }

    /// Pushes what the cache lacks. Paths that fail are in the report, not in the error: the
    /// caller decides what they mean.
    pub async fn run(&self) -> anyhow::Result<(PushReport, Skipped)> {
        let prepared = self.prepare().await?;
        let opts = PushOptions {
            compression: self.compression.clone(),
            tuning: self.tuning,
            nar_listing: self.nar_listing,
            jobs: self.jobs,
            signing_key: self.signing_key.clone(),
            progress: self.progress,
            cancel: Arc::new(AtomicBool::new(false)),
        };
        let signals = stop_on_signal(opts.cancel.clone())?;
        let found = prepared
            .logs
            .map(|found| without_settled(found, &prepared.plan));
        let logs = async {
            match (self.build_logs, found) {
                (Some(max), Some(found)) => Some(logs::push(&prepared.cache, found, max).await),
                _ => None,
            }
        };
        let present: BTreeSet<StorePath> = prepared
            .plan
            .present
            .iter()
            .map(|i| i.path.clone())
            .collect();
        let (report, logs) =
            tokio::join!(super::execute(&prepared.cache, prepared.plan, &opts), logs);
        let mut report = report?;
        // A realisation names its output's path: it goes up only once that path is there.
        let landed: BTreeSet<StorePath> = report
            .pushed
            .iter()
            .map(|p| p.path.clone())
            .chain(present)
            .collect();
        let (realised, errors) = realisations::push(
            &prepared.cache,
            prepared.realisations,
            &landed,
            self.signing_key.as_deref(),
        )
        .await;
        report.realisations = realised;
        for (id, why) in errors {
            eprintln!("warning: the realisation {id} was not uploaded: {why}");
        }
        report.usage_unrecorded = prepared.usage_unrecorded;
        report.logs = logs;
        signals.abort();
        eprintln!("{}", report.summary(&self.compression));
        for pushed in &report.pushed {
            if let Some(why) = &pushed.listing_failed {
                eprintln!(
                    "warning: the NAR listing of {} was not uploaded: {why}",
                    pushed.path
                );
            }
        }
        if let Some(logs) = &report.logs {
            for (drv, why) in &logs.errors {
                eprintln!("warning: the build log of {drv} was not uploaded: {why}");
            }
            for drv in &logs.failed_builds {
                eprintln!(
                    "build failed: {drv}; read its log with {}",
                    logs::read_command(&self.url, drv)
                );
            }
        }
        Ok((report, prepared.skipped))
    }

    /// Selects the closure, opens the cache, records the job's usage for gc (unless a dry run)
    /// and asks the cache what it lacks.
    pub async fn prepare(&self) -> anyhow::Result<Prepared> {
        let our_key = self.signing_key.as_ref().map(|k| k.name().to_owned());
        let (upstream, include_derivations) = (self.upstream.clone(), self.include_derivations);
        let (include, exclude) = (self.include.clone(), self.exclude.clone());
        let (paths, state_path, keep) = (self.paths.clone(), self.state_path(), self.dry_run);
        let want_logs = self.build_logs.is_some() && !self.dry_run;
        // Nix's answers come from local processes and the cache's from the network: asked at
        // once, the bucket's first round trip costs nothing.
        let query = tokio::task::spawn_blocking(move || {
            // Nix's configuration (for the upstream keys) is read beside the store queries
            // that do not need it.
            let (closure, skipped, added) = std::thread::scope(|scope| {
                let keys = scope.spawn(|| upstream_keys(&upstream, our_key.as_deref()));
                let filters = || -> anyhow::Result<Filters> {
                    let keys = keys.join().expect("the key query does not panic");
                    Ok(Filters {
                        upstream_keys: keys.context("could not read Nix's trusted-public-keys")?,
                        include_derivations,
                        include,
                        exclude,
                    })
                };
                if paths.is_empty() {
                    since_setup(&state_path, keep, filters)
                } else {
                    let (closure, skipped) = named_closure(&paths, filters)?;
                    Ok::<_, anyhow::Error>((closure, skipped, Added::default()))
                }
            })?;
            if keep {
                return Ok((closure, skipped, None, Vec::new()));
            }
            let realisations =
                realisations::find(&closure, &added.derivations).unwrap_or_else(|err| {
                    eprintln!("warning: no realisations are pushed: {err}");
                    Vec::new()
                });
            if !want_logs {
                return Ok((closure, skipped, None, realisations));
            }
            let (closure, logs) = with_failed_derivations(closure, added);
            anyhow::Ok((closure, skipped, logs, realisations))
        });
        let open = Cache::open_with(&self.url, self.open.clone());
        let (query, cache) = tokio::join!(query, open);
        let (closure, skipped, logs, realisations) =
            query.context("the store query stopped unexpectedly")??;
        let cache = cache.with_context(|| format!("could not open the cache {}", self.url))?;
        // gc's usage record: before the existence checks, so a concurrent gc keeps these.
        let mut usage_unrecorded = None;
        if !self.dry_run {
            let branch = crate::ci::Branches::detect().current;
            let used = super::usage::record(
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
        let plan = super::plan(&cache, closure).await?;
        for (path, why) in &plan.unusable {
            eprintln!("warning: {why}; pushing {path} again");
        }
        Ok(Prepared {
            cache,
            plan,
            skipped,
            usage_unrecorded,
            logs,
            realisations,
        })
    }
}

/// The build logs of the derivations new since setup and the closure's derivers, and the
/// closure with each failed build's derivation added, with its own closure of input
/// derivations, when it names no source the job added: Nix 2.8 reads a derivation's log from
/// a cache only when the cache has the derivation, but a source copied in from the checkout
/// may hold what must never reach the bucket, and no build vouches for it. Logs that cannot
/// be found are a warning, not a failed push.
fn with_failed_derivations(
    mut closure: Vec<PathInfo>,
    added: Added,
) -> (Vec<PathInfo>, Option<logs::Found>) {
    let derivations = closure
        .iter()
        .filter_map(|info| info.deriver.clone())
        .chain(added.derivations)
        .collect();
    let mut valid: BTreeSet<StorePath> = closure.iter().map(|i| i.path.clone()).collect();
    let found = match logs::find(derivations, &valid) {
        Ok(found) => found,
        Err(err) => {
            eprintln!("warning: no build logs are pushed: {err}");
            return (closure, None);
        }
    };
    for drv in &found.failed {
        match store::query_path_info(std::slice::from_ref(drv), true) {
            Ok(extra) => {
                let extra: Vec<PathInfo> = extra
                    .into_iter()
                    .filter(|i| !valid.contains(&i.path))
                    .collect();
                match extra
                    .iter()
                    .filter(|i| added.sources.contains(&i.path))
                    .count()
                {
                    0 => {
                        // Two failed builds may share an input derivation: it goes in once.
                        valid.extend(extra.iter().map(|i| i.path.clone()));
                        closure.extend(extra);
                    }
                    n => eprintln!(
                        "the derivation of the failed build {drv} is not pushed, only its log: \
                         it names {n} source path(s) the job added (a `src = ./.` can carry \
                         untracked files such as an .env), which no build vouches for"
                    ),
                }
            }
            Err(err) => eprintln!("warning: the derivation of {drv} is not pushed: {err}"),
        }
    }
    (closure, Some(found))
}

/// `found` without the logs of derivations whose outputs the cache already had: those went up
/// with their paths, and a push with nothing new sends nothing. A build that failed here keeps
/// its log.
fn without_settled(mut found: logs::Found, plan: &super::Plan) -> logs::Found {
    let pushing: BTreeSet<&StorePath> = plan
        .missing
        .iter()
        .filter_map(|info| info.deriver.as_ref())
        .collect();
    let settled: BTreeSet<&StorePath> = plan
        .present
        .iter()
        .filter_map(|info| info.deriver.as_ref())
        .filter(|drv| !pushing.contains(drv))
        .collect();
    let failed = &found.failed;
    found
        .logs
        .retain(|(drv, _, _)| !settled.contains(drv) || failed.contains(drv));
    found
}

/// For a job that does not push: ends what `setup` started, as a push does first. The
/// background server is drained of hand-overs, asked for its counters and stopped; the
/// restore mirror is counted and removed. The lines to print; none when setup started
/// neither, or left no state.
pub fn finish_unpushed(state_path: &Path) -> Vec<String> {
    let Ok(state) = State::load(state_path) else {
        return Vec::new();
    };
    let mut lines = Vec::new();
    // Either may be gone already: a push ends both before it uploads.
    use crate::serve::background;
    if let Some(served) = state.serve.as_ref().filter(|s| background::running(s.pid)) {
        if let Some(stats) = background::finish(served, false) {
            lines.push(stats.summary());
        }
    }
    if let Some(dir) = state.mirror.as_deref().filter(|d| d.exists()) {
        let added = store::read_store_dir(Path::new(STORE_DIR))
            .map(|now| store::added_since(&state.store_paths, &now));
        lines.push(mirror_report(
            dir,
            added.as_deref().map_err(ToString::to_string),
            false,
        ));
    }
    lines
}

/// The line [`finish_unpushed`] prints, from what the store gained since setup (or why that is
/// unknown), with the mirror removed unless `keep`.
fn mirror_report(dir: &Path, added: Result<&[StorePath], String>, keep: bool) -> String {
    let mirrored = crate::restore::mirrored(dir);
    let mut line = match added {
        Ok(added) => {
            let used = added
                .iter()
                .filter(|p| mirrored.contains(&crate::nix::HashPart::of(p)))
                .count();
            format!(
                "restore: the build took {used} of the {} paths restored into {}",
                mirrored.len(),
                dir.display()
            )
        }
        Err(err) => format!(
            "restore: {} paths were restored into {} (how many the build took is unknown: {err})",
            mirrored.len(),
            dir.display()
        ),
    };
    if !keep {
        match crate::restore::remove_mirror(dir) {
            Ok(true) => line.push_str(" (removed)"),
            Ok(false) => {}
            Err(e) => line.push_str(&format!(" (could not remove it: {e})")),
        }
    }
    line
}

/// A cancelled CI job gets SIGINT or SIGTERM: stop cleanly, so what landed is whole and a
/// re-run finishes the job.
fn stop_on_signal(cancel: Arc<AtomicBool>) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let stop = crate::signal::interrupted().context("could not watch for SIGINT and SIGTERM")?;
    Ok(tokio::spawn(async move {
        stop.await;
        eprintln!("interrupted: starting no new paths and abandoning uploads in flight");
        cancel.store(true, Ordering::Relaxed);
    }))
}

/// What the store gained since `setup`, filtered, its closure, and the derivations among the
/// gains (whose builds may have failed). First, what setup started is
/// finished: the server's uploads, so that the diff finds them in the cache, then its counters
/// and the server itself; the restore mirror, counted and removed. A dry run (`keep`) leaves
/// both. The state file and the store directory are each read once. `filters` is asked for
/// only when the paths are known.
/// What the store gained since setup besides the closure to push: the derivations (whose
/// builds may have failed), and the sources the job added but built nothing from.
#[derive(Debug, Default)]
struct Added {
    derivations: Vec<StorePath>,
    sources: BTreeSet<StorePath>,
}

fn since_setup(
    state_path: &Path,
    keep: bool,
    filters: impl FnOnce() -> anyhow::Result<Filters>,
) -> anyhow::Result<(Vec<PathInfo>, Skipped, Added)> {
    let state = State::load(state_path)?;
    if let Some(served) = &state.serve {
        if let Some(stats) = crate::serve::background::finish(served, keep) {
            eprintln!("{}", stats.summary());
        }
    }
    let added = store::read_store_dir(Path::new(STORE_DIR))
        .map(|now| store::added_since(&state.store_paths, &now));
    if let Some(dir) = &state.mirror {
        let added = added.as_deref().map_err(ToString::to_string);
        eprintln!("{}", mirror_report(dir, added, keep));
    }
    let added = added?;
    let derivations = added
        .iter()
        .filter(|p| p.is_derivation())
        .cloned()
        .collect();
    let added = store::query_valid_path_info(&added)?;
    let filters = filters()?;
    let (roots, skipped) = select::split_roots(added, &filters);
    let sources = skipped
        .iter()
        .filter(|(_, why)| *why == select::SkipReason::Source)
        .map(|(path, _)| path.clone())
        .collect();
    let added = Added {
        derivations,
        sources,
    };
    if roots.is_empty() {
        return Ok((Vec::new(), skipped, added));
    }
    let roots: Vec<_> = roots.into_iter().map(|i| i.path).collect();
    let (closure, skipped) =
        without_upstream(store::query_path_info(&roots, true)?, skipped, &filters)?;
    Ok((closure, skipped, added))
}

/// The closure of the paths a user named (`./result` works too).
fn named_closure(
    paths: &[PathBuf],
    filters: impl FnOnce() -> anyhow::Result<Filters>,
) -> anyhow::Result<(Vec<PathInfo>, Skipped)> {
    let roots: Vec<StorePath> = paths
        .iter()
        .map(|p| store::resolve_store_path(p))
        .collect::<Result<_, _>>()?;
    let closure = store::query_path_info(&roots, true)?;
    without_upstream(closure, Vec::new(), &filters()?)
}

/// `closure` without what is served upstream, and everything left out and why.
fn without_upstream(
    closure: Vec<PathInfo>,
    mut skipped: Skipped,
    filters: &Filters,
) -> anyhow::Result<(Vec<PathInfo>, Skipped)> {
    let (closure, skip) = select::drop_upstream(closure, filters);
    skipped.extend(skip);
    skipped.sort_by(|a, b| a.0.cmp(&b.0));
    skipped.dedup_by(|a, b| a.0 == b.0);
    Ok((closure, skipped))
}
