"""The `batch` fast path's queue (service.observability.completions): records are written at the
end of the loop pass, in order, each in the context of the request that finished."""

from __future__ import annotations

import asyncio
import contextvars
import io
import json
import logging
from typing import Any

import pytest
import structlog

from service.observability.completions import Completions
from service.observability.logging import configure_logging, emit, set_request_secret


def _configure() -> io.StringIO:
    configure_logging("json", "info")
    stream = io.StringIO()
    logging.getLogger().handlers[0].setStream(stream)  # type: ignore[attr-defined]
    return stream


def test_records_wait_for_the_end_of_the_loop_pass_then_are_written_in_order() -> None:
    written: list[int] = []
    completions = Completions(written.append)

    async def main() -> list[int]:
        for i in range(3):
            completions.add(i)
        seen_before = list(written)
        assert completions.pending() == 3
        await asyncio.sleep(0)  # the pass ends: the callback scheduled by the first add runs
        assert completions.pending() == 0
        completions.add(3)  # a new pass: a new callback
        await asyncio.sleep(0)
        return seen_before

    assert asyncio.run(main()) == []
    assert written == [0, 1, 2, 3]


def test_flush_writes_what_waits_at_once_and_the_scheduled_callback_then_finds_nothing() -> None:
    written: list[str] = []
    completions = Completions(written.append)

    async def main() -> None:
        completions.add("a")
        completions.flush()  # what /metrics and the worker's stop do
        assert written == ["a"]
        await asyncio.sleep(0)

    asyncio.run(main())
    assert written == ["a"]


def test_without_a_running_loop_a_record_is_written_at_once() -> None:
    written: list[str] = []
    Completions(written.append).add("now")
    assert written == ["now"]


@pytest.mark.usefixtures("restore_logging")
def test_a_record_that_fails_is_reported_and_the_others_are_still_written() -> None:
    stream = _configure()
    written: list[str] = []

    def write(x: str) -> None:
        if x == "bad":
            raise KeyError("sk-must-not-appear")
        written.append(x)

    completions = Completions(write)

    async def main() -> None:
        for x in ("a", "bad", "b"):
            completions.add(x)
        await asyncio.sleep(0)

    asyncio.run(main())
    assert written == ["a", "b"]
    (line,) = [json.loads(x) for x in stream.getvalue().splitlines()]
    assert (line["event"], line["error"], line["level"]) == (
        "completion_record_failed",
        "KeyError",
        "error",
    )
    assert "sk-must-not-appear" not in stream.getvalue()


@pytest.mark.usefixtures("restore_logging")
@pytest.mark.parametrize("fast_logging", [True, False], ids=["json_line", "structlog-chain"])
def test_each_record_is_written_in_its_own_request_s_context(fast_logging: bool) -> None:
    """Two requests with different keys finish in one pass; the callback was scheduled from the
    first one's context. Each line still scrubs its own client's key and carries its own bound
    request id (the structlog chain reads it from the context)."""
    configure_logging("json", "info", fast=fast_logging)
    stream = io.StringIO()
    logging.getLogger().handlers[0].setStream(stream)  # type: ignore[attr-defined]
    log = structlog.get_logger("api_router.access")

    def write(rid: str, model: str) -> None:
        emit(log, "api_router.access", logging.INFO, "request_completed", {"model": model}, rid)

    completions = Completions(write)

    def finish(rid: str, key: str) -> None:  # what a request's own task does
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(request_id=rid)
        set_request_secret(key, None)
        completions.add(rid, f"model named {key}")  # a client that sent its key as the model

    async def main() -> None:
        # Each request runs in a context of its own, as each connection's task does.
        contextvars.copy_context().run(finish, "rid-a", "sk-client-key-aaaa")
        contextvars.copy_context().run(finish, "rid-b", "sk-client-key-bbbb")
        assert completions.pending() == 2
        await asyncio.sleep(0)

    asyncio.run(main())
    text = stream.getvalue()
    lines: list[dict[str, Any]] = [json.loads(x) for x in text.splitlines()]
    assert [(x["request_id"], x["model"]) for x in lines] == [
        ("rid-a", "model named [redacted]"),
        ("rid-b", "model named [redacted]"),
    ]
    assert "sk-client-key" not in text
