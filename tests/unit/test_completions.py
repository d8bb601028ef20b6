"""The `batch` fast path's queue (service.observability.completions): records are written at the
end of the loop pass, in order, each in the context of the request that finished."""

from __future__ import annotations

import asyncio
import contextvars
import io
import json
import logging
import os
import subprocess
import sys
import time
from typing import Any

import pytest
import structlog

from service.observability.completions import Completions, raised_flags, settled
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


@pytest.mark.usefixtures("restore_logging")
def test_a_failed_record_is_reported_with_its_own_request_id() -> None:
    stream = _configure()

    def write(ok: bool) -> None:
        if not ok:
            raise ValueError

    completions = Completions(write)

    def finish(rid: str, ok: bool) -> None:
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(request_id=rid)
        completions.add(ok)

    async def main() -> None:
        contextvars.copy_context().run(finish, "rid-good", True)  # schedules the callback
        contextvars.copy_context().run(finish, "rid-bad", False)
        await asyncio.sleep(0)

    asyncio.run(main())
    (line,) = [json.loads(x) for x in stream.getvalue().splitlines()]
    assert (line["event"], line["request_id"]) == ("completion_record_failed", "rid-bad")


def test_a_cancellation_while_writing_leaves_the_rest_waiting_in_order() -> None:
    written: list[str] = []

    def write(x: str) -> None:
        if x == "stop":
            raise KeyboardInterrupt
        written.append(x)

    completions = Completions(write)
    completions._pending = [(contextvars.copy_context(), (x,)) for x in ("a", "stop", "b", "c")]
    with pytest.raises(KeyboardInterrupt):
        completions.flush()
    assert written == ["a"] and completions.pending() == 2
    completions.flush()
    assert written == ["a", "b", "c"]


def test_the_flag_is_up_while_records_wait_and_down_once_written(tmp_path: Any) -> None:
    completions = Completions(lambda: None)
    completions.open_flag(str(tmp_path))
    flag = tmp_path / f"completions_{os.getpid()}.flag"

    async def main() -> bytes:
        completions.add()
        up = flag.read_bytes()
        await asyncio.sleep(0)
        return up

    assert asyncio.run(main()) == b"\x01"
    assert flag.read_bytes() == b"\x00"
    completions.close()
    assert not flag.exists()


def test_a_scrape_waits_for_another_live_worker_s_records(tmp_path: Any) -> None:
    """`settled`: another live process's raised flag holds the scrape until it is lowered; a
    dead process's flag, or one that never comes down within the limit, does not hold it."""
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        flag = tmp_path / f"completions_{other.pid}.flag"
        flag.write_bytes(b"\x01")
        (tmp_path / f"completions_{os.getpid()}.flag").write_bytes(b"\x01")  # its own: ignored
        assert raised_flags(str(tmp_path)) == [other.pid]

        async def lowered_later() -> tuple[bool, float]:
            loop = asyncio.get_running_loop()
            loop.call_later(0.05, flag.write_bytes, b"\x00")
            started = time.monotonic()
            done = await settled(str(tmp_path))
            return done, time.monotonic() - started

        done, waited = asyncio.run(lowered_later())
        assert done and waited >= 0.04
        flag.write_bytes(b"\x01")
        assert asyncio.run(settled(str(tmp_path), limit=0.02)) is False
    finally:
        other.kill()
        other.wait()
    assert raised_flags(str(tmp_path)) == []  # its process is gone (reap_dead_workers drops it)
    assert asyncio.run(settled(str(tmp_path), limit=0.02)) is True


class _CountingStream(io.StringIO):
    """A log stream that counts the writes it gets."""

    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, s: str) -> int:
        self.writes += 1
        return super().write(s)


def _emit_line(n: int) -> None:
    emit(
        structlog.get_logger("api_router.access"),
        "api_router.access",
        logging.INFO,
        "request_completed",
        {"n": n},
        f"rid-{n}",
    )


@pytest.mark.parametrize("fmt", ["json", "console"])
def test_a_pass_s_completion_lines_go_out_in_one_write_in_order(fmt: str) -> None:
    configure_logging(fmt, "info")
    stream = _CountingStream()
    logging.getLogger().handlers[0].setStream(stream)  # type: ignore[attr-defined]
    completions = Completions(_emit_line)
    try:

        async def main() -> None:
            for i in range(5):
                completions.add(i)
            await asyncio.sleep(0)  # the pass ends: its five lines, one write
            completions.add(5)
            await asyncio.sleep(0)  # a pass of one line: one write

        asyncio.run(main())
    finally:
        structlog.reset_defaults()
    lines = stream.getvalue().splitlines()
    assert len(lines) == 6 and stream.writes == 2, (stream.writes, lines)
    if fmt == "json":
        assert [json.loads(x)["request_id"] for x in lines] == [f"rid-{i}" for i in range(6)]
    else:
        assert all(f"n={i}" in x for i, x in enumerate(lines)), lines


def test_held_lines_are_written_when_a_record_raises_and_other_threads_write_at_once() -> None:
    import threading

    from service.observability.logging import held_lines

    stream = _CountingStream()
    configure_logging("json", "info")
    logging.getLogger().handlers[0].setStream(stream)  # type: ignore[attr-defined]
    log = structlog.get_logger("api_router")
    try:
        with pytest.raises(KeyboardInterrupt), held_lines():
            log.info("first")
            other = threading.Thread(target=lambda: log.info("from_another_thread"))
            other.start()
            other.join()
            # the other thread's line is out already, this thread's is held
            assert [json.loads(x)["event"] for x in stream.getvalue().splitlines()] == [
                "from_another_thread"
            ]
            with held_lines():  # nested: the outer block writes
                log.info("second")
            assert stream.writes == 1
            raise KeyboardInterrupt
    finally:
        structlog.reset_defaults()
    events = [json.loads(x)["event"] for x in stream.getvalue().splitlines()]
    assert events == ["from_another_thread", "first", "second"] and stream.writes == 2
