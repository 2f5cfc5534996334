//! One module per subcommand, each with a clap `Args` struct and a `run` function.

pub mod gc;
pub mod github_action;
pub mod hook;
pub mod keygen;
pub mod push;
pub mod serve;
pub mod setup;
pub mod sign;
mod signing_key;
pub mod verify;

use anyhow::Context;

use crate::cache::{Cache, CacheUrl, OpenOptions};

/// The `--cache` argument as a cache URL; the error quotes what the user typed.
pub(crate) fn parse_cache_url(text: &str) -> anyhow::Result<CacheUrl> {
    text.parse()
        .with_context(|| format!("invalid cache URL {text:?}"))
}

/// Opens the cache; the error names it.
pub(crate) async fn open_cache(url: &CacheUrl, opts: OpenOptions) -> anyhow::Result<Cache> {
    Cache::open_with(url, opts)
        .await
        .with_context(|| format!("could not open the cache {url}"))
}
