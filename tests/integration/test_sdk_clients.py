"""The real openai and anthropic SDKs, through the real router, against the fake upstream."""

from __future__ import annotations

import anthropic
import openai

from tests.fakes.upstream import FakeUpstream
from tests.support import RouterProcess


def _openai(router: RouterProcess, key: str = "sk-client-key") -> openai.OpenAI:
    return openai.OpenAI(base_url=router.url + "/v1", api_key=key, max_retries=0)


def test_openai_chat_completion_maps_model_and_forwards_everything(
    router: RouterProcess, upstream: FakeUpstream
) -> None:
    client = _openai(router)
    resp = client.chat.completions.create(
        model="gpt-4",
        messages=[{"role": "user", "content": "hi"}],
        temperature=0.25,
        extra_body={"custom_vendor_field": {"nested": [1, 2, 3]}},
    )
    assert resp.choices[0].message.content == "Hello from fake"
    assert resp.model == "up-model-4"
    sent = upstream.last
    assert sent.path == "/v1/chat/completions"
    body = sent.json()
    assert body["model"] == "up-model-4"
    assert body["temperature"] == 0.25
    assert body["custom_vendor_field"] == {"nested": [1, 2, 3]}
    assert body["messages"] == [{"role": "user", "content": "hi"}]
    assert sent.header("authorization") == "Bearer sk-client-key"


def test_openai_completions_and_embeddings(router: RouterProcess, upstream: FakeUpstream) -> None:
    client = _openai(router)
    c = client.completions.create(model="unmapped-model", prompt="Say hi")
    assert c.choices[0].text == "Hello"
    assert upstream.last.path == "/v1/completions"
    assert upstream.last.json()["model"] == "unmapped-model"
    e = client.embeddings.create(model="text-embedding-3-small", input="abc")
    assert e.data[0].embedding == [0.1, 0.2, 0.3]
    assert upstream.last.path == "/v1/embeddings"
    assert upstream.last.json()["input"] == "abc"


def test_anthropic_messages_create(router: RouterProcess, upstream: FakeUpstream) -> None:
    client = anthropic.Anthropic(base_url=router.url, api_key="sk-ant-client", max_retries=0)
    msg = client.messages.create(
        model="claude-test",
        max_tokens=64,
        messages=[{"role": "user", "content": "hi"}],
    )
    assert msg.content[0].text == "Hello from fake"  # type: ignore[union-attr]
    sent = upstream.last
    assert sent.path == "/v1/messages"
    # the SDK sends x-api-key; the profile's auth (default Bearer) decides the upstream form
    assert sent.header("authorization") == "Bearer sk-ant-client"
    assert sent.header("x-api-key") is None
    assert sent.header("anthropic-version") is not None
    assert sent.json()["max_tokens"] == 64


def test_openai_sdk_sees_upstream_error_status(
    router: RouterProcess, upstream: FakeUpstream
) -> None:
    from tests.fakes.upstream import Reply

    upstream.reply_with(
        Reply(
            status=429,
            headers=[("Content-Type", "application/json"), ("x-ratelimit-remaining-requests", "0")],
            body=b'{"error":{"message":"slow down","type":"rate_limit_error",'
            b'"code":"rate_limited"}}',
        )
    )
    client = _openai(router)
    try:
        client.chat.completions.create(model="gpt-4", messages=[{"role": "user", "content": "x"}])
    except openai.RateLimitError as e:
        assert e.status_code == 429
        assert e.response.headers["x-ratelimit-remaining-requests"] == "0"
        assert e.body["message"] == "slow down"  # type: ignore[index]
    else:
        raise AssertionError("expected a RateLimitError")
