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


def available_domains() -> list[str]:
    """Shipped domains, then those installed packages register (entry-point group ``svdd.domains``)."""
    from ..plugins import entry_point_domains

    return sorted(DOMAIN_MODULES) + sorted(n for n in entry_point_domains() if n not in DOMAIN_MODULES)


def get_domain(name: str) -> Domain:
    """A shipped domain by name, an installed one (entry point), or ``MODULE:FACTORY``: the user
    domain around a process factory (``svdd.plugins.user_domain``)."""
    from ..plugins import entry_point_domains, is_import_path, load_entry_point_domain, user_domain

    if name not in DOMAIN_MODULES:
        if is_import_path(name):
            return user_domain(name)
        installed = entry_point_domains()
        if name in installed:
            return load_entry_point_domain(name, installed[name])
        raise DomainError(f"unknown domain {name!r}; choose one of {available_domains()} "
                          "(or give your own model with --process MODULE:FACTORY)")
    module, attr, extra = DOMAIN_MODULES[name]
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as err:
        if err.name and err.name.startswith("svdd"):
            raise DomainError(f"domain {name!r} is not available in this version of svdd") from None
        hint = f"pip install 'svdd[{extra}]'" if extra else "pip install svdd"
        raise DomainError(f"domain {name!r} needs the missing package {err.name!r}: run {hint}") from None
    return getattr(mod, attr)


__all__ = ["Domain", "DomainError", "get_domain", "available_domains", "DOMAIN_MODULES"]
