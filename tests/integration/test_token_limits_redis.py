"""Token limits shared through a real redis-server (SPEC §13): two router instances of two workers
each, one Redis, concurrent streams; reconciliation and budgets in Redis; fail-open and
fail-closed when Redis is gone."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import httpx
import pytest
import redis

from tests.conftest import base_profile
from tests.fakes.redis_server import RedisServer
from tests.fakes.upstream import FakeUpstream
from tests.integration.test_token_limits import (
    CHAT,
    body,
    estimate,
    metric,
    post,
    remaining,
    slow_stream,
)
from tests.support import RouterFactory, RouterProcess

pytestmark = pytest.mark.redis


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


def test_two_instances_admit_exactly_what_one_bucket_holds(
    redis_server: RedisServer, router_factory: RouterFactory, upstream: FakeUpstream
) -> None:
    """80 concurrent streams spread over two instances (2 workers each) against a bucket that
    holds 10 estimates: exactly 10 admitted in all; afterwards each is charged its usage."""
    upstream.reply_with(slow_stream)
    data = body(stream=True)
    est = estimate(data)
    burst = 10 * est + est // 2
    env = {"RATE_LIMIT_BACKEND": redis_server.url}
    profile = base_profile(upstream.url, tokenLimit={"tokensPerMinute": 1, "burst": burst})
    a = router_factory(profile, workers=2, env=env)
    b = router_factory(a.profile_path, workers=2, env=env)
    key = "sk-tok-redis-pair"
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}

    async def one(c: httpx.AsyncClient, url: str) -> int:
        return (await c.post(url + CHAT, content=data, headers=headers)).status_code

    async def spread() -> list[int]:
        async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=100)) as c:
            urls = [a.url, b.url]
            return list(await asyncio.gather(*(one(c, urls[i % 2]) for i in range(80))))

    statuses = asyncio.run(spread())
    assert statuses.count(200) == 10, statuses
    assert statuses.count(429) == 70
    assert sum(1 for r in upstream.requests if r.path == CHAT) == 10
    upstream.reset()
    after = post(b.url, body(), key)
    assert remaining(after) == burst - 10 * 10 - estimate(body())


def test_budget_keys_name_their_period_and_expire_with_it(
    redis_server: RedisServer, router_factory: RouterFactory, upstream: FakeUpstream
) -> None:
    env = {"RATE_LIMIT_BACKEND": redis_server.url}
    profile = base_profile(upstream.url, tokenBudgets={"daily": 100000, "monthly": 1000000})
    router = router_factory(profile, env=env)
    assert post(router.url, body(), "sk-tok-redis-budget").status_code == 200
    r = redis.Redis.from_url(redis_server.url)
    try:
        keys = sorted(k.decode() for k in r.scan_iter("api-router:tk:*"))
        daily = [k for k in keys if k.startswith("api-router:tk:daily:")]
        monthly = [k for k in keys if k.startswith("api-router:tk:monthly:")]
        assert len(daily) == 1 and len(monthly) == 1, keys
        assert "sk-tok-redis-budget" not in " ".join(keys)  # a hash of the key, never the key
        assert float(r.hget(daily[0], "tokens") or 0) == 10  # reconciled to the usage
        assert 0 < r.pttl(daily[0]) <= 86_400_000
        assert 0 < r.pttl(monthly[0]) <= 31 * 86_400_000
    finally:
        r.close()


def test_budgets_refunded_whole_leave_no_key(redis_server: RedisServer) -> None:
    """Made-up keys refused upstream (401) are refunded whole: each left its daily and monthly
    key in Redis, at 0, until its month ended; nothing bounded them."""
    from service.ratelimit.bucket import Meter
    from service.ratelimit.redis_backend import RedisTokens

    async def run() -> tuple[list[str], list[str]]:
        store = RedisTokens(redis_server.url, prefix="api-router:tk-refund:")
        try:
            for i in range(20):
                budgets = [
                    Meter("daily", f"junk{i}.d1", 3000, 0.0, 86_400.0, True),
                    Meter("monthly", f"junk{i}.m1", 9000, 0.0, 2_592_000.0, True),
                ]
                assert (await store.reserve(budgets, 120))[0] < 0
                await store.settle(budgets, 120)
            kept = [Meter("daily", "real.d1", 3000, 0.0, 86_400.0, True)]
            assert (await store.reserve(kept, 120))[0] < 0
            await store.settle(kept, 100)  # 20 used: kept
        finally:
            await store.close()
        r = redis.Redis.from_url(redis_server.url)
        try:
            return sorted(k.decode() for k in r.scan_iter("api-router:tk-refund:*")), [
                r.hget("api-router:tk-refund:daily:real.d1", "tokens").decode()
            ]
        finally:
            r.close()

    keys, level = asyncio.run(run())
    assert keys == ["api-router:tk-refund:daily:real.d1"] and float(level[0]) == 20


@pytest.mark.parametrize("fail_closed", [False, True], ids=["fail-open", "fail-closed"])
def test_redis_gone(
    router_factory: RouterFactory, upstream: FakeUpstream, fail_closed: bool
) -> None:
    with RedisServer() as server:
        env = {
            "RATE_LIMIT_BACKEND": server.url,
            "RATE_LIMIT_FAIL_CLOSED": "true" if fail_closed else "false",
        }
        profile = base_profile(upstream.url, tokenLimit={"tokensPerMinute": 1000})
        router: RouterProcess = router_factory(profile, env=env)
        assert post(router.url, body(), "sk-tok-gone").status_code == 200
    r = post(router.url, body(), "sk-tok-gone")
    assert r.status_code == (503 if fail_closed else 200)
    assert metric(router.url, "rate_limiter_backend_errors_total") >= 1
