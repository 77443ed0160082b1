"""PNG output: image grids (best / median / all samples by reward) and a strip of ``x0_hat``
over the denoising steps for one sample (record it with ``X0HatRecorder`` as a callback)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import torch
from torch import Tensor

__all__ = ["save_grid", "grid_image", "X0HatRecorder", "best_and_median"]


def displayable(x: Tensor) -> Tensor:
    """(B, C, H, W) in [-1, 1] with C in {1, 3}; other channel counts (raw latents) show the
    first three channels rescaled to [-1, 1] per image."""
    x = x.detach().float().cpu()
    if x.shape[1] in (1, 3):
        return x.clamp(-1, 1)
    x = x[:, :3] if x.shape[1] >= 3 else x[:, :1]
    lo = x.amin(dim=(1, 2, 3), keepdim=True)
    hi = x.amax(dim=(1, 2, 3), keepdim=True)
    return (x - lo) / (hi - lo).clamp_min(1e-8) * 2 - 1


def grid_image(x: Tensor, ncols: Optional[int] = None, scale: int = 4, pad: int = 2):
    """A PIL image of the batch as a grid (nearest-neighbour upscaled by ``scale``)."""
    from PIL import Image

    x = displayable(x)
    B, C, H, W = x.shape
    ncols = ncols or min(B, 8)
    nrows = (B + ncols - 1) // ncols
    canvas = torch.ones(C, nrows * (H + pad) + pad, ncols * (W + pad) + pad)
    for i in range(B):
        r, c = divmod(i, ncols)
        top, left = pad + r * (H + pad), pad + c * (W + pad)
        canvas[:, top:top + H, left:left + W] = x[i]
    arr = ((canvas.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).numpy()
    img = Image.fromarray(arr[:, :, 0], mode="L") if C == 1 else Image.fromarray(arr, mode="RGB")
    return img.resize((img.width * scale, img.height * scale), Image.NEAREST) if scale > 1 else img


def save_grid(path, x: Tensor, ncols: Optional[int] = None, scale: int = 4) -> Path:
    path = Path(path)
    from ...runfolder import atomic_path

    with atomic_path(path) as tmp:
        grid_image(x, ncols, scale).save(tmp, format="PNG")
    return path


def best_and_median(rewards: Tensor, k: int = 16) -> tuple[Tensor, Tensor]:
    """Indices of the top-k samples and of the k samples closest to the median reward."""
    r = rewards.detach().float().cpu()
    order = torch.argsort(r, descending=True)
    k = min(k, r.numel())
    mid = r.numel() // 2
    lo = max(0, min(mid - k // 2, r.numel() - k))
    return order[:k], order[lo:lo + k]


class X0HatRecorder:
    """Callback that keeps ``x0_hat`` of one sample (``index``) at every step; ``save(path)``
    writes them left to right (noise → clean), optionally through ``decode`` (VAE)."""

    def __init__(self, index: int = 0, decode=None):
        self.index = index
        self.decode = decode
        self.frames: list[Tensor] = []
        self.times: list[float] = []

    def __call__(self, info) -> None:
        if info.x0_hat is None:
            return
        self.frames.append(info.x0_hat[self.index:self.index + 1].detach().cpu())
        self.times.append(float(info.t_next))

    def strip(self, max_frames: Optional[int] = 10) -> Tensor:
        frames = self.frames
        if max_frames and len(frames) > max_frames:
            pick = torch.linspace(0, len(frames) - 1, max_frames).round().long().tolist()
            frames = [frames[i] for i in pick]
        x = torch.cat(frames)
        return self.decode(x) if self.decode is not None else x

    def save(self, path, max_frames: Optional[int] = 10, scale: int = 6) -> Path:
        x = self.strip(max_frames)
        return save_grid(path, x, ncols=x.shape[0], scale=scale)
