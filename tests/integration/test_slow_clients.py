"""Slow and greedy clients (raw sockets): a head or a body dripped byte by byte is cut at its
total deadline with 408, an idle keep-alive connection is closed, and a worker holds at most
API_ROUTER_MAX_CONNECTIONS client connections."""

from __future__ import annotations

import re
import select
import socket
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import base_profile
from tests.fakes.upstream import FakeUpstream
from tests.rawhttp import closed_by_peer, connect, read_response
from tests.scrape import value
from tests.support import RouterFactory, RouterProcess

# Every gap between two bytes is shorter than any silence timeout, so only a total deadline
# can end these clients.
GAP = 0.25
MAX_DRIP = 40  # pieces; a drip that is never cut stops after GAP * MAX_DRIP seconds


@pytest.fixture(scope="module")
def slow_router(fake_upstream: FakeUpstream, module_router_factory: RouterFactory) -> RouterProcess:
    env = {
        "API_ROUTER_HEADER_TIMEOUT_SECS": "1.5",
        "API_ROUTER_BODY_TIMEOUT_SECS": "2",
        "API_ROUTER_KEEP_ALIVE_SECS": "1",
    }
    return module_router_factory(base_profile(fake_upstream.url), env=env)


def drip(sock: socket.socket, pieces: list[bytes]) -> int:
    """Send the pieces GAP apart until the server answers or closes; how many were sent."""
    for i, piece in enumerate(pieces):
        try:
            sock.sendall(piece)
        except (BrokenPipeError, ConnectionResetError):
            return i
        ready, _, _ = select.select([sock], [], [], GAP)
        if ready:
            return i + 1
    return len(pieces)


def test_a_dripped_head_is_cut_at_the_header_deadline(slow_router: RouterProcess) -> None:
    lines = [b"POST /v1/chat/completions HTTP/1.1\r\n", b"Host: x\r\n"]
    lines += [b"X-Drip-%d: y\r\n" % i for i in range(MAX_DRIP)]
    with connect(slow_router.port) as s:
        sent = drip(s, lines)
        assert sent < len(lines), "the router waited for the whole dripped head"
        resp = read_response(s)
        assert resp is not None and resp.status == 408, resp
        assert resp.json()["error"]["code"] == "request_timeout"
        assert closed_by_peer(s, 5)


def test_a_dripped_body_is_cut_at_the_body_deadline(
    slow_router: RouterProcess, upstream: FakeUpstream
) -> None:
    body = b'{"model":"gpt-4","messages":[]' + b" " * 200 + b"}"
    head = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n" % len(body)
    )
    with connect(slow_router.port) as s:
        s.sendall(head)
        sent = drip(s, [body[i : i + 1] for i in range(min(len(body), MAX_DRIP))])
        assert sent < MAX_DRIP, "the router waited for the whole dripped body"
        resp = read_response(s)
        assert resp is not None and resp.status == 408, resp
        assert closed_by_peer(s, 5)
    assert upstream.requests == []


def test_the_body_deadline_holds_beside_long_other_timeouts(
    fake_upstream: FakeUpstream, router_factory: RouterFactory
) -> None:
    """Sanic checks a connection's timeouts every half of its shortest own one (here 15 s), so a
    body deadline of 1 s fired after 15 s; the deadlines are now checked a quarter of theirs
    apart while a head or a body is read."""
    env = {
        "API_ROUTER_HEADER_TIMEOUT_SECS": "30",
        "API_ROUTER_BODY_TIMEOUT_SECS": "1",
        "API_ROUTER_KEEP_ALIVE_SECS": "75",
    }
    r = router_factory(base_profile(fake_upstream.url), env=env)
    body = b'{"model":"gpt-4","messages":[]' + b" " * 200 + b"}"
    with connect(r.port) as s:
        s.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body)
        )
        began = time.monotonic()
        sent = drip(s, [body[i : i + 1] for i in range(min(len(body), MAX_DRIP))])
        assert sent < MAX_DRIP, "the router waited for the whole dripped body"
        resp = read_response(s)
        assert resp is not None and resp.status == 408, resp
        # 1 s and a check a quarter of it later; a generous margin for a loaded machine
        assert time.monotonic() - began < 6


def test_a_dripped_multipart_body_is_cut_too(
    slow_router: RouterProcess, upstream: FakeUpstream
) -> None:
    """The audio routes stream their body to the upstream as it comes: the deadline holds."""
    boundary = b"b0undary"
    body = (
        b"--" + boundary + b'\r\nContent-Disposition: form-data; name="model"\r\n\r\nwhisper-1\r\n'
        b"--" + boundary + b'\r\nContent-Disposition: form-data; name="file"; filename="a.wav"'
        b"\r\nContent-Type: audio/wav\r\n\r\n" + b"\0" * 400 + b"\r\n--" + boundary + b"--\r\n"
    )
    head = (
        b"POST /v1/audio/transcriptions HTTP/1.1\r\nHost: x\r\n"
        b"Content-Type: multipart/form-data; boundary=" + boundary + b"\r\n"
        b"Content-Length: %d\r\n\r\n" % len(body)
    )
    with connect(slow_router.port) as s:
        s.sendall(head)
        sent = drip(s, [body[i : i + 4] for i in range(0, 4 * MAX_DRIP, 4)])
        assert sent < MAX_DRIP
        resp = read_response(s)
        # 408, or the connection is simply closed once the upstream request was abandoned
        assert resp is None or resp.status == 408, resp
        assert closed_by_peer(s, 5)


def test_a_prompt_head_and_body_are_served(slow_router: RouterProcess) -> None:
    """The control case: a client that sends at once is not affected by the deadlines."""
    body = b'{"model":"gpt-4","messages":[]}'
    with connect(slow_router.port) as s:
        s.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
        )
        resp = read_response(s)
        assert resp is not None and resp.status == 200


def test_an_idle_keep_alive_connection_is_closed(slow_router: RouterProcess) -> None:
    with connect(slow_router.port) as s:
        s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        resp = read_response(s)
        assert resp is not None and resp.status == 200
        assert resp.headers.get("connection") == "keep-alive"
        assert closed_by_peer(s, 10), "an idle keep-alive connection was kept past its limit"


def test_a_connection_that_never_sends_is_closed(slow_router: RouterProcess) -> None:
    with connect(slow_router.port) as s:
        assert closed_by_peer(s, 10)


def test_connections_per_worker_are_capped(
    fake_upstream: FakeUpstream, router_factory: RouterFactory
) -> None:
    env = {"API_ROUTER_MAX_CONNECTIONS": "3", "API_ROUTER_KEEP_ALIVE_SECS": "30"}
    r = router_factory(base_profile(fake_upstream.url), env=env)
    held = [connect(r.port) for _ in range(3)]
    try:
        for s in held:  # each is served and stays open (keep-alive)
            s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            resp = read_response(s)
            assert resp is not None and resp.status == 200
        with connect(r.port) as extra:
            resp = read_response(extra)  # answered before it sent anything
            assert resp is not None and resp.status == 503, resp
            assert resp.json()["error"]["message"] == "Too many open connections"
            assert closed_by_peer(extra, 5)
        # Recorded (SPEC §5, §9): its own request id, one warning line naming it, a counter.
        rid = resp.headers["x-request-id"]
        assert re.fullmatch(r"[0-9a-f]{32}", rid), rid
        assert re.fullmatch(r"router;dur=\d+\.\d{3}", resp.headers["server-timing"])
        line = r.wait_for_log(lambda x: x.get("event") == "connection_refused")
        assert line["request_id"] == rid and line["level"] == "warning"
        assert (line["status_code"], line["client_ip"]) == (503, "127.0.0.1")
        assert (line["open_connections"], line["max_connections"]) == (3, 3)
        refused = 1
        held.pop().close()
        # the slot is free again once the router has seen the close
        deadline = time.monotonic() + 10
        while True:
            with connect(r.port) as again:
                again.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
                resp = read_response(again)
            if resp is not None and resp.status == 200:
                break
            refused += resp is not None and resp.status == 503
            assert time.monotonic() < deadline, "the freed slot was never reused"
            time.sleep(0.1)
        for s in held:
            s.close()
        held.clear()
        while (m := httpx.get(r.url + "/metrics", timeout=5)).status_code == 503:
            refused += 1
            assert time.monotonic() < deadline + 10, "/metrics was never served"
            time.sleep(0.1)
        assert value(m.text, "connections_refused_total") == refused
    finally:
        for s in held:
            s.close()


def _soft_nofile(pid: int) -> int:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            return int(line.split()[3])
    raise AssertionError("no open-files limit")


def test_the_default_cap_follows_the_file_descriptor_limit(
    fake_upstream: FakeUpstream, router_factory: RouterFactory
) -> None:
    """Without API_ROUTER_MAX_CONNECTIONS the cap is what the worker's descriptors can hold, two
    per proxied request: launched with a soft limit of 200 under a hard one of 300, the CLI
    raises the soft limit to 300 for itself and its workers, and a worker then takes
    (300 - 128) // 2 = 86 client connections."""
    env = {"API_ROUTER_KEEP_ALIVE_SECS": "30"}
    r = router_factory(base_profile(fake_upstream.url), env=env, nofile=(200, 300))
    assert r.proc is not None
    pids = [int(p) for p in re.findall(r"Starting worker \[(\d+)\]", r.output())]
    assert [_soft_nofile(p) for p in [r.proc.pid, *pids]] == [300, 300]
    held = [connect(r.port) for _ in range(86)]
    try:
        for s in held:
            s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            resp = read_response(s)
            assert resp is not None and resp.status == 200
        with connect(r.port) as extra:
            resp = read_response(extra)
            assert resp is not None and resp.status == 503, resp
    finally:
        for s in held:
            s.close()


def _handshakes_while_stopped(r: RouterProcess, count: int) -> int:
    """With every worker stopped (SIGSTOP: nothing accepts), start `count` connections and
    return how many complete their TCP handshake within a second: those the listening socket's
    accept queue holds. The kernel drops the SYN of one more, and its client retries after a
    second or more."""
    import os
    import signal

    pids = [int(p) for p in re.findall(r"Starting worker \[(\d+)\]", r.output())]
    assert pids
    socks: list[socket.socket] = []
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        for _ in range(count):
            s = socket.socket()
            s.setblocking(False)
            s.connect_ex(("127.0.0.1", r.port))
            socks.append(s)
        deadline = time.monotonic() + 1.0
        done: set[int] = set()
        while len(done) < count and time.monotonic() < deadline:
            _, writable, _ = select.select(
                [], [s for s in socks if s.fileno() not in done], [], 0.1
            )
            for s in writable:
                if s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0:
                    done.add(s.fileno())
        return len(done)
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGCONT)
        for s in socks:
            s.close()


def test_a_burst_of_connections_waits_in_the_accept_queue(
    fake_upstream: FakeUpstream, router_factory: RouterFactory
) -> None:
    """Agents open their streams in bursts. Sanic's default accept queue (100) would drop the
    SYNs past it and make those clients wait a second or more for the retry; the router asks for
    4096 (API_ROUTER_BACKLOG; the kernel caps it at net.core.somaxconn), so a burst of 400
    connections is held while the workers are busy, and the setting is what decides."""
    r = router_factory(base_profile(fake_upstream.url))
    assert _handshakes_while_stopped(r, 400) == 400
    small = router_factory(base_profile(fake_upstream.url), env={"API_ROUTER_BACKLOG": "50"})
    assert 45 <= _handshakes_while_stopped(small, 400) <= 60
    with connect(small.port) as s:  # the workers took up again
        s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        resp = read_response(s)
        assert resp is not None and resp.status == 200
