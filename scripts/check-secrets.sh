#!/usr/bin/env bash
# Fails if any secret the tests registered (signing keys, AWS secret keys) appears in any output
# the suite recorded. Usage: scripts/check-secrets.sh DIR, where DIR is the suite's
# $NIXBUCKET_TEST_LOG_DIR: DIR/secrets/* hold one secret a line, DIR/out/* and DIR/*.log the
# outputs (every child's stdout and stderr, and the test runner's own output).
# Never prints a secret: hits are reported as file:line.
set -euo pipefail
dir=${1:?usage: check-secrets.sh DIR}
shopt -s nullglob
outputs=("$dir"/out/* "$dir"/*.log)
secret_files=("$dir"/secrets/*)
if [[ ${#outputs[@]} -eq 0 ]]; then
    echo "check-secrets: no outputs recorded under $dir; the check would prove nothing" >&2
    exit 1
fi
if [[ ${#secret_files[@]} -eq 0 ]]; then
    echo "check-secrets: no secrets registered under $dir/secrets; the check would prove nothing" >&2
    exit 1
fi
patterns=$(mktemp)
trap 'rm -f "$patterns"' EXIT
# An empty pattern would match every line.
cat "${secret_files[@]}" | grep -v '^[[:space:]]*$' | sort -u >"$patterns" || true
if [[ ! -s $patterns ]]; then
    echo "check-secrets: the secret lists under $dir/secrets are empty" >&2
    exit 1
fi
hits=$(mktemp)
trap 'rm -f "$patterns" "$hits"' EXIT
rc=0
grep -nF -f "$patterns" "${outputs[@]}" >"$hits" || rc=$?
if [[ $rc -eq 0 ]]; then
    echo "check-secrets: a registered secret appears in the test output at:" >&2
    cut -d: -f1,2 "$hits" >&2
    exit 1
elif [[ $rc -ne 1 ]]; then
    echo "check-secrets: grep failed (exit $rc)" >&2
    exit 1
fi
echo "check-secrets: $(wc -l <"$patterns") secrets, ${#outputs[@]} output files, no leak"
