# shellcheck shell=bash
# Sourced, not run, by scripts that start Guildhall themselves (smoke-run.sh, api-conformance.sh):
#
#   source scripts/local-server.sh; local_server_prepare NAME
#   VAR=... command >"$log" 2>&1 & pid=$!
#   local_server_wait_ready || exit 1
#
# `local_server_prepare` picks a free loopback port and a throwaway folder (sets port, url, data
# and log) and arranges for the server (pid) to get SIGINT and the folder to go when the sourcing
# script exits. `local_server_wait_ready` waits up to 60 s for /health/ready, and prints the
# server's last lines if it never comes.

pid=
local_server_prepare() {
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  url=http://127.0.0.1:$port
  data=$(mktemp -d "/tmp/guildhall-$1.XXXXXX")
  log=$data/serve.log
  trap local_server_cleanup EXIT
}

# shellcheck disable=SC2317 # called by the trap
local_server_cleanup() {
  if [[ -n $pid ]]; then kill -INT "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
  rm -rf "$data"
}

local_server_wait_ready() {
  for _ in $(seq 120); do
    curl -fsS "$url/health/ready" >/dev/null 2>&1 && return 0
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.5
  done
  echo "the server did not become ready; its output:" >&2
  tail -n 40 "$log" >&2
  return 1
}
