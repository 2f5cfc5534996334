#!/usr/bin/env bash
# Compression choices side by side (issue 14, part 4). For each variant, per rep:
#
#   nixbucket push of the make-closure.sh closure into a fresh file:// cache
#       → wall s, CPU s (user + system), peak RSS, and the size of the cache's nar/ folder
#   nix copy --from that cache into a fresh store (Nix on this machine, the next job's side)
#       → wall s and CPU s: a cache that is smaller but slower to unpack is not a win
#
# file:// takes the network out: the push is bound by the compressor, and the size column says
# what a link slower than the compressor would carry. The report adds, for a few link speeds,
# push time ≈ max(push wall s, size / speed), since compression and upload overlap. With
# RATE_MBPS (and/or RTT_MS) set, each push goes instead to a fresh bucket of s3s-fs behind
# bench/latency-proxy.py, whose uplink carries RATE_MBPS MB/s: the link is measured, not
# modelled (Nix then copies back from the bucket's folder).
#
#   bench/compression.sh [REPS]                      # REPS defaults to 3; the order alternates
#   RATE_MBPS=50 RTT_MS=40 bench/compression.sh 2    # through a 50 MB/s uplink, 40 ms away
#
# Environment: NIXBUCKET, BENCH_DIR as for push.sh; VARIANTS overrides the list, as
# "NAME=ARGS;NAME=ARGS" (ARGS are push options; a first word @PATH pushes with the nixbucket
# binary at PATH instead, to compare two builds side by side); BIG=1 also pushes the 4 GiB path of
# make-big-path.sh once per variant (peak RSS). Writes $BENCH_DIR/compression-report.md.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

reps=${1:-3}
report=$BENCH_DIR/compression-report.md
logs=$BENCH_DIR/logs
mkdir -p "$logs"
default_variants="zstd-3=--compression-level 3 --zstd-long-window 0"
default_variants+=";zstd-3-long=--compression-level 3 --zstd-long-window 27"
default_variants+=";zstd-1=--compression-level 1 --zstd-long-window 0"
default_variants+=";zstd-1-long=--compression-level 1 --zstd-long-window 27"
default_variants+=";zstd-2-long=--compression-level 2 --zstd-long-window 27"
default_variants+=";zstd-6-long=--compression-level 6 --zstd-long-window 27"
default_variants+=";none=--compression none"
IFS=';' read -r -a variants <<<"${VARIANTS:-$default_variants}"

top=$("$BENCH_SRC/make-closure.sh")
paths=$(nix-store -qR "$top" | wc -l)
nar_bytes=$(closure_nar_bytes "$top")
[[ ${BIG:-0} != 1 ]] || big=$("$BENCH_SRC/make-big-path.sh")
bin=$(nixbucket_bin)
key=$BENCH_DIR/bench-key.sec
if [[ ! -s $key ]]; then
    nix-store --generate-binary-cache-key nixbucket-bench-1 "$key" "$BENCH_DIR/bench-key.pub"
fi
public=$(cat "$BENCH_DIR/bench-key.pub")
network=${RATE_MBPS:-}${RTT_MS:-}
if [[ -n $network ]]; then
    export RTT_MS=${RTT_MS:-0} AWS_EC2_METADATA_DISABLED=true
    start_s3 "$BENCH_DIR/s3root-compression"
    trap stop_helpers EXIT
    RTT_MS=$((RTT_MS > 0 ? RTT_MS : 1)) start_proxy "$S3_PORT" compression
fi

declare -A push_t=() push_cpu=() push_rss=() size=() get_t=() get_cpu=() big_rss=()
# timed: runs "$@" after a sync under /usr/bin/time; sets t, cpu and rss.
timed() {
    sync
    t=$(time_cmd /usr/bin/time -f '%M %U %S' -o "$BENCH_DIR/last.rss" "$@") || die "failed: $*"
    local user sys
    read -r rss user sys <"$BENCH_DIR/last.rss"
    cpu=$(awk -v u="$user" -v s="$sys" 'BEGIN { printf "%.2f", u + s }')
}

run_variant() { # NAME ARGS REP
    local name=$1 rep=$3 dir=$BENCH_DIR/cache-compression store=$BENCH_DIR/store-compression
    local url=file://$dir
    local -a args
    read -r -a args <<<"$2"
    local exe=$bin
    if [[ ${args[0]:-} == @* ]]; then exe=${args[0]#@} args=("${args[@]:1}"); fi
    if [[ -n $network ]]; then
        dir=$BENCH_DIR/s3root-compression/cmp-$rep
        url="s3://cmp-$rep?endpoint=http://127.0.0.1:$PROXY_PORT&region=us-east-1"
    fi
    rm -rf "$dir" "$store"
    [[ -z $network ]] || mkdir -p "$dir"
    timed "$exe" push --cache "$url" --signing-key-file "$key" --progress none "${args[@]}" "$top"
    cp "$BENCH_DIR/last.log" "$logs/compression-$name.$rep.push.log"
    push_t[$name]+="$t " push_cpu[$name]+="$cpu " push_rss[$name]+="$rss "
    size[$name]+="$(du -sb "$dir/nar" | cut -f1) "
    log "$name rep $rep: push $t s ($cpu CPU s), nar/ $(du -sh "$dir/nar" | cut -f1)"
    timed nix copy --from "file://$dir" --to "$store" --option trusted-public-keys "$public" "$top"
    get_t[$name]+="$t " get_cpu[$name]+="$cpu "
    log "$name rep $rep: nix copy --from $t s ($cpu CPU s)"
    chmod -R u+w "$store"
    rm -rf "$dir" "$store"
}

for rep in $(seq "$reps"); do
    if ((rep % 2)); then run=("${variants[@]}"); else
        run=(); for ((i = ${#variants[@]} - 1; i >= 0; i--)); do run+=("${variants[i]}"); done
    fi
    for v in "${run[@]}"; do run_variant "${v%%=*}" "${v#*=}" "$rep"; done
done
if [[ ${BIG:-0} == 1 ]]; then
    for v in "${variants[@]}"; do
        read -r -a args <<<"${v#*=}"
        exe=$bin
        if [[ ${args[0]:-} == @* ]]; then exe=${args[0]#@} args=("${args[@]:1}"); fi
        rm -rf "$BENCH_DIR/cache-big"
        timed "$exe" push --cache "file://$BENCH_DIR/cache-big" --signing-key-file "$key" --progress none "${args[@]}" "$big"
        big_rss[${v%%=*}]=$rss
        log "${v%%=*}: 4 GiB path in $t s, peak RSS $((rss / 1024)) MiB"
        rm -rf "$BENCH_DIR/cache-big"
    done
fi

# ---- report ----
first=${variants[0]%%=*}
mb() { awk -v b="$1" 'BEGIN { printf "%.0f", b / 1e6 }'; }
{
    echo "## compression benchmark, $(date -u +%Y-%m-%dT%H:%MZ), $reps reps"
    echo
    machine_info | sed 's/^/    /'
    echo
    echo "Closure: \`$top\`: $paths store paths, $(mb "$nar_bytes") MB of NAR. nixbucket: \`$bin\`."
    if [[ -n $network ]]; then
        echo "Pushed to s3s-fs through the proxy: ${RATE_MBPS:-unlimited} MB/s uplink, RTT ${RTT_MS} ms."
    else
        echo "Pushed to file://."
    fi
    echo "Medians; ratios are against \`$first\`."
    echo
    echo "| variant | push s | push CPU s | peak RSS MiB | nar/ MB | size × | nix copy --from s | its CPU s |${BIG:+ 4 GiB path RSS MiB |}"
    echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |${BIG:+ ---: |}"
    for v in "${variants[@]}"; do
        n=${v%%=*}
        rss_max=$(printf '%s\n' ${push_rss[$n]} | sort -n | tail -1)
        printf '| %s (`%s`) | %s | %s | %s | %s | %s | %s | %s |' "$n" "${v#*=}" \
            "$(median ${push_t[$n]})" "$(median ${push_cpu[$n]})" "$((rss_max / 1024))" \
            "$(mb "$(median ${size[$n]})")" "$(div "$(median ${size[$n]})" "$(median ${size[$first]})")" \
            "$(median ${get_t[$n]})" "$(median ${get_cpu[$n]})"
        [[ -z ${BIG:-} ]] || printf ' %s |' "$((${big_rss[$n]:-0} / 1024))"
        echo
    done
    [[ -z $network ]] || exit 0
    echo
    echo "Push time if the link, not the compressor, were the bound: max(push s, size / speed)."
    echo
    echo "| variant | 50 MB/s | 100 MB/s | 200 MB/s | 400 MB/s |"
    echo "| --- | ---: | ---: | ---: | ---: |"
    for v in "${variants[@]}"; do
        n=${v%%=*}
        printf '| %s |' "$n"
        for speed in 50 100 200 400; do
            awk -v t="$(median ${push_t[$n]})" -v b="$(median ${size[$n]})" -v s="$speed" \
                'BEGIN { u = b / (s * 1e6); printf " %.1f |", (u > t) ? u : t }'
        done
        echo
    done
} | tee "$report"
