"""Sample parallelism: ``num_samples`` split into shards run on workers, each with a derived seed.

Shard ``i`` (sizes ``[shard_size] * (num_samples // shard_size)`` plus the remainder, exactly
as ``svdd sample --batch-size``) draws ``n_i`` samples with its own ``torch.Generator`` seeded
``seed · 1_000_003 + i + seed_offset``. A shard's samples depend only on (method, options,
seed, i, n_i), never on which worker ran it or in which order, so the union over shards is
identical for every backend and every worker count, and equals the CLI's run with
``--batch-size shard_size`` and the same ``--seed``.

Per-sample algorithms (``ancestral``, ``svdd-pm``, ``svdd-mc``, the searches) are unaffected
by sharding beyond the seed. Algorithms that couple samples run once per shard, so the run is
``num_shards`` independent groups: SMC / DAS resample particles within a shard, SVDD-R
replaces the worst fraction within a shard, and best-of-n's global top-k is the top
``n_i`` of its own shard's ``num_candidates · n_i`` pool. The result's ``info["coupling"]`` says
so (``None`` for per-sample algorithms).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from ..algorithms import get_algorithm
from ..runfolder import Manifest, fingerprint
from ..types import SampleResult
from .pool import (DistributedError, PoolCounters, Task, TaskFailure, check_backend, check_retry_args, make_backend,
                   run_tasks)

SEED_STRIDE = 1_000_003
BASELINE_SEED_OFFSET = 500_009   # the CLI's pretrained-baseline shards
COUNTER_KEYS = ("nfe", "grad_passes", "value_calls", "reward_calls", "reward_invalid", "reward_errors",
                "reward_failed_samples", "reward_cache_hits")

COUPLED = {
    "smc": "particles are resampled within each shard only: {k} independent SMC runs of <= {n} samples",
    "das": "particles are resampled within each shard only: {k} independent DAS runs of <= {n} samples",
    "svdd-r": "the worst-fraction replacement acts within each shard only: {k} independent groups of <= {n}",
    "best-of-n": "the global top-k is taken within each shard: top n_i of num_candidates*n_i pretrained samples, "
                 "{k} independent groups of <= {n}",
}


def _warn(message: str) -> None:
    import sys

    print(f"svdd: {message}", file=sys.stderr)


def shard_plan(num_samples: int, shard_size: int) -> list[int]:
    """Shard sizes: full shards of ``shard_size`` and one remainder (as ``svdd sample``)."""
    sizes = [shard_size] * (num_samples // shard_size)
    if num_samples % shard_size:
        sizes.append(num_samples % shard_size)
    return sizes


def shard_seed(seed: int, index: int, seed_offset: int = 0) -> int:
    return seed * SEED_STRIDE + index + seed_offset


def coupling_note(method: str, method_kwargs: dict, num_shards: int, shard_size: int) -> Optional[str]:
    if method == "best-of-n" and method_kwargs.get("per_group"):
        return None
    text = COUPLED.get(method)
    return None if text is None else text.format(k=num_shards, n=shard_size)


def _jsonable_info(info: dict) -> dict:
    return {k: v for k, v in info.items() if isinstance(v, (int, float, str, bool, list))}


class ShardWorker:
    """Handler of one worker: builds the process, reward (and value) once; runs shards."""

    def __init__(self, process_factory: Callable, reward_factory: Callable, value_factory: Optional[Callable] = None):
        self.process = process_factory()
        self.reward = reward_factory()
        self.value = value_factory() if value_factory is not None else None

    def meta(self) -> dict:
        return {"pid": os.getpid(), "reward": getattr(self.reward, "name", None)}

    def __call__(self, payload: tuple) -> dict:
        method, index, num, seed, kwargs = payload
        spec = get_algorithm(method)
        device = self.process.device if hasattr(self.process, "device") else "cpu"
        generator = torch.Generator(device=device)
        generator.manual_seed(seed)
        if self.value is not None:
            kwargs = {**kwargs, "value_fn": self.value}
        res = spec.fn(self.process, self.reward, **{**spec.defaults, **kwargs, "num_samples": num, "generator": generator})
        return {"index": index, "x0": res.x0.detach().cpu(), "rewards": res.rewards.detach().cpu(),
                "log_weights": None if res.log_weights is None else res.log_weights.detach().cpu(),
                "info": {**_jsonable_info(res.info), "worker_pid": os.getpid()}}

    def close(self) -> None:
        from ..rewards.base import close_quietly

        close_quietly(self.reward, self.process)


def shard_tensors(shard: dict) -> dict:
    """The tensors of a finished shard, as stored in its safetensors file."""
    return {"x0": shard["x0"], "rewards": shard["rewards"], "log_weights": shard.get("log_weights")}


def default_fingerprint(method: str, method_kwargs: dict, seed: int, seed_offset: int, sizes: list[int]) -> str:
    """What makes a shard reusable: the method, its JSON-able options, the seeds and the sizes."""
    options = {k: v for k, v in method_kwargs.items() if isinstance(v, (int, float, str, bool, type(None), list))}
    return fingerprint({"method": method, "options": options, "seed": seed, "seed_offset": seed_offset,
                        "sizes": sizes})


def run_sharded(method: str, process_factory: Callable, reward_factory: Callable, *, num_samples: int,
                shard_size: Optional[int] = None, seed: int = 0, backend: str = "local",
                ray_address: Optional[str] = None, num_workers: Optional[int] = None, max_retries: int = 2,
                timeout_s: Optional[float] = None, seed_offset: int = 0, shard_dir: Optional[str | Path] = None,
                resume: bool = False, value_factory: Optional[Callable] = None,
                worker_options: Optional[dict] = None,
                threads_per_worker: Optional[int] = None, worker_env: Optional[list[dict]] = None,
                on_shard_done: Optional[Callable[[int, dict], None]] = None, shard_fingerprint: Optional[str] = None,
                notify: Optional[Callable[[str], None]] = None, **method_kwargs) -> SampleResult:
    """Run ``method`` on ``num_samples`` samples in shards of ``shard_size`` spread over workers.

    ``process_factory()`` / ``reward_factory()`` (and ``value_factory()`` for svdd-mc) are
    zero-argument callables each worker calls once; with ``backend="process"`` they must be
    picklable (module-level functions, ``functools.partial``, or anything cloudpickle takes).
    ``method_kwargs`` go to the algorithm (``num_steps`` is required). A shard that raises, whose
    worker dies, or that runs past ``timeout_s`` is retried at most ``max_retries`` times;
    finished shards are kept (and written to ``shard_dir`` as they finish, in the CLI's format —
    safetensors files and a checksummed ``manifest.json``, see ``svdd.runfolder`` — when given;
    ``resume=True`` reuses the intact ones already there, recorded under the same
    ``shard_fingerprint``, and recomputes any damaged, partial or mismatched one after a
    one-line ``notify`` message). Returns one ``SampleResult``
    with the shards concatenated in index order; ``info`` sums the counters and adds the pool's
    (retries, failures, timeouts, ...), ``coupling`` and the per-shard infos.
    """
    spec = get_algorithm(method)
    if not isinstance(num_samples, int) or num_samples < 1:
        raise DistributedError(f"num_samples must be a positive integer, got {num_samples!r}")
    shard_size = num_samples if shard_size is None else shard_size
    if not isinstance(shard_size, int) or shard_size < 1:
        raise DistributedError(f"shard_size must be a positive integer, got {shard_size!r}")
    check_backend(backend)
    check_retry_args(max_retries, timeout_s)
    if num_workers is not None and (not isinstance(num_workers, int) or num_workers < 1):
        raise DistributedError(f"num_workers must be an integer >= 1, got {num_workers!r}")
    if "num_steps" not in method_kwargs:
        raise DistributedError("run_sharded needs num_steps=... (passed on to the algorithm)")
    for reserved in ("generator", "callback", "num_samples"):
        if reserved in method_kwargs:
            raise DistributedError(f"do not pass {reserved}= to run_sharded: shards derive their own "
                                   "(seed= sets the generators, num_samples= and shard_size= the sizes)")
    if spec.needs_value and method_kwargs.get("value_fn") is None and value_factory is None:
        raise DistributedError(f"{method} needs a fitted value: pass value_factory=ValueFactory(path) "
                               "(or value_fn= with the local backend)")
    if method_kwargs.get("value_fn") is not None and backend != "local":
        raise DistributedError("pass value_factory= (built once per worker) instead of value_fn= with a "
                               f"{backend!r} backend")
    started = time.perf_counter()
    sizes = shard_plan(num_samples, shard_size)
    seeds = [shard_seed(seed, i, seed_offset) for i in range(len(sizes))]
    kwargs = dict(method_kwargs)
    if backend != "local":
        kwargs.pop("value_fn", None)   # None here; the workers build value_factory()

    finished: dict[int, dict] = {}
    folder = Path(shard_dir) if shard_dir is not None else None
    manifest = None
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
        fp = shard_fingerprint or default_fingerprint(method, kwargs, seed, seed_offset, sizes)
        manifest = Manifest(folder, fp)
        if manifest.records and not resume:
            raise DistributedError(f"{folder} already holds {len(manifest.records)} finished shards; pass resume=True "
                                   "to reuse them or choose an empty shard_dir")
        for i in range(len(sizes)):
            saved = manifest.load_shard(i, sizes[i]) if resume else None
            if saved is not None:
                finished[i] = {"index": i, "log_weights": saved.get("log_weights"), **saved}
        for message in manifest.notices:
            (notify or _warn)(message)
    resumed = sorted(finished)
    todo = [i for i in range(len(sizes)) if i not in finished]

    counters = PoolCounters()
    failed: dict[int, list] = {}
    backend_obj = None
    workers_used = 0
    if todo:
        if num_workers is not None:   # never more workers than shards
            num_workers = min(num_workers, len(todo))
        backend_obj = make_backend(backend, ShardWorker, (process_factory, reward_factory, value_factory),
                                   num_workers=num_workers, ray_address=ray_address, worker_options=worker_options,
                                   threads_per_worker=threads_per_worker, worker_env=worker_env,
                                   max_workers=len(todo))
        workers_used = backend_obj.num_workers

        def on_result(task: Task, shard: dict) -> None:
            i = task.key
            shard["info"]["attempts"] = task.attempts + 1
            finished[i] = shard
            if manifest is not None:
                manifest.save_shard(i, shard_tensors(shard), shard["info"])
            if on_shard_done is not None:
                on_shard_done(i, shard)

        def on_failure(task: Task) -> None:
            failed[task.key] = task.errors

        tasks = [Task(i, (method, i, sizes[i], seeds[i], kwargs)) for i in todo]
        try:
            run_tasks(backend_obj, tasks, counters=counters, on_result=on_result, on_failure=on_failure,
                      timeout_s=timeout_s, max_retries=max_retries)
        finally:
            backend_obj.close()
    if failed:
        first = min(failed)
        where = (f"the {len(finished)} finished shards are saved in {folder}; rerun with --resume (resume=True)"
                 if folder is not None else f"{len(finished)} shards finished (pass shard_dir= to keep them)")
        raise TaskFailure(f"{len(failed)} of {len(sizes)} shards failed after {max_retries + 1} attempts "
                          f"(shard {first}: {failed[first][-1]}); {where}", finished=finished, failed=failed)

    order = range(len(sizes))
    x0 = torch.cat([finished[i]["x0"] for i in order])
    rewards = torch.cat([finished[i]["rewards"] for i in order]).float()
    lws = [finished[i].get("log_weights") for i in order]
    log_weights = torch.cat(lws) if all(lw is not None for lw in lws) else None
    infos = [finished[i]["info"] for i in order]
    info: dict[str, Any] = {key: sum(int(inf.get(key, 0) or 0) for inf in infos) for key in COUNTER_KEYS}
    firsts = [inf["reward_first_error"] for inf in infos if inf.get("reward_first_error")]
    info["reward_first_error"] = firsts[0] if firsts else None
    info["reward_all_failed"] = all(bool(inf.get("reward_all_failed")) for inf in infos)
    info["nfe_per_sample"] = info["nfe"] / num_samples
    info["wall_time_s"] = time.perf_counter() - started
    info["worker_time_s"] = sum(float(inf.get("wall_time_s", 0.0)) for inf in infos)
    info.update(counters.as_dict())
    info.update({"method": method, "backend": backend, "num_workers": workers_used, "num_shards": len(sizes),
                 "shard_size": shard_size, "shard_seeds": seeds, "resumed_shards": resumed,
                 "coupling": coupling_note(method, kwargs, len(sizes), shard_size), "shards": infos})
    return SampleResult(x0, rewards, log_weights, info)
