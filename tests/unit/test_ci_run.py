""".ci/run's second pass (every fast path off) leaves out modules on the ground that they never
meet the setting: they start no router, build no app or settings and never read the variable.
That ground is checked here, so that a router-based test added to one of them later makes this
fail instead of being left out of that pass unseen."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CI_RUN = ROOT / ".ci" / "run"
# What reaches API_ROUTER_FAST_PATHS: a router process, an app, the settings, the CLI
NEAR_THE_SETTING = {"tests.support", "tests.in_process", "service.app", "service.settings"}
NEAR_THE_SETTING |= {"service.cli", "service.__main__", "service.server"}
# tests/conftest.py's fixtures that start a router (and the streaming module's own)
ROUTER_FIXTURES = {"router", "router_factory", "module_router_factory", "shipped", "srouter"}


def ignored_in_the_second_pass() -> list[Path]:
    command = re.search(r"^API_ROUTER_FAST_PATHS=0 .*", CI_RUN.read_text(), re.M | re.S)
    assert command is not None, ".ci/run has no second pass"
    second = command.group(0)  # (the command, not the header comment that names it too)
    return [ROOT / name for name in re.findall(r"--ignore=(\S+?)\"?(?:\s|$)", second)]


def what_meets_the_setting(path: Path) -> list[str]:
    """What in a test module could reach API_ROUTER_FAST_PATHS (empty: nothing)."""
    source = path.read_text()
    tree = ast.parse(source)
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module)
    found = [
        f"imports {m}"
        for m in sorted(imported)
        if any(m == n or m.startswith(n + ".") for n in NEAR_THE_SETTING)
    ]
    params = {
        arg.arg
        for node in ast.walk(tree)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        for arg in node.args.args
    }
    found += [f"asks for the fixture {name}" for name in sorted(params & ROUTER_FIXTURES)]
    found += [f"names {text}" for text in ("API_ROUTER_FAST_PATHS", "-m service") if text in source]
    return found


def test_the_modules_left_out_of_the_second_pass_never_meet_the_setting() -> None:
    modules = ignored_in_the_second_pass()
    assert [m.name for m in modules] == ["test_h1transport.py", "test_h1_differential.py"]
    for path in modules:
        assert what_meets_the_setting(path) == [], path.name


def test_the_check_sees_modules_that_start_a_router_or_build_an_app() -> None:
    integration = ROOT / "tests" / "integration"
    assert what_meets_the_setting(integration / "test_smuggling.py") == [
        "imports tests.support",
        "asks for the fixture router",
    ]
    assert "imports tests.in_process" in what_meets_the_setting(integration / "test_sentry.py")
    assert "asks for the fixture srouter" in what_meets_the_setting(
        integration / "test_streaming.py"
    )
