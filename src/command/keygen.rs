//! `nixbucket keygen`: a signing key pair in the format `nix-store --generate-binary-cache-key`
//! writes, so either tool can use the other's keys.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};

use crate::nix::SecretKey;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Name of the key, conventionally the cache's host or bucket and a number, e.g. `mycache-1`.
    /// It appears in every signature and in `trusted-public-keys`.
    pub name: String,
    /// Where to write the secret key (created with mode 0600; an existing file is not replaced).
    /// Without it the secret key is printed to stdout, for piping into a CI secret store.
    #[arg(long, value_name = "FILE")]
    pub secret_file: Option<PathBuf>,
    /// Where to write the public key (as well as printing it).
    #[arg(long, value_name = "FILE")]
    pub public_file: Option<PathBuf>,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let key = SecretKey::generate(&args.name).context("could not create a key")?;
    let public = key.to_public().to_string();
    match &args.secret_file {
        Some(path) => write_new(path, key.to_nix_string().as_bytes(), 0o600)
            .with_context(|| format!("could not write the secret key to {}", path.display()))?,
        None => {
            let mut out = std::io::stdout().lock();
            writeln!(out, "{}", key.to_nix_string().as_str())?;
        }
    }
    if let Some(path) = &args.public_file {
        write_new(path, public.as_bytes(), 0o644)
            .with_context(|| format!("could not write the public key to {}", path.display()))?;
    }
    if args.secret_file.is_some() {
        println!("{public}");
    } else {
        eprintln!("public key: {public}");
    }
    Ok(ExitCode::SUCCESS)
}

/// [`crate::atomic_file::write_new`], with an error that says what to do about a file there.
fn write_new(path: &Path, contents: &[u8], mode: u32) -> anyhow::Result<()> {
    if path.exists() {
        bail!(
            "{} already exists; remove it first if you mean to replace the key",
            path.display()
        );
    }
    crate::atomic_file::write_new(path, contents, mode)?;
    Ok(())
}
