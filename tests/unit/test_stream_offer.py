"""The SSE relay's offer (service/proxy/sse.py `_Offer`, fast path `stream`): what it relays
from the upstream connection's callback, and when it leaves the bytes to the relay's task."""

from __future__ import annotations

import math
import time
from types import SimpleNamespace

from service.proxy.events import EventTooLarge, UsageTracker
from service.proxy.sse import _Offer, _Pieces, _Stream
from service.state import RequestState


class Writer:
    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.open = True

    def ready(self) -> bool:
        return self.open

    def write(self, data: bytes) -> None:
        self.written.append(data)


class Body:
    def __init__(self) -> None:
        self.arrived: list[bytes] = []
        self.failed: BaseException | None = None
        self.ended = False

    def ending(self) -> bool:
        return self.ended

    def take_now(self) -> bytes:
        data, self.arrived = b"".join(self.arrived), []
        return data

    def fail(self, exc: BaseException) -> None:
        self.failed = exc


def offer(max_event: int = 1 << 20) -> tuple[_Offer, SimpleNamespace, Writer, Body, RequestState]:
    state = RequestState()
    request = SimpleNamespace(ctx=SimpleNamespace(state=state, started=time.perf_counter()))
    stream = SimpleNamespace(writing=False, last_write=0.0, tail=b"")
    stream.relayed = lambda piece, st: _Stream.relayed(stream, piece, st)  # type: ignore[arg-type]
    pieces = _Pieces(UsageTracker(), None, state, 300.0, math.inf)
    pieces.framer.max_event = max_event
    writer, body = Writer(), Body()
    o = _Offer(request, stream, pieces, writer, body)  # type: ignore[arg-type]
    return o, stream, writer, body, state


def test_the_offer_relays_whole_events_and_holds_the_rest() -> None:
    o, stream, writer, body, state = offer()
    body.arrived = [b'data: {"a": 1}\n\ndata: {"b"']
    assert o() is True
    assert writer.written == [b'data: {"a": 1}\n\n'] and stream.last_write > 0
    assert state.first_byte_latency is not None
    body.arrived = [b": 2}\n\n", b'data: {"cut\n\n']  # the malformed one is dropped, counted
    assert o() is True
    assert writer.written[1:] == [b'data: {"b": 2}\n\n'] and state.malformed_events == 1


def test_while_the_task_writes_the_offer_takes_nothing() -> None:
    """The task holds a piece it is writing through Sanic (the client was slow): a later piece
    must not pass it, so the offer declines and leaves its bytes to the task."""
    o, stream, writer, body, _ = offer()
    stream.writing = True
    body.arrived = [b"data: {}\n\n"]
    assert o() is False
    assert body.arrived == [b"data: {}\n\n"] and writer.written == []
    stream.writing = False
    writer.open = False  # the client's transport paused or closing: the same
    assert o() is False and body.arrived == [b"data: {}\n\n"]


def test_past_the_idle_time_the_offer_leaves_the_bytes_to_the_task() -> None:
    o, _, writer, body, _ = offer()
    o.pieces.last_event = time.monotonic() - 301
    body.arrived = [b"data: {}\n\n"]
    assert o() is False and body.arrived == [b"data: {}\n\n"] and writer.written == []


def test_a_failure_in_the_offer_ends_the_body_with_it() -> None:
    o, _, writer, body, _ = offer(max_event=10)
    body.arrived = [b"data: " + b"x" * 50]
    assert o() is False
    assert isinstance(body.failed, EventTooLarge) and writer.written == []


class InnerBody:
    """The h1 body's reading interface, recorded."""

    def __init__(self) -> None:
        self.offers: list[object] = []

    async def receive(self, limit: float) -> bytes | None:
        return b"rest"

    def push(self, offer: object) -> None:
        self.offers.append(offer)

    def take_now(self) -> bytes:
        return b""

    def fail(self, exc: BaseException) -> None:
        pass

    async def aclose(self) -> None:
        pass


def test_a_failed_over_stream_hands_the_offer_on_only_after_its_held_bytes() -> None:
    """Under a routing file the bytes read before the commit point are replayed first
    (failover `_Replay`): an offer set before they were taken must not reach the upstream body,
    or it could relay later bytes ahead of them."""
    import asyncio

    import httpx

    from service.proxy.failover import _Replay

    inner = InnerBody()
    resp = httpx.Response(200, stream=inner)  # type: ignore[arg-type]
    replay = _Replay(b"held", None, resp)

    def offer() -> bool:
        return True

    replay.push(offer)
    assert inner.offers == []
    assert asyncio.run(replay.receive(1.0)) == b"held"
    assert inner.offers == [offer]
    assert asyncio.run(replay.receive(1.0)) == b"rest"
    replay.push(None)
    assert inner.offers == [offer, None]


def test_the_body_s_last_bytes_are_left_to_the_task() -> None:
    """When the upstream's body ended with these bytes, the task writes them together with the
    response's end (`_Stream.hold`): one write instead of two."""
    o, _, writer, body, _ = offer()
    body.arrived = [b"data: {}\n\n"]
    assert o() is True and writer.written == [b"data: {}\n\n"]
    body.arrived, body.ended = [b"data: [DONE]\n\n"], True
    assert o() is False
    assert body.arrived == [b"data: [DONE]\n\n"] and writer.written == [b"data: {}\n\n"]


def test_a_body_that_cannot_tell_its_end_is_relayed_by_the_offer() -> None:
    """A routing file's replayed body (service.proxy.failover `_Replay`) has no `ending`: the
    offer relays what came, as before, and its end is written apart."""

    class NoEnd:
        def __init__(self) -> None:
            self.arrived = [b"data: [DONE]\n\n"]

        def take_now(self) -> bytes:
            data, self.arrived = b"".join(self.arrived), []
            return data

        def fail(self, exc: BaseException) -> None:
            raise AssertionError(exc)

    o, stream, writer, _, state = offer()
    o2 = _Offer(
        SimpleNamespace(ctx=SimpleNamespace(state=state, started=0.0)),
        stream,
        o.pieces,
        writer,
        NoEnd(),
    )  # type: ignore[arg-type]
    assert o2() is True and writer.written == [b"data: [DONE]\n\n"]
