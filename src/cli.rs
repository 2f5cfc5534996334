//! Command-line entry point: parse arguments, run one subcommand, report errors.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::command;

/// A private Nix binary cache in a bucket you own: sign and push what your CI built.
#[derive(Parser, Debug)]
#[command(name = "nixbucket", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Create a signing key pair in Nix's own format and print the public key.
    Keygen(command::keygen::Args),
    /// Before the build: make Nix substitute from the cache, and record the store.
    Setup(command::setup::Args),
    /// After the build: sign and upload new store paths and their closure to the cache.
    Push(command::push::Args),
    /// Add our signature to narinfos already in a cache (after --unsigned, or to rotate keys).
    Sign(command::sign::Args),
    /// Check that a cache is whole: signatures, NARs, references (and with --deep, NAR hashes).
    Verify(command::verify::Args),
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("error: could not start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Keygen(args) => command::keygen::run(args),
            Command::Setup(args) => command::setup::run(args),
            Command::Push(args) => command::push::run(args).await,
            Command::Sign(args) => command::sign::run(args).await,
            Command::Verify(args) => command::verify::run(args).await,
        }
    });
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
