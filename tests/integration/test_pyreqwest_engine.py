"""The `pyreqwest` upstream engine (API_ROUTER_UPSTREAM_TRANSPORT=pyreqwest) and its HTTP/2
option (API_ROUTER_UPSTREAM_HTTP2): relayed bytes, no behaviour of its own, errors mapped to the
router's error types as for `h1`, HTTP/2 by prior knowledge (h2c) and by ALPN over TLS.

The streaming suite (test_streaming.py) and the secrets suite run on this engine too."""

from __future__ import annotations

import asyncio
import gzip
import json
import ssl
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from service.proxy.upstream import UpstreamClient, _transport, map_exception
from tests.conftest import base_profile
from tests.fakes.h2_upstream import JSON_ANSWER, SSE_EVENTS, H2Upstream
from tests.fakes.loopback import LoopbackServer, close_now
from tests.support import RouterFactory

CHAT = "/v1/chat/completions"


class Raw(LoopbackServer):
    """Reads one request head (and a Content-Length body), records it, writes `answer`, then
    closes unless `keep`."""

    def __init__(self, answer: bytes, keep: bool = False, pause: float = 0.0) -> None:
        super().__init__()
        self.answer, self.keep, self.pause = answer, keep, pause
        self.received: list[bytes] = []

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                body = b""
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        body = await reader.readexactly(int(line.split(b":")[1]))
                self.received.append(head + body)
                if self.pause:  # answer late, unless the client leaves first
                    try:
                        if await asyncio.wait_for(reader.read(1), self.pause) == b"":
                            break
                    except TimeoutError:
                        pass
                writer.write(self.answer)
                await writer.drain()
                if not self.keep:
                    break
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass
        finally:
            close_now(writer)


def engine(http2: str = "off", monkeypatch: pytest.MonkeyPatch | None = None) -> UpstreamClient:
    if monkeypatch is not None:
        monkeypatch.setenv("API_ROUTER_UPSTREAM_HTTP2", http2)
    return UpstreamClient(_transport("pyreqwest"))


def req(
    c: UpstreamClient, url: str, body: bytes = b"{}", read: float = 5.0, connect: float = 5.0
) -> httpx.Request:
    t = httpx.Timeout(read, connect=connect, pool=5.0)
    headers = [("content-type", "application/json"), ("x-client", "kept")]
    return c.build_request("POST", url, content=body, headers=headers, timeout=t)


async def fetch(c: UpstreamClient, r: httpx.Request) -> tuple[httpx.Response, list[bytes]]:
    resp = await c.send(r, stream=True)
    try:
        chunks = [x async for x in resp.aiter_raw()]
    finally:
        await resp.aclose()
    return resp, chunks


def run(coro_fn) -> None:  # type: ignore[no-untyped-def]
    asyncio.run(coro_fn())


OK = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\nok"


def test_http1_request_headers_are_the_relays_plus_two_defaults_reqwest_always_adds() -> None:
    """reqwest adds `Accept: */*` and a `User-Agent` to a request that has none, and offers no
    way to leave them out (its default headers merge into every request); so, unlike `h1`, this
    engine sends those two when the client sent none (docs/configuration.md says so). A
    client's own are sent as they are, once; nothing else is added (no Accept-Encoding)."""
    own = [("accept", "text/event-stream"), ("user-agent", "claude-cli/2.0")]
    with Raw(OK, keep=True) as up:

        async def go() -> None:
            c = engine()
            resp, chunks = await fetch(c, req(c, up.url + "/v1/x?q=1", b'{"a":1}'))
            assert (resp.status_code, b"".join(chunks)) == (200, b"ok")
            assert resp.http_version == "HTTP/1.1"
            r = req(c, up.url + "/v1/x", b"{}")
            for k, v in own:
                r.headers[k] = v
            await fetch(c, r)
            await c.aclose()

        run(go)
    assert len(up.received) == 2  # the connection was kept and reused
    head, body = up.received[0].split(b"\r\n\r\n", 1)
    lines = head.split(b"\r\n")
    assert lines[0] == b"POST /v1/x?q=1 HTTP/1.1"
    fields = sorted(tuple(x.strip().lower() for x in line.split(b":", 1)) for line in lines[1:])
    assert [k for k, _ in fields] == [
        b"accept",
        b"content-length",
        b"content-type",
        b"host",
        b"user-agent",
        b"x-client",
    ]
    assert (b"accept", b"*/*") in fields
    assert body == b'{"a":1}'
    second = [line.lower() for line in up.received[1].split(b"\r\n\r\n")[0].split(b"\r\n")]
    assert second.count(b"accept: text/event-stream") == 1
    assert second.count(b"user-agent: claude-cli/2.0") == 1
    assert sum(line.startswith((b"accept:", b"user-agent:")) for line in second) == 2


def test_compressed_answers_are_relayed_raw() -> None:
    gz = gzip.compress(b"hello")
    answer = (
        b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: %d\r\n\r\n" % len(gz) + gz
    )
    with Raw(answer) as up:

        async def go() -> None:
            c = engine()
            resp, chunks = await fetch(c, req(c, up.url))
            assert b"".join(chunks) == gz
            assert resp.headers["content-encoding"] == "gzip"
            await c.aclose()

        run(go)


def test_redirects_are_not_followed() -> None:
    answer = (
        b"HTTP/1.1 307 Temporary Redirect\r\nLocation: http://127.0.0.1:1/\r\n"
        b"Content-Length: 0\r\n\r\n"
    )
    with Raw(answer) as up:

        async def go() -> None:
            c = engine()
            resp, _ = await fetch(c, req(c, up.url))
            assert resp.status_code == 307
            await c.aclose()

        run(go)


def test_errors_map_to_the_router_error_types() -> None:
    async def go() -> None:
        c = engine()
        with pytest.raises(httpx.ConnectError) as e:  # nothing listens on port 1
            await fetch(c, req(c, "http://127.0.0.1:1/"))
        assert map_exception(e.value).error_type == "connect_error"
        with Raw(OK, pause=2.0) as slow:
            with pytest.raises(httpx.ReadTimeout) as t:
                await fetch(c, req(c, slow.url, read=0.3))
            assert map_exception(t.value).error_type == "timeout"
        cut = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly part"
        with Raw(cut) as broken:
            with pytest.raises(httpx.HTTPError) as b:
                await fetch(c, req(c, broken.url))
            assert map_exception(b.value).error_type in ("io_error", "protocol_error")
        with Raw(b"") as silent:  # closes without an answer
            with pytest.raises(httpx.HTTPError) as s:
                await fetch(c, req(c, silent.url))
            assert map_exception(s.value).error_type == "io_error"
        with Raw(b"HTTP/1.1 abc\r\n\r\n") as garbled:
            with pytest.raises(httpx.HTTPError) as g:
                await fetch(c, req(c, garbled.url))
            assert map_exception(g.value).error_type == "protocol_error"
        await c.aclose()

    run(go)


def test_no_message_quotes_the_upstream_url() -> None:
    async def go() -> None:
        c = engine()
        secret = "http://127.0.0.1:1/v1/x?key=sk-pyreqwest-secret"
        with pytest.raises(httpx.HTTPError) as e:
            await fetch(c, req(c, secret))
        assert "sk-pyreqwest-secret" not in str(e.value)
        await c.aclose()

    run(go)


def tls_context(files: dict[str, str], alpn: list[str]) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(files["cert"], files["key"])
    ctx.set_alpn_protocols(alpn)
    return ctx


def test_http2_by_prior_knowledge_relays_json_and_a_stream(monkeypatch) -> None:
    with H2Upstream() as up:

        async def go() -> None:
            c = engine("prior-knowledge", monkeypatch)
            resp, chunks = await fetch(c, req(c, up.url + "/v1/chat", b'{"model":"m"}'))
            assert resp.http_version == "HTTP/2"
            assert b"".join(chunks) == JSON_ANSWER
            resp, chunks = await fetch(c, req(c, up.url + "/v1/stream"))
            assert resp.headers["content-type"] == "text/event-stream"
            assert b"".join(chunks) == b"".join(SSE_EVENTS)
            assert len(chunks) >= 3  # handed over as they arrived, not at the end
            await c.aclose()

        run(go)
    assert up.connections == 1  # both requests on one HTTP/2 connection
    assert up.requests[0]["body"] == b'{"model":"m"}'
    assert ("x-client", "kept") in up.requests[0]["headers"]


def test_http2_is_negotiated_by_alpn_over_tls_with_the_operator_ca(tls_files, monkeypatch):
    monkeypatch.setenv("SSL_CERT_FILE", tls_files["ca"])
    h2 = H2Upstream()
    h2.ssl_context = tls_context(tls_files, ["h2", "http/1.1"])
    only_h1 = Raw(OK, keep=True)
    only_h1.ssl_context = tls_context(tls_files, ["http/1.1"])
    with h2, only_h1:

        async def go() -> None:
            c = engine("on", monkeypatch)
            resp, chunks = await fetch(c, req(c, h2.url + "/v1/chat"))
            assert (resp.http_version, b"".join(chunks)) == ("HTTP/2", JSON_ANSWER)
            resp, chunks = await fetch(c, req(c, only_h1.url + "/v1/chat"))
            assert (resp.http_version, b"".join(chunks)) == ("HTTP/1.1", b"ok")
            wrong_name = h2.url.replace("localhost", "127.0.0.1")  # the cert names localhost
            with pytest.raises(httpx.ConnectError) as e:
                await fetch(c, req(c, wrong_name))
            assert map_exception(e.value).error_type == "tls_error"
            await c.aclose()
            monkeypatch.delenv("SSL_CERT_FILE")
            c = engine("on", monkeypatch)  # our CA not trusted: refused
            with pytest.raises(httpx.ConnectError) as e:
                await fetch(c, req(c, h2.url))
            assert map_exception(e.value).error_type == "tls_error"
            await c.aclose()
            # The server's side of the refused handshakes closes once its loop has read
            # rustls's alert; give it that turn before the server stops (else asyncio warns of
            # an unclosed transport).
            await asyncio.sleep(0.5)

        run(go)


def test_an_unknown_http2_mode_is_refused(monkeypatch) -> None:
    monkeypatch.setenv("API_ROUTER_UPSTREAM_HTTP2", "maybe")
    with pytest.raises(ValueError, match="API_ROUTER_UPSTREAM_HTTP2"):
        _transport("pyreqwest")


@pytest.fixture(scope="module")
def h2_upstream() -> Iterator[H2Upstream]:
    with H2Upstream() as up:
        yield up


def test_the_router_relays_over_http2_to_the_upstream(
    h2_upstream: H2Upstream, router_factory: RouterFactory
) -> None:
    env = {
        "API_ROUTER_UPSTREAM_TRANSPORT": "pyreqwest",
        "API_ROUTER_UPSTREAM_HTTP2": "prior-knowledge",
    }
    profile = base_profile(
        h2_upstream.url, endpoints={"/v1/completions": {"upstreamPath": "/v1/stream"}}
    )
    router = router_factory(profile, env=env)
    h2_upstream.requests.clear()
    with httpx.Client(base_url=router.url, timeout=10) as c:
        r = c.post(CHAT, json={"model": "gpt-4", "messages": []})
        assert r.status_code == 200, r.text
        assert r.content == JSON_ANSWER
        with c.stream("POST", "/v1/completions", json={"model": "gpt-4", "stream": True}) as s:
            assert s.status_code == 200
            body = b"".join(s.iter_raw())
    assert body == b"".join(SSE_EVENTS)
    assert [q["path"] for q in h2_upstream.requests] == ["/v1/chat/completions", "/v1/stream"]
    assert json.loads(h2_upstream.requests[0]["body"])["model"] == "up-model-4"  # mapped


def test_docs_name_the_engine_and_its_http2_option() -> None:
    text = (Path(__file__).resolve().parents[2] / "docs" / "configuration.md").read_text()
    assert "API_ROUTER_UPSTREAM_HTTP2" in text and "pyreqwest" in text
