"""The router's own HTTP shapes, checked in this process: 404 and 405 (with Allow), the JSON error
bodies in the OpenAI and the Anthropic shape, invalid JSON refused with 400 before any upstream
call, X-Request-ID, and the /health and /v1/models bodies.

Nothing here needs a second process: the app of `create_app(settings)` is served to
sanic-testing's ASGI client (`app.asgi_client`), in front of the real fake upstream on loopback.
The client runs the app's start and stop listeners around every request, so the per-worker
resources (upstream client, limiter, metrics) are the real ones. What only the served process
shows (HEAD without a body, connection handling, logs of the process, metrics across requests)
is tested against `python -m service` in the other modules.

One artifact of that client: a stop runs after each request, so the app is "draining" from the
second request on (/ready answers 503); no test here asks /ready.
"""

from __future__ import annotations

import asyncio
import io
import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from sanic import Sanic

from tests.conftest import base_profile
from tests.fakes.upstream import FakeUpstream, Reply
from tests.in_process import in_process_apps
from tests.support import RouterFactory

CHAT = "/v1/chat/completions"
MESSAGES = "/v1/messages"
SECRET = "sk-default-SENTINEL-4242"
NEW_REQUEST_ID = re.compile(r"[0-9a-f]{32}")


class InProcess:
    """One app of `create_app`, asked through sanic-testing's ASGI client; its log lines kept."""

    def __init__(self, app: Sanic, log: io.StringIO) -> None:
        self.app = app
        self.log = log

    def request(self, method: str, path: str, **kw: Any) -> httpx.Response:
        _, got = asyncio.run(self.app.asgi_client.request(method, path, **kw))
        assert got is not None
        # sanic-testing's response makes `json` a property; the tests read plain httpx ones
        return httpx.Response(
            got.status_code, headers=got.headers, content=got.content, request=got.request
        )

    def get(self, path: str, **kw: Any) -> httpx.Response:
        return self.request("GET", path, **kw)

    def post(self, path: str, **kw: Any) -> httpx.Response:
        return self.request("POST", path, **kw)

    def logs(self) -> list[dict[str, Any]]:
        return [json.loads(x) for x in self.log.getvalue().splitlines() if x.startswith("{")]


MakeApp = Callable[..., InProcess]


@pytest.fixture
def make_app(fake_upstream: FakeUpstream, tmp_path: Path) -> Iterator[MakeApp]:
    """`make_app(profile=None, **env)`: the app for that profile (default: the base profile in
    front of the fake upstream) and those environment settings, as the CLI would make it
    (tests.in_process)."""
    with in_process_apps(tmp_path) as make:

        def one(profile: dict[str, Any] | None = None, **env: str) -> InProcess:
            return InProcess(*make(profile or base_profile(fake_upstream.url), env))

        yield one


@pytest.fixture
def app(make_app: MakeApp) -> InProcess:
    return make_app()


def _openai_error(r: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json"
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "code"}
    assert body["error"]["code"] == code
    assert NEW_REQUEST_ID.fullmatch(r.headers["x-request-id"])
    return body["error"]


def _anthropic_error(r: httpx.Response, status: int, error_type: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json"
    body = r.json()
    assert set(body) == {"type", "error"} and body["type"] == "error"
    assert set(body["error"]) == {"type", "message"}
    assert body["error"]["type"] == error_type
    assert NEW_REQUEST_ID.fullmatch(r.headers["x-request-id"])
    return body["error"]


# -- 404 and 405 ----------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/v1/nope", "/", "/v1/chat/completions/x", "/v2/models"])
def test_an_unknown_route_is_404_in_the_openai_shape(app: InProcess, path: str) -> None:
    err = _openai_error(app.get(path), 404, "not_found")
    assert err["type"] == "invalid_request_error"


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("GET", CHAT, "POST"),
        ("PUT", "/v1/embeddings", "POST"),
        ("POST", "/health", "GET, HEAD"),
        ("DELETE", "/metrics", "GET, HEAD"),
        ("PUT", "/v1/models", "GET, HEAD"),
    ],
)
def test_a_known_route_with_another_method_is_405_with_allow(
    app: InProcess, method: str, path: str, allow: str
) -> None:
    r = app.request(method, path)
    err = _openai_error(r, 405, "method_not_allowed")
    assert err["type"] == "invalid_request_error"
    assert r.headers["allow"] == allow


def test_405_on_the_messages_route_is_anthropic_shaped(app: InProcess) -> None:
    r = app.get(MESSAGES)
    _anthropic_error(r, 405, "invalid_request_error")
    assert r.headers["allow"] == "POST"


@pytest.mark.parametrize("upgrade", ["websocket", "WebSocket", "foo, websocket"])
def test_a_websocket_handshake_on_an_http_route_is_426(app: InProcess, upgrade: str) -> None:
    """Codex's built-in `openai` provider first opens `/v1/responses` as a WebSocket; it took
    the 405 for a failure to retry (seven handshakes) and takes 426 as "use HTTP" at once. The
    answer keeps the 405's `Allow` and names HTTP/1.1 (RFC 9110: a 426 says which protocol to
    use)."""
    handshake = {
        "Upgrade": upgrade,
        "Connection": "Upgrade",
        "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
        "Sec-WebSocket-Version": "13",
    }
    r = app.request("GET", "/v1/responses", headers=handshake)
    err = _openai_error(r, 426, "websocket_not_supported")
    assert err["type"] == "invalid_request_error"
    assert (r.headers["allow"], r.headers["upgrade"]) == ("POST", "HTTP/1.1")
    # RFC 9110 §7.8: the `upgrade` connection option with the Upgrade header (over ASGI the
    # only option; over Sanic's own HTTP/1: test_refused_requests.py)
    assert r.headers["connection"] == "upgrade"
    # the same GET without the handshake, or a handshake on an unknown path: as before
    assert app.get("/v1/responses").status_code == 405
    assert app.request("GET", "/v1/realtime", headers=handshake).status_code == 404


# -- invalid JSON: 400 before any upstream call ---------------------------------------------------


@pytest.mark.parametrize("raw", [b"{not json", b"[1,2]", b'"s"', b""])
def test_invalid_json_is_400_before_any_upstream_call(
    app: InProcess, upstream: FakeUpstream, raw: bytes
) -> None:
    headers = {"content-type": "application/json"}
    for path in (CHAT, "/v1/embeddings", "/v1/responses"):
        err = _openai_error(app.post(path, content=raw, headers=headers), 400, "invalid_request")
        assert err["type"] == "invalid_request_error"
    for path in (MESSAGES, "/v1/messages/count_tokens"):
        _anthropic_error(app.post(path, content=raw, headers=headers), 400, "invalid_request_error")
    assert upstream.requests == []


def test_the_messages_routes_with_a_trailing_slash_answer_in_the_anthropic_shape(
    app: InProcess, upstream: FakeUpstream
) -> None:
    """Sanic serves `/v1/messages/` by the Messages route: its errors are the Messages route's
    (they were OpenAI-shaped, the path compared as sent). A 405 there has no matched route: the
    path without its trailing slashes decides."""
    headers = {"content-type": "application/json"}
    for path in (MESSAGES + "/", "/v1/messages/count_tokens/"):
        _anthropic_error(
            app.post(path, content=b"{nope", headers=headers), 400, "invalid_request_error"
        )
    r = app.get(MESSAGES + "/")
    _anthropic_error(r, 405, "invalid_request_error")
    assert upstream.requests == []
    # an unknown path, under the Messages route or not, is no route's: the OpenAI shape
    for path in ("/v1/messages/nope", "/v1/messages/nope/", "/v1/messagesx/"):
        _openai_error(app.post(path, content=b"{}", headers=headers), 404, "not_found")
    # and the OpenAI routes keep theirs with a slash
    _openai_error(app.post(CHAT + "/", content=b"{nope", headers=headers), 400, "invalid_request")


def test_an_upstream_failure_on_the_messages_route_is_anthropic_shaped(
    app: InProcess, upstream: FakeUpstream
) -> None:
    upstream.reply_with(Reply(action="reset"))
    r = app.post(MESSAGES, json={"model": "m", "max_tokens": 1, "messages": []})
    _anthropic_error(r, 502, "api_error")
    assert len(upstream.requests) == 1  # it did reach the upstream: the reset is the upstream's


# -- X-Request-ID ---------------------------------------------------------------------------------


@pytest.mark.parametrize("rid", ["client-rid.1", "A_b-9.x", "x" * 128])
def test_a_sane_request_id_is_kept_and_forwarded(
    app: InProcess, upstream: FakeUpstream, rid: str
) -> None:
    r = app.post(CHAT, json={"model": "gpt-4", "messages": []}, headers={"X-Request-ID": rid})
    assert r.status_code == 200
    assert r.headers["x-request-id"] == rid
    assert upstream.last.header("x-request-id") == rid


@pytest.mark.parametrize("rid", ["bad id with spaces", "x" * 129, "", "a/b", "a:b"])
def test_an_insane_request_id_is_replaced_by_a_new_one(
    app: InProcess, upstream: FakeUpstream, rid: str
) -> None:
    r = app.post(CHAT, json={"model": "gpt-4", "messages": []}, headers={"X-Request-ID": rid})
    new = r.headers["x-request-id"]
    assert new != rid and NEW_REQUEST_ID.fullmatch(new)
    assert upstream.last.header("x-request-id") == new
    health = app.get("/health", headers={"X-Request-ID": rid})
    assert NEW_REQUEST_ID.fullmatch(health.headers["x-request-id"])


def test_every_answer_has_a_request_id_even_an_error(app: InProcess) -> None:
    for r in (app.get("/nope"), app.get(CHAT), app.post(CHAT, content=b"{"), app.get("/health")):
        assert NEW_REQUEST_ID.fullmatch(r.headers["x-request-id"]), r.status_code


def test_the_upstreams_request_id_comes_back_as_x_upstream_request_id(
    app: InProcess, upstream: FakeUpstream
) -> None:
    upstream.reply_with(
        Reply(
            headers=[("Content-Type", "application/json"), ("x-request-id", "req_abc123")],
            body=b"{}",
        )
    )
    r = app.post(CHAT, json={"model": "gpt-4"}, headers={"X-Request-ID": "mine-1"})
    assert r.headers["x-request-id"] == "mine-1"
    assert r.headers["x-upstream-request-id"] == "req_abc123"


# -- /health and /v1/models -----------------------------------------------------------------------


def test_health_shape_and_no_secret(make_app: MakeApp, fake_upstream: FakeUpstream) -> None:
    r = make_app(DEFAULT_API_KEY=SECRET).get("/health")
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    assert SECRET not in r.text
    data = r.json()
    assert data["status"] == "ok" and data["message"] == "Light API Router running"
    assert data["profile"] == "testprov"
    assert data["upstream"] == fake_upstream.url
    assert data["rateLimiter"] == {"activeBuckets": 0, "routes": {}}
    assert data["config"]["status"] == "ok"
    assert data["config"]["lastError"] is None


def test_models_list(app: InProcess) -> None:
    r = app.get("/v1/models")
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    data = r.json()
    assert data["object"] == "list"
    ids = [m["id"] for m in data["data"]]
    assert ids == ["extra-model", "gpt-4", "whisper-1", "up-model-4", "up-whisper"]
    assert {m["owned_by"] for m in data["data"]} == {"testprov"}
    assert all(m["object"] == "model" for m in data["data"])


def test_one_model_of_the_list(app: InProcess) -> None:
    """The openai SDK's `models.retrieve` (GET /v1/models/{id}): one of the list, ids with
    slashes included; 404 model_not_found for any other."""
    r = app.get("/v1/models/up-model-4")
    assert r.status_code == 200
    assert r.json() == {"id": "up-model-4", "object": "model", "created": 0, "owned_by": "testprov"}
    err = _openai_error(app.get("/v1/models/not-a-model"), 404, "model_not_found")
    assert err["message"] == "The model is not in this router's model list"


def test_a_model_id_may_hold_slashes(
    fake_upstream: FakeUpstream, router_factory: RouterFactory
) -> None:
    profile = base_profile(fake_upstream.url, models=["meta-llama/Llama-3.1-8B-Instruct"])
    router = router_factory(profile)
    with openai.OpenAI(base_url=router.url + "/v1", api_key="k", max_retries=0) as client:
        model = client.models.retrieve("meta-llama/Llama-3.1-8B-Instruct")
        assert (model.id, model.owned_by) == ("meta-llama/Llama-3.1-8B-Instruct", "testprov")
        with pytest.raises(openai.NotFoundError):
            client.models.retrieve("meta-llama/other")


def test_metrics_off_means_no_metrics_route(make_app: MakeApp) -> None:
    app = make_app(API_ROUTER_METRICS="false")
    err = _openai_error(app.get("/metrics"), 404, "not_found")
    assert err["message"].startswith("Metrics are disabled")
    assert app.post(CHAT, json={"model": "gpt-4"}).status_code == 200
    assert [x["status_code"] for x in app.logs() if x["event"] == "request_completed"] == [404, 200]
    assert not [x for x in app.logs() if x["event"] == "router_error"]
