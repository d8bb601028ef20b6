"""An Anthropic Messages client in front of an OpenAI Chat Completions upstream.

`request` turns a Messages request into a Chat Completions request; `response` and `error` turn
the upstream's answer back into the client's shape; `EventTranslator` does it for a stream, one
complete upstream SSE event at a time (chunks in, `message_start` … `message_stop` out).
"""

from __future__ import annotations

from typing import Any

import orjson

from ..errors import BadRequest, UpstreamJSONError
from .common import (
    FINISH_TO_STOP,
    StreamTranslator,
    Untranslatable,
    anthropic_error_type,
    error_message,
    given,
    sse,
    text_of,
)

UPSTREAM = "OpenAI Chat Completions"

# Fields that change the answer and have no Chat Completions equivalent.
REFUSED = ("top_k", "container", "mcp_servers", "context_management")
# Fields that only steer the provider's infrastructure (capacity tier): dropped.
DROPPED = ("service_tier",)
_TRANSLATED = frozenset(
    "model messages system max_tokens stop_sequences temperature top_p metadata stream"
    " tools tool_choice thinking".split()
) | {*REFUSED, *DROPPED}


def request(body: dict[str, Any]) -> dict[str, Any]:
    """A Chat Completions request with the meaning of this Messages request. Fields this module
    does not know pass through unchanged (the upstream decides, as on an untranslated route)."""
    for key in REFUSED:
        if given(body, key):
            raise Untranslatable(key, UPSTREAM)
    thinking = body.get("thinking")
    if thinking is not None and not (
        isinstance(thinking, dict) and thinking.get("type") == "disabled"
    ):
        raise Untranslatable("thinking", UPSTREAM)
    out: dict[str, Any] = {}
    if "model" in body:
        out["model"] = body["model"]
    messages: list[dict[str, Any]] = []
    if given(body, "system"):
        # cache_control on system blocks is a caching hint: dropped with the block boundaries.
        text = text_of(body["system"], "system", UPSTREAM, sep="\n\n")
        if text:
            messages.append({"role": "system", "content": text})
    client_messages = body.get("messages")
    if not isinstance(client_messages, list):
        raise BadRequest("'messages' must be an array")
    for i, m in enumerate(client_messages):
        messages.extend(_message(m, f"messages[{i}]"))
    out["messages"] = messages
    if "max_tokens" in body:
        out["max_tokens"] = body["max_tokens"]
    if given(body, "stop_sequences"):
        out["stop"] = body["stop_sequences"]
    for key in ("temperature", "top_p"):
        if given(body, key):
            out[key] = body[key]
    metadata = body.get("metadata")
    if isinstance(metadata, dict) and isinstance(metadata.get("user_id"), str):
        out["user"] = metadata["user_id"]
    if given(body, "stream"):
        out["stream"] = body["stream"]
        if body["stream"] is True:  # usage arrives in a last chunk only when asked for
            out["stream_options"] = {"include_usage": True}
    tools = body.get("tools")
    if isinstance(tools, list):
        out["tools"] = [_tool(t, f"tools[{i}]") for i, t in enumerate(tools)]
    choice = body.get("tool_choice")
    if isinstance(choice, dict):
        out["tool_choice"] = _tool_choice(choice)
        if choice.get("disable_parallel_tool_use") is True and out.get("tools"):
            out["parallel_tool_calls"] = False
    for key, value in body.items():
        if key not in _TRANSLATED:
            out[key] = value
    return out


def _message(m: Any, where: str) -> list[dict[str, Any]]:
    if not isinstance(m, dict):
        raise BadRequest(f"'{where}' must be an object")
    role = m.get("role")
    content = m.get("content")
    if role == "user":
        return _user(content, where)
    if role == "assistant":
        return [_assistant(content, where)]
    raise Untranslatable(f"{where}.role={role}", UPSTREAM)


def _blocks(content: Any, where: str) -> list[dict[str, Any]]:
    if not isinstance(content, list) or not all(isinstance(b, dict) for b in content):
        raise BadRequest(f"'{where}.content' must be a string or an array of blocks")
    return content


def _user(content: Any, where: str) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"role": "user", "content": content}]
    tool_messages: list[dict[str, Any]] = []
    tool_images: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    for j, block in enumerate(_blocks(content, where)):
        at = f"{where}.content[{j}]"
        kind = block.get("type")
        if kind == "text":
            parts.append({"type": "text", "text": block.get("text", "")})
        elif kind == "image":
            parts.append(_image(block.get("source"), at))
        elif kind == "tool_result":
            # Chat Completions tool messages carry text only: a result's images follow them in
            # the user message. `is_error` has no field; the result's text carries the error.
            text, images = _tool_result_content(block.get("content"), at)
            tool_messages.append(
                {"role": "tool", "tool_call_id": block.get("tool_use_id"), "content": text}
            )
            tool_images.extend(images)
        else:
            raise Untranslatable(f"{at}.type={kind}", UPSTREAM)
    # Tool messages must directly follow the assistant's tool calls.
    parts = tool_images + parts
    return tool_messages + ([{"role": "user", "content": parts}] if parts else [])


def _tool_result_content(content: Any, where: str) -> tuple[str, list[dict[str, Any]]]:
    if content is None or isinstance(content, str):
        return content or "", []
    texts: list[str] = []
    images: list[dict[str, Any]] = []
    for k, block in enumerate(_blocks(content, where)):
        if block.get("type") == "text":
            texts.append(block.get("text", ""))
        elif block.get("type") == "image":
            images.append(_image(block.get("source"), f"{where}.content[{k}]"))
        else:
            raise Untranslatable(f"{where}.content[{k}].type={block.get('type')}", UPSTREAM)
    return "\n".join(texts), images


def _image(source: Any, where: str) -> dict[str, Any]:
    if isinstance(source, dict):
        if source.get("type") == "base64":
            url = f"data:{source.get('media_type')};base64,{source.get('data')}"
            return {"type": "image_url", "image_url": {"url": url}}
        if source.get("type") == "url":
            return {"type": "image_url", "image_url": {"url": source.get("url")}}
        raise Untranslatable(f"{where}.source.type={source.get('type')}", UPSTREAM)
    raise BadRequest(f"'{where}.source' must be an object")


def _assistant(content: Any, where: str) -> dict[str, Any]:
    if isinstance(content, str):
        return {"role": "assistant", "content": content}
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for j, block in enumerate(_blocks(content, where)):
        kind = block.get("type")
        if kind == "text":
            texts.append(block.get("text", ""))
        elif kind == "tool_use":
            arguments = orjson.dumps(block.get("input", {})).decode()
            calls.append(
                {
                    "id": block.get("id"),
                    "type": "function",
                    "function": {"name": block.get("name"), "arguments": arguments},
                }
            )
        elif kind in ("thinking", "redacted_thinking"):
            continue  # earlier reasoning: Chat Completions takes none back
        else:
            raise Untranslatable(f"{where}.content[{j}].type={kind}", UPSTREAM)
    msg: dict[str, Any] = {"role": "assistant", "content": "".join(texts) if texts else None}
    if calls:
        msg["tool_calls"] = calls
    elif msg["content"] is None:
        msg["content"] = ""
    return msg


def _tool(tool: Any, where: str) -> dict[str, Any]:
    if not isinstance(tool, dict):
        raise BadRequest(f"'{where}' must be an object")
    if tool.get("type") not in (None, "custom"):
        # Server tools (web search, code execution, bash, computer use …) run at Anthropic.
        raise Untranslatable(f"{where}.type={tool.get('type')}", UPSTREAM)
    fn: dict[str, Any] = {"name": tool.get("name")}
    if given(tool, "description"):
        fn["description"] = tool["description"]
    fn["parameters"] = tool.get("input_schema") or {"type": "object", "properties": {}}
    return {"type": "function", "function": fn}


def _tool_choice(choice: dict[str, Any]) -> Any:
    kind = choice.get("type")
    if kind == "auto":
        return "auto"
    if kind == "any":
        return "required"
    if kind == "none":
        return "none"
    if kind == "tool":
        return {"type": "function", "function": {"name": choice.get("name")}}
    raise Untranslatable(f"tool_choice.type={kind}", UPSTREAM)


def usage(u: Any) -> dict[str, int]:
    """Anthropic usage from OpenAI usage. OpenAI's prompt_tokens include cached tokens;
    Anthropic's input_tokens do not (they are cache_read_input_tokens)."""
    if not isinstance(u, dict):
        return {"input_tokens": 0, "output_tokens": 0}
    prompt = u.get("prompt_tokens") or 0
    details = u.get("prompt_tokens_details")
    cached = details.get("cached_tokens") if isinstance(details, dict) else None
    out = {"input_tokens": prompt - (cached or 0), "output_tokens": u.get("completion_tokens") or 0}
    if isinstance(cached, int):
        out["cache_read_input_tokens"] = cached
    return out


def _tool_input(arguments: Any) -> dict[str, Any]:
    if arguments in (None, ""):
        return {}
    try:
        value = orjson.loads(arguments) if isinstance(arguments, str) else arguments
    except orjson.JSONDecodeError:
        raise UpstreamJSONError() from None
    if not isinstance(value, dict):
        raise UpstreamJSONError()
    return value


def response(body: dict[str, Any]) -> dict[str, Any]:
    """The Anthropic message for a Chat Completions response (its first choice)."""
    choices = body.get("choices")
    choice = choices[0] if isinstance(choices, list) and choices else {}
    message = choice.get("message") or {}
    content: list[dict[str, Any]] = []
    text = message.get("content")
    if isinstance(text, list):
        text = "".join(p.get("text", "") for p in text if isinstance(p, dict))
    if isinstance(text, str) and text:
        content.append({"type": "text", "text": text})
    refusal = message.get("refusal")
    if isinstance(refusal, str) and refusal:
        content.append({"type": "text", "text": refusal})
    for call in message.get("tool_calls") or []:
        fn = call.get("function") or {}
        content.append(
            {
                "type": "tool_use",
                "id": call.get("id"),
                "name": fn.get("name"),
                "input": _tool_input(fn.get("arguments")),
            }
        )
    return {
        "id": body.get("id"),
        "type": "message",
        "role": "assistant",
        "model": body.get("model"),
        "content": content,
        "stop_reason": FINISH_TO_STOP.get(choice.get("finish_reason") or "", "end_turn"),
        "stop_sequence": None,
        "usage": usage(body.get("usage")),
    }


def error(status: int, body: bytes) -> dict[str, Any]:
    """The Anthropic error for an upstream error (its type follows the status: Anthropic's set
    of error types is closed)."""
    message, _ = error_message(status, body)
    return {"type": "error", "error": {"type": anthropic_error_type(status), "message": message}}


class EventTranslator(StreamTranslator):
    """Chat Completions chunks in, Anthropic Messages events out; holds only the open block."""

    __slots__ = ("_finish", "_open", "_started", "_tools", "_usage", "next_index")

    def __init__(self) -> None:
        super().__init__()
        self._started = False
        self._open: int | None = None  # index of the open content block
        self._tools: dict[int, int] = {}  # OpenAI tool_call index -> content block index
        self.next_index = 0
        self._finish: str | None = None
        self._usage: Any = None

    def on_done(self) -> list[bytes]:
        return self._end()

    def on_event(self, data: dict[str, Any]) -> list[bytes]:
        if "error" in data:
            self.done = True
            status = data["error"].get("code") if isinstance(data["error"], dict) else None
            err = error(status if isinstance(status, int) else 500, orjson.dumps(data))
            return [sse(err, "error")]
        out: list[bytes] = []
        if not self._started:
            out.append(self._message_start(data))
        if isinstance(data.get("usage"), dict):
            self._usage = data["usage"]
        for choice in data.get("choices") or []:
            if isinstance(choice, dict) and choice.get("index", 0) == 0:
                self._choice(choice, out)
        return out

    def finish(self) -> list[bytes]:
        """The upstream ended: close the message if it finished without `[DONE]` (some servers
        omit it); a stream cut before any finish_reason ends as cut."""
        return self._end() if self._finish is not None and not self.done else []

    def _message_start(self, chunk: dict[str, Any]) -> bytes:
        self._started = True
        message: dict[str, Any] = {
            "id": chunk.get("id"),
            "type": "message",
            "role": "assistant",
            "model": chunk.get("model"),
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": 0, "output_tokens": 0},
        }
        return sse({"type": "message_start", "message": message}, "message_start")

    def _start_block(self, block: dict[str, Any], out: list[bytes]) -> int:
        self._close(out)
        index = self.next_index
        self.next_index += 1
        self._open = index
        out.append(
            sse(
                {"type": "content_block_start", "index": index, "content_block": block},
                "content_block_start",
            )
        )
        return index

    def _close(self, out: list[bytes]) -> None:
        if self._open is not None:
            out.append(
                sse({"type": "content_block_stop", "index": self._open}, "content_block_stop")
            )
            self._open = None

    def _delta(self, index: int, delta: dict[str, Any], out: list[bytes]) -> None:
        out.append(
            sse(
                {"type": "content_block_delta", "index": index, "delta": delta},
                "content_block_delta",
            )
        )

    def _choice(self, choice: dict[str, Any], out: list[bytes]) -> None:
        delta = choice.get("delta") or {}
        for key in ("content", "refusal"):
            text = delta.get(key)
            if isinstance(text, str) and text:
                index = self._open
                if index is None or index in self._tools.values():
                    index = self._start_block({"type": "text", "text": ""}, out)
                self._delta(index, {"type": "text_delta", "text": text}, out)
        for call in delta.get("tool_calls") or []:
            if not isinstance(call, dict):
                continue
            fn = call.get("function") or {}
            position = call.get("index", 0)
            index = self._tools.get(position)
            if index is None:
                block = {"type": "tool_use", "id": call.get("id"), "name": fn.get("name") or ""}
                block["input"] = {}
                index = self._start_block(block, out)
                self._tools[position] = index
            arguments = fn.get("arguments")
            if isinstance(arguments, str) and arguments:
                self._delta(index, {"type": "input_json_delta", "partial_json": arguments}, out)
        if choice.get("finish_reason") is not None:
            self._finish = choice["finish_reason"]
            self._close(out)

    def _end(self) -> list[bytes]:
        self.done = True
        out: list[bytes] = []
        if not self._started:
            out.append(self._message_start({}))
        self._close(out)
        stop = FINISH_TO_STOP.get(self._finish or "stop", "end_turn")
        out.append(
            sse(
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": stop, "stop_sequence": None},
                    "usage": usage(self._usage),
                },
                "message_delta",
            )
        )
        out.append(sse({"type": "message_stop"}, "message_stop"))
        return out
