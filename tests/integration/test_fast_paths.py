"""API_ROUTER_FAST_PATHS=0 serves with the libraries' own code: Sanic's signal dispatch,
prometheus-client's own metric writes, structlog's own chain for the completion line, httpx's own
Request constructor, Sanic's own response-head sanitiser, each request's record written in its
own `finish`; every fast path's entry point is made
to fail, and a proxied request still answers and is still recorded. Any mode answers the same."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sanic import Sanic

from service.observability import completions, metrics_fast
from service.observability import logging as obs_logging
from service.proxy import h1transport, sse, upstream
from service.server import response_head, stream_write
from service.server.dispatch import HOT_SIGNALS, RouterApp
from service.settings import FAST_PATH_NAMES
from tests.conftest import base_profile
from tests.fakes.upstream import FakeUpstream, Reply, openai_chat_stream, openai_usage_chunk
from tests.in_process import in_process_apps
from tests.integration.test_fast_dispatch import _routed_events

CHAT = {"model": "gpt-4", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture
def make_app(upstream: FakeUpstream, tmp_path: Path) -> Iterator[Any]:
    """`make_app(env)`: the app `create_app` builds for these environment variables (on
    `config`, a profile or routing file, when given), and the stream its log lines go to
    (tests.in_process)."""
    with in_process_apps(tmp_path) as make:

        def one(
            env: dict[str, str], config: dict[str, Any] | None = None
        ) -> tuple[Sanic, io.StringIO]:
            return make(config or base_profile(upstream.url), env)

        yield one


def _completion_lines(stream: io.StringIO) -> list[dict[str, Any]]:
    lines = [json.loads(x) for x in stream.getvalue().splitlines() if x.startswith("{")]
    return [x for x in lines if x.get("event") == "request_completed"]


def test_zero_serves_with_every_library_s_own_code(
    make_app: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(*_: object, **__: object) -> Any:
        raise AssertionError("a fast path ran")

    monkeypatch.setattr(upstream, "bytes_request", refuse)
    monkeypatch.setattr(upstream, "read_raw", refuse)
    monkeypatch.setattr(h1transport, "raw_headers", refuse)
    for name in ("use_fast_values", "writer", "gauge_value"):
        monkeypatch.setattr(metrics_fast, name, refuse)
    monkeypatch.setattr(obs_logging, "json_line", refuse)
    monkeypatch.setattr(obs_logging, "add_timestamp", refuse)
    monkeypatch.setattr(RouterApp, "plan_signals", refuse)
    monkeypatch.setattr(completions.Completions, "add", refuse)

    app, log = make_app({"API_ROUTER_FAST_PATHS": "0"})
    assert type(app) is Sanic
    assert not response_head.installed()  # Sanic's own header sanitiser
    routed = _routed_events(app)
    _, resp = app.test_client.post(
        "/v1/chat/completions", json=CHAT, headers={"X-Request-ID": "stock-1"}
    )
    assert resp.status == 200, resp.text
    assert resp.json["choices"][0]["message"]["content"] == "Hello from fake"
    (line,) = _completion_lines(log)
    assert (line["request_id"], line["route"], line["status_code"]) == (
        "stock-1",
        "/v1/chat/completions",
        200,
    )
    assert line["timestamp"].endswith("Z")
    assert set(HOT_SIGNALS) & set(routed) >= {"http.lifecycle.request", "http.lifecycle.response"}


@pytest.mark.parametrize(
    "env",
    [
        {},
        {"API_ROUTER_FAST_PATHS": "0"},
        {"API_ROUTER_FAST_PATHS": "dispatch,logging"},
        {"API_ROUTER_FAST_PATHS": "metrics,request"},
        {"API_ROUTER_FAST_PATHS": "head"},
        # nothing recorded at all: the request is still proxied (and keeps its request id)
        {"API_ROUTER_METRICS": "false", "API_ROUTER_ACCESS_LOG": "false"},
    ],
)
def test_every_mode_answers_the_same(make_app: Any, env: dict[str, str]) -> None:
    app, log = make_app(env)
    assert response_head.installed() is app.ctx.settings.fast_paths.head
    _, resp = app.test_client.post(
        "/v1/chat/completions", json=CHAT, headers={"X-Request-ID": "mode-1"}
    )
    assert resp.status == 200, resp.text
    assert resp.headers["X-Request-ID"] == "mode-1"
    assert resp.json["model"] == "up-model-4"
    lines = _completion_lines(log)
    if env.get("API_ROUTER_ACCESS_LOG") == "false":
        assert lines == []
    else:
        assert [(x["request_id"], x["status_code"], x["model"]) for x in lines] == [
            ("mode-1", 200, "gpt-4")
        ]


def paced_stream() -> list[tuple[float, bytes]]:
    """A stream the relay must do everything to: events apart in time, one cut across two reads,
    a malformed one (dropped and counted), the usage chunk the router asked for (dropped)."""
    events = [e.encode() for e in openai_chat_stream("up-model", ("Hel", "lo", " wor", "ld"))]
    third = events[2]
    return [
        (0.0, events[0]),
        (0.02, events[1]),
        (0.02, third[:25]),
        (0.02, third[25:]),
        (0.02, b'data: {"choices": [{"delta": {"content": "cut\n\n'),
        *[(0.02, e) for e in events[3:-1]],
        (0.02, openai_usage_chunk("up-model").encode()),
        (0.02, events[-1]),  # [DONE]
    ]


def routed(url: str) -> dict[str, Any]:
    """A routing file sending `gpt-4` to the fake upstream (its streams go through the
    failover's hold-back before the relay)."""
    return {
        "name": "routed",
        "upstreams": {"up": {"baseUrl": url}},
        "modelRoutes": [{"match": "gpt-4", "targets": [{"upstream": "up", "model": "up-model"}]}],
    }


@pytest.mark.parametrize("routing", [False, True], ids=["profile", "routing-file"])
def test_the_stream_fast_path_relays_what_the_relay_task_and_sanic_would(
    make_app: Any, upstream: FakeUpstream, monkeypatch: pytest.MonkeyPatch, routing: bool
) -> None:
    """Fast path `stream` (service.server.stream_write): events after the first are written
    from the upstream connection's callback, not by the relay's task through Sanic's send. The
    client gets the same body either way, and the same things are recorded."""
    upstream.reply_with(
        Reply(headers=[("Content-Type", "text/event-stream")], chunks=paced_stream())
    )
    direct: list[bytes] = []
    write = stream_write.ChunkWriter.write

    def counted(self: stream_write.ChunkWriter, data: bytes) -> None:
        direct.append(data)
        write(self, data)

    monkeypatch.setattr(stream_write.ChunkWriter, "write", counted)
    body = {**CHAT, "stream": True}
    config = routed(upstream.url) if routing else None
    app, log = make_app({}, config)
    _, fast = app.test_client.post("/v1/chat/completions", json=body)
    assert fast.status == 200, fast.text
    assert len(direct) >= 4  # every event after the head's, straight to the transport

    def refuse(*_: object, **__: object) -> Any:
        raise AssertionError("the stream fast path ran")

    monkeypatch.setattr(sse, "chunk_writer", refuse)
    others = ",".join(n for n in FAST_PATH_NAMES if n != "stream")
    stock_app, stock_log = make_app({"API_ROUTER_FAST_PATHS": others}, config)
    _, stock = stock_app.test_client.post("/v1/chat/completions", json=body)
    assert stock.status == 200, stock.text
    assert fast.body == stock.body
    assert b"cut" not in fast.body and b'"usage"' not in fast.body
    assert fast.body.count(b"data: ") == 6  # 4 content events, the finish, [DONE]
    lines = _completion_lines(log), _completion_lines(stock_log)
    assert [(x["status_code"], x.get("malformed_events")) for x in lines[0]] == [(200, 1)]
    assert [(x["status_code"], x.get("malformed_events")) for x in lines[1]] == [(200, 1)]


@pytest.mark.parametrize(
    ("env", "want"),
    [
        ({"API_ROUTER_GC_THRESHOLD": "100000"}, 100_000),
        ({}, 20_000),
        ({"API_ROUTER_GC_THRESHOLD": "0"}, None),
    ],
)
def test_a_worker_sets_the_gc_threshold_when_it_starts(
    make_app: Any, env: dict[str, str], want: int | None
) -> None:
    """Not a fast path (gc.set_threshold is public): the worker's first-generation threshold
    (API_ROUTER_GC_THRESHOLD; unset: 20000; 0 leaves Python's own)."""
    import gc

    saved = gc.get_threshold()  # given back after the test (tests/conftest.py)
    gc.set_threshold(700, *saved[1:])
    app, _ = make_app(env)
    _, resp = app.test_client.get("/health")
    assert resp.status == 200
    assert gc.get_threshold() == (want or 700, *saved[1:])


def test_a_stopped_server_leaves_no_drain_deadline_behind(make_app: Any) -> None:
    """A server that stops sets its worker's drain deadline (service.proxy.sse); once it has
    stopped, nothing else in the process may meet it: a later server, or the relay's own unit
    tests in the same test process, saw every stream past its drain and refused to relay."""
    import math

    from service.proxy import sse

    app, _ = make_app({"API_ROUTER_DRAIN_SECS": "0"})
    _, resp = app.test_client.get("/health")
    assert resp.status == 200
    assert sse._drain_until[0] == math.inf
