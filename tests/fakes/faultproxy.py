"""A fault-injecting TCP proxy on loopback, in a background thread (raw asyncio, no framework).

It sits between the router and a real upstream (usually the FakeUpstream) and does to each
accepted connection what its `Fault` says:

- `pass`: relay both ways untouched;
- `delay`: hold the upstream's answer back `delay` seconds (time to first byte);
- `stall`: read the request, never answer, never contact the target;
- `reset`: read the request (so that it provably reached "the upstream"), then RST;
- `reset_on_accept`: RST at once, before reading anything;
- `drip`: relay the answer `chunk` bytes every `interval` seconds;
- `stall_after`: relay the first `after` bytes of the answer, then nothing more (stay open).

Faults are queued per connection (`plan(...)`, first accepted connection first) over a default
(`default`); `connections` counts accepted connections and `received` keeps what each sent.

`Blackhole` is a listener whose accept queue is full: a connect to it never completes (the
kernel drops the SYN), which is how a connect timeout looks on loopback.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import threading
from collections import deque
from dataclasses import dataclass

from tests.fakes.loopback import LoopbackServer


@dataclass(frozen=True)
class Fault:
    mode: str = "pass"
    delay: float = 0.0
    interval: float = 0.1
    chunk: int = 1
    after: int = 0

    MODES = ("pass", "delay", "stall", "reset", "reset_on_accept", "drip", "stall_after")

    def __post_init__(self) -> None:
        if self.mode not in self.MODES:
            raise ValueError(f"unknown fault mode {self.mode!r}")


def _rst(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.close()


class FaultProxy(LoopbackServer):
    thread_name = "fault-proxy"

    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        super().__init__()
        self.target = (target_host, target_port)
        self.default = Fault()
        self._plan: deque[Fault] = deque()
        self.connections = 0
        self.received: list[bytes] = []  # what each accepted connection sent, by connection
        self._lock = threading.Lock()
        self._open: set[asyncio.StreamWriter] = set()

    def plan(self, *faults: Fault) -> None:
        with self._lock:
            self._plan.extend(faults)

    def reset(self, default: Fault | None = None) -> None:
        """Clear the plan and the counts, and close every open connection: the router's pool
        must not carry a connection from one test (and its fault) into the next."""
        with self._lock:
            self._plan.clear()
            self.default = default or Fault()
            self.connections = 0
            self.received = []
        if self._loop is not None:
            asyncio.run_coroutine_threadsafe(self._close_open(), self._loop).result(5)

    async def _close_open(self) -> None:
        for writer in list(self._open):
            writer.close()
        self._open.clear()
        await asyncio.sleep(0.05)  # let the closes reach the peers

    def _next(self) -> Fault:
        with self._lock:
            self.connections += 1
            self.received.append(b"")
            return self._plan.popleft() if self._plan else self.default

    # -- one connection ----------------------------------------------------------------------
    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        fault = self._next()
        index = self.connections - 1
        self._open.add(writer)
        try:
            if fault.mode == "reset_on_accept":
                _rst(writer)
                return
            if fault.mode in ("stall", "reset"):
                await self._read_request(reader, index)
                if fault.mode == "reset":
                    _rst(writer)
                    return
                await reader.read()  # until the router gives up and closes
                return
            up_reader, up_writer = await asyncio.open_connection(*self.target)
            client_gone = asyncio.Event()
            try:
                await asyncio.gather(
                    self._client_to_target(reader, up_writer, index, client_gone),
                    self._target_to_client(up_reader, writer, fault, client_gone),
                )
            finally:
                up_writer.close()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self._open.discard(writer)
            if not writer.is_closing():
                writer.close()

    async def _read_request(self, reader: asyncio.StreamReader, index: int) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        self.received[index] += head

    async def _client_to_target(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        index: int,
        client_gone: asyncio.Event,
    ) -> None:
        try:
            while data := await reader.read(65536):
                self.received[index] += data
                writer.write(data)
                await writer.drain()
            if writer.can_write_eof():
                writer.write_eof()
        finally:
            client_gone.set()

    async def _target_to_client(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        fault: Fault,
        client_gone: asyncio.Event,
    ) -> None:
        sent = 0
        first = True
        while data := await reader.read(65536):
            if first and fault.mode == "delay":
                await asyncio.sleep(fault.delay)
            first = False
            if fault.mode == "stall_after":
                data = data[: max(0, fault.after - sent)]
                if not data:
                    await client_gone.wait()  # silent and open until the router lets go
                    break
            if fault.mode == "drip":
                for i in range(0, len(data), fault.chunk):
                    writer.write(data[i : i + fault.chunk])
                    await writer.drain()
                    await asyncio.sleep(fault.interval)
            else:
                writer.write(data)
                await writer.drain()
            sent += len(data)
        writer.close()


class Blackhole:
    """A loopback port whose connects never complete: its accept queue is full and never read."""

    def __init__(self) -> None:
        self._listener = socket.socket()
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(0)
        self.port = self._listener.getsockname()[1]
        self._fill: list[socket.socket] = []
        # Fill the accept queue (backlog 0 holds one); later SYNs are dropped by the kernel.
        for _ in range(2):
            s = socket.socket()
            s.settimeout(0.3)
            try:
                s.connect(("127.0.0.1", self.port))
            except OSError:
                pass
            self._fill.append(s)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        for s in self._fill:
            s.close()
        self._listener.close()

    def __enter__(self) -> Blackhole:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
