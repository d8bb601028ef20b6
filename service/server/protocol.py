"""`GuardedHttpProtocol`: Sanic's HTTP/1.1 protocol with the client limits stock Sanic lacks.

Buys: a total deadline for the request head (`API_ROUTER_HEADER_TIMEOUT_SECS`) and for the body
(`API_ROUTER_BODY_TIMEOUT_SECS`), past which the client gets 408 and the connection closes, and
a cap on open client connections per worker (`API_ROUTER_MAX_CONNECTIONS`: one more is answered
503 and closed before anything of it is read). Sanic times only silence. Installed by the CLI
through Sanic's documented `app.prepare(protocol=...)`; the policy is described in
service.connlimits.

Also here: `connection_of(request)`, the connection a request arrived on, read from its protocol
before Sanic sets `request.conn_info` (the lifecycle listeners finish a request whose client
left when its connection closes).

Relies on: `HttpProtocol`'s `_setup`, `connection_made`, `connection_lost`, `data_received`,
`check_timeouts`, `recv_buffer`, `_task`, `connections` and `conn_info`, and on `Http`'s
`stage`, `exception`, `keep_alive` and `request_body` (sanic/server/protocols/, sanic/http/);
`StrictHttp` (its `HTTP_CLASS`) on `Http.read`'s chunked state: `recv_buffer` holds the CRLF
that ended the head or the last chunk's data, then the next chunk line.
An upgrade of Sanic that renames or reorders these may break it: tests/integration/
test_slow_clients.py (deadlines, the cap), test_smuggling.py, and test_metrics.py /
test_streaming.py (a client that leaves is logged and counted as 499) hold it to the behaviour
above on a real server. Always on (limits and records, not a speed-up).
"""

from __future__ import annotations

import re
import sys
from time import monotonic, perf_counter
from typing import Any

import structlog
from sanic import Request
from sanic.exceptions import BadRequest, PayloadTooLarge, RequestTimeout
from sanic.http import Http, Stage
from sanic.http.http1 import HTTP_CONTINUE
from sanic.models.server_types import ConnInfo
from sanic.server.protocols.http_protocol import HttpProtocol

from .. import timing
from ..errors import ServiceUnavailable, error_body
from ..proxy.headers import new_request_id

_OVER_CAPACITY_BODY = error_body(ServiceUnavailable("Too many open connections"), anthropic=False)
# Answer to a connection over the cap: written before reading anything, then the socket closes.
# %s, %s: its X-Request-ID (SPEC §5) and Server-Timing (SPEC §14), as every response has.
OVER_CAPACITY = (
    b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n"
    b"connection: close\r\nretry-after: 1\r\nx-request-id: %%s\r\nserver-timing: %%s\r\n"
    b"content-length: %d\r\n\r\n%s"
    % (len(_OVER_CAPACITY_BODY), _OVER_CAPACITY_BODY.replace(b"%", b"%%"))
)
log = structlog.get_logger("api_router")


def refuse(app: Any, transport: Any, open_connections: int, cap: int) -> bytes:
    """A connection over the cap: counted (`connections_refused_total`), one warning line with
    the request id its 503 carries, and that 503's bytes. No request of it was read: it is not
    in `requests_total` (no route or method to count it under)."""
    started = perf_counter()
    rid = new_request_id()
    metrics = app.ctx.metrics
    if metrics is not None:
        metrics.connections_refused_total.inc()
    peer = transport.get_extra_info("peername")
    log.warning(
        "connection_refused",
        request_id=rid,
        status_code=503,
        client_ip=peer[0] if isinstance(peer, tuple) and peer else None,
        open_connections=open_connections,
        max_connections=cap,
    )
    took = timing.whole(perf_counter() - started, None)  # the router's own time: no request
    return OVER_CAPACITY % (rid.encode(), took.encode())


def connection_of(request: Request[Any, Any]) -> ConnInfo | None:
    """The connection `request` arrived on. Sanic sets `request.conn_info` only after the
    `http.lifecycle.request` signal; the protocol (the transport's) holds it from the start
    (`SanicProtocol.conn_info`). None under a server without a protocol (ASGI)."""
    if request.conn_info is not None:
        return request.conn_info
    get_protocol = getattr(request.transport, "get_protocol", None)
    conn: ConnInfo | None = getattr(get_protocol(), "conn_info", None) if get_protocol else None
    return conn


def start_body_clock(request: Request) -> None:
    """The head of `request` ended: its body's deadline runs from now (an
    `http.lifecycle.request` listener calls this; service.connlimits)."""
    protocol = request.transport.get_protocol()
    if isinstance(protocol, GuardedHttpProtocol):
        protocol._body_since = monotonic()
        if protocol._body_sooner:  # by default Sanic's own period is shorter
            protocol.check_within(protocol._ticks[1])


# RFC 9112 7.1: chunk-size (hex digits only) [ BWS ";" chunk-ext ], the extension visible
# characters, spaces, tabs and obs-text. Sanic's own parse is `int(size, 16)` on what comes before
# ";", which also takes "0x1b", " 1b " and non-ASCII digits, and it never checks the CRLF that
# must follow a chunk's data: each a way for a front proxy and the router to split one body
# into different requests.
_CHUNK_LINE = re.compile(rb"[0-9A-Fa-f]{1,16}(?:[ \t]*;[\t\x20-\x7e\x80-\xff]*)?")


class StrictHttp(Http):
    """Sanic's `Http` whose chunked request bodies are framed exactly as RFC 9112 says: every
    chunk line is checked before Sanic parses it (400 and close otherwise, as for a doubtful
    head: service.connlimits)."""

    __slots__ = ()
    # Sanic rewrites Http's own methods at start (TouchUp); this class calls them as they are.
    __touchup__ = ()  # type: ignore[assignment]

    async def read(self) -> bytes | None:
        if self.expecting_continue:
            if self.request_bytes > self.request_max_size:
                # Sanic sent `100 Continue` first, inviting an upload it then refused (413)
                self.expecting_continue = False
                self.keep_alive = False
                raise PayloadTooLarge("Request body exceeds the size limit")
            self.expecting_continue = False
            if self.request is None or self.request.version != "1.0":  # HTTP/1.0 has no 1xx
                # now: the chunk line checked below is what the client sends after it
                await self._send(HTTP_CONTINUE)
        if self.request_bytes_left == 0 and self.request_body == "chunked":
            await self._check_chunk_line()
        return await super().read()

    def create_empty_request(self) -> None:
        """Sanic's stand-in request for an error before the request was made, with `*` for a
        target its URL parser refuses: Sanic used the same target again, failed the same way
        while answering, and dropped the connection without a word."""
        try:
            super().create_empty_request()
        except BadRequest:
            self.url = ""  # Sanic's stand-in for no target: "*"
            super().create_empty_request()

    async def _check_chunk_line(self) -> None:
        buf = self.recv_buffer
        while len(buf) < 2 or (end := buf.find(b"\r\n", 2)) == -1:
            if len(buf) > 64:  # Sanic's own bound on a chunk line
                break
            await self._receive_more()
        else:
            if buf[:2] == b"\r\n" and _CHUNK_LINE.fullmatch(buf, 2, end) is not None:
                return
        self.keep_alive = False
        raise BadRequest("Bad chunked encoding")


class GuardedHttpProtocol(HttpProtocol):
    """Sanic's HTTP/1.1 protocol with total head/body deadlines and a per-worker connection cap,
    and strict chunked framing (`StrictHttp`)."""

    HTTP_CLASS = StrictHttp

    __slots__ = (
        "_body_since",
        "_body_sooner",
        "_conn_http",
        "_guard",
        "_head_since",
        "_rejected",
        "_ticks",
    )

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
        # While a head (a body) is read, its deadline is checked at least this often: Sanic's
        # own period, half its shortest timeout, let a 1 s body deadline fire after 15 s.
        self._ticks = (
            max(0.1, settings.header_timeout_secs / 4),
            max(0.1, settings.body_timeout_secs / 4),
        )
        # Whether a body's check must come sooner than Sanic's own period (half its shortest
        # timeout: keep-alive, the head's, the response's): not with the defaults.
        sanic_period = min(settings.keep_alive_secs, settings.header_timeout_secs) / 2
        self._body_sooner = self._ticks[1] < sanic_period
        self._body_since: float | None = None  # end of the last head (`start_body_clock`)
        self._rejected = False
        self._conn_http: Any = None  # this connection's Sanic `Http`, until its task ended

    def _setup_connection(self, *args: Any, **kwargs: Any) -> None:
        super()._setup_connection(*args, **kwargs)
        self._conn_http = self._http

    async def connection_task(self) -> None:
        try:
            await super().connection_task()
        finally:
            # A response cut short (the client left mid-stream) leaves Sanic's `Http` holding
            # its own bound method (`response_func`): a cycle that only Python's collector
            # would free, with the connection's buffers. The connection is over: let go of it.
            http, self._conn_http = self._conn_http, None
            if http is not None:
                http.response_func = None

    # -- connection cap ----------------------------------------------------------------------
    def connection_made(self, transport: Any) -> None:
        if len(self.connections) >= self._guard[2]:
            self._rejected = True
            transport.write(refuse(self.app, transport, len(self.connections), self._guard[2]))
            transport.close()
            return
        super().connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._rejected:
            return
        super().connection_lost(exc)

    async def receive_more(self) -> None:
        # A head Sanic has not found the end of (its CRLF CRLF) that has a blank line of bare
        # LFs will never end: refused now (400, as any malformed head), not after the header
        # deadline (408).
        http = self._conn_http
        if http is not None and http.stage is Stage.REQUEST and b"\n\n" in self.recv_buffer:
            raise BadRequest("Bad Request")
        await super().receive_more()

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
            if http.stage is Stage.REQUEST:
                self.check_within(self._ticks[0])
            elif getattr(http, "request_body", None):
                self.check_within(self._ticks[1])
            return
        super().check_timeouts()

    def check_within(self, secs: float) -> None:
        """The next check of the timeouts comes within `secs` (sooner than Sanic planned it)."""
        later = self._callback_check_timeouts
        if later is not None and later.when() - self.loop.time() > secs:
            later.cancel()
            self._callback_check_timeouts = self.loop.call_later(secs, self.check_timeouts)
