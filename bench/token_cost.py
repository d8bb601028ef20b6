"""Cost per request of the token limits (issue 17) next to a request-bucket decision, same run.

    .venv/bin/python bench/token_cost.py [--n 20000]

Prints microseconds per request (median of 3 rounds) for:
- request bucket: one `SharedLimiter.acquire_sync` on the shared table - the reference;
- shared tokens: `SharedTokens.reserve_sync` then `settle_sync` on a second shared table, with
  one meter (a tokenLimit bucket) and with three (the bucket, daily and monthly budgets); the
  meters are built before timing, so this is the store alone;
- TokenLimiter: `await reserve(...)` then `await settle(...)` on the same store, one and three
  meters: the estimate, the meters (per request), the store and the usage parsing (metrics off);
- shared tokens x4: four processes reserving and settling on one table at once (wall time / all
  requests);
- redis: `RedisTokens` reserve + settle (two Lua scripts per request) against a real local
  redis-server, one and three meters, and `RedisLimiter.acquire` as the Redis reference.
Limits are 10**9 tokens/minute and 10**12 tokens/day and /month: nothing is ever refused.
Every loop is bounded by --n; the redis-server and helper processes are stopped by pid.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from service.config.model import TokenBudgets, TokenLimit
from service.ratelimit.bucket import Limit, Meter
from service.ratelimit.shared import SharedLimiter, create_table, remove_table
from service.ratelimit.tokens import SharedTokens, TokenLimiter, TokenRule

LIMIT = Limit(rate=1000.0, burst=1000)
ROUTE = "/v1/chat/completions"
PAYLOAD = {
    "model": "gpt-4o-mini",
    "messages": [{"role": "user", "content": "Say hello in one short sentence."}],
    "max_tokens": 16,
}
BODY_BYTES = len(json.dumps(PAYLOAD).encode())
USAGE = {"prompt_tokens": 7, "completion_tokens": 3}
AMOUNT = 32  # what reserve_sync/settle_sync take and give back in the store-only rows


def keys(n: int) -> list[str]:
    return [f"{i % 5000:012x}" for i in range(n)]  # 5000 live keys, like key_id values


def median_us(fn: Callable[[], float], rounds: int = 3) -> float:
    return statistics.median(fn() for _ in range(rounds))


def rule(budgets: bool) -> TokenRule:
    r = TokenRule.compile(
        TokenLimit(tokens_per_minute=10**9),
        TokenBudgets(daily=10**12, monthly=10**12) if budgets else None,
        "profile",
    )
    assert r is not None
    return r


def meters_of(ks: list[str], budgets: bool) -> list[list[Meter]]:
    r, wall = rule(budgets), time.time()
    by_key = {k: r.meters(k, wall) for k in set(ks)}
    return [by_key[k] for k in ks]


def bench_request_bucket(path: str, n: int) -> float:
    lim = SharedLimiter(path)
    ks = keys(n)
    t = time.perf_counter()
    for k in ks:
        lim.acquire_sync(k, ROUTE, LIMIT)
    us = (time.perf_counter() - t) / n * 1e6
    asyncio.run(lim.close())
    return us


def _reserve_settle(store: SharedTokens, ms: list[list[Meter]]) -> None:
    for m in ms:
        store.reserve_sync(m, AMOUNT)
        store.settle_sync(m, AMOUNT - 10)


def bench_shared_tokens(path: str, n: int, budgets: bool) -> float:
    store = SharedTokens(path)
    ms = meters_of(keys(n), budgets)
    t = time.perf_counter()
    _reserve_settle(store, ms)
    us = (time.perf_counter() - t) / n * 1e6
    asyncio.run(store.close())
    return us


def bench_token_limiter(path: str, n: int, budgets: bool) -> float:
    lim = TokenLimiter(SharedTokens(path), backend="shared")
    r = rule(budgets)
    ks = keys(n)

    async def run() -> float:
        t = time.perf_counter()
        for k in ks:
            charge = await lim.reserve(k, r, PAYLOAD, BODY_BYTES)
            assert charge is not None and charge.meters
            await lim.settle(charge, USAGE, refund=False)
        us = (time.perf_counter() - t) / n * 1e6
        await lim.close()
        return us

    return asyncio.run(run())


def _tokens_worker(path: str, n: int, start: mp.synchronize.Event) -> None:
    store = SharedTokens(path)
    ms = meters_of(keys(n), budgets=False)
    start.wait()
    _reserve_settle(store, ms)


def bench_tokens_contended(path: str, n: int, procs: int = 4) -> float:
    ctx = mp.get_context("spawn")  # like Sanic's workers
    start = ctx.Event()
    ps = [ctx.Process(target=_tokens_worker, args=(path, n, start)) for _ in range(procs)]
    for p in ps:
        p.start()
    time.sleep(1.0)  # let them import and map the table
    t = time.perf_counter()
    start.set()
    try:
        for p in ps:
            p.join(120)
        return (time.perf_counter() - t) / (n * procs) * 1e6
    finally:
        for p in ps:
            if p.is_alive():
                p.terminate()
                p.join(5)


def bench_redis(n: int) -> tuple[float, float, float]:
    """(request bucket, tokens 1 meter, tokens 3 meters), us per request."""
    from service.ratelimit.redis_backend import RedisLimiter, RedisTokens
    from tests.fakes.redis_server import RedisServer

    ks = keys(n)
    with RedisServer() as server:

        async def bucket() -> float:
            lim = RedisLimiter(server.url)
            await lim.acquire("warm", ROUTE, LIMIT)  # loads the script (EVAL once)
            t = time.perf_counter()
            for k in ks:
                await lim.acquire(k, ROUTE, LIMIT)
            us = (time.perf_counter() - t) / n * 1e6
            await lim.close()
            return us

        async def tokens(budgets: bool) -> float:
            store = RedisTokens(server.url)
            ms = meters_of(ks, budgets)
            await store.reserve(ms[0], AMOUNT)  # loads both scripts (EVAL once each)
            await store.settle(ms[0], AMOUNT)
            t = time.perf_counter()
            for m in ms:
                await store.reserve(m, AMOUNT)
                await store.settle(m, AMOUNT - 10)
            us = (time.perf_counter() - t) / n * 1e6
            await store.close()
            return us

        return (
            median_us(lambda: asyncio.run(bucket())),
            median_us(lambda: asyncio.run(tokens(False))),
            median_us(lambda: asyncio.run(tokens(True))),
        )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=20000)
    n = ap.parse_args().n
    buckets, tokens = create_table(), create_table()
    try:
        rows: list[tuple[str, float]] = [
            (
                "request bucket, shared table (reference)",
                median_us(lambda: bench_request_bucket(buckets, n)),
            ),
            (
                "shared tokens, 1 meter: reserve+settle",
                median_us(lambda: bench_shared_tokens(tokens, n, False)),
            ),
            (
                "shared tokens, 3 meters: reserve+settle",
                median_us(lambda: bench_shared_tokens(tokens, n, True)),
            ),
            (
                "TokenLimiter on shared, 1 meter",
                median_us(lambda: bench_token_limiter(tokens, n, False)),
            ),
            (
                "TokenLimiter on shared, 3 meters",
                median_us(lambda: bench_token_limiter(tokens, n, True)),
            ),
            ("shared tokens, 1 meter, 4 processes at once", bench_tokens_contended(tokens, n // 2)),
        ]
    finally:
        remove_table(buckets)
        remove_table(tokens)
    r_bucket, r_one, r_three = bench_redis(n // 10)
    rows += [
        ("redis request bucket (reference, 1 script)", r_bucket),
        ("redis tokens, 1 meter (2 scripts)", r_one),
        ("redis tokens, 3 meters (2 scripts)", r_three),
    ]
    print(f"{'path':48} us/request  x its reference")
    for i, (name, us) in enumerate(rows):
        ref = rows[0][1] if i < 6 else r_bucket  # the shared table's, or Redis's own
        print(f"{name:48} {us:10.1f}  {us / ref:15.1f}")
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, n={n}")


if __name__ == "__main__":
    main()
