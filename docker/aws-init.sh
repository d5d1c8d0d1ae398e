#!/usr/bin/env bash
# Creates the AWS resources the compose stack's services expect, in the S3/SQS emulator (moto), as
# ecs/cloudformation/guildhall.yaml creates them on AWS: the assets bucket (versioned, with CORS for
# browser PUTs to presigned URLs) and, per consuming service, a queue `guildhall-<consumer>` with
# its dead-letter queue `guildhall-<consumer>-dlq` (visibility timeout 60 s, long polling, redrive
# after 20 receives, as on AWS). Runs once per `docker compose up` in the aws-cli container; idempotent, so a
# re-run against the same emulator only re-applies the attributes. scripts/check-deploy.sh runs it
# against a moto server too.
#
# Environment: AWS_ENDPOINT_URL (the emulator), AWS_REGION, BUCKET (default guildhall-assets),
# QUEUE_PREFIX (default guildhall), CONSUMERS (default "leaderboard chat uploads webhooks").
set -euo pipefail

: "${AWS_ENDPOINT_URL:?AWS_ENDPOINT_URL must point at the emulator}"
region=${AWS_REGION:?AWS_REGION must be set}
bucket=${BUCKET:-guildhall-assets}
prefix=${QUEUE_PREFIX:-guildhall}
read -r -a consumers <<<"${CONSUMERS:-leaderboard chat uploads webhooks}"
# The AWS CLI honours AWS_ENDPOINT_URL itself; passing it keeps older CLIs on the emulator too.
aws() { command aws --endpoint-url "$AWS_ENDPOINT_URL" --region "$region" --output text "$@"; }

if ! aws s3api head-bucket --bucket "$bucket" >/dev/null 2>&1; then
  if [[ $region == us-east-1 ]]; then
    aws s3api create-bucket --bucket "$bucket" >/dev/null
  else
    aws s3api create-bucket --bucket "$bucket" --create-bucket-configuration "LocationConstraint=$region" >/dev/null
  fi
fi
aws s3api put-bucket-versioning --bucket "$bucket" --versioning-configuration Status=Enabled
aws s3api put-bucket-cors --bucket "$bucket" --cors-configuration '{"CORSRules":[{"AllowedOrigins":["*"],"AllowedMethods":["GET","HEAD","PUT"],"AllowedHeaders":["*"],"ExposeHeaders":["ETag"],"MaxAgeSeconds":3600}]}'
echo "aws-init: bucket $bucket"

for consumer in "${consumers[@]}"; do
  dlq_url=$(aws sqs create-queue --queue-name "$prefix-$consumer-dlq" --query QueueUrl)
  aws sqs set-queue-attributes --queue-url "$dlq_url" --attributes MessageRetentionPeriod=1209600
  dlq_arn=$(aws sqs get-queue-attributes --queue-url "$dlq_url" --attribute-names QueueArn --query Attributes.QueueArn)
  queue_url=$(aws sqs create-queue --queue-name "$prefix-$consumer" --query QueueUrl)
  redrive="{\\\"deadLetterTargetArn\\\":\\\"$dlq_arn\\\",\\\"maxReceiveCount\\\":\\\"20\\\"}"
  aws sqs set-queue-attributes --queue-url "$queue_url" --attributes \
    "{\"VisibilityTimeout\":\"60\",\"ReceiveMessageWaitTimeSeconds\":\"20\",\"MessageRetentionPeriod\":\"345600\",\"RedrivePolicy\":\"$redrive\"}"
  echo "aws-init: queue $queue_url -> $dlq_url"
done
