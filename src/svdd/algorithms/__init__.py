"""Sampling algorithms, one file each, registered by name (see ``registry``)."""

from . import ancestral, best_of_n, svdd, svdd_r  # noqa: F401  (registration side effects)
from .registry import ALGORITHMS, AlgorithmError, AlgorithmSpec, get_algorithm, register

# algorithms added by later modules register themselves on import; import them if present
import importlib as _importlib

for _name in ("smc", "das", "dps", "dno", "search", "dts", "dsearch", "treeg", "noise_trajectory_search",
              "iterative_refinement", "search_over_paths"):
    try:
        _importlib.import_module(f"{__name__}.{_name}")
    except ModuleNotFoundError as _err:
        if _err.name != f"{__name__}.{_name}":
            raise

__all__ = ["ALGORITHMS", "AlgorithmError", "AlgorithmSpec", "get_algorithm", "register"]
