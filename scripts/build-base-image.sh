#!/usr/bin/env bash
# Builds a local Python base image the way an air-gapped site would: debootstrap a minimal
# Debian bookworm with python3 + venv + CA certificates from the machine's own Debian mirror, and
# import it into podman. Cached: does nothing when the image already exists (FORCE=1 rebuilds).
#
#   scripts/build-base-image.sh [IMAGE]      default IMAGE: localhost/python-base:bookworm
set -euo pipefail
cd "$(dirname "$0")/.."
IMAGE=${1:-${BASE_IMAGE:-localhost/python-base:bookworm}}
export CONTAINERS_CONF=${CONTAINERS_CONF:-$PWD/scripts/containers.conf}

if [[ ${FORCE:-0} != 1 ]] && podman image exists "$IMAGE"; then
  echo "build-base-image: $IMAGE exists (FORCE=1 rebuilds)"
  exit 0
fi

# The mirror this machine's apt already uses (DEBIAN_MIRROR overrides): no host is hard-coded.
mirror=${DEBIAN_MIRROR:-}
if [[ -z $mirror ]]; then
  mirror=$(grep -hsE '^\s*URIs:' /etc/apt/sources.list.d/*.sources | awk '{print $2}' \
    | grep -v -- '-security' | head -n1 || true)
fi
if [[ -z $mirror ]]; then
  mirror=$(grep -hsE '^\s*deb\s' /etc/apt/sources.list | awk '{print $2}' | head -n1 || true)
fi
[[ -n $mirror ]] || { echo "build-base-image: no Debian mirror found; set DEBIAN_MIRROR" >&2; exit 1; }

root=$(mktemp -d /var/tmp/api-router-rootfs.XXXXXX)
trap 'rm -rf "$root"' EXIT
echo "build-base-image: debootstrap bookworm (minbase + python3) into $root"
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
  bookworm "$root" "$mirror" >"$root.log" 2>&1 || { tail -n 30 "$root.log" >&2; exit 1; }
rm -f "$root.log"
# Slim it: no apt lists, caches, docs or man pages are needed at run time.
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/* "$root"/usr/share/doc/* \
  "$root"/usr/share/man/* "$root"/usr/share/locale/*
tar -C "$root" -c . | podman import \
  --change 'CMD ["/usr/bin/python3"]' \
  --change 'ENV LANG=C.UTF-8' - "$IMAGE" >/dev/null
echo "build-base-image: imported $IMAGE"
