"""`python -m service` and the `api-router` script (pyproject's `[project.scripts]`): service.cli.

This module imports nothing at module level, and must stay so. Sanic starts its worker processes
and its shared-state manager with multiprocessing's `spawn`, and a spawned process first runs the
parent's main script again under another name: for the `api-router` script (the image's
entrypoint) that is `from service.__main__ import main`. Were the CLI's imports here (the config
models, Sanic, httpx, the rate limiters…), every such process would pay them before doing its
own work: the manager process, which needs none of them (its start-up hook,
service.server.manager, imports structlog and service.server.lifeline only), held about 25 MB
more and the router took about 0.3 s longer to start (docs/deployment.md, "Start-up"). With
`python -m service` multiprocessing skips a package's `__main__` in the children. Checked by
tests/unit/test_imports.py (a fresh interpreter imports this module alone) and
tests/integration/test_cli.py (the script's manager process maps no pydantic-core).
"""

from __future__ import annotations


def main(argv: list[str] | None = None) -> None:
    from .cli import main as run

    run(argv)


if __name__ == "__main__":
    main()
