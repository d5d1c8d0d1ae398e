#!/usr/bin/env bash
# Benchmarks Guildhall on this machine and puts the figures next to what Redis alone does here.
#
#   loadtest/run.sh [SCENARIO[,SCENARIO...]]        default: submit,submit-set,rank
#   CONCURRENCY=50 DURATION=10 WARMUP=2 PLAYERS=1000 loadtest/run.sh submit,rank,me
#   METRICS_COMPARE=1 ROUNDS=3 loadtest/run.sh rank,me   # also: the cost of the metrics listener
#
# Builds the release binaries, starts a throwaway PostgreSQL (durable settings) and Redis on free
# loopback ports and serves guildhall against them with the sign-in rate limit lifted and a random
# admin key (loadtest/lib.sh), drives each scenario with guildhall-bench, then runs
# redis-benchmark (ZADD of random members, and ZREVRANK on a filled sorted set) against the same
# Redis with the same concurrency. The summary gives each leaderboard scenario's throughput as a
# share of its Redis baseline (submit: ZADD, rank: ZREVRANK) against the issue's targets. Everything
# it starts is stopped and removed at exit. The chat scenario has its own script, loadtest/chat.sh.
#
# With METRICS_COMPARE=1 a second instance runs beside the first on the same stack, with
# METRICS_ADDR set and its /metrics scraped every second (sixty times as often as the ADOT sidecar
# on ECS); each scenario runs ROUNDS times (default 2) on each instance, alternating, and a last
# table gives the ratios of their throughput and CPU per request. (The request counters run in
# both: the console reads them without METRICS_ADDR; this measures the listener and its scrapes.
# The counters' own cost per request is the platform test `cost_of_recording_a_request`.)
set -euo pipefail
cd "$(dirname "$0")/.."

SCENARIOS=${1:-submit,submit-set,rank}
if [[ ",$SCENARIOS," == *,chat,* ]]; then
  echo "run.sh: chat runs over two instances with its own settings: use loadtest/chat.sh" >&2
  exit 2
fi
CONCURRENCY=${CONCURRENCY:-50}
DURATION=${DURATION:-10}
WARMUP=${WARMUP:-2}
PLAYERS=${PLAYERS:-1000}
REDIS_REQUESTS=200000
# ZADD's scores and members are drawn from this many values (submit's scores are 0..1 000 000).
ZADD_KEYSPACE=1000000
BOARD_SIZE=10000

# The performance issue's (14) targets: each scenario's share of its Redis baseline's requests/s,
# and its p99. (The leaderboard issue's were 25 / 25 / 40 %.)
declare -A BASELINE=([submit]=ZADD [submit-set]=ZADD [rank]=ZREVRANK)
declare -A TARGET_PERCENT=([submit]=35 [submit-set]=15 [rank]=45)
TARGET_P99_MS=10

# The server key guildhall is started with; the tool creates its leaderboards with it. Handed over
# in the environment, not on a command line, so it does not show in the process list.
ADMIN_KEY=$(python3 -c 'import secrets; print(secrets.token_hex(24))')

cargo build --release -p guildhall -p guildhall-bench

# shellcheck source=lib.sh
source loadtest/lib.sh
start_stack
GUILDHALL_ADMIN_KEY="$ADMIN_KEY" start_guildhall main
BASE=$GUILDHALL_BASE
MAIN_PID=$GUILDHALL_PID
METRICS_COMPARE=${METRICS_COMPARE:-0}
ROUNDS=${ROUNDS:-2}
if [[ $METRICS_COMPARE == 1 ]]; then
  METRICS_PORT=$(free_port)
  METRICS_ADDR="127.0.0.1:$METRICS_PORT" GUILDHALL_ADMIN_KEY="$ADMIN_KEY" start_guildhall metrics
  METRICS_BASE=$GUILDHALL_BASE
  METRICS_PID=$GUILDHALL_PID
  curl -fsS -o /dev/null "http://127.0.0.1:$METRICS_PORT/metrics" || { echo "run.sh: no /metrics on METRICS_ADDR" >&2; exit 1; }
  [[ $(curl -s -o /dev/null -w '%{http_code}' "$METRICS_BASE/metrics") == 404 ]] \
    || { echo "run.sh: the API's listener must not serve /metrics" >&2; exit 1; }
  # A scraper, far more eager than production's (60 s): every second, the whole exposition.
  ( while sleep 1; do curl -fsS -o /dev/null "http://127.0.0.1:$METRICS_PORT/metrics" || true; done ) &
  SCRAPER_PID=$!
  trap 'kill "$SCRAPER_PID" 2>/dev/null || true; stop_stack' EXIT
fi
REDIS_PID=$(redis-cli -h 127.0.0.1 -p "$REDIS_PORT" info server | tr -d '\r' | awk -F: '$1 == "process_id" { print $2 }')
[[ $REDIS_PID =~ ^[0-9]+$ ]] || { echo "run.sh: cannot read Redis's process id" >&2; exit 1; }
# The postmaster's pid (the first line of postmaster.pid); the tool adds its children, one per
# connection.
PG_PID=$(head -n 1 "$SERVERS_DIR/pg/postmaster.pid")
[[ $PG_PID =~ ^[0-9]+$ ]] || { echo "run.sh: cannot read PostgreSQL's process id" >&2; exit 1; }

# utime + stime of process $1 in clock ticks (100 per second), from /proc/$1/stat: fields 14 and
# 15, counted after the command name's closing parenthesis (the name may hold spaces).
cpu_ticks() { sed 's/.*) //' "/proc/$1/stat" | awk '{ print $12 + $13 }'; }

# Runs redis-benchmark --csv with the arguments against the Redis, echoes its result, and sets
# REDIS_RPS_NOW, REDIS_P50_NOW and REDIS_P99_NOW. Its CSV is a header and one row:
# "test","rps","avg_latency_ms","min_latency_ms","p50_latency_ms","p95_latency_ms","p99_latency_ms","max_latency_ms"
redis_bench() {
  local row ticks_before
  ticks_before=$(cpu_ticks "$REDIS_PID")
  row=$(redis-benchmark -h 127.0.0.1 -p "$REDIS_PORT" -c "$CONCURRENCY" -n "$REDIS_REQUESTS" --csv "$@" | tail -n 1 | tr -d '"')
  IFS=, read -r _ REDIS_RPS_NOW _ _ REDIS_P50_NOW _ REDIS_P99_NOW _ <<<"$row"
  [[ $REDIS_RPS_NOW =~ ^[0-9.]+$ ]] || { echo "run.sh: unexpected redis-benchmark output: $row" >&2; exit 1; }
  # Redis's CPU per command in microseconds (10 ms ticks over the whole run of REDIS_REQUESTS).
  REDIS_CPU_NOW=$(awk -v t="$(( $(cpu_ticks "$REDIS_PID") - ticks_before ))" -v n="$REDIS_REQUESTS" 'BEGIN { printf "%.1f", t * 10000 / n }')
  printf 'redis-benchmark %s: %.1f requests/s, p50 %s ms, p99 %s ms, Redis CPU %s us/command\n' "$*" "$REDIS_RPS_NOW" \
    "$REDIS_P50_NOW" "$REDIS_P99_NOW" "$REDIS_CPU_NOW"
}
percent() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", 100 * a / b }'; }
# Whether decimal $1 < $2 (bash compares whole numbers only).
less_than() { awk -v a="$1" -v b="$2" 'BEGIN { exit !(a < b) }'; }

declare -A RPS P50 P99 ERRORS CPU_GUILDHALL CPU_POSTGRES CPU_REDIS CPU_TOOL
# With METRICS_COMPARE: each scenario's requests/s and guildhall CPU per request, summed over the
# rounds, on the instance without METRICS_ADDR (plain) and the one with it (metrics).
declare -A CMP_RPS CMP_CPU
RAN=()
# run_scenario SCENARIO BASE PID: runs the tool once against that instance; sets OUT and JSON.
run_scenario() {
  OUT=$(GUILDHALL_ADMIN_KEY="$ADMIN_KEY" target/release/guildhall-bench --base "$2" --scenario "$1" \
    --concurrency "$CONCURRENCY" --duration "$DURATION" --warmup "$WARMUP" --players "$PLAYERS" \
    --cpu "guildhall=$3,postgres=$PG_PID+,redis=$REDIS_PID")
  echo "$OUT"
  JSON=$(grep '^{' <<<"$OUT" | tail -n 1)
}
add() { awk -v a="${1:-0}" -v b="$2" 'BEGIN { print a + b }'; }
for scenario in ${SCENARIOS//,/ }; do
  echo
  echo "== guildhall-bench --scenario $scenario (concurrency $CONCURRENCY, $DURATION s after $WARMUP s warm-up, $PLAYERS players)"
  run_scenario "$scenario" "$BASE" "$MAIN_PID"
  RPS[$scenario]=$(field requests_per_sec <<<"$JSON")
  P50[$scenario]=$(field p50_ms <<<"$JSON")
  P99[$scenario]=$(field p99_ms <<<"$JSON")
  ERRORS[$scenario]=$(field errors <<<"$JSON")
  CPU_GUILDHALL[$scenario]=$(cpu_field guildhall <<<"$JSON")
  CPU_POSTGRES[$scenario]=$(cpu_field postgres <<<"$JSON")
  CPU_REDIS[$scenario]=$(cpu_field redis <<<"$JSON")
  CPU_TOOL[$scenario]=$(cpu_field guildhall-bench <<<"$JSON")
  RAN+=("$scenario")
  if [[ $METRICS_COMPARE == 1 ]]; then
    CMP_RPS[$scenario,plain]=${RPS[$scenario]} CMP_CPU[$scenario,plain]=${CPU_GUILDHALL[$scenario]}
    for round in $(seq "$ROUNDS"); do
      echo
      echo "== $scenario, round $round, with METRICS_ADDR (scraped every second)"
      run_scenario "$scenario" "$METRICS_BASE" "$METRICS_PID"
      CMP_RPS[$scenario,metrics]=$(add "${CMP_RPS[$scenario,metrics]:-}" "$(field requests_per_sec <<<"$JSON")")
      CMP_CPU[$scenario,metrics]=$(add "${CMP_CPU[$scenario,metrics]:-}" "$(cpu_field guildhall <<<"$JSON")")
      if ((round < ROUNDS)); then
        echo
        echo "== $scenario, round $((round + 1)), without METRICS_ADDR"
        run_scenario "$scenario" "$BASE" "$MAIN_PID"
        CMP_RPS[$scenario,plain]=$(add "${CMP_RPS[$scenario,plain]}" "$(field requests_per_sec <<<"$JSON")")
        CMP_CPU[$scenario,plain]=$(add "${CMP_CPU[$scenario,plain]}" "$(cpu_field guildhall <<<"$JSON")")
      fi
    done
  fi
done

# The baselines. Both commands are quoted in loadtest/README.md; keep the two in step.
echo
echo "== redis-benchmark -c $CONCURRENCY -n $REDIS_REQUESTS (same Redis, for comparison)"
# -r replaces each __rand_int__ with its own random 12-digit number below ZADD_KEYSPACE, so the
# score and the member both vary and most commands insert a new member, as a first score does.
# (Plain `-t zadd` without -r re-adds one fixed member with score 0 every time: no insert at all.)
redis_bench -r "$ZADD_KEYSPACE" ZADD bench:zadd __rand_int__ 'member:__rand_int__'
ZADD_RPS=$REDIS_RPS_NOW ZADD_P50=$REDIS_P50_NOW ZADD_P99=$REDIS_P99_NOW ZADD_CPU=$REDIS_CPU_NOW
ZADD_MEMBERS=$(redis-cli -h 127.0.0.1 -p "$REDIS_PORT" zcard bench:zadd)
echo "bench:zadd has $ZADD_MEMBERS members after $REDIS_REQUESTS ZADDs"
[[ $ZADD_MEMBERS -gt $((REDIS_REQUESTS / 2)) ]] || { echo "run.sh: ZADD did not insert random members" >&2; exit 1; }

# A board of BOARD_SIZE members named as redis-benchmark's __rand_int__ expands with -r (12 digits),
# so every ZREVRANK below finds its member.
seq 0 $((BOARD_SIZE - 1)) | awk '{ printf "ZADD bench:board %d member:%012d\r\n", ($1 * 7919) % 1000003, $1 }' \
  | redis-cli -h 127.0.0.1 -p "$REDIS_PORT" --pipe >/dev/null
[[ $(redis-cli -h 127.0.0.1 -p "$REDIS_PORT" zcard bench:board) -eq $BOARD_SIZE ]] || { echo "run.sh: filling bench:board failed" >&2; exit 1; }
redis_bench -r "$BOARD_SIZE" ZREVRANK bench:board 'member:__rand_int__'
ZREVRANK_RPS=$REDIS_RPS_NOW ZREVRANK_P50=$REDIS_P50_NOW ZREVRANK_P99=$REDIS_P99_NOW ZREVRANK_CPU=$REDIS_CPU_NOW
declare -A REDIS_RPS=([ZADD]=$ZADD_RPS [ZREVRANK]=$ZREVRANK_RPS)

echo
echo "== summary (concurrency $CONCURRENCY, $DURATION s measured after $WARMUP s warm-up, $PLAYERS players; PostgreSQL + Redis)"
printf '%-26s %12s %9s %9s %7s   %-10s %7s   %s\n' "" "requests/s" "p50 ms" "p99 ms" "errors" "baseline" "share" "target (share, p99 < $TARGET_P99_MS ms): verdict"
for scenario in "${RAN[@]}"; do
  row=$(printf '%-26s %12.1f %9.2f %9.2f %7s' "guildhall $scenario" "${RPS[$scenario]}" "${P50[$scenario]}" "${P99[$scenario]}" \
    "${ERRORS[$scenario]}")
  baseline=${BASELINE[$scenario]:-}
  if [[ -z "$baseline" ]]; then
    printf '%s   %-10s %7s   %s\n' "$row" "-" "-" "no target"
    continue
  fi
  share=$(percent "${RPS[$scenario]}" "${REDIS_RPS[$baseline]}")
  missed=()
  # Compared unrounded: 24.96 % is short of 25 %.
  less_than "$(awk -v a="${RPS[$scenario]}" -v b="${REDIS_RPS[$baseline]}" 'BEGIN { print 100 * a / b }')" "${TARGET_PERCENT[$scenario]}" \
    && missed+=("share")
  less_than "${P99[$scenario]}" "$TARGET_P99_MS" || missed+=("p99")
  [[ ${ERRORS[$scenario]} -eq 0 ]] || missed+=("errors")
  if [[ ${#missed[@]} -eq 0 ]]; then verdict=met; else verdict="NOT met (${missed[*]})"; fi
  printf '%s   %-10s %6s%%   >= %s%%: %s\n' "$row" "$baseline" "$share" "${TARGET_PERCENT[$scenario]}" "$verdict"
done
printf '%-26s %12.1f %9.2f %9.2f %7s\n' "redis-benchmark ZADD" "$ZADD_RPS" "$ZADD_P50" "$ZADD_P99" "-" \
  "redis-benchmark ZREVRANK" "$ZREVRANK_RPS" "$ZREVRANK_P50" "$ZREVRANK_P99" "-"
for scenario in "${RAN[@]}"; do
  if [[ ${ERRORS[$scenario]} -ne 0 ]]; then
    echo "run.sh: warning: $scenario had ${ERRORS[$scenario]} errors; its figure is not a clean throughput" >&2
  fi
done

echo
echo "== CPU per request in microseconds (user + system, over each measured window; 10 ms ticks)"
printf '%-26s %10s %10s %10s %16s\n' "" "guildhall" "postgres" "redis" "guildhall-bench"
for scenario in "${RAN[@]}"; do
  printf '%-26s %10s %10s %10s %16s\n' "guildhall $scenario" "${CPU_GUILDHALL[$scenario]}" "${CPU_POSTGRES[$scenario]}" \
    "${CPU_REDIS[$scenario]}" "${CPU_TOOL[$scenario]}"
done
printf '%-26s %10s %10s %10s %16s\n' "redis-benchmark ZADD" "-" "-" "$ZADD_CPU" "-" "redis-benchmark ZREVRANK" "-" "-" "$ZREVRANK_CPU" "-"

if [[ $METRICS_COMPARE == 1 ]]; then
  echo
  echo "== the metrics listener's cost: means of $ROUNDS runs each, alternating, same stack (with: METRICS_ADDR, /metrics scraped every second)"
  printf '%-26s %14s %14s %8s %16s %16s %8s\n' "" "req/s without" "req/s with" "ratio" "CPU us without" "CPU us with" "ratio"
  for scenario in "${RAN[@]}"; do
    awk -v name="guildhall $scenario" -v n="$ROUNDS" -v rp="${CMP_RPS[$scenario,plain]}" -v rm="${CMP_RPS[$scenario,metrics]}" \
      -v cp="${CMP_CPU[$scenario,plain]}" -v cm="${CMP_CPU[$scenario,metrics]}" \
      'BEGIN { printf "%-26s %14.1f %14.1f %8.3f %16.1f %16.1f %8.3f\n", name, rp / n, rm / n, rm / rp, cp / n, cm / n, cm / cp }'
  done
fi
