"""Logs of the real router (SPEC §9): one completion line per request with its fields, the same
`error_type` in the log and in `upstream_errors_total` for every kind of failure, no credential
anywhere, LOG_FORMAT / LOG_LEVEL, Sanic's and httpx's records in the same JSON shape, and the
repeated-failure alert."""

from __future__ import annotations

import json
import ssl
import subprocess
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from tests.conftest import base_profile
from tests.fakes.upstream import FakeUpstream, Reply, openai_chat_stream, sse
from tests.scrape import scrape, value
from tests.support import RouterFactory, RouterProcess, free_port

CHAT = "/v1/chat/completions"
CLIENT_KEY = "sk-CLIENTSENTINEL-7f3a9c"
DEFAULT_KEY = "sk-DEFAULTSENTINEL-42be1d"
COMPLETION_FIELDS = {
    "request_id", "client_ip", "method", "route", "status_code", "latency_ms", "provider",
    "upstream_latency_ms", "model", "stream",
}  # fmt: skip


@pytest.fixture(scope="module")
def debug_router(
    fake_upstream: FakeUpstream, module_router_factory: RouterFactory
) -> RouterProcess:
    """LOG_LEVEL=debug, a sentinel DEFAULT_API_KEY, and a short read timeout."""
    profile = base_profile(fake_upstream.url, timeouts={"connectSecs": 2, "readSecs": 0.5})
    return module_router_factory(
        profile, env={"LOG_LEVEL": "debug", "DEFAULT_API_KEY": DEFAULT_KEY}
    )


@pytest.fixture(scope="module")
def closed_port_router(module_router_factory: RouterFactory) -> RouterProcess:
    profile = base_profile(f"http://127.0.0.1:{free_port()}")  # nothing listens there
    return module_router_factory(profile, env={"LOG_LEVEL": "warning"})


@pytest.fixture(scope="module")
def untrusted_tls_port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """A real TLS server on loopback whose self-signed certificate nobody trusts."""
    d = tmp_path_factory.mktemp("tls")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=127.0.0.1", "-keyout", str(d / "key.pem"), "-out", str(d / "cert.pem")],
        check=True, capture_output=True,
    )  # fmt: skip
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(d / "cert.pem", d / "key.pem")
    server = ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    server.handle_error = lambda *a: None  # type: ignore[assignment,method-assign]
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()
    t.join(5)


@pytest.fixture(scope="module")
def tls_router(untrusted_tls_port: int, module_router_factory: RouterFactory) -> RouterProcess:
    return module_router_factory(base_profile(f"https://127.0.0.1:{untrusted_tls_port}"))


def _completion(router: RouterProcess, rid: str) -> dict[str, Any]:
    return router.wait_for_log(
        lambda rec: rec.get("event") == "request_completed" and rec.get("request_id") == rid
    )


def _chat(router: RouterProcess, rid: str, **body: Any) -> httpx.Response:
    with httpx.Client(timeout=10) as c:
        return c.post(
            router.url + CHAT,
            json={"model": "gpt-4", "messages": [], **body},
            headers={"X-Request-ID": rid, "Authorization": f"Bearer {CLIENT_KEY}"},
        )


# -- the completion line --------------------------------------------------------------------------


def test_one_completion_line_per_request_with_every_field(
    debug_router: RouterProcess, upstream: FakeUpstream
) -> None:
    rid = "rid-ok-" + uuid.uuid4().hex[:8]
    assert _chat(debug_router, rid).status_code == 200
    rec = _completion(debug_router, rid)
    assert COMPLETION_FIELDS <= rec.keys()
    assert rec["client_ip"] == "127.0.0.1"
    assert rec["method"] == "POST" and rec["route"] == CHAT and rec["status_code"] == 200
    assert rec["provider"] == "testprov" and rec["model"] == "gpt-4" and rec["stream"] is False
    assert rec["latency_ms"] >= rec["upstream_latency_ms"] > 0
    assert "error_type" not in rec
    assert rec["level"] == "info" and rec["logger"] == "api_router.access"
    lines = [r for r in debug_router.access_logs() if r.get("request_id") == rid]
    assert len(lines) == 1


def test_request_ids_are_the_clients_when_sane_else_new(debug_router: RouterProcess) -> None:
    with httpx.Client() as c:
        bad = "not sane/" + "x" * 200
        r = c.get(debug_router.url + "/health", headers={"X-Request-ID": bad})
    rid = r.headers["x-request-id"]
    assert rid != bad and len(rid) >= 16
    assert _completion(debug_router, rid)["route"] == "/health"


def test_context_is_per_request_on_a_kept_alive_connection(
    debug_router: RouterProcess, upstream: FakeUpstream
) -> None:
    upstream.reply_with(Reply(action="reset"))
    with httpx.Client(timeout=10) as c:
        c.post(debug_router.url + CHAT, json={"model": "a"}, headers={"X-Request-ID": "ka-1"})
        ok = Reply(status=200, body=b"{}", headers=[("Content-Type", "application/json")])
        upstream.reply_with(ok)
        c.post(debug_router.url + CHAT, json={"model": "b"}, headers={"X-Request-ID": "ka-2"})
    second = _completion(debug_router, "ka-2")
    assert "error_type" not in second and second["model"] == "b"
    logs = debug_router.logs()
    i1 = next(i for i, r in enumerate(logs) if r.get("request_id") == "ka-1")
    after_first = [r for r in logs[i1:] if r.get("request_id") not in (None, "ka-1")]
    httpx_lines = [r for r in after_first if r.get("logger", "").startswith(("httpx", "httpcore"))]
    assert httpx_lines, "httpx/httpcore debug lines of the second request carry its request_id"
    assert all(r["request_id"] == "ka-2" for r in after_first if r.get("request_id") != "ka-1")


# -- every error_type: the log line and the counter agree -----------------------------------------

SCENARIOS: dict[str, tuple[str, Reply | None, int]] = {
    # error_type: (router fixture, upstream reply, status the client gets)
    "connect_error": ("closed_port_router", None, 502),
    "io_error": ("debug_router", Reply(action="reset"), 502),
    "tls_error": ("tls_router", None, 502),
    "timeout": ("debug_router", Reply(delay=2.0), 504),
    "protocol_error": ("debug_router", Reply(action="garbage"), 502),
    "json_error": ("debug_router", Reply(action="invalid_json"), 502),
    "upstream_error": ("debug_router", Reply(status=500, body=b'{"error":"x"}'), 500),
}


@pytest.mark.parametrize("error_type", list(SCENARIOS))
def test_failure_logs_the_error_type_the_counter_got(
    error_type: str, request: pytest.FixtureRequest, upstream: FakeUpstream
) -> None:
    fixture, reply, status = SCENARIOS[error_type]
    router: RouterProcess = request.getfixturevalue(fixture)
    if reply is not None:
        upstream.reply_with(reply)
    before = scrape(router.url)
    rid = f"rid-{error_type}-{uuid.uuid4().hex[:8]}"
    resp = _chat(router, rid)
    assert resp.status_code == status
    after = scrape(router.url)
    rec = _completion(router, rid)
    assert rec["error_type"] == error_type
    assert rec["status_code"] == status
    assert rec["level"] == "warning"
    for kind in SCENARIOS.keys() | {"stream_error"}:
        delta = value(after, "upstream_errors_total", error_type=kind) - value(
            before, "upstream_errors_total", error_type=kind
        )
        assert delta == (1 if kind == error_type else 0), kind


def test_stream_break_logs_stream_error_and_counts_it(
    debug_router: RouterProcess, upstream: FakeUpstream
) -> None:
    events = openai_chat_stream("up-model-4")
    upstream.reply_with(
        Reply(
            headers=[("Content-Type", "text/event-stream")], chunks=sse(*events), action="close_mid"
        )
    )
    before = scrape(debug_router.url)
    rid = "rid-stream-" + uuid.uuid4().hex[:8]
    with httpx.Client(timeout=10) as c, c.stream(
        "POST", debug_router.url + CHAT,
        json={"model": "gpt-4", "messages": [], "stream": True},
        headers={"X-Request-ID": rid},
    ) as resp:  # fmt: skip
        assert resp.status_code == 200
        body = b"".join(resp.iter_raw())
    assert b"event: error" in body
    rec = _completion(debug_router, rid)
    assert rec["error_type"] == "stream_error" and rec["stream"] is True
    after = scrape(debug_router.url)
    assert (
        value(after, "upstream_errors_total", error_type="stream_error")
        - value(before, "upstream_errors_total", error_type="stream_error")
        == 1
    )


# -- no credential anywhere -----------------------------------------------------------------------


def test_sentinel_credentials_never_appear_in_logs_metrics_or_error_bodies(
    debug_router: RouterProcess, upstream: FakeUpstream
) -> None:
    bodies: list[bytes] = []
    heads: list[str] = []
    with httpx.Client(base_url=debug_router.url, timeout=10) as c:
        bearer = {"Authorization": f"Bearer {CLIENT_KEY}"}
        xkey = {"x-api-key": CLIENT_KEY, "anthropic-version": "2023-06-01"}
        calls = [
            (None, lambda: c.post(CHAT, json={"model": "gpt-4"}, headers=bearer)),
            (None, lambda: c.post(CHAT, json={"model": "gpt-4"})),  # DEFAULT_API_KEY is used
            (None, lambda: c.post("/v1/messages", json={"model": "c"}, headers=xkey)),
            (None, lambda: c.post(CHAT, content=b"{not json", headers=bearer)),
            (None, lambda: c.get("/nope", headers=bearer)),
            (None, lambda: c.put(CHAT, headers=bearer)),
            (Reply(action="reset"), lambda: c.post(CHAT, json={"model": "x"}, headers=bearer)),
            (Reply(action="garbage"), lambda: c.post("/v1/messages", json={}, headers=xkey)),
            (Reply(action="invalid_json"), lambda: c.post(CHAT, json={}, headers=bearer)),
            (Reply(delay=2.0), lambda: c.post(CHAT, json={}, headers=bearer)),
            (Reply(status=500, body=b"{}"), lambda: c.post(CHAT, json={})),
            (None, lambda: c.post(CHAT, json={"model": "s", "stream": True}, headers=bearer)),
        ]
        for reply, call in calls:
            upstream.reset()
            if reply is not None:
                upstream.reply_with(reply)
            r = call()
            bodies.append(r.content)
            heads.append(str(r.headers))

        # A careless upstream that echoes the credential in a response header: httpcore's debug
        # log prints response headers, so only the scrubber keeps the key out of the logs.
        def echo(req: Any) -> Reply:
            return Reply(headers=[("X-Echo", req.header("authorization") or "")], body=b"{}")

        for hdrs in (bearer, {}):
            upstream.reply_with(echo)
            assert c.post(CHAT, json={"model": "e"}, headers=hdrs).status_code == 200
        # the upstream really got the keys: they are real credentials, not dropped ones
        upstream.reset()
        c.post(CHAT, json={"model": "gpt-4"}, headers=bearer)
        assert upstream.last.header("authorization") == f"Bearer {CLIENT_KEY}"
        c.post(CHAT, json={"model": "gpt-4"})
        assert upstream.last.header("authorization") == f"Bearer {DEFAULT_KEY}"
    metrics = scrape(debug_router.url) + scrape(
        debug_router.url, accept="application/openmetrics-text"
    )
    output = debug_router.output()
    assert any(r.get("level") == "debug" for r in debug_router.logs())  # debug really was on
    for secret in (CLIENT_KEY, DEFAULT_KEY, CLIENT_KEY[8:20], DEFAULT_KEY[9:22]):
        assert secret not in output
        assert secret not in metrics
        for b, hd in zip(bodies, heads, strict=True):
            assert secret.encode() not in b
            assert secret not in hd


# -- format and level -----------------------------------------------------------------------------


def test_sanic_and_httpx_records_use_the_same_json_formatter(
    debug_router: RouterProcess, upstream: FakeUpstream
) -> None:
    # Its own upstream request: the module's other tests may run in another process (xdist).
    rid = "fmt-" + uuid.uuid4().hex[:8]
    assert _chat(debug_router, rid).status_code == 200
    _completion(debug_router, rid)
    debug_router.wait_for_log(lambda rec: rec.get("logger", "").startswith(("httpx", "httpcore")))
    lines = [ln for ln in debug_router.output().splitlines() if ln.strip()]
    records = []
    for ln in lines:
        records.append(json.loads(ln))  # every line of the process is one JSON object
    loggers = {r.get("logger", "") for r in records}
    assert any(name.startswith("sanic.") for name in loggers), loggers
    assert any(name.startswith(("httpx", "httpcore")) for name in loggers), loggers
    for r in records:
        assert {"event", "level", "timestamp"} <= r.keys(), r


def test_log_level_is_respected(closed_port_router: RouterProcess) -> None:
    with httpx.Client() as c:
        r = c.get(closed_port_router.url + "/health", headers={"X-Request-ID": "lvl-ok"})
        assert r.status_code == 200
    rid = "lvl-fail-" + uuid.uuid4().hex[:6]
    assert _chat(closed_port_router, rid).status_code == 502
    _completion(closed_port_router, rid)  # warnings are logged ...
    recs = closed_port_router.logs()
    assert not [r for r in recs if r.get("request_id") == "lvl-ok"]  # ... info lines are not
    assert all(r.get("level") in ("warning", "error", "critical") for r in recs)


@pytest.mark.parametrize("given", ["console", "Jsno"])
def test_console_format_when_log_format_is_not_json(
    given: str, fake_upstream: FakeUpstream, router_factory: RouterFactory
) -> None:
    """SPEC §9: console output for anything but `json`; any other value than `console` (a
    mistyped `json`) is named in one warning at start."""
    r = router_factory(base_profile(fake_upstream.url), env={"LOG_FORMAT": given})
    with httpx.Client() as c:
        c.get(r.url + "/health", headers={"X-Request-ID": "console-rid"})
    rec = _wait_line(r, "console-rid")
    assert not rec.lstrip().startswith("{")
    assert "request_completed" in rec and "status_code=200" in rec
    assert "request_id=console-rid" in rec
    assert not any(ln.lstrip().startswith("{") for ln in r.output().splitlines())
    warnings = [ln for ln in r.output().splitlines() if "log_format_unknown" in ln]
    if given == "console":
        assert not warnings
    else:  # the primary's warning, not one per worker
        assert len(warnings) == 1, r.output()[-2000:]
        assert "log_format=jsno" in warnings[0] and "using=console" in warnings[0]


def _wait_line(r: RouterProcess, needle: str) -> str:
    import time

    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        for ln in r.output().splitlines():
            if needle in ln:
                return ln
        time.sleep(0.05)
    raise AssertionError(r.output()[-2000:])


# -- repeated failures raise one alert line -------------------------------------------------------


def test_repeated_upstream_failures_log_one_alert_line(router_factory: RouterFactory) -> None:
    r = router_factory(base_profile(f"http://127.0.0.1:{free_port()}"))

    def alerts() -> list[dict[str, Any]]:
        return [x for x in r.logs() if x.get("event") == "upstream_failures_repeated"]

    for i in range(4):
        assert _chat(r, f"al-{i}").status_code == 502
    _completion(r, "al-3")
    assert alerts() == []  # 4 failures: not yet
    assert _chat(r, "al-4").status_code == 502
    _completion(r, "al-4")
    r.wait_for_log(lambda x: x.get("event") == "upstream_failures_repeated")
    for i in range(5, 12):
        assert _chat(r, f"al-{i}").status_code == 502
    _completion(r, "al-11")
    found = alerts()
    assert len(found) == 1  # at most once a minute
    a = found[0]
    assert a["level"] == "error" and a["failures"] == 5 and a["window_secs"] == 300
    assert a["error_type"] == "connect_error" and a["route"] == CHAT


def test_client_ip_comes_from_forwarding_headers_only_when_sanic_trusts_proxies(
    debug_router: RouterProcess, upstream: FakeUpstream, router_factory: RouterFactory
) -> None:
    def chat(router: RouterProcess, rid: str) -> None:
        with httpx.Client(timeout=10) as c:
            r = c.post(
                router.url + CHAT,
                json={"model": "gpt-4", "messages": []},
                headers={"X-Request-ID": rid, "X-Forwarded-For": "203.0.113.9, 198.51.100.7"},
            )
        assert r.status_code == 200

    rid = "rid-xff-" + uuid.uuid4().hex[:8]
    chat(debug_router, rid)
    assert _completion(debug_router, rid)["client_ip"] == "127.0.0.1"  # not trusted by default
    proxied = router_factory(base_profile(upstream.url), env={"SANIC_PROXIES_COUNT": "1"})
    rid = "rid-xff-" + uuid.uuid4().hex[:8]
    chat(proxied, rid)
    assert _completion(proxied, rid)["client_ip"] == "198.51.100.7"  # one trusted hop
