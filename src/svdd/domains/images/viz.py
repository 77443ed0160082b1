"""PNG output: image grids (best / median / all samples by reward) and a strip of ``x0_hat``
over the denoising steps for one sample (record it with ``X0HatRecorder`` as a callback).

Grids written for a run (``grid_selection``) with n samples and k = min(16, max(1, n // 4)):
``best`` = the k highest rewards (rank 1 first), ``median`` = the k ranks centred on the
median rank, ``samples`` = every sample in sample order (the first 64). With n ≥ 2 the best
and median grids share no sample and neither is the full set, so the three differ even for
n ≤ 16. Each tile is captioned with its reward rank (1 = highest of the n) and reward."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import torch
from torch import Tensor

__all__ = ["save_grid", "grid_image", "X0HatRecorder", "best_and_median", "grid_selection", "ranks", "tile_labels",
           "side_by_side"]


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


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:                       # Pillow < 10.1: the fixed bitmap font
        return ImageFont.load_default()


def _text_size(draw, text: str, font) -> tuple[int, int]:
    x0, y0, x1, y1 = draw.multiline_textbbox((0, 0), text, font=font, spacing=1)
    return x1 - x0, y1 - y0


def grid_image(x: Tensor, ncols: Optional[int] = None, scale: int = 4, pad: int = 2,
               labels: Optional[Sequence[str]] = None, title: Optional[str] = None, font_size: int = 10):
    """A PIL image of the batch as a grid (nearest-neighbour upscaled by ``scale``), with an
    optional caption under each tile (``labels``, one string per image, may hold newlines)
    and a ``title`` line above the grid."""
    from PIL import Image, ImageDraw

    x = displayable(x)
    B, C, H, W = x.shape
    ncols = max(1, ncols or min(B, 8))
    nrows = (B + ncols - 1) // ncols
    tw, th, gap = W * scale, H * scale, pad * scale
    font = _font(font_size)
    probe = ImageDraw.Draw(Image.new("L", (1, 1)))
    cap_h = max((_text_size(probe, t, font)[1] for t in labels), default=0) + 4 if labels else 0
    cap_w = max((_text_size(probe, t, font)[0] for t in labels), default=0) + 4 if labels else 0
    cw = max(tw, cap_w)                                  # a column is as wide as its widest caption
    title_h = _text_size(probe, title, font)[1] + 6 if title else 0
    width = max(ncols * (cw + gap) + gap, (_text_size(probe, title, font)[0] + 2 * gap) if title else 0)
    height = title_h + nrows * (th + cap_h + gap) + gap
    mode = "L" if C == 1 else "RGB"
    canvas = Image.new(mode, (width, height), 255 if mode == "L" else (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    ink = 0 if mode == "L" else (0, 0, 0)
    if title:
        draw.text((gap, 3), title, fill=ink, font=font)
    arr = ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    for i in range(B):
        r, c = divmod(i, ncols)
        tile = Image.fromarray(arr[i, :, :, 0], mode="L") if C == 1 else Image.fromarray(arr[i], mode="RGB")
        if scale > 1:
            tile = tile.resize((tw, th), Image.NEAREST)
        left, top = gap + c * (cw + gap), title_h + gap + r * (th + cap_h + gap)
        canvas.paste(tile.convert(mode), (left + (cw - tw) // 2, top))
        if labels:
            tw_text, _ = _text_size(draw, labels[i], font)
            draw.multiline_text((left + (cw - tw_text) // 2, top + th + 2), labels[i], fill=ink, font=font,
                                spacing=1, align="center")
    return canvas


def save_grid(path, x: Tensor, ncols: Optional[int] = None, scale: int = 4, *, labels: Optional[Sequence[str]] = None,
              title: Optional[str] = None) -> Path:
    path = Path(path)
    from ...runfolder import atomic_path

    with atomic_path(path) as tmp:
        grid_image(x, ncols, scale, labels=labels, title=title).save(tmp, format="PNG")
    return path


def side_by_side(path, images: Sequence, ncols: Optional[int] = None, gap: int = 16) -> Path:
    """Write PIL images on one white canvas, ``ncols`` per row (default: all in one row),
    each cell as large as the largest image (atomic PNG)."""
    from PIL import Image

    from ...runfolder import atomic_path

    images = [im.convert("RGB") for im in images]
    ncols = ncols or len(images)
    nrows = (len(images) + ncols - 1) // ncols
    cw, ch = max(im.width for im in images), max(im.height for im in images)
    canvas = Image.new("RGB", (ncols * cw + gap * (ncols - 1), nrows * ch + gap * (nrows - 1)), (255, 255, 255))
    for i, im in enumerate(images):
        r, c = divmod(i, ncols)
        canvas.paste(im, (c * (cw + gap), r * (ch + gap)))
    path = Path(path)
    with atomic_path(path) as tmp:
        canvas.save(tmp, format="PNG")
    return path


def ranks(rewards: Tensor) -> Tensor:
    """Rank of each sample by reward, 1 = highest (ties broken by sample index)."""
    r = rewards.detach().float().cpu()
    r = torch.where(torch.isnan(r), torch.full_like(r, -float("inf")), r)
    order = torch.argsort(r, descending=True, stable=True)
    out = torch.empty_like(order)
    out[order] = torch.arange(1, r.numel() + 1)
    return out


def tile_labels(rewards: Tensor, indices: Tensor) -> list[str]:
    """'#rank' and the reward, for the samples ``indices`` (rank among all of ``rewards``)."""
    rk = ranks(rewards)
    r = rewards.detach().float().cpu()
    return [f"#{int(rk[i])}\n{float(r[i]):.4g}" for i in indices.tolist()]


def grid_selection(rewards: Tensor, k: Optional[int] = None, max_samples: int = 64) -> dict[str, Tensor]:
    """Indices of the ``best``, ``median`` and ``samples`` grids (see the module docstring):
    best = top k by reward, median = the k ranks centred on the median, samples = the first
    ``max_samples`` in sample order; k defaults to min(16, max(1, n // 4))."""
    r = rewards.detach().float().cpu()
    r = torch.where(torch.isnan(r), torch.full_like(r, -float("inf")), r)
    n = r.numel()
    k = min(16, max(1, n // 4)) if k is None else max(1, min(int(k), n))
    order = torch.argsort(r, descending=True, stable=True)
    lo = max(0, min(n // 2 - k // 2, n - k))
    if n >= 2 * k:                       # never reuse a best tile in the median grid
        lo = max(lo, k)
    return {"best": order[:k], "median": order[lo:lo + k], "samples": torch.arange(min(n, max_samples))}


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
