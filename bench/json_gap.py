"""Worker CPU per JSON request: the minimal Sanic relays beside the router with its features on,
off, and off without a rate limit (where issue 20's JSON target stands, and why).

    .cache/bench-venv/bin/python bench/json_gap.py [--rounds 7] [--seconds 5] [--workers 1]
        [--processes 1]

Starts the fake upstream (bench/run.py's nginx) and, all at once (an idle server costs nothing):
bench/minimal_proxy.py on plain aiohttp (issue 20's reference) and on httpx with the router's own
transport handed the request directly (`httpx-h1-direct`); api-router with all features on (as
`make bench` runs it: JSON completion lines, multiprocess metrics, a profile rate limit that never
rejects); the same with `API_ROUTER_METRICS=false API_ROUTER_ACCESS_LOG=false`; and that on the
same profile without its `rateLimit` (no decision at all). In each round each gets one wrk run of
bench/run.py's `json64` scenario, in an order reversed every other round; its workers' CPU time
over the run divided by the requests answered is its CPU per request. Printed: per configuration
the median and range over the rounds and req/s, and per configuration the median over rounds of
its difference to the aiohttp relay in the same round. `--processes N` starts N servers of each
configuration and takes, per round, the mean over them: two processes of the same code and
settings differ by up to ~50 us per request on this machine (bench/README.md, "Fast paths"),
more than some of the differences measured here.

The machine's other work moves every figure between runs (bench/README.md, "Results"): read
the differences within one run. Loopback only; every process it starts is stopped by its pid.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
import fastpath_cost  # noqa: E402
import run  # noqa: E402

OFF = {"API_ROUTER_METRICS": "false", "API_ROUTER_ACCESS_LOG": "false"}
REFERENCE = "minimal-aiohttp"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--processes", type=int, default=1, help="servers per configuration")
    a = ap.parse_args()
    results: dict[str, list[dict[str, Any]]] = {}
    load_before = run.loadavg()
    with run.scratch(True) as scratch:
        bodies = run.write_bodies(scratch)
        up_port = run.free_port()
        upstreams = run.start_upstream(scratch, up_port, run.DEFAULT_SSE_GAP_MS)
        profile = json.loads(run.router_profile(up_port, scratch).read_text())
        del profile["rateLimit"]
        unlimited = scratch / "router-profile-unlimited.json"
        unlimited.write_text(json.dumps(profile))
        # (configuration, its server, the server's worker pids)
        started: list[tuple[str, run.Target, list[int]]] = []
        try:
            base = f"http://127.0.0.1:{up_port}"
            for k in range(a.processes):
                for client in ("aiohttp", "httpx-h1-direct"):
                    name = f"minimal-{client}"
                    own = name if k == 0 else f"{name}-{k}"  # (its log file's name)
                    t = run.Target(own, "transport", f"minimal Sanic relay, {client}")
                    run.start_minimal(t, client, base, scratch, a.workers)
                    started.append((name, t, []))
                for name, env, config in (
                    ("router, all on", {}, None),
                    ("router, metrics+logs off", OFF, None),
                    ("router, metrics+logs off, no rate limit", OFF, unlimited),
                ):
                    t = run.Target(name if k == 0 else f"{name}-{k}", "transport", name)
                    run.start_router(t, a.workers, up_port, scratch, env, config=config)
                    started.append((name, t, []))
            for _, t, workers in started:
                assert t.server is not None
                workers.extend(run.worker_pids(t.server.proc.pid, t.port))
                if len(workers) != a.workers:
                    raise RuntimeError(f"{t.name}: {len(workers)} workers, not {a.workers}")
                problem = run.check(t, "json64", bodies)
                if problem is not None:
                    raise RuntimeError(f"{t.name}: {problem}")
                run.wrk(t, "json64", bodies, 2)  # warm-up
            for i in range(a.rounds):
                measured: dict[str, list[dict[str, Any]]] = {}
                for name, t, workers in started if i % 2 == 0 else started[::-1]:
                    measured.setdefault(name, []).append(
                        fastpath_cost.measure(t, workers, bodies, a.seconds, "json64")
                    )
                for name, rs in measured.items():  # the round's mean over the processes
                    results.setdefault(name, []).append(
                        {k: statistics.fmean(r[k] for r in rs) for k in ("cpu_us", "rps")}
                    )
                print(f"round {i + 1}/{a.rounds} done", file=sys.stderr)
        finally:
            for _, t, _ in started:
                if t.server is not None:
                    t.server.stop()
            for u in upstreams:
                u.stop()
    ref = results[REFERENCE]
    print(
        "| configuration | CPU per request, us: median (range) | minus the aiohttp relay | req/s |"
    )
    print("| --- | --- | --- | --- |")
    for name, rs in results.items():
        cpu = [r["cpu_us"] for r in rs]
        diff = [r["cpu_us"] - b["cpu_us"] for r, b in zip(rs, ref, strict=True)]
        print(
            f"| {name} | {statistics.median(cpu):.0f} ({min(cpu):.0f}-{max(cpu):.0f}) "
            f"| {statistics.median(diff):+.1f} | {statistics.median(r['rps'] for r in rs):,.0f} |"
        )
    print(
        f"\njson64, {a.workers} worker(s) each, {a.processes} process(es) per configuration,"
        f" {a.rounds} rounds of {a.seconds:g} s; load average"
        f" before {load_before}, after {run.loadavg()}"
    )


if __name__ == "__main__":
    main()
