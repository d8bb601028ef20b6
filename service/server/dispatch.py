"""`RouterApp`: Sanic, with the hot lifecycle signals dispatched without the signal router.

Buys: CPU per request (bench/README.md, "Fast paths"). Sanic's TouchUp deletes the `dispatch`
calls of events nobody listens to; the others go through the signal router, which resolves the
event like a URL on every call, several times per request.

Copies: the listener selection and the error handling of Sanic's `SignalRouter._dispatch`
(sanic/signals.py) for `condition=None, reverse=False`, and reads `Signal.ctx` (`exclusive`,
`trigger`, `definition`, `waiters`) and `Signal.extra.requirements`. An upgrade of Sanic that
changes how `_dispatch` chooses, orders or reports may break it:
tests/integration/test_fast_dispatch.py runs the same apps on stock `Sanic` and on `RouterApp`
(listener order, the error report, an `app.event()` waiter) and checks the router is skipped.

Synchronous listeners (the router's own hot ones are plain functions: none of them waits) are
called when `dispatch` is called, not in a coroutine: the call sites await the dispatch at once,
so the order is the same, and a request saves the coroutine of each dispatch and listener
(bench/README.md, "Fewer coroutines and writes per request"). From the first listener that
returns an awaitable on, the rest run in a coroutine as before. What the caller awaits:
`_NOTHING` (no listener returned a truthy result), a coroutine returning that result, or one
that reports and raises a listener's exception (as the signal router does, when awaited).

Off (`API_ROUTER_FAST_PATHS` without `dispatch`): `create_app` builds a plain `Sanic`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from inspect import isawaitable
from typing import Any, TypeVar, cast

from sanic import Sanic
from sanic.config import Config
from sanic.log import error_logger
from sanic_routing.exceptions import NotFound as NoSignal

# Signals Sanic dispatches on every request or connection that have listeners in this app
# (observability.lifecycle, connlimits, access). RouterApp runs them without the signal router.
HOT_SIGNALS = (
    "http.lifecycle.begin",
    "http.lifecycle.complete",
    "http.lifecycle.read_head",
    "http.lifecycle.request",
    "http.lifecycle.response",
    "http.lifecycle.exception",
    "http.routing.after",
)


class RouterApp(Sanic[Config, Any]):
    """Sanic, with a direct path for the hot signals.

    Once the server has started (`plan_signals`, a `before_server_start` listener: the signal
    router is final by then), the listeners of each event of `HOT_SIGNALS` are looked up once; an
    inline dispatch without condition then calls them directly, in the order and with the
    semantics of `SignalRouter._dispatch` (the first truthy result is returned; an exception is
    reported through `server.exception.report`, marked `__dispatched__` and re-raised).
    Anything else (a condition, `reverse`, a non-inline dispatch, an event with a waiter from
    `app.event()`, any other event) goes to Sanic.
    """

    __slots__ = ("_hot_signals",)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._hot_signals: dict[str, tuple[tuple[Any, ...], tuple[Any, ...]]] = {}
        self.before_server_start(RouterApp._plan_at_start)

    @staticmethod
    async def _plan_at_start(app: RouterApp) -> None:
        app.plan_signals()  # the signal router is final by now

    def plan_signals(self) -> None:
        router = self.signal_router
        plans: dict[str, tuple[tuple[Any, ...], tuple[Any, ...]]] = {}
        for event in HOT_SIGNALS:
            try:
                group, _, params = router.get(event)
            except NoSignal:
                continue  # nobody listens: TouchUp removed its dispatch calls anyway
            params.pop("__trigger__", None)
            if params:
                continue  # a dynamic event: its parameters come from the router
            # SignalRouter._dispatch's choice for `condition=None, reverse=False`.
            group_signals = tuple(group.routes)
            signals = tuple(
                s
                for s in group_signals[::-1]
                if (s.ctx.exclusive is False or not s.extra.requirements)
                and (s.ctx.trigger or event == s.ctx.definition)
            )
            # (listeners to call, every signal of the group: a waiter on any of them may match)
            plans[event] = (signals, group_signals)
        self._hot_signals = plans

    def dispatch(
        self,
        event: str,
        *,
        condition: dict[str, str] | None = None,
        context: dict[str, Any] | None = None,
        fail_not_found: bool = True,
        inline: bool = False,
        reverse: bool = False,
    ) -> Any:
        if inline and condition is None and not reverse:
            plan = self._hot_signals.get(event)
            if plan is not None:
                for s in plan[1]:
                    if s.ctx.waiters:
                        break  # app.event() waits on this group: the router sets its result
                else:
                    return self._run_inline(plan[0], context or {})
        return super().dispatch(  # type: ignore[call-overload]
            event,
            condition=condition,
            context=context,
            fail_not_found=fail_not_found,
            inline=inline,
            reverse=reverse,
        )

    def _run_inline(self, signals: tuple[Any, ...], context: dict[str, Any]) -> Any:
        """Calls the listeners until one returns an awaitable (the rest: `_run_signals`)."""
        for i, s in enumerate(signals):
            try:
                result = s.handler(**context)
            except Exception as e:
                return self._failed(e)
            if result is None:  # (a plain listener's usual result: no isawaitable's ABC check)
                continue
            if isawaitable(result):
                return self._run_signals(signals[i + 1 :], context, result)
            if result:
                return _given(result)
        return _NOTHING

    async def _run_signals(
        self, signals: tuple[Any, ...], context: dict[str, Any], pending: Any
    ) -> Any:
        try:
            result = await pending
            if result:
                return result
            for s in signals:
                result = s.handler(**context)
                if isawaitable(result):
                    result = await result
                if result:
                    return result
            return None
        except Exception as e:
            await self._failed(e)

    async def _failed(self, e: Exception) -> None:
        """`SignalRouter._dispatch`'s answer to a listener's exception: reported, then raised."""
        if self.debug and self.state.verbosity >= 1:
            error_logger.exception(e)
        await self.signal_router.dispatch("server.exception.report", context={"exception": e})
        e.__dispatched__ = True  # type: ignore[attr-defined]
        raise e


F = TypeVar("F", bound=Callable[..., None])


def plain_listener(app: Sanic[Any, Any], event: str) -> Callable[[F], F]:
    """`app.signal(event)` for a plain (synchronous) listener. Sanic's signal router calls one and
    awaits only what is awaitable; its type hints ask for a coroutine function."""

    def register(listener: F) -> F:
        app.signal(event)(cast(Any, listener))
        return listener

    return register


class _Nothing:
    """Awaited: None at once (no coroutine, nothing scheduled)."""

    __slots__ = ()

    def __await__(self) -> Iterator[Any]:
        return iter(())


_NOTHING = _Nothing()


async def _given(result: Any) -> Any:
    return result


def app_class(fast_dispatch: bool) -> type[Sanic[Config, Any]]:
    """The application class: `RouterApp`, or Sanic itself with the fast path off."""
    return RouterApp if fast_dispatch else Sanic
