"""A pytest plugin (tests/conftest.py loads it): `--order` runs the selected tests in another
order, to find tests that lean on what earlier tests did (a router shared by a module, its
counts, its log lines, a Redis server's state).

- `--order=collected` (the default): as collected.
- `--order=reverse`: every test in the opposite order (modules too).
- `--order=shuffle:SEED`: each module's tests shuffled with SEED, the modules in collected order
  (a module's fixtures are still set up once).

The new order is a function of the collection alone, so every pytest-xdist worker computes the
same one. Not used by `make test` (its order stays fixed); run by hand, e.g.
`make test PYTEST_ARGS=--order=reverse`. Running the suite reversed and shuffled found five tests
that passed only after their module's earlier tests (2026-12-01). tests/unit/test_order_plugin.py
runs it on a small suite.
"""

from __future__ import annotations

import random

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--order",
        default="collected",
        help="run the tests as collected (default), in reverse, or shuffled within each module "
        "(shuffle:SEED), to find tests that depend on earlier ones",
    )


def _parse(value: str) -> tuple[str, int]:
    kind, _, seed = value.partition(":")
    if kind in ("collected", "reverse") and not seed:
        return kind, 0
    if kind == "shuffle" and seed.isdigit():
        return kind, int(seed)
    raise pytest.UsageError(f"--order={value!r}: collected, reverse or shuffle:SEED (a number)")


def pytest_configure(config: pytest.Config) -> None:
    _parse(config.getoption("--order"))  # a bad value stops the run before collection


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    kind, seed = _parse(config.getoption("--order"))
    if kind == "reverse":
        items.reverse()
    elif kind == "shuffle":
        rnd = random.Random(seed)
        modules: dict[str, list[pytest.Item]] = {}
        for item in items:
            modules.setdefault(item.nodeid.partition("::")[0], []).append(item)
        items[:] = []
        for group in modules.values():
            rnd.shuffle(group)
            items.extend(group)
