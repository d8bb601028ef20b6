"""A killed worker drops out of the live gauges at the next scrape even before Sanic's manager
reaps it: until then it is a zombie, which `kill(pid, 0)` cannot tell from a running process."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

from service.observability.metrics import process_alive


def test_a_zombie_worker_is_not_alive() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert process_alive(proc.pid)
        proc.kill()
        deadline = time.monotonic() + 10
        while process_alive(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.01)  # not reaped: a zombie from the moment it died
        assert not process_alive(proc.pid)
        with open(f"/proc/{proc.pid}/stat", "rb") as f:
            assert b") Z " in f.read()  # it really is an unreaped zombie here
    finally:
        proc.kill()
        proc.wait()
    assert not process_alive(proc.pid)


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


def test_a_worker_that_keeps_dying_waits_longer_each_time() -> None:
    """docs/deployment.md: started again after a second; one that dies again within a minute of
    a start waits twice as long each time (up to a minute); after a good minute, a second again."""
    from types import SimpleNamespace

    from service.server.manager import respawn_dead

    proc = SimpleNamespace(name="Srv 0", pid=1, exitcode=-9, alive=False)
    proc.is_alive = lambda: proc.alive
    started: list[float] = []

    class Manager:
        _shutting_down = False
        transient_processes = [proc]

        def restart(self, process_names: list[str]) -> None:
            assert process_names == ["Srv 0"]
            started.append(clock)
            proc.alive = True

    m = Manager()
    clock = 0.0
    for clock, dies in ((0.0, True), (0.5, False), (1.0, False), (5.0, True), (6.0, False),
                        (7.0, False), (8.0, True), (11.9, False), (12.0, False),
                        (100.0, True), (101.0, False)):  # fmt: skip
        if dies:
            proc.alive = False
        respawn_dead(m, now=clock)
    assert started == [1.0, 7.0, 12.0, 101.0]  # waits of 1, 2, 4, then 1 again
    Manager._shutting_down = True
    proc.alive = False
    respawn_dead(m, now=500.0)
    respawn_dead(m, now=600.0)
    assert started == [1.0, 7.0, 12.0, 101.0]  # never while stopping
