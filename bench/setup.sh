#!/usr/bin/env bash
# Installs what `make bench` needs, where it belongs, when it is missing (idempotent):
# - wrk and nginx from Debian (load generator and reference proxy / fake upstream);
# - .cache/bench-venv: matplotlib (chart), py-spy (profiles) and the LiteLLM proxy, apart from the
#   router's venv so its dependencies cannot change what is measured;
# - .cache/bench-node: the Portkey gateway from npm, run on the machine's Node.js.
# A peer that fails to install is recorded in .cache/bench-logs/ and the benchmark goes on without
# it; the rest is required.
set -euo pipefail
cd "$(dirname "$0")/.."
logs=.cache/bench-logs
mkdir -p "$logs"

need_apt=()
for pair in "wrk:wrk" "nginx:nginx"; do
  cmd=${pair%%:*}; pkg=${pair##*:}
  command -v "$cmd" >/dev/null 2>&1 || [[ -x /usr/sbin/$cmd ]] || need_apt+=("$pkg")
done
command -v node >/dev/null 2>&1 || need_apt+=(nodejs npm)
if ((${#need_apt[@]})); then
  echo "bench/setup: apt-get install ${need_apt[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null \
    || echo "bench/setup: apt-get install failed (${need_apt[*]})" >&2
fi
command -v wrk >/dev/null && command -v nginx >/dev/null \
  || { echo "bench/setup: wrk and nginx are required" >&2; exit 1; }
# The Debian package enables a system nginx service; the benchmark only runs its own instances.

venv=.cache/bench-venv
if [[ ! -x $venv/bin/python ]]; then
  python3 -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --upgrade pip
fi
"$venv/bin/python" -c 'import matplotlib' 2>/dev/null && [[ -x $venv/bin/py-spy ]] \
  || "$venv/bin/python" -m pip install --quiet matplotlib py-spy
if [[ ! -x $venv/bin/litellm ]]; then
  echo "bench/setup: pip install litellm[proxy] into $venv"
  "$venv/bin/python" -m pip install --quiet 'litellm[proxy]' >"$logs/litellm.log" 2>&1 \
    || echo "bench/setup: LiteLLM did not install (see $logs/litellm.log); measured without it" >&2
fi

node_dir=.cache/bench-node
if [[ ! -f $node_dir/node_modules/@portkey-ai/gateway/build/start-server.js ]]; then
  echo "bench/setup: npm install @portkey-ai/gateway into $node_dir"
  mkdir -p "$node_dir"
  (cd "$node_dir" && npm install --no-audit --no-fund --loglevel=error @portkey-ai/gateway) \
    >"$logs/portkey.log" 2>&1 \
    || echo "bench/setup: Portkey did not install (see $logs/portkey.log); measured without it" >&2
fi
