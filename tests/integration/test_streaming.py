"""SSE relay through the real router subprocess (SPEC §6, issue 3): raw bytes, timing, faults,
back-pressure, disconnects, and the real openai / anthropic SDKs as streaming clients."""

from __future__ import annotations

import json
import os
import re
import socket
import threading
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest

from service.config.model import Profile
from service.proxy.events import HEARTBEAT, EventFramer
from tests.conftest import base_profile
from tests.fakes.upstream import (
    FakeUpstream,
    Recorded,
    Reply,
    anthropic_stream,
    openai_chat_stream,
    openai_response_stream,
)
from tests.scrape import scrape, value
from tests.support import RouterFactory, RouterProcess

HB = 0.3  # the profile's heartbeatIntervalSecs
HB_COMPLETIONS = 1.5  # the /v1/completions endpoint's own, merged over the profile's
BUFFER = 65536
SSE = [("Content-Type", "text/event-stream"), ("Cache-Control", "no-cache")]
CHAT_BODY = {"model": "gpt-4", "stream": True, "messages": [{"role": "user", "content": "hi"}]}


def stream_profile(url: str) -> dict[str, Any]:
    return base_profile(
        url,
        streamConfig={"bufferSize": BUFFER, "heartbeatIntervalSecs": HB},
        endpoints={"/v1/completions": {"streamConfig": {"heartbeatIntervalSecs": HB_COMPLETIONS}}},
    )


# The upstream transports the streaming tests run on: all of them, unless TEST_TRANSPORTS names
# some (comma-separated). .ci/run's second pass (every fast path off) names `h1` alone: the other
# transports are read through the relay's task with the fast paths on or off alike, so on them
# that pass would repeat what the first one ran; the Sanic side it is there for runs on `h1`.
ALL_TRANSPORTS = ("h1", "aiohttp", "httpx", "pyreqwest")
TRANSPORTS = [t.strip() for t in os.environ.get("TEST_TRANSPORTS", "").split(",") if t.strip()]
TRANSPORTS = TRANSPORTS or list(ALL_TRANSPORTS)
if not set(TRANSPORTS) <= set(ALL_TRANSPORTS):
    raise ValueError(f"TEST_TRANSPORTS={TRANSPORTS}: each must be one of {ALL_TRANSPORTS}")


@pytest.fixture(scope="module", params=TRANSPORTS)
def srouter(
    request: pytest.FixtureRequest,
    fake_upstream: FakeUpstream,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[RouterProcess]:
    """Every streaming test runs on each upstream transport: the default `h1` is read through
    its body's `receive` (no task per read), the others through the generic task path. (Its own
    factory: a parametrized module fixture is made again per transport, and the previous
    transport's router must stop then, not at the end of the module.)"""
    env = {"API_ROUTER_UPSTREAM_TRANSPORT": request.param}
    with RouterFactory(tmp_path_factory) as make:
        yield make(stream_profile(fake_upstream.url), env=env)


# -- helpers -----------------------------------------------------------------------------------


def metric(router: RouterProcess, name: str, **labels: str) -> float:
    return value(scrape(router.url), name, **labels)


class Received:
    """A streamed response read with httpx: head, and each piece with its arrival time."""

    def __init__(self) -> None:
        self.status = 0
        self.headers: httpx.Headers = httpx.Headers()
        self.t0 = 0.0
        self.head_at = 0.0
        self.pieces: list[tuple[float, bytes]] = []

    @property
    def body(self) -> bytes:
        return b"".join(p for _, p in self.pieces)

    def events(self) -> list[tuple[float, bytes]]:
        """Each complete event of the body with the time its last byte arrived."""
        f = EventFramer()
        out = []
        for t, p in self.pieces:
            out += [(t, e) for e in f.feed(p)]
        assert f.flush() == b""
        return out


def without_heartbeats(body: bytes) -> bytes:
    """`body` less the heartbeats the router added: whole events equal to HEARTBEAT only, so a
    heartbeat written inside an event stays, and the comparison that uses this fails. (A loaded
    machine may hold an upstream piece past the interval; the CI run of 20b8d13 got one.)"""
    framer = EventFramer()
    return b"".join(e for e in framer.feed(body) if e != HEARTBEAT) + framer.flush()


def stream(router: RouterProcess, path: str, body: dict[str, Any], **kw: Any) -> Received:
    got = Received()
    got.t0 = time.monotonic()
    with (
        httpx.Client(timeout=10) as c,
        c.stream("POST", router.url + path, json=body, **kw) as r,
    ):
        got.head_at = time.monotonic()
        got.status, got.headers = r.status_code, r.headers
        for piece in r.iter_raw():
            got.pieces.append((time.monotonic(), piece))
    return got


def assert_sse_head(got: Received) -> None:
    assert got.status == 200
    assert got.headers["content-type"].startswith("text/event-stream")
    assert got.headers["cache-control"] == "no-cache"
    assert got.headers["x-accel-buffering"] == "no"
    assert got.headers.get("x-request-id")


def assert_heartbeat_spacing(got: Received, interval: float) -> None:
    """The router writes a heartbeat only `interval` after its previous write, so the k-th
    heartbeat cannot have been sent before k intervals after the request (arrival times measured
    by the client are late by a varying delay, so gaps between them are not checked)."""
    beat_times = [t for t, e in got.events() if e == HEARTBEAT]
    for k, t in enumerate(beat_times, start=1):
        assert t - got.t0 >= k * interval * 0.95, (k, t - got.t0)


def access_line(router: RouterProcess, request_id: str) -> dict[str, Any]:
    return router.wait_for_log(
        lambda r: r.get("event") == "request_completed" and r.get("request_id") == request_id
    )


# Events in every framing SSE allows, split across upstream writes in awkward places.
EVENTS = [
    b'event: message_start\ndata: {"type":"message_start","n":1}\n\n',
    b'id: 7\r\nevent: ping\r\ndata: {"type": "ping"}\r\n\r\n',
    b": an upstream comment\n\n",
    'data: {"text": "h\u00e9llo \u2603"}\n\n'.encode(),
    b"data: line one\ndata: line two\r\r",
    b'event: message_stop\ndata: {"type":"message_stop"}\n\n',
]


def test_events_are_relayed_byte_exact_in_order_and_whole(
    srouter: RouterProcess, upstream: FakeUpstream
) -> None:
    raw = b"".join(EVENTS)
    # cut points inside events, with a pause after each so that each half arrives on its own
    cuts = [5, 60, 61, 95, 140, 170, len(raw) - 3]
    chunks, prev = [], 0
    for c in [*cuts, len(raw)]:
        chunks.append((0.05, raw[prev:c]))
        prev = c
    upstream.reply_with(Reply(headers=[*SSE, ("x-upstream-trace", "t-1")], chunks=chunks))
    got = stream(srouter, "/v1/messages", {"model": "claude", "stream": True, "max_tokens": 5})
    assert_sse_head(got)
    assert got.headers["x-upstream-trace"] == "t-1"  # end-to-end headers still reach the client
    assert without_heartbeats(got.body) == raw
    assert b"HTTP/1.1" not in got.body and b"chunked" not in got.body.lower()
    # every write of the router ends on an event boundary (a heartbeat's among them): no event
    # ever arrives in halves
    boundaries = {0}
    pos = 0
    for e in EventFramer().feed(got.body):
        pos += len(e)
        boundaries.add(pos)
    pos = 0
    for _, piece in got.pieces:
        pos += len(piece)
        assert pos in boundaries, f"a write ended inside an event at byte {pos}"
    assert upstream.last.json()["stream"] is True


def test_a_stream_that_arrives_whole_goes_out_in_one_write_with_its_length(
    router_factory: RouterFactory, upstream: FakeUpstream
) -> None:
    """An upstream that sends its whole stream at once (an answer from memory, a short one):
    the default h1 transport knows the body ended with those bytes, and the relay writes them
    with the response's end, the head too: one write, so Sanic frames it with a Content-Length
    (before: the head and events in one write, the last chunk in another, chunked)."""
    router = router_factory(
        stream_profile(upstream.url), env={"API_ROUTER_UPSTREAM_TRANSPORT": "h1"}
    )
    raw = b"".join(EVENTS)
    upstream.reply_with(Reply(headers=SSE, chunks=[(0.0, e) for e in EVENTS], one_write=True))
    got = stream(
        router,
        "/v1/messages",
        {"model": "claude", "stream": True, "max_tokens": 5},
        headers={"X-Request-ID": "whole-stream"},
    )
    assert_sse_head(got)
    assert got.body == raw
    assert got.headers["content-length"] == str(len(raw))
    assert "transfer-encoding" not in got.headers
    line = access_line(router, "whole-stream")
    assert line["status_code"] == 200 and "error_type" not in line
    # The same upstream answer cut at the end (no message_stop): still the error event (SPEC §11)
    upstream.reply_with(Reply(headers=SSE, chunks=[(0.0, e) for e in EVENTS[:-1]], one_write=True))
    got = stream(router, "/v1/messages", {"model": "claude", "stream": True, "max_tokens": 5})
    assert got.body.startswith(b"".join(EVENTS[:-1]))
    assert b"event: error" in got.body[len(b"".join(EVENTS[:-1])) :]


@pytest.mark.parametrize("coding", ["gzip", "deflate"])
def test_a_compressed_event_stream_is_decoded_on_the_way(
    srouter: RouterProcess, upstream: FakeUpstream, coding: str
) -> None:
    """The router asks for no coding; an upstream (or a proxy in front of it) that compresses
    the stream anyway: the client gets the events (the compressed bytes went out as the event
    stream, without their Content-Encoding, and no event could be read from them)."""
    pack = zlib.compressobj(wbits=31 if coding == "gzip" else 15)
    chunks = [(0.02, pack.compress(e) + pack.flush(zlib.Z_SYNC_FLUSH)) for e in EVENTS]
    chunks.append((0.0, pack.flush()))
    upstream.reply_with(Reply(headers=[*SSE, ("Content-Encoding", coding)], chunks=chunks))
    got = stream(srouter, "/v1/messages", {"model": "claude", "stream": True, "max_tokens": 5})
    assert_sse_head(got)
    assert "content-encoding" not in got.headers
    assert without_heartbeats(got.body) == b"".join(EVENTS)  # (HB: a loaded machine may pause)


def test_a_byte_order_mark_before_the_first_event_does_not_cost_that_event(
    srouter: RouterProcess, upstream: FakeUpstream
) -> None:
    """SSE lets a stream begin with a BOM, which is not text: the first event was judged
    malformed (its `data:` line hidden behind the BOM) and dropped."""
    events = openai_chat_stream("up-model-4")
    chunks = [(0.0, b"\xef\xbb\xbf" + events[0].encode())] + [(0.0, e.encode()) for e in events[1:]]
    upstream.reply_with(Reply(headers=SSE, chunks=chunks))
    got = stream(srouter, "/v1/chat/completions", CHAT_BODY, headers={"X-Request-ID": "bom-1"})
    assert_sse_head(got)
    assert got.body == "".join(events).encode()
    assert access_line(srouter, "bom-1").get("malformed_events") in (None, 0)


def test_a_stream_in_a_coding_the_router_cannot_read_is_a_protocol_error(
    srouter: RouterProcess, upstream: FakeUpstream
) -> None:
    upstream.reply_with(
        Reply(headers=[*SSE, ("Content-Encoding", "br")], chunks=[(0.0, b"\x1b\x03\x00\xf8")])
    )
    got = stream(srouter, "/v1/chat/completions", CHAT_BODY, headers={"X-Request-ID": "br-1"})
    assert got.status == 502
    assert json.loads(got.body)["error"]["code"] == "upstream_protocol_error"
    assert access_line(srouter, "br-1")["error_type"] == "protocol_error"


def test_stream_ends_with_the_upstream_response_and_its_connection_is_reused(
    srouter: RouterProcess, upstream: FakeUpstream
) -> None:
    upstream.reply_with(Reply(headers=SSE, chunks=[(0, e.encode()) for e in anthropic_stream("m")]))
    body = {"model": "claude", "stream": True, "max_tokens": 5}
    stream(srouter, "/v1/messages", body)  # may open a pooled connection
    opened, closed = upstream.conn_opened, len(upstream.conn_closed_at)
    for _ in range(3):
        # the fake keeps each connection open after the chunked body: the stream must end with
        # the body (the client's read would otherwise wait for its timeout)
        got = stream(srouter, "/v1/messages", body)
        assert got.body.endswith(b'event: message_stop\ndata: {"type": "message_stop"}\n\n')
    assert upstream.conn_opened == opened  # read to the end: back to the pool, reused
    assert len(upstream.conn_closed_at) == closed


def test_upstream_non_2xx_reaches_a_streaming_client_as_a_normal_response(
    srouter: RouterProcess, upstream: FakeUpstream
) -> None:
    err = b'{"error":{"message":"overloaded","type":"server_error","code":"busy"}}'
    upstream.reply_with(
        Reply(
            status=503,
            headers=[("Content-Type", "application/json"), ("Retry-After", "7")],
            body=err,
        )
    )
    got = stream(srouter, "/v1/chat/completions", CHAT_BODY, headers={"X-Request-ID": "nx-503"})
    assert got.status == 503
    assert got.headers["content-type"] == "application/json"
    assert got.headers["retry-after"] == "7"
    assert got.body == err
    line = access_line(srouter, "nx-503")
    assert line["status_code"] == 503 and line["error_type"] == "upstream_error"


def test_a_plain_2xx_answer_to_a_stream_request_is_relayed_as_it_is(
    srouter: RouterProcess, upstream: FakeUpstream
) -> None:
    body = json.dumps({"id": "x", "choices": [], "usage": None}).encode()
    upstream.reply_with(Reply(headers=[("Content-Type", "application/json")], body=body))
    got = stream(srouter, "/v1/chat/completions", CHAT_BODY)
    assert got.status == 200
    assert got.headers["content-type"] == "application/json"
    assert got.body == body
    # and its usage is counted, as a JSON request's is (it was not)
    before = metric(srouter, "tokens_total", type="prompt")
    usage = {"prompt_tokens": 11, "completion_tokens": 2, "total_tokens": 13}
    body = json.dumps({"id": "x", "choices": [], "usage": usage}).encode()
    upstream.reply_with(Reply(headers=[("Content-Type", "application/json")], body=body))
    got = stream(srouter, "/v1/chat/completions", CHAT_BODY)
    assert got.status == 200 and got.body == body
    deadline = time.monotonic() + 5  # counted when the request is finished
    while metric(srouter, "tokens_total", type="prompt") == before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert metric(srouter, "tokens_total", type="prompt") == before + 11
    # and when it comes after heartbeats committed the SSE head: counted too, and the stream
    # ends with an error event (its bytes were written raw into the event stream)
    upstream.reply_with(
        Reply(headers=[("Content-Type", "application/json")], body=body, delay=HB * 2.5)
    )
    got = stream(srouter, "/v1/chat/completions", CHAT_BODY)
    assert got.status == 200 and got.headers["content-type"].startswith("text/event-stream")
    assert b'"usage"' not in got.body and got.body.startswith(b": heartbeat")
    events = [e for e in got.body.split(b"\n\n") if e.startswith(b"event: error")]
    assert len(events) == 1 and b'"stream_error"' in events[0]
    deadline = time.monotonic() + 5
    while metric(srouter, "tokens_total", type="prompt") == before + 11:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert metric(srouter, "tokens_total", type="prompt") == before + 22


def test_heartbeats_only_between_events_after_an_idle_interval(
    srouter: RouterProcess, upstream: FakeUpstream
) -> None:
    first, second, last = openai_chat_stream("up-model-4")[:3]
    half = len(second) // 2
    upstream.reply_with(
        Reply(
            headers=SSE,
            chunks=[
                (0, first.encode()),
                (0, second[:half].encode()),  # the upstream pauses in the middle of an event
                (1.0, second[half:].encode()),
                (0, last.encode()),
            ],
        )
    )
    got = stream(srouter, "/v1/chat/completions", CHAT_BODY)
    assert_sse_head(got)
    events = got.events()
    kinds = [e for _, e in events]
    assert kinds[0] == first.encode()
    assert kinds[-2:] == [second.encode(), last.encode()]
    beats = kinds[1:-2]
    assert beats and all(b == HEARTBEAT for b in beats)  # whole heartbeats, between events
    assert got.body.replace(HEARTBEAT, b"") == (first + second + last).encode()
    assert len(beats) >= 2  # the upstream was silent for 1 s: about one per 0.3 s
    assert_heartbeat_spacing(got, HB)


def test_endpoint_stream_config_overrides_the_profile_field_by_field(
    srouter: RouterProcess, upstream: FakeUpstream
) -> None:
    cfg = Profile.model_validate(stream_profile("http://x")).resolve()
    assert cfg["/v1/completions"].heartbeat_interval_secs == HB_COMPLETIONS
    assert cfg["/v1/completions"].buffer_size == BUFFER  # not overridden: the profile's
    assert cfg["/v1/chat/completions"].heartbeat_interval_secs == HB

    text = 'data: {"choices":[{"index":0,"text":"x","finish_reason":null}]}\n\n'
    upstream.reply_with(Reply(headers=SSE, chunks=[(0, text.encode()), (3.2, b"data: [DONE]\n\n")]))
    got = stream(srouter, "/v1/completions", {"model": "m", "prompt": "p", "stream": True})
    assert [e for _, e in got.events()].count(HEARTBEAT) >= 1
    assert_heartbeat_spacing(got, HB_COMPLETIONS)


def test_early_commit_when_the_upstream_head_is_late(
    srouter: RouterProcess, upstream: FakeUpstream
) -> None:
    upstream.reply_with(
        lambda req: Reply(
            headers=SSE, chunks=[(0, e.encode()) for e in openai_chat_stream("m")], delay=1.2
        )
    )
    got = stream(srouter, "/v1/chat/completions", CHAT_BODY)
    assert_sse_head(got)
    assert got.head_at - got.t0 < 1.2  # the router committed before the upstream answered
    kinds = [e for _, e in got.events()]
    assert kinds[0] == HEARTBEAT
    assert b"".join(k for k in kinds if k != HEARTBEAT) == "".join(openai_chat_stream("m")).encode()


def test_the_sse_head_reaches_the_client_when_it_is_committed(
    srouter: RouterProcess, upstream: FakeUpstream
) -> None:
    """The head is written when the router commits it, not with the first piece after it: the
    router's own head after one heartbeat interval (before: only with the first heartbeat, two
    intervals in), and the upstream's head as it arrives when no event came with it (before: an
    interval later, with the first heartbeat). Neither head can reach the client before one
    interval without the fix, so each bound fails deterministically without it."""
    events = openai_chat_stream("m")
    upstream.reply_with(
        lambda req: Reply(headers=SSE, chunks=[(0, e.encode()) for e in events], delay=3.5)
    )
    got = stream(srouter, "/v1/completions", {"model": "m", "stream": True, "prompt": "hi"})
    assert_sse_head(got)
    assert got.head_at - got.t0 < 2 * HB_COMPLETIONS  # the router's own head, alone
    assert got.events()[0][1] == HEARTBEAT

    upstream.reply_with(  # the upstream's head at once, its first event 2 s later
        lambda req: Reply(headers=SSE, chunks=[(2.0, e.encode()) for e in events[:1]])
    )
    got = stream(srouter, "/v1/completions", {"model": "m", "stream": True, "prompt": "hi"})
    assert_sse_head(got)
    assert got.head_at - got.t0 < HB_COMPLETIONS  # the upstream's head, passed on at once
    assert got.events()[0][1] == HEARTBEAT


@pytest.mark.parametrize("delay", [0.0, 0.8])
def test_an_error_answer_that_breaks_off_is_a_502_or_an_error_event_never_a_500(
    srouter: RouterProcess, upstream: FakeUpstream, delay: float
) -> None:
    """A stream request whose upstream answers 500 (or 400) and closes in the middle of that
    answer's body: the router's 502 `protocol_error` (Anthropic-shaped on /v1/messages), or,
    after the router committed the SSE head itself (`delay` > HB), an error event. Before, the
    read's error escaped as a 500 "Internal error", and after an early commit the stream ended
    cleanly without one."""
    err = json.dumps({"error": {"message": "overloaded " + "x" * 200}}).encode()
    head = [("Content-Type", "application/json")]
    for status in (500, 400):
        cut = Reply(status=status, headers=head, body=err[:30], action="close_mid", delay=delay)
        upstream.reply_with(cut)
        rid = f"cut-{status}-{delay}"
        got = stream(srouter, "/v1/chat/completions", CHAT_BODY, headers={"X-Request-ID": rid})
        line = access_line(srouter, rid)
        assert line["error_type"] == "protocol_error", line
        if delay:
            assert_sse_head(got)
            last = got.events()[-1][1]
            assert last.startswith(b"event: error\ndata: ")
            assert (
                json.loads(last.split(b"data: ", 1)[1])["error"]["code"]
                == "upstream_protocol_error"
            )
            continue
        assert got.status == 502 and line["status_code"] == 502
        assert json.loads(got.body)["error"]["code"] == "upstream_protocol_error"
    upstream.reply_with(
        Reply(status=500, headers=head, body=err[:30], action="close_mid", delay=delay)
    )
    got = stream(srouter, "/v1/messages", {"model": "c", "stream": True, "max_tokens": 5})
    if delay:
        assert json.loads(got.events()[-1][1].split(b"data: ", 1)[1])["type"] == "error"
    else:
        assert got.status == 502 and json.loads(got.body)["type"] == "error"


def test_early_commit_then_upstream_error_becomes_an_error_event(
    srouter: RouterProcess, upstream: FakeUpstream
) -> None:
    err = {"error": {"message": "model overloaded", "type": "server_error", "code": None}}
    upstream.reply_with(
        Reply(
            status=500,
            headers=[("Content-Type", "application/json")],
            body=json.dumps(err).encode(),
            delay=0.8,
        )
    )
    got = stream(srouter, "/v1/chat/completions", CHAT_BODY, headers={"X-Request-ID": "ec-500"})
    assert_sse_head(got)
    kinds = [e for _, e in got.events()]
    assert kinds[0] == HEARTBEAT
    assert kinds[-1].startswith(b"event: error\ndata: ")
    assert json.loads(kinds[-1].split(b"data: ", 1)[1]) == err
    assert access_line(srouter, "ec-500")["error_type"] == "upstream_error"

    upstream.reply_with(Reply(action="reset", delay=0.8))
    got = stream(
        srouter, "/v1/messages", {"model": "c", "stream": True}, headers={"X-Request-ID": "ec-rst"}
    )
    assert got.status == 200
    last = got.events()[-1][1]
    assert last.startswith(b"event: error\ndata: ")
    data = json.loads(last.split(b"data: ", 1)[1])
    assert data["type"] == "error" and data["error"]["type"] == "api_error"  # Anthropic shape
    assert access_line(srouter, "ec-rst")["error_type"] == "io_error"


def test_upstream_break_mid_stream_ends_with_an_error_event(
    srouter: RouterProcess, upstream: FakeUpstream
) -> None:
    before = metric(srouter, "upstream_errors_total", error_type="stream_error")
    first = openai_chat_stream("m")[0].encode()
    upstream.reply_with(
        Reply(
            headers=SSE,
            chunks=[(0, first), (0.05, b'data: {"partial'), (0, b"never sent")],
            action="close_mid",
        )
    )
    got = stream(srouter, "/v1/chat/completions", CHAT_BODY, headers={"X-Request-ID": "mid-1"})
    assert_sse_head(got)
    events = [e for _, e in got.events()]
    assert events[0] == first
    assert b"partial" not in got.body  # the incomplete event is not half-delivered
    assert events[-1].startswith(b"event: error\ndata: ")
    data = json.loads(events[-1].split(b"data: ", 1)[1])
    assert data["error"]["code"] == "stream_error"
    line = access_line(srouter, "mid-1")
    assert line["status_code"] == 200 and line["error_type"] == "stream_error"
    assert metric(srouter, "upstream_errors_total", error_type="stream_error") == before + 1

    # the openai SDK turns the error event into an exception
    upstream.reply_with(
        Reply(headers=SSE, chunks=[(0, first), (0, b"data: {"), (0, b"x")], action="close_mid")
    )
    client = openai.OpenAI(base_url=srouter.url + "/v1", api_key="k", max_retries=0)
    with pytest.raises(openai.APIError):
        for _ in client.chat.completions.create(
            model="gpt-4", messages=[{"role": "user", "content": "x"}], stream=True
        ):
            pass


@pytest.mark.parametrize("partial", ['data: {"partial', 'data: {"choices":[{"delta":{}}]}'])
def test_a_stream_cut_in_the_middle_of_an_event_ends_with_an_error_event_of_its_own(
    srouter: RouterProcess, upstream: FakeUpstream, partial: str
) -> None:
    """An upstream that ends its response (cleanly) in the middle of an event: half an event
    that an SSE client discards, not an answer's end. The error event comes as an event of its
    own; before, it was written straight after the half event, and the openai SDK raised a
    JSONDecodeError instead of the stream's error."""
    events = openai_chat_stream("m")[:2]
    upstream.reply_with(Reply(headers=SSE, chunks=[(0.05, e.encode()) for e in [*events, partial]]))
    rid = f"mid-event-{len(partial)}"
    got = stream(srouter, "/v1/chat/completions", CHAT_BODY, headers={"X-Request-ID": rid})
    relayed = [e for _, e in got.events()]  # (asserts the body ends with a complete event)
    assert relayed[:-1] == [e.encode() for e in events]
    assert relayed[-1].startswith(b"event: error\ndata: ")
    assert json.loads(relayed[-1].split(b"data: ", 1)[1])["error"]["code"] == "stream_error"
    assert access_line(srouter, rid)["error_type"] == "stream_error"
    with pytest.raises(openai.APIError, match="stream"):
        for _ in openai.OpenAI(
            base_url=srouter.url + "/v1", api_key="k", max_retries=0
        ).chat.completions.create(
            model="gpt-4", messages=[{"role": "user", "content": "x"}], stream=True
        ):
            pass


@pytest.mark.parametrize("route", ["/v1/messages", "/v1/responses", "/v1/chat/completions"])
def test_a_stream_that_ends_before_its_last_event_ends_with_an_error_event(
    srouter: RouterProcess, upstream: FakeUpstream, route: str
) -> None:
    """SPEC §11: a cut stream never ends cleanly. An upstream that ended its response (a proper
    chunked end) after a few events and before `message_stop` / `response.completed` reached the
    client as a whole stream: the anthropic SDK returned "Hel" with no stop reason, the openai
    SDK "Hello" as if complete. Messages and Responses streams always end with their last event,
    so one without it ends with an error; Chat Completions' `[DONE]` is not sent by every
    compatible server, so a Chat stream without it is cut when its last data event has no
    finish reason either (docs/forwarding.md)."""
    if route == "/v1/messages":
        events = anthropic_stream("m")[:3]  # message_start, block start, the first delta
        body: dict[str, Any] = {"model": "m", "max_tokens": 9, "messages": [], "stream": True}
    elif route == "/v1/responses":
        events = openai_response_stream("m")[:5]  # ... the first output_text.delta
        body = {"model": "m", "input": "x", "stream": True}
    else:
        events = openai_chat_stream("m")[:2]  # no finish_reason, no [DONE]
        body = CHAT_BODY
    upstream.reply_with(Reply(headers=SSE, chunks=[(0, e.encode()) for e in events]))
    rid = f"early-end-{route.rsplit('/', 1)[1]}"
    got = stream(srouter, route, body, headers={"X-Request-ID": rid})
    assert_sse_head(got)
    # (without the heartbeats a loaded machine may add: `without_heartbeats`)
    relayed = [e for _, e in got.events() if e != HEARTBEAT]
    assert relayed[: len(events)] == [e.encode() for e in events]
    line = access_line(srouter, rid)
    last = relayed[-1]
    assert len(relayed) == len(events) + 1
    if route == "/v1/responses":
        assert last.startswith(b"event: response.failed\ndata: ")
    else:
        assert last.startswith(b"event: error\ndata: ")
    assert line["status_code"] == 200 and line["error_type"] == "stream_error"
    if route == "/v1/chat/completions":
        # Not cut: a whole Chat stream without `[DONE]` (its finish chunk last, or the usage
        # chunk after it, or a comment after that), or one that ended with an error object of
        # the upstream's own.
        whole = openai_chat_stream("m")[:-1]  # ... the finish chunk, no [DONE]
        usage = {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}
        usage_chunk = "data: " + json.dumps({"id": "c", "choices": [], "usage": usage}) + "\n\n"
        upstream_error = 'data: {"error":{"message":"overloaded","type":"server_error"}}\n\n'
        usage_in_a_choice = "data: " + json.dumps({"id": "c", "usage": usage, "choices": [
            {"index": 0, "delta": {}, "finish_reason": None}]}) + "\n\n"  # fmt: skip
        chat_tails = {
            "finish": whole,
            "usage": [*whole, usage_chunk],
            "usage-in-a-choice": [*whole, usage_in_a_choice],
            "comment": [*whole, ": still here\n\n"],
            "blank-line": [*whole, "\n"],
            "unended-comment": [*whole, ": ping"],
            "event-without-data": [*whole, "event: ping\n\n"],
            "crlf": [e.replace("\n", "\r\n") for e in whole],
            "error": [*whole[:1], upstream_error],
        }
        for name, sent in chat_tails.items():
            # apart in time: each its own piece (a piece of comments only is not the tail)
            upstream.reply_with(Reply(headers=SSE, chunks=[(0.05, e.encode()) for e in sent]))
            got = stream(srouter, route, {**CHAT_BODY, "stream_options": {"include_usage": True}},
                         headers={"X-Request-ID": f"{rid}-{name}"})  # fmt: skip
            assert without_heartbeats(got.body) == "".join(sent).encode(), name
            assert access_line(srouter, f"{rid}-{name}").get("error_type") is None, name
        return
    # Not cut: a whole stream whose last event came without the blank line after it, or with
    # another field before its `event:` line; one that ended with an error event of its own is
    # not given a second one.
    whole = anthropic_stream("m")
    error = 'event: error\ndata: {"type":"error","error":{"type":"overloaded_error"}}\n\n'
    tails = {
        "bare": whole[-1].rstrip("\n") + "\n",
        "id": "id: 42\n" + whole[-1],
        "error": error,
    }
    messages = {"model": "m", "max_tokens": 9, "messages": [], "stream": True}
    for name, last in tails.items():
        sent = [*whole[:-1], last] if name != "error" else [*whole[:3], last]
        upstream.reply_with(Reply(headers=SSE, chunks=[(0.0, e.encode()) for e in sent]))
        got = stream(srouter, "/v1/messages", messages, headers={"X-Request-ID": f"{rid}-{name}"})
        assert without_heartbeats(got.body) == "".join(sent).encode(), name


def test_client_disconnect_cancels_the_upstream_within_a_second(
    srouter: RouterProcess, upstream: FakeUpstream
) -> None:
    piece = openai_chat_stream("m", ("tok",))[0].encode()

    def endless() -> Iterator[tuple[float, bytes]]:
        for _ in range(10_000):
            yield (0.1, piece)

    upstream.reply_with(Reply(headers=SSE, chunk_source=endless, watch_close=True))
    errors_before = metric(srouter, "upstream_errors_total")
    gone_before = metric(srouter, "requests_total", route="/v1/chat/completions", status="499")
    closed = len(upstream.conn_closed_at)
    body = json.dumps(CHAT_BODY).encode()
    with socket.create_connection(("127.0.0.1", srouter.port)) as s:
        s.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"X-Request-ID: gone-1\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
        )
        seen = b""
        while seen.count(b"chat.completion.chunk") < 2:
            data = s.recv(65536)
            assert data
            seen += data
        assert seen.startswith(b"HTTP/1.1 200")
    left_at = time.monotonic()
    deadline = left_at + 3
    while len(upstream.conn_closed_at) == closed and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(upstream.conn_closed_at) > closed, "the upstream connection stayed open"
    assert upstream.conn_closed_at[-1] - left_at < 1.0
    line = access_line(srouter, "gone-1")
    assert line["status_code"] == 499
    assert "error_type" not in line
    assert (
        metric(srouter, "requests_total", route="/v1/chat/completions", status="499")
        == gone_before + 1
    )
    assert metric(srouter, "upstream_errors_total") == errors_before


@pytest.mark.parametrize("leaves", ["after-done", "before-done"])
def test_a_client_that_closes_after_the_last_event_got_its_answer(
    srouter: RouterProcess, upstream: FakeUpstream, leaves: str
) -> None:
    """SSE clients close as soon as they read the stream's last event (`[DONE]`), often before
    HTTP's terminating chunk, which carries nothing. Such a request is complete (200), however
    late the upstream's own end comes; one that leaves before `[DONE]` is 499. (Before, the
    first was 499 whenever the client's close beat the upstream's end: 1-8 in 300 streams.)"""
    events = [e.encode() for e in openai_chat_stream("m", ("Hel", "lo"))]
    # before-done: the events after "Hel" come a second later, when the client has left
    later = 1.0 if leaves == "before-done" else 0.0
    chunks = [(0.0 if b'"Hel"' in e or i == 0 else later, e) for i, e in enumerate(events)]
    upstream.reply_with(Reply(headers=SSE, chunks=chunks, end_delay=0.5, watch_close=True))
    rid = f"closes-{leaves}"
    until = b"data: [DONE]\n\n" if leaves == "after-done" else b'"Hel"'
    body = json.dumps(CHAT_BODY).encode()
    with socket.create_connection(("127.0.0.1", srouter.port)) as s:
        s.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"X-Request-ID: %s\r\nContent-Length: %d\r\n\r\n%s" % (rid.encode(), len(body), body)
        )
        seen = b""
        while until not in seen:
            data = s.recv(65536)
            assert data, seen
            seen += data
        assert b"0\r\n\r\n" not in seen  # the router's end had not come: the upstream's had not
    line = access_line(srouter, rid)
    assert line["status_code"] == (200 if leaves == "after-done" else 499), line


# -- memory ------------------------------------------------------------------------------------


def worker_pids(router: RouterProcess) -> list[int]:
    """The router's Sanic workers: children of the router process that logged "Worker ready"."""
    assert router.proc is not None
    ready = {int(m) for m in re.findall(r"Worker ready \[(\d+)\]", router.output())}
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) in ready:
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == router.proc.pid:
                out.append(int(entry))
    return out


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


class RssPeak:
    """Samples a process's RSS in a thread while the block runs; `grown_mib` = peak - start."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.base = self.peak = rss_kib(pid)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_kib(self.pid))
            time.sleep(0.02)

    @property
    def grown_mib(self) -> float:
        return (self.peak - self.base) / 1024

    def __enter__(self) -> RssPeak:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


EVENT = b"data: " + b"x" * (65536 - 8) + b"\n\n"
TOTAL_EVENTS = 3200  # 3200 * 64 KiB = 200 MiB
DONE = b"data: [DONE]\n\n"  # a Chat stream ends with it (or a finish reason), else it was cut


def test_memory_stays_bounded_for_a_200_mb_stream_to_a_slow_reader(
    srouter: RouterProcess, upstream: FakeUpstream
) -> None:
    pids = worker_pids(srouter)
    assert len(pids) == 1, pids
    pid = pids[0]

    def big() -> Iterator[tuple[float, bytes]]:
        for _ in range(TOTAL_EVENTS):
            yield (0, EVENT)
        yield (0, DONE)

    # warm up allocator and code paths with a short version of the same stream
    upstream.reply_with(Reply(headers=SSE, chunks=[(0, EVENT)] * 32 + [(0, DONE)]))
    stream(srouter, "/v1/chat/completions", CHAT_BODY)
    upstream.reply_with(Reply(headers=SSE, chunk_source=big))
    received = 0
    sent_during_pause = 0
    with (
        RssPeak(pid) as rss,
        httpx.Client(timeout=30) as c,
        c.stream("POST", srouter.url + "/v1/chat/completions", json=CHAT_BODY) as r,
    ):
        assert r.status_code == 200
        for i, piece in enumerate(r.iter_raw(65536)):
            received += len(piece)
            if i == 16:
                # the reader stops: the router must stop reading the upstream too
                sent_before = upstream.body_bytes_sent
                time.sleep(1.5)
                sent_during_pause = upstream.body_bytes_sent - sent_before
            elif i % 8 == 0:
                time.sleep(0.002)  # and then reads slowly
    assert received == TOTAL_EVENTS * len(EVENT) + len(DONE)
    assert rss.grown_mib < 50, f"worker RSS grew by {rss.grown_mib:.1f} MiB"
    # back-pressure reached the upstream: while the reader paused, at most the socket buffers
    # (a few MiB each way) were filled, not the 200 MiB stream
    assert sent_during_pause < 64 * 1024 * 1024, sent_during_pause


def test_a_reader_that_keeps_pausing_gets_every_event_once_and_in_order(
    srouter: RouterProcess, upstream: FakeUpstream
) -> None:
    """Back-pressure on and off all along the stream, on every upstream engine: every event
    arrives once and in order. (The race this guards against, the `stream` fast path's offer
    passing a piece the relay's task is still writing, needs two callbacks in one loop turn and
    is rarely hit here; tests/unit/test_stream_offer.py holds the rule deterministically.)"""
    count = 20000
    pad = "x" * 400

    def numbered() -> Iterator[tuple[float, bytes]]:
        for n in range(count):
            yield (0, f'data: {{"n": {n}, "p": "{pad}"}}\n\n'.encode())

    upstream.reply_with(Reply(headers=SSE, chunk_source=numbered))
    data = bytearray()
    with (
        httpx.Client(timeout=30) as c,
        c.stream("POST", srouter.url + "/v1/chat/completions", json=CHAT_BODY) as r,
    ):
        assert r.status_code == 200
        for i, piece in enumerate(r.iter_raw(8192)):
            data += piece
            if i % 2 == 0:
                time.sleep(0.001)  # slow: the router's buffer fills, then drains, many times
    seen = [json.loads(e[6:])["n"] for e in bytes(data).split(b"\n\n") if e.startswith(b"data: {")]
    assert seen == list(range(count))


# -- real SDK clients --------------------------------------------------------------------------


def _openai(router: RouterProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=router.url + "/v1", api_key="sk-stream", max_retries=0)


def test_openai_sdk_chat_stream_gets_usage_counted_but_not_the_extra_chunk(
    srouter: RouterProcess, upstream: FakeUpstream
) -> None:
    prompt0 = metric(srouter, "tokens_total", type="prompt", model="up-model-4")
    completion0 = metric(srouter, "tokens_total", type="completion", model="up-model-4")
    ttfb0 = metric(srouter, "stream_first_byte_seconds_count", route="/v1/chat/completions")
    chunks = list(
        _openai(srouter).chat.completions.create(
            model="gpt-4", messages=[{"role": "user", "content": "hi"}], stream=True
        )
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "Hello"
    assert all(c.choices for c in chunks)  # the usage-only chunk was removed
    assert all(c.usage is None for c in chunks)
    sent: Recorded = upstream.last
    assert sent.json()["stream_options"] == {"include_usage": True}
    assert sent.json()["model"] == "up-model-4"
    assert metric(srouter, "tokens_total", type="prompt", model="up-model-4") == prompt0 + 7
    assert metric(srouter, "tokens_total", type="completion", model="up-model-4") == completion0 + 3
    assert (
        metric(srouter, "stream_first_byte_seconds_count", route="/v1/chat/completions")
        == ttfb0 + 1
    )


def test_openai_sdk_chat_stream_that_asked_for_usage_gets_it(
    srouter: RouterProcess, upstream: FakeUpstream
) -> None:
    prompt0 = metric(srouter, "tokens_total", type="prompt", model="up-model-4")
    chunks = list(
        _openai(srouter).chat.completions.create(
            model="gpt-4",
            messages=[{"role": "user", "content": "hi"}],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[-1].usage is not None and chunks[-1].usage.prompt_tokens == 7
    assert chunks[-1].choices == []
    assert metric(srouter, "tokens_total", type="prompt", model="up-model-4") == prompt0 + 7


def test_openai_sdk_completions_stream(srouter: RouterProcess, upstream: FakeUpstream) -> None:
    chunks = list(_openai(srouter).completions.create(model="gpt-4", prompt="Say hi", stream=True))
    assert "".join(c.choices[0].text for c in chunks) == "Hello"
    assert all(c.choices for c in chunks)
    assert upstream.last.path == "/v1/completions"
    assert upstream.last.json()["stream_options"] == {"include_usage": True}


def test_anthropic_sdk_messages_stream(srouter: RouterProcess, upstream: FakeUpstream) -> None:
    prompt0 = metric(srouter, "tokens_total", type="prompt", model="other")
    completion0 = metric(srouter, "tokens_total", type="completion", model="other")
    client = anthropic.Anthropic(base_url=srouter.url, api_key="sk-ant", max_retries=0)
    with client.messages.stream(
        model="claude-x", max_tokens=32, messages=[{"role": "user", "content": "hi"}]
    ) as s:
        text = "".join(s.text_stream)
        final = s.get_final_message()
    assert text == "Hello"
    assert final.usage.output_tokens == 4
    assert "stream_options" not in upstream.last.json()  # only OpenAI-format routes get it
    assert metric(srouter, "tokens_total", type="prompt", model="other") == prompt0 + 9
    assert metric(srouter, "tokens_total", type="completion", model="other") == completion0 + 4
