"""Server-Sent-Events framing and token usage, as pure functions over bytes (no I/O).

The SSE relay forwards upstream events byte for byte. `EventFramer` only finds where each event
ends (a blank line; any of the three SSE line endings `\\r\\n`, `\\n`, `\\r`; across arbitrary read
boundaries), so that the relay writes whole events and never puts a heartbeat inside one.
`UsageTracker` reads token usage from the few events that carry it (OpenAI usage chunks,
Anthropic `message_start` / `message_delta`, the Responses API's `response.completed`) and drops
the usage-only chunk the router asked for on the client's behalf. `ask_for_usage` is the request
side of that.
"""

from __future__ import annotations

import re
from typing import Any

import orjson

HEARTBEAT = b": heartbeat\n\n"
DONE = b"data: [DONE]\n\n"  # the OpenAI stream's last event (also what translators write)

# One event larger than this is not an LLM stream; the relay ends it as a stream error rather
# than hold an unbounded amount of memory for it.
MAX_EVENT_BYTES = 16 * 1024 * 1024

_EOL = re.compile(rb"\r\n|\r|\n")


class EventTooLarge(Exception):
    pass


def _split_lf(data: bytes) -> tuple[list[bytes], int]:
    """The complete events at the start of LF-only `data` that starts at an event's start, and
    where the incomplete rest begins."""
    events: list[bytes] = []
    n = len(data)
    pos = 0
    while pos < n:
        if data[pos] == 0x0A:
            events.append(data[pos : pos + 1])  # a blank line where an event would start
            pos += 1
            continue
        end = data.find(b"\n\n", pos)
        if end < 0:
            break
        events.append(data[pos : end + 2])
        pos = end + 2
    return events, pos


def split_events(joined: bytes) -> list[bytes]:
    """The events of `joined` (what `EventFramer.feed_joined` returns: complete events, LF)."""
    return _split_lf(joined)[0]


def plain_events(joined: bytes) -> bool:
    """True only when each event of `joined` (as `EventFramer.feed_joined` returns them) is one
    line, starting with `data:` and ending in `}`, or is `data: [DONE]` at the end: then no
    event of it is `malformed` (its shortcut accepts each), tested by a few scans of the whole
    bytes instead of one call per event. False says nothing: the caller tests each event.

    `joined` ends with LF LF (complete events). `data:` at the start and `m` times after an LF
    LF, and 2m + 2 LFs in all: every LF is in one of those pairs or in the last one, so there
    are m + 1 events, each one `data:` line. `}` before each of the m pairs and before the last
    one, or the last event is `data: [DONE]`. `joined` has no CR (`EventFramer.joinable`): a CR
    would end a line too. Three counts over the bytes, each ~1.5 us for a burst of 22 events
    (bench/README.md, "Relay per event")."""
    m = joined.count(b"\n\ndata:")
    return (
        joined.startswith(b"data:")
        and joined.count(b"\n") == 2 * m + 2
        and joined.count(b"}\n\ndata:") == m
        and (joined.endswith(b"}\n\n") or joined.endswith(b"\n" + DONE) or joined == DONE)
    )


class EventFramer:
    """Splits a byte stream into complete SSE events (each including its terminating blank line).

    Holds at most one incomplete event between calls.
    """

    __slots__ = ("_after_cr", "_cr_blank", "_held_cr", "_line_empty", "_pending", "max_event")

    def __init__(self, max_event: int = MAX_EVENT_BYTES) -> None:
        self._pending = bytearray()
        self._held_cr = False  # what is held may contain a CR (the general scanner held it)
        self._line_empty = True  # at the start of a line: the next line ending is a blank line
        self._after_cr = False  # the last byte was a CR that may pair with a leading LF
        self._cr_blank = False  # ...and that CR ended a blank line: its event went out already
        self.max_event = max_event

    @property
    def pending(self) -> int:
        """Bytes of the incomplete event held."""
        return len(self._pending)

    def feed(self, data: bytes) -> list[bytes]:
        if not self._after_cr and b"\r" not in data:
            pending = self._pending
            if not pending:
                return self._feed_lf(data)
            if not self._held_cr and data:
                # The held event ends at the first LF LF across the boundary; only the new
                # bytes are searched (a large event in many reads costs its size, once).
                if pending[-1] == 0x0A and data[0] == 0x0A:
                    end = 0  # the blank line is the first byte
                else:
                    end = data.find(b"\n\n") + 1  # the blank line's LF; 0: none yet
                    if end == 0:
                        self._hold(data)
                        return []
                pending += data[: end + 1]
                events = [bytes(pending)]
                pending.clear()
                if end + 1 < len(data):
                    return events + self._feed_lf(data[end + 1 :])
                self._line_empty = True
                return events
        return self._feed_any(data)

    def _feed_lf(self, data: bytes) -> list[bytes]:
        """`feed` for bytes with LF line endings only (what LLM APIs send) that start where an
        event starts (`feed` completes a held event first): the blank line that ends an event
        is its first LF LF, found by one `find` per event instead of a regex search per line.
        The same events and state as `_feed_any` (tests/unit/test_sse_framing.py compares the
        two on random streams cut at random places). A held event never starts with LF: at an
        event's start that is a blank line, an event of its own."""
        events, pos = _split_lf(data)
        self._rest_lf(data, pos)
        return events

    def _rest_lf(self, data: bytes, pos: int) -> None:
        if pos < len(data):
            self._hold(data[pos:])
        else:
            self._line_empty = True

    def joinable(self, data: bytes) -> bool:
        """`feed_joined` may take `data`: nothing is held and `data` has LF line ends only."""
        return not self._pending and not self._after_cr and b"\r" not in data

    def feed_joined(self, data: bytes) -> bytes:
        """`b"".join(self.feed(data))`, for `data` that `joinable` accepted, without cutting it
        into events: the complete events of LF-only bytes that start at an event's start end
        at the last LF LF (the events `_feed_lf` finds end there too, one after the other; the
        same state afterwards; tests/unit/test_sse_joined.py)."""
        end = data.rfind(b"\n\n") + 2
        if end == 1:  # no LF LF: not one event complete (a blank line is LF LF here too)
            if data[:1] == b"\n":  # ...except a lone LF, a blank line of its own
                self._rest_lf(data, 1)
                return data[:1]
            self._rest_lf(data, 0)  # all of it held (nothing read: at a line's start)
            return b""
        self._rest_lf(data, end)
        return data if end == len(data) else data[:end]

    def _hold(self, tail: bytes) -> None:
        """Keep `tail` (LF line ends only, not empty) as part of the incomplete event."""
        self._pending += tail
        self._line_empty = tail[-1] == 0x0A
        if len(self._pending) > self.max_event:
            raise EventTooLarge()

    def _feed_any(self, data: bytes) -> list[bytes]:
        events: list[bytes] = []
        n = len(data)
        pos = start = 0
        if self._after_cr and n:
            self._after_cr = False
            if data[0] == 0x0A:
                pos = 1  # the LF of a CRLF split across two reads: not a new line
                if self._cr_blank:  # ...whose CR ended an event, passed on at once: the LF
                    events.append(data[:1])  # alone (what a blank line at an event's start is)
                    start = 1
            self._cr_blank = False
        while True:
            m = _EOL.search(data, pos)
            if m is None:
                if pos < n:
                    self._line_empty = False
                break
            if m.start() > pos:
                self._line_empty = False
            end = m.end()
            self._after_cr = end == n and end - m.start() == 1 and data[m.start()] == 0x0D
            if self._line_empty:  # a blank line: the event is complete
                # A CR at the end of the read ends it too, at once: an LF that may follow it
                # (CRLF cut across two reads) is passed on alone then (the SSE meaning is the
                # same: a blank line at an event's start dispatches nothing).
                self._cr_blank = self._after_cr
                if self._pending:
                    self._pending += data[start:end]
                    events.append(bytes(self._pending))
                    self._pending.clear()
                    start = end
                else:
                    events.append(data[start:end])
                    start = end
            self._line_empty = True
            pos = end
        if start < n:
            self._pending += data[start:]
            self._held_cr = True  # (it may hold a CR: the fast path waits for its end)
            if len(self._pending) > self.max_event:
                raise EventTooLarge()
        elif not self._pending:
            self._held_cr = False
        return events

    def flush(self) -> bytes:
        """What is left when the upstream response ended (an unterminated last event)."""
        rest = bytes(self._pending)
        self._pending.clear()
        self._after_cr = self._cr_blank = self._held_cr = False
        return rest


def event_data(event: bytes) -> bytes:
    """The event's `data` field: its `data:` lines joined with LF (one leading space dropped).

    The usual event on LF line ends (no CR), whose only `data:` line is its last before the
    blank line (OpenAI's one line; Anthropic's `event:` line then the data line), is sliced
    without splitting it into lines: what a translated stream pays per event (bench/README.md,
    "Relay per event"). A data line starts the event or follows an LF, so the first found is the
    first; the next LF after it the last but one byte: what follows is one byte, a blank line or
    a one-byte line, not a data line. With no data line at all the data is empty, as when every
    line is looked at."""
    if b"\r" not in event:
        if event.startswith(b"data:"):
            start = 5
        else:
            start = event.find(b"\ndata:") + 6
            if start == 5:
                return b""  # no data line
        if event.find(b"\n", start) == len(event) - 2:
            value = event[start:-2]
            return value[1:] if value.startswith(b" ") else value
    parts = []
    for line in _EOL.split(event):
        if line.startswith(b"data:"):
            value = line[5:]
            parts.append(value[1:] if value.startswith(b" ") else value)
    return b"\n".join(parts)


def malformed(event: bytes) -> bool:
    """An event whose data starts a JSON object and does not end one: a chunk cut or garbled
    by the upstream (or a proxy before it). Relayed, it makes strict clients (the official SDKs
    parse every chunk) fail the whole answer, so the relay drops it, counts and logs it. A cheap
    test, no JSON parse: a data field that is not JSON-like at all (plain text) is relayed."""
    if event.endswith(b"}\n\n"):
        # The usual event, `data: {...}` on LF lines: when its last line is a data line that
        # ends the object (and no CR hides another line in it), its data ends with `}`.
        last = event.rfind(b"\n", 0, len(event) - 2) + 1
        if event.startswith(b"data:", last) and event.find(b"\r", last) < 0:
            return False
    i = event.find(b"data:")
    if i < 0:
        return False
    rest = event[i + 5 :].lstrip(b" ")
    if rest[:1] != b"{":
        return False
    return event_data(event).rstrip()[-1:] != b"}"


def ask_for_usage(payload: dict[str, Any]) -> bool:
    """Make an OpenAI-format streaming request ask for usage (`stream_options.include_usage`).

    Returns True when the router added the request, i.e. the client did not ask for usage and the
    extra usage-only chunk must be removed from what it receives.
    """
    opts = payload.get("stream_options")
    if opts is None:
        payload["stream_options"] = {"include_usage": True}
        return True
    if isinstance(opts, dict):
        if opts.get("include_usage") is True:
            return False
        payload["stream_options"] = {**opts, "include_usage": True}
        return True
    return False  # a value we do not understand: leave the client's request alone


# An event that names a finish reason (not `null`): read for the trace when tracing is on.
_FINISH_REASON = re.compile(rb'"finish_reason"\s*:\s*"')


def answer_facts(obj: Any, into: dict[str, Any]) -> dict[str, Any]:
    """The answer's id, model and finish reasons (`finish_reasons`) found in `obj`: a whole
    answer or one stream event, of any of the three formats; later values win."""
    if not isinstance(obj, dict):
        return into
    kind = obj.get("type")
    if kind == "message_start" and isinstance(obj.get("message"), dict):
        obj = obj["message"]
    elif isinstance(obj.get("response"), dict):  # a Responses API event
        obj = obj["response"]
    elif kind == "message_delta" and isinstance(obj.get("delta"), dict):
        obj = {"stop_reason": obj["delta"].get("stop_reason")}
    for key in ("id", "model"):
        if isinstance(obj.get(key), str):
            into[key] = obj[key]
    reasons: list[str] = []
    choices = obj.get("choices")
    if isinstance(choices, list):
        reasons = [
            c["finish_reason"]
            for c in choices
            if isinstance(c, dict) and isinstance(c.get("finish_reason"), str)
        ]
    elif isinstance(obj.get("stop_reason"), str):  # Anthropic
        reasons = [obj["stop_reason"]]
    elif obj.get("object") == "response" and isinstance(obj.get("status"), str):
        reasons = [obj["status"]]  # the Responses API: completed, incomplete, failed
    if reasons:
        into["finish_reasons"] = reasons
    return into


# The nested parts of a usage kept beside its counts (cached and reasoning tokens).
USAGE_DETAILS = frozenset(
    {
        "prompt_tokens_details",
        "completion_tokens_details",
        "input_tokens_details",
        "output_tokens_details",
    }
)

# The Responses API events that end a response and carry its usage.
RESPONSES_FINAL_EVENTS = frozenset({"response.completed", "response.incomplete", "response.failed"})


class UsageTracker:
    """Token usage seen in a stream's events; drops the usage-only chunk when told to. With
    `facts` (tracing on) it also keeps the answer's id, model and finish reasons, from the events
    it parses anyway and from those that name a finish reason."""

    __slots__ = ("facts", "final", "strip_usage_chunk", "usage")

    def __init__(self, strip_usage_chunk: bool = False, facts: bool = False) -> None:
        self.strip_usage_chunk = strip_usage_chunk
        self.usage: dict[str, Any] | None = None
        self.facts: dict[str, Any] | None = {} if facts else None
        # The usage seen is the answer's whole usage: it came in an event that closes it (an
        # OpenAI usage chunk, Anthropic's message_delta, a Responses final event), not only in
        # Anthropic's message_start (its input and a placeholder output count).
        self.final = False

    def kept(self, events: list[bytes]) -> list[bytes]:
        """The events the client gets, usage recorded: `events` itself when none names a usage
        (one search over them all; `"usage"` cannot span two events, each ends with a line
        end) and no trace reads the answer's facts."""
        if self.facts is not None:
            return [e for e in events if self.keep(e)]
        if not events or b'"usage"' not in (events[0] if len(events) == 1 else b"".join(events)):
            return events
        return [e for e in events if b'"usage"' not in e or self.keep(e)]

    def kept_joined(self, joined: bytes) -> bytes:
        """`b"".join(self.kept(split_events(joined)))` without tracing (`facts` None), cutting
        `joined` only around the events that name a usage. An event that holds `"usage"` is the
        one that begins after the last LF LF before it (a lone LF where the search starts, at
        the start or after a cut, is a blank line of its own) and ends at the first LF LF after
        it."""
        at = joined.find(b'"usage"')
        if at < 0:
            return joined
        parts: list[bytes] = []
        pos = 0  # what is before it is kept
        while at >= 0:
            start = joined.rfind(b"\n\n", pos, at) + 2
            if start == 1:
                start = pos + 1 if joined[pos : pos + 1] == b"\n" else pos
            end = joined.find(b"\n\n", at) + 2
            if not self.keep(joined[start:end]):
                parts.append(joined[pos:start])
                pos = end
            at = joined.find(b'"usage"', end)
        if not pos:
            return joined
        parts.append(joined[pos:])
        return b"".join(parts)

    def keep(self, event: bytes) -> bool:
        """Records any usage in `event`; False when the event must not reach the client."""
        if b'"usage"' not in event:  # cheap test: most events carry no usage
            if self.facts is not None and _FINISH_REASON.search(event):
                self._facts(event)
            return True
        try:
            parsed = orjson.loads(event_data(event))
        except orjson.JSONDecodeError:
            return True
        if not isinstance(parsed, dict):
            return True
        if self.facts is not None:
            answer_facts(parsed, self.facts)
        kind = parsed.get("type")
        if kind == "message_start":
            message = parsed.get("message")
            usage = message.get("usage") if isinstance(message, dict) else None
        elif kind in RESPONSES_FINAL_EVENTS:  # the Responses API: usage of the whole response
            response = parsed.get("response")
            usage = response.get("usage") if isinstance(response, dict) else None
        else:
            usage = parsed.get("usage")
        if not isinstance(usage, dict):
            return True
        counts: dict[str, Any] = {
            k: v
            for k, v in usage.items()
            if (isinstance(v, int) and not isinstance(v, bool))
            or (k in USAGE_DETAILS and isinstance(v, dict))
        }
        self.final = self.final or kind != "message_start"
        if self.usage is None:
            self.usage = counts
        else:
            # Anthropic's message_delta carries cumulative output_tokens: later values win.
            self.usage.update(counts)
        return not (self.strip_usage_chunk and parsed.get("choices") == [])

    def _facts(self, event: bytes) -> None:
        try:
            parsed = orjson.loads(event_data(event))
        except orjson.JSONDecodeError:
            return
        assert self.facts is not None
        answer_facts(parsed, self.facts)
