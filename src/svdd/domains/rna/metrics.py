"""Sequence metrics for designed 5′ UTRs.

- ``gc_content``: fraction of G + C per sequence.
- ``uaug_count``: number of ``ATG`` triplets inside the UTR (upstream AUGs). A uAUG starts
  translation upstream of the main ORF and lowers ribosome load, so high-MRL designs should
  carry fewer of them: a biology sanity check, not an objective. (With the CDS starting
  ``ATGG``, no ATG can straddle the UTR/CDS junction, so only in-UTR triplets count.)
- ``pairwise_diversity``: ``1 − mean_{i<j} cos(onehot_i, onehot_j)`` = 1 − mean pairwise
  identity (the SVDD paper's sequence diversity, Table 3).
- ``mfe``: minimum free energy (kcal/mol) of the UTR folded alone with ViennaRNA.
- ``elbo``: the evidence lower bound ``log p(x) ≥ −NELBO(x)`` (nats) under a masked diffusion
  model, a Monte Carlo estimate with a fixed seed and no 1/t weight (see ``elbo``). Uniform
  random 50-mers have ``log p = −50 ln 4 = −69.3`` under the uniform distribution.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor

from .tokens import MASK_ID, decode

UNIFORM_LOG_LIKELIHOOD = -50 * 1.3862943611198906  # 50 · ln(1/4)


def gc_content(x: Tensor) -> Tensor:
    """(B, L) tokens -> (B,) fraction of C or G among the L positions."""
    return ((x == 1) | (x == 2)).float().mean(dim=1)


def uaug_count(x: Tensor) -> Tensor:
    """(B, L) tokens -> (B,) number of ATG triplets (A=0, T=3, G=2) in the UTR."""
    hits = (x[:, :-2] == 0) & (x[:, 1:-1] == 3) & (x[:, 2:] == 2)
    return hits.sum(dim=1)


def pairwise_diversity(x: Tensor) -> float:
    """1 − mean pairwise identity over all pairs i < j (nan for fewer than two sequences)."""
    n, L = x.shape
    if n < 2:
        return float("nan")
    oh = torch.nn.functional.one_hot(x.clamp(max=MASK_ID), MASK_ID + 1).flatten(1).double()
    same = oh @ oh.T                                  # matches per pair
    off = (same.sum() - same.diagonal().sum()) / (n * (n - 1))
    return float(1.0 - off / L)


def uniqueness(x: Tensor) -> float:
    return float(torch.unique(x, dim=0).shape[0] / max(x.shape[0], 1))


def mfe(x: Tensor | Sequence[str]) -> Tensor:
    """(B,) minimum free energy (kcal/mol, ≤ 0) of each UTR alone (ViennaRNA ``RNA.fold``)."""
    try:
        import RNA
    except ModuleNotFoundError:
        from ..base import DomainError

        raise DomainError("folding needs ViennaRNA: pip install 'svdd[rna]'") from None
    seqs = decode(x, rna=True) if isinstance(x, Tensor) else [s.upper().replace("T", "U") for s in x]
    return torch.tensor([RNA.fold(s)[1] for s in seqs], dtype=torch.float32)


@torch.no_grad()
def elbo(process, x: Tensor, num_t_samples: int = 16, seed: int = 0, batch_size: int = 1024) -> Tensor:
    """(B,) ELBO (nats, ≤ log p(x)) under a masked ``process``; deterministic for a given ``seed``.

    The MDLM bound with the log-linear schedule (m(t) = t) is
    ``NELBO = ∫_0^1 (1/t) E[Σ_{l masked} CE_l] dt``; its plain Monte Carlo estimate (the training
    loss) is heavy-tailed at small t (a rare masked token times a 1/t weight), so averages of a
    few draws read low. Using ``k·Binomial(k; L, t) = L·t·Binomial(k−1; L−1, t)`` the same integral
    is ``L · E_{t~U(0,1), k=1+Bin(L−1,t), S uniform of size k}[(1/k) Σ_{l∈S} CE_l(x | x_{S^c}, t)]``,
    which has no 1/t weight (a uniform denoiser gives exactly L ln 4). Other schedules fall back to
    ``process.nelbo``.
    """
    base = getattr(process, "process", process)  # unwrap an nfe-counting wrapper
    device = getattr(base, "device", torch.device("cpu"))
    gen = torch.Generator(device=device).manual_seed(seed)
    if getattr(getattr(base, "schedule", None), "name", None) != "loglinear":
        out = [-base.nelbo(x[i:i + batch_size].to(device), num_t_samples=num_t_samples, generator=gen).cpu()
               for i in range(0, x.shape[0], batch_size)]
        return torch.cat(out) if out else torch.zeros(0)
    out = []
    for i in range(0, x.shape[0], batch_size):
        x0 = x[i:i + batch_size].to(device).long()
        B, L = x0.shape
        total = torch.zeros(B, dtype=torch.float64, device=device)
        for j in range(num_t_samples):
            # stratified t per sequence, then k − 1 ~ Binomial(L − 1, t) and a uniform subset of size k
            u = torch.rand((), generator=gen, device=device)
            t = ((u + (torch.arange(B, device=device) + j * 0.5) / B) % 1.0).clamp(1e-6, 1.0)
            k = 1 + (torch.rand((B, L - 1), generator=gen, device=device) < t[:, None]).sum(1)
            ranks = torch.rand((B, L), generator=gen, device=device).argsort(1).argsort(1)
            masked = ranks < k[:, None]
            x_t = torch.where(masked, torch.full_like(x0, base.mask_id), x0)
            logits = base.model(x_t, t.float())
            logits = getattr(logits, "logits", logits).float().clone()
            logits[..., base.mask_id] = float("-inf")
            ce = -torch.log_softmax(logits, -1).gather(-1, x0.unsqueeze(-1)).squeeze(-1)
            total += L * (ce * masked).sum(1).double() / k.double()
        out.append((-total / num_t_samples).float().cpu())
    return torch.cat(out) if out else torch.zeros(0)


def summarise(values: Tensor) -> dict:
    v = values.double()
    if v.numel() == 0:
        return {}
    return {"mean": float(v.mean()), "median": float(v.median()), "q10": float(v.quantile(0.1)),
            "q90": float(v.quantile(0.9))}


def sequence_metrics(x: Tensor, process=None, *, num_t_samples: int = 16,
                     extra_processes: Optional[dict] = None) -> dict:
    """Set-level metrics of designed UTRs ``x (B, 50)``."""
    out = {
        "num_sequences": int(x.shape[0]),
        "uniqueness": uniqueness(x),
        "diversity": pairwise_diversity(x),
        "gc_content_mean": float(gc_content(x).mean()) if len(x) else float("nan"),
        "uaug_mean": float(uaug_count(x).float().mean()) if len(x) else float("nan"),
        "uaug_free_fraction": float((uaug_count(x) == 0).float().mean()) if len(x) else float("nan"),
    }
    try:
        out["mfe_mean"] = float(mfe(x).mean()) if len(x) else float("nan")
    except Exception:  # ViennaRNA missing: leave the metric out
        pass
    for name, proc in {"": process, **{f"_{k}": v for k, v in (extra_processes or {}).items()}}.items():
        if proc is not None and getattr(proc, "kind", None) == "masked" and len(x):
            e = elbo(proc, x, num_t_samples=num_t_samples)
            out[f"elbo{name}_mean"] = float(e.mean())
            out[f"elbo{name}_median"] = float(e.median())
    return out
