#!/usr/bin/env bash
# Runs every Guildhall test against real servers: starts a throwaway PostgreSQL and Redis from
# this machine's binaries on free loopback ports in a temporary folder, runs
# `cargo test --workspace` (extra arguments are passed on), and stops and removes them after.
#
# Needs: cargo, python3, PostgreSQL server binaries (Debian: postgresql), redis-server.
# `.ci/run` installs them on a fresh Debian machine.
set -euo pipefail
cd "$(dirname "$0")/.."

pg_bin=${PG_BIN:-$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)}
if [[ -z "$pg_bin" || ! -x "$pg_bin/initdb" ]]; then
  echo "test.sh: PostgreSQL server binaries not found (apt-get install postgresql, or set PG_BIN)" >&2
  exit 1
fi
command -v redis-server >/dev/null || { echo "test.sh: redis-server not found (apt-get install redis-server)" >&2; exit 1; }

work=$(mktemp -d /tmp/guildhall-test.XXXXXX)
chmod 755 "$work"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
pg_port=$(free_port)
redis_port=$(free_port)

# PostgreSQL refuses to run as root; run it as the `postgres` system user then.
as_pg() {
  if [[ $(id -u) -eq 0 ]]; then runuser -u postgres -- "$@"; else "$@"; fi
}

cleanup() {
  as_pg "$pg_bin/pg_ctl" -D "$work/pg" -m immediate stop >/dev/null 2>&1 || true
  if [[ -f "$work/redis.pid" ]]; then kill "$(cat "$work/redis.pid")" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

mkdir -p "$work/pg" "$work/sock"
if [[ $(id -u) -eq 0 ]]; then chown postgres "$work/pg" "$work/sock"; fi
as_pg "$pg_bin/initdb" -D "$work/pg" -U guildhall --auth=trust -E UTF8 --no-sync >"$work/initdb.log" 2>&1 \
  || { cat "$work/initdb.log" >&2; exit 1; }
# Durability is off: this cluster lives for one test run.
as_pg "$pg_bin/pg_ctl" -D "$work/pg" -l "$work/sock/postgres.log" -w -t 60 start -o \
  "-p $pg_port -k $work/sock -c listen_addresses=127.0.0.1 -c max_connections=300 -c fsync=off -c synchronous_commit=off -c full_page_writes=off" \
  >/dev/null || { cat "$work/sock/postgres.log" >&2; exit 1; }

redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no --daemonize yes \
  --pidfile "$work/redis.pid" --logfile "$work/redis.log" --dir "$work"
for _ in $(seq 50); do
  redis-cli -p "$redis_port" ping >/dev/null 2>&1 && break
  sleep 0.1
done

export GUILDHALL_TEST_POSTGRES_URL="postgres://guildhall@127.0.0.1:$pg_port/postgres"
export GUILDHALL_TEST_REDIS_URL="redis://127.0.0.1:$redis_port"
echo "test.sh: PostgreSQL on 127.0.0.1:$pg_port, Redis on 127.0.0.1:$redis_port"

cargo test --workspace "$@"
