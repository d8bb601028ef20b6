"""The one error handler: any exception becomes a `RouterError` (service.errors), answered as JSON
in the client's shape (Anthropic on the Messages routes, OpenAI elsewhere), never with its text
unless it is one of ours.
"""

from __future__ import annotations

from collections.abc import Iterator

from sanic import Request
from sanic import exceptions as sx
from sanic.response import HTTPResponse

from .config.model import COUNT_TOKENS, MESSAGES
from .errors import (
    BadRequest,
    ClientClosedRequest,
    ExpectationFailed,
    HeaderTooLarge,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    RequestTimeout,
    RouterError,
    ServiceUnavailable,
    WebSocketNotSupported,
    error_body,
)
from .observability.lifecycle import access_log


def is_anthropic_route(route: str | None) -> bool:
    """Whether the router's own errors on this path take the Anthropic shape."""
    return route in (MESSAGES, COUNT_TOKENS)


def error_route(request: Request) -> str:
    """The route whose shape the request's errors take: the matched route's pattern (Sanic
    serves `/v1/messages/` as `/v1/messages`), else the path without trailing slashes (a
    405's route is not matched). An unknown path is its own: the OpenAI shape."""
    route = getattr(request, "route", None)
    if route is not None:
        return "/" + route.path.strip("/")
    return request.path.rstrip("/") or "/"


def to_router_error(exc: BaseException) -> RouterError:
    """Every exception becomes one of ours; unknown ones become a bare 500 (no text leaks)."""
    if isinstance(exc, RouterError):
        return exc
    if isinstance(exc, sx.NotFound):
        return NotFound()
    if isinstance(exc, sx.MethodNotAllowed):
        allowed = sorted(getattr(exc, "allowed_methods", None) or [])
        return MethodNotAllowed(headers={"Allow": ", ".join(allowed)} if allowed else None)
    if isinstance(exc, sx.PayloadTooLarge) and "header" in str(exc).lower():
        return HeaderTooLarge()  # a head over REQUEST_MAX_HEADER_SIZE
    if isinstance(exc, sx.PayloadTooLarge):
        return PayloadTooLarge()
    if isinstance(exc, sx.ExpectationFailed):
        return ExpectationFailed()
    if isinstance(exc, sx.RequestCancelled):
        return ClientClosedRequest()
    if isinstance(exc, sx.RequestTimeout):
        return RequestTimeout()
    if isinstance(exc, sx.BadRequest | sx.HeaderNotFound | sx.InvalidHeader):
        return BadRequest("Malformed request")
    if isinstance(exc, sx.ServiceUnavailable):
        return ServiceUnavailable()
    return RouterError()


def websocket_handshake(request: Request) -> bool:
    """Whether the request asks to become a WebSocket (RFC 6455: `Upgrade: websocket`)."""
    upgrade = request.headers.get("upgrade")
    return upgrade is not None and any(
        token.strip().lower() == "websocket" for token in upgrade.split(",")
    )


class UpgradeRequired(HTTPResponse):
    """The 426 answer to a WebSocket handshake: RFC 9110 (§7.8) wants the `upgrade` connection
    option beside its `Upgrade` header. Sanic writes `Connection` itself (keep-alive or close)
    just before it reads the head's headers here, so the option is added to Sanic's value then."""

    @property
    def processed_headers(self) -> Iterator[tuple[bytes, bytes]]:
        headers = self.headers
        conn = headers.get("connection")
        if conn is None:
            headers["connection"] = "upgrade"
        elif "upgrade" not in (token.strip().lower() for token in conn.split(",")):
            headers["connection"] = f"upgrade, {conn}"
        return super().processed_headers


def error_response(request: Request, exc: BaseException) -> HTTPResponse:
    err = to_router_error(exc)
    if err.__class__ is MethodNotAllowed and websocket_handshake(request):
        err = WebSocketNotSupported(headers={**err.headers, "Upgrade": "HTTP/1.1"})
    state = getattr(request.ctx, "state", None)
    if state is not None and err.error_type is not None:
        state.error_type = err.error_type
    if err.status >= 500 and err.error_type is None:
        access_log.error("router_error", exc_type=exc.__class__.__name__, route=request.path[:64])
    headers = dict(err.headers)
    rid = getattr(request.ctx, "request_id", None)
    if rid:
        headers["X-Request-ID"] = rid
    return (UpgradeRequired if isinstance(err, WebSocketNotSupported) else HTTPResponse)(
        error_body(err, is_anthropic_route(error_route(request))),
        status=err.status,
        headers=headers,
        content_type="application/json",
    )
