#!/usr/bin/env bash
# Runs every Guildhall test against real servers: starts a throwaway PostgreSQL and Redis from
# this machine's binaries and moto's server (S3, SQS; from PyPI) on free loopback ports
# (scripts/servers.sh) and a streaming replica of that PostgreSQL (start_standby: the reader of
# services/guildhall/tests/it/replicas.rs), builds the image and the local third-party images for the container fault
# tests when a Docker engine runs (scripts/build-image.sh), runs
# `cargo test --workspace` (extra arguments are passed on), and stops and removes them after.
# Ends with one line totalling every test binary's results.
#
# Needs: cargo, python3 with venv, PostgreSQL server binaries (Debian: postgresql; pg_basebackup for
# the standby), redis-server, openssl (the identity tests' RSA keys).
# `.ci/run` installs them on a fresh Debian machine.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/servers.sh
start_servers fast
start_standby
start_moto
# The container fault tests (services/guildhall/tests/it/containers.rs) run the shipped image; where a
# Docker engine answers, build it (cached: seconds when nothing changed) and tell them where it is.
# Without an engine they say so and skip, unless GUILDHALL_REQUIRE_DOCKER=1 (CI) fails them.
if docker info >/dev/null 2>&1; then
  eval "$(scripts/build-image.sh)"
  export GUILDHALL_TEST_IMAGE=$GUILDHALL_IMAGE GUILDHALL_TEST_LOCAL_IMAGES=$PWD/target/local-images.env
else
  echo "test.sh: no Docker engine answers; the container fault tests will skip"
fi
log="$SERVERS_DIR/cargo-test.log"
# Four tests at a time rather than one per core: most of a test's time is spent waiting on the
# servers, containers and timers it drives, not computing (the integration tests took 311 s at two
# at a time, 231 s at four and 233 s at six on the two-core machines). RUST_TEST_THREADS overrides.
export RUST_TEST_THREADS=${RUST_TEST_THREADS:-4}
set +e
cargo test --workspace "$@" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i) ~ /^passed/) p += $(i-1); if ($(i) ~ /^failed/) f += $(i-1) } }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
exit "$status"
