"""Where a router worker's time goes under load: py-spy samples one worker while wrk drives it.

    .cache/bench-venv/bin/python bench/profile.py [--scenario json64] [--seconds 10] [--env K=V]
                                                  [--connections N] [--routing] [--perf]

Starts the fake upstream and api-router with one worker (all features on, as bench/run.py does),
runs wrk for the scenario, records the worker with `py-spy record` (bench venv) and prints the
functions with the most samples, by own time and by total time (including callees), and the
requests/s wrk saw (to compare two profiles per request: samples / (requests/s x seconds);
`--routing` serves bench/run.py's routing file of 50 routes instead of the profile). The raw
collapsed stacks are kept in .cache/bench-profile/<scenario>.txt (flame graph input).
`--perf` records the worker with Linux `perf` instead (CPU time, user and kernel, by shared object
and symbol; Python's own frames are all in the interpreter's binary): how much of the worker's
time the kernel spends on its system calls, which py-spy folds into the Python line that made
them (needs `perf` on the machine; the report is kept in .cache/bench-profile/<scenario>.perf.txt).
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


def perf_profile(pid: int, seconds: int, out: Path) -> str:
    """`perf record` of `pid` for `seconds`, and the report: CPU samples by shared object, then
    the symbols with the most samples (the kernel's and the libraries'; Python's own code shows
    as the interpreter's functions)."""
    data = out.with_suffix(".data")
    subprocess.run(
        [
            "perf",
            "record",
            "-F",
            "999",
            "-o",
            str(data),
            "-p",
            str(pid),
            "--",
            "sleep",
            str(seconds),
        ],
        check=True,
        capture_output=True,
        timeout=seconds + 60,
    )

    def report(*sort: str) -> str:
        return subprocess.run(
            [
                "perf",
                "report",
                "-i",
                str(data),
                "--stdio",
                "--percent-limit",
                "0.7",
                "--sort",
                *sort,
            ],
            check=True,
            capture_output=True,
            text=True,
            timeout=120,
        ).stdout

    text = report("dso") + report("dso,sym")
    out.with_suffix(".perf.txt").write_text(text)
    return "\n".join(line for line in text.splitlines() if line and not line.startswith("#"))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scenario", default="json64", choices=sorted(run.SCENARIOS))
    p.add_argument("--seconds", type=int, default=10)
    p.add_argument("--top", type=int, default=40)
    p.add_argument("--env", action="append", default=[], help="router environment, K=V")
    p.add_argument("--sse-gap-ms", type=float, default=run.DEFAULT_SSE_GAP_MS)
    p.add_argument("--connections", type=int, default=None, help="wrk connections")
    p.add_argument("--routing", action="store_true", help="serve bench/run.py's routing file")
    p.add_argument("--perf", action="store_true", help="Linux perf instead of py-spy")
    p.add_argument(
        "--gil",
        action="store_true",
        help="py-spy samples only while the worker holds the GIL (its Python CPU, without the"
        " time it waits to run again after a system call)",
    )
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
            if a.perf:
                report = perf_profile(worker, a.seconds, out_dir / f"{a.scenario}.perf")
            else:
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
                        *(["--gil"] if a.gil else []),
                    ],
                    check=True,
                    capture_output=True,
                    timeout=a.seconds + 60,
                )
                report = top(collapsed, a.top)
            load.join()
        finally:
            if t.server is not None:
                t.server.stop()
            for u in upstreams:
                u.stop()
    print(report)
    if result:
        print(f"\nwrk: {result['rps']:,.0f} requests/s over the run")


if __name__ == "__main__":
    main()
