#!/usr/bin/env bash
# Restore benchmark: how long the next job takes to get back a closure the last job pushed,
#
#   nix:       `nix-build` with the bucket itself as Nix's substituter (anonymous HTTP to the
#              bucket; plus `s3://` where this Nix reads S3), path by path as Nix does;
#   nixbucket: `nixbucket setup` (which restores into a local mirror) plus the same `nix-build`,
#
# for a closure of $PATHS small store paths (default 600, in $LAYERS layers, default 20: each
# path names three of the layer below, so the closure has depth), with the bucket (s3s-fs on
# loopback) behind bench/latency-proxy.py adding $RTT_MS of round trip (default 40). Each rep
# deletes the closure from the store and starts Nix with an empty narinfo disk cache, as a
# fresh CI runner does, and the build must substitute every path (it fails if it builds one).
#
#   bench/restore.sh [REPS]                      # on this machine's Nix; REPS defaults to 3
#   NIX_ROOT=sid bench/restore.sh                # Nix from a root made by scripts/nix-roots.sh
#
# Environment: NIXBUCKET, BENCH_DIR, PATHS, LAYERS, RTT_MS, RESTORE_JOBS, NIX_ROOT, BIG=SIZE (a single path of SIZE
# random bytes instead of the small closure, e.g. BIG=2G), FIXTURE=closure (the closure of
# bench/make-closure.sh instead: 583 paths, 1.75 GB of NAR; a Nix root imports it),
# NAR_MAX_VARIANTS="8MiB 1MiB" (rows with setup --restore-nar-max at each size), SKIP_COPY=1
# (no `nix copy --from` row, the slowest). The servers and the proxies run on
# this host, on 127.0.0.1; with NIX_ROOT the Nix side runs in the root (bench/restore-nix.sh).
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

reps=${1:-3}
export PATHS=${PATHS:-600} RTT_MS=${RTT_MS:-40} BIG=${BIG:-} LAYERS=${LAYERS:-20} RESTORE_JOBS=${RESTORE_JOBS:-}
work=$BENCH_DIR/restore
rm -rf "$work"
mkdir -p "$work"
bin=$(nixbucket_bin)

trap stop_helpers EXIT

# The bucket, signed (what nixbucket and Nix's s3:// store use) and anonymous over the same
# directory (a public bucket, what Nix's http:// store reads); each behind its own proxy.
start_s3 "$work/s3"
mkdir -p "$work/s3/bench"
start_anon_s3 "$work/s3"
start_proxy "$S3_PORT" signed
SIGNED_PROXY=$PROXY_PORT
start_proxy "$ANON_PORT" anon
ANON_PROXY=$PROXY_PORT
export SIGNED_PORT=$S3_PORT ANON_PORT SIGNED_PROXY ANON_PROXY
export NIXBUCKET_BIN=$bin WORK=$work REPS=$reps AWS_REGION=us-east-1 AWS_EC2_METADATA_DISABLED=true

if [[ ${FIXTURE:-} == closure ]]; then
    top=$("$BENCH_SRC/make-closure.sh")
    export CLOSURE_NIX=$BENCH_DIR/closure.nix
    if [[ -n ${NIX_ROOT:-} ]]; then
        # The root cannot build it (its builders copy this machine's files): it imports the
        # built closure, in a file under target/, which the root sees.
        mkdir -p "$REPO/target/bench"
        cp "$CLOSURE_NIX" "$REPO/target/bench/closure.nix"
        export CLOSURE_NIX=$REPO/target/bench/closure.nix CLOSURE_EXPORT=$REPO/target/bench/closure.export
        nix-store --export $(nix-store -qR "$top") >"$CLOSURE_EXPORT"
    fi
fi
report=$BENCH_DIR/restore-report.md
if [[ -n ${NIX_ROOT:-} ]]; then
    "$REPO/scripts/in-nix-root.sh" "$NIX_ROOT" "$BENCH_SRC/restore-nix.sh" | tee "$report"
else
    "$BENCH_SRC/restore-nix.sh" | tee "$report"
fi
log "report: $report"
