"""pyreqwest (Rust's reqwest and hyper, rustls) under httpx: a selectable upstream engine.

`API_ROUTER_UPSTREAM_TRANSPORT=pyreqwest` (needs the `pyreqwest` extra: `pip install
api-router[pyreqwest]`; the dev lock has it). Measured against the default `h1` in
bench/README.md ("pyreqwest as the engine"): behind httpx's types it costs more per request
than `h1`, so it is not the default. What it offers that `h1` does not is **HTTP/2 to
upstreams**: `API_ROUTER_UPSTREAM_HTTP2=1` negotiates HTTP/2 by ALPN on `https://` upstreams
(HTTP/1.1 when the server does not offer it; plain `http://` stays HTTP/1.1);
`API_ROUTER_UPSTREAM_HTTP2=prior-knowledge` speaks only HTTP/2, without negotiation (h2c on
`http://`, for a local server known to speak it).

Configured as a relay needs: no decompression (bytes relayed raw), no redirect followed, no
proxy from the environment, no cookie store, no Accept-Encoding; Host and Content-Length come
from the URL and the body. One difference from the other engines that cannot be configured away:
reqwest adds `Accept: */*` and pyreqwest a `User-Agent` to a request that has none (its default
headers are merged into every request). Idle connections are closed after
`KEEPALIVE_EXPIRY_SECS`. hyper retries a request on a pooled connection the server
closed before the request was written (the keep-alive race); nothing else is retried.

TLS: rustls with the CAs of the platform's store; `SSL_CERT_FILE` (a PEM bundle) adds the
operator's CAs, as for `h1`. Timeouts: reqwest sets the connect and read (idle) timeouts per
client, so one client is built per distinct (connect, read, pool wait) setting (one per profile
in practice).

Errors are raised as the httpx exception httpx's own transport raises in the same situation
(`upstream.map_exception` reads those), with pyreqwest's as the cause; a TLS failure carries an
`ssl.SSLError` in its chain so it maps to `tls_error`.
"""

from __future__ import annotations

import os
import re
import ssl
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import httpx
from pyreqwest import exceptions as rq
from pyreqwest.client import Client, ClientBuilder

from ..settings import http2_setting

_PEM = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.S)
_TLS_WORDS = ("certificate", "tls", "handshake", "ssl", "invalidcertificate", "unknownissuer")


def http2_mode() -> str:
    """`API_ROUTER_UPSTREAM_HTTP2`: off (the default), on (ALPN) or prior-knowledge."""
    return http2_setting(os.environ)


def _causes(exc: BaseException) -> str:
    details = getattr(exc, "details", None) or {}
    return " ".join(str(c.get("message", "")) for c in details.get("causes") or ()).lower()


def _is_tls(exc: BaseException) -> bool:
    text = str(exc).lower() + " " + _causes(exc)
    return any(w in text for w in _TLS_WORDS)


def _while_connecting(exc: BaseException) -> bool:
    """hyper-util says `client error (Connect)` for a failure while connecting (nothing was
    sent) and `client error (SendRequest)` once connected; pyreqwest raises ConnectError for
    both (an upstream closing a fresh connection without answering is the second)."""
    return "client error (connect)" in _causes(exc)


def as_httpx_error(exc: BaseException, reading_body: bool = False) -> httpx.HTTPError | None:
    """The httpx exception for a pyreqwest failure (None: not one). Only fixed texts: a
    pyreqwest message may quote the upstream URL."""
    if isinstance(exc, rq.PoolTimeoutError):
        return httpx.PoolTimeout("No free upstream connection in time")
    # No ConnectTimeout: pyreqwest reports a response head that does not come within the read
    # timeout as a ConnectTimeoutError too, so a connect timeout cannot be told from a request
    # that was sent; both are reported as a read timeout (never as "not sent").
    if isinstance(exc, rq.WriteTimeoutError):
        return httpx.WriteTimeout("Timed out writing to the upstream")
    if isinstance(exc, rq.RequestTimeoutError):
        return httpx.ReadTimeout("Timed out reading from the upstream")
    if isinstance(exc, rq.ConnectError) and _while_connecting(exc):
        return httpx.ConnectError("Could not connect to the upstream")
    if isinstance(exc, rq.ReadError | rq.WriteError):
        return httpx.ReadError("Connection to the upstream broke")
    if isinstance(exc, rq.NetworkError):
        if reading_body:
            return httpx.ReadError("Connection to the upstream broke")
        return httpx.RemoteProtocolError("Server disconnected without sending a response.")
    if isinstance(exc, rq.RequestError):  # a malformed answer, a body error, ...
        return httpx.RemoteProtocolError("Malformed response from the upstream")
    return None


def _raise_mapped(exc: BaseException, reading_body: bool = False) -> None:
    mapped = as_httpx_error(exc, reading_body)
    if mapped is None:
        raise exc
    if isinstance(mapped, httpx.ConnectError) and _is_tls(exc):
        # rustls's failure, as an ssl.SSLError in the chain: upstream.map_exception -> tls_error
        tls = ssl.SSLError("TLS handshake with the upstream failed")
        tls.__cause__ = exc
        raise mapped from tls
    raise mapped from exc


class _Body(httpx.AsyncByteStream):
    """A response body read chunk by chunk as it arrives; closing it ends the exchange."""

    def __init__(self, response: Any, exchange: Any) -> None:
        self._reader = response.body_reader
        self._exchange = exchange

    async def __aiter__(self) -> AsyncIterator[bytes]:
        read = self._reader.read_chunk
        while True:
            try:
                chunk = await read()
            except rq.PyreqwestError as e:
                _raise_mapped(e, reading_body=True)
            if chunk is None:
                return
            yield bytes(chunk)

    async def aclose(self) -> None:
        exchange, self._exchange = self._exchange, None
        if exchange is not None:
            await exchange.__aexit__(None, None, None)


async def _upload(stream: httpx.AsyncByteStream) -> AsyncIterator[bytes]:
    async for chunk in stream:
        yield chunk


def _operator_cas(builder: ClientBuilder) -> ClientBuilder:
    path = os.environ.get("SSL_CERT_FILE")
    if not path:
        return builder
    with open(path, "rb") as f:
        for pem in _PEM.findall(f.read()):
            builder = builder.add_root_certificate_pem(pem)
    return builder


class PyreqwestTransport(httpx.AsyncBaseTransport):
    def __init__(self, limits: httpx.Limits) -> None:
        self._limits = limits
        self._http2 = http2_mode()
        self._clients: dict[tuple[float | None, float | None, float | None], Client] = {}

    def _client(self, timeout: dict[str, float | None]) -> Client:
        key = (timeout.get("connect"), timeout.get("read"), timeout.get("pool"))
        client = self._clients.get(key)
        if client is not None:
            return client
        limits = self._limits
        b = (
            ClientBuilder()
            .follow_redirects(False)
            .gzip(False)
            .brotli(False)
            .zstd(False)
            .deflate(False)
            .no_proxy()
            .default_cookie_store(False)
            .pool_idle_timeout(
                timedelta(seconds=limits.keepalive_expiry)
                if limits.keepalive_expiry is not None
                else None
            )
            .pool_max_idle_per_host(limits.max_keepalive_connections or 0)
        )
        if limits.max_connections:
            b = b.max_connections(limits.max_connections)
        connect, read, pool = key
        if connect is not None:
            b = b.connect_timeout(timedelta(seconds=connect))
        if read is not None:
            b = b.read_timeout(timedelta(seconds=read))
        if pool is not None:
            b = b.pool_timeout(timedelta(seconds=pool))
        if self._http2 == "prior-knowledge":
            b = b.http2_prior_knowledge()
        else:
            b = b.http2(self._http2 == "on")
        client = self._clients[key] = _operator_cas(b).build()
        return client

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        client = self._client(request.extensions.get("timeout", {}))
        headers = [
            (k, v) for k, v in request.headers.multi_items() if k not in ("host", "content-length")
        ]
        builder = client.request(request.method, str(request.url)).headers(headers)
        try:
            body: bytes | None = request.content
        except httpx.RequestNotRead:
            body = None
        if body is not None:
            if body or request.method not in ("GET", "HEAD", "DELETE"):
                builder = builder.body_bytes(body)
        else:
            length = request.headers.get("content-length")
            if length is not None:  # framing as declared (hyper checks the streamed length)
                builder = builder.header("content-length", length)
            assert isinstance(request.stream, httpx.AsyncByteStream)
            builder = builder.body_stream(_upload(request.stream))
        # Hand the response over at its head: pyreqwest would otherwise read up to 64 KB of the
        # body (or all of a shorter one) first, holding back a stream's first events.
        exchange = builder.streamed_read_buffer_limit(0).build_streamed()
        try:
            response = await exchange.__aenter__()
        except rq.PyreqwestError as e:
            _raise_mapped(e)
        version = b"HTTP/2" if response.version == "HTTP/2.0" else b"HTTP/1.1"
        return httpx.Response(
            response.status,
            headers=list(response.headers.items()),
            stream=_Body(response, exchange),
            extensions={"http_version": version},
        )

    async def aclose(self) -> None:
        clients, self._clients = self._clients, {}
        for client in clients.values():
            await client.close()
