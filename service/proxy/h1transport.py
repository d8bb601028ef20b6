"""`H1Transport`: an httpx transport speaking HTTP/1.1 on raw asyncio connections (the default).

Why our own: the relay sends one request and reads one answer per client request, so the
transport is on every request's path. Measured in bench/README.md ("Upstream transport"): httpx's
own transport (httpcore + anyio) scans its whole pool on every request, and httpx-aiohttp's
`AiohttpTransport` pays for two clients' objects (aiohttp's request/response, then httpx's). This
one is an `asyncio.Protocol` per connection with llhttp (httptools, already a Sanic dependency)
parsing the response, and a keep-alive pool; everything above it is still httpx (`httpx.Request`,
`httpx.Response`, httpx's exception types), so the relay code does not know which transport runs.

What it does, and the decisions taken where HTTP leaves a choice (each pinned by
tests/integration/test_h1transport.py; where httpx's own transport or httpx-aiohttp decide
otherwise, tests/integration/test_h1_differential.py records which one this follows and why):
- HTTP/1.1 only, `http` and `https`. TLS: httpx's default context (`httpx.create_ssl_context`:
  certificate and host name verified, SNI sent; an operator trusts another CA by pointing
  `SSL_CERT_FILE` at a PEM bundle, which replaces certifi's CAs, or `SSL_CERT_DIR`), ALPN
  `http/1.1`.
- The request head is written as the relay built it (httpx adds `Host` and `Content-Length`),
  after checking it against the grammar of RFC 9110/9112: the method and every header name a
  token, every value visible characters (obs-text allowed) with inner spaces or tabs only,
  the target visible ASCII. Anything else (CR, LF, NUL, other control bytes, a space at either
  end of a value, a name that is not a token) is refused before anything is sent
  (`httpx.LocalProtocolError`): the router never forwards a header it could not frame.
- Request bodies: bytes are written with the head in one call; a streamed body (multipart audio)
  is written as it arrives, waiting for the socket to drain (write timeout). Its framing is
  checked before connecting: exactly one of `Content-Length` (digits, one value) or
  `Transfer-Encoding: chunked`; a stream longer than its length is refused before the extra
  byte is written, a shorter one at its end (`LocalProtocolError`, as h11 says; the connection
  is closed, so the upstream never sees a complete wrong message). An error raised by the
  body's source (e.g. the client's body over the size limit) propagates as it is.
- An answer that begins while the request is being written (a 413 or 401 during an upload)
  stops the writing and is delivered; that connection is never reused. If the upstream then
  closed and a write failed (a reset), what the kernel had already received is still read.
- Responses: 1xx answers are skipped (101 is an error: the relay never asks for an upgrade);
  the body is handed over as it arrives (reading pauses past 256 KiB not yet taken, or the
  limit its reader set, `_Body.set_read_limit`, so a slow client slows the upstream instead of
  growing memory); chunked bodies are de-chunked, chunk
  extensions and trailers dropped (as httpx); `Content-Encoding` is left alone (the relay passes
  raw bytes). Framing is llhttp's, strict: duplicate or conflicting `Content-Length`, both
  framings, obs-fold, LF-only lines are errors. Whether a body ends with the connection is
  llhttp's decision too (`_needs_eof`); over TLS such a body is complete only with the peer's
  close_notify (a bare TCP FIN there is a `ReadError` caused by `ssl.SSLEOFError`: tls_error).
  A response head over 64 KiB is refused (`RemoteProtocolError`). A HEAD answer is complete at
  its head. Bytes after a complete response close the connection: they are never part of an
  answer.
- Pool: per (scheme, host, port); at most `max_connections` open (idle or busy) per worker, at
  most `max_keepalive_connections` kept idle, each for `keepalive_expiry` seconds, or less when
  the upstream's answer announced `Keep-Alive: timeout=N` (then N - 1 s). A request that
  finds the pool full waits up to the `pool` timeout for a connection to be released, then gets
  `httpx.PoolTimeout`. A connection goes back to the pool only after its response was read to
  the end with keep-alive on; one abandoned mid-response (client gone, error) is closed.
- Timeouts from the request's `timeout` extension: connect (TCP + TLS), read (each wait for
  bytes, the head included), write (each wait for the socket to drain), pool.
- Errors are httpx's types, as httpx's own transport raises them in the same situation, each
  with the underlying error as its cause (so a TLS failure is recognisable, never by its text):
  ConnectTimeout, ConnectError, PoolTimeout, ReadTimeout, WriteTimeout, WriteError,
  LocalProtocolError (a request it will not frame), ReadError (a reset, before or during the
  answer: the router's io_error), RemoteProtocolError ("Server disconnected without sending a
  response." when the upstream closed (FIN) before a response; "peer closed connection without
  sending complete body" mid-body; "Malformed ..." for what llhttp rejects).
- One retry, for the keep-alive race only: a request written on a connection taken from the idle
  pool that the upstream closes (FIN or reset) before a single byte of a response is sent again,
  once, on a new connection (the other idle connections to that upstream are closed too: they
  are as old). Why this is safe: a server closes a kept-alive connection without answering when
  it closes it as idle (its keep-alive timeout), which means it never read the request; every
  server we know (uvicorn, Node, nginx, Go) does so, and the client cannot tell that close apart
  from the request being lost in flight. Where it is not: an upstream that crashes while working
  on a request that arrived on a reused connection, before any byte of its answer, would see the
  request twice. Never retried: a fresh connection, anything after a response byte arrived, a
  timeout, a streamed body (it cannot be replayed). Otherwise a request is never re-sent once a
  byte of it was written (an LLM call costs money and is not idempotent); `upstream.send`
  retries only a failed connect.

Non-goals (use another engine, `API_ROUTER_UPSTREAM_TRANSPORT`, if one is needed): HTTP/2 or
HTTP/3; proxies (an `HTTP_PROXY` in the environment is ignored, by design); `Expect:
100-continue` on its own initiative; pipelining; automatic decompression, redirects, cookies,
authentication, or any header the relay did not put there; response trailers; lenient parsing
(obs-fold, bare LF, repeated lengths); client certificates or a TLS context per upstream (one
context per transport); retrying anything but the keep-alive race above.
"""

from __future__ import annotations

import asyncio
import collections
import os
import re
import socket
import ssl
from collections.abc import AsyncIterator, Callable
from typing import Any

import httptools
import httpx

from .upstream_fast import raw_headers

HEAD_LIMIT = 64 * 1024
# An idle connection is not reused in the last second before the upstream's announced
# `Keep-Alive: timeout=` (its close and our next request would cross).
KEEP_ALIVE_MARGIN_SECS = 1.0
READ_PAUSE_BYTES = 256 * 1024
_DEFAULT_PORTS = {b"http": 80, b"https": 443}
_CHUNK_END = b"0\r\n\r\n"
# RFC 9110 §5.1 / §5.5: a field name is a token; a field value is visible characters (and
# obs-text) with inner spaces and tabs, nothing at either end. The method is a token (§9.1), the
# target visible ASCII (RFC 9112 §3.2). The whole head is matched once.
_TOKEN = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]++"
_VCHARS = rb"[\x21-\x7e\x80-\xff]++"
_FIELD = _TOKEN + rb": (?:" + _VCHARS + rb"(?:[ \t]++" + _VCHARS + rb")*+)?\r\n"
_HEAD = re.compile(_TOKEN + rb" [\x21-\x7e]++ HTTP/1\.1\r\n(?:" + _FIELD + rb")*+\r\n")
_DIGITS = re.compile(r"[0-9]{1,18}")


# A wait's timer fires at most this early (loop timers have millisecond steps) and still counts.
TIMER_SLACK = 0.001


def _expire(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_exception(TimeoutError())


class _Conn(asyncio.Protocol):
    """One upstream connection: the socket, the llhttp parser and the response being read."""

    def __init__(self, pool: H1Transport, key: tuple[bytes, bytes, int]) -> None:
        self.pool = pool
        self.key = key
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.closed = False  # the socket is gone (by us or by the peer)
        self.error: BaseException | None = None  # why, if the peer or the parser ended it
        self.waiter: asyncio.Future[None] | None = None
        self.drain: asyncio.Future[None] | None = None
        self.idle_until = 0.0  # loop time after which an idle connection is not reused
        self.reused = False  # taken from the idle pool (not opened for this request)
        self.busy = False  # a request is using it (from acquire to release/close)
        self.reading_paused = False
        self.timer: asyncio.TimerHandle | None = None  # serves `wait`
        self.timer_at = 0.0  # when it fires (loop time)
        self.deadline: float | None = None  # of the wait in course
        self.sink: Callable[[], bool] | None = None  # `_Body.push`
        self._new_response()

    def _new_response(self) -> None:
        if getattr(self, "head_request", False):  # llhttp is still waiting for a HEAD's body
            self.parser = httptools.HttpResponseParser(self)
        self.status = 0
        self.reason = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.head_size = 0
        self.trailer_size = 0
        self.head_done = False
        self.complete = False
        self.keep_alive = False
        self.request_sent = False  # the whole request was written before its answer began
        self.got_bytes = False
        self.server_idle: float | None = None  # the upstream's `Keep-Alive: timeout=` if any
        self.chunks: collections.deque[bytes] = collections.deque()
        self.buffered = 0
        self.read_limit = READ_PAUSE_BYTES  # untaken body bytes past which reading pauses
        self.head_request = False

    # -- asyncio.Protocol ---------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if not self.busy or self.complete:
            # Bytes nobody asked for (idle, or after a complete response): never part of an
            # answer, and this connection cannot be trusted again.
            self.abort()
            return
        self.got_bytes = True
        if not self.head_done:
            self.head_size += len(data)  # llhttp holds an unterminated line without a callback
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(httpx.RemoteProtocolError("Unexpected protocol upgrade from the upstream"))
        except httptools.HttpParserError as e:
            self._fail(httpx.RemoteProtocolError("Malformed response from the upstream"), e)
        if not self.head_done and self.head_size > HEAD_LIMIT and self.error is None:
            self._fail(httpx.RemoteProtocolError("Upstream response head too large"))
        sink = self.sink
        if sink is not None and self.chunks and self.error is None and sink():
            if not (self.complete or self.closed):
                return  # handed over at once (`_Body.push`): no reader to wake
        self._pause_if_full()
        self._wake()

    def eof_received(self) -> bool | None:
        return None  # close the transport; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is not None and self.busy and not self.complete and not self.closed:
            self._read_what_arrived()
        if not self.closed:
            self.closed = True
            if self.error is None and self.busy and not self.complete:
                self.error = self._ended(exc)
            self.pool._closed(self)
        self._wake()
        self.let_go()

    def let_go(self) -> None:
        """The socket is gone: drop the parser, which holds this connection's methods, so that
        the two are freed by reference counting, not left as a cycle for Python's collector
        (bench/README.md, "Garbage collection"). Nothing is parsed after this."""
        self.parser = httptools.HttpResponseParser(_NO_CALLBACKS)

    def pause_writing(self) -> None:
        if self.drain is None or self.drain.done():
            self.drain = self.loop.create_future()

    def resume_writing(self) -> None:
        d = self.drain
        if d is not None and not d.done():
            d.set_result(None)

    def _read_what_arrived(self) -> None:
        """A write failed (the upstream answered early, then closed with our upload unread,
        which resets the connection): asyncio drops the socket without reading what the kernel
        already received, which may be the whole answer. Read it (plain TCP only; the socket is
        still open during connection_lost), as httpcore reads after a failed write."""
        transport = self.transport
        if transport is None or transport.get_extra_info("ssl_object") is not None:
            return
        sock = transport.get_extra_info("socket")
        fd = sock.fileno() if sock is not None else -1
        if fd < 0:
            return
        with socket.socket(fileno=os.dup(fd)) as dup:
            while self.busy and not self.complete and not self.closed:
                try:
                    data = dup.recv(65536, socket.MSG_DONTWAIT)
                except OSError:
                    return
                if not data:
                    return
                self.data_received(data)

    def _ended(self, exc: Exception | None) -> BaseException | None:
        """The connection ended while a response was expected: complete (a body delimited by
        the end of the connection, as llhttp frames it), or the error httpx's own transport
        raises: a reset (`exc`) is a `ReadError`, a FIN before the end a `RemoteProtocolError`,
        a TLS stream cut without close_notify a `ReadError` caused by `ssl.SSLEOFError`."""
        if exc is None and self.head_done and _needs_eof(self.status, self.headers):
            if self.key[0] == b"http" or _close_notify_received(self.transport):
                self.complete = True
                self.keep_alive = False
                return None
            exc = ssl.SSLEOFError(ssl.SSL_ERROR_EOF, "TLS stream ended without close_notify")
        err: httpx.HTTPError
        if exc is not None:
            err = httpx.ReadError("Connection to the upstream broke")
            err.__cause__ = exc
        elif self.head_done:
            err = httpx.RemoteProtocolError("peer closed connection without sending complete body")
        else:
            err = httpx.RemoteProtocolError("Server disconnected without sending a response.")
        return err

    # -- llhttp callbacks -----------------------------------------------------------------------
    def on_message_begin(self) -> None:
        if self.complete:  # a second response in the same packet: never relayed
            raise httpx.RemoteProtocolError("Unexpected bytes after a complete response")

    def on_status(self, status: bytes) -> None:
        self.reason += status

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self.head_done:
            self.headers.append((name, value))
            return
        # After the head: a chunked body's trailer, dropped (as httpx), and bounded like a head
        # (an endless trailer would otherwise hold the exchange open until the read timeout).
        self.trailer_size += len(name) + len(value) + 4
        if self.trailer_size > HEAD_LIMIT:
            raise httpx.RemoteProtocolError("Upstream trailers too large")

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if 100 <= status < 200:
            if status == 101:
                raise httpx.RemoteProtocolError("Unexpected protocol switch from the upstream")
            self.reason = b""  # an informational answer (100 Continue): the real one follows
            self.headers = []
            return
        if len(self.reason) + sum(len(k) + len(v) + 4 for k, v in self.headers) > HEAD_LIMIT:
            raise httpx.RemoteProtocolError("Upstream response head too large")
        self.status = status
        self.keep_alive = self.parser.should_keep_alive()
        self.server_idle = _keep_alive_timeout(self.headers)
        self.head_done = True
        if self.head_request:  # llhttp cannot be told a HEAD answer has no body: a new parser
            self.complete = True  # for the next response (_new_response); bytes after: on_body

    def on_body(self, body: bytes) -> None:
        if self.complete:  # a HEAD answer's "body": bytes after a complete response
            raise httpx.RemoteProtocolError("Unexpected bytes after a complete response")
        self.chunks.append(body)
        self.buffered += len(body)

    def _pause_if_full(self) -> None:
        """Reading pauses while more than `read_limit` body bytes wait to be taken (after a
        read, once an offer had its chance to take them: no pause and resume for a read it
        passes on at once); `take` resumes it."""
        if (
            self.buffered > self.read_limit
            and not self.reading_paused
            and self.transport is not None
            and not self.closed
        ):
            self.reading_paused = True
            self.transport.pause_reading()

    def on_message_complete(self) -> None:
        if self.head_done:
            self.complete = True

    # -- used by the transport ------------------------------------------------------------------
    def _fail(self, err: BaseException, cause: BaseException | None = None) -> None:
        if self.error is None:
            if cause is not None and cause.__context__ is not None:
                inner = cause.__context__
                if isinstance(inner, httpx.HTTPError):  # raised by one of our callbacks
                    err = inner
            err.__cause__ = err.__cause__ or cause
            self.error = err
        self.abort()

    def raised(self) -> BaseException:
        """The recorded error, to be raised now by a caller that then discards this
        connection (it is closed already when `_fail` or `connection_lost` recorded it). The
        connection forgets it: once raised, the error's traceback refers to frames that refer
        to this connection, a cycle Python's collector would have to find otherwise."""
        err = self.error
        assert err is not None
        self.error = None
        return err

    def _wake(self) -> None:
        w = self.waiter
        if w is not None and not w.done():
            w.set_result(None)
        if self.head_done or self.closed:  # a writer waiting to drain stops: answered or gone
            d = self.drain
            if d is not None and not d.done():
                d.set_result(None)

    async def wait(self, limit: float | None) -> None:
        """Until the protocol has news (bytes, end, error); TimeoutError after `limit` s.

        One timer per connection serves its waits: a wait whose deadline is at or after the
        armed timer's keeps that timer, which, firing before the deadline of the wait in
        course, re-arms itself for it. A relay waits once per upstream event, each time until
        a little later (its next heartbeat): one timer per heartbeat interval instead of a
        timer started and cancelled per event (bench/README.md, "Relay per event")."""
        fut = self.loop.create_future()
        self.waiter = fut
        if limit is not None:
            deadline = self.loop.time() + limit
            self.deadline = deadline
            timer = self.timer
            if timer is None or self.timer_at > deadline:
                if timer is not None:
                    timer.cancel()
                self.timer = self.loop.call_at(deadline, self._on_timer)
                self.timer_at = deadline
        try:
            await fut
        finally:
            self.waiter = None
            self.deadline = None

    def _on_timer(self) -> None:
        self.timer = None
        waiter, deadline = self.waiter, self.deadline
        if waiter is None or waiter.done() or deadline is None:
            return  # no wait in course: the next one arms a timer of its own
        if self.loop.time() >= deadline - TIMER_SLACK:
            waiter.set_exception(TimeoutError())
        else:
            self.timer = self.loop.call_at(deadline, self._on_timer)
            self.timer_at = deadline

    def stop_timer(self) -> None:
        """The connection is released or gone: its timer must not keep it alive."""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def take(self) -> bytes:
        chunks = self.chunks
        data = chunks.popleft() if len(chunks) == 1 else b"".join(chunks)
        chunks.clear()
        self.buffered = 0
        if self.reading_paused and self.transport is not None and not self.closed:
            self.reading_paused = False
            self.transport.resume_reading()
        return data

    def reusable(self) -> bool:
        return (
            self.complete
            and self.keep_alive
            and self.request_sent
            and not self.closed
            and self.error is None
        )

    def abort(self) -> None:
        self.keep_alive = False
        if self.transport is not None and not self.closed:
            # Our own close frees the pool slot now (connection_lost, later, then skips it): a
            # caller that evicts one idle connection to make room sees the room at once.
            self.closed = True
            self.transport.abort()
            self.pool._closed(self)

    async def drained(self, limit: float | None) -> None:
        d = self.drain
        if d is None or d.done():
            return
        try:
            await asyncio.wait_for(asyncio.shield(d), limit)
        except TimeoutError:
            raise httpx.WriteTimeout("Timed out writing to the upstream") from None


class _Body(httpx.AsyncByteStream):
    """The response body as it arrives; the connection goes back to the pool at its end."""

    def __init__(self, conn: _Conn, read_timeout: float | None) -> None:
        self._conn: _Conn | None = conn
        self._timeout = read_timeout
        self._last: float | None = None  # loop time of the last bytes handed over (receive)
        # An offer failed the body (`fail`): its error is raised even when the same packet
        # completed the response (bytes after a complete response are only the connection's
        # fault: the response stays whole).
        self._refused = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        conn = self._conn
        if conn is None:
            return
        while True:
            if conn.chunks:
                yield conn.take()
                continue
            if self._refused and conn.error is not None:  # `fail`: before `complete`
                self._discard()
                raise conn.raised()
            if conn.complete:
                break
            if conn.error is not None:
                self._discard()
                raise conn.raised()
            if conn.closed:  # ended without a recorded error (should not happen): incomplete
                self._discard()
                raise httpx.RemoteProtocolError(
                    "peer closed connection without sending complete body"
                )
            try:
                await conn.wait(self._timeout)
            except TimeoutError:
                self._discard()
                raise httpx.ReadTimeout("Timed out reading from the upstream") from None
        self._done()

    async def receive(self, limit: float) -> bytes | None:
        """The next bytes of the body, b"" at its end, or None when none came within `limit`
        seconds; unlike iterating, a caller may then wait again (a relay writing heartbeats
        between upstream events needs no task per read this way). The read timeout still
        applies: no byte for that long is `httpx.ReadTimeout`, as when iterating."""
        conn = self._conn
        if conn is None:
            return b""
        loop = conn.loop
        limit_at = loop.time() + limit
        while True:
            if conn.chunks:
                self._last = loop.time()
                return conn.take()
            if self._refused and conn.error is not None:  # `fail`: before `complete`
                self._discard()
                raise conn.raised()
            if conn.complete:
                self._done()
                return b""
            if conn.error is not None:
                self._discard()
                raise conn.raised()
            if conn.closed:
                self._discard()
                raise httpx.RemoteProtocolError(
                    "peer closed connection without sending complete body"
                )
            now = loop.time()
            if self._last is None:
                self._last = now
            read_until = self._last + self._timeout if self._timeout is not None else None
            wait = limit_at - now if read_until is None else min(limit_at, read_until) - now
            try:
                await conn.wait(max(0.0, wait))
            except TimeoutError:
                # An offer (`push`) may have taken bytes meanwhile: the read timeout runs from
                # the last bytes taken, whoever took them.
                now = loop.time()
                if self._timeout is not None and now >= self._last + self._timeout - TIMER_SLACK:
                    self._discard()
                    raise httpx.ReadTimeout("Timed out reading from the upstream") from None
                if now >= limit_at - TIMER_SLACK:
                    return None

    def read_now(self) -> bytes | None:
        """The whole body when all of it is here (a JSON answer usually comes with its head),
        the connection back in the pool, as iterating it to its end would leave it; else None,
        and nothing taken."""
        conn = self._conn
        if conn is None or not conn.complete:
            return None
        data = conn.take() if conn.chunks else b""
        self._done()
        return data

    def set_read_limit(self, limit: int) -> None:
        """Reading from the upstream pauses past `limit` bytes not yet taken (default 256 KiB):
        a relay whose client is slow holds at most that much read ahead, plus one read."""
        conn = self._conn
        if conn is not None:
            conn.read_limit = limit
            conn._pause_if_full()

    def has_bytes(self) -> bool:
        """Whether body bytes (or the body's end) arrived and wait to be taken."""
        conn = self._conn
        return conn is not None and (bool(conn.chunks) or conn.complete)

    def ending(self) -> bool:
        """Whether the body's end arrived: what waits to be taken (or was just taken) is its
        last bytes, and the next `receive` returns b"" at once."""
        conn = self._conn
        return conn is None or (conn.complete and conn.error is None)

    def push(self, offer: Callable[[], bool] | None) -> None:
        """While set, `offer()` is called in the connection's data callback whenever body bytes
        arrived, before a reader waiting in `receive` is woken: an offer that takes them
        (`take_now`) and returns True spares that wake-up, so a relay can pass each piece on
        without a task switch per piece. An offer that returns False (it could not pass them
        on now, or it failed the body with `fail`) leaves what it did not take for `receive`,
        which wakes as usual. None stops it; so does the end of the body."""
        conn = self._conn
        if conn is not None:
            conn.sink = offer

    def take_now(self) -> bytes:
        """What arrived (for an offer): as `receive` would have returned it."""
        conn = self._conn
        assert conn is not None
        self._last = conn.loop.time()
        return conn.take()

    def fail(self, exc: BaseException) -> None:
        """End the body with `exc` (an offer that could not handle what it took): the upstream
        connection is closed and `receive` raises `exc`."""
        conn = self._conn
        if conn is not None:
            self._refused = True
            conn._fail(exc)

    def _done(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.pool._release(conn)

    def _discard(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.abort()
            conn.pool._release(conn)

    async def aclose(self) -> None:
        conn = self._conn
        if conn is not None:
            if conn.complete and not conn.chunks:
                self._done()
            else:
                self._discard()  # abandoned mid-response: the connection is not reusable

    def __del__(self) -> None:  # never leak a pool slot, even if nobody closed the response
        if self._conn is not None:
            try:
                self._discard()
            except RuntimeError:  # the event loop is already closed: nothing left to free
                pass


class H1Transport(httpx.AsyncBaseTransport):
    """httpx transport: HTTP/1.1 over pooled asyncio connections (module docstring)."""

    def __init__(
        self,
        limits: httpx.Limits | None = None,
        ssl_context: ssl.SSLContext | None = None,
        fast_headers: bool = True,
    ) -> None:
        """`fast_headers`: a response's header list handed to httpx already built
        (`upstream_fast.raw_headers`, part of the `request` fast path; False: `httpx.Headers`
        builds it)."""
        self._fast_headers = fast_headers
        limits = limits or httpx.Limits()
        self._max = limits.max_connections or 1 << 30
        self._max_idle = (
            limits.max_keepalive_connections
            if limits.max_keepalive_connections is not None
            else self._max
        )
        expiry = limits.keepalive_expiry
        self._expiry = float("inf") if expiry is None else expiry
        self._ssl = ssl_context
        self._idle: dict[tuple[bytes, bytes, int], list[_Conn]] = {}
        self._open = 0  # connections open or being opened
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()

    # -- pool -------------------------------------------------------------------------------------
    def _ssl_context(self) -> ssl.SSLContext:
        if self._ssl is None:
            self._ssl = httpx.create_ssl_context()
            self._ssl.set_alpn_protocols(["http/1.1"])
        return self._ssl

    def _closed(self, conn: _Conn) -> None:
        """A connection's socket is gone (called once: from `abort`, or from connection_lost when
        the peer closed it)."""
        conn.stop_timer()
        self._open -= 1
        idle = self._idle.get(conn.key)
        if idle and not conn.busy and conn in idle:
            idle.remove(conn)
        self._wake_one()

    def _wake_one(self) -> None:
        while self._waiters:
            w = self._waiters.popleft()
            if not w.done():
                w.set_result(None)
                return

    def _release(self, conn: _Conn) -> None:
        if not conn.busy:
            return
        conn.stop_timer()
        conn.sink = None
        conn.busy = False
        if conn.reusable():
            idle = self._idle.setdefault(conn.key, [])
            if len(idle) < self._max_idle:
                keep = self._expiry
                if conn.server_idle is not None:  # the upstream says when it closes: before
                    keep = min(keep, conn.server_idle - KEEP_ALIVE_MARGIN_SECS)
                conn.idle_until = conn.loop.time() + keep
                conn._new_response()
                idle.append(conn)
                self._wake_one()
                return
        conn.abort()  # not reusable, or enough idle ones: close (pool._closed wakes a waiter)

    async def _acquire(
        self, key: tuple[bytes, bytes, int], timeouts: dict[str, Any], fresh: bool = False
    ) -> _Conn:
        """A connection for `key`: an idle one (unless `fresh`: a new one, and the idle ones of
        `key` are closed, since they are as old as the one that just failed), else a new one."""
        loop = asyncio.get_running_loop()
        deadline: float | None = None
        while True:
            idle = self._idle.get(key)
            if idle:
                now = loop.time()
                while idle:
                    conn = idle.pop()
                    if not fresh and not conn.closed and now < conn.idle_until:
                        conn.busy = True
                        conn.reused = True
                        return conn
                    conn.abort()
            if self._open < self._max:
                return await self._connect(key, timeouts.get("connect"))
            if self._evict_idle():
                continue
            pool = timeouts.get("pool")
            if deadline is None and pool is not None:
                deadline = loop.time() + pool
            fut = loop.create_future()
            self._waiters.append(fut)
            handle = loop.call_at(deadline, _expire, fut) if deadline is not None else None
            try:
                await fut
            except TimeoutError:
                raise httpx.PoolTimeout("No free upstream connection in time") from None
            except asyncio.CancelledError:
                if fut.done() and not fut.cancelled():
                    self._wake_one()  # the slot this waiter was woken for goes to the next one
                raise
            finally:
                if handle is not None:
                    handle.cancel()

    def _evict_idle(self) -> bool:
        """At the cap with idle connections to another host: close one to make room."""
        for idle in self._idle.values():
            if idle:
                conn = idle.pop(0)
                conn.abort()
                return True
        return False

    async def _connect(self, key: tuple[bytes, bytes, int], connect_secs: float | None) -> _Conn:
        scheme, host, port = key
        loop = asyncio.get_running_loop()
        ctx = self._ssl_context() if scheme == b"https" else None
        hostname = host.decode("ascii")
        self._open += 1
        conn = _Conn(self, key)
        conn.busy = True
        try:
            async with asyncio.timeout(connect_secs):
                await loop.create_connection(
                    lambda: conn,
                    hostname,
                    port,
                    ssl=ctx,
                    server_hostname=hostname if ctx is not None else None,
                )
        except TimeoutError as e:
            self._connect_failed(conn)
            raise httpx.ConnectTimeout("Timed out connecting to the upstream") from e
        except OSError as e:  # refused, unreachable, DNS, reset, TLS (ssl.SSLError)
            self._connect_failed(conn)
            raise httpx.ConnectError("Could not connect to the upstream") from e
        except BaseException:
            self._connect_failed(conn)
            raise
        return conn

    def _connect_failed(self, conn: _Conn) -> None:
        if conn.transport is not None:
            conn.abort()
        else:  # never connected: no connection_lost will come
            conn.closed = True
            self._closed(conn)
            conn.let_go()

    # -- httpx.AsyncBaseTransport ------------------------------------------------------------------
    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        scheme = url.raw_scheme
        if scheme not in _DEFAULT_PORTS:
            raise httpx.UnsupportedProtocol("The upstream URL must be http:// or https://")
        key = (scheme, url.raw_host, url.port or _DEFAULT_PORTS[scheme])
        method = request.method.encode("ascii")
        head = _head(method, url.raw_path, request.headers.raw)
        framing: tuple[bool, int] | None = None
        try:
            body: bytes | None = request.content
        except httpx.RequestNotRead:
            body = None
            framing = _framing(request.headers)  # refused before connecting, if it must be
        timeout: dict[str, Any] = request.extensions.get("timeout", {})
        conn = await self._acquire(key, timeout)
        try:
            await self._exchange(conn, head, body, framing, request, timeout)
        except Exception as e:
            if not (_stale(conn, e) and body is not None):
                raise
            # The keep-alive race: the upstream closed this idle connection as the request
            # went out. Once, on a new connection (module docstring: why this is safe).
            conn = await self._acquire(key, timeout, fresh=True)
            await self._exchange(conn, head, body, framing, request, timeout)
        return httpx.Response(
            conn.status,
            headers=raw_headers(conn.headers) if self._fast_headers else conn.headers,
            stream=_Body(conn, timeout.get("read")),
            extensions={"http_version": b"HTTP/1.1", "reason_phrase": conn.reason},
        )

    async def _exchange(
        self,
        conn: _Conn,
        head: bytes,
        body: bytes | None,
        framing: tuple[bool, int] | None,
        request: httpx.Request,
        timeouts: dict[str, Any],
    ) -> None:
        """Write the request and wait for the response head; on any failure the connection is
        closed and released before the error propagates."""
        conn.head_request = request.method == "HEAD"
        try:
            await self._write(conn, head, body, framing, request, timeouts.get("write"))
            read_timeout = timeouts.get("read")
            while not conn.head_done:
                if conn.error is not None:
                    raise conn.raised()
                if conn.closed:
                    raise httpx.RemoteProtocolError(
                        "Server disconnected without sending a response."
                    )
                try:
                    await conn.wait(read_timeout)
                except TimeoutError:
                    raise httpx.ReadTimeout("Timed out reading from the upstream") from None
        except BaseException:
            conn.abort()
            self._release(conn)
            raise

    async def _write(
        self,
        conn: _Conn,
        head: bytes,
        body: bytes | None,
        framing: tuple[bool, int] | None,
        request: httpx.Request,
        write_timeout: float | None,
    ) -> None:
        """Write the request. An answer that begins before the request is all written (a 413 or
        401 during an upload) ends the writing: the caller reads that answer, and the connection
        is not reused (`request_sent` stays false: the upstream's view of the rest is unknown)."""
        transport = conn.transport
        assert transport is not None
        if body is not None:
            if body:
                transport.writelines((head, body))
            else:
                transport.write(head)
            await conn.drained(write_timeout)
            self._check_written(conn)
            conn.request_sent = not conn.head_done
            return
        assert framing is not None
        chunked, declared = framing
        transport.write(head)
        stream = request.stream
        assert isinstance(stream, httpx.AsyncByteStream)
        sent = 0
        async for chunk in stream:
            if conn.head_done or conn.closed:  # answered (or gone) before the body was sent
                break
            if not chunk:
                continue
            if chunked:
                transport.writelines((b"%x\r\n" % len(chunk), chunk, b"\r\n"))
            else:
                sent += len(chunk)
                if sent > declared:  # never a byte past the declared frame (h11 says the same)
                    raise httpx.LocalProtocolError("Too much data for declared Content-Length")
                transport.write(chunk)
            await conn.drained(write_timeout)
        else:
            if conn.head_done or conn.closed:
                pass
            elif chunked:
                transport.write(_CHUNK_END)
            elif sent < declared:
                raise httpx.LocalProtocolError("Too little data for declared Content-Length")
            await conn.drained(write_timeout)
            self._check_written(conn)
            conn.request_sent = not conn.head_done
            return
        self._check_written(conn)

    @staticmethod
    def _check_written(conn: _Conn) -> None:
        if conn.closed and not conn.head_done and not conn.got_bytes:
            err = httpx.WriteError("Connection to the upstream broke while sending")
            err.__cause__ = conn.error
            raise err

    async def aclose(self) -> None:
        for idle in self._idle.values():
            for conn in idle:
                conn.abort()
            idle.clear()


def _stale(conn: _Conn, err: Exception) -> bool:
    """Whether `err` is the keep-alive race: a connection taken from the idle pool, closed by
    the upstream before a single byte of a response (not a timeout: a silent upstream is not a
    closed one)."""
    return (
        conn.reused
        and conn.closed
        and not conn.got_bytes
        and isinstance(err, (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError))
    )


def _framing(headers: httpx.Headers) -> tuple[bool, int]:
    """How a streamed request body is framed: (chunked, declared Content-Length). Refused
    (`LocalProtocolError`, before anything is written) when the upstream could read it two ways:
    both headers, several different lengths, a length that is not digits, a transfer coding
    other than chunked, or neither header (the head alone would be a complete request: httpx
    always frames a stream, so only a relay that dropped the header gets here)."""
    te = headers.get_list("transfer-encoding")
    lengths = {v.strip() for v in headers.get_list("content-length", split_commas=True)}
    if te:
        if lengths or [v.strip().lower() for v in te] != ["chunked"]:
            raise httpx.LocalProtocolError("Invalid request body framing; not forwarded")
        return True, 0
    if len(lengths) != 1 or not _DIGITS.fullmatch(length := lengths.pop()):
        raise httpx.LocalProtocolError("Invalid request body framing; not forwarded")
    return False, int(length)


def _needs_eof(status: int, headers: list[tuple[bytes, bytes]]) -> bool:
    """Whether llhttp frames this response's body by the end of the connection. httptools does
    not expose `llhttp_message_needs_eof` (nor `llhttp_finish`), so the parser is asked another
    way: the head is parsed again as HTTP/1.1 without its Connection headers, where
    `should_keep_alive()` is false exactly when the body needs EOF. Only at an EOF mid-message
    (rare), never per request."""
    parser = httptools.HttpResponseParser(_NO_CALLBACKS)
    lines = [b"HTTP/1.1 %d -\r\n" % status]
    for name, value in headers:
        if name.lower() not in (b"connection", b"proxy-connection"):
            lines += (name, b": ", value, b"\r\n")
    lines.append(b"\r\n")
    try:
        parser.feed_data(b"".join(lines))
    except httptools.HttpParserError:
        return False
    return not parser.should_keep_alive()


_NO_CALLBACKS = object()


def _close_notify_received(transport: asyncio.BaseTransport | None) -> bool:
    """When a TLS connection has ended: whether the peer sent close_notify. asyncio's SSL layer
    treats a bare TCP FIN as an end too (uvloop's calls no `eof_received` then, asyncio's does),
    so the TLS object is asked: after close_notify a read is SSL_ERROR_ZERO_RETURN (b"", or
    SSLZeroReturnError once our own close_notify went out too); after a bare FIN it still wants
    bytes (the layer never feeds it the EOF). All the data was handed over before."""
    sslobj = transport.get_extra_info("ssl_object") if transport is not None else None
    if sslobj is None:
        return False
    try:
        return sslobj.read(1) == b""
    except ssl.SSLZeroReturnError:
        return True
    except (ssl.SSLError, ValueError):
        return False


def _keep_alive_timeout(headers: list[tuple[bytes, bytes]]) -> float | None:
    """The `timeout=` of a `Keep-Alive` response header (seconds the upstream keeps an idle
    connection), or None."""
    for name, value in headers:
        if name.lower() == b"keep-alive":
            for param in value.split(b","):
                key, _, number = param.strip().partition(b"=")
                if key.strip().lower() == b"timeout":
                    try:
                        return max(0.0, float(number.strip()))
                    except ValueError:
                        return None
    return None


def _head(method: bytes, target: bytes, headers: list[tuple[bytes, bytes]]) -> bytes:
    parts = [method, b" ", target, b" HTTP/1.1\r\n"]
    for name, value in headers:
        parts += (name, b": ", value, b"\r\n")
    parts.append(b"\r\n")
    head = b"".join(parts)
    # A name or value outside the grammar is never sent: a CR, LF or NUL would split a client's
    # header into another header (or request) upstream; other control bytes, spaces at either
    # end of a value, or a name that is not a token are read differently by different servers.
    # (One line per header: a value holding "\r\nName: x" would match the grammar as two.)
    if head.count(b"\n") != len(headers) + 2 or _HEAD.fullmatch(head) is None:
        raise httpx.LocalProtocolError("A header name or value is not valid HTTP; not forwarded")
    return head
