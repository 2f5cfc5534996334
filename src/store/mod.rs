//! What the local Nix store knows: path metadata from `nix path-info`, the set of valid paths.
