"""Hot reload of the active profile file, per worker.

`ConfigHolder.current` is read once at the start of each request, so a request keeps the config it
started with. `check()` is called at most once a second by a background task: it stats the file
(following symlinks: a ConfigMap update swaps a link), and the other files it was read from (a
routing file's upstream profiles), and only when one's identity, modification time, size or
change time changed does it validate the new text and swap the whole `LoadedConfig` in one
assignment (atomic for readers). A broken edit keeps the last good config, is logged, counted,
and shown in `/health` until the files are good again, or again the ones being served. A
profile file that a routing file reads and that disappears (the routing file unchanged) is such
an error: the lookup does not move on to another file of that name.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import structlog

from .loader import GONE, ConfigError, LoadedConfig, Stamp, load_file, stamp_of

log = structlog.get_logger("api_router.config")

CHECK_INTERVAL_SECS = 1.0


class ConfigHolder:
    def __init__(
        self,
        initial: LoadedConfig,
        on_result: Callable[[str], None] | None = None,
        on_load: Callable[[LoadedConfig], None] | None = None,
    ) -> None:
        # Called with every config before it serves a request (the first one included), e.g.
        # to register its secrets with the log scrubber.
        self.on_load = on_load
        if on_load is not None:
            on_load(initial)
        self.current = initial
        self.reloads = 0
        self.failures = 0
        self.last_error: str | None = None
        self.last_error_at: float | None = None
        self.last_check_at: float | None = None
        self.on_result = on_result
        self._bad_stamp: tuple[Stamp, ...] | None = None

    def check(self) -> bool:
        """Reload if the file changed; returns True when a new config was swapped in."""
        self.last_check_at = time.time()
        cfg = self.current
        path = cfg.path
        stamp = self._stamp()
        current = (
            (cfg.mtime_ns, cfg.size, cfg.inode, cfg.ctime_ns),
            *(was for _, was in cfg.deps),
        )
        if stamp == current:
            if self.last_error is not None:
                # The files are again the very ones being served (a file moved away and back,
                # an edit undone): nothing is wrong any more.
                self.last_error = None
                self._bad_stamp = None
            return False
        if stamp == self._bad_stamp:
            return False
        if stamp[0] == current[0]:
            deps = zip(cfg.deps, stamp[1:], strict=True)
            gone = next((dep for (dep, _), now in deps if now == GONE), None)
            if gone is not None:
                # A profile file the routing file reads was removed, the routing file unchanged:
                # not a cue to look further (a shipped profile of the same name would then
                # serve, elsewhere, with no word said).
                self._failed(stamp, f"{gone}: file not found (read by {path})")
                return False
        try:
            new = load_file(path, now=time.time())
        except ConfigError as e:
            self._failed(stamp, str(e))
            return False
        except Exception as e:  # never ends the watch: the next edit must still be read
            log.exception("config_reload_error")  # the traceback (frames only, scrubbed)
            self._failed(stamp, f"{path}: cannot be loaded: {e.__class__.__name__}")
            return False
        self._bad_stamp = None
        if self.on_load is not None:
            self.on_load(new)
        self.current = new
        self.reloads += 1
        self.last_error = None
        log.info("config_reloaded", path=str(path), profile=new.profile.name)
        if self.on_result:
            self.on_result("success")
        return True

    def refused_at_start(self, error: str) -> None:
        """The file could not be loaded when this worker started, and it serves the instance's
        last good config (service.config.lastgood): reported as a failed reload, at once (the
        first check would only find it a second later), and not again until the file changes."""
        self._failed(self._stamp(), error)

    def _stamp(self) -> tuple[Stamp, ...]:
        """The stamps of the files the current config was read from, as they are now."""
        cfg = self.current
        return (stamp_of(cfg.path), *(stamp_of(dep) for dep, _ in cfg.deps))

    def _failed(self, stamp: tuple[Stamp, ...], error: str) -> None:
        # Remember the broken version so it is reported once, not every second.
        self._bad_stamp = stamp
        self.failures += 1
        self.last_error = error
        self.last_error_at = time.time()
        log.error("config_reload_failed", path=str(self.current.path), error=error)
        if self.on_result:
            self.on_result("failure")

    async def watch(self) -> None:
        while True:
            await asyncio.sleep(CHECK_INTERVAL_SECS)
            # A stat() per second; parsing happens only when the file really changed.
            try:
                self.check()
            except Exception as e:  # e.g. in on_load: logged, and the watch goes on
                log.exception("config_watch_error", error_class=e.__class__.__name__)

    def state(self) -> dict[str, object]:
        return {
            "path": str(self.current.path),
            "profile": self.current.profile.name,
            "loadedAt": self.current.loaded_at,
            "lastCheckAt": self.last_check_at,
            "reloads": self.reloads,
            "reloadFailures": self.failures,
            "lastError": self.last_error,
            "lastErrorAt": self.last_error_at,
            "status": "error" if self.last_error else "ok",
        }
