"""The client's JSON body on a real router in front of the fake upstream (docs/forwarding.md):
JSON nested as deeply as the router reads it (1,024 levels) is forwarded on every path that
writes the body again (a mapped model, a stream asked for usage, a translated route, a routing
file's attempt) and counted by the local token estimate; deeper is a clear 400 before any
upstream call. What JSON does not allow (NaN, a byte order mark, ...) is a 400 whichever parser
reads the body."""

from __future__ import annotations

from typing import Any

import httpx
import orjson
import pytest

from tests.conftest import base_profile
from tests.fakes.upstream import (
    FakeUpstream,
    Recorded,
    Reply,
    openai_chat,
    openai_chat_stream,
    sse,
)
from tests.support import RouterFactory, RouterProcess

CHAT = "/v1/chat/completions"
MESSAGES = "/v1/messages"
COUNT = "/v1/messages/count_tokens"
JSON = {"content-type": "application/json"}
SSE_HEADERS = [("Content-Type", "text/event-stream")]


@pytest.fixture(scope="module")
def router(fake_upstream: FakeUpstream, module_router_factory: RouterFactory) -> RouterProcess:
    """`gpt-4` mapped; Messages (and its count_tokens) translated to Chat Completions."""
    profile = base_profile(
        fake_upstream.url,
        endpoints={"/v1/messages": {"format": "openai"}},
    )
    return module_router_factory(profile)


@pytest.fixture(scope="module")
def routed(fake_upstream: FakeUpstream, module_router_factory: RouterFactory) -> RouterProcess:
    """A routing file: each request's body is written again by its attempt."""
    routing = {
        "upstreams": {
            "up": {"baseUrl": fake_upstream.url, "timeouts": {"connectSecs": 2, "readSecs": 10}}
        },
        "modelRoutes": [{"match": "gpt-4", "targets": [{"upstream": "up", "model": "up-4"}]}],
    }
    return module_router_factory(routing, name="routing")


def raw(body: dict[str, Any]) -> bytes:
    """orjson writes 254 levels: the deepest bodies are written by hand."""
    deep = body.pop("deep")
    head = orjson.dumps(body)[:-1]
    return head + b',"deep":' + deep + b"}"


def deep_bytes(levels: int) -> bytes:
    """A JSON value `levels` deep: lists around an object. (Compared as bytes: Python compares
    such values by recursion, past its stack.)"""
    return b"[" * (levels - 1) + b'{"k":"deep"}' + b"]" * (levels - 1)


def openai_reply(req: Recorded) -> Reply:
    """Like the default fake, without reading the (too deep for it) body."""
    if b'"stream":true' in req.body:
        return Reply(headers=SSE_HEADERS, chunks=sse(*openai_chat_stream("up")))
    return Reply(
        headers=[("Content-Type", "application/json")], body=orjson.dumps(openai_chat("up"))
    )


def assert_deep_chat_forwarded(
    router: RouterProcess, upstream: FakeUpstream, levels: int, model: str
) -> None:
    """A chat request `levels` deep reaches the upstream whole, its model written as `model`."""
    upstream.reply_with(openai_reply)
    body = raw({"model": "gpt-4", "messages": [], "deep": deep_bytes(levels - 1)})
    r = httpx.post(router.url + CHAT, content=body, headers=JSON, timeout=10)
    assert r.status_code == 200, r.text
    assert orjson.loads(upstream.last.body)["model"] == model
    assert b'"deep":' + deep_bytes(levels - 1) in upstream.last.body


@pytest.mark.parametrize("levels", [300, 1000])
def test_a_mapped_model_s_deep_body_is_forwarded(
    router: RouterProcess, upstream: FakeUpstream, levels: int
) -> None:
    assert_deep_chat_forwarded(router, upstream, levels, "up-model-4")


@pytest.mark.parametrize("levels", [300, 1000])
def test_a_deep_stream_asked_for_usage_is_forwarded(
    router: RouterProcess, upstream: FakeUpstream, levels: int
) -> None:
    upstream.reply_with(openai_reply)
    body = raw(
        {"model": "unmapped", "messages": [], "stream": True, "deep": deep_bytes(levels - 1)}
    )
    r = httpx.post(router.url + CHAT, content=body, headers=JSON, timeout=10)
    assert r.status_code == 200, r.text
    assert "data: [DONE]" in r.text
    sent = orjson.loads(upstream.last.body)
    assert sent["stream_options"] == {"include_usage": True}  # the body was written again
    assert b'"deep":' + deep_bytes(levels - 1) in upstream.last.body


@pytest.mark.parametrize("levels", [300, 1000])
def test_a_deep_translated_messages_request_is_forwarded(
    router: RouterProcess, upstream: FakeUpstream, levels: int
) -> None:
    """A tool's input schema is where deep JSON is real: it goes upstream as the function's
    parameters (body, tools, tool, input_schema: four levels above it)."""
    upstream.reply_with(openai_reply)
    schema = b'{"type":"object","x-deep":' + deep_bytes(levels - 4) + b"}"
    body = (
        b'{"model":"claude-x","max_tokens":10,"messages":[{"role":"user","content":"hi"}],'
        b'"tools":[{"name":"t","input_schema":' + schema + b"}]}"
    )
    r = httpx.post(router.url + MESSAGES, content=body, headers=JSON, timeout=10)
    assert r.status_code == 200, r.text
    assert r.json()["type"] == "message"
    sent = orjson.loads(upstream.last.body)
    assert upstream.last.path == CHAT
    assert sent["tools"][0]["function"]["name"] == "t"
    assert b'"parameters":' + schema in upstream.last.body


@pytest.mark.parametrize("levels", [300, 1000])
def test_a_deep_body_is_counted_by_the_local_estimate(
    router: RouterProcess, upstream: FakeUpstream, levels: int
) -> None:
    content = deep_bytes(levels - 4)  # body, messages, message, content
    body = b'{"model":"claude-x","messages":[{"role":"user","content":' + content + b"}]}"
    r = httpx.post(router.url + COUNT, content=body, headers=JSON, timeout=10)
    assert r.status_code == 200, r.text
    assert r.headers["x-router-token-count"] == "estimate"
    assert r.json() == {"input_tokens": 1 + 4}  # "deep": 1 token, and the message's 4
    assert upstream.requests == []


@pytest.mark.parametrize("levels", [300, 1000])
def test_a_deep_body_goes_through_a_routing_file(
    routed: RouterProcess, upstream: FakeUpstream, levels: int
) -> None:
    assert_deep_chat_forwarded(routed, upstream, levels, "up-4")


def test_a_deep_body_with_a_big_integer_is_forwarded_exact(
    router: RouterProcess, upstream: FakeUpstream
) -> None:
    """A 19+ digit number takes the standard library's path: as deep, the number kept."""
    upstream.reply_with(openai_reply)
    body = (
        raw({"model": "gpt-4", "messages": [], "deep": deep_bytes(300)})[:-1]
        + b',"seed":123456789012345678901234567890}'
    )
    r = httpx.post(router.url + CHAT, content=body, headers=JSON, timeout=10)
    assert r.status_code == 200, r.text
    assert b'"seed":123456789012345678901234567890' in upstream.last.body
    assert b'"deep":' + deep_bytes(300) in upstream.last.body


@pytest.mark.parametrize("big", [False, True], ids=["orjson", "exact"])
def test_json_deeper_than_the_router_reads_is_a_clear_400(
    router: RouterProcess, upstream: FakeUpstream, big: bool
) -> None:
    extra = b',"seed":123456789012345678901234567890' if big else b""
    body = b'{"model":"gpt-4","messages":[]' + extra + b',"deep":' + deep_bytes(1100) + b"}"
    for path in (CHAT, MESSAGES):
        r = httpx.post(router.url + path, content=body, headers=JSON, timeout=10)
        assert r.status_code == 400, r.text
        err = r.json()["error"]
        assert "nested too deeply" in err["message"]
        assert err["type"] == "invalid_request_error"
    assert upstream.requests == []


# -- what JSON does not allow, whichever parser reads the body ---------------------------------

NOT_JSON = {
    "NaN": (b"", b'"temperature":NaN'),
    "Infinity": (b"", b'"temperature":Infinity'),
    "-Infinity": (b"", b'"top_p":-Infinity'),
    "beyond a double": (b"", b'"top_p":1e400'),
    "lone surrogate": (b"", b'"user":"\\ud800"'),
    "byte order mark": (b"\xef\xbb\xbf", b'"user":"u"'),
}


@pytest.mark.parametrize("case", NOT_JSON)
@pytest.mark.parametrize("big", [False, True], ids=["orjson", "exact"])
def test_what_json_does_not_allow_is_400_before_any_upstream_call(
    router: RouterProcess, upstream: FakeUpstream, case: str, big: bool
) -> None:
    """A 19+ digit number sends the body through the standard library (to keep it exact),
    which reads NaN, Infinity, a number beyond a double (as inf), a lone surrogate and a body
    that begins with a byte order mark: such a body was forwarded there, refused otherwise."""
    prefix, bad = NOT_JSON[case]
    seed = b'"seed":123456789012345678901234567890,' if big else b""
    body = prefix + b'{"model":"gpt-4","max_tokens":5,"messages":[],' + seed + bad + b"}"
    for path in (CHAT, MESSAGES):
        r = httpx.post(router.url + path, content=body, headers=JSON, timeout=10)
        assert r.status_code == 400, (path, r.text)
        assert "not valid JSON" in r.text
    assert upstream.requests == []
    # the same body without the fault is forwarded
    fine = b'{"model":"gpt-4","max_tokens":5,"messages":[],' + seed + b'"user":"u"}'
    r = httpx.post(router.url + CHAT, content=fine, headers=JSON, timeout=10)
    assert r.status_code == 200, r.text
    assert len(upstream.requests) == 1


def test_a_trailing_slash_on_the_messages_route_keeps_its_error_shape(
    router: RouterProcess, upstream: FakeUpstream
) -> None:
    """Sanic serves `/v1/messages/` by the Messages route: its errors were OpenAI-shaped."""
    for path in (MESSAGES + "/", COUNT + "/"):
        r = httpx.post(router.url + path, content=b"{nope", headers=JSON, timeout=10)
        assert r.status_code == 400
        assert r.json()["type"] == "error"
        assert r.json()["error"]["type"] == "invalid_request_error"
    r = httpx.post(router.url + MESSAGES + "/nope", content=b"{}", headers=JSON, timeout=10)
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    assert upstream.requests == []
