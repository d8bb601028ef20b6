"""Large whole answers, relayed as they arrive instead of read whole (SPEC §1).

A whole (non-stream) answer is read whole before the client gets a byte: its JSON validated (a
2xx whose JSON is invalid is 502 `json_error`), its usage read, and translated when the route
is. That costs about three times the answer's size in worker memory while it lasts (the bytes,
then the parsed objects), and an embeddings answer for a large batch is 100 MB and more (2,048
inputs of 3,072 dimensions as JSON floats is about 75 MB): two at once could get a pod with the
chart's 512 Mi limit killed.

So a 2xx answer on an untranslated route whose body passes `WHOLE_ANSWER_MAX_BYTES` (declared
by its Content-Length, or found while it is read) is relayed as it arrives, with back-pressure:
the head (status, the upstream's end-to-end headers, its Content-Length when it declared one),
then the upstream's bytes as they are. What such an answer gives up, and only it:
- its JSON is not validated: a broken body reaches the client as the upstream sent it;
- a failure mid-way cuts the connection (the client sees a short body: with a Content-Length,
  or without the last chunk), logged as the status sent with `error_type` `stream_error`;
- its usage is read from its last `USAGE_TAIL_BYTES`, where OpenAI, Anthropic and the
  compatible servers put it (decoded first when the answer is gzip or deflate).
A translated answer is read whole (it must be, to be translated; chat answers are small).
"""

from __future__ import annotations

import json
import time
import zlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
from sanic.compat import Header

from ..context import RouterRequest
from ..state import RequestState
from . import headers as h
from .body import INFLATED_CODINGS, content_coding, inflated, inflater
from .outgoing import answer_headers, early_head

WHOLE_ANSWER_MAX_BYTES = 16 * 1024 * 1024
USAGE_TAIL_BYTES = 64 * 1024
_DECODER = json.JSONDecoder()


@dataclass
class LargeAnswer:
    """An answer past the limit: the pieces read so far, and the rest still to read."""

    first: list[bytes]
    rest: AsyncIterator[bytes]


async def read_answer(
    http: Any, resp: httpx.Response, passthrough: bool, limit: int = WHOLE_ANSWER_MAX_BYTES
) -> bytes | LargeAnswer:
    """The whole body (`http.read_raw`: the transport's fast read when it has it), or, when
    `passthrough` and the body is larger than `limit`, a `LargeAnswer` to relay. A gzip or
    deflate body is judged by its decoded size (what the whole answer's reading decodes and
    parses): 15 MiB of gzip can be 40 MiB of JSON."""
    if not passthrough:
        data: bytes = await http.read_raw(resp)
        return data
    whole: bytes | None = http.whole_now(resp)  # a JSON answer usually comes with its head
    if whole is not None:
        # The usual answer, taken at once: JSON text (no coding starts with "{" or "[", so no
        # header needs reading) within the limit.
        if len(whole) <= limit and (not whole or whole[:1] in _JSON_STARTS):
            return whole
        size = _Size(_inflated_coding(resp))
        return LargeAnswer([whole], _nothing()) if size.add(whole) > limit else whole
    length = resp.headers.get("content-length")
    coding = _inflated_coding(resp)
    if (
        resp.status_code in (204, 304)  # no body, whatever the head says
        or resp.request.method == "HEAD"
        or (coding is None and length is not None and length.isdigit() and int(length) <= limit)
    ):
        data = await http.read_raw(resp)
        return data
    size = _Size(coding)
    parts: list[bytes] = []
    rest = resp.aiter_raw()
    try:
        async for chunk in rest:
            parts.append(chunk)
            if size.add(chunk) > limit:
                return LargeAnswer(parts, rest)
    except BaseException:
        await resp.aclose()
        raise
    await resp.aclose()
    return b"".join(parts)


_JSON_STARTS = (b"{", b"[")


def _inflated_coding(resp: httpx.Response) -> str | None:
    """The answer's content coding when the router inflates it (gzip, deflate); None for no
    coding; "" for one it cannot read (such an answer is judged by its size as sent)."""
    coding = content_coding(resp.headers.get("content-encoding"))
    if not coding:
        return None
    return coding if coding in INFLATED_CODINGS else ""


async def _nothing() -> AsyncIterator[bytes]:
    return
    yield  # (an async generator that yields nothing)


class _Size:
    """How large a body is once decoded: its bytes, or what they inflate to (counted in
    steps of 1 MiB, the output let go at once)."""

    def __init__(self, coding: str | None) -> None:
        self.size = 0
        self._inflate: Any = inflater() if coding else None

    def add(self, chunk: bytes) -> int:
        inflate = self._inflate
        if inflate is None:
            self.size += len(chunk)
            return self.size
        try:
            for piece in inflated(inflate, chunk):
                self.size += len(piece)
        except zlib.error:  # not what it says: counted as it is (its reading will refuse it)
            self._inflate = None
            self.size += len(chunk)
        return self.size


class UsageTail:
    """The last `USAGE_TAIL_BYTES` of an answer's text (decoded from gzip / deflate on the way),
    and the usage object found in them."""

    def __init__(self, coding: str | None) -> None:
        coding = content_coding(coding)
        self._inflate: Any = inflater() if coding in INFLATED_CODINGS else None
        self._readable = not coding or self._inflate is not None
        self._tail = b""

    def feed(self, chunk: bytes) -> None:
        if not self._readable:
            return
        if self._inflate is None:
            self._tail = (self._tail + chunk)[-USAGE_TAIL_BYTES:]
            return
        try:
            for piece in inflated(self._inflate, chunk):
                self._tail = (self._tail + piece)[-USAGE_TAIL_BYTES:]
        except zlib.error:
            self._readable = False

    def usage(self) -> dict[str, Any] | None:
        """The last `"usage": {...}` object of the tail, or None."""
        if not self._readable:
            return None
        text = self._tail.decode("utf-8", "ignore")
        at = text.rfind('"usage"')
        while at != -1:
            colon = text.find(":", at + 7)
            if colon != -1 and not text[at + 7 : colon].strip():
                start = colon + 1
                while start < len(text) and text[start] in " \t\r\n":
                    start += 1
                try:
                    value, _ = _DECODER.raw_decode(text, start)
                except ValueError:
                    value = None
                if isinstance(value, dict):
                    return value
            at = text.rfind('"usage"', 0, at)
        return None


async def relay_large_answer(
    request: RouterRequest,
    resp: httpx.Response,
    answer: LargeAnswer,
    extra: dict[str, str],
    started: float,
    headed: float,
) -> None:
    """Relay `answer` (the rest read from `resp` as it comes), with the router's `extra`
    headers; `started` / `headed`: when the upstream request went out / its answer's head came
    (perf_counter). The request's usage, upstream time (to the answer's last byte) and error, if
    the upstream fails mid-way, are left on its state."""
    state: RequestState = request.ctx.state
    headers, _, coding = answer_headers(resp, request.ctx.request_id)
    h.add_router_headers(headers, extra.items())
    headers.extend(early_head(request, headed - started))
    length = resp.headers.get("content-length")
    if length is not None and length.isdigit():
        headers.append(("Content-Length", length))
    tail = UsageTail(coding)
    try:
        out = await request.respond(
            status=resp.status_code, headers=Header(headers), content_type=None
        )
        first, answer.first = answer.first, []
        while first:
            chunk = first.pop(0)
            tail.feed(chunk)
            await out.send(chunk)  # (each piece let go once it is written)
        try:
            async for chunk in answer.rest:
                tail.feed(chunk)
                await out.send(chunk)
        except httpx.HTTPError:
            # The client has its status already: only a cut connection tells it the body is
            # short (a last chunk, or the declared length, would make it look whole).
            state.error_type = "stream_error"
            transport = getattr(request, "transport", None)
            if transport is not None:
                transport.abort()
            return
        await out.eof()
    finally:
        await resp.aclose()
        state.upstream_latency = time.perf_counter() - started
        usage = tail.usage()
        if usage is not None:
            state.usage = usage
            state.usage_final = True
