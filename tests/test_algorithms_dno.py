"""DNO on DNO's 2-D ring toy: reward rises over iterations, the probability regulariser keeps
the noise Gaussian-looking, the zeroth-order estimators improve a black-box reward."""

import math

import pytest
import torch
from algorithm_toys import RingReward

import svdd
from svdd.algorithms import AlgorithmError
from svdd.algorithms.dno import concentration_log_bounds, probability_regularizer
from svdd.testing import GaussianMixtureToy, MaskedToy

K = 10


def _run(reward, **kw):
    toy = GaussianMixtureToy.ring()
    args = dict(num_samples=32, num_steps=K, num_iterations=15, lr=0.05, num_permutations=20,
                generator=torch.Generator().manual_seed(0))
    args.update(kw)
    return svdd.sample(toy.process(), reward, method="dno", **args)


def test_dno_raises_reward_monotonically_in_expectation():
    res = _run(RingReward(True))
    r = torch.tensor(res.info["reward_mean"])
    # mean reward over successive blocks of iterations strictly increases, and the final
    # samples beat the initial ones by many standard errors
    blocks = r[: 15].view(5, 3).mean(1)
    assert torch.all(blocks[1:] > blocks[:-1]), blocks
    se = float(res.rewards.std() / math.sqrt(32)) + 0.1
    assert float(res.rewards.mean()) - float(r[0]) > 4 * se
    assert res.info["nfe_per_sample"] == 2 * K * 15 + K
    assert res.info["grad_passes"] == 32 * K * 15
    assert res.info["reward_calls"] == 32 * 16
    assert res.info["estimator"] == "gradient"


def test_regulariser_keeps_noise_inside_the_concentration_bound():
    free = _run(RingReward(True), lr=0.2, num_iterations=20, gamma=0.0)
    held = _run(RingReward(True), lr=0.2, num_iterations=20, gamma=1.0)
    assert float(free.info["final_regularizer"].mean()) > 5.0
    assert float(held.info["final_regularizer"].mean()) < 0.5
    # block mean/covariance bounds in the identity order: both at their clamp (−log 2 each)
    # for most samples with gamma > 0, violated for most with gamma = 0
    inside = lambda res: (concentration_log_bounds(res.info["noise"]) >= -2 * math.log(2) - 1e-6).float().mean()  # noqa: E731
    assert inside(held) > 0.8 and inside(free) < 0.3, (inside(held), inside(free))
    assert float(held.rewards.mean()) > float(held.info["reward_mean"][0]) + 0.5   # still optimises


def test_regulariser_is_small_for_gaussian_noise_and_grows_with_a_shift():
    g = torch.Generator().manual_seed(1)
    z = torch.randn(64, 400, dtype=torch.float64, generator=g)
    reg = probability_regularizer(z, num_permutations=10, generator=g)
    assert float(reg.median()) < 0.3 and torch.all(reg >= 0) and float(reg.min()) == 0.0
    shifted = probability_regularizer(z + 0.5, num_permutations=10, generator=g)
    assert torch.all(shifted > 1.0)


@pytest.mark.parametrize("estimator,nfe_per_iteration", [("hybrid", (2 + 4) * K), ("zo-sgd", (1 + 4) * K)])
def test_zeroth_order_estimators_improve_a_black_box_reward(estimator, nfe_per_iteration):
    res = _run(RingReward(False), estimator=estimator)
    r0 = res.info["reward_mean"][0]
    se = float(res.rewards.std() / math.sqrt(32))
    assert float(res.rewards.mean()) - r0 > 4 * se, (float(res.rewards.mean()), r0, se)
    assert res.info["nfe_per_sample"] == nfe_per_iteration * 15 + K
    assert res.info["estimator"] == estimator


def test_auto_estimator_and_errors():
    assert _run(RingReward(False), num_iterations=1).info["estimator"] == "hybrid"
    with pytest.raises(AlgorithmError, match="hybrid"):
        _run(RingReward(False), num_iterations=1, estimator="gradient")
    toy = MaskedToy()
    with pytest.raises(AlgorithmError, match="masked"):
        svdd.sample(toy.process(), toy.reward, method="dno", num_samples=2, num_steps=2)
    with pytest.raises(AlgorithmError, match="estimator"):
        _run(RingReward(True), estimator="adam")


def test_deterministic_sampler_optimises_the_prior_only():
    toy = GaussianMixtureToy.ring()
    res = svdd.sample(toy.process(eta=0.0), RingReward(True), method="dno", num_samples=8, num_steps=K,
                      num_iterations=3, generator=torch.Generator().manual_seed(2))
    assert res.info["noise"].shape == (8, 2)
    stochastic = _run(RingReward(True), num_samples=8, num_iterations=1)
    assert stochastic.info["noise"].shape == (8, 2 * K)    # prior + K − 1 stochastic steps (last is exact)
