"""Podman for the container and chart tests: the machine's settings, and the image built once.

The image is built from the working tree with the project's own script (`make image` runs the
same one) on the local debootstrap base (`scripts/build-base-image.sh`, reused when it exists):
no registry is reachable here, so the tests never try to pull.
"""

from __future__ import annotations

import functools
import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from tests.support import machine_lock

ROOT = Path(__file__).resolve().parents[2]
BASE_IMAGE = "localhost/python-base:bookworm"
IMAGE = "localhost/api-router:test"


def env() -> dict[str, str]:
    e = dict(os.environ)
    e.setdefault("CONTAINERS_CONF", str(ROOT / "scripts" / "containers.conf"))
    return e


def podman(
    *args: str, check: bool = True, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        ["podman", *args], env=env(), capture_output=True, text=True, timeout=timeout
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"podman {' '.join(args)} -> {proc.returncode}\n{proc.stderr[-3000:]}")
    return proc


def script(name: str, *args: str, extra_env: dict[str, str] | None = None) -> None:
    proc = subprocess.run(
        ["bash", str(ROOT / "scripts" / name), *args],
        env={**env(), **(extra_env or {})},
        capture_output=True,
        text=True,
        timeout=600,
    )
    if proc.returncode != 0:
        raise AssertionError(
            f"{name} failed ({proc.returncode}):\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}"
        )


@functools.cache
def built_image() -> str:
    """Build (once per test process) the image of this working tree; returns its tag. One
    process at a time (`make test` runs two): never two debootstraps into one base."""
    with machine_lock("podman-image"):
        script("build-base-image.sh", BASE_IMAGE)  # a no-op when the base exists
        script("build-image.sh", IMAGE, extra_env={"BASE_IMAGE": BASE_IMAGE})
    return IMAGE


def wait_http(url: str, timeout: float = 30, alive: Callable[[], bool] | None = None) -> None:
    """Wait until `url` answers 200 (a started container needs a few seconds)."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        if alive is not None and not alive():
            raise AssertionError(f"gave up on {url}: the container is gone")
        try:
            r = httpx.get(url, timeout=2)
            if r.status_code == 200:
                return
            last = r.status_code
        except httpx.HTTPError as e:
            last = e
        time.sleep(0.2)
    raise AssertionError(f"{url} did not answer 200 in {timeout}s (last: {last!r})")
