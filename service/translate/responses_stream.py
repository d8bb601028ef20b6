"""Chat Completions chunks in, the OpenAI Responses stream event sequence out (pure; no I/O).

Fed one complete upstream SSE event at a time; nothing is held back except a custom tool call's
input while its JSON prefix (`{"input": "`) is incomplete, and an escape sequence cut in two.
"""

from __future__ import annotations

import re
from typing import Any

import orjson

from .common import (
    MALFORMED,
    NO_ARGUMENTS,
    BadUpstreamEvent,
    CallPositions,
    StreamTranslator,
    WholeArguments,
    sse,
)
from .responses_output import (
    base_id,
    compaction_item,
    compaction_problem,
    error_code,
    error_json,
    finish_status,
    item_id,
    reasoning_text,
    response_object,
    stream_error,
    text_part,
    tool_item,
    usage,
)
from .responses_request import ClientTools

CUT_MESSAGE = "The upstream stream ended before the response was complete"

# Content part kinds: (item type, empty part, delta event, done event, done field).
_PARTS: dict[str, tuple[str, dict[str, Any], str, str, str]] = {
    "output_text": (
        "message",
        text_part(""),
        "response.output_text.delta",
        "response.output_text.done",
        "text",
    ),
    "refusal": (
        "message",
        {"type": "refusal", "refusal": ""},
        "response.refusal.delta",
        "response.refusal.done",
        "refusal",
    ),
    "reasoning_text": (
        "reasoning",
        {"type": "reasoning_text", "text": ""},
        "response.reasoning_text.delta",
        "response.reasoning_text.done",
        "text",
    ),
}


class _Text:
    """An open message or reasoning item and its open content part."""

    __slots__ = ("id", "index", "kind", "part", "parts", "texts")

    def __init__(self, kind: str, index: int, id_: str) -> None:
        self.kind = kind  # message | reasoning
        self.index = index
        self.id = id_
        self.parts: list[dict[str, Any]] = []  # finished content parts
        self.part: str | None = None  # kind of the open part
        self.texts: list[str] = []  # the open part's text so far


class _Call:
    """One tool call of the upstream (by its Chat tool_calls index)."""

    __slots__ = (
        "args",
        "call_id",
        "custom",
        "decoder",
        "extra",
        "index",
        "name",
        "pending",
        "search",
        "state",
        "whole",
    )

    def __init__(self) -> None:
        self.call_id: str | None = None
        self.extra: Any = None  # its `extra_content`, carried in the id (common.carrying_id)
        self.name = ""
        self.args: list[str] = []
        self.whole = WholeArguments()  # whether `args` add up to one JSON value yet
        self.pending: list[str] = []  # fragments before its item opened
        self.index = -1  # output_index once open
        # new (no name yet) | waiting (for the open call: common.WholeArguments) | open | closed
        self.state = "new"
        self.custom = False
        self.search = False  # the client's tool search: its arguments go out whole, at the end
        self.decoder: InputDecoder | None = None


class ResponsesStream(StreamTranslator):
    """Chat Completions chunks in, Responses events out (`event: <type>` + JSON data with `type`
    and an increasing `sequence_number`)."""

    __slots__ = (
        "_base",
        "_call",
        "_calls",
        "_finish",
        "_held",
        "_model",
        "_output",
        "_positions",
        "_seq",
        "_started",
        "_summary",
        "_text",
        "_unsent",
        "_usage",
        "_waiting",
        "compact",
        "created",
        "payload",
        "tools",
    )

    def __init__(
        self, payload: dict[str, Any], created: int, tools: ClientTools, compact: bool = False
    ) -> None:
        super().__init__()
        # A compaction: the upstream's text is the summary, kept until the finish and sent as
        # one `compaction` item (added and done); its reasoning and any call are not sent.
        self.compact = compact
        self._summary: list[str] = []
        self.payload = payload  # the client's Responses request (echoed in the response object)
        self.created = created
        self.tools = tools  # how the client's tools are named upstream
        self._seq = 0
        self._started = False
        self._base = ""
        self._model: Any = None
        self._output: list[dict[str, Any] | None] = []  # by output_index; None while open
        self._text: _Text | None = None
        self._calls: dict[int, _Call] = {}
        self._positions = CallPositions()  # which call a delta is for (its index, or its id)
        self._call: _Call | None = None  # the open call
        self._waiting: list[_Call] = []  # named calls not open yet, in the order they came
        # Text and reasoning that came while a call's arguments were not whole: (part, text),
        # written once they are (`_calls_pending`)
        self._held: list[tuple[str, str]] = []
        self._finish: str | None = None
        self._usage: dict[str, Any] | None = None
        # Events made before an upstream event was refused (BadUpstreamEvent): they go out
        # ahead of `response.failed` (`error_events`), so that the client's stream still
        # begins with `response.created` and its sequence numbers have no gap.
        self._unsent: list[bytes] = []

    # --- writing ---------------------------------------------------------------------------

    def _event(self, kind: str, body: dict[str, Any]) -> bytes:
        data = {"type": kind, **body, "sequence_number": self._seq}
        self._seq += 1
        return sse(data, kind)

    def _response(self, status: str, **extra: Any) -> dict[str, Any]:
        output = [item for item in self._output if item is not None]
        return response_object(
            self.payload,
            base=self._base,
            created=self.created,
            model=self._model,
            status=status,
            output=output if status != "in_progress" else [],
            **extra,
        )

    def _start(self, chunk: dict[str, Any], out: list[bytes]) -> None:
        self._started = True
        self._base = base_id(chunk.get("id"))
        self._model = chunk.get("model")
        response = self._response("in_progress")
        out.append(self._event("response.created", {"response": response}))
        out.append(self._event("response.in_progress", {"response": response}))

    # --- reading ---------------------------------------------------------------------------

    def on_event(self, data: dict[str, Any]) -> list[bytes]:
        out: list[bytes] = []
        try:
            self._on_event(data, out)
        except MALFORMED:  # BadUpstreamEvent is one
            self._unsent.extend(out)
            raise
        return out

    def unsent(self, events: list[bytes]) -> None:
        """`events` (made from earlier upstream events of the same read) did not go out either:
        they come first."""
        self._unsent[:0] = events

    def _on_event(self, data: dict[str, Any], out: list[bytes]) -> None:
        if not self._started:
            self._start(data, out)
        if "error" in data:
            out.extend(self._failed(stream_error(data)))
            return
        if isinstance(data.get("usage"), dict):
            self._usage = usage(data["usage"])
        if self._model is None and isinstance(data.get("model"), str):
            self._model = data["model"]
        for choice in data.get("choices") or []:
            if isinstance(choice, dict) and choice.get("index", 0) == 0:
                self._choice(choice, out)

    def on_done(self) -> list[bytes]:
        out: list[bytes] = []
        if not self._started:
            self._start({}, out)
        if self._finish is None:  # the upstream said it is done without a finish_reason
            if self.compact:
                self._compaction({}, "stop", out)
            else:
                self._close_all("stop", out)
        if not self.done:  # (a compaction without its summary failed)
            out.extend(self._end())
        return out

    def finish(self) -> list[bytes]:
        """The upstream ended: complete the response if it finished (without `[DONE]`); a stream
        cut before its finish_reason ends with `response.failed`, never as complete, and its
        open items are not closed (a half-streamed tool call must not be run)."""
        if self.done:
            return []
        if self._finish is not None:
            return self.on_done()
        out: list[bytes] = []
        if not self._started:
            self._start({}, out)
        out.extend(self._failed({"code": "server_error", "message": CUT_MESSAGE}))
        return out

    def _choice(self, choice: dict[str, Any], out: list[bytes]) -> None:
        if self._finish is not None:
            return  # after the finish_reason only usage is expected
        delta = choice.get("delta")
        delta = delta if isinstance(delta, dict) else {}
        if self.compact:
            self._compaction(delta, choice.get("finish_reason"), out)
            return
        reasoning = reasoning_text(delta)
        if reasoning:
            self._text_or_hold("reasoning_text", reasoning, out)
        for key, kind in (("content", "output_text"), ("refusal", "refusal")):
            text = delta.get(key)
            if isinstance(text, str) and text:
                self._text_or_hold(kind, text, out)
        calls = delta.get("tool_calls")
        if isinstance(calls, list):
            for call in calls:
                if isinstance(call, dict):
                    self._call_delta(call, out)
            if self._held and not self._calls_pending():
                self._release(out)
        finish = choice.get("finish_reason")
        if finish is not None:
            self._close_all(finish if isinstance(finish, str) else "stop", out)

    def _compaction(self, delta: dict[str, Any], finish: Any, out: list[bytes]) -> None:
        text = delta.get("content")
        if isinstance(text, str):
            self._summary.append(text)
        if finish is None:
            return
        self._finish = finish if isinstance(finish, str) else "stop"
        summary = "".join(self._summary)
        problem = compaction_problem(summary, self._finish)
        if problem is not None:
            out.extend(self._failed({"code": "server_error", "message": problem}))
            return
        index = len(self._output)
        item = compaction_item(self._base, index, summary)
        self._output.append(item)
        out.append(self._event("response.output_item.added", {"output_index": index, "item": item}))
        out.append(self._event("response.output_item.done", {"output_index": index, "item": item}))

    # --- message and reasoning items -------------------------------------------------------

    def _calls_pending(self) -> bool:
        """Whether a tool call is not whole yet: the open one's arguments do not add up to
        JSON, or a named call waits to open. Text or reasoning then waits too: Chat Completions
        may send a call's name, then text, then its arguments, and a closed item takes no
        more."""
        return bool(self._waiting) or (
            self._call is not None and not self._call.whole(self._call.args)
        )

    def _text_or_hold(self, part: str, text: str, out: list[bytes]) -> None:
        if self._held or self._calls_pending():
            self._held.append((part, text))
        else:
            self._text_delta(part, text, out)

    def _release(self, out: list[bytes]) -> None:
        """The held text and reasoning, in the order they came."""
        held, self._held = self._held, []
        for part, text in held:
            self._text_delta(part, text, out)

    def _text_delta(self, part: str, delta: str, out: list[bytes]) -> None:
        item_kind, empty, delta_event, _, _ = _PARTS[part]
        text = self._text
        if text is None or text.kind != item_kind:
            self._close_text("completed", out)
            self._close_call("completed", out)
            text = self._open_text(item_kind, out)
        if text.part != part:
            self._close_part(text, out)
            text.part = part
            out.append(
                self._event(
                    "response.content_part.added",
                    {**self._where(text), "content_index": len(text.parts), "part": empty},
                )
            )
        text.texts.append(delta)
        body: dict[str, Any] = {
            **self._where(text),
            "content_index": len(text.parts),
            "delta": delta,
        }
        if part == "output_text":
            body["logprobs"] = []
        out.append(self._event(delta_event, body))

    def _where(self, text: _Text) -> dict[str, Any]:
        return {"item_id": text.id, "output_index": text.index}

    def _open_text(self, kind: str, out: list[bytes]) -> _Text:
        index = len(self._output)
        self._output.append(None)
        if kind == "message":
            text = _Text(kind, index, item_id("msg", self._base, index))
            item: dict[str, Any] = {
                "id": text.id,
                "type": "message",
                "status": "in_progress",
                "role": "assistant",
                "content": [],
            }
        else:
            text = _Text(kind, index, item_id("rs", self._base, index))
            item = {"id": text.id, "type": "reasoning", "summary": [], "content": []}
        self._text = text
        out.append(self._event("response.output_item.added", {"output_index": index, "item": item}))
        return text

    def _close_part(self, text: _Text, out: list[bytes]) -> None:
        if text.part is None:
            return
        _, empty, _, done_event, field = _PARTS[text.part]
        value = "".join(text.texts)
        body: dict[str, Any] = {
            **self._where(text),
            "content_index": len(text.parts),
            field: value,
        }
        if text.part == "output_text":
            body["logprobs"] = []
        out.append(self._event(done_event, body))
        part = {**empty, field: value}
        out.append(
            self._event(
                "response.content_part.done",
                {**self._where(text), "content_index": len(text.parts), "part": part},
            )
        )
        text.parts.append(part)
        text.part = None
        text.texts = []

    def _close_text(self, status: str, out: list[bytes]) -> None:
        text = self._text
        if text is None:
            return
        self._close_part(text, out)
        self._text = None
        if text.kind == "message":
            item: dict[str, Any] = {
                "id": text.id,
                "type": "message",
                "status": status,
                "role": "assistant",
                "content": text.parts,
            }
        else:
            item = {"id": text.id, "type": "reasoning", "summary": [], "content": text.parts}
        self._output[text.index] = item
        out.append(
            self._event("response.output_item.done", {"output_index": text.index, "item": item})
        )

    # --- tool calls ------------------------------------------------------------------------

    def _call_delta(self, delta: dict[str, Any], out: list[bytes]) -> None:
        position = self._positions(delta)
        call = self._calls.get(position)
        if call is None:
            call = self._calls[position] = _Call()
        elif call.state == "closed":
            fn = delta.get("function")
            fragment = fn.get("arguments") if isinstance(fn, dict) else None
            if isinstance(fragment, str) and not fragment.strip():
                return  # whitespace after whole arguments: nothing to tell
            # Arguments for a call already reported done: the client may have run it.
            raise BadUpstreamEvent()
        fn = delta.get("function")
        fn = fn if isinstance(fn, dict) else {}
        if call.call_id is None and isinstance(delta.get("id"), str) and delta["id"]:
            call.call_id = delta["id"]
        if not call.name and isinstance(fn.get("name"), str):
            call.name = fn["name"]
        if call.state in ("new", "waiting") and isinstance(delta.get("extra_content"), dict):
            call.extra = delta["extra_content"]  # (once its item is open: too late for its id)
        fragment = fn.get("arguments")
        fragment = fragment if isinstance(fragment, str) else ""
        if call.state in ("new", "waiting"):
            if fragment:
                call.pending.append(fragment)
            if call.state == "new" and call.name:
                call.state = "waiting"
                self._waiting.append(call)
        elif fragment:
            self._arguments(call, fragment, out)
        if self._waiting and (self._call is None or self._call.whole(self._call.args)):
            self._open_waiting(out)

    def _open_waiting(self, out: list[bytes]) -> None:
        """Open the waiting calls in order, each with its fragments so far, while the open
        one's arguments are whole (common.WholeArguments; the last one stays open)."""
        while self._waiting and (self._call is None or self._call.whole(self._call.args)):
            self._open_call(self._waiting.pop(0), out)

    def _open_call(self, call: _Call, out: list[bytes]) -> None:
        self._close_text("completed", out)
        self._close_call("completed", out)
        call.index = len(self._output)
        self._output.append(None)
        call.state = "open"
        call.custom = call.name in self.tools.custom
        call.search = call.name in self.tools.search
        item = tool_item(
            call.name, call.call_id, "", self._base, call.index, self.tools, "", call.extra
        )
        call.call_id = item["call_id"]
        if call.custom:
            call.decoder = InputDecoder()
        else:
            item["status"] = "in_progress"
        self._call = call
        out.append(
            self._event("response.output_item.added", {"output_index": call.index, "item": item})
        )
        pending, call.pending = call.pending, []
        for fragment in pending:
            self._arguments(call, fragment, out)

    def _arguments(self, call: _Call, fragment: str, out: list[bytes]) -> None:
        call.args.append(fragment)
        if call.search:
            return
        where = {"item_id": self._call_item_id(call), "output_index": call.index}
        if call.decoder is None:
            out.append(
                self._event("response.function_call_arguments.delta", {**where, "delta": fragment})
            )
            return
        text = call.decoder.feed(fragment)
        if text:
            out.append(
                self._event("response.custom_tool_call_input.delta", {**where, "delta": text})
            )

    def _call_item_id(self, call: _Call) -> str:
        return item_id("ctc" if call.custom else "fc", self._base, call.index)

    def _close_call(self, status: str, out: list[bytes]) -> None:
        call = self._call
        if call is None:
            return
        self._call = None
        call.state = "closed"
        if call.decoder is not None and status == "incomplete" and not call.whole(call.args):
            # A custom tool's input cut by the output limit: never reported done (it has no
            # status to say it is cut, and a client runs what it gets: half a patch or script),
            # as a cut stream leaves its open item. (Whole, it is reported as any other.)
            return
        if call.decoder is None and not any(call.args):
            self._arguments(call, NO_ARGUMENTS, out)  # the deltas add up to what .done says
        arguments = "".join(call.args)
        item = tool_item(
            call.name, call.call_id, arguments, self._base, call.index, self.tools, status
        )
        where = {"item_id": item["id"], "output_index": call.index}
        if call.decoder is not None:
            final = item["input"]
            sent = call.decoder.sent
            if final.startswith(sent) and len(final) > len(sent):
                # A model that did not write `{"input": "…"}`: its input, whole, at the end.
                out.append(
                    self._event(
                        "response.custom_tool_call_input.delta",
                        {**where, "delta": final[len(sent) :]},
                    )
                )
            out.append(
                self._event("response.custom_tool_call_input.done", {**where, "input": final})
            )
        elif not call.search:  # (a tool search's item carries its arguments: no events)
            out.append(
                self._event(
                    "response.function_call_arguments.done", {**where, "arguments": arguments}
                )
            )
        self._output[call.index] = item
        out.append(
            self._event("response.output_item.done", {"output_index": call.index, "item": item})
        )

    # --- the end ---------------------------------------------------------------------------

    def _close_all(self, finish: str, out: list[bytes]) -> None:
        self._finish = finish
        status, _ = finish_status(finish)
        item_status = "completed" if status == "completed" else "incomplete"
        self._close_text(item_status, out)
        self._close_call(item_status, out)
        for call in self._calls.values():  # waiting calls, and those whose name never came
            if call.state in ("new", "waiting"):
                self._open_call(call, out)
                self._close_call(item_status, out)
        self._waiting.clear()
        if self._held:  # text that waited for the calls: after them
            self._release(out)
            self._close_text(item_status, out)

    def _end(self) -> list[bytes]:
        self.done = True
        status, reason = finish_status(self._finish)
        response = self._response(status, usage=self._usage, incomplete=reason)
        kind = "response.completed" if status == "completed" else "response.incomplete"
        return [self._event(kind, {"response": response})]

    def _failed(self, error: dict[str, Any]) -> list[bytes]:
        self.done = self.broken = True
        response = self._response("failed", usage=self._usage, error=error)
        return [self._event("response.failed", {"response": response})]

    def error_data(self, status: int, body: bytes) -> bytes:
        """The data of an `error` event for an upstream error answer (after the SSE head)."""
        err = error_json(status, body)["error"]
        data = {
            "type": "error",
            "code": err["code"] or err["type"],
            "message": err["message"],
            "param": err["param"],
            "sequence_number": self._seq,
        }
        self._seq += 1
        return orjson.dumps(data)

    def error_events(self, status: int, body: bytes) -> list[bytes]:
        """An upstream error answer (after the SSE head) as the end of the client's stream:
        `response.failed` (after `response.created`/`in_progress` if none went out yet)."""
        if self.done:
            return []
        out, self._unsent = self._unsent, []
        if not self._started:
            self._start({}, out)
        err = error_json(status, body)["error"]
        out.extend(self._failed({"code": err["code"] or "server_error", "message": err["message"]}))
        return out


# --- a custom tool's input, streamed out of its JSON arguments ---------------------------------

_PREFIX = re.compile(r'\s*\{\s*"input"\s*:\s*"')
_WHITESPACE = re.compile(r"\s+")
_TARGET = '{"input":"'
_SPECIAL = re.compile(r'["\\]')
_HEX = re.compile(r"[0-9a-fA-F]{4}")
_ESCAPES = {'"': '"', "\\": "\\", "/": "/", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}


class InputDecoder:
    """Decodes the string value of `{"input": "…"}` as its JSON text arrives in fragments, so a
    custom tool's input (e.g. a patch) streams as the model writes it. Arguments that do not
    start that way are not streamed: the caller sends the whole input when the call ends."""

    __slots__ = ("mode", "pos", "raw", "sent")

    def __init__(self) -> None:
        self.raw = ""
        self.pos = 0
        self.mode = "prefix"  # prefix | string | end | off
        self.sent = ""  # what was decoded (and streamed) so far

    def feed(self, fragment: str) -> str:
        self.raw += fragment
        if self.mode == "prefix":
            match = _PREFIX.match(self.raw)
            if match is not None:
                self.mode = "string"
                self.pos = match.end()
            elif not _TARGET.startswith(_WHITESPACE.sub("", self.raw)):
                self.mode = "off"
        if self.mode != "string":
            return ""
        text = self._decode()
        self.sent += text
        return text

    def _decode(self) -> str:
        raw, i, n = self.raw, self.pos, len(self.raw)
        out: list[str] = []
        while i < n:
            c = raw[i]
            if c == '"':
                self.mode = "end"
                i += 1
                break
            if c != "\\":
                match = _SPECIAL.search(raw, i)
                j = match.start() if match else n
                out.append(raw[i:j])
                i = j
                continue
            if i + 1 >= n:
                break  # the escape goes on in the next fragment
            e = raw[i + 1]
            if e != "u":
                if e not in _ESCAPES:
                    self.mode = "off"
                    break
                out.append(_ESCAPES[e])
                i += 2
                continue
            code = _hex(raw, i + 2, n)
            if code is None:
                break
            if code < 0:
                self.mode = "off"
                break
            if 0xD800 <= code < 0xDC00:  # a high surrogate: its low half should follow
                rest = raw[i + 6 : i + 8]
                if len(rest) < 2 and "\\u".startswith(rest):
                    break  # wait for it
                low = _hex(raw, i + 8, n) if rest == "\\u" else -1
                if low is None:
                    break
                if 0xDC00 <= low < 0xE000:
                    out.append(chr(0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00)))
                    i += 12
                else:
                    out.append("\ufffd")
                    i += 6
                continue
            out.append("\ufffd" if 0xDC00 <= code < 0xE000 else chr(code))
            i += 6
        self.pos = i
        return "".join(out)


def _hex(raw: str, start: int, n: int) -> int | None:
    """The 4-hex-digit code at `start`, None if not all here yet, -1 if not hex."""
    if start + 4 > n:
        return None
    digits = raw[start : start + 4]
    return int(digits, 16) if _HEX.fullmatch(digits) else -1


__all__ = ["CUT_MESSAGE", "InputDecoder", "ResponsesStream", "error_code"]
