"""Request and response bodies as the relay reads and writes them (pure, no I/O).

- JSON in: one JSON object (`parse_json_object`); integers beyond 64 bits are kept exact
  (`exact_json`: orjson would read them as floats, so such a body goes through the standard
  library, parsed and written again the same way by `dump_json`).
- JSON out: whatever was read can be written again, however deeply nested (orjson writes 254
  levels and reads 1,024; `dump_json` and `dumps_exact` write deeper values without recursion).
- Content codings: what the router asks the upstream for (`accept_encoding`) and the upstream's
  body as text for inspection (`decoded`).
"""

from __future__ import annotations

import json
import math
import re
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


NOT_JSON = "Request body is not valid JSON"
TOO_DEEP = (
    "Request body is nested too deeply: the router reads JSON up to 1,024 levels deep (a little "
    "less with integers of 19 digits or more)"
)


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
        data = _loads_std(body) if exact else orjson.loads(body)
    # orjson refuses more than 1,024 levels of nesting; the standard library, for a body with
    # big integers, runs out of stack near 1,000 (RecursionError)
    except RecursionError:
        raise BadRequest(TOO_DEEP) from None
    except orjson.JSONDecodeError as e:
        raise BadRequest(TOO_DEEP if "depth limit" in str(e) else NOT_JSON) from None
    # the standard library's JSONDecodeError is a ValueError too
    except (ValueError, UnicodeDecodeError):
        raise BadRequest(NOT_JSON) from None
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
        return _loads_std(raw)
    except RecursionError:  # nested past the stack: not JSON the router can read, as orjson says
        raise ValueError("JSON nested too deeply") from None


# A `\uD800`-`\uDFFF` escape: the standard library reads a lone one (orjson refuses it, and no
# UTF-8 writer can write it back).
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):  # 1e400: orjson refuses it, the standard library reads inf
        raise ValueError("number out of range")
    return value


def _loads_std(raw: bytes) -> Any:
    """The standard library's parse, refusing what orjson refuses and it would accept: NaN,
    Infinity and -Infinity, a number beyond a double's range, a byte order mark (decoded as
    UTF-8 here, not sniffed: the BOM stays a character json refuses), a lone surrogate."""
    data = json.loads(raw.decode(), parse_constant=_refuse_constant, parse_float=_finite_float)
    if _SURROGATE_ESCAPE.search(raw):  # rare: only then are the strings looked at
        stack = [data]
        while stack:
            value = stack.pop()
            if isinstance(value, str):
                value.encode()  # UnicodeEncodeError (a ValueError) on a lone surrogate
            elif isinstance(value, dict):
                stack.extend(value)
                stack.extend(value.values())
            elif isinstance(value, list):
                stack.extend(value)
    return data


def dumps_exact(value: Any) -> bytes:
    """`value` as compact JSON, integers beyond 64 bits included (orjson refuses them), at any
    depth."""
    try:
        return orjson.dumps(value)
    except TypeError:  # a big integer, or nesting beyond orjson's 254 levels
        return _dumps_std(value)


def dump_json(data: dict[str, Any], exact: bool = False) -> bytes:
    """A request body written again (its model mapped, usage asked for, translated): exact
    (the standard library) when it holds big integers, at any depth it could be read with."""
    if exact:
        return _dumps_std(data)
    try:
        return orjson.dumps(data)
    except TypeError:  # nested beyond orjson's 254 levels (it reads 1,024)
        return dumps_deep(data)


def _dumps_std(value: Any) -> bytes:
    try:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()
    except RecursionError:
        return dumps_deep(value)


class _Raw(bytes):
    """Punctuation already written, on `dumps_deep`'s stack."""


_OPEN_OBJECT, _CLOSE_OBJECT = _Raw(b"{"), _Raw(b"}")
_OPEN_ARRAY, _CLOSE_ARRAY = _Raw(b"["), _Raw(b"]")
_COMMA = _Raw(b",")


def dumps_deep(value: Any) -> bytes:
    """`value` as compact JSON without recursion (nesting as deep as memory allows): what
    orjson (254 levels) and the standard library (Python's stack) cannot write. Its scalars are
    orjson's, integers beyond 64 bits written whole. Slower than either: only their fallback."""
    out: list[bytes] = []
    stack: list[Any] = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, _Raw):
            out.append(item)
        elif isinstance(item, dict):
            if not item:
                out.append(b"{}")
                continue
            out.append(_OPEN_OBJECT)
            stack.append(_CLOSE_OBJECT)
            parts: list[Any] = []
            for k, v in item.items():
                if not isinstance(k, str):
                    raise TypeError("Dict key must be str")
                parts.append(_Raw((b"," if parts else b"") + orjson.dumps(k) + b":"))
                parts.append(v)
            stack.extend(reversed(parts))
        elif isinstance(item, list | tuple):
            if not item:
                out.append(b"[]")
                continue
            out.append(_OPEN_ARRAY)
            stack.append(_CLOSE_ARRAY)
            for i in range(len(item) - 1, -1, -1):
                stack.append(item[i])
                if i:
                    stack.append(_COMMA)
        elif isinstance(item, int) and not isinstance(item, bool):
            out.append(str(item).encode())  # any size, as the standard library writes it
        else:
            out.append(orjson.dumps(item))
    return b"".join(out)


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
