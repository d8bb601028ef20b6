"""service.proxy.gemini: tool parameter schemas rewritten into what Gemini takes.

The schemas below have the shapes the coding agents send (checked against Claude Code 2.1.332,
Qwen Code 0.24.4 and Codex 0.171.0 talking to a capturing server): a JSON Schema 2020-12
`$schema`, `additionalProperties: false` everywhere, maps as `propertyNames` +
`additionalProperties`, `exclusiveMinimum`, `const` inside `anyOf`, `allOf` of patterns,
`format: uri`, `oneOf`, type lists with "null", and an MCP server's `$ref`/`$defs`. Gemini's
side is tests/fakes/gemini_schema.py, written from its Schema object's documented fields and
the refusals its users report, independently of the module under test.
"""

from __future__ import annotations

import copy
from typing import Any

import hypothesis.strategies as st
import pytest
from hypothesis import given, settings

from service.config.model import Profile
from service.proxy.gemini import AS_IS, GEMINI, fit_tools, gemini_parameters
from tests.fakes.gemini_schema import schema_refusals

AGENT_LIKE: dict[str, dict[str, Any]] = {
    "write": {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "object",
        "properties": {
            "file_path": {"description": "Absolute path", "type": "string"},
            "content": {"type": "string"},
        },
        "required": ["file_path", "content"],
        "additionalProperties": False,
    },
    "monitor": {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "object",
        "properties": {
            "timeout_ms": {"type": "number", "minimum": 1000, "maximum": 3600000},
            "interval": {"type": "number", "exclusiveMinimum": 0},
            "url": {"type": "string", "format": "uri"},
            "to": {"type": "string", "allOf": [{"pattern": "^[^\\n]*$"}, {"maxLength": 300}]},
            "mode": {"anyOf": [{"const": "tail"}, {"const": "follow"}]},
            "metadata": {
                "description": "Arbitrary metadata",
                "type": "object",
                "propertyNames": {"type": "string"},
                "additionalProperties": {},
            },
        },
        "required": ["timeout_ms", "gone"],
        "additionalProperties": False,
    },
    "qwen_agent": {
        "type": "object",
        "properties": {
            "fork_turns": {
                "oneOf": [
                    {"type": "string", "enum": ["all"]},
                    {"type": "string", "pattern": "^[1-9][0-9]*$"},
                ]
            },
            "limit": {"type": ["integer", "null"], "minimum": 1},
            "either": {"type": ["string", "number"], "description": "a name or a number"},
        },
        "required": ["fork_turns"],
    },
    "mcp_pydantic": {
        "$defs": {
            "Tag": {"type": "object", "properties": {"name": {"type": "string"}}},
            "Tree": {
                "type": "object",
                "properties": {
                    "label": {"type": "string"},
                    "children": {"type": "array", "items": {"$ref": "#/$defs/Tree"}},
                },
            },
        },
        "type": "object",
        "properties": {
            "tags": {"type": "array", "items": {"$ref": "#/$defs/Tag"}},
            "tree": {"$ref": "#/$defs/Tree"},
            "level": {"enum": [1, 2, 3], "type": "integer"},
            "maybe": {"anyOf": [{"type": "string"}, {"type": "null"}], "default": None},
        },
        "required": ["tags"],
        "title": "save_noteArguments",
    },
}


@pytest.mark.parametrize("name", sorted(AGENT_LIKE))
def test_an_agent_s_schema_gemini_refuses_is_one_it_takes_once_fitted(name: str) -> None:
    schema = AGENT_LIKE[name]
    before = copy.deepcopy(schema)
    assert schema_refusals(schema), "the case must be one Gemini refuses as the client wrote it"
    fitted = gemini_parameters(schema)
    assert fitted is not None
    assert schema_refusals(fitted) == []
    assert schema == before  # the client's own copy is not touched
    # every property the client described is still there, by name
    assert set(fitted["properties"]) == set(schema["properties"])


def test_what_each_keyword_becomes() -> None:
    fitted = gemini_parameters(AGENT_LIKE["monitor"])
    assert fitted is not None
    p = fitted["properties"]
    assert p["timeout_ms"] == {"type": "number", "minimum": 1000, "maximum": 3600000}
    assert p["interval"] == {"type": "number", "minimum": 0}  # the bound, not its exclusivity
    assert p["url"] == {"type": "string"}  # Gemini takes no "uri" format
    assert p["to"]["type"] == "string" and p["to"]["maxLength"] == 300  # allOf merged
    assert p["mode"] == {  # each `const` a one-value enum, the branches kept
        "anyOf": [{"type": "string", "enum": ["tail"]}, {"type": "string", "enum": ["follow"]}]
    }
    assert p["metadata"] == {"description": "Arbitrary metadata"}  # a map: no OBJECT type
    assert fitted["required"] == ["timeout_ms"]  # "gone" is no property
    assert fitted["type"] == "object" and "additionalProperties" not in fitted

    q = gemini_parameters(AGENT_LIKE["qwen_agent"])
    assert q is not None
    assert q["properties"]["limit"] == {"type": "integer", "minimum": 1, "nullable": True}
    assert q["properties"]["fork_turns"]["anyOf"] == [
        {"type": "string", "enum": ["all"]},
        {"type": "string", "pattern": "^[1-9][0-9]*$"},
    ]
    assert q["properties"]["either"] == {
        "description": "a name or a number",
        "anyOf": [{"type": "string"}, {"type": "number"}],
    }

    m = gemini_parameters(AGENT_LIKE["mcp_pydantic"])
    assert m is not None
    assert m["properties"]["tags"]["items"] == {
        "type": "object",
        "properties": {"name": {"type": "string"}},
    }
    tree = m["properties"]["tree"]
    assert tree["properties"]["label"] == {"type": "string"}
    # the reference back into the tree is cut there: an unconstrained node
    assert tree["properties"]["children"] == {"type": "array", "items": {}}
    # Gemini takes an enum on strings only: another type's values go in its description
    assert m["properties"]["level"] == {"type": "integer", "description": "one of: 1, 2, 3"}
    assert m["properties"]["maybe"] == {"type": "string", "nullable": True, "default": None}
    assert m["title"] == "save_noteArguments" and "$defs" not in m


def test_parameters_with_no_property_are_not_sent() -> None:
    assert gemini_parameters({"type": "object", "properties": {}}) is None
    assert gemini_parameters({"type": "object", "additionalProperties": False}) is None
    body = {
        "tools": [
            {"type": "function", "function": {"name": "now", "parameters": {"type": "object"}}}
        ]
    }
    assert fit_tools(body, GEMINI)
    assert body["tools"] == [{"type": "function", "function": {"name": "now"}}]


def test_fit_tools_on_chat_and_responses_bodies() -> None:
    schema = AGENT_LIKE["write"]
    fitted = gemini_parameters(schema)
    chat = {
        "model": "m",
        "tools": [
            {"type": "function", "function": {"name": "Write", "parameters": schema}},
            {"type": "function", "function": {"name": "bare"}},
        ],
        "messages": [],
    }
    responses = {
        "tools": [
            {"type": "function", "name": "Write", "parameters": schema, "strict": False},
            {"type": "custom", "name": "apply_patch", "format": {"type": "grammar"}},
        ]
    }
    as_sent = copy.deepcopy((chat, responses))
    assert not fit_tools(chat, AS_IS) and not fit_tools(responses, AS_IS)
    assert (chat, responses) == as_sent  # asIs: nothing changes

    assert fit_tools(chat, GEMINI)
    assert chat["tools"][0] == {
        "type": "function",
        "function": {"name": "Write", "parameters": fitted},
    }
    assert chat["tools"][1] == as_sent[0]["tools"][1]
    assert fit_tools(responses, GEMINI)
    assert responses["tools"] == [
        {"type": "function", "name": "Write", "parameters": fitted, "strict": False},
        as_sent[1]["tools"][1],
    ]
    assert schema == as_sent[0]["tools"][0]["function"]["parameters"]  # shared, untouched
    # a schema Gemini already takes is left as it is: no change, no rewrite of the body
    again = {"tools": [{"type": "function", "function": {"name": "W", "parameters": fitted}}]}
    assert not fit_tools(again, GEMINI)
    assert not fit_tools({"messages": []}, GEMINI)


def test_a_definition_referenced_everywhere_expands_only_so_far() -> None:
    # Each definition refers to the next twice: written out in full, 2**40 nodes.
    defs = {
        f"D{i}": {
            "type": "object",
            "properties": {"a": {"$ref": f"#/$defs/D{i + 1}"}, "b": {"$ref": f"#/$defs/D{i + 1}"}},
        }
        for i in range(40)
    }
    defs["D40"] = {"type": "string"}
    fitted = gemini_parameters(
        {"$defs": defs, "type": "object", "properties": {"x": {"$ref": "#/$defs/D0"}}}
    )
    assert fitted is not None and schema_refusals(fitted) == []


def test_schemas_that_cannot_hold_as_written_still_give_what_gemini_takes() -> None:
    # Two types at once (the node's and its only branch's): the node's own stays.
    two = {"properties": {"a": {}}, "anyOf": [{"type": "string"}]}
    assert gemini_parameters({"type": "object", "properties": {"x": two}}) == {
        "type": "object",
        "properties": {"x": {"type": "object", "properties": {"a": {}}}},
    }
    dated = {"type": "string", "format": "date-time", "anyOf": [{"type": "object"}]}
    assert gemini_parameters({"properties": {"d": dated}}) == {
        "type": "object",
        "properties": {"d": {"type": "string", "format": "date-time"}},
    }
    # An enum of another type than strings, with null: the values described, null as nullable.
    assert gemini_parameters({"properties": {"b": {"enum": [True, 2, None]}}}) == {
        "type": "object",
        "properties": {"b": {"description": "one of: true, 2", "nullable": True}},
    }
    # Parameters that are one of several objects: one object with every branch's properties.
    union = {
        "type": "object",
        "description": "an action",
        "oneOf": [
            {
                "properties": {"kind": {"const": "move"}, "to": {"type": "string"}},
                "required": ["kind", "to"],
            },
            {"properties": {"kind": {"const": "stop"}}, "required": ["kind"]},
        ],
    }
    assert gemini_parameters(union) == {
        "description": "an action",
        "type": "object",
        "properties": {
            "kind": {"type": "string", "enum": ["move"]},
            "to": {"type": "string"},
        },
        "required": ["kind"],
    }


def test_references_that_multiply_or_go_deep_end_in_bounded_time() -> None:
    # allOf of the same reference twice at every level: 4**30 expansions written out.
    defs: dict[str, Any] = {
        f"d{i}": {"allOf": [{"$ref": f"#/$defs/d{i + 1}"}, {"$ref": f"#/$defs/d{i + 1}"}]}
        for i in range(30)
    }
    defs["d30"] = {"type": "object", "properties": {"a": {"type": "string"}}}
    fitted = gemini_parameters(
        {"$defs": defs, "type": "object", "properties": {"x": {"$ref": "#/$defs/d0"}}}
    )
    assert fitted is not None and schema_refusals(fitted) == []
    # A chain of 1,500 references, and an enum value nested 1,000 deep (JSON the router reads).
    chain: dict[str, Any] = {f"c{i}": {"$ref": f"#/$defs/c{i + 1}"} for i in range(1500)}
    chain["c1500"] = {"type": "string"}
    deep: Any = 1
    for _ in range(1000):
        deep = [deep]
    for schema in (
        {"$defs": chain, "properties": {"x": {"$ref": "#/$defs/c0"}}},
        {"properties": {"x": {"enum": [deep]}}},
    ):
        out = gemini_parameters(schema)
        assert out is not None and schema_refusals(out) == []


def _json_values() -> st.SearchStrategy[Any]:
    return st.one_of(
        st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=5)
    )


KEYWORDS = st.sampled_from(
    [
        "type",
        "properties",
        "required",
        "items",
        "enum",
        "const",
        "anyOf",
        "oneOf",
        "allOf",
        "$ref",
        "$defs",
        "additionalProperties",
        "propertyNames",
        "format",
        "minimum",
        "exclusiveMinimum",
        "maximum",
        "exclusiveMaximum",
        "description",
        "nullable",
        "default",
        "minItems",
        "maxLength",
        "pattern",
        "not",
        "if",
        "title",
        "$schema",
        "examples",
    ]
)


def _schemas() -> st.SearchStrategy[Any]:
    leaf = st.one_of(
        st.booleans(),
        st.fixed_dictionaries(
            {
                "type": st.one_of(
                    st.sampled_from(
                        [
                            "string",
                            "number",
                            "integer",
                            "boolean",
                            "null",
                            "array",
                            "object",
                            "weird",
                        ]
                    ),
                    st.lists(st.sampled_from(["string", "null", "integer", "object"]), max_size=3),
                )
            }
        ),
    )

    def extend(children: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
        value = st.one_of(
            children,
            st.lists(children, max_size=3),
            st.dictionaries(st.text(max_size=4), children, max_size=3),
            _json_values(),
            st.lists(_json_values(), max_size=3),
            st.sampled_from(["#", "#/$defs/a", "#/definitions/b", "#/properties", "x"]),
        )
        return st.dictionaries(KEYWORDS, value, max_size=5)

    return st.recursive(leaf, extend, max_leaves=25)


@settings(max_examples=400, deadline=None)
@given(_schemas())
def test_whatever_the_schema_gemini_takes_what_is_sent(schema: Any) -> None:
    body = {"tools": [{"type": "function", "function": {"name": "f", "parameters": schema}}]}
    before = copy.deepcopy(body)
    fit_tools(body, GEMINI)
    fn = body["tools"][0]["function"]
    if not isinstance(schema, dict):
        assert body == before  # not a schema: left for the upstream to judge
    elif "parameters" in fn:
        assert schema_refusals(fn["parameters"]) == []
    assert fn["name"] == "f"


def test_the_gemini_profile_fits_tool_schemas_and_the_others_do_not() -> None:
    from service.config.loader import SHIPPED_DIR

    for path in sorted(SHIPPED_DIR.glob("*.json")):
        import json

        profile = Profile.model_validate(json.loads(path.read_text()), by_alias=True)
        modes = {ep.tool_schemas for ep in profile.resolve().values()}
        assert modes == ({GEMINI} if path.stem == "gemini" else {AS_IS}), path.name
    own = Profile.model_validate(
        {
            "baseUrl": "http://x",
            "toolSchemas": "gemini",
            "endpoints": {"/v1/responses": {"toolSchemas": "asIs"}},
        },
        by_alias=True,
    ).resolve()
    assert own["/v1/chat/completions"].tool_schemas == GEMINI
    assert own["/v1/responses"].tool_schemas == AS_IS  # an endpoint's own wins
