"""Server-Sent-Events relay (SPEC §6)."""

from __future__ import annotations

import time
from typing import Any

import httpx
from sanic import Request

from ..config.model import ResolvedEndpoint
from . import headers as h
from .upstream import map_exception

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


async def relay_stream(
    request: Request,
    upstream_request: httpx.Request,
    ep: ResolvedEndpoint,
    extra_headers: dict[str, str],
) -> Any:
    app = request.app
    state = request.ctx.state
    started = time.perf_counter()
    try:
        resp = await app.ctx.http.send(upstream_request, stream=True)
    except httpx.HTTPError as e:
        state.upstream_latency = time.perf_counter() - started
        raise map_exception(e) from None
    try:
        headers = h.returnable_response_headers(resp.headers.multi_items())
        headers.append(("X-Request-ID", request.ctx.request_id))
        headers.extend(extra_headers.items())
        if resp.status_code >= 300:
            if resp.status_code == 429 or resp.status_code >= 500:
                state.error_type = "upstream_error"
            data = b"".join([c async for c in resp.aiter_raw()])
            from sanic.response import HTTPResponse

            return HTTPResponse(body=data, status=resp.status_code, headers=headers, content_type=None)
        headers = [(k, v) for k, v in headers if k.lower() not in ("cache-control", "content-type")]
        headers.extend(SSE_HEADERS.items())
        out = await request.respond(status=200, headers=headers, content_type="text/event-stream")
        async for chunk in resp.aiter_raw():
            await out.send(chunk)
        await out.eof()
        return None
    finally:
        state.upstream_latency = time.perf_counter() - started
        await resp.aclose()
