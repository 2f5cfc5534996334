#!/usr/bin/env bash
# The Nix side of bench/push-network.sh (run by it, on this machine or in a Nix root): makes
# the closure, then times each contender pushing it and prints a Markdown report. Needs from
# bench/push-network.sh: NIXBUCKET_BIN, WORK, REPS, SIGNED_PROXY, ANON_PROXY, RTT_MS, FIXTURE,
# PATHS, LAYERS, CLOSURE_EXPORT and CLOSURE_TOP (FIXTURE=closure) and the AWS variables.
# Uses only bash, coreutils, zstd, Nix and nixbucket.
set -euo pipefail

bin=$NIXBUCKET_BIN
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail() { echo "push-network-nix: $*" >&2; exit 1; }
median() { printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END {
    if (NR % 2) print v[(NR + 1) / 2]; else printf "%.2f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b == 0) print "inf"; else printf "%.1f", a / b }'; }

# A Nix configuration of its own: nothing from /etc/nix, no substituters, no trusted keys (so
# nixbucket counts no path as served elsewhere).
mkdir -p "$tmp/etc"
printf 'substituters =\nsandbox = false\nexperimental-features = nix-command\nbuild-users-group =\nmax-jobs = 2\n' \
    >"$tmp/etc/nix.conf"
export NIX_CONF_DIR=$tmp/etc NIX_USER_CONF_FILES=$tmp/nix-user.conf
unset NIX_CONFIG
"$bin" keygen push-bench-1 --secret-file "$tmp/sk" >/dev/null 2>"$tmp/keygen.log" || fail "keygen failed: $(cat "$tmp/keygen.log")"

if [[ $FIXTURE == closure ]]; then
    nix-store --import <"$CLOSURE_EXPORT" >/dev/null || fail "could not import $CLOSURE_EXPORT"
    top=$CLOSURE_TOP
    what="the closure of bench/make-closure.sh"
else
    "$(dirname "${BASH_SOURCE[0]}")/small-closure.sh" "$PATHS" "$LAYERS" "push-$(date +%s%N)" >"$tmp/closure.nix"
    top=$(nix-build --no-out-link "$tmp/closure.nix" 2>"$tmp/build.log") || fail "build failed: $(tail "$tmp/build.log")"
    what="$PATHS small paths in $LAYERS layers"
fi
mapfile -t closure < <(nix-store -qR "$top")
count=${#closure[@]}
for p in "${closure[@]}"; do nix-store --dump "$p"; done >"$tmp/nars"
nar_bytes=$(stat -c %s "$tmp/nars")

declare -A times=() cpus=() sizes=()
# timed NAME COMMAND...: runs COMMAND (output to $tmp/NAME.log) and keeps its wall and CPU
# (user + system) seconds; a failing contender fails the run.
timed() {
    local name=$1 t
    shift
    sync
    t=$( { TIMEFORMAT='%R %U %S'; time "$@" >"$tmp/$name.log" 2>&1; } 2>&1 ) ||
        fail "$name failed: $(tail -n 5 "$tmp/$name.log")"
    read -r wall user sys <<<"$t"
    times[$name]+="$wall "
    cpus[$name]+="$(awk -v u="$user" -v s="$sys" 'BEGIN { printf "%.2f", u + s }') "
}
# check_pushed NAME DIR: the closure's narinfos must all be in DIR, or the contender did not
# push it all.
check_pushed() {
    local n
    n=$(find "$2" -name '*.narinfo' | wc -l)
    ((n == count)) || fail "$1 left $n narinfos for $count paths in $2"
    sizes[$1]+="$(du -sb "$2" | cut -f1) "
}

signed="s3://BUCKET?region=us-east-1&endpoint=http://127.0.0.1:$SIGNED_PROXY"
anon="s3://BUCKET?region=us-east-1&endpoint=http://127.0.0.1:$ANON_PROXY&compression=zstd&secret-key=$tmp/sk"
nixbucket() {
    timed nixbucket "$bin" push --cache "${signed/BUCKET/nixbucket-$1}" --signing-key-file "$tmp/sk" \
        --progress none "$top"
    check_pushed nixbucket "$WORK/s3/nixbucket-$1"
    timed nixbucket-noop "$bin" push --cache "${signed/BUCKET/nixbucket-$1}" --signing-key-file "$tmp/sk" \
        --progress none "$top"
    grep -q "pushed 0 paths" "$tmp/nixbucket-noop.log" || fail "the repush pushed: $(tail -n 3 "$tmp/nixbucket-noop.log")"
}
# Nix's S3 store of this Nix does not sign; credentials in its environment are not wanted.
nix_copy() { # nix_copy NAME URL
    XDG_CACHE_HOME=$tmp/xdg-$1 timed "$1" env -u AWS_ACCESS_KEY_ID -u AWS_SECRET_ACCESS_KEY \
        nix copy --to "$2" "$top"
    rm -rf "$tmp/xdg-$1"
}
copy() {
    nix_copy copy "${anon/BUCKET/copy-$1}"
    check_pushed copy "$WORK/s3/copy-$1"
}
copymp() {
    nix_copy copymp "${anon/BUCKET/copymp-$1}&multipart-upload=true&parallel-compression=true"
    check_pushed copymp "$WORK/s3/copymp-$1"
}
copyfile() {
    rm -rf "$tmp/file-cache"
    nix_copy copyfile "file://$tmp/file-cache?compression=zstd&secret-key=$tmp/sk"
    check_pushed copyfile "$tmp/file-cache"
    rm -rf "$tmp/file-cache"
}
zstdbound() { timed zstd zstd -q -T0 -3 -c "$tmp/nars" -o /dev/null; }

order=(nixbucket copy copymp copyfile zstdbound)
for rep in $(seq "$REPS"); do
    # Alternate the order, so that no contender always runs first (or last) in a rep.
    if ((rep % 2 == 0)); then
        for ((i = ${#order[@]} - 1; i >= 0; i--)); do "${order[i]}" "$rep"; done
    else
        for c in "${order[@]}"; do "$c" "$rep"; done
    fi
done

m() { median ${times[$1]}; }
row() { # row NAME LABEL
    local size=""
    [[ -z ${sizes[$1]:-} ]] || size=$(numfmt --to=iec $(median ${sizes[$1]}))
    echo "| $2 | $(m "$1") | $(median ${cpus[$1]}) | $size | $(ratio "$(m "$1")" "$(m nixbucket)") | ${times[$1]}|"
}
link="loopback"
((RTT_MS == 0)) || link="$RTT_MS ms round trip"
echo "## Push: $what ($count paths, $(numfmt --to=iec "$nar_bytes") of NAR), $link"
echo
echo "$(nix --version), $(nproc) cores, $REPS reps, medians in seconds; \"x nixbucket\" is the"
echo "contender's time over nixbucket's (above 1: nixbucket is faster)."
echo
echo "| contender | wall s | CPU s | cache size | x nixbucket | reps (s) |"
echo "| --- | ---: | ---: | ---: | ---: | --- |"
row nixbucket "nixbucket push → s3"
row nixbucket-noop "nixbucket push again (nothing to push)"
row copy "nix copy → s3 (compression=zstd)"
row copymp "nix copy → s3, multipart-upload, parallel-compression"
row copyfile "nix copy → file:// (compression=zstd)"
row zstd "zstd -T0 -3 of the NARs (compression alone)"
echo
echo "nixbucket's last push: $(tail -n 1 "$tmp/nixbucket.log")"
