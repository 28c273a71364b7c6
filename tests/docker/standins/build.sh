#!/usr/bin/env bash
# Builds local stand-ins for the official images the generated compose stack uses (python slim,
# postgres, redis, nginx), because no container registry is reachable from CI machines: a
# debootstrap'ed Debian 12 root imported as a base, then one small image per service that behaves
# like the official one where the stack depends on it. Prints `export VAR=image` lines for the
# TASKSCALE_*_IMAGE variables of compose.yaml. Idempotent: existing images are kept.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
prefix="taskscale-standin"
cache="${TASKSCALE_STANDIN_CACHE:-/var/cache/taskscale-ci}"
export DOCKER_BUILDKIT=0

have() { docker image inspect "$1" >/dev/null 2>&1; }

if ! have "$prefix/base:bookworm"; then
  mirror="$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)"
  mirror="${mirror:-http://deb.debian.org/debian}"
  root="$cache/rootfs"
  if [ ! -x "$root/bin/sh" ]; then
    command -v debootstrap >/dev/null || apt-get install -y -q debootstrap >&2 \
      || { apt-get update -q >&2 && apt-get install -y -q debootstrap >&2; }
    rm -rf "$root" && mkdir -p "$cache"
    debootstrap --variant=minbase bookworm "$root" "$mirror" >&2
  fi
  # The machine's CA bundle, so TLS through this network's egress proxy verifies inside.
  mkdir -p "$root/etc/ssl/certs"
  cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
  cp /etc/ssl/certs/ca-certificates.crt "$root/usr/local/share/host-ca-bundle.pem"
  printf 'deb %s bookworm main\n' "$mirror" > "$root/etc/apt/sources.list"
  tar -C "$root" -c . | docker import -c 'ENV LANG=C.UTF-8' - "$prefix/base:bookworm" >&2
fi

# Tags name what a stand-in provides, so changing one means a new tag (the images are kept).
for image in python:latest postgres:18 redis:latest nginx:latest; do
  svc="${image%%:*}"
  if ! have "$prefix/$image"; then
    docker build -q --build-arg "BASE=$prefix/base:bookworm" -t "$prefix/$image" \
      "$here/$svc" >&2
  fi
done

echo "export TASKSCALE_PYTHON_IMAGE=$prefix/python:latest"
echo "export TASKSCALE_POSTGRES_IMAGE=$prefix/postgres:18"
echo "export TASKSCALE_REDIS_IMAGE=$prefix/redis:latest"
echo "export TASKSCALE_NGINX_IMAGE=$prefix/nginx:latest"
