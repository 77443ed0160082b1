"""SVDD: soft value-based decoding (Li, Uehara et al., arXiv 2408.08252, Algorithm 1).

Notation (code → paper):
  ``x``            x_t^⟨i⟩, one state per sample i (no interaction between samples)
  ``children``     x_{t−1}^⟨i,m⟩ ~ p_pre(·|x_t^⟨i⟩), m = 1..M, M = ``num_candidates``
  ``values``       v̂_{t−1}(x_{t−1}^⟨i,m⟩), PM: r(x̂0(x_{t−1})), MC: a fitted network
  ``alpha``        α in p_α ∝ p_pre · exp(r/α); the kept child is argmax_m v̂ (α = 0) or a draw
                   from softmax(v̂/α) — the self-normalised IS approximation of the soft-optimal
                   kernel p*(x'|x_t) ∝ p_pre(x'|x_t) exp(v(x')/α)

Cost (per sample, K steps): the M children of a parent share the parent's x0_hat, so drawing
them costs nothing; a PM value needs x̂0 of each child at t_{next}, and that prediction *is*
the next step's denoiser output for the kept child, so it is reused: nfe = 1 + (K − 1)·M
(the first x̂0 on the prior, M per step except the last, whose children are clean and scored
by the reward). The reference code pays K·(M + 1). On masked processes identical children
(frequent early on) are evaluated once. SVDD-MC pays M value calls and one denoiser call
(the kept child) per step.

Host round-trips: the step loop reads no device tensor on the host. Step decisions (last step,
deterministic Gaussian step) come from the time grid, copied to the host once before the loop.
The exception is deduplication (``deduplicate=True``, masked processes): ``torch.unique`` has a
data-dependent size, so it costs one sync per step; pass ``deduplicate=False`` for a sync-free
loop when children rarely repeat. Rewards that need the host (RDKit, docking) sync by nature.

Invalid children (their reward, or the reward of their x̂0, raised or was NaN / ±inf) rank below
every valid child: a sample keeps one only when all M are (``_common.select_children``). On a
grid where every step is deterministic (η = 0, or one step to clean) the M children are equal
and SVDD is plain sampling; it says so with a ``UserWarning``.

``svdd_loop(replace_fraction > 0)`` adds SVDD-R's global step (final paper, Algorithm 2): after
the per-sample selection, the worst ``replace_fraction`` of the batch is replaced by copies
of samples drawn ∝ exp(v̂/alpha_resample) from the rest.
"""

from __future__ import annotations

import warnings
from typing import Optional

import torch
from torch import Tensor

from ..values.posterior_mean import PosteriorMeanValue
from ._common import Run, check_alpha, check_common, check_positive_int, host_grid, select_children, selection_scores
from .registry import AlgorithmError, register


def _unique_rows(x: Tensor, enabled: bool):
    """(distinct rows, inverse, counts): ``counts[j]`` children share distinct row j."""
    if not enabled:
        return x, None, None
    uniq, inverse, counts = torch.unique(x.flatten(1), dim=0, return_inverse=True, return_counts=True)
    return uniq.view(-1, *x.shape[1:]), inverse, counts


def _evaluate_pm(value_fn, x: Tensor, x0_hat: Tensor, t, counts):
    evaluate = getattr(value_fn, "evaluate_from_x0_hat", None)
    if callable(evaluate):
        return evaluate(x, x0_hat, t, counts=counts)
    v = value_fn.from_x0_hat(x, x0_hat, t)
    return v, torch.isfinite(v)


def svdd_loop(process, reward_fn, *, num_samples, num_steps, num_candidates=8, alpha=0.0, value_fn=None,
              generator=None, callback=None, max_batch_size=None, deduplicate=True,
              replace_fraction=0.0, alpha_resample=None, method="svdd"):
    check_common(process, num_samples, num_steps, spec_name=method)
    check_positive_int("num_candidates", num_candidates)
    alpha = check_alpha(alpha)
    if not 0.0 <= replace_fraction < 1.0:
        raise AlgorithmError(f"replace_fraction must be in [0, 1), got {replace_fraction!r}")
    run = Run(process, reward_fn, max_batch_size=max_batch_size, callback=callback, value_fn=value_fn)
    proc, N, M = run.process, num_samples, num_candidates
    pm = value_fn is None or getattr(value_fn, "uses_x0_hat", False)
    if value_fn is None:
        value_fn = PosteriorMeanValue(proc, run.reward, alpha=alpha, generator=generator)
    dedup = deduplicate and proc.kind == "masked"
    # at least one sample is replaced whenever replace_fraction > 0 (and never all of them)
    n_replace = min(max(1, int(round(replace_fraction * N))), N - 1) if replace_fraction > 0 and N > 1 else 0
    alpha_r = alpha if alpha_resample is None else float(alpha_resample)
    with torch.no_grad():
        x, chosen = _loop(run, proc, value_fn, pm, dedup, N, M, num_steps, alpha, n_replace, alpha_r, generator)
    return run.result(x, chosen, None, num_candidates=M, alpha=alpha)


def _deterministic_steps(proc, ts: Tensor) -> Optional[list[bool]]:
    """Per step, whether the pretrained kernel has no noise (Gaussian eta = 0, or the last step),
    for the whole grid in one host copy; None when the process cannot say (checked per step)."""
    if proc.kind != "gaussian":
        return [False] * (ts.shape[0] - 1)
    coefficients = getattr(proc, "step_coefficients", None)
    if coefficients is None:
        return None
    sigma = coefficients(ts[:-1], ts[1:])[2]
    return (sigma.to(getattr(proc, "dtype", torch.float32)) == 0).tolist()   # the dtype of trans.std


def _loop(run, proc, value_fn, pm, dedup, N, M, num_steps, alpha, n_replace, alpha_r, generator):
    ts = proc.timesteps(num_steps)
    grid, frozen = host_grid(ts), _deterministic_steps(proc, ts)   # before the loop: no per-step sync
    if M > 1 and frozen is not None and all(frozen):
        warnings.warn(f"every step of this {num_steps}-step grid is deterministic (eta = 0, or a single step to "
                      f"clean), so all {M} children of a parent are equal and SVDD reduces to plain sampling; "
                      "use eta > 0 (e.g. eta=1, the DDPM posterior)", UserWarning, stacklevel=4)
    x = proc.prior(N, generator)
    x0_hat = proc.predict_x0(x, ts[0])
    for k in range(num_steps):
        t, t_next = ts[k], ts[k + 1]
        final = grid[k + 1] == 0.0
        # 1. M children per parent from the pretrained kernel (one shared x0_hat, no new call)
        trans = proc.transition(x, t, t_next, x0_hat=x0_hat)
        deterministic = frozen[k] if frozen is not None else (
            proc.kind == "gaussian" and bool(torch.all(trans.std == 0)))
        m_eff = 1 if deterministic else M
        children = torch.stack([trans.sample(generator) for _ in range(m_eff)], dim=1).flatten(0, 1)
        # 2. soft value of each distinct child at t_next (PM: r(x0_hat); final: the reward)
        uniq, inverse, counts = _unique_rows(children, dedup)
        x0_uniq = None
        if final:
            v_uniq, ok_uniq = run.reward.evaluate(uniq, counts=counts)
            x0_uniq = uniq
        elif pm:
            x0_uniq = proc.predict_x0(uniq, t_next)
            v_uniq, ok_uniq = _evaluate_pm(value_fn, uniq, x0_uniq, t_next, counts)
        else:
            v_uniq, ok_uniq = run.evaluate_value(uniq, t_next, counts=counts)
        values = (v_uniq[inverse] if inverse is not None else v_uniq).view(N, m_eff).float()
        valid = (ok_uniq[inverse] if inverse is not None else ok_uniq).view(N, m_eff)
        # 3. keep one child per sample: argmax (alpha = 0) or a softmax(v/alpha) draw; an
        #    invalid child is kept only when all M are invalid
        idx = (select_children(values, alpha, generator, valid) if m_eff > 1
               else torch.zeros(N, dtype=torch.long, device=values.device))
        flat = torch.arange(N, device=idx.device) * m_eff + idx
        x = children[flat]
        rows = torch.arange(N, device=idx.device)
        chosen, chosen_ok = values[rows, idx], valid[rows, idx]
        if final:
            x0_hat = x
        elif x0_uniq is not None:   # reuse: the value's x0_hat is the next step's denoiser output
            x0_hat = x0_uniq[inverse[flat]] if inverse is not None else x0_uniq[flat]
        else:
            x0_hat = proc.predict_x0(x, t_next)
        # 4. SVDD-R: replace the worst fraction by copies of promising samples (not at the end)
        #    (invalid samples rank lowest: they are replaced first and never copied while a valid one exists)
        if n_replace > 0 and not final:
            scores = selection_scores(chosen, chosen_ok)
            order = torch.argsort(scores)
            worst, rest = order[:n_replace], order[n_replace:]
            if alpha_r == 0:
                src = rest.flip(0)[torch.arange(n_replace, device=rest.device) % rest.numel()]
            else:
                pick = select_children(chosen[rest].view(1, -1).expand(n_replace, -1), alpha_r, generator,
                                       chosen_ok[rest].view(1, -1).expand(n_replace, -1))
                src = rest[pick]
            x, x0_hat, chosen, chosen_ok = x.clone(), x0_hat.clone(), chosen.clone(), chosen_ok.clone()
            x[worst], x0_hat[worst], chosen[worst], chosen_ok[worst] = x[src], x0_hat[src], chosen[src], chosen_ok[src]
        run.record(value_mean=chosen.float().mean(), unique_children=(uniq.shape[0] / children.shape[0]))
        run.step_done(k, t, t_next, x, x0_hat, values=values, valid=valid, selected=idx)
    return x, chosen


@register("svdd-pm", budget_knob="num_candidates", defaults={"value_fn": None})
def svdd(process, reward_fn, *, num_samples, num_steps, num_candidates=8, alpha=0.0, value_fn=None,
         generator=None, callback=None, max_batch_size=None, deduplicate=True):
    """SVDD: per sample, M pretrained children per step, keep one by soft value (value_fn=None: PM)."""
    return svdd_loop(process, reward_fn, num_samples=num_samples, num_steps=num_steps,
                     num_candidates=num_candidates, alpha=alpha, value_fn=value_fn, generator=generator,
                     callback=callback, max_batch_size=max_batch_size, deduplicate=deduplicate,
                     method="svdd-pm" if value_fn is None else "svdd-mc")


@register("svdd-mc", budget_knob="num_candidates", needs_value=True)
def svdd_mc(process, reward_fn, *, num_samples, num_steps, value_fn=None, num_candidates=8, alpha=0.0,
            generator=None, callback=None, max_batch_size=None, deduplicate=True):
    """SVDD-MC: SVDD with a learned value network (see svdd.values.fit_value)."""
    if value_fn is None:
        raise AlgorithmError("svdd-mc needs value_fn= (fit one with svdd.values.fit_value or `svdd fit-value`); "
                             "or use svdd-pm, which needs no training")
    return svdd(process, reward_fn, num_samples=num_samples, num_steps=num_steps, num_candidates=num_candidates,
                alpha=alpha, value_fn=value_fn, generator=generator, callback=callback,
                max_batch_size=max_batch_size, deduplicate=deduplicate)
