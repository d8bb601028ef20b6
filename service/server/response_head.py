"""`install(on)`: Sanic's response-head sanitiser, skipped for header text that is already clean.

Buys: Sanic sanitises the name and the value of every response header with
`str.translate(HEADER_TRANSLATION_TABLE)` (drops `\\r`, `\\n` and NUL) while it formats the head.
`translate` with a mapping builds a new string and looks characters up in the mapping on every
call; for a proxied answer's dozen headers that is most of the head's formatting cost. Measured in
bench/README.md, "Fast paths" (`head`). Fast path `head` (`API_ROUTER_FAST_PATHS`); off, Sanic's
own method does every call.

The replacement returns the text unchanged when `str.isprintable()` says it holds no control
character (then none of the three can be in it) and otherwise calls Sanic's own method, so its
result is Sanic's for every string: tests/unit/test_response_head.py holds it equal over random
text, control characters and non-ASCII included, and to the whole formatted head.

Relies on: `BaseHTTPResponse._sanitize_header_value` being the static method that
`processed_headers` calls for each name and value (sanic/response/types.py). An upgrade of Sanic
that renames it or stops calling it makes the fast path do nothing (the unit test then fails: it
formats a head through Sanic and counts the calls); one that changes what it removes is still
served by Sanic's own method for any text that has a control character.

Process-wide, as the attribute is on Sanic's class: `install` is called by `create_app` with
the setting of the app being built (a worker serves one app); `install(False)` restores Sanic's
method.
"""

from __future__ import annotations

from sanic.response.types import BaseHTTPResponse

_SANIC = BaseHTTPResponse.__dict__["_sanitize_header_value"]  # the staticmethod object
_sanitize = _SANIC.__func__


def sanitize(value: str) -> str:
    """Sanic's `_sanitize_header_value(value)`, without its per-character walk when the text
    has no control character (the usual case: every header the router writes)."""
    return value if value.isprintable() else _sanitize(value)


_FAST = staticmethod(sanitize)


def install(on: bool) -> None:
    BaseHTTPResponse._sanitize_header_value = _FAST if on else _SANIC  # type: ignore[method-assign]


def installed() -> bool:
    return BaseHTTPResponse.__dict__["_sanitize_header_value"] is _FAST
