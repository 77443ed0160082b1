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
  model, a Monte Carlo estimate with a fixed seed (``MaskedProcess.nelbo``). Uniform random
  50-mers have ``log p = −50 ln 4 = −69.3`` under the uniform distribution.
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
    """(B,) ELBO (nats, ≤ log p(x)) under ``process``; deterministic for a given ``seed``."""
    base = getattr(process, "process", process)  # unwrap an nfe-counting wrapper
    device = getattr(base, "device", torch.device("cpu"))
    gen = torch.Generator(device=device).manual_seed(seed)
    out = [-base.nelbo(x[i:i + batch_size].to(device), num_t_samples=num_t_samples, generator=gen).cpu()
           for i in range(0, x.shape[0], batch_size)]
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
