"""Every Prometheus metric of the router, declared in one place (METRICS.md documents them).

The five metrics of the original design keep their exact names, types and labels; the rest are
for LLM operators. Label values come from closed sets: routes from the route table (or
`unmatched`), methods from a fixed list (or `OTHER`), `error_type` from `errors.ERROR_TYPES`,
models from the profile's known models (or `other`).

With several Sanic workers, prometheus-client's multiprocess mode is used
(`PROMETHEUS_MULTIPROC_DIR`, set by the CLI before any worker starts): counters and histograms
are summed; `active_connections` and in-flight requests are `livesum` (dead workers drop out);
`rate_limiter_buckets` is `livemostrecent` (the limiter's count is instance-wide, and the worker
that answers a scrape sets it just before), `build_info` is `max`. A worker that stops cleanly
marks itself dead; a worker that was killed is detected at the next scrape (`reap_dead_workers`).
"""

from __future__ import annotations

import os
import platform
import re
import struct
from bisect import bisect_left
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    values,
)
from prometheus_client import multiprocess as mp

from .. import __version__

LATENCY_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
OVERHEAD_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1)
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def method_label(method: str) -> str:
    return method if method in METHODS else "OTHER"


_forked = False  # set in a child forked from this process: the fast path steps aside


def _after_fork() -> None:
    global _forked
    _forked = True


os.register_at_fork(after_in_child=_after_fork)
_pack_two_doubles = struct.Struct("dd").pack


def _fast_multiprocess_value(base: Any) -> Any:
    """prometheus-client's multiprocess value (`base`, the class its `ValueClass` already is, so
    one set of per-process files serves every value) with a cheaper `inc`.

    Its own `inc` takes a process-wide lock, calls `getpid()` to notice a fork and looks the
    value's offset up in the file's index on every call; a request makes about eleven of them.
    Here `inc` writes the 16 bytes (value, timestamp 0) at the offset found once, with the same
    whole-slice assignment prometheus-client uses (never a partial value for a concurrent
    reader), and the mapping read at call time (the file may have been grown and re-mapped).
    Without the lock: a worker writes metrics from its event loop thread only. After a fork the
    child uses the original `inc` (its pid check then moves it to files of its own)."""

    class FastMmapedValue(base):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._pos = self._file._positions[self._key]

        def inc(self, amount: float) -> None:
            if _forked:
                super().inc(amount)
                return
            v: float = self._value + amount  # type: ignore[has-type]
            self._value = v
            self._timestamp = 0.0
            pos = self._pos
            self._file._m[pos : pos + 16] = _pack_two_doubles(v, 0.0)

    return FastMmapedValue


def use_fast_values() -> None:
    """Called before the first metric is made; nothing changes outside multiprocess mode."""
    current = values.ValueClass
    if getattr(current, "_multiprocess", False) and not getattr(current, "fast_inc", False):
        fast = _fast_multiprocess_value(current)
        fast.fast_inc = True
        values.ValueClass = fast


class Children(dict[Any, Any]):
    """`metric.labels(...)` memoised per label values: `children[route]`, `children[a, b]`.

    prometheus-client's `labels()` validates, stringifies and takes a lock on every call; the
    label values here come from closed sets, so this map stays as small as the series count.
    """

    __slots__ = ("_metric",)

    def __init__(self, metric: Any) -> None:
        super().__init__()
        self._metric = metric

    def __missing__(self, key: Any) -> Any:
        child = self._metric.labels(*(key if isinstance(key, tuple) else (key,)))
        writer = self[key] = (
            _HistogramWriter(child) if isinstance(child, Histogram) else _CounterWriter(child)
        )
        return writer


class _CounterWriter:
    """`inc` of a labelled counter child straight on its value: what `Counter.inc` does (a
    negative amount refused) minus the per-call checks of a child that is known observable."""

    __slots__ = ("_value",)

    def __init__(self, child: Any) -> None:
        self._value = child._value

    def inc(self, amount: float = 1) -> None:
        if amount < 0:
            raise ValueError("Counters can only be incremented by non-negative amounts.")
        self._value.inc(amount)


class _HistogramWriter:
    """`observe` of a labelled histogram child: the sum, then the first bucket whose upper bound
    is >= the amount (a bisection over the bounds, the last one +Inf), as `Histogram.observe`."""

    __slots__ = ("_bounds", "_buckets", "_sum")

    def __init__(self, child: Any) -> None:
        self._sum = child._sum
        self._buckets = child._buckets
        self._bounds = child._upper_bounds

    def observe(self, amount: float) -> None:
        self._sum.inc(amount)
        self._buckets[bisect_left(self._bounds, amount)].inc(1)


class Metrics:
    """All metric objects of one worker, registered on `registry`."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        disable_created_metrics()  # *_created series would double the series count for nothing
        use_fast_values()
        self.registry = registry or CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests_total = Counter(
            "requests_total",
            "Requests answered, by route pattern, method and the status the client got",
            ["route", "method", "status"],
            registry=r,
        )
        self.upstream_errors_total = Counter(
            "upstream_errors_total",
            "Upstream failures by kind (connect_error, io_error, tls_error, timeout, "
            "protocol_error, json_error, upstream_error, stream_error)",
            ["error_type"],
            registry=r,
        )
        self.request_latency_seconds = Histogram(
            "request_latency_seconds",
            "Time from request head to the last byte of the response",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.active_connections = Gauge(
            "active_connections",
            "Open client TCP connections",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.rate_limiter_buckets = Gauge(
            "rate_limiter_buckets",
            "Live rate-limit buckets (buckets that refilled completely are forgotten)",
            registry=r,
            multiprocess_mode="livemostrecent",
        )
        # Beyond the original design.
        self.upstream_latency_seconds = Histogram(
            "upstream_latency_seconds",
            "Time from sending upstream to the upstream's last byte",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.stream_first_byte_seconds = Histogram(
            "stream_first_byte_seconds",
            "Time from the request head to the first upstream event relayed to the client",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.router_overhead_seconds = Histogram(
            "router_overhead_seconds",
            "Request latency minus upstream latency: time spent in the router itself",
            ["route"],
            buckets=OVERHEAD_BUCKETS,
            registry=r,
        )
        self.tokens_total = Counter(
            "tokens_total",
            "Tokens reported in upstream usage, by type (prompt, completion) and model",
            ["type", "model"],
            registry=r,
        )
        self.in_flight_requests = Gauge(
            "in_flight_requests",
            "Requests being handled right now",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.config_reloads_total = Counter(
            "config_reloads_total",
            "Profile reloads that were applied",
            registry=r,
        )
        self.config_reload_failures_total = Counter(
            "config_reload_failures_total",
            "Profile edits rejected by validation (the last good config stays active)",
            registry=r,
        )
        self.rate_limiter_backend_errors_total = Counter(
            "rate_limiter_backend_errors_total",
            "Rate-limit decisions the backend could not make (Redis unreachable)",
            registry=r,
        )
        self.translations_total = Counter(
            "translations_total",
            "Requests on a route translated between API formats, by direction "
            "(anthropic_to_openai, openai_to_anthropic, responses_to_openai, "
            "responses_to_anthropic)",
            ["direction"],
            registry=r,
        )
        self.translation_dropped_fields_total = Counter(
            "translation_dropped_fields_total",
            "Request fields a format translation dropped because the upstream's format has no "
            "such hint (context_management, cache_control, ...; a closed set)",
            ["field"],
            registry=r,
        )
        self.build_info = Gauge(
            "build_info",
            "Build information; the value is always 1",
            ["version", "python"],
            registry=r,
            multiprocess_mode="max",
        )
        self.build_info.labels(__version__, platform.python_version()).set(1)
        # The in-flight gauge's value, moved by +1/-1 per request (Gauge.inc/dec minus checks).
        self.in_flight = self.in_flight_requests._value
        # The children a request writes to, by label values (lifecycle.finish).
        self.requests_by = Children(self.requests_total)  # [route, method, status]
        self.request_latency_by = Children(self.request_latency_seconds)  # [route]
        self.upstream_errors_by = Children(self.upstream_errors_total)  # [error_type]
        self.upstream_latency_by = Children(self.upstream_latency_seconds)  # [route]
        self.router_overhead_by = Children(self.router_overhead_seconds)  # [route]
        self.stream_first_byte_by = Children(self.stream_first_byte_seconds)  # [route]
        self.translations_by = Children(self.translations_total)  # [direction]
        self.dropped_fields_by = Children(self.translation_dropped_fields_total)  # [field]
        self.tokens_by = Children(self.tokens_total)  # [type, model]

    def on_reload(self, result: str) -> None:
        if result == "success":
            self.config_reloads_total.inc()
        else:
            self.config_reload_failures_total.inc()


def exposition_registry(local: CollectorRegistry) -> CollectorRegistry:
    """What /metrics serves: the sum over all live workers in multiprocess mode."""
    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not path:
        return local
    reap_dead_workers(path)
    registry = CollectorRegistry()
    mp.MultiProcessCollector(registry, path=path)
    return registry


_LIVE_FILE = re.compile(r"^gauge_live\w+?_(\d+)\.db$")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def reap_dead_workers(path: str) -> list[int]:
    """Drop the live gauges of workers that died without `after_server_stop` (SIGKILL, OOM):
    otherwise their last `active_connections` / in-flight values would be summed forever."""
    dead = set()
    for name in os.listdir(path):
        m = _LIVE_FILE.match(name)
        if m and not _alive(int(m.group(1))):
            dead.add(int(m.group(1)))
    for pid in dead:
        mp.mark_process_dead(pid, path)
    return sorted(dead)


def worker_exited(pid: int) -> None:
    """Drop a stopped worker's live gauges (counters stay: they must never go backwards)."""
    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if path:
        mp.mark_process_dead(pid, path)
