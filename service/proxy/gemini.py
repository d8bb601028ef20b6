"""What Gemini requires of a request that other OpenAI-compatible servers do not: two profile keys,
each `asIs` (the default: the body goes as written) or `gemini`; the shipped `gemini` profile sets
both, `fit_body` applies them to an OpenAI-format upstream body (relayed, or translated, and each
attempt of a routing file's). `fit_body` also removes the top-level fields named in `dropFields`
(any provider, any format; service.config.model), for an upstream that refuses a field its
clients send or a translation writes (Gemini's OpenAI-compatible endpoint answers 400 "Unknown
name" to fields it does not know; reported for `parallel_tool_calls` and `frequency_penalty`).

## Thought signatures (`thoughtSignatures`)

Gemini 3 models sign each function call they make (`extra_content.google.thought_signature` on
the Chat Completions tool call, OpenAI-compatible endpoint) and refuse a request whose earlier
function calls come back without that signature ("Function call is missing a thought_signature
in functionCall parts"). Through the Messages and Responses translations the signature travels
in the call's id (service.translate.common.carrying_id) and comes back as it was. A client
that speaks Chat Completions itself must send `extra_content` back on its own; one that does not
(Qwen Code 0.24 does not), and calls from another model (a routing file's failover, a
conversation begun elsewhere), would be refused: with `gemini`, an assistant tool call that has
no signature gets `skip_thought_signature_validator`, the value Gemini documents for calls it
did not sign (its validation is then skipped for that call; Google warns the model may reason a
little worse). A signature that is there is never changed.

## Tool parameter schemas (`toolSchemas`)

A profile's `toolSchemas` (default `asIs`: sent as the client wrote them) can be `gemini`: every
function tool's `parameters` in an OpenAI-format upstream body (Chat Completions
`tools[].function.parameters`, Responses `tools[].parameters`) is rewritten into the subset of
the OpenAPI 3.0 schema object that Gemini's function declarations accept, on its own API and on
its OpenAI-compatible endpoint alike (the shipped `gemini` profile sets it; Vertex AI's Gemini
models read the same object).

Why: the coding agents describe their tools with the whole of JSON Schema (Claude Code 2.1:
`$schema`, `additionalProperties`, `propertyNames`, `exclusiveMinimum`, `const`, `allOf`,
`format: uri`; Qwen Code: `oneOf`, type lists; MCP servers: `$ref`/`$defs`), and Gemini refuses
the whole request for one keyword it does not know ("Invalid JSON payload received. Unknown name
..."), for a parameter-less object ("properties: should be non-empty for OBJECT type") and for a
`required` name with no property. So with `gemini`, each schema node keeps only what Gemini
reads, and what it cannot say is said as closely as it can:

- `$ref` to a local definition (`#/$defs/…`, `#/definitions/…`, `#`) is replaced by the
  definition (a reference back into itself becomes an unconstrained node); `allOf` members are
  merged into their node; `oneOf` is `anyOf`;
- a type list becomes one type (`nullable` for `"null"`) or an `anyOf` of the types; an
  `anyOf` branch that only allows null becomes `nullable`, and a single remaining branch is
  merged into its node (unless the two name different types, which no value can satisfy: the
  node's own type stays);
- `const` becomes a one-value `enum`. Gemini takes an enum of strings on a string only: string
  values stay an `enum` (the node becomes `type: string`), other values (numbers, booleans)
  are written into the description ("one of: 1, 2, 3"), and a null value becomes `nullable`;
- `exclusiveMinimum` / `exclusiveMaximum` (numbers) become `minimum` / `maximum` (the bound is
  kept, its exclusivity is not);
- `format` stays only where Gemini takes it (`enum` and `date-time` on strings, `float` and
  `double` on numbers, `int32` and `int64` on integers);
- `properties` and `required` stay on object nodes only, `required` lists only names that are
  properties, and an object node left without properties (a map: `additionalProperties` or
  `propertyNames` only) loses its `type`, as does an array without `items` (Gemini refuses
  both): the model still reads their descriptions. Every key Gemini reads for one type only
  (`items`, `pattern`, `minimum`, …) is dropped from a node of another type. Parameters that
  are one of several objects (a tagged union: `oneOf` at the top) become one object with every
  branch's properties, required where every branch requires them (Gemini's parameters are one
  object). A function whose parameters have no property at all is sent without `parameters`;
- every other keyword is dropped (`additionalProperties`, `$schema`, `$id`, `$comment`,
  `propertyNames`, `patternProperties`, `multipleOf`, `uniqueItems`, `not`, `if`/`then`/`else`,
  `examples`, …).

Only the upstream's copy changes: the client's tools, the answer's tool calls and every other
field stay as they were. A schema nested deeper than `MAX_DEPTH`, or past `MAX_NODES` nodes
and reference expansions (definitions referenced from many places), is cut there (an
unconstrained node).
"""

from __future__ import annotations

from typing import Any, Protocol

from .body import dumps_exact

AS_IS = "asIs"
GEMINI = "gemini"
# Gemini's documented stand-in for a thought signature it did not make.
SKIP_SIGNATURE = "skip_thought_signature_validator"


_ABSENT = object()  # (dict.pop's default: a field whose value is None is there)


class _Rules(Protocol):
    tool_schemas: str
    thought_signatures: str
    drop_fields: tuple[str, ...]


def fit_body(payload: dict[str, Any], ep: _Rules) -> bool:
    """Apply the endpoint's body rules to an upstream body, in place: Gemini's two (they touch
    only OpenAI-format bodies) and `dropFields` (the top-level fields the upstream refuses, in
    any format). True when anything changed (the body must be written again)."""
    fitted = fit_tools(payload, ep.tool_schemas)
    dropped = False
    for name in ep.drop_fields:  # (empty unless configured: the loop is the only cost)
        dropped = payload.pop(name, _ABSENT) is not _ABSENT or dropped
    return sign_calls(payload, ep.thought_signatures) or fitted or dropped


def sign_calls(payload: dict[str, Any], mode: str) -> bool:
    """Give each assistant tool call of a Chat Completions body without a Gemini thought
    signature (`extra_content.google`, or `.vertex` as Vertex AI writes it) the skip value, in
    place; True when any got it."""
    if mode != GEMINI:
        return False
    messages = payload.get("messages")
    changed = False
    for m in messages if isinstance(messages, list) else ():
        calls = m.get("tool_calls") if isinstance(m, dict) else None
        if not isinstance(calls, list):
            continue
        for i, call in enumerate(calls):
            if not isinstance(call, dict):
                continue
            extra = call.get("extra_content")
            extra = extra if isinstance(extra, dict) else {}
            if any(isinstance(v, dict) and v.get("thought_signature") for v in extra.values()):
                continue  # signed: under `google` (Gemini API), or `vertex` (Vertex AI)
            google = extra.get("google")
            google = {
                **(google if isinstance(google, dict) else {}),
                "thought_signature": SKIP_SIGNATURE,
            }
            calls[i] = {**call, "extra_content": {**extra, "google": google}}
            changed = True
    return changed


GEMINI_TYPES = frozenset({"string", "number", "integer", "boolean", "array", "object"})
GEMINI_FORMATS = {
    "string": frozenset({"enum", "date-time"}),
    "number": frozenset({"float", "double"}),
    "integer": frozenset({"int32", "int64"}),
}
MAX_DEPTH = 64
MAX_NODES = 20_000


def fit_tools(payload: dict[str, Any], mode: str) -> bool:
    """Rewrite the function tools' parameter schemas of an OpenAI-format body (Chat Completions
    or Responses) for `mode`, in place; True when anything changed."""
    if mode != GEMINI:
        return False
    tools = payload.get("tools")
    if not isinstance(tools, list):
        return False
    changed = False
    for i, tool in enumerate(tools):
        if not isinstance(tool, dict) or tool.get("type", "function") != "function":
            continue
        fn = tool.get("function")
        # Chat Completions nests the function; Responses does not
        holder: dict[str, Any] = fn if isinstance(fn, dict) else tool
        nested = holder is not tool
        schema = holder.get("parameters")
        if not isinstance(schema, dict):
            continue
        fitted = gemini_parameters(schema)
        if fitted == schema:
            continue
        holder = {k: v for k, v in holder.items() if k != "parameters"}
        if fitted is not None:
            holder["parameters"] = fitted
        tools[i] = {**tool, "function": holder} if nested else holder
        changed = True
    return changed


def gemini_parameters(schema: dict[str, Any]) -> dict[str, Any] | None:
    """A function's parameters as Gemini takes them; None: send no parameters (none left)."""
    out = _Fitter(schema).node(schema, 0, frozenset())
    if not out.get("properties") and isinstance(out.get("anyOf"), list):
        out = _union(out)
    if not out.get("properties"):
        return None
    out["type"] = "object"
    return out


class _Fitter:
    def __init__(self, root: dict[str, Any]) -> None:
        self.root = root
        self.budget = MAX_NODES  # definitions referenced from many places expand only so far

    def _resolve(self, ref: str) -> Any:
        if ref == "#":
            return self.root
        if not ref.startswith("#/"):
            return None
        node: Any = self.root
        for part in ref[2:].split("/"):
            part = part.replace("~1", "/").replace("~0", "~")
            if not isinstance(node, dict) or part not in node:
                return None
            node = node[part]
        return node if isinstance(node, dict) else None

    def _expand(
        self, s: dict[str, Any], refs: frozenset[str], depth: int = 0
    ) -> tuple[dict[str, Any], frozenset[str]]:
        """`s` with its `$ref` replaced by the definition and its `allOf` merged in (each
        expansion spends the node budget: references inside `allOf` can double at every step)."""
        self.budget -= 1
        if depth > MAX_DEPTH or self.budget < 0:
            return {k: v for k, v in s.items() if k not in ("$ref", "allOf")}, refs
        ref = s.get("$ref")
        if isinstance(ref, str):
            s = {k: v for k, v in s.items() if k != "$ref"}
            target = self._resolve(ref)
            if target is not None and ref not in refs:
                refs = refs | {ref}
                target, refs = self._expand(target, refs, depth + 1)
                s = _merge(target, s)
        members = s.get("allOf")
        if isinstance(members, list):
            s = {k: v for k, v in s.items() if k != "allOf"}
            for m in members:
                if isinstance(m, dict):
                    m, _ = self._expand(m, refs, depth + 1)
                    s = _merge(s, m)
        return s, refs

    def node(self, s: Any, depth: int, refs: frozenset[str]) -> dict[str, Any]:
        self.budget -= 1
        if not isinstance(s, dict) or depth > MAX_DEPTH or self.budget < 0:
            return {}
        s, refs = self._expand(s, refs)
        out: dict[str, Any] = {}
        nullable = s.get("nullable") is True
        branches: list[Any] = []
        for key in ("anyOf", "oneOf"):
            if isinstance(s.get(key), list):
                branches.extend(s[key])

        kind = s.get("type")
        if isinstance(kind, list):
            kinds = [k for k in kind if isinstance(k, str)]
            nullable = nullable or "null" in kinds
            kinds = [k for k in kinds if k in GEMINI_TYPES]
            if len(kinds) == 1:
                kind = kinds[0]
            else:
                kind = None
                if len(kinds) > 1 and not branches:
                    shared = ("description", "title", "default", "type")
                    rest = {k: v for k, v in s.items() if k not in shared}
                    branches = [{**rest, "type": k} for k in kinds]
                    s = {k: v for k, v in s.items() if k in shared}
        elif kind == "null":
            nullable, kind = True, None
        elif not isinstance(kind, str) or kind not in GEMINI_TYPES:
            kind = None

        for key in ("title", "description", "pattern"):
            if isinstance(s.get(key), str):
                out[key] = s[key]
        values = s.get("enum")
        if "const" in s and not isinstance(values, list):
            values = [s["const"]]
        if isinstance(values, list):
            kept = [v for v in values if v is not None]
            nullable = nullable or len(kept) < len(values)
            if kept and kind in (None, "string") and all(isinstance(v, str) for v in kept):
                out["enum"], kind = kept, "string"
            elif kept:  # Gemini takes an enum on strings only: the values go in the description
                note = "one of: " + ", ".join(_as_string(v) for v in kept)
                out["description"] = (
                    f"{out['description']} ({note})" if "description" in out else note
                )
        for key in ("default", "example"):
            if key in s:
                out[key] = s[key]
        for key in (
            "minLength",
            "maxLength",
            "minItems",
            "maxItems",
            "minProperties",
            "maxProperties",
        ):
            if isinstance(s.get(key), int) and not isinstance(s[key], bool):
                out[key] = s[key]
        for key, strict in (("minimum", "exclusiveMinimum"), ("maximum", "exclusiveMaximum")):
            bound = s.get(key) if _number(s.get(key)) else None
            other = s.get(strict) if _number(s.get(strict)) else None
            if bound is not None or other is not None:
                pick = max if key == "minimum" else min
                out[key] = pick(b for b in (bound, other) if b is not None)

        props = s.get("properties")
        if kind is None and isinstance(props, dict) and props:
            kind = "object"
        if kind == "object":
            fitted = {
                str(name): self.node(sub, depth + 1, refs)
                for name, sub in (props.items() if isinstance(props, dict) else ())
            }
            if fitted:
                out["properties"] = fitted
                required = s.get("required")
                if isinstance(required, list):
                    names = [n for n in _names(required) if n in fitted]
                    if names:
                        out["required"] = names
                order = s.get("propertyOrdering")
                if isinstance(order, list) and order == [n for n in _names(order) if n in fitted]:
                    out["propertyOrdering"] = order
            else:
                kind = None  # a map: no OBJECT without properties
        if kind == "array":
            items = s.get("items")
            if isinstance(items, list):  # tuple form: any of the positions' schemas
                fitted_items = [self.node(i, depth + 1, refs) for i in items]
                out["items"] = (
                    fitted_items[0] if len(fitted_items) == 1 else {"anyOf": fitted_items}
                )
            elif isinstance(items, dict):
                out["items"] = self.node(items, depth + 1, refs)
            else:  # Gemini needs the items' schema: an array of anything is left untyped
                kind = None
        fmt = s.get("format")
        if kind in GEMINI_FORMATS and isinstance(fmt, str) and fmt in GEMINI_FORMATS[kind]:
            out["format"] = fmt

        if branches:
            fitted_branches = []
            for b in branches:
                f = self.node(b, depth + 1, refs)
                if f == {"nullable": True}:
                    nullable = True
                elif f not in fitted_branches:
                    fitted_branches.append(f)
            if len(fitted_branches) == 1:
                branch = fitted_branches[0]
                if kind is None or branch.get("type") in (None, kind):
                    out = _merge(branch, out)
                    kind = out.pop("type", kind)
                # else: both must hold and cannot (two types): the node's own type stays
            elif fitted_branches:
                out["anyOf"] = fitted_branches
        if kind is not None:
            out["type"] = kind
        for key, types in _TYPED_KEYS.items():
            if key in out and kind not in types:
                del out[key]  # what Gemini reads for another type only
        if nullable:
            out["nullable"] = True
        return out


# The keys Gemini reads for some types only (`format` is checked where it is set).
_TYPED_KEYS = {
    **dict.fromkeys(
        ("properties", "required", "propertyOrdering", "minProperties", "maxProperties"),
        ("object",),
    ),
    **dict.fromkeys(("items", "minItems", "maxItems"), ("array",)),
    **dict.fromkeys(("enum", "minLength", "maxLength", "pattern"), ("string",)),
    **dict.fromkeys(("minimum", "maximum"), ("number", "integer")),
}


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """`over`'s keys on `base`'s, with `properties` joined and `required` united."""
    out = {**base, **over}
    if isinstance(base.get("properties"), dict) and isinstance(over.get("properties"), dict):
        out["properties"] = {**base["properties"], **over["properties"]}
    if isinstance(base.get("required"), list) and isinstance(over.get("required"), list):
        out["required"] = _names([*base["required"], *over["required"]])
    return out


def _names(values: list[Any]) -> list[str]:
    """The strings of `values`, each once, in order."""
    return list(dict.fromkeys(v for v in values if isinstance(v, str)))


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _union(out: dict[str, Any]) -> dict[str, Any]:
    """Parameters that are one of several objects (a tagged union) as one object: every
    branch's properties (the first branch's schema for a name in several), required where every
    branch requires it. Gemini's function parameters must be one object."""
    properties: dict[str, Any] = {}
    required: list[set[str]] = []
    for branch in out["anyOf"]:
        props = branch.get("properties") if isinstance(branch, dict) else None
        for name, sub in (props or {}).items():
            properties.setdefault(name, sub)
        required.append(set(branch.get("required", ())) if props else set())
    if not properties:
        return out
    common = set.intersection(*required) if required else set()
    kept = {k: v for k, v in out.items() if k in ("title", "description")}
    names = [n for n in properties if n in common]
    return {**kept, "properties": properties, **({"required": names} if names else {})}


def _as_string(v: Any) -> str:
    return v if isinstance(v, str) else dumps_exact(v).decode()
