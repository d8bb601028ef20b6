"""The reference for what the HTTP client layer costs: the smallest Sanic proxy for one JSON route.

    .venv/bin/python bench/minimal_proxy.py --client CLIENT PORT UPSTREAM_URL

CLIENT: aiohttp | httpx | httpx-aiohttp | httpx-h1 | httpx-h1-direct | none.

Per request it does what the router's hot path cannot avoid (read the body, parse it, rewrite
`model`, send it upstream over a pooled keep-alive client, relay status and body) and nothing
else: no profile, no limiter, no logs, no metrics. Run side by side with the router by
bench/run.py, it separates the client library's cost (plain aiohttp vs httpx on its default
transport vs httpx on httpx-aiohttp's AiohttpTransport vs httpx on the router's own
`service.proxy.h1transport.H1Transport`, through `httpx.AsyncClient` or, `httpx-h1-direct`, with
the httpx `Request` handed straight to the transport as the router's `UpstreamClient` does,
without AsyncClient's auth/redirect/cookie layers) from the router's own features. The
H1Transport is imported only for `httpx-h1*` (with the repository on PYTHONPATH); where it is
missing that variant exits before listening and the harness records it as not measured.
With `aiohttp` it also relays the upstream's SSE stream (`/sse/v1/chat/completions`, each
piece written as it arrives through Sanic's streaming response, nothing parsed): the burst
scenario's Python reference (issue 20), as the JSON route is the JSON scenario's.
With `none` (Sanic alone) there is no upstream request at all: each worker fetches the
upstream's JSON answer and SSE stream once when it starts and answers every request with those
bytes, the body read and parsed as above, the stream written through the same streaming
response as the `aiohttp` relay's. It is Sanic's own floor on this machine: what any relay on
Sanic, however small, stays below (issue 20's burst target measured against it).
Listens on 127.0.0.1 only; two workers, like the router's measured configuration.
"""

from __future__ import annotations

import argparse
from typing import Any

import orjson
from sanic import Request, Sanic
from sanic.response import HTTPResponse

CLIENTS = ("aiohttp", "httpx", "httpx-aiohttp", "httpx-h1", "httpx-h1-direct", "none")
HEADERS = {"Content-Type": "application/json", "Authorization": "Bearer bench-key"}


def _upstream_body(request: Request) -> bytes:
    """The client's JSON body with `model` rewritten: what the router's hot path cannot avoid."""
    payload = orjson.loads(request.body)
    payload["model"] = "upstream-model"
    return orjson.dumps(payload)


def create_app(client: str, upstream: str) -> Sanic:
    app = Sanic("minimal_" + client.replace("-", "_"), configure_logging=False)
    app.config.ACCESS_LOG = False
    app.config.MOTD = False
    url = upstream.rstrip("/") + "/v1/chat/completions"
    sse_url = upstream.rstrip("/") + "/sse/v1/chat/completions"  # the whole stream at once

    if client == "none":
        return _alone(app, url, sse_url)

    @app.before_server_start
    async def _open(app: Sanic) -> None:
        if client == "aiohttp":
            import aiohttp

            app.ctx.http = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=1024, keepalive_timeout=30),
                auto_decompress=False,
            )
        else:
            import httpx

            limits = httpx.Limits(max_connections=1024, max_keepalive_connections=256)
            transport: Any
            if client == "httpx-aiohttp":
                from httpx_aiohttp import AiohttpTransport

                transport = AiohttpTransport(limits=limits, trust_env=False)
            elif client.startswith("httpx-h1"):
                from service.proxy.h1transport import H1Transport

                transport = H1Transport(limits)
            else:
                transport = httpx.AsyncHTTPTransport(limits=limits)
            app.ctx.transport = transport
            app.ctx.http = httpx.AsyncClient(transport=transport, trust_env=False)

    @app.after_server_stop
    async def _close(app: Sanic) -> None:
        await (app.ctx.http.close() if client == "aiohttp" else app.ctx.http.aclose())

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> HTTPResponse:
        body = _upstream_body(request)
        if client == "aiohttp":
            async with app.ctx.http.post(url, data=body, headers=HEADERS) as resp:
                data = await resp.read()
                return HTTPResponse(data, status=resp.status, content_type="application/json")
        if client == "httpx-h1-direct":
            import httpx

            req = httpx.Request("POST", url, content=body, headers=HEADERS)
            resp = await app.ctx.transport.handle_async_request(req)
            try:
                data = await resp.aread()
            finally:
                await resp.aclose()
            return HTTPResponse(data, status=resp.status_code, content_type="application/json")
        resp = await app.ctx.http.post(url, content=body, headers=HEADERS)
        return HTTPResponse(resp.content, status=resp.status_code, content_type="application/json")

    if client == "aiohttp":  # the reference: also the smallest relay of an SSE stream

        @app.post("/sse/v1/chat/completions")
        async def chat_stream(request: Request) -> None:
            body = _upstream_body(request)
            async with app.ctx.http.post(sse_url, data=body, headers=HEADERS) as resp:
                out = await request.respond(
                    status=resp.status, content_type=resp.headers.get("Content-Type")
                )
                async for chunk in resp.content.iter_any():
                    await out.send(chunk)
                await out.eof()

    return app


def _alone(app: Sanic, url: str, sse_url: str) -> Sanic:
    """Sanic alone: the upstream's answers fetched once per worker, then served from memory."""

    @app.before_server_start
    async def _fetch(app: Sanic) -> None:
        import urllib.request

        def fetch(target: str) -> bytes:
            req = urllib.request.Request(target, data=b'{"model":"m"}', headers=HEADERS)
            with urllib.request.urlopen(req, timeout=10) as resp:
                data: bytes = resp.read()
                return data

        app.ctx.json, app.ctx.sse = fetch(url), fetch(sse_url)

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> HTTPResponse:
        _upstream_body(request)
        return HTTPResponse(app.ctx.json, content_type="application/json")

    @app.post("/sse/v1/chat/completions")
    async def chat_stream(request: Request) -> None:
        _upstream_body(request)
        out = await request.respond(status=200, content_type="text/event-stream")
        await out.send(app.ctx.sse)
        await out.eof()

    return app


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--client", choices=CLIENTS, required=True)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("port", type=int)
    p.add_argument("upstream")
    args = p.parse_args()
    if args.client.startswith("httpx-h1"):
        try:  # fail here, before any worker starts, when the transport is not there
            import service.proxy.h1transport  # noqa: F401
        except ImportError as e:
            raise SystemExit(f"minimal_proxy: httpx-h1 needs service.proxy.h1transport: {e}") from e
    from functools import partial

    from sanic.worker.loader import AppLoader

    loader = AppLoader(factory=partial(create_app, args.client, args.upstream))
    app = loader.load()
    app.prepare(host="127.0.0.1", port=args.port, workers=args.workers, access_log=False)
    Sanic.serve(primary=app, app_loader=loader)


if __name__ == "__main__":
    main()
