"""Choosing and guarding the bucket store.

- `LocalLimiter`: one process's memory; exact only for a single process (tests, embedding).
- `shared.SharedLimiter`: the default under the CLI, one table in shared memory for all workers.
- `redis_backend.RedisLimiter`: `RATE_LIMIT_BACKEND=redis://…`, shared by every replica.

`Guarded` wraps whichever is chosen: when the store cannot decide (Redis unreachable, table
full) the request is let through (fail open: logged, counted in
`rate_limiter_backend_errors_total`) or refused with 503 when `RATE_LIMIT_FAIL_CLOSED=true`.
Buckets that are full again are forgotten by every store, so memory stays bounded.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Protocol
from urllib.parse import urlsplit

import structlog

from ..errors import ServiceUnavailable
from .bucket import LOG_EVERY_SECS, REDIS_SCHEMES, Decision, Limit, full_at, take
from .throttle import LogThrottle

log = structlog.get_logger("api_router.ratelimit")

EMBEDDED = ("", "memory", "embedded")
__all__ = ["LOG_EVERY_SECS", "REDIS_SCHEMES", "Guarded", "LocalLimiter", "create_limiter"]


class Limiter(Protocol):
    async def acquire(self, key: str, route: str, limit: Limit) -> Decision: ...

    def active_buckets(self) -> dict[str, int]: ...

    async def healthy(self) -> bool: ...

    async def close(self) -> None: ...


class LocalLimiter:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._buckets: dict[tuple[str, str], tuple[float, float, float]] = {}
        self._now = clock

    async def acquire(self, key: str, route: str, limit: Limit) -> Decision:
        now = self._now()
        k = (key, route)
        tokens, last, _ = self._buckets.get(k, (float(limit.burst), now, now))
        tokens, decision = take(tokens, last, now, limit)
        self._buckets[k] = (tokens, now, full_at(tokens, now, limit))
        return decision

    def sweep(self) -> None:
        now = self._now()
        for k in [k for k, (_, _, full) in self._buckets.items() if full <= now]:
            del self._buckets[k]

    def active_buckets(self) -> dict[str, int]:
        self.sweep()
        out: dict[str, int] = {}
        for _, route in self._buckets:
            out[route] = out.get(route, 0) + 1
        return out

    async def healthy(self) -> bool:
        return True

    async def close(self) -> None:
        self._buckets.clear()


class Guarded:
    """Fail-open / fail-closed policy around a store (see the module docstring)."""

    def __init__(
        self,
        inner: Limiter,
        *,
        backend: str,
        fail_closed: bool = False,
        on_error: Callable[[], None] | None = None,
    ) -> None:
        self.inner = inner
        self._backend = backend  # "shared", "redis", "local": never the URL
        self._fail_closed = fail_closed
        self._on_error = on_error
        self._log = LogThrottle()
        # A store that decides without I/O (the shared table) is called directly: one
        # coroutine per decision fewer.
        self._sync: Callable[[str, str, Limit], Decision] | None = getattr(
            inner, "acquire_sync", None
        )

    async def acquire(self, key: str, route: str, limit: Limit) -> Decision:
        try:
            if self._sync is not None:
                return self._sync(key, route, limit)
            return await self.inner.acquire(key, route, limit)
        except Exception as e:  # whatever the store raised, the request must get an answer
            self._failed(e, route)
            if self._fail_closed:
                raise ServiceUnavailable() from None
            return Decision.unchecked(limit)

    def _failed(self, exc: Exception, route: str) -> None:
        if self._on_error is not None:
            self._on_error()
        suppressed = self._log.due()
        if suppressed is None:
            return
        # The exception's class only: its text may name hosts or carry connection details.
        log.error(
            "rate_limiter_backend_error",
            backend=self._backend,
            error=exc.__class__.__name__,
            route=route,
            action="refused" if self._fail_closed else "allowed",
            suppressed=suppressed,
        )

    def active_buckets(self) -> dict[str, int]:
        return self.inner.active_buckets()

    async def healthy(self) -> bool:
        return await self.inner.healthy()

    async def close(self) -> None:
        await self.inner.close()


def check_backend(backend: str | None) -> None:
    """Raise ValueError (one line, no secret) unless `backend` names a known store."""
    b = (backend or "").strip()
    if b.lower() in EMBEDDED:
        return
    if b.startswith(REDIS_SCHEMES):
        try:
            urlsplit(b).port  # noqa: B018 (parses the port: a bad one fails every worker)
        except ValueError:
            raise ValueError("RATE_LIMIT_BACKEND: the URL's port is not a number") from None
        from .redis_backend import client

        try:  # the client reads the URL's options (no connection yet): a bad one failed workers
            options = client(b).connection_pool.connection_kwargs
        except (ValueError, TypeError) as e:  # "Invalid value for 'db' in connection URL."
            raise ValueError(f"RATE_LIMIT_BACKEND: {e}") from None
        # taken at construction, refused at each connect: every decision would fail, for good
        if str(options.get("protocol", 2)) not in ("2", "3"):
            raise ValueError("RATE_LIMIT_BACKEND: the URL's protocol must be 2 or 3")
        return
    raise ValueError(
        "RATE_LIMIT_BACKEND must be empty/'memory' (shared memory) or a redis://, rediss:// "
        "or unix:// URL"
    )


def create_limiter(
    backend: str | None,
    *,
    table: str | None = None,
    fail_closed: bool = False,
    on_error: Callable[[], None] | None = None,
) -> Limiter:
    """The store for this worker: Redis when `backend` is a Redis URL, else the shared table
    the CLI created (`table`), else this process's memory."""
    check_backend(backend)
    b = (backend or "").strip()
    inner: Limiter
    if b.startswith(REDIS_SCHEMES):
        from ..observability.logging import redact
        from .redis_backend import RedisLimiter, passwords_of

        for password in passwords_of(b):
            redact(password)
        inner, name = RedisLimiter(b), "redis"
    elif table:
        from .shared import SharedLimiter

        inner, name = SharedLimiter(table), "shared"
    else:
        inner, name = LocalLimiter(), "local"
    return Guarded(inner, backend=name, fail_closed=fail_closed, on_error=on_error)
