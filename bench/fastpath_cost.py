"""Worker CPU per request with the fast paths on, off, and each one off (API_ROUTER_FAST_PATHS).

    .venv/bin/python bench/fastpath_cost.py [--rounds 5] [--seconds 5] [--warmup 2]

Starts the fake upstream (nginx answering a chat completion from memory, as bench/run.py does)
and one api-router per mode, 1 worker each, all features on (JSON completion lines written to
/dev/null, multiprocess metrics, a profile rate limit that never rejects), all running at once
(an idle router costs nothing). The modes: every fast path on (`all`), every one off (`0`), and
each one off alone (the others named). In each round every mode, in an order rotated from round
to round, gets one wrk run of JSON POSTs at 64 connections (bench/run.py's `json64` scenario),
bounded by --seconds; its worker's CPU time over the run (utime + stime from /proc/<pid>/stat)
divided by the requests answered is its CPU per request. Printed: per mode the median and range
over the rounds, the median over rounds of (mode - all on) in the same round, req/s, and the
load average before and after (the machine's other work weighs on both sides of a difference).

Needs wrk, nginx and Node.js (bench/setup.sh installs them). Loopback only; every process it
starts is stopped by its pid. bench/README.md ("Fast paths") says what each fast path is.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(BENCH.parent))
import run  # noqa: E402

from service.settings import FAST_PATH_NAMES, FAST_PATHS_ENV  # noqa: E402

SCENARIO = "json64"
CLK_TCK = os.sysconf("SC_CLK_TCK")


def modes() -> list[tuple[str, str]]:
    """(label, API_ROUTER_FAST_PATHS value): all on, all off, then each one off."""
    out = [("all on", "all"), ("all off", "0")]
    for name in FAST_PATH_NAMES:
        out.append((f"{name} off", ",".join(n for n in FAST_PATH_NAMES if n != name)))
    return out


def cpu_secs(pid: int) -> float:
    """utime + stime of `pid`, in seconds (/proc/<pid>/stat fields 14 and 15)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) "; fields[0] is field 3
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def measure(
    t: run.Target,
    worker: int | list[int],
    bodies: dict[str, Path],
    secs: float,
    scenario: str = SCENARIO,
    connections: int | None = None,
) -> dict[str, Any]:
    """One wrk run of `scenario`: the CPU time of the worker (or workers) over it per request
    answered."""
    workers = worker if isinstance(worker, list) else [worker]
    before = sum(cpu_secs(w) for w in workers)
    r = run.wrk(t, scenario, bodies, secs, connections=connections)
    used = sum(cpu_secs(w) for w in workers) - before
    if r["errors"] or not r["requests"]:
        raise RuntimeError(f"{t.name}: {r['errors']} errors, {r['requests']} requests")
    return {"cpu_us": used / r["requests"] * 1e6, "rps": r["rps"], "requests": r["requests"]}


def table(results: dict[str, list[dict[str, Any]]], labels: list[tuple[str, str]]) -> str:
    base = results["all on"]
    lines = [
        f"| mode | {FAST_PATHS_ENV} | CPU per request, us: median (range) "
        "| minus all on, us (median of rounds) | req/s (median) |",
        "| --- | --- | --- | --- | --- |",
    ]
    for label, value in labels:
        rows = results[label]
        cpu = [r["cpu_us"] for r in rows]
        diff = [r["cpu_us"] - b["cpu_us"] for r, b in zip(rows, base, strict=True)]
        rps = statistics.median(r["rps"] for r in rows)
        lines.append(
            f"| {label} | `{value}` | {statistics.median(cpu):.0f} ({min(cpu):.0f}-{max(cpu):.0f})"
            f" | {statistics.median(diff):+.1f} | {rps:,.0f} |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=5.0, help="wrk run per mode and round")
    ap.add_argument("--warmup", type=float, default=2.0, help="one wrk run per mode first")
    a = ap.parse_args()
    labels = modes()
    load_before = run.loadavg()
    results: dict[str, list[dict[str, Any]]] = {label: [] for label, _ in labels}
    with run.scratch(True) as scratch:
        bodies = run.write_bodies(scratch)
        up_port = run.free_port()
        upstreams = run.start_upstream(scratch, up_port, run.DEFAULT_SSE_GAP_MS)
        started: list[run.Target] = []  # stopped at the end, whatever happens
        targets: list[tuple[str, run.Target, int]] = []
        try:
            for label, value in labels:
                t = run.Target(f"router-{value.replace(',', '+')}", "transport", label)
                started.append(t)
                run.start_router(t, 1, up_port, scratch, {FAST_PATHS_ENV: value})
                assert t.server is not None
                problem = run.check(t, SCENARIO, bodies)  # answered: the worker is up
                if problem is not None:
                    raise RuntimeError(f"{label}: {problem}")
                (worker,) = run.worker_pids(t.server.proc.pid, t.port)
                targets.append((label, t, worker))
            for _, t, _ in targets:
                if a.warmup > 0:
                    run.wrk(t, SCENARIO, bodies, a.warmup)
            for i in range(a.rounds):
                order = targets[i % len(targets) :] + targets[: i % len(targets)]
                for label, t, worker in order:
                    results[label].append(measure(t, worker, bodies, a.seconds))
                print(f"round {i + 1}/{a.rounds} done", file=sys.stderr)
        finally:
            for t in started:
                if t.server is not None:
                    t.server.stop()
            for u in upstreams:
                u.stop()
    print(table(results, labels))
    print()
    print(
        f"{a.rounds} interleaved rounds of {a.seconds:g} s per mode (json64: 64 connections, "
        f"1 worker); load average before {load_before}, after {run.loadavg()}; "
        f"{os.cpu_count()} CPUs"
    )
    print("per round, CPU per request (us):")
    for label, _ in labels:
        print(f"  {label:14} " + " ".join(f"{r['cpu_us']:6.0f}" for r in results[label]))


if __name__ == "__main__":
    main()
