"""The benchmark harness: every configuration side by side, in interleaved rounds, in one run.

    .cache/bench-venv/bin/python bench/run.py [--quick] [--rounds N] [--duration S] [--soak S]
                                              [--sse-gap-ms MS] [--only NAME,...]
                                              [--processes N]

(`make bench` / `make bench-quick` install what it needs and call it.) It starts, on 127.0.0.1:

- the fake upstream: nginx answering a chat completion (JSON) or its 22-event stream (SSE burst)
  from memory (bench/nginx/upstream.conf), so the upstream never limits a configuration; and, for
  the paced SSE scenario, a small Node.js server (bench/paced_upstream.cjs, behind the same nginx)
  sending the same 22 events one every --sse-gap-ms (10 ms: 100 tokens/s, a fast model);
- the configurations: direct to the upstream; nginx as a reverse proxy; api-router with 1 and 2
  workers, all features on (metrics, JSON logs, a rate limit that does not trigger); api-router
  with 2 workers, metrics and logs off; api-router on the other upstream transports
  (httpx-aiohttp's, httpx's own); api-router with tracing on (every request sampled, and 1 %),
  exporting OTLP to bench/otlp_sink.py, in the JSON scenarios; the minimal Sanic proxy
  (bench/minimal_proxy.py) on plain aiohttp, httpx, httpx + AiohttpTransport and httpx + the
  router's H1Transport; the LiteLLM proxy and the Portkey gateway where they installed;

then runs `wrk` for each scenario (JSON at 1 and 64 connections, SSE burst and SSE paced at 64, a
1 MB body at 8, rate-limited 429s at 64) and an SSE time-to-first-byte probe, round after round,
every run bounded by time. Afterwards: RSS per router worker and a soak at half the measured
maximum load. Results go to bench/results/<date>.{json,md,png} (bench/report.py); --quick
writes to bench/results/tmp/. Every process it starts is stopped by its pid.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
CACHE = ROOT / ".cache"
ROUTER_PY = ROOT / ".venv" / "bin" / "python"
BENCH_VENV = CACHE / "bench-venv"
NODE_DIR = CACHE / "bench-node"
PORTKEY_SERVER = NODE_DIR / "node_modules" / "@portkey-ai" / "gateway" / "build" / "start-server.js"

SSE_PATH = "/sse/v1/chat/completions"
# The paced stream: the same path with this header (bench/nginx/upstream.conf passes it to the
# pacing server), or this path for the peers, which do not forward a client's headers upstream.
PACED_HEADER = "X-Bench-Paced"
PACED_BASE = "/paced/v1"
DEFAULT_SSE_GAP_MS = 10.0
API_KEY = "bench-key"
EVENTS_PER_STREAM = 22  # 20 content chunks, the finish chunk, the usage chunk (+ [DONE])

sys.path.insert(0, str(BENCH))
import report  # noqa: E402

# --- the fake upstream's answers and the request bodies ---------------------------------------


def completion_json() -> bytes:
    return json.dumps(
        {
            "id": "chatcmpl-bench",
            "object": "chat.completion",
            "created": 1700000000,
            "model": "upstream-model",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "The quick brown fox " * 8},
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 24, "completion_tokens": 40, "total_tokens": 64},
        },
        separators=(",", ":"),
    ).encode()


def completion_sse() -> bytes:
    def chunk(delta: dict[str, Any], finish: str | None = None, usage: Any = None) -> bytes:
        body: dict[str, Any] = {
            "id": "chatcmpl-bench",
            "object": "chat.completion.chunk",
            "created": 1700000000,
            "model": "upstream-model",
            "choices": [] if usage else [{"index": 0, "delta": delta, "finish_reason": finish}],
        }
        if usage:
            body["usage"] = usage
        return b"data: " + json.dumps(body, separators=(",", ":")).encode() + b"\n\n"

    parts = [chunk({"role": "assistant", "content": ""})]
    parts += [chunk({"content": f"word{i} "}) for i in range(19)]
    parts.append(chunk({}, "stop"))
    parts.append(
        chunk({}, usage={"prompt_tokens": 24, "completion_tokens": 20, "total_tokens": 44})
    )
    parts.append(b"data: [DONE]\n\n")
    assert len(parts) == EVENTS_PER_STREAM + 1
    return b"".join(parts)


def paced_events() -> list[str]:
    """The same stream as the pacing server's writes: one event each, `[DONE]` with the last."""
    events = [e + b"\n\n" for e in completion_sse().split(b"\n\n")[:-1]]
    events[-2:] = [events[-2] + events[-1]]
    assert len(events) == EVENTS_PER_STREAM
    return [e.decode() for e in events]


def request_body(model: str, stream: bool = False, size: int = 0) -> bytes:
    content = "Say something about foxes."
    if size:
        content = "x" * size
    body: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": content}]}
    if stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}  # as the OpenAI SDK sends it
    return json.dumps(body, separators=(",", ":")).encode()


def responses_body(model: str) -> bytes:
    """A small Responses API request as a coding agent sends it (instructions, a developer and a
    user message, one function tool, stateless): the translated-JSON scenario's body."""
    body = {
        "model": model,
        "instructions": "You are a helpful assistant.",
        "input": [
            {"role": "developer", "content": [{"type": "input_text", "text": "Be brief."}]},
            {
                "role": "user",
                "content": [{"type": "input_text", "text": "Say something about foxes."}],
            },
        ],
        "tools": [
            {
                "type": "function",
                "name": "shell",
                "description": "Run a command",
                "parameters": {"type": "object", "properties": {"cmd": {"type": "string"}}},
            }
        ],
        "store": False,
        "stream": False,
    }
    return json.dumps(body, separators=(",", ":")).encode()


def sse_parts(size: int = 2048) -> list[str]:
    """The stream in whole events of at most about `size` bytes each, as nginx strings."""
    parts: list[str] = []
    for event in completion_sse().split(b"\n\n")[:-1]:
        text = nginx_string(event + b"\n\n")
        if parts and len(parts[-1]) + len(text) <= size:
            parts[-1] += text
        else:
            parts.append(text)
    return parts


def write_bodies(run: Path) -> dict[str, Path]:
    """The request bodies, as files for wrk: `kind:model` -> path."""
    bodies: dict[str, Path] = {}
    for model in ("bench-model", "bench-model-sse", "bench-model-paced", "bench-failover"):
        for kind, data in (
            ("json", request_body(model)),
            ("sse", request_body(model, stream=True)),
            ("big", request_body(model, size=1024 * 1024)),
            ("responses", responses_body(model)),
        ):
            f = run / f"{kind}-{model}.json"
            f.write_bytes(data)
            bodies[f"{kind}:{model}"] = f
    return bodies


def nginx_string(data: bytes) -> str:
    """`data` as the inside of an nginx single-quoted string."""
    text = data.decode()
    assert "'" not in text and "\\" not in text
    return text.replace("\n", "\\n")


# --- processes ---------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"exited with status {proc.returncode} before listening")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.1)
    raise RuntimeError(f"not listening on {port} after {timeout:.0f} s")


def descendants(pid: int) -> list[int]:
    out: list[int] = []
    todo = [pid]
    while todo:
        p = todo.pop()
        try:
            kids = Path(f"/proc/{p}/task/{p}/children").read_text().split()
        except OSError:
            continue
        for k in kids:
            out.append(int(k))
            todo.append(int(k))
    return out


def rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def listening_inodes(port: int) -> set[str]:
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                f = line.split()
                if f[3] == "0A" and int(f[1].rsplit(":", 1)[1], 16) == port:
                    inodes.add(f[9])
    return inodes


def worker_pids(pid: int, port: int) -> list[int]:
    """The processes under `pid` that serve `port` (Sanic's workers, not its manager process)."""
    wanted = {f"socket:[{i}]" for i in listening_inodes(port)}
    out = []
    for p in descendants(pid):
        with contextlib.suppress(OSError):
            fds = Path(f"/proc/{p}/fd")
            if any(os.readlink(fds / fd) in wanted for fd in os.listdir(fds)):
                out.append(p)
    return out


@dataclass
class Server:
    """One started process group (stopped by its pid at the end)."""

    name: str
    proc: subprocess.Popen[bytes]
    port: int

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)


def spawn(
    name: str,
    argv: list[str],
    port: int,
    run: Path,
    env: dict[str, str] | None = None,
    stdout: Path | None = None,
    timeout: float = 60,
) -> Server:
    out = open(stdout or os.devnull, "wb")
    err = open(run / f"{name}.stderr", "wb")
    proc = subprocess.Popen(
        argv,
        stdout=out,
        stderr=err,
        env={**os.environ, **(env or {})},
        cwd=run,
        start_new_session=True,  # its own process group: stopped whole by the leader's pid
    )
    server = Server(name, proc, port)
    try:
        wait_port(port, proc, timeout)
    except RuntimeError:
        server.stop()
        raise
    return server


# --- configurations ----------------------------------------------------------------------------


@dataclass
class Target:
    """Where one configuration is measured: a request for each scenario it supports."""

    name: str
    group: str  # "main" (the comparison table) or "transport" (the client-layer comparison)
    label: str
    port: int = 0
    server: Server | None = None
    json_path: str = "/v1/chat/completions"
    sse_path: str | None = SSE_PATH
    limited_path: str | None = None
    # The Responses API translated to Chat Completions (the routers only): `responses64`.
    responses_path: str | None = None
    model: str = "bench-model"
    sse_model: str | None = None
    paced_model: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    sse_headers: dict[str, str] = field(default_factory=dict)
    paced_headers: dict[str, str] = field(default_factory=dict)
    status: str = "ok"
    sanic: bool = False  # RSS is read from its Sanic workers
    # Only these scenarios (None: every one it supports by the rules below).
    scenarios: tuple[str, ...] | None = None
    # --processes N: the N running copies of a configuration of COPIED, (port, server) each;
    # round r is measured on copy r % N (`use`). Empty: one process.
    copies: list[tuple[int, Server | None]] = field(default_factory=list)

    def use(self, rnd: int) -> None:
        """Point the runs of round `rnd` at this configuration's copy for it."""
        if self.copies:
            self.port, self.server = self.copies[rnd % len(self.copies)]

    def servers(self) -> list[Server]:
        """Every process started for this configuration (all its copies)."""
        if self.copies:
            return [s for _, s in self.copies if s is not None]
        return [self.server] if self.server is not None else []

    def request(self, scenario: str, bodies: dict[str, Path]) -> tuple[str, Path, dict[str, str]]:
        h = {"Authorization": f"Bearer {API_KEY}", **self.headers}
        if scenario == "sse64":
            return (
                self.sse_path or "",
                bodies[f"sse:{self.sse_model or self.model}"],
                {**h, **self.sse_headers},
            )
        if scenario == "ssepaced":
            return (
                self.sse_path or "",
                bodies[f"sse:{self.paced_model or self.sse_model or self.model}"],
                {**h, **self.sse_headers, PACED_HEADER: "1", **self.paced_headers},
            )
        if scenario == "limited64":
            return self.limited_path or "", bodies[f"json:{self.model}"], h
        if scenario == "body1mb":
            return self.json_path, bodies[f"big:{self.model}"], h
        if scenario == "responses64":
            return self.responses_path or "", bodies[f"responses:{self.model}"], h
        if scenario == "failover1":
            return self.json_path, bodies["json:bench-failover"], h
        return self.json_path, bodies[f"json:{self.model}"], h

    def supports(self, scenario: str) -> bool:
        if self.scenarios is not None:
            return scenario in self.scenarios
        if scenario == "failover1":
            return self.name == "router-2w-routing"
        if scenario == "limited64":
            return self.limited_path is not None
        if scenario == "responses64":
            return self.responses_path is not None
        if scenario in ("sse64", "ssepaced", "ttfb", "body1mb"):
            return (
                self.group == "main" or self.name in report.ENGINE_ROWS
            ) and self.sse_path is not None
        return True


def router_profile(upstream_port: int, run: Path) -> Path:
    profile = {
        "name": "bench",
        "baseUrl": f"http://127.0.0.1:{upstream_port}",
        "models": ["bench-model"],
        "modelMapping": {"bench-model": "upstream-model"},
        # A limit that never triggers: every request still takes a rate-limit decision.
        "rateLimit": {"requestsPerMinute": 1e9, "burst": 1_000_000_000},
        "endpoints": {
            "/v1/chat/completions": {"upstreamPath": "/v1/chat/completions"},
            # The SSE scenario goes through the same relay on the other OpenAI streaming route.
            "/v1/completions": {"upstreamPath": SSE_PATH},
            # The translated-JSON scenario: Responses API in, Chat Completions upstream.
            "/v1/responses": {"format": "openai", "upstreamPath": "/v1/chat/completions"},
            # The 429 scenario: one request a minute, so all but the first are rejected.
            "/v1/embeddings": {
                "upstreamPath": "/v1/chat/completions",
                "rateLimit": {"requestsPerMinute": 1, "burst": 1},
            },
        },
    }
    path = run / f"router-profile-{upstream_port}.json"
    path.write_text(json.dumps(profile, indent=2))
    return path


def routing_file(upstream_port: int, run: Path, routes: int = 50) -> Path:
    """A routing file (issue 16) in front of the same upstream: `routes` routes over two
    upstreams, the benchmark's model among them (its route past the middle), the same rate
    limit as the profile; and `bench-failover`, whose first target answers 503 (no backoff, so
    what it adds is the router's and the failed attempts' own time)."""
    base = f"http://127.0.0.1:{upstream_port}"
    model_routes: list[dict[str, Any]] = [
        {"match": f"model-{i:02d}", "targets": [{"upstream": "b" if i % 2 else "a"}]}
        for i in range(routes - 3)
    ]
    model_routes[routes // 2 :] = [
        {"match": "bench-model", "targets": [{"upstream": "a", "model": "upstream-model"}]},
        *model_routes[routes // 2 :],
    ]
    model_routes += [
        {"match": "family-*", "targets": [{"upstream": "b", "model": "${1}"}]},
        {
            "match": "bench-failover",
            "strategy": "priority",
            "targets": [{"upstream": "down"}, {"upstream": "a", "model": "upstream-model"}],
            "retry": {"maxAttempts": 3, "backoffBaseSecs": 0},
        },
    ]
    data = {
        "name": "bench-routing",
        "upstreams": {
            "a": {"baseUrl": base},
            "b": {"baseUrl": base},
            "down": {"baseUrl": base + "/fail"},
        },
        "modelRoutes": model_routes,
        "rateLimit": {"requestsPerMinute": 1e9, "burst": 1_000_000_000},
        # never ejected: every failed-over request tries the down upstream twice
        "outlierDetection": {"consecutiveFailures": 100, "failureRate": 0},
    }
    assert len(model_routes) == routes
    path = run / "router-routing.json"
    path.write_text(json.dumps(data, indent=2))
    return path


def start_router(
    t: Target,
    workers: int,
    upstream_port: int,
    run: Path,
    env: dict[str, str],
    config: Path | None = None,
) -> None:
    t.port = free_port()
    argv = [
        str(ROUTER_PY),
        "-m",
        "service",
        "--config",
        str(config or router_profile(upstream_port, run)),
        "--host",
        "127.0.0.1",
        "--workers",
        str(workers),
        str(t.port),
    ]
    t.server = spawn(
        t.name, argv, t.port, run, env={"LOG_FORMAT": "json", "PYTHONPATH": str(ROOT), **env}
    )
    t.json_path, t.sse_path, t.limited_path, t.sanic = (
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/embeddings",
        True,
    )
    if t.group == "main":
        t.responses_path = "/v1/responses"
    if config is not None:
        t.limited_path = None  # the routing file limits no route to 1 a minute


def start_minimal(t: Target, client: str, upstream: str, run: Path, workers: int = 2) -> None:
    """bench/minimal_proxy.py on `client` (aiohttp, httpx, ...), relaying to `upstream`."""
    t.port = free_port()
    argv = [str(ROUTER_PY), str(BENCH / "minimal_proxy.py"), "--client", client]
    t.server = spawn(
        t.name,
        [*argv, "--workers", str(workers), str(t.port), upstream],
        t.port,
        run,
        env={"PYTHONPATH": str(ROOT)},  # httpx-h1 imports service.proxy.h1transport
    )
    t.sanic = True


def start_litellm(t: Target, upstream_port: int, run: Path) -> None:
    exe = BENCH_VENV / "bin" / "litellm"
    if not exe.exists():
        raise RuntimeError("not installed (see .cache/bench-logs/litellm.log)")
    base = f"http://127.0.0.1:{upstream_port}"
    cfg = run / "litellm.yaml"
    cfg.write_text(
        "model_list:\n"
        "  - model_name: bench-model\n"
        f"    litellm_params: {{model: openai/upstream-model, api_base: '{base}/v1', "
        "api_key: bench-upstream-key}\n"
        "  - model_name: bench-model-sse\n"
        f"    litellm_params: {{model: openai/upstream-model, api_base: '{base}/sse/v1', "
        "api_key: bench-upstream-key}\n"
        "  - model_name: bench-model-paced\n"
        f"    litellm_params: {{model: openai/upstream-model, api_base: '{base}{PACED_BASE}', "
        "api_key: bench-upstream-key}\n"
        "litellm_settings: {telemetry: false, drop_params: true}\n"
    )
    t.port = free_port()
    master_key = "sk-bench-" + os.urandom(16).hex()  # LiteLLM refuses to start without one
    t.headers = {"Authorization": f"Bearer {master_key}"}
    env = {
        "LITELLM_MASTER_KEY": master_key,
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        "LITELLM_TELEMETRY": "False",
        "LITELLM_LOG": "ERROR",
        "NO_PROXY": "*",
        "no_proxy": "*",
    }
    t.server = spawn(
        t.name,
        [
            str(exe),
            "--config",
            str(cfg),
            "--host",
            "127.0.0.1",
            "--port",
            str(t.port),
            "--num_workers",
            "2",
        ],
        t.port,
        run,
        env=env,
        timeout=180,
    )
    t.json_path, t.sse_path, t.sse_model, t.paced_model = (
        "/v1/chat/completions",
        "/v1/chat/completions",
        "bench-model-sse",
        "bench-model-paced",
    )


def start_portkey(t: Target, upstream_port: int, run: Path) -> None:
    node = shutil.which("node")
    if node is None or not PORTKEY_SERVER.exists():
        raise RuntimeError("not installed (see .cache/bench-logs/portkey.log)")
    t.port = free_port()
    base = f"http://127.0.0.1:{upstream_port}"
    env = {"NODE_ENV": "production", "TRUSTED_CUSTOM_HOSTS": "127.0.0.1,localhost"}
    t.server = spawn(
        t.name,
        [
            node,
            "--require",
            str(BENCH / "loopback.cjs"),
            str(PORTKEY_SERVER),
            f"--port={t.port}",
            "--headless",
        ],
        t.port,
        run,
        env=env,
        timeout=60,
    )
    t.headers = {"x-portkey-provider": "openai", "x-portkey-custom-host": f"{base}/v1"}
    t.sse_headers = {"x-portkey-custom-host": f"{base}/sse/v1"}
    t.paced_headers = {"x-portkey-custom-host": f"{base}{PACED_BASE}"}
    t.sse_path = "/v1/chat/completions"


def start_upstream(run: Path, port: int, gap_ms: float, h2_port: int | None = None) -> list[Server]:
    """The fake upstream: the pacing Node.js server, then nginx in front of it (HTTP/1.1 on
    `port`, HTTP/2 with prior knowledge on `h2_port`, a free one if not given)."""
    h2_port = h2_port or free_port()
    node = shutil.which("node")
    if node is None:
        raise RuntimeError("the paced SSE upstream needs Node.js (bench/setup.sh installs it)")
    events = (run / "paced-events.json").resolve()
    events.write_text(json.dumps(paced_events()))
    paced_port = free_port()
    paced = spawn(
        "paced-upstream",
        [node, str(BENCH / "paced_upstream.cjs"), str(paced_port), f"{gap_ms:g}", str(events)],
        paced_port,
        run,
    )
    conf = (BENCH / "nginx" / "upstream.conf").read_text()
    conf = (
        conf.replace("@RUN@", str(run))
        .replace("@PORT@", str(port))
        .replace("@H2_PORT@", str(h2_port))
        .replace("@PACED_PORT@", str(paced_port))
        .replace("@JSON@", nginx_string(completion_json()))
        .replace(
            "@SSE_SET@",
            "\n            ".join(f"set $sse{i} '{part}';" for i, part in enumerate(sse_parts())),
        )
        .replace("@SSE@", "".join(f"$sse{i}" for i in range(len(sse_parts()))))
    )
    (run / "upstream.conf").write_text(conf)
    try:
        front = spawn(
            "upstream", ["nginx", "-p", str(run), "-c", str(run / "upstream.conf")], port, run
        )
    except RuntimeError:
        paced.stop()
        raise
    return [front, paced]


# The two sides of the JSON target (issue 20: api-router 2w / the minimal aiohttp relay), the
# configurations `--processes N` starts N times: a process's own luck (memory layout, hash seed)
# moves its requests/s by up to ~10 % on the same code (bench/README.md, "Fast paths"), and one
# process per side makes a run's ratio that process's luck. With N copies each round measures
# another copy, so the median over rounds spans processes.
COPIED = ("router-2w", report.MINIMAL_REFERENCE)


def start_all(
    run: Path, quick: bool, only: set[str] | None, gap_ms: float, processes: int = 1
) -> tuple[list[Server], list[Target]]:
    up_port, h2_port = free_port(), free_port()
    upstream = start_upstream(run, up_port, gap_ms, h2_port)
    base = f"http://127.0.0.1:{up_port}"

    targets: list[Target] = []

    def add(t: Target, start: Callable[[Target], None]) -> None:
        if only and t.name not in only:
            return
        try:
            start(t)
            if processes > 1 and t.name in COPIED:
                t.copies = [(t.port, t.server)]
                for i in range(1, processes):
                    copy = Target(f"{t.name}.{i}", t.group, t.label, scenarios=t.scenarios)
                    start(copy)
                    t.copies.append((copy.port, copy.server))
        except Exception as e:  # a peer that does not install or start is recorded, not fatal
            t.status = f"not measured: {e}"
            print(f"bench: {t.name}: {t.status}", file=sys.stderr)
        targets.append(t)

    def direct(t: Target) -> None:
        t.port = up_port

    def nginx_proxy(t: Target) -> None:
        t.port = free_port()
        c = (BENCH / "nginx" / "proxy.conf").read_text()
        c = (
            c.replace("@RUN@", str(run))
            .replace("@PORT@", str(t.port))
            .replace("@UPSTREAM_PORT@", str(up_port))
        )
        (run / "proxy.conf").write_text(c)
        t.server = spawn(
            t.name, ["nginx", "-p", str(run), "-c", str(run / "proxy.conf")], t.port, run
        )

    off = {"API_ROUTER_METRICS": "false", "API_ROUTER_ACCESS_LOG": "false"}
    add(Target("direct", "main", "direct to upstream"), direct)
    add(Target("nginx", "main", "nginx reverse proxy"), nginx_proxy)
    add(
        Target("router-1w", "main", "api-router 1 worker, all on"),
        lambda t: start_router(t, 1, up_port, run, {}),
    )
    add(
        Target("router-2w", "main", "api-router 2 workers, all on"),
        lambda t: start_router(t, 2, up_port, run, {}),
    )
    add(
        Target("router-2w-off", "main", "api-router 2 workers, metrics+logs off"),
        lambda t: start_router(t, 2, up_port, run, off),
    )
    if not quick:
        add(
            Target("litellm", "main", "LiteLLM proxy (2 workers)"),
            lambda t: start_litellm(t, up_port, run),
        )
        add(
            Target("portkey", "main", "Portkey gateway (node)"),
            lambda t: start_portkey(t, up_port, run),
        )
    # The same router on a routing file of 50 routes (issue 16): JSON, and a failed-over request.
    add(
        Target("router-2w-routing", "transport", "api-router 2w, routing file (50 routes)"),
        lambda t: start_router(t, 2, up_port, run, {}, routing_file(up_port, run)),
    )
    # The same router with tracing on (issue 18), exporting to a sink that decodes nothing
    # (bench/otlp_sink.py): every request sampled, and 1 % of them. JSON only.
    tracing = [n for n, _, _ in TRACING if not only or n in only]
    if tracing:
        sink_port = free_port()
        sink = spawn(
            SINK,
            [sys.executable, str(BENCH / "otlp_sink.py"), str(sink_port), str(run / SINK)],
            sink_port,
            run,
        )
        upstream.append(sink)  # stopped after the routers, which export what they hold
        for name, label, sampler in TRACING:
            env = {
                "API_ROUTER_TRACING": "true",
                "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{sink_port}/{name}",
                "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
                **sampler,
            }
            add(
                Target(name, "transport", label, scenarios=("json1", "json64")),
                lambda t, e=env: start_router(t, 2, up_port, run, e),
            )
    # The upstream engines side by side (issue 15), each in every router scenario; the default
    # `h1` is router-2w above.
    for name, label, port, env in (
        ("aiohttp", "api-router 2w, aiohttp engine", up_port, {}),
        ("httpx", "api-router 2w, httpx's own engine", up_port, {}),
        ("pyreqwest", "api-router 2w, pyreqwest engine (HTTP/1.1)", up_port, {}),
        (
            "pyreqwest-h2",
            "api-router 2w, pyreqwest engine, HTTP/2 (h2c)",
            h2_port,
            {"API_ROUTER_UPSTREAM_HTTP2": "prior-knowledge"},
        ),
    ):
        engine = {"API_ROUTER_UPSTREAM_TRANSPORT": name.split("-")[0], **env}
        add(
            Target(f"router-2w-{name}", "transport", label),
            lambda t, p=port, e=engine: start_router(t, 2, p, run, e),
        )
    for client in ("httpx", "httpx-aiohttp", "httpx-h1", "httpx-h1-direct", "aiohttp", "none"):

        def minimal(t: Target, client: str = client) -> None:
            start_minimal(t, client, base, run)

        name = f"minimal-{client}"
        # The reference also relays the SSE burst (its Python reference), and Sanic alone
        # answers it (the floor); the others JSON only.
        burst = name in (report.MINIMAL_REFERENCE, report.SANIC_ALONE)
        scenarios = ("json1", "json64", "sse64") if burst else None
        label = "Sanic alone, answers from memory" if client == "none" else client
        add(
            Target(name, "transport", f"minimal Sanic proxy, {label}", scenarios=scenarios), minimal
        )
    return upstream, targets


# The router (2 workers, all on) with tracing on (issue 18): name, label, sampler.
TRACING = (
    (
        "router-2w-trace100",
        "api-router 2w, tracing on, 100 % sampled",
        {"OTEL_TRACES_SAMPLER": "parentbased_always_on"},
    ),
    (
        "router-2w-trace1",
        "api-router 2w, tracing on, 1 % sampled",
        {"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.01"},
    ),
)
SINK = "otlp-sink"


def sink_counts(
    run: Path, targets: list[Target], runs: list[dict[str, Any]], checked: dict[str, int]
) -> dict[str, Any] | None:
    """What the OTLP sink received per tracing configuration (read after it stopped), beside
    the requests that configuration answered (wrk's completed requests plus the checks; a
    request wrk left in flight at the end of a run is answered but not counted), and the lines
    its router wrote to stderr (export errors would be there or in its log on stdout, which the
    benchmark discards)."""
    names = [t.name for t in targets if t.name in {n for n, _, _ in TRACING}]
    if not names:
        return None
    path = run / SINK / "counts.json"
    counts = json.loads(path.read_text()) if path.exists() else {}
    out: dict[str, Any] = {"configs": {}}
    for name, _, sampler in TRACING:
        if name not in names:
            continue
        served = checked.get(name, 0) + sum(r["requests"] for r in runs if r["config"] == name)
        got = counts.get(name, {})
        err = run / f"{name}.stderr"
        lines = err.read_text(errors="replace").splitlines() if err.exists() else []
        out["configs"][name] = {
            "sampler": sampler,
            "requests_answered": served,
            **got,
            "spans_per_request": round(got["spans"] / served, 4) if got and served else None,
            "stderr_lines": len(lines),
            "stderr_tail": lines[-20:],
        }
    return out


# --- measuring ---------------------------------------------------------------------------------

SCENARIOS: dict[str, dict[str, Any]] = {
    "json1": {"connections": 1, "threads": 1, "title": "JSON, 1 connection"},
    # Under the routing file: the first target answers 503 twice, the second answers (issue 16).
    "failover1": {"connections": 1, "threads": 1, "title": "JSON failed over, 1 connection"},
    "json64": {"connections": 64, "threads": 2, "title": "JSON, 64 connections"},
    # The same upstream answer reached through the Responses API translated to Chat Completions:
    # the translation's cost next to json64 (issue 13).
    "responses64": {
        "connections": 64,
        "threads": 2,
        "title": "Responses API translated to Chat Completions (JSON), 64 connections",
    },
    # SSE burst: the whole 22-event stream at once (raw relay CPU per stream).
    "sse64": {"connections": 64, "threads": 2, "title": "SSE burst, 64 connections"},
    # SSE paced: one event every --sse-gap-ms, as a model streams (the SSE target is judged here).
    "ssepaced": {"connections": 64, "threads": 2, "title": "SSE paced, 64 connections"},
    "body1mb": {"connections": 8, "threads": 2, "title": "1 MB request body, 8 connections"},
    "limited64": {"connections": 64, "threads": 2, "title": "rate-limited (429), 64 connections"},
}


def check(t: Target, scenario: str, bodies: dict[str, Path]) -> str | None:
    """One request before measuring: None when the answer is what the scenario expects."""
    path, body, headers = t.request(scenario, bodies)
    try:
        conn = http.client.HTTPConnection("127.0.0.1", t.port, timeout=30)
        conn.request(
            "POST",
            path,
            body=body.read_bytes(),
            headers={"Content-Type": "application/json", **headers},
        )
        resp = conn.getresponse()
        data = resp.read()
        conn.close()
    except OSError as e:
        return f"{e.__class__.__name__}: {e}"
    if scenario == "limited64":
        return None if resp.status in (200, 429) else f"HTTP {resp.status}"
    if resp.status != 200:
        return f"HTTP {resp.status}: {data[:200]!r}"
    if scenario == "responses64" and b'"object":"response"' not in data:
        return f"not a Responses answer: {data[:200]!r}"
    if scenario in ("sse64", "ssepaced") and not data.rstrip().endswith(b"data: [DONE]"):
        return f"not a whole event stream: {data[:200]!r}...{data[-100:]!r}"
    return None


def wrk(
    t: Target,
    scenario: str,
    bodies: dict[str, Path],
    duration: float,
    extra_env: dict[str, str] | None = None,
    connections: int | None = None,
) -> dict[str, Any]:
    sc = SCENARIOS[scenario]
    path, body, headers = t.request(scenario, bodies)
    env = {
        **os.environ,
        "BENCH_BODY": str(body),
        "BENCH_HEADERS": "\n".join(f"{k}: {v}" for k, v in headers.items()),
        **(extra_env or {}),
    }
    if scenario == "limited64":
        env["BENCH_COUNT_429"] = "1"
    argv = [
        "wrk",
        "-t",
        str(sc["threads"]),
        "-c",
        str(connections or sc["connections"]),
        "-d",
        f"{max(1, round(duration))}s",
        "--timeout",
        "10s",
        "-s",
        str(BENCH / "wrk" / "post.lua"),
        f"http://127.0.0.1:{t.port}{path}",
    ]
    out = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=duration + 60)
    for line in out.stdout.splitlines():
        if line.startswith("BENCH_RESULT "):
            r: dict[str, Any] = json.loads(line.split(" ", 1)[1])
            secs = r["duration_us"] / 1e6
            socket_errors = r["connect"] + r["read"] + r["write"] + r["timeout"]
            if scenario == "limited64":
                ok = r["n429"]
                errors = socket_errors + max(0, r["status"] - r["n429"] - 1)
            else:
                ok = r["requests"] - r["status"]
                errors = socket_errors + r["status"]
            r.update(rps=r["requests"] / secs, ok_rps=ok / secs, errors=errors)
            return r
    raise RuntimeError(f"wrk printed no result: {out.stdout[-500:]} {out.stderr[-500:]}")


# Paced SSE capacity (issue 20): the paced stream at growing numbers of streams at once, for these
# configurations; `make bench` runs it after the scenario rounds (report.capacity_rows).
CAPACITY_CONFIGS = ("direct", "nginx", "router-2w")
DEFAULT_CAPACITY = "256,1024,2048"


def capacity(
    targets: list[Target], bodies: dict[str, Path], conns: list[int], rounds: int, secs: float
) -> list[dict[str, Any]]:
    """One wrk run of the paced stream per configuration, connection count and round (the
    order rotated from round to round); each run's result with its `connections`."""
    ts = [t for t in targets if t.name in CAPACITY_CONFIGS and t.status == "ok"]
    runs: list[dict[str, Any]] = []
    for rnd in range(rounds):
        for n in conns:
            for t in ts[rnd % len(ts) :] + ts[: rnd % len(ts)] if ts else []:
                r = wrk(t, "ssepaced", bodies, secs, connections=n)
                runs.append({"round": rnd, "config": t.name, "connections": n, **r})
                print(
                    f"bench: capacity round {rnd + 1} {t.name:10} {n:5} conn "
                    f"{r['ok_rps']:7.0f} streams/s p50 {r['p50_us'] / 1000:7.1f} ms "
                    f"p99 {r['p99_us'] / 1000:7.1f} ms errors {r['errors']}",
                    file=sys.stderr,
                )
    return runs


def ttfb(t: Target, bodies: dict[str, Path], count: int, limit_secs: float) -> dict[str, Any]:
    """Time to the first byte of the first event, one stream at a time on a kept-alive connection
    (bounded by `count` streams and `limit_secs`)."""
    path, body_file, headers = t.request("sse64", bodies)
    body = body_file.read_bytes()
    conn = http.client.HTTPConnection("127.0.0.1", t.port, timeout=30)
    samples: list[float] = []
    errors = 0
    last_error = None
    deadline = time.monotonic() + limit_secs
    try:
        while len(samples) < count and time.monotonic() < deadline:
            try:
                started = time.perf_counter()
                conn.request(
                    "POST", path, body=body, headers={"Content-Type": "application/json", **headers}
                )
                resp = conn.getresponse()
                first = resp.read1(65536) if resp.status == 200 else b""
                got = time.perf_counter()
                rest = resp.read()
            except (OSError, http.client.HTTPException) as e:
                # A kept-alive connection the server closed between two streams: not a sample.
                errors += 1
                last_error = f"{e.__class__.__name__}: {e}"
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", t.port, timeout=30)
                continue
            if resp.status != 200 or not (first + rest).rstrip().endswith(b"[DONE]"):
                errors += 1
                last_error = f"HTTP {resp.status}: {(first + rest)[-120:]!r}"
                continue
            samples.append((got - started) * 1e6)
    finally:
        conn.close()
    samples.sort()
    if not samples:
        return {"count": 0, "errors": errors, "last_error": last_error}
    return {
        "count": len(samples),
        "errors": errors,
        "last_error": last_error,
        "p50_us": samples[len(samples) // 2],
        "p99_us": samples[min(len(samples) - 1, int(len(samples) * 0.99))],
    }


def soak(t: Target, bodies: dict[str, Path], max_rps: float, secs: float) -> dict[str, Any]:
    """wrk paced to about half of `max_rps` for `secs`; RSS of every worker sampled meanwhile."""
    assert t.server is not None
    conns = 64
    delay_ms = max(1, round(1000 * conns / (max_rps / 2)))
    pids = worker_pids(t.server.proc.pid, t.port)
    result: dict[str, Any] = {
        "seconds": secs,
        "delay_ms": delay_ms,
        "target_rps": max_rps / 2,
        "samples": [],
    }
    holder: dict[str, Any] = {}

    import threading

    def go() -> None:
        holder["r"] = wrk(t, "json64", bodies, secs, {"BENCH_DELAY_MS": str(delay_ms)}, conns)

    th = threading.Thread(target=go)
    th.start()
    start = time.monotonic()
    time.sleep(min(30.0, secs / 10))  # warmed up: the first sample is the baseline
    while th.is_alive():
        result["samples"].append(
            {"t": round(time.monotonic() - start, 1), "rss_mb": {str(p): rss_mb(p) for p in pids}}
        )
        th.join(timeout=max(1.0, secs / 20))
    result["samples"].append(
        {"t": round(time.monotonic() - start, 1), "rss_mb": {str(p): rss_mb(p) for p in pids}}
    )
    r = holder.get("r", {})
    result.update(achieved_rps=r.get("rps"), errors=r.get("errors"))
    first, last = result["samples"][0]["rss_mb"], result["samples"][-1]["rss_mb"]
    result["growth_pct"] = {
        p: round(100 * (last[p] - first[p]) / first[p], 2)
        for p in first
        if first[p] and last.get(p)
    }
    return result


def machine() -> dict[str, Any]:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = 0
    with contextlib.suppress(OSError):
        mem = int(Path("/proc/meminfo").read_text().split()[1]) // 1024

    def version(argv: list[str]) -> str:
        try:
            p = subprocess.run(argv, capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired):
            return "absent"
        return (p.stdout + p.stderr).strip().splitlines()[0] if (p.stdout + p.stderr) else "?"

    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_mb": mem,
        "kernel": platform.release(),
        "os": version(["sh", "-c", ". /etc/os-release; echo $PRETTY_NAME"]),
        "python": version([str(ROUTER_PY), "--version"]),
        "wrk": version(["wrk", "--version"]).split(" Copyright")[0],
        "nginx": version(["nginx", "-v"]),
        "node": version(["node", "--version"]),
        "litellm": version(
            [
                str(BENCH_VENV / "bin" / "python"),
                "-c",
                "import importlib.metadata as m; print(m.version('litellm'))",
            ]
        ),
        "portkey": version(
            ["node", "-p", f"require('{PORTKEY_SERVER.parent.parent}/package.json').version"]
        ),
        "packages": version(
            [
                str(ROUTER_PY),
                "-c",
                "import importlib.metadata as m; print(', '.join("
                "f'{p} {m.version(p)}' for p in ('sanic','httpx','httpcore','aiohttp',"
                "'httpx-aiohttp','uvloop','pyreqwest')))",
            ]
        ),
    }


def loadavg() -> list[float]:
    return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]


@contextlib.contextmanager
def scratch(quick: bool) -> Iterator[Path]:
    CACHE.mkdir(exist_ok=True)
    run = Path(tempfile.mkdtemp(prefix="bench-run-", dir=CACHE))
    try:
        yield run
    finally:
        if not os.environ.get("BENCH_KEEP"):
            shutil.rmtree(run, ignore_errors=True)


# The routing file's cost (issue 16) is the ratio of two configurations a few percent apart. In
# the interleaved rounds the two runs are minutes apart, and one 5 s run swings by 10 % on a
# two-core machine, so the ratio is also measured in adjacent pairs: the single-profile router
# and the routing-file router, one run each, seconds apart, the order alternating from pair to
# pair (bench/README.md, "Routing file").
ROUTING_PAIRS = 6
SINGLE, ROUTED = "router-2w", "router-2w-routing"


def routing_pairs(
    targets: list[Target], bodies: dict[str, Path], pairs: int, secs: float
) -> list[dict[str, Any]]:
    """JSON at 64 connections on the single-profile router and the routing-file router, run
    back to back `pairs` times; each pair's requests/s (answered) and errors."""
    by_name = {t.name: t for t in targets if t.status == "ok"}
    if SINGLE not in by_name or ROUTED not in by_name:
        return []
    out = []
    for i in range(pairs):
        order = [SINGLE, ROUTED] if i % 2 == 0 else [ROUTED, SINGLE]
        got = {name: wrk(by_name[name], "json64", bodies, secs) for name in order}
        out.append(
            {
                "pair": i,
                "first": order[0],
                "single_rps": got[SINGLE]["ok_rps"],
                "routing_rps": got[ROUTED]["ok_rps"],
                "errors": got[SINGLE]["errors"] + got[ROUTED]["errors"],
            }
        )
        print(
            f"bench: routing pair {i + 1} single {got[SINGLE]['ok_rps']:8.0f} req/s, routing "
            f"file {got[ROUTED]['ok_rps']:8.0f} req/s",
            file=sys.stderr,
        )
    return out


def main() -> None:
    p = argparse.ArgumentParser(description="api-router benchmark (see bench/README.md)")
    p.add_argument("--quick", action="store_true", help="smoke run: short, no peers, no long soak")
    p.add_argument("--rounds", type=int)
    p.add_argument("--duration", type=float, help="seconds per wrk run")
    p.add_argument("--soak", type=float, help="seconds of the half-load soak (0: none)")
    p.add_argument("--only", help="comma-separated configuration names")
    p.add_argument(
        "--sse-gap-ms",
        type=float,
        default=DEFAULT_SSE_GAP_MS,
        help="ms between two events of the paced SSE stream (default 10: 100 tokens/s)",
    )
    p.add_argument(
        "--processes",
        type=int,
        default=1,
        help=f"start {' and '.join(COPIED)} this many times each; round r measures copy "
        "r mod N (default 1)",
    )
    p.add_argument("--out", type=Path, help="results directory")
    p.add_argument(
        "--capacity",
        help="paced SSE at these numbers of streams at once, comma-separated (default "
        f"{DEFAULT_CAPACITY}; none with --quick; '' for none)",
    )
    a = p.parse_args()
    processes = max(1, a.processes)
    rounds = a.rounds or (1 if a.quick else 3)
    duration = a.duration or (2.0 if a.quick else 5.0)
    soak_secs = a.soak if a.soak is not None else (10.0 if a.quick else 600.0)
    out_dir = a.out or (BENCH / "results" / ("tmp" if a.quick else ""))
    only = set(a.only.split(",")) | {"direct", "nginx"} if a.only else None
    cap_arg = a.capacity if a.capacity is not None else ("" if a.quick else DEFAULT_CAPACITY)
    cap_conns = [int(c) for c in cap_arg.split(",") if c.strip()]

    meta: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d"),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "quick": a.quick,
        "rounds": rounds,
        "duration_secs": duration,
        "processes": processes,
        "machine": machine(),
        "loadavg_before": loadavg(),
        "events_per_stream": EVENTS_PER_STREAM,
        "sse_gap_ms": a.sse_gap_ms,
        "conditions": os.environ.get("BENCH_CONDITIONS", ""),
    }
    runs: list[dict[str, Any]] = []
    with scratch(a.quick) as run:
        bodies = write_bodies(run)
        SCENARIOS["ssepaced"]["title"] = (
            f"SSE paced ({a.sse_gap_ms:g} ms per event), 64 connections"
        )
        upstreams, targets = start_all(run, a.quick, only, a.sse_gap_ms, processes)
        try:
            plan: list[tuple[Target, str]] = []
            checked: dict[str, int] = {}
            for t in targets:
                if t.status != "ok":
                    continue
                for sc in SCENARIOS:
                    if not t.supports(sc):
                        continue
                    problem = check(t, sc, bodies)
                    checked[t.name] = checked.get(t.name, 0) + 1
                    if problem:
                        t.status = f"{sc}: {problem}"
                        print(f"bench: {t.name} {sc}: {problem}", file=sys.stderr)
                        continue
                    plan.append((t, sc))
            total = (
                rounds * (len(plan) * duration + 8 * len(targets))
                + ROUTING_PAIRS * 2 * duration
                + soak_secs
                + rounds * len(cap_conns) * len(CAPACITY_CONFIGS) * (duration + 2)
            )
            print(
                f"bench: {len(plan)} runs x {rounds} rounds, about {total / 60:.0f} min",
                file=sys.stderr,
            )
            for rnd in range(rounds):
                for t in targets:
                    t.use(rnd)  # (--processes: this round's copy)
                # Interleaved: every configuration once per round, the order rotated each round.
                order = plan[rnd % len(plan) :] + plan[: rnd % len(plan)] if plan else []
                for t, sc in order:
                    r = wrk(t, sc, bodies, duration)
                    if t.sanic and t.server is not None:  # RSS after each scenario, per worker
                        pids = worker_pids(t.server.proc.pid, t.port)
                        r["rss_mb"] = [rss_mb(pid) for pid in pids]
                    runs.append({"round": rnd, "config": t.name, "scenario": sc, **r})
                    print(
                        f"bench: round {rnd + 1} {t.name:20} {sc:10} {r['rps']:9.0f} req/s "
                        f"p50 {r['p50_us']:6d} us p99 {r['p99_us']:6d} us errors {r['errors']}",
                        file=sys.stderr,
                    )
                for t in targets:
                    if t.status == "ok" and t.supports("ttfb"):
                        r = ttfb(t, bodies, count=200, limit_secs=10)
                        runs.append({"round": rnd, "config": t.name, "scenario": "ttfb", **r})
            pairs = routing_pairs(targets, bodies, 1 if a.quick else ROUTING_PAIRS, duration)
            rss = {
                t.name: {str(pid): rss_mb(pid) for pid in worker_pids(t.server.proc.pid, t.port)}
                for t in targets
                if t.sanic and t.server is not None
            }
            soak_result = None
            router = next((t for t in targets if t.name == "router-2w" and t.status == "ok"), None)
            if soak_secs > 0 and router is not None:
                best = [
                    r["rps"]
                    for r in runs
                    if r["config"] == "router-2w" and r["scenario"] == "json64"
                ]
                soak_result = soak(router, bodies, statistics.median(best), soak_secs)
            # Last: thousands of open streams grow a worker's RSS (~33 KB each, bench/README.md),
            # which the RSS target above is not about.
            cap_runs = capacity(targets, bodies, cap_conns, rounds, duration) if cap_conns else []
        finally:
            for t in targets:
                for server in t.servers():
                    server.stop()
            for u in upstreams:
                u.stop()
        tracing = sink_counts(run, targets, runs, checked)
    meta["loadavg_after"] = loadavg()
    meta["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    results = {
        "meta": meta,
        "configs": {
            t.name: {"label": t.label, "group": t.group, "status": t.status} for t in targets
        },
        "scenarios": {k: v["title"] for k, v in SCENARIOS.items()},
        "runs": runs,
        "rss_mb": rss,
        "soak": soak_result,
        "capacity": cap_runs,
        "routing_pairs": pairs,
    }
    if tracing is not None:
        results["tracing"] = tracing
    paths = report.write(results, out_dir)
    for path in paths:
        print(f"bench: wrote {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
