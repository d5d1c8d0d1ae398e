#!/usr/bin/env bash
# What an idle Guildhall holds in memory on embedded defaults (issue 14's target: under 30 MB of
# RSS): nothing configured, so a SQLite file, the in-memory cache, local files and the in-process
# queue, as `cargo run --release` starts it on a laptop.
#
#   loadtest/idle.sh                              # builds target/release/guildhall and measures it
#   loadtest/idle.sh BINARY [BINARY...]           # measures these (e.g. main's and a branch's)
#   SETTLE=30 ROUNDS=2 loadtest/idle.sh A B       # alternated A, B, A, B
#
# Each run starts the binary in a fresh DATA_DIR on a free loopback port with every backend
# variable unset, waits for /health/ready, then SETTLE seconds (default 30: longer than tokio's
# 10 s keep-alive of idle blocking threads, so those start-up used are gone), and reads
# /proc/PID: VmRSS, its anonymous and file-backed parts, the thread count, and the largest
# mappings by RSS (the heap and the threads' arenas are anonymous; the binary's pages are
# file-backed). Then it signs in one guest and reads again after SETTLE: the figure of a process
# that has served a request. The process is stopped and its folder removed at exit.
set -euo pipefail
cd "$(dirname "$0")/.."

SETTLE=${SETTLE:-30}
ROUNDS=${ROUNDS:-1}
TARGET_MB=30

if [[ $# -eq 0 ]]; then
  cargo build --release -p guildhall
  set -- target/release/guildhall
fi

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

PID=
DIR=
cleanup() {
  if [[ -n $PID ]]; then kill "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; fi
  if [[ -n $DIR ]]; then rm -rf "$DIR"; fi
}
trap cleanup EXIT

# kB of field $2 in /proc/$1/status.
status_kb() { awk -v f="$2:" '$1 == f { print $2 }' "/proc/$1/status"; }
# kB of field $2 in /proc/$1/smaps_rollup.
rollup_kb() { awk -v f="$2:" '$1 == f { print $2 }' "/proc/$1/smaps_rollup"; }
mb() { python3 -c 'import sys; print("%.1f" % (int(sys.argv[1]) * 1024 / 1e6))' "$1"; }

# One reading of process $1, labelled $2: a summary line, then the five largest mappings by RSS.
reading() {
  local pid=$1 label=$2 rss anon huge file threads
  rss=$(status_kb "$pid" VmRSS)
  huge=$(rollup_kb "$pid" AnonHugePages)
  anon=$(status_kb "$pid" RssAnon)
  file=$(status_kb "$pid" RssFile)
  threads=$(status_kb "$pid" Threads)
  printf '%-40s RSS %5s MB (anonymous %s MB, of which %s MB in huge pages; file %s MB), %s threads\n' \
    "$label" "$(mb "$rss")" "$(mb "$anon")" "$(mb "$huge")" "$(mb "$file")" "$threads"
  # smaps: a header line per mapping, then its fields; sum Rss per mapping name.
  awk '
    /^[0-9a-f]+-[0-9a-f]+ / { name = (NF >= 6) ? $6 : "[anonymous]"; sub(".*/", "", name); next }
    $1 == "Rss:" { rss[name] += $2 }
    END { for (n in rss) if (rss[n] > 0) printf "%d %s\n", rss[n], n }
  ' "/proc/$pid/smaps" | sort -rn | head -n 5 | while read -r kb name; do
    printf '    %-36s %6s kB\n' "$name" "$kb"
  done
  LAST_RSS=$rss
}

# Drops the binary's pages from the page cache, so that each run reads it back as its own page
# faults do, as a task does from a fresh image layer. How the file got into the cache otherwise
# decides the file-backed figure: a copy `cp` just wrote is cached in large folios, each fault
# then maps a whole folio rather than the 64 KiB around it, and the same start-up touched 2-3 MB
# more of a freshly copied binary than of an evicted one (2026-11-29 night, loadtest/README.md).
evict() {
  python3 -c 'import os, sys; fd = os.open(sys.argv[1], os.O_RDONLY); os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)' "$1"
}

measure() {
  local binary=$1 port base
  DIR=$(mktemp -d)
  sync
  evict "$binary"
  port=$(free_port)
  base="http://127.0.0.1:$port"
  env -u DATABASE_URL -u DATABASE_READ_URL -u REDIS_URL -u BLOB_URL -u QUEUE_URL -u SERVICES \
    -u OTEL_EXPORTER_OTLP_ENDPOINT -u METRICS_ADDR -u AWS_ENDPOINT_URL \
    DATA_DIR="$DIR" LISTEN_ADDR="127.0.0.1:$port" RUST_LOG=warn \
    "$binary" serve >"$DIR.log" 2>&1 &
  PID=$!
  local _
  for _ in $(seq 300); do
    curl -fsS -o /dev/null "$base/health/ready" 2>/dev/null && break
    kill -0 "$PID" 2>/dev/null || { echo "idle.sh: $binary exited during start-up:" >&2; cat "$DIR.log" >&2; exit 1; }
    sleep 0.1
  done
  curl -fsS -o /dev/null "$base/health/ready" || { echo "idle.sh: $binary not ready after 30 s" >&2; exit 1; }
  sleep "$SETTLE"
  reading "$PID" "$binary, idle after start"
  local started=$LAST_RSS
  # One guest sign-in: a device key the server has not seen makes the account (201).
  curl -fsS -o /dev/null -H 'content-type: application/json' \
    -d "{\"device_id\": \"idle-$RANDOM-$RANDOM-device\"}" "$base/v1/auth/guest" \
    || { echo "idle.sh: the guest sign-in failed" >&2; exit 1; }
  sleep "$SETTLE"
  reading "$PID" "$binary, idle after one sign-in"
  SUMMARY+=("$(printf 'idle          %-40s %5s MB after start, %5s MB after a sign-in (target < %s MB)' \
    "$binary" "$(mb "$started")" "$(mb "$LAST_RSS")" "$TARGET_MB")")
  kill "$PID"
  wait "$PID" 2>/dev/null || true
  PID=
  rm -rf "$DIR" "$DIR.log"
  DIR=
}

SUMMARY=()
for _ in $(seq "$ROUNDS"); do
  for binary in "$@"; do measure "$binary"; done
done
echo
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg)"
printf '%s\n' "${SUMMARY[@]}"
