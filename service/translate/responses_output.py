"""Responses objects built from Chat Completions answers (pure; no I/O): the `response` object,
its output items, usage, and errors with the codes Responses clients act on."""

from __future__ import annotations

import re
import uuid
from typing import Any

import orjson

from ..proxy.body import loads_exact
from .common import NO_ARGUMENTS, carrying_id, error_message, openai_error_type
from .responses_request import CUSTOM_INPUT, HOSTED_TOOLS, ClientTools, encode_summary

# Chat finish_reason -> (Responses status, incomplete_details.reason).
FINISH_STATUS: dict[str, tuple[str, str | None]] = {
    "stop": ("completed", None),
    "tool_calls": ("completed", None),
    "function_call": ("completed", None),
    "length": ("incomplete", "max_output_tokens"),
    "content_filter": ("incomplete", "content_filter"),
}


def finish_status(finish: Any) -> tuple[str, str | None]:
    return FINISH_STATUS.get(finish if isinstance(finish, str) else "stop", ("completed", None))


def base_id(upstream_id: Any) -> str:
    """What the ids of a response and its items are made from: the upstream's answer id (so a
    response can be matched with the upstream's logs), else a random one."""
    if isinstance(upstream_id, str) and upstream_id:
        return upstream_id
    return uuid.uuid4().hex


def item_id(prefix: str, base: str, index: int) -> str:
    return f"{prefix}_{base}_{index}"


def usage(u: Any) -> dict[str, Any] | None:
    """Responses usage from Chat Completions usage (None when the upstream sent none)."""
    if not isinstance(u, dict):
        return None
    prompt = _int(u.get("prompt_tokens"))
    completion = _int(u.get("completion_tokens"))
    pdet = u.get("prompt_tokens_details")
    pdet = pdet if isinstance(pdet, dict) else {}
    cdet = u.get("completion_tokens_details")
    cdet = cdet if isinstance(cdet, dict) else {}
    total = u.get("total_tokens")
    return {
        "input_tokens": prompt,
        "input_tokens_details": {
            "cached_tokens": _int(pdet.get("cached_tokens")),
            "cache_write_tokens": _int(pdet.get("cache_write_tokens")),
        },
        "output_tokens": completion,
        "output_tokens_details": {"reasoning_tokens": _int(cdet.get("reasoning_tokens"))},
        "total_tokens": total if isinstance(total, int) else prompt + completion,
    }


def as_dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def response_object(
    payload: dict[str, Any],
    *,
    base: str,
    created: int,
    model: Any,
    status: str,
    output: list[dict[str, Any]],
    usage: dict[str, Any] | None = None,
    incomplete: str | None = None,
    error: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The `response` object, echoing the client's request settings as OpenAI does. `store` is
    false whatever the client asked: the router keeps nothing."""
    reasoning = as_dict(payload.get("reasoning"))
    text = as_dict(payload.get("text"))
    tools = payload.get("tools")
    tools = tools if isinstance(tools, list) else []
    metadata = payload.get("metadata")
    return {
        "id": f"resp_{base}",
        "object": "response",
        "created_at": created,
        "status": status,
        "background": False,
        "error": error,
        "incomplete_details": {"reason": incomplete} if incomplete else None,
        "instructions": payload.get("instructions"),
        "max_output_tokens": payload.get("max_output_tokens"),
        "model": model if isinstance(model, str) else payload.get("model"),
        "output": output,
        "parallel_tool_calls": payload.get("parallel_tool_calls") is not False,
        "previous_response_id": None,
        "reasoning": {"effort": reasoning.get("effort"), "summary": reasoning.get("summary")},
        "store": False,
        "temperature": payload.get("temperature"),
        "text": {**text, "format": text.get("format") or {"type": "text"}},
        "tool_choice": payload.get("tool_choice") or "auto",
        # The tools the model was offered (hosted tools were dropped).
        "tools": [t for t in tools if isinstance(t, dict) and t.get("type") not in HOSTED_TOOLS],
        "top_p": payload.get("top_p"),
        "truncation": payload.get("truncation") or "disabled",
        "usage": usage,
        "metadata": metadata if isinstance(metadata, dict) else {},
    }


def reasoning_text(value: Any) -> str:
    """The reasoning text of a Chat message or delta: `reasoning_content` (DeepSeek, Qwen,
    vLLM …) or `reasoning` (OpenRouter, newer vLLM, Ollama)."""
    for key in ("reasoning_content", "reasoning"):
        text = value.get(key)
        if isinstance(text, str) and text:
            return text
    return ""


def custom_input(arguments: Any) -> str:
    """The raw input of a custom tool call from the arguments of the function it was offered as:
    `{"input": "…"}`; a model that wrote other JSON or plain text gets its best reading (the
    single string member, a JSON string, or the text as it is)."""
    if not isinstance(arguments, str):
        return ""
    try:
        value = loads_exact(arguments)
    except ValueError:
        return arguments
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        if isinstance(value.get(CUSTOM_INPUT), str):
            return value[CUSTOM_INPUT]
        strings = [v for v in value.values() if isinstance(v, str)]
        if len(strings) == 1 and len(value) == 1:
            return strings[0]
    return arguments


def text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def output_items(
    message: dict[str, Any], base: str, tools: ClientTools, status: str
) -> list[dict[str, Any]]:
    """The output items of a Chat Completions answer's message: reasoning, the message (text and
    refusal parts), then function and custom tool calls."""
    items: list[dict[str, Any]] = []
    reasoning = reasoning_text(message)
    if reasoning:
        items.append(
            {
                "id": item_id("rs", base, len(items)),
                "type": "reasoning",
                "summary": [],
                "content": [{"type": "reasoning_text", "text": reasoning}],
            }
        )
    content = message_text(message)
    parts: list[dict[str, Any]] = []
    if content:
        parts.append(text_part(content))
    refusal = message.get("refusal")
    if isinstance(refusal, str) and refusal:
        parts.append({"type": "refusal", "refusal": refusal})
    if parts:
        items.append(
            {
                "id": item_id("msg", base, len(items)),
                "type": "message",
                "status": status,
                "role": "assistant",
                "content": parts,
            }
        )
    for call in message.get("tool_calls") or []:
        if not isinstance(call, dict):
            continue
        fn = as_dict(call.get("function"))
        items.append(
            tool_item(
                fn.get("name"),
                call.get("id"),
                fn.get("arguments") or NO_ARGUMENTS,
                base,
                len(items),
                tools,
                status,
                call.get("extra_content"),
            )
        )
    return items


def compaction_item(base: str, index: int, summary: str) -> dict[str, Any]:
    """The `compaction` item of a compaction request's answer: the upstream's summary, opaque."""
    return {
        "id": item_id("cmp", base, index),
        "type": "compaction",
        "encrypted_content": encode_summary(summary),
    }


def compaction_problem(summary: str, finish: Any) -> str | None:
    """Why a compaction's answer cannot be handed out (None: it can): no summary, or one cut
    short (a client replaces its conversation with what it gets, and a compaction item has no
    status to say it is cut)."""
    if finish in ("length", "content_filter"):
        return f"The upstream model's summary was cut short (finish_reason {finish})"
    if not summary:
        return "The upstream model wrote no summary"
    return None


def message_text(message: dict[str, Any]) -> str:
    """The text of a Chat Completions answer's message (a string, or its text parts)."""
    content = message.get("content")
    if isinstance(content, list):
        content = "".join(
            p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text"
        )
    return content if isinstance(content, str) else ""


def search_arguments(arguments: str) -> Any:
    """A tool search call's `arguments` (an object, not a JSON string) from the arguments of the
    function it was offered as; text that is not a JSON object is taken for the query."""
    try:
        value = loads_exact(arguments) if arguments else {}
    except ValueError:
        value = None
    return value if isinstance(value, dict) else {"query": arguments}


def tool_item(
    name: Any,
    call_id: Any,
    arguments: Any,
    base: str,
    index: int,
    tools: ClientTools,
    status: str,
    extra: Any = None,
) -> dict[str, Any]:
    """A `function_call` item, a `custom_tool_call` one for a custom tool's name, a
    `tool_search_call` one for the client's own tool search; a tool offered in a namespace is
    named as the client named it, with its `namespace`. The upstream call's `extra_content`
    goes in its id (common.carrying_id)."""
    call_id = call_id if isinstance(call_id, str) and call_id else item_id("call", base, index)
    call_id = carrying_id(call_id, extra)
    name = name if isinstance(name, str) else ""
    arguments = arguments if isinstance(arguments, str) else ""
    if name in tools.search:
        return {
            "id": item_id("tsc", base, index),
            "type": "tool_search_call",
            "call_id": call_id,
            "execution": "client",
            "arguments": search_arguments(arguments),
            "status": status,
        }
    if name in tools.custom:
        item = {
            "id": item_id("ctc", base, index),
            "type": "custom_tool_call",
            "call_id": call_id,
            "name": name,
            "input": custom_input(arguments),
        }
    else:
        item = {
            "id": item_id("fc", base, index),
            "type": "function_call",
            "status": status,
            "arguments": arguments,
            "call_id": call_id,
            "name": name,
        }
    namespaced = tools.namespaced.get(name)
    if namespaced is not None:
        item["namespace"], item["name"] = namespaced
    return item


# A Chat request field (named in an upstream error's `param` or in a refusal of the Chat ->
# Messages step) as the Responses parameter it came from.
CHAT_PARAMS = {
    "messages": "input",
    "reasoning_effort": "reasoning.effort",
    "response_format": "text.format",
    "max_tokens": "max_output_tokens",
    "max_completion_tokens": "max_output_tokens",
}


def client_param(field: str) -> str:
    """`field` with its leading Chat name replaced by the Responses one (indices kept)."""
    head = re.match(r"[a-z_]+", field)
    key = head.group(0) if head else field
    return CHAT_PARAMS[key] + field[len(key) :] if key in CHAT_PARAMS else field


# --- errors ------------------------------------------------------------------------------------

_CONTEXT = re.compile(
    r"context[ _-]?(length|window)|maximum context|prompt is too long|input is too long"
    r"|too many input tokens|reduce the length of the (messages|prompt|input)",
    re.IGNORECASE,
)
_QUOTA = re.compile(
    r"insufficient[ _]quota|exceeded your current quota|credit balance|billing", re.IGNORECASE
)
_KIND_CODES = {
    "rate_limit_error": "rate_limit_exceeded",
    "insufficient_quota": "insufficient_quota",
    "billing_error": "insufficient_quota",
    "overloaded_error": "server_error",
    "api_error": "server_error",
    "server_error": "server_error",
    "timeout_error": "server_error",
}


def _upstream_error(body: bytes) -> dict[str, Any]:
    try:
        parsed = orjson.loads(body) if body else None
    except orjson.JSONDecodeError:
        return {}
    err = parsed.get("error") if isinstance(parsed, dict) else None
    return err if isinstance(err, dict) else {}


def error_code(status: int | None, message: str, kind: str | None, code: Any) -> str | None:
    """The code Responses clients act on (Codex: context_length_exceeded ends the turn asking
    for compaction, insufficient_quota stops, rate_limit_exceeded is retried after the delay
    the message names), from the upstream's status, code, type and message."""
    if isinstance(code, str) and code in ("context_length_exceeded", "insufficient_quota"):
        return code
    if status in (None, 400, 413, 422, 500) and _CONTEXT.search(message):
        return "context_length_exceeded"
    if status == 402 or code == "insufficient_quota" or _QUOTA.search(message):
        return "insufficient_quota"
    if status == 429:
        return "rate_limit_exceeded"
    if isinstance(code, str) and code:
        return code
    if kind in _KIND_CODES:
        return _KIND_CODES[kind]
    if status is not None and status >= 500:
        return "server_error"
    return None


def error_json(status: int, body: bytes) -> dict[str, Any]:
    """The OpenAI error body for an upstream error (in either upstream format)."""
    message, kind = error_message(status, body)
    upstream = _upstream_error(body)
    code = error_code(status, message, kind, upstream.get("code"))
    if code == "insufficient_quota":
        kind = "insufficient_quota"
    param = upstream.get("param")
    return {
        "error": {
            "message": message,
            "type": kind or openai_error_type(status),
            "param": client_param(param) if isinstance(param, str) else None,
            "code": code,
        }
    }


def stream_error(data: dict[str, Any]) -> dict[str, Any]:
    """`response.error` ({code, message}) for an error event inside an upstream stream."""
    err = data.get("error")
    if isinstance(err, str):
        err = {"message": err}
    if not isinstance(err, dict):
        err = {}
    message = err.get("message") if isinstance(err.get("message"), str) else None
    message = message or "The upstream stream reported an error"
    kind = err.get("type") if isinstance(err.get("type"), str) else None
    status = err.get("code") if isinstance(err.get("code"), int) else None
    code = error_code(status, message, kind, err.get("code"))
    return {"code": code or "server_error", "message": message}
