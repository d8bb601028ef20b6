"""A configurable fake LLM upstream: a real HTTP/1.1 server on loopback, in a background thread.

It records every request it receives (method, path, query, headers, body) and answers with a
`Reply` chosen by the test: a status, headers and body; a chunked body written piece by piece
with delays (SSE); or a fault (`reset` before a response, `garbage` that is not HTTP, `stall`,
`close_mid` in the middle of a body). By default it answers like an OpenAI / Anthropic provider,
echoing the model it was sent, with usage.

It is written on raw asyncio streams (not a framework) so that tests control every byte and can
observe connection events (`conn_closed_at` records when each connection ended).
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from tests.fakes.loopback import LoopbackServer


@dataclass
class Recorded:
    method: str
    path: str
    query: str
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        name = name.lower()
        for k, v in self.headers:
            if k.lower() == name:
                return v
        return None

    def header_names(self) -> set[str]:
        return {k.lower() for k, _ in self.headers}

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Reply:
    status: int = 200
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    # When set, the body is sent chunked: each item is (delay before it in seconds, bytes).
    chunks: list[tuple[float, bytes]] | None = None
    # Faults: "reset" (close before any response), "garbage" (non-HTTP bytes), "stall"
    # (never answer), "close_mid" (send the head and part of the body, then close),
    # "invalid_json" (200 application/json whose body is not JSON).
    action: str | None = None
    delay: float = 0.0  # before the response head
    # When set, the head waits until the test sets this event (at most 10 s), then `delay`: for
    # answers timed from a moment the test chooses (every concurrent request arrived), not
    # from each request's arrival, which a loaded machine may hold back.
    after: threading.Event | None = None
    # A chunked body produced lazily (it may be endless): called once per response, yields
    # (delay before it, bytes) like `chunks`. Used instead of `chunks` when set.
    chunk_source: Callable[[], Iterable[tuple[float, bytes]]] | None = None
    # While waiting out a chunk's delay, notice at once when the peer closed the connection (so
    # that `conn_closed_at` records the moment the router let go, not the next failed write).
    watch_close: bool = False
    # A chunked body's terminating chunk (`0\r\n\r\n`) comes this long after its last data.
    end_delay: float = 0.0
    # The whole answer (head, every chunk, their delays ignored, the terminating chunk) in one
    # write, as a server answering from memory sends it (bench/'s nginx).
    one_write: bool = False


def sse(*events: str) -> list[tuple[float, bytes]]:
    return [(0.0, e.encode()) for e in events]


def openai_chat(model: str, content: str = "Hello from fake") -> dict[str, Any]:
    return {
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "created": 1700000000,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10},
    }


def openai_usage_chunk(model: str) -> str:
    """The extra last chunk an OpenAI upstream sends when `stream_options.include_usage`."""
    data = {
        "id": "chatcmpl-fake",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": model,
        "choices": [],
        "usage": {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10},
    }
    return "data: " + json.dumps(data) + "\n\n"


def openai_chat_stream(model: str, pieces: tuple[str, ...] = ("Hel", "lo")) -> list[str]:
    out = []
    for i, p in enumerate(pieces):
        delta: dict[str, Any] = {"content": p}
        if i == 0:
            delta["role"] = "assistant"
        out.append(
            "data: "
            + json.dumps(
                {
                    "id": "chatcmpl-fake",
                    "object": "chat.completion.chunk",
                    "created": 1700000000,
                    "model": model,
                    "choices": [{"index": 0, "delta": delta, "finish_reason": None}],
                }
            )
            + "\n\n"
        )
    out.append(
        "data: "
        + json.dumps(
            {
                "id": "chatcmpl-fake",
                "object": "chat.completion.chunk",
                "created": 1700000000,
                "model": model,
                "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
            }
        )
        + "\n\n"
    )
    out.append("data: [DONE]\n\n")
    return out


def openai_completion(model: str) -> dict[str, Any]:
    return {
        "id": "cmpl-fake",
        "object": "text_completion",
        "created": 1700000000,
        "model": model,
        "choices": [{"index": 0, "text": "Hello", "finish_reason": "stop", "logprobs": None}],
        "usage": {"prompt_tokens": 2, "completion_tokens": 1, "total_tokens": 3},
    }


def openai_completion_stream(model: str) -> list[str]:
    chunks = []
    for text, fin in (("Hel", None), ("lo", "stop")):
        chunks.append(
            "data: "
            + json.dumps(
                {
                    "id": "cmpl-fake",
                    "object": "text_completion",
                    "created": 1700000000,
                    "model": model,
                    "choices": [{"index": 0, "text": text, "finish_reason": fin}],
                }
            )
            + "\n\n"
        )
    chunks.append("data: [DONE]\n\n")
    return chunks


def openai_embeddings(model: str) -> dict[str, Any]:
    return {
        "object": "list",
        "data": [{"object": "embedding", "index": 0, "embedding": [0.1, 0.2, 0.3]}],
        "model": model,
        "usage": {"prompt_tokens": 4, "total_tokens": 4},
    }


def anthropic_message(model: str, text: str = "Hello from fake") -> dict[str, Any]:
    return {
        "id": "msg_fake",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [{"type": "text", "text": text}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {"input_tokens": 9, "output_tokens": 4},
    }


def anthropic_stream(model: str, pieces: tuple[str, ...] = ("Hel", "lo")) -> list[str]:
    def ev(name: str, data: dict[str, Any]) -> str:
        return f"event: {name}\ndata: {json.dumps(data)}\n\n"

    msg = anthropic_message(model, "")
    msg["content"] = []
    msg["stop_reason"] = None
    msg["usage"] = {"input_tokens": 9, "output_tokens": 1}
    out = [
        ev("message_start", {"type": "message_start", "message": msg}),
        ev(
            "content_block_start",
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "text", "text": ""},
            },
        ),
    ]
    for p in pieces:
        out.append(
            ev(
                "content_block_delta",
                {
                    "type": "content_block_delta",
                    "index": 0,
                    "delta": {"type": "text_delta", "text": p},
                },
            )
        )
    out.append(ev("content_block_stop", {"type": "content_block_stop", "index": 0}))
    out.append(
        ev(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                "usage": {"output_tokens": 4},
            },
        )
    )
    out.append(ev("message_stop", {"type": "message_stop"}))
    return out


def _json_reply(data: Any, status: int = 200) -> Reply:
    return Reply(
        status=status,
        headers=[("Content-Type", "application/json"), ("x-request-id-upstream", "up-123")],
        body=json.dumps(data).encode(),
    )


def openai_response(model: str, text: str = "Hello from fake") -> dict[str, Any]:
    """A Responses API `response` object, completed, with one message and usage."""
    return {
        "id": "resp_fake",
        "object": "response",
        "created_at": 1700000000,
        "status": "completed",
        "model": model,
        "output": [
            {
                "id": "msg_fake",
                "type": "message",
                "role": "assistant",
                "status": "completed",
                "content": [{"type": "output_text", "text": text, "annotations": []}],
            }
        ],
        "usage": {
            "input_tokens": 11,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": 4,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": 15,
        },
    }


def openai_response_stream(model: str, pieces: tuple[str, ...] = ("Hel", "lo")) -> list[str]:
    """The Responses API's stream of `openai_response`: created … completed, numbered."""
    done = openai_response(model, "".join(pieces))
    started = {**done, "status": "in_progress", "output": [], "usage": None}
    item = {**done["output"][0], "status": "in_progress", "content": []}
    part = {"type": "output_text", "text": "", "annotations": []}
    events: list[dict[str, Any]] = [
        {"type": "response.created", "response": started},
        {"type": "response.in_progress", "response": started},
        {"type": "response.output_item.added", "output_index": 0, "item": item},
        {"type": "response.content_part.added", "item_id": "msg_fake", "output_index": 0,
         "content_index": 0, "part": part},
        *(
            {"type": "response.output_text.delta", "item_id": "msg_fake", "output_index": 0,
             "content_index": 0, "delta": p}
            for p in pieces
        ),
        {"type": "response.output_text.done", "item_id": "msg_fake", "output_index": 0,
         "content_index": 0, "text": "".join(pieces)},
        {"type": "response.output_item.done", "output_index": 0, "item": done["output"][0]},
        {"type": "response.completed", "response": done},
    ]  # fmt: skip
    return [
        f"event: {e['type']}\ndata: {json.dumps({**e, 'sequence_number': i})}\n\n"
        for i, e in enumerate(events)
    ]


def default_reply(req: Recorded) -> Reply:
    """Answer like a provider: OpenAI shapes on OpenAI paths, Anthropic on /v1/messages."""
    model = "unknown"
    stream = False
    include_usage = False
    if req.body and (req.header("content-type") or "").startswith("application/json"):
        try:
            data = json.loads(req.body)
            model = data.get("model", model)
            stream = data.get("stream") is True
            opts = data.get("stream_options")
            include_usage = isinstance(opts, dict) and opts.get("include_usage") is True
        except ValueError:
            pass
    path = req.path
    sse_headers = [("Content-Type", "text/event-stream"), ("Cache-Control", "no-cache")]
    if path.endswith("/responses"):
        if stream:
            return Reply(headers=sse_headers, chunks=sse(*openai_response_stream(model)))
        return _json_reply(openai_response(model))
    if path.endswith("/responses/input_tokens"):
        return _json_reply({"object": "response.input_tokens", "input_tokens": 42})
    if "/responses/" in path:  # a stored response: GET, DELETE, input_items
        rid = path.split("/responses/", 1)[1].split("/", 1)[0]
        if path.endswith("/input_items"):
            return _json_reply({"object": "list", "data": [], "first_id": None, "has_more": False})
        if req.method == "DELETE":
            return _json_reply({"id": rid, "object": "response", "deleted": True})
        return _json_reply({**openai_response("stored"), "id": rid})
    if path.endswith("/messages/count_tokens"):
        return _json_reply({"input_tokens": 42})
    if path.endswith("/chat/completions"):
        if stream:
            events = openai_chat_stream(model)
            if include_usage:  # like OpenAI: one more chunk, with usage and no choices
                events.insert(-1, openai_usage_chunk(model))
            return Reply(headers=sse_headers, chunks=sse(*events))
        return _json_reply(openai_chat(model))
    if path.endswith("/completions"):
        if stream:
            events = openai_completion_stream(model)
            if include_usage:
                usage = openai_usage_chunk(model)
                events.insert(-1, usage.replace("chat.completion.chunk", "text_completion"))
            return Reply(headers=sse_headers, chunks=sse(*events))
        return _json_reply(openai_completion(model))
    if path.endswith("/embeddings"):
        return _json_reply(openai_embeddings(model))
    if path.endswith("/messages"):
        if stream:
            return Reply(headers=sse_headers, chunks=sse(*anthropic_stream(model)))
        return _json_reply(anthropic_message(model))
    if "/audio/" in path:
        return _json_reply({"text": "hello world"})
    return _json_reply({"error": {"message": "not found", "type": "invalid_request_error"}}, 404)


class FailFirst:
    """A reply handler whose first `fail` requests get a bare 503 (a provider overloaded for a
    moment), then `answer`'s reply (a subclass's; default_reply here)."""

    def __init__(self, fail: int = 0) -> None:
        self.fail = fail

    def __call__(self, req: Recorded) -> Reply:
        if self.fail:
            self.fail -= 1
            return Reply(status=503, headers=[("Content-Type", "application/json")], body=b"{}")
        return self.answer(req)

    def answer(self, req: Recorded) -> Reply:
        return default_reply(req)


class FakeUpstream(LoopbackServer):
    thread_name = "fake-upstream"
    stream_limit = 2**20

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[Recorded] = []
        self.handler: Callable[[Recorded], Reply] = default_reply
        self.conn_opened = 0
        self.conn_closed_at: list[float] = []
        self.write_failed_at: list[float] = []
        self.body_bytes_sent = 0  # body bytes written by chunked replies, over all responses

    # -- test-facing API -------------------------------------------------------------------
    def reply_with(self, reply: Reply | Callable[[Recorded], Reply]) -> None:
        self.handler = reply if callable(reply) else (lambda _r: reply)

    def reset(self) -> None:
        self.requests.clear()
        self.handler = default_reply
        self.conn_closed_at.clear()
        self.write_failed_at.clear()

    @property
    def last(self) -> Recorded:
        return self.requests[-1]

    # -- server ------------------------------------------------------------------------------
    async def _read_request(self, reader: asyncio.StreamReader) -> Recorded | None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            return None
        lines = head.decode("latin-1").split("\r\n")
        method, target, _ = lines[0].split(" ", 2)
        headers = []
        for line in lines[1:]:
            if line:
                k, _, v = line.partition(":")
                headers.append((k.strip(), v.strip()))
        path, _, query = target.partition("?")
        rec = Recorded(method, path, query, headers, b"")
        te = (rec.header("transfer-encoding") or "").lower()
        if "chunked" in te:
            body = bytearray()
            while True:
                size_line = await reader.readuntil(b"\r\n")
                size = int(size_line.split(b";")[0].strip(), 16)
                if size == 0:
                    await reader.readuntil(b"\r\n")
                    break
                body += await reader.readexactly(size)
                await reader.readexactly(2)
            rec.body = bytes(body)
        else:
            n = int(rec.header("content-length") or 0)
            rec.body = await reader.readexactly(n) if n else b""
        return rec

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.conn_opened += 1
        try:
            while True:
                rec = await self._read_request(reader)
                if rec is None:
                    break
                self.requests.append(rec)
                reply = self.handler(rec)
                if reply.after is not None:
                    await asyncio.to_thread(reply.after.wait, 10)
                if reply.delay:
                    await asyncio.sleep(reply.delay)
                keep = await self._respond(reply, writer, reader, rec.method == "HEAD")
                if not keep:
                    break
        except (ConnectionError, asyncio.IncompleteReadError):
            self.write_failed_at.append(time.monotonic())
        finally:
            self.conn_closed_at.append(time.monotonic())
            writer.close()

    async def _respond(
        self,
        reply: Reply,
        writer: asyncio.StreamWriter,
        reader: asyncio.StreamReader,
        head_only: bool = False,
    ) -> bool:
        """Write `reply`; False: the connection ends. `head_only` (a HEAD request): the head a
        GET would get, and no body (a body written anyway stayed on the keep-alive connection
        and was read as the next answer's head: a 502 now and then in CI)."""
        if reply.action == "reset":
            sock = writer.get_extra_info("socket")
            if sock is not None:
                import socket
                import struct

                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            return False
        if reply.action == "garbage":
            writer.write(b"this is not HTTP at all\r\n\r\n")
            await writer.drain()
            return False
        if reply.action == "stall":
            await reader.read()  # until the peer gives up
            return False
        if reply.action == "invalid_json":
            reply = Reply(
                status=200, headers=[("Content-Type", "application/json")], body=b"{not json"
            )
        reason = "OK" if reply.status < 400 else "Error"
        head = [f"HTTP/1.1 {reply.status} {reason}"]
        names = {k.lower() for k, _ in reply.headers}
        head += [f"{k}: {v}" for k, v in reply.headers]
        chunked = reply.chunks is not None or reply.chunk_source is not None
        if chunked:
            head.append("Transfer-Encoding: chunked")
        elif reply.action == "close_mid":
            head.append(f"Content-Length: {len(reply.body) + 100}")
        elif "content-length" not in names:
            head.append(f"Content-Length: {len(reply.body)}")
        head_bytes = ("\r\n".join(head) + "\r\n\r\n").encode("latin-1")
        if reply.one_write and reply.chunks is not None and not head_only:
            pieces = b"".join(b"%x\r\n%s\r\n" % (len(data), data) for _, data in reply.chunks)
            writer.write(head_bytes + pieces + b"0\r\n\r\n")
            self.body_bytes_sent += sum(len(data) for _, data in reply.chunks)
            await writer.drain()
            return True
        writer.write(head_bytes)
        if head_only:
            await writer.drain()
            return True
        if chunked:
            items = reply.chunk_source() if reply.chunk_source is not None else reply.chunks
            assert items is not None
            last = len(reply.chunks) - 1 if reply.chunks is not None else -1
            for i, (delay, data) in enumerate(items):
                if delay:
                    await writer.drain()
                    if reply.watch_close:
                        if await _peer_closed_within(reader, delay):
                            return False
                    else:
                        await asyncio.sleep(delay)
                if reply.action == "close_mid" and i == last:
                    await writer.drain()
                    return False
                writer.write(b"%x\r\n%s\r\n" % (len(data), data))
                await writer.drain()
                self.body_bytes_sent += len(data)
            if reply.end_delay:
                await writer.drain()
                await asyncio.sleep(reply.end_delay)
            writer.write(b"0\r\n\r\n")
        else:
            writer.write(reply.body)
            if reply.action == "close_mid":
                await writer.drain()
                return False
        await writer.drain()
        return True


async def _peer_closed_within(reader: asyncio.StreamReader, seconds: float) -> bool:
    """Wait `seconds`; True as soon as the peer closes the connection (EOF) in that time."""
    try:
        data = await asyncio.wait_for(reader.read(1), seconds)
    except TimeoutError:
        return False
    except ConnectionError:
        return True
    return data == b""
