//! Before the build: point Nix at the cache (directly, or through a `nixbucket serve` started
//! in the background), restore what the last job used into a mirror ahead of it, and record the
//! store so that `push` can tell what the job added. `nixbucket setup` and the GitHub Action's
//! main step both resolve their arguments into a [`Job`] and run it.

use std::path::{Path, PathBuf};

use crate::cache::{Cache, CacheError, CacheUrl, OpenOptions};
use crate::nix::{PublicKey, STORE_DIR};
use crate::serve::background::{self, Background};
use crate::state::{ServeState, State};
use crate::store::{self, NixEnv, configure};

/// Requests in flight while restoring: S3 serves thousands a second per prefix, and with
/// 600 small paths (1,200 requests) at 40 ms a round trip, 256 in flight finish in about 5
/// round trips where 64 need 19.
pub const RESTORE_JOBS: u16 = 256;

/// What to restore into the mirror before the build, and where (see [`crate::restore`]).
#[derive(Clone, Debug)]
pub struct Restore {
    /// The restore's settings; what the store has already is filled in when it runs.
    pub options: crate::restore::Options,
    /// When the restore stops, whatever it has fetched: it only saves time, and a throttled
    /// or hung store must not hold the build for the SDK's minutes of retries.
    pub deadline: std::time::Duration,
}

/// The restore's default deadline: with the bucket check, setup ends within a minute against
/// a store that answers nothing.
pub const RESTORE_DEADLINE: std::time::Duration = std::time::Duration::from_secs(40);

/// How long the bucket check may take before the store counts as unreachable for this job.
const PREFLIGHT_DEADLINE: std::time::Duration = std::time::Duration::from_secs(15);

/// The default budget: a runner's free disk holds this compressed and the store unpacked.
pub const RESTORE_MAX_SIZE: u64 = 4 << 30;

impl Restore {
    /// Restoring with the default settings and the branches the CI system names, for a cache
    /// where it pays: an S3 bucket (a `file://` cache is a local directory already).
    pub fn default_for(url: &CacheUrl, state_path: &Path) -> Option<Restore> {
        let limits = (RESTORE_MAX_SIZE, RESTORE_JOBS.into());
        Restore::for_cache(url, state_path, None, Vec::new(), limits)
    }

    pub fn for_cache(
        url: &CacheUrl,
        state_path: &Path,
        mirror: Option<PathBuf>,
        branches: Vec<String>,
        (max_size, jobs): (u64, usize),
    ) -> Option<Restore> {
        if matches!(url, CacheUrl::File { .. }) {
            return None;
        }
        let branches = if branches.is_empty() {
            crate::ci::Branches::detect().in_order()
        } else {
            branches
        };
        let mirror = mirror.unwrap_or_else(|| {
            let mut rnd = [0u8; 6];
            let _ = getrandom::fill(&mut rnd);
            let suffix: String = rnd.iter().map(|b| format!("{b:02x}")).collect();
            // A fresh name per job: Nix's narinfo disk cache, keyed by the substituter's URL,
            // never answers for an older mirror.
            state_path.with_file_name(format!("nixbucket-mirror-{suffix}"))
        });
        // An absolute path: nix.conf's file:// URL is read by a daemon whose working directory
        // is not ours, and push removes the mirror from a later step's.
        let mirror = match std::path::absolute(&mirror) {
            Ok(path) => path,
            Err(e) => {
                eprintln!("restore: skipped: the mirror {}: {e}", mirror.display());
                return None;
            }
        };
        // The path goes into a space-separated list of URLs.
        let text = mirror.to_string_lossy();
        if text.contains(|c: char| c.is_whitespace() || "?#%".contains(c)) {
            eprintln!(
                "restore: skipped: the mirror {text:?} would not read back as a file:// \
                 substituter (it has a space, '?', '#' or '%'); give --mirror another directory"
            );
            return None;
        }
        Some(Restore {
            options: crate::restore::Options {
                mirror,
                branches,
                max_size,
                nar_max: crate::restore::LARGE_NAR,
                jobs,
                have: Default::default(),
                progress: Some(std::time::Duration::from_secs(5)),
            },
            deadline: RESTORE_DEADLINE,
        })
    }
}

/// A setup with every choice made.
#[derive(Clone, Debug)]
pub struct Job {
    pub url: CacheUrl,
    /// The keys Nix is told to trust for the cache.
    pub keys: Vec<PublicKey>,
    pub state_path: PathBuf,
    /// Point Nix at the cache; without it, only the store is recorded.
    pub configure: bool,
    /// The URL Nix reads the cache from, where it is not `url` (and no server runs).
    pub substituter: Option<String>,
    /// Whether Nix reads the cache through a `nixbucket serve` started in the background.
    pub serve: Serve,
    pub restore: Option<Restore>,
    /// Read-only caches of other teams, after ours.
    pub extra_caches: Vec<ExtraCache>,
    /// How to open the cache: the Action's role credentials, where it assumed one.
    pub open: OpenOptions,
}

/// What [`Job::run`] did, for a caller that acts on it (the Action hands a role's credentials
/// to later steps only when Nix reads the bucket itself).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// Nix was pointed at the cache.
    pub configured: bool,
    /// Nix reads it through the background server.
    pub served: bool,
}

/// A cache Nix also substitutes from, after ours, and never pushed to. The paths it serves
/// carry its signature, which `push` counts as served upstream (its key is trusted).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExtraCache {
    /// In Nix's URL syntax: `https://…`, `s3://…`, `file://…`.
    pub url: String,
    pub key: PublicKey,
}

impl ExtraCache {
    /// `URL KEY`, as `--extra-cache` and the Action's `extra-caches` lines give it.
    pub fn parse(text: &str) -> Result<ExtraCache, String> {
        let mut words = text.split_whitespace();
        let (Some(url), Some(key), None) = (words.next(), words.next(), words.next()) else {
            return Err(format!(
                "{text:?} is not `URL KEY` (a substituter's URL and its NAME:BASE64 public key)"
            ));
        };
        let key = PublicKey::parse(key).map_err(|e| format!("{text:?}: {e}"))?;
        if !url.contains("://") {
            return Err(format!("{text:?}: {url:?} is not a cache URL"));
        }
        Ok(ExtraCache {
            url: url.to_owned(),
            key,
        })
    }

    /// Its URL for Nix, with `priority` set after ours (and after cache.nixos.org's 40), whatever
    /// the cache's own `nix-cache-info` or the URL said: Nix asks substituters in priority order.
    fn after_ours(&self) -> String {
        let (base, query) = self.url.split_once('?').unwrap_or((&self.url, ""));
        let mut params: Vec<&str> = query
            .split('&')
            .filter(|p| !p.is_empty() && !p.starts_with("priority="))
            .collect();
        let priority = format!("priority={EXTRA_PRIORITY}");
        params.push(&priority);
        format!("{base}?{}", params.join("&"))
    }

    /// One `nixbucket serve` can read it itself (an S3 bucket or a directory), with the job's
    /// credentials; any other Nix reads directly.
    fn served_by_us(&self) -> bool {
        self.url.parse::<CacheUrl>().is_ok()
    }
}

/// Whether Nix reads the cache through a `nixbucket serve` of the job.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum ServeMode {
    /// A server when the Nix that substitutes cannot read the bucket with the job's
    /// credentials (see [`Job::serve_choice`]).
    #[default]
    Auto,
    /// Always a server (the Action's `serve: true`).
    #[value(alias = "true")]
    On,
    /// Never: Nix reads the cache itself (the Action's `serve: false`).
    #[value(alias = "false")]
    Off,
}

/// The priority of an extra cache Nix reads itself: after ours and cache.nixos.org's (40), as
/// a larger number is asked later.
const EXTRA_PRIORITY: u32 = 50;

/// The background server of a [`Job`].
#[derive(Clone, Debug, Default)]
pub struct Serve {
    pub mode: ServeMode,
    /// The key the server signs hand-overs with (else $NIXBUCKET_SIGNING_KEY).
    pub signing_key_file: Option<PathBuf>,
    /// Install a post-build hook that hands each build's outputs to the server.
    pub push_during_build: bool,
}

impl Job {
    /// Checks that the cache can work with the job's credentials, points Nix at the cache (or
    /// at the server, started first), restores into a mirror ahead of it when Nix will read
    /// one, then records the store for `push`.
    pub fn run(&self) -> anyhow::Result<Outcome> {
        self.refuse_an_extra_cache_with_our_key_name()?;
        prepare_cache(&self.url);
        let configure = self.configure && self.preflight()?;
        let serve = if configure {
            let (serve, why) = self.serve_choice()?;
            eprintln!("{why}");
            serve
        } else {
            false
        };
        let served = match serve {
            true => Some(background::start(
                &self.url.to_string(),
                &self.fronted(),
                &self.state_path,
                self.serve.signing_key_file.as_deref(),
                self.serve.push_during_build,
                self.open.credentials.as_ref(),
            )?),
            false => None,
        };
        let mut restore = self.restore.as_ref().filter(|_| configure);
        if configure {
            match self.configure_nix(served.as_ref(), restore) {
                Ok(mirrored) => restore = restore.filter(|_| mirrored),
                Err(err) => {
                    if let Some(served) = &served {
                        let pid = served.state.pid;
                        if let Err(stop) = background::stop(pid) {
                            eprintln!(
                                "warning: could not stop nixbucket serve (pid {pid}): {stop:#}"
                            );
                        }
                    }
                    return Err(err);
                }
            }
        }
        let pid = served.as_ref().map(|s| s.state.pid);
        let recorded = store::read_store_dir(Path::new(STORE_DIR))
            .map_err(anyhow::Error::from)
            .and_then(|store_paths| {
                let mirror = restore.map(|r| run_restore(&self.url, &self.open, r, &store_paths));
                record_store(self, store_paths, served.map(|s| s.state), mirror)
            });
        if let (Err(_), Some(pid)) = (&recorded, pid) {
            // Without a record no push would find the server to stop.
            if let Err(stop) = background::stop(pid) {
                eprintln!("warning: could not stop nixbucket serve (pid {pid}): {stop:#}");
            }
        }
        recorded?;
        Ok(Outcome {
            configured: configure,
            served: serve,
        })
    }

    /// An extra cache's key is trusted for every path it serves. One named like ours would be
    /// taken for ours: `push` counts paths signed by the other keys Nix trusts as served
    /// upstream, and a key of our name in both places makes that undecidable.
    fn refuse_an_extra_cache_with_our_key_name(&self) -> anyhow::Result<()> {
        for extra in &self.extra_caches {
            if let Some(ours) = self.keys.iter().find(|k| k.name() == extra.key.name()) {
                anyhow::bail!(
                    "the extra cache {} has a key named {:?}, the name of this cache's key \
                     ({ours}); give one of them another name",
                    extra.url,
                    extra.key.name()
                );
            }
        }
        Ok(())
    }

    /// Opens an `s3://` cache the way the job will (HeadBucket with its credentials), so that
    /// a cache that cannot work is known before the build. False when the job goes on without
    /// the cache: it has no credentials at all (a fork's pull request), or the store cannot be
    /// reached now. A bucket that does not exist or refuses the credentials is an error.
    fn preflight(&self) -> anyhow::Result<bool> {
        let CacheUrl::S3 { region, .. } = &self.url else {
            return Ok(true);
        };
        let opened = on_own_runtime(|| async {
            let open = Cache::open_with(&self.url, self.open.clone());
            match tokio::time::timeout(PREFLIGHT_DEADLINE, open).await {
                Ok(opened) => opened.map(drop),
                Err(_) => Err(CacheError::EndpointUnreachable {
                    endpoint: self
                        .url
                        .s3_endpoint_url()
                        .unwrap_or_else(|| "AWS S3".into()),
                    detail: format!("no answer within {} s", PREFLIGHT_DEADLINE.as_secs()),
                }),
            }
        })?;
        let err = match opened {
            Ok(()) => return Ok(true),
            Err(err) => err,
        };
        let region = region.as_deref().map_or_else(
            || "region from the AWS environment, else us-east-1".to_owned(),
            |r| format!("region {r}"),
        );
        match err {
            CacheError::NoCredentials { .. } => {
                eprintln!(
                    "notice: {err}. This job gets no cache: Nix builds what it needs, and \
                     nothing is pulled from {}",
                    self.url
                );
                Ok(false)
            }
            err @ CacheError::CredentialsUnavailable { .. } => {
                eprintln!(
                    "warning: {err}. This job builds without the cache {} for now",
                    self.url
                );
                Ok(false)
            }
            err if err.is_outage() => {
                eprintln!(
                    "warning: the cache {} cannot be reached now ({region}): {err}. This job \
                     builds without it",
                    self.url
                );
                Ok(false)
            }
            err => {
                let source = crate::cache::s3::credential_source_of(&self.url, &self.open)
                    .unwrap_or_default();
                Err(anyhow::Error::new(err).context(format!(
                    "the cache {} cannot work for this job ({region}, credentials from {source})",
                    self.url
                )))
            }
        }
    }

    /// Whether Nix reads the cache through a server of this job, and the line that says why.
    /// With `auto`: a `file://` cache, or a `--substituter`, Nix reads itself; an `s3://` one
    /// goes through the server, since no Nix is known to read it with the job's credentials:
    /// a nix-daemon fetches with its own environment, not the job's; a Nix may have no S3 store
    /// or send unsigned requests; an assumed role's credentials stay out of Nix's environment.
    pub fn serve_choice(&self) -> anyhow::Result<(bool, String)> {
        let url = &self.url;
        let (serve, why) = match self.serve.mode {
            ServeMode::On => (true, "asked for".to_owned()),
            ServeMode::Off => (false, "asked for".to_owned()),
            ServeMode::Auto => match (url, &self.substituter) {
                (CacheUrl::File { .. }, _) => (
                    false,
                    "a file:// cache is a directory Nix reads itself".to_owned(),
                ),
                (_, Some(sub)) => (false, format!("Nix reads the cache from {sub}")),
                _ => {
                    let env = NixEnv::detect().map_err(anyhow::Error::new)?;
                    let version = store::nix_version()?;
                    (
                        true,
                        why_serve(&env, version, self.open.credentials.is_some()),
                    )
                }
            },
        };
        let line = if serve {
            format!(
                "setup: Nix reads {url} through a nixbucket serve of this job on 127.0.0.1 \
                 (serve: {}, {why})",
                self.serve.mode.name()
            )
        } else {
            format!(
                "setup: Nix reads {url} itself (serve: {}, {why})",
                self.serve.mode.name()
            )
        };
        Ok((serve, line))
    }

    /// Nix reads the cache, or with a server the server, which it falls back from to building
    /// when it is gone (`fallback`); with --push-during-build Nix runs the hook after each build.
    /// True if Nix reads the mirror too.
    fn configure_nix(
        &self,
        served: Option<&Background>,
        restore: Option<&Restore>,
    ) -> anyhow::Result<bool> {
        let prepare = |dir: &Path| crate::restore::prepare_mirror(dir).map_err(Into::into);
        let mirror = restore.map(|r| configure::Mirror {
            dir: r.options.mirror.as_path(),
            prepare: &prepare,
        });
        let keys: Vec<PublicKey> = (self.keys.iter())
            .chain(self.extra_caches.iter().map(|c| &c.key))
            .cloned()
            .collect();
        // A server fronts the extra buckets and directories; Nix reads any other cache itself.
        let also: Vec<String> = (self.extra_caches.iter())
            .filter(|c| served.is_none() || !c.served_by_us())
            .map(ExtraCache::after_ours)
            .collect();
        let (substituter, extra) = match served {
            None => {
                let direct = self.substituter.clone();
                (direct.unwrap_or_else(|| self.url.to_string()), Vec::new())
            }
            Some(served) => {
                let mut extra = vec![("fallback", vec!["true".to_owned()])];
                if self.serve.push_during_build {
                    refuse_another_hook(&self.state_path)?;
                    let hook = background::install_hook_script(&self.state_path, served)?;
                    extra.push(("post-build-hook", vec![hook.display().to_string()]));
                }
                (format!("http://127.0.0.1:{}", served.state.port), extra)
            }
        };
        let settings = configure::Settings {
            also: &also,
            keys: &keys,
            extra,
            markers: crate::nix::conf::Markers::setup(),
        };
        configure::configure(&substituter, mirror, settings).map(|c| c.mirrored)
    }

    /// The extra caches the background server reads for Nix, in order.
    fn fronted(&self) -> Vec<String> {
        (self.extra_caches.iter())
            .filter(|c| c.served_by_us())
            .map(|c| c.url.clone())
            .collect()
    }
}

/// Nix runs one post-build-hook: `--push-during-build` must not silently replace one that the
/// user or another tool set (magic-nix-cache writes its own). Ours, from an earlier setup of
/// this state file, may be replaced.
fn refuse_another_hook(state_path: &Path) -> anyhow::Result<()> {
    let env = NixEnv::detect().map_err(anyhow::Error::new)?;
    let ours = background::hook_script_path(state_path);
    match env.post_build_hook {
        Some(hook) if Path::new(&hook) != ours => anyhow::bail!(
            "--push-during-build would replace the post-build-hook Nix already runs ({hook}), \
             set by you or another tool (magic-nix-cache writes one), and Nix runs only one. \
             Leave --push-during-build out: push uploads what the job built when it ends"
        ),
        _ => Ok(()),
    }
}

impl ServeMode {
    fn name(self) -> &'static str {
        match self {
            ServeMode::Auto => "auto",
            ServeMode::On => "on",
            ServeMode::Off => "off",
        }
    }
}

/// Why `auto` serves an `s3://` cache, for the line setup prints: no Nix is known to read the
/// bucket with the job's credentials, so it always does.
fn why_serve(env: &NixEnv, version: &store::NixVersion, role: bool) -> String {
    if let Some(why) = configure::s3_substituter_risk(env, version) {
        return why;
    }
    if role {
        return "the job's AWS credentials come from an assumed role, which stays out of the \
                environment of Nix and of the job's later steps"
            .to_owned();
    }
    // Nix 2.33 and later read s3:// over curl, but sign the requests only where they were
    // built with AWS authentication (Debian's 2.34 was not), and nothing Nix prints says which.
    format!(
        "{} may send unsigned S3 requests, which a private bucket refuses",
        version.text
    )
}

/// Runs `work` on a runtime of its own, on a thread of its own: setup runs inside the CLI's
/// runtime and the Action's blocking pool, where a runtime cannot be entered again. The error
/// is only that the runtime could not start or the work panicked; what `work` returns is its
/// own.
fn on_own_runtime<T, F, W>(work: W) -> anyhow::Result<T>
where
    T: Send,
    F: std::future::Future<Output = T>,
    W: FnOnce() -> F + Send,
{
    std::thread::scope(|s| {
        s.spawn(|| anyhow::Ok(tokio::runtime::Runtime::new()?.block_on(work())))
            .join()
            .unwrap_or_else(|_| {
                Err(anyhow::anyhow!(
                    "setup's work on the cache stopped unexpectedly"
                ))
            })
    })
}

/// Fills the mirror `configure` listed (see [`crate::restore`]) and returns it. A restore that
/// fails is a warning: the cache itself is still a substituter, only a slower one.
fn run_restore(
    url: &CacheUrl,
    open: &OpenOptions,
    restore: &Restore,
    store_paths: &[String],
) -> PathBuf {
    let mut opts = restore.options.clone();
    let swept = crate::restore::sweep_stale_mirrors(&opts.mirror);
    if swept > 0 {
        eprintln!("restore: removed {swept} mirror(s) earlier jobs left here");
    }
    opts.have = store_paths
        .iter()
        .filter_map(|name| name.get(..32).and_then(crate::nix::HashPart::parse))
        .collect();
    let deadline = restore.deadline;
    let restored = on_own_runtime(|| async {
        let work = async {
            let cache = crate::cache::Cache::open_with(url, open.clone()).await?;
            anyhow::Ok(crate::restore::restore(&cache, &opts).await?)
        };
        // Each file lands whole (a temporary name, then a rename, the narinfo last), so a
        // restore cut off at its deadline leaves a mirror Nix can read.
        match tokio::time::timeout(deadline, work).await {
            Ok(report) => report.map(Some),
            Err(_) => Ok(None),
        }
    })
    .and_then(|restored| restored);
    match restored {
        Ok(Some(report)) => eprintln!("{}", report.summary()),
        Ok(None) => eprintln!(
            "restore: stopped at its deadline of {} s with {} paths in {}; Nix fetches the \
             rest from {url} (--restore-deadline)",
            deadline.as_secs(),
            crate::restore::mirrored(&opts.mirror).len(),
            opts.mirror.display()
        ),
        Err(err) => eprintln!(
            "warning: could not restore into {}: {err:#}; Nix substitutes from {url} directly",
            opts.mirror.display()
        ),
    }
    opts.mirror
}

/// A `file://` cache is laid out now, by the job's user: a root nix-daemon substituting from
/// it would otherwise create its folders as root and the job's `push` could not write there.
/// A job that cannot write there (one that only pulls) is warned, not stopped.
fn prepare_cache(url: &CacheUrl) {
    if let CacheUrl::File { root, .. } = url {
        if let Err(err) = crate::cache::file::prepare_layout(root) {
            eprintln!(
                "warning: could not lay out the cache {url} ({err}); a nix-daemon that substitutes \
                 from it may create its folders as root, and `push` could not write there"
            );
        }
    }
}

/// Records the store as it is before the build, for `push` to diff against.
fn record_store(
    job: &Job,
    paths: Vec<String>,
    served: Option<ServeState>,
    mirror: Option<PathBuf>,
) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let count = paths.len();
    let mut state = State::new(
        job.url.to_string(),
        paths,
        job.keys.iter().map(ToString::to_string).collect(),
    );
    state.serve = served;
    state.mirror = mirror;
    state.save(&job.state_path)?;
    eprintln!(
        "recorded {count} store paths in {} ({} ms)",
        job.state_path.display(),
        started.elapsed().as_millis()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_extra_cache_is_a_url_and_a_key() {
        let key = "team-1:LJVaXbIWW8UbgWtbcxdrAQgF9yNR3ElNdnYwQ+l2xK0=";
        let extra = ExtraCache::parse(&format!("  https://team.example  {key} ")).unwrap();
        assert_eq!(extra.url, "https://team.example");
        assert_eq!(extra.key.to_string(), key);
        assert!(!extra.served_by_us());
        assert!(
            ExtraCache::parse(&format!("s3://team?region=eu-west-1 {key}"))
                .unwrap()
                .served_by_us()
        );
        for bad in [
            "https://team.example".to_owned(),
            format!("https://a {key} extra"),
            "https://team.example not-a-key".to_owned(),
            format!("team.example {key}"),
        ] {
            assert!(ExtraCache::parse(&bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn auto_says_why_each_nix_reads_an_s3_cache_through_the_server() {
        let nix = |line: &str| store::NixVersion::parse(line).unwrap();
        let env = |daemon: bool| NixEnv {
            daemon,
            ..Default::default()
        };
        let (debian, installer) = (nix("nix (Nix) 2.8.0"), nix("nix (Nix) 2.35.1"));
        // What the standard installers give a job: a daemon, whatever its version.
        let why = why_serve(&env(true), &installer, false);
        assert!(why.contains("nix-daemon"), "{why}");
        // Single-user, but a Nix that may have no S3 store (Debian's 2.8 has none).
        let why = why_serve(&env(false), &debian, false);
        assert!(why.contains("2.8.0"), "{why}");
        // Single-user with an S3 store that may not sign (Debian's 2.34 does not).
        let why = why_serve(&env(false), &installer, false);
        assert!(why.contains("unsigned S3 requests"), "{why}");
        // Credentials of a role, which must not reach later steps.
        let why = why_serve(&env(false), &installer, true);
        assert!(why.contains("assumed role"), "{why}");
    }

    #[test]
    fn a_file_cache_or_a_substituter_of_the_user_s_is_read_by_nix_itself() {
        let job = |url: &str, substituter: Option<&str>, mode: ServeMode| Job {
            url: url.parse().unwrap(),
            keys: Vec::new(),
            state_path: "/s/state.json".into(),
            configure: true,
            substituter: substituter.map(str::to_owned),
            serve: Serve {
                mode,
                ..Default::default()
            },
            restore: None,
            extra_caches: Vec::new(),
            open: OpenOptions::default(),
        };
        let (serve, line) = job("file:///c", None, ServeMode::Auto)
            .serve_choice()
            .unwrap();
        assert!(!serve, "{line}");
        assert!(line.contains("serve: auto, a file:// cache"), "{line}");
        let https = Some("https://cache.example");
        let (serve, line) = job("s3://b", https, ServeMode::Auto)
            .serve_choice()
            .unwrap();
        assert!(!serve, "{line}");
        assert!(line.contains("https://cache.example"), "{line}");
        let (serve, line) = job("file:///c", None, ServeMode::On)
            .serve_choice()
            .unwrap();
        assert!(serve, "{line}");
        assert!(line.contains("through a nixbucket serve"), "{line}");
        let (serve, line) = job("s3://b", None, ServeMode::Off).serve_choice().unwrap();
        assert!(!serve, "{line}");
        assert!(line.contains("itself (serve: off"), "{line}");
    }

    #[test]
    fn an_extra_cache_nix_reads_comes_after_ours_whatever_it_says() {
        let key = "team-1:LJVaXbIWW8UbgWtbcxdrAQgF9yNR3ElNdnYwQ+l2xK0=";
        let at = |url: &str| {
            ExtraCache::parse(&format!("{url} {key}"))
                .unwrap()
                .after_ours()
        };
        assert_eq!(
            at("https://team.example"),
            "https://team.example?priority=50"
        );
        assert_eq!(
            at("https://team.example?priority=10&want-mass-query=true"),
            "https://team.example?want-mass-query=true&priority=50"
        );
    }

    #[test]
    fn an_extra_cache_with_our_key_name_is_refused() {
        let ours = PublicKey::parse("team-1:LJVaXbIWW8UbgWtbcxdrAQgF9yNR3ElNdnYwQ+l2xK0=").unwrap();
        let extra = ExtraCache::parse(
            "https://team.example team-1:AAAAXbIWW8UbgWtbcxdrAQgF9yNR3ElNdnYwQ+l2xK0=",
        )
        .unwrap();
        let job = Job {
            url: "file:///c".parse().unwrap(),
            keys: vec![ours],
            state_path: "/s/state.json".into(),
            configure: true,
            substituter: None,
            serve: Serve::default(),
            restore: None,
            extra_caches: vec![extra],
            open: OpenOptions::default(),
        };
        let err = job.refuse_an_extra_cache_with_our_key_name().unwrap_err();
        assert!(
            err.to_string().contains("has a key named \"team-1\""),
            "{err}"
        );
    }

    #[test]
    fn the_mirror_is_an_absolute_path_that_reads_back_as_a_url() {
        let s3: CacheUrl = "s3://b?region=x".parse().unwrap();
        let limits = (1, 1);
        let at = |dir: &str| {
            Restore::for_cache(
                &s3,
                Path::new("/s/state.json"),
                Some(dir.into()),
                vec![],
                limits,
            )
        };
        let cwd = std::env::current_dir().unwrap();
        assert_eq!(at("m").unwrap().options.mirror, cwd.join("m"));
        assert_eq!(at("/x/m").unwrap().options.mirror, Path::new("/x/m"));
        for bad in ["/x/a b", "/x/a?b", "/x/a%20", "/x/a#b"] {
            assert!(at(bad).is_none(), "{bad}");
        }
        let default = Restore::for_cache(&s3, Path::new("/s/state.json"), None, vec![], limits);
        let default = default.unwrap().options.mirror;
        assert!(
            default
                .to_string_lossy()
                .starts_with("/s/nixbucket-mirror-"),
            "{default:?}"
        );
        let file: CacheUrl = "file:///c".parse().unwrap();
        assert!(Restore::default_for(&file, Path::new("/s/state.json")).is_none());
    }
}
