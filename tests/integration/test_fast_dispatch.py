"""The hot lifecycle signals run without Sanic's signal router
(service.server.dispatch.RouterApp), with the same listeners, order and results; anything else
still goes through the router."""

from __future__ import annotations

import asyncio
import inspect
import io
import json
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from sanic import Sanic, response

from service.server.dispatch import HOT_SIGNALS, RouterApp
from tests.conftest import base_profile
from tests.fakes.upstream import FakeUpstream
from tests.in_process import in_process_apps  # (also: sanic-testing's clients)


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
    with in_process_apps(tmp_path) as make:
        yield make(base_profile(fake_upstream.url))


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
    # The router's own hot listeners are plain functions: a dispatch of them makes no coroutine.
    assert isinstance(app, RouterApp) and app._hot_signals
    for event, (signals, _) in app._hot_signals.items():
        assert not any(inspect.iscoroutinefunction(s.handler) for s in signals), event
    for event, context in _CONTEXTS.items():  # (those that need no real request)
        assert not inspect.iscoroutine(app.dispatch(event, inline=True, context=context)), event


# Arguments the router's listeners of these events accept and do nothing with: a head that
# passes the check (as Sanic passes it: without its end), a connection without a request.
_CONTEXTS: dict[str, dict[str, Any]] = {
    "http.lifecycle.read_head": {"head": b"GET / HTTP/1.1\r\nHost: x"},
    "http.lifecycle.begin": {"conn_info": SimpleNamespace(ctx=SimpleNamespace())},
    "http.lifecycle.complete": {"conn_info": SimpleNamespace(ctx=SimpleNamespace())},
}


def _order_app(cls: type[Sanic], name: str, calls: list[str], kinds: str) -> Sanic:
    """Listeners a, b, c, ... of `http.lifecycle.request`: `kinds` says which are coroutine
    functions ("a") and which plain functions ("s")."""
    app = cls(name, configure_logging=False)

    @app.get("/")
    async def index(request: Any) -> Any:
        await asyncio.sleep(0)
        calls.append("handler")
        return response.text("ok")

    for tag, kind in zip("abcd", kinds, strict=False):
        if kind == "a":

            async def listener(request: Any, tag: str = tag) -> None:
                await asyncio.sleep(0)
                calls.append(tag)

        else:

            def listener(request: Any, tag: str = tag) -> None:  # type: ignore[misc]
                calls.append(tag)

        app.signal("http.lifecycle.request")(listener)

    return app


@pytest.mark.parametrize("kinds", ["aaa", "sss", "sas", "asas"])
def test_listeners_run_in_the_signal_routers_order(kinds: str) -> None:
    stock: list[str] = []
    fast: list[str] = []
    apps = [
        _order_app(Sanic, f"order_stock_{kinds}", stock, kinds),
        _order_app(RouterApp, f"order_fast_{kinds}", fast, kinds),
    ]
    try:
        for app in apps:
            _, resp = app.test_client.get("/")
            assert resp.status == 200
        assert fast == stock and sorted(stock) == sorted([*"abcd"[: len(kinds)], "handler"])
        assert stock[-1] == "handler"  # every listener ran before the handler, in both
    finally:
        for app in apps:
            Sanic._app_registry.pop(app.name, None)


def _error_outcome(cls: type[Sanic], name: str, kind: str = "a") -> tuple[int, list[str], bool]:
    reports: list[BaseException] = []
    app = cls(name, configure_logging=False)

    @app.get("/")
    async def index(request: Any) -> Any:
        return response.text("ok")

    if kind == "a":

        @app.signal("http.routing.after")
        async def broken(**_: Any) -> None:
            raise RuntimeError("listener failed")

    else:

        @app.signal("http.routing.after")
        def broken_plain(**_: Any) -> None:
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


@pytest.mark.parametrize("kind", ["a", "s"])
def test_a_listener_error_is_reported_like_the_routers(kind: str) -> None:
    stock = _error_outcome(Sanic, f"error_stock_{kind}", kind)
    assert stock == (500, ["listener failed"], True)  # reported once, then answered 500
    assert _error_outcome(RouterApp, f"error_fast_{kind}", kind) == stock


@pytest.mark.parametrize("kinds", ["s", "as", "sa"])
def test_a_truthy_result_ends_the_dispatch_like_the_routers(kinds: str) -> None:
    """The first listener to return a truthy value ends the dispatch with it (the next one is not
    called), as the signal router does; checked through the dispatch's own result."""

    def build(cls: type[Sanic], name: str, seen: list[Any]) -> Sanic:
        app = cls(name, configure_logging=False)

        @app.get("/")
        async def index(request: Any) -> Any:
            seen.append(await app.dispatch("http.lifecycle.request", inline=True, context={}))
            return response.text("ok")

        for kind in kinds:
            if kind == "a":

                async def listener(**_: Any) -> Any:
                    seen.append("async")
                    return "from async"

            else:

                def listener(**_: Any) -> Any:  # type: ignore[misc]
                    seen.append("plain")
                    return "from plain"

            app.signal("http.lifecycle.request")(listener)
        return app

    stock: list[Any] = []
    fast: list[Any] = []
    apps = [
        build(Sanic, f"truthy_stock_{kinds}", stock),
        build(RouterApp, f"truthy_fast_{kinds}", fast),
    ]
    try:
        for app in apps:
            _, resp = app.test_client.get("/")
            assert resp.status == 200
        # once for the request itself, once for the handler's own dispatch (whose result it keeps)
        assert len(stock) == 3 and stock[2] == f"from {stock[1]}"
        assert fast == stock
    finally:
        for app in apps:
            Sanic._app_registry.pop(app.name, None)


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
