"""A pytest plugin (tests/conftest.py loads it): a run in which a selected test never reported
fails.

`make test` runs the suite in pytest-xdist workers. A scheduler that loses items (`--dist
loadscope`, `loadfile` and `loadgroup` key tests by node id, and schemathesis gives one id to
each API operation's test) would end green with fewer tests passed and nothing else to see. So
the process that reports counts one teardown report per test and fails the run when a selected
test never reported. Only when the run would otherwise pass: `-x` and the like stop early on
purpose. tests/unit/test_lost_tests.py runs it on a small suite.
"""

from __future__ import annotations

from typing import Any

import pytest

_selected: list[int] = []
_finished: list[int] = [0]


@pytest.hookimpl(optionalhook=True)  # an xdist hook: unknown when xdist is not loaded
def pytest_xdist_node_collection_finished(node: Any, ids: list[str]) -> None:
    _selected.append(len(ids))  # each worker collects (and deselects) the same tests


def pytest_collection_finish(session: pytest.Session) -> None:
    _selected.append(len(session.items))  # one process (xdist's controller collects nothing)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.when == "teardown":
        _finished[0] += 1


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    config = session.config
    if hasattr(config, "workerinput") or exitstatus != 0 or not _selected:
        return
    if config.option.collectonly:  # nothing was to run
        return
    selected = max(_selected)
    if _finished[0] != selected:
        config.get_terminal_writer().line(
            f"{selected - _finished[0]} of {selected} selected tests never reported: "
            "a test scheduler lost them (is --dist other than load?)",
            red=True,
        )
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
