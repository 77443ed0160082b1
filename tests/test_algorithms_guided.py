"""Guided proposals (svdd.process.guided), DPS and DAS."""

import pytest
import torch
from algorithm_toys import masked_toy_with_positional_reward, onehot_process

import svdd
from svdd.algorithms import AlgorithmError
from svdd.algorithms.dps import dps
from svdd.algorithms.das import das
from svdd.process.guided import GuidanceError, GuidedProcess
from svdd.testing import GaussianMixtureToy, MaskedToy, total_variation



def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _gain(res, base):
    """(mean difference, its standard error)."""
    se = (res.rewards.var() / len(res.rewards) + base.rewards.var() / len(base.rewards)).sqrt()
    return float(res.rewards.mean() - base.rewards.mean()), float(se)


@pytest.fixture(scope="module")
def masked():
    toy, reward = masked_toy_with_positional_reward()
    return toy, reward, onehot_process(toy)


# -- guided process -------------------------------------------------------------------------------
def test_gaussian_guidance_gradient_matches_finite_differences():
    toy = GaussianMixtureToy.ring()
    proc = toy.process()
    reward = lambda x: (torch.sin(3 * x[:, 0]) + x[:, 1] ** 2)   # noqa: E731
    reward.differentiable = True
    guide = GuidedProcess(proc, reward, through_model=True)
    x, t = torch.randn(4, 2, dtype=torch.float64, generator=_gen(0)), torch.tensor(400.0, dtype=torch.float64)
    g = guide.guidance(x, t)
    eps = 1e-5
    for i in range(2):
        d = torch.zeros_like(x)
        d[:, i] = eps
        fd = (reward(proc.predict_x0(x + d, t)) - reward(proc.predict_x0(x - d, t))) / (2 * eps)
        assert torch.allclose(g.grad[:, i], fd, atol=1e-5)
    assert torch.allclose(g.reward, reward(proc.predict_x0(x, t)))


def test_guided_gaussian_transition_is_the_shifted_kernel():
    toy = GaussianMixtureToy.default()
    proc = toy.process()
    guide = GuidedProcess(proc, toy.reward, scale=2.0)
    ts = proc.timesteps(10)
    x = proc.prior(5, _gen(1))
    trans = guide.transition(x, ts[3], ts[4])
    base = proc.transition(x, ts[3], ts[4])
    ab = proc.alpha_bar(ts[3])
    expected_shift = 2.0 * base.std.pow(2)[:, None] * ab.sqrt() * toy.w[None]
    assert torch.allclose(trans.mean - base.mean, expected_shift)
    y = trans.sample(_gen(2))
    assert torch.allclose(trans.log_ratio(y), base.log_prob(y) - trans.log_prob(y))
    # last step to clean is deterministic: no shift, zero ratio
    last = guide.transition(x, ts[-2], ts[-1])
    assert torch.equal(last.mean, proc.transition(x, ts[-2], ts[-1]).mean)
    assert torch.all(last.log_ratio(last.sample()) == 0)


def test_guided_categorical_is_normalised_and_tilted(masked):
    toy, reward, proc = masked
    ts = proc.timesteps(4)
    x = torch.tensor([[toy.mask_id, 0, toy.mask_id], [1, toy.mask_id, toy.mask_id]])
    for through_model in (False, True):
        guide = GuidedProcess(proc, reward, scale=3.0, through_model=through_model)
        trans = guide.transition(x, ts[1], ts[2])
        assert torch.allclose(trans.probs.sum(-1), torch.ones(2, 3, dtype=torch.float64))
        assert torch.equal(trans.probs[0, 1], trans.base.probs[0, 1])         # carried-over token untouched
        # the tilt moves mass towards tokens with a larger positional reward weight
        W = reward.W
        best = W[2, : toy.mask_id].argmax()
        assert trans.probs[0, 2, best] > trans.base.probs[0, 2, best]
        y = trans.sample(_gen(3))
        assert torch.allclose(trans.log_prob(y), torch.log(trans.probs.gather(-1, y[..., None]).squeeze(-1)).sum(-1))
    zero = GuidedProcess(proc, reward, scale=0.0).transition(x, ts[1], ts[2])
    assert torch.allclose(zero.probs, zero.base.probs)


def test_guided_process_errors():
    toy = MaskedToy()
    with pytest.raises(GuidanceError, match="svdd-pm, smc or dno"):
        GuidedProcess(toy.process(), toy.reward)
    _, reward = masked_toy_with_positional_reward()
    guide = GuidedProcess(toy.process(), reward, through_model=True)   # toy denoiser takes ids only
    with pytest.raises(GuidanceError, match="through_model=False"):
        guide.guidance(toy.process().prior(2), torch.tensor(1.0))


# -- DPS ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("through_model", [False, True])
def test_dps_raises_gaussian_reward_above_ancestral(through_model):
    toy = GaussianMixtureToy.default()
    kw = dict(num_samples=300, num_steps=20)
    base = svdd.sample(toy.process(), toy.reward, method="ancestral", generator=_gen(0), **kw)
    res = svdd.sample(toy.process(), toy.reward, method="dps", guidance_scale=3.0, through_model=through_model,
                      generator=_gen(0), **kw)
    gain, se = _gain(res, base)
    assert gain > 4 * se and gain > 1.0, (gain, se)
    assert res.info["nfe"] == 300 * 20 and res.info["grad_passes"] == 300 * 20


@pytest.mark.parametrize("through_model", [True, False])
def test_dps_raises_masked_reward_above_ancestral(masked, through_model):
    toy, reward, proc = masked
    kw = dict(num_samples=400, num_steps=10)
    base = svdd.sample(proc, reward, method="ancestral", generator=_gen(1), **kw)
    res = svdd.sample(proc, reward, method="dps", guidance_scale=3.0, through_model=through_model,
                      generator=_gen(1), **kw)
    gain, se = _gain(res, base)
    assert gain > 4 * se, (gain, se)
    assert res.info["nfe"] == 400 * 10


def test_dps_constant_mode_moves_deterministic_sampler():
    toy = GaussianMixtureToy.default()
    proc = toy.process(eta=0.0)
    kw = dict(num_samples=100, num_steps=10)
    base = svdd.sample(proc, toy.reward, method="ancestral", generator=_gen(2), **kw)
    var = svdd.sample(proc, toy.reward, method="dps", guidance_scale=3.0, generator=_gen(2), **kw)
    const = svdd.sample(proc, toy.reward, method="dps", guidance_scale=0.3, mode="constant", generator=_gen(2), **kw)
    assert torch.allclose(var.x0, base.x0)           # σ = 0: the variance-scaled tilt vanishes
    gain, se = _gain(const, base)
    assert gain > 4 * se


# -- DAS ---------------------------------------------------------------------------------------------
def test_das_raises_gaussian_reward_and_approaches_target():
    toy = GaussianMixtureToy.default()
    kw = dict(num_samples=400, num_steps=20)
    base = svdd.sample(toy.process(), toy.reward, method="ancestral", generator=_gen(3), **kw)
    res = svdd.sample(toy.process(), toy.reward, method="das", alpha=0.3, generator=_gen(3), **kw)
    gain, se = _gain(res, base)
    assert gain > 4 * se, (gain, se)
    assert abs(float(res.rewards.mean()) - toy.reward_mean(0.3)) < 0.4
    assert res.info["grad_passes"] == 400 * 20 and res.info["nfe"] == 400 * 20
    assert len(res.info["tempering"]) == 20 and res.info["tempering"][-1] == 1.0
    assert all(a <= b + 1e-12 for a, b in zip(res.info["tempering"], res.info["tempering"][1:]))


@pytest.mark.parametrize("tempering", ["exp", "adaptive", "none"])
def test_das_masked_matches_exact_tilted_target(masked, tempering):
    toy, reward, proc = masked
    K, alpha = 8, 0.5
    res = svdd.sample(proc, reward, method="das", num_samples=3000, num_steps=K, alpha=alpha, tempering=tempering,
                      final="weighted", generator=_gen(4))
    hist = torch.zeros(toy.num_clean, dtype=torch.float64).index_add_(0, toy.clean_index(res.x0), res.log_weights.exp())
    target = toy.tilted(alpha, K)
    assert total_variation(hist, target) < 0.06
    assert total_variation(toy.model_distribution(K), target) > 0.2


def test_das_adaptive_tempering_solves_for_the_ess():
    """λ_k is the largest value in [λ_{k−1}, 1] whose reweighting keeps ESS ≥ target·P."""
    from svdd.algorithms.das import tempering_schedule
    from svdd.algorithms.smc import _Lineage
    from svdd.resampling import ess

    P, alpha = 500, 0.1
    temper = tempering_schedule("adaptive", 10, alpha=alpha, target_ess=0.6, num_particles=P)
    lineage = _Lineage(P, "cpu")
    v = torch.randn(P, dtype=torch.float64, generator=_gen(7))
    log_w = torch.zeros(P, dtype=torch.float64)
    lam1 = temper(1, v, log_w, lineage)
    assert 0 < lam1 < 1
    assert ess(log_w + lam1 * v / alpha) == pytest.approx(0.6 * P, rel=1e-3)
    lam2 = temper(2, 0.01 * v, log_w, lineage)          # a flat value allows the full twist
    assert lam2 == 1.0
    lam3 = temper(3, 100 * v, log_w, lineage)           # never decreases
    assert lam3 == 1.0


# -- errors --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["dps", "das"])
def test_gradient_methods_refuse_black_box_rewards(method):
    toy = MaskedToy()
    for call in (lambda: svdd.sample(toy.process(), toy.reward, method=method, num_samples=2, num_steps=2),
                 lambda: {"dps": dps, "das": das}[method](toy.process(), toy.reward, num_samples=2, num_steps=2)):
        with pytest.raises(AlgorithmError) as err:
            call()
        msg = str(err.value)
        assert "\n" not in msg and "differentiable" in msg
        assert "svdd-pm" in msg and "smc" in msg and "dno" in msg


def test_das_and_dps_restore_grad_mode():
    toy = GaussianMixtureToy.default()
    with torch.no_grad():
        svdd.sample(toy.process(), toy.reward, method="das", num_samples=4, num_steps=3, generator=_gen(6))
        assert not torch.is_grad_enabled()
    svdd.sample(toy.process(), toy.reward, method="dps", num_samples=4, num_steps=3, generator=_gen(6))
    assert torch.is_grad_enabled()
