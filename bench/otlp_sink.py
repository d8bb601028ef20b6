"""A cheap OTLP/HTTP trace sink for the benchmark: answers every `POST <prefix>/v1/traces` with
200 and an empty body (`application/x-protobuf`, an empty `ExportTraceServiceResponse`), keeps
nothing in memory and decodes nothing while the benchmark runs.

    python bench/otlp_sink.py PORT OUT_DIR

One asyncio process (HTTP/1.1 keep-alive, as the exporter's `requests` session uses), standard
library only. Each export's body is appended, as received, to `OUT_DIR/<prefix>.otlp` (the part
of the path before `/v1/traces`, e.g. `router-2w-trace100` for an endpoint
`http://127.0.0.1:PORT/router-2w-trace100`), so one sink serves several configurations apart.
On SIGTERM or SIGINT it stops listening and only then walks the files (concatenated protobuf
messages of one type are one message whose repeated fields are concatenated) to count the spans,
and writes `OUT_DIR/counts.json`: per prefix the POSTs, bytes and spans received.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import signal
import sys
from pathlib import Path
from typing import Any

ANSWER = b"HTTP/1.1 200 OK\r\nContent-Type: application/x-protobuf\r\nContent-Length: 0\r\n\r\n"
NOT_FOUND = b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"
SUFFIX = "/v1/traces"


class Sink:
    def __init__(self, out: Path) -> None:
        self.out = out
        self.files: dict[str, Any] = {}
        self.counts: dict[str, dict[str, int]] = {}

    def keep(self, prefix: str, body: bytes) -> None:
        c = self.counts.setdefault(prefix, {"posts": 0, "bytes": 0})
        c["posts"] += 1
        c["bytes"] += len(body)
        f = self.files.get(prefix)
        if f is None:
            name = prefix.strip("/").replace("/", "_") or "root"
            f = self.files[prefix] = open(self.out / f"{name}.otlp", "ab")
        f.write(body)

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method, path = lines[0].split(" ")[:2]
                headers = {}
                for line in lines[1:]:
                    if ":" in line:
                        k, v = line.split(":", 1)
                        headers[k.strip().lower()] = v.strip()
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                if method != "POST" or not path.endswith(SUFFIX):
                    writer.write(NOT_FOUND)
                    continue
                if headers.get("content-encoding") == "gzip":
                    body = gzip.decompress(body)
                self.keep(path[: -len(SUFFIX)], body)
                writer.write(ANSWER)
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()

    def finish(self) -> dict[str, Any]:
        for f in self.files.values():
            f.close()
        out: dict[str, Any] = {}
        for prefix, c in self.counts.items():
            name = prefix.strip("/").replace("/", "_") or "root"
            data = (self.out / f"{name}.otlp").read_bytes()
            out[prefix.strip("/")] = {**c, **count_spans(data)}
        return out


def _varint(buf: bytes, i: int) -> tuple[int, int]:
    shift = value = 0
    while True:
        b = buf[i]
        i += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, i
        shift += 7


def _fields(buf: bytes, start: int, end: int) -> list[tuple[int, int, int]]:
    """(field number, start, end) of the length-delimited fields of the message in buf[start:end]
    (other wire types skipped)."""
    out = []
    i = start
    while i < end:
        key, i = _varint(buf, i)
        number, wire = key >> 3, key & 7
        if wire == 0:
            _, i = _varint(buf, i)
        elif wire == 1:
            i += 8
        elif wire == 5:
            i += 4
        elif wire == 2:
            n, i = _varint(buf, i)
            out.append((number, i, i + n))
            i += n
        else:
            raise ValueError(f"wire type {wire}")
    return out


def count_spans(buf: bytes) -> dict[str, int]:
    """Spans (and their kinds) in an `ExportTraceServiceRequest`: resource_spans = 1 ->
    scope_spans = 2 -> spans = 2; a span's kind is its field 6 (2 server, 3 client)."""
    spans = server = client = 0
    for n1, s1, e1 in _fields(buf, 0, len(buf)):
        if n1 != 1:
            continue
        for n2, s2, e2 in _fields(buf, s1, e1):
            if n2 != 2:
                continue
            for n3, s3, e3 in _fields(buf, s2, e2):
                if n3 != 2:
                    continue
                spans += 1
                i = s3
                while i < e3:  # the span's own fields: find its kind (varint field 6)
                    key, i = _varint(buf, i)
                    number, wire = key >> 3, key & 7
                    if wire == 0:
                        v, i = _varint(buf, i)
                        if number == 6:
                            server += v == 2
                            client += v == 3
                    elif wire == 1:
                        i += 8
                    elif wire == 5:
                        i += 4
                    elif wire == 2:
                        n, i = _varint(buf, i)
                        i += n
                    else:
                        raise ValueError(f"wire type {wire}")
    return {"spans": spans, "server_spans": server, "client_spans": client}


async def serve(port: int, sink: Sink) -> None:
    server = await asyncio.start_server(sink.serve, "127.0.0.1", port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    server.close()


def main() -> None:
    port, out = int(sys.argv[1]), Path(sys.argv[2])
    out.mkdir(parents=True, exist_ok=True)
    sink = Sink(out)
    asyncio.run(serve(port, sink))
    (out / "counts.json").write_text(json.dumps(sink.finish(), indent=1) + "\n")


if __name__ == "__main__":
    main()
