#!/usr/bin/env bash
# Build the sidecar's image with whatever this machine has:
#   - Docker with a running engine: `docker build` from python:3.11-slim (Docker Hub);
#   - otherwise podman (or buildah): from python:3.11-slim when a registry gives it, else from a
#     Debian root filesystem made here by debootstrap from Debian's packages and imported as
#     localhost/semcache-base:bookworm (made once, kept).
#
#   tools/build_image.sh [TAG]          (default semcache:latest; `make image`)
#
# Podman and buildah build in Docker's image format (--format docker): the OCI format has no
# HEALTHCHECK and drops it. Prints the engine used on its last line ("engine: podman").
# Environment: SEMCACHE_IMAGE_ENGINE (docker, podman, buildah) to choose, SEMCACHE_IMAGE_BASE
# to give a base image, SEMCACHE_DEBIAN_MIRROR for debootstrap.
set -euo pipefail
cd "$(dirname "$0")/.."
TAG="${1:-semcache:latest}"
SUITE=bookworm
LOCAL_BASE="localhost/semcache-base:$SUITE"
TORCH_VERSION="$(python3 -c 'import re; print(re.search(r"VERSION = \"(.+?)\"", open("tools/install_torch.py").read()).group(1))')"

engine="${SEMCACHE_IMAGE_ENGINE:-}"
if [ -z "$engine" ]; then
  if command -v docker >/dev/null && docker info >/dev/null 2>&1; then
    engine=docker
  elif command -v podman >/dev/null; then
    engine=podman
  elif command -v buildah >/dev/null; then
    engine=buildah
  else
    echo "no container tool: install Docker, or podman (apt-get install podman)" >&2
    exit 2
  fi
fi

# A CPU wheel of torch that this machine's pip finds on disk (a machine that reaches PyPI but
# not PyTorch's index): staged in the build context, where the Dockerfile's pip looks first.
mkdir -p deploy/wheels
for dir in ${PIP_FIND_LINKS:-} $(python3 -m pip config get global.find-links 2>/dev/null || true); do
  for wheel in "$dir"/torch-"$TORCH_VERSION"+cpu-*.whl; do
    [ -f "$wheel" ] && cp -u "$wheel" deploy/wheels/
  done
done

build_args=()
# pip's CA bundle when this machine's pip has one (a TLS-inspecting proxy): mounted for the
# build's RUN steps only, never copied into the image.
cert="${PIP_CERT:-$(python3 -m pip config get global.cert 2>/dev/null || true)}"

if [ "$engine" = docker ]; then
  base="${SEMCACHE_IMAGE_BASE:-python:3.11-slim}"
  docker build --build-arg BASE="$base" -t "$TAG" .
  echo "engine: docker"
  exit 0
fi

# podman and buildah: the run-time settings this kind of host needs (tools/container_env.sh).
source tools/container_env.sh
if [ -n "$cert" ] && [ -f "$cert" ]; then
  run_args+=(--volume "$cert:/etc/ssl/certs/host-ca.crt:ro")
  build_args+=(--build-arg PIP_CERT=/etc/ssl/certs/host-ca.crt)
fi

base="${SEMCACHE_IMAGE_BASE:-}"
if [ -z "$base" ]; then
  if timeout 60 "$engine" pull -q docker.io/library/python:3.11-slim >/dev/null 2>&1; then
    base=docker.io/library/python:3.11-slim
  else
    base="$LOCAL_BASE"
    if ! "$engine" image exists "$LOCAL_BASE" 2>/dev/null; then
      command -v debootstrap >/dev/null || { echo "no registry and no debootstrap (apt-get install debootstrap)" >&2; exit 2; }
      rootfs="$(mktemp -d /var/tmp/semcache-rootfs.XXXXXX)"
      trap 'rm -rf "$rootfs"' EXIT
      echo "making the base image from Debian $SUITE with debootstrap" >&2
      debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
        "$SUITE" "$rootfs" "${SEMCACHE_DEBIAN_MIRROR:-http://deb.debian.org/debian}" >/dev/null
      rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
      tar -C "$rootfs" -c . | "$engine" import --change 'CMD ["/bin/bash"]' - "$LOCAL_BASE" >/dev/null
    fi
  fi
fi

if [ "$engine" = podman ]; then
  podman build --format docker "${run_args[@]}" "${build_args[@]}" \
    --build-arg BASE="$base" -t "$TAG" .
else
  buildah bud --format docker "${run_args[@]}" "${build_args[@]}" \
    --build-arg BASE="$base" -t "$TAG" .
fi
echo "engine: $engine"
