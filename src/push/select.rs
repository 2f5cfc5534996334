//! Which of the job's new paths to push, and why the others are not: paths another cache
//! already serves (signed by an upstream key), derivations, sources the job added but did not
//! build, and the user's include/exclude patterns. Decided from local metadata only.

use regex::Regex;

use crate::nix::StorePath;
use crate::store::PathInfo;

#[derive(Clone, Debug, Default)]
pub struct Filters {
    /// Names of keys whose signature means "another cache serves this path".
    pub upstream_keys: Vec<String>,
    pub include_derivations: bool,
    pub include: Option<Regex>,
    pub exclude: Option<Regex>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SkipReason {
    Upstream {
        key: String,
    },
    Derivation,
    /// Copied into the store at evaluation (`src = ./.`, `builtins.path`), built by nothing:
    /// pushed only where a path the job built needs it.
    Source,
    Excluded,
    NotIncluded,
}

impl std::fmt::Display for SkipReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SkipReason::Upstream { key } => write!(f, "served upstream (signed by {key})"),
            SkipReason::Derivation => {
                f.write_str("a derivation (--include-derivations pushes them)")
            }
            SkipReason::Source => f.write_str(
                "a source the job added but did not build (pushed only with a path that needs \
                 it, or when --include names it)",
            ),
            SkipReason::Excluded => f.write_str("matches --exclude"),
            SkipReason::NotIncluded => f.write_str("does not match --include"),
        }
    }
}

impl Filters {
    /// The upstream key that signed `info`, if any.
    pub fn upstream_signer(&self, info: &PathInfo) -> Option<String> {
        info.signatures
            .iter()
            .find(|s| self.upstream_keys.contains(&s.key_name))
            .map(|s| s.key_name.clone())
    }

    /// Why the job's new path `info` is not a root of the push, or None to push it.
    pub fn skip_root(&self, info: &PathInfo) -> Option<SkipReason> {
        if let Some(key) = self.upstream_signer(info) {
            return Some(SkipReason::Upstream { key });
        }
        if info.path.is_derivation() && !self.include_derivations {
            return Some(SkipReason::Derivation);
        }
        // A checkout copied in with `src = ./.` can carry untracked files (an .env): such a
        // path goes up only in the closure of something built from it, or when --include
        // names it (a requireFile download, a flake input worth caching).
        let included = self
            .include
            .as_ref()
            .is_some_and(|re| re.is_match(info.path.name()));
        if !info.path.is_derivation() && info.deriver.is_none() && !included {
            return Some(SkipReason::Source);
        }
        let name = info.path.name();
        if self.exclude.as_ref().is_some_and(|re| re.is_match(name)) {
            return Some(SkipReason::Excluded);
        }
        if self.include.as_ref().is_some_and(|re| !re.is_match(name)) {
            return Some(SkipReason::NotIncluded);
        }
        None
    }
}

/// Paths left out of a push, each with its reason.
pub type Skipped = Vec<(StorePath, SkipReason)>;

/// Splits `infos` into the paths to push and the skipped ones with their reason.
pub fn split_roots(infos: Vec<PathInfo>, filters: &Filters) -> (Vec<PathInfo>, Skipped) {
    let mut keep = Vec::new();
    let mut skipped = Vec::new();
    for info in infos {
        match filters.skip_root(&info) {
            Some(reason) => skipped.push((info.path, reason)),
            None => keep.push(info),
        }
    }
    (keep, skipped)
}

/// Removes upstream-served paths from a closure: a consumer with both caches finds them upstream.
pub fn drop_upstream(closure: Vec<PathInfo>, filters: &Filters) -> (Vec<PathInfo>, Skipped) {
    let mut keep = Vec::new();
    let mut skipped = Vec::new();
    for info in closure {
        match filters.upstream_signer(&info) {
            Some(key) => skipped.push((info.path, SkipReason::Upstream { key })),
            None => keep.push(info),
        }
    }
    (keep, skipped)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nix::{Sha256, Signature};

    /// A path some derivation built (it records its deriver), signed by `signed_by`.
    fn info(base: &str, signed_by: &[&str]) -> PathInfo {
        PathInfo {
            path: StorePath::from_base_name(base).unwrap(),
            nar_hash: Sha256([0; 32]),
            nar_size: 1,
            references: vec![],
            deriver: Some(
                StorePath::from_base_name("00000000000000000000000000000000-built.drv").unwrap(),
            ),
            signatures: signed_by
                .iter()
                .map(|k| Signature {
                    key_name: (*k).into(),
                    bytes: [0; 64],
                })
                .collect(),
            ca: None,
        }
    }

    #[test]
    fn each_reason_is_applied_in_order() {
        let filters = Filters {
            upstream_keys: vec!["cache.nixos.org-1".into()],
            include_derivations: false,
            include: Some(Regex::new("^app").unwrap()),
            exclude: Some(Regex::new("-debug$").unwrap()),
        };
        let cases = [
            (
                "bw9svbjjplvpv3vpkgb10wycmbncwrk1-app",
                &["ours-1"][..],
                None,
            ),
            (
                "bw9svbjjplvpv3vpkgb10wycmbncwrk1-app-x",
                &["cache.nixos.org-1"][..],
                Some(SkipReason::Upstream {
                    key: "cache.nixos.org-1".into(),
                }),
            ),
            (
                "bw9svbjjplvpv3vpkgb10wycmbncwrk1-app.drv",
                &[][..],
                Some(SkipReason::Derivation),
            ),
            (
                "bw9svbjjplvpv3vpkgb10wycmbncwrk1-app-debug",
                &[][..],
                Some(SkipReason::Excluded),
            ),
            (
                "bw9svbjjplvpv3vpkgb10wycmbncwrk1-lib",
                &[][..],
                Some(SkipReason::NotIncluded),
            ),
        ];
        for (base, sigs, expected) in cases {
            assert_eq!(filters.skip_root(&info(base, sigs)), expected, "{base}");
        }
        // The same name, but copied in at evaluation (no deriver): a source, not pushed by
        // itself; and one served upstream stays "upstream" whatever else it is.
        let mut source = info("bw9svbjjplvpv3vpkgb10wycmbncwrk1-lib", &[]);
        source.deriver = None;
        assert_eq!(filters.skip_root(&source), Some(SkipReason::Source));
        // Unless --include names it.
        let mut named = info("bw9svbjjplvpv3vpkgb10wycmbncwrk1-app", &[]);
        named.deriver = None;
        assert_eq!(filters.skip_root(&named), None);
        source.signatures = info(
            "bw9svbjjplvpv3vpkgb10wycmbncwrk1-app",
            &["cache.nixos.org-1"],
        )
        .signatures;
        assert!(matches!(
            filters.skip_root(&source),
            Some(SkipReason::Upstream { .. })
        ));
    }
}
