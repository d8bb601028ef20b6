"""An OpenAI Responses request (`POST /v1/responses`) as a Chat Completions request (pure; no I/O).

`chat_request(body, options, upstream)` returns the Chat Completions body, how the client's tools
are named upstream (`ClientTools`: custom, namespaced, the client's own tool search), and the
labels of the hint fields it dropped. What it refuses, drops and maps is listed in
`service.translate.responses` (module docstring).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson

from ..errors import BadRequest
from ..proxy.body import dumps_exact
from .common import (
    DEFAULT_OPTIONS,
    RESPONSES_TO_CHAT_EFFORT,
    TranslationOptions,
    Untranslatable,
    carried,
    fitting_tool_name,
    found_tools,
    given,
    output_limit_field,
)

CHAT = "OpenAI Chat Completions"

# Labels of `translation_dropped_fields_total` this direction can add (a closed set): fields that
# only steer OpenAI's own infrastructure, storage or hosted tools, and history the upstream could
# not use.
RESPONSES_DROPPED_FIELDS = (
    "store",  # store: true (the router keeps nothing; GET /v1/responses/{id} will not find it)
    "include",  # include[] (reasoning.encrypted_content, hosted-tool extras)
    "prompt_cache_key",
    "prompt_cache_retention",
    "service_tier",
    "metadata",  # metadata and client_metadata
    "safety_identifier",
    "truncation",  # truncation: "auto"
    "stream_options",
    "max_tool_calls",  # a limit on hosted-tool calls, and hosted tools are not offered
    "reasoning.summary",  # summary / generate_summary: upstream reasoning comes back raw
    "reasoning.effort",  # only with translation.reasoningEffort false
    "text.verbosity",
    "tools.hosted",  # hosted tools (web_search, file_search, …) offered, not forced
    "input.hosted_tool_calls",  # earlier hosted-tool calls (web_search_call, …) in the input
    "input.reasoning",  # earlier reasoning items (or their encrypted content) not sent back
    "input.configuration_update",  # a setting other than `reasoning` in a configuration_update
)
# Dropped even when the route is strict: earlier reasoning was never sent back to another
# provider (as with thinking blocks on the other translated routes).
_ALWAYS_DROPPED = frozenset({"input.reasoning"})

# Tool types that run at OpenAI (or in a client built-in the Chat format has no type for).
HOSTED_TOOLS = frozenset(
    {
        "web_search",
        "web_search_preview",
        "web_search_preview_2025_03_11",
        "web_search_2025_08_26",
        "file_search",
        "code_interpreter",
        "image_generation",
        "tool_search",
        "mcp",
        "computer",
        "computer_use_preview",
        "local_shell",
        "shell",
        "apply_patch",
    }
)
# Earlier calls of hosted tools: their results are already in the conversation's text.
_HOSTED_CALLS = frozenset(
    {
        "web_search_call",
        "file_search_call",
        "code_interpreter_call",
        "image_generation_call",
        "tool_search_call",
        "tool_search_output",
        "mcp_list_tools",
    }
)
# Fields that need state the router does not keep, or change the answer with no Chat equivalent.
_REFUSED = ("previous_response_id", "conversation", "prompt")
_HINTS = (
    "prompt_cache_key",
    "prompt_cache_retention",
    "service_tier",
    "safety_identifier",
    "stream_options",
    "max_tool_calls",
)
_KNOWN = frozenset(
    "model input instructions tools tool_choice parallel_tool_calls reasoning max_output_tokens"
    " temperature top_p text include store stream metadata client_metadata truncation user"
    " background top_logprobs".split()
) | {*_REFUSED, *_HINTS}

# The parameters of a client tool search that names none (what Codex's declares).
_SEARCH_PARAMETERS = {
    "type": "object",
    "properties": {"query": {"type": "string"}, "limit": {"type": "number"}},
    "required": ["query"],
}
# The Chat parameter schema a custom tool is offered with, and its one property.
CUSTOM_INPUT = "input"
_CUSTOM_PARAMETERS = {
    "type": "object",
    "properties": {
        CUSTOM_INPUT: {"type": "string", "description": "The tool's whole free-form input."}
    },
    "required": [CUSTOM_INPUT],
    "additionalProperties": False,
}


class NeedsState(Untranslatable):
    """A request that refers to a stored response or conversation: the router keeps none."""

    def __init__(self, field: str, upstream: str) -> None:
        super(Untranslatable, self).__init__(
            f"'{field}' needs stored responses, which this route (translated to the {upstream}"
            " format) does not keep: send the whole conversation in 'input', with store: false"
        )


# A tool the client offered inside a `namespace` (Codex's MCP servers, and all of its tools in the
# `additional_tools` input item of its "Responses Lite" models) is offered upstream, where names
# are flat, as `<namespace>__<name>`; its calls come back with the namespace and the tool's own
# name (`ClientTools.namespaced`).
NAMESPACE_SEPARATOR = "__"


# A `tool_search` tool the client runs itself (`execution: "client"`: Codex searches its deferred
# tools, an MCP server's among them) is offered upstream as a function of this name; the model's
# call of it comes back as a `tool_search_call` item, and the tools the client's
# `tool_search_output` item then brings are offered from the next request on.
TOOL_SEARCH = "tool_search"


# Server-side compaction (Codex's built-in `openai` provider ends a request's input with a
# `compaction_trigger` item and wants a `compaction` item back): the upstream model is asked for
# a summary of the conversation, which the client gets as the `encrypted_content` of a
# `compaction` item (our prefix and the summary in base64: opaque to the client, not secret: it
# is the client's own conversation) and sends back in place of what it summarises.
COMPACTION_PREFIX = "api-router.compaction.v1."
COMPACTION_PROMPT = (
    "The conversation above is about to be replaced by a summary, and the work will go on from"
    " that summary alone. Write it now: the user's goal and instructions; what has been done so"
    " far (files read or changed, commands run and what they showed); decisions taken and why;"
    " what is left to do; and every exact name, path, value or error message still needed."
    " Answer with the summary only, and call no tool."
)
SUMMARY_INTRO = "A summary of the earlier conversation, which it replaces:"


def encode_summary(text: str) -> str:
    return COMPACTION_PREFIX + base64.urlsafe_b64encode(text.encode()).decode()


def decode_summary(content: Any, where: str, upstream: str) -> str:
    """The summary of a `compaction` item made by the router; one made by another provider
    (OpenAI's is encrypted) cannot be read here."""
    if not isinstance(content, str) or not content.startswith(COMPACTION_PREFIX):
        raise Untranslatable(f"{where}.type=compaction (made by another provider)", upstream)
    try:
        data = content[len(COMPACTION_PREFIX) :].encode()
        raw = base64.b64decode(data, altchars=b"-_", validate=True)
        return raw.decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise BadRequest(
            f"'{where}.encrypted_content' is not a compaction of this router"
        ) from None


def compacting(body: dict[str, Any]) -> bool:
    """Whether the request asks for a compaction (a `compaction_trigger` input item)."""
    items = body.get("input")
    return isinstance(items, list) and any(
        isinstance(item, dict) and item.get("type") == "compaction_trigger" for item in items
    )


def client_search(tool: dict[str, Any]) -> bool:
    """Whether a `tool_search` tool, call or output is one the client runs (else: hosted)."""
    return tool.get("execution") == "client"


@dataclass(slots=True, frozen=True)
class ClientTools:
    """The client's tools by the names the upstream knows them by: `custom`, the free-form ones
    (their calls come back as `custom_tool_call` items), `namespaced`, name upstream ->
    (namespace, the tool's own name) for those offered inside a namespace, and `search`, the
    client's own tool search (its calls come back as `tool_search_call` items)."""

    custom: frozenset[str] = frozenset()
    namespaced: dict[str, tuple[str, str]] = field(default_factory=dict)
    search: frozenset[str] = frozenset()


@dataclass(slots=True)
class ChatRequest:
    """A Responses request as Chat Completions: the `body`, how the client's tools are named
    upstream, the labels of the hints dropped, and where each Chat message came from (`input[i]`
    or `instructions`), to name the client's parameter when a later step refuses a message."""

    body: dict[str, Any]
    tools: ClientTools
    dropped: list[str]
    origins: list[str]
    compact: bool = False  # the answer is a compaction: its text, the summary
    # The request's `reasoning` with its `configuration_update` items' over it (None without
    # any): the settings the answer is made with, which the response object echoes
    reasoning: dict[str, Any] | None = None


class _Request:
    __slots__ = (
        "compact",
        "custom",
        "dropped",
        "namespaced",
        "options",
        "origins",
        "search",
        "update",
        "upstream",
    )

    def __init__(self, options: TranslationOptions, upstream: str) -> None:
        self.options = options
        self.upstream = upstream
        self.dropped: list[str] = []
        self.custom: set[str] = set()
        self.namespaced: dict[str, tuple[str, str]] = {}
        self.search: set[str] = set()
        self.origins: list[str] = []
        self.compact = False
        # The reasoning of the input's `configuration_update` items, later over earlier (over
        # the request's)
        self.update: dict[str, Any] = {}

    def tools(self) -> ClientTools:
        return ClientTools(frozenset(self.custom), self.namespaced, frozenset(self.search))

    def drop(self, label: str, where: str | None = None) -> None:
        """Drop a hint field (counted), or refuse it (named by `where`) on a strict route."""
        if self.options.strict and label not in _ALWAYS_DROPPED:
            raise Untranslatable(where or label, self.upstream)
        if label not in self.dropped:
            self.dropped.append(label)


def chat_request(
    body: dict[str, Any], options: TranslationOptions = DEFAULT_OPTIONS, upstream: str = CHAT
) -> ChatRequest:
    """The Chat Completions request for a Responses request. `upstream` names the format in
    refusals (the final upstream's, when this Chat request is translated again)."""
    st = _Request(options, upstream)
    for key in _REFUSED:
        if given(body, key):
            raise NeedsState(key, upstream) if key != "prompt" else Untranslatable(key, upstream)
    if body.get("background") is True:
        raise NeedsState("background", upstream)
    if body.get("top_logprobs"):
        raise Untranslatable("top_logprobs", upstream)
    store = body.get("store")
    if store is True:
        st.drop("store")
    for key in _HINTS:
        if given(body, key):
            st.drop(key)
    if given(body, "metadata") or given(body, "client_metadata"):
        st.drop("metadata")
    if body.get("truncation") not in (None, "disabled"):
        st.drop("truncation", f"truncation={body['truncation']}")
    _include(body.get("include"), st)

    out: dict[str, Any] = {}
    if "model" in body:
        out["model"] = body["model"]
    out["messages"] = _messages(body.get("instructions"), body.get("input"), st)
    if given(body, "max_output_tokens"):
        out[output_limit_field(st.options)] = body["max_output_tokens"]
    for key in ("temperature", "top_p"):
        if given(body, key):
            out[key] = body[key]
    if given(body, "stream"):
        out["stream"] = body["stream"]
        if body["stream"] is True:  # usage arrives in a last chunk only when asked for
            out["stream_options"] = {"include_usage": True}
    tools = _tools(body, st)
    if st.compact:  # the summary is text: every tool stays offered (the conversation holds
        choice: Any = "none"  # calls of them), none may be called, whatever the client chose
    else:
        choice, tools = _tool_choice(body.get("tool_choice"), tools, st)
    if tools:
        out["tools"] = tools
        if choice is not None:
            out["tool_choice"] = choice
        if isinstance(body.get("parallel_tool_calls"), bool):
            out["parallel_tool_calls"] = body["parallel_tool_calls"]
    reasoning = body.get("reasoning")
    updated = None
    if st.update and (reasoning is None or isinstance(reasoning, dict)):
        reasoning = updated = {**(reasoning or {}), **st.update}  # the updates in force now
    _reasoning(reasoning, out, st)
    _text(body.get("text"), out, st)
    if st.compact:
        out.pop("response_format", None)  # the summary is free text, not the client's format
    if given(body, "user"):
        out["user"] = body["user"]
    for key, value in body.items():
        if key not in _KNOWN:
            out[key] = value  # the upstream decides, as on an untranslated route
    return ChatRequest(out, st.tools(), st.dropped, st.origins, st.compact, updated)


def _include(include: Any, st: _Request) -> None:
    if include is None:
        return
    if not isinstance(include, list):
        raise BadRequest("'include' must be an array")
    for value in include:
        if value == "message.output_text.logprobs":
            raise Untranslatable("include=message.output_text.logprobs", st.upstream)
    if include:
        st.drop("include")


def _reasoning(reasoning: Any, out: dict[str, Any], st: _Request) -> None:
    if reasoning is None:
        return
    if not isinstance(reasoning, dict):
        raise BadRequest("'reasoning' must be an object")
    if given(reasoning, "effort"):
        if st.options.reasoning_effort:
            effort = reasoning["effort"]
            if not isinstance(effort, str):
                raise BadRequest("'reasoning.effort' must be a string")
            if st.upstream == CHAT:  # (a Messages upstream: its own)
                effort = RESPONSES_TO_CHAT_EFFORT.get(effort, effort)
            out["reasoning_effort"] = effort
        elif "reasoning.effort" not in st.dropped:  # turned off by the operator: never refused
            st.dropped.append("reasoning.effort")
    if given(reasoning, "summary") or given(reasoning, "generate_summary"):
        st.drop("reasoning.summary")


def _text(text: Any, out: dict[str, Any], st: _Request) -> None:
    if text is None:
        return
    if not isinstance(text, dict):
        raise BadRequest("'text' must be an object")
    if given(text, "verbosity"):
        st.drop("text.verbosity")
    fmt = text.get("format")
    if fmt is None:
        return
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if kind == "text":
        return
    if kind == "json_object":
        out["response_format"] = {"type": "json_object"}
        return
    if kind == "json_schema":
        assert isinstance(fmt, dict)
        schema: dict[str, Any] = {"name": fmt.get("name") or "response"}
        for key in ("description", "schema", "strict"):
            if given(fmt, key):
                schema[key] = fmt[key]
        out["response_format"] = {"type": "json_schema", "json_schema": schema}
        return
    raise Untranslatable(f"text.format.type={kind}", st.upstream)


# --- tools -------------------------------------------------------------------------------------


def _offered(body: dict[str, Any]) -> Iterator[tuple[dict[str, Any], Any, str | None, str]]:
    """Every tool the request offers, namespaces opened: (tool, name upstream, namespace or None,
    where): `tools`, then the tools of each `additional_tools` input item (Codex sends its tools
    there, with an empty `tools`, for models it marks "Responses Lite") and of each
    `tool_search_output` item of the client's own tool search (the tools it found), in order."""
    tools = body.get("tools")
    if tools is not None:
        if not isinstance(tools, list):
            raise BadRequest("'tools' must be an array")
        yield from _opened(tools, "tools", None)
    items = body.get("input")
    if isinstance(items, list):  # (anything else: refused with the input itself)
        for i, item in enumerate(items):
            if not isinstance(item, dict):
                continue
            kind = item.get("type")
            if kind == "additional_tools" or (kind == "tool_search_output" and client_search(item)):
                where = f"input[{i}].tools"
                tools = item.get("tools")
                if not isinstance(tools, list):
                    raise BadRequest(f"'{where}' must be an array")
                yield from _opened(tools, where, None)


def _opened(
    tools: list[Any], where: str, namespace: str | None
) -> Iterator[tuple[dict[str, Any], Any, str | None, str]]:
    for i, tool in enumerate(tools):
        at = f"{where}[{i}]"
        if not isinstance(tool, dict):
            raise BadRequest(f"'{at}' must be an object")
        kind = tool.get("type")
        if kind is not None and not isinstance(kind, str):
            raise BadRequest(f"'{at}.type' must be a string")
        if kind == "namespace":
            name, inner = tool.get("name"), tool.get("tools")
            if not isinstance(name, str) or not name:
                raise BadRequest(f"'{at}.name' must be a string")
            if not isinstance(inner, list):
                raise BadRequest(f"'{at}.tools' must be an array")
            yield from _opened(inner, f"{at}.tools", _joined(namespace, name))
            continue
        name = tool.get("name")
        if namespace is not None and kind in ("function", "custom"):
            if not isinstance(name, str) or not name:
                raise BadRequest(f"'{at}.name' must be a string")
        upstream = upstream_name(namespace, name) if isinstance(name, str) else name
        yield tool, upstream, namespace, at


def upstream_name(namespace: Any, name: str) -> str:
    """A tool's name upstream: `<namespace>__<name>` for one offered (or called) in a namespace,
    cut as `fitting_tool_name` says when longer than OpenAI takes (a long MCP server's name and a
    long tool name; the client's own flat names are the client's: as they are)."""
    if not isinstance(namespace, str) or not namespace:
        return name
    return fitting_tool_name(_joined(namespace, name))


def _joined(namespace: str | None, name: str) -> str:
    """The namespace a nested namespace's tools are in, as the client names it back."""
    return f"{namespace}{NAMESPACE_SEPARATOR}{name}" if namespace else name


def client_tools(body: dict[str, Any]) -> ClientTools:
    """`ClientTools` of a request as sent, without translating the rest of it (a request that
    `chat_request` would refuse: none)."""
    st = _Request(DEFAULT_OPTIONS, CHAT)
    try:
        _tools(body, st)
    except (BadRequest, Untranslatable):
        return ClientTools()
    return st.tools()


def _tools(body: dict[str, Any], st: _Request) -> list[dict[str, Any]]:
    """Chat function tools; how each comes back is recorded in `st` (`ClientTools`). A tool
    offered twice (Codex repeats its `additional_tools` item in the conversation it replays)
    keeps its first place and its last definition; two tools under one name are refused."""
    out: dict[str, dict[str, Any]] = {}
    origins: dict[str, tuple[Any, ...]] = {}  # name upstream -> (kind, namespace, name, where)
    for tool, name, namespace, where in _offered(body):
        kind = tool.get("type")
        if kind == "function":
            fn: dict[str, Any] = {"name": name}
            if given(tool, "description"):
                fn["description"] = tool["description"]
            fn["parameters"] = tool.get("parameters") or {"type": "object", "properties": {}}
            if isinstance(tool.get("strict"), bool):
                fn["strict"] = tool["strict"]
        elif kind == "custom":
            if not isinstance(name, str) or not tool.get("name"):
                raise BadRequest(f"'{where}.name' must be a string")
            fn = {
                "name": name,
                "description": _custom_description(tool, where, st),
                "parameters": _CUSTOM_PARAMETERS,
            }
        elif kind == TOOL_SEARCH and client_search(tool):
            name, namespace = TOOL_SEARCH, None
            fn = {"name": name, "parameters": tool.get("parameters") or _SEARCH_PARAMETERS}
            if given(tool, "description"):
                fn["description"] = tool["description"]
        elif kind in HOSTED_TOOLS:
            st.drop("tools.hosted", f"{where}.type={kind}")
            continue
        else:
            raise Untranslatable(f"{where}.type={kind}", st.upstream)
        key = str(name)
        origin = (kind, namespace, tool.get("name"))
        if key in origins and origins[key][:3] != origin:
            # two different tools under one name upstream (`a__b`, and `b` in namespace `a`):
            # the model's call of it could not be told apart
            raise BadRequest(
                f"'{where}' would be offered upstream as '{key}', the name of '{origins[key][3]}'"
            )
        origins[key] = (*origin, where)
        out[key] = {"type": "function", "function": fn}
        if kind == "custom":
            st.custom.add(key)
        elif kind == TOOL_SEARCH:
            st.search.add(key)
        if namespace is not None:
            st.namespaced[key] = (namespace, tool["name"])
    return list(out.values())


def _custom_description(tool: dict[str, Any], where: str, st: _Request) -> str:
    """A custom tool's description with its input format folded in (the Chat format offers
    functions only: the free-form input travels as one string parameter)."""
    parts = [tool["description"]] if isinstance(tool.get("description"), str) else []
    fmt = tool.get("format")
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    note = (
        f"Pass the tool's whole input as the string parameter `{CUSTOM_INPUT}`, raw (not"
        " wrapped or escaped beyond what JSON needs)"
    )
    if fmt is None or kind == "text":
        parts.append(note + ".")
    elif kind == "grammar":
        assert isinstance(fmt, dict)
        syntax = fmt.get("syntax") or "lark"
        parts.append(f"{note}; it must match this {syntax} grammar:\n{fmt.get('definition', '')}")
    else:
        raise Untranslatable(f"{where}.format.type={kind}", st.upstream)
    return "\n\n".join(parts)


def _tool_choice(
    choice: Any, tools: list[dict[str, Any]], st: _Request
) -> tuple[Any, list[dict[str, Any]]]:
    """(Chat tool_choice, the tools to offer). A choice that forces a hosted tool is refused."""
    if choice is None:
        return None, tools
    if choice in ("auto", "none"):
        return choice, tools
    if choice == "required":
        if not tools:
            raise Untranslatable("tool_choice=required (only hosted tools offered)", st.upstream)
        return choice, tools
    kind = choice.get("type") if isinstance(choice, dict) else None
    if kind in ("function", "custom"):
        assert isinstance(choice, dict)
        if not isinstance(choice.get("name"), str):
            raise BadRequest("'tool_choice.name' must be a string")
        return {"type": "function", "function": {"name": _called(choice)}}, tools
    if kind == "allowed_tools":
        assert isinstance(choice, dict)
        listed = choice.get("tools") or []
        if not isinstance(listed, list):
            raise BadRequest("'tool_choice.tools' must be an array")
        allowed: set[str] = set()
        for i, t in enumerate(listed):
            kind_i = t.get("type") if isinstance(t, dict) else None
            if kind_i == TOOL_SEARCH:
                allowed.add(TOOL_SEARCH)
            elif kind_i in ("function", "custom"):
                assert isinstance(t, dict)
                if not isinstance(t.get("name"), str):
                    raise BadRequest(f"'tool_choice.tools[{i}].name' must be a string")
                allowed.add(_called(t))
        kept = [t for t in tools if t["function"]["name"] in allowed]
        mode = choice.get("mode", "auto")
        if mode == "required" and not kept:
            raise Untranslatable("tool_choice.tools (only hosted tools allowed)", st.upstream)
        if mode not in ("auto", "required"):
            raise Untranslatable(f"tool_choice.mode={mode}", st.upstream)
        return mode, kept
    raise Untranslatable(f"tool_choice.type={kind}", st.upstream)


def _called(obj: dict[str, Any]) -> Any:
    """The upstream name of the tool a choice or an earlier call names (with its `namespace`)."""
    name = obj.get("name")
    return upstream_name(obj.get("namespace"), name) if isinstance(name, str) else name


# --- input -------------------------------------------------------------------------------------


def _messages(instructions: Any, items: Any, st: _Request) -> list[dict[str, Any]]:
    """Chat messages for `instructions` and `input`. The instructions and the leading system /
    developer messages become one system message (many chat templates take one, first);
    function and custom tool calls join the assistant message before them."""
    if isinstance(items, str):
        items = [{"role": "user", "content": items}]
    if not isinstance(items, list):
        raise BadRequest("'input' must be a string or an array of items")
    system: list[str] = []
    if isinstance(instructions, str):
        if instructions:
            system.append(instructions)
    elif instructions is not None:
        raise BadRequest("'instructions' must be a string")
    conv = _Conversation(st)
    for i, item in enumerate(items):
        where = f"input[{i}]"
        if not isinstance(item, dict):
            raise BadRequest(f"'{where}' must be an object")
        kind = item.get("type", "message")
        if not isinstance(kind, str):
            raise BadRequest(f"'{where}.type' must be a string")
        role = item.get("role")
        if kind == "message" and role in ("system", "developer") and not conv.messages:
            text = _system_text(item.get("content"), where, st)
            if text:
                system.append(text)
            continue
        conv.add(item, kind, where)
    conv.flush_images()
    if st.compact:
        conv.append({"role": "user", "content": COMPACTION_PROMPT}, conv.trigger)
    st.origins = (["instructions"] if system else []) + conv.origins
    head = [{"role": "system", "content": "\n\n".join(system)}] if system else []
    return head + conv.messages


class _Conversation:
    __slots__ = ("images", "messages", "origins", "reasoning", "st", "trigger", "where")

    def __init__(self, st: _Request) -> None:
        self.st = st
        self.trigger = ""  # where the compaction_trigger item was
        self.where = ""  # the input item being added
        self.messages: list[dict[str, Any]] = []
        self.origins: list[str] = []  # the input item each message came from
        self.reasoning: list[str] = []  # earlier reasoning for the next assistant message
        self.images: list[dict[str, Any]] = []  # tool-output images, after the tool messages

    def append(self, message: dict[str, Any], origin: str | None = None) -> None:
        self.messages.append(message)
        self.origins.append(origin or self.where)

    def add(self, item: dict[str, Any], kind: Any, where: str) -> None:
        st = self.st
        search = kind in ("tool_search_call", "tool_search_output") and client_search(item)
        if kind in ("function_call_output", "custom_tool_call_output") or (
            search and kind == "tool_search_output"
        ):
            images: list[dict[str, Any]] = []
            if search:  # what the client's tool search found (on offer now: `_offered`)
                content: Any = _found(item.get("tools"), f"{where}.tools")
            else:
                content, images = _tool_output(item.get("output"), f"{where}.output", st)
            self.where = f"{where}.output"  # where the images came from
            call_id, _ = carried(item.get("call_id"))
            self.append({"role": "tool", "tool_call_id": call_id, "content": content})
            self.images.extend(images)
            return
        self.flush_images()
        self.where = where
        if kind == "message":
            role = item.get("role")
            content = item.get("content")
            if role in ("system", "developer"):
                self.append({"role": "system", "content": _system_text(content, where, st)})
            elif role == "user":
                self.append({"role": "user", "content": _user_content(content, where, st)})
            elif role == "assistant":
                msg: dict[str, Any] = {
                    "role": "assistant",
                    "content": _assistant_text(content, where, st),
                }
                self._reason(msg)
                self.append(msg)
            else:
                raise Untranslatable(f"{where}.role={role}", st.upstream)
        elif kind == "function_call":
            self._call(item, item.get("arguments") or "{}", where)
        elif search:  # the client's tool search, called (its arguments are an object)
            given_args = item.get("arguments")
            if given_args is None:
                given_args = {}
            if not isinstance(given_args, dict):
                raise BadRequest(f"'{where}.arguments' must be an object")
            arguments = dumps_exact(given_args).decode()
            self._call({**item, "name": TOOL_SEARCH, "namespace": None}, arguments, where)
        elif kind == "custom_tool_call":
            text = item.get("input")
            if not isinstance(text, str):
                raise BadRequest(f"'{where}.input' must be a string")
            self._call(item, orjson.dumps({CUSTOM_INPUT: text}).decode(), where)
        elif kind == "reasoning":
            text = _reasoning_text(item)
            if st.options.reasoning_history and text:
                self.reasoning.append(text)
            else:
                st.drop("input.reasoning")
        elif kind in _HOSTED_CALLS:
            st.drop("input.hosted_tool_calls", f"{where}.type={kind}")
        elif kind == "additional_tools":
            pass  # tools on offer (`_offered`), not a message
        elif kind == "configuration_update":
            # A change of settings from here on (Codex sends the reasoning effort so, on models
            # that take it, keeping the request's own prefix for caching); a stateless upstream
            # needs only those in force now: the updates', later over earlier, over the request's.
            reasoning = item.get("reasoning")
            if reasoning is not None and not isinstance(reasoning, dict):
                raise BadRequest(f"'{where}.reasoning' must be an object")
            for key, value in (reasoning or {}).items():
                if key == "effort" and not isinstance(value, str):
                    raise BadRequest(f"'{where}.reasoning.effort' must be a string")
                if key in ("summary", "generate_summary"):
                    st.drop("reasoning.summary", f"{where}.reasoning.{key}")
                else:
                    st.update[key] = value
            if any(key not in ("type", "id", "reasoning") for key in item):
                st.drop("input.configuration_update", where)
        elif kind == "compaction_trigger":
            st.compact, self.trigger = True, where  # (the prompt comes last: `_messages`)
        elif kind == "compaction":
            summary = decode_summary(item.get("encrypted_content"), where, st.upstream)
            self.append({"role": "user", "content": f"{SUMMARY_INTRO}\n\n{summary}"})
        elif kind == "item_reference":
            raise NeedsState(f"{where}.type=item_reference", st.upstream)
        else:
            raise Untranslatable(f"{where}.type={kind}", st.upstream)

    def _call(self, item: dict[str, Any], arguments: Any, where: str) -> None:
        if not isinstance(arguments, str):
            raise BadRequest(f"'{where}.arguments' must be a string")
        call_id, extra = carried(item.get("call_id"))
        call = {
            "id": call_id,
            "type": "function",
            "function": {"name": _called(item), "arguments": arguments},
        }
        if extra is not None:  # the upstream's own (common.carrying_id)
            call["extra_content"] = extra
        last = self.messages[-1] if self.messages else None
        if last is not None and last["role"] == "assistant":
            last.setdefault("tool_calls", []).append(call)
            self._reason(last)
        else:
            msg = {"role": "assistant", "content": None, "tool_calls": [call]}
            self._reason(msg)
            self.append(msg)

    def _reason(self, msg: dict[str, Any]) -> None:
        if self.reasoning:
            before = [msg["reasoning_content"]] if msg.get("reasoning_content") else []
            msg["reasoning_content"] = "\n\n".join(before + self.reasoning)
            self.reasoning = []

    def flush_images(self) -> None:
        """Images of tool outputs: a user message right after the tool messages (the Chat
        format's tool messages carry text only)."""
        if self.images:
            self.append({"role": "user", "content": self.images})
            self.images = []


def _found(tools: Any, where: str) -> str:
    """The tool message for a client tool search's output: the tools it found, by the names
    they are offered under (their definitions are in the request's tools from now on)."""
    lines = []
    if isinstance(tools, list):
        for tool, name, _, _ in _opened(tools, where, None):
            if tool.get("type") not in ("function", "custom") or not isinstance(name, str):
                continue  # (hosted tools are not offered)
            text = tool.get("description")
            lines.append(f"- {name}: {text}" if isinstance(text, str) and text else f"- {name}")
    return found_tools(lines)


def _reasoning_text(item: dict[str, Any]) -> str:
    """The readable text of an earlier reasoning item: its reasoning_text content, else its
    summary (encrypted content is for OpenAI only)."""
    for key in ("content", "summary"):
        parts = item.get(key)
        if isinstance(parts, list):
            text = "\n\n".join(
                p["text"] for p in parts if isinstance(p, dict) and isinstance(p.get("text"), str)
            )
            if text:
                return text
    return ""


def _parts(content: Any, where: str) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "input_text", "text": content}]
    if not isinstance(content, list) or not all(isinstance(p, dict) for p in content):
        raise BadRequest(f"'{where}.content' must be a string or an array of parts")
    return content


def _system_text(content: Any, where: str, st: _Request) -> str:
    texts = []
    for j, part in enumerate(_parts(content, where)):
        if part.get("type") not in ("input_text", "output_text", "text"):
            raise Untranslatable(f"{where}.content[{j}].type={part.get('type')}", st.upstream)
        texts.append(str(part.get("text", "")))
    return "\n\n".join(texts)


def _assistant_text(content: Any, where: str, st: _Request) -> str:
    texts = []
    for j, part in enumerate(_parts(content, where)):
        kind = part.get("type")
        if kind in ("output_text", "input_text", "text"):
            texts.append(str(part.get("text", "")))
        elif kind == "refusal":
            texts.append(str(part.get("refusal", "")))
        else:
            raise Untranslatable(f"{where}.content[{j}].type={kind}", st.upstream)
    return "".join(texts)


def _user_content(content: Any, where: str, st: _Request) -> Any:
    if isinstance(content, str):
        return content
    parts = []
    for j, part in enumerate(_parts(content, where)):
        kind = part.get("type")
        if kind in ("input_text", "text", "output_text"):
            parts.append({"type": "text", "text": str(part.get("text", ""))})
        elif kind == "input_image":
            parts.append(_image(part, f"{where}.content[{j}]", st))
        else:  # input_file, input_audio …
            raise Untranslatable(f"{where}.content[{j}].type={kind}", st.upstream)
    if len(parts) == 1 and parts[0]["type"] == "text":
        return parts[0]["text"]
    return parts


def _image(part: dict[str, Any], where: str, st: _Request) -> dict[str, Any]:
    url = part.get("image_url")
    if given(part, "file_id") and not url:
        raise Untranslatable(f"{where}.file_id", st.upstream)
    if isinstance(url, dict):  # the Chat shape, sent by some clients
        url = url.get("url")
    if not isinstance(url, str) or not url:
        raise BadRequest(f"'{where}.image_url' must be a string")
    image: dict[str, Any] = {"url": url}
    if part.get("detail") in ("low", "high"):
        image["detail"] = part["detail"]
    return {"type": "image_url", "image_url": image}


def _tool_output(output: Any, where: str, st: _Request) -> tuple[Any, list[dict[str, Any]]]:
    """A tool message's content (text) and the output's images."""
    if isinstance(output, str):
        return output, []
    if output is None:
        return "", []
    if not isinstance(output, list):
        raise BadRequest(f"'{where}' must be a string or an array of parts")
    texts: list[dict[str, Any]] = []
    images: list[dict[str, Any]] = []
    for j, part in enumerate(output):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in ("input_text", "output_text", "text"):
            assert isinstance(part, dict)
            texts.append({"type": "text", "text": str(part.get("text", ""))})
        elif kind == "input_image":
            assert isinstance(part, dict)
            images.append(_image(part, f"{where}[{j}]", st))
        else:
            raise Untranslatable(f"{where}[{j}].type={kind}", st.upstream)
    if len(texts) == 1:
        return texts[0]["text"], images
    return texts or "", images
