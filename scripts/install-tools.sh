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
