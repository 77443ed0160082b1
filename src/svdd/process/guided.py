"""Guided proposals: a process whose reverse kernels are tilted by a reward gradient.

The soft-optimal kernel is ``p*(x'|x_t) ∝ p_pre(x'|x_t) · exp(v(x')/α)``. Linearising the value
around the current state, ``v(x') ≈ v(x_t) + ⟨g, x' − x_t⟩`` with ``g = ∇_{x_t} r(x0_hat(x_t))``,
makes the tilt tractable (``scale`` plays the role of 1/α):

- **Gaussian** ``p_pre = N(μ, σ² I)``: the tilt is again Gaussian,
  ``q = N(μ + scale·σ²·g, σ² I)`` (``mode="variance"``; DAS / TDS proposal). ``mode="constant"``
  adds ``scale·g`` whatever σ (the DPS update ``x_{t−1} = x'_{t−1} + ρ·∇r(x̂0)``, Chung et al.
  2023), which also moves deterministic (η = 0, last) steps but has no density ratio.
  ``through_model=False`` (default) skips the backward pass through the denoiser and replaces
  its Jacobian ``∂x0_hat/∂x_t = a_t/s_t²·Cov[x0|x_t]`` by that of unit-variance Gaussian data,
  ``a_t/(a_t² + s_t²)·I`` (VP: ``sqrt(ᾱ_t)``; flow: (1 − σ)/((1 − σ)² + σ²)):
  ``g ≈ sqrt(ᾱ_t)·∇_{x0} r(x0_hat)`` on VP (→ the exact value at low
  noise, and small where the data cannot yet respond; dropping the covariance instead, i.e.
  ``1/sqrt(ᾱ_t)``, blows up at high noise); ``True`` backpropagates through the denoiser.
- **Masked** (per position, independent categoricals): ``q_l(k) ∝ p_l(k)·exp(scale·Δ_{l,k})``
  at masked positions (carried-over tokens are unchanged). ``through_model=True`` uses the
  gradient w.r.t. the one-hot input through the denoiser, ``Δ_{l,k} = g_{l,k} − g_{l,MASK}``
  (the discrete "DPS" of the SVDD code; the denoiser must accept a float one-hot (B, L, V)
  input); ``False`` the gradient w.r.t. ``x0_hat``, ``Δ_{l,k} = g_{l,k} − Σ_j x0_hat_{l,j}·g_{l,j}``
  for a real token ``k`` and 0 for staying masked (unmasking ``l`` to ``k`` replaces row ``l`` of
  ``x0_hat`` by a one-hot, everything else held fixed). On masked processes a differentiable
  reward receives float clean-token probabilities (B, L, V) and must return (B,) — e.g. a
  linear score ``Σ_l W[l, x_l]`` evaluated as ``Σ_{l,k} x[l,k]·W[l,k]``.

Transitions of a guided process keep ``base`` (the pretrained transition) so SMC can weight
by ``log p_pre(x') − log q(x')`` (``log_ratio``). One guidance evaluation costs one denoiser
call (whose ``x0_hat`` the step reuses) and one backward pass; both are counted on a
``CountingProcess`` (``nfe``, ``grad_passes``).
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from .gaussian import GaussianTransition
from .masked import CategoricalTransition, sample_categorical


class GuidanceError(ValueError):
    """A guided proposal cannot be built (non-differentiable reward, unsupported model)."""


class Guidance(NamedTuple):
    x0_hat: Tensor      # detached; the step's denoiser output (reused by the transition)
    reward: Tensor      # r(x0_hat(x_t)) (B,), detached
    grad: Tensor        # gaussian: ∇_{x_t} r (B, ...); masked: the tilt Δ (B, L, V), 0 off masked rows


class GuidedGaussianTransition:
    """N(μ + shift, σ² I); ``base`` is the pretrained N(μ, σ² I)."""

    def __init__(self, base: GaussianTransition, shift: Tensor):
        self.base = base
        self.shift = shift
        self.mean = base.mean + shift
        self.std = base.std
        self.x0_hat = base.x0_hat
        self._inner = GaussianTransition(self.mean, self.std, self.x0_hat)

    def sample(self, generator: Optional[torch.Generator] = None, noise: Optional[Tensor] = None) -> Tensor:
        return self._inner.sample(generator, noise)

    def log_prob(self, x_next: Tensor) -> Tensor:
        return self._inner.log_prob(x_next)

    def log_ratio(self, x_next: Tensor) -> Tensor:
        """log p_pre(x') − log q(x') (B,); 0 on rows whose step is deterministic and unshifted."""
        deterministic = self.std <= 0
        if not deterministic.any():
            return (self.base.log_prob(x_next) - self.log_prob(x_next)).to(torch.float64)
        moved = self.shift.flatten(1).abs().amax(1) > 0
        if torch.any(deterministic & moved):
            raise GuidanceError("a deterministic step was shifted by guidance, so it has no density ratio; "
                                "use mode='variance' (or eta > 0) for SMC-type weighting")
        out = torch.zeros(x_next.shape[0], dtype=torch.float64, device=x_next.device)
        keep = ~deterministic
        if keep.any():
            b = GaussianTransition(self.base.mean[keep], self.std[keep], self.x0_hat[keep])
            q = GaussianTransition(self.mean[keep], self.std[keep], self.x0_hat[keep])
            out[keep] = (b.log_prob(x_next[keep]) - q.log_prob(x_next[keep])).to(torch.float64)
        return out


class GuidedCategoricalTransition(CategoricalTransition):
    """Per-position categoricals tilted by ``exp(scale·Δ)``; ``base`` is the pretrained one."""

    def __init__(self, base: CategoricalTransition, tilt: Tensor, scale: float):
        logits = torch.log(base.probs.to(torch.float64).clamp_min(1e-300)) + scale * tilt.to(torch.float64)
        logits = torch.where(base.probs > 0, logits, torch.full_like(logits, -math.inf))
        super().__init__(torch.softmax(logits, dim=-1), base.x0_hat)
        self.base = base

    def log_ratio(self, x_next: Tensor) -> Tensor:
        return self.base.log_prob(x_next) - self.log_prob(x_next)


def _count(process, nfe: int = 0, grad: int = 0) -> None:
    if hasattr(process, "grad_passes"):
        process.grad_passes += grad
    if nfe and hasattr(process, "nfe"):
        process.nfe += nfe


def _nan_to_zero(g: Tensor) -> Tensor:
    return torch.where(torch.isfinite(g), g, torch.zeros_like(g))


class GuidedProcess:
    """Wraps a process; its ``transition`` is the pretrained one tilted by ``scale``·gradient of
    ``reward_fn(x0_hat)``. Everything else (timesteps, prior, predict_x0, ...) is the base's."""

    def __init__(self, process, reward_fn: Callable[[Tensor], Tensor], scale: float = 1.0, *,
                 through_model: bool = False, mode: str = "variance"):
        if not getattr(reward_fn, "differentiable", False):
            raise GuidanceError("guidance needs a differentiable reward (reward.differentiable = True); "
                                "use svdd-pm, smc or dno (hybrid) for black-box rewards")
        if mode not in ("variance", "constant"):
            raise GuidanceError(f"mode must be 'variance' or 'constant', got {mode!r}")
        if mode == "constant" and process.kind != "gaussian":
            raise GuidanceError("mode='constant' applies to Gaussian processes only; use mode='variance'")
        self.process = process
        self.kind = process.kind
        self.reward_fn = reward_fn
        self.scale = float(scale)
        self.through_model = bool(through_model)
        self.mode = mode

    def __getattr__(self, name):
        if name == "process":
            raise AttributeError(name)
        return getattr(self.process, name)

    # -- guidance -----------------------------------------------------------------------------------
    def guidance(self, x_t: Tensor, t) -> Guidance:
        """One denoiser call and one backward pass: x0_hat, r(x0_hat) and the tilt direction."""
        with torch.enable_grad():
            if self.kind == "gaussian":
                return self._gaussian_guidance(x_t, t)
            return self._masked_guidance(x_t, t)

    def _gaussian_guidance(self, x_t: Tensor, t) -> Guidance:
        B = x_t.shape[0]
        if self.through_model:
            x = x_t.detach().requires_grad_(True)
            x0_hat = self.process.predict_x0(x, t)
            r = self.reward_fn(x0_hat)
            (g,) = torch.autograd.grad(r.sum(), x, allow_unused=True)
            g = torch.zeros_like(x) if g is None else g
        else:
            with torch.no_grad():
                x0_hat = self.process.predict_x0(x_t, t)
            x0 = x0_hat.detach().requires_grad_(True)
            r = self.reward_fn(x0)
            (g,) = torch.autograd.grad(r.sum(), x0, allow_unused=True)
            g = torch.zeros_like(x0) if g is None else g
            if hasattr(self.process, "schedule"):   # unit-variance data: ∂E[x0|x_t]/∂x_t = a/(a² + s²)
                a, s = self.process.schedule(t)
                jac = torch.as_tensor(a / (a * a + s * s), dtype=g.dtype, device=g.device)
            else:
                jac = torch.as_tensor(self.process.alpha_bar(t), dtype=g.dtype, device=g.device).sqrt()
            g = g * jac.view(-1, *([1] * (g.dim() - 1))) if jac.dim() else g * jac
        _count(self.process, grad=B)
        return Guidance(x0_hat.detach(), r.detach(), _nan_to_zero(g.detach()))

    def _masked_guidance(self, x_t: Tensor, t) -> Guidance:
        B, V, mask_id = x_t.shape[0], self.process.vocab_size, self.process.mask_id
        masked = (x_t == mask_id).unsqueeze(-1)
        if self.through_model:
            one_hot = F.one_hot(x_t.long(), V).to(torch.float32).requires_grad_(True)
            t_b = self.process._batch_t(t, B)
            try:
                logits = self.process.model(one_hot, t_b)
            except Exception as err:  # the denoiser only takes token ids
                raise GuidanceError(f"the denoiser does not accept a float one-hot (B, L, V) input ({type(err).__name__}); "
                                    "pass through_model=False to use the gradient w.r.t. x0_hat") from None
            logits = getattr(logits, "logits", logits).to(torch.float32).clone()
            logits[..., mask_id] = -math.inf
            probs = torch.where(masked, torch.softmax(logits, -1), one_hot)
            _count(self.process, nfe=B)
            r = self.reward_fn(probs)
            (g,) = torch.autograd.grad(r.sum(), one_hot, allow_unused=True)
            g = torch.zeros_like(one_hot) if g is None else _nan_to_zero(g)
            tilt = g - g[..., mask_id:mask_id + 1]
            x0_hat = probs.detach()
        else:
            with torch.no_grad():
                x0_hat = self.process.predict_x0(x_t, t)
            p = x0_hat.detach().to(torch.float32).requires_grad_(True)
            r = self.reward_fn(p)
            (g,) = torch.autograd.grad(r.sum(), p, allow_unused=True)
            g = torch.zeros_like(p) if g is None else _nan_to_zero(g)
            tilt = g - (p.detach() * g).sum(-1, keepdim=True)
            tilt[..., mask_id] = 0.0
        _count(self.process, grad=B)
        tilt = torch.where(masked, tilt, torch.zeros_like(tilt))
        return Guidance(x0_hat, r.detach(), tilt.detach())

    # -- kernels ---------------------------------------------------------------------------------
    def transition(self, x_t: Tensor, t, t_next, x0_hat: Optional[Tensor] = None,
                   guidance: Optional[Guidance] = None, scale: Optional[float] = None):
        """The tilted kernel q(·|x_t). ``guidance=`` reuses a computed ``Guidance`` (its x0_hat
        too); otherwise one is computed (one denoiser call + one backward)."""
        if guidance is None:
            guidance = self.guidance(x_t, t)
        scale = self.scale if scale is None else float(scale)
        base = self.process.transition(x_t, t, t_next, x0_hat=guidance.x0_hat)
        if self.kind == "masked":
            return GuidedCategoricalTransition(base, guidance.grad, scale)
        g = guidance.grad.to(base.mean.dtype)
        if self.mode == "variance":
            var = base.std.pow(2).view(-1, *([1] * (g.dim() - 1)))
            shift = scale * var * g
        else:
            shift = scale * g
        return GuidedGaussianTransition(base, shift)


def guided(process, reward_fn, scale: float = 1.0, **kwargs) -> GuidedProcess:
    """``GuidedProcess(process, reward_fn, scale, through_model=..., mode=...)``."""
    return GuidedProcess(process, reward_fn, scale, **kwargs)


__all__ = ["Guidance", "GuidanceError", "GuidedProcess", "GuidedGaussianTransition", "GuidedCategoricalTransition",
           "guided", "sample_categorical"]
