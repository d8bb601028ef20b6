"""Token-bucket maths, pure: no clock, no I/O, no locks (the backends bring those).

A bucket holds at most `burst` tokens, starts full, and refills continuously at `rate` tokens per
second. A request takes one token or is refused; a refused request is told how long until one
token exists (`Retry-After`, whole seconds rounded up, at least 1). Every backend turns its
stored state into a `Decision` through `decision()`, so the headers mean the same everywhere.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

# Backend URLs that mean Redis (RATE_LIMIT_BACKEND), and how often a failing store is logged.
REDIS_SCHEMES = ("redis://", "rediss://", "unix://")
LOG_EVERY_SECS = 5.0

# Float noise (e.g. 0.1 * 30 = 3.0000000000000004) must not turn an exact wait of 3 s into 4 s.
_EPS = 1e-9


@dataclass(frozen=True, slots=True)
class Limit:
    rate: float  # tokens per second (requestsPerMinute / 60); > 0
    burst: int  # capacity, >= 1

    @classmethod
    def per_minute(cls, requests_per_minute: float, burst: int | None) -> Limit | None:
        """None means unlimited (requestsPerMinute 0 or absent)."""
        if requests_per_minute <= 0:
            return None
        return cls(
            rate=requests_per_minute / 60.0,
            burst=max(1, burst if burst is not None else math.ceil(requests_per_minute)),
        )


# Not frozen: a frozen dataclass sets each field through object.__setattr__, and one Decision
# is built per request (bench/README, "Rate limiting"). Nothing mutates one after it is made.
@dataclass(slots=True)
class Decision:
    allowed: bool
    limit: int  # the burst: the most requests that can pass at once
    remaining: int  # whole tokens left after this decision
    reset_secs: float  # until the bucket is full again
    retry_after: int  # whole seconds until one token exists; 0 when allowed
    checked: bool = True  # False: the backend could not decide and the request was let through

    @classmethod
    def unchecked(cls, limit: Limit) -> Decision:
        """Fail-open: allowed without a bucket; only the configured limit is known."""
        return cls(True, limit.burst, 0, 0.0, 0, checked=False)

    def headers(self) -> dict[str, str]:
        if not self.checked:
            return {"X-RateLimit-Limit": str(self.limit)}
        h = {
            "X-RateLimit-Limit": str(self.limit),
            "X-RateLimit-Remaining": str(self.remaining),
            "X-RateLimit-Reset": str(math.ceil(self.reset_secs - _EPS)),
        }
        if not self.allowed:
            h["Retry-After"] = str(self.retry_after)
        return h


def refill(tokens: float, last: float, now: float, limit: Limit) -> float:
    """Tokens available at `now` for a bucket that held `tokens` at `last`."""
    elapsed = max(0.0, now - last)
    return min(float(limit.burst), tokens + elapsed * limit.rate)


def decision(allowed: bool, tokens: float, limit: Limit) -> Decision:
    """The decision for a bucket that holds `tokens` right after taking (or refusing) one."""
    reset = max(0.0, (limit.burst - tokens) / limit.rate)
    if allowed:
        return Decision(True, limit.burst, int(tokens), reset, 0)
    wait = (1.0 - tokens) / limit.rate
    return Decision(False, limit.burst, 0, reset, max(1, math.ceil(wait - _EPS)))


def take_token(tokens: float, last: float, now: float, limit: Limit) -> tuple[float, bool]:
    """Try to take one token: the new token count (as of `now`) and whether one was taken.
    All a store must do while it holds its lock; `decision()` can follow outside it."""
    available = refill(tokens, last, now, limit)
    if available >= 1.0:
        return available - 1.0, True
    return available, False


def take(tokens: float, last: float, now: float, limit: Limit) -> tuple[float, Decision]:
    """Try to take one token. Returns the new token count (as of `now`) and the decision."""
    tokens, allowed = take_token(tokens, last, now, limit)
    return tokens, decision(allowed, tokens, limit)


def full_at(tokens: float, last: float, limit: Limit) -> float:
    """When the bucket is full again (after which it can be forgotten)."""
    return last + (limit.burst - tokens) / limit.rate


# -- token meters (service.ratelimit.tokens) -------------------------------------------------


@dataclass(frozen=True, slots=True)
class Meter:
    scope: str  # MINUTE, DAILY or MONTHLY
    key: str  # the store's key: client key id + the bucket's route or period
    cap: int  # the bucket's size, or the period's budget
    rate: float  # refill per second (a bucket); 0 for a budget
    ttl: float  # a budget: seconds until its period ends (and it is forgotten); 0 for a bucket
    enforce: bool

    def level(self, stored: tuple[float, float] | None, now: float) -> float:
        """A bucket's tokens at `now` (absent = full), or a budget's tokens used (absent = 0)."""
        if self.rate > 0:
            if stored is None:
                return float(self.cap)
            tokens, last = stored
            return min(float(self.cap), tokens + max(0.0, now - last) * self.rate)
        return 0.0 if stored is None else stored[0]

    def fits(self, level: float, amount: int) -> bool:
        if self.rate > 0:
            return level + _EPS >= amount
        return level + amount <= self.cap + _EPS

    def wait(self, level: float, amount: int) -> float:
        """Seconds until `amount` fits (a budget: until its period ends)."""
        if self.rate > 0:
            return max(0.0, (amount - level) / self.rate)
        return self.ttl

    def remaining(self, level: float) -> int:
        return max(0, math.floor((level if self.rate > 0 else self.cap - level) + _EPS))

    def reset_secs(self, level: float) -> float:
        """Seconds until the bucket is full again (a budget: until its period ends)."""
        if self.rate > 0:
            return max(0.0, (self.cap - level) / self.rate)
        return self.ttl
