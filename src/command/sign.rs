//! `nixbucket sign`: add our signature to narinfos already in the cache, without touching
//! NARs — after a push with `--unsigned`, or when rotating keys (`--remove-key` drops the old).
//!
//! A rewritten narinfo gets a new LastModified, which `gc` counts as a use (so a rotation also
//! postpones collection by one `--older-than`). Each rewrite is conditional on the narinfo
//! still being the one read (S3 If-Match), so a narinfo that a `gc` running alongside deleted
//! is not written back to name a NAR that gc may delete next.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use futures::StreamExt;

use crate::cache::{Cache, OpenOptions};
use crate::command::signing_key;
use crate::nix::{NarInfo, SecretKey};
use crate::push::narinfo_key;
use crate::store;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The binary cache, in Nix's URL syntax.
    #[arg(long, env = "NIXBUCKET_CACHE", value_name = "URL")]
    pub cache: String,
    /// File holding the secret key to sign with; without it, $NIXBUCKET_SIGNING_KEY.
    #[arg(long, env = "NIXBUCKET_SIGNING_KEY_FILE", value_name = "FILE")]
    pub signing_key_file: Option<PathBuf>,
    /// Sign every narinfo in the cache.
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
    let Some(key) = signing_key::load(args.signing_key_file.as_deref())? else {
        bail!(
            "no signing key: pass --signing-key-file FILE or set ${}",
            signing_key::ENV
        );
    };
    let cache = super::open_cache(&url, OpenOptions::default()).await?;
    let keys: Vec<String> = if args.all {
        cache
            .list_level(&crate::cache::narinfo_prefixes(), args.jobs)
            .await?
            .into_iter()
            .map(|o| o.key)
            .filter(|k| crate::cache::is_narinfo_key(k))
            .collect()
    } else {
        args.paths
            .iter()
            .map(|p| store::resolve_store_path(std::path::Path::new(p)).map(|sp| narinfo_key(&sp)))
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
    let (mut changed, mut gone, mut failed) = (0, 0, 0);
    for (k, result) in &results {
        match result {
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
        "signed {changed} narinfos with {}; {} already were{}{}",
        key.name(),
        results.len() - changed - gone - failed,
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
        bail!("{failed} narinfos could not be signed");
    }
    Ok(ExitCode::SUCCESS)
}

/// What became of one narinfo.
#[derive(Debug, PartialEq, Eq)]
enum Signed {
    Rewritten,
    AlreadyWas,
    /// Deleted after the listing or the first read (a gc running alongside): not written back.
    Gone,
}

/// Rewrites one narinfo if its signatures change (`listed`: the key came from the listing,
/// not from the user). The write is conditional on the narinfo being the one read: when
/// another writer changed it meanwhile, it is read and signed again, and when it vanished
/// (gc deleted it) it stays deleted, since writing it back would name a NAR that gc may
/// delete next.
async fn sign_one(
    cache: &Cache,
    key_name: &str,
    key: &SecretKey,
    remove: &[String],
    listed: bool,
) -> anyhow::Result<Signed> {
    for attempt in 0..3 {
        let Some((bytes, version)) = cache.get_versioned(key_name).await? else {
            if attempt == 0 && !listed {
                bail!("not in the cache");
            }
            return Ok(Signed::Gone);
        };
        let text = std::str::from_utf8(&bytes).context("not UTF-8")?;
        let mut info = NarInfo::parse(text).context("not a valid narinfo")?;
        let before = info.signatures.clone();
        for name in remove {
            info.remove_signatures(name);
        }
        info.sign(key);
        if info.signatures == before {
            return Ok(Signed::AlreadyWas);
        }
        let body = info.to_string().into();
        if cache
            .put_if_version(key_name, body, "text/x-nix-narinfo", &version)
            .await?
        {
            return Ok(Signed::Rewritten);
        }
    }
    bail!("changed by another writer three times while being signed; run sign again")
}
