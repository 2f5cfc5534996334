//! `nixbucket setup`: before the build, make the Nix that runs it substitute from the cache,
//! and record the store so `push` can tell what the job added.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};

use super::{KeyArgs, SIGNING_KEY_ENV};
use crate::nix::PublicKey;
use crate::setup::{ExtraCache, Job, RESTORE_DEADLINE, RESTORE_JOBS, Restore, Serve, ServeMode};
use crate::state;

#[derive(clap::Args, Debug)]
#[command(mut_arg("signing_key_file", |a| a.help(
    "Secret key file to derive the public key from, when no --public-key is given (with \
     --serve, the server also signs with it what the post-build hook hands over)"
)))]
pub struct Args {
    /// The binary cache, in Nix's URL syntax: `s3://BUCKET?region=…` or `file:///some/dir`.
    #[arg(long, env = "NIXBUCKET_CACHE", value_name = "URL")]
    pub cache: String,
    /// Public key(s) Nix should trust for the cache, `NAME:BASE64`. Without it, the public half
    /// of the signing key ($NIXBUCKET_SIGNING_KEY or --signing-key-file) is used.
    #[arg(
        long = "public-key",
        env = "NIXBUCKET_PUBLIC_KEYS",
        value_delimiter = ' ',
        value_name = "KEY"
    )]
    pub public_keys: Vec<String>,
    #[command(flatten)]
    pub key: KeyArgs,
    /// Another team's cache to substitute from after ours, read-only: `URL KEY`, its URL in
    /// Nix's syntax and its public key (repeatable; `$NIXBUCKET_EXTRA_CACHES`, one a line).
    /// Paths it serves carry its signature, so `push` leaves them out. With --serve, the
    /// server fronts the `s3://` and `file://` ones.
    #[arg(
        long = "extra-cache",
        env = "NIXBUCKET_EXTRA_CACHES",
        value_delimiter = '\n',
        value_name = "URL KEY",
        value_parser = ExtraCache::parse
    )]
    pub extra_caches: Vec<ExtraCache>,
    /// The URL Nix should read the cache from, when it differs from --cache (a public HTTPS
    /// endpoint or CDN in front of the bucket, say).
    #[arg(long, value_name = "URL")]
    pub substituter: Option<String>,
    /// Where to record the store for `push` [default: $RUNNER_TEMP/nixbucket-state.json on
    /// GitHub Actions, else ~/.cache/nixbucket/state.json].
    #[arg(long, env = "NIXBUCKET_STATE_FILE", value_name = "FILE")]
    pub state_file: Option<PathBuf>,
    /// Only record the store; leave Nix's configuration alone.
    #[arg(long)]
    pub no_configure: bool,
    /// Always start `nixbucket serve` in the background and make Nix substitute from it
    /// (`http://127.0.0.1:PORT`), with this job's credentials. By default setup does so for an
    /// s3:// cache when the Nix that substitutes could not read the bucket itself: a
    /// nix-daemon (it has no access to the job's AWS credentials), or a Nix without S3 support.
    /// `push` stops the server and reports the job's cache hit rate.
    #[arg(long, conflicts_with = "substituter")]
    pub serve: bool,
    /// Never start a server: Nix reads the cache itself (a daemon then needs AWS credentials
    /// of its own for an s3:// cache).
    #[arg(long, env = "NIXBUCKET_NO_SERVE")]
    pub no_serve: bool,
    /// Upload each path as soon as Nix has built it (a post-build-hook hands it to the
    /// server, which this starts), so `push` only uploads what remains.
    #[arg(long, conflicts_with = "substituter")]
    pub push_during_build: bool,
    /// Do not restore. By default, with an s3:// cache, setup fetches what the last job of this
    /// branch (else of the default branch, else any) used into a local mirror that Nix reads
    /// first, many requests at a time: the build then substitutes at local speed. `push`
    /// removes the mirror.
    #[arg(long, env = "NIXBUCKET_NO_RESTORE")]
    pub no_restore: bool,
    /// Restore at most this much (NARs as stored, compressed): `500MiB`, `4GiB`.
    #[arg(long, value_name = "SIZE", default_value = "4GiB", value_parser = parse_size)]
    pub restore_max_size: u64,
    /// Stop restoring after this many seconds, with whatever has arrived: the build goes on,
    /// and Nix fetches the rest from the cache.
    #[arg(long, value_name = "SECS", default_value_t = RESTORE_DEADLINE.as_secs())]
    pub restore_deadline: u64,
    /// Leave NARs larger than this (as stored) to Nix instead of restoring them: `4MiB`. A
    /// mirror saves round trips, which a large NAR has few of to save.
    #[arg(long, value_name = "SIZE", default_value = "32MiB", value_parser = parse_size)]
    pub restore_nar_max: u64,
    /// Restore what the newest job of these branches used, the first branch that has one
    /// [default: the job's branch, then the default branch, as the CI system names them].
    #[arg(long = "restore-branch", value_name = "BRANCH")]
    pub restore_branches: Vec<String>,
    /// The mirror directory [default: beside the state file].
    #[arg(long, value_name = "DIR")]
    pub mirror: Option<PathBuf>,
    /// Requests in flight while restoring. Each small path costs two requests (narinfo, NAR),
    /// so a round trip away this sets how many paths arrive per round trip.
    #[arg(long, value_name = "N", default_value_t = RESTORE_JOBS, value_parser = clap::value_parser!(u16).range(1..))]
    pub restore_jobs: u16,
}

fn parse_size(text: &str) -> Result<u64, String> {
    crate::gc::units::parse_size(text).map_err(|e| e.to_string())
}

impl Args {
    /// The setup these arguments ask for.
    pub fn job(self) -> anyhow::Result<Job> {
        let url = super::parse_cache_url(&self.cache)?;
        let state_path = self.state_file.clone().unwrap_or_else(state::default_path);
        let keys = public_keys(&self)?;
        let restore = (!self.no_restore && !self.no_configure)
            .then(|| {
                Restore::for_cache(
                    &url,
                    &state_path,
                    self.mirror,
                    self.restore_branches,
                    (self.restore_max_size, self.restore_jobs.into()),
                )
            })
            .flatten()
            .map(|mut restore| {
                restore.options.nar_max = self.restore_nar_max;
                restore.deadline = std::time::Duration::from_secs(self.restore_deadline);
                restore
            });
        // Checked here, not by clap: `NIXBUCKET_NO_SERVE=false` in the environment counts as
        // given for clap's conflicts.
        let mode = match (self.serve || self.push_during_build, self.no_serve) {
            (true, true) => bail!(
                "--no-serve (or $NIXBUCKET_NO_SERVE) cannot go with --serve or \
                 --push-during-build, which need the server"
            ),
            (true, false) => ServeMode::On,
            (false, true) => ServeMode::Off,
            (false, false) => ServeMode::Auto,
        };
        let serve = Serve {
            mode,
            signing_key_file: self.key.signing_key_file.clone(),
            push_during_build: self.push_during_build,
        };
        Ok(Job {
            url,
            keys,
            state_path,
            configure: !self.no_configure,
            substituter: self.substituter,
            serve,
            restore,
            extra_caches: self.extra_caches,
            open: Default::default(),
        })
    }
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    args.job()?.run()?;
    Ok(ExitCode::SUCCESS)
}

fn public_keys(args: &Args) -> anyhow::Result<Vec<PublicKey>> {
    let mut keys = args
        .public_keys
        .iter()
        .filter(|k| !k.trim().is_empty())
        .map(|k| {
            PublicKey::parse(k)
                .with_context(|| format!("--public-key {k:?} is not a Nix public key"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    if keys.is_empty() {
        if let Some(secret) = args.key.load()? {
            keys.push(secret.to_public());
        }
    }
    if keys.is_empty() && !args.no_configure {
        bail!(
            "no public key for the cache: pass --public-key NAME:KEY, or give the signing key \
             (${SIGNING_KEY_ENV} or --signing-key-file) to derive it from"
        );
    }
    Ok(keys)
}
