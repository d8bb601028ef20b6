"""Token limits (SPEC §13): the estimate, usage, the meters' maths, the stores' agreement, the
limiter's answers (429, 400, shadow mode, fail-open / fail-closed) and config precedence."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import multiprocessing as mp
import random
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from service.config.loader import ConfigError, load_file
from service.config.model import Profile, TokenBudgets, TokenLimit
from service.context import token_defaults
from service.errors import RateLimited, ServiceUnavailable, TokenRequestTooLarge
from service.ratelimit.bucket import Meter
from service.ratelimit.shared import create_table, remove_table
from service.ratelimit.tokens import (
    Charge,
    LocalTokens,
    SharedTokens,
    TokenLimiter,
    TokenRule,
    refunded,
    reserve_levels,
    settle_levels,
)
from service.settings import Settings


def rule(**limit: Any) -> TokenRule:
    budgets = limit.pop("budgets", None)
    compiled = TokenRule.compile(
        TokenLimit(**limit) if limit else None,
        TokenBudgets(**budgets) if budgets else None,
        "profile",
    )
    assert compiled is not None
    return compiled


# -- the estimate and the usage -------------------------------------------------------------------


def test_estimate_is_body_bytes_over_bytes_per_token_plus_max_output_capped() -> None:
    r = rule(tokens_per_minute=1000)
    assert r.estimate({"max_tokens": 100}, 400) == 100 + 100
    assert r.estimate({"max_completion_tokens": 7}, 10) == 3 + 7  # ceil(10 / 4)
    assert r.estimate({"max_output_tokens": 9}, 0) == 9
    assert r.estimate({}, 0) == 1024  # defaultMaxOutputTokens
    assert r.estimate({"max_tokens": 64000}, 0) == 4096  # maxOutputReservation (Claude Code)
    assert r.estimate({"max_tokens": True}, 0) == 1024  # not a number of tokens
    assert r.estimate(None, 0) == 1024  # an audio upload
    r = rule(tokens_per_minute=1000, count=["input"], bytes_per_token=2)
    assert r.estimate({"max_tokens": 100}, 10) == 5
    r = rule(tokens_per_minute=1000, count=["output"], default_max_output_tokens=50)
    assert r.estimate({}, 10_000) == 50


@pytest.mark.parametrize(
    ("usage", "both", "output_only"),
    [
        ({"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}, 10, 3),
        ({"input_tokens": 9, "output_tokens": 4}, 13, 4),
        (
            {"input_tokens": 9, "cache_read_input_tokens": 100, "cache_creation_input_tokens": 5,
             "output_tokens": 4},
            118,
            4,
        ),
        ({"prompt_tokens": 4, "total_tokens": 4}, 4, 0),  # embeddings
        ({"output_tokens": 4}, 4, 4),
        ({}, None, None),
        (None, None, None),
        ({"prompt_tokens": "7"}, None, None),
    ],
)  # fmt: skip
def test_used_reads_every_usage_format(
    usage: dict[str, Any] | None, both: int | None, output_only: int | None
) -> None:
    assert rule(tokens_per_minute=1).used(usage) == both
    assert rule(tokens_per_minute=1, count=["output"]).used(usage) == output_only


def test_budget_meters_are_calendar_periods_in_utc() -> None:
    r = rule(budgets={"daily": 10, "monthly": 100})
    wall = dt.datetime(2026, 12, 31, 23, 59, 30, tzinfo=dt.UTC).timestamp()
    daily, monthly = r.meters("k", wall)
    assert (daily.scope, daily.key, daily.cap) == ("daily", "k.d20261231", 10)
    assert daily.ttl == pytest.approx(30)
    assert (monthly.scope, monthly.key) == ("monthly", "k.m202612")
    assert monthly.ttl == pytest.approx(30)  # 2027-01-01 00:00 UTC
    wall = dt.datetime(2027, 2, 1, 0, 0, 0, tzinfo=dt.UTC).timestamp()
    daily, monthly = r.meters("k", wall)
    assert daily.key == "k.d20270201" and daily.ttl == pytest.approx(86400)
    assert monthly.key == "k.m202702" and monthly.ttl == pytest.approx(28 * 86400)


def test_rule_is_none_without_a_limit_or_budget() -> None:
    assert TokenRule.compile(None, None, "p") is None
    assert TokenRule.compile(TokenLimit(tokens_per_minute=0), TokenBudgets(), "p") is None
    only_budget = TokenRule.compile(None, TokenBudgets(daily=5), "p")
    assert only_budget is not None and only_budget.meters("k", 0.0)[0].scope == "daily"


# -- the maths ------------------------------------------------------------------------------------

BUCKET = Meter("minute", "k.p", 100, 1.0, 0.0, True)
BUDGET = Meter("daily", "k.d1", 50, 0.0, 1000.0, True)


def test_reserve_is_all_or_nothing() -> None:
    refused, levels = reserve_levels([BUCKET, BUDGET], [None, None], 0.0, 40)
    assert (refused, levels) == (-1, [60.0, 40.0])
    # The bucket has 60 (refilled 0), the budget 10 left: 20 does not fit the budget.
    refused, levels = reserve_levels([BUCKET, BUDGET], [(60.0, 0.0), (40.0, 0.0)], 0.0, 20)
    assert (refused, levels) == (1, [60.0, 40.0])


def test_settle_gives_back_charges_debt_and_leaves_ended_budgets_alone() -> None:
    # Used 90 of a 40 reservation: the bucket goes 50 below what it had, into debt.
    assert settle_levels([BUCKET, BUDGET], [(10.0, 0.0), (40.0, 0.0)], 0.0, -50) == [-40.0, 90.0]
    # A refund never fills a bucket past its size; a forgotten bucket was full.
    assert settle_levels([BUCKET], [(90.0, 0.0)], 5.0, 30) == [100.0]
    assert settle_levels([BUCKET], [None], 0.0, -30) == [70.0]
    # A budget whose period ended (gone) is left alone; a refund never goes below 0.
    assert settle_levels([BUDGET], [None], 0.0, 10) == [None]
    assert settle_levels([BUDGET], [(5.0, 0.0)], 0.0, 10) == [0.0]


def test_a_bucket_in_debt_refuses_until_it_refilled() -> None:
    assert BUCKET.wait(-40.0, 10) == pytest.approx(50.0)
    refused, _ = reserve_levels([BUCKET], [(-40.0, 0.0)], 49.0, 10)
    assert refused == 0
    refused, _ = reserve_levels([BUCKET], [(-40.0, 0.0)], 50.0, 10)
    assert refused == -1


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_local_and_shared_stores_agree(tmp_path: Path) -> None:
    """The same random sequence of reservations, settlements and clock steps gives the same
    answers from the one-process store and the shared-memory table."""
    clock = Clock()
    path = create_table(1000, str(tmp_path))
    local, shared = LocalTokens(clock), SharedTokens(path)
    shared.table._now = clock
    rnd = random.Random(7)
    meters = [
        [
            Meter("minute", f"k{i}.p", 500, 2.0, 0.0, True),
            Meter("daily", f"k{i}.d", 3000, 0.0, 50.0, True),
        ]
        for i in range(3)
    ]
    try:
        for _ in range(400):
            ms = rnd.choice(meters)
            if rnd.random() < 0.6:
                n = rnd.randint(0, 300)
                a = asyncio.run(local.reserve(ms, n))
                b = asyncio.run(shared.reserve(ms, n))
                assert a == b
            else:
                delta = rnd.randint(-200, 200)
                asyncio.run(local.settle(ms, delta))
                asyncio.run(shared.settle(ms, delta))
            clock.t += rnd.choice([0.0, 0.5, 3.0, 60.0])
    finally:
        asyncio.run(shared.close())
        remove_table(path)


def test_a_budget_given_back_to_zero_is_forgotten(tmp_path: Path) -> None:
    """A key refused upstream (a made-up key's 401) is refunded whole: its daily and monthly
    entries stayed, at 0, until their period ended, and enough such keys filled the table, so a
    new key's every request failed the token check (served unlimited, or 503 fail-closed)."""
    clock = Clock()
    path = create_table(64, str(tmp_path))
    shared, local = SharedTokens(path), LocalTokens(clock)
    shared.table._now = clock
    try:
        for i in range(200):  # far more keys than the table holds, each refused and refunded
            budget = [Meter("daily", f"junk{i}.d", 3000, 0.0, 86_400.0, True)]
            for store in (shared, local):
                assert asyncio.run(store.reserve(budget, 120))[0] < 0
                asyncio.run(store.settle(budget, 120))
            clock.t += 0.01
        # (the table's at most a quarter, as forgotten entries are swept once that many live)
        assert shared.table.live() <= 64 // 4 and local._values == {}
        real = [Meter("daily", "real.d", 300, 0.0, 86_400.0, True)]
        assert asyncio.run(shared.reserve(real, 122)) == (-1, [122.0])
        assert asyncio.run(shared.reserve(real, 122)) == (-1, [244.0])
        assert asyncio.run(shared.reserve(real, 122))[0] == 0  # its budget, exact again
        asyncio.run(shared.settle(real, 122))  # a partial refund keeps the entry
        assert asyncio.run(shared.reserve(real, 0)) == (-1, [122.0])
    finally:
        asyncio.run(shared.close())
        remove_table(path)


def _reserve_many(path: str, n: int, out: Any) -> None:
    store = SharedTokens(path)
    meters = [Meter("minute", "one-key.p", 1000, 1e-9, 0.0, True)]
    won = sum(1 for _ in range(n) if store.reserve_sync(meters, 7)[0] < 0)
    out.put(won)


def test_shared_table_is_exact_across_processes(tmp_path: Path) -> None:
    """Four processes reserving 7 tokens at once from one bucket of 1000: exactly 142 win."""
    path = create_table(1000, str(tmp_path))
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=_reserve_many, args=(path, 100, out)) for _ in range(4)]
    try:
        for p in procs:
            p.start()
        wins = [out.get(timeout=60) for _ in procs]
        for p in procs:
            p.join(timeout=60)
    finally:
        remove_table(path)
    assert sum(wins) == 1000 // 7


# -- the limiter's answers ----------------------------------------------------------------------


class Failing:
    async def reserve(self, meters: Any, amount: int) -> Any:
        raise ConnectionError("redis://:secret@host down")

    async def settle(self, meters: Any, delta: int) -> None:
        raise ConnectionError("down")

    async def close(self) -> None:
        pass


class Counter:
    def __init__(self) -> None:
        self.n: dict[Any, float] = {}

    def __getitem__(self, key: Any) -> Counter:
        self._key = key
        return self

    def labels(self, *key: Any) -> Counter:
        return self[key]

    def inc(self, n: float = 1) -> None:
        self.n[getattr(self, "_key", None)] = self.n.get(getattr(self, "_key", None), 0) + n


class Metrics:
    def __init__(self) -> None:
        self.tokens_reserved_total = Counter()
        self.tokens_reconciled_by = Counter()
        self.token_rejections_by = Counter()


def test_refusal_is_429_with_token_headers_and_the_request_buckets_headers() -> None:
    lim = TokenLimiter(LocalTokens(), backend="local")
    r = rule(tokens_per_minute=60, burst=100)  # 1 token a second
    charge = asyncio.run(lim.reserve("k", r, {"max_tokens": 80}, 0))
    assert charge is not None and charge.amount == 80
    assert charge.headers == {
        "x-ratelimit-limit-tokens": "100",
        "x-ratelimit-remaining-tokens": "20",
        "x-ratelimit-reset-tokens": "80",
    }
    with pytest.raises(RateLimited) as e:
        asyncio.run(lim.reserve("k", r, {"max_tokens": 50}, 0, {"X-RateLimit-Limit": "5"}))
    assert str(e.value) == "Token rate limit exceeded"
    assert e.value.headers["Retry-After"] == "30"  # 30 tokens missing at 1 a second
    assert e.value.headers["X-RateLimit-Limit"] == "5"
    assert e.value.headers["x-ratelimit-remaining-tokens"] == "20"


def test_larger_than_the_whole_bucket_is_400_and_counted() -> None:
    lim = TokenLimiter(LocalTokens(), backend="local")
    lim.metrics = Metrics()
    with pytest.raises(TokenRequestTooLarge) as e:
        asyncio.run(lim.reserve("k", rule(tokens_per_minute=100), {"max_tokens": 101}, 0))
    assert e.value.status == 400 and e.value.code == "request_exceeds_token_limit"
    assert lim.metrics.token_rejections_by.n == {("request_too_large", "enforce"): 1}
    # the request bucket took its token: its headers come with the 400, as with the 429
    bucket = {"X-RateLimit-Limit": "5", "X-RateLimit-Remaining": "4"}
    with pytest.raises(TokenRequestTooLarge) as e:
        asyncio.run(lim.reserve("k", rule(tokens_per_minute=100), {"max_tokens": 101}, 0, bucket))
    assert e.value.headers == bucket


def test_shadow_mode_never_refuses_and_reserves_only_what_fits() -> None:
    lim = TokenLimiter(LocalTokens(), backend="local")
    lim.metrics = Metrics()
    r = rule(tokens_per_minute=60, burst=100, enforce=False, budgets={"daily": 100_000})
    first = asyncio.run(lim.reserve("k", r, {"max_tokens": 80}, 0))
    assert first is not None and [m.scope for m in first.meters] == ["minute", "daily"]
    second = asyncio.run(lim.reserve("k", r, {"max_tokens": 80}, 0))
    # The bucket would refuse: left out; the (enforcing) budget still takes it.
    assert second is not None and [m.scope for m in second.meters] == ["daily"]
    assert second.headers["x-ratelimit-remaining-tokens"] == "20"
    assert lim.metrics.token_rejections_by.n == {("minute", "shadow"): 1}
    too_big = asyncio.run(lim.reserve("k", r, {"max_tokens": 4000}, 400))
    assert too_big is not None and [m.scope for m in too_big.meters] == ["daily"]


def test_fail_open_and_fail_closed() -> None:
    errors: list[int] = []
    lim = TokenLimiter(Failing(), backend="redis", on_error=lambda: errors.append(1))
    assert asyncio.run(lim.reserve("k", rule(tokens_per_minute=6000), {}, 0)) is None
    closed = TokenLimiter(Failing(), backend="redis", fail_closed=True)
    with pytest.raises(ServiceUnavailable) as e:
        asyncio.run(closed.reserve("k", rule(tokens_per_minute=6000), {}, 0, {"X-A": "1"}))
    assert "secret" not in str(e.value)
    assert e.value.headers == {"X-A": "1"}  # the request bucket's headers, as documented
    # A settlement that fails is counted, never raised into the answer.
    charge = Charge([BUCKET], 10, rule(tokens_per_minute=60), {})
    asyncio.run(lim.settle(charge, {"prompt_tokens": 1}, False))
    assert errors == [1, 1]


def test_settle_replaces_the_reservation_or_lets_it_stand() -> None:
    store = LocalTokens(Clock())
    lim = TokenLimiter(store, backend="local")
    lim.metrics = Metrics()
    r = rule(tokens_per_minute=1, burst=1000)
    charge = asyncio.run(lim.reserve("k", r, {"max_tokens": 100}, 0))
    assert charge is not None
    asyncio.run(lim.settle(charge, None, refund=False))  # no usage: it stands
    asyncio.run(lim.settle(charge, {"prompt_tokens": 30, "completion_tokens": 100}, False))
    assert lim.metrics.tokens_reconciled_by.n == {"charge": 30}
    level = asyncio.run(store.reserve(charge.meters, 0))[1][0]
    assert level == 1000 - 130
    asyncio.run(lim.settle(charge, None, refund=True))  # nothing billed: given back whole
    assert asyncio.run(store.reserve(charge.meters, 0))[1][0] == 1000 - 30


@pytest.mark.parametrize(
    ("status", "error_type", "given_back"),
    [
        (200, None, False),  # an answer without usage: the reservation stands
        (400, None, True),  # the upstream refused it
        (500, "upstream_error", True),
        (502, "connect_error", True),
        (502, "tls_error", False),  # it may have failed after the request went out
        (503, None, True),  # the router's own refusal (upstreams cooling down, draining)
        (504, "timeout", False),  # it may still be generating, and billing
        (502, "io_error", False),
        (200, "stream_error", False),  # a stream cut after it began
        (499, None, False),
    ],
)
def test_what_is_given_back_without_usage(
    status: int, error_type: str | None, given_back: bool
) -> None:
    assert refunded(status, error_type) is given_back


# -- configuration --------------------------------------------------------------------------------


def write(tmp_path: Path, data: dict[str, Any]) -> Path:
    p = tmp_path / "p.json"
    p.write_text(json.dumps(data))
    return p


def test_precedence_endpoint_profile_environment(tmp_path: Path) -> None:
    cfg = load_file(
        write(
            tmp_path,
            {
                "name": "p",
                "baseUrl": "http://127.0.0.1:1",
                "tokenLimit": {"tokensPerMinute": 1000},
                "tokenBudgets": {"daily": 5000},
                "endpoints": {"/v1/embeddings": {"tokenLimit": {"tokensPerMinute": 50}}},
            },
        )
    )
    env = token_defaults(
        Settings.from_env({"TOKEN_LIMIT_TOKENS_PER_MINUTE": "7"}, profile_path=Path())
    )
    chat = cfg.token_rule("/v1/chat/completions", env)
    emb = cfg.token_rule("/v1/embeddings", env)
    assert chat is not None and emb is not None
    assert (chat.per_minute, chat.scope, chat.daily) == (1000, "profile", 5000)
    assert (emb.per_minute, emb.scope, emb.daily) == (50, "/v1/embeddings", 5000)
    bare = load_file(write(tmp_path, {"name": "p", "baseUrl": "http://127.0.0.1:1"}))
    fallback = bare.token_rule("/v1/messages", env)
    assert fallback is not None and (fallback.per_minute, fallback.daily) == (7, None)
    # Compiled once per config (the environment is fixed for a worker's life): a fresh load.
    bare = load_file(write(tmp_path, {"name": "p", "baseUrl": "http://127.0.0.1:1"}))
    assert bare.token_rule("/v1/messages", (None, None)) is None


def test_token_settings_from_the_environment() -> None:
    s = Settings.from_env(
        {
            "TOKEN_LIMIT_TOKENS_PER_MINUTE": "600",
            "TOKEN_LIMIT_BURST": "900",
            "TOKEN_LIMIT_ENFORCE": "false",
            "TOKEN_BUDGET_DAILY": "10",
            "TOKEN_BUDGET_MONTHLY": "20",
        },
        profile_path=Path(),
    )
    limit, budgets = token_defaults(s)
    assert limit == TokenLimit(tokens_per_minute=600, burst=900, enforce=False)
    assert budgets == TokenBudgets(daily=10, monthly=20, enforce=False)
    assert token_defaults(Settings.from_env({}, profile_path=Path())) == (None, None)


@pytest.mark.parametrize(
    "bad",
    [
        {"tokensPerMinute": -1},
        {"tokensPerMinute": 10, "count": []},
        {"tokensPerMinute": 10, "count": ["reasoning"]},
        {"tokensPerMinute": 10, "bytesPerToken": 0},
        {"tokensPerMinute": 10, "unknown": 1},
    ],
)
def test_invalid_token_limits_are_rejected_with_their_path(
    tmp_path: Path, bad: dict[str, Any]
) -> None:
    with pytest.raises(ConfigError, match=r"\$\.tokenLimit"):
        load_file(write(tmp_path, {"name": "p", "baseUrl": "http://x", "tokenLimit": bad}))


def test_profile_model_accepts_token_fields_in_camel_case() -> None:
    p = Profile.model_validate(
        {
            "name": "p",
            "baseUrl": "http://x",
            "tokenLimit": {"tokensPerMinute": 10, "maxOutputReservation": 5},
            "tokenBudgets": {"monthly": 3},
        },
        by_alias=True,
    )
    assert p.token_limit is not None and p.token_limit.max_output_reservation == 5
    with pytest.raises(ValidationError):
        TokenBudgets(daily=0)


# -- the review's cases ---------------------------------------------------------------------------


def test_n_answers_reserve_n_times_the_output() -> None:
    r = rule(tokens_per_minute=100_000)
    assert r.estimate({"max_tokens": 100, "n": 3}, 0) == 300
    assert r.estimate({"max_tokens": 100, "n": True}, 0) == 100


def test_budget_only_rules_still_send_token_headers() -> None:
    lim = TokenLimiter(LocalTokens(), backend="local")
    charge = asyncio.run(lim.reserve("k", rule(budgets={"daily": 1000}), {"max_tokens": 10}, 0))
    assert charge is not None
    assert charge.headers["x-ratelimit-limit-tokens"] == "1000"
    assert charge.headers["x-ratelimit-remaining-tokens"] == "990"


def test_an_overrun_past_midnight_is_charged_to_the_new_day() -> None:
    day1 = dt.datetime(2026, 11, 30, 23, 59, 50, tzinfo=dt.UTC).timestamp()
    wall = [day1]
    store = LocalTokens(Clock())
    lim = TokenLimiter(store, backend="local", clock=lambda: wall[0])
    r = rule(budgets={"daily": 10_000})
    charge = asyncio.run(lim.reserve("k", r, {"max_tokens": 100}, 0))
    assert charge is not None and charge.amount == 100
    wall[0] = day1 + 20  # the answer ends on the next UTC day, having used 700 tokens
    asyncio.run(lim.settle(charge, {"prompt_tokens": 200, "completion_tokens": 500}, False))
    (today,) = r.meters("k", wall[0])
    assert today.key == "k.d20261201"
    assert asyncio.run(store.reserve([today], 0))[1] == [600.0]  # the 600 over the estimate


class Attempts:
    def __init__(self, attempts: list[tuple[str, str, float]], upstream_status: int | None):
        self.attempts = attempts
        self.upstream_status = upstream_status


@pytest.mark.parametrize(
    ("attempts", "upstream_status", "status", "error_type", "given_back"),
    [
        # an earlier attempt timed out (it may have been billed), the last found no connection
        ([("a", "timeout", 1.0), ("b", "connect_error", 0.1)], None, 502, "connect_error", False),
        ([("a", "server_error", 0.1), ("b", "connect_error", 0)], None, 502, "connect_error", True),
        ([("a", "rate_limited", 0.1)], 429, 429, "upstream_error", True),
        # a stream committed by heartbeats, then refused by the upstream: nothing billed
        ([], 400, 200, None, True),
        ([], 200, 200, None, False),
    ],
)  # fmt: skip
def test_refunds_look_at_every_attempt(
    attempts: list[tuple[str, str, float]],
    upstream_status: int | None,
    status: int,
    error_type: str | None,
    given_back: bool,
) -> None:
    state: Any = Attempts(attempts, upstream_status)
    assert refunded(status, error_type, state) is given_back
