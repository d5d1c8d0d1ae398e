#!/usr/bin/env bash
# Benchmarks Guildhall on this machine and puts the figure next to what Redis alone does here.
#
#   loadtest/run.sh [SCENARIO[,SCENARIO...]]        default: me
#   CONCURRENCY=50 DURATION=10 WARMUP=2 PLAYERS=1000 loadtest/run.sh me,login-guest
#
# Builds the release binaries, starts a throwaway PostgreSQL (durable settings) and Redis on free
# loopback ports (scripts/servers.sh), serves guildhall against them with the sign-in rate limit
# lifted, drives each scenario with guildhall-bench, then runs redis-benchmark (ZADD, and ZREVRANK
# on a filled sorted set) against the same Redis with the same concurrency. Everything it starts is
# stopped and removed at exit.
set -euo pipefail
cd "$(dirname "$0")/.."

SCENARIOS=${1:-me}
CONCURRENCY=${CONCURRENCY:-50}
DURATION=${DURATION:-10}
WARMUP=${WARMUP:-2}
PLAYERS=${PLAYERS:-1000}
REDIS_REQUESTS=200000
BOARD_SIZE=10000

cargo build --release -p guildhall -p guildhall-bench

# shellcheck source=../scripts/servers.sh
source scripts/servers.sh
start_servers durable

GUILDHALL_PID=
cleanup() {
  if [[ -n "$GUILDHALL_PID" ]]; then
    kill "$GUILDHALL_PID" 2>/dev/null || true
    wait "$GUILDHALL_PID" 2>/dev/null || true
  fi
  stop_servers
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

"$PG_BIN/createdb" -h 127.0.0.1 -p "$PG_PORT" -U guildhall bench

GUILDHALL_PORT=$(free_port)
BASE="http://127.0.0.1:$GUILDHALL_PORT"
mkdir -p "$SERVERS_DIR/guildhall-data"
DATABASE_URL="postgres://guildhall@127.0.0.1:$PG_PORT/bench" \
REDIS_URL="redis://127.0.0.1:$REDIS_PORT" \
LISTEN_ADDR="127.0.0.1:$GUILDHALL_PORT" \
DATA_DIR="$SERVERS_DIR/guildhall-data" \
RUST_LOG=warn \
RATE_LIMIT_AUTH_PER_IP_PER_MINUTE=100000000 \
  target/release/guildhall serve >"$SERVERS_DIR/guildhall.log" 2>&1 &
GUILDHALL_PID=$!

for _ in $(seq 300); do
  if ! kill -0 "$GUILDHALL_PID" 2>/dev/null; then
    echo "run.sh: guildhall exited during start-up:" >&2
    cat "$SERVERS_DIR/guildhall.log" >&2
    exit 1
  fi
  curl -fsS -o /dev/null "$BASE/health/ready" 2>/dev/null && break
  sleep 0.1
done
curl -fsS -o /dev/null "$BASE/health/ready" || { echo "run.sh: guildhall not ready after 30 s" >&2; cat "$SERVERS_DIR/guildhall.log" >&2; exit 1; }
echo "run.sh: guildhall on $BASE (PostgreSQL database bench, Redis $REDIS_PORT)"

# One field of a guildhall-bench JSON line.
field() { python3 -c 'import json, sys; print(json.loads(sys.stdin.read())[sys.argv[1]])' "$1"; }
# The requests/s figure of redis-benchmark -q output (its progress lines end in \r).
redis_rps() { tr '\r' '\n' | grep -oE '[0-9.]+ requests per second' | tail -n 1 | cut -d' ' -f1; }
percent() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f%%", 100 * a / b }'; }

declare -A RPS P50 P99 ERRORS
RAN=()
for scenario in ${SCENARIOS//,/ }; do
  echo
  echo "== guildhall-bench --scenario $scenario (concurrency $CONCURRENCY, $DURATION s after $WARMUP s warm-up, $PLAYERS players)"
  out=$(target/release/guildhall-bench --base "$BASE" --scenario "$scenario" --concurrency "$CONCURRENCY" \
    --duration "$DURATION" --warmup "$WARMUP" --players "$PLAYERS")
  echo "$out"
  json=$(grep '^{' <<<"$out" | tail -n 1)
  RPS[$scenario]=$(field requests_per_sec <<<"$json")
  P50[$scenario]=$(field p50_ms <<<"$json")
  P99[$scenario]=$(field p99_ms <<<"$json")
  ERRORS[$scenario]=$(field errors <<<"$json")
  RAN+=("$scenario")
done

echo
echo "== redis-benchmark -c $CONCURRENCY -n $REDIS_REQUESTS (same Redis, for comparison)"
ZADD_OUT=$(redis-benchmark -h 127.0.0.1 -p "$REDIS_PORT" -c "$CONCURRENCY" -n "$REDIS_REQUESTS" -q -t zadd)
tr '\r' '\n' <<<"$ZADD_OUT" | grep 'requests per second' | tail -n 1
ZADD_RPS=$(redis_rps <<<"$ZADD_OUT")

# A board of BOARD_SIZE members named as redis-benchmark's __rand_int__ expands with -r (12 digits),
# so every ZREVRANK below finds its member.
seq 0 $((BOARD_SIZE - 1)) | awk '{ printf "ZADD bench:board %d member:%012d\r\n", ($1 * 7919) % 1000003, $1 }' \
  | redis-cli -h 127.0.0.1 -p "$REDIS_PORT" --pipe >/dev/null
[[ $(redis-cli -h 127.0.0.1 -p "$REDIS_PORT" zcard bench:board) -eq $BOARD_SIZE ]] || { echo "run.sh: filling bench:board failed" >&2; exit 1; }
ZREVRANK_OUT=$(redis-benchmark -h 127.0.0.1 -p "$REDIS_PORT" -c "$CONCURRENCY" -n "$REDIS_REQUESTS" -q -r "$BOARD_SIZE" \
  ZREVRANK bench:board 'member:__rand_int__')
tr '\r' '\n' <<<"$ZREVRANK_OUT" | grep 'requests per second' | tail -n 1
ZREVRANK_RPS=$(redis_rps <<<"$ZREVRANK_OUT")

echo
echo "== summary (concurrency $CONCURRENCY)"
for scenario in "${RAN[@]}"; do
  printf '%-28s %10.1f requests/s  p50 %.2f ms  p99 %.2f ms  errors %s\n' "guildhall $scenario" "${RPS[$scenario]}" \
    "${P50[$scenario]}" "${P99[$scenario]}" "${ERRORS[$scenario]}"
done
printf '%-28s %10.1f requests/s\n' "redis-benchmark ZADD" "$ZADD_RPS" "redis-benchmark ZREVRANK" "$ZREVRANK_RPS"
for scenario in "${RAN[@]}"; do
  printf '%-28s %s of ZADD, %s of ZREVRANK\n' "guildhall $scenario" "$(percent "${RPS[$scenario]}" "$ZADD_RPS")" \
    "$(percent "${RPS[$scenario]}" "$ZREVRANK_RPS")"
  if [[ ${ERRORS[$scenario]} -ne 0 ]]; then
    echo "run.sh: warning: $scenario had ${ERRORS[$scenario]} errors; its figure is not a clean throughput" >&2
  fi
done
