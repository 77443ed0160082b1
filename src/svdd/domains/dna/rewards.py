"""DNA rewards. Each maps clean tokens ``x0 (B, 200)`` (A=0, C=1, G=2, T=3) to ``(B,)``;
the differentiable ones also accept a relaxed one-hot / probabilities ``(B, L, 4|5)`` so that
gradient methods (DPS's discrete tilt) can differentiate through them.

- ``hepg2``: HepG2 log-odds ``log p − log(1 − p)`` of the *guidance* oracle (a cell-type CNN
  trained on odd chromosomes) that a sequence is a HepG2-specific DHS;
- ``hepg2-eval``: the same quantity from the *evaluation* oracle, trained independently on the
  even chromosomes; optimise the first and report both, so reward hacking shows as a gap;
- ``gc``: GC fraction; ``gc:0.6`` is ``−|GC − 0.6|`` (hit a target GC content);
- ``motif:<TF>``: number of positions (either strand) where a JASPAR 2024 motif scores above
  its p < 1e-4 threshold, e.g. ``motif:HNF4A`` or ``motif:MA0114.5`` (needs ``pyjaspar``).
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch
from torch import Tensor

from ..base import DomainError
from .data import ASSETS, HEPG2, one_hot

ORACLE_DIRS = {"guidance": ASSETS / "oracle_guidance", "evaluation": ASSETS / "oracle_evaluation"}


@functools.lru_cache(maxsize=None)
def load_oracle(which: str = "guidance", device: str = "cpu"):
    """The committed activity oracle ``which`` ∈ {guidance, evaluation}, in eval mode."""
    from ...nn import load_model
    from . import models  # noqa: F401  (registers the classes with load_model)

    if which not in ORACLE_DIRS:
        raise DomainError(f"unknown oracle {which!r}; choose 'guidance' or 'evaluation'")
    path = ORACLE_DIRS[which]
    if not (path / "model.safetensors").exists():
        raise DomainError(f"the {which} HepG2 oracle is not installed at {path}; train it with "
                          f"`python scripts/train_dna.py` (see docs/dna.md)")
    model = load_model(path, device=device)
    for p in model.parameters():
        p.requires_grad_(False)
    return model


class OracleReward:
    """HepG2 log-odds of an ``ActivityOracle`` (tokens or relaxed one-hots in, ``(B,)`` out)."""

    differentiable = True
    invalid_value = -20.0

    def __init__(self, oracle, target: int = HEPG2, name: str = "hepg2", batch_size: int = 4096):
        self.oracle = oracle
        self.target = int(target)
        self.name = name
        self.batch_size = batch_size
        self._copies: dict = {}

    def _oracle_on(self, device: torch.device):
        """The oracle on ``device`` (a copy is made once per device, so CPU oracles serve GPU runs)."""
        home = next(self.oracle.parameters()).device
        if device == home:
            return self.oracle
        if str(device) not in self._copies:
            import copy

            self._copies[str(device)] = copy.deepcopy(self.oracle).to(device)
        return self._copies[str(device)]

    def __call__(self, x0: Tensor) -> Tensor:
        oracle = self._oracle_on(x0.device)
        x = one_hot(x0)
        outs = [oracle.log_odds(x[i:i + self.batch_size], self.target)
                for i in range(0, x.shape[0], self.batch_size)]
        out = torch.cat(outs) if outs else torch.zeros(0, device=x0.device)
        return out.float()


class GCReward:
    """GC fraction, or ``−|GC − target|`` with a target."""

    differentiable = True
    invalid_value = 0.0

    def __init__(self, target: float | None = None):
        if target is not None and not 0.0 <= target <= 1.0:
            raise DomainError(f"gc target must be a fraction in [0, 1], got {target!r} (e.g. gc:0.6)")
        self.target = target
        self.name = "gc" if target is None else f"gc:{target:g}"

    def __call__(self, x0: Tensor) -> Tensor:
        p = one_hot(x0)
        gc = (p[..., 1] + p[..., 2]).sum(dim=1) / max(p.shape[1], 1)
        return gc if self.target is None else -(gc - self.target).abs()


class MotifCountReward:
    """Motif occurrences per sequence (both strands) above the motif's p-value threshold."""

    differentiable = False
    invalid_value = 0.0

    def __init__(self, tf: str):
        from .motifs import get_motif

        self.motif = get_motif(tf)
        self.name = f"motif:{self.motif.name}"

    def __call__(self, x0: Tensor) -> Tensor:
        return self.motif.count(x0).float()


def _float_arg(arg, what):
    try:
        return float(arg)
    except (TypeError, ValueError):
        raise DomainError(f"{what} takes a number, got {arg!r}") from None


def make_oracle_reward(which: str, name: str):
    def factory(arg=None, device: str = "cpu", **_):
        if arg:
            raise DomainError(f"reward {name!r} takes no argument (got {name}:{arg})")
        return OracleReward(load_oracle(which, str(device)), HEPG2, name=name)
    return factory


def make_gc_reward(arg=None, **_):
    return GCReward(None if not arg else _float_arg(arg, "gc"))


def make_motif_reward(arg=None, **_):
    if not arg:
        raise DomainError("motif needs a transcription factor, e.g. motif:HNF4A or motif:MA0114.5")
    return MotifCountReward(arg)


REWARDS = {
    "hepg2": (make_oracle_reward("guidance", "hepg2"),
              "HepG2 log-odds of the guidance oracle (CNN on odd chromosomes); differentiable"),
    "hepg2-eval": (make_oracle_reward("evaluation", "hepg2-eval"),
                   "HepG2 log-odds of the held-out evaluation oracle (even chromosomes); report, don't optimise"),
    "gc": (make_gc_reward, "GC fraction; gc:0.6 rewards −|GC − 0.6|"),
    "motif": (make_motif_reward, "JASPAR motif hits per sequence, e.g. motif:HNF4A (needs pyjaspar)"),
}


def oracle_available(which: str = "guidance") -> bool:
    return (Path(ORACLE_DIRS[which]) / "model.safetensors").exists()
