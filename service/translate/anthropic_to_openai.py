"""An Anthropic Messages client in front of an OpenAI Chat Completions upstream.

`request` turns a Messages request into a Chat Completions request; `response` and `error` turn
the upstream's answer back into the client's shape; `EventTranslator` does it for a stream, one
complete upstream SSE event at a time (chunks in, `message_start` … `message_stop` out).
"""

from __future__ import annotations

import secrets
from typing import Any

import orjson

from ..errors import BadRequest, UpstreamJSONError
from ..proxy.body import dumps_exact, loads_exact
from .common import (
    ANTHROPIC_TO_EFFORT,
    DEFAULT_OPTIONS,
    CallPositions,
    Drops,
    StreamTranslator,
    TranslationOptions,
    Untranslatable,
    WholeArguments,
    anthropic_error_type,
    carried,
    carrying_id,
    cut_event,
    effort_for_budget,
    end_user_id,
    error_message,
    fitting_tool_name,
    found_tools,
    given,
    output_limit_field,
    sse,
    stop_reason,
)

UPSTREAM = "OpenAI Chat Completions"

# Fields that change the answer and have no Chat Completions equivalent: refused.
REFUSED = ("container", "mcp_servers")
# Hints (their absence does not change what is asked): dropped, refused on a strict route.
HINTS = ("context_management", "service_tier", "cache_control")
# Sampling knobs passed through as they are: vLLM, Ollama, DashScope (Qwen) and most
# self-hosted servers take them; OpenAI itself answers 400. Refused on a strict route.
PASSED = ("top_k",)
# Tool fields that only steer loading, caching or streaming: dropped with their own label.
TOOL_HINTS = (
    "cache_control",
    "defer_loading",
    "input_examples",
    "eager_input_streaming",
    "allowed_callers",
)
_TRANSLATED = frozenset(
    "model messages system max_tokens stop_sequences temperature top_p metadata stream"
    " tools tool_choice thinking output_config output_format".split()
) | {*REFUSED, *HINTS}


def request(
    body: dict[str, Any],
    options: TranslationOptions = DEFAULT_OPTIONS,
    dropped: list[str] | None = None,
) -> dict[str, Any]:
    """A Chat Completions request with the meaning of this Messages request; what it leaves out
    is appended to `dropped`. Fields this module does not know pass through unchanged (the
    upstream decides, as on an untranslated route)."""
    drop = Drops(options, [] if dropped is None else dropped, UPSTREAM)
    for key in REFUSED + (PASSED if options.strict else ()):
        if given(body, key):
            raise Untranslatable(key, UPSTREAM)
    for key in HINTS:
        if given(body, key):
            drop(key, key)
    out: dict[str, Any] = {}
    if "model" in body:
        out["model"] = body["model"]
    messages: list[dict[str, Any]] = []
    if given(body, "system"):
        text = _text(body["system"], "system", drop)
        if text:
            messages.append({"role": "system", "content": text})
    client_messages = body.get("messages")
    if not isinstance(client_messages, list):
        raise BadRequest("'messages' must be an array")
    for i, m in enumerate(client_messages):
        messages.extend(_message(m, f"messages[{i}]", options, drop))
    out["messages"] = messages
    if "max_tokens" in body:
        out[output_limit_field(options)] = body["max_tokens"]
    if given(body, "stop_sequences"):
        out["stop"] = body["stop_sequences"]
    for key in ("temperature", "top_p"):
        if given(body, key):
            out[key] = body[key]
    metadata = body.get("metadata")
    if isinstance(metadata, dict):
        user_id = metadata.get("user_id")
        if isinstance(user_id, str) and (user := end_user_id(user_id)) is not None:
            out["user"] = user
        for key, value in metadata.items():
            if key != "user_id" and value is not None:
                drop("metadata", f"metadata.{key}")
    effort = _reasoning_effort(body.get("thinking"), body.get("output_config"), drop)
    # output_config.effort went into the effort (adaptive thinking), sent or not
    effort_read = effort is not None and _adaptive(body)
    if effort is not None and not options.reasoning_effort:
        drop.record("thinking")  # the operator turned the mapping off for this upstream
        effort = None
    if effort is not None:
        out["reasoning_effort"] = effort
    fmt = _output_config(body, effort_read, drop)
    if fmt is not None:
        out["response_format"] = fmt
    if given(body, "stream"):
        out["stream"] = body["stream"]
        if body["stream"] is True:  # usage arrives in a last chunk only when asked for
            out["stream_options"] = {"include_usage": True}
    _tools(body, out, drop)
    for key, value in body.items():
        if key not in _TRANSLATED:
            out[key] = value
    return out


def _adaptive(body: dict[str, Any]) -> bool:
    thinking = body.get("thinking")
    return isinstance(thinking, dict) and thinking.get("type") == "adaptive"


def _reasoning_effort(thinking: Any, config: Any, drop: Drops) -> str | None:
    """`reasoning_effort` for Anthropic's `thinking`: a budget by the thresholds of
    `common.effort_for_budget`; adaptive thinking by `output_config.effort` (Anthropic's default
    effort, high, without one); disabled: nothing (no value means "off" on every upstream)."""
    if thinking is None:
        return None
    if not isinstance(thinking, dict):
        raise BadRequest("'thinking' must be an object")
    kind = thinking.get("type")
    if kind == "disabled":
        return None
    if kind == "enabled":
        budget = thinking.get("budget_tokens")
        if isinstance(budget, int) and not isinstance(budget, bool):
            return effort_for_budget(budget)
        drop("thinking", "thinking.budget_tokens")
        return None
    if kind == "adaptive":
        effort = config.get("effort") if isinstance(config, dict) else None
        return ANTHROPIC_TO_EFFORT.get(effort, "high") if isinstance(effort, str) else "high"
    drop("thinking", f"thinking.type={kind}")
    return None


def _output_config(body: dict[str, Any], effort_used: bool, drop: Drops) -> Any:
    """The `response_format` for `output_config.format` (or the older `output_format`); the
    other parts of `output_config` are hints: `effort` is used only with adaptive thinking."""
    fmt = None
    if given(body, "output_format"):
        fmt = _format(body["output_format"], "output_format")
    config = body.get("output_config")
    if config is None:
        return fmt
    if not isinstance(config, dict):
        raise BadRequest("'output_config' must be an object")
    for key, value in config.items():
        if value is None:
            continue
        if key == "format":
            fmt = _format(value, "output_config.format")
        elif not (key == "effort" and effort_used and value in ANTHROPIC_TO_EFFORT):
            drop("output_config", f"output_config.{key}")
    return fmt


def _format(value: Any, where: str) -> dict[str, Any]:
    if isinstance(value, dict) and value.get("type") == "json_schema":
        schema = value.get("schema")
        if not isinstance(schema, dict):
            raise BadRequest(f"'{where}.schema' must be an object")
        return {
            "type": "json_schema",
            "json_schema": {"name": "output", "schema": schema, "strict": True},
        }
    kind = value.get("type") if isinstance(value, dict) else None
    raise Untranslatable(f"{where}.type={kind}", UPSTREAM)


def _hints(block: dict[str, Any], where: str, drop: Drops) -> None:
    if given(block, "cache_control"):
        drop("cache_control", f"{where}.cache_control")


def _text(blocks: Any, where: str, drop: Drops) -> str:
    """The text of a system prompt: a string, or text blocks joined by a blank line."""
    if isinstance(blocks, str):
        return blocks
    if blocks is None:
        return ""
    if not isinstance(blocks, list):
        raise Untranslatable(where, UPSTREAM)
    out = []
    for i, block in enumerate(blocks):
        if not isinstance(block, dict) or block.get("type") != "text":
            kind = block.get("type") if isinstance(block, dict) else None
            raise Untranslatable(f"{where}[{i}].type={kind}", UPSTREAM)
        _hints(block, f"{where}[{i}]", drop)
        out.append(str(block.get("text", "")))
    return "\n\n".join(out)


def _message(m: Any, where: str, options: TranslationOptions, drop: Drops) -> list[dict[str, Any]]:
    if not isinstance(m, dict):
        raise BadRequest(f"'{where}' must be an object")
    role = m.get("role")
    content = m.get("content")
    if role == "user":
        return _user(content, where, drop)
    if role == "assistant":
        return [_assistant(content, where, options, drop)]
    if role in ("system", "developer"):
        # Claude Code sends one when it does not know the model: a system message in place.
        text = _text(content, f"{where}.content", drop)
        return [{"role": "system", "content": text}] if text else []
    raise Untranslatable(f"{where}.role={role}", UPSTREAM)


def _blocks(content: Any, where: str) -> list[dict[str, Any]]:
    if not isinstance(content, list) or not all(isinstance(b, dict) for b in content):
        raise BadRequest(f"'{where}.content' must be a string or an array of blocks")
    return content


def _user(content: Any, where: str, drop: Drops) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"role": "user", "content": content}]
    tool_messages: list[dict[str, Any]] = []
    tool_parts: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    for j, block in enumerate(_blocks(content, where)):
        at = f"{where}.content[{j}]"
        _hints(block, at, drop)
        kind = block.get("type")
        if kind == "text":
            parts.append({"type": "text", "text": block.get("text", "")})
        elif kind == "image":
            parts.append(_image(block.get("source"), at))
        elif kind == "document":
            parts.extend(_document(block, at, drop))
        elif kind == "tool_result":
            # Chat Completions tool messages carry text only: a result's images and documents
            # follow them in the user message. `is_error` has no field; the result's text
            # carries the error.
            text, extra = _tool_result_content(block.get("content"), at, drop)
            call_id, _ = carried(block.get("tool_use_id"))
            tool_messages.append({"role": "tool", "tool_call_id": call_id, "content": text})
            tool_parts.extend(extra)
        else:
            raise Untranslatable(f"{at}.type={kind}", UPSTREAM)
    # Tool messages must directly follow the assistant's tool calls.
    parts = tool_parts + parts
    return tool_messages + ([{"role": "user", "content": parts}] if parts else [])


def _tool_result_content(content: Any, where: str, drop: Drops) -> tuple[str, list[dict[str, Any]]]:
    if content is None or isinstance(content, str):
        return content or "", []
    texts: list[str] = []
    parts: list[dict[str, Any]] = []
    found: list[str] = []  # the tools a tool search loaded, told where the first one was
    first = 0
    for k, block in enumerate(_blocks(content, where)):
        at = f"{where}.content[{k}]"
        _hints(block, at, drop)
        kind = block.get("type")
        if kind == "text":
            text = block.get("text", "")
            if not isinstance(text, str):
                raise BadRequest(f"'{at}.text' must be a string")
            texts.append(text)
        elif kind == "tool_reference":
            # A tool the client's tool search loaded (Claude Code's ToolSearch): its definition
            # comes with the request's tools (`defer_loading` dropped, so it is offered); the
            # model is told its name.
            name = block.get("tool_name")
            if not isinstance(name, str):
                raise BadRequest(f"'{at}.tool_name' must be a string")
            if not found:
                first = len(texts)
            found.append(f"- {name}")
        elif kind == "image":
            parts.append(_image(block.get("source"), at))
        elif kind == "document":
            parts.extend(_document(block, at, drop))
        else:
            raise Untranslatable(f"{at}.type={kind}", UPSTREAM)
    if found:
        texts.insert(first, found_tools(found))
    return "\n".join(texts), parts


def _image(source: Any, where: str) -> dict[str, Any]:
    if isinstance(source, dict):
        if source.get("type") == "base64":
            url = f"data:{source.get('media_type')};base64,{source.get('data')}"
            return {"type": "image_url", "image_url": {"url": url}}
        if source.get("type") == "url":
            return {"type": "image_url", "image_url": {"url": source.get("url")}}
        raise Untranslatable(f"{where}.source.type={source.get('type')}", UPSTREAM)
    raise BadRequest(f"'{where}.source' must be an object")


def _document(block: dict[str, Any], where: str, drop: Drops) -> list[dict[str, Any]]:
    """Content parts for a document: plain text and content sources as text (and image) parts,
    a base64 PDF as a `file` part. A PDF by URL or by Files API id has no Chat Completions form
    (the upstream could not read it): refused."""
    citations = block.get("citations")
    if isinstance(citations, dict) and citations.get("enabled") is True:
        drop("citations", f"{where}.citations")
    source = block.get("source")
    if not isinstance(source, dict):
        raise BadRequest(f"'{where}.source' must be an object")
    kind = source.get("type")
    title, context = block.get("title"), block.get("context")
    head = [t for t in (title, context) if isinstance(t, str) and t]
    if kind == "text":
        data = source.get("data")
        text = "\n\n".join([*head, data if isinstance(data, str) else ""])
        return [{"type": "text", "text": text}]
    if kind == "content":
        inner = source.get("content")
        if isinstance(inner, str):
            return [{"type": "text", "text": "\n\n".join([*head, inner])}]
        parts: list[dict[str, Any]] = [{"type": "text", "text": t} for t in head]
        for k, b in enumerate(_blocks(inner, f"{where}.source")):
            at = f"{where}.source.content[{k}]"
            _hints(b, at, drop)
            if b.get("type") == "text":
                parts.append({"type": "text", "text": b.get("text", "")})
            elif b.get("type") == "image":
                parts.append(_image(b.get("source"), at))
            else:
                raise Untranslatable(f"{at}.type={b.get('type')}", UPSTREAM)
        return parts
    if kind == "base64" and source.get("media_type") == "application/pdf":
        name = title if isinstance(title, str) and title else "document.pdf"
        data_url = f"data:application/pdf;base64,{source.get('data')}"
        file = {"type": "file", "file": {"filename": name, "file_data": data_url}}
        if isinstance(context, str) and context:
            return [{"type": "text", "text": context}, file]
        return [file]
    raise Untranslatable(f"{where}.source.type={kind}", UPSTREAM)


def _assistant(
    content: Any, where: str, options: TranslationOptions, drop: Drops
) -> dict[str, Any]:
    if isinstance(content, str):
        return {"role": "assistant", "content": content}
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    reasoning: list[str] = []
    for j, block in enumerate(_blocks(content, where)):
        at = f"{where}.content[{j}]"
        _hints(block, at, drop)
        kind = block.get("type")
        if kind == "text":
            text = block.get("text", "")
            if not isinstance(text, str):
                raise BadRequest(f"'{at}.text' must be a string")
            texts.append(text)
        elif kind == "tool_use":
            arguments = dumps_exact(block.get("input", {})).decode()
            call_id, carried_extra = carried(block.get("id"))
            call = {
                "id": call_id,
                "type": "function",
                "function": {"name": _upstream_name(block.get("name")), "arguments": arguments},
            }
            if carried_extra is not None:  # the upstream's own (common.carrying_id)
                call["extra_content"] = carried_extra
            calls.append(call)
        elif kind == "thinking":
            # Earlier reasoning goes back as `reasoning_content` when the upstream takes it
            # (`reasoning_history`); an empty block (display omitted) carries nothing.
            thought = block.get("thinking")
            if isinstance(thought, str) and thought:
                if options.reasoning_history:
                    reasoning.append(thought)
                else:
                    drop("reasoning_history", f"{at}.type=thinking")
        elif kind == "redacted_thinking":  # encrypted: no upstream but Anthropic reads it
            drop("reasoning_history", f"{at}.type=redacted_thinking")
        else:
            raise Untranslatable(f"{at}.type={kind}", UPSTREAM)
    msg: dict[str, Any] = {"role": "assistant", "content": "".join(texts) if texts else None}
    if reasoning:
        msg["reasoning_content"] = "\n\n".join(reasoning)
    if calls:
        msg["tool_calls"] = calls
    elif msg["content"] is None:
        msg["content"] = ""
    return msg


def _tools(body: dict[str, Any], out: dict[str, Any], drop: Drops) -> None:
    """`tools` and `tool_choice`. Server tools (web search, code execution, …: every tool with a
    `type` other than custom) offered are dropped, the model answers without them; a
    `tool_choice` that forces one (by name, or `any` when only server tools are offered) is
    refused."""
    tools = body.get("tools")
    server: set[Any] = set()
    functions: list[dict[str, Any]] = []
    if isinstance(tools, list):
        for i, t in enumerate(tools):
            fn = _tool(t, f"tools[{i}]", drop)
            if fn is None:
                server.add(t.get("name"))
            else:
                functions.append(fn)
        if functions:  # Chat Completions refuses an empty `tools`
            out["tools"] = functions
    choice = body.get("tool_choice")
    if not isinstance(choice, dict):
        return
    kind = choice.get("type")
    if not tools and kind in ("auto", "none"):
        return  # nothing to choose from: Chat Completions refuses a tool_choice without tools
    if kind == "tool" and server and choice.get("name") in server:
        raise Untranslatable(f"tool_choice (forces the server tool {choice.get('name')})", UPSTREAM)
    if server and not functions:
        if kind in ("any", "tool"):
            raise Untranslatable(f"tool_choice.type={kind} (only server tools)", UPSTREAM)
        return  # auto / none over no tools: nothing to say
    out["tool_choice"] = _tool_choice(choice)
    if choice.get("disable_parallel_tool_use") is True and out.get("tools"):
        out["parallel_tool_calls"] = False


def _tool(tool: Any, where: str, drop: Drops) -> dict[str, Any] | None:
    """The function tool for a custom tool; None for a server tool (dropped)."""
    if not isinstance(tool, dict):
        raise BadRequest(f"'{where}' must be an object")
    if tool.get("type") not in (None, "custom"):
        # Server tools (web search, code execution, bash, computer use …) run at Anthropic or
        # have Anthropic's own schema.
        drop("server_tool", f"{where}.type={tool.get('type')}")
        return None
    for key in TOOL_HINTS:
        if tool.get(key) not in (None, False, [], {}):
            drop(key, f"{where}.{key}")
    fn: dict[str, Any] = {"name": _upstream_name(tool.get("name"))}
    if given(tool, "description"):
        fn["description"] = tool["description"]
    fn["parameters"] = tool.get("input_schema") or {"type": "object", "properties": {}}
    if tool.get("strict") is True:
        fn["strict"] = True
    return {"type": "function", "function": fn}


def _upstream_name(name: Any) -> Any:
    """A tool's name upstream: OpenAI takes 64 characters, Anthropic (and so Claude Code, whose
    MCP tools are `mcp__<server>__<tool>`) 128; a longer one is cut (`fitting_tool_name`) and
    the answer's calls name it as the client did (`client_names`)."""
    return fitting_tool_name(name) if isinstance(name, str) else name


def client_names(payload: dict[str, Any]) -> dict[str, str]:
    """The client's tool names that go upstream cut, by the cut name (empty: none is)."""
    tools = payload.get("tools")
    names = (t.get("name") for t in tools if isinstance(t, dict)) if isinstance(tools, list) else ()
    return {
        cut: name
        for name in names
        if isinstance(name, str) and (cut := fitting_tool_name(name)) != name
    }


def _tool_choice(choice: dict[str, Any]) -> Any:
    kind = choice.get("type")
    if kind == "auto":
        return "auto"
    if kind == "any":
        return "required"
    if kind == "none":
        return "none"
    if kind == "tool":
        return {"type": "function", "function": {"name": _upstream_name(choice.get("name"))}}
    raise Untranslatable(f"tool_choice.type={kind}", UPSTREAM)


# The signature of a thinking block made from an upstream's reasoning text: Anthropic signs its
# own thinking so that it can check the blocks sent back; no other upstream does. Clients keep
# and show the block (the anthropic SDK and Claude Code require the field, not a value).
SIGNATURE = ""


def reasoning_text(message: dict[str, Any]) -> str:
    """The reasoning text of a Chat Completions message or delta: `reasoning_content` (DeepSeek,
    Qwen, vLLM) or `reasoning` (Ollama, newer vLLM, OpenRouter)."""
    for key in ("reasoning_content", "reasoning"):
        value = message.get(key)
        if isinstance(value, str) and value:
            return value
    return ""


def usage(u: Any) -> dict[str, int]:
    """Anthropic usage from OpenAI usage. OpenAI's prompt_tokens include cached tokens;
    Anthropic's input_tokens do not (they are cache_read_input_tokens)."""
    if not isinstance(u, dict):
        return {"input_tokens": 0, "output_tokens": 0}
    prompt = u.get("prompt_tokens") or 0
    details = u.get("prompt_tokens_details")
    details = details if isinstance(details, dict) else {}
    cached = details.get("cached_tokens")
    written = details.get("cache_write_tokens")
    written = written if isinstance(written, int) else 0
    out = {
        "input_tokens": prompt - (cached or 0) - written,
        "output_tokens": u.get("completion_tokens") or 0,
    }
    if isinstance(cached, int):
        out["cache_read_input_tokens"] = cached
    if written:
        out["cache_creation_input_tokens"] = written
    return out


def _tool_input(arguments: Any) -> dict[str, Any]:
    if arguments in (None, ""):
        return {}
    try:
        value = loads_exact(arguments) if isinstance(arguments, str) else arguments
    except ValueError:  # orjson's JSONDecodeError and json's are ValueErrors
        raise UpstreamJSONError() from None
    if not isinstance(value, dict):
        raise UpstreamJSONError()
    return value


def response(body: dict[str, Any], names: dict[str, str] | None = None) -> dict[str, Any]:
    """The Anthropic message for a Chat Completions response (its first choice)."""
    choices = body.get("choices")
    choice = choices[0] if isinstance(choices, list) and choices else {}
    message = choice.get("message") or {}
    content: list[dict[str, Any]] = []
    reasoning = reasoning_text(message)
    if reasoning:
        content.append({"type": "thinking", "thinking": reasoning, "signature": SIGNATURE})
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
        name = fn.get("name")
        content.append(
            {
                "type": "tool_use",
                "id": carrying_id(_tool_use_id(call.get("id")), call.get("extra_content")),
                "name": names.get(name, name) if names and isinstance(name, str) else name,
                "input": _tool_input(fn.get("arguments")),
            }
        )
    return {
        "id": body.get("id"),
        "type": "message",
        "role": "assistant",
        "model": body.get("model"),
        "content": content,
        "stop_reason": stop_reason(
            choice.get("finish_reason"), any(c["type"] == "tool_use" for c in content)
        ),
        "stop_sequence": None,
        "usage": usage(body.get("usage")),
    }


def error(status: int, body: bytes) -> dict[str, Any]:
    """The Anthropic error for an upstream error (its type follows the status: Anthropic's set
    of error types is closed)."""
    message, _ = error_message(status, body)
    return {"type": "error", "error": {"type": anthropic_error_type(status), "message": message}}


def _tool_use_id(call_id: Any) -> str:
    """The call's id, or one made up when the upstream sent none (some servers do not): the
    client sends its tool_result back under this id, so it must be a string, and unique."""
    if isinstance(call_id, str) and call_id:
        return call_id
    return "toolu_" + secrets.token_hex(12)


class _ToolCall:
    """One tool call of the upstream (by its Chat tool_calls index)."""

    __slots__ = ("args", "block", "extra", "held", "id", "name", "whole")

    def __init__(self, id_: str, name: str) -> None:
        self.id = id_
        self.name = name
        self.extra: Any = None  # its `extra_content`, carried in the id (common.carrying_id)
        self.block: int | None = None  # its content block's index once started
        self.args: list[str] = []  # the fragments sent in its block
        self.held: list[str] = []  # fragments kept while it waits (common.WholeArguments)
        self.whole = WholeArguments()  # whether `args` add up to one JSON value yet


class EventTranslator(StreamTranslator):
    """Chat Completions chunks in, Anthropic Messages events out; holds the open block, and the
    tool calls that wait for it (common.WholeArguments)."""

    __slots__ = (
        "_call",
        "_finish",
        "_held",
        "_kind",
        "_open",
        "_positions",
        "_started",
        "_tools",
        "_usage",
        "_waiting",
        "names",
        "next_index",
    )

    def __init__(self, names: dict[str, str] | None = None) -> None:
        super().__init__()
        self.names = names or {}  # the client's tool names, by the cut name upstream
        self._started = False
        self._open: int | None = None  # index of the open content block
        self._kind = ""  # its type: text, thinking or tool_use
        self._call: _ToolCall | None = None  # the open block's call when it is a tool_use
        self._tools: dict[int, _ToolCall] = {}  # by OpenAI tool_call index
        self._positions = CallPositions()  # which call a delta is for (its index, or its id)
        self._waiting: list[_ToolCall] = []  # calls not started yet, in the order they came
        # Text and thinking that came while a call's arguments were not whole: (block type,
        # text), written once they are (`_calls_pending`)
        self._held: list[tuple[str, str]] = []
        self.next_index = 0
        self._finish: str | None = None
        self._usage: Any = None

    def on_done(self) -> list[bytes]:
        return self._end()

    def on_event(self, data: dict[str, Any]) -> list[bytes]:
        if "error" in data:
            self.done = self.broken = True
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
        omit it); a stream cut before any finish_reason ends with an error event, never as
        complete (its open block is left open: a half-streamed tool call must not be run)."""
        if self.done:
            return []
        if self._finish is not None:
            return self._end()
        self.done = self.broken = True
        return [cut_event(anthropic=True)]

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
        self._kind = block["type"]
        out.append(
            sse(
                {"type": "content_block_start", "index": index, "content_block": block},
                "content_block_start",
            )
        )
        return index

    def _close(self, out: list[bytes]) -> None:
        if self._open is not None:
            if self._kind == "thinking":  # as Anthropic's own: the signature ends the block
                self._delta(self._open, {"type": "signature_delta", "signature": SIGNATURE}, out)
            out.append(
                sse({"type": "content_block_stop", "index": self._open}, "content_block_stop")
            )
            self._open = None
            self._kind = ""
            self._call = None

    def _delta(self, index: int, delta: dict[str, Any], out: list[bytes]) -> None:
        out.append(
            sse(
                {"type": "content_block_delta", "index": index, "delta": delta},
                "content_block_delta",
            )
        )

    def _choice(self, choice: dict[str, Any], out: list[bytes]) -> None:
        delta = choice.get("delta") or {}
        reasoning = reasoning_text(delta)
        if reasoning:
            self._text("thinking", reasoning, out)
        for key in ("content", "refusal"):
            text = delta.get(key)
            if isinstance(text, str) and text:
                self._text("text", text, out)
        calls = delta.get("tool_calls") or []
        for call in calls:
            if isinstance(call, dict):
                self._tool_delta(call, out)
        if calls and self._held and not self._calls_pending():
            self._release(out)
        if choice.get("finish_reason") is not None:
            self._finish = choice["finish_reason"]
            self._close_calls(out)

    def _calls_pending(self) -> bool:
        """Whether a tool call is not whole yet: the open one's arguments do not add up to
        JSON, or a call waits to start. Text or thinking then waits too: Chat Completions may
        send a call's name, then text, then its arguments, and a Messages block cannot take
        more after another block began."""
        return bool(self._waiting) or (
            self._call is not None and not self._call.whole(self._call.args)
        )

    def _text(self, kind: str, text: str, out: list[bytes]) -> None:
        """A text or thinking delta: written to its block (`kind`), or held while a tool
        call is not whole."""
        if self._held or self._calls_pending():
            self._held.append((kind, text))
            return
        index = self._open
        if index is None or self._kind != kind:
            if kind == "thinking":
                block = {"type": "thinking", "thinking": "", "signature": SIGNATURE}
            else:
                block = {"type": "text", "text": ""}
            index = self._start_block(block, out)
        field = "thinking" if kind == "thinking" else "text"
        self._delta(index, {"type": f"{field}_delta", field: text}, out)

    def _release(self, out: list[bytes]) -> None:
        """The held text and thinking, in the order they came."""
        held, self._held = self._held, []
        for kind, text in held:
            self._text(kind, text, out)

    def _tool_delta(self, call: dict[str, Any], out: list[bytes]) -> None:
        fn = call.get("function") or {}
        position = self._positions(call)
        tool = self._tools.get(position)
        if tool is None:
            tool = self._tools[position] = _ToolCall(
                _tool_use_id(call.get("id")), fn.get("name") or ""
            )
            self._waiting.append(tool)
        elif tool.block is None and not tool.name and isinstance(fn.get("name"), str):
            tool.name = fn["name"]  # it came after the call's first piece, before its block
        if tool.block is None and isinstance(call.get("extra_content"), dict):
            tool.extra = call["extra_content"]  # (after its block started: too late for its id)
        arguments = fn.get("arguments")
        if isinstance(arguments, str) and arguments:
            if tool.block is None:
                tool.held.append(arguments)
            elif tool is self._call:
                tool.args.append(arguments)
                self._delta(
                    tool.block, {"type": "input_json_delta", "partial_json": arguments}, out
                )
            elif arguments.strip():
                # After its block stopped: its arguments had added up to a JSON value (text
                # that comes before they do waits for them: `_text`). Sent as before (the
                # upstream's stream is not one a client can rebuild); whitespace is dropped.
                self._delta(
                    tool.block, {"type": "input_json_delta", "partial_json": arguments}, out
                )
        if self._waiting and (self._call is None or self._call.whole(self._call.args)):
            self._start_waiting(out)

    def _start_waiting(self, out: list[bytes], final: bool = False) -> None:
        """Start the waiting calls in order, each with its fragments so far, while the open
        one's arguments are whole (the last one stays open: more may come for it). A call
        without its name yet waits for it (some servers send the name after the call's first
        piece; its block started with an empty name) unless this is the `final` start."""
        while self._waiting and (self._call is None or self._call.whole(self._call.args)):
            if not self._waiting[0].name and not final:
                return
            tool = self._waiting.pop(0)
            name = self.names.get(tool.name, tool.name)
            block = {
                "type": "tool_use",
                "id": carrying_id(tool.id, tool.extra),
                "name": name,
                "input": {},
            }
            tool.block = self._start_block(block, out)
            self._call = tool
            if tool.held:
                fragments, tool.held = tool.held, []
                tool.args = fragments
                partial = "".join(fragments)
                self._delta(tool.block, {"type": "input_json_delta", "partial_json": partial}, out)

    def _close_calls(self, out: list[bytes]) -> None:
        """The finish: every waiting call is started and the last block closed."""
        while self._waiting:
            self._call = None  # the finish: the open call gets nothing more
            self._start_waiting(out, final=True)
        self._call = None
        self._release(out)
        self._close(out)

    def _end(self) -> list[bytes]:
        self.done = True
        out: list[bytes] = []
        if not self._started:
            out.append(self._message_start({}))
        self._close_calls(out)
        stop = stop_reason(self._finish, bool(self._tools))
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
