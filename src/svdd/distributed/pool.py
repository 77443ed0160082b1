"""Worker pools and a fault-tolerant task scheduler shared by ``run_sharded`` and ``RewardPool``.

A pool holds ``num_workers`` long-lived workers. Each worker builds one *handler* when it
starts (``init_fn(*init_args)``: a diffusion process and a reward, or a docking receptor's
affinity maps) and then answers tasks ``handler(payload) -> value`` one at a time, so the
expensive set-up is paid once per worker, not once per task.

Backends:

- ``local``: one handler in this process; tasks run inline, in order. Exceptions are retried;
  timeouts cannot be enforced (nothing can pre-empt the caller's own thread).
- ``process``: fresh Python worker processes (``python -m svdd.distributed.worker``) on sockets;
  a worker that exceeds ``timeout_s`` is killed and replaced, one that dies is replaced — while
  it is starting, idle or busy (a slot whose worker dies ``max_start_failures`` times in a row
  before it is ready is retired).
- ``ray``: one Ray actor per worker (``pip install 'svdd[distributed]'``), on a local cluster or
  the one at ``ray_address``; a timed-out actor is killed and replaced, a dead one replaced.

``run_tasks`` feeds tasks to idle workers as they free up (dynamic load balancing), gives each
task at most ``1 + max_retries`` attempts (an attempt fails when the handler raises, the worker
dies, or ``timeout_s`` passes), optionally splits a failed multi-item task into smaller ones
before retrying it (so one poisonous item fails alone), and counts what happened. The backend
replaces dead workers itself and reports the deaths and restarts (``take_counts``), whenever they
happened (even while the pool was being built), so ``worker_deaths`` counts every worker that died.

Only our own child processes are ever unpickled from (the IPC pipe to a worker we started);
nothing read back from disk is.
"""

from __future__ import annotations

import os
import pickle
import time
import traceback
import weakref
from collections import deque
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Optional

from ..algorithms.registry import AlgorithmError

BACKENDS = ("local", "process", "ray")
INSTALL_HINT = "pip install 'svdd[distributed]'"
RESUME_HINT = "the finished shards are kept: rerun with --resume (resume=True) to continue"


class DistributedError(AlgorithmError):
    """A user-facing scale-out error (bad backend, missing Ray, tasks that kept failing)."""


class TaskFailure(DistributedError):
    """Raised when tasks failed on every attempt; ``finished`` holds what did complete."""

    def __init__(self, message: str, finished: Optional[dict] = None, failed: Optional[dict] = None):
        super().__init__(message)
        self.finished = finished or {}
        self.failed = failed or {}


@dataclass
class PoolCounters:
    tasks: int = 0            # attempts handed to workers
    completed: int = 0        # tasks that returned a value
    retries: int = 0          # attempts repeated after a failure
    failures: int = 0         # tasks given up after 1 + max_retries attempts
    timeouts: int = 0         # attempts that ran past timeout_s (worker killed)
    worker_deaths: int = 0    # workers that died (starting, idle or busy)
    task_errors: int = 0      # attempts whose handler raised
    worker_restarts: int = 0  # workers replaced (after a death or a timeout)
    busy_s: float = 0.0       # summed wall time of finished attempts

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class Task:
    key: Any                  # the caller's identifier (shard index, list of rows, ...)
    payload: Any
    attempts: int = 0
    errors: list = field(default_factory=list)


def import_ray():
    """``import ray`` or a one-line error naming the extra to install."""
    try:
        import ray  # noqa: F401
    except ImportError:
        raise DistributedError(f"backend='ray' needs Ray, which is not installed; run {INSTALL_HINT}") from None
    return ray


def ensure_ray(address: Optional[str] = None, num_cpus: Optional[int] = None):
    """Connect to the cluster at ``address`` or start a local one (once per process)."""
    ray = import_ray()
    if not ray.is_initialized():
        kwargs = dict(include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
        if address:
            ray.init(address=address, **kwargs)
        else:
            ray.init(num_cpus=num_cpus, **kwargs)
    return ray


def check_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise DistributedError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    return backend


def check_retry_args(max_retries, timeout_s) -> None:
    if not isinstance(max_retries, int) or isinstance(max_retries, bool) or max_retries < 0:
        raise DistributedError(f"max_retries must be an integer >= 0, got {max_retries!r}")
    if timeout_s is not None and not (isinstance(timeout_s, (int, float)) and timeout_s > 0):
        raise DistributedError(f"timeout_s must be a number of seconds > 0, got {timeout_s!r}")


def _one_line(err: BaseException) -> str:
    import re

    text = f"{type(err).__name__}: {err}".strip().replace("\n", " ")
    return re.sub(r"\x1b\[[0-9;]*m", "", text)[:400]   # no terminal colours (Ray's messages carry them)


def _dumps(obj) -> bytes:
    """Pickle with cloudpickle when available (lambdas, closures), else the standard pickle."""
    try:
        import cloudpickle

        return cloudpickle.dumps(obj)
    except ImportError:
        return pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)


# ------------------------------------------------------------------------------------------------
# local
class LocalBackend:
    """One handler in this process; ``wait`` runs the submitted task inline."""

    name = "local"

    def __init__(self, init_fn: Callable, init_args: tuple = ()):
        self.handler = init_fn(*init_args)
        self.meta = self.handler.meta() if hasattr(self.handler, "meta") else {}
        self.num_workers = 1
        self._pending: dict[int, Any] = {}

    def starting(self) -> list[int]:
        return []

    def ready_workers(self) -> list[int]:
        return [0]

    def submit(self, worker: int, payload) -> None:
        self._pending[worker] = payload

    def wait(self, timeout: Optional[float]) -> list[tuple]:
        events = []
        for worker, payload in list(self._pending.items()):
            del self._pending[worker]
            try:
                events.append(("ok", worker, self.handler(payload)))
            except Exception as err:
                events.append(("error", worker, _one_line(err)))
        return events

    def restart(self, worker: int) -> None:  # nothing can die here
        pass

    def take_counts(self) -> dict:
        return {"worker_deaths": 0, "worker_restarts": 0}

    def close(self) -> None:
        # the factories may have returned the caller's own objects (a RewardPool, a loaded
        # process): leave them open; what was built here is freed with the handler
        self.handler = None


# ------------------------------------------------------------------------------------------------
# process
def serve(conn) -> None:
    """Worker side (``python -m svdd.distributed.worker FD``): read the parent's ``sys.path``,
    thread count and environment, build the handler once, then answer ``payload -> value``
    until told to stop or the parent goes away. (The pickles come from the parent that started
    this process, over a socket pair only the two of them hold.)"""
    import sys

    sys_path, threads, env = pickle.loads(conn.recv_bytes())
    sys.path[:] = list(dict.fromkeys([*sys_path, *sys.path]))   # factories pickled by reference
    os.environ.update(env or {})   # before any CUDA initialisation (CUDA_VISIBLE_DEVICES)
    import torch

    if threads:
        torch.set_num_threads(threads)
    try:
        init_fn, init_args = pickle.loads(conn.recv_bytes())
        handler = init_fn(*init_args)
        meta = handler.meta() if hasattr(handler, "meta") else {}
    except BaseException as err:  # noqa: BLE001 - reported to the parent, then exit
        conn.send_bytes(pickle.dumps(("init_error", _one_line(err) + "\n" + traceback.format_exc(limit=3))))
        return
    conn.send_bytes(pickle.dumps(("ready", meta)))
    while True:
        try:
            payload = pickle.loads(conn.recv_bytes())
        except (EOFError, OSError):
            break
        if payload is None:
            break
        try:
            reply = ("ok", handler(payload))
        except Exception as err:  # noqa: BLE001 - the parent decides whether to retry
            reply = ("error", _one_line(err))
        conn.send_bytes(pickle.dumps(reply, protocol=pickle.HIGHEST_PROTOCOL))
    close = getattr(handler, "close", None)
    if callable(close):
        close()


def _kill_all(procs: list) -> None:
    for proc in procs:
        if proc is not None and proc.poll() is None:
            proc.kill()
    for proc in procs:
        if proc is not None:
            try:
                proc.wait(5)
            except Exception:
                pass


class _WorkerStates:
    """Worker bookkeeping shared by the multi-worker backends (``state[w]`` per worker:
    ``down | starting | ready | busy | retired``) and the death / restart tallies that
    ``run_tasks`` collects with ``take_counts``."""

    num_workers: int
    state: list
    max_start_failures: int = 5

    def _init_states(self) -> None:
        self.state = ["down"] * self.num_workers
        self.start_failures = [0] * self.num_workers   # deaths in a row before the slot got ready
        self._deaths = 0
        self._restarts = 0
        self.last_failure = ""

    def starting(self) -> list[int]:
        return [w for w in range(self.num_workers) if self.state[w] == "starting"]

    def ready_workers(self) -> list[int]:
        return [w for w in range(self.num_workers) if self.state[w] == "ready"]

    def retired(self) -> list[int]:
        return [w for w in range(self.num_workers) if self.state[w] == "retired"]

    def take_counts(self) -> dict:
        """Worker deaths and restarts since the last call (``run_tasks`` adds them to its counters)."""
        out = {"worker_deaths": self._deaths, "worker_restarts": self._restarts}
        self._deaths = self._restarts = 0
        return out

    def _replace_dead(self, w: int, why: str) -> None:
        """Count the death of worker ``w`` and start a new one in its slot — unless the slot's
        workers died ``max_start_failures`` times in a row before ever getting ready, then the
        slot is retired (a factory that crashes its interpreter would otherwise loop forever)."""
        self._deaths += 1
        self.last_failure = why
        if self.state[w] == "starting":
            self.start_failures[w] += 1
        self._stop(w)
        if self.start_failures[w] >= self.max_start_failures:
            self.state[w] = "retired"
            self.last_failure = f"{why}; {self.start_failures[w]} workers in a row died while starting"
            return
        self._start(w)
        self._restarts += 1

    def restart(self, worker: int) -> None:
        """Kill worker ``worker`` (it timed out) and start a new one in its slot."""
        self._stop(worker)
        self._start(worker)
        self._restarts += 1


class ProcessBackend(_WorkerStates):
    """``num_workers`` fresh Python processes (``python -m svdd.distributed.worker``), each with
    its own handler, talking over a socket pair. Fresh interpreters need no ``__main__`` guard in
    the user's script and inherit no threads; a worker past its timeout is killed and replaced,
    and a worker that dies — while it starts, while idle or while busy — is replaced and counted."""

    name = "process"

    def __init__(self, init_fn: Callable, init_args: tuple = (), *, num_workers: int = 2,
                 threads_per_worker: Optional[int] = None, worker_env: Optional[list[dict]] = None,
                 startup_timeout_s: float = 300.0, max_start_failures: int = 5):
        import sys

        self.blob = _dumps((init_fn, init_args))
        self.sys_path = [p for p in sys.path if p]
        self.num_workers = int(num_workers)
        self.threads = threads_per_worker or max(1, (os.cpu_count() or 1) // self.num_workers)
        self.worker_env = worker_env or [{}]
        self.startup_timeout_s = float(startup_timeout_s)
        self.max_start_failures = int(max_start_failures)
        self.procs: list = [None] * self.num_workers
        self.conns: list = [None] * self.num_workers
        self.started_at: list[float] = [0.0] * self.num_workers
        self._init_states()
        self.ever_ready = False
        self._events: list[tuple] = []     # deaths of busy workers found outside wait()
        self._meta: dict = {}
        self._finalizer = weakref.finalize(self, _kill_all, self.procs)
        for w in range(self.num_workers):
            self._start(w)
        self.meta = self._wait_first_ready()

    def _start(self, w: int) -> None:
        import socket
        import subprocess
        import sys
        from multiprocessing.connection import Connection

        parent, child = socket.socketpair()
        fd = child.fileno()
        env = self.worker_env[w % len(self.worker_env)]
        # not a daemon: handlers may start their own processes (e.g. docking workers)
        proc = subprocess.Popen([sys.executable, "-m", "svdd.distributed.worker", str(fd)], pass_fds=(fd,),
                                stdin=subprocess.DEVNULL, env={**os.environ, "PYTHONPATH": os.pathsep.join(self.sys_path)})
        child.close()
        conn = Connection(parent.detach())
        self.procs[w], self.conns[w], self.state[w] = proc, conn, "starting"
        self.started_at[w] = time.monotonic()
        try:
            conn.send_bytes(pickle.dumps((self.sys_path, self.threads, env)))
            conn.send_bytes(self.blob)
        except OSError:
            pass   # it died at once: wait() sees the closed socket

    def _stop(self, w: int) -> None:
        _kill_all([self.procs[w]])
        try:
            if self.conns[w] is not None:
                self.conns[w].close()
        except Exception:
            pass
        self.state[w] = "down"

    def _wait_first_ready(self) -> dict:
        deadline = time.monotonic() + self.startup_timeout_s
        while not self.ready_workers():
            left = deadline - time.monotonic()
            if left <= 0:
                self.close()
                raise DistributedError(f"no worker started within {self.startup_timeout_s:.0f} s; "
                                       "check that the factories import and run in a fresh Python process")
            if len(self.retired()) == self.num_workers:
                self.close()
                raise DistributedError(f"every worker died while starting ({self.last_failure}); check that the "
                                       "factories import and run in a fresh Python process")
            self.wait(min(left, 1.0))   # deaths while starting are replaced inside wait()
        return self._meta

    def _exit_code(self, w: int) -> Optional[int]:
        try:
            return self.procs[w].wait(5)
        except Exception:
            return None

    def _died(self, w: int, why: str) -> Optional[tuple]:
        """Handle the death of worker ``w``: an event for ``run_tasks`` if it was busy."""
        was_busy = self.state[w] == "busy"
        self._replace_dead(w, why)
        return ("died", w, why) if was_busy else None

    def _reap(self) -> None:
        """Find workers that exited (even idle ones, which send nothing) and workers past the
        start-up limit, and replace them."""
        now = time.monotonic()
        for w in range(self.num_workers):
            if self.state[w] not in ("starting", "ready", "busy"):
                continue
            code = self.procs[w].poll()
            if code is not None:
                event = self._died(w, f"worker process exited with code {code} while {self.state[w]}")
            elif self.state[w] == "starting" and now - self.started_at[w] > self.startup_timeout_s:
                event = self._died(w, f"worker did not start within {self.startup_timeout_s:.0f} s")
            else:
                continue
            if event is not None:
                self._events.append(event)

    def ready_workers(self) -> list[int]:
        self._reap()
        return super().ready_workers()

    def submit(self, worker: int, payload) -> None:
        self.state[worker] = "busy"
        try:
            self.conns[worker].send_bytes(pickle.dumps(payload, protocol=pickle.HIGHEST_PROTOCOL))
        except OSError:
            pass  # the death shows up in wait()

    def wait(self, timeout: Optional[float]) -> list[tuple]:
        from multiprocessing.connection import wait as mp_wait

        self._reap()
        events, self._events = self._events, []
        # ready workers are watched too: an idle worker sends nothing, so a readable socket means it died
        watched = {self.conns[w]: w for w in range(self.num_workers) if self.state[w] in ("starting", "ready", "busy")}
        if not watched:
            return events
        if events:
            timeout = 0   # report what is known now; do not block
        if timeout is not None and self.starting():   # wake up for a start-up that runs past its limit
            timeout = min(timeout, max(0.0, min(self.started_at[w] for w in self.starting()) + self.startup_timeout_s
                                       - time.monotonic()) + 0.05)
        for conn in mp_wait(list(watched), timeout):
            w = watched[conn]
            state = self.state[w]
            try:
                message = pickle.loads(conn.recv_bytes())
            except (EOFError, OSError):   # the socket closed: the worker is gone
                event = self._died(w, f"worker process exited with code {self._exit_code(w)} while {state}")
                if event is not None:
                    events.append(event)
                continue
            kind = message[0]
            if kind == "init_error":
                reason = f"a worker could not build its handler: {message[1].splitlines()[0]}"
                if not self.ever_ready:   # the first start: a real error in the factories, say it now
                    self.close()
                    raise DistributedError(reason)
                self.start_failures[w] += 1   # a replacement failed: retry the slot, within bounds
                self._stop(w)
                self.last_failure = reason
                if self.start_failures[w] >= self.max_start_failures:
                    self.state[w] = "retired"
                else:
                    self._start(w)
                    self._restarts += 1
                continue
            if state not in ("starting", "busy"):
                continue   # nothing else is expected from an idle worker
            self.state[w] = "ready"
            if kind == "ready":
                self.ever_ready = True
                self.start_failures[w] = 0
                self._meta = message[1]
                events.append(("ready", w, None))
            else:
                events.append((kind, w, message[1]))
        return events

    def close(self) -> None:
        for w, conn in enumerate(self.conns):
            if conn is not None and self.state[w] == "ready":
                try:
                    conn.send_bytes(pickle.dumps(None))
                except Exception:
                    pass
        deadline = time.monotonic() + 2.0
        for proc in self.procs:
            if proc is not None:
                try:
                    proc.wait(max(0.0, deadline - time.monotonic()))
                except Exception:
                    pass
        _kill_all(self.procs)
        for w, conn in enumerate(self.conns):
            if conn is not None:
                try:
                    conn.close()
                except Exception:
                    pass
            self.state[w] = "down"


# ------------------------------------------------------------------------------------------------
# ray
class _ActorBody:
    """The Ray actor: one handler per actor (wrapped with ``ray.remote`` at run time)."""

    def __init__(self, init_fn, init_args, threads):
        if threads:
            import torch

            torch.set_num_threads(threads)
        self.handler = init_fn(*init_args)

    def meta(self):
        return self.handler.meta() if hasattr(self.handler, "meta") else {}

    def call(self, payload):
        return self.handler(payload)


class RayBackend(_WorkerStates):
    """One Ray actor per worker; a timed-out actor is killed (``ray.kill``) and replaced by a new
    one, which takes tasks once its handler is built."""

    name = "ray"

    def __init__(self, init_fn: Callable, init_args: tuple = (), *, num_workers: Optional[int] = None,
                 ray_address: Optional[str] = None, worker_options: Optional[dict] = None,
                 threads_per_worker: Optional[int] = None, max_workers: Optional[int] = None,
                 startup_timeout_s: float = 300.0):
        self.ray = ensure_ray(ray_address, num_cpus=None if ray_address else max(os.cpu_count() or 1, num_workers or 1))
        self.options = {"num_cpus": 1, "max_restarts": 0, **(worker_options or {})}
        if num_workers is None:   # as many as the cluster has room for (one CPU, or one GPU, each)
            resources = self.ray.cluster_resources()
            per = self.options.get("num_gpus") or self.options.get("num_cpus") or 1
            num_workers = max(1, int(resources.get("GPU" if self.options.get("num_gpus") else "CPU", 1) // per))
            num_workers = min(num_workers, max_workers or num_workers)
        self.num_workers = int(num_workers)
        total = self.ray.cluster_resources()
        for res, key in (("CPU", "num_cpus"), ("GPU", "num_gpus")):
            need = float(self.options.get(key) or 0) * self.num_workers
            if need > total.get(res, 0.0) + 1e-9:
                raise DistributedError(f"{self.num_workers} Ray workers need {need:g} {res} but the cluster has "
                                       f"{total.get(res, 0.0):g}; lower num_workers or worker_options[{key!r}]")
        self.threads = threads_per_worker or max(1, int(self.options.get("num_cpus", 1)))
        self.remote_cls = self.ray.remote(_ActorBody)
        self.init = (init_fn, init_args)
        self.actors: list = [None] * self.num_workers
        self.refs: dict[int, Any] = {}
        self._init_states()
        for w in range(self.num_workers):
            self._start(w)
        self.meta = self._wait_all_ready(startup_timeout_s)

    def _died_types(self) -> tuple:
        exc = self.ray.exceptions
        return tuple(t for t in (getattr(exc, "RayActorError", None), getattr(exc, "ActorDiedError", None),
                                 getattr(exc, "WorkerCrashedError", None), getattr(exc, "ActorUnavailableError", None),
                                 getattr(exc, "NodeDiedError", None)) if t is not None)

    def _wait_all_ready(self, startup_timeout_s: float) -> dict:
        """Wait until every actor has built its handler; an actor that dies while starting is
        replaced (at most ``max_start_failures`` times in a row per slot) and counted."""
        deadline = time.monotonic() + startup_timeout_s
        died_types = self._died_types()
        metas: dict[int, Any] = {}
        while self.starting():
            pending = {w: self.refs[w] for w in self.starting()}
            left = deadline - time.monotonic()
            ready, _ = self.ray.wait(list(pending.values()), num_returns=len(pending), timeout=max(0.0, left))
            if len(ready) < len(pending) and time.monotonic() >= deadline:
                self.close()
                raise DistributedError(f"{len(pending) - len(ready)} of {self.num_workers} Ray workers did not start "
                                       f"within {startup_timeout_s:g} s; the cluster may be busy (other pools hold its "
                                       "resources): close them, or lower num_workers")
            for w, ref in pending.items():
                if ref not in ready:
                    continue
                del self.refs[w]
                try:
                    metas[w] = self.ray.get(ref)
                    self.state[w] = "ready"
                    self.start_failures[w] = 0
                except died_types as err:
                    text = _one_line(_ray_cause(err))
                    if "creation task" in text:   # its constructor raised: a real error in the factories
                        self.close()
                        raise DistributedError(f"a Ray worker could not build its handler: {text[:300]}") from None
                    self._replace_dead(w, text[:200])   # killed while starting: replace it
                except Exception as err:
                    self.close()
                    raise DistributedError(f"a Ray worker could not build its handler: "
                                           f"{_one_line(_ray_cause(err))}") from None
            if len(self.retired()) == self.num_workers:
                self.close()
                raise DistributedError(f"every Ray worker died while starting ({self.last_failure})")
        return metas[min(metas)] if metas else {}

    def _start(self, w: int) -> None:
        self.actors[w] = self.remote_cls.options(**self.options).remote(self.init[0], self.init[1], self.threads)
        self.state[w] = "starting"   # until its meta() answers: a task's timeout never covers start-up
        self.refs[w] = self.actors[w].meta.remote()

    def submit(self, worker: int, payload) -> None:
        self.state[worker] = "busy"
        self.refs[worker] = self.actors[worker].call.remote(payload)

    def wait(self, timeout: Optional[float]) -> list[tuple]:
        if not self.refs:
            return []
        by_ref = {ref: w for w, ref in self.refs.items()}
        done, _ = self.ray.wait(list(by_ref), num_returns=1, timeout=timeout)
        if done:  # collect everything else already finished too
            more, _ = self.ray.wait(list(by_ref), num_returns=len(by_ref), timeout=0)
            done = list(dict.fromkeys([*done, *more]))
        events = []
        died_types = self._died_types()
        for ref in done:
            w = by_ref[ref]
            del self.refs[w]
            was_starting = self.state[w] == "starting"
            try:
                value = self.ray.get(ref)
            except died_types as err:   # replaced here (bounded while starting), counted
                why = _one_line(err)[:200]
                was_busy = self.state[w] == "busy"
                self._replace_dead(w, why)
                if was_busy:
                    events.append(("died", w, why))
                continue
            except Exception as err:  # RayTaskError: the handler raised
                if was_starting:
                    raise DistributedError("a restarted Ray worker could not build its handler: "
                                           f"{_one_line(_ray_cause(err))}; {RESUME_HINT}") from None
                self.state[w] = "ready"
                events.append(("error", w, _one_line(_ray_cause(err))))
                continue
            self.state[w] = "ready"
            if was_starting:
                self.start_failures[w] = 0
                events.append(("ready", w, None))
            else:
                events.append(("ok", w, value))
        return events

    def _stop(self, worker: int) -> None:
        self.refs.pop(worker, None)
        try:
            self.ray.kill(self.actors[worker], no_restart=True)
        except Exception:
            pass
        self.state[worker] = "down"

    def close(self) -> None:
        for actor in self.actors:
            if actor is not None:
                try:
                    self.ray.kill(actor, no_restart=True)
                except Exception:
                    pass
        self.actors = [None] * self.num_workers
        self.refs.clear()


def _ray_cause(err: BaseException) -> BaseException:
    cause = getattr(err, "cause", None)
    return cause if isinstance(cause, BaseException) else err


def make_backend(backend: str, init_fn: Callable, init_args: tuple = (), *, num_workers: Optional[int] = None,
                 ray_address: Optional[str] = None, worker_options: Optional[dict] = None,
                 threads_per_worker: Optional[int] = None, worker_env: Optional[list[dict]] = None,
                 max_workers: Optional[int] = None):
    """The pool for ``backend``; ``num_workers=None`` picks the CPU count (process) or the
    cluster's capacity (ray), at most ``max_workers``."""
    check_backend(backend)
    if num_workers is not None and (not isinstance(num_workers, int) or num_workers < 1):
        raise DistributedError(f"num_workers must be an integer >= 1, got {num_workers!r}")
    if backend == "local":
        return LocalBackend(init_fn, init_args)
    if backend == "process":
        default = min(os.cpu_count() or 1, max_workers or os.cpu_count() or 1)
        return ProcessBackend(init_fn, init_args, num_workers=num_workers or default,
                              threads_per_worker=threads_per_worker, worker_env=worker_env)
    return RayBackend(init_fn, init_args, num_workers=num_workers, ray_address=ray_address,
                      worker_options=worker_options, threads_per_worker=threads_per_worker, max_workers=max_workers)


# ------------------------------------------------------------------------------------------------
def _take_counts(backend, counters: PoolCounters) -> None:
    take = getattr(backend, "take_counts", None)
    if take is not None:
        for key, value in take().items():
            setattr(counters, key, getattr(counters, key) + value)


def run_tasks(backend, tasks: list[Task], *, counters: PoolCounters, on_result: Callable[[Task, Any], None],
              on_failure: Callable[[Task], None], timeout_s: Optional[float] = None, max_retries: int = 2,
              split: Optional[Callable[[Task], list[Task]]] = None) -> None:
    """Run every task on ``backend``: hand tasks to idle workers, retry failed attempts (at most
    ``max_retries`` times per task, after ``split`` if given), kill and replace workers that time
    out (the backend itself replaces workers that die, at any moment, and counts them).
    ``on_result(task, value)`` is called as each task finishes, ``on_failure(task)`` for a task
    that failed every attempt; the other tasks always run to the end."""
    check_retry_args(max_retries, timeout_s)
    pending = deque(tasks)
    busy: dict[int, tuple[Task, float]] = {}

    def failed(task: Task, why: str) -> None:
        task.attempts += 1
        task.errors.append(why)
        if task.attempts > max_retries:
            counters.failures += 1
            on_failure(task)
            return
        counters.retries += 1
        parts = split(task) if split is not None else [task]
        for part in reversed(parts):
            pending.appendleft(part)

    try:
        while pending or busy:
            for w in backend.ready_workers():
                if not pending:
                    break
                if w in busy:
                    continue
                task = pending.popleft()
                counters.tasks += 1
                busy[w] = (task, time.monotonic())
                backend.submit(w, task.payload)
            if not busy and not backend.starting():
                if pending and not backend.ready_workers():
                    why = getattr(backend, "last_failure", "") or "every worker is gone"
                    raise DistributedError(f"no worker is available to run the {len(pending)} remaining tasks "
                                           f"({why}); {RESUME_HINT}")
                continue
            wait_for = None
            if timeout_s is not None and busy:
                now = time.monotonic()
                wait_for = max(0.0, min(start + timeout_s for _, start in busy.values()) - now)
            for kind, w, value in backend.wait(wait_for if wait_for is not None else 1.0):
                if kind == "ready" or w not in busy:
                    continue
                task, start = busy.pop(w)
                if kind == "ok":
                    counters.completed += 1
                    counters.busy_s += time.monotonic() - start
                    on_result(task, value)
                elif kind == "error":
                    counters.task_errors += 1
                    failed(task, value)
                else:  # died: the backend has already started its replacement
                    failed(task, value)
            if timeout_s is not None:
                now = time.monotonic()
                for w, (task, start) in list(busy.items()):
                    if now - start > timeout_s:
                        busy.pop(w)
                        counters.timeouts += 1
                        backend.restart(w)
                        failed(task, f"timed out after {timeout_s:g} s")
    finally:
        _take_counts(backend, counters)
