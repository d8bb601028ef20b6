"""A local fake of Sentry's ingestion endpoint: a real HTTP server on loopback, in a thread.

The real `sentry-sdk` is pointed at it with `dsn()`; it POSTs envelopes to
`/api/<project>/envelope/` (gzip- or brotli-compressed). The fake keeps every raw body (to look
for leaked secrets in the exact bytes sent) and the decoded event items.
"""

from __future__ import annotations

import gzip
import json
import threading
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


def _decode(body: bytes, encoding: str) -> bytes:
    encoding = encoding.lower()
    if encoding == "gzip":
        return gzip.decompress(body)
    if encoding == "deflate":
        return zlib.decompress(body)
    if encoding == "br":
        import brotli  # only when the SDK found it, so it is installed

        return bytes(brotli.decompress(body))
    return body


def parse_envelope(data: bytes) -> list[tuple[dict[str, Any], bytes]]:
    """The (item header, payload) pairs of a Sentry envelope."""
    items = []
    _, _, rest = data.partition(b"\n")  # envelope header
    while rest.strip():
        line, _, rest = rest.partition(b"\n")
        if not line.strip():
            continue
        header = json.loads(line)
        length = header.get("length")
        if length is not None:
            payload, rest = rest[:length], rest[length:]
            rest = rest[1:] if rest.startswith(b"\n") else rest
        else:
            payload, _, rest = rest.partition(b"\n")
        items.append((header, payload))
    return items


class FakeSentry:
    PUBLIC_KEY = "0123456789abcdef0123456789abcdef"

    def __init__(self) -> None:
        self.raw: list[bytes] = []
        self.events: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                n = int(self.headers.get("Content-Length") or 0)
                body = _decode(self.rfile.read(n), self.headers.get("Content-Encoding") or "")
                with fake._lock:
                    fake.raw.append(body)
                    for header, payload in parse_envelope(body):
                        if header.get("type") == "event":
                            fake.events.append(json.loads(payload))
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def dsn(self, project: int = 42) -> str:
        return f"http://{self.PUBLIC_KEY}@127.0.0.1:{self.port}/{project}"

    def start(self) -> FakeSentry:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)
