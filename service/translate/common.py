"""What both translation directions share: the refusal error, the stop-reason and error-type
tables, and writing and reading SSE events (pure functions, no I/O)."""

from __future__ import annotations

import re
from typing import Any

import orjson

from ..errors import BadRequest
from ..proxy.events import event_data


class Untranslatable(BadRequest):
    """A request feature with no equivalent in the upstream's format: refused with 400 before
    anything reaches the upstream (a silently dropped feature would change the answer)."""

    code = "untranslatable_request"

    def __init__(self, field: str, upstream: str) -> None:
        super().__init__(
            f"'{field}' has no equivalent in the {upstream} format this route is translated to"
        )


class BadUpstreamEvent(ValueError):
    """An upstream stream event that is not the JSON its format promises."""


# OpenAI finish_reason -> Anthropic stop_reason. OpenAI does not say which stop sequence
# matched, so "stop" is always end_turn (stop_sequence stays null).
FINISH_TO_STOP = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}
STOP_TO_FINISH = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}

# Error `type` by HTTP status, for upstream errors that carry none the client's format knows.
_ANTHROPIC_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    503: "overloaded_error",
    504: "timeout_error",
    529: "overloaded_error",
}
_OPENAI_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    409: "conflict_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
}


def anthropic_error_type(status: int) -> str:
    return _ANTHROPIC_ERROR_TYPES.get(
        status, "invalid_request_error" if 400 <= status < 500 else "api_error"
    )


def openai_error_type(status: int) -> str:
    return _OPENAI_ERROR_TYPES.get(
        status, "invalid_request_error" if 400 <= status < 500 else "server_error"
    )


def error_message(status: int, body: bytes) -> tuple[str, str | None]:
    """The message (and `type`, when given) of an upstream error body in either format:
    `{"error": {"message", "type"}}` (both), `{"error": "text"}`, `{"message": …}`, `{"detail":
    …}`; else a fixed message (a non-JSON body, e.g. a proxy's HTML page, is not echoed)."""
    try:
        parsed = orjson.loads(body) if body else None
    except orjson.JSONDecodeError:
        parsed = None
    if isinstance(parsed, dict):
        err = parsed.get("error")
        if isinstance(err, dict) and isinstance(err.get("message"), str):
            kind = err.get("type")
            return err["message"], kind if isinstance(kind, str) and kind else None
        for value in (err, parsed.get("message"), parsed.get("detail")):
            if isinstance(value, str) and value:
                return value, None
    return f"The upstream answered HTTP {status}", None


def sse(data: Any, event: str | None = None) -> bytes:
    """One SSE event: optional `event:` line, one `data:` line of compact JSON, blank line."""
    payload = data if isinstance(data, bytes) else orjson.dumps(data)
    head = b"event: " + event.encode() + b"\n" if event else b""
    return head + b"data: " + payload + b"\n\n"


DONE = b"data: [DONE]\n\n"

_COMMENT_ONLY = re.compile(rb"^(?::[^\r\n]*(?:\r\n|\r|\n))+(?:\r\n|\r|\n)?$")


def is_comment(event: bytes) -> bool:
    """True for an event made only of `:` comment lines (keep-alives): valid in both formats."""
    return _COMMENT_ONLY.match(event) is not None


def event_json(event: bytes) -> Any:
    """The JSON of an event's data, `b"[DONE]"` for OpenAI's end marker, None for no data."""
    data = event_data(event).strip()
    if not data:
        return None
    if data == b"[DONE]":
        return data
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        raise BadUpstreamEvent() from None


class StreamTranslator:
    """Base of a stream translator: fed one complete upstream SSE event at a time, returns the
    client's events for it. Comment events (keep-alives) pass as they are; events without data
    are dropped; data that is not a JSON object raises BadUpstreamEvent."""

    __slots__ = ("done",)

    def __init__(self) -> None:
        self.done = False  # the client's stream is complete: later upstream events are ignored

    def feed(self, event: bytes) -> list[bytes]:
        if self.done:
            return []
        if is_comment(event):
            return [event]
        data = event_json(event)
        if data is None:
            return []
        if data == b"[DONE]":
            return self.on_done()
        if not isinstance(data, dict):
            raise BadUpstreamEvent()
        return self.on_event(data)

    def on_event(self, data: dict[str, Any]) -> list[bytes]:
        raise NotImplementedError

    def on_done(self) -> list[bytes]:
        return []

    def finish(self) -> list[bytes]:
        """The upstream ended: whatever closes the client's stream."""
        raise NotImplementedError


def text_of(blocks: Any, where: str, upstream: str, sep: str = "") -> str:
    """The text of a string or a list of text blocks/parts (`{"type": "text", "text": …}`)."""
    if isinstance(blocks, str):
        return blocks
    if blocks is None:
        return ""
    if not isinstance(blocks, list):
        raise Untranslatable(where, upstream)
    out = []
    for i, block in enumerate(blocks):
        if not isinstance(block, dict) or block.get("type") != "text":
            kind = block.get("type") if isinstance(block, dict) else None
            raise Untranslatable(f"{where}[{i}].type={kind}", upstream)
        out.append(str(block.get("text", "")))
    return sep.join(out)


def given(body: dict[str, Any], key: str) -> bool:
    """The client sent `key` with a value (OpenAI clients often send explicit nulls)."""
    return body.get(key) is not None
