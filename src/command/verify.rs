//! `nixbucket verify`: check that a cache is whole, the way a consumer relies on it: every
//! narinfo parses, is signed by a trusted key, names a NAR that exists with the stated size, and
//! every reference has a narinfo. `--deep` also downloads each NAR and checks its hash.

use std::process::ExitCode;

use anyhow::{Context, bail};

use crate::cache::OpenOptions;
use crate::nix::PublicKey;
use crate::verify::verify;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The binary cache, in Nix's URL syntax.
    #[arg(long, env = "NIXBUCKET_CACHE", value_name = "URL")]
    pub cache: String,
    /// Key(s) a narinfo must be signed with, `NAME:BASE64` (repeatable). Without any, signatures
    /// are not checked.
    #[arg(long = "public-key", value_name = "KEY")]
    pub public_keys: Vec<String>,
    /// Also download every NAR, decompress it, and compare its hash and size with the narinfo.
    #[arg(long)]
    pub deep: bool,
    /// How many objects are checked at once.
    #[arg(long, short = 'j', default_value_t = 32, value_name = "N")]
    pub jobs: usize,
}

pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let url = super::parse_cache_url(&args.cache)?;
    let keys = args
        .public_keys
        .iter()
        .map(|k| {
            PublicKey::parse(k)
                .with_context(|| format!("--public-key {k:?} is not a Nix public key"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let cache = super::open_cache(&url, OpenOptions::default()).await?;
    let report = verify(&cache, &keys, args.deep, args.jobs.max(1)).await?;
    for problem in &report.problems {
        println!("{problem}");
    }
    eprintln!(
        "checked {} narinfos{}{}: {} problems",
        report.narinfos,
        if args.deep { " and their NARs" } else { "" },
        match report.realisations {
            0 => String::new(),
            n => format!(" and {n} realisations"),
        },
        report.problems.len()
    );
    if report.problems.is_empty() {
        Ok(ExitCode::SUCCESS)
    } else {
        bail!("the cache {url} is not whole")
    }
}
