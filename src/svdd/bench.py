"""Compute-matched benchmarks: ``run_suite`` runs every (reward, budget, method, seed) cell of a
suite and appends one JSON line per run to ``DIR/runs.jsonl``.

Budget matching. A suite gives a budget ``B`` per *final* sample, in denoiser evaluations
(``nfe``) and/or reward calls. For each method the runner chooses the integer value ``k`` of
its budget knob (``svdd.ALGORITHMS[name].budget_knob``: best-of-n's N, SVDD's M, SMC's
particles, DNO's iterations, ...) that brings its cost ``c(k)`` closest to ``B``:

- ``c(k)`` is *denoiser-equivalent evaluations* per final sample,
  ``nfe + value_call_cost · value_calls`` (``value_call_cost`` = 1 by default: a value-network
  call is charged like a denoiser call, which over-charges SVDD-MC when the value net is smaller);
- it is predicted by the algorithm's cost formula (``COST_MODELS``, K = ``num_steps``):
  ancestral K; best-of-n k·K; svdd-pm / svdd-r 1 + (K − 1)·k (the PM denoiser output of the kept
  child is reused); svdd-mc K + (K − 1)·k value calls;
- when there is no formula, or the formula is only an upper bound (masked SVDD evaluates
  identical children once), a few short calibration runs measure ``c(k)`` and the knob is
  solved on the line through the measurements (secant, at most ``calibration_runs`` runs; the
  calibration cost is recorded).

Every line records the predicted and the actual cost and ``within_budget = |actual/B − 1| ≤
tolerance`` (0.1). Methods without a knob (ancestral) run at their natural cost; a knob fixed
in the suite (an M sweep) is not changed. Value-function training (``value: {fit: ...}``) is
done once per (reward, fit options) and its cost is stored with every line that uses it, so the
report can amortise it over all the samples it served.

Suites are YAML; see ``benchmarks/README.md`` for the schema.
"""

from __future__ import annotations

import copy
import datetime as _dt
import hashlib
import inspect
import itertools
import json
import math
import os
import platform
import subprocess
import time
from pathlib import Path
from typing import Any, Callable, Optional

import torch

BUDGET_TOLERANCE = 0.10
SCHEMA_VERSION = 1


class BenchError(ValueError):
    """A user-facing problem with a suite or an output directory (one line, says what to do)."""


# ------------------------------------------------------------------------------------------------
# cost models: knob value -> expected cost per final sample
# ------------------------------------------------------------------------------------------------
def _cost(nfe: float, reward_calls: float, value_calls: float = 0.0, grad_passes: float = 0.0, *,
          exact: bool = True) -> dict:
    return {"nfe": float(nfe), "reward_calls": float(reward_calls), "value_calls": float(value_calls),
            "grad_passes": float(grad_passes), "exact": exact}


def _ancestral_cost(k, K, params, kind):
    return _cost(K, 1)


def _best_of_n_cost(k, K, params, kind):
    return _cost(k * K, k)


def _svdd_pm_cost(k, K, params, kind):
    # one x0_hat on the prior, then M children valued per step (the last by the reward itself;
    # a DDPM/DDIM step to t = 0 is deterministic, so it has one child); on masked processes
    # identical children are evaluated once, so there the formula is an upper bound
    dedup = kind == "masked" and params.get("deduplicate", True)
    last = 1 if kind == "gaussian" else k
    if params.get("value_fn") is not None:                    # an explicit (non-PM) value
        return _cost(K, last, (K - 1) * k, exact=not dedup)
    return _cost(1 + (K - 1) * k, (K - 1) * k + last, exact=not dedup)


def _svdd_mc_cost(k, K, params, kind):
    dedup = kind == "masked" and params.get("deduplicate", True)
    return _cost(K, 1 if kind == "gaussian" else k, (K - 1) * k, exact=not dedup)


def _smc_cost(k, K, params, kind):
    # P = k particles, one denoiser call each per step, resampled to num_samples at the end
    n = params.get("num_samples", 1)
    k = n if k is None else k
    grads = k * K / n if params.get("proposal") == "guided" else 0.0
    return _cost(k * K / n, k * K / n, 0.0, grads, exact=True)


def _das_cost(k, K, params, kind):
    n = params.get("num_samples", 1)
    k = n if k is None else k
    return _cost(k * K / n, k * K / n, 0.0, k * K / n)


def _dps_cost(k, K, params, kind):
    return _cost(K, K + 1, 0.0, K)


def _search_cost(k, K, params, kind):
    return _cost(k * K, k)


def _dno_cost(k, K, params, kind):
    est = params.get("estimator", "auto")
    if est == "auto":
        est = "gradient" if params.get("reward_differentiable") else "hybrid"
    q = params.get("num_perturbations", 4)
    if est == "gradient":
        return _cost(2 * K * k + K, k + 1, 0.0, K * k)
    if est == "hybrid":
        return _cost((2 + q) * K * k + K, (1 + q) * k + 1, 0.0, K * k)
    return _cost((1 + q) * K * k + K, (1 + q) * k + 1)


COST_MODELS: dict[str, Callable[..., dict]] = {
    "ancestral": _ancestral_cost,
    "best-of-n": _best_of_n_cost,
    "svdd-pm": _svdd_pm_cost,
    "svdd-r": _svdd_pm_cost,
    "svdd-mc": _svdd_mc_cost,
    "smc": _smc_cost,
    "das": _das_cost,
    "dps": _dps_cost,
    "random-search": _search_cost,
    "zero-order-search": _search_cost,
    "dno": _dno_cost,
}


# tree / search methods of issue 17 (dts, dts-star: an upper bound, then calibrated; dsearch: calibrated)
def _treeg_cost(k, K, params, kind):
    a = params.get("active_size") or params.get("num_samples", 1)
    n = params.get("num_samples", 1)
    return _cost((a + (K - 1) * a * k) / n, ((K - 1) * a * k + (a if kind == "gaussian" else a * k)) / n)


def _noise_trajectory_cost(k, K, params, kind):
    per = k
    return _cost(1 + (K - 1) * per, (K - 1) * per + (1 if kind == "gaussian" else per))


def _refinement_cost(k, K, params, kind):
    m = params.get("num_candidates", 4)
    j = min(max(int(round(K * (1.0 - float(params.get("renoise_fraction", 0.3))))), 0), K - 1)
    last = 1 if kind == "gaussian" else m
    return _cost(1 + (K - 1) * m + k * (1 + (K - j - 1) * m), (K - 1) * m + last + k * ((K - j - 1) * m + last))


def _paths_cost(k, K, params, kind):
    start = params.get("start_step")
    level, f, b = (K // 4 if start is None else start), params.get("forward_steps", 1), params.get("backward_steps", 2)
    nfe, calls = float(level), 0.0
    while level < K:
        back = max(level - f, 0)
        level = min(back + b, K)
        nfe += k * (level - back) + (k if level < K else 0)
        calls += k
    return _cost(nfe, calls)


def _dts_cost(k, K, params, kind):
    # an upper bound (every rollout from the root: k·K per tree), a starting point for calibration
    n = params.get("num_samples", 1)
    trees = params.get("num_trees") or 1
    return _cost(k * K * trees / n, k * trees / n, exact=False)


COST_MODELS.update({"dts": _dts_cost, "dts-star": _dts_cost,
                    "treeg": _treeg_cost, "noise-trajectory-search": _noise_trajectory_cost,
                    "iterative-refinement": _refinement_cost, "search-over-paths": _paths_cost})


def register_cost_model(name: str, fn: Callable[..., dict]) -> None:
    """``fn(knob_value, num_steps, params, process_kind) -> {"nfe", "reward_calls", "value_calls",
    "grad_passes", "exact"}`` per final sample; used by the budget matcher for algorithm ``name``.
    ``params`` holds the method's hyperparameters plus ``num_samples`` and ``reward_differentiable``."""
    COST_MODELS[name] = fn


def cost_of(counts: dict, value_call_cost: float = 1.0, grad_pass_cost: float = 0.0) -> float:
    """Denoiser-equivalent evaluations: ``nfe + value_call_cost · value_calls + grad_pass_cost ·
    grad_passes`` (gradient passes are reported separately and cost 0 unless a suite says so)."""
    return (float(counts.get("nfe", 0.0)) + value_call_cost * float(counts.get("value_calls", 0.0))
            + grad_pass_cost * float(counts.get("grad_passes", 0.0)))


def _measure(budget: dict) -> str:
    for key in ("nfe", "reward_calls"):
        if budget.get(key) is not None:
            return key
    raise BenchError(f"budget {budget!r} names no measure; write e.g. 'budget: {{nfe: 400}}' or {{reward_calls: 8}}")


def _measured(counts: dict, measure: str, weights) -> float:
    """The budget measure of per-sample counts; ``weights`` = (value_call_cost, grad_pass_cost)."""
    vcc, gpc = weights if isinstance(weights, tuple) else (float(weights), 0.0)
    return cost_of(counts, vcc, gpc) if measure == "nfe" else float(counts.get(measure, 0.0))


def _weights(suite: dict) -> tuple:
    return (float(suite.get("value_call_cost", 1.0)), float(suite.get("grad_pass_cost", 0.0)))


def solve_knob(predict: Callable[[int], float], target: float, max_knob: int = 2 ** 20) -> int:
    """Smallest-error integer ``k >= 1`` for a cost ``predict(k)`` that grows with k."""
    lo, hi = 1, 1
    while predict(hi) < target and hi < max_knob:
        lo, hi = hi, min(hi * 2, max_knob)
    while hi - lo > 1:                      # bisection: predict(lo) < target <= predict(hi)
        mid = (lo + hi) // 2
        if predict(mid) < target:
            lo = mid
        else:
            hi = mid
    return min((lo, hi), key=lambda k: (abs(predict(k) - target), k))


def match_budget(algorithm: str, budget: dict, num_steps: int, params: Optional[dict] = None, *,
                 kind: str = "gaussian", value_call_cost: float = 1.0, grad_pass_cost: float = 0.0,
                 max_knob: int = 2 ** 20) -> dict:
    """Knob value from the cost formula alone: ``{"knob", "value", "predicted", "exact"}``.
    ``value`` is None for methods without a knob or without a formula (then calibrate)."""
    from .algorithms import get_algorithm

    spec = get_algorithm(algorithm)
    params = params or {}
    model = COST_MODELS.get(algorithm)
    measure = _measure(budget)
    target = float(budget[measure])
    value_call_cost = (value_call_cost, grad_pass_cost)
    if spec.budget_knob is None:
        pred = model(None, num_steps, params, kind) if model else None
        return {"knob": None, "value": None, "measure": measure,
                "predicted": _measured(pred, measure, value_call_cost) if pred else None,
                "exact": bool(pred and pred["exact"])}
    if model is None:
        return {"knob": spec.budget_knob, "value": None, "measure": measure, "predicted": None, "exact": False}

    def predict(k: int) -> float:
        return _measured(model(k, num_steps, params, kind), measure, value_call_cost)

    k = solve_knob(predict, target, max_knob)
    return {"knob": spec.budget_knob, "value": k, "measure": measure, "predicted": predict(k),
            "exact": bool(model(k, num_steps, params, kind)["exact"])}


# ------------------------------------------------------------------------------------------------
# suites
# ------------------------------------------------------------------------------------------------
SUITE_KEYS = {"name", "description", "hardware", "domain", "model", "model_options", "num_steps", "num_samples",
              "seeds", "alpha", "reward", "rewards", "eval_rewards", "budget", "budgets", "methods", "quick",
              "value_call_cost", "grad_pass_cost", "calibrate", "calibration_runs", "calibration_samples", "max_knob",
              "max_batch_size", "tolerance", "notes", "reference", "sweep_kind", "reward_options", "process"}
METHOD_KEYS = {"method", "label", "sweep", "value", "calibrate", "guide"}


def load_suite(suite, *, quick: bool = False) -> dict:
    """Read a suite (path or dict), apply its ``quick:`` overrides when ``quick`` and validate."""
    if isinstance(suite, (str, os.PathLike)):
        path = Path(suite)
        if not path.exists():
            raise BenchError(f"suite file {str(path)!r} not found; see benchmarks/*.yaml for examples")
        import yaml

        try:
            data = yaml.safe_load(path.read_text())
        except yaml.YAMLError as err:
            raise BenchError(f"cannot parse suite {str(path)!r}: {str(err).splitlines()[0]}") from None
        if not isinstance(data, dict):
            raise BenchError(f"suite {str(path)!r} must be a YAML mapping (name, domain, methods, ...)")
        data.setdefault("name", path.stem)
    elif isinstance(suite, dict):
        data = dict(suite)
    else:
        raise BenchError(f"suite must be a path or a mapping, got {type(suite).__name__}")
    data = copy.copy(data)
    quick_over = data.pop("quick", None) or {}
    if quick:
        if not quick_over:
            raise BenchError(f"suite {data.get('name')!r} has no 'quick:' overrides; run it without --quick "
                             "(or use its *-quick.yaml sibling)")
        if not isinstance(quick_over, dict):
            raise BenchError("the suite's 'quick:' entry must be a mapping of overrides")
        data.update(quick_over)
        data["name"] = str(data.get("name", "suite")) + ("" if str(data.get("name", "")).endswith("-quick") else "-quick")
    unknown = set(data) - SUITE_KEYS
    if unknown:
        raise BenchError(f"unknown suite keys {sorted(unknown)}; allowed: {sorted(SUITE_KEYS)}")
    if data.get("process") is not None:   # the user's own model, MODULE:FACTORY (svdd.plugins)
        from .plugins import is_import_path

        if not is_import_path(data["process"]):
            raise BenchError(f"suite 'process: {data['process']}' is not an import path; write MODULE:FACTORY")
        if data.get("model") not in (None, data["process"]):
            raise BenchError("a suite gives 'process:' or 'model:', not both")
        data["model"] = data["process"]
        data.setdefault("domain", data["process"])
    for key in ("domain", "methods"):
        if key not in data:
            raise BenchError(f"suite {data.get('name')!r} needs a '{key}:' entry (or 'process: MODULE:FACTORY')")
    data.setdefault("name", "suite")
    if "rewards" not in data:
        data["rewards"] = [data["reward"]] if data.get("reward") is not None else [None]
    data.pop("reward", None)
    if isinstance(data["rewards"], str):
        data["rewards"] = [data["rewards"]]
    if "budgets" not in data:
        data["budgets"] = [data["budget"]] if data.get("budget") is not None else [None]
    data.pop("budget", None)
    if not isinstance(data["budgets"], list) or not data["budgets"]:
        raise BenchError(f"'budgets:' must be a non-empty list of mappings like {{nfe: 400}}, got {data['budgets']!r}")
    for b in data["budgets"]:
        if b is not None:
            if not isinstance(b, dict):
                raise BenchError(f"a budget must be a mapping like {{nfe: 400}}, got {b!r}")
            _measure(b)
            for key, v in b.items():
                if v is not None and (not _is_number(v) or not math.isfinite(v) or v <= 0):
                    raise BenchError(f"budget {b!r}: {key} must be a positive number, got {v!r}")
    data["seeds"] = _seeds(data.get("seeds", [0]))
    _check_suite_values(data)
    data.setdefault("num_samples", 64)
    data.setdefault("eval_rewards", [])
    data.setdefault("value_call_cost", 1.0)
    data.setdefault("tolerance", BUDGET_TOLERANCE)
    methods = data["methods"]
    if not isinstance(methods, list) or not methods:
        raise BenchError("'methods:' must be a non-empty list of {method: NAME, ...hyperparameters}")
    norm = []
    for m in methods:
        if isinstance(m, str):
            m = {"method": m}
        if not isinstance(m, dict) or "method" not in m:
            raise BenchError(f"each method entry needs 'method: NAME', got {m!r}")
        for key in ("method", "label"):
            if m.get(key) is not None and not isinstance(m[key], str):
                raise BenchError(f"a methods entry's {key}: must be a name, got {m[key]!r}")
        guide = m.get("guide")
        if guide is not None and not isinstance(guide, (str, dict)):
            raise BenchError(f"guide: of {m['method']!r} must be a reward spec or a mapping reward: spec, got {guide!r}")
        norm.append(dict(m))
    data["methods"] = norm
    return data


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _seeds(seeds) -> list[int]:
    """``seeds:`` is a count (``3`` -> 0, 1, 2) or a list of seeds, each an integer >= 0."""
    hint = "write a count (seeds: 3) or a list of integer seeds (seeds: [0, 1, 2])"
    if _is_int(seeds):
        if seeds < 1:
            raise BenchError(f"seeds: {seeds} runs nothing; {hint}")
        return list(range(seeds))
    if not isinstance(seeds, (list, tuple)) or not seeds:
        raise BenchError(f"seeds: {seeds!r} is not a count or a list of seeds; {hint}")
    bad = [s for s in seeds if not _is_int(s) or not 0 <= s < 2 ** 63]
    if bad:
        raise BenchError(f"seeds: {bad[0]!r} is not an integer seed >= 0; {hint}")
    if len(set(seeds)) != len(seeds):
        raise BenchError(f"seeds: {list(seeds)} repeats a seed; each seed runs once")
    return [int(s) for s in seeds]


def _check_suite_values(data: dict) -> None:
    """Types and ranges of a suite's top-level numbers, options and reward specs (one line each)."""
    from .checks import InputError, reward_terms_or_error

    def positive_int(key, minimum=1):
        v = data.get(key)
        if v is not None and (not _is_int(v) or v < minimum):
            raise BenchError(f"{key}: must be an integer >= {minimum}, got {v!r}")

    def number(key, minimum=0.0, strict=False):
        v = data.get(key)
        if v is None:
            return
        if not _is_number(v) or not math.isfinite(v) or v < minimum or (strict and v == minimum):
            raise BenchError(f"{key}: must be a number {'>' if strict else '>='} {minimum:g}, got {v!r}")

    for key in ("num_samples", "num_steps", "calibration_runs", "calibration_samples", "max_knob"):
        positive_int(key)
    number("tolerance", strict=True)
    number("alpha")
    number("value_call_cost")
    number("grad_pass_cost")
    mbs = data.get("max_batch_size")
    if mbs is not None and mbs != "auto" and (not _is_int(mbs) or mbs < 1):
        raise BenchError(f"max_batch_size: must be an integer >= 1 or 'auto', got {mbs!r}")
    for key in ("model_options", "reward_options"):
        if data.get(key) is not None and not isinstance(data[key], dict):
            raise BenchError(f"{key}: must be a mapping of option: value, got {data[key]!r}")
    for key in ("domain", "model"):
        if key in data and data[key] is not None and isinstance(data[key], (int, float, bool, list)):
            raise BenchError(f"{key}: must be a name, got {data[key]!r}")
    if not isinstance(data["rewards"], list) or not data["rewards"]:
        raise BenchError(f"rewards: must be a non-empty list of reward specs, got {data['rewards']!r}")
    evals = data.get("eval_rewards") or []
    lists = list(evals.values()) if isinstance(evals, dict) else [evals]
    if not all(isinstance(v, list) for v in lists):
        raise BenchError(f"eval_rewards: must be a list of reward specs, or a mapping reward: [specs], got {evals!r}")
    specs = list(data["rewards"]) + [spec for v in lists for spec in v]
    for spec in specs:
        if spec is None:
            continue
        try:
            reward_terms_or_error(spec, flag="reward")
        except InputError as err:
            raise BenchError(str(err)) from None


def check_reward_names(suite: dict, domain) -> None:
    """Every reward a suite names (rewards, eval_rewards, guides) exists in ``domain``."""
    from .checks import InputError, check_reward_names as check

    evals = suite.get("eval_rewards") or []
    specs = list(suite["rewards"]) + (sum(evals.values(), []) if isinstance(evals, dict) else list(evals))
    for entry in suite["methods"]:
        guide = entry.get("guide")
        specs += list(guide.values()) if isinstance(guide, dict) else [guide]
    for spec in specs:
        if spec is None:
            continue
        try:
            check(domain, spec, flag="reward")
        except InputError as err:
            raise BenchError(str(err)) from None


def check_model_options(domain, model: str, options: Optional[dict]) -> None:
    """``model_options`` name options the model's loader takes (when its signature says)."""
    from .checks import loader_options

    if not options or model not in domain.models:
        return
    known = loader_options(domain.models[model])
    if known is None:
        return
    unknown = sorted(set(options) - known)
    if unknown:
        takes = f"it takes {sorted(known)}" if known else "it takes none"
        raise BenchError(f"model_options: {domain.name} model {model!r} has no option {unknown[0]!r}; {takes}")


def _accepts(fn: Callable, name: str, *, explicit: bool = False) -> bool:
    """Whether ``fn`` takes keyword ``name``; ``explicit`` ignores a ``**kwargs`` catch-all (a
    domain metric that forwards ``**options`` to a stricter function must not get extras)."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return not explicit
    return name in params or (not explicit and any(p.kind == p.VAR_KEYWORD for p in params.values()))


def _fmt(v) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def expand_methods(suite: dict) -> list[dict]:
    """One entry per method variant: ``{label, variant, algorithm, params, sweep, value, knob_fixed}``.
    A suite-level ``alpha`` applies to every method whose function takes ``alpha``."""
    from .algorithms import get_algorithm

    out, seen = [], set()
    for entry in suite["methods"]:
        name = entry["method"]
        spec = get_algorithm(name)
        params = {k: v for k, v in entry.items() if k not in METHOD_KEYS}
        for k in params:
            if not _accepts(spec.fn, k):
                raise BenchError(f"method {name!r} has no hyperparameter {k!r}; check the suite's methods entry")
            _check_value(spec.fn, name, k, params[k])
        if suite.get("alpha") is not None and "alpha" not in params and _accepts(spec.fn, "alpha"):
            params["alpha"] = float(suite["alpha"])
        sweep = entry.get("sweep") or {}
        if not isinstance(sweep, dict):
            raise BenchError(f"'sweep:' of {name!r} must map a hyperparameter to a list of values")
        for k, vals in sweep.items():
            if not _accepts(spec.fn, k):
                raise BenchError(f"method {name!r} cannot sweep {k!r}: no such hyperparameter")
            if not isinstance(vals, list) or not vals:
                raise BenchError(f"sweep values for {k!r} must be a non-empty list")
            for v in vals:
                _check_value(spec.fn, name, k, v)
        label = entry.get("label") or name
        keys = list(sweep)
        for combo in itertools.product(*[sweep[k] for k in keys]) if keys else [()]:
            point = dict(zip(keys, combo))
            variant = label + ("[" + ",".join(f"{k}={_fmt(v)}" for k, v in point.items()) + "]" if point else "")
            if variant in seen:
                raise BenchError(f"two method entries are both called {variant!r}; give one a distinct 'label:'")
            seen.add(variant)
            p = {**params, **point}
            if "alpha" in p and p["alpha"] is not None:
                p["alpha"] = float(p["alpha"])
            out.append({"label": label, "variant": variant, "algorithm": name, "params": p, "sweep": point,
                        "value": entry.get("value"), "calibrate": entry.get("calibrate"), "guide": entry.get("guide"),
                        "knob_fixed": spec.budget_knob is not None and spec.budget_knob in p,
                        "knob": spec.budget_knob, "alpha_dependent": _accepts(spec.fn, "alpha") and "alpha" in p})
    return out


def _check_value(fn: Callable, method: str, key: str, value) -> None:
    from .checks import InputError, check_option

    if key in ("process", "reward_fn", "generator", "callback", "num_samples", "num_steps", "value_fn"):
        raise BenchError(f"method {method!r}: {key} is set by the runner, not by the suite; drop it")
    try:
        check_option(fn, key, value, label=f"method {method!r}: {key}")
    except InputError as err:
        raise BenchError(str(err)) from None


def plan_cells(suite: dict) -> list[dict]:
    """Every (reward, budget, method variant, seed) cell, in run order. Methods whose cost does
    not depend on the budget (no knob, or a fixed knob) run once per reward, not per budget."""
    cells = []
    variants = expand_methods(suite)
    for reward in suite["rewards"]:
        for v in variants:
            budget_free = v["knob"] is None or v["knob_fixed"]
            budgets = [(None, None)] if budget_free or suite["budgets"] == [None] else list(enumerate(suite["budgets"]))
            for b_index, budget in budgets:
                for seed in suite["seeds"]:
                    cid = _cell_id(reward, b_index, budget, v["variant"], seed, v)
                    cells.append({"cell": cid, "reward": reward, "budget_index": b_index, "budget": budget,
                                  "variant": v, "seed": seed})
    return cells


def _short_hash(obj) -> str:
    return hashlib.sha1(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:8]


def _cell_id(reward, b_index, budget, variant, seed, v=None) -> str:
    """Stable id of a cell; a change of the method's hyperparameters or value gives a new id."""
    b = "natural" if b_index is None else "b" + "-".join(f"{k}{_fmt(v)}" for k, v in sorted(budget.items()))
    h = "-" if v is None else _short_hash([v["params"], v["value"]] + ([v["guide"]] if v.get("guide") else []))
    return f"{reward or 'default'}|{b}|{variant}|{h}|seed{seed}"


def suite_fingerprint(suite: dict) -> str:
    """Hash of the settings shared by every cell; resuming a directory requires the same one."""
    keys = ("domain", "model", "model_options", "num_steps", "num_samples", "value_call_cost", "grad_pass_cost",
            "reward_options", "max_batch_size")
    return _short_hash({k: (suite.get(k) if isinstance(suite.get(k), (str, int, float, dict, list, type(None)))
                            else getattr(suite.get(k), "name", str(suite.get(k)))) for k in keys})


# ------------------------------------------------------------------------------------------------
# environment and bookkeeping
# ------------------------------------------------------------------------------------------------
def _git_revision() -> dict:
    here = Path(__file__).resolve().parent
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=10)
        if rev.returncode == 0:
            return {"git_revision": rev.stdout.strip(), "git_dirty": bool(dirty.stdout.strip())}
    except (OSError, subprocess.SubprocessError):
        pass
    return {"git_revision": None, "git_dirty": None}


def environment(device: str) -> dict:
    from . import __version__

    dev = str(device)
    if dev.startswith("cuda") and torch.cuda.is_available():
        dev_name = torch.cuda.get_device_name(torch.device(dev))
    else:
        dev_name = platform.processor() or platform.machine()
    return {"svdd_version": __version__, **_git_revision(), "torch": torch.__version__,
            "python": platform.python_version(), "device": dev, "device_name": dev_name,
            "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(), "platform": platform.platform()}


_ROW_MAPPINGS = ("environment", "params", "predicted", "actual", "counters", "timings", "eval_rewards", "metrics",
                 "notes", "info", "sweep")
_ROW_OPTIONAL_MAPPINGS = ("budget", "value_training", "reference")


def _row_problem(row) -> Optional[str]:
    """Why a parsed ``runs.jsonl`` line is not a run written by ``run_suite`` (None if it is one)."""
    if not isinstance(row, dict):
        return f"is a JSON {type(row).__name__}, not a run record"
    for key in ("status", "suite", "cell"):
        if not isinstance(row.get(key), str):
            return f"has no {key!r} text"
    if row["status"] not in ("ok", "error", "unsupported"):
        return f"has the unknown status {row['status']!r}"
    if "seed" in row and not _is_int(row["seed"]):
        return f"has a seed that is not an integer ({row['seed']!r})"
    if row["status"] != "ok":
        return None
    for key in ("reward", "variant"):
        if not isinstance(row.get(key), str):
            return f"is an ok run without a {key!r} name"
    rewards = row.get("rewards")
    if not isinstance(rewards, list) or not all(_is_number(v) or v is None for v in rewards):
        return "is an ok run whose 'rewards' is not a list of numbers"
    if not isinstance(row.get("actual"), dict):
        return "is an ok run without its 'actual' cost"
    for key in _ROW_MAPPINGS:
        if key in row and not isinstance(row[key], dict):
            return f"has a {key!r} entry that is not a mapping"
    for key in _ROW_OPTIONAL_MAPPINGS:
        if row.get(key) is not None and not isinstance(row[key], dict):
            return f"has a {key!r} entry that is not a mapping"
    for name, vals in (row.get("eval_rewards") or {}).items():
        if not isinstance(vals, list) or not all(_is_number(v) or v is None for v in vals):
            return f"has eval_rewards[{name!r}] that is not a list of numbers"
    return None


def _read_text(path: Path) -> str:
    try:
        return path.read_text()
    except UnicodeDecodeError as err:
        raise BenchError(f"{path} is not text (undecodable byte at offset {err.start}); it was not written by "
                         "`svdd bench` — move it away or choose another folder") from None
    except IsADirectoryError:
        raise BenchError(f"{path} is a folder, not the runs file `svdd bench` writes; move it away") from None


def read_runs(path, *, strict: bool = False) -> list[dict]:
    """All JSON lines of a ``runs.jsonl`` (a truncated last line from a killed run is ignored).
    With ``strict`` a line that parses but is not a run record (another tool's line, a hand
    edit) raises ``BenchError`` naming its line number."""
    path = Path(path)
    if path.is_dir() and path.name != "runs.jsonl":
        path = path / "runs.jsonl"
    if not path.exists():
        return []
    rows = []
    for number, line in enumerate(_read_text(path).splitlines(), 1):
        line = line.strip()
        if not line:
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if strict:
            problem = _row_problem(row)
            if problem:
                raise BenchError(f"{path} line {number} {problem}, so it was not written by `svdd bench`; move "
                                 "that line out of the file (or use another folder)")
        rows.append(row)
    return rows


def _repair(path: Path) -> None:
    """A run killed while writing leaves a partial last line: move unparseable lines to
    ``runs.jsonl.damaged`` (kept, never deleted) so new lines start on a fresh line."""
    if not path.exists():
        return
    text = _read_text(path)
    if not text or text.endswith("\n") and all(_parses(line) for line in text.splitlines() if line.strip()):
        return
    good, bad = [], []
    for line in text.splitlines():
        if line.strip():
            (good if _parses(line) else bad).append(line)
    from .runfolder import atomic_write

    damaged = path.with_name(path.name + ".damaged")
    before = damaged.read_text() if damaged.exists() and not damaged.is_symlink() else ""
    atomic_write(damaged, before + "".join(line + "\n" for line in bad))
    atomic_write(path, "".join(line + "\n" for line in good))


def _parses(line: str) -> bool:
    try:
        json.loads(line)
        return True
    except json.JSONDecodeError:
        return False


def _append(path: Path, row: dict) -> None:
    """One ``write`` on an ``O_APPEND`` descriptor per line, so two invocations that run different
    rewards of one suite (``only_rewards``) can share ``runs.jsonl`` without interleaving."""
    data = (json.dumps(row, default=_json_default, allow_nan=True) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
    try:
        written = os.write(fd, data)
        while written < len(data):   # only for a line larger than the OS writes at once
            written += os.write(fd, data[written:])
        os.fsync(fd)
    finally:
        os.close(fd)


def _json_default(o):
    if isinstance(o, torch.Tensor):
        return o.detach().cpu().tolist()
    if hasattr(o, "item"):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    return repr(o)


def _short(v: float) -> float:
    """7 significant digits (float32 precision) keep runs.jsonl small."""
    return float(f"{float(v):.7g}")


def _scalars(d: dict) -> dict:
    out = {}
    for k, v in (d or {}).items():
        if isinstance(v, bool) or isinstance(v, (int, float, str)) or v is None:
            out[k] = v
        elif isinstance(v, torch.Tensor) and v.numel() == 1:
            out[k] = v.item()
        elif hasattr(v, "item") and getattr(v, "size", 2) == 1:
            out[k] = v.item()
    return out


# ------------------------------------------------------------------------------------------------
# exact references for the analytic toys
# ------------------------------------------------------------------------------------------------
def _mixture_quantile(means, stds, weights, q: float) -> float:
    from math import erf, sqrt

    def cdf(x):
        return sum(w * 0.5 * (1 + erf((x - m) / (s * sqrt(2)))) for m, s, w in zip(means, stds, weights))

    lo, hi = min(means) - 10 * max(stds), max(means) + 10 * max(stds)
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if cdf(mid) < q else (lo, mid)
    return 0.5 * (lo + hi)


def _discrete_quantile(values, probs, q: float) -> float:
    order = sorted(range(len(values)), key=lambda i: values[i])
    acc = 0.0
    for i in order:
        acc += probs[i]
        if acc >= q - 1e-12:
            return float(values[i])
    return float(values[order[-1]])


def exact_reference(toy, alpha: Optional[float], num_steps: int) -> Optional[dict]:
    """Exact reward statistics (mean, median, top-10 %) of the pretrained law and of the
    tilted target ``p·exp(r/alpha)`` for a ``svdd.testing`` toy (None when not defined)."""
    from .testing import GaussianMixtureToy, MaskedToy

    out: dict = {}
    if isinstance(toy, GaussianMixtureToy):
        wn = float(toy.w.pow(2).sum().sqrt())
        for key, a in (("pretrained", None), ("target", alpha)):
            if key == "target" and not a:
                continue                       # alpha = 0: the linear reward has no maximiser
            means, stds, weights = (toy.means, toy.stds, toy.weights) if a is None else toy.tilted(a)
            mr = (means @ toy.w).tolist()
            sr = (stds * wn).tolist()
            wt = weights.tolist()
            out[key] = {"mean": float(sum(w * m for w, m in zip(wt, mr))),
                        "median": _mixture_quantile(mr, sr, wt, 0.5), "top10": _mixture_quantile(mr, sr, wt, 0.9)}
    elif isinstance(toy, MaskedToy):
        model = toy.model_distribution(num_steps)
        table = toy.reward_table
        dists = {"pretrained": model}
        if alpha:
            dists["target"] = toy.tilted(alpha, num_steps)
        for key, p in dists.items():
            vals, pr = table.tolist(), p.tolist()
            out[key] = {"mean": float((p * table).sum()), "median": _discrete_quantile(vals, pr, 0.5),
                        "top10": _discrete_quantile(vals, pr, 0.9)}
        if not alpha:
            support = model > 1e-12
            best = float(table[support].max())
            out["target"] = {"mean": best, "median": best, "top10": best}
    else:
        return None
    out["alpha"] = alpha
    out["num_steps"] = num_steps
    return out


# ------------------------------------------------------------------------------------------------
# the runner
# ------------------------------------------------------------------------------------------------
class _Context:
    """Loaded once per suite: domain, process, reward factories, fitted values, calibrations."""

    def __init__(self, suite: dict, out_dir: Path, device: str):
        from .domains import Domain, get_domain

        self.suite, self.out_dir, self.device = suite, out_dir, device
        dom = suite["domain"]
        self.domain = dom if isinstance(dom, Domain) else get_domain(str(dom))
        self.domain_name = self.domain.name
        self.model = suite.get("model") or self.domain.default_model
        self.num_steps = int(suite.get("num_steps") or self.domain.default_num_steps)
        check_reward_names(suite, self.domain)
        check_model_options(self.domain, self.model, suite.get("model_options"))
        self.process = self.domain.load_process(self.model, device=device, **(suite.get("model_options") or {}))
        self.kind = self.process.kind
        # run-time data (MOSES, receptors) fetched before any cell samples, as `svdd sample` does
        for reward_name in list(suite["rewards"]) + [e for e in (suite.get("eval_rewards") or [])
                                                    if isinstance(e, str)]:
            self.domain.prepare_data(reward_name, dict(suite.get("reward_options") or {}))
        from .checks import InputError, check_fits, sample_nbytes

        nbytes = sample_nbytes(self.process)
        try:
            if nbytes:
                check_fits(int(suite["num_samples"]), nbytes, device=device, what=f"num_samples: {suite['num_samples']}",
                           fix="lower num_samples in the suite")
        except InputError as err:
            raise BenchError(str(err)) from None
        self.values: dict[str, tuple[Any, dict]] = {}
        self.calibration_path = out_dir / "calibration.json"
        self.calibrations = json.loads(self.calibration_path.read_text()) if self.calibration_path.exists() else {}

    def reward(self, name):
        # a fresh reward per run: memoising rewards must not carry cache hits across cells
        return self.domain.make_reward(name, **(self.suite.get("reward_options") or {}))

    def generator(self, seed: int) -> torch.Generator:
        dev = torch.device(self.device)
        g = torch.Generator(device=dev) if dev.type != "cpu" else torch.Generator()
        return g.manual_seed(int(seed))

    def toy(self):
        return (self.domain.extra or {}).get("toy") if isinstance(self.domain.extra, dict) else None

    # -- value functions ------------------------------------------------------------------------
    def value_for(self, variant: dict, reward_name) -> tuple[Any, Optional[dict]]:
        spec = variant["value"]
        if spec is None:
            return None, None
        alpha = variant["params"].get("alpha")
        if spec == "exact":
            toy = self.toy()
            if toy is None:
                raise BenchError(f"value: exact needs an analytic toy domain, not {self.domain_name!r}")
            if not alpha:
                raise BenchError("value: exact needs alpha > 0 (the soft value at alpha = 0 is a max, not computable)")
            fn = toy.soft_value(alpha) if self.kind == "gaussian" else toy.soft_value(alpha, self.num_steps)
            return fn, {"id": f"exact-alpha{alpha:g}", "kind": "exact", "nfe": 0, "reward_calls": 0, "wall_time_s": 0.0}
        if isinstance(spec, dict) and "fit" in spec:
            opts = dict(spec["fit"] or {})
            opts.setdefault("num_steps", self.num_steps)
            if opts.get("loss") == "exp" and "alpha" not in opts and alpha:
                opts["alpha"] = alpha
            seed = int(opts.pop("seed", 0))
            # the value network the domain designates for fitting (as `svdd fit-value` uses);
            # `network: default` keeps fit_value's generic network
            network = opts.pop("network", "domain")
            if network not in ("domain", "default"):
                raise BenchError(f"value: fit: network must be 'domain' or 'default', got {network!r}")
            build = (self.domain.extra or {}).get("value_network") if network == "domain" else None
            key_items = [str(reward_name), opts, seed]
            if build is not None:   # keys of fits with the generic network are unchanged
                key_items.append({"network": "domain"})
            key = hashlib.sha1(json.dumps(key_items, sort_keys=True, default=str).encode()).hexdigest()[:10]
            if key not in self.values:
                from .values.learned import fit_value, load_value

                cache = self.out_dir / "values" / key
                if (cache / "value.json").exists():
                    value = load_value(cache, device=self.device)
                    cost = dict(value.meta.get("cost", {}))
                else:
                    kwargs = dict(opts)
                    if build is not None:   # initialised from the fit seed, not the global RNG
                        with torch.random.fork_rng(devices=[]):
                            torch.manual_seed(seed)
                            kwargs["network"] = build(self.process)
                    fit_reward = self.reward(reward_name)
                    try:
                        value, cost = fit_value(self.process, fit_reward, generator=self.generator(seed), **kwargs)
                    finally:
                        _close_reward(fit_reward)
                    value.save(cache)
                if build is not None:
                    opts = {**opts, "network": type(value.network).__name__}
                self.values[key] = (value, {"id": key, "kind": "fit", "options": opts, "seed": seed, **_scalars(cost)})
            return self.values[key]
        if spec == "domain":                      # a value the domain pack ships for this reward
            path = self.domain.shipped_value(self.model, str(reward_name))
            if path is None:
                raise BenchError(f"domain {self.domain_name!r} ships no value for model {self.model!r} and reward "
                                 f"{reward_name!r} (it has {sorted((self.domain.extra or {}).get('values') or {})}); "
                                 "use value: {fit: {...}}")
            spec = {"path": str(path)}
        if isinstance(spec, dict) and "path" in spec:
            from .values.learned import load_value

            value = load_value(spec["path"], device=self.device, process=self.process)
            cost = dict(value.meta.get("cost", {}))
            return value, {"id": str(spec["path"]), "kind": "loaded", **_scalars(cost)}
        raise BenchError(f"value: {spec!r} not understood; use 'exact', 'domain', {{fit: {{...}}}} or {{path: DIR}}")


def _close_reward(reward) -> None:
    """Stop a reward's worker processes (a docking pool holds ~1 GB per Vina worker); the suite
    builds a fresh reward per cell, so without this every cell would leave its pool behind
    until garbage collection."""
    from .rewards.base import close_quietly

    close_quietly(reward)


def _differentiable(ctx: _Context, reward_name) -> bool:
    reward = ctx.reward(reward_name)
    try:
        return bool(getattr(reward, "differentiable", False))
    finally:
        _close_reward(reward)


def _guide_for(ctx: _Context, variant: dict, reward_name) -> Optional[str]:
    """The reward a methods entry's ``guide:`` hands the algorithm for ``reward_name``: one spec
    for every reward, or a mapping ``{reward: spec}`` (rewards it does not name are unguided)."""
    guide = variant.get("guide")
    if isinstance(guide, dict):
        return guide.get(reward_name or ctx.domain.default_reward)
    return guide or None


def _run_once(ctx: _Context, variant: dict, reward_name, seed: int, num_samples: int, knob_value=None,
              value=None):
    import svdd

    params = dict(variant["params"])
    if knob_value is not None:
        params[variant["knob"]] = int(knob_value)
    if value is not None:
        params["value_fn"] = value
    if ctx.suite.get("max_batch_size"):
        cap = ctx.suite["max_batch_size"]
        params.setdefault("max_batch_size", cap if cap == "auto" else int(cap))
    guide = _guide_for(ctx, variant, reward_name)
    reward_fn = ctx.reward(reward_name)
    guide_fn = ctx.reward(guide) if guide else reward_fn
    try:
        result = svdd.sample(ctx.process, guide_fn, method=variant["algorithm"], num_samples=num_samples,
                             num_steps=ctx.num_steps, generator=ctx.generator(seed), **params)
        if guide:   # guided by a stand-in (e.g. a differentiable surrogate); scored by the suite's reward
            scored = torch.as_tensor(reward_fn(result.x0)).detach().reshape(-1).float().cpu()
            result = result._replace(rewards=scored, info={**result.info, "guide": guide,
                                                           "guide_rewards": result.rewards.detach().cpu()})
    finally:
        _close_reward(reward_fn)
        if guide:
            _close_reward(guide_fn)
    return result, reward_fn, params


def _per_sample(info: dict, n: int) -> dict:
    return {k: float(info.get(k, 0) or 0) / max(n, 1) for k in ("nfe", "reward_calls", "value_calls", "grad_passes")}


def _calibrate(ctx: _Context, variant: dict, reward_name, budget: dict, guess: Optional[int], value) -> dict:
    """Secant search on measured cost per sample (short runs, seeds 10_000+)."""
    suite = ctx.suite
    measure = _measure(budget)
    target = float(budget[measure])
    vcc = _weights(suite)
    n = int(suite.get("calibration_samples") or suite["num_samples"])
    max_runs = int(suite.get("calibration_runs", 4))
    max_knob = int(suite.get("max_knob", 2 ** 20))
    points: dict[int, float] = {}
    spent = {"nfe": 0.0, "reward_calls": 0.0, "value_calls": 0.0, "wall_time_s": 0.0, "runs": 0}
    k = max(1, int(guess or 1))
    for i in range(max_runs):
        if k in points:
            break
        result, _, _ = _run_once(ctx, variant, reward_name, 10_000 + i, n, k, value)
        info = result.info
        points[k] = _measured(_per_sample(info, n), measure, vcc)
        for key in ("nfe", "reward_calls", "value_calls"):
            spent[key] += float(info.get(key, 0) or 0)
        spent["wall_time_s"] += float(info.get("wall_time_s", 0.0))
        spent["runs"] += 1
        if abs(points[k] / target - 1) <= 0.02:
            break
        ks = sorted(points)
        if len(ks) == 1:                                  # cost ∝ k as a first guess
            k_new = k * target / max(points[k], 1e-9)
        else:                                             # line through the two nearest points
            a, b = sorted(ks, key=lambda j: abs(points[j] - target))[:2]
            slope = (points[b] - points[a]) / (b - a)
            k_new = a + (target - points[a]) / slope if slope > 1e-12 else max(ks) * 8
            lo_k, hi_k = ks[-2], ks[-1]                   # saturation: 4x the knob, < 25 % more cost
            if hi_k >= 4 * lo_k and points[hi_k] < 1.25 * points[lo_k] and points[hi_k] < target:
                break
        k = int(min(max(round(k_new), 1), max_knob, 8 * max(ks)))
    best = min(points, key=lambda j: (abs(points[j] - target), j))
    reachable = abs(points[best] / target - 1) <= float(suite["tolerance"])
    if not reachable and max(points.values()) < target:   # cannot spend the budget: cheapest near-max knob
        top = max(points.values())
        best = min(j for j, c in points.items() if c >= 0.9 * top)
    return {"value": best, "measured": points[best], "points": {str(j): c for j, c in sorted(points.items())},
            "samples_per_run": n, "cost": spent, "reachable": reachable}


def _knob_for(ctx: _Context, variant: dict, reward_name, budget: Optional[dict], value) -> dict:
    """Decide the knob of one (method, reward, budget); calibrations are cached in calibration.json."""
    suite = ctx.suite
    vcc = _weights(suite)
    cparams = {**variant["params"], "value_fn": value, "num_samples": int(suite["num_samples"]),
               "reward_differentiable": _differentiable(ctx, reward_name)}
    if budget is None or variant["knob"] is None or variant["knob_fixed"]:
        fixed = variant["params"].get(variant["knob"]) if variant["knob"] else None
        pred = None
        model = COST_MODELS.get(variant["algorithm"])
        if model is not None:
            c = model(fixed, ctx.num_steps, cparams, ctx.kind)
            measure = _measure(budget) if budget else "nfe"
            pred = _measured(c, measure, vcc)
        return {"value": fixed, "predicted": pred, "source": "fixed" if fixed is not None else "natural"}
    m = match_budget(variant["algorithm"], budget, ctx.num_steps, cparams, kind=ctx.kind, value_call_cost=vcc[0],
                     grad_pass_cost=vcc[1], max_knob=int(suite.get("max_knob", 2 ** 20)))
    mode = variant.get("calibrate", suite.get("calibrate", "auto"))
    need = mode is True or (mode in ("auto", None) and (m["value"] is None or not m["exact"]))
    if not need:
        return {"value": m["value"], "predicted": m["predicted"], "source": "formula"}
    key = f"{reward_name}|{json.dumps(budget, sort_keys=True)}|{variant['variant']}"
    if key not in ctx.calibrations:
        cal = _calibrate(ctx, variant, reward_name, budget, m["value"], value)
        cal["formula_value"], cal["formula_predicted"] = m["value"], m["predicted"]
        ctx.calibrations[key] = cal
        _save_calibrations(ctx)
    cal = ctx.calibrations[key]
    return {"value": cal["value"], "predicted": cal["measured"], "source": "calibration",
            "formula_value": cal.get("formula_value"), "formula_predicted": cal.get("formula_predicted"),
            "calibration_cost": cal["cost"]}


def _metrics(ctx: _Context, x0, variant: dict) -> tuple[dict, dict]:
    dom = ctx.domain
    decoded = None
    extra_cols: dict = {}
    if dom.decode is not None:
        try:
            decoded = dom.decode(x0)
        except Exception as err:  # a decoder failure must not lose the run
            extra_cols["decode_error"] = f"{type(err).__name__}: {err}"
    out: dict = {}
    if dom.metrics is not None:
        kwargs = {}
        alpha = variant["params"].get("alpha", ctx.suite.get("alpha"))
        if alpha and _accepts(dom.metrics, "alpha", explicit=True):
            kwargs["alpha"] = float(alpha)
        if _accepts(dom.metrics, "num_steps", explicit=True):
            kwargs["num_steps"] = ctx.num_steps
        try:
            out = _scalars(dom.metrics(x0, decoded, ctx.process, **kwargs))
        except Exception as err:
            out = {"metrics_error": f"{type(err).__name__}: {err}"}
    if dom.sample_columns is not None and decoded is not None:
        try:
            cols = dom.sample_columns(x0, decoded, ctx.process)
            for k, vals in (cols or {}).items():
                nums = [float(v) for v in vals if isinstance(v, (int, float, bool))]
                if nums and len(nums) == len(vals):
                    out.setdefault(f"{k}_mean", sum(nums) / len(nums))
        except Exception as err:
            extra_cols["sample_columns_error"] = f"{type(err).__name__}: {err}"
    return out, extra_cols


def _check_supported(ctx: _Context, variant: dict, reward_name) -> Optional[str]:
    from .algorithms import get_algorithm

    spec = get_algorithm(variant["algorithm"])
    if ctx.kind not in spec.kinds:
        return f"{variant['algorithm']} does not support {ctx.kind} processes"
    if spec.needs_gradients:
        guide = _guide_for(ctx, variant, reward_name)
        if not _differentiable(ctx, guide or reward_name):
            return (f"{variant['algorithm']} needs a differentiable reward; {guide or reward_name!r} is not"
                    + ("" if guide else " (a methods entry may name one with 'guide:')"))
    if spec.needs_value and variant["value"] is None:
        return f"{variant['algorithm']} needs 'value:' (exact, {{fit: ...}} or {{path: ...}}) in the suite"
    return None


def _save_calibrations(ctx) -> None:
    """Merge this process's calibrations into ``calibration.json`` (another invocation running other
    rewards of the suite may have added its own since we read it), written atomically."""
    path = ctx.calibration_path
    from .runfolder import DamagedFile, atomic_write_json, read_json

    try:
        merged = read_json(path, what="calibration") if path.exists() else {}
    except DamagedFile:
        merged = {}   # recomputed calibrations replace a damaged file
    merged = merged if isinstance(merged, dict) else {}
    merged.update(ctx.calibrations)
    atomic_write_json(path, merged, indent=1, sort_keys=True)


def run_suite(suite_path, out_dir, *, resume: bool = True, quick: bool = False, device: str = "cpu",
              progress: bool = True, only_rewards: Optional[list] = None,
              only_methods: Optional[list] = None, outcome: Optional[dict] = None) -> Path:
    """Run every cell of a suite, appending one JSON line per run to ``out_dir/runs.jsonl``;
    with ``resume`` finished cells are skipped. ``only_rewards`` runs just those rewards' cells
    (the rest are left for another invocation, which may run at the same time on the same
    ``out_dir``: e.g. one process per reward on a multi-core machine); ``only_methods`` likewise
    runs just those method rows (their labels). Returns the path of ``runs.jsonl``.

    A cell that fails is recorded with status ``error`` and the rest still run; pass a dict as
    ``outcome`` to get ``{"cells": N, "failed": [(cell, error), ...]}`` of this invocation."""
    suite = load_suite(suite_path, quick=quick)
    from .checks import check_device

    try:
        device = check_device(device, flag="device")
    except ValueError as err:
        raise BenchError(str(err)) from None
    if only_rewards:
        unknown = [r for r in only_rewards if r not in suite["rewards"]]
        if unknown:
            raise BenchError(f"suite {suite['name']!r} has no reward {unknown[0]!r}; its rewards: "
                             f"{', '.join(str(r) for r in suite['rewards'])}")
    out = Path(out_dir)
    from .runfolder import FolderLock, fingerprint as _fp

    # one writer per folder: a whole-suite run holds the folder exclusively; runs of parts of it
    # (--only-reward / --only-method) share it with each other, each part held by one process
    locks = [FolderLock(out, shared=bool(only_rewards or only_methods))]
    if only_rewards or only_methods:
        part = _fp({"rewards": sorted(map(str, only_rewards or [])), "methods": sorted(map(str, only_methods or []))})
        locks.append(FolderLock(out, name=f".svdd-part-{part}.lock"))
    for lock in locks:
        try:
            lock.acquire()
        except Exception:
            for held in locks:
                held.release()
            raise
    try:
        return _run_suite_locked(suite, suite_path, out, resume=resume, quick=quick, device=device, progress=progress,
                                 only_rewards=only_rewards, only_methods=only_methods,
                                 outcome=outcome if outcome is not None else {})
    finally:
        for lock in locks:
            lock.release()


def _run_suite_locked(suite, suite_path, out: Path, *, resume, quick, device, progress, only_rewards,
                      only_methods, outcome: dict) -> Path:
    from .runfolder import check_no_symlink

    runs_path = check_no_symlink(out / "runs.jsonl", out)
    _repair(runs_path)
    previous = read_runs(runs_path, strict=True)
    if previous and not resume:
        raise BenchError(f"{str(runs_path)!r} already has {len(previous)} runs; pass --resume to continue it "
                         f"or choose another --out")
    fingerprint = suite_fingerprint(suite)
    done = {r["cell"] for r in previous if r.get("status") in ("ok", "unsupported") and r.get("suite") == suite["name"]}
    if previous and any(r.get("suite") != suite["name"] or r.get("fingerprint", fingerprint) != fingerprint
                        for r in previous):
        raise BenchError(f"{str(out)!r} holds runs of another suite (or of different settings); choose another --out")
    cells = plan_cells(suite)
    if only_rewards:
        cells = [c for c in cells if c["reward"] in only_rewards]
    if only_methods:
        labels = {c["variant"]["label"] for c in cells}
        unknown = [m for m in only_methods if m not in labels]
        if unknown:
            raise BenchError(f"suite {suite['name']!r} has no method row {unknown[0]!r}; its rows: "
                             f"{', '.join(sorted(labels))}")
        cells = [c for c in cells if c["variant"]["label"] in only_methods]
    todo = [c for c in cells if c["cell"] not in done]
    outcome.update({"cells": len(cells), "todo": len(todo), "failed": []})
    # the resolved suite, for the report and for anyone re-running it
    _write_suite_copy(out, suite, suite_path, quick)
    if not todo:
        return runs_path
    ctx = _Context(suite, out, device)
    env = environment(device)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(cells), initial=len(cells) - len(todo), desc=suite["name"], unit="run",
                   disable=not progress)
    references: dict = {}
    for cell in todo:
        variant, reward_name, seed, budget = cell["variant"], cell["reward"], cell["seed"], cell["budget"]
        if bar is not None:
            bar.set_postfix_str(f"{variant['variant']} seed {seed}")
        base = {"schema": SCHEMA_VERSION, "suite": suite["name"], "fingerprint": fingerprint, "cell": cell["cell"],
                "domain": ctx.domain_name,
                "model": ctx.model, "reward": reward_name or ctx.domain.default_reward,
                "method": variant["label"], "variant": variant["variant"], "algorithm": variant["algorithm"],
                "sweep": variant["sweep"], "alpha": variant["params"].get("alpha"),
                "alpha_dependent": variant["alpha_dependent"], "seed": seed, "num_samples": suite["num_samples"],
                "num_steps": ctx.num_steps, "budget": budget, "budget_index": cell["budget_index"],
                "quick": bool(quick), "environment": env}
        if _guide_for(ctx, variant, reward_name):
            base["guide"] = _guide_for(ctx, variant, reward_name)
        reason = _check_supported(ctx, variant, reward_name)
        if reason:
            _append(runs_path, {**base, "status": "unsupported", "reason": reason})
            if bar is not None:
                bar.update(1)
            continue
        try:
            value, value_info = ctx.value_for(variant, reward_name)
            knob = _knob_for(ctx, variant, reward_name, budget, value)
            t0 = time.perf_counter()
            result, reward_fn, params = _run_once(ctx, variant, reward_name, seed, int(suite["num_samples"]),
                                                  knob["value"] if knob["source"] != "natural" else None, value)
            sample_s = time.perf_counter() - t0
            t1 = time.perf_counter()
            metrics, notes = _metrics(ctx, result.x0, variant)
            evals = {}
            ev_spec = suite["eval_rewards"]
            for ev in (ev_spec.get(reward_name, []) if isinstance(ev_spec, dict) else ev_spec):
                r_eval = ctx.reward(ev)
                try:
                    scores = torch.as_tensor(r_eval(result.x0)).detach().cpu().reshape(-1)
                    evals[ev] = [_short(v) for v in scores.tolist()]
                finally:
                    _close_reward(r_eval)
            metrics_s = time.perf_counter() - t1
        except (BenchError, KeyboardInterrupt):
            if bar is not None:
                bar.close()
            raise
        except Exception as err:
            _append(runs_path, {**base, "status": "error", "error": f"{type(err).__name__}: {err}"})
            outcome["failed"].append((cell["cell"], f"{type(err).__name__}: {' '.join(str(err).split())[:200]}"))
            if bar is not None:
                bar.update(1)
            continue
        info = result.info
        n = int(result.rewards.shape[0])
        per = _per_sample(info, n)
        vcc = _weights(suite)
        actual_cost = cost_of(per, *vcc)
        measure = _measure(budget) if budget else "nfe"
        actual = _measured(per, measure, vcc)
        err_frac = (actual / float(budget[measure]) - 1.0) if budget else None
        ref_alpha = variant["params"].get("alpha", suite.get("alpha"))
        ref_key = (float(ref_alpha) if ref_alpha is not None else None, ctx.num_steps)
        if ref_key not in references:
            toy = ctx.toy()
            references[ref_key] = exact_reference(toy, ref_key[0], ctx.num_steps) if toy is not None else None
        row = {**base, "status": "ok",
               "params": {k: v for k, v in params.items() if k != "value_fn"},
               "knob": variant["knob"], "knob_value": knob["value"], "knob_source": knob["source"],
               "predicted": {"measure": measure, "cost_per_sample": knob["predicted"],
                             **{k: knob[k] for k in ("formula_value", "formula_predicted", "calibration_cost")
                                if k in knob}},
               "actual": {"measure": measure, "cost_per_sample": actual, "denoiser_equivalent_per_sample": actual_cost,
                          **{f"{k}_per_sample": v for k, v in per.items()}},
               "budget_error": err_frac,
               "within_budget": (abs(err_frac) <= float(suite["tolerance"]) if err_frac is not None
                                 and knob["source"] in ("formula", "calibration") else None),
               "counters": {k: info.get(k) for k in ("nfe", "reward_calls", "value_calls", "grad_passes",
                                                       "reward_invalid", "reward_errors", "reward_cache_hits")
                            if k in info},
               "timings": {"sample_s": sample_s, "algorithm_wall_time_s": float(info.get("wall_time_s", sample_s)),
                           "metrics_s": metrics_s},
               "value_training": value_info,
               "rewards": [_short(v) for v in result.rewards.detach().cpu().reshape(-1).tolist()],
               **({"guide_rewards": [_short(v) for v in info["guide_rewards"].reshape(-1).tolist()]}
                  if "guide_rewards" in info else {}),
               "eval_rewards": evals, "metrics": metrics, "notes": notes,
               "info": _scalars({k: v for k, v in info.items() if k not in ("nfe", "reward_calls", "value_calls",
                                                                              "grad_passes", "wall_time_s")}),
               "reference": references[ref_key],
               "finished_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
        _append(runs_path, row)
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    return runs_path


def _write_suite_copy(out: Path, suite: dict, suite_path, quick: bool) -> None:
    import yaml

    data = {k: v for k, v in suite.items() if k != "domain" or isinstance(v, str)}
    if not isinstance(suite.get("domain"), str):
        data["domain"] = getattr(suite.get("domain"), "name", str(suite.get("domain")))
    data["_source"] = str(suite_path) if isinstance(suite_path, (str, os.PathLike)) else "<dict>"
    data["_quick"] = bool(quick)
    from .runfolder import atomic_write

    atomic_write(out / "suite.yaml", yaml.safe_dump(data, sort_keys=False), root=out)


__all__ = ["run_suite", "load_suite", "plan_cells", "expand_methods", "match_budget", "solve_knob",
           "register_cost_model", "COST_MODELS", "BenchError", "read_runs", "exact_reference", "cost_of"]
