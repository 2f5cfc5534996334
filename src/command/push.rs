//! `nixbucket push`: sign and upload store paths and their closure to a binary cache.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::bail;
use regex::Regex;

use super::{CompressionArg, KeyArgs};
use crate::cache::OpenOptions;
use crate::push::encode::{MAX_LONG_WINDOW, Tuning};
use crate::push::job::{Job, Upstream};
use crate::push::{ProgressMode, count, human_bytes};

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
    #[command(flatten)]
    pub key: KeyArgs,
    /// The AWS SSM parameter (SecureString) that holds the secret key, read with the cache's
    /// credentials: where `nixbucket init` keeps it, readable by CI's role only.
    #[arg(
        long,
        env = "NIXBUCKET_SIGNING_KEY_PARAMETER",
        value_name = "NAME",
        conflicts_with = "signing_key_file"
    )]
    pub signing_key_parameter: Option<String>,
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
    /// Write each NAR's listing beside it (`<hash>.ls`), as Nix's `write-nar-listing` does
    /// (also when the cache URL has `write-nar-listing=true`). Nix itself does not read them;
    /// tools that browse a cache do.
    #[arg(long)]
    pub write_nar_listing: bool,
    /// zstd's long-distance window for NARs over 16 MiB, as a power of two (27 = 128 MiB, the
    /// most Nix decompresses by default); 0 turns it off.
    #[arg(long, value_name = "LOG", default_value_t = 0,
          value_parser = long_window)]
    pub zstd_long_window: u32,
    /// How many paths over 1 MiB of NAR are read, compressed and uploaded at once (smaller
    /// ones go up 64 requests at once whatever this is).
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
    /// Do not upload build logs. By default the logs of the builds this job ran, failed ones
    /// too, go to `log/` in the cache, where `nix log --store CACHE PATH` reads them.
    #[arg(long, env = "NIXBUCKET_NO_BUILD_LOGS")]
    pub no_build_logs: bool,
    /// Upload at most the last this much of each build log: `10MiB`, `500KiB`.
    #[arg(long, value_name = "SIZE", default_value = "10MiB", value_parser = parse_size)]
    pub build_log_max_size: u64,
}

fn parse_size(text: &str) -> Result<u64, String> {
    crate::gc::units::parse_size(text).map_err(|e| e.to_string())
}

impl Args {
    /// The push these arguments ask for, its key loaded (none with --unsigned, or for a dry
    /// run without one) and its compression chosen.
    pub async fn job(self) -> anyhow::Result<Job> {
        let url = super::parse_cache_url(&self.cache)?;
        let compression = super::resolve_compression(self.compression, &url)?;
        let nar_listing = super::nar_listing(self.write_nar_listing, &url);
        let signing_key = match (self.unsigned, self.dry_run, &self.signing_key_parameter) {
            (true, _, _) => None,
            (false, _, Some(name)) => {
                Some(super::key_from_parameter(&url, &OpenOptions::default(), name).await?)
            }
            (false, true, None) => self.key.load()?,
            (false, false, None) => Some(self.key.require(
                ", or --unsigned to push paths that Nix will refuse until they are signed \
                 (create a key with `nixbucket keygen NAME`)",
            )?),
        };
        let upstream = if self.include_upstream {
            Upstream::Nobody
        } else if self.upstream_keys.is_empty() {
            Upstream::TrustedByNix
        } else {
            Upstream::Keys(self.upstream_keys)
        };
        Ok(Job {
            url,
            open: OpenOptions::default(),
            paths: self.paths,
            state_file: self.state_file,
            signing_key,
            compression,
            nar_listing,
            tuning: Tuning {
                level: self.compression_level,
                long_window: self.zstd_long_window,
            },
            jobs: self.jobs,
            progress: self.progress,
            dry_run: self.dry_run,
            upstream,
            include_derivations: self.include_derivations,
            include: self.include,
            exclude: self.exclude,
            build_logs: (!self.no_build_logs).then_some(self.build_log_max_size),
        })
    }
}

pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let job = args.job().await?;
    if job.dry_run {
        let prepared = job.prepare().await?;
        for info in &prepared.plan.missing {
            println!("would push {} ({})", info.path, human_bytes(info.nar_size));
        }
        for (path, reason) in &prepared.skipped {
            println!("skip {path}: {reason}");
        }
        eprintln!(
            "{} ({} NAR) would be pushed; {} already in the cache{}",
            count(prepared.plan.missing.len(), "path"),
            human_bytes(prepared.plan.missing_nar_bytes()),
            prepared.plan.present.len(),
            if job.signing_key.is_none() {
                "; no signing key given"
            } else {
                ""
            },
        );
        return Ok(ExitCode::SUCCESS);
    }

    let (report, _) = job.run().await?;
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

/// `--zstd-long-window`: 0, or a window Nix can decompress without being told.
fn long_window(text: &str) -> Result<u32, String> {
    match text.parse::<u32>() {
        Ok(log) if log == 0 || (10..=MAX_LONG_WINDOW).contains(&log) => Ok(log),
        _ => Err(format!(
            "expected 0 (off) or 10 to {MAX_LONG_WINDOW} (a window of 2^LOG bytes; Nix refuses \
             wider ones unless told)"
        )),
    }
}
