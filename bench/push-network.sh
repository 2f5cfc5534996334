#!/usr/bin/env bash
# Push over a network: nixbucket against `nix copy --to s3://` of a current Nix, side by side
# in one run on the same closure and the same s3s-fs root, with the bucket on loopback or
# behind bench/latency-proxy.py ($RTT_MS of round trip, default 40; 0 = no proxy). Contenders:
#
#   nixbucket push to a fresh bucket, then again to the same bucket (nothing left to push);
#   nix copy --to s3://…?compression=zstd, with Nix's defaults otherwise;
#   the same with multipart-upload=true&parallel-compression=true;
#   nix copy --to file://…?compression=zstd (no network);
#   zstd -T0 -3 over the same NAR bytes (the bound of the compression alone).
#
# Closures: FIXTURE=small (default): $PATHS small paths in $LAYERS layers (bench/small-closure.sh,
# default 600 and 20); FIXTURE=closure: the closure of bench/make-closure.sh.
#
#   bench/push-network.sh [REPS]                  # REPS defaults to 3
#   RTT_MS=0 FIXTURE=closure bench/push-network.sh 2
#
# The Nix side runs in the Debian root $NIX_ROOT of scripts/nix-roots.sh (default sid: Nix
# 2.34; empty: this machine's Nix). Nix's S3 store in Debian's 2.34 sends unsigned requests, so
# it talks to an anonymous s3s-fs over the same root; nixbucket signs, to a signed one.
# Environment: NIXBUCKET, BENCH_DIR, NIX_ROOT, RTT_MS, FIXTURE, PATHS, LAYERS.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

reps=${1:-3}
export RTT_MS=${RTT_MS:-40} PATHS=${PATHS:-600} LAYERS=${LAYERS:-20} FIXTURE=${FIXTURE:-small}
NIX_ROOT=${NIX_ROOT-sid}
bin=$(nixbucket_bin)
# Under target/: the Nix root sees this repository at the same path.
work=$REPO/target/bench/push-network
rm -rf "$work"
mkdir -p "$work/s3"
trap stop_helpers EXIT

start_s3 "$work/s3"
start_anon_s3 "$work/s3"
start_proxy "$S3_PORT" signed
SIGNED_PROXY=$PROXY_PORT
start_proxy "$ANON_PORT" anon
ANON_PROXY=$PROXY_PORT
# A fresh bucket for every push that is timed (s3s-fs: a bucket is a folder of its root).
for rep in $(seq "$reps"); do mkdir -p "$work/s3/nixbucket-$rep" "$work/s3/copy-$rep" "$work/s3/copymp-$rep"; done

if [[ $FIXTURE == closure ]]; then
    top=$("$BENCH_SRC/make-closure.sh")
    # The root cannot build it (its builders copy this machine's files): it imports it.
    nix-store --export $(nix-store -qR "$top") >"$work/closure.export"
    export CLOSURE_EXPORT=$work/closure.export CLOSURE_TOP=$top
fi
# The binary too, wherever $NIXBUCKET is.
cp "$bin" "$work/nixbucket"
export NIXBUCKET_BIN=$work/nixbucket WORK=$work REPS=$reps SIGNED_PROXY ANON_PROXY \
    AWS_REGION=us-east-1 AWS_EC2_METADATA_DISABLED=true
report=$BENCH_DIR/push-network-report.md
if [[ -n $NIX_ROOT ]]; then
    "$REPO/scripts/in-nix-root.sh" "$NIX_ROOT" "$BENCH_SRC/push-network-nix.sh" | tee "$report"
else
    "$BENCH_SRC/push-network-nix.sh" | tee "$report"
fi
log "report: $report"
