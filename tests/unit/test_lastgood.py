"""The last good config's store (service.config.lastgood): what a worker started again while
the file is broken serves; it never breaks a load."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.config import find_profile, lastgood, load_file


def test_a_stored_config_comes_back_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = tmp_path / "store"
    store.write_bytes(b"")
    monkeypatch.setenv(lastgood.LAST_GOOD_ENV, str(store))
    assert lastgood.load() is None  # nothing stored yet
    first, second = load_file(find_profile("openai")), load_file(find_profile("anthropic"))
    assert lastgood.save(first) and lastgood.save(second)  # the later one wins, shorter or not
    back = lastgood.load()
    assert back is not None and back.profile == second.profile
    assert back.endpoints == second.endpoints and back.limits == second.limits


def test_a_store_that_cannot_be_used_is_as_none(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = load_file(find_profile("qwen"))
    monkeypatch.delenv(lastgood.LAST_GOOD_ENV, raising=False)
    assert not lastgood.save(config) and lastgood.load() is None  # not started by the CLI
    monkeypatch.setenv(lastgood.LAST_GOOD_ENV, str(tmp_path / "gone"))  # its main process died
    assert not lastgood.save(config) and lastgood.load() is None
    garbage = tmp_path / "garbage"
    garbage.write_bytes(b"\x80\x05not a pickle")
    monkeypatch.setenv(lastgood.LAST_GOOD_ENV, str(garbage))
    assert lastgood.load() is None
