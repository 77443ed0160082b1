"""Training data for the UTR diffusion models.

- ``utr-random``: uniform random 50-mers, drawn on the fly from a seeded generator. The SVDD
  paper's model learned the random MPRA library of Sample et al. (egfp_unmod_1), which is
  close to uniform, so a model of uniform 50-mers is its honest offline stand-in.
- ``utr-genomic``: 50-nt windows (both strands) of the 47,872 ENCODE DHS sequences (200 bp;
  K562 / hESC / HepG2 / GM12878) shipped as data in the ``dnadiffusion==0.0.0.dev0`` wheel, split
  by the file's own ``data_label`` (training / validation / test). DHS regions are promoters
  and enhancers, not UTRs: this is a natural-sequence prior under which an ELBO means
  something, not a UTR model.

The wheel is fetched once with ``pip download --no-deps`` into ``$SVDD_CACHE_DIR`` (default
``~/.cache/svdd``) and checked against its SHA-256.
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Optional

import torch
from torch import Tensor

from ...cache import cache_dir, fetch_wheel
from ..base import DomainError
from .tokens import SEQ_LEN

DHS_WHEEL = "dnadiffusion-0.0.0.dev0-py3-none-any.whl"
DHS_WHEEL_SHA256 = "d97becfde9c1cc2fcae3a5bd7584da2224d072ebf15194fdb25b85840d7f484c"
DHS_MEMBER = "dnadiffusion/data/K562_hESCT0_HepG2_GM12878_12k_sequences_per_group.txt"
SPLITS = ("training", "validation", "test")
_TOKEN = {c: i for i, c in enumerate("ACGT")}


def dhs_wheel(download: bool = True) -> Path:
    """Path of the checked ``dnadiffusion`` wheel in the cache (downloaded with pip if missing)."""
    return fetch_wheel("dnadiffusion==0.0.0.dev0", DHS_WHEEL, DHS_WHEEL_SHA256, cache_dir("dnadiffusion"), download)


def dhs_sequences(wheel: Optional[Path] = None) -> tuple[Tensor, Tensor]:
    """The 200-bp DHS sequences as uint8 tokens (N, 200) and their split index into ``SPLITS``."""
    wheel = wheel or dhs_wheel()
    with zipfile.ZipFile(wheel) as zf:
        lines = zf.read(DHS_MEMBER).decode().splitlines()
    header = lines[0].split("\t")
    i_seq, i_split = header.index("sequence"), header.index("data_label")
    table = bytes.maketrans(b"ACGTacgt", bytes([0, 1, 2, 3, 0, 1, 2, 3]))
    seqs, split = [], []
    for line in lines[1:]:
        cols = line.split("\t")
        if len(cols) <= max(i_seq, i_split):
            continue
        seq = cols[i_seq].encode()
        if seq.strip(b"ACGTacgt"):
            continue  # a non-ACGT letter (none in this release)
        seqs.append(seq.translate(table))
        split.append(SPLITS.index(cols[i_split]))
    if len({len(s) for s in seqs}) != 1:
        raise DomainError("DHS sequences of unequal lengths")
    tokens = torch.frombuffer(bytearray(b"".join(seqs)), dtype=torch.uint8).view(len(seqs), -1).clone()
    return tokens, torch.tensor(split, dtype=torch.uint8)


def pack(tokens: Tensor) -> Tensor:
    """uint8 tokens (N, L) in 0..3, L divisible by 4 -> 2-bit packed (N, L/4)."""
    t = tokens.to(torch.uint8).view(tokens.shape[0], -1, 4)
    return t[..., 0] | (t[..., 1] << 2) | (t[..., 2] << 4) | (t[..., 3] << 6)


def unpack(packed: Tensor) -> Tensor:
    """Inverse of ``pack``: (N, L/4) -> uint8 (N, L)."""
    return torch.stack([(packed >> s) & 3 for s in (0, 2, 4, 6)], dim=-1).flatten(1)


def windows(tokens: Tensor, stride: int = 10, length: int = SEQ_LEN, reverse_complement: bool = True) -> Tensor:
    """All ``length``-nt windows at ``stride`` of each sequence of ``tokens (N, W)`` (and of its
    reverse complement). Returns LongTensor (N·k, length)."""
    tokens = tokens.long()
    parts = [tokens]
    if reverse_complement:
        parts.append((3 - tokens).flip(1))
    out = [p[:, s:s + length] for p in parts for s in range(0, tokens.shape[1] - length + 1, stride)]
    return torch.cat(out, dim=0)


def random_utrs(num: int, generator: Optional[torch.Generator] = None, length: int = SEQ_LEN) -> Tensor:
    """``num`` uniform random sequences (LongTensor (num, length))."""
    return torch.randint(0, 4, (num, length), generator=generator)


def save_packed(path: Path, tokens: Tensor, split: Tensor) -> None:
    """The GPU job's input: 2-bit packed DHS tokens + splits, a plain ``torch.save`` file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"packed": pack(tokens), "split": split.to(torch.uint8), "length": int(tokens.shape[1]),
                "splits": list(SPLITS)}, path)


def load_packed(path: Path) -> tuple[Tensor, Tensor]:
    """(tokens uint8 (N, L), split uint8 (N,)) from ``save_packed``."""
    blob = torch.load(path, map_location="cpu", weights_only=True)
    return unpack(blob["packed"])[:, : blob["length"]], blob["split"]


def dhs_test_windows() -> Tensor:
    """512 held-out DHS 50-nt windows shipped with the package (LongTensor (512, 50)): a small
    natural-sequence reference for tests and metrics, no download needed."""
    from .tokens import encode

    path = Path(__file__).parent / "assets" / "dhs_test_windows.txt"
    lines = [s for s in path.read_text().splitlines() if s and not s.startswith("#")]
    return encode(lines)
