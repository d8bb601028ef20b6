"""The cheaper multiprocess metric value (metrics_fast.use_fast_values) writes exactly what
prometheus-client's own value writes: same files, same sums after many series (the file grows
and is re-mapped), counters, livesum gauges and histograms; and a forked child falls back to the
library's own `inc`, which moves it to files of its own pid. Each case runs in a fresh interpreter
because prometheus-client picks its value class from the environment at import."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = r"""
import json, os, sys
fast = sys.argv[1] == "fast"
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, values
from prometheus_client import multiprocess
from service.observability import metrics_fast
if fast:
    metrics_fast.use_fast_values()
assert getattr(values.ValueClass, "fast_inc", False) is fast
r = CollectorRegistry()
c = Counter("c", "c", ["k"], registry=r)
g = Gauge("g", "g", registry=r, multiprocess_mode="livesum")
h = Histogram("h", "h", registry=r, buckets=(0.1, 1.0))
for i in range(3000):  # enough series to grow the 64 KiB file several times
    c.labels(str(i % 700)).inc(i % 7 + 0.5)
    g.inc(2); g.dec()
    h.observe((i % 20) / 10)
if sys.argv[2] == "fork":
    pid = os.fork()
    if pid == 0:
        c.labels("child").inc(5)
        os._exit(0)
    os.waitpid(pid, 0)
out = CollectorRegistry()
multiprocess.MultiProcessCollector(out, path=os.environ["PROMETHEUS_MULTIPROC_DIR"])
samples = sorted(
    (s.name, json.dumps(s.labels, sort_keys=True), s.value)
    for m in out.collect() for s in m.samples
)
files = len(os.listdir(os.environ["PROMETHEUS_MULTIPROC_DIR"]))
print(json.dumps({"samples": samples, "files": files}))
"""


def _run(tmp_path: Path, mode: str, fork: str) -> dict[str, object]:
    d = tmp_path / f"{mode}-{fork}"
    d.mkdir()
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, mode, fork],
        env={"PROMETHEUS_MULTIPROC_DIR": str(d), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    result: dict[str, object] = json.loads(out.stdout)
    return result


def test_fast_values_write_what_the_library_writes(tmp_path: Path) -> None:
    lib = _run(tmp_path, "library", "nofork")
    fast = _run(tmp_path, "fast", "nofork")
    assert fast == lib
    samples = lib["samples"]
    assert isinstance(samples, list)
    assert ["g", "{}", 3000.0] in samples
    assert ["h_count", "{}", 3000.0] in samples


def test_a_forked_child_writes_its_own_files(tmp_path: Path) -> None:
    lib = _run(tmp_path, "library", "fork")
    fast = _run(tmp_path, "fast", "fork")
    assert fast == lib
    assert ["c_total", '{"k": "child"}', 5.0] in fast["samples"]  # type: ignore[operator]
    assert fast["files"] == 6  # counter, gauge, histogram files for the parent and the child


def test_label_children_writers_record_what_the_library_records() -> None:
    import pytest
    from prometheus_client import CollectorRegistry, Counter, Histogram

    from service.observability.metrics import LATENCY_BUCKETS, Children

    reg = CollectorRegistry()
    fast_h = Histogram("fh", "h", ["route"], registry=reg, buckets=LATENCY_BUCKETS)
    lib_h = Histogram("lh", "h", ["route"], registry=reg, buckets=LATENCY_BUCKETS)
    fast_c = Counter("fc", "c", ["a", "b"], registry=reg)
    lib_c = Counter("lc", "c", ["a", "b"], registry=reg)
    hist, count = Children(fast_h), Children(fast_c)
    for x in (0.0, 0.001, 0.0010001, 0.005, 0.3, 2.5, 10, 11, 1e9, *LATENCY_BUCKETS):
        hist["/r"].observe(x)
        lib_h.labels("/r").observe(x)
        count["x", "y"].inc(x)
        lib_c.labels("x", "y").inc(x)
    count["x", "z"].inc()
    lib_c.labels("x", "z").inc()
    with pytest.raises(ValueError):
        count["x", "y"].inc(-1)

    def samples(metric: object, prefix: str) -> list[tuple[str, dict[str, str], float]]:
        return [
            (s.name[len(prefix) :], s.labels, s.value)
            for m in metric.collect()  # type: ignore[attr-defined]
            for s in m.samples
            if not s.name.endswith("_created")  # the creation time differs by microseconds
        ]

    assert samples(fast_h, "fh") == samples(lib_h, "lh")
    assert samples(fast_c, "fc") == samples(lib_c, "lc")
    assert hist["/r"] is hist["/r"]  # one writer per label values
