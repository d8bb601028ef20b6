"""CORS for browser clients (service/cors.py, API_ROUTER_CORS_ORIGINS): preflights answered by the
router, the allowed origin and the exposed headers (Server-Timing among them, SPEC §14) on every
answer — JSON, errors, 429s, a stream's head — and nothing of it for other origins or when off."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from service.access import hash_key
from tests.conftest import base_profile
from tests.fakes.upstream import FakeUpstream, Reply, openai_chat, openai_chat_stream, sse
from tests.support import RouterFactory, RouterProcess

CHAT = "/v1/chat/completions"
BODY = {"model": "gpt-4", "messages": [{"role": "user", "content": "hi"}]}
APP = "https://app.example.com"


@pytest.fixture(scope="module")
def cors_router(fake_upstream: FakeUpstream, module_router_factory: RouterFactory) -> RouterProcess:
    profile = base_profile(
        fake_upstream.url,
        endpoints={"/v1/embeddings": {"rateLimit": {"requestsPerMinute": 1, "burst": 1}}},
    )
    # (an origin's scheme and host match without regard to case)
    env = {"API_ROUTER_CORS_ORIGINS": f"{APP}, HTTPS://Admin.Example.com/"}
    return module_router_factory(profile, env=env)


def exposed(r: httpx.Response) -> set[str]:
    return {h.strip().lower() for h in r.headers["access-control-expose-headers"].split(",")}


def test_a_preflight_is_answered_by_the_router(cors_router: RouterProcess) -> None:
    r = httpx.options(
        cors_router.url + CHAT,
        headers={
            "Origin": APP,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type, anthropic-version",
        },
        timeout=10,
    )
    assert r.status_code == 204
    assert r.headers["access-control-allow-origin"] == APP
    assert "POST" in r.headers["access-control-allow-methods"]
    assert r.headers["access-control-allow-headers"] == (
        "authorization, content-type, anthropic-version"
    )
    assert r.headers["vary"] == "Origin"
    assert "access-control-allow-credentials" not in r.headers


def test_a_preflight_from_another_origin_is_the_usual_405(cors_router: RouterProcess) -> None:
    r = httpx.options(
        cors_router.url + CHAT,
        headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
        timeout=10,
    )
    assert r.status_code == 405
    assert r.headers["allow"] == "POST"
    assert "access-control-allow-origin" not in r.headers


@pytest.mark.parametrize("stream", [False, True])
def test_answers_expose_server_timing_and_the_router_headers(
    cors_router: RouterProcess, upstream: FakeUpstream, stream: bool
) -> None:
    body = {**BODY, "stream": stream}
    with httpx.stream(
        "POST", cors_router.url + CHAT, json=body, headers={"Origin": APP}, timeout=10
    ) as r:
        r.read()
    assert r.status_code == 200
    assert r.headers["access-control-allow-origin"] == APP
    assert r.headers["timing-allow-origin"] == APP
    assert {"server-timing", "x-request-id", "x-ratelimit-remaining-tokens"} <= exposed(r)
    assert "x-upstream-request-id" in exposed(r)  # the provider's id, for its support
    assert "server-timing" in r.headers


def test_errors_and_429s_carry_them_too(cors_router: RouterProcess, upstream: FakeUpstream) -> None:
    h = {"Origin": "https://admin.example.com"}
    codes = [
        httpx.post(cors_router.url + "/v1/embeddings", json={"model": "m", "input": "x"},
                   headers=h, timeout=10)
        for _ in range(2)
    ]  # fmt: skip
    assert [r.status_code for r in codes] == [200, 429]
    assert codes[1].headers["access-control-allow-origin"] == "https://admin.example.com"
    assert "retry-after" in exposed(codes[1])
    bad = httpx.post(cors_router.url + CHAT, content=b"{", headers=h, timeout=10)
    assert bad.status_code == 400
    assert bad.headers["access-control-allow-origin"] == "https://admin.example.com"


def test_no_cors_headers_for_other_origins_or_without_an_origin(
    cors_router: RouterProcess, upstream: FakeUpstream
) -> None:
    for headers in ({"Origin": "https://evil.example"}, {}):
        r = httpx.post(cors_router.url + CHAT, json=BODY, headers=headers, timeout=10)
        assert r.status_code == 200
        assert "access-control-allow-origin" not in r.headers


def test_off_by_default(router: RouterProcess) -> None:
    r = httpx.options(
        router.url + CHAT,
        headers={"Origin": APP, "Access-Control-Request-Method": "POST"},
        timeout=10,
    )
    assert r.status_code == 405
    r = httpx.get(router.url + "/health", headers={"Origin": APP}, timeout=10)
    assert "access-control-allow-origin" not in r.headers


def test_any_origin(fake_upstream: FakeUpstream, router_factory: RouterFactory) -> None:
    router = router_factory(base_profile(fake_upstream.url), env={"API_ROUTER_CORS_ORIGINS": "*"})
    r = httpx.get(router.url + "/health", headers={"Origin": "https://x.example"}, timeout=10)
    assert r.headers["access-control-allow-origin"] == "*"
    assert "vary" not in r.headers


def test_a_preflight_needs_no_access_key(
    fake_upstream: FakeUpstream, router_factory: RouterFactory, tmp_path: Path
) -> None:
    keys = tmp_path / "keys"
    keys.write_text(hash_key("sk-access-cors-1") + "\n")
    env = {"API_ROUTER_CORS_ORIGINS": APP, "API_ROUTER_ACCESS_KEYS_FILE": str(keys)}
    router = router_factory(base_profile(fake_upstream.url), env=env)
    pre = {"Origin": APP, "Access-Control-Request-Method": "POST"}
    assert httpx.options(router.url + CHAT, headers=pre, timeout=10).status_code == 204
    r = httpx.post(router.url + CHAT, json=BODY, headers={"Origin": APP}, timeout=10)
    assert r.status_code == 401  # the request itself still needs its key
    assert r.headers["access-control-allow-origin"] == APP


# A provider's own CORS answer (Anthropic's API answers a request with an Origin so).
UPSTREAM_CORS = [
    ("Access-Control-Allow-Origin", "*"),
    ("Access-Control-Expose-Headers", "*"),
    ("Timing-Allow-Origin", "*"),
]


def _upstream_with_cors(upstream: FakeUpstream) -> None:
    def reply(req: object) -> Reply:
        if b'"stream": true' in req.body:  # type: ignore[attr-defined]
            head = [("Content-Type", "text/event-stream"), *UPSTREAM_CORS]
            return Reply(headers=head, chunks=sse(*openai_chat_stream("m")))
        body = json.dumps(openai_chat("m")).encode()
        return Reply(headers=[("Content-Type", "application/json"), *UPSTREAM_CORS], body=body)

    upstream.reply_with(reply)


@pytest.mark.parametrize("stream", [False, True])
def test_the_policy_is_the_router_s_alone(
    cors_router: RouterProcess, router: RouterProcess, upstream: FakeUpstream, stream: bool
) -> None:
    """The upstream's `Access-Control-*` headers never reach the client, and the page's Origin
    never reaches the upstream. Before: a stream's head carried the provider's `*` and the
    router's origin (two values: the browser refuses the answer), a JSON answer the provider's
    `*` (the operator's list overridden), and a router with CORS off let any page read it."""
    _upstream_with_cors(upstream)
    for target, origin, allow in (
        (cors_router, APP, [APP]),
        (cors_router, "https://evil.example", []),
        (router, APP, []),  # CORS off
    ):
        with httpx.stream(
            "POST",
            target.url + CHAT,
            json={**BODY, "stream": stream},
            headers={"Origin": origin},
            timeout=10,
        ) as r:
            r.read()
        assert r.status_code == 200
        assert r.headers.get_list("access-control-allow-origin") == allow
        assert r.headers.get_list("timing-allow-origin") == allow
        if not allow:
            assert "access-control-expose-headers" not in r.headers
        assert upstream.last.header("origin") is None


@pytest.mark.parametrize("stream", [False, True])
def test_with_a_list_of_origins_every_answer_varies_by_origin(
    cors_router: RouterProcess, upstream: FakeUpstream, stream: bool
) -> None:
    """A shared cache must not serve the copy made for another (or no) origin, which has no
    CORS headers, to an allowed page: `Vary: Origin` on every answer, once."""
    for headers in ({"Origin": "https://evil.example"}, {}, {"Origin": APP}):
        with httpx.stream(
            "POST", cors_router.url + CHAT, json={**BODY, "stream": stream}, headers=headers,
            timeout=10,
        ) as r:  # fmt: skip
            r.read()
        assert r.status_code == 200
        assert [v for v in r.headers.get_list("vary") if v.lower() == "origin"] == ["Origin"]
    health = httpx.get(cors_router.url + "/health", timeout=10)
    assert health.headers.get_list("vary") == ["Origin"]
