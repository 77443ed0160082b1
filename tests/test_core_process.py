"""Maths of the processes: normalised masked transitions, DDPM posterior at eta=1, summed
log-probs, deterministic DDIM, exact final step, time conventions."""

import math

import pytest
import torch

from svdd.process import GaussianProcess, MaskedProcess, linear_beta_alphas_cumprod
from svdd.process.gaussian import DeterministicStepError
from svdd.testing import GaussianMixtureToy, MaskedToy


def random_logits_model(V, seed=0):
    g = torch.Generator().manual_seed(seed)
    table = torch.randn(64, 8, V, generator=g)

    def model(x, t):
        return table[: x.shape[0], : x.shape[1]] + 0.1 * t.view(-1, 1, 1)

    return model


def test_masked_transition_rows_sum_to_one_and_carry_over():
    V, L, mask = 6, 8, 5
    proc = MaskedProcess(random_logits_model(V), L, V, mask)
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, V, (16, L), generator=g)  # some positions masked (token 5)
    for t, s in [(1.0, 0.9), (0.5, 0.25), (0.3, 0.0)]:
        tr = proc.transition(x, torch.tensor(t), torch.tensor(s))
        assert torch.allclose(tr.probs.sum(-1), torch.ones(16, L, dtype=torch.float64), atol=1e-9)
        unmasked = x != mask
        assert torch.all(tr.probs[unmasked].argmax(-1) == x[unmasked])
        assert torch.all(tr.probs[unmasked].max(-1).values == 1)
        # mask token never predicted as clean; masked positions stay masked with prob m_s/m_t
        assert torch.all(tr.x0_hat[..., mask] == 0)
        assert torch.allclose(tr.probs[~unmasked][:, mask], torch.full(((~unmasked).sum(),), s / t, dtype=torch.float64))
        nxt = tr.sample(g)
        assert torch.equal(nxt[unmasked], x[unmasked])
        if s == 0.0:
            assert not torch.any(nxt == mask), "the final step must fill every remaining mask"


def test_masked_log_prob_is_normalised_sum_over_positions():
    """Σ over all next states of exp(log_prob) = 1 on a tiny vocabulary (enumeration)."""
    toy = MaskedToy()
    proc = toy.process()
    x = torch.tensor([[3, 0, 3]])  # positions 0 and 2 masked
    tr = proc.transition(x, torch.tensor(0.75), torch.tensor(0.25))
    states = toy.all_states
    lp = torch.stack([tr.log_prob(s[None])[0] for s in states])
    assert math.isclose(float(torch.logsumexp(lp, 0).exp()), 1.0, rel_tol=1e-6)  # x0_hat is float32
    # summed, not averaged: log_prob equals the sum of per-position log-probs
    s = torch.tensor([[1, 0, 3]])
    per = torch.log(tr.probs[0, torch.arange(3), s[0]])
    assert math.isclose(float(tr.log_prob(s)[0]), float(per.sum()), rel_tol=1e-12)


def test_categorical_draws_match_probabilities(gen):
    toy = MaskedToy()
    proc = toy.process()
    x = torch.full((20000, 3), toy.mask_id)
    tr = proc.transition(x, 1.0, 0.5)
    nxt = tr.sample(gen)
    freq = torch.stack([(nxt[:, 0] == k).double().mean() for k in range(4)])
    p = tr.probs[0, 0]
    se = (p * (1 - p) / 20000).sqrt()
    assert torch.all((freq - p).abs() <= 4 * se + 1e-12)


def _gaussian(eta=1.0, pred="epsilon"):
    ac = linear_beta_alphas_cumprod(1000)

    def model(x, timestep):
        return 0.3 * x + 0.01 * timestep.view(-1, 1).float()

    return GaussianProcess(model, ac, prediction_type=pred, eta=eta, sample_shape=(3,), dtype=torch.float64)


def test_gaussian_eta1_matches_ddpm_posterior(gen):
    proc = _gaussian(eta=1.0)
    x = torch.randn(5, 3, generator=gen, dtype=torch.float64)
    for t, s in [(1000, 980), (500, 300), (20, 0), (7, 6)]:
        tr = proc.transition(x, torch.tensor(float(t)), torch.tensor(float(s)))
        mean, std = proc.q_posterior(tr.x0_hat, x, float(t), float(s))
        assert torch.allclose(tr.mean, mean, atol=1e-10)
        assert torch.allclose(tr.std, std.flatten().expand(5), atol=1e-10)


def test_gaussian_one_step_posterior_matches_betas():
    """On the full grid the posterior variance is β̃_t = (1-ᾱ_{t-1})/(1-ᾱ_t)·β_t (Ho et al. eq. 7)."""
    proc = _gaussian()
    ac = linear_beta_alphas_cumprod(1000)
    n = 400  # training index; process time t = n + 1
    beta = 1 - ac[n] / ac[n - 1]
    tilde = (1 - ac[n - 1]) / (1 - ac[n]) * beta
    _, _, sigma, _, _ = proc.step_coefficients(n + 1, n)
    assert math.isclose(float(sigma) ** 2, float(tilde), rel_tol=1e-9)


def test_gaussian_log_prob_sums_over_dims_and_ddim_is_deterministic(gen):
    proc = _gaussian(eta=1.0)
    x = torch.randn(4, 3, generator=gen, dtype=torch.float64)
    tr = proc.transition(x, 600.0, 500.0)
    y = tr.sample(gen)
    ref = torch.distributions.Normal(tr.mean, tr.std.view(-1, 1)).log_prob(y).sum(1)
    assert torch.allclose(tr.log_prob(y), ref, atol=1e-10)
    ddim = _gaussian(eta=0.0)
    tr0 = ddim.transition(x, 600.0, 500.0)
    assert torch.equal(tr0.sample(torch.Generator().manual_seed(1)), tr0.sample(torch.Generator().manual_seed(2)))
    with pytest.raises(DeterministicStepError):
        tr0.log_prob(y)


def test_gaussian_final_step_lands_on_x0_hat_and_reparameterised_noise(gen):
    proc = _gaussian()
    x = torch.randn(4, 3, generator=gen, dtype=torch.float64)
    tr = proc.transition(x, 20.0, 0.0)
    assert torch.allclose(tr.sample(gen), tr.x0_hat)
    tr = proc.transition(x, 600.0, 500.0)
    z = torch.randn(4, 3, generator=gen, dtype=torch.float64)
    assert torch.allclose(tr.sample(noise=z), tr.mean + tr.std.view(-1, 1) * z)


@pytest.mark.parametrize("pred", ["epsilon", "sample", "v_prediction"])
def test_prediction_types_invert_forward_noising(pred, gen):
    """A model that outputs the true eps / x0 / v recovers x0 exactly."""
    ac = linear_beta_alphas_cumprod(1000)
    x0 = torch.randn(6, 3, generator=gen, dtype=torch.float64)
    eps = torch.randn(6, 3, generator=gen, dtype=torch.float64)
    t = 700
    ab = ac[t - 1]
    x_t = ab.sqrt() * x0 + (1 - ab).sqrt() * eps
    target = {"epsilon": eps, "sample": x0, "v_prediction": ab.sqrt() * eps - (1 - ab).sqrt() * x0}[pred]
    proc = GaussianProcess(lambda x, ts: target, ac, prediction_type=pred, sample_shape=(3,), dtype=torch.float64)
    assert torch.allclose(proc.predict_x0(x_t, float(t)), x0, atol=1e-9)


def test_timesteps_and_time_conventions():
    proc = _gaussian()
    ts = proc.timesteps(50)
    assert ts.shape == (51,) and ts[0] == 1000 and ts[-1] == 0 and torch.all(ts[:-1] > ts[1:])
    assert float(proc.alpha_bar(0.0)) == 1.0
    m = MaskedProcess(random_logits_model(4), 8, 4, 3)
    tm = m.timesteps(16)
    assert tm[0] == 1 and tm[-1] == 0 and float(m.mask_prob(0.0)) == 0 and float(m.mask_prob(1.0)) == 1
    with pytest.raises(ValueError):
        proc.timesteps(0)


def test_gaussian_toy_denoiser_is_exact_posterior_mean(gen):
    """Monte Carlo E[x0 | x_t ≈ y] from joint draws agrees with the closed form."""
    toy = GaussianMixtureToy.default()
    n = 400_000
    comp = torch.multinomial(toy.weights, n, replacement=True, generator=gen)
    x0 = toy.means[comp, 0] + toy.stds[comp] * torch.randn(n, generator=gen, dtype=torch.float64)
    ab = toy.alphas_cumprod[499]
    xt = ab.sqrt() * x0 + (1 - ab).sqrt() * torch.randn(n, generator=gen, dtype=torch.float64)
    sel = (xt - 0.2).abs() < 0.01
    est = x0[sel].mean()
    exact = toy.denoiser(torch.tensor([[0.2]], dtype=torch.float64), torch.tensor([499]))[0, 0]
    se = x0[sel].std() / sel.sum().sqrt()
    assert abs(float(est - exact)) < 4 * float(se) + 0.01


@pytest.mark.parametrize("estimator", ["count", "time"])
def test_masked_nelbo_is_exact_for_the_exact_denoiser(gen, estimator):
    """With exact conditionals the MDLM NELBO equals the any-order autoregressive NLL, which is
    −log p(x0) for every order: the MC estimate must match it within 4.5 SE for all 27 states
    (max |z| over 27 roughly-normal statistics exceeds 4.5 with probability < 2e-4)."""
    toy = MaskedToy()
    proc = toy.process()
    draws = torch.stack([proc.nelbo(toy.clean_states, generator=gen, estimator=estimator) for _ in range(3000)])
    nll = -torch.log(toy.joint).float()
    z = (draws.mean(0) - nll) / (draws.std(0) / 3000 ** 0.5)
    assert float(z.abs().max()) < 4.5
    if estimator == "count":  # the bounded-weight estimator has a much smaller spread
        assert float(draws.std(0).mean()) < 2.5


def test_masked_training_stops_at_step_and_replays_exactly():
    """``stop_at_step`` ends a cosine schedule planned for ``num_steps`` early, and records that
    step; two runs with the same seed give the same weights (a time-budgeted run can be replayed)."""
    from svdd.nn import MaskedTransformer
    from svdd.nn.train import train_masked_diffusion

    data = torch.randint(0, 5, (64, 6), generator=torch.Generator().manual_seed(0))

    def train():
        torch.manual_seed(0)
        model = MaskedTransformer(6, 6, dim=16, depth=1, heads=2)
        proc = MaskedProcess(model, 6, 6, mask_id=5)
        ema, hist = train_masked_diffusion(proc, data, num_steps=20, batch_size=8, warmup=2, stop_at_step=7,
                                           eval_every=100, log=lambda _: None)
        return ema, hist

    (a, ha), (b, _) = train(), train()
    assert ha[-1]["step"] == 7
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


def test_x0_probs_without_autograd_are_the_autograd_ones_and_leave_the_logits_alone():
    """The in-place SUBS path (no gradient) gives the out-of-place path's table bit for bit, for
    float32 and bf16 logits, and never writes the caller's logits."""
    V, L, mask = 7, 5, 6
    proc = MaskedProcess(random_logits_model(V), L, V, mask)
    g = torch.Generator().manual_seed(3)
    x = torch.randint(0, V, (9, L), generator=g)
    for dtype in (torch.float32, torch.bfloat16):
        logits = (4 * torch.randn(9, L, V, generator=g)).to(dtype)
        before = logits.clone()
        with_grad = proc.x0_probs_from_logits(logits.clone().requires_grad_(True), x)
        with torch.no_grad():
            without = proc.x0_probs_from_logits(logits, x)
        assert torch.equal(logits, before)
        assert torch.equal(with_grad.detach(), without) and without.dtype == torch.float32


# --- draw="two-stage": the same step law, drawn without the (B, L, V) race -----------------------

def test_two_stage_transition_is_the_race_table_exactly():
    """probs, log_prob and sample(noise=) of the factored transition equal the race's, bit for bit."""
    V, L, mask = 6, 8, 5
    race = MaskedProcess(random_logits_model(V), L, V, mask)
    two = MaskedProcess(random_logits_model(V), L, V, mask, draw="two-stage")
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, V, (16, L), generator=g)
    for t, s in [(1.0, 0.9), (0.5, 0.25), (0.3, 0.0)]:
        a = race.transition(x, torch.tensor(t), torch.tensor(s))
        b = two.transition(x, torch.tensor(t), torch.tensor(s))
        assert torch.equal(a.probs, b.probs)
        nxt = b.sample(g)
        assert torch.equal(nxt[x != mask], x[x != mask])
        assert torch.equal(a.log_prob(nxt), b.log_prob(nxt))
        other = torch.randint(0, V, (16, L), generator=g)          # mostly impossible moves: -inf
        assert torch.equal(a.log_prob(other), b.log_prob(other))
        noise = torch.rand(16, L, V, generator=g, dtype=torch.float64)
        assert torch.equal(a.sample(noise=noise), b.sample(noise=noise))
        if s == 0.0:
            assert not torch.any(nxt == mask)


def test_two_stage_draws_match_the_table_and_skip_zero_probability_tokens(gen):
    """Frequencies of one step from a half-masked row match the table within 4 standard errors
    (binomial s.e. √(p(1−p)/n), n = 40,000, over 4 letters × 3 positions); a token of
    probability 0 in x0_hat is never drawn."""
    toy = MaskedToy()
    proc = toy.process()
    proc.draw = "two-stage"
    n = 40000
    x = torch.tensor([[toy.mask_id, 1, toy.mask_id]]).expand(n, 3)
    tr = proc.transition(x, 0.8, 0.3)
    nxt = tr.sample(gen)
    for pos in range(3):
        freq = torch.stack([(nxt[:, pos] == k).double().mean() for k in range(4)])
        p = tr.probs[0, pos]
        assert torch.all((freq - p).abs() <= 4 * (p * (1 - p) / n).sqrt() + 1e-12), (pos, freq, p)

    V, L, mask = 7, 4, 6
    def model(x, t):
        logits = torch.zeros(x.shape[0], L, V)
        logits[..., 2] = -math.inf                                  # token 2 is impossible everywhere
        return logits
    zero = MaskedProcess(model, L, V, mask, draw="two-stage")
    out = zero.transition(zero.prior(5000), 1.0, 0.0).sample(gen)
    assert not torch.any(out == 2) and not torch.any(out == mask)
    assert set(out.unique().tolist()) == {0, 1, 3, 4, 5}


def test_two_stage_ancestral_sampling_has_the_model_law(gen):
    """K-step ancestral samples with draw="two-stage" follow the exact K-step law of the model
    (MaskedToy.model_distribution, built from the race tables): TV over 27 states at n = 20,000
    has mean ≈ Σ√(p(1−p)/(2πn)) ≈ 0.02; 0.05 is more than twice that."""
    from svdd.testing import total_variation
    import svdd

    toy = MaskedToy()
    proc = toy.process()
    proc.draw = "two-stage"
    K = 4
    res = svdd.sample(proc, toy.reward, method="ancestral", num_samples=20000, num_steps=K, generator=gen)
    assert total_variation(toy.histogram(res.x0), toy.model_distribution(K)) < 0.05


def test_draw_is_checked():
    with pytest.raises(ValueError, match="draw must be one of"):
        MaskedProcess(random_logits_model(4), 8, 4, 3, draw="gumbel")
