//! One module per subcommand, each with a clap `Args` struct and a `run` function that
//! resolves the arguments into a library job and runs it. No subcommand uses another: what
//! several share (the cache and signing-key flags, the compression choice) is here.

pub mod doctor;
pub mod finish;
pub mod gc;
pub mod github_action;
pub mod hook;
pub mod init;
pub mod keygen;
pub mod push;
pub mod serve;
pub mod setup;
pub mod sign;
pub mod use_cache;
pub mod verify;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use zeroize::Zeroizing;

use crate::cache::{Cache, CacheUrl, OpenOptions};
use crate::nix::{Compression, SecretKey};

/// The `--cache` argument as a cache URL; the error quotes what the user typed. Nix's
/// parameters that nixbucket does not act on are named in a note, and an endpoint without a
/// scheme, which Nix 2.33 to 2.35 misread, in a warning.
pub(crate) fn parse_cache_url(text: &str) -> anyhow::Result<CacheUrl> {
    let url: CacheUrl = text
        .parse()
        .with_context(|| format!("invalid cache URL {text:?}"))?;
    let ignored = url.ignored_params();
    if !ignored.is_empty() {
        eprintln!(
            "note: nixbucket ignores these parameters of the cache URL (Nix's own settings; \
             Nix still reads them where it reads the URL): {}",
            ignored.join(", ")
        );
    }
    if url.endpoint_lacks_scheme() {
        eprintln!(
            "warning: the cache URL's endpoint has no scheme: nixbucket completes it with \
             `scheme` (else https), but Nix 2.33 to 2.35 misread such an endpoint; write \
             endpoint=https://HOST[:PORT] (or http://)"
        );
    }
    Ok(url)
}

/// Opens the cache; the error names it.
pub(crate) async fn open_cache(url: &CacheUrl, opts: OpenOptions) -> anyhow::Result<Cache> {
    Cache::open_with(url, opts)
        .await
        .with_context(|| format!("could not open the cache {url}"))
}

/// The variable that holds the signing key's text when no file is given.
pub const SIGNING_KEY_ENV: &str = "NIXBUCKET_SIGNING_KEY";

/// Where nixbucket keeps what stays on this machine (init's key file for a store without
/// IAM, use's records): `$XDG_CONFIG_HOME/nixbucket`, else `~/.config/nixbucket`.
pub(crate) fn config_dir() -> anyhow::Result<PathBuf> {
    if let Some(dir) = std::env::var_os("XDG_CONFIG_HOME").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(dir).join("nixbucket"));
    }
    let home = std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .context("neither XDG_CONFIG_HOME nor HOME is set")?;
    Ok(PathBuf::from(home).join(".config/nixbucket"))
}

/// The signing key flag of every command that signs or derives a public key.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct KeyArgs {
    /// File holding the secret key to sign with (as written by `nixbucket keygen` or
    /// `nix-store --generate-binary-cache-key`). Without it, the key's text is read from
    /// $NIXBUCKET_SIGNING_KEY.
    #[arg(long, env = "NIXBUCKET_SIGNING_KEY_FILE", value_name = "FILE")]
    pub signing_key_file: Option<PathBuf>,
}

impl KeyArgs {
    /// The key from the file (preferred) or the environment; `None` when neither is given.
    /// Errors say where the key came from, never what it holds.
    pub fn load(&self) -> anyhow::Result<Option<Arc<SecretKey>>> {
        if let Some(path) = &self.signing_key_file {
            return load_key_file(path).map(|key| Some(Arc::new(key)));
        }
        match std::env::var(SIGNING_KEY_ENV) {
            Ok(text) if !text.trim().is_empty() => {
                let text = Zeroizing::new(text);
                let key = SecretKey::parse(&text).with_context(|| {
                    format!("${SIGNING_KEY_ENV} does not hold a Nix secret key")
                })?;
                Ok(Some(Arc::new(key)))
            }
            _ => Ok(None),
        }
    }

    /// The key, or an error that says how to give one, ending in `hint`.
    pub fn require(&self, hint: &str) -> anyhow::Result<Arc<SecretKey>> {
        match self.load()? {
            Some(key) => Ok(key),
            None => bail!(
                "no signing key: pass --signing-key-file FILE or set ${SIGNING_KEY_ENV}{hint}"
            ),
        }
    }
}

/// The secret key held by the SSM parameter `name` of `url`'s account.
pub(crate) async fn key_from_parameter(
    url: &CacheUrl,
    opts: &OpenOptions,
    name: &str,
) -> anyhow::Result<Arc<SecretKey>> {
    if !matches!(url, CacheUrl::S3 { .. }) {
        bail!(
            "a signing key parameter is read from AWS SSM, with the credentials of an s3:// cache; {url} is not one"
        );
    }
    let text = crate::cache::s3::parameter::read_secure(url, opts, name).await?;
    let key = SecretKey::parse(&text)
        .with_context(|| format!("the SSM parameter {name} does not hold a Nix secret key"))?;
    Ok(Arc::new(key))
}

fn load_key_file(path: &Path) -> anyhow::Result<SecretKey> {
    let text = Zeroizing::new(
        std::fs::read_to_string(path)
            .with_context(|| format!("could not read the signing key file {}", path.display()))?,
    );
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
    Ok(key)
}

/// How NARs are compressed, as a flag or an Action input names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum CompressionArg {
    Zstd,
    Xz,
    None,
}

impl From<CompressionArg> for Compression {
    fn from(c: CompressionArg) -> Self {
        match c {
            CompressionArg::Zstd => Compression::Zstd,
            CompressionArg::Xz => Compression::Xz,
            CompressionArg::None => Compression::None,
        }
    }
}

/// Whether push writes NAR listings: asked for, or by the URL's `write-nar-listing=true`.
pub fn nar_listing(flag: bool, url: &CacheUrl) -> bool {
    flag || matches!(url.param("write-nar-listing"), Some("true" | "1"))
}

/// The flag if given, else the cache URL's `compression` parameter, else zstd.
pub fn resolve_compression(
    flag: Option<CompressionArg>,
    url: &CacheUrl,
) -> anyhow::Result<Compression> {
    if let Some(c) = flag {
        return Ok(c.into());
    }
    match url.param("compression") {
        None | Some("zstd") => Ok(Compression::Zstd),
        Some("xz") => Ok(Compression::Xz),
        Some("none") => Ok(Compression::None),
        Some(other) => {
            bail!("the cache URL asks for compression={other}; nixbucket writes zstd, xz or none")
        }
    }
}
