"""The embedded default: one bucket table in shared memory for every Sanic worker of an instance.

The primary process (the CLI) creates the table file (`create_table`) before any worker is
spawned and names it in `TABLE_ENV`; each worker maps the same file (`SharedLimiter`). A
decision is one critical section under an exclusive `flock` on the file: look the bucket up,
apply the pure maths of `bucket.py`, write it back. So the limit is exact for the instance,
whatever the number of workers (measured cost per decision: docs/ratelimit.md).

Layout: a 4 KiB header (capacity, live count, per-route names and live counts, sweep cursor),
then one column per field over `capacity` slots (an open-addressing hash table with linear
probing): key hash (u64, 0 = empty), route id (u8), tokens, last update, full-again time (f64).
A bucket is keyed by a 64-bit hash of (route, key): the key is already a credential hash.

Memory is bounded twice: the file has a fixed size, and buckets that are full again are deleted
(backward-shift deletion, so no tombstones accumulate): a few slots on every decision once a
quarter of `max_live` is taken (below that the probe runs stay short and a decision need not pay
for it), the whole table when live buckets are counted (`active_buckets`, at most once a second)
or when the table is full. A table full of live buckets is a backend error (fail open or closed,
like an unreachable Redis).

The lock is held for as little as possible: the key's hash is remembered per worker, and the
`Decision` is built after the lock is released (with two busy workers every microsecond held is
one the other may wait; bench/README, "Rate limiting").
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import math
import mmap
import os
import struct
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

from .bucket import Decision, Limit, decision, full_at, take_token

TABLE_ENV = "API_ROUTER_RATELIMIT_TABLE"
MAX_BUCKETS_ENV = "RATE_LIMIT_MAX_BUCKETS"
DEFAULT_MAX_BUCKETS = 200_000

_MAGIC = b"APIRRL01"
_HEADER = 4096
# header fields: magic, capacity, max_live, live, cursor, route count
_FIELDS = struct.Struct("<8sQQQQQ")
_MAX_ROUTES = 32
_ROUTE_NAME = 64
_ROUTES_AT = 128  # _MAX_ROUTES names of _ROUTE_NAME bytes
_ROUTE_LIVE_AT = _ROUTES_AT + _MAX_ROUTES * _ROUTE_NAME  # _MAX_ROUTES u64 counters
_STEP_SWEEP = 4  # slots examined by each decision
SWEEP_FROM_FRACTION = 4  # decisions sweep once a quarter of max_live is live
_HASH_MEMO = 4096  # (key, route id) -> bucket hash, per worker
_CHUNK = 8192  # slots per lock hold during a full sweep
COUNT_SWEEP_EVERY_SECS = 1.0


T = TypeVar("T")
# update_sync's decision: stored (tokens, last) per item (None: absent), now ->
# (per item: (tokens, last, full-again time or None to keep it) or None to leave it, result)
Update = Callable[
    [list[tuple[float, float] | None], float],
    tuple[list[tuple[float, float, float | None] | None], T],
]


class TableFull(RuntimeError):
    """Every slot the table may use holds a live bucket (or all route ids are taken)."""


def _capacity(max_buckets: int) -> int:
    # Linear probing stays short at a load factor of at most 3/4.
    return 1 << max(4, math.ceil(math.log2(max_buckets * 4 / 3)))


def table_size(max_buckets: int) -> int:
    cap = _capacity(max_buckets)
    return _HEADER + cap * (8 + 1 + 8 + 8 + 8)


def shm_directory() -> str | None:
    """Where the files the workers share go: /dev/shm when it exists and is writable (memory),
    else None (tempfile's directory)."""
    shm = "/dev/shm"
    return shm if os.path.isdir(shm) and os.access(shm, os.W_OK) else None


def check_room(max_buckets: int, tables: int) -> None:
    """Refuse to start when `tables` tables of `max_buckets` cannot all be held where they go.

    A table is a sparse file: a page takes room only once a bucket is written to it, and a
    worker writing to a page a full tmpfs cannot give is killed by SIGBUS, mid-traffic and
    without a word. So the room is checked once, here, against the file's whole size (the
    buckets are spread over it by their hash: a busy table touches every page)."""
    where = shm_directory() or tempfile.gettempdir()  # where create_table puts them
    st = os.statvfs(where)
    free = st.f_bavail * st.f_frsize
    need = tables * table_size(max_buckets)
    if need > free:
        mib = 1 << 20
        raise ValueError(
            f"{MAX_BUCKETS_ENV}={max_buckets}: the router's {tables} bucket tables need "
            f"{need / mib:,.0f} MiB in {where}, which has {free / mib:,.0f} MiB free; lower "
            f"{MAX_BUCKETS_ENV} or give {where} more room (podman run --shm-size, a Kubernetes "
            "emptyDir with medium Memory mounted at /dev/shm)"
        )


def create_table(max_buckets: int = DEFAULT_MAX_BUCKETS, directory: str | None = None) -> str:
    """Create an empty table file (in /dev/shm when it exists) and return its path."""
    if directory is None:
        directory = shm_directory()
    fd, path = tempfile.mkstemp(prefix="api-router-ratelimit-", suffix=".tbl", dir=directory)
    try:
        os.ftruncate(fd, table_size(max_buckets))  # zero-filled: every slot empty
        header = _FIELDS.pack(_MAGIC, _capacity(max_buckets), max_buckets, 0, 0, 0)
        os.pwrite(fd, header, 0)
    finally:
        os.close(fd)
    return path


@contextlib.contextmanager
def flocked(fd: int | None) -> Iterator[None]:
    """An exclusive `flock` on `fd` for the block (None: a table private to the process, no
    lock). One helper for every file the workers share (this table, the ejection table, the
    exemplar store)."""
    if fd is None:
        yield
        return
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)


def share_table(max_buckets: int = DEFAULT_MAX_BUCKETS) -> str:
    """A table for the workers of this (primary) process: the path they should open."""
    return share_file(create_table(max_buckets))


def share_file(path: str) -> str:
    """The path the workers of this (primary) process should open for the file at `path`.

    On Linux the file is unlinked at once and reached through `/proc/<pid>/fd/<fd>` while this
    process keeps it open, so it can never outlive the router, even one killed by SIGKILL."""
    fd_dir = f"/proc/{os.getpid()}/fd"
    if not os.path.isdir(fd_dir):
        return path  # removed by remove_table when the router stops
    fd = os.open(path, os.O_RDWR)  # deliberately kept open for the life of the process
    os.unlink(path)
    return f"{fd_dir}/{fd}"


def remove_table(path: str) -> None:
    if path.startswith("/proc/"):
        return  # an unlinked table: gone with the last process that has it open
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


class SharedLimiter:
    """One worker's handle on the shared table (see the module docstring)."""

    def __init__(
        self,
        path: str,
        clock: Callable[[], float] = time.monotonic,
        count_sweep_every: float = COUNT_SWEEP_EVERY_SECS,
    ) -> None:
        # CLOCK_MONOTONIC is one clock for the whole machine, so workers agree on `now`.
        self._now = clock
        self._count_sweep_every = count_sweep_every
        self._fd = os.open(path, os.O_RDWR)
        self._mm = mmap.mmap(self._fd, 0)
        magic, cap, max_live, *_ = _FIELDS.unpack_from(self._mm, 0)
        if magic != _MAGIC:
            raise ValueError(f"{path} is not a rate-limit table")
        self.capacity: int = cap
        self.max_live: int = max_live
        # Below this many live buckets decisions do not sweep (see the module docstring).
        self._sweep_above = max_live // SWEEP_FROM_FRACTION
        self._mask = cap - 1
        mv = memoryview(self._mm)
        at = _HEADER
        self._keys = mv[at : at + 8 * cap].cast("Q")
        at += 8 * cap
        self._route = mv[at : at + cap].cast("B")
        at += cap
        self._tokens = mv[at : at + 8 * cap].cast("d")
        at += 8 * cap
        self._last = mv[at : at + 8 * cap].cast("d")
        at += 8 * cap
        self._full = mv[at : at + 8 * cap].cast("d")
        self._hdr = mv[8:48].cast("Q")  # capacity, max_live, live, cursor, route count
        self._swept_at = mv[48:56].cast("d")  # last whole-table sweep, by any worker
        self._route_live = mv[_ROUTE_LIVE_AT : _ROUTE_LIVE_AT + 8 * _MAX_ROUTES].cast("Q")
        self._route_ids: dict[str, int] = {}
        self._hashes: dict[tuple[str, int], int] = {}
        self._views: list[memoryview[Any]] = [
            self._keys,
            self._route,
            self._tokens,
            self._last,
            self._full,
        ]

    # -- locking ---------------------------------------------------------------------------

    def _locked(self) -> contextlib.AbstractContextManager[None]:
        return flocked(self._fd)

    # -- the table -------------------------------------------------------------------------

    @staticmethod
    def _hash(key: str, route_id: int) -> int:
        h = int.from_bytes(
            hashlib.blake2b(key.encode(), digest_size=8, person=bytes([route_id])).digest(),
            "little",
        )
        return h or 1  # 0 marks an empty slot

    def _hash_of(self, key: str, route_id: int) -> int:
        """`_hash`, remembered: the same few keys come back on every request. The memo is
        emptied whenever it reaches _HASH_MEMO entries, so it stays bounded whatever the
        number of distinct keys."""
        memo = self._hashes
        h = memo.get((key, route_id))
        if h is None:
            if len(memo) >= _HASH_MEMO:
                memo.clear()
            h = memo[(key, route_id)] = self._hash(key, route_id)
        return h

    def _route_id(self, route: str) -> int:
        rid = self._route_ids.get(route)
        if rid is not None:
            return rid
        name = route.encode()[:_ROUTE_NAME]
        with self._locked():
            n = self._hdr[4]
            for i in range(n):
                at = _ROUTES_AT + i * _ROUTE_NAME
                if bytes(self._mm[at : at + _ROUTE_NAME]).rstrip(b"\0") == name:
                    rid = i
                    break
            else:
                if n >= _MAX_ROUTES:
                    raise TableFull("too many routes")
                at = _ROUTES_AT + n * _ROUTE_NAME
                self._mm[at : at + len(name)] = name
                self._hdr[4] = n + 1
                rid = n
        self._route_ids[route] = rid
        return rid

    def _find(self, h: int) -> tuple[int, bool]:
        """The slot holding `h`, or the empty slot where it would go."""
        keys, mask = self._keys, self._mask
        i = h & mask
        while True:
            k = keys[i]
            if k == h:
                return i, True
            if k == 0:
                return i, False
            i = (i + 1) & mask

    def _delete(self, i: int) -> None:
        """Empty slot `i`, shifting later members of its probe run back (no tombstones)."""
        keys, mask = self._keys, self._mask
        self._hdr[2] -= 1
        self._route_live[self._route[i]] -= 1
        j = i
        while True:
            j = (j + 1) & mask
            k = keys[j]
            if k == 0:
                break
            home = k & mask
            # The entry at j may stay unless its home lies cyclically outside (i, j].
            stays = (i < home <= j) if i <= j else (home > i or home <= j)
            if not stays:
                for col in self._views:
                    col[i] = col[j]
                i = j
        keys[i] = 0

    def _sweep_slots(self, start: int, count: int, now: float) -> int:
        """Delete full-again buckets among `count` slots from `start`; returns the next slot."""
        keys, full, mask = self._keys, self._full, self._mask
        i = start & mask
        for _ in range(count):
            # A deletion may shift another expired entry into slot i: look again before moving.
            while keys[i] != 0 and full[i] <= now:
                self._delete(i)
            i = (i + 1) & mask
        return i

    def _sweep_all(self) -> None:
        """Sweep the whole table, releasing the lock between chunks so decisions go on.

        Chunks and slots are visited from the end backwards: a deletion only moves entries
        from later slots, which were already visited (and kept because they were live)."""
        step = min(_CHUNK, self.capacity)  # both powers of two
        for start in range(self.capacity - step, -1, -step):
            with self._locked():
                now = self._now()
                chunk = self._full[start : start + step].tolist()  # scanned in C, not Python
                expired = [off for off, f in enumerate(chunk) if 0.0 < f <= now]
                keys, full = self._keys, self._full
                for off in reversed(expired):
                    i = start + off
                    while keys[i] != 0 and full[i] <= now:
                        self._delete(i)

    # -- the Limiter protocol --------------------------------------------------------------

    async def acquire(self, key: str, route: str, limit: Limit) -> Decision:
        return self.acquire_sync(key, route, limit)

    def acquire_sync(self, key: str, route: str, limit: Limit) -> Decision:
        rid = self._route_id(route)
        h = self._hash_of(key, rid)
        try:
            return self._acquire(h, rid, limit)
        except TableFull:
            self._sweep_all()  # forget every full bucket, then try once more
            return self._acquire(h, rid, limit)

    def _acquire(self, h: int, rid: int, limit: Limit) -> Decision:
        # The hot path: flock/unlock inline (a context manager costs more than the lock).
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        try:
            now = self._now()
            hdr = self._hdr
            if hdr[2] > self._sweep_above:
                hdr[3] = self._sweep_slots(hdr[3], _STEP_SWEEP, now)
            i, found = self._find(h)
            if found:
                tokens, last = self._tokens[i], self._last[i]
            else:
                if hdr[2] >= self.max_live:
                    raise TableFull("rate-limit table full")
                tokens, last = float(limit.burst), now
                self._keys[i] = h
                self._route[i] = rid
                hdr[2] += 1
                self._route_live[rid] += 1
            tokens, allowed = take_token(tokens, last, now, limit)
            self._tokens[i] = tokens
            self._last[i] = now
            self._full[i] = full_at(tokens, now, limit)
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        return decision(allowed, tokens, limit)  # outside the lock: the other workers wait less

    # -- several buckets in one critical section (service.ratelimit.tokens) -----------------

    def update_sync(self, items: Sequence[tuple[str, str]], fn: Update[T]) -> T:
        """Read the (tokens, last) of each (route, key) bucket (None when absent or past its
        full-again time), let `fn`
        decide from them and `now`, and write what it returns, all under one lock: `fn` returns
        one (tokens, last, full-again time or None to keep it) or None (leave it) per item, and
        a result handed back."""
        hs = []
        for route, key in items:
            rid = self._route_id(route)
            hs.append((self._hash_of(key, rid), rid))
        try:
            return self._update(hs, fn)
        except TableFull:
            self._sweep_all()
            return self._update(hs, fn)

    def _update(self, hs: list[tuple[int, int]], fn: Update[T]) -> T:
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        try:
            now = self._now()
            hdr = self._hdr
            if hdr[2] > self._sweep_above:
                hdr[3] = self._sweep_slots(hdr[3], _STEP_SWEEP, now)
            stored: list[tuple[float, float] | None] = []
            present: list[bool] = []
            for h, _ in hs:
                i, found = self._find(h)
                present.append(found)
                # One past its full-again time is as good as gone (not swept yet).
                live = found and self._full[i] > now
                stored.append((self._tokens[i], self._last[i]) if live else None)
            writes, result = fn(stored, now)
            new = sum(1 for w, p in zip(writes, present, strict=True) if w is not None and not p)
            if hdr[2] + new > self.max_live:
                raise TableFull("rate-limit table full")
            for (h, rid), w in zip(hs, writes, strict=True):
                if w is None:
                    continue
                i, found = self._find(h)  # again: an earlier item may have taken its empty slot
                if not found:
                    self._keys[i] = h
                    self._route[i] = rid
                    hdr[2] += 1
                    self._route_live[rid] += 1
                tokens, last, full = w
                self._tokens[i] = tokens
                self._last[i] = last
                if full is not None or not found:
                    self._full[i] = now if full is None else full
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        return result

    def sweep(self) -> None:
        self._sweep_all()

    def live(self) -> int:
        return int(self._hdr[2])

    def active_buckets(self) -> dict[str, int]:
        # A whole sweep costs tens of ms at 100k live buckets: once a second is enough for
        # /health and /metrics, whichever worker asks.
        now = self._now()
        if now - self._swept_at[0] >= self._count_sweep_every:
            self._swept_at[0] = now
            self._sweep_all()
        out: dict[str, int] = {}
        with self._locked():
            for i in range(self._hdr[4]):
                n = self._route_live[i]
                if n:
                    at = _ROUTES_AT + i * _ROUTE_NAME
                    name = bytes(self._mm[at : at + _ROUTE_NAME]).rstrip(b"\0").decode()
                    out[name] = int(n)
        return out

    async def healthy(self) -> bool:
        return True

    async def close(self) -> None:
        for v in [*self._views, self._hdr, self._swept_at, self._route_live]:
            v.release()
        self._views.clear()
        self._mm.close()
        os.close(self._fd)
