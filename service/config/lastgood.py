"""The last good config of an instance, kept for a worker that starts while the file is broken.

A broken edit keeps the last good config serving (service.config.reload) in the workers that
run. A worker started again later (after a crash or the OOM killer: service.server.manager)
read the file anew, failed, and could not start: the instance went on with a worker less until
the file was fixed, and with none if every worker died. So each worker (and the CLI, before any
starts) stores every config it loads here; a worker whose own load fails at start serves the
stored one, says so (`config_started_from_last_good`, with the file's error), reports the file
as a failed reload does (`config_reload_failed`, /health `config.lastError`, at its first check
a second later) and takes the file's next good version as the others do.

The store is one file the CLI creates (in /dev/shm where there is one) and unlinks at once:
the workers reach it through `/proc/<pid>/fd/<fd>` while the main process lives, as they reach
the shared tables (ratelimit.shared.share_file), so it never outlives the router. It holds the
pickled `LoadedConfig`, written and read under an exclusive `flock`; with it, the credentials
the config holds, as the workers' memory does, open only to processes of the same user.
Without `LAST_GOOD_ENV` (a router started without the CLI, a test in process) nothing is
stored and nothing is read.
"""

from __future__ import annotations

import os
import pickle
import tempfile

from ..ratelimit.shared import flocked, share_file, shm_directory
from .loader import LoadedConfig

LAST_GOOD_ENV = "API_ROUTER_LAST_GOOD_CONFIG"


def create() -> str:
    """An empty store for the workers of this (primary) process: the path they open."""
    fd, path = tempfile.mkstemp(prefix="api-router-config-", suffix=".pickle", dir=shm_directory())
    os.close(fd)
    return share_file(path)


def save(config: LoadedConfig) -> bool:
    """Store `config` (one that loaded and validated) as the instance's last good one; False
    when it could not be. Never raises: it runs in every load (`ConfigHolder.on_load`), and a
    config that cannot be stored (the main process gone, a value pickle refuses) still serves."""
    path = os.environ.get(LAST_GOOD_ENV)
    if not path:
        return False
    try:
        data = pickle.dumps(config, protocol=pickle.HIGHEST_PROTOCOL)
        fd = os.open(path, os.O_RDWR)
    except Exception:
        return False
    try:
        with flocked(fd):
            os.ftruncate(fd, 0)
            view = memoryview(data)
            while view:
                view = view[os.pwrite(fd, view, len(data) - len(view)) :]
    except OSError:
        return False
    finally:
        os.close(fd)
    return True


def load() -> LoadedConfig | None:
    """The instance's last good config, if one was stored and can be read."""
    path = os.environ.get(LAST_GOOD_ENV)
    if not path:
        return None
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # the main process is gone
        return None
    try:
        with flocked(fd):
            size = os.fstat(fd).st_size
            data = os.pread(fd, size, 0) if size else b""
    except OSError:
        return None
    finally:
        os.close(fd)
    if not data:
        return None
    try:
        config = pickle.loads(data)
    except Exception:  # a store of another version of the router: as if none
        return None
    return config if isinstance(config, LoadedConfig) else None
