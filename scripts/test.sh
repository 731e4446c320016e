#!/usr/bin/env bash
# The README's test command: installs what is missing, then runs the format
# check, clippy with -D warnings, rustdoc with -D warnings and every test
# (unit, integration, examples, doc tests) with all features.
#
# Tests start real redis-server (standalone and a 3-master cluster) and etcd
# processes on free loopback ports, and check /metrics with promtool; under
# CI a missing tool FAILS them.
#
# The loom models of the rate-limit cell and the lease table run under
# `--cfg battlement_loom` in their own target dir (target/loom), with at
# most LOOM_MAX_PREEMPTIONS (default 3) preemptions per interleaving.
# Each cargo-fuzz target (fuzz/, nightly) runs FUZZ_SECONDS (default 10)
# from its seed corpus; scripts/fuzz.sh runs them longer.
#
# Then the W3C Trace Context test suite (../shared/conformance/
# w3c-trace-context, python3 with venv; it installs aiohttp from PyPI) runs
# against `examples/w3c`: every case must pass. The suite lives beside the
# checkout, not in it; where it is missing the step says so and is skipped.
set -euo pipefail
cd "$(dirname "$0")/.."
# A fresh clone gains nothing from incremental artifacts, which would about
# double the size of target/.
if [ "${CI:-}" = true ]; then export CARGO_INCREMENTAL=0; fi
w3c_suite=../shared/conformance/w3c-trace-context/run.sh

missing=()
command -v redis-server >/dev/null || missing+=(redis-server)
command -v redis-cli >/dev/null || missing+=(redis-tools)
command -v etcd >/dev/null || missing+=(etcd-server)
command -v protoc >/dev/null || missing+=(protobuf-compiler)
# etcd-client's build imports protobuf's well-known types (descriptor.proto).
[ -f /usr/include/google/protobuf/descriptor.proto ] || missing+=(libprotobuf-dev)
command -v promtool >/dev/null || missing+=(prometheus)
if [ -e "$w3c_suite" ]; then
    command -v python3 >/dev/null || missing+=(python3)
    # Debian's python3 makes a venv only with ensurepip, from python3-venv.
    python3 -c 'import ensurepip' 2>/dev/null || missing+=(python3-venv)
fi
if ((${#missing[@]})); then
    echo "installing: ${missing[*]}"
    sudo=""
    if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
# Debian starts the packaged services on install; the tests use their own.
for svc in redis-server etcd prometheus; do
    if command -v systemctl >/dev/null && systemctl is-active --quiet "$svc" 2>/dev/null; then
        systemctl stop "$svc" || true
    fi
done

rustup component list --installed 2>/dev/null | grep -q '^rustfmt' || rustup component add rustfmt
rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy

echo "== fmt";    cargo fmt --all -- --check
echo "== clippy"; cargo clippy --all-targets --all-features -- -D warnings
echo "== clippy (default, no features, each OTLP transport alone)"
cargo clippy --lib -- -D warnings
cargo clippy --lib --no-default-features -- -D warnings
# Each transport alone builds the other's "not built" path.
cargo clippy --lib --no-default-features --features otlp-http -- -D warnings
cargo clippy --lib --no-default-features --features otlp-grpc -- -D warnings
echo "== doc";    RUSTDOCFLAGS="-D warnings" cargo doc --no-deps --all-features
echo "== alert rules"
promtool check rules ops/prometheus-rules.yml
(cd ops && promtool test rules prometheus-rules.test.yml)
echo "== test";   cargo test --all-features --all-targets
echo "== loom"
RUSTFLAGS="--cfg battlement_loom" LOOM_MAX_PREEMPTIONS="${LOOM_MAX_PREEMPTIONS:-3}" \
    CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target}/loom" \
    cargo test --release --lib --no-default-features loom
echo "== fuzz"
SANITIZER=none FUZZ_TARGET_DIR="$(realpath -m "${CARGO_TARGET_DIR:-target}")/fuzz" scripts/fuzz.sh "${FUZZ_SECONDS:-10}"
echo "== w3c trace context"
if [ -e "$w3c_suite" ]; then
    cargo build --all-features --example w3c
    w3c_log=$(mktemp)
    BIND=127.0.0.1:0 "${CARGO_TARGET_DIR:-target}/debug/examples/w3c" >"$w3c_log" 2>&1 &
    w3c_pid=$!
    trap 'kill "$w3c_pid" 2>/dev/null || true; rm -f "$w3c_log"' EXIT
    w3c_url=""
    for _ in $(seq 100); do
        w3c_url=$(sed -n 's/^listening on //p' "$w3c_log")
        [ -n "$w3c_url" ] && break
        kill -0 "$w3c_pid" 2>/dev/null || break
        sleep 0.1
    done
    if [ -z "$w3c_url" ]; then
        echo "the w3c example did not start:"; cat "$w3c_log"; exit 1
    fi
    "$w3c_suite" "$w3c_url"
    kill "$w3c_pid"; wait "$w3c_pid" 2>/dev/null || true
    trap - EXIT; rm -f "$w3c_log"
else
    echo "SKIPPED: the W3C Trace Context suite is missing ($w3c_suite)"
fi
echo "== doctest"; cargo test --all-features --doc
echo "== disk"; du -sh "${CARGO_TARGET_DIR:-target}" fuzz/target 2>/dev/null || true
