"""Checks of user input shared by the CLI and the bench runner, so that a mistake is refused in
one line before anything is loaded or allocated.

- ``check_device(name)``: a device string torch understands and this machine has.
- Sizes against free memory. Every algorithm keeps at least ``rows`` samples alive at once —
  ``num_samples × num_candidates`` children (SVDD, best-of-n, searches), ``num_particles``
  particles (SMC, DAS), ``num_rollouts × (num_steps + 1)`` states (fitting a value) — so
  ``rows × bytes_per_sample`` is a *lower bound* on what a run allocates. ``check_fits`` refuses
  a run whose lower bound exceeds the memory available now (``MemAvailable`` and the cgroup
  limit on CPU, ``cudaMemGetInfo`` on a GPU). A refused run would certainly have failed; one that
  passes may still run out (the bound ignores activations), which the CLI reports in one line.
- ``check_option(fn, key, value)``: a method option's value against the type of its default and
  the range of the well-known knobs (counts >= 1, alpha >= 0, fractions in [0, 1]).
- ``reward_terms_or_error`` / ``check_reward_names``: a reward spec's syntax and names, without
  building the reward (a docking reward starts worker pools).
"""

from __future__ import annotations

import inspect
import math
import os
from pathlib import Path
from typing import Any, Callable, Optional


class InputError(ValueError):
    """A user-facing problem with a command's input (one line, says what to do)."""


# ------------------------------------------------------------------------------------------------
# devices
# ------------------------------------------------------------------------------------------------
def check_device(name: Any, flag: str = "--device") -> str:
    """``name`` resolved (``auto`` -> ``cuda`` or ``cpu``) and checked against this machine."""
    import torch

    text = str(name).strip() if name is not None else ""
    if text == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    hint = f"use {flag} cpu, cuda, cuda:N, mps or auto"
    if not text:
        raise InputError(f"{flag} is empty; {hint}")
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError, TypeError):
        raise InputError(f"{flag} {text!r} is not a device; {hint}") from None
    kind = device.type
    if kind == "cpu":
        if device.index not in (None, 0):
            raise InputError(f"{flag} {text!r}: the CPU has no index {device.index}; use {flag} cpu")
        return text
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise InputError(f"{flag} {text} was asked for but no CUDA device is visible; use {flag} cpu")
        count = torch.cuda.device_count()
        if device.index is not None and not 0 <= device.index < count:
            raise InputError(f"{flag} {text}: this machine has {count} CUDA device(s) (cuda:0 to cuda:{count - 1})")
        return text
    if kind == "mps":
        backend = getattr(torch.backends, "mps", None)
        if backend is None or not backend.is_available():
            raise InputError(f"{flag} mps was asked for but MPS is not available here; use {flag} cpu")
        return text
    module = getattr(torch, kind, None)
    available = getattr(module, "is_available", None)
    if kind != "meta" and callable(available) and available():
        return text
    raise InputError(f"{flag} {text!r}: svdd cannot run on {kind} devices here; {hint}")


# ------------------------------------------------------------------------------------------------
# memory
# ------------------------------------------------------------------------------------------------
def _meminfo_available() -> Optional[int]:
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _cgroup_available() -> Optional[int]:
    """Room left under a cgroup memory limit (v2, then v1), if there is one."""
    for limit_file, usage_file in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                                   ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                                    "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        try:
            limit = Path(limit_file).read_text().strip()
            usage = int(Path(usage_file).read_text().strip())
        except (OSError, ValueError):
            continue
        if limit == "max" or not limit.isdigit() or int(limit) >= 1 << 60:
            return None
        return max(int(limit) - usage, 0)
    return None


def available_memory(device: Any = "cpu") -> Optional[int]:
    """Bytes that can be allocated now on ``device`` (None when unknown)."""
    import torch

    dev = torch.device(device) if not isinstance(device, torch.device) else device
    if dev.type == "cuda":
        try:
            free, _ = torch.cuda.mem_get_info(dev)
            return int(free)
        except Exception:
            return None
    if dev.type != "cpu":
        return None
    try:                      # psutil when installed, else /proc/meminfo
        import psutil

        host = int(psutil.virtual_memory().available)
    except Exception:
        host = _meminfo_available()
    group = _cgroup_available()
    known = [v for v in (host, group) if v is not None]
    return min(known) if known else None


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB", "PB"):
        if abs(n) < 1000 or unit == "PB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000.0
    return f"{n:.1f} PB"


def sample_nbytes(process) -> Optional[int]:
    """Bytes of one sample of ``process`` (one draw of its prior), None if it cannot be told."""
    import torch

    try:
        device = getattr(process, "device", "cpu")
        gen = torch.Generator(device=device).manual_seed(0)
        x = process.prior(1, generator=gen)
        return int(x[0].numel() * x.element_size())
    except Exception:
        return None


def check_fits(rows: float, bytes_per_row: float, *, what: str, fix: str, device: Any = "cpu",
               of: str = "the samples alone") -> None:
    """Refuse when ``rows × bytes_per_row`` (a lower bound of a run's memory) exceeds what
    ``device`` has available now. ``what`` names the request (``--num-candidates 1000000000 ×
    --num-samples 64``), ``fix`` says what to change."""
    need = float(rows) * float(bytes_per_row)
    free = available_memory(device)
    if free is None or need <= free:
        return
    where = "GPU memory" if str(device).startswith("cuda") else "memory"
    raise InputError(f"{what} needs at least {human_bytes(need)} of {where} for {of}, and "
                     f"{human_bytes(free)} is free; {fix}")


# ------------------------------------------------------------------------------------------------
# method options
# ------------------------------------------------------------------------------------------------
POSITIVE_INTS = {"num_candidates", "num_particles", "num_iterations", "num_mc_samples", "num_neighbors",
                 "num_perturbations", "block_size", "num_rollouts", "max_children", "max_batch_size"}
NON_NEGATIVE_INTS = {"num_permutations"}
NON_NEGATIVE_FLOATS = {"alpha", "gamma", "weight_decay", "max_grad_norm", "perturbation_scale", "tempering_power"}
POSITIVE_FLOATS = {"lr"}
FRACTIONS = {"replace_fraction", "ess_threshold", "tempering_ess", "threshold"}


def _type_name(value) -> str:
    return {bool: "true/false", int: "an integer", float: "a number", str: "a word"}.get(type(value), type(value).__name__)


def check_option(fn: Callable, key: str, value: Any, *, label: Optional[str] = None) -> Any:
    """``value`` for keyword ``key`` of ``fn``, checked against the type of its default (an int
    default takes integers, a float default numbers, a bool default true/false) and the range of
    well-known knobs. Returns the value (an int given for a float option stays an int)."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return value
    label = label or key
    default = params[key].default if key in params else inspect.Parameter.empty
    if key == "max_batch_size" and value == "auto":
        return value
    expect: Optional[type] = None
    if key in POSITIVE_INTS or key in NON_NEGATIVE_INTS:
        expect = int
    elif key in NON_NEGATIVE_FLOATS or key in POSITIVE_FLOATS or key in FRACTIONS:
        expect = float
    elif default is not inspect.Parameter.empty and default is not None:
        expect = type(default)
    if value is None:
        if default is None or default is inspect.Parameter.empty:
            return value
        raise InputError(f"{label} needs {_type_name(default)}, not none")
    if expect is bool:
        if not isinstance(value, bool):
            raise InputError(f"{label} must be true or false, got {value!r}")
    elif expect is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise InputError(f"{label} must be an integer, got {value!r}")
    elif expect is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise InputError(f"{label} must be a number, got {value!r}")
        if not math.isfinite(value):
            raise InputError(f"{label} must be a finite number, got {value!r}")
    elif expect is str and not isinstance(value, str):
        raise InputError(f"{label} must be a word, got {value!r}")
    if key in POSITIVE_INTS and value < 1:
        raise InputError(f"{label} must be an integer >= 1, got {value!r}")
    if key in NON_NEGATIVE_INTS and value < 0:
        raise InputError(f"{label} must be an integer >= 0, got {value!r}")
    if key in NON_NEGATIVE_FLOATS and value < 0:
        raise InputError(f"{label} must be >= 0, got {value!r}")
    if key in POSITIVE_FLOATS and value <= 0:
        raise InputError(f"{label} must be > 0, got {value!r}")
    if key in FRACTIONS and not 0 <= value <= 1:
        raise InputError(f"{label} must lie in [0, 1], got {value!r}")
    return value


def sample_rows(kwargs: dict, fn: Callable, num_samples: int) -> int:
    """Samples an algorithm keeps alive at once: ``num_samples`` times its candidates, or its
    particles (the larger)."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        params = {}
    rows = num_samples
    if "num_candidates" in params:
        m = kwargs.get("num_candidates", params["num_candidates"].default)
        if isinstance(m, int) and m > 0:
            rows = num_samples * m
    particles = kwargs.get("num_particles")
    if isinstance(particles, int) and particles > 0:
        rows = max(rows, particles)
    return rows


# ------------------------------------------------------------------------------------------------
# rewards
# ------------------------------------------------------------------------------------------------
def reward_terms_or_error(spec: Any, flag: str = "--reward") -> list[tuple[float, str]]:
    """The ``(weight, name)`` terms of a reward spec; a malformed spec is an ``InputError``."""
    from .rewards.base import RewardError, reward_terms

    try:
        return reward_terms(spec)
    except RewardError as err:
        raise InputError(f"{flag} {spec!r}: {err}") from None


def check_reward_names(domain, spec: Optional[str], flag: str = "--reward") -> None:
    """Every term of ``spec`` names a reward of ``domain`` (or is a ``MODULE:NAME`` import path)."""
    if spec is None:
        return
    try:
        from .plugins import is_import_path
    except ImportError:  # pragma: no cover - plug-ins not installed
        def is_import_path(text):
            return False
    for _, term in reward_terms_or_error(spec, flag):
        name = term.partition(":")[0]
        if name in domain.rewards or is_import_path(term):
            continue
        choices = sorted(domain.rewards)
        raise InputError(f"{flag}: unknown reward {term!r} for domain {domain.name!r}; choose one of {choices} "
                         "(see `svdd list rewards`)" + (" or MODULE:NAME" if not choices else ""))


def loader_options(fn: Callable) -> Optional[set]:
    """Keyword options a model loader takes (``device`` excluded); None when it forwards any
    (a ``**kwargs`` catch-all not named ``_``, which by convention swallows and ignores)."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return None
    names = set()
    for name, p in params.items():
        if p.kind == p.VAR_KEYWORD:
            if name != "_" and not name.startswith("_"):
                return None
        elif p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD) and name != "device":
            names.add(name)
    return names


__all__ = ["InputError", "check_device", "available_memory", "sample_nbytes", "check_fits", "check_option",
           "sample_rows", "reward_terms_or_error", "check_reward_names", "loader_options", "human_bytes"]
