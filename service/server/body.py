"""A streamed request body (Sanic `stream=True` routes): its size limit and its chunks.

Buys: the multipart audio routes read their body while it goes upstream, with the operator's
`API_ROUTER_MAX_BODY_BYTES` as the limit (Sanic applies the app-wide `REQUEST_MAX_SIZE` to a
streamed body unless the `Http` object's own limit is set per request), and the rewriter sees
whether any body remains to be read.

Relies on: `request.stream` being Sanic's `Http` object with `request_max_size` (the limit its
body reader checks, raising 413 past it), `request_body` (truthy while body bytes remain) and
`__aiter__` (the chunks) (sanic/http/http1.py). An upgrade of Sanic that renames these may break
it: tests/integration/test_multipart.py (streamed uploads, the 413 past the limit) holds it to
the behaviour on a real server. Always on (behaviour, not speed).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from sanic import Request


def limit_streamed_body(request: Request[Any, Any], max_bytes: int) -> None:
    """A streamed body larger than `max_bytes` is refused with 413 while it is read."""
    if request.stream is not None:
        request.stream.request_max_size = max_bytes


def remaining_body(request: Request[Any, Any]) -> AsyncIterator[bytes] | None:
    """The chunks of a streamed body not yet read, or None when there are none (the body was
    read whole, or it is empty)."""
    stream = request.stream if not request.body else None
    if stream is None or not stream.request_body:
        return None
    return stream.__aiter__()  # type: ignore[attr-defined]


async def read_whole(request: Request[Any, Any]) -> bytes:
    """A streamed body read to its end (the size limit still applies), or the body read
    already."""
    source = remaining_body(request)
    if source is None:
        return request.body or b""
    return bytes(request.body or b"") + b"".join([chunk async for chunk in source])
