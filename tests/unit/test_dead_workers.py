"""A killed worker drops out of the live gauges at the next scrape even before Sanic's manager
reaps it: until then it is a zombie, which `kill(pid, 0)` cannot tell from a running process."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

from service.observability.metrics import _alive


def test_a_zombie_worker_is_not_alive() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert _alive(proc.pid)
        proc.kill()
        deadline = time.monotonic() + 10
        while _alive(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.01)  # not reaped: a zombie from the moment it died
        assert not _alive(proc.pid)
        with open(f"/proc/{proc.pid}/stat", "rb") as f:
            assert b") Z " in f.read()  # it really is an unreaped zombie here
    finally:
        proc.kill()
        proc.wait()
    assert not _alive(proc.pid)


def test_a_signal_during_a_call_to_the_state_manager_is_handled_after_it() -> None:
    """service.server.manager: a SIGTERM whose handler would write to the worker-state
    manager's connection while the main thread is mid-call on it (the race CI saw as
    "'list' object is not a mapping") is deferred until that call returns, then handled."""
    from sanic.worker.manager import WorkerManager

    from service.server import manager

    manager.patch()
    events: list[str] = []

    class Pipe:
        def send(self, msg: object) -> None:
            events.append(f"shutdown message {msg!r}")

    m = WorkerManager.__new__(WorkerManager)
    m._shutting_down = False
    m.monitor_publisher = Pipe()
    m.transient = {}  # no workers: no processes to terminate
    m.durable = {}
    m.num_server = 1

    class States(dict):  # the proxy: the signal arrives in the middle of its call
        def values(self) -> list[dict[str, str]]:
            events.append("call begins")
            WorkerManager.shutdown_signal(m, signal.SIGTERM, None)
            events.append("call ends")
            return [{"state": "STARTING", "server": "yes"}]

    m.worker_state = States()
    assert m._all_workers_ack() is True  # the wait ends: shutting down
    assert events == ["call begins", "call ends", "shutdown message None"]
    assert m._shutting_down is True
    # Outside a call, a signal is handled at once (a second one kills, as Sanic does).
    m._shutting_down = False
    WorkerManager.shutdown_signal(m, signal.SIGTERM, None)
    assert events[-1] == "shutdown message None" and len(events) == 4
