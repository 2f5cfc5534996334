#!/usr/bin/env bash
# The main job end to end on the embedded default (a file:// cache, no bucket needed), as a CI
# job runs it: `setup` before the build, `push` after it; then the closure is deleted from the
# store and Nix substitutes it back through the configuration `setup` wrote, checking our
# signature. Nix's settings for the demo live in a throwaway directory, never in /etc/nix.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cargo build --release --quiet
bin=$PWD/target/release/nixbucket

work=$(mktemp -d /tmp/nixbucket-demo.XXXXXX)
mkdir -p "$work/etc"
printf 'substituters =\nsandbox = false\nexperimental-features = nix-command\nbuild-users-group =\n' >"$work/etc/nix.conf"
unset NIX_CONFIG
export NIX_CONF_DIR="$work/etc" NIX_USER_CONF_FILES="$work/nix.conf"
export NIXBUCKET_CACHE="file://$work/cache" NIXBUCKET_STATE_FILE="$work/state.json"
stamp=$(date +%s%N)
cat >"$work/hello.nix" <<NIX
let
  greeting = builtins.derivation {
    name = "greeting"; system = builtins.currentSystem; builder = "/bin/sh";
    PATH = "/usr/bin:/bin"; args = [ "-c" "echo 'hello from nixbucket ($stamp)' > \$out" ];
  };
in builtins.derivation {
  name = "hello-nixbucket"; system = builtins.currentSystem; builder = "/bin/sh";
  PATH = "/usr/bin:/bin";
  args = [ "-c" "mkdir -p \$out/bin; printf '#!/bin/sh\\\\ncat %s\\\\n' \${greeting} > \$out/bin/hello; chmod +x \$out/bin/hello" ];
}
NIX

step() { printf '\n==> %s\n' "$*"; }
step "nixbucket keygen demo-cache-1"
"$bin" keygen demo-cache-1 --secret-file "$work/secret.key" --public-file "$work/public.key"
export NIXBUCKET_SIGNING_KEY_FILE="$work/secret.key"
step "nixbucket setup   (before the build)"
"$bin" setup
step "nix-build"
out=$(nix-build --no-out-link "$work/hello.nix")
"$out/bin/hello"
step "nixbucket push    (after the build: what it added, minus .drv files)"
"$bin" push --dry-run
"$bin" push
step "nixbucket verify --deep"
"$bin" verify --deep --public-key "$(cat "$work/public.key")"
step "deleting the closure from the local store"
nix-store --delete $(nix-store -qR "$out") 2>&1 | grep "^deleting '/nix" | sed 's/^/    /' || true
test ! -e "$out"
step "nix-build again: substituted from the cache that setup configured"
nix-build --no-out-link "$work/hello.nix" 2>&1 | sed 's/^/    /'
"$out/bin/hello"
step "done: $out came back from $NIXBUCKET_CACHE, signature checked (files in $work)"
