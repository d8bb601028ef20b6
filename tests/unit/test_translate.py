"""Format translation (service.translate): the conformance table in tests/conformance/ (one JSON
file per case: input, expected output) plus properties and edge cases of the pure functions.

A case file holds `kind` (request | refused | response | error | stream), `description`, `in`
and `out` (or `refused`: a fragment of the 400 message). Stream items are `{"event"?, "data"}`
(data: a JSON value or the string "[DONE]") or `{"comment": text}`. A request or refused case
may carry `options` (the route's `TranslationOptions`: `{"strict": true, "reasoning_history":
true}`); a request case lists in `dropped` the labels the translator records (none when absent).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import orjson
import pytest
from anthropic.lib.streaming._messages import accumulate_event
from anthropic.types import RawMessageStreamEvent
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import TypeAdapter

from service.config import ConfigError, find_profile, load_file
from service.errors import BadRequest, UpstreamJSONError
from service.proxy.outgoing import translated_request
from service.translate import (
    DIRECTIONS,
    DROPPED_FIELDS,
    BadUpstreamEvent,
    TranslationOptions,
    Translator,
    Untranslatable,
    openai_to_anthropic,
)
from service.translate.common import Drops, effort_for_budget, end_user_id
from service.translate.openai_to_anthropic import adaptive_thinking
from tests.sse_items import (
    ARGUMENTS,
    CUTS,
    INSERTS,
    ORDERS,
    first_appearance,
    inserted,
    parallel_call_chunks,
    parse,
    render,
    strings_among,
    translate_cut,
    with_text,
)

CONFORMANCE = Path(__file__).resolve().parent.parent / "conformance"
CREATED = 1700000000
STREAM_EVENT: TypeAdapter[RawMessageStreamEvent] = TypeAdapter(RawMessageStreamEvent)


def options_of(case: dict[str, Any]) -> TranslationOptions:
    return TranslationOptions(**case.get("options", {}))


def run_case(direction: str, case: dict[str, Any]) -> Any:
    kind = case["kind"]
    if kind == "request":
        tr = Translator(direction, case["in"], CREATED, options_of(case))
        out = tr.request()
        assert tr.dropped == case.get("dropped", [])
        return out
    if kind == "response":
        body = Translator(direction, {}, CREATED).body(
            200, "application/json", json.dumps(case["in"]).encode()
        )
        return json.loads(body)
    if kind == "error":
        raw = case["in"]
        data = raw.encode() if isinstance(raw, str) else json.dumps(raw).encode()
        ctype = "text/html" if isinstance(raw, str) else "application/json"
        return json.loads(Translator(direction, {}, CREATED).body(case["status"], ctype, data))
    if kind == "stream":
        tr = Translator(direction, case.get("client_request", {}), CREATED)
        return parse(tr.events(render(case["in"])) + tr.finish())
    raise AssertionError(f"unknown kind {kind}")


def _cases() -> list[Any]:
    out = []
    for direction in DIRECTIONS:
        for path in sorted((CONFORMANCE / direction).glob("*.json")):
            out.append(pytest.param(direction, path, id=f"{direction}/{path.stem}"))
    return out


CASES = _cases()


def test_the_table_covers_every_kind_in_both_directions() -> None:
    kinds: dict[str, set[str]] = {d: set() for d in DIRECTIONS}
    for direction, path in (c.values for c in CASES):
        kinds[direction].add(json.loads(path.read_text())["kind"])
    for direction in DIRECTIONS:
        assert kinds[direction] == {"request", "refused", "response", "error", "stream"}, direction


@pytest.mark.parametrize(("direction", "path"), CASES)
def test_conformance(direction: str, path: Path) -> None:
    case = json.loads(path.read_text())
    if case["kind"] == "refused":
        tr = Translator(direction, case["in"], CREATED, options_of(case))
        with pytest.raises(Untranslatable) as e:
            tr.request()
        assert e.value.status == 400
        assert e.value.code == "untranslatable_request"
        assert case["refused"] in e.value.message
        assert tr.dropped == []  # nothing went upstream: nothing was dropped
        return
    assert run_case(direction, case) == case["out"]


def _cases_of(kind: str) -> list[tuple[str, Path, dict[str, Any]]]:
    out = []
    for direction, path in (c.values for c in CASES):
        case = json.loads(path.read_text())
        if case["kind"] == kind:
            out.append((direction, path, case))
    return out


def test_every_dropped_label_is_in_the_closed_set_and_has_a_case() -> None:
    """`dropped` holds labels of `translation_dropped_fields_total`: each from DROPPED_FIELDS,
    once per request; and the table has a case for every label of the set."""
    seen: set[str] = set()
    for _, path, case in _cases_of("request"):
        dropped = case.get("dropped", [])
        assert len(dropped) == len(set(dropped)), path
        assert set(dropped) <= set(DROPPED_FIELDS), path
        seen.update(dropped)
    relay_labels = {"openai_headers", "anthropic_headers"}  # headers: dropped by the relay
    assert seen == set(DROPPED_FIELDS) - relay_labels
    assert len(DROPPED_FIELDS) == len(set(DROPPED_FIELDS))


@pytest.mark.parametrize(
    ("direction", "path"),
    [
        pytest.param(d, p, id=f"{d}/{p.stem}")
        for d, p, c in _cases_of("request")
        if c.get("dropped") and not c.get("options", {}).get("strict")
    ],
)
def test_a_strict_route_refuses_what_the_default_drops(direction: str, path: Path) -> None:
    case = json.loads(path.read_text())
    options = TranslationOptions(**{**case.get("options", {}), "strict": True})
    tr = Translator(direction, case["in"], CREATED, options)
    with pytest.raises(Untranslatable) as e:
        tr.request()
    assert "has no equivalent" in e.value.message
    assert tr.dropped == []


def test_drops_refuse_a_label_outside_the_closed_set() -> None:
    drop = Drops(TranslationOptions(), [], "X")
    drop("cache_control", "system[0].cache_control")
    drop("cache_control", "tools[3].cache_control")
    assert drop.labels == ["cache_control"]
    with pytest.raises(ValueError, match="not in DROPPED_FIELDS"):
        drop("made_up", "made_up")


@pytest.mark.parametrize(
    ("budget", "effort"),
    [
        (1024, "low"),
        (4000, "low"),  # Claude Code's "think"
        (4095, "low"),
        (4096, "medium"),
        (10000, "medium"),  # "think hard"
        (16383, "medium"),
        (16384, "high"),
        (31999, "high"),  # "ultrathink", Claude Code's MAX_THINKING_TOKENS
    ],
)
def test_a_thinking_budget_maps_to_an_effort_by_its_thresholds(budget: int, effort: str) -> None:
    assert effort_for_budget(budget) == effort
    body = {
        "model": "m",
        "max_tokens": budget + 1,
        "thinking": {"type": "enabled", "budget_tokens": budget},
        "messages": [{"role": "user", "content": "x"}],
    }
    assert Translator("anthropic_to_openai", body, CREATED).request()["reasoning_effort"] == effort


@pytest.mark.parametrize("effort", ["minimal", "low", "medium", "high", "xhigh"])
def test_an_effort_survives_the_way_to_a_budget_and_back(effort: str) -> None:
    """reasoning_effort -> budget_tokens -> reasoning_effort: the same level (minimal and xhigh,
    which not every reasoning model takes, come back as low and high)."""
    chat = {"model": "claude-sonnet-4-5", "reasoning_effort": effort, "messages": []}
    chat["messages"] = [{"role": "user", "content": "x"}]
    messages = Translator("openai_to_anthropic", chat, CREATED).request()
    budget = messages["thinking"]["budget_tokens"]
    assert 1024 <= budget < messages["max_tokens"]
    again = Translator("anthropic_to_openai", messages, CREATED).request()
    assert again["reasoning_effort"] == {"minimal": "low", "xhigh": "high"}.get(effort, effort)


@pytest.mark.parametrize(
    ("model", "adaptive"),
    [
        ("claude-opus-4-7", True),
        ("claude-opus-4-6", True),
        ("claude-sonnet-4-6", True),
        ("claude-sonnet-5", True),
        ("claude-opus-4.7", True),
        ("us.anthropic.claude-opus-4-8-v1:0", True),
        ("claude-sonnet-4-5-20250929", False),
        ("claude-haiku-4-5", False),
        ("claude-sonnet-4-20250514", False),
        ("claude-opus-4-1-20250805", False),
        ("claude-3-7-sonnet-latest", False),
        ("kimi-k2", False),
        (None, False),
    ],
)
def test_which_models_think_adaptively(model: Any, adaptive: bool) -> None:
    assert adaptive_thinking(model) is adaptive


def _stream_cases() -> list[Any]:
    return [c for c in CASES if json.loads(c.values[1].read_text())["kind"] == "stream"]


@pytest.mark.parametrize(("direction", "path"), _stream_cases())
@settings(max_examples=25, deadline=None)
@given(cuts=st.lists(st.integers(min_value=1, max_value=4000), max_size=12))
def test_streams_translate_the_same_whatever_the_read_boundaries(
    direction: str, path: Path, cuts: list[int]
) -> None:
    """The relay frames upstream bytes into events as they arrive; translation depends only on
    the events, not on where the reads were cut."""
    case = json.loads(path.read_text())
    tr = Translator(direction, case.get("client_request", {}), CREATED)
    assert parse(translate_cut(tr, b"".join(render(case["in"])), cuts)) == case["out"]


PIECES = ("Hel", "lo")  # the text deltas of every stream_text.json


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_stream_output_follows_each_input_event_without_waiting(direction: str) -> None:
    """No buffering of the stream: every content delta fed in comes out in the same call."""
    name = "stream_text.json"
    case = json.loads((CONFORMANCE / direction / name).read_text())
    tr = Translator(direction, case.get("client_request", {}), CREATED)
    fed: list[str] = []
    for item, event in zip(case["in"], render(case["in"]), strict=True):
        out = parse(tr.events([event]))
        # each call writes exactly the text pieces its own input carried: none held back
        assert strings_among(out, PIECES) == strings_among(item, PIECES), item
        fed += strings_among(item, PIECES)
    assert fed == list(PIECES)  # the case really streams its text in those pieces


_text = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=20)


@settings(max_examples=60, deadline=None)
@given(
    system=st.none() | _text,
    turns=st.lists(_text, min_size=1, max_size=6),
    max_tokens=st.integers(min_value=1, max_value=100000),
    temperature=st.none() | st.floats(min_value=0, max_value=1),
    stops=st.lists(_text, max_size=3),
)
def test_a_text_conversation_survives_both_translations(
    system: str | None,
    turns: list[str],
    max_tokens: int,
    temperature: float | None,
    stops: list[str],
) -> None:
    """Messages -> Chat Completions -> Messages keeps roles, texts and sampling settings."""
    messages = [
        {"role": "user" if i % 2 == 0 else "assistant", "content": t} for i, t in enumerate(turns)
    ]
    body: dict[str, Any] = {"model": "m", "max_tokens": max_tokens, "messages": messages}
    if system is not None:
        body["system"] = system
    if temperature is not None:
        body["temperature"] = temperature
    if stops:
        body["stop_sequences"] = stops
    chat = Translator("anthropic_to_openai", body, CREATED).request()
    back = Translator("openai_to_anthropic", chat, CREATED).request()
    assert back["model"] == "m" and back["max_tokens"] == max_tokens
    assert back.get("temperature") == temperature
    assert back.get("stop_sequences", []) == stops
    assert back.get("system", []) == ([{"type": "text", "text": system}] if system else [])
    got = [
        (m["role"], m["content"] if isinstance(m["content"], str) else m["content"][0]["text"])
        for m in back["messages"]
    ]
    assert got == [(m["role"], m["content"]) for m in messages]


@settings(max_examples=60, deadline=None)
@given(
    text=st.none() | _text,
    calls=st.lists(
        st.tuples(_text, st.dictionaries(_text, st.integers() | _text, max_size=3)), max_size=3
    ),
    finish=st.sampled_from(["stop", "length", "tool_calls", "content_filter"]),
    prompt=st.integers(min_value=0, max_value=10**6),
    completion=st.integers(min_value=0, max_value=10**6),
)
def test_a_chat_answer_survives_both_translations(
    text: str | None,
    calls: list[tuple[str, dict[str, Any]]],
    finish: str,
    prompt: int,
    completion: int,
) -> None:
    """Chat Completions answer -> Messages answer -> Chat Completions answer keeps the text, the
    tool calls (ids, names, arguments), the finish reason (`stop` with tool calls becomes
    `tool_calls`) and the token counts."""
    message: dict[str, Any] = {"role": "assistant", "content": text}
    if calls:
        message["tool_calls"] = [
            {
                "id": f"call_{i}",
                "type": "function",
                "function": {"name": name, "arguments": json.dumps(args)},
            }
            for i, (name, args) in enumerate(calls)
        ]
    chat = {
        "id": "x",
        "model": "m",
        "choices": [{"index": 0, "message": message, "finish_reason": finish}],
        "usage": {"prompt_tokens": prompt, "completion_tokens": completion},
    }
    to_anthropic = Translator("anthropic_to_openai", {}, CREATED)
    msg = to_anthropic.body(200, "application/json", orjson.dumps(chat))
    again = json.loads(
        Translator("openai_to_anthropic", {}, CREATED).body(200, "application/json", msg)
    )
    m = again["choices"][0]["message"]
    assert m["content"] == (text or None)
    got_calls = [
        (c["id"], c["function"]["name"], json.loads(c["function"]["arguments"]))
        for c in m.get("tool_calls", [])
    ]
    assert got_calls == [(f"call_{i}", n, a) for i, (n, a) in enumerate(calls)]
    # (an answer with tool calls that says `stop` says `tool_calls` after: common.stop_reason)
    expected = "tool_calls" if calls and finish == "stop" else finish
    assert again["choices"][0]["finish_reason"] == expected
    assert (again["usage"]["prompt_tokens"], again["usage"]["completion_tokens"]) == (
        prompt,
        completion,
    )


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_a_stream_event_that_is_not_json_is_an_upstream_fault(direction: str) -> None:
    tr = Translator(direction, {}, CREATED)
    with pytest.raises(BadUpstreamEvent):
        tr.events([b"data: {not json\n\n"])


MISSHAPEN_EVENTS = {
    # an Anthropic upstream's events read for an OpenAI client
    "openai_to_anthropic": [
        {"type": "content_block_start", "index": 0, "content_block": 5},
        {"type": "content_block_delta", "index": 0, "delta": "text"},
        {"type": "message_start", "message": "m"},
    ],
    # an OpenAI upstream's chunks read for an Anthropic client
    "anthropic_to_openai": [
        {"id": "c", "choices": [{"index": 0, "delta": "text"}]},
        {"id": "c", "choices": [{"index": 0, "delta": {"tool_calls": [{"function": 3}]}}]},
        {"id": "c", "choices": 7},
    ],
}


@pytest.mark.parametrize(
    ("direction", "event"),
    [(d, e) for d, events in MISSHAPEN_EVENTS.items() for e in events],
)
def test_a_stream_event_of_another_shape_is_an_upstream_fault(
    direction: str, event: dict[str, Any]
) -> None:
    """JSON, but not of its format's shape: the stream ends with stream_error (before, the
    translator raised AttributeError and the relay died with a traceback, the client's stream
    cut without an error event)."""
    tr = Translator(direction, {"stream": True}, CREATED)
    start = {
        "openai_to_anthropic": {"type": "message_start", "message": {"id": "m", "usage": {}}},
        "anthropic_to_openai": {"id": "c", "choices": [{"index": 0, "delta": {"content": "a"}}]},
    }[direction]
    if event.get("type") != "message_start":
        tr.events([b"data: " + orjson.dumps(start) + b"\n\n"])
    with pytest.raises(BadUpstreamEvent):
        tr.events([b"data: " + orjson.dumps(event) + b"\n\n"])


@settings(max_examples=150, deadline=None)
@given(args=st.lists(ARGUMENTS, min_size=1, max_size=3), order=ORDERS, cuts=CUTS, texts=INSERTS)
def test_parallel_tool_calls_reach_a_messages_client_whole_however_they_interleave(
    args: list[str], order: list[int], cuts: list[list[int]], texts: list[tuple[int, str, str]]
) -> None:
    """Chat servers may interleave the argument fragments of parallel calls, and put text or
    reasoning between a call's name and its arguments; a Messages stream has one open block,
    and nothing may follow its stop. Each call's block gets exactly its own arguments, in the
    order the calls began, and the text and thinking blocks all of theirs, as the anthropic
    SDK's accumulator reads them."""
    items = with_text(parallel_call_chunks(args, order, cuts[: len(args)]), texts)
    tr = Translator("anthropic_to_openai", {}, CREATED)
    out = parse(tr.events(render(items)) + tr.finish())
    opened: set[int] = set()
    live: int | None = None
    snapshot = None
    bufs: dict[int, bytes] = {}
    for item in out:
        data = item["data"]
        if data["type"] == "content_block_start":
            assert live is None and data["index"] not in opened
            live = data["index"]
            opened.add(live)
        elif data["type"] == "content_block_delta":
            assert data["index"] == live
        elif data["type"] == "content_block_stop":
            assert data["index"] == live
            live = None
        event = STREAM_EVENT.validate_python(data)
        snapshot = accumulate_event(event=event, current_snapshot=snapshot, json_bufs=bufs)
    assert live is None and snapshot is not None
    calls = [b for b in snapshot.content if b.type == "tool_use"]
    assert [(b.type, b.id, b.input) for b in calls] == [
        ("tool_use", f"call_{i}", json.loads(args[i])) for i in first_appearance(items)
    ]
    texts_out = "".join(b.text for b in snapshot.content if b.type == "text")
    thinking_out = "".join(b.thinking for b in snapshot.content if b.type == "thinking")
    assert (texts_out, thinking_out) == (
        inserted(items, "content"),
        inserted(items, "reasoning_content"),
    )


def test_a_waiting_call_s_name_that_comes_later_is_in_its_block() -> None:
    """A call that waits (the one before it is not whole yet) and whose name comes in a later
    piece: its block, started later, carries the name (it said "")."""
    items = parallel_call_chunks(['{"a": 1}', '{"b": 2}'], [0, 1, 1, 0, 1], [[3], [2, 3]])
    # call 1's first piece loses its name; it comes with its second, before call 0 is whole
    first_1 = items[1]["data"]["choices"][0]["delta"]["tool_calls"][0]
    name = first_1["function"].pop("name")
    items[2]["data"]["choices"][0]["delta"]["tool_calls"][0]["function"]["name"] = name
    tr = Translator("anthropic_to_openai", {}, CREATED)
    out = parse(tr.events(render(items)) + tr.finish())
    starts = [i["data"]["content_block"] for i in out if i["event"] == "content_block_start"]
    assert [(b["id"], b["name"]) for b in starts] == [("call_0", "tool_0"), ("call_1", "tool_1")]


def _chat_chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
    choice = {"index": 0, "delta": delta, "finish_reason": finish}
    return b"data: " + orjson.dumps({"id": "c", "model": "m", "choices": [choice]}) + b"\n\n"


def _messages_of(chunks: list[bytes]) -> Any:
    """The message the anthropic SDK's accumulator makes of the translated stream."""
    tr = Translator("anthropic_to_openai", {}, CREATED)
    snapshot = None
    bufs: dict[int, bytes] = {}
    for item in parse(tr.events(chunks) + tr.finish()):
        event = STREAM_EVENT.validate_python(item["data"])
        snapshot = accumulate_event(event=event, current_snapshot=snapshot, json_bufs=bufs)
    return snapshot


def test_calls_without_an_index_are_told_apart_by_their_ids() -> None:
    """Gemini's OpenAI-compatible stream sends each call whole, without `index`, and ends a
    tool-call answer with `stop`: both calls were one block (`{"city":"Paris"}{"city":"Rome"}`,
    Rome's id and input lost) with `end_turn`, which an agent takes for a final answer."""
    calls = [
        {"id": "function-call-1", "type": "function",
         "function": {"name": "weather", "arguments": '{"city":"Paris"}'}},
        {"id": "function-call-2", "type": "function",
         "function": {"name": "weather", "arguments": '{"city":"Rome"}'}},
    ]  # fmt: skip
    for chunks in (
        [_chat_chunk({"tool_calls": calls}, "stop")],  # both in one chunk
        [_chat_chunk({"tool_calls": [calls[0]]}), _chat_chunk({"tool_calls": [calls[1]]}, "stop")],
    ):
        message = _messages_of(chunks)
        assert [(b.id, b.name, b.input) for b in message.content] == [
            ("function-call-1", "weather", {"city": "Paris"}),
            ("function-call-2", "weather", {"city": "Rome"}),
        ]
        assert message.stop_reason == "tool_use"
    # Pieces without an index or an id continue the last call.
    pieces = [
        _chat_chunk({"tool_calls": [{"id": "a", "function": {"name": "f", "arguments": '{"x"'}}]}),
        _chat_chunk({"tool_calls": [{"function": {"arguments": ": 1}"}}]}, "tool_calls"),
    ]
    assert [(b.id, b.input) for b in _messages_of(pieces).content] == [("a", {"x": 1})]
    # A whole answer ending a tool call with `stop` is `tool_use` too.
    body = {"choices": [{"message": {"tool_calls": calls[:1]}, "finish_reason": "stop"}]}
    whole = Translator("anthropic_to_openai", {}, CREATED).body(
        200, "application/json", orjson.dumps(body)
    )
    assert orjson.loads(whole)["stop_reason"] == "tool_use"


def test_a_call_whose_name_comes_after_its_first_piece_keeps_it() -> None:
    """Some servers send a call's id and arguments first and its name later: its block started
    at once with `name: ""`, which a client cannot run."""
    chunks = [
        _chat_chunk({"tool_calls": [{"index": 0, "id": "call_1", "function": {"arguments": ""}}]}),
        _chat_chunk({"tool_calls": [{"index": 0, "function": {"name": "get_weather"}}]}),
        _chat_chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"city":"Paris"}'}}]},
                    "tool_calls"),
    ]  # fmt: skip
    message = _messages_of(chunks)
    assert [(b.id, b.name, b.input) for b in message.content] == [
        ("call_1", "get_weather", {"city": "Paris"})
    ]


def test_integers_beyond_64_bits_in_tool_arguments_stay_exact() -> None:
    """JSON allows any integer; orjson reads one beyond 64 bits as a float (and refuses to write
    it). A tool call's arguments keep theirs both ways (found by the round-trip property test
    with -9223372036854775809, 19 digits, one below the smallest 64-bit integer)."""
    args = '{"n": -9223372036854775809, "id": 123456789012345678901234567890}'
    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": args}}
    answer = {"choices": [{"message": {"role": "assistant", "tool_calls": [call]}}]}
    body = Translator("anthropic_to_openai", {}, CREATED).body(
        200, "application/json", json.dumps(answer).encode()
    )
    (block,) = json.loads(body)["content"]
    assert block["input"] == {"n": -9223372036854775809, "id": 123456789012345678901234567890}
    back = Translator("openai_to_anthropic", {}, CREATED).body(
        200,
        "application/json",
        json.dumps({"content": [block], "stop_reason": "tool_use", "usage": {}}).encode(),
    )
    arguments = json.loads(back)["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"]
    assert json.loads(arguments) == block["input"]


def test_a_tool_call_without_an_id_gets_one_for_an_anthropic_client() -> None:
    """Some Chat servers send no call id; the Anthropic client must get a tool_use id (a
    string: its tool_result comes back under it), streamed or not, unique per call."""
    call = {"type": "function", "function": {"name": "f", "arguments": "{}"}}
    answer = {"choices": [{"message": {"role": "assistant", "tool_calls": [call, call]}}]}
    body = Translator("anthropic_to_openai", {}, CREATED).body(
        200, "application/json", json.dumps(answer).encode()
    )
    ids = [b["id"] for b in json.loads(body)["content"]]
    assert all(isinstance(i, str) and i.startswith("toolu_") for i in ids) and len(set(ids)) == 2
    tr = Translator("anthropic_to_openai", {"stream": True}, CREATED)
    chunk = {"id": "c", "choices": [{"index": 0, "delta": {"tool_calls": [{**call, "index": 0}]}}]}
    events = parse(tr.events([b"data: " + orjson.dumps(chunk) + b"\n\n"]))
    (start,) = [e["data"] for e in events if e["data"].get("type") == "content_block_start"]
    assert start["content_block"]["id"].startswith("toolu_")


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_a_2xx_answer_that_is_not_a_json_object_is_json_error(direction: str) -> None:
    tr = Translator(direction, {}, CREATED)
    for ctype, body in (("application/json", b"[1]"), ("text/plain", b"hello"), ("", b"")):
        with pytest.raises(UpstreamJSONError):
            tr.body(200, ctype, body)


def test_tool_arguments_that_are_not_a_json_object_are_json_error() -> None:
    chat = {
        "choices": [
            {
                "message": {
                    "tool_calls": [{"id": "c", "function": {"name": "f", "arguments": "{oops"}}]
                },
                "finish_reason": "tool_calls",
            }
        ]
    }
    with pytest.raises(UpstreamJSONError):
        Translator("anthropic_to_openai", {}, CREATED).body(
            200, "application/json", orjson.dumps(chat)
        )


def test_client_tool_arguments_that_are_not_json_are_400() -> None:
    body = {
        "model": "m",
        "messages": [
            {
                "role": "assistant",
                "tool_calls": [
                    {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{"}}
                ],
            }
        ],
    }
    with pytest.raises(BadRequest, match="arguments"):
        Translator("openai_to_anthropic", body, CREATED).request()


@pytest.mark.parametrize("direction", DIRECTIONS)
@pytest.mark.parametrize("messages", [None, "hi", {"role": "user"}])
def test_messages_must_be_an_array(direction: str, messages: Any) -> None:
    with pytest.raises(BadRequest, match="'messages' must be an array"):
        Translator(direction, {"model": "m", "messages": messages}, CREATED).request()


def test_an_openai_stream_that_ends_without_done_is_closed_after_its_finish_reason() -> None:
    chunks = [
        {"data": {"id": "c", "model": "m", "choices": [{"index": 0, "delta": {"content": "a"}}]}},
        {
            "data": {
                "id": "c",
                "model": "m",
                "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
            }
        },
    ]
    tr = Translator("anthropic_to_openai", {}, CREATED)
    out = parse(tr.events(render(chunks)) + tr.finish())
    assert [o["event"] for o in out][-2:] == ["message_delta", "message_stop"]
    assert not tr.broken
    # A stream cut before any finish_reason is not made to look complete: it ends with the
    # relay's own stream error (it just stopped: Claude Code said "Connection lost").
    cut = Translator("anthropic_to_openai", {}, CREATED)
    out = parse(cut.events(render(chunks[:1])) + cut.finish())
    assert "message_stop" not in [o["event"] for o in out]
    assert out[-1]["event"] == "error"
    assert out[-1]["data"]["error"] == {"type": "api_error", "message": "The upstream stream broke"}
    assert cut.broken
    # An error the upstream sent in the stream is the client's error event, and broken too.
    failed = Translator("anthropic_to_openai", {}, CREATED)
    bad = {"data": {"error": {"message": "overloaded", "code": 529}}}
    out = parse(failed.events(render([*chunks[:1], bad])) + failed.finish())
    assert [o["event"] for o in out].count("error") == 1 and failed.broken


def test_an_anthropic_stream_cut_before_its_stop_reason_gets_no_done() -> None:
    case = json.loads((CONFORMANCE / "openai_to_anthropic" / "stream_text.json").read_text())
    tr = Translator("openai_to_anthropic", case["client_request"], CREATED)
    out = parse(tr.events(render(case["in"][:4])) + tr.finish())
    assert {"data": "[DONE]"} not in out
    # an error event, as when the connection breaks: a Chat client takes a stream that just
    # ends as complete
    assert out[-1]["event"] == "error" and out[-1]["data"]["error"]["code"] == "stream_error"
    assert tr.broken
    whole = Translator("openai_to_anthropic", case["client_request"], CREATED)
    out = parse(whole.events(render(case["in"][:-1])) + whole.finish())  # no message_stop
    assert out[-1] == {"data": "[DONE]"}
    assert not whole.broken


def test_translated_answers_keep_upstream_headers_but_describe_their_own_body() -> None:
    tr = Translator("openai_to_anthropic", {}, CREATED)
    headers, body = tr.answer(
        529,
        [("content-type", "text/plain"), ("Content-Encoding", "identity"), ("retry-after", "3")],
        b"overloaded",
    )
    assert headers == [("retry-after", "3"), ("Content-Type", "application/json")]
    assert json.loads(body)["error"]["message"] == "The upstream answered HTTP 529"


def _profile(tmp_path: Path, endpoints: dict[str, Any]) -> Path:
    p = tmp_path / "p.json"
    p.write_text(json.dumps({"name": "x", "baseUrl": "http://h", "endpoints": endpoints}))
    return p


def test_format_resolves_url_and_translation(tmp_path: Path) -> None:
    cfg = load_file(
        _profile(
            tmp_path,
            {
                "/v1/chat/completions": {"upstreamPath": "/compat/chat"},
                "/v1/messages": {"format": "openai"},
            },
        )
    )
    msgs = cfg.endpoints["/v1/messages"]
    assert (msgs.url, msgs.format, msgs.translation) == (
        "http://h/compat/chat",
        "openai",
        "anthropic_to_openai",
    )
    chat = cfg.endpoints["/v1/chat/completions"]
    assert (chat.format, chat.translation) == ("openai", "none")
    # Without `format` a route keeps its own format (operators' existing files keep working).
    plain = load_file(_profile(tmp_path, {}))
    assert plain.endpoints["/v1/messages"].url == "http://h/v1/messages"
    assert plain.endpoints["/v1/messages"].translation == "none"
    own = load_file(
        _profile(tmp_path, {"/v1/chat/completions": {"format": "anthropic", "upstreamPath": "/m"}})
    )
    assert own.endpoints["/v1/chat/completions"].url == "http://h/m"
    assert own.endpoints["/v1/chat/completions"].translation == "openai_to_anthropic"


@pytest.mark.parametrize("route", ["/v1/embeddings", "/v1/completions", "/v1/audio/transcriptions"])
def test_format_anthropic_only_on_the_chat_routes(tmp_path: Path, route: str) -> None:
    with pytest.raises(ConfigError, match=r"\$\.endpoints: .*can be translated"):
        load_file(_profile(tmp_path, {route: {"format": "anthropic"}}))


def test_format_is_validated(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"\$\.endpoints\./v1/messages\.format"):
        load_file(_profile(tmp_path, {"/v1/messages": {"format": "gemini"}}))


def test_a_request_without_an_output_limit_gets_the_route_s_default_max_tokens() -> None:
    """Messages requires max_tokens; Codex (Responses) and many Chat clients send none. The
    route's `translation.defaultMaxTokens` fills it; with thinking the answer keeps at least
    4,096 tokens beside the budget, and never more than the default when that is larger (a
    model's own cap, 32,000 for Opus 4.1, would refuse default + budget)."""
    body = {
        "model": "claude-opus-4-1",
        "messages": [{"role": "user", "content": "hi"}],
        "stream": True,
    }
    for default, effort, expected in (
        (4096, None, 4096),
        (32000, None, 32000),
        (4096, "high", 16384 + 4096),  # as before: the budget plus the room
        (32000, "high", 32000),
        (32000, "xhigh", 32000),
        (8192, "high", 16384 + 4096),
    ):
        options = TranslationOptions(default_max_tokens=default)
        payload = dict(body, reasoning_effort=effort) if effort else body
        out = Translator("openai_to_anthropic", payload, CREATED, options).request()
        assert out["max_tokens"] == expected, (default, effort)
    # a client's own limit wins
    options = TranslationOptions(default_max_tokens=32000)
    out = Translator("openai_to_anthropic", dict(body, max_tokens=100), CREATED, options).request()
    assert out["max_tokens"] == 100
    # not streamed, a long answer would pass the read timeout before its first byte: 4,096
    whole = dict(body, stream=False)
    assert (
        Translator("openai_to_anthropic", whole, CREATED, options).request()["max_tokens"] == 4096
    )
    options = TranslationOptions(default_max_tokens=1000)
    assert (
        Translator("openai_to_anthropic", whole, CREATED, options).request()["max_tokens"] == 1000
    )


def test_a_shape_a_translator_does_not_expect_is_the_client_s_400_naming_where(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """What the translators do not check yet (a number where one reads an object) is a
    TypeError, AttributeError, ...: `translated_request` answers it as the client's 400, naming
    the part of the request the translator was reading when its function says (`where`), never a
    500. A leaf helper stands in for such a place (every one the fuzz found was fixed)."""
    ep = load_file(find_profile("anthropic")).endpoints["/v1/chat/completions"]
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    translator, sent = translated_request("/v1/chat/completions", ep, body, False)
    assert translator.direction == "openai_to_anthropic"  # type: ignore[union-attr]
    assert orjson.loads(sent)["messages"] == [{"role": "user", "content": "hi"}]

    def crash(*_args: Any) -> Any:
        raise TypeError("'int' object is not iterable")

    monkeypatch.setattr(openai_to_anthropic, "_user_content", crash)
    with pytest.raises(BadRequest) as e:
        translated_request("/v1/chat/completions", ep, body, False)
    assert e.value.message == "'messages[0]' holds a value of the wrong type for its translation"
    monkeypatch.undo()
    monkeypatch.setattr(openai_to_anthropic, "_tool_choice", crash)
    with pytest.raises(BadRequest) as e:  # no function of the translator knew where
        translated_request("/v1/chat/completions", ep, body, False)
    assert e.value.message == (
        "A field of the request has a value of the wrong type for its translation"
    )


# --- a client tool search's result (Claude Code's ToolSearch: `tool_reference` blocks) ---------


def _tool_search_result(*content: dict[str, Any]) -> dict[str, Any]:
    call = {"type": "tool_use", "id": "t1", "name": "ToolSearch", "input": {"query": "x"}}
    result = {"type": "tool_result", "tool_use_id": "t1", "content": list(content)}
    return {
        "model": "m",
        "max_tokens": 10,
        "messages": [
            {"role": "user", "content": "go"},
            {"role": "assistant", "content": [call]},
            {"role": "user", "content": [result]},
        ],
    }


def test_tool_references_become_the_names_loaded_where_they_stood() -> None:
    """(Refused with 400 before: Claude Code then sent the request twice more, and again with
    its tool search turned off for the session.)"""
    body = _tool_search_result(
        {"type": "text", "text": "before"},
        {"type": "tool_reference", "tool_name": "WebFetch"},
        {"type": "tool_reference", "tool_name": "NotebookEdit"},
        {"type": "text", "text": "after"},
    )
    tool = Translator("anthropic_to_openai", body, CREATED).request()["messages"][-1]
    assert tool == {
        "role": "tool",
        "tool_call_id": "t1",
        "content": "before\nTools found, now available to call:\n- WebFetch\n- NotebookEdit\nafter",
    }


def test_a_tool_reference_without_a_name_is_a_bad_request() -> None:
    body = _tool_search_result({"type": "tool_reference", "tool_name": 7})
    with pytest.raises(BadRequest, match=r"'messages\[2\].content\[0\].content\[0\].tool_name'"):
        Translator("anthropic_to_openai", body, CREATED).request()


def test_tool_references_beside_an_image_and_in_several_results() -> None:
    image = {"type": "image", "source": {"type": "url", "url": "https://example.com/a.png"}}
    body = _tool_search_result(image, {"type": "tool_reference", "tool_name": "A"})
    second = {"type": "tool_result", "tool_use_id": "t2", "content": [
        {"type": "tool_reference", "tool_name": "B"}]}  # fmt: skip
    body["messages"][1]["content"].append(
        {"type": "tool_use", "id": "t2", "name": "ToolSearch", "input": {"query": "y"}}
    )
    body["messages"][2]["content"].append(second)
    out = Translator("anthropic_to_openai", body, CREATED).request()["messages"]
    assert [(m["role"], m.get("tool_call_id")) for m in out[-3:]] == [
        ("tool", "t1"),
        ("tool", "t2"),
        ("user", None),
    ]
    assert out[-3]["content"].endswith("\n- A") and out[-2]["content"].endswith("\n- B")
    assert out[-1]["content"][0]["type"] == "image_url"  # (the result's image follows)


# --- end-user identifiers ---------------------------------------------------------------------


@given(st.text(max_size=200))
def test_an_end_user_id_fits_both_providers_and_stays_one_per_user(value: str) -> None:
    got = end_user_id(value)
    if not value:
        assert got is None  # names nobody: not sent
        return
    assert got is not None and re.fullmatch(r"[A-Za-z0-9_-]{1,64}", got)  # every server's rule
    assert end_user_id(value) == got  # stable
    if re.fullmatch(r"[A-Za-z0-9_-]{1,64}", value):
        assert got == value  # one that fits goes as it is
    else:
        assert re.fullmatch(r"u-[0-9a-f]{32}", got)  # a digest: nothing of the value itself
        assert end_user_id(value + "x") != got  # distinct users stay distinct


def test_an_end_user_id_at_the_limits() -> None:
    assert end_user_id("a" * 64) == "a" * 64
    assert end_user_id("a" * 65) != "a" * 65
    assert end_user_id("user-42_x") == "user-42_x"
    assert end_user_id("jane@example.com").startswith("u-")
    assert end_user_id("") is None


@pytest.mark.parametrize(
    ("body", "metadata"),
    [
        ({"user": "", "safety_identifier": "sid-1"}, {"user_id": "sid-1"}),
        ({"user": ""}, None),
        ({"safety_identifier": ""}, None),
    ],
)
def test_an_empty_end_user_id_is_not_sent(body: dict[str, Any], metadata: Any) -> None:
    chat = {"model": "m", "messages": [{"role": "user", "content": "x"}], **body}
    assert Translator("openai_to_anthropic", chat, 0).request().get("metadata") == metadata
    messages = {"model": "m", "max_tokens": 8, "messages": chat["messages"]}
    empty = {**messages, "metadata": {"user_id": ""}}
    assert "user" not in Translator("anthropic_to_openai", empty, 0).request()


# --- tool names longer than OpenAI takes ------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True])
def test_a_tool_name_too_long_for_openai_is_cut_upstream_and_named_as_sent_in_the_answer(
    stream: bool,
) -> None:
    """Anthropic takes tool names of 128 characters, OpenAI 64: Claude Code names an MCP tool
    `mcp__<server>__<tool>`, which a plugin's server and a long tool name take past 64."""
    long = "mcp__plugin_enterprise_search_knowledge__search_documents_by_label_and_space_key"
    other = long.replace("space_key", "owner_key")
    tools = [{"name": n, "input_schema": {"type": "object"}} for n in (long, other, "Write")]
    history = [
        {"role": "user", "content": "find it"},
        {
            "role": "assistant",
            "content": [{"type": "tool_use", "id": "t1", "name": long, "input": {}}],
        },
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "none"}],
        },
    ]
    payload = {
        "model": "m",
        "max_tokens": 64,
        "tools": tools,
        "tool_choice": {"type": "tool", "name": other},
        "messages": history,
    }
    tr = Translator("anthropic_to_openai", payload, 0)
    sent = tr.request()
    names = [t["function"]["name"] for t in sent["tools"]]
    assert all(len(n) <= 64 for n in names) and names[2] == "Write" and len(set(names)) == 3
    assert sent["tool_choice"] == {"type": "function", "function": {"name": names[1]}}
    assert sent["messages"][1]["tool_calls"][0]["function"]["name"] == names[0]
    call = {"id": "c2", "type": "function", "function": {"name": names[1], "arguments": "{}"}}
    if stream:
        chunk = {
            "id": "x",
            "model": "m",
            "choices": [
                {
                    "index": 0,
                    "delta": {"tool_calls": [{"index": 0, **call}]},
                    "finish_reason": "tool_calls",
                }
            ],
        }
        out = (
            tr.events([b"data: " + orjson.dumps(chunk) + b"\n\n", b"data: [DONE]\n\n"])
            + tr.finish()
        )
        blocks = [
            e["data"]["content_block"]
            for e in parse(out)
            if e.get("event") == "content_block_start"
        ]
    else:
        message = {"role": "assistant", "content": None, "tool_calls": [call]}
        answer = {
            "id": "x",
            "model": "m",
            "choices": [{"index": 0, "message": message, "finish_reason": "tool_calls"}],
        }
        blocks = json.loads(tr.body(200, "application/json", orjson.dumps(answer)))["content"]
    assert [(b["type"], b["name"]) for b in blocks] == [("tool_use", other)]
