"""A killed worker drops out of the live gauges at the next scrape even before Sanic's manager
reaps it: until then it is a zombie, which `kill(pid, 0)` cannot tell from a running process."""

from __future__ import annotations

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
