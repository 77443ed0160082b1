"""Reward wrappers.

A reward is any callable ``reward_fn(x0) -> Tensor (B,)``; optional attributes are
``differentiable`` (default False), ``name`` and ``invalid_value``. ``as_reward`` wraps it in a
``Reward`` that

- evaluates safely: NaN / ±inf outputs become ``invalid_value``; if the batch call raises, each
  sample is retried alone and those that still raise get ``invalid_value`` — the run goes on and
  ``invalid`` / ``errors`` count what happened;
- counts ``calls`` (samples evaluated, the ``reward_calls`` of every algorithm);
- optionally memoises by a ``key_fn(x0_row) -> hashable`` (canonical SMILES, a sequence string);
- optionally splits batches (``batch_size``).

``WeightedSum`` combines several rewards (``Σ_i w_i r_i``, multi-objective scalarisation);
``parse_reward_spec("docking:parp1+0.5*qed", factory)`` builds one from a string.
"""

from __future__ import annotations

import re
from typing import Callable, Hashable, Optional, Sequence

import torch
from torch import Tensor


class RewardError(ValueError):
    """A reward cannot be built (unknown name, bad spec)."""


class Reward:
    def __init__(self, fn: Callable[[Tensor], Tensor], *, name: Optional[str] = None,
                 differentiable: Optional[bool] = None, invalid_value: Optional[float] = None,
                 key_fn: Optional[Callable[[Tensor], Hashable]] = None, batch_size: Optional[int] = None):
        self.fn = fn
        self.name = name or getattr(fn, "name", None) or getattr(fn, "__name__", type(fn).__name__)
        self.differentiable = bool(getattr(fn, "differentiable", False) if differentiable is None else differentiable)
        iv = getattr(fn, "invalid_value", None) if invalid_value is None else invalid_value
        self.invalid_value = float(iv) if iv is not None else 0.0
        self.key_fn = key_fn
        self.batch_size = batch_size
        self.cache: dict = {}
        self.calls = 0
        self.invalid = 0   # NaN/inf outputs; counted on the outputs' device, read on access
        self.errors = 0
        self.cache_hits = 0
        self.last_error: Optional[str] = None

    @property
    def invalid(self) -> int:
        pending = self.__dict__.get("_invalid_pending")
        if pending is not None:   # one host read, when the count is asked for
            self._invalid_count += int(pending)
            self._invalid_pending = None
        return self._invalid_count

    @invalid.setter
    def invalid(self, value: int) -> None:
        self._invalid_count, self._invalid_pending = int(value), None

    def _count_invalid(self, bad: Tensor) -> None:
        n = bad.sum()
        pending = self.__dict__.get("_invalid_pending")
        self._invalid_pending = n if pending is None else pending + n.to(pending.device)

    def reset_counters(self) -> None:
        self.calls = self.invalid = self.errors = self.cache_hits = 0

    def counters(self) -> dict:
        return {"reward_calls": self.calls, "reward_invalid": self.invalid, "reward_errors": self.errors,
                "reward_cache_hits": self.cache_hits}

    # -- evaluation ---------------------------------------------------------------------------
    def _raw(self, x0: Tensor) -> Tensor:
        out = self.fn(x0)
        out = torch.as_tensor(out, device=x0.device if isinstance(x0, Tensor) else None)
        if out.dim() == 0:
            out = out.reshape(1)
        out = out.reshape(-1)
        if out.shape[0] != len(x0):
            raise RewardError(f"reward {self.name!r} returned {out.shape[0]} values for {len(x0)} samples")
        return out.to(torch.float32) if not out.is_floating_point() else out

    def _safe(self, x0: Tensor) -> Tensor:
        try:
            out = self._raw(x0)
        except RewardError:
            raise
        except Exception as err:  # one bad sample must not sink the batch: retry one by one
            self.last_error = f"{type(err).__name__}: {err}"
            if len(x0) == 1:
                self.errors += 1
                return torch.full((1,), self.invalid_value, device=x0.device)
            return torch.cat([self._safe(x0[i:i + 1]) for i in range(len(x0))])
        # no host round-trip: invalid outputs are replaced and counted on the outputs' device
        bad = ~torch.isfinite(out)
        self._count_invalid(bad)
        return torch.where(bad, torch.full_like(out, self.invalid_value), out)

    def _evaluate(self, x0: Tensor) -> Tensor:
        if self.batch_size and len(x0) > self.batch_size:
            return torch.cat([self._safe(x0[i:i + self.batch_size]) for i in range(0, len(x0), self.batch_size)])
        return self._safe(x0)

    def __call__(self, x0: Tensor) -> Tensor:
        n = len(x0)
        if self.key_fn is None or (self.differentiable and torch.is_grad_enabled()):
            self.calls += n
            return self._evaluate(x0)
        keys = [self.key_fn(x0[i]) for i in range(n)]
        missing = [i for i, k in enumerate(keys) if k not in self.cache]
        uniq: dict = {}
        for i in missing:
            uniq.setdefault(keys[i], i)
        if uniq:
            idx = list(uniq.values())
            vals = self._evaluate(x0[idx]).detach().cpu()
            self.calls += len(idx)
            for k, v in zip(uniq.keys(), vals.tolist()):
                self.cache[k] = v
        self.cache_hits += n - len(uniq)
        device = x0.device if isinstance(x0, Tensor) else None
        return torch.tensor([self.cache[k] for k in keys], dtype=torch.float32, device=device)

    def __repr__(self) -> str:
        return f"Reward({self.name!r}, differentiable={self.differentiable})"


def as_reward(reward_fn, **kwargs) -> Reward:
    """Wrap any callable as a ``Reward`` (a ``Reward`` is returned as is, counters reset)."""
    if isinstance(reward_fn, Reward) and not kwargs:
        return reward_fn
    if not callable(reward_fn):
        raise RewardError(f"reward_fn must be callable, got {type(reward_fn).__name__}")
    return Reward(reward_fn, **kwargs)


class WeightedSum:
    """``Σ_i w_i · r_i(x0)``; differentiable when every part is; invalid when any part is."""

    def __init__(self, rewards: Sequence[Callable], weights: Sequence[float]):
        if len(rewards) != len(weights) or not rewards:
            raise RewardError("WeightedSum needs one weight per reward")
        self.rewards = [as_reward(r) for r in rewards]
        self.weights = [float(w) for w in weights]
        self.differentiable = all(r.differentiable for r in self.rewards)
        self.invalid_value = sum(w * r.invalid_value for r, w in zip(self.rewards, self.weights))
        self.name = "+".join(f"{w:g}*{r.name}" if w != 1 else r.name for r, w in zip(self.rewards, self.weights))

    def __call__(self, x0: Tensor) -> Tensor:
        total = None
        for r, w in zip(self.rewards, self.weights):
            v = w * r(x0)
            total = v if total is None else total + v
        return total


_TERM = re.compile(r"^\s*(?:([-+]?\d*\.?\d+(?:[eE][-+]?\d+)?)\s*\*\s*)?([A-Za-z0-9_\-:./]+)\s*$")


def close_quietly(*objs) -> None:
    """Call ``close()`` on each object that has one, and on the terms of a weighted sum, ignoring
    errors: rewards and processes may own worker processes (a docking pool, a reward pool)."""
    for obj in objs:
        for o in [obj, *getattr(obj, "rewards", [])]:
            close = getattr(o, "close", None)
            if callable(close):
                try:
                    close()
                except Exception:
                    pass


def parse_reward_spec(spec: str, factory: Callable[[str], Callable]) -> Callable:
    """Parse ``"a"``, ``"a+0.5*b"`` or ``"2*a+-1*b"`` into one reward; ``factory(name)`` builds
    each named part. A single unweighted name returns the factory's reward itself."""
    if not isinstance(spec, str) or not spec.strip():
        raise RewardError("empty reward spec; name a reward, e.g. 'qed' or 'docking:parp1+0.5*qed'")
    terms = [t for t in spec.split("+") if t.strip()]
    names, weights = [], []
    for term in terms:
        m = _TERM.match(term)
        if not m:
            raise RewardError(f"cannot parse reward term {term!r} in {spec!r}; write e.g. '0.5*qed'")
        weights.append(float(m.group(1)) if m.group(1) else 1.0)
        names.append(m.group(2))
    parts = [factory(n) for n in names]
    if len(parts) == 1 and weights[0] == 1.0:
        return parts[0]
    return WeightedSum(parts, weights)

