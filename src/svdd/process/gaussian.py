"""Gaussian (DDPM / DDIM) diffusion.

Forward: ``x_t = sqrt(ᾱ_t)·x0 + sqrt(1 − ᾱ_t)·ε``. Time here is ``t = n + 1`` for training index
``n`` (so the model is called with ``timestep = t − 1``), and ``t = 0`` is clean (ᾱ = 1).

Reverse step ``t → s`` (DDIM, Song et al. 2021 eq. 12), with ``x0_hat`` and
``ε_hat = (x_t − sqrt(ᾱ_t)·x0_hat)/sqrt(1 − ᾱ_t)``::

    σ² = η² · (1 − ᾱ_s)/(1 − ᾱ_t) · (1 − ᾱ_t/ᾱ_s)
    x_s = sqrt(ᾱ_s)·x0_hat + sqrt(1 − ᾱ_s − σ²)·ε_hat + σ·z,     z ~ N(0, I)

``η = 1`` is exactly the DDPM posterior q(x_s | x_t, x0_hat) on any sub-grid; ``η = 0`` is
deterministic DDIM. The last step (s = 0, ᾱ_s = 1) lands exactly on ``x0_hat``.

Clipping (diffusers' ``clip_sample`` / ``thresholding``) belongs to the step, as in diffusers'
schedulers: ``predict_x0`` is the network's own prediction and ``clip_x0`` clips it (to
``[−clip_sample, clip_sample]``, or Imagen's dynamic thresholding: per sample, s = the
``dynamic_thresholding_ratio`` quantile of |x0_hat| clamped to [1, ``sample_max_value``],
x0 = clamp(x0_hat, −s, s)/s). The step uses the clipped x0 in its first term and keeps the
network's ε̂ = (x_t − sqrt(ᾱ_t)·x0_hat)/sqrt(1 − ᾱ_t) in the direction term (diffusers' DDIM with
``use_clipped_model_output=False``); ``use_clipped_model_output=True`` recomputes ε̂ from the
clipped x0, which at η = 1 is diffusers' DDPM step (the posterior mean at the clipped x0).

``precision="bf16"`` runs the model under ``torch.autocast`` (``svdd.accelerator``); its output
is cast back to the sample dtype (float32) before the formulas above. ᾱ is looked up in a copy
of the table on the device of ``t``, so a step never moves ``t`` to the host.
"""

from __future__ import annotations

import math
from typing import Callable, Optional, Sequence

import torch
from torch import Tensor

from ..accelerator import HasPrecision, autocast

_LOG_2PI = math.log(2 * math.pi)


class DeterministicStepError(ValueError):
    pass


class GaussianTransition:
    """N(mean, std² I) per sample; ``std`` is (B,) (0 for a deterministic step)."""

    def __init__(self, mean: Tensor, std: Tensor, x0_hat: Tensor):
        self.mean = mean
        self.std = std
        self.x0_hat = x0_hat

    def _std(self) -> Tensor:
        return self.std.view(-1, *([1] * (self.mean.dim() - 1)))

    def sample(self, generator: Optional[torch.Generator] = None, noise: Optional[Tensor] = None) -> Tensor:
        if noise is None:
            noise = torch.randn(self.mean.shape, generator=generator, device=self.mean.device, dtype=self.mean.dtype)
        return self.mean + self._std() * noise

    def log_prob(self, x_next: Tensor) -> Tensor:
        if torch.any(self.std <= 0):
            raise DeterministicStepError(
                "log_prob of a deterministic step (eta=0 or the final step to clean) is undefined; "
                "use eta > 0 for methods that need transition densities")
        std = self._std()
        z = (x_next - self.mean) / std
        d = self.mean[0].numel()
        return (-0.5 * z.pow(2) - torch.log(std)).flatten(1).sum(1) - 0.5 * d * _LOG_2PI


class GaussianProcess(HasPrecision):
    """``model(x_t, timestep)`` is called like a diffusers UNet: ``timestep`` a LongTensor of
    training indices (B,); the output a tensor or an object with ``.sample``.
    ``precision``: ``"fp32"`` (default), ``"bf16"`` or ``"auto"`` for the model forward."""

    kind = "gaussian"

    def __init__(self, model: Callable, alphas_cumprod: Tensor | Sequence[float], prediction_type: str = "epsilon",
                 eta: float = 1.0, clip_sample: Optional[float] = None, *, sample_shape: Optional[Sequence[int]] = None,
                 device=None, dtype: torch.dtype = torch.float32, model_kwargs: Optional[dict] = None,
                 precision: str = "fp32", use_clipped_model_output: bool = False, thresholding: bool = False,
                 dynamic_thresholding_ratio: float = 0.995, sample_max_value: float = 1.0):
        if prediction_type not in ("epsilon", "sample", "v_prediction"):
            raise ValueError(f"prediction_type must be 'epsilon', 'sample' or 'v_prediction', got {prediction_type!r}")
        if eta < 0:
            raise ValueError("eta must be >= 0")
        self.model = model
        ac = torch.as_tensor(alphas_cumprod, dtype=torch.float64).flatten()
        self.num_train_timesteps = ac.numel()
        self._alpha_bar = torch.cat([torch.ones(1, dtype=torch.float64), ac])  # index t
        self.prediction_type = prediction_type
        self.eta = float(eta)
        self.clip_sample = clip_sample
        self.use_clipped_model_output = bool(use_clipped_model_output)
        if thresholding and not (0 < float(dynamic_thresholding_ratio) <= 1 and float(sample_max_value) >= 1):
            raise ValueError("dynamic thresholding needs 0 < dynamic_thresholding_ratio <= 1 and sample_max_value >= 1")
        self.thresholding = bool(thresholding)
        self.dynamic_thresholding_ratio = float(dynamic_thresholding_ratio)
        self.sample_max_value = float(sample_max_value)
        self.sample_shape = tuple(sample_shape) if sample_shape is not None else None
        if device is None:
            try:
                device = next(model.parameters()).device
            except (AttributeError, StopIteration):
                device = torch.device("cpu")
        self.device = torch.device(device)
        self._table(self.device)   # the device's copy of ᾱ is made here, not inside a step loop
        self.dtype = dtype
        self.model_kwargs = model_kwargs or {}
        self.precision = precision

    # -- time ---------------------------------------------------------------------------------
    def timesteps(self, num_steps: int) -> Tensor:
        """``num_steps + 1`` descending times from T (pure noise end) to 0 (clean), evenly spaced
        ("trailing" spacing); ``num_steps`` ≤ T picks a sub-grid of the training timesteps."""
        T = self.num_train_timesteps
        if not 1 <= num_steps <= T:
            raise ValueError(f"num_steps must be in [1, {T}], got {num_steps}")
        ts = torch.linspace(T, 0, num_steps + 1, dtype=torch.float64).round()
        return ts.to(self.device)

    def alpha_bar(self, t: Tensor | float) -> Tensor:
        idx = torch.as_tensor(t, dtype=torch.float64).round().long()
        # take(), not table[idx]: indexing with a 0-d tensor reads the index on the host
        return torch.take(self._table(idx.device), idx).to(self.device)

    def _table(self, device: torch.device) -> Tensor:
        if device.type == "cpu":
            return self._alpha_bar
        cache = self.__dict__.setdefault("_alpha_bar_on", {})   # one copy of the table per device
        if device not in cache:
            cache[device] = self._alpha_bar.to(device)
        return cache[device]

    def _bcast(self, a: Tensor, x: Tensor) -> Tensor:
        a = a.to(device=x.device, dtype=x.dtype)
        if a.dim() == 0:
            return a
        return a.view(-1, *([1] * (x.dim() - 1)))

    # -- sampling -----------------------------------------------------------------------------
    def prior(self, num_samples: int, generator: Optional[torch.Generator] = None) -> Tensor:
        if self.sample_shape is None:
            raise ValueError("GaussianProcess needs sample_shape=(C, H, W) (or (D,)) to draw from the prior")
        return torch.randn((num_samples, *self.sample_shape), generator=generator, device=self.device, dtype=self.dtype)

    def model_output(self, x_t: Tensor, t: Tensor | float) -> Tensor:
        t = torch.as_tensor(t, device=x_t.device)
        timestep = (t.round().long() - 1).clamp_min(0)
        if timestep.dim() == 0:
            timestep = timestep.expand(x_t.shape[0])
        with autocast(self.precision, x_t.device):
            out = self.model(x_t, timestep, **self.model_kwargs)
        out = getattr(out, "sample", out)
        if isinstance(out, tuple):
            out = out[0]
        return out.to(x_t.dtype)

    def x0_from_output(self, out: Tensor, x_t: Tensor, t: Tensor | float) -> Tensor:
        ab = self._bcast(self.alpha_bar(t), x_t)
        if self.prediction_type == "epsilon":
            x0 = (x_t - (1 - ab).sqrt() * out) / ab.sqrt()
        elif self.prediction_type == "sample":
            x0 = out
        else:  # v_prediction
            x0 = ab.sqrt() * x_t - (1 - ab).sqrt() * out
        return x0

    def predict_x0(self, x_t: Tensor, t: Tensor | float) -> Tensor:
        """The network's x0 prediction (unclipped: the step clips it, see ``clip_x0``)."""
        return self.x0_from_output(self.model_output(x_t, t), x_t, t)

    def clip_x0(self, x0: Tensor) -> Tensor:
        """``x0`` as the step uses it: dynamic thresholding, else ``clip_sample``, else unchanged."""
        if self.thresholding:
            flat = x0.reshape(x0.shape[0], -1)
            work = flat if flat.dtype in (torch.float32, torch.float64) else flat.float()
            s = torch.quantile(work.abs(), self.dynamic_thresholding_ratio, dim=1)
            s = s.clamp(min=1.0, max=self.sample_max_value)[:, None]
            return (torch.clamp(work, -s, s) / s).to(x0.dtype).reshape(x0.shape)
        if self.clip_sample is not None:
            return x0.clamp(-self.clip_sample, self.clip_sample)
        return x0

    def step_coefficients(self, t: Tensor | float, t_next: Tensor | float, eta: Optional[float] = None):
        """(sqrt(ᾱ_s), sqrt(1 − ᾱ_s − σ²), σ, sqrt(ᾱ_t), sqrt(1 − ᾱ_t)) for the DDIM step t → s."""
        eta = self.eta if eta is None else eta
        ab_t, ab_s = self.alpha_bar(t), self.alpha_bar(t_next)
        var = eta ** 2 * (1 - ab_s) / (1 - ab_t).clamp_min(1e-20) * (1 - ab_t / ab_s)
        var = var.clamp_min(0.0)
        dir_coef = (1 - ab_s - var).clamp_min(0.0).sqrt()
        return ab_s.sqrt(), dir_coef, var.sqrt(), ab_t.sqrt(), (1 - ab_t).sqrt()

    def transition(self, x_t: Tensor, t: Tensor | float, t_next: Tensor | float,
                   x0_hat: Optional[Tensor] = None, eta: Optional[float] = None) -> GaussianTransition:
        if x0_hat is None:
            x0_hat = self.predict_x0(x_t, t)
        a_s, dir_coef, sigma, a_t, s_t = (self._bcast(c, x_t) for c in self.step_coefficients(t, t_next, eta))
        x0_clean = self.clip_x0(x0_hat)
        eps_hat = (x_t - a_t * (x0_clean if self.use_clipped_model_output else x0_hat)) / s_t.clamp_min(1e-12)
        mean = a_s * x0_clean + dir_coef * eps_hat
        std = torch.as_tensor(sigma, dtype=x_t.dtype, device=x_t.device).flatten()
        if std.numel() == 1:
            std = std.expand(x_t.shape[0])
        return GaussianTransition(mean, std.contiguous(), x0_hat)

    def q_sample(self, x0: Tensor, t: Tensor | float, noise: Optional[Tensor] = None,
                 generator: Optional[torch.Generator] = None) -> Tensor:
        """Forward noising x_t = sqrt(ᾱ_t)·x0 + sqrt(1 − ᾱ_t)·ε."""
        if noise is None:
            noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        ab = self._bcast(self.alpha_bar(t), x0)
        return ab.sqrt() * x0 + (1 - ab).sqrt() * noise

    def q_posterior(self, x0: Tensor, x_t: Tensor, t: Tensor | float, t_next: Tensor | float):
        """Mean and std of the DDPM posterior q(x_s | x_t, x0) (for checks and ELBOs)."""
        ab_t = self._bcast(self.alpha_bar(t), x_t)
        ab_s = self._bcast(self.alpha_bar(t_next), x_t)
        a_ts = ab_t / ab_s  # ᾱ_t/ᾱ_s = product of alphas between s and t
        mean = (ab_s.sqrt() * (1 - a_ts) * x0 + a_ts.sqrt() * (1 - ab_s) * x_t) / (1 - ab_t)
        var = (1 - ab_s) / (1 - ab_t) * (1 - a_ts)
        return mean, var.sqrt()
