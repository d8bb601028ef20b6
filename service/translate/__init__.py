"""Anthropic Messages <-> OpenAI Chat Completions translation (pure; no I/O).

A route is translated when its endpoint's `format` (what the upstream speaks) differs from the
format of the route's clients (`config.model.CLIENT_FORMAT`). The relay builds one `Translator`
per request from the client's JSON and uses it at the edges: `request()` before sending,
`body()` for a plain answer (success or error), `events()` / `finish()` for a stream (fed complete
upstream SSE events, returns what to write: nothing is buffered beyond the open content block),
`error_data()` for an upstream error after an SSE head was committed.

    anthropic_to_openai   /v1/messages client, Chat Completions upstream
    openai_to_anthropic   /v1/chat/completions client, Messages upstream

What each direction translates, drops and refuses (400, `Untranslatable`) is listed in
docs/translation.md.
"""

from __future__ import annotations

from typing import Any

import orjson

from ..errors import UpstreamJSONError
from ..proxy.body import dumps_exact, loads_exact
from . import anthropic_to_openai, openai_to_anthropic
from .common import (
    DEFAULT_OPTIONS,
    DROPPED_FIELDS,
    BadUpstreamEvent,
    JSONAnswers,
    TranslationOptions,
    Untranslatable,
)

DIRECTIONS = ("anthropic_to_openai", "openai_to_anthropic")


class Translator(JSONAnswers):
    """One request's translation, in the direction the endpoint's `translation` names."""

    __slots__ = ("_stream", "created", "direction", "dropped", "options", "payload")

    def __init__(
        self,
        direction: str,
        payload: dict[str, Any],
        created: int,
        options: TranslationOptions = DEFAULT_OPTIONS,
    ) -> None:
        if direction not in DIRECTIONS:
            raise ValueError(f"unknown translation {direction!r}")
        self.direction = direction
        self.payload = payload  # the client's request (after the model mapping)
        self.created = created  # `created` of OpenAI responses made from Anthropic ones
        self.options = options
        # Fields `request()` dropped (hints the upstream's format lacks), each a label of
        # `translation_dropped_fields_total` (`common.DROPPED_FIELDS`), once, in the order met.
        self.dropped: list[str] = []
        self._stream: Any = None

    @property
    def to_openai(self) -> bool:
        return self.direction == "anthropic_to_openai"

    def request(self) -> dict[str, Any]:
        """The upstream's request; raises `Untranslatable` (400) for a feature it lacks (and, on
        a strict route, for every hint it would drop). What it dropped is in `dropped` after it
        returns (nothing when it raised)."""
        dropped: list[str] = []
        if self.to_openai:
            out = anthropic_to_openai.request(self.payload, self.options, dropped)
        else:
            out = openai_to_anthropic.request(self.payload, self.options, dropped)
        self.dropped[:] = dropped
        return out

    def error_json(self, status: int, body: bytes) -> dict[str, Any]:
        if self.to_openai:
            return anthropic_to_openai.error(status, body)
        return openai_to_anthropic.error(status, body)

    def error_data(self, status: int, body: bytes) -> bytes:
        """An upstream error body in the client's shape."""
        return orjson.dumps(self.error_json(status, body))

    def body(self, status: int, content_type: str, data: bytes) -> bytes:
        """A plain (non-stream) upstream answer in the client's shape; the status is kept. A 2xx
        answer that is not a JSON object is `UpstreamJSONError` (502)."""
        if not 200 <= status < 300:
            return self.error_data(status, data)
        try:
            parsed = loads_exact(data) if "json" in content_type.lower() else None
        except ValueError:
            parsed = None
        if not isinstance(parsed, dict):
            raise UpstreamJSONError()
        if self.to_openai:
            names = anthropic_to_openai.client_names(self.payload)
            return dumps_exact(anthropic_to_openai.response(parsed, names))
        return dumps_exact(openai_to_anthropic.response(parsed, self.created))

    def events(self, events: list[bytes]) -> list[bytes]:
        """Complete upstream SSE events in, the client's events out (raises BadUpstreamEvent for
        an event whose data is not JSON)."""
        stream = self._stream_translator()
        out: list[bytes] = []
        for event in events:
            out.extend(stream.feed(event))
        return out

    def finish(self) -> list[bytes]:
        """The upstream stream ended: whatever closes the client's stream."""
        return list(self._stream_translator().finish())

    @property
    def broken(self) -> bool:
        """The upstream's stream failed (cut before its finish, or an error event): the
        client's stream said so (StreamTranslator.broken)."""
        return self._stream is not None and bool(self._stream.broken)

    def _stream_translator(self) -> Any:
        if self._stream is None:
            if self.to_openai:
                names = anthropic_to_openai.client_names(self.payload)
                self._stream = anthropic_to_openai.EventTranslator(names)
            else:
                opts = self.payload.get("stream_options")
                include = isinstance(opts, dict) and opts.get("include_usage") is True
                self._stream = openai_to_anthropic.EventTranslator(include, self.created)
        return self._stream


__all__ = [
    "DEFAULT_OPTIONS",
    "DIRECTIONS",
    "DROPPED_FIELDS",
    "BadUpstreamEvent",
    "TranslationOptions",
    "Translator",
    "Untranslatable",
]
