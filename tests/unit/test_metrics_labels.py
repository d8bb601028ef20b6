"""Pure pieces of observability: label functions, gauge aggregation modes, the repeated-failure
alarm (with a clock the test controls), context clearing, credential scrubbing, dead workers."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import structlog
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from service.errors import ERROR_TYPES
from service.observability import lifecycle
from service.observability.alerts import (
    ALERT_INTERVAL_SECS,
    FAILURE_THRESHOLD,
    FAILURE_WINDOW_SECS,
    FailureAlarm,
)
from service.observability.logging import configure_logging, redact, set_request_secret
from service.observability.metrics import (
    LATENCY_BUCKETS,
    METHODS,
    Metrics,
    method_label,
    reap_dead_workers,
)

# -- labels come from closed sets -----------------------------------------------------------------


def _req(path: str, route_path: str | None) -> Any:
    route = SimpleNamespace(path=route_path) if route_path is not None else None
    return SimpleNamespace(path=path, route=route)


def test_route_label_is_the_pattern_with_its_slash() -> None:
    assert lifecycle.route_label(_req("/v1/chat/completions", "v1/chat/completions")) == (
        "/v1/chat/completions"
    )
    assert lifecycle.route_label(_req("/health", "/health")) == "/health"
    assert lifecycle.route_label(_req("/health", None)) == "/health"  # 405: known path


@given(st.text(min_size=1, max_size=60))
def test_unknown_paths_are_unmatched(path: str) -> None:
    label = lifecycle.route_label(_req("/" + path, None))
    assert label == "unmatched" or label in lifecycle.KNOWN_PATHS


@given(st.text(max_size=20))
def test_method_label_is_bounded(method: str) -> None:
    assert method_label(method) in METHODS | {"OTHER"}


@given(st.one_of(st.none(), st.text(max_size=40)))
def test_model_label_is_known_or_other(model: str | None) -> None:
    known = frozenset({"gpt-4", "up-model-4"})
    assert lifecycle.model_label(model, known) in known | {"other"}
    assert lifecycle.model_label("gpt-4", known) == "gpt-4"
    assert lifecycle.model_label(None, known) == "other"


def test_error_types_are_the_closed_set_of_the_spec() -> None:
    assert set(ERROR_TYPES) == {
        "connect_error", "io_error", "tls_error", "timeout", "protocol_error", "json_error",
        "upstream_error", "stream_error",
    }  # fmt: skip


# -- the metric objects ---------------------------------------------------------------------------


def test_metric_declarations_and_multiprocess_modes() -> None:
    m = Metrics(CollectorRegistry())
    assert m.requests_total._labelnames == ("route", "method", "status")
    assert m.upstream_errors_total._labelnames == ("error_type",)
    assert m.request_latency_seconds._labelnames == ("route",)
    assert tuple(m.request_latency_seconds._upper_bounds[:-1]) == LATENCY_BUCKETS
    assert LATENCY_BUCKETS == (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
    assert m.tokens_total._labelnames == ("type", "model")
    # livesum: a dead worker's connections must not count; livemostrecent: the instance-wide
    # bucket count set by the worker that answers the scrape
    assert m.active_connections._multiprocess_mode == "livesum"
    assert m.in_flight_requests._multiprocess_mode == "livesum"
    assert m.rate_limiter_buckets._multiprocess_mode == "livemostrecent"
    assert m.build_info._multiprocess_mode == "max"


def test_dead_workers_live_gauges_are_reaped(tmp_path: Path) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, check=True)  # fmt: skip
    dead_pid = int(dead.stdout)
    me = os.getpid()
    names = [
        f"gauge_livesum_{dead_pid}.db",
        f"gauge_livemostrecent_{dead_pid}.db",
        f"gauge_livesum_{me}.db",
        f"counter_{dead_pid}.db",
        f"gauge_max_{dead_pid}.db",
        f"completions_{dead_pid}.flag",  # its record flag: a later process may get its pid
        f"completions_{me}.flag",
    ]
    for name in names:
        (tmp_path / name).write_bytes(b"")
    assert reap_dead_workers(str(tmp_path)) == [dead_pid]
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == sorted([f"gauge_livesum_{me}.db", f"counter_{dead_pid}.db",
                           f"gauge_max_{dead_pid}.db", f"completions_{me}.flag"])  # fmt: skip


# -- repeated upstream failures: one alert at most once a minute ----------------------------------


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_alarm_constants_are_the_spec() -> None:
    assert (FAILURE_THRESHOLD, FAILURE_WINDOW_SECS, ALERT_INTERVAL_SECS) == (5, 300.0, 60.0)


def test_alarm_fires_at_the_fifth_failure_within_the_window() -> None:
    clock = Clock()
    alarm = FailureAlarm(clock=clock)
    fired = []
    for _ in range(5):
        fired.append(alarm.record())
        clock.t += 70  # 5 failures over 280 s: inside 5 minutes
    assert fired == [False, False, False, False, True]


def test_alarm_ignores_failures_spread_wider_than_the_window() -> None:
    clock = Clock()
    alarm = FailureAlarm(clock=clock)
    for _ in range(20):
        assert alarm.record() is False
        clock.t += 76  # any 5 consecutive failures span 304 s > 300 s


def test_alarm_repeats_at_most_once_a_minute() -> None:
    clock = Clock()
    alarm = FailureAlarm(clock=clock)
    times = []
    for _ in range(200):  # a failure every second for 200 s
        if alarm.record():
            times.append(clock.t - 1000)
        clock.t += 1
    assert times == [4, 64, 124, 184]


# -- logging: context, scrubbing ------------------------------------------------------------------


@pytest.fixture
def json_logs() -> Any:
    stream = io.StringIO()
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    configure_logging("json", "debug")
    root.handlers[0].setStream(stream)  # type: ignore[attr-defined]
    yield stream
    root.handlers[:], _ = saved
    root.setLevel(saved[1])
    structlog.reset_defaults()
    structlog.contextvars.clear_contextvars()
    set_request_secret()


def _lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(x) for x in stream.getvalue().splitlines() if x.strip()]


def test_start_clears_the_previous_requests_context(json_logs: io.StringIO) -> None:
    structlog.contextvars.bind_contextvars(model="left-over", request_id="old")
    req = SimpleNamespace(headers={"x-request-id": "new-rid"}, ctx=SimpleNamespace())
    lifecycle.start(req)  # type: ignore[arg-type]
    assert structlog.contextvars.get_contextvars() == {"request_id": "new-rid"}
    structlog.get_logger("t").info("hello")
    (rec,) = _lines(json_logs)
    assert rec["request_id"] == "new-rid" and "model" not in rec


def test_known_credentials_are_scrubbed_from_structlog_and_stdlib_records(
    json_logs: io.StringIO,
) -> None:
    redact("sk-operator-default-1")
    req = SimpleNamespace(
        headers={"authorization": "Bearer sk-client-abc-2", "x-api-key": "sk-other-3"},
        ctx=SimpleNamespace(),
    )
    lifecycle.start(req)  # type: ignore[arg-type]
    structlog.get_logger("t").warning("x", detail={"h": ["Bearer sk-client-abc-2"]})
    logging.getLogger("httpcore.http11").debug("headers=%s", "sk-operator-default-1 sk-other-3")
    out = json_logs.getvalue()
    for secret in ("sk-operator-default-1", "sk-client-abc-2", "sk-other-3"):
        assert secret not in out
    assert out.count("[redacted]") == 3
    # the next request's context forgets the previous client's key, not the operator's
    lifecycle.start(SimpleNamespace(headers={}, ctx=SimpleNamespace()))  # type: ignore[arg-type]
    logging.getLogger("x").warning("sk-client-abc-2 sk-operator-default-1")
    assert "sk-client-abc-2 [redacted]" in _lines(json_logs)[-1]["event"]


def test_alarm_state_is_shared_by_every_worker(tmp_path: Path) -> None:
    """Five failures spread over three workers alert once, in one worker only."""
    t = [1000.0]
    path = str(tmp_path / "failure-alarm.json")
    workers = [FailureAlarm(clock=lambda: t[0], state_path=path) for _ in range(3)]
    fired = []
    for i in range(5):
        t[0] += 1
        fired.append(workers[i % 3].record())
    assert fired == [False, False, False, False, True]
    t[0] += 10  # within the minute: no worker repeats it
    assert [w.record() for w in workers] == [False, False, False]
    t[0] += 61
    assert workers[1].record() is True
