#!/usr/bin/env bash
# Installs what nixbucket's tests need on a fresh Debian machine (run as root): Nix (Debian's
# nix-bin), zstd, the s3s-fs S3 server, cargo-nextest, and the nix.conf settings a single-user,
# sandbox-less Nix needs. Safe to run again: each step is skipped when already done.
# Quiet on success; on failure prints the failing step's output and exits non-zero.
set -euo pipefail

S3S_FS_VERSION=0.14.1
NIX_CONF=${NIX_CONF:-/etc/nix/nix.conf} # overridable to try the script safely
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"

log=$(mktemp)
trap 'rm -f "$log"' EXIT

# run DESCRIPTION CMD...: runs CMD with its output captured; shows it only if CMD fails.
run() {
    local what=$1
    shift
    if ! "$@" >"$log" 2>&1; then
        echo "install-deps: failed to $what: $*" >&2
        cat "$log" >&2
        exit 1
    fi
}

if [[ $(id -u) -ne 0 ]]; then
    echo "install-deps: run as root (it installs Debian packages and writes $NIX_CONF)" >&2
    exit 1
fi

if ! command -v nix-store >/dev/null || ! command -v zstd >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    run "update the apt package lists" apt-get update
    run "install nix-bin and zstd" apt-get install -y --no-install-recommends nix-bin zstd
fi

mkdir -p "$(dirname "$NIX_CONF")"
touch "$NIX_CONF"
# set_conf KEY VALUE: adds "KEY = VALUE" unless KEY is already set (a user's choice wins).
set_conf() {
    if ! grep -Eq "^[[:space:]]*$1[[:space:]]*=" "$NIX_CONF"; then
        printf '%s = %s\n' "$1" "$2" >>"$NIX_CONF"
    fi
}
set_conf sandbox false
set_conf experimental-features nix-command
# Single-user Nix as root builds as root. Without this, Nix as root wants a `nixbld` group of
# build users, which Debian's nix-bin does not create.
set_conf build-users-group ''

if ! command -v cargo >/dev/null; then
    echo "install-deps: cargo not found (looked in PATH and ~/.cargo/bin); install Rust first: https://rustup.rs" >&2
    exit 1
fi

if ! command -v s3s-fs >/dev/null; then
    run "install s3s-fs $S3S_FS_VERSION" \
        cargo install s3s-fs --version "$S3S_FS_VERSION" --features binary --locked
fi

if ! cargo nextest --version >/dev/null 2>&1; then
    run "install cargo-nextest" cargo install cargo-nextest --locked
fi

# The CI linters and runners the integration tests shell out to.
"$(dirname "$0")/install-ci-tools.sh"
