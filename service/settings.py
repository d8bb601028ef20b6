"""Process settings: CLI arguments over environment variables over defaults, validated once.

`Settings` is frozen and picklable: the primary process builds it and hands it to every Sanic
worker through the app factory. Secrets are excluded from its repr.

`FastPaths` (`API_ROUTER_FAST_PATHS`) says which of the router's bypasses of its libraries'
internals are on: each is applied in one place from this value, read once at start (the list and
what each buys: bench/README.md, "Fast paths").
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from .proxy.headers import FORWARDED_MODES

DEFAULT_MAX_BODY_BYTES = 32 * 1024 * 1024
DEFAULT_MAX_HEADER_BYTES = 8192
DEFAULT_GC_THRESHOLD = 20000  # 0: Python's own (700); see docs/configuration.md
MAX_HEADER_BYTES_CEILING = 16384  # Sanic's own ceiling for a request head


# The standard library's other names for two levels (logging.WARN, logging.FATAL).
_LEVEL_ALIASES = {"warn": "warning", "fatal": "critical"}


class SettingsError(ValueError):
    """A bad setting; the message is one line that names it."""


FAST_PATHS_ENV = "API_ROUTER_FAST_PATHS"
# Every fast path, by the name API_ROUTER_FAST_PATHS selects it with.
FAST_PATH_NAMES = ("dispatch", "metrics", "logging", "request", "stream", "head", "batch")
_ALL = ("", "1", "all", "on", "true", "yes")
_NONE = ("0", "none", "off", "false", "no")


@dataclass(frozen=True)
class FastPaths:
    """Which fast paths are on. Off, the library's own code does the same job:

    - `dispatch`: Sanic's signal router dispatches the hot lifecycle signals
      (service.server.dispatch);
    - `metrics`: prometheus-client's own multiprocess value class and label children
      (service.observability.metrics_fast);
    - `logging`: structlog's own processor chain writes the completion line, with its own
      `TimeStamper` (service.observability.logging_fast);
    - `request`: httpx's own `Request` constructor builds the upstream request, httpx's
      `Headers` the response's headers, `aiter_raw` and `aclose` read a whole answer
      (service.proxy.upstream_fast);
    - `stream`: the SSE relay's task and Sanic's `response.send` carry every upstream piece
      (on: written from the upstream connection's callback; service.server.stream_write);
    - `head`: Sanic's own sanitiser walks every response header's name and value
      (service.server.response_head);
    - `batch`: each finished request's metrics, completion line and failure alarm are written
      at once, in the request's own call (on: together with the other requests finished in the
      same pass of the event loop, at its end; service.observability.completions).

    `API_ROUTER_FAST_PATHS`: `all` (the default) or `1`; `0` or `none`; or the names of those to
    keep on, comma-separated (`dispatch,metrics`), for measuring one against the others.
    """

    dispatch: bool = True
    metrics: bool = True
    logging: bool = True
    request: bool = True
    stream: bool = True
    head: bool = True
    batch: bool = True

    @classmethod
    def parse(cls, raw: str | None) -> FastPaths:
        value = (raw or "").strip().lower()
        if value in _ALL:
            return cls()
        if value in _NONE:
            return cls(**dict.fromkeys(FAST_PATH_NAMES, False))
        names = {n.strip() for n in value.split(",")} - {""}
        unknown = sorted(names - set(FAST_PATH_NAMES))
        if unknown or not names:
            raise SettingsError(
                f"{FAST_PATHS_ENV}={raw!r} must be all, 0, or names among "
                f"{', '.join(FAST_PATH_NAMES)}"
            )
        return cls(**{n: n in names for n in FAST_PATH_NAMES})

    def __str__(self) -> str:
        on = [n for n in FAST_PATH_NAMES if getattr(self, n)]
        if len(on) == len(FAST_PATH_NAMES):
            return "all"
        return ",".join(on) or "0"


def _int(env: Mapping[str, str], name: str, default: int, lo: int, hi: int) -> int:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw.strip())
    except ValueError:
        raise SettingsError(f"{name}={raw!r} is not an integer") from None
    if not lo <= value <= hi:
        raise SettingsError(f"{name}={value} is out of range ({lo}..{hi})")
    return value


# The pyreqwest transport's HTTP/2 (service.proxy._pyreqwest), checked in the main process too.
HTTP2_ENV = "API_ROUTER_UPSTREAM_HTTP2"
HTTP2_MODES = ("off", "on", "prior-knowledge")


def http2_setting(env: Mapping[str, str]) -> str:
    """`API_ROUTER_UPSTREAM_HTTP2`: off (the default), on (ALPN) or prior-knowledge."""
    raw = env.get(HTTP2_ENV, "").strip().lower()
    if raw in ("", "0", "false", "no", "off"):
        return "off"
    if raw in ("1", "true", "yes", "on"):
        return "on"
    if raw == "prior-knowledge":
        return raw
    raise SettingsError(f"{HTTP2_ENV}={raw!r} must be one of {', '.join(HTTP2_MODES)}")


def _float(env: Mapping[str, str], name: str, default: float, lo: float) -> float:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = float(raw.strip())
    except ValueError:
        raise SettingsError(f"{name}={raw!r} is not a number") from None
    if not math.isfinite(value):
        raise SettingsError(f"{name}={raw!r} is not a finite number")
    if value < lo:
        raise SettingsError(f"{name}={value} must be >= {lo}")
    return value


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    v = raw.strip().lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off"):
        return False
    raise SettingsError(f"{name}={raw!r} is not a boolean (true/false)")


def parse_port(raw: str, source: str) -> int:
    try:
        port = int(raw)
    except ValueError:
        raise SettingsError(f"invalid port {raw!r} ({source}): not an integer") from None
    if not 1 <= port <= 65535:
        raise SettingsError(f"invalid port {port} ({source}): must be 1..65535")
    return port


@dataclass(frozen=True)
class Settings:
    profile_path: Path
    host: str = "0.0.0.0"
    port: int = 8000
    workers: int = 1
    default_api_key: str | None = field(default=None, repr=False)
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    log_format: str = "console"
    # A LOG_FORMAT that is neither json nor console (SPEC §9: console lines then), kept for the
    # start-up warning that names it: a typo of `json` must not pass unseen.
    log_format_unknown: str | None = None
    log_level: str = "info"
    rate_limit_rpm: float = 0.0
    rate_limit_burst: int | None = None
    rate_limit_backend: str | None = field(default=None, repr=False)  # may hold a password
    rate_limit_fail_closed: bool = False
    # The token limit and budgets of routes whose config sets none (SPEC §13): 0 = none.
    token_limit_tpm: int = 0
    token_limit_burst: int = 0  # 0: tokensPerMinute
    token_limit_enforce: bool = True
    token_budget_daily: int = 0
    token_budget_monthly: int = 0
    metrics_enabled: bool = True
    # OpenTelemetry traces (the `otel` extra; the OTEL_* variables configure the export).
    tracing: bool = False
    access_log_enabled: bool = True
    drain_secs: float = 30.0
    multiproc_dir: str | None = None
    # Client-side limits (service.connlimits; docs/security.md).
    max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES
    header_timeout_secs: float = 10.0
    body_timeout_secs: float = 120.0
    keep_alive_secs: float = 75.0
    max_connections: int = 500
    # The listening socket's accept queue (the kernel caps it at net.core.somaxconn).
    backlog: int = 4096
    # Upstream side (service.proxy.upstream / sse).
    upstream_max_connections: int = 1024
    upstream_pool_wait_secs: float = 5.0
    stream_idle_secs: float = 300.0
    stream_max_secs: float = 3600.0
    # Shared deployments: a file of hashed client keys (service.access); None = open router.
    access_keys_file: Path | None = None
    # Its hashes as the CLI read them at start (service.access.from_settings): every worker,
    # one restarted later included, admits the same keys whatever became of the file since.
    access_key_hashes: frozenset[str] | None = None
    # The client's Forwarded / X-Forwarded-* headers: replace (default), keep or drop
    # (service.proxy.headers).
    forwarded_headers: str = "replace"
    # Browser clients (service.cors): "" off, "*" any origin, or a comma-separated list.
    cors_origins: str = ""
    # Which bypasses of library internals are on (FastPaths; API_ROUTER_FAST_PATHS).
    fast_paths: FastPaths = field(default_factory=FastPaths)
    # The cyclic GC's first-generation threshold in each worker (gc.set_threshold; 0: Python's
    # own, 700). Higher than Python's: with many requests in flight their live objects alone
    # would trigger a collection every few requests; what waits longer is cyclic garbage, which
    # the request path no longer makes (docs/configuration.md; bench/README.md, "Garbage
    # collection").
    gc_threshold: int = DEFAULT_GC_THRESHOLD

    @classmethod
    def from_env(cls, env: Mapping[str, str], **given: object) -> Settings:
        fmt = env.get("LOG_FORMAT", "console").strip().lower() or "console"
        unknown_fmt = None
        if fmt not in ("json", "console"):
            unknown_fmt, fmt = fmt, "console"  # SPEC §9: "readable console output otherwise"
        level = env.get("LOG_LEVEL", "info").strip().lower() or "info"
        level = _LEVEL_ALIASES.get(level, level)
        if level not in ("debug", "info", "warning", "error", "critical"):
            raise SettingsError(
                f"LOG_LEVEL={level!r} must be debug, info, warning (or warn), error or critical"
            )
        burst_raw = env.get("RATE_LIMIT_BURST", "").strip()
        values: dict[str, object] = {
            "default_api_key": env.get("DEFAULT_API_KEY") or None,
            "max_body_bytes": _int(
                env, "API_ROUTER_MAX_BODY_BYTES", DEFAULT_MAX_BODY_BYTES, 1024, 2**40
            ),
            "log_format": fmt,
            "log_format_unknown": unknown_fmt,
            "log_level": level,
            "rate_limit_rpm": _float(env, "RATE_LIMIT_REQUESTS_PER_MINUTE", 0.0, 0.0),
            "rate_limit_burst": _int(env, "RATE_LIMIT_BURST", 1, 1, 10**9) if burst_raw else None,
            "rate_limit_backend": env.get("RATE_LIMIT_BACKEND") or None,
            "rate_limit_fail_closed": _bool(env, "RATE_LIMIT_FAIL_CLOSED", False),
            "token_limit_tpm": _int(env, "TOKEN_LIMIT_TOKENS_PER_MINUTE", 0, 0, 10**12),
            "token_limit_burst": _int(env, "TOKEN_LIMIT_BURST", 0, 0, 10**12),
            "token_limit_enforce": _bool(env, "TOKEN_LIMIT_ENFORCE", True),
            "token_budget_daily": _int(env, "TOKEN_BUDGET_DAILY", 0, 0, 10**15),
            "token_budget_monthly": _int(env, "TOKEN_BUDGET_MONTHLY", 0, 0, 10**15),
            "metrics_enabled": _bool(env, "API_ROUTER_METRICS", True),
            "tracing": _bool(env, "API_ROUTER_TRACING", False),
            "access_log_enabled": _bool(env, "API_ROUTER_ACCESS_LOG", True),
            "drain_secs": _float(env, "API_ROUTER_DRAIN_SECS", 30.0, 0.0),
            "multiproc_dir": env.get("PROMETHEUS_MULTIPROC_DIR") or None,
            "fast_paths": FastPaths.parse(env.get(FAST_PATHS_ENV)),
            **_hardening(env),
        }
        values.update(given)
        if values["tracing"]:
            _check_tracing(env)
        return cls(**values)  # type: ignore[arg-type]


# File descriptors a worker keeps for itself (listening socket, logs, metric and table files,
# the event loop, a pool's idle connections beyond the busy ones).
FD_RESERVE = 128
FD_CEILING = 1 << 20  # what raise_fd_limit asks for at most


def raise_fd_limit() -> int:
    """Raise this process's soft RLIMIT_NOFILE to its hard limit (at most FD_CEILING), as far
    as allowed: the workers inherit it. Returns the soft limit now in force."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = FD_CEILING if hard == resource.RLIM_INFINITY else min(hard, FD_CEILING)
    if soft == resource.RLIM_INFINITY or soft >= want:
        return FD_CEILING if soft == resource.RLIM_INFINITY else soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    except (ValueError, OSError):
        return soft
    return want


def fd_connection_budget() -> int:
    """The default connection cap of a worker (client connections, and pooled upstream ones):
    what its file-descriptor limit can hold, two per proxied request (the client's socket and
    the upstream's), less a reserve. With the usual 1024 that is 448; raised to 65536, 32704."""
    import resource

    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        soft = FD_CEILING
    return max(16, (soft - FD_RESERVE) // 2)


def _check_tracing(env: Mapping[str, str]) -> None:
    """API_ROUTER_TRACING=true: the otel extra is installed and the export is OTLP/HTTP protobuf
    (the only exporter the router ships)."""
    for name in ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"):
        proto = env.get(name, "").strip()
        if proto and proto != "http/protobuf":
            raise SettingsError(
                f"{name}={proto!r}: the router exports traces over http/protobuf only"
            )
    import importlib.util

    try:
        found = importlib.util.find_spec("opentelemetry.exporter.otlp.proto.http") is not None
    except ModuleNotFoundError:  # raised when a parent package is missing
        found = False
    if not found:
        raise SettingsError(
            "API_ROUTER_TRACING=true needs the otel extra: pip install 'api-router[otel]'"
        )


def _positive(env: Mapping[str, str], name: str, default: float) -> float:
    value = _float(env, name, default, 0.0)
    if value <= 0:
        raise SettingsError(f"{name}={value} must be > 0")
    return value


def _hardening(env: Mapping[str, str]) -> dict[str, object]:
    """Limits against hostile clients and failing upstreams (docs/security.md)."""
    keys_file = (env.get("API_ROUTER_ACCESS_KEYS_FILE") or "").strip()
    forwarded = (env.get("API_ROUTER_FORWARDED_HEADERS") or "replace").strip().lower()
    if forwarded not in FORWARDED_MODES:
        raise SettingsError(
            f"API_ROUTER_FORWARDED_HEADERS={forwarded!r} must be "
            f"one of {', '.join(FORWARDED_MODES)}"
        )
    return {
        "forwarded_headers": forwarded,
        "max_header_bytes": _int(
            env,
            "API_ROUTER_MAX_HEADER_BYTES",
            DEFAULT_MAX_HEADER_BYTES,
            1024,
            MAX_HEADER_BYTES_CEILING,
        ),
        "header_timeout_secs": _positive(env, "API_ROUTER_HEADER_TIMEOUT_SECS", 10.0),
        "body_timeout_secs": _positive(env, "API_ROUTER_BODY_TIMEOUT_SECS", 120.0),
        "keep_alive_secs": _positive(env, "API_ROUTER_KEEP_ALIVE_SECS", 75.0),
        "max_connections": _int(
            env, "API_ROUTER_MAX_CONNECTIONS", fd_connection_budget(), 1, 1_000_000
        ),
        "backlog": _int(env, "API_ROUTER_BACKLOG", 4096, 1, 65535),
        "gc_threshold": _int(env, "API_ROUTER_GC_THRESHOLD", DEFAULT_GC_THRESHOLD, 0, 10**7),
        "upstream_max_connections": _int(
            env, "API_ROUTER_UPSTREAM_MAX_CONNECTIONS", fd_connection_budget(), 1, 1_000_000
        ),
        "upstream_pool_wait_secs": _positive(env, "API_ROUTER_UPSTREAM_POOL_WAIT_SECS", 5.0),
        "stream_idle_secs": _positive(env, "API_ROUTER_STREAM_IDLE_SECS", 300.0),
        "stream_max_secs": _positive(env, "API_ROUTER_STREAM_MAX_SECS", 3600.0),
        "access_keys_file": Path(keys_file) if keys_file else None,
        "cors_origins": env.get("API_ROUTER_CORS_ORIGINS", "").strip(),
    }
