"""Analytic toys with exact answers, for tests, benchmarks and users checking a new algorithm.

``GaussianMixtureToy``: data ``p(x0) = Σ_k π_k N(μ_k, s_k² I)`` in d dimensions, noised by a
DDPM schedule (``schedule="vp"``: a = sqrt(ᾱ), s = sqrt(1−ᾱ)) or a rectified flow
(``schedule="flow"``: a = 1 − σ, s = σ, t = 1000σ). Given x_t = a·x0 + s·ε, component k has
marginal variance ``v_k = a² s_k² + s²``, responsibility ``γ_k ∝ π_k N(x_t; a μ_k, v_k I)``,
posterior mean ``m_k = μ_k + a s_k²/v_k (x_t − a μ_k)`` and variance ``c_k = s_k² s²/v_k``, so the
denoiser is ``E[x0|x_t] = Σ_k γ_k m_k`` in closed form (the flow model's velocity is
``(x_t − E[x0|x_t])/σ``). For the linear reward ``r(x) = w·x``:

- tilted target ``p(x0)·exp(r/α)``: component k moves to mean ``μ_k + s_k² w/α`` with weight
  ∝ ``π_k exp(w·μ_k/α + s_k²|w|²/(2α²))`` (same s_k);
- exact soft value ``v_t(x_t) = α log Σ_k γ_k exp(w·m_k/α + c_k|w|²/(2α²))``.

These are the answers for the exact (continuous-time) reverse process; a K-step DDPM / DDIM-η
sampler with the exact denoiser matches them up to a discretisation error that vanishes as K
grows.

``MaskedToy``: L tokens over n letters (+ the mask), an explicit joint table p(x0) and reward
table r(x0). Masking is independent of content, so the exact denoiser is the conditional
marginal of each masked position given the visible ones. The model's own K-step reverse
process does *not* sample p exactly (positions unmasked in the same step are drawn
independently), so ``model_distribution`` computes its exact output law by propagating through
all (n+1)^L states, ``soft_value`` the exact soft value of that process by dynamic programming
(exp(v_k/α) = P_k exp(v_{k+1}/α)), and ``tilted`` the exact target ``p_model(x0)exp(r/α)/Z``.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
from torch import Tensor

from .process.gaussian import GaussianProcess
from .process.masked import MaskedProcess
from .process.schedules import FlowSchedule, linear_beta_alphas_cumprod


# ------------------------------------------------------------------------------------------------
class LinearReward:
    """r(x) = w·x (differentiable)."""

    differentiable = True

    def __init__(self, w: Tensor):
        self.w = w
        self.name = "linear"

    def __call__(self, x: Tensor) -> Tensor:
        return x.flatten(1) @ self.w.to(x.dtype)


class GaussianMixtureToy:
    def __init__(self, means: Sequence, stds: Sequence[float], weights: Sequence[float], reward_weight: Sequence[float],
                 num_train_timesteps: int = 1000, dtype=torch.float64, schedule: str = "vp"):
        if schedule not in ("vp", "flow"):
            raise ValueError(f"schedule must be 'vp' or 'flow', got {schedule!r}")
        self.means = torch.as_tensor(means, dtype=dtype).reshape(len(stds), -1)     # (K, d)
        self.stds = torch.as_tensor(stds, dtype=dtype)                               # (K,)
        w = torch.as_tensor(weights, dtype=dtype)
        self.weights = w / w.sum()
        self.dim = self.means.shape[1]
        self.w = torch.as_tensor(reward_weight, dtype=dtype).reshape(self.dim)
        self.schedule = schedule
        self.num_train_timesteps = int(num_train_timesteps)
        self.alphas_cumprod = linear_beta_alphas_cumprod(num_train_timesteps)
        self.dtype = dtype
        self.reward = LinearReward(self.w)

    @classmethod
    def default(cls, schedule: str = "vp") -> "GaussianMixtureToy":
        """1-D, two well-separated modes, reward pulls towards the lighter right mode."""
        return cls(means=[[-1.5], [1.5]], stds=[0.4, 0.4], weights=[0.7, 0.3], reward_weight=[1.0], schedule=schedule)

    @classmethod
    def ring(cls, num_components: int = 8, radius: float = 1.0, std: float = 0.08,
             schedule: str = "vp") -> "GaussianMixtureToy":
        """2-D ring of equal-weight components (the DNO toy data set)."""
        ang = torch.arange(num_components, dtype=torch.float64) * 2 * math.pi / num_components
        means = torch.stack([radius * torch.cos(ang), radius * torch.sin(ang)], 1)
        return cls(means=means, stds=[std] * num_components, weights=[1.0] * num_components, reward_weight=[1.0, 0.0],
                   schedule=schedule)

    # -- exact posterior pieces ----------------------------------------------------------------
    def coefficients(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """(a_t, s_t) at process time t (VP: t = training index + 1; flow: t = 1000σ; 0 = clean)."""
        t = torch.as_tensor(t, dtype=torch.float64).cpu()
        if self.schedule == "flow":
            sig = (t / self.num_train_timesteps).clamp(0.0, 1.0)
            return 1.0 - sig, sig
        ab = torch.cat([torch.ones(1, dtype=torch.float64), self.alphas_cumprod])[t.round().long()]
        return ab.sqrt(), (1 - ab).sqrt()

    def _posterior(self, x_t: Tensor, ab: Tensor, s: Optional[Tensor] = None):
        """Pieces of p(x0 | x_t) for x_t = a·x0 + s·ε: with ``s=None``, ``ab`` is ᾱ (VP)."""
        x = x_t.reshape(x_t.shape[0], self.dim).to(self.dtype)
        if s is None:
            a, s = ab.to(self.dtype).sqrt(), (1 - ab.to(self.dtype)).sqrt()
        else:
            a, s = ab.to(self.dtype), s.to(self.dtype)
        a = a.reshape(-1, 1, 1) if a.dim() else a
        s = s.reshape(-1, 1, 1) if s.dim() else s
        mu, s2 = self.means[None], self.stds.pow(2)[None, :, None]                  # (1,K,d), (1,K,1)
        v = a * a * s2 + s * s
        diff = x[:, None, :] - a * mu                                                  # (B,K,d)
        logr = torch.log(self.weights)[None] - 0.5 * self.dim * torch.log(v[..., 0]) - 0.5 * (diff.pow(2).sum(-1)) / v[..., 0]
        resp = torch.softmax(logr, dim=1)                                              # (B,K)
        m = mu + a * s2 / v * diff                                                     # (B,K,d)
        c = (s2 * s * s / v)[..., 0]                                                   # (B,K)
        return resp, m, c, logr

    def denoiser(self, x_t: Tensor, timestep: Tensor) -> Tensor:
        """E[x0 | x_t] (the 'sample' prediction): VP with ᾱ = alphas_cumprod[timestep]; flow with
        σ = timestep / num_train_timesteps."""
        if self.schedule == "flow":
            a, s = self.coefficients(timestep)
        else:
            ab = self.alphas_cumprod[timestep.long().cpu()]
            a, s = ab.sqrt(), (1 - ab).sqrt()
        resp, m, _, _ = self._posterior(x_t.cpu(), a, s)
        return (resp[..., None] * m).sum(1).reshape(x_t.shape).to(x_t.dtype).to(x_t.device)

    def velocity(self, x_t: Tensor, timestep: Tensor) -> Tensor:
        """The exact flow velocity E[ε − x0 | x_t] = (x_t − E[x0|x_t])/σ (flow schedule, σ > 0)."""
        sig = (torch.as_tensor(timestep, dtype=torch.float64) / self.num_train_timesteps).to(x_t.device)
        sig = sig.reshape(-1, *([1] * (x_t.dim() - 1))).to(x_t.dtype)
        return (x_t - self.denoiser(x_t, timestep)) / sig

    def process(self, eta: float = 1.0, prediction_type: str = "sample") -> GaussianProcess:
        """The exact denoiser as a process; on the flow schedule ``prediction_type="flow"``
        serves the exact velocity instead (the same x0_hat up to rounding)."""
        if self.schedule == "flow":
            model = self.velocity if prediction_type == "flow" else self.denoiser
            return GaussianProcess(model, None, prediction_type=prediction_type, eta=eta,
                                   sample_shape=(self.dim,), dtype=torch.float64,
                                   schedule=FlowSchedule(self.num_train_timesteps))
        return GaussianProcess(self.denoiser, self.alphas_cumprod, prediction_type=prediction_type, eta=eta,
                               sample_shape=(self.dim,), dtype=torch.float64)

    def soft_value(self, alpha: float):
        """Exact ``v_t(x_t) = α log E[exp(w·x0/α) | x_t]`` as a value_fn (x_t, t) -> (B,)."""
        w, w2 = self.w, float(self.w.pow(2).sum())

        def value_fn(x_t: Tensor, t: Tensor) -> Tensor:
            t = torch.as_tensor(t, dtype=torch.float64)
            if float(t.max()) == 0:
                return self.reward(x_t)
            a, s = self.coefficients(t)
            resp, m, c, _ = self._posterior(x_t.cpu(), a, s)
            log_terms = torch.log(resp.clamp_min(1e-300)) + (m @ w) / alpha + c * w2 / (2 * alpha ** 2)
            return (alpha * torch.logsumexp(log_terms, dim=1)).to(x_t.dtype).to(x_t.device)

        return value_fn

    # -- exact targets -------------------------------------------------------------------------
    def tilted(self, alpha: float):
        """(means, stds, weights) of the tilted mixture p(x0)·exp(w·x0/α)/Z."""
        s2 = self.stds.pow(2)
        means = self.means + s2[:, None] * self.w[None] / alpha
        logw = torch.log(self.weights) + (self.means @ self.w) / alpha + s2 * self.w.pow(2).sum() / (2 * alpha ** 2)
        return means, self.stds.clone(), torch.softmax(logw, 0)

    def mean(self, alpha: Optional[float] = None) -> Tensor:
        means, _, weights = (self.means, self.stds, self.weights) if alpha is None else self.tilted(alpha)
        return (weights[:, None] * means).sum(0)

    def reward_mean(self, alpha: Optional[float] = None) -> float:
        """E[r(x0)] under the data (alpha=None) or the tilted target."""
        return float(self.mean(alpha) @ self.w)

    def reward_variance(self, alpha: Optional[float] = None) -> float:
        means, stds, weights = (self.means, self.stds, self.weights) if alpha is None else self.tilted(alpha)
        mr = means @ self.w
        second = (weights * (mr.pow(2) + stds.pow(2) * self.w.pow(2).sum())).sum()
        return float(second - (weights * mr).sum() ** 2)

    def component_of(self, x0: Tensor) -> Tensor:
        """Index of the nearest component mean (mode membership) per sample."""
        return torch.cdist(x0.reshape(-1, self.dim).to(self.dtype), self.means).argmin(1)


# ------------------------------------------------------------------------------------------------
class TableReward:
    """r(x0) looked up in a table over clean states (invalid for sequences with masks)."""

    differentiable = False

    def __init__(self, toy: "MaskedToy", table: Tensor):
        self.toy, self.table, self.name = toy, table, "table"

    def __call__(self, x0: Tensor) -> Tensor:
        return self.table[self.toy.clean_index(x0).cpu()].to(torch.float32)


class MaskedToy:
    def __init__(self, seq_len: int = 3, num_letters: int = 3, seed: int = 0, schedule: str = "loglinear"):
        g = torch.Generator().manual_seed(seed)
        self.L, self.n = seq_len, num_letters
        self.vocab_size, self.mask_id = num_letters + 1, num_letters
        self.num_clean = num_letters ** seq_len
        # clean states, position-major base-n digits
        idx = torch.arange(self.num_clean)
        self.clean_states = torch.stack([(idx // num_letters ** l) % num_letters for l in range(seq_len)], 1)
        # a correlated joint: random logits with a strong pairwise term (so the K-step model differs from p)
        logits = 1.5 * torch.randn(self.num_clean, generator=g, dtype=torch.float64)
        same = (self.clean_states[:, :-1] == self.clean_states[:, 1:]).sum(1).double()
        self.joint = torch.softmax(logits + 1.0 * same, 0)
        self.reward_table = torch.randn(self.num_clean, generator=g, dtype=torch.float64)
        self.reward = TableReward(self, self.reward_table)
        self.schedule = schedule
        # all (n+1)^L noisy states, including masks
        V = self.vocab_size
        allidx = torch.arange(V ** seq_len)
        self.all_states = torch.stack([(allidx // V ** l) % V for l in range(seq_len)], 1)

    # -- indexing --------------------------------------------------------------------------------
    def clean_index(self, x0: Tensor) -> Tensor:
        x0 = x0.long().cpu()
        if torch.any(x0 == self.mask_id):
            raise ValueError("clean_index got a sequence that still has masks")
        return (x0 * (self.n ** torch.arange(self.L))).sum(1)

    def state_index(self, x: Tensor) -> Tensor:
        return (x.long().cpu() * (self.vocab_size ** torch.arange(self.L))).sum(1)

    def histogram(self, x0: Tensor) -> Tensor:
        return torch.bincount(self.clean_index(x0), minlength=self.num_clean).double() / x0.shape[0]

    # -- exact denoiser and process ---------------------------------------------------------------
    def denoiser(self, x_t: Tensor, t: Tensor) -> Tensor:
        x = x_t.long().cpu()
        consistent = ((x[:, None, :] == self.mask_id) | (x[:, None, :] == self.clean_states[None])).all(-1)  # (B,S)
        post = self.joint[None] * consistent                                                              # (B,S)
        post = post / post.sum(1, keepdim=True)
        onehot = torch.nn.functional.one_hot(self.clean_states, self.vocab_size).double()                # (S,L,V)
        marg = torch.einsum("bs,slv->blv", post, onehot)
        logits = torch.log(marg.clamp_min(1e-300))
        logits[..., self.mask_id] = -1e30
        return logits.to(torch.float32).to(x_t.device)

    def process(self) -> MaskedProcess:
        return MaskedProcess(self.denoiser, self.L, self.vocab_size, self.mask_id, schedule=self.schedule)

    def transition_matrices(self, num_steps: int) -> list[Tensor]:
        """P_k[s, s'] over all (n+1)^L states for each step of the K-step grid."""
        proc = self.process()
        ts = proc.timesteps(num_steps)
        S = self.all_states
        mats = []
        for k in range(num_steps):
            probs = proc.transition(S, ts[k], ts[k + 1]).probs.double()                       # (N,L,V)
            P = torch.ones(S.shape[0], S.shape[0], dtype=torch.float64)
            for l in range(self.L):
                P = P * probs[:, l, :][:, S[:, l]]
            mats.append(P)
        return mats

    def model_distribution(self, num_steps: int) -> Tensor:
        """Exact law of the model's own K-step reverse process over the clean states."""
        d = torch.zeros(self.all_states.shape[0], dtype=torch.float64)
        d[self.state_index(torch.full((1, self.L), self.mask_id))] = 1.0
        for P in self.transition_matrices(num_steps):
            d = d @ P
        return d[self.state_index(self.clean_states)]

    def soft_value(self, alpha: float, num_steps: int):
        """Exact soft value of the model's K-step process (dynamic programming), as value_fn."""
        mats = self.transition_matrices(num_steps)
        ts = self.process().timesteps(num_steps)
        logE = torch.full((self.all_states.shape[0],), -math.inf, dtype=torch.float64)
        logE[self.state_index(self.clean_states)] = self.reward_table / alpha
        table = {num_steps: logE}
        for k in range(num_steps - 1, -1, -1):
            logE = torch.logsumexp(torch.log(mats[k]) + logE[None, :], dim=1)
            table[k] = logE
        grid = ts.cpu()

        def value_fn(x_t: Tensor, t: Tensor) -> Tensor:
            k = int(torch.argmin((grid - float(torch.as_tensor(t).reshape(-1)[0])).abs()))
            return (alpha * table[k][self.state_index(x_t)]).to(torch.float32).to(x_t.device)

        return value_fn

    def tilted(self, alpha: float, num_steps: int) -> Tensor:
        """Exact target p_model(x0)·exp(r(x0)/α)/Z of the K-step model, over clean states."""
        logp = torch.log(self.model_distribution(num_steps)) + self.reward_table / alpha
        return torch.softmax(logp, 0)


def total_variation(p: Tensor, q: Tensor) -> float:
    return 0.5 * float((p.double() - q.double()).abs().sum())
