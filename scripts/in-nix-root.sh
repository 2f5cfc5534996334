#!/usr/bin/env bash
# Runs a command as root inside a Nix root made by scripts/nix-roots.sh, with what the tests
# need from the host at the same paths: this repository (target/ and node_modules/ included),
# the test log folder, s3s-fs, cargo-nextest, Node and npm with the global modules
# (gitlab-ci-local, local-action). /proc, /dev and /dev/pts are mounted too. Everything is
# mounted in a private mount namespace, so it all goes away when the command ends.
#
#   scripts/in-nix-root.sh SUITE COMMAND [ARG...]
set -euo pipefail

ROOTS=${NIXBUCKET_NIX_ROOTS:-/var/cache/nixbucket/nix-roots}
if (($# < 2)); then
    echo "usage: scripts/in-nix-root.sh SUITE COMMAND [ARG...]" >&2
    exit 2
fi
suite=$1
shift
root=$ROOTS/$suite
if [[ ! -f $root/.nixbucket-root ]]; then
    echo "in-nix-root: no $suite root in $ROOTS (make it with scripts/nix-roots.sh $suite)" >&2
    exit 1
fi
# The real path: cargo records where it built the tests without the links on the way.
repo=$(cd "$(dirname "$0")/.." && pwd -P)

# Host programs the tests start by name, bound into the root's /usr/local/bin.
tools=()
for tool in s3s-fs cargo-nextest node npm npx gitlab-ci-local local-action; do
    if path=$(command -v "$tool"); then
        tools+=("$tool=$(readlink -f "$path")")
    fi
done
node_modules=$(npm root --global 2>/dev/null || true)

export IN_ROOT=$root REPO=$repo NODE_MODULES=$node_modules LOG_DIR=${NIXBUCKET_TEST_LOG_DIR:-}
exec unshare --mount --propagation private bash -euc '
    bind() { # bind SRC DEST: DEST made inside the root as a file or folder like SRC
        if [[ -d $1 ]]; then mkdir -p "$IN_ROOT$2"; else touch "$IN_ROOT$2"; fi
        mount --bind "$1" "$IN_ROOT$2"
    }
    mount -t proc proc "$IN_ROOT/proc"
    mount --rbind /dev "$IN_ROOT/dev"
    mount -t tmpfs tmpfs "$IN_ROOT/usr/local/bin"
    bind "$REPO" "$REPO"
    [[ -z $LOG_DIR ]] || bind "$LOG_DIR" "$LOG_DIR"
    [[ -z $NODE_MODULES || ! -d $NODE_MODULES ]] || bind "$NODE_MODULES" "$NODE_MODULES"
    n=$1
    shift
    for ((i = 0; i < n; i++)); do
        name=${1%%=*} path=${1#*=}
        shift
        # A script (gitlab-ci-local, local-action) lives in the global modules: a link will do.
        if [[ $path == "$NODE_MODULES"/* ]]; then
            ln -s "$path" "$IN_ROOT/usr/local/bin/$name"
        else
            bind "$path" "/usr/local/bin/$name"
        fi
    done
    cd "$IN_ROOT"
    exec chroot "$IN_ROOT" env -C "$REPO" \
        PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin HOME=/root "$@"
' in-nix-root "${#tools[@]}" "${tools[@]}" "$@"
