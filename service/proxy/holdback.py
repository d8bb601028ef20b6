"""Which upstream SSE events carry content: the commit point of a stream under a routing file.

Until the first event with content, a failed stream can still be failed over to another
upstream (service.proxy.failover): the events before it (OpenAI's role-only chunk, Anthropic's
`message_start`, `ping` and empty `content_block_start`, the Responses API's `response.created`
…) are held back, not sent. `classify` reads one complete event of the upstream's format:

- `free`: nothing the client could show (held back);
- `content`: text, reasoning, a tool call, or the end of the answer (a finish reason,
  `message_delta`/`message_stop`, `response.completed`, `[DONE]`): the commit point;
- `error`: an in-band error event before any content (retried like a failed attempt).

Only the events before the commit point are parsed; after it the relay reads no JSON it does
not need (service.proxy.sse).
"""

from __future__ import annotations

from typing import Any

import orjson

FREE, CONTENT, ERROR = "free", "content", "error"
# Held back at most this many events / bytes; past either the stream is committed as it is.
MAX_HELD_EVENTS = 64
MAX_HELD_BYTES = 64 * 1024


def _fields(event: bytes) -> tuple[bytes, bytes]:
    """The event's `event:` name and its `data:` lines joined (SSE framing, any line ending)."""
    name = b""
    data: list[bytes] = []
    for line in event.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n"):
        if line.startswith(b"data:"):
            data.append(line[5:].removeprefix(b" "))
        elif line.startswith(b"event:"):
            name = line[6:].strip()
    return name, b"\n".join(data)


def _openai(obj: dict[str, Any]) -> str:
    if "error" in obj:
        return ERROR
    for choice in obj.get("choices") or ():
        if not isinstance(choice, dict):
            continue
        if choice.get("finish_reason") or choice.get("text"):
            return CONTENT
        delta = choice.get("delta")
        if isinstance(delta, dict) and any(
            delta.get(k)
            for k in (
                "content",
                "tool_calls",
                "function_call",
                "reasoning_content",
                "reasoning",
                "refusal",
            )
        ):
            return CONTENT
    return FREE


_ANTHROPIC_FREE = frozenset({"message_start", "ping", "content_block_stop"})


def _anthropic(obj: dict[str, Any]) -> str:
    kind = obj.get("type")
    if kind == "error":
        return ERROR
    if kind in _ANTHROPIC_FREE:
        return FREE
    if kind == "content_block_start":
        block = obj.get("content_block")
        if isinstance(block, dict) and block.get("type") in ("text", "thinking"):
            return CONTENT if block.get("text") or block.get("thinking") else FREE
    return CONTENT


_RESPONSES_FREE = frozenset(
    {
        "response.created",
        "response.in_progress",
        "response.queued",
        "response.content_part.added",
        "keepalive",
    }
)


def _responses(obj: dict[str, Any]) -> str:
    kind = obj.get("type")
    if kind in ("error", "response.failed"):
        return ERROR
    if kind in _RESPONSES_FREE:
        return FREE
    if kind == "response.output_item.added":
        item = obj.get("item")
        if isinstance(item, dict) and item.get("type") in ("message", "reasoning"):
            return FREE
    return CONTENT


_BY_FORMAT = {"openai": _openai, "anthropic": _anthropic, "responses": _responses}


def classify(upstream_format: str, event: bytes) -> str:
    """`free`, `content` or `error` for one complete SSE event of `upstream_format`."""
    _, data = _fields(event)
    if not data.strip():
        return FREE  # a comment (`: ping`) or an event without data
    if data.strip() == b"[DONE]":
        return CONTENT
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError:
        return CONTENT  # not ours to judge: relayed from here on
    if not isinstance(obj, dict):
        return CONTENT
    return _BY_FORMAT.get(upstream_format, _openai)(obj)
