"""What Gemini says about a function's `parameters`, for the fakes that play its upstream.

Gemini (its own API and its OpenAI-compatible endpoint) reads a function's parameters into its
Schema object, a subset of OpenAPI 3.0's, and refuses the whole request when they do not fit. The
checks below are the refusals its users report, with Gemini's own wording where they quote it:

- a key its Schema object does not have: `Invalid JSON payload received. Unknown name "$schema"`
  (also `additionalProperties`, `propertyNames`, `exclusiveMinimum`, `const`, `$ref`, …);
- a `type` that is not one of its type names (a JSON Schema type list, `"null"`);
- an enum value that is not a string (its enum is a list of strings), an enum on another type
  than a string (`enum: only allowed for STRING type`);
- `properties: should be non-empty for OBJECT type`;
- `properties: only allowed for OBJECT type`;
- a `required` name that is not a property (`property is not defined`);
- a `format` its type does not take (strings: `enum`, `date-time`; numbers: `float`,
  `double`; integers: `int32`, `int64`).

Independent of the router's service.proxy.gemini (it is what that module is tested
against), so it lists the fields itself.
"""

from __future__ import annotations

from typing import Any

SCHEMA_FIELDS = frozenset(
    {
        "type",
        "format",
        "title",
        "description",
        "nullable",
        "enum",
        "maxItems",
        "minItems",
        "properties",
        "required",
        "minProperties",
        "maxProperties",
        "minLength",
        "maxLength",
        "pattern",
        "example",
        "anyOf",
        "propertyOrdering",
        "default",
        "items",
        "minimum",
        "maximum",
    }
)
TYPES = frozenset({"string", "number", "integer", "boolean", "array", "object"})
FORMATS = {
    "string": {"enum", "date-time"},
    "number": {"float", "double"},
    "integer": {"int32", "int64"},
}


def refusals(tools: Any) -> list[str]:
    """Gemini's complaints about a Chat Completions body's `tools` (empty: it takes them)."""
    out: list[str] = []
    for i, tool in enumerate(tools if isinstance(tools, list) else []):
        fn = tool.get("function") if isinstance(tool, dict) else None
        if isinstance(fn, dict) and "parameters" in fn:
            out += schema_refusals(fn["parameters"], f"tools[0].function_declarations[{i}]")
    return out


def schema_refusals(schema: Any, at: str = "parameters") -> list[str]:
    """Gemini's complaints about one function's parameters."""
    out: list[str] = []
    _check(schema, f"{at}.parameters", out)
    return out


def _check(s: Any, at: str, out: list[str]) -> None:
    if not isinstance(s, dict):
        out.append(f"Invalid value at '{at}': not an object")
        return
    for key in s:
        if key not in SCHEMA_FIELDS:
            out.append(f"Invalid JSON payload received. Unknown name \"{key}\" at '{at}'")
    kind = s.get("type")
    if kind is not None and (not isinstance(kind, str) or kind not in TYPES):
        out.append(f"Invalid value at '{at}.type': {kind!r}")
    enum = s.get("enum")
    if enum is not None and not (isinstance(enum, list) and all(isinstance(v, str) for v in enum)):
        out.append(f"Invalid value at '{at}.enum': not a list of strings")
    if enum is not None and kind != "string":
        out.append(f"{at}.enum: only allowed for STRING type")
    fmt = s.get("format")
    if fmt is not None and fmt not in FORMATS.get(kind if isinstance(kind, str) else "", ()):
        out.append(f"{at}.format: not supported for type {kind}")
    props = s.get("properties")
    if kind == "object" and not props:
        out.append(f"{at}.properties: should be non-empty for OBJECT type")
    if props is not None and kind != "object":
        out.append(f"{at}.properties: only allowed for OBJECT type")
    if isinstance(props, dict):
        for name, sub in props.items():
            _check(sub, f"{at}.properties[{name}]", out)
    required = s.get("required")
    if required is not None:
        for name in required if isinstance(required, list) else [required]:
            if not isinstance(props, dict) or name not in props:
                out.append(f"{at}.required[{name}]: property is not defined")
    if "items" in s:
        _check(s["items"], f"{at}.items", out)
    if kind == "array" and "items" not in s:
        out.append(f"{at}.items: missing field")
    branches = s.get("anyOf")
    if branches is not None:
        for j, sub in enumerate(branches if isinstance(branches, list) else [branches]):
            _check(sub, f"{at}.any_of[{j}]", out)
