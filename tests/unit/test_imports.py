"""The modules of service/ import each other without a cycle: every `import` and `from … import`
statement of every module counts, at module level or inside a function (a function-level import
only hides a cycle until the function runs), under `if TYPE_CHECKING:` too (a cycle of types is
still a cycle of rooms)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = "service"


def _modules() -> dict[str, Path]:
    """Every module of the package by its dotted name (`service.proxy` for its __init__.py)."""
    out = {}
    for path in sorted((ROOT / PACKAGE).rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _is_package(name: str, modules: dict[str, Path]) -> bool:
    return modules[name].name == "__init__.py"


def _imports(name: str, modules: dict[str, Path]) -> set[str]:
    """The modules of the package that module `name` imports, wherever the statement is."""
    tree = ast.parse(modules[name].read_text(), str(modules[name]))
    here = name if _is_package(name, modules) else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here
                for _ in range(node.level - 1):
                    base = base.rpartition(".")[0]
                base = f"{base}.{node.module}" if node.module else base
            else:
                base = node.module or ""
            # `from pkg import name`: the package, and `pkg.name` when that is a module.
            targets = [base, *(f"{base}.{alias.name}" for alias in node.names)]
        else:
            continue
        for target in targets:
            # `import a.b.c` names a.b.c; the nearest module of ours it designates counts.
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, modules) for name in modules}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of `graph` as a path that starts and ends with the same module, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_the_graph_sees_function_level_and_relative_imports() -> None:
    graph = _graph()
    assert len(graph) > 30
    # `from .proxy.headers import …` at module level, `from .h1transport import …` in a function
    assert "service.proxy.headers" in graph["service.settings"]
    assert "service.proxy.h1transport" in graph["service.proxy.upstream"]
    # `from .app import create_app` inside main()
    assert "service.app" in graph["service.cli"]


def test_a_cycle_is_found() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_service_modules_import_each_other_without_a_cycle() -> None:
    cycle = _cycle(_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_the_entry_module_imports_nothing_until_it_runs() -> None:
    """service/__main__.py is run again by every process Sanic spawns under the `api-router`
    script: importing it loads no module of the router and none of its libraries."""
    probe = "import sys, service.__main__; print(*sorted(sys.modules), sep='\\n')"
    loaded = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=ROOT
    ).stdout.split()
    assert [m for m in loaded if m.split(".")[0] == PACKAGE] == ["service", "service.__main__"]
    heavy = {"sanic", "pydantic", "httpx", "structlog", "prometheus_client", "asyncio"}
    assert heavy.isdisjoint(m.split(".")[0] for m in loaded)
    assert "json" in loaded or "os" in loaded  # (the probe saw the interpreter's own modules)
