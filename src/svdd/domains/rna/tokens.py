"""Nucleotide tokens for 50-nt 5′ UTRs.

Vocabulary ``A=0, C=1, G=2, T=3, MASK=4`` (``V = 5``, the mask last, as in the masked process).
``U`` is read as ``T``; ``decode`` writes either alphabet. ``one_hot`` gives the (B, L, 4)
channels-last encoding the Optimus 5-Prime predictor expects (masked or ``N`` positions are
all-zero rows); a float input (B, L, V≥4) is read as soft one-hot rows over the vocabulary
(the relaxed input of gradient-guided methods), keeping only the four nucleotide channels.
"""

from __future__ import annotations

from typing import Iterable

import torch
from torch import Tensor

ALPHABET = "ACGT"
MASK_ID = 4
VOCAB_SIZE = 5
SEQ_LEN = 50
CDS_START = "ATGG"  # first four bases of the coding sequence, appended for the MRL predictor

_LOOKUP = {c: i for i, c in enumerate(ALPHABET)} | {"U": 3}


def encode(seqs: Iterable[str] | str, seq_len: int | None = SEQ_LEN) -> Tensor:
    """Strings of A/C/G/T/U (any case) -> LongTensor (B, L). Raises ValueError on other letters
    or on a length different from ``seq_len`` (``None`` accepts any common length)."""
    if isinstance(seqs, str):
        seqs = [seqs]
    rows = []
    for s in seqs:
        s = s.strip().upper()
        if seq_len is not None and len(s) != seq_len:
            raise ValueError(f"sequence of length {len(s)} given, {seq_len} nt expected: {s[:60]!r}")
        try:
            rows.append([_LOOKUP[c] for c in s])
        except KeyError as err:
            raise ValueError(f"letter {err.args[0]!r} is not a nucleotide (A, C, G, T/U) in {s[:60]!r}") from None
    if not rows:
        return torch.zeros((0, seq_len or 0), dtype=torch.long)
    if len({len(r) for r in rows}) != 1:
        raise ValueError("sequences of different lengths cannot be batched")
    return torch.tensor(rows, dtype=torch.long)


def decode(x: Tensor, rna: bool = True) -> list[str]:
    """LongTensor (B, L) -> strings; ``rna=True`` writes U, else T; a mask token is written ``N``."""
    letters = ("ACGU" if rna else "ACGT") + "N"
    return ["".join(letters[min(int(v), MASK_ID)] for v in row) for row in x.detach().cpu().tolist()]


def one_hot(x: Tensor) -> Tensor:
    """(B, L) tokens -> (B, L, 4) float one-hot (mask -> zeros); (B, L, V) floats -> first 4 channels."""
    if x.is_floating_point():
        if x.dim() != 3 or x.shape[-1] < 4:
            raise ValueError(f"a float input must be soft one-hot rows (B, L, V>=4), got shape {tuple(x.shape)}")
        return x[..., :4]
    x = x.long()
    oh = torch.zeros(*x.shape, 5, dtype=torch.float32, device=x.device)
    oh.scatter_(-1, x.clamp(0, MASK_ID).unsqueeze(-1), 1.0)
    return oh[..., :4]
