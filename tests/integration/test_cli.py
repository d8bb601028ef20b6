"""The CLI contract (SPEC §2): arguments over environment, exit status 2 with one clear line."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support import ROOT, free_port


def run_cli(
    *args: str, env: dict[str, str] | None = None, cwd: Path = ROOT, prefix: tuple[str, ...] = ()
) -> subprocess.CompletedProcess[str]:
    """The CLI run to its end (after `prefix`, a command that execs it)."""
    e = {k: v for k, v in os.environ.items() if not k.startswith("API_ROUTER_")}
    e.update(env or {})
    return subprocess.run(
        [*prefix, sys.executable, "-m", "service", *args],
        capture_output=True,
        text=True,
        env=e,
        cwd=cwd,
        timeout=30,
    )


@pytest.mark.parametrize(
    ("args", "env", "fragment"),
    [
        (["qwne"], {}, "unknown profile 'qwne'; available: anthropic, cohere, gemini, generic"),
        ([], {"API_ROUTER_PROFILE": "nope"}, "unknown profile 'nope'"),
        (["qwen", "70000"], {}, "invalid port 70000 (argument PORT): must be 1..65535"),
        (["qwen", "abc"], {}, "invalid port 'abc' (argument PORT): not an integer"),
        (["qwen"], {"API_ROUTER_PORT": "0"}, "invalid port 0 (API_ROUTER_PORT)"),
        (["qwen", "--workers", "0"], {}, "invalid worker count 0"),
        (["--config", "/nonexistent/p.json"], {}, "/nonexistent/p.json: file not found"),
        (["qwen"], {"LOG_LEVEL": "loud"}, "LOG_LEVEL='loud' must be debug, info, warning"),
        (
            ["qwen"],
            {"API_ROUTER_PORT_FILE": "/nonexistent/dir/port"},
            "API_ROUTER_PORT_FILE='/nonexistent/dir/port': No such file or directory",
        ),
        (
            ["qwen"],
            {"API_ROUTER_FORWARDED_HEADERS": "trust"},
            "API_ROUTER_FORWARDED_HEADERS='trust' must be one of replace, keep, drop",
        ),
        (["qwen", "--bogus"], {}, "unrecognized arguments: --bogus"),
        # A mistyped port beside --config was taken for a profile name and ignored: the router
        # served on the file's port.
        (
            ["--config", str(ROOT / "service/config/profiles/qwen.json"), "9OOO"],
            {},
            "'9OOO' is neither a port nor a profile (with --config",
        ),
        # An unusable metrics directory was a traceback and exit 1.
        (
            ["qwen"],
            {"PROMETHEUS_MULTIPROC_DIR": "/proc/nope/metrics"},
            "PROMETHEUS_MULTIPROC_DIR='/proc/nope/metrics': No such file or directory",
        ),
        # Checked before any worker starts (each worker failed on them, with a page of
        # traceback, and Sanic then killed the whole process group).
        (
            ["qwen"],
            {"API_ROUTER_UPSTREAM_TRANSPORT": "bogus"},
            "API_ROUTER_UPSTREAM_TRANSPORT='bogus' must be one of h1, aiohttp, httpx, pyreqwest",
        ),
        (["qwen"], {"SENTRY_DSN": "not-a-dsn"}, "SENTRY_DSN is not a valid Sentry DSN"),
        (
            ["qwen"],
            {"RATE_LIMIT_BACKEND": "redis://:pw-secret-9@127.0.0.1:6379/0?socket_timeout=zz"},
            "RATE_LIMIT_BACKEND: Invalid value for 'socket_timeout' in connection URL.",
        ),
        (
            ["qwen"],
            {"RATE_LIMIT_BACKEND": "redis://:pw-secret-9@127.0.0.1:6379/0?protocol=9"},
            "RATE_LIMIT_BACKEND: the URL's protocol must be 2 or 3",
        ),
        (
            ["qwen"],
            {"API_ROUTER_UPSTREAM_HTTP2": "1"},  # the default transport speaks HTTP/1.1 only
            "API_ROUTER_UPSTREAM_HTTP2 needs API_ROUTER_UPSTREAM_TRANSPORT=pyreqwest",
        ),
        (
            ["qwen"],
            {"API_ROUTER_UPSTREAM_TRANSPORT": "pyreqwest", "API_ROUTER_UPSTREAM_HTTP2": "maybe"},
            "API_ROUTER_UPSTREAM_HTTP2='maybe' must be one of off, on, prior-knowledge",
        ),
    ],
)
def test_bad_input_exits_2_with_one_line(
    args: list[str], env: dict[str, str], fragment: str
) -> None:
    r = run_cli(*args, env=env)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("api-router: error: ")
    assert fragment in lines[0]
    assert r.stdout == ""


def test_invalid_profile_file_names_file_and_path(tmp_path: Path) -> None:
    p = tmp_path / "broken.json"
    p.write_text(json.dumps({"name": "b", "baseUrl": "http://h", "rateLimit": {"burst": 0}}))
    r = run_cli("--config", str(p))
    assert r.returncode == 2
    assert f"{p}: $.rateLimit.burst: Input should be greater than or equal to 1" in r.stderr


def test_env_profile_and_port_are_used_and_args_win(tmp_path: Path) -> None:
    port = free_port()
    (tmp_path / "transformer").mkdir()
    (tmp_path / "transformer" / "mine.json").write_text(
        json.dumps({"name": "mine", "baseUrl": "http://127.0.0.1:9"})
    )
    env = {
        "API_ROUTER_PROFILE": "openai",  # the argument below wins
        "API_ROUTER_PORT": str(port),
        "API_ROUTER_HOST": "127.0.0.1",
        "API_ROUTER_WORKERS": "1",
        "API_ROUTER_PORT_FILE": str(tmp_path / "port"),
        "PYTHONPATH": str(ROOT),
    }
    with serving(["mine.json"], env, tmp_path, port) as health:
        assert health["profile"] == "mine"
        assert health["upstream"] == "http://127.0.0.1:9"
        assert (tmp_path / "port").read_text() == f"{port}\n"  # what the image's healthcheck reads


@contextlib.contextmanager
def serving(
    args: list[str], env: dict[str, str], cwd: Path, port: int, prefix: tuple[str, ...] = ()
) -> Iterator[dict[str, Any]]:
    """Run the CLI (after `prefix`, a command that execs it) until its /health answers and its
    worker is ready; yield /health's body; stop it with SIGTERM and expect exit 0."""
    with running([*prefix, sys.executable, "-m", "service", *args], env, cwd, port) as (_, health):
        yield health


@contextlib.contextmanager
def running(
    command: list[str], env: dict[str, str], cwd: Path, port: int
) -> Iterator[tuple[subprocess.Popen[bytes], dict[str, Any]]]:
    """`serving` for any command that serves the router: yields its process too."""
    e = {k: v for k, v in os.environ.items() if not k.startswith("API_ROUTER_")}
    e.update(env)
    log = cwd / "out.log"
    out = log.open("wb")
    proc = subprocess.Popen(command, cwd=cwd, env=e, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 20
        health = None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                health = httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).json()
                break
            except httpx.HTTPError:
                time.sleep(0.1)
        assert health is not None, f"router did not start: {log.read_text()}"
        while "Worker ready" not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.05)
        yield proc, health
    finally:
        proc.terminate()
        try:
            assert proc.wait(20) == 0
        finally:
            proc.kill()
            out.close()


def test_the_api_router_script_spawns_no_process_that_imports_what_it_does_not_use(
    tmp_path: Path,
) -> None:
    """The image's entrypoint is the `api-router` script, and each process Sanic spawns runs the
    parent's main script again first (service/__main__.py). Sanic's shared-state manager needs
    none of the CLI's modules (config models, Sanic, httpx…): it maps no pydantic-core (it did,
    with the CLI's imports in the script's module), while the worker, which validates the
    config, does."""
    port = free_port()
    script = Path(sys.executable).with_name("api-router")
    command = [str(script), "--config", str(ROOT / "service/config/profiles/openai.json")]
    command += ["--host", "127.0.0.1", "--workers", "1", str(port)]
    with running(command, {"OPENAI_API_KEY": "sk-test"}, tmp_path, port) as (proc, health):
        assert health["profile"] == "openai"
        spawned = {}
        for child in Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split():
            cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
            if b"spawn_main" in cmdline:  # (not multiprocessing's resource tracker)
                worker = (
                    b"\0SANIC_WORKER_NAME=" in b"\0" + Path(f"/proc/{child}/environ").read_bytes()
                )
                maps = Path(f"/proc/{child}/maps").read_text()
                spawned["worker" if worker else "manager"] = "_pydantic_core" in maps
    assert spawned == {"worker": True, "manager": False}


def test_a_port_in_use_or_a_foreign_host_exits_2_with_one_line() -> None:
    """Caught before any worker starts (it was a Sanic traceback and exit 1)."""
    import socket

    with socket.socket() as held:
        held.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        r = run_cli("qwen", str(port), "--host", "127.0.0.1")
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().splitlines() == [
        f"api-router: error: cannot listen on 127.0.0.1:{port}: Address already in use"
    ]
    for host, reasons in (
        # the resolver's words: without DNS "Temporary failure in name resolution"
        ("999.1.1.1", ("Name or service not known", "Temporary failure in name resolution")),
        ("192.0.2.1", ("Cannot assign requested address",)),  # TEST-NET-1: never this machine's
    ):
        r = run_cli("qwen", str(free_port()), "--host", host)
        assert r.returncode == 2, r.stderr
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(
            f"api-router: error: cannot listen on {host}:"
        )
        assert any(reason in lines[0] for reason in reasons), lines[0]


def test_a_sentry_dsn_without_sentry_sdk_exits_2_with_one_line(tmp_path: Path) -> None:
    """The image holds the redis and otel extras only: SENTRY_DSN there was accepted and
    nothing ever reached Sentry (each worker logged sentry_unavailable and served on). Like
    API_ROUTER_TRACING=true without the otel extra, it now stops the start. `sentry_sdk` is
    made unimportable by a package of that name first on PYTHONPATH."""
    shim = tmp_path / "sentry_sdk"
    shim.mkdir()
    (shim / "__init__.py").write_text("raise ImportError('No module named sentry_sdk (shim)')\n")
    path = os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")]))
    dsn = "https://public-key-9f3@sentry.example.com/42"
    r = run_cli("qwen", str(free_port()), env={"PYTHONPATH": path, "SENTRY_DSN": dsn})
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0] == (
        "api-router: error: SENTRY_DSN is set but sentry-sdk is not installed: "
        "pip install 'api-router[sentry]' (the image needs it built in; docs/deployment.md)"
    )
    assert "public-key-9f3" not in r.stderr
    assert r.stdout == ""


# The router's CLI with a /dev/shm of 16 MiB of its own (a private mount namespace: root here,
# as in CI). Podman and Kubernetes give a container 64 MiB unless told otherwise.
SMALL_SHM = (
    "unshare",
    "-m",
    "sh",
    "-c",
    'mount -t tmpfs -o size=16m tmpfs /dev/shm && exec "$@"',
    "sh",
)


def test_bucket_tables_larger_than_their_room_refuse_to_start() -> None:
    """The tables are sparse files: without the check the router started, and a worker was
    killed by SIGBUS once enough keys had written to pages the full tmpfs could not give."""
    r = run_cli("qwen", "--host", "127.0.0.1", prefix=SMALL_SHM)
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().splitlines() == [
        "api-router: error: RATE_LIMIT_MAX_BUCKETS=200000: the router's 2 bucket tables need "
        "33 MiB in /dev/shm, which has 16 MiB free; lower RATE_LIMIT_MAX_BUCKETS or give "
        "/dev/shm more room (podman run --shm-size, a Kubernetes emptyDir with medium Memory "
        "mounted at /dev/shm)"
    ]


def test_bucket_tables_that_fit_their_room_serve(tmp_path: Path) -> None:
    """The check refuses only what does not fit (the same 16 MiB /dev/shm)."""
    port = free_port()
    env = {
        "RATE_LIMIT_MAX_BUCKETS": "50000",  # two tables of 2.1 MiB
        "API_ROUTER_WORKERS": "1",
        "PYTHONPATH": str(ROOT),
    }
    args = ["qwen", str(port), "--host", "127.0.0.1"]
    with serving(args, env, tmp_path, port, SMALL_SHM) as health:
        assert health["status"] == "ok"
