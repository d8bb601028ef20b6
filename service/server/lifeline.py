"""The router's child processes end with its main process, however that one ends.

A worker (and Sanic's worker-state manager, a child of the main process too) used to outlive a
main process that died without stopping it: SIGKILL, the OOM killer choosing the main process, a
crash. The orphans went on serving on the port, with nobody to restart them, clean their
metric files or stop them on the next SIGTERM, and a new router on that port failed to start
("address in use"). In the container the main process is PID 1 and the container ends with it;
on a machine, with a service manager that does not kill the whole group, or in a shell, the
orphans stayed.

Each child asks the kernel (Linux `prctl(PR_SET_PDEATHSIG)`) for SIGTERM when its parent dies.
A worker then stops as on any SIGTERM (service.server.shutdown: streams in flight drain, then it
exits 0). A child whose parent was already gone when it asked (the main process died while the
child started) sends itself the signal at once. Elsewhere than Linux this does nothing.

`mark_primary()` is called by the CLI in the main process before any child starts: the children
inherit `API_ROUTER_PRIMARY_PID` and compare it with their parent's pid. `bind_to_primary()`
is called first thing in each worker (service.app, `before_server_start`) and in the
worker-state manager (service.server.manager's patch of `SyncManager.start`).
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

PRIMARY_PID_ENV = "API_ROUTER_PRIMARY_PID"
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def mark_primary() -> None:
    """This process is the router's main process: the children it starts bind to it."""
    os.environ[PRIMARY_PID_ENV] = str(os.getpid())


def bind_to_primary(sig: int = signal.SIGTERM) -> bool:
    """Have the kernel send `sig` to this process when its parent dies; True when it will.
    Only in a child of the main process `mark_primary` named (not in the main process itself,
    nor anywhere on a platform without `prctl`)."""
    primary = os.environ.get(PRIMARY_PID_ENV, "")
    if not sys.platform.startswith("linux") or not primary.isdigit():
        return False
    if int(primary) == os.getpid():
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0) != 0:
            return False
    except (OSError, AttributeError):
        return False
    if os.getppid() != int(primary):
        # The main process died before the request took effect: as if it died just after.
        os.kill(os.getpid(), sig)
    return True
