"""The router's error hierarchy and how each error maps to status, `error_type` and JSON.

    RouterError                      (status, client-facing type/code; never carries secrets)
    ├── ClientError                  the request itself is wrong; nothing reached the upstream
    │   ├── BadRequest               400 invalid_request_error
    │   │   └── TokenRequestTooLarge 400 request_exceeds_token_limit (larger than the bucket)
    │   ├── Unauthorized             401 authentication_error
    │   ├── NotFound                 404 (RouteNotAvailable: disabled by the profile;
    │   │                            ModelNotFound, UnknownModel: model_not_found)
    │   ├── MethodNotAllowed         405 (with Allow)
    │   │   └── WebSocketNotSupported 426 a WebSocket handshake on a route served over HTTP
    │   ├── RequestTimeout           408 head or body not received in time (service.connlimits)
    │   ├── PayloadTooLarge          413 request_too_large
    │   ├── ExpectationFailed        417 an `Expect` other than 100-continue
    │   ├── RateLimited              429 rate_limit_error (with Retry-After / X-RateLimit-*;
    │   │                            a token limit adds x-ratelimit-*-tokens)
    │   └── HeaderTooLarge           431 head over API_ROUTER_MAX_HEADER_BYTES (Sanic says 413)
    ├── ClientClosedRequest          499 the client left before its answer (logs, metrics only)
    ├── ServiceUnavailable           503 (draining, limiter backend down with fail-closed)
    │   └── ShuttingDown             (a stream's error event) still open at the drain's end
    └── UpstreamError                the upstream could not be used; counted in
        │                            upstream_errors_total{error_type} and logged with it
        ├── UpstreamConnectError     502 connect_error   refused / DNS, before any byte was sent
        ├── UpstreamIOError          502 io_error        reset / closed before a response
        ├── UpstreamTLSError         502 tls_error
        ├── UpstreamTimeout          504 timeout         connect or read timeout
        │   └── UpstreamConnectTimeout                   (no connection: nothing sent)
        ├── UpstreamProtocolError    502 protocol_error  the answer was not HTTP
        ├── UpstreamJSONError        502 json_error      invalid JSON where JSON was promised
        └── StreamError              (already 200)       stream broke after it began

`upstream_error` (the upstream answered 429 or 5xx) is not an exception: the answer is passed
through and only counted. Messages are fixed strings written here, never an upstream exception's
text, so no response can leak a URL with a key, a header or a traceback. Which exception of Sanic's
becomes which of these: service.error_handler.
"""

from __future__ import annotations

from collections.abc import Mapping

import orjson


class RouterError(Exception):
    status = 500
    type = "api_error"  # OpenAI-shape `type`
    anthropic_type = "api_error"
    code: str | None = None
    error_type: str | None = None  # the upstream_errors_total label, when it is one
    outcome: str | None = None  # an attempt's outcome label when not the error_type
    unreached = False  # certainly nothing reached the upstream (tokens: nothing billed)
    message = "Internal error"

    def __init__(self, message: str | None = None, headers: Mapping[str, str] | None = None):
        super().__init__(message or self.message)
        if message:
            self.message = message
        self.headers: dict[str, str] = dict(headers or {})

    def __copy__(self) -> RouterError:
        """A copy with its own attributes (the relay adds headers to a copy: an error may be
        shared), made without calling `__init__` again: a subclass's takes other arguments
        (translate.common.Untranslatable: copy.copy's default raised TypeError, a 500)."""
        new = self.__class__.__new__(self.__class__, *self.args)
        new.__dict__.update(self.__dict__)
        return new


def status_outcome(status: int) -> str:
    """What an upstream's answer of `status` was, as an attempt's outcome (the `outcome` label of
    `upstream_attempts_total`, an attempt span's `error.type`)."""
    if 200 <= status < 400:
        return "ok"
    if status == 429:
        return "rate_limited"
    if status >= 500:
        return "server_error"
    return "client_error"


class ClientError(RouterError):
    pass


class BadRequest(ClientError):
    status = 400
    type = "invalid_request_error"
    anthropic_type = "invalid_request_error"
    code = "invalid_request"
    message = "Invalid request"


class Unauthorized(ClientError):
    status = 401
    type = "authentication_error"
    anthropic_type = "authentication_error"
    code = "invalid_api_key"
    message = "Invalid or missing API key"


class PayloadTooLarge(ClientError):
    status = 413
    type = "invalid_request_error"
    anthropic_type = "request_too_large"
    code = "request_too_large"
    message = "Request body is larger than the router accepts"


class ExpectationFailed(ClientError):
    """RFC 9110 §10.1.1: an `Expect` the server cannot meet (only 100-continue is known)."""

    status = 417
    type = "invalid_request_error"
    code = "expectation_failed"
    message = "Unsupported Expect header: only 100-continue is known"


class RateLimited(ClientError):
    status = 429
    type = "rate_limit_error"
    anthropic_type = "rate_limit_error"
    code = "rate_limit_exceeded"
    message = "Rate limit exceeded"


class TokenRequestTooLarge(BadRequest):
    """A request whose token estimate exceeds a whole token bucket or budget (SPEC §13): it could
    never pass, so it is not a 429 a client would retry."""

    code = "request_exceeds_token_limit"
    message = "The request's token estimate is larger than the whole token limit of its key"


class NotFound(ClientError):
    status = 404
    type = "invalid_request_error"
    anthropic_type = "not_found_error"
    code = "not_found"
    message = "Unknown route"


class ModelNotFound(NotFound):
    """A routing file has no route for the request's model (SPEC §11)."""

    code = "model_not_found"
    message = "No route for this model"


class UnknownModel(NotFound):
    """`GET /v1/models/{id}` of a model the list does not hold."""

    code = "model_not_found"
    message = "The model is not in this router's model list"


class RouteNotAvailable(NotFound):
    code = "route_not_available"
    message = "This route is not available with the active profile's provider"


class MethodNotAllowed(ClientError):
    status = 405
    type = "invalid_request_error"
    anthropic_type = "invalid_request_error"
    code = "method_not_allowed"
    message = "Method not allowed on this route"


class WebSocketNotSupported(MethodNotAllowed):
    """A WebSocket handshake (`GET` with `Upgrade: websocket`) on a route the router serves only
    over HTTP. Codex's built-in `openai` provider first tries `/v1/responses` that way: it takes
    426 as "use HTTP" at once, where it tried a 405 seven times. The answer names HTTP/1.1 as
    the protocol to use (`Upgrade`) and keeps the 405's `Allow`."""

    status = 426
    code = "websocket_not_supported"
    message = "This route is served over HTTP only, not over a WebSocket"


class RequestTimeout(ClientError):
    status = 408
    type = "invalid_request_error"
    code = "request_timeout"
    message = "Request timed out"


class HeaderTooLarge(ClientError):
    """RFC 6585's status for a request head over the limit (Sanic answers it with 413)."""

    status = 431
    type = "invalid_request_error"
    code = "header_too_large"
    message = "Request header fields too large"


class ClientClosedRequest(RouterError):
    """The client went away: nobody reads this answer, but logs and metrics record 499."""

    status = 499
    type = "invalid_request_error"
    code = "client_closed_request"
    message = "Client closed the request"


class ServiceUnavailable(RouterError):
    status = 503
    type = "api_error"
    anthropic_type = "overloaded_error"
    code = "service_unavailable"
    message = "Service unavailable"


class ShuttingDown(ServiceUnavailable):
    """A stream still open when its worker's drain time ends (service.proxy.sse)."""

    code = "server_shutting_down"
    message = "The router is shutting down: send the request again"


class UpstreamsUnavailable(ServiceUnavailable):
    """Every target of the request's route is cooling down after a Retry-After (SPEC §11)."""

    code = "upstreams_unavailable"
    message = "Every upstream of this model is cooling down; retry later"


class UpstreamError(RouterError):
    status = 502
    type = "api_error"
    anthropic_type = "api_error"
    error_type = "io_error"
    code = "upstream_error"
    message = "Upstream request failed"


class UpstreamConnectError(UpstreamError):
    error_type = "connect_error"
    code = "upstream_connect_error"
    message = "Could not connect to the upstream"


class UpstreamIOError(UpstreamError):
    error_type = "io_error"
    code = "upstream_io_error"
    message = "The upstream connection failed before a response"


class UpstreamTLSError(UpstreamError):
    error_type = "tls_error"
    code = "upstream_tls_error"
    message = "TLS handshake with the upstream failed"


class UpstreamTimeout(UpstreamError):
    status = 504
    type = "timeout_error"
    anthropic_type = "timeout_error"
    error_type = "timeout"
    code = "upstream_timeout"
    message = "The upstream did not answer in time"


class UpstreamConnectTimeout(UpstreamTimeout):
    """No connection within the connect timeout: nothing reached the upstream (nothing was
    billed). Counted as `timeout` (SPEC §5); an attempt's outcome says `connect_timeout`."""

    outcome = "connect_timeout"
    unreached = True
    message = "The upstream did not accept a connection in time"


class UpstreamProtocolError(UpstreamError):
    error_type = "protocol_error"
    code = "upstream_protocol_error"
    message = "The upstream sent an invalid HTTP response"


class UpstreamJSONError(UpstreamError):
    error_type = "json_error"
    code = "upstream_json_error"
    message = "The upstream sent invalid JSON"


class StreamError(UpstreamError):
    error_type = "stream_error"
    code = "stream_error"
    message = "The upstream stream broke"


# Every value upstream_errors_total{error_type} can take: a closed set.
ERROR_TYPES: tuple[str, ...] = (
    "connect_error",
    "io_error",
    "tls_error",
    "timeout",
    "protocol_error",
    "json_error",
    "upstream_error",
    "stream_error",
)


def error_body(err: RouterError, anthropic: bool) -> bytes:
    """The JSON error in the client's shape: OpenAI, or Anthropic on /v1/messages."""
    if anthropic:
        return orjson.dumps(
            {"type": "error", "error": {"type": err.anthropic_type, "message": err.message}}
        )
    return orjson.dumps({"error": {"message": err.message, "type": err.type, "code": err.code}})
