"""`create_app(settings)`: the Sanic application, wired in one place.

What is wired, in order: the application class (`RouterApp`, or Sanic itself with the `dispatch`
fast path off: service.server.dispatch), Sanic's config keys, the typed per-worker context
(`app.ctx`: service.context), the client limits (service.connlimits), access keys
(service.access), the blueprints of the routes, the one error handler (service.error_handler),
the lifecycle signal listeners (service.observability.lifecycle), the per-worker resources
created in `before_server_start` and released in `after_server_stop`, and the graceful shutdown
(service.server.shutdown). Nothing here does I/O at import time.
"""

from __future__ import annotations

import asyncio
import gc
import os

import structlog
from sanic import Sanic
from sanic.config import Config

from . import access, connlimits, cors
from .config import ConfigError, ConfigHolder, LoadedConfig, lastgood, load_file
from .context import AppContext
from .error_handler import error_response
from .observability import lifecycle
from .observability.logging import configure_logging, redact, redact_profile_secrets
from .observability.metrics import Metrics, worker_exited
from .proxy.upstream import create_client
from .ratelimit import create_limiter
from .ratelimit.backends import REDIS_SCHEMES
from .ratelimit.shared import TABLE_ENV as SHARED_TABLE_ENV
from .ratelimit.tokens import TOKEN_TABLE_ENV, TokenLimiter, create_token_store
from .routes import ops_bp, proxy_bp
from .server import lifeline, response_head, shutdown
from .server.dispatch import app_class
from .settings import Settings

APP_NAME = "api_router"


def create_app(settings: Settings) -> Sanic[Config, AppContext]:
    lifeline.bind_to_primary()  # in a worker: it ends with the main process (SIGTERM)
    fast = settings.fast_paths  # API_ROUTER_FAST_PATHS, each applied where its module says
    configure_logging(settings.log_format, settings.log_level, fast=fast.logging)
    redact(settings.default_api_key)
    response_head.install(fast.head)
    try:
        initial, broken = load_file(settings.profile_path), None
    except ConfigError as e:
        # A worker started again while the file is broken: the instance's last good config
        # (service.config.lastgood); the file's error is reported at the first check.
        stored, broken = lastgood.load(), str(e)
        if stored is None:
            raise
        initial = stored
        structlog.get_logger("api_router").warning(
            "config_started_from_last_good", path=str(settings.profile_path), error=broken
        )

    def _loaded(cfg: LoadedConfig) -> None:
        redact_profile_secrets(cfg)
        lastgood.save(cfg)

    context = AppContext(
        settings,
        ConfigHolder(initial, on_load=_loaded),
        access.from_settings(settings),  # API_ROUTER_ACCESS_KEYS_FILE
    )
    if broken is not None:
        context.config.refused_at_start(broken)
    app: Sanic[Config, AppContext] = app_class(fast.dispatch)(
        APP_NAME, ctx=context, configure_logging=False
    )
    app.config.REQUEST_MAX_SIZE = settings.max_body_bytes
    # Upstream timeouts (per profile) bound a request; Sanic's own 60 s would cut long generations.
    app.config.RESPONSE_TIMEOUT = 24 * 3600
    # Client-side limits; the total head/body deadlines and the connection cap are enforced by
    # server.protocol.GuardedHttpProtocol (the CLI serves with it), these by Sanic itself.
    app.config.REQUEST_TIMEOUT = settings.header_timeout_secs  # type: ignore[assignment]
    app.config.KEEP_ALIVE_TIMEOUT = settings.keep_alive_secs  # type: ignore[assignment]
    app.config.REQUEST_MAX_HEADER_SIZE = settings.max_header_bytes
    app.config.GRACEFUL_SHUTDOWN_TIMEOUT = settings.drain_secs
    app.config.ACCESS_LOG = False  # our own completion line replaces Sanic's access log
    app.config.MOTD = False
    app.config.NOISY_EXCEPTIONS = False
    app.config.FALLBACK_ERROR_FORMAT = "json"

    connlimits.install(app)  # strict request heads, the body clock
    access.install(app, context.access)
    app.blueprint(ops_bp)
    app.blueprint(proxy_bp)
    cors.install(app, context.cors)  # API_ROUTER_CORS_ORIGINS: the preflight answers
    app.error_handler.add(Exception, error_response)
    if settings.metrics_enabled or settings.access_log_enabled or settings.tracing:
        lifecycle.install(app)
    else:
        lifecycle.install_request_id(app)

    @app.before_server_start
    async def _open(app: Sanic[Config, AppContext]) -> None:
        ctx = app.ctx
        if settings.gc_threshold:  # API_ROUTER_GC_THRESHOLD, per worker
            gc.set_threshold(settings.gc_threshold, *gc.get_threshold()[1:])
        c = app.config  # Sanic's proxy settings: is the client's address read from headers?
        ctx.client_ip_from_headers = bool(c.FORWARDED_SECRET or c.REAL_IP_HEADER or c.PROXIES_COUNT)
        ctx.http = create_client(settings.upstream_max_connections, fast_request=fast.request)
        if settings.tracing:  # imported only now: with tracing off OpenTelemetry never is
            from .observability.tracing import Tracing

            ctx.tracing = Tracing()
        if settings.metrics_enabled:
            ctx.metrics = Metrics(fast=fast.metrics)
            if ctx.tracing is not None:
                from .observability.exemplars import Exemplars

                ctx.exemplars = Exemplars(settings.multiproc_dir)
            ctx.config.on_result = ctx.metrics.on_reload
            if broken is not None:  # refused before the metrics were there
                ctx.metrics.on_reload("failure")
        # Per worker: a handle on the table the CLI shared between workers, or a Redis client.
        ctx.limiter = create_limiter(
            settings.rate_limit_backend,
            table=os.environ.get(SHARED_TABLE_ENV),
            fail_closed=settings.rate_limit_fail_closed,
            on_error=ctx.count_limiter_error,
        )
        # Token limits (SPEC §13): the same backend, its own table or keys.
        token_store, token_backend = create_token_store(
            settings.rate_limit_backend, os.environ.get(TOKEN_TABLE_ENV)
        )
        ctx.tokens = TokenLimiter(
            token_store,
            backend=token_backend,
            fail_closed=settings.rate_limit_fail_closed,
            on_error=ctx.count_limiter_error,
        )
        ctx.tokens.metrics = ctx.metrics
        ctx.watch_task = asyncio.get_running_loop().create_task(ctx.config.watch())
        backend = settings.rate_limit_backend or ""
        if backend.startswith(REDIS_SCHEMES):  # a routing file's waits, shared by the replicas
            from .ejection_redis import RedisShare

            share = RedisShare(backend, ctx.ejections)
            ctx.ejection_share = share
            ctx.ejection_task = asyncio.get_running_loop().create_task(
                share.run(ctx.routed_upstreams)
            )

    shutdown.install(app)  # SIGTERM: stop accepting, close idle connections, drain, exit 0

    @app.after_server_stop
    async def _close(app: Sanic[Config, AppContext]) -> None:
        ctx = app.ctx
        try:
            if ctx.completions is not None:  # the last pass's records, while all is still open
                ctx.completions.close()
        finally:
            await _release(ctx)

    async def _release(ctx: AppContext) -> None:
        ctx.watch_task.cancel()
        # gather() hands back the task's own CancelledError; a cancellation of *this* listener
        # still propagates.
        await asyncio.gather(ctx.watch_task, return_exceptions=True)
        await ctx.http.aclose()
        await ctx.limiter.close()
        await ctx.tokens.close()
        if ctx.tracing is not None:
            ctx.tracing.shutdown()
        if ctx.exemplars is not None:
            ctx.exemplars.close()
        if ctx.ejection_task is not None:
            ctx.ejection_task.cancel()
            await asyncio.gather(ctx.ejection_task, return_exceptions=True)
        if ctx.ejection_share is not None:
            await ctx.ejection_share.close()
        worker_exited(os.getpid())

    return app
