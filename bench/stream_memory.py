"""Memory per open stream: RSS growth of the router's worker per 1,000 idle paced streams.

    .venv/bin/python bench/stream_memory.py [--streams 1000] [--gap 1.0]

One router worker (all on, as `make run` serves) in front of the tests' fake upstream, which
answers each stream request with an endless SSE stream, one small event every `--gap` seconds
(a slow model: the streams stay open and nearly idle). The client opens `--streams` streams at
once and reads them; the worker's RSS (from /proc) is read before, once all streams are open and
have had a few events, and after they are closed. Everything runs on 127.0.0.1 and is stopped by
pid; the number of streams and the time are bounded.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.fakes.upstream import FakeUpstream, Reply
from tests.support import RouterProcess

EVENT = (
    b'data: {"id":"c","object":"chat.completion.chunk","model":"m","choices":[{"index":0,'
    b'"delta":{"content":"tok "},"finish_reason":null}]}\n\n'
)


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def endless(gap: float, limit: float) -> Iterator[tuple[float, bytes]]:
    """One event every `gap` seconds, for at most `limit` seconds (bounded)."""
    yield 0.0, EVENT
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        yield gap, EVENT


async def hold(url: str, n: int, seconds: float, opened: asyncio.Event) -> int:
    """Open `n` streams, read them for `seconds`, close them; returns how many got a 200."""
    ok = 0
    started = 0
    limits = httpx.Limits(max_connections=n + 10, max_keepalive_connections=0)
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:

        async def one() -> None:
            nonlocal ok, started
            body = {"model": "m", "stream": True, "messages": [{"role": "user", "content": "x"}]}
            async with client.stream("POST", url + "/v1/chat/completions", json=body) as r:
                if r.status_code == 200:
                    ok += 1
                started += 1
                if started == n:
                    opened.set()
                end = time.monotonic() + seconds
                async for _ in r.aiter_raw():
                    if time.monotonic() > end:
                        break

        await asyncio.gather(*(one() for _ in range(n)), return_exceptions=True)
    return ok


async def measure(router: RouterProcess, pid: int, n: int, hold_secs: float) -> dict[str, float]:
    before = rss_kb(pid)
    opened = asyncio.Event()
    task = asyncio.create_task(hold(router.url, n, hold_secs, opened))
    await asyncio.wait_for(opened.wait(), 120)
    await asyncio.sleep(hold_secs / 2)  # every stream open, a few events each
    during = rss_kb(pid)
    ok = await task
    await asyncio.sleep(2)
    after = rss_kb(pid)
    return {"streams": n, "ok": ok, "rss_before_kb": before, "rss_open_kb": during,
            "rss_after_kb": after, "kb_per_1000": (during - before) * 1000 / n}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--streams", type=int, default=1000)
    ap.add_argument("--gap", type=float, default=1.0)
    ap.add_argument("--hold", type=float, default=8.0)
    args = ap.parse_args()
    upstream = FakeUpstream().start()
    limit = args.hold * 3 + 30
    upstream.reply_with(
        Reply(
            headers=[("Content-Type", "text/event-stream")],
            chunk_source=lambda: endless(args.gap, limit),
        )
    )
    directory = Path(tempfile.mkdtemp(prefix="stream-memory-"))
    profile = directory / "p.json"
    profile.write_text(json.dumps({"name": "mem", "baseUrl": upstream.url}))
    router = RouterProcess(profile, workers=1, env={"API_ROUTER_ACCESS_LOG": "false"})
    try:
        router.start()
        assert router.proc is not None
        pids = [int(p) for p in re.findall(r"Starting worker \[(\d+)\]", router.output())]
        (pid,) = pids  # the worker, not the primary
        # Warm-up: the first requests load code and fill pools.
        asyncio.run(measure(router, pid, 20, 2.0))
        result = asyncio.run(measure(router, pid, args.streams, args.hold))
    finally:
        router.close()
        upstream.stop()
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
