"""The OpenAI Responses API (`POST /v1/responses`) in front of an upstream that speaks only Chat
Completions (`format: openai`) or only Anthropic Messages (`format: anthropic`); pure, no I/O.

One translation core, Responses <-> Chat Completions (`responses_request`, `responses_output`,
`responses_stream`), serves both upstream formats: for a Messages upstream the Chat request is
translated again by `Translator("openai_to_anthropic")`, and its answers and events come back
through the same Translator into Chat form before they become Responses objects and events.
`ResponsesTranslator` has the duck interface of `Translator`, so the relay uses either.

Decisions (SPEC §12: stateless requests only):

- State. The router stores nothing. `previous_response_id`, `conversation`, `background: true`
  and `item_reference` input items need stored responses and are refused (400, naming the
  parameter). `store: true` (the API's default when absent) is a dropped hint: the answer is
  given, reports `store: false`, and `GET /v1/responses/{id}` will not find it; on a strict route
  an explicit `store: true` is refused. An absent `store` is not counted.
- Hints dropped (each counted under a label of `RESPONSES_DROPPED_FIELDS`, refused on a strict
  route): `include` (e.g. `reasoning.encrypted_content`), `prompt_cache_key`,
  `prompt_cache_retention`, `service_tier`, `metadata`/`client_metadata`, `safety_identifier`,
  `truncation: auto`, `stream_options`, `max_tool_calls`, `reasoning.summary`, `text.verbosity`,
  settings other than `reasoning` in a `configuration_update` item.
  `user` is kept (Chat has it). Earlier `reasoning` items are dropped (their encrypted content is
  for OpenAI only) unless the route's `reasoning_history` option sends their text back as the
  next assistant message's `reasoning_content`; they are dropped on strict routes too.
- Tools. Function tools map one to one. A custom (free-form) tool such as Codex's
  `apply_patch` is offered as a function with one string parameter `input`, its grammar (or
  text format) folded into the description; when the model calls it, the client gets a
  `custom_tool_call` item whose `input` is that string (arguments that are not `{"input": …}`
  get their best reading: a lone string member, a JSON string, or the text as it is). Hosted
  tools (web_search, file_search, code_interpreter, image_generation, tool_search run by
  OpenAI, mcp, computer use, local_shell/shell/apply_patch built-ins) offered alongside are dropped
  (`tools.hosted`); a `tool_choice` that forces one is refused. `allowed_tools` narrows the
  offered functions. Earlier hosted-tool calls in the input are dropped. A tool inside a
  `namespace` (as every tool of Codex's "Responses Lite" models is, in
  an `additional_tools` input item with an empty `tools`) is offered as `<namespace>__<name>`,
  and its calls come back under its own name with its `namespace` (`ClientTools`). A
  `tool_search` the client runs (`execution: "client"`, Codex's way to its MCP tools) is a
  function whose calls come back as `tool_search_call` items; the tools of the client's
  `tool_search_output` items are offered from then on.
- Compaction. A request whose input holds a `compaction_trigger` item (Codex's server-side
  compaction) asks the upstream for a summary (`COMPACTION_PROMPT` after the conversation, no
  tool callable); its text comes back as one `compaction` item, the summary opaque in its
  `encrypted_content`, which a later request's `compaction` item turns back into a message. One
  another provider made cannot be read: refused.
- Reasoning. `reasoning.effort` -> `reasoning_effort`; the `reasoning` of `configuration_update`
  input items holds over the request's, a later item's over an earlier's (a stateless upstream
  needs only the settings in force now), and the answer's `response` object echoes those. The
  upstream's reasoning (Chat `reasoning_content` or `reasoning`) is raw chain of thought, so it
  comes back as a `reasoning` item with `reasoning_text` content and
  `response.reasoning_text.delta/.done` events (what OpenAI sends for open-weight models, and
  what Codex reads as reasoning content), never labelled a summary; `summary` stays empty.
- Limits and format. `max_output_tokens` -> `max_tokens` (the Chat field every compatible server
  takes; `max_completion_tokens` with translation.maxCompletionTokens, for OpenAI's reasoning
  models); `text.format` json_schema / json_object -> `response_format`; text -> nothing.
- Streaming. `stream: true` asks the Chat upstream for usage (`stream_options.include_usage`).
  Events follow OpenAI's sequence (created, in_progress, output_item.added, content_part.added,
  deltas, .done events, output_item.done, completed/incomplete), each with `type` and an
  increasing `sequence_number`, written as `event: <type>` + `data: <json>`. A custom tool
  call's input streams as `response.custom_tool_call_input.delta` decoded out of the
  `{"input": "…` JSON as it arrives; arguments of another shape are sent in one delta at the
  call's end. A finish_reason `length` / `content_filter` ends with `response.incomplete`.
- Failures. An upstream stream cut before its finish_reason ends with `response.failed`
  (code `server_error`), never `response.completed`; items still open then are not reported done
  (a half-streamed tool call must not run). An upstream error (an error event mid-stream, or an
  error answer after the SSE head, via `error_events`) ends with `response.failed` whose
  `error.code` is one clients act on: `context_length_exceeded`, `insufficient_quota`,
  `rate_limit_exceeded` (the upstream's message kept: Codex reads "try again in Ns"),
  `server_error`. Plain error answers are OpenAI error bodies with the same codes.
- Ids. `resp_<upstream id>`, items `msg_/rs_/fc_/ctc_<upstream id>_<output_index>`; a call's
  `call_id` is the upstream's tool call id.
"""

from __future__ import annotations

import re
from typing import Any

import orjson

from ..errors import UpstreamJSONError
from ..proxy.body import dumps_exact, loads_exact
from . import Translator
from .common import (
    DEFAULT_OPTIONS,
    BadUpstreamEvent,
    JSONAnswers,
    TranslationOptions,
    Untranslatable,
)
from .responses_output import (
    as_dict,
    base_id,
    client_param,
    compaction_item,
    compaction_problem,
    error_json,
    finish_status,
    message_text,
    output_items,
    response_object,
    usage,
)
from .responses_request import (
    CHAT,
    RESPONSES_DROPPED_FIELDS,
    ClientTools,
    chat_request,
    client_tools,
    compacting,
)
from .responses_stream import ResponsesStream

MESSAGES = "Anthropic Messages"
UPSTREAM_FORMATS = {"openai": "responses_to_openai", "anthropic": "responses_to_anthropic"}
_REFUSED_FIELD = re.compile(r"^'(?P<field>[^']+)' has no equivalent")
_MESSAGE_FIELD = re.compile(r"messages\[(?P<index>\d+)\]")


class ResponsesTranslator(JSONAnswers):
    """One Responses request's translation for a Chat Completions (`upstream_format` "openai")
    or Anthropic Messages ("anthropic") upstream; the interface of `Translator`."""

    __slots__ = (
        "_chat",
        "_compact",
        "_inner",
        "_stream",
        "_tools",
        "created",
        "direction",
        "dropped",
        "echo",
        "options",
        "payload",
    )

    def __init__(
        self,
        upstream_format: str,
        payload: dict[str, Any],
        created: int,
        options: TranslationOptions = DEFAULT_OPTIONS,
    ) -> None:
        if upstream_format not in UPSTREAM_FORMATS:
            raise ValueError(f"no Responses translation for the {upstream_format!r} format")
        self.direction = UPSTREAM_FORMATS[upstream_format]
        self.payload = payload  # the client's request (after the model mapping)
        # What the response object echoes: the request, with the reasoning settings in force
        # when its `configuration_update` items changed them (set by `request()`)
        self.echo = payload
        self.created = created  # `created_at` of the response
        self.options = options
        # Fields `request()` dropped, each a label of `translation_dropped_fields_total`:
        # RESPONSES_DROPPED_FIELDS, plus, for a Messages upstream, the labels the Chat ->
        # Messages translation adds.
        self.dropped: list[str] = []
        # How the client's tools are named upstream (calls of its custom tools come back as
        # custom_tool_call items, those of a namespace's tools with their namespace), and
        # whether the answer is a `compaction` item: set by `request()`; read from the payload
        # only when an answer is translated without it.
        self._tools: ClientTools | None = None
        self._compact: bool | None = None
        self._chat: dict[str, Any] | None = None
        self._inner: Translator | None = None
        self._stream: ResponsesStream | None = None

    @property
    def tools(self) -> ClientTools:
        if self._tools is None:
            self._tools = client_tools(self.payload)
        return self._tools

    @property
    def compact(self) -> bool:
        if self._compact is None:
            self._compact = compacting(self.payload)
        return self._compact

    @property
    def to_anthropic(self) -> bool:
        return self.direction == "responses_to_anthropic"

    def request(self) -> dict[str, Any]:
        """The upstream's request; raises `Untranslatable` (400) naming the Responses parameter
        it cannot carry."""
        upstream = MESSAGES if self.to_anthropic else CHAT
        chat = chat_request(self.payload, self.options, upstream)
        self._chat = chat.body
        self._tools, self._compact = chat.tools, chat.compact
        if chat.reasoning is not None:
            self.echo = {**self.payload, "reasoning": chat.reasoning}
        self.dropped = list(chat.dropped)
        if not self.to_anthropic:
            return chat.body
        self._inner = None
        inner = self._translator()
        try:
            body = inner.request()
        except Untranslatable as e:
            raise _renamed(e, chat.origins) from None
        for label in inner.dropped:
            if label not in self.dropped:
                self.dropped.append(label)
        return body

    def _translator(self) -> Translator:
        """The Chat -> Messages translation (its request: ours, once `request()` ran)."""
        if self._inner is None:
            chat = self._chat or {"stream_options": {"include_usage": True}}
            self._inner = Translator("openai_to_anthropic", chat, self.created, self.options)
        return self._inner

    # --- plain answers ---------------------------------------------------------------------

    def error_json(self, status: int, body: bytes) -> dict[str, Any]:
        return error_json(status, body)

    def body(self, status: int, content_type: str, data: bytes) -> bytes:
        """A plain upstream answer as a Responses `response` object (errors as OpenAI error
        bodies); the status is kept. A 2xx answer that is not a JSON object is
        `UpstreamJSONError` (502)."""
        if not 200 <= status < 300:
            return orjson.dumps(error_json(status, data))
        if self.to_anthropic:
            data, content_type = self._translator().body(status, content_type, data), "json"
        try:
            parsed = loads_exact(data) if "json" in content_type.lower() else None
        except ValueError:
            parsed = None
        if not isinstance(parsed, dict):
            raise UpstreamJSONError()
        return dumps_exact(self.response(parsed))

    def response(self, chat: dict[str, Any]) -> dict[str, Any]:
        """The `response` object for a Chat Completions answer (its first choice)."""
        choices = chat.get("choices")
        choice = as_dict(choices[0] if isinstance(choices, list) and choices else None)
        message = as_dict(choice.get("message"))
        status, reason = finish_status(choice.get("finish_reason"))
        base = base_id(chat.get("id"))
        item_status = "completed" if status == "completed" else "incomplete"
        if self.compact:  # the answer is the summary
            summary = message_text(message)
            problem = compaction_problem(summary, choice.get("finish_reason"))
            if problem is not None:
                raise UpstreamJSONError(problem)
            output = [compaction_item(base, 0, summary)]
        else:
            output = output_items(message, base, self.tools, item_status)
        return response_object(
            self.echo,
            base=base,
            created=self.created,
            model=chat.get("model"),
            status=status,
            output=output,
            usage=usage(chat.get("usage")),
            incomplete=reason,
        )

    # --- streams ---------------------------------------------------------------------------

    def events(self, events: list[bytes]) -> list[bytes]:
        """Complete upstream SSE events in, Responses events out (raises BadUpstreamEvent for
        an event whose data is not JSON)."""
        stream = self._stream_translator()
        if self.to_anthropic:
            events = self._translator().events(events)
        out: list[bytes] = []
        try:
            for event in events:
                out.extend(stream.feed(event))
        except BadUpstreamEvent:
            stream.unsent(out)  # they end the stream, before its response.failed
            raise
        return out

    def finish(self) -> list[bytes]:
        """The upstream stream ended: `response.completed` / `response.incomplete` if it
        finished, `response.failed` if it was cut."""
        stream = self._stream_translator()
        out: list[bytes] = []
        if self.to_anthropic:
            inner = self._translator()
            events = inner.finish()
            if not inner.broken:  # (cut: the Responses stream says so in its own words below)
                for event in events:
                    out.extend(stream.feed(event))
        out.extend(stream.finish())
        return out

    @property
    def broken(self) -> bool:
        """The upstream's stream failed (cut before its finish, or an error event): the
        client's stream ended with `response.failed`."""
        return self._stream is not None and self._stream.broken

    def error_data(self, status: int, body: bytes) -> bytes:
        """An upstream error answer after the SSE head, as the data of a Responses `error`
        event (`{"type": "error", "code", "message", "param", "sequence_number"}`). Prefer
        `error_events`: clients such as Codex act only on `response.failed`."""
        return self._stream_translator().error_data(status, body)

    def error_events(self, status: int, body: bytes) -> list[bytes]:
        """An upstream error answer after the SSE head, as the complete events that end the
        client's stream: `response.failed` with the error's code and message (preceded by
        `response.created` / `response.in_progress` when those did not go out yet)."""
        return self._stream_translator().error_events(status, body)

    def _stream_translator(self) -> ResponsesStream:
        if self._stream is None:
            self._stream = ResponsesStream(self.echo, self.created, self.tools, self.compact)
        return self._stream


def _renamed(e: Untranslatable, origins: list[str]) -> Untranslatable:
    """A refusal of the Chat -> Messages step, naming the Responses parameter instead of the
    Chat field (the client never sent the Chat request): `messages[k]…` becomes the input item
    (or `instructions`) message k came from."""
    match = _REFUSED_FIELD.match(e.message)
    if match is None:
        return e
    field = match["field"]
    message = _MESSAGE_FIELD.match(field)
    if message is not None:
        k = int(message["index"])
        origin = origins[k] if k < len(origins) else "input"
        field = origin + field[message.end() :]
    else:
        field = client_param(field)
    return Untranslatable(field, MESSAGES)


__all__ = ["RESPONSES_DROPPED_FIELDS", "UPSTREAM_FORMATS", "ResponsesTranslator"]
