#!/usr/bin/env bash
# Builds the api-router image (`make image`). The base is $BASE_IMAGE when given; else the official
# slim Python image when it is present or can be pulled; else (no registry answers) a local base
# built by scripts/build-base-image.sh with debootstrap, as an air-gapped site would.
#
#   scripts/build-image.sh [TAG]        default TAG: localhost/api-router:latest (also :VERSION)
set -euo pipefail
cd "$(dirname "$0")/.."
TAG=${1:-${IMAGE:-localhost/api-router:latest}}
OFFICIAL=docker.io/library/python:3.11-slim-bookworm
LOCAL_BASE=localhost/python-base:bookworm
export CONTAINERS_CONF=${CONTAINERS_CONF:-$PWD/scripts/containers.conf}

base=${BASE_IMAGE:-}
if [[ -z $base ]]; then
  if podman image exists "$OFFICIAL" || timeout 60 podman pull -q "$OFFICIAL" >/dev/null 2>&1; then
    base=$OFFICIAL
  else
    echo "build-image: no registry answers; using the local base $LOCAL_BASE"
    bash scripts/build-base-image.sh "$LOCAL_BASE"
    base=$LOCAL_BASE
  fi
fi

# --network=host + the machine's CA bundle: pip inside the build reaches the package registry the
# way the host does (through the host's proxy, whose certificate only that bundle trusts).
# --format docker keeps HEALTHCHECK (the OCI format has no field for it).
ca=()
[[ -r /etc/ssl/certs/ca-certificates.crt ]] &&
  ca=(--volume /etc/ssl/certs/ca-certificates.crt:/etc/ssl/certs/ca-certificates.crt:ro)
version=$(sed -n 's/^version *= *"\(.*\)"/\1/p' pyproject.toml | head -n1)
# Also tagged with the version (the chart's appVersion, its default tag), so that
# `helm install api-router ./helm` after `make image` names an image that exists.
# A tag is what follows the last `:` only when no `/` comes after it: in
# registry.example.com:5000/api-router the `:` is the registry's port, and there is no tag.
repo=$TAG
[[ ${TAG##*/} == *:* ]] && repo=${TAG%:*}
versioned="$repo:$version"
echo "build-image: $TAG and $versioned from $base"
podman build --format docker --network=host "${ca[@]}" \
  --build-arg "BASE_IMAGE=$base" --build-arg "VERSION=$version" \
  --tag "$TAG" --tag "$versioned" --file Containerfile .
