"""`dropFields` in the config (service.config.model, routing) and in fit_body
(service.proxy.gemini): which list a route gets, what is refused, what a body loses."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from service.config.loader import ConfigError, load_file
from service.proxy.gemini import fit_body

CHAT = "/v1/chat/completions"
MESSAGES = "/v1/messages"


def write(tmp_path: Path, data: dict[str, Any]) -> Path:
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps(data))
    return path


def profile(**extra: Any) -> dict[str, Any]:
    return {"name": "p", "baseUrl": "http://127.0.0.1:1", **extra}


def test_a_route_gets_the_profile_s_list_unless_it_has_its_own(tmp_path: Path) -> None:
    data = profile(
        dropFields=["user", "seed", "user"],
        endpoints={MESSAGES: {"dropFields": []}, "/v1/embeddings": {"dropFields": ["dimensions"]}},
    )
    eps = load_file(write(tmp_path, data)).endpoints
    assert eps[CHAT].drop_fields == ("user", "seed")  # each name once, in order
    assert eps[MESSAGES].drop_fields == ()
    assert eps["/v1/embeddings"].drop_fields == ("dimensions",)
    assert load_file(write(tmp_path, profile())).endpoints[CHAT].drop_fields == ()


@pytest.mark.parametrize("name", ["model", "stream"])
def test_a_field_the_router_needs_is_refused(tmp_path: Path, name: str) -> None:
    with pytest.raises(ConfigError, match=f"cannot drop '{name}': the router needs it"):
        load_file(write(tmp_path, profile(dropFields=["user", name])))


def test_an_empty_name_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="dropFields"):
        load_file(write(tmp_path, profile(dropFields=[""])))


def test_a_routing_upstream_overrides_its_profile_s_list_and_null_keeps_it(
    tmp_path: Path,
) -> None:
    (tmp_path / "base.json").write_text(json.dumps(profile(dropFields=["user"])))
    data = {
        "upstreams": {
            "named": {"profile": "base"},
            "null": {"profile": "base", "dropFields": None},
            "own": {"profile": "base", "dropFields": ["seed"]},
            "none": {"profile": "base", "dropFields": []},
        },
        "modelRoutes": [{"match": "m", "targets": [{"upstream": "named"}]}],
    }
    cfg = load_file(write(tmp_path, data))
    assert cfg.routing is not None
    got = {n: u.endpoints[CHAT].drop_fields for n, u in cfg.routing.upstreams.items()}
    assert got == {"named": ("user",), "null": ("user",), "own": ("seed",), "none": ()}


class Rules:
    tool_schemas = "asIs"
    thought_signatures = "asIs"

    def __init__(self, *names: str) -> None:
        self.drop_fields = names


def test_fit_body_removes_the_named_fields_and_says_whether_it_did() -> None:
    body = {"model": "m", "user": "u", "seed": 1, "n": 2}
    assert fit_body(body, Rules("user", "seed", "absent")) is True
    assert body == {"model": "m", "n": 2}
    assert fit_body(body, Rules("user", "absent")) is False  # nothing left to remove
    assert body == {"model": "m", "n": 2}
    assert fit_body(body, Rules()) is False
