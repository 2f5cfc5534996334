#!/usr/bin/env bash
# The whole test suite: installs what the tests need (Nix, the S3 test server, the CI linters)
# if missing, checks formatting and lints, then runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cargo fmt --check
cargo clippy --all-targets --quiet -- -D warnings
# The static release binary, built once for the run the way release.yml builds it. The tests of
# the action's and the GitLab template's downloads serve it as a release asset; a later run
# reuses the build in the target directory.
NIXBUCKET_RELEASE_BINARY=$(scripts/build-release.sh)
export NIXBUCKET_RELEASE_BINARY
# Every child's output (tests/common run()) and the tests' own output land here; the secrets
# the tests create are registered here too, and check-secrets.sh greps the one for the other.
NIXBUCKET_TEST_LOG_DIR=${NIXBUCKET_TEST_LOG_DIR:-$(mktemp -d -t nixbucket-test-logs.XXXXXX)}
export NIXBUCKET_TEST_LOG_DIR
status=0
# The setup/push tests (and the CI integrations and serve, which run setup then push) diff the
# shared /nix/store, so they run after the rest, one at a time.
serial='binary(setup_push) | binary(restore) | binary(github_action) | binary(gitlab_ci) | binary(serve) | binary(daemon)'
cargo nextest run --no-fail-fast --success-output final -E "not ($serial)" 2>&1 |
    tee -a "$NIXBUCKET_TEST_LOG_DIR/nextest.log" || status=1
cargo nextest run --no-fail-fast --success-output final -E "$serial" --test-threads 1 2>&1 |
    tee -a "$NIXBUCKET_TEST_LOG_DIR/nextest.log" || status=1

# The Nix-facing tests again on each newer Nix (2.26 from trixie, 2.34 from sid), each in a
# Debian root of its own (scripts/nix-roots.sh) with the binaries built above. Not those on moto:
# it runs on the host's Python, which a root does not have, and what it checks (AWS's answers)
# does not change with the Nix version.
nix_parallel='((binary(push) | binary(push_s3)) & not test(/moto/)) | binary(nix_versions) | binary(nix_formats) | (binary(doctor) & test(/^through_a_daemon/) & not test(/moto/))'
# A root sees this repository at the same path, so it runs the binaries where they were built:
# nextest reads what cargo would tell it from two files (no archive, no copy of the binaries).
roots=$(scripts/nix-roots.sh)
built=${CARGO_TARGET_DIR:-target}/nix-roots
mkdir -p "$built"
cargo nextest list --list-type binaries-only --message-format json >"$built/binaries.json"
cargo metadata --format-version 1 >"$built/cargo.json"
for root in $roots; do
    suite=${root##*/}
    echo "=== the Nix-facing tests on Debian $suite's Nix"
    in_root=(scripts/in-nix-root.sh "$suite" cargo-nextest nextest run
        --binaries-metadata "$built/binaries.json" --cargo-metadata "$built/cargo.json"
        --no-fail-fast --success-output final)
    "${in_root[@]}" -E "$nix_parallel" 2>&1 | tee -a "$NIXBUCKET_TEST_LOG_DIR/nextest.log" || status=1
    "${in_root[@]}" -E "($serial) & not test(/moto/)" --test-threads 1 2>&1 |
        tee -a "$NIXBUCKET_TEST_LOG_DIR/nextest.log" || status=1
done
# The fuzz targets, for a bounded time.
scripts/fuzz.sh 15 2>&1 | tee -a "$NIXBUCKET_TEST_LOG_DIR/fuzz.log" || status=1
scripts/check-secrets.sh "$NIXBUCKET_TEST_LOG_DIR" || status=1
exit $status
