"""k-mer spectra of DNA token sequences.

The k-mer spectrum of a set of sequences is the normalised histogram of its 4^k overlapping
k-mers (forward strand). Two spectra ``p, q`` are compared by the Jensen–Shannon divergence
``JS = ½ KL(p‖m) + ½ KL(q‖m)``, ``m = (p + q)/2`` (nats, in [0, log 2]) and by the Pearson
correlation of their frequencies (the DDSM / Dirichlet-FM convention).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor


def kmer_counts(tokens: Tensor, k: int) -> np.ndarray:
    """Counts ``(4^k,)`` of all k-mers of ``tokens (B, L)``; windows containing a non-ACGT token
    (a mask) are skipped."""
    x = torch.as_tensor(tokens).long().cpu()
    if x.dim() == 1:
        x = x[None]
    B, L = x.shape
    if L < k:
        return np.zeros(4 ** k, dtype=np.int64)
    idx = torch.zeros(B, L - k + 1, dtype=torch.long)
    valid = torch.ones(B, L - k + 1, dtype=torch.bool)
    for j in range(k):
        w = x[:, j:L - k + 1 + j]
        idx = idx * 4 + w.clamp(0, 3)
        valid &= (w >= 0) & (w < 4)
    return torch.bincount(idx[valid], minlength=4 ** k).numpy().astype(np.int64)


def spectrum(tokens_or_counts, k: int | None = None) -> np.ndarray:
    """Normalised frequencies from tokens (needs ``k``) or from counts."""
    counts = kmer_counts(tokens_or_counts, k) if k is not None else np.asarray(tokens_or_counts, dtype=np.float64)
    counts = counts.astype(np.float64)
    return counts / max(counts.sum(), 1.0)


def js_divergence(p: np.ndarray, q: np.ndarray) -> float:
    p, q = np.asarray(p, np.float64), np.asarray(q, np.float64)
    p, q = p / p.sum(), q / q.sum()
    m = 0.5 * (p + q)

    def kl(a, b):
        nz = a > 0
        return float(np.sum(a[nz] * np.log(a[nz] / b[nz])))

    return 0.5 * kl(p, m) + 0.5 * kl(q, m)


def pearson(p: np.ndarray, q: np.ndarray) -> float:
    p, q = np.asarray(p, np.float64), np.asarray(q, np.float64)
    if p.std() == 0 or q.std() == 0:
        return float("nan")
    return float(np.corrcoef(p, q)[0, 1])
