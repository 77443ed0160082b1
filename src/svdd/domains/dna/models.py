"""Networks of the DNA pack: the masked-diffusion denoiser, the activity oracle and the
SVDD-MC value network. All three are dilated 1-D convolution stacks over the 200-bp sequence.

- ``DilatedConvDenoiser(x_t (B, L) long, t (B,)) -> logits (B, L, V)``: MDLM's DNA backbone
  (Sahoo et al. 2024, ``models/dnaconv.py``) in small: token embedding, pre-norm residual
  blocks ``h += Dropout(GELU(Conv_d(LN(h))))`` with dilations ``d`` doubling inside each
  stack (receptive field > L), a 1x1 head over the vocabulary. Like the SVDD/MDLM DNA model it
  is time-unconditioned by default: with absorbing noise the mask fraction is visible in x_t.
- ``ActivityOracle(one_hot (B, L, 4)) -> logits (B, C)``: a CNN classifier of the DHS cell type
  (C = 4: GM12878, hESCT0, K562, HepG2). Its prediction is averaged over the sequence and its
  reverse complement (DHS activity does not depend on the strand). ``log_odds(x, c)`` is
  ``log p_c − log(1 − p_c)``, the reward.
- ``ValueNetwork(x_t (B, L) long, t (B,)) -> (B,)``: the SVDD-MC soft-value regressor
  f(x_t, t) ≈ E[r(x0) | x_t]; same trunk as the denoiser plus a sinusoidal time embedding
  (FiLM shift per block) and a mean/max-pooled head.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .data import MASK_ID, SEQ_LEN, VOCAB_SIZE, one_hot


def _time_embedding(t: Tensor, dim: int) -> Tensor:
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = (t.float() * 1000.0)[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class DilatedBlock(nn.Module):
    """``h + Dropout(GELU(Conv_dilated(LN(h) + shift)))`` on (B, L, D)."""

    def __init__(self, dim: int, kernel_size: int, dilation: int, dropout: float):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.conv = nn.Conv1d(dim, dim, kernel_size, padding=dilation * (kernel_size // 2), dilation=dilation)
        self.act = nn.GELU()
        self.drop = nn.Dropout(dropout)

    def forward(self, h: Tensor, shift: Tensor | None = None) -> Tensor:
        u = self.norm(h)
        if shift is not None:
            u = u + shift[:, None, :]
        u = self.conv(u.transpose(1, 2)).transpose(1, 2)
        return h + self.drop(self.act(u))


class DilatedConvTrunk(nn.Module):
    def __init__(self, dim: int, kernel_size: int, dilations: tuple[int, ...], dropout: float,
                 time_conditioning: bool):
        super().__init__()
        self.blocks = nn.ModuleList([DilatedBlock(dim, kernel_size, d, dropout) for d in dilations])
        self.time_conditioning = time_conditioning
        if time_conditioning:
            self.time_mlp = nn.Sequential(nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, dim * len(dilations)))
        self.norm = nn.LayerNorm(dim)

    def forward(self, h: Tensor, t: Tensor) -> Tensor:
        shifts = [None] * len(self.blocks)
        if self.time_conditioning:
            t = torch.as_tensor(t, device=h.device, dtype=torch.float32).expand(h.shape[0])
            shifts = self.time_mlp(_time_embedding(t, h.shape[-1])).chunk(len(self.blocks), dim=-1)
        for block, shift in zip(self.blocks, shifts):
            h = block(h, shift)
        return self.norm(h)


class DilatedConvDenoiser(nn.Module):
    def __init__(self, vocab_size: int = VOCAB_SIZE, seq_len: int = SEQ_LEN, dim: int = 128, kernel_size: int = 9,
                 dilations: tuple[int, ...] = (1, 2, 4, 8, 16, 1, 2, 4, 8, 16), dropout: float = 0.1,
                 time_conditioning: bool = False):
        super().__init__()
        self.config = dict(vocab_size=vocab_size, seq_len=seq_len, dim=dim, kernel_size=kernel_size,
                           dilations=list(dilations), dropout=dropout, time_conditioning=time_conditioning)
        self.embedding = nn.Embedding(vocab_size, dim)
        self.trunk = DilatedConvTrunk(dim, kernel_size, tuple(dilations), dropout, time_conditioning)
        self.head = nn.Linear(dim, vocab_size)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        """``x``: tokens (B, L), or a float one-hot (B, L, V) for gradients w.r.t. the input."""
        h = x.to(self.embedding.weight.dtype) @ self.embedding.weight if x.is_floating_point() else self.embedding(x)
        return self.head(self.trunk(h, t))


class ActivityOracle(nn.Module):
    """Cell-type classifier of 200-bp DHS sequences (strand-symmetric)."""

    def __init__(self, num_classes: int = 4, dim: int = 128, stem_kernel: int = 15, kernel_size: int = 5,
                 dilations: tuple[int, ...] = (1, 2, 4, 1, 2, 4), pool: int = 4, dropout: float = 0.2):
        super().__init__()
        self.config = dict(num_classes=num_classes, dim=dim, stem_kernel=stem_kernel, kernel_size=kernel_size,
                           dilations=list(dilations), pool=pool, dropout=dropout)
        self.stem = nn.Conv1d(4, dim, stem_kernel, padding=stem_kernel // 2)
        self.pool = nn.MaxPool1d(pool)
        self.trunk = DilatedConvTrunk(dim, kernel_size, tuple(dilations), dropout, False)
        self.head = nn.Sequential(nn.Linear(2 * dim, dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(dim, num_classes))

    def _forward_strand(self, x: Tensor) -> Tensor:
        h = self.pool(torch.relu(self.stem(x.transpose(1, 2)))).transpose(1, 2)   # (B, L/pool, D)
        h = self.trunk(h, torch.zeros(()))
        return self.head(torch.cat([h.mean(dim=1), h.amax(dim=1)], dim=-1))

    def forward(self, x: Tensor, symmetric: bool = True) -> Tensor:
        """``x``: one-hot ``(B, L, 4)`` float (or tokens ``(B, L)``) -> class logits ``(B, C)``,
        averaged over both strands (``symmetric=False``: the given strand only, for training
        with random reverse-complement augmentation at half the cost)."""
        x = one_hot(x) if not x.is_floating_point() else x[..., :4]
        if not symmetric:
            return self._forward_strand(x)
        return 0.5 * (self._forward_strand(x) + self._forward_strand(x.flip(1).flip(2)))

    def log_odds(self, x: Tensor, target: int) -> Tensor:
        """``log p_target − log(1 − p_target)`` per sequence, ``(B,)``."""
        logits = self(x)
        others = torch.cat([logits[:, :target], logits[:, target + 1:]], dim=1)
        return logits[:, target] - torch.logsumexp(others, dim=1)


class ValueNetwork(nn.Module):
    """Time-conditioned f(x_t, t) -> (B,) for SVDD-MC on masked DNA states."""

    def __init__(self, vocab_size: int = VOCAB_SIZE, dim: int = 32, kernel_size: int = 9,
                 dilations: tuple[int, ...] = (1, 2, 4, 8, 16, 1), dropout: float = 0.0):
        super().__init__()
        self.config = dict(vocab_size=vocab_size, dim=dim, kernel_size=kernel_size, dilations=list(dilations),
                           dropout=dropout)
        self.embedding = nn.Embedding(vocab_size, dim)
        self.trunk = DilatedConvTrunk(dim, kernel_size, tuple(dilations), dropout, True)
        self.head = nn.Sequential(nn.Linear(2 * dim, dim), nn.GELU(), nn.Linear(dim, 1))

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        t = torch.as_tensor(t, device=x.device, dtype=torch.float32)
        if t.dim() == 0:
            t = t.expand(x.shape[0])
        h = self.trunk(self.embedding(x.long().clamp(0, MASK_ID)), t)
        return self.head(torch.cat([h.mean(dim=1), h.amax(dim=1)], dim=-1)).squeeze(-1)


def register_model_classes() -> None:
    """Let ``svdd.nn.save_model/load_model`` (de)serialise this pack's networks."""
    from ...nn import denoisers

    for cls in (DilatedConvDenoiser, ActivityOracle, ValueNetwork):
        denoisers.MODEL_CLASSES.setdefault(cls.__name__, cls)


register_model_classes()
