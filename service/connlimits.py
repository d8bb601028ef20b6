"""Client connection limits that stock Sanic does not enforce (README "Security and limits").

Sanic times only *silence*: a client that sends one header byte a second, or drips its body,
keeps a connection (and a worker slot) forever. `GuardedHttpProtocol` (Sanic's `HttpProtocol`
plus a few checks, installed by the CLI with `app.prepare(protocol=...)`) adds:

- a total deadline for the request head, from its first byte to its blank line
  (`API_ROUTER_HEADER_TIMEOUT_SECS`), and for the body, from the end of the head to its last byte
  (`API_ROUTER_BODY_TIMEOUT_SECS`): past either the client gets 408 and the connection closes;
- a cap on open client connections per worker (`API_ROUTER_MAX_CONNECTIONS`): one more is answered
  503 and closed at once, before anything of it is read;

`strict_head` (a `http.lifecycle.read_head` listener) refuses heads that parsers disagree on,
the raw material of request smuggling: whitespace before a colon, folded lines, bare CR or LF,
control characters, a Content-Length that is not plain digits, a missing or repeated Host.
Sanic itself already refuses Content-Length together with Transfer-Encoding, a repeated one, and
a Transfer-Encoding other than `chunked` (400), and a head over `REQUEST_MAX_HEADER_SIZE` (the
error handler turns that into 431). Idle keep-alive time is Sanic's `KEEP_ALIVE_TIMEOUT`.
"""

from __future__ import annotations

import re
import sys
from time import monotonic
from typing import Any

from sanic import Request, Sanic
from sanic.exceptions import RequestTimeout
from sanic.http import Stage
from sanic.server.protocols.http_protocol import HttpProtocol

from .errors import ServiceUnavailable, error_body

_OVER_CAPACITY_BODY = error_body(ServiceUnavailable("Too many open connections"), anthropic=False)
# Answer to a connection over the cap: written before reading anything, then the socket closes.
OVER_CAPACITY = (
    b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n"
    b"connection: close\r\nretry-after: 1\r\ncontent-length: %d\r\n\r\n%s"
    % (len(_OVER_CAPACITY_BODY), _OVER_CAPACITY_BODY)
)

_TOKEN = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
# RFC 9112: request-line, then field-name ":" OWS field-value, lines ended by CRLF only. Values
# are visible characters, spaces, tabs and obs-text; no CR, LF, NUL or other controls.
_HEAD = re.compile(
    rb"%s [\x21-\x7e]+ HTTP/1\.[01](?:\r\n%s:[\t\x20-\x7e\x80-\xff]*)*" % (_TOKEN, _TOKEN)
)
_CONTENT_LENGTH = re.compile(rb"\r\ncontent-length:[ \t]*([^\r]*?)[ \t]*(?=\r\n|$)", re.I)
_HOST = re.compile(rb"\r\nhost:", re.I)


def check_head(head: bytes) -> str | None:
    """Why this request head must be refused, or None when it is unambiguous."""
    if _HEAD.fullmatch(head) is None:
        return "malformed request head"
    for value in _CONTENT_LENGTH.findall(head):
        if not value.isdigit():
            return "invalid Content-Length"
    hosts = len(_HOST.findall(head))
    if hosts > 1 or (hosts == 0 and head.split(b"\r\n", 1)[0].endswith(b"HTTP/1.1")):
        return "missing or repeated Host"
    return None


class MalformedHead(ValueError):
    """Raised while Sanic parses the head: it answers 400 and closes the connection."""


def install(app: Sanic) -> None:
    """The head check and the body clock (the protocol needs to know when the head ended)."""

    @app.signal("http.lifecycle.read_head")
    async def _strict_head(head: bytes) -> None:
        reason = check_head(head)
        if reason is not None:
            raise MalformedHead(reason)

    @app.signal("http.lifecycle.request")
    async def _head_done(request: Request) -> None:
        protocol = request.transport.get_protocol()
        if isinstance(protocol, GuardedHttpProtocol):
            protocol._body_since = monotonic()


class GuardedHttpProtocol(HttpProtocol):
    """Sanic's HTTP/1.1 protocol with total head/body deadlines and a per-worker connection cap."""

    __slots__ = ("_body_since", "_guard", "_head_since", "_rejected")

    def _setup(self) -> None:
        super()._setup()
        settings = self.app.ctx.settings
        # (header deadline, body deadline, connection cap), read once per connection
        self._guard: tuple[float, float, int] = (
            settings.header_timeout_secs,
            settings.body_timeout_secs,
            settings.max_connections,
        )
        self._head_since: float | None = None  # first byte of the head being read
        self._body_since: float | None = None  # end of the last head (set by `install`)
        self._rejected = False

    # -- connection cap ----------------------------------------------------------------------
    def connection_made(self, transport: Any) -> None:
        if len(self.connections) >= self._guard[2]:
            self._rejected = True
            transport.write(OVER_CAPACITY)
            transport.close()
            return
        super().connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._rejected:
            return
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._rejected:
            return
        http = getattr(self, "_http", None)
        if http is None or (http.stage is Stage.IDLE and not self.recv_buffer):
            self._head_since = monotonic()  # the first byte of a new request head
        super().data_received(data)

    # -- total deadlines ---------------------------------------------------------------------
    def check_timeouts(self) -> None:
        http = getattr(self, "_http", None)
        # (slots of Http such as `exception` exist only once its first request began)
        if self._task and http is not None and getattr(http, "exception", None) is None:
            now = monotonic()
            header_secs, body_secs, _ = self._guard
            expired = None
            if http.stage is Stage.REQUEST:
                if self._head_since is None:  # a pipelined head that was already buffered
                    self._head_since = now
                elif now - self._head_since > header_secs:
                    expired = "Request header timeout"
            else:
                self._head_since = None
                since = self._body_since
                body = getattr(http, "request_body", None)  # unset before the first request
                if body and since is not None and now - since > body_secs:
                    expired = "Request body timeout"
                    # Answer and close: the rest of this body is never waited for.
                    http.keep_alive = False
                    http.request_body = None
            if expired is not None:
                http.exception = RequestTimeout(expired)
                if sys.version_info < (3, 14):
                    self._task.cancel("Cancel connection task with a timeout")
                else:
                    self._task.cancel()
                return
        super().check_timeouts()
