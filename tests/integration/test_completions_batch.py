"""The `batch` fast path against its absence, on real routers under concurrent load: the same
counts in /metrics and the same completion lines, whether each request's record is written in
its own `finish` or with the others finished in the same loop pass
(service.observability.completions)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from service.settings import FAST_PATH_NAMES
from tests.conftest import base_profile
from tests.fakes.upstream import FakeUpstream
from tests.scrape import scrape, value
from tests.support import RouterFactory

CHAT = {"model": "gpt-4", "messages": [{"role": "user", "content": "hi"}]}
WITHOUT_BATCH = ",".join(n for n in FAST_PATH_NAMES if n != "batch")


async def _load(url: str) -> None:
    """32 requests at once, in three shapes (answered, not found, invalid JSON), each with its
    own request id; the chat ones with one of three client keys, one of which is also the model
    name (scrubbed from its line)."""

    async def one(c: httpx.AsyncClient, i: int) -> None:
        rid = f"batch-{i:02d}"
        key = f"sk-client-key-{i % 3}"
        headers = {"X-Request-ID": rid, "Authorization": f"Bearer {key}"}
        if i % 8 == 6:
            r = await c.get(f"{url}/v1/nope", headers=headers)
            assert r.status_code == 404
        elif i % 8 == 7:
            r = await c.post(f"{url}/v1/chat/completions", content=b"{", headers=headers)
            assert r.status_code == 400
        else:
            body = {**CHAT, "model": key} if i % 3 == 0 else CHAT
            r = await c.post(f"{url}/v1/chat/completions", json=body, headers=headers)
            assert r.status_code == 200, r.text

    limits = httpx.Limits(max_connections=32)
    async with httpx.AsyncClient(timeout=20, limits=limits) as c:
        await asyncio.gather(*(one(c, i) for i in range(32)))


def _counts(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every counter and histogram count of the router's own metrics, by labels (the ops routes
    left out: how often a router was polled until ready is its own)."""
    from prometheus_client.parser import text_string_to_metric_families

    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if (
                s.name.endswith(("_total", "_count"))
                and not s.name.startswith(("process_", "python_"))
                and s.labels.get("route") not in ("/ready", "/health", "/metrics")
            ):
                out[s.name, tuple(sorted(s.labels.items()))] = s.value
    return out


def _lines(router: Any) -> list[tuple[Any, ...]]:
    keys = ("request_id", "method", "route", "status_code", "model", "key_id", "error_type")
    return sorted(
        tuple(x.get(k) for k in keys)
        for x in router.access_logs()
        if str(x.get("request_id", "")).startswith("batch-")
    )


def test_batched_records_count_and_log_what_unbatched_ones_do(
    router_factory: RouterFactory, upstream: FakeUpstream
) -> None:
    profile = base_profile(upstream.url)
    batched = router_factory(profile, env={"API_ROUTER_FAST_PATHS": "all"})
    unbatched = router_factory(profile, env={"API_ROUTER_FAST_PATHS": WITHOUT_BATCH})
    seen = []
    for router in (batched, unbatched):
        asyncio.run(_load(router.url))
        text = scrape(router.url)
        seen.append((_counts(text), _lines(router)))
        assert value(text, "in_flight_requests") == 1  # the scrape itself
        output = router.output()
        assert "sk-client-key" not in output
        assert "completion_record_failed" not in output
    (counts, lines), (want_counts, want_lines) = seen
    assert counts == want_counts
    assert lines == want_lines
    assert len(lines) == 32
    chat = [k for k in counts if k[0] == "requests_total" and ("status", "200") in k[1]]
    assert chat and sum(counts[k] for k in chat) >= 24
    assert sum(1 for x in lines if x[4] == "[redacted]") == 8  # the key sent as the model


def test_a_scrape_waits_for_another_worker_s_waiting_records(
    router_factory: RouterFactory, upstream: FakeUpstream
) -> None:
    """/metrics returns only once no other live worker's flag is up (a worker raises it before
    the answers of a pass go out). Here a live process stands in for a worker whose records
    wait: the scrape does not come back before its flag is lowered."""
    # `batch` on whatever the run's API_ROUTER_FAST_PATHS (CI's second pass sets 0)
    router = router_factory(base_profile(upstream.url), env={"API_ROUTER_FAST_PATHS": "all"})
    mp_dir = router.metrics_dir()
    assert mp_dir is not None
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    flag = Path(mp_dir) / f"completions_{other.pid}.flag"
    lowered: list[float] = []

    def lower() -> None:
        time.sleep(0.1)
        lowered.append(time.monotonic())
        flag.write_bytes(b"\x00")

    try:
        flag.write_bytes(b"\x01")
        lowering = threading.Thread(target=lower)
        lowering.start()
        scrape(router.url)
        returned = time.monotonic()
        lowering.join()
    finally:
        other.kill()
        other.wait()
        flag.unlink(missing_ok=True)
    assert lowered and returned >= lowered[0]
