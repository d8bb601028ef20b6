"""The relay's fast construction of a JSON upstream request (`UpstreamClient.build_request` with
bytes content) builds exactly what httpx's own `httpx.Request` constructor builds; a response's
headers built from bytes (`upstream_fast.raw_headers`) are what `httpx.Headers` builds. (The
fast read of a whole answer, `read_raw`, is held to httpx's `aiter_raw` in
tests/integration/test_h1transport.py, against real connections.)"""

from __future__ import annotations

import asyncio

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from service.proxy import headers as h
from service.proxy.outgoing import answer_headers
from service.proxy.upstream import UpstreamClient, _transport
from service.proxy.upstream_fast import raw_headers, str_headers

TIMEOUT = httpx.Timeout(connect=2.0, read=30.0, write=30.0, pool=5.0)


@pytest.mark.parametrize(
    "url,headers,content",
    [
        ("http://127.0.0.1:8080/v1/chat/completions", [("Authorization", "Bearer k")], b"{}"),
        ("https://api.example.com/v1/x?a=1&b=%20", [("content-type", "application/json")], b"[1]"),
        ("https://api.example.com:443/v1/x", [("Host", "other.example"), ("X-A", "1")], b"x"),
        ("http://[::1]:9000/p", [("Content-Length", "1"), ("x-b", "2"), ("X-B", "3")], b"y"),
        ("http://h/p", [("Transfer-Encoding", "chunked")], b"z"),
        ("http://h/p", [], b""),
    ],
)
def test_same_request_as_httpx_builds(
    url: str, headers: list[tuple[str, str]], content: bytes
) -> None:
    client = UpstreamClient(_transport("h1"))
    fast = client.build_request("post", url, content=content, headers=headers, timeout=TIMEOUT)
    ref = httpx.Request(
        "post", url, content=content, headers=headers, extensions={"timeout": TIMEOUT.as_dict()}
    )
    assert fast.method == ref.method
    assert fast.url == ref.url and fast.url.raw_path == ref.url.raw_path
    assert fast.headers.raw == ref.headers.raw
    assert fast.extensions == ref.extensions
    assert fast.content == ref.content
    assert type(fast.stream) is type(ref.stream)
    assert b"".join(fast.stream) == b"".join(ref.stream)  # type: ignore[arg-type]

    async def read_async(r: httpx.Request) -> bytes:
        return b"".join([c async for c in r.stream])  # type: ignore[union-attr]

    assert asyncio.run(read_async(fast)) == content
    asyncio.run(client.aclose())


def test_a_streamed_body_still_goes_through_httpx() -> None:
    async def parts() -> object:
        yield b"a"

    client = UpstreamClient(_transport("h1"))
    r = client.build_request("POST", "http://h/p", content=parts(), headers=[], timeout=TIMEOUT)
    assert r.headers["transfer-encoding"] == "chunked"
    with pytest.raises(httpx.RequestNotRead):
        _ = r.content
    asyncio.run(client.aclose())


_NAME = st.binary(min_size=1, max_size=12)
_VALUE = st.binary(max_size=24)  # any bytes: non-ASCII values decode as httpx decides


@given(st.lists(st.tuples(_NAME, _VALUE), max_size=8))
def test_raw_headers_are_what_httpx_headers_builds(items: list[tuple[bytes, bytes]]) -> None:
    fast, ref = raw_headers(items), httpx.Headers(items)
    assert fast._list == ref._list
    assert fast.raw == ref.raw
    assert fast.encoding == ref.encoding
    assert fast.multi_items() == ref.multi_items()
    assert fast == ref
    # and an httpx.Response made with them holds the same headers as one made from the list
    assert (
        httpx.Response(200, headers=fast).headers.raw
        == httpx.Response(200, headers=items).headers.raw
    )


_TEXT = st.text(st.characters(max_codepoint=0x2FF), max_size=16)  # ASCII and a little beyond


@given(
    st.lists(
        st.tuples(_TEXT, _TEXT) | st.tuples(_TEXT, _VALUE) | st.tuples(_NAME, _VALUE), max_size=8
    )
)
def test_str_headers_are_what_httpx_headers_builds(items: list[tuple[str, str]]) -> None:
    """Text pairs (a non-ASCII one fails alike), text names with bytes values (what the router
    sends for a value beyond ASCII: headers.wire_values) and, through httpx's own path, bytes
    pairs."""
    try:
        ref = httpx.Headers(items)
    except Exception as e:  # whatever httpx raises, the fast path must raise too
        with pytest.raises(type(e)):
            str_headers(items)
        return
    fast = str_headers(items)
    assert fast._list == ref._list
    assert fast.encoding == ref.encoding
    assert fast == ref


def test_str_headers_refuse_what_httpx_refuses() -> None:
    with pytest.raises(TypeError):
        str_headers([("X-A", 1)])  # type: ignore[list-item]


_RESPONSE_NAME = (
    st.sampled_from(
        [
            b"Content-Type",
            b"content-type",
            b"Content-Encoding",
            b"X-Request-ID",
            b"Connection",
            b"Keep-Alive",
            b"Proxy-Thing",
            b"Date",
            b"Server",
            b"X-Hop",
            b"Retry-After",
        ]
    )
    | _NAME
)


@given(
    st.lists(
        st.tuples(
            _RESPONSE_NAME, st.sampled_from([b"a", b"gzip", b"x-hop, close", b"\xe9"]) | _VALUE
        ),
        max_size=8,
    )
)
def test_answer_headers_are_what_the_httpx_calls_they_replace_give(
    items: list[tuple[bytes, bytes]],
) -> None:
    resp = httpx.Response(200, headers=raw_headers(items))
    got = answer_headers(resp, "rid")
    want = (
        [*h.returnable_response_headers(resp.headers.multi_items()), ("X-Request-ID", "rid")],
        resp.headers.get("content-type", ""),
        resp.headers.get("content-encoding"),
    )
    assert got == want
