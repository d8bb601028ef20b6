"""Optional Sentry reporting with the real sentry-sdk, sent to a local fake ingestion endpoint."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.conftest import base_profile
from tests.fakes.sentry_ingest import FakeSentry
from tests.fakes.upstream import FakeUpstream, Reply
from tests.support import RouterFactory

CLIENT_KEY = "sk-SENTRYCLIENT-91ab77"
DEFAULT_KEY = "sk-SENTRYDEFAULT-5c2d10"


@pytest.fixture
def sentry() -> Iterator[FakeSentry]:
    fake = FakeSentry().start()
    yield fake
    fake.stop()


def _wait_events(fake: FakeSentry, n: int, timeout: float = 10.0) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if len(fake.events) >= n:
            return fake.events
        time.sleep(0.05)
    raise AssertionError(f"{len(fake.events)} Sentry events, expected {n}")


def test_upstream_failure_reaches_sentry_with_request_id_and_route_and_no_credential(
    sentry: FakeSentry, upstream: FakeUpstream, router_factory: RouterFactory
) -> None:
    env = {"SENTRY_DSN": sentry.dsn(), "DEFAULT_API_KEY": DEFAULT_KEY}
    r = router_factory(base_profile(upstream.url), env=env)
    with httpx.Client(timeout=10) as c:
        ok = c.post(r.url + "/v1/chat/completions", json={"model": "gpt-4"})
        assert ok.status_code == 200
        upstream.reply_with(Reply(action="reset"))
        resp = c.post(
            r.url + "/v1/chat/completions",
            json={"model": "gpt-4", "messages": [{"role": "user", "content": CLIENT_KEY}]},
            headers={"Authorization": f"Bearer {CLIENT_KEY}", "X-Request-ID": "sentry-rid-1"},
        )
        assert resp.status_code == 502
        upstream.reply_with(Reply(action="reset"))
        c.post(
            r.url + "/v1/messages", json={"model": "c"}, headers={"X-Request-ID": "sentry-rid-2"}
        )
        events = _wait_events(sentry, 2)
    r.stop()  # the SDK flushes at shutdown: whatever it held back has arrived by now
    assert len(events) == 2  # the good request sent nothing
    tags = [e["tags"] for e in events]
    by_rid = {t["request_id"]: t for t in tags}
    assert by_rid["sentry-rid-1"]["route"] == "/v1/chat/completions"
    assert by_rid["sentry-rid-1"]["error_type"] == "io_error"
    assert by_rid["sentry-rid-1"]["status_code"] == "502"
    assert by_rid["sentry-rid-2"]["route"] == "/v1/messages"
    raw = b"".join(sentry.raw)
    assert CLIENT_KEY.encode() not in raw and DEFAULT_KEY.encode() not in raw
