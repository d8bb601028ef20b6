"""`create_app(settings)`: the Sanic application, assembled in one place.

`RouterApp` is Sanic with a direct path for the signals dispatched on every request (see its
docstring). Blueprints for the routes, one error handler, the lifecycle signal listeners, and
per-worker resources (the upstream client, the limiter handle, metrics, the config watcher)
created in `before_server_start` and released in `after_server_stop`. Nothing here does I/O at
import time.
"""

from __future__ import annotations

import asyncio
import os
from inspect import isawaitable
from types import SimpleNamespace
from typing import Any

from sanic import Request, Sanic
from sanic import exceptions as sx
from sanic.config import Config
from sanic.log import error_logger
from sanic.response import HTTPResponse
from sanic_routing.exceptions import NotFound as NoSignal

from . import access, connlimits, shutdown
from .config import ConfigHolder, LoadedConfig, load_file
from .errors import BadRequest as RouterBadRequest
from .errors import (
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    RouterError,
    error_body,
)
from .errors import ServiceUnavailable as RouterUnavailable
from .observability import lifecycle
from .observability.logging import configure_logging, redact
from .observability.metrics import Metrics, worker_exited
from .proxy.relay import is_anthropic_route
from .proxy.upstream import create_client
from .ratelimit import Limit, create_limiter
from .ratelimit.shared import TABLE_ENV as SHARED_TABLE_ENV
from .routes import ops_bp, proxy_bp
from .settings import Settings

APP_NAME = "api_router"

# Signals Sanic dispatches on every request or connection that have listeners in this app
# (lifecycle.install, connlimits.install, access.install). RouterApp runs them without the
# signal router.
HOT_SIGNALS = (
    "http.lifecycle.begin",
    "http.lifecycle.complete",
    "http.lifecycle.read_head",
    "http.lifecycle.request",
    "http.lifecycle.response",
    "http.lifecycle.exception",
    "http.routing.after",
)


class RouterApp(Sanic[Config, SimpleNamespace]):
    """Sanic, with a direct path for the hot signals.

    Sanic's TouchUp deletes the `dispatch` calls of events nobody listens to; the others go
    through the signal router, which resolves the event like a URL on every call, several times
    per request. Once the server has started (`plan_signals`, a `before_server_start` listener:
    the signal router is final by then), the listeners of each event of `HOT_SIGNALS` are looked
    up once; an inline dispatch without condition then calls them directly, in the order and with
    the semantics of `SignalRouter._dispatch` (the first truthy result is returned; an exception
    is reported through `server.exception.report`, marked `__dispatched__` and re-raised).
    Anything else (a condition, `reverse`, a non-inline dispatch, an event with a waiter from
    `app.event()`, any other event) goes to Sanic.
    """

    __slots__ = ("_hot_signals",)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._hot_signals: dict[str, tuple[tuple[Any, ...], tuple[Any, ...]]] = {}
        self.before_server_start(RouterApp._plan_at_start)

    @staticmethod
    async def _plan_at_start(app: RouterApp) -> None:
        app.plan_signals()  # the signal router is final by now

    def plan_signals(self) -> None:
        router = self.signal_router
        plans: dict[str, tuple[tuple[Any, ...], tuple[Any, ...]]] = {}
        for event in HOT_SIGNALS:
            try:
                group, _, params = router.get(event)
            except NoSignal:
                continue  # nobody listens: TouchUp removed its dispatch calls anyway
            params.pop("__trigger__", None)
            if params:
                continue  # a dynamic event: its parameters come from the router
            # SignalRouter._dispatch's choice for `condition=None, reverse=False`.
            group_signals = tuple(group.routes)
            signals = tuple(
                s
                for s in group_signals[::-1]
                if (s.ctx.exclusive is False or not s.extra.requirements)
                and (s.ctx.trigger or event == s.ctx.definition)
            )
            # (listeners to call, every signal of the group: a waiter on any of them may match)
            plans[event] = (signals, group_signals)
        self._hot_signals = plans

    def dispatch(
        self,
        event: str,
        *,
        condition: dict[str, str] | None = None,
        context: dict[str, Any] | None = None,
        fail_not_found: bool = True,
        inline: bool = False,
        reverse: bool = False,
    ) -> Any:
        if inline and condition is None and not reverse:
            plan = self._hot_signals.get(event)
            if plan is not None:
                for s in plan[1]:
                    if s.ctx.waiters:
                        break  # app.event() waits on this group: the router sets its result
                else:
                    return self._run_signals(plan[0], context or {})
        return super().dispatch(  # type: ignore[call-overload]
            event,
            condition=condition,
            context=context,
            fail_not_found=fail_not_found,
            inline=inline,
            reverse=reverse,
        )

    async def _run_signals(self, signals: tuple[Any, ...], context: dict[str, Any]) -> Any:
        try:
            for s in signals:
                result = s.handler(**context)
                if isawaitable(result):
                    result = await result
                if result:
                    return result
            return None
        except Exception as e:
            if self.debug and self.state.verbosity >= 1:
                error_logger.exception(e)
            await self.signal_router.dispatch("server.exception.report", context={"exception": e})
            e.__dispatched__ = True  # type: ignore[attr-defined]
            raise


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
        # Sanic says 413 for a request head over REQUEST_MAX_HEADER_SIZE; RFC 6585 says 431.
        err = RouterError("Request header fields too large")
        err.status, err.type, err.code = 431, "invalid_request_error", "header_too_large"
        return err
    if isinstance(exc, sx.PayloadTooLarge):
        return PayloadTooLarge()
    if isinstance(exc, sx.RequestCancelled):
        # The client went away: nobody reads this answer, but logs and metrics record 499.
        err = RouterError("Client closed the request")
        err.status, err.type, err.code = 499, "invalid_request_error", "client_closed_request"
        return err
    if isinstance(exc, sx.RequestTimeout):
        err = RouterError("Request timed out")
        err.status, err.type, err.code = 408, "invalid_request_error", "request_timeout"
        return err
    if isinstance(exc, sx.BadRequest | sx.HeaderNotFound | sx.InvalidHeader):
        return RouterBadRequest("Malformed request")
    if isinstance(exc, sx.ServiceUnavailable):
        return RouterUnavailable()
    return RouterError()


def error_response(request: Request, exc: BaseException) -> HTTPResponse:
    err = to_router_error(exc)
    state = getattr(request.ctx, "state", None)
    if state is not None and err.error_type is not None:
        state.error_type = err.error_type
    if err.status >= 500 and err.error_type is None:
        lifecycle.access_log.error(
            "router_error", exc_type=exc.__class__.__name__, route=request.path[:64]
        )
    anthropic = is_anthropic_route(request.path)
    headers = dict(err.headers)
    rid = getattr(request.ctx, "request_id", None)
    if rid:
        headers["X-Request-ID"] = rid
    return HTTPResponse(
        error_body(err, anthropic),
        status=err.status,
        headers=headers,
        content_type="application/json",
    )


def _register_secrets(cfg: LoadedConfig) -> None:
    """The profile's header and upstream query values never reach a log line."""
    for secret in cfg.profile.secret_values():
        redact(secret)


def create_app(settings: Settings) -> Sanic:
    configure_logging(settings.log_format, settings.log_level)
    redact(settings.default_api_key)
    app = RouterApp(APP_NAME, configure_logging=False)
    app.config.REQUEST_MAX_SIZE = settings.max_body_bytes
    # Upstream timeouts (per profile) bound a request; Sanic's own 60 s would cut long generations.
    app.config.RESPONSE_TIMEOUT = 24 * 3600
    # Client-side limits; the total head/body deadlines and the connection cap are enforced by
    # connlimits.GuardedHttpProtocol (the CLI serves with it), these by Sanic itself.
    app.config.REQUEST_TIMEOUT = settings.header_timeout_secs  # type: ignore[assignment]
    app.config.KEEP_ALIVE_TIMEOUT = settings.keep_alive_secs  # type: ignore[assignment]
    app.config.REQUEST_MAX_HEADER_SIZE = settings.max_header_bytes
    app.config.GRACEFUL_SHUTDOWN_TIMEOUT = settings.drain_secs
    app.config.ACCESS_LOG = False  # our own completion line replaces Sanic's access log
    app.config.MOTD = False
    app.config.NOISY_EXCEPTIONS = False
    app.config.FALLBACK_ERROR_FORMAT = "json"

    app.ctx.settings = settings
    app.ctx.config = ConfigHolder(load_file(settings.profile_path), on_load=_register_secrets)
    app.ctx.draining = False
    app.ctx.default_limit = Limit.per_minute(settings.rate_limit_rpm, settings.rate_limit_burst)
    app.ctx.limit_cache = (None, {})
    app.ctx.metrics = None

    def count_limiter_error() -> None:
        if app.ctx.metrics is not None:
            app.ctx.metrics.rate_limiter_backend_errors_total.inc()

    known_cache: list[Any] = [None, frozenset()]

    def known_models() -> frozenset[str]:
        cfg = app.ctx.config.current
        if known_cache[0] is not cfg:
            known_cache[0] = cfg
            known_cache[1] = frozenset(cfg.profile.advertised_models())
        return known_cache[1]

    app.ctx.known_models = known_models

    def refresh_gauges() -> None:
        if app.ctx.metrics is not None:
            app.ctx.metrics.rate_limiter_buckets.set(sum(app.ctx.limiter.active_buckets().values()))

    app.ctx.refresh_gauges = refresh_gauges

    connlimits.install(app)  # strict request heads, the body clock
    access.install(app, access.from_settings(settings))  # API_ROUTER_ACCESS_KEYS_FILE
    app.blueprint(ops_bp)
    app.blueprint(proxy_bp)
    app.error_handler.add(Exception, error_response)
    if settings.metrics_enabled or settings.access_log_enabled:
        lifecycle.install(app)
    else:
        # Without observability the request id is still chosen and returned.
        @app.on_request
        async def _rid(request: Request) -> None:
            lifecycle.start(request)

        @app.on_response
        async def _rid_out(request: Request, response: HTTPResponse) -> None:
            response.headers.setdefault("X-Request-ID", request.ctx.request_id)

    @app.before_server_start
    async def _open(app: Sanic) -> None:
        app.ctx.http = create_client(settings.upstream_max_connections)
        if settings.metrics_enabled:
            app.ctx.metrics = Metrics()
            app.ctx.config.on_result = app.ctx.metrics.on_reload
        # Per worker: a handle on the table the CLI shared between workers, or a Redis client.
        app.ctx.limiter = create_limiter(
            settings.rate_limit_backend,
            table=os.environ.get(SHARED_TABLE_ENV),
            fail_closed=settings.rate_limit_fail_closed,
            on_error=count_limiter_error,
        )
        app.ctx.watch_task = asyncio.get_running_loop().create_task(app.ctx.config.watch())

    @app.before_server_stop
    async def _drain(app: Sanic) -> None:
        app.ctx.draining = True

    shutdown.install(app)  # SIGTERM: stop accepting, close idle connections, drain, exit 0

    @app.after_server_stop
    async def _close(app: Sanic) -> None:
        app.ctx.watch_task.cancel()
        # gather() hands back the task's own CancelledError; a cancellation of *this* listener
        # still propagates.
        await asyncio.gather(app.ctx.watch_task, return_exceptions=True)
        await app.ctx.http.aclose()
        await app.ctx.limiter.close()
        worker_exited(os.getpid())

    return app
