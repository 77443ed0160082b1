"""DPS-style reward guidance: every reverse step is tilted by the gradient of the reward of
the model's own x0 prediction (Chung et al., ICLR 2023, Algorithm 1 with ``‖y − A(x̂0)‖`` replaced
by ``−r(x̂0)``; the discrete variant of the SVDD code, arXiv 2408.08252 §6 "DPS").

Notation (code → paper):
  ``x``                x_t, one chain per sample (no interaction)
  ``x0_hat``           x̂0(x_t), the denoiser output (Tweedie)
  ``guidance_scale``   ρ (Gaussian; DPS's ζ) or the categorical tilt strength (masked)
  Gaussian, ``mode="variance"`` (default): x_{t−1} ~ N(μ_pre + ρ·σ_t²·∇_{x_t} r(x̂0), σ_t² I),
      the first-order tilt of p_pre towards exp(ρ·r) (ρ = 1/α is the tilt of p_α);
  Gaussian, ``mode="constant"``: x_{t−1} = x'_{t−1} + ρ·∇_{x_t} r(x̂0) (DPS eq. 16, also on
      deterministic steps);
  masked: q_l(k) ∝ p_pre,l(k)·exp(ρ·Δ_{l,k}) with Δ the gradient w.r.t. the one-hot input
      through the denoiser (``through_model=True``, the default on masked processes, as the
      SVDD code; the denoiser must accept a float one-hot input) or w.r.t. x̂0 (False).
  ``through_model``    Gaussian default False: ∇_{x_t} r(x̂0) ≈ sqrt(ᾱ_t)·∇_{x0} r(x̂0) (no
      backward through the network; see ``svdd.process.guided``); True: exact backpropagation
      through the denoiser.

Cost: ``nfe = K`` and ``grad_passes = K`` per sample (one denoiser call, whose x̂0 the step
reuses, and one backward pass per step); reward calls ``K + 1`` per sample. There is no budget
knob (``budget_knob=None``): DPS spends a fixed K evaluations. Needs a differentiable reward.
"""

from __future__ import annotations

import torch

from ..process.guided import GuidanceError, GuidedProcess
from ._common import Run, check_common
from .registry import AlgorithmError, register


@register("dps", needs_gradients=True, budget_knob=None)
def dps(process, reward_fn, *, num_samples, num_steps, guidance_scale=1.0, mode="variance", through_model=None,
        generator=None, callback=None, max_batch_size=None):
    """Reward-gradient guidance of every step (DPS; discrete first-order tilt on masked)."""
    check_common(process, num_samples, num_steps, spec_name="dps")
    if not getattr(reward_fn, "differentiable", False):
        raise AlgorithmError("dps needs a differentiable reward; use svdd-pm, smc or dno (hybrid) instead")
    if through_model is None:
        through_model = process.kind == "masked"
    run = Run(process, reward_fn, max_batch_size=max_batch_size, callback=callback)
    try:
        guide = GuidedProcess(run.process, run.reward, float(guidance_scale), through_model=through_model, mode=mode)
    except GuidanceError as err:
        raise AlgorithmError(str(err)) from None
    torch.set_grad_enabled(False)
    ts = run.process.timesteps(num_steps)
    x = run.process.prior(num_samples, generator)
    for k in range(num_steps):
        t, t_next = ts[k], ts[k + 1]
        try:
            g = guide.guidance(x, t)
        except GuidanceError as err:
            raise AlgorithmError(str(err)) from None
        trans = guide.transition(x, t, t_next, guidance=g)
        x = trans.sample(generator)
        run.record(reward_x0_hat=g.reward.float().mean())
        run.step_done(k, t, t_next, x, g.x0_hat, reward_x0_hat=g.reward)
    rewards = run.reward(x)
    return run.result(x, rewards, None, guidance_scale=float(guidance_scale), mode=mode, through_model=through_model)
