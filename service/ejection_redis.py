"""Ejections and cooldowns shared across replicas through Redis (`RATE_LIMIT_BACKEND=redis://…`).

Each instance decides on its own (service.ejection, its workers share one table); what one
decides is published, and the others adopt it:

- when an instance ejects an upstream or an upstream asks it to cool down, a small Lua script
  records the end of that wait in Redis as `max(what is there, Redis's TIME + seconds)` (so a
  longer wait extends, a shorter one never shortens, and replicas with skewed clocks agree);
- every `SYNC_SECS` each worker reads the waits of the routing file's upstreams (their remaining
  seconds by Redis's clock) and adopts the longer of its own and the published one.

So a primary that one replica ejected is skipped by the others within `SYNC_SECS`. Probes stay
per instance: when the wait is over, each instance lets one request try the upstream; a success
restores it there and clears the published ejection (the others keep the wait they adopted).
Keys (`api-router:ej:<upstream>`) expire with the wait. Redis errors are logged and otherwise
ignored (best effort: each instance still ejects on what it sees): one line per worker per
`LOG_EVERY_SECS` at most, with the number of failures left unlogged (`suppressed`), as the
limiter's own (a Redis down made two lines a second per worker, idle or not).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterable
from typing import Any

import structlog

from .ejection import Ejections
from .ratelimit.throttle import LogThrottle

PREFIX = "api-router:ej:"
SYNC_SECS = 0.5
log = structlog.get_logger("api_router.ejection")

# KEYS[1]; ARGV field ('ejected' or 'cooled'), seconds. The end, by Redis's clock, kept longest.
# ARGV[1] 'restored': a probe succeeded, the ejection is forgotten (a cooldown stays).
PUBLISH = """
if ARGV[1] == 'restored' then
  redis.call('HDEL', KEYS[1], 'ejected')
  return 1
end
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local want = now + tonumber(ARGV[2])
local have = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0')
if want > have then
  redis.call('HSET', KEYS[1], ARGV[1], string.format('%.17g', want))
end
local ej = tonumber(redis.call('HGET', KEYS[1], 'ejected') or '0')
local co = tonumber(redis.call('HGET', KEYS[1], 'cooled') or '0')
redis.call('PEXPIREAT', KEYS[1], math.ceil(math.max(ej, co) * 1000) + 1000)
return 1
"""
# KEYS: one per upstream. Returns, per key, {ejected remaining, cooled remaining} (strings).
READ = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local out = {}
for i, k in ipairs(KEYS) do
  local v = redis.call('HMGET', k, 'ejected', 'cooled')
  local ej = tonumber(v[1] or '0') - now
  local co = tonumber(v[2] or '0') - now
  out[i] = {string.format('%.17g', ej), string.format('%.17g', co)}
end
return out
"""


class RedisShare:
    """One worker's link between its ejection table and Redis."""

    def __init__(self, url: str, ejections: Ejections, timeout: float = 0.5) -> None:
        from .ratelimit.redis_backend import client

        self._client: Any = client(url, timeout)
        self._publish = self._client.register_script(PUBLISH)
        self._read = self._client.register_script(READ)
        self.ejections = ejections
        self._tasks: set[asyncio.Task[None]] = set()
        self._log = LogThrottle()
        ejections.on_wait = self.publish_soon

    def publish_soon(self, name: str, kind: str, secs: float) -> None:
        """Called by the table when this instance ejects or cools `name` (never blocks)."""
        with contextlib.suppress(RuntimeError):  # no running loop: nothing to share with
            task = asyncio.get_running_loop().create_task(self._send(name, kind, secs))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _send(self, name: str, kind: str, secs: float) -> None:
        try:
            await self._publish(keys=[PREFIX + name], args=[kind, repr(secs)])
        except Exception as e:  # best effort
            self._failed(e, "publish")

    def _failed(self, exc: Exception, step: str) -> None:
        suppressed = self._log.due()
        if suppressed is not None:
            log.warning(
                "ejection_share_failed", error=type(exc).__name__, step=step, suppressed=suppressed
            )

    async def pull(self, names: Iterable[str]) -> None:
        names = list(names)
        if not names:
            return
        rows = await self._read(keys=[PREFIX + n for n in names])
        for name, (ejected, cooled) in zip(names, rows, strict=True):
            self.ejections.adopt(name, float(ejected), float(cooled))

    async def run(self, names: Callable[[], Iterable[str]]) -> None:
        while True:
            await asyncio.sleep(SYNC_SECS)
            try:
                await self.pull(names())
            except Exception as e:  # best effort; tried again at the next tick
                self._failed(e, "read")

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._client.aclose()
