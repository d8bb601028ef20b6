from __future__ import annotations

import gc
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

from tests.fakes.upstream import FakeUpstream, default_reply
from tests.support import RouterFactory, RouterProcess

# One marker per system service a test needs beyond the venv. `make test` installs them all
# (scripts/install-tools.sh) and runs everything; `make test-fast` deselects these, so that a
# newcomer without root (and without the tools) runs every other test.
SERVICE_MARKERS = {
    "redis": "needs redis-server (scripts/install-tools.sh)",
    "prometheus": "needs the prometheus server or promtool (scripts/install-tools.sh)",
    "podman": "needs podman and the image built from this tree (scripts/install-tools.sh)",
    "helm": "needs helm (scripts/ensure-helm.sh fetches it)",
    "agents": "needs Node.js and the pinned coding agents (scripts/install-agents.sh)",
}


# Fails a run in which a selected test never reported (tests/lost_tests.py); `--order`
# (tests/order_plugin.py) runs the tests in another order.
pytest_plugins = ["tests.lost_tests", "tests.order_plugin"]


def pytest_configure(config: pytest.Config) -> None:
    for name, needs in SERVICE_MARKERS.items():
        config.addinivalue_line("markers", f"{name}: {needs}; deselected by make test-fast")


@pytest.fixture(autouse=True)
def _collector_thresholds() -> Iterator[None]:
    """An app started in this process sets the collector's threshold as a worker would
    (API_ROUTER_GC_THRESHOLD, service.app): the tests after it get the process's own back."""
    saved = gc.get_threshold()
    yield
    gc.set_threshold(*saved)


@pytest.fixture(scope="session")
def fake_upstream() -> Iterator[FakeUpstream]:
    fake = FakeUpstream().start()
    yield fake
    fake.stop()


@pytest.fixture
def upstream(fake_upstream: FakeUpstream) -> Iterator[FakeUpstream]:
    """The session's fake upstream for a test that scripts its replies: reset before and after
    (a reply left set is sent to the next test of the same xdist worker)."""
    fake_upstream.reset()
    yield fake_upstream
    fake_upstream.reset()


@pytest.fixture(autouse=True)
def _fake_upstream_left_as_found(request: pytest.FixtureRequest) -> Iterator[None]:
    """A test that scripts a reply on the session's fake takes `upstream`, which resets it; one
    that took `fake_upstream` and left a reply set fails here, not a later test it poisoned."""
    yield
    if "fake_upstream" in request.fixturenames and "upstream" not in request.fixturenames:
        fake: FakeUpstream = request.getfixturevalue("fake_upstream")
        if fake.handler is not default_reply:
            fake.reset()
            pytest.fail("the session's fake upstream was left with a reply set: take `upstream`")


def base_profile(url: str, **extra: Any) -> dict[str, Any]:
    profile: dict[str, Any] = {
        "name": "testprov",
        "baseUrl": url,
        "modelMapping": {"gpt-4": "up-model-4", "whisper-1": "up-whisper"},
        "models": ["extra-model"],
        "timeouts": {"connectSecs": 2, "readSecs": 5},
    }
    profile.update(extra)
    return profile


@pytest.fixture
def router_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RouterFactory]:
    """`router_factory(profile, env=..., workers=...)`: a started router (a real
    `python -m service`) on that profile dict, stopped when the test ends."""
    factory = RouterFactory(tmp_path_factory)
    yield factory
    factory.close()


@pytest.fixture(scope="module")
def module_router_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RouterFactory]:
    """The same factory for module-scoped router fixtures: its routers stop with the module."""
    factory = RouterFactory(tmp_path_factory)
    yield factory
    factory.close()


@pytest.fixture(scope="module")
def router(fake_upstream: FakeUpstream, module_router_factory: RouterFactory) -> RouterProcess:
    """One router (1 worker) in front of the fake upstream, shared by a test module."""
    return module_router_factory(base_profile(fake_upstream.url))


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A CA made for this test run and a certificate it signed for `localhost` (only): paths
    of `ca`, `cert` and `key` (PEM)."""
    d = tmp_path_factory.mktemp("tls")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=d)

    openssl("req", "-x509", *ec, "-days", "1", "-subj", "/CN=api-router test CA",
        "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign",
        "-keyout", "ca.key", "-out", "ca.pem")  # fmt: skip
    openssl("req", *ec, "-subj", "/CN=localhost", "-keyout", "leaf.key", "-out", "leaf.csr")
    (d / "ext.cnf").write_text(
        "subjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n"
    )
    openssl("x509", "-req", "-in", "leaf.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
        "-CAcreateserial", "-days", "1", "-extfile", "ext.cnf", "-out", "leaf.pem")  # fmt: skip
    return {"ca": str(d / "ca.pem"), "cert": str(d / "leaf.pem"), "key": str(d / "leaf.key")}
