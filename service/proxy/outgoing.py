"""What relay.forward and failover.forward_routed both send and answer: the upstream headers
of a request, its format translator, the local token estimate, the relayed response headers."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import httpx
import orjson
import structlog
from sanic.compat import Header
from sanic.response import HTTPResponse

from .. import timing
from ..config.model import (
    ANTHROPIC,
    CHAT,
    COMPLETIONS,
    COUNT_TOKENS,
    RESPONSES,
    Profile,
    ResolvedEndpoint,
)
from ..context import RouterRequest
from ..errors import BadRequest, UpstreamJSONError
from ..state import RequestState
from ..translate import TranslationOptions, Translator
from ..translate.common import MALFORMED, takes_effort
from ..translate.responses import ResponsesTranslator
from . import estimate
from . import headers as h
from .body import accept_encoding, decoded, dump_json
from .gemini import fit_body

log = structlog.get_logger("api_router.translate")

# OpenAI-format streaming routes whose upstreams send usage when `stream_options` asks for it.
USAGE_ROUTES = frozenset({CHAT, COMPLETIONS})


def answer_headers(
    resp: httpx.Response, request_id: str
) -> tuple[list[tuple[str, str]], str, str | None]:
    """The headers the client gets with a whole answer (the upstream's returnable ones and the
    router's X-Request-ID), and the answer's Content-Type ("" when none) and Content-Encoding
    as `resp.headers.get` gives them, from one decoding of the headers and one lowering of
    their names."""
    items = resp.headers.multi_items()
    lowered = [k.lower() for k, _ in items]
    out = h.returnable_response_headers(items, lowered)
    out.append(("X-Request-ID", request_id))
    ctype = h.joined_value(items, lowered, "content-type") or ""
    return out, ctype, h.joined_value(items, lowered, "content-encoding")


def early_head(request: RouterRequest, upstream_head: float | None) -> list[tuple[str, str]]:
    """For a head written before its answer is whole (a stream's, a large answer's): what
    the lifecycle adds to a whole answer when it finishes, too late for such a head. Server-Timing
    up to the head (`upstream_head`: the upstream's own time to its head, None when it has not
    answered yet) and the CORS headers; the request is marked as timed."""
    ctx = request.ctx
    ttfb = time.perf_counter() - ctx.started
    out = [(timing.SERVER_TIMING, timing.stream_head(ttfb, upstream_head))]
    cors = request.app.ctx.cors
    if cors is not None:
        out.extend(cors.headers(request.headers.get("origin")))
    ctx.state.timed = True
    return out


def _forwarding(request: RouterRequest, mode: str) -> Sequence[tuple[str, str]] | None:
    """The forwarding headers sent upstream (service.proxy.headers: replace, keep, drop).

    With no proxy trusted (the default) the client's address and the scheme are the
    connection's and Sanic reads no forwarding header, so the headers depend only on the
    connection and its request's `Host`: made once per connection (its `conn_info.ctx`) and
    again only when `Host` changes. (`request.scheme` alone costs several microseconds.)"""
    if mode == "keep":
        return None
    if mode == "drop":
        return []
    if request.app.ctx.client_ip_from_headers:
        return h.router_forwarding(h.client_address(request, True), request.scheme, request.host)
    host = request.headers.get("host", "")
    info = request.conn_info
    if info is None:
        return h.router_forwarding(request.ip, request.scheme, host)
    made: tuple[str, tuple[tuple[str, str], ...]] | None = getattr(info.ctx, "forwarding", None)
    if made is None or made[0] != host:
        made = info.ctx.forwarding = (
            host,
            tuple(h.router_forwarding(request.ip, request.scheme, host)),
        )
    return made[1]


def local_estimate(route: str, payload: dict[str, Any], request_id: str) -> HTTPResponse:
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


_TRANSLATE_PACKAGE = Translator.__module__  # service.translate


def translated_request(
    route: str, ep: ResolvedEndpoint, payload: dict[str, Any], exact: bool
) -> tuple[Translator | ResponsesTranslator, bytes]:
    """The translator of a translated route and the upstream body it writes for `payload`.
    The translators refuse what they cannot translate with a 400 naming the field (SPEC §12);
    a client value of a shape one of them still does not expect (a number where it reads an
    object: MALFORMED) is the client's 400 too, never a 500."""
    try:
        translator = translator_for(route, ep, payload)
        out = translator.request()
    except MALFORMED as e:
        raise BadRequest(_malformed(e)) from None
    fit_body(out, ep)
    return translator, dump_json(out, exact=exact)


def _malformed(exc: BaseException) -> str:
    """The 400's message for a translator's MALFORMED: naming the part of the request it was
    reading when one of its functions says (their `where` argument: `messages[2]`, ...)."""
    where = None
    tb = exc.__traceback__
    while tb is not None:  # the innermost frame that knows wins
        frame = tb.tb_frame
        if frame.f_globals.get("__name__", "").startswith(_TRANSLATE_PACKAGE):
            at = frame.f_locals.get("where")
            if isinstance(at, str) and at:
                where = at
        tb = tb.tb_next
    if where is None:
        return "A field of the request has a value of the wrong type for its translation"
    return f"'{where}' holds a value of the wrong type for its translation"


def translator_for(
    route: str, ep: ResolvedEndpoint, payload: dict[str, Any]
) -> Translator | ResponsesTranslator:
    opts = TranslationOptions(
        strict=ep.translation_strict,
        reasoning_history=ep.reasoning_history,
        reasoning_effort=takes_effort(ep.reasoning_effort, payload.get("model")),
        max_completion_tokens=ep.max_completion_tokens,
        default_max_tokens=ep.default_max_tokens,
    )
    if route == RESPONSES:
        return ResponsesTranslator(ep.format, payload, int(time.time()), opts)
    return Translator(ep.translation, payload, int(time.time()), opts)


def outgoing_headers(
    request: RouterRequest,
    ep: ResolvedEndpoint,
    profile: Profile,
    credential: str | None,
    translator: Translator | ResponsesTranslator | None,
    streaming: bool,
    upstream_length: int | None,
    state: RequestState,
    keep_client_keys: bool = True,
) -> tuple[h.WireHeaders, str]:
    """The headers and query string sent upstream for a request to `ep` of `profile`; without
    any other form of a client key (`h.OTHER_CREDENTIAL_HEADERS`, `h.CREDENTIAL_PARAMS`) unless
    `keep_client_keys`."""
    ctx = request.app.ctx
    client_headers: Any = request.headers.items()
    query = request.query_string
    if not keep_client_keys:
        client_headers = [
            (k, v) for k, v in client_headers if k.lower() not in h.OTHER_CREDENTIAL_HEADERS
        ]
        query, _ = h.without_params(query, h.CREDENTIAL_PARAMS)
    if translator is not None:  # the other provider's headers mean nothing upstream: dropped
        foreign = "openai-" if ep.format == ANTHROPIC else "anthropic-"
        kept = [(k, v) for k, v in client_headers if not k.lower().startswith(foreign)]
        dropped_query = False
        if ep.format != ANTHROPIC:  # and Anthropic's query flags (`?beta=true`)
            query, dropped_query = h.without_params(query, h.ANTHROPIC_QUERY)
        if len(kept) < len(client_headers) or dropped_query:
            dropped = foreign.replace("-", "_headers")
            if dropped not in state.dropped:
                state.dropped = [*state.dropped, dropped]
        client_headers = kept
        if state.dropped:
            log.debug("translation_dropped_fields", fields=state.dropped)
    final = [
        (
            "Accept-Encoding",
            accept_encoding(
                request.headers.get("accept-encoding"), streaming or translator is not None
            ),
        )
    ]
    if upstream_length is not None:  # a streamed multipart body keeps a known length
        final.append(("Content-Length", str(upstream_length)))
    hdrs = h.upstream_headers(
        client_headers,
        ep.headers,
        profile.auth.header,
        profile.auth.scheme,
        credential,
        request.ctx.request_id,
        _forwarding(request, ctx.settings.forwarded_headers),
        final,
    )
    return h.wire_values(hdrs), query


def keep_answer(parsed: Any, state: RequestState) -> None:
    """A whole answer's facts for logs, metrics and traces: the answer, and its usage."""
    if isinstance(parsed, dict):
        state.answer = parsed
        if isinstance(parsed.get("usage"), dict):
            state.usage = parsed["usage"]
            state.usage_final = True


def json_answer(
    resp: httpx.Response,
    data: bytes,
    translator: Translator | ResponsesTranslator | None,
    extra: dict[str, str],
    state: RequestState,
    request_id: str,
) -> HTTPResponse:
    """A whole (non-stream) upstream answer for the client: its usage read, translated back
    when the route was, with the router's headers added."""
    headers, ctype, encoding = answer_headers(resp, request_id)
    text = decoded(data, encoding)  # once, for both uses below
    # Only a success must be valid JSON: an upstream 429/5xx (often an HTML page from a load
    # balancer under a JSON content-type) is passed through with its status and Retry-After.
    # An empty body is none (but for a 204/205 or a HEAD's answer, which have no body).
    status = resp.status_code
    if (
        "json" in ctype
        and 200 <= status < 300
        and text is not None
        and (data or (status not in (204, 205) and resp.request.method != "HEAD"))
    ):
        try:
            parsed = orjson.loads(text)
        except orjson.JSONDecodeError:
            raise UpstreamJSONError() from None
        keep_answer(parsed, state)
    if translator is not None:  # the answer in the client's format, with the upstream's status
        try:
            headers, data = translator.answer(resp.status_code, headers, text or b"")
        except MALFORMED:  # JSON, but not of the shape its format promises
            raise UpstreamJSONError() from None
    h.add_router_headers(headers, extra.items())
    return HTTPResponse(
        body=data, status=resp.status_code, headers=Header(headers), content_type=None
    )
