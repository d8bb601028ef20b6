"""Tracing (SPEC §14) without a collector: OpenTelemetry is never imported when tracing is off;
what a span says of an answer (facts, usage) for each format."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from service.observability.tracing import provider_name, usage_attributes
from service.proxy.events import UsageTracker, answer_facts
from tests.support import ROOT

# Imports every module of the service but the tracer, builds the app as the CLI's workers do and
# runs its start-up listeners' imports: OpenTelemetry must not be among the loaded modules.
PROBE = """
import importlib, json, pkgutil, sys
from pathlib import Path
import service
names = [m.name for m in pkgutil.walk_packages(service.__path__, "service.")
         if m.name != "service.observability.tracing"]
for name in names:
    importlib.import_module(name)
from service.app import create_app
from service.settings import Settings
app = create_app(Settings.from_env({}, profile_path=Path(sys.argv[1])))
print(json.dumps({"tracing": app.ctx.tracing is None,
                  "otel": sorted(m for m in sys.modules if m.startswith("opentelemetry"))}))
"""


def test_tracing_off_imports_no_opentelemetry(tmp_path: Path) -> None:
    profile = tmp_path / "p.json"
    profile.write_text(json.dumps({"name": "p", "baseUrl": "http://127.0.0.1:1"}))
    out = subprocess.run(
        [sys.executable, "-c", PROBE, str(profile)],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result == {"tracing": True, "otel": []}


@pytest.mark.parametrize(
    ("answer", "facts"),
    [
        (
            {"id": "c1", "model": "m", "choices": [{"finish_reason": "stop"},
                                                    {"finish_reason": "length"}]},
            {"id": "c1", "model": "m", "finish_reasons": ["stop", "length"]},
        ),
        ({"id": "msg_1", "model": "claude", "stop_reason": "tool_use"},
         {"id": "msg_1", "model": "claude", "finish_reasons": ["tool_use"]}),
        ({"object": "response", "id": "resp_1", "model": "m", "status": "incomplete"},
         {"id": "resp_1", "model": "m", "finish_reasons": ["incomplete"]}),
        ({"object": "list", "model": "emb", "data": []}, {"model": "emb"}),
        ({"type": "message_start", "message": {"id": "msg_2", "model": "c"}},
         {"id": "msg_2", "model": "c"}),
        ({"type": "message_delta", "delta": {"stop_reason": "end_turn"}},
         {"finish_reasons": ["end_turn"]}),
        ({"type": "response.completed",
          "response": {"object": "response", "id": "r", "model": "m", "status": "completed"}},
         {"id": "r", "model": "m", "finish_reasons": ["completed"]}),
        ([1, 2], {}),
        (None, {}),
    ],
)  # fmt: skip
def test_answer_facts_of_each_format(answer: object, facts: dict[str, object]) -> None:
    assert answer_facts(answer, {}) == facts


def test_a_stream_tracker_collects_facts_only_when_asked() -> None:
    events = [
        b'data: {"id":"c","model":"m","choices":[{"delta":{"content":"x"},"finish_reason":null}]}'
        b"\n\n",
        b'data: {"id":"c","model":"m","choices":[{"delta":{},"finish_reason": "stop"}]}\n\n',
        b'data: {"id":"c","model":"m","choices":[],"usage":{"prompt_tokens":2,'
        b'"completion_tokens":1}}\n\n',
    ]
    with_facts, without = UsageTracker(facts=True), UsageTracker()
    for e in events:
        assert with_facts.keep(e) and without.keep(e)
    assert with_facts.facts == {"id": "c", "model": "m", "finish_reasons": ["stop"]}
    assert without.facts is None
    assert with_facts.usage == without.usage == {"prompt_tokens": 2, "completion_tokens": 1}


def test_usage_attributes_count_cached_input_tokens_in_the_input() -> None:
    assert usage_attributes({"prompt_tokens": 7, "completion_tokens": 3}) == {
        "gen_ai.usage.input_tokens": 7,
        "gen_ai.usage.output_tokens": 3,
    }
    assert usage_attributes(
        {"input_tokens": 9, "output_tokens": 4, "cache_read_input_tokens": 100,
         "cache_creation_input_tokens": 5}
    ) == {
        "gen_ai.usage.input_tokens": 114,
        "gen_ai.usage.output_tokens": 4,
        "gen_ai.usage.cache_read.input_tokens": 100,
        "gen_ai.usage.cache_creation.input_tokens": 5,
    }  # fmt: skip
    assert usage_attributes(None) == {}
    assert usage_attributes({"prompt_tokens": True}) == {}


def test_provider_names_follow_the_conventions_for_shipped_profiles() -> None:
    assert provider_name("anthropic") == "anthropic"
    assert provider_name("gemini") == "gcp.gemini"
    assert provider_name("my-own") == "my-own"


def test_tracing_settings_refuse_another_protocol() -> None:
    from service.settings import Settings, SettingsError

    on = {"API_ROUTER_TRACING": "true"}
    assert Settings.from_env(on, profile_path=Path()).tracing is True
    assert Settings.from_env({}, profile_path=Path()).tracing is False
    with pytest.raises(SettingsError, match="http/protobuf only"):
        Settings.from_env({**on, "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}, profile_path=Path())
    ok = {**on, "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf"}
    assert Settings.from_env(ok, profile_path=Path()).tracing is True


def test_usage_attributes_read_openai_cached_and_reasoning_details() -> None:
    usage = {
        "prompt_tokens": 50,
        "completion_tokens": 20,
        "prompt_tokens_details": {"cached_tokens": 30},
        "completion_tokens_details": {"reasoning_tokens": 12},
    }
    assert usage_attributes(usage) == {
        "gen_ai.usage.input_tokens": 50,  # OpenAI's input count already holds the cached part
        "gen_ai.usage.output_tokens": 20,
        "gen_ai.usage.cache_read.input_tokens": 30,
        "gen_ai.usage.reasoning.output_tokens": 12,
    }
    responses = {"input_tokens": 11, "output_tokens": 4,
                 "input_tokens_details": {"cached_tokens": 5},
                 "output_tokens_details": {"reasoning_tokens": 2}}  # fmt: skip
    assert usage_attributes(responses)["gen_ai.usage.input_tokens"] == 11
    assert usage_attributes(responses)["gen_ai.usage.reasoning.output_tokens"] == 2


def test_a_stream_keeps_the_usage_details() -> None:
    t = UsageTracker()
    t.keep(
        b'data: {"choices":[],"usage":{"prompt_tokens":2,"completion_tokens":1,'
        b'"prompt_tokens_details":{"cached_tokens":1},"junk":{"x":1}}}\n\n'
    )
    assert t.usage == {
        "prompt_tokens": 2,
        "completion_tokens": 1,
        "prompt_tokens_details": {"cached_tokens": 1},
    }
    assert t.final


def test_an_anthropic_opening_count_is_not_the_final_usage() -> None:
    t = UsageTracker()
    t.keep(b'event: message_start\ndata: {"type":"message_start","message":{"id":"m",'
           b'"usage":{"input_tokens":9,"output_tokens":1}}}\n\n')  # fmt: skip
    assert t.usage == {"input_tokens": 9, "output_tokens": 1} and not t.final
    t.keep(b'event: message_delta\ndata: {"type":"message_delta","delta":{"stop_reason":'
           b'"end_turn"},"usage":{"output_tokens":4}}\n\n')  # fmt: skip
    assert t.usage == {"input_tokens": 9, "output_tokens": 4} and t.final


def test_a_missing_otel_extra_is_one_clear_line(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    from service.settings import Settings, SettingsError

    def missing(name: str) -> None:
        raise ModuleNotFoundError(f"No module named {name.split('.')[0]!r}")

    monkeypatch.setattr(importlib.util, "find_spec", missing)
    with pytest.raises(SettingsError, match=r"needs the otel extra"):
        Settings.from_env({"API_ROUTER_TRACING": "true"}, profile_path=Path())


def test_a_collector_that_never_answers_does_not_hold_a_worker_s_stop() -> None:
    """The SDK's shutdown waits for its exporter (10 s a batch and more with a collector down):
    pods were killed past their grace period. The stop gives up waiting (here at 0.2 s) and
    goes on; the exporter is still stuck when it returns."""
    import threading

    from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

    from service.observability.tracing import Tracing

    release = threading.Event()

    class Stuck(SpanExporter):
        def export(self, spans: object) -> SpanExportResult:
            release.wait(30)
            return SpanExportResult.SUCCESS

    tracing = Tracing(exporter=Stuck())
    tracing.tracer.start_span("a request").end()
    try:
        assert tracing.shutdown(within=0.2) is False
        assert not release.is_set()  # returned while the export still hung
    finally:
        release.set()
