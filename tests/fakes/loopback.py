"""A raw asyncio TCP server on 127.0.0.1, run in a background thread: the base of the fakes.

Subclasses implement `_serve(reader, writer)` (one connection); tests call `start()`/`stop()`
or use the object as a context manager, and reach it at `port` / `url`.
"""

from __future__ import annotations

import asyncio
import ssl
import threading
from typing import Self


async def _settle(tasks: set[asyncio.Task[object]]) -> None:
    # gather inside the running loop: outside it, gather asks the policy for the thread's loop,
    # which a test that switched the policy (to uvloop's) no longer has.
    await asyncio.gather(*tasks, return_exceptions=True)


def close_now(writer: asyncio.StreamWriter) -> None:
    """Close a connection at once. Over TLS `close()` first sends close_notify and waits (up to
    asyncio's 30 s TLS shutdown timeout) for the peer's, which a client that already left never
    sends: the socket would still be open when the server's loop stops."""
    writer.close()
    if writer.get_extra_info("sslcontext") is not None:
        writer.transport.abort()


class LoopbackServer:
    thread_name = "loopback-server"
    stream_limit = 2**16  # asyncio's StreamReader buffer limit
    ssl_context: ssl.SSLContext | None = None  # set (before start) to serve TLS

    def __init__(self) -> None:
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.AbstractServer | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()

    @property
    def url(self) -> str:
        if self.ssl_context is not None:  # the test certificates name localhost
            return f"https://localhost:{self.port}"
        return f"http://127.0.0.1:{self.port}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raise NotImplementedError

    def start(self) -> Self:
        self._thread = threading.Thread(target=self._run, name=self.thread_name, daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError(f"{self.thread_name} did not start")
        return self

    def stop(self) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(5)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        self._server = loop.run_until_complete(
            asyncio.start_server(
                self._serve, "127.0.0.1", 0, limit=self.stream_limit, ssl=self.ssl_context
            )
        )
        self.port = self._server.sockets[0].getsockname()[1]
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            self._server.close()
            tasks = asyncio.all_tasks(loop)
            for task in tasks:
                task.cancel()
            # The connections' handlers end (their writers closed), then one more turn of the
            # loop lets each transport close its socket.
            loop.run_until_complete(_settle(tasks))
            loop.run_until_complete(asyncio.sleep(0))
            loop.close()
