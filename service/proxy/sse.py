"""Server-Sent-Events relay (SPEC §6): upstream events to the client, whole, in order, flushed.

- Upstream non-2xx before anything was committed: a normal response with that status and body.
- No upstream response head within `heartbeatIntervalSecs`: the 200 SSE head is committed early
  and heartbeats start; a later failure or non-2xx answer becomes an `event: error`.
- Events are written as soon as they are complete (`events.EventFramer`), never split, so a
  heartbeat (`: heartbeat` + blank line, after `heartbeatIntervalSecs` without a write) always
  falls between two events.
- Back-pressure: the next upstream read starts only after the previous write was accepted, and
  the client transport queues at most `bufferSize` bytes before a write waits; memory per stream
  is that plus one event.
- Client gone (Sanic cancels the handler): the upstream response is closed (its connection is
  dropped, not pooled) and the cancellation propagates; the lifecycle listeners record the
  request as 499 (service.observability.lifecycle), or as 200 when the stream's last event
  (`ends_answer`) or its end had been written: the client left after its answer.
- Upstream breaks mid-stream: `event: error` with a JSON `data:` line, then the end
  (`error_type` `stream_error`).
- Who writes (fast path `stream`, the h1 engine): once the head is out, each upstream piece is
  relayed from the upstream connection's data callback (`_Offer`), so a paced stream costs no
  task wake-up per event. The relay's task still owns everything else and takes a piece itself
  whenever the offer declines: while it is writing (nothing passes a piece it holds), while
  the client's transport is paused or closing, past the idle time or the deadline, or when a
  piece fails. Either way the same `_Pieces` makes the events, so the client sees the same
  bytes (tests/integration/test_fast_paths.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import orjson
from sanic.compat import Header
from sanic.response import HTTPResponse

from ..config.model import CHAT, COMPLETIONS, MESSAGES, RESPONSES, ResolvedEndpoint
from ..context import RouterRequest
from ..errors import (
    RouterError,
    ShuttingDown,
    StreamError,
    UpstreamError,
    UpstreamJSONError,
    UpstreamProtocolError,
    UpstreamTimeout,
    error_body,
)
from ..server.stream_write import ChunkWriter, chunk_writer
from ..state import RequestState
from ..translate import BadUpstreamEvent, Translator
from ..translate.common import MALFORMED, error_event
from ..translate.responses import ResponsesTranslator
from . import headers as h
from .body import INFLATED_CODINGS, content_coding
from .events import (
    HEARTBEAT,
    EventFramer,
    EventTooLarge,
    UsageTracker,
    answer_facts,
    malformed,
    plain_events,
    split_events,
)
from .outgoing import early_head, json_answer, keep_answer
from .upstream import map_exception, send

SSE_HEADERS = (("Cache-Control", "no-cache"), ("X-Accel-Buffering", "no"))
_NOT_FROM_UPSTREAM = frozenset({"cache-control", "content-type", "content-encoding"})
# Of an upstream error body that arrives after the head was committed, this much is kept for
# the error event; the rest is read and dropped so that the connection can be reused.
MAX_ERROR_BODY = 64 * 1024
# A stream past its idle time or its total deadline ends with this error event (`timeout`).
STREAM_TIMEOUT = UpstreamTimeout("The upstream stream exceeded its idle time or its deadline")
# One still open when a stopping worker's drain time is about to end ends with this one, in the
# client's protocol, a moment before Sanic aborts the connections (service.server.shutdown).
SHUTTING_DOWN = ShuttingDown()
_drain_until = [math.inf]  # this worker's: the monotonic time streams must have ended by
# The upstream bodies of this worker's open streams that can be ended from outside (`fail`, the
# h1 engine's): at the drain's end each is, so that a stream waiting in a long heartbeat slice
# (a silent upstream) ends then too, not a heartbeat later when Sanic has cut it already.
_LIVE: set[Any] = set()


class _DrainEnd(Exception):
    """Raised from a live stream's upstream body when the drain time is up."""


def drain_until(when: float) -> None:
    """The worker stops: streams still open at the monotonic time `when` end with
    SHUTTING_DOWN (service.server.shutdown). `math.inf`: not stopping."""
    _drain_until[0] = when
    if when != math.inf:
        asyncio.get_running_loop().call_later(max(0.0, when - time.monotonic()), _end_live)


def _end_live() -> None:
    for body in list(_LIVE):
        body.fail(_DrainEnd())


def _by(deadline: float) -> Callable[[], float]:
    """`deadline`, or the drain's end when that comes first (a function of its own: a lambda in
    `relay_stream` would make a closure cell on every request)."""
    return lambda: min(deadline, _drain_until[0])


def _ended_early() -> RouterError:
    """Why a stream's wait ended before its upstream's next event: the drain, or its own time."""
    return SHUTTING_DOWN if time.monotonic() >= _drain_until[0] else STREAM_TIMEOUT


# The events after which a stream's protocol sends nothing more: the OpenAI `[DONE]` (also what
# the translators end OpenAI streams with), Anthropic's `message_stop`, the Responses API's
# final events; with or without the space SSE allows after the colon, before LF or CRLF.
_LAST_EVENT_NAMES = (
    b"message_stop",
    b"response.completed",
    b"response.incomplete",
    b"response.failed",
)
_LAST_EVENTS = tuple(
    field + space + value + end
    for field, value in (
        (b"data:", b"[DONE]"),
        *((b"event:", name) for name in _LAST_EVENT_NAMES),
    )
    for space in (b" ", b"")
    for end in (b"\n", b"\r")
)


def ends_answer(piece: bytes) -> bool:
    """`piece` (whole events, as the upstream framed them: LF, CRLF or CR) ends with the
    stream's last event (checked on every piece: a scan from the end for the blank line before
    the last event, no split; `ends_stream` reads the tail once, at the end)."""
    end = len(piece) - 2
    # The last blank line of each framing; each search starts where the one before found its
    # own (only a later one can be the last), so a piece in one framing is scanned once.
    lf = piece.rfind(b"\n\n", 0, end)
    crlf = piece.rfind(b"\n\r\n", max(lf, 0), end)
    # (CR alone; a CRLF-framed piece never has two CRs in a row)
    cr = piece.rfind(b"\r\r", max(lf, crlf, 0), end)
    start = max(lf + 2 if lf >= 0 else 0, crlf + 3 if crlf >= 0 else 0, cr + 2 if cr >= 0 else 0)
    if start == 0 and piece[:1] == b"\n":  # the LF of a CRLF cut at its CR (EventFramer)
        start = 1
    return piece.startswith(_LAST_EVENTS, start)


# What may end a Messages or Responses stream: its last event, or an error event of its own.
_FINAL_EVENT_NAMES = frozenset({*_LAST_EVENT_NAMES, b"error"})


def _fields(tail: bytes) -> list[list[tuple[bytes, bytes]]]:
    """The events of `tail` (the last bytes relayed, whole events or one without its blank
    line; any framing: LF, CRLF, CR), last first, each as its (field, value) lines."""
    text = tail.replace(b"\r\n", b"\n").replace(b"\r", b"\n").strip(b"\n")
    events = []
    for event in reversed(text.split(b"\n\n")):
        lines = []
        for line in event.split(b"\n"):
            field, _, value = line.partition(b":")
            lines.append((field, value[1:] if value.startswith(b" ") else value))
        events.append(lines)
    return events


def ends_stream(tail: bytes) -> bool:
    """Whether the last event in `tail` ends a Messages or Responses stream: an `event:` line
    (wherever in the event) naming a final event or an error, or `data: [DONE]`. Run once, at
    the end."""
    last = _fields(tail)[0]
    return any(
        (field == b"event" and value in _FINAL_EVENT_NAMES)
        or (field == b"data" and value == b"[DONE]")
        for field, value in last
    )


def ends_chat(tail: bytes) -> bool:
    """Whether the last event with data in `tail` shows a Chat Completions (or Completions)
    stream's answer ended: `[DONE]`, a choice with a finish reason, a usage (the usage chunk
    after the finish, whatever its `choices`: servers differ), or an error object of the
    upstream's own. Comment events after it are skipped. Run once, at the end of a stream
    without `[DONE]`. (A server that sends a usage in every chunk has a cut after any of them
    taken for whole, as before: an error appended to a whole answer would be worse.)"""
    for event in _fields(tail):
        data = [value for field, value in event if field == b"data"]
        if not data:
            continue
        value = b"\n".join(data)
        if value == b"[DONE]":
            return True
        try:
            obj = orjson.loads(value)
        except orjson.JSONDecodeError:
            return False
        if not isinstance(obj, dict):
            return False
        if "error" in obj or isinstance(obj.get("usage"), dict):
            return True
        return bool(answer_facts(obj, {}).get("finish_reasons"))
    return False


# The Responses API (a coding agent such as Codex reads events, not comments, to reset its idle
# timer): its heartbeat is an event of a type no client acts on, and a broken stream ends with
# `response.failed`, the event its clients wait for, carrying the error's code and message.
# Before the stream's first event the heartbeat is the comment of the other routes: an event
# before `response.created` breaks the official SDK's stream reader.
RESPONSES_HEARTBEAT = b'event: keepalive\ndata: {"type":"keepalive"}\n\n'


def responses_error_body(err: RouterError, status: int | None = None) -> bytes:
    """The router's own error for a Responses stream: the code is one of the API's own
    (`rate_limit_exceeded` or `server_error`, as the SDK's `ResponseError.code` lists them);
    the router's own code is the completion line's `error_type`. `status`: the upstream's, when
    the error stands for its answer."""
    code = "rate_limit_exceeded" if (status or err.status) == 429 else "server_error"
    return orjson.dumps({"error": {"message": err.message, "type": err.type, "code": code}})


def responses_failed_event(data: bytes, created_id: str | None = None) -> bytes:
    """`response.failed` for the error `data` (the OpenAI error shape `{"error": {...}}`),
    after a `response.created` of the id `created_id` when one is given (no event went out yet:
    clients read `response.failed` only after `response.created`)."""
    try:
        parsed = orjson.loads(data)
    except orjson.JSONDecodeError:
        parsed = None
    err = parsed.get("error") if isinstance(parsed, dict) else None
    if not isinstance(err, dict):
        err = {}
    code = err.get("code") or err.get("type") or "server_error"
    response: dict[str, Any] = {
        "object": "response",
        "status": "failed",
        "error": {"code": code, "message": str(err.get("message") or "The stream failed")},
        "output": [],
    }
    if created_id is None:  # after the upstream's events, whose numbering is the upstream's
        body = orjson.dumps({"type": "response.failed", "response": response})
        return b"event: response.failed\ndata: " + body + b"\n\n"
    response["id"] = created_id
    started = {**response, "status": "in_progress", "error": None}
    created = {"type": "response.created", "response": started, "sequence_number": 0}
    failed = {"type": "response.failed", "response": response, "sequence_number": 1}
    return (
        b"event: response.created\ndata: " + orjson.dumps(created) + b"\n\n"
        b"event: response.failed\ndata: " + orjson.dumps(failed) + b"\n\n"
    )


def upstream_error_data(status: int, body: bytes, anthropic: bool, responses: bool) -> bytes:
    """The `data:` of the error event for an upstream non-2xx answer after an early commit: the
    upstream's own JSON error when it sent one, else the router's, on one line."""
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        parsed = None
    if isinstance(parsed, dict) and "error" in parsed:
        return orjson.dumps(parsed)
    err = UpstreamError(f"The upstream answered HTTP {status}")
    return responses_error_body(err, status) if responses else error_body(err, anthropic)


class _Stream:
    """The client side of one relayed stream: the committed response and the heartbeat clock."""

    __slots__ = (
        "anthropic",
        "chat",
        "heartbeat",
        "held",
        "held_answers",
        "interval",
        "last_write",
        "out",
        "request",
        "responses",
        "saved_limits",
        "tail",
        "translator",
        "writing",
    )

    def __init__(
        self,
        request: RouterRequest,
        interval: float,
        route: str,
        translator: Translator | ResponsesTranslator | None,
    ) -> None:
        self.request = request
        self.translator = translator
        self.interval = interval
        self.anthropic = route == MESSAGES  # the router's errors in the Anthropic shape
        self.responses = route == RESPONSES  # the Responses API's heartbeat and failure
        self.chat = route in (CHAT, COMPLETIONS)  # `finish_reason` in `choices`
        self.heartbeat = RESPONSES_HEARTBEAT if self.responses else HEARTBEAT
        self.out: Any = None
        self.last_write = 0.0
        self.saved_limits: tuple[int, int] | None = None
        self.writing = False  # a write through Sanic is in course (or the response ended)
        self.tail = b""  # the last piece of the upstream's events relayed (`ends_stream`)
        self.held = b""  # the upstream's last events, written with the response's end (`hold`)
        self.held_answers = False  # ...and they end the answer (`ends_answer`)

    async def commit(
        self,
        headers: list[tuple[str, str]],
        buffer_size: int,
        upstream_head: float | None,
        events_ready: bool = False,
    ) -> None:
        """Write the 200 SSE head; `upstream_head`: the upstream's time to its own head (None
        when it has not answered yet). The head is written now (Sanic's `respond` alone writes
        nothing until the first piece of the body), unless `events_ready`: the upstream's first
        bytes are here already, and the head goes out with them in one write."""
        headers = [(k, v) for k, v in headers if k.lower() not in _NOT_FROM_UPSTREAM]
        headers.extend(SSE_HEADERS)
        headers.extend(early_head(self.request, upstream_head))
        self.out = await self.request.respond(
            status=200, headers=Header(headers), content_type="text/event-stream"
        )
        transport = getattr(self.request, "transport", None)
        if transport is not None:
            # A slow client makes writes wait once bufferSize bytes are queued for it.
            self.saved_limits = transport.get_write_buffer_limits()
            transport.set_write_buffer_limits(high=buffer_size, low=buffer_size // 4)
        if not events_ready:
            await self.write(b"")  # the head alone (an empty piece is no chunk)
        self.last_write = time.monotonic()

    async def write(self, data: bytes) -> None:
        self.writing = True  # an offer (`_Offer`) waits: nothing may pass what this holds
        if self.held:  # (only an error event follows a held piece: `fail`)
            data, self.held = self.held + data, b""
        try:
            await self.out.send(data)
        finally:
            self.writing = False
        self.last_write = time.monotonic()

    def relayed(self, piece: bytes, state: RequestState) -> None:
        """`piece` of the upstream's events was written: the answer is whole when it ends with
        the stream's last event. It is the stream's tail (`cut`) only when it holds a `data:`
        field: comments (keep-alives), a lone blank line or an event without data may follow an
        answer's last event."""
        if b"data:" in piece:
            self.tail = piece
        if ends_answer(piece):
            state.answered = True

    def hold(self, piece: bytes) -> None:
        """`piece`, the upstream's last events (its body ended with them), is written with the
        response's end (`end`), in one write: one system call (and one read for the client)
        less per stream, and a response whose head has not gone out yet is sent whole, with a
        Content-Length. Until then it counts as relayed for `cut`, not for `answered` (the
        client has not got it)."""
        self.writing = True  # no offer writes after it
        self.held = piece
        if b"data:" in piece:
            self.tail = piece
        self.held_answers = ends_answer(piece)

    def cut(self) -> bool:
        """Whether the relayed stream, now ended by the upstream without its usual last event
        in the last piece (`ends_answer`), was cut before its answer's end. Messages and
        Responses streams always end with their last event (`message_stop`,
        `response.completed` / `.incomplete` / `.failed`) or an error event. Chat Completions'
        `[DONE]` is not sent by every compatible server, so a Chat (or Completions) stream
        without it was cut only when its last data event has no finish reason either (nor is
        the usage chunk after it, nor an error). Other routes' streams end as they end."""
        if self.held_answers:  # as `relayed` would have marked it answered
            return False
        if self.anthropic or self.responses:
            return not ends_stream(self.tail)
        if self.chat:
            return not ends_chat(self.tail)
        return False

    async def end(self, data: bytes = b"") -> None:
        """The end of the response (Sanic's last chunk), with `data` and a held piece (`hold`)
        before it in the same write."""
        self.writing = True  # for good: nothing is written after it
        if self.held:
            data, self.held = self.held + data, b""
        if not data:
            # Everything the client is owed is in its transport: a client that closes now (the
            # last chunk then raises RequestCancelled, or the task is cancelled) got its answer.
            self.request.ctx.state.answered = True
            await self.out.eof()
            return
        await self.out.send(data, True)
        self.request.ctx.state.answered = True

    async def _slice(self, until: float) -> float | None:
        """Seconds to wait before the next heartbeat or `until` (a heartbeat written first when
        one is due); None when the monotonic time `until` has come."""
        while True:
            now = time.monotonic()
            if now >= until:
                return None
            beat = self.last_write + self.interval
            if now < beat:
                return min(beat, until) - now
            if self.responses and self.request.ctx.state.first_byte_latency is None:
                await self.write(HEARTBEAT)  # no event yet (see RESPONSES_HEARTBEAT)
            else:
                await self.write(self.heartbeat)

    async def wait(self, task: asyncio.Future[Any], until: Callable[[], float]) -> bool:
        """Wait for `task` with heartbeats; False when the monotonic time `until()` came first
        (asked again after each heartbeat: a drain may bring it closer)."""
        while not task.done():
            step = await self._slice(until())
            if step is None:
                return False
            await settle(task, step)
        return True

    async def receive(self, receive: Any, until: Callable[[], float]) -> bytes | None:
        """`receive(limit)` of the upstream body with heartbeats: the bytes, b"" at the end, or
        None when the monotonic time `until()` came first."""
        while True:
            step = await self._slice(until())
            if step is None:
                return None
            data: bytes | None = await receive(step)
            if data is not None:
                return data

    def failure(self, status: int, data: bytes) -> bytes:
        """The events that end this stream with the error `data` (JSON, the client's shape)."""
        if not self.responses:
            return error_event(data)
        if isinstance(self.translator, ResponsesTranslator):  # it knows what is still open
            return b"".join(self.translator.error_events(status, data))
        ctx = self.request.ctx
        first = ctx.state.first_byte_latency is None  # the upstream's own events: none yet
        return responses_failed_event(data, "resp_" + ctx.request_id if first else None)

    def restore(self) -> None:
        """The connection may serve more requests after this stream: back to Sanic's limits."""
        transport = getattr(self.request, "transport", None)
        if self.saved_limits is not None and transport is not None and not transport.is_closing():
            low, high = self.saved_limits
            transport.set_write_buffer_limits(high=high, low=low)

    async def fail_or_raise(self, err: RouterError) -> None:
        """`err` before the head went out: raised (the client gets the router's error
        response); after it: the error event that ends the stream (`fail`)."""
        if self.out is None:
            raise err from None
        await self.fail(err)

    async def fail(self, err: RouterError, data: bytes | None = None) -> None:
        state = self.request.ctx.state
        state.error_type = err.error_type
        if err is SHUTTING_DOWN:
            state.ended_by = "shutdown"
        if self.translator is not None and self.translator.broken:
            # the translated stream ended with its error already (the upstream's error event):
            # a second one is not news, and no client reads past the first
            await self.end()
            return
        if data is None:
            data = responses_error_body(err) if self.responses else error_body(err, self.anthropic)
        await self.write(self.failure(err.status, data))
        await self.end()


class _Pieces:
    """What the client gets of the upstream's bytes: complete events (`EventFramer`), usage
    recorded, malformed ones dropped and counted, translated to the client's format.

    Untranslated and untraced (the usual relay), a read's complete events stay one piece of
    bytes (`EventFramer.feed_joined`): cut only around an event that names a usage, and tested
    for malformed events by a few scans of the whole (`plain_events`); only when that test
    cannot tell are they cut into events and tested one by one. The same bytes reach the client
    either way (tests/unit/test_sse_joined.py); a read of many events (a burst) costs a few
    scans instead of a few calls per event."""

    __slots__ = (
        "deadline",
        "framer",
        "fresh",
        "idle_secs",
        "joined",
        "last_event",
        "may_join",
        "state",
        "translator",
        "usage",
    )

    def __init__(
        self,
        usage: UsageTracker,
        translator: Translator | ResponsesTranslator | None,
        state: RequestState,
        idle_secs: float,
        deadline: float,
    ) -> None:
        self.framer = EventFramer()
        self.usage = usage
        self.translator = translator
        self.state = state
        self.idle_secs = idle_secs  # without a complete upstream event: a stream timeout
        self.deadline = deadline  # monotonic time: the whole stream's end
        self.last_event = time.monotonic()  # of the last complete upstream event
        self.may_join = translator is None and usage.facts is None
        self.joined = False  # what `feed` returned is one piece of joined events (for `out`)
        self.fresh = True  # no byte of the stream came yet

    def until(self) -> float:
        """When the stream times out (its idle time, or its deadline) unless an event comes, or
        must end because its worker stops (`drain_until`)."""
        return min(self.last_event + self.idle_secs, self.deadline, _drain_until[0])

    def feed(self, chunk: bytes, now: float) -> list[bytes]:
        """The complete events `chunk` ends; `out` comes next (it reads how they were cut),
        unless the stream ends first (its timeout)."""
        if self.fresh and chunk:
            self.fresh = False
            if chunk.startswith(BOM):  # SSE: a stream may begin with one, which is not text
                chunk = chunk[len(BOM) :]
        framer = self.framer
        if self.may_join and framer.joinable(chunk):
            joined = framer.feed_joined(chunk)
            self.joined = bool(joined)
            events = [joined] if joined else []
        else:
            events = framer.feed(chunk)
        if events:
            self.last_event = now
        return events

    def out(self, events: list[bytes]) -> list[bytes]:
        if self.joined:
            self.joined = False
            joined = self.usage.kept_joined(events[0])
            if not joined:
                return []
            if plain_events(joined):
                return [joined]
            out = split_events(joined)
        else:
            out = self.usage.kept(events)
        if any(map(malformed, out)):
            kept = [e for e in out if not malformed(e)]
            self.state.malformed_events += len(out) - len(kept)
            out = kept
        if self.translator is not None:
            out = self.translator.events(out)
        return out


class _Offer:
    """Relays what the upstream connection received from its data callback (h1transport
    `_Body.push`, fast path `stream`), the same as the relay's task would: declines (the task
    then takes the bytes) whenever the task must act — the client's transport paused or
    closing, the head not out yet, the idle time or the deadline passed — and, failing, ends
    the body with the error, which the task then meets."""

    __slots__ = ("body", "ending", "pieces", "started", "state", "stream", "writer")

    def __init__(
        self,
        request: RouterRequest,
        stream: _Stream,
        pieces: _Pieces,
        writer: ChunkWriter,
        body: Any,
    ) -> None:
        self.stream = stream
        self.pieces = pieces
        self.writer = writer
        self.body = body
        # the h1 body's own (a routing file's replayed body has none: its end is written apart)
        self.ending: Callable[[], bool] | None = getattr(body, "ending", None)
        self.state: RequestState = request.ctx.state
        self.started: float = request.ctx.started

    def __call__(self) -> bool:
        now = time.monotonic()
        pieces, stream = self.pieces, self.stream
        if (
            stream.writing  # the task holds a piece (in order: it goes first)
            or not self.writer.ready()
            or now >= pieces.until()
            # the body's last bytes: the task writes them with the response's end (`hold`)
            or (self.ending is not None and self.ending())
        ):
            return False
        try:
            out = pieces.out(pieces.feed(self.body.take_now(), now))
            if out:
                state = self.state
                if state.first_byte_latency is None:
                    state.first_byte_latency = time.perf_counter() - self.started
                piece = out[0] if len(out) == 1 else b"".join(out)
                self.writer.write(piece)
                stream.last_write = time.monotonic()
                stream.relayed(piece, state)
        except Exception as e:  # what the task would have raised, it raises from its read
            self.body.fail(e)
            return False
        return True


def _wake(waiter: asyncio.Future[None], *_: Any) -> None:
    if not waiter.done():
        waiter.set_result(None)


async def settle(task: asyncio.Future[Any], secs: float) -> None:
    """Wait until `task` is done or `secs` seconds have passed, whichever comes first (what
    `asyncio.wait({task}, timeout=secs)` does, without its set and per-call closures: one wait
    per stream request; bench/README.md, "Fewer coroutines and writes per request"). A cancellation
    of the caller leaves `task` running, as asyncio.wait does."""
    if task.done():
        return
    loop = asyncio.get_running_loop()
    waiter: asyncio.Future[None] = loop.create_future()
    wake = functools.partial(_wake, waiter)
    task.add_done_callback(wake)
    timer = loop.call_later(secs, wake)
    try:
        await waiter
    finally:
        timer.cancel()
        task.remove_done_callback(wake)


async def _abandon(task: asyncio.Future[Any]) -> None:
    """Cancel a helper task and wait for it without raising its outcome (ours still propagates)."""
    if not task.done():
        task.cancel()
        await asyncio.wait({task})
    if not task.cancelled():
        exc = task.exception()
        if exc is None and isinstance(task.result(), httpx.Response):
            await task.result().aclose()


async def relay_stream(
    request: RouterRequest,
    upstream_request: httpx.Request | None,
    ep: ResolvedEndpoint,
    extra_headers: dict[str, str],
    strip_usage_chunk: bool = False,
    translator: Translator | ResponsesTranslator | None = None,
    opener: Callable[[], Awaitable[httpx.Response]] | None = None,
    chosen: list[Any] | None = None,
    head: Callable[[], dict[str, str]] | None = None,
    started: float | None = None,
) -> HTTPResponse | None:
    """`translator`: the request's format translation (service.translate), applied to each
    complete upstream event and to error bodies; None relays the upstream's bytes as they are.

    Under a routing file (service.proxy.failover) `opener` replaces sending `upstream_request`:
    it runs the attempts and returns the answer the client gets, after which `chosen[0]` says
    how to read it (its translator, whether to hide the usage chunk) and `head()` gives the
    headers to add (who answered, how many attempts) when the head was not sent yet.
    `started`: when the upstream request went out, when that was before this call."""
    ctx = request.app.ctx
    state: RequestState = request.ctx.state
    stream = _Stream(request, ep.heartbeat_interval_secs, ep.route, translator)
    head_headers = [("X-Request-ID", request.ctx.request_id), *extra_headers.items()]
    if started is None:
        started = time.perf_counter()
    if opener is not None:
        opening: Awaitable[httpx.Response] = opener()
    else:
        assert upstream_request is not None
        opening = send(ctx.http, upstream_request)
    sending: asyncio.Future[httpx.Response] | None = asyncio.ensure_future(opening)
    # API_ROUTER_STREAM_MAX_SECS bounds the whole stream; API_ROUTER_STREAM_IDLE_SECS the time
    # without one complete upstream event (a drip of bytes that never completes one counts).
    settings = ctx.settings
    deadline = time.monotonic() + settings.stream_max_secs
    idle_secs = settings.stream_idle_secs
    reading: asyncio.Future[bytes] | None = None
    resp: httpx.Response | None = None
    # what the trace reads of the answer (a sampled one only)
    facts = ctx.tracing is not None and ctx.tracing.recording(request)
    usage = UsageTracker(strip_usage_chunk, facts)
    pushing: Callable[[Any], None] | None = None  # the body's `push` while an offer is set
    try:
        assert sending is not None
        await settle(sending, ep.heartbeat_interval_secs)
        if not sending.done():
            # Nothing from the upstream yet: show the client (and load balancers) life.
            await stream.commit(head_headers, ep.buffer_size, None)
            if not await stream.wait(sending, _by(deadline)):
                await _abandon(sending)
                sending = None
                await stream.fail(_ended_early())
                return None
        done, sending = sending, None
        upstream_head = time.perf_counter() - started
        try:
            resp = done.result()
        except httpx.HTTPError as e:
            await stream.fail_or_raise(map_exception(e))
            return None
        except RouterError as e:  # the routing file's attempts ended without an answer
            await stream.fail_or_raise(e)
            return None
        if chosen:
            translator = stream.translator = chosen[0].translator
            usage = UsageTracker(strip_usage_chunk or chosen[0].strip_usage, facts)
            idle_secs = chosen[0].idle_secs or idle_secs
        if head is not None:
            head_headers = [("X-Request-ID", request.ctx.request_id), *head().items()]

        state.upstream_status = resp.status_code
        is_sse = resp.headers.get("content-type", "").lower().startswith("text/event-stream")
        if not 200 <= resp.status_code < 300 or (stream.out is None and not is_sse):
            # An error, or an upstream that answered a stream request with a plain body (e.g.
            # JSON): relayed as it is, as long as no SSE head went out yet.
            if resp.status_code == 429 or resp.status_code >= 500:
                state.error_type = "upstream_error"
            try:
                body = await _read_body(resp, None if stream.out is None else MAX_ERROR_BODY)
            except httpx.HTTPError as e:  # the answer broke off: the router's error, not a 500
                await stream.fail_or_raise(map_exception(e))
                return None
            if stream.out is None and 200 <= resp.status_code < 300:
                # A whole answer to a stream request (an upstream that ignores `stream`): as
                # a JSON request's, its usage counted (X-Request-ID is the answer's own).
                extra = dict(head_headers[1:])
                return json_answer(resp, body, translator, extra, state, request.ctx.request_id)
            if stream.out is None:
                headers = h.returnable_response_headers(resp.headers.multi_items())
                if translator is not None:
                    try:
                        headers, body = translator.answer(resp.status_code, headers, body)
                    except MALFORMED:  # JSON, but not of the shape its format promises
                        raise UpstreamJSONError() from None
                h.add_router_headers(headers, head_headers)
                return HTTPResponse(
                    body=body, status=resp.status_code, headers=Header(headers), content_type=None
                )
            if translator is not None and not stream.responses:
                data = translator.error_data(resp.status_code, body)
            elif translator is not None:  # the upstream's own error, read by the translator
                data = body
            else:
                data = upstream_error_data(
                    resp.status_code, body, stream.anthropic, stream.responses
                )
            await stream.write(stream.failure(resp.status_code, data))
            await stream.end()
            return None

        if not is_sse:
            # A whole 2xx answer after the SSE head went out (heartbeats committed it while an
            # upstream that ignores `stream` wrote its answer): its usage counted, and the
            # stream ended with an error event. Its bytes are not events (they were written
            # raw, and clients saw an empty answer).
            with contextlib.suppress(orjson.JSONDecodeError, httpx.HTTPError):
                keep_answer(orjson.loads(await _read_body(resp, None)), state)
            await stream.fail(StreamError())
            return None
        # The router asked for no content coding; an upstream (or a proxy before it) may
        # compress the stream anyway. gzip and deflate are decoded on the way (httpx's decoders,
        # the fast paths left aside); any other coding cannot be read as events.
        coding = content_coding(resp.headers.get("content-encoding"))
        encoded = bool(coding)
        if encoded and coding not in INFLATED_CODINGS:
            await resp.aclose()
            await stream.fail_or_raise(UpstreamProtocolError())
            return None
        if stream.out is None:
            headers = h.returnable_response_headers(resp.headers.multi_items())
            h.add_router_headers(headers, head_headers)
            ready = getattr(resp.stream, "has_bytes", None)
            await stream.commit(
                headers, ep.buffer_size, upstream_head, ready is not None and ready()
            )

        pieces = _Pieces(usage, translator, state, idle_secs, deadline)
        read_limit = getattr(resp.stream, "set_read_limit", None)
        if read_limit is not None:  # read ahead of a slow client: at most bufferSize (SPEC §6)
            read_limit(ep.buffer_size)
        # A transport whose body offers `receive(limit)` (the default h1) is read without a task
        # per read; any other through a task that survives the heartbeat waits.
        receive = None if encoded else getattr(resp.stream, "receive", None)
        chunks = (
            None if receive is not None else resp.aiter_bytes() if encoded else resp.aiter_raw()
        )
        if getattr(resp.stream, "fail", None) is not None:
            _LIVE.add(resp.stream)  # (left in `finally`)
        # Fast path `stream`: with the h1 engine each piece is relayed from the upstream
        # connection's data callback (`_Offer`); the task below only writes heartbeats, waits
        # while the client is slow, and ends the stream.
        push = None if encoded else getattr(resp.stream, "push", None)
        # A body that says when its end arrived (h1) has its last events held and written with
        # the response's end (`_Stream.hold`).
        ending = None if encoded else getattr(resp.stream, "ending", None)
        if push is not None and settings.fast_paths.stream:
            writer = chunk_writer(request)
            if writer is not None:
                push(_Offer(request, stream, pieces, writer, resp.stream))
                pushing = push
        until = pieces.until
        while True:
            try:
                if receive is not None:
                    chunk = await stream.receive(receive, until)
                else:
                    assert chunks is not None
                    reading = asyncio.ensure_future(chunks.__anext__())
                    if await stream.wait(reading, until):
                        done_read, reading = reading, None
                        try:
                            chunk = done_read.result()
                        except StopAsyncIteration:
                            chunk = b""
                    else:
                        await _abandon(reading)
                        reading, chunk = None, None
                if chunk is None and pushing is not None and time.monotonic() < pieces.until():
                    continue  # events came meanwhile (relayed by the offer): wait on
                if chunk is None:
                    # Let go of the upstream before the client sees the end of its stream (once
                    # it has, it may close, and that cancels this handler).
                    await resp.aclose()
                    await stream.fail(_ended_early())
                    return None
                if not chunk:
                    break
                now = time.monotonic()
                events = pieces.feed(chunk, now)
                if now >= pieces.until():
                    await resp.aclose()
                    await stream.fail(_ended_early())
                    return None
                out = pieces.out(events)
            except (httpx.HTTPError, EventTooLarge, BadUpstreamEvent):
                await stream.fail(StreamError())
                return None
            except _DrainEnd:
                await stream.fail(SHUTTING_DOWN)
                return None
            if out:
                if state.first_byte_latency is None:
                    state.first_byte_latency = time.perf_counter() - request.ctx.started
                piece = out[0] if len(out) == 1 else b"".join(out)
                if ending is not None and ending():
                    stream.hold(piece)
                    await resp.aclose()  # (the body is whole: the connection goes back first)
                    break
                await stream.write(piece)
                stream.relayed(piece, state)
        rest = pieces.framer.flush()  # (the offer is gone: the body's end released it)
        if translator is not None:  # the upstream ended: what closes the client's stream
            try:
                rest = b"".join(translator.events([rest] if rest else []) + translator.finish())
            except BadUpstreamEvent:
                await stream.fail(StreamError())
                return None
            if translator.broken:  # cut before its finish, or an error event: the client was told
                state.error_type = StreamError.error_type
        if rest and b"data:" in rest:  # an event without the blank line after it
            stream.tail = rest
        if translator is None and not state.answered and stream.cut():
            # The upstream ended the stream before its answer's end: the client must not take
            # what it got for the whole answer (SPEC §11). What it left unterminated (`rest`,
            # half an event, which an SSE client discards at the end of a stream) is not
            # written: the error event must not be glued to it.
            await stream.fail(StreamError())
            return None
        await stream.end(rest)
        return None
    finally:
        if pushing is not None:  # first: nothing more is written from the upstream's callback
            pushing(None)
        # Also when the client went away (Sanic cancelled us): the lifecycle listeners then
        # record 499, not an upstream failure.
        state.upstream_latency = time.perf_counter() - started
        if usage.usage is not None or state.answer is None:  # (a whole answer read its own)
            state.usage = usage.usage
            state.usage_final = usage.final
            state.answer_facts = usage.facts
        stream.restore()
        if reading is not None:
            await _abandon(reading)
        if sending is not None:
            await _abandon(sending)
        if resp is not None:
            _LIVE.discard(resp.stream)
            await resp.aclose()  # after a complete read this returns the connection to the pool


BOM = b"\xef\xbb\xbf"  # UTF-8's byte order mark


def unasked_stream(resp: httpx.Response) -> bool:
    """A 2xx event stream, not compressed: what a request that did not ask for one in its JSON
    may still get (a transcription's `stream` form field, a stored response's `?stream=true`)."""
    headers = resp.headers
    return (
        200 <= resp.status_code < 300
        and headers.get("content-type", "").lower().startswith("text/event-stream")
        # compressed (a request not asking for a stream may offer gzip): relayed whole, as
        # before, with its Content-Encoding; the event framer reads plain text only
        and not content_coding(headers.get("content-encoding"))
    )


async def _given(resp: httpx.Response) -> httpx.Response:
    return resp


async def relay_unasked_stream(
    request: RouterRequest,
    resp: httpx.Response,
    ep: ResolvedEndpoint,
    extra_headers: dict[str, str],
    translator: Translator | ResponsesTranslator | None,
    started: float,
    chosen: list[Any] | None = None,
    head: Callable[[], dict[str, str]] | None = None,
) -> HTTPResponse | None:
    """`unasked_stream` answers, relayed as streams from their head (they were read whole before
    the client got a byte: no heartbeat, their usage never read, a token reservation kept)."""
    request.ctx.state.stream = True
    opener = functools.partial(_given, resp)
    return await relay_stream(
        request, None, ep, extra_headers, False, translator, opener, chosen, head, started
    )


async def _read_body(resp: httpx.Response, limit: int | None) -> bytes:
    """The whole body (a normal response), or its first `limit` bytes with the rest drained."""
    parts: list[bytes] = []
    kept = 0
    async for chunk in resp.aiter_raw():
        if limit is None or kept < limit:
            parts.append(chunk)
            kept += len(chunk)
    data = b"".join(parts)
    return data if limit is None else data[:limit]
