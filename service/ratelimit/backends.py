"""Bucket stores. `LocalLimiter`: one process's memory (exact for a single worker).

Buckets that are full again are dropped by a periodic sweep, so memory stays bounded by the
number of keys active within one refill period.
"""

from __future__ import annotations

import time
from typing import Protocol

from .bucket import Decision, Limit, full_at, take


class Limiter(Protocol):
    async def acquire(self, key: str, route: str, limit: Limit) -> Decision: ...

    def active_buckets(self) -> dict[str, int]: ...

    async def healthy(self) -> bool: ...

    async def close(self) -> None: ...


class LocalLimiter:
    def __init__(self) -> None:
        self._buckets: dict[tuple[str, str], tuple[float, float, float]] = {}
        self._now = time.monotonic

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


def create_limiter(backend: str | None) -> Limiter:
    return LocalLimiter()
