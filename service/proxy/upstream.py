"""The upstream HTTP client: one pooled keep-alive httpx client per worker, and error mapping.

The transport beneath httpx is chosen here and only here (`create_client`), so it can be swapped
after measurement (bench/README.md, "Upstream transport") without touching the relay code. The
default is the router's own `h1transport.H1Transport` (HTTP/1.1 on raw asyncio connections with
llhttp); `API_ROUTER_UPSTREAM_TRANSPORT=aiohttp`, `=httpx` or `=pyreqwest` (the `pyreqwest` extra;
HTTP/2 to upstreams, `API_ROUTER_UPSTREAM_HTTP2`) selects the others, so the benchmark can
compare them on the same code. A JSON request's `httpx.Request` is built on the
`request` fast path (service.proxy.upstream_fast; API_ROUTER_FAST_PATHS) unless it is off.

httpx exceptions are mapped to the router's own errors (service.errors) by type, never by
copying their text: an exception message may contain the upstream URL or a header.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import os
import ssl
from collections.abc import Mapping, Sequence
from typing import Any

import httpx
import structlog

from ..config.model import Timeouts
from ..errors import (
    ServiceUnavailable,
    UpstreamConnectError,
    UpstreamConnectTimeout,
    UpstreamError,
    UpstreamIOError,
    UpstreamProtocolError,
    UpstreamTimeout,
    UpstreamTLSError,
)
from ..settings import HTTP2_ENV, SettingsError, http2_setting
from .upstream_fast import bytes_request, read_raw, stock_read, take_whole

POOL_MAX_CONNECTIONS = 1024
POOL_MAX_KEEPALIVE = 256
# Below the 5 s after which uvicorn and Node close an idle connection: ours is closed first, so a
# request rarely meets a connection the upstream is closing (h1transport: the keep-alive race).
KEEPALIVE_EXPIRY_SECS = 4.0
POOL_WAIT_SECS = 5.0
TRANSPORT_ENV = "API_ROUTER_UPSTREAM_TRANSPORT"
_httpx_log = logging.getLogger("httpx")
_log = structlog.get_logger("api_router.upstream")
TRANSPORTS = ("h1", "aiohttp", "httpx", "pyreqwest")
DEFAULT_TRANSPORT = "h1"  # measured: bench/README.md, "Upstream transport"


def transport_name(env: Mapping[str, str]) -> str:
    """`API_ROUTER_UPSTREAM_TRANSPORT`, as the workers read it (any case, spaces ignored)."""
    return env.get(TRANSPORT_ENV, "").strip().lower() or DEFAULT_TRANSPORT


def check_transport(env: Mapping[str, str]) -> None:
    """The transport the workers will build, checked in the main process (a bad one failed in
    every worker, and Sanic then killed the whole process group)."""
    name = transport_name(env)
    http2 = http2_setting(env)
    if name not in TRANSPORTS:
        raise SettingsError(f"{TRANSPORT_ENV}={name!r} must be one of {', '.join(TRANSPORTS)}")
    if http2 != "off" and name != "pyreqwest":
        # Only pyreqwest speaks HTTP/2: the others would quietly stay on HTTP/1.1.
        raise SettingsError(f"{HTTP2_ENV} needs {TRANSPORT_ENV}=pyreqwest (the only HTTP/2 one)")
    module = {"aiohttp": "httpx_aiohttp", "pyreqwest": "pyreqwest"}.get(name)
    if module is not None and importlib.util.find_spec(module) is None:
        raise SettingsError(f"{TRANSPORT_ENV}={name} needs the {module} package, not installed")


def _transport(
    name: str, max_connections: int = POOL_MAX_CONNECTIONS, fast: bool = True
) -> httpx.AsyncBaseTransport:
    """`fast`: the `request` fast path's share in the transport (h1: `raw_headers`); on by
    default, as every fast path is (`create_client` passes the setting)."""
    limits = httpx.Limits(
        max_connections=max_connections,  # API_ROUTER_UPSTREAM_MAX_CONNECTIONS, per worker
        max_keepalive_connections=min(POOL_MAX_KEEPALIVE, max_connections),
        keepalive_expiry=KEEPALIVE_EXPIRY_SECS,
    )
    if name == "h1":
        from .h1transport import H1Transport

        return H1Transport(limits, fast_headers=fast)
    if name == "aiohttp":
        from ._aiohttp import HttpxErrorsTransport

        return HttpxErrorsTransport(limits)
    if name == "pyreqwest":
        from ._pyreqwest import PyreqwestTransport

        return PyreqwestTransport(limits)
    if name != "httpx":
        raise ValueError(f"{TRANSPORT_ENV}={name!r} must be one of {', '.join(TRANSPORTS)}")
    return httpx.AsyncHTTPTransport(limits=limits, retries=0)


class UpstreamClient(httpx.AsyncClient):
    """`httpx.AsyncClient` for a relay shared by every client of the router.

    `send` hands the request straight to the transport: a relay has no authentication, follows
    no redirect (one must never move a request to another host), and keeps no cookie jar (an
    upstream's `Set-Cookie` for one client must never be sent on another client's request).
    Skipping those layers is also the cheaper path; everything else is httpx's.
    """

    def __init__(self, transport: httpx.AsyncBaseTransport, fast_request: bool = True) -> None:
        """`fast_request`: the `request` fast path (upstream_fast), applied in `build_request`
        and `read_raw` (its share in the transport is `_transport`'s `fast`)."""
        super().__init__(
            transport=transport,
            follow_redirects=False,
            trust_env=False,  # no proxy or netrc credentials picked up from the environment
            headers={},
        )
        self._upstream = transport
        self._fast_request = fast_request
        # A relay invents no header: httpx's default User-Agent / Accept / Connection are not
        # added; the upstream sees the client's own (SPEC §5), plus the profile's.
        self._headers = httpx.Headers()  # the setter would merge the defaults back in

    def build_request(  # type: ignore[override]
        self,
        method: str,
        url: str,
        *,
        content: Any = None,
        headers: Sequence[tuple[str, str | bytes]] | None = None,
        timeout: httpx.Timeout | None = None,
        **rest: Any,
    ) -> httpx.Request:
        """httpx's `build_request` for what the relay sends (a URL string, a header list, a
        timeout), without re-parsing the same upstream URL on every request and without merging
        the cookies, parameters and base URL a relay never has. Anything else: httpx's own."""
        if rest or timeout is None or not isinstance(url, str) or not isinstance(headers, list):
            return super().build_request(
                method,
                url,
                content=content,
                headers=headers,  # type: ignore[arg-type]  # (str and bytes values mixed)
                timeout=timeout,
                **rest,
            )
        if self._fast_request and isinstance(content, bytes):
            return bytes_request(method, _url(url), headers, content, timeout.as_dict())
        return httpx.Request(
            method,
            _url(url),
            content=content,
            headers=headers,
            extensions={"timeout": timeout.as_dict()},
        )

    async def send(
        self, request: httpx.Request, *, stream: bool = False, **_: object
    ) -> httpx.Response:
        response = await self._upstream.handle_async_request(request)
        response.request = request
        if _httpx_log.isEnabledFor(logging.INFO):  # the line httpx's own send logs
            _httpx_log.info(
                'HTTP Request: %s %s "%s %d %s"',
                request.method,
                request.url,
                response.http_version,
                response.status_code,
                response.reason_phrase,
            )
        if not stream:
            try:
                await response.aread()
            except BaseException:
                await response.aclose()
                raise
        return response

    async def read_raw(self, response: httpx.Response) -> bytes:
        """The raw body of a whole (non-stream) answer, the response closed after it (its
        connection back to the pool): httpx's `aiter_raw()` joined then `aclose()`, or with
        the `request` fast path, `upstream_fast.read_raw`."""
        return await (read_raw(response) if self._fast_request else stock_read(response))

    def whole_now(self, response: httpx.Response) -> bytes | None:
        """The raw body of a whole answer when the transport has all of it already (the
        `request` fast path, `upstream_fast.take_whole`), the response closed; else None."""
        return take_whole(response) if self._fast_request else None


@functools.lru_cache(maxsize=1024)
def _url(raw: str) -> httpx.URL:
    """Parsed once per distinct upstream URL (httpx.URL is immutable)."""
    return httpx.URL(raw)


def create_client(
    max_connections: int = POOL_MAX_CONNECTIONS, fast_request: bool = True
) -> UpstreamClient:
    """Created in a `before_server_start` listener; closed in `after_server_stop`."""
    name = transport_name(os.environ)
    return UpstreamClient(_transport(name, max_connections, fast_request), fast_request)


def request_timeout(t: Timeouts, pool_wait: float = POOL_WAIT_SECS) -> httpx.Timeout:
    """`pool_wait` (API_ROUTER_UPSTREAM_POOL_WAIT_SECS): how long a request may wait for a free
    pooled connection before it is answered 503 (httpx.PoolTimeout), instead of queueing."""
    return timeout_of(t.connect_secs, t.read_secs, pool_wait)


@functools.lru_cache(maxsize=256)
def timeout_of(connect: float, read: float, pool: float) -> httpx.Timeout:
    """One (immutable) `httpx.Timeout` per distinct setting, not one per request (also an
    attempt's under a routing file, service.proxy.failover)."""
    return httpx.Timeout(connect=connect, read=read, write=read, pool=pool)


async def send(client: httpx.AsyncClient, request: httpx.Request) -> httpx.Response:
    """`client.send(request, stream=True)`, retried once when the request provably never reached
    the upstream: the connection could not be established (refused, DNS, reset during the
    handshake), so no byte of the request left the router. Never after a timeout (that would
    double the wait), a TLS failure (it would fail again), or anything once connected: a POST
    to an LLM costs money and is not idempotent."""
    try:
        return await client.send(request, stream=True)
    except httpx.ConnectError as e:
        if _caused_by_tls(e):
            raise
    _log.warning("upstream_retry", reason="connect_error")
    return await client.send(request, stream=True)


def _caused_by_tls(exc: BaseException) -> bool:
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, ssl.SSLError | ssl.CertificateError):
            return True
        cur = cur.__cause__ or cur.__context__
    return False


def map_exception(exc: httpx.HTTPError) -> UpstreamError | ServiceUnavailable:
    """Which failure-table row an httpx exception is (SPEC §5)."""
    if isinstance(exc, httpx.PoolTimeout):
        # Our own pool is exhausted: the upstream is not at fault; answer quickly.
        return ServiceUnavailable("No upstream connection available; try again")
    if isinstance(exc, httpx.ConnectTimeout):
        return UpstreamConnectTimeout()
    if isinstance(exc, httpx.TimeoutException):
        return UpstreamTimeout()
    if isinstance(exc, httpx.ConnectError):
        return UpstreamTLSError() if _caused_by_tls(exc) else UpstreamConnectError()
    if isinstance(exc, httpx.LocalProtocolError):
        # A request the engine would not frame (a streamed body that does not match its
        # declared length, a header outside the grammar): a protocol failure, not an I/O one.
        return UpstreamProtocolError()
    if isinstance(exc, httpx.RemoteProtocolError):
        # httpcore says "Server disconnected without sending a response." when the peer closed
        # before a status line: that is a reset, not a malformed answer.
        if str(exc).startswith("Server disconnected"):
            return UpstreamIOError()
        return UpstreamProtocolError()
    if isinstance(exc, httpx.DecodingError):
        return UpstreamProtocolError()
    if _caused_by_tls(exc):
        return UpstreamTLSError()
    return UpstreamIOError()
