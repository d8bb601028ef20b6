"""The `head` fast path (service.server.response_head) gives Sanic's own result for every header
text, and Sanic still formats a head through the method it replaces."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sanic.compat import Header
from sanic.headers import format_http1_response
from sanic.response import HTTPResponse
from sanic.response.types import HEADER_TRANSLATION_TABLE, BaseHTTPResponse

from service.server import response_head

# Text with the characters Sanic removes, other control characters (tab, DEL, C1), non-ASCII
# and surrogates (a header value decoded with surrogateescape can hold them).
_ODD = st.sampled_from(["\r", "\n", "\x00", "\t", "\x7f", "\x85", "\u2028", "é", "\udcff", " "])
TEXT = st.lists(st.one_of(st.characters(), _ODD), max_size=40).map("".join)


@pytest.fixture
def restore() -> Iterator[None]:
    was = response_head.installed()
    yield
    response_head.install(was)


@given(TEXT)
def test_sanitize_is_sanic_s_for_any_text(value: str) -> None:
    assert response_head.sanitize(value) == value.translate(HEADER_TRANSLATION_TABLE)


def _head(headers: list[tuple[str, str]]) -> bytes:
    resp = HTTPResponse(b"{}", status=200, headers=Header(headers), content_type=None)
    return format_http1_response(200, resp.processed_headers)


HEADERS = [
    ("content-type", "application/json"),
    ("x-request-id", "0b3c4c1e-4f7a-4a8e-9d1e-1234567890ab"),
    ("x-injected", "a\r\nset-cookie: b"),
    ("x-nul", "a\x00b"),
    ("x-tab", "a\tb"),
    ("x-escaped", "caf\udce9"),
]


def test_the_head_formatted_through_sanic_is_the_same_on_and_off(restore: None) -> None:
    response_head.install(False)
    stock = _head(HEADERS)
    assert b"x-injected: aset-cookie: b\r\n" in stock  # what Sanic does: the breaks dropped
    response_head.install(True)
    assert response_head.installed()
    assert _head(HEADERS) == stock


def test_sanic_formats_every_name_and_value_through_the_replaced_method(
    restore: None,
) -> None:
    """What the fast path relies on: were Sanic to stop calling the method, the fast path would
    do nothing, and this fails."""
    seen: list[str] = []

    def spy(value: str) -> str:
        seen.append(value)
        return response_head.sanitize(value)

    saved = BaseHTTPResponse.__dict__["_sanitize_header_value"]
    BaseHTTPResponse._sanitize_header_value = staticmethod(spy)  # type: ignore[method-assign]
    try:
        _head(HEADERS)
    finally:
        BaseHTTPResponse._sanitize_header_value = saved  # type: ignore[method-assign]
    assert len(seen) == 2 * len(HEADERS)
    assert set(seen) >= {n for n, _ in HEADERS} | {v for _, v in HEADERS}


def test_off_restores_sanic_s_own_method(restore: None) -> None:
    response_head.install(True)
    response_head.install(False)
    assert not response_head.installed()
    assert BaseHTTPResponse._sanitize_header_value("a\rb") == "ab"
    assert (
        BaseHTTPResponse.__dict__["_sanitize_header_value"].__func__.__module__
        == "sanic.response.types"
    )
