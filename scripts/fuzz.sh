#!/usr/bin/env bash
# Fuzzes the parsers that read user and bucket input (narinfo, signing keys, nix.conf editing,
# cache URLs) with proptest, each target for a bounded time. scripts/test.sh (and so CI) runs it
# for 15 s a target; run it longer by hand or on a schedule.
# Usage: scripts/fuzz.sh [SECONDS_PER_TARGET] (default 60).
# A failure prints the minimal input and a NIXBUCKET_FUZZ_SEED=... that replays it.
set -euo pipefail
cd "$(dirname "$0")/.."
export NIXBUCKET_FUZZ_SECS=${1:-60}
targets=(fuzz_narinfo_parser fuzz_key_parsers fuzz_nix_conf_editing fuzz_cache_url_parser)
cargo test --quiet --test fuzz --no-run
status=0
for t in "${targets[@]}"; do
    # One at a time, so each gets the whole time budget of a core.
    if ! cargo test --quiet --test fuzz -- --ignored --exact "$t" --nocapture --test-threads 1; then
        echo "fuzz: $t FAILED" >&2
        status=1
    fi
done
exit $status
