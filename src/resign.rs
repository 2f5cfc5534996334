//! Adding our signature to narinfos and realisations already in a cache, without touching
//! NARs, and dropping signatures by keys being rotated out. Each rewrite is conditional on the
//! document still being the one read (S3 If-Match), so a narinfo that a gc deleted meanwhile
//! is not written back to name a NAR that gc may delete next.

use anyhow::{Context, bail};
use bytes::Bytes;

use crate::cache::Cache;
use crate::nix::layout::{self, NARINFO_TYPE};
use crate::nix::{NarInfo, SecretKey};
use crate::push::realisations::{self, Realisation};

/// What became of one document.
#[derive(Debug, PartialEq, Eq)]
pub enum Signed {
    Rewritten,
    AlreadyWas,
    /// Deleted after the listing or the first read (a gc running alongside): not written back.
    Gone,
}

/// A document in a cache that carries signatures.
trait Signable: Sized {
    const TYPE: &'static str;
    fn read(key: &str, bytes: &[u8]) -> anyhow::Result<Self>;
    fn signatures(&self) -> Vec<String>;
    fn remove_signatures(&mut self, key_name: &str);
    fn sign(&mut self, key: &SecretKey);
    fn body(&self) -> Bytes;
}

impl Signable for NarInfo {
    const TYPE: &'static str = NARINFO_TYPE;
    fn read(_key: &str, bytes: &[u8]) -> anyhow::Result<Self> {
        layout::read_narinfo(bytes, None).context("not a valid narinfo")
    }
    fn signatures(&self) -> Vec<String> {
        self.info.signatures.iter().map(|s| s.to_string()).collect()
    }
    fn remove_signatures(&mut self, key_name: &str) {
        self.info.remove_signatures(key_name);
    }
    fn sign(&mut self, key: &SecretKey) {
        self.info.sign(key);
    }
    fn body(&self) -> Bytes {
        self.to_string().into()
    }
}

impl Signable for Realisation {
    const TYPE: &'static str = realisations::TYPE;
    fn read(key: &str, bytes: &[u8]) -> anyhow::Result<Self> {
        realisations::read(key, bytes)
            .map_err(|why| anyhow::anyhow!("not a valid realisation: {why}"))
    }
    fn signatures(&self) -> Vec<String> {
        Realisation::signatures(self)
    }
    fn remove_signatures(&mut self, key_name: &str) {
        Realisation::remove_signatures(self, key_name);
    }
    fn sign(&mut self, key: &SecretKey) {
        Realisation::sign(self, key);
    }
    fn body(&self) -> Bytes {
        Realisation::body(self)
    }
}

/// Rewrites one narinfo or realisation (by its key) if its signatures change (`listed`: the
/// key came from the listing, not from the user). The write is conditional on the document
/// being the one read: when another writer changed it meanwhile, it is read and signed again,
/// and when it vanished (gc deleted it) it stays deleted, since writing it back would name a
/// NAR that gc may delete next.
pub async fn sign_one(
    cache: &Cache,
    key_name: &str,
    key: &SecretKey,
    remove: &[String],
    listed: bool,
) -> anyhow::Result<Signed> {
    if key_name.starts_with(realisations::DIR) {
        sign_document::<Realisation>(cache, key_name, key, remove, listed).await
    } else {
        sign_document::<NarInfo>(cache, key_name, key, remove, listed).await
    }
}

async fn sign_document<D: Signable>(
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
        let mut document = D::read(key_name, &bytes)?;
        let before = document.signatures();
        for name in remove {
            document.remove_signatures(name);
        }
        document.sign(key);
        if document.signatures() == before {
            return Ok(Signed::AlreadyWas);
        }
        if cache
            .put_if_version(key_name, document.body(), D::TYPE, &version)
            .await?
        {
            return Ok(Signed::Rewritten);
        }
    }
    bail!("changed by another writer three times while being signed; run sign again")
}
