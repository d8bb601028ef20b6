"""Multipart/form-data relay for the audio routes: the client's boundary and parts are kept
byte for byte; only the `model` part's value is replaced when the profile maps it."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from ..errors import BadRequest

_BOUNDARY = re.compile(r'boundary="?([^";,]{1,200})"?', re.IGNORECASE)
_MODEL_PART = re.compile(rb'^content-disposition:\s*form-data;[^\r\n]*\bname="?model"?(?:;|\r|$)',
                         re.IGNORECASE | re.MULTILINE)


def boundary_of(content_type: str | None) -> bytes:
    if not content_type or not content_type.lower().startswith("multipart/form-data"):
        raise BadRequest("Request body must be multipart/form-data")
    m = _BOUNDARY.search(content_type)
    if not m:
        raise BadRequest("multipart/form-data without a boundary")
    return m.group(1).encode("latin-1")


def rewrite_model(body: bytes, boundary: bytes, mapping: Mapping[str, str]) -> tuple[bytes, str | None, str | None]:
    """Returns (body, client model, upstream model). Only the model part's value changes."""
    delim = b"--" + boundary
    if not body.startswith(delim) and (b"\r\n" + delim) not in body:
        raise BadRequest("multipart body does not use the declared boundary")
    pos = 0
    while True:
        start = body.find(delim, pos)
        if start < 0:
            return body, None, None
        head_start = start + len(delim)
        if body[head_start:head_start + 2] == b"--":
            return body, None, None
        head_end = body.find(b"\r\n\r\n", head_start)
        if head_end < 0:
            raise BadRequest("malformed multipart part")
        value_start = head_end + 4
        value_end = body.find(b"\r\n" + delim, value_start)
        if value_end < 0:
            raise BadRequest("unterminated multipart part")
        head = body[head_start:head_end]
        if _MODEL_PART.search(head):
            model = body[value_start:value_end].decode("utf-8", "replace").strip()
            mapped = mapping.get(model)
            if mapped is None:
                return body, model, model
            return body[:value_start] + mapped.encode() + body[value_end:], model, mapped
        pos = value_end + 2


def rewrite_multipart(request: Any, mapping: Mapping[str, str], state: Any) -> bytes:
    boundary = boundary_of(request.headers.get("content-type"))
    body, model, upstream_model = rewrite_model(request.body or b"", boundary, mapping)
    state.model = model
    state.upstream_model = upstream_model
    return body
