"""The translation policy through a real router (issue 13, docs/translation.md): what a
coding agent sends on a translated route is dropped or mapped, not refused; each dropped field is
counted in `translation_dropped_fields_total{field}` and logged at debug; the other provider's
headers never reach the upstream; `translation: {"strict": true}` on a profile or an endpoint
restores the refusals."""

from __future__ import annotations

import json

import httpx
import pytest

from tests.conftest import base_profile
from tests.fakes.upstream import FakeUpstream
from tests.scrape import scrape, value
from tests.support import RouterFactory, RouterProcess, shipped_profile

MESSAGES = "/v1/messages"
CHAT = "/v1/chat/completions"
# The fields of a Claude Code request that a Chat Completions upstream has no use for.
CLAUDE_CODE = {
    "model": "claude-sonnet-4-5",
    "max_tokens": 32000,
    "system": [
        {"type": "text", "text": "You are Claude Code.", "cache_control": {"type": "ephemeral"}}
    ],
    "messages": [
        {"role": "user", "content": [{"type": "text", "text": "write hello.txt"}]},
    ],
    "thinking": {"type": "enabled", "budget_tokens": 10000},
    "context_management": {"edits": [{"type": "clear_thinking_20251015", "keep": "all"}]},
    "metadata": {"user_id": "user_abc", "session": "s-1"},
    "tools": [
        {
            "name": "Write",
            "description": "Write a file",
            "input_schema": {"type": "object", "properties": {"file_path": {"type": "string"}}},
            "cache_control": {"type": "ephemeral"},
        }
    ],
    "stream": False,
}
CLAUDE_HEADERS = {
    "anthropic-version": "2023-06-01",
    "anthropic-beta": "context-management-2025-06-27,interleaved-thinking-2025-05-14",
    "x-api-key": "sk-claude-code-key",
}


DEBUG = {"LOG_LEVEL": "debug"}


@pytest.fixture(scope="module")
def lenient(fake_upstream: FakeUpstream, module_router_factory: RouterFactory) -> RouterProcess:
    eps = {MESSAGES: {"format": "openai"}, CHAT: {"format": "openai"}}
    return module_router_factory(base_profile(fake_upstream.url, endpoints=eps), env=DEBUG)


def test_a_claude_code_request_reaches_a_chat_upstream_without_its_hints(
    lenient: RouterProcess, upstream: FakeUpstream
) -> None:
    before = scrape(lenient.url)
    r = httpx.post(
        lenient.url + MESSAGES + "?beta=true",  # as Claude Code sends it
        json=CLAUDE_CODE,
        headers={**CLAUDE_HEADERS, "X-Request-ID": "cc-1"},
        timeout=10,
    )
    assert r.status_code == 200, r.text
    assert r.json()["type"] == "message"
    sent = upstream.last
    assert sent.path == CHAT
    body = json.loads(sent.body)
    assert (
        body["reasoning_effort"] == "medium"
    )  # a budget of 10,000 (docs/translation.md thresholds)
    assert body["user"] == "user_abc"
    assert body["messages"][0] == {"role": "system", "content": "You are Claude Code."}
    text = sent.body.decode()
    for hint in ("context_management", "cache_control", "thinking", "session"):
        assert hint not in text, hint
    assert not [k for k, _ in sent.headers if k.lower().startswith("anthropic-")]
    assert sent.query == ""  # Anthropic's `beta` flag means nothing to a Chat upstream
    assert sent.header("authorization") == "Bearer sk-claude-code-key"

    after = scrape(lenient.url)
    for field in ("context_management", "cache_control", "metadata", "anthropic_headers"):
        got = value(after, "translation_dropped_fields_total", field=field)
        assert got - value(before, "translation_dropped_fields_total", field=field) == 1, field
    line = lenient.wait_for_log(
        lambda x: x.get("event") == "translation_dropped_fields" and x.get("request_id") == "cc-1"
    )
    assert line["level"] == "debug"
    assert {"context_management", "cache_control", "anthropic_headers"} <= set(line["fields"])


def test_openai_headers_are_dropped_towards_an_anthropic_upstream(
    fake_upstream: FakeUpstream, upstream: FakeUpstream, router_factory: RouterFactory
) -> None:
    profile = base_profile(fake_upstream.url, endpoints={CHAT: {"format": "anthropic"}})
    router = router_factory(profile, env=DEBUG)
    r = httpx.post(
        router.url + CHAT,
        json={"model": "m", "messages": [{"role": "user", "content": "hi"}]},
        headers={"OpenAI-Organization": "org-1", "OpenAI-Beta": "x", "X-Custom": "kept"},
        timeout=10,
    )
    assert r.status_code == 200
    metrics = scrape(router.url)
    sent = upstream.last
    assert sent.path == MESSAGES
    assert not [k for k, _ in sent.headers if k.lower().startswith("openai-")]
    assert sent.header("x-custom") == "kept"
    assert value(metrics, "translation_dropped_fields_total", field="openai_headers") == 1


@pytest.mark.parametrize("where", ["profile", "endpoint"])
def test_strict_translation_restores_the_refusals(
    fake_upstream: FakeUpstream, upstream: FakeUpstream, router_factory: RouterFactory, where: str
) -> None:
    strict = {"strict": True}
    eps: dict[str, object] = {MESSAGES: {"format": "openai"}}
    extra: dict[str, object] = {}
    if where == "profile":
        extra["translation"] = strict
    else:
        eps[MESSAGES] = {"format": "openai", "translation": strict}
    router = router_factory(base_profile(fake_upstream.url, endpoints=eps, **extra), env=DEBUG)
    r = httpx.post(router.url + MESSAGES, json=CLAUDE_CODE, headers=CLAUDE_HEADERS, timeout=10)
    # the same request without its hints passes the strict route
    plain = {k: v for k, v in CLAUDE_CODE.items() if k not in ("context_management",)}
    plain["system"] = "You are Claude Code."
    plain["metadata"] = {"user_id": "u"}
    plain["tools"] = [{k: v for k, v in t.items() if k != "cache_control"} for t in plain["tools"]]
    ok = httpx.post(router.url + MESSAGES, json=plain, headers={"x-api-key": "k"}, timeout=10)
    assert r.status_code == 400
    err = r.json()
    assert err["type"] == "error" and err["error"]["type"] == "invalid_request_error"
    assert "has no equivalent" in err["error"]["message"]
    assert ok.status_code == 200, ok.text
    assert len(upstream.requests) == 1  # the refused request never reached the upstream


def test_the_openai_profile_sends_an_effort_only_to_openai_s_reasoning_models(
    upstream: FakeUpstream, router_factory: RouterFactory
) -> None:
    """Claude Code asks for thinking on its requests; OpenAI's gpt-4o and gpt-4.1 (the shipped
    profile's models) answer 400 to `reasoning_effort`, so Claude Code mapped to gpt-4.1 failed on
    every turn. The shipped profile's `reasoningEffort` names the reasoning models: others get
    no effort (dropped and counted as `thinking`), a gpt-5 model still gets it. The name judged
    is the one sent upstream, after `modelMapping`."""
    profile = shipped_profile("openai", upstream.url)
    profile["modelMapping"] = {"claude-sonnet-4-5": "gpt-4.1", "claude-opus-4-5": "gpt-5.5"}
    router = router_factory(profile, name="openai-effort")
    sent: dict[str, dict[str, object]] = {}
    for client_model in ("claude-sonnet-4-5", "claude-opus-4-5", "o3-mini"):
        before = value(scrape(router.url), "translation_dropped_fields_total", field="thinking")
        r = httpx.post(
            router.url + MESSAGES,
            json={**CLAUDE_CODE, "model": client_model},
            headers=CLAUDE_HEADERS,
            timeout=10,
        )
        assert r.status_code == 200, r.text
        body = json.loads(upstream.last.body)
        sent[body["model"]] = body
        dropped = value(scrape(router.url), "translation_dropped_fields_total", field="thinking")
        assert dropped - before == (1 if body["model"] == "gpt-4.1" else 0), client_model
    assert set(sent) == {"gpt-4.1", "gpt-5.5", "o3-mini"}
    assert "reasoning_effort" not in sent["gpt-4.1"]
    assert sent["gpt-5.5"]["reasoning_effort"] == "medium"  # budget 10,000
    assert sent["o3-mini"]["reasoning_effort"] == "medium"
    for body in sent.values():
        assert body["max_completion_tokens"] == 32000 and "max_tokens" not in body
