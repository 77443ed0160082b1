"""Sequential Monte Carlo for reward-tilted diffusion (Feynman–Kac steering).

Target: ``p_α(x0) ∝ p_pre(x0)·exp(r(x0)/α)``. ``P = num_particles`` particles move with a
proposal ``q`` (the pretrained kernel, or a gradient-guided one from ``process.guided``) and
carry log-weights updated at every step (Singhal et al. 2025, FK steering, eq. 4–6; the
"SMC" baseline of SVDD, arXiv 2408.08252 §6, is ``potential="diff"``, PM value, resampling
every step):

    log w_k ← log w_{k−1} + log G_k(x_{0:k}) + log p_pre(x_k|x_{k−1}) − log q(x_k|x_{k−1})

Notation (code → paper):
  ``x``              particles x_{t_k}^{(i)}, i = 1..P
  ``value``          v̂_{t_k}(x) (PM: r(x̂0(x)); else ``value_fn``); v̂ := 0 before the first move
  ``potential``      FK potential G_k, λ = 1/α:
                     ``diff``  λ·(v̂_k − v̂_{k−1})  (telescopes to λ·r)
                     ``max``   λ·max_{s≤k} v̂_s     ``sum``  λ·Σ_{s≤k} v̂_s
                     at t = 0 every potential is λ·r(x0) − Σ_{s<K} log G_s along the lineage, so
                     the product over a lineage is always exp(λ·r(x0)) (the correct target)
                     — but only ``diff`` reaches it in practice. ``max`` and ``sum`` tilt the
                     intermediate targets by exp(λ·max v̂) / exp(λ·Σ v̂), far past p_α on a long
                     horizon, and the final correction exp(λ·r − Σ log G) cannot bring the
                     particles back (its weights collapse: final ESS 2–80 of P), so on long
                     horizons they are not the tilted target at any particle count we could
                     afford: the bias does not shrink from P = 256 to 16384. Measured on the
                     Gaussian toy (``GaussianMixtureToy.default()``, r = x, α = 1, K = 20, PM value,
                     resampling every step, weighted mean of x0 over 4 seeds; target: the 20-step
                     model's tilted mean 1.18): diff 1.24 / 1.15 / 1.16 at P = 256 / 1024 / 4096;
                     max 1.58 / 1.25 / 1.64, and 1.51 at P = 16384; sum 1.86 / 2.02 / 2.06, and
                     1.97 at P = 16384 (``python scripts/fk_potentials.py --num-steps 20
                     --particles 256 1024 4096 --seeds 4``). Treat them as FK steering's search
                     heuristics, not as samplers of p_α.
  ``log_weights``    log w, accumulated across steps that do not resample (the FK code
                     overwrites them: issue #12), reset to uniform after a resample
  ``ess_threshold``  resample when ESS < ess_threshold·P; 1.0 = every step (the paper's SMC)
  invalid            a particle whose current value (or final reward) is invalid (raised,
                     NaN / ±inf) has weight 0 in that step's resampling and in the final
                     selection, and its lineage keeps its previous value for the potentials (so
                     an invalid_value never enters the weights); when every particle is
                     invalid the weights are used as they are

Order of one step k (t_k → t_{k+1}): (1) one denoiser call (with a backward pass for a guided
proposal) on the current particles; (2) weight the move into them with G_k; (3) ESS-gated
resampling with ``resample`` (``svdd.resampling``); (4) propose children, storing
``log p_pre − log q``. After the last step the particles are clean, weighted by the reward, and
``num_samples`` of them are selected: ``final="resample"`` (default, resampling to
``num_samples``; returned log-weights uniform), ``"weighted"`` (return all P particles and
their normalised log-weights; needs ``num_samples == num_particles``) or ``"argmax"`` (the
``num_samples`` heaviest, as DAS returns its best particle).

Cost: ``nfe = P·K`` (one denoiser call per particle per step; the PM value of a particle is
computed from the same x̂0 its next move uses), so ``nfe_per_sample = K·P/num_samples``;
reward calls ``P·K`` with PM (P per intermediate step plus the final reward); a guided
proposal adds ``P·K`` gradient passes. Budget knob: ``num_particles``.
"""

from __future__ import annotations

import math
from typing import Callable, Optional

import torch
from torch import Tensor

from ..process.guided import GuidanceError, GuidedProcess
from ..resampling import ResamplingError, ess, get_resampler
from ..values.posterior_mean import PosteriorMeanValue
from ._common import Run, check_common, check_positive_int
from .registry import AlgorithmError, register

POTENTIALS = ("diff", "max", "sum")
FINALS = ("resample", "weighted", "argmax")


def _normalise(log_w: Tensor) -> Tensor:
    return log_w - torch.logsumexp(log_w, 0)


def _live(log_w: Tensor, valid: Tensor) -> Tensor:
    """The log-weights resampling and selection use: −inf for particles whose current value (or
    final reward) is invalid, so an invalid particle never wins; when every particle is invalid,
    the weights are left as they are. No host read."""
    masked = torch.where(valid, log_w, torch.full_like(log_w, -math.inf))
    return torch.where(valid.any(), masked, log_w)


def check_smc_args(alpha, potential, ess_threshold, final, num_samples, num_particles, resample):
    alpha = float(alpha)
    if not alpha > 0:
        raise AlgorithmError(f"SMC needs alpha > 0 (weights are exp(value/alpha)), got {alpha!r}; "
                             "for alpha = 0 use svdd-pm")
    if potential not in POTENTIALS:
        raise AlgorithmError(f"unknown potential {potential!r}; choose one of {', '.join(POTENTIALS)}")
    if not 0.0 <= float(ess_threshold) <= 1.0:
        raise AlgorithmError(f"ess_threshold must be in [0, 1] (1 = resample every step), got {ess_threshold!r}")
    if final not in FINALS:
        raise AlgorithmError(f"unknown final={final!r}; choose one of {', '.join(FINALS)}")
    check_positive_int("num_particles", num_particles)
    if final == "weighted" and num_samples != num_particles:
        raise AlgorithmError("final='weighted' returns every particle: set num_particles == num_samples "
                             "or use final='resample'")
    if final == "argmax" and num_samples > num_particles:
        raise AlgorithmError(f"final='argmax' needs num_particles >= num_samples ({num_particles} < {num_samples})")
    try:
        return alpha, get_resampler(resample)
    except ResamplingError as err:
        raise AlgorithmError(str(err)) from None


class _Lineage:
    """Per-particle FK bookkeeping, resampled together with the particles."""

    def __init__(self, P: int, device):
        z = torch.zeros(P, dtype=torch.float64, device=device)
        self.v_prev, self.v_max, self.v_sum, self.log_g = z.clone(), torch.full_like(z, -math.inf), z.clone(), z.clone()

    def potential(self, v: Tensor, lam: float, kind: str) -> Tensor:
        v = v.to(torch.float64)
        if kind == "diff":
            log_g = lam * (v - self.v_prev)
        elif kind == "max":
            self.v_max = torch.maximum(self.v_max, v)
            log_g = lam * self.v_max
        else:
            self.v_sum = self.v_sum + v
            log_g = lam * self.v_sum
        self.v_prev = v
        self.log_g = self.log_g + log_g
        return log_g

    def final_potential(self, r: Tensor, lam: float) -> Tensor:
        return lam * r.to(torch.float64) - self.log_g

    def take(self, idx: Tensor) -> None:
        for name in ("v_prev", "v_max", "v_sum", "log_g"):
            setattr(self, name, getattr(self, name)[idx])


def smc_loop(run: Run, *, num_samples: int, num_steps: int, num_particles: int, alpha: float,
             potential: str = "diff", ess_threshold: float = 1.0, resample="multinomial",
             guide: Optional[GuidedProcess] = None, guidance_scale: Optional[Callable[[int, float], float]] = None,
             tempering: Optional[Callable] = None, final: str = "resample", generator=None, num_mc_samples: int = 1):
    """The shared particle loop of ``smc`` and ``das``.

    ``tempering(k, v, log_w) -> λ_k ∈ [0, 1]`` scales the value of step k (twist λ_k·v̂; 1 when
    None); ``guidance_scale(k, λ_k)`` is the proposal's scale (default λ_k/α)."""
    alpha, resampler = check_smc_args(alpha, potential, ess_threshold, final, num_samples, num_particles, resample)
    proc, P = run.process, num_particles
    lam = 1.0 / alpha
    pm = run.value_fn is None
    pm_value = PosteriorMeanValue(proc, run.reward, num_mc_samples=num_mc_samples, alpha=alpha, generator=generator)
    torch.set_grad_enabled(False)

    ts = proc.timesteps(num_steps)
    x = proc.prior(P, generator)
    log_w = torch.zeros(P, dtype=torch.float64, device=x.device)
    lineage = _Lineage(P, x.device)
    pending = torch.zeros_like(log_w)       # log p_pre − log q of the last move
    valid = torch.ones(P, dtype=torch.bool, device=x.device)   # the current value of each particle is valid
    resample_steps, ancestors = [], []
    lam_k = 1.0
    for k in range(num_steps):
        t, t_next = ts[k], ts[k + 1]
        # 1. denoiser (and reward gradient) at the current particles
        g = guide.guidance(x, t) if guide is not None else None
        x0_hat = g.x0_hat if g is not None else proc.predict_x0(x, t)
        # 2. weight the move that produced x: G_k from the (tempered) value at t
        if k >= 1:
            if pm and g is not None and proc.kind == "gaussian":
                v, ok = g.reward, run.reward.last_valid   # the guidance's own reward call
            elif pm:
                v, ok = pm_value.evaluate_from_x0_hat(x, x0_hat, t)
            else:
                v, ok = run.evaluate_value(x, t)
            valid = ok.to(valid.device)
            v = v.to(torch.float64)
            if tempering is not None:   # an invalid value is seen as the lineage's previous (untempered) one
                carry = lineage.v_prev / lam_k if lam_k > 0 else torch.zeros_like(v)
                lam_k = float(tempering(k, torch.where(valid, v, carry), log_w + pending, lineage))
            # an invalid value carries no information: the lineage keeps its previous value
            log_w = log_w + pending + lineage.potential(torch.where(valid, lam_k * v, lineage.v_prev), lam, potential)
        elif tempering is not None:
            lam_k = float(tempering(k, None, log_w, lineage))
        live = _live(log_w, valid)
        cur_ess = ess(live)
        # 3. ESS-gated resampling (weights are uniform at k = 0: nothing to do); particles with
        #    an invalid value have weight 0 here unless all have
        resampled = k > 0 and (ess_threshold >= 1.0 or cur_ess < ess_threshold * P)
        if resampled:
            idx = resampler(live, P, generator).to(x.device)
            valid = valid[idx]
            x, x0_hat = x[idx], x0_hat[idx]
            if g is not None:
                g = type(g)(g.x0_hat[idx], g.reward[idx], g.grad[idx])
            lineage.take(idx)
            log_w = torch.zeros_like(log_w)
            resample_steps.append(k)
            ancestors.append(idx.cpu())
        # 4. propose children (pretrained kernel, or the guided one with its density ratio)
        if g is not None:
            scale = guidance_scale(k, lam_k) if guidance_scale is not None else lam_k * lam
            trans = guide.transition(x, t, t_next, guidance=g, scale=scale)
            x_new = trans.sample(generator)
            try:
                pending = trans.log_ratio(x_new).to(torch.float64)
            except GuidanceError as err:
                raise AlgorithmError(str(err)) from None
        else:
            trans = proc.transition(x, t, t_next, x0_hat=x0_hat)
            x_new = trans.sample(generator)
        x = x_new
        run.record(ess=cur_ess, resampled=resampled, tempering=lam_k)
        run.step_done(k, t, t_next, x, x0_hat, log_weights=_live(log_w, valid), ess=cur_ess, resampled=resampled)

    # 5. clean particles: final potential λ·r − Σ log G along the lineage (weight 0 if invalid)
    rewards, ok = run.reward.evaluate(x)
    rewards = rewards.to(torch.float64)
    log_w = log_w + pending + lineage.final_potential(rewards, lam)
    log_w = torch.where(torch.isnan(log_w), torch.full_like(log_w, -math.inf), log_w)
    log_w = _live(log_w, ok.to(log_w.device))
    final_log_w = _normalise(log_w)
    final_ess = ess(log_w)
    # 6. select num_samples particles by weight
    if final == "resample":
        idx = resampler(log_w, num_samples, generator).to(x.device)
        out_lw = torch.full((num_samples,), -math.log(num_samples), dtype=torch.float64)
    elif final == "argmax":
        idx = torch.topk(log_w, num_samples).indices
        out_lw = _normalise(log_w[idx])
    else:
        idx = torch.arange(P, device=x.device)
        out_lw = final_log_w
    return run.result(x[idx], rewards[idx], out_lw, num_particles=P, alpha=alpha, potential=potential,
                      final_log_weights=final_log_w, final_ess=final_ess, resample_steps=resample_steps,
                      ancestors=ancestors, selected=idx.cpu())


@register("smc", budget_knob="num_particles", defaults={"value_fn": None})
def smc(process, reward_fn, *, num_samples, num_steps, num_particles=None, alpha=1.0, potential="diff",
        ess_threshold=1.0, resample="multinomial", value_fn=None, proposal="pretrained", guidance_scale=None,
        guidance_through_model=False, final="resample", num_mc_samples=1, generator=None, callback=None,
        max_batch_size=None):
    """SMC / FK steering: P particles, FK potentials diff|max|sum, ESS-gated resampling."""
    check_common(process, num_samples, num_steps, spec_name="smc")
    num_particles = num_samples if num_particles is None else num_particles
    if proposal not in ("pretrained", "guided"):
        raise AlgorithmError(f"proposal must be 'pretrained' or 'guided', got {proposal!r}")
    run = Run(process, reward_fn, max_batch_size=max_batch_size, callback=callback, value_fn=value_fn)
    guide = None
    if proposal == "guided":
        if not run.reward.differentiable:
            raise AlgorithmError("smc with proposal='guided' needs a differentiable reward; "
                                 "use proposal='pretrained' (or svdd-pm) for black-box rewards")
        guide = GuidedProcess(run.process, run.reward, through_model=guidance_through_model)
    scale_fn = None if guidance_scale is None else (lambda k, lam_k: float(guidance_scale))
    return smc_loop(run, num_samples=num_samples, num_steps=num_steps, num_particles=num_particles, alpha=alpha,
                    potential=potential, ess_threshold=ess_threshold, resample=resample, guide=guide,
                    guidance_scale=scale_fn, final=final, generator=generator, num_mc_samples=num_mc_samples)
