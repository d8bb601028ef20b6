"""Forwarding one client request upstream and relaying the answer (SPEC §5).

`forward()` is the single entry point used by every proxied route:

1. snapshot the active profile (a request keeps the config it started with);
2. read the body: JSON (whole, only `model` rewritten) or multipart (client's boundary kept);
3. rate-limit on (credential hash, route) before anything reaches the upstream;
4. send through the per-worker pooled client; map failures to the router's errors;
5. relay: SSE streams through `sse.relay_stream`, everything else as one response whose status,
   body and end-to-end headers are the upstream's.

What the observability layer needs is left on `request.ctx` (see `RequestState`).
"""

from __future__ import annotations

import asyncio
import json
import re
import time
import zlib
from typing import Any

import httpx
import orjson
import structlog
from sanic import Request
from sanic.compat import Header
from sanic.response import HTTPResponse

from ..config.model import (
    ANTHROPIC,
    CHAT,
    COMPLETIONS,
    COUNT_TOKENS,
    MESSAGES,
    RESPONSES,
    RESPONSES_FORMAT,
    ResolvedEndpoint,
)
from ..errors import BadRequest, NotFound, RateLimited, RouteNotAvailable, UpstreamJSONError
from ..ratelimit import Limit
from ..translate import TranslationOptions, Translator
from ..translate.responses import ResponsesTranslator
from . import estimate
from . import headers as h
from .events import ask_for_usage
from .upstream import map_exception, request_timeout, send

log = structlog.get_logger("api_router.translate")

# orjson reads integers beyond 64 bits as floats; JSON allows them, so a body with such a number
# (a run of 20+ digits) is parsed and written by the exact standard library. The run is found at C
# speed: every ASCII digit mapped to "0", anything else to "x", then a substring search (a regex
# `\d{20,}` costs 10 ms on a 1 MB body; this, 0.7 ms: bench/README.md).
_DIGITS_AS_ZERO = bytes(0x30 if 0x30 <= i <= 0x39 else 0x78 for i in range(256))
_BIG_INT_RUN = b"0" * 20


def _exact(body: bytes) -> bool:
    return _BIG_INT_RUN in body.translate(_DIGITS_AS_ZERO)


# OpenAI-format streaming routes whose upstreams send usage when `stream_options` asks for it.
USAGE_ROUTES = frozenset({CHAT, COMPLETIONS})


def parse_json_object(body: bytes, exact: bool | None = None) -> dict[str, Any]:
    """The client's JSON body; 400 unless it is one JSON object."""
    if not body:
        raise BadRequest("Request body must be a JSON object")
    try:
        if exact is None:
            exact = _exact(body)
        data = json.loads(body) if exact else orjson.loads(body)
    except (ValueError, UnicodeDecodeError):  # orjson.JSONDecodeError is a ValueError
        raise BadRequest("Request body is not valid JSON") from None
    if not isinstance(data, dict):
        raise BadRequest("Request body must be a JSON object")
    return data


def dump_json(data: dict[str, Any], exact: bool = False) -> bytes:
    if exact:
        return json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode()
    return orjson.dumps(data)


def accept_encoding(client_value: str | None, streaming: bool) -> str:
    """What the router asks the upstream for. It relays bodies byte for byte but must be able to
    read them (errors, usage), so it only passes on codings the standard library decodes, and
    none for streams (events must be found as they arrive)."""
    if streaming or not client_value:
        return "identity"
    offered = {t.split(";")[0].strip().lower() for t in client_value.split(",")}
    usable = [c for c in ("gzip", "deflate") if c in offered]
    return ", ".join(usable) if usable else "identity"


def decoded(body: bytes, content_encoding: str | None) -> bytes | None:
    """The body as text bytes for inspection, or None when it cannot be decoded."""
    if not content_encoding or content_encoding.lower() == "identity":
        return body
    if content_encoding.lower() in ("gzip", "deflate", "x-gzip"):
        try:
            return zlib.decompress(body, wbits=47)  # 47: gzip or zlib, auto-detected
        except zlib.error:
            return None
    return None


class RequestState:
    """Per-request facts for logs and metrics, kept on `request.ctx.state`."""

    __slots__ = (
        "dropped",
        "error_type",
        "first_byte_latency",
        "key_id",
        "model",
        "stream",
        "translation",
        "upstream_latency",
        "upstream_model",
        "usage",
    )

    def __init__(self) -> None:
        self.key_id: str = "anonymous"
        self.model: str | None = None
        self.upstream_model: str | None = None
        self.stream = False
        self.upstream_latency: float | None = None
        self.error_type: str | None = None
        self.usage: dict[str, Any] | None = None
        self.first_byte_latency: float | None = None  # request start to a stream's first event
        self.translation = "none"  # which format translation ran (service.translate.DIRECTIONS)
        # Hint fields the translation dropped (translation_dropped_fields_total labels).
        self.dropped: list[str] = []


def _response_headers(resp: httpx.Response, request_id: str) -> list[tuple[str, str]]:
    out = h.returnable_response_headers(resp.headers.multi_items())
    out.append(("X-Request-ID", request_id))
    return out


def _forwarding(request: Request, mode: str) -> list[tuple[str, str]] | None:
    """The forwarding headers sent upstream (service.proxy.headers: replace, keep, drop)."""
    if mode == "keep":
        return None
    if mode == "drop":
        return []
    trusted = request.app.ctx.client_ip_from_headers
    return h.router_forwarding(
        h.client_address(request, trusted),
        request.scheme,
        request.host if trusted else request.headers.get("host", ""),
    )


# A stored response's id as the Responses API writes it (`resp_…`): nothing that could step out of
# the upstream's `/v1/responses/` path.
_RESPONSE_ID = re.compile(r"^[A-Za-z0-9_-]{1,200}$")


def stored_response_path(ep: ResolvedEndpoint, response_id: str, suffix: str) -> str:
    """The upstream URL of a stored response (`GET`/`DELETE /v1/responses/{id}`, `…/input_items`):
    only an upstream that speaks the Responses API stores responses; a translated one never."""
    if ep.format != RESPONSES_FORMAT:
        raise NotFound(
            "Responses are not stored: this router translates the Responses API for its upstream "
            "(send store: false and the whole conversation as input)"
        )
    if not _RESPONSE_ID.match(response_id):
        raise NotFound("No response with that id")
    return f"{ep.url}/{response_id}{suffix}"


def _local_estimate(route: str, payload: dict[str, Any], request_id: str) -> HTTPResponse:
    """`count_tokens` / `input_tokens` answered from the router's own estimate."""
    n = estimate.input_tokens(payload)
    body: dict[str, Any] = {"input_tokens": n}
    if route != COUNT_TOKENS:
        body = {"object": "response.input_tokens", "input_tokens": n}
    return HTTPResponse(
        orjson.dumps(body),
        headers=Header([estimate.ESTIMATE_HEADER, ("X-Request-ID", request_id)]),
        content_type="application/json",
    )


def _translator(
    route: str, ep: ResolvedEndpoint, payload: dict[str, Any]
) -> Translator | ResponsesTranslator:
    opts = TranslationOptions(
        strict=ep.translation_strict,
        reasoning_history=ep.reasoning_history,
        reasoning_effort=ep.reasoning_effort,
    )
    if route == RESPONSES:
        return ResponsesTranslator(ep.format, payload, int(time.time()), opts)
    return Translator(ep.translation, payload, int(time.time()), opts)


async def forward(
    request: Request, route: str, response_id: str | None = None, suffix: str = ""
) -> HTTPResponse | None:
    """`response_id` (with `suffix`): a stored-response route of the Responses API (GET/DELETE,
    no body, not rate-limited) under the `/v1/responses` endpoint."""
    app = request.app
    cfg = app.ctx.config.current
    ep: ResolvedEndpoint = cfg.endpoints[route]
    if not ep.enabled:
        raise RouteNotAvailable()
    url = ep.url if response_id is None else stored_response_path(ep, response_id, suffix)
    profile = cfg.profile
    state: RequestState = request.ctx.state
    request_id: str = request.ctx.request_id

    credential = h.client_credential(request.headers, app.ctx.settings.default_api_key)
    state.key_id = h.key_id(credential)
    if app.ctx.access is not None:
        # Shared deployment (service.access): the client's key was an access key, already
        # checked; it keys the buckets, and the upstream gets the operator's credential only.
        credential = app.ctx.settings.default_api_key

    streaming = False
    strip_usage = False
    translator: Translator | ResponsesTranslator | None = None
    upstream_length: int | None = None
    body: Any
    if response_id is not None:
        body = b""
    elif ep.requires_multipart:
        from .multipart import prepare

        body, upstream_length = await prepare(request, profile.model_mapping, state)
    else:
        if not request.body:
            await request.receive_body()  # a streaming route (routes.proxy) that takes JSON here
        body = request.body
        exact = _exact(body)  # one scan of the body, whatever is done with it below
        payload = parse_json_object(body, exact)
        model = payload.get("model")
        state.model = model if isinstance(model, str) else None
        mapped = h.map_model(profile.model_mapping, model)
        rewrite = mapped is not None  # the body is written again once, at the end
        if mapped is not None:
            payload["model"] = mapped
        state.upstream_model = mapped or state.model
        streaming = ep.stream_support and payload.get("stream") is True
        state.stream = streaming
        if ep.local_estimate:
            limit = route_limit(app, cfg, route)
            if limit is not None:
                decision = await app.ctx.limiter.acquire(state.key_id, route, limit)
                if not decision.allowed:
                    raise RateLimited(headers=decision.headers())
            return _local_estimate(route, payload, request_id)
        if ep.translation != "none":
            state.translation = ep.translation
            translator = _translator(route, ep, payload)
            body = dump_json(translator.request(), exact=exact)
            rewrite = False
            state.dropped = translator.dropped
        elif streaming and ep.request_usage and route in USAGE_ROUTES and ask_for_usage(payload):
            strip_usage = True
            rewrite = True
        if rewrite:
            body = dump_json(payload, exact=exact)

    limit = route_limit(app, cfg, route) if response_id is None else None
    decision = None
    if limit is not None:
        decision = await app.ctx.limiter.acquire(state.key_id, route, limit)
        if not decision.allowed:
            raise RateLimited(headers=decision.headers())

    client_headers: Any = request.headers.items()
    if translator is not None:  # the other provider's headers mean nothing upstream: dropped
        foreign = "openai-" if ep.format == ANTHROPIC else "anthropic-"
        kept = [(k, v) for k, v in client_headers if not k.lower().startswith(foreign)]
        if len(kept) < len(request.headers):
            state.dropped = [*state.dropped, foreign.replace("-", "_headers")]
        client_headers = kept
        if state.dropped:
            log.debug("translation_dropped_fields", fields=state.dropped)
    hdrs = h.upstream_headers(
        client_headers,
        ep.headers,
        profile.auth.header,
        profile.auth.scheme,
        credential,
        request_id,
        _forwarding(request, app.ctx.settings.forwarded_headers),
    )
    hdrs = h.merge_headers(
        hdrs,
        [
            (
                "Accept-Encoding",
                accept_encoding(
                    request.headers.get("accept-encoding"), streaming or translator is not None
                ),
            )
        ],
    )
    if upstream_length is not None:  # a streamed multipart body keeps a known length
        hdrs = h.merge_headers(hdrs, [("Content-Length", str(upstream_length))])
    upstream_request = app.ctx.http.build_request(
        ep.method if response_id is None else request.method,
        h.build_url(url, request.query_string),
        headers=hdrs,
        content=body,
        timeout=request_timeout(profile.timeouts, app.ctx.settings.upstream_pool_wait_secs),
    )
    extra = decision.headers() if decision is not None else {}

    if streaming:
        from .sse import relay_stream

        return await relay_stream(request, upstream_request, ep, extra, strip_usage, translator)

    started = time.perf_counter()
    try:
        resp = await send(app.ctx.http, upstream_request)  # retried once if never connected
        try:
            data = b"".join([chunk async for chunk in resp.aiter_raw()])
        finally:
            await resp.aclose()
    except httpx.HTTPError as e:
        raise map_exception(e) from None
    except asyncio.CancelledError:  # the client went away: 499, not an upstream failure
        from ..observability.lifecycle import finish

        state.upstream_latency = time.perf_counter() - started
        finish(request, 499)
        raise
    finally:
        state.upstream_latency = time.perf_counter() - started

    if resp.status_code == 429 or resp.status_code >= 500:
        state.error_type = "upstream_error"
    ctype = resp.headers.get("content-type", "")
    text = decoded(data, resp.headers.get("content-encoding"))  # once, for both uses below
    # Only a success must be valid JSON: an upstream 429/5xx (often an HTML page from a load
    # balancer under a JSON content-type) is passed through with its status and Retry-After.
    if "json" in ctype and data and 200 <= resp.status_code < 300:
        if text is not None:
            try:
                parsed = orjson.loads(text)
            except orjson.JSONDecodeError:
                raise UpstreamJSONError() from None
            if isinstance(parsed, dict) and isinstance(parsed.get("usage"), dict):
                state.usage = parsed["usage"]

    headers = _response_headers(resp, request_id)
    if translator is not None:  # the answer in the client's format, with the upstream's status
        headers, data = translator.answer(resp.status_code, headers, text or b"")
    for k, v in extra.items():
        headers.append((k, v))
    return HTTPResponse(
        body=data, status=resp.status_code, headers=Header(headers), content_type=None
    )


def is_anthropic_route(route: str | None) -> bool:
    """Whether the router's own errors on this path take the Anthropic shape."""
    return route in (MESSAGES, COUNT_TOKENS)


def limits_for(
    endpoints: dict[str, ResolvedEndpoint], default: Limit | None
) -> dict[str, Limit | None]:
    """Effective limit per route: endpoint > profile > environment (SPEC §7)."""
    out: dict[str, Limit | None] = {}
    for route, ep in endpoints.items():
        rl = ep.rate_limit
        out[route] = (
            Limit.per_minute(rl.requests_per_minute, rl.burst) if rl is not None else default
        )
    return out


def route_limit(app: Any, cfg: Any, route: str) -> Limit | None:
    """The limit for `route` under `cfg`, recomputed only when a reload swapped the config."""
    cached_cfg, limits = app.ctx.limit_cache
    if cached_cfg is not cfg:
        limits = limits_for(cfg.endpoints, app.ctx.default_limit)
        app.ctx.limit_cache = (cfg, limits)
    return limits.get(route)
