#!/usr/bin/env bash
# Fault soak: the axum example (server preset, two instances on one Redis,
# config from etcd) under steady concurrent load while Redis is frozen
# (SIGSTOP), thawed, killed (SIGKILL) and restarted, and etcd the same way.
# Two runs: the rate limiter fail-open (66 s of load), then fail-closed
# (31 s). Prints a table per run (phase, requests, rps, p50/p99, RSS,
# statuses) and the checks; exits non-zero when one fails:
#   - no panic in either instance's log, both instances alive at the end;
#   - every response has a documented status;
#   - the failure policy is obeyed during each outage and counted exactly
#     against the instances' `battlement_events_total` metrics;
#   - no idempotency key executes twice across the two instances;
#   - RSS bounded; decisions resume within 1 s of each recovery;
#   - p99 <= store timeout + 10 ms and rps >= 90 % of the steady rate in
#     every fault and recovery phase.
#
# Needs redis-server, redis-cli, etcd and curl on PATH. It wants a quiet
# machine: run it alone, e.g.
#   flock /tmp/cargo.lock scripts/soak.sh
# SOAK_TIMEOUT_MS (default 50) is the Redis per-call timeout,
# SOAK_CONNECTIONS (default 16) the number of concurrent connections.
# Then the failover and network-fault phases (SOAK_FAULTS=0 skips them;
# SOAK_FAILOVER_SECS, default 10, and SOAK_FAULT_MS, default 4000, set
# their phases).
# (Internally, `scripts/soak.sh fault PHASE` applies one phase's fault.)
set -euo pipefail

redis_start() {
	redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no \
		--protected-mode no --daemonize yes --pidfile "$SOAK_DIR/redis.pid" \
		--logfile "$SOAK_DIR/redis.log" --dir "$SOAK_DIR" >/dev/null
	for _ in $(seq 200); do
		[ "$(redis-cli -p "$REDIS_PORT" ping 2>/dev/null)" = PONG ] && return 0
		sleep 0.02
	done
	echo "redis did not start" >&2
	return 1
}

etcd_start() {
	setsid etcd --name soak --data-dir "$SOAK_DIR/etcd" \
		--listen-client-urls "http://127.0.0.1:$ETCD_PORT" \
		--advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
		--listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
		--initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
		--initial-cluster "soak=http://127.0.0.1:$ETCD_PEER_PORT" \
		--log-level error >>"$SOAK_DIR/etcd.log" 2>&1 </dev/null &
	echo $! >"$SOAK_DIR/etcd.pid"
	for _ in $(seq 500); do
		curl -fs "http://127.0.0.1:$ETCD_PORT/health" 2>/dev/null | grep -q '"health":"true"' && return 0
		sleep 0.02
	done
	echo "etcd did not start" >&2
	return 1
}

# Kills with SIGKILL and waits until the process is gone.
kill_hard() {
	local pid
	pid=$(cat "$1")
	kill -KILL "$pid"
	# Gone, or a zombie nobody reaped yet.
	while [ -e "/proc/$pid" ] && ! grep -q ') Z ' "/proc/$pid/stat" 2>/dev/null; do sleep 0.01; done
}

# Applies the fault of phase $1 and returns once it is in place.
fault() {
	case "$1" in
	redis-freeze) kill -STOP "$(cat "$SOAK_DIR/redis.pid")" ;;
	redis-thaw) kill -CONT "$(cat "$SOAK_DIR/redis.pid")" ;;
	redis-kill*) kill_hard "$SOAK_DIR/redis.pid" ;;
	redis-restart*) redis_start ;;
	etcd-freeze) kill -STOP "$(cat "$SOAK_DIR/etcd.pid")" ;;
	etcd-thaw) kill -CONT "$(cat "$SOAK_DIR/etcd.pid")" ;;
	etcd-kill*) kill_hard "$SOAK_DIR/etcd.pid" ;;
	etcd-restart*) etcd_start ;;
	etcd-config)
		# The per-IP quota, changed through etcd's JSON gateway.
		local key value
		key=$(printf '/battlement/config/rate_limit/per-ip' | base64 -w0)
		value=$(printf '{"count": %s, "period": "1s"}' "$SOAK_CONFIG_QUOTA" | base64 -w0)
		curl -fs -X POST "http://127.0.0.1:$ETCD_PORT/v3/kv/put" \
			-d "{\"key\": \"$key\", \"value\": \"$value\"}" >/dev/null
		;;
	*) ;;
	esac
}

if [ "${1:-}" = fault ]; then
	fault "$2"
	exit 0
fi

cd "$(dirname "$0")/.."
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
export SOAK_DIR
SOAK_DIR=$(mktemp -d /dev/shm/battlement-soak.XXXXXX 2>/dev/null || mktemp -d)
export REDIS_PORT ETCD_PORT ETCD_PEER_PORT
REDIS_PORT=$(free_port)
ETCD_PORT=$(free_port)
ETCD_PEER_PORT=$(free_port)
export SOAK_CONFIG_QUOTA=999999
TIMEOUT_MS=${SOAK_TIMEOUT_MS:-50}
instances=()

cleanup() {
	for pid in "${instances[@]}"; do kill "$pid" 2>/dev/null || true; done
	[ -f "$SOAK_DIR/redis.pid" ] && kill -CONT "$(cat "$SOAK_DIR/redis.pid")" 2>/dev/null && kill "$(cat "$SOAK_DIR/redis.pid")" 2>/dev/null
	[ -f "$SOAK_DIR/etcd.pid" ] && kill -CONT "$(cat "$SOAK_DIR/etcd.pid")" 2>/dev/null && kill "$(cat "$SOAK_DIR/etcd.pid")" 2>/dev/null
	wait 2>/dev/null || true
}
trap cleanup EXIT

echo "building (release)..."
cargo build --release --quiet --features redis,etcd --example axum --example soak
target=${CARGO_TARGET_DIR:-target}/release/examples
cp "$target/axum" "$target/soak" "$SOAK_DIR/"

redis_start
etcd_start
failed=0

# One run: two fresh instances with the rate limiter's failure policy $1,
# then the driver through the phases $2.
soak_run() {
	local policy=$1 phases=$2
	local ports=("$(free_port)" "$(free_port)")
	instances=()
	for i in 0 1; do
		BIND="127.0.0.1:${ports[$i]}" REDIS_URL="redis://127.0.0.1:$REDIS_PORT" \
			ETCD_ENDPOINTS="http://127.0.0.1:$ETCD_PORT" RATE_LIMIT=1000000/s \
			REDIS_TIMEOUT="${TIMEOUT_MS}ms" RATE_LIMIT_FAILURE="$policy" \
			RUST_LOG=info NO_COLOR=1 \
			"$SOAK_DIR/axum" >"$SOAK_DIR/$policy-$i.log" 2>&1 &
		instances+=($!)
	done
	for port in "${ports[@]}"; do
		for _ in $(seq 500); do
			curl -fs "http://127.0.0.1:$port/readyz" >/dev/null 2>&1 && break
			sleep 0.02
		done
	done
	SOAK_TARGETS="http://127.0.0.1:${ports[0]},http://127.0.0.1:${ports[1]}" \
		SOAK_PIDS="${instances[0]},${instances[1]}" SOAK_PHASES="$phases" \
		SOAK_FAULT="$PWD/scripts/soak.sh fault" SOAK_POLICY="$policy" \
		SOAK_TIMEOUT_MS="$TIMEOUT_MS" SOAK_RUN="$policy" \
		"$SOAK_DIR/soak" || failed=1

	# Both instances alive, no panic in their logs.
	for i in 0 1; do
		if ! kill -0 "${instances[$i]}" 2>/dev/null; then
			echo "FAIL instance $i exited during the run"
			failed=1
		fi
	done
	local panics
	panics=$(cat "$SOAK_DIR/$policy-0.log" "$SOAK_DIR/$policy-1.log" | grep -c 'panicked' || true)
	if [ "$panics" = 0 ]; then echo "PASS 0 panics in both instances' logs"; else
		echo "FAIL $panics panics:"
		grep -h -A3 panicked "$SOAK_DIR/$policy-0.log" "$SOAK_DIR/$policy-1.log" | head -20
		failed=1
	fi
	# Each idempotency key executed at most once across both instances.
	local executed twice
	executed=$(cat "$SOAK_DIR/$policy-0.log" "$SOAK_DIR/$policy-1.log" | grep 'order executed' | grep -o 'key=[^ ]*' | sort)
	twice=$(printf '%s\n' "$executed" | grep -v '^$' | uniq -d | wc -l)
	local runs keys
	runs=$(printf '%s\n' "$executed" | grep -vc '^$' || true)
	keys=$(printf '%s\n' "$executed" | grep -v '^$' | uniq | wc -l)
	if [ "$twice" = 0 ]; then
		echo "PASS idempotency: $runs executions of $keys keys across both instances, none twice"
	else
		echo "FAIL idempotency: $twice keys executed more than once"
		failed=1
	fi
	for pid in "${instances[@]}"; do kill "$pid" 2>/dev/null || true; done
	wait "${instances[@]}" 2>/dev/null || true
	instances=()
}

soak_run fail_open "warmup:3:warmup,steady:10:steady,redis-freeze:6:outage,redis-thaw:6:recovery,redis-kill:6:outage,redis-restart:6:recovery,redis-kill2:3:outage,redis-restart2:5:recovery,etcd-freeze:4:other,etcd-thaw:4:other,etcd-kill:4:other,etcd-restart:5:other,etcd-config:4:config"
soak_run fail_closed "warmup:3:warmup,steady:8:steady,redis-freeze:5:outage,redis-thaw:5:recovery,redis-kill:5:outage,redis-restart:5:recovery"

# Stop Redis and etcd while their pid files are there.
trap - EXIT
cleanup

# Redis Cluster failover and network faults: the tests that CI runs short
# (3 s and 1.2 s phases), here with longer phases. The failover phase runs
# two instances of the axum example on a 3-master, 3-replica cluster
# through CLUSTER FAILOVER and a master's SIGKILL; the proxy phases put
# latency, a bandwidth limit, resets mid-reply, a blackhole and a
# half-open peer between the preset and Redis, then etcd. Each prints its
# table and fails on a broken check (see the tests' docs).
if [ "${SOAK_FAULTS:-1}" = 1 ]; then
	echo "== Redis Cluster failover and network faults (debug test builds)"
	FAILOVER_PHASE_SECS=${SOAK_FAILOVER_SECS:-10} FAULT_PHASE_MS=${SOAK_FAULT_MS:-4000} \
		cargo test --quiet --all-features --test redis_failover --test store_network_faults --test idempotency_lock_renewal \
		-- --nocapture --test-threads 1 || failed=1
fi
if [ "$failed" = 0 ]; then echo "soak: every check held"; else echo "soak: FAILED (logs in $SOAK_DIR)"; exit 1; fi
rm -rf "$SOAK_DIR"
