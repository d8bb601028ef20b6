"""structlog configuration: one processor chain, configured in one function.

`LOG_FORMAT=json` gives one JSON object per line (the container default); anything else gives
readable console lines. Sanic's and httpx's standard-library log records go through the same
processors and renderer (a `ProcessorFormatter` on the root handler), so every line of the process
has one shape. structlog's own lines skip the standard-library machinery (records, handler
dispatch, formatter): the chain renders them and `HandlerStreamLogger` writes the line to the root
handler's stream, under the handler's lock, flushed like the handler's own records. Request
context (request_id, route) is bound through contextvars and cleared at the start of every
request. The completion line and the timestamps take a fast path when the `logging` fast path
is on (service.observability.logging_fast; API_ROUTER_FAST_PATHS).

A last processor drops any value that looks like a credential: secrets the router knows of are
registered with `redact()` (DEFAULT_API_KEY at start, the active profile's header values and
`upstreamPath` query values at every load, the Redis password, a client's key while its request
runs), and in any text, the value of a URL query parameter whose name looks like a credential
(`?key=`, `&api_key=`, `access_token`, `sig`, … see `_CREDENTIAL_QUERY`) is replaced whatever it
is: a client's own `?key=…` is never registered anywhere. The same processor runs for structlog's
lines and for every standard-library record (Sanic, httpx, httpcore), at every level.
"""

from __future__ import annotations

import contextlib
import logging
import re
import sys
import threading
import traceback
from collections.abc import Iterator, MutableMapping
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

import orjson
import structlog

from .logging_fast import add_timestamp, json_line

if TYPE_CHECKING:
    from ..config import LoadedConfig

_secrets: set[str] = set()
_request_secrets: ContextVar[tuple[str, ...]] = ContextVar("request_secrets", default=())
REDACTED = "[redacted]"


def redact(secret: str | None) -> None:
    if secret and len(secret) >= 4:
        _secrets.add(secret)


def redact_profile_secrets(cfg: LoadedConfig) -> None:
    """The profile's header and upstream query values never reach a log line (called with every
    config before it serves a request: ConfigHolder's `on_load`)."""
    for secret in cfg.secret_values():
        redact(secret)


def set_request_secret(*secrets: str | None) -> None:
    """The credentials of the request running in this context (cleared with no argument)."""
    _request_secrets.set(tuple(s for s in secrets if s and len(s) >= 4))


# A query parameter whose name contains one of these words (case-insensitive) carries a
# credential: `key`, `api_key`, `apikey`, `x-goog-api-key`, `token`, `access_token`, `sig`,
# `signature`, `X-Amz-Signature`, `secret`, `password`, `auth`, `credential`, `session`. The value
# ends at the next `&`, `#`, `;`, whitespace or quote; over-redaction is the safe side.
_CREDENTIAL_QUERY = re.compile(
    r"((?:^|[?&;])[^=&#;?\s\"']*?(?:key|token|sig|secret|pass|pwd|auth|credential|session)"
    r"[^=&#;?\s\"']*=)[^&#;\s\"'<>]+",
    re.IGNORECASE,
)


def redact_query(text: str) -> str:
    """`text` with the value of every credential-like URL query parameter replaced."""
    if "=" not in text:
        return text
    return _CREDENTIAL_QUERY.sub(r"\1" + REDACTED, text)


def _scrub_value(value: Any, secrets: list[str]) -> Any:
    if isinstance(value, str):
        for s in secrets:
            if s in value:
                value = value.replace(s, REDACTED)
        return redact_query(value)
    if isinstance(value, dict):
        return {k: _scrub_value(v, secrets) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_scrub_value(v, secrets) for v in value]
    return value


def _known_secrets() -> list[str]:
    secrets = list(_secrets)
    secrets.extend(_request_secrets.get())
    return secrets


def scrub(value: Any) -> Any:
    """`value` with every known credential and credential-like query value replaced (also used
    for Sentry events)."""
    return _scrub_value(value, _known_secrets())


_PLAIN = (int, float, type(None))  # values no credential can hide in (bool is an int)


def scrub_secrets(
    _: Any, __: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    secrets = _known_secrets()
    # In place (structlog hands every processor chain a dict of its own), keys in their order.
    for k, v in event_dict.items():
        if v.__class__ is str:
            if "=" in v:  # may hold a URL query: the full scrub
                event_dict[k] = _scrub_value(v, secrets)
                continue
            for s in secrets:
                if s in v:
                    event_dict[k] = _scrub_value(v, secrets)
                    break
        elif not isinstance(v, _PLAIN):
            event_dict[k] = _scrub_value(v, secrets)
    return event_dict


def _orjson_dumps(obj: Any, default: Any = None) -> str:
    return orjson.dumps(obj, default=default or str).decode()


# The root handler configure_logging installed: where structlog's lines are written. A module
# global, not a logger attribute: loggers cached on first use keep writing to the current one.
_handler: logging.StreamHandler[Any] = logging.StreamHandler(sys.stdout)


class HandlerStreamLogger:
    """structlog's final logger: writes each rendered line to the root handler's stream.

    The same stream, lock, terminator and flush as the handler's own records, so structlog's lines
    and the standard library's never interleave and reach a pipe at once.
    """

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name  # for add_logger_name

    def msg(self, line: str) -> None:
        _write_line(line)

    debug = info = warning = warn = error = critical = fatal = exception = log = msg


# The lines held by `held_lines` (None: none is) and the thread that holds them.
_held: list[str] | None = None
_held_by = 0


@contextlib.contextmanager
def held_lines() -> Iterator[None]:
    """structlog lines this thread writes meanwhile go out at the end, in order, in one write
    and one flush (the completion records of one event-loop pass: service.observability.
    completions): one system call per pass instead of one per line (bench/README.md,
    "Fewer coroutines and writes per request"). Lines of other threads, and the standard library's
    records, are written as they come. Also written when the block raises. Nested: the
    outermost block writes."""
    global _held, _held_by
    if _held is not None:
        yield
        return
    _held, _held_by = [], threading.get_ident()
    try:
        yield
    finally:
        lines, _held = _held, None
        if lines:
            end = _handler.terminator
            _write_text(end.join(lines) + end)


def _write_line(line: str) -> None:
    held = _held
    if held is not None and _held_by == threading.get_ident():
        held.append(line)
        return
    _write_text(line + _handler.terminator)


def _write_text(text: str) -> None:
    """`text` (whole lines) to the root handler's stream, under its lock, flushed."""
    h = _handler
    try:
        with h.lock:  # type: ignore[union-attr]
            stream = h.stream
            stream.write(text)
            stream.flush()
    except RecursionError:
        raise
    except Exception:
        # What logging.Handler.handleError does: never let a broken stream fail the caller.
        if logging.raiseExceptions and sys.stderr:
            sys.stderr.write("--- Logging error ---\n")
            traceback.print_exc(file=sys.stderr)


# Set by configure_logging: whether `emit` builds JSON lines directly, and the level threshold.
_direct_json = False
_threshold = logging.INFO
_LEVEL_NAMES = {logging.INFO: "info", logging.WARNING: "warning", logging.ERROR: "error"}


def emit(
    logger: Any, name: str, level: int, event: str, fields: dict[str, Any], request_id: str
) -> None:
    """One line with `fields`, `event` and `request_id`, as `logger.<level>(event, **fields)`
    writes it while `request_id` is bound: the completion line.

    With `LOG_FORMAT=json` and the `logging` fast path the line is built directly
    (`logging_fast.json_line`: the same keys in the same order, credentials scrubbed, one write
    to the root handler's stream). Otherwise: the chain. `fields` is consumed."""
    if not _direct_json:
        getattr(logger, _LEVEL_NAMES[level])(event, **fields)
        return
    if level < _threshold:
        return
    _write_line(json_line(fields, event, request_id, _LEVEL_NAMES[level], name, scrub_secrets))


def _logger_factory(*args: Any) -> HandlerStreamLogger:
    # Every logger of the service is named; an unnamed one gets the standard library's name.
    if args and isinstance(args[0], str):
        return HandlerStreamLogger(args[0])
    return HandlerStreamLogger(structlog.stdlib.LoggerFactory(ignore_frame_names=[__name__])().name)


def configure_logging(fmt: str = "console", level: str = "info", fast: bool = True) -> None:
    """`fast`: the `logging` fast path (service.observability.logging_fast), applied here."""
    lvl = getattr(logging, level.upper(), logging.INFO)
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        add_timestamp if fast else structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    global _handler, _direct_json, _threshold
    _direct_json, _threshold = fast and fmt == "json", lvl
    renderer: Any
    handler = _handler = logging.StreamHandler(sys.stdout)
    # Tracebacks never show local variables (structlog's defaults do, with rich): a frame's
    # locals hold credentials, headers and whole configs, cut to 80 characters before any
    # scrubber could match them. They are rendered before `scrub_secrets`, which then sees them.
    if fmt == "json":
        renderer = structlog.processors.JSONRenderer(serializer=_orjson_dumps)
        exc = [
            structlog.processors.ExceptionRenderer(
                structlog.tracebacks.ExceptionDictTransformer(show_locals=False)
            )
        ]
    else:
        renderer = structlog.dev.ConsoleRenderer(
            colors=False, exception_formatter=structlog.dev.plain_traceback
        )
        exc = [structlog.processors.format_exc_info]
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[*shared, structlog.stdlib.ExtraAdder(), *exc, scrub_secrets],
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        )
    )
    structlog.configure(
        processors=[
            *shared,
            structlog.processors.StackInfoRenderer(),
            *exc,
            scrub_secrets,
            renderer,
        ],
        logger_factory=_logger_factory,
        # Filters by level like the root logger below (one threshold for both paths).
        wrapper_class=structlog.make_filtering_bound_logger(lvl),
        cache_logger_on_first_use=True,
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(lvl)
    for name in ("sanic.root", "sanic.error", "sanic.access", "sanic.server", "sanic.websockets"):
        lg = logging.getLogger(name)
        lg.handlers[:] = []
        lg.propagate = True
    # httpx logs every request URL at INFO; keep it to warnings unless debugging.
    for name in ("httpx", "httpcore"):
        logging.getLogger(name).setLevel(lvl if lvl <= logging.DEBUG else max(lvl, logging.WARNING))
