"""svdd.distributed with the local and process backends: sharding reproduces the CLI's run,
retries recover from failures without changing the samples, the reward pool caches, retries,
isolates poisonous samples and survives dead and hung workers."""

from __future__ import annotations

import functools
import os
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import svdd
from svdd.cli import _run_shards
from svdd.distributed import (BASELINE_SEED_OFFSET, DistributedError, DomainProcessFactory, DomainRewardFactory,
                              RewardPool, TaskFailure, ValueFactory, run_sharded, shard_plan, shard_seed)
from svdd.rewards.base import as_reward

GAUSS = DomainProcessFactory("toy-gaussian")
LINEAR = DomainRewardFactory("toy-gaussian", "linear")
STEPS = 12


# -- picklable helpers (the process backend imports this module in its workers) -------------------
class FlakyPrior:
    """A process whose ``prior`` raises for batches of ``bad_size`` samples (``times`` times,
    counted in a marker folder so the count is shared across processes; ``times=None``: always)."""

    def __init__(self, bad_size: int, marker_dir: Path, times=None):
        self.process = GAUSS()
        self.bad_size, self.marker_dir, self.times = bad_size, Path(marker_dir), times

    def __getattr__(self, name):
        return getattr(self.process, name)

    def prior(self, num_samples, generator=None):
        if num_samples == self.bad_size:
            count = len(list(self.marker_dir.glob("fail_*")))
            if self.times is None or count < self.times:
                (self.marker_dir / f"fail_{count}").touch()
                raise RuntimeError("injected failure")
        return self.process.prior(num_samples, generator)


def square_reward():
    def reward(x):
        return x.flatten(1).double().pow(2).sum(1)
    reward.name, reward.invalid_value = "square", -1.0
    return reward


def misbehaving_reward(marker_dir: str, poison: float = float("inf")):
    """Squares; the first call in the whole pool kills its worker, the second hangs, any row
    equal to ``poison`` raises."""
    marker = Path(marker_dir)

    def first(name):  # atomic across workers: exactly one caller creates the marker
        try:
            os.close(os.open(marker / name, os.O_CREAT | os.O_EXCL))
            return True
        except FileExistsError:
            return False

    def reward(x):
        if (x == poison).any():
            raise ValueError("poisonous sample")
        if first("died"):
            os._exit(3)
        if first("hung"):
            time.sleep(120)
        return x.flatten(1).double().pow(2).sum(1)
    reward.name = "misbehaving"
    return reward


def _cli_args(num_samples, batch_size, seed):
    return SimpleNamespace(num_samples=num_samples, batch_size=batch_size, seed=seed, resume=False, num_steps=STEPS)


# -- sample parallelism -----------------------------------------------------------------------------
def test_shard_plan_and_seeds_follow_the_cli():
    from svdd.cli import _shard_plan

    for n, b in [(10, 4), (8, 4), (3, 5), (1, 1), (17, 6)]:
        assert shard_plan(n, b) == _shard_plan(n, b)
    assert shard_seed(7, 2) == 7 * 1_000_003 + 2
    assert shard_seed(7, 2, BASELINE_SEED_OFFSET) == 7 * 1_000_003 + 2 + 500_009


@pytest.mark.parametrize("method,kwargs", [("ancestral", {}), ("svdd-pm", {"num_candidates": 3, "alpha": 0.5})])
def test_local_union_equals_the_cli_sharded_run(tmp_path, method, kwargs):
    got = run_sharded(method, GAUSS, LINEAR, num_samples=10, shard_size=4, seed=5, num_steps=STEPS, **kwargs)
    ref = _run_shards("method", method, GAUSS(), as_reward(LINEAR()), kwargs, _cli_args(10, 4, 5), tmp_path, False)
    assert got.x0.shape == (10, 1)
    assert torch.equal(got.x0, ref["x0"]) and torch.equal(got.rewards, ref["rewards"])
    assert got.info["num_shards"] == 3 and got.info["shard_seeds"] == [5_000_015, 5_000_016, 5_000_017]
    assert got.info["nfe"] == ref["counters"]["nfe"] and got.info["coupling"] is None
    # different seed, different samples (the seed is really used)
    other = run_sharded(method, GAUSS, LINEAR, num_samples=10, shard_size=4, seed=6, num_steps=STEPS, **kwargs)
    assert not torch.equal(other.x0, got.x0)


def test_coupled_methods_are_sharded_by_independent_groups():
    for method, kwargs in [("best-of-n", {"num_candidates": 2}), ("svdd-r", {"num_candidates": 2}),
                           ("smc", {"num_particles": 4, "alpha": 1.0})]:
        res = run_sharded(method, GAUSS, LINEAR, num_samples=6, shard_size=3, seed=0, num_steps=4, **kwargs)
        assert res.x0.shape[0] == 6
        assert "2 independent" in res.info["coupling"], (method, res.info["coupling"])
    per_group = run_sharded("best-of-n", GAUSS, LINEAR, num_samples=4, shard_size=2, seed=0, num_steps=4,
                            num_candidates=2, per_group=True)
    assert per_group.info["coupling"] is None
    # best-of-n's global top-k within a shard: each shard keeps the best of its own pool
    bon = run_sharded("best-of-n", GAUSS, LINEAR, num_samples=4, shard_size=2, seed=0, num_steps=4, num_candidates=3)
    assert all(s["pool_size"] == 6 for s in bon.info["shards"])


def test_value_factory_builds_the_svdd_mc_value_in_the_worker(tmp_path):
    from svdd.values.learned import LearnedValue, VectorValueNet, load_value

    torch.manual_seed(0)   # an untrained network: only the plumbing is under test
    LearnedValue(VectorValueNet(1, hidden=8, depth=1), time_scale=1000.0).save(tmp_path / "value")
    kwargs = dict(num_samples=5, shard_size=2, seed=0, num_steps=STEPS, num_candidates=3, alpha=0.5)
    via_factory = run_sharded("svdd-mc", GAUSS, LINEAR, value_factory=ValueFactory(tmp_path / "value"), **kwargs)
    direct = run_sharded("svdd-mc", GAUSS, LINEAR, value_fn=load_value(tmp_path / "value"), **kwargs)
    assert torch.equal(via_factory.x0, direct.x0) and via_factory.info["value_calls"] > 0


def test_failed_shard_is_retried_and_gives_the_same_samples(tmp_path):
    clean = run_sharded("svdd-pm", GAUSS, LINEAR, num_samples=11, shard_size=4, seed=1, num_steps=STEPS,
                        num_candidates=2, alpha=1.0)
    flaky = functools.partial(FlakyPrior, 3, tmp_path, times=1)
    res = run_sharded("svdd-pm", flaky, LINEAR, num_samples=11, shard_size=4, seed=1, num_steps=STEPS,
                      num_candidates=2, alpha=1.0, max_retries=2)
    assert torch.equal(res.x0, clean.x0)
    assert res.info["retries"] == 1 and res.info["task_errors"] == 1 and res.info["failures"] == 0
    assert res.info["shards"][2]["attempts"] == 2 and res.info["shards"][0]["attempts"] == 1


def test_finished_shards_survive_a_failing_shard_and_resume(tmp_path):
    markers = tmp_path / "markers"
    markers.mkdir()
    always = functools.partial(FlakyPrior, 3, markers, times=None)
    with pytest.raises(TaskFailure) as info:
        run_sharded("ancestral", always, LINEAR, num_samples=11, shard_size=4, seed=2, num_steps=STEPS,
                    max_retries=1, shard_dir=tmp_path / "shards")
    err = info.value
    assert "1 of 3 shards failed after 2 attempts" in str(err) and "\n" not in str(err)
    assert sorted(err.finished) == [0, 1] and list(err.failed) == [2]
    assert sorted(p.name for p in (tmp_path / "shards").glob("shard_*")) == ["shard_00000.safetensors", "shard_00001.safetensors"]
    with pytest.raises(DistributedError, match="resume=True"):
        run_sharded("ancestral", GAUSS, LINEAR, num_samples=11, shard_size=4, seed=2, num_steps=STEPS,
                    shard_dir=tmp_path / "shards")
    resumed = run_sharded("ancestral", GAUSS, LINEAR, num_samples=11, shard_size=4, seed=2, num_steps=STEPS,
                          shard_dir=tmp_path / "shards", resume=True)
    fresh = run_sharded("ancestral", GAUSS, LINEAR, num_samples=11, shard_size=4, seed=2, num_steps=STEPS)
    assert resumed.info["resumed_shards"] == [0, 1] and resumed.info["tasks"] == 1
    assert torch.equal(resumed.x0, fresh.x0)


def test_bad_arguments_give_one_line_errors():
    cases = [
        (dict(backend="slurm"), "unknown backend 'slurm'"),
        (dict(generator=torch.Generator()), "do not pass generator="),
        (dict(shard_size=0), "shard_size must be a positive integer"),
        (dict(max_retries=-1), "max_retries must be an integer >= 0"),
    ]
    for extra, text in cases:
        kwargs = {"num_samples": 4, "seed": 0, "num_steps": 2, **extra}
        with pytest.raises(DistributedError) as info:
            run_sharded("ancestral", GAUSS, LINEAR, **kwargs)
        assert text in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(DistributedError, match="needs num_steps"):
        run_sharded("ancestral", GAUSS, LINEAR, num_samples=4)
    with pytest.raises(DistributedError, match="needs a fitted value"):
        run_sharded("svdd-mc", GAUSS, LINEAR, num_samples=4, num_steps=2, backend="process")
    with pytest.raises(svdd.AlgorithmError, match="unknown method"):
        run_sharded("no-such-method", GAUSS, LINEAR, num_samples=4, num_steps=2)


def test_missing_ray_gives_a_one_line_error_naming_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError
    for build in (lambda: run_sharded("ancestral", GAUSS, LINEAR, num_samples=2, num_steps=2, backend="ray"),
                  lambda: RewardPool(LINEAR, 2, backend="ray")):
        with pytest.raises(DistributedError) as info:
            build()
        message = str(info.value)
        assert "pip install 'svdd[distributed]'" in message and "\n" not in message


# -- reward parallelism (local backend) ---------------------------------------------------------------
def test_reward_pool_caches_deduplicates_and_matches_the_reward():
    x = torch.tensor([[1.0], [2.0], [1.0], [3.0]])
    with RewardPool(square_reward, backend="local") as pool:
        assert pool.name == "square" and pool.invalid_value == -1.0
        assert torch.equal(pool(x), torch.tensor([1.0, 4.0, 1.0, 9.0]))
        assert pool.counters()["calls"] == 3 and pool.counters()["cache_hits"] == 1
        assert torch.equal(pool(x[:2]), torch.tensor([1.0, 4.0]))
        c = pool.counters()
        assert c["calls"] == 3 and c["cache_hits"] == 3 and c["requested"] == 6
    with RewardPool(square_reward, backend="local", cache=False) as pool:
        pool(x)
        pool(x)
        assert pool.counters()["calls"] == 8 and pool.counters()["cache_hits"] == 0


def test_reward_pool_isolates_a_poisonous_sample(tmp_path):
    (tmp_path / "died").touch()
    (tmp_path / "hung").touch()   # only the poison misbehaves here
    x = torch.tensor([[1.0], [2.0], [-7.0], [3.0], [4.0]])
    factory = functools.partial(misbehaving_reward, str(tmp_path), -7.0)
    with RewardPool(factory, backend="local", chunk_size=5, max_retries=1) as pool:
        out = pool(x)
        c = pool.counters()
    assert torch.equal(out[[0, 1, 3, 4]], torch.tensor([1.0, 4.0, 9.0, 16.0])) and torch.isnan(out[2])
    # the chunk of 5 failed once, was split into single rows; only the poison failed again
    assert c["failures"] == 1 and c["failed_samples"] == 1 and c["task_errors"] == 2 and c["retries"] == 1


def test_reward_pool_is_a_reward_fn_for_any_algorithm():
    process = GAUSS()
    kwargs = dict(num_samples=6, num_steps=STEPS, num_candidates=3, alpha=0.5)
    direct = svdd.sample(process, LINEAR(), method="svdd-pm", generator=torch.Generator().manual_seed(0), **kwargs)
    with RewardPool(LINEAR, backend="local") as pool:
        pooled = svdd.sample(process, pool, method="svdd-pm", generator=torch.Generator().manual_seed(0), **kwargs)
        # sampling in this process with the pool as the reward; the pool stays open afterwards
        done = []
        sharded = run_sharded("svdd-pm", lambda: process, lambda: pool, num_samples=6, shard_size=4, seed=0,
                              num_steps=STEPS, num_candidates=3, alpha=0.5,
                              on_shard_done=lambda i, shard: done.append((i, len(shard["x0"]))))
        assert pool(torch.ones(1, 1)).item() == 1.0
    reference = run_sharded("svdd-pm", GAUSS, LINEAR, num_samples=6, shard_size=4, seed=0, num_steps=STEPS,
                            num_candidates=3, alpha=0.5)
    assert torch.equal(direct.x0, pooled.x0) and torch.allclose(direct.rewards, pooled.rewards)
    assert torch.equal(sharded.x0, reference.x0) and done == [(0, 4), (1, 2)]


# -- process backend ----------------------------------------------------------------------------------
def test_process_backend_matches_local_samples():
    kwargs = dict(num_samples=10, shard_size=3, seed=4, num_steps=STEPS, num_candidates=3, alpha=0.5)
    local = run_sharded("svdd-pm", GAUSS, LINEAR, **kwargs)
    spread = run_sharded("svdd-pm", GAUSS, LINEAR, backend="process", num_workers=2, value_fn=None, **kwargs)
    assert torch.equal(local.x0, spread.x0) and torch.equal(local.rewards, spread.rewards)
    assert spread.info["num_workers"] == 2 and spread.info["completed"] == 4
    assert all(s["worker_pid"] != os.getpid() for s in spread.info["shards"])


def test_process_reward_pool_survives_a_dead_and_a_hung_worker(tmp_path):
    x = torch.arange(8, dtype=torch.float64).reshape(8, 1)
    factory = functools.partial(misbehaving_reward, str(tmp_path))
    with RewardPool(factory, 2, backend="process", timeout_s=4.0, max_retries=2, chunk_size=2) as pool:
        out = pool(x)
        c = pool.counters()
    assert torch.equal(out, x[:, 0].pow(2).float())
    assert c["worker_deaths"] == 1 and c["timeouts"] == 1 and c["worker_restarts"] == 2
    assert c["failures"] == 0 and c["retries"] == 2 and c["calls"] == 8
