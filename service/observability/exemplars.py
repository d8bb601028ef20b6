"""Exemplars on the latency histograms (SPEC §14): the trace of a recent request per bucket,
served when a scraper asks for OpenMetrics (`Accept: application/openmetrics-text`).

prometheus-client keeps no exemplars in multiprocess mode (its `MultiprocessValue` drops them), and
any worker may answer a scrape, so the workers share them here: one small file in
`PROMETHEUS_MULTIPROC_DIR` (`exemplars.bin`), mapped by every worker, one slot per
(histogram, route, bucket) holding the latest traced observation — trace id, span id, value,
time — written under `flock` only for sampled requests (tracing on). Without a multiprocess
directory (one process) the same table lives in this process's memory.

At a scrape (`with_exemplars`), each `_bucket` sample of `request_latency_seconds` and
`upstream_latency_seconds` whose slot holds one gets it as its exemplar. Routes come from the
route table (a closed set; at most `MAX_ROUTES` names are kept, later ones get none).
"""

from __future__ import annotations

import bisect
import contextlib
import mmap
import os
import struct
import time
from collections.abc import Iterator
from typing import Any

from prometheus_client.samples import Exemplar, Sample
from prometheus_client.utils import floatToGoString

from ..ratelimit.shared import flocked
from .metrics import LATENCY_BUCKETS

FILE_NAME = "exemplars.bin"  # not *.db: prometheus-client reads every *.db there
HISTOGRAMS = ("request_latency_seconds", "upstream_latency_seconds")
MAX_ROUTES = 64
_NAME = 96  # bytes of a route name
_BUCKETS = len(LATENCY_BUCKETS) + 1  # and +Inf
_SLOT = struct.Struct("<16s8sdd")  # trace id, span id, value, unix time
_NAMES_AT = 0
_SLOTS_AT = MAX_ROUTES * _NAME
SIZE = _SLOTS_AT + len(HISTOGRAMS) * MAX_ROUTES * _BUCKETS * _SLOT.size
_LE = [floatToGoString(b) for b in LATENCY_BUCKETS] + ["+Inf"]


class Exemplars:
    def __init__(self, directory: str | None) -> None:
        self._fd: int | None = None
        if directory:
            path = os.path.join(directory, FILE_NAME)
            self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
            if os.fstat(self._fd).st_size < SIZE:  # the first worker sizes it (zero-filled)
                os.ftruncate(self._fd, SIZE)
            self._mm: Any = mmap.mmap(self._fd, SIZE)
        else:
            self._mm = bytearray(SIZE)
        self._routes: dict[str, int] = {}

    def _locked(self) -> contextlib.AbstractContextManager[None]:
        return flocked(self._fd)

    def _route(self, route: str, create: bool) -> int | None:
        rid = self._routes.get(route)
        if rid is not None:
            return rid
        name = route.encode()[:_NAME]
        for i in range(MAX_ROUTES):
            at = _NAMES_AT + i * _NAME
            stored = bytes(self._mm[at : at + _NAME]).rstrip(b"\0")
            if stored == name:
                self._routes[route] = i
                return i
            if not stored:
                if not create:
                    return None
                self._mm[at : at + len(name)] = name
                self._routes[route] = i
                return i
        return None  # table full: this route gets no exemplars

    def record(self, histogram: int, route: str, value: float, trace_id: str, span_id: str) -> None:
        """The latest traced observation of `value` seconds on `HISTOGRAMS[histogram]`."""
        with self._locked():
            rid = self._route(route, create=True)
            if rid is None:
                return
            bucket = bisect.bisect_left(LATENCY_BUCKETS, value)
            at = _SLOTS_AT + ((histogram * MAX_ROUTES + rid) * _BUCKETS + bucket) * _SLOT.size
            _SLOT.pack_into(
                self._mm, at, bytes.fromhex(trace_id), bytes.fromhex(span_id), value, time.time()
            )

    def lookup(self, histogram: int, route: str, le: str) -> Exemplar | None:
        with self._locked():
            rid = self._route(route, create=False)
            if rid is None or le not in _LE:
                return None
            bucket = _LE.index(le)
            at = _SLOTS_AT + ((histogram * MAX_ROUTES + rid) * _BUCKETS + bucket) * _SLOT.size
            trace, span, value, ts = _SLOT.unpack_from(self._mm, at)
        if ts == 0.0:
            return None
        return Exemplar({"trace_id": trace.hex(), "span_id": span.hex()}, value, ts)

    def with_exemplars(self, families: Any) -> Iterator[Any]:
        """The collected metric families, their latency buckets carrying exemplars."""
        for family in families:
            if family.name in HISTOGRAMS:
                h = HISTOGRAMS.index(family.name)
                family.samples = [self._sample(h, s) for s in family.samples]
            yield family

    def _sample(self, histogram: int, s: Sample) -> Sample:
        if not s.name.endswith("_bucket") or s.exemplar is not None:
            return s
        ex = self.lookup(histogram, s.labels.get("route", ""), s.labels.get("le", ""))
        return s if ex is None else s._replace(exemplar=ex)

    def close(self) -> None:
        if self._fd is not None:
            self._mm.close()
            os.close(self._fd)
            self._fd = None


class WithExemplars:
    """A registry's view that adds exemplars to what it collects (for the OpenMetrics
    exposition: `generate_latest(WithExemplars(registry, store))`)."""

    def __init__(self, registry: Any, store: Exemplars) -> None:
        self._registry = registry
        self._store = store

    def collect(self) -> Iterator[Any]:
        return self._store.with_exemplars(self._registry.collect())
