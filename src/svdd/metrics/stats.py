"""Statistics of reward samples shared by ``svdd sample`` (summary.json) and the benchmark report.

Quantiles are numpy's default (linear interpolation), as in the SVDD paper's tables: the
*median* is the 0.5 quantile and *top-10 %* the 0.9 quantile. A 95 % confidence interval of a
quantile ``Q_q`` is the percentile bootstrap: resample the n values with replacement B times
(``numpy.random.default_rng(seed)``, so reports are reproducible), take ``Q_q`` of each resample
and report the 2.5 % and 97.5 % quantiles of those B estimates. Non-finite values (invalid
samples that a reward could not score) are dropped and counted, never averaged in.
"""

from __future__ import annotations

import math
from typing import Iterable, Sequence

import numpy as np


def _finite(values) -> np.ndarray:
    arr = np.asarray(values if not hasattr(values, "detach") else values.detach().cpu().numpy(), dtype=np.float64)
    arr = arr.reshape(-1)
    return arr[np.isfinite(arr)]


def bootstrap_ci(values, q: float, num_resamples: int = 1000, seed: int = 0,
                 level: float = 0.95) -> tuple[float, float, float]:
    """``(estimate, low, high)``: the ``q`` quantile of ``values`` and its percentile-bootstrap
    ``level`` interval. NaN triple for an empty input; a zero-width interval for one value."""
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"q must be in [0, 1], got {q!r}")
    x = _finite(values)
    if x.size == 0:
        return (math.nan, math.nan, math.nan)
    est = float(np.quantile(x, q))
    if x.size == 1 or num_resamples < 1:
        return (est, est, est)
    rng = np.random.default_rng(seed)
    stats = np.empty(num_resamples)
    # resample in blocks so memory stays bounded for large n
    block = max(1, min(num_resamples, 2_000_000 // x.size))
    for start in range(0, num_resamples, block):
        stop = min(num_resamples, start + block)
        idx = rng.integers(0, x.size, size=(stop - start, x.size))
        stats[start:stop] = np.quantile(x[idx], q, axis=1)
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(stats, [tail, 1.0 - tail])
    return (est, float(low), float(high))


def quantile_summary(rewards, num_resamples: int = 1000, seed: int = 0) -> dict:
    """Summary of one reward sample: n, invalid count, mean ± std, min/max, and the median and
    top-10 % (0.9 quantile) each with a bootstrap 95 % CI (``{"median": m, "median_ci": [lo, hi]}``)."""
    raw = np.asarray(rewards if not hasattr(rewards, "detach") else rewards.detach().cpu().numpy(),
                     dtype=np.float64).reshape(-1)
    x = raw[np.isfinite(raw)]
    out: dict = {"n": int(x.size), "non_finite": int(raw.size - x.size)}
    if x.size == 0:
        nan = math.nan
        out.update(mean=nan, std=nan, min=nan, max=nan, median=nan, median_ci=[nan, nan],
                   top10=nan, top10_ci=[nan, nan])
        return out
    med = bootstrap_ci(x, 0.5, num_resamples, seed)
    top = bootstrap_ci(x, 0.9, num_resamples, seed + 1)
    out.update(mean=float(x.mean()), std=float(x.std(ddof=1)) if x.size > 1 else 0.0,
               min=float(x.min()), max=float(x.max()),
               median=med[0], median_ci=[med[1], med[2]], top10=top[0], top10_ci=[top[1], top[2]])
    return out


def spread(per_group: Iterable[Sequence[float]], q: float = 0.5) -> dict:
    """The ``q`` quantile of each group (e.g. each seed) and their min, max and standard
    deviation: how much a table entry would move with another seed."""
    vals = [float(np.quantile(_finite(g), q)) for g in per_group if _finite(g).size]
    if not vals:
        return {"values": [], "min": math.nan, "max": math.nan, "std": math.nan}
    arr = np.asarray(vals)
    return {"values": vals, "min": float(arr.min()), "max": float(arr.max()),
            "std": float(arr.std(ddof=1)) if arr.size > 1 else 0.0}


__all__ = ["bootstrap_ci", "quantile_summary", "spread"]
