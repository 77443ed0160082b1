"""Registry of sampling algorithms by name, so ``svdd.sample(..., method=...)``, the CLI, the
benchmarks and the shared contract tests pick every algorithm up automatically."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable


class AlgorithmError(ValueError):
    """A user-facing error: unknown method, unsupported combination, bad hyperparameter."""


@dataclass
class AlgorithmSpec:
    name: str
    fn: Callable
    kinds: frozenset = frozenset({"gaussian", "masked"})   # process kinds supported
    needs_gradients: bool = False                            # needs a differentiable reward
    needs_value: bool = False                                # needs value_fn (svdd-mc)
    budget_knob: str | None = None                           # knob the budget matcher scales
    defaults: dict = field(default_factory=dict)             # keyword defaults (e.g. value_fn=None)
    description: str = ""


ALGORITHMS: dict[str, AlgorithmSpec] = {}


def register(name: str, *, kinds=("gaussian", "masked"), needs_gradients=False, needs_value=False,
             budget_knob=None, defaults=None, description=""):
    def deco(fn):
        ALGORITHMS[name] = AlgorithmSpec(name, fn, frozenset(kinds), needs_gradients, needs_value, budget_knob,
                                         dict(defaults or {}), description or (fn.__doc__ or "").strip().split("\n")[0])
        return fn
    return deco


def get_algorithm(name: str) -> AlgorithmSpec:
    try:
        return ALGORITHMS[name]
    except KeyError:
        raise AlgorithmError(f"unknown method {name!r}; choose one of {', '.join(sorted(ALGORITHMS))}") from None
