"""A raw-socket HTTP/1.1 client for tests that must control every byte a client sends (slow
clients, malformed and ambiguous requests): no library re-frames or refuses anything."""

from __future__ import annotations

import json
import select
import socket
import time
from dataclasses import dataclass
from typing import Any


@dataclass
class RawResponse:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def connect(port: int, timeout: float = 10.0) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def read_response(sock: socket.socket, timeout: float = 10.0) -> RawResponse | None:
    """One response, or None when the server closed (or reset) the connection without one."""
    sock.settimeout(timeout)
    buf = b""
    try:
        while b"\r\n\r\n" not in buf:
            data = sock.recv(65536)
            if not data:
                return None
            buf += data
        head, _, rest = buf.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers = {}
        for line in lines[1:]:
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip()
        n = int(headers.get("content-length", "0"))
        while len(rest) < n:
            data = sock.recv(65536)
            if not data:
                break
            rest += data
        return RawResponse(status, headers, rest[:n])
    except ConnectionResetError:
        return None


def closed_by_peer(sock: socket.socket, timeout: float) -> bool:
    """True when the server closes the connection within `timeout` (EOF or reset)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([sock], [], [], max(0.0, deadline - time.monotonic()))
        if ready:
            try:
                data = sock.recv(65536)
            except ConnectionResetError:
                return True
            if not data:
                return True
    return False


def exchange(
    port: int, raw: bytes, timeout: float = 10.0, wait_close: bool = True
) -> tuple[RawResponse | None, bool]:
    """Send `raw` on a new connection; the first response and whether the server then closed
    (waited for only with `wait_close`)."""
    with connect(port, timeout) as s:
        s.sendall(raw)
        resp = read_response(s, timeout)
        closed = resp is None or (wait_close and closed_by_peer(s, timeout))
        return resp, closed
