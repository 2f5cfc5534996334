//! A binary cache's layout, in one place: which object holds what and under which name, the
//! content types Nix sends, and the one way bytes read from a cache become a [`NarInfo`].
//!
//! - `nix-cache-info` at the top says which store the cache serves.
//! - `<hash part>.narinfo` describes the store path with that hash part (the 32 nixbase32
//!   characters after `/nix/store/`).
//! - `nar/<hash><ext>` holds a NAR. Nix names it after the compressed file's hash; nixbucket
//!   names it after the NarHash, which is known before compressing (see `push`). Either way
//!   the narinfo's `URL:` says where it is.
//! - `log/<derivation base name>` holds the build log of that derivation, uncompressed, as
//!   `nix log --store` reads it (for an output path, via its narinfo's `Deriver:`).

use std::fmt;

use thiserror::Error;

use super::base32;
use super::{Compression, NarInfo, Sha256, StorePath};

/// The object that says which store a cache serves.
pub const CACHE_INFO_KEY: &str = "nix-cache-info";
/// What `nix-cache-info` says for a cache we create.
pub const CACHE_INFO: &str = "StoreDir: /nix/store\nWantMassQuery: 1\nPriority: 40\n";
pub const CACHE_INFO_TYPE: &str = "text/x-nix-cache-info";
pub const NARINFO_TYPE: &str = "text/x-nix-narinfo";
pub const NAR_TYPE: &str = "application/x-nix-nar";
/// Where NARs live.
pub const NAR_DIR: &str = "nar/";
/// Where build logs live.
pub const LOG_DIR: &str = "log/";
pub const LOG_TYPE: &str = "text/plain; charset=utf-8";
const NARINFO_SUFFIX: &str = ".narinfo";
/// A NAR's listing (`write-nar-listing`), beside its narinfo: `<hash part>.ls`.
const LISTING_SUFFIX: &str = ".ls";
pub const LISTING_TYPE: &str = "application/json";

/// A store path's hash part, checked: exactly 32 nixbase32 characters. It names the path's
/// narinfo, and keys every map of paths in the cache's upkeep.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HashPart([u8; 32]);

impl HashPart {
    /// `text` if it is a hash part, else None.
    pub fn parse(text: &str) -> Option<HashPart> {
        let bytes: [u8; 32] = text.as_bytes().try_into().ok()?;
        bytes
            .iter()
            .all(|c| base32::ALPHABET.contains(c))
            .then_some(HashPart(bytes))
    }

    pub fn of(path: &StorePath) -> HashPart {
        let text = path.hash_part();
        let mut bytes = [0u8; 32];
        bytes.copy_from_slice(text.as_bytes());
        HashPart(bytes)
    }

    /// The hash part a build log's key names: the derivation's.
    pub fn of_log_key(key: &str) -> Option<HashPart> {
        HashPart::parse(key.strip_prefix(LOG_DIR)?.get(..32)?)
    }

    /// The hash part a narinfo key names: `<hash part>.narinfo` at the top of the cache.
    pub fn of_narinfo_key(key: &str) -> Option<HashPart> {
        HashPart::parse(key.strip_suffix(NARINFO_SUFFIX)?)
    }

    /// The hash part a listing's key names, if it is one.
    pub fn of_listing_key(key: &str) -> Option<HashPart> {
        HashPart::parse(key.strip_suffix(LISTING_SUFFIX)?)
    }

    pub fn as_str(&self) -> &str {
        // Only nixbase32 characters get in, all of them ASCII.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }

    /// The key of the narinfo of the path with this hash part.
    pub fn narinfo_key(&self) -> String {
        format!("{}{NARINFO_SUFFIX}", self.as_str())
    }
}

impl fmt::Display for HashPart {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for HashPart {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "HashPart({})", self.as_str())
    }
}

/// The key of `path`'s narinfo.
pub fn narinfo_key(path: &StorePath) -> String {
    HashPart::of(path).narinfo_key()
}

/// The key of `path`'s NAR listing.
pub fn listing_key(path: &StorePath) -> String {
    format!("{}{LISTING_SUFFIX}", HashPart::of(path))
}

/// The object that holds `drv`'s build log.
pub fn log_key(drv: &StorePath) -> String {
    format!("{LOG_DIR}{}", drv.base_name())
}

/// What a request for `key` asks for, if a narinfo: `Some(Some(hash))` for one named as Nix
/// names them, `Some(None)` for any other name ending in `.narinfo` (never one to serve).
pub fn narinfo_request(key: &str) -> Option<Option<HashPart>> {
    key.ends_with(NARINFO_SUFFIX)
        .then(|| HashPart::of_narinfo_key(key))
}

/// Whether `key` names a narinfo as Nix asks for one.
pub fn is_narinfo_key(key: &str) -> bool {
    HashPart::of_narinfo_key(key).is_some()
}

/// The key of a NAR named after `hash`, with the compression's extension. Nix names a NAR
/// after the compressed file's hash; nixbucket after the NarHash.
pub fn nar_key(hash: &Sha256, compression: &Compression) -> String {
    format!(
        "{NAR_DIR}{}{}",
        hash.to_nix_base32(),
        compression.nar_extension()
    )
}

/// Whether `key` lies where NARs live.
pub fn is_nar_key(key: &str) -> bool {
    key.starts_with(NAR_DIR)
}

/// Prefixes that together list every narinfo, one per leading hash character. Hashes are
/// uniform, so the shards are even and can be listed side by side.
pub fn narinfo_prefixes() -> Vec<String> {
    let chars = base32::ALPHABET.iter().map(|&c| char::from(c));
    chars.map(String::from).collect()
}

/// [`narinfo_prefixes`] and the same 32 under `nar/`, for every NAR stored as
/// `nar/<nixbase32>…` (the layout Nix and nixbucket write).
pub fn store_prefixes() -> Vec<String> {
    let narinfos = narinfo_prefixes();
    let nars = narinfos
        .iter()
        .map(|c| format!("{NAR_DIR}{c}"))
        .collect::<Vec<_>>();
    narinfos.into_iter().chain(nars).collect()
}

/// Why bytes read as a narinfo are not one Nix could use. The text is the reason alone: callers
/// say "not a valid narinfo" in their own words.
#[derive(Debug, Error)]
pub enum ReadError {
    #[error("not UTF-8")]
    NotUtf8,
    #[error("{0}")]
    Invalid(#[from] super::narinfo::NarInfoError),
    /// The narinfo parses but is stored under another path's key.
    #[error("it describes {0}")]
    OtherPath(Box<StorePath>),
}

/// Bytes read from a cache as a narinfo. With `named`, the hash part its key names: a narinfo
/// that describes another path is refused, since Nix would refuse it.
pub fn read_narinfo(bytes: &[u8], named: Option<HashPart>) -> Result<NarInfo, ReadError> {
    let text = std::str::from_utf8(bytes).map_err(|_| ReadError::NotUtf8)?;
    let info = NarInfo::parse(text)?;
    if named.is_some_and(|hash| hash != HashPart::of(&info.path)) {
        return Err(ReadError::OtherPath(Box::new(info.info.path)));
    }
    Ok(info)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HASH: &str = "s4a9d3a2vz2mzwbfa4jr3xplrbksmxvn";

    #[test]
    fn a_hash_part_reads_back_as_the_key_it_came_from() {
        let path = StorePath::from_absolute(&format!("/nix/store/{HASH}-hello-2.12")).unwrap();
        let hash = HashPart::of(&path);
        assert_eq!(hash.as_str(), HASH);
        assert_eq!(narinfo_key(&path), format!("{HASH}.narinfo"));
        assert_eq!(HashPart::of_narinfo_key(&narinfo_key(&path)), Some(hash));
        assert_eq!(HashPart::parse("../../etc/passwd"), None);
    }

    #[test]
    fn narinfo_keys_are_nixbase32_hashes_at_the_top() {
        let hash = "0123456789abcdfghijklmnpqrsvwxy";
        assert!(is_narinfo_key(&format!("{hash}z.narinfo")));
        for bad in [
            format!("{hash}.narinfo"),
            format!("{hash}zz.narinfo"),
            format!("{hash}e.narinfo"),
            format!("{hash}Z.narinfo"),
            format!("{hash}z.narinfo.tmp"),
            format!("nar/{hash}z.narinfo"),
        ] {
            assert!(!is_narinfo_key(&bad), "{bad}");
        }
    }

    #[test]
    fn store_prefixes_cover_each_leading_character_once() {
        let p = store_prefixes();
        assert_eq!(p.len(), 64);
        let key = "s4a9d3a2vz2mzwbfa4jr3xplrbksmxvn.narinfo";
        assert_eq!(p.iter().filter(|x| key.starts_with(x.as_str())).count(), 1);
        let nar = "nar/1w1fff338fvdw53sqgamddn1b2xgds473pv6y13gizdbqjv4i5p3.nar.xz";
        let matches: Vec<_> = p.iter().filter(|x| nar.starts_with(x.as_str())).collect();
        assert_eq!(matches, ["n", "nar/1"]);
    }
}
