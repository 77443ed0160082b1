"""Noise schedules.

Gaussian (DDPM) schedules give ᾱ over the training timesteps (``alphas_cumprod``); masked
(absorbing-state) schedules give the probability ``m(t)`` that a token is masked at time
``t ∈ [0, 1]``, with ``m(0) = 0`` (clean) and ``m(1) = 1`` (all masks).

- ``loglinear`` (MDLM): total noise σ(t) = −log(1 − t), so the move chance is
  m(t) = 1 − exp(−σ(t)) = t and the NELBO weight m'(t)/m(t) = 1/t.
- ``cosine``: m(t) = 1 − cos(πt/2), weight m'(t)/m(t) = (π/2)·sin(πt/2)/m(t).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def linear_beta_alphas_cumprod(num_train_timesteps: int = 1000, beta_start: float = 1e-4,
                               beta_end: float = 0.02) -> Tensor:
    """ᾱ for the DDPM linear beta schedule (float64, length ``num_train_timesteps``)."""
    betas = torch.linspace(beta_start, beta_end, num_train_timesteps, dtype=torch.float64)
    return torch.cumprod(1.0 - betas, dim=0)


def cosine_alphas_cumprod(num_train_timesteps: int = 1000, s: float = 0.008,
                          max_beta: float = 0.999) -> Tensor:
    """ᾱ for the improved-DDPM cosine schedule (Nichol & Dhariwal 2021)."""
    steps = torch.arange(num_train_timesteps + 1, dtype=torch.float64) / num_train_timesteps
    f = torch.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
    betas = (1 - f[1:] / f[:-1]).clamp(max=max_beta)
    return torch.cumprod(1.0 - betas, dim=0)


class MaskSchedule:
    """m(t): probability that a token is masked at time t ∈ [0, 1]."""

    name = "base"

    def mask_prob(self, t: Tensor) -> Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    def loss_weight(self, t: Tensor) -> Tensor:
        """m'(t)/m(t): the continuous-time NELBO weight of a masked token's cross-entropy."""
        raise NotImplementedError  # pragma: no cover - interface


class LogLinearSchedule(MaskSchedule):
    name = "loglinear"

    def mask_prob(self, t: Tensor) -> Tensor:
        return t.clamp(0.0, 1.0)

    def loss_weight(self, t: Tensor) -> Tensor:
        return 1.0 / t


class CosineSchedule(MaskSchedule):
    name = "cosine"

    def mask_prob(self, t: Tensor) -> Tensor:
        return 1.0 - torch.cos(math.pi / 2 * t.clamp(0.0, 1.0))

    def loss_weight(self, t: Tensor) -> Tensor:
        return (math.pi / 2) * torch.sin(math.pi / 2 * t) / self.mask_prob(t)


MASK_SCHEDULES = {"loglinear": LogLinearSchedule, "cosine": CosineSchedule}


def get_mask_schedule(schedule: str | MaskSchedule) -> MaskSchedule:
    if isinstance(schedule, MaskSchedule):
        return schedule
    try:
        return MASK_SCHEDULES[schedule]()
    except KeyError:
        raise ValueError(f"unknown mask schedule {schedule!r}; choose one of "
                         f"{sorted(MASK_SCHEDULES)}") from None
