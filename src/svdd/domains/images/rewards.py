"""Image rewards. Each takes pixel images (B, C, H, W) in [-1, 1] and returns (B,).

- ``compressibility``: −(JPEG size in kB at quality 95), kB = 1000 bytes (the SVDD and DNO
  papers' "compressibility", after DDPO). Computed with Pillow on uint8 images, so it is a
  black box: **not differentiable**. Greyscale images are encoded as 8-bit "L", others as RGB.
- ``classifier:<d>``: log p(y = d | x) from the reward classifier (a CNN trained on half of the
  digits), ``classifier-eval:<d>`` the same from the independently trained evaluation
  classifier. Differentiable. Inputs that are not 1×16×16 are converted to grey (channel mean)
  and resized (bilinear, antialiased) first, so they apply to any image model.
- ``brightness``: mean pixel intensity in [0, 1], i.e. mean((x + 1)/2). Differentiable.

For latent processes the domain wraps these with ``svdd.process.adapters.latent_reward``, which
decodes through the VAE first.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from ..base import DomainError

__all__ = ["Compressibility", "ClassifierLogProb", "Brightness", "jpeg_kilobytes", "to_uint8"]


def to_uint8(x: Tensor) -> Tensor:
    """[-1, 1] floats (B, C, H, W) -> uint8 (B, H, W, C) on the CPU."""
    return ((x.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu()


def jpeg_kilobytes(x: Tensor, quality: int = 95) -> Tensor:
    """JPEG size (kB = 1000 bytes) of each image at the given quality; (B,) float."""
    from PIL import Image

    sizes = []
    for arr in to_uint8(x).numpy():
        img = Image.fromarray(arr[:, :, 0], mode="L") if arr.shape[2] == 1 else Image.fromarray(arr[:, :, :3], mode="RGB")
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=quality)
        sizes.append(buf.tell() / 1000.0)
    return torch.tensor(sizes, dtype=torch.float32)


class Compressibility:
    """r(x) = −JPEG_kB(x) at ``quality`` (non-differentiable)."""

    differentiable = False

    def __init__(self, quality: int = 95):
        self.quality = int(quality)
        self.name = "compressibility"

    def __call__(self, x: Tensor) -> Tensor:
        return (-jpeg_kilobytes(x, self.quality)).to(x.device)


class Brightness:
    """r(x) = mean((x + 1)/2) over pixels and channels (differentiable)."""

    differentiable = True
    name = "brightness"

    def __call__(self, x: Tensor) -> Tensor:
        return ((x.float() + 1) / 2).flatten(1).mean(1)


def to_digit_input(x: Tensor, size: int = 16) -> Tensor:
    """Any (B, C, H, W) image in [-1, 1] -> (B, 1, size, size) grey, differentiably."""
    x = x.float()
    if x.shape[1] != 1:
        x = x.mean(dim=1, keepdim=True)
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return x


class ClassifierLogProb:
    """r(x) = log softmax(classifier(x))[digit] (differentiable)."""

    differentiable = True

    def __init__(self, model: torch.nn.Module, digit: int, name: str):
        self.model = model.eval().requires_grad_(False)
        self.digit = int(digit)
        self.name = f"{name}:{digit}"

    def __call__(self, x: Tensor) -> Tensor:
        if next(self.model.parameters()).device != x.device:
            self.model.to(x.device)  # follow the samples (CPU by default, the GPU in a GPU run)
        logits = self.model(to_digit_input(x))
        return torch.log_softmax(logits, dim=1)[:, self.digit]


def parse_digit(arg: Optional[str], name: str) -> int:
    if arg is None or not arg.strip().isdigit() or not 0 <= int(arg) <= 9:
        raise DomainError(f"reward {name} needs a target digit 0-9, e.g. '{name}:3'")
    return int(arg)


def load_classifier(path: Path, device="cpu"):
    from .networks import load_network

    if not path.exists():
        raise DomainError(f"classifier weights missing at {path}; reinstall svdd[images] or run "
                          "`python scripts/train_images.py` and copy its output there")
    return load_network(path, device=device)
