"""Whole answers past WHOLE_ANSWER_MAX_BYTES are relayed as they arrive (service.proxy.passthrough):
the client gets the upstream's bytes, its usage is still counted, and the worker never holds the
whole answer (it held about three times its size: a 150 MB embeddings answer took 512 MB)."""

from __future__ import annotations

import gzip
import json

import httpx
import pytest

from service.proxy.passthrough import USAGE_TAIL_BYTES, WHOLE_ANSWER_MAX_BYTES, UsageTail
from tests.conftest import base_profile
from tests.fakes.upstream import FakeUpstream, Reply
from tests.scrape import scrape, value
from tests.support import RouterFactory, RouterProcess, status_kib, worker_pids

USAGE = {"prompt_tokens": 8, "total_tokens": 8}
PIECE = 1024 * 1024


def embeddings(size: int) -> bytes:
    """An embeddings answer (base64 vectors, as the openai SDK asks for them) of about `size`
    bytes, its usage at the end as OpenAI writes it."""
    vector = "A" * 4096
    n = size // (len(vector) + 60)
    data = [{"object": "embedding", "index": i, "embedding": vector} for i in range(n)]
    return json.dumps(
        {"object": "list", "data": data, "model": "up-model-4", "usage": USAGE}
    ).encode()


def prompt_tokens(router: RouterProcess) -> float:
    return value(scrape(router.url), "tokens_total", type="prompt", model="up-model-4")


def post(router: RouterProcess, rid: str) -> httpx.Response:
    return httpx.post(
        router.url + "/v1/embeddings",
        json={"model": "gpt-4", "input": "x"},
        headers={"X-Request-ID": rid},
        timeout=60,
    )


def test_a_large_answer_with_a_length_is_relayed_whole_and_counted(
    router: RouterProcess, upstream: FakeUpstream
) -> None:
    body = embeddings(WHOLE_ANSWER_MAX_BYTES + 3 * PIECE)
    upstream.reply_with(Reply(headers=[("Content-Type", "application/json")], body=body))
    before = prompt_tokens(router)
    resp = post(router, "large-cl")
    assert resp.status_code == 200
    assert resp.headers["content-length"] == str(len(body))
    assert resp.headers["x-request-id"] == "large-cl"
    assert "router;dur=" in resp.headers["server-timing"]
    assert resp.content == body
    line = router.wait_for_log(lambda r: r.get("request_id") == "large-cl")
    assert line["status_code"] == 200 and line.get("error_type") is None
    assert prompt_tokens(router) == before + 8


@pytest.mark.parametrize("coding", [None, "br"])
def test_a_large_chunked_answer_reaches_the_client_before_the_upstream_finished(
    router: RouterProcess, upstream: FakeUpstream, coding: str | None
) -> None:
    """The upstream holds its last piece back: the client has more than the limit before the
    upstream sent it (a router that reads whole answers first sends nothing until then). In a
    coding the router cannot read (`br`), judged by its size as sent; its usage is not read."""
    body = embeddings(WHOLE_ANSWER_MAX_BYTES + 3 * PIECE)
    pieces = [(0.0, body[i : i + PIECE]) for i in range(0, len(body), PIECE)]
    pieces[-1] = (3.0, pieces[-1][1])
    headers = [("Content-Type", "application/json")]
    if coding is not None:
        headers.append(("Content-Encoding", coding))
    upstream.reply_with(Reply(headers=headers, chunks=pieces))
    before = prompt_tokens(router)
    got = b""
    sent_when_past_the_limit = None
    sent_before = upstream.body_bytes_sent  # (the fake counts over its life)
    with httpx.stream(
        "POST",
        router.url + "/v1/embeddings",
        json={"model": "gpt-4", "input": "x"},
        headers={"X-Request-ID": "large-chunked"},
        timeout=60,
    ) as resp:
        assert resp.status_code == 200
        for chunk in resp.iter_raw():
            got += chunk
            if sent_when_past_the_limit is None and len(got) > WHOLE_ANSWER_MAX_BYTES + PIECE:
                sent_when_past_the_limit = upstream.body_bytes_sent - sent_before
    assert got == body
    assert sent_when_past_the_limit is not None and sent_when_past_the_limit < len(body)
    router.wait_for_log(lambda r: r.get("request_id") == "large-chunked")
    assert prompt_tokens(router) == before + (8 if coding is None else 0)


def test_a_large_answer_cut_by_the_upstream_is_cut_for_the_client(
    router: RouterProcess, upstream: FakeUpstream
) -> None:
    body = embeddings(WHOLE_ANSWER_MAX_BYTES + 3 * PIECE)
    pieces = [(0.0, body[i : i + PIECE]) for i in range(0, len(body), PIECE)]
    upstream.reply_with(
        Reply(headers=[("Content-Type", "application/json")], chunks=pieces, action="close_mid")
    )
    with pytest.raises(httpx.RemoteProtocolError):  # never a body that looks whole
        post(router, "large-cut")
    line = router.wait_for_log(lambda r: r.get("request_id") == "large-cut")
    assert line["status_code"] == 200 and line["error_type"] == "stream_error"
    assert post_small_works(router, upstream)


def post_small_works(router: RouterProcess, upstream: FakeUpstream) -> bool:
    small = json.dumps({"object": "list", "data": [], "model": "m", "usage": USAGE}).encode()
    upstream.reply_with(Reply(headers=[("Content-Type", "application/json")], body=small))
    return post(router, "small-after").content == small


def test_the_usage_tail_reads_the_last_usage_in_plain_and_compressed_text() -> None:
    body = embeddings(3 * USAGE_TAIL_BYTES)
    for coding, data in (("identity", body), ("gzip", gzip.compress(body))):
        tail = UsageTail(coding)
        for i in range(0, len(data), 1000):
            tail.feed(data[i : i + 1000])
        assert tail.usage() == USAGE, coding
    # a "usage" key inside a string, or one whose value was cut away, is not it
    tail = UsageTail(None)
    tail.feed(b'{"text": "\\"usage\\": {\\"x\\": 1}", "usage": {"input_tokens": 3}, "z": "usage"}')
    assert tail.usage() == {"input_tokens": 3}
    tail = UsageTail("br")  # a coding the router cannot read: no usage, rather than a wrong one
    tail.feed(body)
    assert tail.usage() is None


def test_a_large_answer_never_sits_whole_in_the_worker(
    router_factory: RouterFactory, upstream: FakeUpstream
) -> None:
    """A 96 MiB answer: the worker's peak memory grows by what it holds at once (up to the
    limit, read before the relay begins), not by the answer (read whole it grew by 2-3 times
    the answer)."""
    router = router_factory(base_profile(upstream.url))
    [pid] = worker_pids(router)
    small = json.dumps({"object": "list", "data": [], "model": "m", "usage": USAGE}).encode()
    upstream.reply_with(Reply(headers=[("Content-Type", "application/json")], body=small))
    assert post(router, "warm").content == small
    body = embeddings(6 * WHOLE_ANSWER_MAX_BYTES)
    upstream.reply_with(Reply(headers=[("Content-Type", "application/json")], body=body))
    before = status_kib(pid, "VmHWM")
    assert post(router, "large-memory").content == body
    grew = (status_kib(pid, "VmHWM") - before) * 1024
    assert grew < len(body) // 3, (grew, len(body))


def test_a_gzip_answer_is_judged_by_its_decoded_size(
    router_factory: RouterFactory, upstream: FakeUpstream
) -> None:
    """96 MiB of JSON that gzip makes small: read whole, it was decoded and parsed whole (the
    client offered gzip, as the openai SDK does). Relayed as the upstream sent it, its usage
    read from its decoded tail."""
    router = router_factory(base_profile(upstream.url))
    [pid] = worker_pids(router)
    body = embeddings(6 * WHOLE_ANSWER_MAX_BYTES)
    packed = gzip.compress(body, compresslevel=1)
    assert len(packed) < WHOLE_ANSWER_MAX_BYTES
    headers = [("Content-Type", "application/json"), ("Content-Encoding", "gzip")]
    upstream.reply_with(Reply(headers=headers, body=packed))
    before = status_kib(pid, "VmHWM")
    tokens = prompt_tokens(router)
    resp = httpx.post(
        router.url + "/v1/embeddings",
        json={"model": "gpt-4", "input": "x"},
        headers={"X-Request-ID": "large-gzip", "Accept-Encoding": "gzip"},
        timeout=60,
    )
    assert resp.status_code == 200 and resp.headers["content-encoding"] == "gzip"
    assert resp.content == body  # (httpx decoded what the router relayed)
    grew = (status_kib(pid, "VmHWM") - before) * 1024
    assert grew < len(body) // 3, (grew, len(body))
    router.wait_for_log(lambda r: r.get("request_id") == "large-gzip")
    assert prompt_tokens(router) == tokens + 8
