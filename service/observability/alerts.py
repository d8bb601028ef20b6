"""Repeated upstream failures raise one alert log line, at most once per `ALERT_INTERVAL_SECS`.

"Repeated" is `FAILURE_THRESHOLD` failures within `FAILURE_WINDOW_SECS` (SPEC §9: 5 in 5 minutes,
at most once a minute). Each worker keeps its own alarm (no cross-process state on the hot path);
the instance-wide picture is the `upstream_errors_total` counter, which the PrometheusRule of the
Helm chart alerts on.
"""

from __future__ import annotations

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
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.threshold = threshold
        self.window_secs = window_secs
        self.interval_secs = interval_secs
        self._clock = clock
        self._times: deque[float] = deque(maxlen=threshold)
        self._last_alert: float | None = None

    def record(self) -> bool:
        now = self._clock()
        self._times.append(now)
        if len(self._times) < self.threshold or now - self._times[0] > self.window_secs:
            return False
        if self._last_alert is not None and now - self._last_alert < self.interval_secs:
            return False
        self._last_alert = now
        return True
