#!/usr/bin/env bash
# The full server preset next to bare axum (or any two apps of the stack
# bench), measured side by side: the
# two apps in two processes pinned to CPU 0 (one worker thread each), two
# `wrk` load generators pinned to CPU 1 hitting them at the same time, so
# the two servers share one core and their rates compare their costs alone
# (no client in the same process, no second core to spread over).
#
#   scripts/bench_pinned.sh            # full vs bare, 3 rounds of 5 s
#   SECOND=bare scripts/bench_pinned.sh  # bare vs bare (should read ~1.00)
#   SECOND=peers scripts/bench_pinned.sh # the peers' stack vs bare
#   FIRST=peers scripts/bench_pinned.sh  # full vs the peers' stack
#
# The sampler comes from OTEL_TRACES_SAMPLER / OTEL_TRACES_SAMPLER_ARG, as
# for `cargo bench --bench stack`. Installs wrk when missing (apt-get).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v wrk >/dev/null; then
    sudo=""
    if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends wrk
fi

first="${FIRST:-bare}"
second="${SECOND:-full}"
rounds=3
seconds=5
first_port=18181
second_port=18182

bin=$(cargo bench --bench stack --no-run 2>&1 |
    sed -n 's/.*Executable benches\/stack.rs (\(.*\))$/\1/p')

serve_for=$((rounds * (seconds + 2) + 10))
STACK_SERVE=$first STACK_PORT=$first_port STACK_SECONDS=$serve_for taskset -c 0 "$bin" --bench >/dev/null &
first_pid=$!
STACK_SERVE=$second STACK_PORT=$second_port STACK_SECONDS=$serve_for taskset -c 0 "$bin" --bench >/dev/null &
second_pid=$!
trap 'kill $first_pid $second_pid 2>/dev/null || true' EXIT

# Wait (bounded) until both accept connections.
listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
for _ in $(seq 1 50); do
    if listening $first_port && listening $second_port; then break; fi
    sleep 0.2
done

rate() { awk '/Requests\/sec/ {print $2}' "$1"; }
out=$(mktemp -d)
echo "$first vs $second, both on CPU 0, wrk -t1 -c16 on CPU 1, ${seconds} s per round"
echo "| round | $first req/s | $second req/s | $second/$first |"
echo "|---|---|---|---|"
ratios=()
for round in $(seq 1 $rounds); do
    taskset -c 1 wrk -t1 -c16 -d${seconds}s "http://127.0.0.1:$first_port/hello" >"$out/first" &
    wrk_pid=$!
    taskset -c 1 wrk -t1 -c16 -d${seconds}s "http://127.0.0.1:$second_port/hello" >"$out/second"
    wait $wrk_pid
    first_rate=$(rate "$out/first")
    other=$(rate "$out/second")
    ratio=$(awk -v a="$other" -v b="$first_rate" 'BEGIN { printf "%.2f", a / b }')
    ratios+=("$ratio")
    echo "| $round | $first_rate | $other | $ratio |"
done
median=$(printf '%s\n' "${ratios[@]}" | sort -n | sed -n "$(((rounds + 1) / 2))p")
echo "median $second/$first: $median"
rm -rf "$out"
