"""Set-level and per-sample image metrics.

- **Diversity**: ``1 − mean_{i<j} cos(f_i, f_j)`` over pairs of samples, with ``f`` either the
  mean-centred pixel vector of each image (so it is 1 − the mean pairwise Pearson correlation
  of pixels) or the evaluation classifier's pooled features. 0 = all samples identical.
- **ELBO proxy** (naturalness under the pretrained model): a Monte Carlo estimate, in bits per
  dimension, of the DDPM variational bound's diffusion and prior terms,

      L(x0) = Σ_{t=2..T} KL(q(x_{t−1}|x_t, x0) ‖ p_θ(x_{t−1}|x_t)) + KL(q(x_T|x0) ‖ N(0, I)),

  with ``KL_t = |c_t·(x0 − x0_hat(x_t, t))|² / (2 β̃_t)``, ``c_t = sqrt(ᾱ_{t−1})·β_t/(1 − ᾱ_t)``
  and ``β̃_t = β_t(1 − ᾱ_{t−1})/(1 − ᾱ_t)`` (fixed "small" variances), estimated from
  ``num_timesteps`` stratified t per sample (fixed seed). The discrete decoder term (t = 1) is
  left out, so it is a *proxy*: compare it across methods on the same model, lower = more
  typical of the model. Costs ``num_timesteps`` denoiser calls per sample.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

__all__ = ["pairwise_diversity", "elbo_proxy_bits_per_dim"]


def pairwise_diversity(features: Tensor, center: bool = True) -> float:
    """1 − mean pairwise cosine similarity of the rows of ``features`` (B, ...)."""
    f = features.detach().float().flatten(1)
    if f.shape[0] < 2:
        return float("nan")
    if center:
        f = f - f.mean(dim=1, keepdim=True)
    f = f / f.norm(dim=1, keepdim=True).clamp_min(1e-12)
    sim = f @ f.T
    n = f.shape[0]
    mean_off_diagonal = (sim.sum() - sim.diagonal().sum()) / (n * (n - 1))
    return float(1.0 - mean_off_diagonal)


@torch.no_grad()
def elbo_proxy_bits_per_dim(process, x0: Tensor, *, num_timesteps: int = 16, seed: int = 0,
                            max_batch_size: Optional[int] = 256) -> Tensor:
    """(B,) Monte Carlo estimate of the DDPM bound's diffusion + prior terms, bits/dim."""
    T = int(process.num_train_timesteps)
    gen = torch.Generator().manual_seed(seed)
    B, D = x0.shape[0], x0[0].numel()
    x0 = x0.float().to(process.device)
    # stratified t in {2, …, T}: one uniform draw in each of num_timesteps equal strata
    K = num_timesteps
    u = (torch.arange(K, dtype=torch.float64)[None, :] + torch.rand(B, K, generator=gen, dtype=torch.float64)) / K
    ts = (2 + (u * (T - 1)).floor().clamp(max=T - 2)).long()                       # (B, K) in [2, T]
    total = torch.zeros(B, dtype=torch.float64)
    for k in range(K):
        t = ts[:, k].to(torch.float64)
        ab_t = process.alpha_bar(t).double().cpu()
        ab_s = process.alpha_bar(t - 1).double().cpu()
        beta = 1 - ab_t / ab_s
        c = ab_s.sqrt() * beta / (1 - ab_t)
        var = beta * (1 - ab_s) / (1 - ab_t)
        noise = torch.randn(x0.shape, generator=gen).to(x0.device)
        t_dev = t.to(process.device)
        x_t = process.q_sample(x0, t_dev, noise=noise)
        parts = []
        step = max_batch_size or B
        for i in range(0, B, step):
            x0_part = process.predict_x0(x_t[i:i + step], t_dev[i:i + step])
            parts.append(process.clip_x0(x0_part) if hasattr(process, "clip_x0") else x0_part)   # as the step uses it
        x0_hat = torch.cat(parts)
        sq = (x0 - x0_hat).double().flatten(1).pow(2).sum(1).cpu()
        total += (T - 1) * c.pow(2) * sq / (2 * var)
    ab_T = process.alpha_bar(torch.tensor(float(T))).double().cpu()
    prior = 0.5 * (ab_T * x0.double().flatten(1).pow(2).cpu() + (1 - ab_T) - 1 - torch.log(1 - ab_T)).sum(1)
    total = total / K + prior
    return (total / (D * math.log(2))).float()
