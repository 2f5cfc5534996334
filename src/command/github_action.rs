//! `nixbucket github-action main|post`: the two steps of the GitHub Action. `main` runs before
//! the job's build and configures the cache; `post` runs when the job ends, also after a failed
//! build, and pushes what the job added. The action's JavaScript only finds this binary and
//! runs it, so everything the action does is here and behaves like `setup` and `push`.
//!
//! Whether a failed push fails the job: problems that will not go away by themselves (a bad
//! signing key or input, credentials the bucket refuses, a store path whose contents no longer
//! match its hash) are an `::error::` and a failed step. A cache that cannot be reached or an
//! upload that was cut off is a `::warning::`, and the job keeps its result: the cache only
//! saves time, and what did land is whole.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::ValueEnum;
use regex::Regex;

use super::CompressionArg;
use crate::cache::{CacheError, CacheUrl, OpenOptions};
use crate::ci::github::{
    self, AWS_AUDIENCE, GithubError, Inputs, Outcome, PullOnly, Secret, annotation,
};
use crate::nix::{PublicKey, SecretKey};
use crate::push::job::{Job, Upstream};
use crate::push::{ProgressMode, PushError};
use crate::setup;
use crate::state;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Which step of the action to run: `main` before the build, `post` when the job ends.
    #[arg(value_enum)]
    pub phase: Phase,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Phase {
    Main,
    Post,
}

/// State entries `main` leaves for `post` (read back as `STATE_<name>`).
const STATE_MODE: &str = "nixbucket-mode";
const STATE_REASON: &str = "nixbucket-reason";
const STATE_FILE: &str = "nixbucket-state-file";

const MODE_PUSH: &str = "push";
const MODE_PULL_ONLY: &str = "pull-only";
/// How much of each build log the Action uploads: the last 10 MiB, as `push` does by default.
const BUILD_LOG_MAX_SIZE: u64 = 10 << 20;

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

fn say(line: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    // The masks go out before anything else, so that nothing printed later, by us or by a
    // library, can show the secrets in the log. That includes static AWS keys the workflow put
    // in the step's environment (an S3 error can quote the access key ID).
    for secret in github::step_secrets(|name| std::env::var(name).ok()) {
        for line in github::mask_commands(&secret) {
            say(&line);
        }
    }
    let result = match args.phase {
        Phase::Main => main_step().await,
        Phase::Post => post_step().await,
    };
    match result {
        Ok(code) => Ok(code),
        Err(err) => {
            say(&annotation("error", &format!("nixbucket: {err:#}")));
            Ok(ExitCode::FAILURE)
        }
    }
}

fn signing_key(inputs: &Inputs) -> anyhow::Result<Option<Arc<SecretKey>>> {
    if inputs.signing_key.is_empty() {
        return Ok(None);
    }
    let key = SecretKey::parse(inputs.signing_key.expose().trim())
        .context("the input signing-key is not a Nix secret key")?;
    Ok(Some(Arc::new(key)))
}

fn state_path() -> PathBuf {
    env("NIXBUCKET_STATE_FILE").map_or_else(state::default_path, PathBuf::from)
}

fn save_state(name: &str, value: &str) -> anyhow::Result<()> {
    github::append_to("GITHUB_STATE", env, &github::file_entry(name, value))?;
    Ok(())
}

fn pull_only_reason(inputs: &Inputs) -> Option<PullOnly> {
    let event_name = env("GITHUB_EVENT_NAME");
    let event = match env("GITHUB_EVENT_PATH") {
        Some(path) => github::read_event(std::path::Path::new(&path)),
        None => Err(GithubError::Event {
            path: PathBuf::new(),
            reason: "GITHUB_EVENT_PATH is not set".into(),
        }),
    };
    github::decide(
        event_name.as_deref(),
        event.as_ref(),
        inputs.has_signing_key(),
        inputs.skip_push,
    )
}

/// The inputs, with the price table they name (if any) chosen for this process's report.
fn read_inputs() -> anyhow::Result<Inputs> {
    let inputs = Inputs::read(env)?;
    if let Some(choice) = &inputs.pricing {
        crate::cost::choose(choice).context("the input pricing")?;
    }
    Ok(inputs)
}

async fn main_step() -> anyhow::Result<ExitCode> {
    let inputs = read_inputs()?;
    let url: CacheUrl = inputs
        .cache
        .parse()
        .with_context(|| format!("the input cache is not a cache URL: {:?}", inputs.cache))?;
    let key = signing_key(&inputs)?;
    let mut pull_only = pull_only_reason(&inputs);
    if pull_only.is_none()
        && inputs.aws_role_arn.is_some()
        && env("ACTIONS_ID_TOKEN_REQUEST_URL").is_none()
    {
        pull_only = Some(PullOnly::NoIdToken);
    }

    let mut keys = inputs
        .public_keys
        .iter()
        .map(|k| {
            PublicKey::parse(k)
                .with_context(|| format!("the input public-keys holds {k:?}, not a public key"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    if let Some(key) = &key {
        let public = key.to_public();
        if !keys.iter().any(|k| k.to_string() == public.to_string()) {
            keys.push(public);
        }
    }

    if let Some(reason) = &pull_only {
        say(&annotation(
            "notice",
            &format!(
                "nixbucket pulls from {url} and pushes nothing in this run: {reason}{}",
                if inputs.aws_role_arn.is_some() && !matches!(reason, PullOnly::NoIdToken) {
                    "; aws-role-arn is not assumed either, since its credentials could write to the cache"
                } else {
                    ""
                }
            ),
        ));
    }
    // The role's credentials go to this step's restore and server; later steps get them
    // (through GITHUB_ENV) only when Nix reads the bucket itself.
    let mut open = OpenOptions::default();
    if let (None, Some(role_arn)) = (&pull_only, &inputs.aws_role_arn) {
        open.credentials = Some(oidc_credentials(&inputs, role_arn).await?);
    }

    let configure = !keys.is_empty();
    if !configure {
        say(&annotation(
            "warning",
            "nixbucket: no public key for the cache (the input public-keys is empty and there is no signing key), so Nix is not set up to pull from it; add the cache's public key to public-keys",
        ));
    }

    let state_file = state_path();
    let restore = inputs
        .restore
        .then(|| setup::Restore::default_for(&url, &state_file))
        .flatten();
    let extra_caches = inputs
        .extra_caches
        .iter()
        .map(|line| setup::ExtraCache::parse(line))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|why| anyhow::anyhow!("the input extra-caches: {why}"))?;
    let serve = setup::Serve {
        mode: match inputs.serve {
            None => setup::ServeMode::Auto,
            Some(true) => setup::ServeMode::On,
            Some(false) => setup::ServeMode::Off,
        },
        ..Default::default()
    };
    let job = setup::Job {
        url: url.clone(),
        keys,
        state_path: state_file.clone(),
        configure,
        substituter: None,
        serve,
        restore,
        extra_caches,
        open: open.clone(),
    };
    let outcome = tokio::task::spawn_blocking(move || job.run())
        .await
        .context("setup stopped unexpectedly")??;
    if let Some(creds) = &open.credentials {
        if outcome.configured && !outcome.served && matches!(url, CacheUrl::S3 { .. }) {
            export_credentials(creds, inputs.aws_region.as_deref())?;
        }
    }

    match &pull_only {
        Some(reason) => {
            save_state(STATE_MODE, MODE_PULL_ONLY)?;
            save_state(STATE_REASON, &reason.to_string())?;
        }
        None => save_state(STATE_MODE, MODE_PUSH)?,
    }
    save_state(STATE_FILE, &state_file.to_string_lossy())?;
    say(&format!(
        "nixbucket: Nix uses {url}; {}",
        if pull_only.is_some() {
            "nothing will be pushed at the end of the job"
        } else {
            "what the job adds to the store is pushed when the job ends"
        }
    ));
    Ok(ExitCode::SUCCESS)
}

/// Gets the job's OIDC token and exchanges it for credentials of `role_arn`.
async fn oidc_credentials(
    inputs: &Inputs,
    role_arn: &str,
) -> anyhow::Result<aws_credential_types::Credentials> {
    let request_url = env("ACTIONS_ID_TOKEN_REQUEST_URL").ok_or(GithubError::NoIdTokenRequest)?;
    let request_token =
        Secret::new(env("ACTIONS_ID_TOKEN_REQUEST_TOKEN").ok_or(GithubError::NoIdTokenRequest)?);
    let token = github::fetch_id_token(&request_url, &request_token, AWS_AUDIENCE).await?;
    for line in github::mask_commands(&token) {
        say(&line);
    }
    let dir = env("RUNNER_TEMP").map_or_else(std::env::temp_dir, PathBuf::from);
    let token_file = dir.join("nixbucket-oidc-token");
    github::write_token_file(&token_file, &token)?;
    let session = format!(
        "nixbucket-{}",
        env("GITHUB_RUN_ID").unwrap_or_else(|| "run".into())
    );
    let creds = github::assume_role(
        &token_file,
        role_arn,
        &session,
        inputs.aws_region.clone().or_else(|| env("AWS_REGION")),
    )
    .await;
    let _ = std::fs::remove_file(&token_file);
    let creds = creds?;
    for value in [
        creds.access_key_id(),
        creds.secret_access_key(),
        creds.session_token().unwrap_or(""),
    ] {
        for line in github::mask_commands(&Secret::new(value.to_owned())) {
            say(&line);
        }
    }
    Ok(creds)
}

/// Hands the role's credentials to the job's later steps, where Nix reads the bucket.
fn export_credentials(
    creds: &aws_credential_types::Credentials,
    region: Option<&str>,
) -> anyhow::Result<()> {
    let mut text = github::file_entry("AWS_ACCESS_KEY_ID", creds.access_key_id());
    text.push_str(&github::file_entry(
        "AWS_SECRET_ACCESS_KEY",
        creds.secret_access_key(),
    ));
    if let Some(token) = creds.session_token() {
        text.push_str(&github::file_entry("AWS_SESSION_TOKEN", token));
    }
    if let Some(region) = region {
        text.push_str(&github::file_entry("AWS_REGION", region));
        text.push_str(&github::file_entry("AWS_DEFAULT_REGION", region));
    }
    github::append_to("GITHUB_ENV", env, &text)?;
    Ok(())
}

/// Whether a failed push means the cache could not be reached (a warning) rather than
/// something that will not fix itself (an error).
fn is_outage(err: &(dyn std::error::Error + 'static)) -> bool {
    let cache_outage = CacheError::is_outage;
    let mut cur = Some(err);
    while let Some(e) = cur {
        if let Some(c) = e.downcast_ref::<CacheError>() {
            return cache_outage(c);
        }
        if let Some(p) = e.downcast_ref::<PushError>() {
            return match p {
                PushError::Cache(c) => cache_outage(c),
                PushError::Cancelled => true,
                _ => false,
            };
        }
        if let Some(u) = e.downcast_ref::<crate::push::usage::UsageError>() {
            return matches!(u, crate::push::usage::UsageError::Cache(c) if cache_outage(c));
        }
        if let Some(GithubError::IdToken { .. }) = e.downcast_ref::<GithubError>() {
            return true;
        }
        cur = e.source();
    }
    false
}

/// The push the post step runs, from the action's inputs: the key from the input, no paths
/// (what the job added since the main step), plain progress for the log.
fn push_job(inputs: &Inputs, state_file: Option<String>) -> anyhow::Result<Job> {
    let url: CacheUrl = inputs
        .cache
        .parse()
        .with_context(|| format!("the input cache is not a cache URL: {:?}", inputs.cache))?;
    // A key in a parameter is read once the role is assumed, in push_and_report.
    let key = signing_key(inputs)?;
    if key.is_none() && inputs.signing_key_parameter.is_none() {
        anyhow::bail!("the input signing-key is empty now, but was set when the job started");
    }
    let compression_arg = inputs
        .compression
        .as_deref()
        .map(|c| {
            CompressionArg::from_str(c, true).map_err(|_| GithubError::InvalidInput {
                name: "compression",
                expected: "zstd, xz or none",
                value: c.to_owned(),
            })
        })
        .transpose()?;
    let compression = super::resolve_compression(compression_arg, &url)?;
    let nar_listing = super::nar_listing(false, &url);
    let regex = |name: &'static str, value: &Option<String>| {
        value
            .as_deref()
            .map(|v| {
                Regex::new(v)
                    .with_context(|| format!("the input {name} is not a regular expression"))
            })
            .transpose()
    };
    let jobs = inputs.jobs.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map_or(4, |n| n.get())
            .max(2)
    });
    Ok(Job {
        url,
        open: OpenOptions::default(),
        paths: Vec::new(),
        state_file: Some(state_file.map_or_else(state_path, PathBuf::from)),
        signing_key: key,
        compression,
        tuning: Default::default(),
        nar_listing,
        jobs,
        progress: ProgressMode::Plain,
        dry_run: false,
        upstream: Upstream::TrustedByNix,
        include_derivations: false,
        include: regex("include", &inputs.include)?,
        exclude: regex("exclude", &inputs.exclude)?,
        build_logs: inputs.build_logs.then_some(BUILD_LOG_MAX_SIZE),
    })
}

async fn post_step() -> anyhow::Result<ExitCode> {
    let inputs = read_inputs()?;
    let mode = env(&format!("STATE_{STATE_MODE}"));
    let (code, pushed_paths, pushed_bytes) = match mode.as_deref() {
        Some(MODE_PUSH) => {
            let (code, paths, bytes) = push_and_report(&inputs).await?;
            (code, paths, bytes)
        }
        other => {
            let reason = match other {
                Some(MODE_PULL_ONLY) => env(&format!("STATE_{STATE_REASON}"))
                    .unwrap_or_else(|| "the run only pulls".into()),
                _ => "the action's main step did not finish, so there is no record of what the job added".into(),
            };
            // A pull-only job restored and served too: its mirror and server go as a pushing
            // job's do.
            let state_file =
                env(&format!("STATE_{STATE_FILE}")).map_or_else(state_path, PathBuf::from);
            for line in crate::push::job::finish_unpushed(&state_file) {
                say(&line);
            }
            if other.is_none() {
                say(&annotation(
                    "warning",
                    &format!("nixbucket: nothing pushed: {reason}"),
                ));
            } else {
                say(&format!("nixbucket: nothing pushed: {reason}"));
            }
            report(&inputs, &Outcome::NotPushed { reason }).await?;
            (ExitCode::SUCCESS, 0, 0)
        }
    };
    let outputs = format!(
        "{}{}",
        github::file_entry("pushed-paths", &pushed_paths.to_string()),
        github::file_entry("pushed-bytes", &pushed_bytes.to_string())
    );
    github::append_to("GITHUB_OUTPUT", env, &outputs)?;
    Ok(code)
}

/// Pushes, then writes the summary (and check run). Returns the exit code, paths pushed and
/// bytes uploaded.
async fn push_and_report(inputs: &Inputs) -> anyhow::Result<(ExitCode, usize, u64)> {
    let mut job = push_job(inputs, env(&format!("STATE_{STATE_FILE}")))?;
    let result = async {
        if let Some(role_arn) = &inputs.aws_role_arn {
            // A fresh token: the one from `main` may have expired during a long build.
            job.open.credentials = Some(oidc_credentials(inputs, role_arn).await?);
        }
        if let Some(name) = &inputs.signing_key_parameter {
            if job.signing_key.is_none() {
                let key = super::key_from_parameter(&job.url, &job.open, name).await?;
                // Masked as the signing-key input is, before anything else is printed.
                let text = Secret::new(key.to_nix_string().to_string());
                for line in github::mask_commands(&text) {
                    say(&line);
                }
                job.signing_key = Some(key);
            }
        }
        job.run().await
    }
    .await;
    let cache = job.url.to_string();
    match result {
        Err(err) => {
            // A push that failed before it finished what setup started (the role, the key,
            // the state) leaves the server and the mirror: they end here.
            if let Some(state_file) = &job.state_file {
                for line in crate::push::job::finish_unpushed(state_file) {
                    say(&line);
                }
            }
            let outage = is_outage(err.as_ref());
            let message = format!("{err:#}");
            report(
                inputs,
                &Outcome::Failed {
                    cache: &cache,
                    error: message.clone(),
                },
            )
            .await?;
            if outage {
                say(&annotation(
                    "warning",
                    &format!(
                        "nixbucket: nothing pushed, the cache could not be reached: {message}; the job keeps its result and the next run rebuilds what is missing"
                    ),
                ));
                Ok((ExitCode::SUCCESS, 0, 0))
            } else {
                say(&annotation(
                    "error",
                    &format!("nixbucket: the push failed: {message}"),
                ));
                Ok((ExitCode::FAILURE, 0, 0))
            }
        }
        Ok((push_report, skipped)) => {
            let requests = crate::cost::so_far();
            let outcome = Outcome::Pushed {
                cache: &cache,
                report: &push_report,
                skipped: &skipped,
                compression: &job.compression,
                requests: requests.as_ref(),
            };
            say(&outcome.title());
            report(inputs, &outcome).await?;
            let mut code = ExitCode::SUCCESS;
            for (path, err) in &push_report.failed {
                if matches!(err, PushError::ReferenceFailed { .. }) {
                    continue;
                }
                if is_outage(err) {
                    say(&annotation(
                        "warning",
                        &format!("nixbucket: {path} was not pushed: {err}"),
                    ));
                } else {
                    say(&annotation(
                        "error",
                        &format!("nixbucket: {path} was not pushed: {err}"),
                    ));
                    code = ExitCode::FAILURE;
                }
            }
            if let Some(err) = &push_report.usage_unrecorded {
                let message = format!(
                    "nixbucket: this job's usage record could not be written ({err}); \
                     `nixbucket gc --older-than` may count its paths as unused"
                );
                if is_outage(err) {
                    say(&annotation("warning", &message));
                } else {
                    say(&annotation("error", &message));
                    code = ExitCode::FAILURE;
                }
            }
            Ok((code, push_report.pushed.len(), push_report.file_bytes()))
        }
    }
}

/// The job summary, and with a github-token the check run. A check run that cannot be created
/// is a warning: the summary already holds the report.
async fn report(inputs: &Inputs, outcome: &Outcome<'_>) -> anyhow::Result<()> {
    github::append_to("GITHUB_STEP_SUMMARY", env, &outcome.markdown())?;
    if inputs.github_token.is_empty() {
        return Ok(());
    }
    let (Some(repository), Some(sha)) = (env("GITHUB_REPOSITORY"), head_sha()) else {
        say(&annotation(
            "warning",
            "nixbucket: no check run: GITHUB_REPOSITORY or GITHUB_SHA is not set",
        ));
        return Ok(());
    };
    let api = env("GITHUB_API_URL").unwrap_or_else(|| "https://api.github.com".into());
    if let Err(err) =
        github::create_check_run(&api, &inputs.github_token, &repository, &sha, outcome).await
    {
        say(&annotation("warning", &format!("nixbucket: {err}")));
    }
    Ok(())
}

/// The commit the check run belongs to: a pull request's head, not the merge commit GitHub
/// builds, so that it shows on the pull request.
fn head_sha() -> Option<String> {
    let from_event = env("GITHUB_EVENT_PATH")
        .and_then(|p| github::read_event(std::path::Path::new(&p)).ok())
        .and_then(|e| {
            e.pointer("/pull_request/head/sha")
                .and_then(|v| v.as_str())
                .map(str::to_owned)
        });
    from_event.or_else(|| env("GITHUB_SHA"))
}
