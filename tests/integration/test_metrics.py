"""Prometheus metrics of the real router (SPEC §8): exact names, labels and counts, also with
several workers, bounded cardinality, and METRICS.md / the Grafana dashboard in step with them."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import threading
import time
import uuid
from pathlib import Path

import httpx
import pytest
from prometheus_client import CollectorRegistry

from service import __version__
from service.observability.metrics import Metrics
from tests.conftest import base_profile
from tests.fakes.upstream import FakeUpstream, Reply, openai_chat_stream
from tests.scrape import families, scrape, series, value
from tests.support import RouterFactory, RouterProcess

ROOT = Path(__file__).resolve().parents[2]
CHAT = "/v1/chat/completions"
LATENCY_BUCKETS = ["0.001", "0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1.0",
                   "2.5", "5.0", "10.0", "+Inf"]  # fmt: skip


def _post_chat(c: httpx.Client, url: str, model: str = "gpt-4", **kw: object) -> httpx.Response:
    return c.post(url + CHAT, json={"model": model, "messages": []}, **kw)  # type: ignore[arg-type]


def _connections_by_worker(
    pids: list[int], port: int, socks: list[socket.socket]
) -> dict[int, list[socket.socket]]:
    """Which worker process holds the server side of each client socket (read from /proc: the
    socket inodes each worker has open, and /proc/net/tcp for the connection of each inode)."""
    inode_of: dict[int, str] = {}  # client port -> the server side's inode
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote, inode = fields[1], fields[2], fields[9]
        if int(local.split(":")[1], 16) == port and remote != "00000000:0000":
            inode_of[int(remote.split(":")[1], 16)] = inode
    out: dict[int, list[socket.socket]] = {pid: [] for pid in pids}
    for pid in pids:
        fds = Path(f"/proc/{pid}/fd")
        mine = {os.readlink(f) for f in fds.iterdir() if f.is_symlink()}
        for s in socks:
            if f"socket:[{inode_of.get(s.getsockname()[1])}]" in mine:
                out[pid].append(s)
    assert sum(len(v) for v in out.values()) == len(socks), out
    return out


def _wait_for(predicate: object, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.05)
    raise AssertionError("condition not reached")


# -- 1. the five metrics of the original design ---------------------------------------------------


def test_the_five_original_metrics_have_exact_names_types_and_labels(
    router_factory: RouterFactory, upstream: FakeUpstream
) -> None:
    # A router of its own: the counts below are exact from zero, whatever the module's other
    # tests sent to the shared one before.
    router = router_factory(base_profile(upstream.url))
    with httpx.Client() as c:
        assert _post_chat(c, router.url).status_code == 200
        upstream.reply_with(Reply(action="reset"))
        assert _post_chat(c, router.url).status_code == 502
    text = scrape(router.url)
    for line in (
        "# TYPE requests_total counter",
        "# TYPE upstream_errors_total counter",
        "# TYPE request_latency_seconds histogram",
        "# TYPE active_connections gauge",
        "# TYPE rate_limiter_buckets gauge",
    ):
        assert line in text.splitlines(), line
    fams = families(text)
    labels = {n: {k for s in fams[n].samples for k in s.labels} for n in fams}
    assert labels["requests"] == {"route", "method", "status"}
    assert labels["upstream_errors"] == {"error_type"}
    assert labels["request_latency_seconds"] == {"route", "le"}
    assert labels["active_connections"] == set()
    assert labels["rate_limiter_buckets"] == set()
    buckets = [
        s.labels["le"]
        for s in fams["request_latency_seconds"].samples
        if s.name.endswith("_bucket") and s.labels["route"] == CHAT
    ]
    assert buckets == LATENCY_BUCKETS
    assert value(text, "requests_total", route=CHAT, method="POST", status="200") == 1
    assert value(text, "requests_total", route=CHAT, method="POST", status="502") == 1
    assert value(text, "upstream_errors_total", error_type="io_error") == 1
    assert value(text, "request_latency_seconds_count", route=CHAT) == 2


def test_route_is_the_pattern_or_unmatched_and_status_is_what_the_client_got(
    router: RouterProcess, upstream: FakeUpstream
) -> None:
    before = scrape(router.url)
    with httpx.Client() as c:
        assert c.get(router.url + "/no/such/" + uuid.uuid4().hex).status_code == 404
        assert c.delete(router.url + "/health").status_code == 405
        # a pattern's route (the stored responses): its pattern, never the id
        stored = "/v1/responses/resp_" + uuid.uuid4().hex
        assert c.put(router.url + stored).status_code == 405
        assert c.post(router.url + stored + "/input_items").status_code == 405
        # one model's path (an id may hold slashes), and known paths with a trailing slash
        assert c.post(router.url + "/v1/models/org/" + uuid.uuid4().hex).status_code == 405
        assert c.get(router.url + CHAT + "/").status_code == 405
        assert c.post(router.url + stored + "/").status_code == 405
        assert c.head(router.url + "/health").status_code == 200
        assert c.post(router.url + CHAT, content=b"{oops").status_code == 400
        upstream.reply_with(Reply(status=503, body=b"{}", headers=[("Content-Type", "x/y")]))
        assert _post_chat(c, router.url).status_code == 503
        upstream.reply_with(Reply(status=429, body=b"{}"))
        assert _post_chat(c, router.url).status_code == 429
    after = scrape(router.url)

    def delta(**labels: str) -> float:
        return value(after, "requests_total", **labels) - value(before, "requests_total", **labels)

    assert delta(route="unmatched", method="GET", status="404") == 1
    assert delta(route="/health", method="DELETE", status="405") == 1
    assert delta(route="/v1/responses/<response_id:str>", method="PUT", status="405") == 1
    assert (
        delta(route="/v1/responses/<response_id:str>/input_items", method="POST", status="405") == 1
    )
    assert delta(route="/v1/models/<model_id:path>", method="POST", status="405") == 1
    assert delta(route=CHAT, method="GET", status="405") == 1
    assert delta(route="/v1/responses/<response_id:str>", method="POST", status="405") == 1
    assert delta(route="unmatched", method="POST", status="405") == 0
    assert stored.rpartition("/")[2] not in after
    assert delta(route="/health", method="HEAD", status="200") == 1
    assert delta(route=CHAT, method="POST", status="400") == 1
    assert delta(route=CHAT, method="POST", status="503") == 1
    assert delta(route=CHAT, method="POST", status="429") == 1
    assert not any("/no/such" in line for line in after.splitlines())
    up_err = value(after, "upstream_errors_total", error_type="upstream_error")
    assert up_err - value(before, "upstream_errors_total", error_type="upstream_error") == 2


def test_a_streams_latency_ends_with_its_last_byte(
    router: RouterProcess, upstream: FakeUpstream
) -> None:
    events = openai_chat_stream("up-model-4")
    chunks = [(0.0, events[0].encode())] + [(0.2, e.encode()) for e in events[1:]]
    upstream.reply_with(Reply(headers=[("Content-Type", "text/event-stream")], chunks=chunks))
    before = scrape(router.url)
    with httpx.Client(timeout=10) as c:
        r = c.post(router.url + CHAT, json={"model": "gpt-4", "messages": [], "stream": True})
    assert r.status_code == 200 and r.text.endswith("data: [DONE]\n\n")
    after = scrape(router.url)
    pause = 0.2 * (len(events) - 1)  # the upstream paused this long between events

    def d(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert d("request_latency_seconds_count", route=CHAT) == 1
    assert d("request_latency_seconds_sum", route=CHAT) >= pause
    assert d("upstream_latency_seconds_sum", route=CHAT) >= pause


def test_metrics_counts_its_own_requests(router: RouterProcess) -> None:
    first = value(scrape(router.url), "requests_total", route="/metrics", status="200")
    second = value(scrape(router.url), "requests_total", route="/metrics", status="200")
    assert second == first + 1


def test_recording_lives_in_signal_listeners_not_in_handlers(router: RouterProcess) -> None:
    # A 404 and a 405 never reach a handler, yet they are counted (previous test); and no route
    # or relay module touches the request metrics itself.
    for path in (ROOT / "service" / "routes").glob("*.py"):
        text = path.read_text()
        for name in ("requests_total", "request_latency_seconds", "active_connections"):
            assert name not in text, f"{path.name} records {name} itself"
    lifecycle = (ROOT / "service/observability/lifecycle.py").read_text()
    for sig in ("http.lifecycle.request", "http.lifecycle.response", "http.lifecycle.begin",
                "http.lifecycle.complete"):  # fmt: skip
        assert f'@plain_listener(app, "{sig}")' in lifecycle  # (app.signal, for a plain function)


def test_a_client_that_leaves_is_counted_as_499(
    router: RouterProcess, upstream: FakeUpstream
) -> None:
    upstream.reply_with(Reply(delay=1.0))
    before = scrape(router.url)
    with pytest.raises(httpx.ReadTimeout), httpx.Client(timeout=0.3) as c:
        _post_chat(c, router.url)
    rec = router.wait_for_log(
        lambda r: r.get("event") == "request_completed" and r.get("status_code") == 499
    )
    assert rec["route"] == CHAT
    after = scrape(router.url)
    assert (
        value(after, "requests_total", route=CHAT, status="499")
        - value(before, "requests_total", route=CHAT, status="499")
        == 1
    )
    assert value(after, "requests_total", route=CHAT, status="500") == 0
    assert value(after, "in_flight_requests") == 1  # only this scrape


# -- 3. bounded cardinality -----------------------------------------------------------------------


def test_series_do_not_grow_with_random_paths_or_models(
    router: RouterProcess, upstream: FakeUpstream
) -> None:
    with httpx.Client(base_url=router.url, timeout=10) as c:
        assert c.get("/warm/" + uuid.uuid4().hex).status_code == 404
        assert _post_chat(c, "", model="warm-" + uuid.uuid4().hex).status_code == 200
        scrape(router.url)  # a scrape is counted after it: the baseline's own series exist
        baseline = series(scrape(router.url))
        for _ in range(1000):
            assert c.get("/" + uuid.uuid4().hex + "/" + uuid.uuid4().hex[:8]).status_code == 404
        for _ in range(1000):
            assert _post_chat(c, "", model="m-" + uuid.uuid4().hex).status_code == 200
    text = scrape(router.url)
    assert series(text) == baseline
    assert value(text, "tokens_total", type="prompt", model="other") >= 7 * 1001


# -- 4. beyond the original: what LLM operators need ----------------------------------------------


def test_upstream_latency_overhead_and_tokens_per_known_model(
    router: RouterProcess, upstream: FakeUpstream
) -> None:
    before = scrape(router.url)
    with httpx.Client(base_url=router.url) as c:
        assert _post_chat(c, "", model="gpt-4").status_code == 200  # mapped to up-model-4 (known)
        assert _post_chat(c, "", model="extra-model").status_code == 200  # advertised (known)
        r = c.post("/v1/messages", json={"model": "claude-x", "max_tokens": 5, "messages": []})
        assert r.status_code == 200  # unknown model: "other"; Anthropic usage field names
    after = scrape(router.url)

    def d(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert d("tokens_total", type="prompt", model="up-model-4") == 7
    assert d("tokens_total", type="completion", model="up-model-4") == 3
    assert d("tokens_total", type="prompt", model="extra-model") == 7
    assert d("tokens_total", type="prompt", model="other") == 9
    assert d("tokens_total", type="completion", model="other") == 4
    assert d("upstream_latency_seconds_count", route=CHAT) == 2
    assert d("router_overhead_seconds_count", route=CHAT) == 2
    assert d("upstream_latency_seconds_count", route="/v1/messages") == 1
    # upstream time + router time is the request's time
    total = d("request_latency_seconds_sum", route=CHAT)
    parts = d("upstream_latency_seconds_sum", route=CHAT) + d(
        "router_overhead_seconds_sum", route=CHAT
    )
    assert parts == pytest.approx(total, rel=1e-6)
    assert d("upstream_latency_seconds_count", route="/health") == 0
    # Answered by the router alone (invalid JSON): counted, and in neither of the two
    # histograms (METRICS.md: router_overhead_seconds covers requests that reached an upstream).
    assert httpx.post(router.url + CHAT, content=b"{not json").status_code == 400
    final = scrape(router.url)
    for name, more in (
        ("request_latency_seconds_count", 1),
        ("router_overhead_seconds_count", 0),
        ("upstream_latency_seconds_count", 0),
    ):
        assert value(final, name, route=CHAT) - value(after, name, route=CHAT) == more, name


def test_in_flight_requests_and_build_info(router: RouterProcess, upstream: FakeUpstream) -> None:
    upstream.reply_with(
        Reply(delay=1.0, body=b"{}", headers=[("Content-Type", "application/json")])
    )
    assert value(scrape(router.url), "in_flight_requests") == 1  # the scrape itself
    done = threading.Event()

    def slow() -> None:
        with httpx.Client(timeout=10) as c:
            _post_chat(c, router.url)
        done.set()

    t = threading.Thread(target=slow)
    t.start()
    _wait_for(lambda: len(upstream.requests) == 1)
    assert value(scrape(router.url), "in_flight_requests") == 2
    t.join(10)
    assert done.is_set()
    text = scrape(router.url)
    assert value(text, "in_flight_requests") == 1
    info = [s for s in families(text)["build_info"].samples]
    assert len(info) == 1 and info[0].value == 1
    assert info[0].labels["version"] == __version__


def test_config_reload_results_are_counted(router: RouterProcess) -> None:
    path = router.profile_path
    original = path.read_text()
    try:
        good = json.loads(original)
        good["models"] = [*good.get("models", []), "reloaded-model"]
        path.write_text(json.dumps(good))
        _wait_for(lambda: value(scrape(router.url), "config_reloads_total") == 1)
        path.write_text('{"name": "broken", "baseUrl": 12}')
        _wait_for(lambda: value(scrape(router.url), "config_reload_failures_total") == 1)
        assert value(scrape(router.url), "config_reloads_total") == 1
    finally:
        path.write_text(original)
    _wait_for(lambda: value(scrape(router.url), "config_reloads_total") == 2)


# -- 2. exact with several workers ----------------------------------------------------------------


@pytest.fixture(scope="module")
def three_workers(
    fake_upstream: FakeUpstream,
    tmp_path_factory: pytest.TempPathFactory,
    module_router_factory: RouterFactory,
) -> tuple[RouterProcess, Path]:
    mp_dir = tmp_path_factory.mktemp("mw") / "prom"
    env = {"PROMETHEUS_MULTIPROC_DIR": str(mp_dir)}
    return module_router_factory(base_profile(fake_upstream.url), workers=3, env=env), mp_dir


def _new_connection_get(port: int, path: str) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    return data


def test_three_workers_count_every_request_exactly_once(
    three_workers: tuple[RouterProcess, Path], upstream: FakeUpstream
) -> None:
    r, mp_dir = three_workers
    n = 90
    before = scrape(r.url)

    def send(_: int) -> int:
        with httpx.Client(timeout=10, headers={"Connection": "close"}) as c:
            return _post_chat(c, r.url).status_code

    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(6) as pool:
        assert list(pool.map(send, range(n))) == [200] * n
    after = scrape(r.url)
    assert (
        value(after, "requests_total", route=CHAT) - value(before, "requests_total", route=CHAT)
        == n
    )
    assert (
        value(after, "request_latency_seconds_count", route=CHAT)
        - value(before, "request_latency_seconds_count", route=CHAT)
        == n
    )
    assert (
        value(after, "request_latency_seconds_bucket", route=CHAT, le="+Inf")
        - value(before, "request_latency_seconds_bucket", route=CHAT, le="+Inf")
        == n
    )
    assert len(upstream.requests) == n
    # the sum really spans several processes' files
    pids = {m.group(1) for f in os.listdir(mp_dir) if (m := re.match(r"counter_(\d+)\.db", f))}
    assert len(pids) >= 2, pids


def test_active_connections_returns_to_its_base(three_workers: tuple[RouterProcess, Path]) -> None:
    r, _ = three_workers
    base = value(scrape(r.url), "active_connections")
    assert base == 1  # the scrape's own connection
    socks = []
    try:
        for _ in range(12):
            s = socket.create_connection(("127.0.0.1", r.port), timeout=10)
            s.sendall(b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n")
            assert s.recv(65536).startswith(b"HTTP/1.1 200")
            socks.append(s)
        assert value(scrape(r.url), "active_connections") == base + 12
    finally:
        for s in socks:
            s.close()
    _wait_for(lambda: value(scrape(r.url), "active_connections") == base)


def test_a_metrics_file_not_yet_sized_does_not_fail_the_scrape(
    three_workers: tuple[RouterProcess, Path],
) -> None:
    """prometheus-client creates a worker's file empty and sizes it a moment later; a scrape in
    between (a worker starting, or one killed in that moment, whose file stays empty for good)
    made /metrics a 500 (prometheus/client_python#1199). Such a file holds no value yet."""
    r, mp_dir = three_workers
    before = value(scrape(r.url), "requests_total", route="/health", method="GET", status="200")
    empty = [mp_dir / "counter_2147480001.db", mp_dir / "histogram_2147480001.db",
             mp_dir / "gauge_livesum_2147480001.db"]  # fmt: skip
    try:
        for f in empty:
            f.write_bytes(b"")
        assert httpx.get(f"{r.url}/health").status_code == 200
        for accept in ("application/openmetrics-text", "text/plain"):
            res = httpx.get(f"{r.url}/metrics", headers={"Accept": accept})
            assert res.status_code == 200, res.text
        after = value(res.text, "requests_total", route="/health", method="GET", status="200")
        assert after == before + 1  # the other workers' values are all still there
    finally:
        for f in empty:
            f.unlink(missing_ok=True)


def test_multiproc_dir_is_fresh_at_start_and_killed_workers_drop_out(
    fake_upstream: FakeUpstream, tmp_path: Path, router_factory: RouterFactory
) -> None:
    mp_dir = tmp_path / "prom"
    env = {"PROMETHEUS_MULTIPROC_DIR": str(mp_dir)}
    first = router_factory(base_profile(fake_upstream.url), workers=2, env=env)
    with httpx.Client() as c:
        for _ in range(5):
            assert _post_chat(c, first.url).status_code == 200
        assert value(scrape(first.url), "requests_total", route=CHAT) == 5
    first.stop()
    assert any(mp_dir.glob("counter_*.db"))  # the previous run's files are still there ...

    r = router_factory(first.profile_path, workers=2, env=env)
    text = scrape(r.url)  # ... but a new run starts from zero
    assert value(text, "requests_total", route=CHAT) == 0
    pids = [int(p) for p in re.findall(r"Starting worker \[(\d+)\]", r.output())]
    assert len(pids) == 2
    socks: list[socket.socket] = []
    try:
        for _ in range(10):
            s = socket.create_connection(("127.0.0.1", r.port), timeout=10)
            s.sendall(b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n")
            assert s.recv(65536).startswith(b"HTTP/1.1 200")
            socks.append(s)
        assert value(scrape(r.url), "active_connections") == 11
        # The kernel may hand every connection to one worker: kill one that holds some.
        held = _connections_by_worker(pids, r.port, socks)
        victim = max(held, key=lambda pid: len(held[pid]))
        os.kill(victim, signal.SIGKILL)  # no after_server_stop: its files stay behind

        def survivors() -> int:
            n = 0
            for s in socks:
                s.setblocking(False)
                try:
                    if s.recv(1) == b"":
                        continue  # closed by the kernel when its worker died
                except BlockingIOError:
                    pass
                except ConnectionError:
                    continue
                n += 1
            return n

        _wait_for(lambda: survivors() == 10 - len(held[victim]))
        alive = survivors()
        # the dead worker's connections no longer count; the survivor's still do
        _wait_for(lambda: value(scrape(r.url), "active_connections") == alive + 1)
    finally:
        for s in socks:
            s.close()


# -- 8. METRICS.md and the dashboard match what /metrics serves -----------------------------------


def _documented() -> dict[str, tuple[str, set[str]]]:
    """name -> (type, labels) from METRICS.md's metric table."""
    out: dict[str, tuple[str, set[str]]] = {}
    row = re.compile(r"^\|\s*`([a-z_]+)`\s*\|\s*(counter|gauge|histogram)\s*\|([^|]*)\|")
    for line in (ROOT / "METRICS.md").read_text().splitlines():
        m = row.match(line)
        if m:
            labels = set(re.findall(r"`([a-z_]+)`", m.group(3)))
            out[m.group(1)] = (m.group(2), labels)
    return out


def _declared() -> dict[str, tuple[str, set[str]]]:
    m = Metrics(CollectorRegistry())
    out = {}
    for attr in vars(m).values():
        name = getattr(attr, "_name", None)
        if name is None:
            continue
        kind = attr._type
        full = name + "_total" if kind == "counter" else name
        out[full] = (kind, set(attr._labelnames))
    return out


def test_metrics_md_documents_exactly_the_declared_and_served_metrics(
    router: RouterProcess,
) -> None:
    documented = _documented()
    assert documented == _declared()
    served = families(scrape(router.url))
    for fam in served.values():
        name = fam.name + "_total" if fam.type == "counter" else fam.name
        assert name in documented, name
        assert documented[name][0] == fam.type
    text = (ROOT / "METRICS.md").read_text()
    for question in ("error rate", "p99", "429", "tokens per minute"):
        assert question in text.lower()


def test_grafana_dashboard_queries_only_served_metric_names() -> None:
    dash = json.loads((ROOT / "dashboards" / "api-router.json").read_text())
    exprs = []

    def walk(node: object) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("expr"), str):
                exprs.append(node["expr"])
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(dash)
    assert exprs
    declared = _declared()
    valid = set(declared)
    for name, (kind, _) in declared.items():
        if kind == "histogram":
            valid |= {name + "_bucket", name + "_sum", name + "_count"}
    # every selector in the dashboard carries a label matcher, so a metric name is what precedes "{"
    used = {name for e in exprs for name in re.findall(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\{", e)}
    assert used <= valid, used - valid
    for must in ("requests_total", "upstream_errors_total", "request_latency_seconds_bucket",
                 "active_connections", "rate_limiter_buckets", "tokens_total"):  # fmt: skip
        assert must in used, must


def test_usage_under_both_names_is_counted_once(
    router: RouterProcess, upstream: FakeUpstream
) -> None:
    """An upstream (a compatibility layer) that reports its usage under OpenAI's and Anthropic's
    names at once: the same 7 and 3 tokens, counted once, as the token limiter counts them."""
    from tests.fakes.upstream import Reply

    usage = {"prompt_tokens": 7, "completion_tokens": 3, "input_tokens": 7, "output_tokens": 3}
    answer = {"id": "c", "object": "chat.completion", "model": "up-model-4", "usage": usage,
              "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"},
                           "finish_reason": "stop"}]}  # fmt: skip
    upstream.reply_with(
        Reply(headers=[("Content-Type", "application/json")], body=json.dumps(answer).encode())
    )
    before = scrape(router.url)
    with httpx.Client(base_url=router.url) as c:
        assert _post_chat(c, "", model="gpt-4").status_code == 200
    after = scrape(router.url)
    for kind, n in (("prompt", 7), ("completion", 3)):
        labels = {"type": kind, "model": "up-model-4"}
        assert value(after, "tokens_total", **labels) - value(before, "tokens_total", **labels) == n


ANTHROPIC_CACHED = {"input_tokens": 13, "cache_read_input_tokens": 100,
                    "cache_creation_input_tokens": 50, "output_tokens": 5}  # fmt: skip


@pytest.mark.parametrize("stream", [False, True])
def test_anthropic_cache_tokens_are_prompt_tokens(
    router: RouterProcess, upstream: FakeUpstream, stream: bool
) -> None:
    """Anthropic reports cached prompt tokens apart from `input_tokens`: 13 + 100 + 50 prompt
    tokens, as the token limits charge them and a translated client is told (docs/tokens.md);
    the metric counted 13."""
    from tests.fakes.upstream import sse

    message = {"id": "msg_1", "type": "message", "role": "assistant", "model": "up-model-4",
               "content": [{"type": "text", "text": "hi"}], "stop_reason": "end_turn",
               "stop_sequence": None, "usage": ANTHROPIC_CACHED}  # fmt: skip
    if stream:
        start = dict(
            message, content=[], stop_reason=None, usage=dict(ANTHROPIC_CACHED, output_tokens=1)
        )
        events = [
            ("message_start", {"type": "message_start", "message": start}),
            ("content_block_start", {"type": "content_block_start", "index": 0,
                                     "content_block": {"type": "text", "text": ""}}),
            ("content_block_delta", {"type": "content_block_delta", "index": 0,
                                     "delta": {"type": "text_delta", "text": "hi"}}),
            ("content_block_stop", {"type": "content_block_stop", "index": 0}),
            ("message_delta", {"type": "message_delta", "usage": {"output_tokens": 5},
                               "delta": {"stop_reason": "end_turn", "stop_sequence": None}}),
            ("message_stop", {"type": "message_stop"}),
        ]  # fmt: skip
        chunks = sse(*(f"event: {e}\ndata: {json.dumps(d)}\n\n" for e, d in events))
        reply = Reply(headers=[("Content-Type", "text/event-stream")], chunks=chunks)
    else:
        reply = Reply(
            headers=[("Content-Type", "application/json")], body=json.dumps(message).encode()
        )
    upstream.reply_with(reply)
    body = {"model": "gpt-4", "max_tokens": 10, "stream": stream,
            "messages": [{"role": "user", "content": "hi"}]}  # fmt: skip
    before = scrape(router.url)
    with httpx.Client(base_url=router.url) as c:
        resp = c.post("/v1/messages", json=body, headers={"x-api-key": "k"})
        assert resp.status_code == 200, resp.text
    after = scrape(router.url)
    for kind, n in (("prompt", 163), ("completion", 5)):
        labels = {"type": kind, "model": "up-model-4"}
        got = value(after, "tokens_total", **labels) - value(before, "tokens_total", **labels)
        assert got == n, (kind, got)
