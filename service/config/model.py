"""The profile model: typed, frozen, strictly validated transformer JSON.

A profile is the operator's description of one upstream provider. Keys are camelCase, as in the
original transformer files; unknown keys, wrong types and impossible values are rejected (pydantic
reports the JSON path, which the loader turns into one readable line).

`Profile.resolve()` precomputes, once per load, everything a request needs for each route
(`ResolvedEndpoint`), so the hot path never merges settings.
"""

from __future__ import annotations

from typing import Annotated, Literal
from urllib.parse import unquote_plus, urlsplit

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator
from pydantic.alias_generators import to_camel

# The router's proxied routes (SPEC §4). Endpoint override keys must be one of these.
CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
EMBEDDINGS = "/v1/embeddings"
MESSAGES = "/v1/messages"
TRANSCRIPTIONS = "/v1/audio/transcriptions"
TRANSLATIONS = "/v1/audio/translations"
RESPONSES = "/v1/responses"
RESPONSES_INPUT_TOKENS = "/v1/responses/input_tokens"
COUNT_TOKENS = "/v1/messages/count_tokens"

PROXY_ROUTES: tuple[str, ...] = (
    CHAT,
    COMPLETIONS,
    EMBEDDINGS,
    MESSAGES,
    TRANSCRIPTIONS,
    TRANSLATIONS,
    RESPONSES,
    RESPONSES_INPUT_TOKENS,
    COUNT_TOKENS,
)
STREAMING_ROUTES = frozenset({CHAT, COMPLETIONS, MESSAGES, RESPONSES})
MULTIPART_ROUTES = frozenset({TRANSCRIPTIONS, TRANSLATIONS})
# The stored-response routes of the Responses API (GET / DELETE, the id in the path): relayed
# under the `/v1/responses` endpoint's settings, never rate-limited (SPEC §7: POST routes only).
RESPONSE_ID = "/v1/responses/<response_id:str>"
RESPONSE_INPUT_ITEMS = "/v1/responses/<response_id:str>/input_items"
# One model of /v1/models (the openai SDK's models.retrieve); an id may hold slashes.
MODEL_ID = "/v1/models/<model_id:path>"

# Wire formats an upstream endpoint can speak: OpenAI Chat Completions ("openai"), Anthropic
# Messages, the OpenAI Responses API. A route whose endpoint declares another format than the
# route's own is translated (service.translate): the two chat routes into each other, the
# Responses route into either.
OPENAI = "openai"
ANTHROPIC = "anthropic"
RESPONSES_FORMAT = "responses"
UpstreamFormat = Literal["openai", "anthropic", "responses"]
# The format clients use on each route; also the upstream's format unless the endpoint says.
CLIENT_FORMAT = {
    route: ANTHROPIC
    if route in (MESSAGES, COUNT_TOKENS)
    else RESPONSES_FORMAT
    if route in (RESPONSES, RESPONSES_INPUT_TOKENS)
    else OPENAI
    for route in PROXY_ROUTES
}
# The formats each translatable route's upstream may speak.
TRANSLATABLE = {
    CHAT: (OPENAI, ANTHROPIC),
    MESSAGES: (ANTHROPIC, OPENAI),
    RESPONSES: (RESPONSES_FORMAT, OPENAI, ANTHROPIC),
}
# Where a translated route goes when its endpoint names no upstreamPath: the route of the
# upstream's format (its own upstreamPath when the profile sets one).
FORMAT_ROUTE = {OPENAI: CHAT, ANTHROPIC: MESSAGES, RESPONSES_FORMAT: RESPONSES}
# The token-counting routes answer from a local estimate when the upstream of the route they
# count for does not speak their format (SPEC §12): never an inference call.
COUNTS_FOR = {COUNT_TOKENS: MESSAGES, RESPONSES_INPUT_TOKENS: RESPONSES}
TRANSLATION_NONE = "none"
# Every translation a route can run (the `translations_total{direction}` label values).
TRANSLATION_DIRECTIONS: tuple[str, ...] = tuple(
    f"{CLIENT_FORMAT[route]}_to_{fmt}"
    for route, formats in TRANSLATABLE.items()
    for fmt in formats
    if fmt != CLIENT_FORMAT[route]
)

RouteKey = Literal[
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/embeddings",
    "/v1/messages",
    "/v1/audio/transcriptions",
    "/v1/audio/translations",
    "/v1/responses",
    "/v1/responses/input_tokens",
    "/v1/messages/count_tokens",
]

# A model name, or a prefix ending in `*` (`gpt-*`): a routing file's `match`, the model list of
# `translation.reasoningEffort`.
ModelPattern = Annotated[str, Field(min_length=1, max_length=256, pattern=r"^[^*]*\*?$")]
HeaderMap = dict[Annotated[str, Field(min_length=1, pattern=r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")], str]


# Header names whose values are public protocol settings. The value of every other header a
# profile or endpoint sets (`x-goog-api-key`, `api-key`, `Cookie`, a tenant id …) is registered
# as a secret when the profile loads, so that no log line shows it.
PUBLIC_HEADERS = frozenset(
    {
        "accept",
        "anthropic-beta",
        "anthropic-version",
        "content-type",
        "openai-beta",
        "user-agent",
    }
)


class _Strict(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        strict=True,
        alias_generator=to_camel,
        populate_by_name=True,
        # JSON's 1e400 reads as infinity: refused with the other bad numbers, not met later in
        # the arithmetic of a limit (where it raised, and a reload then stopped for good).
        allow_inf_nan=False,
    )


class RateLimit(_Strict):
    """Token bucket: `requestsPerMinute` 0 means unlimited; burst defaults to requestsPerMinute."""

    requests_per_minute: Annotated[float, Field(ge=0)] = 0
    burst: Annotated[int, Field(ge=1)] | None = None


# The token estimate's defaults (service.ratelimit.tokens).
BYTES_PER_TOKEN = 4.0
DEFAULT_MAX_OUTPUT = 1024
MAX_OUTPUT_RESERVATION = 4096


class TokenLimit(_Strict):
    """A token bucket per client key (SPEC §13, docs/tokens.md): `tokensPerMinute` 0 means
    unlimited; `burst` (the bucket's size) defaults to tokensPerMinute; `enforce` false counts and
    reports without refusing (shadow mode). A request reserves its estimate before it is sent:
    its body's bytes / `bytesPerToken` (the prompt) plus its max output tokens (or
    `defaultMaxOutputTokens` when it names none), the output part capped at
    `maxOutputReservation`; the real usage replaces the estimate when it arrives. `count`: which
    token kinds are charged."""

    tokens_per_minute: Annotated[int, Field(ge=0, le=10**12)] = 0
    burst: Annotated[int, Field(ge=1, le=10**12)] | None = None
    enforce: bool = True
    count: Annotated[list[Literal["input", "output"]], Field(min_length=1)] = ["input", "output"]
    bytes_per_token: Annotated[float, Field(gt=0, le=1000)] = BYTES_PER_TOKEN
    default_max_output_tokens: Annotated[int, Field(ge=0, le=10**9)] = DEFAULT_MAX_OUTPUT
    max_output_reservation: Annotated[int, Field(ge=0, le=10**9)] = MAX_OUTPUT_RESERVATION


class TokenBudgets(_Strict):
    """Tokens per client key per calendar day / month (UTC); `enforce` false: shadow mode."""

    daily: Annotated[int, Field(ge=1, le=10**15)] | None = None
    monthly: Annotated[int, Field(ge=1, le=10**15)] | None = None
    enforce: bool = True


class StreamConfig(_Strict):
    """SSE relay settings; on an endpoint, the fields given override the profile's one by one."""

    buffer_size: Annotated[int, Field(ge=256, le=16 * 1024 * 1024)] | None = None
    heartbeat_interval_secs: Annotated[float, Field(gt=0, le=3600)] | None = None
    # Ask an OpenAI-format upstream for usage on streams (`stream_options.include_usage`, the
    # extra chunk hidden from clients that did not ask); false for upstreams that reject it.
    request_usage: bool | None = None


class Auth(_Strict):
    """How the credential travels upstream: `header: scheme credential` (scheme may be empty)."""

    header: Annotated[str, Field(min_length=1, pattern=r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")] = (
        "Authorization"
    )
    scheme: str = "Bearer"


class Translation(_Strict):
    """How a translated route treats what the upstream's format lacks (docs/translation.md); on
    an endpoint, the fields given override the profile's one by one."""

    # Refuse (400) every field without an exact equivalent, hints included.
    strict: bool | None = None
    # The upstream takes the assistant's earlier reasoning back as `reasoning_content` (Qwen,
    # DeepSeek, vLLM); else earlier thinking blocks are dropped.
    reasoning_history: bool | None = None
    # Map the client's reasoning request to Chat Completions `reasoning_effort` (default true);
    # false for an upstream model that refuses the field; a list: only for the upstream models
    # it names (exact names, or prefixes ending in `*`, as a routing file's `match`).
    reasoning_effort: bool | Annotated[list[ModelPattern], Field(max_length=256)] | None = None
    # Send the output limit as Chat Completions `max_completion_tokens` (default false:
    # `max_tokens`, which every compatible server takes); OpenAI's reasoning models (gpt-5,
    # o-series) refuse `max_tokens`.
    max_completion_tokens: bool | None = None
    # The output limit (`max_tokens`) a request translated to a Messages upstream gets when its
    # client set none (Codex never does): 4,096 by default, which every Claude model takes; the
    # anthropic profile sets 32,000 (what Claude Code asks for).
    default_max_tokens: Annotated[int, Field(ge=1, le=1_000_000)] | None = None


# How function tools' parameter schemas go to an OpenAI-format upstream: as the client wrote
# them, or rewritten into what Gemini's function declarations take (service.proxy.gemini).
ToolSchemas = Literal["asIs", "gemini"]
# Earlier tool calls without a Gemini thought signature: as they are, or with the value Gemini
# documents for calls it did not sign (service.proxy.gemini).
ThoughtSignatures = Literal["asIs", "gemini"]
# Top-level request body fields an upstream refuses (Gemini's OpenAI-compatible endpoint answers
# 400 "Unknown name ..." for a field it does not know): removed from every JSON body sent to it,
# relayed or translated (service.proxy.gemini.fit_body). Not `model` or `stream`: the router
# routes and relays by them.
KEPT_FIELDS = ("model", "stream")


def _droppable(names: list[str]) -> list[str]:
    kept = [n for n in names if n in KEPT_FIELDS]
    if kept:
        raise ValueError(f"cannot drop {kept[0]!r}: the router needs it")
    return list(dict.fromkeys(names))


DropFields = Annotated[
    list[Annotated[str, Field(min_length=1, max_length=64)]],
    Field(max_length=64),
    AfterValidator(_droppable),
]


class Timeouts(_Strict):
    connect_secs: Annotated[float, Field(gt=0, le=600)] = 10
    read_secs: Annotated[float, Field(gt=0, le=3600)] = 300


class Endpoint(_Strict):
    upstream_path: str | None = None
    method: Literal["POST", "PUT", "PATCH"] | None = None
    headers: HeaderMap = Field(default_factory=dict)
    stream_support: bool | None = None
    requires_multipart: bool | None = None
    rate_limit: RateLimit | None = None
    token_limit: TokenLimit | None = None
    stream_config: StreamConfig | None = None
    # The format the upstream speaks on this route; the route's own format when absent.
    format: UpstreamFormat | None = None
    # false: the provider has no such endpoint; the router answers 404 itself.
    enabled: bool = True
    translation: Translation | None = None
    tool_schemas: ToolSchemas | None = None
    thought_signatures: ThoughtSignatures | None = None
    # The route's own list replaces the profile's (`[]`: drop nothing here)
    drop_fields: DropFields | None = None

    @field_validator("upstream_path")
    @classmethod
    def _path(cls, v: str | None) -> str | None:
        if v is not None and (not v.startswith("/") or "#" in v or any(c.isspace() for c in v)):
            raise ValueError("must be an absolute path starting with '/' (no fragment, no spaces)")
        return v


DEFAULT_BUFFER_SIZE = 8192
# translation.defaultMaxTokens when none is set: every Claude model can produce this many tokens
DEFAULT_MAX_TOKENS = 4096
DEFAULT_HEARTBEAT_SECS = 30.0


class ResolvedEndpoint(BaseModel):
    """Everything a request on one route needs, merged once per profile load."""

    model_config = ConfigDict(frozen=True)

    route: str
    url: str  # baseUrl + upstream path, with the path's own query if any
    method: str
    headers: tuple[tuple[str, str], ...]  # profile headers, then endpoint headers (which win)
    stream_support: bool
    requires_multipart: bool
    rate_limit: RateLimit | None
    buffer_size: int
    heartbeat_interval_secs: float
    format: str  # what the upstream speaks
    # "none", or "<client format>_to_<upstream format>" (the `translations_total` label)
    translation: str
    enabled: bool = True
    request_usage: bool = True
    translation_strict: bool = False
    reasoning_history: bool = False
    # True / False, or the upstream model names (and `prefix*` patterns) that take it
    reasoning_effort: bool | tuple[str, ...] = True
    max_completion_tokens: bool = False
    default_max_tokens: int = DEFAULT_MAX_TOKENS
    # A token-counting route whose counted route's upstream speaks another format: the router
    # answers from its own estimate (COUNTS_FOR).
    local_estimate: bool = False
    # How function tools' parameter schemas go upstream (service.proxy.gemini)
    tool_schemas: str = "asIs"
    # Whether unsigned earlier tool calls get Gemini's skip value (service.proxy.gemini)
    thought_signatures: str = "asIs"
    # Top-level body fields removed before the body goes upstream (service.proxy.gemini)
    drop_fields: tuple[str, ...] = ()


class Profile(_Strict):
    schema_: str | None = Field(default=None, alias="$schema")
    # Optional (SPEC §3): a file without one is named after the file (service.config.loader);
    # the schema shows no default, since the file's name is.
    name: Annotated[
        str,
        Field(
            min_length=1,
            max_length=64,
            pattern=r"^[A-Za-z0-9._-]+$",
            description="The profile's name (the provider label); default: the file's name "
            "without .json",
            json_schema_extra=lambda s: s.pop("default", None),
        ),
    ] = "profile"
    base_url: str
    headers: HeaderMap = Field(default_factory=dict)
    model_mapping: dict[
        Annotated[str, Field(min_length=1)], Annotated[str, Field(min_length=1)]
    ] = Field(default_factory=dict)
    models: list[Annotated[str, Field(min_length=1)]] = Field(default_factory=list)
    endpoints: dict[RouteKey, Endpoint] = Field(default_factory=dict)
    rate_limit: RateLimit | None = None
    token_limit: TokenLimit | None = None
    token_budgets: TokenBudgets | None = None
    stream_config: StreamConfig | None = None
    translation: Translation | None = None
    tool_schemas: ToolSchemas | None = None
    thought_signatures: ThoughtSignatures | None = None
    drop_fields: DropFields | None = None
    auth: Auth = Field(default_factory=Auth)
    timeouts: Timeouts = Field(default_factory=Timeouts)
    port: Annotated[int, Field(ge=1, le=65535)] = 8000

    @field_validator("base_url")
    @classmethod
    def _base_url(cls, v: str) -> str:
        parts = urlsplit(v)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http:// or https:// URL with a host")
        if parts.username or parts.password:
            # Credentials belong in DEFAULT_API_KEY / the client's key, never in a config file
            # that /health echoes.
            raise ValueError("must not carry user:password; use DEFAULT_API_KEY instead")
        if parts.query or parts.fragment:
            raise ValueError("must not carry a query or fragment (use endpoints.*.upstreamPath)")
        return v.rstrip("/")

    @field_validator("endpoints")
    @classmethod
    def _formats(cls, v: dict[str, Endpoint]) -> dict[str, Endpoint]:
        for route, ep in v.items():
            if ep.format is not None and ep.format != CLIENT_FORMAT[route]:
                allowed = TRANSLATABLE.get(route)
                if allowed is None or ep.format not in allowed:
                    raise ValueError(
                        f"endpoints.{route}.format: {ep.format!r} is not a format this route can "
                        "be translated to (/v1/chat/completions and /v1/messages: into each "
                        "other; /v1/responses: into openai or anthropic)"
                    )
        return v

    def _upstream_path(self, route: str, ep: Endpoint, fmt: str) -> str:
        if ep.upstream_path:
            return ep.upstream_path
        if fmt != CLIENT_FORMAT[route]:
            other = FORMAT_ROUTE[fmt]
            other_ep = self.endpoints.get(other)  # type: ignore[call-overload]
            return (other_ep.upstream_path if other_ep is not None else None) or other
        return route

    def _format(self, route: str) -> str:
        ep = self.endpoints.get(route)  # type: ignore[call-overload]
        return (ep.format if ep is not None else None) or CLIENT_FORMAT[route]

    def resolve(self) -> dict[str, ResolvedEndpoint]:
        """Merge global and per-endpoint settings for every proxied route."""
        out: dict[str, ResolvedEndpoint] = {}
        global_stream = self.stream_config or StreamConfig()
        for route in PROXY_ROUTES:
            ep = self.endpoints.get(route) or Endpoint()  # type: ignore[call-overload]
            local_stream = ep.stream_config or StreamConfig()
            headers = dict(self.headers)
            lowered = {k.lower(): k for k in headers}
            for k, v in ep.headers.items():
                old = lowered.get(k.lower())
                if old is not None:
                    del headers[old]
                headers[k] = v
                lowered[k.lower()] = k
            fmt = ep.format or CLIENT_FORMAT[route]
            translated = fmt != CLIENT_FORMAT[route]
            counted = COUNTS_FOR.get(route)
            translation = [t for t in (ep.translation, self.translation) if t is not None]
            out[route] = ResolvedEndpoint(
                route=route,
                url=self.base_url + self._upstream_path(route, ep, fmt),
                format=fmt,
                translation=(
                    f"{CLIENT_FORMAT[route]}_to_{fmt}" if translated else TRANSLATION_NONE
                ),
                method=ep.method or "POST",
                headers=tuple(headers.items()),
                stream_support=(
                    ep.stream_support
                    if ep.stream_support is not None
                    else route in STREAMING_ROUTES
                ),
                requires_multipart=(
                    ep.requires_multipart
                    if ep.requires_multipart is not None
                    else route in MULTIPART_ROUTES
                ),
                rate_limit=ep.rate_limit or self.rate_limit,
                buffer_size=local_stream.buffer_size
                or global_stream.buffer_size
                or DEFAULT_BUFFER_SIZE,
                heartbeat_interval_secs=local_stream.heartbeat_interval_secs
                or global_stream.heartbeat_interval_secs
                or DEFAULT_HEARTBEAT_SECS,
                enabled=ep.enabled,
                request_usage=next(
                    (
                        v
                        for v in (local_stream.request_usage, global_stream.request_usage)
                        if v is not None
                    ),
                    True,
                ),
                translation_strict=next(
                    (t.strict for t in translation if t.strict is not None), False
                ),
                reasoning_history=next(
                    (t.reasoning_history for t in translation if t.reasoning_history is not None),
                    False,
                ),
                reasoning_effort=next(
                    (
                        t.reasoning_effort
                        if isinstance(t.reasoning_effort, bool)
                        else tuple(t.reasoning_effort)
                        for t in translation
                        if t.reasoning_effort is not None
                    ),
                    True,
                ),
                max_completion_tokens=next(
                    (
                        t.max_completion_tokens
                        for t in translation
                        if t.max_completion_tokens is not None
                    ),
                    False,
                ),
                default_max_tokens=next(
                    (t.default_max_tokens for t in translation if t.default_max_tokens is not None),
                    DEFAULT_MAX_TOKENS,
                ),
                local_estimate=counted is not None
                and self._format(counted) != CLIENT_FORMAT[counted],
                tool_schemas=ep.tool_schemas or self.tool_schemas or "asIs",
                thought_signatures=ep.thought_signatures or self.thought_signatures or "asIs",
                drop_fields=tuple(
                    ep.drop_fields if ep.drop_fields is not None else self.drop_fields or ()
                ),
            )
        return out

    def secret_values(self) -> frozenset[str]:
        """What no log line may show: the values of the profile's and endpoints' headers (but
        those named in PUBLIC_HEADERS) and of the query parameters of every `upstreamPath`
        (Gemini-style `?key=`), as written and percent-decoded."""
        out: set[str] = set()
        headers = [self.headers, *(ep.headers for ep in self.endpoints.values())]
        for hs in headers:
            out.update(v for k, v in hs.items() if k.lower() not in PUBLIC_HEADERS)
        for ep in self.endpoints.values():
            query = urlsplit(ep.upstream_path or "").query
            for pair in query.split("&"):
                value = pair.partition("=")[2]
                out.update((value, unquote_plus(value)))
        return frozenset(v for v in out if v)

    def advertised_models(self) -> list[str]:
        """`models`, then mapping keys and values, each once, in that order."""
        seen: dict[str, None] = {}
        for m in (*self.models, *self.model_mapping.keys(), *self.model_mapping.values()):
            seen.setdefault(m, None)
        return list(seen)
