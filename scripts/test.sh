#!/usr/bin/env bash
# The whole test suite: installs what the tests need (Nix, the S3 test server, the CI linters)
# if missing, checks formatting and lints, then runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cargo fmt --check
cargo clippy --all-targets --quiet -- -D warnings
# The setup/push tests diff the shared /nix/store, so they run after the rest, one at a time.
cargo nextest run --no-fail-fast -E 'not binary(setup_push)'
cargo nextest run --no-fail-fast -E 'binary(setup_push)' --test-threads 1
