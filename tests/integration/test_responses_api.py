"""The OpenAI Responses API relayed to an upstream that speaks it, the stored-response routes,
and token counting (SPEC §12): `POST /v1/responses` (JSON and stream, usage from
`response.completed`), `GET`/`DELETE /v1/responses/{id}`, `…/input_items`,
`POST /v1/responses/input_tokens`, `POST /v1/messages/count_tokens` relayed or answered from the
router's own estimate (never an inference call), with its own rate-limit bucket."""

from __future__ import annotations

import gzip
import json
import time

import httpx
import openai
import pytest

from tests.conftest import base_profile
from tests.fakes.upstream import FakeUpstream, Reply, openai_response_stream
from tests.scrape import scrape, value
from tests.support import RouterFactory, RouterProcess

RESPONSES = "/v1/responses"
COUNT = "/v1/messages/count_tokens"
INPUT_TOKENS = "/v1/responses/input_tokens"
TRANSLATED = {
    "/v1/messages": {"format": "openai"},
    "/v1/responses": {"format": "openai"},
}


@pytest.fixture(scope="module")
def translated_router(
    fake_upstream: FakeUpstream, module_router_factory: RouterFactory
) -> RouterProcess:
    """A profile whose upstream speaks only Chat Completions (like the shipped qwen)."""
    profile = base_profile(
        fake_upstream.url,
        endpoints=TRANSLATED,
        rateLimit={"requestsPerMinute": 1, "burst": 1},
    )
    return module_router_factory(profile)


def test_responses_json_is_relayed_with_usage_counted(
    router: RouterProcess, upstream: FakeUpstream
) -> None:
    before = scrape(router.url)
    body = {"model": "gpt-4", "input": "hi", "store": False, "unknown_future": {"x": 1}}
    r = httpx.post(router.url + RESPONSES, json=body, headers={"X-Request-ID": "resp-1"})
    assert r.status_code == 200
    assert r.json()["object"] == "response" and r.json()["model"] == "up-model-4"
    assert r.headers["x-request-id"] == "resp-1"
    sent = upstream.last
    assert (sent.method, sent.path) == ("POST", RESPONSES)
    assert json.loads(sent.body) == {**body, "model": "up-model-4"}  # only the model mapped
    after = scrape(router.url)
    for kind, n in (("prompt", 11), ("completion", 4)):
        got = value(after, "tokens_total", type=kind, model="up-model-4")
        assert got - value(before, "tokens_total", type=kind, model="up-model-4") == n
    assert value(after, "requests_total", route=RESPONSES, method="POST", status="200") >= 1


def test_responses_stream_is_relayed_byte_for_byte_with_usage(
    router: RouterProcess, upstream: FakeUpstream
) -> None:
    before = scrape(router.url)
    with httpx.stream(
        "POST", router.url + RESPONSES, json={"model": "m", "input": "hi", "stream": True}
    ) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        data = r.read()
    assert data == "".join(openai_response_stream("m")).encode()
    # nothing added to the request: the Responses API reports usage by itself
    assert "stream_options" not in json.loads(upstream.last.body)
    after = scrape(router.url)
    got = value(after, "tokens_total", type="completion", model="other")
    assert got - value(before, "tokens_total", type="completion", model="other") == 4


def test_openai_sdk_responses_create_and_stream(
    router: RouterProcess, upstream: FakeUpstream
) -> None:
    with openai.OpenAI(base_url=router.url + "/v1", api_key="sk-client", max_retries=0) as client:
        resp = client.responses.create(model="m", input="hi")
        assert resp.output_text == "Hello from fake"
        assert resp.usage is not None and resp.usage.output_tokens == 4
        with client.responses.stream(model="m", input="hi") as stream:
            deltas = [e.delta for e in stream if e.type == "response.output_text.delta"]
            final = stream.get_final_response()
    assert deltas == ["Hel", "lo"] and final.output_text == "Hello"
    assert upstream.last.header("authorization") == "Bearer sk-client"


def test_a_stored_response_s_stream_is_relayed_as_it_comes(
    router: RouterProcess, upstream: FakeUpstream
) -> None:
    """`GET /v1/responses/{id}?stream=true` resumes a background response's stream: it was read
    whole before the client got a byte (and its usage never counted)."""
    events = [e.encode() for e in openai_response_stream("m")]
    upstream.reply_with(
        Reply(
            headers=[("Content-Type", "text/event-stream")],
            chunks=[(0.0, events[0]), (1.0, b"".join(events[1:]))],
        )
    )
    arrivals: list[float] = []
    t0 = time.monotonic()
    with httpx.stream("GET", router.url + RESPONSES + "/resp_abc123?stream=true", timeout=10) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        body = b""
        for piece in r.iter_bytes():
            arrivals.append(time.monotonic() - t0)
            body += piece
    assert upstream.last.query == "stream=true"
    assert body == b"".join(events)
    assert arrivals[0] < 0.8 < arrivals[-1]  # the first event before the upstream's next ones
    line = router.wait_for_log(
        lambda x: x.get("event") == "request_completed" and x["route"].startswith(RESPONSES + "/")
    )
    assert line["stream"] is True and line["status_code"] == 200
    # compressed (the client offered gzip, as the SDKs do): relayed whole with its encoding, as
    # before; the event framer reads plain text only (the client got gzip bytes as events)
    headers = [("Content-Type", "text/event-stream"), ("Content-Encoding", "gzip")]
    upstream.reply_with(Reply(headers=headers, body=gzip.compress(b"".join(events))))
    r = httpx.get(router.url + RESPONSES + "/resp_abc123?stream=true", timeout=10)
    assert r.status_code == 200 and r.headers["content-encoding"] == "gzip"
    assert r.content == b"".join(events)  # decoded by httpx


def test_stored_response_routes_are_relayed(router: RouterProcess, upstream: FakeUpstream) -> None:
    with httpx.Client(base_url=router.url, timeout=10) as c:
        r = c.get(RESPONSES + "/resp_abc123?include=x")
        assert r.status_code == 200 and r.json()["id"] == "resp_abc123"
        assert (upstream.last.method, upstream.last.path) == ("GET", "/v1/responses/resp_abc123")
        assert upstream.last.query == "include=x"
        assert upstream.last.body == b""
        r = c.get(RESPONSES + "/resp_abc123/input_items")
        assert r.status_code == 200 and r.json()["object"] == "list"
        assert upstream.last.path == "/v1/responses/resp_abc123/input_items"
        r = c.delete(RESPONSES + "/resp_abc123")
        assert r.status_code == 200 and r.json()["deleted"] is True
        assert upstream.last.method == "DELETE"
        for path in ("/resp_abc123", "/resp_abc123/input_items"):  # HEAD of the GET routes
            r = c.head(RESPONSES + path)
            assert r.status_code == 200 and r.content == b""
            assert (upstream.last.method, upstream.last.path) == ("HEAD", "/v1/responses" + path)
        n = len(upstream.requests)
        assert c.get(RESPONSES + "/resp.bad").status_code == 404  # not an id: never relayed
        assert len(upstream.requests) == n
    metrics = scrape(router.url)
    assert value(metrics, "requests_total", route="/v1/responses/<response_id:str>", method="GET")


def test_translated_profile_stores_nothing(
    translated_router: RouterProcess, upstream: FakeUpstream
) -> None:
    r = httpx.get(translated_router.url + RESPONSES + "/resp_abc123")
    assert r.status_code == 404
    assert "not stored" in r.json()["error"]["message"]
    assert upstream.requests == []


def test_count_tokens_is_relayed_to_an_anthropic_upstream(
    router: RouterProcess, upstream: FakeUpstream
) -> None:
    body = {"model": "claude-x", "messages": [{"role": "user", "content": "hi"}]}
    r = httpx.post(router.url + COUNT, json=body, headers={"anthropic-version": "2023-06-01"})
    assert r.status_code == 200 and r.json() == {"input_tokens": 42}
    assert "x-router-token-count" not in r.headers
    assert upstream.last.path == COUNT and json.loads(upstream.last.body) == body
    r = httpx.post(router.url + INPUT_TOKENS, json={"model": "m", "input": "hi"})
    assert r.json() == {"object": "response.input_tokens", "input_tokens": 42}
    assert upstream.last.path == INPUT_TOKENS


def test_count_tokens_is_estimated_locally_never_an_inference_call(
    translated_router: RouterProcess, upstream: FakeUpstream
) -> None:
    text = "word " * 400  # 2,000 characters
    body = {
        "model": "claude-x",
        "system": [{"type": "text", "text": text, "cache_control": {"type": "ephemeral"}}],
        "messages": [{"role": "user", "content": text}, {"role": "assistant", "content": "ok"}],
        "tools": [{"name": "Write", "input_schema": {"type": "object"}}],
    }
    r = httpx.post(translated_router.url + COUNT, json=body, headers={"X-Request-ID": "ct-1"})
    assert r.status_code == 200
    assert r.headers["x-router-token-count"] == "estimate"
    assert r.headers["x-request-id"] == "ct-1"
    n = r.json()["input_tokens"]
    assert set(r.json()) == {"input_tokens"}
    # 4,000 + "ok" + "Write" characters at 4 a token (rounded up), 4 per message
    assert n == 1002 + 2 * 4
    r = httpx.post(translated_router.url + INPUT_TOKENS, json={"model": "m", "input": text})
    assert r.json() == {"object": "response.input_tokens", "input_tokens": 500}
    assert upstream.requests == []  # never an inference call


def test_count_tokens_has_its_own_rate_limit_bucket(
    translated_router: RouterProcess, upstream: FakeUpstream
) -> None:
    key = {"Authorization": "Bearer sk-bucket-test"}
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    with httpx.Client(base_url=translated_router.url, headers=key, timeout=10) as c:
        assert c.post(COUNT, json=body).status_code == 200
        assert c.post(COUNT, json=body).status_code == 429  # 1 a minute, burst 1
        # the Messages route's bucket is untouched by the counting
        assert c.post("/v1/messages", json={**body, "max_tokens": 5}).status_code == 200


def test_invalid_json_to_count_tokens_is_400(translated_router: RouterProcess) -> None:
    r = httpx.post(
        translated_router.url + COUNT,
        content=b"{nope",
        headers={"content-type": "application/json", "Authorization": "Bearer sk-bad-json"},
    )
    assert r.status_code == 400 and r.json()["type"] == "error"


@pytest.fixture(scope="module")
def beating_router(
    fake_upstream: FakeUpstream, module_router_factory: RouterFactory
) -> RouterProcess:
    profile = base_profile(fake_upstream.url, streamConfig={"heartbeatIntervalSecs": 0.2})
    return module_router_factory(profile)


def test_responses_heartbeat_is_an_event_clients_count_and_ignore(
    beating_router: RouterProcess, upstream: FakeUpstream
) -> None:
    events = openai_response_stream("m")
    # silence before the head, then between two events: heartbeats in both places
    upstream.reply_with(
        Reply(
            delay=0.5,
            headers=[("Content-Type", "text/event-stream")],
            chunks=[(0.0, e.encode()) for e in events[:4]]
            + [(0.5, events[4].encode())]
            + [(0.0, e.encode()) for e in events[5:]],
        )
    )
    with httpx.stream(
        "POST", beating_router.url + RESPONSES, json={"model": "m", "input": "x", "stream": True}
    ) as r:
        data = r.read().decode()
    beat = 'event: keepalive\ndata: {"type":"keepalive"}\n\n'
    comment = ": heartbeat\n\n"
    # Before the first event: comments (an event before response.created breaks the SDK's
    # reader); after it: events (Codex's idle timer does not see comments).
    first = data.index(events[0])
    assert first > 0 and set(data[:first].split("\n\n")) == {": heartbeat", ""}
    assert comment not in data[first:] and data[first:].count(beat) >= 1
    assert data[first:].replace(beat, "") == "".join(events)  # the upstream's events, untouched
    # The official SDK reads through the heartbeats.
    upstream.reply_with(
        Reply(
            headers=[("Content-Type", "text/event-stream")],
            chunks=[(0.0, events[0].encode()), (0.5, "".join(events[1:]).encode())],
        )
    )
    with (
        openai.OpenAI(base_url=beating_router.url + "/v1", api_key="k", max_retries=0) as client,
        client.responses.stream(model="m", input="hi") as stream,
    ):
        seen = [e.type for e in stream]
        final = stream.get_final_response()
    assert "keepalive" in seen and final.output_text == "Hello"


def test_a_responses_stream_that_breaks_ends_with_response_failed(
    beating_router: RouterProcess, upstream: FakeUpstream
) -> None:
    events = openai_response_stream("m")
    upstream.reply_with(
        Reply(
            action="close_mid",
            headers=[("Content-Type", "text/event-stream")],
            chunks=[(0.0, e.encode()) for e in events[:5]] + [(0.0, b"never sent")],
        )
    )
    with httpx.stream(
        "POST", beating_router.url + RESPONSES, json={"model": "m", "input": "x", "stream": True}
    ) as r:
        data = r.read().decode()
    assert data.startswith("".join(events[:5]))
    last = data[len("".join(events[:5])) :]
    assert last.startswith("event: response.failed\ndata: ")
    failed = json.loads(last.split("data: ", 1)[1])
    assert failed["type"] == "response.failed"
    assert failed["response"]["status"] == "failed"
    # One of the API's own codes (the SDK's ResponseError.code lists them); the router's own
    # (stream_error) is the completion line's error_type.
    assert failed["response"]["error"]["code"] == "server_error"
    assert "response.completed" not in data  # never a clean end
    line = beating_router.wait_for_log(
        lambda e: e.get("event") == "request_completed" and e.get("error_type") == "stream_error"
    )
    assert line["status_code"] == 200


def test_the_sdk_reads_a_stream_whose_first_event_is_slow(
    beating_router: RouterProcess, upstream: FakeUpstream
) -> None:
    """The upstream's head at once, its first event after several heartbeat intervals (a model
    thinking): the official SDK's stream reader gets response.created first and reads it all."""
    events = openai_response_stream("m")
    upstream.reply_with(
        Reply(
            headers=[("Content-Type", "text/event-stream")],
            chunks=[(0.7, events[0].encode())] + [(0.0, e.encode()) for e in events[1:]],
        )
    )
    with (
        openai.OpenAI(base_url=beating_router.url + "/v1", api_key="k", max_retries=0) as client,
        client.responses.stream(model="m", input="hi") as stream,
    ):
        seen = [e.type for e in stream]
        final = stream.get_final_response()
    assert seen[0] == "response.created" and final.output_text == "Hello"


def test_an_upstream_error_after_an_early_head_is_created_then_failed(
    beating_router: RouterProcess, upstream: FakeUpstream
) -> None:
    """The upstream slower than the heartbeat, then a 429: the head went out already, so the
    error is an event; the SDK reads response.failed only after a response.created."""
    body = b'{"error": {"message": "Slow down", "type": "requests", "code": "rate_limit_exceeded"}}'
    upstream.reply_with(
        Reply(status=429, delay=0.7, headers=[("Content-Type", "application/json")], body=body)
    )
    with (
        openai.OpenAI(base_url=beating_router.url + "/v1", api_key="k", max_retries=0) as client,
        client.responses.stream(model="m", input="hi") as stream,
    ):
        seen = [e for e in stream]
    assert [e.type for e in seen] == ["response.created", "response.failed"]
    assert seen[0].response.id == seen[1].response.id
    assert seen[1].response.error.code == "rate_limit_exceeded"
    assert seen[1].response.error.message == "Slow down"
