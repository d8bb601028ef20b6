"""Ill-typed client fields on translated routes (SPEC §12: what cannot be translated is a clear
400 naming the parameter), through real routers in front of the fake upstream: every field of
a valid request of each format (Messages, Chat Completions, Responses to either) set to values
of the wrong type is answered 400 before any upstream call, or 200 where the value is passed
through; never a 500. A number where the translator reads an object was a TypeError there."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.conftest import base_profile
from tests.fakes.upstream import FakeUpstream
from tests.support import RouterFactory, RouterProcess

CHAT = "/v1/chat/completions"
MESSAGES = "/v1/messages"
RESPONSES = "/v1/responses"

MESSAGES_BODY: dict[str, Any] = {
    "model": "m",
    "max_tokens": 10,
    "messages": [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "hi"},
                {
                    "type": "image",
                    "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"},
                },
            ],
        },
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "a"},
                {"type": "thinking", "thinking": "t", "signature": "s"},
                {"type": "tool_use", "id": "c", "name": "t", "input": {}},
            ],
        },
        {
            "role": "user",
            "content": [
                {
                    "type": "tool_result",
                    "tool_use_id": "c",
                    "content": [{"type": "text", "text": "r"}],
                }
            ],
        },
    ],
    "system": [{"type": "text", "text": "s"}],
    "tools": [{"name": "t", "input_schema": {"type": "object"}}],
    "tool_choice": {"type": "auto"},
    "thinking": {"type": "enabled", "budget_tokens": 1024},
    "metadata": {"user_id": "u"},
    "stop_sequences": ["x"],
    "temperature": 0.5,
    "stream": True,
}
CHAT_BODY: dict[str, Any] = {
    "model": "m",
    "messages": [
        {"role": "system", "content": "s"},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "hi"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
            ],
        },
        {
            "role": "assistant",
            "content": [{"type": "text", "text": "a"}],
            "tool_calls": [
                {"id": "c", "type": "function", "function": {"name": "t", "arguments": "{}"}}
            ],
        },
        {"role": "tool", "tool_call_id": "c", "content": "r"},
    ],
    "tools": [{"type": "function", "function": {"name": "t", "parameters": {"type": "object"}}}],
    "tool_choice": {"type": "function", "function": {"name": "t"}},
    "reasoning_effort": "low",
    "response_format": {"type": "json_schema", "json_schema": {"name": "n", "schema": {}}},
    "max_tokens": 10,
    "stop": ["x"],
    "stream": True,
    "stream_options": {"include_usage": True},
}
RESPONSES_BODY: dict[str, Any] = {
    "model": "m",
    "input": [
        {"role": "user", "content": [{"type": "input_text", "text": "hi"}]},
        {"type": "function_call", "call_id": "c", "name": "t", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "c", "output": "r"},
        {"type": "custom_tool_call", "call_id": "d", "name": "apply_patch", "input": "x"},
        {"type": "custom_tool_call_output", "call_id": "d", "output": "ok"},
    ],
    "instructions": "s",
    "tools": [
        {"type": "function", "name": "t", "parameters": {"type": "object"}},
        {"type": "custom", "name": "apply_patch"},
    ],
    "reasoning": {"effort": "low"},
    "store": False,
    "text": {"format": {"type": "text"}},
    "max_output_tokens": 10,
    "stream": True,
}
WRONG = [1, "x", [], {}, None, True, [1], ["x"], {"a": 1}, 1.5]


def paths(value: Any, at: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Every field and item of `value`, by its path."""
    if at:
        yield at
    if isinstance(value, dict):
        for k, v in value.items():
            yield from paths(v, (*at, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from paths(v, (*at, i))


def with_value(body: dict[str, Any], at: tuple[Any, ...], value: Any) -> dict[str, Any]:
    out = copy.deepcopy(body)
    cur: Any = out
    for k in at[:-1]:
        cur = cur[k]
    cur[at[-1]] = value
    return out


@pytest.fixture(scope="module")
def to_openai(fake_upstream: FakeUpstream, module_router_factory: RouterFactory) -> RouterProcess:
    """Messages and Responses translated to Chat Completions."""
    endpoints = {MESSAGES: {"format": "openai"}, RESPONSES: {"format": "openai"}}
    return module_router_factory(base_profile(fake_upstream.url, endpoints=endpoints))


@pytest.fixture(scope="module")
def to_anthropic(
    fake_upstream: FakeUpstream, module_router_factory: RouterFactory
) -> RouterProcess:
    """Chat Completions and Responses translated to Messages."""
    endpoints = {CHAT: {"format": "anthropic"}, RESPONSES: {"format": "anthropic"}}
    return module_router_factory(base_profile(fake_upstream.url, endpoints=endpoints))


def refused_or_passed(
    client: httpx.Client, upstream: FakeUpstream, path: str, body: dict[str, Any]
) -> list[str]:
    """Every wrong-typed value at every field of `body`: what was neither a 400 before any
    upstream call (in the route's error shape) nor a 200."""
    wrong: list[str] = []
    assert client.post(path, json=body).status_code == 200  # the valid request passes
    for at in list(paths(body)):
        for value in WRONG:
            sent = len(upstream.requests)
            r = client.post(path, json=with_value(body, at, value))
            where = f"{'.'.join(map(str, at))}={value!r}"
            if r.status_code == 400:
                error = r.json()["error"]
                if path.startswith(MESSAGES):
                    assert r.json()["type"] == "error", where
                assert error["type"] == "invalid_request_error", where
                assert len(upstream.requests) == sent, where  # nothing reached the upstream
            elif r.status_code != 200:
                wrong.append(f"{where}: {r.status_code} {r.text[:100]}")
    return wrong


@pytest.mark.parametrize(
    ("router_name", "path", "body"),
    [
        ("to_openai", MESSAGES, MESSAGES_BODY),
        ("to_openai", RESPONSES, RESPONSES_BODY),
        ("to_anthropic", CHAT, CHAT_BODY),
        ("to_anthropic", RESPONSES, RESPONSES_BODY),
    ],
    ids=["messages-to-chat", "responses-to-chat", "chat-to-messages", "responses-to-messages"],
)
def test_wrong_typed_fields_are_400_or_passed_never_a_500(
    request: pytest.FixtureRequest,
    upstream: FakeUpstream,
    router_name: str,
    path: str,
    body: dict[str, Any],
) -> None:
    router: RouterProcess = request.getfixturevalue(router_name)
    with httpx.Client(base_url=router.url, timeout=10) as client:
        assert refused_or_passed(client, upstream, path, body) == []


@pytest.mark.parametrize(
    ("router_name", "path", "body", "at", "value", "named"),
    [
        (
            "to_openai",
            MESSAGES,
            MESSAGES_BODY,
            ("messages", 2, "content", 0, "content", 0, "text"),
            1,
            "'messages[2].content[0].content[0].text' must be a string",
        ),
        (
            "to_anthropic",
            CHAT,
            CHAT_BODY,
            ("messages", 2, "tool_calls"),
            "x",
            "'messages[2].tool_calls' must be an array",
        ),
        (
            "to_anthropic",
            CHAT,
            CHAT_BODY,
            ("tools", 0, "function"),
            1,
            "'tools[0].function' must be an object",
        ),
        (
            "to_anthropic",
            RESPONSES,
            RESPONSES_BODY,
            ("reasoning", "effort"),
            [],
            "'reasoning.effort' must be a string",
        ),
        (
            "to_openai",
            RESPONSES,
            RESPONSES_BODY,
            ("input", 1, "type"),
            [],
            "'input[1].type' must be a string",
        ),
    ],
)
def test_the_400_names_the_field(
    request: pytest.FixtureRequest,
    upstream: FakeUpstream,
    router_name: str,
    path: str,
    body: dict[str, Any],
    at: tuple[Any, ...],
    value: Any,
    named: str,
) -> None:
    router: RouterProcess = request.getfixturevalue(router_name)
    r = httpx.post(router.url + path, json=with_value(body, at, value), timeout=10)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["message"] == named
    if path == MESSAGES:
        assert r.json()["type"] == "error"  # the Anthropic shape
    assert upstream.requests == []


def test_a_routing_file_s_translated_attempt_names_the_field_too(
    fake_upstream: FakeUpstream, upstream: FakeUpstream, router_factory: RouterFactory
) -> None:
    """Under a routing file the attempt writes the translated body (failover's request)."""
    routing = {
        "upstreams": {
            "claude": {
                "profile": "anthropic",
                "baseUrl": fake_upstream.url,
                "timeouts": {"connectSecs": 2, "readSecs": 10},
            }
        },
        "modelRoutes": [{"match": "*", "targets": [{"upstream": "claude", "model": "c"}]}],
    }
    router = router_factory(routing, name="routing")
    with httpx.Client(base_url=router.url, timeout=10) as client:
        bad = with_value(CHAT_BODY, ("tools", 0, "function"), 1)
        for stream in (True, False):
            r = client.post(CHAT, json={**bad, "stream": stream})
            assert r.status_code == 400, r.text
            assert r.json()["error"]["message"] == "'tools[0].function' must be an object"
        assert upstream.requests == []
        # what a target cannot take at all was a 500 there too (the error copied for the
        # attempts' headers: copy.copy called Untranslatable's __init__ with the wrong arguments)
        r = client.post(CHAT, json={**CHAT_BODY, "logit_bias": {"1": 2}})
        assert r.status_code == 400, r.text
        assert r.json()["error"]["code"] == "untranslatable_request"
        assert "'logit_bias'" in r.json()["error"]["message"]
        assert upstream.requests == []
        wrong = refused_or_passed(client, upstream, CHAT, CHAT_BODY)
    # a model of the wrong type names no route: 404 model_not_found, as for any unknown model
    assert [w for w in wrong if not w.startswith("model=")] == []


def test_the_local_token_estimate_takes_wrong_typed_fields_too(
    to_openai: RouterProcess, upstream: FakeUpstream
) -> None:
    """count_tokens on a route translated to Chat Completions is the router's own estimate:
    whatever the types, an answer (a block whose `type` was a list was a TypeError)."""
    body = {k: v for k, v in MESSAGES_BODY.items() if k not in ("max_tokens", "stream")}
    with httpx.Client(base_url=to_openai.url, timeout=10) as client:
        wrong = refused_or_passed(client, upstream, "/v1/messages/count_tokens", body)
        r = client.post(
            "/v1/messages/count_tokens",
            json={"model": "m", "messages": [{"role": "user", "content": [{"type": []}]}]},
        )
    assert wrong == []
    assert r.status_code == 200 and r.headers["x-router-token-count"] == "estimate"
    assert upstream.requests == []
