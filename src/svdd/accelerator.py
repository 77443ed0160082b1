"""Accelerator options of the denoiser call: mixed precision and batches sized to memory.

**Precision.** ``"fp32"`` (default) runs the denoiser as it is. ``"bf16"`` runs its forward under
``torch.autocast(dtype=bfloat16)``: matmuls and convolutions take bf16 inputs (8 significand
bits, relative rounding 2⁻⁸ ≈ 0.4 %) and accumulate in fp32, while autocast keeps softmax,
layer norms and reductions in fp32. "Where the model allows it" is autocast's own op list: a
plain Python denoiser (the analytic toys) is unaffected. The process casts the output (logits,
ε or x0) back to float32 before any sampling maths, so masked transition probabilities are
still built and normalised in float64 and drawn in float64. ``"auto"`` is bf16 on a CUDA device
that supports it (``torch.cuda.is_bf16_supported()``) and fp32 elsewhere.

**Batch sized to memory.** Peak memory of one forward is close to affine in the number of rows,
``peak(n) ≈ fixed + n · per_row``. Two probe forwards at small sizes n₁ < n₂ give
``per_row = (peak₂ − peak₁)/(n₂ − n₁)`` and ``fixed = peak₁ − n₁ · per_row``; with ``available``
bytes (free device memory plus what the caching allocator holds unused), the largest safe chunk
is ``⌊(safety · available − fixed)/per_row⌋`` rows. ``safety = 0.8`` leaves room for what lives
outside the forward (the step's x0_hat and float64 transition tensors, allocator
fragmentation). On the CPU there is nothing to probe: ``"auto"`` means no chunking (or the
caller's cap).
"""

from __future__ import annotations

import contextlib
import math
from typing import Callable, Optional

import torch
from torch import Tensor

PRECISIONS = ("fp32", "bf16", "auto")


class PrecisionError(ValueError):
    """A precision that does not exist, or one a process cannot run in."""


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise PrecisionError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    return precision


class HasPrecision:
    """Mixin for processes: a checked ``precision`` attribute ("fp32" until set)."""

    @property
    def precision(self) -> str:
        return getattr(self, "_precision", "fp32")

    @precision.setter
    def precision(self, value: str) -> None:
        self._precision = check_precision(value)


def resolve_precision(precision: str, device) -> str:
    """``"fp32"`` or ``"bf16"`` for a run on ``device`` (``"auto"``: bf16 where CUDA supports it)."""
    check_precision(precision)
    if precision != "auto":
        return precision
    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.is_available() and torch.cuda.is_bf16_supported():  # pragma: no cover
        return "bf16"
    return "fp32"


def autocast(precision: str, device):
    """The context a denoiser forward runs in: ``torch.autocast`` for bf16, nothing for fp32."""
    if resolve_precision(precision, device) == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16)


def set_precision(process, precision: str):
    """Set ``process.precision`` (``MaskedProcess``, ``GaussianProcess`` and subclasses); a process
    without the attribute runs only in fp32. Returns the process."""
    check_precision(precision)
    if hasattr(process, "precision"):
        process.precision = precision
    elif precision != "fp32":
        raise PrecisionError(f"{type(process).__name__} has no precision option; use precision 'fp32'")
    return process


# -- batch sized to memory ----------------------------------------------------------------------
def memory_line(rows: tuple[int, int], peaks: tuple[float, float]) -> tuple[float, float]:
    """``(per_row, fixed)`` bytes from two probe forwards: peak(n) = fixed + n · per_row. A probe
    that shows no growth (caching, tiny models) gives per_row = peak₂/n₂, fixed = 0 (conservative)."""
    (n1, n2), (p1, p2) = rows, peaks
    if not 0 < n1 < n2:
        raise ValueError(f"probe sizes must satisfy 0 < n1 < n2, got {rows}")
    per_row = (p2 - p1) / (n2 - n1)
    if per_row <= 0:
        return max(p2, 1.0) / n2, 0.0
    return per_row, max(p1 - n1 * per_row, 0.0)


def batch_size_for_memory(available_bytes: float, bytes_per_row: float, *, fixed_bytes: float = 0.0,
                          safety: float = 0.8, cap: Optional[int] = None) -> int:
    """Largest number of rows whose forward fits in ``safety`` of ``available_bytes``:
    ``⌊(safety · available − fixed)/per_row⌋``, at least 1 and at most ``cap``."""
    if not 0 < safety <= 1:
        raise ValueError(f"safety must be in (0, 1], got {safety!r}")
    if bytes_per_row <= 0:
        raise ValueError(f"bytes_per_row must be > 0, got {bytes_per_row!r}")
    rows = max(int(math.floor((safety * available_bytes - fixed_bytes) / bytes_per_row)), 1)
    return min(rows, cap) if cap is not None else rows


def auto_max_batch_size(forward: Callable[[Tensor], Tensor], x: Tensor, *, safety: float = 0.8,
                        cap: Optional[int] = None, probe_rows: tuple[int, int] = (2, 8)) -> Optional[int]:
    """Rows per denoiser call for ``forward`` on inputs like ``x``. CPU (or any non-CUDA device):
    ``cap`` (``None``: no chunking). CUDA: two probe forwards (see the module docstring)."""
    if x.device.type != "cuda":
        return cap
    return _cuda_probe(forward, x, safety=safety, cap=cap, probe_rows=probe_rows)  # pragma: no cover


def _cuda_probe(forward, x: Tensor, *, safety: float, cap: Optional[int], probe_rows: tuple[int, int]) -> int:
    """Two probe forwards on CUDA (tested on the CPU with torch.cuda's counters faked)."""
    device = x.device
    peaks = []
    with torch.no_grad():
        for n in probe_rows:
            rows = x[torch.arange(n, device=device) % x.shape[0]]   # n rows like x's, however many x has
            torch.cuda.synchronize(device)
            base = torch.cuda.memory_allocated(device)
            torch.cuda.reset_peak_memory_stats(device)
            forward(rows)
            torch.cuda.synchronize(device)
            peaks.append(float(torch.cuda.max_memory_allocated(device) - base))
    per_row, fixed = memory_line(probe_rows, (peaks[0], peaks[1]))
    free, _ = torch.cuda.mem_get_info(device)
    unused_cache = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    return batch_size_for_memory(free + unused_cache, per_row, fixed_bytes=fixed, safety=safety, cap=cap)
