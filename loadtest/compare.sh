#!/usr/bin/env bash
# Compares two builds of guildhall on one stack: each scenario runs ROUNDS times (default 2) on
# each, alternating, so both see the same machine, database and Redis.
#
#   loadtest/compare.sh BEFORE_BINARY AFTER_BINARY [SCENARIO[,SCENARIO...]]   default: me,login-guest
#   CONCURRENCY=50 DURATION=8 WARMUP=2 PLAYERS=1000 ROUNDS=2 loadtest/compare.sh /tmp/main/guildhall target/release/guildhall
#
# Both binaries serve the same throwaway PostgreSQL (durable) and Redis (loadtest/lib.sh), one
# instance each, started one after the other (the first applies the migrations, so the later
# build's must be a superset). The tool is target/release/guildhall-bench (or $BENCH_BIN). For
# each run it prints the tool's report, and at the end one row per run: requests/s, p99, and the
# CPU each process spent per request (PostgreSQL's counts its connection processes: both
# instances', the idle one's included), with the load average when the run ended.
set -euo pipefail
cd "$(dirname "$0")/.."

[[ $# -ge 2 ]] || { sed -n '2,13p' "$0" >&2; exit 2; }
BEFORE=$(realpath "$1")
AFTER=$(realpath "$2")
SCENARIOS=${3:-me,login-guest}
CONCURRENCY=${CONCURRENCY:-50}
DURATION=${DURATION:-8}
WARMUP=${WARMUP:-2}
PLAYERS=${PLAYERS:-1000}
ROUNDS=${ROUNDS:-2}
BENCH_BIN=${BENCH_BIN:-target/release/guildhall-bench}
ADMIN_KEY=$(python3 -c 'import secrets; print(secrets.token_hex(24))')

# shellcheck source=lib.sh
source loadtest/lib.sh
start_stack
declare -A BASE PID
for build in before after; do
  bin=$BEFORE
  [[ $build == after ]] && bin=$AFTER
  GUILDHALL_BIN=$bin GUILDHALL_ADMIN_KEY="$ADMIN_KEY" start_guildhall "$build"
  BASE[$build]=$GUILDHALL_BASE PID[$build]=$GUILDHALL_PID
done
REDIS_PID=$(redis-cli -h 127.0.0.1 -p "$REDIS_PORT" info server | tr -d '\r' | awk -F: '$1 == "process_id" { print $2 }')
PG_PID=$(head -n 1 "$SERVERS_DIR/pg/postmaster.pid")

ROWS=()
for scenario in ${SCENARIOS//,/ }; do
  for round in $(seq "$ROUNDS"); do
    for build in before after; do
      echo
      echo "== $scenario, round $round, $build (${BASE[$build]})"
      out=$(GUILDHALL_ADMIN_KEY="$ADMIN_KEY" "$BENCH_BIN" --base "${BASE[$build]}" --scenario "$scenario" \
        --concurrency "$CONCURRENCY" --duration "$DURATION" --warmup "$WARMUP" --players "$PLAYERS" \
        --cpu "guildhall=${PID[$build]},postgres=$PG_PID+,redis=$REDIS_PID")
      echo "$out"
      json=$(grep '^{' <<<"$out" | tail -n 1)
      load=$(cut -d' ' -f1 /proc/loadavg)
      ROWS+=("$(printf '%-12s %5s %-7s %10.1f %8.2f %7s %10s %9s %7s %6s %6s' "$scenario" "$round" "$build" \
        "$(field requests_per_sec <<<"$json")" "$(field p99_ms <<<"$json")" "$(field errors <<<"$json")" \
        "$(cpu_field guildhall <<<"$json")" "$(cpu_field postgres <<<"$json")" "$(cpu_field redis <<<"$json")" \
        "$(cpu_field guildhall-bench <<<"$json")" "$load")")
    done
  done
done

echo
echo "== summary (concurrency $CONCURRENCY, $DURATION s after $WARMUP s warm-up, $PLAYERS players; before $BEFORE, after $AFTER)"
printf '%-12s %5s %-7s %10s %8s %7s %10s %9s %7s %6s %6s\n' scenario round build requests/s "p99 ms" errors \
  "CPU us: gh" postgres redis tool load
printf '%s\n' "${ROWS[@]}"
show_guildhall_logs
