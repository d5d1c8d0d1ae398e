#!/usr/bin/env bash
# Runs README's first command verbatim, `cargo run --release`, as a new user would on a fresh
# clone (embedded defaults: nothing configured but a free port and a throwaway data folder), and
# waits for /health/ready; then stops it. CI runs this so that the command cannot break unnoticed.
set -euo pipefail
cd "$(dirname "$0")/.."

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
data=$(mktemp -d /tmp/guildhall-smoke.XXXXXX)
log=$data/serve.log
pid=
# shellcheck disable=SC2317 # called by the trap
cleanup() {
  if [[ -n $pid ]]; then kill -INT "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
  rm -rf "$data"
}
trap cleanup EXIT

# The build is the part that takes long; it is timed on its own, so the wait below is the server's.
cargo build --release >/dev/null 2>&1 || cargo build --release
LISTEN_ADDR=127.0.0.1:$port DATA_DIR=$data/data cargo run --release >"$log" 2>&1 &
pid=$!
for _ in $(seq 120); do
  if curl -fsS "http://127.0.0.1:$port/health/ready" >/dev/null 2>&1; then
    echo "smoke-run: \`cargo run --release\` ready on 127.0.0.1:$port"
    curl -fsS "http://127.0.0.1:$port/health/ready"
    echo
    exit 0
  fi
  kill -0 "$pid" 2>/dev/null || break
  sleep 0.5
done
echo "smoke-run: \`cargo run --release\` did not become ready; its output:" >&2
tail -n 40 "$log" >&2
exit 1
