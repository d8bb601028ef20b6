"""`LogThrottle`: the failure lines of a store that is down (the request limiter's, the token
store's, the routing file's ejection share), at most one per `LOG_EVERY_SECS` per worker, each
saying how many failures it stands for. A leaf module (time only)."""

from __future__ import annotations

import time

from .bucket import LOG_EVERY_SECS


class LogThrottle:
    """One failing store's log lines, at most one per LOG_EVERY_SECS (a store that is down fails
    every request, or every sync tick): `due()` gives the number of failures left unlogged since
    the last line when one may be written now, else None (and counts this one)."""

    __slots__ = ("_at", "_unlogged")

    def __init__(self) -> None:
        self._at = -LOG_EVERY_SECS
        self._unlogged = 0

    def due(self) -> int | None:
        now = time.monotonic()
        if now - self._at < LOG_EVERY_SECS:
            self._unlogged += 1
            return None
        suppressed, self._at, self._unlogged = self._unlogged, now, 0
        return suppressed
