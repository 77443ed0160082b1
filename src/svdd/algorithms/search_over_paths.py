"""Search over paths (Ma et al. 2025, "Inference-time scaling for diffusion models beyond scaling
denoising steps", arXiv 2501.09732, §3.2, the third search algorithm after random and zero-order
search).

1. Run ``num_samples`` = N paths with the pretrained kernel from the prior to grid level
   ``start_step``.
2. Every path is noised *forward* by ``forward_steps`` = Δf grid levels into M =
   ``num_candidates`` copies (independent draws of the forward process q(x_{t'} | x_t));
3. each copy is denoised ``backward_steps`` = Δb > Δf levels with the pretrained kernel and
   scored by the look-ahead r(x̂0) at the level it reached (the reward itself once clean);
   the best N of all N·M copies are kept (global top-N).
4. Repeat 2–3 until the paths are clean (each round moves Δb − Δf levels down the grid).

Forward noising between grid times t < t' (t' noisier), on any Gaussian schedule
x_t = a_t·x0 + s_t·ε (VP or rectified flow): x_{t'} = (a_{t'}/a_t)·x_t + √(s_{t'}² − (a_{t'}s_t/a_t)²)·ε
(VP: √(ᾱ_{t'}/ᾱ_t)·x_t + √(1 − ᾱ_{t'}/ᾱ_t)·ε); masked, each unmasked token is re-masked with
probability (m(t') − m(t))/(1 − m(t)). The paper denoises with the ODE solver; here the
process's own kernel is used (η as configured).

Cost per round: N·M·Δb denoiser calls for the denoising plus N·M for the look-ahead (none when
the copies are clean; then N·M reward calls). Budget knob ``num_candidates``.
"""

from __future__ import annotations

import torch

from ._common import Run, check_common, check_positive_int
from .dts import look_ahead, ranked
from .registry import AlgorithmError, register


def forward_noise(proc, x, t, t_prev, generator):
    """x_{t_prev} ~ q(x_{t_prev} | x_t) for t_prev noisier than t."""
    gdev = generator.device if generator is not None else x.device
    if proc.kind == "masked":
        m, m_prev = float(proc.mask_prob(t)), float(proc.mask_prob(t_prev))
        p = 0.0 if m >= 1.0 else (m_prev - m) / (1.0 - m)
        u = torch.rand(x.shape, generator=generator, device=gdev, dtype=torch.float64).to(x.device)
        return torch.where(u < p, torch.full_like(x, proc.mask_id), x)
    (a, s), (a_prev, s_prev) = _schedule(proc, t), _schedule(proc, t_prev)
    ratio = a_prev / a
    std = (s_prev.pow(2) - ratio.pow(2) * s.pow(2)).clamp_min(0).sqrt()
    eps = torch.randn(x.shape, generator=generator, device=gdev, dtype=x.dtype).to(x.device)
    return ratio.to(x.dtype).to(x.device) * x + std.to(x.dtype).to(x.device) * eps


def _schedule(proc, t):
    """(a_t, s_t) of x_t = a_t·x0 + s_t·ε (VP and flows); processes without ``schedule`` are VP."""
    schedule = getattr(proc, "schedule", None)
    if callable(schedule):
        a, s = schedule(t)
        return torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(s, dtype=torch.float64)
    ab = torch.as_tensor(proc.alpha_bar(t), dtype=torch.float64)
    return ab.sqrt(), (1 - ab).clamp_min(0).sqrt()


@register("search-over-paths", budget_knob="num_candidates")
def search_over_paths(process, reward_fn, *, num_samples, num_steps, num_candidates=4, forward_steps=1,
                      backward_steps=2, start_step=None, generator=None, callback=None, max_batch_size=None):
    """Ma et al.'s search over paths: noise N paths forward into M copies, denoise further, keep the best N."""
    check_common(process, num_samples, num_steps, spec_name="search-over-paths")
    check_positive_int("num_candidates", num_candidates)
    check_positive_int("forward_steps", forward_steps)
    check_positive_int("backward_steps", backward_steps)
    if backward_steps <= forward_steps:
        raise AlgorithmError(f"backward_steps ({backward_steps}) must exceed forward_steps ({forward_steps}), "
                             "or the paths never reach t = 0")
    K = num_steps
    start = K // 4 if start_step is None else start_step
    if not isinstance(start, int) or not 0 <= start < K:
        raise AlgorithmError(f"start_step must be an integer in [0, {K}), got {start!r}")
    run = Run(process, reward_fn, max_batch_size=max_batch_size, callback=callback)
    proc, N, M = run.process, num_samples, num_candidates
    torch.set_grad_enabled(False)
    ts = proc.timesteps(K)
    # 1. N pretrained paths to level `start`
    x = proc.prior(N, generator)
    for k in range(start):
        x = proc.transition(x, ts[k], ts[k + 1]).sample(generator)
        run.step_done(k, ts[k], ts[k + 1], x, None)
    level, rounds = start, 0
    v = ok = None
    while level < K:
        # 2. M forward-noised copies of every path
        back = max(level - forward_steps, 0)
        copies = x.repeat_interleave(M, 0)
        if back < level:
            copies = forward_noise(proc, copies, ts[level], ts[back], generator)
        # 3. denoise Δb levels, score by the look-ahead, keep the global top N
        target = min(back + backward_steps, K)
        for k in range(back, target):
            copies = proc.transition(copies, ts[k], ts[k + 1]).sample(generator)
        vc, okc, _ = look_ahead(run, copies, ts[target], target == K)
        keep = torch.topk(ranked(vc, okc), N, sorted=True).indices
        x, v, ok = copies[keep], vc[keep], okc[keep]
        level, rounds = target, rounds + 1
        run.record(value_mean=v.float().mean(), level=level)
        run.step_done(rounds, ts[back], ts[target], x, None, values=v)
    if v is None:      # start_step == K cannot happen (checked); kept for clarity
        v, ok = run.reward.evaluate(x)
    return run.result(x, v.float(), None, num_candidates=M, forward_steps=forward_steps,
                      backward_steps=backward_steps, start_step=start, rounds=rounds)
