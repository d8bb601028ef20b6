"""tests/order_plugin.py: `--order` runs the tests reversed or shuffled within each module, the
same order in every xdist worker, and refuses a value it does not know.

A small suite of two modules (three tests each, each test appending its name to a file) is run
in a pytest subprocess; the file says in which order they ran.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import NO_AUTOLOAD, ONLY_XDIST, ROOT

MODULE = """
import os


def _ran(name):
    with open(os.environ["ORDER_LOG"], "a") as f:
        f.write(name + "\\n")


def test_a():
    _ran("{m}.a")


def test_b():
    _ran("{m}.b")


def test_c():
    _ran("{m}.c")
"""
COLLECTED = ["m1.a", "m1.b", "m1.c", "m2.a", "m2.b", "m2.c"]


def _run(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    for m in ("m1", "m2"):
        (tmp_path / f"test_{m}.py").write_text(MODULE.format(m=m))
    log = tmp_path / "ran.txt"
    log.unlink(missing_ok=True)
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "tests.order_plugin", "-p", "no:cacheprovider",
         *ONLY_XDIST, *args, "test_m1.py", "test_m2.py"],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT), "ORDER_LOG": str(log), **NO_AUTOLOAD},
        capture_output=True,
        text=True,
        timeout=60,
    )  # fmt: skip
    return out, log.read_text().split() if log.exists() else []


def test_the_default_is_the_collected_order(tmp_path: Path) -> None:
    out, ran = _run(tmp_path)
    assert out.returncode == pytest.ExitCode.OK, out.stdout
    assert ran == COLLECTED


def test_reverse_runs_every_test_in_the_opposite_order(tmp_path: Path) -> None:
    out, ran = _run(tmp_path, "--order=reverse")
    assert out.returncode == pytest.ExitCode.OK, out.stdout
    assert ran == COLLECTED[::-1]


def test_shuffle_keeps_modules_together_and_is_the_same_for_a_seed(tmp_path: Path) -> None:
    orders = set()
    for seed in range(3):
        out, ran = _run(tmp_path, f"--order=shuffle:{seed}")
        assert out.returncode == pytest.ExitCode.OK, out.stdout
        assert sorted(ran[:3]) == COLLECTED[:3] and sorted(ran[3:]) == COLLECTED[3:]
        assert _run(tmp_path, f"--order=shuffle:{seed}")[1] == ran  # the seed decides
        orders.add(tuple(ran))
    assert len(orders) > 1  # three seeds, 36 orders possible: not all the same


def test_xdist_workers_agree_on_the_new_order(tmp_path: Path) -> None:
    out, ran = _run(tmp_path, "-n", "2", "--order=shuffle:1")
    assert out.returncode == pytest.ExitCode.OK, (
        out.stdout + out.stderr
    )  # else: "Different tests were collected"
    assert sorted(ran) == sorted(COLLECTED)


@pytest.mark.parametrize("value", ["backwards", "shuffle", "shuffle:x", "reverse:1"])
def test_an_unknown_order_is_a_usage_error(tmp_path: Path, value: str) -> None:
    out, ran = _run(tmp_path, f"--order={value}")
    assert out.returncode == pytest.ExitCode.USAGE_ERROR, out.stdout
    assert f"--order={value!r}: collected, reverse or shuffle:SEED" in out.stderr
    assert ran == []
