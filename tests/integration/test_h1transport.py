"""The router's own httpx transport (service/proxy/h1transport.py) against scripted raw servers:
connection reuse and when a connection must not be reused, response framing (chunked, until
EOF, 1xx, HEAD), header injection refused, the pool cap and its wait, back-pressure on a large
body, timeouts and broken answers as httpx's exception types. Each server is a real TCP server on
loopback whose every byte the test writes."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

import httpx
import pytest

from service.proxy.h1transport import READ_PAUSE_BYTES, H1Transport
from service.proxy.upstream import UpstreamClient
from tests.fakes.loopback import LoopbackServer

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: application/json\r\n\r\n{}"


class Scripted(LoopbackServer):
    """Each connection runs `handler`; counts connections and what was received."""

    thread_name = "scripted-server"

    def __init__(self, handler: Handler) -> None:
        super().__init__()
        self.handler = handler
        self.connections = 0
        self.closed = 0
        self.received = bytearray()
        self.written = 0

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            await self.handler(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self.closed += 1
            writer.close()


async def read_request(reader: asyncio.StreamReader, server: Scripted | None = None) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    body = b""
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            body = await reader.readexactly(int(line.split(b":")[1]))
    if server is not None:
        server.received += head + body
    return head + body


def repeating(answer: bytes, server_ref: list[Scripted] | None = None) -> Handler:
    """Answer every request on the connection with `answer` (recording into server_ref[0])."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await read_request(reader, server_ref[0] if server_ref else None)
            writer.write(answer)
            await writer.drain()

    return handler


def keep_alive_ok(server_ref: list[Scripted]) -> Handler:
    return repeating(OK, server_ref)


@pytest.fixture
def scripted() -> Iterator[Callable[[Handler], Scripted]]:
    started: list[Scripted] = []

    def start(handler: Handler) -> Scripted:
        s = Scripted(handler).start()
        started.append(s)
        return s

    yield start
    for s in started:
        s.stop()


def client(max_connections: int = 16) -> UpstreamClient:
    return UpstreamClient(H1Transport(httpx.Limits(max_connections=max_connections)))


def req(
    c: UpstreamClient,
    url: str,
    body: bytes = b"{}",
    headers: list[tuple[str, str]] | None = None,
    method: str = "POST",
    **timeouts: float,
) -> httpx.Request:
    t = httpx.Timeout(timeouts.get("all", 5.0), **{k: v for k, v in timeouts.items() if k != "all"})
    return c.build_request(method, url, content=body, headers=headers or [], timeout=t)


async def fetch(c: UpstreamClient, r: httpx.Request) -> tuple[httpx.Response, bytes]:
    resp = await c.send(r, stream=True)
    try:
        data = b"".join([x async for x in resp.aiter_raw()])
    finally:
        await resp.aclose()
    return resp, data


def test_a_connection_is_reused_after_a_complete_response(scripted) -> None:  # type: ignore[no-untyped-def]
    ref: list[Scripted] = []
    s = scripted(keep_alive_ok(ref))
    ref.append(s)

    async def go() -> None:
        c = client()
        for _ in range(5):
            resp, data = await fetch(c, req(c, s.url + "/v1/x?a=1"))
            assert (resp.status_code, data, resp.http_version) == (200, b"{}", "HTTP/1.1")
        await c.aclose()

    asyncio.run(go())
    assert s.connections == 1
    first = bytes(s.received).split(b"\r\n\r\n")[0]
    assert first.startswith(b"POST /v1/x?a=1 HTTP/1.1\r\n")
    # Only what the relay sent plus the framing httpx adds: no invented User-Agent or Accept.
    names = {ln.split(b":")[0].lower() for ln in first.split(b"\r\n")[1:]}
    assert names == {b"host", b"content-length"}


def test_an_abandoned_response_closes_its_connection(scripted) -> None:  # type: ignore[no-untyped-def]
    s = scripted(repeating(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n01234"))  # 5 of 10

    async def go() -> None:
        c = client()
        for _ in range(2):
            resp = await c.send(req(c, s.url), stream=True)
            async for chunk in resp.aiter_raw():
                assert chunk == b"01234"
                break
            await resp.aclose()  # the client left mid-body
        await c.aclose()

    asyncio.run(go())
    assert s.connections == 2  # never a second response on a connection still mid-body


@pytest.mark.parametrize(
    "answer,expected,reused",
    [
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
            b"abcde",
            True,
        ),
        (
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 1\r\n\r\nx",
            b"x",
            True,
        ),
        (b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok", b"ok", False),
        (b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok", b"ok", False),
    ],
    ids=["chunked", "100-continue", "connection-close", "http-1.0"],
)
def test_response_framing(scripted, answer: bytes, expected: bytes, reused: bool) -> None:  # type: ignore[no-untyped-def]
    s = scripted(repeating(answer))

    async def go() -> None:
        c = client()
        for _ in range(2):
            resp, data = await fetch(c, req(c, s.url))
            assert data == expected
            assert resp.status_code in (200, 201)
        await c.aclose()

    asyncio.run(go())
    assert s.connections == (1 if reused else 2)


def test_a_body_delimited_by_the_end_of_the_connection(scripted) -> None:  # type: ignore[no-untyped-def]
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\n\r\npart one, ")
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.write(b"part two")
        await writer.drain()
        # closing ends the body (the fixture closes the writer)

    s = scripted(handler)

    async def go() -> bytes:
        c = client()
        _, data = await fetch(c, req(c, s.url))
        await c.aclose()
        return data

    assert asyncio.run(go()) == b"part one, part two"


def test_head_request_has_no_body(scripted) -> None:  # type: ignore[no-untyped-def]
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
        await writer.drain()
        await reader.read()  # until the client closes

    s = scripted(handler)

    async def go() -> bytes:
        c = client()
        resp, data = await fetch(c, req(c, s.url, body=b"", method="HEAD"))
        assert resp.headers["content-length"] == "1000"
        await c.aclose()
        return data

    assert asyncio.run(go()) == b""


@pytest.mark.parametrize("bad", ["a\r\nInjected: 1", "a\nInjected: 1", "a\rb", "a\0b"])
def test_a_header_with_a_line_break_is_never_sent(scripted, bad: str) -> None:  # type: ignore[no-untyped-def]
    ref: list[Scripted] = []
    s = scripted(keep_alive_ok(ref))
    ref.append(s)

    async def go() -> None:
        c = client()
        r = req(c, s.url, headers=[("X-Test", "ok")])
        r.headers["X-Test"] = bad  # past httpx's own checks, as a relayed header could be
        with pytest.raises(httpx.LocalProtocolError):
            await fetch(c, r)
        await c.aclose()

    asyncio.run(go())
    assert s.connections == 0 and s.received == b""


def test_the_pool_cap_waits_then_answers_pool_timeout(scripted) -> None:  # type: ignore[no-untyped-def]

    s = scripted(repeating(OK))

    async def go() -> None:
        c = client(max_connections=1)
        held = await c.send(req(c, s.url), stream=True)  # not read yet: the one slot is taken
        with pytest.raises(httpx.PoolTimeout):
            await fetch(c, req(c, s.url, pool=0.2))
        # A waiter gets the connection as soon as it is released, on the same connection.
        waiting = asyncio.create_task(fetch(c, req(c, s.url, pool=5.0)))
        await asyncio.sleep(0.05)
        assert not waiting.done()
        assert b"".join([x async for x in held.aiter_raw()]) == b"{}"
        await held.aclose()
        _, data = await waiting
        assert data == b"{}"
        await c.aclose()

    asyncio.run(go())
    assert s.connections == 1


def test_a_slow_reader_pauses_the_upstream(scripted) -> None:  # type: ignore[no-untyped-def]
    total = 64 * 1024 * 1024
    piece = b"x" * 65536

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % total)
        for _ in range(total // len(piece)):
            writer.write(piece)
            await writer.drain()
            server.written += len(piece)

    server = scripted(handler)

    async def go() -> None:
        c = client()
        resp = await c.send(req(c, server.url), stream=True)
        it = resp.aiter_raw()
        first = await it.__anext__()
        assert first
        # Not reading: the upstream must stop once socket buffers and our 256 KiB are full.
        last, stable_since = -1, time.monotonic()
        while time.monotonic() - stable_since < 0.5:
            await asyncio.sleep(0.05)
            if server.written != last:
                last, stable_since = server.written, time.monotonic()
        assert server.written < total // 2
        received = len(first)
        async for chunk in it:
            received += len(chunk)
            assert len(chunk) <= READ_PAUSE_BYTES + 256 * 1024  # + at most one socket read
        assert received == total
        await resp.aclose()
        await c.aclose()

    asyncio.run(go())


def test_a_streamed_request_body_is_sent_chunked_or_with_its_length(scripted) -> None:  # type: ignore[no-untyped-def]
    bodies: list[bytes] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            if b"chunked" in head.lower():
                data = b""
                while True:
                    size = int((await reader.readuntil(b"\r\n")).strip(), 16)
                    chunk = await reader.readexactly(size + 2)
                    if size == 0:
                        break
                    data += chunk[:-2]
            else:
                length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
                data = await reader.readexactly(length)
            bodies.append(data)
            writer.write(OK)
            await writer.drain()

    s = scripted(handler)

    async def parts() -> object:
        for p in (b"first ", b"", b"second ", b"third"):
            await asyncio.sleep(0.01)
            yield p

    async def go() -> None:
        c = client()
        t = httpx.Timeout(5.0)
        r1 = httpx.Request("POST", s.url, content=parts(), extensions={"timeout": t.as_dict()})
        r2 = httpx.Request(
            "POST",
            s.url,
            content=parts(),
            headers={"Content-Length": "18"},
            extensions={"timeout": t.as_dict()},
        )
        for r in (r1, r2):
            _, data = await fetch(c, r)
            assert data == b"{}"
        await c.aclose()

    asyncio.run(go())
    assert bodies == [b"first second third", b"first second third"]
    assert s.connections == 1


def test_an_error_of_the_request_body_source_propagates_as_it_is(scripted) -> None:  # type: ignore[no-untyped-def]
    ref: list[Scripted] = []
    s = scripted(keep_alive_ok(ref))
    ref.append(s)

    class TooLarge(Exception):
        pass

    async def parts() -> object:
        yield b"some"
        raise TooLarge()

    async def go() -> None:
        c = client()
        t = httpx.Timeout(5.0)
        r = httpx.Request("POST", s.url, content=parts(), extensions={"timeout": t.as_dict()})
        with pytest.raises(TooLarge):
            await fetch(c, r)
        _, data = await fetch(c, req(c, s.url))  # the half-sent connection was not reused
        assert data == b"{}"
        await c.aclose()

    asyncio.run(go())
    assert s.connections == 2


@pytest.mark.parametrize(
    "answer,error,message",
    [
        (b"", httpx.RemoteProtocolError, "Server disconnected without sending a response."),
        (b"NOT HTTP AT ALL\r\n\r\n", httpx.RemoteProtocolError, "Malformed response"),
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n12345",
            httpx.RemoteProtocolError,
            "peer closed connection without sending complete body",
        ),
        (
            b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * 70000 + b"\r\n\r\n",
            httpx.RemoteProtocolError,
            "head too large",
        ),
    ],
    ids=["closed-before-answer", "garbage", "closed-mid-body", "huge-head"],
)
def test_broken_answers_are_httpx_errors(
    scripted, answer: bytes, error: type, message: str
) -> None:  # type: ignore[no-untyped-def]
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(answer)
        await writer.drain()  # then the connection is closed

    s = scripted(handler)

    async def go() -> None:
        c = client()
        with pytest.raises(error, match=message):
            await fetch(c, req(c, s.url))
        await c.aclose()

    asyncio.run(go())


def test_timeouts(scripted) -> None:  # type: ignore[no-untyped-def]
    async def stall(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n12345")  # then nothing
        await writer.drain()
        await asyncio.sleep(10)

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        await asyncio.sleep(10)

    s1, s2 = scripted(silent), scripted(stall)

    async def go() -> None:
        c = client()
        with pytest.raises(httpx.ReadTimeout):
            await fetch(c, req(c, s1.url, read=0.2))
        resp = await c.send(req(c, s2.url, read=0.2), stream=True)
        with pytest.raises(httpx.ReadTimeout):
            async for _ in resp.aiter_raw():
                pass
        await resp.aclose()
        await c.aclose()

    asyncio.run(go())


def test_connect_failures(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, not listening: refused

    async def go() -> None:
        c = client()
        with pytest.raises(httpx.ConnectError) as e:
            await fetch(c, req(c, f"http://127.0.0.1:{port}/"))
        assert isinstance(e.value.__cause__, OSError)
        with pytest.raises(httpx.UnsupportedProtocol):
            await fetch(c, req(c, "ftp://127.0.0.1/"))
        await c.aclose()

    asyncio.run(go())


def test_an_idle_connection_closed_by_the_upstream_is_not_used(scripted) -> None:  # type: ignore[no-untyped-def]
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(OK)  # keep-alive announced, then closed while idle
        await writer.drain()

    s = scripted(handler)

    async def go() -> None:
        c = client()
        for _ in range(3):
            _, data = await fetch(c, req(c, s.url))
            assert data == b"{}"
            await asyncio.sleep(0.1)  # the close reaches us while the connection is idle
        await c.aclose()

    asyncio.run(go())
    assert s.connections == 3


def test_receive_waits_again_after_a_limit_and_keeps_the_read_timeout(scripted) -> None:  # type: ignore[no-untyped-def]
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n")
        await writer.drain()
        await asyncio.sleep(0.3)
        writer.write(b"6\r\nsecond\r\n")
        await writer.drain()
        await asyncio.sleep(10)  # then silent past the read timeout

    s = scripted(handler)

    async def go() -> None:
        c = client()
        resp = await c.send(req(c, s.url, read=1.0), stream=True)
        receive = resp.stream.receive  # type: ignore[attr-defined]
        assert await receive(5.0) == b"first"
        nones = 0
        while (data := await receive(0.05)) is None:
            nones += 1  # nothing within the limit: the body is still readable
        assert data == b"second" and nones >= 3
        started = time.monotonic()
        with pytest.raises(httpx.ReadTimeout):
            while await receive(0.2) is None:
                pass
        assert time.monotonic() - started >= 0.9  # the read timeout, not the 0.2 s limit
        await resp.aclose()
        await c.aclose()

    asyncio.run(go())


@pytest.mark.parametrize("gap", [0.0, 0.05])
def test_bytes_after_a_complete_response_never_reach_it(scripted, gap: float) -> None:  # type: ignore[no-untyped-def]
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await read_request(reader)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello")
            if gap:
                await writer.drain()
                await asyncio.sleep(gap)
            writer.write(b"HTTP/1.1 408 X\r\nContent-Length: 7\r\n\r\nINJECTD")
            await writer.drain()

    s = scripted(handler)

    async def go() -> None:
        c = client()
        for _ in range(2):
            resp = await c.send(req(c, s.url), stream=True)
            await asyncio.sleep(0.1)  # a slow consumer: the extra bytes arrive first
            data = b"".join([x async for x in resp.aiter_raw()])
            await resp.aclose()
            assert (resp.status_code, data) == (200, b"hello")
        await c.aclose()

    asyncio.run(go())
    assert s.connections == 2  # the polluted connection was not reused


def test_an_unterminated_header_is_cut_at_the_head_limit(scripted) -> None:  # type: ignore[no-untyped-def]
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nX: " + b"a" * 100_000)  # no line end, ever
        await writer.drain()
        await asyncio.sleep(10)

    s = scripted(handler)

    async def go() -> None:
        c = client()
        with pytest.raises(httpx.RemoteProtocolError, match="head too large"):
            await fetch(c, req(c, s.url, read=8.0))
        await c.aclose()

    asyncio.run(go())


def test_making_room_at_the_cap_closes_one_idle_connection_only(scripted) -> None:  # type: ignore[no-untyped-def]
    ref: list[Scripted] = []
    servers = [scripted(keep_alive_ok(ref)) for _ in range(4)]
    ref.append(servers[0])  # (the handler records into the first; only counts matter here)

    async def go() -> None:
        transport = H1Transport(httpx.Limits(max_connections=3))
        c = UpstreamClient(transport)
        for s in servers[:3]:
            await fetch(c, req(c, s.url))  # three idle connections, three hosts: the cap
        await fetch(c, req(c, servers[3].url))  # a fourth host: one idle connection must go
        idle = sum(len(v) for v in transport._idle.values())
        assert (idle, transport._open) == (3, 3)  # two old ones kept, plus the new one
        await c.aclose()

    asyncio.run(go())


def _closes_the_second_request(how: str) -> Handler:
    """Answers the first request of a connection (keep-alive), then closes the connection when
    the next request arrives on it, without a byte of an answer: the keep-alive race (an
    upstream that closed the idle connection as the request went out), by FIN or by reset. A
    `partial` server sends the start of an answer first (then it is not the race)."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(OK)
        await writer.drain()
        await read_request(reader)
        if how == "partial":
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Le")
            await writer.drain()
        if how == "reset":
            sock = writer.get_extra_info("socket")
            sock.setsockopt(
                socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
            )
        writer.close()

    return handler


@pytest.mark.parametrize("how", ["fin", "reset"])
def test_the_keep_alive_race_is_retried_once_on_a_new_connection(scripted, how: str) -> None:  # type: ignore[no-untyped-def]
    s = scripted(_closes_the_second_request(how))

    async def go() -> None:
        c = client()
        for i in range(4):  # every second request meets the race
            resp, data = await fetch(c, req(c, s.url, body=b'{"n":%d}' % i))
            assert (resp.status_code, data) == (200, b"{}")
        await c.aclose()

    asyncio.run(go())
    # 4 answered; 2 of them after one closed attempt each: 2 + 2 + ... connections, never more
    assert s.connections == 4


@pytest.mark.parametrize("how", ["partial"])
def test_no_retry_once_a_response_byte_arrived(scripted, how: str) -> None:  # type: ignore[no-untyped-def]
    s = scripted(_closes_the_second_request(how))

    async def go() -> None:
        c = client()
        await fetch(c, req(c, s.url))
        with pytest.raises(httpx.RemoteProtocolError):
            await fetch(c, req(c, s.url))
        await c.aclose()

    asyncio.run(go())
    assert s.connections == 1  # the request was sent once


def test_no_retry_on_a_fresh_connection_or_a_streamed_body(scripted) -> None:  # type: ignore[no-untyped-def]
    async def closes_at_once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.close()  # a new connection closed without an answer: not the race

    s = scripted(closes_at_once)
    s2 = scripted(_closes_the_second_request("fin"))

    async def body() -> AsyncIterator[bytes]:
        yield b'{"streamed":'
        yield b"true}"

    async def go() -> None:
        c = client()
        with pytest.raises(httpx.RemoteProtocolError):
            await fetch(c, req(c, s.url))
        await fetch(c, req(c, s2.url))  # leaves an idle connection the server will close
        streamed = c.build_request(
            "POST", s2.url, content=body(), headers=[("Content-Length", "17")],
            timeout=httpx.Timeout(5.0),
        )  # fmt: skip
        with pytest.raises(httpx.RemoteProtocolError):
            await fetch(c, streamed)
        await c.aclose()

    asyncio.run(go())
    assert (s.connections, s2.connections) == (1, 1)


def test_an_announced_keep_alive_timeout_is_honoured(scripted) -> None:  # type: ignore[no-untyped-def]
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nKeep-Alive: timeout=1.5, max=100\r\n\r\n{}"
    ref: list[Scripted] = []
    s = scripted(repeating(answer, ref))
    ref.append(s)

    async def go() -> None:
        c = client()
        await fetch(c, req(c, s.url))
        await fetch(c, req(c, s.url))  # within 0.5 s (1.5 s - the 1 s margin): reused
        assert s.connections == 1
        await asyncio.sleep(0.7)  # past 0.5 s: the upstream may close it any moment now
        await fetch(c, req(c, s.url))
        await c.aclose()

    asyncio.run(go())
    assert s.connections == 2


def test_the_router_keeps_idle_upstream_connections_less_than_servers_do() -> None:
    from service.proxy.upstream import KEEPALIVE_EXPIRY_SECS

    # uvicorn and Node close idle connections after 5 s: ours go first
    assert KEEPALIVE_EXPIRY_SECS < 5
