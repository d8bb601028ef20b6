"""The completion line's fast path: the JSON line the processor chain would write, built
directly, and a cheaper ISO timestamp.

Buys: CPU per request (bench/README.md, "Fast paths"): the completion line is written on every
request, and the chain's generic steps (context merge, stack and exception rendering, which a
completion line never has) and `TimeStamper`'s datetime formatting cost more than the line.

Replicates, rather than reaches into, structlog: the keys and their order of the configured
chain (service.observability.logging: the fields, `event`, `request_id` from the bound context,
`level`, `logger`, `timestamp`), its scrubbing, and what `TimeStamper(fmt="iso", utc=True)`
writes. An upgrade of structlog that changes key order, level names or the ISO format makes the
two paths differ: tests/unit/test_fast_logging.py compares the lines line for line and the
timestamps with `datetime.isoformat`. structlog's own documented fast path
(`BytesLoggerFactory` + orjson) writes to a file object of its own, not to the root handler the
standard library's records share.

Off (`API_ROUTER_FAST_PATHS` without `logging`): the chain renders the completion line, with
structlog's own `TimeStamper` (service.observability.logging.configure_logging applies it).
"""

from __future__ import annotations

import time
from collections.abc import Callable, MutableMapping
from datetime import UTC, datetime
from typing import Any

import orjson

_second: tuple[int, str] = (-1, "")  # (a UTC second, its "YYYY-MM-DDTHH:MM:SS")


def iso_utc(ns: int) -> str:
    """`ns` (since the epoch) as structlog's `TimeStamper(fmt="iso", utc=True)` writes it: the
    `datetime.isoformat()` of that UTC time, microseconds only when not zero, `Z` for +00:00.
    The date and time of day are formatted once per second."""
    global _second
    sec, us = divmod(ns // 1000, 1_000_000)
    cached = _second
    if cached[0] != sec:
        text = datetime.fromtimestamp(sec, UTC).isoformat()[:19]
        cached = _second = (sec, text)
    return f"{cached[1]}.{us:06d}Z" if us else f"{cached[1]}Z"


def add_timestamp(
    _: Any, __: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """The chain's timestamp processor on the fast path (`TimeStamper`'s output)."""
    event_dict["timestamp"] = iso_utc(time.time_ns())
    return event_dict


def json_line(
    fields: dict[str, Any],
    event: str,
    request_id: str,
    level: str,
    logger: str,
    scrub: Callable[[Any, str, MutableMapping[str, Any]], Any],
) -> str:
    """The line the JSON chain writes for `logger.<level>(event, **fields)` while `request_id`
    is bound (`scrub`: the chain's scrubbing processor). `fields` is consumed."""
    fields["event"] = event
    fields["request_id"] = request_id
    fields["level"] = level
    fields["logger"] = logger
    fields["timestamp"] = iso_utc(time.time_ns())
    scrub(None, "", fields)
    return orjson.dumps(fields, default=str).decode()
