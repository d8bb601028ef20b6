"""tests/lost_tests.py: a run that loses selected tests fails; one that runs them all does not.

A small suite of two tests with one node id (as schemathesis makes them) is run in a pytest
subprocess with two xdist workers: `--dist loadscope` keys work by node id and runs one of the two,
`--dist load` (what `make test` uses) runs both.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import NO_AUTOLOAD, ONLY_XDIST, ROOT

# Two items named alike, collected from one file.
CONFTEST = """
import pytest


class Same(pytest.Item):
    def runtest(self):
        pass


class Cases(pytest.File):
    def collect(self):
        for _ in range(2):
            yield Same.from_parent(self, name="same")


def pytest_collect_file(parent, file_path):
    if file_path.name == "cases.txt":
        return Cases.from_parent(parent, path=file_path)
"""


def _run(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "conftest.py").write_text(CONFTEST)
    (tmp_path / "cases.txt").write_text("")
    plugins = ["-p", "tests.lost_tests", "-p", "no:cacheprovider", *ONLY_XDIST]
    return subprocess.run(
        [sys.executable, "-m", "pytest", *plugins, *args, "cases.txt"],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT), **NO_AUTOLOAD},
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize("dist", ["loadscope", "loadfile"])
def test_a_scheduler_that_loses_a_test_fails_the_run(tmp_path: Path, dist: str) -> None:
    out = _run(tmp_path, "-n", "2", "--dist", dist)
    assert out.returncode == pytest.ExitCode.TESTS_FAILED, out.stdout
    assert "1 passed" in out.stdout
    assert "1 of 2 selected tests never reported" in out.stdout


@pytest.mark.parametrize("workers", [["-n", "2"], []])
def test_a_run_of_every_test_passes(tmp_path: Path, workers: list[str]) -> None:
    out = _run(tmp_path, *workers)
    assert out.returncode == pytest.ExitCode.OK, out.stdout
    assert "2 passed" in out.stdout
    assert "never reported" not in out.stdout


@pytest.mark.parametrize("workers", [["-n", "2"], []])
def test_collecting_only_passes(tmp_path: Path, workers: list[str]) -> None:
    out = _run(tmp_path, "--collect-only", *workers)
    assert out.returncode == pytest.ExitCode.OK, out.stdout
    assert "never reported" not in out.stdout
