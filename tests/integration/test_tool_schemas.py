"""`toolSchemas` and `thoughtSignatures` on a routing file's upstreams (service.proxy.gemini):
the real router in front of a fake that refuses tool schemas as Gemini does
(tests/fakes/gemini_schema.py), the real `openai` and `anthropic` SDKs as clients.

The single-profile path is what the coding agents' gemini cells run (tests/e2e); here the
routed one: an upstream built on the gemini profile, one that sets `toolSchemas` inline, one
that turns it off inline, and a retry after a 503 (each attempt writes its body again)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import anthropic
import openai
import pytest

from tests.fakes.agent_upstream import gemini_refusal
from tests.fakes.gemini_schema import refusals
from tests.fakes.upstream import FailFirst, FakeUpstream, Recorded, Reply, default_reply
from tests.support import RouterFactory, RouterProcess

KEY = "sk-client-key-1234"
SKIP = {"google": {"thought_signature": "skip_thought_signature_validator"}}
# A tool described as the coding agents describe theirs (JSON Schema 2020-12, a closed object,
# an exclusive bound, a nullable type list): Gemini refuses each of those keywords.
SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "properties": {
        "path": {"type": "string", "description": "where"},
        "lines": {"type": ["integer", "null"], "exclusiveMinimum": 0},
    },
    "required": ["path"],
    "additionalProperties": False,
}
FITTED = {
    "type": "object",
    "properties": {
        "path": {"type": "string", "description": "where"},
        "lines": {"type": "integer", "minimum": 0, "nullable": True},
    },
    "required": ["path"],
}


class Gemini(FailFirst):
    """Gemini's checks on tool schemas, then a provider's answer; the first `fail` requests
    get a 503."""

    def answer(self, req: Recorded) -> Reply:
        refused = refusals(req.json().get("tools"))
        return gemini_refusal(refused) if refused else default_reply(req)


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeUpstream]:
    with FakeUpstream() as up:
        yield up


@pytest.fixture(scope="module")
def router(upstream: FakeUpstream, module_router_factory: RouterFactory) -> RouterProcess:
    timeouts = {"connectSecs": 2, "readSecs": 10}
    routing = {
        "name": "tools",
        "upstreams": {
            "gem": {"profile": "gemini", "baseUrl": upstream.url, "timeouts": timeouts},
            "own": {"baseUrl": upstream.url, "toolSchemas": "gemini", "timeouts": timeouts},
            "raw": {
                "profile": "gemini",
                "baseUrl": upstream.url,
                "toolSchemas": "asIs",
                "timeouts": timeouts,
            },
        },
        "modelRoutes": [
            {"match": "g", "targets": [{"upstream": "gem", "model": "gemini-2.5-pro"}]},
            {"match": "o", "targets": [{"upstream": "own", "model": "own-model"}]},
            {"match": "r", "targets": [{"upstream": "raw", "model": "gemini-2.5-pro"}]},
        ],
        "retry": {"maxAttempts": 2, "backoffBaseSecs": 0.01, "backoffMaxSecs": 0.02},
        "outlierDetection": {"consecutiveFailures": 100, "failureRate": 0},
    }
    return module_router_factory(routing, name="tools")


@pytest.fixture(autouse=True)
def _fresh(upstream: FakeUpstream) -> None:
    upstream.reset()
    upstream.reply_with(Gemini())


def _openai(router: RouterProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=router.url + "/v1", api_key=KEY, max_retries=0)


def _chat_tools() -> list[dict[str, Any]]:
    return [{"type": "function", "function": {"name": "read", "parameters": SCHEMA}}]


@pytest.mark.parametrize("model", ["g", "o"])
def test_a_routed_upstream_that_fits_tool_schemas_gets_them_fitted(
    router: RouterProcess, upstream: FakeUpstream, model: str
) -> None:
    with _openai(router) as client:
        out = client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": "hi"}],
            tools=_chat_tools(),  # type: ignore[list-item]
        )
    assert out.choices[0].message.content
    sent = upstream.last.json()
    assert sent["tools"] == [
        {"type": "function", "function": {"name": "read", "parameters": FITTED}}
    ]
    assert sent["messages"] == [{"role": "user", "content": "hi"}]  # nothing else changed


def test_an_upstream_that_keeps_them_as_is_sends_the_client_s_schema(
    router: RouterProcess, upstream: FakeUpstream
) -> None:
    with _openai(router) as client, pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(
            model="r",
            messages=[{"role": "user", "content": "hi"}],
            tools=_chat_tools(),  # type: ignore[list-item]
        )
    assert "Unknown name" in json.dumps(e.value.body)  # the upstream's own refusal, relayed
    assert upstream.last.json()["tools"][0]["function"]["parameters"] == SCHEMA


def test_a_retried_attempt_and_a_translated_request_are_fitted_too(
    router: RouterProcess, upstream: FakeUpstream
) -> None:
    upstream.reply_with(Gemini(fail=1))
    tool = {"name": "read", "description": "read a file", "input_schema": SCHEMA}
    with anthropic.Anthropic(base_url=router.url, api_key=KEY, max_retries=0) as client:
        out = client.messages.create(
            model="g",
            max_tokens=64,
            messages=[{"role": "user", "content": "hi"}],
            tools=[tool],  # type: ignore[list-item]
        )
    assert out.content[0].type == "text"
    assert len(upstream.requests) == 2  # the 503, then the retry
    for req in upstream.requests:
        assert req.path == "/v1beta/openai/chat/completions"
        (sent,) = req.json()["tools"]
        assert sent["function"]["parameters"] == FITTED
    assert tool["input_schema"] == SCHEMA


def test_an_unsigned_earlier_call_gets_gemini_s_stand_in_on_a_routed_gemini_upstream(
    router: RouterProcess, upstream: FakeUpstream
) -> None:
    call = {"id": "c1", "type": "function", "function": {"name": "read", "arguments": "{}"}}
    history = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "c1", "content": "ok"},
    ]
    for model, expected in (("g", SKIP), ("o", None)):  # "o" sets toolSchemas only
        with _openai(router) as client:
            client.chat.completions.create(model=model, messages=history)  # type: ignore[arg-type]
        (sent,) = upstream.last.json()["messages"][1]["tool_calls"]
        assert sent.get("extra_content") == expected
        assert {k: sent[k] for k in call} == call
