"""`AppContext`: the application's per-worker state, `app.ctx`, typed.

Sanic's guide keeps per-worker state on `app.ctx`; this class says what is there. `create_app`
builds it from the settings and the loaded profile; the per-worker resources (the upstream
client, the limiter handle, metrics, the config watcher) are set by its `before_server_start`
listener and released by `after_server_stop`; `draining` and `connections` belong to
service.server.shutdown, `failure_alarm` to service.observability.lifecycle. Code that reads it
takes a `RouterRequest` (Sanic's way of typing a custom context: `request.app.ctx` is then an
`AppContext` for the type checker).
"""

from __future__ import annotations

import asyncio
import os
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

from sanic import Request, Sanic
from sanic.config import Config

from .access import AccessKeys
from .config import ConfigHolder
from .config.model import TokenBudgets, TokenLimit
from .cors import Cors
from .ejection import EJECTION_TABLE_ENV, Ejections
from .ratelimit import Limit, Limiter
from .ratelimit.tokens import TokenLimiter
from .settings import Settings

if TYPE_CHECKING:  # prometheus-client is imported only once the CLI set its directory
    from .observability.alerts import FailureAlarm
    from .observability.completions import Completions
    from .observability.exemplars import Exemplars
    from .observability.metrics import Metrics
    from .observability.tracing import Tracing
    from .proxy.upstream import UpstreamClient


class AppContext:
    """Everything a worker of the router keeps between requests."""

    __slots__ = (
        "access",
        "client_ip_from_headers",
        "completions",
        "config",
        "connections",
        "cors",
        "default_limit",
        "draining",
        "ejection_share",
        "ejection_task",
        "ejections",
        "exemplars",
        "failure_alarm",
        "http",
        "limiter",
        "metrics",
        "send_hooked",
        "settings",
        "token_defaults",
        "tokens",
        "tracing",
        "watch_task",
    )

    # Per worker, from `before_server_start` to `after_server_stop` (unset before).
    http: UpstreamClient
    limiter: Limiter
    tokens: TokenLimiter
    watch_task: asyncio.Task[None]

    def __init__(self, settings: Settings, config: ConfigHolder, access: AccessKeys | None):
        self.settings = settings
        self.config = config
        # An `http.lifecycle.send` signal handler is registered (service.server.stream_write
        # finds out on the first stream): None until then.
        self.send_hooked: bool | None = None
        # Shared deployments: the accepted client keys (service.access); None: an open router.
        self.access = access
        # Browser clients (API_ROUTER_CORS_ORIGINS): None when off.
        self.cors = Cors(settings.cors_origins) if settings.cors_origins else None
        # The environment's rate limit, for routes whose profile sets none (LoadedConfig.limit).
        self.default_limit = Limit.per_minute(settings.rate_limit_rpm, settings.rate_limit_burst)
        # The environment's token limit and budgets, for routes whose config sets none.
        self.token_defaults = token_defaults(settings)
        # Whether Sanic trusts forwarding headers (its proxy settings), read at start.
        self.client_ip_from_headers = False
        self.metrics: Metrics | None = None  # per worker, when API_ROUTER_METRICS is on
        self.failure_alarm: FailureAlarm | None = None
        # The `batch` fast path: finished requests' records waiting for the end of the loop
        # pass (service.observability.completions); None: each written in its own `finish`.
        self.completions: Completions | None = None
        # service.server.shutdown: the worker is stopping; this worker's open connections.
        self.draining = False
        self.connections: set[Any] | None = None
        # A routing file's ejections and cooldowns: the table the CLI shares between the
        # workers, else one of this process (service.ejection).
        self.ejections = Ejections(os.environ.get(EJECTION_TABLE_ENV))
        # With Redis: the link that shares them across replicas (service.ejection_redis).
        self.ejection_share: Any = None
        self.ejection_task: asyncio.Task[None] | None = None
        # OpenTelemetry (API_ROUTER_TRACING): per worker, None when off (never imported then).
        self.tracing: Tracing | None = None
        # With tracing and metrics: the latency histograms' exemplars, shared by the workers.
        self.exemplars: Exemplars | None = None

    def count_limiter_error(self) -> None:
        """A rate-limit decision the backend could not make (the limiter's `on_error`)."""
        if self.metrics is not None:
            self.metrics.rate_limiter_backend_errors_total.inc()

    def routed_upstreams(self) -> list[str]:
        """The upstream names of the active routing file (none under a plain profile)."""
        routing = self.config.current.routing
        return list(routing.upstreams) if routing is not None else []

    def refresh_gauges(self) -> None:
        """Gauges read from elsewhere, set just before a scrape."""
        if self.metrics is not None:
            self.metrics.rate_limiter_buckets.set(sum(self.limiter.active_buckets().values()))
            routing = self.config.current.routing
            if routing is not None:
                for name in routing.upstreams:
                    self.metrics.upstream_ejected.labels(name).set(
                        1 if self.ejections.ejected(name) else 0
                    )


def token_defaults(settings: Settings) -> tuple[TokenLimit | None, TokenBudgets | None]:
    """TOKEN_LIMIT_* / TOKEN_BUDGET_* as the config objects they stand in for."""
    limit = (
        TokenLimit(
            tokens_per_minute=settings.token_limit_tpm,
            burst=settings.token_limit_burst or None,
            enforce=settings.token_limit_enforce,
        )
        if settings.token_limit_tpm > 0
        else None
    )
    daily, monthly = settings.token_budget_daily, settings.token_budget_monthly
    budgets = (
        TokenBudgets(
            daily=daily or None, monthly=monthly or None, enforce=settings.token_limit_enforce
        )
        if daily or monthly
        else None
    )
    return limit, budgets


# The application and its requests, typed with this context (what `create_app` builds).
RouterSanic = Sanic[Config, AppContext]
RouterRequest = Request[RouterSanic, SimpleNamespace]
