#!/usr/bin/env bash
# The README's test command: installs what is missing, then runs the format
# check, clippy with -D warnings, rustdoc with -D warnings and every test
# (unit, integration, examples, doc tests) with all features.
#
# Tests start real redis-server (standalone and a 3-master cluster) and etcd
# processes on free loopback ports, and check /metrics with promtool; under
# CI a missing tool FAILS them.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v redis-server >/dev/null || missing+=(redis-server)
command -v redis-cli >/dev/null || missing+=(redis-tools)
command -v etcd >/dev/null || missing+=(etcd-server)
command -v protoc >/dev/null || missing+=(protobuf-compiler)
# etcd-client's build imports protobuf's well-known types (descriptor.proto).
[ -f /usr/include/google/protobuf/descriptor.proto ] || missing+=(libprotobuf-dev)
command -v promtool >/dev/null || missing+=(prometheus)
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
echo "== clippy (default and no features)"
cargo clippy --lib -- -D warnings
cargo clippy --lib --no-default-features -- -D warnings
echo "== doc";    RUSTDOCFLAGS="-D warnings" cargo doc --no-deps --all-features
echo "== test";   cargo test --all-features --all-targets
echo "== doctest"; cargo test --all-features --doc
