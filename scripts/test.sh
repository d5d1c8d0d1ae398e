#!/usr/bin/env bash
# Runs every Guildhall test against real servers: starts a throwaway PostgreSQL and Redis from
# this machine's binaries and moto's server (S3, SQS; from PyPI) on free loopback ports
# (scripts/servers.sh), runs
# `cargo test --workspace` (extra arguments are passed on), and stops and removes them after.
# Ends with one line totalling every test binary's results.
#
# Needs: cargo, python3 with venv, PostgreSQL server binaries (Debian: postgresql), redis-server.
# `.ci/run` installs them on a fresh Debian machine.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/servers.sh
start_servers
start_moto
log="$SERVERS_DIR/cargo-test.log"
set +e
cargo test --workspace "$@" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i) ~ /^passed/) p += $(i-1); if ($(i) ~ /^failed/) f += $(i-1) } }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
exit "$status"
