//! `nixbucket doctor`: one line per check of the cache on this machine, each failure with the
//! line that fixes it; non-zero exit when something stops the cache from working.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;

use super::KeyArgs;
use crate::doctor::{self, Options};
use crate::nix::PublicKey;
use crate::state::{self, State};

#[derive(clap::Args, Debug)]
#[command(mut_arg("signing_key_file", |a| a.help(
    "Secret key file push signs with: its public half is checked against the cache's \
     signatures, and named in the fix when Nix trusts another key (only the public half is \
     ever printed)"
)))]
pub struct Args {
    /// The cache, in Nix's URL syntax: `s3://BUCKET?region=…` or `file:///some/dir`
    /// [default: the cache the last `setup` recorded].
    #[arg(long, env = "NIXBUCKET_CACHE", value_name = "URL")]
    pub cache: Option<String>,
    /// Public key(s) the cache's narinfos should verify with, `NAME:BASE64` [default: the keys
    /// Nix trusts].
    #[arg(
        long = "public-key",
        env = "NIXBUCKET_PUBLIC_KEYS",
        value_delimiter = ' ',
        value_name = "KEY"
    )]
    pub public_keys: Vec<String>,
    #[command(flatten)]
    pub key: KeyArgs,
    /// The URL Nix reads the cache from, when it is neither the cache URL nor a server setup
    /// started (a public HTTPS endpoint in front of the bucket).
    #[arg(long, value_name = "URL")]
    pub substituter: Option<String>,
    /// The cache is meant to be readable by anyone: an anonymous read is then no failure.
    #[arg(long)]
    pub public: bool,
    /// Do not write the probe object (`nixbucket-doctor-probe-…`, deleted at once) that tells
    /// whether the credentials may push.
    #[arg(long)]
    pub no_write: bool,
    /// Do not fetch a sample path through Nix (it is deleted from the store again after).
    #[arg(long)]
    pub no_fetch: bool,
    /// Print the checks as a JSON array of {name, status, detail, fix}.
    #[arg(long)]
    pub json: bool,
    /// The state file of the last `setup` [default: as setup's].
    #[arg(long, env = "NIXBUCKET_STATE_FILE", value_name = "FILE")]
    pub state_file: Option<PathBuf>,
}

impl Args {
    fn options(self) -> anyhow::Result<Options> {
        let state_path = self.state_file.clone().unwrap_or_else(state::default_path);
        let recorded = State::load(&state_path).ok();
        let cache = self
            .cache
            .clone()
            .or_else(|| recorded.as_ref().map(|s| s.cache.clone()));
        let url = cache.as_deref().map(super::parse_cache_url).transpose()?;
        let keys = self
            .public_keys
            .iter()
            .filter(|k| !k.trim().is_empty())
            .map(|k| {
                PublicKey::parse(k)
                    .with_context(|| format!("--public-key {k:?} is not a Nix public key"))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let signer = self.key.load()?.map(|secret| secret.to_public());
        let served_port = recorded
            .as_ref()
            .filter(|s| cache.as_deref() == Some(s.cache.as_str()))
            .and_then(|s| s.serve.as_ref())
            .map(|s| s.port);
        Ok(Options {
            url,
            substituter: self.substituter,
            keys,
            signer,
            public: self.public,
            no_write: self.no_write,
            no_fetch: self.no_fetch,
            served_port,
        })
    }
}

pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let json = args.json;
    let checks = doctor::run(&args.options()?).await;
    if json {
        println!("{}", serde_json::to_string_pretty(&checks)?);
    } else {
        for check in &checks {
            println!("{check}");
        }
    }
    Ok(match doctor::any_failed(&checks) {
        true => ExitCode::FAILURE,
        false => ExitCode::SUCCESS,
    })
}
