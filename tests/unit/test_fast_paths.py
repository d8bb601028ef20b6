"""API_ROUTER_FAST_PATHS: how it is read, and each fast path's switch where it is applied (off:
the library's own objects do the job, and the result is the same)."""

from __future__ import annotations

import asyncio
import dataclasses
import io
import json
import logging
from pathlib import Path
from typing import Any

import httpx
import pytest
import structlog
from prometheus_client import CollectorRegistry, Counter, Histogram

from service.observability import logging as obs_logging
from service.observability import metrics_fast
from service.observability.logging import configure_logging, emit
from service.observability.metrics import Metrics
from service.proxy import upstream
from service.proxy.upstream import UpstreamClient, _transport
from service.settings import FAST_PATH_NAMES, FastPaths, Settings, SettingsError

ALL_OFF = FastPaths(**dict.fromkeys(FAST_PATH_NAMES, False))


@pytest.mark.parametrize("raw", [None, "", "all", "ALL", "1", " on ", "true"])
def test_all_fast_paths_are_on_by_default_and_with_all(raw: str | None) -> None:
    assert FastPaths.parse(raw) == FastPaths()
    assert str(FastPaths.parse(raw)) == "all"


@pytest.mark.parametrize("raw", ["0", "none", "off", "false", "no"])
def test_zero_turns_every_fast_path_off(raw: str) -> None:
    assert FastPaths.parse(raw) == ALL_OFF
    assert str(ALL_OFF) == "0"


def test_a_list_keeps_only_the_named_fast_paths_on() -> None:
    chosen = FastPaths.parse("dispatch, request")
    assert chosen == dataclasses.replace(ALL_OFF, dispatch=True, request=True)
    assert str(chosen) == "dispatch,request"
    for name in FAST_PATH_NAMES:  # each one alone, as bench/fastpath_cost.py selects them
        others = ",".join(n for n in FAST_PATH_NAMES if n != name)
        assert getattr(FastPaths.parse(others), name) is False
        assert FastPaths.parse(str(FastPaths.parse(others))) == FastPaths.parse(others)


@pytest.mark.parametrize("raw", ["dispatch,turbo", ",", "2"])
def test_an_unknown_fast_path_is_a_settings_error_naming_the_variable(raw: str) -> None:
    with pytest.raises(SettingsError, match="API_ROUTER_FAST_PATHS"):
        FastPaths.parse(raw)


def test_settings_read_the_variable_once(tmp_path: Path) -> None:
    s = Settings.from_env({"API_ROUTER_FAST_PATHS": "metrics"}, profile_path=tmp_path / "p.json")
    assert s.fast_paths == dataclasses.replace(ALL_OFF, metrics=True)
    assert Settings.from_env({}, profile_path=tmp_path / "p.json").fast_paths == FastPaths()


# -- metrics ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("raw", "want"), [(None, 20_000), ("0", 0), ("100000", 100_000)])
def test_the_gc_threshold_setting(tmp_path: Path, raw: str | None, want: int) -> None:
    env = {} if raw is None else {"API_ROUTER_GC_THRESHOLD": raw}
    assert Settings.from_env(env, profile_path=tmp_path / "p.json").gc_threshold == want


@pytest.mark.parametrize("raw", ["-1", "many", "1e5"])
def test_a_bad_gc_threshold_is_a_settings_error_naming_the_variable(
    tmp_path: Path, raw: str
) -> None:
    with pytest.raises(SettingsError, match="API_ROUTER_GC_THRESHOLD"):
        Settings.from_env({"API_ROUTER_GC_THRESHOLD": raw}, profile_path=tmp_path / "p.json")


def test_metrics_off_write_through_the_librarys_own_children() -> None:
    fast = Metrics(CollectorRegistry(), fast=True)
    stock = Metrics(CollectorRegistry(), fast=False)
    assert isinstance(fast.requests_by["/r", "GET", 200], metrics_fast.CounterWriter)
    assert isinstance(fast.request_latency_by["/r"], metrics_fast.HistogramWriter)
    assert isinstance(stock.requests_by["/r", "GET", 200], Counter)
    assert isinstance(stock.request_latency_by["/r"], Histogram)
    assert stock.in_flight is stock.in_flight_requests
    for m in (fast, stock):
        m.requests_by["/r", "GET", 200].inc()
        m.request_latency_by["/r"].observe(0.2)
        m.in_flight.inc(1)
        m.in_flight.inc(-1)
        m.in_flight.inc(1)

    def samples(m: Metrics) -> list[tuple[str, str, float]]:
        return sorted(
            (s.name, json.dumps(s.labels, sort_keys=True), s.value)
            for metric in m.registry.collect()
            for s in metric.samples
            if metric.name in ("requests", "request_latency_seconds", "in_flight_requests")
        )

    assert samples(fast) == samples(stock)
    assert ("in_flight_requests", "{}", 1.0) in samples(stock)
    assert len(samples(stock)) > 10  # the counter, and the histogram's buckets, sum and count


# -- the upstream request ---------------------------------------------------------------------


def test_request_off_builds_with_httpx_own_constructor(monkeypatch: pytest.MonkeyPatch) -> None:
    timeout = httpx.Timeout(connect=2.0, read=30.0, write=30.0, pool=5.0)
    args = ("POST", "http://127.0.0.1:9/v1/chat/completions")
    kw: dict[str, Any] = {"content": b"{}", "headers": [("A", "1")], "timeout": timeout}
    fast = UpstreamClient(_transport("h1")).build_request(*args, **kw)

    def refuse(*_: object) -> None:
        raise AssertionError("the fast path ran")

    monkeypatch.setattr(upstream, "bytes_request", refuse)
    stock_client = UpstreamClient(_transport("h1"), fast_request=False)
    stock = stock_client.build_request(*args, **kw)
    assert (stock.method, stock.url, stock.headers.raw, stock.content, stock.extensions) == (
        fast.method,
        fast.url,
        fast.headers.raw,
        fast.content,
        fast.extensions,
    )
    asyncio.run(stock_client.aclose())


# -- the completion line ----------------------------------------------------------------------


def _completion_line(fast: bool) -> dict[str, Any]:
    configure_logging("json", "info", fast=fast)
    stream = io.StringIO()
    logging.getLogger().handlers[0].setStream(stream)  # type: ignore[attr-defined]
    structlog.contextvars.bind_contextvars(request_id="rid-1")
    fields = {"route": "/v1/chat/completions", "status_code": 200, "latency_ms": 1.5}
    emit(structlog.get_logger("api_router.access"), "api_router.access", logging.INFO,
         "request_completed", fields, "rid-1")  # fmt: skip
    (line,) = stream.getvalue().splitlines()
    out: dict[str, Any] = json.loads(line)
    return out


@pytest.mark.usefixtures("restore_logging")
def test_logging_off_writes_the_same_line_through_structlogs_own_chain(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fast = _completion_line(fast=True)

    def refuse(*_: object) -> Any:
        raise AssertionError("the fast path ran")

    monkeypatch.setattr(obs_logging, "json_line", refuse)
    monkeypatch.setattr(obs_logging, "add_timestamp", refuse)
    stock = _completion_line(fast=False)
    assert list(stock) == list(fast)
    assert stock.pop("timestamp")[:13] == fast.pop("timestamp")[:13]
    assert stock == fast
