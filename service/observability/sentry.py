"""Optional Sentry reporting: `pip install api-router[sentry]`, enabled by `SENTRY_DSN`.

Each worker initialises the SDK in `before_server_start`. Events are sent by the router itself
from the completion path (`report`), tagged with `request_id`, `route`, `status_code` and
`error_type`; no integration patches Sanic or httpx (an httpx integration would add Sentry
trace headers to requests sent to the LLM provider). Events never carry request data, local
variables or breadcrumbs, and pass through the same credential scrubber as the logs.
"""

from __future__ import annotations

import os
from typing import Any

import structlog

from .. import __version__
from ..settings import SettingsError
from .logging import scrub

log = structlog.get_logger("api_router.sentry")

_enabled = False


def enabled() -> bool:
    return _enabled


def configured(env: dict[str, str] | None = None) -> bool:
    return bool((os.environ if env is None else env).get("SENTRY_DSN", "").strip())


def check(env: dict[str, str]) -> None:
    """A SENTRY_DSN the router cannot use, found in the main process: one the SDK would refuse
    (each worker failed on it, and Sanic then killed the whole process group), or one set where
    sentry-sdk is not installed (the router served and reported nothing: the image installs
    the redis and otel extras only). Like API_ROUTER_TRACING=true without the otel extra, that
    stops the start. The DSN itself is never repeated: it holds the project's key."""
    dsn = env.get("SENTRY_DSN", "").strip()
    if not dsn:
        return
    try:
        from sentry_sdk.utils import BadDsn, Dsn
    except ImportError:
        raise SettingsError(
            "SENTRY_DSN is set but sentry-sdk is not installed: "
            "pip install 'api-router[sentry]' (the image needs it built in; docs/deployment.md)"
        ) from None
    try:
        Dsn(dsn)
    except BadDsn:
        raise SettingsError("SENTRY_DSN is not a valid Sentry DSN") from None


def _before_send(event: Any, _hint: Any) -> Any:
    return scrub(event)


def init(env: dict[str, str] | None = None) -> bool:
    """Start the SDK when SENTRY_DSN is set; True when events will be sent."""
    global _enabled
    env = dict(os.environ) if env is None else env
    dsn = env.get("SENTRY_DSN", "").strip()
    if not dsn:
        return False
    try:
        import sentry_sdk
    except ImportError:
        log.error(
            "sentry_unavailable",
            reason="SENTRY_DSN is set but sentry-sdk is not installed",
            fix="pip install 'api-router[sentry]'",
        )
        return False
    sentry_sdk.init(
        dsn=dsn,
        environment=env.get("SENTRY_ENVIRONMENT") or None,
        release=f"api-router@{__version__}",
        default_integrations=False,
        auto_enabling_integrations=False,
        integrations=[],
        # No personal data: the SDK's default, not set here (sentry-sdk 2.75 deprecates
        # `send_default_pii` and warns when it is given; `data_collection` would turn off its
        # event scrubber).
        include_local_variables=False,
        max_breadcrumbs=0,
        before_send=_before_send,
    )
    _enabled = True
    return True


def report(
    *,
    message: str,
    tags: dict[str, str],
    exc: BaseException | None = None,
) -> None:
    """One event for one failed request. Called only on the failure path."""
    if not _enabled:
        return
    import sentry_sdk

    with sentry_sdk.new_scope() as scope:
        for k, v in tags.items():
            scope.set_tag(k, v)
        if exc is not None:
            scope.capture_exception(exc)
        else:
            scope.capture_message(message, level="error")


def flush(timeout: float = 2.0) -> None:
    if _enabled:
        import sentry_sdk

        sentry_sdk.flush(timeout)
