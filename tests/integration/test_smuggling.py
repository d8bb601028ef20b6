"""Request smuggling and malformed HTTP (raw sockets): every request whose framing two parsers
could read differently is refused (400, 431 for an oversized head) and its connection closed,
and nothing hidden in it ever reaches the upstream."""

from __future__ import annotations

import json

import pytest

from tests.fakes.upstream import FakeUpstream
from tests.rawhttp import exchange
from tests.support import RouterProcess

# A complete, valid proxied request hidden where a lenient parser would see a second request.
SMUGGLED_BODY = json.dumps({"model": "smuggled-model", "input": "x"}).encode()
SMUGGLED = (
    b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    b"Content-Length: %d\r\n\r\n%s" % (len(SMUGGLED_BODY), SMUGGLED_BODY)
)
FRONT = b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
CHUNKED = FRONT + b"Transfer-Encoding: chunked\r\n\r\n"


def chunked(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n0\r\n\r\n" % (len(data), data)


CASES = {
    # RFC 9112 6.3: Content-Length with Transfer-Encoding is the classic CL.TE / TE.CL attack.
    "cl_then_te": FRONT
    + b"Content-Length: %d\r\nTransfer-Encoding: chunked\r\n\r\n" % len(chunked(b"{}"))
    + chunked(b"{}")
    + SMUGGLED,
    "te_then_cl": FRONT
    + b"Transfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n"
    + chunked(SMUGGLED),
    "duplicate_content_length": FRONT
    + b"Content-Length: 2\r\nContent-Length: %d\r\n\r\n{}" % (2 + len(SMUGGLED))
    + SMUGGLED,
    "same_duplicate_content_length": FRONT + b"Content-Length: 2\r\nContent-Length: 2\r\n\r\n{}",
    "transfer_encoding_not_chunked_last": FRONT
    + b"Transfer-Encoding: chunked, identity\r\n\r\n"
    + chunked(b"{}")
    + SMUGGLED,
    "whitespace_before_colon": FRONT + b"Content-Length : %d\r\n\r\n" % len(SMUGGLED) + SMUGGLED,
    "folded_transfer_encoding": FRONT
    + b"Content-Length: %d\r\nX-Pad: a\r\n Transfer-Encoding: chunked\r\n\r\n" % len(SMUGGLED)
    + SMUGGLED,
    "bare_lf_in_head": FRONT + b"X-Pad: a\nContent-Length: %d\r\n\r\n" % len(SMUGGLED) + SMUGGLED,
    "content_length_with_sign": FRONT + b"Content-Length: +2\r\n\r\n{}" + SMUGGLED,
    "content_length_non_ascii_digit": FRONT
    + "Content-Length: \u0665\r\n\r\n{}".encode()
    + SMUGGLED,
    "duplicate_host": b"POST /v1/embeddings HTTP/1.1\r\nHost: a\r\nHost: b\r\n"
    b"Content-Type: application/json\r\nContent-Length: 2\r\n\r\n{}",
    "missing_host": b"POST /v1/embeddings HTTP/1.1\r\n"
    b"Content-Type: application/json\r\nContent-Length: 2\r\n\r\n{}",
    "nul_in_header": FRONT + b"X-Pad: a\x00b\r\nContent-Length: 2\r\n\r\n{}",
    # Chunk lines Python's int(size, 16) takes and RFC 9112 does not: a front proxy that reads
    # "0x2" as 0 (the end) would pass what follows on as a request of its own.
    "chunk_size_hex_prefix": CHUNKED + b"0x2\r\n{}\r\n0\r\n\r\n" + SMUGGLED,
    "chunk_size_with_spaces": CHUNKED + b" 2 \r\n{}\r\n0\r\n\r\n" + SMUGGLED,
    "chunk_size_non_ascii_digit": CHUNKED + "\u0662\r\n{}\r\n0\r\n\r\n".encode() + SMUGGLED,
    "chunk_data_not_ended_by_crlf": CHUNKED + b"2\r\n{}XX0\r\n\r\n" + SMUGGLED,
    "chunk_extension_bare_lf": CHUNKED + b"2;a\nb\r\n{}\r\n0\r\n\r\n" + SMUGGLED,
    "chunk_extension_control_byte": CHUNKED + b"2;a\x01\r\n{}\r\n0\r\n\r\n" + SMUGGLED,
    # Request targets that are neither a path, an absolute URL nor "*" (Sanic dropped these
    # connections without an answer).
    "target_authority_form": b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n",
    "target_without_slash": b"POST v1/embeddings HTTP/1.1\r\nHost: x\r\n"
    b"Content-Type: application/json\r\nContent-Length: 2\r\n\r\n{}",
    "target_query_only": b"GET ?x HTTP/1.1\r\nHost: x\r\n\r\n",
    # A head of bare LFs throughout never has the CRLF CRLF Sanic looks for: refused at once,
    # not left to the header deadline (408).
    "head_of_bare_lfs": b"POST /v1/embeddings HTTP/1.1\nHost: x\nContent-Length: %d\n\n%s"
    % (len(SMUGGLED_BODY), SMUGGLED_BODY),
    "get_head_of_bare_lfs": b"GET /health HTTP/1.1\nHost: x\n\n",
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_ambiguous_framing_is_refused_and_nothing_is_smuggled(
    router: RouterProcess, upstream: FakeUpstream, name: str
) -> None:
    resp, closed = exchange(router.port, CASES[name])
    assert resp is not None, "the router must answer, not hang"
    assert resp.status == 400, (resp.status, resp.body)
    assert resp.json()["error"]["type"] == "invalid_request_error"
    assert closed, "a connection whose framing is in doubt must not be reused"
    assert upstream.requests == [], [r.path for r in upstream.requests]


def test_a_well_framed_request_on_the_same_router_is_forwarded(
    router: RouterProcess, upstream: FakeUpstream
) -> None:
    """The control case: the same bytes with unambiguous framing do reach the upstream."""
    resp, _ = exchange(router.port, SMUGGLED, wait_close=False)
    assert resp is not None and resp.status == 200
    assert [r.json()["model"] for r in upstream.requests] == ["smuggled-model"]


@pytest.mark.parametrize("size", [b"%x", b"%X", b"000%x", b"%x;name=value", b"%x ;name"])
def test_well_framed_chunk_lines_are_forwarded(
    router: RouterProcess, upstream: FakeUpstream, size: bytes
) -> None:
    """The control cases of the chunk-line check: upper and lower case hex, leading zeros and
    extensions (with optional whitespace before their ";") are RFC 9112 chunk lines."""
    half = len(SMUGGLED_BODY) // 2
    first, rest = SMUGGLED_BODY[:half], SMUGGLED_BODY[half:]
    body = b"".join(size % len(part) + b"\r\n" + part + b"\r\n" for part in (first, rest))
    resp, _ = exchange(router.port, CHUNKED + body + b"0\r\n\r\n", wait_close=False)
    assert resp is not None and resp.status == 200, (resp and resp.status, resp and resp.body)
    assert [r.body for r in upstream.requests] == [SMUGGLED_BODY]


def test_oversized_head_is_431_and_closed(router: RouterProcess, upstream: FakeUpstream) -> None:
    big = b"X-Big: " + b"a" * 20_000 + b"\r\n"
    resp, closed = exchange(router.port, FRONT + big + b"Content-Length: 2\r\n\r\n{}")
    assert resp is not None and resp.status == 431, resp
    assert resp.json()["error"]["code"] == "header_too_large"
    assert closed
    assert upstream.requests == []
