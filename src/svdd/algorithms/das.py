"""DAS: diffusion alignment as sampling — tempered, twisted SMC with a reward-gradient proposal
(Kim, Kim & Park, ICLR 2025, arXiv 2501.05803, Algorithm 1; code ``krafton-ai/DAS``).

Target ``p_α(x0) ∝ p_pre(x0)·exp(r(x0)/α)`` (DAS writes α as ``kl_coeff``). Notation (code →
paper):
  ``x``            particles x_t^{(i)}, i = 1..P (``num_particles``)
  twist            log ψ_k(x) = λ_k · r(x̂0(x))/α, the tempered PM value; λ_k ↗ 1 and the
                   final twist is the untempered r(x0)/α
  proposal q       N(μ_pre + σ_t²·(λ_k/α)·∇_{x_t} r(x̂0(x_t)), σ_t² I) — the first-order tilt of
                   the pretrained kernel (``svdd.process.guided``; gradient at x_t, through the
                   denoiser by default); masked processes use the categorical tilt
  weights          log w += log p_pre(x'|x) + log ψ_{k+1}(x') − log q(x'|x) − log ψ_k(x)
                   (SMC's ``diff`` potential on the tempered value), ESS-gated resampling
                   (``ssp`` at ESS < 0.5·P by default, as DAS)
  tempering        ``"exp"``: λ_k = min((1+γ)^k − 1, 1) with γ such that λ reaches 1 at 87% of
                   the steps (γ = 0.008 for 100 steps, DAS's default); ``"poly"``:
                   λ_k = min((k/k_1)^p, 1), k_1 = 0.87·K, p = ``tempering_power``;
                   ``"adaptive"``: the largest λ_k ∈ [λ_{k−1}, 1] whose weights keep
                   ESS ≥ ``tempering_ess``·P (bisection; DAS uses Adam for the same
                   equation); ``"none"``: λ ≡ 1 (twisted SMC / TDS with a reward twist)

Cost: ``nfe = P·K`` and ``grad_passes = P·K`` (one denoiser call with a backward pass per
particle per step, its x̂0 reused by the step), so ``nfe_per_sample = K·P/num_samples``; reward
calls ``P·K``. Budget knob: ``num_particles``. Needs a differentiable reward.
"""

from __future__ import annotations

from ..process.guided import GuidedProcess
from ..resampling import ess
from ._common import Run, check_common
from .registry import AlgorithmError, register
from .smc import smc_loop

TEMPERINGS = ("exp", "poly", "adaptive", "none")


def tempering_schedule(kind: str, num_steps: int, *, gamma=None, power: float = 1.0, alpha: float = 1.0,
                       target_ess: float = 0.5, num_particles: int = 1):
    """``f(k, v, log_w, lineage) -> λ_k``; see the module docstring."""
    k_end = max(1.0, 0.87 * num_steps)
    if kind == "none":
        return lambda k, v, log_w, lineage: 1.0
    if kind == "exp":
        g = (2.0 ** (1.0 / k_end) - 1.0) if gamma is None else float(gamma)
        return lambda k, v, log_w, lineage: min((1.0 + g) ** k - 1.0, 1.0)
    if kind == "poly":
        return lambda k, v, log_w, lineage: min((k / k_end) ** power, 1.0)
    state = {"lam": 0.0}

    def adaptive(k, v, log_w, lineage):
        if v is None:
            return state["lam"]

        def ess_at(lam):
            return ess(log_w + (lam * v - lineage.v_prev) / alpha)

        lo, hi = state["lam"], 1.0
        if ess_at(hi) >= target_ess * num_particles:
            lo = hi
        elif ess_at(lo) >= target_ess * num_particles:
            for _ in range(30):
                mid = 0.5 * (lo + hi)
                lo, hi = (mid, hi) if ess_at(mid) >= target_ess * num_particles else (lo, mid)
        state["lam"] = lo
        return lo

    return adaptive


@register("das", needs_gradients=True, budget_knob="num_particles")
def das(process, reward_fn, *, num_samples, num_steps, num_particles=None, alpha=1.0, tempering="exp",
        tempering_gamma=None, tempering_power=1.0, tempering_ess=0.5, ess_threshold=0.5, resample="ssp",
        through_model=True, final="resample", generator=None, callback=None, max_batch_size=None):
    """Tempered twisted SMC with a reward-gradient proposal (DAS); differentiable rewards."""
    check_common(process, num_samples, num_steps, spec_name="das")
    if not getattr(reward_fn, "differentiable", False):
        raise AlgorithmError("das needs a differentiable reward; use svdd-pm, smc or dno (hybrid) instead")
    if tempering not in TEMPERINGS:
        raise AlgorithmError(f"unknown tempering {tempering!r}; choose one of {', '.join(TEMPERINGS)}")
    if not float(alpha) > 0:
        raise AlgorithmError(f"das needs alpha > 0, got {alpha!r}; for alpha = 0 use svdd-pm")
    num_particles = num_samples if num_particles is None else num_particles
    run = Run(process, reward_fn, max_batch_size=max_batch_size, callback=callback)
    guide = GuidedProcess(run.process, run.reward, through_model=through_model)
    temper = tempering_schedule(tempering, num_steps, gamma=tempering_gamma, power=tempering_power, alpha=float(alpha),
                                target_ess=tempering_ess, num_particles=num_particles)
    return smc_loop(run, num_samples=num_samples, num_steps=num_steps, num_particles=num_particles, alpha=alpha,
                    potential="diff", ess_threshold=ess_threshold, resample=resample, guide=guide,
                    tempering=temper, final=final, generator=generator)
