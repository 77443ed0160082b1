"""ε-greedy search over the injected noises (Ramesh & Mardani 2025, "Test-time scaling of diffusion
models via noise trajectory search", arXiv 2506.03164; code ``rvignav/diffusion-tts`` ``edm/main.py``,
read as in ../shared/reference/frontier.md §3.4).

Denoising is a sequence of contextual bandits, one per step: the arm is the noise z injected by
the step x_{t_next} = mean + σ·z (masked processes: the uniforms u = Φ(z) of the categorical
draw's exponential race, as in ``search.NoiseSampler``), its payoff the look-ahead reward
r(x̂0(x_{t_next}, t_next)) — scored at the child's own time t_next (the reference's SD path
scores at the current t, which looks like a bug).

Per step and sample:
  1. draw a fresh pivot z* ~ N(0, I) (pivots are not carried across steps);
  2. repeat for ⌈num_candidates / candidates_per_round⌉ rounds: build ``candidates_per_round``
     candidates (the last round takes what is left), each with probability ε
     fresh noise (explore) and otherwise z* + c·λ·√d·u (exploit), u a random unit vector and
     c ~ U[0, 1) — drawn from ``generator`` (the reference seeds c with Python ``hash()``);
     take the step with each, score it, and move the pivot to the best noise seen so far;
  3. take the step with the pivot.

Notation (code → paper): ``num_candidates`` K·N (the evaluations per step), ``candidates_per_round``
N (so K = ⌈num_candidates/N⌉ rounds), ``epsilon`` ε, ``step_size`` λ,
``d`` the noise dimension. ε = 0 is the paper's zero-order local search (the reference runs
ε = 0.4 under both names unless ``--eps 0`` is passed; here the name is the method and
``epsilon`` is honoured). No norm constraint, as the paper.

Cost: the step's denoiser call on x_t is shared by all candidates; each candidate's look-ahead is
one denoiser call, and the pivot's is reused as the next step's: nfe per sample =
1 + (K_steps − 1)·num_candidates on Gaussian processes (their last step to t = 0 is deterministic, so it
is not searched); masked processes also search the last step, scored by the reward. Budget knob
``num_candidates``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ._common import Run, check_common, check_positive_int
from .dts import look_ahead, ranked
from .registry import AlgorithmError, register


def _step(proc, trans, z: Tensor) -> Tensor:
    if proc.kind == "gaussian":
        return trans.sample(noise=z)
    return trans.sample(noise=torch.special.ndtr(z.to(torch.float64)).clamp(1e-300, 1.0))


@register("noise-trajectory-search", budget_knob="num_candidates")
def noise_trajectory_search(process, reward_fn, *, num_samples, num_steps, num_candidates=8, candidates_per_round=4,
                            epsilon=0.4, step_size=0.15, generator=None, callback=None, max_batch_size=None):
    """ε-greedy search over each step's injected noise, scored by the x̂0 reward at t_next."""
    check_common(process, num_samples, num_steps, spec_name="noise-trajectory-search")
    check_positive_int("num_candidates", num_candidates)
    check_positive_int("candidates_per_round", candidates_per_round)
    if not 0.0 <= float(epsilon) <= 1.0:
        raise AlgorithmError(f"epsilon must be in [0, 1], got {epsilon!r}")
    if not float(step_size) >= 0:
        raise AlgorithmError(f"step_size must be >= 0, got {step_size!r}")
    run = Run(process, reward_fn, max_batch_size=max_batch_size, callback=callback)
    proc, B = run.process, num_samples
    torch.set_grad_enabled(False)
    ts = proc.timesteps(num_steps)
    x = proc.prior(B, generator)
    x0_hat = proc.predict_x0(x, ts[0])
    dev = x0_hat.device
    gdev = generator.device if generator is not None else dev
    shape = tuple(x.shape[1:]) if proc.kind == "gaussian" else (proc.seq_len, proc.vocab_size)
    d = math.prod(shape)
    ndtype = x.dtype if x.is_floating_point() else torch.float64

    def randn(*s):
        return torch.randn(s, generator=generator, device=gdev, dtype=ndtype).to(dev)

    def rand(*s):
        return torch.rand(s, generator=generator, device=gdev, dtype=ndtype).to(dev)

    v = ok = None
    for k in range(num_steps):
        t, t_next, final = ts[k], ts[k + 1], k == num_steps - 1
        trans = proc.transition(x, t, t_next, x0_hat=x0_hat)
        if proc.kind == "gaussian" and bool((trans.std == 0).all()):
            x = trans.mean                                   # deterministic: nothing to search
            v, ok, x0_hat = look_ahead(run, x, t_next, final)
            run.step_done(k, t, t_next, x, x0_hat, values=v)
            continue
        # 1. a fresh pivot (scored with the first round's candidates)
        pivot = randn(B, d)
        best_s = torch.full((B,), -math.inf, device=dev)
        best_x = best_x0 = best_v = best_ok = None
        for start in range(0, num_candidates, candidates_per_round):
            N = min(candidates_per_round, num_candidates - start)
            # 2. N candidates: fresh noise with probability ε, else a random move around the pivot
            u = randn(B, N, d)
            u = u / u.norm(dim=-1, keepdim=True).clamp_min(1e-12)
            c = rand(B, N, 1)
            local = pivot[:, None] + c * float(step_size) * math.sqrt(d) * u
            explore = rand(B, N, 1) < float(epsilon)
            z = torch.where(explore, randn(B, N, d), local)
            rows = torch.arange(B, device=dev).repeat_interleave(N)
            cand_trans = type(trans)(*(_rows(trans, rows)))
            xs = _step(proc, cand_trans, z.reshape(B * N, *shape))
            vs, oks, x0s = look_ahead(run, xs, t_next, final)
            s = ranked(vs, oks).view(B, N)
            top_s, top = s.max(1)
            pick = torch.arange(B, device=dev) * N + top
            better = top_s > best_s if best_x is not None else torch.ones(B, dtype=torch.bool, device=dev)
            bx = better.view(-1, *([1] * (xs.dim() - 1)))
            bx0 = better.view(-1, *([1] * (x0s.dim() - 1)))
            best_x = xs[pick] if best_x is None else torch.where(bx, xs[pick], best_x)
            best_x0 = x0s[pick] if best_x0 is None else torch.where(bx0, x0s[pick], best_x0)
            best_v = vs[pick] if best_v is None else torch.where(better, vs[pick], best_v)
            best_ok = oks[pick] if best_ok is None else torch.where(better, oks[pick], best_ok)
            pivot = torch.where(better[:, None], z[torch.arange(B, device=dev), top], pivot)
            best_s = torch.where(better, top_s, best_s)
        # 3. the step with the pivot (its look-ahead x̂0 is the next step's denoiser output)
        x, x0_hat, v, ok = best_x, best_x0, best_v, best_ok
        run.record(value_mean=v.float().mean())
        run.step_done(k, t, t_next, x, x0_hat, values=v)
    return run.result(x, v.float(), None, num_candidates=num_candidates, candidates_per_round=candidates_per_round,
                      rounds=-(-num_candidates // candidates_per_round), epsilon=float(epsilon),
                      step_size=float(step_size))


def _rows(trans, rows: Tensor):
    """The constructor arguments of ``trans`` repeated along ``rows`` (one per candidate)."""
    if hasattr(trans, "probs"):                     # masked CategoricalTransition(probs, x0_hat)
        return trans.probs[rows], trans.x0_hat[rows]
    return trans.mean[rows], trans.std[rows], trans.x0_hat[rows]   # GaussianTransition(mean, std, x0_hat)
