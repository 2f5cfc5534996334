//! `nixbucket sign`: add our signature to narinfos (and, with `--all`, realisations) already
//! in the cache, without touching NARs — after a push with `--unsigned`, or when rotating keys (`--remove-key` drops the old).
//!
//! Our signature makes Nix trust a document, and anyone who can write to the bucket can put
//! one there. So a document is signed only when something the operator trusts vouches for it:
//! a signature by a key they name (`--trusted-key`, and our own key's public half), or for a
//! named path, the local store's record of it. `--sign-unverified` signs anything, and says
//! what that trusts.
//!
//! A rewritten narinfo gets a new LastModified, which `gc` counts as a use (so a rotation also
//! postpones collection by one `--older-than`). Each rewrite is conditional on the narinfo
//! still being the one read (S3 If-Match), so a narinfo that a `gc` running alongside deleted
//! is not written back to name a NAR that gc may delete next.

use std::process::ExitCode;

use anyhow::{Context, bail};
use futures::StreamExt;

use super::KeyArgs;
use crate::cache::OpenOptions;
use crate::nix::layout;
use crate::nix::{PublicKey, SecretKey};
use crate::push::realisations;
use crate::resign::{Signed, Signing, Vouch, sign_one};
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
    /// A public key (`NAME:BASE64`, repeatable) whose signature vouches for a document: with
    /// --all, only narinfos and realisations that verify under one of these, or under the
    /// signing key's own public half, are signed (when rotating keys, name the old key here).
    #[arg(long = "trusted-key", value_name = "KEY")]
    pub trusted_keys: Vec<String>,
    /// Also sign narinfos and realisations that no trusted key vouches for, as after a push
    /// with --unsigned, and named paths that are not in the local store. This trusts whoever
    /// could write to the bucket: whatever any job or person with write access put there
    /// becomes trusted by every Nix that trusts the signing key.
    #[arg(long)]
    pub sign_unverified: bool,
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
        let (narinfos, realisations, traces) = tokio::try_join!(
            cache.list_level(&prefixes, args.jobs),
            cache.list(realisations::DIR),
            cache.list(realisations::BUILD_TRACE_DIR)
        )?;
        narinfos
            .into_iter()
            .map(|o| o.key)
            .filter(|k| layout::is_narinfo_key(k))
            .chain(realisations.into_iter().chain(traces).map(|o| o.key))
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
    let vouchers = vouchers(&args, &key, keys.len())?;
    // A listed narinfo that is gone by the time it is read was deleted meanwhile (a gc); a
    // named one that is not there is the user's mistake.
    let (remove, listed) = (&args.remove_keys, args.all);
    let key = &key;
    let results: Vec<(String, anyhow::Result<Signed>)> =
        futures::stream::iter(keys.iter().zip(&vouchers).map(|(k, vouch)| {
            let cache = cache.clone();
            async move {
                let signing = Signing { key, remove, vouch };
                (k.clone(), sign_one(&cache, k, &signing, listed).await)
            }
        }))
        .buffer_unordered(args.jobs.max(1))
        .collect()
        .await;
    let (mut changed, mut realised, mut gone, mut failed, mut unvouched) = (0, 0, 0, 0, 0);
    let mut unreadable = 0;
    for (k, result) in &results {
        match result {
            Ok(Signed::Rewritten) if realisations::is_key(k) => realised += 1,
            Ok(Signed::Rewritten) => changed += 1,
            Ok(Signed::AlreadyWas) => {}
            Ok(Signed::Gone) => gone += 1,
            Ok(Signed::NotVouched) if !args.all => {
                failed += 1;
                eprintln!(
                    "error: {k}: not signed: it does not describe the path in the local store \
                     (NarHash, NarSize or references differ, or the path is not there); pass \
                     --sign-unverified to sign it anyway"
                );
            }
            Ok(Signed::NotVouched) => unvouched += 1,
            Ok(Signed::Unreadable(why)) => {
                unreadable += 1;
                eprintln!("warning: {k}: left unsigned: {why}");
            }
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
        results.len() - changed - realised - gone - failed - unvouched - unreadable,
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
    if unreadable > 0 {
        eprintln!(
            "warning: {unreadable} realisations were left unsigned: this nixbucket does not \
             read their form (a newer Nix's layout, or a damaged file); a Nix that needs them \
             builds those outputs again"
        );
    }
    if unvouched > 0 {
        eprintln!(
            "warning: {unvouched} narinfos or realisations were left unsigned: no signature by a \
             trusted key ({}) vouches for them, and anyone who can write to the bucket could \
             have put them there. Name the key that signed them with --trusted-key, or, after \
             a push with --unsigned, pass --sign-unverified",
            trusted_names(&args, key)
        );
    }
    if failed > 0 {
        bail!("{failed} narinfos or realisations could not be signed");
    }
    Ok(ExitCode::SUCCESS)
}

/// What must vouch for each of the `count` documents of `args`, in order: the trusted keys
/// for a listing; the local store's record for a named path (a path not in the store is
/// vouched for by nothing); nothing at all with --sign-unverified.
fn vouchers(args: &Args, key: &SecretKey, count: usize) -> anyhow::Result<Vec<Vouch>> {
    if args.sign_unverified {
        return Ok(vec![Vouch::Anything; count]);
    }
    if args.all {
        let mut keys = vec![key.to_public()];
        for text in &args.trusted_keys {
            keys.push(
                PublicKey::parse(text)
                    .with_context(|| format!("--trusted-key {text:?} is not a Nix public key"))?,
            );
        }
        return Ok(vec![Vouch::Keys(keys); count]);
    }
    let paths: Vec<_> = args
        .paths
        .iter()
        .map(|p| store::resolve_store_path(std::path::Path::new(p)))
        .collect::<Result<_, _>>()?;
    let local = store::query_valid_path_info(&paths)?;
    Ok(paths
        .iter()
        .map(|path| match local.iter().find(|info| &info.path == path) {
            Some(info) => Vouch::Local(info.clone()),
            None => Vouch::Keys(Vec::new()),
        })
        .collect())
}

/// The names of the keys whose signatures vouch, for messages.
fn trusted_names(args: &Args, key: &SecretKey) -> String {
    std::iter::once(key.name().to_owned())
        .chain(
            args.trusted_keys
                .iter()
                .map(|k| k.split(':').next().unwrap_or(k).to_owned()),
        )
        .collect::<Vec<_>>()
        .join(", ")
}
