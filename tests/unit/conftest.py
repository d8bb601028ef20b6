"""Fixtures shared by the unit tests."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
import structlog

from service.observability.logging import set_request_secret


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """Logging configured by a test is put back as it was (handlers, level, structlog, the
    request's secrets)."""
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    yield
    root.handlers[:], _ = saved
    root.setLevel(saved[1])
    structlog.reset_defaults()
    structlog.contextvars.clear_contextvars()
    set_request_secret()
