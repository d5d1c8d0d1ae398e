#!/usr/bin/env bash
# Counts the instructions Guildhall itself executes per request, scenario by scenario, with
# valgrind's callgrind. Unlike run.sh's requests/s and CPU time, which move by a fifth between two
# rounds of one binary on a shared two-core machine, the count barely moves with the machine's load,
# so one change's effect on Guildhall's own work can be read from one run on a busy machine.
#
#   loadtest/instructions.sh [SCENARIO[,SCENARIO...]]   default: me,rank,submit,submit-set,login-guest
#   REQUESTS=1000 CONCURRENCY=8 PLAYERS=50 IDLE=10 loadtest/instructions.sh me
#   GUILDHALL_BIN=/work/bin/guildhall-a BENCH_BIN=/work/bin/guildhall-bench loadtest/instructions.sh
#                                      an earlier build (no cargo build then)
#
# What is counted: user-space instructions of every thread of the guildhall process (the
# handlers, hyper, the runtime, the Redis and PostgreSQL clients, the allocator). Not counted: the
# kernel's share (system calls, loopback TCP: about a third of run.sh's CPU time per request), and
# PostgreSQL, Redis and the tool, whose CPU run.sh reports. Batching depends on how many requests
# are in flight at once (`me`'s reads, sign-ins and submissions are grouped), so compare counts
# taken at one CONCURRENCY only.
#
# How: one instance runs under callgrind on the stack of lib.sh (PostgreSQL with fsync, Redis).
# Each scenario runs twice, with REQUESTS and then 2 x REQUESTS requests and no warm-up; each run
# signs in fresh players of its own (the tool's run id), so the two runs differ only by REQUESTS
# requests, and a request's count is the difference of the runs' counts divided by REQUESTS:
# set-up, sign-ins and connection opening cancel out. What the process does on its own (timers,
# the revocation and restore checks, the repair) is counted for IDLE seconds first (default 10) and
# taken out of each run in proportion to its length. A run's count is the profile dumped after it
# (callgrind_control --dump, which also zeroes the counters; one dump before each run drops what
# came between). The longer run's profile stays in target/instructions/ for callgrind_annotate
# (where the instructions went). Needs valgrind (Debian: valgrind), and builds the release binaries.
set -euo pipefail
cd "$(dirname "$0")/.."

SCENARIOS=${1:-me,rank,submit,submit-set,login-guest}
REQUESTS=${REQUESTS:-1000}
CONCURRENCY=${CONCURRENCY:-8}
PLAYERS=${PLAYERS:-50}
IDLE=${IDLE:-10}
if ! command -v valgrind >/dev/null || ! command -v callgrind_control >/dev/null; then
  echo "instructions.sh: needs valgrind (Debian: apt-get install valgrind)" >&2
  exit 2
fi

ADMIN_KEY=$(python3 -c 'import secrets; print(secrets.token_hex(24))')
# GUILDHALL_BIN (lib.sh) and BENCH_BIN name builds made already, to count an earlier build's.
if [[ -z ${GUILDHALL_BIN:-} || -z ${BENCH_BIN:-} ]]; then
  cargo build --release -p guildhall -p guildhall-bench
fi
bench=${BENCH_BIN:-target/release/guildhall-bench}

out=target/instructions
rm -rf "$out"
mkdir -p "$out"

# shellcheck source=lib.sh
source loadtest/lib.sh
start_stack
# Under valgrind the process runs some 50 times slower: start-up (migrations included) gets longer
# to be ready, and the request timeout of the tool is raised below. Guildhall's own timeouts (Redis
# 1 s, the database's) are far above a slowed request at this concurrency.
GUILDHALL_WRAP="valgrind --tool=callgrind --callgrind-out-file=$PWD/$out/callgrind.out --dump-instr=no" \
  READY_SECS=300 GUILDHALL_ADMIN_KEY="$ADMIN_KEY" start_guildhall callgrind
BASE=$GUILDHALL_BASE
PID=$GUILDHALL_PID

# Dumps the profile so far (zeroing the counters) and sets DUMP_FILE to the file it wrote.
# callgrind numbers each dump: callgrind.out.1, .2, ...
dumps=0
dump() {
  callgrind_control --dump "$PID" >/dev/null 2>&1 || { echo "instructions.sh: callgrind_control --dump failed" >&2; exit 1; }
  dumps=$((dumps + 1))
  DUMP_FILE="$out/callgrind.out.$dumps"
  local _
  for _ in $(seq 100); do
    [[ -s $DUMP_FILE ]] && grep -q '^totals:' "$DUMP_FILE" && return
    sleep 0.1
  done
  echo "instructions.sh: no dump in $DUMP_FILE" >&2
  exit 1
}

# run SCENARIO N: the tool sends N requests (no warm-up, a duration it will not reach); sets
# RUN_COUNT to the instructions of that run's dump (its `totals:` line, Ir) and DUMP_FILE to it.
run() {
  local started
  started=$(date +%s.%N)
  dump
  GUILDHALL_ADMIN_KEY="$ADMIN_KEY" "$bench" --base "$BASE" --scenario "$1" \
    --concurrency "$CONCURRENCY" --duration 3600 --warmup 0 --players "$PLAYERS" --max-requests "$2" \
    --timeout 60 >"$out/$1-$2.txt"
  grep -q '"errors":0[,}]' "$out/$1-$2.txt" \
    || { echo "instructions.sh: $1 with $2 requests had errors:" >&2; cat "$out/$1-$2.txt" >&2; exit 1; }
  dump
  RUN_COUNT=$(awk -v bg="$IDLE_RATE" -v secs="$(awk -v a="$started" -v b="$(date +%s.%N)" 'BEGIN { print b - a }')" \
    '/^totals:/ { printf "%.0f", $2 - bg * secs }' "$DUMP_FILE")
}

# The process's own work while no request comes, per second.
sleep 2
dump
sleep "$IDLE"
dump
IDLE_RATE=$(awk -v secs="$IDLE" '/^totals:/ { printf "%.0f", $2 / secs }' "$DUMP_FILE")
echo "instructions.sh: idle, the process runs $IDLE_RATE instructions a second (taken out of each run)"

declare -A PER_REQUEST
RAN=()
for scenario in ${SCENARIOS//,/ }; do
  echo "== $scenario: $REQUESTS then $((2 * REQUESTS)) requests, concurrency $CONCURRENCY, $PLAYERS players"
  run "$scenario" "$REQUESTS"
  short=$RUN_COUNT
  run "$scenario" $((2 * REQUESTS))
  long=$RUN_COUNT
  cp "$DUMP_FILE" "$out/$scenario.callgrind"
  PER_REQUEST[$scenario]=$(awk -v a="$short" -v b="$long" -v n="$REQUESTS" 'BEGIN { printf "%.0f", (b - a) / n }')
  echo "   instructions: $short, then $long: ${PER_REQUEST[$scenario]} per request"
  RAN+=("$scenario")
done
show_guildhall_logs

echo
echo "== guildhall's user-space instructions per request (callgrind; concurrency $CONCURRENCY, $PLAYERS players)"
for scenario in "${RAN[@]}"; do
  printf '%-14s %12s\n' "$scenario" "${PER_REQUEST[$scenario]}"
done
echo "profiles: $out/SCENARIO.callgrind (callgrind_annotate --inclusive=yes FILE | head -60)"
