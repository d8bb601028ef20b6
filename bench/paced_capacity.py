"""How many paced SSE streams at once before a configuration falls behind the pacing.

    .cache/bench-venv/bin/python bench/paced_capacity.py [--connections 64,256,512,1024]
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
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run

CONFIGS = ("direct", "nginx", "router-2w")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--connections", default="64,256,512,1024")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--duration", type=float, default=5.0)
    p.add_argument("--sse-gap-ms", type=float, default=10.0)
    p.add_argument("--out", type=Path, default=run.BENCH / "results")
    a = p.parse_args()
    conns = [int(c) for c in a.connections.split(",")]
    results: dict[str, dict[int, list[dict[str, Any]]]] = {
        c: {n: [] for n in conns} for c in CONFIGS
    }
    with run.scratch(False) as scratch:
        bodies = run.write_bodies(scratch)
        upstream, targets = run.start_all(scratch, False, set(CONFIGS), a.sse_gap_ms)
        try:
            ts = [t for t in targets if t.status == "ok"]
            for rnd in range(a.rounds):
                for n in conns:
                    order = ts[rnd % len(ts) :] + ts[: rnd % len(ts)]
                    for t in order:
                        r = run.wrk(t, "ssepaced", bodies, a.duration, connections=n)
                        results[t.name][n].append(r)
                        print(
                            f"paced: round {rnd + 1} {t.name:10} {n:5} conn "
                            f"{r['ok_rps']:7.0f} streams/s p50 {r['p50_us'] / 1000:7.1f} ms "
                            f"p99 {r['p99_us'] / 1000:7.1f} ms errors {r['errors']}",
                            file=sys.stderr,
                        )
        finally:
            for t in targets:
                if t.server is not None:
                    t.server.stop()
            for s in upstream:
                s.stop()
    rows = []
    for n in conns:
        for name in CONFIGS:
            runs = results[name][n]
            if not runs:
                continue
            ratio = [
                r["ok_rps"] / g["ok_rps"]
                for r, g in zip(runs, results["nginx"][n], strict=False)
                if g["ok_rps"]
            ]
            rows.append(
                {
                    "connections": n,
                    "config": name,
                    "streams_per_s": statistics.median(r["ok_rps"] for r in runs),
                    "range": [min(r["ok_rps"] for r in runs), max(r["ok_rps"] for r in runs)],
                    "x_nginx": statistics.median(ratio) if ratio else None,
                    "x_nginx_range": [min(ratio), max(ratio)] if ratio else None,
                    "p50_ms": statistics.median(r["p50_us"] for r in runs) / 1000,
                    "p99_ms": statistics.median(r["p99_us"] for r in runs) / 1000,
                    "errors": sum(r["errors"] for r in runs),
                }
            )
    date = time.strftime("%Y-%m-%d")
    a.out.mkdir(parents=True, exist_ok=True)
    meta = {
        "machine": run.machine(),
        "loadavg_after": run.loadavg(),
        "args": vars(a) | {"out": str(a.out)},
    }
    (a.out / f"{date}-paced-capacity.json").write_text(
        json.dumps({"meta": meta, "rows": rows}, indent=2)
    )
    lines = [
        f"# Paced SSE capacity {date}",
        "",
        f"22 events per stream, one every {a.sse_gap_ms:g} ms; {a.rounds} interleaved rounds x "
        f"{a.duration:g} s per wrk run; median (min-max). `bench/paced_capacity.py`.",
        "",
        "| connections | configuration | streams/s | x nginx | stream time p50 / p99 ms | errors |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        x = (
            f"{r['x_nginx']:.3f} ({r['x_nginx_range'][0]:.3f}-{r['x_nginx_range'][1]:.3f})"
            if r["x_nginx"] is not None
            else "—"
        )
        lines.append(
            f"| {r['connections']} | {r['config']} | {r['streams_per_s']:,.0f} "
            f"({r['range'][0]:,.0f}-{r['range'][1]:,.0f}) | {x} | "
            f"{r['p50_ms']:.1f} / {r['p99_ms']:.1f} | {r['errors']} |"
        )
    (a.out / f"{date}-paced-capacity.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
