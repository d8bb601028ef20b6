"""Apps of `create_app` in the test process, for the tests that need to reach inside a running
app (a route added, a signal router watched) or that ask many configurations quickly: served to
sanic-testing's clients (`app.test_client`, `app.asgi_client`) instead of a worker process.

`in_process_apps(tmp_path)` gives `make(config, env)`: the app `create_app` builds for that
profile or routing file (written under `tmp_path`) and those environment settings (JSON logs
unless they say otherwise), as the CLI would build it, and the stream its log lines go to.
`create_app` sets up the process's logging, and a process holds one Sanic app per name unless in
test mode; all of it is put back on leaving: the root logger's handlers and level, structlog's
defaults, `Sanic.test_mode`, the app registry, and the response-head fast path (process-wide:
service.server.response_head) at its default.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import structlog
from sanic import Sanic

from service.app import create_app
from service.server import response_head
from service.settings import Settings
from tests.support import write_profile

with warnings.catch_warnings():
    # sanic-testing imports websockets.legacy, which warns about its own deprecation.
    warnings.simplefilter("ignore", DeprecationWarning)
    import sanic_testing  # noqa: F401  (adds `test_client` and `asgi_client` to Sanic apps)

MakeApp = Callable[..., tuple[Sanic, io.StringIO]]


@contextlib.contextmanager
def in_process_apps(tmp_path: Path) -> Iterator[MakeApp]:
    root = logging.getLogger()
    saved = (root.handlers[:], root.level, Sanic.test_mode)
    Sanic.test_mode = True  # several apps of the same name in one process
    made: list[Sanic] = []

    def make(
        config: dict[str, Any], env: Mapping[str, str] | None = None
    ) -> tuple[Sanic, io.StringIO]:
        path = write_profile(tmp_path, config, name=f"in-process-{len(made)}")
        settings = Settings.from_env({"LOG_FORMAT": "json", **(env or {})}, profile_path=path)
        app = create_app(settings)
        made.append(app)
        log = io.StringIO()
        root.handlers[0].setStream(log)  # type: ignore[attr-defined]
        return app, log

    try:
        yield make
    finally:
        for app in made:
            Sanic._app_registry.pop(app.name, None)
        response_head.install(True)  # the default, whatever the last app set
        root.handlers[:], level, Sanic.test_mode = saved
        root.setLevel(level)
        structlog.reset_defaults()
