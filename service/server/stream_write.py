"""`ChunkWriter`: a streamed response's body pieces written straight to the client's transport.

Buys: the SSE relay (service.proxy.sse) writes each upstream event from the upstream
connection's data callback, with no wake-up of the relay's task and no chain of coroutines per
event (`BaseHTTPResponse.send` -> `Http.http1_response_chunked` -> the protocol's `send`);
measured in bench/README.md, "Relay per event". Fast path `stream` (`API_ROUTER_FAST_PATHS`);
off, every piece goes through the relay's task and `response.send`.

Writes exactly what `Http.http1_response_chunked` writes for a piece that does not end the
response (`<size in hex>\\r\\n<data>\\r\\n`) and updates the protocol's last-write time as its
`send` does. Only used when that is what a send would do: `ready()` is false until the head went
out through Sanic (the first piece of a response is always Sanic's), while the client's transport
has paused writing (then the relay's task waits for it through `response.send`, back-pressure
as before), when it is closing, and for good when an `http.lifecycle.send` signal handler is
registered (Sanic would dispatch it on every send). The end of the response is always Sanic's
(`response.eof()`, or `response.send(data, end_stream=True)` with the stream's last events).

Relies on: `Http.response_func`, `Http.http1_response_chunked`, the protocol's `_can_write` event
and `_time` (sanic/http/http1.py, sanic/server/protocols/base_protocol.py) and
`app.signal_router.routes`. An upgrade of Sanic that changes these may break it:
tests/integration/test_fast_paths.py checks that the client gets the same body and the same
records with the fast path on and off (on a profile and on a routing file) and that it did
write; tests/unit/test_stream_offer.py holds when the offer must leave a piece to the relay's
task; the whole streaming suite runs in both modes in CI.
"""

from __future__ import annotations

from time import monotonic
from typing import Any

SEND_SIGNAL = "http.lifecycle.send"


class ChunkWriter:
    __slots__ = ("_can_write", "_http", "_protocol", "_transport")

    def __init__(self, http: Any, protocol: Any, transport: Any) -> None:
        self._http = http
        self._protocol = protocol
        self._transport = transport
        self._can_write = protocol._can_write

    def ready(self) -> bool:
        """A piece written now is what `response.send` would write, at once: the head went
        out (Sanic then sends the pieces chunked), the response has not ended, the client's
        transport takes bytes. (The relay also waits while its task writes through Sanic.)"""
        http = self._http
        return (
            http.response_func == http.http1_response_chunked
            and self._can_write.is_set()
            and not self._transport.is_closing()
        )

    def write(self, data: bytes) -> None:
        """One piece (not empty) of the body; only after `ready()`."""
        self._transport.write(b"%x\r\n%b\r\n" % (len(data), data))
        self._protocol._time = monotonic()


def chunk_writer(request: Any) -> ChunkWriter | None:
    """A writer for `request`'s streamed response, or None where Sanic's own send must write
    (no HTTP/1.1 protocol under it, or a send signal handler registered)."""
    app = request.app
    hooked = app.ctx.send_hooked
    if hooked is None:
        hooked = app.ctx.send_hooked = any(
            getattr(route, "name", None) == SEND_SIGNAL for route in app.signal_router.routes
        )
    if hooked:
        return None
    http = getattr(request, "stream", None)
    transport = getattr(request, "transport", None)
    get_protocol = getattr(transport, "get_protocol", None)
    protocol = get_protocol() if get_protocol is not None else None
    if http is None or protocol is None or not hasattr(protocol, "_can_write"):
        return None
    if not hasattr(http, "http1_response_chunked"):
        return None
    return ChunkWriter(http, protocol, transport)
