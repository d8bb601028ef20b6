"""The shared-memory bucket table (service/ratelimit/shared.py) against the plain-dict model.

Small tables force long probe runs, wrap-around and backward-shift deletions; every decision
and every live count must match `LocalLimiter`, which keeps the same buckets in a dict.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service.errors import ServiceUnavailable
from service.ratelimit import shared as shared_module
from service.ratelimit.backends import Guarded, LocalLimiter
from service.ratelimit.bucket import Limit
from service.ratelimit.shared import SharedLimiter, TableFull, create_table, remove_table


class Clock:
    def __init__(self) -> None:
        self.t = 5000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def table() -> Iterator[str]:
    path = create_table(12)  # capacity 16
    yield path
    remove_table(path)


def reachable(lim: SharedLimiter) -> None:
    """Every stored key is found from its home slot (the probing invariant)."""
    for i in range(lim.capacity):
        k = lim._keys[i]
        if k:
            assert lim._find(k) == (i, True)


ops = st.lists(
    st.tuples(
        st.integers(min_value=0, max_value=9),  # key
        st.sampled_from(["/v1/chat/completions", "/v1/embeddings"]),
        st.floats(min_value=0, max_value=3, allow_nan=False),  # clock advance before
        st.booleans(),  # count live buckets afterwards
    ),
    max_size=120,
)


@settings(max_examples=150, deadline=None)
@given(ops)
def test_table_decides_and_forgets_like_the_dict_model(
    ops: list[tuple[int, str, float, bool]],
) -> None:
    clock = Clock()
    path = create_table(24)  # 20 possible buckets in 32 slots: long runs, wrap-around
    shared = SharedLimiter(path, clock=clock, count_sweep_every=0)
    model = LocalLimiter(clock=clock)
    limits = {"/v1/chat/completions": Limit(rate=1.0, burst=3), "/v1/embeddings": Limit(2.0, 1)}
    try:
        for key, route, dt, count in ops:
            clock.t += dt
            got = shared.acquire_sync(f"k{key}", route, limits[route])
            want = asyncio.run(model.acquire(f"k{key}", route, limits[route]))
            assert got == want
            if count:
                assert shared.active_buckets() == model.active_buckets()
                assert shared.live() == sum(model.active_buckets().values())
            reachable(shared)
        clock.t += 10  # everything refilled
        assert shared.active_buckets() == {}
        assert shared.live() == 0
    finally:
        asyncio.run(shared.close())
        remove_table(path)


def test_a_full_table_is_a_backend_error_unless_full_buckets_can_go(table: str) -> None:
    clock = Clock()
    lim = SharedLimiter(table, clock=clock)
    limit = Limit(rate=1.0, burst=2)
    for i in range(12):
        assert lim.acquire_sync(f"k{i}", "/r", limit).allowed
    with pytest.raises(TableFull):
        lim.acquire_sync("one-too-many", "/r", limit)
    clock.t += 1.5  # k0..k11 are full again: making room forgets them
    assert lim.acquire_sync("one-too-many", "/r", limit).allowed
    assert lim.active_buckets() == {"/r": 1}
    assert lim.live() == 1
    asyncio.run(lim.close())


@pytest.mark.parametrize("fail_closed", [False, True])
def test_guard_fails_open_or_closed_and_counts(table: str, fail_closed: bool) -> None:
    errors: list[int] = []
    limit = Limit(rate=1.0, burst=2)

    async def scenario() -> None:
        lim = Guarded(
            SharedLimiter(table, clock=Clock()),
            backend="shared",
            fail_closed=fail_closed,
            on_error=lambda: errors.append(1),
        )
        for i in range(12):
            assert (await lim.acquire(f"k{i}", "/r", limit)).allowed
        if fail_closed:
            with pytest.raises(ServiceUnavailable):
                await lim.acquire("x", "/r", limit)
        else:
            d = await lim.acquire("x", "/r", limit)
            assert d.allowed
            assert d.headers() == {"X-RateLimit-Limit": "2"}
        await lim.close()

    asyncio.run(scenario())
    assert errors == [1]


def test_decisions_sweep_only_once_a_quarter_of_the_table_is_live() -> None:
    """Below a quarter of max_live a decision leaves full-again buckets for the whole sweeps;
    above it decisions delete them a few slots at a time."""
    clock = Clock()
    path = create_table(64)  # 128 slots: 32 decisions pass the sweep over all of them
    lim = SharedLimiter(path, clock=clock, count_sweep_every=3600)
    limit, roomy = Limit(rate=1.0, burst=2), Limit(rate=1.0, burst=1000)
    try:
        # 10 + 1 live: nothing swept; 40 + 1: swept down to the threshold (a quarter of 64)
        for few_or_many, most_left, least_left in ((10, 11, 11), (40, 16, 12)):
            for i in range(few_or_many):
                lim.acquire_sync(f"k{i}", "/r", limit)
            clock.t += 5  # every k* bucket is full again
            for _ in range(64):
                assert lim.acquire_sync("busy", "/r", roomy).allowed
            assert least_left <= lim.live() <= most_left
            reachable(lim)
        lim.sweep()
        assert lim.live() == 1  # the busy key's bucket only
    finally:
        asyncio.run(lim.close())
        remove_table(path)


def test_the_remembered_key_hashes_stay_bounded(
    table: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(shared_module, "_HASH_MEMO", 4)
    clock = Clock()
    lim = SharedLimiter(table, clock=clock)
    limit = Limit(rate=1.0, burst=3)
    for i in range(10):
        assert lim.acquire_sync(f"k{i}", "/r", limit).remaining == 2
        assert len(lim._hashes) <= 4
    for i in range(10):  # forgotten hashes are computed again: the same buckets
        assert lim.acquire_sync(f"k{i}", "/r", limit).remaining == 1
    assert lim.live() == 10
    asyncio.run(lim.close())
