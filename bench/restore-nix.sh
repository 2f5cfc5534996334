#!/usr/bin/env bash
# The Nix side of bench/restore.sh (run by it, on this machine or in a Nix root): builds and
# pushes the closure, then times each way of getting it back and prints a Markdown report.
# Needs from bench/restore.sh: NIXBUCKET_BIN, SIGNED_PORT, SIGNED_PROXY, ANON_PROXY, PATHS,
# RTT_MS, REPS, BIG, LAYERS, CLOSURE_NIX and the AWS variables. Uses only bash, coreutils, Nix and nixbucket.
set -euo pipefail

bin=$NIXBUCKET_BIN
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
now() { date +%s.%N; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", b - a }'; }
median() { printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END {
    if (NR % 2) print v[(NR + 1) / 2]; else printf "%.2f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
fail() { echo "restore-nix: $*" >&2; exit 1; }

# A Nix configuration of its own: nothing from /etc/nix, no substituter but what each way sets.
mkdir -p "$tmp/etc" "$tmp/user"
printf 'substituters =\nsandbox = false\nexperimental-features = nix-command\nbuild-users-group =\nmax-jobs = 2\n' \
    >"$tmp/etc/nix.conf"
export NIX_CONF_DIR=$tmp/etc NIX_USER_CONF_FILES=$tmp/user/nix.conf
unset NIX_CONFIG
public=$("$bin" keygen restore-bench-1 --secret-file "$tmp/sk" 2>/dev/null | tail -n 1)

# The closure: $PATHS small paths (a top naming the others), or one path of $BIG random bytes.
tag=$(date +%s%N)
drv() { # drv NAME SCRIPT [ATTRS]
    printf 'builtins.derivation { name = "%s"; system = builtins.currentSystem; builder = "/bin/sh"; PATH = "/usr/bin:/bin"; %s args = ["-c" "%s"]; }' "$1" "${3:-}" "$2"
}
if [[ -n ${CLOSURE_NIX:-} ]]; then
    cp "$CLOSURE_NIX" "$tmp/closure.nix"
    if [[ -n ${CLOSURE_EXPORT:-} ]]; then
        nix-store --import <"$CLOSURE_EXPORT" >/dev/null || fail "could not import $CLOSURE_EXPORT"
    fi
    what="the bench closure of bench/make-closure.sh"
elif [[ -n $BIG ]]; then
    drv "restore-bench-big-$tag" "head -c $BIG /dev/urandom > \$out" >"$tmp/closure.nix"
    what="1 path of $BIG random bytes"
else
    "$(dirname "${BASH_SOURCE[0]}")/small-closure.sh" "$PATHS" "$LAYERS" "restore-$tag" >"$tmp/closure.nix"
    what="$PATHS small paths in $LAYERS layers"
fi
top=$(nix-build --no-out-link "$tmp/closure.nix" 2>"$tmp/build.log") || fail "build failed: $(tail "$tmp/build.log")"
mapfile -t closure < <(nix-store -qR "$top")
count=${#closure[@]}
nar_bytes=$(nix path-info -S "$top" | awk '{ print $2 }')
bucket="s3://bench?region=us-east-1&endpoint=http://127.0.0.1"
NIXBUCKET_BRANCH=main "$bin" push --cache "$bucket:$SIGNED_PORT" --signing-key-file "$tmp/sk" \
    --progress none "$top" 2>"$tmp/push.log" || fail "push failed: $(cat "$tmp/push.log")"

# fresh: the closure gone from the store, and Nix's narinfo disk cache and user nix.conf empty.
fresh() {
    # --ignore-liveness: the bench closure has a GC root (every rep ends by bringing it back).
    nix-store --delete --ignore-liveness "${closure[@]}" >/dev/null 2>&1 || fail "could not delete the closure"
    [[ ! -e $top ]] || fail "$top is still in the store"
    rm -rf "$tmp/xdg" "$tmp/user/nix.conf" "$tmp"/mirror "$tmp/state.json"
    export XDG_CACHE_HOME=$tmp/xdg
}
# substituted LOG FROM [OR]: every path of the closure was copied from FROM (or OR), none built.
substituted() {
    ! grep -q "building '" "$1" || fail "a path was built instead of substituted: $(grep -m1 "building '" "$1")"
    local n
    n=$(grep -cE "copying path '.*' from '($2|${3:-$2})" "$1" || true)
    ((n == count)) || fail "$n of $count paths copied from $2 ${3:-}: $(tail -n 5 "$1")"
}
build() { # build LOG [NIX OPTIONS...]
    local log=$1
    shift
    nix-build --no-out-link "$tmp/closure.nix" "$@" >/dev/null 2>"$log" || fail "nix-build failed: $(tail -n 5 "$log")"
}

http="http://127.0.0.1:$ANON_PROXY/bench"
s3="$bucket:$SIGNED_PROXY"
t_http=() t_copy=() t_s3=() t_serve=() t_setup=() t_job=()
declare -A variant_times=()
s3_ok=1
for rep in $(seq "$REPS"); do
    fresh
    t0=$(now)
    build "$tmp/http.log" --option substituters "$http" --option trusted-public-keys "$public"
    t_http+=("$(secs "$t0" "$(now)")")
    substituted "$tmp/http.log" "$http"

    # `nix copy --from`, which copies a closure without a build (what the issue measured).
    if [[ -z ${SKIP_COPY:-} ]]; then
        fresh
        t0=$(now)
        nix copy --from "$http" --option trusted-public-keys "$public" "$top" 2>"$tmp/copy.log" ||
            fail "nix copy failed: $(tail -n 5 "$tmp/copy.log")"
        t_copy+=("$(secs "$t0" "$(now)")")
        [[ -e $top ]] || fail "nix copy did not bring $top"
    fi

    if ((s3_ok)); then
        fresh
        t0=$(now)
        if nix-build --no-out-link "$tmp/closure.nix" --option substituters "$s3" \
            --option trusted-public-keys "$public" >/dev/null 2>"$tmp/s3.log" &&
            ! grep -q "building '" "$tmp/s3.log"; then
            t_s3+=("$(secs "$t0" "$(now)")")
        else
            s3_ok=0
            s3_why=$(grep -m1 -iE "error|warning|building" "$tmp/s3.log" || true)
        fi
    fi

    # Nix through `nixbucket serve`, without a mirror: setup's defaults without the restore.
    fresh
    t0=$(now)
    "$bin" setup --serve --no-restore --cache "$s3" --signing-key-file "$tmp/sk" \
        --state-file "$tmp/state.json" 2>"$tmp/serve-setup.log" || fail "setup --serve failed: $(cat "$tmp/serve-setup.log")"
    build "$tmp/serve.log"
    t_serve+=("$(secs "$t0" "$(now)")")
    serve_pid=$(grep -o '"pid": *[0-9]*' "$tmp/state.json" | grep -o '[0-9]*$')
    kill "$serve_pid"
    substituted "$tmp/serve.log" "http://127.0.0.1:"

    # What a job gets with setup's defaults: the restore into a mirror, and the bucket through
    # a server of the job behind it.
    fresh
    t0=$(now)
    NIXBUCKET_BRANCH=main "$bin" setup --cache "$s3" --signing-key-file "$tmp/sk" \
        --state-file "$tmp/state.json" --mirror "$tmp/mirror" ${RESTORE_JOBS:+--restore-jobs "$RESTORE_JOBS"} 2>"$tmp/setup.log" ||
        fail "setup failed: $(cat "$tmp/setup.log")"
    t1=$(now)
    build "$tmp/job.log"
    t_setup+=("$(secs "$t0" "$t1")")
    t_job+=("$(secs "$t0" "$(now)")")
    "$bin" finish --state-file "$tmp/state.json" 2>/dev/null
    # Large paths are left to Nix, which fetches them through the server.
    substituted "$tmp/job.log" "file://$tmp/mirror" "http://127.0.0.1:"
    from_mirror=$(grep -c "copying path '.*' from 'file://$tmp/mirror" "$tmp/job.log" || true)

    # The same with other limits on the NARs the mirror takes (NAR_MAX_VARIANTS="4MiB 1MiB").
    for max in ${NAR_MAX_VARIANTS:-}; do
        fresh
        t0=$(now)
        NIXBUCKET_BRANCH=main "$bin" setup --cache "$s3" --signing-key-file "$tmp/sk" \
            --state-file "$tmp/state.json" --mirror "$tmp/mirror" --restore-nar-max "$max" 2>"$tmp/setup-$max.log" ||
            fail "setup failed: $(cat "$tmp/setup-$max.log")"
        build "$tmp/job-$max.log"
        variant_times[$max]+="$(secs "$t0" "$(now)") "
        "$bin" finish --state-file "$tmp/state.json" 2>/dev/null
        substituted "$tmp/job-$max.log" "file://$tmp/mirror" "http://127.0.0.1:"
    done
done

m_http=$(median "${t_http[@]}")
m_job=$(median "${t_job[@]}")
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", a / b }'; }
echo "## Restore: $what ($(numfmt --to=iec "$nar_bytes") of NAR), $RTT_MS ms round trip"
echo
echo "$(nix --version), $(nproc) cores, $REPS reps; each rep from an empty store and narinfo cache."
echo
echo "| how the next job gets the closure | median s | reps (s) |"
echo "| --- | ---: | --- |"
echo "| Nix, the bucket over http:// as substituter | $m_http | ${t_http[*]} |"
if ((${#t_copy[@]})); then
    echo "| \`nix copy --from\` the bucket over http:// | $(median "${t_copy[@]}") | ${t_copy[*]} |"
fi
if ((${#t_s3[@]})); then
    echo "| Nix, the bucket over s3:// as substituter | $(median "${t_s3[@]}") | ${t_s3[*]} |"
fi
echo "| Nix through nixbucket serve (setup --serve --no-restore) | $(median "${t_serve[@]}") | ${t_serve[*]} |"
echo "| nixbucket setup (restore into the mirror) | $(median "${t_setup[@]}") | ${t_setup[*]} |"
echo "| nixbucket setup (defaults: restore, then serve) + nix-build | $m_job | ${t_job[*]} |"
for max in ${NAR_MAX_VARIANTS:-}; do
    read -ra times <<<"${variant_times[$max]}"
    echo "| the same with \`--restore-nar-max $max\` | $(median "${times[@]}") | ${times[*]} |"
done
echo
echo "nixbucket setup + build is $(ratio "$m_http" "$m_job")x faster than Nix reading the bucket over http://,"
echo "and $(ratio "$(median "${t_serve[@]}")" "$m_job")x faster than Nix reading it through nixbucket serve."
if ((${#t_s3[@]})); then
    echo "It is $(ratio "$(median "${t_s3[@]}")" "$m_job")x faster than Nix reading it over s3://."
else
    echo "This Nix did not substitute from s3:// (${s3_why:-no reason printed}); that row is left out."
fi
echo
echo "In the last rep the build took $from_mirror of the $count paths from the mirror, the rest from the bucket."
echo
echo "setup's own report (last rep):"
echo
sed -n 's/^/    /p' "$tmp/setup.log"
