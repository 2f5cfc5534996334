//! Adding our signature to narinfos and realisations already in a cache, without touching
//! NARs, and dropping signatures by keys being rotated out. Each rewrite is conditional on the
//! document still being the one read (S3 If-Match), so a narinfo that a gc deleted meanwhile
//! is not written back to name a NAR that gc may delete next.

use anyhow::{Context, bail};
use bytes::Bytes;

use crate::cache::Cache;
use crate::nix::layout::{self, NARINFO_TYPE};
use crate::nix::{NarInfo, PathInfo, PublicKey, SecretKey};
use crate::push::realisations::{self, Realisation};

/// What became of one document.
#[derive(Debug, PartialEq, Eq)]
pub enum Signed {
    Rewritten,
    AlreadyWas,
    /// Deleted after the listing or the first read (a gc running alongside): not written back.
    Gone,
    /// Nothing the operator trusts vouches for it: left as it is.
    NotVouched,
    /// A realisation in a form this nixbucket does not read (a newer Nix's layout, or a
    /// damaged file): left as it is, with the reason.
    Unreadable(String),
}

/// What must vouch for a document before our signature goes on it. Anyone who can write to
/// the bucket can put a narinfo or realisation there; signing it turns that write access into
/// a signature every Nix that trusts our key accepts.
#[derive(Clone, Debug)]
pub enum Vouch {
    /// A signature that verifies under one of these keys.
    Keys(Vec<PublicKey>),
    /// The local store's record of the path: NarHash, NarSize and references equal.
    Local(PathInfo),
    /// Nothing: the operator said so (`--sign-unverified`).
    Anything,
}

/// A document in a cache that carries signatures.
trait Signable: Sized {
    const TYPE: &'static str;
    fn read(key: &str, bytes: &[u8]) -> anyhow::Result<Self>;
    /// Whether `vouch` vouches for it as it is now.
    fn vouched(&self, vouch: &Vouch) -> bool;
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
    fn vouched(&self, vouch: &Vouch) -> bool {
        match vouch {
            Vouch::Keys(keys) => self.info.verify(keys),
            Vouch::Local(local) => {
                let sorted = |refs: &[crate::nix::StorePath]| {
                    let mut refs = refs.to_vec();
                    refs.sort();
                    refs
                };
                local.path == self.info.path
                    && local.nar_hash == self.info.nar_hash
                    && local.nar_size == self.info.nar_size
                    && sorted(&local.references) == sorted(&self.info.references)
            }
            Vouch::Anything => true,
        }
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
    fn vouched(&self, vouch: &Vouch) -> bool {
        match vouch {
            Vouch::Keys(keys) => self.verify(keys),
            Vouch::Local(_) => false,
            Vouch::Anything => true,
        }
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

/// How to sign: the key, the key names whose signatures go, and what must vouch first.
pub struct Signing<'a> {
    pub key: &'a SecretKey,
    pub remove: &'a [String],
    pub vouch: &'a Vouch,
}

/// Rewrites one narinfo or realisation (by its key) if its signatures change (`listed`: the
/// key came from the listing, not from the user), and only if what `signing` trusts vouches
/// for it as read. The write is conditional on the document being the one read: when another
/// writer changed it meanwhile, it is read, checked and signed again, and when it vanished (gc
/// deleted it) it stays deleted, since writing it back would name a NAR that gc may delete
/// next.
pub async fn sign_one(
    cache: &Cache,
    key_name: &str,
    signing: &Signing<'_>,
    listed: bool,
) -> anyhow::Result<Signed> {
    if realisations::is_key(key_name) {
        sign_document::<Realisation>(cache, key_name, signing, listed).await
    } else {
        sign_document::<NarInfo>(cache, key_name, signing, listed).await
    }
}

async fn sign_document<D: Signable>(
    cache: &Cache,
    key_name: &str,
    signing: &Signing<'_>,
    listed: bool,
) -> anyhow::Result<Signed> {
    let Signing { key, remove, vouch } = signing;
    for attempt in 0..3 {
        let Some((bytes, version)) = cache.get_versioned(key_name).await? else {
            if attempt == 0 && !listed {
                bail!("not in the cache");
            }
            return Ok(Signed::Gone);
        };
        let mut document = match D::read(key_name, &bytes) {
            Ok(document) => document,
            // A realisation only saves a content-addressed build; one we cannot read must not
            // stop the narinfos from being signed.
            Err(why) if realisations::is_key(key_name) => {
                return Ok(Signed::Unreadable(format!("{why:#}")));
            }
            Err(why) => return Err(why),
        };
        if !document.vouched(vouch) {
            return Ok(Signed::NotVouched);
        }
        let before = document.signatures();
        for name in remove.iter() {
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
