//! GitHub Actions: the action's inputs, the workflow commands a step prints (masks, notices,
//! errors), the files through which a step talks to the runner (`GITHUB_STATE`,
//! `GITHUB_OUTPUT`, `GITHUB_ENV`, `GITHUB_STEP_SUMMARY`), the decision whether a run may push,
//! the job's OIDC token, and the report as a Markdown summary and as a check run.
//!
//! Secrets are held as [`Secret`], whose `Debug` never shows the value; the only way to print
//! one is [`mask_commands`], which tells the runner to hide it.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use zeroize::Zeroizing;

use crate::nix::{Compression, StorePath};
use crate::push::select::Skipped;
use crate::push::{PushReport, human_bytes, logs};

/// The audience AWS STS expects in a GitHub OIDC token.
pub const AWS_AUDIENCE: &str = "sts.amazonaws.com";

/// GitHub rejects a check run output summary longer than this many characters.
const CHECK_SUMMARY_MAX: usize = 65_535;

#[derive(Debug, thiserror::Error)]
pub enum GithubError {
    #[error("the input `{name}` must be {expected}, not {value:?}")]
    InvalidInput {
        name: &'static str,
        expected: &'static str,
        value: String,
    },
    #[error(
        "the input `cache` is empty: give the cache URL (s3://BUCKET?region=… or file:///PATH)"
    )]
    NoCache,
    #[error("could not write {what} ({}): {source}", path.display())]
    File {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{what} is not set: this must run as a step of a GitHub Actions job")]
    NotInActions { what: &'static str },
    #[error("could not read the event payload {}: {reason}", path.display())]
    Event { path: PathBuf, reason: String },
    #[error(
        "no OIDC token available for aws-role-arn: give the job `permissions: id-token: write` (ACTIONS_ID_TOKEN_REQUEST_URL is not set)"
    )]
    NoIdTokenRequest,
    #[error("the Actions token service at {url} {reason}")]
    IdToken { url: String, reason: String },
    #[error("could not assume the role {role_arn} with the job's OIDC token: {reason}")]
    AssumeRole { role_arn: String, reason: String },
    #[error("could not create the check run at {url}: {reason}")]
    CheckRun { url: String, reason: String },
}

/// A secret read from an input or a service. Its `Debug` is redacted and its memory is zeroed
/// when dropped.
#[derive(Clone, Default)]
pub struct Secret(Zeroizing<String>);

impl Secret {
    pub fn new(value: String) -> Self {
        Secret(Zeroizing::new(value))
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
    pub fn is_empty(&self) -> bool {
        self.0.trim().is_empty()
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.is_empty() {
            "<empty>"
        } else {
            "<redacted>"
        })
    }
}

/// What the workflow passed in `with:`. The runner hands each input to the step as
/// `INPUT_<NAME>`, upper-cased with hyphens kept; an unset input is empty.
#[derive(Debug, Default)]
pub struct Inputs {
    pub cache: String,
    pub signing_key: Secret,
    /// The SSM parameter the post step reads the signing key from, with the role.
    pub signing_key_parameter: Option<String>,
    pub public_keys: Vec<String>,
    pub compression: Option<String>,
    pub jobs: Option<usize>,
    pub include: Option<String>,
    pub exclude: Option<String>,
    pub skip_push: bool,
    /// Restore what the last jobs used into a local mirror before the build (default true).
    pub restore: bool,
    /// Push the build logs of what the job built (default true).
    pub build_logs: bool,
    /// `serve`: true or false, or None for `auto` (the default), which lets setup choose.
    pub serve: Option<bool>,
    /// Other teams' caches to pull from, read-only: `URL KEY`, one a line.
    pub extra_caches: Vec<String>,
    /// The price table of the request report (`aws`, `r2`, `b2` or a file), as `--pricing`.
    pub pricing: Option<String>,
    pub aws_role_arn: Option<String>,
    pub aws_region: Option<String>,
    pub github_token: Secret,
}

/// The environment variable the runner sets for an input.
pub fn input_var(name: &str) -> String {
    format!("INPUT_{}", name.replace(' ', "_").to_uppercase())
}

impl Inputs {
    /// Whether the workflow gave a signing key: its text, or the parameter that holds it.
    pub fn has_signing_key(&self) -> bool {
        !self.signing_key.is_empty() || self.signing_key_parameter.is_some()
    }

    /// Reads the inputs through `env` (`std::env::var(..).ok()` in the binary).
    pub fn read(env: impl Fn(&str) -> Option<String>) -> Result<Inputs, GithubError> {
        let text = |name: &str| {
            env(&input_var(name))
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };
        let cache = text("cache").ok_or(GithubError::NoCache)?;
        let jobs = match text("jobs") {
            None => None,
            Some(v) => Some(v.parse::<usize>().ok().filter(|n| *n > 0).ok_or(
                GithubError::InvalidInput {
                    name: "jobs",
                    expected: "a positive number",
                    value: v,
                },
            )?),
        };
        let boolean = |name: &'static str, default: bool| match text(name).as_deref() {
            None => Ok(default),
            Some("false" | "False" | "FALSE") => Ok(false),
            Some("true" | "True" | "TRUE") => Ok(true),
            Some(other) => Err(GithubError::InvalidInput {
                name,
                expected: "true or false",
                value: other.to_owned(),
            }),
        };
        let skip_push = boolean("skip-push", false)?;
        let restore = boolean("restore", true)?;
        let build_logs = boolean("build-logs", true)?;
        let serve = match text("serve").as_deref() {
            None | Some("auto" | "Auto" | "AUTO") => None,
            Some(_) => Some(
                boolean("serve", false).map_err(|_| GithubError::InvalidInput {
                    name: "serve",
                    expected: "auto, true or false",
                    value: text("serve").unwrap_or_default(),
                })?,
            ),
        };
        Ok(Inputs {
            cache,
            signing_key: Secret::new(text("signing-key").unwrap_or_default()),
            signing_key_parameter: text("signing-key-parameter"),
            public_keys: text("public-keys")
                .map(|v| v.split_whitespace().map(str::to_owned).collect())
                .unwrap_or_default(),
            compression: text("compression"),
            jobs,
            include: text("include"),
            exclude: text("exclude"),
            skip_push,
            restore,
            build_logs,
            serve,
            extra_caches: text("extra-caches")
                .map(|v| {
                    v.lines()
                        .map(str::trim)
                        .filter(|l| !l.is_empty())
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default(),
            pricing: text("pricing"),
            aws_role_arn: text("aws-role-arn"),
            aws_region: text("aws-region"),
            github_token: Secret::new(text("github-token").unwrap_or_default()),
        })
    }
}

/// Escapes a workflow command's message so that it cannot end the command early.
pub fn escape_data(text: &str) -> String {
    text.replace('%', "%25")
        .replace('\r', "%0D")
        .replace('\n', "%0A")
}

/// `::notice::`, `::warning::` or `::error::` with an escaped message.
pub fn annotation(level: &str, message: &str) -> String {
    format!("::{level}::{}", escape_data(message))
}

/// The `::add-mask::` lines that hide `secret` in the job log. Each line is masked on its own,
/// and so is the part of a `NAME:VALUE` line after the colon, so that neither the whole key
/// nor its bare base64 can appear. Short fragments are not masked: masking "1" would garble
/// the whole log without protecting anything.
pub fn mask_commands(secret: &Secret) -> Vec<String> {
    let mut values: Vec<&str> = Vec::new();
    for line in secret.expose().lines().map(str::trim) {
        if line.len() >= 4 {
            values.push(line);
        }
        if let Some((_, rest)) = line.split_once(':') {
            if rest.len() >= 8 {
                values.push(rest);
            }
        }
    }
    values.dedup();
    values
        .into_iter()
        .map(|v| format!("::add-mask::{}", escape_data(v)))
        .collect()
}

/// The AWS credentials a workflow may hand the step through its environment (`env:`) rather
/// than an input; the SDK's default chain reads them. The access key ID is not secret to AWS,
/// but it names the account's user, and the README promises every AWS credential is masked.
pub const AWS_CREDENTIAL_VARS: &[&str] = &[
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
];

/// Everything secret the step was given: the inputs signing-key and github-token, and the AWS
/// credentials in its environment, each read through `env`. Empty ones are left out.
pub fn step_secrets(env: impl Fn(&str) -> Option<String>) -> Vec<Secret> {
    ["signing-key", "github-token"]
        .into_iter()
        .map(input_var)
        .chain(AWS_CREDENTIAL_VARS.iter().map(|v| (*v).to_owned()))
        .filter_map(|name| env(&name))
        .map(Secret::new)
        .filter(|s| !s.is_empty())
        .collect()
}

/// Why this run configures the cache for pulling only.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PullOnly {
    /// A pull request whose head is in another repository: its code must never write.
    ForkPullRequest {
        head: String,
        base: String,
    },
    /// `pull_request_target` runs with the base's secrets on behalf of any pull request.
    PullRequestTarget,
    /// A `workflow_run` started by a run for another repository's code.
    ForkWorkflowRun {
        head: String,
    },
    /// A pull-request event whose payload could not be read: assumed to be a fork.
    UnreadableEvent {
        event: String,
        reason: String,
    },
    SkipPushInput,
    NoSigningKey,
    /// `aws-role-arn` is set but the run gets no OIDC token to assume it with (a job without
    /// `id-token: write`, or a run Dependabot started).
    NoIdToken,
}

impl std::fmt::Display for PullOnly {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PullOnly::ForkPullRequest { head, base } => write!(
                f,
                "this pull request comes from the fork {head}, and code from a fork must never write to the cache of {base}"
            ),
            PullOnly::PullRequestTarget => f.write_str(
                "the workflow runs on pull_request_target, which builds code a pull request may control",
            ),
            PullOnly::ForkWorkflowRun { head } => write!(
                f,
                "this workflow_run was started by a run for code from the fork {head}"
            ),
            PullOnly::UnreadableEvent { event, reason } => write!(
                f,
                "this is a {event} event whose payload could not be read ({reason}), so it is treated as coming from a fork"
            ),
            PullOnly::SkipPushInput => f.write_str("the input skip-push is true"),
            PullOnly::NoIdToken => f.write_str(
                "the run gets no OIDC token to assume aws-role-arn with (the job needs `permissions: id-token: write`; runs Dependabot starts get none)",
            ),
            PullOnly::NoSigningKey => f.write_str(
                "the input signing-key is empty (a secret this workflow does not receive, or none set)",
            ),
        }
    }
}

/// Events whose payload carries the pull request that triggered them.
const PULL_REQUEST_EVENTS: &[&str] = &[
    "pull_request",
    "pull_request_review",
    "pull_request_review_comment",
];

/// Reads the JSON at `GITHUB_EVENT_PATH`.
pub fn read_event(path: &Path) -> Result<serde_json::Value, GithubError> {
    let bytes = std::fs::read(path).map_err(|e| GithubError::Event {
        path: path.into(),
        reason: e.to_string(),
    })?;
    serde_json::from_slice(&bytes).map_err(|e| GithubError::Event {
        path: path.into(),
        reason: e.to_string(),
    })
}

fn full_name(value: &serde_json::Value, pointer: &str) -> Option<String> {
    value
        .pointer(pointer)
        .and_then(|v| v.as_str())
        .map(str::to_owned)
}

/// Whether this run may push, or why it only pulls. Checked in order of importance: a run that
/// may be acting for a fork is reported as such even when the key is empty as well.
pub fn decide(
    event_name: Option<&str>,
    event: Result<&serde_json::Value, &GithubError>,
    has_signing_key: bool,
    skip_push: bool,
) -> Option<PullOnly> {
    let event_name = event_name.unwrap_or("");
    if event_name == "pull_request_target" {
        return Some(PullOnly::PullRequestTarget);
    }
    match event {
        Ok(payload) => {
            if payload.get("pull_request").is_some_and(|p| !p.is_null()) {
                // A deleted fork has no head repository: still a fork.
                let head = full_name(payload, "/pull_request/head/repo/full_name");
                let base = full_name(payload, "/pull_request/base/repo/full_name");
                if head.is_none() || head != base {
                    return Some(PullOnly::ForkPullRequest {
                        head: head.unwrap_or_else(|| "(a deleted repository)".into()),
                        base: base.unwrap_or_else(|| "(an unknown repository)".into()),
                    });
                }
            }
            if event_name == "workflow_run" {
                let head = full_name(payload, "/workflow_run/head_repository/full_name");
                let repo = full_name(payload, "/repository/full_name");
                if head.is_none() || head != repo {
                    return Some(PullOnly::ForkWorkflowRun {
                        head: head.unwrap_or_else(|| "(an unknown repository)".into()),
                    });
                }
            }
        }
        Err(err) if PULL_REQUEST_EVENTS.contains(&event_name) || event_name == "workflow_run" => {
            return Some(PullOnly::UnreadableEvent {
                event: event_name.to_owned(),
                reason: err.to_string(),
            });
        }
        Err(_) => {}
    }
    if skip_push {
        return Some(PullOnly::SkipPushInput);
    }
    if !has_signing_key {
        return Some(PullOnly::NoSigningKey);
    }
    None
}

/// One `name=value` entry for `GITHUB_STATE`, `GITHUB_OUTPUT` or `GITHUB_ENV`; multi-line values
/// use the heredoc form with a random delimiter the value cannot contain.
pub fn file_entry(name: &str, value: &str) -> String {
    if !value.contains(['\n', '\r']) {
        return format!("{name}={value}\n");
    }
    loop {
        let mut bytes = [0u8; 12];
        // Without randomness a fixed delimiter still works unless the value contains it,
        // which the loop then catches.
        let _ = getrandom::fill(&mut bytes);
        let delimiter: String = std::iter::once("ghadelimiter_".to_owned())
            .chain(bytes.iter().map(|b| format!("{b:02x}")))
            .collect();
        if !value.contains(&delimiter) {
            return format!("{name}<<{delimiter}\n{value}\n{delimiter}\n");
        }
    }
}

/// Appends to one of the runner's step files, named by the environment variable `var`.
pub fn append_to(
    var: &'static str,
    env: impl Fn(&str) -> Option<String>,
    text: &str,
) -> Result<(), GithubError> {
    let path = env(var)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .ok_or(GithubError::NotInActions { what: var })?;
    let err = |source| GithubError::File {
        what: var,
        path: path.clone(),
        source,
    };
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .map_err(err)?;
    file.write_all(text.as_bytes()).map_err(err)
}

/// What the post step reports: in the log, the job summary and the check run.
pub enum Outcome<'a> {
    /// The push was not attempted.
    NotPushed { reason: String },
    /// The push ran (some paths may have failed).
    Pushed {
        cache: &'a str,
        report: &'a PushReport,
        skipped: &'a Skipped,
        compression: &'a Compression,
        /// The step's bucket requests and their estimated cost, if it sent any.
        requests: Option<&'a crate::cost::Report>,
    },
    /// The push could not start or stopped as a whole.
    Failed { cache: &'a str, error: String },
}

fn cell(text: &str) -> String {
    text.replace('|', "\\|").replace(['\n', '\r'], " ")
}

fn seconds(d: Duration) -> String {
    format!("{:.1} s", d.as_secs_f64())
}

/// How many rows the per-path tables show before summing up the rest.
const ROWS: usize = 10;

impl Outcome<'_> {
    /// The one-line title of the report.
    pub fn title(&self) -> String {
        match self {
            Outcome::NotPushed { .. } => "nixbucket: nothing pushed".into(),
            Outcome::Failed { .. } => "nixbucket: the push failed".into(),
            Outcome::Pushed { report, .. } => {
                let mut t = format!(
                    "nixbucket: pushed {} paths ({})",
                    report.pushed.len(),
                    human_bytes(report.file_bytes())
                );
                if !report.failed.is_empty() {
                    let _ = write!(t, ", {} failed", report.failed.len());
                }
                t
            }
        }
    }

    /// The Markdown for `GITHUB_STEP_SUMMARY` and the check run.
    pub fn markdown(&self) -> String {
        let mut md = format!("### {}\n\n", self.title());
        match self {
            Outcome::NotPushed { reason } => {
                let _ = writeln!(md, "Nothing was pushed: {}.", cell(reason));
            }
            Outcome::Failed { cache, error } => {
                let _ = writeln!(md, "The push to `{cache}` failed:\n\n```\n{error}\n```");
            }
            Outcome::Pushed {
                cache,
                report,
                skipped,
                compression,
                requests,
            } => {
                let _ = write!(
                    md,
                    "| | |\n| --- | --- |\n\
                     | cache | `{cache}` |\n\
                     | paths pushed | {} |\n\
                     | already in the cache | {} |\n\
                     | skipped | {} |\n\
                     | failed | {} |\n\
                     | bytes before compression (NAR) | {} ({} bytes) |\n\
                     | bytes uploaded ({}) | {} ({} bytes) |\n\
                     | build logs uploaded | {} |\n\
                     | time | {} |\n",
                    report.pushed.len(),
                    report.already_present,
                    skipped.len(),
                    report.failed.len(),
                    human_bytes(report.nar_bytes()),
                    report.nar_bytes(),
                    compression.as_str(),
                    human_bytes(report.file_bytes()),
                    report.file_bytes(),
                    report
                        .logs
                        .as_ref()
                        .map_or_else(|| "off".to_owned(), |l| l.uploaded.to_string()),
                    seconds(report.elapsed),
                );
                if let Some(requests) = requests {
                    let _ = writeln!(
                        md,
                        "| bucket requests | {} ({}) |",
                        requests.total_requests,
                        cell(&crate::cost::by_kind(&requests.requests))
                    );
                    let _ = writeln!(
                        md,
                        "| estimated request cost | {} |",
                        cell(&requests.cost_text())
                    );
                }
                if !report.pushed.is_empty() {
                    let mut slowest: Vec<_> = report.pushed.iter().collect();
                    slowest.sort_by(|a, b| b.elapsed.cmp(&a.elapsed).then(a.path.cmp(&b.path)));
                    md.push_str(
                        "\n#### Slowest paths\n\n| path | NAR | uploaded | time |\n| --- | --- | --- | --- |\n",
                    );
                    for p in slowest.iter().take(ROWS) {
                        let _ = writeln!(
                            md,
                            "| `{}` | {} | {} | {} |",
                            p.path,
                            human_bytes(p.nar_size),
                            human_bytes(p.file_size),
                            seconds(p.elapsed)
                        );
                    }
                }
                if !report.failed.is_empty() {
                    md.push_str("\n#### Failed\n\n| path | error |\n| --- | --- |\n");
                    rows(
                        &mut md,
                        report.failed.iter().map(|(p, e)| (p, e.to_string())),
                    );
                }
                if let Some(logs) = report.logs.as_ref().filter(|l| !l.failed_builds.is_empty()) {
                    md.push_str(
                        "\n#### Failed builds\n\n| derivation | its log |\n| --- | --- |\n",
                    );
                    rows(
                        &mut md,
                        logs.failed_builds
                            .iter()
                            .map(|drv| (drv, format!("`{}`", logs::read_command(cache, drv)))),
                    );
                }
                if !skipped.is_empty() {
                    md.push_str("\n#### Skipped\n\n| path | why |\n| --- | --- |\n");
                    rows(&mut md, skipped.iter().map(|(p, r)| (p, r.to_string())));
                }
            }
        }
        md
    }

    /// The check run's conclusion: a failed push is shown, but as neutral when the build's own
    /// result does not depend on it.
    pub fn conclusion(&self) -> &'static str {
        match self {
            Outcome::NotPushed { .. } => "skipped",
            Outcome::Failed { .. } => "failure",
            Outcome::Pushed { report, .. } if !report.failed.is_empty() => "failure",
            Outcome::Pushed { .. } => "success",
        }
    }
}

fn rows<'a>(md: &mut String, items: impl ExactSizeIterator<Item = (&'a StorePath, String)>) {
    let total = items.len();
    for (path, why) in items.take(ROWS) {
        let _ = writeln!(md, "| `{path}` | {} |", cell(&why));
    }
    if total > ROWS {
        let _ = writeln!(md, "| … and {} more | |", total - ROWS);
    }
}

/// How GitHub spells `owner/name` (`full_name`), asked of the REST API at `api` (GitHub's,
/// or an Enterprise server's): `None` when it answers that there is no such repository, which
/// is also its answer for a private one the token may not see.
pub async fn repository_full_name(
    api: &str,
    owner_and_name: &str,
    token: Option<&Secret>,
) -> Result<Option<String>, String> {
    let mut builder = octocrab::Octocrab::builder()
        .base_uri(api)
        .map_err(|e| e.to_string())?
        .set_connect_timeout(Some(Duration::from_secs(5)))
        .set_read_timeout(Some(Duration::from_secs(10)));
    if let Some(token) = token {
        builder = builder.personal_token(token.expose().to_owned());
    }
    let client = builder.build().map_err(|e| e.to_string())?;
    let url = format!("{}/repos/{owner_and_name}", api.trim_end_matches('/'));
    let response = client
        ._get(url.as_str())
        .await
        .map_err(|e| format!("could not be reached: {e}"))?;
    let status = response.status();
    let body = client
        .body_to_string(response)
        .await
        .map_err(|e| format!("sent an unreadable answer: {e}"))?;
    if status.as_u16() == 404 {
        return Ok(None);
    }
    if !status.is_success() {
        return Err(format!("answered HTTP {status}"));
    }
    #[derive(serde::Deserialize)]
    struct Repository {
        full_name: String,
    }
    let repo: Repository =
        serde_json::from_str(&body).map_err(|e| format!("answered without a name: {e}"))?;
    Ok(Some(repo.full_name))
}

fn octocrab_for(base: &str, token: &Secret) -> Result<octocrab::Octocrab, String> {
    octocrab::Octocrab::builder()
        .base_uri(base)
        .map_err(|e| e.to_string())?
        .personal_token(token.expose().to_owned())
        .set_connect_timeout(Some(Duration::from_secs(10)))
        .set_read_timeout(Some(Duration::from_secs(30)))
        .build()
        .map_err(|e| e.to_string())
}

/// The scheme and authority of a URL: what octocrab needs as a base.
fn origin(url: &str) -> Option<String> {
    let parsed = url::Url::parse(url).ok()?;
    let host = parsed.host_str()?;
    Some(match parsed.port() {
        Some(port) => format!("{}://{host}:{port}", parsed.scheme()),
        None => format!("{}://{host}", parsed.scheme()),
    })
}

/// Asks the Actions token service (`ACTIONS_ID_TOKEN_REQUEST_URL`, authorised by
/// `ACTIONS_ID_TOKEN_REQUEST_TOKEN`) for the job's OIDC token with `audience`.
pub async fn fetch_id_token(
    request_url: &str,
    request_token: &Secret,
    audience: &str,
) -> Result<Secret, GithubError> {
    let mut url = url::Url::parse(request_url).map_err(|e| GithubError::IdToken {
        url: request_url.to_owned(),
        reason: format!("has an invalid URL: {e}"),
    })?;
    url.query_pairs_mut().append_pair("audience", audience);
    // The request URL carries the run's identity in its query; name only its origin in errors.
    let shown = origin(url.as_str()).unwrap_or_default();
    let failed = |reason: String| GithubError::IdToken {
        url: shown.clone(),
        reason,
    };
    let client = octocrab_for(&shown, request_token).map_err(&failed)?;
    let response = client
        ._get(url.as_str())
        .await
        .map_err(|e| failed(format!("could not be reached: {e}")))?;
    let status = response.status();
    let body = client
        .body_to_string(response)
        .await
        .map_err(|e| failed(format!("sent an unreadable answer: {e}")))?;
    if !status.is_success() {
        return Err(failed(format!("answered HTTP {status}")));
    }
    #[derive(serde::Deserialize)]
    struct TokenAnswer {
        value: String,
    }
    let answer: TokenAnswer = serde_json::from_str(&body)
        .map_err(|e| failed(format!("answered without a token: {e}")))?;
    Ok(Secret::new(answer.value))
}

/// Writes the token to a file only this user can read, for the web-identity provider.
pub fn write_token_file(path: &Path, token: &Secret) -> Result<(), GithubError> {
    use std::os::unix::fs::OpenOptionsExt;
    let err = |source| GithubError::File {
        what: "the OIDC token file",
        path: path.into(),
        source,
    };
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(err)?;
    file.write_all(token.expose().as_bytes()).map_err(err)
}

/// Assumes `role_arn` with the OIDC token in `token_file`, through aws-config's web-identity
/// provider (AssumeRoleWithWebIdentity). The credentials last an hour: longer than a push.
pub async fn assume_role(
    token_file: &Path,
    role_arn: &str,
    session_name: &str,
    region: Option<String>,
) -> Result<aws_credential_types::Credentials, GithubError> {
    use aws_credential_types::provider::ProvideCredentials;
    let region = region.map(aws_config::Region::new);
    let provider_config = aws_config::provider_config::ProviderConfig::default()
        .with_region(region.or(Some(aws_config::Region::from_static("us-east-1"))));
    let provider = aws_config::web_identity_token::WebIdentityTokenCredentialsProvider::builder()
        .configure(&provider_config)
        .static_configuration(aws_config::web_identity_token::StaticConfiguration {
            web_identity_token_file: token_file.into(),
            role_arn: role_arn.to_owned(),
            session_name: session_name.to_owned(),
        })
        .build();
    provider
        .provide_credentials()
        .await
        .map_err(|e| GithubError::AssumeRole {
            role_arn: role_arn.to_owned(),
            reason: error_chain(&e),
        })
}

/// An error and its sources, outermost first: the SDK's outer layers say little on their own.
fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut cur = err.source();
    while let Some(e) = cur {
        let _ = write!(text, ": {e}");
        cur = e.source();
    }
    text
}

/// The request a check run is created with (REST: `POST /repos/{owner}/{repo}/check-runs`).
pub fn check_run_body(head_sha: &str, outcome: &Outcome<'_>) -> serde_json::Value {
    let mut summary = outcome.markdown();
    if summary.len() > CHECK_SUMMARY_MAX {
        let mut cut = CHECK_SUMMARY_MAX - 20;
        while !summary.is_char_boundary(cut) {
            cut -= 1;
        }
        summary.truncate(cut);
        summary.push_str("\n\n(truncated)");
    }
    serde_json::json!({
        "name": "nixbucket",
        "head_sha": head_sha,
        "status": "completed",
        "conclusion": outcome.conclusion(),
        "output": { "title": outcome.title(), "summary": summary },
    })
}

/// Posts the report as a check run on `head_sha` of `repository` (`owner/name`).
pub async fn create_check_run(
    api_url: &str,
    token: &Secret,
    repository: &str,
    head_sha: &str,
    outcome: &Outcome<'_>,
) -> Result<(), GithubError> {
    let base = api_url.trim_end_matches('/');
    let url = format!("{base}/repos/{repository}/check-runs");
    let failed = |reason: String| GithubError::CheckRun {
        url: url.clone(),
        reason,
    };
    let client = octocrab_for(base, token).map_err(&failed)?;
    let body = check_run_body(head_sha, outcome);
    let response = client
        ._post(url.as_str(), Some(&body))
        .await
        .map_err(|e| failed(format!("{e}")))?;
    let status = response.status();
    if !status.is_success() {
        let text = client.body_to_string(response).await.unwrap_or_default();
        let text: String = text.chars().take(300).collect();
        return Err(failed(format!("HTTP {status}: {text}")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn inputs_are_read_from_the_runner_s_variables() {
        let inputs = Inputs::read(env(&[
            ("INPUT_CACHE", " s3://b?region=x "),
            ("INPUT_SIGNING-KEY", "k-1:c2VjcmV0c2VjcmV0"),
            ("INPUT_PUBLIC-KEYS", "a-1:AAAA\nb-1:BBBB  c-1:CCCC"),
            ("INPUT_JOBS", ""),
            ("INPUT_SKIP-PUSH", "false"),
            ("INPUT_AWS-ROLE-ARN", "arn:aws:iam::1:role/r"),
            ("INPUT_PRICING", " r2\n"),
        ]))
        .unwrap();
        assert_eq!(inputs.pricing.as_deref(), Some("r2"));
        assert_eq!(inputs.cache, "s3://b?region=x");
        assert_eq!(inputs.public_keys, ["a-1:AAAA", "b-1:BBBB", "c-1:CCCC"]);
        assert_eq!(inputs.jobs, None);
        assert!(!inputs.skip_push);
        assert!(inputs.restore, "restore is on unless the input says false");
        assert_eq!(inputs.serve, None, "serve is auto unless the input says");
        assert_eq!(
            inputs.aws_role_arn.as_deref(),
            Some("arn:aws:iam::1:role/r")
        );
        let debug = format!("{inputs:?}");
        assert!(!debug.contains("c2VjcmV0"), "{debug}");
        assert!(debug.contains("<redacted>"), "{debug}");
    }

    #[test]
    fn bad_inputs_are_named() {
        let err =
            Inputs::read(env(&[("INPUT_CACHE", "file:///c"), ("INPUT_JOBS", "0")])).unwrap_err();
        assert!(err.to_string().contains("`jobs`"), "{err}");
        let err = Inputs::read(env(&[
            ("INPUT_CACHE", "file:///c"),
            ("INPUT_SKIP-PUSH", "yes"),
        ]))
        .unwrap_err();
        assert!(err.to_string().contains("`skip-push`"), "{err}");
        let err = Inputs::read(env(&[
            ("INPUT_CACHE", "file:///c"),
            ("INPUT_RESTORE", "no"),
        ]))
        .unwrap_err();
        assert!(err.to_string().contains("`restore`"), "{err}");
        for (text, serve) in [("auto", None), ("true", Some(true)), ("false", Some(false))] {
            let inputs = Inputs::read(env(&[("INPUT_CACHE", "file:///c"), ("INPUT_SERVE", text)]));
            assert_eq!(inputs.unwrap().serve, serve, "{text}");
        }
        let err =
            Inputs::read(env(&[("INPUT_CACHE", "file:///c"), ("INPUT_SERVE", "yes")])).unwrap_err();
        assert!(err.to_string().contains("auto, true or false"), "{err}");
        let err = Inputs::read(env(&[])).unwrap_err();
        assert!(matches!(err, GithubError::NoCache), "{err}");
    }

    #[test]
    fn masks_cover_the_key_and_its_bare_base64() {
        let masks = mask_commands(&Secret::new("k-1:c2VjcmV0c2VjcmV0\n".into()));
        assert_eq!(
            masks,
            [
                "::add-mask::k-1:c2VjcmV0c2VjcmV0",
                "::add-mask::c2VjcmV0c2VjcmV0"
            ]
        );
        assert!(mask_commands(&Secret::default()).is_empty());
    }

    #[test]
    fn step_secrets_are_the_secret_inputs_and_the_aws_environment() {
        let secrets = step_secrets(env(&[
            ("INPUT_SIGNING-KEY", "k-1:c2VjcmV0c2VjcmV0"),
            ("INPUT_GITHUB-TOKEN", ""),
            ("INPUT_CACHE", "s3://not-secret"),
            ("AWS_ACCESS_KEY_ID", "AKIAEXAMPLE"),
            ("AWS_SECRET_ACCESS_KEY", "wJalrXUtnFEMI/K7MDENG"),
            ("AWS_SESSION_TOKEN", "   "),
            ("AWS_REGION", "eu-west-1"),
        ]));
        let values: Vec<&str> = secrets.iter().map(Secret::expose).collect();
        assert_eq!(
            values,
            [
                "k-1:c2VjcmV0c2VjcmV0",
                "AKIAEXAMPLE",
                "wJalrXUtnFEMI/K7MDENG"
            ]
        );
    }

    fn payload(head: Option<&str>, base: &str) -> serde_json::Value {
        serde_json::json!({
            "pull_request": {
                "head": { "repo": head.map(|h| serde_json::json!({ "full_name": h })) },
                "base": { "repo": { "full_name": base } },
            }
        })
    }

    #[test]
    fn forks_and_pull_request_target_only_pull() {
        let fork = payload(Some("mallory/app"), "org/app");
        assert_eq!(
            decide(Some("pull_request"), Ok(&fork), true, false),
            Some(PullOnly::ForkPullRequest {
                head: "mallory/app".into(),
                base: "org/app".into()
            })
        );
        let deleted = payload(None, "org/app");
        assert!(matches!(
            decide(Some("pull_request"), Ok(&deleted), true, false),
            Some(PullOnly::ForkPullRequest { .. })
        ));
        let same = payload(Some("org/app"), "org/app");
        assert_eq!(decide(Some("pull_request"), Ok(&same), true, false), None);
        assert_eq!(
            decide(Some("pull_request_target"), Ok(&same), true, false),
            Some(PullOnly::PullRequestTarget)
        );
        let unreadable = GithubError::Event {
            path: "/e.json".into(),
            reason: "gone".into(),
        };
        assert!(matches!(
            decide(Some("pull_request"), Err(&unreadable), true, false),
            Some(PullOnly::UnreadableEvent { .. })
        ));
        assert_eq!(decide(Some("push"), Err(&unreadable), true, false), None);
        let run = serde_json::json!({
            "workflow_run": { "head_repository": { "full_name": "mallory/app" } },
            "repository": { "full_name": "org/app" },
        });
        assert!(matches!(
            decide(Some("workflow_run"), Ok(&run), true, false),
            Some(PullOnly::ForkWorkflowRun { .. })
        ));
        let push = serde_json::json!({});
        assert_eq!(
            decide(Some("push"), Ok(&push), false, false),
            Some(PullOnly::NoSigningKey)
        );
        assert_eq!(
            decide(Some("push"), Ok(&push), true, true),
            Some(PullOnly::SkipPushInput)
        );
        // A fork is reported as a fork even when the key is missing too.
        assert!(matches!(
            decide(Some("pull_request"), Ok(&fork), false, false),
            Some(PullOnly::ForkPullRequest { .. })
        ));
    }

    #[test]
    fn step_file_entries_use_a_heredoc_for_multiple_lines() {
        assert_eq!(file_entry("pushed-paths", "3"), "pushed-paths=3\n");
        let entry = file_entry("why", "a\nb");
        let (head, rest) = entry.split_once('\n').unwrap();
        let delimiter = head.strip_prefix("why<<").unwrap();
        assert_eq!(rest, format!("a\nb\n{delimiter}\n"));
    }

    #[test]
    fn the_check_run_body_has_the_rest_api_shape() {
        let outcome = Outcome::NotPushed {
            reason: "the input skip-push is true".into(),
        };
        let body = check_run_body("abc123", &outcome);
        assert_eq!(body["name"], "nixbucket");
        assert_eq!(body["head_sha"], "abc123");
        assert_eq!(body["status"], "completed");
        assert_eq!(body["conclusion"], "skipped");
        assert_eq!(body["output"]["title"], "nixbucket: nothing pushed");
        assert!(
            body["output"]["summary"]
                .as_str()
                .unwrap()
                .contains("skip-push is true")
        );
    }
}
