"""A bidirectional transformer denoiser for masked diffusion.

``MaskedTransformer(x (B, L) long, t (B,) float) -> logits (B, L, V)`` (``x`` may also be a float
one-hot (B, L, V), for gradients w.r.t. the input tokens): token + learned position
embeddings, a sinusoidal embedding of ``t`` added to every position through a small MLP
(adaLN-free, like MDLM's DiT trunk without the modulation), pre-norm encoder layers, and a
linear head over the whole vocabulary (the process masks out the mask token).
Weights are saved as safetensors next to a ``config.json``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from torch import Tensor, nn


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = (t.float() * 1000.0)[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


class MaskedTransformer(nn.Module):
    def __init__(self, vocab_size: int, seq_len: int, dim: int = 256, depth: int = 6, heads: int = 8,
                 mlp_ratio: float = 4.0, dropout: float = 0.0, time_conditioning: bool = True):
        super().__init__()
        self.config = dict(vocab_size=vocab_size, seq_len=seq_len, dim=dim, depth=depth, heads=heads,
                           mlp_ratio=mlp_ratio, dropout=dropout, time_conditioning=time_conditioning)
        self.token_embedding = nn.Embedding(vocab_size, dim)
        self.position_embedding = nn.Parameter(torch.zeros(1, seq_len, dim))
        nn.init.normal_(self.position_embedding, std=0.02)
        self.time_conditioning = time_conditioning
        if time_conditioning:
            self.time_mlp = nn.Sequential(nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        layer = nn.TransformerEncoderLayer(dim, heads, int(dim * mlp_ratio), dropout=dropout,
                                           activation="gelu", batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab_size)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        # a float (B, L, V) input is a (relaxed) one-hot: lets guidance differentiate w.r.t. tokens
        tok = x.to(self.token_embedding.weight.dtype) @ self.token_embedding.weight if x.is_floating_point() \
            else self.token_embedding(x)
        h = tok + self.position_embedding[:, : x.shape[1]]
        if self.time_conditioning:
            h = h + self.time_mlp(timestep_embedding(t, h.shape[-1]))[:, None, :]
        return self.head(self.norm(self.encoder(h)))


MODEL_CLASSES = {"MaskedTransformer": MaskedTransformer}


def save_model(model: nn.Module, path: str | Path, extra: dict | None = None, half: bool = False) -> None:
    """Write ``path/config.json`` and ``path/model.safetensors`` (fp16 with ``half=True``)."""
    from safetensors.torch import save_file

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    config = {"class": type(model).__name__, "config": model.config, **(extra or {})}
    state = {k: (v.half() if half and v.is_floating_point() else v).detach().cpu().contiguous()
             for k, v in model.state_dict().items()}
    from ..runfolder import atomic_path, atomic_write_json

    with atomic_path(path / "model.safetensors") as tmp:
        save_file(state, str(tmp))
    atomic_write_json(path / "config.json", config)


def load_model(path: str | Path, device: str | torch.device = "cpu") -> nn.Module:
    """Load a model written by ``save_model`` (no network). Returns it in eval mode, float32."""
    from safetensors.torch import load_file

    path = Path(path)
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"no model at {path} (expected config.json and model.safetensors)")
    meta = json.loads((path / "config.json").read_text())
    model = MODEL_CLASSES[meta["class"]](**meta["config"])
    state = {k: v.float() if v.is_floating_point() else v for k, v in load_file(str(path / "model.safetensors")).items()}
    model.load_state_dict(state)
    return model.to(device).eval()
