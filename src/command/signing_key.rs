//! Loading the signing key from `--signing-key-file` or `NIXBUCKET_SIGNING_KEY`, with errors
//! that say where the key came from and never what it contains.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use zeroize::Zeroizing;

use crate::nix::SecretKey;

pub const ENV: &str = "NIXBUCKET_SIGNING_KEY";

/// The key from a file (preferred) or the environment; `None` when neither is given.
pub fn load(file: Option<&Path>) -> anyhow::Result<Option<Arc<SecretKey>>> {
    if let Some(path) = file {
        let text =
            Zeroizing::new(std::fs::read_to_string(path).with_context(|| {
                format!("could not read the signing key file {}", path.display())
            })?);
        let key = SecretKey::parse(&text).with_context(|| {
            format!(
                "the signing key file {} is not a Nix secret key",
                path.display()
            )
        })?;
        if let Ok(meta) = std::fs::metadata(path) {
            if meta.permissions().mode() & 0o077 != 0 {
                eprintln!(
                    "warning: the signing key file {} can be read by other users (mode {:o}); `chmod 600` it",
                    path.display(),
                    meta.permissions().mode() & 0o777
                );
            }
        }
        return Ok(Some(Arc::new(key)));
    }
    match std::env::var(ENV) {
        Ok(text) if !text.trim().is_empty() => {
            let text = Zeroizing::new(text);
            let key = SecretKey::parse(&text)
                .with_context(|| format!("${ENV} does not hold a Nix secret key"))?;
            Ok(Some(Arc::new(key)))
        }
        _ => Ok(None),
    }
}
