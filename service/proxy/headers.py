"""Pure header, URL, credential and model-name decisions (no I/O; property-tested).

- Hop-by-hop headers (RFC 9110 §7.6.1: Connection and every header it names, Keep-Alive,
  Proxy-*, TE, Trailer, Transfer-Encoding, Upgrade) never cross the router in either direction.
- `Host` and `Content-Length` are the router's own framing; credentials are never forwarded in the
  client's form: the resolved credential is re-sent the way the profile's `auth` says (an
  Anthropic OAuth token excepted: `credential_header`).
- Forwarding headers (`Forwarded`, `X-Forwarded-*`, `X-Real-IP`) are what a self-hosted upstream
  behind a proxy believes about the client, so a client must not be able to invent them. By
  default (`API_ROUTER_FORWARDED_HEADERS=replace`) the client's are removed and the router sends
  its own: `X-Forwarded-For` = the client address as Sanic sees it (the peer, or what Sanic's
  trusted-proxy settings `SANIC_PROXIES_COUNT` / `SANIC_REAL_IP_HEADER` / `SANIC_FORWARDED_SECRET`
  accept), `X-Forwarded-Proto`, `X-Forwarded-Host`. `keep` forwards the client's unchanged and
  adds none (the router sits behind a trusted proxy that set them); `drop` removes them and
  sends none (the provider learns no client address).
- Order upstream: client end-to-end headers, then the router's forwarding headers, then profile
  headers, then endpoint headers (which win), then the credential, then `X-Request-ID`.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
    }
)
CREDENTIAL_HEADERS = frozenset({"authorization", "x-api-key"})
# Other forms a client may put a key in (Azure's `api-key`, Google's `x-goog-api-key`, a `key=`
# query parameter): end-to-end headers and query of an open router, but removed where the
# client's key must not reach the upstream (an access key, an upstream given only the
# operator's key): `outgoing_headers(keep_client_keys=False)`.
OTHER_CREDENTIAL_HEADERS = frozenset({"api-key", "x-goog-api-key"})
CREDENTIAL_PARAMS = frozenset({"key", "api_key", "api-key"})
# Framing and routing headers that belong to each hop; and a browser's `Origin`: the upstream
# request is the router's, server to server (a provider that sees one applies its browser
# rules: Anthropic's API refuses it without a "dangerous direct browser access" header,
# Ollama unless the origin is in OLLAMA_ORIGINS). CORS is the router's (service.cors).
NOT_FORWARDED = HOP_BY_HOP | CREDENTIAL_HEADERS | {"host", "content-length", "expect", "origin"}
FORWARDING = frozenset(
    {
        "forwarded",
        "x-forwarded-for",
        "x-forwarded-host",
        "x-forwarded-port",
        "x-forwarded-prefix",
        "x-forwarded-proto",
        "x-forwarded-server",
        "x-real-ip",
    }
)
FORWARDED_MODES = ("replace", "keep", "drop")
# Response headers the router sets itself; and the upstream's CORS answer (`Access-Control-*`,
# `Timing-Allow-Origin`): which pages may read an answer is the router's policy (service.cors),
# and a provider's `*` beside it made two values a browser refuses, or opened a router whose
# CORS is off to every page.
NOT_RETURNED = HOP_BY_HOP | {"content-length", "date", "server", "x-request-id"}
_NOT_RETURNED_PREFIXES = ("proxy-", "access-control-", "timing-allow-origin")

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,128}$")


def connection_tokens(values: Iterable[str]) -> set[str]:
    """Header names listed in Connection headers (they are hop-by-hop for this hop)."""
    out: set[str] = set()
    for v in values:
        for token in v.split(","):
            token = token.strip().lower()
            if token:
                out.add(token)
    return out


def _with_connection_tokens(
    items: list[tuple[str, str]], lowered: list[str], drop: frozenset[str] | set[str]
) -> frozenset[str] | set[str]:
    """`drop` and the names the Connection headers among `items` list (`lowered`: their names
    in lower case)."""
    if "connection" not in lowered:
        return drop
    named = connection_tokens(
        v for (_, v), lk in zip(items, lowered, strict=True) if lk == "connection"
    )
    return drop | named if named else drop


_NOT_FORWARDED_REPLACED = NOT_FORWARDED | FORWARDING


def forwardable_request_headers(
    items: Iterable[tuple[str, str]],
    keep_forwarding: bool = True,
    replaced: frozenset[str] | set[str] = frozenset(),
) -> list[tuple[str, str]]:
    """The client's end-to-end headers, in order, with duplicates kept (without the forwarding
    headers unless `keep_forwarding`, and without the names in `replaced`, lower case: those
    the router sets itself). Each name is lowered once."""
    items = list(items)
    lowered = [k.lower() for k, _ in items]
    drop: frozenset[str] | set[str] = NOT_FORWARDED if keep_forwarding else _NOT_FORWARDED_REPLACED
    if replaced:
        drop = drop | replaced
    drop = _with_connection_tokens(items, lowered, drop)
    return [
        kv
        for kv, lk in zip(items, lowered, strict=True)
        if lk not in drop and not lk.startswith("proxy-")
    ]


def add_router_headers(
    headers: list[tuple[str, str]], extra: Iterable[tuple[str, str]]
) -> list[tuple[str, str]]:
    """`extra` (the router's headers: its rate-limit decision, who answered, ...) appended to an
    upstream answer's `headers`, except a router `X-RateLimit-*` header the upstream's answer
    has itself: the upstream's rate-limit headers reach the client unchanged (SPEC §5), never
    joined with the router's own of the same name into a value that is neither."""
    names: set[str] | None = None
    for k, v in extra:
        if k[:12].lower() == "x-ratelimit-":
            if names is None:
                names = {n.lower() for n, _ in headers}
            if k.lower() in names:
                continue
        headers.append((k, v))
    return headers


def returnable_response_headers(
    items: Iterable[tuple[str, str]], lowered: list[str] | None = None
) -> list[tuple[str, str]]:
    """The upstream's end-to-end response headers (content-type, rate-limit, request-id …).

    The client's `X-Request-ID` is the router's; the upstream's own request id (OpenAI's
    `req_…`, what a provider's support asks for) comes back as `X-Upstream-Request-ID`.
    `lowered`: the names in lower case, when the caller has them already.
    """
    items = list(items)
    if lowered is None:
        lowered = [k.lower() for k, _ in items]
    drop = _with_connection_tokens(items, lowered, NOT_RETURNED)
    return [
        ("X-Upstream-Request-ID", v) if lk == "x-request-id" else (k, v)
        for (k, v), lk in zip(items, lowered, strict=True)
        if (lk not in drop or lk == "x-request-id") and not lk.startswith(_NOT_RETURNED_PREFIXES)
    ]


def joined_value(items: list[tuple[str, str]], lowered: list[str], name: str) -> str | None:
    """What `httpx.Headers.get(name)` gives for these items (`lowered`: their names in lower
    case; `name` in lower case): the value, the values joined by ", " when repeated, or None."""
    n = lowered.count(name)
    if n == 0:
        return None
    if n == 1:
        return items[lowered.index(name)][1]
    return ", ".join(v for (_, v), lk in zip(items, lowered, strict=True) if lk == name)


def client_address(request: Any, trust_headers: bool) -> str:
    """The client's address as Sanic sees it: its `remote_addr` (from Forwarded /
    X-Forwarded-For / a real-IP header) when the trusted-proxy settings allow any (parsing
    costs, so only then), else the peer address."""
    return (request.remote_addr if trust_headers else "") or request.ip


def router_forwarding(client_ip: str, proto: str, host: str) -> list[tuple[str, str]]:
    """The router's own forwarding headers (the `replace` mode); empty values are left out."""
    out = [("X-Forwarded-For", client_ip), ("X-Forwarded-Proto", proto)]
    if host:
        out.append(("X-Forwarded-Host", host))
    return [(k, v) for k, v in out if v]


def client_credential(headers: Mapping[str, str], default_key: str | None) -> str | None:
    """`Authorization: Bearer K`, else `x-api-key: K`, else DEFAULT_API_KEY, else none."""
    auth = headers.get("authorization")
    if auth:
        scheme, _, token = auth.strip().partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
    key = headers.get("x-api-key")
    if key and key.strip():
        return key.strip()
    return default_key or None


_OTHER_KEY_HEADERS = tuple(sorted(OTHER_CREDENTIAL_HEADERS))
_KEY_PARAMS = tuple(sorted(CREDENTIAL_PARAMS))


def bucket_id(
    own: str | None,
    default_key: str | None,
    headers: Mapping[str, str],
    query: Mapping[str, Any],
    access: bool,
) -> str:
    """The `key_id` a request's buckets are keyed by (SPEC §7: one per client credential):
    `own` (the client's Bearer / x-api-key, `client_credential`), else DEFAULT_API_KEY. On an
    open router without DEFAULT_API_KEY, also a key in another form (`api-key`,
    `x-goog-api-key`, a `key=` query parameter), which reaches the upstream as it is: those
    clients all shared the anonymous buckets. With DEFAULT_API_KEY the upstream gets that key,
    so a made-up key per request must not buy a fresh bucket; with access keys the access
    key is `own`."""
    if own is None and not default_key and not access:
        own = _other_key(headers, query)
    return key_id(own or default_key)


def _other_key(headers: Mapping[str, str], query: Mapping[str, Any]) -> str | None:
    for name in _OTHER_KEY_HEADERS:
        value = headers.get(name)
        if value and value.strip():
            return value.strip()
    for name in _KEY_PARAMS:
        value = query.get(name)
        if isinstance(value, list):
            value = value[0] if value else None
        if isinstance(value, str) and value.strip():
            return value.strip()
    return None


# Anthropic's OAuth tokens (a Claude subscription: Claude Code's `CLAUDE_CODE_OAUTH_TOKEN`, sent
# as `Authorization: Bearer`) are refused in `x-api-key` ("invalid x-api-key"): they go upstream
# as a bearer token whatever the profile's `auth` says for keys.
ANTHROPIC_OAUTH_PREFIX = "sk-ant-oat"


def credential_header(header: str, scheme: str, credential: str) -> tuple[str, str]:
    if credential.startswith(ANTHROPIC_OAUTH_PREFIX) and header.lower() == "x-api-key":
        return ("Authorization", f"Bearer {credential}")
    return (header, f"{scheme} {credential}" if scheme else credential)


def key_id(credential: str | None) -> str:
    """A short, non-reversible id for a credential: safe in logs and bucket keys."""
    if not credential:
        return "anonymous"
    return _key_id(credential)


@functools.lru_cache(maxsize=4096)  # the same few keys on every request; bounded
def _key_id(credential: str) -> str:
    # surrogateescape: a header that is not UTF-8 (Sanic decodes it so) hashes by its bytes
    return hashlib.sha256(credential.encode("utf-8", "surrogateescape")).hexdigest()[:12]


# A header list as sent upstream: a value the client sent with bytes beyond ASCII stays bytes.
WireHeaders = list[tuple[str, str | bytes]]


def wire_values(items: list[tuple[str, str]]) -> WireHeaders:
    """`items` with each value that is not ASCII as the bytes the client sent (Sanic decodes a
    head as UTF-8 with surrogateescape, which this undoes): httpx encodes a `str` value as ASCII
    and raised on one (`X-Title: Café`, a key with an accent), a 500 for a header HTTP allows
    (obs-text). The common case, all ASCII, is the same list."""
    if all(v.isascii() for _, v in items):
        return items  # type: ignore[return-value]  # (list is invariant; a str is a str | bytes)
    return [(k, v if v.isascii() else v.encode("utf-8", "surrogateescape")) for k, v in items]


def upstream_headers(
    client_items: Iterable[tuple[str, str]],
    profile_headers: Iterable[tuple[str, str]],
    auth_header: str,
    auth_scheme: str,
    credential: str | None,
    request_id: str,
    forwarding: Sequence[tuple[str, str]] | None = None,
    final: Sequence[tuple[str, str]] = (),
) -> list[tuple[str, str]]:
    """The headers sent upstream, in this order: the client's end-to-end headers; the router's
    forwarding headers (`forwarding`, which replace the client's; `[]`: none; None keeps the
    client's); the profile's; the credential and `X-Request-ID`; `final` (Accept-Encoding, a
    known Content-Length). Each group replaces every header of the same name (case-insensitive)
    in the groups before it. The client's headers are filtered in one pass."""
    extra = [credential_header(auth_header, auth_scheme, credential)] if credential else []
    extra.append(("X-Request-ID", request_id))
    profile = list(profile_headers)
    after_extra = {k.lower() for k, _ in final}
    after_profile = after_extra | {k.lower() for k, _ in extra}
    after_client = after_profile | {k.lower() for k, _ in profile}
    out = forwardable_request_headers(client_items, forwarding is None, after_client)
    if forwarding:
        out += [kv for kv in forwarding if kv[0].lower() not in after_client]
    if profile:
        out += [kv for kv in profile if kv[0].lower() not in after_profile]
    out += [kv for kv in extra if kv[0].lower() not in after_extra]
    out += final
    return out


def build_url(endpoint_url: str, client_query: str) -> str:
    """Endpoint URL (baseUrl + upstream path, maybe with its own query) + the client's query."""
    if not client_query:
        return endpoint_url
    return f"{endpoint_url}{'&' if '?' in endpoint_url else '?'}{client_query}"


# Query parameters of Anthropic's API with no meaning for another provider (Claude Code sends
# `POST /v1/messages?beta=true`): dropped on a route translated away from Anthropic's format.
ANTHROPIC_QUERY = frozenset({"beta"})


def without_params(query: str, names: frozenset[str]) -> tuple[str, bool]:
    """`query` without the parameters named in `names`; whether any was removed."""
    if not query:
        return query, False
    kept = [p for p in query.split("&") if p.partition("=")[0] not in names]
    return "&".join(kept), len(kept) < query.count("&") + 1


def sane_request_id(value: str | None) -> bool:
    return bool(value) and _REQUEST_ID.match(value) is not None  # type: ignore[arg-type]


_IDS_PER_READ = 256
_random = bytearray()  # os.urandom bytes not yet used, 16 per id


def _forget_random() -> None:
    _random.clear()  # a forked child must not hand out its parent's ids


os.register_at_fork(after_in_child=_forget_random)


def new_request_id() -> str:
    """A random UUID (version 4) in hex, as `uuid.uuid4().hex` gives it, without building a
    `UUID` object and without a system call per id: the bytes come from `os.urandom`, read for
    _IDS_PER_READ ids at a time."""
    if not _random:
        _random.extend(os.urandom(16 * _IDS_PER_READ))
    b = _random[-16:]
    del _random[-16:]
    b[6] = b[6] & 0x0F | 0x40  # version 4
    b[8] = b[8] & 0x3F | 0x80  # RFC 4122 variant
    return b.hex()


def map_model(mapping: Mapping[str, str], model: object) -> str | None:
    """The upstream name when `model` is mapped (exact match), else None (keep the name)."""
    if isinstance(model, str):
        return mapping.get(model)
    return None
