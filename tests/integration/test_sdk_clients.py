"""The real openai and anthropic SDKs, through the real router, against the fake upstream."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest

from tests.fakes.agent_upstream import PREAMBLE, REASONING, AgentScript
from tests.fakes.upstream import FakeUpstream
from tests.support import RouterFactory, RouterProcess, shipped_profile


def _openai(router: RouterProcess, key: str = "sk-client-key") -> openai.OpenAI:
    return openai.OpenAI(base_url=router.url + "/v1", api_key=key, max_retries=0)


def test_openai_chat_completion_maps_model_and_forwards_everything(
    router: RouterProcess, upstream: FakeUpstream
) -> None:
    client = _openai(router)
    resp = client.chat.completions.create(
        model="gpt-4",
        messages=[{"role": "user", "content": "hi"}],
        temperature=0.25,
        extra_body={"custom_vendor_field": {"nested": [1, 2, 3]}},
    )
    assert resp.choices[0].message.content == "Hello from fake"
    assert resp.model == "up-model-4"
    sent = upstream.last
    assert sent.path == "/v1/chat/completions"
    body = sent.json()
    assert body["model"] == "up-model-4"
    assert body["temperature"] == 0.25
    assert body["custom_vendor_field"] == {"nested": [1, 2, 3]}
    assert body["messages"] == [{"role": "user", "content": "hi"}]
    assert sent.header("authorization") == "Bearer sk-client-key"


def test_openai_completions_and_embeddings(router: RouterProcess, upstream: FakeUpstream) -> None:
    client = _openai(router)
    c = client.completions.create(model="unmapped-model", prompt="Say hi")
    assert c.choices[0].text == "Hello"
    assert upstream.last.path == "/v1/completions"
    assert upstream.last.json()["model"] == "unmapped-model"
    e = client.embeddings.create(model="text-embedding-3-small", input="abc")
    assert e.data[0].embedding == [0.1, 0.2, 0.3]
    assert upstream.last.path == "/v1/embeddings"
    assert upstream.last.json()["input"] == "abc"


def test_anthropic_messages_create(router: RouterProcess, upstream: FakeUpstream) -> None:
    client = anthropic.Anthropic(base_url=router.url, api_key="sk-ant-client", max_retries=0)
    msg = client.messages.create(
        model="claude-test",
        max_tokens=64,
        messages=[{"role": "user", "content": "hi"}],
    )
    assert msg.content[0].text == "Hello from fake"  # type: ignore[union-attr]
    sent = upstream.last
    assert sent.path == "/v1/messages"
    # the SDK sends x-api-key; the profile's auth (default Bearer) decides the upstream form
    assert sent.header("authorization") == "Bearer sk-ant-client"
    assert sent.header("x-api-key") is None
    assert sent.header("anthropic-version") is not None
    assert sent.json()["max_tokens"] == 64


def test_openai_sdk_sees_upstream_error_status(
    router: RouterProcess, upstream: FakeUpstream
) -> None:
    from tests.fakes.upstream import Reply

    upstream.reply_with(
        Reply(
            status=429,
            headers=[("Content-Type", "application/json"), ("x-ratelimit-remaining-requests", "0")],
            body=b'{"error":{"message":"slow down","type":"rate_limit_error",'
            b'"code":"rate_limited"}}',
        )
    )
    client = _openai(router)
    try:
        client.chat.completions.create(model="gpt-4", messages=[{"role": "user", "content": "x"}])
    except openai.RateLimitError as e:
        assert e.status_code == 429
        assert e.response.headers["x-ratelimit-remaining-requests"] == "0"
        assert e.body["message"] == "slow down"  # type: ignore[index]
    else:
        raise AssertionError("expected a RateLimitError")


# -- tool round trips on every translated pair, with the scripted agent upstream ----------------
#
# The shipped profiles (baseUrl pointed at the fake upstream), each SDK speaking its own format,
# the fake answering in the upstream's format with the scripted conversation of
# tests/fakes/agent_upstream.py: a tool call to `write_file` (or the freeform `apply_patch`), then,
# given the tool's result, the final text. JSON and stream alike.

WRITE_SCHEMA = {
    "type": "object",
    "properties": {"file_path": {"type": "string"}, "content": {"type": "string"}},
    "required": ["file_path", "content"],
}
WRITE_DESCRIPTION = "Write a file to the local filesystem."
PATCH_GRAMMAR = (
    'start: "*** Begin Patch" LF hunk+ "*** End Patch" LF?\n'
    'hunk: "*** Add File: " /(.+)/ LF ("+" /(.*)/ LF)+\n'
    "%import common.LF\n"
)
TOOL_RESULT = "File written."
UPSTREAM_PATH = {
    "qwen": "/v1/chat/completions",
    "anthropic": "/v1/messages",
    "openai": "/v1/responses",
}
# The model each SDK asks for on each profile, and what the upstream must be sent.
MODEL = {"qwen": "gpt-4", "anthropic": "claude-sonnet-4-5", "openai": "gpt-5.5"}
UPSTREAM_MODEL = {"qwen": "qwen3-coder-max", "anthropic": "claude-sonnet-4-5", "openai": "gpt-5.5"}
STREAMING = [pytest.param(False, id="json"), pytest.param(True, id="stream")]


@pytest.fixture(scope="module")
def shipped(
    fake_upstream: FakeUpstream, module_router_factory: RouterFactory
) -> dict[str, RouterProcess]:
    """One running router per shipped profile the pairs need: qwen (Chat), anthropic, openai."""
    return {
        name: module_router_factory(shipped_profile(name, fake_upstream.url), name=name)
        for name in UPSTREAM_PATH
    }


def _script(tmp_path: Path) -> AgentScript:
    token = uuid.uuid4().hex[:10]
    return AgentScript(
        token=token,
        workdir=tmp_path,
        filename=f"note-{token}.txt",
        content=f"written for {token}\nsecond line\n",
    )


def _assert_conversation(script: AgentScript, profile: str) -> None:
    assert script.kinds() == ["tool_call", "final"]
    assert {t.path for t in script.turns} == {UPSTREAM_PATH[profile]}
    assert {t.model for t in script.turns} == {UPSTREAM_MODEL[profile]}
    assert script.turns[1].results == [TOOL_RESULT]


# -- Messages client (anthropic SDK) on a Chat Completions upstream -----------------------------


def _anthropic_turn(client: anthropic.Anthropic, stream: bool, **kw: Any) -> Any:
    if stream:
        with client.messages.stream(**kw) as s:
            return s.get_final_message()
    return client.messages.create(**kw)


@pytest.mark.parametrize("stream", STREAMING)
def test_anthropic_sdk_tool_round_trip_on_a_chat_upstream(
    stream: bool, shipped: dict[str, RouterProcess], upstream: FakeUpstream, tmp_path: Path
) -> None:
    script = _script(tmp_path)
    upstream.reply_with(script)
    tools = [{"name": "write_file", "description": WRITE_DESCRIPTION, "input_schema": WRITE_SCHEMA}]
    kw: dict[str, Any] = {
        "model": MODEL["qwen"],
        "max_tokens": 2048,
        "tools": tools,
        "thinking": {"type": "enabled", "budget_tokens": 1024},
    }
    messages: list[dict[str, Any]] = [{"role": "user", "content": script.prompt}]
    with anthropic.Anthropic(
        base_url=shipped["qwen"].url, api_key="sk-ant-client", max_retries=0
    ) as client:
        first = _anthropic_turn(client, stream, messages=messages, **kw)
        assert first.stop_reason == "tool_use"
        assert [b.type for b in first.content] == ["thinking", "text", "tool_use"]
        assert first.content[0].thinking == REASONING
        call = first.content[2]
        assert call.name == "write_file"
        assert call.input == {"file_path": str(script.path), "content": script.content}

        messages += [
            {
                "role": "assistant",
                "content": [b.model_dump(exclude_none=True) for b in first.content],
            },
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": call.id, "content": TOOL_RESULT}
                ],
            },
        ]
        final = _anthropic_turn(client, stream, messages=messages, **kw)
    assert final.stop_reason == "end_turn"
    assert [b.text for b in final.content if b.type == "text"] == [script.final_text]
    _assert_conversation(script, "qwen")
    sent = script.turns[0].body
    assert sent["tools"][0]["function"]["name"] == "write_file"


# -- Chat client (openai SDK) on a Messages upstream --------------------------------------------


def _chat_turn(client: openai.OpenAI, stream: bool, **kw: Any) -> dict[str, Any]:
    """One chat turn as {content, reasoning, tool_calls, finish_reason}, streamed or not."""
    if not stream:
        choice = client.chat.completions.create(**kw).choices[0]
        extra = choice.message.model_extra or {}
        return {
            "content": choice.message.content,
            "reasoning": extra.get("reasoning_content"),
            "tool_calls": [
                c.model_dump(exclude_none=True) for c in choice.message.tool_calls or []
            ],
            "finish_reason": choice.finish_reason,
        }
    content, reasoning, finish = "", "", None
    calls: dict[int, dict[str, Any]] = {}
    for chunk in client.chat.completions.create(stream=True, **kw):
        for c in chunk.choices:
            content += c.delta.content or ""
            reasoning += (c.delta.model_extra or {}).get("reasoning_content") or ""
            for tc in c.delta.tool_calls or []:
                call = calls.setdefault(
                    tc.index,
                    {"id": None, "type": "function", "function": {"name": "", "arguments": ""}},
                )
                call["id"] = tc.id or call["id"]
                if tc.function is not None:
                    call["function"]["name"] += tc.function.name or ""
                    call["function"]["arguments"] += tc.function.arguments or ""
            finish = c.finish_reason or finish
    return {
        "content": content,
        "reasoning": reasoning or None,
        "tool_calls": [calls[i] for i in sorted(calls)],
        "finish_reason": finish,
    }


@pytest.mark.parametrize("stream", STREAMING)
def test_openai_sdk_chat_tool_round_trip_on_a_messages_upstream(
    stream: bool, shipped: dict[str, RouterProcess], upstream: FakeUpstream, tmp_path: Path
) -> None:
    script = _script(tmp_path)
    upstream.reply_with(script)
    tools = [
        {
            "type": "function",
            "function": {
                "name": "write_file",
                "description": WRITE_DESCRIPTION,
                "parameters": WRITE_SCHEMA,
            },
        }
    ]
    kw: dict[str, Any] = {"model": MODEL["anthropic"], "tools": tools, "reasoning_effort": "low"}
    messages: list[dict[str, Any]] = [{"role": "user", "content": script.prompt}]
    with _openai_at(shipped["anthropic"]) as client:
        first = _chat_turn(client, stream, messages=messages, **kw)
        assert first["finish_reason"] == "tool_calls"
        assert first["reasoning"] == REASONING
        assert first["content"] == PREAMBLE
        [call] = first["tool_calls"]
        assert call["function"]["name"] == "write_file"
        assert json.loads(call["function"]["arguments"]) == {
            "file_path": str(script.path),
            "content": script.content,
        }
        messages += [
            {"role": "assistant", "content": first["content"], "tool_calls": [call]},
            {"role": "tool", "tool_call_id": call["id"], "content": TOOL_RESULT},
        ]
        final = _chat_turn(client, stream, messages=messages, **kw)
    assert final["finish_reason"] == "stop"
    assert final["content"] == script.final_text
    assert final["tool_calls"] == []
    _assert_conversation(script, "anthropic")
    sent = script.turns[0].body
    assert sent["tools"][0]["name"] == "write_file"
    assert sent["thinking"]["type"] == "enabled"


# -- Responses client (openai SDK) on a Responses, Chat and Messages upstream -------------------


def _openai_at(router: RouterProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=router.url + "/v1", api_key="sk-client-key", max_retries=0)


def _responses_turn(client: openai.OpenAI, stream: bool, **kw: Any) -> Any:
    if stream:
        with client.responses.stream(**kw) as s:
            return s.get_final_response()
    return client.responses.create(**kw)


def _reasoning_of(item: Any) -> str:
    """A reasoning item's text: its summary (OpenAI's own), else its reasoning_text content (how
    an open model's raw reasoning is carried, and so what a translated answer may hold)."""
    summary = "".join(part.text for part in item.summary or [])
    return summary or "".join(part.text for part in item.content or [])


def _responses_tool(kind: str) -> dict[str, Any]:
    if kind == "custom":
        return {
            "type": "custom",
            "name": "apply_patch",
            "description": "Edit files with a patch. This is a FREEFORM tool.",
            "format": {"type": "grammar", "syntax": "lark", "definition": PATCH_GRAMMAR},
        }
    return {
        "type": "function",
        "name": "write_file",
        "description": WRITE_DESCRIPTION,
        "parameters": WRITE_SCHEMA,
        "strict": False,
    }


@pytest.mark.parametrize("stream", STREAMING)
@pytest.mark.parametrize("kind", ["function", "custom"])
@pytest.mark.parametrize(
    "profile",
    [
        pytest.param("openai", id="responses-upstream"),
        pytest.param("qwen", id="chat-upstream"),
        pytest.param("anthropic", id="messages-upstream"),
    ],
)
def test_openai_sdk_responses_tool_round_trip(
    profile: str,
    kind: str,
    stream: bool,
    shipped: dict[str, RouterProcess],
    upstream: FakeUpstream,
    tmp_path: Path,
) -> None:
    script = _script(tmp_path)
    upstream.reply_with(script)
    kw: dict[str, Any] = {
        "model": MODEL[profile],
        "tools": [_responses_tool(kind)],
        "reasoning": {"effort": "low", "summary": "auto"},
        "store": False,
    }
    items: list[Any] = [{"role": "user", "content": script.prompt}]
    with _openai_at(shipped[profile]) as client:
        first = _responses_turn(client, stream, input=items, **kw)
        assert first.status == "completed"
        types = [item.type for item in first.output]
        call_type = "custom_tool_call" if kind == "custom" else "function_call"
        assert types == ["reasoning", "message", call_type]
        assert _reasoning_of(first.output[0]) == REASONING
        assert first.output_text == PREAMBLE
        call = first.output[2]
        if kind == "custom":
            assert (call.name, call.input) == ("apply_patch", script.patch())
        else:
            assert call.name == "write_file"
            assert json.loads(call.arguments) == {
                "file_path": str(script.path),
                "content": script.content,
            }
        output_type = "custom_tool_call_output" if kind == "custom" else "function_call_output"
        items += [item.model_dump(exclude_none=True) for item in first.output]
        items.append({"type": output_type, "call_id": call.call_id, "output": TOOL_RESULT})
        # the effort raised from here on, the request's own left as it was (as Codex 0.171 does)
        items.append({"type": "configuration_update", "reasoning": {"effort": "high"}})
        final = _responses_turn(client, stream, input=items, **kw)
    assert final.status == "completed"
    first_sent, final_sent = (json.loads(r.body) for r in upstream.requests[-2:])
    if profile == "qwen":
        assert (first_sent["reasoning_effort"], final_sent["reasoning_effort"]) == ("low", "high")
    if profile == "openai":  # a Responses upstream reads the item itself
        assert final_sent["input"][-1] == items[-1]
    else:  # a translated answer echoes the effort in force (the request's, then the update's)
        assert (first.reasoning.effort, final.reasoning.effort) == ("low", "high")
    # (A Messages upstream gets the turn after a tool call whose thinking blocks it cannot have
    # without thinking, whatever the effort: the unit and conformance cases show its budget.)
    assert final.output_text == script.final_text
    assert not [item for item in final.output if item.type.endswith("call")]
    assert final.usage is not None and final.usage.total_tokens > 0
    _assert_conversation(script, profile)
