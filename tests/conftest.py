from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fakes.upstream import FakeUpstream
from tests.support import RouterProcess, write_profile


@pytest.fixture(scope="session")
def fake_upstream() -> Iterator[FakeUpstream]:
    fake = FakeUpstream().start()
    yield fake
    fake.stop()


@pytest.fixture
def upstream(fake_upstream: FakeUpstream) -> Iterator[FakeUpstream]:
    fake_upstream.reset()
    yield fake_upstream
    fake_upstream.reset()


def base_profile(url: str, **extra: Any) -> dict[str, Any]:
    profile: dict[str, Any] = {
        "name": "testprov",
        "baseUrl": url,
        "modelMapping": {"gpt-4": "up-model-4", "whisper-1": "up-whisper"},
        "models": ["extra-model"],
        "timeouts": {"connectSecs": 2, "readSecs": 5},
    }
    profile.update(extra)
    return profile


@pytest.fixture(scope="module")
def module_upstream(fake_upstream: FakeUpstream) -> FakeUpstream:
    return fake_upstream


@pytest.fixture(scope="module")
def router(
    fake_upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RouterProcess]:
    """One router (1 worker) in front of the fake upstream, shared by a test module."""
    d: Path = tmp_path_factory.mktemp("router")
    path = write_profile(d, base_profile(fake_upstream.url))
    with RouterProcess(path) as r:
        yield r
