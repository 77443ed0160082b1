"""svdd.distributed on a local Ray cluster (slow: starting Ray takes ~10 s): the same samples as
the local backend for the same seed, and reward actors that raise, die or hang are retried so
the run completes."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest
import torch

import svdd
from svdd.distributed import DomainProcessFactory, DomainRewardFactory, RewardPool, run_sharded

pytestmark = pytest.mark.slow
ray = pytest.importorskip("ray")

GAUSS = DomainProcessFactory("toy-gaussian")
LINEAR = DomainRewardFactory("toy-gaussian", "linear")


@pytest.fixture(scope="module")
def cluster():
    import ray.cloudpickle

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])   # actors need not import this file
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    if started:
        ray.shutdown()


class FailingOnceReward:
    """r(x) = x: the first call in the cluster raises, the second kills its actor, the third hangs."""

    name = "linear-failing"

    def __init__(self, marker_dir: str):
        self.marker = Path(marker_dir)

    def __call__(self, x):
        for step in ("raised", "died", "hung"):
            try:  # atomic across actors: exactly one caller claims each step
                os.close(os.open(self.marker / step, os.O_CREAT | os.O_EXCL))
            except FileExistsError:
                continue
            else:
                if step == "raised":
                    raise RuntimeError("injected reward failure")
                if step == "died":
                    os._exit(3)
                time.sleep(120)
        return x.flatten(1).sum(1)


def test_ray_backend_gives_the_same_samples_as_local(cluster):
    kwargs = dict(num_samples=9, shard_size=4, seed=11, num_steps=10, num_candidates=3, alpha=0.5)
    local = run_sharded("svdd-pm", GAUSS, LINEAR, **kwargs)
    remote = run_sharded("svdd-pm", GAUSS, LINEAR, backend="ray", num_workers=2, **kwargs)
    assert torch.equal(local.x0, remote.x0) and torch.equal(local.rewards, remote.rewards)
    assert remote.info["backend"] == "ray" and remote.info["completed"] == 3 and remote.info["failures"] == 0
    assert all(s["worker_pid"] != os.getpid() for s in remote.info["shards"])


def test_ray_reward_actor_failures_are_retried_and_the_run_completes(cluster, tmp_path):
    process = GAUSS()
    kwargs = dict(num_samples=6, num_steps=10, num_candidates=3, alpha=0.5)
    direct = svdd.sample(process, LINEAR(), method="svdd-pm", generator=torch.Generator().manual_seed(0), **kwargs)
    with RewardPool(lambda: FailingOnceReward(str(tmp_path)), 2, backend="ray", timeout_s=6.0, max_retries=2) as pool:
        pooled = svdd.sample(process, pool, method="svdd-pm", generator=torch.Generator().manual_seed(0), **kwargs)
        c = pool.counters()
    assert torch.equal(direct.x0, pooled.x0) and torch.allclose(direct.rewards, pooled.rewards)
    assert c["task_errors"] == 1 and c["worker_deaths"] == 1 and c["timeouts"] == 1
    assert c["failures"] == 0 and c["retries"] == 3 and c["worker_restarts"] == 2
