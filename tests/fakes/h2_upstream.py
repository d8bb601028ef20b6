"""An HTTP/2 upstream on loopback (the `h2` state machine on asyncio): h2c with prior knowledge,
or TLS with ALPN offering h2 (`ssl_context`).

Every request is recorded (`requests`: method, path, headers, body). A path ending in `/stream`
is answered with `SSE_EVENTS` server-sent events, one DATA frame each, `SSE_GAP_SECS` apart;
anything else with `JSON_ANSWER`. Used to check that the `pyreqwest` engine's HTTP/2 option
relays requests and streams byte for byte (tests/integration/test_pyreqwest_engine.py).
"""

from __future__ import annotations

import asyncio
from typing import Any

import h2.config
import h2.connection
import h2.events

from .loopback import LoopbackServer, close_now

JSON_ANSWER = b'{"id":"h2","object":"chat.completion","choices":[]}'
SSE_EVENTS = [b'data: {"n":%d}\n\n' % i for i in range(5)] + [b"data: [DONE]\n\n"]
SSE_GAP_SECS = 0.02


class H2Upstream(LoopbackServer):
    thread_name = "h2-upstream"

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[dict[str, Any]] = []
        self.connections = 0

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        conn = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=False, header_encoding="utf-8")
        )
        conn.initiate_connection()
        writer.write(conn.data_to_send())
        pending: dict[int, dict[str, Any]] = {}
        tasks: set[asyncio.Task[None]] = set()
        try:
            while data := await reader.read(65536):
                for ev in conn.receive_data(data):
                    if isinstance(ev, h2.events.RequestReceived):
                        pending[ev.stream_id] = {"headers": list(ev.headers), "body": bytearray()}
                    elif isinstance(ev, h2.events.DataReceived):
                        pending[ev.stream_id]["body"] += ev.data
                        conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                    elif isinstance(ev, h2.events.StreamEnded):
                        task = asyncio.create_task(
                            self._answer(conn, writer, ev.stream_id, pending.pop(ev.stream_id))
                        )
                        tasks.add(task)
                        task.add_done_callback(tasks.discard)
                    elif isinstance(ev, h2.events.ConnectionTerminated):
                        return
                writer.write(conn.data_to_send())
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            for task in tasks:
                task.cancel()
            close_now(writer)

    async def _answer(
        self, conn: Any, writer: asyncio.StreamWriter, sid: int, req: dict[str, Any]
    ) -> None:
        head = dict(req["headers"])
        self.requests.append(
            {
                "method": head.get(":method"),
                "path": head.get(":path"),
                "headers": [(k, v) for k, v in req["headers"] if not k.startswith(":")],
                "body": bytes(req["body"]),
            }
        )
        if str(head.get(":path", "")).endswith("/stream"):
            conn.send_headers(sid, [(":status", "200"), ("content-type", "text/event-stream")])
            writer.write(conn.data_to_send())
            for event in SSE_EVENTS:
                await asyncio.sleep(SSE_GAP_SECS)
                conn.send_data(sid, event)
                writer.write(conn.data_to_send())
            conn.end_stream(sid)
        else:
            conn.send_headers(
                sid,
                [
                    (":status", "200"),
                    ("content-type", "application/json"),
                    ("content-length", str(len(JSON_ANSWER))),
                ],
            )
            conn.send_data(sid, JSON_ANSWER, end_stream=True)
        writer.write(conn.data_to_send())
