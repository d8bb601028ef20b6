"""service.server.lifeline: a child of the router's main process ends when that process dies
(the integration test, tests/integration/test_shutdown.py, kills a real main process); here the
start-up race and the cases where it must do nothing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from service.server import lifeline

ROOT = Path(__file__).resolve().parents[2]
CHILD = (
    "import sys, time; from service.server.lifeline import bind_to_primary; "
    "print(bind_to_primary(), flush=True); time.sleep(0.5); print('served on', flush=True)"
)


def _child(primary: str | None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != lifeline.PRIMARY_PID_ENV}
    if primary is not None:
        env[lifeline.PRIMARY_PID_ENV] = primary
    return subprocess.run(
        [sys.executable, "-c", CHILD], cwd=ROOT, env=env, capture_output=True, text=True, timeout=30
    )


def test_a_child_whose_main_process_is_alive_serves_on() -> None:
    done = _child(str(os.getpid()))  # this process is its parent
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[:2] == ["True", "served on"]


def test_a_child_whose_main_process_died_before_it_bound_stops_at_once() -> None:
    """The main process died while the child started: its parent is someone else already (here,
    a pid that is not its parent), so it sends itself the signal it asked for."""
    done = _child("1")
    assert done.returncode == -signal.SIGTERM
    assert "served on" not in done.stdout


def test_nothing_is_bound_outside_a_child_of_a_marked_main_process() -> None:
    assert _child(None).stdout.split("\n")[0] == "False"  # no main process named
    saved = os.environ.get(lifeline.PRIMARY_PID_ENV)
    try:
        lifeline.mark_primary()  # this process is the main process: not its own child
        assert os.environ[lifeline.PRIMARY_PID_ENV] == str(os.getpid())
        assert lifeline.bind_to_primary() is False
    finally:
        if saved is None:
            os.environ.pop(lifeline.PRIMARY_PID_ENV, None)
        else:
            os.environ[lifeline.PRIMARY_PID_ENV] = saved
