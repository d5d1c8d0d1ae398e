# Sourced by run.sh, chat.sh and compare.sh, not run: the stack the benchmarks measure. A
# throwaway PostgreSQL (durable settings) and Redis on free loopback ports (scripts/servers.sh), the
# database `bench`, and any number of guildhall instances serving it, all stopped and removed when the script exits.
#
#   source loadtest/lib.sh
#   start_stack
#   GUILDHALL_ADMIN_KEY=... start_guildhall a     # sets GUILDHALL_BASE and GUILDHALL_PID
#
# Run from the repository's root, after `cargo build --release -p guildhall`.

# shellcheck source=../scripts/servers.sh
source scripts/servers.sh

GUILDHALL_PIDS=()

# Stops every instance, then PostgreSQL and Redis.
stop_stack() {
  local pid
  for pid in "${GUILDHALL_PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${GUILDHALL_PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  GUILDHALL_PIDS=()
  stop_servers
}

# Starts PostgreSQL and Redis, creates the database `bench`, and stops everything at exit.
start_stack() {
  start_servers durable
  trap stop_stack EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
  "$PG_BIN/createdb" -h 127.0.0.1 -p "$PG_PORT" -U guildhall bench
  # One data folder for all instances: the first generates the token signing key there and the
  # others load it, so a token from one instance is good on every other (start them one by one).
  mkdir -p "$SERVERS_DIR/guildhall-data"
}

# start_guildhall NAME: serves $GUILDHALL_BIN (default target/release/guildhall: another build's
# binary, to compare two builds on one stack) on a free loopback port against the stack,
# with the sign-in rate limit lifted (every sign-in of a benchmark comes from one IP) and whatever
# else the caller's environment sets (GUILDHALL_ADMIN_KEY, CHAT_SEND_BURST, ...), waits for
# /health/ready (READY_SECS, default 30), and sets GUILDHALL_BASE and GUILDHALL_PID. Its log is
# $SERVERS_DIR/guildhall-NAME.log. GUILDHALL_WRAP, when set, is a command (split on spaces) that
# runs the binary, as instructions.sh runs it under valgrind; GUILDHALL_PID is then the wrapper's,
# which must exec the program in its own process, as valgrind does.
start_guildhall() {
  local name=$1 port log wrap=()
  read -ra wrap <<<"${GUILDHALL_WRAP:-}"
  port=$(free_port)
  log="$SERVERS_DIR/guildhall-$name.log"
  DATABASE_URL="postgres://guildhall@127.0.0.1:$PG_PORT/bench" \
  REDIS_URL="redis://127.0.0.1:$REDIS_PORT" \
  LISTEN_ADDR="127.0.0.1:$port" \
  DATA_DIR="$SERVERS_DIR/guildhall-data" \
  RUST_LOG=warn \
  RATE_LIMIT_AUTH_PER_IP_PER_MINUTE=100000000 \
  RATE_LIMIT_REFRESH_PER_IP_PER_MINUTE=100000000 \
  CHAT_MAX_SOCKETS_PER_IP=100000000 \
    "${wrap[@]}" "${GUILDHALL_BIN:-target/release/guildhall}" serve >"$log" 2>&1 &
  GUILDHALL_PID=$!
  GUILDHALL_PIDS+=("$GUILDHALL_PID")
  GUILDHALL_BASE="http://127.0.0.1:$port"

  local _
  for _ in $(seq $((${READY_SECS:-30} * 10))); do
    if ! kill -0 "$GUILDHALL_PID" 2>/dev/null; then
      echo "lib.sh: guildhall $name exited during start-up:" >&2
      cat "$log" >&2
      exit 1
    fi
    curl -fsS -o /dev/null "$GUILDHALL_BASE/health/ready" 2>/dev/null && break
    sleep 0.1
  done
  curl -fsS -o /dev/null "$GUILDHALL_BASE/health/ready" \
    || { echo "lib.sh: guildhall $name not ready after ${READY_SECS:-30} s" >&2; cat "$log" >&2; exit 1; }
  echo "lib.sh: guildhall $name on $GUILDHALL_BASE (pid $GUILDHALL_PID; PostgreSQL database bench, Redis $REDIS_PORT)"
}

# Prints what each instance logged (warnings and errors: they run with RUST_LOG=warn), if anything.
show_guildhall_logs() {
  local log lines
  for log in "$SERVERS_DIR"/guildhall-*.log; do
    [[ -s "$log" ]] || continue
    lines=$(wc -l <"$log")
    echo "$(basename "$log" .log) logged $lines line(s); the first 5:" >&2
    head -n 5 "$log" >&2
  done
}

# One field of a guildhall-bench JSON line.
field() { python3 -c 'import json, sys; print(json.loads(sys.stdin.read())[sys.argv[1]])' "$1"; }
# One process's CPU microseconds per request from a guildhall-bench JSON line, to one decimal.
cpu_field() { python3 -c 'import json, sys; print("%.1f" % json.loads(sys.stdin.read())["cpu_us_per_request"][sys.argv[1]])' "$1"; }
