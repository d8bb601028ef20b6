"""SSE stream items of the conformance cases (tests/conformance/*/stream_*.json) to bytes and
back: what the relay's framer hands a translator, and what a translator must write."""

from __future__ import annotations

from typing import Any

import orjson

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
