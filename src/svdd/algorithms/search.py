"""Search over the sampler's noise (Ma et al. 2025, "Inference-time scaling for diffusion models
beyond scaling denoising steps", arXiv 2501.09732, §3.2; defaults from ``sayakpaul/tt-scale-flux``).

A sampler with its noise written out is a deterministic map ``x0 = M(z)``: ``z`` holds every
Gaussian input — the prior ``x_T`` and the injected noise of each stochastic step (only ``x_T``
for η = 0 DDIM). Masked processes have no prior noise; their per-step categorical draws are
exponential races on uniforms ``u = Φ(z)`` with ``z ~ N(0, I)`` of shape (B, L, V), so the same
Gaussian search space covers both kinds.

Notation (code → paper):
  ``z``                 the noise n (all active slots, concatenated per sample)
  ``num_candidates``    N, sampler evaluations per final sample (the budget)
  random search         z_1..z_N ~ N(0, I); return argmax_i r(M(z_i)) per sample
  zero-order search     pivot n; each round draws ``num_neighbors`` neighbours
                        n' = ‖n‖·(c·u + sqrt(1 − c²)·w), u = n/‖n‖, w ⟂ u a random unit
                        vector, c = ``threshold`` (cosine 0.95: norm-preserving, as tt-scale-flux);
                        move to the best neighbour if it improves r, otherwise restart the next
                        round from a fresh noise (the fix adopted in tt-scale-flux PR #14 for
                        convergence to a fixed point); a restart round evaluates the fresh noise
                        and ``num_neighbors − 1`` of its neighbours, so every round costs the same.
                        The best sample seen is returned.

Both rank an invalid sample (its reward raised or was NaN / ±inf) below every valid one: it is
returned only when no valid one was found, with the reward's ``invalid_value``.

Cost: ``nfe = num_candidates · K`` per sample for both (every evaluation is a full K-step
rollout); reward calls ``num_candidates`` per sample. Budget knob: ``num_candidates``.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

from ._common import Run, check_common, check_positive_int, selection_scores
from .registry import AlgorithmError, register


class NoiseSampler:
    """The sampler as a deterministic map of its Gaussian noise (slot 0: prior; slot k+1: step k)."""

    def __init__(self, run: Run, num_steps: int):
        self.run, self.proc = run, run.process
        self.ts = self.proc.timesteps(num_steps)
        self.num_steps = num_steps
        probe = self.proc.prior(1, torch.Generator(device=_device(self.proc)).manual_seed(0))
        self.dtype = probe.dtype if probe.is_floating_point() else torch.float32
        self.device = probe.device
        if self.proc.kind == "gaussian":
            self.shape = tuple(probe.shape[1:])
            stochastic = [bool(self.proc.step_coefficients(self.ts[k], self.ts[k + 1])[2] > 0) for k in range(num_steps)]
            self.active = [True] + stochastic       # prior + stochastic steps
            self.slot_shapes = [self.shape] * (num_steps + 1)
        else:
            self.shape = (self.proc.seq_len, self.proc.vocab_size)
            self.active = [False] + [True] * num_steps
            self.slot_shapes = [(0,)] + [self.shape] * num_steps

    def draw(self, n: int, generator=None) -> list[Optional[Tensor]]:
        return [torch.randn((n, *s), generator=generator, device=self.device, dtype=self.dtype) if a else None
                for a, s in zip(self.active, self.slot_shapes)]

    def flatten(self, z: list) -> Tensor:
        return torch.cat([s.flatten(1) for s in z if s is not None], 1)

    def unflatten(self, flat: Tensor) -> list:
        out, i = [], 0
        for a, s in zip(self.active, self.slot_shapes):
            if not a:
                out.append(None)
                continue
            d = math.prod(s)
            out.append(flat[:, i:i + d].reshape(flat.shape[0], *s))
            i += d
        return out

    def start(self, z: list, n: int) -> Tensor:
        return z[0] if self.proc.kind == "gaussian" else self.proc.prior(n)

    def step(self, x: Tensor, k: int, z_k: Optional[Tensor]) -> Tensor:
        """One reverse step driven by the given noise (one counted denoiser call)."""
        trans = self.proc.transition(x, self.ts[k], self.ts[k + 1])
        if self.proc.kind == "gaussian":
            return trans.mean if z_k is None else trans.sample(noise=z_k)
        u = torch.special.ndtr(z_k.to(torch.float64)).clamp(1e-300, 1.0)
        return trans.sample(noise=u)

    def decode(self, z: list, report: bool = False) -> Tensor:
        """x0 = M(z); ``report=True`` calls the run's callback after every step."""
        n = next(s for s in z if s is not None).shape[0]
        x = self.start(z, n)
        for k in range(self.num_steps):
            x = self.step(x, k, z[k + 1])
            if report:
                self.run.step_done(k, self.ts[k], self.ts[k + 1], x, None)
        return x


def _device(proc):
    return getattr(proc, "device", torch.device("cpu"))


def neighbours(pivot: Tensor, num: int, threshold: float, generator=None) -> Tensor:
    """``num`` norm-preserving neighbours at cosine ``threshold`` of each row of ``pivot (B, d)``,
    as (B, num, d)."""
    norm = pivot.norm(dim=1, keepdim=True).clamp_min(1e-12)
    u = (pivot / norm)[:, None]                                           # (B,1,d)
    w = torch.randn((pivot.shape[0], num, pivot.shape[1]), generator=generator, device=pivot.device, dtype=pivot.dtype)
    w = w - (w * u).sum(-1, keepdim=True) * u
    w = w / w.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    c = float(threshold)
    return norm[:, None] * (c * u + math.sqrt(max(1.0 - c * c, 0.0)) * w)


@register("random-search", budget_knob="num_candidates")
def random_search(process, reward_fn, *, num_samples, num_steps, num_candidates=8, generator=None, callback=None,
                  max_batch_size=None):
    """Best of num_candidates random noises per sample (Ma et al. 2025 random search)."""
    check_common(process, num_samples, num_steps, spec_name="random-search")
    check_positive_int("num_candidates", num_candidates)
    run = Run(process, reward_fn, max_batch_size=max_batch_size, callback=callback)
    torch.set_grad_enabled(False)
    ns = NoiseSampler(run, num_steps)
    N = num_candidates
    z = ns.draw(num_samples * N, generator)            # row i*N + j: candidate j of sample i
    x0 = ns.decode(z, report=True)
    r, ok = run.reward.evaluate(x0)
    r = r.view(num_samples, N)
    best = selection_scores(r, ok.view(num_samples, N)).argmax(1)   # invalid never wins
    keep = torch.arange(num_samples, device=best.device) * N + best
    return run.result(x0[keep], r.flatten()[keep], None, num_candidates=N,
                      candidate_reward_mean=float(r.float().mean()))


@register("zero-order-search", budget_knob="num_candidates")
def zero_order_search(process, reward_fn, *, num_samples, num_steps, num_candidates=8, num_neighbors=4,
                      threshold=0.95, generator=None, callback=None, max_batch_size=None):
    """Neighbourhood search over the noise with restarts (Ma et al. 2025 zero-order search)."""
    check_common(process, num_samples, num_steps, spec_name="zero-order-search")
    check_positive_int("num_candidates", num_candidates)
    check_positive_int("num_neighbors", num_neighbors)
    if not 0.0 < float(threshold) < 1.0:
        raise AlgorithmError(f"threshold (cosine to the pivot) must be in (0, 1), got {threshold!r}")
    run = Run(process, reward_fn, max_batch_size=max_batch_size, callback=callback)
    torch.set_grad_enabled(False)
    ns = NoiseSampler(run, num_steps)
    if sum(math.prod(s) for a, s in zip(ns.active, ns.slot_shapes) if a) < 2:
        raise AlgorithmError("zero-order-search needs at least 2 noise dimensions (a neighbour at a fixed "
                             "cosine of a 1-D noise is the noise itself); use random-search")
    B = num_samples
    pivot = pivot_r = None   # pivot_r, best_s: selection scores (−inf for invalid samples)
    best_x = best_r = best_s = None
    restart = torch.ones(B, dtype=torch.bool)
    done, rnd = 0, 0
    while done < num_candidates:
        R = min(num_neighbors, num_candidates - done)
        # 1. candidates: neighbours of the pivot, or (restart) a fresh noise and its neighbours
        fresh = ns.flatten(ns.draw(B, generator))
        base = torch.where(restart[:, None].to(fresh.device), fresh, pivot) if pivot is not None else fresh
        cand = neighbours(base, R, threshold, generator)
        cand[restart.to(cand.device), 0] = base[restart.to(cand.device)]
        cand = cand.reshape(B * R, -1)
        # 2. evaluate every candidate with a full rollout
        x0 = ns.decode(ns.unflatten(cand))
        r, ok = run.reward.evaluate(x0)
        r = r.view(B, R)
        top_s, top = selection_scores(r, ok.view(B, R)).max(1)
        top_r = r.gather(1, top[:, None])[:, 0]
        rows = torch.arange(B) * R + top.cpu()
        # 3. move / restart; keep the best sample seen
        improved = restart | (top_s.cpu() > pivot_r) if pivot_r is not None else torch.ones(B, dtype=torch.bool)
        new_pivot = cand.view(B, R, -1)[torch.arange(B), top.cpu()]
        pivot = new_pivot if pivot is None else torch.where(improved[:, None].to(cand.device), new_pivot, pivot)
        pivot_r = top_s.cpu() if pivot_r is None else torch.where(improved, top_s.cpu(), pivot_r)
        restart = ~improved
        if best_r is None:
            best_x, best_r, best_s = x0[rows.to(x0.device)], top_r.clone(), top_s.clone()
        else:
            better = top_s > best_s
            best_x = torch.where(better.view(-1, *([1] * (x0.dim() - 1))), x0[rows.to(x0.device)], best_x)
            best_r, best_s = torch.where(better, top_r, best_r), torch.where(better, top_s, best_s)
        done += R
        rnd += 1
        run.record(best_reward_mean=best_r.float().mean(), restarts=int(restart.sum()))
        run.step_done(rnd, ns.ts[0], ns.ts[-1], best_x, None, best_rewards=best_r)
    return run.result(best_x, best_r, None, num_candidates=num_candidates, num_neighbors=num_neighbors,
                      threshold=float(threshold), rounds=rnd)
