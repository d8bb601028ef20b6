"""A read's events kept as one piece (`_Pieces` with `may_join`): the same bytes, usage, malformed
count and framer state as cutting every read into events, whatever the events and the reads."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from service.proxy.events import (
    EventFramer,
    UsageTracker,
    malformed,
    plain_events,
    split_events,
)
from service.proxy.sse import _Pieces
from service.state import RequestState
from tests.unit.test_sse_framing import split_at

PLAIN = b'data: {"choices":[{"delta":{"content":"hi"}}]}\n\n'
USAGE_ONLY = b'data: {"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":5}}\n\n'
DONE = b"data: [DONE]\n\n"

EVENTS = [
    PLAIN,
    b'data: {"a":1}\n\n',
    b'data:{"a":2}\n\n',
    USAGE_ONLY,
    b'data: {"choices":[{"delta":{}}],"usage":{"prompt_tokens":1,"completion_tokens":2}}\n\n',
    b'data: {"type":"message_start","message":{"usage":{"input_tokens":7}}}\n\n',
    b'event: message_delta\ndata: {"type":"message_delta","usage":{"output_tokens":9}}\n\n',
    DONE,
    b"data: [DONE] \n\n",
    b'data: {"a":1} data: [DONE]\n\n',  # malformed, ends as [DONE] does
    b"\n",
    b'data: {"cut\n\n',  # malformed: dropped and counted
    b'data: {"usage": {"prompt_tokens": 2, "completion_tokens": 1}, "choices": [\n\n',  # both
    b": keep-alive\n\n",
    b'event: x\ndata: {"a":1}\n\n',
    b'data: {"a":\ndata: 1}\n\n',
    b'data: {"a":1}\nid: 4\n\n',  # the last line is not data: the slow test
    b"data: plain text\n\n",
    b'data: {"x":"}"} tail\n\n',
    b'data: {"usage": 1}\n\n',
    b'data: "usage"\n\n',
    b"id: 1\n\n",
    b'data: {"a":\nid: }\n\n',  # malformed: the data is cut, the last line ends with }
    b'x data: {"a"}\n\n',  # malformed: a `data:` that is not a field
]
line = st.binary(max_size=12).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b""))
event = st.one_of(
    st.sampled_from(EVENTS),
    st.lists(line.filter(bool), min_size=1, max_size=3).map(lambda ls: b"\n".join(ls) + b"\n\n"),
)


def pieces(join: bool, strip: bool) -> tuple[_Pieces, RequestState]:
    state = RequestState()
    p = _Pieces(UsageTracker(strip), None, state, 300.0, math.inf)
    assert p.may_join  # untranslated, untraced
    p.may_join = join
    return p, state


def relay(join: bool, strip: bool, chunks: list[bytes]) -> tuple[list[bytes], dict, int]:
    """What each read makes the client get, and the record after the stream."""
    p, state = pieces(join, strip)
    written = [b"".join(p.out(p.feed(c, 1.0))) for c in chunks]
    written.append(p.framer.flush())
    record = {"usage": p.usage.usage, "final": p.usage.final, "event_seen": p.last_event == 1.0}
    return written, record, state.malformed_events


@settings(max_examples=400, deadline=None)
@given(
    st.lists(event, max_size=12),
    st.lists(st.integers(0, 10_000), max_size=6),
    st.booleans(),
    st.sampled_from([b"", b"\r\n", b"data: {", b'data: {"usage":']),
)
def test_joined_reads_relay_what_cut_events_relay(
    events: list[bytes], cuts: list[int], strip: bool, tail: bytes
) -> None:
    chunks = split_at(b"".join(events) + tail, cuts)
    assert relay(True, strip, chunks) == relay(False, strip, chunks)


@settings(max_examples=300, deadline=None)
@given(st.lists(event, min_size=1, max_size=12))
def test_plain_events_are_never_malformed(events: list[bytes]) -> None:
    joined = b"".join(events)
    assert split_events(joined) == events
    if plain_events(joined):
        assert not any(map(malformed, events))


@given(st.lists(event, max_size=12), st.lists(st.integers(0, 10_000), max_size=6))
def test_feed_joined_is_feed_joined_up(events: list[bytes], cuts: list[int]) -> None:
    whole = b"".join(events)
    a, b = EventFramer(), EventFramer()
    for c in split_at(whole + b"data: {", cuts):
        if a.joinable(c):
            assert a.feed_joined(c) == b"".join(b.feed(c))
        else:
            assert a.feed(c) == b.feed(c)
        assert state(a) == state(b)
    assert a.flush() == b.flush()


def state(f: EventFramer) -> tuple[object, ...]:
    return tuple(getattr(f, name) for name in EventFramer.__slots__)


def test_feed_joined_keeps_the_framer_state() -> None:
    """The same state as `feed` after each read, also for an empty read after a flush (where
    the framer is not at a line's start until a read says so, as `feed` does)."""
    for reads, flush_first in (
        ([b"data: {", b"", b"\r\n"], [False, True, False]),
        ([b"\n", b"\nx", b"\n\n"], [False, False, False]),
        ([b"x\n\n\n", b"a", b""], [False, False, True]),
    ):
        a, b = EventFramer(), EventFramer()
        for c, flush in zip(reads, flush_first, strict=True):
            if flush:
                assert a.flush() == b.flush()
            got = a.feed_joined(c) if a.joinable(c) else b"".join(a.feed(c))
            assert got == b"".join(b.feed(c))
            assert state(a) == state(b)


def test_a_burst_stays_one_piece() -> None:
    """The bench's burst: 20 chunks, the finish chunk, the usage-only chunk the router asked
    for, [DONE], in one read: written as one piece, the usage chunk cut out, nothing split."""
    burst = PLAIN * 21 + USAGE_ONLY + DONE
    p, state = pieces(True, strip=True)
    events = p.feed(burst, 1.0)
    assert events == [burst]
    assert p.out(events) == [PLAIN * 21 + DONE]
    assert p.usage.usage == {"prompt_tokens": 3, "completion_tokens": 5} and p.usage.final
    assert state.malformed_events == 0
    p, _ = pieces(True, strip=False)  # the client asked for usage: the read itself goes out
    (out,) = p.out(p.feed(burst, 1.0))
    assert out is burst


def test_plain_events_test() -> None:
    assert plain_events(PLAIN * 3)
    assert plain_events(PLAIN + DONE) and plain_events(DONE)
    assert not plain_events(DONE + PLAIN)  # [DONE] only as the last event
    assert not plain_events(PLAIN + b"\n" + PLAIN)  # a blank line between
    assert not plain_events(b'event: x\ndata: {"a":1}\n\n')  # two lines
    assert not plain_events(b'data: {"cut\n\n')
    assert not plain_events(b": comment\n\n" + PLAIN)
    assert not plain_events(b"")


def test_blank_lines_around_a_usage_chunk_stay() -> None:
    """A blank line (an event of its own) before or after the usage-only chunk reaches the
    client; only the chunk is cut out. A read that starts with a blank line and holds the rest
    of an event: the blank line goes out at once."""
    for chunks in (
        [b"\n" + USAGE_ONLY + DONE],
        [PLAIN, b"\n" + USAGE_ONLY + b"\n" + USAGE_ONLY],
        [USAGE_ONLY + b"\n", b"\n" + USAGE_ONLY + b"\n"],
        [b"\ndata: {", b'"a":1}\n\n'],
        [b"\ndata: {", b'"cut\n\n' + PLAIN],
    ):
        assert relay(True, True, chunks) == relay(False, True, chunks)
    p, _ = pieces(True, strip=True)
    assert b"".join(p.out(p.feed(b"\n" + USAGE_ONLY + b"\n", 1.0))) == b"\n\n"
    assert p.out(p.feed(b"\ndata: {", 1.0)) == [b"\n"] and p.framer.pending == 7
