"""Transcription-factor motif scanning with JASPAR 2024 matrices (``pyjaspar``, offline).

A motif's count matrix (+0.5 pseudocount per base) becomes a position-specific scoring matrix
``W[b, j] = log2(p_j(b) / 0.25)``. The score of the window starting at ``i`` is
``Σ_j W[x_{i+j}, j]`` — a 1-D convolution of the one-hot sequence with ``W`` — computed on both
strands (the reverse-complement strand uses ``W`` flipped in both axes). A *hit* is a window
whose best-strand score reaches the threshold at false-positive rate 1e-4 under a uniform
background (the FIMO convention, from Biopython's exact score distribution).

``HEPG2_FACTORS`` are the liver regulators used for motif enrichment: HNF4A, HNF1A, FOXA2,
CEBPA, CEBPB (their current JASPAR CORE matrices).
"""

from __future__ import annotations

import functools
import re
import warnings

import torch
from torch import Tensor

from ..base import DomainError
from .data import one_hot

JASPAR_RELEASE = "JASPAR2024"
HEPG2_FACTORS = {"HNF4A": "MA0114.5", "HNF1A": "MA0046.3", "FOXA2": "MA0047.4", "CEBPA": "MA0102.5",
                 "CEBPB": "MA0466.4"}
FPR = 1e-4
PSEUDOCOUNT = 0.5


class Motif:
    """A PSSM with its hit threshold; ``count(x)`` and ``max_score(x)`` are batched on (B, L)."""

    def __init__(self, name: str, matrix_id: str, pssm: Tensor, threshold: float):
        self.name = name
        self.matrix_id = matrix_id
        self.pssm = pssm.float()            # (4, w), rows A, C, G, T
        self.threshold = float(threshold)

    @property
    def width(self) -> int:
        return self.pssm.shape[1]

    def scores(self, x: Tensor) -> Tensor:
        """Best-strand window scores ``(B, L − w + 1)``."""
        oh = one_hot(x).transpose(1, 2)                      # (B, 4, L)
        w = self.pssm.to(oh.device)
        weight = torch.stack([w, w.flip(0).flip(1)])[:, :, :]  # (2, 4, w): forward, reverse complement
        s = torch.nn.functional.conv1d(oh, weight)            # (B, 2, L − w + 1)
        return s.amax(dim=1)

    def count(self, x: Tensor) -> Tensor:
        return (self.scores(x) >= self.threshold - 1e-6).sum(dim=1)

    def max_score(self, x: Tensor) -> Tensor:
        return self.scores(x).amax(dim=1)

    def __repr__(self) -> str:
        return f"Motif({self.name}, {self.matrix_id}, width={self.width}, threshold={self.threshold:.2f})"


@functools.lru_cache(maxsize=1)
def _jaspar():
    try:
        from pyjaspar import jaspardb
    except ModuleNotFoundError:
        raise DomainError("motif rewards and metrics need pyjaspar and biopython: pip install 'svdd[dna]'") from None
    return jaspardb(release=JASPAR_RELEASE)


@functools.lru_cache(maxsize=None)
def get_motif(tf: str) -> Motif:
    """A JASPAR CORE motif by TF name (``HNF4A``; case-insensitive) or matrix ID (``MA0114.5``)."""
    key = tf.strip()
    db = _jaspar()
    if re.fullmatch(r"MA\d{4}(\.\d+)?", key, flags=re.IGNORECASE):
        m = db.fetch_motif_by_id(key.upper())
    elif key.upper() in HEPG2_FACTORS:
        m = db.fetch_motif_by_id(HEPG2_FACTORS[key.upper()])
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")   # pyjaspar warns when nothing matches; we raise instead
            found = list(db.fetch_motifs_by_name(key) or [])
        found = [m for m in found if m.name.upper() == key.upper()] or found
        if not found:
            raise DomainError(f"no JASPAR 2024 CORE motif named {tf!r}; give a TF name such as HNF4A or a "
                              f"matrix ID such as MA0114.5")
        m = sorted(found, key=lambda mm: mm.matrix_id)[-1]
    if m is None:
        raise DomainError(f"no JASPAR 2024 matrix {tf!r}; check the ID (e.g. MA0114.5)")
    background = {b: 0.25 for b in "ACGT"}
    pssm = m.counts.normalize(pseudocounts=PSEUDOCOUNT).log_odds(background)
    threshold = pssm.distribution(background=background, precision=10 ** 3).threshold_fpr(FPR)
    matrix = torch.tensor([[pssm[b][j] for j in range(pssm.length)] for b in "ACGT"], dtype=torch.float32)
    return Motif(m.name.upper(), m.matrix_id, matrix, threshold)


def motif_counts(x: Tensor, factors=tuple(HEPG2_FACTORS)) -> dict[str, Tensor]:
    """Hits per sequence for each factor, ``{name: (B,) long}``."""
    return {f: get_motif(f).count(x) for f in factors}
