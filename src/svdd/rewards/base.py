"""Reward wrappers.

A reward is any callable ``reward_fn(x0) -> Tensor (B,)``; optional attributes are
``differentiable`` (default False), ``name`` and ``invalid_value``. ``as_reward`` wraps it in a
``Reward`` that

- evaluates safely: NaN / ±inf outputs become ``invalid_value``; if the batch call raises, each
  sample is retried alone and those that still raise get ``invalid_value`` — the run goes on,
  ``evaluate`` returns a validity mask beside the values (algorithms rank an invalid sample
  below every valid one, whatever its ``invalid_value``), and ``invalid`` / ``errors`` count the
  samples affected; a reward that breaks the contract (wrong shape, not numbers) raises a
  one-line ``RewardError``;
- counts ``calls`` (samples evaluated, the ``reward_calls`` of every algorithm);
- optionally memoises by a ``key_fn(x0_row) -> hashable`` (canonical SMILES, a sequence string);
- optionally splits batches (``batch_size``).

Every algorithm run resets the counters, reports them in ``SampleResult.info`` (``reward_calls``,
``reward_invalid``, ``reward_errors``, ``reward_failed_samples``, ``reward_first_error``,
``reward_all_failed``) and emits one ``RewardWarning`` when anything failed. In-process rewards
cannot be timed out; worker rewards (``--reward-workers`` with ``--reward-timeout``) can.

``WeightedSum`` combines several rewards (``Σ_i w_i r_i``, multi-objective scalarisation);
``parse_reward_spec("docking:parp1+0.5*qed", factory)`` builds one from a string.
"""

from __future__ import annotations

import re
from typing import Callable, Hashable, NamedTuple, Optional, Sequence

import torch
from torch import Tensor


class RewardError(ValueError):
    """A reward cannot be built (unknown name, bad spec) or broke its contract (wrong shape)."""


class RewardWarning(UserWarning):
    """Reward evaluations of a run raised or returned NaN / ±inf; emitted once per run, with the
    counts and the first error (also in ``SampleResult.info``)."""


class RewardOutput(NamedTuple):
    values: Tensor   # (B,), invalid rows hold the reward's invalid_value
    valid: Tensor    # (B,) bool: False where the reward raised or returned NaN / ±inf


class _Count:
    """A sample counter that device tensors can increment without a host read (read on access)."""

    __slots__ = ("host", "pending")

    def __init__(self) -> None:
        self.host, self.pending = 0, None

    def add(self, n) -> None:
        if isinstance(n, Tensor):
            self.pending = n if self.pending is None else self.pending + n.to(self.pending.device)
        else:
            self.host += int(n)

    @property
    def value(self) -> int:
        if self.pending is not None:   # one host read, when the count is asked for
            self.host += int(self.pending)
            self.pending = None
        return self.host


def _one_line(err: BaseException, limit: int = 300) -> str:
    text = " ".join(str(err).split())
    text = f"{type(err).__name__}: {text}" if text else type(err).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


class Reward:
    """Safe, counted evaluation of a reward callable (see the module docstring).

    ``evaluate(x0) -> RewardOutput(values, valid)``; ``reward(x0)`` returns just the values (and
    leaves the mask in ``last_valid``). Contract of ``fn``: one number per sample — a tensor of
    shape (B,) (or (B, 1)), a list of B numbers, or a number when B = 1; anything else (a wrong
    shape, None, a string) is a ``RewardError``, because it is a bug, not a bad sample.

    Counters (reset by every algorithm run): ``calls`` — samples actually evaluated (cache
    misses); ``invalid`` / ``errors`` / ``failed_samples`` — samples whose value came back NaN /
    ±inf, whose evaluation raised, either; ``samples`` — samples asked for. The last three count
    every sample served, duplicates from the cache or from an algorithm's deduplication
    (``evaluate(..., counts=)``) included. ``first_error`` is the first exception message.

    Timeouts: an in-process reward cannot be interrupted safely, so a hanging ``fn`` hangs the
    run. Only worker rewards (``svdd.distributed.RewardPool`` / ``--reward-workers N`` with
    ``--reward-timeout S``) are timed out; their timed-out samples come back invalid.
    """

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
        self.cache: dict = {}   # key -> (value, valid); samples that raised are not cached
        self.last_valid: Optional[Tensor] = None
        self.last_error: Optional[str] = None
        self.reset_counters()

    # -- counters -----------------------------------------------------------------------------
    @property
    def invalid(self) -> int:
        return self._invalid.value

    @property
    def errors(self) -> int:
        return self._errors.value

    @property
    def failed_samples(self) -> int:
        return self.invalid + self.errors

    @property
    def samples(self) -> int:
        return self._samples.value

    def reset_counters(self) -> None:
        self.calls = self.cache_hits = 0
        self._invalid, self._errors, self._samples = _Count(), _Count(), _Count()
        self.first_error: Optional[str] = None
        if isinstance(self.fn, (Reward, WeightedSum)):
            self.fn.reset_counters()

    def describe_first_error(self) -> Optional[str]:
        """The first exception message; for NaN / ±inf outputs, the wrapped reward's own error
        (a weighted sum's part, a reward pool's worker) or a plain description."""
        if self.first_error is not None:
            return self.first_error
        if not self.invalid:
            return None
        inner = getattr(self.fn, "describe_first_error", None)
        msg = inner() if callable(inner) else None
        if msg is None:
            errs = getattr(self.fn, "last_errors", None)   # svdd.distributed.RewardPool
            msg = str(errs[0]) if errs else None
        return msg or "the reward returned NaN or ±inf"

    def counters(self) -> dict:
        failed, samples = self.failed_samples, self.samples
        return {"reward_calls": self.calls, "reward_invalid": self.invalid, "reward_errors": self.errors,
                "reward_cache_hits": self.cache_hits, "reward_samples": samples, "reward_failed_samples": failed,
                "reward_first_error": self.describe_first_error() if failed else None,
                "reward_all_failed": bool(samples > 0 and failed == samples)}

    def failure_message(self) -> Optional[str]:
        """One line for ``RewardWarning`` (None when nothing failed)."""
        c = self.counters()
        if not c["reward_failed_samples"]:
            return None
        head = ("every reward evaluation failed" if c["reward_all_failed"] else
                f"{c['reward_failed_samples']} of {c['reward_samples']} reward evaluations failed")
        return (f"reward {self.name!r}: {head} ({c['reward_errors']} raised, {c['reward_invalid']} returned NaN/inf); "
                f"they scored invalid_value={self.invalid_value:g} and never won a selection; "
                f"first error: {c['reward_first_error']}")

    # -- evaluation ---------------------------------------------------------------------------
    def _raw(self, x0: Tensor) -> Tensor:
        n = len(x0)
        device = x0.device if isinstance(x0, Tensor) else None
        if isinstance(self.fn, (Reward, WeightedSum)):   # keep the inner validity: invalid rows -> NaN
            values, valid = self.fn.evaluate(x0)
            return torch.where(valid, values, torch.full_like(values, float("nan")))
        out = raw = self.fn(x0)
        if isinstance(out, (list, tuple)) and out and all(isinstance(v, Tensor) and v.numel() == 1 for v in out):
            out = torch.stack([v.reshape(()).to(device) for v in out])   # keeps their gradients
        if not isinstance(out, Tensor):
            try:
                out = torch.as_tensor(out, dtype=torch.float64, device=device)
            except (TypeError, ValueError, RuntimeError):
                raise RewardError(f"reward {self.name!r} returned {type(raw).__name__}, not one number per sample; "
                                  f"return a tensor of shape ({n},)") from None
        if out.dim() == 0 and n == 1:
            out = out.reshape(1)
        elif out.dim() == 2 and out.shape[1] == 1:
            out = out[:, 0]
        if out.dim() != 1 or out.shape[0] != n:
            raise RewardError(f"reward {self.name!r} returned {out.numel()} values for {n} samples "
                              f"(shape {tuple(out.shape)}); return one number per sample, shape ({n},)")
        if out.is_complex():
            raise RewardError(f"reward {self.name!r} returned complex values; return real numbers")
        return out if out.is_floating_point() else out.to(torch.float32)

    def _safe(self, x0: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(values with invalid rows replaced, valid, raised) on the outputs' device."""
        device = x0.device if isinstance(x0, Tensor) else None
        try:
            out = self._raw(x0)
        except RewardError:
            raise
        except Exception as err:  # one bad sample must not sink the batch: retry one by one
            self.last_error = _one_line(err)
            if self.first_error is None:
                self.first_error = self.last_error
            if len(x0) == 1:
                return (torch.full((1,), self.invalid_value, device=device), torch.zeros(1, dtype=torch.bool, device=device),
                        torch.ones(1, dtype=torch.bool, device=device))
            parts = [self._safe(x0[i:i + 1]) for i in range(len(x0))]
            values = torch.cat([p[0].to(parts[0][0].device) for p in parts])
            return values, torch.cat([p[1].to(values.device) for p in parts]), torch.cat([p[2].to(values.device) for p in parts])
        # no host round-trip: invalid outputs are replaced and counted on the outputs' device
        ok = torch.isfinite(out)
        return torch.where(ok, out, torch.full_like(out, self.invalid_value)), ok, torch.zeros_like(ok)

    def _evaluate(self, x0: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        if self.batch_size and len(x0) > self.batch_size:
            parts = [self._safe(x0[i:i + self.batch_size]) for i in range(0, len(x0), self.batch_size)]
            return tuple(torch.cat([p[j] for p in parts]) for j in range(3))
        return self._safe(x0)

    def _count(self, n: int, valid: Tensor, raised: Tensor, counts: Optional[Tensor]) -> None:
        invalid = ~valid & ~raised
        if counts is None:
            self._samples.add(n)
            self._invalid.add(invalid.sum())
            self._errors.add(raised.sum())
        else:
            w = torch.as_tensor(counts, device=valid.device).long()
            self._samples.add(w.sum())
            self._invalid.add((w * invalid).sum())
            self._errors.add((w * raised).sum())

    @staticmethod
    def _keep_graph(values: Tensor, x0) -> Tensor:
        """Under autograd, rows that failed (constants) get a zero-gradient link to ``x0``, so a
        gradient through the reward exists even when every sample failed."""
        if (torch.is_grad_enabled() and isinstance(x0, Tensor) and x0.requires_grad and not values.requires_grad
                and x0.is_floating_point()):
            link = x0.reshape(len(x0), -1).sum(1) * 0
            values = values + torch.where(torch.isfinite(link), link, torch.zeros_like(link)).to(values)
        return values

    def evaluate(self, x0: Tensor, counts: Optional[Tensor] = None) -> RewardOutput:
        """Values (invalid rows replaced by ``invalid_value``) and the validity mask. ``counts``
        (B,) says how many samples each row stands for (deduplicated rows), for the counters."""
        n = len(x0)
        if self.key_fn is None or (self.differentiable and torch.is_grad_enabled()):
            self.calls += n
            values, valid, raised = self._evaluate(x0)
        else:
            keys = [self.key_fn(x0[i]) for i in range(n)]
            fresh: dict = {}
            for i, k in enumerate(keys):
                if k not in self.cache:
                    fresh.setdefault(k, i)
            if fresh:
                idx = list(fresh.values())
                v, ok, bad = (t.detach().cpu().tolist() for t in self._evaluate(x0[idx]))
                self.calls += len(idx)
                for k, vi, oki, badi in zip(list(fresh), v, ok, bad):
                    fresh[k] = (vi, oki, badi)
                    if not badi:   # a raise may be transient: evaluate it again next time
                        self.cache[k] = (vi, oki)
            self.cache_hits += n - len(fresh)
            rows = [fresh[k] if k in fresh else (*self.cache[k], False) for k in keys]
            device = x0.device if isinstance(x0, Tensor) else None
            values = torch.tensor([r[0] for r in rows], dtype=torch.float32, device=device)
            valid = torch.tensor([bool(r[1]) for r in rows], dtype=torch.bool, device=device)
            raised = torch.tensor([bool(r[2]) for r in rows], dtype=torch.bool, device=device)
        self._count(n, valid, raised, counts)
        self.last_valid = valid
        return RewardOutput(self._keep_graph(values, x0), valid)

    def __call__(self, x0: Tensor) -> Tensor:
        return self.evaluate(x0).values

    def __repr__(self) -> str:
        return f"Reward({self.name!r}, differentiable={self.differentiable})"


def evaluate_reward(reward_fn, x0: Tensor, counts: Optional[Tensor] = None) -> RewardOutput:
    """``(values, valid)`` from any reward: a ``Reward``'s (or weighted sum's) own mask; for a
    plain callable, non-finite outputs are invalid and replaced by its ``invalid_value`` (0)."""
    if isinstance(reward_fn, (Reward, WeightedSum)):
        return reward_fn.evaluate(x0, counts=counts)
    out = torch.as_tensor(reward_fn(x0))
    valid = torch.isfinite(out)
    iv = getattr(reward_fn, "invalid_value", None)
    return RewardOutput(torch.where(valid, out, torch.full_like(out, float(iv) if iv is not None else 0.0)), valid)


def as_reward(reward_fn, **kwargs) -> Reward:
    """Wrap any callable as a ``Reward`` (a ``Reward`` is returned as is, counters reset)."""
    if isinstance(reward_fn, Reward) and not kwargs:
        return reward_fn
    if not callable(reward_fn):
        raise RewardError(f"reward_fn must be callable, got {type(reward_fn).__name__}")
    return Reward(reward_fn, **kwargs)


class WeightedSum:
    """``Σ_i w_i · r_i(x0)``; differentiable when every part is; invalid when any part is (its
    value is then ``Σ_i w_i · invalid_value_i``)."""

    def __init__(self, rewards: Sequence[Callable], weights: Sequence[float]):
        if len(rewards) != len(weights) or not rewards:
            raise RewardError("WeightedSum needs one weight per reward")
        self.rewards = [as_reward(r) for r in rewards]
        self.weights = [float(w) for w in weights]
        self.differentiable = all(r.differentiable for r in self.rewards)
        self.invalid_value = sum(w * r.invalid_value for r, w in zip(self.rewards, self.weights))
        self.name = "+".join(f"{w:g}*{r.name}" if w != 1 else r.name for r, w in zip(self.rewards, self.weights))

    def reset_counters(self) -> None:
        for r in self.rewards:
            r.reset_counters()

    def describe_first_error(self) -> Optional[str]:
        for r in self.rewards:
            msg = r.describe_first_error()
            if msg is not None:
                return f"{r.name}: {msg}"
        return None

    def evaluate(self, x0: Tensor, counts: Optional[Tensor] = None) -> RewardOutput:
        total, valid = None, None
        for r, w in zip(self.rewards, self.weights):
            v, ok = r.evaluate(x0, counts=counts)
            total = w * v if total is None else total + w * v
            valid = ok if valid is None else valid & ok.to(valid.device)
        return RewardOutput(torch.where(valid, total, torch.full_like(total, self.invalid_value)), valid)

    def __call__(self, x0: Tensor) -> Tensor:
        return self.evaluate(x0).values


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


_DANGLING_EXPONENT = re.compile(r"^\s*[-+]?(?:\d+\.?\d*|\.\d+)[eE]$")   # the "1e" of "1e+5*qed"


def reward_terms(spec: str) -> list[tuple[float, str]]:
    """The ``(weight, name)`` terms of ``"a"``, ``"a+0.5*b"``, ``"2*a+-1*b"`` or ``"1e+5*a"``;
    an empty spec or term (``"qed+"``, ``"+qed"``, ``"a++b"``) raises ``RewardError``."""
    if not isinstance(spec, str) or not spec.strip():
        raise RewardError("empty reward spec; name a reward, e.g. 'qed' or 'docking:parp1+0.5*qed'")
    pieces: list[str] = []
    for piece in spec.split("+"):   # a "+" inside a weight's exponent does not split terms
        if pieces and _DANGLING_EXPONENT.match(pieces[-1]) and piece[:1].isdigit():
            pieces[-1] += "+" + piece
        else:
            pieces.append(piece)
    terms = []
    for term in pieces:
        if not term.strip():
            raise RewardError(f"empty term in reward spec {spec!r}; write terms joined by '+', e.g. 'qed+0.5*sa'")
        m = _TERM.match(term)
        if not m:
            raise RewardError(f"cannot parse reward term {term!r} in {spec!r}; write e.g. '0.5*qed'")
        terms.append((float(m.group(1)) if m.group(1) else 1.0, m.group(2)))
    return terms


def parse_reward_spec(spec: str, factory: Callable[[str], Callable]) -> Callable:
    """Parse ``"a"``, ``"a+0.5*b"`` or ``"2*a+-1*b"`` into one reward; ``factory(name)`` builds
    each named part. A single unweighted name returns the factory's reward itself."""
    terms = reward_terms(spec)
    weights = [w for w, _ in terms]
    parts = [factory(n) for _, n in terms]
    if len(parts) == 1 and weights[0] == 1.0:
        return parts[0]
    return WeightedSum(parts, weights)

