#!/usr/bin/env bash
# Benchmarks the shipped shape: the compose stack in containers (scripts/build-image.sh's image,
# docker/compose.local.yml where images cannot be pulled), with guildhall-bench's scenarios sent
# through the proxy to the split services and directly to the monolith container (the compose
# profile `monolith`, on the same PostgreSQL and Redis), then the chat scenario over the two chat
# replicas. Prints each scenario's requests/s and p99 both ways and the ratio proxy / direct,
# measured in one run, so the machine's noise weighs on both alike.
#
#   loadtest/stack-bench.sh                 defaults: submit,rank,me,login-guest; chat 2000 clients
#   SCENARIOS=rank CONCURRENCY=50 DURATION=10 CLIENTS=4000 loadtest/stack-bench.sh
#
# Uses host ports 8080, 8081, 5000 and 16686; removes the stack at exit.
set -euo pipefail
cd "$(dirname "$0")/.."
SCENARIOS=${SCENARIOS:-submit,rank,me,login-guest}
CONCURRENCY=${CONCURRENCY:-50}
DURATION=${DURATION:-10}
WARMUP=${WARMUP:-2}
PLAYERS=${PLAYERS:-1000}
CLIENTS=${CLIENTS:-2000}
ROOM_SIZE=${ROOM_SIZE:-50}
RATE=${RATE:-0.2}
project=guildhall-bench
export GUILDHALL_ADMIN_KEY=dev-only-admin-key-not-a-secret-0001

eval "$(scripts/build-image.sh)"
export GUILDHALL_IMAGE RUST_IMAGE RUNTIME_IMAGE POSTGRES_IMAGE REDIS_IMAGE NGINX_IMAGE PYTHON_IMAGE
cargo build --release -p guildhall-bench
compose() { docker-compose -p "$project" -f docker-compose.yml -f docker/compose.local.yml --profile monolith "$@"; }
trap 'compose down -v --remove-orphans >/dev/null 2>&1 || true' EXIT
compose down -v --remove-orphans >/dev/null 2>&1 || true
RATE_LIMIT_AUTH_PER_IP_PER_MINUTE=100000000 RATE_LIMIT_REFRESH_PER_IP_PER_MINUTE=100000000 CHAT_MAX_SOCKETS_PER_IP=100000000 LOG_FORMAT=json RUST_LOG=warn \
  compose up -d --no-build --scale chat=2 >/dev/null 2>&1
for base in http://127.0.0.1:8080 http://127.0.0.1:8081; do
  for _ in $(seq 120); do curl -fsS "$base/health/ready" >/dev/null 2>&1 && break; sleep 1; done
  curl -fsS "$base/health/ready" >/dev/null
done

declare -A RPS P99
bench() {
  local name=$1 base=$2 scenario=$3 out
  out=$(target/release/guildhall-bench --base "$base" --scenario "$scenario" --concurrency "$CONCURRENCY" \
    --duration "$DURATION" --warmup "$WARMUP" --players "$PLAYERS")
  echo "$out" >&2
  RPS[$name]=$(awk '/requests\/s/ { for (i = 1; i <= NF; i++) if ($(i) ~ /requests\/s/) { print $(i-1); exit } }' <<<"$out")
  P99[$name]=$(awk '/p99/ { for (i = 1; i <= NF; i++) if ($(i) ~ /^p99/) { print $(i+1); exit } }' <<<"$out")
}
IFS=, read -r -a scenarios <<<"$SCENARIOS"
for scenario in "${scenarios[@]}"; do
  echo "== $scenario through the proxy (split services)" >&2
  bench "$scenario/proxy" http://127.0.0.1:8080 "$scenario"
  echo "== $scenario directly (monolith container)" >&2
  bench "$scenario/direct" http://127.0.0.1:8081 "$scenario"
done

echo "== chat: $CLIENTS clients over the two chat replicas (rooms of $ROOM_SIZE, $RATE messages/s each)" >&2
bases=() pids=()
for container in $(compose ps -q chat); do
  bases+=("http://$(docker inspect -f '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}' "$container"):8080")
  pids+=("$(docker inspect -f '{{.State.Pid}}' "$container")")
done
chat_bases=$(IFS=,; echo "${bases[*]}")
chat_pids=$(IFS=,; echo "${pids[*]}")
target/release/guildhall-bench --scenario chat --sign-in-base http://127.0.0.1:8080 --bases "$chat_bases" --pids "$chat_pids" --clients "$CLIENTS" \
  --room-size "$ROOM_SIZE" --rate "$RATE" --duration "$DURATION" --warmup "$WARMUP" --concurrency "$CONCURRENCY" >&2

echo
printf '%-14s %14s %14s %10s %12s %12s\n' scenario "proxy req/s" "direct req/s" "ratio" "proxy p99" "direct p99"
for scenario in "${scenarios[@]}"; do
  p=${RPS[$scenario/proxy]:-0} d=${RPS[$scenario/direct]:-0}
  ratio=$(python3 -c "print(f'{$p / $d:.2f}' if $d else '-')")
  printf '%-14s %14s %14s %10s %12s %12s\n' "$scenario" "$p" "$d" "$ratio" "${P99[$scenario/proxy]:-?}" "${P99[$scenario/direct]:-?}"
done
