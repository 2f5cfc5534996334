//! Adding our signature to narinfos already in a cache, without touching NARs, and dropping
//! signatures by keys being rotated out. Each rewrite is conditional on the narinfo still
//! being the one read (S3 If-Match), so a narinfo that a gc deleted meanwhile is not written
//! back to name a NAR that gc may delete next.

use anyhow::{Context, bail};

use crate::cache::Cache;
use crate::nix::SecretKey;
use crate::nix::layout;

/// What became of one narinfo.
#[derive(Debug, PartialEq, Eq)]
pub enum Signed {
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
pub async fn sign_one(
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
        let mut info = layout::read_narinfo(&bytes, None).context("not a valid narinfo")?;
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
            .put_if_version(key_name, body, layout::NARINFO_TYPE, &version)
            .await?
        {
            return Ok(Signed::Rewritten);
        }
    }
    bail!("changed by another writer three times while being signed; run sign again")
}
