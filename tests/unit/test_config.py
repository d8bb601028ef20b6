"""Profile validation, lookup, shipped profiles and the shipped JSON Schema."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from service.config import ConfigError, available_profiles, find_profile, load_file, profile_schema
from service.config.loader import SHIPPED_DIR, LoadedConfig
from service.config.model import PROXY_ROUTES
from service.proxy.headers import credential_header
from service.translate.common import takes_effort

SHIPPED = [
    "anthropic",
    "cohere",
    "gemini",
    "generic",
    "ollama-cloud",
    "ollama-local",
    "openai",
    "qwen",
]


def _write(tmp_path: Path, data: object, name: str = "p.json") -> Path:
    p = tmp_path / name
    p.write_text(data if isinstance(data, str) else json.dumps(data))
    return p


def test_the_eight_profiles_ship() -> None:
    assert sorted(p.stem for p in SHIPPED_DIR.glob("*.json")) == SHIPPED


@pytest.mark.parametrize(
    ("name", "chat_url", "messages_url", "auth", "mapping"),
    [
        (
            "qwen",
            "https://portal.qwen.ai/v1/chat/completions",
            "https://portal.qwen.ai/v1/chat/completions",
            ("Authorization", "Bearer K"),
            {
                "gpt-3.5-turbo": "qwen3-coder-plus",
                "gpt-4": "qwen3-coder-max",
                "gpt-4-turbo": "qwen3-coder-turbo",
            },
        ),
        (
            "openai",
            "https://api.openai.com/v1/chat/completions",
            "https://api.openai.com/v1/chat/completions",
            ("Authorization", "Bearer K"),
            {},
        ),
        (
            "anthropic",
            "https://api.anthropic.com/v1/messages",
            "https://api.anthropic.com/v1/messages",
            ("x-api-key", "K"),
            {},
        ),
        (
            "cohere",
            "https://api.cohere.ai/compatibility/v1/chat/completions",
            "https://api.cohere.ai/compatibility/v1/chat/completions",
            ("Authorization", "Bearer K"),
            {},
        ),
        (
            "gemini",
            "https://generativelanguage.googleapis.com/v1beta/openai/chat/completions",
            "https://generativelanguage.googleapis.com/v1beta/openai/chat/completions",
            ("Authorization", "Bearer K"),
            {},
        ),
        (
            "ollama-cloud",
            "https://ollama.com/v1/chat/completions",
            "https://ollama.com/v1/chat/completions",
            ("Authorization", "Bearer K"),
            {},
        ),
        (
            "ollama-local",
            "http://localhost:11434/v1/chat/completions",
            "http://localhost:11434/v1/chat/completions",
            ("Authorization", "Bearer K"),
            {},
        ),
        (
            "generic",
            "http://localhost:8080/v1/chat/completions",
            "http://localhost:8080/v1/chat/completions",
            ("Authorization", "Bearer K"),
            {},
        ),
    ],
)
def test_shipped_profile_urls_auth_and_mapping(
    name: str, chat_url: str, messages_url: str, auth: tuple[str, str], mapping: dict[str, str]
) -> None:
    cfg = load_file(find_profile(name))
    assert cfg.profile.name == name
    assert cfg.endpoints["/v1/chat/completions"].url == chat_url
    assert cfg.endpoints["/v1/messages"].url == messages_url
    a = cfg.profile.auth
    assert credential_header(a.header, a.scheme, "K") == auth
    assert cfg.profile.model_mapping == mapping
    assert set(cfg.endpoints) == set(PROXY_ROUTES)
    # Each upstream speaks one format; the other format's route is translated to it (issue 8).
    native = "anthropic" if name == "anthropic" else "openai"
    assert cfg.endpoints["/v1/chat/completions"].format == native
    assert cfg.endpoints["/v1/messages"].format == native
    translated = "/v1/chat/completions" if native == "anthropic" else "/v1/messages"
    assert cfg.endpoints[translated].translation == (
        "openai_to_anthropic" if native == "anthropic" else "anthropic_to_openai"
    )


def test_qwen_rate_limits_and_anthropic_version_header() -> None:
    qwen = load_file(find_profile("qwen.json"))
    chat = qwen.endpoints["/v1/chat/completions"].rate_limit
    assert chat is not None and (chat.requests_per_minute, chat.burst) == (60, 25)
    emb = qwen.endpoints["/v1/embeddings"].rate_limit
    assert emb is not None and (emb.requests_per_minute, emb.burst) == (120, 40)
    ant = load_file(find_profile("anthropic"))
    assert ("anthropic-version", "2023-06-01") in ant.endpoints["/v1/messages"].headers


def test_unknown_profile_lists_available_names() -> None:
    with pytest.raises(ConfigError) as e:
        find_profile("qwne")
    msg = str(e.value)
    assert "unknown profile 'qwne'" in msg
    for n in SHIPPED:
        assert n in msg
    assert set(SHIPPED) <= set(available_profiles())


def test_local_transformer_dir_wins_over_shipped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "transformer").mkdir()
    _write(tmp_path / "transformer", {"name": "qwen", "baseUrl": "http://127.0.0.1:1"}, "qwen.json")
    monkeypatch.chdir(tmp_path)
    assert load_file(find_profile("qwen")).profile.base_url == "http://127.0.0.1:1"


@pytest.mark.parametrize(
    ("file", "name"),
    [("mine.json", "mine"), ("my profile (2).json", "my-profile--2-"), ("p.v2.json", "p.v2")],
)
def test_a_profile_without_a_name_is_named_after_its_file(
    tmp_path: Path, file: str, name: str
) -> None:
    """SPEC §3: only `baseUrl` is required (the original transformer files may have no name)."""
    loaded = load_file(_write(tmp_path, {"baseUrl": "http://127.0.0.1:1"}, file))
    assert loaded.profile.name == name
    assert (
        load_file(_write(tmp_path, {"name": "own", "baseUrl": "http://h"}, file)).profile.name
        == "own"
    )
    assert "name" not in profile_schema()["required"]


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        ({"name": "x"}, "$.baseUrl: Field required"),
        ({}, "$.baseUrl: Field required"),
        ({"name": "", "baseUrl": "http://h"}, "$.name"),
        ({"name": "x", "baseUrl": "ftp://h"}, "$.baseUrl"),
        ({"name": "x", "baseUrl": "http://user:pw@h"}, "must not carry user:password"),
        (
            {"name": "x", "baseUrl": "http://h", "bogus": 1},
            "$.bogus: Extra inputs are not permitted",
        ),
        (
            {"name": "x", "baseUrl": "http://h", "rateLimit": {"requestsPerMinute": -1}},
            "$.rateLimit.requestsPerMinute",
        ),
        (
            {"name": "x", "baseUrl": "http://h", "rateLimit": {"requestsPerMinute": "60"}},
            "$.rateLimit.requestsPerMinute",
        ),
        ({"name": "x", "baseUrl": "http://h", "port": 70000}, "$.port"),
        ({"name": "x", "baseUrl": "http://h", "endpoints": {"/v1/nope": {}}}, "$.endpoints"),
        (
            {
                "name": "x",
                "baseUrl": "http://h",
                "endpoints": {"/v1/chat/completions": {"upstreamPath": "no-slash"}},
            },
            "$.endpoints./v1/chat/completions.upstreamPath",
        ),
        (
            {
                "name": "x",
                "baseUrl": "http://h",
                "endpoints": {"/v1/chat/completions": {"streamConfig": {"bufferSize": 0}}},
            },
            "$.endpoints./v1/chat/completions.streamConfig.bufferSize",
        ),
        ({"name": "x", "baseUrl": "http://h", "modelMapping": {"a": 1}}, "$.modelMapping.a"),
        ([1, 2], "$: must be a JSON object"),
        # The keys are camelCase, as the schema says: a snake_case one is an unknown key (it
        # was accepted, and the schema refused what the router took).
        (
            {"name": "x", "baseUrl": "http://h", "model_mapping": {"a": "b"}},
            "$.model_mapping: Extra inputs are not permitted",
        ),
        (
            {"name": "x", "baseUrl": "http://h", "rateLimit": {"requests_per_minute": 5}},
            "$.rateLimit.requests_per_minute: Extra inputs are not permitted",
        ),
    ],
)
def test_invalid_profiles_name_file_and_json_path(
    tmp_path: Path, data: object, fragment: str
) -> None:
    p = _write(tmp_path, data)
    with pytest.raises(ConfigError) as e:
        load_file(p)
    msg = str(e.value)
    assert msg.startswith(str(p) + ": ")
    assert fragment in msg
    assert "\n" not in msg


@pytest.mark.parametrize(
    "text",
    [
        '{"name":"x","baseUrl":"http://h","rateLimit":{"requestsPerMinute":1e400}}',
        '{"name":"x","baseUrl":"http://h","rateLimit":{"requestsPerMinute":NaN}}',
        '{"name":"x","baseUrl":"http://h","timeouts":{"readSecs":-Infinity}}',
    ],
)
def test_numbers_that_are_not_finite_are_refused_like_other_bad_values(
    tmp_path: Path, text: str
) -> None:
    """JSON's 1e400 reads as infinity: it must be a ConfigError naming the path (it raised
    OverflowError in a limit's arithmetic, a traceback at start and a dead reload later)."""
    p = _write(tmp_path, text)
    with pytest.raises(ConfigError, match=r"Input should be a finite number") as e:
        load_file(p)
    assert str(e.value).startswith(f"{p}: $.")


def test_a_config_reload_that_fails_unexpectedly_is_a_failure_and_the_next_edit_applies(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whatever loading raises, the holder counts a failure, keeps the last good config and
    reads the next edit (before, anything but ConfigError ended the watch for good)."""
    from service.config import reload

    p = _write(tmp_path, {"name": "one", "baseUrl": "http://h"})
    holder = reload.ConfigHolder(load_file(p))
    real = reload.load_file

    def broken(path: Path, now: float | None = None) -> LoadedConfig:
        raise OverflowError("cannot convert float infinity to integer")

    monkeypatch.setattr(reload, "load_file", broken)
    _write(tmp_path, {"name": "two", "baseUrl": "http://h", "port": 8001})
    assert holder.check() is False
    state = holder.state()
    assert state["reloadFailures"] == 1 and state["profile"] == "one"
    assert state["lastError"] == f"{p}: cannot be loaded: OverflowError"
    assert holder.check() is False and holder.failures == 1  # reported once per version
    monkeypatch.setattr(reload, "load_file", real)
    _write(tmp_path, {"name": "three", "baseUrl": "http://h"})
    assert holder.check() is True and holder.current.profile.name == "three"


def test_reload_sees_what_mtime_and_size_miss_and_forgets_an_error_undone(tmp_path: Path) -> None:
    """An edit that keeps the size and the mtime (`cp -p`, `touch -r`, two writes in one mtime
    tick), a chmod that makes an unreadable edit readable, a file moved away and back: each was
    missed (the old config served on) or left /health in error for good."""
    import os
    import shutil

    from service.config import reload

    p = _write(tmp_path, {"name": "aaaa", "baseUrl": "http://h"})
    holder = reload.ConfigHolder(load_file(p))
    # the same size, the mtime set back
    before = os.stat(p)
    _write(tmp_path, {"name": "bbbb", "baseUrl": "http://h"})
    os.utime(p, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert os.stat(p).st_size == before.st_size
    assert holder.check() is True and holder.current.profile.name == "bbbb"
    # moved away (an error), then back unchanged: no longer an error
    shutil.move(p, tmp_path / "away")
    assert holder.check() is False and holder.state()["status"] == "error"
    shutil.move(tmp_path / "away", p)
    holder.check()  # (read again: the rename changed its ctime; the same text either way)
    assert holder.state()["status"] == "ok" and holder.current.profile.name == "bbbb"
    # and when even the ctime is the one being served (all the files as they were read)
    holder.last_error = "left over"
    assert holder.check() is False and holder.state()["status"] == "ok"
    # a new edit unreadable, then made readable (a chmod changes neither mtime nor size)
    original = reload.load_file
    _write(tmp_path, {"name": "cccc", "baseUrl": "http://h"})
    with pytest.MonkeyPatch.context() as m:  # as when the file's mode shuts the router out
        m.setattr(reload, "load_file", _unreadable)
        assert holder.check() is False and "PermissionError" in str(holder.last_error)
    assert reload.load_file is original
    os.chmod(p, 0o600)
    assert holder.check() is True and holder.current.profile.name == "cccc"
    assert holder.state()["status"] == "ok"


def _unreadable(path: Path, now: float | None = None) -> LoadedConfig:
    raise ConfigError(f"{path}: cannot read: PermissionError")


def test_the_watch_goes_on_after_an_error_in_a_check(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An error outside loading (here the holder's `on_load` hook) is logged and the watch
    reads the next edit."""
    import asyncio

    from service.config import reload

    monkeypatch.setattr(reload, "CHECK_INTERVAL_SECS", 0.01)
    p = _write(tmp_path, {"name": "one", "baseUrl": "http://h"})
    seen: dict[str, asyncio.Event] = {}

    def on_load(cfg: LoadedConfig) -> None:
        seen.setdefault(cfg.profile.name, asyncio.Event()).set()
        if cfg.profile.name == "two":
            raise RuntimeError("hook failed")

    async def run() -> reload.ConfigHolder:
        holder = reload.ConfigHolder(load_file(p), on_load=on_load)
        watching = asyncio.ensure_future(holder.watch())
        try:
            async with asyncio.timeout(5):
                _write(tmp_path, {"name": "two", "baseUrl": "http://h"})
                await seen.setdefault("two", asyncio.Event()).wait()
                _write(tmp_path, {"name": "three", "baseUrl": "http://h", "port": 8001})
                await seen.setdefault("three", asyncio.Event()).wait()
        finally:
            watching.cancel()
        return holder

    holder = asyncio.run(run())
    assert holder.current.profile.name == "three"


@pytest.mark.parametrize(
    "headers",
    [
        {"Authorization: Bearer sk-pasted-in-the-name": ""},  # a header line as the name
        {"sk-proj-" + "k" * 60: 1},  # a long key where a name belongs (its value no string)
    ],
)
def test_an_error_never_shows_a_key_that_may_be_a_credential(
    tmp_path: Path, headers: dict[str, str]
) -> None:
    """The message reaches the log and /health (which needs no key): a JSON path through such a
    key does not show it."""
    p = _write(tmp_path, {"name": "x", "baseUrl": "http://h", "headers": headers})
    with pytest.raises(ConfigError) as e:
        load_file(p)
    msg = str(e.value)
    assert "$.headers.<a key not shown>" in msg
    assert "sk-" not in msg


def test_a_key_named_twice_is_refused(tmp_path: Path) -> None:
    """JSON keeps the last of two equal keys silently: a copy of a setting edited in the wrong
    place would win unseen. Refused, naming the key (here in a nested object)."""
    p = _write(
        tmp_path,
        '{"name": "x", "baseUrl": "http://h",'
        ' "rateLimit": {"requestsPerMinute": 60, "requestsPerMinute": 6000}}',
    )
    with pytest.raises(ConfigError) as e:
        load_file(p)
    assert str(e.value) == (
        f"{p}: the key 'requestsPerMinute' appears twice in one object (JSON would keep the last)"
    )


def test_invalid_json_names_line_and_column(tmp_path: Path) -> None:
    p = _write(tmp_path, '{\n  "name": "x",\n  "baseUrl": \n}')
    with pytest.raises(ConfigError, match=r"invalid JSON at line 4 column 1"):
        load_file(p)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="file not found"):
        load_file(tmp_path / "nope.json")


def test_endpoint_overrides_merge_over_globals(tmp_path: Path) -> None:
    p = _write(
        tmp_path,
        {
            "name": "x",
            "baseUrl": "http://h/prefix/",
            "headers": {"X-A": "1", "X-B": "profile"},
            "streamConfig": {"bufferSize": 4096, "heartbeatIntervalSecs": 10},
            "rateLimit": {"requestsPerMinute": 100},
            "endpoints": {
                "/v1/chat/completions": {
                    "upstreamPath": "/chat?api-version=2",
                    "headers": {"x-b": "endpoint"},
                    "streamConfig": {"heartbeatIntervalSecs": 2},
                    "streamSupport": False,
                }
            },
        },
    )
    cfg = load_file(p)
    chat = cfg.endpoints["/v1/chat/completions"]
    assert chat.url == "http://h/prefix/chat?api-version=2"
    assert dict(chat.headers) == {"X-A": "1", "x-b": "endpoint"}
    assert (chat.buffer_size, chat.heartbeat_interval_secs) == (4096, 2)
    assert chat.stream_support is False
    emb = cfg.endpoints["/v1/embeddings"]
    assert emb.url == "http://h/prefix/v1/embeddings"
    assert (emb.buffer_size, emb.heartbeat_interval_secs) == (4096, 10)
    assert emb.stream_support is False
    assert cfg.endpoints["/v1/messages"].stream_support is True
    assert cfg.endpoints["/v1/audio/transcriptions"].requires_multipart is True
    assert emb.rate_limit is not None and emb.rate_limit.requests_per_minute == 100


def test_shipped_schema_is_current_and_validates_shipped_profiles() -> None:
    shipped = json.loads((SHIPPED_DIR.parent / "profile.schema.json").read_text())
    assert shipped == json.loads(json.dumps(profile_schema())), "run `make schema`"
    props = shipped["properties"]
    assert {"baseUrl", "modelMapping", "rateLimit", "streamConfig", "endpoints"} <= set(props)
    assert shipped["additionalProperties"] is False


# Every route of every shipped profile: where it goes, or that the router refuses it itself
# because the provider has no endpoint speaking that format.
LOCAL = "local estimate"  # a token-counting route the router answers itself
COUNTING = {"/v1/responses/input_tokens": LOCAL, "/v1/messages/count_tokens": LOCAL}


def _chat_only(chat_url: str) -> dict[str, str]:
    """The routes of an upstream that speaks only Chat Completions, beside its own."""
    return {"/v1/messages": chat_url, "/v1/responses": chat_url, **COUNTING}


ROUTE_TABLE = {
    "qwen": {
        "/v1/chat/completions": "https://portal.qwen.ai/v1/chat/completions",
        "/v1/completions": "https://portal.qwen.ai/v1/completions",
        "/v1/embeddings": "https://portal.qwen.ai/v1/embeddings",
        **_chat_only("https://portal.qwen.ai/v1/chat/completions"),
    },
    "openai": {r: "https://api.openai.com" + r for r in PROXY_ROUTES}
    | {
        "/v1/messages": "https://api.openai.com/v1/chat/completions",
        "/v1/messages/count_tokens": LOCAL,
    },
    "anthropic": {
        "/v1/chat/completions": "https://api.anthropic.com/v1/messages",
        "/v1/messages": "https://api.anthropic.com/v1/messages",
        "/v1/responses": "https://api.anthropic.com/v1/messages",
        "/v1/messages/count_tokens": "https://api.anthropic.com/v1/messages/count_tokens",
        "/v1/responses/input_tokens": LOCAL,
    },
    "cohere": {
        "/v1/chat/completions": "https://api.cohere.ai/compatibility/v1/chat/completions",
        "/v1/embeddings": "https://api.cohere.ai/compatibility/v1/embeddings",
        **_chat_only("https://api.cohere.ai/compatibility/v1/chat/completions"),
    },
    "gemini": {
        "/v1/chat/completions": "https://generativelanguage.googleapis.com/v1beta/openai/chat/completions",
        "/v1/embeddings": "https://generativelanguage.googleapis.com/v1beta/openai/embeddings",
        **_chat_only("https://generativelanguage.googleapis.com/v1beta/openai/chat/completions"),
    },
    "ollama-cloud": {
        "/v1/chat/completions": "https://ollama.com/v1/chat/completions",
        "/v1/completions": "https://ollama.com/v1/completions",
        "/v1/embeddings": "https://ollama.com/v1/embeddings",
        **_chat_only("https://ollama.com/v1/chat/completions"),
    },
    "ollama-local": {
        "/v1/chat/completions": "http://localhost:11434/v1/chat/completions",
        "/v1/completions": "http://localhost:11434/v1/completions",
        "/v1/embeddings": "http://localhost:11434/v1/embeddings",
        **_chat_only("http://localhost:11434/v1/chat/completions"),
    },
    "generic": {
        r: "http://localhost:8080" + r
        for r in PROXY_ROUTES
        if r not in ("/v1/messages", "/v1/responses", *COUNTING)
    }
    | _chat_only("http://localhost:8080/v1/chat/completions"),
}


@pytest.mark.parametrize("name", SHIPPED)
def test_every_route_of_every_shipped_profile(name: str) -> None:
    cfg = load_file(find_profile(name))
    enabled = {
        r: LOCAL if ep.local_estimate else ep.url for r, ep in cfg.endpoints.items() if ep.enabled
    }
    assert enabled == ROUTE_TABLE[name]


# What each shipped profile's translated routes may send, by what the provider takes: OpenAI's
# reasoning models refuse `max_tokens` (openai: max_completion_tokens) and its other models
# (gpt-4o, gpt-4.1: the shipped list) refuse `reasoning_effort`; Ollama refuses
# `reasoning_effort` for a model that cannot think (llama3.2, qwen2.5-coder, qwen3-coder:480b of
# the shipped lists) and takes it from the gpt-oss models, which think; Cohere's compatibility
# API takes only `none` / `high` (and its shipped model does not reason): it sends none.
OPENAI_REASONING = ("o1", "o1-2*", "o1-pro*", "o3*", "o4*", "gpt-5*")
TRANSLATION_OPTIONS = {
    "openai": (OPENAI_REASONING, True),  # (reasoning_effort, max_completion_tokens)
    "cohere": (False, False),
    "ollama-cloud": (("gpt-oss*",), False),
    "ollama-local": (("gpt-oss*",), False),
}
# Which of the shipped profiles' own models get the client's effort.
TAKES_EFFORT = {
    "openai": {"gpt-5.5": True, "gpt-5-mini": True, "o3": True, "o4-mini": True, "o1": True}
    | {"o1-mini": False, "gpt-4o": False, "gpt-4o-mini": False, "gpt-4.1": False},
    "ollama-cloud": {"gpt-oss:120b": True, "gpt-oss:20b": True, "qwen3-coder:480b": False},
    "ollama-local": {"llama3.2": False, "qwen2.5-coder": False, "gpt-oss:20b": True},
}


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_profiles_translate_into_what_their_provider_takes(name: str) -> None:
    cfg = load_file(find_profile(name))
    for route, ep in cfg.endpoints.items():
        if ep.translation != "none" and ep.format == "openai":
            expected = TRANSLATION_OPTIONS.get(name, (True, False))
            assert (ep.reasoning_effort, ep.max_completion_tokens) == expected, route
            for model, takes in TAKES_EFFORT.get(name, {}).items():
                assert takes_effort(ep.reasoning_effort, model) is takes, (route, model)
        if ep.translation != "none" and ep.format == "anthropic":
            # Codex sends no output limit: 4,096 tokens cut every large file it wrote. Claude
            # Code asks for 32,000, which every Claude 4 model takes.
            assert ep.default_max_tokens == (32000 if name == "anthropic" else 4096), route


def test_default_max_tokens_merges_like_the_other_translation_fields(tmp_path: Path) -> None:
    p = _write(
        tmp_path,
        {
            "name": "x",
            "baseUrl": "http://up",
            "translation": {"defaultMaxTokens": 8192},
            "endpoints": {
                "/v1/chat/completions": {"format": "anthropic"},
                "/v1/responses": {"format": "anthropic", "translation": {"strict": True}},
                "/v1/completions": {"translation": {"defaultMaxTokens": 1000}},
            },
        },
    )
    eps = load_file(p).endpoints
    assert eps["/v1/chat/completions"].default_max_tokens == 8192
    assert eps["/v1/responses"].default_max_tokens == 8192  # another key set: this one kept
    assert eps["/v1/completions"].default_max_tokens == 1000
    with pytest.raises(ConfigError, match="defaultMaxTokens"):
        load_file(_write(tmp_path, {"name": "x", "baseUrl": "http://up",
                                    "translation": {"defaultMaxTokens": 0}}))  # fmt: skip


def test_request_usage_merges_like_the_other_stream_fields(tmp_path: Path) -> None:
    p = _write(
        tmp_path,
        {
            "name": "x",
            "baseUrl": "http://h",
            "streamConfig": {"requestUsage": False},
            "endpoints": {
                "/v1/completions": {"streamConfig": {"requestUsage": True}},
                "/v1/embeddings": {"enabled": False},
            },
        },
    )
    cfg = load_file(p)
    assert cfg.endpoints["/v1/chat/completions"].request_usage is False
    assert cfg.endpoints["/v1/completions"].request_usage is True
    assert cfg.endpoints["/v1/embeddings"].enabled is False
    assert load_file(find_profile("openai")).endpoints["/v1/chat/completions"].request_usage


def test_translation_options_merge_endpoint_over_profile(tmp_path: Path) -> None:
    p = _write(
        tmp_path,
        {
            "name": "x",
            "baseUrl": "http://h",
            "translation": {"strict": True, "reasoningHistory": True, "reasoningEffort": False},
            "endpoints": {
                "/v1/messages": {
                    "format": "openai",
                    "translation": {"strict": False, "reasoningEffort": True},
                },
                "/v1/responses": {"format": "anthropic"},
            },
        },
    )
    eps = load_file(p).endpoints
    assert (eps["/v1/messages"].translation_strict, eps["/v1/messages"].reasoning_history) == (
        False,
        True,
    )
    assert eps["/v1/responses"].translation_strict is True
    assert eps["/v1/messages"].reasoning_effort is True
    assert eps["/v1/responses"].reasoning_effort is False
    assert eps["/v1/chat/completions"].reasoning_effort is False
    assert eps["/v1/responses"].translation == "responses_to_anthropic"
    assert eps["/v1/responses"].url == "http://h/v1/messages"
    assert eps["/v1/messages/count_tokens"].local_estimate is True
    assert eps["/v1/responses/input_tokens"].local_estimate is True
    assert (
        load_file(find_profile("anthropic")).endpoints["/v1/messages/count_tokens"].local_estimate
        is False
    )


def test_reasoning_effort_may_name_the_models_that_take_it(tmp_path: Path) -> None:
    """A list: the upstream model names and `prefix*` patterns that get the client's effort (an
    endpoint's list replaces the profile's); a `*` anywhere but at the end is refused."""
    p = _write(
        tmp_path,
        {
            "name": "x",
            "baseUrl": "http://h",
            "translation": {"reasoningEffort": ["o3*", "gpt-5"]},
            "endpoints": {
                "/v1/messages": {"format": "openai"},
                "/v1/responses": {"format": "openai", "translation": {"reasoningEffort": ["r1"]}},
            },
        },
    )
    eps = load_file(p).endpoints
    setting = eps["/v1/messages"].reasoning_effort
    assert setting == ("o3*", "gpt-5")
    assert [takes_effort(setting, m) for m in ("o3", "o3-mini", "gpt-5", "gpt-5-mini")] == [
        True,
        True,
        True,
        False,
    ]
    assert [takes_effort(setting, m) for m in ("gpt-4.1", "", None, 5)] == [False] * 4
    assert eps["/v1/responses"].reasoning_effort == ("r1",)
    assert takes_effort(True, None) and not takes_effort(False, "o3")
    for bad in (["o*3"], [""], "o3", [3]):
        with pytest.raises(ConfigError):
            load_file(
                _write(
                    tmp_path,
                    {"name": "x", "baseUrl": "http://h", "translation": {"reasoningEffort": bad}},
                )
            )


@pytest.mark.parametrize(
    ("route", "fmt"),
    [
        ("/v1/chat/completions", "responses"),
        ("/v1/messages", "responses"),
        ("/v1/embeddings", "anthropic"),
        ("/v1/messages/count_tokens", "openai"),
    ],
)
def test_formats_a_route_cannot_be_translated_to_are_refused(
    tmp_path: Path, route: str, fmt: str
) -> None:
    p = _write(
        tmp_path, {"name": "x", "baseUrl": "http://h", "endpoints": {route: {"format": fmt}}}
    )
    with pytest.raises(ConfigError, match="is not a format this route can be translated to"):
        load_file(p)
