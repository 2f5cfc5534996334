#!/usr/bin/env bash
# Captures what each Nix the tests run on prints, for the unit tests that read it without Nix:
# `nix path-info --json` in every format the version knows, `nix store ping`/`info` alone and
# through a daemon (trusted and not), the settings `nix show-config`/`config show` reports, the
# post-build hook's environment, the narinfos `nix copy` writes, a signed realisation, and
# golden NARs. Run as root on the host, after scripts/nix-roots.sh; writes
# tests/fixtures/nix/<version>/. The closure is the same expression everywhere, so every
# version describes the same store paths.
#
#   scripts/capture-nix-fixtures.sh [SUITE...]     (default: the host's Nix, trixie, sid)
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
out=$repo/tests/fixtures/nix

if [[ ${1:-} != --inside ]]; then
    suites=("$@")
    ((${#suites[@]})) || suites=(host trixie sid)
    for suite in "${suites[@]}"; do
        if [[ $suite == host ]]; then
            "$0" --inside "$out"
        else
            "$repo/scripts/in-nix-root.sh" "$suite" "$0" --inside "$out"
        fi
    done
    # Only the settings nixbucket reads are kept of the whole configuration (~100 KB a version).
    for raw in "$out"/*/config-raw.json; do
        python3 - "$raw" "${raw%/config-raw.json}/config.json" <<'EOF'
import json, sys
keys = ["substituters", "trusted-substituters", "trusted-public-keys", "trusted-users",
        "extra-substituters", "post-build-hook", "require-sigs"]
config = json.load(open(sys.argv[1]))
kept = {k: {f: v for f, v in config[k].items() if f in ("value", "defaultValue")}
        for k in keys if k in config}
json.dump(kept, open(sys.argv[2], "w"), indent=1, sort_keys=True)
open(sys.argv[2], "a").write("\n")
EOF
        rm "$raw"
    done
    exit 0
fi

# --inside OUT: runs where the Nix to capture is the one on PATH.
out=$2
tmp=$(mktemp -d)
daemon_pid=
cleanup() {
    [[ -z $daemon_pid ]] || kill "$daemon_pid" 2>/dev/null || true
    rm -rf "$tmp"
}
trap cleanup EXIT
chmod 755 "$tmp"
conf=$'substituters =\nsandbox = false\nexperimental-features = nix-command\nbuild-users-group ='
export NIX_CONFIG=$conf
version=$(nix --version)
dir=$out/${version##* }
rm -rf "$dir"
mkdir -p "$dir"
printf '%s\n' "$version" >"$dir/version.txt"
echo "capture-nix-fixtures: $version -> $dir" >&2

# A closure with a reference, a deriver, a text path (builtins.toFile) and fixed-output paths
# in both hashing modes, so that every `ca` shape appears. The output hashes are of "fixed\n".
cat >"$tmp/fixture.nix" <<'EOF'
let
  drv = name: script: extra: builtins.derivation ({
    inherit name;
    system = builtins.currentSystem;
    builder = "/bin/sh";
    args = [ "-c" script ];
  } // extra);
  note = builtins.toFile "nixbucket-fixture-note" "a text file\n";
  flat = drv "nixbucket-fixture-flat" "printf 'fixed\\n' > $out" {
    outputHashMode = "flat";
    outputHashAlgo = "sha256";
    outputHash = "0d75vbn546fz9d9ip0f03daqhpm99h3fv14ci4afcmk3ir0p2c0c";
  };
  recursive = drv "nixbucket-fixture-recursive" "printf 'fixed\\n' > $out" {
    outputHashMode = "recursive";
    outputHashAlgo = "sha256";
    outputHash = "07y32ljqjzpgw56dgrwfs7f0illrfg8bgkfq0d89p01m677grk1p";
  };
  dep = drv "nixbucket-fixture-dep" "echo dep > $out" { };
in
drv "nixbucket-fixture-top" "echo ${dep} ${note} ${flat} ${recursive} > $out" { }
EOF
# A store that kept the top path from an earlier capture would keep its signature too.
old=$(nix-instantiate --eval --expr "(import $tmp/fixture.nix).outPath" | tr -d '"')
[[ ! -e $old ]] || nix-store --delete "$old" >/dev/null
top=$(nix-build --no-out-link "$tmp/fixture.nix" 2>/dev/null)
drv=$(nix-store --query --deriver "$top")
missing=/nix/store/00000000000000000000000000000000-nixbucket-fixture-missing
nix-store --generate-binary-cache-key nixbucket-fixture-1 "$tmp/secret" "$dir/public-key.txt"
nix store sign --key-file "$tmp/secret" "$top"
printf '%s\n' "$top" >"$dir/top.txt"

# capture NAME CMD...: stdout to NAME, and stderr to NAME.stderr when the command says anything
# there or fails (a deprecation warning, "unknown flag" on an older version).
capture() {
    local name=$1
    shift
    if "$@" >"$dir/$name" 2>"$tmp/stderr"; then
        [[ -s $tmp/stderr ]] && cp "$tmp/stderr" "$dir/$name.stderr"
    else
        { echo "exit $?"; cat "$tmp/stderr"; } >"$dir/$name.stderr"
        [[ -s $dir/$name ]] || rm "$dir/$name"
    fi
    return 0
}

capture path-info.json nix path-info --json --recursive "$top"
capture path-info-derivation.json nix path-info --json --derivation "$drv"
capture path-info-missing.json nix path-info --json "$missing"
for format in 1 2 3; do
    capture "path-info-format-$format.json" nix path-info --json --json-format "$format" --recursive "$top"
    [[ -f $dir/path-info-format-$format.json ]] || continue
    capture "path-info-format-$format-derivation.json" \
        nix path-info --json --json-format "$format" --derivation "$drv"
    capture "path-info-format-$format-missing.json" nix path-info --json --json-format "$format" "$missing"
done

capture store-ping.txt nix store ping
capture store-info.txt nix store info
capture store-info.json nix store info --json
capture config-raw.json nix show-config --json
[[ -s $dir/config-raw.json ]] || capture config-raw.json nix config show --json
rm -f "$dir/config-raw.json.stderr"

# The post-build hook's environment, for a derivation built now.
cat >"$tmp/hook.sh" <<EOF
#!/bin/sh
printf 'OUT_PATHS=%s\nDRV_PATH=%s\n' "\$OUT_PATHS" "\$DRV_PATH" >"$dir/post-build-hook.env"
EOF
chmod +x "$tmp/hook.sh"
cat >"$tmp/hooked.nix" <<'EOF'
builtins.derivation { name = "nixbucket-fixture-hooked"; system = builtins.currentSystem; builder = "/bin/sh"; args = [ "-c" "echo hooked > $out" ]; }
EOF
hooked_out=$(nix-instantiate --eval --expr "(import $tmp/hooked.nix).outPath" | tr -d '"')
nix-store --delete "$hooked_out" >/dev/null 2>&1 || true
NIX_CONFIG="$conf"$'\n'"post-build-hook = $tmp/hook.sh" nix-build --no-out-link "$tmp/hooked.nix" >/dev/null 2>&1

# What `nix copy` writes to a binary cache: the judge of our narinfos (CA lines included).
nix copy --to "file://$tmp/cache" "$top"
mkdir -p "$dir/cache"
cp "$tmp"/cache/*.narinfo "$tmp/cache/nix-cache-info" "$dir/cache/"

# A content-addressed build's realisation as `nix realisation info --json` prints it, signed by
# this Nix itself (secret-key-files): the judge of how src/push/realisations.rs signs one. The
# public key is in the derivation, so that each capture builds it, and signs it, afresh.
cat >"$tmp/ca.nix" <<EOF
builtins.derivation {
  name = "nixbucket-fixture-ca";
  system = builtins.currentSystem;
  builder = "/bin/sh";
  args = [ "-c" "echo ca > \$out" ];
  key = "$(cat "$dir/public-key.txt")";
  __contentAddressed = true;
  outputHashMode = "recursive";
  outputHashAlgo = "sha256";
}
EOF
ca_conf="${conf/nix-command/nix-command ca-derivations}"$'\n'"secret-key-files = $tmp/secret"
NIX_CONFIG=$ca_conf nix-build --no-out-link "$tmp/ca.nix" >/dev/null 2>&1
ca_drv=$(NIX_CONFIG=$ca_conf nix-instantiate "$tmp/ca.nix" 2>/dev/null)
NIX_CONFIG=$ca_conf nix realisation info --json "$ca_drv^out" >"$dir/realisation.json" 2>/dev/null ||
    NIX_CONFIG=$ca_conf nix realisation info --json "$ca_drv" >"$dir/realisation.json"
# The realisation document `nix copy` writes beside the narinfo, from Nix 2.35 on under
# build-trace-v2/<derivation>/<output>.doi (earlier ones under realisations/, whose body is what
# `nix realisation info` prints): the judge of the objects push uploads. Kept under a fixed
# name, with the key Nix wrote it under.
if NIX_CONFIG=$ca_conf nix copy --to "file://$tmp/ca-cache" "$ca_drv^out" 2>/dev/null &&
    [[ -d $tmp/ca-cache/build-trace-v2 ]]; then
    doi=$(cd "$tmp/ca-cache" && find build-trace-v2 -name '*.doi' | head -n 1)
    if [[ -n $doi ]]; then
        printf '%s\n' "$doi" >"$dir/build-trace-key.txt"
        cp "$tmp/ca-cache/$doi" "$dir/build-trace.doi"
    fi
fi

# Derivations as this Nix writes them (src/nix/derivation.rs reads their outputs), one plain
# and one fixed-output, and where this Nix keeps the build log of the one it built.
cp "$drv" "$dir/top.drv"
cp "$(nix-store --query --references "$drv" | grep 'fixture-recursive\.drv$')" "$dir/fixed.drv"
drv_base=${drv##*/}
(cd /nix/var/log/nix && find . -path "*/${drv_base:2}*" | sed 's|^\./||') >"$dir/build-log-path.txt"

# Golden NARs, as `nix-store --dump` writes them: a tree with every kind of entry (an
# executable, an empty file, sizes on and off the 8-byte padding, a symlink and a dangling one,
# an empty directory, a name with spaces and UTF-8, an upper-case name that sorts first), and a
# lone file and a lone symlink. src/nix/nar.rs makes the same tree and must write these bytes.
nar_tree=$tmp/nar-tree
mkdir -p "$nar_tree/sub/deep"
printf 'upper\n' >"$nar_tree/B"
chmod 755 "$nar_tree/B"
printf 'lower' >"$nar_tree/a"
: >"$nar_tree/empty"
ln -s a "$nar_tree/link"
ln -s ../nowhere "$nar_tree/dangling"
printf 'eight by' >"$nar_tree/sub/eight"
printf 'thirteen byte' >"$nar_tree/sub/odd"
printf '\303\251\n' >"$nar_tree/name with spaces "$'\303\251'
chmod 644 "$nar_tree/a" "$nar_tree/empty" "$nar_tree/sub/eight" "$nar_tree/sub/odd" "$nar_tree"/name*
nix-store --dump "$nar_tree" >"$dir/tree.nar"
nix-store --dump "$nar_tree/B" >"$dir/file.nar"
nix-store --dump "$nar_tree/link" >"$dir/symlink.nar"
# And the listing of that tree `nix copy` writes beside a NAR with write-nar-listing=true.
tree_path=$(nix-store --add "$nar_tree")
nix copy --to "file://$tmp/listing?write-nar-listing=true&compression=none" "$tree_path"
cp "$tmp/listing/$(basename "$tree_path" | cut -c1-32).ls" "$dir/tree.ls"

# Through a nix-daemon: as root (trusted) and as `nobody` (not in trusted-users).
mkdir -p "$tmp/daemon-conf" "$tmp/home"
printf '%s\ntrusted-users = root\n' "$conf" >"$tmp/daemon-conf/nix.conf"
chown nobody "$tmp/home"
NIX_CONF_DIR=$tmp/daemon-conf NIX_DAEMON_SOCKET_PATH=$tmp/socket nix-daemon >/dev/null 2>&1 &
daemon_pid=$!
for _ in $(seq 100); do [[ -S $tmp/socket ]] && break; sleep 0.1; done
as_daemon_client() { env NIX_REMOTE=daemon NIX_DAEMON_SOCKET_PATH="$tmp/socket" "$@"; }
as_nobody() { as_daemon_client setpriv --reuid=nobody --regid=nogroup --clear-groups env HOME="$tmp/home" "$@"; }
capture daemon-store-ping-trusted.txt as_daemon_client nix store ping
capture daemon-store-ping-untrusted.txt as_nobody nix store ping
capture daemon-store-info-trusted.json as_daemon_client nix store info --json
capture daemon-store-info-untrusted.json as_nobody nix store info --json
