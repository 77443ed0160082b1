"""Entry point of a ``process``-backend worker: ``python -m svdd.distributed.worker FD``, where
FD is the worker's end of a socket pair opened by ``svdd.distributed.pool.ProcessBackend``."""

from __future__ import annotations

import sys
from multiprocessing.connection import Connection

from .pool import serve

if __name__ == "__main__":
    serve(Connection(int(sys.argv[1])))
