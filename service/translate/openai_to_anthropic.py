"""An OpenAI Chat Completions client in front of an Anthropic Messages upstream.

`request` turns a Chat Completions request into a Messages request; `response` and `error` turn
the upstream's answer back into the client's shape; `EventTranslator` does it for a stream, one
complete upstream SSE event at a time (Messages events in, chunks and `[DONE]` out).
"""

from __future__ import annotations

import re
from typing import Any

import orjson

from ..errors import BadRequest
from ..proxy.body import dumps_exact
from .common import (
    DEFAULT_OPTIONS,
    DONE,
    EFFORT_BUDGET,
    EFFORT_TO_ANTHROPIC,
    NO_ARGUMENTS,
    STOP_TO_FINISH,
    Drops,
    StreamTranslator,
    TranslationOptions,
    Untranslatable,
    cut_event,
    end_user_id,
    error_message,
    given,
    openai_error_type,
    sse,
    text_of,
)

UPSTREAM = "Anthropic Messages"

# Messages requires max_tokens; Chat Completions clients usually leave it out: they get the
# route's `translation.defaultMaxTokens` (TranslationOptions.default_max_tokens). With thinking,
# the answer keeps at least this much room beside the budget.
ANSWER_ROOM = 4096

# Fields that change the answer and have no Messages equivalent, unless they hold the value that
# means "off" (clients and SDK helpers often send those explicitly).
_NEUTRAL: dict[str, tuple[Any, ...]] = {
    "n": (1,),
    "logprobs": (False,),
    "top_logprobs": (0,),
    "logit_bias": ({},),
    "modalities": (["text"],),
}
REFUSED = ("audio", "web_search_options", "functions", "function_call")
# Hints and sampling knobs: dropped (refused on a strict route), unless neutral.
HINTS: dict[str, tuple[Any, ...]] = {
    "seed": (),
    "presence_penalty": (0, 0.0),
    "frequency_penalty": (0, 0.0),
    "store": (False,),
    "metadata": ({},),
    "service_tier": (),
    "prompt_cache_key": (),
    "prediction": (),
    "verbosity": (),
}
_TRANSLATED = frozenset(
    "model messages max_tokens max_completion_tokens stop temperature top_p user stream tools"
    " tool_choice parallel_tool_calls response_format reasoning_effort safety_identifier"
    " stream_options".split()
) | {*_NEUTRAL, *REFUSED, *HINTS}

# Claude 4.6 and later think adaptively, steered by output_config.effort (Opus 4.7 and later
# refuse a budget); older models take thinking.budget_tokens.
_CLAUDE = re.compile(r"claude-(?:opus|sonnet|haiku)-(\d+)(?:[-.](\d{1,2})(?!\d))?")


def adaptive_thinking(model: Any) -> bool:
    """The model thinks adaptively (Claude 4.6 or later by its name). Older Claude models and
    names this does not recognise (Anthropic-compatible upstreams) take a thinking budget."""
    found = _CLAUDE.search(model) if isinstance(model, str) else None
    return found is not None and (int(found[1]), int(found[2] or 0)) >= (4, 6)


def request(
    body: dict[str, Any],
    options: TranslationOptions = DEFAULT_OPTIONS,
    dropped: list[str] | None = None,
) -> dict[str, Any]:
    """A Messages request with the meaning of this Chat Completions request; what it leaves out
    is appended to `dropped`. Fields this module does not know pass through unchanged (the
    upstream decides, as on an untranslated route)."""
    drop = Drops(options, [] if dropped is None else dropped, UPSTREAM)
    for key, neutral in _NEUTRAL.items():
        if given(body, key) and body[key] not in neutral:
            raise Untranslatable(key, UPSTREAM)
    for key in REFUSED:
        if given(body, key):
            raise Untranslatable(key, UPSTREAM)
    for key, neutral in HINTS.items():
        if given(body, key) and body[key] not in neutral:
            drop(key, key)
    fmt = _response_format(body.get("response_format"))
    out: dict[str, Any] = {}
    if "model" in body:
        out["model"] = body["model"]
    client_messages = body.get("messages")
    if not isinstance(client_messages, list):
        raise BadRequest("'messages' must be an array")
    system, messages = _messages(client_messages, drop)
    if system:
        out["system"] = system
    out["messages"] = messages
    tools = body.get("tools")
    choice = _tool_choice(body.get("tool_choice"))
    thinking = _thinking(body, choice, messages, drop)
    limit = body.get("max_completion_tokens")
    if limit is None:
        limit = body.get("max_tokens") or None
    default = options.default_max_tokens
    if not body.get("stream"):
        # Sent whole, a long answer would pass the upstream read timeout (300 s by default) before
        # its first byte: a request that is not streamed keeps the 4,096 every Claude takes.
        default = min(default, ANSWER_ROOM)
    out["max_tokens"] = limit if limit is not None else default
    if thinking is not None:
        # Thinking counts against max_tokens (as reasoning does against OpenAI's limit); a
        # budget must be below it. Without a limit the answer keeps at least ANSWER_ROOM beside
        # the thinking (the default limit when that is larger: raising it further could pass
        # the model's own cap); a limit that leaves no room for the budget is raised by it.
        budget = EFFORT_BUDGET[body["reasoning_effort"]]
        if limit is None:
            out["max_tokens"] = max(default, budget + ANSWER_ROOM)
        elif "budget_tokens" in thinking and isinstance(limit, int) and limit <= budget:
            out["max_tokens"] = limit + budget
    stop = body.get("stop")
    if isinstance(stop, str):
        out["stop_sequences"] = [stop]
    elif isinstance(stop, list) and stop:
        out["stop_sequences"] = stop
    for key in ("temperature", "top_p"):
        if given(body, key):
            if thinking is not None and not _thinking_allows(key, body[key]):
                drop(key, f"{key} (with reasoning_effort)")
            else:
                out[key] = body[key]
    user = body.get("user")
    identifier = body.get("safety_identifier")
    user_id = end_user_id(user) if isinstance(user, str) else None
    if user_id is not None and given(body, "safety_identifier"):
        drop("safety_identifier", "safety_identifier")
    elif user_id is None and isinstance(identifier, str):
        user_id = end_user_id(identifier)  # (an empty `user` names nobody: this one then)
    if user_id is not None:
        out["metadata"] = {"user_id": user_id}
    if given(body, "stream"):
        out["stream"] = body["stream"]
    if isinstance(tools, list) and tools:
        out["tools"] = [_tool(t, f"tools[{i}]", drop) for i, t in enumerate(tools)]
    if (
        body.get("parallel_tool_calls") is False
        and out.get("tools")
        and (choice or {}).get("type") != "none"  # Messages' `none` takes no other field
    ):
        choice = {**(choice or {"type": "auto"}), "disable_parallel_tool_use": True}
    if choice is not None:
        out["tool_choice"] = choice
    config: dict[str, Any] = {}
    if thinking is not None:
        out["thinking"] = thinking
        if thinking["type"] == "adaptive":
            config["effort"] = EFFORT_TO_ANTHROPIC[body["reasoning_effort"]]
    if fmt is not None:
        config["format"] = fmt
    if config:
        out["output_config"] = config
    for key, value in body.items():
        if key not in _TRANSLATED:
            out[key] = value
    return out


def _response_format(fmt: Any) -> dict[str, Any] | None:
    """`output_config.format` for a json_schema response format (Anthropic's structured outputs);
    JSON mode (json_object: any JSON) has no equivalent."""
    if fmt is None:
        return None
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if kind == "text":
        return None
    if kind == "json_schema":
        spec = fmt.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
        if not isinstance(schema, dict):
            raise BadRequest("'response_format.json_schema.schema' must be an object")
        return {"type": "json_schema", "schema": schema}
    raise Untranslatable(f"response_format.type={kind}", UPSTREAM)


def _thinking(
    body: dict[str, Any],
    choice: dict[str, Any] | None,
    messages: list[dict[str, Any]],
    drop: Drops,
) -> dict[str, Any] | None:
    """Anthropic's `thinking` for `reasoning_effort`: adaptive (effort in output_config) on
    Claude 4.6 and later, else a budget (`common.EFFORT_BUDGET`); `none`: nothing. Anthropic
    refuses thinking with a tool_choice that forces a tool, and a budget in a tool loop whose
    last assistant turn has no signed thinking block (Chat Completions clients cannot send it
    back): reasoning_effort is dropped there."""
    effort = body.get("reasoning_effort")
    if effort is None or effort == "none":
        return None
    if not isinstance(effort, str):
        raise BadRequest("'reasoning_effort' must be a string")
    if effort not in EFFORT_BUDGET:
        drop("reasoning_effort", f"reasoning_effort={effort}")
        return None
    if choice is not None and choice.get("type") in ("any", "tool"):
        drop("reasoning_effort", "reasoning_effort (with a tool_choice that forces a tool)")
        return None
    if adaptive_thinking(body.get("model")):
        return {"type": "adaptive"}
    if _in_tool_loop(messages):
        drop("reasoning_effort", "reasoning_effort (in a tool loop)")
        return None
    return {"type": "enabled", "budget_tokens": EFFORT_BUDGET[effort]}


def _thinking_allows(key: str, value: Any) -> bool:
    """Anthropic with thinking takes temperature 1 only, and top_p from 0.95 to 1."""
    if not isinstance(value, (int, float)):
        return True  # the upstream decides
    return value == 1 if key == "temperature" else value >= 0.95


def _in_tool_loop(messages: list[dict[str, Any]]) -> bool:
    """The last assistant turn called tools (its results follow)."""
    for m in reversed(messages):
        if m["role"] == "assistant":
            return any(b.get("type") == "tool_use" for b in m["content"])
    return False


def _messages(
    client_messages: list[Any], drop: Drops
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
        if given(m, "name") and role in ("system", "developer", "user", "assistant"):
            drop("name", f"{where}.name")
        if role in ("system", "developer"):
            text = text_of(content, f"{where}.content", UPSTREAM)
            if text:
                system.append({"type": "text", "text": text})
        elif role == "user":
            messages.append({"role": "user", "content": _user_content(content, where)})
        elif role == "assistant":
            messages.append({"role": "assistant", "content": _assistant_content(m, where, drop)})
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
        elif kind == "file":
            blocks.append(_file(part.get("file"), f"{where}.content[{j}]"))
        else:  # input_audio …
            raise Untranslatable(f"{where}.content[{j}].type={kind}", UPSTREAM)
    return blocks


def _file(file: Any, where: str) -> dict[str, Any]:
    """A PDF sent inline (`file_data` data URL) is a document block; a file by id lives in the
    client's OpenAI account, out of the upstream's reach."""
    data = file.get("file_data") if isinstance(file, dict) else None
    prefix = "data:application/pdf;base64,"
    if not isinstance(data, str) or not data.startswith(prefix):
        raise Untranslatable(f"{where}.file (only an inline PDF)", UPSTREAM)
    source = {"type": "base64", "media_type": "application/pdf", "data": data[len(prefix) :]}
    block: dict[str, Any] = {"type": "document", "source": source}
    name = file.get("filename")
    if isinstance(name, str) and name:
        block["title"] = name
    return block


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


def _assistant_content(m: dict[str, Any], where: str, drop: Drops) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = []
    for key in ("reasoning_content", "reasoning"):
        # Anthropic takes earlier thinking back only with the signature it made.
        if isinstance(m.get(key), str) and m[key]:
            drop("reasoning_history", f"{where}.{key}")
    content = m.get("content")
    if isinstance(content, list):
        texts = []
        for k, part in enumerate(content):
            if not isinstance(part, dict):
                continue
            key = "text" if part.get("text") else "refusal"
            text = part.get(key) or ""
            if not isinstance(text, str):
                raise BadRequest(f"'{where}.content[{k}].{key}' must be a string")
            texts.append(text)
        content = "".join(texts)
    if isinstance(content, str) and content:
        blocks.append({"type": "text", "text": content})
    if given(m, "function_call"):
        raise Untranslatable(f"{where}.function_call", UPSTREAM)
    calls = m.get("tool_calls") or []
    if not isinstance(calls, list):
        raise BadRequest(f"'{where}.tool_calls' must be an array")
    for k, call in enumerate(calls):
        if not isinstance(call, dict):
            raise BadRequest(f"'{where}.tool_calls[{k}]' must be an object")
        fn = call.get("function")
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


def _tool(tool: Any, where: str, drop: Drops) -> dict[str, Any]:
    if not isinstance(tool, dict) or tool.get("type") != "function":
        kind = tool.get("type") if isinstance(tool, dict) else None
        raise Untranslatable(f"{where}.type={kind}", UPSTREAM)
    fn = tool.get("function") or {}
    if not isinstance(fn, dict):
        raise BadRequest(f"'{where}.function' must be an object")
    if fn.get("strict") is True:
        # Anthropic's strict tools exist only on newer models: dropped so that every model
        # keeps working (it still gets the schema).
        drop("tool_strict", f"{where}.function.strict")
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
        fn = choice.get("function") or {}
        if not isinstance(fn, dict):
            raise BadRequest("'tool_choice.function' must be an object")
        return {"type": "tool", "name": fn.get("name")}
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
    details: dict[str, Any] = {}
    if "cache_read_input_tokens" in u:
        details["cached_tokens"] = cached
    written = u.get("cache_creation_input_tokens")
    if isinstance(written, int) and written:
        details["cache_write_tokens"] = written  # as OpenAI names them (Responses: the same)
    if details:
        out["prompt_tokens_details"] = details
    return out


def response(body: dict[str, Any], created: int) -> dict[str, Any]:
    """The Chat Completions response for an Anthropic message (one choice)."""
    texts: list[str] = []
    thoughts: list[str] = []
    calls: list[dict[str, Any]] = []
    for block in body.get("content") or []:
        if not isinstance(block, dict):
            continue
        if block.get("type") == "text":
            texts.append(block.get("text", ""))
        elif block.get("type") == "thinking" and block.get("thinking"):
            thoughts.append(str(block["thinking"]))
        elif block.get("type") == "tool_use":
            calls.append(
                {
                    "id": block.get("id"),
                    "type": "function",
                    "function": {
                        "name": block.get("name"),
                        "arguments": dumps_exact(block.get("input", {})).decode(),
                    },
                }
            )
        # redacted thinking and server-tool blocks: Chat Completions has no place for them.
    message: dict[str, Any] = {
        "role": "assistant",
        "content": "".join(texts) if texts else None,
        "refusal": None,
    }
    if thoughts:  # as DeepSeek, Qwen and vLLM send reasoning
        message["reasoning_content"] = "\n\n".join(thoughts)
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

    __slots__ = ("_argued", "_finished", "_head", "_tools", "_usage", "include_usage")

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
        self._argued: set[int] = set()  # tool_call indexes whose arguments were not empty
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
        if kind == "content_block_stop":
            return self._block_stop(data)
        if kind == "message_stop":
            return self._end()
        if kind == "error":
            self.done = self.broken = True
            err = data.get("error") or {}
            message = err.get("message") if isinstance(err, dict) else None
            body = orjson.dumps({"error": {"message": message, "type": err.get("type")}})
            return [sse(error(500, body), "error")]
        return []  # ping, and event types added later

    def finish(self) -> list[bytes]:
        """The upstream ended: finish the stream if the message did (without message_stop); a
        stream cut before its stop reason ends with an error event, without `[DONE]` (a Chat
        client takes a stream that just ends as complete)."""
        if self.done:
            return []
        if self._finished:
            return self._end()
        self.done = self.broken = True
        return [cut_event(anthropic=False)]

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return sse({**self._head, "choices": [choice]})

    def _block_start(self, data: dict[str, Any]) -> list[bytes]:
        block = data.get("content_block") or {}
        if block.get("type") == "text" and block.get("text"):
            return [self._chunk({"content": block["text"]})]
        if block.get("type") == "thinking" and block.get("thinking"):
            return [self._chunk({"reasoning_content": block["thinking"]})]
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
        return []  # redacted thinking and server-tool blocks have no Chat Completions form

    def _block_delta(self, data: dict[str, Any]) -> list[bytes]:
        delta = data.get("delta") or {}
        if delta.get("type") == "text_delta":
            return [self._chunk({"content": delta.get("text", "")})]
        if delta.get("type") == "thinking_delta" and delta.get("thinking"):
            return [self._chunk({"reasoning_content": delta["thinking"]})]
        if delta.get("type") == "input_json_delta":
            position = self._tools.get(data.get("index", 0))
            if position is None:
                return []
            fragment = delta.get("partial_json", "")
            if fragment:
                self._argued.add(position)
            call = {"index": position, "function": {"arguments": fragment}}
            return [self._chunk({"tool_calls": [call]})]
        return []

    def _block_stop(self, data: dict[str, Any]) -> list[bytes]:
        """A tool call whose input was empty (a tool without parameters: Anthropic streams one
        empty fragment) gets `{}`, so that its arguments are JSON, as when not streamed."""
        position = self._tools.get(data.get("index", 0))
        if position is None or position in self._argued:
            return []
        self._argued.add(position)
        call = {"index": position, "function": {"arguments": NO_ARGUMENTS}}
        return [self._chunk({"tool_calls": [call]})]

    def _end(self) -> list[bytes]:
        self.done = True
        out = []
        if self.include_usage:
            out.append(sse({**self._head, "choices": [], "usage": usage(self._usage)}))
        out.append(DONE)
        return out
