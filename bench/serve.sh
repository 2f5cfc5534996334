#!/usr/bin/env bash
# Benchmark of `nixbucket serve` against a real S3 server (s3s-fs) on loopback:
#   1. narinfo lookups per second (wrk, hits and misses),
#   2. a 4 GiB NAR streamed through serve vs fetched straight from s3s-fs,
#   3. serve's peak RSS before and after streaming that NAR,
#   4. the job-end push after a build of a chain of paths, without and with --push-during-build.
# Usage: bench/serve.sh [NAR_SIZE, default 4G]. Needs: wrk, curl, s3s-fs, nix; builds the
# release binary if absent. Everything runs on 127.0.0.1 and is stopped at exit.
set -euo pipefail

NAR_SIZE=${1:-4G}
here=$(cd "$(dirname "$0")/.." && pwd)
target=${CARGO_TARGET_DIR:-$here/target}
bin=$target/release/nixbucket
[[ -x $bin ]] || (cd "$here" && cargo build --release --quiet)
export NIX_CONFIG=$'substituters =\nexperimental-features = nix-command\nsandbox = false\nbuild-users-group ='

work=$(mktemp -d)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 200); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return; sleep 0.05; done; echo "port $1 never opened" >&2; exit 1; }

# A signed s3s-fs (what serve reads with the job's keys) and an anonymous one over the same
# directory (the baseline: fetching the object directly).
mkdir -p "$work/s3/bench"
export AWS_ACCESS_KEY_ID=AKBENCH AWS_SECRET_ACCESS_KEY=bench-secret AWS_REGION=us-east-1 AWS_EC2_METADATA_DISABLED=true
s3_port=$(free_port)
s3s-fs --host 127.0.0.1 --port "$s3_port" --access-key "$AWS_ACCESS_KEY_ID" --secret-key "$AWS_SECRET_ACCESS_KEY" "$work/s3" >"$work/s3.log" 2>&1 &
pids+=($!)
anon_port=$(free_port)
s3s-fs --host 127.0.0.1 --port "$anon_port" "$work/s3" >"$work/anon.log" 2>&1 &
pids+=($!)
wait_port "$s3_port"
wait_port "$anon_port"
cache="s3://bench?endpoint=http://127.0.0.1:$s3_port&region=us-east-1"

# One real pushed path, for a narinfo that hits.
"$bin" keygen bench-1 --secret-file "$work/sk" >/dev/null
echo "builtins.derivation { name = \"serve-bench-$RANDOM$RANDOM\"; system = builtins.currentSystem; builder = \"/bin/sh\"; PATH = \"/usr/bin:/bin\"; args = [\"-c\" \"echo bench > \$out\"]; }" >"$work/p.nix"
path=$(nix-build --no-out-link "$work/p.nix" 2>/dev/null)
"$bin" push --cache "$cache" --signing-key-file "$work/sk" --progress none "$path" 2>/dev/null
hash=$(basename "$path" | cut -c1-32)

# The big NAR: a sparse file in the bucket directory (both paths read the same bytes).
truncate -s "$NAR_SIZE" "$work/s3/bench/big.nar"
mkdir -p "$work/s3/bench/nar"
mv "$work/s3/bench/big.nar" "$work/s3/bench/nar/big.nar"
size=$(stat -c %s "$work/s3/bench/nar/big.nar")

"$bin" serve --cache "$cache" --ready-file "$work/addr" >"$work/serve.log" 2>&1 &
serve_pid=$!
pids+=("$serve_pid")
for _ in $(seq 200); do [[ -s $work/addr ]] && break; sleep 0.05; done
url=$(cat "$work/addr")
rss() { awk -v f="$1" '$1 == f":" {print $2}' "/proc/$serve_pid/status"; }

echo "== nixbucket serve benchmark ($(date -u +%FT%TZ), $(nproc) cores, NAR $NAR_SIZE)"
curl -fsS "$url/$hash.narinfo" >/dev/null
echo "-- narinfo hits: wrk -t2 -c32 -d10s $url/$hash.narinfo"
wrk -t2 -c32 -d10s "$url/$hash.narinfo" | grep -E 'Requests/sec|Latency|Non-2xx|Socket errors' || true
echo "-- narinfo misses: wrk -t2 -c32 -d10s $url/00000000000000000000000000000000.narinfo"
wrk -t2 -c32 -d10s "$url/00000000000000000000000000000000.narinfo" | grep -E 'Requests/sec|Latency|Socket errors' || true
echo "serve RSS after lookups: $(rss VmRSS) kB (peak $(rss VmHWM) kB)"

fetch() { curl -fsS -o /dev/null -w '%{size_download} %{time_total}\n' "$1"; }
echo "-- NAR of $size bytes"
for round in 1 2; do
    read -r direct_bytes direct_s < <(fetch "http://127.0.0.1:$anon_port/bench/nar/big.nar")
    read -r served_bytes served_s < <(fetch "$url/nar/big.nar")
    [[ $direct_bytes == "$size" && $served_bytes == "$size" ]] || { echo "short read: $direct_bytes / $served_bytes of $size" >&2; exit 1; }
    awk -v d="$direct_s" -v s="$served_s" -v n="$size" -v r="$round" 'BEGIN {
        printf "round %d: direct from s3s-fs %.2fs (%.0f MiB/s), through serve %.2fs (%.0f MiB/s): serve takes %+.1f%%\n",
            r, d, n/d/1048576, s, n/s/1048576, (s/d - 1) * 100 }'
done
echo "serve RSS after streaming: $(rss VmRSS) kB (peak $(rss VmHWM) kB)"
curl -fsS "$url/_nixbucket/stats"
echo

# 4. Job-end push with and without uploads during the build. A private Nix configuration, so
# /etc/nix is not touched; a chain of derivations that each take a second and write 16 MiB of
# random data, like a build whose outputs appear one after the other.
conf=$work/conf
mkdir -p "$conf/etc" "$conf/user" "$conf/xdg"
printf 'substituters =\nsandbox = false\nexperimental-features = nix-command\nbuild-users-group =\n' >"$conf/etc/nix.conf"
export NIX_CONF_DIR=$conf/etc NIX_USER_CONF_FILES=$conf/user/nix.conf XDG_CACHE_HOME=$conf/xdg
unset NIX_CONFIG
chain_expr() { # $1: tag
    local expr='null' i
    for i in $(seq 8); do
        expr="(builtins.derivation { name = \"chain-$1-$i\"; system = builtins.currentSystem; builder = \"/bin/sh\"; PATH = \"/usr/bin:/bin\"; prev = $expr; args = [\"-c\" \"mkdir \$out; echo \$prev > \$out/prev; sleep 1; head -c 16777216 /dev/urandom > \$out/blob\"]; })"
    done
    echo "$expr"
}
job() { # $1: tag, $2...: extra setup flags
    local tag=$1
    shift
    "$bin" setup --cache "$cache" --signing-key-file "$work/sk" --state-file "$work/state-$tag.json" "$@" 2>/dev/null
    chain_expr "$tag-$RANDOM$RANDOM" >"$work/chain-$tag.nix"
    local t0 t1 t2
    t0=$(date +%s.%N)
    nix-build --no-out-link "$work/chain-$tag.nix" >/dev/null 2>&1
    t1=$(date +%s.%N)
    "$bin" push --cache "$cache" --signing-key-file "$work/sk" --state-file "$work/state-$tag.json" --progress none 2>"$work/push-$tag.log"
    t2=$(date +%s.%N)
    awk -v b="$(echo "$t1 - $t0" | bc)" -v p="$(echo "$t2 - $t1" | bc)" -v t="$tag" 'BEGIN { printf "%-22s build %.1fs, job-end push %.1fs\n", t":", b, p }'
    sed 's/^/    /' "$work/push-$tag.log"
}
echo "-- job-end push after building 8 x 16 MiB (one path per second)"
job plain --no-configure
job push-during-build --serve --push-during-build
