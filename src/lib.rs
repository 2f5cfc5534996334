//! nixbucket: a private Nix binary cache in a bucket you own.
//!
//! - [`nix`]: the formats Nix reads and writes (store paths, hashes, NAR, narinfo, keys). Pure.
//! - [`store`]: what the local Nix store knows (path metadata, the set of valid paths).
//! - [`cache`]: where a binary cache lives (an S3 bucket, a local directory).
//! - [`push`]: the pipeline that turns store paths into signed cache entries.
//! - [`restore`]: the next job's start: what the last jobs used, fetched into a local mirror.
//! - [`serve`]: the cache as an HTTP substituter on loopback, with uploads during the build.
//! - [`setup`]: before the build: Nix pointed at the cache, the restore, the store recorded.
//! - [`state`]: what `setup` hands to `push` across CI steps.
//! - [`verify`], [`resign`]: checking that a cache is whole; signing what it holds anew.
//! - [`doctor`]: why a cache does not work on this machine, one check at a time, with fixes.
//! - [`gc`]: garbage collection of a cache, by age of use or size, closures kept whole.
//! - [`init`]: a new cache's bucket, CI role, signing key and workflow, in the user's account.
//! - [`workstation`]: a developer's machine reading the cache through a user service.
//! - [`ci`]: glue for CI systems (the GitHub Action's inputs, step files, OIDC, reports).
//! - [`command`]: one module per subcommand: arguments resolved into a library job.
//! - [`atomic_file`], [`signal`]: whole-file writes, and the signals of a cancelled step.

/// A file scripts/capture-nix-fixtures.sh captured from Nix `version`
/// (`tests/fixtures/nix/VERSION/FILE`), as text, for the unit tests that read what Nix wrote.
#[cfg(test)]
macro_rules! nix_fixture {
    ($version:literal, $file:literal) => {
        include_str!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/nix/",
            $version,
            "/",
            $file
        ))
    };
}

pub mod atomic_file;
pub mod cache;
pub mod ci;
pub mod cli;
pub mod command;
pub mod cost;
pub mod doctor;
pub mod gc;
pub mod init;
pub mod nix;
pub mod push;
pub mod resign;
pub mod restore;
pub mod serve;
pub mod setup;
pub mod signal;
pub mod state;
pub mod store;
pub mod verify;
pub mod workstation;
