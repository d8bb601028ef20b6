"""SSE framing, usage extraction and the streaming multipart rewrite: pure functions, properties."""

from __future__ import annotations

import json
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service.errors import BadRequest
from service.proxy import sse as sse_mod
from service.proxy.events import (
    EventFramer,
    EventTooLarge,
    UsageTracker,
    ask_for_usage,
    event_data,
    malformed,
)
from service.proxy.multipart import ModelPartRewriter, boundary_of, rewrite_body
from service.proxy.sse import ends_answer, ends_stream


def split_at(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    out, prev = [], 0
    for p in points:
        out.append(data[prev:p])
        prev = p
    out.append(data[prev:])
    return out


def frame(pieces: list[bytes]) -> tuple[list[bytes], bytes]:
    f = EventFramer()
    events = []
    for p in pieces:
        events += f.feed(p)
    return events, f.flush()


line = st.binary(max_size=20).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b""))
eol = st.sampled_from([b"\n", b"\r\n", b"\r"])


@st.composite
def sse_streams(draw: st.DrawFn) -> tuple[bytes, list[bytes]]:
    events = []
    for _ in range(draw(st.integers(0, 6))):
        lines = draw(st.lists(line.filter(bool), min_size=1, max_size=4))
        ends = [draw(eol) for _ in lines]
        body = b"".join(ln + e for ln, e in zip(lines, ends, strict=True))
        blank = draw(eol)
        if ends[-1] == b"\r" and blank == b"\n":
            blank = b"\r"  # CR then LF would be one line ending, not a blank line
        events.append(body + blank)
    return b"".join(events), events


@given(sse_streams(), st.lists(st.integers(0, 10_000), max_size=8))
def test_framer_finds_every_event_whatever_the_read_boundaries(
    stream: tuple[bytes, list[bytes]], cuts: list[int]
) -> None:
    data, expected = stream
    events, rest = frame(split_at(data, cuts))
    assert b"".join(events) + rest == data  # byte-exact, nothing lost or added
    assert rest == b""  # every event ends with its blank line: none is held at the end
    # An event whose blank line is CRLF cut between its CR and LF goes out at the CR; the LF
    # comes after it alone (a blank line, which dispatches nothing).
    merged: list[bytes] = []
    for e in events:
        if e == b"\n" and merged and merged[-1].endswith(b"\r"):
            merged[-1] += e
        else:
            merged.append(e)
    assert merged == expected


def test_an_event_ended_by_a_cr_at_the_end_of_a_read_goes_out_at_once() -> None:
    # A CR-only stream: each event's blank line is its last byte. Before, it waited for the
    # next read (a possible LF), so every event of a paced CR stream came one event late.
    f = EventFramer()
    assert f.feed(b"data: one\r\r") == [b"data: one\r\r"]
    assert f.feed(b"data: two\r\r") == [b"data: two\r\r"]
    # CRLF cut between the blank line's CR and LF: the event at the CR, then the LF alone,
    # and the next event starts clean.
    assert f.feed(b"data: three\r\n\r") == [b"data: three\r\n\r"]
    assert f.feed(b"\ndata: four\r\n\r\n") == [b"\n", b"data: four\r\n\r\n"]
    # A CR ending a data line (not a blank line) at a read's end still pairs with the LF after it.
    assert f.feed(b"data: five\r") == []
    assert f.feed(b"\n\n") == [b"data: five\r\n\n"]
    assert f.flush() == b""


class RegexOnlyFramer(EventFramer):
    """The framer without its LF-only fast path: every read through the general scanner."""

    __slots__ = ()

    def feed(self, data: bytes) -> list[bytes]:
        return self._feed_any(data)


def framer_state(f: EventFramer) -> tuple[object, ...]:
    return (f.pending, f._line_empty, f._after_cr, f._cr_blank)


# Raw bytes rich in line ends, blank lines, `data: {` and `}`: what the two framers must agree on.
sse_bytes = st.lists(
    st.sampled_from([b"\n", b"\n\n", b"\r", b"\r\n", b"data: {", b"}", b"x", b": c", b"data:"]),
    max_size=40,
).map(b"".join)


@settings(max_examples=400)
@given(sse_bytes, st.lists(st.integers(0, 10_000), max_size=12))
def test_the_lf_fast_path_frames_exactly_as_the_general_scanner(
    data: bytes, cuts: list[int]
) -> None:
    fast, reference = EventFramer(), RegexOnlyFramer()
    for piece in split_at(data, cuts):
        assert fast.feed(piece) == reference.feed(piece)
        assert framer_state(fast) == framer_state(reference)
    assert fast.flush() == reference.flush()


class FastOnlyFramer(EventFramer):
    """Fails if a read goes to the general scanner."""

    __slots__ = ()

    def _feed_any(self, data: bytes) -> list[bytes]:
        raise AssertionError("the general scanner was used")


def test_the_lf_fast_path_is_taken_for_lf_streams() -> None:
    f = FastOnlyFramer()
    assert f.feed(b"data: {}\n\ndata: {") == [b"data: {}\n\n"]
    assert f.feed(b"}\n") == []
    assert f.feed(b"\n\n") == [b"data: {}\n\n", b"\n"]
    # A large event in many reads: each read is searched alone, the event comes out whole.
    big = b"data: " + b"x" * 100_000 + b"\n\n"
    pieces = [big[i : i + 1000] for i in range(0, len(big), 1000)]
    assert [e for p in pieces for e in f.feed(p)] == [big]


def slow_malformed(event: bytes) -> bool:
    """The definition of `malformed`, without its shortcut for the usual event."""
    i = event.find(b"data:")
    if i < 0:
        return False
    if event[i + 5 :].lstrip(b" ")[:1] != b"{":
        return False
    return event_data(event).rstrip()[-1:] != b"}"


@given(sse_bytes)
def test_malformed_shortcut_agrees_with_its_definition(event: bytes) -> None:
    assert malformed(event) == slow_malformed(event)
    assert malformed(event + b"}\n\n") == slow_malformed(event + b"}\n\n")


def slow_event_data(event: bytes) -> bytes:
    """The definition of `event_data`, without its shortcut for a one-line event."""
    parts = []
    for ln in re.split(rb"\r\n|\r|\n", event):
        if ln.startswith(b"data:"):
            value = ln[5:]
            parts.append(value[1:] if value.startswith(b" ") else value)
    return b"\n".join(parts)


@given(
    st.sampled_from(
        [
            b"data:",
            b"data: ",
            b"data:  ",
            b"event: x\ndata: ",
            b"event: x\nid: 2\ndata:",
            b"data: a\ndata: ",
            b"event: x\ndata: a\ndata:",
            b": c\n",
            b"event: x\n",
            b"",
            b"id: 1\r\ndata:",
        ]
    ),
    st.binary(max_size=12),
    st.sampled_from([b"\n\n", b"\n", b"\r\n\r\n", b"\n\r\n", b"", b"\r\r"]),
)
def test_event_data_shortcut_agrees_with_its_definition(
    head: bytes, value: bytes, end: bytes
) -> None:
    event = head + value + end
    assert event_data(event) == slow_event_data(event)


def test_event_data() -> None:
    assert event_data(b'data: {"a": 1}\n\n') == b'{"a": 1}'
    assert event_data(b"data:x\n\n") == b"x"
    assert event_data(b"data: a\ndata: b\n\n") == b"a\nb"
    assert event_data(b"data: a\rb\n\n") == b"a"  # a CR ends the line
    assert event_data(b"event: e\ndata:  two\n\n") == b" two"
    assert event_data(b"event: e\ndata: a\ndata: b\n\n") == b"a\nb"
    assert event_data(b"event: e\n\n") == b"" and event_data(b"\n") == b""


def test_malformed_events() -> None:
    assert not malformed(b'data: {"a": 1}\n\n')
    assert malformed(b'data: {"a": 1\n\n')
    assert malformed(b'data: {"a":\rid: }\n\n')  # the last line is `id`, the data is cut
    assert not malformed(b"data: plain text\n\n")


def test_usage_tracker_passes_events_without_usage_through_as_they_are() -> None:
    events = [b'data: {"choices": []}\n\n', b"data: [DONE]\n\n"]
    u = UsageTracker(strip_usage_chunk=True)
    assert u.kept(events) is events
    chunk = b'data: {"choices": [], "usage": {"prompt_tokens": 3}}\n\n'
    assert u.kept([events[0], chunk, events[1]]) == events
    assert u.usage == {"prompt_tokens": 3}


def test_framer_holds_an_incomplete_event_and_flushes_it_at_the_end() -> None:
    f = EventFramer()
    assert f.feed(b"data: a\n\ndata: hel") == [b"data: a\n\n"]
    assert f.pending == len(b"data: hel")
    assert f.feed(b"lo\n") == []
    assert f.feed(b"\n: c\n") == [b"data: hello\n\n"]
    assert f.flush() == b": c\n"


def test_crlf_split_across_reads_is_one_line_ending() -> None:
    f = EventFramer()
    assert f.feed(b"data: a\r") == []
    assert f.feed(b"\n") == []  # the LF completes the CRLF; still inside the event
    assert f.feed(b"\r\n") == [b"data: a\r\n\r\n"]


def test_an_event_over_the_limit_is_refused() -> None:
    f = EventFramer(max_event=100)
    f.feed(b"data: " + b"x" * 90)
    with pytest.raises(EventTooLarge):
        f.feed(b"x" * 20)


def test_event_data_joins_data_lines() -> None:
    assert event_data(b'event: x\ndata: {"a":\ndata:1}\n\n') == b'{"a":\n1}'
    assert event_data(b": comment\n\n") == b""


def test_ask_for_usage_only_when_the_client_did_not() -> None:
    p: dict = {"stream": True}
    assert ask_for_usage(p) is True
    assert p["stream_options"] == {"include_usage": True}
    p = {"stream_options": {"include_usage": True}}
    assert ask_for_usage(p) is False
    p = {"stream_options": {"include_usage": False, "other": 1}}
    assert ask_for_usage(p) is True
    assert p["stream_options"] == {"include_usage": True, "other": 1}
    p = {"stream_options": "weird"}
    assert ask_for_usage(p) is False and p["stream_options"] == "weird"


def _chunk(data: dict) -> bytes:
    return b"data: " + json.dumps(data).encode() + b"\n\n"


def test_usage_chunk_is_read_and_dropped_only_when_the_router_asked() -> None:
    usage_chunk = _chunk({"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 2}})
    content = _chunk({"choices": [{"delta": {"content": "hi"}}], "usage": None})
    t = UsageTracker(strip_usage_chunk=True)
    assert t.keep(content) is True
    assert t.keep(usage_chunk) is False
    assert t.usage == {"prompt_tokens": 5, "completion_tokens": 2}
    t = UsageTracker(strip_usage_chunk=False)
    assert t.keep(usage_chunk) is True
    assert t.usage == {"prompt_tokens": 5, "completion_tokens": 2}
    assert t.keep(b"data: [DONE]\n\n") is True


def test_anthropic_usage_from_message_start_and_delta() -> None:
    t = UsageTracker()
    start = {"type": "message_start", "message": {"usage": {"input_tokens": 9, "output_tokens": 1}}}
    delta = {"type": "message_delta", "delta": {}, "usage": {"output_tokens": 4}}
    assert t.keep(b"event: message_start\n" + _chunk(start))
    assert t.keep(b"event: message_delta\n" + _chunk(delta))
    assert t.usage == {"input_tokens": 9, "output_tokens": 4}


# -- multipart ---------------------------------------------------------------------------------

BOUNDARY = b"----b0und4ry"


def form(parts: list[tuple[str, bytes]], boundary: bytes = BOUNDARY) -> bytes:
    out = b""
    for name, value in parts:
        extra = '; filename="a.wav"' if name == "file" else ""
        out += b"--" + boundary + b"\r\n"
        out += f'Content-Disposition: form-data; name="{name}"{extra}\r\n\r\n'.encode()
        out += value + b"\r\n"
    return out + b"--" + boundary + b"--\r\n"


values = st.binary(max_size=60).filter(lambda b: BOUNDARY not in b)


@given(
    st.lists(st.sampled_from(["file", "language", "prompt"]), max_size=3),
    values,
    st.sampled_from(["whisper-1", "other"]),
    st.integers(0, 3),
    st.lists(st.integers(0, 10_000), max_size=10),
)
def test_streaming_rewrite_equals_whole_body_rewrite(
    names: list[str], value: bytes, model: str, at: int, cuts: list[int]
) -> None:
    parts = [(n, value) for n in names]
    parts.insert(min(at, len(parts)), ("model", model.encode()))
    body = form(parts)
    mapping = {"whisper-1": "up-whisper"}
    rw = ModelPartRewriter(BOUNDARY, mapping)
    out = b"".join(rw.feed(p) for p in split_at(body, cuts)) + rw.finish()
    expected_model = "up-whisper" if model == "whisper-1" else model
    assert out == form([(n, expected_model.encode() if n == "model" else v) for n, v in parts])
    assert rw.model == model and rw.upstream_model == expected_model
    assert len(out) == len(body) + rw.delta
    same, _ = rewrite_body(body, BOUNDARY, {})
    assert same == body


def test_multipart_holds_nothing_of_a_file_part_beyond_a_delimiter() -> None:
    rw = ModelPartRewriter(BOUNDARY, {"m": "n"})
    head = b"--" + BOUNDARY + b'\r\nContent-Disposition: form-data; name="file"\r\n\r\n'
    assert rw.feed(head) == head
    big = b"\0" * 100_000
    out = rw.feed(big)
    assert len(out) >= len(big) - len(BOUNDARY) - 4  # only a delimiter-sized tail is held


def test_multipart_errors() -> None:
    with pytest.raises(BadRequest):
        boundary_of("application/json")
    with pytest.raises(BadRequest):
        boundary_of("multipart/form-data")
    with pytest.raises(BadRequest):
        rewrite_body(b"not multipart at all", BOUNDARY, {})
    with pytest.raises(BadRequest):
        rewrite_body(b"", BOUNDARY, {})
    assert boundary_of('multipart/form-data; boundary="abc"') == b"abc"


@pytest.mark.parametrize("whole", [True, False], ids=["in-one-piece", "byte-pieces-of-64k"])
@pytest.mark.parametrize("item", ["preamble", "part-head", "model-value"])
def test_multipart_item_limits_hold_however_the_body_arrives(item: str, whole: bool) -> None:
    """docs/security.md: preamble 64 KiB, part head 16 KiB, model value 64 KiB, past them 400.
    An item that arrived whole with its end in one piece went through before (the limit was
    only checked while waiting for the end)."""
    from service.proxy.multipart import MAX_MODEL_VALUE, MAX_PART_HEAD, MAX_PREAMBLE

    dash = b"--" + BOUNDARY
    if item == "preamble":
        body = b"x" * (MAX_PREAMBLE + 10) + b"\r\n" + form([("model", b"whisper-1")])
    elif item == "part-head":
        pad = b"X-Pad: " + b"p" * MAX_PART_HEAD + b"\r\n"
        body = dash + b'\r\nContent-Disposition: form-data; name="f"\r\n' + pad + b"\r\nv\r\n"
        body += dash + b"--\r\n"
    else:
        body = form([("model", b"m" * (MAX_MODEL_VALUE + 10))])
    rw = ModelPartRewriter(BOUNDARY, {})
    pieces = [body] if whole else [body[i : i + 65536] for i in range(0, len(body), 65536)]
    with pytest.raises(BadRequest, match=r"too large|does not use the declared boundary"):
        for piece in pieces:
            rw.feed(piece)
        rw.finish()


@pytest.mark.parametrize(
    ("piece", "last"),
    [
        (b"data: [DONE]\n\n", True),
        (b'data: {"a":1}\n\ndata: [DONE]\n\n', True),
        (b'event: message_delta\ndata: {}\n\nevent: message_stop\ndata: {}\n\n',
         True),
        (b'event: response.completed\ndata: {}\n\n', True),
        (b'event: response.incomplete\ndata: {}\n\n', True),
        (b'event: response.failed\ndata: {}\n\n', True),
        (b'data: {"a":1}\n\n', False),
        (b"data: [DONE]\n\ndata: {}\n\n", False),  # something after it: not the end
        # as upstreams may frame them: CRLF, no space after the colon
        (b'data: {"a":1}\r\n\r\ndata: [DONE]\r\n\r\n', True),
        (b"data:[DONE]\n\n", True),
        (b"event:message_stop\ndata:{}\n\n", True),
        (b"event: message_stop\r\ndata: {}\r\n\r\n", True),
        (b"data: [DONE]\r\n\r\ndata: {}\r\n\r\n", False),
        (b"event: message_start\ndata: {}\n\n", False),
        (b": heartbeat\n\n", False),
        # the LF of the previous event's CRLF, cut at its CR, passed on first (EventFramer)
        (b"\ndata: [DONE]\r\n\r\n", True),
        (b"\nevent: message_stop\r\ndata: {}\r\n\r\n", True),
        # CR alone (SSE allows it): the last event is the one after the last blank line
        (b'data: {"a":1}\r\rdata: [DONE]\r\r', True),
        (b"event: message_delta\rdata: {}\r\revent: message_stop\rdata: {}\r\r", True),
        (b"data: [DONE]\r\rdata: {}\r\r", False),
        (b"event: message_stop\rdata: {}\r\revent: ping\rdata: {}\r\r", False),
    ],
)  # fmt: skip
def test_ends_answer_knows_each_protocol_s_last_event(piece: bytes, last: bool) -> None:
    """What marks a stream's answer as delivered (a client that closes after it got its
    answer: 200, not 499)."""
    assert ends_answer(piece) is last


def _ends_answer_full_scans(piece: bytes) -> bool:
    """`ends_answer` as first written: each framing's last blank line searched over the whole
    piece."""
    end = len(piece) - 2
    lf, crlf = piece.rfind(b"\n\n", 0, end), piece.rfind(b"\n\r\n", 0, end)
    cr = piece.rfind(b"\r\r", 0, end)
    start = max(lf + 2 if lf >= 0 else 0, crlf + 3 if crlf >= 0 else 0, cr + 2 if cr >= 0 else 0)
    if start == 0 and piece[:1] == b"\n":
        start = 1
    return piece.startswith(sse_mod._LAST_EVENTS, start)


last_lines = st.sampled_from([b"data: [DONE]", b"event: message_stop", b"data: {}", b": ping"])


@given(
    st.lists(st.tuples(st.one_of(line, last_lines), eol, st.booleans()), min_size=0, max_size=8),
    st.integers(0, 3),
)
def test_ends_answer_scans_less_and_answers_the_same(
    parts: list[tuple[bytes, bytes, bool]], lead: int
) -> None:
    """Each framing's search starts where the previous one found its blank line: the same
    answer as searching the whole piece each time, on pieces of mixed framing."""
    piece = b"\n" * (lead == 1) + b"".join(ln + e + (e if blank else b"") for ln, e, blank in parts)
    assert ends_answer(piece) is _ends_answer_full_scans(piece)


@pytest.mark.parametrize(
    ("tail", "ended"),
    [
        (b'event: message_stop\ndata: {}\n\n', True),
        (b'event: message_delta\ndata: {}\n\nevent: message_stop\ndata: {}\n\n', True),
        (b'event: message_stop\ndata: {}\n', True),  # without the blank line after it
        (b'id: 42\nevent: message_stop\ndata: {}\n\n', True),  # another field first
        (b'data: {}\nevent:response.completed\n\n', True),
        (b'event: response.failed\r\ndata: {}\r\n\r\n', True),
        (b'data: one\r\revent: response.incomplete\rdata: {}\r\r', True),  # CR framing
        (b'event: error\ndata: {"type":"error"}\n\n', True),  # the upstream's own error
        (b"data: [DONE]\n\n", True),
        (b'event: content_block_delta\ndata: {}\n\n', False),
        (b'event: message_stop\ndata: {}\n\nevent: ping\ndata: {}\n\n', False),
        (b'data: {"type": "message_stop"}\n\n', False),  # a name in data is not the event
        (b"", False),
    ],
)  # fmt: skip
def test_ends_stream_reads_the_last_event_whatever_its_framing(tail: bytes, ended: bool) -> None:
    """What a relayed Messages or Responses stream must end with (else the relay ends it with
    an error event): its last event or an error event, with any field order and framing."""
    assert ends_stream(tail) is ended
