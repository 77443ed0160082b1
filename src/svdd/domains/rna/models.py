"""The two pretrained UTR diffusion models (masked diffusion over A, C, G, T; 50 nt).

- ``utr-random``: trained on uniform random 50-mers (stand-in for the random MPRA library the
  SVDD paper's model learned; that library is near-uniform, so this prior is near-uniform too).
- ``utr-genomic``: the same architecture trained on 50-nt windows of ENCODE DHS sequences, a
  natural-sequence prior under which the ELBO measures naturalness.

Weights live in ``assets/<name>/`` (``config.json`` + ``model.safetensors``, written by
``scripts/train_rna.py``); ``$SVDD_RNA_MODEL_DIR/<name>/`` overrides the shipped copy.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ...nn import load_model
from ...process.masked import MaskedProcess
from ..base import DomainError
from .tokens import MASK_ID, SEQ_LEN, VOCAB_SIZE

ASSETS = Path(__file__).parent / "assets"
MODEL_NAMES = ("utr-random", "utr-genomic")
MODEL_DESCRIPTIONS = {
    "utr-random": "masked diffusion on uniform random 50-mers (the paper's near-uniform MPRA library)",
    "utr-genomic": "masked diffusion on 50-nt windows of ENCODE DHS sequences (natural-sequence prior)",
}


def model_dir(name: str) -> Path:
    override = os.environ.get("SVDD_RNA_MODEL_DIR")
    if override and (Path(override) / name / "config.json").exists():
        return Path(override) / name
    return ASSETS / name


def load_utr_process(name: str = "utr-random", device: str = "cpu", schedule: str = "loglinear") -> MaskedProcess:
    """``MaskedProcess`` over the pretrained model ``name`` (``utr-random`` or ``utr-genomic``)."""
    if name not in MODEL_NAMES:
        raise DomainError(f"unknown UTR model {name!r}; choose one of {list(MODEL_NAMES)}")
    path = model_dir(name)
    if not (path / "model.safetensors").exists():
        raise DomainError(f"weights of {name} are missing at {path}; train them with scripts/train_rna.py "
                          "or reinstall svdd")
    model = load_model(path, device=device)
    meta = json.loads((path / "config.json").read_text())
    cfg = meta["config"]
    if cfg["vocab_size"] != VOCAB_SIZE or cfg["seq_len"] != SEQ_LEN:
        raise DomainError(f"{path} is not a 50-nt UTR model (vocab {cfg['vocab_size']}, length {cfg['seq_len']})")
    process = MaskedProcess(model, SEQ_LEN, VOCAB_SIZE, MASK_ID, schedule=meta.get("schedule", schedule), device=device)
    process.model_name = name
    return process


def available_models() -> list[str]:
    return [n for n in MODEL_NAMES if (model_dir(n) / "model.safetensors").exists()]
