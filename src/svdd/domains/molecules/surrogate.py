"""Differentiable surrogates of RDKit rewards, so gradient methods (DPS) have something to follow.

QED and SA are RDKit black boxes: no gradient. DPS (and the paper's DPS rows for molecules)
needs one, so ``surrogate:qed`` / ``surrogate:sa`` are small dilated-convolution regressors
``g(p) ≈ r(x0)`` over SELFIES token *probabilities* ``p`` (B, L, V) — a one-hot sequence is the
special case — trained on MOSES molecules labelled by RDKit (``scripts/train_molecule_surrogates.py``,
held-out correlations in ``config.json`` and docs/molecules.md). The first layer is linear in ``p``,
so DPS's tilt Δ = ∂g/∂p at x̂0's probabilities is well defined. A suite guides with the
surrogate and scores with the real reward (``guide: surrogate:qed`` in a bench methods entry).
A surrogate reads one tokenizer's ids: the default model's live in ``assets/surrogate-<prop>``,
another model's in its own folder (``assets/<model>/surrogate-<prop>``, see ``surrogate_home``).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

ASSETS = Path(__file__).resolve().parent / "assets"
SURROGATES = ("qed", "sa")


def surrogate_home(model_dir: Path) -> Path:
    """The folder holding ``surrogate-<prop>/`` for the model in ``model_dir``: the assets folder
    for the default model, else the model's own folder."""
    from . import MODEL_DIR

    return ASSETS if Path(model_dir).resolve() == MODEL_DIR.resolve() else Path(model_dir)


class SurrogateNet(nn.Module):
    """(B, L, V) probabilities or (B, L) ids -> (B,) predicted reward (de-standardised)."""

    def __init__(self, vocab_size: int = 28, seq_len: int = 48, channels: int = 96, kernel_size: int = 5,
                 dilations: tuple = (1, 2, 4, 8)):
        super().__init__()
        self.config = dict(vocab_size=vocab_size, seq_len=seq_len, channels=channels, kernel_size=kernel_size,
                           dilations=list(dilations))
        self.vocab_size = vocab_size
        self.embed = nn.Linear(vocab_size, channels, bias=False)
        self.pos = nn.Parameter(torch.randn(1, seq_len, channels) * 0.02)
        self.convs = nn.ModuleList(nn.Conv1d(channels, channels, kernel_size, padding=d * (kernel_size - 1) // 2,
                                             dilation=d) for d in dilations)
        self.norms = nn.ModuleList(nn.GroupNorm(8, channels) for _ in dilations)
        self.head = nn.Sequential(nn.Linear(2 * channels, channels), nn.SiLU(), nn.Linear(channels, 1))
        self.register_buffer("target_mean", torch.tensor(0.0))
        self.register_buffer("target_std", torch.tensor(1.0))

    def forward(self, x: Tensor) -> Tensor:
        # ids: a row lookup, the same numbers as one_hot(x) @ W.T without the (B, L, V) one-hot table
        e = F.embedding(x.long(), self.embed.weight.t()) if x.dim() == 2 else self.embed(x.float())
        h = (e + self.pos[:, : e.shape[1]]).transpose(1, 2)
        for conv, norm in zip(self.convs, self.norms):
            h = h + conv(F.silu(norm(h)))
        out = self.head(torch.cat([h.mean(-1), h.amax(-1)], dim=-1)).squeeze(-1)
        return out * self.target_std + self.target_mean


class SurrogateReward:
    """``surrogate:<qed|sa>``: the shipped surrogate as a differentiable batch reward."""

    differentiable = True

    def __init__(self, prop: str, path: Path | None = None, device: str | torch.device = "cpu"):
        from safetensors.torch import load_file

        path = Path(path) if path is not None else ASSETS / f"surrogate-{prop}"
        meta = json.loads((path / "config.json").read_text())
        self.net = SurrogateNet(**{**meta["config"], "dilations": tuple(meta["config"]["dilations"])})
        self.net.load_state_dict(load_file(str(path / "model.safetensors")))
        self.net.to(device).eval().requires_grad_(False)
        self.name = f"surrogate:{prop}"
        self.meta = meta

    def to(self, device):
        self.net.to(device)
        return self

    def __call__(self, x: Tensor) -> Tensor:
        return self.net(x.to(self.net.target_mean.device))

    def __repr__(self) -> str:
        return f"SurrogateReward({self.name!r})"


__all__ = ["SurrogateNet", "SurrogateReward", "SURROGATES"]
