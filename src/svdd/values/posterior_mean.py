"""SVDD-PM value: ``v_hat(x_t, t) = r(x0_hat(x_t, t))``, the reward of the pretrained model's own
x0 prediction (SVDD Algorithm 4). No training.

Gaussian processes: ``x0_hat = E[x0 | x_t]`` (Tweedie). Masked processes: ``x0_hat`` holds the
clean-token probabilities; masked positions are filled with their argmax (the SVDD code), or,
with ``num_mc_samples = S > 1``, with S float64 draws whose rewards are combined as
``alpha · log mean exp(r/alpha)`` (plain mean when ``alpha == 0``) — a Monte Carlo estimate of
the soft value that avoids the r(E[x0]) approximation at the price of S reward calls.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor


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
        if float(torch.as_tensor(t).max()) == 0.0:
            return self.reward_fn(x_t)
        return self.from_x0_hat(x_t, self.process.predict_x0(x_t, t), t)

    def from_x0_hat(self, x_t: Tensor, x0_hat: Tensor, t=None) -> Tensor:
        if self.process.kind != "masked":
            return self.reward_fn(x0_hat)
        if self.num_mc_samples == 1:
            return self.reward_fn(self.process.decode_x0_hat(x_t, x0_hat))
        S, B = self.num_mc_samples, x_t.shape[0]
        draws = torch.cat([self.process.decode_x0_hat(x_t, x0_hat, self.generator, sample=True) for _ in range(S)])
        r = self.reward_fn(draws).view(S, B).double()
        if self.alpha == 0:
            return r.mean(0).float()
        return (self.alpha * (torch.logsumexp(r / self.alpha, 0) - math.log(S))).float()


def posterior_mean_value(process, reward_fn, *, num_mc_samples: int = 1, alpha: float = 0.0,
                         generator: Optional[torch.Generator] = None) -> PosteriorMeanValue:
    """The SVDD-PM value function ``(x_t, t) -> r(x0_hat(x_t, t))``."""
    return PosteriorMeanValue(process, reward_fn, num_mc_samples=num_mc_samples, alpha=alpha, generator=generator)
