"""Format translation end to end: the real SDKs, the real router running the shipped profiles
(their baseUrl pointed at the fake upstream), the fake upstream answering in its own format.

- the `anthropic` SDK on the qwen profile, whose upstream speaks only OpenAI Chat Completions;
- the `openai` SDK on the anthropic profile, whose upstream speaks only Anthropic Messages.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import openai
import pytest

from tests.fakes.upstream import (
    FakeUpstream,
    Recorded,
    Reply,
    anthropic_stream,
    default_reply,
    sse,
)
from tests.scrape import scrape, value
from tests.support import RouterFactory, RouterProcess, shipped_profile

SSE_HEADERS = [("Content-Type", "text/event-stream")]
WEATHER_TOOL = {
    "name": "get_weather",
    "description": "Weather for a city",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
}


@pytest.fixture(scope="module")
def qwen(fake_upstream: FakeUpstream, module_router_factory: RouterFactory) -> RouterProcess:
    """The shipped qwen profile: an OpenAI-only upstream."""
    return module_router_factory(shipped_profile("qwen", fake_upstream.url), name="qwen")


@pytest.fixture(scope="module")
def claude(fake_upstream: FakeUpstream, module_router_factory: RouterFactory) -> RouterProcess:
    """The shipped anthropic profile: an Anthropic-only upstream."""
    return module_router_factory(shipped_profile("anthropic", fake_upstream.url), name="anthropic")


@pytest.fixture(scope="module")
def ant(qwen: RouterProcess) -> Iterator[anthropic.Anthropic]:
    """The anthropic SDK in front of the qwen profile."""
    with anthropic.Anthropic(base_url=qwen.url, api_key="sk-ant-client", max_retries=0) as c:
        yield c


@pytest.fixture(scope="module")
def oai(claude: RouterProcess) -> Iterator[openai.OpenAI]:
    """The openai SDK in front of the anthropic profile."""
    with openai.OpenAI(base_url=claude.url + "/v1", api_key="sk-client", max_retries=0) as c:
        yield c


def _json(data: Any, status: int = 200) -> Reply:
    return Reply(
        status=status,
        headers=[("Content-Type", "application/json")],
        body=json.dumps(data).encode(),
    )


def _data(obj: Any) -> str:
    return "data: " + json.dumps(obj) + "\n\n"


def _event(obj: dict[str, Any]) -> str:
    return f"event: {obj['type']}\ndata: {json.dumps(obj)}\n\n"


# -- OpenAI-format upstream answers with tool calls ---------------------------------------------


def openai_tool_call(model: str) -> dict[str, Any]:
    return {
        "id": "chatcmpl-tool",
        "object": "chat.completion",
        "created": 1700000000,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": "Let me look.",
                    "tool_calls": [
                        {
                            "id": "call_1",
                            "type": "function",
                            "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                        }
                    ],
                },
                "finish_reason": "tool_calls",
            }
        ],
        "usage": {"prompt_tokens": 50, "completion_tokens": 20, "total_tokens": 70},
    }


def openai_tool_stream(model: str) -> list[str]:
    def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {
            "id": "chatcmpl-ts",
            "object": "chat.completion.chunk",
            "created": 1700000000,
            "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }

    call = {"index": 0, "id": "call_s", "type": "function"}
    return [
        _data(chunk({"role": "assistant", "content": "Checking"})),
        _data(
            chunk({"tool_calls": [{**call, "function": {"name": "get_weather", "arguments": ""}}]})
        ),
        _data(chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"city"'}}]})),
        _data(chunk({"tool_calls": [{"index": 0, "function": {"arguments": ': "Oslo"}'}}]})),
        _data(chunk({}, "tool_calls")),
        _data(
            {
                **chunk({}),
                "choices": [],
                "usage": {"prompt_tokens": 11, "completion_tokens": 6, "total_tokens": 17},
            }
        ),
        "data: [DONE]\n\n",
    ]


# -- Anthropic-format upstream answers with tool use --------------------------------------------


def anthropic_tool_use(model: str) -> dict[str, Any]:
    return {
        "id": "msg_tool",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [
            {"type": "text", "text": "Let me look."},
            {
                "type": "tool_use",
                "id": "toolu_1",
                "name": "get_weather",
                "input": {"city": "Paris"},
            },
        ],
        "stop_reason": "tool_use",
        "stop_sequence": None,
        "usage": {"input_tokens": 50, "output_tokens": 20},
    }


def anthropic_tool_stream(model: str) -> list[str]:
    start = {**anthropic_tool_use(model), "content": [], "stop_reason": None}
    start["usage"] = {"input_tokens": 11, "output_tokens": 1}
    block = {"type": "tool_use", "id": "toolu_s", "name": "get_weather", "input": {}}
    return [
        _event({"type": "message_start", "message": start}),
        _event({"type": "content_block_start", "index": 0, "content_block": block}),
        _event({"type": "ping"}),
        _event(
            {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "input_json_delta", "partial_json": '{"city"'},
            }
        ),
        _event(
            {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "input_json_delta", "partial_json": ': "Oslo"}'},
            }
        ),
        _event({"type": "content_block_stop", "index": 0}),
        _event(
            {
                "type": "message_delta",
                "delta": {"stop_reason": "tool_use", "stop_sequence": None},
                "usage": {"output_tokens": 6},
            }
        ),
        _event({"type": "message_stop"}),
    ]


def _model(req: Recorded) -> str:
    return str(req.json().get("model"))


# -- the anthropic SDK against an OpenAI-format upstream ----------------------------------------


def test_anthropic_sdk_messages_create_on_an_openai_upstream(
    ant: anthropic.Anthropic, upstream: FakeUpstream
) -> None:
    msg = ant.messages.create(
        model="gpt-4",
        max_tokens=64,
        system=[{"type": "text", "text": "Be brief."}],
        messages=[{"role": "user", "content": "hi"}],
        stop_sequences=["END"],
        extra_body={"temperature": 0.3},  # this SDK version no longer has the parameter
        metadata={"user_id": "u-1"},
    )
    sent = upstream.last
    assert sent.path == "/v1/chat/completions"
    assert sent.header("authorization") == "Bearer sk-ant-client"
    assert sent.json() == {
        "model": "qwen3-coder-max",
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}],
        "max_tokens": 64,
        "stop": ["END"],
        "temperature": 0.3,
        "user": "u-1",
    }
    assert msg.type == "message" and msg.role == "assistant"
    assert msg.content[0].type == "text" and msg.content[0].text == "Hello from fake"
    assert msg.stop_reason == "end_turn"
    assert (msg.usage.input_tokens, msg.usage.output_tokens) == (7, 3)


def test_anthropic_sdk_messages_stream_on_an_openai_upstream(
    ant: anthropic.Anthropic, upstream: FakeUpstream
) -> None:
    with ant.messages.stream(
        model="gpt-4", max_tokens=64, messages=[{"role": "user", "content": "hi"}]
    ) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_message()
    body = upstream.last.json()
    assert upstream.last.path == "/v1/chat/completions"
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert final.content[0].type == "text" and final.content[0].text == "Hello"
    assert final.stop_reason == "end_turn"
    assert (final.usage.input_tokens, final.usage.output_tokens) == (7, 3)
    raw = [k for k in kinds if k not in ("text",)]
    assert raw[0] == "message_start" and raw[-1] == "message_stop"
    assert raw.count("content_block_start") == raw.count("content_block_stop") == 1
    assert "message_delta" in raw


def test_anthropic_sdk_tool_use_round_trip_on_an_openai_upstream(
    ant: anthropic.Anthropic, upstream: FakeUpstream
) -> None:
    client = ant
    upstream.reply_with(lambda req: _json(openai_tool_call(_model(req))))
    first = client.messages.create(
        model="gpt-4",
        max_tokens=64,
        tools=[WEATHER_TOOL],  # type: ignore[list-item]
        tool_choice={"type": "auto"},
        messages=[{"role": "user", "content": "Weather in Paris?"}],
    )
    sent = upstream.last.json()
    assert sent["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Weather for a city",
                "parameters": WEATHER_TOOL["input_schema"],
            },
        }
    ]
    assert sent["tool_choice"] == "auto"
    assert first.stop_reason == "tool_use"
    tool = first.content[1]
    assert tool.type == "tool_use" and (tool.id, tool.name, tool.input) == (
        "call_1",
        "get_weather",
        {"city": "Paris"},
    )

    upstream.reply_with(default_reply)
    final = client.messages.create(
        model="gpt-4",
        max_tokens=64,
        tools=[WEATHER_TOOL],  # type: ignore[list-item]
        messages=[
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": first.content},  # type: ignore[typeddict-item]
            {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": tool.id, "content": "18C"}],
            },
        ],
    )
    assert final.content[0].type == "text" and final.content[0].text == "Hello from fake"
    messages = upstream.last.json()["messages"]
    assert messages[1] == {
        "role": "assistant",
        "content": "Let me look.",
        "tool_calls": [
            {
                "id": "call_1",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
            }
        ],
    }
    assert messages[2] == {"role": "tool", "tool_call_id": "call_1", "content": "18C"}


def test_anthropic_sdk_streamed_tool_use_on_an_openai_upstream(
    ant: anthropic.Anthropic, upstream: FakeUpstream
) -> None:
    upstream.reply_with(
        lambda req: Reply(headers=SSE_HEADERS, chunks=sse(*openai_tool_stream(_model(req))))
    )
    with ant.messages.stream(
        model="gpt-4",
        max_tokens=64,
        tools=[WEATHER_TOOL],  # type: ignore[list-item]
        tool_choice={"type": "tool", "name": "get_weather"},
        messages=[{"role": "user", "content": "Weather in Oslo?"}],
    ) as stream:
        partial = [e.partial_json for e in stream if e.type == "input_json"]
        final = stream.get_final_message()
    assert upstream.last.json()["tool_choice"] == {
        "type": "function",
        "function": {"name": "get_weather"},
    }
    assert "".join(partial) == '{"city": "Oslo"}'
    assert [b.type for b in final.content] == ["text", "tool_use"]
    tool = final.content[1]
    assert tool.type == "tool_use" and (tool.id, tool.input) == ("call_s", {"city": "Oslo"})
    assert final.stop_reason == "tool_use"
    assert (final.usage.input_tokens, final.usage.output_tokens) == (11, 6)


def interleaved_tool_stream(model: str) -> list[str]:
    """Two parallel calls whose argument fragments alternate, as some Chat servers send them:
    both calls begin, then their pieces interleave (legal in Chat chunks; the index says whose)."""

    def chunk(calls: list[dict[str, Any]], finish: str | None = None) -> str:
        delta = {"tool_calls": calls} if calls else {}
        choice = {"index": 0, "delta": delta, "finish_reason": finish}
        data = {"id": "chatcmpl-il", "object": "chat.completion.chunk", "model": model}
        return _data({**data, "created": 1700000000, "choices": [choice]})

    def piece(index: int, arguments: str) -> dict[str, Any]:
        return {"index": index, "function": {"arguments": arguments}}

    return [
        chunk(
            [
                {
                    "index": 0,
                    "id": "call_o",
                    "type": "function",
                    "function": {"name": "get_weather"},
                },
                {
                    "index": 1,
                    "id": "call_p",
                    "type": "function",
                    "function": {"name": "get_weather"},
                },
            ]
        ),
        chunk([piece(0, '{"city": ')]),
        chunk([piece(1, '{"city": ')]),
        chunk([piece(0, '"Oslo"}')]),
        chunk([piece(1, '"Paris"}')]),
        chunk([], "tool_calls"),
        "data: [DONE]\n\n",
    ]


def test_each_sdk_gets_parallel_tool_calls_whose_fragments_interleave(
    ant: anthropic.Anthropic, qwen: RouterProcess, upstream: FakeUpstream
) -> None:
    """Before: the Messages stream sent the first call's last piece after its block stopped (the
    SDK then gave it the second call's input), and the Responses stream failed."""
    upstream.reply_with(
        lambda req: Reply(headers=SSE_HEADERS, chunks=sse(*interleaved_tool_stream(_model(req))))
    )
    with ant.messages.stream(
        model="gpt-4",
        max_tokens=64,
        tools=[WEATHER_TOOL],  # type: ignore[list-item]
        messages=[{"role": "user", "content": "Weather in Oslo and Paris?"}],
    ) as stream:
        events = list(stream)
        final = stream.get_final_message()
    assert [(b.type, b.id, b.input) for b in final.content] == [  # type: ignore[union-attr]
        ("tool_use", "call_o", {"city": "Oslo"}),
        ("tool_use", "call_p", {"city": "Paris"}),
    ]
    assert final.stop_reason == "tool_use"
    stopped: set[int] = set()
    for e in events:  # nothing for a block after its stop
        if e.type == "content_block_stop":
            stopped.add(e.index)
        elif e.type in ("content_block_delta", "content_block_start"):
            assert e.index not in stopped
    with (
        openai.OpenAI(base_url=qwen.url + "/v1", api_key="k", max_retries=0) as client,
        client.responses.stream(
            model="gpt-4",
            input="Weather in Oslo and Paris?",
            tools=[{"type": "function", "name": "get_weather", "parameters": None, "strict": None}],
        ) as responses,
    ):
        response = responses.get_final_response()
    assert response.status == "completed"
    calls = [(o.type, o.call_id, json.loads(o.arguments)) for o in response.output]  # type: ignore[union-attr]
    assert calls == [
        ("function_call", "call_o", {"city": "Oslo"}),
        ("function_call", "call_p", {"city": "Paris"}),
    ]


# -- the openai SDK against an Anthropic-format upstream ----------------------------------------


def test_openai_sdk_chat_on_an_anthropic_upstream(
    claude: RouterProcess, oai: openai.OpenAI, upstream: FakeUpstream
) -> None:
    resp = oai.chat.completions.create(
        model="claude-sonnet-4-5",
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}],
        stop=["END"],
        user="u-2",
    )
    sent = upstream.last
    assert sent.path == "/v1/messages"
    assert sent.header("x-api-key") == "sk-client" and sent.header("authorization") is None
    assert sent.header("anthropic-version") == "2023-06-01"  # from the profile
    assert sent.json() == {
        "model": "claude-sonnet-4-5",
        "system": [{"type": "text", "text": "Be brief."}],
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 4096,  # not streamed: the default capped (translation.defaultMaxTokens)
        "stop_sequences": ["END"],
        "metadata": {"user_id": "u-2"},
    }
    assert resp.object == "chat.completion"
    assert resp.choices[0].message.content == "Hello from fake"
    assert resp.choices[0].finish_reason == "stop"
    assert resp.usage is not None
    assert (resp.usage.prompt_tokens, resp.usage.completion_tokens, resp.usage.total_tokens) == (
        9,
        4,
        13,
    )


def test_openai_sdk_stream_on_an_anthropic_upstream(
    claude: RouterProcess, oai: openai.OpenAI, upstream: FakeUpstream
) -> None:
    chunks = list(
        oai.chat.completions.create(
            model="claude-sonnet-4-5",
            messages=[{"role": "user", "content": "hi"}],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    sent = upstream.last.json()
    assert sent["stream"] is True and "stream_options" not in sent
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Hello"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == (9, 4)
    # Without include_usage: no usage chunk, and the raw stream ends with [DONE].
    with httpx.Client(timeout=10) as c:
        raw = c.post(
            claude.url + "/v1/chat/completions",
            json={"model": "m", "stream": True, "messages": [{"role": "user", "content": "hi"}]},
        )
    assert raw.status_code == 200 and raw.headers["content-type"].startswith("text/event-stream")
    assert raw.text.endswith("data: [DONE]\n\n")
    assert '"usage"' not in raw.text


def test_a_translated_stream_cut_before_its_end_fails_for_the_client_and_in_the_log(
    claude: RouterProcess, oai: openai.OpenAI, upstream: FakeUpstream
) -> None:
    """The upstream's stream ends before its stop reason: a Chat client took the stream that
    just ended as complete (no [DONE] is needed), and the request was logged as healthy.
    Now the client gets the relay's stream error, and the log and metrics say stream_error."""
    events = anthropic_stream("claude-sonnet-4-5")
    cut = [e for e in events if "message_delta" not in e and "message_stop" not in e]
    chunks = [(0.0, e.encode()) for e in cut]
    upstream.reply_with(Reply(headers=[("Content-Type", "text/event-stream")], chunks=chunks))
    with pytest.raises(openai.APIError, match="stream broke"):
        list(
            oai.chat.completions.create(
                model="claude-sonnet-4-5",
                messages=[{"role": "user", "content": "hi"}],
                stream=True,
                extra_headers={"X-Request-ID": "cut-stream-1"},
            )
        )
    line = claude.wait_for_log(lambda r: r.get("request_id") == "cut-stream-1")
    assert line["status_code"] == 200 and line["error_type"] == "stream_error"


def test_a_streamed_request_without_a_limit_gets_the_profile_s_default_max_tokens(
    claude: RouterProcess, oai: openai.OpenAI, upstream: FakeUpstream
) -> None:
    list(
        oai.chat.completions.create(
            model="claude-sonnet-4-5", messages=[{"role": "user", "content": "hi"}], stream=True
        )
    )
    assert upstream.last.json()["max_tokens"] == 32000  # the anthropic profile's


def test_an_upstream_error_event_then_a_break_is_one_error_for_the_client(
    qwen: RouterProcess, upstream: FakeUpstream
) -> None:
    """The upstream reports an error in its stream, then its connection breaks: the client got
    the error event, and a second one (the break's) after it was noise."""
    choice = {"index": 0, "delta": {"content": "a"}, "finish_reason": None}
    first = {"id": "c", "object": "chat.completion.chunk", "model": "m", "choices": [choice]}
    failed = {"error": {"message": "overloaded", "type": "server_error", "code": 529}}
    chunks = sse(f"data: {json.dumps(first)}\n\n", f"data: {json.dumps(failed)}\n\n", "x")
    upstream.reply_with(Reply(headers=SSE_HEADERS, chunks=chunks, action="close_mid"))
    body = {"model": "gpt-4", "max_tokens": 5, "stream": True,
            "messages": [{"role": "user", "content": "hi"}]}  # fmt: skip
    with httpx.Client(timeout=10) as c:
        r = c.post(qwen.url + "/v1/messages", json=body, headers={"X-Request-ID": "err-break"})
    assert r.status_code == 200
    assert r.text.count("event: error") == 1, r.text
    line = qwen.wait_for_log(lambda e: e.get("request_id") == "err-break")
    assert line["error_type"] == "stream_error"


def test_openai_sdk_tool_calls_on_an_anthropic_upstream(
    claude: RouterProcess, oai: openai.OpenAI, upstream: FakeUpstream
) -> None:
    client = oai
    tools = [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Weather for a city",
                "parameters": WEATHER_TOOL["input_schema"],
            },
        }
    ]
    upstream.reply_with(lambda req: _json(anthropic_tool_use(_model(req))))
    first = client.chat.completions.create(
        model="claude-sonnet-4-5",
        messages=[{"role": "user", "content": "Weather in Paris?"}],
        tools=tools,  # type: ignore[arg-type]
        tool_choice="required",
    )
    sent = upstream.last.json()
    assert sent["tools"] == [WEATHER_TOOL] and sent["tool_choice"] == {"type": "any"}
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content == "Let me look."
    call = choice.message.tool_calls[0]  # type: ignore[index]
    assert (call.id, call.function.name, json.loads(call.function.arguments)) == (  # type: ignore[union-attr]
        "toolu_1",
        "get_weather",
        {"city": "Paris"},
    )

    # The tool's result goes back as a tool message: upstream it is a tool_result block.
    upstream.reply_with(default_reply)
    final = client.chat.completions.create(
        model="claude-sonnet-4-5",
        messages=[
            {"role": "user", "content": "Weather in Paris?"},
            choice.message.model_dump(exclude_none=True),  # type: ignore[list-item]
            {"role": "tool", "tool_call_id": call.id, "content": "18C"},
        ],
        tools=tools,  # type: ignore[arg-type]
    )
    assert final.choices[0].message.content == "Hello from fake"
    messages = upstream.last.json()["messages"]
    assert messages[1]["content"][1] == {
        "type": "tool_use",
        "id": "toolu_1",
        "name": "get_weather",
        "input": {"city": "Paris"},
    }
    assert messages[2] == {
        "role": "user",
        "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "18C"}],
    }

    # Streamed: tool call deltas, finish_reason tool_calls, [DONE].
    upstream.reply_with(
        lambda req: Reply(headers=SSE_HEADERS, chunks=sse(*anthropic_tool_stream(_model(req))))
    )
    chunks = list(
        client.chat.completions.create(
            model="claude-sonnet-4-5",
            messages=[{"role": "user", "content": "Weather in Oslo?"}],
            tools=tools,  # type: ignore[arg-type]
            stream=True,
        )
    )
    deltas = [tc for c in chunks for tc in (c.choices[0].delta.tool_calls or [])]
    assert deltas[0].id == "toolu_s" and deltas[0].function.name == "get_weather"  # type: ignore[union-attr]
    assert {d.index for d in deltas} == {0}
    assert json.loads("".join(d.function.arguments or "" for d in deltas)) == {"city": "Oslo"}  # type: ignore[union-attr]
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


# -- errors and refusals --------------------------------------------------------------------------


def test_upstream_errors_reach_each_client_in_its_own_shape(
    ant: anthropic.Anthropic, oai: openai.OpenAI, upstream: FakeUpstream
) -> None:
    upstream.reply_with(
        Reply(
            status=429,
            headers=[("Content-Type", "application/json"), ("retry-after", "7")],
            body=b'{"error":{"message":"slow down","type":"requests",'
            b'"code":"rate_limit_exceeded"}}',
        )
    )
    with pytest.raises(anthropic.RateLimitError) as a:
        ant.messages.create(model="m", max_tokens=5, messages=[{"role": "user", "content": "x"}])
    assert a.value.status_code == 429
    assert a.value.body == {
        "type": "error",
        "error": {"type": "rate_limit_error", "message": "slow down"},
    }
    assert a.value.response.headers["retry-after"] == "7"

    upstream.reply_with(
        _json(
            {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}, 529
        )
    )
    with pytest.raises(openai.APIStatusError) as o:
        oai.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}])
    assert o.value.status_code == 529
    assert o.value.body == {
        "message": "Overloaded",
        "type": "overloaded_error",
        "param": None,
        "code": None,
    }

    # A stream request answered with an error: a plain error response in the client's shape.
    with pytest.raises(openai.APIStatusError) as s:
        list(
            oai.chat.completions.create(
                model="m", messages=[{"role": "user", "content": "x"}], stream=True
            )
        )
    assert s.value.status_code == 529 and s.value.body["type"] == "overloaded_error"  # type: ignore[index]


def test_features_without_an_equivalent_are_refused_with_400_before_the_upstream(
    ant: anthropic.Anthropic, oai: openai.OpenAI, upstream: FakeUpstream
) -> None:
    before = len(upstream.requests)
    with pytest.raises(anthropic.BadRequestError) as a:
        ant.messages.create(
            model="m",
            max_tokens=5,
            extra_body={
                "mcp_servers": [{"type": "url", "url": "https://mcp.example", "name": "x"}]
            },
            messages=[{"role": "user", "content": "x"}],
        )
    assert a.value.status_code == 400
    assert a.value.body["type"] == "error"  # type: ignore[index]
    assert a.value.body["error"]["type"] == "invalid_request_error"  # type: ignore[index]
    assert "'mcp_servers' has no equivalent" in a.value.body["error"]["message"]  # type: ignore[index]

    with pytest.raises(openai.BadRequestError) as o:
        oai.chat.completions.create(model="m", n=2, messages=[{"role": "user", "content": "x"}])
    assert o.value.status_code == 400
    assert o.value.body["type"] == "invalid_request_error"  # type: ignore[index]
    assert o.value.body["code"] == "untranslatable_request"  # type: ignore[index]
    assert "'n' has no equivalent" in o.value.body["message"]  # type: ignore[index]
    assert len(upstream.requests) == before


def test_logs_and_metrics_say_which_translation_ran(
    qwen: RouterProcess, claude: RouterProcess, upstream: FakeUpstream
) -> None:
    before = value(scrape(qwen.url), "translations_total", direction="anthropic_to_openai")
    with httpx.Client(timeout=10) as c:
        r = c.post(
            qwen.url + "/v1/messages",
            headers={"X-Request-ID": "tr-a2o"},
            json={"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]},
        )
        assert r.status_code == 200 and r.json()["type"] == "message"
        r = c.post(
            qwen.url + "/v1/chat/completions",
            headers={"X-Request-ID": "tr-none"},
            json={"model": "m", "messages": [{"role": "user", "content": "x"}]},
        )
        assert r.status_code == 200 and r.json()["object"] == "chat.completion"
        r = c.post(
            claude.url + "/v1/chat/completions",
            headers={"X-Request-ID": "tr-o2a"},
            json={"model": "m", "stream": True, "messages": [{"role": "user", "content": "x"}]},
        )
        assert r.status_code == 200
    a2o = qwen.wait_for_log(
        lambda rec: rec.get("request_id") == "tr-a2o" and rec.get("event") == "request_completed"
    )
    none = qwen.wait_for_log(
        lambda rec: rec.get("request_id") == "tr-none" and rec.get("event") == "request_completed"
    )
    o2a = claude.wait_for_log(
        lambda rec: rec.get("request_id") == "tr-o2a" and rec.get("event") == "request_completed"
    )
    assert (a2o["translation"], none["translation"], o2a["translation"]) == (
        "anthropic_to_openai",
        "none",
        "openai_to_anthropic",
    )
    assert o2a["stream"] is True
    assert (
        value(scrape(qwen.url), "translations_total", direction="anthropic_to_openai") == before + 1
    )
    assert value(scrape(claude.url), "translations_total", direction="openai_to_anthropic") >= 1
    # Token usage is counted from the upstream's own usage, whatever the client's format.
    assert value(scrape(claude.url), "tokens_total", type="completion") >= 4


# -- and each SDK against an upstream of its own format, on the same profiles (no translation) ---


def test_each_sdk_streams_tool_use_from_an_upstream_of_its_own_format(
    qwen: RouterProcess, claude: RouterProcess, upstream: FakeUpstream
) -> None:
    with anthropic.Anthropic(base_url=claude.url, api_key="k", max_retries=0) as native:
        upstream.reply_with(
            lambda req: Reply(headers=SSE_HEADERS, chunks=sse(*anthropic_tool_stream(_model(req))))
        )
        with native.messages.stream(
            model="claude-test",
            max_tokens=64,
            tools=[WEATHER_TOOL],  # type: ignore[list-item]
            messages=[{"role": "user", "content": "Weather in Oslo?"}],
        ) as stream:
            final = stream.get_final_message()
        assert upstream.last.path == "/v1/messages" and upstream.last.json()["tools"] == [
            WEATHER_TOOL
        ]
        tool = final.content[0]
        assert tool.type == "tool_use" and tool.input == {"city": "Oslo"}
    with openai.OpenAI(base_url=qwen.url + "/v1", api_key="k", max_retries=0) as same:
        upstream.reply_with(
            lambda req: Reply(headers=SSE_HEADERS, chunks=sse(*openai_tool_stream(_model(req))))
        )
        chunks = list(
            same.chat.completions.create(
                model="gpt-4", messages=[{"role": "user", "content": "Weather?"}], stream=True
            )
        )
        assert upstream.last.path == "/v1/chat/completions"
        deltas = [tc for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
        arguments = "".join(d.function.arguments or "" for d in deltas)  # type: ignore[union-attr]
        assert json.loads(arguments) == {"city": "Oslo"}
    assert value(scrape(claude.url), "translations_total", direction="anthropic_to_openai") == 0


def test_misshapen_upstream_json_is_a_json_error_and_a_stream_error_never_a_crash(
    claude: RouterProcess, upstream: FakeUpstream
) -> None:
    """JSON of another shape than the upstream's format promises (here Anthropic's `content`
    a number, a content block a number): 502 `upstream_json_error` for a whole answer, an error
    event ending a stream. Before, the translator's AttributeError became a 500 (a whole
    answer) or killed the relay with a traceback (a stream cut without an error event)."""
    upstream.reply_with(_json({"id": "m", "type": "message", "content": 5}))
    r = httpx.post(
        claude.url + "/v1/chat/completions",
        json={"model": "claude-sonnet-4-5", "messages": [{"role": "user", "content": "x"}]},
        headers={"X-Request-ID": "misshapen-json"},
    )
    assert r.status_code == 502 and r.json()["error"]["code"] == "upstream_json_error"
    start = {"type": "message_start", "message": {"id": "m", "model": "m", "usage": {}}}
    bad = {"type": "content_block_start", "index": 0, "content_block": 5}
    upstream.reply_with(
        Reply(
            headers=[("Content-Type", "text/event-stream")],
            chunks=[(0.0, _event(start).encode()), (0.1, _event(bad).encode())],
        )
    )
    body = {"model": "m", "stream": True, "messages": [{"role": "user", "content": "x"}]}
    with httpx.stream(
        "POST",
        claude.url + "/v1/chat/completions",
        json=body,
        headers={"X-Request-ID": "misshapen-stream"},
    ) as s:
        lines = [line for line in s.iter_lines() if line.startswith("data: ")]
    assert json.loads(lines[-1][6:])["error"]["code"] == "stream_error"
    # (the stream's line is written once its response has ended: waited for, by its own id; a
    # line of an earlier test in the module may say stream_error too)
    line = claude.wait_for_log(lambda e: e.get("request_id") == "misshapen-stream")
    assert line["error_type"] == "stream_error"
    line = claude.wait_for_log(lambda e: e.get("request_id") == "misshapen-json")
    assert line["error_type"] == "json_error"
    assert not [e for e in claude.logs() if e.get("exception")]
