"""scripts/build-image.sh (`make image`): the tags it gives the image, run with a `podman` on
PATH that only records its arguments (nothing is built)."""

from __future__ import annotations

import os
import subprocess
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]


def build_tags(tmp_path: Path, *args: str) -> list[str]:
    calls = tmp_path / "podman-calls"
    shim = tmp_path / "bin" / "podman"
    shim.parent.mkdir()
    shim.write_text(f'#!/bin/sh\nprintf "%s\\n" "$*" >> {calls}\n')
    shim.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k != "IMAGE"}
    env.update(PATH=f"{shim.parent}{os.pathsep}{env['PATH']}", BASE_IMAGE="localhost/base:test")
    done = subprocess.run(
        ["bash", str(ROOT / "scripts" / "build-image.sh"), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    (build,) = [c.split() for c in calls.read_text().splitlines() if c.startswith("build ")]
    return [build[i + 1] for i, word in enumerate(build) if word == "--tag"]


@pytest.mark.parametrize(
    ("tag", "versioned"),
    [
        (None, f"localhost/api-router:{VERSION}"),  # the default, localhost/api-router:latest
        ("localhost/api-router:dev", f"localhost/api-router:{VERSION}"),
        ("api-router", f"api-router:{VERSION}"),
        # A registry's port is not a tag: this gave registry.example.com:0.1.0.
        ("registry.example.com:5000/api-router", f"registry.example.com:5000/api-router:{VERSION}"),
        (
            "registry.example.com:5000/team/api-router:rc1",
            f"registry.example.com:5000/team/api-router:{VERSION}",
        ),
    ],
)
def test_the_image_is_also_tagged_with_the_version(
    tmp_path: Path, tag: str | None, versioned: str
) -> None:
    tags = build_tags(tmp_path, *([tag] if tag else []))
    assert tags == [tag or "localhost/api-router:latest", versioned]
