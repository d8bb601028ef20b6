"""Requests Sanic refuses before their head is accepted (malformed, too large) are still counted
in requests_total, logged with a request id, and answered with X-Request-ID."""

from __future__ import annotations

import re
import socket

import httpx

from tests.support import RouterProcess


def _raw(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(data)
        return s.recv(4096)


def _count(url: str, route: str, status: str) -> float:
    text = httpx.get(url + "/metrics").text
    pattern = (
        rf'^requests_total\{{method="[A-Z]+",route="{re.escape(route)}",status="{status}"\}} (\S+)$'
    )
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
