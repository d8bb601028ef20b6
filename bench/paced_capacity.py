"""How many paced SSE streams at once before a configuration falls behind the pacing.

    .cache/bench-venv/bin/python bench/paced_capacity.py [--connections 256,1024,2048]
                                                         [--rounds 3] [--duration 5]

At 64 connections (`make bench`'s paced scenario) every configuration runs at the pacing's own
ceiling, so that scenario shows that the relay keeps up, not how much it can hold. This runs the
same paced stream (22 events, one every --sse-gap-ms) at growing connection counts for direct,
nginx and api-router 2 workers (all features on), in interleaved rounds, and writes
bench/results/<date>-paced-capacity.{json,md}: streams/s, the ratio to nginx in the same round,
and the time per whole stream (p50/p99), whose growth past the pacing is where a configuration
saturates. Loopback only, every wrk run bounded; everything started is stopped by pid.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import report
import run


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--connections", default=run.DEFAULT_CAPACITY)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--duration", type=float, default=5.0)
    p.add_argument("--sse-gap-ms", type=float, default=10.0)
    p.add_argument("--out", type=Path, default=run.BENCH / "results")
    a = p.parse_args()
    conns = [int(c) for c in a.connections.split(",")]
    with run.scratch(False) as scratch:
        bodies = run.write_bodies(scratch)
        upstream, targets = run.start_all(scratch, False, set(run.CAPACITY_CONFIGS), a.sse_gap_ms)
        try:
            runs = run.capacity(targets, bodies, conns, a.rounds, a.duration)
        finally:
            for t in targets:
                if t.server is not None:
                    t.server.stop()
            for s in upstream:
                s.stop()
    rows = report.capacity_rows(runs)
    date = time.strftime("%Y-%m-%d")
    a.out.mkdir(parents=True, exist_ok=True)
    meta = {
        "machine": run.machine(),
        "loadavg_after": run.loadavg(),
        "args": vars(a) | {"out": str(a.out)},
    }
    (a.out / f"{date}-paced-capacity.json").write_text(
        json.dumps({"meta": meta, "runs": runs, "rows": rows}, indent=2)
    )
    lines = [
        f"# Paced SSE capacity {date}",
        "",
        f"{meta['machine']['cpu']}, {meta['machine']['cores']} cores. 22 events per stream, one "
        f"every {a.sse_gap_ms:g} ms; {a.rounds} interleaved rounds x {a.duration:g} s per wrk "
        "run; median (min-max). `bench/paced_capacity.py`.",
        "",
        *report.capacity_lines(rows),
    ]
    (a.out / f"{date}-paced-capacity.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
