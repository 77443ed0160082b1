"""svdd: inference-time reward alignment of pretrained diffusion models.

    import svdd
    result = svdd.sample(process, reward_fn, method="svdd-pm", num_samples=64, num_steps=50,
                         num_candidates=8, generator=torch.Generator().manual_seed(0))
"""

from __future__ import annotations

__version__ = "0.1.0"

from typing import Optional

import torch

from .algorithms import ALGORITHMS, AlgorithmError, get_algorithm
from .pipeline import RewardPipeline
from .process import GaussianProcess, MaskedProcess, from_diffusers, from_transformers
from .rewards.base import RewardError, RewardWarning
from .types import SampleResult, StepInfo
from .values import posterior_mean_value


def sample(process, reward_fn, method: str = "svdd-pm", *, num_samples: int, num_steps: int,
           generator: Optional[torch.Generator] = None, callback=None, value_fn=None,
           max_batch_size=None, **method_options) -> SampleResult:
    """Draw ``num_samples`` reward-aligned samples with the algorithm registered as ``method``.

    Args:
        process: a ``GaussianProcess`` / ``MaskedProcess`` (``from_diffusers``, a domain's
            ``load_process()``, or your own object with the ``DiffusionProcess`` interface).
        reward_fn: ``reward_fn(x0) -> Tensor (B,)``; NaN / ±inf / a raised error score the reward's
            ``invalid_value`` (attribute, default 0), are counted in ``info`` and never win a
            selection. Set ``reward_fn.differentiable = True`` for gradient methods (dps, das, dno).
        method: a name in ``svdd.ALGORITHMS`` (``svdd list methods -v`` shows each one's options):
            ``svdd-pm`` (default), ``svdd-mc``, ``svdd-r``, ``best-of-n``, ``smc``, ``das``,
            ``dps``, ``dno``, the searches, ...
        num_samples, num_steps: samples returned and denoising steps.
        generator: a ``torch.Generator``; same inputs and seed give identical output.
        callback: called with a ``StepInfo`` after every step.
        value_fn: ``value_fn(x, t) -> Tensor (B,)`` (svdd-mc's fitted value; else unused).
        max_batch_size: cap on rows per denoiser call (``"auto"`` sizes it to free GPU memory).
        **method_options: the method's own options, e.g. ``num_candidates=8, alpha=0.0`` for
            svdd-pm or ``num_particles=16, potential="diff"`` for smc.

    Returns:
        ``SampleResult(x0, rewards, log_weights, info)``; ``info`` holds the cost (``nfe``,
        ``reward_calls``, ``value_calls``, ``wall_time_s``) and reward-failure counts.
    """
    import inspect

    spec = get_algorithm(method)
    if process.kind not in spec.kinds:
        raise AlgorithmError(f"{method} does not support {process.kind} processes; use svdd-pm instead")
    if spec.needs_gradients and not getattr(reward_fn, "differentiable", False):
        raise AlgorithmError(f"{method} needs a differentiable reward: set reward_fn.differentiable = True on a reward "
                             "computed with torch ops (or wrap it: svdd.rewards.base.as_reward(fn, differentiable=True)); "
                             "otherwise use svdd-pm, smc or dno (hybrid)")
    kwargs = {**spec.defaults, **method_options, "num_samples": num_samples, "num_steps": num_steps,
              "generator": generator, "callback": callback}
    if value_fn is not None:
        kwargs["value_fn"] = value_fn
    if max_batch_size is not None:
        kwargs["max_batch_size"] = max_batch_size
    if spec.needs_value and kwargs.get("value_fn") is None:
        raise AlgorithmError(f"{method} needs value_fn=...; fit one with svdd.values.fit_value or use svdd-pm")
    params = inspect.signature(spec.fn).parameters
    if not any(p.kind == p.VAR_KEYWORD for p in params.values()):
        unknown = sorted(k for k in kwargs if k not in params and kwargs[k] is not None)
        if unknown:
            options = ", ".join(k for k in params if k not in ("process", "reward_fn"))
            raise AlgorithmError(f"{method} does not take {', '.join(unknown)}; its options: {options}")
        kwargs = {k: v for k, v in kwargs.items() if k in params}
    grad_enabled = torch.is_grad_enabled()
    try:
        return spec.fn(process, reward_fn, **kwargs)
    finally:  # restore grad mode even when an algorithm raises mid-run
        torch.set_grad_enabled(grad_enabled)


def from_pipeline(*args, **kwargs):
    """Build a process from a loaded diffusers pipeline (see ``svdd.process.adapters``)."""
    from .process.adapters import from_pipeline as _impl

    return _impl(*args, **kwargs)


__all__ = ["sample", "ALGORITHMS", "AlgorithmError", "GaussianProcess", "MaskedProcess", "from_diffusers",
           "from_pipeline", "from_transformers", "RewardPipeline", "RewardError", "RewardWarning", "SampleResult",
           "StepInfo", "posterior_mean_value", "__version__"]
