#!/usr/bin/env bash
# Runs every cargo-fuzz target of fuzz/ for a bounded time, one after another, and prints the
# executions and time of each. Exits non-zero if a target crashed (a panic, an abort, a timeout
# or out-of-memory); the input is in fuzz/artifacts/<target>/ (reproduce with
# `cargo +nightly fuzz run -s none -a <target> <file>`).
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]     default: 60 s each, all targets
#
# Not part of CI (the proptests in src/ are). Needs the nightly toolchain; installs cargo-fuzz
# if missing. Starts from the committed corpus fuzz/corpus/<target>/ and writes what it finds
# to a scratch corpus under $CARGO_TARGET_DIR (default fuzz/target), so the committed corpus
# stays as it is. FUZZ_UPDATE_CORPUS=1 merges the scratch corpus into the committed one and
# keeps what covers the most edges within 400 files and 1 MB per target (fuzz/minimise.py; needs
# python3) — for a deliberate corpus update.
#
# Environment: FUZZ_SANITIZER (default none: the crate forbids unsafe code, and without
# AddressSanitizer a target runs 5-15 times faster; `address` for ASan), FUZZ_JOBS (parallel
# fuzzing processes per target, default 1), CARGO_TARGET_DIR.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
fuzz="$root/fuzz"
seconds=${1:-60}
[[ $# -gt 0 ]] && shift
if ! [[ $seconds =~ ^[0-9]+$ ]] || [[ $seconds -eq 0 ]]; then
    echo "usage: $0 [SECONDS] [TARGET...]" >&2
    exit 2
fi
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$fuzz/target}
sanitizer=${FUZZ_SANITIZER:-none}
jobs=${FUZZ_JOBS:-1}

if ! cargo +nightly --version >/dev/null 2>&1; then
    echo "fuzz.sh: the nightly toolchain is needed (rustup toolchain install nightly)" >&2
    exit 2
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz.sh: installing cargo-fuzz" >&2
    cargo install cargo-fuzz --locked
fi

cd "$fuzz"
mapfile -t all < <(cargo +nightly fuzz list)
targets=("$@")
[[ ${#targets[@]} -eq 0 ]] && targets=("${all[@]}")
for target in "${targets[@]}"; do
    if ! grep -qx -- "$target" <<<"$(printf '%s\n' "${all[@]}")"; then
        echo "fuzz.sh: no target $target (have: ${all[*]})" >&2
        exit 2
    fi
done

flags=(-s "$sanitizer" --debug-assertions)
echo "fuzz.sh: building ${targets[*]} (sanitizer $sanitizer)" >&2
for target in "${targets[@]}"; do
    cargo +nightly fuzz build "${flags[@]}" "$target"
done

# The dictionary of a target: fuzz/dicts/<target>.dict, or the one it shares.
dict_of() {
    case $1 in
        webhook_handler) echo "$fuzz/dicts/admission_review.dict" ;;
        *) echo "$fuzz/dicts/$1.dict" ;;
    esac
}

# Merges the scratch corpus into the committed one and keeps what fits the budget (fuzz/minimise.py:
# greedy cover of the edges, without hit counts, under 400 files and 1 MB).
update_corpus() {
    local target=$1 scratch=$2 log=$3 work
    work=$(mktemp -d)
    mkdir "$work/all" "$work/merged"
    cp "$fuzz/corpus/$target"/* "$scratch"/* "$work/all"/ 2>/dev/null || true
    "$CARGO_TARGET_DIR/$host/release/$target" -set_cover_merge=1 -use_counters=0 \
        -merge_control_file="$work/control" "$work/merged" "$work/all" >>"$log" 2>&1
    python3 "$fuzz/minimise.py" "$work/control" "$fuzz/corpus/$target" | sed "s/^/$target: /" >&2
    rm -rf "$work"
}

host=$(rustc +nightly -vV | sed -n 's/^host: //p')
failed=()
summary=()
for target in "${targets[@]}"; do
    scratch="$CARGO_TARGET_DIR/fuzz-corpus/$target"
    log="$CARGO_TARGET_DIR/fuzz-logs/$target.log"
    mkdir -p "$scratch" "$(dirname "$log")" "$fuzz/corpus/$target" "$fuzz/artifacts/$target"
    args=(-max_total_time="$seconds" -timeout=30 -rss_limit_mb=2048 -print_final_stats=1)
    dict=$(dict_of "$target")
    [[ -f $dict ]] && args+=(-dict="$dict")
    [[ $jobs -gt 1 ]] && args+=(-fork="$jobs")
    echo "fuzz.sh: $target for ${seconds}s" >&2
    started=$(date +%s)
    status=0
    cargo +nightly fuzz run "${flags[@]}" "$target" "$scratch" "$fuzz/corpus/$target" \
        -- "${args[@]}" >"$log" 2>&1 || status=$?
    elapsed=$(($(date +%s) - started))
    runs=$(grep -oE '^stat::number_of_executed_units: *[0-9]+' "$log" | grep -oE '[0-9]+$' | tail -1)
    runs=${runs:-$(grep -oE '^Done [0-9]+ runs' "$log" | grep -oE '[0-9]+' | tail -1)}
    runs=${runs:-?}
    if [[ $status -ne 0 ]]; then
        failed+=("$target")
        summary+=("$(printf '%-18s %12s executions %6ss  CRASH (exit %s), log %s' \
            "$target" "$runs" "$elapsed" "$status" "$log")")
        grep -E 'panicked at|ERROR: libFuzzer|SUMMARY|Test unit written' "$log" | head -5 >&2 || true
    else
        rate=$([[ $runs =~ ^[0-9]+$ ]] && echo $((runs / (elapsed > 0 ? elapsed : 1))) || echo '?')
        summary+=("$(printf '%-18s %12s executions %6ss  %8s/s' "$target" "$runs" "$elapsed" "$rate")")
    fi
    if [[ ${FUZZ_UPDATE_CORPUS:-0} == 1 && $status -eq 0 ]]; then
        update_corpus "$target" "$scratch" "$log"
    fi
done

echo
printf '%s\n' "${summary[@]}"
if [[ ${#failed[@]} -gt 0 ]]; then
    echo "fuzz.sh: crashed: ${failed[*]} (inputs in fuzz/artifacts/)" >&2
    exit 1
fi
