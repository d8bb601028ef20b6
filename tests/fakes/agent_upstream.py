"""A fake provider that plays one scripted, tool-using conversation with a real coding agent.

`AgentScript` is a FakeUpstream handler (`upstream.reply_with(script)`). It answers in the wire
format of the path it is called on: OpenAI Chat Completions (`…/chat/completions`), Anthropic
Messages (`…/messages`) or OpenAI Responses (`…/responses`), as JSON or as a stream, as the request
asks. The conversation, whichever client and whichever translation sits in between:

1. the prompt (a user message carrying the script's token), with tools on offer → an assistant
   turn with a little text and one tool call asking the client to write `filename` holding
   `content`. The tool is picked from the request's own `tools` list, never assumed: a tool taking
   `file_path` and `content` (Claude Code's `Write`, Qwen Code's `write_file`), else `apply_patch`
   (Codex's freeform tool, or a function tool wherever a translator turned it into one), else a
   shell tool;
2. the same conversation with a tool result after the prompt → the final text `DONE-<token>`;
3. anything else → a short plain text, so that the clients' side requests never derail the
   script: Claude Code's title and quota probes (no prompt, or no tools), and whatever a client
   asks once the conversation already holds `DONE-<token>` (Qwen Code's memory subagent replays
   the whole conversation, tool calls and results included, with tools on offer).

Replies look like the providers' own: a reasoning part first when the request asked for reasoning
(`reasoning_content` deltas on Chat, a signed `thinking` block on Messages, a `reasoning` item on
Responses), usage on every reply (on Chat streams only when `stream_options.include_usage`), and
streams that end the way each format ends (`finish_reason` then `[DONE]`, `message_stop`,
`response.completed`). Every request is recorded as a `Turn`, for the test's assertions and for
the report of what each client sent.
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.fakes.gemini_schema import refusals
from tests.fakes.upstream import Recorded, Reply, sse

SSE_HEADERS = [("Content-Type", "text/event-stream"), ("Cache-Control", "no-cache")]
JSON_HEADERS = [("Content-Type", "application/json")]
CREATED = 1700000000
REASONING = "The user wants a file; I will call the tool that writes it."
# How the router asks the upstream model for a compaction's summary (its words, in part).
COMPACTION_ASK = "is about to be replaced by a summary"
PREAMBLE = "Writing the file now."
SIDE_TEXT = "OK"

CHAT = "chat"
MESSAGES = "messages"
RESPONSES = "responses"


# -- what a request offers and says, in any of the three formats -------------------------------


@dataclass(frozen=True)
class Tool:
    name: str
    kind: str  # "function" (JSON arguments) or "custom" (freeform text input)
    properties: tuple[str, ...] = ()
    namespace: str | None = None  # Responses: offered inside a `namespace` tool


@dataclass(frozen=True)
class Call:
    """The tool call the script makes: JSON `arguments` for a function, `text` for a custom tool."""

    tool: Tool
    arguments: dict[str, Any] | None = None
    text: str | None = None

    def arguments_json(self) -> str:
        return json.dumps(self.arguments)


@dataclass
class Seen:
    """One request, reduced to what the script decides on."""

    fmt: str
    model: str
    stream: bool
    tools: list[Tool]
    prompted: bool  # a user message carries the token
    results: list[str]  # tool results after that message, as text
    finished: bool  # an assistant message after it already says DONE-<token>
    reasoning: bool  # the request asked for reasoning / thinking
    include_usage: bool


@dataclass
class Turn:
    """A request the script answered, and how."""

    path: str
    fmt: str
    kind: str  # "tool_call", "final" or "side"
    model: str
    stream: bool
    tool: str | None  # the tool called (kind "tool_call")
    results: list[str]  # the tool results it saw (kind "final")
    body: dict[str, Any]
    headers: list[tuple[str, str]]


def _text_of(content: Any) -> str:
    """The text of a message's content: a string, or a list of text-like parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if isinstance(part, str):
                parts.append(part)
            elif isinstance(part, dict):
                if isinstance(part.get("text"), str):
                    parts.append(part["text"])
                elif "content" in part:  # an Anthropic tool_result nested in a list
                    parts.append(_text_of(part["content"]))
        return "\n".join(parts)
    return "" if content is None else json.dumps(content)


def _properties(schema: Any) -> tuple[str, ...]:
    if isinstance(schema, dict) and isinstance(schema.get("properties"), dict):
        return tuple(schema["properties"])
    return ()


@dataclass
class Reading:
    """A conversation read message by message: where the prompt is, what followed it."""

    tools: list[Tool]
    prompted: bool = False
    results: list[str] = field(default_factory=list)
    finished: bool = False

    def user(self, text: str, token: str) -> None:
        if token in text:  # the prompt (again): what came before it no longer counts
            self.prompted, self.results, self.finished = True, [], False

    def assistant(self, text: str, token: str) -> None:
        if self.prompted and f"DONE-{token}" in text:
            self.finished = True

    def result(self, text: str) -> None:
        if self.prompted:
            self.results.append(text)


def _read_chat(body: dict[str, Any], token: str) -> Reading:
    tools = []
    for t in body.get("tools") or []:
        if t.get("type") == "function":
            f = t.get("function") or {}
            tools.append(Tool(f.get("name", ""), "function", _properties(f.get("parameters"))))
        elif t.get("type") == "custom":
            tools.append(Tool((t.get("custom") or {}).get("name", ""), "custom"))
    r = Reading(tools)
    for m in body.get("messages") or []:
        if m.get("role") == "user":
            r.user(_text_of(m.get("content")), token)
        elif m.get("role") == "assistant":
            r.assistant(_text_of(m.get("content")), token)
        elif m.get("role") == "tool":
            r.result(_text_of(m.get("content")))
    return r


def _read_messages(body: dict[str, Any], token: str) -> Reading:
    # Server tools (web_search_…) carry no input_schema: the script cannot call them anyway.
    tools = [
        Tool(t.get("name", ""), "function", _properties(t.get("input_schema")))
        for t in body.get("tools") or []
        if "input_schema" in t
    ]
    r = Reading(tools)
    for m in body.get("messages") or []:
        content = m.get("content")
        if m.get("role") == "assistant":
            r.assistant(_text_of(content), token)
        elif m.get("role") == "user":
            blocks = content if isinstance(content, list) else []
            found = [b for b in blocks if isinstance(b, dict) and b.get("type") == "tool_result"]
            for b in found:
                r.result(_text_of(b.get("content")))
            if not found:
                r.user(_text_of(content), token)
    return r


def _responses_tools(offered: list[Any], namespace: str | None = None) -> list[Tool]:
    tools = []
    for t in offered:
        if t.get("type") == "function":
            props = _properties(t.get("parameters"))
            tools.append(Tool(t.get("name", ""), "function", props, namespace))
        elif t.get("type") == "custom":
            tools.append(Tool(t.get("name", ""), "custom", (), namespace))
        elif t.get("type") == "namespace":
            tools += _responses_tools(t.get("tools") or [], t.get("name"))
    return tools


def _read_responses(body: dict[str, Any], token: str) -> Reading:
    items = body.get("input")
    if isinstance(items, str):
        items = [{"role": "user", "content": items}]
    # Codex's "Responses Lite" models get their tools in an `additional_tools` input item
    offered = list(body.get("tools") or [])
    for item in items or []:
        if item.get("type") == "additional_tools":
            offered += item.get("tools") or []
    r = Reading(_responses_tools(offered))
    for item in items or []:
        kind = item.get("type", "message")
        if kind == "message" and item.get("role") == "user":
            r.user(_text_of(item.get("content")), token)
        elif kind == "message" and item.get("role") == "assistant":
            r.assistant(_text_of(item.get("content")), token)
        elif kind in ("function_call_output", "custom_tool_call_output"):
            r.result(_text_of(item.get("output")))
    return r


def read_request(req: Recorded, token: str) -> Seen:
    body = req.json() if req.body else {}
    fmt = format_of(req.path)
    reader = {CHAT: _read_chat, MESSAGES: _read_messages, RESPONSES: _read_responses}[fmt]
    r = reader(body, token)
    thinking = body.get("thinking")
    reasoning = (
        (isinstance(thinking, dict) and thinking.get("type") in ("enabled", "adaptive"))
        if fmt == MESSAGES
        else bool(body.get("reasoning") or body.get("reasoning_effort"))
    )
    opts = body.get("stream_options")
    return Seen(
        fmt=fmt,
        model=str(body.get("model", "unknown")),
        stream=body.get("stream") is True,
        tools=r.tools,
        prompted=r.prompted,
        results=r.results,
        finished=r.finished,
        reasoning=reasoning,
        include_usage=isinstance(opts, dict) and opts.get("include_usage") is True,
    )


def format_of(path: str) -> str:
    if path.endswith("/chat/completions"):
        return CHAT
    if path.endswith("/messages"):
        return MESSAGES
    if path.endswith("/responses"):
        return RESPONSES
    raise ValueError(f"no scripted format for {path}")


# Gemini's OpenAI-compatible API: tool schemas are checked as Gemini checks them, and earlier
# function calls must come back with the thought signature the fake gave them, or with the value
# Gemini documents for calls it did not sign.
GEMINI_PATH = "/v1beta/openai/"
SKIP_SIGNATURE = "skip_thought_signature_validator"


def gemini_refusal(problems: list[str]) -> Reply:
    """Gemini's 400 for tool schemas it cannot read (its OpenAI-compatible API answers with a
    list holding its own error object)."""
    error = {"code": 400, "message": "\n".join(problems), "status": "INVALID_ARGUMENT"}
    return Reply(status=400, headers=JSON_HEADERS, body=json.dumps([{"error": error}]).encode())


# A tool Claude Code defers (offered only once its ToolSearch has loaded it).
DEFERRED_TOOL = "NotebookEdit"


# -- the script ---------------------------------------------------------------------------------


@dataclass
class AgentScript:
    """Ask the client to write `workdir/filename` holding `content`, then say `DONE-<token>`."""

    token: str
    workdir: Path
    filename: str
    content: str  # ends with a newline, so that an apply_patch "Add File" writes it byte for byte
    # The file is written by an MCP server's `save_note` tool (tests/fakes/mcp_notes.py), which
    # the client offers only once its own tool search (Codex's `tool_search`) has found it: the
    # script searches first, then calls what was found, then says it is done.
    mcp: bool = False
    # Claude Code: the model first loads one of the tools Claude Code defers (`DEFERRED_TOOL`)
    # with its ToolSearch tool, whose result names the tool loaded; the next request must offer
    # that tool, and the script then writes the file as usual.
    tool_search: bool = False
    # Chat Completions only: the tool call reports a context of 200,000 tokens, so that the
    # client compacts before it goes on (Codex's built-in provider asks the router to, with a
    # `compaction_trigger`); the summary request is answered with a summary naming the task,
    # and the request that carries that summary back gets the final text.
    compact: bool = False
    turns: list[Turn] = field(default_factory=list)
    # What the Gemini fake refused (its paths: GEMINI_PATH), per request
    refused: list[list[str]] = field(default_factory=list)
    # The thought signature the Gemini fake gave each of its calls, by call id, and the calls
    # that came back with Gemini's skip value instead (SKIP_SIGNATURE)
    signatures: dict[str, str] = field(default_factory=dict)
    skipped: list[Any] = field(default_factory=list)
    _ids: itertools.count[int] = field(default_factory=itertools.count)

    @property
    def prompt(self) -> str:
        # The final text is not in it: a client that echoes the prompt cannot pass for done.
        return f"Create the file {self.filename} in the current directory. (task {self.token})"

    @property
    def final_text(self) -> str:
        return f"DONE-{self.token}"

    @property
    def summary(self) -> str:
        return f"Summary of task {self.token}: the file {self.filename} was written."

    @property
    def path(self) -> Path:
        return self.workdir / self.filename

    def kinds(self) -> list[str]:
        return [t.kind for t in self.turns]

    def conversation(self) -> list[Turn]:
        """The turns of the scripted conversation, without the side requests."""
        return [t for t in self.turns if t.kind != "side"]

    # -- FakeUpstream handler -------------------------------------------------------------------
    def __call__(self, req: Recorded) -> Reply:
        try:
            seen = read_request(req, self.token)
        except ValueError:
            return Reply(status=404, headers=JSON_HEADERS, body=b'{"error":"not scripted"}')
        if req.path.startswith(GEMINI_PATH):
            body = req.json()
            refused = refusals(body.get("tools")) + self.unsigned(body.get("messages"))
            if refused:
                self.refused.append(refused)
                return gemini_refusal(refused)
        call = None
        raw = req.body.decode(errors="replace")
        if seen.finished:
            kind, text = "side", SIDE_TEXT
        elif self.compact and COMPACTION_ASK in raw:
            kind, text = "compact", self.summary
        elif self.compact and self.summary in raw:
            kind, text = "final", self.final_text
        elif self.mcp and seen.prompted and (call := self.mcp_plan(seen)) is not None:
            kind, text = "tool_call", PREAMBLE
        elif self.tool_search and seen.prompted and (call := self.search_plan(seen)) is not None:
            kind, text = "tool_call", PREAMBLE
        elif seen.prompted and seen.results:
            kind, text = "final", self.final_text
        elif not self.mcp and seen.prompted and (call := self.plan(seen.tools)) is not None:
            kind, text = "tool_call", PREAMBLE
        else:
            kind, text = "side", SIDE_TEXT
        self.turns.append(
            Turn(
                path=req.path,
                fmt=seen.fmt,
                kind=kind,
                model=seen.model,
                stream=seen.stream,
                tool=call.tool.name if call else None,
                results=seen.results,
                body=req.json() if req.body else {},
                headers=req.headers,
            )
        )
        n = next(self._ids)
        reasoning = seen.reasoning and kind != "side"
        reply = {CHAT: chat_reply, MESSAGES: messages_reply, RESPONSES: responses_reply}[seen.fmt]
        if self.compact and kind == "tool_call" and seen.fmt == CHAT:
            return chat_reply(seen, f"{self.token}{n}", text, call, reasoning, 200_000)
        if call is not None and req.path.startswith(GEMINI_PATH):
            # Gemini 3: the call comes with a thought signature the next turn must send back
            sig = base64.b64encode(os.urandom(240)).decode()
            self.signatures[f"call_{self.token}{n}"] = sig
            extra = {"google": {"thought_signature": sig}}
            return chat_reply(seen, f"{self.token}{n}", text, call, reasoning, extra=extra)
        return reply(seen, f"{self.token}{n}", text, call, reasoning)

    def unsigned(self, messages: Any) -> list[str]:
        """Gemini 3's refusal of earlier function calls sent back without the thought signature
        it gave them (`extra_content.google.thought_signature`)."""
        out = []
        for i, m in enumerate(messages if isinstance(messages, list) else []):
            calls = m.get("tool_calls") if isinstance(m, dict) else None
            for call in calls if isinstance(calls, list) else []:
                extra = call.get("extra_content") if isinstance(call, dict) else None
                google = extra.get("google") if isinstance(extra, dict) else None
                sig = google.get("thought_signature") if isinstance(google, dict) else None
                if sig == SKIP_SIGNATURE:  # Gemini's documented stand-in: taken
                    self.skipped.append(call.get("id"))
                elif sig is None or sig != self.signatures.get(call.get("id")):
                    name = (call.get("function") or {}).get("name")
                    out.append(
                        "Function call is missing a thought_signature in functionCall parts. "
                        f"function call `default_api:{name}`, position {i + 1}."
                    )
        return out

    def mcp_plan(self, seen: Seen) -> Call | None:
        """The tool search (no result yet), then the `save_note` it found (one result)."""
        if len(seen.results) > 1:
            return None
        for t in seen.tools:
            if not seen.results and t.name == "tool_search" and "query" in t.properties:
                return Call(t, arguments={"query": "save a note"})
            if seen.results and t.name.endswith("save_note") and "text" in t.properties:
                return Call(t, arguments={"text": self.content})
        return None

    def search_plan(self, seen: Seen) -> Call | None:
        """ToolSearch loading DEFERRED_TOOL (no result yet), then, once that tool is offered, the
        call that writes the file (one result)."""
        names = {t.name for t in seen.tools}
        if not seen.results:
            for t in seen.tools:
                if t.name == "ToolSearch" and "query" in t.properties:
                    return Call(t, arguments={"query": f"select:{DEFERRED_TOOL}"})
        elif len(seen.results) == 1 and DEFERRED_TOOL in names:
            return self.plan(seen.tools)
        return None

    def plan(self, tools: list[Tool]) -> Call | None:
        """The call that writes the file, with the best tool the request offers."""
        for t in tools:
            if t.kind == "function" and {"file_path", "content"} <= set(t.properties):
                args = {"file_path": str(self.path), "content": self.content}
                return Call(t, arguments=args)
        for t in tools:
            if t.name == "apply_patch":
                if t.kind == "custom":
                    return Call(t, text=self.patch())
                # a translator's JSON stand-in: its one string parameter carries the patch
                named: list[str] = [p for p in ("input", "patch") if p in t.properties]
                prop = (named or [*t.properties, "input"])[0]
                return Call(t, arguments={prop: self.patch()})
        for t in tools:
            # Codex's code mode (its "Responses Lite" models): one free-form `exec` tool runs
            # JavaScript that calls the nested tools, apply_patch among them; offered upstream
            # as a function `functions__exec` with one string parameter where translated
            if t.name == "exec" and t.kind == "custom":
                return Call(t, text=self.script())
            if t.name.endswith("__exec") and "input" in t.properties:
                return Call(t, arguments={"input": self.script()})
        command = f"printf %s {shlex.quote(self.content)} > {shlex.quote(str(self.path))}"
        for t in tools:
            if t.kind != "function":
                continue
            if "cmd" in t.properties:  # Codex's exec_command
                return Call(t, arguments={"cmd": command})
            if t.name in ("shell", "local_shell") and "command" in t.properties:
                return Call(t, arguments={"command": ["bash", "-lc", command]})
            if t.name in ("Bash", "run_shell_command") and "command" in t.properties:
                return Call(t, arguments={"command": command})
        return None

    def script(self) -> str:
        """Code mode's JavaScript that writes the file through the nested apply_patch tool."""
        return f"await tools.apply_patch({json.dumps(self.patch())});\n"

    def patch(self) -> str:
        lines = "".join(f"+{line}\n" for line in self.content.splitlines())
        return f"*** Begin Patch\n*** Add File: {self.filename}\n{lines}*** End Patch\n"


# -- OpenAI Chat Completions --------------------------------------------------------------------


def _data(obj: Any) -> str:
    return "data: " + json.dumps(obj) + "\n\n"


def _chat_tool_call(call: Call, call_id: str) -> dict[str, Any]:
    if call.tool.kind == "custom":
        return {
            "id": call_id,
            "type": "custom",
            "custom": {"name": call.tool.name, "input": call.text},
        }
    return {
        "id": call_id,
        "type": "function",
        "function": {"name": call.tool.name, "arguments": call.arguments_json()},
    }


def _halves(s: str) -> list[str]:
    """A text cut in two, as a provider streams it in pieces."""
    mid = max(1, len(s) // 2)
    return [s[:mid], s[mid:]] if len(s) > 1 else [s]


def chat_reply(
    seen: Seen,
    uid: str,
    text: str,
    call: Call | None,
    reasoning: bool,
    prompt_tokens: int = 120,
    extra: dict[str, Any] | None = None,
) -> Reply:
    """`extra`: the tool call's `extra_content` (Gemini's thought signature); given, the answer
    is shaped as Gemini's OpenAI-compatible API shapes it: a streamed call comes whole in one
    chunk without an `index`, and an answer with calls ends with `stop`."""
    call_id = f"call_{uid}"
    finish = "tool_calls" if call and not extra else "stop"
    usage = {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": 30,
        "total_tokens": prompt_tokens + 30,
    }
    base = {"id": f"chatcmpl-{uid}", "created": CREATED, "model": seen.model}
    if not seen.stream:
        message: dict[str, Any] = {"role": "assistant", "content": text}
        if reasoning:
            message["reasoning_content"] = REASONING
        if call:
            message["tool_calls"] = [_chat_tool_call(call, call_id)]
            if extra:
                message["tool_calls"][0]["extra_content"] = extra
        body = {
            **base,
            "object": "chat.completion",
            "choices": [{"index": 0, "message": message, "finish_reason": finish}],
            "usage": usage,
        }
        return Reply(headers=JSON_HEADERS, body=json.dumps(body).encode())

    def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> str:
        choice = {"index": 0, "delta": delta, "finish_reason": finish_reason}
        return _data({**base, "object": "chat.completion.chunk", "choices": [choice]})

    events = [chunk({"role": "assistant", "content": ""})]
    if reasoning:
        events += [chunk({"reasoning_content": piece}) for piece in _halves(REASONING)]
    events += [chunk({"content": piece}) for piece in _halves(text)]
    if call and call.tool.kind == "custom":
        head = {"index": 0, "id": call_id, "type": "custom", "custom": {"name": call.tool.name}}
        events.append(chunk({"tool_calls": [head]}))
        events += [
            chunk({"tool_calls": [{"index": 0, "custom": {"input": piece}}]})
            for piece in _halves(call.text or "")
        ]
    elif call and extra:
        whole = {
            "id": call_id,
            "type": "function",
            "function": {"name": call.tool.name, "arguments": call.arguments_json()},
            "extra_content": extra,
        }
        events.append(chunk({"tool_calls": [whole]}))
    elif call:
        head = {
            "index": 0,
            "id": call_id,
            "type": "function",
            "function": {"name": call.tool.name, "arguments": ""},
        }
        events.append(chunk({"tool_calls": [head]}))
        events += [
            chunk({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]})
            for piece in _halves(call.arguments_json())
        ]
    events.append(chunk({}, finish))
    if seen.include_usage:
        events.append(
            _data({**base, "object": "chat.completion.chunk", "choices": [], "usage": usage})
        )
    events.append("data: [DONE]\n\n")
    return Reply(headers=SSE_HEADERS, chunks=sse(*events))


# -- Anthropic Messages -------------------------------------------------------------------------


def _event(obj: dict[str, Any]) -> str:
    return f"event: {obj['type']}\ndata: {json.dumps(obj)}\n\n"


def messages_reply(seen: Seen, uid: str, text: str, call: Call | None, reasoning: bool) -> Reply:
    blocks: list[dict[str, Any]] = []
    if reasoning:
        blocks.append({"type": "thinking", "thinking": REASONING, "signature": f"sig-{uid}"})
    blocks.append({"type": "text", "text": text})
    if call:
        # A freeform tool has no place in Messages: a translator must have made it a JSON tool.
        args = call.arguments if call.arguments is not None else {"input": call.text}
        blocks.append(
            {"type": "tool_use", "id": f"toolu_{uid}", "name": call.tool.name, "input": args}
        )
    stop = "tool_use" if call else "end_turn"
    message = {
        "id": f"msg_{uid}",
        "type": "message",
        "role": "assistant",
        "model": seen.model,
        "content": blocks,
        "stop_reason": stop,
        "stop_sequence": None,
        "usage": {"input_tokens": 120, "output_tokens": 30},
    }
    if not seen.stream:
        return Reply(headers=JSON_HEADERS, body=json.dumps(message).encode())

    start = {**message, "content": [], "stop_reason": None}
    start["usage"] = {"input_tokens": 120, "output_tokens": 1}
    events = [_event({"type": "message_start", "message": start}), _event({"type": "ping"})]
    for index, block in enumerate(blocks):
        if block["type"] == "thinking":
            empty: dict[str, Any] = {"type": "thinking", "thinking": "", "signature": ""}
            deltas = [{"type": "thinking_delta", "thinking": p} for p in _halves(REASONING)]
            deltas.append({"type": "signature_delta", "signature": block["signature"]})
        elif block["type"] == "text":
            empty = {"type": "text", "text": ""}
            deltas = [{"type": "text_delta", "text": p} for p in _halves(text)]
        else:
            empty = {**block, "input": {}}
            deltas = [
                {"type": "input_json_delta", "partial_json": p}
                for p in _halves(json.dumps(block["input"]))
            ]
        events.append(
            _event({"type": "content_block_start", "index": index, "content_block": empty})
        )
        events += [
            _event({"type": "content_block_delta", "index": index, "delta": d}) for d in deltas
        ]
        events.append(_event({"type": "content_block_stop", "index": index}))
    events.append(
        _event(
            {
                "type": "message_delta",
                "delta": {"stop_reason": stop, "stop_sequence": None},
                "usage": {"output_tokens": 30},
            }
        )
    )
    events.append(_event({"type": "message_stop"}))
    return Reply(headers=SSE_HEADERS, chunks=sse(*events))


# -- OpenAI Responses ---------------------------------------------------------------------------


def _responses_items(
    uid: str, text: str, call: Call | None, reasoning: bool
) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    if reasoning:
        items.append(
            {
                "type": "reasoning",
                "id": f"rs_{uid}",
                "summary": [{"type": "summary_text", "text": REASONING}],
                "encrypted_content": f"opaque-{uid}",
            }
        )
    items.append(
        {
            "type": "message",
            "id": f"msg_{uid}",
            "status": "completed",
            "role": "assistant",
            "content": [{"type": "output_text", "text": text, "annotations": []}],
        }
    )
    if call and call.tool.kind == "custom":
        items.append(
            {
                "type": "custom_tool_call",
                "id": f"ctc_{uid}",
                "call_id": f"call_{uid}",
                "name": call.tool.name,
                "input": call.text,
                "status": "completed",
            }
        )
        if call.tool.namespace is not None:
            items[-1]["namespace"] = call.tool.namespace
    elif call:
        items.append(
            {
                "type": "function_call",
                "id": f"fc_{uid}",
                "call_id": f"call_{uid}",
                "name": call.tool.name,
                "arguments": call.arguments_json(),
                "status": "completed",
            }
        )
        if call.tool.namespace is not None:
            items[-1]["namespace"] = call.tool.namespace
    return items


def responses_reply(seen: Seen, uid: str, text: str, call: Call | None, reasoning: bool) -> Reply:
    items = _responses_items(uid, text, call, reasoning)
    usage = {
        "input_tokens": 120,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": 30,
        "output_tokens_details": {"reasoning_tokens": 10 if reasoning else 0},
        "total_tokens": 150,
    }
    response: dict[str, Any] = {
        "id": f"resp_{uid}",
        "object": "response",
        "created_at": CREATED,
        "status": "completed",
        "error": None,
        "incomplete_details": None,
        "instructions": None,
        "model": seen.model,
        "output": items,
        "parallel_tool_calls": True,
        "tool_choice": "auto",
        "tools": [],
        "metadata": {},
        "usage": usage,
    }
    if not seen.stream:
        return Reply(headers=JSON_HEADERS, body=json.dumps(response).encode())

    seq = itertools.count()

    def ev(kind: str, **data: Any) -> str:
        obj = {"type": kind, "sequence_number": next(seq), **data}
        return f"event: {kind}\ndata: {json.dumps(obj)}\n\n"

    pending = {**response, "status": "in_progress", "output": [], "usage": None}
    events = [
        ev("response.created", response=pending),
        ev("response.in_progress", response=pending),
    ]
    for i, item in enumerate(items):
        ref = {"item_id": item["id"], "output_index": i}
        if item["type"] == "reasoning":
            events.append(
                ev("response.output_item.added", output_index=i, item={**item, "summary": []})
            )
            part = {"type": "summary_text", "text": ""}
            events.append(
                ev("response.reasoning_summary_part.added", **ref, summary_index=0, part=part)
            )
            events += [
                ev("response.reasoning_summary_text.delta", **ref, summary_index=0, delta=p)
                for p in _halves(REASONING)
            ]
            events.append(
                ev("response.reasoning_summary_text.done", **ref, summary_index=0, text=REASONING)
            )
            done_part = {"type": "summary_text", "text": REASONING}
            events.append(
                ev("response.reasoning_summary_part.done", **ref, summary_index=0, part=done_part)
            )
        elif item["type"] == "message":
            added = {**item, "status": "in_progress", "content": []}
            events.append(ev("response.output_item.added", output_index=i, item=added))
            empty = {"type": "output_text", "text": "", "annotations": []}
            events.append(ev("response.content_part.added", **ref, content_index=0, part=empty))
            events += [
                ev("response.output_text.delta", **ref, content_index=0, delta=p, logprobs=[])
                for p in _halves(text)
            ]
            events.append(
                ev("response.output_text.done", **ref, content_index=0, text=text, logprobs=[])
            )
            events.append(
                ev("response.content_part.done", **ref, content_index=0, part=item["content"][0])
            )
        elif item["type"] == "function_call":
            added = {**item, "arguments": "", "status": "in_progress"}
            events.append(ev("response.output_item.added", output_index=i, item=added))
            events += [
                ev("response.function_call_arguments.delta", **ref, delta=p)
                for p in _halves(item["arguments"])
            ]
            events.append(
                ev("response.function_call_arguments.done", **ref, arguments=item["arguments"])
            )
        else:  # custom_tool_call
            added = {**item, "input": "", "status": "in_progress"}
            events.append(ev("response.output_item.added", output_index=i, item=added))
            events += [
                ev("response.custom_tool_call_input.delta", **ref, delta=p)
                for p in _halves(item["input"])
            ]
            events.append(ev("response.custom_tool_call_input.done", **ref, input=item["input"]))
        events.append(ev("response.output_item.done", output_index=i, item=item))
    events.append(ev("response.completed", response=response))
    return Reply(headers=SSE_HEADERS, chunks=sse(*events))
