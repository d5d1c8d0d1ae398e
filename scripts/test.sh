#!/usr/bin/env bash
# Runs every Guildhall test against real servers: starts a throwaway PostgreSQL and Redis from
# this machine's binaries on free loopback ports (scripts/servers.sh), runs
# `cargo test --workspace` (extra arguments are passed on), and stops and removes them after.
#
# Needs: cargo, python3, PostgreSQL server binaries (Debian: postgresql), redis-server.
# `.ci/run` installs them on a fresh Debian machine.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/servers.sh
start_servers
cargo test --workspace "$@"
