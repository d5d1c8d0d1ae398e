#!/usr/bin/env bash
# Runs README's first command verbatim, `cargo run`, as a new user would on a fresh
# clone (embedded defaults: nothing configured but a free port and a throwaway data folder), and
# waits for /health/ready; then stops it. CI runs this so that the command cannot break unnoticed.
set -euo pipefail
cd "$(dirname "$0")/.."

# shellcheck source=scripts/local-server.sh
source scripts/local-server.sh
local_server_prepare smoke

# The build is the part that takes long; it is timed on its own, so the wait below is the server's.
cargo build >/dev/null 2>&1 || cargo build
LISTEN_ADDR=127.0.0.1:$port DATA_DIR=$data/data cargo run >"$log" 2>&1 &
pid=$!
if ! local_server_wait_ready; then
  echo "smoke-run: \`cargo run\` did not become ready" >&2
  exit 1
fi
echo "smoke-run: \`cargo run\` ready on 127.0.0.1:$port"
curl -fsS "$url/health/ready"
echo
