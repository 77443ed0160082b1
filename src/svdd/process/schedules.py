"""Noise schedules.

Gaussian schedules ``x_t = a_t·x0 + s_t·ε`` (``schedule(t) -> (a_t, s_t)``, ``t == 0`` clean):

- ``VPSchedule`` (DDPM / DDIM): ``a = √ᾱ, s = √(1 − ᾱ)`` over the training table
  ``alphas_cumprod``; time ``t = n + 1`` for training index ``n`` (the model sees ``t − 1``), and
  ``t = 0`` is the end of sampling with ᾱ = ``final_alpha_cumprod`` (1, or diffusers' DDIM
  ``set_alpha_to_one=False``: ᾱ_0 of the table). ``vp_timesteps`` is diffusers' DDPM/DDIM
  ``set_timesteps`` grid ("linspace" / "leading" + ``steps_offset`` / "trailing").
- ``FlowSchedule`` (rectified flow, diffusers' FlowMatch): ``a = 1 − σ, s = σ`` with
  ``t = σ·num_train_timesteps``; the model sees ``t`` itself (a float).

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


def vp_timesteps(num_train_timesteps: int, num_steps: int, spacing: str = "leading", steps_offset: int = 0) -> Tensor:
    """Training indices (num_steps,) descending, as diffusers' DDPM/DDIM ``set_timesteps``."""
    N, K = int(num_train_timesteps), int(num_steps)
    if not 1 <= K <= N:
        raise ValueError(f"num_steps must be in [1, {N}], got {K}")
    if spacing == "linspace":
        idx = torch.linspace(0, N - 1, K, dtype=torch.float64).round().flip(0)
    elif spacing == "leading":
        idx = (torch.arange(K, dtype=torch.float64) * (N // K)).round().flip(0) + int(steps_offset)
    elif spacing == "trailing":
        idx = torch.round(N - torch.arange(K, dtype=torch.float64) * (N / K)) - 1
    else:
        raise ValueError(f"timestep_spacing must be 'linspace', 'leading' or 'trailing', got {spacing!r}")
    return idx


class VPSchedule:
    """Variance preserving: ``a_t = √ᾱ_t``, ``s_t = √(1 − ᾱ_t)``; ``t = n + 1`` for training index ``n``."""

    kind = "vp"

    def __init__(self, alphas_cumprod, final_alpha_cumprod: float = 1.0, timestep_spacing: str = "trailing",
                 steps_offset: int = 0):
        ac = torch.as_tensor(alphas_cumprod, dtype=torch.float64).flatten()
        if ac.numel() < 1 or not bool(((ac > 0) & (ac <= 1)).all()):
            raise ValueError("alphas_cumprod must be a non-empty table of values in (0, 1]")
        self.num_train_timesteps = ac.numel()
        self.final_alpha_cumprod = float(final_alpha_cumprod)
        self.table = torch.cat([torch.tensor([self.final_alpha_cumprod], dtype=torch.float64), ac])   # index t
        self.timestep_spacing, self.steps_offset = timestep_spacing, int(steps_offset)

    def timesteps(self, num_steps: int) -> Tensor:
        idx = vp_timesteps(self.num_train_timesteps, num_steps, self.timestep_spacing, self.steps_offset)
        if float(idx.max()) >= self.num_train_timesteps or float(idx.min()) < 0:
            raise ValueError(f"the {self.timestep_spacing!r} grid with steps_offset={self.steps_offset} leaves the "
                             f"training range for num_steps={num_steps}")
        return torch.cat([idx + 1, torch.zeros(1, dtype=torch.float64)])

    def model_timestep(self, t: Tensor) -> Tensor:
        return (t.round().long() - 1).clamp_min(0)


class FlowSchedule:
    """Rectified flow: ``a_t = 1 − σ``, ``s_t = σ`` with ``σ = t / num_train_timesteps``."""

    kind = "flow"

    def __init__(self, num_train_timesteps: int = 1000):
        self.num_train_timesteps = int(num_train_timesteps)

    def sigma(self, t: Tensor) -> Tensor:
        return (torch.as_tensor(t, dtype=torch.float64) / self.num_train_timesteps).clamp(0.0, 1.0)

    def timesteps(self, num_steps: int) -> Tensor:
        """diffusers' ``FlowMatchEulerDiscreteScheduler()`` grid (shift 1): σ = linspace(1, 1/N, K), then 0."""
        if num_steps < 1:
            raise ValueError(f"num_steps must be >= 1, got {num_steps}")
        N = self.num_train_timesteps
        sig = torch.linspace(1.0, 1.0 / N, int(num_steps), dtype=torch.float64)
        return torch.cat([sig * N, torch.zeros(1, dtype=torch.float64)])

    def model_timestep(self, t: Tensor) -> Tensor:
        return torch.as_tensor(t, dtype=torch.float64)


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
