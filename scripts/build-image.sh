#!/usr/bin/env bash
# Builds Guildhall's image from docker/Dockerfile as `guildhall:local` (or $GUILDHALL_IMAGE), on
# the bases scripts/local-images.sh makes where no registry can be reached, and prints the images
# as shell assignments (GUILDHALL_IMAGE=..., then local-images.sh's), also kept in
# target/local-images.env. Docker's layer cache makes a rebuild of unchanged sources take seconds;
# a cold build compiles the workspace in release mode inside the build stage (minutes).
#
#   eval "$(scripts/build-image.sh)"
set -euo pipefail
cd "$(dirname "$0")/.."
image=${GUILDHALL_IMAGE:-guildhall:local}
assignments=$(scripts/local-images.sh)
eval "$assignments"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
started=$SECONDS
echo "build-image: building docker/Dockerfile as $image" >&2
if ! DOCKER_BUILDKIT=0 docker build -f docker/Dockerfile --build-arg RUST_IMAGE="$RUST_IMAGE" \
  --build-arg RUNTIME_IMAGE="$RUNTIME_IMAGE" -t "$image" . >"$log" 2>&1; then
  tail -n 60 "$log" >&2
  echo "build-image: docker build failed" >&2
  exit 1
fi
echo "build-image: $image built in $((SECONDS - started)) s" >&2
# Local images of earlier recipes are not needed any more; the build cache keeps what it uses.
for name in rust runtime postgres redis nginx python; do
  current=$(sed -n "s|^[A-Z]*_IMAGE=guildhall-local/$name:||p" target/local-images.env)
  docker images "guildhall-local/$name" --format '{{.Tag}}' | grep -vx "$current" \
    | sed "s|^|guildhall-local/$name:|" | xargs -r docker rmi >/dev/null 2>&1 || true
done
echo "GUILDHALL_IMAGE=$image"
echo "$assignments"
