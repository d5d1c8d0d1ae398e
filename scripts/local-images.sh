#!/usr/bin/env bash
# Builds, on this machine, the images that docker/Dockerfile and the compose stack would otherwise
# pull from a registry, which these machines cannot reach. Each comes from a Debian root filesystem
# made with debootstrap, packages installed in a chroot, then `docker import`ed:
#
#   guildhall-local/rust      the Dockerfile's build stage: Debian 12, gcc, and this machine's Rust
#                             toolchain (rustup's, copied; no other can be fetched here)
#   guildhall-local/runtime   the Dockerfile's runtime base in distroless's place: Debian 12 with
#                             ca-certificates and distroless's nonroot user (65532)
#   guildhall-local/postgres  Debian's PostgreSQL, with docker/local/postgres-entrypoint.sh doing
#                             what the official image's entrypoint does for POSTGRES_USER/_DB
#   guildhall-local/redis     Debian's redis-server
#   guildhall-local/nginx     Debian's nginx-light (the proxy in the ALB's place), wget for its check
#   guildhall-local/python    Python with moto[server] and the AWS CLI from PyPI: moto's server,
#                             compose's aws-init step, and the OTLP sink in the collector's place
#
# Every tag is the hash of its recipe (this script, docker/local/, the Rust toolchain's version),
# so an image is built once and reused until its recipe changes. Prints the images as shell
# assignments (RUST_IMAGE=...), which scripts/stack.sh and the container tests read; also writes
# them to target/local-images.env.
#
#   scripts/local-images.sh [--quiet]
set -euo pipefail
cd "$(dirname "$0")/.."
quiet=${1:-}
say() { [[ $quiet == --quiet ]] || echo "local-images: $*" >&2; }

command -v docker >/dev/null || { echo "local-images: no docker command" >&2; exit 1; }
docker info >/dev/null 2>&1 || { echo "local-images: no Docker engine answers" >&2; exit 1; }

sysroot=$(rustc --print sysroot)
# This machine's own certificate authorities (/usr/local/share/ca-certificates: a company's, or
# the egress proxy's of a sandbox) are trusted where an image fetches packages over HTTPS while it
# is built (pip in the Python image, cargo in the Rust image's build stage), and nowhere else.
local_cas=(/usr/local/share/ca-certificates/*.crt)
[[ -e ${local_cas[0]} ]] || local_cas=()
recipe=$( { cat "$0" docker/local/* "${local_cas[@]}"; rustc -V; cargo -V; } | sha256sum | cut -c1-12)
declare -A tags=(
  [rust]=guildhall-local/rust:$recipe
  [runtime]=guildhall-local/runtime:$recipe
  [postgres]=guildhall-local/postgres:$recipe
  [redis]=guildhall-local/redis:$recipe
  [nginx]=guildhall-local/nginx:$recipe
  [python]=guildhall-local/python:$recipe
)
missing=()
for name in rust runtime postgres redis nginx python; do
  docker image inspect "${tags[$name]}" >/dev/null 2>&1 || missing+=("$name")
done

if ((${#missing[@]})); then
  command -v debootstrap >/dev/null || {
    say "installing debootstrap (apt-get)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap >/dev/null
  }
  work=$(mktemp -d /tmp/guildhall-images.XXXXXX)
  # shellcheck disable=SC2064 # the folder is fixed now
  trap "umount -R $work/root/proc 2>/dev/null || true; rm -rf $work" EXIT
  say "debootstrap bookworm (minbase) for ${missing[*]}"
  debootstrap --variant=minbase bookworm "$work/base" http://deb.debian.org/debian >"$work/debootstrap.log" 2>&1 \
    || { tail -n 20 "$work/debootstrap.log" >&2; exit 1; }
  # No daemon starts inside the chroot while packages install (Debian's policy-rc.d), and
  # PostgreSQL's package makes no cluster (the entrypoint makes one in the data volume).
  printf '#!/bin/sh\nexit 101\n' >"$work/base/usr/sbin/policy-rc.d"
  chmod +x "$work/base/usr/sbin/policy-rc.d"
  mkdir -p "$work/base/etc/postgresql-common"
  echo "create_main_cluster = false" >"$work/base/etc/postgresql-common/createcluster.conf"
  cp /etc/resolv.conf "$work/base/etc/resolv.conf"

  # Copies the base, lets the image's own `prepare_<name>` add files from this machine (when it
  # has one), runs a shell script in it as a chroot, imports the result with Dockerfile
  # instructions (--change), and tags it.
  build() {
    local name=$1 script=$2
    shift 2
    local root=$work/root
    rm -rf "$root"
    cp -a "$work/base" "$root"
    if declare -F "prepare_$name" >/dev/null; then "prepare_$name" "$root"; fi
    mount -t proc proc "$root/proc"
    if ! chroot "$root" /bin/bash -euo pipefail -c "export DEBIAN_FRONTEND=noninteractive; $script" >"$work/$name.log" 2>&1; then
      umount "$root/proc"
      tail -n 30 "$work/$name.log" >&2
      echo "local-images: building $name failed" >&2
      exit 1
    fi
    umount "$root/proc"
    rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/cache/apt/archives/*.deb \
      "$root/usr/sbin/policy-rc.d" "$root"/usr/share/doc/* "$root"/usr/share/man/*
    : >"$root/etc/resolv.conf"
    # `docker import` takes every instruction but STOPSIGNAL, which a build on top adds.
    local changes=() extra=() change
    for change in "$@"; do
      if [[ $change == STOPSIGNAL* ]]; then extra+=("$change"); else changes+=(--change "$change"); fi
    done
    tar -C "$root" -c . | docker import "${changes[@]}" - "${tags[$name]}" >/dev/null
    if ((${#extra[@]})); then
      printf 'FROM %s\n%s\n' "${tags[$name]}" "${extra[@]}" | DOCKER_BUILDKIT=0 docker build -q -t "${tags[$name]}" - >"$work/$name-stop.log" 2>&1 \
        || { cat "$work/$name-stop.log" >&2; exit 1; }
    fi
    say "built ${tags[$name]}"
  }
  with_local_cas() {
    mkdir -p "$1/usr/local/share/ca-certificates"
    if ((${#local_cas[@]})); then cp "${local_cas[@]}" "$1/usr/local/share/ca-certificates/"; fi
  }
  # This machine's toolchain (rustup's, whatever it is named), without its documentation.
  prepare_rust() {
    mkdir -p "$1/usr/local/rust"
    tar -C "$sysroot" --exclude=./share/doc --exclude=./share/man -c . | tar -C "$1/usr/local/rust" -x
    with_local_cas "$1"
  }
  prepare_postgres() {
    install -m 755 docker/local/postgres-entrypoint.sh "$1/usr/local/bin/postgres-entrypoint.sh"
  }
  prepare_python() {
    install -m 644 docker/local/otlp-sink.py "$1/usr/local/bin/otlp-sink.py"
    with_local_cas "$1"
  }
  apt_install() { echo "apt-get update -qq && apt-get install -y -qq --no-install-recommends $*"; }

  for name in "${missing[@]}"; do
    case $name in
      rust)
        build rust "$(apt_install gcc libc6-dev ca-certificates)"' && mkdir -p /usr/local/rust /usr/local/cargo' \
          'ENV PATH=/usr/local/rust/bin:/usr/local/cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
          'ENV CARGO_HOME=/usr/local/cargo'
        ;;
      runtime)
        build runtime "$(apt_install ca-certificates)"' && echo "nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin" >>/etc/passwd && echo "nonroot:x:65532:" >>/etc/group && mkdir -p /home/nonroot && chown 65532:65532 /home/nonroot' \
          'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'
        ;;
      postgres)
        build postgres "$(apt_install postgresql)"' && mkdir -p /var/lib/postgresql/data /var/run/postgresql && chown -R postgres:postgres /var/lib/postgresql /var/run/postgresql' \
          'ENV PATH=/usr/lib/postgresql/15/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
          'ENV PGDATA=/var/lib/postgresql/data' 'STOPSIGNAL SIGINT' 'EXPOSE 5432' \
          'ENTRYPOINT ["/usr/local/bin/postgres-entrypoint.sh"]'
        ;;
      redis)
        build redis "$(apt_install redis-server)" \
          'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' 'EXPOSE 6379' \
          'CMD ["redis-server", "--bind", "0.0.0.0", "--protected-mode", "no", "--save", "", "--appendonly", "no"]'
        ;;
      nginx)
        build nginx "$(apt_install nginx-light wget)"' && rm -f /etc/nginx/sites-enabled/default && ln -sf /dev/stdout /var/log/nginx/access.log && ln -sf /dev/stderr /var/log/nginx/error.log' \
          'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' 'STOPSIGNAL SIGQUIT' 'EXPOSE 8080' \
          'CMD ["nginx", "-g", "daemon off;"]'
        ;;
      python)
        build python "$(apt_install python3 python3-venv ca-certificates)"' && python3 -m venv /opt/venv && /opt/venv/bin/pip install --quiet --disable-pip-version-check "moto[server]==5.2.5" "awscli==1.46.2"' \
          'ENV PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
          'CMD ["moto_server", "-H", "0.0.0.0", "-p", "5000"]'
        ;;
    esac
  done
fi

{
  echo "RUST_IMAGE=${tags[rust]}"
  echo "RUNTIME_IMAGE=${tags[runtime]}"
  echo "POSTGRES_IMAGE=${tags[postgres]}"
  echo "REDIS_IMAGE=${tags[redis]}"
  echo "NGINX_IMAGE=${tags[nginx]}"
  echo "PYTHON_IMAGE=${tags[python]}"
} | tee target/local-images.env
