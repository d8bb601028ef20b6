"""Token-bucket maths (service/ratelimit/bucket.py): properties over arbitrary request times."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service.ratelimit.bucket import Decision, Limit, decision, full_at, refill, take

limits = st.builds(
    Limit,
    rate=st.floats(min_value=0.01, max_value=1000, allow_nan=False, allow_infinity=False),
    burst=st.integers(min_value=1, max_value=200),
)
gaps = st.lists(
    st.floats(min_value=0, max_value=30, allow_nan=False, allow_infinity=False),
    min_size=1,
    max_size=300,
)


def run(limit: Limit, gaps: list[float]) -> list[tuple[float, Decision]]:
    now = 1000.0
    tokens, last = float(limit.burst), now
    out = []
    for g in gaps:
        now += g
        tokens, d = take(tokens, last, now, limit)
        last = now
        out.append((now, d))
    return out


@settings(max_examples=300, deadline=None)
@given(limits, gaps)
def test_any_window_admits_at_most_burst_plus_rate_times_t(limit: Limit, gaps: list[float]) -> None:
    admitted = [t for t, d in run(limit, gaps) if d.allowed]
    for i in range(len(admitted)):
        for j in range(i, len(admitted)):
            t = admitted[j] - admitted[i]
            count = j - i + 1
            assert count <= limit.burst + limit.rate * t + 1e-6, (count, t)


@settings(max_examples=300, deadline=None)
@given(limits, st.integers(min_value=0, max_value=50))
def test_a_full_bucket_admits_exactly_burst_at_once(limit: Limit, extra: int) -> None:
    decisions = [d for _, d in run(limit, [0.0] * (limit.burst + extra))]
    assert sum(d.allowed for d in decisions) == limit.burst
    assert [d.remaining for d in decisions[: limit.burst]] == list(range(limit.burst - 1, -1, -1))


@settings(max_examples=300, deadline=None)
@given(limits, gaps)
def test_retry_after_is_the_ceiling_of_the_time_until_one_token(
    limit: Limit, gaps: list[float]
) -> None:
    now = 1000.0
    tokens, last = float(limit.burst), now
    for g in gaps:
        now += g
        before = refill(tokens, last, now, limit)
        tokens, d = take(tokens, last, now, limit)
        last = now
        if d.allowed:
            assert d.retry_after == 0
            assert "Retry-After" not in d.headers()
            continue
        wait = (1.0 - before) / limit.rate
        assert d.retry_after >= 1
        assert d.retry_after == max(1, math.ceil(wait - 1e-9))
        assert d.headers()["Retry-After"] == str(d.retry_after)
        # Coming back after Retry-After seconds finds a token; a second earlier does not.
        assert refill(tokens, last, now + d.retry_after, limit) >= 1.0 - 1e-9
        if d.retry_after > 1:
            assert refill(tokens, last, now + d.retry_after - 1, limit) < 1.0


@settings(max_examples=200, deadline=None)
@given(limits, gaps)
def test_headers_and_reset(limit: Limit, gaps: list[float]) -> None:
    for _, d in run(limit, gaps):
        h = d.headers()
        assert h["X-RateLimit-Limit"] == str(limit.burst)
        assert 0 <= int(h["X-RateLimit-Remaining"]) <= limit.burst - 1
        assert 0 <= int(h["X-RateLimit-Reset"]) <= math.ceil(limit.burst / limit.rate)


@given(limits, st.floats(min_value=0, max_value=1000), st.floats(min_value=0, max_value=1e6))
def test_a_bucket_is_full_again_at_full_at(limit: Limit, tokens: float, last: float) -> None:
    tokens = min(tokens, float(limit.burst))
    at = full_at(tokens, last, limit)
    assert at >= last
    assert refill(tokens, last, at + 1e-6, limit) == limit.burst


def test_per_minute_settings() -> None:
    assert Limit.per_minute(0, 5) is None
    assert Limit.per_minute(-1, None) is None
    assert Limit.per_minute(60, None) == Limit(rate=1.0, burst=60)
    assert Limit.per_minute(90, 10) == Limit(rate=1.5, burst=10)
    assert Limit.per_minute(0.5, None) == Limit(rate=0.5 / 60, burst=1)
    assert Limit.per_minute(30, 0) == Limit(rate=0.5, burst=1)


def test_exact_waits_are_not_rounded_up_by_float_noise() -> None:
    limit = Limit(rate=0.1, burst=1)
    d = decision(False, 0.7, limit)  # (1 - 0.7) / 0.1 = 3.0000000000000004
    assert d.retry_after == 3


def test_unchecked_decision_only_states_the_limit() -> None:
    d = Decision.unchecked(Limit(rate=1, burst=7))
    assert d.allowed
    assert d.headers() == {"X-RateLimit-Limit": "7"}


def test_a_failing_store_logs_once_per_interval_and_counts_the_rest(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """LogThrottle (the limiter's, the token store's and the ejection share's failure lines)."""
    from service.ratelimit import throttle as module

    now = [1000.0]
    monkeypatch.setattr(module.time, "monotonic", lambda: now[0])
    throttle = module.LogThrottle()
    assert throttle.due() == 0  # the first failure is written
    assert [throttle.due() for _ in range(3)] == [None, None, None]
    now[0] += module.LOG_EVERY_SECS
    assert throttle.due() == 3  # the next line says how many it stands for
    assert throttle.due() is None
