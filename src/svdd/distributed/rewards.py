"""Reward parallelism: a pool of reward workers behind one batch callable ``reward_fn(x0) -> (B,)``.

Each worker calls ``reward_factory()`` once (a docking worker computes its receptor's affinity
maps once) and then scores chunks of samples. A call on a batch

1. looks every row up in the shared cache (keyed by ``key_fn(row)``, by default the row's
   bytes, so identical token sequences are scored once per pool, across calls and workers),
2. splits the distinct missing rows into chunks of ``chunk_size`` and feeds them to the
   workers as they free up,
3. retries a chunk whose worker raised, died or ran past ``timeout_s`` (at most
   ``max_retries`` times; a failed chunk of several rows is retried row by row, so one
   poisonous sample fails alone), and
4. returns NaN for rows that failed every attempt — the library maps NaN to the reward's
   ``invalid_value`` and counts it — so a run always completes.

The pool is a plain reward (``name``, ``invalid_value``, ``differentiable = False``), so any
algorithm takes it as ``reward_fn``; ``counters()`` reports calls, cache hits, retries,
failures and timeouts.
"""

from __future__ import annotations

import math
import os
from typing import Callable, Hashable, MutableMapping, Optional

import torch
from torch import Tensor

from ..rewards.base import RewardError
from .pool import (DistributedError, PoolCounters, Task, _take_counts, check_backend, check_retry_args, make_backend,
                   run_tasks)


class RewardPoolError(DistributedError, RewardError):
    """The pool cannot score any more (no worker can be started, or it was closed). A
    ``RewardError``, so the library's safe evaluation stops the run with this one line instead of
    scoring every later sample invalid; the finished shards are kept for ``--resume``."""


def row_key(row: Tensor) -> Hashable:
    """Default cache key: dtype, shape and raw bytes of one sample (exact match)."""
    row = row.detach().cpu().contiguous()
    return (str(row.dtype), tuple(row.shape), row.numpy().tobytes())


class RewardWorker:
    """Handler of one worker: builds the reward once, scores chunks."""

    def __init__(self, reward_factory: Callable):
        self.reward = reward_factory()
        if not callable(self.reward):
            raise DistributedError(f"reward_factory() must return a callable reward, got {type(self.reward).__name__}")

    def meta(self) -> dict:
        iv = getattr(self.reward, "invalid_value", None)
        name = getattr(self.reward, "name", None) or getattr(self.reward, "__name__", None) or type(self.reward).__name__
        return {"name": name,
                "invalid_value": None if iv is None else float(iv), "pid": os.getpid()}

    def __call__(self, x: Tensor) -> Tensor:
        with torch.no_grad():
            out = torch.as_tensor(self.reward(x)).detach().reshape(-1).cpu()
        if out.shape[0] != x.shape[0]:
            raise DistributedError(f"reward returned {out.shape[0]} values for {x.shape[0]} samples")
        return out.to(torch.float32) if not out.is_floating_point() else out.float()

    def close(self) -> None:
        close = getattr(self.reward, "close", None)
        if callable(close):
            close()


class RewardPool:
    """``reward_fn`` that fans samples out to ``num_workers`` reward workers.

    ``backend``: ``"local"`` (in this process: cache and retries only), ``"process"`` (worker
    processes; needs a picklable ``reward_factory``) or ``"ray"`` (Ray actors; ``ray_address``
    joins a running cluster, otherwise a local one is started; ``worker_options`` go to
    ``actor.options``, e.g. ``{"num_cpus": 1}``). ``timeout_s`` applies per task (one chunk; set
    ``chunk_size=1`` for a per-sample limit). ``cache``: ``True`` (a dict held here, shared by
    all workers), ``False``/``None``, or any mutable mapping (e.g. one shared by several pools).
    Use as a context manager, or call ``close()``, to stop the workers.
    """

    differentiable = False

    def __init__(self, reward_factory: Callable, num_workers: Optional[int] = None, *, backend: str = "process",
                 timeout_s: Optional[float] = None, max_retries: int = 2,
                 cache: bool | MutableMapping | None = True, key_fn: Optional[Callable[[Tensor], Hashable]] = None,
                 chunk_size: Optional[int] = None, ray_address: Optional[str] = None,
                 worker_options: Optional[dict] = None,
                 threads_per_worker: Optional[int] = None, name: Optional[str] = None,
                 invalid_value: Optional[float] = None):
        check_backend(backend)
        if chunk_size is not None and (not isinstance(chunk_size, int) or chunk_size < 1):
            raise DistributedError(f"chunk_size must be an integer >= 1, got {chunk_size!r}")
        check_retry_args(max_retries, timeout_s)
        self.backend_name = backend
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.chunk_size = chunk_size
        self.key_fn = key_fn or row_key
        self.cache: Optional[MutableMapping] = {} if cache is True else (cache or None)
        self.stats = PoolCounters()
        self.calls = 0          # samples scored by workers (cache misses)
        self.requested = 0      # samples asked for
        self.cache_hits = 0
        self.failed_samples = 0
        self.last_errors: list[str] = []
        self._backend = make_backend(backend, RewardWorker, (reward_factory,), num_workers=num_workers,
                                     ray_address=ray_address, worker_options=worker_options,
                                     threads_per_worker=threads_per_worker)
        self.num_workers = self._backend.num_workers
        meta = self._backend.meta or {}
        self.name = name or meta.get("name") or "reward_pool"
        iv = invalid_value if invalid_value is not None else meta.get("invalid_value")
        if iv is not None:
            self.invalid_value = float(iv)

    # -- evaluation ---------------------------------------------------------------------------
    def __call__(self, x0: Tensor) -> Tensor:
        if self._backend is None:
            raise RewardPoolError("this RewardPool is closed; build a new one")
        n = len(x0)
        self.requested += n
        out = torch.full((n,), float("nan"), dtype=torch.float32)
        keys = [self.key_fn(x0[i]) for i in range(n)] if self.cache is not None else list(range(n))
        rows_of: dict = {}
        for i, k in enumerate(keys):
            if self.cache is not None and k in self.cache:
                out[i] = self.cache[k]
                self.cache_hits += 1
            else:
                rows_of.setdefault(k, []).append(i)
        if self.cache is not None:
            self.cache_hits += sum(len(rows) - 1 for rows in rows_of.values())  # duplicates within the batch
        todo = [rows[0] for rows in rows_of.values()]
        if todo:
            x_cpu = x0.detach().cpu()
            size = self.chunk_size or max(1, math.ceil(len(todo) / (4 * self.num_workers)))
            tasks = [Task(todo[s:s + size], x_cpu[todo[s:s + size]]) for s in range(0, len(todo), size)]
            values: dict[int, float] = {}

            def on_result(task: Task, scores: Tensor) -> None:
                for row, v in zip(task.key, scores.tolist()):
                    values[row] = v

            def on_failure(task: Task) -> None:
                self.failed_samples += len(task.key)
                self.last_errors = (self.last_errors + task.errors[-1:])[-5:]

            def split(task: Task) -> list[Task]:
                if len(task.key) == 1:
                    return [task]
                return [Task([r], x_cpu[[r]], attempts=task.attempts, errors=list(task.errors)) for r in task.key]

            try:
                run_tasks(self._backend, tasks, counters=self.stats, on_result=on_result, on_failure=on_failure,
                          timeout_s=self.timeout_s, max_retries=self.max_retries, split=split)
            except RewardPoolError:
                raise
            except DistributedError as err:   # no worker left: stop the run, do not score the rest invalid
                raise RewardPoolError(f"reward pool {self.name!r}: {err}") from None
            self.calls += len(values)
            for k, rows in rows_of.items():
                v = values.get(rows[0])
                if v is None:
                    continue
                out[rows] = v
                if self.cache is not None:   # failures are not cached: a later call may succeed
                    self.cache[k] = v
        return out.to(x0.device) if isinstance(x0, Tensor) else out

    def counters(self) -> dict:
        """Samples requested / scored / served from cache, and the pool's task counters (worker
        deaths and restarts included, also those while the pool was starting or idle)."""
        if self._backend is not None:
            _take_counts(self._backend, self.stats)
        return {"requested": self.requested, "calls": self.calls, "cache_hits": self.cache_hits,
                "failed_samples": self.failed_samples, "num_workers": self.num_workers,
                "backend": self.backend_name, **self.stats.as_dict()}

    # -- life cycle ---------------------------------------------------------------------------
    def close(self) -> None:
        if self._backend is not None:
            self._backend.close()
            self._backend = None

    def __enter__(self) -> "RewardPool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    def __repr__(self) -> str:
        return f"RewardPool({self.name!r}, backend={self.backend_name!r}, num_workers={self.num_workers})"
