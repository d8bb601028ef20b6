"""Real consumers of /metrics: the Prometheus server (Debian package) scraping a 2-worker router,
`promtool check metrics`, and an OpenMetrics parser."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import httpx
import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as om_families

from tests.conftest import base_profile
from tests.fakes.upstream import FakeUpstream, Reply
from tests.scrape import scrape, value
from tests.support import RouterFactory, RouterProcess, free_port

CHAT = "/v1/chat/completions"


def _tool(name: str) -> str:
    path = shutil.which(name)
    assert path, f"{name} is missing: run scripts/install-tools.sh"
    return path


@pytest.fixture(scope="module")
def two_workers(fake_upstream: FakeUpstream, module_router_factory: RouterFactory) -> RouterProcess:
    return module_router_factory(base_profile(fake_upstream.url), workers=2)


def _query(prom: str, q: str) -> float | None:
    resp = httpx.get(prom + "/api/v1/query", params={"query": q}, timeout=5)
    resp.raise_for_status()
    result = resp.json()["data"]["result"]
    return float(result[0]["value"][1]) if result else None


@pytest.mark.prometheus
def test_prometheus_scrapes_the_exact_request_count(
    router_factory: RouterFactory, upstream: FakeUpstream, tmp_path: Path
) -> None:
    # A router of its own: the counts are exact from zero, whatever the module's other tests
    # sent to the shared one.
    two_workers = router_factory(base_profile(upstream.url), workers=2)
    n = 40
    with httpx.Client(timeout=10, headers={"Connection": "close"}) as c:
        for i in range(n):
            if i % 4 == 0:
                upstream.reply_with(Reply(action="reset"))  # some failures too
            else:
                upstream.reset()
            c.post(two_workers.url + CHAT, json={"model": "gpt-4", "messages": []})
    upstream.reset()
    port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n"
        "scrape_configs:\n  - job_name: api-router\n    metrics_path: /metrics\n"
        f"    static_configs:\n      - targets: ['127.0.0.1:{two_workers.port}']\n"
    )
    log = (tmp_path / "prometheus.log").open("wb")
    proc = subprocess.Popen(
        [_tool("prometheus"), f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    prom = f"http://127.0.0.1:{port}"
    try:
        got: dict[str, float | None] = {}
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                got = {
                    "chat": _query(prom, f'sum(requests_total{{route="{CHAT}"}})'),
                    "errors": _query(prom, 'sum(upstream_errors_total{error_type="io_error"})'),
                    "all": _query(prom, 'sum(requests_total{route!="/metrics"})'),
                    "up": _query(prom, 'up{job="api-router"}'),
                }
            except httpx.HTTPError:
                got = {}
            if got.get("chat") is not None and got.get("up") == 1:
                break
            time.sleep(0.25)
        assert got.get("up") == 1, (got, (tmp_path / "prometheus.log").read_text()[-2000:])
        assert got["chat"] == n
        assert got["errors"] == n / 4
        # everything the test sent: the chat requests plus the harness's /ready polls
        ready = value(scrape(two_workers.url), "requests_total", route="/ready")
        assert got["all"] == n + ready
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()


@pytest.mark.prometheus
def test_promtool_accepts_the_scrape(two_workers: RouterProcess, tmp_path: Path) -> None:
    with httpx.Client() as c:
        c.get(two_workers.url + "/nope")
        c.post(two_workers.url + CHAT, json={"model": "gpt-4"})
    text = scrape(two_workers.url)
    res = subprocess.run(
        [_tool("promtool"), "check", "metrics"], input=text.encode(), capture_output=True
    )
    assert res.returncode == 0, res.stdout.decode() + res.stderr.decode()


def test_openmetrics_is_served_when_asked(two_workers: RouterProcess) -> None:
    with httpx.Client() as c:
        plain = c.get(two_workers.url + "/metrics")
        om = c.get(
            two_workers.url + "/metrics",
            headers={"Accept": "application/openmetrics-text; version=1.0.0; charset=utf-8"},
        )
    assert plain.headers["content-type"].startswith("text/plain; version=0.0.4")
    assert om.headers["content-type"].startswith("application/openmetrics-text")
    assert om.text.endswith("# EOF\n")
    fams = {f.name: f for f in om_families(om.text)}  # a strict parser: raises on bad syntax
    assert fams["requests"].type == "counter"
    assert fams["request_latency_seconds"].type == "histogram"
    assert fams["active_connections"].type == "gauge"
