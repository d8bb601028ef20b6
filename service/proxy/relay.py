"""Forwarding one client request upstream and relaying the answer (SPEC §5).

`forward()` is the single entry point used by every proxied route:

1. snapshot the active profile (a request keeps the config it started with);
2. read the body: JSON (whole, only `model` rewritten) or multipart (client's boundary kept);
3. rate-limit on (credential hash, route) before anything reaches the upstream;
4. send through the per-worker pooled client; map failures to the router's errors;
5. relay: SSE streams through `sse.relay_stream`, everything else as one response whose status,
   body and end-to-end headers are the upstream's.

What the observability layer needs is left on `request.ctx.state` (service.state.RequestState),
and read by its lifecycle listeners when the request finishes (a client that leaves is finished
by them too, as 499); the relay imports nothing of observability. The bodies' helpers are in
service.proxy.body.
"""

from __future__ import annotations

import copy
import re
import time
from typing import Any

import httpx
from sanic.response import HTTPResponse

from ..config.model import (
    COUNTS_FOR,
    EMBEDDINGS,
    RESPONSES_FORMAT,
    ResolvedEndpoint,
)
from ..config.routing import Upstream
from ..context import RouterRequest
from ..errors import NotFound, RateLimited, RouteNotAvailable, RouterError
from ..ratelimit import Decision
from ..state import RequestState
from ..translate import Translator
from ..translate.responses import ResponsesTranslator
from . import headers as h
from .body import dump_json, exact_json, parse_json_object
from .events import ask_for_usage
from .failover import forward_routed, upstream_credential
from .gemini import fit_body
from .multipart import prepare
from .outgoing import (
    USAGE_ROUTES,
    json_answer,
    local_estimate,
    outgoing_headers,
    translated_request,
)
from .passthrough import LargeAnswer, read_answer, relay_large_answer
from .sse import relay_stream, relay_unasked_stream, unasked_stream
from .upstream import map_exception, request_timeout, send

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


async def forward(
    request: RouterRequest, route: str, response_id: str | None = None, suffix: str = ""
) -> HTTPResponse | None:
    """`response_id` (with `suffix`): a stored-response route of the Responses API (GET/HEAD/DELETE,
    no body, not rate-limited) under the `/v1/responses` endpoint."""
    ctx = request.app.ctx
    cfg = request.ctx.state.config = ctx.config.current  # for the whole request
    ep: ResolvedEndpoint = cfg.endpoints[route]
    profile = cfg.profile
    stored_at: Upstream | None = None
    if cfg.routing is not None:  # several upstreams (SPEC §11)
        if response_id is None:  # chosen by model
            return await forward_routed(request, route, cfg)
        # A stored response: at the upstream that stores them (service.config.routing)
        stored_at = cfg.routing.stored_at
        if stored_at is None:
            raise NotFound("No upstream of this routing file stores responses")
        ep, profile = stored_at.endpoints[route], stored_at.profile
    if not ep.enabled:
        raise RouteNotAvailable()
    url = ep.url if response_id is None else stored_response_path(ep, response_id, suffix)
    state: RequestState = request.ctx.state
    request_id: str = request.ctx.request_id

    own = h.client_credential(request.headers, None)
    credential = own or ctx.settings.default_api_key or None
    state.key_id = h.bucket_id(
        own, ctx.settings.default_api_key, request.headers, request.args, ctx.access is not None
    )
    if ctx.access is not None:
        # Shared deployment (service.access): the client's key was an access key, already
        # checked; it keys the buckets, and the upstream gets the operator's credential only.
        credential = ctx.settings.default_api_key
    if stored_at is not None:
        state.upstream = stored_at.name
        credential = upstream_credential(
            stored_at,
            credential,
            None if ctx.access else h.client_credential(request.headers, None),
        )

    streaming = False
    strip_usage = False
    translator: Translator | ResponsesTranslator | None = None
    upstream_length: int | None = None
    body: Any
    if response_id is not None:
        body = b""
    elif ep.requires_multipart:
        body, upstream_length = await prepare(request, profile.model_mapping, state)
    else:
        if not request.body:
            await request.receive_body()  # a streaming route (routes.proxy) that takes JSON here
        body = request.body
        exact = exact_json(body)  # one scan of the body, whatever is done with it below
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
            limit = cfg.limit(route, ctx.default_limit)
            if limit is not None:
                verdict = await ctx.limiter.acquire(state.key_id, route, limit)
                if not verdict.allowed:
                    raise RateLimited(headers=verdict.headers())
            return local_estimate(route, payload, request_id)
        if ep.translation != "none":
            state.translation = ep.translation
            translator, body = translated_request(route, ep, payload, exact)
            rewrite = False
            state.dropped = translator.dropped
        else:
            if streaming and ep.request_usage and route in USAGE_ROUTES:
                strip_usage = ask_for_usage(payload)
            # fit_body before `or`: it must run whether or not usage was asked for
            rewrite = fit_body(payload, ep) or strip_usage or rewrite
        if rewrite:
            body = dump_json(payload, exact=exact)

    limit = cfg.limit(route, ctx.default_limit) if response_id is None else None
    decision: Decision | None = None
    if limit is not None:
        decision = await ctx.limiter.acquire(state.key_id, route, limit)
        if not decision.allowed:
            raise RateLimited(headers=decision.headers())

    extra = decision.headers() if decision is not None else {}
    charge = None
    # Token counting (count_tokens, input_tokens) uses no tokens and reports no usage: never
    # charged (a reservation would stand for ever).
    if response_id is None and route not in COUNTS_FOR:
        rule = cfg.token_rule(route, ctx.token_defaults)
        if rule is not None:  # SPEC §13: reserve the estimate before anything is sent
            charge = await ctx.tokens.reserve(
                state.key_id,
                rule,
                None if ep.requires_multipart else payload,
                0 if ep.requires_multipart else len(request.body),
                extra,
                route != EMBEDDINGS,  # no output tokens to reserve
            )
            if charge is not None:
                extra.update(charge.headers)
    if stored_at is not None:
        extra = {**extra, "x-router-upstream": stored_at.name}

    hdrs, query = outgoing_headers(
        request,
        ep,
        profile,
        credential,
        translator,
        streaming,
        upstream_length,
        state,
        ctx.access is None and (stored_at is None or stored_at.credential != "operator"),
    )
    upstream_request = ctx.http.build_request(
        ep.method if response_id is None else request.method,
        h.build_url(url, query),
        headers=hdrs,
        content=body,
        timeout=request_timeout(profile.timeouts, ctx.settings.upstream_pool_wait_secs),
    )
    if ctx.tracing is not None:
        ctx.tracing.start_attempt(
            request,
            upstream_request,
            route,
            profile.name,
            state.upstream_model,
            streaming,
            0,
            stored_at.name if stored_at is not None else None,
        )
    pending = _exchange(request, upstream_request, ep, extra, strip_usage, translator, streaming)
    try:
        if charge is None:
            return await pending
        return await ctx.tokens.charged(charge, state, pending)
    except RouterError as e:
        if not extra:
            raise
        # The router's own error (the upstream down, silent, ...): it passed the limits, so
        # it carries their headers as an upstream's answer would. A copy: an error may be shared.
        err = copy.copy(e)
        err.headers = {**extra, **e.headers}
        raise err from None


async def _exchange(
    request: RouterRequest,
    upstream_request: httpx.Request,
    ep: ResolvedEndpoint,
    extra: dict[str, str],
    strip_usage: bool,
    translator: Translator | ResponsesTranslator | None,
    streaming: bool,
) -> HTTPResponse | None:
    """Send the request and relay its answer: a stream, or one whole response."""
    if streaming:
        return await relay_stream(request, upstream_request, ep, extra, strip_usage, translator)

    ctx = request.app.ctx
    state: RequestState = request.ctx.state
    started = time.perf_counter()
    try:
        resp = await send(ctx.http, upstream_request)  # retried once if never connected
        headed = time.perf_counter()
        if unasked_stream(resp):
            data: bytes | LargeAnswer | None = None
        else:  # a large untranslated 2xx answer is relayed as it comes (service.proxy.passthrough)
            passthrough = translator is None and 200 <= resp.status_code < 300
            data = await read_answer(ctx.http, resp, passthrough)
    except httpx.HTTPError as e:
        raise map_exception(e) from None
    finally:
        # Also when the client went away (CancelledError): the lifecycle listeners then record
        # 499, not an upstream failure.
        state.upstream_latency = time.perf_counter() - started
    if data is None:
        return await relay_unasked_stream(request, resp, ep, extra, translator, started)

    state.upstream_status = resp.status_code
    if isinstance(data, LargeAnswer):
        await relay_large_answer(request, resp, data, extra, started, headed)
        return None
    if resp.status_code == 429 or resp.status_code >= 500:
        state.error_type = "upstream_error"
    return json_answer(resp, data, translator, extra, state, request.ctx.request_id)
