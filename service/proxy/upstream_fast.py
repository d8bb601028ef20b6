"""The upstream exchange's fast path (`request`): httpx's objects for a JSON request and its
answer built and read without httpx's per-call layers.

- `bytes_request`: an `httpx.Request` built with its headers normalised once (httpx's constructor
  normalises the header list, then `_prepare` rebuilds it with the automatic headers);
- `str_headers`: the same for a request's `str` header list (each name and value encoded once,
  no type checks per item);
- `raw_headers`: the `httpx.Headers` of a response whose names and values are bytes already (the
  router's transport parsed them), without a type check and normalisation per name and value;
- `read_raw`: a whole (non-stream) answer that the router's transport already has all of
  (`h1transport._Body.read_now`) taken at once, instead of through `Response.aiter_raw()` (an
  async generator over the stream's, a byte chunker, an error context) and `Response.aclose()`.

Buys: CPU per request, measured in bench/README.md, "Fast paths".

Relies on httpx's internals (0.28): an `httpx.Request` made with `__new__` and its attributes set
directly, including the private `_content` (what `Request.read()` would have stored), and on
what the constructor adds (`Host` first, `Content-Length` last unless given, a `ByteStream`);
`Headers._list` (name, lowered name, value) and `_encoding`; the `Response` attributes
`aiter_raw`/`aclose` set (`is_stream_consumed`, `is_closed`, `_num_bytes_downloaded`). An
upgrade of httpx that changes these may break it: tests/unit/test_upstream_request.py compares
the request and the headers with httpx's own, field by field, and
tests/integration/test_h1transport.py the read (`test_read_raw_*`: body, errors, response state
and connection reuse, over real connections).

Off (`API_ROUTER_FAST_PATHS` without `request`): `httpx.Request(...)` builds the request,
`httpx.Headers` the response's headers, `aiter_raw`/`aclose` read the answer
(service.proxy.upstream.UpstreamClient and `_transport` apply the choice).
"""

from __future__ import annotations

from collections.abc import Sequence

import httpx


def bytes_request(
    method: str,
    url: httpx.URL,
    headers: Sequence[tuple[str, str | bytes]],
    content: bytes,
    timeout: dict[str, float | None],
) -> httpx.Request:
    """Exactly what `httpx.Request(method, url, content=<bytes>, headers=<list>,
    extensions={"timeout": timeout})` builds: method, URL, headers with `Host` first and
    `Content-Length` last unless given, a `ByteStream`, the content already read."""
    fields = str_headers(headers)
    names = {lowered for _, lowered, _ in fields._list}
    if b"host" not in names and url.host:
        fields._list.insert(0, (b"Host", b"host", url.netloc))
    if b"content-length" not in names:
        length = str(len(content)).encode("ascii")
        fields._list.append((b"Content-Length", b"content-length", length))
    req = httpx.Request.__new__(httpx.Request)
    req.method = method.upper()
    req.url = url
    req.headers = fields
    req.extensions = {"timeout": timeout}
    req.stream = httpx.ByteStream(content)
    req._content = content
    return req


def str_headers(items: Sequence[tuple[str, str | bytes]]) -> httpx.Headers:
    """Exactly `httpx.Headers(items)` for names that are `str` and values that are `str`
    (encoded as ASCII, as httpx does without an encoding: a non-ASCII one raises the same
    UnicodeEncodeError) or bytes (kept). Anything else (a wrong type): httpx's own constructor."""
    try:
        fields = [
            (name, name.lower(), v if type(v) is bytes else v.encode("ascii"))  # type: ignore[union-attr]
            for k, v in items
            for name in (k.encode("ascii"),)
        ]
    except AttributeError:  # not str: httpx decides (bytes kept, others a TypeError)
        return httpx.Headers(items)  # type: ignore[arg-type]  # (it takes str and bytes mixed)
    headers = httpx.Headers.__new__(httpx.Headers)
    headers._list = fields
    headers._encoding = None
    return headers


def raw_headers(items: list[tuple[bytes, bytes]]) -> httpx.Headers:
    """Exactly `httpx.Headers(items)` for names and values that are bytes."""
    headers = httpx.Headers.__new__(httpx.Headers)
    headers._list = [(k, k.lower(), v) for k, v in items]
    headers._encoding = None
    return headers


async def read_raw(resp: httpx.Response) -> bytes:
    """What `b"".join([c async for c in resp.aiter_raw()])` and then `await resp.aclose()`
    return and leave behind. Taken at once when the router's transport has the whole body
    already (`take_whole`); otherwise exactly that."""
    data = take_whole(resp)
    return data if data is not None else await stock_read(resp)


def take_whole(resp: httpx.Response) -> bytes | None:
    """The whole raw body, the response closed, when the router's transport has all of it
    already (`_Body.read_now`) and nothing read the response yet; else None, nothing taken."""
    read_now = getattr(resp.stream, "read_now", None)
    if read_now is not None and not (resp.is_stream_consumed or resp.is_closed):
        data: bytes | None = read_now()
        if data is not None:
            resp.is_stream_consumed = resp.is_closed = True
            resp._num_bytes_downloaded = len(data)
            return data
    return None


async def stock_read(resp: httpx.Response) -> bytes:
    """httpx's own way: the raw body iterated and joined, then the response closed."""
    try:
        return b"".join([chunk async for chunk in resp.aiter_raw()])
    finally:
        await resp.aclose()
