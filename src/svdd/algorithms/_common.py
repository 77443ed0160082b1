"""Shared plumbing for algorithms: counting denoiser evaluations (nfe, per batch element),
safe/counted rewards, argument checks, chunked evaluation and result assembly.

Invalid samples (a reward that raised or returned NaN / ±inf) keep the reward's declared
``invalid_value`` as their reported reward, but every selection ranks them below every valid
sample: ``selection_scores(values, valid)`` is the value with −inf at invalid rows, and the
argmax / softmax draw (``select_children``), top-k, resampling and search comparisons all run on
it; when every candidate is invalid the argmax takes the first and the softmax draw is uniform.
``Run.result`` reports the reward counters and emits one ``RewardWarning`` per run when
anything failed.

Host round-trips: nothing here reads a device tensor on the host inside a step loop. Per-step
records stay tensors until ``Run.result``, SVDD's softmax selection draws on the values' device
with the caller's generator, and ``host_grid`` copies the time grid to the host once, before
the loop, so step decisions (``t_next == 0``) cost no sync.
"""

from __future__ import annotations

import time
import warnings
from typing import Callable, Optional

import torch
from torch import Tensor

from ..accelerator import auto_max_batch_size
from ..rewards.base import Reward, RewardOutput, RewardWarning, as_reward
from ..types import SampleResult, StepInfo
from ..values.posterior_mean import PosteriorMeanValue
from .registry import AlgorithmError


class CountingProcess:
    """Wraps a process; counts denoiser evaluations per batch element (``nfe``) and gradient
    passes. ``transition(x0_hat=given)`` costs nothing; otherwise one evaluation per row.
    ``max_batch_size="auto"`` is resolved at the first denoiser call (``auto_max_batch_size``:
    sized to free memory on CUDA, no chunking on the CPU)."""

    def __init__(self, process, max_batch_size: int | str | None = None):
        self.process = process
        self.kind = process.kind
        self.nfe = 0
        self.grad_passes = 0
        self.max_batch_size = check_max_batch_size(max_batch_size)

    def __getattr__(self, name):  # timesteps, prior, alpha_bar, mask_prob, mask_id, ...
        return getattr(self.process, name)

    def predict_x0(self, x_t: Tensor, t) -> Tensor:
        self.nfe += x_t.shape[0]

        def forward(x: Tensor) -> Tensor:
            return self.process.predict_x0(x, t)

        if self.max_batch_size == "auto":
            self.max_batch_size = auto_max_batch_size(forward, x_t)
        return chunked(forward, x_t, self.max_batch_size)

    def transition(self, x_t: Tensor, t, t_next, x0_hat: Optional[Tensor] = None, **kw):
        if x0_hat is None:
            x0_hat = self.predict_x0(x_t, t)
        return self.process.transition(x_t, t, t_next, x0_hat=x0_hat, **kw)


def chunked(fn: Callable[[Tensor], Tensor], x: Tensor, max_batch_size: Optional[int]) -> Tensor:
    """``fn(x)`` in slices of at most ``max_batch_size`` rows (so large M never runs out of memory)."""
    if not max_batch_size or x.shape[0] <= max_batch_size:
        return fn(x)
    return torch.cat([fn(x[i:i + max_batch_size]) for i in range(0, x.shape[0], max_batch_size)])


def check_max_batch_size(max_batch_size):
    """``None`` (or 0: no chunking), a positive int, or ``"auto"``."""
    if max_batch_size is None or max_batch_size == "auto":
        return max_batch_size
    if isinstance(max_batch_size, bool) or not isinstance(max_batch_size, int) or max_batch_size < 0:
        raise AlgorithmError(f"max_batch_size must be a positive integer or 'auto', got {max_batch_size!r}")
    return max_batch_size


def check_common(process, num_samples: int, num_steps: int, *, spec_name: str, kinds=("gaussian", "masked")):
    if process.kind not in kinds:
        alt = "svdd-pm, best-of-n or smc" if process.kind == "masked" else "svdd-pm"
        raise AlgorithmError(f"{spec_name} does not support {process.kind} processes; use {alt} instead")
    if not isinstance(num_samples, int) or num_samples < 1:
        raise AlgorithmError(f"num_samples must be a positive integer, got {num_samples!r}")
    if not isinstance(num_steps, int) or num_steps < 1:
        raise AlgorithmError(f"num_steps must be a positive integer, got {num_steps!r}")


def check_positive_int(name: str, value) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise AlgorithmError(f"{name} must be an integer >= 1, got {value!r}")


def check_alpha(alpha) -> float:
    alpha = float(alpha)
    if not alpha >= 0:
        raise AlgorithmError(f"alpha must be >= 0 (0 = argmax), got {alpha!r}")
    return alpha


def wrap_reward(reward_fn) -> Reward:
    r = as_reward(reward_fn)
    r.reset_counters()
    return r


class Run:
    """Book-keeping of one algorithm run: timer, counters, per-step arrays, callback."""

    def __init__(self, process, reward_fn, *, max_batch_size=None, callback=None, value_fn=None):
        self.process = CountingProcess(process, max_batch_size)
        self.reward = wrap_reward(reward_fn)
        self.value_fn = value_fn
        self.value_calls = 0
        self.callback = callback
        self.per_step: dict[str, list] = {}
        self.start = time.perf_counter()
        self.grad_was_enabled = torch.is_grad_enabled()

    def value(self, x: Tensor, t) -> Tensor:
        self.value_calls += x.shape[0]
        return self.value_fn(x, torch.as_tensor(t))

    def evaluate_value(self, x: Tensor, t, counts: Optional[Tensor] = None) -> RewardOutput:
        """``value_fn(x, t)`` with a validity mask: a PM value inherits it from the reward;
        otherwise non-finite values are invalid (and reported as the reward's invalid_value)."""
        if isinstance(self.value_fn, PosteriorMeanValue):
            self.value_calls += x.shape[0]
            return self.value_fn.evaluate(x, torch.as_tensor(t), counts=counts)
        v = self.value(x, t)
        ok = torch.isfinite(v)
        return RewardOutput(torch.where(ok, v, torch.full_like(v, self.reward.invalid_value)), ok)

    def record(self, **arrays) -> None:
        """Append per-step values; one-element tensors stay on their device until ``result``
        (no host round-trip per step) and become Python numbers there."""
        for k, v in arrays.items():
            scalar = isinstance(v, Tensor) and v.numel() == 1
            self.per_step.setdefault(k, []).append(v.detach().clone() if scalar else v)

    def step_done(self, step: int, t, t_next, x, x0_hat, **info) -> None:
        if self.callback is not None:
            self.callback(StepInfo(step, torch.as_tensor(t), torch.as_tensor(t_next), x, x0_hat, info))

    def result(self, x0: Tensor, rewards: Tensor, log_weights: Optional[Tensor] = None, **extra) -> SampleResult:
        torch.set_grad_enabled(self.grad_was_enabled)
        n = x0.shape[0]
        message = self.reward.failure_message()
        if message is not None:   # once per run, however many calls failed
            warnings.warn(message, RewardWarning, stacklevel=3)
        info = {
            "nfe": int(self.process.nfe),
            "nfe_per_sample": self.process.nfe / max(n, 1),
            "grad_passes": int(self.process.grad_passes),
            "value_calls": int(self.value_calls),
            "wall_time_s": time.perf_counter() - self.start,
            **self.reward.counters(),
            **{k: _to_host(v) for k, v in self.per_step.items()},
            **extra,
        }
        return SampleResult(x0.detach(), rewards.detach().float(), log_weights, info)


def _to_host(values: list) -> list:
    """Per-step records as Python numbers: one transfer for a list of one-element tensors."""
    scalars = [v for v in values if isinstance(v, Tensor)]
    if not scalars:
        return values
    if len(scalars) == len(values) and len({(v.device, v.dtype) for v in scalars}) == 1:
        return torch.stack([v.reshape(()) for v in scalars]).tolist()
    return [v.item() if isinstance(v, Tensor) else v for v in values]


def selection_scores(values: Tensor, valid: Optional[Tensor] = None) -> Tensor:
    """What selections rank: ``values`` with −inf where ``valid`` is False (or the value is not
    finite), so an invalid sample ranks below every valid one whatever its invalid_value."""
    ok = torch.isfinite(values) if valid is None else valid.to(values.device) & torch.isfinite(values)
    return torch.where(ok, values, torch.full_like(values, -torch.inf))


def select_children(values: Tensor, alpha: float, generator: Optional[torch.Generator],
                    valid: Optional[Tensor] = None) -> Tensor:
    """values (B, M) -> index (B,): argmax (first on ties) at alpha == 0, else a draw from
    softmax(values / alpha) computed in log space (float64); invalid children (``valid`` False,
    or non-finite values) are never kept while a row has a valid one (argmax: the first child,
    softmax: uniform, when none is). The draw runs on the values' device when the generator
    lives there (no host round-trip); a generator on another device draws on its own side."""
    values = selection_scores(values, valid)
    if alpha == 0:
        return values.argmax(dim=1)
    logits = values.double() / alpha
    logits = torch.where(torch.isfinite(logits), logits, torch.full_like(logits, -1e300))
    logp = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    probs = logp.exp()
    if generator is None or generator.device == probs.device:
        return torch.multinomial(probs, 1, generator=generator).squeeze(1)
    return torch.multinomial(probs.cpu(), 1, generator=_cpu_generator(generator)).squeeze(1).to(values.device)


def _cpu_generator(generator: Optional[torch.Generator]) -> Optional[torch.Generator]:
    if generator is None or generator.device.type == "cpu":
        return generator
    # derive a CPU generator deterministically from a device generator
    seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device).item())
    return torch.Generator().manual_seed(seed)


def host_grid(ts: Tensor) -> list[float]:
    """The time grid as Python floats: one device-to-host copy before a step loop, so per-step
    decisions (``t_next == 0``) never read a device tensor inside it."""
    return torch.as_tensor(ts).tolist()
