"""Access control for shared deployments (API_ROUTER_ACCESS_KEYS_FILE), and the upstream host
that nothing in a request can change: redirects are relayed, never followed; Host headers,
absolute-form targets, `//host` paths and `@` tricks never reach another host."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from service.access import hash_key
from tests.conftest import base_profile
from tests.fakes.faultproxy import FaultProxy
from tests.fakes.upstream import FakeUpstream, Reply
from tests.integration.test_shutdown import wait_until, worker_pids
from tests.rawhttp import connect, exchange, read_response
from tests.support import ROOT, RouterFactory, RouterProcess

KEY_A = "team-a-7f3c9e"
KEY_B = "team-b-1d2e4a"
OPERATOR = "sk-operator-secret-42"
CHAT = {"model": "gpt-4", "messages": [{"role": "user", "content": "hi"}]}
MSG = {"model": "claude", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture(scope="module")
def keys_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("keys") / "access-keys"
    upper_b = "sha256:" + hash_key(KEY_B).removeprefix("sha256:").upper()  # case-insensitive
    path.write_text(f"# issued to team A\n{hash_key(KEY_A)}\n\n  {upper_b}  \n")
    return path


@pytest.fixture(scope="module")
def guarded(
    fake_upstream: FakeUpstream, keys_file: Path, module_router_factory: RouterFactory
) -> RouterProcess:
    profile = base_profile(fake_upstream.url, rateLimit={"requestsPerMinute": 60, "burst": 2})
    env = {"API_ROUTER_ACCESS_KEYS_FILE": str(keys_file), "DEFAULT_API_KEY": OPERATOR}
    return module_router_factory(profile, env=env)


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong"}, {"x-api-key": "wrong"}, {"Authorization": KEY_A}],
    ids=["none", "wrong_bearer", "wrong_x_api_key", "no_bearer_scheme"],
)
def test_without_an_access_key_it_is_401_and_nothing_goes_upstream(
    guarded: RouterProcess, upstream: FakeUpstream, headers: dict[str, str]
) -> None:
    r = httpx.post(guarded.url + "/v1/chat/completions", json=CHAT, headers=headers)
    assert r.status_code == 401
    assert r.json() == {
        "error": {
            "message": "Invalid or missing API key",
            "type": "authentication_error",
            "code": "invalid_api_key",
        }
    }
    assert r.headers["x-request-id"]
    assert upstream.requests == []


@pytest.mark.parametrize("header", [b"x-api-key: ", b"Authorization: Bearer "])
def test_a_key_that_is_not_utf8_is_401_not_a_crash(guarded: RouterProcess, header: bytes) -> None:
    """Sanic decodes a head with surrogateescape; hashing such a key raised (500, an error line,
    an error-rate alert that anyone could set off without a key)."""
    body = b'{"model": "gpt-4", "messages": []}'
    resp, _ = exchange(
        guarded.port,
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n" + header + b"k\xff\xfe\x80\r\n"
        + b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body) + body,
        wait_close=False,
    )  # fmt: skip
    assert resp is not None and resp.status == 401
    assert json.loads(resp.body)["error"]["code"] == "invalid_api_key"


def test_401_on_messages_is_anthropic_shaped(
    guarded: RouterProcess, upstream: FakeUpstream
) -> None:
    r = httpx.post(guarded.url + "/v1/messages", json=MSG)
    assert r.status_code == 401
    assert r.json() == {
        "type": "error",
        "error": {"type": "authentication_error", "message": "Invalid or missing API key"},
    }
    assert upstream.requests == []


def test_no_other_form_of_the_access_key_reaches_the_upstream(
    guarded: RouterProcess, upstream: FakeUpstream
) -> None:
    """A client that sends its access key in more forms than the one checked (Azure's `api-key`,
    Google's `x-goog-api-key`, a `key=` parameter): none goes upstream; other parameters do."""
    r = httpx.post(
        guarded.url + "/v1/chat/completions?key=" + KEY_A + "&api_key=" + KEY_A + "&keep=1",
        json=CHAT,
        headers={"Authorization": f"Bearer {KEY_A}", "api-key": KEY_A, "x-goog-api-key": KEY_A},
    )
    assert r.status_code == 200, r.text
    rec = upstream.last
    assert rec.header("api-key") is None and rec.header("x-goog-api-key") is None
    assert rec.query == "keep=1"
    assert KEY_A.encode() not in repr(rec.headers).encode() + rec.body


def test_models_needs_a_key_and_ops_routes_do_not(guarded: RouterProcess) -> None:
    assert httpx.get(guarded.url + "/v1/models").status_code == 401
    ok = httpx.get(guarded.url + "/v1/models", headers={"Authorization": f"Bearer {KEY_A}"})
    assert ok.status_code == 200
    for path in ("/health", "/ready", "/metrics"):
        assert httpx.get(guarded.url + path).status_code == 200, path


def test_the_upstream_gets_the_operator_credential_never_the_client_key(
    guarded: RouterProcess, upstream: FakeUpstream
) -> None:
    for headers in ({"Authorization": f"Bearer {KEY_A}"}, {"x-api-key": KEY_B}):
        r = httpx.post(guarded.url + "/v1/chat/completions", json=CHAT, headers=headers)
        assert r.status_code == 200, r.text
    assert len(upstream.requests) == 2
    for rec in upstream.requests:
        assert rec.header("authorization") == f"Bearer {OPERATOR}"
        assert rec.header("x-api-key") is None
        raw = repr(rec.headers).encode() + rec.body
        assert KEY_A.encode() not in raw and KEY_B.encode() not in raw
    logs = guarded.output()
    assert KEY_A not in logs and KEY_B not in logs and OPERATOR not in logs


def test_401_comes_before_the_body_is_read(guarded: RouterProcess, upstream: FakeUpstream) -> None:
    """A client without a key cannot make the router wait for (or buffer) a large body."""
    with connect(guarded.port) as s:
        s.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 10000000\r\n\r\n{"
        )
        resp = read_response(s)
    assert resp is not None and resp.status == 401
    assert upstream.requests == []


def test_rate_limit_buckets_are_keyed_by_the_access_key(
    guarded: RouterProcess, upstream: FakeUpstream
) -> None:
    """burst 2: key A exhausts its own bucket; key B still has a full one."""
    url = guarded.url + "/v1/embeddings"
    body = {"model": "e", "input": "x"}
    a = {"Authorization": f"Bearer {KEY_A}"}
    b = {"Authorization": f"Bearer {KEY_B}"}
    statuses_a = [httpx.post(url, json=body, headers=a).status_code for _ in range(3)]
    assert statuses_a == [200, 200, 429]
    assert httpx.post(url, json=body, headers=b).status_code == 200
    key_ids = {r["key_id"] for r in guarded.access_logs() if r["route"] == "/v1/embeddings"}
    assert key_ids == {hashlib.sha256(k.encode()).hexdigest()[:12] for k in (KEY_A, KEY_B)}


def test_hash_helper_matches_sha256sum() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "service.access"],
        input=f"{KEY_A}\n",
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    ).stdout.split()
    assert out == ["sha256:" + hashlib.sha256(KEY_A.encode()).hexdigest()]


@pytest.mark.parametrize(
    "content",
    ["sk-live-in-clear-123\n", "# only a comment\n", "sha256:abcd\n"],
    ids=["clear_key", "empty", "short_hash"],
)
def test_an_unusable_keys_file_stops_the_router(
    tmp_path: Path, fake_upstream: FakeUpstream, router_factory: RouterFactory, content: str
) -> None:
    keys = tmp_path / "keys"
    keys.write_text(content)
    env = {"API_ROUTER_ACCESS_KEYS_FILE": str(keys)}
    with pytest.raises(RuntimeError) as e:
        router_factory(base_profile(fake_upstream.url), env=env)
    assert "exited 2" in str(e.value)
    assert str(keys) in str(e.value)
    assert "sk-live-in-clear-123" not in str(e.value)


# -- the upstream host cannot be changed from a request ------------------------------------------
@pytest.fixture
def evil(fake_upstream: FakeUpstream) -> Iterator[FaultProxy]:
    """Another host a hostile client would like the router to contact; counts connections."""
    with FaultProxy(fake_upstream.port) as p:
        yield p


def test_a_restarted_worker_admits_the_keys_read_at_start(
    fake_upstream: FakeUpstream, router_factory: RouterFactory, tmp_path: Path
) -> None:
    """The file is read once, at start (docs/security.md): a worker started again after a crash
    read it anew, so after an edit the workers disagreed on which keys pass (and an edit that
    broke the file kept the new worker from starting at all)."""
    keys = tmp_path / "access-keys"
    keys.write_text(hash_key(KEY_A) + "\n")
    env = {"API_ROUTER_ACCESS_KEYS_FILE": str(keys), "DEFAULT_API_KEY": OPERATOR}
    router = router_factory(base_profile(fake_upstream.url), env=env, workers=2)
    keys.write_text(hash_key(KEY_B) + "\n")  # edited, not restarted
    workers = worker_pids(router)
    os.kill(workers[0], signal.SIGKILL)
    wait_until(lambda: router.output().count("Worker ready") >= 3, 15, "the worker started again")
    assert workers[0] not in worker_pids(router)
    for key, status in ((KEY_A, 200), (KEY_B, 401)):  # new connections: both workers answer
        got = {
            httpx.post(router.url + "/v1/chat/completions", json=CHAT,
                       headers={"Authorization": f"Bearer {key}"}, timeout=10).status_code
            for _ in range(12)
        }  # fmt: skip
        assert got == {status}, (key, got)


def test_upstream_redirects_are_relayed_never_followed(
    router: RouterProcess, upstream: FakeUpstream, evil: FaultProxy
) -> None:
    location = evil.url + "/v1/chat/completions"
    upstream.reply_with(Reply(status=302, headers=[("Location", location)], body=b""))
    r = httpx.post(router.url + "/v1/chat/completions", json=CHAT, follow_redirects=False)
    assert r.status_code == 302
    assert r.headers["location"] == location
    assert len(upstream.requests) == 1
    assert evil.connections == 0


def _raw_chat(target: bytes, host: bytes = b"x", extra: bytes = b"") -> bytes:
    body = b'{"model":"gpt-4","messages":[]}'
    return (
        b"POST "
        + target
        + b" HTTP/1.1\r\nHost: "
        + host
        + b"\r\n"
        + extra
        + b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    )


def test_nothing_in_a_request_changes_the_upstream_host(
    router: RouterProcess, upstream: FakeUpstream, evil: FaultProxy
) -> None:
    e = b"127.0.0.1:%d" % evil.port
    attempts = [
        _raw_chat(b"/v1/chat/completions", host=e),
        _raw_chat(b"/v1/chat/completions", extra=b"X-Forwarded-Host: " + e + b"\r\n"),
        _raw_chat(b"http://" + e + b"/v1/chat/completions"),
        _raw_chat(b"//" + e + b"/v1/chat/completions"),
        _raw_chat(b"/v1/chat/completions@" + e),
        _raw_chat(b"/@" + e + b"/v1/chat/completions"),
        _raw_chat(b"/v1/chat/completions?x=@" + e + b"/"),
        _raw_chat(b"/v1/chat/completions#@" + e),
    ]
    statuses = []
    for raw in attempts:
        resp, _ = exchange(router.port, raw, wait_close=False)
        assert resp is not None
        statuses.append(resp.status)
    assert evil.connections == 0
    # Whatever was forwarded went to the profile's upstream, on a route of the table.
    assert {r.path for r in upstream.requests} <= {"/v1/chat/completions"}
    assert all(s in (200, 400, 404) for s in statuses), statuses
