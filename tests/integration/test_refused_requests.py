"""Requests Sanic refuses before their head is accepted (malformed, too large) are still counted
in requests_total, logged with a request id, and answered with X-Request-ID."""

from __future__ import annotations

import re
import socket
import time

import httpx
import pytest

from tests.conftest import base_profile
from tests.fakes.upstream import FakeUpstream
from tests.support import RouterFactory, RouterProcess


def _raw(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(data)
        return s.recv(4096)


def _count(url: str, route: str, status: str, method: str = "[A-Z]+") -> float:
    text = httpx.get(url + "/metrics").text
    labels = f'method="{method}",route="{re.escape(route)}",status="{status}"'
    pattern = rf"^requests_total\{{{labels}\}} (\S+)$"
    m = re.search(pattern, text, re.M)
    return float(m.group(1)) if m else 0.0


def test_malformed_and_oversized_heads_are_counted_and_logged(router: RouterProcess) -> None:
    before_400 = _count(router.url, "/health", "400")
    before_431 = _count(router.url, "unmatched", "431")
    answer = _raw(router.port, b"GET /health HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 400")
    rid = re.search(rb"X-Request-ID: (\w+)", answer)
    assert rid is not None
    answer = _raw(
        router.port, b"GET /x HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n"
    )
    assert answer.startswith(b"HTTP/1.1 431")
    assert _count(router.url, "/health", "400") == before_400 + 1
    assert _count(router.url, "unmatched", "431") == before_431 + 1
    line = router.wait_for_log(lambda r: r.get("request_id") == rid.group(1).decode())
    assert line["event"] == "request_completed" and line["status_code"] == 400
    # the method its request line named (Sanic's stand-in request says NONE: label OTHER)
    assert line["method"] == "GET"
    # the peer, as on every completion line: the lines an operator reads to find such a client
    assert line["client_ip"] == "127.0.0.1"
    assert (
        'requests_total{method="GET",route="/health",status="400"}'
        in httpx.get(router.url + "/metrics").text
    )


def _gauge(url: str, name: str) -> float:
    m = re.search(rf"^{name} (\S+)$", httpx.get(url + "/metrics").text, re.M)
    assert m is not None, name
    return float(m.group(1))


def test_heads_refused_after_they_were_read_leave_nothing_in_flight(
    router_factory: RouterFactory, fake_upstream: FakeUpstream
) -> None:
    """Sanic refuses some heads only after the request began (an unknown Expect, a transfer
    coding it does not know): the answer is that request's own, 417 / 400 with its request id
    on the completion line, and the in-flight gauge comes back down (it kept one per such
    request, so any client could raise it for good)."""
    r = router_factory(base_profile(fake_upstream.url))
    baseline = _gauge(r.url, "in_flight_requests")  # the scrape itself
    answer = _raw(
        r.port,
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nExpect: foo\r\n"
        b"Content-Type: application/json\r\nContent-Length: 2\r\n\r\n{}",
    )
    assert answer.startswith(b"HTTP/1.1 417")
    assert b'"code":"expectation_failed"' in answer
    rid = re.search(rb"X-Request-ID: (\w+)", answer)
    assert rid is not None
    line = r.wait_for_log(lambda e: e.get("request_id") == rid.group(1).decode())
    assert line["event"] == "request_completed" and line["status_code"] == 417
    assert line["method"] == "POST"
    for _ in range(3):
        answer = _raw(r.port, b"GET /health HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 400")
        _raw(r.port, b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nExpect: x\r\n"
             b"Content-Length: 2\r\n\r\n{}")  # fmt: skip
    assert _gauge(r.url, "in_flight_requests") == baseline
    assert not [e for e in r.logs() if e.get("event") == "router_error"]


@pytest.mark.parametrize(
    "part",
    [b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n", b"GE"],
    ids=["most_of_a_head", "two_bytes"],
)
def test_a_client_that_leaves_mid_head_is_499_not_500(router: RouterProcess, part: bytes) -> None:
    """Part of a head, then the client closes: it got nothing, which SPEC §8 counts as 499; a
    500 (what Sanic's stand-in request was answered) put scanners and flaky clients in the
    router's own error rate."""
    before_500 = sum(_count(router.url, "unmatched", "500", m) for m in ("POST", "OTHER"))
    before_499 = sum(_count(router.url, "unmatched", "499", m) for m in ("POST", "OTHER"))
    with socket.create_connection(("127.0.0.1", router.port), timeout=10) as s:
        s.sendall(part)
        time.sleep(0.3)  # the router has read it and waits for the rest
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if sum(_count(router.url, "unmatched", "499", m) for m in ("POST", "OTHER")) > before_499:
            break
        time.sleep(0.05)
    assert (
        sum(_count(router.url, "unmatched", "499", m) for m in ("POST", "OTHER")) == before_499 + 1
    )
    assert sum(_count(router.url, "unmatched", "500", m) for m in ("POST", "OTHER")) == before_500


def test_expect_100_continue_is_not_sent_before_a_refusal_or_to_http_1_0(
    router: RouterProcess, upstream: FakeUpstream
) -> None:
    """`100 Continue` invites the upload: not for a declared length over the limit (Sanic sent
    it, then 413 once the client had begun sending), nor to an HTTP/1.0 client, which has no
    1xx (RFC 9110 10.1.1)."""
    head = b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
    answer = _raw(router.port, head + b"Content-Length: 40000000\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 413"), answer[:80]
    body = b'{"model": "gpt-4", "input": "x"}'
    answer = _raw(
        router.port,
        b"POST /v1/embeddings HTTP/1.0\r\nExpect: 100-continue\r\n"
        b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body),
    )
    assert answer.startswith(b"HTTP/1.1 200"), answer[:80]
    # an HTTP/1.1 client that waits for it still gets it, and then its answer
    with socket.create_connection(("127.0.0.1", router.port), timeout=10) as s:
        s.sendall(
            head + b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body)
        )
        assert s.recv(4096).startswith(b"HTTP/1.1 100 Continue")
        s.sendall(body)
        assert s.recv(4096).startswith(b"HTTP/1.1 200")
    # and so does one with a chunked body (its first chunk line is checked after the 100)
    with socket.create_connection(("127.0.0.1", router.port), timeout=10) as s:
        s.sendall(head + b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
        assert s.recv(4096).startswith(b"HTTP/1.1 100 Continue")
        s.sendall(b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body))
        assert s.recv(4096).startswith(b"HTTP/1.1 200")


@pytest.mark.parametrize(
    ("connection", "options"),
    [(b"Upgrade", b"upgrade, close"), (b"keep-alive", b"upgrade, keep-alive")],
)
def test_a_426_names_the_upgrade_connection_option(
    router: RouterProcess, connection: bytes, options: bytes
) -> None:
    """A WebSocket handshake on an HTTP route is 426 with `Upgrade: HTTP/1.1`; RFC 9110 §7.8
    wants the `upgrade` connection option with it. Sanic writes `Connection` itself (close
    after a request whose Connection did not ask to keep it, as a handshake's does not), and
    the option is added to its value."""
    answer = _raw(
        router.port,
        b"GET /v1/responses HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: %s\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        % connection,
    )
    head = answer.split(b"\r\n\r\n", 1)[0].split(b"\r\n")
    assert head[0] == b"HTTP/1.1 426 Upgrade Required", head[0]
    fields = [line.split(b":", 1) for line in head[1:]]
    values = {name.strip().lower(): value.strip() for name, value in fields}
    assert (values[b"upgrade"], values[b"connection"]) == (b"HTTP/1.1", options)
