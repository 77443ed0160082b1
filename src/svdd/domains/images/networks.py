"""Small networks of the images domain: digit classifiers (rewards and evaluation) and a
time-conditioned value network for SVDD-MC.

- ``DigitClassifier``: a CNN over (B, 1, 16, 16) images in [-1, 1] giving 10 logits. The reward
  ``classifier:<d>`` is ``log softmax(logits)[d]`` — smooth, so DPS and DNO can use its
  gradient. Two are trained on *disjoint* halves of the data with different widths and seeds:
  the reward classifier and the evaluation classifier (``classifier-eval:<d>``), so a method
  that fools the first (reward hacking) is caught by the second.
- ``ImageValueNetwork``: ``f(x_t, s) -> (B,)``, a CNN whose channels are modulated (FiLM) by a
  sinusoidal embedding of the time fraction ``s = t / T ∈ [0, 1]`` (``LearnedValue`` divides
  the process's ``t`` by its noise-end time before calling it), for the Monte Carlo regression
  ``f(x_t, t) ≈ E[r(x0) | x_t]`` of SVDD-MC.

This module imports only torch (the GPU training job loads it by file path).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from torch import Tensor, nn

__all__ = ["DigitClassifier", "ImageValueNetwork", "save_network", "load_network", "write_safetensors"]


class DigitClassifier(nn.Module):
    """Three 3×3 conv stages (16 → 8 → 4 pixels), GroupNorm + SiLU, global average pool, linear."""

    def __init__(self, width: int = 32, dropout: float = 0.0, in_channels: int = 1, num_classes: int = 10):
        super().__init__()
        self.config = {"width": width, "dropout": dropout, "in_channels": in_channels, "num_classes": num_classes}
        w = width

        def block(cin, cout, stride):
            return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=stride, padding=1), nn.GroupNorm(8, cout), nn.SiLU())

        self.body = nn.Sequential(block(in_channels, w, 1), block(w, w, 1), block(w, 2 * w, 2),
                                  block(2 * w, 2 * w, 1), block(2 * w, 4 * w, 2))
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(4 * w, num_classes)

    def features(self, x: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, 4·width) pooled features (for diversity metrics)."""
        return self.body(x).mean(dim=(2, 3))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.dropout(self.features(x)))


def _sinusoidal(s: Tensor, dim: int) -> Tensor:
    """Embedding of s ∈ [0, 1] at frequencies 1 … 1000 (as transformer positions, scaled)."""
    half = dim // 2
    freqs = torch.exp(-math.log(1000.0) * torch.arange(half, device=s.device, dtype=torch.float32) / half)
    arg = 1000.0 * s.float()[:, None] * freqs[None, :]
    return torch.cat([arg.sin(), arg.cos()], dim=1)


class ImageValueNetwork(nn.Module):
    """``f(x_t, s) -> (B,)``; ``s`` the time as a fraction of the noise end (0 = clean, 1 = noise)."""

    def __init__(self, in_channels: int = 1, width: int = 32, time_dim: int = 64):
        super().__init__()
        self.config = {"in_channels": in_channels, "width": width, "time_dim": time_dim}
        w = width
        self.time_dim = time_dim
        self.time_mlp = nn.Sequential(nn.Linear(time_dim, 4 * w), nn.SiLU(), nn.Linear(4 * w, 4 * w))
        self.conv_in = nn.Conv2d(in_channels, w, 3, padding=1)
        chans = [(w, w, 1), (w, 2 * w, 2), (2 * w, 2 * w, 1), (2 * w, 4 * w, 2)]
        self.convs = nn.ModuleList(nn.Conv2d(a, b, 3, stride=s, padding=1) for a, b, s in chans)
        self.norms = nn.ModuleList(nn.GroupNorm(8, b) for _, b, _ in chans)
        self.films = nn.ModuleList(nn.Linear(4 * w, 2 * b) for _, b, _ in chans)
        self.head = nn.Sequential(nn.Linear(4 * w + 4 * w, 4 * w), nn.SiLU(), nn.Linear(4 * w, 1))

    def forward(self, x_t: Tensor, s: Tensor) -> Tensor:
        s = torch.as_tensor(s, device=x_t.device, dtype=torch.float32)
        if s.dim() == 0:
            s = s.expand(x_t.shape[0])
        emb = self.time_mlp(_sinusoidal(s, self.time_dim))
        h = self.conv_in(x_t.float())
        for conv, norm, film in zip(self.convs, self.norms, self.films):
            scale, shift = film(emb).chunk(2, dim=1)
            h = nn.functional.silu(norm(conv(h)) * (1 + scale[:, :, None, None]) + shift[:, :, None, None])
        return self.head(torch.cat([h.mean(dim=(2, 3)), emb], dim=1)).squeeze(1)


_CLASSES = {"DigitClassifier": DigitClassifier, "ImageValueNetwork": ImageValueNetwork}
_DTYPES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.int64: "I64"}


def write_safetensors(tensors: dict, path: str | Path, metadata: dict | None = None) -> None:
    """Write the safetensors format (8-byte header length, JSON header, raw little-endian
    data) without the ``safetensors`` package, which the GPU machine may lack."""
    header, chunks, offset = {}, [], 0
    for name, tensor in tensors.items():
        tensor = tensor.detach().cpu().contiguous()
        raw = tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b""
        header[name] = {"dtype": _DTYPES[tensor.dtype], "shape": list(tensor.shape),
                        "data_offsets": [offset, offset + len(raw)]}
        chunks.append(raw)
        offset += len(raw)
    if metadata:
        header["__metadata__"] = {k: str(v) for k, v in metadata.items()}
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    with open(path, "wb") as f:
        f.write(len(blob).to_bytes(8, "little"))
        f.write(blob)
        for raw in chunks:
            f.write(raw)


def save_network(model: nn.Module, path: str | Path, dtype: torch.dtype = torch.float32, **metadata) -> None:
    """One safetensors file; the class name and constructor config travel in its metadata."""
    tensors = {k: v.to(dtype) if v.is_floating_point() else v for k, v in model.state_dict().items()}
    meta = {"class": type(model).__name__, "config": json.dumps(model.config), **metadata}
    write_safetensors(tensors, path, meta)


def load_network(path: str | Path, device="cpu") -> nn.Module:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
        state = {k: f.get_tensor(k).float() for k in f.keys()}
    model = _CLASSES[meta["class"]](**json.loads(meta["config"]))
    model.load_state_dict(state)
    return model.to(device).eval()
