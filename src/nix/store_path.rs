//! Store paths (`/nix/store/<32 nixbase32 chars>-<name>`), validated once when parsed.
//!
//! The rules are Nix 2.8's: a 32-character hash part in the nixbase32 alphabet, a `-`, and a
//! name of 1 to 211 characters from `[A-Za-z0-9+-._?=]`. Paths order as their base names do,
//! which is the order Nix sorts references in (in narinfo text and in fingerprints).

use std::cmp::Ordering;
use std::fmt;

use thiserror::Error;

use super::base32;

pub const STORE_DIR: &str = "/nix/store";

const HASH_CHARS: usize = 32;
const DIGEST_BYTES: usize = 20;
const MAX_NAME_LEN: usize = 211;

#[derive(Clone, PartialEq, Eq, Hash)]
pub struct StorePath {
    digest: [u8; DIGEST_BYTES],
    name: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum StorePathError {
    #[error("{path:?} is not in the Nix store {STORE_DIR}")]
    NotInStore { path: String },
    #[error("{path:?} is below a store path; expected the store path itself")]
    HasSubpath { path: String },
    #[error("store path {path:?} is too short: expected a 32-character hash, '-' and a name")]
    TooShort { path: String },
    #[error("store path {path:?} has {char:?} in its hash part, which is not nixbase32")]
    BadHashChar { path: String, char: char },
    #[error("store path {path:?} lacks the '-' after its hash part")]
    MissingDash { path: String },
    #[error("store path {path:?} has an empty name")]
    EmptyName { path: String },
    #[error("store path {path:?} has a name longer than {MAX_NAME_LEN} characters")]
    NameTooLong { path: String },
    #[error("store path {path:?} has {char:?} in its name, which Nix does not allow")]
    BadNameChar { path: String, char: char },
}

impl StorePath {
    /// Parses `<hash>-<name>`, the form narinfo References and Deriver use.
    pub fn from_base_name(s: &str) -> Result<Self, StorePathError> {
        let path = || s.to_owned();
        let (Some(hash), Some(rest)) = (s.get(..HASH_CHARS), s.get(HASH_CHARS..)) else {
            // Either shorter than the hash or a multi-byte char straddles its end: both invalid.
            return Err(match s.chars().find(|c| !c.is_ascii()) {
                Some(char) if s.len() > HASH_CHARS => {
                    StorePathError::BadHashChar { path: path(), char }
                }
                _ => StorePathError::TooShort { path: path() },
            });
        };
        let Some(name) = rest.strip_prefix('-') else {
            return Err(if rest.is_empty() {
                StorePathError::TooShort { path: path() }
            } else {
                StorePathError::MissingDash { path: path() }
            });
        };
        let digest: [u8; DIGEST_BYTES] = match base32::decode(hash) {
            // 32 chars carry exactly 160 bits, so only a bad character can fail here.
            Ok(bytes) => bytes
                .try_into()
                .map_err(|_| StorePathError::TooShort { path: path() })?,
            Err(_) => {
                let char = hash
                    .chars()
                    .find(|&c| !is_nix32_char(c))
                    .unwrap_or('\u{fffd}');
                return Err(StorePathError::BadHashChar { path: path(), char });
            }
        };
        check_name(s, name)?;
        Ok(Self {
            digest,
            name: name.to_owned(),
        })
    }

    /// Parses `/nix/store/<hash>-<name>` and nothing below it.
    pub fn from_absolute(s: &str) -> Result<Self, StorePathError> {
        let base = strip_store_dir(s)?;
        if base.contains('/') {
            return Err(StorePathError::HasSubpath { path: s.to_owned() });
        }
        Self::from_base_name(base)
    }

    /// The store path that contains `s`: `/nix/store/<hash>-<name>/sub/dir` gives
    /// `/nix/store/<hash>-<name>`.
    pub fn from_absolute_prefix(s: &str) -> Result<Self, StorePathError> {
        let base = strip_store_dir(s)?;
        let top = base.split('/').next().unwrap_or(base);
        Self::from_base_name(top)
    }

    pub fn digest(&self) -> &[u8; DIGEST_BYTES] {
        &self.digest
    }

    /// The 32 characters after `/nix/store/`; the cache keeps this path's narinfo at
    /// `<hash_part>.narinfo`.
    pub fn hash_part(&self) -> String {
        base32::encode(&self.digest)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn base_name(&self) -> String {
        format!("{}-{}", self.hash_part(), self.name)
    }

    pub fn to_absolute(&self) -> String {
        format!("{STORE_DIR}/{}-{}", self.hash_part(), self.name)
    }

    pub fn is_derivation(&self) -> bool {
        self.name.ends_with(".drv")
    }
}

fn strip_store_dir(s: &str) -> Result<&str, StorePathError> {
    s.strip_prefix(STORE_DIR)
        .and_then(|rest| rest.strip_prefix('/'))
        .ok_or_else(|| StorePathError::NotInStore { path: s.to_owned() })
}

fn is_nix32_char(c: char) -> bool {
    matches!(c, '0'..='9' | 'a'..='z') && !matches!(c, 'e' | 'o' | 'u' | 't')
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.' | '_' | '?' | '=')
}

fn check_name(path: &str, name: &str) -> Result<(), StorePathError> {
    let path = || path.to_owned();
    if name.is_empty() {
        return Err(StorePathError::EmptyName { path: path() });
    }
    if let Some(char) = name.chars().find(|&c| !is_name_char(c)) {
        return Err(StorePathError::BadNameChar { path: path(), char });
    }
    if name.len() > MAX_NAME_LEN {
        return Err(StorePathError::NameTooLong { path: path() });
    }
    Ok(())
}

impl Ord for StorePath {
    fn cmp(&self, other: &Self) -> Ordering {
        // nixbase32 text compares like the digest read as a little-endian integer, so this is
        // the order of the base names without encoding them.
        self.digest
            .iter()
            .rev()
            .cmp(other.digest.iter().rev())
            .then_with(|| self.name.cmp(&other.name))
    }
}

impl PartialOrd for StorePath {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Display for StorePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{STORE_DIR}/{}-{}", self.hash_part(), self.name)
    }
}

impl fmt::Debug for StorePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl std::str::FromStr for StorePath {
    type Err = StorePathError;
    fn from_str(s: &str) -> Result<Self, StorePathError> {
        Self::from_absolute(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    const TOP: &str = "/nix/store/rsnpyhm63gcba6l9qgpn7v1x19raxwy0-fmt-top";

    #[test]
    fn parses_and_prints_a_real_store_path() {
        let path = StorePath::from_absolute(TOP).unwrap();
        assert_eq!(path.hash_part(), "rsnpyhm63gcba6l9qgpn7v1x19raxwy0");
        assert_eq!(path.name(), "fmt-top");
        assert_eq!(path.base_name(), "rsnpyhm63gcba6l9qgpn7v1x19raxwy0-fmt-top");
        assert_eq!(path.to_absolute(), TOP);
        assert_eq!(path.to_string(), TOP);
        assert_eq!(format!("{path:?}"), TOP);
        assert_eq!(
            crate::nix::layout::narinfo_key(&path),
            "rsnpyhm63gcba6l9qgpn7v1x19raxwy0.narinfo"
        );
        // `nix hash to-base16 --type sha1 rsnpyhm63gcba6l9qgpn7v1x19raxwy0` on Nix 2.8.
        let hex: String = path.digest().iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, "c0f3ae720a3dec63efc3891ab5d81ba6427fadce");
        assert!(!path.is_derivation());
        assert_eq!(StorePath::from_base_name(&path.base_name()).unwrap(), path);
    }

    #[rstest]
    #[case::derivation("d0bxz7jay5v8jdyc1nkmschk340fg7mg-fmt-top.drv", true)]
    #[case::all_allowed_chars("d0bxz7jay5v8jdyc1nkmschk340fg7mg-aZ09+-._?=", false)]
    #[case::one_char_name("d0bxz7jay5v8jdyc1nkmschk340fg7mg-x", false)]
    #[case::dot_name("d0bxz7jay5v8jdyc1nkmschk340fg7mg-.drv", true)]
    fn accepts(#[case] base: &str, #[case] drv: bool) {
        let path = StorePath::from_base_name(base).unwrap();
        assert_eq!(path.base_name(), base);
        assert_eq!(path.is_derivation(), drv);
    }

    #[test]
    fn accepts_211_char_name_and_rejects_212() {
        let hash = "d0bxz7jay5v8jdyc1nkmschk340fg7mg";
        let ok = format!("{hash}-{}", "a".repeat(211));
        assert_eq!(StorePath::from_base_name(&ok).unwrap().name().len(), 211);
        let long = format!("{hash}-{}", "a".repeat(212));
        assert!(matches!(
            StorePath::from_base_name(&long),
            Err(StorePathError::NameTooLong { .. })
        ));
    }

    #[rstest]
    #[case::empty("", "too short")]
    #[case::hash_only("d0bxz7jay5v8jdyc1nkmschk340fg7mg", "too short")]
    #[case::short_hash("d0bxz7jay5v8jdyc1nkmschk340fg7m-x", "lacks the '-'")]
    #[case::long_hash("d0bxz7jay5v8jdyc1nkmschk340fg7mgg-x", "lacks the '-'")]
    #[case::empty_name("d0bxz7jay5v8jdyc1nkmschk340fg7mg-", "empty name")]
    #[case::hash_letter_e("d0bxz7jay5v8jdyc1nkmschk340fg7me-x", "'e' in its hash part")]
    #[case::hash_upper("D0bxz7jay5v8jdyc1nkmschk340fg7mg-x", "'D' in its hash part")]
    #[case::hash_non_ascii("d0bxz7jay5v8jdyc1nkmschk340fg7é-x", "'é' in its hash part")]
    #[case::name_space("d0bxz7jay5v8jdyc1nkmschk340fg7mg-a b", "' ' in its name")]
    #[case::name_slash("d0bxz7jay5v8jdyc1nkmschk340fg7mg-a/b", "'/' in its name")]
    #[case::name_non_ascii("d0bxz7jay5v8jdyc1nkmschk340fg7mg-café", "'é' in its name")]
    fn rejects_base_name(#[case] base: &str, #[case] message: &str) {
        let err = StorePath::from_base_name(base).unwrap_err().to_string();
        assert!(err.contains(message), "{err:?} should contain {message:?}");
    }

    #[rstest]
    #[case::exact(TOP, Ok(()))]
    #[case::subpath(&format!("{TOP}/bin/hello"), Err("below a store path"))]
    #[case::trailing_slash(&format!("{TOP}/"), Err("below a store path"))]
    #[case::other_dir(
        "/gnu/store/rsnpyhm63gcba6l9qgpn7v1x19raxwy0-fmt-top",
        Err("not in the Nix store")
    )]
    #[case::store_dir_prefix_only(
        "/nix/storex/rsnpyhm63gcba6l9qgpn7v1x19raxwy0-fmt-top",
        Err("not in the Nix store")
    )]
    #[case::relative(
        "rsnpyhm63gcba6l9qgpn7v1x19raxwy0-fmt-top",
        Err("not in the Nix store")
    )]
    #[case::store_dir_itself("/nix/store", Err("not in the Nix store"))]
    fn from_absolute(#[case] text: &str, #[case] expected: Result<(), &str>) {
        match (StorePath::from_absolute(text), expected) {
            (Ok(path), Ok(())) => assert_eq!(path.to_absolute(), TOP),
            (Err(err), Err(message)) => {
                let err = err.to_string();
                assert!(err.contains(message), "{err:?} should contain {message:?}");
            }
            (got, want) => panic!("{text}: got {got:?}, want {want:?}"),
        }
    }

    #[rstest]
    #[case::exact(TOP)]
    #[case::file(&format!("{TOP}/ref"))]
    #[case::deep(&format!("{TOP}/a/b/c"))]
    #[case::trailing_slash(&format!("{TOP}/"))]
    fn from_absolute_prefix_finds_the_top_path(#[case] text: &str) {
        assert_eq!(
            StorePath::from_absolute_prefix(text).unwrap().to_absolute(),
            TOP
        );
    }

    #[rstest]
    #[case::store_slash("/nix/store/")]
    #[case::double_slash("/nix/store//rsnpyhm63gcba6l9qgpn7v1x19raxwy0-fmt-top")]
    #[case::outside("/tmp/rsnpyhm63gcba6l9qgpn7v1x19raxwy0-fmt-top/x")]
    fn from_absolute_prefix_rejects(#[case] text: &str) {
        assert!(StorePath::from_absolute_prefix(text).is_err());
    }

    #[test]
    fn orders_like_base_names() {
        let mut paths: Vec<StorePath> = [
            "rsnpyhm63gcba6l9qgpn7v1x19raxwy0-fmt-top",
            "g8cds6b443g4n1ihyfs7b53l2mrpb72v-fmt-dep",
            "0z0000000000000000000000000000zz-a",
            "z0000000000000000000000000000000-a",
            "0000000000000000000000000000000z-a",
            "g8cds6b443g4n1ihyfs7b53l2mrpb72v-fmt-a",
            "2lwd6mnnxpk6z4rpl70mqcrfvkg8rj6m-fmt-ca-dir",
            "10000000000000000000000000000000-b",
        ]
        .iter()
        .map(|b| StorePath::from_base_name(b).unwrap())
        .collect();
        paths.sort();
        let mut names: Vec<String> = paths.iter().map(StorePath::base_name).collect();
        let sorted_by_paths = names.clone();
        names.sort();
        assert_eq!(sorted_by_paths, names);
    }
}
