//! `nixbucket sign`: add our signature to narinfos (and, with `--all`, realisations) already
//! in the cache, without touching NARs — after a push with `--unsigned`, or when rotating keys (`--remove-key` drops the old).
//!
//! A rewritten narinfo gets a new LastModified, which `gc` counts as a use (so a rotation also
//! postpones collection by one `--older-than`). Each rewrite is conditional on the narinfo
//! still being the one read (S3 If-Match), so a narinfo that a `gc` running alongside deleted
//! is not written back to name a NAR that gc may delete next.

use std::process::ExitCode;

use anyhow::bail;
use futures::StreamExt;

use super::KeyArgs;
use crate::cache::OpenOptions;
use crate::nix::layout;
use crate::push::realisations;
use crate::resign::{Signed, sign_one};
use crate::store;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The binary cache, in Nix's URL syntax.
    #[arg(long, env = "NIXBUCKET_CACHE", value_name = "URL")]
    pub cache: String,
    #[command(flatten)]
    pub key: KeyArgs,
    /// Sign every narinfo and realisation in the cache.
    #[arg(long, conflicts_with = "paths")]
    pub all: bool,
    /// Store paths whose narinfos to sign (just these, not their closure).
    #[arg(value_name = "PATHS", required_unless_present = "all")]
    pub paths: Vec<String>,
    /// Drop signatures by this key name (repeatable), e.g. a rotated-out key.
    #[arg(long = "remove-key", value_name = "NAME")]
    pub remove_keys: Vec<String>,
    /// How many narinfos are rewritten at once.
    #[arg(long, short = 'j', default_value_t = 32, value_name = "N")]
    pub jobs: usize,
}

pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let url = super::parse_cache_url(&args.cache)?;
    let key = args.key.require("")?;
    let cache = super::open_cache(&url, OpenOptions::default()).await?;
    let keys: Vec<String> = if args.all {
        let prefixes = layout::narinfo_prefixes();
        let (narinfos, realisations) = tokio::try_join!(
            cache.list_level(&prefixes, args.jobs),
            cache.list(realisations::DIR)
        )?;
        narinfos
            .into_iter()
            .map(|o| o.key)
            .filter(|k| layout::is_narinfo_key(k))
            .chain(realisations.into_iter().map(|o| o.key))
            .collect()
    } else {
        args.paths
            .iter()
            .map(|p| {
                store::resolve_store_path(std::path::Path::new(p))
                    .map(|sp| layout::narinfo_key(&sp))
            })
            .collect::<Result<_, _>>()?
    };
    // A listed narinfo that is gone by the time it is read was deleted meanwhile (a gc); a
    // named one that is not there is the user's mistake.
    let (key, remove, listed) = (&key, &args.remove_keys, args.all);
    let results: Vec<(String, anyhow::Result<Signed>)> =
        futures::stream::iter(keys.iter().map(|k| {
            let cache = cache.clone();
            async move { (k.clone(), sign_one(&cache, k, key, remove, listed).await) }
        }))
        .buffer_unordered(args.jobs.max(1))
        .collect()
        .await;
    let (mut changed, mut realised, mut gone, mut failed) = (0, 0, 0, 0);
    for (k, result) in &results {
        match result {
            Ok(Signed::Rewritten) if k.starts_with(realisations::DIR) => realised += 1,
            Ok(Signed::Rewritten) => changed += 1,
            Ok(Signed::AlreadyWas) => {}
            Ok(Signed::Gone) => gone += 1,
            Err(e) => {
                failed += 1;
                eprintln!("error: {k}: {e:#}");
            }
        }
    }
    eprintln!(
        "signed {changed} narinfos{} with {}; {} already were{}{}",
        if realised > 0 {
            format!(" and {realised} realisations")
        } else {
            String::new()
        },
        key.name(),
        results.len() - changed - realised - gone - failed,
        if gone > 0 {
            format!("; {gone} deleted meanwhile (left deleted)")
        } else {
            String::new()
        },
        if failed > 0 {
            format!("; {failed} FAILED")
        } else {
            String::new()
        }
    );
    if failed > 0 {
        bail!("{failed} narinfos or realisations could not be signed");
    }
    Ok(ExitCode::SUCCESS)
}
