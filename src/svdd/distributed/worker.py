"""Entry point of a ``process``-backend worker: ``python -m svdd.distributed.worker FD``, where
FD is the worker's end of a socket pair opened by ``svdd.distributed.pool.ProcessBackend``.

On Linux the worker asks the kernel for SIGKILL when its parent dies (``PR_SET_PDEATHSIG``), so a
run killed with ``kill -9`` leaves no worker computing a shard nobody will read; elsewhere it
exits at its next read of the closed socket."""

from __future__ import annotations

import sys
from multiprocessing.connection import Connection

from .pool import serve

def _die_with_parent() -> None:
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes
        import os
        import signal

        parent = os.getppid()
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGKILL), 0, 0, 0)   # PR_SET_PDEATHSIG = 1
        if os.getppid() != parent:                   # the parent died before the call
            os._exit(1)
    except Exception:   # best effort: the closed socket still ends the worker
        pass


if __name__ == "__main__":
    _die_with_parent()
    serve(Connection(int(sys.argv[1])))
