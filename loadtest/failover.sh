#!/usr/bin/env bash
# Failover rehearsal on loopback: two "regions" on this machine, the primary killed under load,
# the secondary promoted, and what it cost measured.
#
#   loadtest/failover.sh            # async replication (Aurora Global Database's kind)
#   SYNC=1 loadtest/failover.sh     # synchronous replication: commits wait for the standby
#
# Region A: PostgreSQL (primary), Redis, Guildhall. Region B: a PostgreSQL hot standby of A's
# (pg_basebackup, streaming), its own Redis, Guildhall on the standby (read-only until promoted:
# platform::region). In Route 53's place, loadtest/failover_proxy.py health-checks A's
# /health/ready every PROXY_INTERVAL s and sends everything to B after PROXY_FAILURES failed
# checks. guildhall-bench (scenario guest-signup: each request creates an account) runs through
# the proxy and records every answer (--acked). After KILL_AFTER s region A is killed (SIGKILL to
# Guildhall, an immediate stop of PostgreSQL, Redis killed) and B's PostgreSQL promoted
# (`pg_ctl promote`, PROMOTE_DELAY s later: the one step). Printed, as one JSON line:
# - rpo_lost_acknowledged: accounts the bench was told were created (2xx) that B does not have;
# - rto_ms: from the kill to the first acknowledged write after it;
# - the proxy's switch and how long B took to see itself writable.
#
# Knobs: DURATION (30), KILL_AFTER (10), CONCURRENCY (16), SYNC (0), PROXY_INTERVAL (0.5),
# PROXY_FAILURES (2), REGION_CHECK_INTERVAL_MS (500), PROMOTE_DELAY (0), RELEASE (0: debug
# binaries), OUT (a file for the JSON line). Needs PostgreSQL's server binaries, redis-server,
# python3.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/servers.sh disable=SC1091
source scripts/servers.sh

DURATION=${DURATION:-30}
KILL_AFTER=${KILL_AFTER:-10}
CONCURRENCY=${CONCURRENCY:-16}
SYNC=${SYNC:-0}
PROXY_INTERVAL=${PROXY_INTERVAL:-0.5}
PROXY_FAILURES=${PROXY_FAILURES:-2}
REGION_CHECK_INTERVAL_MS=${REGION_CHECK_INTERVAL_MS:-500}
PROMOTE_DELAY=${PROMOTE_DELAY:-0}
PROFILE=debug
if [[ "${RELEASE:-0}" == 1 ]]; then PROFILE=release; fi

build=(cargo build --quiet -p guildhall -p guildhall-bench)
if [[ $PROFILE == release ]]; then build+=(--release); fi
"${build[@]}"
GUILDHALL=target/$PROFILE/guildhall
BENCH=target/$PROFILE/guildhall-bench
# shellcheck disable=SC2012 # version-sorted folder names, no odd characters
PG_BIN=${PG_BIN:-$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)}

DIR=$(mktemp -d /tmp/guildhall-failover.XXXXXX)
chmod 755 "$DIR"
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for region in a b; do
    if [[ -d "$DIR/pg-$region" ]]; then as_pg "$PG_BIN/pg_ctl" -D "$DIR/pg-$region" -m immediate stop >/dev/null 2>&1 || true; fi
  done
  if [[ "${KEEP:-0}" != 1 ]]; then rm -rf "$DIR"; else echo "kept $DIR" >&2; fi
}
trap cleanup EXIT

now_ms() { date +%s%3N; }
wait_for() { # URL, seconds
  local _
  for _ in $(seq $(($2 * 10))); do
    curl -fsS -o /dev/null "$1" 2>/dev/null && return 0
    sleep 0.1
  done
  echo "failover.sh: $1 did not answer within $2 s" >&2
  return 1
}

PG_A=$(free_port) PG_B=$(free_port) REDIS_A=$(free_port) REDIS_B=$(free_port)
HTTP_A=$(free_port) HTTP_B=$(free_port) PROXY=$(free_port)
mkdir -p "$DIR/pg-a" "$DIR/pg-b" "$DIR/sock"
chmod 700 "$DIR/pg-a" "$DIR/pg-b"
if [[ $(id -u) -eq 0 ]]; then chown postgres "$DIR/pg-a" "$DIR/pg-b" "$DIR/sock"; fi

# Durability off on both (the killed primary is never started again, and B is promoted, not
# crashed); what decides the loss is whether a commit waits for the standby.
options="-k $DIR/sock -c listen_addresses=127.0.0.1 -c max_connections=200 -c fsync=off -c full_page_writes=off"
primary_options="$options -p $PG_A -c synchronous_commit=on"
as_pg "$PG_BIN/initdb" -D "$DIR/pg-a" -U guildhall --auth=trust -E UTF8 --no-sync >"$DIR/initdb.log" 2>&1
as_pg "$PG_BIN/pg_ctl" -D "$DIR/pg-a" -l "$DIR/sock/a.log" -w -t 60 start -o "$primary_options" >/dev/null
psql -q -h 127.0.0.1 -p "$PG_A" -U guildhall -d postgres -c "CREATE DATABASE guildhall"
as_pg "$PG_BIN/pg_basebackup" -h 127.0.0.1 -p "$PG_A" -U guildhall -D "$DIR/pg-b" -R -X stream --checkpoint=fast --no-sync >"$DIR/basebackup.log" 2>&1
as_pg "$PG_BIN/pg_ctl" -D "$DIR/pg-b" -l "$DIR/sock/b.log" -w -t 60 start -o "$options -p $PG_B -c hot_standby_feedback=on" >/dev/null
if [[ "$SYNC" == 1 ]]; then
  # Only once the standby streams: before it, every commit would wait for it.
  psql -q -h 127.0.0.1 -p "$PG_A" -U guildhall -d postgres -c "ALTER SYSTEM SET synchronous_standby_names = '*'" -c "SELECT pg_reload_conf()"
fi

for port in "$REDIS_A" "$REDIS_B"; do
  redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no --daemonize yes \
    --pidfile "$DIR/redis-$port.pid" --logfile "$DIR/redis-$port.log" --dir "$DIR"
done
sleep 0.3
REDIS_A_PID=$(cat "$DIR/redis-$REDIS_A.pid")
PIDS+=("$REDIS_A_PID" "$(cat "$DIR/redis-$REDIS_B.pid")")

# The signing key both regions share (Secrets Manager replicates it to the secondary region).
SIGNING_KEY=$("$GUILDHALL" keys generate 2>/dev/null)
start_region() { # name, http port, pg port, redis port
  mkdir -p "$DIR/data-$1"
  env -i PATH="$PATH" LISTEN_ADDR="127.0.0.1:$2" DATA_DIR="$DIR/data-$1" LOG_FORMAT=json \
    DATABASE_URL="postgres://guildhall@127.0.0.1:$3/guildhall" REDIS_URL="redis://127.0.0.1:$4" \
    TOKEN_SIGNING_KEY="$SIGNING_KEY" RATE_LIMIT_AUTH_PER_IP_PER_MINUTE=10000000 \
    REGION_CHECK_INTERVAL_MS="$REGION_CHECK_INTERVAL_MS" \
    "$GUILDHALL" serve >"$DIR/guildhall-$1.log" 2>&1 &
  PIDS+=($!)
  echo $!
}
GH_A=$(start_region a "$HTTP_A" "$PG_A" "$REDIS_A")
wait_for "http://127.0.0.1:$HTTP_A/health/ready" 60
# B starts once A has migrated: its schema arrives by replication.
start_region b "$HTTP_B" "$PG_B" "$REDIS_B" >/dev/null
wait_for "http://127.0.0.1:$HTTP_B/health/ready" 60
python3 loadtest/failover_proxy.py --listen "$PROXY" --primary "http://127.0.0.1:$HTTP_A" --secondary "http://127.0.0.1:$HTTP_B" \
  --interval "$PROXY_INTERVAL" --failures "$PROXY_FAILURES" >"$DIR/proxy.log" 2>&1 &
PIDS+=($!)
wait_for "http://127.0.0.1:$PROXY/health/live" 10

echo "failover.sh: regions up (A :$HTTP_A on pg :$PG_A, B :$HTTP_B on standby :$PG_B), proxy :$PROXY; load for $DURATION s, A killed at $KILL_AFTER s" >&2
"$BENCH" --base "http://127.0.0.1:$PROXY" --scenario guest-signup --concurrency "$CONCURRENCY" --duration "$DURATION" \
  --warmup 0 --timeout 3 --acked "$DIR/acked.txt" >"$DIR/bench.out" 2>"$DIR/bench.err" &
BENCH_PID=$!
sleep "$KILL_AFTER"

KILLED_MS=$(now_ms)
kill -9 "$GH_A"
as_pg "$PG_BIN/pg_ctl" -D "$DIR/pg-a" -m immediate stop >/dev/null
kill -9 "$REDIS_A_PID"
sleep "$PROMOTE_DELAY"
PROMOTE_MS=$(now_ms)
as_pg "$PG_BIN/pg_ctl" -D "$DIR/pg-b" -w promote >/dev/null
PROMOTED_MS=$(now_ms)
# When B's Guildhall logged that it writes (its check's interval after the promotion).
wait "$BENCH_PID" || { cat "$DIR/bench.err" >&2; exit 1; }

# Every device the bench was told was created (2xx), hashed as accounts stores it.
python3 - "$DIR/acked.txt" >"$DIR/acked-keys.txt" <<'EOF'
import hashlib, sys
for line in open(sys.argv[1]):
    _ms, outcome, key = line.split()
    if outcome.startswith("2"):
        print(hashlib.sha256(key.encode()).hexdigest())
EOF
psql -q -h 127.0.0.1 -p "$PG_B" -U guildhall -d guildhall -c "CREATE TABLE failover_acked (device_key text PRIMARY KEY)" \
  -c "\\copy failover_acked FROM '$DIR/acked-keys.txt'"
LOST=$(psql -At -h 127.0.0.1 -p "$PG_B" -U guildhall -d guildhall -c \
  "SELECT count(*) FROM failover_acked f WHERE NOT EXISTS (SELECT 1 FROM account_identities i WHERE i.provider = 'device' AND i.subject = f.device_key)")
GUEST_ROWS=$(psql -At -h 127.0.0.1 -p "$PG_B" -U guildhall -d guildhall -c "SELECT count(*) FROM account_identities WHERE provider = 'device'")

RESULT=$(python3 - "$DIR" "$KILLED_MS" "$PROMOTE_MS" "$PROMOTED_MS" "$LOST" "$GUEST_ROWS" "$SYNC" <<'EOF'
import json, sys
folder, killed, promote, promoted, lost, rows, sync = sys.argv[1], *map(int, sys.argv[2:8])
answers = [line.split() for line in open(f"{folder}/acked.txt")]
ok = [int(ms) for ms, outcome, _ in answers if outcome.startswith("2")]
before = [ms for ms in ok if ms < killed]
# Requests in flight at the kill may still be answered for a few milliseconds; the outage starts
# with the first failed answer after the kill, and writes are back with the first 2xx after it.
first_failure = min((int(ms) for ms, outcome, _ in answers if int(ms) >= killed and not outcome.startswith("2")), default=None)
after = sorted(ms for ms in ok if first_failure is not None and ms > first_failure)
failed = {}
for ms, outcome, _ in answers:
    if int(ms) >= killed and not outcome.startswith("2") and (not after or int(ms) <= after[0]):
        failed[outcome] = failed.get(outcome, 0) + 1
switch = next((json.loads(l) for l in open(f"{folder}/proxy.log") if '"switch"' in l), None)
writable = None
for line in open(f"{folder}/guildhall-b.log"):
    if "region is writable" in line:
        try:
            writable = json.loads(line).get("timestamp")
        except ValueError:
            pass
print(json.dumps({
    "replication": "synchronous" if sync else "asynchronous",
    "acknowledged_writes": len(ok),
    "acknowledged_before_kill": len(before),
    "rpo_lost_acknowledged": lost,
    "accounts_on_b": rows,
    "rto_ms": (after[0] - killed) if after else None,
    "proxy_switch_after_ms": (switch["unix_ms"] - killed) if switch else None,
    "promote_took_ms": promoted - promote,
    "failed_answers_until_recovered": failed,
    "b_writable_log_timestamp": writable,
}))
EOF
)
echo "$RESULT"
if [[ -n "${OUT:-}" ]]; then echo "$RESULT" >"$OUT"; fi
