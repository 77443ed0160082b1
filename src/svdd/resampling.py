"""Resampling schemes for particle methods, and the effective sample size.

Given log-weights ``log w_1..w_N`` (any scale; normalised here as ``W_i = w_i / Σ w``), a
resampler draws ``num`` ancestor indices ``A_1..A_num`` such that the expected number of
copies of particle ``i`` is ``num · W_i`` (unbiasedness). They differ in variance:

- ``multinomial``: ``A_j`` i.i.d. Categorical(W) (highest variance);
- ``stratified``: one uniform per stratum, ``u_j = (j + U_j)/num``, inverted through the CDF;
- ``systematic``: one shared uniform, ``u_j = (j + U)/num``; every count is within one of
  ``num · W_i``;
- ``residual``: ``⌊num · W_i⌋`` deterministic copies, the remainder multinomial on the
  residual weights;
- ``ssp``: the Srinivasan sampling process (Gerber, Chopin & Whiteley 2019, as in
  ``particles.resampling.ssp``): counts are ``⌊num·W_i⌋`` or ``⌈num·W_i⌉`` with the right
  means, obtained by pairwise randomised rounding.

Every resampler has the one contract ``(log_weights, num, generator) -> indices (num,)``,
sorted ascending, on the device of ``log_weights``. Arithmetic is in float64 and log space, so
weights spanning e^±700 are fine (no linear-space clamp as in the FK code). ``ess(log_weights)``
is ``(Σ w)² / Σ w²``, computed as ``exp(2·logsumexp(lw) − logsumexp(2·lw))``.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import Tensor

Resampler = Callable[[Tensor, int, Optional[torch.Generator]], Tensor]


class ResamplingError(ValueError):
    """Bad resampling input (no finite weight, unknown scheme)."""


def normalized_weights(log_weights: Tensor) -> Tensor:
    """W = softmax(log_weights) in float64 on the CPU; -inf entries get weight 0."""
    lw = log_weights.detach().to(torch.float64).cpu().reshape(-1)
    lw = torch.where(torch.isnan(lw), torch.full_like(lw, -torch.inf), lw)
    if not torch.isfinite(lw).any():
        raise ResamplingError("all log-weights are -inf or NaN; nothing to resample from")
    return torch.softmax(lw, 0)


def ess(log_weights: Tensor) -> float:
    """Effective sample size ``(Σ w)² / Σ w²`` of the (unnormalised) log-weights."""
    lw = log_weights.detach().to(torch.float64).reshape(-1)
    lw = torch.where(torch.isnan(lw), torch.full_like(lw, -torch.inf), lw)
    if not torch.isfinite(lw).any():
        return 0.0
    return float(torch.exp(2 * torch.logsumexp(lw, 0) - torch.logsumexp(2 * lw, 0)))


def _uniform(n: int, generator: Optional[torch.Generator]) -> Tensor:
    if generator is not None and generator.device.type != "cpu":
        return torch.rand(n, generator=generator, device=generator.device, dtype=torch.float64).cpu()
    return torch.rand(n, generator=generator, dtype=torch.float64)


def _invert_cdf(W: Tensor, u: Tensor) -> Tensor:
    """Indices i with cumsum(W)[i-1] <= u < cumsum(W)[i] for sorted u in [0, 1)."""
    cdf = torch.cumsum(W, 0)
    cdf[-1] = 1.0 + 1e-12  # guard round-off: u < 1 always maps to a valid index
    idx = torch.searchsorted(cdf, u, right=True)
    return idx.clamp_max(W.numel() - 1)


def _check_num(num: int) -> int:
    if not isinstance(num, int) or num < 1:
        raise ResamplingError(f"num must be a positive integer, got {num!r}")
    return num


def multinomial(log_weights: Tensor, num: int, generator: Optional[torch.Generator] = None) -> Tensor:
    W = normalized_weights(log_weights)
    num = _check_num(num)
    u = torch.sort(_uniform(num, generator)).values
    return _invert_cdf(W, u).to(log_weights.device)


def stratified(log_weights: Tensor, num: int, generator: Optional[torch.Generator] = None) -> Tensor:
    W = normalized_weights(log_weights)
    num = _check_num(num)
    u = (torch.arange(num, dtype=torch.float64) + _uniform(num, generator)) / num
    return _invert_cdf(W, u).to(log_weights.device)


def systematic(log_weights: Tensor, num: int, generator: Optional[torch.Generator] = None) -> Tensor:
    W = normalized_weights(log_weights)
    num = _check_num(num)
    u = (torch.arange(num, dtype=torch.float64) + _uniform(1, generator)) / num
    return _invert_cdf(W, u).to(log_weights.device)


def residual(log_weights: Tensor, num: int, generator: Optional[torch.Generator] = None) -> Tensor:
    W = normalized_weights(log_weights)
    num = _check_num(num)
    counts = torch.floor(num * W).long()
    rest = num - int(counts.sum())
    if rest > 0:
        resid = num * W - counts.double()
        extra = _invert_cdf(resid / resid.sum(), torch.sort(_uniform(rest, generator)).values)
        counts += torch.bincount(extra, minlength=W.numel())
    return torch.repeat_interleave(torch.arange(W.numel()), counts).to(log_weights.device)


def ssp(log_weights: Tensor, num: int, generator: Optional[torch.Generator] = None) -> Tensor:
    """Srinivasan sampling process: pair up two particles with fractional parts ``ξ_i, ξ_j`` and
    move mass between them so that one of the two becomes integral (0 or 1), choosing the
    direction with the probability that keeps both means; repeat with the survivor."""
    W = normalized_weights(log_weights)
    num = _check_num(num)
    N = W.numel()
    MW = (num * W).tolist()
    counts = [int(v) for v in torch.floor(num * W).long().tolist()]
    xi = [MW[i] - counts[i] for i in range(N)]
    u = _uniform(max(N - 1, 1), generator).tolist()
    i, j = 0, 1
    for k in range(N - 1):
        delta_i = min(xi[j], 1.0 - xi[i])   # raise xi[i], lower xi[j]
        delta_j = min(xi[i], 1.0 - xi[j])   # the opposite
        total = delta_i + delta_j
        p_swap = delta_i / total if total > 0 else 0.0
        if u[k] < p_swap:   # swap roles so that i is always the one raised
            i, j = j, i
            delta_i = delta_j
        if xi[j] < 1.0 - xi[i]:      # j empties: it keeps its floor count
            xi[i] += delta_i
            xi[j] = 0.0
            j = k + 2
        else:                        # i fills up: one more copy of i
            xi[j] -= delta_i
            xi[i] = 0.0
            counts[i] += 1
            i = k + 2
    missing = num - sum(counts)
    if missing > 0:   # round-off: the last survivor carries (almost) a whole particle
        last = i if i < N else j
        counts[last] += missing
    return torch.repeat_interleave(torch.arange(N), torch.tensor(counts)).to(log_weights.device)


RESAMPLERS: dict[str, Resampler] = {
    "multinomial": multinomial,
    "stratified": stratified,
    "systematic": systematic,
    "residual": residual,
    "ssp": ssp,
}


def get_resampler(name_or_fn) -> Resampler:
    """A resampler by name (``RESAMPLERS``) or a callable with the same contract."""
    if callable(name_or_fn):
        return name_or_fn
    try:
        return RESAMPLERS[name_or_fn]
    except KeyError:
        raise ResamplingError(f"unknown resampler {name_or_fn!r}; choose one of {', '.join(RESAMPLERS)}") from None


__all__ = ["RESAMPLERS", "Resampler", "ResamplingError", "ess", "get_resampler", "multinomial", "normalized_weights",
           "residual", "ssp", "stratified", "systematic"]
