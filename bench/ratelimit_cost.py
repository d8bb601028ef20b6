"""Cost per rate-limit decision of each candidate store, measured in the same run.

    .venv/bin/python bench/ratelimit_cost.py [--n 20000]

Prints microseconds per decision (median of 3 rounds) for:
- local: one process's dict (`LocalLimiter`) - the reference; NOT exact across workers;
- shared: the shared-memory table under flock (`SharedLimiter`), the embedded default;
- shared x4: four processes deciding on the same table at once (wall time / all decisions);
- socket: a limiter process answering over a unix socket (the rejected alternative);
- redis: `RedisLimiter` against a real local redis-server (one Lua script per decision).
And the bare cost of the two cross-process locks a shared table could use.
Every loop is bounded by --n; the redis-server and helper processes are stopped by pid.
"""

from __future__ import annotations

import argparse
import asyncio
import fcntl
import multiprocessing as mp
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from service.ratelimit.backends import LocalLimiter
from service.ratelimit.bucket import Limit
from service.ratelimit.shared import SharedLimiter, create_table, remove_table

LIMIT = Limit(rate=1000.0, burst=1000)
ROUTE = "/v1/chat/completions"


def keys(n: int) -> list[str]:
    return [f"{i % 5000:012x}" for i in range(n)]  # 5000 live keys, like key_id values


def median_us(fn: Callable[[], float], rounds: int = 3) -> float:
    return statistics.median(fn() for _ in range(rounds))


def _per_decision_us(lim: Any, n: int) -> float:
    """Mean µs per `acquire` over n distinct keys."""
    ks = keys(n)

    async def run() -> float:
        t = time.perf_counter()
        for k in ks:
            await lim.acquire(k, ROUTE, LIMIT)
        return (time.perf_counter() - t) / n * 1e6

    return asyncio.run(run())


def bench_local(n: int) -> float:
    return _per_decision_us(LocalLimiter(), n)


def bench_shared(path: str, n: int) -> float:
    lim = SharedLimiter(path)
    try:
        return _per_decision_us(lim, n)
    finally:
        asyncio.run(lim.close())


def _shared_worker(path: str, n: int, start: mp.synchronize.Event) -> None:
    lim = SharedLimiter(path)
    ks = keys(n)
    start.wait()
    for k in ks:
        lim.acquire_sync(k, ROUTE, LIMIT)


def bench_shared_contended(path: str, n: int, procs: int = 4) -> float:
    ctx = mp.get_context("spawn")  # like Sanic's workers
    start = ctx.Event()
    ps = [ctx.Process(target=_shared_worker, args=(path, n, start)) for _ in range(procs)]
    for p in ps:
        p.start()
    time.sleep(1.0)  # let them import and map the table
    t = time.perf_counter()
    start.set()
    for p in ps:
        p.join(120)
    return (time.perf_counter() - t) / (n * procs) * 1e6


def _socket_server(path: str, ready: mp.synchronize.Event) -> None:
    lim = LocalLimiter()

    async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        while line := await r.readline():
            d = await lim.acquire(line[:-1].decode(), ROUTE, LIMIT)
            w.write(b"1\n" if d.allowed else b"0\n")
            await w.drain()
        w.close()

    async def main() -> None:
        server = await asyncio.start_unix_server(handle, path)
        ready.set()
        async with server:
            await server.serve_forever()

    asyncio.run(main())


def bench_socket(n: int) -> float:
    ctx = mp.get_context("spawn")
    path = tempfile.mktemp(suffix=".sock")
    ready = ctx.Event()
    p = ctx.Process(target=_socket_server, args=(path, ready), daemon=True)
    p.start()
    ready.wait(30)
    ks = keys(n)

    async def run() -> float:
        r, w = await asyncio.open_unix_connection(path)
        t = time.perf_counter()
        for k in ks:
            w.write(k.encode() + b"\n")
            await r.readline()
        us = (time.perf_counter() - t) / n * 1e6
        w.close()
        return us

    try:
        return median_us(lambda: asyncio.run(run()))
    finally:
        p.terminate()
        p.join(5)
        os.unlink(path)


def bench_redis(n: int) -> float:
    from service.ratelimit.redis_backend import RedisLimiter
    from tests.fakes.redis_server import RedisServer

    with RedisServer() as server:
        ks = keys(n)

        async def run() -> float:
            lim = RedisLimiter(server.url)
            await lim.acquire("warm", ROUTE, LIMIT)  # loads the script (EVAL once)
            t = time.perf_counter()
            for k in ks:
                await lim.acquire(k, ROUTE, LIMIT)
            us = (time.perf_counter() - t) / n * 1e6
            await lim.close()
            return us

        return median_us(lambda: asyncio.run(run()))


def bench_locks(n: int) -> tuple[float, float]:
    fd, path = tempfile.mkstemp()
    t = time.perf_counter()
    for _ in range(n):
        fcntl.flock(fd, fcntl.LOCK_EX)
        fcntl.flock(fd, fcntl.LOCK_UN)
    flock_us = (time.perf_counter() - t) / n * 1e6
    os.close(fd)
    os.unlink(path)
    lock = mp.get_context("spawn").Lock()
    t = time.perf_counter()
    for _ in range(n):
        lock.acquire()
        lock.release()
    return flock_us, (time.perf_counter() - t) / n * 1e6


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=20000)
    n = ap.parse_args().n
    path = create_table()
    try:
        rows = [
            ("local (one process, not exact across workers)", median_us(lambda: bench_local(n))),
            ("shared table, 1 process", median_us(lambda: bench_shared(path, n))),
            ("shared table, 4 processes at once", bench_shared_contended(path, n // 2)),
            ("limiter process over a unix socket", bench_socket(n // 4)),
            ("redis (Lua script, loopback)", bench_redis(n // 10)),
        ]
    finally:
        remove_table(path)
    flock_us, mplock_us = bench_locks(n)
    print(f"{'store':48} us/decision")
    for name, us in rows:
        print(f"{name:48} {us:8.1f}")
    print(f"{'  lock only: flock pair':48} {flock_us:8.2f}")
    print(f"{'  lock only: multiprocessing.Lock pair':48} {mplock_us:8.2f}")
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, n={n}")


if __name__ == "__main__":
    main()
