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
- every record is written, once, with the values `finish` saw (the request's state is final by
  then: its handler has returned; the exception Sentry reports is taken at `finish`), each in
  the request's own context (`contextvars.copy_context()` at `add`), so the logging context and
  the client's key that is scrubbed from its line are that request's, whichever request's call
  scheduled the callback. A request whose client left is recorded at once by `finish`, as
  without this path;
- a scrape counts every request whose answer was sent before the scrape arrived, whichever
  worker answers it: a worker raises its flag (one byte in a file of its own in the
  multiprocess metrics directory, `completions_<pid>.flag`) when its first record of a pass
  waits, before that request's answer is written, and lowers it after writing the pass's
  records; `/metrics` writes its own worker's records, then waits until every other live
  worker's flag is down (`settled`, bounded by SETTLE_SECS, checked every SETTLE_POLL_SECS:
  normally the rest of one loop pass, microseconds). The worker's `after_server_stop` writes
  what is left, and removes its flag;
- a record that cannot be written (a bug) is reported as `completion_record_failed` (the
  exception's class only; in that request's context, so with its request id) and the records
  after it are still written.

What differs: a record is written after its response was handed to the transport (or queued
behind a slow client), at most one loop pass later, and a completion line appears that much
later in the log stream. A worker killed with SIGKILL loses the records of its last pass, where
it would lose the request being finished anyway; its flag is ignored, and removed with its live
gauges at the next scrape (metrics.reap_dead_workers).

Off: `lifecycle.finish` writes the record itself (`Completions` is not created).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import mmap
import os
import re
import time
from collections.abc import Callable
from typing import Any

import structlog

from . import RECORD_FLAG
from .logging import held_lines
from .metrics import process_alive

log = structlog.get_logger("api_router")

FLAG_FILE = re.compile(re.escape(RECORD_FLAG).replace(r"\{pid\}", r"(\d+)") + "$")
SETTLE_SECS = 0.25  # the longest a scrape waits for the other workers' records
SETTLE_POLL_SECS = 0.0005


class Completions:
    """One worker's records waiting for the end of the loop pass (`write(*record)` writes one)."""

    __slots__ = ("_flag", "_flag_path", "_pending", "_write")

    def __init__(self, write: Callable[..., None]) -> None:
        self._pending: list[tuple[contextvars.Context, tuple[Any, ...]]] = []
        self._write = write
        self._flag: mmap.mmap | None = None
        self._flag_path: str | None = None

    def open_flag(self, directory: str) -> None:
        """This worker's flag in `directory` (the multiprocess metrics directory): up while
        records wait."""
        path = os.path.join(directory, RECORD_FLAG.format(pid=os.getpid()))
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.ftruncate(fd, 1)
            self._flag = mmap.mmap(fd, 1)
        finally:
            os.close(fd)
        self._flag_path = path

    def close(self) -> None:
        """Write what waits; drop the flag (the worker stops)."""
        self.flush()
        flag, self._flag = self._flag, None
        if flag is not None:
            flag.close()
        if self._flag_path is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._flag_path)
            self._flag_path = None

    def add(self, *record: Any) -> None:
        pending = self._pending
        pending.append((contextvars.copy_context(), record))
        if len(pending) == 1:
            if self._flag is not None:
                self._flag[0] = 1  # before the answer is written: a scrape anywhere waits
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
        with held_lines():  # the pass's completion lines: one write
            while self._pending:
                batch, self._pending = self._pending, []
                for i, (context, record) in enumerate(batch):
                    try:
                        context.run(self._write_one, record)
                    except BaseException:
                        # (a cancellation or an exit): the rest of the pass still waits, in order
                        self._pending[:0] = batch[i + 1 :]
                        raise
        if self._flag is not None:
            self._flag[0] = 0

    def _write_one(self, record: tuple[Any, ...]) -> None:
        try:
            self._write(*record)
        except Exception as e:  # one broken record never costs the others theirs
            log.error("completion_record_failed", error=e.__class__.__name__)


def raised_flags(directory: str) -> list[int]:
    """The pids of the other live workers whose records wait (their flag is up)."""
    me = os.getpid()
    up = []
    try:
        names = os.listdir(directory)
    except OSError:
        return []
    for name in names:
        m = FLAG_FILE.match(name)
        if m is None or int(m.group(1)) == me:
            continue
        try:
            with open(os.path.join(directory, name), "rb") as f:
                raised = f.read(1) == b"\x01"
        except OSError:  # removed meanwhile: that worker stopped
            continue
        if raised and process_alive(int(m.group(1))):  # (a dead one's: reap_dead_workers)
            up.append(int(m.group(1)))
    return up


async def settled(directory: str, limit: float = SETTLE_SECS) -> bool:
    """Wait until no other live worker has records waiting (False: still some after `limit`)."""
    deadline = time.monotonic() + limit
    while raised_flags(directory):
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(SETTLE_POLL_SECS)
    return True
