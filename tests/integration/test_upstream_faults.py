"""Failing upstreams, through the fault-injecting proxy (tests/fakes/faultproxy.py) and the fake
upstream: connect timeout, time to first byte, resets, stream idle time and total stream
deadline, retry only when the request provably never left, and a full pool answering 503."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from service.proxy.upstream import send
from tests.conftest import base_profile
from tests.fakes.faultproxy import Blackhole, Fault, FaultProxy
from tests.fakes.upstream import FakeUpstream, Recorded, Reply, default_reply, openai_chat_stream
from tests.support import RouterFactory, RouterProcess, free_port

CHAT = {"model": "gpt-4", "messages": [{"role": "user", "content": "hi"}]}
STREAM = {**CHAT, "stream": True}
SSE_HEAD = [("Content-Type", "text/event-stream")]


def _profile(base_url: str) -> dict[str, Any]:
    return base_profile(base_url, timeouts={"connectSecs": 1, "readSecs": 2})


@pytest.fixture(scope="module")
def proxy(fake_upstream: FakeUpstream) -> Iterator[FaultProxy]:
    with FaultProxy(fake_upstream.port) as p:
        yield p


@pytest.fixture
def faults(proxy: FaultProxy, upstream: FakeUpstream) -> Iterator[FaultProxy]:
    proxy.reset()
    yield proxy
    proxy.reset()


@pytest.fixture(scope="module")
def faulty(proxy: FaultProxy, module_router_factory: RouterFactory) -> RouterProcess:
    env = {"API_ROUTER_STREAM_IDLE_SECS": "1.5", "API_ROUTER_STREAM_MAX_SECS": "3"}
    return module_router_factory(_profile(proxy.url), env=env)


def _log_for(router: RouterProcess, request_id: str) -> dict[str, object]:
    return router.wait_for_log(
        lambda r: r.get("event") == "request_completed" and r.get("request_id") == request_id
    )


def _post(router: RouterProcess, rid: str, path: str = "/v1/chat/completions") -> httpx.Response:
    return httpx.post(router.url + path, json=CHAT, headers={"X-Request-ID": rid}, timeout=30)


def _stream_events(router: RouterProcess, rid: str, limit_secs: float = 20) -> list[str]:
    """The SSE lines of one stream, read for at most `limit_secs` (a stream that never ends
    fails the test instead of hanging it)."""
    lines: list[str] = []
    deadline = time.monotonic() + limit_secs
    with (
        httpx.Client(timeout=limit_secs) as c,
        c.stream(
            "POST", router.url + "/v1/chat/completions", json=STREAM, headers={"X-Request-ID": rid}
        ) as r,
    ):
        assert r.status_code == 200
        for line in r.iter_lines():
            lines.append(line)
            if time.monotonic() > deadline:
                raise AssertionError("the stream was never cut")
    return lines


# -- before a response -----------------------------------------------------------------------
def test_connect_timeout_is_504(fake_upstream: FakeUpstream, router_factory: RouterFactory) -> None:
    with Blackhole() as hole:
        r = router_factory(_profile(hole.url))
        resp = _post(r, "connect-timeout")
        assert resp.status_code == 504
        assert resp.json()["error"]["code"] == "upstream_timeout"
        assert _log_for(r, "connect-timeout")["error_type"] == "timeout"


def test_time_to_first_byte_timeout_is_504(faulty: RouterProcess, faults: FaultProxy) -> None:
    faults.plan(Fault("delay", delay=4))  # readSecs is 2
    resp = _post(faulty, "ttfb")
    assert resp.status_code == 504
    assert _log_for(faulty, "ttfb")["error_type"] == "timeout"


def test_reset_after_the_request_was_sent_is_502_and_not_retried(
    faulty: RouterProcess, faults: FaultProxy
) -> None:
    faults.plan(Fault("reset"))
    resp = _post(faulty, "reset-after-send")
    assert resp.status_code == 502
    assert _log_for(faulty, "reset-after-send")["error_type"] == "io_error"
    # The request reached "the upstream": retrying could run (and bill) it twice.
    assert faults.connections == 1
    assert b"POST /v1/chat/completions" in faults.received[0]
    assert not [
        r
        for r in faulty.logs()
        if r.get("event") == "upstream_retry" and r.get("request_id") == "reset-after-send"
    ]


def test_reset_on_accept_is_retried_only_if_nothing_was_sent(
    faulty: RouterProcess, faults: FaultProxy
) -> None:
    """Reset as soon as accepted. Two honest outcomes, depending on whether the reset reached
    the router before or after it wrote the request: seen as a failed connect (the request
    provably never left) it is retried once, on a new connection; seen after the write, the
    router cannot prove the request was not read, so 502 and no retry."""
    faults.plan(Fault("reset_on_accept"))
    resp = _post(faulty, "reset-on-accept")
    if resp.status_code == 200:
        assert faults.connections == 2
        assert faults.received[0] == b""  # the first connection never got a byte
        assert [
            r
            for r in faulty.logs()
            if r.get("event") == "upstream_retry" and r.get("request_id") == "reset-on-accept"
        ]
    else:
        assert resp.status_code == 502
        assert faults.connections == 1


def test_refused_connect_is_retried_exactly_once(
    fake_upstream: FakeUpstream, router_factory: RouterFactory
) -> None:
    r = router_factory(_profile(f"http://127.0.0.1:{free_port()}"))
    resp = _post(r, "refused")
    assert resp.status_code == 502
    assert _log_for(r, "refused")["error_type"] == "connect_error"
    retries = [x for x in r.logs() if x.get("event") == "upstream_retry"]
    assert [x.get("request_id") for x in retries] == ["refused"]


def test_retry_after_a_refused_connect_reaches_the_upstream() -> None:
    """The retry itself, on real sockets: refused on the first try (bound, not listening), then
    listening by the time of the second; a third try never happens."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    attempts: list[int] = []

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        writer.close()

    async def main() -> tuple[int, bytes, int]:
        server: asyncio.AbstractServer | None = None

        async def on_request(_: httpx.Request) -> None:
            nonlocal server
            attempts.append(1)
            if len(attempts) == 2:
                server = await asyncio.start_server(answer, sock=sock)

        async with httpx.AsyncClient(event_hooks={"request": [on_request]}) as client:
            resp = await send(client, client.build_request("POST", f"http://127.0.0.1:{port}/x"))
            body = await resp.aread()
            await resp.aclose()
        assert server is not None
        server.close()
        return resp.status_code, body, len(attempts)

    try:
        assert asyncio.run(main()) == (200, b"ok", 2)
    finally:
        sock.close()


def test_a_connect_that_fails_twice_is_not_tried_a_third_time() -> None:
    port = free_port()
    attempts: list[int] = []

    async def main() -> None:
        async def on_request(_: httpx.Request) -> None:
            attempts.append(1)

        async with httpx.AsyncClient(event_hooks={"request": [on_request]}) as client:
            with pytest.raises(httpx.ConnectError):
                await send(client, client.build_request("POST", f"http://127.0.0.1:{port}/x"))

    asyncio.run(main())
    assert len(attempts) == 2


# -- streams -----------------------------------------------------------------------------------
def _error_data(lines: list[str]) -> dict[str, object]:
    i = lines.index("event: error")
    return json.loads(lines[i + 1].removeprefix("data: "))  # type: ignore[no-any-return]


def test_a_stream_that_stops_producing_events_is_cut_at_its_idle_time(
    faulty: RouterProcess, faults: FaultProxy, upstream: FakeUpstream
) -> None:
    """The upstream drips bytes (so no read ever times out) but never completes an event."""
    faults.plan(Fault("drip", chunk=8, interval=0.2))
    lines = _stream_events(faulty, "stream-idle")
    err = _error_data(lines)
    assert err["error"]["type"] == "timeout_error"  # type: ignore[index]
    assert _log_for(faulty, "stream-idle")["error_type"] == "timeout"


def test_a_stream_that_never_ends_is_cut_at_its_total_deadline(
    faulty: RouterProcess, faults: FaultProxy, upstream: FakeUpstream
) -> None:
    events = openai_chat_stream("up-model-4", ("tick ",))

    def endless() -> Iterator[tuple[float, bytes]]:
        for _ in range(400):  # bounded: 400 * 0.1 s is far past the 3 s deadline
            yield (0.1, events[0].encode())

    upstream.reply_with(Reply(headers=SSE_HEAD, chunk_source=endless, watch_close=True))
    lines = _stream_events(faulty, "stream-deadline")
    data = [x for x in lines if x.startswith("data: ")]
    assert len(data) > 5, "events kept flowing until the deadline"
    err = _error_data(lines)
    assert err["error"]["type"] == "timeout_error"  # type: ignore[index]
    assert _log_for(faulty, "stream-deadline")["error_type"] == "timeout"


def test_a_stream_within_its_limits_is_untouched(
    faulty: RouterProcess, faults: FaultProxy, upstream: FakeUpstream
) -> None:
    lines = _stream_events(faulty, "stream-ok")
    assert "event: error" not in lines
    assert lines[-2:] == ["data: [DONE]", ""] or "data: [DONE]" in lines


# -- the upstream pool ---------------------------------------------------------------------------
def test_a_full_pool_answers_503_at_once_instead_of_queueing(
    fake_upstream: FakeUpstream, upstream: FakeUpstream, router_factory: RouterFactory
) -> None:
    env = {"API_ROUTER_UPSTREAM_MAX_CONNECTIONS": "1", "API_ROUTER_UPSTREAM_POOL_WAIT_SECS": "0.2"}
    release = threading.Event()

    def slow_first(req: Recorded) -> Reply:
        reply = default_reply(req)
        if len(upstream.requests) == 1:
            reply.delay = 4.0
        return reply

    profile = base_profile(upstream.url, timeouts={"connectSecs": 1, "readSecs": 10})
    r = router_factory(profile, env=env)
    upstream.reply_with(slow_first)
    first: list[httpx.Response] = []
    holder = threading.Thread(target=lambda: first.append(_post(r, "holder")), daemon=True)
    holder.start()
    deadline = time.monotonic() + 10
    while not upstream.requests:  # the only pooled connection is now busy
        assert time.monotonic() < deadline
        time.sleep(0.02)
    second = _post(r, "waiter")
    assert holder.is_alive(), "the second request must not have waited for the first"
    assert second.status_code == 503
    assert second.json()["error"]["code"] == "service_unavailable"
    assert len(upstream.requests) == 1  # it never reached the upstream
    release.set()
    holder.join(15)
    assert first and first[0].status_code == 200
