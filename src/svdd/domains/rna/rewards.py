"""Rewards for 5′ UTR design (all map tokens (B, 50) -> (B,); higher is better).

- ``mrl``: standardised mean ribosome load predicted by Optimus 5-Prime ``evolution_model``
  (the predictor the paper's genetic algorithm used) — the guidance reward.
- ``mrl-eval``: the same architecture retrained on more data (``retrained_evolution_model``),
  an independent predictor to evaluate with (guiding and scoring with one predictor rewards
  its errors). The two agree at r ≈ 0.98 on random sequences, so this exposes only part of
  any reward hacking.
- ``stability``: ``−MFE`` (kcal/mol) of the UTR folded alone with ViennaRNA. Strong 5′ UTR
  structure usually *lowers* ribosome load, so ``mrl+-0.05*stability`` (penalise structure)
  is the biologically sensible combination; ``stability`` alone designs hairpins.

Weighted sums come from the spec parser: ``"mrl+-0.05*stability"``. ``mrl`` and ``mrl-eval``
take the predictor directory as ``oracle_dir=`` (CLI ``--oracle-dir``), as the spec argument
(``"mrl:/path/to/saved_models"``) or from ``$SVDD_UTR_ORACLE_DIR``.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from ...rewards.base import Reward
from ..base import DomainError
from .oracle import mrl_reward
from .tokens import decode


class StabilityReward:
    """``−MFE`` of each UTR (ViennaRNA minimum free energy, kcal/mol); not differentiable."""

    differentiable = False
    invalid_value = 0.0
    name = "stability"

    def __init__(self):
        try:
            import RNA
        except ModuleNotFoundError:
            raise DomainError("the stability reward needs ViennaRNA: pip install 'svdd[rna]'") from None
        self._fold = RNA.fold

    def __call__(self, x0: Tensor) -> Tensor:
        seqs = decode(x0.long(), rna=True)
        return torch.tensor([-self._fold(s)[1] for s in seqs], dtype=torch.float32, device=x0.device)


def _sequence_key(row: Tensor):
    return bytes(row.to(torch.uint8).cpu().numpy())


def make_mrl(arg: Optional[str] = None, *, oracle_dir: Optional[str] = None, device: str = "cpu",
             **_options) -> Reward:
    return Reward(mrl_reward("mrl", arg or oracle_dir, device=device), name="mrl")


def make_mrl_eval(arg: Optional[str] = None, *, oracle_dir: Optional[str] = None, device: str = "cpu",
                  **_options) -> Reward:
    return Reward(mrl_reward("mrl-eval", arg or oracle_dir, device=device), name="mrl-eval")


def make_stability(arg: Optional[str] = None, **_options) -> Reward:
    if arg:
        raise DomainError(f"stability takes no argument, got {arg!r}; write 'stability' or e.g. '0.1*stability'")
    return Reward(StabilityReward(), name="stability", key_fn=_sequence_key)


REWARDS = {
    "mrl": (make_mrl, "predicted mean ribosome load (Optimus 5-Prime evolution_model; guidance)"),
    "mrl-eval": (make_mrl_eval, "predicted MRL by the retrained Optimus 5-Prime (independent evaluation oracle)"),
    "stability": (make_stability, "-MFE of the 50-nt UTR in kcal/mol (ViennaRNA)"),
}
