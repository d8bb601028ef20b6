"""OpenTelemetry traces end to end (SPEC §14): a real router exports OTLP/HTTP protobuf to a fake
collector (tests/fakes/otlp_receiver.py) that decodes it; the fake upstream records the
`traceparent` it received. One tree per request: client -> router SERVER span -> one CLIENT span
per attempt -> the provider, for JSON, stream, translated and failed-over requests."""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.conftest import base_profile
from tests.fakes.otlp_receiver import OTLPReceiver, Span
from tests.fakes.upstream import FakeUpstream, Reply, default_reply, openai_chat_stream
from tests.support import RouterFactory, RouterProcess

CHAT = "/v1/chat/completions"
SERVER, CLIENT = 2, 3
PROMPT = "sentinel-prompt-text-4d1f"  # content: must never appear in a span


@pytest.fixture(scope="module")
def receiver() -> Iterator[OTLPReceiver]:
    with OTLPReceiver() as r:
        yield r


def tracing_env(receiver: OTLPReceiver, **more: str) -> dict[str, str]:
    return {
        "API_ROUTER_TRACING": "true",
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url,
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        "OTEL_SERVICE_NAME": "router-under-test",
        "OTEL_BSP_SCHEDULE_DELAY": "50",  # ms: export at once
        **more,
    }


@pytest.fixture(scope="module")
def traced(
    receiver: OTLPReceiver, fake_upstream: FakeUpstream, module_router_factory: RouterFactory
) -> RouterProcess:
    profile = base_profile(
        fake_upstream.url,
        # Messages clients translated to the OpenAI-format upstream
        endpoints={"/v1/messages": {"format": "openai"}},
    )
    return module_router_factory(profile, workers=2, env=tracing_env(receiver))


def parent_header() -> tuple[str, str, dict[str, str]]:
    trace_id, parent = secrets.token_hex(16), secrets.token_hex(8)
    return trace_id, parent, {"traceparent": f"00-{trace_id}-{parent}-01", "tracestate": "k=v"}


def tree(receiver: OTLPReceiver, trace_id: str, attempts: int = 1) -> tuple[Span, list[Span]]:
    spans = receiver.wait_for(
        lambda ss: (
            sum(1 for s in ss if s.trace_id == trace_id and s.kind == SERVER) == 1
            and sum(1 for s in ss if s.trace_id == trace_id and s.kind == CLIENT) >= attempts
        )
    )
    mine = [s for s in spans if s.trace_id == trace_id]
    (server,) = [s for s in mine if s.kind == SERVER]
    clients = sorted((s for s in mine if s.kind == CLIENT), key=lambda s: s.start_ns)
    assert len(clients) == attempts, [s.name for s in mine]
    return server, clients


def no_content(spans: list[Span]) -> None:
    text = json.dumps([s.attributes for s in spans])
    assert PROMPT not in text and "Hello from fake" not in text and "Hello" not in text


def chat(stream: bool = False, model: str = "gpt-4") -> dict[str, Any]:
    body: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": PROMPT}]}
    if stream:
        body["stream"] = True
    return body


def test_json_request_is_one_tree_continued_from_the_client_and_into_the_provider(
    traced: RouterProcess, receiver: OTLPReceiver, upstream: FakeUpstream
) -> None:
    trace_id, parent, headers = parent_header()
    r = httpx.post(traced.url + CHAT, json=chat(), headers=headers, timeout=10)
    assert r.status_code == 200
    server, (attempt,) = tree(receiver, trace_id)
    assert server.parent_span_id == parent
    assert server.name == "POST /v1/chat/completions"
    assert server.attributes["http.route"] == CHAT
    assert server.attributes["http.request.method"] == "POST"
    assert server.attributes["http.response.status_code"] == 200
    assert server.resource["service.name"] == "router-under-test"
    assert attempt.parent_span_id == server.span_id
    assert attempt.name == "chat up-model-4"
    a = attempt.attributes
    assert a["gen_ai.operation.name"] == "chat"
    assert a["gen_ai.provider.name"] == "testprov"
    assert a["gen_ai.request.model"] == "up-model-4"
    assert a["gen_ai.response.model"] == "up-model-4"
    assert a["gen_ai.response.id"] == "chatcmpl-fake"
    assert a["gen_ai.response.finish_reasons"] == ["stop"]
    assert (a["gen_ai.usage.input_tokens"], a["gen_ai.usage.output_tokens"]) == (7, 3)
    assert a["gen_ai.request.stream"] is False
    assert a["http.response.status_code"] == 200
    assert a["server.address"] == "127.0.0.1"
    assert "http.request.resend_count" not in a
    # The provider is our attempt's child: the traceparent it got names the attempt span.
    sent = upstream.last
    assert sent.header("traceparent") == f"00-{trace_id}-{attempt.span_id}-01"
    assert sent.header("tracestate") == "k=v"
    no_content([server, attempt])
    # The completion line names the trace.
    assert f'"trace_id": "{trace_id}"' in traced.output() or f'"trace_id":"{trace_id}"' in (
        traced.output()
    )


def test_a_client_s_huge_model_name_is_cut_in_spans_and_the_log(
    traced: RouterProcess, receiver: OTLPReceiver, upstream: FakeUpstream
) -> None:
    """The model (300,000 characters here; megabytes fit in a request) went whole into the
    attempt span's name, its attributes and the completion line: one request made a span batch
    the exporter dropped with the spans of others in it."""
    model = "m" * 300_000  # not mapped: sent upstream, and echoed back, as it came
    trace_id, _, headers = parent_header()
    r = httpx.post(traced.url + CHAT, json=chat(model=model), headers=headers, timeout=10)
    assert r.status_code == 200
    assert upstream.last.json()["model"] == model  # the request itself is untouched
    _, (attempt,) = tree(receiver, trace_id)
    assert attempt.name == "chat " + "m" * 255 + "…"
    assert attempt.attributes["gen_ai.request.model"] == "m" * 255 + "…"
    assert all(len(str(v)) <= 1024 for v in attempt.attributes.values())
    line = traced.wait_for_log(
        lambda x: x.get("event") == "request_completed" and x.get("trace_id") == trace_id
    )
    assert line["model"] == "m" * 255 + "…"


def test_stream_attempt_carries_usage_finish_and_time_to_first_chunk(
    traced: RouterProcess, receiver: OTLPReceiver, upstream: FakeUpstream
) -> None:
    trace_id, _, headers = parent_header()
    with httpx.stream("POST", traced.url + CHAT, json=chat(True), headers=headers) as r:
        assert r.status_code == 200
        r.read()
    server, (attempt,) = tree(receiver, trace_id)
    a = attempt.attributes
    assert a["gen_ai.request.stream"] is True
    assert a["gen_ai.response.finish_reasons"] == ["stop"]
    assert a["gen_ai.response.id"] == "chatcmpl-fake"
    assert (a["gen_ai.usage.input_tokens"], a["gen_ai.usage.output_tokens"]) == (7, 3)
    assert 0 < a["gen_ai.response.time_to_first_chunk"] < 5
    assert attempt.end_ns <= server.end_ns  # the attempt ends with the stream's last byte
    no_content([server, attempt])


def test_translated_request(
    traced: RouterProcess, receiver: OTLPReceiver, upstream: FakeUpstream
) -> None:
    trace_id, _, headers = parent_header()
    body = {"model": "gpt-4", "max_tokens": 50, "messages": [{"role": "user", "content": PROMPT}]}
    r = httpx.post(traced.url + "/v1/messages", json=body, headers=headers, timeout=10)
    assert r.status_code == 200
    server, (attempt,) = tree(receiver, trace_id)
    assert server.attributes["api_router.translation"] == "anthropic_to_openai"
    assert attempt.attributes["gen_ai.response.finish_reasons"] == ["stop"]
    assert upstream.last.header("traceparent") == f"00-{trace_id}-{attempt.span_id}-01"
    no_content([server, attempt])


def test_without_a_client_traceparent_the_router_starts_the_trace(
    traced: RouterProcess, receiver: OTLPReceiver, upstream: FakeUpstream
) -> None:
    rid = secrets.token_hex(8)
    r = httpx.post(traced.url + CHAT, json=chat(), headers={"X-Request-ID": rid}, timeout=10)
    assert r.status_code == 200
    spans = receiver.wait_for(
        lambda ss: any(s.attributes.get("api_router.request_id") == rid for s in ss)
    )
    (server,) = [s for s in spans if s.attributes.get("api_router.request_id") == rid]
    assert server.parent_span_id == ""
    traceparent = upstream.last.header("traceparent")
    assert traceparent is not None and traceparent.split("-")[1] == server.trace_id


def test_an_upstream_error_marks_both_spans(
    traced: RouterProcess, receiver: OTLPReceiver, upstream: FakeUpstream
) -> None:
    upstream.reply_with(Reply(status=502, body=b'{"error": {"message": "bad gateway"}}'))
    trace_id, _, headers = parent_header()
    r = httpx.post(traced.url + CHAT, json=chat(), headers=headers, timeout=10)
    assert r.status_code == 502
    server, (attempt,) = tree(receiver, trace_id)
    assert server.status == 2 and server.attributes["error.type"] == "upstream_error"
    assert attempt.status == 2 and attempt.attributes["http.response.status_code"] == 502


def test_failed_over_request_has_one_span_per_attempt(
    receiver: OTLPReceiver, router_factory: RouterFactory, upstream: FakeUpstream
) -> None:
    """A 500 from the first upstream, then the fallback answers: two attempt spans under one
    server span, the second with http.request.resend_count 1; each upstream got its own
    attempt's context."""
    with FakeUpstream() as backup:
        upstream.reply_with(Reply(status=500, body=b'{"error": {"message": "boom"}}'))
        routing = {
            "name": "traced",
            "upstreams": {
                "primary": {"baseUrl": upstream.url},
                "backup": {"profile": "openai", "baseUrl": backup.url},
            },
            "modelRoutes": [
                {"match": "gpt-4", "targets": [{"upstream": "primary"}], "fallbacks": ["b"]},
                {"match": "b", "targets": [{"upstream": "backup", "model": "backup-model"}]},
            ],
            "retry": {"maxAttempts": 3, "backoffBaseSecs": 0.01, "backoffMaxSecs": 0.02},
            "outlierDetection": {"consecutiveFailures": 100, "failureRate": 0},
        }
        router = router_factory(routing, env=tracing_env(receiver))
        trace_id, _, headers = parent_header()
        # A 500 is retried once on the same target, then the fallback answers.
        r = httpx.post(router.url + CHAT, json=chat(), headers=headers, timeout=10)
        assert r.status_code == 200 and r.headers["x-router-upstream"] == "backup"
        attempts = int(r.headers["x-router-attempts"])
        assert attempts == 3
        server, clients = tree(receiver, trace_id, attempts)
        assert [c.parent_span_id for c in clients] == [server.span_id] * attempts
        assert [c.attributes.get("http.request.resend_count", 0) for c in clients] == list(
            range(attempts)
        )
        assert clients[0].status == 2 and clients[0].attributes["error.type"] == "server_error"
        assert clients[0].attributes["api_router.upstream"] == "primary"
        last = clients[-1]
        assert last.attributes["api_router.upstream"] == "backup"
        assert last.attributes["gen_ai.provider.name"] == "openai"
        assert last.attributes["gen_ai.request.model"] == "backup-model"
        assert last.status != 2
        assert server.attributes["api_router.attempts"] == attempts
        assert backup.last.header("traceparent") == f"00-{trace_id}-{last.span_id}-01"
        got = [r.header("traceparent") for r in upstream.requests]
        assert got == [f"00-{trace_id}-{c.span_id}-01" for c in clients[:-1]]
        upstream.reply_with(default_reply)


def test_latency_buckets_carry_the_trace_as_an_exemplar_in_openmetrics(
    traced: RouterProcess, receiver: OTLPReceiver, upstream: FakeUpstream
) -> None:
    """Exemplars across workers (2 here; prometheus-client keeps none in multiprocess mode):
    the bucket each latency fell in names the request's trace and server span."""
    trace_id, _, headers = parent_header()
    assert httpx.post(traced.url + CHAT, json=chat(), headers=headers, timeout=10).is_success
    server, _ = tree(receiver, trace_id)
    om = httpx.get(
        traced.url + "/metrics", headers={"Accept": "application/openmetrics-text"}, timeout=10
    )
    assert om.headers["content-type"].startswith("application/openmetrics-text")
    found = {
        line.split("{", 1)[0]
        for line in om.text.splitlines()
        if f'route="{CHAT}"' in line
        and f'# {{span_id="{server.span_id}",trace_id="{trace_id}"}}' in line
    }
    assert found == {"request_latency_seconds_bucket", "upstream_latency_seconds_bucket"}
    classic = httpx.get(traced.url + "/metrics", timeout=10).text
    assert trace_id not in classic  # the text format 0.0.4 has no exemplars


def test_an_unsampled_request_records_nothing_and_still_propagates(
    receiver: OTLPReceiver, router_factory: RouterFactory, upstream: FakeUpstream
) -> None:
    """The client's sampled flag 0 (parent-based sampler): nothing is exported, and the
    provider gets the trace with the router's server span as parent, unsampled."""
    router = router_factory(base_profile(upstream.url), env=tracing_env(receiver))
    trace_id, parent = secrets.token_hex(16), secrets.token_hex(8)
    headers = {"traceparent": f"00-{trace_id}-{parent}-00"}
    r = httpx.post(router.url + CHAT, json=chat(True), headers=headers, timeout=10)
    assert r.status_code == 200
    sent = upstream.last.header("traceparent")
    assert sent is not None
    version, got_trace, span_id, flags = sent.split("-")
    assert (version, got_trace, flags) == ("00", trace_id, "00") and span_id != parent
    # A sampled request after it is exported; the unsampled one never was.
    sampled, _, sampled_headers = parent_header()
    httpx.post(router.url + CHAT, json=chat(), headers=sampled_headers, timeout=10)
    tree(receiver, sampled)
    assert not [s for s in receiver.spans if s.trace_id == trace_id]


def test_attempt_error_type_is_its_outcome_and_a_cut_stream_marks_the_server_span(
    traced: RouterProcess, receiver: OTLPReceiver, upstream: FakeUpstream
) -> None:
    """docs/observability.md: an attempt's `error.type` is its outcome as a routing file names it
    (a plain profile said `upstream_error` for a 429 a routing file calls `rate_limited`); a
    stream cut after its 2xx head is an error of the server span too (it looked clean while the
    completion line said `stream_error`)."""
    upstream.reply_with(
        Reply(
            status=429,
            headers=[("Content-Type", "application/json")],
            body=b'{"error": {"message": "slow down"}}',
        )
    )
    trace_id, _, headers = parent_header()
    assert (
        httpx.post(traced.url + CHAT, json=chat(), headers=headers, timeout=10).status_code == 429
    )
    server, (attempt,) = tree(receiver, trace_id)
    assert attempt.status == 2 and attempt.attributes["error.type"] == "rate_limited"
    assert server.status != 2 and "error.type" not in server.attributes  # a 4xx: the client's
    events = openai_chat_stream("up-model-4", ("Hel", "lo", "never"))
    upstream.reply_with(
        Reply(
            headers=[("Content-Type", "text/event-stream")],
            chunks=[(0.0, e.encode()) for e in events[:3]] + [(0.05, b"")],
            action="close_mid",
        )
    )
    trace_id, _, headers = parent_header()
    with httpx.stream(
        "POST", traced.url + CHAT, json=chat(stream=True), headers=headers, timeout=10
    ) as r:
        assert r.status_code == 200
        r.read()
    server, (attempt,) = tree(receiver, trace_id)
    assert server.status == 2 and server.attributes["error.type"] == "stream_error"
    assert server.attributes["http.response.status_code"] == 200
    assert attempt.attributes["error.type"] == "stream_error"


def test_a_new_trace_sends_the_client_s_tracestate_nowhere(
    traced: RouterProcess, receiver: OTLPReceiver, upstream: FakeUpstream
) -> None:
    """W3C Trace Context: a tracestate without a usable traceparent belongs to another trace and
    is dropped; two traceparent headers are no usable one (a new trace begins). Before, the
    client's tracestate went upstream beside the router's new trace id, and the first of two
    traceparents was continued."""
    r = httpx.post(traced.url + CHAT, json=chat(), headers={"tracestate": "vendor=stale"})
    assert r.status_code == 200
    assert upstream.last.header("traceparent") is not None
    assert upstream.last.header("tracestate") is None
    trace_id, parent, _ = parent_header()
    two = [
        ("traceparent", f"00-{trace_id}-{parent}-01"),
        ("traceparent", f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-01"),
        ("tracestate", "k=v"),
    ]
    assert httpx.post(traced.url + CHAT, json=chat(), headers=two).status_code == 200
    sent = upstream.last.header("traceparent")
    assert sent is not None and trace_id not in sent
    assert upstream.last.header("tracestate") is None
    # one valid traceparent: continued, with its tracestate (as before)
    trace_id, _, headers = parent_header()
    assert httpx.post(traced.url + CHAT, json=chat(), headers=headers).status_code == 200
    assert trace_id in (upstream.last.header("traceparent") or "")
    assert upstream.last.header("tracestate") == "k=v"


def test_an_attempt_the_client_left_is_marked_cancelled(
    traced: RouterProcess, receiver: OTLPReceiver, upstream: FakeUpstream
) -> None:
    """The client left while the upstream was still answering (499): the attempt span said
    nothing of it, like a clean success."""
    upstream.reply_with(lambda req: Reply(delay=1.5, body=default_reply(req).body))
    trace_id, _, headers = parent_header()
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(traced.url + CHAT, json=chat(), headers=headers, timeout=0.3)
    server, (attempt,) = tree(receiver, trace_id)
    assert server.attributes["http.response.status_code"] == 499
    assert attempt.attributes["error.type"] == "cancelled"
    assert attempt.status != 2  # not the upstream's failure
