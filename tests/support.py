"""Running the real router as a subprocess (the real CLI, real Sanic workers) on loopback."""

from __future__ import annotations

import contextlib
import json
import os
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.config.loader import SHIPPED_DIR
from service.ratelimit.shared import flocked
from tests.fakes.upstream import Reply, openai_chat_stream

ROOT = Path(__file__).resolve().parent.parent
# For a test that runs pytest itself on a small suite of its own (tests/unit/test_lost_tests.py,
# test_order_plugin.py): no plugin is loaded from the venv's entry points but xdist. The others
# (schemathesis and what it imports above all) took about 2.3 s of each such run's 2.6 s.
NO_AUTOLOAD = {"PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"}
ONLY_XDIST = ("-p", "xdist.plugin")


@contextlib.contextmanager
def machine_lock(name: str) -> Iterator[None]:
    """Held by one test process of this checkout at a time (`make test` runs two, pytest-xdist):
    for what two at once would break, e.g. building one image tag, or pods of one fixed name.
    (A lock file in .cache: two checkouts tested at once on one machine still share podman's
    images and pod names, as they always did.)"""
    path = ROOT / ".cache" / "test-locks" / f"{name}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f, flocked(f.fileno()):
        yield


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_profile(directory: Path, profile: dict[str, Any], name: str = "test") -> Path:
    path = directory / f"{name}.json"
    path.write_text(json.dumps(profile))
    return path


def shipped_profile(name: str, base_url: str, read_secs: float = 10) -> dict[str, Any]:
    """Shipped profile `name` (service/config/profiles) with its baseUrl pointed at `base_url`."""
    profile: dict[str, Any] = json.loads((SHIPPED_DIR / f"{name}.json").read_text())
    profile.pop("$schema", None)
    profile["baseUrl"] = base_url
    profile["timeouts"] = {"connectSecs": 2, "readSecs": read_secs}
    return profile


QUIET_LEVELS = ("warning", "error", "critical")


class RouterProcess:
    """`python -m service --config FILE --host 127.0.0.1 --workers N PORT`, logs captured."""

    def __init__(
        self,
        profile_path: Path,
        *,
        workers: int = 1,
        env: dict[str, str] | None = None,
        args: list[str] | None = None,
        nofile: tuple[int, int] | None = None,
    ) -> None:
        self.port = free_port()
        self.nofile = nofile  # the process's RLIMIT_NOFILE (soft, hard) at launch
        self.profile_path = profile_path
        self.workers = workers
        self._log = tempfile.NamedTemporaryFile(prefix="router-", suffix=".log", delete=False)
        base = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("API_ROUTER_", "RATE_LIMIT_", "PROMETHEUS_"))
            and k not in ("DEFAULT_API_KEY", "LOG_FORMAT", "LOG_LEVEL", "SENTRY_DSN")
        }
        # The one setting a whole run may choose: `API_ROUTER_FAST_PATHS=0 pytest …` serves every
        # router with the libraries' own code paths (service.settings.FastPaths).
        if "API_ROUTER_FAST_PATHS" in os.environ:
            base["API_ROUTER_FAST_PATHS"] = os.environ["API_ROUTER_FAST_PATHS"]
        base.update({"LOG_FORMAT": "json", "PYTHONUNBUFFERED": "1"})
        base.update(env or {})
        self.env = base
        self.args = args or []
        self.proc: subprocess.Popen[bytes] | None = None
        self._metrics_dir: str | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def spawn(self) -> RouterProcess:
        """Launch the process and return at once (`start` also waits until it is ready)."""
        cmd = [
            sys.executable,
            "-m",
            "service",
            "--config",
            str(self.profile_path),
            "--host",
            "127.0.0.1",
            "--workers",
            str(self.workers),
            *self.args,
            str(self.port),
        ]
        # A session of its own: Sanic's manager answers a second signal with killpg() on its
        # workers' process group, which must not be the test runner's.
        nofile = self.nofile
        self._metrics_dir = None  # its workers' (found again: a new process may name another)

        def limits() -> None:
            if nofile is not None:
                resource.setrlimit(resource.RLIMIT_NOFILE, nofile)

        self.proc = subprocess.Popen(
            cmd,
            cwd=ROOT,
            env=self.env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=limits if nofile is not None else None,
        )
        return self

    def start(self, timeout: float = 20.0) -> RouterProcess:
        self.spawn()
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"router exited {self.proc.returncode}:\n{self.output()}")
            try:
                if httpx.get(self.url + "/ready", timeout=1).status_code == 200:
                    # every worker must be up before a test counts anything
                    if self._workers_ready() >= self.workers:
                        return self
            except httpx.HTTPError:
                pass
            time.sleep(0.02)  # (a test waits out half of it on average)
        self.stop()
        self._log.close()
        raise RuntimeError(f"router did not become ready:\n{self.output()}")

    def _workers_ready(self) -> int:
        if self.env.get("LOG_LEVEL", "info").lower() in QUIET_LEVELS:
            # Sanic's info line "Worker ready" is (rightly) not logged: /ready is the signal.
            return self.workers
        return self.output().count("Worker ready")

    def output(self) -> str:
        """Everything it wrote (its workers' records of answered requests included: `settle`)."""
        self.settle()
        return Path(self._log.name).read_text(errors="replace")

    def metrics_dir(self) -> str | None:
        """The multiprocess metrics directory its workers were started with (the CLI makes
        one when the environment names none)."""
        for pid in worker_pids(self):
            with contextlib.suppress(OSError):
                for item in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
                    if item.startswith(b"PROMETHEUS_MULTIPROC_DIR="):
                        return item.split(b"=", 1)[1].decode()
        return None

    def settle(self, timeout: float = 5.0) -> None:
        """Wait until no worker has records of finished requests still to write (the `batch`
        fast path writes a request's completion line and metrics at the end of the loop pass in
        which its answer went out: a test that reads the log right after an answer would race
        it). Its workers' flags say so (service.observability.completions)."""
        from service.observability.completions import raised_flags

        if self.proc is None or self.proc.poll() is not None:
            return
        if self._metrics_dir is None:
            self._metrics_dir = self.metrics_dir()
        if self._metrics_dir is None:
            return
        deadline = time.monotonic() + timeout
        while raised_flags(self._metrics_dir) and time.monotonic() < deadline:
            time.sleep(0.001)

    def logs(self) -> list[dict[str, Any]]:
        out = []
        for line in self.output().splitlines():
            line = line.strip()
            if line.startswith("{"):
                try:
                    out.append(json.loads(line))
                except ValueError:
                    pass
        return out

    def access_logs(self) -> list[dict[str, Any]]:
        return [r for r in self.logs() if r.get("event") == "request_completed"]

    def wait_for_log(self, predicate: Any, timeout: float = 5.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for rec in self.logs():
                if predicate(rec):
                    return rec
            time.sleep(0.05)
        raise AssertionError(f"no matching log line in:\n{self.output()[-4000:]}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                # The whole session (spawn() made it), so that no worker outlives its manager.
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        return self.proc.returncode

    def __enter__(self) -> RouterProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop the process (if it runs) and remove its log file."""
        self.stop()
        self._log.close()
        Path(self._log.name).unlink(missing_ok=True)


class RouterFactory:
    """Makes routers for a test (the `router_factory` fixture) or a module
    (`module_router_factory`): `make(profile, env=..., workers=...)` writes the profile dict to a
    fresh directory (a Path is used as it is), starts `python -m service` on it and returns the
    ready RouterProcess; every router it made is stopped by `close()`, at the fixture's teardown.
    `start=False` returns it unstarted, for a test that starts it itself."""

    def __init__(self, tmp: pytest.TempPathFactory) -> None:
        self._tmp = tmp
        self._made: list[RouterProcess] = []

    def __call__(
        self,
        profile: dict[str, Any] | Path,
        *,
        env: dict[str, str] | None = None,
        workers: int = 1,
        args: list[str] | None = None,
        name: str = "test",
        start: bool = True,
        nofile: tuple[int, int] | None = None,
    ) -> RouterProcess:
        if isinstance(profile, Path):
            path = profile
        else:
            path = write_profile(self._tmp.mktemp("router"), profile, name)
        router = RouterProcess(path, workers=workers, env=env, args=args, nofile=nofile)
        self._made.append(router)  # before start(): a router that fails to start is closed too
        return router.start() if start else router

    def close(self) -> None:
        while self._made:
            self._made.pop().close()

    def __enter__(self) -> RouterFactory:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- a slow stream and its client, for drain / shutdown tests --------------------------------
SSE = [("Content-Type", "text/event-stream"), ("Cache-Control", "no-cache")]


def slow_stream(pieces: int, gap: float) -> Reply:
    events = openai_chat_stream("up-model-4", tuple(f"p{i} " for i in range(pieces)))
    return Reply(headers=SSE, chunks=[(gap, e.encode()) for e in events])


class StreamReader(threading.Thread):
    """Reads one streaming chat completion in the background, keeping every SSE data line."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.first = threading.Event()
        self.lines: list[str] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        body = {"model": "gpt-4", "stream": True, "messages": [{"role": "user", "content": "x"}]}
        try:
            with (
                httpx.Client(timeout=30) as c,
                c.stream("POST", self.url + "/v1/chat/completions", json=body) as r,
            ):
                r.raise_for_status()
                for line in r.iter_lines():
                    if line.startswith("data: "):
                        self.lines.append(line[6:])
                        self.first.set()
        except BaseException as e:  # reported by the test
            self.error = e
            self.first.set()

    def content(self) -> str:
        out = []
        for data in self.lines:
            if data != "[DONE]":
                for choice in json.loads(data)["choices"]:
                    out.append(choice["delta"].get("content") or "")
        return "".join(out)


def worker_pids(router: RouterProcess) -> list[int]:
    """The router's Sanic worker processes: its children spawned with SANIC_WORKER_NAME."""
    assert router.proc is not None
    pid = router.proc.pid
    found = []
    for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
        with contextlib.suppress(OSError):
            if b"\0SANIC_WORKER_NAME=" in b"\0" + Path(f"/proc/{child}/environ").read_bytes():
                found.append(int(child))
    return found


def status_kib(pid: int, field: str) -> int:
    """A memory figure of /proc/PID/status in KiB (`VmRSS`, `VmHWM`: the peak)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/{pid}/status")
