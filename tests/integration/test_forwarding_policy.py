"""What reaches the upstream and what comes back, pinned (SPEC §5, issue 19): the forwarding-header
policy, one upstream attempt on a 429/5xx, hop-by-hop response headers stripped on JSON and SSE,
and URL-valued fields in the body or query that never choose the upstream."""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import base_profile
from tests.fakes.upstream import FakeUpstream, Reply, openai_chat, openai_chat_stream, sse
from tests.support import RouterFactory, RouterProcess

CHAT = "/v1/chat/completions"
BODY = {"model": "gpt-4", "messages": [{"role": "user", "content": "hi"}]}
INVENTED = [
    ("X-Forwarded-For", "203.0.113.9, 198.51.100.7"),
    ("X-Forwarded-Host", "evil.example"),
    ("X-Forwarded-Proto", "https"),
    ("X-Forwarded-Port", "443"),
    ("Forwarded", "for=203.0.113.9;proto=https;host=evil.example"),
    ("X-Real-IP", "203.0.113.9"),
]
FORWARDING_NAMES = {k.lower() for k, _ in INVENTED}


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        # Default: the client's are removed; the router says what it saw (an untrusted client).
        (
            {},
            {"x-forwarded-for": "127.0.0.1", "x-forwarded-proto": "http", "x-forwarded-host": "H"},
        ),
        # Behind one trusted proxy (Sanic's own setting): the address Sanic accepts from it.
        (
            {"SANIC_PROXIES_COUNT": "1"},
            {
                "x-forwarded-for": "198.51.100.7",
                "x-forwarded-proto": "https",
                "x-forwarded-host": "evil.example",
            },
        ),
        ({"API_ROUTER_FORWARDED_HEADERS": "keep"}, {k.lower(): v for k, v in INVENTED}),
        ({"API_ROUTER_FORWARDED_HEADERS": "drop"}, {}),
    ],
    ids=["replace", "replace-trusted-proxy", "keep", "drop"],
)
def test_forwarding_headers_follow_the_policy(
    env: dict[str, str],
    expected: dict[str, str],
    upstream: FakeUpstream,
    router_factory: RouterFactory,
) -> None:
    router = router_factory(base_profile(upstream.url), env=env)
    host = f"127.0.0.1:{router.port}"
    r = httpx.post(router.url + CHAT, json=BODY, headers=INVENTED, timeout=10)
    assert r.status_code == 200
    sent = upstream.last
    got = {k.lower(): v for k, v in sent.headers if k.lower() in FORWARDING_NAMES}
    assert got == {k: host if v == "H" else v for k, v in expected.items()}
    # each header once: the router's never joins a client's
    assert len([k for k, _ in sent.headers if k.lower() in FORWARDING_NAMES]) == len(got)


def test_forwarded_host_follows_each_requests_host_on_one_connection(
    upstream: FakeUpstream, router_factory: RouterFactory
) -> None:
    """The forwarding headers are made once per client connection (service.proxy.outgoing):
    a keep-alive connection whose requests name different hosts gets each its own."""
    router = router_factory(base_profile(upstream.url))
    seen = []
    conn = http.client.HTTPConnection("127.0.0.1", router.port, timeout=10)
    socks = set()
    try:
        for host in ["a.example", "b.example", "a.example"]:
            conn.request(
                "POST",
                CHAT,
                json.dumps(BODY),
                headers={"Host": host, "Content-Type": "application/json"},
            )
            r = conn.getresponse()
            r.read()
            assert r.status == 200
            socks.add(id(conn.sock))
            sent = {k.lower(): v for k, v in upstream.last.headers}
            seen.append(sent["x-forwarded-host"])
            assert (sent["x-forwarded-for"], sent["x-forwarded-proto"]) == ("127.0.0.1", "http")
    finally:
        conn.close()
    assert len(socks) == 1  # one client connection throughout
    assert seen == ["a.example", "b.example", "a.example"]


@pytest.mark.parametrize("status", [429, 500, 502, 503, 504])
@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_upstream_429_and_5xx_reach_the_upstream_once(
    router: RouterProcess, upstream: FakeUpstream, status: int, stream: bool
) -> None:
    body = json.dumps({"error": {"message": "busy", "type": "server_error"}}).encode()
    upstream.reply_with(
        Reply(status=status, headers=[("Content-Type", "application/json")], body=body)
    )
    r = httpx.post(router.url + CHAT, json={**BODY, "stream": stream}, timeout=10)
    assert (r.status_code, r.content) == (status, body)
    assert len(upstream.requests) == 1


HOP_BY_HOP_REPLY = [
    ("Connection", "X-Up-Hop"),
    ("X-Up-Hop", "named by Connection"),
    ("Keep-Alive", "timeout=5, max=100"),
    ("Proxy-Authenticate", "Basic realm=up"),
    ("Proxy-Thing", "x"),
    ("Trailer", "X-Checksum"),
    ("X-End-To-End", "kept"),
]
HOP_NAMES = {"connection", "x-up-hop", "keep-alive", "proxy-authenticate", "proxy-thing", "trailer"}


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
def test_hop_by_hop_response_headers_never_reach_the_client(
    router: RouterProcess, upstream: FakeUpstream, stream: bool
) -> None:
    if stream:
        reply = Reply(
            headers=[("Content-Type", "text/event-stream"), *HOP_BY_HOP_REPLY],
            chunks=sse(*openai_chat_stream("m")),
        )
    else:
        reply = Reply(
            headers=[("Content-Type", "application/json"), *HOP_BY_HOP_REPLY],
            body=json.dumps(openai_chat("m")).encode(),
        )
    upstream.reply_with(reply)
    # A raw look at the client's response head (httpx would hide nothing, but be explicit).
    with httpx.Client(timeout=10) as c:
        r = c.post(router.url + CHAT, json={**BODY, "stream": stream})
    assert r.status_code == 200
    names = {k.lower() for k in r.headers}
    assert r.headers["x-end-to-end"] == "kept"
    assert names.isdisjoint(HOP_NAMES - {"connection"}), names
    # The router's own Connection header (keep-alive) may be there, never the upstream's value.
    assert "x-up-hop" not in r.headers.get("connection", "").lower()
    if stream:
        assert r.text.endswith("data: [DONE]\n\n")
    else:
        assert r.json() == openai_chat("m")


@pytest.fixture(scope="module")
def decoy() -> Iterator[FakeUpstream]:
    fake = FakeUpstream().start()
    yield fake
    fake.stop()


def test_url_fields_in_body_or_query_never_change_the_upstream(
    router: RouterProcess, upstream: FakeUpstream, decoy: FakeUpstream
) -> None:
    elsewhere = decoy.url + "/v1"
    body = {
        **BODY,
        "model": elsewhere,
        "base_url": elsewhere,
        "api_base": elsewhere,
        "baseURL": elsewhere,
        "endpoint": elsewhere,
    }
    query = f"?base_url={elsewhere}&api_base={elsewhere}&model={elsewhere}"
    for path in (CHAT, "/v1/embeddings", "/v1/messages"):
        upstream.reset()
        r = httpx.post(router.url + path + query, json=body, timeout=10)
        assert r.status_code == 200, (path, r.text)
        sent = upstream.last
        assert sent.path == path
        assert json.loads(sent.body) == body  # forwarded whole, untouched, to the profile's URL
        assert sent.query == query[1:]
    assert decoy.requests == []
    assert decoy.conn_opened == 0
