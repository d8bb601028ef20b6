"""Repeated upstream failures raise one alert log line, at most once per `ALERT_INTERVAL_SECS`.

"Repeated" is `FAILURE_THRESHOLD` failures within `FAILURE_WINDOW_SECS` (SPEC §9: 5 in 5 minutes,
at most once a minute), counted over the whole instance: with a `state_path` (a small file in the
per-start multiprocess directory, shared by every worker) the last failure times and the last
alert time live in that file under an exclusive `flock`, so five failures spread over several
workers alert, and only one worker logs the line. Only the failure path touches the file; a good
request never does. Without a path (one process, tests) the state stays in memory.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from collections import deque
from collections.abc import Callable

FAILURE_THRESHOLD = 5
FAILURE_WINDOW_SECS = 300.0
ALERT_INTERVAL_SECS = 60.0


class FailureAlarm:
    """`record()` is called once per upstream failure; it returns True when an alert is due.

    Only the last `threshold` failure times are kept: the threshold is met when the oldest of
    them is still inside the window, so memory stays constant under a failure storm.
    """

    def __init__(
        self,
        threshold: int = FAILURE_THRESHOLD,
        window_secs: float = FAILURE_WINDOW_SECS,
        interval_secs: float = ALERT_INTERVAL_SECS,
        clock: Callable[[], float] = time.monotonic,  # CLOCK_MONOTONIC: one clock for all workers
        state_path: str | None = None,
    ) -> None:
        self.threshold = threshold
        self.window_secs = window_secs
        self.interval_secs = interval_secs
        self._clock = clock
        self._times: deque[float] = deque(maxlen=threshold)
        self._last_alert: float | None = None
        self._path = state_path

    def _decide(self, now: float) -> bool:
        self._times.append(now)
        if len(self._times) < self.threshold or now - self._times[0] > self.window_secs:
            return False
        if self._last_alert is not None and now - self._last_alert < self.interval_secs:
            return False
        self._last_alert = now
        return True

    def record(self) -> bool:
        now = self._clock()
        if self._path is None:
            return self._decide(now)
        fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            raw = os.pread(fd, 4096, 0)
            try:
                saved = json.loads(raw) if raw else {}
            except ValueError:
                saved = {}
            self._times = deque(saved.get("times", []), maxlen=self.threshold)
            self._last_alert = saved.get("last")
            due = self._decide(now)
            data = json.dumps({"times": list(self._times), "last": self._last_alert}).encode()
            os.ftruncate(fd, 0)
            os.pwrite(fd, data, 0)
            return due
        finally:
            os.close(fd)  # closing releases the lock
