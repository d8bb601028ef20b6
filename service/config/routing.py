"""Routing files (SPEC §11): several upstreams behind one router, chosen by model name.

A routing file is found and hot-reloaded like a profile and recognised by its `upstreams` key:

    {"upstreams": {"oai": {"profile": "openai", "apiKeyEnv": "OPENAI_API_KEY"},
                   "local": {"baseUrl": "http://127.0.0.1:8001"}},
     "modelRoutes": [{"match": "gpt-*", "targets": [{"upstream": "oai"}],
                      "fallbacks": ["local-*"]},
                     {"match": "local-*", "targets": [{"upstream": "local", "model": "${1}"}]}],
     "retry": {"maxAttempts": 3}}

Each upstream is a profile: a shipped or own one named by `profile`, with any profile key given
inline overriding it (`baseUrl`, `headers`, `endpoints`, `auth`, `timeouts`, …), or wholly
inline. Its credential (`credential`): the client's own key (`client`, the single-profile rule),
an operator key read at load from the environment variable `apiKeyEnv` (`operator`, the default
when `apiKeyEnv` is set; the client's key is then never sent to it), or the client's key
falling back to the operator's (`client-or-operator`). A profile's own `modelMapping` does not
apply under a routing file: the route's target `model` names what is sent.

`modelRoutes`: `match` is an exact model name or a prefix ending in `*`; exact beats the longest
prefix, which beats `*`. A route's `targets` are tried weighted round robin (`weight`), or in the
listed order with `"strategy": "priority"`; then the targets of its `fallbacks` routes (by their
`match`, depth first, each route once). `contextWindowFallbacks` are used only for a
context-length error. Refused at load: an unknown upstream, a fallback naming no route, the same
match twice, a fallback cycle, a `*` anywhere but at the end.

`Routing` is the one resolver: the attempt plan of a request (service.proxy.failover), the
models `/v1/models` lists, the rate-limit bucket (route and `match`) and the `upstream` metric
label (the file's names: a closed set) all come from it.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationError, model_validator

from ..ejection import OutlierPolicy
from ..ratelimit.bucket import Limit
from .model import (
    RESPONSES,
    Auth,
    DropFields,
    Endpoint,
    HeaderMap,
    ModelPattern,
    Profile,
    RateLimit,
    ResolvedEndpoint,
    RouteKey,
    StreamConfig,
    ThoughtSignatures,
    Timeouts,
    TokenBudgets,
    TokenLimit,
    ToolSchemas,
    Translation,
    _Strict,
)

NAME = r"^[A-Za-z0-9._-]{1,63}$"
ENV_NAME = r"^[A-Za-z_][A-Za-z0-9_]{0,127}$"
Credential = Literal["client", "operator", "client-or-operator"]


class UpstreamSpec(_Strict):
    """One provider: a named profile and/or inline profile keys (which override it)."""

    profile: Annotated[str, Field(pattern=NAME)] | None = None
    base_url: str | None = None
    headers: HeaderMap | None = None
    endpoints: dict[RouteKey, Endpoint] | None = None
    auth: Auth | None = None
    timeouts: Timeouts | None = None
    stream_config: StreamConfig | None = None
    translation: Translation | None = None
    tool_schemas: ToolSchemas | None = None
    thought_signatures: ThoughtSignatures | None = None
    drop_fields: DropFields | None = None
    credential: Credential | None = None
    api_key_env: Annotated[str, Field(pattern=ENV_NAME)] | None = None

    @model_validator(mode="after")
    def _credential(self) -> UpstreamSpec:
        if self.credential in ("operator", "client-or-operator") and self.api_key_env is None:
            raise ValueError(f"credential {self.credential!r} needs apiKeyEnv")
        if self.profile is None and self.base_url is None:
            raise ValueError("needs a profile or a baseUrl")
        return self


class Target(_Strict):
    upstream: Annotated[str, Field(pattern=NAME)]
    # Sent upstream; absent: the client's model name. `${1}`: what the route's `*` matched.
    model: Annotated[str, Field(min_length=1)] | None = None
    weight: Annotated[int, Field(ge=1, le=1000)] = 1


class RetryPolicy(_Strict):
    """How often and how fast a request is tried again (SPEC §11, "What is retried")."""

    # Attempts per request over every target and fallback, the first included.
    max_attempts: Annotated[int, Field(ge=1, le=10)] | None = None
    # Backoff before trying the same target again: base x 2^n, with full jitter, capped.
    backoff_base_secs: Annotated[float, Field(ge=0, le=10)] | None = None
    backoff_max_secs: Annotated[float, Field(ge=0, le=60)] | None = None
    # An upstream's Retry-After is waited for only when at most this long; otherwise the next
    # target is tried at once.
    max_retry_after_secs: Annotated[float, Field(ge=0, le=60)] | None = None
    # The retry budget (per worker): attempts after a request's first may be in flight only
    # up to this fraction of the routed requests in flight, or `budgetMinRetries`, whichever
    # is more; past it a request gets the answer it has.
    budget_ratio: Annotated[float, Field(ge=0, le=1)] | None = None
    budget_min_retries: Annotated[int, Field(ge=0, le=10000)] | None = None


class RouteTimeouts(_Strict):
    """Per attempt: connecting, the response head, a stream's first content, the silence
    between a stream's events; per request: everything (totalSecs)."""

    connect_secs: Annotated[float, Field(gt=0, le=600)] | None = None
    headers_secs: Annotated[float, Field(gt=0, le=3600)] | None = None
    first_content_secs: Annotated[float, Field(gt=0, le=3600)] | None = None
    idle_secs: Annotated[float, Field(gt=0, le=3600)] | None = None
    total_secs: Annotated[float, Field(gt=0, le=3600)] | None = None


class OutlierDetection(_Strict):
    """When an upstream is skipped for a while (service.ejection)."""

    consecutive_failures: Annotated[int, Field(ge=1, le=100)] = 5
    base_ejection_secs: Annotated[float, Field(gt=0, le=3600)] = 30
    max_ejection_secs: Annotated[float, Field(gt=0, le=86400)] = 300
    # Also ejected when at least this share of a window's attempts failed (0: off), once the
    # window holds `failureRateMinAttempts` attempts; counted per worker.
    failure_rate: Annotated[float, Field(ge=0, le=1)] = 0.5
    failure_rate_min_attempts: Annotated[int, Field(ge=1, le=100000)] = 20
    failure_rate_window_secs: Annotated[float, Field(gt=0, le=3600)] = 30


class ModelRoute(_Strict):
    match: ModelPattern
    targets: Annotated[list[Target], Field(min_length=1)]
    strategy: Literal["weighted", "priority"] = "weighted"
    fallbacks: list[str] = Field(default_factory=list)
    context_window_fallbacks: list[str] = Field(default_factory=list)
    retry: RetryPolicy | None = None
    timeouts: RouteTimeouts | None = None
    # This route's own request limit, per client key (its own buckets); else the file's.
    rate_limit: RateLimit | None = None
    # This route's token limit (SPEC §13); else the file's. Either way per (client key, route).
    token_limit: TokenLimit | None = None


class RoutingFile(_Strict):
    schema_: str | None = Field(default=None, alias="$schema")
    name: Annotated[str, Field(pattern=NAME)] = "routing"
    upstreams: Annotated[
        dict[Annotated[str, Field(pattern=NAME)], UpstreamSpec], Field(min_length=1)
    ]
    model_routes: Annotated[list[ModelRoute], Field(min_length=1)]
    retry: RetryPolicy = Field(default_factory=RetryPolicy)
    timeouts: RouteTimeouts = Field(default_factory=RouteTimeouts)
    outlier_detection: OutlierDetection = Field(default_factory=OutlierDetection)
    # /v1/models lists the exact matches; with this, the patterns too (`gpt-*`).
    list_pattern_routes: bool = False
    rate_limit: RateLimit | None = None
    token_limit: TokenLimit | None = None
    token_budgets: TokenBudgets | None = None
    port: Annotated[int, Field(ge=1, le=65535)] = 8000

    @model_validator(mode="after")
    def _references(self) -> RoutingFile:
        matches: dict[str, ModelRoute] = {}
        for i, r in enumerate(self.model_routes):
            if r.match in matches:
                raise ValueError(f"modelRoutes[{i}]: match {r.match!r} appears twice")
            matches[r.match] = r
            for t in r.targets:
                if t.upstream not in self.upstreams:
                    raise ValueError(
                        f"modelRoutes[{i}] ({r.match}): unknown upstream {t.upstream!r}"
                    )
            for key, refs in (
                ("fallbacks", r.fallbacks),
                ("contextWindowFallbacks", r.context_window_fallbacks),
            ):
                for ref in refs:
                    if ref not in {x.match for x in self.model_routes}:
                        raise ValueError(
                            f"modelRoutes[{i}] ({r.match}): {key} names no route: {ref!r}"
                        )
        cycle = _cycle(matches)
        if cycle:
            raise ValueError("fallback cycle: " + " -> ".join(cycle))
        return self


def _cycle(routes: dict[str, ModelRoute]) -> list[str] | None:
    """A cycle through `fallbacks` / `contextWindowFallbacks`, as the list of matches."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(m: str, path: list[str]) -> list[str] | None:
        if state.get(m) == 1:
            return [*path[path.index(m) :], m]
        if state.get(m) == 2:
            return None
        state[m] = 1
        r = routes[m]
        for nxt in (*r.fallbacks, *r.context_window_fallbacks):
            found = visit(nxt, [*path, m])
            if found:
                return found
        state[m] = 2
        return None

    for m in routes:
        found = visit(m, [])
        if found:
            return found
    return None


# -- the resolver ------------------------------------------------------------------------------

DEFAULT_MAX_ATTEMPTS = 3
DEFAULT_BACKOFF_BASE_SECS = 0.25
DEFAULT_BACKOFF_MAX_SECS = 2.0
DEFAULT_MAX_RETRY_AFTER_SECS = 5.0
DEFAULT_BUDGET_RATIO = 0.2
DEFAULT_BUDGET_MIN_RETRIES = 3


@dataclass(frozen=True)
class Policy:
    """A route's retry policy and timeouts, its own over the file's over the defaults."""

    max_attempts: int
    backoff_base_secs: float
    backoff_max_secs: float
    max_retry_after_secs: float
    budget_ratio: float
    budget_min_retries: int
    connect_secs: float | None
    headers_secs: float | None
    first_content_secs: float | None
    idle_secs: float | None
    total_secs: float | None


@dataclass(frozen=True)
class Upstream:
    name: str
    profile: Profile
    endpoints: dict[str, ResolvedEndpoint]
    credential: Credential
    operator_key: str | None


@dataclass(frozen=True)
class Candidate:
    """One place a request may be sent: an upstream and the model name it gets."""

    upstream: Upstream
    model: str
    route: str  # the `match` of the route it came from
    fallback: bool  # reached through `fallbacks` (not the request's own route)


class Routing:
    """The one resolver of a routing file (built once per load)."""

    def __init__(self, spec: RoutingFile, upstreams: dict[str, Upstream]) -> None:
        self.spec = spec
        self.upstreams = upstreams
        self.routes = {r.match: r for r in spec.model_routes}
        self.exact = {m: r for m, r in self.routes.items() if not m.endswith("*")}
        # Longest prefix first; `*` alone (the empty prefix) last.
        self.patterns = sorted(
            ((m[:-1], r) for m, r in self.routes.items() if m.endswith("*")),
            key=lambda p: -len(p[0]),
        )
        self.policies = {m: _policy(spec, r) for m, r in self.routes.items()}
        # Where GET/DELETE /v1/responses/{id} go (they name no model): the first upstream, in
        # the file's order, that speaks the Responses API itself (one that is translated to
        # stores nothing). A stored response lives on the upstream that made it; with several
        # such upstreams, only this one's are reachable.
        self.stored_at = next(
            (
                u
                for u in upstreams.values()
                if u.endpoints[RESPONSES].enabled and u.endpoints[RESPONSES].format == "responses"
            ),
            None,
        )
        od = spec.outlier_detection
        self.outlier = OutlierPolicy(
            od.consecutive_failures,
            od.base_ejection_secs,
            od.max_ejection_secs,
            od.failure_rate,
            od.failure_rate_min_attempts,
            od.failure_rate_window_secs,
        )
        self._turns = {m: itertools.count() for m in self.routes}
        self._plans: dict[str, tuple[ModelRoute, list[Candidate]]] = {}
        # Routes with their own rateLimit: the limit, and the route's part of the bucket key
        # (a hash: a match may hold any character, and bucket keys are `<key>.<route id>`).
        self.limits = {
            m: (
                Limit.per_minute(r.rate_limit.requests_per_minute, r.rate_limit.burst),
                hashlib.sha256(m.encode()).hexdigest()[:12],
            )
            for m, r in self.routes.items()
            if r.rate_limit is not None
        }

    def route_for(self, model: str) -> tuple[ModelRoute, str] | None:
        """The route of `model` and what its `*` matched ("" for an exact match)."""
        r = self.exact.get(model)
        if r is not None:
            return r, ""
        for prefix, r in self.patterns:
            if model.startswith(prefix):
                return r, model[len(prefix) :]
        return None

    def policy(self, match: str) -> Policy:
        return self.policies[match]

    def _targets(self, route: ModelRoute, model: str, star: str, fallback: bool) -> list[Candidate]:
        targets = list(route.targets)
        if route.strategy == "weighted" and len(targets) > 1:
            # Weighted round robin per worker: the sequence of targets, each `weight` times,
            # entered at the next turn; each target then once, in that order.
            wheel = [t for t in targets for _ in range(t.weight)]
            start = next(self._turns[route.match]) % len(wheel)
            seen: dict[int, Target] = {}
            for t in wheel[start:] + wheel[:start]:
                seen.setdefault(id(t), t)
            targets = list(seen.values())
        return [
            Candidate(
                self.upstreams[t.upstream],
                (t.model or model).replace("${1}", star),
                route.match,
                fallback,
            )
            for t in targets
        ]

    def _chain(self, route: ModelRoute, model: str, star: str, refs: str) -> list[Candidate]:
        out: list[Candidate] = []
        seen = {route.match}
        todo = list(getattr(route, refs))
        while todo:
            m = todo.pop(0)
            if m in seen:
                continue
            seen.add(m)
            r = self.routes[m]
            # A fallback route is asked for the client's model; a pattern route's `*` then
            # matches what that model has after the pattern's prefix, if anything.
            sub = model[len(m) - 1 :] if m.endswith("*") and model.startswith(m[:-1]) else ""
            out += self._targets(r, model, sub, True)
            todo = list(r.fallbacks) + todo
        return out

    def _fixed(self, route: ModelRoute) -> bool:
        """Whether the route and every route it falls back to try their targets in a fixed
        order (one target, or `priority`): then a plan for an exact model never changes."""
        todo, seen = [route], set()
        while todo:
            r = todo.pop()
            if r.match in seen:
                continue
            seen.add(r.match)
            if r.strategy == "weighted" and len(r.targets) > 1:
                return False
            todo += [self.routes[m] for m in r.fallbacks]
        return True

    def plan(self, model: str) -> tuple[ModelRoute, list[Candidate]] | None:
        """The route of `model` and the candidates in the order they are tried: its own
        targets, then its fallbacks' targets. None: no route takes this model. (The plan of an
        exact match in a fixed order is made once; the caller does not change the list.)"""
        cached = self._plans.get(model)
        if cached is not None:
            return cached
        found = self.route_for(model)
        if found is None:
            return None
        route, star = found
        plan = (
            route,
            self._targets(route, model, star, False) + self._chain(route, model, star, "fallbacks"),
        )
        if model in self.exact and self._fixed(route):
            self._plans[model] = plan  # bounded by the file's exact matches
        return plan

    def context_plan(self, route: ModelRoute, model: str) -> list[Candidate]:
        """Where a context-length error goes: the `contextWindowFallbacks` routes' targets."""
        out: list[Candidate] = []
        for m in route.context_window_fallbacks:
            r = self.routes[m]
            out += self._targets(r, model, "", True) + self._chain(r, model, "", "fallbacks")
        return out

    def advertised_models(self) -> list[str]:
        """What /v1/models lists: every exact match, and the patterns when the file says so."""
        return [m for m in self.routes if not m.endswith("*") or self.spec.list_pattern_routes]

    def known_models(self) -> frozenset[str]:
        """The `model` metric label's known values: route names and target models."""
        out = set(self.exact)
        for r in self.routes.values():
            out.update(t.model for t in r.targets if t.model and "${1}" not in t.model)
        return frozenset(out)

    def secret_values(self) -> frozenset[str]:
        out: set[str] = set()
        for u in self.upstreams.values():
            out |= u.profile.secret_values()
            if u.operator_key:
                out.add(u.operator_key)
        return frozenset(out)


def _policy(spec: RoutingFile, route: ModelRoute) -> Policy:
    retry = [x for x in (route.retry, spec.retry) if x is not None]
    times = [x for x in (route.timeouts, spec.timeouts) if x is not None]

    def pick(objs: list[Any], key: str, default: Any) -> Any:
        return next((getattr(o, key) for o in objs if getattr(o, key) is not None), default)

    return Policy(
        max_attempts=pick(retry, "max_attempts", DEFAULT_MAX_ATTEMPTS),
        backoff_base_secs=pick(retry, "backoff_base_secs", DEFAULT_BACKOFF_BASE_SECS),
        backoff_max_secs=pick(retry, "backoff_max_secs", DEFAULT_BACKOFF_MAX_SECS),
        max_retry_after_secs=pick(retry, "max_retry_after_secs", DEFAULT_MAX_RETRY_AFTER_SECS),
        budget_ratio=pick(retry, "budget_ratio", DEFAULT_BUDGET_RATIO),
        budget_min_retries=pick(retry, "budget_min_retries", DEFAULT_BUDGET_MIN_RETRIES),
        connect_secs=pick(times, "connect_secs", None),
        headers_secs=pick(times, "headers_secs", None),
        first_content_secs=pick(times, "first_content_secs", None),
        idle_secs=pick(times, "idle_secs", None),
        total_secs=pick(times, "total_secs", None),
    )


# Keys of a profile that mean nothing for an upstream of a routing file.
_NOT_FOR_UPSTREAMS = (
    "$schema",
    "name",
    "port",
    "models",
    "modelMapping",
    "rateLimit",
    "tokenLimit",
    "tokenBudgets",
)


_ENV_NAME = re.compile(r"[A-Z_][A-Z0-9_]*")


class InvalidUpstream(ValueError):
    """An upstream whose profile (its named profile's file merged with its own keys) is not
    valid: `name` the upstream, `profile` the name of the profile it builds on (None: none)."""

    def __init__(self, name: str, profile: str | None, error: ValidationError) -> None:
        super().__init__(name)
        self.name = name
        self.profile = profile
        self.error = error


def build_upstreams(
    spec: RoutingFile, read_profile: Any, environ: dict[str, str] | None = None
) -> dict[str, Upstream]:
    """Each upstream as a validated profile. `read_profile(name)` returns a named profile's JSON
    object (service.config.loader). Raises ValueError naming the upstream and the problem."""
    env = os.environ if environ is None else environ
    out: dict[str, Upstream] = {}
    for name, u in spec.upstreams.items():
        base: dict[str, Any] = {}
        if u.profile is not None:
            base = {k: v for k, v in read_profile(u.profile).items() if k not in _NOT_FOR_UPSTREAMS}
        inline = u.model_dump(
            by_alias=True,
            exclude_unset=True,
            exclude={"profile", "credential", "api_key_env"},
            mode="json",
        )
        # null: no override (the profile's stays)
        for field in ("endpoints", "translation", "toolSchemas", "thoughtSignatures", "dropFields"):
            if field in inline and inline[field] is None:
                del inline[field]
        if "endpoints" in inline and "endpoints" in base:
            merged = dict(base["endpoints"])
            for route, ep in inline["endpoints"].items():
                merged[route] = {**merged.get(route, {}), **ep}
            inline["endpoints"] = merged
        if "translation" in inline and "translation" in base:  # key by key, as an endpoint's
            inline["translation"] = {**base["translation"], **inline["translation"]}
        data = {**base, **inline, "name": name}
        try:
            profile = Profile.model_validate(data, by_alias=True, by_name=False)
        except ValidationError as e:
            raise InvalidUpstream(name, u.profile, e) from None
        mode: Credential = u.credential or ("operator" if u.api_key_env else "client")
        key = None
        if u.api_key_env is not None:
            key = env.get(u.api_key_env)
            if not key:
                # Named only when it reads as a variable's name (upper case): a mixed-case one is
                # more likely the key itself, pasted where its variable's name belongs.
                named = u.api_key_env if _ENV_NAME.fullmatch(u.api_key_env) else None
                raise ValueError(
                    f"upstreams.{name}: the environment variable {named} is not set"
                    if named
                    else f"upstreams.{name}: the environment variable named by apiKeyEnv is not "
                    "set (the name is not shown: it is not in upper case, and may be a key)"
                )
        out[name] = Upstream(name, profile, profile.resolve(), mode, key)
    return out


class DuplicateKey(ValueError):
    """A JSON object that names a key twice (json keeps the last silently: a typo'd copy of a
    setting would shadow the one the operator reads)."""

    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """`object_pairs_hook` for config files: DuplicateKey on a key named twice."""
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise DuplicateKey(k)
        out[k] = v
    return out


def read_json_object(path: Path) -> dict[str, Any]:
    data = json.loads(path.read_text(encoding="utf-8"), object_pairs_hook=unique_keys)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: must be a JSON object")
    return data
