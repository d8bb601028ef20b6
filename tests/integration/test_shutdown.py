"""Graceful shutdown of the real router process (SIGTERM), as Kubernetes and podman stop it.

On SIGTERM the router stops accepting connections, answers `/ready` with 503 to a request that
arrives while it drains, closes idle keep-alive connections at once, lets streams in flight finish
(up to API_ROUTER_DRAIN_SECS) and exits 0.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import base_profile
from tests.fakes.upstream import FakeUpstream, Reply
from tests.scrape import scrape, value
from tests.support import (
    SSE,
    RouterFactory,
    RouterProcess,
    StreamReader,
    slow_stream,
    worker_pids,
)


def http_get(sock: socket.socket, path: str) -> bytes:
    """One complete GET on a raw keep-alive connection; returns the response head."""
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
    return read_response(sock)


def read_response(sock: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        k, _, v = line.partition(b":")
        if k.strip().lower() == b"content-length":
            length = int(v)
    while len(rest) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        rest += chunk
    return head + b"\r\n\r\n" + rest


def refuses_connections(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return False
    except OSError:
        return True


def wait_until(pred: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def fake(upstream: FakeUpstream) -> Iterator[FakeUpstream]:
    """The fake upstream, left only when every connection the router opened to it has ended
    (a stream cut by the drain ends at the fake's next write), so none outlives the test."""
    opened = upstream.conn_opened
    yield upstream
    wait_until(
        lambda: len(upstream.conn_closed_at) >= upstream.conn_opened - opened,
        10,
        "the fake upstream's connections to end",
    )


def profile(upstream: FakeUpstream) -> dict[str, Any]:
    return base_profile(upstream.url, timeouts={"readSecs": 30})


def drained_whole(stream: StreamReader, router: RouterProcess) -> None:
    """The stream of `slow_stream(12, …)` ended whole, then the router exited 0."""
    stream.join(20)
    assert not stream.is_alive()
    assert stream.error is None, stream.error
    assert stream.lines[-1] == "[DONE]"
    assert stream.content() == "".join(f"p{i} " for i in range(12))
    assert router.proc is not None
    assert router.proc.wait(20) == 0, router.output()[-3000:]


def test_sigterm_drains_in_flight_stream_and_exits_zero(
    fake: FakeUpstream, router_factory: RouterFactory
) -> None:
    # 12 pieces, 0.4 s apart: the stream is still running well after the signal.
    fake.reply_with(slow_stream(12, 0.4))
    router = router_factory(profile(fake), workers=1)
    idle = socket.create_connection(("127.0.0.1", router.port), timeout=10)
    assert b" 200 " in http_get(idle, "/health").split(b"\r\n")[0]
    # A request whose head is still arriving when the signal comes: it is served while
    # the router drains, so it shows what /ready answers then.
    late = socket.create_connection(("127.0.0.1", router.port), timeout=10)
    late.sendall(b"GET /ready HTTP/1.1\r\nHost: t\r\n")

    stream = StreamReader(router.url)
    stream.start()
    assert stream.first.wait(10) and stream.error is None, stream.error

    assert router.proc is not None
    router.proc.send_signal(signal.SIGTERM)

    # Stops accepting new connections while the stream is still in flight.
    wait_until(lambda: refuses_connections(router.port), 5, "the listener to close")
    assert stream.is_alive(), "the stream ended before the listener closed"
    # The idle keep-alive connection is closed by the router (EOF), not left to time out.
    idle.settimeout(5)
    assert idle.recv(1024) == b""
    # /ready answers 503 (draining) and the connection is then closed.
    late.sendall(b"\r\n")
    late.settimeout(5)
    head = read_response(late)
    assert head.startswith(b"HTTP/1.1 503"), head
    assert b"draining" in head
    assert b"connection: close" in head.lower()
    assert stream.is_alive(), "the stream ended before the drain was observed"

    drained_whole(stream, router)
    idle.close()
    late.close()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_to_the_process_group_drains_too(
    fake: FakeUpstream, router_factory: RouterFactory, sig: signal.Signals
) -> None:
    """A service manager that signals the whole group (systemd's default KillMode; Ctrl-C in a
    terminal) reaches each worker twice: directly and through the main process. The second
    signal stopped the worker's event loop in the middle of its drain (or, once Sanic had
    removed its handler, ended the worker at once): the stream was cut, yet the router exited
    0."""
    fake.reply_with(slow_stream(12, 0.25))
    router = router_factory(profile(fake), workers=2)
    assert router.proc is not None
    stream = StreamReader(router.url)
    stream.start()
    assert stream.first.wait(10) and stream.error is None, stream.error
    os.killpg(router.proc.pid, sig)
    drained_whole(stream, router)
    assert "Event loop stopped before Future completed" not in router.output()


def test_keep_alive_connection_of_a_drained_stream_is_closed(
    fake: FakeUpstream, router_factory: RouterFactory
) -> None:
    """A client whose stream started before the signal gets its whole stream, then the router
    closes that connection instead of keeping it alive until the drain time runs out."""
    fake.reply_with(slow_stream(4, 0.4))
    router = router_factory(profile(fake), env={"API_ROUTER_DRAIN_SECS": "60"})
    body = json.dumps(
        {"model": "gpt-4", "stream": True, "messages": [{"role": "user", "content": "x"}]}
    ).encode()
    sock = socket.create_connection(("127.0.0.1", router.port), timeout=10)
    sock.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
    )
    data = sock.recv(65536)
    assert data.startswith(b"HTTP/1.1 200"), data
    assert router.proc is not None
    router.proc.send_signal(signal.SIGTERM)
    wait_until(lambda: refuses_connections(router.port), 5, "the listener to close")
    while not data.endswith(b"0\r\n\r\n"):
        chunk = sock.recv(65536)
        assert chunk, "connection closed before the stream ended"
        data += chunk
    assert b"data: [DONE]" in data
    # Then EOF: the drained connection is closed, and the process exits well before the
    # 60 s drain time would have let a kept-alive connection linger.
    sock.settimeout(10)
    assert sock.recv(1024) == b""
    assert router.proc.wait(10) == 0, router.output()[-3000:]
    sock.close()


@pytest.mark.parametrize("drain_secs", ["1", "3"])
def test_drain_time_bounds_a_stream_that_does_not_end(
    fake: FakeUpstream, router_factory: RouterFactory, drain_secs: str
) -> None:
    """60 pieces 0.5 s apart would take 30 s; the drain time ends it. The client gets an error
    event it can act on (retry), not a connection cut mid-stream, and the completion line is not
    a client that left (499)."""
    fake.reply_with(slow_stream(60, 0.5))
    router = router_factory(profile(fake), env={"API_ROUTER_DRAIN_SECS": drain_secs})
    stream = StreamReader(router.url)
    stream.start()
    assert stream.first.wait(10) and stream.error is None, stream.error
    assert router.proc is not None
    signalled = time.monotonic()
    router.proc.send_signal(signal.SIGTERM)
    assert router.proc.wait(15) == 0, router.output()[-3000:]
    stream.join(5)
    assert not stream.is_alive()
    assert stream.error is None, stream.error  # ended, not cut
    assert "[DONE]" not in stream.lines  # not completed either
    error = json.loads(stream.lines[-1])["error"]
    assert error["code"] == "server_shutting_down" and error["type"] == "api_error"
    assert time.monotonic() - signalled < float(drain_secs) + 5
    (line,) = [
        e
        for e in router.logs()
        if e.get("event") == "request_completed" and e["route"] == "/v1/chat/completions"
    ]
    assert line["status_code"] == 200 and "error_type" not in line
    # but it says the drain ended it, at warning level: a deploy's cut streams can be counted
    assert (line["ended_by"], line["level"]) == ("shutdown", "warning")


def test_the_drain_reaches_a_silent_stream_waiting_out_a_long_heartbeat(
    fake: FakeUpstream, router_factory: RouterFactory
) -> None:
    """A silent upstream (a model thinking) and a heartbeat slower than the drain time: the
    stream's wait would outlast the drain, and Sanic cut it without an error event."""
    first, *rest = slow_stream(3, 0.0).chunks or []
    fake.reply_with(  # the first event at once, the next after 30 s
        Reply(headers=SSE, chunks=[first, (30.0, rest[0][1])], watch_close=True)
    )
    p = base_profile(
        fake.url, timeouts={"readSecs": 120}, streamConfig={"heartbeatIntervalSecs": 30}
    )
    router = router_factory(p, env={"API_ROUTER_DRAIN_SECS": "3"})
    stream = StreamReader(router.url)
    stream.start()
    assert stream.first.wait(10) and stream.error is None, stream.error
    assert router.proc is not None
    router.proc.send_signal(signal.SIGTERM)
    assert router.proc.wait(15) == 0, router.output()[-3000:]
    stream.join(5)
    assert stream.error is None, stream.error  # ended, not cut
    assert json.loads(stream.lines[-1])["error"]["code"] == "server_shutting_down"


SLOW_WORKER_START = Path(__file__).resolve().parents[1] / "fakes" / "slow_worker_start"


def test_sigterm_while_workers_start_ends_the_process(
    fake: FakeUpstream, router_factory: RouterFactory
) -> None:
    """A pod stopped while it starts: SIGTERM once the workers are spawned, before they have
    acknowledged start-up (each is held at interpreter start by tests/fakes/slow_worker_start).
    Stock Sanic's manager then spins at full CPU until SIGKILL; the router stops, and exits 0
    like any other stop."""
    env = {"PYTHONPATH": str(SLOW_WORKER_START), "WORKER_START_DELAY_SECS": "60"}
    router = router_factory(profile(fake), workers=2, env=env, start=False).spawn()
    assert router.proc is not None
    wait_until(
        lambda: len(worker_pids(router)) == 2 or router.proc.poll() is not None,
        20,
        "both workers to be spawned",
    )
    time.sleep(0.5)  # the manager records them, then waits for their acknowledgement
    # Still starting: neither crashed nor up (else this is not the case under test).
    assert router.proc.poll() is None, router.output()[-3000:]
    assert "Worker ready" not in router.output()
    router.proc.send_signal(signal.SIGTERM)
    assert router.proc.wait(20) == 0, router.output()[-3000:]  # stock Sanic: TimeoutExpired
    assert "Experienced exception while trying to serve" not in router.output()


def test_sighup_is_logged_and_changes_nothing(
    fake: FakeUpstream, router_factory: RouterFactory
) -> None:
    """SIGHUP to the main process and to a worker (a closed terminal, an operator's habit of
    "HUP reloads"): by default it ended the main process and left its workers serving, orphaned.
    Both stay, the router serves on, and SIGTERM still stops it with status 0."""
    router = router_factory(profile(fake), workers=2)
    assert router.proc is not None
    workers = worker_pids(router)
    assert len(workers) == 2
    try:
        router.proc.send_signal(signal.SIGHUP)
        os.kill(workers[0], signal.SIGHUP)
        wait_until(
            lambda: sum(e.get("event") == "sighup_ignored" for e in router.logs()) == 2,
            10,
            "both processes to log the signal",
        )
        assert router.proc.poll() is None
        assert sorted(worker_pids(router)) == sorted(workers)
        for _ in range(4):
            assert httpx.get(router.url + "/health").status_code == 200
        hangups = [e for e in router.logs() if e.get("event") == "sighup_ignored"]
        assert len(hangups) == 2
        # To the whole process group, as a terminal that closes sends it: Sanic's worker-state
        # manager (a process of the group too) ended by default, and the router with it (exit 1,
        # BrokenPipeError at its next state sync).
        os.killpg(router.proc.pid, signal.SIGHUP)
        wait_until(
            lambda: sum(e.get("event") == "sighup_ignored" for e in router.logs()) == 5,
            10,
            "the main process and both workers to log the group's signal",
        )
        time.sleep(1.5)  # the monitor syncs the workers' states with the manager meanwhile
        assert router.proc.poll() is None, router.output()[-3000:]
        for _ in range(4):
            assert httpx.get(router.url + "/health").status_code == 200
        assert router.stop() == 0
        assert "Experienced exception while trying to serve" not in router.output()
    finally:  # should the main process die, its workers must not outlive the test
        for pid in workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def test_a_worker_that_dies_is_logged_and_started_again(
    fake: FakeUpstream, router_factory: RouterFactory
) -> None:
    """`kill -9` of a worker (what the OOM killer does): Sanic alone only marked it failed, and
    the router went on with a worker less, saying nothing."""
    router = router_factory(profile(fake), workers=2)
    workers = worker_pids(router)
    assert len(workers) == 2
    os.kill(workers[0], signal.SIGKILL)
    died = router.wait_for_log(lambda e: e.get("event") == "worker_died", timeout=10)
    assert died["pid"] == workers[0] and died["exitcode"] == -signal.SIGKILL
    assert died["restart_in_secs"] == 1.0
    wait_until(
        lambda: len(worker_pids(router)) == 2 and workers[0] not in worker_pids(router),
        15,
        "the worker to be started again",
    )
    wait_until(lambda: router.output().count("Worker ready") >= 3, 15, "the new worker ready")
    for _ in range(6):  # on new connections: both workers answer
        assert httpx.get(router.url + "/health").status_code == 200
    assert router.stop() == 0


def test_a_worker_started_again_while_the_config_is_broken_serves_the_last_good_one(
    fake: FakeUpstream, router_factory: RouterFactory
) -> None:
    """A broken edit keeps the last good config serving; a worker that dies then was started
    again, read the broken file and could not start (the instance went on with a worker less,
    and with none once all had died). It starts from the instance's last good config (the one
    the running workers took, not the one the router started with), reports the file's error,
    and takes the next good edit as the others do."""
    data = profile(fake)
    router = router_factory({**data, "modelMapping": {"gpt-4": "first-model"}}, workers=2)
    path = router.profile_path
    path.write_text(json.dumps({**data, "modelMapping": {"gpt-4": "good-model"}}))
    wait_until(
        lambda: sum(e.get("event") == "config_reloaded" for e in router.logs()) == 2,
        10,
        "both workers to take the good edit",
    )
    path.write_text('{"name": "broken", ')
    wait_until(
        lambda: sum(e.get("event") == "config_reload_failed" for e in router.logs()) == 2,
        10,
        "both workers to refuse the broken edit",
    )
    workers = worker_pids(router)
    for pid in workers:  # every worker: the instance is down unless they start again
        os.kill(pid, signal.SIGKILL)
    wait_until(lambda: router.output().count("Worker ready") >= 4, 20, "two new workers ready")
    started = [e for e in router.logs() if e.get("event") == "config_started_from_last_good"]
    assert len(started) == 2 and "invalid JSON" in started[0]["error"], started
    # reported at once by each new worker, as a failed reload (log line, /health, the metric)
    assert sum(e.get("event") == "config_reload_failed" for e in router.logs()) == 4
    assert sorted(set(worker_pids(router)) & set(workers)) == []
    assert len(worker_pids(router)) == 2
    models = set()
    for _ in range(8):  # on new connections: both workers answer, with the good edit's mapping
        chat = {"model": "gpt-4", "messages": [{"role": "user", "content": "x"}]}
        r = httpx.post(router.url + "/v1/chat/completions", json=chat)
        assert r.status_code == 200, r.text
        models.add(json.loads(fake.requests[-1].body)["model"])
    assert models == {"good-model"}
    health = httpx.get(router.url + "/health").json()
    assert health["config"]["status"] == "error" and "invalid JSON" in health["config"]["lastError"]
    assert value(scrape(router.url), "config_reload_failures_total") == 4
    path.write_text(json.dumps({**data, "modelMapping": {"gpt-4": "fixed-model"}}))
    wait_until(
        lambda: sum(e.get("event") == "config_reloaded" for e in router.logs()) == 4,
        10,
        "the new workers to take the fixed file",
    )
    assert router.stop() == 0


def test_sigint_stops_the_router_like_sigterm(
    fake: FakeUpstream, router_factory: RouterFactory
) -> None:
    """docs/deployment.md: SIGINT (Ctrl-C) stops the router the same way: status 0."""
    router = router_factory(profile(fake), workers=2)
    assert router.proc is not None
    assert httpx.get(router.url + "/health").status_code == 200
    router.proc.send_signal(signal.SIGINT)
    assert router.proc.wait(20) == 0, router.output()[-3000:]


def _children(pid: int) -> list[int]:
    return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def _alive(pid: int) -> bool:
    """Running, not a zombie (a child of init is reaped by it)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False


def test_the_children_end_with_a_main_process_that_was_killed(
    fake: FakeUpstream, router_factory: RouterFactory
) -> None:
    """`kill -9` of the main process (the OOM killer's choice, a crash): its workers and Sanic's
    worker-state manager went on serving on the port, orphaned, with nobody to stop them (a new
    router on that port failed with "address in use"). The kernel now sends each SIGTERM
    (service.server.lifeline): a stream in flight drains whole, then every child exits and the
    port refuses connections."""
    fake.reply_with(slow_stream(8, 0.3))
    router = router_factory(profile(fake), workers=2)
    assert router.proc is not None
    children = _children(router.proc.pid)
    workers = worker_pids(router)
    assert len(workers) == 2 and set(workers) < set(children)  # the state manager besides
    stream = StreamReader(router.url)
    stream.start()
    try:
        assert stream.first.wait(10) and stream.error is None, stream.error
        router.proc.kill()
        router.proc.wait(10)
        stream.join(20)
        assert stream.error is None, stream.error
        assert stream.lines[-1] == "[DONE]"
        assert stream.content() == "".join(f"p{i} " for i in range(8))
        wait_until(lambda: not any(_alive(pid) for pid in children), 20, "every child to end")
        assert refuses_connections(router.port)
    finally:  # without the fix they would outlive the test
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
