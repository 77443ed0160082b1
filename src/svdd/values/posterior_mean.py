"""SVDD-PM value: ``v_hat(x_t, t) = r(x0_hat(x_t, t))``, the reward of the pretrained model's own
x0 prediction (SVDD Algorithm 4). No training.

Gaussian processes: ``x0_hat = E[x0 | x_t]`` (Tweedie). Masked processes: ``x0_hat`` holds the
clean-token probabilities; masked positions are filled with their argmax (the SVDD code), or,
with ``num_mc_samples = S > 1``, with S float64 draws whose rewards are combined as
``alpha · log mean exp(r/alpha)`` (plain mean when ``alpha == 0``) — a Monte Carlo estimate of
the soft value that avoids the r(E[x0]) approximation at the price of S reward calls.

Validity: the value inherits it from the reward (``evaluate`` returns ``(values, valid)``); with
S > 1 draws a value is valid when any draw is, and is computed from the valid draws only
(invalid draws count as reward −inf: ``alpha · log((1/S) Σ_valid exp(r/alpha))``, or the mean of
the valid draws when ``alpha == 0``). A Gaussian process's ``clip_x0`` (diffusers'
``clip_sample`` / dynamic thresholding) is applied to x0_hat before the reward sees it.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

from ..rewards.base import RewardOutput, evaluate_reward


class PosteriorMeanValue:
    uses_x0_hat = True  # algorithms may pass the x0_hat they already computed (SVDD reuse)

    def __init__(self, process, reward_fn, *, num_mc_samples: int = 1, alpha: float = 0.0,
                 generator: Optional[torch.Generator] = None):
        if num_mc_samples < 1:
            raise ValueError("num_mc_samples must be >= 1")
        self.process = process
        self.reward_fn = reward_fn
        self.num_mc_samples = int(num_mc_samples)
        self.alpha = float(alpha)
        self.generator = generator
        self.differentiable = bool(getattr(reward_fn, "differentiable", False))

    def __call__(self, x_t: Tensor, t) -> Tensor:
        return self.evaluate(x_t, t).values

    def from_x0_hat(self, x_t: Tensor, x0_hat: Tensor, t=None) -> Tensor:
        return self.evaluate_from_x0_hat(x_t, x0_hat, t).values

    def evaluate(self, x_t: Tensor, t, counts: Optional[Tensor] = None) -> RewardOutput:
        if float(torch.as_tensor(t).max()) == 0.0:
            return evaluate_reward(self.reward_fn, x_t, counts)
        return self.evaluate_from_x0_hat(x_t, self.process.predict_x0(x_t, t), t, counts)

    def evaluate_from_x0_hat(self, x_t: Tensor, x0_hat: Tensor, t=None, counts: Optional[Tensor] = None) -> RewardOutput:
        """``(r(x0_hat), valid)``; ``counts`` (B,) = samples each row stands for (deduplication)."""
        if self.process.kind != "masked":
            clip = getattr(self.process, "clip_x0", None)
            return evaluate_reward(self.reward_fn, clip(x0_hat) if callable(clip) else x0_hat, counts)
        if self.num_mc_samples == 1:
            return evaluate_reward(self.reward_fn, self.process.decode_x0_hat(x_t, x0_hat), counts)
        S, B = self.num_mc_samples, x_t.shape[0]
        draws = torch.cat([self.process.decode_x0_hat(x_t, x0_hat, self.generator, sample=True) for _ in range(S)])
        out = evaluate_reward(self.reward_fn, draws, None if counts is None else counts.repeat(S))
        r, ok = out.values.view(S, B).double(), out.valid.view(S, B)
        valid = ok.any(0)
        if self.alpha == 0:
            v = (r * ok).sum(0) / ok.sum(0).clamp_min(1)
        else:
            logits = torch.where(ok, r / self.alpha, torch.full_like(r, -torch.inf))
            v = self.alpha * (torch.logsumexp(logits, 0) - math.log(S))
        iv = torch.full_like(v, float(getattr(self.reward_fn, "invalid_value", 0.0) or 0.0))
        return RewardOutput(torch.where(valid, v, iv).float(), valid)


def posterior_mean_value(process, reward_fn, *, num_mc_samples: int = 1, alpha: float = 0.0,
                         generator: Optional[torch.Generator] = None) -> PosteriorMeanValue:
    """The SVDD-PM value function ``(x_t, t) -> r(x0_hat(x_t, t))``."""
    return PosteriorMeanValue(process, reward_fn, num_mc_samples=num_mc_samples, alpha=alpha, generator=generator)
