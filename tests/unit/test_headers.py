"""Pure forwarding decisions: header filtering, URL building, credentials, model mapping."""

from __future__ import annotations

import os
import string
import uuid

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from service.errors import BadRequest
from service.proxy import headers as h
from service.proxy.body import (
    accept_encoding,
    decoded,
    dump_json,
    dumps_deep,
    loads_exact,
    parse_json_object,
)

token = st.text(alphabet=string.ascii_letters + "-", min_size=1, max_size=20)


def test_hop_by_hop_and_connection_named_headers_are_dropped() -> None:
    items = [
        ("Host", "router"),
        ("Connection", "keep-alive, X-Secret-Hop"),
        ("X-Secret-Hop", "1"),
        ("Keep-Alive", "timeout=5"),
        ("Proxy-Authorization", "Basic abc"),
        ("TE", "trailers"),
        ("Trailer", "x"),
        ("Transfer-Encoding", "chunked"),
        ("Upgrade", "h2c"),
        ("Content-Length", "12"),
        ("Authorization", "Bearer k"),
        ("x-api-key", "k"),
        ("anthropic-version", "2023-06-01"),
        ("OpenAI-Organization", "org-1"),
        ("Accept", "application/json"),
    ]
    out = h.forwardable_request_headers(items)
    assert out == [
        ("anthropic-version", "2023-06-01"),
        ("OpenAI-Organization", "org-1"),
        ("Accept", "application/json"),
    ]


@given(st.lists(st.tuples(token, st.text(max_size=10)), max_size=15), st.lists(token, max_size=4))
def test_nothing_named_by_connection_or_hop_by_hop_survives(
    items: list[tuple[str, str]], named: list[str]
) -> None:
    items = [*items, ("Connection", ", ".join(named))]
    out = h.forwardable_request_headers(items)
    names = {k.lower() for k, _ in out}
    assert not names & h.NOT_FORWARDED
    assert not names & {n.lower() for n in named}
    assert not any(n.startswith("proxy-") for n in names)
    # everything else survives, in order
    kept = [
        (k, v)
        for k, v in items
        if k.lower() not in h.NOT_FORWARDED
        and k.lower() not in {n.lower() for n in named}
        and not k.lower().startswith("proxy-")
    ]
    assert out == kept


def test_response_headers_keep_end_to_end_and_drop_framing() -> None:
    items = [
        ("Content-Type", "application/json"),
        ("Content-Length", "10"),
        ("Transfer-Encoding", "chunked"),
        ("Connection", "close"),
        ("x-ratelimit-remaining-requests", "5"),
        ("x-request-id", "upstream-id"),
        ("openai-processing-ms", "12"),
    ]
    out = dict(h.returnable_response_headers(items))
    assert out == {
        "Content-Type": "application/json",
        "x-ratelimit-remaining-requests": "5",
        "X-Upstream-Request-ID": "upstream-id",
        "openai-processing-ms": "12",
    }


def test_credential_resolution_order() -> None:
    assert h.client_credential({"authorization": "Bearer abc"}, "def") == "abc"
    assert h.client_credential({"x-api-key": "xyz"}, "def") == "xyz"
    assert h.client_credential({"authorization": "Bearer a", "x-api-key": "b"}, None) == "a"
    assert h.client_credential({"authorization": "Basic zzz"}, "def") == "def"
    assert h.client_credential({}, "def") == "def"
    assert h.client_credential({}, None) is None
    assert h.client_credential({"authorization": "Bearer "}, None) is None


def test_upstream_headers_apply_profile_then_credential_then_request_id() -> None:
    out = h.upstream_headers(
        [("Accept", "a"), ("X-Custom", "client"), ("Authorization", "Bearer client")],
        (("x-custom", "profile"), ("anthropic-version", "2023-06-01")),
        "x-api-key",
        "",
        "client",
        "rid-1",
    )
    d = {k.lower(): v for k, v in out}
    assert d["x-custom"] == "profile"
    assert d["x-api-key"] == "client"
    assert "authorization" not in d
    assert d["x-request-id"] == "rid-1"
    assert [k.lower() for k, _ in out].count("x-custom") == 1


def test_no_credential_sends_no_auth_header() -> None:
    out = h.upstream_headers([], (), "Authorization", "Bearer", None, "r")
    assert {k.lower() for k, _ in out} == {"x-request-id"}


def test_build_url_appends_client_query() -> None:
    assert h.build_url("http://u/v1/x", "") == "http://u/v1/x"
    assert h.build_url("http://u/v1/x", "a=1") == "http://u/v1/x?a=1"
    assert h.build_url("http://u/v1/x?api-version=2", "a=1") == "http://u/v1/x?api-version=2&a=1"


def test_request_id_sanity() -> None:
    assert h.sane_request_id("abc-123_X.y")
    assert not h.sane_request_id("")
    assert not h.sane_request_id(None)
    assert not h.sane_request_id("a" * 129)
    assert h.sane_request_id("a" * 128)
    assert not h.sane_request_id("has space")
    assert not h.sane_request_id("inject\r\nx")


def test_model_mapping_exact_match_only() -> None:
    m = {"gpt-4": "qwen3-coder-max"}
    assert h.map_model(m, "gpt-4") == "qwen3-coder-max"
    assert h.map_model(m, "GPT-4") is None
    assert h.map_model(m, "gpt-4-turbo") is None
    assert h.map_model(m, None) is None
    assert h.map_model(m, 4) is None


def test_key_id_is_short_hash_never_the_key() -> None:
    kid = h.key_id("sk-secret-value")
    assert len(kid) == 12 and "secret" not in kid
    assert h.key_id(None) == "anonymous"
    assert h.key_id("sk-secret-value") == kid


def test_parse_json_object() -> None:
    assert parse_json_object(b'{"a": 1}') == {"a": 1}
    big = parse_json_object(b'{"n": 123456789012345678901234567890}')
    assert big["n"] == 123456789012345678901234567890
    # nested deeper than either parser goes: with a big integer (the standard library's
    # parse) it ran out of stack, a 500
    deep = b'{"a":' * 1200 + b"12345678901234567890123" + b"}" * 1200
    for bad in (b"", b"[1]", b"nope", b'"str"', b"{", b"\xff\xfe", deep, deep.replace(b"3}", b"}")):
        try:
            parse_json_object(bad)
        except BadRequest:
            pass
        else:
            raise AssertionError(bad)


@pytest.mark.parametrize(
    "bad",
    [b"NaN", b"Infinity", b"-Infinity", b"1e400", b'"\\ud800"', b'"\\udfff"'],
)
def test_the_exact_parse_refuses_what_orjson_refuses(bad: bytes) -> None:
    """The standard library (a body with a 19+ digit number) reads these; orjson does not."""
    for body in (b'{"v":' + bad + b"}", b'{"n":12345678901234567890,"v":' + bad + b"}"):
        with pytest.raises(BadRequest):
            parse_json_object(body)
        with pytest.raises(ValueError):
            loads_exact(body)
    with pytest.raises(BadRequest):
        parse_json_object(b'\xef\xbb\xbf{"n":12345678901234567890}')
    # an escaped backslash before "ud800" is text, and a pair is one character
    text = b'{"n":12345678901234567890,"v":"\\\\ud800","w":"\\ud83d\\ude00"}'
    assert parse_json_object(text)["v"] == "\\ud800"
    assert parse_json_object(text)["w"] == "\U0001f600"


def test_loads_exact_refuses_nesting_past_the_stack_as_not_json() -> None:
    deep = '{"a":' * 1200 + "12345678901234567890123" + "}" * 1200
    with pytest.raises(ValueError):
        loads_exact(deep)
    assert loads_exact('{"a": {"b": 12345678901234567890123}}') == {
        "a": {"b": 12345678901234567890123}
    }


JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


@given(JSON_VALUES)
def test_dumps_deep_writes_what_orjson_writes(value: object) -> None:
    assert dumps_deep(value) == orjson.dumps(value)


def test_a_body_nested_beyond_orjson_s_writer_is_written_again() -> None:
    """orjson reads 1,024 levels and writes 254: the rest was a 500 on every path that writes
    the body again (a mapped model, a translation, a stream asked for usage)."""
    for depth in (300, 1023):
        raw = b'{"model":"m","n":' + b"[" * depth + b"1" + b"]" * depth + b"}"
        assert dump_json(parse_json_object(raw)) == raw
        big = raw.replace(b'"m"', b"123456789012345678901234567890")
        if depth < 900:  # the standard library (big integers) reads as deep as the stack lets it
            assert dump_json(parse_json_object(big), exact=True) == big
    assert dumps_deep({"a": [2**70, -(2**65), "é", 1.5, None, True]}) == (
        '{"a":[1180591620717411303424,-36893488147419103232,"é",1.5,null,true]}'.encode()
    )


def test_accept_encoding_only_what_the_router_can_read() -> None:
    assert accept_encoding(None, False) == "identity"
    # weights: q=0 is a refusal
    assert accept_encoding("gzip;q=0, identity", False) == "identity"
    assert accept_encoding("gzip; q=0.0, deflate;q=0.5", False) == "deflate"
    assert accept_encoding("GZIP;Q=1, deflate;q=x", False) == "gzip"
    assert accept_encoding("gzip, deflate, br, zstd", False) == "gzip, deflate"
    assert accept_encoding("br", False) == "identity"
    assert accept_encoding("gzip", True) == "identity"


def test_decoded_handles_gzip_and_deflate() -> None:
    import gzip
    import zlib

    assert decoded(gzip.compress(b"{}"), "gzip") == b"{}"
    assert decoded(zlib.compress(b"{}"), "deflate") == b"{}"
    assert decoded(b"{}", None) == b"{}"
    assert decoded(b"junk", "gzip") is None
    assert decoded(b"x", "br") is None


def test_forwarding_headers_are_replaced_kept_or_dropped() -> None:
    client = [
        ("X-Forwarded-For", "203.0.113.9"),
        ("forwarded", "for=203.0.113.9"),
        ("X-Real-IP", "203.0.113.9"),
        ("X-Forwarded-Host", "evil"),
        ("Accept", "application/json"),
    ]
    own = h.router_forwarding("127.0.0.1", "http", "router:8000")
    assert own == [
        ("X-Forwarded-For", "127.0.0.1"),
        ("X-Forwarded-Proto", "http"),
        ("X-Forwarded-Host", "router:8000"),
    ]
    replaced = h.upstream_headers(client, (), "Authorization", "Bearer", None, "r", own)
    assert replaced == [("Accept", "application/json"), *own, ("X-Request-ID", "r")]
    kept = h.upstream_headers(client, (), "Authorization", "Bearer", None, "r", None)
    assert kept == [*client, ("X-Request-ID", "r")]
    dropped = h.upstream_headers(client, (), "Authorization", "Bearer", None, "r", [])
    assert dropped == [("Accept", "application/json"), ("X-Request-ID", "r")]
    # Profile headers still win over the router's own.
    profiled = h.upstream_headers(
        client, (("X-Forwarded-Proto", "https"),), "Authorization", "Bearer", None, "r", own
    )
    assert ("X-Forwarded-Proto", "https") in profiled and (
        "X-Forwarded-Proto",
        "http",
    ) not in profiled
    # No empty value is invented (a unix-socket peer has no address).
    assert h.router_forwarding("", "http", "") == [("X-Forwarded-Proto", "http")]


@given(st.lists(st.tuples(token, st.text(string.printable, max_size=10)), max_size=8))
def test_replace_mode_never_passes_a_client_forwarding_header(
    items: list[tuple[str, str]],
) -> None:
    items = [*items, ("X-Forwarded-For", "1.2.3.4"), ("Forwarded", "for=x")]
    out = h.forwardable_request_headers(items, keep_forwarding=False)
    assert not {k.lower() for k, _ in out} & h.FORWARDING


def test_without_params_drops_only_the_named_parameters() -> None:
    assert h.without_params("beta=true", h.ANTHROPIC_QUERY) == ("", True)
    assert h.without_params("a=1&beta=true&b=2", h.ANTHROPIC_QUERY) == ("a=1&b=2", True)
    assert h.without_params("beta", h.ANTHROPIC_QUERY) == ("", True)
    assert h.without_params("betas=1&x=beta", h.ANTHROPIC_QUERY) == ("betas=1&x=beta", False)
    assert h.without_params("", h.ANTHROPIC_QUERY) == ("", False)


def test_a_new_request_id_is_a_random_uuid4_in_hex() -> None:
    ids = [h.new_request_id() for _ in range(2000)]
    assert len(set(ids)) == len(ids)
    for rid in ids:
        u = uuid.UUID(hex=rid)
        assert (u.hex, u.version, u.variant) == (rid, 4, uuid.RFC_4122)
        assert h.sane_request_id(rid)
    # every other bit varies: only the version and variant bits are fixed
    seen = 0
    for rid in ids:
        seen |= int(rid, 16)
    assert seen == uuid.UUID(int=(1 << 128) - 1, version=4).int


def test_request_ids_read_in_blocks_are_never_repeated_across_a_fork() -> None:
    """The random bytes are read for many ids at once: a forked child must not hand out the
    ids its parent has still to give."""
    h._random.clear()  # (earlier tests may have left it at a block's last id)
    h.new_request_id()  # a block is now read and partly unused
    assert h._random
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next ids, to the parent
        try:
            os.write(w, ",".join(h.new_request_id() for _ in range(8)).encode())
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r) as f:
        child = f.read().split(",")
    os.waitpid(pid, 0)
    parent = [h.new_request_id() for _ in range(h._IDS_PER_READ)]
    assert len(child) == 8
    assert not set(child) & set(parent)


# -- upstream_headers against the composition it replaced ----------------------------------------


def _merged(base: list[tuple[str, str]], overrides: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Each override replaces every header of the same name (case-insensitive) in `base`."""
    names = {k.lower() for k, _ in overrides}
    return [(k, v) for k, v in base if k.lower() not in names] + overrides if overrides else base


def _reference_upstream_headers(
    client: list[tuple[str, str]],
    profile: list[tuple[str, str]],
    auth_header: str,
    auth_scheme: str,
    credential: str | None,
    request_id: str,
    forwarding: list[tuple[str, str]] | None,
    final: list[tuple[str, str]],
) -> list[tuple[str, str]]:
    """The client's filtered headers, then each group merged over the result in turn (what the
    router did in several passes before the one-pass `upstream_headers`)."""
    drop = set(h.NOT_FORWARDED) | (set() if forwarding is None else set(h.FORWARDING))
    drop |= h.connection_tokens(v for k, v in client if k.lower() == "connection")
    kept = [
        (k, v) for k, v in client if k.lower() not in drop and not k.lower().startswith("proxy-")
    ]
    out = _merged(kept + (forwarding or []), profile)
    extra = [h.credential_header(auth_header, auth_scheme, credential)] if credential else []
    out = _merged(out, [*extra, ("X-Request-ID", request_id)])
    for header in final:
        out = _merged(out, [header])
    return out


names = st.sampled_from(
    [
        "Accept",
        "accept-encoding",
        "Authorization",
        "x-api-key",
        "Connection",
        "Keep-Alive",
        "X-Custom",
        "x-custom",
        "X-Forwarded-For",
        "x-forwarded-host",
        "Forwarded",
        "Proxy-Thing",
        "Content-Length",
        "Host",
        "X-Request-ID",
        "anthropic-version",
    ]
)
header_lists = st.lists(
    st.tuples(names | token, st.sampled_from(["a", "x-custom", "b, Accept", ""]))
)


@given(
    client=header_lists,
    profile=st.lists(st.tuples(names, st.just("p")), max_size=3),
    auth=st.sampled_from([("Authorization", "Bearer"), ("x-api-key", "")]),
    credential=st.sampled_from([None, "", "sk-1"]),
    forwarding=st.sampled_from(
        [None, [], [("X-Forwarded-For", "1.2.3.4"), ("X-Forwarded-Proto", "http")]]
    ),
    length=st.sampled_from([None, "12"]),
)
def test_upstream_headers_equal_the_merges_they_replaced(
    client: list[tuple[str, str]],
    profile: list[tuple[str, str]],
    auth: tuple[str, str],
    credential: str | None,
    forwarding: list[tuple[str, str]] | None,
    length: str | None,
) -> None:
    final = [("Accept-Encoding", "identity")]
    if length is not None:
        final.append(("Content-Length", length))
    got = h.upstream_headers(client, tuple(profile), *auth, credential, "rid", forwarding, final)
    want = _reference_upstream_headers(client, profile, *auth, credential, "rid", forwarding, final)
    assert got == want


def test_a_credentials_key_id_is_remembered_but_the_same() -> None:
    import hashlib

    h._key_id.cache_clear()
    for cred in ["sk-a", "sk-b", "sk-a"]:
        assert h.key_id(cred) == hashlib.sha256(cred.encode()).hexdigest()[:12]
    assert h._key_id.cache_info().hits == 1  # the second "sk-a" was not hashed again
    assert h.key_id(None) == h.key_id("") == "anonymous"
