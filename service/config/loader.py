"""Finding and loading a profile file, with errors that name the file and the JSON path.

Lookup order (SPEC §2): an explicit path (`--config` / `API_ROUTER_CONFIG_PATH`); else
`./transformer/<name>.json` (an operator's own profiles); else the profiles shipped in the package.
An unknown name is an error listing the available names: there is never a silent fallback.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from pydantic import BaseModel, ValidationError

from ..ratelimit.bucket import Limit
from ..ratelimit.tokens import TokenRule
from .model import Profile, ResolvedEndpoint, TokenBudgets, TokenLimit
from .routing import (
    DuplicateKey,
    InvalidUpstream,
    Routing,
    RoutingFile,
    build_upstreams,
    read_json_object,
    unique_keys,
)

# A file's identity for the reload check: (mtime_ns, size, inode, ctime_ns); all -1 when it is
# gone. The change time too: it moves on every write, chmod and rename and cannot be set back
# (an edit that kept the size and the mtime, `cp -p`, `touch -r`, two writes within one mtime
# tick, or a chmod that made an unreadable edit readable, went unnoticed).
Stamp = tuple[int, int, int, int]
GONE: Stamp = (-1, -1, -1, -1)


def stamp_of(path: Path) -> Stamp:
    try:
        st = os.stat(path)
    except OSError:
        return GONE
    return (st.st_mtime_ns, st.st_size, st.st_ino, st.st_ctime_ns)


SHIPPED_DIR = Path(str(resources.files("service.config") / "profiles"))
LOCAL_DIR = Path("transformer")


# The environment's token limit and budgets (TOKEN_LIMIT_*, TOKEN_BUDGET_*), the lowest
# precedence (service.settings).
TokenDefaults = tuple[TokenLimit | None, TokenBudgets | None]
_UNSET: object = object()


class ConfigError(Exception):
    """A profile that cannot be used; the message is one line, safe to print and log."""


@dataclass(frozen=True)
class LoadedConfig:
    """One validated profile plus what was derived from it; swapped whole on reload."""

    path: Path
    profile: Profile
    endpoints: dict[str, ResolvedEndpoint]
    mtime_ns: int
    size: int
    inode: int
    ctime_ns: int = -1
    loaded_at: float = field(default=0.0)
    # Derived once per load, read on every request:
    # the models the profile knows (the `model` label of tokens_total: these, or `other`);
    known_models: frozenset[str] = frozenset()
    # the rate limit of each route whose endpoint or profile sets one (None: unlimited).
    limits: dict[str, Limit | None] = field(default_factory=dict)
    # A routing file (SPEC §11): the resolver of its upstreams and model routes. `profile` is
    # then the file's own face (its name, the first upstream's URL, its rateLimit and port).
    routing: Routing | None = None
    # The other files it was read from (a routing file's upstream profiles), each with its
    # stamp when read: a change to one reloads as a change to the file itself does.
    deps: tuple[tuple[Path, Stamp], ...] = ()
    # Token rules (SPEC §13), compiled on first use per route or model route (with the
    # environment's defaults, which are fixed for the life of a worker).
    token_rules: dict[str, TokenRule | None] = field(default_factory=dict, compare=False)

    def token_rule(self, route: str, defaults: TokenDefaults) -> TokenRule | None:
        """The token rule of a plain profile's `route`: its endpoint's `tokenLimit` (a bucket
        of its own), else the profile's (one bucket per key for every route of the profile),
        else the environment's; budgets from the profile, else the environment."""
        rule = self.token_rules.get(route, _UNSET)
        if rule is _UNSET:
            ep = self.profile.endpoints.get(route)  # type: ignore[call-overload]
            own = ep.token_limit if ep is not None else None
            rule = TokenRule.compile(
                own or self.profile.token_limit or defaults[0],
                self.profile.token_budgets or defaults[1],
                route if own is not None else "profile",
            )
            self.token_rules[route] = rule
        return rule  # type: ignore[return-value]

    def routed_token_rule(self, match: str, defaults: TokenDefaults) -> TokenRule | None:
        """Under a routing file: per (key, model route) with the route's `tokenLimit`, else
        the file's, else the environment's; budgets from the file, else the environment."""
        assert self.routing is not None
        key = "\0" + match  # never a route path
        rule = self.token_rules.get(key, _UNSET)
        if rule is _UNSET:
            spec = self.routing.spec
            route = self.routing.routes[match]
            rule = TokenRule.compile(
                route.token_limit or spec.token_limit or defaults[0],
                spec.token_budgets or defaults[1],
                "r" + hashlib.sha256(match.encode()).hexdigest()[:12],
            )
            self.token_rules[key] = rule
        return rule  # type: ignore[return-value]

    def secret_values(self) -> frozenset[str]:
        """What no log line may show (service.observability.logging scrubs them)."""
        if self.routing is not None:
            return self.routing.secret_values()
        return self.profile.secret_values()

    def limit(self, route: str, default: Limit | None) -> Limit | None:
        """The limit on `route`: its endpoint's, else the profile's, else `default` (the
        environment's, SPEC §7)."""
        return self.limits.get(route, default)


def normalise_name(name: str) -> str:
    return name[:-5] if name.endswith(".json") else name


def available_profiles() -> list[str]:
    names = {p.stem for p in SHIPPED_DIR.glob("*.json")}
    if LOCAL_DIR.is_dir():
        names |= {p.stem for p in LOCAL_DIR.glob("*.json")}
    return sorted(names)


def find_profile(name: str, config_path: str | None = None) -> Path:
    if config_path:
        return Path(config_path)
    name = normalise_name(name)
    if not name or "/" in name or "\\" in name or name.startswith("."):
        raise ConfigError(f"invalid profile name {name!r}")
    for base in (LOCAL_DIR, SHIPPED_DIR):
        candidate = base / f"{name}.json"
        if candidate.is_file():
            return candidate
    raise ConfigError(f"unknown profile {name!r}; available: {', '.join(available_profiles())}")


# A key of the file that is not shown in an error: one with a space, a colon or an equals sign
# (a header line or a `key=value` pasted as a name), or a long one. Such a key is most likely a
# credential put in the wrong place, and the message reaches the log and /health.
_UNSHOWN_KEY = re.compile(r"[\s:=]|^.{49,}$")


def _json_path(loc: tuple[int | str, ...]) -> str:
    out = "$"
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += "." + ("<a key not shown>" if _UNSHOWN_KEY.search(part) else part)
    return out


def duplicate_key(path: Path, e: DuplicateKey) -> str:
    key = "<a key not shown>" if _UNSHOWN_KEY.search(e.key) else repr(e.key)
    return f"{path}: the key {key} appears twice in one object (JSON would keep the last)"


def format_validation_error(path: Path | str, err: ValidationError) -> str:
    first = err.errors(include_url=False, include_input=False)[0]
    loc = tuple(p for p in first["loc"] if p not in ("function-after[_base_url(), str]",))
    more = len(err.errors()) - 1
    suffix = f" (and {more} more problem{'s' if more > 1 else ''})" if more else ""
    return f"{path}: {_json_path(loc)}: {first['msg']}{suffix}"


def name_of_file(path: Path) -> str:
    """A profile name from `path` (`mine.json` -> `mine`), in the characters a name may have."""
    return re.sub(r"[^A-Za-z0-9._-]", "-", path.stem)[:64] or "profile"


def parse_profile(
    path: Path, text: str, deps: list[tuple[Path, Stamp]] | None = None
) -> Profile | tuple[Profile, Routing]:
    """A profile, or a routing file (recognised by its `upstreams` key) as its face profile
    and its resolver; `deps` receives the other files a routing file reads."""
    try:
        data = json.loads(text, object_pairs_hook=unique_keys)
    except json.JSONDecodeError as e:
        raise ConfigError(
            f"{path}: invalid JSON at line {e.lineno} column {e.colno}: {e.msg}"
        ) from None
    except DuplicateKey as e:
        raise ConfigError(duplicate_key(path, e)) from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: $: must be a JSON object")
    if "upstreams" in data:
        return _parse_routing(path, data, [] if deps is None else deps)
    if "name" not in data:  # SPEC §3: optional; the file's name then
        data = {**data, "name": name_of_file(path)}
    try:
        return Profile.model_validate(data, by_alias=True, by_name=False)
    except ValidationError as e:
        raise ConfigError(format_validation_error(path, e)) from None


def _parse_routing(
    path: Path, data: dict[str, object], deps: list[tuple[Path, Stamp]]
) -> tuple[Profile, Routing]:
    try:
        spec = RoutingFile.model_validate(data, by_alias=True, by_name=False)
    except ValidationError as e:
        raise ConfigError(format_validation_error(path, e)) from None

    def read_profile(name: str) -> dict[str, object]:
        # A routing file next to its own profiles finds them first (then ./transformer, then
        # the shipped ones); never the routing file itself.
        own = path.parent / f"{name}.json"
        found = own if own.is_file() and own.resolve() != path.resolve() else None
        file = found or find_profile(name)
        deps.append((file, stamp_of(file)))
        try:
            return read_json_object(file)
        except DuplicateKey as e:
            raise ConfigError(duplicate_key(file, e)) from None
        except json.JSONDecodeError as e:  # the profile's own file is named, not the routing file
            raise ConfigError(
                f"{file}: invalid JSON at line {e.lineno} column {e.colno}: {e.msg}"
            ) from None
        except ValueError as e:  # it names the file
            raise ConfigError(str(e)) from None
        except OSError as e:
            raise ConfigError(f"{file}: cannot read: {e.__class__.__name__}") from None

    try:
        upstreams = build_upstreams(spec, read_profile)
    except InvalidUpstream as e:
        source = f", profile {e.profile} from {deps[-1][0]}" if e.profile is not None else ""
        where = f"{path} (upstream {e.name}{source})"
        raise ConfigError(format_validation_error(where, e.error)) from None
    except (ValueError, OSError) as e:
        raise ConfigError(f"{path}: {e}") from None
    routing = Routing(spec, upstreams)
    first = next(iter(upstreams.values()))
    face = Profile(
        name=spec.name,
        base_url=first.profile.base_url,
        models=routing.advertised_models(),
        rate_limit=spec.rate_limit,
        port=spec.port,
    )
    return face, routing


def load_file(path: Path, now: float | None = None) -> LoadedConfig:
    try:
        st = os.stat(path)
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read: {e.__class__.__name__}") from None
    deps: list[tuple[Path, Stamp]] = []
    parsed = parse_profile(path, text, deps)
    profile, routing = parsed if isinstance(parsed, tuple) else (parsed, None)
    try:
        endpoints = profile.resolve()
        limits = _limits(endpoints)
    except ArithmeticError as e:  # (non-finite numbers are refused by validation already)
        # A value the schema let through that the router cannot use. Only the class: the text
        # may quote the file's values.
        raise ConfigError(f"{path}: cannot be used: {e.__class__.__name__}") from None
    return LoadedConfig(
        path=path,
        profile=profile,
        endpoints=endpoints,
        mtime_ns=st.st_mtime_ns,
        size=st.st_size,
        inode=st.st_ino,
        ctime_ns=st.st_ctime_ns,
        loaded_at=time.time() if now is None else now,
        known_models=(
            routing.known_models()
            if routing is not None
            else frozenset(profile.advertised_models())
        ),
        limits=limits,
        routing=routing,
        deps=tuple(deps),
    )


def _limits(endpoints: dict[str, ResolvedEndpoint]) -> dict[str, Limit | None]:
    """The routes whose endpoint or profile sets a `rateLimit` (already merged by `resolve`)."""
    return {
        route: Limit.per_minute(ep.rate_limit.requests_per_minute, ep.rate_limit.burst)
        for route, ep in endpoints.items()
        if ep.rate_limit is not None
    }


def _schema(model: type[BaseModel], name: str, title: str) -> dict[str, object]:
    schema = model.model_json_schema(by_alias=True)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = f"https://github.com/api-router/api-router/{name}.schema.json"
    schema["title"] = title
    return schema


def routing_schema() -> dict[str, object]:
    """The JSON Schema shipped as `routing.schema.json` (regenerated by `make schema`)."""
    return _schema(RoutingFile, "routing", "api-router routing file")


def profile_schema() -> dict[str, object]:
    """The JSON Schema shipped as `profile.schema.json` (regenerated by `make schema`)."""
    return _schema(Profile, "profile", "api-router profile")
