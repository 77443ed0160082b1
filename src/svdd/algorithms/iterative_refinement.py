"""Reward-guided iterative refinement (RERD: Uehara et al., ICML 2025, PMLR 267:60515; code
``masa-ue/ProDifEvo-Refinement``, read as in ../shared/reference/frontier.md §3.5).

Alternate partial noising with reward-guided denoising. Noising a sample of π ∝ p_pre·exp(r/α)
with the forward process and denoising it with the exact soft-optimal kernel leaves π invariant,
so the iteration targets π; here the denoiser is SVDD-PM (greedy, ``num_candidates`` children
per step), the practical choice of the paper's code, which makes it a search.

Notation (code → paper):
  ``num_iterations``    rounds of refinement S (the budget knob)
  ``renoise_fraction``  how far back each round goes: the round restarts at grid level
                        j = round(K·(1 − fraction)), i.e. time t_j; a masked sample has each token
                        re-masked independently with probability m(t_j) (the forward process
                        q(x_t | x0); the code re-masks exactly ⌊0.1·L⌋ positions), a Gaussian one is
                        noised to x_{t_j} = √ᾱ x0 + √(1 − ᾱ) ε
  ``alpha``             α of the selection step: before each round the batch is resampled
                        ∝ exp(r/α) (multinomial, from ``generator``); the code hard-codes exp(5r),
                        α = 0.2
  ``num_candidates``    M, SVDD children per denoising step

Cost: the first generation is SVDD-PM: 1 + (K − 1)·M nfe per sample on Gaussian processes
(K·M on masked: the last step's M children are scored by the reward, not the denoiser); each
round adds one denoiser call at t_j plus M per remaining step: 1 + (K − j − 1)·M (Gaussian), and
M reward calls per step. Budget knob ``num_iterations``.
"""

from __future__ import annotations

import torch

from ._common import Run, check_alpha, check_common, check_positive_int, select_children
from .dts import look_ahead, ranked
from .registry import AlgorithmError, register


def svdd_greedy(run: Run, x, x0_hat, ts, start: int, M: int, generator, callback_offset: int = 0):
    """SVDD-PM (argmax of M children by the x̂0 look-ahead) from grid level ``start`` to clean."""
    proc, K = run.process, ts.shape[0] - 1
    v = ok = None
    n = x.shape[0]
    for k in range(start, K):
        t, t_next, final = ts[k], ts[k + 1], k == K - 1
        trans = proc.transition(x, t, t_next, x0_hat=x0_hat)
        m = 1 if proc.kind == "gaussian" and bool((trans.std == 0).all()) else M
        children = torch.stack([trans.sample(generator) for _ in range(m)], 1).flatten(0, 1)
        vc, okc, x0c = look_ahead(run, children, t_next, final)
        best = ranked(vc, okc).view(n, m).argmax(1)
        flat = torch.arange(n, device=best.device) * m + best
        x, x0_hat, v, ok = children[flat], x0c[flat], vc[flat], okc[flat]
        run.step_done(callback_offset + k, t, t_next, x, x0_hat, values=v)
    return x, v, ok


def renoise(proc, x0, t, generator):
    """A draw of the forward process q(x_t | x0)."""
    if proc.kind == "masked":
        m = float(proc.mask_prob(t))
        gdev = generator.device if generator is not None else x0.device
        u = torch.rand(x0.shape, generator=generator, device=gdev, dtype=torch.float64).to(x0.device)
        return torch.where(u < m, torch.full_like(x0, proc.mask_id), x0)
    return proc.q_sample(x0, t, generator=generator)


@register("iterative-refinement", budget_knob="num_iterations")
def iterative_refinement(process, reward_fn, *, num_samples, num_steps, num_iterations=4, num_candidates=4,
                         renoise_fraction=0.3, alpha=0.2, generator=None, callback=None, max_batch_size=None):
    """RERD: resample ∝ exp(r/alpha), re-noise to a fraction of the grid, regenerate by SVDD-PM; repeat."""
    check_common(process, num_samples, num_steps, spec_name="iterative-refinement")
    if not isinstance(num_iterations, int) or isinstance(num_iterations, bool) or num_iterations < 0:
        raise AlgorithmError(f"num_iterations must be an integer >= 0, got {num_iterations!r}")
    check_positive_int("num_candidates", num_candidates)
    alpha = check_alpha(alpha)
    if alpha == 0:
        raise AlgorithmError("iterative-refinement resamples ∝ exp(r/alpha) and needs alpha > 0 "
                             "(the code's exp(5r) is alpha = 0.2)")
    if not 0.0 < float(renoise_fraction) <= 1.0:
        raise AlgorithmError(f"renoise_fraction must be in (0, 1], got {renoise_fraction!r}")
    run = Run(process, reward_fn, max_batch_size=max_batch_size, callback=callback)
    proc, B, K, M = run.process, num_samples, num_steps, num_candidates
    torch.set_grad_enabled(False)
    ts = proc.timesteps(K)
    j = min(max(int(round(K * (1.0 - float(renoise_fraction)))), 0), K - 1)
    # 0. a first generation by SVDD-PM (greedy)
    x = proc.prior(B, generator)
    x, r, ok = svdd_greedy(run, x, proc.predict_x0(x, ts[0]), ts, 0, M, generator)
    history = [float(r.float().mean())]
    for it in range(num_iterations):
        # 1. selection: resample the batch ∝ exp(r/alpha) (invalid samples have weight 0)
        idx = select_children(r.float().view(1, -1).expand(B, -1), alpha, generator, ok.view(1, -1).expand(B, -1))
        x0 = x[idx]
        # 2. partial noising to t_j with the forward process, 3. regeneration from t_j
        x_t = renoise(proc, x0, ts[j], generator)
        x, r, ok = svdd_greedy(run, x_t, proc.predict_x0(x_t, ts[j]), ts, j, M, generator,
                               callback_offset=(it + 1) * K)
        history.append(float(r.float().mean()))
        run.record(reward_mean=r.float().mean())
    return run.result(x, r.float(), None, num_iterations=num_iterations, num_candidates=M, alpha=alpha,
                      renoise_level=j, reward_mean_by_round=history)
