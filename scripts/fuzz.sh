#!/usr/bin/env bash
# Runs the cargo-fuzz targets in fuzz/ (nightly toolchain), each for a
# fixed time, from the seed corpus in fuzz/corpus/<target>:
#
#   scripts/fuzz.sh [DURATION] [TARGET...]
#
# DURATION per target in seconds or with a unit (90, 10m, 1h; default
# 5m); TARGET defaults to every target. What a run learns (new inputs) is
# kept in $FUZZ_TARGET_DIR/corpus/<target>, outside the repository; a
# failing input is written to fuzz/artifacts/<target>/ and the script
# fails. SANITIZER (default address) is passed to `cargo fuzz`; the CI's
# short run uses none (the crate forbids unsafe code; overflow checks stay
# on either way).
#
# A missing cargo-fuzz is installed; a missing nightly toolchain fails
# under CI=true and is skipped otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."

duration=${1:-5m}
shift || true
case "$duration" in
    *h) seconds=$(( ${duration%h} * 3600 )) ;;
    *m) seconds=$(( ${duration%m} * 60 )) ;;
    *s) seconds=${duration%s} ;;
    *) seconds=$duration ;;
esac

if ! rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
    if [ "${CI:-}" = true ]; then
        echo "the fuzz targets need the nightly toolchain (rustup toolchain install nightly)"
        exit 1
    fi
    echo "SKIPPED: no nightly toolchain for the fuzz targets"
    exit 0
fi
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked

targets=("$@")
if ((${#targets[@]} == 0)); then
    for t in fuzz/fuzz_targets/*.rs; do targets+=("$(basename "$t" .rs)"); done
fi
target_dir=${FUZZ_TARGET_DIR:-$PWD/fuzz/target}
sanitizer=${SANITIZER:-address}

cd fuzz
cargo +nightly fuzz build -O --sanitizer "$sanitizer" --target-dir "$target_dir"
for t in "${targets[@]}"; do
    echo "-- $t: ${seconds} s"
    learned="$target_dir/corpus/$t"
    mkdir -p "$learned"
    log="$target_dir/$t.log"
    if ! cargo +nightly fuzz run -O --sanitizer "$sanitizer" --target-dir "$target_dir" \
        "$t" "$learned" "corpus/$t" -- \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
        >"$log" 2>&1; then
        tail -40 "$log"
        echo "$t FAILED: the input is in fuzz/artifacts/$t/"
        exit 1
    fi
    grep -E '^stat::(number_of_executed_units|new_units_added)' "$log" | tr '\n' ' '
    echo
done
