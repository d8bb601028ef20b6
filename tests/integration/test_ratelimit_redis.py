"""Rate limits shared through a real redis-server (SPEC §7): exact across two router instances,
keys that expire, fail-open / fail-closed when Redis is gone, /ready following Redis."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Iterator

import httpx
import pytest
import redis

from service.proxy.headers import key_id
from tests.conftest import base_profile
from tests.fakes.redis_server import RedisServer
from tests.fakes.upstream import FakeUpstream
from tests.integration.test_ratelimit import (
    BODY,
    CHAT,
    EMBEDDINGS,
    RATE_LIMITED,
    SECRET,
    post,
    sent_upstream,
)
from tests.support import RouterFactory, RouterProcess, free_port

pytestmark = pytest.mark.redis


def limited_profile(url: str) -> dict[str, object]:
    return base_profile(
        url,
        rateLimit={"requestsPerMinute": 1, "burst": 10},
        # 60 a minute, burst 1: a used bucket is full again (and its key gone) after 1 s
        endpoints={EMBEDDINGS: {"rateLimit": {"requestsPerMinute": 60, "burst": 1}}},
    )


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


@pytest.fixture(scope="module")
def pair(
    redis_server: RedisServer, fake_upstream: FakeUpstream, module_router_factory: RouterFactory
) -> tuple[RouterProcess, RouterProcess]:
    """Two router instances (2 workers each) sharing one Redis."""
    env = {"RATE_LIMIT_BACKEND": redis_server.url}
    a = module_router_factory(limited_profile(fake_upstream.url), workers=2, env=env)
    return a, module_router_factory(a.profile_path, workers=2, env=env)


def metric(url: str, name: str) -> float:
    text = httpx.get(url + "/metrics", timeout=5).text
    m = re.search(rf"^{name}(?:\{{[^}}]*\}})? (\S+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


async def spread(urls: list[str], n: int, key: str) -> list[int]:
    """`n` requests at once over the instances in turn, each on its own connection."""

    async def one(url: str) -> int:
        async with httpx.AsyncClient(timeout=30) as c:
            r = await c.post(url + CHAT, json=BODY, headers={"Authorization": f"Bearer {key}"})
            return r.status_code

    return list(await asyncio.gather(*(one(urls[i % len(urls)]) for i in range(n))))


def test_exact_across_two_instances(
    pair: tuple[RouterProcess, RouterProcess], upstream: FakeUpstream
) -> None:
    a, b = pair
    statuses = asyncio.run(spread([a.url, b.url], 100, "sk-redis-exact"))
    assert statuses.count(200) == 10, statuses
    assert statuses.count(429) == 90
    assert sent_upstream(upstream, CHAT, "sk-redis-exact") == 10
    # the bucket is shared: the other instance refuses too, with the 429 of SPEC §7
    for r in (post(a.url, key="sk-redis-exact"), post(b.url, key="sk-redis-exact")):
        assert r.status_code == 429
        assert r.json() == RATE_LIMITED
        assert int(r.headers["Retry-After"]) >= 1
        assert r.headers["X-RateLimit-Remaining"] == "0"


def test_keys_hold_a_hash_only_and_expire_when_full_again(
    pair: tuple[RouterProcess, RouterProcess], redis_server: RedisServer
) -> None:
    a, b = pair
    client = redis.Redis.from_url(redis_server.url)
    try:
        assert post(a.url, EMBEDDINGS, SECRET).status_code == 200
        assert post(b.url, EMBEDDINGS, SECRET).status_code == 429  # one bucket for both
        key = f"api-router:rl:{EMBEDDINGS}:{key_id(SECRET)}".encode()
        keys = client.keys("*")
        assert key in keys
        assert all(SECRET.encode() not in k and SECRET[3:20].encode() not in k for k in keys)
        assert 0 < client.pttl(key) <= 1000  # expires when full again
        for rec in a.logs() + b.logs():
            assert SECRET not in str(rec)
        # several distinct keys on the short-lived route, then they all expire
        for i in range(5):
            assert post(a.url, EMBEDDINGS, f"sk-expire-{i}").status_code == 200
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and client.keys(f"api-router:rl:{EMBEDDINGS}:*"):
            time.sleep(0.1)
        assert client.keys(f"api-router:rl:{EMBEDDINGS}:*") == []
    finally:
        client.close()


def test_health_and_gauge_count_live_keys(
    pair: tuple[RouterProcess, RouterProcess], redis_server: RedisServer
) -> None:
    a, _ = pair
    client = redis.Redis.from_url(redis_server.url)
    try:
        for i in range(3):
            assert post(a.url, key=f"sk-count-{i}").status_code == 200  # live for a minute
        # a worker recounts in the background at most twice a second: ask until it has
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            live = len(client.keys(f"api-router:rl:{CHAT}:*"))
            h = httpx.get(a.url + "/health", timeout=5).json()["rateLimiter"]
            gauge = metric(a.url, "rate_limiter_buckets")
            if h["routes"].get(CHAT) == live and gauge == h["activeBuckets"]:
                break
            time.sleep(0.2)
        assert live >= 3
        assert h["routes"][CHAT] == live
        assert h["activeBuckets"] == sum(h["routes"].values())
        assert gauge == h["activeBuckets"]
    finally:
        client.close()


def test_unreachable_redis_fails_open_logged_and_counted(
    fake_upstream: FakeUpstream, upstream: FakeUpstream, router_factory: RouterFactory
) -> None:
    nowhere = f"redis://:hunter2-password@127.0.0.1:{free_port()}/0"
    profile = limited_profile(fake_upstream.url)
    r = router_factory(profile, workers=1, env={"RATE_LIMIT_BACKEND": nowhere})
    statuses = [post(r.url, key="sk-open").status_code for _ in range(12)]
    assert statuses == [200] * 12  # served although no limit could be checked
    assert sent_upstream(upstream, CHAT, "sk-open") == 12
    assert metric(r.url, "rate_limiter_backend_errors_total") == 12
    rec = r.wait_for_log(lambda x: x.get("event") == "rate_limiter_backend_error")
    assert rec["backend"] == "redis"
    assert rec["action"] == "allowed"
    ready = httpx.get(r.url + "/ready")
    assert ready.status_code == 200  # fail-open: still ready, and says why limits are off
    assert ready.json()["rateLimiter"] == "down"
    assert "hunter2-password" not in r.output()


@pytest.mark.parametrize("refusal", ["out-of-memory", "read-only"])
def test_ready_says_down_when_redis_answers_but_takes_no_decision(
    fake_upstream: FakeUpstream, router_factory: RouterFactory, refusal: str
) -> None:
    """A Redis out of memory (noeviction) or demoted to a read-only replica answers PING and
    refuses every decision: /ready said "ok" while fail-closed refused every request (503) and
    fail-open served them unlimited. It is "down" now, and "ok" again once Redis takes writes."""
    server = RedisServer().start()
    client = redis.Redis.from_url(server.url)
    try:
        env = {"RATE_LIMIT_BACKEND": server.url, "RATE_LIMIT_FAIL_CLOSED": "true"}
        r = router_factory(limited_profile(fake_upstream.url), workers=1, env=env)
        assert httpx.get(r.url + "/ready").json()["rateLimiter"] == "ok"
        if refusal == "out-of-memory":
            client.config_set("maxmemory-policy", "noeviction")
            client.config_set("maxmemory", "1")
        else:
            client.execute_command("REPLICAOF", "127.0.0.1", str(free_port()))
        assert post(r.url, key="sk-refused").status_code == 503
        ready = httpx.get(r.url + "/ready")
        assert (ready.status_code, ready.json()["rateLimiter"]) == (503, "down")
        if refusal == "out-of-memory":
            client.config_set("maxmemory", "0")
        else:
            client.execute_command("REPLICAOF", "NO", "ONE")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and httpx.get(r.url + "/ready").status_code != 200:
            time.sleep(0.2)
        assert httpx.get(r.url + "/ready").json()["rateLimiter"] == "ok"
        assert post(r.url, key="sk-refused").status_code == 200
        assert [k for k in client.keys("*") if b"health" in k and client.pttl(k) < 0] == []
    finally:
        client.close()
        server.stop()


def test_the_first_decision_after_a_redis_restart_is_decided(
    fake_upstream: FakeUpstream, router_factory: RouterFactory
) -> None:
    """A restart closes every pooled connection: the first command on one failed, and each
    worker then refused (fail-closed) or let through unlimited (fail-open) for a second with
    Redis up. A closed connection is tried again once, at once."""
    server = RedisServer().start()
    try:
        env = {"RATE_LIMIT_BACKEND": server.url, "RATE_LIMIT_FAIL_CLOSED": "true"}
        r = router_factory(limited_profile(fake_upstream.url), workers=1, env=env)
        assert post(r.url, key="sk-restart").status_code == 200  # the pool holds a connection
        server.stop()
        server = RedisServer(port=server.port).start()
        assert post(r.url, key="sk-restart").status_code == 200
        assert metric(r.url, "rate_limiter_backend_errors_total") == 0
    finally:
        server.stop()


def test_fail_closed_refuses_and_ready_follows_redis(
    fake_upstream: FakeUpstream, upstream: FakeUpstream, router_factory: RouterFactory
) -> None:
    server = RedisServer().start()
    try:
        env = {"RATE_LIMIT_BACKEND": server.url, "RATE_LIMIT_FAIL_CLOSED": "true"}
        r = router_factory(limited_profile(fake_upstream.url), workers=1, env=env)
        assert post(r.url, key="sk-closed").status_code == 200
        server.stop()
        resp = post(r.url, key="sk-closed")
        assert resp.status_code == 503
        assert resp.json()["error"]["code"] == "service_unavailable"
        assert sent_upstream(upstream, CHAT, "sk-closed") == 1
        ready = httpx.get(r.url + "/ready")
        assert ready.status_code == 503
        assert ready.json()["rateLimiter"] == "down"
        assert metric(r.url, "rate_limiter_backend_errors_total") >= 1
        server = RedisServer(port=server.port).start()  # Redis is back
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if httpx.get(r.url + "/ready").status_code == 200:
                break
            time.sleep(0.2)
        assert httpx.get(r.url + "/ready").json()["rateLimiter"] == "ok"
        # a fresh Redis has a fresh bucket: limits apply again
        assert post(r.url, key="sk-closed").status_code == 200
    finally:
        server.stop()
