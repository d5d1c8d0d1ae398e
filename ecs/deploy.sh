#!/usr/bin/env bash
# Deploys an image of Guildhall to ECS: fills the placeholders of ecs/task-definitions/*.json, runs
# the migrate task once, and only once it has exited 0 registers the services' new revisions and
# points every service at them (ECS then replaces the tasks, keeping 100 % healthy, rolling back
# on a failed start). See ecs/README.md for the whole procedure and the first deployment.
#
#   IMAGE=<registry>/guildhall:<tag> ecs/deploy.sh [options]
#
# Options:
#   --create          create the services that do not exist yet (without it a missing service is
#                     an error: the CloudFormation stack creates them with DeployServices=true)
#   --no-migrate      skip the migrate task (the schema is already current)
#                     Over a secondary region's data tier (the stack's DataTier output external)
#                     there is no migrate task at all: its database is read-only, and takes the
#                     primary's schema by replication; none is registered or run.
#   --no-services     register (and migrate) only, touching no service: the first deployment,
#                     before the stack's second pass creates the services
#   --services "..."  deploy only these (default: accounts leaderboard uploads chat worker)
#   --wait            wait until every deployed service has finished its rollout onto the new
#                     revision; fails when ECS rolled one back (deployment rolloutState FAILED),
#                     when another revision took over, or after WAIT_TIMEOUT_SECS
#   --render DIR      write the filled task definitions to DIR and stop, registering nothing
#
# Environment:
#   IMAGE             the image, required
#   STACK_NAME        the CloudFormation stack (default guildhall); the cluster is named after it
#   CLUSTER           the ECS cluster (default $STACK_NAME)
#   AWS_REGION        the region (default: AWS_DEFAULT_REGION, then the CLI's configuration)
#   AWS_ENDPOINT_URL  another endpoint for every AWS call (moto's server, in CI's rehearsal)
#   DESIRED_COUNT     tasks per service created by --create (default 2)
#   WAIT_TIMEOUT_SECS how long --wait waits for the rollouts (default 1800)
#   WAIT_POLL_SECS    how often --wait looks (default 15)
#   DATA_TIER         own or external (default: the stack's DataTier output)
#   APPLE_CLIENT_IDS, GOOGLE_CLIENT_IDS, STEAM_APP_ID, DISCORD_CLIENT_ID, DISCORD_REDIRECT_URIS
#                     the accounts task's identity provider clients (README, Sign-in with
#                     providers); unset leaves that provider off
#   Every placeholder of the task definitions (${NAME} in the JSON) comes from the variable NAME
#   when it is set, otherwise from the stack's output of the same name in CamelCase
#   (REDIS_URL_SECRET_ARN <- RedisUrlSecretArn). TASK_ROLE_ARN and EXECUTION_ROLE_ARN are
#   per task definition: <SERVICE>_TASK_ROLE_ARN (ACCOUNTS_TASK_ROLE_ARN <- AccountsTaskRoleArn)
#   and <SERVICE>_EXECUTION_ROLE_ARN (ACCOUNTS_EXECUTION_ROLE_ARN <- AccountsExecutionRoleArn, and
#   MIGRATE_EXECUTION_ROLE_ARN for the migrate task, which alone uses DATABASE_MASTER_SECRET_ARN).
#   ACCOUNT_ID defaults to the caller's account.
#   The migrate task and --create also use PRIVATE_SUBNETS (comma-separated),
#   SERVICE_SECURITY_GROUP, WORKER_SECURITY_GROUP and <SERVICE>_TARGET_GROUP_ARN, from the
#   variables or the outputs likewise.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
definitions=$here/task-definitions
all_services=(accounts leaderboard uploads chat worker)
# The ECS services behind the ALB; the worker has no target group.
balanced=" accounts leaderboard uploads chat "
# Placeholders shared by every task definition; TASK_ROLE_ARN and EXECUTION_ROLE_ARN are set per
# task definition (each execution role may read only the secrets its own task definition names).
shared=(IMAGE AWS_REGION ACCOUNT_ID STACK_NAME DATABASE_HOST DATABASE_READER_HOST DATABASE_PORT
  REDIS_URL_SECRET_ARN ADMIN_KEY_SECRET_ARN TOKEN_SIGNING_KEY_SECRET_ARN SMTP_URL_SECRET_ARN MAIL_FROM PASSWORD_RESET_URL
  TOKEN_VERIFY_KEY_PARAMETER_ARN ADOT_CONFIG_PARAMETER_ARN ASSETS_BUCKET CDN_BASE_URL PUBLIC_URL QUEUE_URL_TEMPLATE
  API_DATABASE_POOL CHAT_DATABASE_POOL WORKER_DATABASE_POOL IDENTITY_PROVIDER_SECRET_ARN)
# What render fills: the shared placeholders, and the migrate task's own when there is one (main).
fill=("${shared[@]}")
# The game's identity provider clients (plain values, not secrets): from these variables only, each
# empty (that provider off) when unset. Their secrets are in the stack's IdentityProviderSecret.
providers=(APPLE_CLIENT_IDS GOOGLE_CLIENT_IDS STEAM_APP_ID DISCORD_CLIENT_ID DISCORD_REDIRECT_URIS)

die() { echo "deploy: $*" >&2; exit 1; }
log() { echo "deploy: $*" >&2; }

aws_cli() {
  if [[ -n ${AWS_ENDPOINT_URL:-} ]]; then
    aws --endpoint-url "$AWS_ENDPOINT_URL" --region "$AWS_REGION" "$@"
  else
    aws --region "$AWS_REGION" "$@"
  fi
}

# NAME -> Name in CamelCase, the stack output that fills the variable NAME.
camel() { awk -F_ '{ for (i = 1; i <= NF; i++) printf "%s%s", toupper(substr($i, 1, 1)), tolower(substr($i, 2)) }' <<<"$1"; }
upper() { tr '[:lower:]' '[:upper:]' <<<"$1"; }

# Fills every ${NAME} of a task definition, with its task role $2 and execution role $3; refuses to
# leave one unfilled.
render() {
  local file=$1 role=$2 execution_role=$3 text name
  text=$(<"$file")
  for name in "${fill[@]}"; do text=${text//"\${$name}"/"${!name}"}; done
  for name in "${providers[@]}"; do
    [[ ${!name:-} != *[\"\\]* ]] || die "$name must not hold quotes or backslashes"
    text=${text//"\${$name}"/"${!name:-}"}
  done
  text=${text//"\${TASK_ROLE_ARN}"/"$role"}
  text=${text//"\${EXECUTION_ROLE_ARN}"/"$execution_role"}
  if [[ $text =~ \$\{[A-Za-z_]+\} ]]; then
    die "$(basename "$file") has a placeholder deploy.sh does not know: ${BASH_REMATCH[0]}"
  fi
  printf '%s\n' "$text"
}

# Registers a rendered task definition; prints its ARN (family:revision).
register() {
  aws_cli ecs register-task-definition --cli-input-json "file://$1" \
    --query taskDefinition.taskDefinitionArn --output text
}

network() { # security group -> --network-configuration JSON
  local subnets
  subnets=$(sed 's/[[:space:]]//g; s/,/","/g' <<<"$PRIVATE_SUBNETS")
  printf '{"awsvpcConfiguration":{"subnets":["%s"],"securityGroups":["%s"],"assignPublicIp":"DISABLED"}}' "$subnets" "$1"
}

# Runs the migrate task definition $1 once and waits for it to exit 0.
run_migrations() {
  local migrate_arn=$1 task outcome code reason
  log "running ${migrate_arn##*/}"
  task=$(aws_cli ecs run-task --cluster "$CLUSTER" --task-definition "$migrate_arn" --launch-type FARGATE \
    --network-configuration "$(network "$WORKER_SECURITY_GROUP")" --started-by ecs-deploy \
    --query 'tasks[0].taskArn' --output text) || die "the migrate task could not start; no service revision was registered"
  [[ -n $task && $task != None ]] || die "the migrate task did not start; no service revision was registered"
  aws_cli ecs wait tasks-stopped --cluster "$CLUSTER" --tasks "$task" ||
    die "the migrate task $task has not stopped yet; no service revision was registered (see /ecs/$STACK_NAME/migrate)"
  outcome=$(aws_cli ecs describe-tasks --cluster "$CLUSTER" --tasks "$task" --output text \
    --query "tasks[0].[containers[?name=='guildhall'].exitCode | [0], stoppedReason || '-']")
  IFS=$'\t' read -r code reason <<<"$outcome"
  [[ $code == 0 ]] ||
    die "migrations failed (exit code $code, $reason): see the log group /ecs/$STACK_NAME/migrate; no service revision was registered"
  log "migrations applied"
}

# One line per service, tab-separated: its name; its PRIMARY deployment's task definition, rollout
# state and reason, running and desired counts; how many deployments it has; and the task
# definition and reason of a FAILED deployment. Empty strings and nulls read '-', so that no field
# is empty (read would merge two tabs) and a line always has nine fields.
rollout_rows() {
  aws_cli ecs describe-services --cluster "$CLUSTER" --services "$@" --output text --query \
    "services[].[serviceName,
      deployments[?status=='PRIMARY'] | [0].taskDefinition || '-',
      deployments[?status=='PRIMARY'] | [0].rolloutState || '-',
      deployments[?status=='PRIMARY'] | [0].rolloutStateReason || '-',
      deployments[?status=='PRIMARY'] | [0].runningCount || '-',
      deployments[?status=='PRIMARY'] | [0].desiredCount || '-',
      length(deployments),
      deployments[?rolloutState=='FAILED'] | [0].taskDefinition || '-',
      deployments[?rolloutState=='FAILED'] | [0].rolloutStateReason || '-']"
}

# Judges one service's rollout onto task definition $1 from its line of rollout_rows ($2): prints
# "complete", "wait: <why>" or "fail: <why>". ECS's services-stable waiter cannot tell these apart: after
# the circuit breaker rolls back, the service is stable again, on the old revision.
rollout_verdict() {
  local expected=$1 name primary state reason running desired count failed failed_reason
  IFS=$'\t' read -r name primary state reason running desired count failed failed_reason <<<"$2"
  if [[ $primary != "$expected" ]]; then
    if [[ $failed == "$expected" ]]; then
      echo "fail: ECS rolled $name back to ${primary##*/}: the deployment of ${expected##*/} failed ($failed_reason)"
    else
      echo "fail: $name runs ${primary##*/}, not ${expected##*/}: ECS rolled it back or another deployment replaced it (see the service's events)"
    fi
  elif [[ $state == FAILED ]]; then
    echo "fail: the deployment of ${expected##*/} to $name failed ($reason)"
  elif [[ $state == COMPLETED && $count == 1 && $running == "$desired" ]]; then
    echo complete
  else
    echo "wait: $name ${state,,}, $running of $desired new tasks running, $count deployments"
  fi
}

# Waits until every service in $@ has completed its rollout onto revisions[service]; fails at the
# first rollout ECS failed or rolled back, or after WAIT_TIMEOUT_SECS.
await_rollouts() {
  local timeout=${WAIT_TIMEOUT_SECS:-1800} poll=${WAIT_POLL_SECS:-15} deadline rows service row verdict
  local -a waiting failures
  deadline=$((SECONDS + timeout))
  while :; do
    rows=$(rollout_rows "$@")
    waiting=()
    failures=()
    for service in "$@"; do
      row=$(awk -F'\t' -v s="$service" '$1 == s' <<<"$rows")
      if [[ -z $row ]]; then
        failures+=("service $service was not found in cluster $CLUSTER")
        continue
      fi
      verdict=$(rollout_verdict "${revisions[$service]}" "$row")
      case $verdict in
        complete) ;;
        fail:*) failures+=("${verdict#fail: }") ;;
        *) waiting+=("${verdict#wait: }") ;;
      esac
    done
    if ((${#failures[@]})); then
      printf 'deploy: %s\n' "${failures[@]}" >&2
      die "the deployment failed: ${#failures[@]} service(s) not on the new revision"
    fi
    ((${#waiting[@]})) || return 0
    if ((SECONDS >= deadline)); then
      printf 'deploy: %s\n' "${waiting[@]}" >&2
      die "timed out after ${timeout} s waiting for the rollouts to complete"
    fi
    log "waiting: ${waiting[*]}"
    sleep "$poll"
  done
}

main() {
  local create=false migrate=true services=true wait=false render_dir='' service name key value role_var
  local execution_var
  local -a selected=("${all_services[@]}") needed missing
  while (($#)); do
    case $1 in
      --create) create=true ;;
      --no-migrate) migrate=false ;;
      --no-services) services=false ;;
      --wait) wait=true ;;
      --render) render_dir=${2:?--render needs a folder}; shift ;;
      --services) read -r -a selected <<<"${2:?--services needs a list}"; shift ;;
      -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
      *) die "unknown option $1 (see --help)" ;;
    esac
    shift
  done
  for service in "${selected[@]}"; do
    [[ " ${all_services[*]} " == *" $service "* ]] || die "unknown service $service (known: ${all_services[*]})"
  done

  : "${IMAGE:?set IMAGE to the image to deploy, e.g. 123456789012.dkr.ecr.eu-west-1.amazonaws.com/guildhall:1.4.0}"
  STACK_NAME=${STACK_NAME:-guildhall}
  CLUSTER=${CLUSTER:-$STACK_NAME}
  DESIRED_COUNT=${DESIRED_COUNT:-2}
  AWS_REGION=${AWS_REGION:-${AWS_DEFAULT_REGION:-$(aws configure get region 2>/dev/null || true)}}
  [[ -n $AWS_REGION ]] || die "set AWS_REGION"
  export AWS_REGION

  if [[ -z ${ACCOUNT_ID:-} ]]; then
    ACCOUNT_ID=$(aws_cli sts get-caller-identity --query Account --output text)
  fi
  # The stack's outputs, read once when a variable needs one.
  local -A outputs=()
  local outputs_read=false
  read_outputs() {
    $outputs_read && return 0
    while IFS=$'\t' read -r key value; do
      [[ -n $key ]] && outputs[$key]=$value
    done < <(aws_cli cloudformation describe-stacks --stack-name "$STACK_NAME" \
      --query 'Stacks[0].Outputs[].[OutputKey,OutputValue]' --output text)
    outputs_read=true
  }
  # A migrate task only over a data tier of the stack's own: a secondary region's (DataTier
  # external) is a read-only replica, migrated by the primary's.
  if [[ -z ${DATA_TIER:-} ]]; then
    read_outputs
    DATA_TIER=${outputs[DataTier]:-}
  fi
  local has_migrate=true
  case $DATA_TIER in
    own) fill+=(DATABASE_MASTER_SECRET_ARN) ;;
    external)
      has_migrate=false
      migrate=false
      log "the data tier is external (a secondary region, read-only until promoted): no migrate task"
      ;;
    *) die "DATA_TIER must be own or external (the stack's DataTier output), not '$DATA_TIER'" ;;
  esac

  # The variables this run needs: the shared placeholders, each selected service's task and
  # execution roles and the migrate task's execution role and secret, and the network of the
  # migrate task and of services to create.
  needed=("${fill[@]}")
  $has_migrate && needed+=(MIGRATE_EXECUTION_ROLE_ARN)
  for service in "${selected[@]}"; do
    needed+=("$(upper "$service")_TASK_ROLE_ARN" "$(upper "$service")_EXECUTION_ROLE_ARN")
  done
  if [[ -z $render_dir ]] && { $migrate || { $services && $create; }; }; then
    needed+=(PRIVATE_SUBNETS SERVICE_SECURITY_GROUP WORKER_SECURITY_GROUP)
  fi
  if [[ -z $render_dir ]] && $services && $create; then
    for service in "${selected[@]}"; do
      [[ $balanced == *" $service "* ]] && needed+=("$(upper "$service")_TARGET_GROUP_ARN")
    done
  fi

  missing=()
  for name in "${needed[@]}"; do [[ -n ${!name:-} ]] || missing+=("$name"); done
  if ((${#missing[@]})); then
    log "reading ${missing[*]} from the outputs of stack $STACK_NAME"
    read_outputs
    for name in "${missing[@]}"; do
      key=$(camel "$name")
      [[ -n ${outputs[$key]:-} ]] || die "$name is not set and stack $STACK_NAME has no output $key"
      printf -v "$name" '%s' "${outputs[$key]}"
    done
  fi
  for name in "${needed[@]}"; do
    [[ ${!name} != *[\"\\]* && ${!name} != *$'\n'* ]] || die "$name holds a quote, backslash or newline"
  done

  # 1. Fill every task definition first, so that a bad placeholder stops the run before anything
  #    is registered or migrated.
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  for service in "${selected[@]}"; do
    role_var=$(upper "$service")_TASK_ROLE_ARN
    execution_var=$(upper "$service")_EXECUTION_ROLE_ARN
    render "$definitions/$service.json" "${!role_var}" "${!execution_var}" >"$work/$service.json"
  done
  if $has_migrate; then
    render "$definitions/migrate.json" "" "$MIGRATE_EXECUTION_ROLE_ARN" >"$work/migrate.json"
  fi
  if [[ -n $render_dir ]]; then
    mkdir -p "$render_dir"
    cp "$work"/*.json "$render_dir/"
    log "rendered the task definitions into $render_dir"
    exit 0
  fi

  local cluster_status
  cluster_status=$(aws_cli ecs describe-clusters --clusters "$CLUSTER" --query 'clusters[0].status' --output text)
  [[ $cluster_status == ACTIVE ]] || die "cluster $CLUSTER does not exist (status $cluster_status): deploy the CloudFormation stack first"

  # 2. Migrate once, before any revision of the new image is registered: the stack names each
  #    service's task definition by family, so a stack update would start the latest revision,
  #    which must never be one whose schema is missing. Migrations are additive (expand, then
  #    contract in a later release), so the old tasks keep working on the new schema meanwhile.
  #    The migrate family is kept current even when this run does not migrate.
  local migrate_arn
  if $has_migrate; then
    migrate_arn=$(register "$work/migrate.json")
    log "registered ${migrate_arn##*/}"
  fi
  if $migrate; then
    run_migrations "$migrate_arn"
  fi

  # 3. Register a revision of every selected service's task definition.
  declare -gA revisions=()
  for service in "${selected[@]}"; do
    revisions[$service]=$(register "$work/$service.json")
    log "registered ${revisions[$service]##*/}"
  done
  if ! $services; then
    log "registered; no service touched (--no-services)"
    exit 0
  fi

  # 4. Point each service at its new revision, or create it (--create).
  local -A statuses=()
  local status now target_var
  local -a args
  while IFS=$'\t' read -r service status; do
    [[ -n $service ]] && statuses[$service]=$status
  done < <(aws_cli ecs describe-services --cluster "$CLUSTER" --services "${selected[@]}" \
    --query 'services[].[serviceName,status]' --output text)
  for service in "${selected[@]}"; do
    status=${statuses[$service]:-MISSING}
    if [[ $status == ACTIVE ]]; then
      now=$(aws_cli ecs update-service --cluster "$CLUSTER" --service "$service" \
        --task-definition "${revisions[$service]}" --query service.taskDefinition --output text)
      log "updated $service -> ${now##*/}"
    elif $create; then
      args=(--cluster "$CLUSTER" --service-name "$service" --task-definition "${revisions[$service]}"
        --desired-count "$DESIRED_COUNT" --launch-type FARGATE --propagate-tags SERVICE
        --deployment-configuration 'maximumPercent=200,minimumHealthyPercent=100,deploymentCircuitBreaker={enable=true,rollback=true}')
      if [[ $balanced == *" $service "* ]]; then
        target_var=$(upper "$service")_TARGET_GROUP_ARN
        args+=(--network-configuration "$(network "$SERVICE_SECURITY_GROUP")"
          --load-balancers "targetGroupArn=${!target_var},containerName=guildhall,containerPort=8080"
          --health-check-grace-period-seconds 30)
      else
        args+=(--network-configuration "$(network "$WORKER_SECURITY_GROUP")")
      fi
      now=$(aws_cli ecs create-service "${args[@]}" --query service.taskDefinition --output text)
      log "created $service -> ${now##*/}"
    else
      die "service $service does not exist in cluster $CLUSTER (status $status): deploy the stack with DeployServices=true, or pass --create"
    fi
  done

  # 5. Wait for ECS to finish (or fail) the rollouts.
  if $wait; then
    log "waiting for ${selected[*]} to complete their rollouts"
    await_rollouts "${selected[@]}"
  fi
  log "done: ${IMAGE}"
}

# Sourced (scripts/check-deploy.sh tests the functions above), it only defines them.
if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
  main "$@"
fi
