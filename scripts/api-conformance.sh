#!/usr/bin/env bash
# Checks the API against its OpenAPI document with schemathesis: starts the debug binary that
# scripts/smoke-run.sh builds (target/debug/guildhall) on embedded defaults, on a free port and
# a throwaway data folder, and runs every documented operation through all of schemathesis's
# checks (status codes, content types, headers and bodies as documented, schema-valid input
# accepted and invalid input refused, authentication, resources after creation and deletion),
# with a bounded number of examples each. Exits non-zero when schemathesis finds anything.
#
# Installs schemathesis (pinned in scripts/tools.sh) into a venv at target/api-venv, reused while
# the pin is unchanged.
# Credentials come from scripts/api-conformance-hooks.py. SEED=<n> explores another run; the
# default seed is fixed so that CI is reproducible. MAX_EXAMPLES (default 80 per operation) keeps a
# run well under three minutes on the two-core machines: 80 took 52 s there (3,523 requests), 100
# took 130 s with a release build running beside it.
set -euo pipefail
cd "$(dirname "$0")/.."
started=$SECONDS

venv=target/api-venv
say() { echo "api-conformance: $*"; }
scripts/tools.sh api

# GUILDHALL_BINARY=target/release/guildhall runs a release build instead. The debug build is the
# default because CI builds it anyway (README's first command, and the tests share its
# dependencies), where a release build would cost a third build of the workspace.
binary=${GUILDHALL_BINARY:-target/debug/guildhall}
[[ -x $binary ]] || cargo build
# shellcheck source=scripts/local-server.sh
source scripts/local-server.sh
local_server_prepare conformance

# Embedded defaults, plus a server key (so the admin API is on) and a sign-in limit that the
# fuzzer, one client address sending hundreds of sign-ins a minute, does not reach: its 429 is
# tested in services/guildhall/tests/it/accounts.rs.
admin_key=$(python3 -c 'import secrets; print(secrets.token_hex(32))')
LISTEN_ADDR=127.0.0.1:$port DATA_DIR=$data/data GUILDHALL_ADMIN_KEY=$admin_key RATE_LIMIT_AUTH_PER_IP_PER_MINUTE=1000000 \
  "$binary" serve >"$log" 2>&1 &
pid=$!
local_server_wait_ready || exit 1

say "schemathesis against $binary on $url"
set +e
GUILDHALL_URL=$url GUILDHALL_ADMIN_KEY=$admin_key SCHEMATHESIS_HOOKS=api-conformance-hooks PYTHONPATH=scripts \
  "$venv/bin/schemathesis" --config-file scripts/api-conformance.toml run "$url/openapi.json" \
  --checks all --max-examples "${MAX_EXAMPLES:-80}" --seed "${SEED:-20261129}" --workers 1 --no-color
status=$?
set -e
if ((status != 0)); then
  say "the server's last lines:"
  grep -v '"level":"INFO"' "$log" | tail -n 20 >&2 || true
fi
say "done in $((SECONDS - started)) s (exit $status)"
exit "$status"
