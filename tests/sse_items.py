"""SSE stream items of the conformance cases (tests/conformance/*/stream_*.json) to bytes and
back: what the relay's framer hands a translator, and what a translator must write."""

from __future__ import annotations

import itertools
import json
from typing import Any

import orjson
from hypothesis import strategies as st

from service.proxy.events import EventFramer
from service.translate.common import event_json


def render(items: list[dict[str, Any]]) -> list[bytes]:
    """Stream items of a case file as SSE events (what the relay's framer hands over)."""
    out = []
    for item in items:
        if "comment" in item:
            out.append(b":" + item["comment"].encode() + b"\n\n")
            continue
        data = item["data"]
        payload = data.encode() if isinstance(data, str) else orjson.dumps(data)
        head = b"event: " + item["event"].encode() + b"\n" if item.get("event") else b""
        out.append(head + b"data: " + payload + b"\n\n")
    return out


def parse(events: list[bytes]) -> list[dict[str, Any]]:
    """The translator's output as stream items; each must be one well-formed SSE event."""
    items: list[dict[str, Any]] = []
    for ev in events:
        assert ev.endswith(b"\n\n") and b"\n\n" not in ev[:-2], ev
        lines = ev[:-2].split(b"\n")
        if all(line.startswith(b":") for line in lines):
            items.append({"comment": b"\n".join(line[1:] for line in lines).decode()})
            continue
        item: dict[str, Any] = {}
        for line in lines:
            name, _, value = line.partition(b": ")
            assert name in (b"event", b"data"), ev
            if name == b"event":
                item["event"] = value.decode()
        data = event_json(ev)
        item["data"] = data.decode() if isinstance(data, bytes) else data
        items.append(item)
    return items


def translate_cut(tr: Any, raw: bytes, cuts: list[int]) -> list[bytes]:
    """`raw` upstream bytes read in pieces cut at `cuts`, framed into events as the relay does,
    through the translator `tr`: everything it writes, `finish()` included."""
    framer = EventFramer()
    out: list[bytes] = []
    pos = 0
    for cut in sorted(set(cuts)):
        out += tr.events(framer.feed(raw[pos:cut]))
        pos = max(pos, cut)
    out += tr.events(framer.feed(raw[pos:]))
    assert framer.flush() == b""
    return out + tr.finish()


def strings_among(value: Any, wanted: tuple[str, ...]) -> list[str]:
    """Every string in a JSON value (depth first, in order) that is exactly one of `wanted`:
    the text pieces a stream item carries."""
    if isinstance(value, str):
        return [value] if value in wanted else []
    if isinstance(value, dict):
        return [s for v in value.values() for s in strings_among(v, wanted)]
    if isinstance(value, list):
        return [s for v in value for s in strings_among(v, wanted)]
    return []


# Tool arguments with braces and quotes inside strings: a prefix may end in "}" and not be whole.
ARGUMENTS = st.dictionaries(
    st.text(alphabet='ab{}"', max_size=3),
    st.one_of(st.integers(), st.text(alphabet='{}[]" ,:a\\', max_size=6), st.lists(st.integers())),
    max_size=3,
).map(json.dumps)
ORDERS = st.lists(st.integers(min_value=0, max_value=2), max_size=24)
CUTS = st.lists(
    st.lists(st.integers(min_value=0, max_value=80), max_size=5), min_size=3, max_size=3
)


def first_appearance(items: list[dict[str, Any]]) -> list[int]:
    """The tool call indexes of `parallel_call_chunks`' items, in the order each began."""
    seen: list[int] = []
    for item in items:
        data = item["data"]
        for call in data["choices"][0]["delta"].get("tool_calls", []) if data != "[DONE]" else []:
            if call["index"] not in seen:
                seen.append(call["index"])
    return seen


def parallel_call_chunks(
    args: list[str], order: list[int], cuts: list[list[int]], model: str = "m"
) -> list[dict[str, Any]]:
    """Chat Completions stream items of parallel tool calls (`call_<i>` named `tool_<i>`, whose
    arguments are `args[i]`, not empty) cut at `cuts[i]`: the pieces go out in `order` (call
    indexes; each call's own pieces in their order, its first one with its id and name), then
    whatever `order` left out, then finish_reason tool_calls and [DONE]. What a Chat server that
    interleaves parallel calls sends."""
    pieces: list[list[str]] = []
    for text, at in zip(args, cuts, strict=True):
        bounds = [0, *sorted({c % (len(text) + 1) for c in at}), len(text)]
        pieces.append([text[a:b] for a, b in itertools.pairwise(bounds) if b > a])
    sent = [0] * len(args)
    items: list[dict[str, Any]] = []

    def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        choice = {"index": 0, "delta": delta, "finish_reason": finish}
        return {"data": {"id": "c", "object": "chat.completion.chunk", "created": 1,
                         "model": model, "choices": [choice]}}  # fmt: skip

    rest = [i for i, p in enumerate(pieces) for _ in p]
    for i in [i for i in order if i < len(args)] + rest:
        if sent[i] == len(pieces[i]):
            continue
        call: dict[str, Any] = {"index": i, "function": {"arguments": pieces[i][sent[i]]}}
        if sent[i] == 0:
            call.update(id=f"call_{i}", type="function")
            call["function"]["name"] = f"tool_{i}"
        sent[i] += 1
        items.append(chunk({"tool_calls": [call]}))
    items.append(chunk({}, "tool_calls"))
    items.append({"data": "[DONE]"})
    return items


# Text and reasoning deltas to put among a stream's chunks: (where, field, text)
INSERTS = st.lists(
    st.tuples(
        st.integers(min_value=0, max_value=40),
        st.sampled_from(["content", "reasoning_content"]),
        st.text(alphabet="ab \n", min_size=1, max_size=4),
    ),
    max_size=4,
)


def with_text(
    items: list[dict[str, Any]], inserts: list[tuple[int, str, str]]
) -> list[dict[str, Any]]:
    """`items` (of `parallel_call_chunks`) with a chunk of text or reasoning put in before the
    chunk at each `where` (among those before the finish): what a Chat server may send between
    a call's name and its arguments (a newline, the model's thinking)."""
    out = list(items[:-2])
    for where, field, text in sorted(inserts, key=lambda x: x[0], reverse=True):
        choice = {"index": 0, "delta": {field: text}, "finish_reason": None}
        chunk = {"data": {"id": "c", "object": "chat.completion.chunk", "created": 1,
                          "model": "m", "choices": [choice]}}  # fmt: skip
        out.insert(where % (len(out) + 1), chunk)
    return out + items[-2:]


def inserted(items: list[dict[str, Any]], field: str) -> str:
    """The text of `field` in `items`' deltas, joined in order."""
    return "".join(
        d.get(field, "")
        for i in items
        if isinstance(i.get("data"), dict)
        for d in [i["data"]["choices"][0]["delta"]]
    )
