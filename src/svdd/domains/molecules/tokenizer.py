"""SELFIES tokenizer for masked diffusion over molecules.

A SMILES string is converted to SELFIES (Krenn et al. 2020), split into its bracket tokens and
mapped to ids over a fixed vocabulary::

    id 0            [PAD]  end-of-sequence / padding (the model learns it; decoding drops it)
    ids 1 .. V-2    SELFIES tokens seen in the training set (sorted)
    id V-1          [MASK] the absorbing state of the diffusion (never in a clean sequence)

Every sequence has exactly ``max_len`` tokens (the real tokens, then ``[PAD]`` to the end).
Because every SELFIES string decodes to a valid molecule, decoding any id sequence gives a
SMILES string (possibly empty, which counts as invalid).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch
from torch import Tensor

from ..base import DomainError

PAD = "[PAD]"
MASK = "[MASK]"


def _selfies():
    try:
        import selfies
    except ModuleNotFoundError:
        raise DomainError("the molecules domain needs the 'selfies' package: run pip install 'svdd[molecules]'") from None
    return selfies


class SelfiesTokenizer:
    def __init__(self, tokens: Sequence[str], max_len: int):
        tokens = list(tokens)
        if tokens[0] != PAD or tokens[-1] != MASK or len(set(tokens)) != len(tokens):
            raise ValueError("vocabulary must start with [PAD], end with [MASK] and have no duplicates")
        self.tokens = tokens
        self.max_len = int(max_len)
        self.index = {tok: i for i, tok in enumerate(tokens)}
        self.pad_id = 0
        self.mask_id = len(tokens) - 1

    @property
    def vocab_size(self) -> int:
        return len(self.tokens)

    # -- construction / persistence -------------------------------------------------------------
    @classmethod
    def build(cls, selfies_strings: Iterable[str], max_len: int) -> "SelfiesTokenizer":
        sf = _selfies()
        alphabet: set[str] = set()
        for s in selfies_strings:
            alphabet.update(sf.split_selfies(s))
        alphabet -= {PAD, MASK}
        return cls([PAD, *sorted(alphabet), MASK], max_len)

    def to_dict(self) -> dict:
        return {"type": "selfies", "tokens": self.tokens, "max_len": self.max_len}

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=1))

    @classmethod
    def load(cls, path: str | Path) -> "SelfiesTokenizer":
        meta = json.loads(Path(path).read_text())
        return cls(meta["tokens"], meta["max_len"])

    # -- encoding ------------------------------------------------------------------------------
    def smiles_to_selfies(self, smiles: str) -> str:
        sf = _selfies()
        try:
            out = sf.encoder(smiles)
        except Exception:  # selfies.EncoderError and RDKit-unrelated parse failures
            out = None
        if not out:
            raise DomainError(f"cannot encode SMILES {smiles!r} as SELFIES; check that it is a valid molecule")
        return out

    def encode_selfies(self, selfies_string: str) -> list[int]:
        toks = list(_selfies().split_selfies(selfies_string))
        unknown = [t for t in toks if t not in self.index or t in (PAD, MASK)]
        if unknown:
            raise DomainError(f"SELFIES token(s) {sorted(set(unknown))} are not in the model's vocabulary; "
                              "the molecule contains atoms or charges the model never saw")
        if len(toks) > self.max_len:
            raise DomainError(f"molecule has {len(toks)} SELFIES tokens; the model handles at most {self.max_len}")
        return [self.index[t] for t in toks] + [self.pad_id] * (self.max_len - len(toks))

    def encode(self, smiles: str | Sequence[str]) -> Tensor:
        """SMILES (one or a list) -> token ids ``(L,)`` or ``(B, L)`` long."""
        if isinstance(smiles, str):
            return torch.tensor(self.encode_selfies(self.smiles_to_selfies(smiles)), dtype=torch.long)
        return torch.tensor([self.encode_selfies(self.smiles_to_selfies(s)) for s in smiles], dtype=torch.long)

    # -- decoding ------------------------------------------------------------------------------
    def ids_to_selfies(self, ids: Sequence[int]) -> str:
        """Drop [PAD] (and any stray [MASK]) and join the remaining tokens."""
        return "".join(self.tokens[i] for i in ids if i != self.pad_id and i != self.mask_id)

    def decode_one(self, ids: Sequence[int]) -> str:
        sf = _selfies()
        try:
            return sf.decoder(self.ids_to_selfies(ids)) or ""
        except Exception:
            return ""

    def decode(self, x: Tensor | np.ndarray) -> list[str]:
        """Token ids ``(B, L)`` -> SMILES strings ("" when nothing decodes)."""
        rows = x.tolist() if hasattr(x, "tolist") else list(x)
        if rows and isinstance(rows[0], int):
            rows = [rows]
        return [self.decode_one(r) for r in rows]
