"""Worker memory: the CLI hands glibc's malloc settings to the workers it spawns (service/cli
`MALLOC_ENV`, bench/README.md "Memory"), and keeps an operator's own."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import pytest

from service.cli import MALLOC_ENV, OPERATOR_MALLOC_VARS
from tests.conftest import base_profile
from tests.fakes.upstream import FakeUpstream
from tests.support import RouterFactory, RouterProcess


def listening_sockets(port: int) -> set[str]:
    out = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        f = line.split()
        if f[3] == "0A" and int(f[1].rsplit(":", 1)[1], 16) == port:  # LISTEN on the port
            out.add(f"socket:[{f[9]}]")
    return out


def worker_environs(router: RouterProcess) -> list[dict[str, str]]:
    """The start-up environment of each Sanic worker: the CLI's children serving its port (not
    its manager helpers or multiprocessing's resource tracker)."""
    assert router.proc is not None
    pid = router.proc.pid
    sockets = listening_sockets(router.port)
    out = []
    for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
        fds = Path(f"/proc/{child}/fd")
        links = set()
        for fd in os.listdir(fds):
            with contextlib.suppress(OSError):
                links.add(os.readlink(fds / fd))
        if links & sockets:
            raw = Path(f"/proc/{child}/environ").read_bytes()
            out.append(dict(e.split("=", 1) for e in raw.decode().split("\0") if "=" in e))
    return out


def start(make: RouterFactory, upstream: FakeUpstream, env: dict[str, str]) -> RouterProcess:
    router = make(base_profile(upstream.url), workers=2, env=env, start=False)
    for name in (*OPERATOR_MALLOC_VARS, "GLIBC_TUNABLES"):  # only what the test gives
        if name not in env:
            router.env.pop(name, None)
    return router.start()


def test_workers_start_with_the_malloc_settings(
    router_factory: RouterFactory, upstream: FakeUpstream
) -> None:
    assert MALLOC_ENV == {"MALLOC_MMAP_THRESHOLD_": "131072"}
    environs = worker_environs(start(router_factory, upstream, {}))
    assert len(environs) == 2
    for env in environs:
        assert {k: env.get(k) for k in MALLOC_ENV} == MALLOC_ENV
        assert "MALLOC_TRIM_THRESHOLD_" not in env


@pytest.mark.parametrize(
    "own",
    [
        {"MALLOC_MMAP_THRESHOLD_": "262144"},
        {"MALLOC_TRIM_THRESHOLD_": "1048576"},
        {"GLIBC_TUNABLES": "glibc.malloc.mmap_threshold=524288"},
    ],
)
def test_an_operators_own_malloc_setting_is_kept(
    router_factory: RouterFactory, upstream: FakeUpstream, own: dict[str, str]
) -> None:
    environs = worker_environs(start(router_factory, upstream, own))
    assert len(environs) == 2
    for env in environs:
        # the operator's value as given, and none of the defaults added beside it
        names = (*OPERATOR_MALLOC_VARS, "GLIBC_TUNABLES")
        assert {k: env.get(k) for k in names} == {**dict.fromkeys(names), **own}
