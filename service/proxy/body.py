"""Request and response bodies as the relay reads and writes them (pure, no I/O).

- JSON in: one JSON object (`parse_json_object`); integers beyond 64 bits are kept exact
  (`exact_json`: orjson would read them as floats, so such a body goes through the standard
  library, parsed and written again the same way by `dump_json`).
- Content codings: what the router asks the upstream for (`accept_encoding`) and the upstream's
  body as text for inspection (`decoded`).
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Iterator
from typing import Any

import orjson

from ..errors import BadRequest

# orjson reads integers beyond 64 bits as floats; JSON allows them, so a body with such a number
# (a run of 19+ digits: -9223372036854775809 has 19) is parsed and written by the exact standard
# library. The run is found at C speed: every ASCII digit mapped to "0", anything else to "x",
# then a substring search (a regex `\d{19,}` is much slower on a large body).
_DIGITS_AS_ZERO = bytes(0x30 if 0x30 <= i <= 0x39 else 0x78 for i in range(256))
_BIG_INT_RUN = b"0" * 19


def exact_json(body: bytes) -> bool:
    """Whether `body` holds a run of 19+ digits (an integer orjson might not keep exact)."""
    return _BIG_INT_RUN in body.translate(_DIGITS_AS_ZERO)


def parse_json_object(body: bytes, exact: bool | None = None) -> dict[str, Any]:
    """The client's JSON body; 400 unless it is one JSON object."""
    if not body:
        raise BadRequest("Request body must be a JSON object")
    try:
        if exact is None:
            exact = exact_json(body)
        data = json.loads(body) if exact else orjson.loads(body)
    # orjson.JSONDecodeError is a ValueError (orjson refuses more than 1,024 levels of nesting;
    # the standard library, for a body with big integers, runs out of stack near 1,000)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise BadRequest("Request body is not valid JSON") from None
    if not isinstance(data, dict):
        raise BadRequest("Request body must be a JSON object")
    return data


def loads_exact(text: str | bytes) -> Any:
    """JSON (an answer, a tool call's arguments) with its integers kept exact; ValueError (or
    UnicodeDecodeError, one too) if it is not JSON."""
    raw = text if isinstance(text, bytes) else text.encode()
    if not exact_json(raw):
        return orjson.loads(raw)
    try:
        return json.loads(text)
    except RecursionError:  # nested past the stack: not JSON the router can read, as orjson says
        raise ValueError("JSON nested too deeply") from None


def dumps_exact(value: Any) -> bytes:
    """`value` as compact JSON, integers beyond 64 bits included (orjson refuses them)."""
    try:
        return orjson.dumps(value)
    except TypeError:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def dump_json(data: dict[str, Any], exact: bool = False) -> bytes:
    if exact:
        return json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode()
    return orjson.dumps(data)


def accept_encoding(client_value: str | None, streaming: bool) -> str:
    """What the router asks the upstream for. It relays bodies byte for byte but must be able to
    read them (errors, usage), so it only passes on codings the standard library decodes, and
    none for streams (events must be found as they arrive)."""
    if streaming or not client_value:
        return "identity"
    offered = set()
    for item in client_value.split(","):
        coding, _, params = item.partition(";")
        weight = 1.0
        for param in params.split(";"):
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    weight = float(value)
                except ValueError:
                    weight = 0.0
        if weight > 0:  # `gzip;q=0` is the client refusing gzip
            offered.add(coding.strip().lower())
    usable = [c for c in ("gzip", "deflate") if c in offered]
    return ", ".join(usable) if usable else "identity"


# The content codings the router reads (zlib's: "x-gzip" is gzip, "deflate" zlib-wrapped).
INFLATED_CODINGS = frozenset({"gzip", "x-gzip", "deflate"})


def content_coding(value: str | None) -> str:
    """A Content-Encoding value, normalised: "" for none or `identity`."""
    coding = (value or "").strip().lower()
    return "" if coding == "identity" else coding


def inflater() -> Any:
    """A decompressor for any of INFLATED_CODINGS (47: gzip or zlib, auto-detected)."""
    return zlib.decompressobj(wbits=47)


def inflated(inflate: Any, chunk: bytes) -> Iterator[bytes]:
    """What `chunk` inflates to, in pieces of at most 1 MiB (a small chunk of a repetitive
    body can be a hundred times larger decoded)."""
    while chunk:
        yield inflate.decompress(chunk, 1 << 20)
        chunk = inflate.unconsumed_tail


def decoded(body: bytes, content_encoding: str | None, limit: int = 0) -> bytes | None:
    """The body as text bytes for inspection, or None when it cannot be decoded. With `limit`,
    at most that much of what it inflates to, as far as the bytes go (a body cut short)."""
    coding = content_coding(content_encoding)
    if not coding:
        return body
    if coding in INFLATED_CODINGS:
        try:
            return inflater().decompress(body, limit) if limit else zlib.decompress(body, wbits=47)
        except zlib.error:
            return None
    return None
