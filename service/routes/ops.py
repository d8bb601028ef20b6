"""Operational routes: /health, /ready, /metrics, /v1/models (GET and HEAD)."""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote

import orjson
from prometheus_client import CONTENT_TYPE_PLAIN_0_0_4, generate_latest
from prometheus_client.openmetrics import exposition as om
from sanic import Blueprint
from sanic.response import HTTPResponse

from ..config.model import MODEL_ID
from ..context import RouterRequest
from ..errors import NotFound, UnknownModel
from ..observability.completions import settled
from ..observability.metrics import exposition_registry

bp = Blueprint("ops")

GET = ["GET", "HEAD"]


def _json(data: object, status: int = 200) -> HTTPResponse:
    return HTTPResponse(orjson.dumps(data), status=status, content_type="application/json")


@bp.route("/health", methods=GET)
async def health(request: RouterRequest) -> HTTPResponse:
    app = request.app
    cfg = app.ctx.config.current
    routes = app.ctx.limiter.active_buckets()
    return _json(
        {
            "status": "ok",
            "message": "Light API Router running",
            "profile": cfg.profile.name,
            "upstream": cfg.profile.base_url,
            **(
                {"upstreams": {n: u.profile.base_url for n, u in cfg.routing.upstreams.items()}}
                if cfg.routing is not None
                else {}
            ),
            "rateLimiter": {"activeBuckets": sum(routes.values()), "routes": routes},
            "config": app.ctx.config.state(),
        }
    )


@bp.route("/ready", methods=GET)
async def ready(request: RouterRequest) -> HTTPResponse:
    app = request.app
    if app.ctx.draining:
        return _json({"status": "draining"}, 503)
    # The limiter's store is reported either way; it makes us unready only when fail-closed.
    limiter = "ok" if await app.ctx.limiter.healthy() else "down"
    if limiter == "down" and app.ctx.settings.rate_limit_fail_closed:
        return _json(
            {
                "status": "unavailable",
                "reason": "rate limiter backend down",
                "rateLimiter": limiter,
            },
            503,
        )
    return _json(
        {"status": "ready", "profile": app.ctx.config.current.profile.name, "rateLimiter": limiter}
    )


@bp.route("/metrics", methods=GET)
async def metrics(request: RouterRequest) -> HTTPResponse:
    app = request.app
    if app.ctx.metrics is None:
        # API_ROUTER_METRICS=false: nothing is recorded, so there is nothing to serve.
        raise NotFound("Metrics are disabled (API_ROUTER_METRICS=false)")
    completions = app.ctx.completions
    mp_dir = app.ctx.settings.multiproc_dir
    if completions is not None:  # the requests finished in this loop pass, here and elsewhere
        completions.flush()
        if mp_dir:
            await settled(mp_dir)
    app.ctx.refresh_gauges()
    registry = exposition_registry(app.ctx.metrics.registry)
    accept = request.headers.get("accept", "")
    if "application/openmetrics-text" in accept:
        exemplars = app.ctx.exemplars
        source: Any = registry
        if exemplars is not None:  # with tracing: the latency buckets' recent traces
            from ..observability.exemplars import WithExemplars

            source = WithExemplars(registry, exemplars)
        return HTTPResponse(om.generate_latest(source), content_type=om.CONTENT_TYPE_LATEST)
    # The classic text format 0.0.4 (SPEC §4): every scraper reads it.
    return HTTPResponse(generate_latest(registry), content_type=CONTENT_TYPE_PLAIN_0_0_4)


@bp.route("/v1/models", methods=GET)
async def models(request: RouterRequest) -> HTTPResponse:
    """The profile's models; under a routing file its route names (the face profile's `models`,
    set from the same resolver that routes, so the two never disagree)."""
    profile = request.app.ctx.config.current.profile
    data = [_model(m, profile.name) for m in profile.advertised_models()]
    return _json({"object": "list", "data": data})


@bp.route(MODEL_ID, methods=GET)
async def model(request: RouterRequest, model_id: str) -> HTTPResponse:
    """One model of the list (the openai SDK's `models.retrieve`), else 404 `model_not_found`.
    The id may hold slashes (`meta-llama/Llama-3.1-8B-Instruct`; the SDK sends them as %2F)."""
    model_id = unquote(model_id)
    profile = request.app.ctx.config.current.profile
    if model_id not in profile.advertised_models():
        raise UnknownModel()
    return _json(_model(model_id, profile.name))


def _model(model_id: str, owner: str) -> dict[str, object]:
    return {"id": model_id, "object": "model", "created": 0, "owned_by": owner}
