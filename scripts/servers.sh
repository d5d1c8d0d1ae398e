# shellcheck shell=bash
# Sourced, not run: starts a throwaway PostgreSQL and Redis from this machine's binaries on free
# loopback ports in a temporary folder, and stops and removes them when the sourcing shell exits.
#
#   source scripts/servers.sh; start_servers [durable]
#
# sets SERVERS_DIR, PG_PORT, REDIS_PORT, GUILDHALL_TEST_POSTGRES_URL and GUILDHALL_TEST_REDIS_URL;
# `start_moto` (after start_servers) adds moto's server for S3 and SQS, installed from PyPI into a
# venv under target/, and sets MOTO_PORT, GUILDHALL_TEST_AWS_ENDPOINT and dummy AWS credentials.
# Tests run with durability off (fsync, synchronous_commit); `durable` keeps PostgreSQL's defaults,
# for benchmarks whose figures must mean something. `start_standby` (after start_servers) adds a
# streaming replica of that PostgreSQL, made with pg_basebackup, and sets STANDBY_PORT and
# GUILDHALL_TEST_POSTGRES_READ_URL (same database names as the primary: it replicates them all).

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# PostgreSQL refuses to run as root; run it as the `postgres` system user then.
as_pg() {
  if [[ $(id -u) -eq 0 ]]; then runuser -u postgres -- "$@"; else "$@"; fi
}

stop_servers() {
  [[ -n "${SERVERS_DIR:-}" ]] || return 0
  if [[ -d "$SERVERS_DIR/standby" ]]; then as_pg "$PG_BIN/pg_ctl" -D "$SERVERS_DIR/standby" -m immediate stop >/dev/null 2>&1 || true; fi
  as_pg "$PG_BIN/pg_ctl" -D "$SERVERS_DIR/pg" -m immediate stop >/dev/null 2>&1 || true
  if [[ -f "$SERVERS_DIR/redis.pid" ]]; then kill "$(cat "$SERVERS_DIR/redis.pid")" 2>/dev/null || true; fi
  if [[ -f "$SERVERS_DIR/moto.pid" ]]; then kill "$(cat "$SERVERS_DIR/moto.pid")" 2>/dev/null || true; fi
  rm -rf "$SERVERS_DIR"
  SERVERS_DIR=
}

start_servers() {
  local mode=${1:-fast}
  SERVERS_MODE=$mode
  # shellcheck disable=SC2012 # version-sorted folder names, no odd characters
  PG_BIN=${PG_BIN:-$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)}
  if [[ -z "$PG_BIN" || ! -x "$PG_BIN/initdb" ]]; then
    echo "servers.sh: PostgreSQL server binaries not found (apt-get install postgresql, or set PG_BIN)" >&2
    return 1
  fi
  command -v redis-server >/dev/null || { echo "servers.sh: redis-server not found (apt-get install redis-server)" >&2; return 1; }

  SERVERS_DIR=$(mktemp -d /tmp/guildhall-servers.XXXXXX)
  chmod 755 "$SERVERS_DIR"
  trap stop_servers EXIT
  PG_PORT=$(free_port)
  REDIS_PORT=$(free_port)

  mkdir -p "$SERVERS_DIR/pg" "$SERVERS_DIR/sock"
  if [[ $(id -u) -eq 0 ]]; then chown postgres "$SERVERS_DIR/pg" "$SERVERS_DIR/sock"; fi
  as_pg "$PG_BIN/initdb" -D "$SERVERS_DIR/pg" -U guildhall --auth=trust -E UTF8 --no-sync >"$SERVERS_DIR/initdb.log" 2>&1 \
    || { cat "$SERVERS_DIR/initdb.log" >&2; return 1; }
  local options="-p $PG_PORT -k $SERVERS_DIR/sock -c listen_addresses=127.0.0.1 -c max_connections=300"
  if [[ "$mode" != durable ]]; then
    options+=" -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
  fi
  as_pg "$PG_BIN/pg_ctl" -D "$SERVERS_DIR/pg" -l "$SERVERS_DIR/sock/postgres.log" -w -t 60 start -o "$options" >/dev/null \
    || { cat "$SERVERS_DIR/sock/postgres.log" >&2; return 1; }

  redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no --daemonize yes \
    --pidfile "$SERVERS_DIR/redis.pid" --logfile "$SERVERS_DIR/redis.log" --dir "$SERVERS_DIR"
  local _
  for _ in $(seq 50); do
    redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break
    sleep 0.1
  done

  export PG_PORT REDIS_PORT SERVERS_DIR
  export GUILDHALL_TEST_POSTGRES_URL="postgres://guildhall@127.0.0.1:$PG_PORT/postgres"
  export GUILDHALL_TEST_REDIS_URL="redis://127.0.0.1:$REDIS_PORT"
  echo "servers.sh: PostgreSQL on 127.0.0.1:$PG_PORT, Redis on 127.0.0.1:$REDIS_PORT ($mode)"
}

# A hot standby of the PostgreSQL that start_servers started, streaming from it on loopback (initdb's
# pg_hba.conf trusts replication from 127.0.0.1). Its options are the primary's, so a standby of a
# `fast` primary is fast too; hot_standby_feedback keeps long reads on it from being cancelled.
start_standby() {
  [[ -n "${PG_PORT:-}" ]] || { echo "servers.sh: start_standby needs start_servers first" >&2; return 1; }
  STANDBY_PORT=$(free_port)
  mkdir -p "$SERVERS_DIR/standby"
  chmod 700 "$SERVERS_DIR/standby"
  if [[ $(id -u) -eq 0 ]]; then chown postgres "$SERVERS_DIR/standby"; fi
  as_pg "$PG_BIN/pg_basebackup" -h 127.0.0.1 -p "$PG_PORT" -U guildhall -D "$SERVERS_DIR/standby" -R -X stream --no-sync \
    >"$SERVERS_DIR/basebackup.log" 2>&1 || { cat "$SERVERS_DIR/basebackup.log" >&2; return 1; }
  local options="-p $STANDBY_PORT -k $SERVERS_DIR/sock -c listen_addresses=127.0.0.1 -c max_connections=300 -c hot_standby_feedback=on"
  if [[ "${SERVERS_MODE:-fast}" != durable ]]; then
    options+=" -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
  fi
  as_pg "$PG_BIN/pg_ctl" -D "$SERVERS_DIR/standby" -l "$SERVERS_DIR/sock/standby.log" -w -t 60 start -o "$options" >/dev/null \
    || { cat "$SERVERS_DIR/sock/standby.log" >&2; return 1; }
  export STANDBY_PORT
  export GUILDHALL_TEST_POSTGRES_READ_URL="postgres://guildhall@127.0.0.1:$STANDBY_PORT/postgres"
  echo "servers.sh: PostgreSQL standby on 127.0.0.1:$STANDBY_PORT, streaming from $PG_PORT"
}

# moto's server, pinned in scripts/tools.sh; the venv is reused between runs. MOTO_VENV=<a venv with
# moto_server> uses another.
start_moto() {
  local venv=${MOTO_VENV:-$PWD/target/moto-venv}
  if [[ -z ${MOTO_VENV:-} ]]; then
    "$(dirname "${BASH_SOURCE[0]}")/tools.sh" moto || { echo "servers.sh: could not install moto from PyPI" >&2; return 1; }
  fi
  MOTO_PORT=$(free_port)
  "$venv/bin/moto_server" -H 127.0.0.1 -p "$MOTO_PORT" >"$SERVERS_DIR/moto.log" 2>&1 &
  echo $! >"$SERVERS_DIR/moto.pid"
  local _
  for _ in $(seq 100); do
    python3 -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$MOTO_PORT/moto-api/')" >/dev/null 2>&1 && break
    sleep 0.1
  done
  python3 -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$MOTO_PORT/moto-api/')" >/dev/null 2>&1 \
    || { cat "$SERVERS_DIR/moto.log" >&2; echo "servers.sh: moto did not start" >&2; return 1; }
  export MOTO_PORT
  export GUILDHALL_TEST_AWS_ENDPOINT="http://127.0.0.1:$MOTO_PORT"
  # moto accepts any credentials; the SDK needs some.
  export AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing AWS_REGION=us-east-1
  echo "servers.sh: moto (S3, SQS) on 127.0.0.1:$MOTO_PORT"
}
