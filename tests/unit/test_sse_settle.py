"""`sse.settle(task, secs)`: what `asyncio.wait({task}, timeout=secs)` did for the stream relay
(the wait for the upstream's head, each heartbeat wait): back when the task is done or the time
has passed, the task never cancelled, nothing left behind on the task or the loop."""

from __future__ import annotations

import asyncio
import time

import pytest

from service.proxy.sse import settle


async def _after(secs: float, value: str) -> str:
    await asyncio.sleep(secs)
    return value


def _callbacks(task: asyncio.Future[object]) -> int:
    return len(getattr(task, "_callbacks", None) or ())


def test_back_when_the_task_is_done_before_the_time() -> None:
    async def main() -> tuple[str, float, int]:
        task = asyncio.ensure_future(_after(0.01, "head"))
        before = _callbacks(task)
        t = time.monotonic()
        await settle(task, 30)
        took = time.monotonic() - t
        return task.result(), took, _callbacks(task) - before

    result, took, left = asyncio.run(main())
    assert result == "head"
    assert took < 5  # long before the 30 s: the task's end woke it (a bound, not a speed claim)
    assert left == 0


def test_back_after_the_time_with_the_task_still_running() -> None:
    async def main() -> tuple[bool, bool, int, str]:
        task = asyncio.ensure_future(_after(0.3, "late"))
        before = _callbacks(task)
        await settle(task, 0.01)
        done_then, cancelled = task.done(), task.cancelled()
        left = _callbacks(task) - before
        return done_then, cancelled, left, await task  # it runs on to its own end

    done_then, cancelled, left, result = asyncio.run(main())
    assert (done_then, cancelled, left, result) == (False, False, 0, "late")


def test_a_done_task_returns_at_once_and_both_endings_in_one_pass_raise_nothing() -> None:
    async def main() -> list[dict[str, object]]:
        loop = asyncio.get_running_loop()
        errors: list[dict[str, object]] = []
        loop.set_exception_handler(lambda _loop, context: errors.append(context))
        done = asyncio.ensure_future(_after(0, "x"))
        await done
        await settle(done, 0)
        # The timer and the task's end in the same loop pass: the second wake-up finds the
        # waiter done and does nothing (asyncio.wait's own guard).
        task = loop.create_future()
        loop.call_soon(task.set_result, "y")
        await settle(task, 0)
        await asyncio.sleep(0.01)
        return errors

    assert asyncio.run(main()) == []


def test_a_cancelled_caller_leaves_the_task_running() -> None:
    async def main() -> tuple[bool, str, int]:
        task = asyncio.ensure_future(_after(0.05, "kept"))
        before = _callbacks(task)
        waiting = asyncio.ensure_future(settle(task, 30))
        await asyncio.sleep(0.01)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        left = _callbacks(task) - before
        return task.cancelled(), await task, left

    assert asyncio.run(main()) == (False, "kept", 0)
