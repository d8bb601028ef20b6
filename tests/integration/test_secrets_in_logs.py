"""No credential in any log line at any level (SPEC §9, issue 19).

A router at LOG_LEVEL=debug with a sentinel in every place a credential can come from: the
client's URL query, the profile's `upstreamPath` query (Gemini-style `?key=`), a profile header,
DEFAULT_API_KEY, the client's Bearer token and `x-api-key`, and the password in the Redis URL of
the shared rate limiter (a real redis-server with `requirepass`). Every line the process wrote is
read; none may hold a sentinel, on each upstream transport (their libraries log differently).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.conftest import base_profile
from tests.fakes.redis_server import RedisServer
from tests.fakes.upstream import FakeUpstream, Reply, openai_chat_stream, sse
from tests.support import RouterFactory, RouterProcess

pytestmark = pytest.mark.redis  # the shared limiter's Redis URL carries a password

CHAT = "/v1/chat/completions"
CLIENT_QUERY = "SENTclientquery7d1"
CLIENT_QUERY_2 = "SENTclienttoken9a2"
PROFILE_QUERY = "SENTprofilequery3c4"
PROFILE_HEADER = "SENTprofileheader5e6"
RELOADED_HEADER = "SENTreloadedheader8f9"
DEFAULT_KEY = "sk-SENTdefaultkey0b1"
BEARER = "sk-SENTbearer2d3"
X_API_KEY = "sk-SENTxapikey4f5"
REDIS_PASSWORD = "SENTredispass6a7"
SENTINELS = (
    CLIENT_QUERY,
    CLIENT_QUERY_2,
    PROFILE_QUERY,
    PROFILE_HEADER,
    RELOADED_HEADER,
    DEFAULT_KEY,
    BEARER,
    X_API_KEY,
    REDIS_PASSWORD,
)


def _profile(url: str, header_value: str) -> dict[str, Any]:
    return base_profile(
        url,
        headers={"x-goog-api-key": header_value, "anthropic-version": "2023-06-01"},
        endpoints={CHAT: {"upstreamPath": f"{CHAT}?key={PROFILE_QUERY}"}},
        rateLimit={"requestsPerMinute": 6000, "burst": 1000},  # every request asks Redis
        timeouts={"connectSecs": 2, "readSecs": 1},
    )


@pytest.fixture(scope="module")
def redis_with_password() -> Iterator[RedisServer]:
    with RedisServer(password=REDIS_PASSWORD) as server:
        yield server


def _wait_reloaded(router: RouterProcess, reloads: int) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        state = httpx.get(router.url + "/health", timeout=5).json()["config"]
        if state["reloads"] >= reloads:
            return
        time.sleep(0.2)
    raise AssertionError("the profile was not reloaded")


@pytest.mark.parametrize("transport", ["h1", "httpx", "aiohttp", "pyreqwest"])
def test_no_secret_in_any_debug_log_line(
    transport: str,
    fake_upstream: FakeUpstream,
    redis_with_password: RedisServer,
    router_factory: RouterFactory,
) -> None:
    upstream = fake_upstream
    upstream.reset()
    env = {
        "LOG_LEVEL": "debug",
        "DEFAULT_API_KEY": DEFAULT_KEY,
        "RATE_LIMIT_BACKEND": redis_with_password.url,
        "RATE_LIMIT_FAIL_CLOSED": "true",  # a limiter that cannot log in would refuse: 503
        "API_ROUTER_UPSTREAM_TRANSPORT": transport,
    }
    bearer = {"Authorization": f"Bearer {BEARER}"}
    xkey = {"x-api-key": X_API_KEY, "anthropic-version": "2023-06-01"}
    query = f"?key={CLIENT_QUERY}&access_token={CLIENT_QUERY_2}&safe=1"
    router = router_factory(_profile(upstream.url, PROFILE_HEADER), env=env)
    path = router.profile_path
    with httpx.Client(base_url=router.url) as c:
        stream_body = {"model": "s", "stream": True}
        calls: list[tuple[Reply | None, Any]] = [
            (None, lambda: c.post(CHAT + query, json={"model": "gpt-4"}, headers=bearer)),
            (None, lambda: c.post(CHAT + query, json={"model": "gpt-4"})),  # DEFAULT_API_KEY
            (None, lambda: c.post("/v1/messages" + query, json={"model": "c"}, headers=xkey)),
            (None, lambda: c.post("/v1/embeddings" + query, json={"model": "e"}, headers=bearer)),
            (
                Reply(chunks=sse(*openai_chat_stream("s"))),
                lambda: c.post(CHAT + query, json=stream_body, headers=bearer),
            ),
            (Reply(status=500, body=b"{}"), lambda: c.post(CHAT + query, json={}, headers=xkey)),
            (Reply(action="reset"), lambda: c.post(CHAT + query, json={}, headers=bearer)),
            (Reply(action="garbage"), lambda: c.post(CHAT + query, json={}, headers=bearer)),
            (Reply(action="invalid_json"), lambda: c.post(CHAT + query, json={})),
            (Reply(delay=2.0), lambda: c.post(CHAT + query, json={}, headers=bearer)),
            (None, lambda: c.post(CHAT + query, content=b"{bad", headers=bearer)),
            (None, lambda: c.get("/nope" + query, headers=bearer)),
            (None, lambda: c.put(CHAT + query, headers=xkey)),
        ]
        statuses = []
        for reply, call in calls:
            upstream.reset()
            if reply is not None:
                upstream.reply_with(reply)
            statuses.append(call().status_code)
        assert statuses[:5] == [200] * 5, statuses
        assert statuses[5:] == [500, 502, 502, 502, 504, 400, 404, 405], statuses

        # The sentinels are real: the upstream got the profile's query and header, the
        # client's query appended, and the client's key.
        upstream.reset()
        assert c.post(CHAT + query, json={"model": "x"}, headers=bearer).status_code == 200
        sent = upstream.last
        assert f"key={PROFILE_QUERY}" in sent.query and f"key={CLIENT_QUERY}" in sent.query
        assert sent.header("x-goog-api-key") == PROFILE_HEADER
        assert sent.header("authorization") == f"Bearer {BEARER}"

        # A reload registers the new profile's header value before it serves a request.
        path.write_text(json.dumps(_profile(upstream.url, RELOADED_HEADER)))
        _wait_reloaded(router, 1)
        upstream.reset()
        assert c.post(CHAT + query, json={"model": "x"}, headers=bearer).status_code == 200
        assert upstream.last.header("x-goog-api-key") == RELOADED_HEADER
        output = router.output()

    lines = [ln for ln in output.splitlines() if ln.strip()]
    records = [json.loads(ln) for ln in lines]  # every line is one JSON record: all scrubbed
    assert any(r.get("level") == "debug" for r in records)  # debug really was on
    # URLs with queries were logged (so the check below reads real URL lines) ...
    url_lines = [ln for ln in lines if "?key=" in ln]
    assert url_lines, "no log line showed an upstream URL"
    assert all("key=[redacted]" in ln for ln in url_lines)
    # ... and no line anywhere holds any sentinel, nor a long piece of one.
    for secret in SENTINELS:
        for piece in (secret, secret[4:16]):
            offending = [ln for ln in lines if piece in ln]
            assert not offending, (secret, offending[:3])
