#!/usr/bin/env bash
# Benchmarks chat on this machine: CLIENTS WebSockets over two guildhall instances, in rooms of
# ROOM_SIZE spread over both, each sending RATE messages a second; reports delivery latency, each
# instance's resident memory per connection, and the CPU each process spent per delivery.
#
#   loadtest/chat.sh
#   CLIENTS=5000 ROOM_SIZE=50 RATE=0.2 DURATION=10 WARMUP=2 CONCURRENCY=50 loadtest/chat.sh
#
# Raises the open-file limit first (everything started inherits it), builds the release binaries,
# starts a throwaway PostgreSQL (durable settings) and Redis and two guildhall instances on them
# (loadtest/lib.sh) with the chat send limit and the sign-in rate limit lifted, and runs
# `guildhall-bench --scenario chat` against both with their process ids, so that it reads their
# VmRSS before the sockets open and once all have joined. Everything is stopped and removed at exit.
set -euo pipefail
cd "$(dirname "$0")/.."

CLIENTS=${CLIENTS:-5000}
ROOM_SIZE=${ROOM_SIZE:-50}
RATE=${RATE:-0.2}
DURATION=${DURATION:-10}
WARMUP=${WARMUP:-2}
# Sign-ins in flight during setup.
CONCURRENCY=${CONCURRENCY:-50}

# Each client is one socket in the tool and one in an instance, besides what each process opens
# anyway (database and Redis connections, the HTTP pool of the sign-ins). Raised before anything
# starts, so that every process inherits it; as far as the hard limit allows when it is lower (as in
# a container without CAP_SYS_RESOURCE).
WANT_FILES=65536
ulimit -n "$WANT_FILES" 2>/dev/null || ulimit -n "$(ulimit -Hn)"
NEED_FILES=$((CLIENTS + 1024))
if [[ $(ulimit -n) != unlimited && $(ulimit -n) -lt $NEED_FILES ]]; then
  echo "chat.sh: the open-file limit is $(ulimit -n) (hard $(ulimit -Hn)); $CLIENTS clients need $NEED_FILES" >&2
  exit 1
fi
echo "chat.sh: open-file limit $(ulimit -n) (asked for $WANT_FILES; hard limit $(ulimit -Hn))"

# GUILDHALL_BIN: another build's guildhall to measure (main's, to compare with a branch's), with
# BENCH_BIN for the tool; when it is set nothing is built.
BENCH_BIN=${BENCH_BIN:-target/release/guildhall-bench}
if [[ -z "${GUILDHALL_BIN:-}" ]]; then
  cargo build --release -p guildhall -p guildhall-bench
fi

# shellcheck source=lib.sh
source loadtest/lib.sh
start_stack
# Their CPU per delivery is reported too: Redis's server, PostgreSQL's postmaster with its
# connection processes (its children).
REDIS_PID=$(redis-cli -h 127.0.0.1 -p "$REDIS_PORT" info server | tr -d '\r' | awk -F: '$1 == "process_id" { print $2 }')
PG_PID=$(head -n 1 "$SERVERS_DIR/pg/postmaster.pid")
# The benchmark sends far faster than a player may (default burst 10, 2 per second).
export CHAT_SEND_BURST=1000 CHAT_SEND_PER_SECOND=1000
start_guildhall a
BASE_A=$GUILDHALL_BASE PID_A=$GUILDHALL_PID
start_guildhall b
BASE_B=$GUILDHALL_BASE PID_B=$GUILDHALL_PID

echo "chat.sh: load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
echo
echo "== guildhall-bench --scenario chat ($CLIENTS clients over 2 instances, rooms of $ROOM_SIZE, $RATE messages/s each, $DURATION s after $WARMUP s warm-up)"
status=0
"$BENCH_BIN" --scenario chat --bases "$BASE_A,$BASE_B" --pids "$PID_A,$PID_B" \
  --clients "$CLIENTS" --room-size "$ROOM_SIZE" --rate "$RATE" --duration "$DURATION" --warmup "$WARMUP" \
  --concurrency "$CONCURRENCY" --cpu "guildhall-a=$PID_A,guildhall-b=$PID_B,postgres=$PG_PID+,redis=$REDIS_PID" || status=$?
echo "chat.sh: load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
show_guildhall_logs
exit "$status"
