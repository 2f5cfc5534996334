//! From what a user typed to a store path: `./result` symlinks are followed one link at a time
//! until they land in the store, so a link *inside* a store path is not followed further.

use std::path::{Path, PathBuf};

use crate::nix::{STORE_DIR, StorePath};

#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error("{path}: no such file or symlink")]
    NotFound { path: PathBuf },
    #[error(
        "{path} is not in the Nix store ({STORE_DIR}); give a store path or a link to one such as ./result"
    )]
    NotInStore { path: PathBuf },
    #[error("{path}: too many levels of symbolic links")]
    TooManyLinks { path: PathBuf },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The store path that `arg` names, following symlinks outside the store.
pub fn resolve_store_path(arg: &Path) -> Result<StorePath, ResolveError> {
    let mut current = if arg.is_absolute() {
        arg.to_path_buf()
    } else {
        std::env::current_dir()
            .map_err(|source| ResolveError::Io {
                path: arg.into(),
                source,
            })?
            .join(arg)
    };
    for _ in 0..40 {
        if let Some(text) = current.to_str() {
            if text.starts_with(STORE_DIR) {
                return StorePath::from_absolute_prefix(text)
                    .map_err(|_| ResolveError::NotInStore { path: arg.into() });
            }
        }
        match std::fs::symlink_metadata(&current) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(ResolveError::NotFound { path: arg.into() });
            }
            Err(source) => {
                return Err(ResolveError::Io {
                    path: arg.into(),
                    source,
                });
            }
            Ok(meta) if !meta.file_type().is_symlink() => {
                return Err(ResolveError::NotInStore { path: arg.into() });
            }
            Ok(_) => {}
        }
        let target = std::fs::read_link(&current).map_err(|source| ResolveError::Io {
            path: arg.into(),
            source,
        })?;
        current = match current.parent() {
            Some(parent) if target.is_relative() => parent.join(target),
            _ => target,
        };
    }
    Err(ResolveError::TooManyLinks { path: arg.into() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn follows_links_until_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let target = format!("{STORE_DIR}/wsjymlc52qk8vs92n03qp5spl0rva21y-dep/bin/x");
        std::os::unix::fs::symlink(&target, dir.path().join("a")).unwrap();
        std::os::unix::fs::symlink("a", dir.path().join("result")).unwrap();
        let path = resolve_store_path(&dir.path().join("result")).unwrap();
        assert_eq!(
            path.to_absolute(),
            format!("{STORE_DIR}/wsjymlc52qk8vs92n03qp5spl0rva21y-dep")
        );
    }

    #[test]
    fn refuses_a_plain_file_outside_the_store() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("f"), b"").unwrap();
        let err = resolve_store_path(&dir.path().join("f")).unwrap_err();
        assert!(err.to_string().contains("is not in the Nix store"), "{err}");
    }

    #[test]
    fn names_a_missing_argument() {
        let err = resolve_store_path(Path::new("/nonexistent/result")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "/nonexistent/result: no such file or symlink"
        );
    }

    #[test]
    fn stops_on_a_link_loop() {
        let dir = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink("b", dir.path().join("a")).unwrap();
        std::os::unix::fs::symlink("a", dir.path().join("b")).unwrap();
        let err = resolve_store_path(&dir.path().join("a")).unwrap_err();
        assert!(matches!(err, ResolveError::TooManyLinks { .. }), "{err}");
    }
}
