"""The results writer: summary (median and range over rounds), the targets of issues 7 and 14,
and the three outputs `<date>.json`, `<date>.md` (the tables docs/performance.md quotes) and
`<date>.png`.

    .cache/bench-venv/bin/python bench/report.py bench/results/<date>.json   # rewrite md + png

Ratios are taken per round (every configuration ran once per round, interleaved) and their
median and range are reported, so a slow moment of the machine weighs on both sides of a ratio.

The JSON target is judged against the minimal Sanic relay on plain aiohttp of the same run (the
Python ceiling: >= 0.6 x, aim 0.9 x); the ratio to nginx is reported beside it, not judged, since
a C server gains more from a faster core than Python does. Every result records the CPU model.

The SSE target (streams/s >= 0.8 x nginx) is judged on the paced scenario (`ssepaced`: one event
every few ms, as a model streams tokens), because that is what an LLM stream is; the burst
scenario (`sse64`: the whole stream at once) measures the relay's CPU per stream and event
(issue 20: >= 0.15 x nginx, aim 0.25). Issue 20 also judges paced capacity (`run.capacity`:
the paced stream at 256, 1,024 and 2,048 streams at once; at 1,024 >= 0.8 x nginx, zero errors
at 2,048) and JSON against the minimal relay at >= 0.8 x.
"""

from __future__ import annotations

import json
import statistics
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROUTER = "router-2w"
MINIMAL_REFERENCE = "minimal-aiohttp"
# Sanic answering from memory, no upstream request: the floor of any relay on Sanic (issue 20)
SANIC_ALONE = "minimal-none"
# The httpx-based paths on the same hot path as the plain-aiohttp reference (minimal proxy).
HTTPX_PATHS = (
    "minimal-httpx",
    "minimal-httpx-aiohttp",
    "minimal-httpx-h1",
    "minimal-httpx-h1-direct",
)
# The router on each upstream engine (issue 15); router-2w is the default engine, h1.
ENGINE_ROWS = (
    "router-2w",
    "router-2w-aiohttp",
    "router-2w-httpx",
    "router-2w-pyreqwest",
    "router-2w-pyreqwest-h2",
)
TRANSPORT_ROWS = (
    *ENGINE_ROWS,
    *HTTPX_PATHS,
    MINIMAL_REFERENCE,
    SANIC_ALONE,
)


def best_httpx_by_round(runs: list[dict[str, Any]]) -> dict[int, tuple[str, float]]:
    """Per round: the fastest httpx-based minimal proxy (JSON 64 conn req/s) and its rate."""
    best: dict[int, tuple[str, float]] = {}
    for name in HTTPX_PATHS:
        for rnd, v in _by_round(runs, name, "json64", "ok_rps").items():
            if rnd not in best or v > best[rnd][1]:
                best[rnd] = (name, v)
    return best


def _stat(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def _by_round(runs: list[dict[str, Any]], config: str, scenario: str, key: str) -> dict[int, float]:
    return {
        r["round"]: r[key]
        for r in runs
        if r["config"] == config and r["scenario"] == scenario and r.get(key) is not None
    }


def summarise(results: dict[str, Any]) -> dict[str, Any]:
    runs = results["runs"]
    out: dict[str, Any] = {}
    for name in results["configs"]:
        per: dict[str, Any] = {}
        for sc in [*results["scenarios"], "ttfb"]:
            mine = [r for r in runs if r["config"] == name and r["scenario"] == sc]
            if not mine:
                continue
            if sc == "ttfb":
                per[sc] = {
                    "p50_us": _stat([r["p50_us"] for r in mine if "p50_us" in r]),
                    "p99_us": _stat([r["p99_us"] for r in mine if "p99_us" in r]),
                    "errors": sum(r["errors"] for r in mine),
                }
                continue
            per[sc] = {
                "rps": _stat([r["ok_rps"] for r in mine]),
                "p50_us": _stat([r["p50_us"] for r in mine]),
                "p99_us": _stat([r["p99_us"] for r in mine]),
                "errors": sum(r["errors"] for r in mine),
                "requests": sum(r["requests"] for r in mine),
            }
        out[name] = per
    return out


def ratio(
    runs: list[dict[str, Any]],
    a: str,
    b: str,
    scenario: str,
    key: str,
    op: Callable[[float, float], float],
) -> dict[str, float] | None:
    """`op(a, b)` in each round where both ran; median and range."""
    ra, rb = _by_round(runs, a, scenario, key), _by_round(runs, b, scenario, key)
    return _stat([op(ra[k], rb[k]) for k in ra if rb.get(k)])


def capacity_rows(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The paced-capacity runs (run.capacity) per connection count and configuration: streams/s
    and its ratio to nginx in the same round (median, range), stream time, errors summed."""
    rows = []
    for n in sorted({r["connections"] for r in runs}):
        at_n = [r for r in runs if r["connections"] == n]
        nginx = {r["round"]: r["ok_rps"] for r in at_n if r["config"] == "nginx"}
        for name in dict.fromkeys(r["config"] for r in at_n):
            mine = [r for r in at_n if r["config"] == name]
            x = _stat([r["ok_rps"] / nginx[r["round"]] for r in mine if nginx.get(r["round"])])
            rows.append(
                {
                    "connections": n,
                    "config": name,
                    "streams_per_s": _stat([r["ok_rps"] for r in mine]),
                    "x_nginx": x,
                    "p50_ms": statistics.median(r["p50_us"] for r in mine) / 1000,
                    "p99_ms": statistics.median(r["p99_us"] for r in mine) / 1000,
                    "errors": sum(r["errors"] for r in mine),
                }
            )
    return rows


def capacity_lines(rows: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| streams at once | configuration | streams/s | x nginx | stream time p50 / p99 ms "
        "| errors |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['connections']:,} | {r['config']} | {_fmt(r['streams_per_s'])} "
            f"| {_fmt(r['x_nginx'], 3) if r['config'] != 'nginx' else '1'} "
            f"| {r['p50_ms']:.1f} / {r['p99_ms']:.1f} | {r['errors']} |"
        )
    return lines


def capacity_table(results: dict[str, Any]) -> list[str]:
    rows = capacity_rows(results.get("capacity") or [])
    if not rows:
        return []
    gap = results["meta"].get("sse_gap_ms")
    return [
        "## Paced SSE capacity (issue 20)",
        "",
        f"The paced stream ({results['meta']['events_per_stream']} events, one every {gap:g} ms) "
        "with this many streams open at once (wrk connections), after the scenario rounds, "
        "the same number of interleaved rounds. Stream time is wrk's latency of a whole "
        "stream; its growth past the pacing shows where a configuration falls behind.",
        "",
        *capacity_lines(rows),
        "",
    ]


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    runs, s = results["runs"], results["summary"]
    div: Callable[[float, float], float] = lambda x, y: x / y  # noqa: E731
    sub: Callable[[float, float], float] = lambda x, y: x - y  # noqa: E731
    out: list[dict[str, Any]] = []

    def add(
        what: str,
        value: dict[str, float] | None,
        limit: float | None,  # None: a figure reported beside the targets, with no limit
        higher: bool,
        unit: str,
        aim: float | None = None,
        judged: bool = True,
    ) -> None:
        holds = None
        if value is not None and limit is not None:
            holds = value["median"] >= limit if higher else value["median"] <= limit
        out.append(
            {
                "target": what,
                "value": value,
                "limit": limit,
                "aim": aim,
                "higher_is_better": higher,
                "unit": unit,
                "holds": holds,
                "judged": judged,
            }
        )

    # The JSON target is judged against the Python ceiling measured in the same run (the minimal
    # Sanic relay on plain aiohttp): C gains more from a faster core than Python does, so a ratio
    # to nginx moves with the machine (issue 14). The nginx ratio stays reported.
    json_x_minimal = ratio(runs, ROUTER, MINIMAL_REFERENCE, "json64", "ok_rps", div)
    add(
        "JSON 64 conn: api-router 2w all on / minimal Sanic relay on aiohttp req/s",
        json_x_minimal,
        0.6,
        True,
        "x",
        0.9,
    )
    add(
        "JSON 64 conn: api-router 2w all on / nginx req/s (reported, not judged: moves with the "
        "CPU)",
        ratio(runs, ROUTER, "nginx", "json64", "ok_rps", div),
        0.12,
        True,
        "x",
        0.20,
        judged=False,
    )
    add(
        "JSON 1 conn: added p50 latency over direct",
        ratio(runs, ROUTER, "direct", "json1", "p50_us", sub),
        800,
        False,
        "us",
        300,
    )
    add(
        "JSON 1 conn: added p99 latency over direct",
        ratio(runs, ROUTER, "direct", "json1", "p99_us", sub),
        2000,
        False,
        "us",
    )
    gap = results["meta"].get("sse_gap_ms")
    add(
        f"SSE paced ({gap:g} ms per event; the judged scenario): api-router 2w streams/s / nginx"
        if gap is not None
        else "SSE paced (the judged scenario): api-router 2w streams/s / nginx",
        ratio(runs, ROUTER, "nginx", "ssepaced", "ok_rps", div),
        0.8,
        True,
        "x",
    )
    add(
        "SSE burst (whole stream at once: the relay's CPU per event; issue 20): "
        "api-router 2w streams/s / nginx",
        ratio(runs, ROUTER, "nginx", "sse64", "ok_rps", div),
        0.15,
        True,
        "x",
        0.25,
    )
    # What Python on Sanic reaches on the same burst, against nginx and against the router;
    # reported, not judged: the minimal relay (aiohttp client, the pieces passed on unparsed,
    # the Python reference) and Sanic alone (the same bytes from memory, no upstream: the floor
    # of any relay on Sanic).
    # (A floor with no upstream has no limit to hold the router to: its rows show no verdict.)
    for ref, what, limits in (
        (MINIMAL_REFERENCE, "minimal Sanic relay on aiohttp", (0.15, 0.8)),
        (SANIC_ALONE, "Sanic alone (from memory)", (None, None)),
    ):
        against_nginx = ratio(runs, ref, "nginx", "sse64", "ok_rps", div)
        add(f"SSE burst: {what} streams/s / nginx (reported, not judged)", against_nginx,
            limits[0], True, "x", judged=False)  # fmt: skip
        router_x = ratio(runs, ROUTER, ref, "sse64", "ok_rps", div)
        add(f"SSE burst: api-router 2w all on / {what} streams/s (reported, not judged)",
            router_x, limits[1], True, "x", judged=False)  # fmt: skip
    add(
        "JSON 64 conn: api-router 2w all on / minimal Sanic relay on aiohttp req/s (issue 20)",
        json_x_minimal,
        0.8,
        True,
        "x",
    )
    if results.get("routing_pairs"):
        add(
            "JSON 64 conn: api-router 2w on a routing file of 50 routes / on a single profile "
            "req/s, adjacent pairs (issue 16)",
            routing_paired(results),
            0.95,
            True,
            "x",
        )
    cap = {(r["connections"], r["config"]): r for r in capacity_rows(results.get("capacity") or [])}
    if (1024, ROUTER) in cap:
        add(
            "SSE paced, 1,024 streams at once: api-router 2w streams/s / nginx (issue 20)",
            cap[(1024, ROUTER)]["x_nginx"],
            0.8,
            True,
            "x",
            0.95,
        )
    if (2048, ROUTER) in cap:
        errors = cap[(2048, ROUTER)]["errors"]
        out.append(
            {
                "target": "SSE paced, 2,048 streams at once: api-router 2w errors, defaults "
                "(issue 20)",
                "value": errors,
                "limit": 0,
                "holds": errors == 0,
                "unit": "errors",
            }
        )
    add(
        "SSE: time-to-first-byte overhead over direct (p50)",
        ratio(runs, ROUTER, "direct", "ttfb", "p50_us", sub),
        1000,
        False,
        "us",
    )
    add(
        "all features on / metrics+logs off (JSON 64 conn req/s)",
        ratio(runs, ROUTER, "router-2w-off", "json64", "ok_rps", div),
        0.85,
        True,
        "x",
    )
    translated = _by_round(runs, ROUTER, "responses64", "ok_rps")
    native = _by_round(runs, ROUTER, "json64", "ok_rps")
    add(
        "Responses API translated to Chat Completions / native Chat Completions "
        "(api-router 2w, JSON 64 conn req/s; the translation's cost, reported, not judged)",
        _stat([translated[k] / native[k] for k in translated if native.get(k)]),
        0.8,
        True,
        "x",
        judged=False,
    )
    for peer, factor in (("portkey", 1.0), ("litellm", 20.0)):
        add(
            f"JSON 64 conn: api-router 2w / {peer} req/s",
            ratio(runs, ROUTER, peer, "json64", "ok_rps", div),
            factor,
            True,
            "x",
        )
    best = best_httpx_by_round(runs)
    ref = _by_round(runs, MINIMAL_REFERENCE, "json64", "ok_rps")
    behind = _stat([ref[k] / best[k][1] for k in ref if k in best and best[k][1]])
    names = sorted({n for n, _ in best.values()})
    add(
        "transport: plain aiohttp / best httpx-based path req/s (minimal proxy, JSON 64 conn; "
        f"best: {', '.join(names) or '—'})",
        behind,
        1.5,
        False,
        "x",
    )
    errs = {name: sum(v.get("errors", 0) for v in per.values()) for name, per in s.items()}
    measured = {k: v for k, v in errs.items() if results["configs"][k]["status"] == "ok"}
    out.append(
        {
            "target": "zero errors in every scenario (api-router configurations)",
            "value": {k: v for k, v in measured.items() if k.startswith("router")},
            "holds": all(v == 0 for k, v in measured.items() if k.startswith("router")),
            "unit": "errors",
        }
    )
    rss = [mb for workers in results.get("rss_mb", {}).values() for mb in workers.values() if mb]
    # The router as it ships: its default engine (the others load their own libraries; their
    # RSS is listed beside the targets).
    router_rss = [
        mb
        for name, w in results.get("rss_mb", {}).items()
        if name.startswith("router") and name not in ENGINE_ROWS[1:]
        for mb in w.values()
        if mb
    ]
    out.append(
        {
            "target": "RSS per api-router worker (default engine) <= 80 MB",
            "value": max(router_rss or [0]),
            "limit": 80,
            "holds": bool(rss) and max(router_rss or [999]) <= 80,
            "unit": "MB",
        }
    )
    soak = results.get("soak")
    if soak:
        growth = max(soak["growth_pct"].values()) if soak["growth_pct"] else None
        out.append(
            {
                "target": "RSS growth over a "
                + (
                    f"{soak['seconds'] / 60:.0f}-min"
                    if soak["seconds"] >= 60
                    else f"{soak['seconds']:.0f}-s"
                )
                + " soak at half load < 5 %",
                "value": growth,
                "limit": 5.0,
                "holds": growth is not None and growth < 5.0,
                "unit": "%",
            }
        )
    return out


# --- markdown ----------------------------------------------------------------------------------


def _fmt(st: dict[str, float] | None, digits: int = 0, scale: float = 1.0) -> str:
    if not st:
        return "—"
    m, lo, hi = st["median"] * scale, st["min"] * scale, st["max"] * scale
    return f"{m:,.{digits}f} ({lo:,.{digits}f}-{hi:,.{digits}f})"


def _ms(st: dict[str, float] | None) -> str:
    return _fmt(st, 2, 1e-3)


def markdown(results: dict[str, Any]) -> str:
    m, s, cfgs = results["meta"], results["summary"], results["configs"]
    mach = m["machine"]
    runs = results["runs"]
    lines = [
        f"# Benchmark {m['date']}{' (quick smoke run)' if m['quick'] else ''}",
        "",
        f"Machine: {mach['cpu']}, {mach['cores']} cores, {mach['memory_mb']:,} MB, "
        f"{mach['os']}, kernel {mach['kernel']}; {mach['python']}; {mach['packages']}; "
        f"{mach['wrk']}; {mach['nginx']}; node {mach['node']}; LiteLLM {mach['litellm']}; "
        f"Portkey gateway {mach['portkey']}.",
        "",
        f"Method: {m['rounds']} interleaved rounds x {m['duration_secs']:.0f} s per wrk run; "
        "median (min-max) over rounds"
        + (
            f" ({m['processes']} processes each of api-router 2w and the minimal aiohttp relay, "
            "round r on process r mod that)"
            if m.get("processes", 1) > 1
            else ""
        )
        + ". Load generator (wrk), fake upstream (nginx) and the "
        "configuration under test share the same cores, all on 127.0.0.1. "
        f"Load average before {m['loadavg_before']}, after {m.get('loadavg_after')}."
        + (f" Conditions: {m['conditions']}" if m.get("conditions") else ""),
        "",
        "| configuration | JSON 64c req/s | x nginx | JSON 1c p50 ms | JSON 1c p99 ms "
        "| added p50 / p99 ms | SSE paced 64c streams/s | SSE burst 64c streams/s "
        "| SSE TTFB p50 ms | 1 MB body req/s | 429/s | errors |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, c in cfgs.items():
        if c["group"] != "main":
            continue
        if c["status"] != "ok" and name not in s:
            lines.append(f"| {c['label']} | {c['status']} |  |  |  |  |  |  |  |  |  |  |")
            continue
        p = s.get(name, {})
        x = ratio(runs, name, "nginx", "json64", "ok_rps", lambda a, b: a / b)
        add50 = ratio(runs, name, "direct", "json1", "p50_us", lambda a, b: a - b)
        add99 = ratio(runs, name, "direct", "json1", "p99_us", lambda a, b: a - b)
        added = (
            f"{add50['median'] / 1e3:+.2f} / {add99['median'] / 1e3:+.2f}"
            if add50 and add99 and name != "direct"
            else "—"
        )
        lines.append(
            f"| {c['label']} | {_fmt(p.get('json64', {}).get('rps'))} "
            f"| {_fmt(x, 3) if name != 'nginx' else '1'} "
            f"| {_ms(p.get('json1', {}).get('p50_us'))} | {_ms(p.get('json1', {}).get('p99_us'))} "
            f"| {added} | {_fmt(p.get('ssepaced', {}).get('rps'))} "
            f"| {_fmt(p.get('sse64', {}).get('rps'))} "
            f"| {_ms(p.get('ttfb', {}).get('p50_us'))} | {_fmt(p.get('body1mb', {}).get('rps'))} "
            f"| {_fmt(p.get('limited64', {}).get('rps'))} "
            f"| {sum(v.get('errors', 0) for v in p.values())} |"
        )
    lines += [
        "",
        f"SSE: {m['events_per_stream']} events per stream (events/s = streams/s x "
        f"{m['events_per_stream']}). `errors` = socket errors, timeouts and unexpected "
        "statuses over all scenarios and rounds.",
        "",
    ]
    lines += sse_table(results)
    lines += capacity_table(results)

    lines += engine_table(results)
    lines += routing_table(results)
    lines += tracing_table(results)
    lines += [
        "## Upstream transport (JSON)",
        "",
        "| configuration | 64c req/s | 1c p50 ms | 1c p99 ms | x minimal aiohttp (64c) |",
        "|---|---|---|---|---|",
    ]
    for name in TRANSPORT_ROWS:
        if name not in s:
            if name in cfgs and cfgs[name]["status"] != "ok":
                lines.append(f"| {cfgs[name]['label']} | {cfgs[name]['status']} |  |  |  |")
            continue
        p = s[name]
        x = ratio(runs, name, MINIMAL_REFERENCE, "json64", "ok_rps", lambda a, b: a / b)
        lines.append(
            f"| {cfgs[name]['label']} | {_fmt(p.get('json64', {}).get('rps'))} "
            f"| {_ms(p.get('json1', {}).get('p50_us'))} "
            f"| {_ms(p.get('json1', {}).get('p99_us'))} | {_fmt(x, 3)} |"
        )

    lines += [
        "",
        "## Targets (issues 7, 14 and 20)",
        "",
        "| target | measured | limit | holds |",
        "|---|---|---|---|",
    ]
    for t in results["targets"]:
        v = t["value"]
        if isinstance(v, dict) and "median" in v:
            digits = 3 if t["unit"] == "x" else 0
            shown = f"{_fmt(v, digits)} {t['unit']}"
        elif isinstance(v, dict):
            shown = ", ".join(f"{k}: {n}" for k, n in v.items()) or "—"
        elif v is None:
            shown = "not measured"
        else:
            shown = f"{v:.1f} {t['unit']}"
        limit = t.get("limit")
        lim = (
            ""
            if limit is None
            else (
                ("≥ " if t.get("higher_is_better") else "≤ ")
                + f"{limit:g} {t['unit']}"
                + (f" (aim {t['aim']:g})" if t.get("aim") else "")
            )
        )
        if t["unit"] in ("MB", "%"):
            lim = f"{'<' if t['unit'] == '%' else '≤'} {limit:g} {t['unit']}"
        holds = {True: "yes", False: "**no**", None: "not measured"}[t["holds"]]
        if limit is None and v is not None:
            holds = "reported"
        elif not t.get("judged", True):
            holds = f"({holds}; not judged)"
        lines.append(f"| {t['target']} | {shown} | {lim} | {holds} |")
    rss = results.get("rss_mb") or {}
    if rss:
        lines += [
            "",
            "RSS per worker after the rounds (MB): "
            + "; ".join(
                f"{k}: {', '.join(f'{v:.0f}' for v in w.values() if v)}" for k, w in rss.items()
            ),
        ]
    soak = results.get("soak")
    if soak:
        lines += [
            f"Soak: {soak['seconds']:.0f} s at {soak.get('achieved_rps') or 0:,.0f} req/s "
            f"(target {soak['target_rps']:,.0f}, half the measured maximum), "
            f"{soak.get('errors')} errors; RSS growth per worker (%): "
            + ", ".join(f"{v:+.2f}" for v in soak["growth_pct"].values())
        ]
    not_ok = {k: c["status"] for k, c in cfgs.items() if c["status"] != "ok"}
    if not_ok:
        lines += ["", "Not measured: " + "; ".join(f"{k}: {v}" for k, v in not_ok.items())]
    return "\n".join(lines) + "\n"


ROUTING = "router-2w-routing"


def routing_paired(results: dict[str, Any]) -> dict[str, float] | None:
    """The routing-file router's JSON req/s over the single-profile router's, pair by pair
    (run.routing_pairs): median and range."""
    pairs = results.get("routing_pairs") or []
    return _stat([p["routing_rps"] / p["single_rps"] for p in pairs if p["single_rps"]])


def routing_table(results: dict[str, Any]) -> list[str]:
    """The routing file's cost (issue 16): JSON req/s against the single-profile router in the
    same rounds (target >= 0.95), and what a failed-over request adds at one connection."""
    s, runs = results["summary"], results["runs"]
    if ROUTING not in s:
        return []
    div: Callable[[float, float], float] = lambda a, b: a / b  # noqa: E731
    sub: Callable[[float, float], float] = lambda a, b: a - b  # noqa: E731
    x = ratio(runs, ROUTING, ROUTER, "json64", "ok_rps", div)
    pairs = results.get("routing_pairs") or []
    paired = routing_paired(results)
    p = s[ROUTING]
    ra = _by_round(runs, ROUTING, "failover1", "p50_us")
    rb = _by_round(runs, ROUTING, "json1", "p50_us")
    added = _stat([sub(ra[k], rb[k]) for k in ra if k in rb])
    return [
        "## Routing file (50 routes, two upstreams)",
        "",
        "JSON through a routing file of 50 routes against the same router on a single profile "
        "(the api-router 2 workers row): in the same rounds, and in adjacent pairs (one run "
        "of each, back to back, the order alternating: the judged figure, since a ratio of two "
        "runs minutes apart swings with the machine); and a request failed over (its first target "
        "answers 503, retried once without backoff, then the second target answers) against a "
        "direct one on the same router, at one connection.",
        "",
        "| | value |",
        "|---|---|",
        f"| JSON 64c req/s, routing file | {_fmt(p.get('json64', {}).get('rps'))} |",
        f"| x single profile, same rounds | {_fmt(x, 3)} |",
        f"| x single profile, {len(pairs)} adjacent pairs (target >= 0.95) | {_fmt(paired, 3)} |",
        f"| JSON 1c p50 ms | {_ms(p.get('json1', {}).get('p50_us'))} |",
        f"| failed over 1c p50 ms (3 attempts) | {_ms(p.get('failover1', {}).get('p50_us'))} |",
        f"| added by the failover, p50 ms | {_ms(added)} |",
        "",
    ]


# The router with tracing on (issue 18), against router-2w (tracing off) in the same rounds.
TRACING_ROWS = (
    (ROUTER, "off"),
    ("router-2w-trace100", "on, 100 % sampled (`parentbased_always_on`)"),
    ("router-2w-trace1", "on, 1 % sampled (`parentbased_traceidratio`, 0.01)"),
)


def tracing_table(results: dict[str, Any]) -> list[str]:
    """Tracing's cost (issue 18): JSON req/s at 64 connections and p50 at one, each over the
    same router with tracing off in the same round; and what the OTLP sink received."""
    s, cfgs, runs = results["summary"], results["configs"], results["runs"]
    if not any(name in s for name, _ in TRACING_ROWS[1:]):
        return []
    div: Callable[[float, float], float] = lambda a, b: a / b  # noqa: E731
    sink = (results.get("tracing") or {}).get("configs", {})
    lines = [
        "## Tracing cost (api-router, 2 workers, all on)",
        "",
        "The same router with `API_ROUTER_TRACING=true`, exporting OTLP/HTTP (protobuf) in "
        "batches (the SDK's defaults) to a sink on the same machine that answers 200 and "
        "decodes nothing while the rounds run (bench/otlp_sink.py); `x off`: over the router "
        "with tracing off (the api-router 2 workers row) in the same round, median over rounds "
        "(for the p50 latency, above 1 is slower). Spans: what the sink received in the whole "
        "run (2 per request sampled: the server span and the upstream attempt's), against the "
        "requests the configuration answered (wrk's count plus the checks).",
        "",
        "| tracing | JSON 64c req/s | x off | JSON 1c p50 ms | x off | JSON 1c p99 ms "
        "| requests answered | spans received (per request) | export POSTs | MB received "
        "| errors |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, what in TRACING_ROWS:
        if name not in cfgs:
            continue
        c = cfgs[name]
        if c["status"] != "ok" and name not in s:
            lines.append(f"| {what} | {c['status']} |  |  |  |  |  |  |  |  |  |")
            continue
        p = s.get(name, {})
        x64 = ratio(runs, name, ROUTER, "json64", "ok_rps", div) if name != ROUTER else None
        x1 = ratio(runs, name, ROUTER, "json1", "p50_us", div) if name != ROUTER else None
        got = sink.get(name)
        if got:
            answered = f"{got['requests_answered']:,}"
            spans = (
                f"{got.get('spans', 0):,} ({got['spans_per_request']:.4f})"
                if got.get("spans_per_request") is not None
                else "none"
            )
            posts, mb = f"{got.get('posts', 0):,}", f"{got.get('bytes', 0) / 1e6:.2f}"
        else:
            answered = spans = posts = mb = "—"
        errors = sum(p.get(sc, {}).get("errors", 0) for sc in ("json64", "json1"))
        lines.append(
            f"| {what} | {_fmt(p.get('json64', {}).get('rps'))} "
            f"| {'1' if name == ROUTER else _fmt(x64, 3)} "
            f"| {_ms(p.get('json1', {}).get('p50_us'))} | {'1' if name == ROUTER else _fmt(x1, 3)} "
            f"| {_ms(p.get('json1', {}).get('p99_us'))} | {answered} | {spans} | {posts} | {mb} "
            f"| {errors} |"
        )
    return [*lines, ""]


def engine_table(results: dict[str, Any]) -> list[str]:
    """The router (2 workers, all on) on each upstream engine in every scenario, and each
    scenario's ratio to the default engine (h1) in the same rounds."""
    s, cfgs, runs = results["summary"], results["configs"], results["runs"]
    rows = [n for n in ENGINE_ROWS if n in cfgs]
    if len(rows) < 2:
        return []
    scen = (("json64", "rps"), ("json1", "p50_us"), ("ssepaced", "rps"), ("sse64", "rps"),
            ("body1mb", "rps"))  # fmt: skip
    lines = [
        "## Upstream engines (api-router, 2 workers, all on)",
        "",
        "Each engine in every scenario; `x h1`: the engine's figure over the default engine's "
        "(`h1`, the api-router 2 workers row) in the same round, median over rounds (for the "
        "1-connection p50 latency, above 1 is slower).",
        "",
        "| engine | JSON 64c req/s (x h1) | JSON 1c p50 ms (x h1) | SSE paced streams/s (x h1) "
        "| SSE burst streams/s (x h1) | 1 MB body req/s (x h1) | errors |",
        "|---|---|---|---|---|---|---|",
    ]
    div: Callable[[float, float], float] = lambda a, b: a / b  # noqa: E731
    for name in rows:
        c = cfgs[name]
        if c["status"] != "ok" and name not in s:
            lines.append(f"| {c['label']} | {c['status']} |  |  |  |  |  |")
            continue
        p = s.get(name, {})
        cells = []
        for sc, key in scen:
            field = "ok_rps" if key == "rps" else key
            x = ratio(runs, name, ROUTER, sc, field, div) if name != ROUTER else None
            fig = _ms(p.get(sc, {}).get(key)) if key == "p50_us" else _fmt(p.get(sc, {}).get(key))
            cells.append(f"{fig} (x {x['median']:.2f})" if x else f"{fig} (x 1)")
        errors = sum(v.get("errors", 0) for v in p.values())
        lines.append(f"| {c['label']} | " + " | ".join(cells) + f" | {errors} |")
    return [*lines, ""]


def sse_table(results: dict[str, Any]) -> list[str]:
    """Both SSE scenarios side by side: streams/s, events/s, x nginx, time per stream."""
    m, s, cfgs, runs = results["meta"], results["summary"], results["configs"], results["runs"]
    if not any("ssepaced" in per or "sse64" in per for per in s.values()):
        return []
    n = m["events_per_stream"]
    gap = m.get("sse_gap_ms")
    lines = ["## SSE: paced (the target's scenario) and burst", ""]
    if gap is not None:
        ceiling = 64 * 1000 / ((n - 1) * gap) if gap else None
        lines += [
            f"Paced: the fake upstream sends the {n} events one every {gap:g} ms "
            f"({1000 / gap:.0f} tokens/s) from a small Node.js server behind the nginx upstream, "
            "so a stream lasts at least "
            f"{(n - 1) * gap:g} ms and 64 connections can do at most "
            + (f"{ceiling:,.0f} streams/s" if ceiling else "—")
            + " (timers fire a little late: direct shows the real ceiling)"
            + ". That is what an LLM stream is: paced by the model. The SSE target "
            "(>= 0.8 x nginx streams/s) is judged here. Burst: the whole stream at once from "
            "nginx's memory; it measures the relay's CPU per stream and event (issue 20 judges "
            "it: >= 0.15 x nginx). "
            "Stream time = wrk's latency of a whole stream (request to last byte).",
            "",
        ]
    lines += [
        "| configuration | paced streams/s | paced events/s | paced x nginx "
        "| paced stream time p50 / p99 ms | burst streams/s | burst events/s | burst x nginx |",
        "|---|---|---|---|---|---|---|---|",
    ]
    div: Callable[[float, float], float] = lambda a, b: a / b  # noqa: E731
    for name, c in cfgs.items():
        p = s.get(name, {})
        if c["group"] != "main" or not ("ssepaced" in p or "sse64" in p):
            continue
        paced, burst = p.get("ssepaced", {}), p.get("sse64", {})
        ev = lambda st: {k: v * n for k, v in st.items()} if st else None  # noqa: E731
        lines.append(
            f"| {c['label']} | {_fmt(paced.get('rps'))} | {_fmt(ev(paced.get('rps')))} "
            f"| {_fmt(ratio(runs, name, 'nginx', 'ssepaced', 'ok_rps', div), 3)} "
            f"| {_ms(paced.get('p50_us'))} / {_ms(paced.get('p99_us'))} "
            f"| {_fmt(burst.get('rps'))} | {_fmt(ev(burst.get('rps')))} "
            f"| {_fmt(ratio(runs, name, 'nginx', 'sse64', 'ok_rps', div), 3)} |"
        )
    return [*lines, ""]


# --- chart -------------------------------------------------------------------------------------


def chart(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s, cfgs = results["summary"], results["configs"]
    names = [n for n in cfgs if "json64" in s.get(n, {})]
    labels = [cfgs[n]["label"].replace(", ", "\n", 1) for n in names]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(15, 0.55 * len(names) + 2.5))

    def bars(
        ax: Any,
        values: list[dict[str, float]],
        color: str,
        offset: float = 0.0,
        height: float = 0.8,
        label: str | None = None,
    ) -> None:
        med = [v["median"] for v in values]
        err = [[v["median"] - v["min"] for v in values], [v["max"] - v["median"] for v in values]]
        ys = [i + offset for i in range(len(values))]
        ax.barh(ys, med, height=height, xerr=err, color=color, capsize=3, label=label)

    bars(ax1, [s[n]["json64"]["rps"] for n in names], "#4c72b0")
    ax1.set_yticks(range(len(names)), labels, fontsize=8)
    ax1.invert_yaxis()
    ax1.set_xlabel("req/s, JSON, 64 connections (median, bars: range)")
    ax1.set_xscale("log")
    one = [n for n in names if "json1" in s[n]]
    bars(
        ax2,
        [{k: v / 1e3 for k, v in s[n]["json1"]["p50_us"].items()} for n in one],
        "#55a868",
        -0.2,
        0.4,
        "p50",
    )
    bars(
        ax2,
        [{k: v / 1e3 for k, v in s[n]["json1"]["p99_us"].items()} for n in one],
        "#c44e52",
        0.2,
        0.4,
        "p99",
    )
    ax2.set_yticks(
        range(len(one)), [cfgs[n]["label"].replace(", ", "\n", 1) for n in one], fontsize=8
    )
    ax2.invert_yaxis()
    ax2.set_xscale("log")
    ax2.set_xlabel("latency ms, JSON, 1 connection")
    ax2.legend()
    m = results["meta"]
    fig.suptitle(
        f"api-router benchmark {m['date']} — {m['machine']['cpu']}, "
        f"{m['machine']['cores']} cores (load generator on the same cores)"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write(results: dict[str, Any], out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    results["summary"] = summarise(results)
    results["targets"] = targets(results)
    stem = out_dir / results["meta"]["date"]
    paths = [stem.with_suffix(".json"), stem.with_suffix(".md"), stem.with_suffix(".png")]
    paths[0].write_text(json.dumps(results, indent=1) + "\n")
    paths[1].write_text(markdown(results))
    chart(results, paths[2])
    return paths


if __name__ == "__main__":
    src = Path(sys.argv[1])
    data = json.loads(src.read_text())
    for p in write(data, src.parent):
        print(p)
