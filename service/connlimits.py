"""Client connection limits that stock Sanic does not enforce (docs/security.md).

Sanic times only *silence*: a client that sends one header byte a second, or drips its body,
keeps a connection (and a worker slot) forever. `GuardedHttpProtocol` (Sanic's `HttpProtocol`
plus a few checks, installed by the CLI with `app.prepare(protocol=...)`; it reaches into Sanic's
internals, so it lives in service.server.protocol) adds:

- a total deadline for the request head, from its first byte to its blank line
  (`API_ROUTER_HEADER_TIMEOUT_SECS`), and for the body, from the end of the head to its last byte
  (`API_ROUTER_BODY_TIMEOUT_SECS`): past either the client gets 408 and the connection closes;
- a cap on open client connections per worker (`API_ROUTER_MAX_CONNECTIONS`): one more is answered
  503 and closed at once, before anything of it is read;

`strict_head` (a `http.lifecycle.read_head` listener) refuses heads that parsers disagree on,
the raw material of request smuggling: whitespace before a colon, folded lines, bare CR or LF,
control characters, a Content-Length that is not plain digits, a missing or repeated Host, a
request target that is not a path, an absolute URL or `*`. Chunked bodies are held to RFC 9112's
chunk lines by the protocol's `StrictHttp` (service.server.protocol).
Sanic itself already refuses Content-Length together with Transfer-Encoding, a repeated one, and
a Transfer-Encoding other than `chunked` (400), and a head over `REQUEST_MAX_HEADER_SIZE` (the
error handler turns that into 431). Idle keep-alive time is Sanic's `KEEP_ALIVE_TIMEOUT`.
"""

from __future__ import annotations

import re

from sanic import Request, Sanic

from .server.dispatch import plain_listener
from .server.protocol import start_body_clock

_TOKEN = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
# The request target: origin-form (/path?query), absolute-form (scheme://...) or asterisk-form.
# Authority-form (CONNECT host:port) is for forward proxies; a target like `v1/chat` or `?x` is
# none of them (Sanic dropped such connections without an answer, with a traceback).
_TARGET = rb"(?:/[\x21-\x7e]*|[A-Za-z][A-Za-z0-9+.\-]*://[\x21-\x7e]+|\*)"
# RFC 9112: request-line, then field-name ":" OWS field-value, lines ended by CRLF only. Values
# are visible characters, spaces, tabs and obs-text; no CR, LF, NUL or other controls.
_HEAD = re.compile(
    rb"%s %s HTTP/1\.[01](?:\r\n%s:[\t\x20-\x7e\x80-\xff]*)*" % (_TOKEN, _TARGET, _TOKEN)
)
_CONTENT_LENGTH = re.compile(rb"\r\ncontent-length:[ \t]*([^\r]*?)[ \t]*(?=\r\n|$)", re.I)
_HOST = re.compile(rb"\r\nhost:", re.I)


def check_head(head: bytes) -> str | None:
    """Why this request head must be refused, or None when it is unambiguous."""
    if _HEAD.fullmatch(head) is None:
        return "malformed request head"
    for value in _CONTENT_LENGTH.findall(head):
        if not value.isdigit():
            return "invalid Content-Length"
    hosts = len(_HOST.findall(head))
    if hosts > 1 or (hosts == 0 and head.split(b"\r\n", 1)[0].endswith(b"HTTP/1.1")):
        return "missing or repeated Host"
    return None


class MalformedHead(ValueError):
    """Raised while Sanic parses the head: it answers 400 and closes the connection."""


def install(app: Sanic) -> None:
    """The head check and the body clock (the protocol needs to know when the head ended)."""

    @plain_listener(app, "http.lifecycle.read_head")
    def _strict_head(head: bytes) -> None:
        reason = check_head(head)
        if reason is not None:
            raise MalformedHead(reason)

    @plain_listener(app, "http.lifecycle.request")
    def _head_done(request: Request) -> None:
        start_body_clock(request)
