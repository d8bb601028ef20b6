"""The proxied LLM routes. One handler serves them all: the route pattern selects the endpoint
settings, and `proxy.relay.forward` does the work (JSON, multipart or SSE)."""

from __future__ import annotations

from sanic import Blueprint, Request
from sanic.response import HTTPResponse

from ..config.model import PROXY_ROUTES
from ..proxy.relay import forward

bp = Blueprint("proxy")


def _handler(route: str):  # type: ignore[no-untyped-def]
    async def handler(request: Request) -> HTTPResponse | None:
        return await forward(request, route)

    handler.__name__ = "proxy_" + route.strip("/").replace("/", "_")
    return handler


for _route in PROXY_ROUTES:
    bp.add_route(_handler(_route), _route, methods=["POST"], name=_handler(_route).__name__)
