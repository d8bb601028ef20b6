"""The metric writes' fast path: cheaper multiprocess values and label-child writers.

Buys: CPU per request (bench/README.md, "Fast paths"): a request makes about eleven metric
writes; prometheus-client's multiprocess `inc` takes a process-wide lock, calls `getpid()` and
looks its offset up on each, and a child's `inc`/`observe` checks on each what never changes.

Relies on prometheus-client's internals (client_python 0.2x):
- its multiprocess value class (`values.ValueClass` once `PROMETHEUS_MULTIPROC_DIR` is set:
  `_multiprocess`, `_file._positions`, `_file._m`, `_key`, `_value`, `_timestamp`) and the
  files' layout of a value (two doubles: value, timestamp) (values.py, mmap_dict.py);
- a labelled child's value objects: a counter's `_value`, a histogram's `_sum`, `_buckets`
  and `_upper_bounds`, a gauge's `_value` (metrics.py).
An upgrade that changes these may break it: tests/unit/test_metrics_fast_values.py compares the
files and samples written through this path with the library's own, sample for sample.
Its documented hook, `MultiProcessValue(process_identifier)`, customises the pid only.

Off (`API_ROUTER_FAST_PATHS` without `metrics`): prometheus-client's own value class and its
children's own `inc` / `observe` (service.observability.metrics.Metrics applies the choice).
"""

from __future__ import annotations

import os
import struct
from bisect import bisect_left
from typing import Any

from prometheus_client import Histogram, values

_forked = False  # set in a child forked from this process: the fast path steps aside


def _after_fork() -> None:
    global _forked
    _forked = True


os.register_at_fork(after_in_child=_after_fork)
_pack_two_doubles = struct.Struct("dd").pack


def _fast_multiprocess_value(base: Any) -> Any:
    """prometheus-client's multiprocess value (`base`, the class its `ValueClass` already is, so
    one set of per-process files serves every value) with a cheaper `inc`.

    Its own `inc` takes a process-wide lock, calls `getpid()` to notice a fork and looks the
    value's offset up in the file's index on every call. Here `inc` writes the 16 bytes (value,
    timestamp 0) at the offset found once, with the same whole-slice assignment
    prometheus-client uses (never a partial value for a concurrent reader), and the mapping read
    at call time (the file may have been grown and re-mapped). Without the lock: a worker writes
    metrics from its event loop thread only. After a fork the child uses the original `inc` (its
    pid check then moves it to files of its own)."""

    class FastMmapedValue(base):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._pos = self._file._positions[self._key]

        def inc(self, amount: float) -> None:
            if _forked:
                super().inc(amount)
                return
            v: float = self._value + amount  # type: ignore[has-type]
            self._value = v
            self._timestamp = 0.0
            pos = self._pos
            self._file._m[pos : pos + 16] = _pack_two_doubles(v, 0.0)

    return FastMmapedValue


def use_fast_values() -> None:
    """Called before the first metric is made; nothing changes outside multiprocess mode."""
    current = values.ValueClass
    if getattr(current, "_multiprocess", False) and not getattr(current, "fast_inc", False):
        fast = _fast_multiprocess_value(current)
        fast.fast_inc = True
        values.ValueClass = fast


class CounterWriter:
    """`inc` of a labelled counter child straight on its value: what `Counter.inc` does (a
    negative amount refused) minus the per-call checks of a child that is known observable."""

    __slots__ = ("_value",)

    def __init__(self, child: Any) -> None:
        self._value = child._value

    def inc(self, amount: float = 1) -> None:
        if amount < 0:
            raise ValueError("Counters can only be incremented by non-negative amounts.")
        self._value.inc(amount)


class HistogramWriter:
    """`observe` of a labelled histogram child: the sum, then the first bucket whose upper bound
    is >= the amount (a bisection over the bounds, the last one +Inf), as `Histogram.observe`."""

    __slots__ = ("_bounds", "_buckets", "_sum")

    def __init__(self, child: Any) -> None:
        self._sum = child._sum
        self._buckets = child._buckets
        self._bounds = child._upper_bounds

    def observe(self, amount: float) -> None:
        self._sum.inc(amount)
        self._buckets[bisect_left(self._bounds, amount)].inc(1)


def writer(child: Any) -> CounterWriter | HistogramWriter:
    """The writer of a labelled counter or histogram child."""
    return HistogramWriter(child) if isinstance(child, Histogram) else CounterWriter(child)


def gauge_value(gauge: Any) -> Any:
    """An unlabelled gauge's value, moved by `inc(+n / -n)` (`Gauge.inc` minus its checks)."""
    return gauge._value
