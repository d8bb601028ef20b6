"""The OpenAI Responses API in front of Chat Completions and Anthropic Messages upstreams
(service.translate.responses): the conformance table in tests/conformance/responses_to_openai/ and
responses_to_anthropic/, the streams checked against the official `openai` SDK's own event types
and stream accumulator, and properties of the pieces.

A case file holds `kind` (request | refused | response | error | stream), `description`, `in` and
`out` (or `refused`: a fragment of the 400 message), optionally `options` (TranslationOptions
fields), `client_request` (the Responses request, for answers and streams), `status` (errors) and
`dropped` (request: the labels of the hints dropped). Stream items are `{"event"?, "data"}` or
`{"comment": text}`, as in tests/unit/test_translate.py.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Literal

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from openai._streaming import SSEDecoder
from openai._types import omit
from openai.lib.streaming.responses import ResponseStreamState
from openai.types.responses import Response, ResponseStreamEvent
from openai.types.responses.response_error import ResponseError
from pydantic import TypeAdapter

from service.errors import UpstreamJSONError
from service.translate import Translator
from service.translate.common import (
    DROPPED_FIELDS,
    BadUpstreamEvent,
    TranslationOptions,
    Untranslatable,
)
from service.translate.responses import RESPONSES_DROPPED_FIELDS, ResponsesTranslator
from service.translate.responses_output import custom_input
from service.translate.responses_request import chat_request
from service.translate.responses_stream import CUT_MESSAGE, InputDecoder
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
DIRECTIONS = {"responses_to_openai": "openai", "responses_to_anthropic": "anthropic"}
EVENTS: TypeAdapter[Any] = TypeAdapter(ResponseStreamEvent)
SDK_ERROR_CODES = set(ResponseError.model_fields["code"].annotation.__args__)  # type: ignore[union-attr]


def translator(direction: str, case: dict[str, Any], payload: Any = None) -> ResponsesTranslator:
    options = TranslationOptions(**case.get("options", {}))
    body = case.get("client_request", {}) if payload is None else payload
    return ResponsesTranslator(DIRECTIONS[direction], body, CREATED, options)


def run_case(direction: str, case: dict[str, Any]) -> Any:
    kind = case["kind"]
    if kind == "request":
        tr = translator(direction, case, case["in"])
        out = tr.request()
        assert tr.dropped == case.get("dropped", [])
        return out
    if kind == "response":
        body = translator(direction, case).body(
            200, "application/json", json.dumps(case["in"]).encode()
        )
        return json.loads(body)
    if kind == "error":
        raw = case["in"]
        data = raw.encode() if isinstance(raw, str) else json.dumps(raw).encode()
        ctype = "text/html" if isinstance(raw, str) else "application/json"
        return json.loads(translator(direction, case).body(case["status"], ctype, data))
    if kind == "stream":
        tr = translator(direction, case)
        return parse(tr.events(render(case["in"])) + tr.finish())
    raise AssertionError(f"unknown kind {kind}")


def _cases(kind: str | None = None) -> list[Any]:
    out = []
    for direction in DIRECTIONS:
        for path in sorted((CONFORMANCE / direction).glob("*.json")):
            if kind is None or json.loads(path.read_text())["kind"] == kind:
                out.append(pytest.param(direction, path, id=f"{direction}/{path.stem}"))
    return out


CASES = _cases()


def _load(path: Path) -> dict[str, Any]:
    case: dict[str, Any] = json.loads(path.read_text())
    return case


def test_the_table_covers_every_kind_in_both_directions() -> None:
    kinds: dict[str, set[str]] = {d: set() for d in DIRECTIONS}
    for direction, path in (c.values for c in CASES):
        kinds[direction].add(_load(path)["kind"])
    for direction in DIRECTIONS:
        assert kinds[direction] == {"request", "refused", "response", "error", "stream"}, direction


@pytest.mark.parametrize(("direction", "path"), CASES)
def test_conformance(direction: str, path: Path) -> None:
    case = _load(path)
    if case["kind"] == "refused":
        with pytest.raises(Untranslatable) as e:
            translator(direction, case, case["in"]).request()
        assert e.value.status == 400
        assert case["refused"] in e.value.message
        return
    assert run_case(direction, case) == case["out"]


# --- the official SDK's view of what is written --------------------------------------------


def sdk_events(data: bytes) -> list[Any]:
    """The SSE bytes decoded by the SDK's own SSE decoder, each event validated as one of its
    Responses stream event types (`event:` must name the data's `type`). The SDK's
    `ResponseError.code` is a closed list lagging the codes the API and Codex use
    (context_length_exceeded, insufficient_quota): those validate as server_error."""
    out = []
    for sse in SSEDecoder().iter_bytes(iter([data])):
        payload = sse.json()
        assert sse.event == payload["type"]
        error = (payload.get("response") or {}).get("error")
        if error and error["code"] not in SDK_ERROR_CODES:
            payload = json.loads(json.dumps(payload))
            payload["response"]["error"]["code"] = "server_error"
        out.append(EVENTS.validate_python(payload))
    return out


@pytest.mark.parametrize(("direction", "path"), _cases("stream"))
def test_streams_parse_as_the_sdk_event_types_and_accumulate(direction: str, path: Path) -> None:
    """Each stream, fed to the SDK's stream accumulator (what `client.responses.stream()`
    runs), builds the response its last event reports; sequence numbers count up from 0."""
    case = _load(path)
    tr = translator(direction, case)
    events = sdk_events(b"".join(tr.events(render(case["in"])) + tr.finish()))
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert [e.type for e in events[:2]] == ["response.created", "response.in_progress"]
    last = events[-1]
    assert last.type in ("response.completed", "response.incomplete", "response.failed")
    assert sum(e.type.startswith("response.") and hasattr(e, "response") for e in events) == 3
    state: ResponseStreamState[Any] = ResponseStreamState(
        input_tools=case["client_request"].get("tools", []), text_format=omit
    )
    for event in events:
        state.handle_event(event)
    # Every item reported done holds exactly what its deltas built.
    built: dict[tuple[int, int], str] = {}
    for event in events:
        if event.type.endswith(".delta"):
            key = (event.output_index, getattr(event, "content_index", 0))
            built[key] = built.get(key, "") + event.delta
    done = [e.item.to_dict() for e in events if e.type == "response.output_item.done"]
    for event in events:
        if event.type != "response.output_item.done":
            continue
        item = event.item.to_dict()
        if item["type"] in ("message", "reasoning"):
            for j, part in enumerate(item["content"]):
                assert part.get("text", part.get("refusal")) == built[(event.output_index, j)]
        elif item["type"] == "function_call":
            assert item["arguments"] == built.get((event.output_index, 0), "")
        elif item["type"] == "tool_search_call":  # its arguments are in the item alone
            assert isinstance(item["arguments"], dict)
            assert (event.output_index, 0) not in built
        elif item["type"] == "compaction":  # the summary is in the item alone
            assert item["encrypted_content"]
            assert (event.output_index, 0) not in built
        else:
            assert item["input"] == built.get((event.output_index, 0), "")
    if last.type != "response.failed":
        assert [o.to_dict() for o in last.response.output] == done
    if last.type == "response.completed":
        final = state._completed_response
        assert final is not None and len(final.output) == len(done)
        text = "".join(
            part["text"]
            for item in done
            if item["type"] == "message"
            for part in item["content"]
            if part["type"] == "output_text"
        )
        assert final.output_text == text


@pytest.mark.parametrize(("direction", "path"), _cases("response"))
def test_answers_validate_as_the_sdk_response(direction: str, path: Path) -> None:
    case = _load(path)
    out = run_case(direction, case)
    response = Response.model_validate(out)
    assert response.object == "response" and out["store"] is False
    assert response.id.startswith("resp_")


@pytest.mark.parametrize(("direction", "path"), _cases("stream"))
@settings(max_examples=25, deadline=None)
@given(cuts=st.lists(st.integers(min_value=1, max_value=6000), max_size=12))
def test_streams_translate_the_same_whatever_the_read_boundaries(
    direction: str, path: Path, cuts: list[int]
) -> None:
    case = _load(path)
    tr = translator(direction, case)
    assert parse(translate_cut(tr, b"".join(render(case["in"])), cuts)) == case["out"]


@settings(max_examples=150, deadline=None)
@given(args=st.lists(ARGUMENTS, min_size=1, max_size=3), order=ORDERS, cuts=CUTS, texts=INSERTS)
def test_parallel_function_calls_reach_a_responses_client_whole_however_they_interleave(
    args: list[str], order: list[int], cuts: list[list[int]], texts: list[tuple[int, str, str]]
) -> None:
    """Chat servers may interleave the argument fragments of parallel calls, and put text or
    reasoning between a call's name and its arguments; a Responses stream reports a call done
    before the next item opens. Each function_call item gets exactly its own arguments, in the
    order the calls began, and the message and reasoning items all their text, as the SDK's
    stream accumulator builds them."""
    items = with_text(parallel_call_chunks(args, order, cuts[: len(args)]), texts)
    request = {"model": "m", "input": "x", "stream": True, "tools": []}
    tr = translator("responses_to_openai", {"client_request": request})
    events = sdk_events(b"".join(tr.events(render(items)) + tr.finish()))
    state: ResponseStreamState[Any] = ResponseStreamState(input_tools=[], text_format=omit)
    for event in events:
        state.handle_event(event)
    final = state._completed_response
    assert final is not None and final.status == "completed"
    calls = [o for o in final.output if o.type == "function_call"]
    assert [(o.type, o.call_id, o.arguments) for o in calls] == [
        ("function_call", f"call_{i}", args[i]) for i in first_appearance(items)
    ]
    out: list[Any] = list(final.output)
    message = "".join(c.text for o in out if o.type == "message" for c in o.content)
    reasoning = "".join(c.text for o in out if o.type == "reasoning" for c in o.content or [])
    assert (message, reasoning) == (
        inserted(items, "content"),
        inserted(items, "reasoning_content"),
    )
    items_seen = [
        (e.type[len("response.output_item.") :], e.output_index)
        for e in events
        if e.type.startswith("response.output_item.")
    ]
    # one item open at a time: each added is followed by its own done
    n = len(final.output)
    assert items_seen == [(kind, i) for i in range(n) for kind in ("added", "done")]


PIECES = ("Hel", "lo")  # the text deltas of every stream_text.json


@pytest.mark.parametrize("direction", list(DIRECTIONS))
def test_stream_output_follows_each_input_event_without_waiting(direction: str) -> None:
    """No buffering of text: every content delta fed in comes out in the same call."""
    case = _load(CONFORMANCE / direction / "stream_text.json")
    tr = translator(direction, case)
    fed: list[str] = []
    for item, event in zip(case["in"], render(case["in"]), strict=True):
        out = parse(tr.events([event]))
        # each call writes the text deltas its own input carried, and no other: none held back
        deltas = [d["delta"] for o in out if isinstance(d := o.get("data"), dict) and "delta" in d]
        assert deltas == strings_among(item, PIECES), item
        fed += strings_among(item, PIECES)
    assert fed == list(PIECES)  # the case really streams its text in those pieces


# --- the request ---------------------------------------------------------------------------


def _case_in(direction: str, name: str) -> dict[str, Any]:
    body: dict[str, Any] = _load(CONFORMANCE / direction / f"{name}.json")["in"]
    return body


def test_every_dropped_label_is_in_the_closed_set() -> None:
    closed = {
        "responses_to_openai": set(RESPONSES_DROPPED_FIELDS),
        # a Messages upstream adds the labels of the Chat -> Messages translation
        "responses_to_anthropic": set(RESPONSES_DROPPED_FIELDS) | set(DROPPED_FIELDS),
    }
    seen = set()
    for direction, path in (c.values for c in _cases("request")):
        assert set(_load(path)["dropped"]) <= closed[direction], path.name
        seen.add(direction)
    assert seen == set(DIRECTIONS)


def test_the_anthropic_request_is_the_chat_request_translated_again() -> None:
    """One core: for a Messages upstream the request is exactly what the Chat -> Messages
    Translator makes of the Chat request (reasoning included), with both steps' labels."""
    body = _case_in("responses_to_openai", "request_codex")
    chat = chat_request(body)
    inner = Translator("openai_to_anthropic", chat.body, CREATED)
    expected = inner.request()
    tr = ResponsesTranslator("anthropic", body, CREATED)
    assert tr.request() == expected
    assert tr.dropped == chat.dropped + [d for d in inner.dropped if d not in chat.dropped]
    assert tr.direction == "responses_to_anthropic"
    assert ResponsesTranslator("openai", body, CREATED).direction == "responses_to_openai"


def test_a_strict_route_refuses_each_hint_but_still_drops_earlier_reasoning() -> None:
    strict = TranslationOptions(strict=True)
    hints = {
        "store": True,
        "include": ["reasoning.encrypted_content"],
        "prompt_cache_key": "k",
        "prompt_cache_retention": "24h",
        "service_tier": "flex",
        "metadata": {"a": "b"},
        "client_metadata": {"a": "b"},
        "safety_identifier": "s",
        "truncation": "auto",
        "stream_options": {"include_obfuscation": False},
        "max_tool_calls": 2,
        "reasoning": {"summary": "auto"},
        "text": {"verbosity": "low"},
        "tools": [{"type": "web_search"}],
    }
    for key, value in hints.items():
        body = {"model": "m", "input": "x", key: value}
        plain = ResponsesTranslator("openai", body, CREATED)
        plain.request()
        assert len(plain.dropped) == 1, key
        with pytest.raises(Untranslatable):
            ResponsesTranslator("openai", body, CREATED, strict).request()
    history = {
        "model": "m",
        "store": False,
        "input": [
            {"type": "reasoning", "summary": [], "encrypted_content": "x"},
            {"role": "user", "content": "hi"},
        ],
    }
    tr = ResponsesTranslator("openai", history, CREATED, strict)
    assert tr.request()["messages"] == [{"role": "user", "content": "hi"}]
    assert tr.dropped == ["input.reasoning"]


def test_absent_store_and_store_false_are_not_counted() -> None:
    for extra in ({}, {"store": False}, {"truncation": "disabled"}):
        tr = ResponsesTranslator("openai", {"model": "m", "input": "x", **extra}, CREATED)
        tr.request()
        assert tr.dropped == []


@pytest.mark.parametrize("value", [None, 3, {"role": "user"}])
def test_input_must_be_a_string_or_items(value: Any) -> None:
    from service.errors import BadRequest

    with pytest.raises(BadRequest, match="'input' must be"):
        ResponsesTranslator("openai", {"model": "m", "input": value}, CREATED).request()


def test_unknown_upstream_format_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="gemini"):
        ResponsesTranslator("gemini", {}, CREATED)


# --- custom tool input -----------------------------------------------------------------------


def test_custom_input_reads_what_models_write() -> None:
    assert custom_input('{"input": "*** Begin Patch"}') == "*** Begin Patch"
    assert custom_input('{"patch": "p"}') == "p"  # one string member, another name
    assert custom_input('"raw"') == "raw"
    assert custom_input("*** Begin Patch\n") == "*** Begin Patch\n"  # not JSON
    assert custom_input('{"a": "x", "b": "y"}') == '{"a": "x", "b": "y"}'  # ambiguous: as is
    assert custom_input("") == ""


_NO_SURROGATES: tuple[Literal["Cs"]] = ("Cs",)
_any_text = st.text(st.characters(codec="utf-8", exclude_categories=_NO_SURROGATES), max_size=60)


@settings(max_examples=300, deadline=None)
@given(
    value=_any_text | st.sampled_from(['\\"', "\\\\u", '"\\', "\U0001f600\\n", "\x00\x1f"]),
    ascii_only=st.booleans(),
    spaced=st.booleans(),
    cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=20),
)
def test_the_input_decoder_streams_exactly_the_string_whatever_the_fragments(
    value: str, ascii_only: bool, spaced: bool, cuts: list[int]
) -> None:
    """A custom tool's `{"input": "…"}` arguments cut anywhere (inside escapes and surrogate
    pairs too) decode to the string itself, piece by piece, and nothing after it."""
    sep = (", ", ": ") if spaced else (",", ":")
    raw = json.dumps({"input": value, "other": "z"}, ensure_ascii=ascii_only, separators=sep)
    if spaced:
        raw = " " + raw
    decoder = InputDecoder()
    pieces = []
    pos = 0
    for cut in [*sorted(set(cuts)), len(raw)]:
        pieces.append(decoder.feed(raw[pos:cut]))
        pos = max(pos, cut)
    assert "".join(pieces) == value == decoder.sent
    assert decoder.mode == "end"


def test_the_input_decoder_gives_up_on_other_shapes() -> None:
    for raw in ('{"other": "x", "input": "y"}', "*** Begin Patch", '["x"]', '{"input": 3}'):
        decoder = InputDecoder()
        assert "".join(decoder.feed(c) for c in raw) == ""
        assert decoder.mode == "off"


# --- streams ---------------------------------------------------------------------------------


def _chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
    choice = {"index": 0, "delta": delta, "finish_reason": finish}
    data = {"id": "c", "model": "m", "choices": [choice]}
    return b"data: " + orjson.dumps(data) + b"\n\n"


def _types(events: list[bytes]) -> list[str]:
    return [item["data"]["type"] for item in parse(events) if "data" in item]


def test_more_arguments_for_a_call_reported_done_are_an_upstream_fault() -> None:
    tr = ResponsesTranslator("openai", {"tools": [{"type": "function", "name": "f"}]}, CREATED)
    call = {"index": 0, "id": "a", "function": {"name": "f", "arguments": "{}"}}
    tr.events([_chunk({"tool_calls": [call]})])
    tr.events([_chunk({"tool_calls": [{**call, "index": 1, "id": "b"}]})])  # closes call 0
    with pytest.raises(BadUpstreamEvent):
        tr.events([_chunk({"tool_calls": [{"index": 0, "function": {"arguments": "x"}}]})])


def test_events_before_a_refused_one_still_go_out_ahead_of_response_failed() -> None:
    """One read: the first chunk, then an event the translator refuses. The client's stream must
    still begin with `response.created` and count its sequence numbers without a gap (the SDK
    refuses anything else), so what was made before the refusal comes first."""
    tr = ResponsesTranslator("openai", {}, CREATED)
    with pytest.raises(BadUpstreamEvent):
        tr.events([_chunk({"content": "Hi"}), b"data: upstream overloaded, retry\n\n"])
    events = sdk_events(b"".join(tr.error_events(502, b"")))
    assert [e.type for e in events][:3] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
    ]
    assert events[-1].type == "response.failed"
    assert [e.sequence_number for e in events] == list(range(len(events)))
    # Refused inside one event, after parts of it were made: those go out too.
    call = {"index": 0, "id": "a", "function": {"name": "f", "arguments": "{}"}}
    tr = ResponsesTranslator("openai", {"tools": [{"type": "function", "name": "f"}]}, CREATED)
    tr.events([_chunk({"tool_calls": [call]})])
    tr.events([_chunk({"tool_calls": [{**call, "index": 1, "id": "b"}]})])  # closes call 0
    late = [
        {"index": 1, "function": {"arguments": "{}"}},
        {"index": 0, "function": {"arguments": "x"}},
    ]
    with pytest.raises(BadUpstreamEvent):
        tr.events([_chunk({"tool_calls": late})])
    events = sdk_events(b"".join(tr.error_events(502, b"")))
    assert [e.type for e in events] == ["response.function_call_arguments.delta", "response.failed"]
    assert events[0].sequence_number + 1 == events[1].sequence_number


def test_a_stream_event_that_is_not_json_is_an_upstream_fault() -> None:
    for fmt in DIRECTIONS.values():
        with pytest.raises(BadUpstreamEvent):
            ResponsesTranslator(fmt, {}, CREATED).events([b"data: {not json\n\n"])


def test_a_call_whose_name_comes_late_opens_when_it_does() -> None:
    tr = ResponsesTranslator("openai", {"tools": [{"type": "custom", "name": "p"}]}, CREATED)
    out = tr.events(
        [
            _chunk({"tool_calls": [{"index": 0, "id": "a", "function": {"arguments": '{"in'}}]}),
            _chunk({"tool_calls": [{"index": 0, "function": {"name": "p", "arguments": 'put":'}}]}),
            _chunk(
                {"tool_calls": [{"index": 0, "function": {"arguments": '"ab"}'}}]}, "tool_calls"
            ),
            b"data: [DONE]\n\n",
        ]
    )
    items = [i["data"] for i in parse(out)]
    deltas = [i["delta"] for i in items if i["type"] == "response.custom_tool_call_input.delta"]
    assert deltas == ["ab"]
    assert items[-1]["response"]["output"][0]["input"] == "ab"
    assert tr.finish() == []


def test_calls_without_an_index_are_told_apart_by_their_ids() -> None:
    """Gemini's OpenAI-compatible stream sends each call whole without `index`: both were one
    function_call whose arguments were `{"city":"Paris"}{"city":"Rome"}` (not JSON)."""
    tr = ResponsesTranslator("openai", {"tools": [{"type": "function", "name": "w"}]}, CREATED)
    calls = [
        {"id": "function-call-1", "function": {"name": "w", "arguments": '{"city":"Paris"}'}},
        {"id": "function-call-2", "function": {"name": "w", "arguments": '{"city":"Rome"}'}},
    ]
    out = tr.events([_chunk({"tool_calls": [calls[0]]}), _chunk({"tool_calls": [calls[1]]}, "stop"),
                     b"data: [DONE]\n\n"])  # fmt: skip
    output = [i["data"] for i in parse(out)][-1]["response"]["output"]
    assert [(o["type"], o["call_id"], o["arguments"]) for o in output] == [
        ("function_call", "function-call-1", '{"city":"Paris"}'),
        ("function_call", "function-call-2", '{"city":"Rome"}'),
    ]


def test_an_empty_stream_ends_failed_and_a_done_without_finish_completes() -> None:
    cut = ResponsesTranslator("openai", {"model": "m"}, CREATED)
    items = [i["data"] for i in parse(cut.finish())]
    assert [i["type"] for i in items] == [
        "response.created",
        "response.in_progress",
        "response.failed",
    ]
    assert items[-1]["response"]["error"] == {"code": "server_error", "message": CUT_MESSAGE}
    assert items[-1]["response"]["model"] == "m"
    done = ResponsesTranslator("openai", {}, CREATED)
    out = done.events([_chunk({"content": "hi"}), b"data: [DONE]\n\n"])
    assert _types(out)[-1] == "response.completed"
    assert done.finish() == []


def test_an_upstream_error_after_the_head_ends_with_response_failed() -> None:
    tr = ResponsesTranslator("openai", {}, CREATED)
    tr.events([_chunk({"content": "a"})])
    body = orjson.dumps({"error": {"message": "Slow down. Please try again in 2s.", "type": "x"}})
    events = tr.error_events(429, body)
    last = sdk_events(b"".join(events))[-1]
    assert last.type == "response.failed"
    assert last.response.error.code == "rate_limit_exceeded"
    assert last.response.error.message == "Slow down. Please try again in 2s."
    assert last.sequence_number == 5  # after created, in_progress, added, part added, delta
    assert tr.error_events(429, body) == []  # the stream is over
    assert tr.events([_chunk({"content": "late"})]) == []
    # Before anything went out: the lifecycle events first.
    fresh = ResponsesTranslator("anthropic", {}, CREATED)
    quota = orjson.dumps({"type": "error", "error": {"type": "x", "message": "credit balance"}})
    items = [i["data"] for i in parse(fresh.error_events(400, quota))]
    assert [i["type"] for i in items][:2] == ["response.created", "response.in_progress"]
    assert items[-1]["response"]["error"]["code"] == "insufficient_quota"


def test_error_data_is_a_responses_error_event() -> None:
    tr = ResponsesTranslator("openai", {}, CREATED)
    tr.events([_chunk({"content": "a"})])
    data = tr.error_data(400, b'{"error": {"message": "maximum context length is 8k"}}')
    event = EVENTS.validate_json(data)
    assert event.type == "error"
    assert (event.code, event.message) == (
        "context_length_exceeded",
        "maximum context length is 8k",
    )
    assert event.sequence_number == 5
    assert json.loads(tr.error_data(503, b"<html>"))["code"] == "server_error"


# --- plain answers ---------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", list(DIRECTIONS.values()))
def test_a_2xx_answer_that_is_not_a_json_object_is_json_error(fmt: str) -> None:
    tr = ResponsesTranslator(fmt, {}, CREATED)
    for ctype, body in (("application/json", b"[1]"), ("text/plain", b"hello"), ("", b"")):
        with pytest.raises(UpstreamJSONError):
            tr.body(200, ctype, body)


def test_translated_answers_keep_upstream_headers_but_describe_their_own_body() -> None:
    tr = ResponsesTranslator("anthropic", {}, CREATED)
    headers, body = tr.answer(
        529,
        [("content-type", "text/plain"), ("Content-Encoding", "identity"), ("retry-after", "3")],
        b"overloaded",
    )
    assert headers == [("retry-after", "3"), ("Content-Type", "application/json")]
    assert json.loads(body)["error"] == {
        "message": "The upstream answered HTTP 529",
        "type": "server_error",
        "param": None,
        "code": "server_error",
    }


_name = st.from_regex(r"[a-z][a-z_]{0,11}", fullmatch=True)


@settings(max_examples=60, deadline=None)
@given(
    text=st.none() | _any_text.filter(bool),
    calls=st.lists(
        st.tuples(st.booleans(), st.dictionaries(_name, st.integers() | _any_text, max_size=3)),
        max_size=3,
    ),
    patch=_any_text,
)
def test_an_answer_fed_back_as_input_gives_the_upstream_the_same_turn(
    text: str | None, calls: list[tuple[bool, dict[str, Any]]], patch: str
) -> None:
    """What the client stores of an answer (its output items, custom tool calls included) and
    sends back as input reaches the Chat upstream as the assistant message it came from."""
    tools = [
        {"type": "function", "name": "fn", "parameters": {"type": "object"}},
        {"type": "custom", "name": "patch"},
    ]
    tool_calls: list[dict[str, Any]] = [
        {
            "id": f"call_{i}",
            "type": "function",
            "function": {
                "name": "patch" if custom else "fn",
                "arguments": json.dumps({"input": patch} if custom else args),
            },
        }
        for i, (custom, args) in enumerate(calls)
    ]
    message: dict[str, Any] = {"role": "assistant", "content": text}
    if tool_calls:
        message["tool_calls"] = tool_calls
    answer = {"id": "x", "model": "m", "choices": [{"index": 0, "message": message}]}
    payload = {"model": "m", "input": "go", "tools": tools}
    tr = ResponsesTranslator("openai", payload, CREATED)
    output = json.loads(tr.body(200, "application/json", orjson.dumps(answer)))["output"]
    again = {**payload, "input": [{"role": "user", "content": "go"}, *output]}
    messages = ResponsesTranslator("openai", again, CREATED).request()["messages"]
    if not text and not tool_calls:
        assert messages == [{"role": "user", "content": "go"}]
        return
    back = messages[1]
    assert back["role"] == "assistant"
    assert back["content"] == (text or None)
    got = [
        (c["id"], c["function"]["name"], json.loads(c["function"]["arguments"]))
        for c in back.get("tool_calls", [])
    ]
    want = [
        (c["id"], c["function"]["name"], json.loads(c["function"]["arguments"])) for c in tool_calls
    ]
    assert got == want


def test_a_custom_tool_call_cut_by_the_output_limit_is_never_reported_done() -> None:
    """A custom tool has no status to say its input was cut: reported done, half a patch (or
    script) is run by the client. Codex got the raw `{"input": "*** Begin Patch…` even, and ran
    it. Cut by finish_reason length, it is left open, as a cut stream leaves its items."""
    request = {"stream": True, "tools": [{"type": "custom", "name": "apply_patch"}]}
    tr = ResponsesTranslator("openai", request, CREATED)
    cut = '{"input": "*** Begin Patch\\n*** Add'
    fn = {"name": "apply_patch", "arguments": cut}
    call = {"index": 0, "id": "p1", "type": "function", "function": fn}
    out = tr.events([_chunk({"tool_calls": [call]}), _chunk({}, "length")])
    out += tr.events([b"data: [DONE]\n\n"]) + tr.finish()
    kinds = _types(out)
    assert "response.custom_tool_call_input.delta" in kinds  # it streamed
    assert "response.custom_tool_call_input.done" not in kinds
    assert "response.output_item.done" not in kinds
    (end,) = [
        i["data"] for i in parse(out) if i.get("data", {}).get("type") == "response.incomplete"
    ]
    assert end["response"]["output"] == []
    # whole when the limit came, it is reported done (it is not cut)
    tr = ResponsesTranslator("openai", request, CREATED)
    fn["arguments"] = '{"input": "x"}'
    out = tr.events([_chunk({"tool_calls": [call]}), _chunk({}, "length")])
    done = [i["data"] for i in parse(out) if i["data"]["type"].endswith("input.done")]
    assert [d["input"] for d in done] == ["x"]
    # whole, the same call is reported done with its decoded input
    tr = ResponsesTranslator("openai", request, CREATED)
    fn["arguments"] = '{"input": "*** Begin Patch\\n*** End Patch"}'
    out = tr.events([_chunk({"tool_calls": [call]}), _chunk({}, "tool_calls")])
    done = [i["data"] for i in parse(out) if i["data"]["type"].endswith("input.done")]
    assert [d["input"] for d in done] == ["*** Begin Patch\n*** End Patch"]


# --- namespaced tools (Codex's "Responses Lite" models: an `additional_tools` input item) --------

_SLEEP = {"type": "function", "name": "sleep", "parameters": {"type": "object"}}
_EXEC = {"type": "custom", "name": "exec", "description": "Run JavaScript."}


def _lite(*tools: dict[str, Any], **extra: Any) -> dict[str, Any]:
    item = {"type": "additional_tools", "role": "developer", "tools": list(tools)}
    return {"model": "m", "tools": [], "input": [item, {"role": "user", "content": "go"}], **extra}


def _offered_names(body: dict[str, Any]) -> list[str]:
    return [t["function"]["name"] for t in body.get("tools", [])]


@pytest.mark.parametrize("fmt", ["openai", "anthropic"])
def test_namespaced_calls_go_back_as_the_client_named_them_and_come_round_again(fmt: str) -> None:
    """A call of a namespaced tool reaches the client under the tool's own name with its
    namespace (Codex finds the tool by both); sent back as input, it is the same call upstream."""
    payload = _lite(
        {"type": "namespace", "name": "functions", "tools": [_EXEC]},
        {"type": "namespace", "name": "clock", "tools": [_SLEEP]},
    )
    tr = ResponsesTranslator("openai", payload, CREATED)
    assert _offered_names(tr.request()) == ["functions__exec", "clock__sleep"]
    calls = [
        ("call_1", "functions__exec", {"input": "text(1)"}),
        ("call_2", "clock__sleep", {"duration_ms": 2}),
    ]
    message = {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"id": i, "type": "function", "function": {"name": n, "arguments": json.dumps(a)}}
            for i, n, a in calls
        ],
    }
    answer = {"id": "x", "model": "m", "choices": [{"index": 0, "message": message}]}
    output = json.loads(tr.body(200, "application/json", orjson.dumps(answer)))["output"]
    assert [(o["type"], o.get("namespace"), o["name"]) for o in output] == [
        ("custom_tool_call", "functions", "exec"),
        ("function_call", "clock", "sleep"),
    ]
    again = {**payload, "input": [*payload["input"], *output]}
    back = ResponsesTranslator(fmt, again, CREATED).request()
    if fmt == "openai":
        sent = [
            (c["id"], c["function"]["name"], json.loads(c["function"]["arguments"]))
            for c in back["messages"][-1]["tool_calls"]
        ]
    else:
        blocks = back["messages"][-1]["content"]
        sent = [(b["id"], b["name"], b["input"]) for b in blocks if b["type"] == "tool_use"]
        assert [t["name"] for t in back["tools"]] == ["functions__exec", "clock__sleep"]
    assert sent == calls


@pytest.mark.parametrize("stream", [False, True])
def test_a_namespaced_name_too_long_upstream_is_cut_and_still_comes_back_whole(
    stream: bool,
) -> None:
    """An MCP server's namespace and its tool's name joined can pass the 64 characters OpenAI
    (and Anthropic) take for a function's name: cut with a digest, one name per tool, and the
    call comes back, and goes round again, as the client named it."""
    server = "mcp__enterprise_knowledge_base_connector"
    tools = [
        {**_SLEEP, "name": "search_documents_by_label_and_space"},
        {**_SLEEP, "name": "search_documents_by_label_and_owner"},
        _SLEEP,
    ]
    payload = _lite({"type": "namespace", "name": server, "tools": tools})
    tr = ResponsesTranslator("openai", payload, CREATED)
    names = _offered_names(tr.request())
    assert all(len(n) <= 64 and re.fullmatch(r"[A-Za-z0-9_-]+", n) for n in names), names
    assert len(set(names)) == 3 and names[2] == f"{server}__sleep"  # (short: as it was)
    assert names[0].startswith(server + "__search_docume") and names[0] != names[1]
    call = {"id": "call_1", "type": "function", "function": {"name": names[1], "arguments": "{}"}}
    if stream:
        chunks = [_chunk({"tool_calls": [{"index": 0, **call}]}, "tool_calls")]
        out = tr.events([*chunks, b"data: [DONE]\n\n"]) + tr.finish()
        done = [e["data"] for e in parse(out) if e.get("event") == "response.completed"]
        output = done[0]["response"]["output"]
    else:
        message = {"role": "assistant", "content": None, "tool_calls": [call]}
        answer = {"id": "x", "model": "m", "choices": [{"index": 0, "message": message}]}
        output = json.loads(tr.body(200, "application/json", orjson.dumps(answer)))["output"]
    assert [(o["namespace"], o["name"]) for o in output] == [
        (server, "search_documents_by_label_and_owner")
    ]
    again = {**payload, "input": [*payload["input"], *output]}
    back = ResponsesTranslator("openai", again, CREATED).request()
    assert back["messages"][-1]["tool_calls"][0]["function"]["name"] == names[1]
    anthropic = ResponsesTranslator("anthropic", again, CREATED).request()  # (via Chat)
    assert [t["name"] for t in anthropic["tools"]] == names
    assert [b["name"] for b in anthropic["messages"][-1]["content"]] == [names[1]]
    forced = {"type": "function", "namespace": server, "name": tools[0]["name"]}
    chosen = ResponsesTranslator("openai", {**payload, "tool_choice": forced}, CREATED).request()
    assert chosen["tool_choice"] == {"type": "function", "function": {"name": names[0]}}
    allowed = {"type": "allowed_tools", "mode": "auto", "tools": [forced]}
    chosen = ResponsesTranslator("openai", {**payload, "tool_choice": allowed}, CREATED).request()
    assert _offered_names(chosen) == names[:1]


def test_a_tool_offered_again_keeps_its_place_and_takes_its_last_definition() -> None:
    """Codex replays its whole conversation, an `additional_tools` item at each change of its
    tools: one tool upstream per name, where it first came, as it was last described."""
    later = {**_SLEEP, "description": "newer"}
    payload = _lite({"type": "namespace", "name": "clock", "tools": [_SLEEP]}, _EXEC)
    payload["tools"] = [{"type": "function", "name": "first"}]
    payload["input"].append(
        {
            "type": "additional_tools",
            "tools": [{"type": "namespace", "name": "clock", "tools": [later]}],
        }
    )
    body = ResponsesTranslator("openai", payload, CREATED).request()
    assert _offered_names(body) == ["first", "clock__sleep", "exec"]
    assert body["tools"][1]["function"]["description"] == "newer"
    assert [m["role"] for m in body["messages"]] == ["user"]  # the items are no messages


def test_a_choice_of_a_namespaced_tool_names_it_as_offered() -> None:
    ns = {"type": "namespace", "name": "clock", "tools": [_SLEEP, {**_SLEEP, "name": "now"}]}
    forced = {"type": "function", "namespace": "clock", "name": "sleep"}
    body = ResponsesTranslator("openai", _lite(ns, tool_choice=forced), CREATED).request()
    assert body["tool_choice"] == {"type": "function", "function": {"name": "clock__sleep"}}
    allowed = {"type": "allowed_tools", "mode": "required", "tools": [forced]}
    body = ResponsesTranslator("openai", _lite(ns, tool_choice=allowed), CREATED).request()
    assert (body["tool_choice"], _offered_names(body)) == ("required", ["clock__sleep"])


def test_namespaces_nest_and_hosted_tools_in_them_are_dropped() -> None:
    inner = {"type": "namespace", "name": "b", "tools": [_SLEEP, {"type": "web_search"}]}
    tr = ResponsesTranslator(
        "openai", _lite({"type": "namespace", "name": "a", "tools": [inner]}), CREATED
    )
    assert _offered_names(tr.request()) == ["a__b__sleep"]
    assert tr.dropped == ["tools.hosted"]
    assert tr.tools.namespaced == {"a__b__sleep": ("a__b", "sleep")}


@pytest.mark.parametrize(
    ("tools", "message"),
    [
        ([{"type": "namespace", "tools": []}], "'input[0].tools[0].name' must be a string"),
        ([{"type": "namespace", "name": "n"}], "'input[0].tools[0].tools' must be an array"),
        (["sleep"], "'input[0].tools[0]' must be an object"),
        (
            [{"type": "namespace", "name": "n", "tools": [{"type": "custom"}]}],
            "'input[0].tools[0].tools[0].name' must be a string",
        ),
    ],
)
def test_a_malformed_namespace_is_a_bad_request(tools: list[Any], message: str) -> None:
    from service.errors import BadRequest

    with pytest.raises(BadRequest) as e:
        ResponsesTranslator("openai", _lite(*tools), CREATED).request()
    assert e.value.message == message


def test_additional_tools_without_a_tool_list_is_a_bad_request() -> None:
    from service.errors import BadRequest

    payload = {"model": "m", "input": [{"type": "additional_tools"}]}
    with pytest.raises(BadRequest, match=r"'input\[0\].tools' must be an array"):
        ResponsesTranslator("openai", payload, CREATED).request()


# --- the client's own tool search (Codex: `tool_search` with `execution: "client"`) ---------------

_SEARCH = {"type": "tool_search", "execution": "client", "description": "Find tools."}


def test_a_hosted_tool_search_is_still_dropped_and_its_items_too() -> None:
    hosted = {"type": "tool_search"}
    items = [
        {"role": "user", "content": "go"},
        {"type": "tool_search_call", "call_id": "c", "arguments": {"query": "q"}},
        {"type": "tool_search_output", "call_id": "c", "tools": [_SLEEP]},
    ]
    tr = ResponsesTranslator("openai", {"model": "m", "input": items, "tools": [hosted]}, CREATED)
    body = tr.request()
    assert "tools" not in body and [m["role"] for m in body["messages"]] == ["user"]
    assert sorted(tr.dropped) == ["input.hosted_tool_calls", "tools.hosted"]
    assert tr.tools.search == frozenset()


def test_a_client_tool_search_without_parameters_asks_for_a_query() -> None:
    tr = ResponsesTranslator("openai", {"model": "m", "input": "go", "tools": [_SEARCH]}, CREATED)
    (tool,) = tr.request()["tools"]
    assert tool["function"]["name"] == "tool_search"
    assert tool["function"]["description"] == "Find tools."
    assert tool["function"]["parameters"]["required"] == ["query"]
    assert tr.tools.search == frozenset({"tool_search"})


@pytest.mark.parametrize(
    ("arguments", "want"),
    [
        ('{"query": "notes", "limit": 2}', {"query": "notes", "limit": 2}),
        ("", {}),
        ("save a note", {"query": "save a note"}),  # not JSON: taken for the query
        ('["x"]', {"query": '["x"]'}),
    ],
)
def test_a_tool_search_call_carries_its_arguments_as_an_object(arguments: str, want: Any) -> None:
    tr = ResponsesTranslator("openai", {"model": "m", "input": "go", "tools": [_SEARCH]}, CREATED)
    call = {
        "id": "c1",
        "type": "function",
        "function": {"name": "tool_search", "arguments": arguments},
    }
    message = {"role": "assistant", "content": None, "tool_calls": [call]}
    answer = {"id": "x", "model": "m", "choices": [{"index": 0, "message": message}]}
    (item,) = json.loads(tr.body(200, "application/json", orjson.dumps(answer)))["output"]
    assert item["type"] == "tool_search_call" and item["execution"] == "client"
    assert item["arguments"] == want


def test_a_search_that_found_nothing_says_so() -> None:
    items = [
        {"role": "user", "content": "go"},
        {"type": "tool_search_call", "execution": "client", "call_id": "c", "arguments": {}},
        {"type": "tool_search_output", "execution": "client", "call_id": "c", "tools": []},
    ]
    body = ResponsesTranslator(
        "openai", {"model": "m", "input": items, "tools": [_SEARCH]}, CREATED
    )
    messages = body.request()["messages"]
    assert messages[-1] == {"role": "tool", "tool_call_id": "c", "content": "No tools found."}
    assert messages[-2]["tool_calls"][0]["function"] == {"name": "tool_search", "arguments": "{}"}


@pytest.mark.parametrize(
    ("tools", "message"),
    [
        (
            [{"type": "namespace", "name": "a", "tools": [{"type": "function"}]}],
            "tools[0].tools[0].name",
        ),
        (
            [{"type": "namespace", "name": "a", "tools": [{"type": "function", "name": 5}]}],
            "tools[0].tools[0].name",
        ),
        (
            [
                {"type": "function", "name": "a__b"},
                {"type": "namespace", "name": "a", "tools": [_SLEEP | {"name": "b"}]},
            ],
            "'tools[1].tools[0]' would be offered upstream as 'a__b', the name of 'tools[0]'",
        ),
        (
            [{"type": "function", "name": "tool_search"}, _SEARCH],
            "'tools[1]' would be offered upstream as 'tool_search', the name of 'tools[0]'",
        ),
    ],
)
def test_a_tool_that_cannot_be_told_apart_upstream_is_a_bad_request(
    tools: list[Any], message: str
) -> None:
    from service.errors import BadRequest

    with pytest.raises(BadRequest) as e:
        ResponsesTranslator(
            "openai", {"model": "m", "input": "go", "tools": tools}, CREATED
        ).request()
    assert message in e.value.message


def test_tool_search_call_arguments_must_be_an_object_and_keep_their_numbers() -> None:
    from service.errors import BadRequest
    from service.proxy.body import loads_exact

    def items(arguments: bytes) -> bytes:
        return (
            b'{"model": "m", "tools": [], "input": [{"role": "user", "content": "go"},'
            b' {"type": "tool_search_call", "execution": "client", "call_id": "c",'
            b' "arguments": ' + arguments + b"}]}"
        )

    big = ResponsesTranslator(
        "openai", loads_exact(items(b'{"limit": 123456789012345678901234567890}')), CREATED
    )
    (call,) = big.request()["messages"][-1]["tool_calls"]
    assert call["function"]["arguments"] == '{"limit":123456789012345678901234567890}'
    for odd in (b"[1, 2]", b"5", b'"q"'):
        with pytest.raises(BadRequest, match=r"'input\[1\].arguments' must be an object"):
            ResponsesTranslator("openai", loads_exact(items(odd)), CREATED).request()


def test_a_tool_search_call_cut_by_the_output_limit_is_reported_incomplete_either_way() -> None:
    """Unlike a custom tool's call, a tool search's item has a status to say it was cut."""
    request = {"model": "m", "input": "go", "stream": True, "tools": [_SEARCH]}
    fn = {"name": "tool_search", "arguments": '{"query": "no'}
    call = {"index": 0, "id": "s1", "type": "function", "function": fn}
    tr = ResponsesTranslator("openai", request, CREATED)
    out = tr.events([_chunk({"tool_calls": [call]}), _chunk({}, "length")]) + tr.finish()
    (end,) = [i["data"] for i in parse(out) if i["data"]["type"] == "response.incomplete"]
    message = {"role": "assistant", "content": None, "tool_calls": [call]}
    answer = {
        "id": "x",
        "model": "m",
        "choices": [{"index": 0, "message": message, "finish_reason": "length"}],
    }
    whole = json.loads(
        ResponsesTranslator("openai", request, CREATED).body(
            200, "application/json", orjson.dumps(answer)
        )
    )
    for output in (end["response"]["output"], whole["output"]):
        assert [(o["type"], o["status"]) for o in output] == [("tool_search_call", "incomplete")]


def test_allowed_tools_may_name_the_tool_search_and_its_output_lists_callable_tools() -> None:
    allowed = {"type": "allowed_tools", "mode": "auto", "tools": [{"type": "tool_search"}]}
    request = {"model": "m", "input": "go", "tools": [_SEARCH, _SLEEP], "tool_choice": allowed}
    assert _offered_names(ResponsesTranslator("openai", request, CREATED).request()) == [
        "tool_search"
    ]
    found = [{"type": "web_search"}, {"type": "namespace", "name": "n", "tools": [_SLEEP]}]
    items = [
        {"role": "user", "content": "go"},
        {"type": "tool_search_call", "execution": "client", "call_id": "c", "arguments": {}},
        {"type": "tool_search_output", "execution": "client", "call_id": "c", "tools": found},
    ]
    tr = ResponsesTranslator("openai", {"model": "m", "input": items, "tools": [_SEARCH]}, CREATED)
    body = tr.request()
    assert body["messages"][-1]["content"] == "Tools found, now available to call:\n- n__sleep"
    assert _offered_names(body) == ["tool_search", "n__sleep"]


# --- server-side compaction (Codex's built-in provider: a `compaction_trigger` input item) ------


_TRIGGER = {
    "model": "m",
    "input": [{"role": "user", "content": "go"}, {"type": "compaction_trigger"}],
}


def _compaction_answer(text: Any, finish: str | None = None, fmt: str = "openai") -> bytes:
    """The upstream's whole answer to a compaction request, in its format."""
    if fmt == "anthropic":
        stop = {"length": "max_tokens", "content_filter": "refusal"}.get(finish or "", "end_turn")
        return orjson.dumps({
            "id": "msg_c", "type": "message", "role": "assistant", "model": "m",
            "content": [{"type": "text", "text": text}] if text else [], "stop_reason": stop,
            "usage": {"input_tokens": 1, "output_tokens": 1},
        })  # fmt: skip
    choice = {"index": 0, "message": {"role": "assistant", "content": text}}
    if finish is not None:
        choice["finish_reason"] = finish
    return orjson.dumps({"id": "c", "model": "m", "choices": [choice]})


@pytest.mark.parametrize("fmt", ["openai", "anthropic"])
def test_a_compaction_goes_round_as_the_summary_it_holds(fmt: str) -> None:
    """The summary the upstream wrote (a Chat Completions or a Messages upstream) comes back to
    the client as a compaction item; sent back in place of the conversation, it reaches the
    upstream as that summary."""
    tr = ResponsesTranslator(fmt, _TRIGGER, CREATED)
    assert json.dumps(tr.request()["messages"][-1]["content"]).startswith('"The conversation')
    answer = _compaction_answer("Wrote a.txt.", fmt=fmt)
    (item,) = json.loads(tr.body(200, "application/json", answer))["output"]
    assert item["type"] == "compaction"
    later = {"model": "m", "input": [item, {"role": "user", "content": "and now?"}]}
    body = ResponsesTranslator(fmt, later, CREATED).request()
    texts = json.dumps(body["messages"])
    assert "A summary of the earlier conversation, which it replaces:\\n\\nWrote a.txt." in texts
    assert "and now?" in texts


def test_a_compaction_without_a_summary_is_an_upstream_fault() -> None:
    with pytest.raises(UpstreamJSONError, match="no summary"):
        ResponsesTranslator("openai", _TRIGGER, CREATED).body(
            200, "application/json", _compaction_answer("")
        )
    tr = ResponsesTranslator("openai", {**_TRIGGER, "stream": True}, CREATED)
    out = (
        tr.events([_chunk({"content": ""}), _chunk({}, "stop"), b"data: [DONE]\n\n"]) + tr.finish()
    )
    (failed,) = [i["data"] for i in parse(out) if i["data"]["type"] == "response.failed"]
    assert failed["response"]["error"]["code"] == "server_error"


@pytest.mark.parametrize(
    ("content", "error", "message"),
    [
        ("gAAAAABopaque", Untranslatable, "'input[0].type=compaction (made by another provider)'"),
        (None, Untranslatable, "made by another provider"),
        ("api-router.compaction.v1.%%%", None, "'input[0].encrypted_content' is not a compaction"),
        ("api-router.compaction.v1.__8=", None, "'input[0].encrypted_content' is not a compaction"),
    ],
)
def test_a_compaction_the_router_did_not_make_is_refused(
    content: Any, error: Any, message: str
) -> None:
    from service.errors import BadRequest

    item = {"type": "compaction", "encrypted_content": content}
    with pytest.raises(error or BadRequest) as e:
        ResponsesTranslator("openai", {"model": "m", "input": [item]}, CREATED).request()
    assert message in e.value.message


def test_a_streamed_summary_without_a_finish_reason_still_comes_back() -> None:
    tr = ResponsesTranslator("openai", {**_TRIGGER, "stream": True}, CREATED)
    out = tr.events([_chunk({"content": "Did it."}), b"data: [DONE]\n\n"]) + tr.finish()
    (done,) = [i["data"] for i in parse(out) if i["data"]["type"] == "response.completed"]
    (item,) = done["response"]["output"]
    assert item["type"] == "compaction" and item["encrypted_content"].endswith("RGlkIGl0Lg==")


@pytest.mark.parametrize("finish", ["length", "content_filter"])
def test_a_summary_cut_short_is_never_handed_out(finish: str) -> None:
    """The client replaces its conversation with the compaction: half a summary would lose it."""
    tr = ResponsesTranslator("openai", {**_TRIGGER, "stream": True}, CREATED)
    out = tr.events([_chunk({"content": "Half a"}), _chunk({}, finish)]) + tr.finish()
    assert "response.output_item.added" not in _types(out)
    (failed,) = [i["data"] for i in parse(out) if i["data"]["type"] == "response.failed"]
    assert "cut short" in failed["response"]["error"]["message"]
    for fmt in ("openai", "anthropic"):  # (a Messages upstream's max_tokens / refusal too)
        with pytest.raises(UpstreamJSONError, match="cut short"):
            ResponsesTranslator(fmt, _TRIGGER, CREATED).body(
                200, "application/json", _compaction_answer("Half a", finish, fmt)
            )


def test_a_compaction_request_ignores_the_clients_format_and_tool_choice() -> None:
    fmt = {"format": {"type": "json_schema", "name": "o", "schema": {"type": "object"}}}
    allowed = {
        "type": "allowed_tools",
        "mode": "required",
        "tools": [{"type": "function", "name": "x"}],
    }
    payload = {**_TRIGGER, "text": fmt, "tool_choice": allowed, "tools": [_SLEEP]}
    body = ResponsesTranslator("openai", payload, CREATED).request()
    assert "response_format" not in body
    assert (body["tool_choice"], _offered_names(body)) == ("none", ["sleep"])


@pytest.mark.parametrize(
    ("choice", "message"),
    [
        ({"type": "function", "name": ["a"]}, "'tool_choice.name' must be a string"),
        (
            {
                "type": "allowed_tools",
                "mode": "auto",
                "tools": [{"type": "function", "name": ["a"]}],
            },
            "'tool_choice.tools[0].name' must be a string",
        ),
        (
            {"type": "allowed_tools", "mode": "auto", "tools": "a"},
            "'tool_choice.tools' must be an array",
        ),
    ],
)
def test_a_malformed_tool_choice_is_a_bad_request(choice: Any, message: str) -> None:
    """(An allowed tool named by a list was a TypeError: a 500.)"""
    from service.errors import BadRequest

    payload = {"model": "m", "input": "go", "tools": [_SLEEP], "tool_choice": choice}
    with pytest.raises(BadRequest) as e:
        ResponsesTranslator("openai", payload, CREATED).request()
    assert e.value.message == message


# --- settings changed mid-conversation (`configuration_update` input items) -------------------


def _updated(*updates: dict[str, Any], reasoning: Any = None) -> dict[str, Any]:
    """A conversation with `updates` as configuration_update items between its messages."""
    items: list[Any] = [{"type": "message", "role": "user", "content": "hi"}]
    for update in updates:
        items += [{"type": "configuration_update", **update}]
        items += [{"type": "message", "role": "user", "content": "go on"}]
    payload: dict[str, Any] = {"model": "m", "input": items}
    if reasoning is not None:
        payload["reasoning"] = reasoning
    return payload


@pytest.mark.parametrize("fmt", ["openai", "anthropic"])
def test_the_last_configuration_update_sets_the_effort_and_is_no_message(fmt: str) -> None:
    """(Codex 0.171, after its WebSocket attempts failed, sent one: a 400 on every translated
    profile.)"""
    payload = _updated(
        {"reasoning": {"effort": "high"}},
        {"reasoning": {"effort": "low"}},
        reasoning={"effort": "medium", "context": "all_turns"},
    )
    tr = ResponsesTranslator(fmt, payload, CREATED)
    body = tr.request()
    assert [m["content"] for m in body["messages"]] == ["hi", "go on", "go on"]
    items = [i for i in payload["input"] if i["type"] != "configuration_update"]
    alone = {**payload, "input": items, "reasoning": {"effort": "low"}}
    expected = ResponsesTranslator(fmt, alone, CREATED).request()  # as asked for the last's
    assert {k: v for k, v in body.items() if k != "messages"} == {
        k: v for k, v in expected.items() if k != "messages"
    }
    assert tr.dropped == []


def test_a_configuration_update_without_a_request_effort_still_applies() -> None:
    body = ResponsesTranslator("openai", _updated({"reasoning": {"effort": "xhigh"}}), CREATED)
    assert body.request()["reasoning_effort"] == "high"  # (xhigh: OpenAI's extreme)


def test_a_configuration_update_of_anything_else_is_dropped_and_refused_when_strict() -> None:
    payload = _updated({"text": {"verbosity": "high"}})
    tr = ResponsesTranslator("openai", payload, CREATED)
    assert "reasoning_effort" not in tr.request()
    assert tr.dropped == ["input.configuration_update"]
    strict = TranslationOptions(strict=True)
    with pytest.raises(Untranslatable, match=r"input\[1\]"):
        ResponsesTranslator("openai", payload, CREATED, strict).request()


def test_a_configuration_update_whose_reasoning_is_not_an_object_is_a_bad_request() -> None:
    from service.errors import BadRequest

    with pytest.raises(BadRequest, match=r"'input\[1\].reasoning' must be an object"):
        ResponsesTranslator("openai", _updated({"reasoning": "high"}), CREATED).request()


def test_configuration_updates_hold_later_over_earlier_setting_by_setting() -> None:
    payload = _updated(
        {"reasoning": {"effort": "high"}},
        {"reasoning": {"effort": "low"}},
        {"reasoning": {"context": "all_turns"}},  # (another setting: the effort stays)
    )
    body = ResponsesTranslator("openai", payload, CREATED).request()
    assert body["reasoning_effort"] == "low"


@pytest.mark.parametrize("stream", [False, True])
def test_the_answer_echoes_the_reasoning_a_configuration_update_set(stream: bool) -> None:
    """The response object says what the answer was made with: the last update's effort (the
    request's summary kept), not the request's own effort."""
    payload = _updated(
        {"reasoning": {"effort": "high"}}, reasoning={"effort": "low", "summary": "auto"}
    )
    tr = ResponsesTranslator("openai", payload, CREATED)
    tr.request()
    if stream:
        out = tr.events([_chunk({"content": "ok"}, "stop"), b"data: [DONE]\n\n"]) + tr.finish()
        events = [item["data"] for item in parse(out) if "data" in item]
        responses = [e["response"] for e in events if "response" in e]
        assert [r["status"] for r in responses] == ["in_progress", "in_progress", "completed"]
    else:
        message = {"role": "assistant", "content": "ok"}
        answer = {"id": "x", "model": "m", "choices": [{"index": 0, "message": message}]}
        responses = [json.loads(tr.body(200, "application/json", orjson.dumps(answer)))]
    for response in responses:
        assert response["reasoning"] == {"effort": "high", "summary": "auto"}
    assert payload["reasoning"] == {"effort": "low", "summary": "auto"}  # (the client's, as sent)
    plain = ResponsesTranslator("openai", {"model": "m", "input": "go", "reasoning": {}}, CREATED)
    plain.request()
    assert plain.echo is plain.payload  # (no update: the request itself)


def test_a_configuration_update_is_named_in_its_own_errors_and_refusals() -> None:
    from service.errors import BadRequest

    bad = _updated({"reasoning": {"effort": 3}})
    with pytest.raises(BadRequest, match=r"'input\[1\].reasoning.effort' must be a string"):
        ResponsesTranslator("openai", bad, CREATED).request()
    summary = _updated({"reasoning": {"effort": "low", "summary": "auto"}})
    tr = ResponsesTranslator("openai", summary, CREATED)
    assert (tr.request()["reasoning_effort"], tr.dropped) == ("low", ["reasoning.summary"])
    strict = TranslationOptions(strict=True)
    with pytest.raises(Untranslatable, match=r"input\[1\].reasoning.summary"):
        ResponsesTranslator("openai", summary, CREATED, strict).request()
