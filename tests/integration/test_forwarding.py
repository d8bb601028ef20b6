"""Forwarding (SPEC §4, §5) through the real router: headers, ids, bodies, errors, routes."""

from __future__ import annotations

import json
import socket
import threading

import httpx
import pytest

from tests.conftest import base_profile
from tests.fakes.upstream import FakeUpstream, Reply
from tests.support import RouterFactory, RouterProcess, free_port

SECRET = "sk-default-SENTINEL-4242"


@pytest.fixture(scope="module")
def keyed_router(
    fake_upstream: FakeUpstream, module_router_factory: RouterFactory
) -> RouterProcess:
    """A router with DEFAULT_API_KEY and a profile with headers and a custom auth header."""
    profile = base_profile(
        fake_upstream.url,
        headers={"X-Profile": "p", "X-Override": "profile"},
        auth={"header": "x-api-key", "scheme": ""},
        endpoints={
            "/v1/embeddings": {
                "upstreamPath": "/custom/embeddings?api-version=7",
                "headers": {"X-Override": "endpoint"},
            }
        },
        timeouts={"connectSecs": 1, "readSecs": 1},
    )
    return module_router_factory(
        profile, env={"DEFAULT_API_KEY": SECRET, "API_ROUTER_MAX_BODY_BYTES": "4096"}
    )


def chat(url: str, **kw: object) -> httpx.Response:
    body = kw.pop("json", {"model": "gpt-4", "messages": [{"role": "user", "content": "hi"}]})
    return httpx.post(url + "/v1/chat/completions", json=body, timeout=10, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize("fast_paths", ["1", "0"], ids=["fast-paths", "libraries-own"])
def test_header_values_beyond_ascii_reach_the_upstream_as_the_client_sent_them(
    fake_upstream: FakeUpstream, router_factory: RouterFactory, fast_paths: str
) -> None:
    """HTTP allows bytes beyond ASCII in a value (obs-text): `X-Title: Café` in UTF-8 or
    Latin-1, a key that is not UTF-8. Each reaches the upstream byte for byte; they were a 500
    (httpx encodes a str value as ASCII)."""
    router = router_factory(
        base_profile(fake_upstream.url), env={"API_ROUTER_FAST_PATHS": fast_paths}
    )
    values = {
        "x-title": "Café Ünïcode".encode(),
        "x-latin": "Café".encode("latin-1"),
        "authorization": b"Bearer sk-\xff\xfe\x80abc",
    }
    for name, value in values.items():
        fake_upstream.reset()
        body = json.dumps({"model": "gpt-4", "messages": []}).encode()
        with socket.create_connection(("127.0.0.1", router.port), timeout=10) as s:
            s.sendall(
                b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                + name.encode() + b": " + value + b"\r\nContent-Type: application/json\r\n"
                + b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
            )  # fmt: skip
            answer = b""
            while chunk := s.recv(65536):
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 200 "), answer[:200]
        sent = fake_upstream.last.header(name)  # the fake reads a head as Latin-1: bytes as is
        assert sent is not None and sent.encode("latin-1") == value


def test_hop_by_hop_stripped_end_to_end_forwarded(
    router: RouterProcess, upstream: FakeUpstream
) -> None:
    r = chat(
        router.url,
        headers={
            "Authorization": "Bearer sk-client",
            "Connection": "keep-alive, X-Hop",
            "X-Hop": "must-not-pass",
            "Keep-Alive": "timeout=5",
            "Proxy-Authorization": "Basic x",
            "anthropic-beta": "tools-2024",
            "OpenAI-Organization": "org-9",
            "X-Request-ID": "client-rid.1",
        },
    )
    assert r.status_code == 200
    sent = upstream.last
    names = sent.header_names()
    assert {"x-hop", "keep-alive", "proxy-authorization", "upgrade", "te"}.isdisjoint(names)
    assert sent.header("anthropic-beta") == "tools-2024"
    assert sent.header("openai-organization") == "org-9"
    assert sent.header("authorization") == "Bearer sk-client"
    assert sent.header("x-request-id") == "client-rid.1"
    assert sent.header("host") == f"127.0.0.1:{upstream.port}"
    assert r.headers["x-request-id"] == "client-rid.1"
    # upstream end-to-end headers come back
    assert r.headers["x-request-id-upstream"] == "up-123"
    assert r.headers["content-type"] == "application/json"


def test_body_forwarded_byte_for_byte_when_model_not_mapped(
    router: RouterProcess, upstream: FakeUpstream
) -> None:
    raw = (
        b'{"model":"unmapped","messages":[],"z_order":  [3,2,1],'
        b' "n":123456789012345678901234567890}'
    )
    r = httpx.post(
        router.url + "/v1/chat/completions",
        content=raw,
        headers={"content-type": "application/json"},
    )
    assert r.status_code == 200
    assert upstream.last.body == raw


def test_mapped_model_rewrites_only_model(router: RouterProcess, upstream: FakeUpstream) -> None:
    body = {
        "model": "gpt-4",
        "messages": [{"role": "user", "content": "é"}],
        "seed": 2**70,
        "tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}],
        "unknown_future_field": True,
    }
    r = chat(router.url, json=body)
    assert r.status_code == 200
    got = json.loads(upstream.last.body)
    assert got == {**body, "model": "up-model-4"}


def test_upstream_status_body_and_headers_pass_through(
    router: RouterProcess, upstream: FakeUpstream
) -> None:
    upstream.reply_with(
        Reply(
            status=503,
            headers=[
                ("Content-Type", "text/plain"),
                ("Retry-After", "7"),
                ("x-upstream-thing", "v"),
            ],
            body=b"busy upstream",
        )
    )
    r = chat(router.url)
    assert r.status_code == 503
    assert r.content == b"busy upstream"
    assert r.headers["retry-after"] == "7"
    assert r.headers["x-upstream-thing"] == "v"
    assert r.headers["content-type"] == "text/plain"
    upstream.reply_with(
        Reply(status=201, headers=[("Content-Type", "application/json")], body=b'{"ok":1}')
    )
    r = chat(router.url)
    assert (r.status_code, r.content) == (201, b'{"ok":1}')


def test_head_is_answered_without_a_body(router: RouterProcess) -> None:
    # (404, 405 and the error shapes: tests/integration/test_http_shapes.py, in-process; HEAD
    # is the served process's own: Sanic's HTTP/1.1 protocol drops the body)
    for path in ("/health", "/ready", "/metrics", "/v1/models"):
        h = httpx.head(router.url + path)
        assert h.status_code == 200, path
        assert h.content == b""


def test_default_key_used_when_client_sends_none_and_auth_header_shape(
    keyed_router: RouterProcess, upstream: FakeUpstream
) -> None:
    r = httpx.post(keyed_router.url + "/v1/embeddings?user=1", json={"model": "m", "input": "x"})
    assert r.status_code == 200
    sent = upstream.last
    assert sent.path == "/custom/embeddings"
    assert sent.query == "api-version=7&user=1"
    assert sent.header("x-api-key") == SECRET
    assert sent.header("authorization") is None
    assert sent.header("x-profile") == "p"
    assert sent.header("x-override") == "endpoint"
    # client key wins over the default
    chat(keyed_router.url, headers={"x-api-key": "sk-own"})
    assert upstream.last.header("x-api-key") == "sk-own"
    # an Anthropic OAuth token (a Claude subscription's, as Claude Code sends it) stays a bearer
    # token: Anthropic refuses one in x-api-key
    chat(keyed_router.url, headers={"Authorization": "Bearer sk-ant-oat01-subscription"})
    assert upstream.last.header("authorization") == "Bearer sk-ant-oat01-subscription"
    assert upstream.last.header("x-api-key") is None


def test_no_credential_at_all_sends_none(router: RouterProcess, upstream: FakeUpstream) -> None:
    chat(router.url)
    assert upstream.last.header("authorization") is None
    assert upstream.last.header("x-api-key") is None


def test_body_over_limit_is_413(keyed_router: RouterProcess, upstream: FakeUpstream) -> None:
    big = {"model": "m", "input": "x" * 8000}
    r = httpx.post(keyed_router.url + "/v1/embeddings", json=big)
    assert r.status_code == 413
    assert r.json()["error"]["code"] == "request_too_large"
    r = httpx.post(keyed_router.url + "/v1/messages", json=big)
    assert r.status_code == 413
    assert r.json()["error"]["type"] == "request_too_large"
    assert upstream.requests == []


# -- the failure table (SPEC §5) ------------------------------------------------------------


def _assert_error(r: httpx.Response, status: int, code: str) -> None:
    assert r.status_code == status, r.text
    body = r.json()
    assert body["error"]["code"] == code
    text = r.text.lower()
    for leak in ("traceback", "httpx", "httpcore", "127.0.0.1", "errno", SECRET.lower()):
        assert leak not in text, leak
    assert r.headers.get("x-request-id")


@pytest.mark.parametrize(
    ("reply", "status", "code", "error_type"),
    [
        (Reply(action="reset"), 502, "upstream_io_error", "io_error"),
        (Reply(action="garbage"), 502, "upstream_protocol_error", "protocol_error"),
        (Reply(action="invalid_json"), 502, "upstream_json_error", "json_error"),
        (Reply(delay=2.5), 504, "upstream_timeout", "timeout"),
    ],
)
def test_upstream_failures(
    keyed_router: RouterProcess,
    upstream: FakeUpstream,
    reply: Reply,
    status: int,
    code: str,
    error_type: str,
) -> None:
    upstream.reply_with(reply)
    r = chat(keyed_router.url, headers={"X-Request-ID": f"fail-{error_type}"})
    _assert_error(r, status, code)
    rec = keyed_router.wait_for_log(
        lambda x: (
            x.get("request_id") == f"fail-{error_type}" and x.get("event") == "request_completed"
        )
    )
    assert rec["error_type"] == error_type
    assert rec["status_code"] == status


def test_an_empty_json_success_is_a_json_error(
    keyed_router: RouterProcess, upstream: FakeUpstream
) -> None:
    """SPEC §5: invalid JSON where JSON was promised is 502 `json_error`. An empty body is no
    JSON: a 200 `application/json` without a byte reached the client as a 200 it could not
    parse."""
    upstream.reply_with(Reply(headers=[("Content-Type", "application/json")], body=b""))
    r = chat(keyed_router.url, headers={"X-Request-ID": "fail-empty-json"})
    _assert_error(r, 502, "upstream_json_error")
    rec = keyed_router.wait_for_log(
        lambda x: x.get("request_id") == "fail-empty-json" and x.get("event") == "request_completed"
    )
    assert rec["error_type"] == "json_error"


def _not_tls_server() -> tuple[int, threading.Event, threading.Thread]:
    """Answers every connection with plain-text HTTP: a TLS client fails its handshake."""
    srv = socket.create_server(("127.0.0.1", 0))
    srv.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        with srv:
            while not stop.is_set():
                try:
                    conn, _ = srv.accept()
                except TimeoutError:
                    continue
                except OSError:
                    return
                with conn:
                    conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    return srv.getsockname()[1], stop, t


def test_connect_refused_and_tls_failure(router_factory: RouterFactory) -> None:
    closed = free_port()
    tls_port, stop, thread = _not_tls_server()
    try:
        # a refused connect is retried once (the request provably never left); a TLS failure
        # would fail again: no retry
        for base, code, retries in (
            (f"http://127.0.0.1:{closed}", "upstream_connect_error", 1),
            (f"https://127.0.0.1:{tls_port}", "upstream_tls_error", 0),
        ):
            r = router_factory(base_profile(base), env={"DEFAULT_API_KEY": SECRET})
            resp = chat(r.url, headers={"X-Request-ID": code})
            _assert_error(resp, 502, code)
            assert len([x for x in r.logs() if x.get("event") == "upstream_retry"]) == retries
    finally:
        stop.set()
        thread.join(5)


def test_upstream_error_with_a_non_json_body_keeps_its_status(
    router: RouterProcess, upstream: FakeUpstream
) -> None:
    upstream.reply_with(
        Reply(
            status=503,
            headers=[("Content-Type", "application/json"), ("Retry-After", "30")],
            body=b"<html>overloaded</html>",
        )
    )
    r = chat(router.url)
    assert r.status_code == 503
    assert r.headers["retry-after"] == "30"
    assert r.content == b"<html>overloaded</html>"


def test_disabled_route_and_request_usage_off(
    router_factory: RouterFactory, upstream: FakeUpstream
) -> None:
    profile = base_profile(
        upstream.url,
        streamConfig={"requestUsage": False},
        endpoints={"/v1/embeddings": {"enabled": False}, "/v1/messages": {"enabled": False}},
    )
    r = router_factory(profile)
    resp = httpx.post(r.url + "/v1/embeddings", json={"model": "m", "input": "x"})
    assert resp.status_code == 404
    assert resp.json()["error"]["code"] == "route_not_available"
    resp = httpx.post(r.url + "/v1/messages", json={"model": "m", "max_tokens": 1})
    assert resp.status_code == 404
    assert resp.json()["error"]["type"] == "not_found_error"
    assert upstream.requests == []
    with httpx.stream(
        "POST",
        r.url + "/v1/chat/completions",
        json={"model": "m", "messages": [], "stream": True},
    ) as s:
        s.read()
    assert "stream_options" not in upstream.last.json()


def test_no_cookie_or_invented_header_is_shared_between_clients(
    router_factory: RouterFactory, upstream: FakeUpstream
) -> None:
    """The upstream connection pool is shared by every client of a worker: a `Set-Cookie` for
    one client must never be replayed on another's request (a host name, not an IP address, is
    where HTTP clients keep cookies)."""
    r = router_factory(base_profile(f"http://localhost:{upstream.port}"))
    upstream.reply_with(
        Reply(
            headers=[
                ("Content-Type", "application/json"),
                ("Set-Cookie", "session=client-a-secret; Path=/"),
            ],
            body=b"{}",
        )
    )
    first = chat(r.url, headers={"Authorization": "Bearer client-a"})
    assert first.headers["set-cookie"].startswith("session=client-a-secret")
    upstream.reset()
    raw = b'{"model":"m"}'
    chat(r.url, headers={"Authorization": "Bearer client-b"})
    assert upstream.last.header("cookie") is None
    # a client that sends neither Content-Type nor User-Agent (httpx always adds the latter)
    with socket.create_connection(("127.0.0.1", r.port), timeout=10) as sock:
        sock.sendall(
            b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(raw), raw)
        )
        assert sock.recv(4096).startswith(b"HTTP/1.1 200")
    sent = upstream.last
    assert sent.header("cookie") is None
    assert sent.header("content-type") is None
    assert sent.header("user-agent") is None
