"""Routing files (SPEC §11) on a real router in front of two fake upstreams: routing by model,
retries, failover, Retry-After, never-retried statuses, context-window fallbacks, translation
chosen per target, the commit point on streams, attempts in headers, metrics and the log line.

Each fault is scripted on the fake upstreams (what they answer, request by request, and when
each request arrived), and the test checks what the client got and what each upstream saw."""

from __future__ import annotations

import json
import threading
import time
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import anthropic
import httpx
import openai
import pytest

from service.proxy.passthrough import WHOLE_ANSWER_MAX_BYTES
from tests.fakes.upstream import (
    FakeUpstream,
    Recorded,
    Reply,
    anthropic_stream,
    default_reply,
    openai_chat,
    sse,
)
from tests.scrape import scrape, value
from tests.support import RouterFactory, RouterProcess, free_port

CHAT = "/v1/chat/completions"
MESSAGES = "/v1/messages"
KEY = {"Authorization": "Bearer sk-client-key-1234"}


class Script:
    """Answers the listed replies to the first requests, then like a provider; records when
    each request arrived."""

    def __init__(self, *replies: Reply | Callable[[Recorded], Reply]) -> None:
        self.replies = list(replies)
        self.times: list[float] = []

    def __call__(self, req: Recorded) -> Reply:
        self.times.append(time.monotonic())
        if self.replies:
            r = self.replies.pop(0)
            return r(req) if callable(r) else r
        return default_reply(req)


def error(status: int, body: dict[str, Any] | None = None, **headers: str) -> Reply:
    payload = json.dumps(body or {"error": {"message": f"upstream {status}", "type": "x"}})
    return Reply(
        status=status,
        headers=[("Content-Type", "application/json"), *headers.items()],
        body=payload.encode(),
    )


@pytest.fixture(scope="module")
def primary() -> Iterator[FakeUpstream]:
    with FakeUpstream() as up:
        yield up


@pytest.fixture(scope="module")
def secondary() -> Iterator[FakeUpstream]:
    with FakeUpstream() as up:
        yield up


@pytest.fixture(autouse=True)
def _fresh(primary: FakeUpstream, secondary: FakeUpstream) -> None:
    primary.reset()
    secondary.reset()


def routing_file(primary: FakeUpstream, secondary: FakeUpstream, **over: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "name": "multi",
        "upstreams": {
            "primary": {"baseUrl": primary.url, "timeouts": {"connectSecs": 2, "readSecs": 10}},
            "secondary": {  # an OpenAI-format provider: Messages clients are translated
                "profile": "openai",
                "baseUrl": secondary.url,
                "timeouts": {"connectSecs": 2, "readSecs": 10},
            },
            "claude": {
                "profile": "anthropic",
                "baseUrl": primary.url,
                "timeouts": {"connectSecs": 2, "readSecs": 10},
            },
        },
        "modelRoutes": [
            {
                "match": "gpt-4o",
                "targets": [{"upstream": "primary", "model": "primary-model"}],
                "fallbacks": ["backup"],
            },
            {"match": "backup", "targets": [{"upstream": "secondary", "model": "backup-model"}]},
            {
                "match": "small",
                "targets": [{"upstream": "primary", "model": "small-8k"}],
                "contextWindowFallbacks": ["backup"],
            },
            {
                "match": "claude-*",
                "targets": [{"upstream": "claude", "model": "claude-${1}"}],
                "fallbacks": ["backup"],
            },
            {"match": "local-*", "targets": [{"upstream": "secondary", "model": "${1}"}]},
        ],
        "retry": {"maxAttempts": 3, "backoffBaseSecs": 0.05, "backoffMaxSecs": 0.1},
        # The tests share a router: no test's failures may eject an upstream for the next one
        # (the ejection tests set their own).
        "outlierDetection": {"consecutiveFailures": 100, "failureRate": 0},
    }
    data.update(over)
    return data


@pytest.fixture(scope="module")
def router(
    primary: FakeUpstream, secondary: FakeUpstream, module_router_factory: RouterFactory
) -> RouterProcess:
    return module_router_factory(
        routing_file(primary, secondary), env={"LOG_FORMAT": "json"}, name="routing"
    )


def post(router: RouterProcess, path: str, body: dict[str, Any], **kw: Any) -> httpx.Response:
    return httpx.post(router.url + path, json=body, headers=KEY, timeout=30, **kw)


def chat(model: str, **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}], **extra}


def completion_lines(
    router: RouterProcess, since: int, route: str = CHAT, count: int = 1
) -> list[dict[str, Any]]:
    """The completion lines of `route` written since `since`, once there are `count` (a line is
    written when the response has ended, which a client may see a moment before)."""
    deadline = time.monotonic() + 5
    while True:
        out = [
            json.loads(line)
            for line in router.output()[since:].splitlines()
            if '"request_completed"' in line
        ]
        out = [x for x in out if x.get("route") == route]
        if len(out) >= count or time.monotonic() > deadline:
            return out
        time.sleep(0.05)


_SDK: list[Any] = []


def sdk_openai(router: RouterProcess) -> openai.OpenAI:
    c = openai.OpenAI(base_url=router.url + "/v1", api_key="sk-client-key-1234", max_retries=0)
    _SDK.append(c)
    return c


def sdk_anthropic(router: RouterProcess) -> anthropic.Anthropic:
    c = anthropic.Anthropic(base_url=router.url, api_key="sk-client-key-1234", max_retries=0)
    _SDK.append(c)
    return c


@pytest.fixture(autouse=True)
def _close_sdk_clients() -> Iterator[None]:
    yield
    while _SDK:
        _SDK.pop().close()


# -- routing -----------------------------------------------------------------------------------


def test_each_model_goes_to_its_route_s_upstream_with_the_target_model(
    router: RouterProcess, primary: FakeUpstream, secondary: FakeUpstream
) -> None:
    r = post(router, CHAT, chat("gpt-4o"))
    assert r.status_code == 200, r.text
    assert r.headers["x-router-upstream"] == "primary"
    assert r.headers["x-router-attempts"] == "1"
    assert primary.last.json()["model"] == "primary-model"
    r = post(router, CHAT, chat("local-qwen3"))
    assert r.status_code == 200
    assert r.headers["x-router-upstream"] == "secondary"
    assert secondary.last.json()["model"] == "qwen3"
    assert r.json()["model"] == "qwen3"  # the answer names the model that answered


def test_an_unknown_model_is_404_model_not_found_in_the_client_s_shape(
    router: RouterProcess, primary: FakeUpstream
) -> None:
    r = post(router, CHAT, chat("nobody-has-this"))
    assert r.status_code == 404
    assert r.json()["error"]["code"] == "model_not_found"
    r = post(router, MESSAGES, {"model": "nobody", "max_tokens": 5, "messages": []})
    assert r.status_code == 404
    assert r.json()["type"] == "error" and r.json()["error"]["type"] == "not_found_error"
    assert primary.requests == []


def test_models_lists_the_routes(router: RouterProcess) -> None:
    ids = [m["id"] for m in httpx.get(router.url + "/v1/models").json()["data"]]
    assert ids == ["gpt-4o", "backup", "small"]  # the exact matches; patterns not listed
    health = httpx.get(router.url + "/health").json()
    assert set(health["upstreams"]) == {"primary", "secondary", "claude"}


# -- the fault table (JSON) --------------------------------------------------------------------


def test_a_500_once_is_retried_on_the_same_target(
    router: RouterProcess, primary: FakeUpstream, secondary: FakeUpstream
) -> None:
    primary.reply_with(Script(error(500)))
    r = post(router, CHAT, chat("gpt-4o"))
    assert r.status_code == 200
    assert (r.headers["x-router-upstream"], r.headers["x-router-attempts"]) == ("primary", "2")
    assert len(primary.requests) == 2 and secondary.requests == []


def test_a_persistent_503_fails_over_and_the_answer_is_the_fallback_s(
    router: RouterProcess, primary: FakeUpstream, secondary: FakeUpstream
) -> None:
    since = len(router.output())
    primary.reply_with(lambda _r: error(503))
    r = post(router, CHAT, chat("gpt-4o"))
    assert r.status_code == 200
    assert r.headers["x-router-upstream"] == "secondary"
    assert r.headers["x-router-attempts"] == "3"  # primary twice, then the fallback
    assert len(primary.requests) == 2 and len(secondary.requests) == 1
    body = r.json()
    assert body["model"] == "backup-model"
    assert body["usage"]["prompt_tokens"] > 0
    line = completion_lines(router, since)[-1]
    assert line["provider"] == "secondary"
    assert [(a["upstream"], a["outcome"], a["status"]) for a in line["attempts"]] == [
        ("primary", "server_error", 503),
        ("primary", "server_error", 503),
        ("secondary", "ok", 200),
    ]
    text = scrape(router.url)
    assert value(text, "fallbacks_total", **{"from": "primary", "to": "secondary",
                                               "reason": "server_error"}) >= 1  # fmt: skip
    assert value(text, "upstream_attempts_total", upstream="primary", outcome="server_error") >= 2


def test_429_with_a_short_retry_after_waits_for_it_then_retries(
    router: RouterProcess, primary: FakeUpstream
) -> None:
    script = Script(error(429, **{"Retry-After": "1"}))
    primary.reply_with(script)
    r = post(router, CHAT, chat("gpt-4o"))
    assert r.status_code == 200
    assert r.headers["x-router-upstream"] == "primary"
    assert len(script.times) == 2
    assert script.times[1] - script.times[0] >= 0.95  # the upstream's wait was honoured


def test_429_with_only_the_provider_s_reset_header_waits_for_it(
    router: RouterProcess, primary: FakeUpstream
) -> None:
    """SPEC §11: the provider variants are read (OpenAI's reset of the exhausted limit)."""
    script = Script(
        error(429, **{"x-ratelimit-reset-requests": "1s", "x-ratelimit-remaining-requests": "0"})
    )
    primary.reply_with(script)
    r = post(router, CHAT, chat("gpt-4o"))
    assert r.status_code == 200
    assert r.headers["x-router-upstream"] == "primary"
    assert len(script.times) == 2
    assert script.times[1] - script.times[0] >= 0.95  # not the 0.05-0.1 s backoff


def test_a_short_retry_after_past_total_secs_fails_over_at_once(
    primary: FakeUpstream, secondary: FakeUpstream, router_factory: RouterFactory
) -> None:
    """SPEC §11: wait for Retry-After only when it is short and inside the deadline; otherwise
    fail over at once (3 s is short, but past totalSecs)."""
    data = routing_file(primary, secondary, timeouts={"totalSecs": 2.5})
    router = router_factory(data, name="deadline")
    primary.reply_with(lambda _r: error(503, **{"Retry-After": "3"}))
    r = post(router, CHAT, chat("gpt-4o"))
    assert r.status_code == 200, r.text
    assert (r.headers["x-router-upstream"], r.headers["x-router-attempts"]) == ("secondary", "2")
    assert len(primary.requests) == 1 and len(secondary.requests) == 1


def test_the_router_s_own_error_says_what_was_tried(
    primary: FakeUpstream, secondary: FakeUpstream, router_factory: RouterFactory
) -> None:
    """SPEC §11: the attempts are in the response headers also when no upstream answered."""
    data = routing_file(primary, secondary, rateLimit={"requestsPerMinute": 600, "burst": 50})
    data["upstreams"]["primary"]["baseUrl"] = f"http://127.0.0.1:{free_port()}"  # refused
    router = router_factory(data, name="refused")
    since = len(router.output())
    r = post(router, CHAT, chat("small"))  # no fallback but a context-window one
    assert r.status_code == 502
    assert r.json()["error"]["code"] == "upstream_connect_error"
    # it passed the rate limit: its answer says so, as an upstream's would have
    assert (r.headers["X-RateLimit-Limit"], r.headers["X-RateLimit-Remaining"]) == ("50", "49")
    line = completion_lines(router, since)[-1]
    tried = line.get("attempts", [{"upstream": "primary", "outcome": "connect_error"}])
    assert {(a["upstream"], a["outcome"]) for a in tried} == {("primary", "connect_error")}
    assert all("status" not in a for a in tried)  # no answer: the outcome is the error
    assert r.headers["x-router-upstream"] == "primary"
    assert r.headers["x-router-attempts"] == str(len(tried))


def test_count_tokens_failing_over_to_another_format_is_answered_from_the_estimate(
    router: RouterProcess, primary: FakeUpstream, secondary: FakeUpstream
) -> None:
    """SPEC §12: count_tokens goes to Anthropic-format upstreams only; when the attempts reach
    an OpenAI-format fallback, the router's estimate answers instead."""
    primary.reply_with(lambda _r: error(503))
    body = {"model": "claude-x", "messages": [{"role": "user", "content": "hello there"}]}
    r = post(router, MESSAGES + "/count_tokens", body)
    assert r.status_code == 200, r.text
    assert isinstance(r.json()["input_tokens"], int) and r.json()["input_tokens"] > 0
    assert r.headers["x-router-token-count"] == "estimate"
    assert r.headers["x-router-attempts"] == str(len(primary.requests))
    assert {q.path for q in primary.requests} == {"/v1/messages/count_tokens"}
    assert secondary.requests == []  # never sent to the OpenAI-format upstream


def test_a_reset_before_the_head_once_is_answered(
    router: RouterProcess, primary: FakeUpstream, secondary: FakeUpstream
) -> None:
    primary.reply_with(Script(Reply(action="reset")))
    r = post(router, CHAT, chat("gpt-4o"))
    assert r.status_code == 200
    assert r.headers["x-router-upstream"] == "primary"
    assert secondary.requests == []


def test_a_400_is_never_retried_and_reaches_the_client_unchanged(
    router: RouterProcess, primary: FakeUpstream, secondary: FakeUpstream
) -> None:
    refusal = {"error": {"message": "content policy", "type": "invalid_request_error",
                         "code": "content_policy_violation"}}  # fmt: skip
    primary.reply_with(Script(error(400, refusal)))
    r = post(router, CHAT, chat("gpt-4o"))
    assert r.status_code == 400
    assert r.json() == refusal
    assert r.headers["x-router-attempts"] == "1"
    assert len(primary.requests) == 1 and secondary.requests == []


def test_context_length_exceeded_goes_to_the_context_window_fallback(
    router: RouterProcess, primary: FakeUpstream, secondary: FakeUpstream
) -> None:
    too_long = {
        "error": {
            "message": "This model's maximum context length is 8192 tokens",
            "type": "invalid_request_error",
            "code": "context_length_exceeded",
        }
    }
    primary.reply_with(Script(error(400, too_long)))
    r = post(router, CHAT, chat("small"))
    assert r.status_code == 200
    assert r.headers["x-router-upstream"] == "secondary"
    assert len(primary.requests) == 1  # not retried on the same model
    assert secondary.last.json()["model"] == "backup-model"


@pytest.mark.parametrize("coding", ["gzip", "deflate"])
def test_a_compressed_context_length_error_goes_to_the_context_window_fallback(
    router: RouterProcess, primary: FakeUpstream, secondary: FakeUpstream, coding: str
) -> None:
    """The router asks for gzip/deflate on whole answers (the SDKs' default Accept-Encoding),
    and a provider compresses its 400 too: the wording was looked for in the compressed bytes,
    so the fallback never fired and the client got the 400."""
    too_long = json.dumps({"error": {"message": "prompt is too long: 9000 tokens > 8192"}})
    packer = zlib.compressobj(wbits=31 if coding == "gzip" else 15)
    body = packer.compress(too_long.encode()) + packer.flush()
    primary.reply_with(
        Script(
            Reply(
                status=400,
                headers=[("Content-Type", "application/json"), ("Content-Encoding", coding)],
                body=body,
            )
        )
    )
    r = httpx.post(
        router.url + CHAT,
        json=chat("small"),
        headers={**KEY, "Accept-Encoding": "gzip, deflate"},
        timeout=30,
    )
    assert r.status_code == 200
    assert r.headers["x-router-upstream"] == "secondary"
    assert primary.last.header("accept-encoding") == "gzip, deflate"


@pytest.mark.parametrize("fault", ["cut", "stall"])
def test_a_whole_answer_whose_body_breaks_fails_over_and_counts_as_a_failure(
    primary: FakeUpstream, secondary: FakeUpstream, router_factory: RouterFactory, fault: str
) -> None:
    """SPEC §11: until the first content reaches the client a failed attempt is retried or
    failed over; a whole answer is its attempt's first content. A 200 head whose body was cut,
    or came after headersSecs, was the client's 502 / 504 with no fallback tried, counted as an
    `ok` attempt and a success for ejection (an upstream whose bodies always broke was never
    ejected)."""
    data = routing_file(primary, secondary, timeouts={"headersSecs": 1})
    data["outlierDetection"] = {"consecutiveFailures": 2, "baseEjectionSecs": 60, "failureRate": 0}
    router = router_factory(data, name=f"body-{fault}")
    answer = json.dumps({"id": "c", "object": "chat.completion", "choices": []}).encode()
    head = [("Content-Type", "application/json")]
    if fault == "cut":
        broken = Reply(headers=head, body=answer[:20], action="close_mid")
    else:
        broken = Reply(headers=head, chunks=[(3.0, answer)])
    primary.reply_with(lambda _r: broken)
    before = scrape(router.url)
    since = len(router.output())
    r = post(router, CHAT, chat("gpt-4o"))
    assert r.status_code == 200 and r.headers["x-router-upstream"] == "secondary"
    (line,) = completion_lines(router, since)
    got = [(a["upstream"], a["outcome"]) for a in line["attempts"]]
    if fault == "cut":  # the same target once more (two failures: ejected), then the fallback
        assert got == [("primary", "protocol_error")] * 2 + [("secondary", "ok")]
    else:  # a timeout is not tried again on the same target
        assert got == [("primary", "timeout"), ("secondary", "ok")]
        post(router, CHAT, chat("gpt-4o"))  # its second failure: ejected
    after = scrape(router.url)
    ok = value(after, "upstream_attempts_total", upstream="primary", outcome="ok")
    assert ok == value(before, "upstream_attempts_total", upstream="primary", outcome="ok")
    assert value(after, "upstream_ejected", upstream="primary") == 1
    asked = len(primary.requests)
    assert post(router, CHAT, chat("gpt-4o")).headers["x-router-upstream"] == "secondary"
    assert len(primary.requests) == asked  # ejected: not asked


@pytest.mark.parametrize("status", [500, 429, 400])
def test_an_error_answer_whose_body_breaks_fails_over(
    primary: FakeUpstream, secondary: FakeUpstream, router_factory: RouterFactory, status: int
) -> None:
    """A 5xx, 429 or 400 whose body the upstream cuts off is a failed attempt like an answer
    that never came: the same target once more, then the fallback. Before, the read's error
    escaped: the client got a 500 "Internal error", and no fallback was tried."""
    router = router_factory(routing_file(primary, secondary), name=f"cut-{status}")
    body = json.dumps({"error": {"message": "overloaded " + "x" * 200}}).encode()
    primary.reply_with(
        lambda _r: Reply(
            status=status,
            headers=[("Content-Type", "application/json")],
            body=body[:30],
            action="close_mid",
        )
    )
    since = len(router.output())
    r = post(router, CHAT, chat("gpt-4o"))
    assert r.status_code == 200 and r.headers["x-router-upstream"] == "secondary"
    (line,) = completion_lines(router, since)
    got = [(a["upstream"], a["outcome"], a.get("status")) for a in line["attempts"]]
    assert got == [("primary", "protocol_error", status)] * 2 + [("secondary", "ok", 200)]
    r = post(router, CHAT, {**chat("gpt-4o"), "stream": True})  # the same before a stream's head
    assert r.status_code == 200 and r.headers["x-router-upstream"] == "secondary"
    assert r.text.rstrip().endswith("data: [DONE]")


def test_when_every_attempt_fails_the_last_answer_is_relayed(
    router: RouterProcess, primary: FakeUpstream, secondary: FakeUpstream
) -> None:
    primary.reply_with(lambda _r: error(503))
    secondary.reply_with(lambda _r: error(502, {"error": {"message": "backup down"}}))
    r = post(router, CHAT, chat("gpt-4o"))
    assert r.status_code == 502
    assert r.json() == {"error": {"message": "backup down"}}
    assert r.headers["x-router-attempts"] == "3"  # the attempt budget, not more
    assert len(primary.requests) + len(secondary.requests) == 3


def test_a_silent_upstream_times_out_at_headers_secs_and_the_fallback_answers(
    primary: FakeUpstream, secondary: FakeUpstream, router_factory: RouterFactory
) -> None:
    data = routing_file(primary, secondary, timeouts={"headersSecs": 0.5})
    data["retry"]["maxAttempts"] = 2
    router = router_factory(data, name="silent")
    primary.reply_with(lambda _r: Reply(action="stall"))
    started = time.monotonic()
    r = post(router, CHAT, chat("gpt-4o"))
    elapsed = time.monotonic() - started
    assert r.status_code == 200
    assert r.headers["x-router-upstream"] == "secondary"
    assert elapsed < 8  # two 0.5 s head timeouts, not the upstream's 10 s read timeout


def test_an_operator_key_replaces_the_client_s(
    primary: FakeUpstream, secondary: FakeUpstream, router_factory: RouterFactory
) -> None:
    data = routing_file(primary, secondary)
    data["upstreams"]["secondary"]["apiKeyEnv"] = "API_ROUTER_TEST_BACKUP_KEY"
    router = router_factory(
        data, env={"API_ROUTER_TEST_BACKUP_KEY": "sk-operator-backup-5678"}, name="opkey"
    )
    # the client's key in other forms too (Azure's `api-key`, a `key=` parameter): not sent to
    # an upstream given only the operator's key
    r = httpx.post(
        router.url + CHAT + "?key=sk-client-key-1234",
        json=chat("local-x"),
        headers={**KEY, "api-key": "sk-client-key-1234", "x-goog-api-key": "sk-client-key-1234"},
        timeout=30,
    )
    assert r.status_code == 200
    assert secondary.last.header("authorization") == "Bearer sk-operator-backup-5678"
    assert "sk-client-key-1234" not in json.dumps(secondary.last.headers)
    assert secondary.last.query == ""
    r = post(router, CHAT, chat("gpt-4o"), params={"key": "sk-client-key-1234"})
    assert primary.last.header("authorization") == "Bearer sk-client-key-1234"
    assert primary.last.query == "key=sk-client-key-1234"  # its own key's upstream: kept


def test_client_or_operator_sends_the_client_s_own_key_else_the_operator_s(
    primary: FakeUpstream, secondary: FakeUpstream, router_factory: RouterFactory
) -> None:
    data = routing_file(primary, secondary)
    data["upstreams"]["secondary"]["apiKeyEnv"] = "API_ROUTER_TEST_BACKUP_KEY"
    data["upstreams"]["secondary"]["credential"] = "client-or-operator"
    router = router_factory(
        data, env={"API_ROUTER_TEST_BACKUP_KEY": "sk-operator-backup-9012"}, name="either"
    )
    assert post(router, CHAT, chat("local-x")).status_code == 200
    assert secondary.last.header("authorization") == "Bearer sk-client-key-1234"
    r = httpx.post(router.url + CHAT, json=chat("local-x"), timeout=10)  # no key of its own
    assert r.status_code == 200
    assert secondary.last.header("authorization") == "Bearer sk-operator-backup-9012"


def test_a_stored_response_goes_with_the_operator_key_of_its_upstream(
    primary: FakeUpstream, secondary: FakeUpstream, router_factory: RouterFactory
) -> None:
    data = routing_file(primary, secondary)
    data["upstreams"]["primary"]["apiKeyEnv"] = "API_ROUTER_TEST_PRIMARY_KEY"
    router = router_factory(
        data, env={"API_ROUTER_TEST_PRIMARY_KEY": "sk-operator-primary-3456"}, name="stored-op"
    )
    r = httpx.get(router.url + "/v1/responses/resp_abc123", headers=KEY, timeout=10)
    assert r.status_code == 200 and r.headers["x-router-upstream"] == "primary"
    assert primary.last.header("authorization") == "Bearer sk-operator-primary-3456"
    assert "sk-client-key-1234" not in json.dumps(primary.last.headers)


def test_attempt_latency_is_recorded_by_upstream(
    router: RouterProcess, primary: FakeUpstream
) -> None:
    def count(text: str, upstream: str) -> float:
        return value(text, "upstream_attempt_seconds_count", upstream=upstream)

    before = scrape(router.url)
    primary.reply_with(lambda _r: error(503))
    assert post(router, CHAT, chat("gpt-4o")).status_code == 200  # primary twice, then backup
    after = scrape(router.url)
    assert count(after, "primary") - count(before, "primary") == 2
    assert count(after, "secondary") - count(before, "secondary") == 1
    assert value(after, "upstream_attempt_seconds_sum", upstream="secondary") > value(
        before, "upstream_attempt_seconds_sum", upstream="secondary"
    )


# -- translation chosen per target ---------------------------------------------------------------


def test_an_anthropic_client_falls_back_from_an_anthropic_upstream_to_an_openai_one(
    router: RouterProcess, primary: FakeUpstream, secondary: FakeUpstream
) -> None:
    busy = {"type": "error", "error": {"type": "overloaded_error", "message": "busy"}}
    primary.reply_with(lambda _r: error(529, busy))
    client = sdk_anthropic(router)
    msg = client.messages.create(
        model="claude-sonnet-4", max_tokens=50, messages=[{"role": "user", "content": "hi"}]
    )
    assert msg.model == "backup-model"
    assert msg.content[0].type == "text" and msg.content[0].text
    assert primary.requests[0].path == "/v1/messages"  # the anthropic upstream, as Messages
    assert primary.requests[0].json()["model"] == "claude-sonnet-4"
    assert secondary.last.path == "/v1/chat/completions"  # the fallback, translated


def test_an_openai_sdk_client_gets_the_fallback_s_answer(
    router: RouterProcess, primary: FakeUpstream
) -> None:
    primary.reply_with(lambda _r: error(503))
    client = sdk_openai(router)
    out = client.chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": "hi"}]
    )
    assert out.model == "backup-model"


# -- streams ----------------------------------------------------------------------------------


def test_a_stream_fails_over_before_its_head_and_streams_from_the_fallback(
    router: RouterProcess, primary: FakeUpstream, secondary: FakeUpstream
) -> None:
    primary.reply_with(lambda _r: error(503))
    client = sdk_openai(router)
    stream = client.chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": "hi"}], stream=True
    )
    chunks = list(stream)
    assert chunks and chunks[0].model == "backup-model"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text
    assert len(secondary.requests) == 1


def test_a_stream_cut_after_content_ends_with_an_error_never_a_clean_end(
    router: RouterProcess, primary: FakeUpstream, secondary: FakeUpstream
) -> None:
    events = [
        'data: {"id":"c","object":"chat.completion.chunk","model":"primary-model","choices":'
        f'[{{"index":0,"delta":{{"content":"tok{i} "}}}}]}}\n\n'
        for i in range(40)
    ]
    primary.reply_with(
        Script(
            Reply(
                headers=[("Content-Type", "text/event-stream")],
                chunks=sse(*events),
                action="close_mid",
            )
        )
    )
    with httpx.stream(
        "POST", router.url + CHAT, json=chat("gpt-4o", stream=True), headers=KEY, timeout=30
    ) as r:
        assert r.status_code == 200
        body = b"".join(r.iter_raw())
    assert b"tok0 " in body
    assert b"[DONE]" not in body  # a cut stream is never presented as complete
    assert b'"error"' in body
    assert secondary.requests == []  # content went out: no silent switch of provider


def test_a_messages_stream_fails_over_to_a_translated_upstream(
    router: RouterProcess, primary: FakeUpstream, secondary: FakeUpstream
) -> None:
    primary.reply_with(lambda _r: error(503))
    client = sdk_anthropic(router)
    with client.messages.stream(
        model="claude-x", max_tokens=50, messages=[{"role": "user", "content": "hi"}]
    ) as s:
        final = s.get_final_message()
    assert final.model == "backup-model"
    assert final.content and final.content[0].type == "text"
    assert secondary.last.path == "/v1/chat/completions"


# -- reload ------------------------------------------------------------------------------------


def test_a_broken_routing_edit_keeps_the_last_good_file(
    primary: FakeUpstream, secondary: FakeUpstream, router_factory: RouterFactory
) -> None:
    router = router_factory(routing_file(primary, secondary), name="reload")
    broken = routing_file(primary, secondary)
    broken["modelRoutes"][0]["fallbacks"] = ["nowhere"]
    router.profile_path.write_text(json.dumps(broken))
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        state = httpx.get(router.url + "/health").json()["config"]
        if state["lastError"]:
            break
        time.sleep(0.2)
    assert "names no route" in state["lastError"]
    assert post(router, CHAT, chat("gpt-4o")).status_code == 200  # still the last good file


# -- ejection and cooldowns ----------------------------------------------------------------------


def test_a_primary_down_then_back_is_skipped_while_ejected_and_probed_back_into_use(
    primary: FakeUpstream, secondary: FakeUpstream, router_factory: RouterFactory
) -> None:
    """Fault 15, shortened: the primary fails for a while, then recovers. Two workers share
    the ejection state: few primary attempts during the outage, all requests answered, and the
    primary back in use soon after its ejection time, through one probe."""
    data = routing_file(
        primary, secondary, outlierDetection={"consecutiveFailures": 2, "baseEjectionSecs": 1.5}
    )
    router = router_factory(data, workers=2, name="eject")
    down = {"on": True}
    primary.reply_with(lambda r: error(503) if down["on"] else default_reply(r))
    answered_by = []
    for _ in range(20):  # ~1 s of traffic during the outage
        r = post(router, CHAT, chat("gpt-4o"))
        assert r.status_code == 200, r.text
        answered_by.append(r.headers["x-router-upstream"])
        time.sleep(0.05)
    assert answered_by.count("secondary") == 20
    outage_attempts = len(primary.requests)
    assert outage_attempts <= 4, outage_attempts  # not 20-40: ejected after two failures
    text = scrape(router.url)
    assert value(text, "upstream_ejected", upstream="primary") == 1
    down["on"] = False
    deadline = time.monotonic() + 10
    back = None
    while time.monotonic() < deadline:
        r = post(router, CHAT, chat("gpt-4o"))
        assert r.status_code == 200
        if r.headers["x-router-upstream"] == "primary":
            back = time.monotonic()
            break
        time.sleep(0.1)
    assert back is not None, "the primary was never probed back into use"
    for _ in range(5):  # restored: every request goes to it again
        assert post(router, CHAT, chat("gpt-4o")).headers["x-router-upstream"] == "primary"
    assert value(scrape(router.url), "upstream_ejected", upstream="primary") == 0


def test_when_every_target_is_cooling_down_the_answer_is_503_with_retry_after(
    primary: FakeUpstream, secondary: FakeUpstream, router_factory: RouterFactory
) -> None:
    router = router_factory(routing_file(primary, secondary), name="cooling")
    primary.reply_with(Script(error(429, **{"Retry-After": "120"})))
    r = post(router, CHAT, chat("local-only-on-secondary"))  # secondary: not involved
    assert r.status_code == 200
    r = post(router, CHAT, chat("small"))  # small: one target on primary, no fallbacks
    assert r.status_code == 429  # its own answer, relayed (too long to wait for)
    assert r.headers["retry-after"] == "120"
    r = post(router, CHAT, chat("small"))
    assert r.status_code == 503
    assert r.json()["error"]["code"] == "upstreams_unavailable"
    assert 100 <= int(r.headers["retry-after"]) <= 120
    assert len(primary.requests) == 1  # the cooling upstream was not asked again


def test_a_retry_after_a_short_wait_respects_a_longer_cooldown_set_meanwhile(
    primary: FakeUpstream, secondary: FakeUpstream, router_factory: RouterFactory
) -> None:
    """SPEC §11: a later, longer Retry-After extends the cooldown, and a cooling target is left
    alone. Two requests at once: A gets 429 `Retry-After: 60`, B (answered later) 429
    `Retry-After: 1`, short enough to wait for. B then retried the same target though it cooled
    for a minute by then; it now ends with its own 429."""
    data = routing_file(primary, secondary)
    data["retry"]["maxRetryAfterSecs"] = 5
    router = router_factory(data, name="cooling-meanwhile")
    # Both requests reach the upstream before A's answer (1 s): B's comes at 1.5 s, and its
    # wait of 1 s ends well inside A's minute.
    answers = iter([("60", 1.0), ("1", 1.5)])
    both_in = threading.Event()  # (the delays count from B's arrival: as in the test below)

    def reply(req: Recorded) -> Reply:
        after, delay = next(answers, (None, 0.0))
        if after is None:
            return default_reply(req)
        if after == "1":
            both_in.set()
        body = json.dumps({"error": {"message": f"slow down {after}"}}).encode()
        headers = [("Content-Type", "application/json"), ("Retry-After", after)]
        return Reply(status=429, headers=headers, body=body, delay=delay, after=both_in)

    primary.reply_with(reply)
    got: dict[int, httpx.Response] = {}

    def ask(i: int) -> None:
        got[i] = post(router, CHAT, chat("small"))  # one target on primary, no fallbacks

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
        time.sleep(0.05)  # A's request first
    for t in threads:
        t.join(30)
    assert both_in.is_set()
    assert sorted(r.status_code for r in got.values()) == [429, 429]
    assert sorted(r.headers["retry-after"] for r in got.values()) == ["1", "60"]
    assert len(primary.requests) == 2  # B did not go back to the cooling upstream
    r = post(router, CHAT, chat("small"))
    assert r.status_code == 503 and 50 <= int(r.headers["retry-after"]) <= 60


def test_a_retry_after_a_short_wait_waits_out_a_cooldown_that_ends_soon(
    primary: FakeUpstream, secondary: FakeUpstream, router_factory: RouterFactory
) -> None:
    """Two requests at once, both 429 `Retry-After: 1`, 0.15 s apart: the second's cooldown
    ends 0.15 s after the first one's wait. The first waits that out and retries (a review of
    the check above caught it giving up, as it did on every 429 with Redis, whose cooldown
    comes back a moment later than the one set)."""
    data = routing_file(primary, secondary)
    data["retry"]["maxRetryAfterSecs"] = 5
    router = router_factory(data, name="cooling-soon")
    delays = iter([0.3, 0.45])
    # Timed from the second request's arrival: were the second held back past the first's
    # answer (a loaded machine), it would find the target cooling and get 503 at once.
    both_in = threading.Event()

    def reply(req: Recorded) -> Reply:
        delay = next(delays, None)
        if delay is None:
            return default_reply(req)
        if delay == 0.45:
            both_in.set()
        body = json.dumps({"error": {"message": "slow down"}}).encode()
        headers = [("Content-Type", "application/json"), ("Retry-After", "1")]
        return Reply(status=429, headers=headers, body=body, delay=delay, after=both_in)

    primary.reply_with(reply)
    got: dict[int, httpx.Response] = {}

    def ask(i: int) -> None:
        got[i] = post(router, CHAT, chat("small"))

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
        time.sleep(0.05)
    for t in threads:
        t.join(30)
    assert [got[i].status_code for i in range(2)] == [200, 200]
    assert [got[i].headers["x-router-attempts"] for i in range(2)] == ["2", "2"]
    assert both_in.is_set()  # (else the fake answered 10 s late, on its own timing)


def test_when_every_target_is_ejected_they_are_all_still_tried(
    primary: FakeUpstream, secondary: FakeUpstream, router_factory: RouterFactory
) -> None:
    data = routing_file(
        primary, secondary, outlierDetection={"consecutiveFailures": 1, "baseEjectionSecs": 60}
    )
    router = router_factory(data, name="all-ejected")
    primary.reply_with(Script(error(500), error(500)))
    r = post(router, CHAT, chat("small"))  # ejected by its first failure
    assert r.status_code == 500
    r = post(router, CHAT, chat("small"))  # the route has nothing else: tried anyway
    assert r.status_code == 200
    assert r.headers["x-router-upstream"] == "primary"


# -- streams: the commit point at the first content ------------------------------------------------

SSE_HEAD = [("Content-Type", "text/event-stream")]


def chunk_event(delta: dict[str, Any], model: str = "primary-model") -> str:
    choice = {"index": 0, "delta": delta, "finish_reason": None}
    chunk = {"id": "c1", "object": "chat.completion.chunk", "model": model, "choices": [choice]}
    return "data: " + json.dumps(chunk) + "\n\n"


def role_chunk() -> str:
    return chunk_event({"role": "assistant"})


def content_chunk(text: str) -> str:
    return chunk_event({"content": text})


def stream_chat(router: RouterProcess, model: str = "gpt-4o") -> tuple[httpx.Response, bytes]:
    with httpx.stream(
        "POST", router.url + CHAT, json=chat(model, stream=True), headers=KEY, timeout=60
    ) as r:
        return r, b"".join(r.iter_raw())


def test_a_stream_cut_before_its_first_content_fails_over_whole(
    router: RouterProcess, primary: FakeUpstream, secondary: FakeUpstream
) -> None:
    primary.reply_with(
        lambda _r: Reply(
            headers=SSE_HEAD,
            chunks=sse(role_chunk(), content_chunk("never sent")),
            action="close_mid",  # the connection closes after the role-only chunk
        )
    )
    r, body = stream_chat(router)
    assert r.status_code == 200
    assert b"primary-model" not in body  # the held-back role chunks never reached the client
    assert b"backup-model" in body and body.rstrip().endswith(b"data: [DONE]")
    assert len(primary.requests) == 2  # the same target once more, then the fallback
    assert len(secondary.requests) == 1


def test_a_stream_attempt_that_fails_before_content_is_timed_to_its_failure(
    router: RouterProcess, primary: FakeUpstream, secondary: FakeUpstream
) -> None:
    """SPEC §11: each attempt in the completion line with its duration. A stream attempt that
    broke 0.4 s after its head was recorded with the time to its head (a few ms), so a stalling
    provider looked fast in the line and in `upstream_attempt_seconds`."""

    def cut(_r: Recorded) -> Reply:
        chunks = sse(role_chunk(), content_chunk("never sent"))
        chunks[-1] = (0.4, chunks[-1][1])
        return Reply(headers=SSE_HEAD, chunks=chunks, action="close_mid")

    primary.reply_with(cut)
    with httpx.stream(
        "POST",
        router.url + CHAT,
        json=chat("gpt-4o", stream=True),
        headers={**KEY, "X-Request-ID": "timed-attempts"},
        timeout=60,
    ) as r:
        body = b"".join(r.iter_raw())
    assert r.status_code == 200 and b"backup-model" in body
    line = router.wait_for_log(lambda x: x.get("request_id") == "timed-attempts")
    attempts = line["attempts"]
    assert [a["upstream"] for a in attempts] == ["primary", "primary", "secondary"]
    assert [a["status"] for a in attempts] == [200, 200, 200]
    assert all(a["secs"] >= 0.35 for a in attempts[:2]), attempts


def test_a_compressed_stream_is_read_for_its_content_and_relayed_decoded(
    router: RouterProcess, primary: FakeUpstream, secondary: FakeUpstream
) -> None:
    """An upstream that gzips its stream though asked for none: the hold-back finds its first
    content in what it inflates to (it looked in the gzip bytes, found none, and failed the
    attempt as a broken stream: 502); one in a coding the router cannot read fails over."""
    events = [role_chunk(), content_chunk("zipped"), "data: [DONE]\n\n"]
    pack = zlib.compressobj(wbits=31)
    chunks = [(0.0, pack.compress(e.encode()) + pack.flush(zlib.Z_SYNC_FLUSH)) for e in events]
    chunks.append((0.0, pack.flush()))
    head = [*SSE_HEAD, ("Content-Encoding", "gzip")]
    primary.reply_with(lambda _r: Reply(headers=head, chunks=chunks))
    r, body = stream_chat(router)
    assert r.status_code == 200 and "content-encoding" not in r.headers
    assert body == "".join(events).encode()
    assert len(primary.requests) == 1 and not secondary.requests
    primary.reply_with(
        lambda _r: Reply(headers=[*SSE_HEAD, ("Content-Encoding", "br")], chunks=[(0.0, b"\x1b")])
    )
    r, body = stream_chat(router)
    assert r.status_code == 200 and b"backup-model" in body
    assert len(secondary.requests) == 1


def test_first_content_later_than_first_content_secs_fails_over_well_before_it_comes(
    primary: FakeUpstream, secondary: FakeUpstream, router_factory: RouterFactory
) -> None:
    data = routing_file(primary, secondary, timeouts={"firstContentSecs": 1})
    data["retry"]["maxAttempts"] = 2
    router = router_factory(data, name="first-content")
    primary.reply_with(
        lambda _r: Reply(
            headers=SSE_HEAD,
            chunks=[(0, role_chunk().encode()), (20, content_chunk("late").encode())],
            watch_close=True,
        )
    )
    started = time.monotonic()
    r, body = stream_chat(router)
    elapsed = time.monotonic() - started
    assert r.status_code == 200
    assert b"backup-model" in body and b"late" not in body
    assert body.rstrip().endswith(b"data: [DONE]")
    assert elapsed < 10  # the first-content timeout (1 s), not the upstream's 20 s
    assert len(primary.requests) == 1  # a silent upstream is not waited for twice


def test_an_in_band_error_before_content_fails_over_on_a_messages_stream(
    router: RouterProcess, primary: FakeUpstream, secondary: FakeUpstream
) -> None:
    """The Anthropic upstream starts its message, then reports overload in-band: the client's
    stream is the fallback's whole answer, with one message_start."""
    start = anthropic_stream("claude-x")[0]
    overloaded = (
        "event: error\ndata: "
        '{"type":"error","error":{"type":"overloaded_error","message":"busy"}}\n\n'
    )
    primary.reply_with(lambda _r: Reply(headers=SSE_HEAD, chunks=sse(start, overloaded)))
    with httpx.stream(
        "POST",
        router.url + MESSAGES,
        json={
            "model": "claude-x",
            "max_tokens": 20,
            "stream": True,
            "messages": [{"role": "user", "content": "hi"}],
        },
        headers={"x-api-key": "sk-client-key-1234", "anthropic-version": "2023-06-01"},
        timeout=30,
    ) as r:
        body = b"".join(r.iter_raw())
    assert body.count(b"event: message_start") == 1
    assert b"overloaded_error" not in body
    assert b"backup-model" in body and b"event: message_stop" in body
    assert secondary.last.path == "/v1/chat/completions"


def test_a_stream_that_stalls_mid_answer_ends_with_an_in_band_error_and_the_router_is_fine(
    primary: FakeUpstream, secondary: FakeUpstream, router_factory: RouterFactory
) -> None:
    data = routing_file(primary, secondary, timeouts={"idleSecs": 1})
    router = router_factory(data, name="idle")
    primary.reply_with(
        Script(
            Reply(
                headers=SSE_HEAD,
                chunks=[(0, content_chunk("first ").encode()), (30, b"data: [DONE]\n\n")],
                watch_close=True,
            )
        )
    )
    started = time.monotonic()
    _, body = stream_chat(router)
    assert time.monotonic() - started < 15  # the idle timeout, not the upstream's 30 s
    assert b"first " in body
    assert b"[DONE]" not in body and b'"error"' in body
    assert secondary.requests == []  # content went out: never switched
    assert post(router, CHAT, chat("gpt-4o")).status_code == 200  # healthy right after


# -- Responses clients, and reloads under traffic --------------------------------------------------


def test_a_responses_client_fails_over_to_a_chat_completions_upstream(
    router: RouterProcess, primary: FakeUpstream, secondary: FakeUpstream
) -> None:
    """The primary (inline, so it speaks the Responses API natively) is down; the fallback is
    an OpenAI-format provider whose /v1/responses is native too: the SDK gets its answer."""
    primary.reply_with(lambda _r: error(503))
    client = sdk_openai(router)
    out = client.responses.create(model="gpt-4o", input="hi")
    assert out.output_text
    assert secondary.last.path == "/v1/responses"
    assert secondary.last.json()["model"] == "backup-model"
    stream = client.responses.create(model="gpt-4o", input="hi", stream=True)
    kinds = [e.type for e in stream]
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    assert kinds.count("response.created") == 1  # the failed primary's events never leaked


def test_a_reload_that_changes_routes_under_traffic_loses_no_request(
    primary: FakeUpstream, secondary: FakeUpstream, router_factory: RouterFactory
) -> None:
    router = router_factory(routing_file(primary, secondary), workers=2, name="reload-traffic")
    stop = threading.Event()
    statuses: list[int] = []

    def traffic() -> None:
        with httpx.Client(base_url=router.url, headers=KEY, timeout=30) as c:
            while not stop.is_set():
                statuses.append(c.post(CHAT, json=chat("gpt-4o")).status_code)

    threads = [threading.Thread(target=traffic) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        for i in range(6):  # the route's target moves between the two upstreams
            data = routing_file(primary, secondary)
            data["modelRoutes"][0]["targets"] = [
                {"upstream": "secondary" if i % 2 == 0 else "primary", "model": f"v{i}"}
            ]
            router.profile_path.write_text(json.dumps(data))
            time.sleep(1.3)  # the file is checked once a second
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert statuses and set(statuses) == {200}, Counter(statuses)
    models = {r.json()["model"] for r in primary.requests + secondary.requests if r.body}
    assert {"v0", "v5"} <= models  # the reloads took effect while traffic ran


def test_a_malformed_chunk_mid_stream_is_dropped_and_the_sdk_completes(
    router: RouterProcess, primary: FakeUpstream
) -> None:
    since = len(router.output())
    events = [content_chunk("one "), 'data: {"id":"c1","choices":[{"index":0,"de\n\n',
              content_chunk("two"), "data: [DONE]\n\n"]  # fmt: skip
    primary.reply_with(Script(Reply(headers=SSE_HEAD, chunks=sse(*events))))
    client = sdk_openai(router)
    stream = client.chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": "hi"}], stream=True
    )
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text == "one two"  # the garbled chunk did not fail the answer
    (line,) = completion_lines(router, since)
    assert line["malformed_events"] == 1
    assert value(scrape(router.url), "stream_malformed_events_total") >= 1


def test_a_fallback_s_refusal_never_masks_the_real_failure(
    router: RouterProcess, primary: FakeUpstream, secondary: FakeUpstream
) -> None:
    """Fault 14: the primary's stream is cut before its content; the fallback refuses the
    request (as a provider that rejects an assistant prefill would): the client learns that the
    stream failed (a 5xx it may retry), not the fallback's 400 (which says its request is bad)."""
    primary.reply_with(
        lambda _r: Reply(
            headers=SSE_HEAD, chunks=sse(role_chunk(), content_chunk("x")), action="close_mid"
        )
    )
    prefill = {"error": {"message": "assistant prefill is not supported", "type": "invalid"}}
    secondary.reply_with(Script(error(400, prefill)))
    r, body = stream_chat(router)
    assert r.status_code == 502
    assert b"prefill" not in body
    # the primary's failure: its stream ended before the answer did
    assert json.loads(body)["error"]["code"] == "upstream_protocol_error"
    assert len(secondary.requests) == 1


def test_a_stream_that_ends_without_done_is_finished_at_once_with_its_usage(
    router: RouterProcess, primary: FakeUpstream
) -> None:
    """Fault 11: the upstream ends the stream (its answer complete, with usage) but sends no
    [DONE]: the client's stream ends right then, and the usage is counted."""
    since = len(router.output())
    usage = {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}
    choice = {"index": 0, "delta": {}, "finish_reason": "stop"}
    finish = {"id": "c1", "model": "primary-model", "choices": [choice], "usage": usage}
    events = [content_chunk("done"), "data: " + json.dumps(finish) + "\n\n"]
    primary.reply_with(Script(Reply(headers=SSE_HEAD, chunks=sse(*events))))
    started = time.monotonic()
    r, body = stream_chat(router)
    assert time.monotonic() - started < 5  # not the idle timeout
    assert r.status_code == 200 and b"done" in body and b'"finish_reason": "stop"' in body
    line = completion_lines(router, since)[-1]
    assert line["status_code"] == 200 and "error_type" not in line
    assert value(scrape(router.url), "tokens_total", type="completion", model="primary-model") >= 3


def test_a_persistent_429_without_retry_after_backs_off_then_falls_back(
    router: RouterProcess, primary: FakeUpstream, secondary: FakeUpstream
) -> None:
    """Fault 2: no Retry-After: the same target once more after a jittered backoff, then the
    fallback; the rate-limited primary is not hammered."""
    primary.reply_with(lambda _r: error(429))
    r = post(router, CHAT, chat("gpt-4o"))
    assert r.status_code == 200
    assert r.headers["x-router-upstream"] == "secondary"
    assert len(primary.requests) == 2 and len(secondary.requests) == 1
    text = scrape(router.url)
    moved = {"from": "primary", "to": "secondary", "reason": "rate_limited"}
    assert value(text, "fallbacks_total", **moved) >= 1


CLIENT_FORMATS = {
    "chat": (CHAT, chat("gpt-4o"), "choices"),
    "messages": (MESSAGES, {"model": "gpt-4o", "max_tokens": 20,
                            "messages": [{"role": "user", "content": "hi"}]}, "content"),
    "responses": ("/v1/responses", {"model": "gpt-4o", "input": "hi"}, "output"),
}  # fmt: skip


@pytest.mark.parametrize("fmt", CLIENT_FORMATS)
@pytest.mark.parametrize(
    ("fault", "primary_calls", "answered_by"),
    [
        ("500-once", 2, "primary"),
        ("503-always", 2, "secondary"),
        ("reset-once", 2, "primary"),
    ],
)
def test_the_faults_hold_for_every_client_format(
    router: RouterProcess,
    primary: FakeUpstream,
    secondary: FakeUpstream,
    fmt: str,
    fault: str,
    primary_calls: int,
    answered_by: str,
) -> None:
    """The same faults for Chat Completions, Messages and Responses clients: what the client
    gets (its own format, 200) and how many attempts the primary saw."""
    path, body, key = CLIENT_FORMATS[fmt]
    replies = {
        "500-once": Script(error(500)),
        "503-always": lambda _r: error(503),
        "reset-once": Script(Reply(action="reset")),
    }
    primary.reply_with(replies[fault])
    headers = {**KEY, "anthropic-version": "2023-06-01"}
    r = httpx.post(router.url + path, json=body, headers=headers, timeout=30)
    assert r.status_code == 200, r.text
    assert key in r.json()
    assert r.headers["x-router-upstream"] == answered_by
    assert len(primary.requests) == primary_calls


@pytest.mark.parametrize("fmt", CLIENT_FORMATS)
def test_a_long_retry_after_fails_over_at_once_for_every_client_format(
    primary: FakeUpstream, secondary: FakeUpstream, router_factory: RouterFactory, fmt: str
) -> None:
    """(Its own router: the primary then cools down for five minutes.)"""
    router = router_factory(routing_file(primary, secondary), name=f"long-ra-{fmt}")
    path, body, key = CLIENT_FORMATS[fmt]
    primary.reply_with(Script(error(429, **{"Retry-After": "300"})))
    headers = {**KEY, "anthropic-version": "2023-06-01"}
    r = httpx.post(router.url + path, json=body, headers=headers, timeout=30)
    assert r.status_code == 200, r.text
    assert key in r.json()
    assert r.headers["x-router-upstream"] == "secondary"
    assert len(primary.requests) == 1


@pytest.mark.parametrize("fmt", CLIENT_FORMATS)
@pytest.mark.parametrize(
    ("primary_reply", "secondary_reply", "status", "attempts", "message"),
    [
        # a 400 (never retried), as the upstream wrote it
        (lambda _r: error(400, {"error": {"message": "bad field"}}), None, 400, "1", "bad field"),
        # every attempt fails: the last answer (no Retry-After: the router is shared, and a
        # cooling fallback would change the next test)
        (lambda _r: error(503), lambda _r: error(429, {"error": {"message": "slow"}}), 429, "3",
         "slow"),
        # a 503, then a fallback's 401: the 503 (a fallback's refusal never masks it)
        (lambda _r: error(503), lambda _r: error(401), 503, "3", "upstream 503"),
    ],
    ids=["400", "all-fail", "earlier-503"],
)  # fmt: skip
def test_a_stream_s_error_answer_reaches_the_client_with_its_status(
    router: RouterProcess,
    primary: FakeUpstream,
    secondary: FakeUpstream,
    fmt: str,
    primary_reply: Callable[[Recorded], Reply],
    secondary_reply: Callable[[Recorded], Reply] | None,
    status: int,
    attempts: str,
    message: str,
) -> None:
    """A stream request whose answer is an error the router had read to decide on it (a
    failover's last answer, a 400) gets that status and body as a normal response (SPEC §6),
    for every client format. It got "500 Internal error": the body was handed to the relay
    already read (httpx.StreamConsumed)."""
    path, body, _ = CLIENT_FORMATS[fmt]
    primary.reply_with(primary_reply)
    if secondary_reply is not None:
        secondary.reply_with(secondary_reply)
    headers = {**KEY, "anthropic-version": "2023-06-01"}
    r = httpx.post(router.url + path, json={**body, "stream": True}, headers=headers, timeout=30)
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    assert r.headers["x-router-attempts"] == attempts
    # the upstream's own error (translated for a client of another format), not the router's
    assert message in r.text and "Internal error" not in r.text


def test_a_route_s_own_rate_limit_is_per_client_key_and_route(
    primary: FakeUpstream, secondary: FakeUpstream, router_factory: RouterFactory
) -> None:
    """The resolver's route decides the bucket: `small` allows one request a minute per client
    key; `gpt-4o` (no limit of its own, none in the file) is not limited."""
    data = routing_file(primary, secondary)
    data["modelRoutes"][2]["rateLimit"] = {"requestsPerMinute": 1, "burst": 1}
    router = router_factory(data, name="route-limit")
    assert post(router, CHAT, chat("small")).status_code == 200
    r = post(router, CHAT, chat("small"))
    assert r.status_code == 429
    assert r.json()["error"]["code"] == "rate_limit_exceeded"
    assert post(router, CHAT, chat("gpt-4o")).status_code == 200  # another route
    other = httpx.post(
        router.url + CHAT,
        json=chat("small"),
        headers={"Authorization": "Bearer sk-another-client-5678"},
        timeout=30,
    )
    assert other.status_code == 200  # another client key, its own bucket


def test_a_stream_that_fails_before_content_counts_toward_ejection(
    primary: FakeUpstream, secondary: FakeUpstream, router_factory: RouterFactory
) -> None:
    """A 200 stream head is not a success: a primary whose streams always break before their
    first content is ejected like one that answers 503."""
    data = routing_file(
        primary, secondary, outlierDetection={"consecutiveFailures": 2, "baseEjectionSecs": 60}
    )
    router = router_factory(data, name="stream-eject")
    primary.reply_with(
        lambda _r: Reply(headers=SSE_HEAD, chunks=sse(role_chunk(), "x"), action="close_mid")
    )
    for _ in range(3):
        r, body = stream_chat(router)
        assert r.status_code == 200 and b"backup-model" in body
    assert len(primary.requests) == 2  # ejected after the first request's two failed streams


@pytest.mark.parametrize("left_during", ["head", "body", "stream"])
def test_a_probe_whose_client_leaves_lets_another_request_probe_at_once(
    primary: FakeUpstream, secondary: FakeUpstream, router_factory: RouterFactory, left_during: str
) -> None:
    """The probe of an ejected primary is slow, and its client gives up: during the head wait,
    a whole answer's body, or a stream before its first content. Its claim is released: the
    next request probes (it kept the claim for its 30 s lease, and every request meanwhile
    skipped a primary whose ejection was over and which nobody probed)."""
    data = routing_file(
        primary, secondary, outlierDetection={"consecutiveFailures": 2, "baseEjectionSecs": 1}
    )
    router = router_factory(data, name=f"probe-left-{left_during}")
    primary.reply_with(lambda _r: error(503))
    assert post(router, CHAT, chat("gpt-4o")).headers["x-router-upstream"] == "secondary"
    assert value(scrape(router.url), "upstream_ejected", upstream="primary") == 1
    time.sleep(1.2)  # the ejection is over: the next request probes
    slow = {
        "head": Reply(delay=5, body=json.dumps(openai_chat("primary-model")).encode()),
        "body": Reply(headers=[("Content-Type", "application/json")],
                      chunks=[(0.0, b'{"id": "x", '), (5.0, b'"object": "chat.completion"}')]),
        "stream": Reply(headers=SSE_HEAD, chunks=[(0.0, role_chunk().encode()),
                                                  (5.0, content_chunk("late").encode())]),
    }[left_during]  # fmt: skip
    primary.reply_with(lambda _r: slow)
    asked = len(primary.requests)
    with pytest.raises(httpx.TimeoutException):
        httpx.post(router.url + CHAT, json=chat("gpt-4o", stream=left_during == "stream"),
                   headers=KEY, timeout=0.6)  # fmt: skip
    assert len(primary.requests) == asked + 1  # it was the probe
    primary.reply_with(lambda r: default_reply(r))
    deadline = time.monotonic() + 10  # the router notices the client has gone (the lease: 30 s)
    while True:
        r = post(router, CHAT, chat("gpt-4o"))
        assert r.status_code == 200
        if r.headers["x-router-upstream"] == "primary" or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert r.headers["x-router-upstream"] == "primary"
    assert value(scrape(router.url), "upstream_ejected", upstream="primary") == 0


def test_total_secs_bounds_every_attempt(
    primary: FakeUpstream, secondary: FakeUpstream, router_factory: RouterFactory
) -> None:
    data = routing_file(primary, secondary, timeouts={"totalSecs": 1, "headersSecs": 300})
    router = router_factory(data, name="total")
    primary.reply_with(lambda _r: Reply(action="stall"))
    secondary.reply_with(lambda _r: Reply(action="stall"))
    started = time.monotonic()
    r = post(router, CHAT, chat("gpt-4o"))
    assert time.monotonic() - started < 6  # not two 300 s head timeouts
    assert r.status_code == 504


def test_total_secs_bounds_a_whole_answer_s_body_too(
    primary: FakeUpstream, secondary: FakeUpstream, router_factory: RouterFactory
) -> None:
    """A JSON answer is its attempt's first content: its head at once and its body 3 s later
    is past totalSecs 1, whatever the read timeout (504 at about 1 s, not 200 at 3 s)."""
    data = routing_file(primary, secondary, timeouts={"totalSecs": 1})
    router = router_factory(data, name="total-json")
    answer = json.dumps({"id": "c", "object": "chat.completion", "choices": []}).encode()
    primary.reply_with(
        lambda _r: Reply(headers=[("Content-Type", "application/json")], chunks=[(3.0, answer)])
    )
    started = time.monotonic()
    r = post(router, CHAT, chat("gpt-4o"))
    assert r.status_code == 504
    assert time.monotonic() - started < 2.5


def test_total_secs_bounds_only_the_first_16_mib_of_a_large_answer(
    primary: FakeUpstream, secondary: FakeUpstream, router_factory: RouterFactory
) -> None:
    """docs/forwarding.md: an answer past WHOLE_ANSWER_MAX_BYTES is relayed as it arrives, and
    under a routing file `totalSecs` bounds its first 16 MiB (the attempt's first content), not
    the rest: its last piece 2.5 s after the head, under totalSecs 1, still reaches the client
    whole (the same delay before a small answer's body is a 504, above)."""
    data = routing_file(primary, secondary, timeouts={"totalSecs": 1})
    router = router_factory(data, name="total-large")
    filler = "x" * (WHOLE_ANSWER_MAX_BYTES + 2 * 1024 * 1024)
    answer = json.dumps(
        {"id": "c", "object": "chat.completion", "choices": [], "filler": filler}
    ).encode()
    piece = 1024 * 1024
    chunks = [(0.0, answer[i : i + piece]) for i in range(0, len(answer), piece)]
    chunks[-1] = (2.5, chunks[-1][1])
    primary.reply_with(
        lambda _r: Reply(headers=[("Content-Type", "application/json")], chunks=chunks)
    )
    r = post(router, CHAT, chat("gpt-4o"))
    assert r.status_code == 200
    assert r.content == answer
    assert len(primary.requests) == 1  # no second attempt


def test_total_secs_does_not_cut_a_stream_after_its_first_content(
    primary: FakeUpstream, secondary: FakeUpstream, router_factory: RouterFactory
) -> None:
    """docs/routing.md: totalSecs bounds the attempts (connect, head, first content); past the
    first content only idleSecs and the stream limits apply. The attempt's read timeout was cut
    to the time left and applied to every later read, so a stream with 1.2 s between events
    broke (stream_error) under totalSecs 1."""
    data = routing_file(primary, secondary, timeouts={"totalSecs": 1})
    router = router_factory(data, name="total-stream")
    events = [role_chunk(), content_chunk("a"), content_chunk("b"), content_chunk("c")]
    gaps = [0.0, 0.0, 1.2, 1.2]
    chunks = [(gap, e.encode()) for gap, e in zip(gaps, events, strict=True)]
    chunks.append((0.0, b"data: [DONE]\n\n"))
    primary.reply_with(lambda _r: Reply(headers=SSE_HEAD, chunks=chunks))
    r, body = stream_chat(router)
    assert r.status_code == 200
    assert body.endswith(b"data: [DONE]\n\n") and b"stream_error" not in body
    assert len(secondary.requests) == 0


def test_an_audio_upload_is_routed_by_its_model_part_and_failed_over_whole(
    router: RouterProcess, primary: FakeUpstream, secondary: FakeUpstream
) -> None:
    """Multipart audio under a routing file: the model part picks the route, each attempt gets
    the target's model name in it, and the file reaches the fallback byte for byte."""
    from tests.integration.test_multipart import wav_bytes

    primary.reply_with(lambda _r: error(503))
    audio = wav_bytes()
    client = sdk_openai(router)
    out = client.audio.transcriptions.create(model="gpt-4o", file=("a.wav", audio, "audio/wav"))
    assert out.text == "hello world"
    assert len(primary.requests) == 2 and len(secondary.requests) == 1
    got = secondary.last
    assert got.path == "/v1/audio/transcriptions"
    assert audio in got.body  # the file, whole
    assert b'name="model"\r\n\r\nbackup-model\r\n' in got.body
    assert b'name="model"\r\n\r\nprimary-model\r\n' in primary.requests[0].body


def test_an_audio_upload_over_the_body_limit_is_413_under_a_routing_file(
    primary: FakeUpstream, secondary: FakeUpstream, router_factory: RouterFactory
) -> None:
    router = router_factory(
        routing_file(primary, secondary), env={"API_ROUTER_MAX_BODY_BYTES": "100000"}, name="big"
    )
    client = sdk_openai(router)
    with pytest.raises(openai.APIStatusError) as e:
        client.audio.transcriptions.create(model="gpt-4o", file=("a.wav", b"\0" * 300_000))
    assert e.value.status_code == 413
    assert primary.requests == [] and secondary.requests == []


def test_a_streamed_transcription_is_relayed_as_it_comes_under_a_routing_file(
    router: RouterProcess, primary: FakeUpstream
) -> None:
    """The routed twin of test_multipart's: a transcription whose `stream` form field asked
    for events is relayed from its head, with who answered."""
    events = [b'data: {"type":"transcript.text.delta","delta":"hi"}\n\n',
              b'data: {"type":"transcript.text.done","text":"hi"}\n\n']  # fmt: skip
    primary.reply_with(Script(Reply(headers=SSE_HEAD, chunks=[(0.0, events[0]), (1.0, events[1])])))
    boundary = "----routed"
    form = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="model"\r\n\r\ngpt-4o\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="stream"\r\n\r\ntrue\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n'
        f"Content-Type: audio/wav\r\n\r\nRIFF\r\n--{boundary}--\r\n"
    ).encode()
    headers = {**KEY, "Content-Type": f"multipart/form-data; boundary={boundary}"}
    arrivals: list[float] = []
    t0 = time.monotonic()
    with httpx.stream(
        "POST", router.url + "/v1/audio/transcriptions", content=form, headers=headers, timeout=10
    ) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        assert r.headers["x-router-upstream"] == "primary"
        body = b""
        for piece in r.iter_bytes():
            arrivals.append(time.monotonic() - t0)
            body += piece
    assert body == b"".join(events)
    assert arrivals[0] < 0.8 < arrivals[-1]
    assert b"primary-model" in primary.last.body  # the route's model, in the form


def test_stored_responses_go_to_the_upstream_that_stores_them(
    router: RouterProcess, primary: FakeUpstream, secondary: FakeUpstream
) -> None:
    """GET / DELETE /v1/responses/{id} name no model: they go to the first upstream that speaks
    the Responses API itself (the primary here), with its credential."""
    r = httpx.get(router.url + "/v1/responses/resp_abc123", headers=KEY, timeout=10)
    assert r.status_code == 200, r.text
    assert r.json()["id"] == "resp_abc123"
    assert r.headers["x-router-upstream"] == "primary"
    assert primary.last.method == "GET" and primary.last.path == "/v1/responses/resp_abc123"
    r = httpx.delete(router.url + "/v1/responses/resp_abc123", headers=KEY, timeout=10)
    assert r.json()["deleted"] is True
    assert secondary.requests == []


def test_without_an_upstream_that_stores_responses_a_stored_response_is_404(
    primary: FakeUpstream, secondary: FakeUpstream, router_factory: RouterFactory
) -> None:
    data = routing_file(primary, secondary)
    data["upstreams"] = {"claude": data["upstreams"]["claude"]}  # Messages only
    data["modelRoutes"] = [{"match": "*", "targets": [{"upstream": "claude"}]}]
    router = router_factory(data, name="no-store")
    r = httpx.get(router.url + "/v1/responses/resp_abc123", headers=KEY, timeout=10)
    assert r.status_code == 404
    assert "stores responses" in r.json()["error"]["message"]
    assert primary.requests == []
