"""Gaussian diffusion and flows: one kernel family on any schedule ``x_t = a_t·x0 + s_t·ε``.

``schedule(t) -> (a_t, s_t)``; ``t == 0`` is clean. Variance preserving (DDPM / DDIM):
``a = √ᾱ, s = √(1 − ᾱ)`` with ``t = n + 1`` for training index ``n`` (the model sees ``t − 1``).
Rectified flow (diffusers' FlowMatch): ``a = 1 − σ, s = σ`` with ``t = σ·num_train_timesteps``
(the model sees ``t``). See ``schedules.VPSchedule`` / ``FlowSchedule``.

The network's output becomes ``x0_hat`` by ``prediction_type``: ``epsilon`` (x0 = (x − s·ε)/a),
``sample``, ``v_prediction`` (v = a·ε − s·x0, so x0 = (a·x − s·v)/(a² + s²)) or ``flow``
(velocity v = ε − x0, so x0 = (x − s·v)/(a + s); rectified flow: x − σ·v).

Reverse step ``t → t'`` (DDIM-η on the general schedule; ``../shared/reference/frontier.md`` §2),
with ``ε_hat = (x_t − a_t·x0_hat)/s_t``::

    σ_η = η · s' · sqrt(1 − (a_t·s'/(a'·s_t))²)
    x_t' = a'·x0_hat + sqrt(s'² − σ_η²)·ε_hat + σ_η·z,     z ~ N(0, I)

``renoise=True`` takes σ = s' instead (ε̂ dropped: x_t' = a'·x0_hat + s'·z, the full re-noise of
diffusers' FlowMatch ``stochastic_sampling``; more noise than η = 1).
``η = 1`` is the DDPM posterior q(x_t' | x_t, x0_hat) on any sub-grid (VP: σ² = (1 − ᾱ')/(1 − ᾱ)·
(1 − ᾱ/ᾱ')); ``η = 0`` is deterministic DDIM, and for a flow exactly the Euler step of diffusers'
``FlowMatchEulerDiscreteScheduler``: (1 − σ')(x − σv) + σ'(x + (1 − σ)v) = x + (σ' − σ)·v. At σ = 1
(a_t = 0) the ratio is 0, so η = 1 re-noises fully (x_t' = a'·x0_hat + s'·z) and x0 is never
divided by a_t for ``flow`` / ``sample`` predictions. The last step (t' = 0, s' = 0) lands exactly
on ``x0_hat`` for every η. ``log_prob`` is the normalised Gaussian density SUMMED over the event
dimensions (it raises for a deterministic step).

Clipping (diffusers' ``clip_sample`` / ``thresholding``) belongs to the step, as in diffusers'
schedulers: ``predict_x0`` is the network's own prediction and ``clip_x0`` clips it (to
``[−clip_sample, clip_sample]``, or Imagen's dynamic thresholding: per sample, s = the
``dynamic_thresholding_ratio`` quantile of |x0_hat| clamped to [1, ``sample_max_value``],
x0 = clamp(x0_hat, −s, s)/s). The step uses the clipped x0 in its first term and keeps the
network's ε̂ = (x_t − a_t·x0_hat)/s_t in the direction term (diffusers' DDIM with
``use_clipped_model_output=False``); ``use_clipped_model_output=True`` recomputes ε̂ from the
clipped x0, which at η = 1 is diffusers' DDPM step (the posterior mean at the clipped x0).

``precision="bf16"`` runs the model under ``torch.autocast`` (``svdd.accelerator``); its output
is cast back to the sample dtype (float32) before the formulas above. Schedule coefficients are
float64 on the device of ``t``, so a step never moves ``t`` to the host. ``timesteps(K)`` is the
schedule's grid, or ``grid(K)`` when given (``from_diffusers`` passes the scheduler's own
``set_timesteps`` grid plus the final clean time).
"""

from __future__ import annotations

import math
from typing import Callable, Optional, Sequence

import torch
from torch import Tensor

from ..accelerator import HasPrecision, autocast
from .schedules import FlowSchedule, VPSchedule

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


_PREDICTION_TYPES = ("epsilon", "sample", "v_prediction", "flow")


class GaussianProcess(HasPrecision):
    """``model(x_t, timestep)`` is called like a diffusers UNet: ``timestep`` a LongTensor of
    training indices (B,) on a VP schedule, the float time ``t`` (B,) on a flow schedule; the
    output a tensor or an object with ``.sample``.

    ``schedule``: ``None`` (VP over ``alphas_cumprod``), ``"flow"`` (rectified flow over 1000
    training timesteps; ``alphas_cumprod`` must then be None) or a ``VPSchedule`` /
    ``FlowSchedule``. ``grid``: ``K -> (K + 1,)`` descending times ending at 0 (default: the
    schedule's own). ``precision``: ``"fp32"`` (default), ``"bf16"`` or ``"auto"`` for the model
    forward."""

    kind = "gaussian"

    def __init__(self, model: Callable, alphas_cumprod: Tensor | Sequence[float] | None = None,
                 prediction_type: str = "epsilon", eta: float = 1.0, clip_sample: Optional[float] = None, *,
                 sample_shape: Optional[Sequence[int]] = None, device=None, dtype: torch.dtype = torch.float32,
                 model_kwargs: Optional[dict] = None, precision: str = "fp32", use_clipped_model_output: bool = False,
                 thresholding: bool = False, dynamic_thresholding_ratio: float = 0.995, sample_max_value: float = 1.0,
                 schedule=None, grid: Optional[Callable[[int], Tensor]] = None, renoise: bool = False):
        if prediction_type not in _PREDICTION_TYPES:
            raise ValueError(f"prediction_type must be one of {', '.join(map(repr, _PREDICTION_TYPES))}, "
                             f"got {prediction_type!r}")
        if not eta >= 0:
            raise ValueError("eta must be >= 0")
        if schedule is None or schedule == "vp":
            if alphas_cumprod is None:
                raise ValueError("a VP GaussianProcess needs alphas_cumprod (or pass schedule='flow')")
            schedule = VPSchedule(alphas_cumprod)
        elif schedule == "flow":
            if alphas_cumprod is not None:
                raise ValueError("schedule='flow' takes no alphas_cumprod")
            schedule = FlowSchedule()
        elif not isinstance(schedule, (VPSchedule, FlowSchedule)):
            raise ValueError(f"schedule must be None, 'vp', 'flow', a VPSchedule or a FlowSchedule, got {schedule!r}")
        elif alphas_cumprod is not None:
            raise ValueError("pass either alphas_cumprod or schedule=, not both")
        self.noise_schedule = schedule
        self.is_flow = isinstance(schedule, FlowSchedule)
        self.model = model
        self.num_train_timesteps = schedule.num_train_timesteps
        if not self.is_flow:
            self._alpha_bar = schedule.table  # index t
        self._grid = grid
        self.prediction_type = prediction_type
        self.eta = float(eta)
        self.renoise = bool(renoise)
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
        if not self.is_flow:
            self._table(self.device)   # the device's copy of ᾱ is made here, not inside a step loop
        self.dtype = dtype
        self.model_kwargs = model_kwargs or {}
        self.precision = precision

    # -- time ---------------------------------------------------------------------------------
    def timesteps(self, num_steps: int) -> Tensor:
        """``num_steps + 1`` descending times from the noisy end to 0 (clean): the ``grid`` given
        at construction (a diffusers scheduler's ``set_timesteps`` grid), else the schedule's own
        (VP: "trailing" spacing, ``num_steps`` ≤ T; flow: FlowMatch's default σ grid)."""
        if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 1:
            raise ValueError(f"num_steps must be a positive integer, got {num_steps!r}")
        if not self.is_flow and self._grid is None and num_steps > self.num_train_timesteps:
            raise ValueError(f"num_steps must be in [1, {self.num_train_timesteps}], got {num_steps}")
        ts = self._grid(num_steps) if self._grid is not None else self.noise_schedule.timesteps(num_steps)
        ts = torch.as_tensor(ts, dtype=torch.float64).flatten()
        if ts.numel() != num_steps + 1 or float(ts[-1]) != 0.0 or bool((ts[1:] >= ts[:-1]).any()):
            raise ValueError(f"the time grid for {num_steps} steps must be {num_steps + 1} strictly decreasing times "
                             f"ending at 0, got {ts.tolist()}")
        return ts.to(self.device)

    def schedule(self, t: Tensor | float) -> tuple[Tensor, Tensor]:
        """(a_t, s_t) in float64 on the process device: x_t = a_t·x0 + s_t·ε."""
        if self.is_flow:
            sig = self.noise_schedule.sigma(t).to(self.device)
            return 1.0 - sig, sig
        ab = self.alpha_bar(t)
        return ab.sqrt(), (1.0 - ab).clamp_min(0.0).sqrt()

    def alpha_bar(self, t: Tensor | float) -> Tensor:
        """ᾱ_t; on a flow schedule the variance-preserving equivalent a²/(a² + s²) (same SNR)."""
        if self.is_flow:
            a, s = self.schedule(t)
            return a.pow(2) / (a.pow(2) + s.pow(2))
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
        """N(0, I) of shape (num_samples, *sample_shape): one ``torch.randn`` call, as diffusers'
        ``randn_tensor`` draws the initial latents (so a pipeline's seed gives the same start)."""
        if self.sample_shape is None:
            raise ValueError("GaussianProcess needs sample_shape=(C, H, W) (or (D,)) to draw from the prior")
        return torch.randn((num_samples, *self.sample_shape), generator=generator, device=self.device, dtype=self.dtype)

    def model_output(self, x_t: Tensor, t: Tensor | float) -> Tensor:
        t = torch.as_tensor(t, device=x_t.device)
        timestep = self.noise_schedule.model_timestep(t)
        if timestep.dim() == 0:
            timestep = timestep.expand(x_t.shape[0])
        with autocast(self.precision, x_t.device):
            out = self.model(x_t, timestep, **self.model_kwargs)
        out = getattr(out, "sample", out)
        if isinstance(out, tuple):
            out = out[0]
        return out.to(x_t.dtype)

    def x0_from_output(self, out: Tensor, x_t: Tensor, t: Tensor | float) -> Tensor:
        a, s = (self._bcast(c, x_t) for c in self.schedule(t))
        if self.prediction_type == "epsilon":
            x0 = (x_t - s * out) / a.clamp_min(1e-12)
        elif self.prediction_type == "sample":
            x0 = out
        elif self.prediction_type == "flow":  # v = ε − x0
            x0 = x_t - s * out if self.is_flow else (x_t - s * out) / (a + s)
        else:  # v_prediction: v = a·ε − s·x0
            x0 = a * x_t - s * out if not self.is_flow else (a * x_t - s * out) / (a * a + s * s)
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
        """(a', sqrt(s'² − σ_η²), σ_η, a_t, s_t) for the DDIM-η step t → t' (float64)."""
        eta = self.eta if eta is None else eta
        a_t, s_t = self.schedule(t)
        a_s, s_s = self.schedule(t_next)
        if self.renoise:      # x_t' = a'·x0_hat + s'·z (diffusers' FlowMatch stochastic_sampling)
            return a_s, torch.zeros_like(s_s), s_s, a_t, s_t
        if self.is_flow:
            var = eta ** 2 * s_s.pow(2) * (1 - (a_t * s_s / (a_s * s_t).clamp_min(1e-300)).pow(2)).clamp_min(0.0)
        else:   # the same quantity, in diffusers' DDIM form
            ab_t, ab_s = a_t.pow(2), a_s.pow(2)
            var = eta ** 2 * (1 - ab_s) / (1 - ab_t).clamp_min(1e-20) * (1 - ab_t / ab_s)
        var = var.clamp_min(0.0)
        dir_coef = (s_s.pow(2) - var).clamp_min(0.0).sqrt()
        return a_s, dir_coef, var.sqrt(), a_t, s_t

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
        """Forward noising x_t = a_t·x0 + s_t·ε."""
        if noise is None:
            noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        a, s = (self._bcast(c, x0) for c in self.schedule(t))
        return a * x0 + s * noise

    def forward_step(self, x: Tensor, t: Tensor | float, t_noisier: Tensor | float, noise: Optional[Tensor] = None,
                     generator: Optional[torch.Generator] = None) -> Tensor:
        """A draw of the forward Markov kernel q(x_b | x_t) for b = ``t_noisier`` ≥ t:
        x_b = (a_b/a_t)·x + sqrt(s_b² − (a_b/a_t)²·s_t²)·z."""
        if noise is None:
            noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        a_t, s_t = self.schedule(t)
        a_b, s_b = self.schedule(t_noisier)
        ratio = a_b / a_t.clamp_min(1e-300)
        std = (s_b.pow(2) - ratio.pow(2) * s_t.pow(2)).clamp_min(0.0).sqrt()
        return self._bcast(ratio, x) * x + self._bcast(std, x) * noise

    def q_posterior(self, x0: Tensor, x_t: Tensor, t: Tensor | float, t_next: Tensor | float):
        """Mean and std of the DDPM posterior q(x_s | x_t, x0) (for checks and ELBOs)."""
        a_t, s_t = (self._bcast(c, x_t) for c in self.schedule(t))
        a_s, s_s = (self._bcast(c, x_t) for c in self.schedule(t_next))
        r = a_t / a_s                         # α_{t|s}
        var_ts = s_t.pow(2) - r.pow(2) * s_s.pow(2)
        mean = (r * s_s.pow(2) / s_t.pow(2)) * x_t + (a_s * var_ts / s_t.pow(2)) * x0
        var = var_ts * s_s.pow(2) / s_t.pow(2)
        return mean, var.clamp_min(0.0).sqrt()
