#!/usr/bin/env bash
# The whole test suite: installs what the tests need (Nix, the S3 test server, the CI linters)
# if missing, checks formatting and lints, then runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cargo fmt --check
cargo clippy --all-targets --quiet -- -D warnings
# The setup/push tests (and the CI integrations and serve, which run setup then push) diff the shared
# /nix/store, so they run after the rest, one at a time.
serial='binary(setup_push) | binary(github_action) | binary(gitlab_ci) | binary(serve)'
cargo nextest run --no-fail-fast -E "not ($serial)"
cargo nextest run --no-fail-fast -E "$serial" --test-threads 1
