"""The CLI: `api-router [PROFILE] [PORT]` / `python -m service [PROFILE] [PORT]` (both enter
through service.__main__, which imports this module only when it runs).

Parse arguments over environment variables, validate the profile once (exit status 2 with one
line naming the problem, never a fallback), prepare the multiprocess metrics directory, then
serve with one Sanic worker per CPU it may use (default_workers; or `--workers N`), on the
router's protocol (service.server.protocol) and with the worker manager's start-up wait mended
(service.server.manager).

Memory: before the workers are spawned, glibc's malloc is told (through the environment the
workers start with: `MALLOC_ENV`, `MALLOC_MMAP_THRESHOLD_=131072`) to serve every allocation of
128 KiB or more with its own mmap, returned to the system when freed. glibc's default raises that
threshold each time such a block is freed, so after large request bodies (1 MB) later large
buffers may come from the heap, which keeps them: a worker's RSS stayed near its high-water mark.
With the fixed threshold it goes back down after the bodies, at the same CPU per large request
(measured in bench/README.md, "Memory"). An operator's own `MALLOC_MMAP_THRESHOLD_` or
`MALLOC_TRIM_THRESHOLD_`, or malloc settings in `GLIBC_TUNABLES`, are kept as they are and ours
is then not added; other C libraries ignore these variables.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import socket
import sys
import tempfile
from collections.abc import Mapping
from functools import partial
from pathlib import Path

from .access import from_settings
from .config import ConfigError, Profile, find_profile, lastgood, load_file
from .ejection import EJECTION_TABLE_ENV
from .ejection import share_table as share_ejection_table
from .observability import RECORD_FLAG, sentry
from .proxy.upstream import check_transport
from .ratelimit import check_backend
from .ratelimit.backends import REDIS_SCHEMES
from .ratelimit.shared import (
    DEFAULT_MAX_BUCKETS,
    MAX_BUCKETS_ENV,
    TABLE_ENV,
    check_room,
    remove_table,
    share_table,
)
from .ratelimit.tokens import TOKEN_TABLE_ENV
from .settings import Settings, SettingsError, parse_port, raise_fd_limit

# glibc malloc settings for the workers (module docstring): the threshold at glibc's own starting
# value, fixed (setting it turns off the dynamic raise; the trim threshold then stays at 128 KiB).
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "131072"}
# An operator who set any of these tuned malloc themselves: nothing is added.
OPERATOR_MALLOC_VARS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")


def tune_malloc(env: Mapping[str, str]) -> dict[str, str]:
    """Put `MALLOC_ENV` into os.environ for the workers spawned later, unless the operator set
    a malloc threshold of their own. Returns what was set."""
    if any(k in env for k in OPERATOR_MALLOC_VARS) or "glibc.malloc." in env.get(
        "GLIBC_TUNABLES", ""
    ):
        return {}
    os.environ.update(MALLOC_ENV)
    return dict(MALLOC_ENV)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"api-router: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="api-router",
        description="A small, fast, observable gateway in front of one LLM provider.",
    )
    p.add_argument("profile", nargs="?", help="profile name or NAME.json (default: qwen)")
    p.add_argument("port", nargs="?", help="listening port (default: the profile's, 8000)")
    p.add_argument("--host", help="listening address (default 0.0.0.0)")
    p.add_argument("--workers", help="worker processes (default: the CPUs it may use)")
    p.add_argument("--config", help="path of a profile JSON file (overrides PROFILE lookup)")
    return p


def resolve_settings(argv: list[str] | None, env: dict[str, str]) -> Settings:
    args = build_parser().parse_intermixed_args(argv)  # options before, between or after
    if args.port is None and args.profile is not None and args.profile.isdigit():
        # `api-router 9000` / `api-router --config f.json 9000`: a lone number is the port.
        args.port, args.profile = args.profile, None
    if args.config and args.profile is not None:
        # --config wins over a PROFILE argument (configuration.md), but one that names no
        # profile at all is a mistyped port (`9OOO`): it served on the file's port unsaid.
        try:
            find_profile(args.profile)
        except ConfigError:
            raise SettingsError(
                f"{args.profile!r} is neither a port nor a profile (with --config, the only "
                "argument is normally the port)"
            ) from None
    name = args.profile or env.get("API_ROUTER_PROFILE") or "qwen"
    # Arguments win over the environment: a PROFILE argument over API_ROUTER_CONFIG_PATH (which
    # the chart sets), as --config wins over both.
    env_path = None if args.profile else env.get("API_ROUTER_CONFIG_PATH")
    config_path = args.config or env_path or None
    path = find_profile(name, config_path)
    loaded = load_file(path)  # validated here so a bad file fails before any worker starts
    if args.port is not None:
        port = parse_port(args.port, "argument PORT")
    elif env.get("API_ROUTER_PORT"):
        port = parse_port(env["API_ROUTER_PORT"], "API_ROUTER_PORT")
    else:
        port = loaded.profile.port
    raw_workers = args.workers or env.get("API_ROUTER_WORKERS")
    if raw_workers:
        try:
            workers = int(raw_workers)
        except ValueError:
            raise SettingsError(f"invalid worker count {raw_workers!r}: not an integer") from None
        if not 1 <= workers <= 256:
            raise SettingsError(f"invalid worker count {workers}: must be 1..256")
    else:
        workers = default_workers()
    host = args.host or env.get("API_ROUTER_HOST") or "0.0.0.0"
    return Settings.from_env(
        env, profile_path=path.absolute(), host=host, port=port, workers=workers
    )


CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")


def default_workers(cpu_max: Path = CGROUP_CPU_MAX) -> int:
    """One worker per CPU this process may run on: the CPUs of its affinity mask (taskset,
    cpusets; os.cpu_count() counts the whole machine's), fewer when a cgroup v2 CPU quota
    (`cpu.max`: "QUOTA PERIOD", or "max PERIOD" for none; a container's CPU limit) allows fewer:
    ceil(QUOTA / PERIOD). At least 1."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        cpus = os.cpu_count() or 1
    try:
        quota, period = cpu_max.read_text().split()[:2]
        if quota != "max" and int(period) > 0:
            cpus = min(cpus, -(-int(quota) // int(period)))
    except (OSError, ValueError):  # no cgroup v2 controller here, or a line not understood
        pass
    return max(1, cpus)


def check_listen(host: str, port: int) -> None:
    """Whether `host:port` can be listened on, before any worker starts: a port in use or a host
    that is not an address of this machine is one line and exit 2, not Sanic's traceback. (The
    socket is closed at once; Sanic binds its own, with the same SO_REUSEADDR.)"""
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    family = socket.AF_INET6 if ":" in host else socket.AF_INET  # as Sanic's bind_socket
    try:
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((host, port))
    except OSError as e:  # socket.gaierror included
        raise SettingsError(f"cannot listen on {where}: {e.strerror or e}") from None


def prepare_multiproc_dir(env: dict[str, str]) -> str:
    """A fresh directory for prometheus-client's multiprocess files (stale files would add a
    previous run's counts)."""
    path = env.get("PROMETHEUS_MULTIPROC_DIR")
    if path:
        p = Path(path)
        p.mkdir(parents=True, exist_ok=True)
        # the metric files, the exemplars, the repeated-failure alarm and the workers' record
        # flags (service.observability): nothing of a previous run counts in this one
        stale = [*p.glob("*.db"), *p.glob(RECORD_FLAG.format(pid="*"))]
        for f in [*stale, p / "exemplars.bin", p / "failure-alarm.json"]:
            f.unlink(missing_ok=True)
    else:
        sweep_metric_dirs()
        path = tempfile.mkdtemp(prefix=f"{METRIC_DIR_PREFIX}{os.getpid()}-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = path
    return path


METRIC_DIR_PREFIX = "api-router-metrics-"


def sweep_metric_dirs(tmp: str | None = None) -> list[str]:
    """Remove the temporary metric directories of routers that died without removing theirs
    (SIGKILL, the OOM killer): each is named after its main process, and one whose process is
    gone, that no live process still uses (its draining workers) and that belongs to this user
    is left by nobody. The removed paths."""
    removed: list[str] = []
    if not Path("/proc/self").exists():  # no way to tell a live router from a dead one
        return removed
    base = Path(tmp or tempfile.gettempdir())
    for d in base.glob(f"{METRIC_DIR_PREFIX}*-*"):
        pid = d.name[len(METRIC_DIR_PREFIX) :].split("-", 1)[0]
        if not pid.isdigit() or Path(f"/proc/{pid}").exists():
            continue
        try:
            if not d.is_dir() or d.is_symlink() or d.stat().st_uid != os.getuid():
                continue
        except OSError:
            continue
        if _in_use(str(d)):  # its workers may outlive it a while (they drain first)
            continue
        shutil.rmtree(d, ignore_errors=True)
        removed.append(str(d))
    return removed


def _in_use(path: str) -> bool:
    """Whether a live process of ours was started with `path` as its metrics directory: the
    workers of a main process that was killed drain their streams before they end
    (service.server.lifeline) and still write there."""
    wanted = b"PROMETHEUS_MULTIPROC_DIR=" + os.fsencode(path) + b"\0"
    with os.scandir("/proc") as entries:
        pids = [e.name for e in entries if e.name.isdigit()]
    for pid in pids:
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                if wanted in f.read() + b"\0":
                    return True
        except OSError:  # gone, or not ours
            continue
    return False


def prepare_ratelimit_table(settings: Settings, env: dict[str, str]) -> str | None:
    """The embedded limiter's table, shared by every worker: created here, in the primary,
    before the workers are spawned (they find it through TABLE_ENV). None with Redis."""
    check_backend(settings.rate_limit_backend)
    if (settings.rate_limit_backend or "").startswith(REDIS_SCHEMES):
        return None
    raw = env.get(MAX_BUCKETS_ENV, "").strip()
    try:
        max_buckets = int(raw) if raw else DEFAULT_MAX_BUCKETS
    except ValueError:
        raise ValueError(f"{MAX_BUCKETS_ENV}={raw!r} is not an integer") from None
    if not 1 <= max_buckets <= 50_000_000:
        raise ValueError(f"{MAX_BUCKETS_ENV}={max_buckets} is out of range (1..50000000)")
    check_room(max_buckets, 2)  # this table and the token meters' (below)
    path = share_table(max_buckets)
    os.environ[TABLE_ENV] = path
    # The token meters' own table (service.ratelimit.tokens), as large: a second file, so that
    # rate_limiter_buckets and /health keep counting request buckets only.
    os.environ[TOKEN_TABLE_ENV] = share_table(max_buckets)
    return path


def write_port_file(settings: Settings, env: dict[str, str]) -> None:
    """`API_ROUTER_PORT_FILE`: where the listening port is written, whichever of the argument,
    `API_ROUTER_PORT` or the profile chose it (the image's HEALTHCHECK reads it)."""
    path = env.get("API_ROUTER_PORT_FILE", "").strip()
    if not path:
        return
    try:
        with open(path, "w") as f:
            f.write(f"{settings.port}\n")
    except OSError as e:
        raise OSError(f"API_ROUTER_PORT_FILE={path!r}: {e.strerror or e}") from None


def _banner(profile: Profile, settings: Settings) -> None:
    """One start-up line: what this process serves, where, with how many workers."""
    import structlog

    from . import __version__

    log = structlog.get_logger("api_router")
    log.info(
        "api_router_starting",
        version=__version__,
        profile=profile.name,
        upstream=profile.base_url,
        address=f"http://{settings.host}:{settings.port}",
        workers=settings.workers,
    )
    if settings.log_format_unknown is not None:
        log.warning(
            "log_format_unknown",
            log_format=settings.log_format_unknown,
            using="console",
            expected="json or console",
        )


def main(argv: list[str] | None = None) -> None:
    env = dict(os.environ)
    # Before the settings: the default connection caps follow the limit (fd_connection_budget),
    # and the workers inherit it.
    raise_fd_limit()
    try:
        settings = resolve_settings(argv, env)
        # An unusable access keys file stops us here, not in a worker; a usable one is read
        # once, for every worker (one restarted later must not read an edited file).
        keys = from_settings(settings)
        if keys is not None:
            settings = dataclasses.replace(settings, access_key_hashes=keys.hashes)
        check_listen(settings.host, settings.port)
        check_transport(env)  # and what the workers would only find out each on its own
        sentry.check(env)
    except (ConfigError, SettingsError) as e:
        print(f"api-router: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    try:
        write_port_file(settings, env)
        table = prepare_ratelimit_table(settings, env)
    except (ValueError, OSError) as e:
        print(f"api-router: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    # A routing file's ejections and cooldowns, shared by the workers (service.ejection).
    os.environ[EJECTION_TABLE_ENV] = ejection_table = share_ejection_table()
    # The last good config, for a worker started again while the file is broken (stored by the
    # main process's own create_app below first, then by each worker at each load).
    os.environ[lastgood.LAST_GOOD_ENV] = last_good = lastgood.create()
    tune_malloc(env)  # read by glibc when each spawned worker starts
    created = "PROMETHEUS_MULTIPROC_DIR" not in env
    try:
        mp_dir = prepare_multiproc_dir(env)  # before prometheus_client is imported anywhere
    except OSError as e:
        for shared in (table, ejection_table, last_good):  # made above: none of it stays
            if shared is not None:
                remove_table(shared)
        where = env.get("PROMETHEUS_MULTIPROC_DIR") or tempfile.gettempdir()
        print(
            f"api-router: error: PROMETHEUS_MULTIPROC_DIR={where!r}: {e.strerror or e}",
            file=sys.stderr,
        )
        raise SystemExit(2) from None
    settings = Settings(**{**settings.__dict__, "multiproc_dir": mp_dir})

    from sanic import Sanic
    from sanic.worker.loader import AppLoader

    from .app import create_app
    from .server import lifeline, manager
    from .server.protocol import GuardedHttpProtocol

    lifeline.mark_primary()  # the children end with this process (service.server.lifeline)
    loader = AppLoader(factory=partial(create_app, settings))
    app = loader.load()
    app.prepare(
        protocol=GuardedHttpProtocol,  # total head/body deadlines, connections per worker
        host=settings.host,
        port=settings.port,
        workers=settings.workers,
        # Sanic's default is 100: a thousand clients connecting at once (agents opening their
        # streams) would lose SYNs and wait a second or more for the retry.
        backlog=settings.backlog,
        access_log=False,
        motd=False,
        single_process=False,
    )
    _banner(app.ctx.config.current.profile, settings)
    try:
        manager.patch()  # SIGTERM while the workers start: stop, do not spin
        Sanic.serve(primary=app, app_loader=loader)
    finally:
        if created:
            shutil.rmtree(mp_dir, ignore_errors=True)
        if table is not None:
            remove_table(table)
        remove_table(ejection_table)
        remove_table(last_good)
