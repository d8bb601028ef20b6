"""Buckets in Redis (`RATE_LIMIT_BACKEND=redis://…`): one limit shared by every replica.

Each decision is one atomic Lua script (EVALSHA, EVAL when the server has not cached it yet)
that reads the bucket hash, refills it by Redis's own clock (`TIME`, so replicas with skewed
clocks still agree), takes a token or refuses, writes it back and sets the key to expire when
the bucket would be full again: a bucket that refilled is forgotten by Redis itself.

Keys are `api-router:rl:<route>:<key_id>`; key_id is already a hash of the credential. The
health check (`/ready`) runs the same script on `api-router:health:rl`.
Connection and socket timeouts are short and a timeout is never retried (a closed connection is,
once, at once: `client`): a Redis that cannot answer
quickly is reported to the caller (`guard.Guarded` decides between fail-open and 503), and for
`BACKOFF_SECS` afterwards decisions fail at once instead of each waiting for a timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Sequence
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from .bucket import Decision, Limit, Meter, decision

PREFIX = "api-router:rl:"
# The health check's bucket: outside PREFIX, so that no count of live buckets sees it.
HEALTH_KEY = "api-router:health:rl"
BACKOFF_SECS = 1.0
COUNT_EVERY_SECS = 0.5

# KEYS[1] bucket; ARGV rate (tokens/s), burst. Returns {allowed 0|1, tokens after (string)}.
SCRIPT = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local b = redis.call('HMGET', KEYS[1], 'tokens', 'last')
local tokens = tonumber(b[1])
local last = tonumber(b[2])
if tokens == nil or last == nil then
  tokens = burst
  last = now
end
local elapsed = now - last
if elapsed < 0 then elapsed = 0 end
tokens = math.min(burst, tokens + elapsed * rate)
if tokens < 1 then
  return {0, string.format('%.17g', tokens)}
end
tokens = tokens - 1
redis.call('HSET', KEYS[1], 'tokens', string.format('%.17g', tokens),
           'last', string.format('%.17g', now))
redis.call('PEXPIRE', KEYS[1], math.max(1, math.ceil((burst - tokens) / rate * 1000)))
return {1, string.format('%.17g', tokens)}
"""


class BackendDown(RuntimeError):
    """Redis did not answer recently; not tried again until the back-off ends."""


def passwords_of(url: str) -> list[str]:
    """Every form a Redis URL's password can take in a message: as written in the URL, decoded
    (`%21` -> `!`), and given as a `password=` query value (redis-py reads that too)."""
    try:
        parts = urlsplit(url)
        found = [parts.password or ""]
        found += [v for k, v in parse_qsl(parts.query, keep_blank_values=True) if k == "password"]
    except ValueError:
        return []
    return [p for s in found if s for p in dict.fromkeys((s, unquote(s)))]


def client(url: str, timeout: float = 0.5) -> Any:
    """An asyncio Redis client with short timeouts (see the module docstring), and one retry, at
    once, of a command whose connection failed, never of one that timed out: after Redis
    restarts, every pooled connection is closed, and each worker's first decision on one failed
    (then a second of fail-open, or of 503s when fail-closed, with Redis up)."""
    import redis.asyncio as aioredis
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff
    from redis.exceptions import ConnectionError as RedisConnectionError

    return aioredis.Redis.from_url(
        url,
        socket_connect_timeout=timeout,
        socket_timeout=timeout,
        retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
        decode_responses=False,
    )


class RedisLimiter:
    def __init__(self, url: str, *, timeout: float = 0.5, prefix: str = PREFIX) -> None:
        self._client: Any = client(url, timeout)
        self._script = self._client.register_script(SCRIPT)
        self._prefix = prefix
        self._down_until = 0.0
        self._counts: dict[str, int] = {}
        self._counted_at = 0.0
        self._count_task: asyncio.Task[None] | None = None

    def key(self, key: str, route: str) -> str:
        return f"{self._prefix}{route}:{key}"

    async def acquire(self, key: str, route: str, limit: Limit) -> Decision:
        if time.monotonic() < self._down_until:
            raise BackendDown("redis unavailable")
        try:
            allowed, tokens = await self._script(
                keys=[self.key(key, route)], args=[repr(limit.rate), limit.burst]
            )
        except Exception:
            self._down_until = time.monotonic() + BACKOFF_SECS
            raise
        return decision(bool(allowed), float(tokens), limit)

    async def count(self) -> dict[str, int]:
        """Live buckets per route: the keys that have not expired (SCAN, never KEYS)."""
        out: dict[str, int] = {}
        plen = len(self._prefix)
        async for raw in self._client.scan_iter(match=self._prefix + "*", count=1000):
            route = raw.decode()[plen:].rpartition(":")[0]
            out[route] = out.get(route, 0) + 1
        return out

    async def _recount(self) -> None:
        try:
            self._counts = await self.count()
        except Exception:  # reported by acquire/healthy; a count is best effort
            self._down_until = time.monotonic() + BACKOFF_SECS
        finally:
            self._counted_at = time.monotonic()

    def active_buckets(self) -> dict[str, int]:
        """The last count; a new one is started when it is older than COUNT_EVERY_SECS (the
        Limiter protocol is synchronous, a Redis count is not)."""
        stale = time.monotonic() - self._counted_at > COUNT_EVERY_SECS
        if stale and (self._count_task is None or self._count_task.done()):
            with contextlib.suppress(RuntimeError):  # no running loop: keep the last count
                self._count_task = asyncio.get_running_loop().create_task(self._recount())
        return dict(self._counts)

    async def healthy(self) -> bool:
        """Whether Redis takes decisions: the decision script on a bucket of its own (a write,
        as every decision is; it expires within a millisecond). A PING alone answers on a
        read-only replica (after a failover, the URL still naming the old primary) and on a
        Redis out of memory, where every decision fails."""
        try:
            # a bucket that always has a token: every check writes (an empty one would not)
            await self._script(keys=[HEALTH_KEY], args=["1000", 1000])
        except Exception:
            self._down_until = time.monotonic() + BACKOFF_SECS
            return False
        self._down_until = 0.0
        return True

    async def close(self) -> None:
        if self._count_task is not None and not self._count_task.done():
            self._count_task.cancel()
            await asyncio.gather(self._count_task, return_exceptions=True)
        await self._client.aclose()


# -- token meters (service.ratelimit.tokens): the same maths as reserve_levels / settle_levels --

TOKEN_PREFIX = "api-router:tk:"

# Shared by both scripts: Redis's clock, and a meter's level now (stored: absent is nil) and the
# write of a bucket's level (with its expiry when it would be full again).
_TOKEN_COMMON = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local function level_of(key, cap, rate)
  local b = redis.call('HMGET', key, 'tokens', 'last')
  local level = tonumber(b[1])
  if level == nil then return nil end
  if rate > 0 then
    local el = now - tonumber(b[2])
    if el < 0 then el = 0 end
    level = math.min(cap, level + el * rate)
  end
  return level
end
local function put_bucket(key, cap, rate, level)
  redis.call('HSET', key, 'tokens', string.format('%.17g', level),
             'last', string.format('%.17g', now))
  redis.call('PEXPIRE', key, math.max(1, math.ceil((cap - level) / rate * 1000)))
end
"""

# KEYS: one hash per meter. ARGV[1]: tokens to take; then per meter: cap, rate (0: a budget),
# the budget's time to live in ms. Returns {0, level…} after taking on every meter, or
# {i, level…} (levels now, nothing taken) when meter i (1-based) cannot take it.
TOKEN_RESERVE = (
    _TOKEN_COMMON
    + """
local amount = tonumber(ARGV[1])
local levels = {}
local fresh = {}
local refused = 0
for i = 1, #KEYS do
  local a = 2 + (i - 1) * 3
  local cap, rate = tonumber(ARGV[a]), tonumber(ARGV[a + 1])
  local level = level_of(KEYS[i], cap, rate)
  fresh[i] = level == nil
  if rate > 0 then
    if level == nil then level = cap end
    if refused == 0 and level + 1e-9 < amount then refused = i end
  else
    if level == nil then level = 0 end
    if refused == 0 and level + amount > cap + 1e-9 then refused = i end
  end
  levels[i] = level
end
local out = {refused}
for i = 1, #KEYS do
  local a = 2 + (i - 1) * 3
  local cap, rate, ttl = tonumber(ARGV[a]), tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2])
  local level = levels[i]
  if refused == 0 then
    if rate > 0 then
      level = level - amount
      put_bucket(KEYS[i], cap, rate, level)
    else
      level = level + amount
      redis.call('HSET', KEYS[i], 'tokens', string.format('%.17g', level))
      if fresh[i] then redis.call('PEXPIRE', KEYS[i], math.max(1, ttl)) end
    end
  end
  out[i + 1] = string.format('%.17g', level)
end
return out
"""
)

# ARGV[1]: tokens to give back (negative: to take); then per meter like TOKEN_RESERVE. A bucket
# that is gone was full; a budget that is gone is refunded nothing (its period ended) and takes an
# overrun as its first use (the caller passes the period now current for an overrun). A budget
# given back to zero is deleted, as a full bucket is: keys refused upstream (a made-up key's
# 401, refunded whole) kept one key each until their month ended.
TOKEN_SETTLE = (
    _TOKEN_COMMON
    + """
local delta = tonumber(ARGV[1])
for i = 1, #KEYS do
  local a = 2 + (i - 1) * 3
  local cap, rate = tonumber(ARGV[a]), tonumber(ARGV[a + 1])
  local level = level_of(KEYS[i], cap, rate)
  if rate > 0 then
    level = math.min(cap, (level or cap) + delta)
    if level >= cap then
      redis.call('DEL', KEYS[i])
    else
      put_bucket(KEYS[i], cap, rate, level)
    end
  elseif level ~= nil then
    level = math.max(0, level - delta)
    if level <= 0 then  -- unused in its period again: as if never made (bounded keys)
      redis.call('DEL', KEYS[i])
    else
      redis.call('HSET', KEYS[i], 'tokens', string.format('%.17g', level))
    end
  elseif delta < 0 then  -- an overrun is the first use of a period (one that began meanwhile)
    redis.call('HSET', KEYS[i], 'tokens', string.format('%.17g', -delta))
    redis.call('PEXPIRE', KEYS[i], math.max(1, tonumber(ARGV[a + 2])))
  end
end
return 1
"""
)


class RedisTokens:
    """Token meters in Redis, shared by every replica (one script per reservation or
    settlement, Redis's clock); backs off like RedisLimiter after a failure."""

    def __init__(self, url: str, *, timeout: float = 0.5, prefix: str = TOKEN_PREFIX) -> None:
        self._client: Any = client(url, timeout)
        self._reserve = self._client.register_script(TOKEN_RESERVE)
        self._settle = self._client.register_script(TOKEN_SETTLE)
        self._prefix = prefix
        self._down_until = 0.0

    def _call(self, meters: Sequence[Meter], n: int) -> tuple[list[str], list[Any]]:
        keys = [f"{self._prefix}{m.scope}:{m.key}" for m in meters]
        args: list[Any] = [n]
        for m in meters:
            args += [m.cap, repr(m.rate), max(1, math.ceil(m.ttl * 1000))]
        return keys, args

    async def _run(self, script: Any, meters: Sequence[Meter], n: int) -> Any:
        if time.monotonic() < self._down_until:
            raise BackendDown("redis unavailable")
        keys, args = self._call(meters, n)
        try:
            return await script(keys=keys, args=args)
        except Exception:
            self._down_until = time.monotonic() + BACKOFF_SECS
            raise

    async def reserve(self, meters: Sequence[Meter], amount: int) -> tuple[int, list[float]]:
        out = await self._run(self._reserve, meters, amount)
        return int(out[0]) - 1, [float(v) for v in out[1:]]

    async def settle(self, meters: Sequence[Meter], delta: int) -> None:
        await self._run(self._settle, meters, delta)

    async def close(self) -> None:
        await self._client.aclose()
