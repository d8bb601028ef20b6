"""The `batch` fast path: finished requests' records written once per pass of the event loop.

A finished request leaves a record: its metric writes, its completion line and, when it failed,
the repeated-failure alarm and Sentry (service.observability.lifecycle.record). Without this path
each record is written in the request's own `finish`, just before its response goes out. With it
(`API_ROUTER_FAST_PATHS` with `batch`, the default) `finish` stamps the response's headers, ends
the trace span, and hands the record to `Completions.add`; the first record of a pass schedules
one callback (`loop.call_soon`), which writes every record handed in meanwhile, in the order the
requests finished.

Buys: worker CPU per request (bench/README.md, "Fast paths": the measured figure). The same
writes run one after another in one callback instead of each between a request's other work.

What it keeps exact:
- every record is written, once, with the same values (the request's state is final by then; a
  request whose client left, whose handler is still being cancelled, is recorded at once by
  `finish`, never here): each in the request's own context
  (`contextvars.copy_context()` at `add`), so the logging context and the client's key that is
  scrubbed from its line are that request's, whichever request's call scheduled the callback;
- a scrape of `/metrics` writes its own worker's waiting records first (`flush`), so a scrape
  that follows a response on the same worker counts it; the worker's `after_server_stop` writes
  what is left before the process ends;
- a record that cannot be written (a bug) is reported as `completion_record_failed` (the
  exception's class only) and the records after it are still written.

What differs: a record is written after its response was handed to the transport, at most one
loop pass later (microseconds under load, where the batches form; at once when idle). A scrape
served by another worker within that pass may not count it yet, as if the request had finished a
pass later. A worker killed with SIGKILL loses the records of its last pass, where it would lose
the request being finished anyway.

Off: `lifecycle.finish` writes the record itself (`Completions` is not created).
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Callable
from typing import Any

import structlog

log = structlog.get_logger("api_router")


class Completions:
    """One worker's records waiting for the end of the loop pass (`write(*record)` writes one)."""

    __slots__ = ("_pending", "_write")

    def __init__(self, write: Callable[..., None]) -> None:
        self._pending: list[tuple[contextvars.Context, tuple[Any, ...]]] = []
        self._write = write

    def add(self, *record: Any) -> None:
        pending = self._pending
        pending.append((contextvars.copy_context(), record))
        if len(pending) == 1:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # no loop (a synchronous caller): written at once
                self.flush()
                return
            loop.call_soon(self.flush)

    def pending(self) -> int:
        return len(self._pending)

    def flush(self) -> None:
        """Write every waiting record (also those added while writing), in order."""
        write = self._write
        while self._pending:
            batch, self._pending = self._pending, []
            for context, record in batch:
                try:
                    context.run(write, *record)
                except Exception as e:  # one broken record never costs the others theirs
                    log.error("completion_record_failed", error=e.__class__.__name__)
