//! Command-line entry point: parse arguments, run one subcommand, report errors.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::command;

/// A private Nix binary cache in a bucket you own: sign and push what your CI built.
#[derive(Parser, Debug)]
#[command(name = "nixbucket", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Price the bucket requests of the run with this table: `aws` (S3 Standard, us-east-1),
    /// `r2`, `b2`, or a JSON file of your own [default: by the store's endpoint].
    #[arg(long, global = true, env = "NIXBUCKET_PRICING", value_name = "TABLE")]
    pub pricing: Option<String>,
    /// Also write the run's bucket requests, bytes and estimated cost to this file, as JSON.
    #[arg(
        long,
        global = true,
        env = "NIXBUCKET_REPORT_JSON",
        value_name = "FILE"
    )]
    pub report_json: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Create the bucket, CI's role, the signing key and the workflow of a private cache.
    Init(command::init::Args),
    /// On a teammate's machine: Nix pulls from the cache, read with your own AWS profile.
    #[command(name = "use")]
    Use(command::use_cache::Args),
    /// Create a signing key pair in Nix's own format and print the public key.
    Keygen(command::keygen::Args),
    /// Before the build: make Nix substitute from the cache, and record the store.
    Setup(command::setup::Args),
    /// After the build: sign and upload new store paths and their closure to the cache.
    Push(command::push::Args),
    /// End a job that does not push: stop the server and remove the mirror `setup` started.
    Finish(command::finish::Args),
    /// Add our signature to narinfos already in a cache (after --unsigned, or to rotate keys).
    Sign(command::sign::Args),
    /// Check that a cache is whole: signatures, NARs, references (and with --deep, NAR hashes).
    Verify(command::verify::Args),
    /// Check why the cache does not work here: Nix, the daemon, credentials, the bucket, keys.
    Doctor(command::doctor::Args),
    /// Delete closures no job used for a while, or beyond a size budget; the cache stays whole.
    Gc(command::gc::Args),
    /// The GitHub Action's steps (run by its JavaScript): `main` sets up, `post` pushes.
    #[command(hide = true)]
    GithubAction(command::github_action::Args),
    /// Serve the cache to Nix over HTTP on loopback (what `setup --serve` starts).
    Serve(command::serve::Args),
    /// Nix's post-build-hook: hand built paths to `nixbucket serve` (never fails the build).
    Hook(command::hook::Args),
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Err(err)) = cli.pricing.as_deref().map(crate::cost::choose) {
        eprintln!("error: {err:#}");
        return ExitCode::FAILURE;
    }
    let report_json = cli.report_json.clone();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("error: could not start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Init(args) => command::init::run(args).await,
            Command::Use(args) => command::use_cache::run(args).await,
            Command::Keygen(args) => command::keygen::run(args),
            Command::Setup(args) => command::setup::run(args),
            Command::Push(args) => command::push::run(args).await,
            Command::Finish(args) => command::finish::run(args),
            Command::Sign(args) => command::sign::run(args).await,
            Command::Verify(args) => command::verify::run(args).await,
            Command::Gc(args) => command::gc::run(args).await,
            Command::Doctor(args) => command::doctor::run(args).await,
            Command::GithubAction(args) => command::github_action::run(args).await,
            Command::Serve(args) => command::serve::run(args).await,
            Command::Hook(args) => Ok(command::hook::run(args)),
        }
    });
    // The requests first, so that a failed run's error is its last line.
    let reported = report_requests(report_json.as_deref());
    match result.and_then(|code| reported.map(|()| code)) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// The run's bucket requests and their estimated cost: a line at the end, and the JSON file
/// if one was asked for (written even when no request was sent, so dashboards see a zero).
fn report_requests(json: Option<&std::path::Path>) -> anyhow::Result<()> {
    let report = crate::cost::so_far();
    if let Some(report) = &report {
        eprintln!("{}", report.summary());
    }
    if let Some(path) = json {
        let report = report
            .unwrap_or_else(|| crate::cost::Report::new(crate::cache::meter::requests(), None));
        let text = serde_json::to_string_pretty(&report)? + "\n";
        crate::atomic_file::write(path, None, text.as_bytes())
            .map_err(|e| anyhow::anyhow!("could not write {}: {e}", path.display()))?;
    }
    Ok(())
}
