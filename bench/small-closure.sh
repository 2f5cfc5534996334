#!/usr/bin/env bash
# Prints a Nix expression for a closure of small store paths with depth, as real closures
# have: PATHS - 1 paths (about 8 KiB each) in LAYERS layers, each naming three paths of the
# layer before, and a top naming the last layer. TAG makes the paths new (a timestamp, say).
# Nix substitutes a path, and a cache may write its narinfo, only after its references, so
# the depth costs round trips. Builders use /bin/sh and coreutils only.
#
#   bench/small-closure.sh PATHS LAYERS TAG > closure.nix
set -euo pipefail
paths=$1 layers=$2 tag=$3
drv() { # drv NAME SCRIPT [ATTRS]
    printf 'builtins.derivation { name = "%s"; system = builtins.currentSystem; builder = "/bin/sh"; PATH = "/usr/bin:/bin"; %s args = ["-c" "%s"]; }' "$1" "${3:-}" "$2"
}
per=$(((paths - 1 + layers - 1) / layers))
echo "let"
n=0
for layer in $(seq 1 "$layers"); do
    for j in $(seq 1 "$per"); do
        ((n < paths - 1)) || break
        n=$((n + 1))
        refs=""
        if ((layer > 1)); then
            for k in 0 1 2; do refs+="p$(((layer - 2) * per + (j + k - 1) % per + 1)) "; done
        fi
        echo "  p$n = $(drv "bench-$tag-$n" "echo \$refs > \$out; head -c 6144 /dev/urandom | base64 >> \$out" "refs = [ $refs];");"
    done
done
last=""
for i in $(seq $(((layers - 1) * per + 1)) "$n"); do last+="p$i "; done
echo "in $(drv "bench-$tag-top" "echo \$refs > \$out" "refs = [ $last];")"
