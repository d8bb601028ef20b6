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
A worker's file that exists but is still empty is left out of a scrape (`SettledFiles`).

A request's writes go through label children looked up once per label values (`Children`, the
`Metrics.*_by` maps); with the `metrics` fast path (API_ROUTER_FAST_PATHS) they reach the
values more directly (service.observability.metrics_fast).
"""

from __future__ import annotations

import contextlib
import os
import platform
import re
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
)
from prometheus_client import multiprocess as mp

from .. import __version__
from ..config.model import TRANSLATION_DIRECTIONS
from ..errors import ERROR_TYPES
from ..ratelimit.tokens import SCOPES as TOKEN_SCOPES
from . import RECORD_FLAG, metrics_fast

LATENCY_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
OVERHEAD_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1)
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def method_label(method: str) -> str:
    return method if method in METHODS else "OTHER"


class Children(dict[Any, Any]):
    """`metric.labels(...)` memoised per label values: `children[route]`, `children[a, b]`.

    prometheus-client's `labels()` validates, stringifies and takes a lock on every call; the
    label values here come from closed sets, so this map stays as small as the series count.
    With `fast` (the `metrics` fast path) each child is wrapped in its writer
    (`metrics_fast.writer`); else it is the library's child itself.
    """

    __slots__ = ("_fast", "_metric")

    def __init__(self, metric: Any, fast: bool = True) -> None:
        super().__init__()
        self._metric = metric
        self._fast = fast

    def __missing__(self, key: Any) -> Any:
        child = self._metric.labels(*(key if isinstance(key, tuple) else (key,)))
        out = self[key] = metrics_fast.writer(child) if self._fast else child
        return out


class Metrics:
    """All metric objects of one worker, registered on `registry`. `fast`: the `metrics` fast
    path (service.observability.metrics_fast), applied here and only here."""

    def __init__(self, registry: CollectorRegistry | None = None, fast: bool = True) -> None:
        disable_created_metrics()  # *_created series would double the series count for nothing
        if fast:
            metrics_fast.use_fast_values()
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
        self.connections_refused_total = Counter(
            "connections_refused_total",
            "Client connections answered 503 and closed unread: the worker's connection cap "
            "(API_ROUTER_MAX_CONNECTIONS) was reached",
            registry=r,
        )
        self.rate_limiter_backend_errors_total = Counter(
            "rate_limiter_backend_errors_total",
            "Rate-limit decisions the backend could not make (Redis unreachable)",
            registry=r,
        )
        # Token limits (SPEC §13): no per-key labels.
        self.tokens_reserved_total = Counter(
            "tokens_reserved_total",
            "Tokens reserved by requests under a token limit or budget, before they were sent "
            "(their estimate)",
            registry=r,
        )
        self.tokens_reconciled_total = Counter(
            "tokens_reconciled_total",
            "Tokens moved when a request's usage replaced its reservation: refund (given back: "
            "it used less, or nothing was billed) or charge (taken: it used more)",
            ["direction"],
            registry=r,
        )
        self.token_limit_rejections_total = Counter(
            "token_limit_rejections_total",
            "Requests a token limit refused (mode enforce: answered 429, or 400 for "
            "request_too_large) or would have refused (mode shadow: served), by scope (minute, "
            "daily, monthly, request_too_large)",
            ["scope", "mode"],
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
        # Routing files (SPEC §11): `upstream` values are the file's upstream names.
        self.upstream_attempts_total = Counter(
            "upstream_attempts_total",
            "Attempts sent to an upstream of a routing file, by upstream and outcome (ok, "
            "client_error, rate_limited, server_error, or the failure's error_type)",
            ["upstream", "outcome"],
            registry=r,
        )
        self.upstream_attempt_seconds = Histogram(
            "upstream_attempt_seconds",
            "Time of one attempt to an upstream of a routing file, to its response head "
            "(or its failure)",
            ["upstream"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.fallbacks_total = Counter(
            "fallbacks_total",
            "Requests moved from one upstream to another of a routing file, by reason "
            "(rate_limited, server_error, error, context_length)",
            ["from", "to", "reason"],
            registry=r,
        )
        self.stream_malformed_events_total = Counter(
            "stream_malformed_events_total",
            "Upstream stream events dropped because their JSON data was cut short or garbled",
            registry=r,
        )
        self.upstream_ejected = Gauge(
            "upstream_ejected",
            "1 while an upstream of a routing file is ejected after repeated failures "
            "(until a probe succeeds), else 0",
            ["upstream"],
            registry=r,
            # Each worker reads the shared table when it serves a scrape: the latest read wins.
            multiprocess_mode="livemostrecent",
        )
        self.build_info = Gauge(
            "build_info",
            "Build information; the value is always 1",
            ["version", "python"],
            registry=r,
            multiprocess_mode="max",
        )
        self.build_info.labels(__version__, platform.python_version()).set(1)
        # Every value of a closed set that an alert or a rate() reads exported as 0 from the
        # start: a missing series would hide the fact that nothing failed (Prometheus advises
        # initialising known label values).
        for error_type in ERROR_TYPES:
            self.upstream_errors_total.labels(error_type)
        for direction in TRANSLATION_DIRECTIONS:
            self.translations_total.labels(direction)
        for moved in ("refund", "charge"):
            self.tokens_reconciled_total.labels(moved)
        for scope in TOKEN_SCOPES:
            for mode in ("enforce", "shadow"):
                self.token_limit_rejections_total.labels(scope, mode)
        # The in-flight gauge, moved by +1/-1 per request (its value itself on the fast path).
        self.in_flight: Any = (
            metrics_fast.gauge_value(self.in_flight_requests) if fast else self.in_flight_requests
        )
        # The children a request writes to, by label values (lifecycle.finish).
        self.requests_by = Children(self.requests_total, fast)  # [route, method, status]
        self.request_latency_by = Children(self.request_latency_seconds, fast)  # [route]
        self.upstream_errors_by = Children(self.upstream_errors_total, fast)  # [error_type]
        self.upstream_latency_by = Children(self.upstream_latency_seconds, fast)  # [route]
        self.router_overhead_by = Children(self.router_overhead_seconds, fast)  # [route]
        self.stream_first_byte_by = Children(self.stream_first_byte_seconds, fast)  # [route]
        self.translations_by = Children(self.translations_total, fast)  # [direction]
        self.dropped_fields_by = Children(self.translation_dropped_fields_total, fast)  # [field]
        self.tokens_by = Children(self.tokens_total, fast)  # [type, model]
        self.attempts_by = Children(self.upstream_attempts_total, fast)  # [upstream, outcome]
        self.attempt_seconds_by = Children(self.upstream_attempt_seconds, fast)  # [upstream]
        self.fallbacks_by = Children(self.fallbacks_total, fast)  # [from, to, reason]
        self.tokens_reconciled_by = Children(self.tokens_reconciled_total, fast)  # [direction]
        # [scope, mode]
        self.token_rejections_by = Children(self.token_limit_rejections_total, fast)

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
    SettledFiles(registry, path=path)
    return registry


class SettledFiles(mp.MultiProcessCollector):
    """The library's collector without the files that hold nothing yet.

    prometheus-client creates a process's file empty and gives it its size a moment later; read
    in between, the whole collection fails (`struct.error`) and /metrics answers 500. That
    happens while a worker starts, and for good when a worker is killed in that moment, as its
    file then stays empty (prometheus/client_python#1199, open in 0.26.0). An empty file has no
    value to lose: it is skipped. A file only grows, so one that has a size when looked at still
    has it when the library reads it."""

    def __init__(self, registry: CollectorRegistry, path: str) -> None:
        super().__init__(registry, path=path)
        self._dir = path

    def collect(self) -> Any:
        files = []
        # the library's glob("*.db"): no dot-files
        with os.scandir(self._dir) as entries:
            found = [e for e in entries if e.name.endswith(".db") and not e.name.startswith(".")]
        for entry in found:
            try:
                if entry.stat().st_size > 0:
                    files.append(entry.path)
            except FileNotFoundError:  # a dead worker's live gauges, just removed
                continue
        return self.merge(files, accumulate=True)


_LIVE_FILE = re.compile(r"^gauge_live\w+?_(\d+)\.db$")


def process_alive(pid: int) -> bool:
    """Whether `pid` still runs. A killed worker stays a zombie until Sanic's manager reaps it
    (`kill(pid, 0)` still succeeds then): on Linux its /proc state says so at once."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except FileNotFoundError:
        return False
    except OSError:
        stat = b""
    if stat:
        state = stat[stat.rfind(b")") + 2 : stat.rfind(b")") + 3]
        return state not in (b"Z", b"X")
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def reap_dead_workers(path: str) -> list[int]:
    """Drop the live gauges of workers that died without `after_server_stop` (SIGKILL, OOM):
    otherwise their last `active_connections` / in-flight values would be summed forever; and
    their record flags (a later process with the same pid is not that worker)."""
    dead = set()
    for name in os.listdir(path):
        m = _LIVE_FILE.match(name)
        if m and not process_alive(int(m.group(1))):
            dead.add(int(m.group(1)))
    for pid in dead:
        mp.mark_process_dead(pid, path)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(path, RECORD_FLAG.format(pid=pid)))
    return sorted(dead)


def worker_exited(pid: int) -> None:
    """Drop a stopped worker's live gauges (counters stay: they must never go backwards)."""
    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if path:
        mp.mark_process_dead(pid, path)
