"""What both translation directions share: the refusal error, the stop-reason and error-type
tables, and writing and reading SSE events (pure functions, no I/O)."""

from __future__ import annotations

import base64
import hashlib
import re
from dataclasses import dataclass
from typing import Any

import orjson

from ..errors import BadRequest, StreamError, error_body
from ..proxy.body import dumps_exact, loads_exact
from ..proxy.events import DONE as DONE  # re-exported: the translators write it
from ..proxy.events import event_data


@dataclass(frozen=True, slots=True)
class TranslationOptions:
    """How a translated route treats what the upstream's format lacks (profile / endpoint
    `translation`). `strict`: refuse (400) every field without an exact equivalent, hints
    included (the policy before issue 13). `reasoning_history`: the upstream accepts the
    assistant's earlier reasoning back as `reasoning_content` in Chat Completions messages (else
    earlier thinking blocks are dropped). `reasoning_effort`: see below."""

    strict: bool = False
    reasoning_history: bool = False
    # Send the client's reasoning request (Anthropic `thinking`, Responses `reasoning.effort`) as
    # Chat Completions `reasoning_effort`; off for an upstream model that refuses the field (the
    # request is then dropped and counted, even on a strict route: the operator chose it).
    reasoning_effort: bool = True
    # The output limit as Chat Completions `max_completion_tokens` instead of `max_tokens`
    # (OpenAI's reasoning models refuse `max_tokens`; other servers may not know the new name).
    max_completion_tokens: bool = False
    # The Messages `max_tokens` of a request whose client set no output limit (Messages requires
    # one; Chat Completions and Responses clients often leave it out).
    default_max_tokens: int = 4096


DEFAULT_OPTIONS = TranslationOptions()


def takes_effort(setting: bool | tuple[str, ...], model: Any) -> bool:
    """Whether `reasoning_effort` goes to the upstream model `model` under the `reasoningEffort`
    setting: a bool, or the model names and `prefix*` patterns that take it."""
    if isinstance(setting, bool):
        return setting
    if not isinstance(model, str):
        return False
    return any(model.startswith(p[:-1]) if p.endswith("*") else model == p for p in setting)


def output_limit_field(options: TranslationOptions) -> str:
    """The Chat Completions field a translated request's output limit goes in."""
    return "max_completion_tokens" if options.max_completion_tokens else "max_tokens"


# An end user's identifier as the servers of either format take it: OpenAI's short (its
# `safety_identifier` holds at most 64 characters; OpenRouter refuses a `user` over 128), and
# Anthropic-compatible servers' (DeepSeek's among them) only of letters, digits, `_` and `-`
# (their 400 names the pattern); Anthropic itself asks for an opaque id, not an e-mail address.
_FITTING_USER_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


def end_user_id(value: str) -> str | None:
    """`value` (Anthropic `metadata.user_id`, Chat `user` or `safety_identifier`) as the other
    format's field: itself when it fits every server's rules, else `u-` and a digest of it, as
    stable and as distinct as the value (one id per end user, or per user and session as Claude
    Code sends it, is what either field is for, and a digest carries no e-mail address); None
    (not sent) for an empty one, which names nobody. Claude Code sends a JSON object of about
    140 characters (device, account and session ids)."""
    if not value:
        return None
    if _FITTING_USER_ID.fullmatch(value):
        return value
    return "u-" + _digest(value, 16)


def _digest(text: str, size: int) -> str:
    """`size` bytes of a digest of `text`, in hex: the same in every process (no salt)."""
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=size).hexdigest()


# The longest function name OpenAI takes (Chat Completions and Responses; Anthropic takes 128).
# A longer one keeps its first 55 characters, `_` and 8 hex digits of a digest of the whole:
# still one name per tool, which the translation maps back in the answer.
MAX_TOOL_NAME = 64


def fitting_tool_name(name: str) -> str:
    """`name` as a function's name upstream: itself when it is short enough, else cut."""
    if len(name) <= MAX_TOOL_NAME:
        return name
    digest = _digest(name, 4)
    return f"{name[: MAX_TOOL_NAME - len(digest) - 1]}_{digest}"


# A Chat Completions tool call's `extra_content` (Gemini 3 puts its thought signature there,
# `{"google": {"thought_signature": …}}`, and refuses the next turn's call without it: "Function
# call is missing a thought_signature") has no field in the Messages or Responses formats. The
# call goes to such a client under an id that carries it: `xc_` and the unpadded base64url of
# the JSON `[upstream id, extra_content]` (letters, digits, `_` and `-`: an id Anthropic takes
# too). The client sends that id back with the call and its result, and the Chat request made
# from them has the upstream's id and `extra_content` again. An id without the prefix, or one
# that does not decode to that shape, is the client's own and goes as it is.
CARRIED_ID_PREFIX = "xc_"


def carrying_id(call_id: str, extra: Any) -> str:
    """`call_id` for the client, carrying the upstream call's `extra_content` (if any)."""
    if not isinstance(extra, dict) or not extra:
        return call_id
    raw = base64.urlsafe_b64encode(dumps_exact([call_id, extra])).rstrip(b"=")
    return CARRIED_ID_PREFIX + raw.decode()


def carried(client_id: Any) -> tuple[Any, dict[str, Any] | None]:
    """The upstream id and `extra_content` a client's call id carries; (the id, None) when it
    carries none."""
    if isinstance(client_id, str) and client_id.startswith(CARRIED_ID_PREFIX):
        text = client_id[len(CARRIED_ID_PREFIX) :]
        try:
            value = loads_exact(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
        except ValueError:  # binascii.Error and loads_exact's errors are ValueErrors
            return client_id, None
        if (
            isinstance(value, list)
            and len(value) == 2
            and isinstance(value[0], str)
            and isinstance(value[1], dict)
        ):
            return value[0], value[1]
    return client_id, None


# The arguments of a tool call without any, as OpenAI writes them: a JSON object. Anthropic's
# stream of a tool without input has one empty fragment, and some Chat upstreams send "", which
# a client's JSON parser (Codex's, the openai SDK's `parse`) refuses.
NO_ARGUMENTS = "{}"


_JSON_SPACE = " \t\n\r"
_JSON_MARKS = re.compile(r'["\\{}\[\]]')  # what changes a scan's state: quotes, escapes, brackets


class WholeArguments:
    """Whether a streamed tool call's argument fragments already add up to one JSON value.

    Chat Completions streams say when a tool call begins (a new `index`) but never when it
    ends: a server may interleave the fragments of parallel calls. The Anthropic and Responses
    streams close a call before the next one opens, and nothing may follow a close. So a
    translator closes a call when the next one begins only if its arguments are whole; if not,
    the new call is held (its fragments kept) until they are, or until the finish. Arguments
    that never parse only delay the calls after them to the finish; nothing is lost.

    One per call, asked with the call's fragment list (which only grows): each fragment is
    scanned once, for string, escape and bracket state, and the text is parsed once, when its
    outermost object or array closes. (Parsing the whole text at each fragment that ends in `}`
    was quadratic: a 70 KiB call held another for 392 ms of the event loop.) Whole means what
    `orjson.loads` of the joined fragments says, for an object or array: the scan only decides
    when that parse can be worth doing, and that nothing after the close but JSON whitespace can
    keep it whole (tests/unit/test_whole_arguments.py holds it to that parse, fragment by
    fragment).
    """

    __slots__ = ("_depth", "_escape", "_in_string", "_seen", "_state")

    def __init__(self) -> None:
        self._seen = 0  # fragments scanned
        # before (only whitespace yet) | inside | closed (not parsed yet) | whole | never
        self._state = "before"
        self._depth = 0
        self._in_string = False
        self._escape = False  # the last fragment ended inside a string with a backslash

    def __call__(self, fragments: list[str]) -> bool:
        for i in range(self._seen, len(fragments)):
            if self._state == "never":
                break
            self._scan(fragments[i])
        self._seen = len(fragments)
        if self._state == "closed":
            self._state = "whole" if _parses("".join(fragments)) else "never"
        return self._state == "whole"

    def _scan(self, fragment: str) -> None:
        if not fragment:
            return  # (a backslash that ended the last one still escapes the next character)
        if self._state in ("closed", "whole"):
            if fragment.strip(_JSON_SPACE):
                self._state = "never"  # something after the value: no JSON parser takes it
            return
        start = 0
        if self._state == "before":
            rest = fragment.lstrip(_JSON_SPACE)
            if not rest:
                return
            if rest[0] not in "{[":
                self._state = "never"  # a scalar: tool arguments are an object
                return
            self._state = "inside"
            start = len(fragment) - len(rest)
        skip = start + 1 if self._escape else start  # the escaped character, if it is here
        self._escape = False
        for mark in _JSON_MARKS.finditer(fragment, start):
            at = mark.start()
            if at < skip:
                continue
            c = fragment[at]
            if self._in_string:
                if c == "\\":
                    skip = at + 2
                    self._escape = at + 1 == len(fragment)
                elif c == '"':
                    self._in_string = False
            elif c == '"':
                self._in_string = True
            elif c in "{[":
                self._depth += 1
            elif c in "}]":
                self._depth -= 1
                if self._depth == 0:
                    self._state = "closed"
                    if fragment[at + 1 :].strip(_JSON_SPACE):
                        self._state = "never"
                    return
            else:  # a backslash outside a string
                self._state = "never"
                return


def _parses(text: str) -> bool:
    try:
        orjson.loads(text)
    except orjson.JSONDecodeError:
        return False
    return True


# Labels of `translation_dropped_fields_total{field}`: everything a translated request may leave
# out, in either direction (docs/translation.md, says what each one covers). A closed
# set: a label not in it is a programming error.
DROPPED_FIELDS = (
    # hints of an Anthropic Messages client
    "cache_control",  # system / message / tool blocks, top level (prompt caching)
    "context_management",  # server-side clearing of old tool results and thinking
    "metadata",  # metadata keys other than user_id (Anthropic) / all of it (OpenAI)
    "service_tier",  # capacity tier
    "output_config",  # effort without adaptive thinking, task_budget, unknown parts
    "defer_loading",  # tool search: every tool is loaded
    "input_examples",  # example inputs of a tool
    "eager_input_streaming",  # fine-grained tool input streaming
    "allowed_callers",  # programmatic tool calling
    "server_tool",  # server tools offered (web search, code execution, …), not forced
    "citations",  # document citations
    "thinking",  # a thinking setting without a reasoning_effort equivalent
    "reasoning_history",  # the assistant's earlier reasoning (thinking / reasoning_content)
    # hints of an OpenAI Chat Completions client
    "prompt_cache_key",
    "safety_identifier",  # when `user` already gives metadata.user_id
    "store",
    "seed",
    "prediction",
    "verbosity",
    "presence_penalty",
    "frequency_penalty",
    "reasoning_effort",  # when Anthropic cannot think on this request (forced tool, tool loop)
    "temperature",  # with thinking on (Anthropic refuses a temperature other than 1)
    "top_p",  # with thinking on (Anthropic refuses top_p below 0.95)
    "tool_strict",  # `strict` of function tools
    "name",  # participant names of messages
    # dropped by the relay, not by request(): the other provider's headers (openai-* on a
    # Messages upstream, anthropic-* on a Chat Completions one)
    "openai_headers",
    "anthropic_headers",
)

# Anthropic thinking budget <-> OpenAI reasoning_effort. Effort to budget_tokens (the budget an
# Anthropic upstream gets for a Chat Completions client's effort):
EFFORT_BUDGET = {"minimal": 1024, "low": 2048, "medium": 8192, "high": 16384, "xhigh": 24576}
# budget_tokens to effort (for a Chat Completions upstream): below 4096 low, below 16384 medium,
# else high. Only low / medium / high are sent: every reasoning model takes those three.
LOW_BELOW, MEDIUM_BELOW = 4096, 16384
# A Responses client's reasoning.effort for a Chat Completions upstream (not OpenAI's: the
# openai profile relays the Responses API): OpenAI's extremes become the nearest of the three
# every reasoning model takes; another value (`none`) goes as it is, the upstream decides.
RESPONSES_TO_CHAT_EFFORT = {"minimal": "low", "xhigh": "high"}
# Anthropic's output_config.effort <-> reasoning_effort.
ANTHROPIC_TO_EFFORT = {
    "low": "low",
    "medium": "medium",
    "high": "high",
    "xhigh": "high",
    "max": "high",
}
EFFORT_TO_ANTHROPIC = {
    "minimal": "low",
    "low": "low",
    "medium": "medium",
    "high": "high",
    "xhigh": "high",
}


def effort_for_budget(budget: int) -> str:
    if budget < LOW_BELOW:
        return "low"
    return "medium" if budget < MEDIUM_BELOW else "high"


# Response headers that described the upstream's body, not the translated one.
_BODY_HEADERS = frozenset({"content-type", "content-encoding"})


class JSONAnswers:
    """What both translator classes do with a plain (non-stream) upstream answer: `body()` (each
    class's own) with the response headers that go with it."""

    __slots__ = ()

    def body(self, status: int, content_type: str, data: bytes) -> bytes:
        raise NotImplementedError

    def answer(
        self, status: int, headers: list[tuple[str, str]], data: bytes
    ) -> tuple[list[tuple[str, str]], bytes]:
        """`body()` with the upstream's response headers, minus those that described the
        upstream's body."""
        ctype = next((v for k, v in headers if k.lower() == "content-type"), "")
        body = self.body(status, ctype, data)
        kept = [(k, v) for k, v in headers if k.lower() not in _BODY_HEADERS]
        kept.append(("Content-Type", "application/json"))
        return kept, body


class Untranslatable(BadRequest):
    """A request feature with no equivalent in the upstream's format: refused with 400 before
    anything reaches the upstream (a silently dropped feature would change the answer)."""

    code = "untranslatable_request"

    def __init__(self, field: str, upstream: str) -> None:
        super().__init__(
            f"'{field}' has no equivalent in the {upstream} format this route is translated to"
        )


class Drops:
    """What a request's translation leaves out: `drop(label, where)` records `label` (once) in
    the translator's `dropped` list, or refuses the request (400, naming `where`) when the route
    is strict."""

    __slots__ = ("labels", "strict", "upstream")

    def __init__(self, options: TranslationOptions, labels: list[str], upstream: str) -> None:
        self.strict = options.strict
        self.labels = labels
        self.upstream = upstream

    def __call__(self, label: str, where: str) -> None:
        if self.strict:
            raise Untranslatable(where, self.upstream)
        self.record(label)

    def record(self, label: str) -> None:
        """Count `label` as dropped whatever the mode (a drop the operator configured)."""
        if label not in DROPPED_FIELDS:
            raise ValueError(f"{label!r} is not in DROPPED_FIELDS")
        if label not in self.labels:
            self.labels.append(label)


class BadUpstreamEvent(ValueError):
    """An upstream stream event that is not the JSON its format promises."""


# What reading an upstream event or answer of an unexpected shape raises (a field that should be
# an object is a number, a list is missing, ...): the upstream's fault, answered as one
# (BadUpstreamEvent in a stream, UpstreamJSONError for a whole answer), never a crash.
MALFORMED = (AttributeError, TypeError, KeyError, IndexError, ValueError)


# OpenAI finish_reason -> Anthropic stop_reason. OpenAI does not say which stop sequence
# matched, so "stop" is always end_turn (stop_sequence stays null).
FINISH_TO_STOP = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}


def stop_reason(finish: str | None, tool_calls: bool) -> str:
    """The Anthropic stop_reason for a Chat Completions finish_reason; `tool_calls`: the answer
    holds tool calls. Some servers end a tool-call answer with `stop` (Gemini's OpenAI-compatible
    streams): `end_turn` there made an agent (the anthropic SDK's tool runner, Claude Code) take
    the turn for final and never run the calls."""
    stop = FINISH_TO_STOP.get(finish or "stop", "end_turn")
    return "tool_use" if tool_calls and stop == "end_turn" else stop


class CallPositions:
    """Which tool call of a Chat Completions stream a `tool_calls` delta belongs to: its
    `index`. Some servers send none (Gemini's OpenAI-compatible API, which sends each call
    whole with an id of its own): a delta without an index starts a new call when its `id`
    differs from the last call's, and continues the last call otherwise (one without an id).
    Every such delta was taken for call 0: a second call's arguments were appended to the
    first's, and its id and name were lost."""

    __slots__ = ("_last", "_last_id", "_next")

    def __init__(self) -> None:
        self._last = 0
        self._last_id: str | None = None
        self._next = 0

    def __call__(self, delta: dict[str, Any]) -> Any:
        index = delta.get("index")
        cid = delta.get("id")
        cid = cid if isinstance(cid, str) and cid else None
        if index is not None:
            position = index  # as the server said (a key of the translator's calls)
        elif cid is not None and self._last_id is not None and cid != self._last_id:
            position = self._next
        else:
            position = self._last
        if isinstance(position, int) and not isinstance(position, bool):
            self._last, self._next = position, max(self._next, position + 1)
        if cid is not None:
            self._last_id = cid
        return position


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

    __slots__ = ("broken", "done")

    def __init__(self) -> None:
        self.done = False  # the client's stream is complete: later upstream events are ignored
        # the upstream's stream failed: it ended before its finish, or with an error event (the
        # client was told; the relay records `stream_error`)
        self.broken = False

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
        try:
            return self.on_event(data)
        except BadUpstreamEvent:
            raise
        except MALFORMED:
            raise BadUpstreamEvent() from None

    def on_event(self, data: dict[str, Any]) -> list[bytes]:
        raise NotImplementedError

    def on_done(self) -> list[bytes]:
        return []

    def finish(self) -> list[bytes]:
        """The upstream ended: whatever closes the client's stream."""
        raise NotImplementedError


def error_event(data: bytes) -> bytes:
    """An SSE `error` event carrying `data` (a JSON error in the client's shape)."""
    return b"event: error\ndata: " + data + b"\n\n"


def cut_event(anthropic: bool) -> bytes:
    """What ends a client's translated stream whose upstream stream ended before its finish
    (a Chat client, which needs no [DONE] to think it complete, or a Messages one, which the
    missing message_stop only leaves hanging): the relay's own `stream_error`, as when the
    upstream connection breaks."""
    return error_event(error_body(StreamError(), anthropic))


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


def found_tools(lines: list[str]) -> str:
    """The text of a client tool search's result for an upstream without tool search: the tools
    it found (one line each), whose definitions the client sends with its tools from then on
    (Codex's `tool_search_output`, Claude Code's `tool_reference` blocks)."""
    if not lines:
        return "No tools found."
    return "Tools found, now available to call:\n" + "\n".join(lines)


def given(body: dict[str, Any], key: str) -> bool:
    """The client sent `key` with a value (OpenAI clients often send explicit nulls)."""
    return body.get(key) is not None
