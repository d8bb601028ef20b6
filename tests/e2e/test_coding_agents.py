"""The real coding agents (Claude Code, Codex CLI, Qwen Code) doing real work through the router.

Each cell of the matrix runs one pinned client non-interactively (scripts/install-agents.sh puts
them in .cache/agents) against the real router, which runs a shipped profile whose baseUrl points
at the fake upstream. The fake plays a scripted tool-using conversation in the upstream's own wire
format (tests/fakes/agent_upstream.py): its first answer asks the client to write a file with the
client's own file tool, its second (once the tool's result comes back) is the final text. A cell
passes on the outcome a user sees: the client exits 0, prints the final text, and the file is on
disk with the expected content.

Choices, for the reader:
- The clients get a throw-away HOME and working directory, no telemetry or auto-update, and a
  clean environment (nothing of the machine's own API keys or proxies), so that nothing but the
  router is ever contacted.
- The profiles are the shipped files with their baseUrl (and timeouts) changed, so the cells
  follow whatever formats the shipped profiles declare. Codex uses `gpt-5.5`, a name from its
  built-in list, so that it offers its `apply_patch` tool; the profiles map that name (and the
  other clients' names) to the provider's own model, as an operator would.
- Codex also runs as `gpt-6-sol`, one of the models its list marks "Responses Lite" and code mode
  only (its default kind of model): all of its tools then come in an `additional_tools` input
  item, inside namespaces, with an empty `tools`, and the file is written by JavaScript that its
  `exec` tool (namespace `functions`) runs, calling the nested apply_patch.
- Claude Code offers some of its tools (NotebookEdit, WebFetch, the task tools …) only once its
  own ToolSearch has loaded them: the result of that search is a `tool_reference` block, and the
  tool comes with the next request's tools (`defer_loading`). One cell loads such a tool first.
- Codex with an MCP server (tests/fakes/mcp_notes.py, whose `save_note` writes the file): Codex
  defers MCP tools behind its own client-side `tool_search`, so the model searches first, Codex
  answers with the tools found (in a namespace, `mcp__notes`), and the model calls one of them.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.fakes.agent_upstream import DEFERRED_TOOL, AgentScript
from tests.fakes.upstream import FakeUpstream
from tests.support import ROOT, RouterFactory, RouterProcess, machine_lock, shipped_profile

pytestmark = [pytest.mark.agents, pytest.mark.timeout(300)]

AGENTS = ROOT / ".cache" / "agents" / "node_modules" / ".bin"
NODE20 = ROOT / ".cache" / "node" / "bin"  # only on a machine whose Node.js is older than 20
CLIENT_TIMEOUT = 180.0
API_KEY = "sk-agent-client"

# The provider's own model for each shipped profile, and what the clients' names map to.
PROVIDER_MODEL = {
    "anthropic": "claude-sonnet-4-5",
    "qwen": "qwen3-coder-plus",
    "openai": "gpt-5.5",
    "gemini": "gemini-2.5-pro",
}
# Names only a client uses: mapped to the provider's own model on every profile.
CLIENT_MODELS = ("gpt-6-sol",)
UPSTREAM_PATH = {
    "anthropic": "/v1/messages",
    "qwen": "/v1/chat/completions",
    "openai": "/v1/responses",
    "gemini": "/v1beta/openai/chat/completions",
}


@dataclass(frozen=True)
class Cell:
    client: str  # "claude", "codex" or "qwen" (the binary in .cache/agents)
    profile: str  # a shipped profile
    model: str  # the model name the client is told to use
    tool: str  # the client's file-writing tool that the fake upstream must find and call
    # Codex: its built-in `openai` provider pointed at the router (`openai_base_url`) instead of
    # a provider of its own; that one opens /v1/responses as a WebSocket first
    builtin: bool = False
    # Codex with an MCP server: the file is written by its tool, found by Codex's tool search
    mcp: bool = False
    # Codex (built-in provider) compacts after the tool call: the router makes the summary
    compact: bool = False
    # Claude Code loads a deferred tool with its ToolSearch first (a `tool_reference` comes back)
    tool_search: bool = False

    @property
    def upstream_path(self) -> str:
        if self.client != "codex" and self.profile == "openai":  # Chat there (Messages too)
            return UPSTREAM_PATH["qwen"]
        return UPSTREAM_PATH[self.profile]


CELLS = [
    # Claude Code: native Messages, and Messages translated to Chat Completions. On qwen it is
    # given the provider's model name, which it does not know (its odd requests come with that).
    pytest.param(
        Cell("claude", "anthropic", "claude-sonnet-4-5", "Write"), id="claude-code-on-anthropic"
    ),
    pytest.param(Cell("claude", "qwen", "qwen3-coder-plus", "Write"), id="claude-code-on-qwen"),
    # On the openai profile (Messages to Chat Completions, `max_completion_tokens`, the effort
    # only for the models it lists), told OpenAI's model name.
    pytest.param(Cell("claude", "openai", "gpt-5.5", "Write"), id="claude-code-on-openai"),
    # ...loading one of the tools it defers, through its ToolSearch, before it writes.
    pytest.param(
        Cell("claude", "qwen", "qwen3-coder-plus", "Write", tool_search=True),
        id="claude-code-tool-search-on-qwen",
    ),
    # Codex CLI speaks only Responses: relayed natively, translated to Chat, to Messages.
    pytest.param(Cell("codex", "openai", "gpt-5.5", "apply_patch"), id="codex-on-openai"),
    pytest.param(Cell("codex", "qwen", "gpt-5.5", "apply_patch"), id="codex-on-qwen"),
    pytest.param(Cell("codex", "anthropic", "gpt-5.5", "apply_patch"), id="codex-on-anthropic"),
    pytest.param(
        Cell("codex", "qwen", "gpt-5.5", "apply_patch", builtin=True),
        id="codex-builtin-provider-on-qwen",
    ),
    # ...with a "Responses Lite" model: namespaced tools in an `additional_tools` input item.
    pytest.param(Cell("codex", "openai", "gpt-6-sol", "exec"), id="codex-lite-on-openai"),
    pytest.param(Cell("codex", "qwen", "gpt-6-sol", "functions__exec"), id="codex-lite-on-qwen"),
    pytest.param(
        Cell("codex", "anthropic", "gpt-6-sol", "functions__exec"), id="codex-lite-on-anthropic"
    ),
    pytest.param(
        Cell("codex", "qwen", "gpt-6-sol", "functions__exec", builtin=True),
        id="codex-lite-builtin-provider-on-qwen",
    ),
    # ...compacting its context (server-side, as its built-in provider does) on a translated
    # profile: the router asks the model for the summary and hands it back as a compaction item.
    pytest.param(
        Cell("codex", "qwen", "gpt-5.5", "apply_patch", builtin=True, compact=True),
        id="codex-compaction-on-qwen",
    ),
    # ...with an MCP server, whose tools Codex offers through its own tool search.
    pytest.param(
        Cell("codex", "qwen", "gpt-5.5", "mcp__notes__save_note", mcp=True), id="codex-mcp-on-qwen"
    ),
    pytest.param(
        Cell("codex", "anthropic", "gpt-5.5", "mcp__notes__save_note", mcp=True),
        id="codex-mcp-on-anthropic",
    ),
    # Qwen Code: native Chat Completions, and Chat translated to Messages.
    pytest.param(Cell("qwen", "qwen", "qwen3-coder-plus", "write_file"), id="qwen-code-on-qwen"),
    pytest.param(Cell("qwen", "openai", "gpt-5.5", "write_file"), id="qwen-code-on-openai"),
    pytest.param(
        Cell("qwen", "anthropic", "claude-sonnet-4-5", "write_file"), id="qwen-code-on-anthropic"
    ),
    # Each client on the gemini profile (Chat Completions at Gemini's OpenAI-compatible path),
    # whose fake refuses, as Gemini does, a tool schema outside its Schema object
    # (tests/fakes/gemini_schema.py): every client's tools carry such keywords.
    pytest.param(Cell("claude", "gemini", "gemini-2.5-pro", "Write"), id="claude-code-on-gemini"),
    pytest.param(Cell("codex", "gemini", "gpt-5.5", "apply_patch"), id="codex-on-gemini"),
    pytest.param(Cell("qwen", "gemini", "gemini-2.5-pro", "write_file"), id="qwen-code-on-gemini"),
]


@pytest.fixture(scope="module")
def agents() -> Path:
    """The pinned clients, installed by the project's own script when missing (loud failure),
    by one test process at a time (`make test` runs two)."""
    with machine_lock("agents"):
        out = subprocess.run(
            ["bash", str(ROOT / "scripts" / "install-agents.sh")],
            capture_output=True,
            text=True,
            timeout=600,
        )
    assert out.returncode == 0, f"install-agents.sh failed:\n{out.stdout}\n{out.stderr}"
    return AGENTS


def agent_profile(name: str, upstream_url: str) -> dict[str, Any]:
    """Shipped profile `name`, pointed at the fake upstream, every client's model mapped."""
    profile = shipped_profile(name, upstream_url, read_secs=30)
    own = PROVIDER_MODEL[name]
    mapping = {m: own for m in (*PROVIDER_MODEL.values(), *CLIENT_MODELS) if m != own}
    profile["modelMapping"] = {**profile.get("modelMapping", {}), **mapping}
    return profile


@pytest.fixture
def agent_router(
    cell: Cell, upstream: FakeUpstream, router_factory: RouterFactory
) -> RouterProcess:
    """The router on the cell's shipped profile, in front of the fake upstream."""
    return router_factory(agent_profile(cell.profile, upstream.url), name=cell.profile)


@dataclass
class Run:
    returncode: int | None
    stdout: str
    stderr: str
    seconds: float


def client_env(home: Path, extra: dict[str, str]) -> dict[str, str]:
    """A clean environment: PATH and locale from the machine, nothing else of it (the Node.js 20
    of scripts/install-agents.sh first, when the machine's is older)."""
    path = os.environ.get("PATH", "/usr/bin:/bin")
    if NODE20.is_dir():
        path = f"{NODE20}:{path}"
    env = {
        "PATH": path,
        "LANG": "C.UTF-8",
        "HOME": str(home),
        "TERM": "dumb",
        "NO_COLOR": "1",
        "CI": "true",
        "NO_PROXY": "127.0.0.1,localhost",
        "DISABLE_TELEMETRY": "1",
        "DISABLE_AUTOUPDATER": "1",
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
    }
    if "NODE_EXTRA_CA_CERTS" in os.environ:
        env["NODE_EXTRA_CA_CERTS"] = os.environ["NODE_EXTRA_CA_CERTS"]
    env.update(extra)
    return env


def mcp_config(cell: Cell, note: Path) -> str:
    """Codex's config for the cell's MCP server (none unless the cell has one)."""
    if not cell.mcp:
        return ""
    server = ROOT / "tests" / "fakes" / "mcp_notes.py"
    return (
        "[mcp_servers.notes]\n"
        f"command = {json.dumps(sys.executable)}\n"
        f"args = [{json.dumps(str(server))}, {json.dumps(str(note))}]\n"
    )


def command(
    cell: Cell, bin_dir: Path, router: RouterProcess, home: Path, prompt: str, note: Path
) -> tuple[list[str], dict[str, str]]:
    if cell.client == "claude":
        argv = [str(bin_dir / "claude"), "-p", prompt, "--model", cell.model]
        argv += [
            "--permission-mode",
            "acceptEdits",
        ]  # --dangerously-skip-permissions is refused as root
        return argv, {
            "ANTHROPIC_BASE_URL": router.url,
            "ANTHROPIC_API_KEY": API_KEY,
            # its side requests (titles …) go to the "small fast" model: the same one here
            "ANTHROPIC_DEFAULT_HAIKU_MODEL": cell.model,
            "ANTHROPIC_SMALL_FAST_MODEL": cell.model,
            # a refused turn fails the cell at once instead of after minutes of backoff
            "CLAUDE_CODE_MAX_RETRIES": "0",
        }
    if cell.client == "codex" and cell.builtin:
        config = home / ".codex" / "config.toml"
        config.parent.mkdir(parents=True)
        config.write_text(
            f'model = "{cell.model}"\nopenai_base_url = "{router.url}/v1"\n'
            + ("model_auto_compact_token_limit = 5000\n" if cell.compact else "")
        )
        argv = [str(bin_dir / "codex"), "exec", "--skip-git-repo-check"]
        argv += ["--dangerously-bypass-approvals-and-sandbox", prompt]
        return argv, {"OPENAI_API_KEY": API_KEY, "CODEX_API_KEY": API_KEY}
    if cell.client == "codex":
        config = home / ".codex" / "config.toml"
        config.parent.mkdir(parents=True)
        config.write_text(
            f'model = "{cell.model}"\n'
            'model_provider = "router"\n'
            "[model_providers.router]\n"
            'name = "api-router"\n'
            f'base_url = "{router.url}/v1"\n'
            'env_key = "ROUTER_API_KEY"\n'
            'wire_api = "responses"\n'
            "request_max_retries = 0\n"
            "stream_max_retries = 0\n" + mcp_config(cell, note)
        )
        argv = [str(bin_dir / "codex"), "exec", "--skip-git-repo-check"]
        argv += ["--dangerously-bypass-approvals-and-sandbox", prompt]
        return argv, {"ROUTER_API_KEY": API_KEY}
    argv = [str(bin_dir / "qwen"), "-p", prompt, "--approval-mode", "auto-edit"]
    return argv, {
        "OPENAI_BASE_URL": router.url + "/v1",
        "OPENAI_API_KEY": API_KEY,
        "OPENAI_MODEL": cell.model,
    }


def run_client(argv: list[str], env: dict[str, str], cwd: Path) -> Run:
    start = time.monotonic()
    proc = subprocess.Popen(
        argv,
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=CLIENT_TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)  # its own session: the client and whatever it spawned
        out, err = proc.communicate(timeout=10)
        return Run(
            None, out, err + f"\n[killed after {CLIENT_TIMEOUT:.0f} s]", time.monotonic() - start
        )
    return Run(proc.returncode, out, err, time.monotonic() - start)


def diagnosis(run: Run, router: RouterProcess, script: AgentScript) -> str:
    """What a failing cell shows: the client's output, the router's verdicts, the script's turns."""
    answered = [
        f"{r.get('status_code')} {r.get('method')} {r.get('route')} ({r.get('translation')})"
        for r in router.access_logs()
        if r.get("route") != "/ready"
    ]
    problems = [
        json.dumps(r)[:600]
        for r in router.logs()
        if r.get("level") in ("warning", "error") or (r.get("status_code") or 0) >= 400
    ]
    turns = [f"{t.kind} via {t.path} ({t.tool or '-'})" for t in script.turns]
    return "\n".join(
        [
            f"exit={run.returncode} after {run.seconds:.1f} s",
            f"stdout (tail): {run.stdout[-1500:]}",
            f"stderr (tail): {run.stderr[-2500:]}",
            f"router answered: {answered}",
            "router warnings/errors:",
            *problems[-12:],
            f"upstream turns: {turns}",
            *(f"refused as Gemini would: {r[:3]}" for r in script.refused[-3:]),
        ]
    )


@pytest.mark.parametrize("cell", CELLS)
def test_agent_writes_a_file_through_the_router(
    cell: Cell,
    agents: Path,
    agent_router: RouterProcess,
    upstream: FakeUpstream,
    tmp_path: Path,
) -> None:
    token = uuid.uuid4().hex[:10]
    workdir, home = tmp_path / "work", tmp_path / "home"
    workdir.mkdir()
    home.mkdir()
    script = AgentScript(
        token=token,
        workdir=workdir,
        filename=f"note-{token}.txt",
        content=f"written by the agent for {token}\nsecond line\n",
        mcp=cell.mcp,
        compact=cell.compact,
        tool_search=cell.tool_search,
    )
    upstream.reply_with(script)
    argv, extra = command(cell, agents, agent_router, home, script.prompt, script.path)

    run = run_client(argv, client_env(home, extra), workdir)

    why = diagnosis(run, agent_router, script)
    assert run.returncode == 0, why
    assert run.stdout.strip().splitlines()[-1:] == [script.final_text], why
    assert script.path.is_file(), why
    assert script.path.read_text() == script.content, why
    # The conversation went as scripted, in the upstream's own format, with the client's tool.
    conversation = script.conversation()
    if cell.compact:  # the tool call, the summary the router asked for, the final text
        assert [t.kind for t in conversation] == ["tool_call", "compact", "final"], why
        assert conversation[0].tool == cell.tool, why
    elif cell.mcp:  # the client's tool search, then the tool it found
        assert [t.kind for t in conversation] == ["tool_call", "tool_call", "final"], why
        assert [t.tool for t in conversation[:2]] == ["tool_search", cell.tool], why
    elif cell.tool_search:  # the deferred tool loaded (and offered from then on), then the write
        assert [t.kind for t in conversation] == ["tool_call", "tool_call", "final"], why
        assert [t.tool for t in conversation[:2]] == ["ToolSearch", cell.tool], why
        offered = [t["function"]["name"] for t in conversation[0].body.get("tools", [])]
        assert DEFERRED_TOOL not in offered, why  # not before the search loaded it
        # The search's result reached the model: the tool it loaded, by name. (Refused, Claude
        # Code sent the request twice more, then again with the result replaced by "[Tool
        # references removed - tool search not enabled]" and its tool search off for the session.)
        results = [m for m in conversation[1].body["messages"] if m["role"] == "tool"]
        assert results and DEFERRED_TOOL in results[-1]["content"], why
        posts = [r for r in agent_router.access_logs() if r["method"] == "POST"]
        assert [r["status_code"] for r in posts if r["status_code"] != 200] == [], why
    else:
        assert [t.kind for t in conversation] == ["tool_call", "final"], why
        assert conversation[0].tool == cell.tool, why
    assert {t.path for t in script.turns} == {cell.upstream_path}, why
    assert script.refused == [], why
    if cell.profile == "gemini":
        # Gemini 3's thought signature went back with the call it signed: through the Messages
        # and Responses translations in the call's id; Qwen Code (Chat, as it is) drops it, and
        # the router gives the call Gemini's skip value instead.
        if cell.client == "qwen":
            assert script.skipped, why
        else:
            assert script.skipped == [], why
    if cell.client == "claude" and cell.profile == "openai":  # the profile's translation options
        sent = conversation[0].body
        assert "max_tokens" not in sent and sent.get("max_completion_tokens"), why
        assert sent.get("reasoning_effort") == "high", why  # gpt-5.5 takes it (`gpt-5*`)
    assert all(t.model == PROVIDER_MODEL[cell.profile] for t in script.turns), why
    if cell.client == "claude" and cell.upstream_path.endswith("chat/completions"):
        # Claude Code's metadata.user_id, a JSON object of ~140 characters, as a `user` every
        # Chat provider takes (OpenRouter refuses one over 128 characters; OpenAI's limit is 64)
        users = {t.body.get("user") for t in script.turns}
        assert len(users) == 1 and re.fullmatch(r"u-[0-9a-f]{32}", users.pop() or ""), why
    if cell.builtin:
        # One WebSocket handshake, answered 426 ("use HTTP"); a 405 was retried for seconds.
        handshakes = [
            r["status_code"]
            for r in agent_router.access_logs()
            if r["method"] == "GET" and r["route"] == "/v1/responses"
        ]
        assert handshakes == [426], why
