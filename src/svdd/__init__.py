"""svdd: inference-time reward alignment of pretrained diffusion models.

    import svdd
    result = svdd.sample(process, reward_fn, method="svdd-pm", num_samples=64, num_steps=50,
                         num_candidates=8, generator=torch.Generator().manual_seed(0))
"""

from __future__ import annotations

__version__ = "0.1.0"

import torch

from .algorithms import ALGORITHMS, AlgorithmError, get_algorithm
from .process import GaussianProcess, MaskedProcess, from_diffusers
from .rewards.base import RewardError, RewardWarning
from .types import SampleResult, StepInfo
from .values import posterior_mean_value


def sample(process, reward_fn, method: str = "svdd-pm", **kwargs) -> SampleResult:
    """Run the algorithm registered as ``method`` (``svdd.ALGORITHMS`` lists them)."""
    spec = get_algorithm(method)
    if process.kind not in spec.kinds:
        raise AlgorithmError(f"{method} does not support {process.kind} processes; use svdd-pm instead")
    if spec.needs_gradients and not getattr(reward_fn, "differentiable", False):
        raise AlgorithmError(f"{method} needs a differentiable reward; use svdd-pm, smc or dno (hybrid) instead")
    if spec.needs_value and kwargs.get("value_fn") is None:
        raise AlgorithmError(f"{method} needs value_fn=...; fit one with svdd.values.fit_value or use svdd-pm")
    grad_enabled = torch.is_grad_enabled()
    try:
        return spec.fn(process, reward_fn, **{**spec.defaults, **kwargs})
    finally:  # restore grad mode even when an algorithm raises mid-run
        torch.set_grad_enabled(grad_enabled)


def from_pipeline(*args, **kwargs):
    """Build a process from a loaded diffusers pipeline (see ``svdd.process.adapters``)."""
    from .process.adapters import from_pipeline as _impl

    return _impl(*args, **kwargs)


__all__ = ["sample", "ALGORITHMS", "AlgorithmError", "GaussianProcess", "MaskedProcess", "from_diffusers",
           "from_pipeline", "RewardError", "RewardWarning", "SampleResult", "StepInfo", "posterior_mean_value", "__version__"]
