"""Masked (absorbing-state) diffusion, MDLM "SUBS" parameterisation.

Forward: each clean token is independently replaced by ``mask_id`` with probability ``m(t)``.
Reverse from ``t`` to ``s < t`` (m_t > m_s), for a masked position with clean-token
probabilities ``p = x0_hat``::

    q(x_s = k | x_t) = p_k · (m_t − m_s) / m_t      (k a real token)
    q(x_s = MASK | x_t) = m_s / m_t

which sums to 1 (MDLM drops the ``/ m_t``; we keep it so ``log_prob`` is normalised). Unmasked
positions are carried over unchanged (one-hot rows), and the mask token gets probability 0
in ``x0_hat``. At ``s = 0`` every remaining mask is filled. Draws are made in float64.

Two ways to draw a step, equal in distribution (``draw=``):

- ``"race"`` (default): one exponential race over the whole ``(B, L, V)`` table, argmax p/E with
  E = −log U: ``B·L·V`` uniforms per step. Every result pinned before ``draw=`` existed uses it.
- ``"two-stage"``: a masked position unmasks with probability (m_t − m_s)/m_t (one uniform),
  and only an unmasking position draws its token from ``x0_hat`` by inverse CDF (one more
  uniform and a float64 cumsum over V). ``B·L`` uniforms plus ``V`` work per unmasked token,
  so large vocabularies (the 4,120-id ring-system molecule model) sample at the cost of the
  denoiser. The transition's ``probs`` table is then built only if somebody reads it.

``precision="bf16"`` runs the denoiser under ``torch.autocast`` (``svdd.accelerator``); the
logits are cast back to float32 before the softmax, so everything above is unchanged. Nothing
in ``predict_x0``/``transition``/``sample`` reads a device tensor on the host: the time check
runs asynchronously on accelerators.

The NELBO of a clean sequence (continuous time, Sahoo et al. 2024 eq. 10) is
``∫_0^1 m'(t)/m(t) · E_q[Σ_{l masked} −log p_θ(x0_l | x_t)] dt``; ``nelbo`` estimates it by
Monte Carlo over ``t`` and the mask pattern.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import Tensor

from ..accelerator import HasPrecision, autocast
from .schedules import MaskSchedule, get_mask_schedule


def _rand(shape, generator, device, dtype=torch.float64):
    return torch.rand(shape, generator=generator, device=device, dtype=dtype)


def sample_categorical(probs: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
    """One draw per row of ``probs (..., V)`` in float64 (exponential race: argmax p / E)."""
    p = probs.to(torch.float64)
    e = -torch.log(_rand(p.shape, generator, p.device).clamp_min(1e-300))
    return (p / e).argmax(dim=-1)


def _one_hot(x: Tensor, num_classes: int, dtype: torch.dtype) -> Tensor:
    """``F.one_hot(x, num_classes).to(dtype)`` without its range check, which reads the min and
    max of ``x`` on the host on the CPU (tokens here come from the process, so they are in range)."""
    return (x.unsqueeze(-1) == torch.arange(num_classes, device=x.device)).to(dtype)


def check_on_device(ok: Tensor, message: str) -> None:
    """Raise ``ValueError(message)`` unless ``ok`` (a bool tensor). On the CPU this is an ordinary
    check; on an accelerator ``torch._assert_async`` checks it on the device without a host
    round-trip (a failure surfaces at the next synchronisation as a device-side assert)."""
    try:
        torch._assert_async(ok, message)
    except RuntimeError:
        raise ValueError(message) from None


class CategoricalTransition:
    """Product of per-position categoricals ``probs (B, L, V)`` (rows sum to 1)."""

    def __init__(self, probs: Tensor, x0_hat: Tensor):
        self.probs = probs
        self.x0_hat = x0_hat

    def sample(self, generator: Optional[torch.Generator] = None, noise: Optional[Tensor] = None) -> Tensor:
        if noise is not None:
            # noise = uniform(0,1) draws of shape (B, L, V): a deterministic exponential race
            e = -torch.log(noise.to(torch.float64).clamp_min(1e-300))
            return (self.probs.to(torch.float64) / e).argmax(dim=-1)
        return sample_categorical(self.probs, generator)

    def log_prob(self, x_next: Tensor) -> Tensor:
        p = self.probs.gather(-1, x_next.long().unsqueeze(-1)).squeeze(-1)
        return torch.log(p.to(torch.float64)).sum(dim=-1)


class FactoredCategoricalTransition(CategoricalTransition):
    """The masked step's categoricals kept in factored form: ``x_t``, ``x0_hat`` and the keep
    probability m_s/m_t per row. ``sample()`` without ``noise`` draws two-stage (module
    docstring); ``probs`` (the full table, as ``CategoricalTransition`` holds it), ``sample(noise=)``
    and ``log_prob`` give exactly what the table would."""

    def __init__(self, process: "MaskedProcess", x_t: Tensor, x0_hat: Tensor, m_t: Tensor, m_s: Tensor):
        self._process, self.x_t, self.x0_hat = process, x_t, x0_hat
        self._m_t, self._m_s = m_t, m_s            # (B, 1, 1) float64, m_t clamped away from 0
        self._probs: Optional[Tensor] = None

    @property
    def probs(self) -> Tensor:
        if self._probs is None:
            self._probs = self._process._table(self.x_t, self.x0_hat, self._m_t, self._m_s)
        return self._probs

    def sample(self, generator: Optional[torch.Generator] = None, noise: Optional[Tensor] = None) -> Tensor:
        if noise is not None:
            return super().sample(generator, noise)
        mask_id = self._process.mask_id
        masked = self.x_t == mask_id
        keep = (self._m_s / self._m_t).view(-1, 1)                           # (B, 1)
        u = _rand(self.x_t.shape, generator, self.x_t.device)
        unmask = masked & (u >= keep)
        rows = unmask.nonzero(as_tuple=True)
        p = self.x0_hat[rows].to(torch.float64)                                # (n, V)
        cdf = p.cumsum(dim=-1)
        v = _rand((cdf.shape[0], 1), generator, self.x_t.device) * cdf[:, -1:]
        token = torch.searchsorted(cdf, v, right=True).squeeze(-1)
        # searchsorted never lands in a zero-width bin; only v rounding up to the total (u within
        # 2^-53 of 1) runs past the end, and then the last token of positive probability is meant
        last = p.shape[-1] - 1 - (p > 0).flip(-1).to(torch.int8).argmax(-1)
        token = torch.where(token >= p.shape[-1], last, token)
        out = self.x_t.clone()
        out[rows] = token
        return out

    def log_prob(self, x_next: Tensor) -> Tensor:
        x_next = x_next.long()
        mask_id = self._process.mask_id
        masked = self.x_t == mask_id
        p = self.x0_hat.gather(-1, x_next.unsqueeze(-1)).squeeze(-1).to(torch.float64) \
            * (self._m_t - self._m_s).view(-1, 1) / self._m_t.view(-1, 1)
        p = torch.where(x_next == mask_id, (self._m_s / self._m_t).view(-1, 1).expand_as(p), p)
        p = torch.where(masked, p, (x_next == self.x_t).to(torch.float64))
        return torch.log(p).sum(dim=-1)


class MaskedProcess(HasPrecision):
    """Absorbing-state diffusion over ``seq_len`` tokens of a vocabulary of ``vocab_size``
    (mask included). ``model(x (B, L) long, t (B,) float) -> logits (B, L, V)``.
    ``precision``: ``"fp32"`` (default), ``"bf16"`` or ``"auto"`` for the denoiser forward.
    ``draw``: ``"race"`` (default) or ``"two-stage"`` (module docstring)."""

    kind = "masked"
    DRAWS = ("race", "two-stage")

    def __init__(self, model: Callable[[Tensor, Tensor], Tensor], seq_len: int, vocab_size: int,
                 mask_id: int, schedule: str | MaskSchedule = "loglinear", device=None, precision: str = "fp32",
                 *, draw: str = "race"):
        if not 0 <= mask_id < vocab_size:
            raise ValueError(f"mask_id {mask_id} must lie in [0, vocab_size={vocab_size})")
        if draw not in self.DRAWS:
            raise ValueError(f"draw must be one of {self.DRAWS}, not {draw!r}")
        self.draw = draw
        self.model = model
        self.seq_len = int(seq_len)
        self.vocab_size = int(vocab_size)
        self.mask_id = int(mask_id)
        self.schedule = get_mask_schedule(schedule)
        if device is None:
            params = getattr(model, "parameters", None)
            try:
                device = next(params()).device if params is not None else torch.device("cpu")
            except StopIteration:
                device = torch.device("cpu")
        self.device = torch.device(device)
        self.precision = precision

    # -- time ---------------------------------------------------------------------------------
    def timesteps(self, num_steps: int) -> Tensor:
        if num_steps < 1:
            raise ValueError("num_steps must be >= 1")
        return torch.linspace(1.0, 0.0, num_steps + 1, dtype=torch.float64, device=self.device)

    def mask_prob(self, t: Tensor | float) -> Tensor:
        return self.schedule.mask_prob(torch.as_tensor(t, dtype=torch.float64))

    # -- sampling -----------------------------------------------------------------------------
    def prior(self, num_samples: int, generator: Optional[torch.Generator] = None) -> Tensor:
        return torch.full((num_samples, self.seq_len), self.mask_id, dtype=torch.long, device=self.device)

    def _batch_t(self, t: Tensor | float, batch: int) -> Tensor:
        t = torch.as_tensor(t, dtype=torch.float32, device=self.device)
        return t.expand(batch) if t.dim() == 0 else t.to(torch.float32)

    def x0_probs_from_logits(self, logits: Tensor, x_t: Tensor) -> Tensor:
        """SUBS: forbid the mask token, softmax, carry unmasked tokens over as one-hot rows.
        Without autograd the steps run in place on one float32 copy of ``logits`` (the caller's
        tensor is never written): two ``(B, L, V)`` tables alive instead of four, the same numbers."""
        unmasked = (x_t != self.mask_id).unsqueeze(-1)
        probs = logits.to(torch.float32, copy=True)
        probs[..., self.mask_id] = float("-inf")
        if not (torch.is_grad_enabled() and logits.requires_grad):
            torch.softmax(probs, dim=-1, out=probs)
            return probs.masked_fill_(unmasked, 0.0).scatter_(-1, x_t.unsqueeze(-1), unmasked.to(probs.dtype))
        probs = torch.softmax(probs, dim=-1)
        # one-hot rows for unmasked tokens, out of place (autograd) in one pass over the table: zero
        # those rows, then write 1 at the token (masked rows get 0 at mask_id, which is already 0)
        return probs.masked_fill(unmasked, 0.0).scatter(-1, x_t.unsqueeze(-1), unmasked.to(probs.dtype))

    def predict_x0(self, x_t: Tensor, t: Tensor | float) -> Tensor:
        with autocast(self.precision, x_t.device):
            logits = self.model(x_t, self._batch_t(t, x_t.shape[0]))
        logits = getattr(logits, "logits", logits)
        return self.x0_probs_from_logits(logits, x_t)   # float32 from here on

    def transition(self, x_t: Tensor, t: Tensor | float, t_next: Tensor | float,
                   x0_hat: Optional[Tensor] = None) -> CategoricalTransition:
        if x0_hat is None:
            x0_hat = self.predict_x0(x_t, t)
        m_t = self.mask_prob(t).to(x0_hat.device)
        m_s = self.mask_prob(t_next).to(x0_hat.device)
        if m_t.dim() == 0:
            m_t, m_s = m_t.expand(x_t.shape[0]), m_s.expand(x_t.shape[0])
        check_on_device(~torch.any(m_s > m_t), "t_next must not be noisier than t")
        m_t = m_t.clamp_min(1e-12).view(-1, 1, 1)
        m_s = m_s.view(-1, 1, 1)
        if self.draw == "two-stage":
            return FactoredCategoricalTransition(self, x_t, x0_hat, m_t, m_s)
        return CategoricalTransition(self._table(x_t, x0_hat, m_t, m_s), x0_hat)

    def _table(self, x_t: Tensor, x0_hat: Tensor, m_t: Tensor, m_s: Tensor) -> Tensor:
        """The step's ``(B, L, V)`` float64 table q(x_s | x_t) (module docstring)."""
        p = x0_hat.to(torch.float64) * (m_t - m_s) / m_t
        p[..., self.mask_id] = (m_s / m_t).squeeze(-1)
        unmasked = (x_t != self.mask_id).unsqueeze(-1)
        one_hot = _one_hot(x_t, self.vocab_size, torch.float64)
        return torch.where(unmasked, one_hot, p)

    def decode_x0_hat(self, x_t: Tensor, x0_hat: Tensor, generator=None, sample: bool = False) -> Tensor:
        """A clean sequence from ``x0_hat``: masked positions filled by argmax (or a float64 draw
        with ``sample=True``), unmasked tokens kept."""
        fill = sample_categorical(x0_hat, generator) if sample else x0_hat.argmax(dim=-1)
        return torch.where(x_t == self.mask_id, fill, x_t)

    # -- likelihood -----------------------------------------------------------------------------
    def nelbo(self, x0: Tensor, num_t_samples: int = 1, generator: Optional[torch.Generator] = None,
              t_min: float = 1e-4, estimator: str = "count") -> Tensor:
        """Monte Carlo NELBO per sequence in nats, ``(B,)``, averaged over ``num_t_samples`` draws.
        Unbiased for the continuous-time bound of the loglinear schedule; differentiable.

        ``estimator="count"`` (default, low variance): with K ~ Bin(L, t) masked tokens,
        ∫_0^1 (1/t) E[Σ_masked CE] dt = Σ_k (1/k) E_{t ~ Beta(k, L−k+1)} E_{|S|=k}[Σ_S CE], so draw
        k uniformly in 1..L (stratified over the batch), L uniforms u_l, t = the k-th smallest
        (a Beta(k, L−k+1) draw) and mask {u_l ≤ t}; the weight L/k is bounded by L.
        ``estimator="time"``: t ~ U(t_min, 1), weight m'(t)/m(t) (any schedule; heavy-tailed
        near t = 0, so single estimates usually read low)."""
        B, L = x0.shape
        if estimator == "count" and self.schedule.name != "loglinear":
            estimator = "time"
        total = torch.zeros(B, dtype=torch.float32, device=x0.device)
        for _ in range(num_t_samples):
            if estimator == "count":
                u0 = _rand((1,), generator, x0.device, torch.float32)
                k = (((u0 + torch.arange(B, device=x0.device) / B) % 1.0) * L).long().clamp(0, L - 1) + 1
                u = _rand((B, L), generator, x0.device, torch.float32)
                t = u.sort(dim=1).values.gather(1, (k - 1).unsqueeze(1)).squeeze(1)
                masked = u <= t.unsqueeze(1)
                weight = L / k.float()
            elif estimator == "time":
                u0 = _rand((1,), generator, x0.device, torch.float32)
                t = ((u0 + torch.arange(B, device=x0.device, dtype=torch.float32) / B) % 1.0) * (1 - t_min) + t_min
                m = self.schedule.mask_prob(t.double()).float()
                masked = _rand((B, L), generator, x0.device, torch.float32) < m.unsqueeze(1)
                weight = self.schedule.loss_weight(t.double()).float()
            else:
                raise ValueError("estimator must be 'count' or 'time'")
            x_t = torch.where(masked, torch.full_like(x0, self.mask_id), x0)
            logits = self.model(x_t, t)
            logits = getattr(logits, "logits", logits).float().clone()
            logits[..., self.mask_id] = float("-inf")
            logp = torch.log_softmax(logits, dim=-1).gather(-1, x0.unsqueeze(-1)).squeeze(-1)
            ce = -(logp * masked).sum(dim=1)
            total = total + weight * ce
        return total / num_t_samples
