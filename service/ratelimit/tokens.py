"""Token limits and budgets (SPEC §13; the operator's view: docs/tokens.md).

Beside the request buckets, a request may be charged tokens on up to three meters of its client
key (`Meter`):

- `minute`: a token bucket per (client key, model route) of `tokenLimit.burst` tokens refilling at
  `tokensPerMinute / 60` per second; it may go below zero when a request used more than it
  reserved (the next requests then wait for the debt to refill);
- `daily` / `monthly`: the tokens used in the current UTC calendar day / month
  (`tokenBudgets`), kept under a key that names the period, forgotten when it ends.

Reserve-then-reconcile: before a request is sent, its estimate (`TokenRule.estimate`) is reserved
on every meter at once, atomically (all or none: one critical section of the shared table, one
Lua script in Redis). When the answer's usage is known (a JSON body, the last events of a stream),
the difference between usage and estimate is given back or charged (`TokenLimiter.settle`). When
no usage ever arrives the reservation stands, except when the upstream was never reached or
refused the request (`refunded`): then nothing was billed and it is given back whole. So N
concurrent streams cannot overshoot a limit by N answers: only by the estimate's error.

Stores: `SharedTokens` (the embedded default: a second table of the shared-memory store of
`shared.py`, for every worker of an instance), `RedisTokens` (`RATE_LIMIT_BACKEND=redis://…`,
every replica), `LocalTokens` (one process). All three apply the same pure maths
(`reserve_levels`, `settle_levels`; the Redis scripts mirror them). A store that cannot decide
is handled like the request buckets': fail open (counted in `rate_limiter_backend_errors_total`,
logged) or 503 with `RATE_LIMIT_FAIL_CLOSED=true`.

Shadow mode (`enforce: false`): a meter that would refuse is counted in
`token_limit_rejections_total{mode="shadow"}` and left out of this request's reservation (as an
enforcing limit would not have admitted it); the request goes on.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import structlog

from ..errors import RateLimited, RouterError, ServiceUnavailable, TokenRequestTooLarge
from ..usage import token_counts
from .bucket import _EPS, REDIS_SCHEMES, Meter
from .throttle import LogThrottle

if TYPE_CHECKING:
    from sanic.response import BaseHTTPResponse

    from ..config.model import TokenBudgets, TokenLimit
    from ..state import RequestState

log = structlog.get_logger("api_router.ratelimit")

TOKEN_TABLE_ENV = "API_ROUTER_TOKEN_TABLE"
MINUTE, DAILY, MONTHLY, TOO_LARGE = "minute", "daily", "monthly", "request_too_large"
# token_limit_rejections_total{scope}: a closed set
SCOPES = (MINUTE, DAILY, MONTHLY, TOO_LARGE)
# The request fields that bound a request's output, by API (the first one present counts).
MAX_OUTPUT_FIELDS = ("max_tokens", "max_completion_tokens", "max_output_tokens")
# error_type values after which nothing was billed: the upstream was not reached, or answered
# with an error status (429/5xx, `upstream_error`).
REFUNDED_TYPES = frozenset({"connect_error", "upstream_error"})
# Attempt outcomes under a routing file (service.proxy.failover) after which nothing was billed.
UNBILLED_OUTCOMES = frozenset(
    {
        "ok",
        "connect_error",
        "connect_timeout",
        "pool_exhausted",
        "rate_limited",
        "server_error",
        "client_error",
    }
)


def reserve_levels(
    meters: Sequence[Meter], stored: Sequence[tuple[float, float] | None], now: float, amount: int
) -> tuple[int, list[float]]:
    """(-1, levels after taking `amount` on every meter), or (index of the first meter it does
    not fit, levels now) when it does not fit on one: then nothing is taken."""
    levels = [m.level(s, now) for m, s in zip(meters, stored, strict=True)]
    for i, (m, lv) in enumerate(zip(meters, levels, strict=True)):
        if not m.fits(lv, amount):
            return i, levels
    taken = [
        lv - amount if m.rate > 0 else lv + amount for m, lv in zip(meters, levels, strict=True)
    ]
    return -1, taken


def settle_levels(
    meters: Sequence[Meter], stored: Sequence[tuple[float, float] | None], now: float, delta: int
) -> list[float | None]:
    """Levels after giving back `delta` tokens (taking `-delta` when negative); None: leave the
    meter alone (a refund to a budget whose period is over). A bucket that was forgotten was
    full; a budget not yet used in its period takes an overrun as its first use."""
    out: list[float | None] = []
    for m, s in zip(meters, stored, strict=True):
        if m.rate > 0:
            out.append(min(float(m.cap), m.level(s, now) + delta))
        elif s is None:
            out.append(float(-delta) if delta < 0 else None)
        else:
            out.append(max(0.0, s[0] - delta))
    return out


def _writes(
    meters: Sequence[Meter],
    levels: Sequence[float | None],
    now: float,
    stored: Sequence[tuple[float, float] | None],
) -> list[tuple[float, float, float | None] | None]:
    """What a table stores for each level: (tokens, last, full-again time or None: keep it)."""
    out: list[tuple[float, float, float | None] | None] = []
    for m, lv, s in zip(meters, levels, stored, strict=True):
        if lv is None:
            out.append(None)
        elif m.rate > 0:
            out.append((lv, now, now + (m.cap - lv) / m.rate))
        elif lv <= 0:
            # Given back to zero: unused in its period, as if never made; forgotten now (as a
            # full bucket is), or a made-up key refused upstream (its 401 refunded whole) held
            # a slot until its month ended, and enough of them filled the table.
            out.append((0.0, now, now))
        else:  # a budget is forgotten when its period ends: set once, when it is created
            out.append((lv, now, now + m.ttl if s is None else None))
    return out


# -- the rule of a request: its meters and its estimate ------------------------------------------


@dataclass(frozen=True, slots=True)
class TokenRule:
    """The token limits of one (model) route, compiled once per config load."""

    scope: str  # the bucket's part after the client key: "profile", a route, a route hash
    per_minute: int  # 0: no bucket
    burst: int
    enforce: bool
    count_input: bool
    count_output: bool
    bytes_per_token: float
    default_output: int
    output_cap: int
    daily: int | None
    monthly: int | None
    budgets_enforce: bool

    @classmethod
    def compile(
        cls, limit: TokenLimit | None, budgets: TokenBudgets | None, scope: str
    ) -> TokenRule | None:
        """None when neither sets anything."""
        per_minute = limit.tokens_per_minute if limit is not None else 0
        if per_minute <= 0 and (budgets is None or not (budgets.daily or budgets.monthly)):
            return None
        # Here, not at the top: service.config imports this module while it loads.
        from ..config.model import TokenLimit

        lim = limit or TokenLimit()  # budgets alone estimate with tokenLimit's defaults
        return cls(
            scope=scope,
            per_minute=per_minute,
            burst=(lim.burst or per_minute) if per_minute > 0 else 0,
            enforce=lim.enforce,
            count_input="input" in lim.count,
            count_output="output" in lim.count,
            bytes_per_token=lim.bytes_per_token,
            default_output=lim.default_max_output_tokens,
            output_cap=lim.max_output_reservation,
            daily=budgets.daily if budgets is not None else None,
            monthly=budgets.monthly if budgets is not None else None,
            budgets_enforce=budgets.enforce if budgets is not None else True,
        )

    def estimate(
        self, payload: Mapping[str, Any] | None, body_bytes: int, outputs: bool = True
    ) -> int:
        """Tokens to reserve: the body's bytes / bytesPerToken (the prompt: an over-estimate, as
        the JSON around the text counts too) plus the request's max output tokens (or the
        default when it names none), that part capped at maxOutputReservation; without it for
        a route that answers no output tokens (`outputs` False: embeddings)."""
        total = 0
        if self.count_input:
            total += math.ceil(body_bytes / self.bytes_per_token)
        if self.count_output and outputs:
            out = self.default_output
            if payload is not None:
                for name in MAX_OUTPUT_FIELDS:
                    v = payload.get(name)
                    if isinstance(v, int) and not isinstance(v, bool) and v >= 0:
                        out = v
                        break
            n = payload.get("n") if payload is not None else None
            copies = n if isinstance(n, int) and not isinstance(n, bool) and n > 1 else 1
            total += min(out, self.output_cap) * copies  # `n` answers, each up to the maximum
        return total

    def used(self, usage: Mapping[str, Any] | None) -> int | None:
        """The counted tokens of an upstream's usage (any of the three formats), or None when it
        reports none."""
        if not usage:
            return None
        inp, out = token_counts(usage)  # Anthropic's cache tokens included (service.usage)
        if inp is None and out is None:
            return None
        return (inp or 0) * self.count_input + (out or 0) * self.count_output

    def meters(self, key_id: str, wall: float) -> list[Meter]:
        out = []
        if self.per_minute > 0:
            out.append(
                Meter(
                    MINUTE,
                    f"{key_id}.{self.scope}",
                    self.burst,
                    self.per_minute / 60.0,
                    0.0,
                    self.enforce,
                )
            )
        if self.daily or self.monthly:
            day_end, month_end, day, month = _periods(wall)
            if self.daily:
                out.append(
                    Meter(
                        DAILY,
                        f"{key_id}.d{day}",
                        self.daily,
                        0.0,
                        day_end - wall,
                        self.budgets_enforce,
                    )
                )
            if self.monthly:
                out.append(
                    Meter(
                        MONTHLY,
                        f"{key_id}.m{month}",
                        self.monthly,
                        0.0,
                        month_end - wall,
                        self.budgets_enforce,
                    )
                )
        return out


# The current UTC day and month: (day's end, month's end, "YYYYMMDD", "YYYYMM"), computed once a
# day (the date arithmetic costs more than a bucket decision; bench/README.md).
_period: list[Any] = [float("-inf"), 0.0, 0.0, "", ""]


def _periods(wall: float) -> tuple[float, float, str, str]:
    start, day_end, month_end, day, month = _period
    if not start <= wall < day_end:
        now = datetime.fromtimestamp(wall, UTC)
        first = now.replace(hour=0, minute=0, second=0, microsecond=0)
        start, day_end = first.timestamp(), (first + timedelta(days=1)).timestamp()
        month_end = ((first.replace(day=1) + timedelta(days=32)).replace(day=1)).timestamp()
        day, month = f"{first:%Y%m%d}", f"{first:%Y%m}"
        _period[:] = [start, day_end, month_end, day, month]
    return day_end, month_end, day, month


# -- stores ---------------------------------------------------------------------------------------


class TokenStore(Protocol):
    async def reserve(self, meters: Sequence[Meter], amount: int) -> tuple[int, list[float]]: ...

    async def settle(self, meters: Sequence[Meter], delta: int) -> None: ...

    async def close(self) -> None: ...


class LocalTokens:
    """One process's memory (tests, a single worker without the CLI)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._now = clock
        self._values: dict[tuple[str, str], tuple[float, float, float]] = {}

    def _stored(self, meters: Sequence[Meter], now: float) -> list[tuple[float, float] | None]:
        out: list[tuple[float, float] | None] = []
        for m in meters:
            v = self._values.get((m.scope, m.key))
            out.append(None if v is None or v[2] <= now else (v[0], v[1]))
        return out

    def _write(self, meters: Sequence[Meter], writes: Sequence[Any]) -> None:
        for m, w in zip(meters, writes, strict=True):
            if w is not None:
                old = self._values.get((m.scope, m.key))
                full = w[2] if w[2] is not None else (old[2] if old else w[1])
                if full <= w[1]:  # forgotten now (a budget given back to zero)
                    self._values.pop((m.scope, m.key), None)
                    continue
                self._values[(m.scope, m.key)] = (w[0], w[1], full)

    async def reserve(self, meters: Sequence[Meter], amount: int) -> tuple[int, list[float]]:
        now = self._now()
        stored = self._stored(meters, now)
        refused, levels = reserve_levels(meters, stored, now, amount)
        if refused < 0:
            self._write(meters, _writes(meters, levels, now, stored))
        return refused, levels

    async def settle(self, meters: Sequence[Meter], delta: int) -> None:
        now = self._now()
        stored = self._stored(meters, now)
        self._write(meters, _writes(meters, settle_levels(meters, stored, now, delta), now, stored))

    async def close(self) -> None:
        self._values.clear()


class SharedTokens:
    """The shared-memory table the CLI created for tokens (`TOKEN_TABLE_ENV`), one critical
    section per reservation or settlement over all its meters."""

    def __init__(self, path: str) -> None:
        from .shared import SharedLimiter

        self.table = SharedLimiter(path)

    def reserve_sync(self, meters: Sequence[Meter], amount: int) -> tuple[int, list[float]]:
        def decide(stored: list[tuple[float, float] | None], now: float) -> Any:
            refused, levels = reserve_levels(meters, stored, now, amount)
            if refused >= 0:
                return [None] * len(meters), (refused, levels)
            return _writes(meters, levels, now, stored), (refused, levels)

        result: tuple[int, list[float]] = self.table.update_sync(
            [(m.scope, m.key) for m in meters], decide
        )
        return result

    def settle_sync(self, meters: Sequence[Meter], delta: int) -> None:
        def decide(stored: list[tuple[float, float] | None], now: float) -> Any:
            levels = settle_levels(meters, stored, now, delta)
            return _writes(meters, levels, now, stored), None

        self.table.update_sync([(m.scope, m.key) for m in meters], decide)

    async def reserve(self, meters: Sequence[Meter], amount: int) -> tuple[int, list[float]]:
        return self.reserve_sync(meters, amount)

    async def settle(self, meters: Sequence[Meter], delta: int) -> None:
        self.settle_sync(meters, delta)

    async def close(self) -> None:
        await self.table.close()


def create_token_store(backend: str | None, table: str | None) -> tuple[TokenStore, str]:
    """The token store beside the request buckets' (same backend setting): Redis, else the
    shared table the CLI created, else this process's memory."""
    b = (backend or "").strip()
    if b.startswith(REDIS_SCHEMES):
        from .redis_backend import RedisTokens

        return RedisTokens(b), "redis"
    if table:
        return SharedTokens(table), "shared"
    return LocalTokens(), "local"


# -- the limiter a worker uses --------------------------------------------------------------------


@dataclass(slots=True)
class Charge:
    """One request's reservation, settled when its answer is complete."""

    meters: list[Meter]
    amount: int
    rule: TokenRule
    headers: dict[str, str]
    key_id: str = ""


def _headers(m: Meter | None, level: float) -> dict[str, str]:
    if m is None:
        return {}
    return {
        "x-ratelimit-limit-tokens": str(m.cap),
        "x-ratelimit-remaining-tokens": str(m.remaining(level)),
        "x-ratelimit-reset-tokens": str(math.ceil(m.reset_secs(level) - _EPS)),
    }


R = TypeVar("R", bound="BaseHTTPResponse | None")

_REFUSED_MESSAGE = {
    MINUTE: "Token rate limit exceeded",
    DAILY: "Daily token budget exhausted",
    MONTHLY: "Monthly token budget exhausted",
}


class TokenLimiter:
    """Reservations and settlements of one worker, guarded like the request buckets' store."""

    def __init__(
        self,
        store: TokenStore,
        *,
        backend: str,
        fail_closed: bool = False,
        on_error: Callable[[], None] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.metrics: Any = None  # service.observability.metrics.Metrics, when metrics are on
        self._backend = backend
        self._fail_closed = fail_closed
        self._on_error = on_error
        self._wall = clock
        self._log = LogThrottle()

    async def reserve(
        self,
        key_id: str,
        rule: TokenRule,
        payload: Mapping[str, Any] | None,
        body_bytes: int,
        also: Mapping[str, str] | None = None,
        outputs: bool = True,
    ) -> Charge | None:
        """Reserve the request's estimate on its meters; raises TokenRequestTooLarge (400) or
        RateLimited (429, with `also`: the request bucket's headers) when an enforcing meter
        refuses. None: the store failed open. A charge without meters: every meter that would
        have refused is in shadow mode. `outputs`: False for a route whose answer has no output
        tokens (embeddings): none are reserved."""
        amount = rule.estimate(payload, body_bytes, outputs)
        meters = rule.meters(key_id, self._wall())
        # The x-ratelimit-*-tokens headers: the bucket's, else the first budget's.
        minute = next((m for m in meters if m.scope == MINUTE), meters[0] if meters else None)
        for m in list(meters):
            if amount > m.cap:  # could never fit, whatever the wait
                self._rejected(TOO_LARGE, m.enforce)
                if m.enforce:  # with the request bucket's headers (it took its token)
                    raise TokenRequestTooLarge(
                        f"This request's token estimate ({amount}) is larger than its key's "
                        f"whole {m.scope} token limit ({m.cap})",
                        headers=also,
                    )
                meters.remove(m)
        headers: dict[str, str] = {}
        while meters:
            try:
                refused, levels = await self.store.reserve(meters, amount)
            except Exception as e:  # whatever the store raised, the request gets an answer
                self._failed(e, "reserve")
                if self._fail_closed:
                    raise ServiceUnavailable(headers=also) from None
                return None
            if minute is not None and minute in meters:
                headers = _headers(minute, levels[meters.index(minute)])
            if refused < 0:
                if self.metrics is not None:
                    self.metrics.tokens_reserved_total.inc(amount)
                return Charge(meters, amount, rule, headers, key_id)
            m = meters[refused]
            self._rejected(m.scope, m.enforce)
            if m.enforce:
                wait = m.wait(levels[refused], amount)
                raise RateLimited(
                    _REFUSED_MESSAGE[m.scope],
                    headers={
                        **(also or {}),
                        **headers,
                        "Retry-After": str(max(1, math.ceil(wait - _EPS))),
                    },
                )
            meters.remove(m)  # shadow mode: as if it had refused; the others still count
        return Charge([], amount, rule, headers, key_id)

    async def settle(self, charge: Charge, usage: Mapping[str, Any] | None, refund: bool) -> None:
        """Replace the reservation with the usage; without usage it stands, unless `refund`
        (nothing was billed): then it is given back whole."""
        if not charge.meters:
            return
        used = charge.rule.used(usage)
        if used is None:
            if not refund:
                return
            used = 0
        delta = charge.amount - used
        if delta == 0:
            return
        meters = charge.meters
        if delta < 0:  # more than reserved: a budget's period may have ended meanwhile
            meters = self._current_periods(charge)
        try:
            await self.store.settle(meters, delta)
        except Exception as e:
            self._failed(e, "settle")
            return
        if self.metrics is not None:
            self.metrics.tokens_reconciled_by["refund" if delta > 0 else "charge"].inc(abs(delta))

    def _current_periods(self, charge: Charge) -> list[Meter]:
        """The charge's meters, a budget's moved to the period now current (an answer that ran
        past midnight UTC pays its overrun into the new day, not into a day already forgotten)."""
        now = {m.scope: m for m in charge.rule.meters(charge.key_id, self._wall())}
        return [m if m.rate > 0 else now.get(m.scope, m) for m in charge.meters]

    async def charged(self, charge: Charge, state: RequestState, pending: Awaitable[R]) -> R:
        """Await the exchange, then settle its charge. A client that left (cancellation) leaves
        the reservation standing, unless the answer's whole usage had come: then it counts."""
        try:
            response = await pending
        except asyncio.CancelledError:
            if state.usage_final:  # (shielded: a second cancellation must not lose it)
                settling = asyncio.ensure_future(self.settle(charge, _usage(state), False))
                _SETTLING.add(settling)  # held until done (the loop keeps only weak ones)
                settling.add_done_callback(_SETTLING.discard)
                await asyncio.shield(settling)
            raise
        except RouterError as e:
            settled = refunded(e.status, e.error_type, state, unreached=e.unreached)
            await self.settle(charge, _usage(state), settled)
            raise
        status = response.status if response is not None else 200
        await self.settle(charge, _usage(state), refunded(status, state.error_type, state))
        return response

    def _rejected(self, scope: str, enforced: bool) -> None:
        if self.metrics is not None:
            self.metrics.token_rejections_by[scope, "enforce" if enforced else "shadow"].inc()

    def _failed(self, exc: Exception, action: str) -> None:
        if self._on_error is not None:
            self._on_error()
        suppressed = self._log.due()
        if suppressed is None:
            return
        log.error(
            "token_limiter_backend_error",
            suppressed=suppressed,
            backend=self._backend,
            error=exc.__class__.__name__,  # its text may name hosts
            step=action,
            action="refused" if self._fail_closed and action == "reserve" else "allowed",
        )

    async def close(self) -> None:
        await self.store.close()


_SETTLING: set[asyncio.Future[None]] = set()


def _usage(state: RequestState) -> Mapping[str, Any] | None:
    """The answer's whole usage; None when it never came in full (a stream cut after Anthropic's
    opening count is not its usage: the reservation stands)."""
    return state.usage if state.usage_final else None


def refunded(
    status: int, error_type: str | None, state: RequestState | None = None, unreached: bool = False
) -> bool:
    """Whether a request that reported no usage was billed nothing: the upstream was not reached
    or answered with an error status (the router's own refusals included) — on every attempt,
    under a routing file: one that timed out or broke may have been billed."""
    if state is not None:
        if state.attempts and any(a[1] not in UNBILLED_OUTCOMES for a in state.attempts):
            return False
        if status < 400 and (state.upstream_status or 0) >= 400:
            return True  # a stream committed by heartbeats, then refused by the upstream
    if error_type is not None:
        return unreached or error_type in REFUNDED_TYPES
    return status >= 400 and status != 499
