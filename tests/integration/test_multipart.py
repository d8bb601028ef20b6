"""Multipart audio routes through the real router subprocess (SPEC §5, issue 3 point 7): the real
openai SDK with a WAV made here, byte-exact forwarding with the client's boundary, the model
rewrite, 413 / 400, and a 100 MB upload that the router streams instead of holding."""

from __future__ import annotations

import io
import json
import select
import socket
import time
import wave
from collections.abc import Iterator

import httpx
import openai
import pytest

from tests.conftest import base_profile
from tests.fakes.upstream import FakeUpstream, Reply
from tests.integration.test_streaming import RssPeak, worker_pids
from tests.scrape import scrape
from tests.scrape import value as metric_value
from tests.support import RouterFactory, RouterProcess

SMALL_LIMIT = 1024 * 1024
BIG_LIMIT = 256 * 1024 * 1024


@pytest.fixture(scope="module")
def mrouter(fake_upstream: FakeUpstream, module_router_factory: RouterFactory) -> RouterProcess:
    env = {"API_ROUTER_MAX_BODY_BYTES": str(BIG_LIMIT)}
    return module_router_factory(base_profile(fake_upstream.url), env=env)


@pytest.fixture(scope="module")
def small_router(
    fake_upstream: FakeUpstream, module_router_factory: RouterFactory
) -> RouterProcess:
    env = {"API_ROUTER_MAX_BODY_BYTES": str(SMALL_LIMIT)}
    return module_router_factory(base_profile(fake_upstream.url), env=env)


def wav_bytes(seconds: float = 0.2, rate: int = 16000) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        frames = bytearray()
        for i in range(int(seconds * rate)):
            frames += ((i * 37) % 2000 - 1000).to_bytes(2, "little", signed=True)
        w.writeframes(bytes(frames))
    return buf.getvalue()


class Captured:
    """An openai client whose exact requests are kept (an httpx event hook sees each one)."""

    def __init__(self, router: RouterProcess) -> None:
        self.requests: list[httpx.Request] = []

        def hook(request: httpx.Request) -> None:
            request.read()
            self.requests.append(request)

        self.http = httpx.Client(event_hooks={"request": [hook]}, timeout=30)
        self.client = openai.OpenAI(
            base_url=router.url + "/v1", api_key="sk-audio", max_retries=0, http_client=self.http
        )

    def __enter__(self) -> Captured:
        return self

    def __exit__(self, *exc: object) -> None:
        self.http.close()


def form(boundary: bytes, parts: list[tuple[str, str | None, bytes]]) -> bytes:
    out = b""
    for name, filename, value in parts:
        disp = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        out += b"--" + boundary + b"\r\nContent-Disposition: " + disp.encode() + b"\r\n"
        if filename:
            out += b"Content-Type: audio/wav\r\n"
        out += b"\r\n" + value + b"\r\n"
    return out + b"--" + boundary + b"--\r\n"


def test_openai_transcription_keeps_boundary_and_parts_and_maps_the_model(
    mrouter: RouterProcess, upstream: FakeUpstream
) -> None:
    audio = wav_bytes()
    with Captured(mrouter) as cap:
        result = cap.client.audio.transcriptions.create(
            model="whisper-1", file=("clip.wav", audio, "audio/wav"), language="en"
        )
    assert result.text == "hello world"
    sent = cap.requests[-1]
    got = upstream.last
    assert got.path == "/v1/audio/transcriptions"
    assert got.header("content-type") == sent.headers["content-type"]  # the client's boundary
    expected = sent.content.replace(b"\r\n\r\nwhisper-1\r\n", b"\r\n\r\nup-whisper\r\n", 1)
    assert expected != sent.content
    assert got.body == expected  # every part byte for byte, only the model value changed
    assert audio in got.body
    assert got.header("content-length") == str(len(expected))
    assert got.header("transfer-encoding") is None
    assert got.header("authorization") == "Bearer sk-audio"
    line = mrouter.wait_for_log(
        lambda r: (
            r.get("event") == "request_completed" and r.get("route") == "/v1/audio/transcriptions"
        )
    )
    assert line["model"] == "whisper-1" and line["status_code"] == 200


def test_openai_translation_with_an_unmapped_model_is_forwarded_unchanged(
    mrouter: RouterProcess, upstream: FakeUpstream
) -> None:
    # this openai release marks audio.translations deprecated; the route must still work for it
    with Captured(mrouter) as cap, pytest.warns(DeprecationWarning):
        result = cap.client.audio.translations.create(
            model="my-own-model", file=("clip.wav", wav_bytes(0.1), "audio/wav"), prompt="hi"
        )
    assert result.text == "hello world"
    assert upstream.last.path == "/v1/audio/translations"
    assert upstream.last.body == cap.requests[-1].content


def test_model_part_after_the_file_and_a_chunked_upload(
    mrouter: RouterProcess, upstream: FakeUpstream
) -> None:
    boundary = b"xYz-123_boundary"
    audio = b"RIFF" + bytes(range(256)) * 12_000  # ~3 MB, with CR/LF and dashes inside
    body = form(boundary, [("file", "a.wav", audio), ("model", None, b"whisper-1")])
    expected = form(boundary, [("file", "a.wav", audio), ("model", None, b"up-whisper")])
    ctype = "multipart/form-data; boundary=" + boundary.decode()
    r = httpx.post(
        mrouter.url + "/v1/audio/transcriptions",
        content=body,
        headers={"Content-Type": ctype},
        timeout=30,
    )
    assert r.status_code == 200
    assert upstream.last.body == expected
    # the model part came after 3 MB: the router did not hold the file to learn the new length,
    # it sent the body chunked, rewritten on the fly
    assert upstream.last.header("content-length") is None
    assert "chunked" in (upstream.last.header("transfer-encoding") or "")

    small = form(boundary, [("file", "a.wav", b"RIFF1234"), ("model", None, b"whisper-1")])
    r = httpx.post(
        mrouter.url + "/v1/audio/transcriptions",
        content=small,
        headers={"Content-Type": ctype},
        timeout=30,
    )
    assert r.status_code == 200
    small_expected = form(
        boundary, [("file", "a.wav", b"RIFF1234"), ("model", None, b"up-whisper")]
    )
    assert upstream.last.body == small_expected
    assert upstream.last.header("content-length") == str(len(small_expected))

    def pieces() -> Iterator[bytes]:
        for i in range(0, len(body), 70_001):
            yield body[i : i + 70_001]

    r = httpx.post(
        mrouter.url + "/v1/audio/transcriptions",
        content=pieces(),
        headers={"Content-Type": ctype},
        timeout=30,
    )
    assert r.status_code == 200
    assert upstream.last.body == expected


def test_body_over_the_limit_is_413_and_nothing_reaches_the_upstream(
    small_router: RouterProcess, upstream: FakeUpstream
) -> None:
    boundary = b"b0und"
    body = form(boundary, [("model", None, b"whisper-1"), ("file", "a.wav", b"\0" * SMALL_LIMIT)])
    headers = {"Content-Type": "multipart/form-data; boundary=b0und"}
    seen = len(upstream.requests)
    r = httpx.post(
        small_router.url + "/v1/audio/translations", content=body, headers=headers, timeout=30
    )
    assert r.status_code == 413
    assert r.json()["error"]["code"] == "request_too_large"

    # Chunked (no Content-Length to refuse up front): over a raw socket, so the test can stop
    # writing as soon as the router has answered and then read that answer.
    with socket.create_connection(("127.0.0.1", small_router.port), timeout=10) as sock:
        sock.sendall(
            b"POST /v1/audio/translations HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: multipart/form-data; boundary=b0und\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        for i in range(0, len(body), 16384):
            if select.select([sock], [], [], 0.01)[0]:
                break  # the router answered already
            piece = body[i : i + 16384]
            try:
                sock.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
            except (BrokenPipeError, ConnectionResetError):
                break
        answer = sock.recv(65536)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert len(upstream.requests) == seen
    # a body within the limit still passes
    small = form(boundary, [("model", None, b"whisper-1"), ("file", "a.wav", b"\0" * 1000)])
    r = httpx.post(small_router.url + "/v1/audio/translations", content=small, headers=headers)
    assert r.status_code == 200


def test_a_body_that_is_not_multipart_is_400_before_the_upstream(
    small_router: RouterProcess, upstream: FakeUpstream
) -> None:
    url = small_router.url + "/v1/audio/transcriptions"
    seen = len(upstream.requests)
    for content, ctype in (
        (b'{"model":"whisper-1"}', "application/json"),
        (b"just some bytes", "multipart/form-data; boundary=abc"),
        (b"", "multipart/form-data; boundary=abc"),
        (b"--abc\r\n\r\nx\r\n--abc--\r\n", "multipart/form-data"),
    ):
        r = httpx.post(url, content=content, headers={"Content-Type": ctype})
        assert r.status_code == 400, (content, r.text)
        assert r.json()["error"]["type"] == "invalid_request_error"
    assert len(upstream.requests) == seen


UPLOAD = 100 * 1024 * 1024


def test_a_100_mb_upload_is_streamed_not_held(
    mrouter: RouterProcess, upstream: FakeUpstream
) -> None:
    (pid,) = worker_pids(mrouter)
    boundary = b"big-boundary"
    head = form(boundary, [("model", None, b"whisper-1")])[: -len(b"--big-boundary--\r\n")]
    head += (
        b'--big-boundary\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n\r\n'
    )
    tail = b"\r\n--big-boundary--\r\n"
    block = bytes(range(256)) * 4096  # 1 MiB
    blocks = UPLOAD // len(block)
    length = len(head) + blocks * len(block) + len(tail)

    def body() -> Iterator[bytes]:
        yield head
        for _ in range(blocks):
            yield block
        yield tail

    with RssPeak(pid) as rss:
        r = httpx.post(
            mrouter.url + "/v1/audio/transcriptions",
            content=body(),
            headers={
                "Content-Type": "multipart/form-data; boundary=big-boundary",
                "Content-Length": str(length),
            },
            timeout=60,
        )
    assert r.status_code == 200
    got = upstream.last
    assert len(got.body) == length + len("up-whisper") - len("whisper-1")
    assert got.body.startswith(head.replace(b"whisper-1", b"up-whisper"))
    upstream.reset()  # drop the 100 MB copy
    assert rss.grown_mib < 50, f"worker RSS grew by {rss.grown_mib:.1f} MiB for 100 MiB"


def _transcript_events() -> list[bytes]:
    """What OpenAI streams for `gpt-4o-transcribe` with `stream=true`: deltas, then the text
    with the usage."""

    def ev(kind: str, **data: object) -> bytes:
        return b"data: " + json.dumps({"type": kind, **data}).encode() + b"\n\n"

    usage = {"type": "tokens", "input_tokens": 14, "output_tokens": 5, "total_tokens": 19}
    return [
        ev("transcript.text.delta", delta="hello"),
        ev("transcript.text.delta", delta=" world"),
        ev("transcript.text.done", text="hello world", usage=usage),
    ]


def test_a_streamed_transcription_is_relayed_as_it_comes_with_its_usage(
    upstream: FakeUpstream, router_factory: RouterFactory
) -> None:
    """`stream=true` is a form field here, not JSON: the answer was read whole before the
    client got a byte (no heartbeat, a Content-Length), its usage never read and the token
    reservation kept. It is a stream from its head now, as the SDK's `stream=True` expects."""
    profile = base_profile(upstream.url, tokenLimit={"tokensPerMinute": 100_000})
    router = router_factory(profile, name="transcribe-stream")
    events = _transcript_events()
    upstream.reply_with(
        Reply(
            headers=[("Content-Type", "text/event-stream")],
            chunks=[(0.0, events[0]), (1.0, events[1]), (0.0, events[2])],
        )
    )
    client = openai.OpenAI(base_url=router.url + "/v1", api_key="sk-audio", max_retries=0)
    seen: list[tuple[float, str]] = []
    t0 = time.monotonic()
    with client.audio.transcriptions.with_streaming_response.create(
        model="gpt-4o-transcribe", file=("clip.wav", wav_bytes(), "audio/wav"), stream=True
    ) as resp:
        assert resp.headers["content-type"].startswith("text/event-stream")
        assert "content-length" not in resp.headers
        for line in resp.iter_lines():
            if line.startswith("data: "):
                seen.append((time.monotonic() - t0, json.loads(line[6:])["type"]))
    assert [kind for _, kind in seen] == [
        "transcript.text.delta",
        "transcript.text.delta",
        "transcript.text.done",
    ]
    assert seen[1][0] - seen[0][0] > 0.5  # the first delta came before the upstream's second
    assert b'name="stream"' in upstream.last.body  # the form field went upstream as it was
    line = router.wait_for_log(
        lambda r: r.get("event") == "request_completed" and r["route"] == "/v1/audio/transcriptions"
    )
    assert line["stream"] is True and line["status_code"] == 200, line
    text = scrape(router.url)
    assert metric_value(text, "tokens_total", type="prompt") == 14
    assert metric_value(text, "tokens_total", type="completion") == 5
    assert metric_value(text, "tokens_reconciled_total", direction="refund") > 0  # settled
