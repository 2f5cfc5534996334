# Shared helpers for the benchmark scripts in bench/. Sourced, not run.
#
# Everything the benchmarks create lives under $BENCH_DIR (default /tmp/nixbucket-bench), plus
# the store paths themselves in /nix/store (kept alive by GC roots in $BENCH_DIR).

set -euo pipefail

BENCH_SRC=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$BENCH_SRC/.." && pwd)
BENCH_DIR=${BENCH_DIR:-/tmp/nixbucket-bench}
mkdir -p "$BENCH_DIR"
# Other people's work on a shared machine shows here; the reports print it beside the numbers.
BENCH_LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)

# The real Nix, single-user, no substituters, no sandbox: builders copy from /usr and /root.
export NIX_CONFIG=$'substituters =\nexperimental-features = nix-command\nsandbox = false\nbuild-users-group =\nmax-jobs = 2'

log() { printf '[bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# Seconds since the epoch, with nanoseconds: for differences only.
now() { date +%s.%N; }

# Runs a command with its output sent to $BENCH_DIR/last.log and prints its wall time in seconds.
# Fails (with the log) when the command fails: a benchmark of a failing command is meaningless.
time_cmd() {
    local t0 t1
    t0=$(now)
    if ! "$@" >"$BENCH_DIR/last.log" 2>&1; then
        log "command failed: $*"
        tail -n 30 "$BENCH_DIR/last.log" >&2
        return 1
    fi
    t1=$(now)
    awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f\n", b - a }'
}

# median VALUES...: the median (the mean of the two middle values for an even count).
median() {
    printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END {
        if (NR == 0) { print "nan"; exit }
        if (NR % 2) print v[(NR + 1) / 2]; else printf "%.3f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

# div A B [FORMAT]: A / B.
div() { awk -v a="$1" -v b="$2" -v f="${3:-%.2f}" 'BEGIN { if (b == 0) print "inf"; else printf f "\n", a / b }'; }

# The nixbucket binary: $NIXBUCKET, else a release build of this repository.
nixbucket_bin() {
    if [[ -n ${NIXBUCKET:-} ]]; then
        [[ -x $NIXBUCKET ]] || die "\$NIXBUCKET=$NIXBUCKET is not an executable"
        printf '%s\n' "$NIXBUCKET"
        return
    fi
    local target=${CARGO_TARGET_DIR:-$REPO/target}
    log "building nixbucket (cargo build --release, CARGO_TARGET_DIR=$target)"
    (cd "$REPO" && CARGO_TARGET_DIR=$target cargo build --release --quiet) >&2 \
        || die "cargo build --release failed"
    printf '%s\n' "$target/release/nixbucket"
}

# A free TCP port on 127.0.0.1 (the kernel picks one; the tiny race is acceptable here).
free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# start_s3 ROOT: starts s3s-fs on a free loopback port over ROOT with fixed keys, and sets
# S3_PID, S3_PORT, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY. Stop it with stop_s3.
start_s3() {
    local root=$1 i
    command -v s3s-fs >/dev/null || die "s3s-fs is not installed (cargo install s3s-fs)"
    mkdir -p "$root"
    S3_PORT=$(free_port)
    export AWS_ACCESS_KEY_ID=nixbucketbench AWS_SECRET_ACCESS_KEY=nixbucketbenchsecret
    ${BENCH_NICE:+nice -n "$BENCH_NICE"} s3s-fs --host 127.0.0.1 --port "$S3_PORT" \
        --access-key "$AWS_ACCESS_KEY_ID" --secret-key "$AWS_SECRET_ACCESS_KEY" \
        "$root" >"$BENCH_DIR/s3s-fs.log" 2>&1 &
    S3_PID=$!
    for i in $(seq 100); do
        if (echo >"/dev/tcp/127.0.0.1/$S3_PORT") 2>/dev/null; then return 0; fi
        kill -0 "$S3_PID" 2>/dev/null || die "s3s-fs exited: $(cat "$BENCH_DIR/s3s-fs.log")"
        sleep 0.1
    done
    die "s3s-fs did not listen on 127.0.0.1:$S3_PORT"
}

stop_s3() {
    if [[ -n ${S3_PID:-} ]]; then
        kill "$S3_PID" 2>/dev/null || true
        wait "$S3_PID" 2>/dev/null || true
        S3_PID=
    fi
}

# Processes the helpers below started (s3s-fs without keys, latency proxies); stop_helpers
# ends them by their ids.
HELPER_PIDS=()

# start_anon_s3 ROOT: a second s3s-fs over ROOT that takes unsigned requests (a public bucket,
# or a client that does not sign); sets ANON_PORT.
start_anon_s3() {
    local i
    ANON_PORT=$(free_port)
    s3s-fs --host 127.0.0.1 --port "$ANON_PORT" "$1" >"$BENCH_DIR/s3s-fs-anon.log" 2>&1 &
    HELPER_PIDS+=($!)
    for i in $(seq 100); do
        (echo >"/dev/tcp/127.0.0.1/$ANON_PORT") 2>/dev/null && return 0
        sleep 0.1
    done
    die "s3s-fs (anonymous) did not listen on 127.0.0.1:$ANON_PORT"
}

# start_proxy TARGET_PORT NAME: bench/latency-proxy.py in front of TARGET_PORT, adding RTT_MS
# of round trip; sets PROXY_PORT. With RTT_MS=0 there is no proxy: PROXY_PORT=TARGET_PORT.
start_proxy() {
    local i file=$BENCH_DIR/proxy-$2.port
    if ((${RTT_MS:-0} == 0)); then
        PROXY_PORT=$1
        return
    fi
    rm -f "$file"
    python3 "$BENCH_SRC/latency-proxy.py" 0 "$1" $((RTT_MS / 2)) "$file" \
        >"$BENCH_DIR/proxy-$2.log" 2>&1 &
    HELPER_PIDS+=($!)
    for i in $(seq 100); do [[ -s $file ]] && break; sleep 0.05; done
    [[ -s $file ]] || die "the latency proxy did not start: $(cat "$BENCH_DIR/proxy-$2.log")"
    PROXY_PORT=$(cat "$file")
}

stop_helpers() {
    local pid
    for pid in "${HELPER_PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${HELPER_PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    HELPER_PIDS=()
    stop_s3
}

# NAR bytes of the closure of a path (sum of narSize).
closure_nar_bytes() {
    nix path-info -r --json "$1" | python3 -c 'import json, sys; print(sum(p["narSize"] for p in json.load(sys.stdin)))'
}

machine_info() {
    echo "nproc: $(nproc)"
    echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
    echo "memory: $(free -h | awk '/^Mem:/ { print $2 " total, " $7 " available" }')"
    echo "load average (1, 5, 15 min) at start: $BENCH_LOAD_START; at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "nix: $(nix --version)  zstd: $(zstd --version | head -1)"
}
