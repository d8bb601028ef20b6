"""Where a router worker's time goes under load: py-spy samples one worker while wrk drives it.

    .cache/bench-venv/bin/python bench/profile.py [--scenario json64] [--seconds 10] [--env K=V]
                                                  [--connections N] [--routing]

Starts the fake upstream and api-router with one worker (all features on, as bench/run.py does),
runs wrk for the scenario, records the worker with `py-spy record` (bench venv) and prints the
functions with the most samples, by own time and by total time (including callees), and the
requests/s wrk saw (to compare two profiles per request: samples / (requests/s x seconds);
`--routing` serves bench/run.py's routing file of 50 routes instead of the profile). The raw
collapsed stacks are kept in .cache/bench-profile/<scenario>.txt (flame graph input).
Loopback only; wrk and py-spy are bounded by --seconds; everything started is stopped by pid.
"""

from __future__ import annotations

import argparse
import collections
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run


def top(collapsed: Path, n: int) -> str:
    own: collections.Counter[str] = collections.Counter()
    total: collections.Counter[str] = collections.Counter()
    samples = 0
    for line in collapsed.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        c = int(count)
        samples += c
        frames = stack.split(";")
        own[frames[-1]] += c
        for f in set(frames):
            total[f] += c
    out = [f"{samples} samples", "", "own time:"]
    out += [f"  {100 * c / samples:5.1f}%  {f}" for f, c in own.most_common(n)]
    out += ["", "total time (with callees):"]
    out += [f"  {100 * c / samples:5.1f}%  {f}" for f, c in total.most_common(n)]
    return "\n".join(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scenario", default="json64", choices=sorted(run.SCENARIOS))
    p.add_argument("--seconds", type=int, default=10)
    p.add_argument("--top", type=int, default=40)
    p.add_argument("--env", action="append", default=[], help="router environment, K=V")
    p.add_argument("--sse-gap-ms", type=float, default=run.DEFAULT_SSE_GAP_MS)
    p.add_argument("--connections", type=int, default=None, help="wrk connections")
    p.add_argument("--routing", action="store_true", help="serve bench/run.py's routing file")
    a = p.parse_args()
    env = dict(kv.split("=", 1) for kv in a.env)
    out_dir = run.CACHE / "bench-profile"
    out_dir.mkdir(parents=True, exist_ok=True)
    collapsed = out_dir / f"{a.scenario}.txt"
    with run.scratch(True) as scratch:
        bodies = run.write_bodies(scratch)
        up_port = run.free_port()
        upstreams = run.start_upstream(scratch, up_port, a.sse_gap_ms)
        t = run.Target("router-1w", "main", "profiled")
        try:
            config = run.routing_file(up_port, scratch) if a.routing else None
            run.start_router(t, 1, up_port, scratch, env, config)
            assert t.server is not None
            worker = run.worker_pids(t.server.proc.pid, t.port)[0]
            result: dict[str, Any] = {}
            load = threading.Thread(
                target=lambda: result.update(
                    run.wrk(t, a.scenario, bodies, a.seconds + 2, connections=a.connections)
                )
            )
            load.start()
            time.sleep(1)
            subprocess.run(
                [
                    str(run.BENCH_VENV / "bin" / "py-spy"),
                    "record",
                    "--pid",
                    str(worker),
                    "--duration",
                    str(a.seconds),
                    "--rate",
                    "200",
                    "--format",
                    "raw",
                    "--output",
                    str(collapsed),
                    "--nonblocking",
                ],
                check=True,
                capture_output=True,
                timeout=a.seconds + 60,
            )
            load.join()
        finally:
            if t.server is not None:
                t.server.stop()
            for u in upstreams:
                u.stop()
    print(top(collapsed, a.top))
    if result:
        print(f"\nwrk: {result['rps']:,.0f} requests/s over the run")


if __name__ == "__main__":
    main()
