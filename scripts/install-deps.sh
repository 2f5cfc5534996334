#!/usr/bin/env bash
# Installs what nixbucket's tests need on a fresh Debian machine (run as root): Nix (Debian's
# nix-bin), zstd, file and curl, the two S3 servers the tests run on (s3s-fs, and moto's, which
# answers as AWS does), cargo-nextest, and the nix.conf settings a single-user, sandbox-less Nix
# needs. Safe to run again: each step is skipped when already done.
# Quiet on success; on failure prints the failing step's output and exits non-zero.
set -euo pipefail

S3S_FS_VERSION=0.14.1
MOTO_VERSION=5.2.5
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

packages=()
command -v nix-store >/dev/null || packages+=(nix-bin)
command -v zstd >/dev/null || packages+=(zstd)
# scripts/build-release.sh checks with `file` that the release binary is static; the GitLab
# template's test downloads it with curl; doctor reads Nix's narinfo cache with sqlite3 (the
# stale-misses check and its test).
command -v file >/dev/null || packages+=(file)
command -v curl >/dev/null || packages+=(curl)
command -v sqlite3 >/dev/null || packages+=(sqlite3)
if ((${#packages[@]})); then
    export DEBIAN_FRONTEND=noninteractive
    run "update the apt package lists" apt-get update
    run "install ${packages[*]}" apt-get install -y --no-install-recommends "${packages[@]}"
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

# moto's S3 server (`moto_server`) from PyPI. The version is checked, not only the command:
# what the tests expect of moto's answers is pinned to this one.
if [[ $(python3 -c 'import moto; print(moto.__version__)' 2>/dev/null) != "$MOTO_VERSION" ]] ||
    ! command -v moto_server >/dev/null; then
    # Debian's own Python refuses system-wide installs (PEP 668); this is a test server.
    export PIP_BREAK_SYSTEM_PACKAGES=1
    run "install moto $MOTO_VERSION" python3 -m pip install --quiet --disable-pip-version-check \
        "moto[server]==$MOTO_VERSION"
    # pyenv puts console scripts behind shims that exist only after a rehash.
    if command -v pyenv >/dev/null; then
        run "rehash pyenv's shims" pyenv rehash
    fi
    if ! command -v moto_server >/dev/null; then
        echo "install-deps: moto_server is not on PATH after installing moto" >&2
        exit 1
    fi
fi

if ! cargo nextest --version >/dev/null 2>&1; then
    run "install cargo-nextest" cargo install cargo-nextest --locked
fi

# The CI linters and runners the integration tests shell out to.
"$(dirname "$0")/install-ci-tools.sh"
