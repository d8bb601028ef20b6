"""Packaging: what the code imports is declared in pyproject.toml, and the lock files
(requirements/, written by `make lock`) pin what pyproject.toml declares, inside its ranges.

- service/ is what the image runs: each third-party package it imports, at module level or
  inside a function, is one of the `dependencies` or of a runtime extra (redis, sentry: every
  extra but test and dev). Relying on another package's dependency works until that package
  drops it; httptools and sanic-routing were once imported this way.
- tests/ may import what any extra declares.
- An import name maps to its distribution through the installed metadata (`yaml` is PyYAML).
- requirements/dev.txt (every extra: what `make test` installs) and requirements/runtime.txt
  (the dependencies, the redis and otel extras: what the image installs) pin every declared
  package and the build backend, each exactly and with hashes, and agree with each other: the
  image runs the versions the tests ran. The venv running this test holds those versions.
"""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib import metadata
from pathlib import Path
from typing import Any, NamedTuple

import pytest
from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT: dict[str, Any] = tomllib.loads((ROOT / "pyproject.toml").read_text())
PROJECT: dict[str, Any] = PYPROJECT["project"]
FIRST_PARTY = {"service", "tests"}
DEV_ONLY_EXTRAS = {"test", "dev"}
IMAGE_EXTRAS = {"redis", "otel"}  # the Containerfile bakes in requirements/runtime.txt
# Imported by tests only when present, never required of the environment.
OPTIONAL_IMPORTS = {"brotli": "tests/fakes/sentry_ingest.py: only when sentry-sdk compresses so"}


class Pin(NamedTuple):
    version: Version
    marker: Marker | None
    hashes: list[str]


def _requirements(*extras: str) -> list[Requirement]:
    reqs = [Requirement(r) for r in PROJECT["dependencies"]]
    optional = PROJECT["optional-dependencies"]
    return reqs + [Requirement(r) for extra in extras for r in optional[extra]]


def _declared(*extras: str) -> set[str]:
    return {canonicalize_name(r.name) for r in _requirements(*extras)}


def _runtime_extras() -> list[str]:
    return sorted(set(PROJECT["optional-dependencies"]) - DEV_ONLY_EXTRAS)


def _third_party_imports(folder: str) -> dict[str, set[str]]:
    """Top-level names of every absolute import under `folder`, with the files that import them."""
    found: dict[str, set[str]] = {}
    for path in sorted((ROOT / folder).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.partition(".")[0]
                if top not in sys.stdlib_module_names and top not in FIRST_PARTY:
                    found.setdefault(top, set()).add(str(path.relative_to(ROOT)))
    return found


def _undeclared(folder: str, allowed: set[str]) -> list[str]:
    dists = metadata.packages_distributions()
    problems = []
    for name, files in sorted(_third_party_imports(folder).items()):
        if name in OPTIONAL_IMPORTS:
            continue
        providers = {canonicalize_name(d) for d in dists.get(name, [])}
        if not providers:
            problems.append(f"{name} (imported by {sorted(files)}) is not installed at all")
        elif not providers & allowed:
            problems.append(f"{name} (from {sorted(providers)}) is imported by {sorted(files)}")
    return problems


def test_every_package_service_imports_is_a_declared_runtime_dependency() -> None:
    problems = _undeclared("service", _declared(*_runtime_extras()))
    assert not problems, "undeclared in pyproject.toml [project] dependencies:\n" + "\n".join(
        problems
    )


def test_every_package_the_tests_import_is_declared() -> None:
    problems = _undeclared("tests", _declared(*PROJECT["optional-dependencies"]))
    assert not problems, "undeclared in pyproject.toml (e.g. the test extra):\n" + "\n".join(
        problems
    )


def test_the_import_check_sees_the_packages_service_is_known_to_import() -> None:
    # A guard on the check itself: these were imported but undeclared before issue 14.
    imports = _third_party_imports("service")
    assert {"httptools", "sanic_routing", "sanic", "httpx"} <= set(imports)


def lock_pins(name: str) -> dict[str, Pin]:
    """The pins of requirements/`name` (also read by tests/e2e/test_container.py): uv's format,
    `name==version ; marker \\` lines followed by `--hash=sha256:…` continuation lines."""
    logical, current = [], ""
    for raw in (ROOT / "requirements" / name).read_text().splitlines():
        line = re.sub(r"(^|\s)#.*", "", raw).strip()  # pip's rule: `#` after a space or at start
        current += " " + line.removesuffix("\\")
        if not line.endswith("\\"):
            logical.append(current.strip())
            current = ""
    pins: dict[str, Pin] = {}
    for line in filter(None, logical):
        spec, *hashes = (part.strip() for part in line.split("--hash="))
        req = Requirement(spec)
        (only,) = req.specifier  # exactly one `==`
        assert only.operator == "==", f"{name}: {spec} is not an exact pin"
        pins[canonicalize_name(req.name)] = Pin(Version(only.version), req.marker, hashes)
    return pins


LOCKS = {
    # lock file: the extras it holds besides [project] dependencies
    "dev.txt": sorted(PROJECT["optional-dependencies"]),
    "runtime.txt": sorted(IMAGE_EXTRAS),
}


@pytest.mark.parametrize("lock", sorted(LOCKS))
def test_every_locked_package_is_pinned_exactly_with_sha256_hashes(lock: str) -> None:
    pins = lock_pins(lock)
    assert len(pins) > 10
    for name, pin in pins.items():
        assert pin.hashes, f"{lock}: {name} has no hash (pip --require-hashes refuses it)"
        assert all(h.startswith("sha256:") for h in pin.hashes), f"{lock}: {name}"


@pytest.mark.parametrize("lock", sorted(LOCKS))
def test_the_lock_pins_every_declared_package_inside_its_range(lock: str) -> None:
    pins = lock_pins(lock)
    # The build backend too: the project is installed with --no-build-isolation.
    build = [Requirement(r) for r in PYPROJECT["build-system"]["requires"]]
    problems = []
    for req in _requirements(*LOCKS[lock]) + build:
        pin = pins.get(canonicalize_name(req.name))
        if pin is None:
            problems.append(f"{req} is not in the lock")
        elif not req.specifier.contains(pin.version, prereleases=True):
            problems.append(f"{req} is locked at {pin.version}, outside its range")
    assert not problems, f"requirements/{lock} is stale; run `make lock`:\n" + "\n".join(problems)


def test_the_image_lock_holds_the_versions_the_tests_ran() -> None:
    dev, runtime = lock_pins("dev.txt"), lock_pins("runtime.txt")
    differ = {
        name: (str(pin.version), str(dev[name].version) if name in dev else None)
        for name, pin in runtime.items()
        if name not in dev or dev[name].version != pin.version
    }
    assert not differ, f"runtime.txt vs dev.txt (run `make lock`): {differ}"


def test_this_venv_holds_the_dev_lock_versions() -> None:
    """What `make test` runs on: requirements/dev.txt, synced into .venv by the Makefile."""
    pins = lock_pins("dev.txt")
    installed = {
        canonicalize_name(d.metadata["Name"]): Version(d.version)
        for d in metadata.distributions()
        if d.metadata["Name"]
    }
    wrong = {
        name: (str(pin.version), str(installed.get(name)))
        for name, pin in pins.items()
        if (pin.marker is None or pin.marker.evaluate()) and installed.get(name) != pin.version
    }
    assert not wrong, f"locked vs installed (run `make test` or `make lint` to sync): {wrong}"


def test_the_wheel_ships_the_schemas_and_the_profiles(tmp_path: Path) -> None:
    """The installed package (the image installs the wheel) holds the data files the code and
    the docs name: both JSON Schemas (docs/routing.md points editors at routing.schema.json,
    the loader reads profile.schema.json) and the built-in profiles. Built offline from a copy of
    the tree, as the image builds it (--no-build-isolation)."""
    import shutil
    import subprocess
    import zipfile

    tree = tmp_path / "tree"
    tree.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, tree / name)
    shutil.copytree(
        ROOT / "service", tree / "service", ignore=shutil.ignore_patterns("__pycache__")
    )
    out = tmp_path / "dist"
    out.mkdir()
    build = f"from setuptools import build_meta; print(build_meta.build_wheel({str(out)!r}))"
    done = subprocess.run(
        [sys.executable, "-c", build], cwd=tree, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    (wheel,) = out.glob("*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    config = ROOT / "service" / "config"
    expected = {
        str(path.relative_to(ROOT))
        for path in [*config.glob("*.schema.json"), *config.glob("profiles/*.json")]
    }
    assert {"service/config/routing.schema.json", "service/config/profile.schema.json"} <= expected
    assert any("/profiles/" in name for name in expected)
    assert expected - names == set(), f"missing from {wheel.name}"
