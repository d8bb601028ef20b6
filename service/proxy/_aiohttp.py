"""httpx-aiohttp's `AiohttpTransport` under httpx, raising httpx's own exception types.

The router is written against httpx: its error mapping (`upstream.map_exception`) reads httpx
exception types. httpx-aiohttp maps aiohttp's errors coarsely (any `ClientConnectionError`, a
reset or a server that closed, becomes `ConnectTimeout`; others pass through unmapped), so this
adapter raises, for each aiohttp error, the exception httpx's own transport raises in the same
situation, with the aiohttp error as its cause. Response bodies are wrapped the same way.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import httpx
from httpx_aiohttp import AiohttpTransport


def as_httpx_error(exc: BaseException, reading_body: bool = False) -> httpx.HTTPError | None:
    """The httpx exception for an aiohttp (or httpx-aiohttp-mapped) failure; None if not one."""
    if isinstance(exc, httpx.HTTPError) and exc.__cause__ is not None:
        exc = exc.__cause__  # re-map from the original aiohttp error
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return httpx.ConnectTimeout("Timed out connecting to the upstream")
    if isinstance(exc, asyncio.TimeoutError):  # aiohttp's ServerTimeoutError included
        return httpx.ReadTimeout("Timed out reading from the upstream")
    if isinstance(exc, aiohttp.ClientConnectorError):  # TLS errors included (kept as the cause)
        return httpx.ConnectError("Could not connect to the upstream")
    if isinstance(exc, aiohttp.ServerDisconnectedError) and not reading_body:
        return httpx.RemoteProtocolError("Server disconnected without sending a response.")
    if isinstance(exc, aiohttp.ServerDisconnectedError | aiohttp.ClientPayloadError):
        return httpx.RemoteProtocolError("peer closed connection without sending complete body")
    if isinstance(exc, aiohttp.ClientOSError | ConnectionError):
        return httpx.ReadError("Connection to the upstream broke")
    if isinstance(exc, aiohttp.ClientResponseError):  # a malformed response head
        return httpx.RemoteProtocolError("Malformed response from the upstream")
    if isinstance(exc, aiohttp.InvalidURL):
        return httpx.UnsupportedProtocol("Invalid upstream URL")
    if isinstance(exc, aiohttp.ClientError):
        return httpx.ReadError("Upstream client error")
    return None


class _Body(httpx.AsyncByteStream):
    def __init__(self, inner: httpx.AsyncByteStream) -> None:
        self._inner = inner

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._inner:
                yield chunk
        except Exception as e:
            mapped = as_httpx_error(e, reading_body=True)
            if mapped is None:
                raise
            raise mapped from (e.__cause__ if isinstance(e, httpx.HTTPError) else e)

    async def aclose(self) -> None:
        await self._inner.aclose()


class _Upload(httpx.AsyncByteStream):
    """A streamed request body that keeps the error its source raised (aiohttp wraps it)."""

    def __init__(self, inner: httpx.AsyncByteStream, failed: list[BaseException]) -> None:
        self._inner = inner
        self._failed = failed

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._inner:
                yield chunk
        except Exception as e:
            self._failed.append(e)
            raise


class _SharedSessionTransport(AiohttpTransport):
    """One aiohttp session per worker, shared by every client of the router, so it must keep
    nothing between requests: no cookie jar (an upstream's `Set-Cookie` for one client must never
    ride on another client's request) and no headers the client did not send."""

    def get_client(self) -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(
            keepalive_timeout=self.limits.keepalive_expiry,
            ssl=self.ssl_context,
            limit=self.limits.max_connections or 0,
        )
        return aiohttp.ClientSession(
            connector=connector,
            cookie_jar=aiohttp.DummyCookieJar(),
            # No header the relay did not put there (aiohttp would add each of these by itself).
            skip_auto_headers=("User-Agent", "Content-Type", "Accept", "Accept-Encoding"),
        )


class HttpxErrorsTransport(httpx.AsyncBaseTransport):
    """`AiohttpTransport` with httpx's exception semantics; a pooled aiohttp session inside."""

    def __init__(self, limits: httpx.Limits) -> None:
        self._inner = _SharedSessionTransport(limits=limits, trust_env=False)

    def _pool_full(self) -> bool:
        connector = getattr(self._inner.client, "connector", None)
        limit = getattr(connector, "limit", 0)
        return bool(limit) and len(getattr(connector, "_acquired", ())) >= limit

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        failed: list[BaseException] = []
        if isinstance(request.stream, httpx.AsyncByteStream) and not hasattr(request, "_content"):
            request.stream = _Upload(request.stream, failed)
        pool_full = self._pool_full()
        try:
            resp = await self._inner.handle_async_request(request)
        except Exception as e:
            if failed:  # the request body's own error (e.g. too large): as httpx lets it through
                raise failed[0] from None
            cause = e.__cause__ if isinstance(e, httpx.HTTPError) else e
            if pool_full and isinstance(cause, aiohttp.ConnectionTimeoutError):
                # aiohttp times the wait for a pooled connection with its connect timeout: with
                # every connection in use when we asked, it was that wait (httpx: PoolTimeout).
                raise httpx.PoolTimeout("No free upstream connection in time") from cause
            mapped = as_httpx_error(e)
            if mapped is None:
                raise
            raise mapped from (e.__cause__ if isinstance(e, httpx.HTTPError) else e)
        assert isinstance(resp.stream, httpx.AsyncByteStream)
        resp.stream = _Body(resp.stream)
        return resp

    async def aclose(self) -> None:
        await self._inner.aclose()
