"""Outlier ejection and cooldowns of a routing file's upstreams, shared by the workers of an
instance (SPEC §11).

An upstream that fails `consecutiveFailures` attempts in a row (no answer, or a 5xx) is
**ejected**: skipped by every request for `baseEjectionSecs`, doubled on each ejection that
follows without a success in between, up to `maxEjectionSecs`. When the time is up, one request
at a time may **probe** it (half-open: the first request to find it due claims the probe for a
lease, the longest its attempt may take and at least `PROBE_LEASE_SECS`, or until it lets go;
the others keep skipping it); a success restores it (and forgets its ejection count), a failure
ejects it again for the next, longer time. While the ejection runs, answers to attempts sent
before it change nothing (a request that tries it because all its targets are ejected does).

An upstream that answered 429 with a `Retry-After` **cools down** for that long; a later, longer
value extends the cooldown, a shorter one never shortens it.

The state lives in a small table in shared memory (a file in /dev/shm, created by the CLI before
the workers start and named in `EJECTION_TABLE_ENV`; like the rate limiter's), one slot per
upstream name, each change under an exclusive `flock`. Without the variable (a router started
without the CLI, a test) the table is private to the process. CLOCK_MONOTONIC is one clock for
the machine, so the workers agree on the times. With Redis as the rate limiter's backend, the
waits are shared across replicas too (service.ejection_redis).
"""

from __future__ import annotations

import contextlib
import mmap
import os
import struct
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from .ratelimit.shared import flocked, share_file, shm_directory

EJECTION_TABLE_ENV = "API_ROUTER_EJECTION_TABLE"
SLOTS = 256
_NAME = 64
# name, consecutive failures, ejections in a row, ejected until, cooled until, probe until
_SLOT = struct.Struct(f"<{_NAME}sIIddd")
_STATE = struct.Struct("<IIddd")  # a slot's fields after its name (no padding: `<`)
PROBE_LEASE_SECS = 30.0


@dataclass(frozen=True)
class OutlierPolicy:
    consecutive_failures: int = 5
    base_ejection_secs: float = 30.0
    max_ejection_secs: float = 300.0
    # Also ejected when, within one window, at least `failure_rate` of at least
    # `failure_rate_min_attempts` attempts failed (0: off). Counted per worker (each sees its
    # own share of the traffic), the ejection shared like any other.
    failure_rate: float = 0.5
    failure_rate_min_attempts: int = 20
    failure_rate_window_secs: float = 30.0


def create_table() -> str:
    """An empty table file (in /dev/shm when it exists), for the workers of this process."""
    fd, path = tempfile.mkstemp(prefix="api-router-ejection-", suffix=".tbl", dir=shm_directory())
    try:
        os.ftruncate(fd, SLOTS * _SLOT.size)
    finally:
        os.close(fd)
    return path


def share_table() -> str:
    """A table for the workers of this (primary) process, like the rate limiter's: it never
    outlives the router (ratelimit.shared.share_file)."""
    return share_file(create_table())


@dataclass(frozen=True)
class Gate:
    """Whether an upstream may be tried now, and if not, until when and why."""

    allowed: bool
    until: float = 0.0
    why: str = ""  # "ejected" or "cooling" when not allowed
    probe: bool = False  # allowed as the half-open probe


ALLOWED = Gate(True)  # the common answer, made once (a frozen dataclass is slow to build)


class Ejections:
    """One worker's handle on the table (see the module docstring)."""

    def __init__(self, path: str | None = None, clock: Callable[[], float] = time.monotonic):
        self.now = clock
        # Told of each wait this instance decides (service.ejection_redis shares it).
        self.on_wait: Callable[[str, str, float], None] | None = None
        self._slots: dict[str, int] = {}  # name -> offset of its slot
        # This worker's window per upstream: [start, attempts, failures] (the failure rate).
        self._windows: dict[str, list[float]] = {}
        self._used = 0  # slots known to be filled (they fill in order)
        if path is None:
            self._fd: int | None = None
            self._mm = mmap.mmap(-1, SLOTS * _SLOT.size)
        else:
            self._fd = os.open(path, os.O_RDWR)
            self._mm = mmap.mmap(self._fd, SLOTS * _SLOT.size)

    def close(self) -> None:
        self._mm.close()
        if self._fd is not None:
            os.close(self._fd)

    def _locked(self) -> contextlib.AbstractContextManager[None]:
        return flocked(self._fd)

    @contextlib.contextmanager
    def _slot(self, name: str, create: bool) -> Iterator[int | None]:
        """The offset of `name`'s slot (made if `create`; None if none), under the lock."""
        with self._locked():
            yield self._find(name, create)

    def _find(self, name: str, create: bool) -> int | None:
        at = self._slots.get(name)
        if at is not None:  # a name keeps its slot for the life of the table
            return at
        self._learn()  # slots other workers filled since we last looked
        at = self._slots.get(name)
        if at is not None or not create:
            return at
        if self._used >= SLOTS:
            return None
        at = self._used * _SLOT.size
        raw = name.encode()[: _NAME - 1]
        # The name first, its length (the slot's first byte) last: a worker reading without the
        # lock sees either an empty slot or a whole name, never half of one.
        self._mm[at + 1 : at + _NAME] = raw.ljust(_NAME - 1, b"\0")
        self._mm[at] = len(raw)
        self._slots[name] = at
        self._used += 1
        return at

    def _learn(self) -> None:
        """Read the names of the slots filled after the last one known (slots fill in order and
        are never emptied): a miss costs one slot's read, not a scan of the table."""
        while self._used < SLOTS:
            at = self._used * _SLOT.size
            n = self._mm[at]
            if n == 0:
                return
            self._slots[self._mm[at + 1 : at + 1 + n].decode(errors="replace")] = at
            self._used += 1

    def _read(self, at: int) -> tuple[int, int, float, float, float]:
        return _STATE.unpack_from(self._mm, at + _NAME)

    def _write(self, at: int, *fields: float) -> None:
        _STATE.pack_into(self._mm, at + _NAME, *fields)

    @staticmethod
    def _gate(ejected: float, cooled: float, probe: float, now: float) -> Gate | None:
        """Not allowed now (a Gate saying until when and why), or None: allowed, or due for a
        probe if `ejected` is set."""
        if cooled > now:
            return Gate(False, cooled, "cooling")
        if ejected > now:
            return Gate(False, ejected, "ejected")
        if ejected and probe > now:  # another request is probing it
            return Gate(False, probe, "ejected")
        return None

    def peek(self, name: str) -> Gate:
        """The state of `name` now, without claiming a probe."""
        return self.gate(name, claim=False)

    def gate(self, name: str, lease: float = PROBE_LEASE_SECS, claim: bool = True) -> Gate:
        """May `name` be tried now? With `claim`, takes the half-open probe when its ejection
        time is over (for `lease` seconds)."""
        # Without the lock first: the common case, an upstream never ejected nor cooling (a
        # torn read of a slot being written can at worst let one more request through).
        at = self._slots.get(name)
        if at is None:
            at = self._find(name, False)
            if at is None:
                return ALLOWED
        _, _, ejected, cooled, _ = _STATE.unpack_from(self._mm, at + _NAME)
        now = self.now()
        if not ejected and cooled <= now:
            return ALLOWED
        with self._locked():
            fails, ejections, ejected, cooled, probe = self._read(at)
            blocked = self._gate(ejected, cooled, probe, now)
            if blocked is not None:
                return blocked
            if not ejected or not claim:
                return ALLOWED
            self._write(at, fails, ejections, ejected, cooled, now + lease)
            return Gate(True, probe=True)

    def _rate_trips(self, name: str, failed: bool, policy: OutlierPolicy) -> bool:
        """Count the attempt in this worker's window; True when it is a failure and the
        window's failure rate says eject (the window then starts again). A success is only
        counted: it never trips (and its caller ejects nothing), so judging on it threw away
        a window that had reached the rate (an upstream failing every other attempt, first
        failing, was never ejected: each window's 20th attempt was a success)."""
        if policy.failure_rate <= 0:
            return False
        now = self.now()
        w = self._windows.get(name)
        if w is None or now - w[0] >= policy.failure_rate_window_secs:
            w = self._windows[name] = [now, 0, 0]
        w[1] += 1
        if not failed:
            return False
        w[2] += 1
        if w[1] >= policy.failure_rate_min_attempts and w[2] >= policy.failure_rate * w[1]:
            self._windows[name] = [now, 0, 0]
            return True
        return False

    def success(
        self, name: str, policy: OutlierPolicy | None = None, tried_anyway: bool = False
    ) -> None:
        """An answer that was not a failure: restored, its ejection count forgotten. Not while
        its ejection time runs, unless `tried_anyway` (a request whose every target was
        ejected tried it all the same, and it answered): otherwise such an answer comes from an
        attempt sent before the ejection, as the failures ignored then do, and ended it at once
        (with Redis for every replica). After its time, the first success restores it (the
        probe's, or one sent before and answered late)."""
        if policy is not None and policy.failure_rate > 0:
            self._rate_trips(name, False, policy)
        at = self._slots.get(name)
        if at is None:
            at = self._find(name, False)
            if at is None:
                return
        fails, _, ejected, _, _ = _STATE.unpack_from(self._mm, at + _NAME)
        if not (ejected or fails):  # nothing to restore (read without the lock: the usual case)
            return
        with self._locked():
            fails, _, ejected, cooled, _ = self._read(at)
            if not (ejected or fails) or (ejected > self.now() and not tried_anyway):
                return
            self._write(at, 0, 0, 0.0, cooled, 0.0)
        if ejected and self.on_wait is not None:
            self.on_wait(name, "restored", 0.0)

    def failure(self, name: str, policy: OutlierPolicy) -> bool:
        """A failed attempt; True when it ejected the upstream."""
        now = self.now()
        with self._locked():
            at = self._find(name, True)
            if at is None:
                return False  # more upstream names than slots: never ejected
            fails, ejections, ejected, cooled, probe = self._read(at)
            fails += 1
            probing = bool(ejected) and ejected <= now
            by_rate = self._rate_trips(name, True, policy)
            if ejected > now:  # failures of attempts still in flight: already ejected
                self._write(at, 0, ejections, ejected, cooled, probe)
                return False
            if fails >= policy.consecutive_failures or probing or by_rate:
                secs = min(
                    policy.max_ejection_secs, policy.base_ejection_secs * (2 ** min(ejections, 30))
                )
                self._write(at, 0, ejections + 1, now + secs, cooled, 0.0)
                if self.on_wait is not None:
                    self.on_wait(name, "ejected", secs)
                return True
            self._write(at, fails, ejections, ejected, cooled, probe)
            return False

    def release_probe(self, name: str) -> None:
        """A claimed probe that will not report (the request stopped before its attempt, or
        the upstream said 429): another request may probe at once."""
        with self._slot(name, False) as at:
            if at is None:
                return
            fails, ejections, ejected, cooled, _ = self._read(at)
            self._write(at, fails, ejections, ejected, cooled, 0.0)

    def cool(self, name: str, secs: float) -> None:
        """The upstream asked for `secs` of quiet (Retry-After): never shortened."""
        now = self.now()
        with self._slot(name, True) as at:
            if at is None:
                return
            fails, ejections, ejected, cooled, probe = self._read(at)
            self._write(at, fails, ejections, ejected, max(cooled, now + secs), probe)
        if self.on_wait is not None:
            self.on_wait(name, "cooled", secs)

    def adopt(self, name: str, ejected_secs: float, cooled_secs: float) -> None:
        """Another replica's waits for `name` (remaining seconds; <= 0: none): each kept if
        longer than this instance's own. An adopted ejection ends with a probe, as our own."""
        if ejected_secs <= 0 and cooled_secs <= 0:
            return
        now = self.now()
        with self._slot(name, True) as at:
            if at is None:
                return
            fails, ejections, ejected, cooled, probe = self._read(at)
            if ejected_secs > 0 and now + ejected_secs > ejected:
                ejected, ejections = now + ejected_secs, max(ejections, 1)
            if cooled_secs > 0:
                cooled = max(cooled, now + cooled_secs)
            self._write(at, fails, ejections, ejected, cooled, probe)

    def ejected(self, name: str) -> bool:
        """For the `upstream_ejected` gauge: ejected and not yet restored."""
        with self._locked():
            at = self._find(name, False)
            return at is not None and self._read(at)[2] > 0
