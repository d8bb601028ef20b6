"""The JSON upstream request's fast path: an `httpx.Request` built with its headers normalised
once.

Buys: CPU per request (bench/README.md, "Fast paths"): httpx's constructor normalises the header
list, then `_prepare` rebuilds it with the automatic headers; every JSON request of the relay
is built here instead.

Relies on httpx's internals (0.28): an `httpx.Request` made with `__new__` and its attributes set
directly, including the private `_content` (what `Request.read()` would have stored), and on
what the constructor adds (`Host` first, `Content-Length` last unless given, a `ByteStream`). An
upgrade of httpx that changes the constructor or the attributes may break it:
tests/unit/test_upstream_request.py compares the two requests field by field.

Off (`API_ROUTER_FAST_PATHS` without `request`): `httpx.Request(...)` builds it
(service.proxy.upstream.UpstreamClient applies the choice).
"""

from __future__ import annotations

import httpx


def bytes_request(
    method: str,
    url: httpx.URL,
    headers: list[tuple[str, str]],
    content: bytes,
    timeout: dict[str, float | None],
) -> httpx.Request:
    """Exactly what `httpx.Request(method, url, content=<bytes>, headers=<list>,
    extensions={"timeout": timeout})` builds: method, URL, headers with `Host` first and
    `Content-Length` last unless given, a `ByteStream`, the content already read."""
    names = {k.lower() for k, _ in headers}
    if "host" not in names and url.host:
        headers = [("Host", url.netloc.decode("ascii")), *headers]
    if "content-length" not in names:
        headers = [*headers, ("Content-Length", str(len(content)))]
    req = httpx.Request.__new__(httpx.Request)
    req.method = method.upper()
    req.url = url
    req.headers = httpx.Headers(headers)
    req.extensions = {"timeout": timeout}
    req.stream = httpx.ByteStream(content)
    req._content = content
    return req
