"""Public protocols and result types (DESIGN §3).

A *process* owns the pretrained reverse kernels ``p_pre(x_{t_next} | x_t)`` on a descending time
grid ``t_0 (noise) > … > t_K = 0 (clean)``. A step returns a *distribution* (``Transition``),
never just a tensor, so algorithms can both sample children and score them (``log_prob``).
Rewards map clean samples to ``(B,)`` scores; values map ``(x_t, t)`` to ``(B,)`` estimates of
the soft value ``v_t(x_t) = alpha · log E[exp(r(x0)/alpha) | x_t]``.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional, Protocol, runtime_checkable

import torch
from torch import Tensor


@runtime_checkable
class Transition(Protocol):
    """p(x_next | x_t) for one step, batched on dim 0."""

    x0_hat: Tensor

    def sample(self, generator: Optional[torch.Generator] = None,
               noise: Optional[Tensor] = None) -> Tensor: ...

    def log_prob(self, x_next: Tensor) -> Tensor: ...


@runtime_checkable
class DiffusionProcess(Protocol):
    kind: str  # "gaussian" | "masked"

    def timesteps(self, num_steps: int) -> Tensor: ...

    def prior(self, num_samples: int, generator: Optional[torch.Generator] = None) -> Tensor: ...

    def predict_x0(self, x_t: Tensor, t: Tensor) -> Tensor: ...

    def transition(self, x_t: Tensor, t: Tensor, t_next: Tensor,
                   x0_hat: Optional[Tensor] = None) -> Transition: ...


RewardFn = Callable[[Tensor], Tensor]
ValueFn = Callable[[Tensor, Tensor], Tensor]


class StepInfo(NamedTuple):
    """What a ``callback`` sees after each denoising step."""

    step: int
    t: Tensor
    t_next: Tensor
    x: Tensor          # state after the step (at t_next)
    x0_hat: Optional[Tensor]
    info: dict


class SampleResult(NamedTuple):
    x0: Tensor
    rewards: Tensor
    log_weights: Optional[Tensor]
    info: dict[str, Any]
