"""`dropFields` (service.config.model, service.proxy.gemini.fit_body): the top-level body fields an
upstream refuses never reach it, on every path a body takes there: relayed as the client wrote
it, translated (the Anthropic SDK on an OpenAI-format upstream: the translation writes `user`
from `metadata.user_id`), and each attempt of a routing file's. A route's own list replaces
the profile's, and an upstream of a routing file overrides its profile's."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import pytest

from tests.conftest import base_profile
from tests.fakes.agent_upstream import gemini_refusal
from tests.fakes.upstream import FailFirst, FakeUpstream, Recorded, Reply, default_reply
from tests.support import RouterFactory, RouterProcess

KEY = "sk-client-key-1234"
REFUSED = ["user", "parallel_tool_calls"]
CHAT = {
    "model": "m",
    "messages": [{"role": "user", "content": "hi"}],
    "user": "someone",
    "parallel_tool_calls": False,
    "temperature": 0.5,
}


def unknown_names(body: dict[str, Any]) -> list[str]:
    return [f'Invalid JSON payload received. Unknown name "{k}"' for k in REFUSED if k in body]


class Strict(FailFirst):
    """A provider that refuses REFUSED as Gemini refuses a field it does not know (its 400 as
    the agent cells' fake writes it); the first `fail` requests get a 503."""

    def answer(self, req: Recorded) -> Reply:
        unknown = unknown_names(req.json())
        return gemini_refusal(unknown) if unknown else default_reply(req)


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeUpstream]:
    with FakeUpstream() as up:
        yield up


@pytest.fixture(autouse=True)
def _fresh(upstream: FakeUpstream) -> None:
    upstream.reset()
    upstream.reply_with(Strict())


@pytest.fixture(scope="module")
def router(upstream: FakeUpstream, module_router_factory: RouterFactory) -> RouterProcess:
    profile = base_profile(
        upstream.url,
        dropFields=[*REFUSED, "user"],  # (a name twice is taken once)
        endpoints={
            "/v1/messages": {"format": "openai"},
            "/v1/embeddings": {"dropFields": []},  # this route drops nothing
            "/v1/completions": {"dropFields": ["stream_options"]},
        },
    )
    return module_router_factory(profile, name="drop")


@pytest.fixture(scope="module")
def routed(upstream: FakeUpstream, module_router_factory: RouterFactory) -> RouterProcess:
    timeouts = {"connectSecs": 2, "readSecs": 10}
    routing = {
        "name": "drop-routed",
        "upstreams": {
            "strict": {"baseUrl": upstream.url, "dropFields": REFUSED, "timeouts": timeouts},
            "gem": {"profile": "gemini", "baseUrl": upstream.url, "timeouts": timeouts},
        },
        "modelRoutes": [
            {"match": "s", "targets": [{"upstream": "strict", "model": "strict-model"}]},
            {"match": "g", "targets": [{"upstream": "gem", "model": "gemini-2.5-pro"}]},
        ],
        "retry": {"maxAttempts": 2, "backoffBaseSecs": 0.01, "backoffMaxSecs": 0.02},
        "outlierDetection": {"consecutiveFailures": 100, "failureRate": 0},
    }
    return module_router_factory(routing, name="drop-routed")


def _post(router: RouterProcess, path: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(
        router.url + path, json=body, headers={"Authorization": f"Bearer {KEY}"}, timeout=10
    )


def test_a_relayed_body_loses_the_dropped_fields_and_keeps_the_rest(
    router: RouterProcess, upstream: FakeUpstream
) -> None:
    r = _post(router, "/v1/chat/completions", CHAT)
    assert r.status_code == 200, r.text
    sent = upstream.last.json()
    assert sent == {
        "model": "m",
        "messages": [{"role": "user", "content": "hi"}],
        "temperature": 0.5,
    }


def test_a_body_without_them_goes_as_written(router: RouterProcess, upstream: FakeUpstream) -> None:
    raw = b'{"model":"m",  "messages":[{"role":"user","content":"hi"}]}'
    r = httpx.post(
        router.url + "/v1/chat/completions",
        content=raw,
        headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"},
        timeout=10,
    )
    assert r.status_code == 200, r.text
    assert upstream.last.body == raw  # not written again


def test_a_route_with_its_own_empty_list_drops_nothing(
    router: RouterProcess, upstream: FakeUpstream
) -> None:
    upstream.reply_with(default_reply)
    r = _post(router, "/v1/embeddings", {"model": "m", "input": "x", "user": "someone"})
    assert r.status_code == 200, r.text
    assert upstream.last.json()["user"] == "someone"


def test_a_translated_body_loses_what_the_translation_wrote(
    router: RouterProcess, upstream: FakeUpstream
) -> None:
    """Claude Code sends `metadata.user_id` on every request; the Chat translation makes it
    `user`, which a provider that refuses `user` would answer 400 each time."""
    client = anthropic.Anthropic(base_url=router.url, api_key=KEY, max_retries=0)
    with client:
        out = client.messages.create(
            model="m",
            max_tokens=16,
            messages=[{"role": "user", "content": "hi"}],
            metadata={"user_id": "user_abc_account_1_session_2"},
        )
    assert out.content
    sent = upstream.last.json()
    assert "user" not in sent and sent["messages"][-1] == {"role": "user", "content": "hi"}


@pytest.mark.parametrize("fail", [0, 1])
def test_each_attempt_of_a_routed_upstream_loses_them(
    routed: RouterProcess, upstream: FakeUpstream, fail: int
) -> None:
    upstream.reply_with(Strict(fail=fail))
    r = _post(routed, "/v1/chat/completions", {**CHAT, "model": "s"})
    assert r.status_code == 200, r.text
    assert r.headers["x-router-attempts"] == str(fail + 1)
    assert len(upstream.requests) == fail + 1
    for req in upstream.requests:
        assert not set(REFUSED) & set(req.json())
        assert req.json()["model"] == "strict-model"


def test_an_upstream_without_the_key_sends_them(
    routed: RouterProcess, upstream: FakeUpstream
) -> None:
    """The shipped gemini profile sets no dropFields (no field is known for sure to be refused
    there today): the refusal reaches the client as the provider wrote it."""
    r = _post(routed, "/v1/chat/completions", {**CHAT, "model": "g"})
    assert r.status_code == 400
    sent = upstream.last.json()
    assert set(REFUSED) <= set(sent)
    assert r.content == gemini_refusal(unknown_names(sent)).body  # as the provider wrote it


def test_dropping_stream_options_removes_the_usage_request_the_router_adds(
    router: RouterProcess, upstream: FakeUpstream
) -> None:
    """The router asks a streamed Chat or Completions request for usage (`stream_options`,
    streamConfig.requestUsage) before the body rules run: a route that drops `stream_options`
    sends none (docs/configuration.md: such streams carry no usage to count)."""
    upstream.reply_with(default_reply)
    body = {"model": "m", "prompt": "hi", "stream": True}
    with httpx.stream(
        "POST",
        router.url + "/v1/completions",
        json=body,
        headers={"Authorization": f"Bearer {KEY}"},
        timeout=10,
    ) as r:
        r.read()
    assert r.status_code == 200
    assert upstream.last.json() == {"model": "m", "prompt": "hi", "stream": True}
    r = _post(router, "/v1/chat/completions", {**CHAT, "stream": True})  # the profile's list
    assert r.status_code == 200
    assert upstream.last.json()["stream_options"] == {"include_usage": True}
