//! nixbucket: a private Nix binary cache in a bucket you own.
//!
//! - [`nix`]: the formats Nix reads and writes (store paths, hashes, NAR, narinfo, keys). Pure.
//! - [`store`]: what the local Nix store knows (path metadata, the set of valid paths).
//! - [`cache`]: where a binary cache lives (an S3 bucket, a local directory).
//! - [`push`]: the pipeline that turns store paths into signed cache entries.
//! - [`state`]: what `setup` hands to `push` across CI steps.
//! - [`command`]: one module per subcommand.

pub mod cache;
pub mod cli;
pub mod command;
pub mod nix;
pub mod push;
pub mod state;
pub mod store;
