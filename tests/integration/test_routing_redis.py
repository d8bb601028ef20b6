"""A routing file's ejections and cooldowns agreed across two replicas sharing a real Redis
(SPEC §11, service.ejection_redis)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from tests.fakes.redis_server import RedisServer
from tests.fakes.upstream import FakeUpstream, default_reply
from tests.integration.test_routing import CHAT, chat, error, post, routing_file
from tests.scrape import scrape, value
from tests.support import RouterFactory, free_port

pytestmark = pytest.mark.redis


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    # One per test: the ejections and cooldowns it holds are keyed by upstream name, which every
    # test here shares ("primary"), so a module-wide server would carry one test's ejection into
    # the next.
    with RedisServer() as server:
        yield server


@pytest.fixture
def upstreams() -> Iterator[tuple[FakeUpstream, FakeUpstream]]:
    with FakeUpstream() as a, FakeUpstream() as b:
        yield a, b


def wait_for(check, secs: float = 5.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + secs
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.1)
    return False


def test_an_upstream_one_replica_ejected_is_skipped_by_the_other(
    redis_server: RedisServer,
    upstreams: tuple[FakeUpstream, FakeUpstream],
    router_factory: RouterFactory,
) -> None:
    primary, secondary = upstreams
    data = routing_file(
        primary, secondary, outlierDetection={"consecutiveFailures": 2, "baseEjectionSecs": 60}
    )
    env = {"RATE_LIMIT_BACKEND": redis_server.url}
    a = router_factory(data, env=env, name="replica-a")
    b = router_factory(data, env=env, name="replica-b")
    primary.reply_with(lambda _r: error(503))
    r = post(a, CHAT, chat("gpt-4o"))  # two 503s from the primary: ejected on replica a
    assert r.headers["x-router-upstream"] == "secondary"
    assert len(primary.requests) == 2
    assert value(scrape(a.url), "upstream_ejected", upstream="primary") == 1
    # replica b adopts the ejection within its sync interval, without a request of its own
    assert wait_for(lambda: value(scrape(b.url), "upstream_ejected", upstream="primary") == 1)
    for _ in range(5):
        r = post(b, CHAT, chat("gpt-4o"))
        assert r.headers["x-router-upstream"] == "secondary"
        assert r.headers["x-router-attempts"] == "1"
    assert len(primary.requests) == 2  # replica b never asked the ejected primary


def test_a_cooldown_one_replica_was_asked_for_holds_on_the_other(
    redis_server: RedisServer,
    upstreams: tuple[FakeUpstream, FakeUpstream],
    router_factory: RouterFactory,
) -> None:
    primary, secondary = upstreams
    env = {"RATE_LIMIT_BACKEND": redis_server.url}
    data = routing_file(primary, secondary)
    a = router_factory(data, env=env, name="cool-a")
    b = router_factory(data, env=env, name="cool-b")
    primary.reply_with(lambda _r: error(429, **{"Retry-After": "90"}))
    r = post(a, CHAT, chat("small"))  # small: the primary only
    assert r.status_code == 429
    time.sleep(2.0)  # four sync intervals
    r = post(b, CHAT, chat("small"))
    assert r.status_code == 503
    assert r.json()["error"]["code"] == "upstreams_unavailable"
    assert 60 <= int(r.headers["retry-after"]) <= 90
    assert len(primary.requests) == 1


def test_a_redis_down_is_logged_once_per_interval_not_per_sync(
    upstreams: tuple[FakeUpstream, FakeUpstream], router_factory: RouterFactory
) -> None:
    """Each worker reads the published ejections every 0.5 s: with Redis down that wrote a
    warning each time, idle or not (14,000 lines an hour per two-worker pod). One line per
    5 s now, saying how many it stands for."""
    primary, secondary = upstreams
    nowhere = f"redis://127.0.0.1:{free_port()}/0"
    env = {"RATE_LIMIT_BACKEND": nowhere, "LOG_FORMAT": "json"}
    router = router_factory(routing_file(primary, secondary), env=env, name="redis-down")
    first = router.wait_for_log(lambda x: x.get("event") == "ejection_share_failed")
    assert first["step"] == "read" and first["suppressed"] == 0
    time.sleep(3.0)  # six syncs
    lines = [x for x in router.logs() if x.get("event") == "ejection_share_failed"]
    assert len(lines) == 1, lines


def test_a_short_retry_after_is_waited_out_and_retried_with_redis(
    redis_server: RedisServer,
    upstreams: tuple[FakeUpstream, FakeUpstream],
    router_factory: RouterFactory,
) -> None:
    """A lone request, one target: 429 `Retry-After: 1`, then 200. The cooldown the 429 set comes
    back from Redis a moment later than it was set here; the retry after the 1 s wait must not
    take that for another request's longer cooldown (a review caught every such request ending
    with its 429)."""
    primary, secondary = upstreams
    data = routing_file(primary, secondary)
    data["retry"]["maxRetryAfterSecs"] = 5
    router = router_factory(data, env={"RATE_LIMIT_BACKEND": redis_server.url}, name="echo")
    answers = iter([error(429, **{"Retry-After": "1"})])
    primary.reply_with(lambda r: next(answers, None) or default_reply(r))
    r = post(router, CHAT, chat("small"))  # one target on primary, no fallbacks
    assert r.status_code == 200
    assert r.headers["x-router-attempts"] == "2"
    assert len(primary.requests) == 2
