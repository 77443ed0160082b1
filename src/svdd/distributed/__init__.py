"""Scale-out: samples over workers (``run_sharded``) and rewards over workers (``RewardPool``).

SVDD's samples never interact, so ``num_samples`` splits into shards that run anywhere: shard
``i`` has its own generator seeded ``seed · 1_000_003 + i`` (as ``svdd sample --batch-size``),
so the union is the same on one process, a process pool or a Ray cluster. Expensive black-box
rewards (docking) spread over CPU workers that each build the reward once. Both run on one
scheduler with per-task timeouts, bounded retries and counters (``pool.run_tasks``).

    from svdd.distributed import run_sharded, RewardPool
    result = run_sharded("svdd-pm", make_process, make_reward, num_samples=256, shard_size=32,
                         seed=0, backend="ray", num_steps=32, num_candidates=8)
    with RewardPool(make_docking_reward, num_workers=8, backend="process", timeout_s=120) as pool:
        result = svdd.sample(process, pool, method="svdd-pm", ...)

Backends: ``local`` (in-process, the default), ``process`` (``multiprocessing``), ``ray``
(``pip install 'svdd[distributed]'``).
"""

from .factories import DomainProcessFactory, DomainRewardFactory, ValueFactory
from .pool import BACKENDS, DistributedError, PoolCounters, TaskFailure, ensure_ray, import_ray
from .rewards import RewardPool, RewardPoolError, row_key
from .shards import BASELINE_SEED_OFFSET, COUPLED, run_sharded, shard_plan, shard_seed

__all__ = ["run_sharded", "RewardPool", "RewardPoolError", "DistributedError", "TaskFailure", "PoolCounters", "BACKENDS",
           "shard_plan", "shard_seed", "BASELINE_SEED_OFFSET", "COUPLED", "DomainProcessFactory",
           "DomainRewardFactory", "ValueFactory", "import_ray", "ensure_ray", "row_key"]
