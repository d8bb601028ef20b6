"""Sanic's worker manager stops waiting for start-up acknowledgements once it is shutting down.

Buys: a pod stopped while it starts ends at once. Sanic 25's manager waits for every worker's
start-up acknowledgement in a loop that, when SIGTERM arrives first, re-queues the shutdown
message to itself forever (a busy loop at full CPU until SIGKILL): a pod stopped while starting
would spin through its grace period. Once shutting down, the wait ends; the manager's monitor
then sees the shutdown message and stops the workers as usual. The wait also ends when the
worker-state manager process is already gone (the SIGTERM reached it first), which otherwise
ended the router with a traceback and exit 1 about one time in seven; so does the monitor's
state sync (a group SIGTERM while streams drain: exit 1 after a whole drain). And a SIGTERM
that arrives while the manager's main thread is in a call to the worker-state manager (the ack
wait, the monitor's state sync) is handled when that call returns, not in the middle of it: the
signal handler's own calls would otherwise interleave with it on the one connection (seen in CI as
"'list' object is not a mapping" and exit 1).

A worker that dies while the router serves (the OOM killer, a crash) is logged (`worker_died`,
with its exit code) and started again: Sanic 25's manager only marks it failed, and the instance
would go on with a worker less, silently. One that dies again within a minute of being started
waits twice as long as the last time before the next start (1 s, 2 s, … at most 60 s), so a
worker that cannot start does not spin.

Relies on: `WorkerManager._all_workers_ack`, `_sync_states`, `shutdown_signal`, `restart`,
`transient_processes` and `_shutting_down`
(sanic/worker/manager.py), replaced on the class in the CLI's process before it serves. An
upgrade of Sanic that renames them makes `patch()` fail loudly (AttributeError) rather than
spin; one that fixes the loop makes it unnecessary.
tests/integration/test_shutdown.py (`test_sigterm_while_workers_start_ends_the_process`) stops a
router while its workers start. Always on.

The worker-state manager (multiprocessing's `SyncManager`, which Sanic starts with no
initializer) gets `state_manager_started` as its initializer (`SyncManager.start`, replaced in
the same process): it ends with the main process as the workers do
(`service.server.lifeline.bind_to_primary`), and it ignores SIGHUP as they do. A terminal that
closes sends SIGHUP to the whole process group; the manager's default action ended it, and the
main process then stopped the router at its next state sync (BrokenPipeError, exit 1).
"""

from __future__ import annotations

import signal
import time
from multiprocessing.managers import SyncManager
from typing import Any

import structlog

from . import lifeline

log = structlog.get_logger("api_router")
RESPAWN_FIRST_SECS = 1.0  # the wait before a worker that died is started again
RESPAWN_MAX_SECS = 60.0


def patch() -> None:
    from sanic.worker.manager import WorkerManager

    acked = WorkerManager._all_workers_ack
    if getattr(acked, "_api_router_patched", False):
        return
    sync_states = WorkerManager._sync_states
    shutdown_signal = WorkerManager.shutdown_signal

    def _run_deferred(self: WorkerManager) -> bool:
        """The signal that arrived during a call to the state manager, handled now."""
        deferred = getattr(self, "_api_router_deferred", None)
        if deferred is None:
            return False
        self._api_router_deferred = None  # type: ignore[attr-defined]
        shutdown_signal(self, *deferred)
        return True

    def _all_workers_ack(self: WorkerManager) -> bool:
        if self._shutting_down:
            return True
        self._api_router_in_call = True  # type: ignore[attr-defined]
        try:
            done = bool(acked(self))
        except (EOFError, OSError):
            # The shared worker-state manager (a child process) went away: a SIGTERM sent to
            # the whole process group reached it first. Nothing is left to wait for; the
            # monitor then stops the workers as usual (instead of a traceback and exit 1).
            done = True
        finally:
            self._api_router_in_call = False  # type: ignore[attr-defined]
        return _run_deferred(self) or done

    def _sync_states(self: WorkerManager) -> None:
        self._api_router_in_call = True  # type: ignore[attr-defined]
        try:
            try:
                sync_states(self)
            except (EOFError, OSError):
                # The worker-state manager went away: a SIGTERM sent to the whole process group
                # reached it too (its default action). The workers drain and stop as usual;
                # this was a traceback and exit 1 once the drain had ended.
                pass
            respawn_dead(self)
        finally:
            self._api_router_in_call = False  # type: ignore[attr-defined]
        _run_deferred(self)

    def _shutdown_signal(self: WorkerManager, signal: Any, frame: Any) -> None:
        if getattr(self, "_api_router_in_call", False):
            # The main thread is in the middle of a call to the state manager over its one
            # connection: a shutdown now would write to that connection mid-message (seen as
            # "'list' object is not a mapping" and an exit 1). Handled as soon as it returns.
            self._api_router_deferred = (signal, frame)  # type: ignore[attr-defined]
            return
        shutdown_signal(self, signal, frame)

    _all_workers_ack._api_router_patched = True  # type: ignore[attr-defined]
    bind_state_manager()
    WorkerManager._all_workers_ack = _all_workers_ack  # type: ignore[method-assign]
    WorkerManager._sync_states = _sync_states  # type: ignore[method-assign]
    WorkerManager.shutdown_signal = _shutdown_signal  # type: ignore[method-assign]


def state_manager_started() -> None:
    """First thing in the worker-state manager's process (see the module docstring)."""
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    lifeline.bind_to_primary()


def bind_state_manager() -> None:
    """Sanic's worker-state manager (multiprocessing's `Manager()`, started without an
    initializer) runs `state_manager_started` as it starts."""
    start = SyncManager.start

    def _start(self: SyncManager, initializer: Any = None, initargs: Any = ()) -> None:
        start(self, state_manager_started if initializer is None else initializer, initargs)

    SyncManager.start = _start  # type: ignore[method-assign,assignment]


def respawn_dead(self: Any, now: float | None = None) -> None:
    """Start again each server worker that died (see the module docstring); `self`: Sanic's
    WorkerManager (`now`: the monotonic time, for tests)."""
    if self._shutting_down:
        return
    now = time.monotonic() if now is None else now
    # per worker: (when it was last started again, the wait before that start)
    history: dict[str, tuple[float, float]] = self.__dict__.setdefault("_api_router_respawns", {})
    due: dict[str, float] = self.__dict__.setdefault("_api_router_due", {})
    for process in self.transient_processes:
        if process.is_alive() or process.exitcode is None:
            due.pop(process.name, None)
            continue  # serving, or not started yet
        if process.name not in due:  # just found dead: say so once, and plan its start
            last, wait = history.get(process.name, (-RESPAWN_MAX_SECS, 0.0))
            wait = min(wait * 2, RESPAWN_MAX_SECS) if now - last < 60 else RESPAWN_FIRST_SECS
            due[process.name] = now + wait
            history[process.name] = (now + wait, wait)
            log.error(
                "worker_died",
                worker=process.name,
                pid=process.pid,
                exitcode=process.exitcode,
                restart_in_secs=wait,
            )
        if now >= due[process.name]:
            del due[process.name]
            self.restart(process_names=[process.name])
