"""Set-level metrics of generated DNA, each with a real-sequence baseline.

- ``diversity`` = 1 − mean pairwise cosine similarity of the flattened one-hot encodings (the
  SVDD paper's Table 3); for one-hots the cosine is the fraction of identical positions, so
  independent uniform sequences give 0.75.
- ``log_likelihood`` = −NELBO (nats per sequence) under the pretrained masked-diffusion model,
  a Monte Carlo estimate of a lower bound on log p_pre(x0) (the paper's "LL" row).
- k-mer spectra (k = 3, 6): Jensen–Shannon divergence and Pearson r between the generated
  set's spectrum and that of real HepG2-specific DHS (training chromosomes). Spectra of small
  sets are noisy, so ``kmer{k}_js_real_baseline`` gives the divergence of an equally large set of
  real HepG2 DHS (chr1, never trained on) from the same reference; ``kmer{k}_js_all_dhs`` compares
  with the DHS of all four cell types (what the unconditional model was trained on).
- motif enrichment for the HepG2 factors: mean hits per sequence, and
  ``log2((hits + ε) / (hits of real non-HepG2 DHS + ε))``; the same for real HepG2 DHS (chr1) is
  the baseline a good generator of HepG2 enhancers should approach.
"""

from __future__ import annotations

import functools
import math
from typing import Optional

import numpy as np
import torch
from torch import Tensor

from .data import ASSETS, HEPG2, encode, load_subset, one_hot
from .kmers import js_divergence, pearson, spectrum

ENRICHMENT_EPS = 0.01


def diversity(x0: Tensor, max_pairs_batch: int = 4096) -> float:
    """1 − mean over pairs i ≠ j of cos(one_hot(x_i), one_hot(x_j))."""
    oh = one_hot(torch.as_tensor(x0)).flatten(1).double()
    n = oh.shape[0]
    if n < 2:
        return float("nan")
    oh = oh / oh.norm(dim=1, keepdim=True).clamp_min(1e-12)
    total = 0.0
    for i in range(0, n, max_pairs_batch):
        sim = oh[i:i + max_pairs_batch] @ oh.T
        total += float(sim.sum())
    return 1.0 - (total - n) / (n * (n - 1))


@functools.lru_cache(maxsize=1)
def kmer_reference() -> dict[str, np.ndarray]:
    z = np.load(ASSETS / "kmer_reference.npz")
    return {k: z[k] for k in z.files if k != "note"}


@functools.lru_cache(maxsize=1)
def real_subset() -> tuple[Tensor, Tensor]:
    s = load_subset()
    return encode(s["sequence"]), torch.from_numpy(s["cell_type"])


def kmer_metrics(x0: Tensor, ks=(3, 6), reference: str = "hepg2", generator: Optional[torch.Generator] = None) -> dict:
    ref = kmer_reference()
    real, cell = real_subset()
    real_hepg2 = real[cell == HEPG2]
    n = min(len(x0), len(real_hepg2))
    g = generator or torch.Generator().manual_seed(0)
    base = real_hepg2[torch.randperm(len(real_hepg2), generator=g)[:n]]
    out = {}
    for k in ks:
        p, q = spectrum(x0, k), spectrum(ref[f"{reference}_k{k}"])
        out[f"kmer{k}_js"] = js_divergence(p, q)
        out[f"kmer{k}_pearson"] = pearson(p, q)
        out[f"kmer{k}_js_real_baseline"] = js_divergence(spectrum(base, k), q)
        out[f"kmer{k}_js_all_dhs"] = js_divergence(p, spectrum(ref[f"all_k{k}"]))
    return out


def motif_metrics(x0: Tensor, factors=None) -> dict:
    from .motifs import HEPG2_FACTORS, get_motif

    real, cell = real_subset()
    out = {}
    for f in factors or HEPG2_FACTORS:
        m = get_motif(f)
        gen = float(m.count(x0).float().mean())
        real_counts = m.count(real).float()
        bg = float(real_counts[cell != HEPG2].mean())
        hep = float(real_counts[cell == HEPG2].mean())
        out[f"motif_{f}_per_seq"] = gen
        out[f"motif_{f}_log2_enrichment"] = math.log2((gen + ENRICHMENT_EPS) / (bg + ENRICHMENT_EPS))
        out[f"motif_{f}_log2_enrichment_real_hepg2"] = math.log2((hep + ENRICHMENT_EPS) / (bg + ENRICHMENT_EPS))
    return out


@torch.no_grad()
def log_likelihood(process, x0: Tensor, num_t_samples: int = 4, batch_size: int = 256, seed: int = 0) -> Tensor:
    """−NELBO per sequence (nats), ``(B,)``."""
    base = getattr(process, "process", process)   # unwrap a counting wrapper
    device = getattr(base, "device", torch.device("cpu"))
    gen = torch.Generator(device=device).manual_seed(seed)
    parts = [base.nelbo(x0[i:i + batch_size].to(device), num_t_samples=num_t_samples, generator=gen).cpu()
             for i in range(0, len(x0), batch_size)]
    return -torch.cat(parts) if parts else torch.zeros(0)


def quantile_summary(values: Tensor, prefix: str) -> dict:
    v = torch.as_tensor(values, dtype=torch.float64).flatten()
    if v.numel() == 0:
        return {}
    return {f"{prefix}_median": float(torch.quantile(v, 0.5)), f"{prefix}_top10": float(torch.quantile(v, 0.9)),
            f"{prefix}_mean": float(v.mean())}
