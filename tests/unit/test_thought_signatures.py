"""Gemini 3's thought signatures through the translations and the `thoughtSignatures` rule.

A Chat Completions upstream (Gemini's OpenAI-compatible endpoint) puts each call's signature in
the tool call's `extra_content`; the Messages and Responses formats have no such field, so the
call reaches their clients under an id that carries it (service.translate.common.carrying_id)
and the next request gives it back to the upstream as it was. The streamed answers are run with
the real clients (tests/e2e/test_coding_agents.py, the gemini cells); here the plain answers, the
requests, and the rule that marks unsigned calls (service.proxy.gemini.sign_calls).
"""

from __future__ import annotations

import json
import re
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from service.proxy.gemini import AS_IS, GEMINI, SKIP_SIGNATURE, fit_body, sign_calls
from service.translate import Translator
from service.translate.common import CARRIED_ID_PREFIX, carried, carrying_id
from service.translate.responses import ResponsesTranslator

CREATED = 1700000000
SIGNED = {"google": {"thought_signature": "CiQBjz1rX+sig/with+base64=="}}
ANTHROPIC_ID = re.compile(r"[A-Za-z0-9_-]+")
VERTEX = {"vertex": {"thought_signature": "AY89a18IwQsQ8in/"}}


def _chat_answer(call_id: str, extra: dict[str, Any] | None) -> bytes:
    call: dict[str, Any] = {
        "id": call_id,
        "type": "function",
        "function": {"name": "Write", "arguments": '{"file_path": "a", "content": "b"}'},
    }
    if extra is not None:
        call["extra_content"] = extra
    message = {"role": "assistant", "content": None, "tool_calls": [call]}
    body = {
        "id": "c1",
        "object": "chat.completion",
        "model": "gemini-3-pro-preview",
        "choices": [{"index": 0, "message": message, "finish_reason": "tool_calls"}],
    }
    return json.dumps(body).encode()


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=6,
)


@given(
    st.text(max_size=40),
    st.dictionaries(st.text(max_size=8), json_values, min_size=1, max_size=3),
)
def test_an_id_carries_its_extra_content_there_and_back(call_id: str, extra: Any) -> None:
    carrying = carrying_id(call_id, extra)
    assert ANTHROPIC_ID.fullmatch(carrying)  # an id Anthropic's API takes too
    assert carried(carrying) == (call_id, extra)


B64URL = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


@given(
    st.one_of(
        st.text(max_size=60),
        st.text(alphabet=B64URL, max_size=60).map(lambda t: CARRIED_ID_PREFIX + t),
    )
)
def test_any_other_id_goes_as_it_is_and_never_raises(client_id: str) -> None:
    id_, extra = carried(client_id)
    if extra is None:
        assert id_ == client_id
    else:  # the shape only an id the router made has
        assert client_id.startswith(CARRIED_ID_PREFIX)
        assert isinstance(id_, str) and isinstance(extra, dict)


def test_ids_that_look_carried_but_are_not() -> None:
    assert carried(CARRIED_ID_PREFIX + "not base64 !") == (CARRIED_ID_PREFIX + "not base64 !", None)
    not_a_pair = CARRIED_ID_PREFIX + "WyJhIl0"  # base64url of ["a"]
    assert carried(not_a_pair) == (not_a_pair, None)
    assert carried(carrying_id("x", {})) == ("x", None)  # nothing to carry: the id itself
    assert carried(None) == (None, None)
    for own in ("toolu_01A09q90qw90lq917835lq9", "call_abc123", "fc_68af"):
        assert carried(own) == (own, None)


def test_a_messages_client_sends_the_signature_back_to_the_chat_upstream() -> None:
    request = {
        "model": "gemini-3-pro-preview",
        "max_tokens": 100,
        "messages": [{"role": "user", "content": "write it"}],
    }
    answer = json.loads(
        Translator("anthropic_to_openai", request, CREATED).body(
            200, "application/json", _chat_answer("call_1", SIGNED)
        )
    )
    (tool_use,) = [b for b in answer["content"] if b["type"] == "tool_use"]
    assert tool_use["id"] != "call_1" and ANTHROPIC_ID.fullmatch(tool_use["id"])

    # The client's next request: the call and its result, under the id it was given.
    follow = {
        **request,
        "messages": [
            *request["messages"],
            {"role": "assistant", "content": [tool_use]},
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": tool_use["id"], "content": "ok"}
                ],
            },
        ],
    }
    chat = Translator("anthropic_to_openai", follow, CREATED).request()
    assistant, result = chat["messages"][1], chat["messages"][2]
    assert assistant["tool_calls"][0]["id"] == "call_1"
    assert assistant["tool_calls"][0]["extra_content"] == SIGNED
    assert result == {"role": "tool", "tool_call_id": "call_1", "content": "ok"}

    # A call without `extra_content` keeps the upstream's id, and goes back without one.
    plain = json.loads(
        Translator("anthropic_to_openai", request, CREATED).body(
            200, "application/json", _chat_answer("call_2", None)
        )
    )
    assert [b["id"] for b in plain["content"] if b["type"] == "tool_use"] == ["call_2"]


def test_a_responses_client_sends_the_signature_back_to_the_chat_upstream() -> None:
    tools = [{"type": "function", "name": "Write", "parameters": {"type": "object"}}]
    request = {"model": "gemini-3-pro-preview", "input": "write it", "tools": tools}
    answer = json.loads(
        ResponsesTranslator("openai", request, CREATED).body(
            200, "application/json", _chat_answer("call_1", SIGNED)
        )
    )
    (item,) = [i for i in answer["output"] if i["type"] == "function_call"]
    assert item["call_id"] != "call_1"

    follow = {
        **request,
        "input": [
            {"role": "user", "content": "write it"},
            {k: item[k] for k in ("type", "call_id", "name", "arguments")},
            {"type": "function_call_output", "call_id": item["call_id"], "output": "ok"},
        ],
    }
    chat = ResponsesTranslator("openai", follow, CREATED).request()
    calls = [m for m in chat["messages"] if m.get("tool_calls")]
    assert calls[0]["tool_calls"][0]["id"] == "call_1"
    assert calls[0]["tool_calls"][0]["extra_content"] == SIGNED
    assert [m["tool_call_id"] for m in chat["messages"] if m["role"] == "tool"] == ["call_1"]


def test_unsigned_calls_get_gemini_s_skip_value_and_signed_ones_stay() -> None:
    def body() -> dict[str, Any]:
        return {
            "messages": [
                {"role": "user", "content": "hi"},
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {"id": "a", "type": "function", "function": {"name": "f"}},
                        {
                            "id": "b",
                            "type": "function",
                            "function": {"name": "g"},
                            "extra_content": SIGNED,
                        },
                        {
                            "id": "c",
                            "type": "function",
                            "function": {"name": "h"},
                            "extra_content": {"other": 1},
                        },
                        {
                            "id": "d",
                            "type": "function",
                            "function": {"name": "i"},
                            "extra_content": VERTEX,
                        },
                    ],
                },
                {"role": "tool", "tool_call_id": "a", "content": "ok"},
            ]
        }

    kept = body()
    assert not sign_calls(kept, AS_IS) and kept == body()
    signed = body()
    assert sign_calls(signed, GEMINI)
    calls = signed["messages"][1]["tool_calls"]
    assert calls[0]["extra_content"] == {"google": {"thought_signature": SKIP_SIGNATURE}}
    assert calls[1]["extra_content"] == SIGNED  # Gemini's own: never replaced
    assert calls[2]["extra_content"] == {
        "other": 1,
        "google": {"thought_signature": SKIP_SIGNATURE},
    }
    assert calls[3]["extra_content"] == VERTEX  # Vertex AI writes it under `vertex`
    assert signed["messages"][0] == body()["messages"][0]
    assert not sign_calls(signed, GEMINI)  # nothing left to sign
    assert not sign_calls({"messages": [{"role": "user", "content": "hi"}]}, GEMINI)


class _Endpoint:
    def __init__(self, tool_schemas: str, thought_signatures: str) -> None:
        self.tool_schemas = tool_schemas
        self.thought_signatures = thought_signatures
        self.drop_fields: tuple[str, ...] = ()


def test_fit_body_applies_both_rules_and_says_whether_anything_changed() -> None:
    call = {"id": "a", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}

    def body() -> dict[str, Any]:
        return {"messages": [{"role": "assistant", "tool_calls": [dict(call)]}], "tools": [tool]}

    assert not fit_body(body(), _Endpoint(AS_IS, AS_IS))
    only_tools = body()
    assert fit_body(only_tools, _Endpoint(GEMINI, AS_IS))
    assert "extra_content" not in only_tools["messages"][0]["tool_calls"][0]
    assert only_tools["tools"] == [{"type": "function", "function": {"name": "f"}}]
    only_calls = body()
    assert fit_body(only_calls, _Endpoint(AS_IS, GEMINI))
    assert only_calls["tools"] == [tool]
    assert only_calls["messages"][0]["tool_calls"][0]["extra_content"]
