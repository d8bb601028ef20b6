"""structlog's lines skip the standard-library handler chain but land where its records do."""

from __future__ import annotations

import io
import json
import logging
from datetime import UTC, datetime
from typing import Any

import pytest
import structlog

from service.observability.logging import configure_logging, redact, set_request_secret
from service.observability.logging_fast import iso_utc


def _configure() -> io.StringIO:
    configure_logging("json", "info")
    stream = io.StringIO()
    logging.getLogger().handlers[0].setStream(stream)  # type: ignore[attr-defined]
    return stream


def _lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(x) for x in stream.getvalue().splitlines()]


def test_a_logger_cached_before_a_reconfiguration_writes_to_the_new_handler(
    restore_logging: None,
) -> None:
    log = structlog.get_logger("api_router.test")
    first = _configure()
    log.info("one")  # cached on first use
    second = _configure()
    log.info("two")
    assert [r["event"] for r in _lines(first)] == ["one"]
    assert [r["event"] for r in _lines(second)] == ["two"]


def test_structlog_and_stdlib_lines_share_one_stream_order_and_shape(
    restore_logging: None,
) -> None:
    stream = _configure()
    redact("sk-fast-path-secret")
    structlog.contextvars.bind_contextvars(request_id="rid-1")
    structlog.get_logger("api_router.access").info(
        "request_completed", status_code=200, detail=("sk-fast-path-secret", 1)
    )
    logging.getLogger("sanic.root").warning("between")
    structlog.get_logger("api_router.access").debug("below the level")
    structlog.get_logger("api_router.access").warning("after", n=2)
    recs = _lines(stream)
    assert [(r["event"], r["logger"], r["level"]) for r in recs] == [
        ("request_completed", "api_router.access", "info"),
        ("between", "sanic.root", "warning"),
        ("after", "api_router.access", "warning"),
    ]
    assert all(r["request_id"] == "rid-1" and r["timestamp"].endswith("Z") for r in recs)
    assert recs[0]["detail"] == ["[redacted]", 1]
    assert list(recs[0]) == [
        "status_code",
        "detail",
        "event",
        "request_id",
        "level",
        "logger",
        "timestamp",
    ]


def test_timestamps_are_what_structlogs_iso_utc_stamper_writes() -> None:
    for ns in (
        0,
        1_795_000_000_123_456_789,  # microseconds
        1_795_000_000_000_000_999,  # less than a microsecond: no fraction
        1_795_000_001_000_001_000,  # the next second, one microsecond
        1_795_000_000_999_999_000,  # the same second as the second case
    ):
        sec, us = divmod(ns // 1000, 1_000_000)
        # what TimeStamper does with datetime.now(tz=UTC)
        expected = (
            datetime.fromtimestamp(sec, UTC)
            .replace(microsecond=us)
            .isoformat()
            .replace("+00:00", "Z")
        )
        assert iso_utc(ns) == expected


@pytest.mark.usefixtures("restore_logging")
@pytest.mark.parametrize("level", [logging.INFO, logging.WARNING])
def test_emit_writes_the_line_the_processor_chain_writes(level: int) -> None:
    from service.observability.logging import emit

    stream = _configure()
    redact("sk-operator-secret")
    set_request_secret("sk-client-secret", None)
    structlog.contextvars.bind_contextvars(request_id="rid-1")
    log = structlog.get_logger("api_router.access")
    fields: dict[str, Any] = {
        "client_ip": "127.0.0.1",
        "route": "/v1/chat/completions",
        "status_code": 200,
        "latency_ms": 1.5,
        "upstream_latency_ms": None,
        "model": "sk-client-secret as a model name",
        "stream": False,
        "key_id": "ab12",
    }
    name = "warning" if level == logging.WARNING else "info"
    getattr(log, name)("request_completed", **dict(fields))
    emit(log, "api_router.access", level, "request_completed", dict(fields), "rid-1")
    chain, direct = stream.getvalue().splitlines()
    a, b = json.loads(chain), json.loads(direct)
    assert a.pop("timestamp")[:10] == b.pop("timestamp")[:10]
    assert list(a.items()) == list(b.items())  # same keys, same order, same values
    assert b["model"] == "[redacted] as a model name" and b["level"] == name
    assert "sk-client-secret" not in direct


@pytest.mark.usefixtures("restore_logging")
def test_emit_keeps_the_level_threshold_and_the_console_format() -> None:
    from service.observability.logging import emit

    configure_logging("json", "warning")
    stream = io.StringIO()
    logging.getLogger().handlers[0].setStream(stream)  # type: ignore[attr-defined]
    log = structlog.get_logger("api_router.access")
    emit(log, "api_router.access", logging.INFO, "request_completed", {"a": 1}, "rid")
    emit(log, "api_router.access", logging.WARNING, "request_completed", {"a": 2}, "rid")
    assert [json.loads(x)["a"] for x in stream.getvalue().splitlines()] == [2]

    configure_logging("console", "info")
    stream = io.StringIO()
    logging.getLogger().handlers[0].setStream(stream)  # type: ignore[attr-defined]
    structlog.contextvars.bind_contextvars(request_id="rid-2")
    emit(
        structlog.get_logger("api_router.access"),
        "api_router.access",
        logging.INFO,
        "request_completed",
        {"a": 3},
        "rid-2",
    )
    line = stream.getvalue()
    assert "request_completed" in line and "a=3" in line and "rid-2" in line
    with pytest.raises(json.JSONDecodeError):
        json.loads(line)


@pytest.mark.usefixtures("restore_logging")
@pytest.mark.parametrize("fmt", ["json", "console"])
def test_tracebacks_show_no_local_variables_and_are_scrubbed(fmt: str) -> None:
    """structlog's defaults print each frame's locals (a credential, a header list, a whole
    config), cut to 80 characters so that no scrubber recognises a long key any more; the
    console renderer also drew them after the scrubber had run."""
    configure_logging(fmt, "info")
    stream = io.StringIO()
    logging.getLogger().handlers[0].setStream(stream)  # type: ignore[attr-defined]
    # (built from parts: a plain traceback quotes source lines, which must not match)
    registered = "sk-" + "registered-" + "r" * 90
    redact(registered)

    def relay(credential: str) -> None:
        headers = [("api-key", "local" + "-only-" + "h" * 20)]
        raise RuntimeError(f"boom with {len(headers)} header and {registered}")

    try:
        relay("sk-" + "local-" + "c" * 100)
    except RuntimeError:
        structlog.get_logger("api_router.test").exception("failed")
    out = stream.getvalue()
    assert "failed" in out and "RuntimeError" in out and "relay" in out  # still a traceback
    assert "sk-local-" not in out and "local-only-" not in out  # no locals
    assert "sk-registered-" not in out and "[redacted]" in out  # the message scrubbed
