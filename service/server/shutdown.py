"""Graceful shutdown: what SIGTERM (podman stop, a Kubernetes pod deletion) does.

1. The main process closes its copy of the listening socket as soon as the signal arrives, and
   each worker closes its own when it starts to stop: the port then refuses new connections
   (Sanic alone keeps the main process's copy open until every worker has exited, so the kernel
   would go on completing handshakes that nobody accepts).
2. Each worker sets `app.ctx.draining` (so `/ready` answers 503 to any request still being
   read), closes its idle keep-alive connections at once and marks the busy ones to close after
   their response (`Connection: close` on responses not yet started).
3. Sanic then waits for requests in flight, streams included, up to `GRACEFUL_SHUTDOWN_TIMEOUT`
   (`API_ROUTER_DRAIN_SECS`), aborts what is left, and the process exits 0. A stream still open
   a moment before that (a second, or a quarter of a shorter drain time) ends with an error
   event in its client's protocol (`server_shutting_down`, 503's kind: clients retry it) and a
   normal end, so that it is neither cut mid-event nor recorded as a client that left (499).

Relies on Sanic's internals: the listening sockets in `app.state.server_info[].settings["sock"]`,
the per-worker set of live connections every protocol holds (`HttpProtocol.connections`), a
connection's `_http.keep_alive` and `close_if_idle()`, and the signal handlers its worker manager
installs (chained, not replaced). An upgrade of Sanic that moves these may break it:
tests/integration/test_shutdown.py stops a real router with streams in flight. Always on.

A worker stops on the first SIGTERM or SIGINT it gets and ignores any later one. A service
manager that signals the whole process group (systemd's default `KillMode=control-group`,
Ctrl-C in a terminal) reaches each worker twice, directly and through the main process. Sanic's
handler answered the second by stopping the event loop again, in the middle of the drain
(uvloop: "Event loop stopped before Future completed"), or, once Sanic had removed its handler
at the loop's end, the default action ended the worker: the streams in flight were cut and the
router still exited 0. `_stop_once` replaces Sanic's loop handler in each worker; it removes
itself and sets the signals to be ignored before it stops the server, so Sanic's removal at the
loop's end finds nothing to restore. (A second SIGTERM or SIGINT to the main process is Sanic's
"Shutdown interrupted. Killing.": the workers are killed at once.)

SIGHUP (a terminal that closes, or an operator used to "HUP reloads") would end the main process
by default and leave its workers serving, orphaned. It is logged and otherwise ignored, in the
main process and in the workers: the active config file is reloaded whenever it changes anyway
(service.config.reload).
"""

from __future__ import annotations

import asyncio
import math
import signal
import socket
import time
from collections.abc import Callable
from types import FrameType
from typing import Any

import structlog
from sanic import Request, Sanic

from ..context import AppContext
from ..proxy.sse import drain_until


def install(app: Sanic[Any, AppContext]) -> None:
    """`app.ctx.draining` and `app.ctx.connections` are written here and nowhere else."""
    ctx = app.ctx

    @app.on_request
    def _drain_guard(request: Request) -> None:  # (a plain function: Sanic makes no coroutine)
        if ctx.draining:
            # Served while draining: answer, then close rather than wait for another request.
            request.stream.keep_alive = False  # type: ignore[union-attr]
        elif ctx.connections is None:
            # Sanic keeps one set of live connections per worker; every protocol holds it.
            # (An ASGI server's transport has no protocol: there, it keeps its own connections.)
            get_protocol = getattr(request.transport, "get_protocol", None)
            protocol = get_protocol() if get_protocol is not None else None
            ctx.connections = getattr(protocol, "connections", None)

    @app.before_server_stop
    async def _begin_drain(app: Sanic) -> None:
        ctx.draining = True
        drain = ctx.settings.drain_secs
        drain_until(time.monotonic() + drain - min(1.0, drain / 4))
        for conn in list(ctx.connections or ()):
            http = getattr(conn, "_http", None)
            if http is not None:
                http.keep_alive = False  # a busy connection closes after its response
            conn.close_if_idle()

    @app.after_server_stop
    async def _end_drain(app: Sanic) -> None:
        # The streams are gone: nothing else in this process (another server started in it, as
        # tests do) may meet a drain deadline that has passed.
        drain_until(math.inf)

    @app.main_process_ready
    async def _close_listener_on_signal(app: Sanic, _: Any) -> None:
        socks = [s for info in app.state.server_info if (s := info.settings.get("sock"))]
        for sig in (signal.SIGTERM, signal.SIGINT):
            _chain_handler(sig, lambda: _close_all(socks))
        signal.signal(signal.SIGHUP, _hangup)

    @app.before_server_start
    async def _ignore_hangup(app: Sanic) -> None:
        # Through the loop in a worker: the line is written between callbacks, never in the
        # middle of another write to the same stream.
        asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, _hangup, signal.SIGHUP, None)
        drain_until(math.inf)  # a server started again in this process: not draining

    @app.after_server_start
    async def _stop_once(app: Sanic) -> None:
        # After Sanic's own handlers (set between the two start events), and only where it set
        # them: a server run without system signals has the signal ignored, not handled.
        if not callable(signal.getsignal(signal.SIGTERM)):
            return
        loop = asyncio.get_running_loop()

        def stop() -> None:
            # Blocked while the handlers are swapped: removing one restores the default action
            # for a moment, and the main process's relayed copy comes within that millisecond.
            signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
            try:
                for sig in _STOP_SIGNALS:
                    loop.remove_signal_handler(sig)
                    signal.signal(sig, signal.SIG_IGN)
            finally:
                signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)  # then ignored
            app.stop(terminate=False)

        for sig in _STOP_SIGNALS:
            loop.add_signal_handler(sig, stop)


_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _hangup(signum: int, frame: FrameType | None) -> None:
    structlog.get_logger("api_router").info(
        "sighup_ignored", detail="the config file is reloaded when it changes"
    )


def _close_all(socks: list[socket.socket]) -> None:
    for s in socks:
        s.close()


def _chain_handler(sig: signal.Signals, first: Callable[[], None]) -> None:
    """Run `first`, then the handler Sanic's worker manager installed for `sig`."""
    previous = signal.getsignal(sig)

    def handler(signum: int, frame: FrameType | None) -> None:
        first()
        if callable(previous):
            previous(signum, frame)

    signal.signal(sig, handler)
