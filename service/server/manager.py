"""Sanic's worker manager stops waiting for start-up acknowledgements once it is shutting down.

Buys: a pod stopped while it starts ends at once. Sanic 25's manager waits for every worker's
start-up acknowledgement in a loop that, when SIGTERM arrives first, re-queues the shutdown
message to itself forever (a busy loop at full CPU until SIGKILL): a pod stopped while starting
would spin through its grace period. Once shutting down, the wait ends; the manager's monitor
then sees the shutdown message and stops the workers as usual. The wait also ends when the
worker-state manager process is already gone (the SIGTERM reached it first), which otherwise
ended the router with a traceback and exit 1 about one time in seven.

Relies on: `WorkerManager._all_workers_ack` and `WorkerManager._shutting_down`
(sanic/worker/manager.py), replaced on the class in the CLI's process before it serves. An
upgrade of Sanic that renames them makes `patch()` fail loudly (AttributeError) rather than
spin; one that fixes the loop makes it unnecessary.
tests/integration/test_shutdown.py (`test_sigterm_while_workers_start_ends_the_process`) stops a
router while its workers start. Always on.
"""

from __future__ import annotations


def patch() -> None:
    from sanic.worker.manager import WorkerManager

    acked = WorkerManager._all_workers_ack
    if getattr(acked, "_api_router_patched", False):
        return

    def _all_workers_ack(self: WorkerManager) -> bool:
        if self._shutting_down:
            return True
        try:
            return bool(acked(self))
        except (EOFError, OSError):
            # The shared worker-state manager (a child process) went away: a SIGTERM sent to
            # the whole process group reached it first. Nothing is left to wait for; the
            # monitor then stops the workers as usual (instead of a traceback and exit 1).
            return True

    _all_workers_ack._api_router_patched = True  # type: ignore[attr-defined]
    WorkerManager._all_workers_ack = _all_workers_ack  # type: ignore[method-assign]
