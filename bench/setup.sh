#!/usr/bin/env bash
# Setup benchmark (issue 3): on a store of at least $STORE_PATHS paths (default 20,000), times
#
#   nixbucket setup --no-configure --cache file://… --state-file F      (the store snapshot)
#   nixbucket push --dry-run --cache file://… --state-file F            (the store diff, no paths)
#
# each rep after a fresh setup and $NEW_PATHS (default 5) new store paths, which the dry run must
# list. Beside them, for scale: `nix path-info --all`, the Nix way to list the valid paths.
#
#   bench/setup.sh [REPS]      # REPS defaults to 5
#
# The store is filled by one Nix evaluation that writes `builtins.toFile` texts (one process,
# not one per path). Those paths have no GC root: a `nix-store --gc` removes them, and the next
# run recreates them. CLEAN=1 deletes them at the end. Environment: NIXBUCKET, BENCH_DIR,
# STORE_PATHS, NEW_PATHS, BASELINES_ONLY=1 (fill the store, time only `nix path-info --all`).
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

reps=${1:-5}
want=${STORE_PATHS:-20000}
new_paths=${NEW_PATHS:-5}
report=$BENCH_DIR/setup-report.md
cache=$BENCH_DIR/setup-cache
state=$BENCH_DIR/setup-state.json
mkdir -p "$cache"

store_count() { find /nix/store -mindepth 1 -maxdepth 1 ! -name '*.lock' ! -name '.links' | wc -l; }

# to_files NAME-PREFIX COUNT SALT: writes COUNT text files to the store in one evaluation.
to_files() {
    nix-instantiate --eval --strict --read-write-mode -E "
      let paths = builtins.genList
        (i: builtins.toFile \"$1-\${toString i}\" \"nixbucket bench $3 \${toString i}\n\") $2;
      in builtins.deepSeq paths (builtins.length paths)" >/dev/null
}

have=$(store_count)
log "store has $have entries; want >= $want"
if ((have < want)); then
    t=$(time_cmd to_files nixbucket-bench-store "$want" fill)
    log "wrote $want paths with builtins.toFile in one evaluation: $t s"
fi
have=$(store_count)
((have >= want)) || die "store has only $have entries after filling (want $want)"

declare -a t_setup=() t_diff=() t_nix=()
if [[ ${BASELINES_ONLY:-0} != 1 ]]; then bin=$(nixbucket_bin); fi
for rep in $(seq "$reps"); do
    t_nix+=("$(time_cmd nix path-info --all)")
    if [[ -n ${bin:-} ]]; then
        rm -f "$state"
        t_setup+=("$(time_cmd "$bin" setup --no-configure --cache "file://$cache" --state-file "$state")")
        cp "$BENCH_DIR/last.log" "$BENCH_DIR/setup.$rep.log"
        salt="rep $rep $(date +%s%N)"
        to_files "nixbucket-bench-new-$rep" "$new_paths" "$salt"
        t_diff+=("$(time_cmd "$bin" push --dry-run --cache "file://$cache" --state-file "$state")")
        cp "$BENCH_DIR/last.log" "$BENCH_DIR/diff.$rep.log"
        # The dry run must name every new path (and the benchmark is void if it does not).
        listed=$(grep -c "nixbucket-bench-new-$rep-" "$BENCH_DIR/last.log" || true)
        ((listed >= new_paths)) || die "dry run listed $listed of the $new_paths new paths: $(cat "$BENCH_DIR/last.log")"
    fi
    log "rep $rep: nix path-info --all ${t_nix[-1]} s${bin:+, setup ${t_setup[-1]} s, diff ${t_diff[-1]} s}"
done

{
    echo "## setup benchmark, $(date -u +%Y-%m-%dT%H:%MZ), $reps reps"
    echo
    machine_info | sed 's/^/    /'
    echo
    echo "Store: $have entries in /nix/store ($(nix path-info --all | wc -l) valid paths)."
    echo
    echo "| what | median s | all runs (s) |"
    echo "| --- | ---: | --- |"
    echo "| nix path-info --all (for scale) | $(median "${t_nix[@]}") | ${t_nix[*]} |"
    if [[ -n ${bin:-} ]]; then
        echo "| nixbucket setup --no-configure (snapshot) | $(median "${t_setup[@]}") | ${t_setup[*]} |"
        echo "| nixbucket push --dry-run, no paths ($new_paths new; the store diff) | $(median "${t_diff[@]}") | ${t_diff[*]} |"
        echo
        echo "setup said: \`$(tail -n 1 "$BENCH_DIR/setup.$reps.log")\`"
    fi
} | tee "$report"

if [[ ${CLEAN:-0} == 1 ]]; then
    log "deleting the generated store paths"
    find /nix/store -mindepth 1 -maxdepth 1 -name '*-nixbucket-bench-store-*' ! -name '*.lock' -print0 \
        | xargs -0 -r nix-store --delete >/dev/null 2>&1 || log "some paths could not be deleted"
    find /nix/store -mindepth 1 -maxdepth 1 -name '*-nixbucket-bench-new-*' ! -name '*.lock' -print0 \
        | xargs -0 -r nix-store --delete >/dev/null 2>&1 || true
fi
