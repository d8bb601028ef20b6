"""The hot lifecycle signals run without Sanic's signal router
(service.server.dispatch.RouterApp), with the same listeners, order and results; anything else
still goes through the router."""

from __future__ import annotations

import io
import json
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog
from sanic import Sanic, response

from service.app import create_app
from service.server.dispatch import HOT_SIGNALS, RouterApp
from service.settings import Settings
from tests.conftest import base_profile
from tests.fakes.upstream import FakeUpstream
from tests.support import write_profile

with warnings.catch_warnings():
    # sanic-testing imports websockets.legacy, which warns about its own deprecation.
    warnings.simplefilter("ignore", DeprecationWarning)
    import sanic_testing  # noqa: F401


@pytest.fixture(autouse=True)
def _test_mode() -> Iterator[None]:
    saved = Sanic.test_mode
    Sanic.test_mode = True
    yield
    Sanic.test_mode = saved


def _routed_events(app: Sanic) -> list[str]:
    """Records every event the app's signal router dispatches (then dispatches it)."""
    seen: list[str] = []
    router = app.signal_router
    real = router.dispatch

    async def recording(event: Any, **kw: Any) -> Any:
        seen.append(str(event))
        return await real(event, **kw)

    router.dispatch = recording  # type: ignore[method-assign]
    return seen


@pytest.fixture
def app_and_log(fake_upstream: FakeUpstream, tmp_path: Path) -> Iterator[tuple[Sanic, io.StringIO]]:
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    profile = write_profile(tmp_path, base_profile(fake_upstream.url))
    settings = Settings.from_env({"LOG_FORMAT": "json"}, profile_path=profile)
    app = create_app(settings)
    stream = io.StringIO()
    root.handlers[0].setStream(stream)  # type: ignore[attr-defined]
    try:
        yield app, stream
    finally:
        Sanic._app_registry.pop(app.name, None)
        root.handlers[:], _ = saved
        root.setLevel(saved[1])
        structlog.reset_defaults()


def test_hot_signals_bypass_the_signal_router_and_still_record(
    app_and_log: tuple[Sanic, io.StringIO],
) -> None:
    app, log = app_and_log
    routed = _routed_events(app)
    _, resp = app.test_client.get("/health", headers={"X-Request-ID": "fast-1"})
    assert resp.status == 200 and resp.headers["X-Request-ID"] == "fast-1"
    # A head refused before it was accepted (431) is logged the same way.
    _, big = app.test_client.get("/health", headers={"X-Big": "a" * 20000})
    assert big.status == 431
    lines = [json.loads(x) for x in log.getvalue().splitlines() if x.startswith("{")]
    done = [x for x in lines if x.get("event") == "request_completed"]
    assert [(x["request_id"], x["route"], x["status_code"]) for x in done[:1]] == [
        ("fast-1", "/health", 200)
    ]
    assert [x["status_code"] for x in done[1:]] == [431]
    assert not set(routed) & set(HOT_SIGNALS), routed
    # The router still served the events that are not hot (the server's own listeners).
    assert any(e.startswith("server.") for e in routed), routed


def _order_app(cls: type[Sanic], name: str, calls: list[str]) -> Sanic:
    app = cls(name, configure_logging=False)

    @app.get("/")
    async def index(request: Any) -> Any:
        return response.text("ok")

    for tag in ("a", "b", "c"):

        async def listener(request: Any, tag: str = tag) -> None:
            calls.append(tag)

        app.signal("http.lifecycle.request")(listener)

    return app


def test_listeners_run_in_the_signal_routers_order() -> None:
    stock: list[str] = []
    fast: list[str] = []
    apps = [_order_app(Sanic, "order_stock", stock), _order_app(RouterApp, "order_fast", fast)]
    try:
        for app in apps:
            _, resp = app.test_client.get("/")
            assert resp.status == 200
        assert fast == stock and sorted(stock) == ["a", "b", "c"]
    finally:
        for app in apps:
            Sanic._app_registry.pop(app.name, None)


def _error_outcome(cls: type[Sanic], name: str) -> tuple[int, list[str], bool]:
    reports: list[BaseException] = []
    app = cls(name, configure_logging=False)

    @app.get("/")
    async def index(request: Any) -> Any:
        return response.text("ok")

    @app.signal("http.routing.after")
    async def broken(**_: Any) -> None:
        raise RuntimeError("listener failed")

    @app.signal("server.exception.report")
    async def report(exception: BaseException) -> None:
        reports.append(exception)

    try:
        _, resp = app.test_client.get("/")
        return (
            resp.status,
            [str(e) for e in reports],
            all(getattr(e, "__dispatched__", False) for e in reports),
        )
    finally:
        Sanic._app_registry.pop(app.name, None)


def test_a_listener_error_is_reported_like_the_routers() -> None:
    stock = _error_outcome(Sanic, "error_stock")
    assert stock == (500, ["listener failed"], True)  # reported once, then answered 500
    assert _error_outcome(RouterApp, "error_fast") == stock


def _waiter_outcome(cls: type[Sanic], name: str) -> list[str]:
    app = cls(name, configure_logging=False)
    heard: list[str] = []

    @app.get("/")
    async def index(request: Any) -> Any:
        return response.text("ok")

    @app.signal("http.lifecycle.request")
    async def listener(request: Any) -> None:
        heard.append("listener")

    async def wait() -> None:
        await app.event("http.lifecycle.request")
        heard.append("waiter")

    @app.after_server_start
    async def _wait(app: Sanic) -> None:
        app.add_task(wait())

    try:
        _, resp = app.test_client.get("/")
        assert resp.status == 200
        return heard
    finally:
        Sanic._app_registry.pop(app.name, None)


def test_a_waiter_from_app_event_still_hears_the_signal() -> None:
    stock = _waiter_outcome(Sanic, "waiter_stock")
    assert sorted(stock) == ["listener", "waiter"]
    assert _waiter_outcome(RouterApp, "waiter_fast") == stock
