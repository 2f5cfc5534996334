//! `nixbucket init`: the bucket, the CI role, the signing key and the workflow of a private
//! cache, from one command. It shows its plan first and changes only what the plan names; a
//! second run finds it all done and changes nothing.

use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};

use crate::cache::CacheUrl;
use crate::init::aws::{Names, Setup};
use crate::init::workflow::{Access, WORKFLOW_PATH, Workflow};
use crate::init::{GithubRepo, State};

/// The Action's repository, as workflows name it.
const ACTION_REPOSITORY: &str = "nixbucket/nixbucket";

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The cache to create or check: `s3://BUCKET?region=REGION` on AWS, or
    /// `s3://BUCKET?endpoint=…` on R2, B2, Garage or MinIO (bucket and lifecycle only; the
    /// rest is printed for you to do).
    #[arg(long, env = "NIXBUCKET_CACHE", value_name = "URL")]
    pub cache: String,
    /// The GitHub repository whose CI fills the cache [default: the checkout's `origin`].
    /// Write it in the case GitHub shows: the role's trust policy compares case-sensitively.
    #[arg(long, value_name = "OWNER/REPO")]
    pub github: Option<String>,
    /// Print the plan and change nothing.
    #[arg(long)]
    pub plan: bool,
    /// Make the changes without asking (needed when stdin is not a terminal).
    #[arg(long, short = 'y')]
    pub yes: bool,
    /// The commit of nixbucket's Action the workflow uses [default: the commit this binary
    /// was released from, else the tag v<version>, which you should pin to its commit].
    #[arg(long, value_name = "COMMIT")]
    pub action_ref: Option<String>,
    /// Where the workflow goes [default: .github/workflows/nix.yml in the checkout]. An
    /// existing file is never replaced: the lines to merge into it are printed instead.
    #[arg(long, value_name = "FILE")]
    pub workflow: Option<PathBuf>,
}

pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let url = super::parse_cache_url(&args.cache)?;
    let CacheUrl::S3 { bucket, .. } = &url else {
        bail!(
            "init sets up s3:// caches; a file:// cache needs no setting up (use `nixbucket setup` in the job)"
        );
    };
    let checkout = checkout_root();
    let repo = match &args.github {
        Some(text) => GithubRepo::parse(text)
            .with_context(|| format!("--github {text:?} is not OWNER/REPO"))?,
        None => origin_repo(&checkout)?,
    };
    let repo = spelled_as_github_does(repo).await;
    let action = action_ref(args.action_ref.as_deref())?;
    let names = Names::new(repo, bucket, &super::config_dir()?);
    let workflow_path = args
        .workflow
        .clone()
        .unwrap_or_else(|| checkout.join(WORKFLOW_PATH));

    let setup = Setup::connect(&url).await?;
    let found = setup.inspect(&names).await?;
    let mut plan = found.plan(&names, setup.has_iam());

    // The URL CI and teammates use: with the region init found, since neither runs with this
    // shell's AWS configuration, and without this user's profile.
    let mut shared_url = url.clone();
    if let CacheUrl::S3 {
        region, profile, ..
    } = &mut shared_url
    {
        *region = Some(found.region.clone());
        *profile = None;
    }
    // The workflow file (`whole`), or the lines of its job to merge into an existing one.
    let workflow_text = |key: &crate::nix::PublicKey, role_arn: Option<&str>, whole: bool| {
        let (url, key) = (shared_url.to_string(), key.to_string());
        let workflow = workflow_for(&url, &names, &found.region, &action, &key, role_arn);
        if whole {
            workflow.file()
        } else {
            workflow.job_lines()
        }
    };
    // The workflow's text needs the role and the key; when both exist already it is known now.
    let known_workflow = match (&found.key, found.role.as_ref(), setup.has_iam()) {
        (Some(key), Some((arn, _)), true) => Some(workflow_text(key, Some(arn), true)),
        (Some(key), _, false) => Some(workflow_text(key, None, true)),
        _ => None,
    };
    let existing = std::fs::read_to_string(&workflow_path).ok();
    plan.push(
        format!("workflow {}", workflow_path.display()),
        match (&existing, &known_workflow) {
            (Some(have), Some(want)) if have == want => State::Done,
            (Some(_), _) => State::Manual(
                "it exists and is not replaced: merge the lines printed at the end".into(),
            ),
            (None, _) => State::Change("write it".into()),
        },
    );

    println!(
        "init: s3://{bucket} ({}) for the GitHub repository {}{}",
        found.region,
        names.repo,
        found
            .identity
            .as_deref()
            .map(|id| format!(", as {id}"))
            .unwrap_or_default()
    );
    print!("{plan}");
    let changes = plan.changes();
    if changes == 0 {
        println!("init: nothing to change");
    } else if args.plan {
        println!("init: {changes} change(s) planned; run without --plan to make them");
        return Ok(ExitCode::SUCCESS);
    } else if !confirmed(args.yes, changes)? {
        println!("init: nothing changed");
        return Ok(ExitCode::FAILURE);
    }

    let outcome = if changes == 0 && known_workflow.is_some() {
        None
    } else {
        Some(setup.apply(&found, &names).await?)
    };
    let (public_key, role_arn) = match &outcome {
        Some(o) => (o.public_key.clone(), o.role_arn.clone()),
        None => (
            found.key.clone().context("no key was found")?,
            found.role.as_ref().map(|(arn, _)| arn.clone()),
        ),
    };
    let text = workflow_text(&public_key, role_arn.as_deref(), true);
    let workflow = match &existing {
        None => {
            write_workflow(&workflow_path, &text)?;
            format!("wrote {}: commit it", workflow_path.display())
        }
        Some(have) if *have == text => format!("{} is up to date", workflow_path.display()),
        Some(_) => {
            let lines = workflow_text(&public_key, role_arn.as_deref(), false);
            println!(
                "\n{} exists, so init did not touch it. Give the job that builds these lines \
                 (its permissions, then the steps before your build):\n\n{lines}",
                workflow_path.display()
            );
            format!("merge the lines above into {}", workflow_path.display())
        }
    };
    println!("\ninit: done.");
    for note in outcome.iter().flat_map(|o| &o.notes) {
        println!("  left to you: {note}");
    }
    if let Some(arn) = &role_arn {
        println!("  role:        {arn}");
        println!(
            "  signing key: in the SSM parameter {}, read by that role only",
            names.key_parameter
        );
    } else {
        println!("  signing key: {} (mode 0600)", names.local_key.display());
    }
    println!("  public key:  {public_key}");
    println!("  workflow:    {workflow}");
    println!(
        "  on a teammate's machine, with their own AWS profile: nixbucket use --cache '{shared_url}' --public-key {public_key}"
    );
    Ok(ExitCode::SUCCESS)
}

fn workflow_for<'a>(
    url: &'a str,
    names: &'a Names,
    region: &'a str,
    action: &'a str,
    public_key: &'a str,
    role_arn: Option<&'a str>,
) -> Workflow<'a> {
    Workflow {
        cache_url: url,
        public_key,
        action,
        access: match role_arn {
            Some(role_arn) => Access::Role {
                role_arn,
                region,
                key_parameter: &names.key_parameter,
            },
            None => Access::Secrets,
        },
    }
}

fn write_workflow(path: &Path, text: &str) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("could not create {}", dir.display()))?;
    }
    crate::atomic_file::write(path, Some(0o644), text.as_bytes())
        .with_context(|| format!("could not write the workflow {}", path.display()))
}

/// Whether to go ahead: `--yes`, or a `y` typed at the terminal.
fn confirmed(yes: bool, changes: usize) -> anyhow::Result<bool> {
    if yes {
        return Ok(true);
    }
    if !std::io::stdin().is_terminal() {
        bail!(
            "init would make {changes} change(s) and stdin is not a terminal to ask on: \
             run it with --yes to make them, or --plan to only see them"
        );
    }
    print!("Make these {changes} change(s)? [y/N] ");
    std::io::stdout().flush()?;
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    Ok(matches!(answer.trim(), "y" | "Y" | "yes"))
}

/// The checkout's top directory, else the current one.
fn checkout_root() -> PathBuf {
    std::process::Command::new("git")
        .args(["rev-parse", "--show-toplevel"])
        .stderr(std::process::Stdio::null())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| PathBuf::from(s.trim_end()))
        .unwrap_or_else(|| PathBuf::from("."))
}

fn origin_repo(checkout: &Path) -> anyhow::Result<GithubRepo> {
    let out = std::process::Command::new("git")
        .arg("-C")
        .arg(checkout)
        .args(["remote", "get-url", "origin"])
        .output()
        .context("could not run git to read the checkout's origin")?;
    let url = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    if !out.status.success() || url.is_empty() {
        bail!(
            "no GitHub repository: this is not a checkout with an `origin` remote; pass --github OWNER/REPO"
        );
    }
    GithubRepo::from_remote(&url).with_context(|| {
        format!(
            "the checkout's origin ({url}) is not a github.com repository; pass --github OWNER/REPO"
        )
    })
}

/// The repository as GitHub spells it: the token's `sub` claim carries that spelling, and the
/// trust policy compares it case-sensitively, so `acme/widget` from a clone URL would lock out
/// every run of `Acme/Widget`. Asked of `$GITHUB_API_URL` (else api.github.com) with
/// `$GITHUB_TOKEN` or `$GH_TOKEN` if set; when it cannot tell, the name stays as given, with a
/// warning.
async fn spelled_as_github_does(repo: GithubRepo) -> GithubRepo {
    let api = std::env::var("GITHUB_API_URL")
        .ok()
        .filter(|a| !a.is_empty())
        .unwrap_or_else(|| "https://api.github.com".to_owned());
    let token = ["GITHUB_TOKEN", "GH_TOKEN"]
        .iter()
        .find_map(|v| std::env::var(v).ok().filter(|t| !t.is_empty()))
        .map(crate::ci::github::Secret::new);
    let unchecked = |why: String| {
        eprintln!(
            "warning: could not ask GitHub how it spells {repo} ({why}); the role trusts \
             repo:{repo}:* exactly as written, and GitHub's tokens name the repository in \
             GitHub's own case: check it, or pass --github OWNER/REPO as GitHub shows it"
        );
    };
    match crate::ci::github::repository_full_name(&api, &repo.to_string(), token.as_ref()).await {
        Ok(Some(name)) if name == repo.to_string() => repo,
        Ok(Some(name)) => match GithubRepo::parse(&name) {
            Some(spelled) if name.eq_ignore_ascii_case(&repo.to_string()) => {
                println!(
                    "init: GitHub spells the repository {spelled}; the role trusts that spelling"
                );
                spelled
            }
            // A rename or a transfer: GitHub redirects, and the token names the new home.
            Some(moved) => {
                println!("init: {repo} is now {moved} on GitHub; the role trusts {moved}");
                moved
            }
            None => {
                unchecked(format!("it answered the name {name:?}"));
                repo
            }
        },
        Ok(None) => {
            unchecked(format!(
                "{api} knows no such repository; a private one needs $GITHUB_TOKEN or $GH_TOKEN"
            ));
            repo
        }
        Err(why) => {
            unchecked(format!("{api} {why}"));
            repo
        }
    }
}

/// `nixbucket/nixbucket@…` as the workflow's `uses:`.
fn action_ref(given: Option<&str>) -> anyhow::Result<String> {
    let version = env!("CARGO_PKG_VERSION");
    let commit = given.or(option_env!("NIXBUCKET_RELEASE_COMMIT"));
    match commit {
        Some(c) if c.len() == 40 && c.bytes().all(|b| b.is_ascii_hexdigit()) => {
            Ok(format!("{ACTION_REPOSITORY}@{c} # v{version}"))
        }
        Some(c) => bail!("--action-ref {c:?} is not a commit (40 hex digits)"),
        None => {
            eprintln!(
                "warning: the workflow uses the Action at the tag v{version}; pin it to that \
                 tag's commit (--action-ref COMMIT), as zizmor and GitHub's hardening guide ask"
            );
            Ok(format!("{ACTION_REPOSITORY}@v{version}"))
        }
    }
}
