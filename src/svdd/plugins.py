"""Plug-in points: the user's own process, reward and value, and third-party domain packs.

- ``MODULE:NAME`` import paths (``NAME`` may be dotted, ``pkg.mod:obj.attr``), the module found on
  ``PYTHONPATH`` or in the current folder. ``svdd sample --process MODULE:FACTORY`` (a
  zero-argument callable returning a process), ``--reward MODULE:NAME`` (a reward callable — or a
  class, instantiated with no arguments — also as a term of a weighted sum,
  ``'0.5*mymod:score+qed'``), ``--value MODULE:FACTORY`` (``FACTORY()`` or ``FACTORY(process)``
  returning ``value_fn(x, t)``). Bench suites take the same paths (``process:``, reward names).
- A process given as an import path runs in the ``user`` domain: no decoder, no domain metrics,
  rewards from import paths only; its samples are written as tensors (``samples.safetensors``)
  with a readable column.
- An installed package registers a whole domain through the entry-point group ``svdd.domains``:
  ``[project.entry-points."svdd.domains"] mydomain = "mypkg.domain:DOMAIN"`` (a
  ``svdd.domains.Domain`` or a zero-argument callable returning one). ``svdd list`` shows it and
  every command accepts ``--domain mydomain``.
"""

from __future__ import annotations

import importlib
import inspect
import os
import re
import sys
from typing import Any, Callable

from .domains.base import DomainError

IMPORT_PATH = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
ENTRY_POINT_GROUP = "svdd.domains"


class PluginError(DomainError):
    """A user import path cannot be loaded (one line, says what to do)."""


def is_import_path(text: Any) -> bool:
    return isinstance(text, str) and bool(IMPORT_PATH.match(text.strip()))


def import_object(spec: str, what: str = "object") -> Any:
    """The object named by ``MODULE:NAME``; any failure is a one-line ``PluginError``."""
    spec = spec.strip()
    if not is_import_path(spec):
        raise PluginError(f"{what} {spec!r} is not an import path; write MODULE:NAME, e.g. mypackage.rewards:score")
    module_name, _, attr = spec.partition(":")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.append(os.getcwd())       # `svdd ...` run from the user's project folder
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name and module_name.startswith(err.name):
            raise PluginError(f"{what} {spec!r}: no module {err.name!r} on the Python path; add its folder to "
                              "PYTHONPATH or install it") from None
        raise PluginError(f"{what} {spec!r}: importing {module_name!r} needs the missing package {err.name!r}") from None
    except Exception as err:
        raise PluginError(f"{what} {spec!r}: importing {module_name!r} failed ({type(err).__name__}: {err})") from None
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise PluginError(f"{what} {spec!r}: module {module_name!r} has no {attr!r}")
        obj = getattr(obj, part)
    return obj


def _call(factory: Callable, what: str, spec: str, *args) -> Any:
    try:
        return factory(*args)
    except PluginError:
        raise
    except Exception as err:
        raise PluginError(f"{what} {spec!r} raised {type(err).__name__}: {err}") from None


def load_user_process(spec: str, device: str = "cpu"):
    """``FACTORY()`` for ``--process MODULE:FACTORY``; checked to look like a diffusion process."""
    factory = import_object(spec, "--process")
    if not callable(factory):
        raise PluginError(f"--process {spec!r} is not callable; it must be a zero-argument factory returning a process")
    process = _call(factory, "--process", spec)
    missing = [m for m in ("kind", "timesteps", "prior", "transition", "predict_x0") if not hasattr(process, m)]
    if missing:
        raise PluginError(f"--process {spec!r} returned {type(process).__name__}, which lacks {', '.join(missing)}; "
                          "return a svdd GaussianProcess / MaskedProcess (or an object with that interface)")
    if getattr(process, "kind", None) not in ("gaussian", "masked"):
        raise PluginError(f"--process {spec!r}: process.kind must be 'gaussian' or 'masked', got "
                          f"{getattr(process, 'kind', None)!r}")
    to = getattr(process, "to", None)
    if device != "cpu" and callable(to):
        process = to(device)
    return process


def load_user_reward(spec: str):
    """The reward callable named by ``MODULE:NAME`` (a class is instantiated with no arguments)."""
    obj = import_object(spec, "reward")
    if inspect.isclass(obj):
        obj = _call(obj, "reward", spec)
    if not callable(obj):
        raise PluginError(f"reward {spec!r} is a {type(obj).__name__}, not a callable reward_fn(x0) -> Tensor (B,)")
    return obj


def load_user_value(spec: str, process=None):
    """``FACTORY()`` or ``FACTORY(process)`` for ``--value MODULE:FACTORY``: a ``value_fn(x, t)``."""
    factory = import_object(spec, "--value")
    if not callable(factory):
        raise PluginError(f"--value {spec!r} is not callable; it must be a factory returning value_fn(x, t)")
    try:
        params = [p for p in inspect.signature(factory).parameters.values()
                  if p.default is inspect.Parameter.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    except (TypeError, ValueError):
        params = []
    value = _call(factory, "--value", spec, *([process] if params else []))
    if not callable(value):
        raise PluginError(f"--value {spec!r} returned {type(value).__name__}, not a callable value_fn(x, t)")
    return value


def user_domain(process_spec: str):
    """The ``user`` domain around ``--process MODULE:FACTORY``: only the model is the user's; every
    reward is an import path (``--reward MODULE:NAME``)."""
    from .domains.base import Domain

    def load(device: str = "cpu", **_options):
        return load_user_process(process_spec, device=device)

    # --num-steps defaults to the process's own ``default_num_steps`` attribute, else 50 (cli)
    return Domain(name=process_spec, description=f"your process {process_spec}", models={"user": load},
                  default_model="user", rewards={}, default_reward="", default_num_steps=50, extra={"user": True})


def entry_point_domains() -> dict[str, Any]:
    """Installed third-party domains: ``{name: entry point}`` of the ``svdd.domains`` group."""
    from importlib.metadata import entry_points

    try:
        return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}
    except Exception:   # a broken distribution's metadata must not break `svdd list`
        return {}


def load_entry_point_domain(name: str, ep) -> Any:
    from .domains.base import Domain

    try:
        obj = ep.load()
        if callable(obj) and not isinstance(obj, Domain):
            obj = obj()
    except Exception as err:
        raise DomainError(f"domain {name!r} (entry point {ep.value}) failed to load: {type(err).__name__}: {err}") from None
    if not isinstance(obj, Domain):
        raise DomainError(f"domain {name!r} (entry point {ep.value}) is a {type(obj).__name__}, not a svdd Domain")
    return obj


__all__ = ["PluginError", "import_object", "is_import_path", "load_user_process", "load_user_reward",
           "load_user_value", "user_domain", "entry_point_domains", "ENTRY_POINT_GROUP"]
