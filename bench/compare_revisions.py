"""Worker CPU per request of the working tree against a git revision or a setting, one scenario.

    .cache/bench-venv/bin/python bench/compare_revisions.py [--base HEAD] [--scenario sse64]
                                                            [--connections N] [--rounds 5]
                                                            [--workers 1] [--processes 1]

How a change to the relay or the request path is measured before it is kept: the revision
`--base` is checked out into .cache/bench-base/<sha> (a git worktree, reused), and one
api-router with 1 worker (`--workers N`: N, their CPU summed; what the workers share, such as
the rate-limit table, costs more with two busy ones) is started from it and one from the working
tree, both on the same fake upstream (bench/run.py's nginx + paced Node upstream), both running
at once. In each round each gets one wrk run of the scenario (bench/run.py's `json64`, `sse64`
burst, `ssepaced`; the order alternates from round to round); its workers' CPU time over the
run divided by the requests answered is its CPU per request. Printed: per side the median and
range over the rounds, the median over rounds of (tree - base) in the same round, and
requests/s. Same method as
bench/fastpath_cost.py. `--processes N` starts N routers per side (started and measured
alternately, base and tree): a process's own luck (its memory layout, its hash seed) moves its
CPU per request by up to ~50 us on the same code on this kind of machine (bench/README, "Fast
paths"), so a difference smaller than that needs several processes per side; a side's figure in a
round is then the mean over its processes, and each process's median is printed too.
`--base . --base-env K=V` compares the tree with itself under a different environment (one fast
path off, for instance). Loopback only; everything started is
stopped by its pid.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
import fastpath_cost  # noqa: E402
import run  # noqa: E402


def worktree(rev: str) -> Path:
    sha = subprocess.run(
        ["git", "-C", str(run.ROOT), "rev-parse", rev], capture_output=True, text=True, check=True
    ).stdout.strip()
    path = run.CACHE / "bench-base" / sha
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            ["git", "-C", str(run.ROOT), "worktree", "add", "--detach", str(path), sha],
            capture_output=True,
            check=True,
        )
    return path


def routing(up_port: int, scratch: Path, scenario: str) -> Path:
    """bench/run.py's routing file; for the SSE scenarios one route whose upstream streams
    (the fake upstream's `/sse/` base, paced when wrk asks)."""
    if scenario not in ("sse64", "ssepaced"):
        return run.routing_file(up_port, scratch)
    data = {
        "name": "bench-routing-sse",
        "upstreams": {"a": {"baseUrl": f"http://127.0.0.1:{up_port}/sse"}},
        "modelRoutes": [
            {"match": "bench-model", "targets": [{"upstream": "a", "model": "upstream-model"}]}
        ],
        "rateLimit": {"requestsPerMinute": 1e9, "burst": 1_000_000_000},
    }
    path = scratch / "router-routing-sse.json"
    path.write_text(json.dumps(data))
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--base", default="HEAD", help="the git revision to compare against ('.': the tree)"
    )
    ap.add_argument(
        "--base-env",
        action="append",
        default=[],
        help="K=V for the base side's router (e.g. API_ROUTER_FAST_PATHS=... with --base .)",
    )
    ap.add_argument("--scenario", default="sse64", choices=sorted(run.SCENARIOS))
    ap.add_argument("--connections", type=int, default=0, help="0: the scenario's own")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--processes", type=int, default=1, help="routers per side")
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--sse-gap-ms", type=float, default=run.DEFAULT_SSE_GAP_MS)
    ap.add_argument(
        "--routing", action="store_true", help="both routers on bench/run.py's routing file"
    )
    a = ap.parse_args()
    sides = {"base": run.ROOT if a.base == "." else worktree(a.base), "tree": run.ROOT}
    envs = {"base": dict(kv.split("=", 1) for kv in a.base_env), "tree": {}}
    # per side, per process: one measurement per round
    results: dict[str, list[list[dict[str, Any]]]] = {
        name: [[] for _ in range(a.processes)] for name in sides
    }
    load_before = run.loadavg()
    with run.scratch(True) as scratch:
        bodies = run.write_bodies(scratch)
        up_port = run.free_port()
        upstreams = run.start_upstream(scratch, up_port, a.sse_gap_ms)
        started: list[tuple[str, int, run.Target, list[int]]] = []
        try:
            for p, (name, root) in ((p, s) for p in range(a.processes) for s in sides.items()):
                t = run.Target(f"router-{name}-{p}", "transport", name)
                config = routing(up_port, scratch, a.scenario) if a.routing else None
                env = {"PYTHONPATH": str(root), **envs[name]}
                run.start_router(t, a.workers, up_port, scratch, env, config=config)
                if a.routing and a.scenario in ("sse64", "ssepaced"):
                    t.sse_path = "/v1/chat/completions"  # to the upstream's /sse/ base
                assert t.server is not None
                problem = run.check(t, a.scenario, bodies)
                if problem is not None:
                    raise RuntimeError(f"{name}: {problem}")
                workers = run.worker_pids(t.server.proc.pid, t.port)
                if len(workers) != a.workers:
                    raise RuntimeError(f"{name}: {len(workers)} workers found, not {a.workers}")
                started.append((name, p, t, workers))
                run.wrk(t, a.scenario, bodies, 2, connections=a.connections or None)  # warm-up
            for i in range(a.rounds):
                for name, p, t, workers in started if i % 2 == 0 else started[::-1]:
                    results[name][p].append(
                        fastpath_cost.measure(
                            t, workers, bodies, a.seconds, a.scenario, a.connections or None
                        )
                    )
                print(f"round {i + 1}/{a.rounds} done", file=sys.stderr)
        finally:
            for _, _, t, _ in started:
                if t.server is not None:
                    t.server.stop()
            for u in upstreams:
                u.stop()
    print("| side | CPU per request, us: median (range) | minus base (median) | req/s |")
    print("| --- | --- | --- | --- |")

    def per_round(name: str, key: str) -> list[float]:  # the mean over the side's processes
        return [statistics.fmean(x[key] for x in rows) for rows in zip(*results[name], strict=True)]

    for name in sides:
        cpu = per_round(name, "cpu_us")
        diff = [r - b for r, b in zip(cpu, per_round("base", "cpu_us"), strict=True)]
        print(
            f"| {name} | {statistics.median(cpu):.0f} ({min(cpu):.0f}-{max(cpu):.0f}) "
            f"| {statistics.median(diff):+.1f} "
            f"| {statistics.median(per_round(name, 'rps')):,.0f} |"
        )
    if a.processes > 1:
        for name in sides:
            medians = [statistics.median(r["cpu_us"] for r in rows) for rows in results[name]]
            print(f"\n{name}: each process's median, us: " + ", ".join(f"{m:.0f}" for m in medians))
    print(
        f"\n{a.scenario}{' (routing file)' if a.routing else ''}, "
        f"{a.connections or 'its own'} connections, {a.processes} router(s) per side, "
        f"{a.workers} worker(s) each, "
        f"{a.rounds} rounds of "
        f"{a.seconds:g} s, base {a.base} {envs['base'] or ''}; load average before {load_before}, "
        f"after {run.loadavg()}"
    )


if __name__ == "__main__":
    main()
