"""The proxied LLM routes. One handler serves them all: the route pattern selects the endpoint
settings, and `proxy.relay.forward` does the work (JSON, multipart or SSE).

The stored-response routes of the Responses API (`GET`/`DELETE /v1/responses/{id}`,
`GET /v1/responses/{id}/input_items`) go to the same relay under the `/v1/responses` endpoint.

The multipart (audio) routes stream their request body (Sanic `stream=True`): the relay reads it
only as far as the model rewrite needs and sends the rest upstream as it arrives. Sanic lifts the
body-size limit for streaming handlers, so the handler puts `API_ROUTER_MAX_BODY_BYTES` back; the
body reader then answers 413 past it.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from sanic import Blueprint
from sanic.response import HTTPResponse

from ..config.model import (
    MULTIPART_ROUTES,
    PROXY_ROUTES,
    RESPONSE_ID,
    RESPONSE_INPUT_ITEMS,
    RESPONSES,
)
from ..context import RouterRequest
from ..proxy.relay import forward
from ..server.body import limit_streamed_body

bp = Blueprint("proxy")


def _handler(route: str) -> Callable[[RouterRequest], Coroutine[Any, Any, HTTPResponse | None]]:
    streamed = route in MULTIPART_ROUTES

    async def handler(request: RouterRequest) -> HTTPResponse | None:
        if streamed:
            limit_streamed_body(request, request.app.ctx.settings.max_body_bytes)
        return await forward(request, route)

    handler.__name__ = "proxy_" + route.strip("/").replace("/", "_")
    return handler


for _route in PROXY_ROUTES:
    _h = _handler(_route)
    bp.add_route(_h, _route, methods=["POST"], name=_h.__name__, stream=_route in MULTIPART_ROUTES)


@bp.route(RESPONSE_ID, methods=["GET", "HEAD", "DELETE"], name="proxy_v1_responses_id")
async def stored_response(request: RouterRequest, response_id: str) -> HTTPResponse | None:
    return await forward(request, RESPONSES, response_id)


@bp.route(RESPONSE_INPUT_ITEMS, methods=["GET", "HEAD"], name="proxy_v1_responses_id_input_items")
async def stored_response_input_items(
    request: RouterRequest, response_id: str
) -> HTTPResponse | None:
    return await forward(request, RESPONSES, response_id, "/input_items")
