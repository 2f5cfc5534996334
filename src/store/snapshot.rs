//! The set of store paths at a moment, read from the store directory itself: one `readdir`
//! instead of a Nix process, so `setup` stays fast on a store of any size. Entries that are not
//! valid paths (a build in progress, a lock file) are sorted out later by asking Nix about the
//! difference only.

use std::collections::HashSet;
use std::path::Path;

use crate::nix::StorePath;

#[derive(Debug, thiserror::Error)]
#[error("could not list the store directory {dir}: {source}")]
pub struct SnapshotError {
    dir: String,
    source: std::io::Error,
}

/// Names of the entries of `dir` that look like store paths (`<32 nixbase32 chars>-<name>`).
pub fn read_store_dir(dir: &Path) -> Result<Vec<String>, SnapshotError> {
    let err = |source| SnapshotError {
        dir: dir.display().to_string(),
        source,
    };
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(err)? {
        let entry = entry.map_err(err)?;
        if let Some(name) = entry.file_name().to_str() {
            if !name.ends_with(".lock") && StorePath::from_base_name(name).is_ok() {
                names.push(name.to_owned());
            }
        }
    }
    names.sort_unstable();
    Ok(names)
}

/// What `now` has that `before` did not.
pub fn added_since(before: &[String], now: &[String]) -> Vec<StorePath> {
    let before: HashSet<&str> = before.iter().map(String::as_str).collect();
    now.iter()
        .filter(|n| !before.contains(n.as_str()))
        .filter_map(|n| StorePath::from_base_name(n).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_store_like_names_only_and_diffs_them() {
        let dir = tempfile::tempdir().unwrap();
        for name in [
            "wsjymlc52qk8vs92n03qp5spl0rva21y-dep",
            "bw9svbjjplvpv3vpkgb10wycmbncwrk1-hello-test",
            "bw9svbjjplvpv3vpkgb10wycmbncwrk1-hello-test.lock",
            ".links",
            "not-a-store-path",
        ] {
            std::fs::write(dir.path().join(name), b"").unwrap();
        }
        let now = read_store_dir(dir.path()).unwrap();
        assert_eq!(
            now,
            [
                "bw9svbjjplvpv3vpkgb10wycmbncwrk1-hello-test",
                "wsjymlc52qk8vs92n03qp5spl0rva21y-dep"
            ]
        );
        let before = vec!["wsjymlc52qk8vs92n03qp5spl0rva21y-dep".to_owned()];
        let added = added_since(&before, &now);
        assert_eq!(added.len(), 1);
        assert_eq!(added[0].name(), "hello-test");
    }
}
