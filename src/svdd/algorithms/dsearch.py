"""DSearch / DSearch-R: dynamic beam search with an x̂0 look-ahead (Li et al. 2025, "Dynamic Search
for Inference-Time Alignment in Diffusion Models"; the image fork ``nickjeliopoulos/DSearch:
sd_pipeline.py`` and ``masa-ue/AlignInversePro`` "DDBFS", read as in
../shared/reference/frontier.md §3.2).

A beam of particles moves down the K-step grid. At step i every particle draws children from the
pretrained kernel, each child is scored by the reward of the model's own prediction
r(x̂0(child, t_{i+1})) (the look-ahead, at the child's own time t_{i+1}), the particle keeps its
best child, and the beam is pruned to the ``n_{i+1}`` best particles (global top-k).

Notation (code → paper):
  ``num_samples``       B, the final beam width
  ``oversample``        B_0 / B: the beam starts at B_0 = oversample·B particles
  ``drop_schedule``     beam width n_i: ``exponential`` n_i = max(B, ⌊B_0 (B/B_0)^{i/(K−1)}⌋),
                        ``linear`` (B_0 → B), ``none`` (B_0 throughout, top B at the end)
  ``search_schedule``   step i searches with probability p_i: ``all`` 1, ``exponential``
                        1 − exp(−i/((K−1)/3)) (the fork's default), ``linear`` (i + 1)/K; the
                        coin is drawn from ``generator``
  ``num_candidates``    dup, children per particle on a step that does not search
  ``search_width``      w: a searching step draws ⌊w·dup·B_0/n_i⌋ children per particle, so the
                        total width stays constant while the beam shrinks
  ``replace_fraction``  DSearch-R: no drop; the worst ⌊rate·B⌋ particles are replaced by copies
                        drawn ∝ exp(v̂/``alpha_replace``) from the rest (the fork uses raw
                        softmax(v̂), i.e. alpha_replace = 1; drop and replace are not combined)

Not taken over: DDBFS's ``--temp 0.1`` (it samples a sharpened base model: here the pretrained
kernel is used as it is) and its cost counter (it adds B·depth per block; here every child's
look-ahead is a counted denoiser call). DDBFS's depth-d breadth-first blocks are not built
(depth 1: one step per search).

Cost: every child of a non-final step costs one denoiser call (its x̂0, reused as the kept
child's next denoiser output); final children are scored by the reward. nfe per sample ≈
(B_0 + Σ_i n_i·c_i)/B with c_i children per particle; the schedule coin makes it random, so the
benchmark calibrates it. Budget knob ``num_candidates``.
"""

from __future__ import annotations

import math

import torch

from ._common import Run, check_common, check_positive_int, select_children
from .dts import look_ahead, ranked
from .registry import AlgorithmError, register

DROPS = ("exponential", "linear", "none")
SEARCHES = ("all", "exponential", "linear")


def beam_widths(B: int, B0: int, K: int, drop: str) -> list[int]:
    """n_0..n_K (the beam before each step and after the last)."""
    if drop == "none" or B0 == B:
        return [B0] * K + [B]
    out = []
    for i in range(K):
        f = i / max(K - 1, 1)
        n = B0 * (B / B0) ** f if drop == "exponential" else B0 + (B - B0) * f
        out.append(max(B, int(math.floor(n + 1e-9))))
    return out + [B]


def search_probability(i: int, K: int, schedule: str) -> float:
    if schedule == "all":
        return 1.0
    if schedule == "exponential":
        return 1.0 - math.exp(-i / max((K - 1) / 3.0, 1e-9))
    return (i + 1) / K


def dsearch_loop(process, reward_fn, *, num_samples, num_steps, num_candidates, oversample, search_width,
                 search_schedule, drop_schedule, replace_fraction, alpha_replace, num_mc_samples, generator, callback,
                 max_batch_size, method):
    check_common(process, num_samples, num_steps, spec_name=method)
    check_positive_int("num_candidates", num_candidates)
    check_positive_int("oversample", oversample)
    if drop_schedule not in DROPS:
        raise AlgorithmError(f"unknown drop_schedule {drop_schedule!r}; choose one of {', '.join(DROPS)}")
    if search_schedule not in SEARCHES:
        raise AlgorithmError(f"unknown search_schedule {search_schedule!r}; choose one of {', '.join(SEARCHES)}")
    if not float(search_width) > 0:
        raise AlgorithmError(f"search_width must be > 0, got {search_width!r}")
    if not 0.0 <= replace_fraction < 1.0:
        raise AlgorithmError(f"replace_fraction must be in [0, 1), got {replace_fraction!r}")
    if replace_fraction > 0 and (oversample > 1 and drop_schedule != "none"):
        raise AlgorithmError("DSearch-R replaces instead of dropping: use oversample=1 (or drop_schedule='none')")
    run = Run(process, reward_fn, max_batch_size=max_batch_size, callback=callback)
    proc, B, K = run.process, num_samples, num_steps
    torch.set_grad_enabled(False)
    B0 = oversample * B
    widths = beam_widths(B, B0, K, drop_schedule)
    ts = proc.timesteps(K)
    x = proc.prior(B0, generator)
    x0_hat = proc.predict_x0(x, ts[0])
    coins = torch.rand(K, generator=generator, device=getattr(generator, "device", None) or "cpu").tolist()
    searched = []
    for i in range(K):
        t, t_next, final = ts[i], ts[i + 1], i == K - 1
        n = x.shape[0]
        # 1. children per particle: more on a searching step (constant total width)
        search = coins[i] < search_probability(i, K, search_schedule)
        c = max(1, int(math.floor(search_width * num_candidates * B0 / n))) if search else num_candidates
        trans = proc.transition(x, t, t_next, x0_hat=x0_hat)
        if proc.kind == "gaussian" and bool((trans.std == 0).all()):
            c = 1                              # a deterministic step: every child is the same
        children = torch.stack([trans.sample(generator) for _ in range(c)], 1).flatten(0, 1)
        # 2. look-ahead score of every child at its own time t_{i+1}
        v, ok, x0_c = look_ahead(run, children, t_next, final, num_mc_samples, 0.0, generator)
        score = ranked(v, ok).view(n, c)
        # 3. each particle keeps its best child
        best = score.argmax(1)
        flat = torch.arange(n, device=best.device) * c + best
        x, x0_hat, v, ok = children[flat], x0_c[flat], v[flat], ok[flat]
        s = score.flatten()[flat]
        # 4. prune the beam to n_{i+1} (global top-k) ...
        keep_n = widths[i + 1]
        if keep_n < n:
            keep = torch.topk(s, keep_n, sorted=True).indices
            x, x0_hat, v, ok, s = x[keep], x0_hat[keep], v[keep], ok[keep], s[keep]
        # ... or (DSearch-R) replace the worst fraction by copies of good particles
        if replace_fraction > 0 and not final and x.shape[0] > 1:
            m = x.shape[0]
            n_rep = min(max(1, int(replace_fraction * m)), m - 1)
            order = torch.argsort(s)
            worst, rest = order[:n_rep], order[n_rep:]
            pick = select_children(v[rest].float().view(1, -1).expand(n_rep, -1), float(alpha_replace), generator,
                                   ok[rest].view(1, -1).expand(n_rep, -1))
            src = rest[pick]
            x, x0_hat, v, ok = x.clone(), x0_hat.clone(), v.clone(), ok.clone()
            x[worst], x0_hat[worst], v[worst], ok[worst] = x[src], x0_hat[src], v[src], ok[src]
        searched.append(bool(search))
        run.record(beam_width=int(x.shape[0]), children_per_particle=c)
        run.step_done(i, t, t_next, x, x0_hat, values=v, searched=search)
    # final: the best B clean particles (the beam is B wide by now unless drop_schedule='none')
    s = ranked(v, ok)
    keep = torch.topk(s, B, sorted=True).indices
    return run.result(x[keep], v[keep].float(), None, num_candidates=num_candidates, oversample=oversample,
                      searched_steps=searched)


@register("dsearch", budget_knob="num_candidates")
def dsearch(process, reward_fn, *, num_samples, num_steps, num_candidates=4, oversample=2, search_width=1.0,
            search_schedule="exponential", drop_schedule="exponential", num_mc_samples=1, generator=None,
            callback=None, max_batch_size=None):
    """DSearch: beam search with a shrinking beam, schedule-driven search steps and an x̂0 look-ahead."""
    return dsearch_loop(process, reward_fn, num_samples=num_samples, num_steps=num_steps,
                        num_candidates=num_candidates, oversample=oversample, search_width=search_width,
                        search_schedule=search_schedule, drop_schedule=drop_schedule, replace_fraction=0.0,
                        alpha_replace=1.0, num_mc_samples=num_mc_samples, generator=generator, callback=callback,
                        max_batch_size=max_batch_size, method="dsearch")


@register("dsearch-r", budget_knob="num_candidates")
def dsearch_r(process, reward_fn, *, num_samples, num_steps, num_candidates=4, search_width=1.0,
              search_schedule="exponential", replace_fraction=0.05, alpha_replace=1.0, num_mc_samples=1,
              generator=None, callback=None, max_batch_size=None):
    """DSearch-R: fixed beam; the worst fraction is replaced by copies drawn ∝ exp(v̂/alpha_replace)."""
    return dsearch_loop(process, reward_fn, num_samples=num_samples, num_steps=num_steps,
                        num_candidates=num_candidates, oversample=1, search_width=search_width,
                        search_schedule=search_schedule, drop_schedule="none", replace_fraction=replace_fraction,
                        alpha_replace=alpha_replace, num_mc_samples=num_mc_samples, generator=generator,
                        callback=callback, max_batch_size=max_batch_size, method="dsearch-r")
