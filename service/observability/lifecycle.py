"""Request and connection lifecycle, recorded by Sanic signal listeners (`http.lifecycle.*`).

- `http.lifecycle.begin` / `complete`: a client TCP connection opened / closed.
- `http.lifecycle.request`: a request head arrived: start the clock, choose the request id,
  clear and bind the logging context.
- `http.lifecycle.response`: the response is about to be sent (for a stream: the handler has
  written its last byte): count it, time it, log one completion line.

A client that leaves cancels the handler (a plain request waiting for the upstream, or a stream
mid-way, which never reaches `http.lifecycle.response`): `http.lifecycle.complete` (connection
closed) then finishes the request it was serving with 499 (200 when a stream's whole answer was
out already: `RequestState.answered`, its last event written). `finish` runs at most once per
request. The relay only leaves its facts on `request.ctx.state` (service.state.RequestState).

The failure path (and only it) also feeds the repeated-failure alarm, Sentry when enabled
(`http.lifecycle.exception` keeps the exception of a router error for it), and nothing else:
the per-request cost is two signal listeners. The app (`service.server.dispatch.RouterApp`)
calls these listeners directly rather than through Sanic's signal router; metric children are
looked up once per label set (`Metrics.*_by`), and the completion line is rendered by structlog
and written straight to the log stream (`observability.logging`).

`finish` stamps the answer's headers and ends the trace span; `record` writes the metrics, the
completion line and the failure path. With the `batch` fast path `record` runs at the end of the
event-loop pass (service.observability.completions), except for a request whose client is gone,
recorded at once as without the fast path (nothing is gained by waiting: no answer goes out).
"""

from __future__ import annotations

import logging
import os
import re
import time
from typing import Any

import structlog
from sanic import Request, Sanic
from sanic.models.server_types import ConnInfo
from sanic.response import BaseHTTPResponse, HTTPResponse

from .. import timing
from ..config.model import MODEL_ID, PROXY_ROUTES, RESPONSE_ID, RESPONSE_INPUT_ITEMS
from ..context import AppContext, RouterRequest
from ..cors import Cors
from ..proxy.headers import client_address, new_request_id, sane_request_id
from ..server.dispatch import plain_listener
from ..server.protocol import connection_of
from ..state import RequestState, clipped
from ..usage import token_counts
from . import sentry
from .alerts import FailureAlarm
from .completions import Completions
from .logging import emit, set_request_secret
from .metrics import METHODS, method_label

ACCESS_LOGGER = "api_router.access"
PATH_LOG_CHARS = 200  # of a 404/405 request's path in its completion line
access_log = structlog.get_logger(ACCESS_LOGGER)
alert_log = structlog.get_logger("api_router.alert")

KNOWN_PATHS = frozenset({"/health", "/ready", "/metrics", "/v1/models", *PROXY_ROUTES})


# The routes with a parameter, as regular expressions of their patterns (`<response_id:str>`: one
# path segment, `<model_id:path>`: the rest of the path): a wrong method on such a path is
# labelled with its pattern.
_PATTERNED = tuple(
    (
        re.compile(re.sub(r"<[^>]+>", "[^/]+", re.sub(r"<[^>]+:path>", ".+", pattern)) + "$"),
        pattern,
    )
    for pattern in (RESPONSE_ID, RESPONSE_INPUT_ITEMS, MODEL_ID)
)


def route_label(request: RouterRequest) -> str:
    route = request.route
    if route is not None:
        return "/" + route.path if not route.path.startswith("/") else route.path
    # A wrong method on a known path (with or without the trailing slash Sanic's routes take):
    # still a route of the table, by its pattern.
    path = request.path
    if len(path) > 1:
        path = path.rstrip("/") or "/"
    if path in KNOWN_PATHS:
        return path
    return next((pattern for rx, pattern in _PATTERNED if rx.match(path)), "unmatched")


def model_label(model: str | None, known: frozenset[str]) -> str:
    # SPEC §8: the profile's known models and `other` (a request that named none is `other` too).
    return model if model is not None and model in known else "other"


def start(request: RouterRequest) -> None:
    ctx = request.ctx
    ctx.started = time.perf_counter()
    ctx.finished = False
    rid = request.headers.get("x-request-id")
    ctx.request_id = rid if sane_request_id(rid) else new_request_id()
    ctx.state = RequestState()
    structlog.contextvars.clear_contextvars()
    # The client's own key is scrubbed from every line logged while its request runs.
    headers = request.headers
    auth = headers.get("authorization")
    set_request_secret(
        auth.strip().rpartition(" ")[2] if auth else None,
        (headers.get("x-api-key") or "").strip(),
    )
    structlog.contextvars.bind_contextvars(request_id=ctx.request_id)


def add_cors(cors: Cors, request: Any, response: BaseHTTPResponse) -> None:
    """The CORS headers of a response to an allowed origin (service.cors), unless it has them
    (a preflight's answer)."""
    headers = response.headers
    if "access-control-allow-origin" in headers:
        return
    for k, v in cors.headers(request.headers.get("origin")):
        if k == "Vary":
            headers.add(k, v)  # beside the upstream's own Vary
        else:
            headers[k] = v


def finish(request: RouterRequest, status: int, response: BaseHTTPResponse | None = None) -> None:
    ctx = request.ctx
    if getattr(ctx, "finished", True):
        return
    ctx.finished = True
    conn = request.conn_info
    lost = False
    if conn is not None:
        conn.ctx.request = None  # finished: its connection keeps no reference to it (or its body)
        lost = conn.lost
        if lost and not ctx.state.answered:
            status = 499  # the client left before the answer reached it
    app_ctx = request.app.ctx
    elapsed = time.perf_counter() - ctx.started
    route = route_label(request)
    state: RequestState = ctx.state
    if response is not None:
        if "x-request-id" not in response.headers:
            response.headers["X-Request-ID"] = ctx.request_id
        if not state.timed:  # the numbers router_overhead_seconds gets below
            response.headers[timing.SERVER_TIMING] = timing.whole(elapsed, state.upstream_latency)
            if app_ctx.cors is not None:  # a stream's head had them already
                add_cors(app_ctx.cors, request, response)
    tracing = app_ctx.tracing
    trace_id = None
    if tracing is not None:
        trace_id = tracing.trace_id(request)
        exemplars = app_ctx.exemplars
        ids = tracing.sampled_ids(request) if exemplars is not None else None
        if exemplars is not None and ids is not None:  # the same values the histograms got
            exemplars.record(0, route, elapsed, *ids)
            if state.upstream_latency is not None:
                exemplars.record(1, route, state.upstream_latency, *ids)
        tracing.finish_request(request, status, route, state)
    # The router error Sentry reports, as it is now (a failed send may set another one later).
    exception = getattr(ctx, "exception", None)
    completions = app_ctx.completions
    if completions is not None and not lost:  # the `batch` fast path: at the end of the pass
        completions.add(request, route, status, elapsed, trace_id, exception)
    else:
        record(request, route, status, elapsed, trace_id, exception)


def record(
    request: RouterRequest,
    route: str,
    status: int,
    elapsed: float,
    trace_id: str | None,
    exception: BaseException | None,
) -> None:
    """A finished request's metric writes, completion line and failure path (its answer's
    headers are stamped and its span ended already: `finish`)."""
    app_ctx = request.app.ctx
    state: RequestState = request.ctx.state
    metrics = app_ctx.metrics
    if metrics is not None:
        metrics.in_flight.inc(-1)
        metrics.requests_by[route, method_label(request.method), status].inc()
        metrics.request_latency_by[route].observe(elapsed)
        if state.error_type is not None:
            metrics.upstream_errors_by[state.error_type].inc()
        if state.upstream_latency is not None:
            metrics.upstream_latency_by[route].observe(state.upstream_latency)
            metrics.router_overhead_by[route].observe(max(0.0, elapsed - state.upstream_latency))
        if state.translation != "none":
            metrics.translations_by[state.translation].inc()
            for field in state.dropped:
                metrics.dropped_fields_by[field].inc()
        if state.first_byte_latency is not None:
            metrics.stream_first_byte_by[route].observe(state.first_byte_latency)
        if state.malformed_events:
            metrics.stream_malformed_events_total.inc(state.malformed_events)
        if state.attempts:
            for upstream, outcome, secs, _ in state.attempts:
                metrics.attempts_by[upstream, outcome].inc()
                metrics.attempt_seconds_by[upstream].observe(secs)
            for moved in state.fallbacks:
                metrics.fallbacks_by[moved].inc()
        if state.usage:
            known = (state.config or app_ctx.config.current).known_models
            model = model_label(state.upstream_model or state.model, known)
            # as the token limits count them: Anthropic's cache tokens are prompt tokens
            prompt, completion = token_counts(state.usage)
            if prompt:
                metrics.tokens_by["prompt", model].inc(prompt)
            if completion:
                metrics.tokens_by["completion", model].inc(completion)
    if app_ctx.settings.access_log_enabled:
        fields: dict[str, Any] = {
            "client_ip": client_address(request, app_ctx.client_ip_from_headers),
            "method": request.method,
            "route": route,
            "status_code": status,
            "latency_ms": round(elapsed * 1000, 3),
            "provider": state.upstream or (state.config or app_ctx.config.current).profile.name,
            "upstream_latency_ms": (
                round(state.upstream_latency * 1000, 3)
                if state.upstream_latency is not None
                else None
            ),
            "model": clipped(state.model),
            "stream": state.stream,
            "translation": state.translation,
            "key_id": state.key_id,
        }
        if trace_id is not None:
            fields["trace_id"] = trace_id
        if state.malformed_events:
            fields["malformed_events"] = state.malformed_events
        if len(state.attempts) > 1:  # retried or failed over: every attempt, in order
            fields["attempts"] = [_attempt(u, o, secs, code) for u, o, secs, code in state.attempts]
        if route == "unmatched" or status == 405:
            # What a client tried (never a metric label; the query is left out: it may hold a
            # key): an operator reading a 404/405 line can tell which path it was.
            fields["path"] = request.path[:PATH_LOG_CHARS]
        level = logging.INFO
        if state.error_type is not None:
            fields["error_type"] = state.error_type
            level = logging.WARNING
        if state.ended_by is not None:  # a stream the drain ended (`server_shutting_down`)
            fields["ended_by"] = state.ended_by
            level = logging.WARNING
        emit(access_log, ACCESS_LOGGER, level, "request_completed", fields, request.ctx.request_id)
    if state.error_type is not None or status >= 500:
        _failed(request, route, status, state.error_type, exception)


def _attempt(upstream: str, outcome: str, secs: float, status: int | None) -> dict[str, Any]:
    """One attempt of the completion line (SPEC §11: upstream, status or error, duration)."""
    if status is None:  # no answer: the outcome is the error
        return {"upstream": upstream, "outcome": outcome, "secs": secs}
    return {"upstream": upstream, "outcome": outcome, "status": status, "secs": secs}


def _failed(
    request: RouterRequest,
    route: str,
    status: int,
    error_type: str | None,
    exception: BaseException | None,
) -> None:
    """The failure path: repeated-failure alarm and Sentry (never reached by a good request)."""
    app_ctx = request.app.ctx
    provider = (request.ctx.state.config or app_ctx.config.current).profile.name
    alarm = app_ctx.failure_alarm
    if error_type is not None and alarm is not None and alarm.record():
        alert_log.error(
            "upstream_failures_repeated",
            failures=alarm.threshold,
            window_secs=alarm.window_secs,
            error_type=error_type,
            route=route,
            provider=provider,
        )
    if sentry.enabled():
        kind = error_type or "router_error"
        sentry.report(
            message=f"{kind} on {route}",
            tags={
                "request_id": request.ctx.request_id,
                "route": route,
                "status_code": str(status),
                "error_type": kind,
                "provider": provider,
            },
            exc=exception if error_type is None else None,
        )


def _head_method(request: Any) -> str | None:
    """The method of a refused head's request line, still in the connection's buffer (one of
    the closed set of METHODS, else None)."""
    buf = getattr(getattr(request, "stream", None), "recv_buffer", None)
    if not buf:
        return None
    method = bytes(buf[:8]).split(b" ", 1)[0].decode("latin-1")
    return method if method in METHODS else None


def install_request_id(app: Sanic) -> None:
    """Without metrics and completion lines, the request id is still chosen and returned."""

    @app.on_request
    async def _rid(request: RouterRequest) -> None:
        start(request)

    @app.on_response
    async def _rid_out(request: Request, response: HTTPResponse) -> None:
        ctx = request.ctx
        response.headers.setdefault("X-Request-ID", ctx.request_id)
        state = getattr(ctx, "state", None)
        if state is not None and not state.timed:
            elapsed = time.perf_counter() - ctx.started
            response.headers[timing.SERVER_TIMING] = timing.whole(elapsed, state.upstream_latency)
            if request.app.ctx.cors is not None:
                add_cors(request.app.ctx.cors, request, response)


def install(app: Sanic[Any, AppContext]) -> None:
    mp_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if app.ctx.settings.fast_paths.batch:  # the app's `after_server_stop` writes the last ones
        completions = app.ctx.completions = Completions(record)

        @app.before_server_start
        async def _flag(app: Sanic) -> None:
            flags = app.ctx.settings.multiproc_dir
            if flags:  # in the worker: a scrape by another worker waits for its records
                completions.open_flag(flags)

    app.ctx.failure_alarm = FailureAlarm(
        state_path=os.path.join(mp_dir, "failure-alarm.json") if mp_dir else None
    )

    if sentry.configured():

        @app.before_server_start
        async def _sentry(app: Sanic) -> None:
            sentry.init()

        @app.after_server_stop
        async def _sentry_flush(app: Sanic) -> None:
            sentry.flush()

        # Only with Sentry: the exception it reports. Costs a dispatch per error response.
        @plain_listener(app, "http.lifecycle.exception")
        def _exception(request: Request, exception: BaseException) -> None:
            if request is not None:
                request.ctx.exception = exception

    @plain_listener(app, "http.lifecycle.begin")
    def _conn_open(conn_info: ConnInfo) -> None:
        m = app.ctx.metrics
        if m is not None:
            m.active_connections.inc()

    @plain_listener(app, "http.lifecycle.complete")
    def _conn_close(conn_info: ConnInfo) -> None:
        req = getattr(conn_info.ctx, "request", None)
        if req is not None and not req.ctx.finished:
            # The client left while its request was being handled: 499, unless the whole answer
            # (a stream's: its head was a 200) was out already and only HTTP's end was missing.
            finish(req, 200 if req.ctx.state.answered else 499)
        m = app.ctx.metrics
        if m is not None:
            m.active_connections.dec()

    @plain_listener(app, "http.lifecycle.request")
    def _request(request: RouterRequest) -> None:
        start(request)
        tracing = app.ctx.tracing
        if tracing is not None:
            tracing.start_request(request)
        conn = connection_of(request)
        if conn is not None:
            conn.ctx.request = request  # `http.lifecycle.complete` finishes it if the client left
        m = app.ctx.metrics
        if m is not None:
            m.in_flight.inc(1)

    @plain_listener(app, "http.lifecycle.response")
    def _response(request: RouterRequest, response: BaseHTTPResponse) -> None:
        status = response.status
        if not hasattr(request.ctx, "finished"):
            # Refused before its head was accepted (malformed, too large, too slow): Sanic
            # answers through an empty request that never passed `http.lifecycle.request`.
            conn = connection_of(request)
            first = getattr(conn.ctx, "request", None) if conn is not None else None
            if first is not None and first is not request and not first.ctx.finished:
                # Refused after it passed (an unknown Expect, a bad Content-Length): the answer
                # is that request's, which is finished with it (in flight no more).
                finish(first, status, response)
                return
            # Else it is still counted and logged (route `unmatched` unless the path was read),
            # under the method of its request line when that was read (Sanic says NONE), with
            # the peer's address (the stand-in request has no connection of its own).
            method = _head_method(request)
            if method is not None:
                request.method = method
            if conn is not None:
                request.conn_info = conn
            transport = request.transport
            if (conn is not None and conn.lost) or transport is None or transport.is_closing():
                status = 499  # the client left before its head was whole: it got nothing
            _request(request)
        finish(request, status, response)
