"""docs/configuration.md lists every environment variable the router reads: each name in
service/ that has the form of one (upper case words joined by `_`) is in its table, unless it is
one the router sets for its own workers. SENTRY_DSN, SSL_CERT_FILE, the connection limits and
timeouts and API_ROUTER_ACCESS_KEYS_FILE were once read but not listed."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CONFIGURATION = ROOT / "docs" / "configuration.md"
ENV_NAME = re.compile(r"[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+_?")
# Set by the main process for the workers it spawns, never by an operator.
INTERNAL = {
    "API_ROUTER_EJECTION_TABLE": "service/ejection.py: the shared ejection table's file",
    "API_ROUTER_LAST_GOOD_CONFIG": "service/config/lastgood.py: the last good config's file",
    "API_ROUTER_PRIMARY_PID": "service/server/lifeline.py: the main process's pid",
    "API_ROUTER_RATELIMIT_TABLE": "service/ratelimit/shared.py: the rate limit table's file",
    "API_ROUTER_TOKEN_TABLE": "service/ratelimit/tokens.py: the token table's file",
}


def _exported(tree: ast.Module) -> set[str]:
    """The names in `__all__`: module attributes (CUT_MESSAGE), not variables."""
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets
        ):
            names |= {e.value for e in ast.walk(node.value) if isinstance(e, ast.Constant)}
    return names


def names_in_service() -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for path in sorted((ROOT / "service").rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        exported = _exported(tree)
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Constant)
                and isinstance(node.value, str)
                and ENV_NAME.fullmatch(node.value)
                and node.value not in exported
            ):
                found.setdefault(node.value, set()).add(str(path.relative_to(ROOT)))
    return found


def test_every_environment_variable_the_router_reads_is_in_configuration_md() -> None:
    found = names_in_service()
    # A guard on the scan itself: names read in several ways (argument, env.get, os.environ).
    assert {"API_ROUTER_PORT", "SENTRY_DSN", "SSL_CERT_FILE", "API_ROUTER_STREAM_MAX_SECS"} <= set(
        found
    )
    assert set(INTERNAL) <= set(found), "an internal variable is gone: drop it from INTERNAL"
    table = {
        name
        for line in CONFIGURATION.read_text().splitlines()
        if line.startswith("|")
        for name in re.findall(r"`([A-Z][A-Z0-9_]*)`", line)
    }
    missing = {
        name: sorted(files)
        for name, files in sorted(found.items())
        if name not in table and name not in INTERNAL
    }
    assert not missing, f"read in service/ but not in docs/configuration.md's tables: {missing}"
