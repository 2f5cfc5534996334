#!/usr/bin/env bash
# Benchmark: `nixbucket gc` over a cache of $N (default 50,000) narinfos on a local s3s-fs.
#
# The cache is synthetic but well-formed: narinfos in Nix's format (valid store paths, hashes,
# references forming closures of $GROUP paths), one small NAR object per narinfo, and usage
# records from $JOBS jobs, half of which used their closures within the last week. Objects are
# written straight into s3s-fs's directory and dated 30 days back (s3s-fs reports a file's
# mtime as LastModified). The NARs' bytes are not real NARs: gc never reads them.
#
# Then it times, against the same server: a dry run, the real gc (which deletes about half),
# and a second gc with nothing left to do. Prints one line per run. With CENSUS=1 the server
# logs every request (which slows it down a lot) and each run also prints its requests counted
# by S3 operation: the evidence that the plan is a listing plus GETs, with no HEAD per object.
#
# Usage: bench/gc.sh                  (NIXBUCKET=path/to/binary to skip the release build)
#        N=2000 CENSUS=1 bench/gc.sh  (small cache, count requests)
#        MODE=file bench/gc.sh        (the same cache as file://: gc's own cost)
set -euo pipefail

N=${N:-50000}
GROUP=${GROUP:-10}
JOBS=${JOBS:-40}
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
WORK=${BENCH_DIR:-/tmp/nixbucket-bench-gc}

log() { printf '[gc-bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

if [[ -n ${NIXBUCKET:-} ]]; then
    BIN=$NIXBUCKET
else
    target=${CARGO_TARGET_DIR:-$REPO/target}
    log "building nixbucket (cargo build --release, CARGO_TARGET_DIR=$target)"
    (cd "$REPO" && CARGO_TARGET_DIR=$target cargo build --release --quiet) || die "build failed"
    BIN=$target/release/nixbucket
fi
[[ -x $BIN ]] || die "$BIN is not an executable"
command -v s3s-fs >/dev/null || die "s3s-fs is not installed (scripts/install-deps.sh)"
command -v zstd >/dev/null || die "zstd is not installed"

rm -rf "$WORK"
mkdir -p "$WORK/root/bench"
BUCKET_DIR=$WORK/root/bench

log "writing $N narinfos, $N NARs and $JOBS usage records into $BUCKET_DIR"
t0=$(date +%s.%N)
python3 - "$BUCKET_DIR" "$N" "$GROUP" "$JOBS" <<'PY'
import os, random, subprocess, sys, time
root, n, group, jobs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
alphabet = "0123456789abcdfghijklmnpqrsvwxyz"
rng = random.Random(42)
def b32(k): return "".join(rng.choice(alphabet) for _ in range(k))
# 52 nixbase32 digits carry 260 bits; a SHA-256 has 256, so the leading digit is 0 or 1.
def sha256(): return rng.choice("01") + b32(51)
now = time.time()
month_ago = now - 30 * 86400
os.makedirs(os.path.join(root, "nar"), exist_ok=True)
with open(os.path.join(root, "nix-cache-info"), "w") as f:
    f.write("StoreDir: /nix/store\nWantMassQuery: 1\nPriority: 40\n")
paths = []  # (hash part, base name)
for i in range(n):
    h = b32(32)
    paths.append((h, f"{h}-bench-{i}"))
roots = []
for start in range(0, n, group):
    members = list(range(start, min(start + group, n)))
    roots.append(members[-1])
    for pos, i in enumerate(members):
        h, base = paths[i]
        # Each path refers to up to 3 earlier members of its closure: a DAG, not a chain.
        refs = sorted({paths[j][1] for j in rng.sample(members[:pos], min(pos, 3))})
        body = os.urandom(200)
        file_hash, nar_hash = sha256(), sha256()
        nar_key = f"nar/{file_hash}.nar.zst"
        with open(os.path.join(root, nar_key), "wb") as f:
            f.write(body)
        text = (f"StorePath: /nix/store/{base}\nURL: {nar_key}\nCompression: zstd\n"
                f"FileHash: sha256:{file_hash}\nFileSize: {len(body)}\n"
                f"NarHash: sha256:{nar_hash}\nNarSize: {rng.randint(1000, 10**7)}\n"
                f"References: {' '.join(refs)}\nDeriver: {b32(32)}-bench-{i}.drv\n")
        p = os.path.join(root, f"{h}.narinfo")
        with open(p, "w") as f:
            f.write(text)
        os.utime(p, (month_ago, month_ago))
        os.utime(os.path.join(root, nar_key), (month_ago, month_ago))
# Jobs: each used some closures (by root only; gc follows the references). Half the jobs ran
# within the last week, half 10-29 days ago; each closure is used by one job.
os.makedirs(os.path.join(root, "usage"), exist_ok=True)
rng.shuffle(roots)
for j in range(jobs):
    t = int(now - (rng.randint(1, 6) if j % 2 == 0 else rng.randint(10, 29)) * 86400)
    mine = roots[j::jobs]
    body = "nixbucket-usage 1\n@%d\n%s\n" % (t, "\n".join(paths[r][0] for r in mine))
    key = os.path.join(root, "usage", "%012d-%016x.zst" % (t, rng.getrandbits(64)))
    subprocess.run(["zstd", "-q", "-19", "-o", key], input=body.encode(), check=True)
    os.utime(key, (month_ago, month_ago))
PY
t1=$(date +%s.%N)
log "generated in $(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.1f", b-a}')s"

if [[ ${MODE:-s3} == file ]]; then
    # The same objects as a file:// cache: our plan's own cost, without the server's.
    URL="file://$BUCKET_DIR"
    echo "gc over $N narinfos ($((N / GROUP)) closures of $GROUP, $JOBS usage records) as file://, $(nproc) cores"
    for args in "dry-run --older-than 7d --dry-run" "gc --older-than 7d" "gc-again --older-than 7d"; do
        set -- $args; name=$1; shift
        t0=$(date +%s.%N)
        "$BIN" gc --cache "$URL" "$@" >"$WORK/$name.out" 2>"$WORK/$name.err" \
            || { cat "$WORK/$name.err" >&2; die "$name failed"; }
        t1=$(date +%s.%N)
        printf '%-10s %6ss  %s\n' "$name" "$(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.2f", b-a}')" "$(grep -E "^(would delete|deleted) " "$WORK/$name.err")"
        printf "%-10s %6s   %s\n" "" "" "$(grep "^took " "$WORK/$name.err")"
    done
    echo "narinfos left: $(find "$BUCKET_DIR" -name '*.narinfo' | wc -l) of $N"
    exit 0
fi

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
export AWS_ACCESS_KEY_ID=gcbench AWS_SECRET_ACCESS_KEY=gcbenchsecret AWS_REGION=us-east-1 \
    AWS_EC2_METADATA_DISABLED=true
if [[ ${CENSUS:-0} == 1 ]]; then export RUST_LOG=s3s=debug; else export RUST_LOG=warn; fi
s3s-fs --host 127.0.0.1 --port "$port" \
    --access-key "$AWS_ACCESS_KEY_ID" --secret-key "$AWS_SECRET_ACCESS_KEY" \
    "$WORK/root" >"$WORK/s3s-fs.log" 2>&1 &
S3_PID=$!
trap 'kill "$S3_PID" 2>/dev/null; wait "$S3_PID" 2>/dev/null || true' EXIT
for _ in $(seq 100); do
    (echo >"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
    kill -0 "$S3_PID" 2>/dev/null || die "s3s-fs exited: $(cat "$WORK/s3s-fs.log")"
    sleep 0.1
done
URL="s3://bench?endpoint=http://127.0.0.1:$port&region=us-east-1"

# ops LOGSTART: S3 operations the server logged since byte LOGSTART, counted by name.
ops() {
    tail -c +"$(($1 + 1))" "$WORK/s3s-fs.log" | grep -oE 'resolved route, op: [A-Za-z0-9]+' \
        | awk '{print $4}' | sort | uniq -c | awk '{printf "%s=%s ", $2, $1}'
}

run() {
    local name=$1; shift
    local start t0 t1 secs
    start=$(stat -c %s "$WORK/s3s-fs.log")
    t0=$(date +%s.%N)
    "$BIN" gc --cache "$URL" "$@" >"$WORK/$name.out" 2>"$WORK/$name.err" \
        || { cat "$WORK/$name.err" >&2; die "$name failed"; }
    t1=$(date +%s.%N)
    secs=$(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.2f", b-a}')
    printf '%-10s %6ss  %s\n' "$name" "$secs" "$(grep -E "^(would delete|deleted) " "$WORK/$name.err")"
    printf "%-10s %6s   %s\n" "" "" "$(grep "^took " "$WORK/$name.err")"
    if [[ ${CENSUS:-0} == 1 ]]; then printf '           requests: %s\n' "$(ops "$start")"; fi
}

echo "gc over $N narinfos ($((N / GROUP)) closures of $GROUP, $JOBS usage records) on s3s-fs, $(nproc) cores"
run dry-run --older-than 7d --dry-run
run gc --older-than 7d
run gc-again --older-than 7d
left=$(find "$BUCKET_DIR" -name '*.narinfo' | wc -l)
echo "narinfos left: $left of $N"
