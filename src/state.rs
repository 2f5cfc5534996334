//! What `setup` hands to `push` across CI steps: the cache, and the store as it was before
//! the build, so `push` can tell what the job added.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

const VERSION: u32 = 1;

#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct State {
    pub version: u32,
    pub cache: String,
    /// Seconds since the epoch when `setup` ran.
    pub created: u64,
    /// Base names of the store's entries before the build, sorted.
    pub store_paths: Vec<String>,
    /// Public keys `setup` made Nix trust for this cache.
    #[serde(default)]
    pub public_keys: Vec<String>,
    /// The `nixbucket serve` that `setup --serve` started, for `push` to read and stop.
    #[serde(default)]
    pub serve: Option<ServeState>,
    /// The local mirror `setup` restored into, for `push` to report on and remove.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mirror: Option<PathBuf>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ServeState {
    pub pid: u32,
    pub port: u16,
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error(
        "no state from `nixbucket setup` at {path}: run `nixbucket setup` before the build (with the same --state-file), or name the paths to push"
    )]
    Missing { path: PathBuf },
    #[error("could not read the state file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the state file {path} is damaged or from another nixbucket version: {reason}")]
    Invalid { path: PathBuf, reason: String },
    #[error("could not write the state file {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl State {
    pub fn new(cache: String, store_paths: Vec<String>, public_keys: Vec<String>) -> Self {
        let created = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        State {
            version: VERSION,
            cache,
            created,
            store_paths,
            public_keys,
            serve: None,
            mirror: None,
        }
    }

    pub fn load(path: &Path) -> Result<State, StateError> {
        let bytes = std::fs::read(path).map_err(|source| match source.kind() {
            std::io::ErrorKind::NotFound => StateError::Missing { path: path.into() },
            _ => StateError::Read {
                path: path.into(),
                source,
            },
        })?;
        let state: State = serde_json::from_slice(&bytes).map_err(|e| StateError::Invalid {
            path: path.into(),
            reason: e.to_string(),
        })?;
        if state.version != VERSION {
            return Err(StateError::Invalid {
                path: path.into(),
                reason: format!("version {}", state.version),
            });
        }
        Ok(state)
    }

    /// Written under a temporary name and renamed, so a reader never sees half a file.
    pub fn save(&self, path: &Path) -> Result<(), StateError> {
        let err = |source| StateError::Write {
            path: path.into(),
            source,
        };
        crate::atomic_file::write_with(path, None, |file| {
            // Buffered: serde_json writes token by token, which is ~200,000 syscalls for 50,000
            // paths.
            let mut out = std::io::BufWriter::with_capacity(1 << 20, file);
            serde_json::to_writer(&mut out, self)?;
            std::io::Write::flush(&mut out)
        })
        .map_err(err)?;
        Ok(())
    }
}

/// `$NIXBUCKET_STATE_FILE` is read by clap; without it, a per-job temp dir on GitHub Actions
/// (`$RUNNER_TEMP`), else the user's cache directory.
pub fn default_path() -> PathBuf {
    if let Some(dir) = std::env::var_os("RUNNER_TEMP").filter(|v| !v.is_empty()) {
        return PathBuf::from(dir).join("nixbucket-state.json");
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir);
    base.join("nixbucket/state.json")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_reports_a_missing_file_helpfully() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/state.json");
        let err = State::load(&path).unwrap_err();
        assert!(
            err.to_string()
                .contains("run `nixbucket setup` before the build"),
            "{err}"
        );
        let state = State::new(
            "file:///c".into(),
            vec!["a".into()],
            vec!["k-1:AAAA".into()],
        );
        state.save(&path).unwrap();
        assert_eq!(State::load(&path).unwrap(), state);
    }

    #[test]
    fn a_damaged_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        std::fs::write(&path, b"{not json").unwrap();
        let err = State::load(&path).unwrap_err();
        assert!(err.to_string().contains("is damaged"), "{err}");
    }
}
