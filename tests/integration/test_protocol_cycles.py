"""A client connection that ends mid-response leaves nothing for Python's cyclic collector.

Sanic's `Http` keeps the bound method that writes the current response (`response_func`); a
response cut short (the client left mid-stream) leaves it set, a reference cycle that holds
the connection's request and buffers until the collector runs. GuardedHttpProtocol lets go of
it when the connection's task ends (bench/README.md, "Garbage collection"). This runs Sanic's
real server on loopback with the collector off while it counts, in a process of its own (an
in-process Sanic server would share Sanic's class-level start-up state with the rest of the
suite).
"""

from __future__ import annotations

import asyncio
import gc
import subprocess
import sys
import tempfile
from pathlib import Path

from sanic import Sanic
from sanic.http.http1 import Http
from sanic.response import ResponseStream

from service.server.protocol import GuardedHttpProtocol
from service.settings import Settings


def _https_alive() -> int:
    return sum(isinstance(o, Http) for o in gc.get_objects())


def test_a_stream_the_client_left_frees_its_connection_without_the_collector() -> None:
    out = subprocess.run(
        [sys.executable, "-W", "ignore::DeprecationWarning", "-m", __name__],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    before, after = (int(x) for x in out.stdout.split()[-2:])
    assert after == before, f"{after - before} connections' Http objects wait for the collector"


def probe(tmp_path: Path) -> tuple[int, int]:
    """Three clients leave a stream; the `Http` objects alive before and after."""
    app = Sanic("protocol_cycles")
    app.ctx.settings = Settings(profile_path=tmp_path / "p.json")
    sent = asyncio.Event()

    @app.get("/stream")
    async def stream(request):  # type: ignore[no-untyped-def]
        async def body(response):  # type: ignore[no-untyped-def]
            while True:
                await response.write(b"data: x\n\n")
                sent.set()
                await asyncio.sleep(0.01)

        return ResponseStream(body, content_type="text/event-stream")

    async def go() -> tuple[int, int]:
        server = await app.create_server(
            host="127.0.0.1",
            port=0,
            protocol=GuardedHttpProtocol,
            return_asyncio_server=True,
        )
        assert server is not None
        await server.startup()
        port = server.server.sockets[0].getsockname()[1]
        try:
            before = _https_alive()
            for _ in range(3):
                sent.clear()
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(b"GET /stream HTTP/1.1\r\nHost: x\r\n\r\n")
                await writer.drain()
                assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200")
                await sent.wait()
                writer.close()  # the client leaves mid-stream
                await writer.wait_closed()
            for _ in range(100):  # until the connections' tasks ended (their next write fails)
                await asyncio.sleep(0.02)
                if _https_alive() == before:
                    break
            return before, _https_alive()
        finally:
            server.close()
            await server.wait_closed()

    gc.collect()
    gc.disable()
    try:
        return asyncio.run(go())
    finally:
        gc.enable()


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as d:
        print(*probe(Path(d)))
