"""Multipart/form-data relay for the audio routes, streamed: the client's boundary and parts go
upstream byte for byte as they arrive; only the `model` part's value is replaced when the profile
maps it.

`ModelPartRewriter` is a small incremental scanner (pure, no I/O). It holds only the bytes it must
look at: a part's headers, the `model` value, and a delimiter-sized tail of other parts. Once the
model part has been passed it stops scanning. `prepare()` reads the client's body only as far as
the rewrite needs (with a mapping: up to the end of the model part, so that the new
Content-Length is known; without one: up to the first delimiter) and relays the rest as a stream.

A generic streaming multipart parser (python-multipart) reports parts' contents, not the raw bytes
around them, so it cannot give a byte-exact relay with one value swapped; this scanner does only
that and is property-tested against any chunking.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Mapping

from ..context import RouterRequest
from ..errors import BadRequest
from ..server.body import remaining_body
from ..state import RequestState

_BOUNDARY = re.compile(r'boundary="?([^";,]{1,200})"?', re.IGNORECASE)
_MODEL_PART = re.compile(
    rb'^content-disposition:\s*form-data;[^\r\n]*\bname="?model"?(?:;|\r|$)',
    re.IGNORECASE | re.MULTILINE,
)

MAX_PREAMBLE = 64 * 1024
MAX_PART_HEAD = 16 * 1024
MAX_MODEL_VALUE = 64 * 1024
HOLD_LIMIT = 1024 * 1024  # most the relay holds to learn the new Content-Length

_PREAMBLE, _AFTER_DELIM, _HEAD, _BODY, _MODEL, _PASS = range(6)


def boundary_of(content_type: str | None) -> bytes:
    if not content_type or not content_type.lower().startswith("multipart/form-data"):
        raise BadRequest("Request body must be multipart/form-data")
    m = _BOUNDARY.search(content_type)
    if not m:
        raise BadRequest("multipart/form-data without a boundary")
    return m.group(1).encode("latin-1")


def _find_within(buf: bytearray, needle: bytes, limit: int, what: str) -> int:
    """Where `needle` starts in `buf`; -1 to wait for more; 400 when what comes before it is (or
    already is, unended) more than `limit` bytes, however the body arrived in pieces."""
    i = buf.find(needle)
    if i > limit or (i < 0 and len(buf) > limit):
        raise BadRequest(f"{what} too large")
    return i


class ModelPartRewriter:
    """Feed the body in any pieces; the output is the body with the model value mapped."""

    __slots__ = ("_buf", "_dash", "_delim", "_state", "delta", "mapping", "model", "upstream_model")

    def __init__(self, boundary: bytes, mapping: Mapping[str, str]) -> None:
        self._dash = b"--" + boundary
        self._delim = b"\r\n--" + boundary
        self._buf = bytearray()
        self._state = _PREAMBLE
        self.mapping = mapping
        self.model: str | None = None
        self.upstream_model: str | None = None
        self.delta = 0  # output length minus input length

    @property
    def started(self) -> bool:
        """The first delimiter was seen: the body is multipart with the declared boundary."""
        return self._state != _PREAMBLE

    @property
    def settled(self) -> bool:
        """Nothing later in the body can change the output's length."""
        return self._state == _PASS

    def feed(self, data: bytes) -> bytes:
        if self._state == _PASS:
            return data
        buf = self._buf
        buf += data
        out = bytearray()
        while True:
            if self._state == _PREAMBLE:
                if buf.startswith(self._dash):
                    end = len(self._dash)
                else:
                    i = buf.find(self._delim)
                    if i > MAX_PREAMBLE or (i < 0 and len(buf) > MAX_PREAMBLE):
                        raise BadRequest("multipart body does not use the declared boundary")
                    if i < 0:
                        break
                    end = i + len(self._delim)
                out += buf[:end]
                del buf[:end]
                self._state = _AFTER_DELIM
            elif self._state == _AFTER_DELIM:
                if len(buf) < 2:
                    break
                self._state = _PASS if buf[:2] == b"--" else _HEAD  # "--": the close delimiter
            elif self._state == _HEAD:
                i = _find_within(buf, b"\r\n\r\n", MAX_PART_HEAD, "multipart part headers")
                if i < 0:
                    break
                end = i + 4
                self._state = _MODEL if _MODEL_PART.search(buf, 0, end) else _BODY
                out += buf[:end]
                del buf[:end]
            elif self._state == _BODY:
                i = buf.find(self._delim)
                if i < 0:
                    keep = len(self._delim) - 1  # the start of a delimiter split across pieces
                    if len(buf) > keep:
                        out += buf[:-keep]
                        del buf[:-keep]
                    break
                end = i + len(self._delim)
                out += buf[:end]
                del buf[:end]
                self._state = _AFTER_DELIM
            elif self._state == _MODEL:
                i = _find_within(buf, self._delim, MAX_MODEL_VALUE, "multipart model part")
                if i < 0:
                    break
                value = bytes(buf[:i])
                self.model = value.decode("utf-8", "replace").strip()
                mapped = self.mapping.get(self.model)
                self.upstream_model = mapped or self.model
                if mapped is not None:
                    new = mapped.encode()
                    self.delta = len(new) - len(value)
                    value = new
                out += value
                del buf[:i]
                self._state = _PASS  # only the first model part counts
            else:  # _PASS
                out += buf
                buf.clear()
                break
        return bytes(out)

    def finish(self) -> bytes:
        """End of the body: what is still held. 400 if the body never used the boundary."""
        if self._state == _PREAMBLE:
            raise BadRequest("multipart body does not use the declared boundary")
        rest = bytes(self._buf)
        self._buf.clear()
        return rest


def rewrite_body(
    body: bytes, boundary: bytes, mapping: Mapping[str, str]
) -> tuple[bytes, ModelPartRewriter]:
    """For a body already in memory: the rewritten body, and the scanner (model names, delta)."""
    rw = ModelPartRewriter(boundary, mapping)
    return rw.feed(body) + rw.finish(), rw


async def prepare(
    request: RouterRequest, mapping: Mapping[str, str], state: RequestState
) -> tuple[bytes | AsyncIterator[bytes], int | None]:
    """The upstream body and its length (None: unknown, sent chunked).

    On a streaming route only the beginning of the body is read here; the rest is read while it
    is sent upstream. Over the size limit, Sanic's body reader raises 413.
    """
    boundary = boundary_of(request.headers.get("content-type"))
    source = remaining_body(request)
    if source is None:
        out, done = rewrite_body(request.body or b"", boundary, mapping)
        state.model, state.upstream_model = done.model, done.upstream_model
        return out, None

    rw = ModelPartRewriter(boundary, mapping)

    held: list[bytes] = []
    held_bytes = 0
    ended = False
    # With a mapping the new length is known only once the model part was seen. A model part
    # that comes after a large file would make us hold the file: past HOLD_LIMIT the body goes
    # upstream chunked instead (its length unknown), rewritten on the fly.
    while not (rw.settled or (rw.started and not mapping)) and held_bytes < HOLD_LIMIT:
        try:
            chunk = await source.__anext__()
        except StopAsyncIteration:
            ended = True
            held.append(rw.finish())
            break
        piece = rw.feed(chunk)
        held.append(piece)
        held_bytes += len(piece)
    state.model, state.upstream_model = rw.model, rw.upstream_model

    length = None
    declared = request.headers.get("content-length")
    length_known = ended or rw.settled or not mapping
    if declared is not None and declared.isdigit() and length_known:
        length = int(declared) + rw.delta

    async def relay() -> AsyncIterator[bytes]:
        for piece in held:
            if piece:
                yield piece
        held.clear()
        if ended:
            return
        async for chunk in source:
            out = rw.feed(chunk)
            if out:
                yield out
        rest = rw.finish()
        if rest:
            yield rest
        # without a mapping the model part may come after the first bytes went upstream
        state.model, state.upstream_model = rw.model, rw.upstream_model

    return relay(), length
