#!/usr/bin/env bash
# Makes the Debian roots that give the tests a newer Nix than the host's: for each suite, a
# minimal Debian (debootstrap --variant=minbase) with that suite's nix-bin installed, its own
# /nix, and the nix.conf a sandbox-less test Nix needs. Run as root. Each root is made once
# into one cached folder and reused; a root whose recipe changed, or that was left half-made,
# is made again. Prints each root's folder.
#
#   scripts/nix-roots.sh [SUITE...]      (default: trixie sid; NIXBUCKET_NIX_ROOTS moves the cache)
#
# Enter a root with scripts/in-nix-root.sh.
set -euo pipefail

ROOTS=${NIXBUCKET_NIX_ROOTS:-/var/cache/nixbucket/nix-roots}
# What the tests run inside a root need besides Nix, as a CI runner has them: zstd, setpriv
# (util-linux: the daemon tests run the job as another user), kill (procps), git and rsync
# (gitlab-ci-local), ca-certificates for apt itself.
PACKAGES=(nix-bin zstd util-linux procps git rsync ca-certificates)
# Changes whenever the recipe below does, so that roots made by an older recipe are remade.
RECIPE="1 ${PACKAGES[*]}"

if [[ $(id -u) -ne 0 ]]; then
    echo "nix-roots: run as root (debootstrap and chroot need it)" >&2
    exit 1
fi

log=$(mktemp)
trap 'rm -f "$log"' EXIT
quietly() {
    if ! "$@" >"$log" 2>&1; then
        echo "nix-roots: failed: $*" >&2
        tail -n 40 "$log" >&2
        exit 1
    fi
}

if ! command -v debootstrap >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    quietly apt-get update
    quietly apt-get install -y --no-install-recommends debootstrap
fi

make_root() {
    local suite=$1 dir=$ROOTS/$1
    if [[ -f $dir/.nixbucket-root && $(cat "$dir/.nixbucket-root") == "$RECIPE" ]]; then
        return
    fi
    local tmp=$dir.partial
    rm -rf "$tmp"
    mkdir -p "$ROOTS"
    echo "nix-roots: making the $suite root in $dir (a few minutes, once)" >&2
    # debootstrap's own resolver cannot follow nix-bin's virtual dependencies (perl-dbdabi-94),
    # so the root is made bare and apt installs Nix inside it.
    quietly debootstrap --variant=minbase "$suite" "$tmp"
    # A mirror may serve a snapshot whose Release file is past its Valid-Until date (the host's
    # apt is set the same way on such machines); the signatures are still checked.
    printf '%s\n' 'Acquire::Check-Valid-Until "false";' >"$tmp/etc/apt/apt.conf.d/99nixbucket-roots"
    # In a private mount namespace, the mounts go away with the command, whatever happens.
    quietly unshare --mount --propagation private sh -euc '
        root=$1
        mount -t proc proc "$root/proc"
        mount --rbind /dev "$root/dev"
        shift
        chroot "$root" env DEBIAN_FRONTEND=noninteractive PATH=/usr/sbin:/usr/bin:/sbin:/bin \
            sh -euc "apt-get update && apt-get install -y --no-install-recommends $* && apt-get clean"
    ' sh "$tmp" "${PACKAGES[@]}"
    mkdir -p "$tmp/etc/nix"
    # Nix as root builds as root here: Debian's nix-bin creates no nixbld group.
    printf '%s\n' 'sandbox = false' 'experimental-features = nix-command' 'build-users-group =' \
        >"$tmp/etc/nix/nix.conf"
    printf '%s\n' "$RECIPE" >"$tmp/.nixbucket-root"
    rm -rf "$dir"
    mv "$tmp" "$dir"
}

suites=("$@")
((${#suites[@]})) || suites=(trixie sid)
for suite in "${suites[@]}"; do
    make_root "$suite"
    echo "$ROOTS/$suite"
done
