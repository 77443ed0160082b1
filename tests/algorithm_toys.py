"""Toy pieces shared by the algorithm tests (not collected: no ``test_`` prefix).

- ``OneHotToyDenoiser``: ``MaskedToy``'s exact denoiser extended multilinearly to float one-hot
  inputs (B, L, V), so gradients w.r.t. the input tokens exist (the discrete DPS / DAS path);
  on token ids it equals the toy's own denoiser.
- ``PositionalReward``: ``r(x) = Σ_l W[l, x_l]`` on token ids, ``Σ_{l,k} x[l,k]·W[l,k]`` on float
  probabilities (differentiable); ``masked_toy_with(reward)`` gives a ``MaskedToy`` whose
  reward table is that reward, so the toy's exact soft value and tilted target apply.
- ``RingReward``: DNO's 2-D ring reward ``sin(4πx) + sin(4πy)`` (differentiable) and its
  non-differentiable twin (``differentiable = False``, computed through numpy).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from svdd.testing import MaskedToy, TableReward


class OneHotToyDenoiser:
    def __init__(self, toy: MaskedToy):
        self.toy = toy
        self.onehot_states = torch.nn.functional.one_hot(toy.clean_states, toy.vocab_size).double()  # (S,L,V)

    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        toy = self.toy
        if not x.is_floating_point():
            x = torch.nn.functional.one_hot(x.long(), toy.vocab_size)
        x = x.double().cpu()
        # consistency of clean state s with x: Π_l (x[l, MASK] + x[l, s_l])
        cons = (x[:, None, :, toy.mask_id] + (x[:, None] * self.onehot_states[None]).sum(-1)).prod(-1)  # (B,S)
        post = toy.joint[None] * cons
        post = post / post.sum(1, keepdim=True)
        marg = torch.einsum("bs,slv->blv", post, self.onehot_states)
        logits = torch.log(marg.clamp_min(1e-300))
        mask = torch.zeros_like(logits)
        mask[..., toy.mask_id] = -1e30
        return (logits + mask).to(torch.float32)


class PositionalReward:
    differentiable = True
    name = "positional"

    def __init__(self, weights: Tensor):
        self.W = weights.to(torch.float64)                 # (L, V), mask column ignored

    def __call__(self, x: Tensor) -> Tensor:
        if x.is_floating_point():                           # probabilities / one-hot (B, L, V)
            return (x * self.W.to(x.dtype)).sum((1, 2))
        return self.W[torch.arange(self.W.shape[0]), x.long().cpu()].sum(1).to(torch.float32)


def masked_toy_with_positional_reward(seed: int = 0, scale: float = 1.0):
    """(toy, reward): the toy's reward table replaced by a random positional reward."""
    toy = MaskedToy(seed=seed)
    g = torch.Generator().manual_seed(seed + 1)
    W = scale * torch.randn(toy.L, toy.vocab_size, generator=g, dtype=torch.float64)
    W[:, toy.mask_id] = 0.0
    reward = PositionalReward(W)
    toy.reward_table = reward(toy.clean_states).double()
    toy.reward = TableReward(toy, toy.reward_table)
    return toy, reward


def onehot_process(toy: MaskedToy):
    from svdd.process.masked import MaskedProcess

    return MaskedProcess(OneHotToyDenoiser(toy), toy.L, toy.vocab_size, toy.mask_id, schedule=toy.schedule)


class RingReward:
    """sin(4πx) + sin(4πy) (DNO's toy reward without the quadratic term)."""

    name = "ring"

    def __init__(self, differentiable: bool = True):
        self.differentiable = differentiable

    def __call__(self, x: Tensor) -> Tensor:
        if self.differentiable:
            return torch.sin(4 * math.pi * x[:, 0]) + torch.sin(4 * math.pi * x[:, 1])
        import numpy as np

        a = x.detach().cpu().numpy()
        return torch.as_tensor(np.sin(4 * np.pi * a[:, 0]) + np.sin(4 * np.pi * a[:, 1]))
