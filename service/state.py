"""`RequestState`: the facts of one request that logs and metrics need, kept on `request.ctx.state`.

A leaf module (it imports nothing of the service): the relay writes these facts, the lifecycle
listeners (service.observability.lifecycle) read them when the request finishes, and neither
needs to import the other.
"""

from __future__ import annotations

from typing import Any

# A client's model name as logs and traces carry it: at most this many characters (a client may
# send megabytes there; the request goes upstream as it came).
MAX_MODEL_CHARS = 256


def clipped(model: str | None) -> str | None:
    """`model` as logs and traces carry it (MAX_MODEL_CHARS, "…" when it was cut)."""
    if model is None or len(model) <= MAX_MODEL_CHARS:
        return model
    return model[: MAX_MODEL_CHARS - 1] + "…"


class RequestState:
    """Per-request facts for logs and metrics, kept on `request.ctx.state`."""

    __slots__ = (
        "answer",
        "answer_facts",
        "answered",
        "attempts",
        "config",
        "dropped",
        "ended_by",
        "error_type",
        "fallbacks",
        "first_byte_latency",
        "key_id",
        "malformed_events",
        "model",
        "stream",
        "timed",
        "translation",
        "upstream",
        "upstream_latency",
        "upstream_model",
        "upstream_status",
        "usage",
        "usage_final",
    )

    def __init__(self) -> None:
        # The config the relay served the request with (`LoadedConfig`; a reload while it runs
        # does not change what its log line and metrics say); None before the relay.
        self.config: Any = None
        self.key_id: str = "anonymous"
        self.model: str | None = None
        self.upstream_model: str | None = None
        self.stream = False
        self.upstream_latency: float | None = None
        self.error_type: str | None = None
        self.usage: dict[str, Any] | None = None
        # Whether `usage` is the answer's whole usage (False: none, or only a stream's opening
        # count, e.g. an Anthropic stream cut after message_start).
        self.usage_final = False
        self.first_byte_latency: float | None = None  # request start to a stream's first event
        self.translation = "none"  # which format translation ran (service.translate.DIRECTIONS)
        # Hint fields the translation dropped (translation_dropped_fields_total labels).
        self.dropped: list[str] = []
        # Under a routing file (SPEC §11): the upstream that answered (a name from the file),
        # every attempt as (upstream, outcome, seconds, HTTP status or None when no answer came),
        # and each switch to another upstream as (from, to, reason). Empty / None under a plain
        # profile.
        self.upstream: str | None = None
        self.attempts: list[tuple[str, str, float, int | None]] = []
        self.fallbacks: list[tuple[str, str, str]] = []
        # Stream events dropped as malformed (a JSON object cut short; service.proxy.events).
        self.malformed_events = 0
        # A stream's head already carried Server-Timing (service.timing): not added again.
        self.timed = False
        # What tracing reads of the answer (service.observability.tracing): the upstream's
        # status, its parsed JSON body, or a stream's id / model / finish reasons.
        self.upstream_status: int | None = None
        self.answer: Any = None
        self.answer_facts: dict[str, Any] | None = None
        # A stream's whole answer was handed to the client's transport (its last event, or
        # everything before the response's end): a client that closes after this did not leave
        # early, whatever became of HTTP's last chunk (service.observability.lifecycle).
        self.answered = False
        # "shutdown": the stream was ended by the worker's drain (`server_shutting_down`), not
        # by its upstream nor its client: no error_type (nothing failed upstream), but logged.
        self.ended_by: str | None = None
