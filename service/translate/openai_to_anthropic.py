"""An OpenAI Chat Completions client in front of an Anthropic Messages upstream.

`request` turns a Chat Completions request into a Messages request; `response` and `error` turn
the upstream's answer back into the client's shape; `EventTranslator` does it for a stream, one
complete upstream SSE event at a time (Messages events in, chunks and `[DONE]` out).
"""

from __future__ import annotations

from typing import Any

import orjson

from ..errors import BadRequest
from .common import (
    DONE,
    STOP_TO_FINISH,
    StreamTranslator,
    Untranslatable,
    error_message,
    given,
    openai_error_type,
    sse,
    text_of,
)

UPSTREAM = "Anthropic Messages"

# Messages requires max_tokens; Chat Completions clients usually leave it out. Every current
# Claude model can produce at least this many tokens.
DEFAULT_MAX_TOKENS = 4096

# Fields that change the answer and have no Messages equivalent, unless they hold the value that
# means "off" (clients and SDK helpers often send those explicitly).
_NEUTRAL: dict[str, tuple[Any, ...]] = {
    "n": (1,),
    "presence_penalty": (0, 0.0),
    "frequency_penalty": (0, 0.0),
    "logprobs": (False,),
    "logit_bias": ({},),
    "store": (False,),
    "modalities": (["text"],),
}
REFUSED = (
    "top_logprobs",
    "seed",
    "audio",
    "prediction",
    "reasoning_effort",
    "web_search_options",
    "functions",
    "function_call",
    "verbosity",
)
# Fields that only steer the provider's infrastructure or its storage: dropped.
DROPPED = ("service_tier", "metadata", "stream_options", "safety_identifier", "prompt_cache_key")
_TRANSLATED = frozenset(
    "model messages max_tokens max_completion_tokens stop temperature top_p user stream tools"
    " tool_choice parallel_tool_calls response_format".split()
) | {*_NEUTRAL, *REFUSED, *DROPPED}


def request(body: dict[str, Any]) -> dict[str, Any]:
    """A Messages request with the meaning of this Chat Completions request. Fields this module
    does not know pass through unchanged (the upstream decides, as on an untranslated route)."""
    for key, neutral in _NEUTRAL.items():
        if given(body, key) and body[key] not in neutral:
            raise Untranslatable(key, UPSTREAM)
    for key in REFUSED:
        if given(body, key):
            raise Untranslatable(key, UPSTREAM)
    fmt = body.get("response_format")
    if fmt is not None and not (isinstance(fmt, dict) and fmt.get("type") == "text"):
        raise Untranslatable("response_format", UPSTREAM)
    out: dict[str, Any] = {}
    if "model" in body:
        out["model"] = body["model"]
    client_messages = body.get("messages")
    if not isinstance(client_messages, list):
        raise BadRequest("'messages' must be an array")
    system, messages = _messages(client_messages)
    if system:
        out["system"] = system
    out["messages"] = messages
    limit = body.get("max_completion_tokens")
    out["max_tokens"] = limit if limit is not None else body.get("max_tokens") or DEFAULT_MAX_TOKENS
    stop = body.get("stop")
    if isinstance(stop, str):
        out["stop_sequences"] = [stop]
    elif isinstance(stop, list) and stop:
        out["stop_sequences"] = stop
    for key in ("temperature", "top_p"):
        if given(body, key):
            out[key] = body[key]
    if isinstance(body.get("user"), str):
        out["metadata"] = {"user_id": body["user"]}
    if given(body, "stream"):
        out["stream"] = body["stream"]
    tools = body.get("tools")
    if isinstance(tools, list) and tools:
        out["tools"] = [_tool(t, f"tools[{i}]") for i, t in enumerate(tools)]
    choice = _tool_choice(body.get("tool_choice"))
    if body.get("parallel_tool_calls") is False and out.get("tools"):
        choice = {**(choice or {"type": "auto"}), "disable_parallel_tool_use": True}
    if choice is not None:
        out["tool_choice"] = choice
    for key, value in body.items():
        if key not in _TRANSLATED:
            out[key] = value
    return out


def _messages(
    client_messages: list[Any],
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """System blocks (every system/developer message, in order) and the conversation. A run of
    tool messages becomes one user message of tool_result blocks."""
    system: list[dict[str, Any]] = []
    messages: list[dict[str, Any]] = []
    for i, m in enumerate(client_messages):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise BadRequest(f"'{where}' must be an object")
        role = m.get("role")
        content = m.get("content")
        if role in ("system", "developer"):
            text = text_of(content, f"{where}.content", UPSTREAM)
            if text:
                system.append({"type": "text", "text": text})
        elif role == "user":
            messages.append({"role": "user", "content": _user_content(content, where)})
        elif role == "assistant":
            messages.append({"role": "assistant", "content": _assistant_content(m, where)})
        elif role == "tool":
            result = {"type": "tool_result", "tool_use_id": m.get("tool_call_id")}
            text = text_of(content, f"{where}.content", UPSTREAM)
            if text:  # an empty result is sent without content
                result["content"] = text
            last = messages[-1] if messages else None
            if last is not None and last["role"] == "user" and _all_results(last["content"]):
                last["content"].append(result)
            else:
                messages.append({"role": "user", "content": [result]})
        else:
            raise Untranslatable(f"{where}.role={role}", UPSTREAM)
    return system, messages


def _all_results(content: Any) -> bool:
    return isinstance(content, list) and all(b.get("type") == "tool_result" for b in content)


def _user_content(content: Any, where: str) -> Any:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise BadRequest(f"'{where}.content' must be a string or an array of parts")
    blocks = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            blocks.append({"type": "text", "text": part.get("text", "")})
        elif kind == "image_url":
            blocks.append(_image(part.get("image_url"), f"{where}.content[{j}]"))
        else:  # input_audio, file …
            raise Untranslatable(f"{where}.content[{j}].type={kind}", UPSTREAM)
    return blocks


def _image(image: Any, where: str) -> dict[str, Any]:
    url = image.get("url") if isinstance(image, dict) else image
    if not isinstance(url, str):
        raise BadRequest(f"'{where}.image_url.url' must be a string")
    if url.startswith("data:"):
        head, sep, data = url[5:].partition(",")
        media_type, _, encoding = head.partition(";")
        if not sep or encoding != "base64":
            raise Untranslatable(f"{where}.image_url (a data URL that is not base64)", UPSTREAM)
        return {
            "type": "image",
            "source": {"type": "base64", "media_type": media_type, "data": data},
        }
    return {"type": "image", "source": {"type": "url", "url": url}}


def _assistant_content(m: dict[str, Any], where: str) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = []
    content = m.get("content")
    if isinstance(content, list):
        content = "".join(
            p.get("text") or p.get("refusal") or "" for p in content if isinstance(p, dict)
        )
    if isinstance(content, str) and content:
        blocks.append({"type": "text", "text": content})
    if given(m, "function_call"):
        raise Untranslatable(f"{where}.function_call", UPSTREAM)
    for k, call in enumerate(m.get("tool_calls") or []):
        fn = call.get("function") if isinstance(call, dict) else None
        if not isinstance(fn, dict):
            raise Untranslatable(f"{where}.tool_calls[{k}].type={call.get('type')}", UPSTREAM)
        try:
            arguments = orjson.loads(fn.get("arguments") or "{}")
        except orjson.JSONDecodeError:
            raise BadRequest(f"'{where}.tool_calls[{k}].function.arguments' is not JSON") from None
        blocks.append(
            {"type": "tool_use", "id": call.get("id"), "name": fn.get("name"), "input": arguments}
        )
    return blocks


def _tool(tool: Any, where: str) -> dict[str, Any]:
    if not isinstance(tool, dict) or tool.get("type") != "function":
        kind = tool.get("type") if isinstance(tool, dict) else None
        raise Untranslatable(f"{where}.type={kind}", UPSTREAM)
    fn = tool.get("function") or {}
    out: dict[str, Any] = {"name": fn.get("name")}
    if given(fn, "description"):
        out["description"] = fn["description"]
    out["input_schema"] = fn.get("parameters") or {"type": "object", "properties": {}}
    return out


def _tool_choice(choice: Any) -> dict[str, Any] | None:
    if choice is None:
        return None
    if choice == "auto":
        return {"type": "auto"}
    if choice == "required":
        return {"type": "any"}
    if choice == "none":
        return {"type": "none"}
    if isinstance(choice, dict) and choice.get("type") == "function":
        return {"type": "tool", "name": (choice.get("function") or {}).get("name")}
    raise Untranslatable("tool_choice", UPSTREAM)


def usage(u: Any) -> dict[str, Any]:
    """OpenAI usage from Anthropic usage: prompt_tokens include the cache reads and writes."""
    if not isinstance(u, dict):
        u = {}
    cached = u.get("cache_read_input_tokens") or 0
    prompt = (u.get("input_tokens") or 0) + cached + (u.get("cache_creation_input_tokens") or 0)
    completion = u.get("output_tokens") or 0
    out: dict[str, Any] = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }
    if "cache_read_input_tokens" in u:
        out["prompt_tokens_details"] = {"cached_tokens": cached}
    return out


def response(body: dict[str, Any], created: int) -> dict[str, Any]:
    """The Chat Completions response for an Anthropic message (one choice)."""
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for block in body.get("content") or []:
        if not isinstance(block, dict):
            continue
        if block.get("type") == "text":
            texts.append(block.get("text", ""))
        elif block.get("type") == "tool_use":
            calls.append(
                {
                    "id": block.get("id"),
                    "type": "function",
                    "function": {
                        "name": block.get("name"),
                        "arguments": orjson.dumps(block.get("input", {})).decode(),
                    },
                }
            )
        # thinking and server-tool blocks: Chat Completions has no place for them.
    message: dict[str, Any] = {
        "role": "assistant",
        "content": "".join(texts) if texts else None,
        "refusal": None,
    }
    if calls:
        message["tool_calls"] = calls
    return {
        "id": body.get("id"),
        "object": "chat.completion",
        "created": created,
        "model": body.get("model"),
        "choices": [
            {
                "index": 0,
                "message": message,
                "logprobs": None,
                "finish_reason": STOP_TO_FINISH.get(body.get("stop_reason") or "", "stop"),
            }
        ],
        "usage": usage(body.get("usage")),
    }


def error(status: int, body: bytes) -> dict[str, Any]:
    """The OpenAI error for an upstream error: Anthropic's type is kept (it is more precise
    than the status, e.g. overloaded_error), else one follows from the status."""
    message, kind = error_message(status, body)
    return {
        "error": {
            "message": message,
            "type": kind or openai_error_type(status),
            "param": None,
            "code": None,
        }
    }


class EventTranslator(StreamTranslator):
    """Anthropic Messages events in, Chat Completions chunks and `[DONE]` out."""

    __slots__ = ("_finished", "_head", "_tools", "_usage", "include_usage")

    def __init__(self, include_usage: bool, created: int) -> None:
        super().__init__()
        self.include_usage = include_usage  # the client asked for stream_options.include_usage
        self._head: dict[str, Any] = {
            "id": None,
            "object": "chat.completion.chunk",
            "created": created,
            "model": None,
        }
        self._tools: dict[int, int] = {}  # content block index -> OpenAI tool_call index
        self._usage: dict[str, Any] = {}
        self._finished = False  # the finish_reason chunk went out

    def on_event(self, data: dict[str, Any]) -> list[bytes]:
        kind = data.get("type")
        if kind == "message_start":
            message = data.get("message") or {}
            self._head["id"] = message.get("id")
            self._head["model"] = message.get("model")
            self._usage.update(message.get("usage") or {})
            return [self._chunk({"role": "assistant", "content": ""})]
        if kind == "content_block_start":
            return self._block_start(data)
        if kind == "content_block_delta":
            return self._block_delta(data)
        if kind == "message_delta":
            self._usage.update(data.get("usage") or {})
            reason = (data.get("delta") or {}).get("stop_reason")
            self._finished = True
            return [self._chunk({}, STOP_TO_FINISH.get(reason or "", "stop"))]
        if kind == "message_stop":
            return self._end()
        if kind == "error":
            self.done = True
            err = data.get("error") or {}
            message = err.get("message") if isinstance(err, dict) else None
            body = orjson.dumps({"error": {"message": message, "type": err.get("type")}})
            return [sse(error(500, body), "error")]
        return []  # ping, content_block_stop, and event types added later

    def finish(self) -> list[bytes]:
        """The upstream ended: finish the stream if the message did (without message_stop); a
        stream cut before its stop reason ends as cut, without `[DONE]`."""
        return self._end() if self._finished and not self.done else []

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return sse({**self._head, "choices": [choice]})

    def _block_start(self, data: dict[str, Any]) -> list[bytes]:
        block = data.get("content_block") or {}
        if block.get("type") == "text" and block.get("text"):
            return [self._chunk({"content": block["text"]})]
        if block.get("type") == "tool_use":
            position = len(self._tools)
            self._tools[data.get("index", 0)] = position
            call = {
                "index": position,
                "id": block.get("id"),
                "type": "function",
                "function": {"name": block.get("name"), "arguments": ""},
            }
            return [self._chunk({"tool_calls": [call]})]
        return []  # thinking and server-tool blocks have no Chat Completions form

    def _block_delta(self, data: dict[str, Any]) -> list[bytes]:
        delta = data.get("delta") or {}
        if delta.get("type") == "text_delta":
            return [self._chunk({"content": delta.get("text", "")})]
        if delta.get("type") == "input_json_delta":
            position = self._tools.get(data.get("index", 0))
            if position is None:
                return []
            call = {"index": position, "function": {"arguments": delta.get("partial_json", "")}}
            return [self._chunk({"tool_calls": [call]})]
        return []

    def _end(self) -> list[bytes]:
        self.done = True
        out = []
        if self.include_usage:
            out.append(sse({**self._head, "choices": [], "usage": usage(self._usage)}))
        out.append(DONE)
        return out
