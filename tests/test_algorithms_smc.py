"""SMC: exactness with the exact soft value on both toys, carried weights, FK potentials,
guided proposals."""

import math

import pytest
import torch

import svdd
from svdd.algorithms import AlgorithmError
from svdd.testing import GaussianMixtureToy, MaskedToy, total_variation



def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _weighted_hist(toy, res):
    idx = toy.clean_index(res.x0)
    return torch.zeros(toy.num_clean, dtype=torch.float64).index_add_(0, idx, res.log_weights.exp().double())


@pytest.mark.parametrize("ess_threshold,resample", [(1.0, "multinomial"), (0.5, "ssp")])
def test_smc_exact_value_reproduces_masked_tilted_target(ess_threshold, resample):
    toy, K, alpha = MaskedToy(), 4, 0.5
    target = toy.tilted(alpha, K)
    res = svdd.sample(toy.process(), toy.reward, method="smc", num_samples=4000, num_steps=K, alpha=alpha,
                      value_fn=toy.soft_value(alpha, K), final="weighted", ess_threshold=ess_threshold,
                      resample=resample, generator=_gen(0))
    tv = total_variation(_weighted_hist(toy, res), target)
    assert tv <= 0.05, tv
    # the pretrained law is far from the target, so this is not trivially satisfied
    assert total_variation(toy.model_distribution(K), target) > 0.3


def test_smc_pm_value_masked_moves_towards_target():
    toy, K, alpha = MaskedToy(), 4, 0.5
    res = svdd.sample(toy.process(), toy.reward, method="smc", num_samples=2000, num_steps=K, alpha=alpha,
                      generator=_gen(1))
    target, pre = toy.tilted(alpha, K), toy.model_distribution(K)
    assert total_variation(toy.histogram(res.x0), target) < 0.5 * total_variation(pre, target)


def test_smc_exact_value_reproduces_gaussian_tilted_moments():
    """Mean and second moment of the SMC output within 4 SE of the exact tilted mixture; SE
    from 6 independent runs (resampling correlates particles, so per-particle SEs are wrong).
    K = 1000: SMC targets the K-step model's own tilted law, whose mean at K = 200 is 1.326
    (SNIS over 200k ancestral samples) instead of the continuous-time 1.348; at K = 1000, 1.345."""
    toy, alpha, K = GaussianMixtureToy.default(), 1.0, 1000
    means, seconds = [], []
    for seed in range(6):
        res = svdd.sample(toy.process(), toy.reward, method="smc", num_samples=1000, num_steps=K, alpha=alpha,
                          value_fn=toy.soft_value(alpha), final="weighted", ess_threshold=0.5,
                          resample="systematic", generator=_gen(10 + seed))
        w = res.log_weights.exp()
        means.append(float((w * res.x0[:, 0]).sum()))
        seconds.append(float((w * res.x0[:, 0] ** 2).sum()))
    m, s2 = torch.tensor(means), torch.tensor(seconds)
    exact_mean = toy.reward_mean(alpha)
    exact_second = toy.reward_variance(alpha) + exact_mean ** 2
    se_m, se_s = float(m.std() / math.sqrt(6)), float(s2.std() / math.sqrt(6))
    assert abs(float(m.mean()) - exact_mean) <= 4 * se_m + 0.005, (float(m.mean()), exact_mean, se_m)
    assert abs(float(s2.mean()) - exact_second) <= 4 * se_s + 0.01, (float(s2.mean()), exact_second, se_s)
    # and far from the pretrained mean (-0.6)
    assert float(m.mean()) > 1.0


@pytest.mark.parametrize("potential", ["diff", "max", "sum"])
def test_weights_accumulate_across_steps_without_resampling(potential):
    """Regression for FK issue #12: with no resampling the final log-weight of a particle is
    r(x0)/alpha (up to normalisation) for every potential — the product over all steps, not the
    last step's potential."""
    toy, alpha = MaskedToy(), 0.7
    res = svdd.sample(toy.process(), toy.reward, method="smc", num_samples=300, num_steps=5, alpha=alpha,
                      potential=potential, ess_threshold=0.0, final="weighted", generator=_gen(2))
    assert res.info["resample_steps"] == []
    expected = res.rewards.double() / alpha
    expected = expected - torch.logsumexp(expected, 0)
    assert torch.allclose(res.log_weights, expected, atol=1e-6)


def test_adaptive_resampling_carries_weights_of_skipped_steps():
    """With ESS-gated resampling, the final weights equal exp((r − v_at_last_resample)/alpha)
    accumulated over the steps after the last resampling (several steps are skipped)."""
    toy, alpha, K = GaussianMixtureToy.default(), 1.0, 40
    value = toy.soft_value(alpha)
    seen = {}

    def callback(info):
        seen[info.step] = (info.x.clone(), info.info["resampled"])

    res = svdd.sample(toy.process(), toy.reward, method="smc", num_samples=500, num_steps=K, alpha=alpha,
                      value_fn=value, final="weighted", ess_threshold=0.5, resample="systematic", callback=callback,
                      generator=_gen(3))
    steps = res.info["resample_steps"]
    assert 1 <= len(steps) < K - 2, steps
    last = steps[-1]
    assert last < K - 2   # at least one step after the last resample was skipped
    # particles after the last resampling sit at t_last; the lineage of each final particle is
    # the identity afterwards (no resampling), so its weight is (r − v(x_{last}))/alpha
    ts = toy.process().timesteps(K)
    x_last, _ = seen[last - 1]
    ancestors = res.info["ancestors"][-1]
    x_at = x_last[ancestors]
    expected = (res.rewards.double() - value(x_at, ts[last]).double()) / alpha
    expected = expected - torch.logsumexp(expected, 0)
    assert torch.allclose(res.log_weights, expected, atol=1e-5)
    # overwriting with the last step's potential (the FK bug) would give different weights
    x_prev, _ = seen[K - 2]
    buggy = (res.rewards.double() - value(x_prev, ts[K - 1]).double()) / alpha
    buggy = buggy - torch.logsumexp(buggy, 0)
    assert not torch.allclose(res.log_weights, buggy, atol=1e-3)


def test_paper_baseline_resamples_every_step_and_reports_ess():
    toy = GaussianMixtureToy.default()
    res = svdd.sample(toy.process(), toy.reward, method="smc", num_samples=16, num_steps=6, alpha=0.5,
                      generator=_gen(4))
    assert res.info["resample_steps"] == [1, 2, 3, 4, 5]
    assert len(res.info["ess"]) == 6 and all(0 < e <= 16 + 1e-6 for e in res.info["ess"])
    assert len(res.info["ancestors"]) == 5 and res.info["ancestors"][0].shape == (16,)
    assert res.info["nfe"] == 16 * 6
    assert torch.allclose(res.log_weights, torch.full((16,), -math.log(16), dtype=torch.float64))


def test_num_particles_and_final_selection():
    toy = MaskedToy()
    res = svdd.sample(toy.process(), toy.reward, method="smc", num_samples=5, num_particles=40, num_steps=4,
                      alpha=0.3, generator=_gen(5))
    assert res.x0.shape == (5, 3) and res.info["nfe"] == 40 * 4 and res.info["nfe_per_sample"] == 32
    top = svdd.sample(toy.process(), toy.reward, method="smc", num_samples=5, num_particles=40, num_steps=4,
                      alpha=0.3, final="argmax", generator=_gen(5))
    flw = top.info["final_log_weights"]
    assert set(top.info["selected"].tolist()) == set(torch.topk(flw, 5).indices.tolist())
    with pytest.raises(AlgorithmError, match="num_particles == num_samples"):
        svdd.sample(toy.process(), toy.reward, method="smc", num_samples=5, num_particles=40, num_steps=4,
                    final="weighted")
    with pytest.raises(AlgorithmError, match="alpha > 0"):
        svdd.sample(toy.process(), toy.reward, method="smc", num_samples=5, num_steps=4, alpha=0.0)
    with pytest.raises(AlgorithmError, match="unknown potential"):
        svdd.sample(toy.process(), toy.reward, method="smc", num_samples=5, num_steps=4, potential="rt")
    with pytest.raises(AlgorithmError, match="unknown resampler"):
        svdd.sample(toy.process(), toy.reward, method="smc", num_samples=5, num_steps=4, resample="x")


@pytest.mark.parametrize("through_model", [False, True])
def test_guided_proposal_keeps_target_and_raises_ess(through_model):
    """A gradient-guided proposal with the density-ratio correction still targets the tilted
    law (IS without resampling), and its weights are less degenerate than the pretrained
    proposal's (the point of guiding)."""
    toy, alpha, K = GaussianMixtureToy.default(), 1.0, 100
    kw = dict(num_samples=3000, num_steps=K, alpha=alpha, value_fn=toy.soft_value(alpha), final="weighted",
              ess_threshold=0.0)
    pre = svdd.sample(toy.process(), toy.reward, method="smc", generator=_gen(6), **kw)
    gui = svdd.sample(toy.process(), toy.reward, method="smc", proposal="guided",
                      guidance_through_model=through_model, generator=_gen(6), **kw)
    assert gui.info["grad_passes"] == 3000 * K
    mean = float((gui.log_weights.exp() * gui.x0[:, 0]).sum())
    ref = float((pre.log_weights.exp() * pre.x0[:, 0]).sum())
    assert abs(mean - ref) < 0.1, (mean, ref)
    assert gui.info["final_ess"] > pre.info["final_ess"]
