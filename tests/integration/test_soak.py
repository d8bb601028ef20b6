"""A short soak (bounded: SOAK_SECS of load, four client threads) of mixed traffic: JSON, whole
streams, clients that leave mid-stream, a greedy key that gets 429s, upstream 503s and resets.
Afterwards: no error the router caused, its worker's file descriptors and RSS back to baseline,
and /metrics counting exactly what was sent."""

from __future__ import annotations

import json
import random
import re
import threading
import time
from collections import Counter
from pathlib import Path

import httpx

from tests.conftest import base_profile
from tests.fakes.upstream import FakeUpstream, Recorded, Reply, default_reply, openai_chat_stream
from tests.support import RouterFactory, RouterProcess

SOAK_SECS = 45.0
THREADS = 4
SSE = [("Content-Type", "text/event-stream")]
KINDS = ("json", "stream", "leave", "greedy", "upstream_503", "upstream_reset")
EXPECTED = {  # what each kind may get; anything else is a router-caused error
    "json": {200},
    "stream": {200},
    "leave": {200},
    "greedy": {200, 429},
    "upstream_503": {503},
    "upstream_reset": {502},
}


def upstream_reply(req: Recorded) -> Reply:
    try:
        model = json.loads(req.body).get("model")
    except ValueError:
        model = None
    if model == "fail-503":
        body = b'{"error":{"message":"overloaded","type":"server_error"}}'
        return Reply(status=503, headers=[("Content-Type", "application/json")], body=body)
    if model == "reset":
        return Reply(action="reset")
    if model == "slow-stream":
        events = openai_chat_stream("slow-stream", tuple(f"p{i} " for i in range(6)))
        return Reply(headers=SSE, chunks=[(0.2, e.encode()) for e in events], watch_close=True)
    return default_reply(req)


def worker_pid(router: RouterProcess) -> int:
    """The one Sanic worker's pid, from its own "Starting worker [PID]" log line."""
    m = re.search(r"Starting worker \[(\d+)\]", router.output())
    assert m is not None, router.output()
    return int(m.group(1))


def fds(pid: int) -> int:
    return len(list(Path(f"/proc/{pid}/fd").iterdir()))


def rss_kib(pid: int) -> int:
    m = re.search(r"VmRSS:\s+(\d+)", Path(f"/proc/{pid}/status").read_text())
    assert m is not None
    return int(m.group(1))


def one(client: httpx.Client, url: str, kind: str) -> int:
    chat = "/v1/chat/completions"
    msgs = [{"role": "user", "content": "hi"}]
    if kind == "json":
        return client.post(url + chat, json={"model": "gpt-4", "messages": msgs}).status_code
    if kind == "stream":
        body = {"model": "gpt-4", "messages": msgs, "stream": True}
        with client.stream("POST", url + chat, json=body) as r:
            for _ in r.iter_bytes():
                pass
            return r.status_code
    if kind == "leave":
        body = {"model": "slow-stream", "messages": msgs, "stream": True}
        with client.stream("POST", url + chat, json=body) as r:
            for _ in r.iter_bytes():
                break  # gone after the first bytes
            return r.status_code
    if kind == "greedy":
        headers = {"Authorization": "Bearer greedy-key"}
        body = {"model": "e", "input": "x"}
        return client.post(url + "/v1/embeddings", json=body, headers=headers).status_code
    model = "fail-503" if kind == "upstream_503" else "reset"
    return client.post(url + chat, json={"model": model, "messages": msgs}).status_code


def scrape(url: str) -> dict[tuple[str, str], float]:
    out: dict[tuple[str, str], float] = {}
    for line in httpx.get(url + "/metrics").text.splitlines():
        m = re.match(r"requests_total\{(.*)\} ([0-9.e+]+)$", line)
        if m:
            labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1)))
            key = (labels["route"], labels["status"])
            out[key] = out.get(key, 0) + float(m.group(2))
    return out


def test_soak(
    fake_upstream: FakeUpstream, upstream: FakeUpstream, router_factory: RouterFactory
) -> None:
    upstream.reply_with(upstream_reply)
    profile = base_profile(
        upstream.url,
        endpoints={"/v1/embeddings": {"rateLimit": {"requestsPerMinute": 60, "burst": 3}}},
    )
    r = router_factory(profile)
    with httpx.Client(timeout=30) as c:  # warm up: pools, imports, first allocations
        for kind in KINDS * 3:
            one(c, r.url, kind)
    time.sleep(1)
    pid = worker_pid(r)
    base_fds, base_rss = fds(pid), rss_kib(pid)
    before = scrape(r.url)

    sent: Counter[tuple[str, int]] = Counter()
    problems: list[str] = []
    lock = threading.Lock()
    stop_at = time.monotonic() + SOAK_SECS

    def run(seed: int) -> None:
        rnd = random.Random(seed)
        with httpx.Client(timeout=30) as c:
            while time.monotonic() < stop_at:
                kind = rnd.choice(KINDS)
                try:
                    status = one(c, r.url, kind)
                except httpx.HTTPError as e:
                    status = -1
                    with lock:
                        problems.append(f"{kind}: {e!r}")
                with lock:
                    sent[(kind, status)] += 1
                    if status not in EXPECTED[kind]:
                        problems.append(f"{kind}: {status}")

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(SOAK_SECS + 60)
    assert not problems, problems[:20]
    assert sent[("greedy", 429)] > 0 and sent[("upstream_reset", 502)] > 0

    # Back to baseline once the clients are gone (closing connections takes a moment).
    deadline = time.monotonic() + 15
    while fds(pid) > base_fds + 4 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert fds(pid) <= base_fds + 4, (base_fds, fds(pid))
    assert rss_kib(pid) <= base_rss * 1.25 + 8 * 1024, (base_rss, rss_kib(pid))

    # Metrics: exactly what was sent, by route and status (a client that left mid-stream is
    # 499, or 200 when the router had already sent everything).
    after = scrape(r.url)
    delta = {k: after.get(k, 0) - before.get(k, 0) for k in after}
    chat, emb = "/v1/chat/completions", "/v1/embeddings"
    n = Counter({k: v for k, v in sent.items()})
    assert delta.get((emb, "429"), 0) == n[("greedy", 429)]
    assert delta.get((emb, "200"), 0) == n[("greedy", 200)]
    assert delta.get((chat, "503"), 0) == n[("upstream_503", 503)]
    assert delta.get((chat, "502"), 0) == n[("upstream_reset", 502)]
    left = n[("leave", 200)]
    whole = n[("json", 200)] + n[("stream", 200)]
    assert delta.get((chat, "200"), 0) + delta.get((chat, "499"), 0) == whole + left
    assert delta.get((chat, "499"), 0) > 0
    assert not [x for x in r.logs() if x.get("event") == "router_error"]
