"""Routing files (SPEC §11): recognised beside profiles, validated strictly, one resolver."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service.config.loader import ConfigError, load_file, routing_schema
from service.config.routing import Routing, RoutingFile, build_upstreams


def write(tmp_path: Path, data: dict[str, Any], name: str = "routing.json") -> Path:
    p = tmp_path / name
    p.write_text(json.dumps(data))
    return p


def routing_file(**over: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "upstreams": {
            "oai": {"baseUrl": "http://127.0.0.1:1"},
            "ant": {"baseUrl": "http://127.0.0.1:2", "endpoints": {}},
            "local": {"baseUrl": "http://127.0.0.1:3"},
        },
        "modelRoutes": [
            {"match": "gpt-4o", "targets": [{"upstream": "oai"}], "fallbacks": ["local-*"]},
            {"match": "gpt-*", "targets": [{"upstream": "oai"}]},
            {"match": "claude-*", "targets": [{"upstream": "ant", "model": "claude-${1}"}]},
            {"match": "local-*", "targets": [{"upstream": "local", "model": "${1}"}]},
            {"match": "*", "targets": [{"upstream": "local", "model": "default-model"}]},
        ],
    }
    data.update(over)
    return data


def routing(tmp_path: Path, **over: Any) -> Routing:
    cfg = load_file(write(tmp_path, routing_file(**over)))
    assert cfg.routing is not None
    return cfg.routing


def test_a_file_with_upstreams_is_a_routing_file_and_a_profile_stays_a_profile(tmp_path) -> None:
    cfg = load_file(write(tmp_path, routing_file(name="multi")))
    assert cfg.routing is not None
    assert cfg.profile.name == "multi"
    assert cfg.profile.base_url == "http://127.0.0.1:1"  # the first upstream's, for /health
    plain = load_file(write(tmp_path, {"name": "p", "baseUrl": "http://x"}, "p.json"))
    assert plain.routing is None


def test_exact_beats_the_longest_prefix_which_beats_star(tmp_path) -> None:
    r = routing(tmp_path)
    found = r.route_for("gpt-4o")
    assert found is not None and found[0].match == "gpt-4o"
    found = r.route_for("gpt-4o-mini")
    assert found is not None and found[0].match == "gpt-*"
    found = r.route_for("claude-sonnet")
    assert found is not None and (found[0].match, found[1]) == ("claude-*", "sonnet")
    found = r.route_for("anything")
    assert found is not None and found[0].match == "*"


def test_a_file_without_star_has_no_route_for_an_unknown_model(tmp_path) -> None:
    data = routing_file()
    data["modelRoutes"] = data["modelRoutes"][:-1]
    cfg = load_file(write(tmp_path, data))
    assert cfg.routing is not None
    assert cfg.routing.plan("unknown") is None


def test_the_star_part_fills_the_target_model(tmp_path) -> None:
    r = routing(tmp_path)
    plan = r.plan("claude-opus-4")
    assert plan is not None
    assert [(c.upstream.name, c.model) for c in plan[1]] == [("ant", "claude-opus-4")]
    plan = r.plan("local-qwen3")
    assert plan is not None
    assert [(c.upstream.name, c.model) for c in plan[1]] == [("local", "qwen3")]


def test_fallbacks_follow_the_route_s_own_targets(tmp_path) -> None:
    r = routing(tmp_path)
    plan = r.plan("gpt-4o")
    assert plan is not None
    got = [(c.upstream.name, c.model, c.fallback) for c in plan[1]]
    # the fallback route `local-*` is asked for the client's model: its `${1}` matches nothing
    assert got == [("oai", "gpt-4o", False), ("local", "", True)]


def test_weighted_targets_share_requests_by_weight_and_priority_keeps_the_order(tmp_path) -> None:
    routes = [
        {
            "match": "m",
            "targets": [{"upstream": "oai", "weight": 3}, {"upstream": "local", "weight": 1}],
        },
        {
            "match": "p",
            "strategy": "priority",
            "targets": [{"upstream": "oai"}, {"upstream": "local"}],
        },
    ]
    r = routing(tmp_path, modelRoutes=routes)
    firsts = Counter()
    for _ in range(400):
        plan = r.plan("m")
        assert plan is not None
        names = [c.upstream.name for c in plan[1]]
        assert sorted(names) == ["local", "oai"]  # each target once per request
        firsts[names[0]] += 1
    assert firsts == {"oai": 300, "local": 100}
    for _ in range(5):
        plan = r.plan("p")
        assert plan is not None
        assert [c.upstream.name for c in plan[1]] == ["oai", "local"]


def test_context_window_fallbacks_are_a_separate_plan(tmp_path) -> None:
    routes = [
        {"match": "small", "targets": [{"upstream": "oai"}], "contextWindowFallbacks": ["big"]},
        {"match": "big", "targets": [{"upstream": "ant", "model": "big-1m"}]},
    ]
    r = routing(tmp_path, modelRoutes=routes)
    plan = r.plan("small")
    assert plan is not None
    assert [c.upstream.name for c in plan[1]] == ["oai"]
    assert [(c.upstream.name, c.model) for c in r.context_plan(plan[0], "small")] == [
        ("ant", "big-1m")
    ]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d["modelRoutes"][0]["targets"].append({"upstream": "nope"}), "unknown upstream"),
        (lambda d: d["modelRoutes"][0]["fallbacks"].append("nothing-*"), "names no route"),
        (lambda d: d["modelRoutes"].append({"match": "gpt-*", "targets": [{"upstream": "oai"}]}),
         "appears twice"),
        (lambda d: d["modelRoutes"][3].update(fallbacks=["gpt-4o"]), "fallback cycle"),
        (lambda d: d["modelRoutes"].append({"match": "a*b", "targets": [{"upstream": "oai"}]}),
         "match"),
        (lambda d: d["modelRoutes"].append({"match": "x", "targets": []}), "targets"),
        (lambda d: d["upstreams"]["oai"].update(credential="operator"), "needs apiKeyEnv"),
        (lambda d: d["upstreams"]["oai"].update(apiKeyEnv="API_ROUTER_TEST_UNSET_KEY"),
         "API_ROUTER_TEST_UNSET_KEY is not set"),
        (lambda d: d["upstreams"]["oai"].update(baseUrl="ftp://x"), "http"),
        (lambda d: d.update(retry={"maxAttempts": 0}), "maxAttempts"),
        (lambda d: d.update(unknownKey=1), "unknownKey"),
        (lambda d: d["upstreams"].update(bad={}), "needs a profile or a baseUrl"),
    ],
)  # fmt: skip
def test_a_broken_routing_file_is_refused_with_the_reason(tmp_path, change, message) -> None:
    data = routing_file()
    change(data)
    with pytest.raises(ConfigError, match=message):
        load_file(write(tmp_path, data))


def test_an_upstream_builds_on_a_shipped_profile_with_inline_overrides(tmp_path, monkeypatch):
    monkeypatch.setenv("API_ROUTER_TEST_OPENAI_KEY", "sk-operator-secret-1234")
    data = routing_file()
    data["upstreams"]["oai"] = {
        "profile": "openai",
        "baseUrl": "http://127.0.0.1:9",
        "apiKeyEnv": "API_ROUTER_TEST_OPENAI_KEY",
    }
    data["upstreams"]["ant"] = {"profile": "anthropic", "baseUrl": "http://127.0.0.1:8"}
    cfg = load_file(write(tmp_path, data))
    assert cfg.routing is not None
    oai, ant = cfg.routing.upstreams["oai"], cfg.routing.upstreams["ant"]
    assert oai.profile.base_url == "http://127.0.0.1:9"
    assert (oai.credential, oai.operator_key) == ("operator", "sk-operator-secret-1234")
    assert ant.credential == "client"
    assert ant.profile.auth.header.lower() == "x-api-key"  # the anthropic profile's own auth
    assert ant.endpoints["/v1/messages"].format == "anthropic"
    assert "sk-operator-secret-1234" in cfg.secret_values()


def _sibling_routing(tmp_path: Path) -> Path:
    """A routing file whose upstream builds on a profile file beside it (`mine.json`)."""
    write(tmp_path, {"name": "mine", "baseUrl": "http://127.0.0.1:7"}, "mine.json")
    data = {
        "upstreams": {"main": {"profile": "mine"}},
        "modelRoutes": [{"match": "*", "targets": [{"upstream": "main"}]}],
    }
    return write(tmp_path, data)


def test_an_edit_of_an_upstream_s_profile_file_reloads_the_routing_file(tmp_path) -> None:
    """SPEC §11: a routing file is hot-reloaded like a profile, and so is what it is made of:
    before, only the routing file itself was watched."""
    from service.config.reload import ConfigHolder

    path = _sibling_routing(tmp_path)
    holder = ConfigHolder(load_file(path))
    assert [dep for dep, _ in holder.current.deps] == [tmp_path / "mine.json"]
    assert holder.check() is False  # nothing changed
    write(tmp_path, {"name": "mine", "baseUrl": "http://127.0.0.1:8000"}, "mine.json")
    assert holder.check() is True
    routing = holder.current.routing
    assert routing is not None
    assert routing.upstreams["main"].profile.base_url == "http://127.0.0.1:8000"
    # broken, then fixed: the failure names the profile's own file, the fix is read
    (tmp_path / "mine.json").write_text("{ nope")
    assert holder.check() is False
    assert holder.last_error is not None
    assert holder.last_error.startswith(f"{tmp_path / 'mine.json'}: invalid JSON at line 1")
    write(tmp_path, {"name": "mine", "baseUrl": "http://127.0.0.1:9"}, "mine.json")
    assert holder.check() is True and holder.last_error is None


def test_a_removed_upstream_profile_file_keeps_the_last_good_config(tmp_path) -> None:
    """The routing file unchanged, its upstream's own `openai.json` removed: the reload looked
    further and found the shipped `openai` (the operator's upstream silently became
    api.openai.com, and the clients' keys went there). It is an error now, as for the routing
    file itself, until the file is back."""
    import shutil

    from service.config.reload import ConfigHolder

    write(tmp_path, {"name": "openai", "baseUrl": "http://127.0.0.1:8000"}, "openai.json")
    data = {
        "name": "multi",
        "upstreams": {"main": {"profile": "openai"}},
        "modelRoutes": [{"match": "*", "targets": [{"upstream": "main"}]}],
    }
    holder = ConfigHolder(load_file(write(tmp_path, data)))
    main = tmp_path / "openai.json"
    shutil.move(main, tmp_path / "openai.json.bak")
    assert holder.check() is False
    assert holder.last_error == f"{main}: file not found (read by {holder.current.path})"
    routing = holder.current.routing
    assert routing is not None
    assert routing.upstreams["main"].profile.base_url == "http://127.0.0.1:8000"
    shutil.move(tmp_path / "openai.json.bak", main)
    holder.check()
    assert holder.last_error is None and holder.state()["status"] == "ok"


def test_an_invalid_upstream_profile_names_the_upstream_and_its_file(tmp_path) -> None:
    path = _sibling_routing(tmp_path)
    write(tmp_path, {"name": "mine", "baseUrl": "http://h", "bogusKey": 1}, "mine.json")
    with pytest.raises(ConfigError) as e:
        load_file(path)
    assert str(e.value) == (
        f"{path} (upstream main, profile mine from {tmp_path / 'mine.json'}): "
        "$.bogusKey: Extra inputs are not permitted"
    )


def test_a_routing_file_takes_camel_case_keys_only(tmp_path) -> None:
    data = routing_file()
    data["upstreams"]["oai"] = {"base_url": "http://127.0.0.1:1"}
    with pytest.raises(ConfigError, match=r"base_url: Extra inputs are not permitted"):
        load_file(write(tmp_path, data))
    data = routing_file(model_routes=[])
    with pytest.raises(ConfigError, match=r"\$\.model_routes: Extra inputs are not permitted"):
        load_file(write(tmp_path, data))


@pytest.mark.parametrize(
    ("api_key_env", "shown"),
    [
        ("OPENAI_API_KEY_UNSET", True),
        ("Xk3vQ9tLmN2pR7sW4yZ8aB6cD1eF5gH0jK2lM9nP", False),  # a key pasted as the name
    ],
)
def test_a_missing_key_variable_is_named_only_when_it_reads_as_a_name(
    tmp_path, api_key_env: str, shown: bool
) -> None:
    data = routing_file()
    data["upstreams"]["oai"]["apiKeyEnv"] = api_key_env
    with pytest.raises(ConfigError) as e:
        load_file(write(tmp_path, data))
    assert (api_key_env in str(e.value)) is shown
    assert "upstreams.oai: the environment variable" in str(e.value)


def test_models_lists_exact_routes_and_patterns_only_when_asked(tmp_path) -> None:
    r = routing(tmp_path)
    assert r.advertised_models() == ["gpt-4o"]
    r = routing(tmp_path, listPatternRoutes=True)
    assert r.advertised_models() == ["gpt-4o", "gpt-*", "claude-*", "local-*", "*"]


def test_route_policy_overrides_the_file_s_which_overrides_the_defaults(tmp_path) -> None:
    routes = [
        {"match": "a", "targets": [{"upstream": "oai"}], "retry": {"maxAttempts": 5}},
        {"match": "b", "targets": [{"upstream": "oai"}], "timeouts": {"headersSecs": 2}},
    ]
    r = routing(tmp_path, modelRoutes=routes, retry={"maxAttempts": 2, "backoffBaseSecs": 0.1})
    assert (r.policy("a").max_attempts, r.policy("a").backoff_base_secs) == (5, 0.1)
    assert (r.policy("b").max_attempts, r.policy("b").headers_secs) == (2, 2)
    assert r.policy("b").max_retry_after_secs == 5.0  # the default


ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples" / "routing").glob("*.json"))
EXAMPLE_KEYS = {
    "OPENAI_API_KEY": "sk-example-openai",
    "ANTHROPIC_API_KEY": "sk-example-anthropic",
    "DASHSCOPE_API_KEY": "sk-example-dashscope",
}


def test_the_shipped_routing_schema_is_current() -> None:
    shipped = json.loads((ROOT / "service" / "config" / "routing.schema.json").read_text())
    assert shipped == json.loads(json.dumps(routing_schema())), "run `make schema`"
    assert shipped["additionalProperties"] is False
    assert {"upstreams", "modelRoutes", "retry", "timeouts"} <= set(shipped["properties"])


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_the_examples_validate_against_the_schema_and_load(
    path: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    assert len(EXAMPLES) == 2
    schema = json.loads((ROOT / "service" / "config" / "routing.schema.json").read_text())
    data = json.loads(path.read_text())
    jsonschema.validate(data, schema)
    for k, v in EXAMPLE_KEYS.items():
        monkeypatch.setenv(k, v)
    cfg = load_file(path)
    assert cfg.routing is not None
    for route in cfg.routing.routes.values():
        for t in route.targets:
            assert t.upstream in cfg.routing.upstreams
    # what the schema cannot say, the loader refuses: an example that loads is whole
    bad = dict(data, modelRoutes=[*data["modelRoutes"], data["modelRoutes"][0]])
    jsonschema.validate(bad, schema)  # a duplicate match passes the schema ...
    with pytest.raises(ConfigError, match="appears twice"):  # ... and not the loader
        load_file(write(tmp_path, bad))


def test_the_multi_provider_example_sends_the_dashscope_key_to_dashscope(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """docs/routing.md calls its qwen upstream DashScope and it holds DASHSCOPE_API_KEY: the
    shipped qwen profile's portal.qwen.ai (Qwen Code's OAuth service) would refuse that key."""
    for k, v in EXAMPLE_KEYS.items():
        monkeypatch.setenv(k, v)
    cfg = load_file(ROOT / "examples" / "routing" / "multi-provider.json")
    assert cfg.routing is not None
    qwen = cfg.routing.upstreams["qwen"]
    assert qwen.operator_key == "sk-example-dashscope"
    assert qwen.profile.base_url == "https://dashscope-intl.aliyuncs.com/compatible-mode"
    chat = qwen.endpoints["/v1/chat/completions"]
    assert chat.url == "https://dashscope-intl.aliyuncs.com/compatible-mode/v1/chat/completions"


def test_a_null_translation_or_endpoints_on_an_upstream_is_no_override(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`"translation": null` on an upstream whose profile has a translation block (the
    anthropic profile's defaultMaxTokens) crashed the load with a TypeError traceback."""
    data = {
        "upstreams": {"a": {"profile": "anthropic", "translation": None, "endpoints": None}},
        "modelRoutes": [{"match": "m", "targets": [{"upstream": "a"}]}],
    }
    cfg = load_file(write(tmp_path, data))
    assert cfg.routing is not None
    assert cfg.routing.upstreams["a"].endpoints["/v1/responses"].default_max_tokens == 32000


def test_gemini_s_rules_on_an_upstream_follow_its_profile_unless_it_sets_them(
    tmp_path: Path,
) -> None:
    data = {
        "upstreams": {
            "named": {"profile": "gemini"},
            "null": {"profile": "gemini", "toolSchemas": None, "thoughtSignatures": None},
            "off": {"profile": "gemini", "toolSchemas": "asIs"},
            "own": {"baseUrl": "http://127.0.0.1:1", "thoughtSignatures": "gemini"},
        },
        "modelRoutes": [{"match": "m", "targets": [{"upstream": "named"}]}],
    }
    cfg = load_file(write(tmp_path, data))
    assert cfg.routing is not None
    rules = {
        name: (u.endpoints[CHAT].tool_schemas, u.endpoints[CHAT].thought_signatures)
        for name, u in cfg.routing.upstreams.items()
    }
    assert rules == {
        "named": ("gemini", "gemini"),
        "null": ("gemini", "gemini"),  # null: no override, as for endpoints and translation
        "off": ("asIs", "gemini"),
        "own": ("asIs", "gemini"),
    }


CHAT = "/v1/chat/completions"
names = st.text(alphabet="abcdefgh-.0123", min_size=1, max_size=8)


@settings(max_examples=150, deadline=None)
@given(
    exact=st.lists(names, max_size=8, unique=True),
    prefixes=st.lists(st.text(alphabet="abcdefgh-", max_size=5), max_size=5, unique=True),
    probes=st.lists(names, max_size=20),
    list_patterns=st.booleans(),
)
def test_models_and_routing_never_disagree(exact, prefixes, probes, list_patterns) -> None:
    """Property: every model /v1/models lists routes to the route of that very name (an exact
    match, or the pattern itself), and any model routes to the most specific match."""
    routes = [{"match": m, "targets": [{"upstream": "u"}]} for m in exact]
    routes += [{"match": p + "*", "targets": [{"upstream": "u"}]} for p in prefixes]
    if not routes:
        return
    data = {
        "upstreams": {"u": {"baseUrl": "http://127.0.0.1:1"}},
        "modelRoutes": routes,
        "listPatternRoutes": list_patterns,
    }
    spec = RoutingFile.model_validate(data, by_alias=True)
    r = Routing(spec, build_upstreams(spec, lambda _n: {}))
    listed = r.advertised_models()
    assert set(listed) == set(exact) | ({p + "*" for p in prefixes} if list_patterns else set())
    for m in listed:
        found = r.route_for(m)
        assert found is not None
        if not m.endswith("*"):
            assert found[0].match == m  # a listed model always reaches its own route
    for model in probes + exact:
        found = r.route_for(model)
        if model in exact:
            assert found is not None and found[0].match == model
            continue
        matching = [p for p in prefixes if model.startswith(p)]
        if not matching:
            assert found is None
        else:
            assert found is not None and found[0].match == max(matching, key=len) + "*"


def test_an_upstream_s_translation_is_merged_key_by_key_over_its_profile_s(tmp_path) -> None:
    """The shipped openai profile sends max_completion_tokens (its translation block); an
    upstream that turns reasoningEffort off keeps that (the whole block was replaced)."""
    data = {
        "name": "multi",
        "upstreams": {"main": {"profile": "openai", "translation": {"reasoningEffort": False}}},
        "modelRoutes": [{"match": "*", "targets": [{"upstream": "main"}]}],
    }
    routing = load_file(write(tmp_path, data)).routing
    assert routing is not None
    messages = routing.upstreams["main"].profile.resolve()["/v1/messages"]
    assert (messages.reasoning_effort, messages.max_completion_tokens) == (False, True)
