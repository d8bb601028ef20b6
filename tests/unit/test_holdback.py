"""The commit point of a routed stream (service.proxy.holdback): which upstream events carry
content, per format, on the shapes the fake upstream and the providers send."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import httpx
import pytest

from service.proxy.events import malformed
from service.proxy.failover import retry_after_secs
from service.proxy.holdback import CONTENT, ERROR, FREE, classify
from tests.fakes.upstream import anthropic_stream, openai_chat_stream, openai_response_stream


def data(obj: object, event: str | None = None) -> bytes:
    head = f"event: {event}\n" if event else ""
    return (head + "data: " + json.dumps(obj) + "\n\n").encode()


def chunk(delta: dict, finish: str | None = None) -> bytes:
    return data({"choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})


@pytest.mark.parametrize(
    ("event", "verdict"),
    [
        (chunk({"role": "assistant"}), FREE),
        (chunk({"role": "assistant", "content": ""}), FREE),
        (chunk({"content": "Hi"}), CONTENT),
        (chunk({"tool_calls": [{"index": 0, "id": "t", "function": {"name": "f"}}]}), CONTENT),
        (chunk({"reasoning_content": "thinking"}), CONTENT),
        (chunk({}, finish="stop"), CONTENT),  # an empty answer is still a whole answer
        (data({"choices": [], "usage": {"prompt_tokens": 1}}), FREE),
        (data({"choices": [{"index": 0, "text": "x"}]}), CONTENT),  # completions
        (data({"error": {"message": "overloaded"}}), ERROR),
        (b"data: [DONE]\n\n", CONTENT),
        (b": keep-alive\n\n", FREE),
        (b"data: not json\n\n", CONTENT),  # not ours to judge: relayed from here on
    ],
)
def test_openai_events(event: bytes, verdict: str) -> None:
    assert classify("openai", event) == verdict


def test_anthropic_events() -> None:
    events = [e.encode() for e in anthropic_stream("m")]
    verdicts = [classify("anthropic", e) for e in events]
    # message_start, the empty text block's start: held; the first delta: content
    assert verdicts[:3] == [FREE, FREE, CONTENT]
    assert classify("anthropic", data({"type": "ping"}, "ping")) == FREE
    tool = {"type": "content_block_start", "index": 0,
            "content_block": {"type": "tool_use", "id": "t", "name": "f", "input": {}}}  # fmt: skip
    assert classify("anthropic", data(tool, "content_block_start")) == CONTENT
    err = {"type": "error", "error": {"type": "overloaded_error", "message": "busy"}}
    assert classify("anthropic", data(err, "error")) == ERROR


def test_responses_events() -> None:
    events = [e.encode() for e in openai_response_stream("m")]
    verdicts = [classify("responses", e) for e in events]
    first = verdicts.index(CONTENT)
    assert all(v == FREE for v in verdicts[:first]) and first >= 2
    assert b"delta" in events[first]
    failed = {"type": "response.failed", "response": {"status": "failed"}}
    assert classify("responses", data(failed, "response.failed")) == ERROR


def test_the_fake_openai_stream_commits_at_its_first_piece() -> None:
    events = [e.encode() for e in openai_chat_stream("m")]
    assert classify("openai", events[0]) == CONTENT  # role and content in the same chunk


@pytest.mark.parametrize(
    ("event", "dropped"),
    [
        (b'data: {"choices":[{"index":0,"de\n\n', True),  # cut short
        (b'data: {"a":1}\n\n', False),
        (b'data: {"a":1}\r\n\r\n', False),
        (b'event: content_block_delta\ndata: {"type":"content_block_delta"}\n\n', False),
        (b"event: x\ndata: {\n\n", True),
        (b"data: line one\ndata: line two\n\n", False),  # plain text: not ours to judge
        (b"data: [DONE]\n\n", False),
        (b": comment\n\n", False),
    ],
)
def test_malformed_events(event: bytes, dropped: bool) -> None:
    assert malformed(event) is dropped


@pytest.mark.parametrize(
    ("headers", "secs"),
    [
        ({"retry-after": "2"}, 2.0),
        ({"retry-after-ms": "1500", "retry-after": "9"}, 1.5),
        ({"retry-after": "inf"}, None),
        ({"retry-after-ms": "1e309"}, None),
        ({"retry-after": "nan"}, None),
        ({"retry-after": "99999999"}, 86400.0),  # believed for a day at most
        ({"retry-after": "-5"}, 0.0),
        ({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}, 0.0),  # a date in the past
        ({"retry-after": "soon"}, None),
        ({}, None),
        # the providers' own reset headers, when neither standard one is there (SPEC §11): the
        # reset of an exhausted limit only (they come on every answer)
        ({"x-ratelimit-reset-requests": "20s", "x-ratelimit-remaining-requests": "0"}, 20.0),
        ({"x-ratelimit-reset-requests": "1m30s", "x-ratelimit-remaining-requests": "0"}, 90.0),
        ({"x-ratelimit-reset-tokens": "6ms", "x-ratelimit-remaining-tokens": "0"}, 0.006),
        ({"x-ratelimit-reset-tokens": "1h2m3.5s", "x-ratelimit-remaining-tokens": "0"}, 3723.5),
        (  # the exhausted limit's reset, not the longer one
            {"x-ratelimit-reset-requests": "2s", "x-ratelimit-remaining-requests": "0",
             "x-ratelimit-reset-tokens": "40s", "x-ratelimit-remaining-tokens": "900"},
            2.0,
        ),
        (  # both exhausted: the later
            {"x-ratelimit-reset-requests": "2s", "x-ratelimit-remaining-requests": "0",
             "x-ratelimit-reset-tokens": "40s", "x-ratelimit-remaining-tokens": "0"},
            40.0,
        ),
        ({"x-ratelimit-reset-requests": "2s", "x-ratelimit-reset-tokens": "6m0s"}, None),
        ({"x-ratelimit-reset-requests": "later", "x-ratelimit-remaining-requests": "0"}, None),
        (
            {"anthropic-ratelimit-requests-reset": "2030-01-01T00:00:30Z",
             "anthropic-ratelimit-requests-remaining": "0"},
            30.0,
        ),
        (
            {"anthropic-ratelimit-tokens-reset": "2030-01-01T00:00:05Z",
             "anthropic-ratelimit-tokens-remaining": "0",
             "anthropic-ratelimit-requests-reset": "2030-01-01T00:01:00Z",
             "anthropic-ratelimit-requests-remaining": "49"},
            5.0,
        ),
        (  # no zone: not an RFC 3339 time
            {"anthropic-ratelimit-requests-reset": "2030-01-01T00:00:30",
             "anthropic-ratelimit-requests-remaining": "0"},
            None,
        ),
        ({"retry-after": "3", "x-ratelimit-reset-requests": "20s"}, 3.0),  # the standard wins
    ],
)  # fmt: skip
def test_retry_after_is_read_finite_and_bounded(headers: dict[str, str], secs) -> None:
    now = datetime(2030, 1, 1, tzinfo=UTC).timestamp()
    assert retry_after_secs(httpx.Headers(headers), now=now) == pytest.approx(secs)


def test_the_retry_budget_allows_retries_up_to_a_share_of_the_requests_in_flight() -> None:
    from service.proxy.failover import RetryBudget

    b = RetryBudget()
    b.active = 100
    b.retrying = 19
    assert b.allows(0.2, 3)  # 19 retries in flight < 20 % of 100
    b.retrying = 20
    assert not b.allows(0.2, 3)  # an outage must not multiply the load
    b.active, b.retrying = 2, 2
    assert b.allows(0.2, 3)  # few requests: the minimum still lets a retry through
    b.retrying = 3
    assert not b.allows(0.2, 3)
