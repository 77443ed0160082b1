"""RDKit property rewards on token sequences: ``qed``, ``sa``, ``logp``.

Each reward decodes token ids ``x0 (B, L)`` to SMILES (SELFIES -> SMILES), parses them with
RDKit and returns a float per molecule, NaN for an invalid one (empty or not sanitisable); the
library maps NaN to the reward's ``invalid_value`` and counts it.

- ``qed``: quantitative estimate of drug-likeness (Bickerton et al. 2012), in [0, 1].
- ``sa``: synthetic accessibility from RDKit Contrib ``sascorer`` (Ertl & Schuffenhauer 2009),
  SA ∈ [1, 10] (1 = easy), normalised as (10 − SA)/9 ∈ [0, 1] so that higher is better.
- ``logp``: Crippen logP (Wildman & Crippen 1999), unbounded; invalid molecules get −10.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Callable, Optional, Sequence

import torch
from torch import Tensor

from ..base import DomainError


def _rdkit():
    try:
        from rdkit import Chem, RDLogger
    except ModuleNotFoundError:
        raise DomainError("the molecules domain needs RDKit: run pip install 'svdd[molecules]'") from None
    RDLogger.DisableLog("rdApp.*")
    return Chem


def mol_from_smiles(smiles: Optional[str]):
    """An RDKit molecule, or None when ``smiles`` is empty or does not sanitise."""
    if not smiles:
        return None
    Chem = _rdkit()
    try:
        mol = Chem.MolFromSmiles(smiles)
    except Exception:
        return None
    if mol is None or mol.GetNumAtoms() == 0:
        return None
    return mol


def canonical_smiles(smiles: Optional[str]) -> Optional[str]:
    mol = mol_from_smiles(smiles)
    return None if mol is None else _rdkit().MolToSmiles(mol)


def qed(mol) -> float:
    from rdkit.Chem import QED

    return float(QED.qed(mol))


@lru_cache(maxsize=1)
def _sascorer():
    try:
        from rdkit.Contrib.SA_Score import sascorer
    except ImportError:
        import os
        import sys

        from rdkit.Chem import RDConfig

        sys.path.append(os.path.join(RDConfig.RDContribDir, "SA_Score"))
        import sascorer  # type: ignore
    return sascorer


def sa_score(mol) -> float:
    """Raw SA score in [1, 10] (1 = easy to make)."""
    return float(_sascorer().calculateScore(mol))


def sa_normalised(mol) -> float:
    return (10.0 - sa_score(mol)) / 9.0


def logp(mol) -> float:
    from rdkit.Chem import Crippen

    return float(Crippen.MolLogP(mol))


PROPERTIES: dict[str, tuple[Callable, float, str]] = {
    "qed": (qed, 0.0, "QED drug-likeness in [0, 1] (RDKit); invalid molecules 0"),
    "sa": (sa_normalised, 0.0, "synthetic accessibility (10 - SA)/9 in [0, 1], higher = easier (RDKit Contrib sascorer); invalid 0"),
    "logp": (logp, -10.0, "Crippen logP (RDKit); invalid molecules -10"),
}


class PropertyReward:
    """``reward_fn(x0 tokens (B, L)) -> (B,)``: an RDKit property of the decoded molecules."""

    differentiable = False

    def __init__(self, name: str, tokenizer, fn: Optional[Callable] = None, invalid_value: Optional[float] = None):
        if name not in PROPERTIES and fn is None:
            raise DomainError(f"unknown molecular property {name!r}; choose one of {sorted(PROPERTIES)}")
        default_fn, default_invalid, _ = PROPERTIES.get(name, (None, 0.0, ""))
        self.name = name
        self.tokenizer = tokenizer
        self.fn = fn or default_fn
        self.invalid_value = default_invalid if invalid_value is None else float(invalid_value)

    def score_smiles(self, smiles: Sequence[str]) -> list[float]:
        """Property per SMILES; NaN for invalid molecules."""
        out = []
        for s in smiles:
            mol = mol_from_smiles(s)
            if mol is None:
                out.append(float("nan"))
                continue
            try:
                out.append(self.fn(mol))
            except Exception:
                out.append(float("nan"))
        return out

    def __call__(self, x0: Tensor) -> Tensor:
        smiles = self.tokenizer.decode(x0)
        return torch.tensor(self.score_smiles(smiles), dtype=torch.float32, device=x0.device)

    def __repr__(self) -> str:
        return f"PropertyReward({self.name!r})"
