#!/usr/bin/env bash
# Push benchmark (issue 2), everything side by side in one run on the same closure:
#
#   nixbucket push to a fresh file:// cache        | nixbucket push to a fresh bucket of s3s-fs
#   nix copy --to 'file://…?compression=zstd'     | zstd -T0 -3 over the same NAR bytes (the bound)
#   a second nixbucket push to each filled cache (everything cached)
#   peak RSS of nixbucket pushing one 4 GiB path, to file:// and to S3
#
#   bench/push.sh [REPS]        # REPS defaults to 3; the order of the four alternates per rep
#
# Environment: NIXBUCKET (binary; default: cargo build --release here), BENCH_DIR (scratch,
# default /tmp/nixbucket-bench), BASELINES_ONLY=1 (only nix copy and zstd), SKIP_BIG=1 (no 4 GiB
# runs). Prints a Markdown report, also written to $BENCH_DIR/push-report.md.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

reps=${1:-3}
baselines_only=${BASELINES_ONLY:-0}
report=$BENCH_DIR/push-report.md
logs=$BENCH_DIR/logs
mkdir -p "$logs"

top=$("$BENCH_SRC/make-closure.sh")
paths=$(nix-store -qR "$top" | wc -l)
nar_bytes=$(closure_nar_bytes "$top")
[[ $baselines_only == 1 || ${SKIP_BIG:-0} == 1 ]] || big=$("$BENCH_SRC/make-big-path.sh")

if [[ $baselines_only != 1 ]]; then
    bin=$(nixbucket_bin)
    key=$BENCH_DIR/bench-key.sec
    if [[ ! -s $key ]]; then
        nix-store --generate-binary-cache-key nixbucket-bench-1 "$key" "$BENCH_DIR/bench-key.pub"
    fi
    start_s3 "$BENCH_DIR/s3root"
    trap stop_s3 EXIT
    rm -rf "${BENCH_DIR:?}/s3root/"*
fi

# The NAR bytes of the whole closure in one file, for zstd; made once, outside any timing.
nars=$BENCH_DIR/closure.nars
if [[ ! -f $nars || $(stat -c %s "$nars") != "$nar_bytes" ]]; then
    log "dumping the closure's NARs to $nars"
    nix-store -qR "$top" | while IFS= read -r p; do nix-store --dump "$p"; done >"$nars.tmp"
    mv "$nars.tmp" "$nars"
fi

declare -A times=() sizes=() rsss=() cpus=()
# record NAME REP SECONDS: keeps a measurement, with the peak RSS and the CPU seconds (user +
# system) of the last timed command.
record() {
    local rss user sys
    read -r rss user sys <"$BENCH_DIR/last.rss"
    times[$1]+="$3 "
    rsss[$1]+="$rss "
    cpus[$1]+="$(awk -v u="$user" -v s="$sys" 'BEGIN { printf "%.2f", u + s }') "
    cp "$BENCH_DIR/last.log" "$logs/$1.$2.log"
    log "$1 rep $2: $3 s"
}
# timed NAME REP COMMAND...: runs COMMAND under /usr/bin/time (for its peak RSS and CPU time),
# after a sync so the writeback of the previous run does not land in this one. With BENCH_NICE
# set (e.g. -15, as root) every measured command runs at that priority, which on a machine busy
# with other work comes closer to what an idle machine would show.
timed() {
    local name=$1 rep=$2 t
    shift 2
    sync
    t=$(time_cmd ${BENCH_NICE:+nice -n "$BENCH_NICE"} /usr/bin/time -f '%M %U %S' -o "$BENCH_DIR/last.rss" "$@") \
        || die "$name failed (rep $rep)"
    record "$name" "$rep" "$t"
}

run_nixbucket_file() {
    local dir=$BENCH_DIR/cache-file
    rm -rf "$dir"
    timed nixbucket-file "$1" "$bin" push --cache "file://$dir" --signing-key-file "$key" --progress none "$top"
    sizes[nixbucket-file]+="$(du -sb "$dir" | cut -f1) "
    timed nixbucket-file-cached "$1" "$bin" push --cache "file://$dir" --signing-key-file "$key" --progress none "$top"
    rm -rf "$dir"
}
run_nixbucket_s3() {
    local bucket=bench-$1
    mkdir "$BENCH_DIR/s3root/$bucket"
    local url="s3://$bucket?endpoint=http://127.0.0.1:$S3_PORT&region=us-east-1"
    timed nixbucket-s3 "$1" "$bin" push --cache "$url" --signing-key-file "$key" --progress none "$top"
    sizes[nixbucket-s3]+="$(du -sb "$BENCH_DIR/s3root/$bucket" | cut -f1) "
    timed nixbucket-s3-cached "$1" "$bin" push --cache "$url" --signing-key-file "$key" --progress none "$top"
    rm -rf "${BENCH_DIR:?}/s3root/$bucket"
}
run_nix_copy() {
    local dir=$BENCH_DIR/cache-nix-copy
    rm -rf "$dir"
    timed nix-copy "$1" nix copy --to "file://$dir?compression=zstd" "$top"
    sizes[nix-copy]+="$(du -sb "$dir" | cut -f1) "
    rm -rf "$dir"
}
run_zstd() {
    timed zstd-bound "$1" sh -c 'zstd -q -T0 -3 -c "$1" >/dev/null' sh "$nars"
}

if [[ $baselines_only == 1 ]]; then
    order=(nix_copy zstd)
else
    order=(nixbucket_file nixbucket_s3 nix_copy zstd)
fi
for rep in $(seq "$reps"); do
    if ((rep % 2)); then run=("${order[@]}"); else
        run=(); for ((i = ${#order[@]} - 1; i >= 0; i--)); do run+=("${order[i]}"); done
    fi
    log "rep $rep/$reps: ${run[*]}"
    for b in "${run[@]}"; do "run_$b" "$rep"; done
done

# The single 4 GiB path: peak RSS of nixbucket, to file:// and to S3.
if [[ $baselines_only != 1 && ${SKIP_BIG:-0} != 1 ]]; then
    big_bytes=$(closure_nar_bytes "$big")
    for rep in $(seq "$reps"); do
        dir=$BENCH_DIR/cache-big
        rm -rf "$dir"
        timed big-file "$rep" "$bin" push --cache "file://$dir" --signing-key-file "$key" --progress none "$big"
        rm -rf "$dir"
        mkdir "$BENCH_DIR/s3root/big-$rep"
        timed big-s3 "$rep" "$bin" push --cache "s3://big-$rep?endpoint=http://127.0.0.1:$S3_PORT&region=us-east-1" \
            --signing-key-file "$key" --progress none "$big"
        rm -rf "${BENCH_DIR:?}/s3root/big-$rep"
    done
fi

# ---- report ----
med() { median ${times[$1]}; }
mbps() { div "$nar_bytes" "$(awk -v t="$1" 'BEGIN { print t * 1e6 }')" %.0f; }
row() { # NAME LABEL
    [[ -n ${times[$1]:-} ]] || return 0
    local m rss_max size
    m=$(med "$1")
    rss_max=$(printf '%s\n' ${rsss[$1]} | sort -n | tail -1)
    size=${sizes[$1]:+$(median ${sizes[$1]} | awk '{ printf "%.0f MB", $1 / 1e6 }')}
    printf '| %s | %s | %s | %s | %s | %s | %s |\n' "$2" "$m" "${3:-$(mbps "$m")}" "${times[$1]% }" \
        "$(median ${cpus[$1]})" "$(awk -v k="$rss_max" 'BEGIN { printf "%.0f", k / 1024 }')" "${size:--}"
}
{
    echo "## push benchmark, $(date -u +%Y-%m-%dT%H:%MZ), $reps reps"
    echo
    machine_info | sed 's/^/    /'
    echo
    echo "Closure: \`$top\`: $paths store paths, $nar_bytes NAR bytes ($(div "$nar_bytes" 1e6 %.0f) MB)."
    [[ -z ${bin:-} ]] || echo "nixbucket: \`$bin\` ($("$bin" --version 2>/dev/null || echo '?'))"
    [[ -z ${BENCH_NICE:-} ]] || echo "Measured commands ran at nice $BENCH_NICE."
    echo
    echo "| what | median s | MB/s of NAR | all runs (s) | CPU s (user+sys, median) | peak RSS MiB (max) | cache size |"
    echo "| --- | ---: | ---: | --- | ---: | ---: | ---: |"
    row nixbucket-file "nixbucket push → file://"
    row nixbucket-s3 "nixbucket push → s3s-fs"
    row nix-copy "nix copy → file://?compression=zstd"
    row zstd-bound "zstd -T0 -3 over the NAR bytes (bound)"
    row nixbucket-file-cached "second push → file:// (all cached)" -
    row nixbucket-s3-cached "second push → s3s-fs (all cached)" -
    if [[ -n ${times[big-file]:-} ]]; then
        nar_bytes=$big_bytes
        row big-file "one 4 GiB path → file://"
        row big-s3 "one 4 GiB path → s3s-fs"
    fi
    echo
    if [[ -n ${times[nixbucket-file]:-} ]]; then
        r=$(div "$(med nix-copy)" "$(med nixbucket-file)")
        echo "- nix copy / nixbucket file:// = **${r}×** (target ≥ 2.5×: $(awk -v r="$r" 'BEGIN { print (r >= 2.5) ? "met" : "MISSED" }'))"
        echo "- nixbucket file:// / zstd bound = $(div "$(med nixbucket-file)" "$(med zstd-bound)")×;" \
            "nixbucket S3 / file:// = $(div "$(med nixbucket-s3)" "$(med nixbucket-file)")×"
        for n in nixbucket-file-cached nixbucket-s3-cached; do
            echo "- $n: median $(med "$n") s (target < 1 s: $(awk -v t="$(med "$n")" 'BEGIN { print (t < 1) ? "met" : "MISSED" }'))"
        done
        for n in big-file big-s3; do
            [[ -n ${rsss[$n]:-} ]] || continue
            m=$(printf '%s\n' ${rsss[$n]} | sort -n | tail -1)
            echo "- $n: peak RSS max $(div "$m" 1024 %.0f) MiB over ${rsss[$n]% } kB (target < 200 MiB: $(awk -v k="$m" 'BEGIN { print (k < 204800) ? "met" : "MISSED" }'))"
        done
    else
        echo "- nix copy / zstd bound = $(div "$(med nix-copy)" "$(med zstd-bound)")×"
    fi
} | tee "$report"
