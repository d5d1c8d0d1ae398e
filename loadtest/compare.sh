#!/usr/bin/env bash
# Compares two guildhall binaries on one stack: each scenario runs ROUNDS times on each binary,
# alternating (A, B, A, B, ...), against the same PostgreSQL (durable) and Redis, so that the
# machine's drift falls on both alike; then redis-benchmark's ZADD and ZREVRANK (run.sh's
# baselines) once, and a table of each binary's mean requests/s, share of its baseline, p99, and
# CPU per request of guildhall, PostgreSQL and Redis.
#
#   loadtest/compare.sh BINARY_A BINARY_B [SCENARIO[,SCENARIO...]]   default: submit,submit-set,rank
#   ROUNDS=2 CONCURRENCY=50 DURATION=10 WARMUP=2 PLAYERS=1000 loadtest/compare.sh /tmp/guildhall-main target/release/guildhall
#
# Copy a binary aside before rebuilding the other (`cp target/release/guildhall /tmp/guildhall-main`).
# Builds guildhall-bench (release) itself, with guildhall (whose binary it does not use). Everything it starts is stopped and removed at exit.
set -euo pipefail
cd "$(dirname "$0")/.."

[[ $# -ge 2 && -x $1 && -x $2 ]] || { echo "usage: loadtest/compare.sh BINARY_A BINARY_B [SCENARIOS]" >&2; exit 2; }
BIN_A=$(realpath "$1")
BIN_B=$(realpath "$2")
SCENARIOS=${3:-submit,submit-set,rank}
ROUNDS=${ROUNDS:-2}
CONCURRENCY=${CONCURRENCY:-50}
DURATION=${DURATION:-10}
WARMUP=${WARMUP:-2}
PLAYERS=${PLAYERS:-1000}
ADMIN_KEY=$(python3 -c 'import secrets; print(secrets.token_hex(24))')

# Both together, as run.sh builds them: guildhall-bench alone unifies features differently and
# rebuilds its dependencies.
cargo build --release -p guildhall -p guildhall-bench

# shellcheck source=lib.sh
source loadtest/lib.sh
start_stack
GUILDHALL_BIN=$BIN_A GUILDHALL_ADMIN_KEY="$ADMIN_KEY" start_guildhall a
BASE_A=$GUILDHALL_BASE PID_A=$GUILDHALL_PID
GUILDHALL_BIN=$BIN_B GUILDHALL_ADMIN_KEY="$ADMIN_KEY" start_guildhall b
BASE_B=$GUILDHALL_BASE PID_B=$GUILDHALL_PID
REDIS_PID=$(redis-cli -h 127.0.0.1 -p "$REDIS_PORT" info server | tr -d '\r' | awk -F: '$1 == "process_id" { print $2 }')
PG_PID=$(head -n 1 "$SERVERS_DIR/pg/postmaster.pid")

# Sums per binary and scenario: requests/s, p99, and CPU per request of each process.
declare -A SUM
add() { SUM[$1]=$(awk -v a="${SUM[$1]:-0}" -v b="$2" 'BEGIN { print a + b }'); }
for scenario in ${SCENARIOS//,/ }; do
  for round in $(seq "$ROUNDS"); do
    for which in a b; do
      if [[ $which == a ]]; then base=$BASE_A pid=$PID_A; else base=$BASE_B pid=$PID_B; fi
      echo
      echo "== $scenario, round $round, binary $which (load average: $(cut -d' ' -f1-3 /proc/loadavg))"
      out=$(GUILDHALL_ADMIN_KEY="$ADMIN_KEY" target/release/guildhall-bench --base "$base" --scenario "$scenario" \
        --concurrency "$CONCURRENCY" --duration "$DURATION" --warmup "$WARMUP" --players "$PLAYERS" \
        --cpu "guildhall=$pid,postgres=$PG_PID+,redis=$REDIS_PID")
      echo "$out"
      json=$(grep '^{' <<<"$out" | tail -n 1)
      [[ $(field errors <<<"$json") == 0 ]] || echo "compare.sh: $scenario on $which had errors" >&2
      add "$scenario,$which,rps" "$(field requests_per_sec <<<"$json")"
      add "$scenario,$which,p99" "$(field p99_ms <<<"$json")"
      for process in guildhall postgres redis; do
        add "$scenario,$which,$process" "$(cpu_field "$process" <<<"$json")"
      done
    done
  done
done

# run.sh's baselines, with the same arguments (see loadtest/README.md).
baseline() {
  redis-benchmark -h 127.0.0.1 -p "$REDIS_PORT" -c "$CONCURRENCY" -n 200000 --csv "$@" | tail -n 1 | tr -d '"' | cut -d, -f2
}
ZADD_RPS=$(baseline -r 1000000 ZADD bench:zadd __rand_int__ 'member:__rand_int__')
seq 0 9999 | awk '{ printf "ZADD bench:board %d member:%012d\r\n", ($1 * 7919) % 1000003, $1 }' \
  | redis-cli -h 127.0.0.1 -p "$REDIS_PORT" --pipe >/dev/null
ZREVRANK_RPS=$(baseline -r 10000 ZREVRANK bench:board 'member:__rand_int__')
declare -A BASELINE=([submit]=$ZADD_RPS [submit-set]=$ZADD_RPS [rank]=$ZREVRANK_RPS)

echo
echo "== means of $ROUNDS rounds each, alternating (A: $BIN_A, B: $BIN_B); ZADD $ZADD_RPS/s, ZREVRANK $ZREVRANK_RPS/s;" \
  "load average at the end $(cut -d' ' -f1-3 /proc/loadavg)"
printf '%-14s %-3s %12s %8s %8s   %-30s\n' "scenario" "" "requests/s" "share" "p99 ms" "CPU us/req guildhall/pg/redis"
for scenario in ${SCENARIOS//,/ }; do
  for which in a b; do
    awk -v s="$scenario" -v w="$which" -v n="$ROUNDS" -v base="${BASELINE[$scenario]:-0}" -v rps="${SUM[$scenario,$which,rps]}" \
      -v p99="${SUM[$scenario,$which,p99]}" -v g="${SUM[$scenario,$which,guildhall]}" -v p="${SUM[$scenario,$which,postgres]}" \
      -v r="${SUM[$scenario,$which,redis]}" 'BEGIN {
        share = base > 0 ? sprintf("%.1f%%", 100 * rps / n / base) : "-"
        printf "%-14s %-3s %12.1f %8s %8.2f   %.1f / %.1f / %.1f\n", s, w, rps / n, share, p99 / n, g / n, p / n, r / n }'
  done
done
