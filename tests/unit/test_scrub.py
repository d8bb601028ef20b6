"""The log scrubber (service.observability.logging): credential-like URL query values are
redacted whatever they are; registered secrets wherever they appear; profile secrets found at
load."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from service.config import load_file
from service.observability.logging import REDACTED, redact_query, scrub, scrub_secrets


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            'HTTP Request: POST http://h/v1/chat?key=S1&b=2 "HTTP/1.1 200 OK"',
            'HTTP Request: POST http://h/v1/chat?key=[redacted]&b=2 "HTTP/1.1 200 OK"',
        ),
        ("key=S1&x=1", "key=[redacted]&x=1"),  # a bare query string
        ("http://a/?API_KEY=S1", "http://a/?API_KEY=[redacted]"),
        ("http://a/?apikey=S1#frag", "http://a/?apikey=[redacted]#frag"),
        ("http://a/?access_token=S1;sig=S2", "http://a/?access_token=[redacted];sig=[redacted]"),
        (
            "http://a/?X-Amz-Signature=S1&X-Amz-Date=d",
            "http://a/?X-Amz-Signature=[redacted]&X-Amz-Date=d",
        ),
        (
            "http://a/?client_secret=S1&password=S2",
            "http://a/?client_secret=[redacted]&password=[redacted]",
        ),
        ("http://a/?api-version=2024-02-01&model=m", "http://a/?api-version=2024-02-01&model=m"),
        ("no query here, a=b", "no query here, a=b"),
        ("x" * 50, "x" * 50),
    ],
)
def test_credential_like_query_values_are_redacted(text: str, expected: str) -> None:
    assert redact_query(text) == expected


def test_scrub_reaches_nested_values_and_every_string_field() -> None:
    event = {
        "event": "HTTP Request: GET http://h/?token=S1",
        "nested": {"url": "http://h/?key=S2", "list": ["http://h/?sig=S3", 3]},
        "n": 5,
    }
    out = scrub_secrets(None, "", dict(event))
    text = json.dumps(out)
    assert "S1" not in text and "S2" not in text and "S3" not in text
    assert text.count(REDACTED) == 3 and out["n"] == 5
    assert "S4" not in json.dumps(scrub({"request": {"url": "http://h/?api_key=S4"}}))


def test_profile_header_and_upstream_query_values_are_its_secrets(tmp_path: Path) -> None:
    path = tmp_path / "p.json"
    path.write_text(
        json.dumps(
            {
                "name": "p",
                "baseUrl": "http://127.0.0.1:1",
                "headers": {"x-goog-api-key": "hdr-secret", "anthropic-version": "2023-06-01"},
                "endpoints": {
                    "/v1/chat/completions": {
                        "upstreamPath": "/v1/chat?key=q%2Fsecret&alt=sse",
                        "headers": {"X-Tenant-Token": "ep-secret", "Content-Type": "x/y"},
                    }
                },
            }
        )
    )
    secrets = load_file(path).profile.secret_values()
    assert {"hdr-secret", "ep-secret", "q%2Fsecret", "q/secret", "sse"} == secrets
    # public protocol values are not secrets (they would blank out ordinary log text)
    assert "2023-06-01" not in secrets and "x/y" not in secrets


def test_every_form_of_a_redis_password_is_registered() -> None:
    """As written in the URL, decoded, and as a `password=` query value (redis-py reads it):
    a message may carry any of them (before, only the first was known)."""
    from service.ratelimit.backends import check_backend
    from service.ratelimit.redis_backend import passwords_of

    assert passwords_of("redis://user:pw%21x@127.0.0.1:6379/0") == ["pw%21x", "pw!x"]
    assert passwords_of("redis://127.0.0.1:6379/0?password=qpass&db=1") == ["qpass"]
    assert passwords_of("rediss://:a@h:1/0?password=b") == ["a", "b"]
    assert passwords_of("redis://h:1/0") == []
    # A port that is not a number fails here, in one line without the URL (it failed in every
    # worker, with the URL in the traceback).
    with pytest.raises(ValueError, match=r"^RATE_LIMIT_BACKEND: the URL's port is not a number$"):
        check_backend("redis://:secretpw@127.0.0.1:notaport/0")


def test_otlp_exporter_header_values_are_registered_not_their_names() -> None:
    from service.observability.logging import _secrets
    from service.observability.tracing import redact_exporter_headers

    redact_exporter_headers(
        {
            "OTEL_EXPORTER_OTLP_HEADERS": (
                "x-api-key=otlp-key-k1,Authorization: Bearer otlp-key-t2,x-env=prod"
            ),
            "OTEL_EXPORTER_OTLP_TRACES_HEADERS": "x-honeycomb-team otlp-key-t3",
        }
    )
    line = scrub(
        "Header format invalid! Authorization: Bearer otlp-key-t2 x-api-key=otlp-key-k1 "
        "otlp-key-t3 in prod"
    )
    assert "otlp-" not in line
    assert "Authorization" in line and "x-api-key" in line  # the names stay readable
    assert "Authorization" not in _secrets and "x-api-key" not in _secrets
    assert line.endswith(" in prod")  # a short value is no key: not scrubbed everywhere


def test_the_transport_is_read_as_the_workers_read_it() -> None:
    """Any case, spaces around: the main process's check must not refuse what a worker takes."""
    from service.proxy.upstream import check_transport, transport_name

    for raw in (" H1 ", "HTTPX", "Aiohttp"):
        check_transport({"API_ROUTER_UPSTREAM_TRANSPORT": raw})
        assert transport_name({"API_ROUTER_UPSTREAM_TRANSPORT": raw}) == raw.strip().lower()
