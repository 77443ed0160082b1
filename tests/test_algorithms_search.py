"""Noise search (random / zero-order): exact budgets, neighbour geometry, improvement."""

import math

import pytest
import torch

import svdd
from svdd.algorithms import AlgorithmError
from svdd.algorithms._common import Run
from svdd.algorithms.search import NoiseSampler, neighbours
from svdd.testing import GaussianMixtureToy, MaskedToy



def _gen(seed):
    return torch.Generator().manual_seed(seed)


def test_neighbours_preserve_norm_at_the_cosine_threshold():
    pivot = torch.randn(5, 30, dtype=torch.float64, generator=_gen(0))
    nb = neighbours(pivot, 4, 0.95, _gen(1))
    assert nb.shape == (5, 4, 30)
    assert torch.allclose(nb.norm(dim=-1), pivot.norm(dim=-1, keepdim=True).expand(5, 4))
    cos = (nb * pivot[:, None]).sum(-1) / (nb.norm(dim=-1) * pivot.norm(dim=-1, keepdim=True))
    assert torch.allclose(cos, torch.full_like(cos, 0.95))
    assert not torch.allclose(nb[:, 0], nb[:, 1])


@pytest.mark.parametrize("kind", ["gaussian", "masked"])
def test_noise_sampler_is_a_deterministic_map_with_the_pretrained_law(kind):
    toy = GaussianMixtureToy.default() if kind == "gaussian" else MaskedToy()
    proc = toy.process()
    ns = NoiseSampler(Run(proc, toy.reward), 8)
    z = ns.draw(4000, _gen(2))
    a, b = ns.decode(z), ns.decode(z)
    assert torch.equal(a, b)
    if kind == "gaussian":
        assert abs(float(a.mean()) - (-0.6)) < 4 * 1.43 / math.sqrt(4000) + 0.05
    else:   # histogram matches the model's exact K-step law
        tv = 0.5 * float((toy.histogram(a) - toy.model_distribution(8)).abs().sum())
        assert tv < 0.05


@pytest.mark.parametrize("method", ["random-search", "zero-order-search"])
@pytest.mark.parametrize("num_candidates", [1, 6, 9])
def test_search_budget_is_exact(method, num_candidates):
    toy = GaussianMixtureToy.default()
    res = svdd.sample(toy.process(), toy.reward, method=method, num_samples=3, num_steps=5,
                      num_candidates=num_candidates, generator=_gen(3))
    assert res.x0.shape == (3, 1)
    assert res.info["nfe_per_sample"] == 5 * num_candidates
    assert res.info["reward_calls"] == 3 * num_candidates
    assert torch.allclose(res.rewards, toy.reward(res.x0).float(), atol=1e-5)


@pytest.mark.parametrize("method", ["random-search", "zero-order-search"])
@pytest.mark.parametrize("kind", ["gaussian", "masked"])
def test_search_beats_ancestral(method, kind):
    toy = GaussianMixtureToy.default() if kind == "gaussian" else MaskedToy()
    proc = toy.process()
    kw = dict(num_samples=200, num_steps=6)
    base = svdd.sample(proc, toy.reward, method="ancestral", generator=_gen(4), **kw)
    res = svdd.sample(proc, toy.reward, method=method, num_candidates=8, generator=_gen(4), **kw)
    se = float((res.rewards.var() / 200 + base.rewards.var() / 200).sqrt())
    assert float(res.rewards.mean() - base.rewards.mean()) > 4 * se


def test_zero_order_search_best_is_monotone_and_restarts():
    toy = GaussianMixtureToy.default()
    res = svdd.sample(toy.process(), toy.reward, method="zero-order-search", num_samples=64, num_steps=6,
                      num_candidates=40, num_neighbors=4, threshold=0.99, generator=_gen(5))
    best = res.info["best_reward_mean"]
    assert len(best) == 10 and all(a <= b + 1e-9 for a, b in zip(best, best[1:]))
    assert sum(res.info["restarts"]) > 0          # pivots stall and restart
    with pytest.raises(AlgorithmError, match="random-search"):   # 1-D noise: no neighbours
        svdd.sample(toy.process(eta=0.0), toy.reward, method="zero-order-search", num_samples=2, num_steps=2)
    with pytest.raises(AlgorithmError, match="threshold"):
        svdd.sample(toy.process(), toy.reward, method="zero-order-search", num_samples=2, num_steps=2, threshold=1.0)
