"""CORS for browser clients (`API_ROUTER_CORS_ORIGINS`; off by default): which origins may call
the router from a page, and which response headers their scripts may read — `Server-Timing`
(SPEC §14) among them, with `Timing-Allow-Origin` so that the Resource Timing API shows it.

- `API_ROUTER_CORS_ORIGINS=*` allows any origin; a comma-separated list allows those exactly
  (`https://app.example.com,https://admin.example.com`). No cookies are involved (clients send
  their key in a header), so credentials mode is never allowed.
- A preflight (`OPTIONS` with `Access-Control-Request-Method`) from an allowed origin, on any
  route, is answered 204 by the router itself with the methods of the API and the headers the
  page asked for; from another origin it is the usual 405.
- Every response to an allowed origin (JSON, errors, 429s, a stream's head) carries
  `Access-Control-Allow-Origin` and `Access-Control-Expose-Headers`; with a list of origins,
  every response carries `Vary: Origin`. Origins match without regard to case.
- The policy is the router's alone: the upstream's own `Access-Control-*` headers are not
  returned, and the browser's `Origin` is not forwarded (service.proxy.headers).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# What a page may read of the router's own headers.
EXPOSED = ", ".join(
    [
        "Server-Timing",
        "X-Request-ID",
        "Retry-After",
        "X-RateLimit-Limit",
        "X-RateLimit-Remaining",
        "X-RateLimit-Reset",
        "x-ratelimit-limit-tokens",
        "x-ratelimit-remaining-tokens",
        "x-ratelimit-reset-tokens",
        "x-router-upstream",
        "x-router-attempts",
        "X-Upstream-Request-ID",
    ]
)
METHODS = "GET, POST, DELETE, OPTIONS"
MAX_AGE = "600"


class Cors:
    def __init__(self, origins: str) -> None:
        # An origin's scheme and host are case-insensitive; browsers send them in lower case.
        items = [o.strip().rstrip("/").lower() for o in origins.split(",") if o.strip()]
        self.any = "*" in items
        self.origins = frozenset(o for o in items if o != "*")

    def allowed(self, origin: str | None) -> str | None:
        """The Access-Control-Allow-Origin value for `origin`, or None (not allowed)."""
        if not origin:
            return None
        if self.any:
            return "*"
        return origin if origin.lower() in self.origins else None

    def headers(self, origin: str | None) -> list[tuple[str, str]]:
        """What a response to `origin` adds: for an origin not allowed (or none) only `Vary:
        Origin` when the answer depends on it (a list of origins), so that a shared cache does
        not hand this copy, without CORS headers, to an allowed page."""
        allow = self.allowed(origin)
        if allow is None:
            return [] if self.any else [("Vary", "Origin")]
        out = [
            ("Access-Control-Allow-Origin", allow),
            ("Access-Control-Expose-Headers", EXPOSED),
            ("Timing-Allow-Origin", allow),
        ]
        if allow != "*":
            out.append(("Vary", "Origin"))
        return out

    def preflight(self, headers: Mapping[str, str]) -> list[tuple[str, str]] | None:
        """The headers of the 204 answer to a preflight, or None when it is not one the router
        answers (no requested method, or an origin not allowed)."""
        if not headers.get("access-control-request-method"):
            return None
        if self.allowed(headers.get("origin")) is None:
            return None
        out = self.headers(headers.get("origin"))
        out.append(("Access-Control-Allow-Methods", METHODS))
        asked = headers.get("access-control-request-headers")
        if asked:
            out.append(("Access-Control-Allow-Headers", asked[:1024]))
        out.append(("Access-Control-Max-Age", MAX_AGE))
        return out


def install(app: Any, cors: Cors | None) -> None:
    """The preflight answers: an OPTIONS route on every path of the route table (only when CORS
    is configured; otherwise an OPTIONS request is the usual 405)."""
    if cors is None:
        return
    from sanic.compat import Header
    from sanic.response import HTTPResponse

    from .config.model import PROXY_ROUTES, RESPONSE_ID, RESPONSE_INPUT_ITEMS
    from .errors import MethodNotAllowed

    allow = {route: "POST" for route in PROXY_ROUTES}
    allow.update({RESPONSE_ID: "GET, HEAD, DELETE", RESPONSE_INPUT_ITEMS: "GET, HEAD"})
    allow.update({p: "GET, HEAD" for p in ("/health", "/ready", "/metrics", "/v1/models")})
    allow["/v1/models/<model_id:path>"] = "GET, HEAD"

    for i, (path, methods) in enumerate(sorted(allow.items())):

        async def preflight(request: Any, _methods: str = methods, **_: object) -> HTTPResponse:
            headers = cors.preflight(request.headers)
            if headers is None:  # not a preflight from an allowed origin: what it was before
                raise MethodNotAllowed(headers={"Allow": _methods})
            return HTTPResponse(status=204, headers=Header(headers))

        app.add_route(preflight, path, methods=["OPTIONS"], name=f"cors_preflight_{i}")
