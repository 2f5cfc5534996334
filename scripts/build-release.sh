#!/usr/bin/env bash
# Builds the release binary of nixbucket for one target, the way .github/workflows/release.yml
# does, checks it, and prints its path as the last line of its output.
#
#   scripts/build-release.sh [--target TRIPLE] [--no-run]
#
# The target defaults to the host's. A Linux binary must be static, so that it runs on any
# runner whatever its libc: the *-linux-musl targets are static by default, and a *-linux-gnu
# target is linked statically here (crt-static), which is what a machine without the musl
# target can build. `file` must say so. Unless --no-run (a cross-compiled binary this machine
# cannot start), the binary must start and print the version of Cargo.toml.
#
# The build is cargo's: run again on an unchanged tree it only checks, in about a second.
set -euo pipefail
cd "$(dirname "$0")/.."
# Started by a test, the environment holds what cargo sets for a crate's tests
# (CARGO_MANIFEST_DIR, CARGO_PKG_*). Build scripts watch some of them (ring's does), so a value
# the last build did not see would rebuild nearly everything: minutes, and again from a shell.
for var in $(compgen -e); do
    case $var in
    CARGO_MANIFEST_DIR | CARGO_PKG_* | CARGO_BIN_EXE_* | CARGO_CRATE_NAME | CARGO_PRIMARY_PACKAGE)
        unset "$var"
        ;;
    esac
done

target=
run=true
while (($#)); do
    case $1 in
    --target)
        target=${2:?--target needs a target triple}
        shift 2
        ;;
    --no-run)
        run=false
        shift
        ;;
    *)
        echo "build-release: unknown argument $1 (usage: scripts/build-release.sh [--target TRIPLE] [--no-run])" >&2
        exit 2
        ;;
    esac
done
if [[ -z $target ]]; then
    target=$(rustc -vV | sed -n 's/^host: //p')
fi

case $target in
*-linux-gnu)
    # Only the target's code: with --target, RUSTFLAGS leave build scripts and proc macros,
    # which run on the host, dynamically linked.
    export RUSTFLAGS="${RUSTFLAGS:+$RUSTFLAGS }-C target-feature=+crt-static"
    ;;
esac

cargo build --release --locked --target "$target" >&2
binary=${CARGO_TARGET_DIR:-target}/$target/release/nixbucket

case $target in
*-linux-*)
    described=$(file -L "$binary")
    echo "$described" >&2
    if ! grep -Eq 'static-pie linked|statically linked' <<<"$described"; then
        echo "build-release: $binary is not statically linked" >&2
        exit 1
    fi
    ;;
esac

if $run; then
    version=$(awk -F'"' '/^\[/ { p = ($0 == "[package]") } p && /^version *=/ { print $2; exit }' Cargo.toml)
    said=$("$binary" --version)
    if [[ $said != "nixbucket $version" ]]; then
        echo "build-release: $binary --version says \"$said\", expected \"nixbucket $version\"" >&2
        exit 1
    fi
    echo "$said" >&2
fi
# An absolute path: the tests and release.yml use it from other directories.
echo "$(cd "$(dirname "$binary")" && pwd)/nixbucket"
