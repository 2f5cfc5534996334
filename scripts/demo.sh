#!/usr/bin/env bash
# The main job end to end on the embedded default (a file:// cache, no bucket needed):
# make a key, build a small derivation, push its closure, delete it from the store, and have
# Nix substitute it back from the cache, checking our signatures.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cargo build --release --quiet
bin=$PWD/target/release/nixbucket
export NIX_CONFIG=$'substituters =\nexperimental-features = nix-command\nsandbox = false'

work=$(mktemp -d /tmp/nixbucket-demo.XXXXXX)
cache="file://$work/cache"
stamp=$(date +%s%N)
cat > "$work/hello.nix" <<NIX
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

echo "==> keygen"
"$bin" keygen demo-cache-1 --secret-file "$work/secret.key" --public-file "$work/public.key"
echo "==> nix-build"
out=$(nix-build --no-out-link "$work/hello.nix")
"$out/bin/hello"
echo "==> nixbucket push --cache $cache"
"$bin" push --cache "$cache" --signing-key-file "$work/secret.key" "$out"
echo "==> deleting the closure from the local store"
nix-store --delete $(nix-store -qR "$out") >/dev/null
test ! -e "$out"
echo "==> substituting it back from $cache"
nix-store --realise "$out" --option substituters "$cache" \
  --option trusted-public-keys "$(cat "$work/public.key")" 2>&1 | sed 's/^/    /'
"$out/bin/hello"
echo "==> done: $out came back from the cache, signature checked ($work)"
