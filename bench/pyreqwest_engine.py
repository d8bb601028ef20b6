"""Issue 15: the router's pyreqwest engine (service/proxy/_pyreqwest.py, behind httpx's types
as the router uses it) measured against `h1` in a client-only loop.

    .venv/bin/python -m bench.pyreqwest_engine [--secs 4] [--rounds 3]

The adapter is built the way `h1` is used by the router: an `httpx.Request` (as the relay builds
it, sent by `UpstreamClient.send`) straight to the engine, the response body handed over chunk
by chunk, httpx's types at the seam. The loop: 64 concurrent POSTs of a small JSON body (and,
separately, a 22-event SSE answer) to a fast upstream in another process (uvloop, raw asyncio),
for a fixed time; the figure is the client process's CPU time (all threads: pyreqwest runs
hyper on its own tokio threads) per request. Engines: `h1`, the adapter, pyreqwest's own API
(what the engine costs without httpx's objects), httpx on pyreqwest's bundled compatibility
transport.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import uvloop

from service.proxy._pyreqwest import PyreqwestTransport
from service.proxy.h1transport import H1Transport
from service.proxy.upstream import UpstreamClient

JSON_BODY = b'{"model":"m","messages":[{"role":"user","content":"hello"}]}'
JSON_ANSWER = b'{"id":"x","choices":[{"message":{"role":"assistant","content":"hi"}}]}'
SSE_EVENTS = 22
CONCURRENCY = 64


# -- the upstream (another process) ----------------------------------------------------------------


def _upstream(port_out: Any) -> None:
    json_answer = (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
        % (
            len(JSON_ANSWER),
            JSON_ANSWER,
        )
    )
    event = b'data: {"choices":[{"delta":{"content":"token"}}]}\n\n'
    chunk = b"%x\r\n%s\r\n" % (len(event), event)
    sse_answer = (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
        + chunk * SSE_EVENTS
        + b"0\r\n\r\n"
    )

    class Proto(asyncio.Protocol):
        def connection_made(self, transport: Any) -> None:
            self.t = transport
            self.buf = b""

        def data_received(self, data: bytes) -> None:
            self.buf += data
            while True:
                end = self.buf.find(b"\r\n\r\n")
                if end < 0:
                    return
                head = self.buf[:end].lower()
                i = head.find(b"content-length: ")
                n = int(head[i + 16 :].split(b"\r\n")[0]) if i >= 0 else 0
                if len(self.buf) < end + 4 + n:
                    return
                self.buf = self.buf[end + 4 + n :]
                self.t.write(sse_answer if b" /sse " in head else json_answer)

    async def main() -> None:
        server = await asyncio.get_running_loop().create_server(Proto, "127.0.0.1", 0)
        port_out.put(server.sockets[0].getsockname()[1])
        await asyncio.Event().wait()

    uvloop.run(main())


# -- the loop --------------------------------------------------------------------------------------

Sender = Callable[[str], Awaitable[int]]  # one request; returns the body length read


def _router_sender(transport: httpx.AsyncBaseTransport) -> tuple[Sender, Callable[[], Any]]:
    client = UpstreamClient(transport)
    timeout = httpx.Timeout(10.0)

    async def send(url: str) -> int:
        r = client.build_request(
            "POST", url, content=JSON_BODY, headers=[("Content-Type", "application/json")],
            timeout=timeout,
        )  # fmt: skip
        resp = await client.send(r, stream=True)
        n = 0
        async for chunk in resp.aiter_raw():
            n += len(chunk)
        await resp.aclose()
        return n

    return send, client.aclose


def _native_sender() -> tuple[Sender, Callable[[], Any]]:
    from pyreqwest.client import ClientBuilder

    client = ClientBuilder().max_connections(1024).gzip(False).build()

    async def send(url: str) -> int:
        builder = client.post(url).header("Content-Type", "application/json").body_bytes(JSON_BODY)
        n = 0
        async with builder.build_streamed() as resp:
            reader = resp.body_reader
            while (chunk := await reader.read_chunk()) is not None:
                n += len(chunk)
        return n

    return send, client.close


def _compat_sender() -> tuple[Sender, Callable[[], Any]]:
    from pyreqwest.compatibility.httpx import HttpxTransport

    client = httpx.AsyncClient(transport=HttpxTransport())

    async def send(url: str) -> int:
        n = 0
        async with client.stream(
            "POST", url, content=JSON_BODY, headers={"Content-Type": "application/json"}
        ) as resp:
            async for chunk in resp.aiter_raw():
                n += len(chunk)
        return n

    return send, client.aclose


ENGINES: dict[str, Callable[[], tuple[Sender, Callable[[], Any]]]] = {
    "h1 (httpx Request straight to H1Transport)": lambda: _router_sender(H1Transport()),
    "pyreqwest, lean adapter (httpx Request)": lambda: _router_sender(
        PyreqwestTransport(httpx.Limits(max_connections=1024, keepalive_expiry=4.0))
    ),
    "pyreqwest's own API": _native_sender,
    "httpx on pyreqwest's compatibility transport": _compat_sender,
}


async def _measure(
    make: Callable[[], tuple[Sender, Callable[[], Any]]], url: str, secs: float
) -> tuple[float, float]:
    send, close = make()
    for _ in range(200):  # warm the pool
        await send(url)
    done = 0
    stop = False

    async def worker() -> None:
        nonlocal done
        while not stop:
            await send(url)
            done += 1

    cpu0, wall0 = time.process_time(), time.monotonic()
    tasks = [asyncio.create_task(worker()) for _ in range(CONCURRENCY)]
    await asyncio.sleep(secs)
    stop = True
    await asyncio.gather(*tasks)
    cpu, wall = time.process_time() - cpu0, time.monotonic() - wall0
    await close()
    return done / wall, cpu / done * 1e6


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--secs", type=float, default=4.0)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    q: Any = multiprocessing.Queue()
    upstream = multiprocessing.Process(target=_upstream, args=(q,), daemon=True)
    upstream.start()
    port = q.get(timeout=10)
    results: dict[tuple[str, str], list[tuple[float, float]]] = {}
    try:
        for _ in range(args.rounds):  # interleaved rounds
            for kind in ("json", "sse"):
                url = f"http://127.0.0.1:{port}/{kind}"
                for name, make in ENGINES.items():
                    r = uvloop.run(_measure(make, url, args.secs))
                    results.setdefault((kind, name), []).append(r)
                    print(
                        f"{kind:4} {name:48} {r[0]:8.0f} req/s {r[1]:7.1f} us CPU/request",
                        flush=True,
                    )
    finally:
        upstream.terminate()
    print("\n| answer | engine | req/s (median, range) | CPU per request, us (median, range) |")
    print("| --- | --- | --- | --- |")
    for (kind, name), rs in results.items():
        rps = [r[0] for r in rs]
        cpu = [r[1] for r in rs]
        per = f" ({statistics.median(cpu) / SSE_EVENTS:.1f} per event)" if kind == "sse" else ""
        print(
            f"| {kind} | {name} | {statistics.median(rps):,.0f} ({min(rps):,.0f}-{max(rps):,.0f}) "
            f"| {statistics.median(cpu):.1f} ({min(cpu):.1f}-{max(cpu):.1f}){per} |"
        )


if __name__ == "__main__":
    main()
