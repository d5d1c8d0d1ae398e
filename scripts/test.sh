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
# Two tests at a time, one per core. Four was faster where the disk is quick (the integration
# tests took 311 s at two, 231 s at four), but on a machine whose PostgreSQL spends half its time in
# I/O wait, the replica-lag and restore tests, which wait on the standby's replay and the 5-s
# restore check, missed their windows at four at a time (2 of 274 failed; both pass alone).
# RUST_TEST_THREADS overrides.
export RUST_TEST_THREADS=${RUST_TEST_THREADS:-2}
set +e
cargo test --workspace "$@" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i) ~ /^passed/) p += $(i-1); if ($(i) ~ /^failed/) f += $(i-1) } }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
exit "$status"
