"""Token limits and budgets on the real router (SPEC §13), embedded backend (shared memory).

Reserve-then-reconcile is checked through what the router says and what the fake upstream saw:
`x-ratelimit-remaining-tokens` is the whole tokens left after a request's reservation, so with a
refill of one token a minute (too slow to move within a test) the next request's header shows
exactly what the previous one was charged in the end.

Every request body is sent as bytes, so its size (and the estimate: bytes / 4 + max output
tokens) is known to the test.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import math
import re
from typing import Any

import httpx
import pytest

from tests.conftest import base_profile
from tests.fakes.upstream import (
    FakeUpstream,
    Reply,
    anthropic_stream,
    default_reply,
    openai_chat_stream,
    openai_usage_chunk,
)
from tests.support import RouterFactory, RouterProcess, free_port

CHAT = "/v1/chat/completions"
MESSAGES = "/v1/messages"
RESPONSES = "/v1/responses"
EMBEDDINGS = "/v1/embeddings"
BURST = 2000


def body(max_tokens: int | None = 100, stream: bool = False, **extra: Any) -> bytes:
    b: dict[str, Any] = {"model": "gpt-4", "messages": [{"role": "user", "content": "hi"}]}
    if max_tokens is not None:
        b["max_tokens"] = max_tokens
    if stream:
        b["stream"] = True
    b.update(extra)
    return json.dumps(b).encode()


def estimate(data: bytes, max_tokens: int = 100) -> int:
    return math.ceil(len(data) / 4) + max_tokens


def post(url: str, data: bytes, key: str, path: str = CHAT) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    if path == MESSAGES:
        headers = {"x-api-key": key, "Content-Type": "application/json"}
    return httpx.post(url + path, content=data, headers=headers, timeout=15)


def stream(url: str, data: bytes, key: str) -> Any:
    """A streamed chat request (a context manager yielding the response)."""
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    return httpx.stream("POST", url + CHAT, content=data, headers=headers, timeout=15)


def cut_after(events: list[str]) -> Reply:
    """A stream of all but the last of `events`, then the upstream closes: no usage arrives."""
    return Reply(
        headers=[("Content-Type", "text/event-stream")],
        action="close_mid",
        chunks=[(0.0, e.encode()) for e in events],
    )


def remaining(r: httpx.Response) -> int:
    return int(r.headers["x-ratelimit-remaining-tokens"])


def metric(url: str, name: str, **labels: str) -> float:
    text = httpx.get(url + "/metrics", timeout=5).text
    total = 0.0
    for m in re.finditer(rf"^{name}(\{{[^}}]*\}})? (\S+)$", text, re.M):
        have = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1) or ""))
        if all(have.get(k) == v for k, v in labels.items()):
            total += float(m.group(2))
    return total


@pytest.fixture(scope="module")
def limited(fake_upstream: FakeUpstream, module_router_factory: RouterFactory) -> RouterProcess:
    """2 workers; 1 token a minute refill, bucket of 2000 tokens; embeddings count input only
    and have their own bucket."""
    profile = base_profile(
        fake_upstream.url,
        tokenLimit={"tokensPerMinute": 1, "burst": BURST},
        endpoints={
            EMBEDDINGS: {
                "tokenLimit": {"tokensPerMinute": 1, "burst": 500, "count": ["input"]},
            }
        },
    )
    return module_router_factory(profile, workers=2)


def test_reservation_headers_and_json_usage_reconciled(
    limited: RouterProcess, upstream: FakeUpstream
) -> None:
    key = "sk-tok-json"
    data = body()
    first = post(limited.url, data, key)
    assert first.status_code == 200
    assert first.headers["x-ratelimit-limit-tokens"] == str(BURST)
    assert remaining(first) == BURST - estimate(data)
    assert int(first.headers["x-ratelimit-reset-tokens"]) > 0
    # The fake answered with usage 7 + 3: the reservation was replaced by 10 tokens.
    second = post(limited.url, data, key)
    assert remaining(second) == BURST - 10 - estimate(data)
    assert len(upstream.requests) == 2


@pytest.mark.parametrize(
    ("path", "payload", "used"),
    [
        (CHAT, body(stream=True), 10),  # the usage chunk the router asked for
        (MESSAGES, body(stream=True), 13),  # message_start input 9 + message_delta output 4
        (MESSAGES, body(), 13),
        (RESPONSES, json.dumps({"model": "gpt-4", "input": "hi", "max_output_tokens": 100}), 15),
        (
            RESPONSES,
            json.dumps({"model": "gpt-4", "input": "hi", "max_output_tokens": 100, "stream": True}),
            15,
        ),
    ],
    ids=["chat-stream", "messages-stream", "messages-json", "responses-json", "responses-stream"],
)
def test_every_format_reconciles_to_its_usage(
    limited: RouterProcess, upstream: FakeUpstream, path: str, payload: bytes | str, used: int
) -> None:
    key = f"sk-tok-{path}-{hash(payload) & 0xFFFF}"
    data = payload.encode() if isinstance(payload, str) else payload
    first = post(limited.url, data, key, path)
    assert first.status_code == 200, first.text
    assert remaining(first) == BURST - estimate(data)
    second = post(limited.url, data, key, path)
    assert remaining(second) == BURST - used - estimate(data)


def test_embeddings_have_their_own_bucket_counting_input_only(
    limited: RouterProcess, upstream: FakeUpstream
) -> None:
    key = "sk-tok-embed"
    data = json.dumps({"model": "text-embedding-3-small", "input": "hello"}).encode()
    first = post(limited.url, data, key, EMBEDDINGS)
    assert first.headers["x-ratelimit-limit-tokens"] == "500"
    assert remaining(first) == 500 - math.ceil(len(data) / 4)  # output is not counted
    second = post(limited.url, data, key, EMBEDDINGS)
    assert remaining(second) == 500 - 4 - math.ceil(len(data) / 4)  # usage: prompt_tokens 4
    # The chat bucket of the same key was not touched.
    chat = post(limited.url, body(), key)
    assert remaining(chat) == BURST - estimate(body())


def test_embeddings_never_reserve_output_tokens(
    fake_upstream: FakeUpstream, upstream: FakeUpstream, router_factory: RouterFactory
) -> None:
    """A profile-wide limit counts input and output; an embedding has no output, yet the default
    1024 output tokens were reserved for it: under 1,000 a minute every embedding was 400."""
    profile = base_profile(fake_upstream.url, tokenLimit={"tokensPerMinute": 1, "burst": 1000})
    router = router_factory(profile, name="embed-output")
    data = json.dumps({"model": "text-embedding-3-small", "input": "hello"}).encode()
    r = post(router.url, data, "sk-tok-embed-out", EMBEDDINGS)
    assert r.status_code == 200, r.text
    assert remaining(r) == 1000 - math.ceil(len(data) / 4)


def test_over_the_limit_is_429_with_retry_after_and_nothing_reaches_the_upstream(
    limited: RouterProcess, upstream: FakeUpstream
) -> None:
    key = "sk-tok-429"
    big = body(max_tokens=1500)  # capped at maxOutputReservation 4096: 1500 counts
    ok = post(limited.url, big, key)
    assert ok.status_code == 200
    # 1500 + prompt reserved, 10 charged in the end: a second one no longer fits
    # (2000 - 10 < 1500 + prompt is false), so ask for more than what is left.
    left = remaining(post(limited.url, body(max_tokens=0), key))
    refused = post(limited.url, body(max_tokens=left + 1), key)
    assert refused.status_code == 429
    err = refused.json()["error"]
    assert err["code"] == "rate_limit_exceeded"
    assert err["message"] == "Token rate limit exceeded"
    assert refused.headers["x-ratelimit-limit-tokens"] == str(BURST)
    assert int(refused.headers["Retry-After"]) >= 60  # one token a minute
    sent = len(upstream.requests)
    assert sent == 2  # the refused request never reached the upstream


def test_a_request_larger_than_the_bucket_is_400(
    limited: RouterProcess, upstream: FakeUpstream
) -> None:
    huge = body(max_tokens=0, messages=[{"role": "user", "content": "x" * (4 * BURST + 100)}])
    r = post(limited.url, huge, "sk-tok-400")
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "request_exceeds_token_limit"
    assert "Retry-After" not in r.headers
    assert upstream.requests == []
    assert metric(limited.url, "token_limit_rejections_total", scope="request_too_large") >= 1


def test_an_upstream_error_gives_the_reservation_back(
    limited: RouterProcess, upstream: FakeUpstream
) -> None:
    upstream.reply_with(Reply(status=500, body=b'{"error": {"message": "boom"}}'))
    key = "sk-tok-500"
    r = post(limited.url, body(), key)
    assert r.status_code == 500
    upstream.reset()
    after = post(limited.url, body(), key)
    assert remaining(after) == BURST - estimate(body())  # nothing was charged for the 500


def test_an_upstream_never_reached_gives_the_reservation_back(
    router_factory: RouterFactory,
) -> None:
    """A connection refused, and one that never completes (the connect timeout): nothing
    reached the upstream, so nothing was billed (docs/tokens.md). The timeout kept the whole
    estimate before."""
    from tests.fakes.faultproxy import Blackhole

    data = body()
    with Blackhole() as hole:
        for url, status in ((f"http://127.0.0.1:{free_port()}", 502), (hole.url, 504)):
            profile = base_profile(
                url,
                tokenLimit={"tokensPerMinute": 1, "burst": BURST},
                timeouts={"connectSecs": 0.5, "readSecs": 5},
            )
            r = router_factory(profile)
            first = post(r.url, data, "sk-tok-unreached")
            assert first.status_code == status
            second = post(r.url, data, "sk-tok-unreached")
            assert remaining(second) == BURST - estimate(data)  # the first gave it all back


def test_a_cut_stream_without_usage_keeps_its_reservation(
    limited: RouterProcess, upstream: FakeUpstream
) -> None:
    # Two content events, then the upstream closes before the third: no usage ever arrives.
    events = openai_chat_stream("up-model-4")[:3]
    upstream.reply_with(cut_after(events))
    key = "sk-tok-cut"
    data = body(stream=True)
    with stream(limited.url, data, key) as r:
        assert r.status_code == 200
        r.read()
    upstream.reset()
    after = post(limited.url, body(), key)
    assert remaining(after) == BURST - estimate(data) - estimate(body())


def slow_stream(req: Any) -> Reply:
    """A chat stream that takes ~1.5 s, with the usage chunk the router asks for."""
    if req.path != CHAT:
        return default_reply(req)
    events = openai_chat_stream("up-model-4")
    events.insert(-1, openai_usage_chunk("up-model-4"))
    chunks = [(0.3, e.encode()) for e in events]
    return Reply(headers=[("Content-Type", "text/event-stream")], chunks=chunks)


def test_concurrent_streams_cannot_overshoot_the_limit(
    router_factory: RouterFactory, upstream: FakeUpstream
) -> None:
    """60 streams at once against a bucket that holds the estimate of 8: exactly 8 are admitted
    over 2 workers (a limit charged after the answer would admit all 60), and once they end each
    is charged its usage (10), not its estimate."""
    upstream.reply_with(slow_stream)
    data = body(stream=True)
    est = estimate(data)
    burst = 8 * est + est // 2
    profile = base_profile(upstream.url, tokenLimit={"tokensPerMinute": 1, "burst": burst})
    router = router_factory(profile, workers=2)
    key = "sk-tok-concurrent"

    async def one(c: httpx.AsyncClient) -> int:
        r = await c.post(
            router.url + CHAT,
            content=data,
            headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
        )
        return r.status_code

    async def all_at_once() -> list[int]:
        async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=100)) as c:
            return list(await asyncio.gather(*(one(c) for _ in range(60))))

    statuses = asyncio.run(all_at_once())
    assert statuses.count(200) == 8, statuses
    assert statuses.count(429) == 52
    assert sum(1 for r in upstream.requests if r.path == CHAT) == 8
    upstream.reset()
    after = post(router.url, body(), key)
    assert remaining(after) == burst - 8 * 10 - estimate(body())


def test_shadow_mode_serves_everything_and_counts_what_it_would_refuse(
    router_factory: RouterFactory, upstream: FakeUpstream
) -> None:
    data = body()
    profile = base_profile(
        upstream.url,
        tokenLimit={"tokensPerMinute": 1, "burst": estimate(data) + 5, "enforce": False},
    )
    router = router_factory(profile, workers=2)
    answers = [post(router.url, data, "sk-tok-shadow") for _ in range(6)]
    assert [r.status_code for r in answers] == [200] * 6
    assert len(upstream.requests) == 6
    # The first is charged 10 in the end: the bucket then holds the estimate - 5, and each later
    # one would have been refused (counted, and not reserved, as a refusal takes nothing).
    shadow = metric(router.url, "token_limit_rejections_total", scope="minute", mode="shadow")
    assert shadow == 5
    assert metric(router.url, "token_limit_rejections_total", mode="enforce") == 0
    assert remaining(answers[-1]) == estimate(data) - 5


def test_daily_budget_refuses_until_midnight_utc(
    router_factory: RouterFactory, upstream: FakeUpstream
) -> None:
    data = body(max_tokens=10)
    est = estimate(data, 10)
    profile = base_profile(upstream.url, tokenBudgets={"daily": est + 15})
    router = router_factory(profile)
    key = "sk-tok-daily"
    # Each is charged its usage (10) in the end: 0 + est and 10 + est fit, 20 + est does not.
    assert post(router.url, data, key).status_code == 200
    assert post(router.url, data, key).status_code == 200
    r = post(router.url, data, key)
    assert r.status_code == 429
    assert r.json()["error"]["message"] == "Daily token budget exhausted"
    now = dt.datetime.now(dt.UTC)
    midnight = (now + dt.timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    assert abs(int(r.headers["Retry-After"]) - (midnight - now).total_seconds()) < 5
    assert metric(router.url, "token_limit_rejections_total", scope="daily") >= 1
    # Another key has its own budget.
    assert post(router.url, data, "sk-tok-daily-other").status_code == 200


def test_token_metrics(limited: RouterProcess, upstream: FakeUpstream) -> None:
    before = metric(limited.url, "tokens_reserved_total")
    refunds = metric(limited.url, "tokens_reconciled_total", direction="refund")
    post(limited.url, body(), "sk-tok-metrics")
    assert metric(limited.url, "tokens_reserved_total") - before == estimate(body())
    assert metric(limited.url, "tokens_reconciled_total", direction="refund") - refunds == (
        estimate(body()) - 10
    )
    text = httpx.get(limited.url + "/metrics", timeout=5).text
    assert "sk-tok-metrics" not in text
    assert re.search(r'^tokens_reconciled_total\{direction="charge"\} ', text, re.M)


def test_routing_file_buckets_per_model_route_and_only_the_answering_attempt_counts(
    router_factory: RouterFactory, upstream: FakeUpstream
) -> None:
    """Under a routing file: the file's tokenLimit gives each model route its own bucket per
    key; a route's own tokenLimit replaces it; a retried request is charged the usage of the
    attempt that answered, once."""
    routing = {
        "name": "tok",
        "upstreams": {"one": {"baseUrl": upstream.url}},
        "modelRoutes": [
            {"match": "gpt-4", "targets": [{"upstream": "one"}]},
            {"match": "mini-*", "targets": [{"upstream": "one"}]},
            {
                "match": "own",
                "targets": [{"upstream": "one"}],
                "tokenLimit": {"tokensPerMinute": 1, "burst": 700},
            },
        ],
        "retry": {"maxAttempts": 2, "backoffBaseSecs": 0.01, "backoffMaxSecs": 0.02},
        "outlierDetection": {"consecutiveFailures": 100, "failureRate": 0},
        "tokenLimit": {"tokensPerMinute": 1, "burst": BURST},
    }
    router = router_factory(routing)
    key = "sk-tok-routing"
    gpt, mini, own = body(), body(model="mini-a"), body(model="own")
    assert remaining(post(router.url, gpt, key)) == BURST - estimate(gpt)
    # Another model route: its own bucket, full.
    assert remaining(post(router.url, mini, key)) == BURST - estimate(mini)
    # Another model of the same pattern route: the same bucket (charged 10 by the first).
    mini_b = body(model="mini-b")
    assert remaining(post(router.url, mini_b, key)) == BURST - 10 - estimate(mini_b)
    r = post(router.url, own, key)
    assert r.headers["x-ratelimit-limit-tokens"] == "700"
    assert remaining(r) == 700 - estimate(own)

    # A 500 then a success: one retry on the same target; usage 10 from the answer only.
    replies = iter([Reply(status=500, body=b'{"error": {"message": "boom"}}')])
    upstream.reply_with(lambda req: next(replies, None) or default_reply(req))
    retried = post(router.url, gpt, key)
    assert retried.status_code == 200
    assert retried.headers["x-router-attempts"] == "2"
    upstream.reset()
    after = post(router.url, gpt, key)
    assert remaining(after) == BURST - 10 - 10 - estimate(gpt)


def test_a_client_that_leaves_mid_stream_keeps_its_reservation(
    limited: RouterProcess, upstream: FakeUpstream
) -> None:
    upstream.reply_with(slow_stream)  # usage would come last, after ~1.5 s
    key = "sk-tok-gone"
    data = body(stream=True)
    with stream(limited.url, data, key) as r:
        assert r.status_code == 200
        next(r.iter_raw())  # the first event, then the client goes away
    upstream.reset()
    deadline = 50
    while deadline and metric(limited.url, "requests_total", status="499") < 1:
        deadline -= 1
        asyncio.run(asyncio.sleep(0.1))
    after = post(limited.url, body(), key)
    assert remaining(after) == BURST - estimate(data) - estimate(body())


def test_a_client_that_leaves_after_the_usage_came_is_charged_the_usage(
    limited: RouterProcess, upstream: FakeUpstream
) -> None:
    """docs/tokens.md: once the usage is known it replaces the estimate. A client that reads the
    usage chunk and leaves before [DONE] kept the estimate charged (or escaped a larger usage)."""
    chunk = {"id": "c", "object": "chat.completion.chunk", "model": "up-model-4"}
    events = [
        {**chunk, "choices": [{"index": 0, "delta": {"content": "hi"}, "finish_reason": "stop"}]},
        {**chunk, "choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 3}},
    ]
    sse = [(0.0, f"data: {json.dumps(e)}\n\n".encode()) for e in events]
    upstream.reply_with(
        Reply(
            headers=[("Content-Type", "text/event-stream")],
            chunks=[*sse, (3.0, b"data: [DONE]\n\n")],
        )
    )
    key = "sk-tok-left-after-usage"
    data = body(stream=True, stream_options={"include_usage": True})
    before = metric(limited.url, "requests_total", status="499")
    with stream(limited.url, data, key) as r:
        assert r.status_code == 200
        seen = b""
        for piece in r.iter_raw():
            seen += piece
            if b'"usage"' in seen:
                break  # the usage is out; the client goes away before [DONE]
    upstream.reset()
    deadline = 50
    while deadline and metric(limited.url, "requests_total", status="499") < before + 1:
        deadline -= 1
        asyncio.run(asyncio.sleep(0.1))
    after = post(limited.url, body(), key)
    assert remaining(after) == BURST - 10 - estimate(body())


def test_an_anthropic_stream_cut_after_its_opening_count_keeps_its_reservation(
    limited: RouterProcess, upstream: FakeUpstream
) -> None:
    """message_start carries the input and a placeholder output count: not the answer's usage.
    Cut before message_delta, the stream keeps its whole reservation."""
    events = anthropic_stream("up-model-4")[:4]  # message_start, a block, a delta; then cut
    upstream.reply_with(cut_after(events))
    key = "sk-tok-cut-anthropic"
    data = body(stream=True)
    headers = {"x-api-key": key, "Content-Type": "application/json"}
    with httpx.stream("POST", limited.url + MESSAGES, content=data, headers=headers) as r:
        assert r.status_code == 200
        r.read()
    upstream.reset()
    after = post(limited.url, data, key, MESSAGES)
    assert remaining(after) == BURST - 2 * estimate(data)


def test_token_counting_is_never_charged(limited: RouterProcess, upstream: FakeUpstream) -> None:
    """count_tokens reports no usage: a reservation would stand for ever (Claude Code calls it
    often). It is neither reserved nor refused."""
    key = "sk-tok-count"
    data = json.dumps(
        {"model": "gpt-4", "messages": [{"role": "user", "content": "x" * 50_000}]}
    ).encode()  # an estimate far larger than the bucket: it would be a 400
    for _ in range(3):
        r = post(limited.url, data, key, "/v1/messages/count_tokens")
        assert r.status_code == 200, r.text
        assert "x-ratelimit-limit-tokens" not in r.headers
    after = post(limited.url, body(), key)
    assert remaining(after) == BURST - estimate(body())
