"""Optional Sentry reporting with the real sentry-sdk, sent to a local fake ingestion endpoint."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
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


def test_a_router_fault_reaches_sentry_as_its_exception_scrubbed(
    sentry: FakeSentry, fake_upstream: FakeUpstream, tmp_path: Path
) -> None:
    """A request the router itself fails (an exception no handler expects: a 500, no
    error_type) is reported with its exception, which the failure path kept at
    `http.lifecycle.exception`; the credential in its message is scrubbed. In process, so that
    the fault can be put in: a route that raises, added to the app `create_app` made."""
    import asyncio

    import sentry_sdk

    from service.observability import sentry as router_sentry
    from tests.in_process import in_process_apps

    env = {"SENTRY_DSN": sentry.dsn(), "DEFAULT_API_KEY": DEFAULT_KEY}
    mp = pytest.MonkeyPatch()
    mp.setenv("SENTRY_DSN", sentry.dsn())  # what create_app and the worker's start read
    try:
        with in_process_apps(tmp_path) as make:
            app, _ = make(base_profile(fake_upstream.url), env)

            @app.get("/v1/fault-for-test")
            async def fault(_: Any) -> None:
                raise RuntimeError(f"broken while holding {DEFAULT_KEY}")

            _, got = asyncio.run(
                app.asgi_client.get("/v1/fault-for-test", headers={"X-Request-ID": "fault-1"})
            )
            assert got is not None and got.status_code == 500
            (event,) = _wait_events(sentry, 1)
    finally:
        mp.undo()
        sentry_sdk.get_client().close()  # nothing more of this process goes to the fake
        router_sentry._enabled = False
    assert event["tags"]["request_id"] == "fault-1"
    assert event["tags"]["status_code"] == "500"
    assert event["tags"]["error_type"] == "router_error"
    (exc,) = event["exception"]["values"]
    assert exc["type"] == "RuntimeError"
    assert "broken while holding" in exc["value"] and DEFAULT_KEY not in exc["value"]
    assert DEFAULT_KEY.encode() not in b"".join(sentry.raw)
