"""The container image, built from this tree and run with podman (SPEC §10, issue 6).

Choices, for the reader:
- The image is built once per run (tests/e2e/podman.py) on the local debootstrap base, because no
  registry is reachable here; `make image` uses the same script.
- The container that proxies runs with `--network=host` so that it reaches the fake upstream,
  which listens on the host's 127.0.0.1; the router inside listens on 127.0.0.1 too (loopback
  only). The plain `podman run -p` case is tested separately with the image's defaults.
- "Read-only as non-root": `--read-only` with a tmpfs on /tmp (multiprocess metrics, HOME,
  temporary files) and the image's own numeric user, not a `--user` override.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from packaging.utils import canonicalize_name
from packaging.version import Version

from tests.conftest import base_profile
from tests.e2e.podman import ROOT, built_image, podman, wait_http
from tests.fakes.upstream import FakeUpstream
from tests.support import StreamReader, free_port, slow_stream, write_profile
from tests.unit.test_packaging import lock_pins

# The first test pays for the image build (and, on a new machine, the debootstrap base).
pytestmark = pytest.mark.timeout(900)
# Each test that runs podman is marked `podman`; the Containerfile lint needs only the venv.

API_KEY = "sk-container-test-key"
WORKERS = 2


@dataclass
class Container:
    cid: str
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def alive(self) -> bool:
        out = podman("inspect", "--format", "{{.State.Running}}", self.cid, check=False)
        return out.stdout.strip() == "true"

    def logs(self) -> str:
        return podman("logs", self.cid, check=False).stdout

    def remove(self) -> None:
        podman("rm", "--force", "--time", "2", self.cid, check=False)


def run_read_only(image: str, profile: Path, *, drain_secs: int = 30) -> Container:
    """The router as a hardened deployment runs it: read-only root, tmpfs /tmp, non-root user
    (the image's), settings from the environment and the profile from a mounted file."""
    port = free_port()
    cid = podman(
        "run", "--detach", "--read-only", "--network=host",
        "--tmpfs", "/tmp:rw,size=64m,mode=1777",
        "--volume", f"{profile}:/etc/api-router/profile.json:ro",
        "--env", "API_ROUTER_CONFIG_PATH=/etc/api-router/profile.json",
        "--env", "API_ROUTER_HOST=127.0.0.1",
        "--env", f"API_ROUTER_PORT={port}",
        "--env", f"API_ROUTER_WORKERS={WORKERS}",
        "--env", f"API_ROUTER_DRAIN_SECS={drain_secs}",
        "--env", f"DEFAULT_API_KEY={API_KEY}",
        image,
    ).stdout.strip()  # fmt: skip
    c = Container(cid, port)
    try:
        wait_http(c.url + "/ready", alive=c.alive)
        # Every worker up: a SIGTERM that reaches a worker still starting makes Sanic's manager
        # abort the whole server, which is not what these tests are about.
        deadline = time.monotonic() + 30
        while c.logs().count("Worker ready") < WORKERS:
            assert time.monotonic() < deadline, "not every worker became ready"
            time.sleep(0.1)
    except AssertionError as e:
        logs = c.logs()
        c.remove()
        raise AssertionError(f"{e}\n{logs[-3000:]}") from None
    return c


@pytest.fixture(scope="module")
def image() -> str:
    return built_image()


@pytest.fixture(scope="module")
def profile_file(fake_upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("container")
    d.chmod(0o755)
    path = write_profile(d, base_profile(fake_upstream.url, timeouts={"readSecs": 30}))
    path.chmod(0o644)
    return path


@pytest.fixture(scope="module")
def container(image: str, profile_file: Path) -> Iterator[Container]:
    c = run_read_only(image, profile_file)
    yield c
    c.remove()


def test_hadolint_passes_on_the_containerfile() -> None:
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    proc = subprocess.run(
        [hadolint, str(ROOT / "Containerfile")], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.podman
def test_image_is_non_root_with_healthcheck_labels_and_json_logs(image: str) -> None:
    info = json.loads(podman("image", "inspect", image).stdout)[0]
    cfg = info["Config"]
    user = cfg["User"].split(":")[0]
    assert user.isdigit() and int(user) != 0
    assert "8000/tcp" in cfg["ExposedPorts"]
    assert cfg["Entrypoint"] == ["api-router"]  # exec form: the router is PID 1 and gets SIGTERM
    assert info["Healthcheck"]["Test"][0] == "CMD"  # kept by --format docker
    assert "LOG_FORMAT=json" in cfg["Env"]
    labels = cfg["Labels"]
    assert labels["org.opencontainers.image.title"] == "api-router"
    assert labels["org.opencontainers.image.version"]


@pytest.mark.podman
def test_the_image_is_also_tagged_with_the_chart_s_default_tag(image: str) -> None:
    """`make image` then `helm install api-router ./helm`: the chart's default image is
    `localhost/api-router:<appVersion>`, so the build tags that too (docs/deployment.md)."""
    import yaml

    app_version = yaml.safe_load((ROOT / "helm" / "Chart.yaml").read_text())["appVersion"]
    versioned = f"{image.rpartition(':')[0]}:{app_version}"
    ids = [json.loads(podman("image", "inspect", i).stdout)[0]["Id"] for i in (image, versioned)]
    assert ids[0] == ids[1]


@pytest.mark.podman
def test_image_holds_exactly_the_runtime_lock(image: str) -> None:
    """requirements/runtime.txt, which tests/unit/test_packaging.py holds to the versions the
    tests ran, is what the image has: nothing more (but pip and the router), nothing else."""
    script = (
        "import json, platform, importlib.metadata as m; print(json.dumps(["
        "platform.python_version(), {d.metadata['Name']: d.version for d in m.distributions()}]))"
    )
    out = podman("run", "--rm", "--entrypoint", "python3", image, "-c", script).stdout
    python, dists = json.loads(out)
    installed = {canonicalize_name(name): Version(version) for name, version in dists.items()}
    assert installed.pop("api-router") and installed.pop("pip")
    # Markers as the image's Python sees them (e.g. async-timeout below 3.11.3, for redis).
    env = {"python_full_version": python, "python_version": ".".join(python.split(".")[:2])}
    locked = {
        name: pin.version
        for name, pin in lock_pins("runtime.txt").items()
        if pin.marker is None or pin.marker.evaluate(env)
    }
    assert installed == locked


@pytest.mark.podman
def test_podman_run_publishes_health_and_metrics(image: str) -> None:
    """`podman run -p 8000:8000 api-router`, on a free host port bound to loopback."""
    port = free_port()
    cid = podman("run", "--detach", "--publish", f"127.0.0.1:{port}:8000", image).stdout.strip()
    c = Container(cid, port)
    try:
        wait_http(c.url + "/health", alive=c.alive)
        health = httpx.get(c.url + "/health").json()
        assert health["status"] == "ok" and health["profile"] == "qwen"
        metrics = httpx.get(c.url + "/metrics")
        assert metrics.status_code == 200
        assert metrics.headers["content-type"].startswith("text/plain")
        assert "# TYPE requests_total counter" in metrics.text
        # The image's HEALTHCHECK runs and reports healthy.
        assert podman("healthcheck", "run", cid, check=False).returncode == 0, c.logs()[-2000:]
    finally:
        c.remove()


@pytest.mark.podman
def test_a_mounted_profile_s_port_is_served_and_health_checked(
    image: str, fake_upstream: FakeUpstream, tmp_path: Path
) -> None:
    """SPEC §2: the profile's `port` applies unless the argument or API_ROUTER_PORT says
    otherwise; the image sets neither, and its HEALTHCHECK probes the port the router chose."""
    tmp_path.chmod(0o755)
    profile = write_profile(tmp_path, base_profile(fake_upstream.url, port=9100), name="mine")
    profile.chmod(0o644)
    port = free_port()
    cid = podman(
        "run", "--detach", "--publish", f"127.0.0.1:{port}:9100",
        "--volume", f"{profile}:/app/transformer/mine.json:ro",
        image, "mine",
    ).stdout.strip()  # fmt: skip
    c = Container(cid, port)
    try:
        wait_http(c.url + "/health", alive=c.alive)
        assert httpx.get(c.url + "/health").json()["profile"] == "testprov"
        assert podman("healthcheck", "run", cid, check=False).returncode == 0, c.logs()[-2000:]
    finally:
        c.remove()


@pytest.mark.podman
def test_read_only_container_runs_as_non_root(container: Container) -> None:
    uid = podman("exec", container.cid, "python3", "-c", "import os; print(os.getuid())")
    assert uid.stdout.strip() == "10001"
    write = podman("exec", container.cid, "python3", "-c", "open('/app/x', 'w')", check=False)
    assert write.returncode != 0 and "Read-only file system" in write.stderr


@pytest.mark.podman
def test_read_only_container_proxies_to_the_host_upstream(
    container: Container, upstream: FakeUpstream
) -> None:
    body = {"model": "gpt-4", "messages": [{"role": "user", "content": "hi"}]}
    r = httpx.post(container.url + "/v1/chat/completions", json=body, timeout=10)
    assert r.status_code == 200, r.text
    assert r.json()["model"] == "up-model-4"
    sent = upstream.last
    assert sent.path == "/v1/chat/completions"
    assert sent.json()["model"] == "up-model-4"
    assert sent.header("authorization") == f"Bearer {API_KEY}"  # DEFAULT_API_KEY from the env
    # Multiprocess metrics work on the tmpfs: the request is counted.
    metrics = httpx.get(container.url + "/metrics").text
    assert 'requests_total{method="POST",route="/v1/chat/completions",status="200"}' in metrics
    # JSON logs by default, one completion line per request, no secret in them.
    logs = container.logs()
    lines = [json.loads(x) for x in logs.splitlines() if x.startswith("{")]
    assert any(
        rec.get("event") == "request_completed" and rec.get("route") == "/v1/chat/completions"
        for rec in lines
    )
    assert API_KEY not in logs


@pytest.mark.podman
def test_sigterm_during_a_stream_lets_it_complete_and_exits_zero(
    image: str, profile_file: Path, upstream: FakeUpstream
) -> None:
    upstream.reply_with(slow_stream(10, 0.4))
    c = run_read_only(image, profile_file, drain_secs=20)
    try:
        stream = StreamReader(c.url)
        stream.start()
        assert stream.first.wait(10) and stream.error is None, stream.error
        podman("kill", "--signal", "TERM", c.cid)
        stream.join(30)
        assert not stream.is_alive()
        assert stream.error is None, f"{stream.error!r}\n{c.logs()[-3000:]}"
        assert stream.lines[-1] == "[DONE]"
        assert stream.content() == "".join(f"p{i} " for i in range(10))
        code = podman("wait", c.cid, timeout=40).stdout.strip()
        assert code == "0", c.logs()[-3000:]
    finally:
        c.remove()
