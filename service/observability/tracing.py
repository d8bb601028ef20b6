"""OpenTelemetry traces (SPEC §14; docs/observability.md, "Traces"). Imported only when
`API_ROUTER_TRACING=true`: with tracing off no module of OpenTelemetry is loaded at all
(tests/unit/test_tracing.py proves it), and the hooks below are never reached (`app.ctx.tracing`
is None).

Per request, one tree:

- a SERVER span (HTTP semantic conventions), named `<method> <route template>`, continuing the
  client's `traceparent` / `tracestate` (W3C trace context) when it sent one;
- under it a CLIENT span per upstream attempt (each retry or failover its own, with
  `http.request.resend_count`), named and attributed per the GenAI semantic conventions
  (`gen_ai.operation.name`, `gen_ai.provider.name`, `gen_ai.request.model`, `gen_ai.response.*`,
  `gen_ai.usage.*`), whose context is injected into the upstream request (`traceparent`), so the
  provider's own span is its child.

The answering attempt stays open until the request finishes (a stream: its last byte), when its
usage, finish reasons and the time to its first chunk are known. Prompt and completion content are
never recorded: no attribute carries a message, and there is no switch that would. Export: OTLP
over HTTP/protobuf in a batch (the SDK's `BatchSpanProcessor`), configured by the standard
`OTEL_*` variables, which the SDK reads itself (endpoint, headers, service name, sampler, batch
delays); the one setting of ours is the switch.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import unquote, urlsplit

import structlog
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import SpanLimits, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from .. import __version__
from ..config.model import (
    CHAT,
    COMPLETIONS,
    EMBEDDINGS,
    MESSAGES,
    RESPONSES,
    TRANSCRIPTIONS,
    TRANSLATIONS,
)
from ..errors import status_outcome
from ..proxy.events import answer_facts
from ..state import clipped
from ..usage import count, token_counts
from .logging import redact

# gen_ai.operation.name by route (the GenAI conventions' values; audio has none of its own).
OPERATIONS = {
    CHAT: "chat",
    MESSAGES: "chat",
    RESPONSES: "chat",
    COMPLETIONS: "text_completion",
    EMBEDDINGS: "embeddings",
    TRANSCRIPTIONS: "transcription",
    TRANSLATIONS: "translation",
}
# gen_ai.provider.name by shipped profile (the conventions' well-known values); an operator's
# own profile or upstream is named by its profile name.
PROVIDERS = {
    "openai": "openai",
    "anthropic": "anthropic",
    "gemini": "gcp.gemini",
    "cohere": "cohere",
    "ollama-cloud": "ollama",
    "ollama-local": "ollama",
    "qwen": "alibaba.dashscope",
}
DEFAULT_SERVICE_NAME = "api-router"


def provider_name(profile_name: str) -> str:
    return PROVIDERS.get(profile_name, profile_name)


# The exporter's headers (a collector's API key): the SDK logs a value it cannot parse whole.
OTLP_HEADER_VARS = ("OTEL_EXPORTER_OTLP_HEADERS", "OTEL_EXPORTER_OTLP_TRACES_HEADERS")


def redact_exporter_headers(env: Mapping[str, str]) -> None:
    """Register the OTLP header values with the log scrubber: each `name=value` item's value,
    and, for the items written wrong (`Authorization: Bearer T`, `x-team T`), what follows the
    name and its last word; also the whole variable. Never the names alone."""
    for var in OTLP_HEADER_VARS:
        raw = env.get(var, "").strip()
        if not raw:
            continue
        redact(raw)
        for item in raw.split(","):
            item = item.strip()
            for sep in ("=", ":", " "):
                if sep in item:
                    value = item.split(sep, 1)[1].strip()
                    for secret in (value, unquote(value), value.rsplit(" ", 1)[-1]):
                        if len(secret) >= 8:  # a key; not a word such as `prod`
                            redact(secret)
                    break


# The longest attribute value a span keeps (the SDK cuts longer ones).
SPAN_ATTRIBUTE_CHARS = 1024
# The most a worker's stop waits for the last spans to be exported.
SHUTDOWN_SECS = 2.0


class Tracing:
    """One worker's tracer; its hooks are called by the lifecycle listeners and the relay."""

    def __init__(self, exporter: Any = None) -> None:
        redact_exporter_headers(os.environ)
        resource = Resource.create(
            {
                SERVICE_NAME: os.environ.get("OTEL_SERVICE_NAME") or DEFAULT_SERVICE_NAME,
                "service.version": __version__,
            }
        )
        # The sampler: OTEL_TRACES_SAMPLER / _ARG, read by the SDK (parent-based always-on
        # unless set).
        # Attribute values at most SPAN_ATTRIBUTE_CHARS long: a client's model name (or an
        # upstream's answer id) of megabytes made a span batch the exporter drops whole, the
        # spans of other requests with it.
        self.provider = TracerProvider(
            resource=resource, span_limits=SpanLimits(max_attribute_length=SPAN_ATTRIBUTE_CHARS)
        )
        self.provider.add_span_processor(BatchSpanProcessor(exporter or OTLPSpanExporter()))
        self.tracer = self.provider.get_tracer("api_router", __version__)
        self.propagator = TraceContextTextMapPropagator()

    # -- the request (lifecycle) ---------------------------------------------------------------

    def start_request(self, request: Any) -> None:
        headers = request.headers
        parent = None
        # One traceparent only: several are invalid (W3C Trace Context), a new trace begins.
        if "traceparent" in headers and len(headers.getall("traceparent")) == 1:
            parent = self.propagator.extract(_HeaderCarrier(headers))
        ctx = request.ctx
        span = ctx.span = self.tracer.start_span(
            request.method,  # renamed to "<method> <route>" once the route is known
            context=parent,
            kind=SpanKind.SERVER,
        )
        # A span the sampler dropped records nothing: no attribute is even built for it (the
        # cost of tracing at a low sampling rate is then its context, its propagation, its id).
        if span.is_recording():
            span.set_attributes(
                {
                    "http.request.method": request.method,
                    "url.path": request.path,
                    "url.scheme": "http",
                    "network.protocol.version": request.version,
                }
            )
        ctx.attempt = None
        sc = ctx.span.get_span_context()
        if sc.is_valid:  # every line logged while the request runs names its trace
            structlog.contextvars.bind_contextvars(trace_id=format(sc.trace_id, "032x"))

    def trace_id(self, request: Any) -> str | None:
        span = getattr(request.ctx, "span", None)
        if span is None:
            return None
        sc = span.get_span_context()
        return format(sc.trace_id, "032x") if sc.is_valid else None

    def sampled_ids(self, request: Any) -> tuple[str, str] | None:
        """(trace id, span id) of the request's server span when it is sampled (exported)."""
        span = getattr(request.ctx, "span", None)
        if span is None:
            return None
        sc = span.get_span_context()
        if not (sc.is_valid and sc.trace_flags.sampled):
            return None
        return format(sc.trace_id, "032x"), format(sc.span_id, "016x")

    def recording(self, request: Any) -> bool:
        """Whether the request's trace is sampled (what it records is exported)."""
        span = getattr(request.ctx, "span", None)
        return span is not None and span.is_recording()

    def finish_request(self, request: Any, status: int, route: str, state: Any) -> None:
        ctx = request.ctx
        span = getattr(ctx, "span", None)
        if span is None:
            return
        ctx.span = None
        if not span.is_recording():
            span.end()
            return
        self._end_attempt(ctx, state, status)
        span.update_name(f"{request.method} {route}")
        attrs: dict[str, Any] = {"http.route": route, "http.response.status_code": status}
        if state.translation != "none":
            attrs["api_router.translation"] = state.translation
        if state.upstream is not None:
            attrs["api_router.upstream"] = state.upstream
        if state.attempts:
            attrs["api_router.attempts"] = len(state.attempts)
        attrs["api_router.request_id"] = ctx.request_id
        span.set_attributes(attrs)
        # Server errors, and an answer that failed after its 2xx head (a stream cut: the
        # completion line's `stream_error`); a 4xx is the client's, not ours (HTTP conventions).
        if status >= 500 or (state.error_type is not None and status < 400):
            span.set_attribute("error.type", state.error_type or str(status))
            span.set_status(Status(StatusCode.ERROR))
        span.end()

    # -- upstream attempts (relay, failover) -----------------------------------------------------

    def start_attempt(
        self,
        request: Any,
        upstream_request: Any,
        route: str,
        profile_name: str,
        model: str | None,
        stream: bool,
        resend: int,
        upstream: str | None = None,
    ) -> None:
        """A CLIENT span for one attempt, its context injected into `upstream_request`."""
        ctx = request.ctx
        server = getattr(ctx, "span", None)
        if server is None:
            return
        if getattr(ctx, "attempt", None) is not None:  # never left open: one more follows
            self.attempt_failed(request, "superseded")
        if not server.is_recording():  # not sampled: the upstream continues the server's context
            self._inject(server, upstream_request)
            return
        operation = OPERATIONS.get(route, "chat")
        url = urlsplit(str(upstream_request.url))
        attrs: dict[str, Any] = {
            "gen_ai.operation.name": operation,
            "gen_ai.provider.name": provider_name(profile_name),
            "gen_ai.request.stream": stream,
            "http.request.method": upstream_request.method,
            "server.address": url.hostname or "",
            "server.port": url.port or (443 if url.scheme == "https" else 80),
            # Never the query: a provider may take its key there.
            "url.full": f"{url.scheme}://{url.netloc}{url.path}",
        }
        model = clipped(model)  # the span's name too: names are not limited by the SDK
        if model:
            attrs["gen_ai.request.model"] = model
        if resend:
            attrs["http.request.resend_count"] = resend
        if upstream is not None:
            attrs["api_router.upstream"] = upstream
        span = self.tracer.start_span(
            f"{operation} {model}" if model else operation,
            context=trace.set_span_in_context(server),
            kind=SpanKind.CLIENT,
            attributes=attrs,
        )
        self._inject(span, upstream_request)
        ctx.attempt = (span, time.perf_counter())

    def _inject(self, span: Any, upstream_request: Any) -> None:
        carrier: dict[str, str] = {}
        self.propagator.inject(carrier, context=trace.set_span_in_context(span))
        for k, v in carrier.items():  # replaces a traceparent the client sent along
            upstream_request.headers[k] = v
        if "tracestate" not in carrier:
            # A new trace (no usable traceparent came): the client's tracestate belongs to
            # another one, and is never sent on with it (W3C Trace Context).
            upstream_request.headers.pop("tracestate", None)

    def attempt_failed(self, request: Any, error_type: str, status: int | None = None) -> None:
        """The current attempt got no usable answer (a retry or failover follows, or none)."""
        attempt = getattr(request.ctx, "attempt", None)
        if attempt is None:
            return
        request.ctx.attempt = None
        span = attempt[0]
        if status is not None:
            span.set_attribute("http.response.status_code", status)
        span.set_attribute("error.type", error_type)
        span.set_status(Status(StatusCode.ERROR))
        span.end()

    def _end_attempt(self, ctx: Any, state: Any, status: int) -> None:
        attempt = getattr(ctx, "attempt", None)
        if attempt is None:
            return
        ctx.attempt = None
        span, started = attempt
        attrs: dict[str, Any] = {}
        if state.upstream_status is not None:
            attrs["http.response.status_code"] = state.upstream_status
        facts = state.answer_facts or answer_facts(state.answer, {})
        for key, name in (
            ("model", "gen_ai.response.model"),
            ("id", "gen_ai.response.id"),
        ):
            if isinstance(facts.get(key), str):
                attrs[name] = facts[key]
        if facts.get("finish_reasons"):
            attrs["gen_ai.response.finish_reasons"] = list(facts["finish_reasons"])
        attrs.update(usage_attributes(state.usage))
        if state.first_byte_latency is not None:
            first = ctx.started + state.first_byte_latency
            attrs["gen_ai.response.time_to_first_chunk"] = max(0.0, first - started)
        span.set_attributes(attrs)
        error = state.error_type
        upstream_status = state.upstream_status or 0
        if upstream_status >= 400 and error in (None, "upstream_error"):
            error = status_outcome(upstream_status)  # as a routing file's attempts say it
        if error is not None or status >= 500:
            span.set_attribute("error.type", error or str(upstream_status or status))
            span.set_status(Status(StatusCode.ERROR))
        elif status == 499:  # the client left: the attempt was cut, not failed
            span.set_attribute("error.type", "cancelled")
        span.end()

    def shutdown(self, within: float | None = None) -> bool:
        """Export what the batch still holds, waiting at most `within` seconds (default
        SHUTDOWN_SECS): with a collector down, the SDK's own shutdown waited for its exporter's
        timeouts, 10 s and more, past the pod's grace period. False when it was left running
        (in a daemon thread: the process ends without it)."""
        done = threading.Thread(target=self.provider.shutdown, name="otel-shutdown", daemon=True)
        done.start()
        done.join(SHUTDOWN_SECS if within is None else within)
        if done.is_alive():
            structlog.get_logger("api_router.tracing").warning(
                "tracing_shutdown_incomplete",
                waited_secs=SHUTDOWN_SECS if within is None else within,
            )
            return False
        return True


def usage_attributes(usage: Mapping[str, Any] | None) -> dict[str, int]:
    """gen_ai.usage.* from an upstream's usage, in any of the three formats. The input count
    includes cached tokens, as the conventions ask (Anthropic reports them apart)."""
    if not usage:
        return {}
    out: dict[str, int] = {}

    def detail(parent: str, name: str) -> int | None:
        d = usage.get(parent)
        return count(d.get(name)) if isinstance(d, dict) else None

    cache_read = count(usage.get("cache_read_input_tokens"))  # Anthropic's, apart from input
    if cache_read is None:  # OpenAI's and the Responses API's, within the input count
        cache_read = detail("prompt_tokens_details", "cached_tokens")
        if cache_read is None:
            cache_read = detail("input_tokens_details", "cached_tokens")
    reasoning = detail("completion_tokens_details", "reasoning_tokens")
    if reasoning is None:
        reasoning = detail("output_tokens_details", "reasoning_tokens")
    cache_write = count(usage.get("cache_creation_input_tokens"))
    inp, out_tokens = token_counts(usage)
    for name, value in (
        ("gen_ai.usage.input_tokens", inp),
        ("gen_ai.usage.output_tokens", out_tokens),
        ("gen_ai.usage.cache_read.input_tokens", cache_read),
        ("gen_ai.usage.cache_creation.input_tokens", cache_write),
        ("gen_ai.usage.reasoning.output_tokens", reasoning),
    ):
        if value is not None:
            out[name] = value
    return out


class _HeaderCarrier(dict[str, str]):
    """Sanic's request headers as the propagator's carrier (it reads `traceparent` and
    `tracestate` with `.get`)."""

    def __init__(self, headers: Any) -> None:
        super().__init__()
        for name in ("traceparent", "tracestate"):
            v = headers.get(name)
            if v is not None:
                self[name] = v
