//! What the local Nix knows and how it is set up: path metadata from `nix path-info`, turning
//! what a user typed (`./result`, a file inside a store path) into store paths, and pointing
//! Nix at a substituter ([`configure`]).

pub mod configure;
mod nix_cli;
mod nix_env;
mod path_info;
mod resolve;
mod snapshot;

pub use nix_cli::{NixVersion, SECRET_VARS, child_command, nix_command, nix_version};
pub use nix_env::{NixEnv, system_conf_path, trusted_public_keys, user_conf_path};
pub use path_info::{PathInfo, StoreError, query_path_info, query_valid_path_info};
pub use resolve::{ResolveError, resolve_store_path};
pub use snapshot::{SnapshotError, added_since, read_store_dir};
