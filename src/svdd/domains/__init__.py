"""Domain packs, imported lazily so a missing optional dependency only matters when used.

Each module named here defines ``DOMAIN: svdd.domains.base.Domain``.
"""

from __future__ import annotations

import importlib

from .base import Domain, DomainError

DOMAIN_MODULES = {
    "toy-gaussian": ("svdd.domains.toys", "GAUSSIAN_DOMAIN", None),
    "toy-masked": ("svdd.domains.toys", "MASKED_DOMAIN", None),
    "molecules": ("svdd.domains.molecules", "DOMAIN", "molecules"),
    "dna": ("svdd.domains.dna", "DOMAIN", "dna"),
    "rna": ("svdd.domains.rna", "DOMAIN", "rna"),
    "images": ("svdd.domains.images", "DOMAIN", "images"),
}


def get_domain(name: str) -> Domain:
    if name not in DOMAIN_MODULES:
        raise DomainError(f"unknown domain {name!r}; choose one of {sorted(DOMAIN_MODULES)}")
    module, attr, extra = DOMAIN_MODULES[name]
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as err:
        if err.name and err.name.startswith("svdd"):
            raise DomainError(f"domain {name!r} is not available in this version of svdd") from None
        hint = f"pip install 'svdd[{extra}]'" if extra else "pip install svdd"
        raise DomainError(f"domain {name!r} needs the missing package {err.name!r}: run {hint}") from None
    return getattr(mod, attr)


__all__ = ["Domain", "DomainError", "get_domain", "DOMAIN_MODULES"]
