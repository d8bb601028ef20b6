"""What a stream's first wait, a hot signal's dispatch and a log line cost, in one process.

    .venv/bin/python bench/coroutine_cost.py [--count 100000] [--repeat 5]

The figures of bench/README.md, "Fewer coroutines and writes per request", each the best of
--repeat runs of --count calls, microseconds per call:

- the wait for the upstream's head of a stream request: `asyncio.wait({task}, timeout=...)`
  against `service.proxy.sse.settle(task, ...)`, for a task that finishes one loop pass later
  (the task's own cost is in both);
- `RouterApp.dispatch` of a hot event (`http.lifecycle.request`) with two listeners, as coroutine
  functions (how the router's were) and as plain functions (how they are now), awaited as
  Sanic's call sites do. The app is a bare `RouterApp` with its plan made by hand: no server.

- a completion line written by itself (as before) against lines written eight at a time
  (`logging.held_lines`, what one event-loop pass of `Completions.flush` does), to /dev/null
  (what bench/run.py gives its routers) and to a pipe read by `cat` (a container's log pipe).

An end-to-end A/B of the same change is within the noise of `bench/compare_revisions.py`
(bench/README.md says by how much); these isolate the part that changed.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import logging
import os
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import structlog
import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from sanic import Sanic

from service.observability.logging import configure_logging, emit, held_lines
from service.proxy.sse import settle
from service.server.dispatch import RouterApp


async def _finishes_next_pass() -> None:
    await asyncio.sleep(0)


async def _per_call(step: Callable[[], Awaitable[Any]], count: int, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        for _ in range(count):
            await step()
        best = min(best, (time.perf_counter() - t) / count)
    return best * 1e6


def _app(name: str, plain: bool) -> RouterApp:
    app = RouterApp(name, configure_logging=False)
    seen: list[Any] = []
    if plain:

        def first(request: Any) -> None:
            seen.append(request)

        def second(request: Any) -> None:
            seen.clear()

    else:

        async def first(request: Any) -> None:  # type: ignore[misc]
            seen.append(request)

        async def second(request: Any) -> None:  # type: ignore[misc]
            seen.clear()

    app.signal("http.lifecycle.request")(first)  # type: ignore[arg-type]
    app.signal("http.lifecycle.request")(second)  # type: ignore[arg-type]
    app.signal_router.finalize()
    app.plan_signals()
    return app


def _lines_cost(count: int, repeat: int) -> None:
    configure_logging("json", "info")
    handler = logging.getLogger().handlers[0]
    log = structlog.get_logger("api_router.access")
    fields = {"client_ip": "127.0.0.1", "method": "POST", "route": "/v1/chat/completions"}

    def line() -> None:
        emit(log, "api_router.access", logging.INFO, "request_completed", dict(fields), "r1")

    def best(per_pass: int) -> float:
        out = float("inf")
        for _ in range(repeat):
            t = time.perf_counter()
            for _ in range(count // per_pass):
                if per_pass == 1:
                    line()
                else:
                    with held_lines():
                        for _ in range(per_pass):
                            line()
            out = min(out, (time.perf_counter() - t) / count)
        return out * 1e6

    cat = subprocess.Popen(["cat"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)
    assert cat.stdin is not None
    targets = (("/dev/null", open(os.devnull, "w")), ("a pipe to cat", io.TextIOWrapper(cat.stdin)))
    try:
        for label, stream in targets:
            handler.setStream(stream)  # type: ignore[attr-defined]
            for per_pass in (1, 8):
                what = "alone" if per_pass == 1 else "8 per write"
                print(f"| completion line to {label}, {what} | {best(per_pass):.2f} |")
    finally:
        handler.setStream(sys.stdout)  # type: ignore[attr-defined]
        for _, stream in targets:
            stream.close()
        cat.wait()
        structlog.reset_defaults()


async def main(count: int, repeat: int) -> None:
    loop = asyncio.get_running_loop()

    async def with_asyncio_wait() -> None:
        task = loop.create_task(_finishes_next_pass())
        await asyncio.wait({task}, timeout=15)

    async def with_settle() -> None:
        task = loop.create_task(_finishes_next_pass())
        await settle(task, 15)

    print("| what | µs per call |")
    print("| --- | --- |")
    for label, step in (
        ("task + `asyncio.wait({task}, timeout=15)`", with_asyncio_wait),
        ("task + `sse.settle(task, 15)`", with_settle),
    ):
        print(f"| {label} | {await _per_call(step, count, repeat):.2f} |")
    context = {"request": object()}
    for label, plain in (
        ("dispatch, 2 listeners: coroutine functions", False),
        ("dispatch, 2 listeners: plain functions", True),
    ):
        app = _app(f"coroutine_cost_{int(plain)}", plain)
        try:

            def step(app: RouterApp = app) -> Any:
                return app.dispatch("http.lifecycle.request", inline=True, context=context)

            print(f"| {label} | {await _per_call(step, count, repeat):.2f} |")
        finally:
            Sanic._app_registry.pop(app.name, None)


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--count", type=int, default=100_000)
    p.add_argument("--repeat", type=int, default=5)
    a = p.parse_args()
    uvloop.run(main(a.count, a.repeat))
    _lines_cost(a.count, a.repeat)
