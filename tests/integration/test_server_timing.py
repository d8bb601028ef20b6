"""`Server-Timing` on every response the router makes or relays (SPEC §14, service/timing.py):
JSON answers, errors, 429s, 404s, /health, streams (at their head), with metrics and logs off
too; and the same router time that `router_overhead_seconds` records."""

from __future__ import annotations

import json
import re

import httpx
import pytest

from tests.conftest import base_profile
from tests.fakes.upstream import FakeUpstream, Reply, openai_chat_stream
from tests.scrape import scrape, value
from tests.support import RouterFactory, RouterProcess

CHAT = "/v1/chat/completions"
BODY = {"model": "gpt-4", "messages": [{"role": "user", "content": "hi"}]}


def timing(r: httpx.Response) -> dict[str, tuple[float, str | None]]:
    """Server-Timing as {name: (dur in ms, desc)}."""
    out: dict[str, tuple[float, str | None]] = {}
    for metric in r.headers["server-timing"].split(","):
        name, *params = [p.strip() for p in metric.split(";")]
        kv = dict(p.split("=", 1) for p in params)
        desc = kv.get("desc")
        out[name] = (float(kv["dur"]), desc.strip('"') if desc else None)
    return out


@pytest.fixture(scope="module")
def timed(fake_upstream: FakeUpstream, module_router_factory: RouterFactory) -> RouterProcess:
    profile = base_profile(
        fake_upstream.url,
        streamConfig={"heartbeatIntervalSecs": 0.3},
        endpoints={"/v1/embeddings": {"rateLimit": {"requestsPerMinute": 1, "burst": 1}}},
    )
    return module_router_factory(profile)


def test_json_answer_carries_router_and_upstream_time_the_same_as_the_metric(
    timed: RouterProcess, upstream: FakeUpstream
) -> None:
    upstream.reply_with(
        Reply(delay=0.2, headers=[("Content-Type", "application/json")],
              body=json.dumps({"id": "x", "choices": []}).encode())
    )  # fmt: skip
    before = value(scrape(timed.url), "router_overhead_seconds_sum", route=CHAT)
    r = httpx.post(timed.url + CHAT, json=BODY, timeout=10)
    after = value(scrape(timed.url), "router_overhead_seconds_sum", route=CHAT)
    t = timing(r)
    assert set(t) == {"router", "upstream"}
    assert t["upstream"][0] >= 200.0
    assert 0 < t["router"][0] < t["upstream"][0]
    # The one number, in the header and in the histogram (one worker, one request between).
    assert (after - before) * 1000 == pytest.approx(t["router"][0], abs=0.0011)


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/health", 200),
        ("GET", "/metrics", 200),
        ("GET", "/nope", 404),
        ("GET", CHAT, 405),
        ("POST", CHAT, 400),  # invalid JSON
    ],
)
def test_router_made_answers_carry_the_router_time(
    timed: RouterProcess, method: str, path: str, status: int
) -> None:
    r = httpx.request(method, timed.url + path, content=b"{not json", timeout=10)
    assert r.status_code == status
    t = timing(r)
    assert set(t) == {"router"}
    assert t["router"][0] > 0


def test_a_429_carries_it(timed: RouterProcess, upstream: FakeUpstream) -> None:
    body = {"model": "m", "input": "x"}
    codes = [httpx.post(timed.url + "/v1/embeddings", json=body, timeout=10) for _ in range(2)]
    assert [r.status_code for r in codes] == [200, 429]
    assert set(timing(codes[0])) == {"router", "upstream"}
    assert set(timing(codes[1])) == {"router"}


def test_an_upstream_error_and_an_unreachable_upstream_carry_it(
    timed: RouterProcess, upstream: FakeUpstream
) -> None:
    upstream.reply_with(Reply(status=503, body=b"busy"))
    r = httpx.post(timed.url + CHAT, json=BODY, timeout=10)
    assert r.status_code == 503 and set(timing(r)) == {"router", "upstream"}
    upstream.reply_with(Reply(action="reset"))
    r = httpx.post(timed.url + CHAT, json=BODY, timeout=10)
    assert r.status_code == 502 and "router" in timing(r)


def test_a_stream_head_carries_the_time_to_it(timed: RouterProcess, upstream: FakeUpstream) -> None:
    events = openai_chat_stream("up-model-4")
    upstream.reply_with(
        Reply(delay=0.15, headers=[("Content-Type", "text/event-stream")],
              chunks=[(0.0, e.encode()) for e in events])
    )  # fmt: skip
    with httpx.stream("POST", timed.url + CHAT, json={**BODY, "stream": True}, timeout=10) as r:
        t = timing(r)
        r.read()
    assert set(t) == {"router", "upstream", "ttfb"}
    assert t["upstream"][1] == "head" and t["upstream"][0] >= 150.0
    assert t["ttfb"][0] == pytest.approx(t["router"][0] + t["upstream"][0], abs=0.0021)


def test_a_stream_committed_by_heartbeats_has_no_upstream_time_yet(
    timed: RouterProcess, upstream: FakeUpstream
) -> None:
    events = openai_chat_stream("up-model-4")
    upstream.reply_with(
        Reply(delay=0.8, headers=[("Content-Type", "text/event-stream")],
              chunks=[(0.0, e.encode()) for e in events])
    )  # fmt: skip
    with httpx.stream("POST", timed.url + CHAT, json={**BODY, "stream": True}, timeout=10) as r:
        t = timing(r)
        r.read()
    assert set(t) == {"ttfb"}  # the wait was the upstream's; its split is not known yet
    assert t["ttfb"][0] >= 300.0  # the heartbeat interval


def test_with_metrics_and_logs_off_it_is_still_there(
    router_factory: RouterFactory, upstream: FakeUpstream
) -> None:
    router = router_factory(
        base_profile(upstream.url),
        env={"API_ROUTER_METRICS": "false", "API_ROUTER_ACCESS_LOG": "false"},
    )
    r = httpx.post(router.url + CHAT, json=BODY, timeout=10)
    assert set(timing(r)) == {"router", "upstream"}
    assert re.fullmatch(
        r"router;dur=\d+\.\d{3}, upstream;dur=\d+\.\d{3}", r.headers["server-timing"]
    )
    assert set(timing(httpx.get(router.url + "/health", timeout=10))) == {"router"}
