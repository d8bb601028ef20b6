"""Rate limits on the real router (SPEC §7), embedded backend: exact across Sanic workers.

Every test talks HTTP to `python -m service` subprocesses in front of the fake upstream, and
counts what reached the upstream.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.proxy.headers import key_id
from service.ratelimit.bucket import Limit
from service.ratelimit.shared import SharedLimiter, create_table, remove_table
from tests.conftest import base_profile
from tests.fakes.upstream import FakeUpstream, Reply, openai_chat, openai_chat_stream
from tests.support import ROOT, RouterFactory, RouterProcess, write_profile

CHAT = "/v1/chat/completions"
EMBEDDINGS = "/v1/embeddings"
COMPLETIONS = "/v1/completions"
BODY = {"model": "gpt-4", "messages": [{"role": "user", "content": "hi"}]}
RATE_LIMITED = {
    "error": {
        "message": "Rate limit exceeded",
        "type": "rate_limit_error",
        "code": "rate_limit_exceeded",
    }
}
SECRET = "sk-ratelimit-test-secret-0123456789"


def post(url: str, path: str = CHAT, key: str | None = None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.post(url + path, json=BODY, headers=headers, timeout=10)


async def burst_of(url: str, n: int, key: str | None, path: str = CHAT) -> list[int]:
    """`n` requests at once, each on its own connection (its own client)."""
    headers = {"Authorization": f"Bearer {key}"} if key else {}

    async def one() -> int:
        async with httpx.AsyncClient(timeout=30) as c:
            r = await c.post(url + path, json=BODY, headers=headers)
            return r.status_code

    return list(await asyncio.gather(*(one() for _ in range(n))))


def sent_upstream(upstream: FakeUpstream, path: str, key: str | None) -> int:
    want = f"Bearer {key}" if key else None
    return sum(1 for r in upstream.requests if r.path == path and r.header("authorization") == want)


def buckets_gauge(url: str) -> float:
    text = httpx.get(url + "/metrics", timeout=5).text
    m = re.search(r"^rate_limiter_buckets(?:\{[^}]*\})? (\S+)$", text, re.M)
    assert m, text
    return float(m.group(1))


@pytest.fixture(scope="module")
def limited(fake_upstream: FakeUpstream, module_router_factory: RouterFactory) -> RouterProcess:
    """4 workers; profile limit burst 10, embeddings burst 2, completions unlimited; the
    environment's limit (burst 7) is overridden by the profile."""
    profile = base_profile(
        fake_upstream.url,
        rateLimit={"requestsPerMinute": 1, "burst": 10},
        endpoints={
            EMBEDDINGS: {"rateLimit": {"requestsPerMinute": 1, "burst": 2}},
            COMPLETIONS: {"rateLimit": {"requestsPerMinute": 0}},
        },
    )
    env = {"RATE_LIMIT_REQUESTS_PER_MINUTE": "1", "RATE_LIMIT_BURST": "7"}
    return module_router_factory(profile, workers=4, env=env)


def test_exact_across_four_workers(limited: RouterProcess, upstream: FakeUpstream) -> None:
    statuses = asyncio.run(burst_of(limited.url, 100, "sk-exact"))
    assert statuses.count(200) == 10, statuses
    assert statuses.count(429) == 90
    assert sent_upstream(upstream, CHAT, "sk-exact") == 10


def test_429_headers_and_body_and_nothing_upstream(
    limited: RouterProcess, upstream: FakeUpstream
) -> None:
    key = "sk-shape"
    ok = [post(limited.url, key=key) for _ in range(10)]
    for i, r in enumerate(ok):
        assert r.status_code == 200
        assert r.headers["X-RateLimit-Limit"] == "10"
        assert r.headers["X-RateLimit-Remaining"] == str(9 - i)
        assert int(r.headers["X-RateLimit-Reset"]) >= 1
        assert "Retry-After" not in r.headers
    before = len(upstream.requests)
    r = post(limited.url, key=key)
    assert r.status_code == 429
    assert r.json() == RATE_LIMITED
    assert r.headers["content-type"].startswith("application/json")
    # one token per minute: the next one exists in at most 60 s
    assert 1 <= int(r.headers["Retry-After"]) <= 60
    assert r.headers["X-RateLimit-Limit"] == "10"
    assert r.headers["X-RateLimit-Remaining"] == "0"
    assert int(r.headers["X-RateLimit-Reset"]) >= int(r.headers["Retry-After"])
    assert r.headers["X-Request-ID"]
    assert len(upstream.requests) == before


def test_endpoint_over_profile_over_environment(
    limited: RouterProcess, upstream: FakeUpstream
) -> None:
    key = "sk-precedence"
    emb = [post(limited.url, EMBEDDINGS, key).status_code for _ in range(4)]
    assert emb == [200, 200, 429, 429]  # endpoint: burst 2
    chat = [post(limited.url, CHAT, key).status_code for _ in range(11)]
    assert chat == [200] * 10 + [429]  # profile: burst 10, not the environment's 7
    comp = [post(limited.url, COMPLETIONS, key) for _ in range(15)]
    assert all(r.status_code == 200 for r in comp)  # endpoint requestsPerMinute 0: unlimited
    assert all("X-RateLimit-Limit" not in r.headers for r in comp)


def test_buckets_are_per_key_and_route_and_anonymous_requests_share_one(
    limited: RouterProcess, upstream: FakeUpstream
) -> None:
    assert [post(limited.url, EMBEDDINGS, "sk-a").status_code for _ in range(3)] == [200, 200, 429]
    # another key, and the same key on another route, have their own buckets
    assert post(limited.url, EMBEDDINGS, "sk-b").status_code == 200
    assert post(limited.url, CHAT, "sk-a").status_code == 200
    # anonymous clients, each on its own connection, share one bucket per route
    statuses = asyncio.run(burst_of(limited.url, 5, None, EMBEDDINGS))
    assert sorted(statuses) == [200, 200, 429, 429, 429]
    assert sent_upstream(upstream, EMBEDDINGS, None) == 2
    assert post(limited.url, CHAT).status_code == 200


def test_a_key_in_another_form_has_its_own_bucket(limited: RouterProcess) -> None:
    """Keys sent as `x-goog-api-key`, `api-key` or `?key=` (forwarded as they are on an open
    router) keyed no bucket: their clients all shared the anonymous one, one using up
    another's (SPEC §7: one bucket per client credential)."""
    url = limited.url + EMBEDDINGS
    doc = {"model": "gpt-4", "input": "x"}
    forms: list[dict[str, Any]] = [
        {"headers": {"x-goog-api-key": "goog-1"}},
        {"headers": {"api-key": "azure-1"}},
        {"params": {"key": "query-1"}},
    ]
    for form in forms:  # each its own bucket of 2 (the endpoint's burst)
        got = [httpx.post(url, json=doc, timeout=10, **form).status_code for _ in range(3)]
        assert got == [200, 200, 429], form
    other = httpx.post(url, json=doc, timeout=10, headers={"x-goog-api-key": "goog-2"})
    assert other.status_code == 200  # another key of the same form: another bucket
    ids = {e["key_id"] for e in limited.logs() if e.get("event") == "request_completed"
           and e.get("route") == EMBEDDINGS}  # fmt: skip
    assert len(ids) >= 4  # a short hash each, never the key
    assert all(k not in " ".join(ids) for k in ("goog-1", "azure-1", "query-1"))


def test_with_a_default_key_a_made_up_key_of_another_form_buys_no_bucket(
    fake_upstream: FakeUpstream, router_factory: RouterFactory
) -> None:
    """With DEFAULT_API_KEY the upstream gets the operator's key for a client that sends none
    as Bearer / x-api-key: a new made-up `x-goog-api-key` per request must not get a fresh
    bucket each time (the diff review found exactly that); they share the default's."""
    profile = base_profile(fake_upstream.url, rateLimit={"requestsPerMinute": 1, "burst": 2})
    router = router_factory(profile, env={"DEFAULT_API_KEY": "sk-operator-default"})
    doc = {"model": "gpt-4", "input": "x"}
    got = [
        httpx.post(router.url + EMBEDDINGS, json=doc, timeout=10,
                   headers={"x-goog-api-key": f"made-up-{i}"}).status_code
        for i in range(4)
    ]  # fmt: skip
    assert got == [200, 200, 429, 429]


def test_only_proxied_post_routes_are_limited(limited: RouterProcess) -> None:
    for _ in range(3):
        post(limited.url, EMBEDDINGS, "sk-get")
    for path in ("/health", "/ready", "/v1/models", "/metrics"):
        for _ in range(12):
            r = httpx.get(limited.url + path, timeout=5)
            assert r.status_code == 200, path
            assert "X-RateLimit-Limit" not in r.headers
    r = httpx.get(limited.url + EMBEDDINGS, headers={"Authorization": "Bearer sk-get"})
    assert r.status_code == 405


def test_credential_never_in_logs_metrics_or_health(limited: RouterProcess) -> None:
    statuses = [post(limited.url, EMBEDDINGS, SECRET).status_code for _ in range(3)]
    assert statuses == [200, 200, 429]
    health = httpx.get(limited.url + "/health", timeout=5).text
    metrics = httpx.get(limited.url + "/metrics", timeout=5).text
    logs = limited.output()
    for text in (health, metrics, logs):
        assert SECRET not in text
        assert SECRET[3:20] not in text
    # the 429 is logged with the key's hash only
    refused = [
        rec
        for rec in limited.access_logs()
        if rec.get("status_code") == 429 and rec.get("key_id") == key_id(SECRET)
    ]
    assert refused


def test_unknown_backend_is_refused_at_start(tmp_path: Path) -> None:
    path = write_profile(tmp_path, base_profile("http://127.0.0.1:9"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("API_ROUTER_", "RATE_LIMIT_"))}
    env["RATE_LIMIT_BACKEND"] = "memcached://:pw-secret@127.0.0.1:11211"
    r = subprocess.run(
        [sys.executable, "-m", "service", "--config", str(path), "--workers", "1"],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=30,
    )
    assert r.returncode == 2
    assert r.stderr.startswith("api-router: error: RATE_LIMIT_BACKEND must be")
    assert len(r.stderr.strip().splitlines()) == 1
    assert "pw-secret" not in r.stderr


# -- bounded memory -------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_100k_keys_are_forgotten_once_full_again() -> None:
    """The table the CLI shares between workers, driven directly: 100,000 keys, then none."""
    path = create_table()  # the CLI's default size
    clock = Clock()
    lim = SharedLimiter(path, clock=clock)
    other = SharedLimiter(path, clock=clock)  # a second worker's handle on the same table
    limit = Limit.per_minute(60, 5)
    assert limit is not None
    try:
        for i in range(100_000):
            route = CHAT if i % 4 else EMBEDDINGS
            assert lim.acquire_sync(key_id(f"sk-{i}"), route, limit).allowed
        assert other.active_buckets() == {CHAT: 75_000, EMBEDDINGS: 25_000}
        clock.t += 0.5  # not full yet (one token refills in 1 s): nothing is forgotten
        assert sum(lim.active_buckets().values()) == 100_000
        clock.t += 0.6  # full again
        assert other.active_buckets() == {}
        assert lim.live() == 0
        # the same keys start over with full buckets
        assert lim.acquire_sync(key_id("sk-1"), CHAT, limit).remaining == 4
    finally:
        asyncio.run(lim.close())
        asyncio.run(other.close())
        remove_table(path)


def health_buckets(url: str) -> dict[str, Any]:
    return dict(httpx.get(url + "/health", timeout=5).json()["rateLimiter"])


def test_live_buckets_in_health_and_gauge_agree_and_fall_back(
    fake_upstream: FakeUpstream, router_factory: RouterFactory
) -> None:
    # 10 requests a minute, burst 1: a used bucket is full again 6 s later
    profile = base_profile(fake_upstream.url, rateLimit={"requestsPerMinute": 10, "burst": 1})
    r = router_factory(profile, workers=2)
    asyncio.run(many_keys(r.url, 40, CHAT))
    asyncio.run(many_keys(r.url, 8, EMBEDDINGS))
    # every worker sees the same instance-wide count (ask several times: any worker answers)
    seen = [health_buckets(r.url) for _ in range(4)]
    gauge = buckets_gauge(r.url)
    assert {"activeBuckets": 48, "routes": {CHAT: 40, EMBEDDINGS: 8}} in seen
    assert gauge == 48
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        h = health_buckets(r.url)
        if h["activeBuckets"] == 0:
            break
        time.sleep(0.25)
    assert h == {"activeBuckets": 0, "routes": {}}
    assert buckets_gauge(r.url) == 0


async def many_keys(url: str, n: int, path: str) -> None:
    async with httpx.AsyncClient(timeout=10) as c:
        for i in range(n):
            resp = await c.post(
                url + path, json=BODY, headers={"Authorization": f"Bearer sk-many-{path}-{i}"}
            )
            assert resp.status_code == 200


# -- hot reload --------------------------------------------------------------------------------


def test_a_reload_that_changes_the_limit_applies_to_new_decisions(
    fake_upstream: FakeUpstream, upstream: FakeUpstream, router_factory: RouterFactory
) -> None:
    env = {"RATE_LIMIT_REQUESTS_PER_MINUTE": "1", "RATE_LIMIT_BURST": "3"}
    r = router_factory(base_profile(fake_upstream.url), workers=2, env=env)
    path = r.profile_path
    # no profile limit: the environment's burst 3
    assert [post(r.url, key="sk-r1").status_code for _ in range(4)] == [200] * 3 + [429]
    reloads = httpx.get(r.url + "/health").json()["config"]["reloads"]
    time.sleep(1.1)  # a different mtime second for the new file
    path.write_text(
        json.dumps(base_profile(fake_upstream.url, rateLimit={"requestsPerMinute": 1, "burst": 5}))
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        # every worker must have reloaded: ask until several answers in a row say so
        states = [httpx.get(r.url + "/health").json()["config"] for _ in range(6)]
        if all(s["reloads"] > reloads for s in states):
            break
        time.sleep(0.3)
    statuses = [post(r.url, key="sk-r2").status_code for _ in range(6)]
    assert statuses == [200] * 5 + [429]
    d = post(r.url, key="sk-r3")
    assert d.headers["X-RateLimit-Limit"] == "5"


def test_100k_live_keys_in_a_running_router_then_none(
    fake_upstream: FakeUpstream, router_factory: RouterFactory
) -> None:
    """100,000 live buckets in the table a running 2-worker router shares: /health and the
    `rate_limiter_buckets` gauge both report them, and both fall back to 0 once they refill.
    (The keys go in through the table itself, as a worker would: 100,000 HTTP requests would
    take minutes here.)"""
    from service.ratelimit.shared import TABLE_ENV

    r = router_factory(base_profile(fake_upstream.url), workers=2)
    assert r.proc is not None
    children = Path(f"/proc/{r.proc.pid}/task/{r.proc.pid}/children").read_text().split()
    environ = Path(f"/proc/{children[-1]}/environ").read_bytes().split(b"\0")
    table = next(
        v.split(b"=", 1)[1].decode() for v in environ if v.startswith(TABLE_ENV.encode() + b"=")
    )
    lim = SharedLimiter(table)
    limit = Limit.per_minute(6, 1)  # a used bucket is full again 10 s later
    assert limit is not None
    try:
        for i in range(100_000):
            assert lim.acquire_sync(f"k{i:06d}", CHAT if i % 4 else EMBEDDINGS, limit).allowed
        want = {"activeBuckets": 100_000, "routes": {CHAT: 75_000, EMBEDDINGS: 25_000}}
        deadline = time.monotonic() + 5  # each worker recounts at most once a second
        while health_buckets(r.url) != want and time.monotonic() < deadline:
            time.sleep(0.2)
        assert health_buckets(r.url) == want
        assert buckets_gauge(r.url) == 100_000
        deadline = time.monotonic() + 20
        while health_buckets(r.url)["activeBuckets"] and time.monotonic() < deadline:
            time.sleep(0.5)
        assert health_buckets(r.url) == {"activeBuckets": 0, "routes": {}}
        assert buckets_gauge(r.url) == 0
    finally:
        asyncio.run(lim.close())


def test_the_router_s_own_errors_carry_the_limit_headers_too(
    router_factory: RouterFactory,
) -> None:
    """docs/ratelimit.md: allowed responses carry X-RateLimit-*. An upstream that is down makes
    the router answer 502 itself, after the request passed the limit: its answer carried none
    (a client pacing itself on them lost count exactly when things went wrong)."""
    from tests.support import free_port

    profile = base_profile(
        f"http://127.0.0.1:{free_port()}",
        rateLimit={"requestsPerMinute": 60, "burst": 5},
        tokenLimit={"tokensPerMinute": 1, "burst": 100000},
    )
    r = router_factory(profile)
    resp = post(r.url, key="sk-own-errors")
    assert resp.status_code == 502
    assert resp.headers["X-RateLimit-Limit"] == "5"
    assert resp.headers["X-RateLimit-Remaining"] == "4"
    assert "x-ratelimit-remaining-tokens" in resp.headers
    assert resp.json()["error"]["code"] == "upstream_connect_error"


def test_the_upstream_s_own_rate_limit_headers_win_over_the_router_s(
    limited: RouterProcess, upstream: FakeUpstream
) -> None:
    """SPEC §5: the upstream's rate-limit headers reach the client unchanged. An upstream that
    sends `X-RateLimit-Limit` of its own: the client got it joined with the router's
    (`999, 10`), a value that is neither; the router's headers the upstream has not sent are
    still added. The same on a stream's head."""
    own = [("X-RateLimit-Limit", "999"), ("X-RateLimit-Reset", "42")]
    answer = json.dumps(openai_chat("m")).encode()
    upstream.reply_with(Reply(headers=[("Content-Type", "application/json"), *own], body=answer))
    r = post(limited.url, key="sk-upstream-own")
    assert r.status_code == 200
    assert r.headers.get_list("x-ratelimit-limit") == ["999"]
    assert r.headers.get_list("x-ratelimit-reset") == ["42"]
    assert r.headers.get_list("x-ratelimit-remaining") == ["9"]  # the router's own
    events = [(0.0, e.encode()) for e in openai_chat_stream("m")]
    upstream.reply_with(Reply(headers=[("Content-Type", "text/event-stream"), *own], chunks=events))
    with httpx.stream(
        "POST",
        limited.url + CHAT,
        json={"model": "m", "stream": True, "messages": []},
        headers={"Authorization": "Bearer sk-upstream-own"},
    ) as s:
        assert s.status_code == 200
        assert s.headers.get_list("x-ratelimit-limit") == ["999"]
        assert s.headers.get_list("x-ratelimit-remaining") == ["8"]
